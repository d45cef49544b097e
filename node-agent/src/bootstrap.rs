//! Certificate bootstrap: an agent that starts without a certificate for its node obtains one
//! from its cluster's apiserver (`clustermesh-apiserver/src/agent_certs.rs`), and renews it
//! while it runs.
//!
//! At start, [`ensure_certificate`] keeps `<dir>/tls.crt` and `<dir>/tls.key` if they are this
//! node's (CN `agent-<node>`, the URI SAN of its tunnel identity, a key that matches) and more
//! than a third of their lifetime is left. Otherwise it makes a new key pair here (the key
//! never leaves the node), sends a certificate signing request and the pod's projected
//! ServiceAccount token to the issuer over TLS (the issuer's certificate verified with the
//! cluster CA), and writes what it gets back. The agent then starts as usual, with
//! `--etcd-cert`/`--tunnel-cert` pointing at those files.
//!
//! While the agent runs, [`keep_renewing`] waits until a third of the certificate's lifetime is
//! left, gets a new one the same way, writes it, and waits for the next renewal point. Nothing
//! restarts: the tunnel re-reads its files by itself, and the etcd client reads the files at
//! every (re)connect (`clustermesh_store`'s TLS connector), so the renewed certificate is the
//! one presented once the current connection ends. That connection stays valid after the old
//! certificate expires: etcd checks a client certificate at the handshake only.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clustermesh_api::apiserver::IssueAgentCertificateRequest;
use clustermesh_api::apiserver::agent_certificates_client::AgentCertificatesClient;
use clustermesh_model::is_dns_subdomain;
use clustermesh_tunnel::identity::NodeIdentity;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use serde::Serialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tracing::{info, warn};

/// The file names in the certificate directory.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// How long the first certificate is retried for (the apiserver may start after the agent).
const START_DEADLINE: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The bootstrap flags, flattened into the agent's command line (`config.rs`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BootstrapArgs {
    /// The apiserver's agent certificate issuer, e.g.
    /// https://clustermesh-apiserver.clustermesh.svc:9965. Given, the agent obtains its own
    /// certificate (CN agent-<node>) at start and renews it while it runs, instead of reading
    /// one made for it: point --etcd-cert/--tunnel-cert at <bootstrap-cert-dir>/tls.crt and
    /// --etcd-key/--tunnel-key at <bootstrap-cert-dir>/tls.key.
    #[arg(
        long,
        env = "CLUSTERMESH_BOOTSTRAP_ENDPOINT",
        requires_all = ["bootstrap_ca", "bootstrap_token", "bootstrap_cert_dir"]
    )]
    pub bootstrap_endpoint: Option<String>,
    /// CA bundle that signs the issuer's server certificate (the cluster CA).
    #[arg(long, env = "CLUSTERMESH_BOOTSTRAP_CA")]
    pub bootstrap_ca: Option<PathBuf>,
    /// The pod's projected ServiceAccount token (audience of the issuer), re-read for every
    /// request since the kubelet rotates it.
    #[arg(long, env = "CLUSTERMESH_BOOTSTRAP_TOKEN")]
    pub bootstrap_token: Option<PathBuf>,
    /// Where the obtained key and certificate are kept (tls.key, tls.crt): a directory on the
    /// node (an emptyDir or hostPath), writable by the agent.
    #[arg(long, env = "CLUSTERMESH_BOOTSTRAP_CERT_DIR")]
    pub bootstrap_cert_dir: Option<PathBuf>,
}

/// The checked bootstrap settings.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapSettings {
    pub endpoint: String,
    pub ca: PathBuf,
    pub token: PathBuf,
    pub dir: PathBuf,
    /// This node's identity: the CSR's CN and URI SAN are derived from it.
    pub trust_domain: String,
    pub cluster: String,
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("--bootstrap-endpoint {0:?}: give an https:// URL of the apiserver's issuer")]
    Endpoint(String),
    #[error("--node-name {0:?} is not a Kubernetes node name")]
    NodeName(String),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the key pair or the certificate signing request: {0}")]
    Csr(rcgen::Error),
    #[error(
        "cannot reach the issuer at {endpoint}: {reason}; is the apiserver running with --agent-certs-ca-key, and does --bootstrap-ca sign its certificate?"
    )]
    Unreachable { endpoint: String, reason: String },
    #[error("the issuer at {endpoint} refused the certificate ({code:?}): {message}")]
    Refused {
        endpoint: String,
        code: tonic::Code,
        message: String,
    },
    #[error("the issuer returned a certificate that is not this node's: {0}")]
    WrongCertificate(String),
}

