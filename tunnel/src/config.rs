//! The tunnel's settings, read once by the agent and passed to `Tunnel::start`.

use std::time::Duration;

use crate::identity::NodeIdentity;
use crate::tls::CredentialPaths;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("tunnel setting `{0}` must be set")]
    Missing(&'static str),
    #[error("tunnel setting `{name}` is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Everything the tunnel needs besides its listeners and the agent's live views.
/// Durations are in milliseconds so the JSON/YAML form stays plain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// SPIFFE trust domain shared by the mesh, e.g. `clustermesh.local`.
    pub trust_domain: String,
    /// This node's cluster name, as in its certificate.
    pub cluster: String,
    /// This node's name, as in its certificate.
    pub node: String,
    /// The node certificate, its key and the cluster's CA bundle (re-read when they change).
    pub credentials: CredentialPaths,
    #[serde(default = "defaults::cert_reload_interval_ms")]
    pub cert_reload_interval_ms: u64,
    /// TCP connect to a peer node or to a local backend.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// TLS and HTTP/2 handshakes with a peer node.
    #[serde(default = "defaults::handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// A stream with no bytes in either direction for this long is closed.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// HTTP/2 PING interval on peer connections; a missed answer closes the connection so its
    /// streams fail fast and the next stream re-dials.
    #[serde(default = "defaults::keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
    /// First and longest wait before re-dialing a peer that failed (exponential, with jitter).
    #[serde(default = "defaults::dial_backoff_min_ms")]
    pub dial_backoff_min_ms: u64,
    #[serde(default = "defaults::dial_backoff_max_ms")]
    pub dial_backoff_max_ms: u64,
    /// Streams a peer may have open on one connection; more wait for a free slot.
    #[serde(default = "defaults::max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 flow-control windows: they bound how much is buffered per stream and per
    /// connection (the backpressure), and a window below the bandwidth-delay product limits
    /// throughput.
    #[serde(default = "defaults::stream_window")]
    pub stream_window: u32,
    #[serde(default = "defaults::connection_window")]
    pub connection_window: u32,
    /// TLS connections to each peer node; new streams take them in turn. One connection is
    /// encrypted by one task at a time, so more than one lets a node's streams use more cores.
    #[serde(default = "defaults::connections_per_peer")]
    pub connections_per_peer: u32,
}

pub mod defaults {
    pub fn cert_reload_interval_ms() -> u64 {
        5_000
    }
    pub fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub fn handshake_timeout_ms() -> u64 {
        5_000
    }
    pub fn idle_timeout_ms() -> u64 {
        3_600_000
    }
    pub fn keepalive_interval_ms() -> u64 {
        10_000
    }
    pub fn dial_backoff_min_ms() -> u64 {
        100
    }
    pub fn dial_backoff_max_ms() -> u64 {
        10_000
    }
    pub fn max_concurrent_streams() -> u32 {
        16_384
    }
    pub fn stream_window() -> u32 {
        1 << 20
    }
    pub fn connection_window() -> u32 {
        16 << 20
    }
    pub fn connections_per_peer() -> u32 {
        2
    }
}

impl TunnelConfig {
    /// A configuration with every default, for the given node.
    pub fn new(
        trust_domain: &str,
        cluster: &str,
        node: &str,
        credentials: CredentialPaths,
    ) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            credentials,
            cert_reload_interval_ms: defaults::cert_reload_interval_ms(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            handshake_timeout_ms: defaults::handshake_timeout_ms(),
            idle_timeout_ms: defaults::idle_timeout_ms(),
            keepalive_interval_ms: defaults::keepalive_interval_ms(),
            dial_backoff_min_ms: defaults::dial_backoff_min_ms(),
            dial_backoff_max_ms: defaults::dial_backoff_max_ms(),
            max_concurrent_streams: defaults::max_concurrent_streams(),
            stream_window: defaults::stream_window(),
            connection_window: defaults::connection_window(),
            connections_per_peer: defaults::connections_per_peer(),
        }
    }

    pub fn identity(&self) -> NodeIdentity {
        NodeIdentity::new(&self.trust_domain, &self.cluster, &self.node)
    }

    /// Fails with the name of the first bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("trust_domain", &self.trust_domain),
            ("cluster", &self.cluster),
            ("node", &self.node),
        ] {
            if value.is_empty() {
                return Err(ConfigError::Missing(name));
            }
        }
        NodeIdentity::parse(&self.identity().uri()).map_err(|e| ConfigError::Invalid {
            name: "trust_domain/cluster/node",
            reason: e.to_string(),
        })?;
        for (name, value) in [
            ("cert_reload_interval_ms", self.cert_reload_interval_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("dial_backoff_min_ms", self.dial_backoff_min_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be greater than 0".to_owned(),
                });
            }
        }
        if self.dial_backoff_max_ms < self.dial_backoff_min_ms {
            return Err(ConfigError::Invalid {
                name: "dial_backoff_max_ms",
                reason: "must not be below dial_backoff_min_ms".to_owned(),
            });
        }
        // HTTP/2 bounds (RFC 9113 §6.5.2): windows from 65,535 to 2^31-1.
        for (name, value) in [
            ("stream_window", self.stream_window),
            ("connection_window", self.connection_window),
        ] {
            if !(65_535..=i32::MAX as u32).contains(&value) {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be between 65535 and 2147483647".to_owned(),
                });
            }
        }
        if !(1..=16).contains(&self.connections_per_peer) {
            return Err(ConfigError::Invalid {
                name: "connections_per_peer",
                reason: "must be between 1 and 16".to_owned(),
            });
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::Invalid {
                name: "max_concurrent_streams",
                reason: "must be greater than 0".to_owned(),
            });
        }
        Ok(())
    }

    pub(crate) fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TunnelConfig {
        TunnelConfig::new(
            "clustermesh.local",
            "east",
            "node-1",
            CredentialPaths {
                cert: "tls.crt".into(),
                key: "tls.key".into(),
                ca: "ca.crt".into(),
            },
        )
    }

    #[test]
    fn the_defaults_are_valid_and_a_bad_setting_is_named() {
        assert!(config().validate().is_ok());
        for (lanes, ok) in [(0, false), (1, true), (16, true), (17, false)] {
            let mut c = config();
            c.connections_per_peer = lanes;
            match c.validate() {
                Ok(()) => assert!(ok, "{lanes} accepted"),
                Err(ConfigError::Invalid { name, .. }) => {
                    assert!(!ok, "{lanes} refused");
                    assert_eq!(name, "connections_per_peer");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}
