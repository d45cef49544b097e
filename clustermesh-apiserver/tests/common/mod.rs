//! Fixtures for apiserver tests: Kubernetes objects as YAML, an apiserver started on a real etcd,
//! and reads of what it published.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the fixtures"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use clustermesh_apiserver::{app, config};
use clustermesh_model::{
    ClusterId, ClusterName, ExpectedCluster, KeySchema, Limits, MaxConnectedClusters, StateValue,
    decode_state,
};
use clustermesh_store::{Client, EtcdConfig, connect};
use etcd_client::GetOptions;

pub fn cluster(name: &str, id: u32) -> ExpectedCluster {
    ExpectedCluster {
        name: ClusterName::new(name).unwrap(),
        id: ClusterId::new(id, MaxConnectedClusters::Max255).unwrap(),
        mesh: MaxConnectedClusters::Max255,
    }
}

pub fn global_service(
    ns: &str,
    name: &str,
    cluster_ip: &str,
    annotations: &[(&str, &str)],
) -> String {
    let mut ann = String::from("    clustermesh.io/global: \"true\"\n");
    for (k, v) in annotations {
        ann.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations:\n{ann}spec:\n  clusterIP: {cluster_ip}\n  selector:\n    app: {name}\n  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n"
    )
}

/// An EndpointSlice with `(ip, node, ready)` endpoints on port 8080.
pub fn endpoint_slice(ns: &str, service: &str, endpoints: &[(&str, &str, bool)]) -> String {
    let mut eps = String::new();
    for (ip, node, ready) in endpoints {
        eps.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  nodeName: {node}\n  conditions:\n    ready: {ready}\n"
        ));
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-abc\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: TCP\nendpoints:\n{eps}"
    )
}

pub fn pod(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\n    pod-template-hash: abc123\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: echo\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
    )
}

pub fn node(name: &str, ip: &str, pod_cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    topology.kubernetes.io/zone: zone-a\nspec:\n  podCIDR: {pod_cidr}\n  podCIDRs: [\"{pod_cidr}\"]\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n"
    )
}

/// A small cluster: two nodes, a global `echo` service with two ready backends and their pods.
pub fn write_small_cluster(dir: &Path) {
    std::fs::write(
        dir.join("nodes.yaml"),
        format!(
            "{}---\n{}",
            node("node-1", "192.168.1.2", "10.244.1.0/24"),
            node("node-2", "192.168.1.3", "10.244.2.0/24")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("echo.yaml"),
        [
            global_service("demo", "echo", "10.96.0.10", &[]),
            endpoint_slice(
                "demo",
                "echo",
                &[
                    ("10.244.1.5", "node-1", true),
                    ("10.244.2.7", "node-2", true),
                ],
            ),
            pod("demo", "echo-1", "node-1", "10.244.1.5", "echo"),
            pod("demo", "echo-2", "node-2", "10.244.2.7", "echo"),
        ]
        .join("---\n"),
    )
    .unwrap();
}

pub fn apiserver_args(
    cluster: &ExpectedCluster,
    etcd: &str,
    manifests: &Path,
    extra: &[&str],
) -> config::Config {
    let mut argv = vec![
        "clustermesh-apiserver".to_owned(),
        format!("--cluster-name={}", cluster.name),
        format!("--cluster-id={}", cluster.id),
        format!("--etcd-endpoints={etcd}"),
        "--source=manifests".to_owned(),
        format!("--manifests-dir={}", manifests.display()),
        "--lease-ttl=30s".to_owned(),
        "--heartbeat-interval=1s".to_owned(),
        "--health-addr=127.0.0.1:0".to_owned(),
        "--status-addr=127.0.0.1:0".to_owned(),
    ];
    // An extra flag replaces the base one of the same name.
    argv.retain(|a| {
        let flag = a.split('=').next().unwrap_or_default();
        !extra.iter().any(|e| e.starts_with(&format!("{flag}=")))
    });
    argv.extend(extra.iter().map(|s| s.to_string()));
    config::Config::from_args(config::Args::try_parse_from(argv).unwrap()).unwrap()
}

pub async fn start_apiserver(config: config::Config) -> app::Running {
    let running = app::start(config).await.expect("apiserver starts");
    running
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("apiserver becomes ready");
    running
}

pub async fn client(endpoint: &str) -> Client {
    connect(&EtcdConfig::plain(endpoint)).await.unwrap()
}

/// Every key under `prefix` with its raw value.
pub async fn dump(client: &Client, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let resp = client
        .clone()
        .get(prefix, Some(GetOptions::new().with_prefix()))
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

/// Every value under `prefix`, decoded strictly as a reader in another cluster would.
pub async fn decoded(
    client: &Client,
    prefix: &str,
    cluster: &ExpectedCluster,
) -> BTreeMap<String, StateValue> {
    dump(client, prefix)
        .await
        .into_iter()
        .map(|(k, v)| {
            let (_, value) =
                decode_state(&KeySchema::default(), &k, &v, cluster, &Limits::default())
                    .unwrap_or_else(|e| panic!("{k} does not decode: {e}"));
            (k, value)
        })
        .collect()
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}
