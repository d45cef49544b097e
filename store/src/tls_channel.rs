//! The TLS layer under the etcd client: ours rather than tonic's, so that the CA bundle, the
//! client certificate and its key are read from disk at every connection. A renewed
//! certificate (agents renew their own, operators rotate the apiserver's) is then presented at
//! the next reconnect, with no restart: a channel built with a fixed identity would keep
//! presenting the old certificate after it expired, and etcd would refuse every reconnect.
//!
//! Established connections are not touched: etcd checks a client certificate at the handshake
//! only. One connector serves all of a client's endpoints: each connection tries them in turn,
//! starting with the one that answered last, so a dead etcd member costs one connect timeout.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::connect::{ConnectError, TlsPaths, check_client_certificate, check_pem_certificate};

/// One etcd endpoint as the connector dials it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    host: String,
    port: u16,
    /// What the server's certificate must name: the endpoint's IP address or DNS name.
    name: ServerName<'static>,
}

impl Target {
    /// Parses `https://host:port` (or `host:port`); IPv6 hosts in brackets.
    pub(crate) fn parse(endpoint: &str) -> Result<Self, String> {
        let rest = endpoint.strip_prefix("https://").unwrap_or(endpoint);
        let authority = rest.trim_end_matches('/');
        let uri: http::uri::Authority = authority
            .parse()
            .map_err(|e| format!("not a host:port: {e}"))?;
        let port = uri
            .port_u16()
            .ok_or_else(|| "no port (etcd clients usually use 2379)".to_owned())?;
        let host = uri.host().trim_start_matches('[').trim_end_matches(']');
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{host:?} is not a valid DNS name: {e}"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            name,
        })
    }

    /// The URI tonic is given. Its scheme is `http` because the TLS is ours, not tonic's.
    pub(crate) fn uri(&self) -> String {
        match self.name {
            ServerName::IpAddress(rustls::pki_types::IpAddr::V6(_)) => {
                format!("http://[{}]:{}", self.host, self.port)
            }
            _ => format!("http://{}:{}", self.host, self.port),
        }
    }
}

/// Reads the files and builds the TLS client configuration (TLS 1.2 and 1.3, HTTP/2 by ALPN).
pub(crate) fn client_config(paths: &TlsPaths) -> Result<ClientConfig, ConnectError> {
    let ca = crate::connect::read("CA bundle", &paths.ca)?;
    check_pem_certificate("CA bundle", &paths.ca, &ca)?;
    let cert = crate::connect::read("client certificate", &paths.cert)?;
    check_client_certificate(&paths.cert, &cert)?;
    let key = crate::connect::read("client key", &paths.key)?;

    let bad_ca = |reason: String| ConnectError::BadCertificate {
        what: "CA bundle",
        path: paths.ca.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&ca) {
        let der = der.map_err(|e| bad_ca(e.to_string()))?;
        roots.add(der).map_err(|e| bad_ca(e.to_string()))?;
    }
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnectError::BadCertificate {
            what: "client certificate",
            path: paths.cert.clone(),
            reason: e.to_string(),
        })?;
    let bad_key = |reason: String| ConnectError::BadKey {
        path: paths.key.clone(),
        cert: paths.cert.clone(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| bad_key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad_key(e.to_string()))?
        .with_root_certificates(roots)
        // Also refuses a key that does not belong to the certificate, e.g. one file of a
        // renewal written and the other not yet.
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad_key(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The connector tonic calls for every new connection (a tower `Service<Uri>`; the URI is
/// ignored, the targets are ours).
#[derive(Clone)]
pub(crate) struct ReloadingTlsConnector {
    paths: Arc<TlsPaths>,
    targets: Arc<[Target]>,
    /// Index of the target that answered last: tried first next time.
    preferred: Arc<AtomicUsize>,
    /// Per target: TCP connect plus TLS handshake.
    connect_timeout: Duration,
}

impl ReloadingTlsConnector {
    pub(crate) fn new(paths: TlsPaths, targets: Vec<Target>, connect_timeout: Duration) -> Self {
        Self {
            paths: Arc::new(paths),
            targets: targets.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            connect_timeout,
        }
    }

    async fn connect_any(self) -> io::Result<TokioIo<TlsStream<TcpStream>>> {
        // Fresh from disk: this is what makes a renewed certificate take effect.
        let config = client_config(&self.paths).map_err(io::Error::other)?;
        let connector = TlsConnector::from(Arc::new(config));
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last_error = None;
        for i in 0..self.targets.len() {
            let index = (first + i) % self.targets.len();
            let target = &self.targets[index];
            match tokio::time::timeout(self.connect_timeout, dial(&connector, target)).await {
                Ok(Ok(stream)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(error)) => last_error = Some(error),
                Err(_) => {
                    last_error = Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{}:{} did not complete the TCP and TLS handshakes within {:?}",
                            target.host, target.port, self.connect_timeout
                        ),
                    ));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no etcd endpoints")))
    }
}

async fn dial(connector: &TlsConnector, target: &Target) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("tcp connect error: {e}")))?;
    tcp.set_nodelay(true)?;
    connector.connect(target.name.clone(), tcp).await
}

impl tower::Service<http::Uri> for ReloadingTlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect_any())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_and_without_scheme() {
        let t = Target::parse("https://10.0.0.5:2379").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.5", 2379));
        assert_eq!(t.uri(), "http://10.0.0.5:2379");
        let t = Target::parse("etcd.kube-system.svc:2379/").unwrap();
        assert!(matches!(t.name, ServerName::DnsName(_)));
        let t = Target::parse("https://[fd00::5]:2379").unwrap();
        assert_eq!(t.host, "fd00::5");
        assert_eq!(t.uri(), "http://[fd00::5]:2379");
        assert!(
            Target::parse("https://10.0.0.5")
                .unwrap_err()
                .contains("no port")
        );
        assert!(Target::parse("https://bad host:1").is_err());
    }
}
