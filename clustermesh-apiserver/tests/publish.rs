//! Publishing from the `manifests` source into a real etcd.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clustermesh_model::{Affinity, KeySchema, Kind, StateValue};
use clustermesh_store::{WatchEvent, WatchReader};
use clustermesh_testkit::{EtcdServer, assert_eventually};
use common::*;

const SERVICES: &str = "clustermesh/state/services/v1/east/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_published_and_follow_changes() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_small_cluster(dir.path());
    let east = cluster("east", 1);
    let running = start_apiserver(apiserver_args(&east, &etcd.endpoint(), dir.path(), &[])).await;
    let c = client(&etcd.endpoint()).await;

    // Everything decodes as a peer would read it.
    let services = decoded(&c, SERVICES, &east).await;
    let StateValue::Service(echo) = &services["clustermesh/state/services/v1/east/demo/echo"]
    else {
        panic!("not a service")
    };
    assert_eq!(echo.frontends[0].ip.to_string(), "10.96.0.10");
    assert_eq!(echo.frontends[0].ports["http"].port, 80);
    let backends: Vec<String> = echo.backends.iter().map(|b| b.ip.to_string()).collect();
    assert_eq!(backends, ["10.244.1.5", "10.244.2.7"]);
    assert_eq!(echo.backends[0].node.as_deref(), Some("node-1"));
    assert_eq!(echo.backends[0].ports["http"].port, 8080);

    let endpoints = decoded(&c, "clustermesh/state/endpoints/v1/east/", &east).await;
    assert_eq!(endpoints.len(), 2);
    let identities = decoded(&c, "clustermesh/state/identities/v1/east/", &east).await;
    assert_eq!(
        identities.len(),
        1,
        "both echo pods share one identity: {identities:?}"
    );
    let StateValue::Identity(identity) = identities.values().next().unwrap() else {
        panic!()
    };
    assert_eq!(identity.labels["k8s:app"], "echo");
    assert!(
        !identity.labels.contains_key("k8s:pod-template-hash"),
        "rollout labels are not part of an identity"
    );
    let nodes = decoded(&c, "clustermesh/state/nodes/v1/east/", &east).await;
    let StateValue::Node(n1) = &nodes["clustermesh/state/nodes/v1/east/node-1"] else {
        panic!()
    };
    assert_eq!(n1.pod_cidrs[0].to_string(), "10.244.1.0/24");
    assert_eq!(n1.zone.as_deref(), Some("zone-a"));

    let schema = KeySchema::default();
    for kind in [
        Kind::Services,
        Kind::Endpoints,
        Kind::Identities,
        Kind::Nodes,
    ] {
        assert_eq!(
            dump(&c, &schema.synced(&east.name, kind)).await.len(),
            1,
            "synced marker for {kind}"
        );
    }
    assert_eq!(dump(&c, &schema.cluster_config(&east.name)).await.len(), 1);

    // Readiness and metrics say the same.
    let (code, body) = http_get(running.health_addr(), "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (code, metrics) = http_get(running.health_addr(), "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("clustermesh_apiserver_published_objects{kind=\"services\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("clustermesh_apiserver_published_objects{kind=\"endpoints\"} 2"),
        "{metrics}"
    );
    assert_eq!(dump(&c, &schema.heartbeat()).await.len(), 1);

    // A third backend appears; then the service file is deleted and the service disappears.
    std::fs::write(
        dir.path().join("echo.yaml"),
        [
            global_service(
                "demo",
                "echo",
                "10.96.0.10",
                &[("clustermesh.io/affinity", "local")],
            ),
            endpoint_slice(
                "demo",
                "echo",
                &[
                    ("10.244.1.5", "node-1", true),
                    ("10.244.2.7", "node-2", true),
                    ("10.244.2.8", "node-2", true),
                ],
            ),
        ]
        .join("---\n"),
    )
    .unwrap();
    assert_eventually(
        "the new backend and the affinity in etcd",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            let east = east.clone();
            async move {
                let services = decoded(&c, SERVICES, &east).await;
                match services.get("clustermesh/state/services/v1/east/demo/echo") {
                    Some(StateValue::Service(s))
                        if s.backends.len() == 3 && s.affinity == Affinity::Local =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;

    std::fs::remove_file(dir.path().join("echo.yaml")).unwrap();
    assert_eventually(
        "the deleted service gone from etcd",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            async move {
                let left = dump(&c, SERVICES).await;
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{:?}", left.keys()))
                }
            }
        },
    )
    .await;
    // The status counter follows the write it reports on; give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running.status().published.services != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running.status().published.services, 0);
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshared_services_are_published_for_local_agents_only() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("svc.yaml"),
        [
            global_service(
                "demo",
                "private",
                "10.96.0.11",
                &[("clustermesh.io/shared", "false")],
            ),
            // Cilium's annotations are aliases of ours.
            global_service(
                "demo",
                "legacy",
                "10.96.0.12",
                &[("service.cilium.io/shared", "true")],
            )
            .replace("clustermesh.io/global", "service.cilium.io/global"),
            // Not global: not published at all.
            global_service("demo", "plain", "10.96.0.13", &[])
                .replace("clustermesh.io/global: \"true\"", "other: \"x\""),
        ]
        .join("---\n"),
    )
    .unwrap();
    let east = cluster("east", 1);
    let running = start_apiserver(apiserver_args(&east, &etcd.endpoint(), dir.path(), &[])).await;
    let c = client(&etcd.endpoint()).await;
    let shared: BTreeSet<String> = dump(&c, SERVICES).await.into_keys().collect();
    assert_eq!(
        shared,
        BTreeSet::from(["clustermesh/state/services/v1/east/demo/legacy".to_owned()])
    );
    let local = decoded(&c, "clustermesh/local/services/v1/east/", &east).await;
    assert_eq!(
        local.keys().collect::<Vec<_>>(),
        ["clustermesh/local/services/v1/east/demo/private"]
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_file_keeps_its_last_good_state() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_small_cluster(dir.path());
    let east = cluster("east", 1);
    let running = start_apiserver(apiserver_args(&east, &etcd.endpoint(), dir.path(), &[])).await;
    let c = client(&etcd.endpoint()).await;
    let before = dump(&c, "clustermesh/state/").await;

    std::fs::write(
        dir.path().join("echo.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: name: broken\n",
    )
    .unwrap();
    // Give the source time to see the bad file, then check nothing was lost.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = dump(&c, "clustermesh/state/").await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    running.stop();
}

/// Records every event under the `state/` prefix while the apiserver restarts.
async fn deletes_seen(reader_events: &mut tokio::sync::mpsc::Receiver<WatchEvent>) -> Vec<String> {
    let mut deletes = Vec::new();
    while let Ok(event) = reader_events.try_recv() {
        if let WatchEvent::Delete { key } = event {
            deletes.push(key);
        }
    }
    deletes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_leaves_no_window_and_keeps_identity_ids() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_small_cluster(dir.path());
    std::fs::write(
        dir.path().join("other.yaml"),
        pod("demo", "client", "node-1", "10.244.1.9", "client"),
    )
    .unwrap();
    let east = cluster("east", 1);
    let c = client(&etcd.endpoint()).await;
    let (_reader, mut events) =
        WatchReader::spawn(c.clone(), "clustermesh/state/".to_owned(), 100_000);

    let first = start_apiserver(apiserver_args(&east, &etcd.endpoint(), dir.path(), &[])).await;
    let published = dump(&c, "clustermesh/state/").await;
    let ids_before = decoded(&c, "clustermesh/state/identities/v1/east/", &east).await;
    assert_eq!(ids_before.len(), 2);

    // The apiserver dies (no revoke). While it is down, one pod goes away.
    first.stop();
    std::fs::remove_file(dir.path().join("other.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let second = start_apiserver(apiserver_args(&east, &etcd.endpoint(), dir.path(), &[])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deletes: BTreeSet<String> = deletes_seen(&mut events).await.into_iter().collect();
    // Only the endpoint of the pod that is really gone was deleted; every key that should
    // still exist stayed through the restart.
    assert_eq!(
        deletes,
        BTreeSet::from(["clustermesh/state/endpoints/v1/east/10.244.1.9".to_owned()])
    );
    let now = dump(&c, "clustermesh/state/").await;
    for key in published.keys() {
        if !deletes.contains(key) {
            assert!(now.contains_key(key), "{key} vanished");
        }
    }
    // An unchanged service keeps its value, change stamp included: peers and agents see no
    // change and measure no propagation lag for it.
    let echo = "clustermesh/state/services/v1/east/demo/echo";
    assert_eq!(now[echo], published[echo]);
    let StateValue::Service(service) = &decoded(&c, SERVICES, &east).await[echo] else {
        panic!("not a service")
    };
    assert!(service.modified_unix_millis.is_some(), "{service:?}");

    // The identities keep their numbers (the unused one is kept for its grace period).
    let ids_after = decoded(&c, "clustermesh/state/identities/v1/east/", &east).await;
    let numbers = |m: &BTreeMap<String, StateValue>| -> BTreeMap<String, u32> {
        m.values()
            .map(|v| match v {
                StateValue::Identity(i) => (i.labels["k8s:app"].clone(), i.id.get()),
                _ => panic!(),
            })
            .collect()
    };
    assert_eq!(numbers(&ids_after), numbers(&ids_before));
    assert_eq!(
        numbers(&ids_after)["echo"] >> 16,
        1,
        "the cluster ID is in the high bits"
    );
    second.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_identities_are_released_after_the_grace_period() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_small_cluster(dir.path());
    std::fs::write(
        dir.path().join("other.yaml"),
        pod("demo", "client", "node-1", "10.244.1.9", "client"),
    )
    .unwrap();
    let east = cluster("east", 1);
    let running = start_apiserver(apiserver_args(
        &east,
        &etcd.endpoint(),
        dir.path(),
        &["--identity-grace=1s"],
    ))
    .await;
    let c = client(&etcd.endpoint()).await;
    assert_eq!(
        dump(&c, "clustermesh/state/identities/v1/east/")
            .await
            .len(),
        2
    );

    std::fs::remove_file(dir.path().join("other.yaml")).unwrap();
    assert_eventually(
        "the unused identity released",
        Duration::from_secs(15),
        || {
            let c = c.clone();
            async move {
                let ids = dump(&c, "clustermesh/state/identities/v1/east/")
                    .await
                    .len();
                let allocations = dump(&c, "clustermesh/allocations/identities/east/")
                    .await
                    .len();
                if ids == 1 && allocations == 1 {
                    Ok(())
                } else {
                    Err(format!("{ids} identities, {allocations} allocations"))
                }
            }
        },
    )
    .await;
    running.stop();
}
