//! TLS 1.3 with per-cluster trust: node credentials loaded from files and re-read when they
//! change, and the rustls configurations the tunnel uses, published on a `watch` channel.
//!
//! Trust is per cluster, not one mesh-wide CA: a peer's certificate names its cluster in its
//! SPIFFE URI, and it is verified against that cluster's CA bundle only. The bundles trusted are
//! the local cluster's CA plus the bundle of every *connected* peer cluster
//! ([`AuthorizationView::connected`](crate::authz::AuthorizationView)); a certificate naming any
//! other cluster is refused during the handshake, before a single stream is opened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::sync::watch;

use crate::authz::AuthorizationView;
use crate::identity::{IdentityError, NodeIdentity};
use crate::metrics::{HandshakeRefusal, Metrics};

/// The ALPN protocol both sides must agree on; anything else is not our tunnel.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors loading credentials or building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (expected one or more `BEGIN CERTIFICATE` blocks)")]
    NoCertificate { path: PathBuf },
    #[error("{path} does not hold a PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate in {path} carries no usable node identity: {source}")]
    Identity {
        path: PathBuf,
        source: IdentityError,
    },
    #[error(
        "the certificate in {path} is for {found}, but this node is configured as {expected}; issue a certificate for this node"
    )]
    WrongIdentity {
        path: PathBuf,
        // Boxed: identities are large and this error is rare.
        found: Box<NodeIdentity>,
        expected: Box<NodeIdentity>,
    },
    #[error(
        "the certificate in {cert} does not verify against the cluster CA in {ca} (wrong CA, expired or not yet valid?): {reason}"
    )]
    Untrusted {
        cert: PathBuf,
        ca: PathBuf,
        reason: rustls::Error,
    },
    #[error("the CA bundle of cluster {cluster} cannot be used: {reason}")]
    BadBundle { cluster: String, reason: String },
    #[error("rustls refused the configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Why the certificate of a peer was refused during the handshake. Carried inside the rustls
/// error so that the accept and dial paths can count it with its own reason.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("peer certificate has no node identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("peer {0} belongs to trust domain {1}, not ours")]
    WrongTrustDomain(NodeIdentity, String),
    #[error(
        "peer {0} belongs to cluster {cluster}, which is not connected (or unknown) here",
        cluster = .0.cluster
    )]
    ClusterNotConnected(NodeIdentity),
    #[error(
        "peer {peer} is not signed by the CA of cluster {cluster} (unknown CA or forged identity): {reason}",
        cluster = .peer.cluster
    )]
    UnknownCa {
        peer: NodeIdentity,
        reason: rustls::Error,
    },
    #[error("peer {peer} certificate is invalid: {reason}")]
    InvalidCertificate {
        peer: NodeIdentity,
        reason: rustls::Error,
    },
}

impl TrustError {
    pub fn refusal(&self) -> HandshakeRefusal {
        match self {
            TrustError::Identity(_) | TrustError::WrongTrustDomain(..) => {
                HandshakeRefusal::BadIdentity
            }
            TrustError::ClusterNotConnected(_) => HandshakeRefusal::ClusterNotConnected,
            TrustError::UnknownCa { .. } => HandshakeRefusal::UnknownCa,
            TrustError::InvalidCertificate { .. } => HandshakeRefusal::InvalidCertificate,
        }
    }
}

/// Classifies a failed TLS handshake for the `handshake_refused` counter.
pub fn classify_handshake_error(error: &std::io::Error) -> (HandshakeRefusal, String) {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) => {
            match inner.downcast_ref::<TrustError>() {
                Some(trust) => (trust.refusal(), trust.to_string()),
                None => (HandshakeRefusal::InvalidCertificate, inner.to_string()),
            }
        }
        Some(rustls::Error::InvalidCertificate(e)) => {
            (HandshakeRefusal::InvalidCertificate, e.to_string())
        }
        Some(rustls::Error::NoCertificatesPresented) => (
            HandshakeRefusal::NoCertificate,
            "peer presented no certificate".to_owned(),
        ),
        // A TLS alert from the other side: it refused *our* certificate.
        Some(rustls::Error::AlertReceived(alert)) => (
            HandshakeRefusal::RefusedByPeer,
            format!("the peer refused our certificate ({alert:?}); does it trust our cluster?"),
        ),
        Some(other) => (HandshakeRefusal::Protocol, other.to_string()),
        None => (HandshakeRefusal::Protocol, error.to_string()),
    }
}

/// The PEM certificates of one cluster's CA, as the agent reads them from the peer config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustBundle {
    pub certs: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadBundle {
                cluster: "?".to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self { certs })
    }

    pub fn from_pem_file(path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bundle = Self::from_pem(&pem)?;
        if bundle.certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: path.to_owned(),
            });
        }
        Ok(bundle)
    }

    fn root_store(&self, cluster: &str) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in &self.certs {
            roots.add(cert.clone()).map_err(|e| TlsError::BadBundle {
                cluster: cluster.to_owned(),
                reason: e.to_string(),
            })?;
        }
        Ok(Arc::new(roots))
    }
}

