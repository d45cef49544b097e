//! The agent's configuration: flags, with the lab's and Kubernetes' `CLUSTERMESH_*`
//! environment variables as defaults, checked once at start into a typed `Config` that is
//! logged in full; a bad setting is named in the error.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clustermesh_ebpf::DatapathConfig;
use clustermesh_model::{ExpectedCluster, KeySchema, is_dns_subdomain};
use clustermesh_store::{ClusterArgs, ClusterArgsError, EtcdArgs, EtcdConfig};
use ipnet::IpNet;
use serde::Serialize;

/// The agent's default tunnel port (ARCHITECTURE.md).
pub const DEFAULT_TUNNEL_PORT: u16 = 4244;
/// The agent's default outbound (sk_lookup) listener port, on loopback.
pub const DEFAULT_OUTBOUND_PORT: u16 = 4245;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "clustermesh-agent",
    version,
    about = "Watches the local etcd, merges global services across clusters and programs the eBPF socket load balancer"
)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// This node's Kubernetes name.
    #[arg(long, env = "CLUSTERMESH_NODE_NAME")]
    pub node_name: String,
    /// This node's IP: the default tunnel address.
    #[arg(long, env = "CLUSTERMESH_NODE_IP")]
    pub node_ip: IpAddr,
    /// This node's pod CIDR (informational; the lab sets it).
    #[arg(long, env = "CLUSTERMESH_NODE_POD_CIDR")]
    pub node_pod_cidr: Option<IpNet>,
    /// The cgroup v2 directory whose processes get the socket load balancer.
    #[arg(
        long,
        env = "CLUSTERMESH_NODE_CGROUP",
        default_value = "/sys/fs/cgroup"
    )]
    pub cgroup: PathBuf,
    /// Where the datapath's maps and links are pinned (on a mounted bpffs).
    #[arg(long, env = "CLUSTERMESH_BPFFS_DIR", default_value = DatapathConfig::DEFAULT_PIN_DIR)]
    pub bpffs_dir: PathBuf,
    /// The node's network namespace: mesh-VIP routes and the sk_lookup program go there.
    #[arg(
        long,
        env = "CLUSTERMESH_NODE_NETNS",
        default_value = "/proc/self/ns/net"
    )]
    pub netns: PathBuf,
    /// Mesh VIP ranges for remote backends (one IPv4, optionally one IPv6), comma separated.
    #[arg(
        long,
        env = "CLUSTERMESH_MESH_VIP_RANGES",
        value_delimiter = ',',
        default_values_t = [DatapathConfig::DEFAULT_MESH_VIP_RANGE_V4.parse::<IpNet>().expect("valid"), DatapathConfig::DEFAULT_MESH_VIP_RANGE_V6.parse::<IpNet>().expect("valid")]
    )]
    pub mesh_vip_ranges: Vec<IpNet>,

    /// Where this node's tunnel listens, as published in its liveness record
    /// (default: <node-ip>:4244).
    #[arg(long, env = "CLUSTERMESH_TUNNEL_ADDRESS")]
    pub tunnel_address: Option<SocketAddr>,
    /// This node's tunnel certificate (PEM, leaf first), issued by the cluster CA with the URI
    /// SAN `spiffe://<trust-domain>/cluster/<cluster>/node/<node>`. Its SHA-256 fingerprint is
    /// published in the liveness record. Re-read when it changes on disk.
    #[arg(long, env = "CLUSTERMESH_TUNNEL_CERT", requires_all = ["tunnel_key", "tunnel_ca"])]
    pub tunnel_cert: Option<PathBuf>,
    /// The key of the tunnel certificate.
    #[arg(long, env = "CLUSTERMESH_TUNNEL_KEY", requires_all = ["tunnel_cert", "tunnel_ca"])]
    pub tunnel_key: Option<PathBuf>,
    /// This cluster's CA bundle: peers of the own cluster are trusted with it.
    #[arg(long, env = "CLUSTERMESH_TUNNEL_CA", requires_all = ["tunnel_cert", "tunnel_key"])]
    pub tunnel_ca: Option<PathBuf>,
    /// Run without the tunnel: remote backends are then not programmed at all (connections
    /// to them would have nowhere to go). Without this flag the tunnel credentials are required.
    #[arg(long, env = "CLUSTERMESH_DISABLE_TUNNEL", conflicts_with_all = ["tunnel_cert", "tunnel_key", "tunnel_ca"])]
    pub disable_tunnel: bool,
    /// The SPIFFE trust domain of the mesh, as in every node certificate.
    #[arg(
        long,
        env = "CLUSTERMESH_TRUST_DOMAIN",
        default_value = "clustermesh.local"
    )]
    pub trust_domain: String,
    /// Where the tunnel's inbound (mTLS) listener binds (default: the tunnel address).
    #[arg(long, env = "CLUSTERMESH_TUNNEL_LISTEN")]
    pub tunnel_listen: Option<SocketAddr>,
    /// The loopback port of the outbound listener that sk_lookup hands mesh-VIP connections to.
    #[arg(long, env = "CLUSTERMESH_TUNNEL_OUTBOUND_PORT", default_value_t = DEFAULT_OUTBOUND_PORT)]
    pub tunnel_outbound_port: u16,
    /// The peers directory (the same one the apiserver reads): which clusters are connected
    /// and the CA bundle each one's nodes are trusted with. Without it only the own cluster's
    /// nodes are trusted.
    #[arg(long, env = "CLUSTERMESH_PEERS_DIR")]
    pub peers_dir: Option<PathBuf>,
    /// Lease TTL of the liveness record: how long a dead agent stays a tunnel target.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    pub lease_ttl: Duration,

    /// How long to wait for a peer's mirror to be synced before programming without it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub peer_sync_timeout: Duration,
    /// Events within this window are merged and programmed in one pass.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10ms")]
    pub coalesce: Duration,

    /// Where the JSON status, /metrics, /healthz and /readyz are served over TCP.
    #[arg(
        long,
        env = "CLUSTERMESH_STATUS_ADDR",
        default_value = "127.0.0.1:9964"
    )]
    pub status_addr: SocketAddr,
    /// The same endpoints on a unix socket (for `clustermesh status` on the node).
    #[arg(long, env = "CLUSTERMESH_STATUS_SOCKET")]
    pub status_socket: Option<PathBuf>,
    /// The gRPC status API (`api/proto/agent.proto`) on a unix socket; `none` to turn it off.
    #[arg(
        long,
        env = "CLUSTERMESH_GRPC_SOCKET",
        default_value = "/run/clustermesh/agent.sock"
    )]
    pub grpc_socket: PathBuf,
    /// The gRPC status API on TCP as well (off by default: it needs no network exposure).
    #[arg(long, env = "CLUSTERMESH_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// Where the clusterset DNS server listens, UDP and TCP (default: <node-ip>:53).
    #[arg(long, env = "CLUSTERMESH_DNS_LISTEN")]
    pub dns_listen: Option<SocketAddr>,
    /// The resolver that names outside the zone are forwarded to (in Kubernetes: kube-dns's
    /// service IP, port 53). Without it they are refused (when kube-dns forwards the zone here).
    #[arg(long, env = "CLUSTERMESH_DNS_UPSTREAM")]
    pub dns_upstream: Option<SocketAddr>,
    /// TTL of every clusterset record and of negative answers.
    #[arg(long, env = "CLUSTERMESH_DNS_TTL", value_parser = humantime::parse_duration, default_value = "5s")]
    pub dns_ttl: Duration,
    /// The zone answered from the merged view.
    #[arg(long, env = "CLUSTERMESH_DNS_ZONE", default_value = crate::dns::zone::DEFAULT_ZONE)]
    pub dns_zone: String,
    /// Run without the DNS server.
    #[arg(long, env = "CLUSTERMESH_DNS_DISABLE")]
    pub dns_disable: bool,

    /// Obtaining this node's certificate from the apiserver (`bootstrap.rs`).
    #[command(flatten)]
    pub bootstrap: crate::bootstrap::BootstrapArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Cluster(#[from] ClusterArgsError),
    #[error("--node-name {0:?} is not a Kubernetes node name (a DNS subdomain)")]
    NodeName(String),
    #[error("--lease-ttl must be at least 2s (etcd's shortest lease), not {0:?}")]
    LeaseTtl(Duration),
    #[error(
        "--mesh-vip-ranges: give at most one IPv4 and one IPv6 range, each with room for addresses; got {0:?}"
    )]
    MeshVipRanges(Vec<IpNet>),
    #[error("--tunnel-cert {path}: {reason}")]
    TunnelCert { path: PathBuf, reason: String },
    #[error(
        "the tunnel needs --tunnel-cert, --tunnel-key and --tunnel-ca (or CLUSTERMESH_TUNNEL_*); give --disable-tunnel to run without it (remote backends are then not used)"
    )]
    TunnelCredentialsMissing,
    #[error("--trust-domain {0:?} is not a DNS name")]
    TrustDomain(String),
    #[error("--dns-ttl must be whole seconds between 0s and 1h, not {0:?}")]
    DnsTtl(Duration),
    #[error(transparent)]
    Bootstrap(#[from] crate::bootstrap::BootstrapError),
}

