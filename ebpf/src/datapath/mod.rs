//! Loading and attaching the datapath, and where it pins what (services: `services.rs`,
//! mesh-VIP capture: `mesh.rs`).
//!
//! Pin layout under [`DatapathConfig::pin_dir`]:
//!
//! ```text
//! <pin_dir>/maps/{services,backend_slots,affinity,reverse_nat,connected_sockets,
//!                 mesh_vip_ranges,tunnel_listeners}
//! <pin_dir>/links/{connect4,connect6,sendmsg4,sendmsg6,recvmsg4,recvmsg6,getpeername4,getpeername6,
//!                  sock_release}
//! <pin_dir>/links/mesh_vip_lookup
//! ```
//!
//! Pinned links keep the programs attached after the agent exits or is killed, and pinned maps
//! keep the services. A restarted agent calls [`Datapath::load`] again: it reuses the pinned
//! maps, and [`Datapath::attach_cgroup`] / [`Datapath::attach_sk_lookup`] swap the new programs
//! into the pinned links atomically (`BPF_LINK_UPDATE`), so no connection ever sees a moment
//! without the load balancer.

use std::{
    fs::File,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, MapData, MapError, MapInfo, SockMap},
    programs::{CgroupAttachMode, Program, ProgramError, SkLookup, links::FdLink},
};
use ipnet::IpNet;

use crate::{
    DatapathError,
    maps::{
        AffinityKey, AffinityValue, Backend, BackendSlotKey, MeshVipRangeAddr, ReverseNatKey,
        ServiceKey, ServiceValue, SockTranslation, names,
    },
    sys::{self, LinkTarget},
};

mod mesh;
mod services;

pub use mesh::AddressFamily;
pub use services::MAX_BACKENDS_PER_SERVICE;

/// The compiled programs (see `build.rs`).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.bpf.o"));

/// The cgroup programs, by function name in `datapath.bpf.c`; also their link pin names.
const CGROUP_PROGRAMS: [&str; 9] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
    "sock_release",
];
const SK_LOOKUP_PROGRAM: &str = "mesh_vip_lookup";

/// Part of the node agent's configuration; serializable so the agent can log it at start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DatapathConfig {
    /// Where maps and links are pinned; must be on a mounted bpffs.
    pub pin_dir: PathBuf,
    /// Destinations handed to the tunnel listener by the sk_lookup program.
    pub mesh_vip_ranges: Vec<IpNet>,
}

impl DatapathConfig {
    pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/clustermesh";
    pub const DEFAULT_MESH_VIP_RANGE_V4: &str = "100.64.0.0/10";
    /// A unique local address range ("mesh" in ASCII in the global ID).
    pub const DEFAULT_MESH_VIP_RANGE_V6: &str = "fd00:6d65:7368::/48";
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(Self::DEFAULT_PIN_DIR),
            mesh_vip_ranges: vec![
                Self::DEFAULT_MESH_VIP_RANGE_V4.parse().expect("valid CIDR"),
                Self::DEFAULT_MESH_VIP_RANGE_V6.parse().expect("valid CIDR"),
            ],
        }
    }
}

