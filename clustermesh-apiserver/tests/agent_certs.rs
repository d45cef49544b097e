//! The agent certificate issuer over real TLS, with token reviews answered by the in-repo fake
//! Kubernetes API server (a test double) and a real etcd with mTLS and authentication on: a
//! good token gets a certificate that etcd accepts as the node's own user; everything else is
//! refused with its reason, and counted.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clustermesh_api::apiserver::IssueAgentCertificateRequest;
use clustermesh_api::apiserver::agent_certificates_client::AgentCertificatesClient;
use clustermesh_fake_kube_apiserver::{FakeKubeApiServer, TokenUser};
use clustermesh_store::{EtcdConfig, TlsPaths, connect};
use clustermesh_testkit::EtcdServer;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const AGENT_SA: &str = "system:serviceaccount:clustermesh:clustermesh-agent";
const AUDIENCE: &str = "clustermesh-apiserver";

/// The cluster CA: written as `cluster-ca.pem` / `cluster-ca-key.pem`, plus a server
/// certificate for the issuer's TLS (`localhost`, 127.0.0.1).
struct ClusterCa {
    cert: PathBuf,
    key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn cluster_ca(dir: &Path) -> ClusterCa {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "clustermesh CA east");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let ca = ClusterCa {
        cert: dir.join("cluster-ca.pem"),
        key: dir.join("cluster-ca-key.pem"),
        server_cert: dir.join("issuer.pem"),
        server_key: dir.join("issuer-key.pem"),
    };
    std::fs::write(&ca.cert, cert.pem()).unwrap();
    std::fs::write(&ca.key, key.serialize_pem()).unwrap();
    let issuer = Issuer::new(params, key);
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    std::fs::write(&ca.server_cert, server_cert.pem()).unwrap();
    std::fs::write(&ca.server_key, server_key.serialize_pem()).unwrap();
    ca
}

fn uri(node: &str) -> SanType {
    SanType::URI(
        format!("spiffe://clustermesh.local/cluster/east/node/{node}")
            .as_str()
            .try_into()
            .unwrap(),
    )
}

/// A key pair and a CSR for (CN, URI SAN of `san_node`).
fn csr(cn: &str, san_node: &str) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = vec![uri(san_node)];
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

