//! The mesh's shared vocabulary, free of I/O: who a cluster is (`cluster`), where things live in
//! etcd (`keys`), what is stored there (`values`) and how to read what another cluster wrote
//! without trusting it (`decode`).

pub mod cluster;
pub mod decode;
pub mod etcd_users;
pub mod keys;
mod names;
pub mod values;
mod wire;

pub use cluster::{ClusterError, ClusterId, ClusterName, IdentityId, MaxConnectedClusters};
pub use decode::{
    DecodeError, ExpectedCluster, Limits, decode_cluster_config, decode_clusterset_vip,
    decode_marker, decode_state,
};
pub use keys::{Key, KeyError, KeySchema, Kind, ObjectName};
pub use names::{is_dns_label, is_dns_subdomain};
pub use values::*;