impl BootstrapError {
    /// Refusals for a reason a retry does not change are not retried.
    fn is_permanent(&self) -> bool {
        match self {
            BootstrapError::Refused { code, .. } => matches!(
                code,
                tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
            ),
            BootstrapError::Unreachable { .. } | BootstrapError::Read { .. } => false,
            _ => true,
        }
    }
}

impl BootstrapSettings {
    /// `None` without --bootstrap-endpoint.
    pub fn from_args(
        args: &BootstrapArgs,
        trust_domain: &str,
        cluster: &str,
        node: &str,
    ) -> Result<Option<Self>, BootstrapError> {
        let (Some(endpoint), Some(ca), Some(token), Some(dir)) = (
            args.bootstrap_endpoint.clone(),
            args.bootstrap_ca.clone(),
            args.bootstrap_token.clone(),
            args.bootstrap_cert_dir.clone(),
        ) else {
            return Ok(None);
        };
        if !endpoint.starts_with("https://") || endpoint.parse::<tonic::transport::Uri>().is_err() {
            return Err(BootstrapError::Endpoint(endpoint));
        }
        if !is_dns_subdomain(node) {
            return Err(BootstrapError::NodeName(node.to_owned()));
        }
        Ok(Some(Self {
            endpoint,
            ca,
            token,
            dir,
            trust_domain: trust_domain.to_owned(),
            cluster: cluster.to_owned(),
            node: node.to_owned(),
        }))
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    fn identity(&self) -> NodeIdentity {
        NodeIdentity::new(&self.trust_domain, &self.cluster, &self.node)
    }

    fn common_name(&self) -> String {
        clustermesh_model::etcd_users::agent_user(&self.node)
    }
}

/// The validity of a certificate this node can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// When a third of the lifetime is left: the renewal point.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - lifetime / 3
    }
}

