//! The etcd layer that the apiserver and the node agents share.
//!
//! - `connect`: mTLS (or plain, for local tests) with errors that name the broken piece;
//!   `tls_channel` reads the certificate files again at every reconnect.
//! - `session`: a lease kept alive in the background and replaced if lost.
//! - `sync_writer`: keeps a prefix equal to a desired set, batched and pipelined, and writes the
//!   synced marker after the first full sync; deletes stale keys only after that.
//! - `watch_reader`: list + watch with kube-runtime-style events, re-listing after compaction or
//!   reconnect and emitting only the difference.
//! - `heartbeat`: the periodic liveness key of a cluster.
//! - `peers`: the peers directory (one file per connected remote cluster).

pub mod connect;
pub mod flags;
pub mod heartbeat;
pub mod peers;
pub mod retry;
pub mod session;
pub mod sync_writer;
mod tls_channel;
pub mod watch_reader;

pub use connect::{ConnectError, EtcdConfig, TlsPaths, connect};
pub use etcd_client::Client;
pub use flags::{ClusterArgs, ClusterArgsError, EtcdArgs};
pub use heartbeat::{Heartbeat, HeartbeatWriter, read_heartbeat, unix_millis_now};
pub use peers::{PeerConfig, PeerConfigError, read_peers};
pub use session::{LeaseId, Session, SessionError};
pub use sync_writer::{SyncWriter, SyncWriterConfig, WriterError, WriterStatus};
pub use watch_reader::{Entry, ReaderStatus, WatchEvent, WatchReader, list, list_keys};
