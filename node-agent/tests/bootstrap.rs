//! The agent's certificate bootstrap against a running apiserver issuer (real TLS, token
//! reviews by the in-repo fake Kubernetes API server, a test double): a node without a
//! certificate gets its own, keeps it while it fits, renews it when due (and goes on
//! renewing), and replaces one made for another node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use clustermesh_apiserver::{app, config as apiserver_config};
use clustermesh_fake_kube_apiserver::{FakeKubeApiServer, TokenUser};
use clustermesh_node_agent::bootstrap::{self, BootstrapError, BootstrapSettings};
use clustermesh_testkit::{EtcdServer, TestCa};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

struct Files {
    ca: PathBuf,
    ca_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// The cluster CA and the issuer's server certificate for `localhost`.
fn cluster_ca(dir: &Path) -> Files {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "east CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let files = Files {
        ca: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        server_cert: dir.join("issuer.pem"),
        server_key: dir.join("issuer-key.pem"),
    };
    std::fs::write(&files.ca, cert.pem()).unwrap();
    std::fs::write(&files.ca_key, key.serialize_pem()).unwrap();
    let issuer = Issuer::new(params, key);
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    std::fs::write(&files.server_cert, server_cert.pem()).unwrap();
    std::fs::write(&files.server_key, server_key.serialize_pem()).unwrap();
    files
}

fn token_for(node: &str) -> TokenUser {
    TokenUser {
        username: "system:serviceaccount:clustermesh:clustermesh-agent".into(),
        extra: BTreeMap::from([(
            "authentication.kubernetes.io/node-name".to_owned(),
            vec![node.to_owned()],
        )]),
        audiences: vec!["clustermesh-apiserver".into()],
        ..TokenUser::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_certificate_gets_its_own_and_keeps_it_while_it_fits() {
    let dir = tempfile::tempdir().unwrap();
    let files = cluster_ca(dir.path());
    let fake = FakeKubeApiServer::start().await;
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    fake.register_token("node-1-token", token_for("node-1"));
    fake.register_token("node-2-token", token_for("node-2"));
    let etcd = EtcdServer::start();

    let argv = vec![
        "clustermesh-apiserver".to_owned(),
        "--cluster-name=east".to_owned(),
        "--cluster-id=1".to_owned(),
        format!("--etcd-endpoints={}", etcd.endpoint()),
        "--source=kubernetes".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
        "--health-addr=127.0.0.1:0".to_owned(),
        "--status-addr=127.0.0.1:0".to_owned(),
        format!("--cluster-ca={}", files.ca.display()),
        format!("--agent-certs-ca-key={}", files.ca_key.display()),
        format!("--agent-certs-tls-cert={}", files.server_cert.display()),
        format!("--agent-certs-tls-key={}", files.server_key.display()),
        "--agent-certs-addr=127.0.0.1:0".to_owned(),
    ];
    let config =
        apiserver_config::Config::from_args(apiserver_config::Args::try_parse_from(argv).unwrap())
            .unwrap();
    let apiserver = app::start(config).await.expect("the apiserver starts");
    let port = apiserver.agent_certs_addr().unwrap().port();

    let token = dir.path().join("token");
    std::fs::write(&token, "node-1-token\n").unwrap();
    let settings = BootstrapSettings {
        endpoint: format!("https://localhost:{port}"),
        ca: files.ca.clone(),
        token: token.clone(),
        dir: dir.path().join("agent"),
        trust_domain: "clustermesh.local".into(),
        cluster: "east".into(),
        node: "node-1".into(),
    };

    // Nothing there: one request, and the files are this node's.
    bootstrap::ensure_certificate(&settings)
        .await
        .expect("the certificate is obtained");
    assert_eq!(fake.token_reviews(), 1);
    assert!(bootstrap::current_certificate(&settings).is_some());
    let cert = std::fs::read_to_string(settings.cert_path()).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
    let parsed = pem.parse_x509().unwrap();
    let cn: Vec<_> = parsed
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cn, ["agent-node-1"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(settings.key_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the key is readable by its owner only");
    // The certificate works where the agent uses it: the tunnel accepts it as node-1 of east
    // with the cluster CA.
    clustermesh_tunnel::tls::NodeCredentials::load(
        &clustermesh_tunnel::tls::CredentialPaths {
            cert: settings.cert_path(),
            key: settings.key_path(),
            ca: files.ca.clone(),
        },
        &clustermesh_tunnel::identity::NodeIdentity::new("clustermesh.local", "east", "node-1"),
    )
    .expect("the tunnel loads the obtained credentials");

    // A restart with a fresh certificate asks nothing.
    bootstrap::ensure_certificate(&settings).await.unwrap();
    assert_eq!(fake.token_reviews(), 1);
    assert_eq!(std::fs::read_to_string(settings.cert_path()).unwrap(), cert);

    // Renewal: when a third of the lifetime is left, a new certificate is written and the
    // renewal goes on (the agent does not restart; it waits for the next renewal point).
    let now = std::time::SystemTime::now();
    let due = bootstrap::Validity {
        not_before: now - std::time::Duration::from_secs(7200),
        not_after: now + std::time::Duration::from_secs(60),
    };
    let renewal = tokio::spawn(bootstrap::keep_renewing(settings.clone(), due));
    let renewed = clustermesh_testkit::wait_for(std::time::Duration::from_secs(10), || {
        let settings = settings.clone();
        let cert = cert.clone();
        async move {
            let written = std::fs::read_to_string(settings.cert_path()).ok()?;
            (written != cert && bootstrap::current_certificate(&settings).is_some()).then_some(())
        }
    })
    .await;
    assert!(renewed.is_some(), "the renewed certificate is written");
    assert_eq!(fake.token_reviews(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !renewal.is_finished(),
        "renewal keeps running, scheduled for the new certificate"
    );
    assert_eq!(fake.token_reviews(), 2, "one renewal, not a loop");
    renewal.abort();
    let cert = std::fs::read_to_string(settings.cert_path()).unwrap();

    // A certificate for another node (a reused directory) is replaced.
    let other = BootstrapSettings {
        node: "node-2".into(),
        ..settings.clone()
    };
    std::fs::write(&token, "node-2-token").unwrap();
    bootstrap::ensure_certificate(&other).await.unwrap();
    assert_eq!(fake.token_reviews(), 3);
    assert_ne!(
        std::fs::read_to_string(other.cert_path()).unwrap(),
        cert,
        "node-1's certificate is replaced"
    );
    assert!(bootstrap::current_certificate(&other).is_some());
    assert!(bootstrap::current_certificate(&settings).is_none());

    // A token bound to node-2 does not get node-1 a certificate: refused, not retried.
    let refused = bootstrap::ensure_certificate(&settings).await.unwrap_err();
    assert!(
        matches!(
            refused,
            BootstrapError::Refused {
                code: tonic::Code::PermissionDenied,
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("agent-node-2"), "{refused}");

    // An issuer whose certificate the given CA does not sign is not trusted.
    let stranger = TestCa::new("stranger", dir.path());
    let wrong_ca = BootstrapSettings {
        ca: stranger.ca_path().to_owned(),
        ..other.clone()
    };
    let untrusted = bootstrap::obtain(&wrong_ca).await.unwrap_err();
    assert!(
        matches!(untrusted, BootstrapError::Unreachable { .. }),
        "{untrusted}"
    );
    apiserver.stop();
}
