//! The lab's mesh wiring: a CA per cluster that issues every node's tunnel certificate (with
//! the SPIFFE URI SAN the tunnel checks), the cluster etcd's server certificate and the etcd
//! client certificates, and the peers directory of each cluster, where a file per connected
//! remote cluster tells the apiserver which etcd to mirror (with the peer's CA and a read-only
//! client certificate the peer's CA issued) and the agents which CA that cluster's nodes are
//! trusted with.
//!
//! `lab up` meshes clusters with it, and `clustermesh connect --context lab:<c>` writes the same
//! peer files. As in production, every etcd client authenticates with a certificate whose CN
//! is its etcd user (`clustermesh_model::etcd_users`; roles in the apiserver's `security.rs`):
//! the apiserver [`APISERVER_USER`], each agent `agent-<node>`, peers [`REMOTE_USER`], and the
//! lab's own tools (status, troubleshoot, tests) [`LAB_ADMIN_USER`], etcd's root user.
//!
//! ```text
//! <state>/clusters/<cluster>/pki/ca.pem, ca-key.pem                 the cluster CA
//! <state>/clusters/<cluster>/pki/node-<node>.pem, -key.pem          a node's tunnel certificate
//! <state>/clusters/<cluster>/pki/etcd-server.pem, -key.pem          etcd's server certificate
//! <state>/clusters/<cluster>/pki/etcd-client-<user>.pem, -key.pem   an etcd client certificate
//! <state>/clusters/<cluster>/peers/<peer>.yaml                      one file per connected peer
//! <state>/clusters/<cluster>/peers/<peer>-client.pem, -key.pem      `remote`, from the peer's CA
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The SPIFFE trust domain of lab meshes (the agent's default).
pub const TRUST_DOMAIN: &str = "clustermesh.local";

pub use clustermesh_model::etcd_users::{APISERVER_USER, REMOTE_USER, agent_user};

/// The user of the lab's own tools (status, troubleshoot, tests): etcd's root user, which the
/// apiserver creates with the root role (the break-glass user of `security.rs`).
pub const LAB_ADMIN_USER: &str = clustermesh_model::etcd_users::ROOT_USER;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("issuing a certificate for {what}: {reason}")]
    Certificate { what: String, reason: String },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MeshError {
    let path = path.to_owned();
    move |source| MeshError::Io {
        action,
        path,
        source,
    }
}

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> MeshError {
    let what = what.to_owned();
    move |e| MeshError::Certificate {
        what,
        reason: e.to_string(),
    }
}

/// The files of one cluster's mesh wiring.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    dir: PathBuf,
}

