//! The etcd users of a cluster. With mTLS, etcd takes the user from the client certificate's
//! common name, so these names are what certificates are issued for (CLI, lab, the apiserver's
//! agent certificate issuer) and what the apiserver gives roles to (`security.rs` in the
//! apiserver has the table of who may do what).

/// etcd's break-glass user (root role); not used by our processes, only by operators' tools.
pub const ROOT_USER: &str = "root";
/// The apiserver: publishes, mirrors and manages users (root role).
pub const APISERVER_USER: &str = "clustermesh-apiserver";
/// What peers mirror a cluster as: read-only, published state only.
pub const REMOTE_USER: &str = "remote";

/// The user of the agent on `node`: it may write only its own liveness record.
pub fn agent_user(node: &str) -> String {
    format!("agent-{node}")
}
