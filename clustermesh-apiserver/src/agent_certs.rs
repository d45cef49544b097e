//! The agent certificate issuer: the in-cluster answer to "a node joined after the
//! certificates were made" (and to the Terraform module, which cannot know the nodes at plan
//! time).
//!
//! A node agent that starts without a certificate sends its pod's projected ServiceAccount
//! token and a certificate signing request (its key stays on the node) to
//! `AgentCertificates/IssueAgentCertificate` (`api/proto/apiserver.proto`), served over TLS
//! with the apiserver's server certificate. The issuer:
//!
//! 1. reviews the token with a Kubernetes `TokenReview` for the configured audience;
//! 2. requires the user to be the agents' ServiceAccount (`system:serviceaccount:<ns>:<sa>`);
//! 3. takes the node from the token's user extra `authentication.kubernetes.io/node-name`
//!    (bound tokens carry it since Kubernetes 1.30), never from the request;
//! 4. requires the CSR to ask for exactly CN `agent-<node>` and the one URI SAN
//!    `spiffe://<trust-domain>/cluster/<cluster>/node/<node>` — what every agent certificate
//!    has (`cli/src/pki.rs`, the tunnel's `NodeIdentity`) — and no CA;
//! 5. makes sure the etcd user `agent-<node>` and its role exist (`security.rs`, the same role
//!    the publisher creates for every node it sees);
//! 6. signs a certificate for the CSR's public key with the cluster CA (short lifetime,
//!    server and client use), never copying anything else from the request.
//!
//! Everything else is refused with a reason that is logged, returned to the agent and counted
//! (`clustermesh_apiserver_agent_certs_refused_total{reason}`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustermesh_api::apiserver::agent_certificates_server::{
    AgentCertificates, AgentCertificatesServer,
};
use clustermesh_api::apiserver::{IssueAgentCertificateReply, IssueAgentCertificateRequest};
use clustermesh_model::is_dns_subdomain;
use clustermesh_tunnel::identity::NodeIdentity;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde::Serialize;
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use crate::security::{EtcdSecurity, agent_user};

/// The user extra a bound ServiceAccount token carries with the name of its pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The default audience agents request for their projected token.
pub const DEFAULT_AUDIENCE: &str = "clustermesh-apiserver";
/// The default port of the issuer.
pub const DEFAULT_PORT: u16 = 9965;

/// The issuer's part of the configuration.
#[derive(Debug, Clone, Serialize)]
pub struct IssuerSettings {
    /// Where the issuer listens (TLS).
    pub listen: SocketAddr,
    /// The server certificate and key the issuer's TLS presents.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The cluster CA certificate and its key, which sign agent certificates.
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// The audience the agents' tokens must be valid for.
    pub audience: String,
    /// The only user allowed: `system:serviceaccount:<namespace>:<name>`.
    pub service_account: String,
    /// How long issued certificates are valid.
    #[serde(serialize_with = "humantime_str")]
    pub lifetime: Duration,
    /// The SPIFFE trust domain written into the URI SAN.
    pub trust_domain: String,
    /// This cluster's name (the URI SAN's `cluster/<name>`).
    pub cluster: String,
}

