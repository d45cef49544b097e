//! A session: an etcd lease kept alive in the background. Keys written under it vanish when the
//! process dies and stops renewing it. If the lease is lost anyway (etcd was unreachable for
//! longer than its TTL), the session grants a new one and tells its subscribers, who write their
//! keys again under the new lease.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::retry::Backoff;

pub type LeaseId = i64;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("TTL {0:?} is too short: etcd leases last at least 2 s")]
    TtlTooShort(Duration),
    #[error("cannot grant a lease: {0}")]
    Grant(#[source] etcd_client::Error),
}

pub struct Session {
    lease: watch::Receiver<LeaseId>,
    task: JoinHandle<()>,
    client: Client,
}

impl Session {
    /// Grants a lease of `ttl` and keeps it alive until the session is dropped or closed.
    pub async fn start(mut client: Client, ttl: Duration) -> Result<Session, SessionError> {
        if ttl < Duration::from_secs(2) {
            return Err(SessionError::TtlTooShort(ttl));
        }
        let lease = grant(&mut client, ttl).await.map_err(SessionError::Grant)?;
        info!(lease = format!("{lease:x}"), ?ttl, "session started");
        let (tx, rx) = watch::channel(lease);
        let task = tokio::spawn(keep_session(client.clone(), ttl, tx));
        Ok(Session {
            lease: rx,
            task,
            client,
        })
    }

    /// The lease to write keys under now.
    pub fn lease_id(&self) -> LeaseId {
        *self.lease.borrow()
    }

    /// Changes whenever the lease was lost and replaced: keys must then be written again.
    pub fn subscribe(&self) -> watch::Receiver<LeaseId> {
        self.lease.clone()
    }

    /// Stops renewing and revokes the lease, so that its keys vanish now, not after the TTL.
    pub async fn close(mut self) {
        self.task.abort();
        let lease = self.lease_id();
        if let Err(e) = self.client.lease_revoke(lease).await {
            warn!(lease = format!("{lease:x}"), error = %e, "could not revoke the session lease; its keys vanish when it expires");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn grant(client: &mut Client, ttl: Duration) -> Result<LeaseId, etcd_client::Error> {
    Ok(client.lease_grant(ttl.as_secs() as i64, None).await?.id())
}

enum KeepAliveEnd {
    /// etcd says the lease no longer exists.
    Expired,
    Failed(String),
}

async fn keep_session(mut client: Client, ttl: Duration, tx: watch::Sender<LeaseId>) {
    let mut backoff = Backoff::new();
    loop {
        let lease = *tx.borrow();
        match keep_alive(&mut client, lease, ttl, &mut backoff).await {
            KeepAliveEnd::Expired => {
                warn!(
                    lease = format!("{lease:x}"),
                    "session lease expired; granting a new one"
                );
            }
            KeepAliveEnd::Failed(error) => {
                debug!(%error, "lease keep-alive failed; retrying");
                backoff.wait().await;
                continue;
            }
        }
        loop {
            match grant(&mut client, ttl).await {
                Ok(new) => {
                    info!(lease = format!("{new:x}"), "session lease replaced");
                    backoff.reset();
                    if tx.send(new).is_err() {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "cannot grant a new session lease; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}

/// Renews `lease` every third of its TTL until etcd says it is gone or the stream breaks.
async fn keep_alive(
    client: &mut Client,
    lease: LeaseId,
    ttl: Duration,
    backoff: &mut Backoff,
) -> KeepAliveEnd {
    let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(e) if e.to_string().contains("lease not found") => return KeepAliveEnd::Expired,
        Err(e) => return KeepAliveEnd::Failed(e.to_string()),
    };
    let period = ttl / 3;
    loop {
        if let Err(e) = keeper.keep_alive().await {
            return KeepAliveEnd::Failed(e.to_string());
        }
        match tokio::time::timeout(period, responses.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() <= 0 => return KeepAliveEnd::Expired,
            Ok(Ok(Some(_))) => backoff.reset(),
            Ok(Ok(None)) => return KeepAliveEnd::Failed("keep-alive stream closed".into()),
            // etcd answers a renewal of a revoked lease with TTL 0, but a renewal racing the
            // revocation can come back as "lease not found": the lease is gone either way.
            Ok(Err(e)) if e.to_string().contains("lease not found") => {
                return KeepAliveEnd::Expired;
            }
            Ok(Err(e)) => return KeepAliveEnd::Failed(e.to_string()),
            Err(_) => return KeepAliveEnd::Failed("no keep-alive answer in time".into()),
        }
        tokio::time::sleep(period).await;
    }
}