fn agent_token(node: Option<&str>) -> TokenUser {
    let mut extra = BTreeMap::new();
    if let Some(node) = node {
        extra.insert(
            "authentication.kubernetes.io/node-name".to_owned(),
            vec![node.to_owned()],
        );
    }
    TokenUser {
        username: AGENT_SA.into(),
        extra,
        audiences: vec![AUDIENCE.into()],
        ..TokenUser::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_trade_a_bound_token_for_their_own_certificate_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster_ca(dir.path());

    // etcd with mTLS; it also trusts the cluster CA, so issued certificates log in.
    let mut etcd = EtcdServer::start_tls();
    let etcd_ca = etcd.tls().unwrap().ca.ca_path().to_owned();
    let mut bundle = std::fs::read_to_string(&etcd_ca).unwrap();
    bundle.push_str(&std::fs::read_to_string(&ca.cert).unwrap());
    std::fs::write(&etcd_ca, bundle).unwrap();
    etcd.restart();
    let apiserver_tls = etcd
        .tls()
        .unwrap()
        .ca
        .client("apiserver", "clustermesh-apiserver");

    let fake = FakeKubeApiServer::start().await;
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    fake.register_token("node-7-token", agent_token(Some("node-7")));
    fake.register_token("node-8-token", agent_token(Some("node-8")));
    fake.register_token("no-node-token", agent_token(None));
    fake.register_token(
        "other-sa-token",
        TokenUser {
            username: "system:serviceaccount:default:builder".into(),
            ..agent_token(Some("node-7"))
        },
    );
    fake.register_token(
        "expired-token",
        TokenUser {
            expires: Some(SystemTime::now() - Duration::from_secs(60)),
            ..agent_token(Some("node-7"))
        },
    );
    fake.register_token(
        "kube-audience-token",
        TokenUser {
            audiences: vec!["https://kubernetes.default.svc".into()],
            ..agent_token(Some("node-7"))
        },
    );

    let east = cluster("east", 1);
    let args = [
        "--source=kubernetes".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--etcd-ca={}", apiserver_tls.ca.display()),
        format!("--etcd-cert={}", apiserver_tls.cert.display()),
        format!("--etcd-key={}", apiserver_tls.key.display()),
        format!("--cluster-ca={}", ca.cert.display()),
        format!("--agent-certs-ca-key={}", ca.key.display()),
        format!("--agent-certs-tls-cert={}", ca.server_cert.display()),
        format!("--agent-certs-tls-key={}", ca.server_key.display()),
        "--agent-certs-addr=127.0.0.1:0".to_owned(),
        "--agent-cert-lifetime=2h".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let running = start_apiserver(apiserver_args(&east, &etcd.endpoint(), dir.path(), &args)).await;
    let addr = running.agent_certs_addr().expect("the issuer runs");

    // Real TLS: the issuer's certificate is verified against the cluster CA.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca.cert).unwrap()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS to the issuer, verified with the cluster CA");
    let mut issuer = AgentCertificatesClient::new(channel);
    let ask = |token: &str, csr_pem: &str| IssueAgentCertificateRequest {
        token: token.into(),
        csr_pem: csr_pem.into(),
    };

    // A good token and the node's own CSR: a certificate with exactly the agent's names.
    let (key, own) = csr("agent-node-7", "node-7");
    let reply = issuer
        .issue_agent_certificate(ask("node-7-token", &own))
        .await
        .expect("the agent on node-7 gets its certificate")
        .into_inner();
    assert_eq!(
        reply.ca_pem,
        std::fs::read_to_string(&ca.cert).unwrap(),
        "the reply carries the cluster CA"
    );
    let (_, pem) = x509_parser::pem::parse_x509_pem(reply.certificate_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["agent-node-7"]);
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        sans,
        ["URI(spiffe://clustermesh.local/cluster/east/node/node-7)"]
    );
    assert!(!cert.is_ca());
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(
        (2 * 3600..=2 * 3600 + 600).contains(&lifetime),
        "--agent-cert-lifetime 2h (plus the clock-skew margin), got {lifetime}s"
    );
    assert_eq!(
        &*cert.public_key().subject_public_key.data,
        key.public_key_raw(),
        "the certificate is for the key that never left the node"
    );

    // etcd accepts it (signed by the cluster CA) as user agent-node-7, which the issuer created
    // (node-7 is no Node in the cluster, so the publisher did not), with the agent role.
    let agent_files = dir.path().join("agent-node-7");
    std::fs::create_dir_all(&agent_files).unwrap();
    std::fs::write(agent_files.join("tls.crt"), &reply.certificate_pem).unwrap();
    std::fs::write(agent_files.join("tls.key"), key.serialize_pem()).unwrap();
    let mut agent = connect(&EtcdConfig::mtls(
        etcd.endpoint(),
        TlsPaths {
            ca: etcd_ca.clone(),
            cert: agent_files.join("tls.crt"),
            key: agent_files.join("tls.key"),
        },
    ))
    .await
    .expect("the issued certificate logs in to etcd");
    agent
        .put("clustermesh/state/agents/v1/east/node-7", "{}", None)
        .await
        .expect("the agent writes its own record");
    let other = agent
        .put("clustermesh/state/agents/v1/east/node-8", "{}", None)
        .await;
    assert!(
        other.is_err_and(|e| e.to_string().contains("permission denied")),
        "and no other node's"
    );
    let mut root = connect(&EtcdConfig::mtls(
        etcd.endpoint(),
        TlsPaths {
            ca: etcd_ca.clone(),
            cert: apiserver_tls.cert.clone(),
            key: apiserver_tls.key.clone(),
        },
    ))
    .await
    .unwrap();
    let user = root.user_get("agent-node-7").await.unwrap();
    assert_eq!(user.roles(), ["clustermesh-agent-node-7"]);

    // Everything else is refused with its reason.
    let (_, for_node_8) = csr("agent-node-8", "node-8");
    let (_, mixed) = csr("agent-node-7", "node-8");
    let refusals = [
        (
            "node-7-token",
            for_node_8.clone(),
            Code::PermissionDenied,
            "may only get",
        ),
        (
            "node-7-token",
            mixed,
            Code::PermissionDenied,
            "may only get",
        ),
        (
            "node-7-token",
            "garbage".to_owned(),
            Code::InvalidArgument,
            "not usable",
        ),
        (
            "other-sa-token",
            own.clone(),
            Code::PermissionDenied,
            "not to the agents' ServiceAccount",
        ),
        (
            "no-node-token",
            own.clone(),
            Code::PermissionDenied,
            "no node name",
        ),
        (
            "expired-token",
            own.clone(),
            Code::Unauthenticated,
            "expired",
        ),
        (
            "unknown-token",
            own.clone(),
            Code::Unauthenticated,
            "invalid bearer token",
        ),
        (
            "kube-audience-token",
            own.clone(),
            Code::Unauthenticated,
            "audiences",
        ),
        ("", own.clone(), Code::Unauthenticated, "no token"),
    ];
    for (token, csr_pem, code, message) in refusals {
        let status = issuer
            .issue_agent_certificate(ask(token, &csr_pem))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{token}: {}", status.message());
        assert!(
            status.message().contains(message),
            "{token}: {:?} should say {message:?}",
            status.message()
        );
    }
    // node-8's own token still works for node-8 (the refusal above was about the node).
    issuer
        .issue_agent_certificate(ask("node-8-token", &for_node_8))
        .await
        .expect("node-8 gets its own certificate");

    let (code, metrics) = http_get(running.health_addr(), "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "clustermesh_apiserver_agent_certs_issued_total 2",
        "clustermesh_apiserver_agent_certs_refused_total{reason=\"wrong_common_name\"} 1",
        "clustermesh_apiserver_agent_certs_refused_total{reason=\"wrong_names\"} 1",
        "clustermesh_apiserver_agent_certs_refused_total{reason=\"bad_csr\"} 1",
        "clustermesh_apiserver_agent_certs_refused_total{reason=\"wrong_service_account\"} 1",
        "clustermesh_apiserver_agent_certs_refused_total{reason=\"no_node_name\"} 1",
        "clustermesh_apiserver_agent_certs_refused_total{reason=\"bad_token\"} 4",
    ] {
        assert!(
            metrics.contains(line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_key_no_issuer_runs() {
    let dir = tempfile::tempdir().unwrap();
    write_small_cluster(dir.path());
    let etcd = EtcdServer::start();
    let running = start_apiserver(apiserver_args(
        &cluster("east", 1),
        &etcd.endpoint(),
        dir.path(),
        &[],
    ))
    .await;
    assert_eq!(running.agent_certs_addr(), None);
    let (_, metrics) = http_get(running.health_addr(), "/metrics").await;
    assert!(!metrics.contains("agent_certs"), "{metrics}");
    running.stop();
}
