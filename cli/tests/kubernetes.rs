//! The CLI against the fake Kubernetes API server (a test double, see its crate): `enable`
//! applies the expected objects by server-side apply and changes nothing the second time,
//! `manifests` prints exactly what `enable` applied, `connect`/`disconnect` write the peer
//! Secrets, and bad input gets one clear sentence.

use std::path::{Path, PathBuf};
use std::process::Output;

use clustermesh_fake_kube_apiserver::{FakeKubeApiServer, ResourceKind};
use k8s_openapi::api::core::v1::Node;
use serde_json::Value;

/// A fake API server with nodes, and a kubeconfig whose context `fake` points at it.
struct Cluster {
    fake: FakeKubeApiServer,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(nodes: &[&str]) -> Cluster {
        let fake = FakeKubeApiServer::start().await;
        for node in nodes {
            let mut n = Node::default();
            n.metadata.name = Some(node.to_string());
            fake.apply(&n);
        }
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        fake.write_kubeconfig(&kubeconfig).unwrap();
        Cluster {
            fake,
            kubeconfig,
            _dir: dir,
        }
    }
}

/// Runs the CLI (off the runtime's threads, the fake keeps serving).
async fn cli(kubeconfig: &Path, args: &[&str]) -> Output {
    let kubeconfig = kubeconfig.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_clustermesh"))
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("CLUSTERMESH_LAB")
            .output()
            .expect("run clustermesh")
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "clustermesh failed: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn secret_text(object: &Value, key: &str) -> String {
    let bytes: k8s_openapi::ByteString = serde_json::from_value(object["data"][key].clone())
        .unwrap_or_else(|_| panic!("no data key {key} in {}", object["metadata"]["name"]));
    String::from_utf8(bytes.0).unwrap()
}

const ENABLE_EAST: &[&str] = &[
    "enable",
    "--context",
    "fake",
    "--cluster-name",
    "east",
    "--cluster-id",
    "1",
    "--service-type",
    "NodePort",
    "--advertised-address",
    "192.0.2.10",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_applies_the_objects_and_twice_changes_nothing() {
    let cluster = Cluster::start(&["node-1", "node-2"]).await;
    let out = ok(cli(&cluster.kubeconfig, ENABLE_EAST).await);
    assert!(out.contains("enabled"), "{out}");

    let fake = &cluster.fake;
    let ns = "clustermesh";
    assert!(fake.get(ResourceKind::Namespace, "", ns).is_some());
    for sa in ["clustermesh-apiserver", "clustermesh-agent"] {
        assert!(
            fake.get(ResourceKind::ServiceAccount, ns, sa).is_some(),
            "{sa}"
        );
    }
    let role = fake
        .get(ResourceKind::ClusterRole, "", "clustermesh-apiserver-east")
        .expect("cluster role");
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "list", "watch"])
    );
    let binding = fake
        .get(
            ResourceKind::ClusterRoleBinding,
            "",
            "clustermesh-apiserver-east",
        )
        .expect("binding");
    assert_eq!(binding["subjects"][0]["name"], "clustermesh-apiserver");
    let config = fake
        .get(ResourceKind::ConfigMap, ns, "clustermesh-config")
        .unwrap();
    assert_eq!(config["data"]["cluster-name"], "east");
    assert_eq!(config["data"]["cluster-id"], "1");
    for secret in [
        "clustermesh-ca",
        "clustermesh-ca-key",
        "clustermesh-etcd-server-tls",
        "clustermesh-apiserver-tls",
    ] {
        let object = fake.get(ResourceKind::Secret, ns, secret).expect(secret);
        // Applied by server-side apply, by our field manager.
        assert_eq!(
            object["metadata"]["managedFields"][0]["manager"],
            "clustermesh"
        );
        assert_eq!(object["metadata"]["managedFields"][0]["operation"], "Apply");
    }
    // No agent certificates are made here: agents get theirs from the apiserver's issuer.
    assert!(
        fake.get(ResourceKind::Secret, ns, "clustermesh-agent-tls")
            .is_none()
    );
    assert_eq!(
        role["rules"][2],
        serde_json::json!({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]})
    );
    let etcd = fake
        .get(ResourceKind::Secret, ns, "clustermesh-etcd-server-tls")
        .unwrap();
    assert_eq!(etcd["type"], "kubernetes.io/tls");
    let service = fake
        .get(ResourceKind::Service, ns, "clustermesh-etcd")
        .unwrap();
    assert_eq!(service["spec"]["type"], "NodePort");
    let deployment = fake
        .get(ResourceKind::Deployment, ns, "clustermesh-apiserver")
        .unwrap();
    let args = deployment["spec"]["template"]["spec"]["containers"][1]["args"].clone();
    for flag in [
        "--cluster-name=east",
        "--agent-certs-ca-key=/etc/clustermesh/ca-key/ca.key",
        "--agent-service-account=system:serviceaccount:clustermesh:clustermesh-agent",
    ] {
        assert!(
            args.as_array().unwrap().iter().any(|a| a == flag),
            "{flag}: {args}"
        );
    }
    let issuer = fake
        .get(ResourceKind::Service, ns, "clustermesh-apiserver")
        .expect("the issuer's Service");
    assert_eq!(issuer["spec"]["ports"][0]["port"], 9965);
    let daemonset = fake
        .get(ResourceKind::DaemonSet, ns, "clustermesh-agent")
        .unwrap();
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["containers"][0]["securityContext"]["privileged"], true);
    let mounts = pod["containers"][0]["volumeMounts"].to_string();
    assert!(
        mounts.contains("/sys/fs/bpf") && mounts.contains("cgroupv2"),
        "{mounts}"
    );
    let volumes = pod["volumes"].to_string();
    assert!(
        volumes.contains("\"audience\":\"clustermesh-apiserver\""),
        "a projected token for the issuer: {volumes}"
    );
    let env = pod["containers"][0]["env"].to_string();
    assert!(
        env.contains("https://clustermesh-apiserver.clustermesh.svc:9965"),
        "{env}"
    );

    // Twice: every object unchanged, no resource version moved.
    let version = fake.resource_version();
    let writes = fake.write_requests();
    let out = ok(cli(&cluster.kubeconfig, ENABLE_EAST).await);
    assert!(out.contains("nothing changed"), "{out}");
    assert!(
        !out.contains(" created") && !out.contains(" configured"),
        "{out}"
    );
    assert_eq!(
        fake.resource_version(),
        version,
        "the second enable changed something"
    );
    assert!(
        fake.write_requests() > writes,
        "the second enable did not apply at all"
    );

    // A new node needs nothing from `enable` (its agent asks the issuer).
    let mut n = Node::default();
    n.metadata.name = Some("node-3".into());
    fake.apply(&n);
    let version = fake.resource_version();
    let out = ok(cli(&cluster.kubeconfig, &ENABLE_EAST[..3]).await);
    assert!(out.contains("nothing changed"), "{out}");
    assert_eq!(fake.resource_version(), version);
}

