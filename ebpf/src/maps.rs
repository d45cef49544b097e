//! `#[repr(C)]` mirrors of the map keys and values in `src/bpf/datapath.h`, and the map names.
//!
//! The test at the bottom compiles the header with the system C compiler and checks that every
//! size and field offset matches, so a change on one side that is not made on the other fails
//! `cargo test`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::service::{Frontend, Protocol};

/// Names of the maps in the eBPF object; also their file names under `<pin_dir>/maps/`.
pub(crate) mod names {
    pub(crate) const SERVICES: &str = "services";
    pub(crate) const BACKEND_SLOTS: &str = "backend_slots";
    pub(crate) const AFFINITY: &str = "affinity";
    pub(crate) const REVERSE_NAT: &str = "reverse_nat";
    pub(crate) const CONNECTED_SOCKETS: &str = "connected_sockets";
    pub(crate) const MESH_VIP_RANGES: &str = "mesh_vip_ranges";
    pub(crate) const TUNNEL_LISTENERS: &str = "tunnel_listeners";

    pub(crate) const ALL: [&str; 7] = [
        SERVICES,
        BACKEND_SLOTS,
        AFFINITY,
        REVERSE_NAT,
        CONNECTED_SOCKETS,
        MESH_VIP_RANGES,
        TUNNEL_LISTENERS,
    ];
}

/// Index of the IPv4 tunnel listener in `tunnel_listeners` (`TUNNEL_LISTENER_IPV4`).
pub(crate) const TUNNEL_LISTENER_IPV4: u32 = 0;
/// Index of the IPv6 tunnel listener in `tunnel_listeners` (`TUNNEL_LISTENER_IPV6`).
pub(crate) const TUNNEL_LISTENER_IPV6: u32 = 1;

/// An address as the programs see it: IPv6, or IPv4 mapped into IPv6.
fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_from_bytes(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// `struct service_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ServiceKey {
    pub(crate) addr: [u8; 16],
    pub(crate) port_be: u16,
    pub(crate) protocol: u8,
    pub(crate) pad: u8,
}

impl ServiceKey {
    pub(crate) fn new(frontend: &Frontend) -> Self {
        Self {
            addr: addr_bytes(frontend.addr.ip()),
            port_be: frontend.addr.port().to_be(),
            protocol: frontend.protocol.ip_protocol_number(),
            pad: 0,
        }
    }

    /// `None` for a protocol number this crate never writes.
    pub(crate) fn frontend(&self) -> Option<Frontend> {
        Some(Frontend {
            addr: SocketAddr::new(ip_from_bytes(self.addr), u16::from_be(self.port_be)),
            protocol: Protocol::from_ip_protocol_number(self.protocol)?,
        })
    }
}

/// `INLINE_BACKENDS`: services with at most this many backends keep them in their value.
pub(crate) const INLINE_BACKENDS: usize = 8;

/// `struct service_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServiceValue {
    pub(crate) backend_count: u16,
    pub(crate) bank: u8,
    pub(crate) flags: u8,
    pub(crate) affinity_timeout_sec: u32,
    pub(crate) inline_backends: [Backend; INLINE_BACKENDS],
}

impl ServiceValue {
    /// Whether the backends are in `backend_slots` rather than in `inline_backends`.
    pub(crate) fn uses_slots(&self) -> bool {
        usize::from(self.backend_count) > INLINE_BACKENDS
    }
}

/// `struct backend_slot_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BackendSlotKey {
    pub(crate) service: ServiceKey,
    pub(crate) bank: u16,
    pub(crate) index: u16,
}

/// `struct backend`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Backend {
    pub(crate) addr: [u8; 16],
    pub(crate) port_be: u16,
    pub(crate) pad: u16,
}

impl Backend {
    /// What fills the unused entries of `inline_backends`.
    pub(crate) const UNUSED: Backend = Backend {
        addr: [0; 16],
        port_be: 0,
        pad: 0,
    };

    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr: addr_bytes(addr.ip()),
            port_be: addr.port().to_be(),
            pad: 0,
        }
    }

    pub(crate) fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(ip_from_bytes(self.addr), u16::from_be(self.port_be))
    }
}

/// `struct affinity_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AffinityKey {
    pub(crate) netns_cookie: u64,
    pub(crate) service: ServiceKey,
    pub(crate) pad: u32,
}

