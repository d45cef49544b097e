//! The one error type of this crate. Messages say what the operator can do about it.
//! aya's errors are boxed: they are large, and errors should not make every `Result` large.

use std::{io, path::PathBuf};

use crate::service::Frontend;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{dir} is not on a bpf filesystem, so the datapath maps cannot be pinned there; mount one \
         with `mount -t bpf bpffs /sys/fs/bpf` (in Kubernetes: a hostPath volume of /sys/fs/bpf \
         with mountPropagation: Bidirectional), or choose a pin directory under a mounted bpffs"
    )]
    BpfFsNotMounted { dir: PathBuf },

    #[error(
        "not permitted to {action}: the node agent needs to run as root or with CAP_BPF, \
         CAP_NET_ADMIN and CAP_SYS_ADMIN (securityContext.capabilities.add in its pod spec)"
    )]
    NotPermitted { action: String },

    #[error(
        "the kernel refused the eBPF program `{program}`; the datapath needs Linux 5.10 or newer \
         (sk_lookup, socket-local storage in cgroup sock_addr programs; tested on 6.x) built with \
         CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF and BTF (this kernel: {kernel}): {source}"
    )]
    KernelLacksFeature {
        program: &'static str,
        kernel: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("could not create the datapath's eBPF maps (pinned under {maps_dir}): {source}")]
    LoadObject {
        maps_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },

    #[error(
        "the pinned map {path} was created by an incompatible version of the datapath ({found}, \
         this version expects {expected}); remove {path} (this interrupts service traffic until \
         the agent has reprogrammed the services) and restart the agent"
    )]
    IncompatiblePinnedMap {
        path: PathBuf,
        found: String,
        expected: String,
    },

    #[error(
        "{path} is not a cgroup v2 directory; the socket load balancer attaches to cgroup v2 \
         (mount it with `mount -t cgroup2 none /sys/fs/cgroup/unified` if the host only has v1)"
    )]
    NotCgroup2 { path: PathBuf },

    #[error(
        "the pinned link {link} is attached to {found}, not to {expected}; one pin directory \
         serves one cgroup and one network namespace: use another pin directory, or remove \
         {link} to detach the old attachment"
    )]
    PinnedLinkElsewhere {
        link: PathBuf,
        expected: String,
        found: String,
    },

    #[error("could not attach `{program}` to {target}: {source}")]
    Attach {
        program: &'static str,
        target: PathBuf,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("could not {action} the link {link}: {source}")]
    Link {
        action: &'static str,
        link: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "could not update the eBPF map `{map}` ({action}): {source}; if it is full, the node has \
         more services or backends than the datapath was built for"
    )]
    Map {
        map: &'static str,
        action: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    #[error("service {frontend:?} cannot be programmed: {reason}")]
    InvalidService { frontend: Frontend, reason: String },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