/// Where this node's certificate, key and cluster CA are on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CredentialPaths {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM bundle of this node's own cluster CA.
    pub ca: PathBuf,
}

/// The contents of the three files, compared to notice a change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CredentialFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl CredentialFiles {
    fn read(paths: &CredentialPaths) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Self {
            cert: read(&paths.cert)?,
            key: read(&paths.key)?,
            ca: read(&paths.ca)?,
        })
    }
}

/// A validated certificate chain and key of this node, and its cluster's CA.
#[derive(Debug)]
pub struct NodeCredentials {
    pub identity: NodeIdentity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    own_ca: TrustBundle,
}

impl Clone for NodeCredentials {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            own_ca: self.own_ca.clone(),
        }
    }
}

impl NodeCredentials {
    /// Loads and validates: the key matches the certificate, the certificate names `expected`
    /// and verifies against the CA file now (so an expired or not-yet-valid certificate is
    /// refused here, not by every peer).
    pub fn load(paths: &CredentialPaths, expected: &NodeIdentity) -> Result<Self, TlsError> {
        Self::from_files(paths, &CredentialFiles::read(paths)?, expected)
    }

    fn from_files(
        paths: &CredentialPaths,
        files: &CredentialFiles,
        expected: &NodeIdentity,
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&files.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TlsError::NoCertificate {
                path: paths.cert.clone(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificate {
                path: paths.cert.clone(),
            });
        };
        let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| TlsError::BadKey {
            path: paths.key.clone(),
            reason: e.to_string(),
        })?;
        let own_ca = TrustBundle::from_pem(&files.ca).map_err(|_| TlsError::NoCertificate {
            path: paths.ca.clone(),
        })?;
        if own_ca.certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: paths.ca.clone(),
            });
        }
        let identity =
            NodeIdentity::from_certificate(leaf).map_err(|source| TlsError::Identity {
                path: paths.cert.clone(),
                source,
            })?;
        if &identity != expected {
            return Err(TlsError::WrongIdentity {
                path: paths.cert.clone(),
                found: Box::new(identity),
                expected: Box::new(expected.clone()),
            });
        }
        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| TlsError::BadKey {
                path: paths.key.clone(),
                reason: e.to_string(),
            })?;
        rustls::sign::CertifiedKey::new(chain.clone(), signing_key)
            .keys_match()
            .map_err(|_| TlsError::KeyMismatch {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
            })?;
        let roots = own_ca.root_store(&identity.cluster)?;
        let parsed = ParsedCertificate::try_from(leaf).map_err(|reason| TlsError::Untrusted {
            cert: paths.cert.clone(),
            ca: paths.ca.clone(),
            reason,
        })?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|reason| TlsError::Untrusted {
            cert: paths.cert.clone(),
            ca: paths.ca.clone(),
            reason,
        })?;
        Ok(Self {
            identity,
            chain,
            key,
            own_ca,
        })
    }
}

/// The crypto provider, chosen explicitly so that another crate enabling a second provider in
/// the build does not make rustls guess.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    // TLS 1.3 only, AES-128-GCM first (as Go's TLS stack orders them on machines with AES
    // instructions): the tunnel's throughput is bound by its encryption, and AES-128 has 10
    // rounds to AES-256's 14. ChaCha20-Poly1305 stays for peers without AES instructions.
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    })
}

/// What a peer certificate is verified against: one root store per trusted cluster.
#[derive(Debug)]
struct PeerVerifier {
    trust_domain: String,
    clusters: BTreeMap<String, ClusterTrust>,
    algorithms: WebPkiSupportedAlgorithms,
}

#[derive(Debug)]
struct ClusterTrust {
    roots: Arc<RootCertStore>,
    client: Arc<dyn ClientCertVerifier>,
}