fn humantime_str<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Why a request was refused. `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the token was not accepted by the Kubernetes API: {0}")]
    BadToken(String),
    #[error(
        "the token belongs to {user:?}, not to the agents' ServiceAccount {expected:?} (--agent-service-account)"
    )]
    WrongServiceAccount { user: String, expected: String },
    #[error(
        "the token carries no node name (user extra {NODE_NAME_EXTRA}); mount a projected ServiceAccount token (bound tokens carry it since Kubernetes 1.30)"
    )]
    NoNodeName,
    #[error("the token's node name {0:?} is not a Kubernetes node name")]
    BadNodeName(String),
    #[error("the certificate signing request is not usable: {0}")]
    BadCsr(String),
    #[error(
        "the request asks for CN {asked:?}; the agent on node {node} may only get {expected:?}"
    )]
    WrongCommonName {
        node: String,
        asked: String,
        expected: String,
    },
    #[error(
        "the request asks for the names {asked:?}; the agent on node {node} may only get {expected:?}"
    )]
    WrongNames {
        node: String,
        asked: Vec<String>,
        expected: Vec<String>,
    },
    #[error("the request asks for a CA certificate; agents get leaf certificates only")]
    AsksForCa,
    #[error(
        "cannot review the token with the Kubernetes API (is `create` on tokenreviews allowed?): {0}"
    )]
    TokenReviewFailed(String),
    #[error("cannot create the etcd user for the agent: {0}")]
    EtcdUser(String),
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
}

impl Refusal {
    /// A stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadToken(_) => "bad_token",
            Refusal::WrongServiceAccount { .. } => "wrong_service_account",
            Refusal::NoNodeName => "no_node_name",
            Refusal::BadNodeName(_) => "bad_node_name",
            Refusal::BadCsr(_) => "bad_csr",
            Refusal::WrongCommonName { .. } => "wrong_common_name",
            Refusal::WrongNames { .. } => "wrong_names",
            Refusal::AsksForCa => "asks_for_ca",
            Refusal::TokenReviewFailed(_) => "token_review_failed",
            Refusal::EtcdUser(_) => "etcd_user_failed",
            Refusal::Sign(_) => "sign_failed",
        }
    }

    fn status(&self) -> Status {
        let message = self.to_string();
        match self {
            Refusal::BadToken(_) => Status::unauthenticated(message),
            Refusal::WrongServiceAccount { .. } => Status::permission_denied(message),
            Refusal::NoNodeName | Refusal::BadNodeName(_) => Status::permission_denied(message),
            Refusal::BadCsr(_) | Refusal::AsksForCa => Status::invalid_argument(message),
            Refusal::WrongCommonName { .. } | Refusal::WrongNames { .. } => {
                Status::permission_denied(message)
            }
            Refusal::TokenReviewFailed(_) | Refusal::EtcdUser(_) => Status::unavailable(message),
            Refusal::Sign(_) => Status::internal(message),
        }
    }
}

/// Errors at start: a setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {path}: {reason}")]
    Bad {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot listen on --agent-certs-addr {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the issuer's TLS configuration: {0}")]
    Tls(tonic::transport::Error),
}

/// Counters of the issuer, read by `/metrics`.
#[derive(Debug, Default)]
pub struct IssuerStats {
    issued: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl IssuerStats {
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Refusals since start, by reason.
    pub fn refused(&self) -> BTreeMap<&'static str, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn refuse(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// What a reviewed token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenHolder {
    username: String,
    node: Option<String>,
}

/// The checks and the signing, without the transport (unit-testable pieces are free functions).
struct IssuerService {
    settings: IssuerSettings,
    kube: kube::Client,
    ca_pem: String,
    ca: CaIssuer,
    security: Option<Arc<AsyncMutex<EtcdSecurity>>>,
    stats: Arc<IssuerStats>,
}

type CaIssuer = rcgen::Issuer<'static, KeyPair>;

fn read(flag: &'static str, path: &Path) -> Result<String, IssuerError> {
    std::fs::read_to_string(path).map_err(|source| IssuerError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// The signing CA from its PEM certificate and key.
fn load_ca(settings: &IssuerSettings) -> Result<(String, CaIssuer), IssuerError> {
    let cert = read("--cluster-ca", &settings.ca_cert)?;
    let key = read("--agent-certs-ca-key", &settings.ca_key)?;
    let key = KeyPair::from_pem(&key).map_err(|e| IssuerError::Bad {
        flag: "--agent-certs-ca-key",
        path: settings.ca_key.clone(),
        reason: format!("not a PEM private key: {e}"),
    })?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&cert, key).map_err(|e| IssuerError::Bad {
        flag: "--cluster-ca",
        path: settings.ca_cert.clone(),
        reason: format!("not a PEM CA certificate matching the key: {e}"),
    })?;
    Ok((cert, issuer))
}

/// The one identity an agent on `node` gets: (CN, SANs as `URI:…`).
pub fn agent_names(trust_domain: &str, cluster: &str, node: &str) -> (String, Vec<String>) {
    let uri = NodeIdentity::new(trust_domain, cluster, node).uri();
    (agent_user(node), vec![format!("URI:{uri}")])
}

fn san_text(san: &SanType) -> String {
    match san {
        SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
        SanType::URI(u) => format!("URI:{}", u.as_str()),
        SanType::IpAddress(ip) => format!("IP:{ip}"),
        SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
        other => format!("{other:?}"),
    }
}

/// Checks that `csr_pem` asks for exactly the agent identity of `node`; returns the parsed
/// request (whose public key is signed).
fn check_csr(
    csr_pem: &str,
    trust_domain: &str,
    cluster: &str,
    node: &str,
) -> Result<CertificateSigningRequestParams, Refusal> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| Refusal::BadCsr(e.to_string()))?;
    let (expected_cn, expected_sans) = agent_names(trust_domain, cluster, node);
    let cns: Vec<String> = csr
        .params
        .distinguished_name
        .iter()
        .filter(|(t, _)| **t == DnType::CommonName)
        .map(|(_, v)| match v {
            rcgen::DnValue::PrintableString(s) => s.to_string(),
            rcgen::DnValue::Utf8String(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    if cns != [expected_cn.clone()] {
        return Err(Refusal::WrongCommonName {
            node: node.to_owned(),
            asked: cns.join(","),
            expected: expected_cn,
        });
    }
    let mut asked: Vec<String> = csr.params.subject_alt_names.iter().map(san_text).collect();
    asked.sort();
    if asked != expected_sans {
        return Err(Refusal::WrongNames {
            node: node.to_owned(),
            asked,
            expected: expected_sans,
        });
    }
    if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
        return Err(Refusal::AsksForCa);
    }
    Ok(csr)
}

/// The certificate for an accepted request: our parameters, the request's public key.
fn sign(
    csr: CertificateSigningRequestParams,
    ca: &CaIssuer,
    trust_domain: &str,
    cluster: &str,
    node: &str,
    lifetime: Duration,
) -> Result<String, Refusal> {
    let (cn, _) = agent_names(trust_domain, cluster, node);
    let uri = NodeIdentity::new(trust_domain, cluster, node).uri();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "clustermesh");
    params.subject_alt_names = vec![SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|e: rcgen::Error| Refusal::Sign(e.to_string()))?,
    )];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    // A few minutes back, for node clocks a little behind ours.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
    let request = CertificateSigningRequestParams {
        params,
        public_key: csr.public_key,
    };
    request
        .signed_by(ca)
        .map(|c| c.pem())
        .map_err(|e| Refusal::Sign(e.to_string()))
}

/// The node name from a reviewed token's user, for the expected ServiceAccount only.
fn holder_node(holder: &TokenHolder, expected_user: &str) -> Result<String, Refusal> {
    if holder.username != expected_user {
        return Err(Refusal::WrongServiceAccount {
            user: holder.username.clone(),
            expected: expected_user.to_owned(),
        });
    }
    let node = holder.node.clone().ok_or(Refusal::NoNodeName)?;
    if !is_dns_subdomain(&node) {
        return Err(Refusal::BadNodeName(node));
    }
    Ok(node)
}

impl IssuerService {
    async fn review(&self, token: &str) -> Result<TokenHolder, Refusal> {
        if token.is_empty() {
            return Err(Refusal::BadToken("no token in the request".into()));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.settings.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.kube.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::TokenReviewFailed(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Refusal::BadToken(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        // An API server that ignores audiences would echo none back: refuse, since then the
        // token might be meant for something else.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.contains(&self.settings.audience) {
            return Err(Refusal::BadToken(format!(
                "the token is not for the audience {:?} (reviewed audiences: {audiences:?})",
                self.settings.audience
            )));
        }
        let user = status.user.unwrap_or_default();
        let node = user
            .extra
            .unwrap_or_default()
            .remove(NODE_NAME_EXTRA)
            .and_then(|names| names.into_iter().next());
        Ok(TokenHolder {
            username: user.username.unwrap_or_default(),
            node,
        })
    }

    async fn issue(
        &self,
        request: IssueAgentCertificateRequest,
    ) -> Result<(String, String), Refusal> {
        let holder = self.review(&request.token).await?;
        let node = holder_node(&holder, &self.settings.service_account)?;
        let s = &self.settings;
        let csr = check_csr(&request.csr_pem, &s.trust_domain, &s.cluster, &node)?;
        if let Some(security) = &self.security {
            let nodes = std::iter::once(node.clone()).collect();
            security
                .lock()
                .await
                .ensure_agents(&nodes)
                .await
                .map_err(|e| Refusal::EtcdUser(e.to_string()))?;
        }
        let cert = sign(
            csr,
            &self.ca,
            &s.trust_domain,
            &s.cluster,
            &node,
            s.lifetime,
        )?;
        Ok((node, cert))
    }
}

#[tonic::async_trait]
impl AgentCertificates for IssuerService {
    async fn issue_agent_certificate(
        &self,
        request: Request<IssueAgentCertificateRequest>,
    ) -> Result<Response<IssueAgentCertificateReply>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        match self.issue(request.into_inner()).await {
            Ok((node, certificate_pem)) => {
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                info!(%node, %peer, lifetime = %humantime::format_duration(self.settings.lifetime), "agent certificate issued");
                Ok(Response::new(IssueAgentCertificateReply {
                    certificate_pem,
                    ca_pem: self.ca_pem.clone(),
                }))
            }
            Err(refusal) => {
                self.stats.refuse(refusal.reason());
                warn!(%peer, reason = refusal.reason(), "agent certificate refused: {refusal}");
                Err(refusal.status())
            }
        }
    }
}

/// The issuer's Kubernetes client: from `kubeconfig` (and `context`) when given, else the
/// in-cluster configuration, as the `kubernetes` source does.
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Client, kube::Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| kube::Error::Service(Box::new(e)))?;
            let options = kube::config::KubeConfigOptions {
                context: context.map(str::to_owned),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| kube::Error::Service(Box::new(e)))?
        }
        None => kube::Config::incluster().map_err(|e| kube::Error::Service(Box::new(e)))?,
    };
    kube::Client::try_from(config)
}

/// A running issuer.
pub struct RunningIssuer {
    pub addr: SocketAddr,
    pub stats: Arc<IssuerStats>,
    pub task: JoinHandle<()>,
}

/// Starts the issuer: loads the CA and the TLS identity (failing at start if either is
/// unusable) and serves until the returned task is aborted.
pub async fn serve(
    settings: IssuerSettings,
    kube: kube::Client,
    security: Option<Arc<AsyncMutex<EtcdSecurity>>>,
) -> Result<RunningIssuer, IssuerError> {
    let (ca_pem, ca) = load_ca(&settings)?;
    let cert = read("--agent-certs-tls-cert", &settings.tls_cert)?;
    let key = read("--agent-certs-tls-key", &settings.tls_key)?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key));
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| IssuerError::Listen {
            addr: settings.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| IssuerError::Listen {
            addr: settings.listen,
            source,
        })?;
    if security.is_none() {
        warn!(
            "agent certificates are issued, but etcd authentication is off here: no etcd user is created for them"
        );
    }
    let stats = Arc::new(IssuerStats::default());
    let issuer = IssuerService {
        settings,
        kube,
        ca_pem,
        ca,
        security,
        stats: stats.clone(),
    };
    let router = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(IssuerError::Tls)?
        .add_service(AgentCertificatesServer::new(issuer));
    info!(%addr, "agent certificate issuer listening (TLS)");
    let task = tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
        {
            error!(error = %e, "agent certificate issuer stopped");
        }
    });
    Ok(RunningIssuer { addr, stats, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(cn: &str, sans: Vec<SanType>, ca: bool) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(node: &str) -> SanType {
        SanType::URI(
            format!("spiffe://clustermesh.local/cluster/east/node/{node}")
                .as_str()
                .try_into()
                .unwrap(),
        )
    }

    #[test]
    fn only_the_nodes_own_identity_is_accepted() {
        let check = |pem: &str| check_csr(pem, "clustermesh.local", "east", "node-1");
        assert!(check(&csr("agent-node-1", vec![uri("node-1")], false)).is_ok());
        let refused = |pem: &str| check(pem).unwrap_err().reason();
        assert_eq!(
            refused(&csr("agent-node-2", vec![uri("node-1")], false)),
            "wrong_common_name"
        );
        assert_eq!(
            refused(&csr("agent-node-1", vec![uri("node-2")], false)),
            "wrong_names"
        );
        assert_eq!(
            refused(&csr(
                "agent-node-1",
                vec![
                    uri("node-1"),
                    SanType::DnsName("x.example".try_into().unwrap())
                ],
                false
            )),
            "wrong_names"
        );
        assert_eq!(refused(&csr("agent-node-1", vec![], false)), "wrong_names");
        assert_eq!(
            refused(&csr("agent-node-1", vec![uri("node-1")], true)),
            "asks_for_ca"
        );
        assert_eq!(refused("not a csr"), "bad_csr");
    }

    #[test]
    fn the_node_comes_from_the_token_of_the_agents_service_account() {
        let sa = "system:serviceaccount:clustermesh:clustermesh-agent";
        let holder = |user: &str, node: Option<&str>| TokenHolder {
            username: user.into(),
            node: node.map(str::to_owned),
        };
        assert_eq!(
            holder_node(&holder(sa, Some("node-1")), sa).unwrap(),
            "node-1"
        );
        let reason = |h: TokenHolder| holder_node(&h, sa).unwrap_err().reason();
        assert_eq!(
            reason(holder("system:serviceaccount:default:x", Some("node-1"))),
            "wrong_service_account"
        );
        assert_eq!(reason(holder(sa, None)), "no_node_name");
        assert_eq!(reason(holder(sa, Some("../etc"))), "bad_node_name");
    }
}
