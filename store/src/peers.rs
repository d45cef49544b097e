//! The peers directory: one YAML (or JSON) file per remote cluster, named after it. In
//! Kubernetes this is a mounted Secret; in the lab, a plain directory. Certificate paths are
//! relative to the directory. The apiserver reads it to mirror each peer's etcd; the agents
//! read it for the CA bundle each peer's nodes are trusted with in the tunnel.
//!
//! ```yaml
//! # west.yaml
//! name: west
//! id: 2
//! endpoints: ["https://192.168.2.10:2379"]
//! ca: west-ca.crt          # the CA that signs west's etcd server certificate
//! cert: west-client.crt    # a read-only client certificate west's CA issued for us
//! key: west-client.key
//! tunnel_ca: west-ca.crt   # optional: the CA that signs west's node (tunnel) certificates;
//!                          # defaults to `ca`
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clustermesh_model::{ClusterId, ClusterName, MaxConnectedClusters};

use crate::{EtcdConfig, TlsPaths};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum PeerConfigError {
    #[error("cannot read the peers directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    name: String,
    id: u32,
    endpoints: Vec<String>,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    tunnel_ca: Option<PathBuf>,
}

/// A remote cluster to mirror, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub name: ClusterName,
    pub id: ClusterId,
    pub etcd: EtcdConfig,
    /// The CA bundle that signs the peer's node certificates (the tunnel trusts the peer's
    /// nodes with it); `tunnel_ca`, else `ca`; `None` for a plain-text test peer.
    pub tunnel_ca: Option<PathBuf>,
    /// The certificate files' contents, so a rotated certificate counts as a changed config
    /// and the peer reconnects with it.
    pub fingerprint: Vec<u8>,
}

/// Reads every peer file in `dir`. A file that does not parse is returned as an error for that
/// peer alone; the others are still used.
pub fn read_peers(
    dir: &Path,
    mesh: MaxConnectedClusters,
) -> Result<(BTreeMap<ClusterName, PeerConfig>, Vec<PeerConfigError>), PeerConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PeerConfigError::Dir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !name.starts_with('.') && [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e))
        })
        .collect();
    paths.sort();
    let mut peers = BTreeMap::new();
    let mut problems = Vec::new();
    for path in paths {
        match read_peer(dir, &path, mesh) {
            Ok(peer) => {
                if peers.contains_key(&peer.name) {
                    problems.push(PeerConfigError::File {
                        path,
                        reason: format!("cluster {} is configured twice", peer.name),
                    });
                } else {
                    peers.insert(peer.name.clone(), peer);
                }
            }
            Err(e) => problems.push(e),
        }
    }
    Ok((peers, problems))
}

fn read_peer(
    dir: &Path,
    path: &Path,
    mesh: MaxConnectedClusters,
) -> Result<PeerConfig, PeerConfigError> {
    let bad = |reason: String| PeerConfigError::File {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: PeerFile = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let name = ClusterName::new(&file.name).map_err(|e| bad(format!("name: {e}")))?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    if stem.as_deref() != Some(name.as_str()) {
        return Err(bad(format!(
            "the file must be named after the cluster it configures ({name}.yaml)"
        )));
    }
    let id = ClusterId::new(file.id, mesh).map_err(|e| bad(format!("id: {e}")))?;
    if file.endpoints.is_empty() {
        return Err(bad("endpoints: at least one etcd URL is needed".into()));
    }
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
    let tls = match (file.ca, file.cert, file.key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsPaths {
            ca: resolve(ca),
            cert: resolve(cert),
            key: resolve(key),
        }),
        (None, None, None) => None,
        _ => return Err(bad("ca, cert and key must be given together".into())),
    };
    let tunnel_ca = file
        .tunnel_ca
        .map(resolve)
        .or_else(|| tls.as_ref().map(|t| t.ca.clone()));
    let mut fingerprint = text.into_bytes();
    let files = tls
        .iter()
        .flat_map(|t| [&t.ca, &t.cert, &t.key])
        .chain(tunnel_ca.as_ref());
    for file in files {
        fingerprint
            .extend(std::fs::read(file).map_err(|e| bad(format!("{}: {e}", file.display())))?);
    }
    Ok(PeerConfig {
        name,
        id,
        etcd: EtcdConfig {
            endpoints: file.endpoints,
            tls,
            connect_timeout: Duration::from_secs(5),
        },
        tunnel_ca,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "west.yaml",
            "name: west\nid: 2\nendpoints: [\"http://127.0.0.1:1\"]\n",
        );
        write(
            "south.yaml",
            "name: north\nid: 3\nendpoints: [\"http://127.0.0.1:1\"]\n",
        );
        write("bad.yaml", "name: bad\nid: 0\nendpoints: []\n");
        write(
            "half.yaml",
            "name: half\nid: 4\nendpoints: [\"https://x\"]\nca: ca.crt\n",
        );
        write("ca.crt", "not a config");
        let (peers, problems) = read_peers(dir.path(), MaxConnectedClusters::Max255).unwrap();
        assert_eq!(
            peers.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["west"]
        );
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.contains("bad.yaml: id: cluster ID 0")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("half.yaml: ca, cert and key")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("south.yaml: the file must be named")),
            "{text:?}"
        );
    }
}
