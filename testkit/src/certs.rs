//! Certificate authorities and leaf certificates for tests, written as PEM files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};

/// Paths of a CA bundle, a certificate and its key, as a client or server is configured with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test certificate authority that writes everything it issues into one directory.
pub struct TestCa {
    name: String,
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_path: PathBuf,
}

impl TestCa {
    /// Creates a CA called `name` and writes its certificate to `<dir>/<name>-ca.pem`.
    pub fn new(name: &str, dir: &Path) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let ca_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_path, cert.pem()).expect("write CA certificate");
        Self {
            name: name.to_owned(),
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
            ca_path,
        }
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// A server certificate for `localhost` and the given IPs.
    pub fn server(&self, leaf: &str, ips: &[IpAddr]) -> TlsFiles {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("SAN");
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(leaf, params)
    }

    /// A client certificate whose common name is `user` (etcd maps it to that user).
    pub fn client(&self, leaf: &str, user: &str) -> TlsFiles {
        self.issue(leaf, client_params(user))
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, leaf: &str, user: &str) -> TlsFiles {
        let mut params = client_params(user);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
        self.issue(leaf, params)
    }

    /// A client certificate valid from a minute ago until `lifetime` from now, for tests of
    /// renewal: it expires while the test runs.
    pub fn short_lived_client(&self, leaf: &str, user: &str, lifetime: Duration) -> TlsFiles {
        let mut params = client_params(user);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + lifetime;
        self.issue(leaf, params)
    }

    fn issue(&self, leaf: &str, mut params: CertificateParams) -> TlsFiles {
        params
            .distinguished_name
            .push(DnType::OrganizationName, self.name.clone());
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let files = TlsFiles {
            ca: self.ca_path.clone(),
            cert: self.dir.join(format!("{leaf}.pem")),
            key: self.dir.join(format!("{leaf}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}

fn client_params(user: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
    params.distinguished_name.push(DnType::CommonName, user);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}
