//! Mirroring one peer: connect to its etcd with the read-only credentials it gave us, check
//! that it is who we were told, then follow its `state/` for every kind and copy what passes
//! strict validation into our own `cache/<kind>/v1/<peer>/`.
//!
//! What fails validation is counted by reason and logged, never copied; a key already copied
//! keeps its last good value. While the peer is unreachable its copy stays (the readers
//! reconnect with backoff and, once back, emit only what changed); with a cache TTL the copy is
//! dropped after that long. Our `cache/synced/<peer>/<kind>` marker is written only after the
//! peer's own `synced/<peer>/<kind>` says its state is complete and our copy of it is in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clustermesh_model::{
    ExpectedCluster, Key, KeySchema, Kind, Limits, Marker, decode_cluster_config, decode_state,
};
use clustermesh_store::{
    Client, Session, SyncWriter, SyncWriterConfig, WatchEvent, WatchReader, connect,
    unix_millis_now,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use clustermesh_store::PeerConfig;
use clustermesh_store::retry::Backoff;

/// How a peer is doing, for status output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// Connected and watching every kind.
    pub connected: bool,
    /// Every kind's cache is complete and marked synced.
    pub synced: bool,
    pub last_error: Option<String>,
    /// Unix millis of the last change copied from the peer.
    pub last_event_millis: Option<u64>,
    /// Objects in our copy, per kind.
    pub counts: BTreeMap<String, usize>,
    /// Values refused, per reason.
    pub rejected: BTreeMap<String, u64>,
}

/// Everything one peer's mirror needs from its owner.
pub struct MirrorContext {
    pub local: Client,
    pub session: std::sync::Arc<Session>,
    pub schema: KeySchema,
    pub mesh: clustermesh_model::MaxConnectedClusters,
    pub cache_ttl: Option<Duration>,
    pub status: watch::Sender<PeerStatus>,
}

/// Runs the mirror of `peer` until the task is dropped.
pub async fn run(peer: PeerConfig, ctx: MirrorContext) {
    let expected = ExpectedCluster {
        name: peer.name.clone(),
        id: peer.id,
        mesh: ctx.mesh,
    };
    let mut backoff = Backoff::new();
    let remote = loop {
        match connect_and_check(&peer, &ctx.schema).await {
            Ok(client) => break client,
            Err(error) => {
                warn!(peer = %peer.name, %error, "cannot mirror peer yet");
                ctx.status.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(error);
                });
                backoff.wait().await;
            }
        }
    };
    info!(peer = %peer.name, "connected; mirroring");

    let (events_tx, mut events) = mpsc::channel::<(Kind, WatchEvent)>(1024);
    let mut readers = Vec::new();
    let mut kinds: BTreeMap<Kind, KindMirror> = BTreeMap::new();
    for kind in Kind::ALL {
        let (reader, mut rx) = WatchReader::spawn(
            remote.clone(),
            ctx.schema.state_prefix(kind, &peer.name),
            1024,
        );
        let tx = events_tx.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if tx.send((kind, e)).await.is_err() {
                    return;
                }
            }
        });
        readers.push(reader);
        let marker = Marker {
            cluster: peer.name.clone(),
            cluster_id: peer.id,
            unix_millis: unix_millis_now(),
        };
        let writer = SyncWriter::start(
            ctx.local.clone(),
            &ctx.session,
            SyncWriterConfig {
                prefixes: vec![ctx.schema.cache_prefix(kind, &peer.name)],
                synced_key: ctx.schema.cache_synced(&peer.name, kind),
                synced_value: marker.to_json(),
            },
        );
        kinds.insert(
            kind,
            KindMirror {
                writer,
                listed: false,
                count: 0,
                buffer: None,
            },
        );
    }
    drop(events_tx);

    let mut remote_for_markers = remote.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut unreachable_since: Option<Instant> = None;
    let mut dropped_for_ttl = false;
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some((kind, event)) = event else { return };
                let mirror = kinds.get_mut(&kind).expect("every kind has a mirror");
                apply(mirror, kind, event, &expected, &ctx);
            }
            _ = tick.tick() => {
                let connected = readers.iter().all(|r| r.status().watching);
                // The peer's own markers gate ours.
                for (kind, mirror) in kinds.iter_mut() {
                    if mirror.listed && !mirror.writer.status().synced && peer_synced(&mut remote_for_markers, &ctx.schema, &peer, *kind).await {
                        debug!(peer = %peer.name, %kind, "peer synced; marking our copy");
                        mirror.writer.mark_synced();
                    }
                }
                match (connected, unreachable_since) {
                    (true, _) => {
                        unreachable_since = None;
                        if dropped_for_ttl {
                            info!(peer = %peer.name, "peer is back after its cache was dropped");
                            dropped_for_ttl = false;
                        }
                    }
                    (false, None) => unreachable_since = Some(Instant::now()),
                    (false, Some(since)) => {
                        if let Some(ttl) = ctx.cache_ttl && !dropped_for_ttl && since.elapsed() >= ttl {
                            warn!(peer = %peer.name, ?ttl, "peer unreachable for longer than the cache TTL; dropping its mirrored state");
                            for mirror in kinds.values_mut() {
                                let _ = mirror.writer.replace_all(BTreeMap::new());
                                mirror.count = 0;
                            }
                            dropped_for_ttl = true;
                        }
                    }
                }
                let last_error = readers.iter().find_map(|r| r.status().last_error);
                let synced = kinds.values().all(|m| m.writer.status().synced);
                ctx.status.send_modify(|s| {
                    s.connected = connected;
                    s.synced = synced;
                    if connected { s.last_error = None } else if last_error.is_some() { s.last_error = last_error.clone() }
                    s.counts = kinds.iter().map(|(k, m)| (k.to_string(), m.count)).collect();
                });
            }
        }
    }
}

