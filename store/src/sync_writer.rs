//! The sync writer keeps everything under its etcd prefixes equal to what its owner desires.
//!
//! The owner says what it wants (`upsert`, `delete`, or `replace_all`) and, once its first full
//! view is in, `mark_synced`. A background task writes only what changed, batched into etcd
//! transactions that are sent several at a time (pipelined, not one round trip per key), all
//! under the session lease. Stale keys, left by an earlier run of the same owner, are deleted
//! only after the owner's own initial sync is complete and written; then the
//! `synced/<cluster>/<kind>` marker is written, so readers know the view is whole. If the lease
//! is replaced, every key is written again under the new one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::retry::Backoff;
use crate::session::{LeaseId, Session};
use crate::watch_reader::list_keys;

/// etcd's default `--max-txn-ops`.
const MAX_OPS_PER_TXN: usize = 128;
/// Stay well below etcd's default 1.5 MiB request limit.
const MAX_BYTES_PER_TXN: usize = 1024 * 1024;
/// Transactions in flight at once.
const PIPELINE_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("key {key:?} is outside this writer's prefixes {prefixes:?}")]
    OutsidePrefix { key: String, prefixes: Vec<String> },
}

/// What the writer owns and how it announces its first full sync.
#[derive(Debug, Clone)]
pub struct SyncWriterConfig {
    /// Every key written starts with one of these; every other key under them is deleted once
    /// synced. (Shared and local-only services are one writer with two prefixes, so one synced
    /// marker covers both.)
    pub prefixes: Vec<String>,
    /// The `synced/<cluster>/<kind>` marker key and value, written after the first full sync.
    pub synced_key: String,
    pub synced_value: Vec<u8>,
}

/// A snapshot of the writer's progress, for status output and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStatus {
    /// Keys the owner wants in etcd.
    pub desired: usize,
    /// Writes and deletes not yet acknowledged by etcd.
    pub pending: usize,
    /// The synced marker is written.
    pub synced: bool,
    pub stale_deleted: u64,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    desired: HashMap<String, Vec<u8>>,
    /// Keys whose desired state (a value, or absence) is not yet written.
    dirty: HashSet<String>,
    sync_requested: bool,
    synced: bool,
    /// Bumped by every change of desire; `flush` waits for the writer to catch up with it.
    generation: u64,
    stale_deleted: u64,
    last_error: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    /// The generation whose changes are all in etcd.
    written: watch::Sender<u64>,
}

pub struct SyncWriter {
    prefixes: Vec<String>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SyncWriter {
    pub fn start(client: Client, session: &Session, config: SyncWriterConfig) -> SyncWriter {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            written: watch::channel(0).0,
        });
        let task = tokio::spawn(run(
            client,
            session.subscribe(),
            config.clone(),
            shared.clone(),
        ));
        SyncWriter {
            prefixes: config.prefixes,
            shared,
            task,
        }
    }

    fn check(&self, key: &str) -> Result<(), WriterError> {
        if !self.prefixes.iter().any(|p| key.starts_with(p.as_str())) {
            return Err(WriterError::OutsidePrefix {
                key: key.to_owned(),
                prefixes: self.prefixes.clone(),
            });
        }
        Ok(())
    }

    fn change(&self, f: impl FnOnce(&mut State) -> bool) {
        let changed = {
            let mut state = self.shared.state.lock().expect("writer state poisoned");
            let changed = f(&mut state);
            if changed {
                state.generation += 1;
            }
            changed
        };
        if changed {
            self.shared.wake.notify_one();
        }
    }

    /// Wants `key` to hold `value`. Writing the value it already has is a no-op.
    pub fn upsert(&self, key: String, value: Vec<u8>) -> Result<(), WriterError> {
        self.check(&key)?;
        self.change(|s| {
            if s.desired.get(&key) == Some(&value) {
                return false;
            }
            s.dirty.insert(key.clone());
            s.desired.insert(key, value);
            true
        });
        Ok(())
    }

    /// Wants `key` gone.
    pub fn delete(&self, key: &str) -> Result<(), WriterError> {
        self.check(key)?;
        self.change(|s| {
            if s.desired.remove(key).is_none() {
                return false;
            }
            s.dirty.insert(key.to_owned());
            true
        });
        Ok(())
    }

    /// Wants exactly `desired` under the prefixes: writes what differs, deletes what is missing.
    pub fn replace_all(&self, desired: BTreeMap<String, Vec<u8>>) -> Result<(), WriterError> {
        for key in desired.keys() {
            self.check(key)?;
        }
        self.change(|s| {
            let mut changed = false;
            let gone: Vec<String> = s
                .desired
                .keys()
                .filter(|k| !desired.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                s.desired.remove(&key);
                s.dirty.insert(key);
                changed = true;
            }
            for (key, value) in desired {
                if s.desired.get(&key) != Some(&value) {
                    s.dirty.insert(key.clone());
                    s.desired.insert(key, value);
                    changed = true;
                }
            }
            changed
        });
        Ok(())
    }

    /// The owner's first full view is in: once it is written, delete stale keys and write the
    /// synced marker.
    pub fn mark_synced(&self) {
        self.change(|s| {
            let first = !s.sync_requested;
            s.sync_requested = true;
            first
        });
    }

    /// Waits until every change made before this call is in etcd (and, if `mark_synced` was
    /// called, stale keys are deleted and the marker is written).
    pub async fn flush(&self) {
        let target = self
            .shared
            .state
            .lock()
            .expect("writer state poisoned")
            .generation;
        let mut written = self.shared.written.subscribe();
        // The sender lives in `shared`, which we hold, so this cannot fail.
        let _ = written.wait_for(|g| *g >= target).await;
    }

    pub fn status(&self) -> WriterStatus {
        let s = self.shared.state.lock().expect("writer state poisoned");
        WriterStatus {
            desired: s.desired.len(),
            pending: s.dirty.len(),
            synced: s.synced,
            stale_deleted: s.stale_deleted,
            last_error: s.last_error.clone(),
        }
    }
}

