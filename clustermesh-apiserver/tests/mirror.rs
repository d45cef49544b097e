//! Mirroring with two real etcds and two apiservers: east publishes, west mirrors east.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clustermesh_model::{KeySchema, Kind};
use clustermesh_testkit::{EtcdServer, assert_eventually};
use common::*;

/// The values east publishes under `state/<kind>/v1/east/`, keyed by what follows the prefix.
async fn published(east: &clustermesh_store::Client, kind: Kind) -> BTreeMap<String, Vec<u8>> {
    let schema = KeySchema::default();
    let name = cluster("east", 1).name;
    let prefix = schema.state_prefix(kind, &name);
    dump(east, &prefix)
        .await
        .into_iter()
        .map(|(k, v)| (k[prefix.len()..].to_owned(), v))
        .collect()
}

/// West's copy of east's `kind`, keyed the same way.
async fn mirrored(west: &clustermesh_store::Client, kind: Kind) -> BTreeMap<String, Vec<u8>> {
    let schema = KeySchema::default();
    let name = cluster("east", 1).name;
    let prefix = schema.cache_prefix(kind, &name);
    dump(west, &prefix)
        .await
        .into_iter()
        .map(|(k, v)| (k[prefix.len()..].to_owned(), v))
        .collect()
}

async fn assert_mirror_equals_published(
    east: &clustermesh_store::Client,
    west: &clustermesh_store::Client,
    what: &str,
) {
    assert_eventually(what, Duration::from_secs(20), || {
        let (east, west) = (east.clone(), west.clone());
        async move {
            for kind in Kind::ALL {
                let (a, b) = (published(&east, kind).await, mirrored(&west, kind).await);
                // Values are re-encoded after validation; compare what they decode to.
                let keys_a: Vec<_> = a.keys().collect();
                let keys_b: Vec<_> = b.keys().collect();
                if keys_a != keys_b {
                    return Err(format!(
                        "{kind}: east has {keys_a:?}, west's cache {keys_b:?}"
                    ));
                }
                for (k, v) in &a {
                    let parse =
                        |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).unwrap();
                    if parse(v) != parse(&b[k]) {
                        return Err(format!("{kind} {k}: values differ"));
                    }
                }
            }
            Ok(())
        }
    })
    .await;
}

