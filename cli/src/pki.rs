//! Certificates of a cluster's mesh (rcgen, ECDSA P-256), the same set the Terraform module
//! issues: the cluster CA, the etcd server certificate, the apiserver's certificate (CN
//! `clustermesh-apiserver`: etcd's root user as a client, and the server certificate of its
//! agent certificate issuer) and, at `connect`, a read-only client certificate (CN `remote`)
//! for each peer. Every certificate carries a SPIFFE URI
//! `spiffe://<trust domain>/cluster/<cluster>/<role>`. Node agents are not issued anything
//! here: each gets CN `agent-<node>` with `…/node/<node>` from the apiserver's issuer
//! (`clustermesh-apiserver/src/agent_certs.rs`), signed with the same CA.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// How long a generated CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long leaf certificates are valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot issue the certificate for {what}: {reason}")]
    Issue { what: String, reason: String },
    #[error(
        "the CA given for {what} is not usable: {reason}; pass a PEM CA certificate and its PEM private key"
    )]
    BadCa { what: String, reason: String },
    #[error(
        "the CA in {what} expired on {when}; give a valid CA with --ca-cert/--ca-key, or run `clustermesh disable` and `enable` again for a new one (and connect the peers again)"
    )]
    ExpiredCa { what: String, when: String },
    #[error("{what} is not a PEM certificate: {reason}")]
    BadCertificate { what: String, reason: String },
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairPem {
    pub cert: String,
    pub key: String,
}

