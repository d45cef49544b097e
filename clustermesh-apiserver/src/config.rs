//! The apiserver's configuration: flags (with Kubernetes-style environment variables as
//! defaults), checked once at start into a typed `Config` that names the bad setting if any.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use clustermesh_model::{ClusterName, ExpectedCluster, KeySchema};
use clustermesh_store::{ClusterArgs, ClusterArgsError, EtcdArgs, EtcdConfig};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory of Kubernetes YAML, watched for changes.
    Manifests,
    /// The Kubernetes API (in-cluster config, or --kubeconfig).
    Kubernetes,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "clustermesh-apiserver",
    version,
    about = "Publishes this cluster's global services, endpoints, identities and nodes into its etcd, and mirrors every connected peer's state into the local cache",
    long_about = None
)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// With mTLS to etcd: create the users and roles of `security.rs` and enable etcd
    /// authentication (peers read-only, agents write only their own record).
    #[arg(long, env = "CLUSTERMESH_ETCD_AUTH", default_value_t = true, action = clap::ArgAction::Set)]
    pub etcd_auth: bool,

    /// Where this cluster's Kubernetes objects come from.
    #[arg(long, env = "CLUSTERMESH_SOURCE", value_enum, default_value_t = SourceKind::Kubernetes)]
    pub source: SourceKind,
    /// Directory of Kubernetes YAML, for --source manifests.
    #[arg(
        long,
        env = "CLUSTERMESH_MANIFESTS_DIR",
        required_if_eq("source", "manifests")
    )]
    pub manifests_dir: Option<PathBuf>,
    /// kubeconfig for --source kubernetes (default: in-cluster config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context (default: the current one).
    #[arg(long)]
    pub kube_context: Option<String>,

    /// Directory with one file per remote cluster to mirror (a mounted Secret in Kubernetes).
    #[arg(long, env = "CLUSTERMESH_PEERS_DIR")]
    pub peers_dir: Option<PathBuf>,
    /// Drop a peer's mirrored state after it has been unreachable this long (default: keep it
    /// until the peer is disconnected).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub peer_cache_ttl: Option<Duration>,

    /// Lease TTL of published keys: how long they outlive a dead apiserver. A restart within it
    /// is invisible to readers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub lease_ttl: Duration,
    /// How long an identity no pod uses keeps its ID before it is released.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub identity_grace: Duration,
    /// How often the heartbeat key is rewritten.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub heartbeat_interval: Duration,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, env = "CLUSTERMESH_HEALTH_ADDR", default_value = "0.0.0.0:9880")]
    pub health_addr: std::net::SocketAddr,
    /// Where the gRPC status API (`clustermesh status`) is served; loopback by default.
    #[arg(
        long,
        env = "CLUSTERMESH_STATUS_ADDR",
        default_value = "127.0.0.1:9963"
    )]
    pub status_addr: std::net::SocketAddr,
    /// The cluster's CA certificate; its fingerprint is published in the cluster config so
    /// peers can check they trust the right CA.
    #[arg(long)]
    pub cluster_ca: Option<PathBuf>,
    /// Where clusterset VIPs of remote-only global services come from: one IPv4 range and
    /// optionally one IPv6 range, comma separated. Must not overlap the cluster's service or
    /// pod ranges.
    #[arg(
        long,
        env = "CLUSTERMESH_CLUSTERSET_VIP_RANGE",
        value_delimiter = ',',
        default_value = crate::clusterset_vips::DEFAULT_RANGE_V4
    )]
    pub clusterset_vip_range: Vec<ipnet::IpNet>,
    /// How long a remote-only service must be gone from every peer before its clusterset VIP
    /// is released.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub clusterset_vip_grace: Duration,

    /// The cluster CA's private key: turns on the agent certificate issuer (opt-in). Node
    /// agents then trade their pod's bound ServiceAccount token and a certificate signing
    /// request for their own certificate (CN agent-<node>), signed with this key and
    /// --cluster-ca. Needs --source kubernetes, --cluster-ca and --agent-certs-tls-cert/-key.
    #[arg(long, env = "CLUSTERMESH_AGENT_CERTS_CA_KEY")]
    pub agent_certs_ca_key: Option<PathBuf>,
    /// Where the agent certificate issuer listens (gRPC over TLS).
    #[arg(
        long,
        env = "CLUSTERMESH_AGENT_CERTS_ADDR",
        default_value = "0.0.0.0:9965"
    )]
    pub agent_certs_addr: std::net::SocketAddr,
    /// The server certificate (PEM) the issuer's TLS presents; agents verify it with the
    /// cluster CA, so it must name the address they dial (e.g. clustermesh-apiserver.<ns>.svc).
    #[arg(long, env = "CLUSTERMESH_AGENT_CERTS_TLS_CERT")]
    pub agent_certs_tls_cert: Option<PathBuf>,
    /// The key of --agent-certs-tls-cert.
    #[arg(long, env = "CLUSTERMESH_AGENT_CERTS_TLS_KEY")]
    pub agent_certs_tls_key: Option<PathBuf>,
    /// The audience the agents' projected ServiceAccount tokens must be issued for.
    #[arg(
        long,
        env = "CLUSTERMESH_AGENT_CERTS_AUDIENCE",
        default_value = crate::agent_certs::DEFAULT_AUDIENCE
    )]
    pub agent_certs_audience: String,
    /// The only user the issuer serves: the agents' ServiceAccount, as
    /// system:serviceaccount:<namespace>:<name>.
    #[arg(
        long,
        env = "CLUSTERMESH_AGENT_SERVICE_ACCOUNT",
        default_value = "system:serviceaccount:clustermesh:clustermesh-agent"
    )]
    pub agent_service_account: String,
    /// How long an issued agent certificate is valid (agents renew it when a third is left).
    #[arg(long, env = "CLUSTERMESH_AGENT_CERT_LIFETIME", value_parser = humantime::parse_duration, default_value = "24h")]
    pub agent_cert_lifetime: Duration,
    /// The SPIFFE trust domain of the mesh, as in every node certificate's URI SAN.
    #[arg(
        long,
        env = "CLUSTERMESH_TRUST_DOMAIN",
        default_value = "clustermesh.local"
    )]
    pub trust_domain: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Cluster(#[from] ClusterArgsError),
    #[error("--lease-ttl must be at least 2s (etcd's shortest lease), not {0:?}")]
    LeaseTtl(Duration),
    #[error("--cluster-ca {path}: {reason}")]
    ClusterCa { path: PathBuf, reason: String },
    #[error("--agent-certs-ca-key: {0}")]
    AgentCerts(String),
    #[error("--agent-cert-lifetime must be between 1m and 366d, not {0:?}")]
    AgentCertLifetime(Duration),
    #[error("--agent-service-account {0:?}: give system:serviceaccount:<namespace>:<name>")]
    AgentServiceAccount(String),
    #[error("--trust-domain {0:?} is not a DNS name")]
    TrustDomain(String),
    #[error(
        "--clusterset-vip-range: give one IPv4 range and optionally one IPv6 range, each with room for addresses; got {0:?}"
    )]
    ClustersetVipRange(Vec<ipnet::IpNet>),
}

