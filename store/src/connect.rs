//! Connecting to etcd: plain for local tests, mTLS for everything else, with errors that say
//! which file or which endpoint is the problem. With mTLS the certificate files are read again
//! at every reconnect (`tls_channel`), so renewing them needs no restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use serde::{Deserialize, Serialize};
use x509_parser::pem::Pem;

use crate::tls_channel;

/// Where an etcd is and how to prove who we are to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://10.0.0.5:2379`. `http://` only for local tests.
    pub endpoints: Vec<String>,
    /// CA bundle, client certificate and key; required for `https://` endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsPaths>,
    /// How long to wait for the first answer before giving up.
    #[serde(default = "default_connect_timeout", with = "secs")]
    pub connect_timeout: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdConfig {
    pub fn plain(endpoint: impl Into<String>) -> Self {
        Self {
            endpoints: vec![endpoint.into()],
            tls: None,
            connect_timeout: default_connect_timeout(),
        }
    }

    pub fn mtls(endpoint: impl Into<String>, tls: TlsPaths) -> Self {
        Self {
            tls: Some(tls),
            ..Self::plain(endpoint)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no etcd endpoints configured")]
    NoEndpoints,
    #[error(
        "endpoint {endpoint} uses https but no CA, certificate and key are configured; give them, or use http:// only for a local test etcd"
    )]
    TlsRequired { endpoint: String },
    #[error("cannot read the {what} at {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} at {path} is not a PEM certificate: {reason}")]
    BadCertificate {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the client key at {path} cannot be used with the certificate at {cert}: {reason} (if both were just renewed, the next reconnect reads them again)"
    )]
    BadKey {
        path: PathBuf,
        cert: PathBuf,
        reason: String,
    },
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error(
        "the client certificate at {path} expired on {not_after}; issue a new one (clustermesh enable renews them)"
    )]
    ClientCertExpired { path: PathBuf, not_after: String },
    #[error(
        "the client certificate at {path} is not valid before {not_before}; is this machine's clock right?"
    )]
    ClientCertNotYetValid { path: PathBuf, not_before: String },
    #[error(
        "the CA in {ca} does not sign the etcd server certificate at {endpoints}: is this the right CA bundle for that cluster? ({detail})"
    )]
    UntrustedServer {
        ca: PathBuf,
        endpoints: String,
        detail: String,
    },
    #[error(
        "etcd at {endpoints} rejected the client certificate {cert} (or closed the connection right after the TLS handshake, which is how it refuses one): is it issued by the CA that etcd trusts? ({detail})"
    )]
    ClientCertRejected {
        cert: PathBuf,
        endpoints: String,
        detail: String,
    },
    #[error(
        "the etcd server certificate at {endpoints} is expired or not yet valid: renew it, or check this machine's clock ({detail})"
    )]
    ServerCertExpired { endpoints: String, detail: String },
    #[error(
        "etcd at {endpoints} is not reachable: is it running and is the address right? ({detail})"
    )]
    Unreachable { endpoints: String, detail: String },
    #[error("etcd at {endpoints} did not answer within {timeout:?}: is it running and reachable?")]
    Timeout {
        endpoints: String,
        timeout: Duration,
    },
    #[error("etcd at {endpoints}: {detail}")]
    Other { endpoints: String, detail: String },
}

/// Connects and makes one round trip, so that a wrong CA, a rejected certificate or a dead
/// endpoint is reported here, with its cause, rather than on the first real request.
pub async fn connect(config: &EtcdConfig) -> Result<Client, ConnectError> {
    if config.endpoints.is_empty() {
        return Err(ConnectError::NoEndpoints);
    }
    let endpoints = config.endpoints.join(",");
    let connected = match &config.tls {
        Some(tls) => connect_mtls(config, tls).await?,
        None => {
            if let Some(endpoint) = config.endpoints.iter().find(|e| e.starts_with("https://")) {
                return Err(ConnectError::TlsRequired {
                    endpoint: endpoint.clone(),
                });
            }
            let options = ConnectOptions::new()
                .with_connect_timeout(config.connect_timeout)
                .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
                .with_keep_alive_while_idle(true);
            Client::connect(&config.endpoints, Some(options)).await
        }
    };
    let mut client = connected.map_err(|e| classify(config, &endpoints, &e))?;
    match tokio::time::timeout(config.connect_timeout, client.status()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(classify(config, &endpoints, &e)),
        Err(_) => Err(ConnectError::Timeout {
            endpoints,
            timeout: config.connect_timeout,
        }),
    }
}

