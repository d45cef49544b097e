//! etcd security: with mTLS the apiserver creates users and roles and enables authentication;
//! peers can only read what they mirror, agents can only write their own record, and a peer
//! mirrors over those read-only credentials.

mod common;

use std::time::Duration;

use clustermesh_store::{Client, EtcdConfig, TlsPaths, connect};
use clustermesh_testkit::{EtcdServer, TlsFiles, assert_eventually};
use common::*;

fn tls(files: &TlsFiles) -> TlsPaths {
    TlsPaths {
        ca: files.ca.clone(),
        cert: files.cert.clone(),
        key: files.key.clone(),
    }
}

async fn as_user(etcd: &EtcdServer, files: &TlsFiles) -> Client {
    match connect(&EtcdConfig::mtls(etcd.endpoint(), tls(files))).await {
        Ok(c) => c,
        Err(e) => panic!("connect as {}: {e}", files.cert.display()),
    }
}

fn denied<T>(result: Result<T, etcd_client::Error>) -> bool {
    match result {
        Ok(_) => false,
        Err(e) => e.to_string().contains("permission denied"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_read_only_agents_write_only_their_own_record() {
    let etcd = EtcdServer::start_tls();
    let ca = &etcd.tls().unwrap().ca;
    let apiserver = ca.client("apiserver", "clustermesh-apiserver");
    let remote = ca.client("remote", "remote");
    let agent1 = ca.client("agent1", "agent-node-1");
    let dir = tempfile::tempdir().unwrap();
    write_small_cluster(dir.path());
    std::fs::write(
        dir.path().join("private.yaml"),
        global_service(
            "demo",
            "private",
            "10.96.0.11",
            &[("clustermesh.io/shared", "false")],
        ),
    )
    .unwrap();

    let east = cluster("east", 1);
    let tls_args = [
        format!("--etcd-ca={}", apiserver.ca.display()),
        format!("--etcd-cert={}", apiserver.cert.display()),
        format!("--etcd-key={}", apiserver.key.display()),
    ];
    let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let running = start_apiserver(apiserver_args(
        &east,
        &etcd.endpoint(),
        dir.path(),
        &tls_args,
    ))
    .await;

    // A peer reads what it mirrors, and nothing else; it writes nothing.
    let mut peer = as_user(&etcd, &remote).await;
    assert_eq!(
        peer.get("clustermesh/state/services/v1/east/demo/echo", None)
            .await
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        peer.get("clustermesh/cluster-config/east", None)
            .await
            .unwrap()
            .count(),
        1
    );
    assert!(denied(
        peer.get("clustermesh/local/services/v1/east/demo/private", None)
            .await
    ));
    assert!(denied(
        peer.get("clustermesh/allocations/identities/east/256", None)
            .await
    ));
    // Clusterset VIPs are for the cluster's own agents and DNS only.
    assert!(denied(
        peer.get(
            "clustermesh/local/clusterset-vips/v1/east/",
            Some(etcd_client::GetOptions::new().with_prefix())
        )
        .await
    ));
    assert!(denied(
        peer.put("clustermesh/state/services/v1/east/demo/x", "{}", None)
            .await
    ));
    assert!(denied(
        peer.put("clustermesh/cluster-config/east", "{}", None)
            .await
    ));

    // An agent writes its own liveness record, not another node's.
    let mut agent = as_user(&etcd, &agent1).await;
    agent
        .put("clustermesh/state/agents/v1/east/node-1", "{}", None)
        .await
        .unwrap();
    assert!(denied(
        agent
            .put("clustermesh/state/agents/v1/east/node-2", "{}", None)
            .await
    ));
    assert!(denied(
        agent
            .put("clustermesh/state/services/v1/east/demo/echo", "{}", None)
            .await
    ));
    assert_eq!(
        agent
            .get("clustermesh/local/services/v1/east/demo/private", None)
            .await
            .unwrap()
            .count(),
        1
    );
    assert!(
        agent
            .get(
                "clustermesh/local/clusterset-vips/v1/east/",
                Some(etcd_client::GetOptions::new().with_prefix())
            )
            .await
            .is_ok(),
        "agents read clusterset VIPs"
    );

    // A restart with authentication already on changes nothing and still works.
    running.stop();
    let running = start_apiserver(apiserver_args(
        &east,
        &etcd.endpoint(),
        dir.path(),
        &tls_args,
    ))
    .await;

    // Another cluster mirrors east through the read-only `remote` credentials.
    let west_etcd = EtcdServer::start();
    let (west_dir, peers) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(
        peers.path().join("east.yaml"),
        format!(
            "name: east\nid: 1\nendpoints: [\"{}\"]\nca: {}\ncert: {}\nkey: {}\n",
            etcd.endpoint(),
            remote.ca.display(),
            remote.cert.display(),
            remote.key.display()
        ),
    )
    .unwrap();
    let peers_arg = format!("--peers-dir={}", peers.path().display());
    let west = start_apiserver(apiserver_args(
        &cluster("west", 2),
        &west_etcd.endpoint(),
        west_dir.path(),
        &[&peers_arg],
    ))
    .await;
    let west_client = client(&west_etcd.endpoint()).await;
    assert_eventually(
        "east mirrored into west over read-only credentials",
        Duration::from_secs(20),
        || {
            let c = west_client.clone();
            let synced = west.peers().get("east").map(|p| p.synced);
            async move {
                let services = dump(&c, "clustermesh/cache/services/v1/east/").await.len();
                if services == 1 && synced == Some(true) {
                    Ok(())
                } else {
                    Err(format!("{services} services, synced {synced:?}"))
                }
            }
        },
    )
    .await;
    // The unshared service never left east.
    assert!(
        dump(&west_client, "clustermesh/cache/")
            .await
            .keys()
            .all(|k| !k.contains("private"))
    );
    west.stop();
    running.stop();
}
