//! Connecting with mTLS, and the errors an operator sees when something is wrong.

use std::time::Duration;

use clustermesh_store::{ConnectError, EtcdConfig, TlsPaths, connect};
use clustermesh_testkit::{EtcdServer, TestCa};

async fn connect_err(config: &EtcdConfig) -> ConnectError {
    match connect(config).await {
        Ok(_) => panic!("connecting with {config:?} should have failed"),
        Err(e) => {
            eprintln!("error shown to the operator: {e}");
            e
        }
    }
}

fn paths(files: &clustermesh_testkit::TlsFiles) -> TlsPaths {
    TlsPaths {
        ca: files.ca.clone(),
        cert: files.cert.clone(),
        key: files.key.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_works_with_the_right_ca_and_client_certificate() {
    let etcd = EtcdServer::start_tls();
    let tls = etcd.tls().unwrap();
    let mut client = connect(&EtcdConfig::mtls(etcd.endpoint(), paths(&tls.client)))
        .await
        .expect("mTLS connect");
    client.put("k", "v", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_named_in_the_error() {
    let etcd = EtcdServer::start_tls();
    let tls = etcd.tls().unwrap();
    let other = TestCa::new("other", etcd.dir());
    let mut wrong = paths(&tls.client);
    wrong.ca = other.ca_path().to_owned();

    let err = connect_err(&EtcdConfig::mtls(etcd.endpoint(), wrong.clone())).await;
    assert!(
        matches!(err, ConnectError::UntrustedServer { ref ca, .. } if *ca == wrong.ca),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("does not sign the etcd server certificate")
            && text.contains(&wrong.ca.display().to_string()),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_rejected_by_etcd() {
    let etcd = EtcdServer::start_tls();
    let tls = etcd.tls().unwrap();
    let other = TestCa::new("other", etcd.dir());
    let stranger = other.client("stranger", "root");
    let config = EtcdConfig::mtls(
        etcd.endpoint(),
        TlsPaths {
            ca: tls.client.ca.clone(),
            ..paths(&stranger)
        },
    );
    let err = connect_err(&config).await;
    assert!(
        matches!(err, ConnectError::ClientCertRejected { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_caught_before_dialing() {
    let etcd = EtcdServer::start_tls();
    let tls = etcd.tls().unwrap();
    let expired = tls.ca.expired_client("expired", "root");
    let err = connect_err(&EtcdConfig::mtls(etcd.endpoint(), paths(&expired))).await;
    assert!(
        matches!(err, ConnectError::ClientCertExpired { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("expired on"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_says_so() {
    // Start and stop an etcd, so the port is known to be closed.
    let endpoint = {
        let etcd = EtcdServer::start();
        etcd.endpoint()
    };
    let mut config = EtcdConfig::plain(endpoint.clone());
    config.connect_timeout = Duration::from_secs(2);
    let err = connect_err(&config).await;
    assert!(
        matches!(
            err,
            ConnectError::Unreachable { .. } | ConnectError::Timeout { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&endpoint), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_certificates_and_missing_files_are_config_errors() {
    let err = connect_err(&EtcdConfig::plain("https://127.0.0.1:1")).await;
    assert!(matches!(err, ConnectError::TlsRequired { .. }), "{err}");

    let missing = TlsPaths {
        ca: "/nonexistent/ca.pem".into(),
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
    };
    let err = connect_err(&EtcdConfig::mtls("https://127.0.0.1:1", missing)).await;
    assert!(
        matches!(
            err,
            ConnectError::ReadFile {
                what: "CA bundle",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_in_the_list_is_skipped() {
    let etcd = EtcdServer::start_tls();
    let tls = etcd.tls().unwrap();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut config = EtcdConfig::mtls(format!("https://{dead}"), paths(&tls.client));
    config.endpoints.push(etcd.endpoint());
    let mut client = connect(&config).await.expect("the live endpoint answers");
    client.put("k", "v", None).await.unwrap();
}

/// The agent renews its certificate while it runs. After the old one expired, a reconnect
/// (here: etcd restarted) must present the renewed files, with the same client, no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_at_the_next_reconnect() {
    let mut etcd = EtcdServer::start_tls();
    let lifetime = Duration::from_secs(3);
    let (renewed_files, stale_files, fresh) = {
        let ca = &etcd.tls().unwrap().ca;
        (
            ca.short_lived_client("renewed", "root", lifetime),
            ca.short_lived_client("stale", "root", lifetime),
            ca.client("fresh", "root"),
        )
    };
    let expires = std::time::Instant::now() + lifetime;

    let mut renewed = connect(&EtcdConfig::mtls(etcd.endpoint(), paths(&renewed_files)))
        .await
        .expect("connect with the first certificate");
    let mut stale = connect(&EtcdConfig::mtls(etcd.endpoint(), paths(&stale_files)))
        .await
        .expect("connect with the first certificate");
    renewed.put("k", "v", None).await.unwrap();

    // Renew one client's files in place (as the agent does: new key, new certificate).
    std::fs::rename(&fresh.key, &renewed_files.key).unwrap();
    std::fs::rename(&fresh.cert, &renewed_files.cert).unwrap();

    tokio::time::sleep_until((expires + Duration::from_secs(1)).into()).await;
    etcd.restart();

    let read_back = clustermesh_testkit::wait_for(Duration::from_secs(15), || {
        let mut client = renewed.clone();
        async move {
            let response = client.get("k", None).await.ok()?;
            response.kvs().first().map(|kv| kv.value().to_vec())
        }
    })
    .await;
    assert_eq!(
        read_back.as_deref(),
        Some(&b"v"[..]),
        "the renewed client reconnects"
    );

    // The control: the same reconnect with the expired certificate still on disk fails, so the
    // renewed client got through because of its new files.
    let error = stale.get("k", None).await.expect_err("expired certificate");
    assert!(error.to_string().contains("expired"), "{error}");
}
