//! The node's liveness record, `state/agents/v1/<cluster>/<node>`: where its tunnel listens,
//! its certificate's fingerprint and the node's boot ID. It is written under the agent's own
//! lease, so a node whose agent dies stops being a tunnel target in every cluster's view once
//! the lease expires; if the lease is lost and replaced, the record is written again.

use std::sync::Arc;

use clustermesh_model::Agent;
use clustermesh_store::retry::Backoff;
use clustermesh_store::{Client, Session};
use etcd_client::PutOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Where Linux says which boot this is.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    #[error("cannot read the boot ID from {path}: {source}")]
    BootId {
        path: &'static str,
        source: std::io::Error,
    },
}

pub fn read_boot_id() -> Result<String, LivenessError> {
    std::fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_owned())
        .map_err(|source| LivenessError::BootId {
            path: BOOT_ID_PATH,
            source,
        })
}

/// The background task keeping the record; stops (the lease then expires) when dropped.
pub struct LivenessRecord {
    task: JoinHandle<()>,
    written: watch::Receiver<bool>,
}

impl LivenessRecord {
    /// Keeps `record` at `key` (the node's `state/agents/v1/<cluster>/<node>`) under the
    /// session's lease.
    pub fn start(client: Client, session: Arc<Session>, key: String, record: Agent) -> Self {
        let (tx, written) = watch::channel(false);
        let task = tokio::spawn(keep(client, session, key, record.to_json(), tx));
        Self { task, written }
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.written.clone()
    }

    /// The record is in etcd under the current lease.
    pub fn written(&self) -> bool {
        *self.written.borrow()
    }
}

impl Drop for LivenessRecord {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep(
    mut client: Client,
    session: Arc<Session>,
    key: String,
    value: Vec<u8>,
    written: watch::Sender<bool>,
) {
    let mut lease = session.subscribe();
    let mut backoff = Backoff::new();
    loop {
        let id = *lease.borrow_and_update();
        match client
            .put(
                key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(id)),
            )
            .await
        {
            Ok(_) => {
                info!(%key, lease = format!("{id:x}"), "liveness record written");
                backoff.reset();
                written.send_replace(true);
                if lease.changed().await.is_err() {
                    return;
                }
                written.send_replace(false);
            }
            Err(error) => {
                warn!(%key, %error, "cannot write the liveness record; retrying");
                backoff.wait().await;
            }
        }
    }
}