/// What a client applied, without what the server adds.
fn without_server_fields(mut object: Value, rendered: &Value) -> Value {
    let meta = object["metadata"].as_object_mut().unwrap();
    for field in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
    ] {
        meta.remove(field);
    }
    object.as_object_mut().unwrap().remove("status");
    if object["kind"] == "Service" && rendered["spec"]["ports"][0]["nodePort"].is_null() {
        object["spec"]["ports"][0]
            .as_object_mut()
            .unwrap()
            .remove("nodePort");
    }
    object
}

fn kind_of(kind: &str) -> ResourceKind {
    ResourceKind::ALL
        .into_iter()
        .find(|k| k.kind() == kind)
        .unwrap_or_else(|| panic!("the fake does not serve {kind}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_equal_what_enable_applied() {
    let cluster = Cluster::start(&["node-1"]).await;
    ok(cli(&cluster.kubeconfig, ENABLE_EAST).await);
    let mut args = vec!["manifests"];
    args.extend_from_slice(&ENABLE_EAST[1..]);
    let version = cluster.fake.resource_version();
    let yaml = ok(cli(&cluster.kubeconfig, &args).await);
    assert_eq!(
        cluster.fake.resource_version(),
        version,
        "manifests wrote something"
    );

    let mut count = 0;
    for document in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let rendered: Value = serde::Deserialize::deserialize(document).unwrap();
        if rendered.is_null() {
            continue;
        }
        count += 1;
        let kind = kind_of(rendered["kind"].as_str().unwrap());
        let name = rendered["metadata"]["name"].as_str().unwrap();
        let ns = rendered["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        let stored = cluster.fake.get(kind, ns, name).unwrap_or_else(|| {
            panic!("manifests has {kind:?} {ns}/{name}, enable did not apply it")
        });
        assert_eq!(
            without_server_fields(stored, &rendered),
            rendered,
            "{kind:?} {ns}/{name} differs"
        );
    }
    assert_eq!(count, 14, "{yaml}");
    // Without a cluster, a fresh CA; no per-node certificates.
    let yaml = ok(cli(
        &cluster.kubeconfig,
        &["manifests", "--cluster-name", "west", "--cluster-id", "2"],
    )
    .await);
    assert!(yaml.contains("--cluster-name=west"));
    assert!(!yaml.contains("clustermesh-agent-tls"), "{yaml}");
    assert!(yaml.contains("priorityClassName: system-node-critical"));
    let yaml = ok(cli(
        &cluster.kubeconfig,
        &[
            "manifests",
            "--cluster-name",
            "west",
            "--cluster-id",
            "2",
            "--agent-priority-class",
            "",
        ],
    )
    .await);
    assert!(!yaml.contains("priorityClassName"), "{yaml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_clear_sentence() {
    let cluster = Cluster::start(&["node-1"]).await;
    let kc = &cluster.kubeconfig;

    let out = cli(
        kc,
        &[
            "enable",
            "--context",
            "nope",
            "--cluster-name",
            "a",
            "--cluster-id",
            "1",
        ],
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("there is no context \"nope\" in the kubeconfig (its contexts: fake)"),
        "{err}"
    );

    let out = cli(
        kc,
        &[
            "enable",
            "--context",
            "fake",
            "--cluster-name",
            "East",
            "--cluster-id",
            "1",
        ],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not a valid cluster name"),
        "{err}"
    );

    let out = cli(
        kc,
        &[
            "enable",
            "--context",
            "fake",
            "--cluster-name",
            "east",
            "--cluster-id",
            "300",
        ],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--cluster-id"),
        "{err}"
    );

    ok(cli(kc, ENABLE_EAST).await);
    let out = cli(
        kc,
        &[
            "enable",
            "--context",
            "fake",
            "--cluster-name",
            "east",
            "--cluster-id",
            "2",
        ],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already enabled with cluster ID 1, not 2"),
        "{err}"
    );

    // An API server that is gone.
    let dead = tempfile::tempdir().unwrap();
    let dead_kc = dead.path().join("kubeconfig");
    let gone = Cluster::start(&[]).await;
    gone.fake.write_kubeconfig(&dead_kc).unwrap();
    drop(gone);
    let out = cli(
        &dead_kc,
        &[
            "enable",
            "--context",
            "fake",
            "--cluster-name",
            "a",
            "--cluster-id",
            "1",
        ],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the Kubernetes API server at"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "more than one line: {err}");
}

/// Several fakes behind one kubeconfig, one context per cluster.
struct Mesh {
    fakes: Vec<(String, FakeKubeApiServer)>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mesh {
    async fn start(names: &[&str]) -> Mesh {
        let mut fakes = Vec::new();
        let mut clusters = String::new();
        let mut contexts = String::new();
        for name in names {
            let fake = FakeKubeApiServer::start().await;
            let mut n = Node::default();
            n.metadata.name = Some(format!("{name}-node-1"));
            fake.apply(&n);
            clusters.push_str(&format!(
                "- name: {name}\n  cluster:\n    server: {}\n",
                fake.url()
            ));
            contexts.push_str(&format!(
                "- name: {name}\n  context:\n    cluster: {name}\n    user: nobody\n"
            ));
            fakes.push((name.to_string(), fake));
        }
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n{clusters}users:\n- name: nobody\n  user: {{}}\ncontexts:\n{contexts}current-context: {}\n",
                names[0]
            ),
        )
        .unwrap();
        Mesh {
            fakes,
            kubeconfig,
            _dir: dir,
        }
    }

    fn fake(&self, name: &str) -> &FakeKubeApiServer {
        &self.fakes.iter().find(|(n, _)| n == name).unwrap().1
    }

    async fn enable(&self, context: &str, name: &str, id: u16, address: &str) {
        let id = id.to_string();
        ok(cli(
            &self.kubeconfig,
            &[
                "enable",
                "--context",
                context,
                "--cluster-name",
                name,
                "--cluster-id",
                &id,
                "--service-type",
                "NodePort",
                "--advertised-address",
                address,
            ],
        )
        .await);
    }

    fn peers(&self, context: &str) -> Option<Value> {
        self.fake(context)
            .get(ResourceKind::Secret, "clustermesh", "clustermesh-peers")
    }
}

fn err(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure: {}",
        text(output)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_writes_peer_secrets_that_the_peers_directory_reads() {
    let mesh = Mesh::start(&["east", "west", "south", "dup"]).await;
    mesh.enable("east", "east", 1, "192.0.2.1").await;
    mesh.enable("west", "west", 2, "192.0.2.2").await;
    let kc = &mesh.kubeconfig;

    let out = ok(cli(
        kc,
        &[
            "connect",
            "--context",
            "east",
            "--destination-context",
            "west",
        ],
    )
    .await);
    assert!(out.contains("east mirrors west"), "{out}");

    // East's Secret holds west's entry: endpoints, west's CA, a client certificate of west's
    // CA (CN remote); the peers-directory reader of the apiserver and agents accepts it.
    let east_peers = mesh.peers("east").expect("east's peers Secret");
    let west_ca = secret_text(
        &mesh
            .fake("west")
            .get(ResourceKind::Secret, "clustermesh", "clustermesh-ca")
            .unwrap(),
        "ca.crt",
    );
    assert_eq!(secret_text(&east_peers, "west-ca.crt"), west_ca);
    let yaml = secret_text(&east_peers, "west.yaml");
    assert!(yaml.contains("https://192.0.2.2:30000"), "{yaml}");
    let dir = tempfile::tempdir().unwrap();
    for (key, _) in east_peers["data"].as_object().unwrap() {
        std::fs::write(dir.path().join(key), secret_text(&east_peers, key)).unwrap();
    }
    let (peers, problems) = clustermesh_store::read_peers(dir.path(), Default::default()).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let west = peers.values().next().expect("one peer");
    assert_eq!(west.name.as_str(), "west");
    assert_eq!(west.id.get(), 2);
    let client = secret_text(&east_peers, "west-client.crt");
    assert!(client.contains("BEGIN CERTIFICATE"));
    let west_peers = mesh.peers("west").expect("west's peers Secret");
    assert!(secret_text(&west_peers, "east.yaml").contains("id: 1"));

    // Twice: nothing changes, the client certificates are kept.
    let versions = (
        mesh.fake("east").resource_version(),
        mesh.fake("west").resource_version(),
    );
    ok(cli(
        kc,
        &[
            "connect",
            "--context",
            "east",
            "--destination-context",
            "west",
        ],
    )
    .await);
    assert_eq!(
        versions,
        (
            mesh.fake("east").resource_version(),
            mesh.fake("west").resource_version()
        )
    );

    // Clashes: an ID already used by a peer, an ID clash, a name clash, a cluster not enabled.
    mesh.enable("south", "south", 2, "192.0.2.3").await;
    let e = err(&cli(
        kc,
        &[
            "connect",
            "--context",
            "east",
            "--destination-context",
            "south",
        ],
    )
    .await);
    assert!(
        e.contains("already connected to west with cluster ID 2"),
        "{e}"
    );
    let e = err(&cli(
        kc,
        &[
            "connect",
            "--context",
            "west",
            "--destination-context",
            "south",
        ],
    )
    .await);
    assert!(
        e.contains("both have cluster ID 2") && e.contains("--cluster-id"),
        "{e}"
    );
    let e = err(&cli(
        kc,
        &[
            "connect",
            "--context",
            "dup",
            "--destination-context",
            "west",
        ],
    )
    .await);
    assert!(e.contains("run `clustermesh enable --context dup"), "{e}");
    mesh.enable("dup", "east", 9, "192.0.2.9").await;
    let e = err(&cli(
        kc,
        &[
            "connect",
            "--context",
            "west",
            "--destination-context",
            "dup",
        ],
    )
    .await);
    assert!(
        e.contains("already connected to another cluster named east"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = err(&cli(
        kc,
        &[
            "connect",
            "--context",
            "east",
            "--destination-context",
            "dup",
        ],
    )
    .await);
    assert!(e.contains("are both named \"east\""), "{e}");

    // Disable refuses while peers are connected.
    let e = err(&cli(kc, &["disable", "--context", "east"]).await);
    assert!(e.contains("still connected to west"), "{e}");

    // Disconnect removes both entries; twice is harmless.
    ok(cli(
        kc,
        &[
            "disconnect",
            "--context",
            "east",
            "--destination-context",
            "west",
        ],
    )
    .await);
    assert!(
        mesh.peers("east").unwrap()["data"]
            .as_object()
            .is_none_or(|d| d.is_empty())
    );
    assert!(
        mesh.peers("west").unwrap()["data"]
            .as_object()
            .is_none_or(|d| d.is_empty())
    );
    let out = ok(cli(
        kc,
        &[
            "disconnect",
            "--context",
            "east",
            "--destination-context",
            "west",
        ],
    )
    .await);
    assert!(out.contains("nothing changed"), "{out}");

    // Disable removes what enable made; twice is harmless.
    ok(cli(kc, &["disable", "--context", "east"]).await);
    let east = mesh.fake("east");
    for kind in [
        ResourceKind::Secret,
        ResourceKind::ConfigMap,
        ResourceKind::Deployment,
        ResourceKind::DaemonSet,
        ResourceKind::ServiceAccount,
        ResourceKind::ClusterRole,
        ResourceKind::ClusterRoleBinding,
        ResourceKind::Namespace,
    ] {
        assert!(
            east.objects(kind).is_empty(),
            "{kind:?} left: {:?}",
            east.objects(kind)
        );
    }
    assert!(east.objects(ResourceKind::Service).is_empty());
    let out = ok(cli(kc, &["disable", "--context", "east"]).await);
    assert!(out.contains("nothing changed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_mode_connects_every_pair() {
    let mesh = Mesh::start(&["a", "b", "c"]).await;
    mesh.enable("a", "a", 1, "192.0.2.1").await;
    mesh.enable("b", "b", 2, "192.0.2.2").await;
    mesh.enable("c", "c", 3, "192.0.2.3").await;
    ok(cli(
        &mesh.kubeconfig,
        &[
            "connect",
            "--context",
            "a",
            "--destination-context",
            "b",
            "--destination-context",
            "c",
            "--connection-mode",
            "mesh",
        ],
    )
    .await);
    for (cluster, others) in [("a", ["b", "c"]), ("b", ["a", "c"]), ("c", ["a", "b"])] {
        let peers = mesh.peers(cluster).unwrap();
        for other in others {
            assert!(
                peers["data"][format!("{other}.yaml")].is_string(),
                "{cluster} lacks {other}"
            );
        }
    }
}

/// A CA certificate and key that expired yesterday.
fn expired_ca() -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "old CA");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_named_with_what_to_do() {
    let cluster = Cluster::start(&["node-1"]).await;
    let kc = &cluster.kubeconfig;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = expired_ca();
    let (cert_path, key_path) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let mut args = ENABLE_EAST.to_vec();
    args.extend([
        "--ca-cert",
        cert_path.to_str().unwrap(),
        "--ca-key",
        key_path.to_str().unwrap(),
    ]);
    let e = err(&cli(kc, &args).await);
    assert!(
        e.contains("expired on") && e.contains("give a valid CA"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    // troubleshoot names an expired certificate in the cluster and says how to renew it.
    ok(cli(kc, ENABLE_EAST).await);
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some("clustermesh-apiserver-tls".into());
    secret.metadata.namespace = Some("clustermesh".into());
    secret.data = Some(
        [(
            "tls.crt".to_string(),
            k8s_openapi::ByteString(cert.into_bytes()),
        )]
        .into_iter()
        .collect(),
    );
    cluster.fake.apply(&secret);
    let out = cli(kc, &["troubleshoot", "--context", "fake"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(
            "FAIL [certificates] east: clustermesh-apiserver-tls/tls.crt (CN old CA) EXPIRED on"
        ),
        "{table}"
    );
    assert!(
        table.contains("fix: run `clustermesh enable --context fake`"),
        "{table}"
    );
    assert!(
        table.contains("ok   [certificates] east: clustermesh-etcd-server-tls/tls.crt"),
        "{table}"
    );

    // ...and enable renews it.
    let out = ok(cli(kc, &ENABLE_EAST[..3]).await);
    assert!(
        out.contains("Secret clustermesh/clustermesh-apiserver-tls configured"),
        "{out}"
    );
    let out = cli(kc, &["troubleshoot", "--context", "fake", "-o", "json"]).await;
    let findings: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        findings
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["check"] != "certificates" || f["severity"] == "ok"),
        "{findings}"
    );

    // Status of a Kubernetes cluster whose pods are not ready: not healthy, exit code 1.
    let out = cli(kc, &["status", "--context", "fake"]).await;
    assert!(!out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("east (ID 1, fake): NOT HEALTHY"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_address_goes_into_the_etcd_certificate_and_the_peer_entry() {
    let mesh = Mesh::start(&["east", "west"]).await;
    let kc = mesh.kubeconfig.clone();
    // enable waits for the load balancer's address; give it one while it waits.
    let enable = tokio::spawn(async move {
        cli(
            &kc,
            &[
                "enable",
                "--context",
                "east",
                "--cluster-name",
                "east",
                "--cluster-id",
                "1",
                "--wait-for-address",
                "30s",
            ],
        )
        .await
    });
    let east = mesh.fake("east");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while east
        .get(ResourceKind::Service, "clustermesh", "clustermesh-etcd")
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "enable did not create the Service"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    east.set_status(
        ResourceKind::Service,
        "clustermesh",
        "clustermesh-etcd",
        serde_json::json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}),
    );
    let out = ok(enable.await.unwrap());
    assert!(
        out.contains("Secret clustermesh/clustermesh-etcd-server-tls configured"),
        "the etcd certificate was not re-issued with the address: {out}"
    );
    let secret = east
        .get(
            ResourceKind::Secret,
            "clustermesh",
            "clustermesh-etcd-server-tls",
        )
        .unwrap();
    let pem = secret_text(&secret, "tls.crt");
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(
        sans.contains("203.0.113.7") || sans.contains("[203, 0, 113, 7]"),
        "{sans}"
    );
    // Again: nothing changes.
    let out = ok(cli(&mesh.kubeconfig, &["enable", "--context", "east"]).await);
    assert!(out.contains("nothing changed"), "{out}");

    mesh.enable("west", "west", 2, "192.0.2.2").await;
    ok(cli(
        &mesh.kubeconfig,
        &[
            "connect",
            "--context",
            "west",
            "--destination-context",
            "east",
        ],
    )
    .await);
    let entry = secret_text(&mesh.peers("west").unwrap(), "east.yaml");
    assert!(entry.contains("https://203.0.113.7:2379"), "{entry}");
}

/// A pod as the kubelet would report it: labels, node, and whether its containers are ready.
fn pod(
    name: &str,
    app: &str,
    node: &str,
    containers: &[(&str, bool, Option<&str>)],
) -> k8s_openapi::api::core::v1::Pod {
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(c, ready, waiting)| {
            let state = match waiting {
                Some(reason) => serde_json::json!({"waiting": {"reason": reason}}),
                None => serde_json::json!({"running": {}}),
            };
            serde_json::json!({"name": c, "ready": ready, "restartCount": 0, "image": "x", "imageID": "", "state": state})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "namespace": "clustermesh",
            "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/instance": "east"},
        },
        "spec": {"nodeName": node, "containers": [{"name": containers[0].0}]},
        "status": {"phase": "Running", "containerStatuses": statuses},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_kubernetes_cluster_reads_its_pods() {
    let cluster = Cluster::start(&["node-1", "node-2"]).await;
    let kc = &cluster.kubeconfig;
    ok(cli(kc, ENABLE_EAST).await);
    let fake = &cluster.fake;
    fake.apply(&pod(
        "clustermesh-apiserver-abc",
        "clustermesh-apiserver",
        "node-1",
        &[("etcd", true, None), ("apiserver", true, None)],
    ));
    fake.apply(&pod(
        "clustermesh-agent-1",
        "clustermesh-agent",
        "node-1",
        &[("agent", true, None)],
    ));
    fake.apply(&pod(
        "clustermesh-agent-2",
        "clustermesh-agent",
        "node-2",
        &[("agent", true, None)],
    ));
    let out = ok(cli(kc, &["status", "--context", "fake"]).await);
    assert!(out.starts_with("east (ID 1, fake): HEALTHY"), "{out}");
    assert!(out.contains("2/2 nodes ready"), "{out}");

    fake.apply(&pod(
        "clustermesh-agent-2",
        "clustermesh-agent",
        "node-2",
        &[("agent", false, Some("CrashLoopBackOff"))],
    ));
    let out = cli(kc, &["status", "--context", "fake"]).await;
    assert!(!out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("NOT HEALTHY (1 problem)"), "{table}");
    assert!(
        table.contains("node node-2: the agent is not ready (waiting: CrashLoopBackOff)"),
        "{table}"
    );
    assert!(
        table.contains("kubectl -n clustermesh logs ds/clustermesh-agent"),
        "{table}"
    );
}