/// The loaded datapath: its programs (attached through pinned links) and typed handles on its
/// pinned maps. Dropping it leaves everything attached and pinned; [`Datapath::remove_pinned`]
/// takes it all away.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backend_slots: HashMap<MapData, BackendSlotKey, Backend>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    mesh_vip_ranges: LpmTrie<MapData, MeshVipRangeAddr, u8>,
    tunnel_listeners: SockMap<MapData>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs into the kernel, reusing the maps pinned under `config.pin_dir` (or
    /// creating and pinning them), and programs the mesh VIP ranges. Attaches nothing yet.
    pub fn load(config: &DatapathConfig) -> Result<Self, DatapathError> {
        if !sys::has_bpf_privileges() {
            return Err(DatapathError::NotPermitted {
                action: "load eBPF programs".into(),
            });
        }
        let pin_dir = config.pin_dir.clone();
        let bpffs_dir = if pin_dir.exists() {
            pin_dir.as_path()
        } else {
            pin_dir.parent().unwrap_or(Path::new("/"))
        };
        if !sys::is_bpffs(bpffs_dir) {
            return Err(DatapathError::BpfFsNotMounted {
                dir: bpffs_dir.to_owned(),
            });
        }
        let maps_dir = pin_dir.join("maps");
        for dir in [&maps_dir, &pin_dir.join("links")] {
            std::fs::create_dir_all(dir).map_err(|source| DatapathError::Io {
                action: "creating the pin directory",
                path: dir.clone(),
                source,
            })?;
        }
        check_pinned_maps(&maps_dir)?;

        let mut loader = EbpfLoader::new();
        for name in names::ALL {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        let mut ebpf = loader.load(BPF_OBJECT).map_err(|source| match source {
            aya::EbpfError::MapError(MapError::CreateError { ref io_error, .. })
                if io_error.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                DatapathError::NotPermitted {
                    action: "create eBPF maps".into(),
                }
            }
            source => DatapathError::LoadObject {
                maps_dir: maps_dir.clone(),
                source: Box::new(source),
            },
        })?;

        for name in CGROUP_PROGRAMS {
            let loaded = match cgroup_program(&mut ebpf, name)? {
                Program::CgroupSockAddr(program) => program.load(),
                Program::CgroupSock(program) => program.load(),
                _ => Err(ProgramError::UnexpectedProgramType),
            };
            loaded.map_err(|source| load_error(name, source))?;
        }
        sk_lookup_program(&mut ebpf)?
            .load()
            .map_err(|source| load_error(SK_LOOKUP_PROGRAM, source))?;

        let mut datapath = Self {
            services: take_map(&mut ebpf, names::SERVICES)?,
            backend_slots: take_map(&mut ebpf, names::BACKEND_SLOTS)?,
            affinity: take_map(&mut ebpf, names::AFFINITY)?,
            mesh_vip_ranges: take_map(&mut ebpf, names::MESH_VIP_RANGES)?,
            tunnel_listeners: take_map(&mut ebpf, names::TUNNEL_LISTENERS)?,
            ebpf,
            pin_dir,
        };
        datapath.remove_unreachable_slots()?;
        datapath.set_mesh_vip_ranges(&config.mesh_vip_ranges)?;
        Ok(datapath)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn link_pin(&self, program: &str) -> PathBuf {
        self.pin_dir.join("links").join(program)
    }

    /// Attaches the socket load balancer to a cgroup v2 directory (the node agent: the root of
    /// the cgroup v2 hierarchy, so every pod is covered), pinning the links. If links are
    /// already pinned (a restart), the new programs replace the old ones inside them.
    pub fn attach_cgroup(&mut self, cgroup_dir: &Path) -> Result<(), DatapathError> {
        if !sys::is_cgroup2(cgroup_dir) {
            return Err(DatapathError::NotCgroup2 {
                path: cgroup_dir.to_owned(),
            });
        }
        let cgroup = open(cgroup_dir)?;
        let expected = LinkTarget::Cgroup {
            cgroup_id: cgroup_dir_id(&cgroup, cgroup_dir)?,
        };
        for name in CGROUP_PROGRAMS {
            let pin = self.link_pin(name);
            let program = cgroup_program(&mut self.ebpf, name)?;
            if pin.exists() {
                let program_fd = program.fd().map_err(|source| load_error(name, source))?;
                adopt_link(&pin, program_fd.as_fd(), expected)?;
                continue;
            }
            let link =
                attach_to_cgroup(program, &cgroup).map_err(|source| DatapathError::Attach {
                    program: name,
                    target: cgroup_dir.to_owned(),
                    source: Box::new(source),
                })?;
            pin_link(link, &pin)?;
        }
        Ok(())
    }

    /// Attaches the mesh-VIP capture to a network namespace, given as a namespace file such as
    /// `/proc/self/ns/net` or `/run/netns/<name>`. The node must route the mesh VIP ranges
    /// locally (`ip route add local 100.64.0.0/10 dev lo`) for packets to reach it.
    pub fn attach_sk_lookup(&mut self, netns: &Path) -> Result<(), DatapathError> {
        let netns_file = open(netns)?;
        let inode = metadata(&netns_file, netns)?.ino();
        let expected = LinkTarget::Netns {
            inode: inode as u32,
        };
        let pin = self.link_pin(SK_LOOKUP_PROGRAM);
        let program = sk_lookup_program(&mut self.ebpf)?;
        if pin.exists() {
            let program_fd = program
                .fd()
                .map_err(|source| load_error(SK_LOOKUP_PROGRAM, source))?;
            return adopt_link(&pin, program_fd.as_fd(), expected);
        }
        let attach_error = |source| DatapathError::Attach {
            program: SK_LOOKUP_PROGRAM,
            target: netns.to_owned(),
            source: Box::new(source),
        };
        let link_id = program.attach(&netns_file).map_err(attach_error)?;
        let link = program.take_link(link_id).map_err(attach_error)?;
        pin_link(link.into(), &pin)
    }

    /// Detaches everything and removes the pin directory: the datapath stops, services are
    /// forgotten. For uninstalling the agent and for tests; needs no loaded [`Datapath`].
    pub fn remove_pinned(pin_dir: &Path) -> Result<(), DatapathError> {
        // Removing a link's last reference (its pin; no process holds it open) detaches it.
        match std::fs::remove_dir_all(pin_dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DatapathError::Io {
                action: "removing the pin directory",
                path: pin_dir.to_owned(),
                source,
            }),
        }
    }
}

