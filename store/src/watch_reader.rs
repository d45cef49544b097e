//! The watch reader follows everything under one etcd prefix, in the shape of kube-runtime's
//! watcher: a consistent list (paged, at one revision) announced as `Init`, `InitApply`...,
//! `InitDone`, then `Upsert` and `Delete` events from a watch that starts right after the list.
//!
//! When the watch breaks (etcd restarted, connection lost, or the revision was compacted away),
//! the reader lists again and emits only the difference from what it had already emitted: keys
//! that changed or appeared become `Upsert`, keys that are gone become `Delete`, the rest is
//! silent. So a consumer never sees a spurious delete and never misses an update. Reconnection
//! waits with exponential backoff and jitter.

use std::collections::BTreeMap;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::retry::Backoff;

/// Keys per page when listing; keeps each response far below gRPC's 4 MiB message limit.
const LIST_PAGE: i64 = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A first full list begins.
    Init,
    /// One entry of the first full list.
    InitApply(Entry),
    /// The first full list is complete: swap it in.
    InitDone,
    Upsert(Entry),
    Delete {
        key: String,
    },
}

/// How the reader is doing, for status output and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReaderStatus {
    /// The first full list was delivered.
    pub initialized: bool,
    /// A watch is established right now.
    pub watching: bool,
    /// Lists after the first one (reconnects and compactions).
    pub relists: u64,
    pub last_error: Option<String>,
}

pub struct WatchReader {
    status: watch::Receiver<ReaderStatus>,
    task: JoinHandle<()>,
}

impl WatchReader {
    /// Starts following `prefix`; events arrive on the returned channel, which holds up to
    /// `capacity` events before the reader waits for the consumer.
    pub fn spawn(
        client: Client,
        prefix: String,
        capacity: usize,
    ) -> (WatchReader, mpsc::Receiver<WatchEvent>) {
        let (events_tx, events_rx) = mpsc::channel(capacity);
        let (status_tx, status_rx) = watch::channel(ReaderStatus::default());
        let task = tokio::spawn(run(client, prefix, events_tx, status_tx));
        (
            WatchReader {
                status: status_rx,
                task,
            },
            events_rx,
        )
    }

    pub fn status(&self) -> ReaderStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe_status(&self) -> watch::Receiver<ReaderStatus> {
        self.status.clone()
    }
}

impl Drop for WatchReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The consumer went away; stop.
struct Closed;

struct Reader {
    client: Client,
    prefix: String,
    events: mpsc::Sender<WatchEvent>,
    status: watch::Sender<ReaderStatus>,
    /// What the consumer has been told: key -> (mod revision, value).
    known: BTreeMap<String, (i64, Vec<u8>)>,
}

async fn run(
    client: Client,
    prefix: String,
    events: mpsc::Sender<WatchEvent>,
    status: watch::Sender<ReaderStatus>,
) {
    let mut reader = Reader {
        client,
        prefix,
        events,
        status,
        known: BTreeMap::new(),
    };
    let mut backoff = Backoff::new();
    loop {
        let revision = match list(&mut reader.client, &reader.prefix).await {
            Ok((kvs, revision)) => {
                backoff.reset();
                if reader.apply_list(kvs).await.is_err() {
                    return;
                }
                revision
            }
            Err(error) => {
                reader.set_error(format!("list {}: {error}", reader.prefix));
                backoff.wait().await;
                continue;
            }
        };
        match reader.watch_from(revision + 1).await {
            Ok(WatchEnd::Compacted) => {
                info!(prefix = %reader.prefix, "watch revision compacted; listing again");
            }
            Ok(WatchEnd::Broken(error)) => {
                reader.set_error(format!("watch {}: {error}", reader.prefix));
                backoff.wait().await;
            }
            Err(Closed) => return,
        }
        reader.status.send_modify(|s| {
            s.watching = false;
            s.relists += 1;
        });
    }
}

enum WatchEnd {
    Compacted,
    Broken(String),
}

impl Reader {
    fn set_error(&self, error: String) {
        warn!(%error, "etcd watch reader");
        self.status.send_modify(|s| {
            s.watching = false;
            s.last_error = Some(error);
        });
    }

    async fn send(&self, event: WatchEvent) -> Result<(), Closed> {
        self.events.send(event).await.map_err(|_| Closed)
    }