/// HTTP/2 pings detect a silently dead connection (a peer behind a dropped route) within ~15 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client whose connections (the first and every reconnect) go through our TLS connector.
/// The files are checked here once, so a missing or expired file fails now, by name.
async fn connect_mtls(
    config: &EtcdConfig,
    tls: &TlsPaths,
) -> Result<Result<Client, etcd_client::Error>, ConnectError> {
    tls_channel::client_config(tls)?;
    let targets = config
        .endpoints
        .iter()
        .map(|endpoint| {
            tls_channel::Target::parse(endpoint).map_err(|reason| ConnectError::BadEndpoint {
                endpoint: endpoint.clone(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let uri = targets[0].uri();
    let endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| ConnectError::BadEndpoint {
            endpoint: uri,
            reason: e.to_string(),
        })?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector =
        tls_channel::ReloadingTlsConnector::new(tls.clone(), targets, config.connect_timeout);
    let channel = endpoint.connect_with_connector_lazy(connector);
    Ok(Client::from_channel(etcd_client::Channel::Tonic(channel), None).await)
}

pub(crate) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn check_pem_certificate(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<(), ConnectError> {
    let bad = |reason: String| ConnectError::BadCertificate {
        what,
        path: path.to_owned(),
        reason,
    };
    let mut found = false;
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| bad(e.to_string()))?;
        block.parse_x509().map_err(|e| bad(e.to_string()))?;
        found = true;
    }
    if !found {
        return Err(bad("no certificate found".to_owned()));
    }
    Ok(())
}

/// Catches the most common operator mistake, an expired client certificate, before etcd does:
/// etcd would only answer with a generic handshake failure.
pub(crate) fn check_client_certificate(path: &Path, pem: &[u8]) -> Result<(), ConnectError> {
    check_pem_certificate("client certificate", path, pem)?;
    let Some(Ok(first)) = Pem::iter_from_buffer(pem).next() else {
        return Ok(());
    };
    let Ok(cert) = first.parse_x509() else {
        return Ok(());
    };
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(ConnectError::ClientCertExpired {
            path: path.to_owned(),
            not_after: validity.not_after.to_string(),
        });
    }
    if now < validity.not_before {
        return Err(ConnectError::ClientCertNotYetValid {
            path: path.to_owned(),
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(())
}

/// Turns a transport error into the operator's problem. With mTLS the TLS layer is ours, so a
/// handshake's rustls error is found by type in the cause chain. Left to text: etcd's refusal
/// of a client certificate, which under TLS 1.3 comes after our side of the handshake is done,
/// so it arrives on the data path (an alert as text, or the connection closed, canceled, reset,
/// or a broken pipe, depending on how far the first request got).
fn classify(config: &EtcdConfig, endpoints: &str, err: &etcd_client::Error) -> ConnectError {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};

    let detail = error_chain(err);
    let endpoints = endpoints.to_owned();
    if let Some(tls) = &config.tls {
        match tls_cause(err) {
            Some(rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature)) => {
                return ConnectError::UntrustedServer {
                    ca: tls.ca.clone(),
                    endpoints,
                    detail,
                };
            }
            Some(rustls::Error::InvalidCertificate(
                Cert::Expired
                | Cert::ExpiredContext { .. }
                | Cert::NotValidYet
                | Cert::NotValidYetContext { .. },
            )) => return ConnectError::ServerCertExpired { endpoints, detail },
            Some(rustls::Error::AlertReceived(
                Alert::BadCertificate
                | Alert::CertificateRequired
                | Alert::UnknownCA
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::AccessDenied,
            )) => {
                return ConnectError::ClientCertRejected {
                    cert: tls.cert.clone(),
                    endpoints,
                    detail,
                };
            }
            _ => {}
        }
        let has = |needle: &str| detail.contains(needle);
        // An alert that arrives while reading application data reaches us as text.
        let alert_as_text = has("received fatal alert: BadCertificate")
            || has("received fatal alert: CertificateRequired")
            || has("received fatal alert: UnknownCA");
        let closed_after_handshake = alert_as_text
            || has("connection closed")
            || has("Canceled")
            || has("BrokenPipe")
            || has("ConnectionReset");
        if closed_after_handshake && io_cause(err, std::io::ErrorKind::ConnectionRefused).is_none()
        {
            return ConnectError::ClientCertRejected {
                cert: tls.cert.clone(),
                endpoints,
                detail,
            };
        }
    }
    if io_cause(err, std::io::ErrorKind::ConnectionRefused).is_some()
        || io_cause(err, std::io::ErrorKind::HostUnreachable).is_some()
        || io_cause(err, std::io::ErrorKind::NetworkUnreachable).is_some()
        || detail.contains("dns error")
    {
        return ConnectError::Unreachable { endpoints, detail };
    }
    ConnectError::Other { endpoints, detail }
}

/// The errors in `err`'s cause chain, including those wrapped inside `io::Error`s (whose
/// `source()` skips the wrapped error itself). etcd-client's error has no `source()`: the
/// chain starts at the tonic error it holds.
fn causes(err: &etcd_client::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    let first: &(dyn std::error::Error + 'static) = match err {
        etcd_client::Error::GRpcStatus(status) => status,
        etcd_client::Error::TransportError(transport) => transport,
        other => other,
    };
    std::iter::successors(Some(first), |e| e.source()).flat_map(|e| {
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        std::iter::once(e).chain(wrapped)
    })
}

fn tls_cause(err: &etcd_client::Error) -> Option<&rustls::Error> {
    causes(err).find_map(|e| e.downcast_ref::<rustls::Error>())
}

fn io_cause(err: &etcd_client::Error, kind: std::io::ErrorKind) -> Option<&std::io::Error> {
    causes(err)
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .find(|io| io.kind() == kind)
}

/// The error and its causes in one line. etcd-client's message already carries tonic's debug
/// form, which names the rustls variant (UnknownIssuer, Expired, ...); causes not yet in the
/// text are appended.
fn error_chain(err: &etcd_client::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}