/// The checked configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    #[serde(skip)]
    pub cluster: ExpectedCluster,
    pub cluster_name: String,
    pub cluster_id: u16,
    #[serde(skip)]
    pub schema: KeySchema,
    pub kvstore_prefix: String,
    pub etcd: EtcdConfig,
    pub node_name: String,
    pub node_ip: IpAddr,
    pub node_pod_cidr: Option<IpNet>,
    pub cgroup: PathBuf,
    pub netns: PathBuf,
    pub datapath: DatapathConfig,
    pub tunnel_address: SocketAddr,
    pub cert_fingerprint: String,
    /// `None` with --disable-tunnel.
    pub tunnel: Option<TunnelSettings>,
    pub peers_dir: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub peer_sync_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub coalesce: Duration,
    pub status_addr: SocketAddr,
    pub status_socket: Option<PathBuf>,
    pub grpc_socket: Option<PathBuf>,
    pub grpc_addr: Option<SocketAddr>,
    /// `None` with --dns-disable.
    pub dns: Option<crate::dns::DnsSettings>,
    /// Where this node's certificate comes from, with --bootstrap-endpoint (`bootstrap.rs`).
    pub bootstrap: Option<crate::bootstrap::BootstrapSettings>,
}

/// The tunnel's part of the configuration.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelSettings {
    pub trust_domain: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The inbound (mTLS) listener.
    pub listen: SocketAddr,
    /// The outbound listener, on loopback, that sk_lookup hands mesh-VIP connections to.
    pub outbound: SocketAddr,
}

