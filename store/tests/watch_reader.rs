//! The watch reader against a real etcd that is killed, restarted and compacted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clustermesh_store::{EtcdConfig, WatchEvent, WatchReader, connect};
use clustermesh_testkit::{EtcdServer, assert_eventually};
use etcd_client::{Client, GetOptions};
use tokio::sync::mpsc;

const PREFIX: &str = "clustermesh/cache/services/v1/west/";

/// What a consumer builds from the events, and what it would have done wrong.
#[derive(Default)]
struct Mirror {
    initialized: bool,
    buffer: Option<BTreeMap<String, Vec<u8>>>,
    state: BTreeMap<String, Vec<u8>>,
    deletes: Vec<String>,
    upserts: usize,
}

impl Mirror {
    fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Init => self.buffer = Some(BTreeMap::new()),
            WatchEvent::InitApply(e) => {
                self.buffer
                    .as_mut()
                    .expect("InitApply after Init")
                    .insert(e.key, e.value);
            }
            WatchEvent::InitDone => {
                self.state = self.buffer.take().expect("InitDone after Init");
                self.initialized = true;
            }
            WatchEvent::Upsert(e) => {
                self.upserts += 1;
                self.state.insert(e.key, e.value);
            }
            WatchEvent::Delete { key } => {
                assert!(
                    self.state.remove(&key).is_some(),
                    "delete of unknown key {key}"
                );
                self.deletes.push(key);
            }
        }
    }

    fn drain(&mut self, rx: &mut mpsc::Receiver<WatchEvent>) {
        while let Ok(e) = rx.try_recv() {
            self.apply(e);
        }
    }
}

async fn etcd_state(client: &mut Client) -> BTreeMap<String, Vec<u8>> {
    let resp = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect()
}

fn key(i: usize) -> String {
    format!("{PREFIX}ns/svc-{i:04}")
}

async fn wait_until_mirrored(
    mirror: &mut Mirror,
    rx: &mut mpsc::Receiver<WatchEvent>,
    client: &Client,
    what: &str,
) {
    let want = etcd_state(&mut client.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        mirror.drain(rx);
        if mirror.initialized && mirror.state == want {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}: mirror has {} keys, etcd {}",
                mirror.state.len(),
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill9_restart_and_compaction_with_exactly_the_writers_set() {
    let mut etcd = EtcdServer::start();
    let mut client = connect(&EtcdConfig::plain(etcd.endpoint())).await.unwrap();
    for i in 0..200 {
        client.put(key(i), format!("v1-{i}"), None).await.unwrap();
    }
    // Something outside the prefix never shows up.
    client
        .put("clustermesh/cache/services/v1/westward/x", "no", None)
        .await
        .unwrap();

    let (reader, mut rx) = WatchReader::spawn(client.clone(), PREFIX.to_owned(), 64);
    let mut mirror = Mirror::default();
    wait_until_mirrored(&mut mirror, &mut rx, &client, "the initial list").await;
    assert_eq!(mirror.state.len(), 200);

    // Live updates.
    for i in 0..20 {
        client.put(key(i), format!("v2-{i}"), None).await.unwrap();
    }
    client.delete(key(199), None).await.unwrap();
    wait_until_mirrored(&mut mirror, &mut rx, &client, "live updates").await;
    let deletes_before = mirror.deletes.len();
    let upserts_before = mirror.upserts;

    // Crash etcd, bring it back, change things before the reader is back, then compact away
    // the history the reader would need to resume its watch.
    etcd.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.restart();
    let mut c2 = connect(&EtcdConfig::plain(etcd.endpoint())).await.unwrap();
    for i in 20..40 {
        c2.put(key(i), format!("v3-{i}"), None).await.unwrap();
    }
    for i in 40..50 {
        c2.delete(key(i), None).await.unwrap();
    }
    for i in 200..210 {
        c2.put(key(i), format!("new-{i}"), None).await.unwrap();
    }
    let rev = c2
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    c2.compact(rev, None).await.unwrap();

    wait_until_mirrored(&mut mirror, &mut rx, &client, "convergence after the crash").await;

    // Exactly the writer's set, reached with exactly the differences: 20 changed + 10 new
    // upserts, 10 deletes. No spurious delete, no redundant upsert of unchanged keys.
    assert_eq!(mirror.state, etcd_state(&mut c2).await);
    let new_deletes: BTreeSet<_> = mirror.deletes[deletes_before..].iter().cloned().collect();
    assert_eq!(new_deletes, (40..50).map(key).collect::<BTreeSet<_>>());
    assert_eq!(mirror.upserts - upserts_before, 30);
    assert!(reader.status().relists >= 1);
    assert!(reader.status().watching);

    // And it keeps watching after all that.
    c2.put(key(500), "after", None).await.unwrap();
    wait_until_mirrored(&mut mirror, &mut rx, &client, "an update after recovery").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_behind_a_compaction_still_converges() {
    let etcd = EtcdServer::start();
    let mut client = connect(&EtcdConfig::plain(etcd.endpoint())).await.unwrap();
    let (_reader, mut rx) = WatchReader::spawn(client.clone(), PREFIX.to_owned(), 1);
    let mut mirror = Mirror::default();
    wait_until_mirrored(&mut mirror, &mut rx, &client, "the empty initial list").await;

    // The consumer stops reading while many large changes happen and history is compacted.
    let big = "x".repeat(4096);
    for round in 0..3 {
        for i in 0..300 {
            client
                .put(key(i), format!("{round}-{big}"), None)
                .await
                .unwrap();
        }
    }
    for i in 0..100 {
        client.delete(key(i), None).await.unwrap();
    }
    let rev = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(rev, None).await.unwrap();

    wait_until_mirrored(
        &mut mirror,
        &mut rx,
        &client,
        "convergence of a slow consumer",
    )
    .await;
    assert_eq!(mirror.state.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_larger_than_one_page() {
    let etcd = EtcdServer::start();
    let mut client = connect(&EtcdConfig::plain(etcd.endpoint())).await.unwrap();
    for i in 0..1234 {
        client.put(key(i), "v", None).await.unwrap();
    }
    let (_reader, mut rx) = WatchReader::spawn(client.clone(), PREFIX.to_owned(), 4096);
    let mut mirror = Mirror::default();
    assert_eventually("all 1234 keys listed", Duration::from_secs(20), || {
        mirror.drain(&mut rx);
        let n = mirror.state.len();
        let init = mirror.initialized;
        async move {
            if init && n == 1234 {
                Ok(())
            } else {
                Err(format!("{n} keys"))
            }
        }
    })
    .await;
}
