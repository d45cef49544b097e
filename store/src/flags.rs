//! The flags that the apiserver and the agent both take (which cluster this is, where its etcd
//! is): one definition, so both binaries spell, document and check them the same way.

use std::path::PathBuf;
use std::time::Duration;

use clustermesh_model::{
    ClusterError, ClusterId, ClusterName, ExpectedCluster, KeyError, KeySchema,
    MaxConnectedClusters,
};

use crate::connect::{EtcdConfig, TlsPaths};

/// `--cluster-name`, `--cluster-id`, `--max-connected-clusters`, `--kvstore-prefix` (flattened
/// into each binary's flags).
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// This cluster's name (lower-case letters, digits, '-'; at most 32 characters).
    #[arg(long, env = "CLUSTERMESH_CLUSTER_NAME")]
    pub cluster_name: String,
    /// This cluster's ID, unique in the mesh: 1..=255 (or 1..=511 with --max-connected-clusters 511).
    #[arg(long, env = "CLUSTERMESH_CLUSTER_ID")]
    pub cluster_id: u32,
    /// How many clusters the mesh may hold: 255 or 511 (511 halves each cluster's identities).
    #[arg(
        long,
        env = "CLUSTERMESH_MAX_CONNECTED_CLUSTERS",
        default_value_t = 255
    )]
    pub max_connected_clusters: u32,
    /// Root prefix of every key in etcd.
    #[arg(long, env = "CLUSTERMESH_KVSTORE_PREFIX", default_value = clustermesh_model::keys::DEFAULT_ROOT)]
    pub kvstore_prefix: String,
}

/// A cluster flag that does not hold a valid value; the message starts with the flag's name.
#[derive(Debug, thiserror::Error)]
pub enum ClusterArgsError {
    #[error("--cluster-name: {0}")]
    ClusterName(ClusterError),
    #[error("--max-connected-clusters: {0}")]
    MaxConnected(ClusterError),
    #[error("--cluster-id: {0}")]
    ClusterId(ClusterError),
    #[error("--kvstore-prefix: {0}")]
    Prefix(KeyError),
}

impl ClusterArgs {
    /// The cluster these flags name and the key layout under the prefix.
    pub fn resolve(&self) -> Result<(ExpectedCluster, KeySchema), ClusterArgsError> {
        let mesh = MaxConnectedClusters::try_from(self.max_connected_clusters)
            .map_err(ClusterArgsError::MaxConnected)?;
        let name = ClusterName::new(&self.cluster_name).map_err(ClusterArgsError::ClusterName)?;
        let id = ClusterId::new(self.cluster_id, mesh).map_err(ClusterArgsError::ClusterId)?;
        let schema = KeySchema::new(&self.kvstore_prefix).map_err(ClusterArgsError::Prefix)?;
        Ok((ExpectedCluster { name, id, mesh }, schema))
    }
}

/// How long one connection attempt (TCP and TLS handshakes, then a status call) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `--etcd-endpoints`, `--etcd-ca`, `--etcd-cert`, `--etcd-key` (flattened into each binary's
/// flags). The three TLS files come together or not at all; clap refuses one without the
/// others, naming the missing flag.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// This cluster's etcd client URLs, comma separated (https:// URLs need the three TLS
    /// flags below).
    #[arg(
        long,
        env = "CLUSTERMESH_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// CA bundle that signs the etcd server certificate.
    #[arg(long, env = "CLUSTERMESH_ETCD_CA", requires_all = ["etcd_cert", "etcd_key"])]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd; its CN is the etcd user. Read again at every reconnect,
    /// so a renewed certificate needs no restart.
    #[arg(long, env = "CLUSTERMESH_ETCD_CERT", requires_all = ["etcd_ca", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// Key of the client certificate.
    #[arg(long, env = "CLUSTERMESH_ETCD_KEY", requires_all = ["etcd_ca", "etcd_cert"])]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// The connection these flags describe. The files are checked when connecting
    /// (`connect`), where a bad one is named.
    pub fn into_config(self) -> EtcdConfig {
        let tls = match (self.etcd_ca, self.etcd_cert, self.etcd_key) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsPaths { ca, cert, key }),
            // clap's `requires_all` leaves only all or none.
            _ => None,
        };
        EtcdConfig {
            endpoints: self.etcd_endpoints,
            tls,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Flags {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    #[test]
    fn all_three_tls_files_make_an_mtls_config() {
        let flags = parse(&[
            "--etcd-endpoints=https://10.0.0.1:2379,https://10.0.0.2:2379",
            "--etcd-ca=/ca.pem",
            "--etcd-cert=/c.pem",
            "--etcd-key=/k.pem",
        ])
        .unwrap();
        let config = flags.etcd.into_config();
        assert_eq!(config.endpoints.len(), 2);
        assert_eq!(config.tls.unwrap().key, PathBuf::from("/k.pem"));
    }

    #[test]
    fn a_lone_tls_flag_is_refused_by_name() {
        let err = parse(&[
            "--etcd-endpoints=https://10.0.0.1:2379",
            "--etcd-cert=/c.pem",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--etcd-ca") && err.contains("--etcd-key"),
            "{err}"
        );
    }

    #[test]
    fn without_tls_flags_the_connection_is_plain() {
        let flags = parse(&["--etcd-endpoints=http://127.0.0.1:2379"]).unwrap();
        assert!(flags.etcd.into_config().tls.is_none());
    }

    #[test]
    fn cluster_flags_resolve_to_the_cluster_and_key_layout() {
        let flags = parse(&["--etcd-endpoints=http://127.0.0.1:2379"]).unwrap();
        let (cluster, _schema) = flags.cluster.resolve().unwrap();
        assert_eq!(cluster.name.as_str(), "east");
        assert_eq!(cluster.id.get(), 7);
    }

    #[test]
    fn a_cluster_id_beyond_the_mesh_size_is_refused_by_name() {
        let with_id = |id: u32, max: u32| {
            let mut flags = parse(&["--etcd-endpoints=http://127.0.0.1:2379"]).unwrap();
            flags.cluster.cluster_id = id;
            flags.cluster.max_connected_clusters = max;
            flags.cluster.resolve().map(|(cluster, _)| cluster.id.get())
        };
        let err = with_id(300, 255).unwrap_err().to_string();
        assert!(err.starts_with("--cluster-id: "), "{err}");
        assert_eq!(with_id(300, 511).unwrap(), 300);
        let err = with_id(1, 300).unwrap_err().to_string();
        assert!(err.starts_with("--max-connected-clusters: "), "{err}");
    }

    #[test]
    fn a_bad_cluster_name_is_refused_by_name() {
        let mut flags = parse(&["--etcd-endpoints=http://127.0.0.1:2379"]).unwrap();
        flags.cluster.cluster_name = "East_1".to_owned();
        let err = flags.cluster.resolve().unwrap_err().to_string();
        assert!(err.starts_with("--cluster-name: "), "{err}");
    }

    /// Parses `rest` after the cluster flags every binary requires (cluster `east`, ID 7).
    fn parse(rest: &[&str]) -> Result<Flags, clap::Error> {
        let args = ["x", "--cluster-name=east", "--cluster-id=7"];
        Flags::try_parse_from(args.iter().chain(rest))
    }
}