impl PeerVerifier {
    fn new(
        credentials: &NodeCredentials,
        connected: &BTreeMap<String, TrustBundle>,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let mut clusters = BTreeMap::new();
        let local = std::iter::once((&credentials.identity.cluster, &credentials.own_ca));
        for (cluster, bundle) in local.chain(connected.iter()) {
            if clusters.contains_key(cluster) {
                // The local cluster's own CA file wins over whatever the peer view says.
                continue;
            }
            let roots = bundle.root_store(cluster)?;
            let client =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| TlsError::BadBundle {
                        cluster: cluster.clone(),
                        reason: e.to_string(),
                    })?;
            clusters.insert(cluster.clone(), ClusterTrust { roots, client });
        }
        Ok(Self {
            trust_domain: credentials.identity.trust_domain.clone(),
            clusters,
            algorithms: provider.signature_verification_algorithms,
        })
    }

    /// The identity the certificate claims, and the trust of the cluster it claims.
    #[expect(
        clippy::result_large_err,
        reason = "called once per handshake; the error is wrapped into rustls' error at once"
    )]
    fn claimed(
        &self,
        end_entity: &CertificateDer<'_>,
    ) -> Result<(NodeIdentity, &ClusterTrust), TrustError> {
        let peer = NodeIdentity::from_certificate(end_entity)?;
        if peer.trust_domain != self.trust_domain {
            return Err(TrustError::WrongTrustDomain(
                peer,
                self.trust_domain.clone(),
            ));
        }
        match self.clusters.get(&peer.cluster) {
            Some(trust) => Ok((peer, trust)),
            None => Err(TrustError::ClusterNotConnected(peer)),
        }
    }
}

fn chain_error(peer: NodeIdentity, reason: rustls::Error) -> rustls::Error {
    let trust = match &reason {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => TrustError::UnknownCa { peer, reason },
        _ => TrustError::InvalidCertificate { peer, reason },
    };
    trust_to_rustls(trust)
}

fn trust_to_rustls(error: TrustError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a node has exactly one certificate, and listing every trusted CA would
        // tell any scanner which clusters are connected.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let (peer, trust) = self.claimed(end_entity).map_err(trust_to_rustls)?;
        trust
            .client
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|reason| chain_error(peer, reason))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The server name is not checked here: the dialer checks that the verified identity is
        // the node it meant to reach (`pool::expect_identity`), by SPIFFE URI, not DNS name.
        let (peer, trust) = self.claimed(end_entity).map_err(trust_to_rustls)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &trust.roots,
            intermediates,
            now,
            self.algorithms.all,
        )
        .map_err(|reason| chain_error(peer, reason))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The configurations in use: new connections take the current ones, established connections
/// keep the session they were made with (so rotating a certificate drops nothing).
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    pub identity: NodeIdentity,
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl TlsConfigs {
    pub fn build(
        credentials: &NodeCredentials,
        connected: &BTreeMap<String, TrustBundle>,
    ) -> Result<Self, TlsError> {
        let verifier = Arc::new(PeerVerifier::new(credentials, connected)?);
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(credentials.chain.clone(), credentials.key.clone_key())?;
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(credentials.chain.clone(), credentials.key.clone_key())?;
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Self {
            identity: credentials.identity.clone(),
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Loads the credentials once (failing with the file at fault), then keeps re-reading them every
/// `interval` and follows the connected clusters of `authz`, publishing new configurations.
/// A changed certificate that does not validate is logged and counted, and the old one stays in
/// use until a valid one appears.
pub(crate) fn start_reloader(
    paths: CredentialPaths,
    expected: NodeIdentity,
    mut authz: watch::Receiver<AuthorizationView>,
    interval: Duration,
    metrics: Arc<Metrics>,
) -> Result<watch::Receiver<Arc<TlsConfigs>>, TlsError> {
    let mut accepted_files = CredentialFiles::read(&paths)?;
    let mut credentials = NodeCredentials::from_files(&paths, &accepted_files, &expected)?;
    let mut connected = authz.borrow_and_update().connected.clone();
    let configs = TlsConfigs::build(&credentials, &connected)?;
    let (tx, rx) = watch::channel(Arc::new(configs));
    tokio::spawn(async move {
        let mut last_rejected: Option<CredentialFiles> = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = authz.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
            let mut rebuild = false;
            match CredentialFiles::read(&paths) {
                Ok(files) if files == accepted_files => {}
                Ok(files) => match NodeCredentials::from_files(&paths, &files, &expected) {
                    Ok(new) => {
                        tracing::info!(cert = %paths.cert.display(), "node certificate reloaded");
                        metrics.cert_reloads.inc();
                        credentials = new;
                        accepted_files = files;
                        last_rejected = None;
                        rebuild = true;
                    }
                    Err(error) => {
                        // Files are often written one at a time: this is retried every tick,
                        // and reported once per distinct content.
                        if last_rejected.as_ref() != Some(&files) {
                            tracing::warn!(%error, "new node certificate refused; still serving the previous one");
                            metrics.cert_reload_failures.inc();
                            last_rejected = Some(files);
                        }
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot re-read node credentials; still serving the previous ones");
                }
            }
            let now_connected = authz.borrow_and_update().connected.clone();
            if now_connected != connected {
                connected = now_connected;
                rebuild = true;
            }
            if rebuild {
                match TlsConfigs::build(&credentials, &connected) {
                    Ok(configs) => {
                        tx.send_replace(Arc::new(configs));
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot build TLS configuration; keeping the previous one");
                        metrics.cert_reload_failures.inc();
                    }
                }
            }
        }
    });
    Ok(rx)
}
