//! The receiving side's decision, without I/O: may this peer open a stream to this target?
//!
//! A stream is accepted only if the peer's cluster (from its verified certificate) is
//! connected, the request's source cluster is that same cluster, the target is a backend of a
//! global service this cluster shares, and the policy hook agrees. The tunnel must never be an
//! open proxy: anything not positively allowed is refused.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::framing::ConnectRequest;
use crate::identity::NodeIdentity;
use crate::metrics::InboundRefusal;
use crate::tls::TrustBundle;

/// What the agent knows about the mesh, as far as the tunnel is concerned. Published by the
/// agent on a `watch` channel; every change takes effect for the next handshake or stream.
#[derive(Debug, Clone, Default)]
pub struct AuthorizationView {
    /// Connected peer clusters and the CA bundle each one is trusted with. A cluster absent
    /// here can neither complete a handshake nor open a stream on an established connection.
    /// The local cluster is always trusted with its own CA file and need not be listed.
    pub connected: BTreeMap<String, TrustBundle>,
    /// Addresses of the backends of the global services this cluster shares.
    pub shared_backends: HashSet<SocketAddr>,
}

/// A later policy (by identity, namespace, ...) may refuse what the view allows.
pub trait PolicyHook: Send + Sync + 'static {
    fn allows(&self, peer: &NodeIdentity, request: &ConnectRequest) -> bool;
}

/// The policy until one is configured: the view's checks are the whole decision.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl PolicyHook for AllowAll {
    fn allows(&self, _: &NodeIdentity, _: &ConnectRequest) -> bool {
        true
    }
}

/// Why a stream was refused, with the detail a log line needs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    #[error("peer {peer} sent source cluster {claimed}; a node may only speak for its own cluster")]
    ClusterMismatch { peer: NodeIdentity, claimed: String },
    #[error("cluster {0} is not connected")]
    ClusterNotConnected(String),
    #[error("{0} is not a backend of a global service this cluster shares")]
    NotSharedBackend(SocketAddr),
    #[error("the policy refuses {peer} to {target}")]
    PolicyDenied {
        peer: NodeIdentity,
        target: SocketAddr,
    },
}

impl AuthzError {
    pub fn refusal(&self) -> InboundRefusal {
        match self {
            AuthzError::ClusterMismatch { .. } => InboundRefusal::ClusterMismatch,
            AuthzError::ClusterNotConnected(_) => InboundRefusal::ClusterNotConnected,
            AuthzError::NotSharedBackend(_) => InboundRefusal::NotSharedBackend,
            AuthzError::PolicyDenied { .. } => InboundRefusal::PolicyDenied,
        }
    }
}

/// Decides one stream. `local_cluster` is always connected (its CA is our own).
pub fn authorize(
    view: &AuthorizationView,
    local_cluster: &str,
    policy: &dyn PolicyHook,
    peer: &NodeIdentity,
    request: &ConnectRequest,
) -> Result<(), AuthzError> {
    if request.source_cluster != peer.cluster {
        return Err(AuthzError::ClusterMismatch {
            peer: peer.clone(),
            claimed: request.source_cluster.clone(),
        });
    }
    if peer.cluster != local_cluster && !view.connected.contains_key(&peer.cluster) {
        return Err(AuthzError::ClusterNotConnected(peer.cluster.clone()));
    }
    if !view.shared_backends.contains(&request.target) {
        return Err(AuthzError::NotSharedBackend(request.target));
    }
    if !policy.allows(peer, request) {
        return Err(AuthzError::PolicyDenied {
            peer: peer.clone(),
            target: request.target,
        });
    }
    Ok(())
}

/// A shared policy hook, as the tunnel holds it.
pub type SharedPolicy = Arc<dyn PolicyHook>;

#[cfg(test)]
mod tests {
    use super::*;

    struct DenyAll;
    impl PolicyHook for DenyAll {
        fn allows(&self, _: &NodeIdentity, _: &ConnectRequest) -> bool {
            false
        }
    }

    fn view() -> AuthorizationView {
        AuthorizationView {
            connected: [("east".to_owned(), TrustBundle::default())].into(),
            shared_backends: ["10.0.0.5:80".parse().unwrap()].into(),
        }
    }

    fn request(cluster: &str, target: &str) -> ConnectRequest {
        ConnectRequest {
            target: target.parse().unwrap(),
            source_cluster: cluster.into(),
            source_node: "n1".into(),
            source_identity: 7,
        }
    }

    fn peer(cluster: &str) -> NodeIdentity {
        NodeIdentity::new("mesh", cluster, "n1")
    }

    #[test]
    fn allows_a_connected_cluster_to_a_shared_backend() {
        let r = request("east", "10.0.0.5:80");
        assert_eq!(
            authorize(&view(), "west", &AllowAll, &peer("east"), &r),
            Ok(())
        );
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let v = view();
        let cases = [
            (
                peer("east"),
                request("south", "10.0.0.5:80"),
                InboundRefusal::ClusterMismatch,
            ),
            (
                peer("north"),
                request("north", "10.0.0.5:80"),
                InboundRefusal::ClusterNotConnected,
            ),
            (
                peer("east"),
                request("east", "10.0.0.5:81"),
                InboundRefusal::NotSharedBackend,
            ),
            (
                peer("east"),
                request("east", "10.0.0.6:80"),
                InboundRefusal::NotSharedBackend,
            ),
        ];
        for (p, r, reason) in cases {
            let error = authorize(&v, "west", &AllowAll, &p, &r).unwrap_err();
            assert_eq!(error.refusal(), reason, "{error}");
        }
        let error = authorize(
            &v,
            "west",
            &DenyAll,
            &peer("east"),
            &request("east", "10.0.0.5:80"),
        )
        .unwrap_err();
        assert_eq!(error.refusal(), InboundRefusal::PolicyDenied);
    }

    #[test]
    fn the_local_cluster_is_always_connected() {
        let r = request("west", "10.0.0.5:80");
        assert_eq!(
            authorize(&view(), "west", &AllowAll, &peer("west"), &r),
            Ok(())
        );
    }
}