impl ClusterPki {
    /// `<state>/clusters/<cluster>/pki`.
    pub fn new(state_dir: &Path, cluster: &str) -> Self {
        Self {
            dir: state_dir.join("clusters").join(cluster).join("pki"),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    pub fn node_cert(&self, node: &str) -> PathBuf {
        self.dir.join(format!("node-{node}.pem"))
    }

    pub fn node_key(&self, node: &str) -> PathBuf {
        self.dir.join(format!("node-{node}-key.pem"))
    }

    /// The etcd server certificate.
    pub fn etcd_server_cert(&self) -> PathBuf {
        self.dir.join("etcd-server.pem")
    }

    pub fn etcd_server_key(&self) -> PathBuf {
        self.dir.join("etcd-server-key.pem")
    }

    /// The etcd client certificate of `user` (its CN).
    pub fn etcd_client_cert(&self, user: &str) -> PathBuf {
        self.dir.join(format!("etcd-client-{user}.pem"))
    }

    pub fn etcd_client_key(&self, user: &str) -> PathBuf {
        self.dir.join(format!("etcd-client-{user}-key.pem"))
    }

    /// Issues the etcd server certificate (SANs: `etcd_ip` and 127.0.0.1) and a client
    /// certificate for the apiserver, the lab's tools and every node's agent. Needs the CA
    /// ([`ClusterPki::issue`] first).
    pub fn issue_etcd(
        &self,
        cluster: &str,
        etcd_ip: IpAddr,
        nodes: &[String],
    ) -> Result<(), MeshError> {
        let issuer = self.load_or_create_ca(cluster)?;
        let what = format!("the etcd server of cluster {cluster}");
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error(&what))?;
        params.distinguished_name.push(DnType::CommonName, "etcd");
        params.subject_alt_names = vec![
            SanType::IpAddress(etcd_ip),
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(cert_error(&what))?;
        let cert = params.signed_by(&key, &issuer).map_err(cert_error(&what))?;
        write_private(&self.etcd_server_key(), &key.serialize_pem())?;
        let path = self.etcd_server_cert();
        std::fs::write(&path, cert.pem()).map_err(io("write", &path))?;

        let users = [APISERVER_USER.to_owned(), LAB_ADMIN_USER.to_owned()]
            .into_iter()
            .chain(nodes.iter().map(|n| agent_user(n)));
        for user in users {
            issue_client(
                &issuer,
                &user,
                &self.etcd_client_cert(&user),
                &self.etcd_client_key(&user),
            )?;
        }
        Ok(())
    }

    /// Issues a client certificate with CN `user` into `cert`/`key`, unless both exist (so
    /// connecting twice changes nothing).
    pub fn issue_client_once(
        &self,
        cluster: &str,
        user: &str,
        cert: &Path,
        key: &Path,
    ) -> Result<(), MeshError> {
        if cert.exists() && key.exists() {
            return Ok(());
        }
        let issuer = self.load_or_create_ca(cluster)?;
        issue_client(&issuer, user, cert, key)
    }

    /// Creates the cluster CA (kept if it exists) and a tunnel certificate for every node.
    pub fn issue(&self, cluster: &str, nodes: &[String]) -> Result<(), MeshError> {
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let issuer = self.load_or_create_ca(cluster)?;
        for node in nodes {
            let uri = format!("spiffe://{TRUST_DOMAIN}/cluster/{cluster}/node/{node}");
            let mut params =
                CertificateParams::new(Vec::<String>::new()).map_err(cert_error(&uri))?;
            params.subject_alt_names = vec![SanType::URI(
                uri.as_str().try_into().map_err(cert_error(&uri))?,
            )];
            params.distinguished_name.push(DnType::CommonName, node);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().map_err(cert_error(&uri))?;
            let cert = params.signed_by(&key, &issuer).map_err(cert_error(&uri))?;
            write_private(&self.node_key(node), &key.serialize_pem())?;
            let path = self.node_cert(node);
            std::fs::write(&path, cert.pem()).map_err(io("write", &path))?;
        }
        Ok(())
    }

    fn load_or_create_ca(&self, cluster: &str) -> Result<Issuer<'static, KeyPair>, MeshError> {
        let what = format!("the CA of cluster {cluster}");
        if self.ca().exists() && self.ca_key().exists() {
            let cert = std::fs::read_to_string(self.ca()).map_err(io("read", &self.ca()))?;
            let key = std::fs::read_to_string(self.ca_key()).map_err(io("read", &self.ca_key()))?;
            let key = KeyPair::from_pem(&key).map_err(cert_error(&what))?;
            return Issuer::from_ca_cert_pem(&cert, key).map_err(cert_error(&what));
        }
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error(&what))?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("clustermesh {cluster} cluster CA"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(cert_error(&what))?;
        let cert = params.self_signed(&key).map_err(cert_error(&what))?;
        write_private(&self.ca_key(), &key.serialize_pem())?;
        std::fs::write(self.ca(), cert.pem()).map_err(io("write", &self.ca()))?;
        Ok(Issuer::new(params, key))
    }
}

fn issue_client(
    issuer: &Issuer<'static, KeyPair>,
    user: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), MeshError> {
    let what = format!("the etcd client {user}");
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error(&what))?;
    params.distinguished_name.push(DnType::CommonName, user);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().map_err(cert_error(&what))?;
    let cert = params.signed_by(&key, issuer).map_err(cert_error(&what))?;
    write_private(key_path, &key.serialize_pem())?;
    std::fs::write(cert_path, cert.pem()).map_err(io("write", cert_path))
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> Result<(), MeshError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("write", path))?;
    file.write_all(pem.as_bytes()).map_err(io("write", path))
}

/// `<state>/clusters/<cluster>/peers`.
pub fn peers_dir(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join("clusters").join(cluster).join("peers")
}

/// What `cluster` needs to know about a peer it connects to.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub name: String,
    pub id: u16,
    /// The peer's etcd client URL (`https://`).
    pub etcd: String,
    /// The peer's cluster CA: it signs the peer's etcd server certificate and its nodes'
    /// tunnel certificates.
    pub ca: PathBuf,
}

/// The read-only client certificate `cluster` reads `peer`'s etcd with (issued by the peer's
/// CA), in `cluster`'s peers directory.
pub fn peer_client_cert(state_dir: &Path, cluster: &str, peer: &str) -> PathBuf {
    peers_dir(state_dir, cluster).join(format!("{peer}-client.pem"))
}

pub fn peer_client_key(state_dir: &Path, cluster: &str, peer: &str) -> PathBuf {
    peers_dir(state_dir, cluster).join(format!("{peer}-client-key.pem"))
}

/// Writes `<peers dir of cluster>/<peer>.yaml` with the peer's etcd, its CA and a `remote`
/// client certificate from the peer's CA (issued unless it exists; the file is written last and
/// atomically: the apiserver and agents watch the directory and must never read half a file).
pub fn write_peer(state_dir: &Path, cluster: &str, peer: &PeerEntry) -> Result<(), MeshError> {
    let dir = peers_dir(state_dir, cluster);
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let cert = peer_client_cert(state_dir, cluster, &peer.name);
    let key = peer_client_key(state_dir, cluster, &peer.name);
    ClusterPki::new(state_dir, &peer.name).issue_client_once(
        &peer.name,
        REMOTE_USER,
        &cert,
        &key,
    )?;
    let text = format!(
        "# written by `clustermesh lab`: {cluster} is connected to {name}\nname: {name}\nid: {id}\nendpoints: [\"{etcd}\"]\nca: {ca}\ncert: {cert}\nkey: {key}\n",
        name = peer.name,
        id = peer.id,
        etcd = peer.etcd,
        ca = peer.ca.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let path = dir.join(format!("{}.yaml", peer.name));
    let tmp = dir.join(format!(".{}.yaml.tmp", peer.name));
    std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))
}

