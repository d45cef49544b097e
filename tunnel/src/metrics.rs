//! Prometheus metrics of the tunnel: one counter per reason for every refusal an operator would
//! alert on, plus streams, bytes and peer dials.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a TLS handshake with a peer failed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum HandshakeRefusal {
    /// The certificate names a cluster that is not connected (or unknown).
    ClusterNotConnected,
    /// The certificate names a connected cluster but is not signed by that cluster's CA.
    UnknownCa,
    /// Expired, not yet valid, wrong key usage, ...
    InvalidCertificate,
    /// No SPIFFE identity, or one from another trust domain.
    BadIdentity,
    NoCertificate,
    /// The dialed node proved to be another node than the routing table said.
    UnexpectedPeer,
    /// The other side refused our certificate.
    RefusedByPeer,
    Timeout,
    /// Not TLS 1.3 with ALPN h2, or a broken connection.
    Protocol,
}

/// Why the receiving side refused a CONNECT stream.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum InboundRefusal {
    /// Not a CONNECT request, a bad authority or missing headers.
    BadRequest,
    /// The source-cluster header disagrees with the certificate.
    ClusterMismatch,
    ClusterNotConnected,
    NotSharedBackend,
    PolicyDenied,
    /// The backend did not accept the connection in time.
    BackendUnreachable,
    Draining,
}

/// Why the sending side closed a local connection instead of tunneling it.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum OutboundRefusal {
    /// The connection's local address is no mesh VIP in the routing table.
    UnknownVip,
    /// No connection to the peer node could be made (or it is in dial backoff).
    PeerUnavailable,
    /// The peer answered the CONNECT with a refusal.
    RefusedByPeer,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub side: Side,
    pub reason: HandshakeRefusal,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Side {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundLabels {
    pub reason: InboundRefusal,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    pub reason: OutboundRefusal,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Side,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DialLabels {
    pub result: DialResult,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DialResult {
    Connected,
    Failed,
}

/// Every metric of the tunnel. Construct once with [`Metrics::new`] and pass to `Tunnel::start`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub handshakes_refused: Family<HandshakeLabels, Counter>,
    pub inbound_refused: Family<InboundLabels, Counter>,
    pub outbound_refused: Family<OutboundLabels, Counter>,
    pub streams_opened: Family<DirectionLabels, Counter>,
    pub streams_active: Family<DirectionLabels, Gauge>,
    /// Streams that ended with an error (reset, idle timeout, backend or client failure).
    pub streams_failed: Family<DirectionLabels, Counter>,
    pub bytes_sent: Family<DirectionLabels, Counter>,
    pub peer_dials: Family<DialLabels, Counter>,
    pub cert_reloads: Counter,
    pub cert_reload_failures: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("clustermesh_tunnel");
        registry.register(
            "handshakes_refused",
            "TLS handshakes with peers that failed, by side and reason",
            metrics.handshakes_refused.clone(),
        );
        registry.register(
            "inbound_refused",
            "CONNECT streams refused by this node, by reason",
            metrics.inbound_refused.clone(),
        );
        registry.register(
            "outbound_refused",
            "local connections to mesh VIPs that were closed instead of tunneled, by reason",
            metrics.outbound_refused.clone(),
        );
        registry.register(
            "streams_opened",
            "tunnel streams established",
            metrics.streams_opened.clone(),
        );
        registry.register(
            "streams_active",
            "tunnel streams open now",
            metrics.streams_active.clone(),
        );
        registry.register(
            "streams_failed",
            "tunnel streams that ended with an error",
            metrics.streams_failed.clone(),
        );
        registry.register(
            "bytes_sent",
            "bytes carried into the tunnel (outbound) or out of it to backends (inbound)",
            metrics.bytes_sent.clone(),
        );
        registry.register(
            "peer_dials",
            "connections dialed to peer nodes, by result",
            metrics.peer_dials.clone(),
        );
        registry.register(
            "cert_reloads",
            "node certificates reloaded from disk",
            metrics.cert_reloads.clone(),
        );
        registry.register(
            "cert_reload_failures",
            "changed node certificates that were refused (the previous one stays in use)",
            metrics.cert_reload_failures.clone(),
        );
        metrics
    }

    pub fn handshake_refused(&self, side: Side, reason: HandshakeRefusal) -> u64 {
        self.handshakes_refused
            .get_or_create(&HandshakeLabels { side, reason })
            .get()
    }

    pub fn inbound_refused(&self, reason: InboundRefusal) -> u64 {
        self.inbound_refused
            .get_or_create(&InboundLabels { reason })
            .get()
    }

    pub fn outbound_refused(&self, reason: OutboundRefusal) -> u64 {
        self.outbound_refused
            .get_or_create(&OutboundLabels { reason })
            .get()
    }

    pub fn streams_opened(&self, direction: Side) -> u64 {
        self.streams_opened
            .get_or_create(&DirectionLabels { direction })
            .get()
    }

    pub fn streams_active(&self, direction: Side) -> i64 {
        self.streams_active
            .get_or_create(&DirectionLabels { direction })
            .get()
    }
}
