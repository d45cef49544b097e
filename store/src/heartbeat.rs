//! The heartbeat: a cluster rewrites `<root>/.heartbeat` every few seconds, so that whoever reads
//! that etcd (a peer's apiserver, the CLI) can tell a live publisher from a stale one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clustermesh_model::{DecodeError, ExpectedCluster, Limits, Marker, decode_marker};
use etcd_client::{Client, PutOptions};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::session::Session;

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("cannot read the heartbeat at {key}: {source}")]
    Etcd {
        key: String,
        source: etcd_client::Error,
    },
    #[error("the heartbeat at {key} is not valid: {source}")]
    Invalid { key: String, source: DecodeError },
}

pub fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes the heartbeat now and then every `interval`, under the session's current lease.
pub struct HeartbeatWriter {
    task: JoinHandle<()>,
}

impl HeartbeatWriter {
    pub fn start(
        mut client: Client,
        session: &Session,
        key: String,
        cluster: ExpectedCluster,
        interval: Duration,
    ) -> HeartbeatWriter {
        let lease = session.subscribe();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let marker = Marker {
                    cluster: cluster.name.clone(),
                    cluster_id: cluster.id,
                    unix_millis: unix_millis_now(),
                };
                let options = PutOptions::new().with_lease(*lease.borrow());
                if let Err(e) = client
                    .put(key.as_str(), marker.to_json(), Some(options))
                    .await
                {
                    warn!(%key, error = %e, "cannot write the heartbeat");
                }
            }
        });
        HeartbeatWriter { task }
    }
}

impl Drop for HeartbeatWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A heartbeat as read, with how long ago it was written by the writer's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub marker: Marker,
    /// Negative if the writer's clock is ahead of ours.
    pub age_millis: i64,
}

/// Reads and checks the heartbeat at `key`; `None` if there is none.
pub async fn read_heartbeat(
    client: &mut Client,
    key: &str,
    expected: &ExpectedCluster,
) -> Result<Option<Heartbeat>, HeartbeatError> {
    let resp = client
        .get(key, None)
        .await
        .map_err(|source| HeartbeatError::Etcd {
            key: key.to_owned(),
            source,
        })?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(None);
    };
    let marker = decode_marker(kv.value(), expected, &Limits::default()).map_err(|source| {
        HeartbeatError::Invalid {
            key: key.to_owned(),
            source,
        }
    })?;
    let age_millis = unix_millis_now() as i64 - marker.unix_millis as i64;
    Ok(Some(Heartbeat { marker, age_millis }))
}