/// `struct affinity_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AffinityValue {
    pub(crate) backend: Backend,
    pub(crate) pad: u32,
    pub(crate) last_used_ns: u64,
}

/// `struct reverse_nat_key`; its value is a [`ServiceKey`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReverseNatKey {
    pub(crate) socket_cookie: u64,
    pub(crate) backend: Backend,
    pub(crate) pad: u32,
}

/// `struct sock_translation`, the value of `connected_sockets` (keyed by socket cookie). Only
/// the programs use it; it is mirrored so that the layout test covers it and the pinned-map
/// check knows its size.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SockTranslation {
    pub(crate) backend: Backend,
    pub(crate) service: ServiceKey,
}

/// `struct mesh_vip_range_key` without its leading `prefixlen`, which aya's
/// `lpm_trie::Key` adds; the value is a `u8`, always 1.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MeshVipRangeAddr {
    pub(crate) addr: [u8; 16],
}

impl MeshVipRangeAddr {
    /// The trie key for a range: IPv4 ranges become IPv4-mapped IPv6 ranges (/96 + len).
    pub(crate) fn key(range: ipnet::IpNet) -> aya::maps::lpm_trie::Key<Self> {
        let range = range.trunc();
        let prefix_len = match range {
            ipnet::IpNet::V4(v4) => 96 + u32::from(v4.prefix_len()),
            ipnet::IpNet::V6(v6) => u32::from(v6.prefix_len()),
        };
        aya::maps::lpm_trie::Key::new(
            prefix_len,
            Self {
                addr: addr_bytes(range.addr()),
            },
        )
    }

    pub(crate) fn range(key: &aya::maps::lpm_trie::Key<Self>) -> Option<ipnet::IpNet> {
        let ip = ip_from_bytes(key.data().addr);
        let prefix_len = match ip {
            IpAddr::V4(_) => key.prefix_len().checked_sub(96)?,
            IpAddr::V6(_) => key.prefix_len(),
        };
        ipnet::IpNet::new(ip, u8::try_from(prefix_len).ok()?).ok()
    }
}

#[expect(
    unsafe_code,
    reason = "aya::Pod is an unsafe marker trait: it lets aya copy these structs to and from the kernel as bytes"
)]
mod pod {
    use super::*;