/// The checked configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    #[serde(skip)]
    pub cluster: ExpectedCluster,
    pub cluster_name: String,
    pub cluster_id: u16,
    pub max_connected_clusters: u32,
    pub etcd: EtcdConfig,
    pub etcd_auth: bool,
    #[serde(skip)]
    pub schema: KeySchema,
    pub kvstore_prefix: String,
    pub source: SourceKind,
    pub manifests_dir: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub kube_context: Option<String>,
    pub peers_dir: Option<PathBuf>,
    #[serde(with = "humantime_serde_opt")]
    pub peer_cache_ttl: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub identity_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    pub health_addr: std::net::SocketAddr,
    pub status_addr: std::net::SocketAddr,
    /// `sha256:<hex>` of the cluster CA, when given.
    pub ca_fingerprint: Option<String>,
    pub clusterset_vip_range: Vec<ipnet::IpNet>,
    #[serde(with = "humantime_serde")]
    pub clusterset_vip_grace: Duration,
    /// The agent certificate issuer; `None` unless --agent-certs-ca-key is given.
    pub agent_certs: Option<crate::agent_certs::IssuerSettings>,
}

mod humantime_serde {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

mod humantime_serde_opt {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

impl Config {
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let (cluster, schema) = args.cluster.resolve()?;
        let agent_certs = agent_certs(&args, &cluster.name)?;
        if args.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::LeaseTtl(args.lease_ttl));
        }
        let ranges = &args.clusterset_vip_range;
        let v4 = ranges
            .iter()
            .filter(|r| matches!(r, ipnet::IpNet::V4(_)))
            .count();
        let roomy = ranges
            .iter()
            .all(|r| r.max_prefix_len() - r.prefix_len() >= 2);
        if ranges.is_empty() || v4 > 1 || ranges.len() - v4 > 1 || !roomy {
            return Err(ConfigError::ClustersetVipRange(ranges.clone()));
        }
        let ca_fingerprint = args
            .cluster_ca
            .as_deref()
            .map(|path| {
                certificate_fingerprint(path).map_err(|reason| ConfigError::ClusterCa {
                    path: path.to_owned(),
                    reason,
                })
            })
            .transpose()?;
        Ok(Config {
            cluster_name: cluster.name.to_string(),
            cluster_id: cluster.id.get(),
            max_connected_clusters: args.cluster.max_connected_clusters,
            cluster,
            etcd: args.etcd.into_config(),
            etcd_auth: args.etcd_auth,
            schema,
            kvstore_prefix: args.cluster.kvstore_prefix,
            source: args.source,
            manifests_dir: args.manifests_dir,
            kubeconfig: args.kubeconfig,
            kube_context: args.kube_context,
            peers_dir: args.peers_dir,
            peer_cache_ttl: args.peer_cache_ttl,
            lease_ttl: args.lease_ttl,
            identity_grace: args.identity_grace,
            heartbeat_interval: args.heartbeat_interval,
            health_addr: args.health_addr,
            status_addr: args.status_addr,
            ca_fingerprint,
            clusterset_vip_range: args.clusterset_vip_range,
            clusterset_vip_grace: args.clusterset_vip_grace,
            agent_certs,
        })
    }
}