mod humantime_serde {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// The fingerprint published when no tunnel certificate is configured yet.
pub const NO_CERT_FINGERPRINT: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

impl Config {
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let (cluster, schema) = args.cluster.resolve()?;
        if !is_dns_subdomain(&args.node_name) {
            return Err(ConfigError::NodeName(args.node_name));
        }
        let bootstrap = crate::bootstrap::BootstrapSettings::from_args(
            &args.bootstrap,
            &args.trust_domain,
            &args.cluster.cluster_name,
            &args.node_name,
        )?;
        if args.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::LeaseTtl(args.lease_ttl));
        }
        let v4 = args
            .mesh_vip_ranges
            .iter()
            .filter(|r| r.network().is_ipv4())
            .count();
        let roomy = args
            .mesh_vip_ranges
            .iter()
            .all(|r| r.max_prefix_len() - r.prefix_len() >= 2);
        if v4 > 1 || args.mesh_vip_ranges.len() - v4 > 1 || !roomy {
            return Err(ConfigError::MeshVipRanges(args.mesh_vip_ranges));
        }
        let cert_fingerprint = match &args.tunnel_cert {
            None => NO_CERT_FINGERPRINT.to_owned(),
            Some(path) => fingerprint(path)?,
        };
        if !is_dns_subdomain(&args.trust_domain) {
            return Err(ConfigError::TrustDomain(args.trust_domain));
        }
        let dns_ttl = u32::try_from(args.dns_ttl.as_secs())
            .ok()
            .filter(|s| *s <= 3600 && args.dns_ttl.subsec_nanos() == 0)
            .ok_or(ConfigError::DnsTtl(args.dns_ttl))?;
        let dns = (!args.dns_disable).then(|| crate::dns::DnsSettings {
            listen: args.dns_listen.unwrap_or(SocketAddr::new(args.node_ip, 53)),
            upstream: args.dns_upstream,
            ttl_seconds: dns_ttl,
            zone: args.dns_zone.clone(),
        });
        let tunnel_address = args
            .tunnel_address
            .unwrap_or(SocketAddr::new(args.node_ip, DEFAULT_TUNNEL_PORT));
        let tunnel = match (
            args.disable_tunnel,
            args.tunnel_cert,
            args.tunnel_key,
            args.tunnel_ca,
        ) {
            (true, ..) => None,
            (false, Some(cert), Some(key), Some(ca)) => Some(TunnelSettings {
                trust_domain: args.trust_domain,
                cert,
                key,
                ca,
                listen: args.tunnel_listen.unwrap_or(tunnel_address),
                outbound: SocketAddr::new(
                    std::net::Ipv4Addr::LOCALHOST.into(),
                    args.tunnel_outbound_port,
                ),
            }),
            _ => return Err(ConfigError::TunnelCredentialsMissing),
        };
        let etcd = args.etcd.into_config();
        Ok(Self {
            cluster_name: args.cluster.cluster_name,
            cluster_id: cluster.id.get(),
            cluster,
            schema,
            kvstore_prefix: args.cluster.kvstore_prefix,
            etcd,
            node_name: args.node_name,
            node_ip: args.node_ip,
            node_pod_cidr: args.node_pod_cidr,
            cgroup: args.cgroup,
            netns: args.netns,
            datapath: DatapathConfig {
                pin_dir: args.bpffs_dir,
                mesh_vip_ranges: args.mesh_vip_ranges,
            },
            tunnel_address,
            cert_fingerprint,
            tunnel,
            peers_dir: args.peers_dir,
            lease_ttl: args.lease_ttl,
            peer_sync_timeout: args.peer_sync_timeout,
            coalesce: args.coalesce,
            status_addr: args.status_addr,
            status_socket: args.status_socket,
            grpc_socket: (args.grpc_socket.as_os_str() != "none").then_some(args.grpc_socket),
            grpc_addr: args.grpc_addr,
            dns,
            bootstrap,
        })
    }
}

