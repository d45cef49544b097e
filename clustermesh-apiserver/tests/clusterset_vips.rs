//! Clusterset VIPs with two real etcds and two apiservers: east publishes, west mirrors east and
//! allocates VIPs for east's services that west does not have.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use clustermesh_model::{KeySchema, Limits, decode_clusterset_vip};
use clustermesh_testkit::{EtcdServer, assert_eventually};
use common::*;

fn write_peer_file(peers: &Path, name: &str, id: u32, endpoint: &str) {
    std::fs::write(
        peers.join(format!("{name}.yaml")),
        format!("name: {name}\nid: {id}\nendpoints: [\"{endpoint}\"]\n"),
    )
    .unwrap();
}

fn headless_service(ns: &str, name: &str) -> String {
    global_service(ns, name, "None", &[])
}

/// West's clusterset VIPs, by `<ns>/<name>`, decoded strictly.
async fn vips(west: &clustermesh_store::Client) -> BTreeMap<String, Vec<IpAddr>> {
    let schema = KeySchema::default();
    let expected = cluster("west", 2);
    dump(west, &schema.clusterset_vip_prefix(&expected.name))
        .await
        .into_iter()
        .map(|(k, v)| {
            let vip = decode_clusterset_vip(&schema, &k, &v, &expected, &Limits::default())
                .unwrap_or_else(|e| panic!("{k}: {e}"));
            (format!("{}/{}", vip.namespace, vip.name), vip.ips)
        })
        .collect()
}

async fn wait_vips(
    west: &clustermesh_store::Client,
    what: &str,
    want: &[&str],
) -> BTreeMap<String, Vec<IpAddr>> {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    assert_eventually(what, Duration::from_secs(20), || {
        let (west, want) = (west.clone(), want.clone());
        async move {
            let got = vips(&west).await;
            let names: Vec<String> = got.keys().cloned().collect();
            if names == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await;
    vips(west).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_only_services_get_a_stable_vip_that_is_released_when_they_go() {
    let (east_etcd, west_etcd) = (EtcdServer::start(), EtcdServer::start());
    let (east_dir, west_dir, peers) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // East: `echo` (only in east), `both` (in both clusters), `headless` (only in east, no
    // cluster IP: DNS answers it with backends, it needs no VIP).
    write_small_cluster(east_dir.path());
    std::fs::write(
        east_dir.path().join("more.yaml"),
        [
            global_service("demo", "both", "10.96.0.11", &[]),
            headless_service("demo", "headless"),
        ]
        .join("---\n"),
    )
    .unwrap();
    std::fs::write(
        west_dir.path().join("both.yaml"),
        global_service("demo", "both", "10.96.0.12", &[]),
    )
    .unwrap();

    let east_api = start_apiserver(apiserver_args(
        &cluster("east", 1),
        &east_etcd.endpoint(),
        east_dir.path(),
        &[],
    ))
    .await;
    write_peer_file(peers.path(), "east", 1, &east_etcd.endpoint());
    let west_args = [
        format!("--peers-dir={}", peers.path().display()),
        "--clusterset-vip-range=10.255.0.0/24,fd00:636c::/120".to_owned(),
        "--clusterset-vip-grace=1s".to_owned(),
    ];
    let west_args: Vec<&str> = west_args.iter().map(String::as_str).collect();
    let west_config = apiserver_args(
        &cluster("west", 2),
        &west_etcd.endpoint(),
        west_dir.path(),
        &west_args,
    );
    let west_api = start_apiserver(west_config.clone()).await;
    let west = client(&west_etcd.endpoint()).await;

    // Only the service that exists in east alone gets one: an IPv4 and an IPv6 address.
    let first = wait_vips(&west, "a VIP for demo/echo only", &["demo/echo"]).await;
    let echo_ips = first["demo/echo"].clone();
    assert_eq!(
        echo_ips,
        [
            "10.255.0.1".parse::<IpAddr>().unwrap(),
            "fd00:636c::1".parse().unwrap()
        ]
    );
    assert_eq!(
        west_api.clusterset_vips().allocated.len(),
        1,
        "status reports it"
    );
    // East allocates none: everything it has from west (nothing) exists locally.
    let east = client(&east_etcd.endpoint()).await;
    assert!(
        dump(
            &east,
            &KeySchema::default().clusterset_vip_prefix(&cluster("east", 1).name)
        )
        .await
        .is_empty()
    );

    // A restart of west's apiserver keeps the address, also past the grace period.
    west_api.stop();
    let west_api = start_apiserver(west_config.clone()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(vips(&west).await, first, "the VIP survives a restart");
    assert_eq!(
        west_api.clusterset_vips().allocated.values().next(),
        Some(&echo_ips)
    );

    // A second remote-only service gets the next address.
    std::fs::write(
        east_dir.path().join("other.yaml"),
        global_service("demo", "other", "10.96.0.13", &[]),
    )
    .unwrap();
    let both = wait_vips(
        &west,
        "a VIP for demo/other too",
        &["demo/echo", "demo/other"],
    )
    .await;
    assert_eq!(both["demo/echo"], echo_ips, "echo's VIP does not move");
    assert_eq!(
        both["demo/other"][0],
        "10.255.0.2".parse::<IpAddr>().unwrap()
    );

    // A local namesake appears in west: the VIP is no longer needed and goes after the grace.
    std::fs::write(
        west_dir.path().join("other.yaml"),
        global_service("demo", "other", "10.96.0.14", &[]),
    )
    .unwrap();
    wait_vips(
        &west,
        "demo/other released (west has its own)",
        &["demo/echo"],
    )
    .await;

    // The service goes from east: its VIP is released after the grace.
    std::fs::remove_file(east_dir.path().join("echo.yaml")).unwrap();
    wait_vips(&west, "demo/echo released", &[]).await;

    west_api.stop();
    east_api.stop();
}
