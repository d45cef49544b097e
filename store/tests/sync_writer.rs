//! The sync writer against a real etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use clustermesh_store::{EtcdConfig, Session, SyncWriter, SyncWriterConfig, connect};
use clustermesh_testkit::{EtcdServer, assert_eventually};
use etcd_client::{Client, GetOptions};

const PREFIX: &str = "clustermesh/state/services/v1/east/";
const SYNCED: &str = "clustermesh/synced/east/services";

fn config() -> SyncWriterConfig {
    SyncWriterConfig {
        prefixes: vec![PREFIX.to_owned()],
        synced_key: SYNCED.to_owned(),
        synced_value: b"{}".to_vec(),
    }
}

fn desired(range: std::ops::Range<usize>, tag: &str) -> BTreeMap<String, Vec<u8>> {
    range
        .map(|i| {
            (
                format!("{PREFIX}ns/svc-{i}"),
                format!("{tag}-{i}").into_bytes(),
            )
        })
        .collect()
}

/// Key -> (value, lease) of everything under the prefix.
async fn dump(client: &mut Client) -> BTreeMap<String, (Vec<u8>, i64)> {
    let resp = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (kv.value().to_vec(), kv.lease()),
            )
        })
        .collect()
}

async fn synced_marker(client: &mut Client) -> bool {
    client.get(SYNCED, None).await.unwrap().count() == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_writer_deletes_stale_keys_only_after_it_resynced() {
    let etcd = EtcdServer::start();
    let mut client = connect(&EtcdConfig::plain(etcd.endpoint())).await.unwrap();

    // First run: 100 keys, synced.
    let first_session = Session::start(client.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let first = SyncWriter::start(client.clone(), &first_session, config());
    first.replace_all(desired(0..100, "v1")).unwrap();
    first.mark_synced();
    first.flush().await;
    assert_eq!(dump(&mut client).await.len(), 100);
    assert!(synced_marker(&mut client).await);

    // The process dies: nothing is revoked, its keys live on until the lease would expire.
    drop(first);
    drop(first_session);

    // Second run wants only 50 keys, with new values. Before it has synced, nothing is deleted.
    let session = Session::start(client.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let writer = SyncWriter::start(client.clone(), &session, config());
    for (k, v) in desired(0..50, "v2") {
        writer.upsert(k, v).unwrap();
    }
    writer.flush().await;
    let during = dump(&mut client).await;
    assert_eq!(
        during.len(),
        100,
        "no stale key may be deleted before the resync"
    );
    assert_eq!(during[&format!("{PREFIX}ns/svc-7")].0, b"v2-7");
    assert!(!writer.status().synced);

    // Once synced, exactly the desired set remains, all under the new lease, and the marker.
    writer.mark_synced();
    writer.flush().await;
    let after = dump(&mut client).await;
    let expected = desired(0..50, "v2");
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, (value, lease)) in &after {
        assert_eq!(value, &expected[key]);
        assert_eq!(
            *lease,
            session.lease_id(),
            "{key} must move to the new lease"
        );
    }
    assert!(synced_marker(&mut client).await);
    let status = writer.status();
    assert_eq!(status.stale_deleted, 50);
    assert!(status.synced && status.pending == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_rewritten_when_the_lease_is_lost() {
    let etcd = EtcdServer::start();
    let mut client = connect(&EtcdConfig::plain(etcd.endpoint())).await.unwrap();
    let session = Session::start(client.clone(), Duration::from_secs(3))
        .await
        .unwrap();
    let writer = SyncWriter::start(client.clone(), &session, config());
    writer.replace_all(desired(0..300, "v")).unwrap();
    writer.mark_synced();
    writer.flush().await;
    assert_eq!(dump(&mut client).await.len(), 300);

    let lost = session.lease_id();
    client.lease_revoke(lost).await.unwrap();
    assert_eventually(
        "every key and the marker back under a new lease",
        Duration::from_secs(10),
        || {
            let mut c = client.clone();
            async move {
                let keys = dump(&mut c).await;
                let marker = synced_marker(&mut c).await;
                let on_new_lease = keys.values().all(|(_, l)| *l != lost);
                if keys.len() == 300 && marker && on_new_lease {
                    Ok(())
                } else {
                    Err(format!(
                        "{} keys, marker {marker}, moved {on_new_lease}",
                        keys.len()
                    ))
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_an_etcd_outage() {
    let mut etcd = EtcdServer::start();
    let mut client = connect(&EtcdConfig::plain(etcd.endpoint())).await.unwrap();
    let session = Session::start(client.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    let writer = SyncWriter::start(client.clone(), &session, config());
    writer.replace_all(desired(0..10, "a")).unwrap();
    writer.flush().await;

    etcd.kill9();
    // Desires keep coming while etcd is down; none is lost.
    writer.replace_all(desired(5..20, "b")).unwrap();
    writer.mark_synced();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        writer.status().last_error.is_some(),
        "the failure is visible"
    );
    etcd.restart();

    tokio::time::timeout(Duration::from_secs(30), writer.flush())
        .await
        .expect("the writer catches up after etcd returns");
    let after = dump(&mut client).await;
    let expected = desired(5..20, "b");
    assert_eq!(
        after
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        expected
    );
    assert!(writer.status().last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_outside_the_prefix_are_refused() {
    let etcd = EtcdServer::start();
    let client = connect(&EtcdConfig::plain(etcd.endpoint())).await.unwrap();
    let session = Session::start(client.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let writer = SyncWriter::start(client, &session, config());
    let err = writer
        .upsert("clustermesh/state/services/v1/west/a/b".into(), vec![])
        .unwrap_err();
    assert!(err.to_string().contains("outside this writer's prefixes"));
}