/// The issuer's settings, checked: `None` without --agent-certs-ca-key.
fn agent_certs(
    args: &Args,
    cluster: &ClusterName,
) -> Result<Option<crate::agent_certs::IssuerSettings>, ConfigError> {
    let Some(ca_key) = args.agent_certs_ca_key.clone() else {
        return Ok(None);
    };
    if args.source != SourceKind::Kubernetes {
        return Err(ConfigError::AgentCerts(
            "the agent certificate issuer reviews Kubernetes ServiceAccount tokens: it needs --source kubernetes (with --source manifests, give agents their certificates as files)".into(),
        ));
    }
    let missing = |flag: &str| ConfigError::AgentCerts(format!("the issuer also needs {flag}"));
    let ca_cert = args
        .cluster_ca
        .clone()
        .ok_or_else(|| missing("--cluster-ca (the CA certificate)"))?;
    let tls_cert = args
        .agent_certs_tls_cert
        .clone()
        .ok_or_else(|| missing("--agent-certs-tls-cert"))?;
    let tls_key = args
        .agent_certs_tls_key
        .clone()
        .ok_or_else(|| missing("--agent-certs-tls-key"))?;
    let lifetime = args.agent_cert_lifetime;
    if lifetime < Duration::from_secs(60) || lifetime > Duration::from_secs(366 * 24 * 3600) {
        return Err(ConfigError::AgentCertLifetime(lifetime));
    }
    let sa = &args.agent_service_account;
    let parts: Vec<&str> = sa.split(':').collect();
    let valid_sa = matches!(parts.as_slice(), ["system", "serviceaccount", ns, name]
        if clustermesh_model::is_dns_subdomain(ns) && clustermesh_model::is_dns_subdomain(name));
    if !valid_sa {
        return Err(ConfigError::AgentServiceAccount(sa.clone()));
    }
    if !clustermesh_model::is_dns_subdomain(&args.trust_domain) {
        return Err(ConfigError::TrustDomain(args.trust_domain.clone()));
    }
    Ok(Some(crate::agent_certs::IssuerSettings {
        listen: args.agent_certs_addr,
        tls_cert,
        tls_key,
        ca_cert,
        ca_key,
        audience: args.agent_certs_audience.clone(),
        service_account: sa.clone(),
        lifetime,
        trust_domain: args.trust_domain.clone(),
        cluster: cluster.to_string(),
    }))
}