/// Refuses to reuse pinned maps whose layout differs from this build's: the programs would read
/// garbage. The kernel checks nothing when a pinned map is reused.
fn check_pinned_maps(maps_dir: &Path) -> Result<(), DatapathError> {
    use std::mem::size_of;
    let expected: [(&str, usize, usize); 7] = [
        (
            names::SERVICES,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
        ),
        (
            names::BACKEND_SLOTS,
            size_of::<BackendSlotKey>(),
            size_of::<Backend>(),
        ),
        (
            names::AFFINITY,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
        ),
        (
            names::REVERSE_NAT,
            size_of::<ReverseNatKey>(),
            size_of::<ServiceKey>(),
        ),
        (
            names::CONNECTED_SOCKETS,
            size_of::<u64>(),
            size_of::<SockTranslation>(),
        ),
        (
            names::MESH_VIP_RANGES,
            4 + size_of::<MeshVipRangeAddr>(),
            size_of::<u8>(),
        ),
        (names::TUNNEL_LISTENERS, size_of::<u32>(), size_of::<u32>()),
    ];
    for (name, key_size, value_size) in expected {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| DatapathError::Map {
            map: name,
            action: "inspecting the pinned map",
            source: Box::new(source),
        })?;
        let found = (info.key_size() as usize, info.value_size() as usize);
        if found != (key_size, value_size) {
            return Err(DatapathError::IncompatiblePinnedMap {
                path,
                found: format!("key {} bytes, value {} bytes", found.0, found.1),
                expected: format!("key {key_size} bytes, value {value_size} bytes"),
            });
        }
    }
    Ok(())
}

/// Makes a pinned link run `program` from now on, after checking it is attached where we expect.
fn adopt_link(
    pin: &Path,
    program: std::os::fd::BorrowedFd<'_>,
    expected: LinkTarget,
) -> Result<(), DatapathError> {
    let link_error = |action| {
        move |source| DatapathError::Link {
            action,
            link: pin.to_owned(),
            source,
        }
    };
    let link = sys::obj_get(pin).map_err(link_error("open"))?;
    let found = sys::link_target(link.as_fd()).map_err(link_error("inspect"))?;
    if found != expected {
        return Err(DatapathError::PinnedLinkElsewhere {
            link: pin.to_owned(),
            expected: expected.to_string(),
            found: found.to_string(),
        });
    }
    sys::link_update(link.as_fd(), program).map_err(link_error("update"))
}