fn time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// Whether `cert_pem` is this node's certificate (CN, exactly the node's URI SAN, the public
/// key of `key_pem`); its validity if so, the reason if not.
fn check_certificate(
    settings: &BootstrapSettings,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Validity, String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let cert = pem.parse_x509().map_err(|e| e.to_string())?;
    let cns: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .collect();
    if cns != [settings.common_name().as_str()] {
        return Err(format!(
            "CN {cns:?}, not {:?} (a certificate for another node?)",
            settings.common_name()
        ));
    }
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => u.to_string(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let uri = settings.identity().uri();
    if uris != [uri.clone()] {
        return Err(format!("names {uris:?}, not [{uri:?}]"));
    }
    let key = KeyPair::from_pem(key_pem).map_err(|e| format!("the key: {e}"))?;
    if *cert.public_key().subject_public_key.data != *key.public_key_raw() {
        return Err("the key does not belong to the certificate".into());
    }
    Ok(Validity {
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

/// This node's certificate in the directory, if it is there, is this node's and has more
/// than a third of its lifetime left.
pub fn current_certificate(settings: &BootstrapSettings) -> Option<Validity> {
    let cert = std::fs::read_to_string(settings.cert_path()).ok()?;
    let key = std::fs::read_to_string(settings.key_path()).ok()?;
    match check_certificate(settings, &cert, &key) {
        Ok(validity) => {
            let now = SystemTime::now();
            if validity.not_before > now {
                info!(cert = %settings.cert_path().display(), "the certificate is not valid yet; getting a new one");
                None
            } else if validity.renew_at() <= now {
                info!(cert = %settings.cert_path().display(), "less than a third of the certificate's lifetime is left; getting a new one");
                None
            } else {
                Some(validity)
            }
        }
        Err(reason) => {
            info!(cert = %settings.cert_path().display(), %reason, "the certificate there is not usable; getting a new one");
            None
        }
    }
}

fn read(what: &'static str, path: &Path) -> Result<String, BootstrapError> {
    std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path` through a temporary file and a rename, so that a reader never
/// sees half a file.
fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<(), BootstrapError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| BootstrapError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}

/// One request to the issuer: a new key, a CSR, the token; the certificate is checked and
/// written (key first, so a reader that sees the new certificate finds its key).
pub async fn obtain(settings: &BootstrapSettings) -> Result<Validity, BootstrapError> {
    let key = KeyPair::generate().map_err(BootstrapError::Csr)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, settings.common_name());
    params.subject_alt_names = vec![SanType::URI(
        settings
            .identity()
            .uri()
            .as_str()
            .try_into()
            .map_err(BootstrapError::Csr)?,
    )];
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(BootstrapError::Csr)?;
    let token = read("--bootstrap-token", &settings.token)?
        .trim()
        .to_owned();
    let ca = read("--bootstrap-ca", &settings.ca)?;

    let unreachable = |reason: String| BootstrapError::Unreachable {
        endpoint: settings.endpoint.clone(),
        reason,
    };
    let channel = Channel::from_shared(settings.endpoint.clone())
        .map_err(|e| unreachable(e.to_string()))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    let reply = AgentCertificatesClient::new(channel)
        .issue_agent_certificate(IssueAgentCertificateRequest { token, csr_pem })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
                unreachable(status.message().to_owned())
            }
            code => BootstrapError::Refused {
                endpoint: settings.endpoint.clone(),
                code,
                message: status.message().to_owned(),
            },
        })?
        .into_inner();
    let key_pem = key.serialize_pem();
    let validity = check_certificate(settings, &reply.certificate_pem, &key_pem)
        .map_err(BootstrapError::WrongCertificate)?;
    std::fs::create_dir_all(&settings.dir).map_err(|source| BootstrapError::Write {
        path: settings.dir.clone(),
        source,
    })?;
    write_atomically(&settings.key_path(), &key_pem, 0o600)?;
    write_atomically(&settings.cert_path(), &reply.certificate_pem, 0o644)?;
    info!(
        node = %settings.node,
        cert = %settings.cert_path().display(),
        valid_until = %humantime::format_rfc3339_seconds(validity.not_after),
        "agent certificate obtained from the issuer"
    );
    Ok(validity)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// [`obtain`], retried with backoff on errors a retry may fix, until `deadline` has passed.
async fn obtain_with_retries(
    settings: &BootstrapSettings,
    deadline: Option<Duration>,
) -> Result<Validity, BootstrapError> {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        match obtain(settings).await {
            Ok(validity) => return Ok(validity),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) if deadline.is_some_and(|d| started.elapsed() + backoff > d) => return Err(e),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot get the agent certificate yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Makes sure a usable certificate for this node is in the directory: keeps the one there if
/// it fits, else obtains one (retrying for a few minutes while the issuer is unreachable).
pub async fn ensure_certificate(settings: &BootstrapSettings) -> Result<Validity, BootstrapError> {
    if let Some(validity) = current_certificate(settings) {
        info!(
            cert = %settings.cert_path().display(),
            valid_until = %humantime::format_rfc3339_seconds(validity.not_after),
            "keeping this node's certificate"
        );
        return Ok(validity);
    }
    obtain_with_retries(settings, Some(START_DEADLINE)).await
}

/// Renews the certificate whenever a third of its lifetime is left, for as long as the agent
/// runs: waits, obtains and writes a new one (retrying until that succeeds), repeats.
pub async fn keep_renewing(settings: BootstrapSettings, mut current: Validity) {
    loop {
        let wait = current
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        info!(in_ = %humantime::format_duration(Duration::from_secs(wait.as_secs())), "agent certificate renewal scheduled");
        tokio::time::sleep(wait).await;
        current = loop {
            match obtain_with_retries(&settings, None).await {
                Ok(validity) => break validity,
                Err(e) => {
                    // A permanent refusal now (e.g. a changed ServiceAccount) may be fixed by
                    // an operator; keep trying slowly while the current certificate lasts.
                    warn!(error = %e, "cannot renew the agent certificate; retrying in a minute");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        };
        info!(
            valid_until = %humantime::format_rfc3339_seconds(current.not_after),
            "agent certificate renewed; the tunnel and the next etcd connection use it"
        );
    }
}

/// The hook `main.rs` calls before the configuration is checked (which reads the certificate
/// files): with --bootstrap-endpoint, makes sure this node's certificate is in place.
pub async fn start(
    args: &crate::config::Args,
) -> Result<Option<(BootstrapSettings, Validity)>, BootstrapError> {
    let Some(settings) = BootstrapSettings::from_args(
        &args.bootstrap,
        &args.trust_domain,
        &args.cluster.cluster_name,
        &args.node_name,
    )?
    else {
        return Ok(None);
    };
    let validity = ensure_certificate(&settings).await?;
    Ok(Some((settings, validity)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> BootstrapSettings {
        BootstrapSettings {
            endpoint: "https://localhost:9965".into(),
            ca: dir.join("ca.pem"),
            token: dir.join("token"),
            dir: dir.to_owned(),
            trust_domain: "clustermesh.local".into(),
            cluster: "east".into(),
            node: "node-1".into(),
        }
    }

    fn self_signed(cn: &str, uri: &str, key: &KeyPair, valid_for: Duration) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        let now = ::time::OffsetDateTime::now_utc();
        params.not_before = now - ::time::Duration::minutes(1);
        params.not_after = now + ::time::Duration::seconds(valid_for.as_secs() as i64);
        params.self_signed(key).unwrap().pem()
    }

    #[test]
    fn only_this_nodes_fresh_certificate_with_its_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        assert_eq!(current_certificate(&s), None, "nothing there yet");
        let key = KeyPair::generate().unwrap();
        let own = "spiffe://clustermesh.local/cluster/east/node/node-1";
        let day = Duration::from_secs(24 * 3600);
        let write = |cert: &str, key: &KeyPair| {
            std::fs::write(s.cert_path(), cert).unwrap();
            std::fs::write(s.key_path(), key.serialize_pem()).unwrap();
        };

        write(&self_signed("agent-node-1", own, &key, day), &key);
        assert!(current_certificate(&s).is_some());

        let other = "spiffe://clustermesh.local/cluster/east/node/node-2";
        write(&self_signed("agent-node-2", other, &key, day), &key);
        assert_eq!(current_certificate(&s), None, "another node's");
        write(&self_signed("agent-node-1", other, &key, day), &key);
        assert_eq!(
            current_certificate(&s),
            None,
            "another node's tunnel identity"
        );

        let stranger = KeyPair::generate().unwrap();
        write(&self_signed("agent-node-1", own, &key, day), &stranger);
        assert_eq!(
            current_certificate(&s),
            None,
            "a key that is not the cert's"
        );

        // One minute back and 5 minutes ahead: 5 of 6 minutes left, kept; 1 of 3, renewed.
        write(
            &self_signed("agent-node-1", own, &key, Duration::from_secs(300)),
            &key,
        );
        assert!(current_certificate(&s).is_some());
        write(
            &self_signed("agent-node-1", own, &key, Duration::from_secs(30)),
            &key,
        );
        assert_eq!(current_certificate(&s), None, "less than a third left");
    }

    #[test]
    fn renewal_is_due_when_a_third_is_left() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let v = Validity {
            not_before: start,
            not_after: start + Duration::from_secs(24 * 3600),
        };
        assert_eq!(v.renew_at(), start + Duration::from_secs(16 * 3600));
    }

    #[test]
    fn flags_are_checked() {
        let args = BootstrapArgs {
            bootstrap_endpoint: Some("http://plain:9965".into()),
            bootstrap_ca: Some("/ca".into()),
            bootstrap_token: Some("/token".into()),
            bootstrap_cert_dir: Some("/dir".into()),
        };
        let e = BootstrapSettings::from_args(&args, "td", "east", "node-1").unwrap_err();
        assert!(e.to_string().contains("--bootstrap-endpoint"), "{e}");
        let args = BootstrapArgs {
            bootstrap_endpoint: Some("https://issuer:9965".into()),
            ..args
        };
        assert!(
            BootstrapSettings::from_args(&args, "td", "east", "node-1")
                .unwrap()
                .is_some()
        );
        assert!(
            BootstrapSettings::from_args(&BootstrapArgs::default(), "td", "east", "node-1")
                .unwrap()
                .is_none()
        );
    }
}
