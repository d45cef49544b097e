//! The `kubernetes` source against the fake API server, over real HTTP with the real kube
//! client: readiness, changes of every kind, broken watches and 410 Expired re-lists.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustermesh_apiserver::source::kubernetes::{KubernetesError, KubernetesSource, WatchedKind};
use clustermesh_apiserver::source::{ClusterObjects, ObjectKey, ViewReceiver};
use clustermesh_fake_kube_apiserver::{FakeKubeApiServer, ResourceKind, Settings};
use clustermesh_testkit::{assert_eventually, wait_for};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(15);

fn service(ns: &str, name: &str, cluster_ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": { "namespace": ns, "name": name,
                      "annotations": { "clustermesh.io/global": "true" } },
        "spec": { "clusterIP": cluster_ip, "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }] },
    }))
    .unwrap()
}

fn endpoint_slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true }, "nodeName": "node-1" }))
        .collect();
    serde_json::from_value(json!({
        "metadata": { "namespace": ns, "name": name,
                      "labels": { "kubernetes.io/service-name": service } },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
    }))
    .unwrap()
}

fn pod(ns: &str, name: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "namespace": ns, "name": name, "labels": { "app": name } },
        "spec": { "nodeName": "node-1", "containers": [{ "name": "main", "image": "echo" }] },
        "status": { "podIP": ip, "phase": "Running" },
    }))
    .unwrap()
}

fn node(name: &str, ip: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "topology.kubernetes.io/zone": "zone-a" } },
        "spec": { "podCIDRs": ["10.244.1.0/24"] },
        "status": { "addresses": [{ "type": "InternalIP", "address": ip }] },
    }))
    .unwrap()
}

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap()
}

/// One object of every kind, so that every watch has something to carry.
fn seed(fake: &FakeKubeApiServer) {
    fake.apply(&namespace("prod"));
    fake.apply(&node("node-1", "192.168.1.1"));
    fake.apply(&service("prod", "web", "10.96.0.10"));
    fake.apply(&endpoint_slice("prod", "web-1", "web", &["10.244.1.5"]));
    fake.apply(&pod("prod", "web-0", "10.244.1.5"));
}

/// A running source and every view it published, in order.
struct Running {
    views: ViewReceiver,
    published: Arc<Mutex<Vec<Arc<ClusterObjects>>>>,
    source: JoinHandle<Result<(), KubernetesError>>,
    recorder: JoinHandle<()>,
}

impl Running {
    fn start(source: KubernetesSource) -> Self {
        let (sender, views) = watch::channel(None);
        let published = Arc::new(Mutex::new(Vec::new()));
        let mut receiver = views.clone();
        let record = published.clone();
        let recorder = tokio::spawn(async move {
            while receiver.changed().await.is_ok() {
                let view = receiver.borrow_and_update().clone();
                let view = view.expect("the source never takes a published view back to None");
                record.lock().unwrap().push(view);
            }
        });
        let source = tokio::spawn(source.run(sender));
        Self {
            views,
            published,
            source,
            recorder,
        }
    }

    fn latest(&self) -> Option<Arc<ClusterObjects>> {
        self.views.borrow().clone()
    }

    /// Waits until the latest view satisfies `check` (which says what is still wrong).
    async fn converge(&self, what: &str, check: impl Fn(&ClusterObjects) -> Result<(), String>) {
        assert_eventually(what, WAIT, || {
            let latest = self.latest();
            let result = match latest {
                Some(view) => check(&view),
                None => Err("no view published yet".to_string()),
            };
            async move { result }
        })
        .await;
    }

    /// Asserts that `key` is in every view published so far: it was never deleted, so a view
    /// without it would be a spurious removal.
    fn assert_never_missing_service(&self, key: &ObjectKey) {
        let published = self.published.lock().unwrap();
        for (index, view) in published.iter().enumerate() {
            assert!(
                view.services.contains_key(key),
                "published view #{index} of {} lacks service {key:?}",
                published.len()
            );
        }
    }

    fn assert_never_missing_pod(&self, key: &ObjectKey) {
        let published = self.published.lock().unwrap();
        for (index, view) in published.iter().enumerate() {
            assert!(
                view.pods.contains_key(key),
                "published view #{index} of {} lacks pod {key:?}",
                published.len()
            );
        }
    }