/// Removes `<peers dir of cluster>/<peer>.yaml` and its client certificate; returns whether the
/// peer file existed.
pub fn remove_peer(state_dir: &Path, cluster: &str, peer: &str) -> Result<bool, MeshError> {
    let path = peers_dir(state_dir, cluster).join(format!("{peer}.yaml"));
    let existed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io("remove", &path)(e)),
    };
    for file in [
        peer_client_cert(state_dir, cluster, peer),
        peer_client_key(state_dir, cluster, peer),
    ] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &file)(e)),
        }
    }
    Ok(existed)
}

/// The peers `cluster` is connected to (file stems in its peers directory).
pub fn connected_peers(state_dir: &Path, cluster: &str) -> Vec<String> {
    let mut peers: Vec<String> = std::fs::read_dir(peers_dir(state_dir, cluster))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".yaml")
                .filter(|stem| !stem.starts_with('.'))
                .map(str::to_owned)
        })
        .collect();
    peers.sort();
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_ca_issues_node_certificates_and_survives_reissue() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::new(dir.path(), "east");
        pki.issue("east", &["east-1".into(), "east-2".into()])
            .unwrap();
        let ca = std::fs::read(pki.ca()).unwrap();
        let cert = std::fs::read_to_string(pki.node_cert("east-2")).unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE"));
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        let parsed = pem.parse_x509().unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        assert!(
            format!("{:?}", san.value)
                .contains("spiffe://clustermesh.local/cluster/east/node/east-2"),
            "{san:?}"
        );
        // Issuing again (a node added) keeps the CA, so peers keep trusting the cluster.
        pki.issue("east", &["east-3".into()]).unwrap();
        assert_eq!(std::fs::read(pki.ca()).unwrap(), ca);
        let mode = std::fs::metadata(pki.node_key("east-3")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);

        // etcd: a server certificate for its node IP and loopback, a client per user.
        pki.issue_etcd("east", [172, 20, 1, 10].into(), &["east-1".into()])
            .unwrap();
        assert_eq!(std::fs::read(pki.ca()).unwrap(), ca);
        let server = std::fs::read_to_string(pki.etcd_server_cert()).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(server.as_bytes()).unwrap();
        let parsed = pem.parse_x509().unwrap();
        let san = format!(
            "{:?}",
            parsed.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(
            san.contains("[172, 20, 1, 10]") && san.contains("[127, 0, 0, 1]"),
            "{san}"
        );
        for user in ["clustermesh-apiserver", "root", "agent-east-1"] {
            let cert = std::fs::read_to_string(pki.etcd_client_cert(user)).unwrap();
            let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
            assert_eq!(
                pem.parse_x509().unwrap().subject().to_string(),
                format!("CN={user}")
            );
            assert!(pki.etcd_client_key(user).exists());
        }
    }

    #[test]
    fn peers_are_written_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let entry = PeerEntry {
            name: "west".into(),
            id: 2,
            etcd: "https://172.20.2.10:2379".into(),
            ca: "/x/ca.pem".into(),
        };
        write_peer(dir.path(), "east", &entry).unwrap();
        assert_eq!(connected_peers(dir.path(), "east"), ["west"]);
        let text =
            std::fs::read_to_string(peers_dir(dir.path(), "east").join("west.yaml")).unwrap();
        let cert_path = peer_client_cert(dir.path(), "east", "west");
        assert!(
            text.contains("id: 2")
                && text.contains("ca: /x/ca.pem")
                && text.contains(&format!("cert: {}", cert_path.display())),
            "{text}"
        );
        // The client certificate is west's read-only user, issued by west's CA.
        let cert = std::fs::read_to_string(&cert_path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        let parsed = pem.parse_x509().unwrap();
        assert_eq!(
            parsed.subject().to_string(),
            format!("CN={REMOTE_USER}"),
            "{cert}"
        );
        let ca = std::fs::read_to_string(ClusterPki::new(dir.path(), "west").ca()).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).unwrap();
        assert_eq!(parsed.issuer(), ca.parse_x509().unwrap().subject());
        // Connecting again keeps the certificate (nothing changes, nothing reconnects).
        write_peer(dir.path(), "east", &entry).unwrap();
        assert_eq!(std::fs::read_to_string(&cert_path).unwrap(), cert);
        assert!(remove_peer(dir.path(), "east", "west").unwrap());
        assert!(!cert_path.exists());
        assert!(!remove_peer(dir.path(), "east", "west").unwrap());
        assert!(connected_peers(dir.path(), "east").is_empty());
    }
}
