//! etcd users, roles and authentication. With mTLS, etcd takes the user name from the client
//! certificate's common name (CN), so every certificate maps to exactly one of these users:
//!
//! | CN                       | role                      | may                                                    |
//! |--------------------------|---------------------------|--------------------------------------------------------|
//! | `root`                   | `root`                    | everything (break-glass; not used by our processes)    |
//! | `clustermesh-apiserver`  | `root`                    | everything: publish, mirror, manage users              |
//! | `remote`                 | `clustermesh-remote`      | read `state/`, `cluster-config/<self>`, `synced/<self>/`, `.heartbeat` — never `local/`, `cache/` or `allocations/` |
//! | `agent-<node>`           | `clustermesh-agent-<node>`| read everything under the root prefix; write only `state/agents/v1/<self>/<node>` |
//!
//! Peers get a `remote` certificate from this cluster's CA; each node agent gets its own
//! `agent-<node>` certificate. Users and roles are created if missing, then authentication is
//! enabled. Everything here is idempotent: running it on every start changes nothing twice.

use std::collections::BTreeSet;

use clustermesh_model::{ExpectedCluster, KeySchema, ObjectName};
use clustermesh_store::Client;
use etcd_client::{Permission, UserAddOptions};
use tracing::info;

pub use clustermesh_model::etcd_users::{APISERVER_USER, REMOTE_USER, agent_user};

pub const REMOTE_ROLE: &str = "clustermesh-remote";

fn agent_role(node: &str) -> String {
    format!("clustermesh-agent-{node}")
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot set up etcd {what}: {source}; does this apiserver's certificate have CN {APISERVER_USER} (or root)?"
)]
pub struct SecurityError {
    what: String,
    source: etcd_client::Error,
}

fn step(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> SecurityError {
    let what = what.into();
    move |source| SecurityError { what, source }
}

/// Creates what is missing of the users and roles above, then enables authentication.
pub struct EtcdSecurity {
    client: Client,
    schema: KeySchema,
    cluster: ExpectedCluster,
    /// Nodes whose agent user exists.
    agents: BTreeSet<String>,
}

impl EtcdSecurity {
    pub async fn setup(
        client: Client,
        schema: KeySchema,
        cluster: ExpectedCluster,
    ) -> Result<EtcdSecurity, SecurityError> {
        let mut security = EtcdSecurity {
            client,
            schema,
            cluster,
            agents: BTreeSet::new(),
        };
        security.ensure_user("root", "root").await?;
        security.ensure_user(APISERVER_USER, "root").await?;

        let root = security.schema.root().to_owned();
        let name = security.cluster.name.clone();
        let remote = [
            Permission::read(format!("{root}/state/")).with_prefix(),
            Permission::read(security.schema.cluster_config(&name)),
            Permission::read(format!("{root}/synced/{name}/")).with_prefix(),
            Permission::read(security.schema.heartbeat()),
        ];
        security.ensure_role(REMOTE_ROLE, &remote).await?;
        security.ensure_user(REMOTE_USER, REMOTE_ROLE).await?;

        security
            .client
            .auth_enable()
            .await
            .map_err(step("authentication"))?;
        info!(
            "etcd authentication enabled; peers read with CN={REMOTE_USER}, agents with CN=agent-<node>"
        );
        Ok(security)
    }

    /// Makes sure every node's agent has its user (new nodes join without a restart).
    pub async fn ensure_agents(&mut self, nodes: &BTreeSet<String>) -> Result<(), SecurityError> {
        for node in nodes.difference(&self.agents.clone()) {
            let own_record = self
                .schema
                .state(&self.cluster.name, &ObjectName::Agent(node.clone()));
            let permissions = [
                Permission::read(format!("{}/", self.schema.root())).with_prefix(),
                Permission::read_write(own_record),
            ];
            let role = agent_role(node);
            self.ensure_role(&role, &permissions).await?;
            self.ensure_user(&agent_user(node), &role).await?;
            self.agents.insert(node.clone());
        }
        Ok(())
    }

    async fn ensure_role(
        &mut self,
        role: &str,
        permissions: &[Permission],
    ) -> Result<(), SecurityError> {
        let existing = self.client.role_list().await.map_err(step("roles"))?;
        if !existing.roles().iter().any(|r| r == role) {
            self.client
                .role_add(role)
                .await
                .map_err(step(format!("role {role}")))?;
        }
        for permission in permissions {
            self.client
                .role_grant_permission(role, permission.clone())
                .await
                .map_err(step(format!("permissions of role {role}")))?;
        }
        Ok(())
    }

    async fn ensure_user(&mut self, user: &str, role: &str) -> Result<(), SecurityError> {
        let existing = self.client.user_list().await.map_err(step("users"))?;
        if !existing.users().iter().any(|u| u == user) {
            // No password: these users authenticate with their certificate's CN only.
            self.client
                .user_add(user, "", Some(UserAddOptions::new().with_no_pwd()))
                .await
                .map_err(step(format!("user {user}")))?;
        }
        self.client
            .user_grant_role(user, role)
            .await
            .map_err(step(format!("role {role} for user {user}")))?;
        Ok(())
    }
}