    async fn apply_list(&mut self, kvs: Vec<KeyValue>) -> Result<(), Closed> {
        let listed: BTreeMap<String, (i64, Vec<u8>)> = kvs
            .into_iter()
            .map(|kv| (key_string(&kv), (kv.mod_revision(), kv.value().to_vec())))
            .collect();
        if !self.status.borrow().initialized {
            self.send(WatchEvent::Init).await?;
            for (key, (rev, value)) in &listed {
                self.send(WatchEvent::InitApply(entry(key, *rev, value)))
                    .await?;
            }
            self.send(WatchEvent::InitDone).await?;
            self.status.send_modify(|s| s.initialized = true);
        } else {
            let mut upserts = 0;
            let mut deletes = 0;
            for (key, (rev, value)) in &listed {
                if self.known.get(key).map(|(r, _)| r) != Some(rev) {
                    self.send(WatchEvent::Upsert(entry(key, *rev, value)))
                        .await?;
                    upserts += 1;
                }
            }
            let gone: Vec<String> = self
                .known
                .keys()
                .filter(|k| !listed.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                self.send(WatchEvent::Delete { key }).await?;
                deletes += 1;
            }
            info!(prefix = %self.prefix, upserts, deletes, "re-listed; emitted the difference");
        }
        self.known = listed;
        Ok(())
    }

    async fn watch_from(&mut self, start: i64) -> Result<WatchEnd, Closed> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_progress_notify();
        let mut stream = match self.client.watch(self.prefix.as_str(), Some(options)).await {
            Ok(s) => s,
            Err(e) => return Ok(WatchEnd::Broken(e.to_string())),
        };
        self.status.send_modify(|s| {
            s.watching = true;
            s.last_error = None;
        });
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return Ok(WatchEnd::Broken("watch stream ended".into())),
                Err(e) => return Ok(WatchEnd::Broken(e.to_string())),
            };
            if resp.compact_revision() > 0 {
                return Ok(WatchEnd::Compacted);
            }
            if resp.canceled() {
                return Ok(WatchEnd::Broken(format!(
                    "watch canceled by etcd: {}",
                    resp.cancel_reason()
                )));
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = key_string(kv);
                match event.event_type() {
                    EventType::Put => {
                        let rev = kv.mod_revision();
                        if self.known.get(&key).map(|(r, _)| *r) >= Some(rev) {
                            continue; // already delivered by the list
                        }
                        self.known.insert(key.clone(), (rev, kv.value().to_vec()));
                        self.send(WatchEvent::Upsert(entry(&key, rev, kv.value())))
                            .await?;
                    }
                    EventType::Delete => {
                        if self.known.remove(&key).is_some() {
                            self.send(WatchEvent::Delete { key }).await?;
                        }
                    }
                }
            }
            debug!(prefix = %self.prefix, events = resp.events().len(), "watch response");
        }
    }
}

fn key_string(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

fn entry(key: &str, mod_revision: i64, value: &[u8]) -> Entry {
    Entry {
        key: key.to_owned(),
        value: value.to_vec(),
        mod_revision,
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // the whole keyspace
}

/// Lists every key and value under `prefix` at one revision, in pages, and returns that
/// revision. Use this (or [`list_keys`]) for any prefix that may be large: a single range
/// response over 4 MiB is refused by the gRPC client.
pub async fn list(
    client: &mut Client,
    prefix: &str,
) -> Result<(Vec<KeyValue>, i64), etcd_client::Error> {
    list_pages(client, prefix, false).await
}

/// Like [`list`], without the values.
pub async fn list_keys(
    client: &mut Client,
    prefix: &str,
) -> Result<(Vec<KeyValue>, i64), etcd_client::Error> {
    list_pages(client, prefix, true).await
}

async fn list_pages(
    client: &mut Client,
    prefix: &str,
    keys_only: bool,
) -> Result<(Vec<KeyValue>, i64), etcd_client::Error> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut all = Vec::new();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(LIST_PAGE);
        if keys_only {
            options = options.with_keys_only();
        }
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let mut resp = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        if let Some(last) = kvs.last() {
            from = last.key().to_vec();
            from.push(0);
        }
        all.extend(kvs);
        if !more {
            return Ok((all, revision));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