/// `sha256:<hex>` of the first certificate in a PEM file.
pub fn certificate_fingerprint(path: &std::path::Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let block = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .next()
        .ok_or("no PEM certificate in the file")?
        .map_err(|e| e.to_string())?;
    let digest = Sha256::digest(&block.contents);
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec![
            "clustermesh-apiserver",
            "--cluster-name=east",
            "--cluster-id=1",
            "--etcd-endpoints=http://127.0.0.1:2379",
            "--source=manifests",
            "--manifests-dir=/tmp",
        ];
        // An extra flag replaces the base one of the same name.
        argv.retain(|a| {
            let flag = a.split('=').next().unwrap_or_default();
            !extra.iter().any(|e| e.starts_with(&format!("{flag}=")))
        });
        argv.extend(extra);
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn a_bad_setting_is_named_in_the_error() {
        assert!(args(&[]).is_ok());
        let err = args(&["--cluster-id=300"]).unwrap_err();
        assert!(err.starts_with("--cluster-id:"), "{err}");
        let err = args(&["--cluster-name=East_1"]).unwrap_err();
        assert!(err.starts_with("--cluster-name:"), "{err}");
        let err = args(&["--lease-ttl=1s"]).unwrap_err();
        assert!(err.contains("--lease-ttl"), "{err}");
        let err = args(&["--lease-ttl=soon"]).unwrap_err();
        assert!(err.contains("--lease-ttl"), "{err}");
        let err = args(&["--etcd-ca=/x"]).unwrap_err();
        assert!(err.contains("--etcd-cert"), "{err}");
        assert!(args(&["--cluster-id=300", "--max-connected-clusters=511"]).is_ok());
        let ok = args(&["--clusterset-vip-range=10.255.0.0/16,fd00:636c::/64"]).unwrap();
        assert_eq!(ok.clusterset_vip_range.len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let cluster_ca = format!("--cluster-ca={}", ca.display());
        let issuer = [
            "--source=kubernetes",
            cluster_ca.as_str(),
            "--agent-certs-ca-key=/ca.key",
            "--agent-certs-tls-cert=/tls.crt",
            "--agent-certs-tls-key=/tls.key",
        ];
        let c = args(&issuer).unwrap();
        let settings = c.agent_certs.unwrap();
        assert_eq!(settings.lifetime, Duration::from_secs(24 * 3600));
        assert_eq!(settings.cluster, "east");
        let err = args(&["--agent-certs-ca-key=/ca.key"]).unwrap_err();
        assert!(err.contains("--source kubernetes"), "{err}");
        let err = args(&issuer[..3]).unwrap_err();
        assert!(err.contains("--agent-certs-tls-cert"), "{err}");
        let mut bad_sa = issuer.to_vec();
        bad_sa.push("--agent-service-account=clustermesh-agent");
        let err = args(&bad_sa).unwrap_err();
        assert!(err.contains("--agent-service-account"), "{err}");
        for bad in [
            "--clusterset-vip-range=10.0.0.0/16,10.1.0.0/16",
            "--clusterset-vip-range=10.0.0.0/31",
            "--clusterset-vip-range=10.0.0.0/33",
        ] {
            let err = args(&[bad]).unwrap_err();
            assert!(err.contains("--clusterset-vip-range"), "{bad}: {err}");
        }
    }
}