fn pin_link(link: FdLink, pin: &Path) -> Result<(), DatapathError> {
    // The returned PinnedLink only closes our descriptor when dropped; the pin keeps it attached.
    link.pin(pin)
        .map(drop)
        .map_err(|error| DatapathError::Link {
            action: "pin",
            link: pin.to_owned(),
            source: std::io::Error::other(error),
        })
}

fn cgroup_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Program, DatapathError> {
    ebpf.program_mut(name)
        .ok_or_else(|| load_error(name, ProgramError::NotLoaded))
}

/// Attaches a cgroup program through a bpf_link and hands the link over for pinning.
fn attach_to_cgroup(program: &mut Program, cgroup: &File) -> Result<FdLink, ProgramError> {
    // A bpf_link on a cgroup always coexists with other programs (kube-proxy-free CNIs attach
    // their own); the kernel rejects attach flags on links, so pass none.
    let mode = CgroupAttachMode::Single;
    // Only bpf_link attachments (Linux 5.7+) can be pinned; aya falls back to an older kind of
    // attachment on older kernels, which would detach when the agent exits.
    let not_pinnable = |_| {
        ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the kernel attached without a bpf_link (Linux older than 5.7?); that cannot be pinned",
            ),
        })
    };
    match program {
        Program::CgroupSockAddr(program) => {
            let link_id = program.attach(cgroup, mode)?;
            FdLink::try_from(program.take_link(link_id)?).map_err(not_pinnable)
        }
        Program::CgroupSock(program) => {
            let link_id = program.attach(cgroup, mode)?;
            FdLink::try_from(program.take_link(link_id)?).map_err(not_pinnable)
        }
        _ => Err(ProgramError::UnexpectedProgramType),
    }
}

fn sk_lookup_program(ebpf: &mut Ebpf) -> Result<&mut SkLookup, DatapathError> {
    ebpf.program_mut(SK_LOOKUP_PROGRAM)
        .ok_or(ProgramError::NotLoaded)
        .and_then(|program| program.try_into())
        .map_err(|source| load_error(SK_LOOKUP_PROGRAM, source))
}

fn load_error(program: &'static str, source: ProgramError) -> DatapathError {
    if let ProgramError::LoadError { io_error, .. } = &source
        && io_error.kind() == std::io::ErrorKind::PermissionDenied
    {
        return DatapathError::NotPermitted {
            action: format!("load the eBPF program `{program}`"),
        };
    }
    DatapathError::KernelLacksFeature {
        program,
        kernel: sys::kernel_release(),
        source: Box::new(source),
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::Map {
        map: name,
        action: "finding the map in the eBPF object",
        source: Box::new(MapError::InvalidName { name: name.into() }),
    })?;
    T::try_from(map).map_err(map_error(name, "opening the map"))
}

fn map_error(map: &'static str, action: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        map,
        action,
        source: Box::new(source),
    }
}

fn open(path: &Path) -> Result<File, DatapathError> {
    File::open(path).map_err(|source| DatapathError::Io {
        action: "opening",
        path: path.to_owned(),
        source,
    })
}

fn metadata(file: &File, path: &Path) -> Result<std::fs::Metadata, DatapathError> {
    file.metadata().map_err(|source| DatapathError::Io {
        action: "reading the metadata of",
        path: path.to_owned(),
        source,
    })
}

/// On cgroup v2 a cgroup's id is the inode number of its directory.
fn cgroup_dir_id(cgroup: &File, path: &Path) -> Result<u64, DatapathError> {
    Ok(metadata(cgroup, path)?.ino())
}
