//! Certificates for tests and the benchmark: cluster CAs (rcgen) that issue node certificates
//! with the SPIFFE URI SAN, written as PEM files. Not for production: keys are written
//! unencrypted next to the certificates.
//!
//! [`netns`] holds the network namespaces the namespaced tests and the benchmark run in.

pub mod netns;

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::identity::NodeIdentity;
use crate::tls::{CredentialPaths, TrustBundle};

/// A cluster CA that writes what it issues into one directory.
pub struct ClusterCa {
    pub cluster: String,
    pub trust_domain: String,
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    ca_path: PathBuf,
}

impl ClusterCa {
    /// Creates the CA of `cluster` and writes it to `<dir>/<cluster>-ca.pem`.
    pub fn new(trust_domain: &str, cluster: &str, dir: &Path) -> Self {
        Self::named(trust_domain, cluster, &format!("{cluster}-ca"), dir)
    }

    /// A second, different CA claiming the same cluster (an impostor, for tests).
    pub fn named(trust_domain: &str, cluster: &str, file_stem: &str, dir: &Path) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{cluster} cluster CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let ca_path = dir.join(format!("{file_stem}.pem"));
        std::fs::write(&ca_path, cert.pem()).expect("write CA certificate");
        Self {
            cluster: cluster.to_owned(),
            trust_domain: trust_domain.to_owned(),
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
            ca_path,
        }
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(self.pem.as_bytes()).expect("our own PEM parses")
    }

    /// Issues a node certificate (server and client auth) for `node` of this CA's cluster.
    pub fn node(&self, node: &str) -> CredentialPaths {
        self.node_as(
            &NodeIdentity::new(&self.trust_domain, &self.cluster, node),
            node,
        )
    }

    /// Issues a certificate for any identity, written as `<dir>/<file_stem>.pem`.
    pub fn node_as(&self, identity: &NodeIdentity, file_stem: &str) -> CredentialPaths {
        let (cert, key) = self.issue(identity);
        let paths = CredentialPaths {
            cert: self.dir.join(format!("{file_stem}.pem")),
            key: self.dir.join(format!("{file_stem}-key.pem")),
            ca: self.ca_path.clone(),
        };
        std::fs::write(&paths.cert, cert).expect("write certificate");
        std::fs::write(&paths.key, key).expect("write key");
        paths
    }

    /// A PEM certificate and key for `identity`, not written anywhere.
    pub fn issue(&self, identity: &NodeIdentity) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.subject_alt_names = vec![SanType::URI(
            identity.uri().try_into().expect("a SPIFFE URI is IA5"),
        )];
        params
            .distinguished_name
            .push(DnType::CommonName, identity.node.clone());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("generate node key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign node certificate");
        (cert.pem(), key.serialize_pem())
    }
}