impl Drop for SyncWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One write: a value to put, or `None` to delete.
type Op = (String, Option<Vec<u8>>);

async fn run(
    client: Client,
    mut lease: watch::Receiver<LeaseId>,
    config: SyncWriterConfig,
    shared: Arc<Shared>,
) {
    let mut backoff = Backoff::new();
    let mut written_lease = *lease.borrow_and_update();
    loop {
        let lease_id = *lease.borrow_and_update();
        if lease_id != written_lease {
            written_lease = lease_id;
            // The old lease took our keys with it: write everything again.
            let mut s = shared.state.lock().expect("writer state poisoned");
            let keys: Vec<String> = s.desired.keys().cloned().collect();
            s.dirty.extend(keys);
            s.synced = false;
            s.generation += 1;
            info!(prefixes = ?config.prefixes, "lease replaced; rewriting all keys");
        }
        let (ops, generation, sync_requested, synced) = {
            let mut guard = shared.state.lock().expect("writer state poisoned");
            let s = &mut *guard;
            let ops: Vec<Op> = s
                .dirty
                .drain()
                .map(|k| {
                    let v = s.desired.get(&k).cloned();
                    (k, v)
                })
                .collect();
            (ops, s.generation, s.sync_requested, s.synced)
        };

        let mut result = write_ops(&client, lease_id, &ops).await;
        if result.is_ok() && sync_requested && !synced {
            result = finish_sync(&client, lease_id, &config, &shared).await;
        }
        match result {
            Ok(()) => {
                backoff.reset();
                {
                    let mut s = shared.state.lock().expect("writer state poisoned");
                    s.last_error = None;
                    if sync_requested && !s.synced {
                        s.synced = true;
                        info!(prefixes = ?config.prefixes, "initial sync complete");
                    }
                }
                shared.written.send_replace(generation);
            }
            Err(error) => {
                warn!(prefixes = ?config.prefixes, %error, "etcd write failed; will retry");
                {
                    let mut s = shared.state.lock().expect("writer state poisoned");
                    // Put back what was not confirmed; a newer desire for the same key wins
                    // anyway, because the value is looked up again at the next attempt.
                    s.dirty.extend(ops.into_iter().map(|(k, _)| k));
                    s.last_error = Some(error);
                }
                backoff.wait().await;
                continue;
            }
        }

        let pending = !shared
            .state
            .lock()
            .expect("writer state poisoned")
            .dirty
            .is_empty();
        if !pending {
            tokio::select! {
                _ = shared.wake.notified() => {}
                changed = lease.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Writes `ops` in transactions of bounded size, several in flight at once.
async fn write_ops(client: &Client, lease: LeaseId, ops: &[Op]) -> Result<(), String> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut batches: Vec<Vec<TxnOp>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for (key, value) in ops {
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if current.len() == MAX_OPS_PER_TXN
            || (bytes + size > MAX_BYTES_PER_TXN && !current.is_empty())
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(match value {
            Some(v) => TxnOp::put(
                key.as_str(),
                v.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ),
            None => TxnOp::delete(key.as_str(), None),
        });
    }
    batches.push(current);
    let count = batches.len();
    let mut results = futures::stream::iter(batches)
        .map(|batch| {
            let mut client = client.clone();
            async move { client.txn(Txn::new().and_then(batch)).await }
        })
        .buffer_unordered(PIPELINE_DEPTH);
    while let Some(r) = results.next().await {
        r.map_err(|e| e.to_string())?;
    }
    debug!(ops = ops.len(), txns = count, "written");
    Ok(())
}

/// Deletes every key under the prefixes that the owner does not desire, then writes the marker.
async fn finish_sync(
    client: &Client,
    lease: LeaseId,
    config: &SyncWriterConfig,
    shared: &Shared,
) -> Result<(), String> {
    let mut c = client.clone();
    let mut listed = Vec::new();
    for prefix in &config.prefixes {
        let (kvs, _) = list_keys(&mut c, prefix).await.map_err(|e| e.to_string())?;
        listed.extend(
            kvs.iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned()),
        );
    }
    let stale: Vec<Op> = {
        let s = shared.state.lock().expect("writer state poisoned");
        listed
            .into_iter()
            .filter(|k| !s.desired.contains_key(k))
            .map(|k| (k, None))
            .collect()
    };
    write_ops(client, lease, &stale).await?;
    if !stale.is_empty() {
        info!(prefixes = ?config.prefixes, count = stale.len(), "deleted stale keys from an earlier run");
        shared
            .state
            .lock()
            .expect("writer state poisoned")
            .stale_deleted += stale.len() as u64;
    }
    c.put(
        config.synced_key.as_str(),
        config.synced_value.clone(),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}
