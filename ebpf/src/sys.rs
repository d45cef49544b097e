//! The few things aya does not expose: checking filesystems and capabilities, and reading and
//! updating pinned bpf links. This module holds the crate's raw system calls.

#![expect(
    unsafe_code,
    reason = "raw bpf(2) calls for BPF_OBJ_GET, BPF_LINK_UPDATE and BPF_OBJ_GET_INFO_BY_FD"
)]

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};

pub(crate) fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

pub(crate) fn is_cgroup2(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// Whether this process may load and attach the datapath: root, or CAP_SYS_ADMIN, or the
/// finer-grained CAP_BPF together with CAP_NET_ADMIN (cgroup and sk_lookup attachment).
pub(crate) fn has_bpf_privileges() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return nix::unistd::geteuid().is_root();
    };
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN))
}

pub(crate) fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|uts| uts.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

// The attribute blocks below are filled as u64 words with two u32 fields packed per word.
#[cfg(not(target_endian = "little"))]
compile_error!("sys.rs packs bpf_attr fields for little-endian targets only");

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_NETNS: u32 = 5;

/// `union bpf_attr` is at most this big for the commands used here; the kernel accepts a
/// shorter or longer (zero-tailed) attribute block.
type BpfAttr = [u64; 16];

fn bpf(command: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable, zero-initialised block of the size we pass; the kernel
    // reads at most that many bytes and writes only into it (or into buffers it points to, which
    // the callers keep alive for the duration of the call).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens a pinned bpf object (here: a link).
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut attr: BpfAttr = [0; 16];
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("BPF_OBJ_GET returned a bad fd"))?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Atomically replaces the program behind `link`: there is no moment without a program.
pub(crate) fn link_update(link: BorrowedFd<'_>, new_program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr: BpfAttr = [0; 16];
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    attr[0] = fd_u32(link) as u64 | (fd_u32(new_program) as u64) << 32;
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// What a bpf link is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkTarget {
    /// The cgroup's id, which on cgroup v2 is the inode number of its directory.
    Cgroup {
        cgroup_id: u64,
    },
    /// The inode number of the network namespace (as in `/proc/<pid>/ns/net`).
    Netns {
        inode: u32,
    },
    Other {
        link_type: u32,
    },
}

impl std::fmt::Display for LinkTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkTarget::Cgroup { cgroup_id } => write!(f, "the cgroup with id {cgroup_id}"),
            LinkTarget::Netns { inode } => write!(f, "the network namespace net:[{inode}]"),
            LinkTarget::Other { link_type } => write!(f, "a bpf link of type {link_type}"),
        }
    }
}

pub(crate) fn link_target(link: BorrowedFd<'_>) -> io::Result<LinkTarget> {
    // struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; union { ... } } where the union
    // starts at byte 16: cgroup { __u64 cgroup_id; __u32 attach_type; },
    // netns { __u32 netns_ino; __u32 attach_type; }.
    let mut info = [0u64; 32];
    let mut attr: BpfAttr = [0; 16];
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    attr[0] = fd_u32(link) as u64 | (std::mem::size_of_val(&info) as u64) << 32;
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let link_type = info[0] as u32;
    Ok(match link_type {
        BPF_LINK_TYPE_CGROUP => LinkTarget::Cgroup { cgroup_id: info[2] },
        BPF_LINK_TYPE_NETNS => LinkTarget::Netns {
            inode: info[2] as u32,
        },
        _ => LinkTarget::Other { link_type },
    })
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // A valid file descriptor is never negative.
    fd.as_raw_fd() as u32
}
