//! `clustermesh disable`: removes what `enable` made. Refuses while peers are connected
//! (their mirrors of this cluster would break without anyone having decided so) unless
//! `--force`, which also removes this cluster's peer entries.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use crate::manifests::{self, DEFAULT_NAMESPACE, PEERS_SECRET};
use crate::target::{ContextName, TargetOptions};

#[derive(Debug, Args)]
pub struct DisableArgs {
    #[command(flatten)]
    pub targets: crate::target::TargetOptions,
    /// The cluster: a kubeconfig context, or lab:<cluster> [default: the current context].
    #[arg(long)]
    pub context: Option<String>,
    /// Namespace the mesh runs in.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Disable even while peers are connected (their mirrors of this cluster stop; run
    /// `clustermesh disconnect` on them to clean up their side).
    #[arg(long)]
    pub force: bool,
}

pub async fn disable(options: &TargetOptions, args: &DisableArgs) -> Result<ExitCode> {
    let context = match ContextName::parse(args.context.as_deref()) {
        ContextName::Lab(cluster) => {
            return crate::lab_target::disable(options, &cluster, args.force);
        }
        ContextName::Kube(context) => context,
    };
    let target = options.kube(context.as_deref()).await?;
    let ns = &args.namespace;
    let peers = target
        .secret_data(ns, PEERS_SECRET)
        .await?
        .unwrap_or_default();
    let peers = crate::connect::has_peers(&peers);
    if !peers.is_empty() && !args.force {
        bail!(
            "context {} is still connected to {}; run `clustermesh disconnect --context {} --destination-context <its context>` for each, or pass --force",
            target.context,
            peers.join(", "),
            target.context
        );
    }
    // Which cluster name the RBAC objects carry.
    let name = target
        .get("v1", "ConfigMap", ns, manifests::CONFIG_MAP)
        .await?
        .and_then(|cm| cm["data"]["cluster-name"].as_str().map(str::to_string));
    let mut objects: Vec<(&str, &str, String)> = vec![
        ("apps/v1", "DaemonSet", manifests::AGENT.into()),
        ("apps/v1", "Deployment", manifests::APISERVER.into()),
        ("v1", "Service", manifests::ETCD_SERVICE.into()),
        // The agent certificate issuer's Service.
        ("v1", "Service", manifests::APISERVER.into()),
        ("v1", "Secret", PEERS_SECRET.into()),
        ("v1", "Secret", manifests::AGENT_SECRET.into()),
        ("v1", "Secret", manifests::APISERVER_SECRET.into()),
        ("v1", "Secret", manifests::ETCD_SERVER_SECRET.into()),
        ("v1", "Secret", manifests::CA_KEY_SECRET.into()),
        ("v1", "Secret", manifests::CA_SECRET.into()),
        ("v1", "ConfigMap", manifests::CONFIG_MAP.into()),
        ("v1", "ServiceAccount", manifests::AGENT.into()),
        ("v1", "ServiceAccount", manifests::APISERVER.into()),
    ];
    if let Some(name) = &name {
        let role = format!("clustermesh-apiserver-{name}");
        objects.push((
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            role.clone(),
        ));
        objects.push(("rbac.authorization.k8s.io/v1", "ClusterRole", role));
    }
    let mut removed = 0;
    for (api_version, kind, name) in &objects {
        if target.delete(api_version, kind, ns, name).await? {
            removed += 1;
            println!("{kind} {ns}/{name} deleted");
        }
    }
    // The namespace goes only if `enable` made it.
    if let Some(namespace) = target.get("v1", "Namespace", "", ns).await?
        && namespace["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "clustermesh-cli"
        && target.delete("v1", "Namespace", "", ns).await?
    {
        removed += 1;
        println!("Namespace {ns} deleted");
    }
    if removed == 0 {
        println!("context {}: no mesh here, nothing changed", target.context);
    } else {
        println!(
            "context {}: disabled ({removed} object(s) deleted){}",
            target.context,
            if peers.is_empty() {
                String::new()
            } else {
                format!(
                    "; the peers that mirrored it ({}) keep a stale entry until you run `clustermesh disconnect` against them",
                    peers.join(", ")
                )
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
