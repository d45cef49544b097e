//! Helpers for tests that run real parts: a real etcd on a free loopback port (`etcd`), mTLS
//! certificates made on the spot (`certs`), and waiting for a condition instead of sleeping
//! (`eventually`).

pub mod certs;
pub mod etcd;
pub mod eventually;

pub use certs::{TestCa, TlsFiles};
pub use etcd::EtcdServer;
pub use eventually::{assert_eventually, wait_for};
