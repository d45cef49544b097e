//! Node identities: the SPIFFE-style URI a node certificate carries in its SAN,
//! `spiffe://<trust-domain>/cluster/<cluster>/node/<node>`.
//!
//! The cluster named in the URI is what the tunnel trusts and authorizes by: a certificate is
//! verified against the CA of the cluster its URI names (see `tls`), so a cluster cannot speak
//! for another one.

use std::fmt;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Why a certificate does not carry a usable node identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed as X.509: {0}")]
    BadCertificate(String),
    #[error(
        "the certificate has no URI SAN of the form spiffe://<trust-domain>/cluster/<cluster>/node/<node>; issue node certificates with `clustermesh` so they carry one"
    )]
    NoSpiffeId,
    #[error("the certificate has {0} spiffe:// URI SANs; a node certificate must have exactly one")]
    SeveralSpiffeIds(usize),
    #[error(
        "`{0}` is not a node identity; expected spiffe://<trust-domain>/cluster/<cluster>/node/<node>"
    )]
    Malformed(String),
}

/// The identity of one node of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIdentity {
    pub trust_domain: String,
    pub cluster: String,
    pub node: String,
}

impl NodeIdentity {
    pub fn new(trust_domain: &str, cluster: &str, node: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            cluster: cluster.to_owned(),
            node: node.to_owned(),
        }
    }

    /// The URI as written in a certificate.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/cluster/{}/node/{}",
            self.trust_domain, self.cluster, self.node
        )
    }

    /// Parses `spiffe://<trust-domain>/cluster/<cluster>/node/<node>`. Every segment must be a
    /// non-empty run of DNS-name characters, so nothing can hide a `/` or a `..` in a name.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [trust_domain, "cluster", cluster, "node", node] = parts.as_slice() else {
            return Err(malformed());
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
                && !s.starts_with('.')
        };
        if ![trust_domain, cluster, node].iter().all(|s| valid(s)) {
            return Err(malformed());
        }
        Ok(Self::new(trust_domain, cluster, node))
    }

    /// Reads the one SPIFFE URI SAN of a DER certificate.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let san = parsed
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let uris: Vec<&str> = san
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        match uris.as_slice() {
            [] => Err(IdentityError::NoSpiffeId),
            [uri] => Self::parse(uri),
            more => Err(IdentityError::SeveralSpiffeIds(more.len())),
        }
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_formats() {
        let id = NodeIdentity::new("mesh.local", "east", "node-1.example");
        assert_eq!(NodeIdentity::parse(&id.uri()), Ok(id));
    }

    #[test]
    fn refuses_malformed_uris() {
        for uri in [
            "https://mesh/cluster/a/node/b",
            "spiffe://mesh/cluster/a/node/",
            "spiffe://mesh/cluster/a/node/b/extra",
            "spiffe://mesh/cluster//node/b",
            "spiffe://mesh/cluster/a b/node/b",
            "spiffe://mesh/node/b/cluster/a",
            "spiffe://mesh/cluster/../node/b",
        ] {
            assert!(
                matches!(NodeIdentity::parse(uri), Err(IdentityError::Malformed(_))),
                "{uri} was accepted"
            );
        }
    }
}