/// A CA that can issue certificates.
pub struct Ca {
    pub pem: KeyPairPem,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn issue_error(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.to_owned();
    move |e| PkiError::Issue {
        what,
        reason: e.to_string(),
    }
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    // An hour back, for clocks a little behind ours.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::seconds(valid_for.as_secs() as i64);
}

impl Ca {
    /// A new self-signed CA for `cluster`.
    pub fn generate(cluster: &str) -> Result<Ca, PkiError> {
        let what = format!("the CA of cluster {cluster}");
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(issue_error(&what))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("clustermesh CA {cluster}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "clustermesh");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let key = KeyPair::generate().map_err(issue_error(&what))?;
        let cert = params.self_signed(&key).map_err(issue_error(&what))?;
        let pem = KeyPairPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Ca {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its PEM certificate and key (the user's, or one read back from the cluster).
    pub fn load(pem: KeyPairPem, what: &str) -> Result<Ca, PkiError> {
        let bad = |reason: String| PkiError::BadCa {
            what: what.to_owned(),
            reason,
        };
        let info = CertInfo::parse(&pem.cert, what).map_err(|e| bad(e.to_string()))?;
        if !info.is_ca {
            return Err(bad(
                "the certificate is not a CA (basicConstraints CA:FALSE)".into(),
            ));
        }
        if info.remaining(SystemTime::now()).is_zero() {
            return Err(PkiError::ExpiredCa {
                what: what.to_owned(),
                when: humantime::format_rfc3339_seconds(info.not_after).to_string(),
            });
        }
        let key = KeyPair::from_pem(&pem.key).map_err(|e| bad(format!("the key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&pem.cert, key).map_err(|e| bad(format!("{e}")))?;
        Ok(Ca { pem, issuer })
    }

    /// Issues a leaf certificate.
    pub fn issue(&self, spec: &LeafSpec) -> Result<KeyPairPem, PkiError> {
        let what = format!("{} ({})", spec.common_name, spec.purpose);
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(issue_error(&what))?;
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "clustermesh");
        let mut sans = Vec::new();
        for dns in &spec.dns_names {
            sans.push(SanType::DnsName(
                dns.as_str().try_into().map_err(issue_error(&what))?,
            ));
        }
        for ip in &spec.ip_addresses {
            sans.push(SanType::IpAddress(*ip));
        }
        for uri in &spec.uris {
            sans.push(SanType::URI(
                uri.as_str().try_into().map_err(issue_error(&what))?,
            ));
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        validity(&mut params, LEAF_VALIDITY);
        let key = KeyPair::generate().map_err(issue_error(&what))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(issue_error(&what))?;
        Ok(KeyPairPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// What a leaf certificate must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// For error messages: "etcd server", "apiserver", "peer west", ...
    pub purpose: String,
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub uris: Vec<String>,
    pub server: bool,
    pub client: bool,
}

impl LeafSpec {
    /// The subject alternative names as [`CertInfo::sans`] lists them, sorted.
    pub fn sans(&self) -> Vec<String> {
        let mut sans: Vec<String> = self
            .dns_names
            .iter()
            .map(|d| format!("DNS:{d}"))
            .chain(self.ip_addresses.iter().map(|ip| format!("IP:{ip}")))
            .chain(self.uris.iter().map(|u| format!("URI:{u}")))
            .collect();
        sans.sort();
        sans
    }
}

/// What the CLI reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub is_ca: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `DNS:…`, `IP:…`, `URI:…`, sorted.
    pub sans: Vec<String>,
}

impl CertInfo {
    /// Parses the first certificate of a PEM text.
    pub fn parse(pem: &str, what: &str) -> Result<CertInfo, PkiError> {
        let bad = |reason: String| PkiError::BadCertificate {
            what: what.to_owned(),
            reason,
        };
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let is_ca = cert.is_ca();
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        let not_before = time(cert.validity().not_before);
        let not_after = time(cert.validity().not_after);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            use x509_parser::extensions::GeneralName;
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                    GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            sans.push(format!("IP:{ip}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        sans.sort();
        Ok(CertInfo {
            common_name,
            is_ca,
            not_before,
            not_after,
            sans,
        })
    }

    /// Time left before expiry (zero if expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    /// Whether a certificate issued for `spec` can be kept: same common name and names, and
    /// more than a tenth of the leaf validity left (the Terraform module renews at the same
    /// point).
    pub fn still_fits(&self, spec: &LeafSpec, now: SystemTime) -> bool {
        self.common_name == spec.common_name
            && self.sans == spec.sans()
            && self.remaining(now) > LEAF_VALIDITY / 10
            && self.not_before <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_names_and_reuse_is_checked() {
        let ca = Ca::generate("east").unwrap();
        let spec = LeafSpec {
            purpose: "etcd server".into(),
            common_name: "clustermesh-etcd".into(),
            dns_names: vec!["clustermesh-etcd.clustermesh.svc".into()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            uris: vec!["spiffe://clustermesh.local/cluster/east/etcd".into()],
            server: true,
            client: false,
        };
        let leaf = ca.issue(&spec).unwrap();
        let info = CertInfo::parse(&leaf.cert, "leaf").unwrap();
        assert_eq!(info.common_name, "clustermesh-etcd");
        assert!(!info.is_ca);
        assert_eq!(info.sans, spec.sans());
        let now = SystemTime::now();
        assert!(info.still_fits(&spec, now));
        let mut other = spec.clone();
        other.dns_names.push("etcd.example.com".into());
        assert!(!info.still_fits(&other, now));
        // Near its end the certificate is renewed.
        assert!(!info.still_fits(&spec, now + LEAF_VALIDITY - Duration::from_secs(3600)));

        let again = Ca::load(ca.pem.clone(), "the CA").unwrap();
        assert!(again.issue(&spec).is_ok());
        let not_a_ca = Ca::load(leaf, "a leaf");
        assert!(matches!(not_a_ca, Err(PkiError::BadCa { .. })));
    }

    #[test]
    fn an_expired_ca_is_refused_in_one_sentence() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(30);
        params.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = KeyPairPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        let err = Ca::load(pem, "--ca-cert old.pem").unwrap_err().to_string();
        assert!(
            err.starts_with("the CA in --ca-cert old.pem expired on "),
            "{err}"
        );
        assert!(err.contains("give a valid CA"), "{err}");
    }
}