/// `sha256:<hex>` of the first certificate in a PEM file.
fn fingerprint(path: &std::path::Path) -> Result<String, ConfigError> {
    use sha2::Digest;
    let bad = |reason: String| ConfigError::TunnelCert {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    let digest = sha2::Sha256::digest(&pem.contents);
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

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec![
            "clustermesh-agent",
            "--cluster-name=west",
            "--cluster-id=2",
            "--etcd-endpoints=http://127.0.0.1:2379",
            "--node-name=node-1",
            "--node-ip=192.168.1.2",
        ];
        argv.extend(extra);
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = parse(&["--disable-tunnel"]).unwrap();
        assert!(c.tunnel.is_none());
        assert_eq!(c.tunnel_address, "192.168.1.2:4244".parse().unwrap());
        assert_eq!(c.datapath.mesh_vip_ranges[0].to_string(), "100.64.0.0/10");
        assert_eq!(c.cert_fingerprint, NO_CERT_FINGERPRINT);
        let printed = serde_json::to_string(&c).unwrap();
        assert!(
            printed.contains("\"peer_sync_timeout\":\"30s\""),
            "{printed}"
        );
    }

    #[test]
    fn a_bad_setting_names_itself() {
        for (flag, named) in [
            ("--cluster-id=0", "--cluster-id"),
            ("--cluster-name=West_1", "--cluster-name"),
            ("--node-name=Node_1", "--node-name"),
            ("--lease-ttl=1s", "--lease-ttl"),
            (
                "--mesh-vip-ranges=100.64.0.0/10,10.0.0.0/8",
                "--mesh-vip-ranges",
            ),
            ("--node-ip=not-an-ip", "--node-ip"),
            ("--coalesce=soon", "--coalesce"),
            ("--trust-domain=Not A Domain", "--trust-domain"),
        ] {
            let error = parse(&[flag, "--disable-tunnel"]).unwrap_err();
            assert!(error.contains(named), "{flag}: {error}");
        }
    }

    #[test]
    fn the_tunnel_needs_its_credentials_or_an_explicit_opt_out() {
        let error = parse(&[]).unwrap_err();
        assert!(error.contains("--tunnel-cert"), "{error}");
        assert!(error.contains("--disable-tunnel"), "{error}");
        let error = parse(&["--tunnel-cert=/x.pem"]).unwrap_err();
        assert!(error.contains("--tunnel-key"), "{error}");
    }
}