    fn stop(self) {
        self.source.abort();
        self.recorder.abort();
    }
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

fn cluster_ip(view: &ClusterObjects, ns: &str, name: &str) -> Option<String> {
    view.services
        .get(&key(ns, name))
        .and_then(|s| s.spec.as_ref())
        .and_then(|spec| spec.cluster_ip.clone())
}

fn slice_ips(view: &ClusterObjects, ns: &str, name: &str) -> Vec<String> {
    view.endpoint_slices
        .get(&key(ns, name))
        .map(|slice| {
            slice
                .endpoints
                .iter()
                .flatten()
                .flat_map(|e| e.addresses.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn pod_ip(view: &ClusterObjects, ns: &str, name: &str) -> Option<String> {
    view.pods
        .get(&key(ns, name))
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.pod_ip.clone())
}

fn node_ip(view: &ClusterObjects, name: &str) -> Option<String> {
    view.nodes
        .get(name)
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.first())
        .map(|a| a.address.clone())
}

/// Waits until every kind's watch is open on the fake, i.e. the source finished its lists.
async fn wait_for_watches(fake: &FakeKubeApiServer, count: usize) {
    assert_eventually(&format!("{count} open watches"), WAIT, || {
        let open = fake.open_watches();
        async move {
            if open == count {
                Ok(())
            } else {
                Err(format!("{open} open"))
            }
        }
    })
    .await;
}

#[tokio::test]
async fn first_view_arrives_only_after_every_kind_is_listed() {
    let fake = FakeKubeApiServer::start().await;
    seed(&fake);
    // Pods cannot be listed yet: the other four kinds sync, pods keep retrying.
    fake.fail_lists(ResourceKind::Pod, true);
    let running = Running::start(KubernetesSource::from_client(fake.client()));

    wait_for_watches(&fake, 4).await;
    let pod_lists = wait_for(WAIT, || {
        let lists = fake.list_requests(ResourceKind::Pod);
        async move { (lists >= 2).then_some(lists) }
    })
    .await;
    assert!(
        pod_lists.is_some(),
        "the source retries the failed pod list"
    );
    assert!(
        running.latest().is_none(),
        "a view was published before pods were listed"
    );

    fake.fail_lists(ResourceKind::Pod, false);
    running
        .converge("the first view with every seeded object", |view| {
            let expected = (
                view.namespaces.contains_key("prod"),
                node_ip(view, "node-1").as_deref() == Some("192.168.1.1"),
                cluster_ip(view, "prod", "web").as_deref() == Some("10.96.0.10"),
                slice_ips(view, "prod", "web-1") == ["10.244.1.5"],
                pod_ip(view, "prod", "web-0").as_deref() == Some("10.244.1.5"),
            );
            match expected {
                (true, true, true, true, true) => Ok(()),
                other => Err(format!(
                    "(namespace, node, service, slice, pod) present: {other:?}"
                )),
            }
        })
        .await;
    // The first view is already complete: readiness is earned, not approximated.
    let first = running.published.lock().unwrap()[0].clone();
    assert!(first.pods.contains_key(&key("prod", "web-0")));
    assert!(first.services.contains_key(&key("prod", "web")));
    running.stop();
}

#[tokio::test]
async fn changes_of_every_kind_appear_in_the_next_views() {
    let fake = FakeKubeApiServer::start().await;
    seed(&fake);
    let running = Running::start(KubernetesSource::from_client(fake.client()));
    running
        .converge("the seeded service", |view| {
            cluster_ip(view, "prod", "web")
                .map(|_| ())
                .ok_or_else(|| "no service prod/web".to_string())
        })
        .await;

    // Add one of each kind.
    fake.apply(&namespace("staging"));
    fake.apply(&node("node-2", "192.168.1.2"));
    fake.apply(&service("staging", "api", "10.96.0.20"));
    fake.apply(&endpoint_slice("staging", "api-1", "api", &["10.244.2.7"]));
    fake.apply(&pod("staging", "api-0", "10.244.2.7"));
    running
        .converge("the added objects", |view| {
            let seen = (
                view.namespaces.contains_key("staging"),
                node_ip(view, "node-2"),
                cluster_ip(view, "staging", "api"),
                slice_ips(view, "staging", "api-1"),
                pod_ip(view, "staging", "api-0"),
            );
            if seen.0
                && seen.1.is_some()
                && seen.2.is_some()
                && !seen.3.is_empty()
                && seen.4.is_some()
            {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        })
        .await;

    // Modify them.
    fake.apply(&node("node-2", "192.168.1.22"));
    fake.apply(&service("staging", "api", "10.96.0.21"));
    fake.apply(&endpoint_slice(
        "staging",
        "api-1",
        "api",
        &["10.244.2.7", "10.244.2.8"],
    ));
    fake.apply(&pod("staging", "api-0", "10.244.2.9"));
    running
        .converge("the modified objects", |view| {
            let seen = (
                node_ip(view, "node-2"),
                cluster_ip(view, "staging", "api"),
                slice_ips(view, "staging", "api-1"),
                pod_ip(view, "staging", "api-0"),
            );
            let want = (
                Some("192.168.1.22".to_string()),
                Some("10.96.0.21".to_string()),
                vec!["10.244.2.7".to_string(), "10.244.2.8".to_string()],
                Some("10.244.2.9".to_string()),
            );
            if seen == want {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        })
        .await;

    // Delete them.
    assert!(fake.delete::<Pod>("staging", "api-0"));
    assert!(fake.delete::<EndpointSlice>("staging", "api-1"));
    assert!(fake.delete::<Service>("staging", "api"));
    assert!(fake.delete::<Node>("", "node-2"));
    assert!(fake.delete::<Namespace>("", "staging"));
    running
        .converge("the deleted objects gone", |view| {
            let left = (
                view.namespaces.contains_key("staging"),
                view.nodes.contains_key("node-2"),
                view.services.contains_key(&key("staging", "api")),
                view.endpoint_slices.contains_key(&key("staging", "api-1")),
                view.pods.contains_key(&key("staging", "api-0")),
            );
            if left == (false, false, false, false, false) {
                Ok(())
            } else {
                Err(format!("still present: {left:?}"))
            }
        })
        .await;

    // The seeded objects were never touched, so no view ever lacked them.
    running.assert_never_missing_service(&key("prod", "web"));
    running.assert_never_missing_pod(&key("prod", "web-0"));
    let final_view = running.latest().unwrap();
    assert_eq!(final_view.services.len(), 1);
    assert_eq!(final_view.pods.len(), 1);
    assert_eq!(final_view.nodes.len(), 1);
    running.stop();
}

#[tokio::test]
async fn broken_watches_resume_without_spurious_removals() {
    let fake = FakeKubeApiServer::start().await;
    seed(&fake);
    let running = Running::start(KubernetesSource::from_client(fake.client()));
    wait_for_watches(&fake, 5).await;
    running
        .converge("the seeded service", |view| {
            cluster_ip(view, "prod", "web")
                .map(|_| ())
                .ok_or_else(|| "no service prod/web".to_string())
        })
        .await;
    let lists_before = fake.list_requests(ResourceKind::Service);

    for round in 0..3 {
        fake.break_watches();
        // Changes while the watches reconnect: resumed from history, not re-listed.
        fake.apply(&service("prod", &format!("svc-{round}"), "10.96.1.1"));
        fake.apply(&pod("prod", &format!("pod-{round}"), "10.244.3.1"));
        wait_for_watches(&fake, 5).await;
    }
    running
        .converge(
            "the services and pods added across broken watches",
            |view| {
                let missing: Vec<String> = (0..3)
                    .flat_map(|round| {
                        [
                            (!view
                                .services
                                .contains_key(&key("prod", &format!("svc-{round}"))))
                            .then(|| format!("svc-{round}")),
                            (!view
                                .pods
                                .contains_key(&key("prod", &format!("pod-{round}"))))
                            .then(|| format!("pod-{round}")),
                        ]
                    })
                    .flatten()
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("missing {missing:?}"))
                }
            },
        )
        .await;

    running.assert_never_missing_service(&key("prod", "web"));
    running.assert_never_missing_pod(&key("prod", "web-0"));
    assert_eq!(
        fake.list_requests(ResourceKind::Service),
        lists_before,
        "a broken watch within the history window resumes without a re-list"
    );
    assert_eq!(fake.expired_watches(), 0);
    running.stop();
}

#[tokio::test]
async fn expired_watch_relists_and_converges() {
    let fake = FakeKubeApiServer::start().await;
    seed(&fake);
    fake.apply(&service("prod", "doomed", "10.96.0.99"));
    let running = Running::start(KubernetesSource::from_client(fake.client()));
    wait_for_watches(&fake, 5).await;
    running
        .converge("the seeded services", |view| {
            if view.services.contains_key(&key("prod", "doomed")) {
                Ok(())
            } else {
                Err("no service prod/doomed".to_string())
            }
        })
        .await;
    let service_lists = fake.list_requests(ResourceKind::Service);

    // Take the watches down and keep them down while the history they would resume from is
    // compacted away.
    fake.refuse_watches(true);
    fake.break_watches();
    wait_for_watches(&fake, 0).await;
    fake.apply(&service("prod", "born-while-down", "10.96.0.50"));
    fake.apply(&service("prod", "web", "10.96.0.11"));
    assert!(fake.delete::<Service>("prod", "doomed"));
    fake.compact_history();
    // The first re-list of services fails: until one succeeds, the last good services stay
    // published (stale, but nothing removed that was not deleted as far as we know).
    fake.fail_lists(ResourceKind::Service, true);
    fake.refuse_watches(false);
    let failed_relist = wait_for(WAIT, || {
        let lists = fake.list_requests(ResourceKind::Service);
        async move { (lists > service_lists).then_some(lists) }
    })
    .await;
    assert!(
        failed_relist.is_some(),
        "410 Expired made the source re-list services"
    );
    // Let the other kinds finish their re-lists and publish views in the meantime.
    wait_for_watches(&fake, 4).await;
    let stale = running.latest().unwrap();
    assert!(stale.services.contains_key(&key("prod", "doomed")));
    assert_eq!(
        cluster_ip(&stale, "prod", "web").as_deref(),
        Some("10.96.0.10")
    );
    fake.fail_lists(ResourceKind::Service, false);

    running
        .converge("the view after the re-list", |view| {
            let seen = (
                cluster_ip(view, "prod", "web"),
                view.services.contains_key(&key("prod", "born-while-down")),
                view.services.contains_key(&key("prod", "doomed")),
            );
            if seen == (Some("10.96.0.11".to_string()), true, false) {
                Ok(())
            } else {
                Err(format!("(web IP, born-while-down, doomed) = {seen:?}"))
            }
        })
        .await;
    assert!(
        fake.expired_watches() >= 1,
        "the resumed watch was answered with 410 Expired"
    );
    assert!(
        fake.list_requests(ResourceKind::Service) > service_lists,
        "410 Expired made the source re-list services"
    );
    running.assert_never_missing_service(&key("prod", "web"));
    running.assert_never_missing_pod(&key("prod", "web-0"));

    // After the re-list the source watches again and sees live changes.
    wait_for_watches(&fake, 5).await;
    fake.apply(&pod("prod", "after-relist", "10.244.9.9"));
    running
        .converge("a change after the re-list", |view| {
            pod_ip(view, "prod", "after-relist")
                .map(|_| ())
                .ok_or_else(|| "no pod prod/after-relist".to_string())
        })
        .await;
    running.stop();
}

#[tokio::test]
async fn bookmarks_keep_quiet_watches_resumable_after_compaction() {
    let fake = FakeKubeApiServer::start_with(Settings {
        bookmark_interval: Duration::from_millis(50),
        ..Settings::default()
    })
    .await;
    seed(&fake);
    let running = Running::start(KubernetesSource::from_client(fake.client()));
    wait_for_watches(&fake, 5).await;
    let lists_before: Vec<u64> = ResourceKind::ALL
        .iter()
        .map(|kind| fake.list_requests(*kind))
        .collect();

    // Only services change: the four other watches learn the new resource version from
    // bookmarks alone.
    let bookmarks_before = fake.bookmarks_sent();
    for index in 0..5 {
        fake.apply(&service("prod", &format!("busy-{index}"), "10.96.2.1"));
    }
    assert_eventually(
        "every watch told the current resource version",
        WAIT,
        || {
            let behind = fake.watches_behind();
            async move {
                if behind == 0 {
                    Ok(())
                } else {
                    Err(format!("{behind} watches behind"))
                }
            }
        },
    )
    .await;
    assert!(
        fake.bookmarks_sent() >= bookmarks_before + 4,
        "the four quiet watches were told by bookmarks"
    );

    // End the watches cleanly (everything sent arrives), forget the history, reconnect.
    fake.refuse_watches(true);
    fake.end_watches();
    wait_for_watches(&fake, 0).await;
    fake.compact_history();
    fake.refuse_watches(false);
    wait_for_watches(&fake, 5).await;

    assert_eq!(
        fake.expired_watches(),
        0,
        "every watch resumed from a bookmarked resource version"
    );
    let lists_after: Vec<u64> = ResourceKind::ALL
        .iter()
        .map(|kind| fake.list_requests(*kind))
        .collect();
    assert_eq!(lists_after, lists_before, "no kind had to re-list");
    running
        .converge("the busy services", |view| {
            let count = view.services.len();
            if count == 6 {
                Ok(())
            } else {
                Err(format!("{count} services"))
            }
        })
        .await;
    running.stop();
}

#[tokio::test]
async fn forbidden_kind_fails_with_the_rbac_rule_it_needs() {
    let fake = FakeKubeApiServer::start().await;
    seed(&fake);
    fake.forbid(ResourceKind::EndpointSlice);
    let running = Running::start(KubernetesSource::from_client(fake.client()));
    let result = tokio::time::timeout(WAIT, running.source)
        .await
        .expect("the source gives up on a forbidden kind")
        .expect("the source task does not panic");
    let error = result.expect_err("listing a forbidden kind is an error");
    assert!(
        matches!(
            error,
            KubernetesError::Forbidden {
                verb: "list",
                kind: WatchedKind::EndpointSlices,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(r#"apiGroups ["discovery.k8s.io"], resources ["endpointslices"], verbs ["list", "watch"]"#),
        "{message}"
    );
    assert!(
        running.views.borrow().is_none(),
        "nothing is published without every kind"
    );
    running.recorder.abort();
}

#[tokio::test]
async fn unreachable_api_server_fails_the_initial_sync_with_a_deadline() {
    // A port that was free a moment ago: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: gone\n  user: {{}}\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: gone\n\
             current-context: gone\n"
        ),
    )
    .unwrap();
    let source = KubernetesSource::from_kubeconfig(&kubeconfig, None)
        .await
        .unwrap()
        .with_initial_sync_timeout(Duration::from_secs(2));
    let (sender, views) = watch::channel(None);
    let error = tokio::time::timeout(WAIT, source.run(sender))
        .await
        .expect("the initial sync deadline ends the run")
        .expect_err("no API server, no sync");
    let message = error.to_string();
    assert!(
        matches!(error, KubernetesError::InitialSyncTimeout { .. }),
        "{error:?}"
    );
    assert!(
        message.contains(&format!("127.0.0.1:{port}")) && message.contains("reachable"),
        "{message}"
    );
    assert!(views.borrow().is_none());
}

#[tokio::test]
async fn kubeconfig_with_a_named_context_reaches_the_server() {
    let fake = FakeKubeApiServer::start().await;
    seed(&fake);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();

    let source = KubernetesSource::from_kubeconfig(&kubeconfig, Some("fake"))
        .await
        .unwrap();
    let running = Running::start(source);
    running
        .converge("a view through the kubeconfig", |view| {
            cluster_ip(view, "prod", "web")
                .map(|_| ())
                .ok_or_else(|| "no service prod/web".to_string())
        })
        .await;
    running.stop();

    let unknown = KubernetesSource::from_kubeconfig(&kubeconfig, Some("no-such-context")).await;
    let message = unknown.err().expect("an unknown context").to_string();
    assert!(message.contains("no-such-context"), "{message}");

    let missing = dir.path().join("missing");
    let message = KubernetesSource::from_kubeconfig(&missing, None)
        .await
        .err()
        .expect("a missing kubeconfig")
        .to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
}
