//! The etcd connection flags that the apiserver and the agent both take: one definition, so
//! both binaries spell, document and check them the same way.

use std::path::PathBuf;
use std::time::Duration;

use crate::connect::{EtcdConfig, TlsPaths};

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
        etcd: EtcdArgs,
    }

    #[test]
    fn all_three_tls_files_make_an_mtls_config() {
        let flags = Flags::try_parse_from([
            "x",
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
        let err = Flags::try_parse_from([
            "x",
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
        let flags = Flags::try_parse_from(["x", "--etcd-endpoints=http://127.0.0.1:2379"]).unwrap();
        assert!(flags.etcd.into_config().tls.is_none());
    }
}