fn write_peer_file(peers: &Path, name: &str, id: u32, endpoint: &str) {
    std::fs::write(
        peers.join(format!("{name}.yaml")),
        format!("name: {name}\nid: {id}\nendpoints: [\"{endpoint}\"]\n"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn west_mirrors_east_and_refuses_forgeries() {
    let (east_etcd, west_etcd) = (EtcdServer::start(), EtcdServer::start());
    let (east_dir, west_dir, peers) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write_small_cluster(east_dir.path());
    let east_api = start_apiserver(apiserver_args(
        &cluster("east", 1),
        &east_etcd.endpoint(),
        east_dir.path(),
        &[],
    ))
    .await;
    write_peer_file(peers.path(), "east", 1, &east_etcd.endpoint());
    let peers_arg = format!("--peers-dir={}", peers.path().display());
    let west_api = start_apiserver(apiserver_args(
        &cluster("west", 2),
        &west_etcd.endpoint(),
        west_dir.path(),
        &[&peers_arg],
    ))
    .await;
    let (east, west) = (
        client(&east_etcd.endpoint()).await,
        client(&west_etcd.endpoint()).await,
    );

    assert_mirror_equals_published(&east, &west, "east's state in west's cache").await;
    assert_eq!(mirrored(&west, Kind::Services).await.len(), 1);
    // The cache is marked complete only after east's own markers.
    let schema = KeySchema::default();
    let east_name = cluster("east", 1).name;
    assert_eventually(
        "west's synced markers for east",
        Duration::from_secs(10),
        || {
            let west = west.clone();
            let schema = schema.clone();
            let east_name = east_name.clone();
            async move {
                let markers = dump(&west, &schema.cache_synced_prefix(&east_name))
                    .await
                    .len();
                if markers == Kind::ALL.len() {
                    Ok(())
                } else {
                    Err(format!("{markers} markers"))
                }
            }
        },
    )
    .await;

    // A forged entry in east's etcd claiming to be cluster "north" is not copied; nor is an
    // entry under north's own prefix (west never reads it: east may only publish for itself).
    let mut e = east.clone();
    e.put(
        "clustermesh/state/services/v1/east/demo/forged",
        r#"{"cluster":"north","namespace":"demo","name":"forged","clusterID":3,"backends":{"10.0.0.1":{"http":{"Protocol":"TCP","Port":80}}}}"#,
        None,
    )
    .await
    .unwrap();
    e.put(
        "clustermesh/state/services/v1/north/demo/forged",
        r#"{"cluster":"north","namespace":"demo","name":"forged","clusterID":3}"#,
        None,
    )
    .await
    .unwrap();
    assert_eventually(
        "the forgery counted as rejected",
        Duration::from_secs(10),
        || {
            let rejected = west_api
                .peers()
                .get("east")
                .map(|p| p.rejected.clone())
                .unwrap_or_default();
            async move {
                if rejected.get("cluster_name") == Some(&1) {
                    Ok(())
                } else {
                    Err(format!("{rejected:?}"))
                }
            }
        },
    )
    .await;
    let cached: Vec<String> = dump(&west, "clustermesh/cache/")
        .await
        .into_keys()
        .collect();
    assert!(
        !cached
            .iter()
            .any(|k| k.contains("forged") || k.contains("north")),
        "{cached:?}"
    );
    assert_eventually(
        "east reported connected and synced",
        Duration::from_secs(5),
        || {
            let status = west_api.peers()["east"].clone();
            async move {
                if status.connected && status.synced {
                    Ok(())
                } else {
                    Err(format!("{status:?}"))
                }
            }
        },
    )
    .await;

    // The gRPC status API, as `clustermesh status` reads it.
    let mut api =
        clustermesh_api::apiserver::apiserver_status_client::ApiserverStatusClient::connect(
            format!("http://{}", west_api.status_addr()),
        )
        .await
        .unwrap();
    let reply = api
        .get_status(clustermesh_api::apiserver::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.cluster_name.as_str(), reply.cluster_id, reply.ready),
        ("west", 2, true)
    );
    let peer = &reply.peers[0];
    assert_eq!(peer.name, "east");
    assert!(peer.connected && peer.synced, "{peer:?}");
    assert_eq!(peer.mirrored["services"], 1);
    assert_eq!(peer.rejected["cluster_name"], 1);

    // Removing the peer file removes the cache.
    std::fs::remove_file(peers.path().join("east.yaml")).unwrap();
    assert_eventually(
        "east's cache deleted from west",
        Duration::from_secs(20),
        || {
            let west = west.clone();
            async move {
                let left = dump(&west, "clustermesh/cache/").await;
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{:?}", left.keys()))
                }
            }
        },
    )
    .await;
    east_api.stop();
    west_api.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_etcd_keeps_the_cache_and_converges_when_back() {
    let (mut east_etcd, west_etcd) = (EtcdServer::start(), EtcdServer::start());
    let (east_dir, west_dir, peers) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write_small_cluster(east_dir.path());
    let east_api = start_apiserver(apiserver_args(
        &cluster("east", 1),
        &east_etcd.endpoint(),
        east_dir.path(),
        &[],
    ))
    .await;
    write_peer_file(peers.path(), "east", 1, &east_etcd.endpoint());
    let peers_arg = format!("--peers-dir={}", peers.path().display());
    let west_api = start_apiserver(apiserver_args(
        &cluster("west", 2),
        &west_etcd.endpoint(),
        west_dir.path(),
        &[&peers_arg],
    ))
    .await;
    let (east, west) = (
        client(&east_etcd.endpoint()).await,
        client(&west_etcd.endpoint()).await,
    );
    assert_mirror_equals_published(&east, &west, "the first mirror").await;
    let before = dump(&west, "clustermesh/cache/").await;

    east_etcd.kill9();
    assert_eventually(
        "west to notice east is gone",
        Duration::from_secs(30),
        || {
            let connected = west_api.peers().get("east").map(|p| p.connected);
            async move {
                if connected == Some(false) {
                    Ok(())
                } else {
                    Err(format!("{connected:?}"))
                }
            }
        },
    )
    .await;
    // East changes while its etcd is down (its apiserver will publish once etcd is back).
    std::fs::write(
        east_dir.path().join("echo.yaml"),
        [
            global_service("demo", "echo", "10.96.0.10", &[]),
            endpoint_slice("demo", "echo", &[("10.244.1.5", "node-1", true)]),
            pod("demo", "echo-1", "node-1", "10.244.1.5", "echo"),
        ]
        .join("---\n"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        dump(&west, "clustermesh/cache/").await,
        before,
        "the last good copy is kept while east is down"
    );

    east_etcd.restart();
    // East's etcd comes back with the old state, which west's cache already equals: wait for
    // east's apiserver to publish the change first, or the comparison below proves nothing.
    assert_eventually(
        "east to publish the change made while its etcd was down",
        Duration::from_secs(30),
        || {
            let east = east.clone();
            async move {
                let endpoints = published(&east, Kind::Endpoints).await;
                if endpoints.len() == 1 {
                    Ok(())
                } else {
                    Err(format!("east publishes {:?}", endpoints.keys()))
                }
            }
        },
    )
    .await;
    assert_mirror_equals_published(
        &east,
        &west,
        "west's cache equal to east's state after east returns",
    )
    .await;
    east_api.stop();
    west_api.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_duplicate_id_is_refused_with_a_reason() {
    let (east_etcd, west_etcd) = (EtcdServer::start(), EtcdServer::start());
    let (east_dir, west_dir, peers) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let east_api = start_apiserver(apiserver_args(
        &cluster("east", 1),
        &east_etcd.endpoint(),
        east_dir.path(),
        &[],
    ))
    .await;
    // West's own ID is 1 too: the peer is refused before connecting.
    write_peer_file(peers.path(), "east", 1, &east_etcd.endpoint());
    let peers_arg = format!("--peers-dir={}", peers.path().display());
    let west_api = start_apiserver(apiserver_args(
        &cluster("west", 1),
        &west_etcd.endpoint(),
        west_dir.path(),
        &[&peers_arg],
    ))
    .await;
    assert_eventually("the refusal reported", Duration::from_secs(10), || {
        let error = west_api
            .peers()
            .get("east")
            .and_then(|p| p.last_error.clone());
        async move {
            match error {
                Some(e) if e.contains("needs its own ID") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    // A peer file that names the wrong ID for the cluster behind it: refused after connecting.
    write_peer_file(peers.path(), "east", 7, &east_etcd.endpoint());
    assert_eventually("the ID mismatch reported", Duration::from_secs(20), || {
        let error = west_api
            .peers()
            .get("east")
            .and_then(|p| p.last_error.clone());
        async move {
            match error {
                Some(e) if e.contains("says its ID is 1") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(
        dump(&client(&west_etcd.endpoint()).await, "clustermesh/cache/")
            .await
            .is_empty()
    );
    east_api.stop();
    west_api.stop();
}