struct KindMirror {
    writer: SyncWriter,
    /// The reader delivered its first full list.
    listed: bool,
    count: usize,
    /// The first list, collected until `InitDone`.
    buffer: Option<BTreeMap<String, Vec<u8>>>,
}

/// Copies one event into the local cache, if it passes validation.
fn apply(
    mirror: &mut KindMirror,
    kind: Kind,
    event: WatchEvent,
    expected: &ExpectedCluster,
    ctx: &MirrorContext,
) {
    match event {
        WatchEvent::Init => mirror.buffer = Some(BTreeMap::new()),
        WatchEvent::InitApply(entry) => {
            if let Some((key, value)) = validate(&entry.key, &entry.value, expected, ctx) {
                mirror.buffer.get_or_insert_default().insert(key, value);
            }
        }
        WatchEvent::InitDone => {
            let first = mirror.buffer.take().unwrap_or_default();
            mirror.count = first.len();
            if let Err(e) = mirror.writer.replace_all(first) {
                warn!(%kind, error = %e, "internal: cache key outside its prefix");
            }
            mirror.listed = true;
        }
        WatchEvent::Upsert(entry) => {
            if let Some((key, value)) = validate(&entry.key, &entry.value, expected, ctx) {
                let _ = mirror.writer.upsert(key, value);
                mirror.count = mirror.writer.status().desired;
                ctx.status
                    .send_modify(|s| s.last_event_millis = Some(unix_millis_now()));
            }
        }
        WatchEvent::Delete { key } => {
            if let Some(cache_key) = cache_key(&key, expected, ctx) {
                let _ = mirror.writer.delete(&cache_key);
                mirror.count = mirror.writer.status().desired;
                ctx.status
                    .send_modify(|s| s.last_event_millis = Some(unix_millis_now()));
            }
        }
    }
}

/// The local cache key for a peer's state key, if the key is well formed.
fn cache_key(key: &str, expected: &ExpectedCluster, ctx: &MirrorContext) -> Option<String> {
    match ctx.schema.parse(key) {
        Ok(Key::State { cluster, object }) if cluster == expected.name => {
            Some(ctx.schema.cache(&cluster, &object))
        }
        _ => None,
    }
}

/// Decodes a value strictly and returns its cache key and normalized value, or counts why not.
fn validate(
    key: &str,
    value: &[u8],
    expected: &ExpectedCluster,
    ctx: &MirrorContext,
) -> Option<(String, Vec<u8>)> {
    match decode_state(&ctx.schema, key, value, expected, &Limits::default()) {
        Ok((Key::State { cluster, object }, decoded)) => {
            Some((ctx.schema.cache(&cluster, &object), decoded.to_json()))
        }
        Ok(_) => None,
        Err(error) => {
            warn!(peer = %expected.name, %key, %error, "refused a value from a peer; not copied");
            let reason = error.reason().to_owned();
            ctx.status.send_modify(|s| {
                *s.rejected.entry(reason).or_default() += 1;
                s.last_error = Some(format!("{key}: {error}"));
            });
            None
        }
    }
}

async fn peer_synced(
    client: &mut Client,
    schema: &KeySchema,
    peer: &PeerConfig,
    kind: Kind,
) -> bool {
    client
        .get(schema.synced(&peer.name, kind), None)
        .await
        .map(|r| r.count() > 0)
        .unwrap_or(false)
}

/// Connects and checks that the peer's cluster config names the cluster and ID we expect.
async fn connect_and_check(peer: &PeerConfig, schema: &KeySchema) -> Result<Client, String> {
    let mut client = connect(&peer.etcd).await.map_err(|e| e.to_string())?;
    let key = schema.cluster_config(&peer.name);
    let resp = client
        .get(key.as_str(), None)
        .await
        .map_err(|e| format!("reading {key}: {e}"))?;
    let Some(kv) = resp.kvs().first() else {
        return Err(format!(
            "{key} is missing in the peer's etcd: is clustermesh-apiserver running in {} and is its cluster name right?",
            peer.name
        ));
    };
    let config = decode_cluster_config(schema, &key, kv.value(), &peer.name, &Limits::default())
        .map_err(|e| format!("{key}: {e}"))?;
    if config.id != peer.id {
        return Err(format!(
            "cluster {} says its ID is {}, but the peer configuration says {}; fix the peer file",
            peer.name, config.id, peer.id
        ));
    }
    Ok(client)
}