    // SAFETY: each type below is #[repr(C)], is made only of integers and byte arrays (so every
    // bit pattern is valid), and spells out its padding as fields, so it has no uninitialised bytes.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendSlotKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReverseNatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MeshVipRangeAddr {}
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, mem, process::Command};

    use super::*;

    /// `(struct, field) -> offset`, plus `(struct, "sizeof") -> size`, as the C compiler lays
    /// them out.
    fn c_layout() -> BTreeMap<(String, String), usize> {
        const FIELDS: &[(&str, &[&str])] = &[
            ("service_key", &["addr", "port_be", "protocol", "pad"]),
            (
                "service_value",
                &[
                    "backend_count",
                    "bank",
                    "flags",
                    "affinity_timeout_sec",
                    "inline_backends",
                ],
            ),
            ("backend_slot_key", &["service", "bank", "index"]),
            ("backend", &["addr", "port_be", "pad"]),
            ("affinity_key", &["netns_cookie", "service", "pad"]),
            ("affinity_value", &["backend", "pad", "last_used_ns"]),
            ("reverse_nat_key", &["socket_cookie", "backend", "pad"]),
            ("sock_translation", &["backend", "service"]),
            ("mesh_vip_range_key", &["prefixlen", "addr"]),
        ];
        let mut program = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include \"datapath.h\"\nint main(void) {\n",
        );
        for (name, fields) in FIELDS {
            program += &format!(
                "printf(\"{name} sizeof %zu\\n\", sizeof(struct {name}));\n\
                 printf(\"{name} alignof %zu\\n\", _Alignof(struct {name}));\n"
            );
            for field in *fields {
                program += &format!(
                    "printf(\"{name} {field} %zu\\n\", offsetof(struct {name}, {field}));\n"
                );
            }
        }
        program += "printf(\"constant INLINE_BACKENDS %d\\n\", INLINE_BACKENDS);\n";
        program += "return 0;\n}\n";

        let dir =
            std::env::temp_dir().join(format!("clustermesh-ebpf-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("layout.c");
        let binary = dir.join("layout");
        std::fs::write(&source, program).unwrap();
        let header_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/bpf");
        let status = Command::new("cc")
            .arg("-I")
            .arg(header_dir)
            .arg(&source)
            .arg("-o")
            .arg(&binary)
            .status()
            .expect("running the system C compiler `cc`");
        assert!(status.success(), "cc failed to compile the layout probe");
        let output = Command::new(&binary).output().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(output.status.success());

        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                let parts: Vec<&str> = line.split(' ').collect();
                let [name, field, value] = parts[..] else {
                    panic!("unexpected line {line:?}");
                };
                ((name.to_owned(), field.to_owned()), value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn rust_structs_match_the_c_header() {
        let c = c_layout();
        let mut rust: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut put = |name: &str, field: &str, value: usize| {
            rust.insert((name.to_owned(), field.to_owned()), value);
        };
        macro_rules! layout {
            ($c_name:literal, $ty:ty, [$($field:ident),*]) => {
                put($c_name, "sizeof", mem::size_of::<$ty>());
                put($c_name, "alignof", mem::align_of::<$ty>());
                $(put($c_name, stringify!($field), mem::offset_of!($ty, $field));)*
            };
        }
        layout!("service_key", ServiceKey, [addr, port_be, protocol, pad]);
        layout!(
            "service_value",
            ServiceValue,
            [
                backend_count,
                bank,
                flags,
                affinity_timeout_sec,
                inline_backends
            ]
        );
        put("constant", "INLINE_BACKENDS", INLINE_BACKENDS);
        layout!("backend_slot_key", BackendSlotKey, [service, bank, index]);
        layout!("backend", Backend, [addr, port_be, pad]);
        layout!("affinity_key", AffinityKey, [netns_cookie, service, pad]);
        layout!(
            "affinity_value",
            AffinityValue,
            [backend, pad, last_used_ns]
        );
        layout!(
            "reverse_nat_key",
            ReverseNatKey,
            [socket_cookie, backend, pad]
        );
        layout!("sock_translation", SockTranslation, [backend, service]);
        // aya's lpm_trie::Key<T> is `#[repr(C, packed)] { prefix_len: u32, data: T }`.
        put(
            "mesh_vip_range_key",
            "sizeof",
            4 + mem::size_of::<MeshVipRangeAddr>(),
        );
        put("mesh_vip_range_key", "alignof", 4);
        put("mesh_vip_range_key", "prefixlen", 0);
        put(
            "mesh_vip_range_key",
            "addr",
            4 + mem::offset_of!(MeshVipRangeAddr, addr),
        );
        assert_eq!(
            mem::size_of::<aya::maps::lpm_trie::Key<MeshVipRangeAddr>>(),
            4 + mem::size_of::<MeshVipRangeAddr>()
        );

        assert_eq!(
            rust, c,
            "Rust mirrors (left) differ from datapath.h (right)"
        );
    }

    #[test]
    fn ipv4_is_stored_ipv4_mapped_and_reads_back() {
        let frontend = Frontend {
            addr: "10.96.0.10:53".parse().unwrap(),
            protocol: Protocol::Udp,
        };
        let key = ServiceKey::new(&frontend);
        assert_eq!(
            key.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10]
        );
        assert_eq!(key.port_be, 53u16.to_be());
        assert_eq!(key.protocol, 17);
        assert_eq!(key.frontend(), Some(frontend));

        let backend: SocketAddr = "[fd00::1]:8080".parse().unwrap();
        assert_eq!(Backend::new(backend).socket_addr(), backend);
    }

    #[test]
    fn mesh_vip_ranges_round_trip_through_trie_keys() {
        for range in ["100.64.0.0/10", "fd00:6d65:7368::/48"] {
            let range: ipnet::IpNet = range.parse().unwrap();
            let key = MeshVipRangeAddr::key(range);
            assert_eq!(MeshVipRangeAddr::range(&key), Some(range));
        }
        assert_eq!(
            MeshVipRangeAddr::key("100.64.0.0/10".parse().unwrap()).prefix_len(),
            106
        );
        // Host bits are dropped rather than rejected by the kernel.
        let sloppy: ipnet::IpNet = "100.64.1.1/10".parse().unwrap();
        assert_eq!(
            MeshVipRangeAddr::range(&MeshVipRangeAddr::key(sloppy)),
            Some("100.64.0.0/10".parse().unwrap())
        );
    }
}
