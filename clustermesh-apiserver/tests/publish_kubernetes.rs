//! The same publishing as `publish.rs`, with the `kubernetes` source against the in-repo fake
//! API server (a test double) over real HTTP with the real kube client.

mod common;

use std::time::Duration;

use clustermesh_fake_kube_apiserver::FakeKubeApiServer;
use clustermesh_model::StateValue;
use clustermesh_testkit::{EtcdServer, assert_eventually};
use common::*;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml_ng::from_str(yaml).unwrap()
}

const SERVICES: &str = "clustermesh/state/services/v1/east/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_source_publishes_and_follows_changes() {
    let fake = FakeKubeApiServer::start().await;
    fake.apply(&parse::<Node>(&node(
        "node-1",
        "192.168.1.2",
        "10.244.1.0/24",
    )));
    fake.apply(&parse::<Node>(&node(
        "node-2",
        "192.168.1.3",
        "10.244.2.0/24",
    )));
    fake.apply(&parse::<Service>(&global_service(
        "demo",
        "echo",
        "10.96.0.10",
        &[],
    )));
    fake.apply(&parse::<EndpointSlice>(&endpoint_slice(
        "demo",
        "echo",
        &[
            ("10.244.1.5", "node-1", true),
            ("10.244.2.7", "node-2", true),
        ],
    )));
    fake.apply(&parse::<Pod>(&pod(
        "demo",
        "echo-1",
        "node-1",
        "10.244.1.5",
        "echo",
    )));
    fake.apply(&parse::<Pod>(&pod(
        "demo",
        "echo-2",
        "node-2",
        "10.244.2.7",
        "echo",
    )));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();

    let etcd = EtcdServer::start();
    let east = cluster("east", 1);
    let kube_args = [
        "--source=kubernetes".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
    ];
    let kube_args: Vec<&str> = kube_args.iter().map(String::as_str).collect();
    let running = start_apiserver(apiserver_args(
        &east,
        &etcd.endpoint(),
        dir.path(),
        &kube_args,
    ))
    .await;
    let c = client(&etcd.endpoint()).await;

    let services = decoded(&c, SERVICES, &east).await;
    let StateValue::Service(echo) = &services["clustermesh/state/services/v1/east/demo/echo"]
    else {
        panic!("not a service")
    };
    assert_eq!(echo.backends.len(), 2);
    assert_eq!(
        decoded(&c, "clustermesh/state/endpoints/v1/east/", &east)
            .await
            .len(),
        2
    );
    assert_eq!(
        decoded(&c, "clustermesh/state/identities/v1/east/", &east)
            .await
            .len(),
        1
    );
    assert_eq!(
        decoded(&c, "clustermesh/state/nodes/v1/east/", &east)
            .await
            .len(),
        2
    );

    // A third backend appears; then the service is deleted and disappears.
    fake.apply(&parse::<EndpointSlice>(&endpoint_slice(
        "demo",
        "echo",
        &[
            ("10.244.1.5", "node-1", true),
            ("10.244.2.7", "node-2", true),
            ("10.244.2.8", "node-2", true),
        ],
    )));
    assert_eventually("the new backend in etcd", Duration::from_secs(10), || {
        let (c, east) = (c.clone(), east.clone());
        async move {
            match decoded(&c, SERVICES, &east)
                .await
                .get("clustermesh/state/services/v1/east/demo/echo")
            {
                Some(StateValue::Service(s)) if s.backends.len() == 3 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(fake.delete::<Service>("demo", "echo"));
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
    running.stop();
}
