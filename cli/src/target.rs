//! What `--context` names: a kubeconfig context, or `lab:<cluster>` for a cluster of a lab on
//! this machine (`clustermesh lab up`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use clustermesh_lab::Lab;
use clustermesh_lab::lab::default_state_dir;

use crate::kube_target::KubeTarget;

/// Where the targets are found.
#[derive(Debug, Clone, Args)]
pub struct TargetOptions {
    /// The kubeconfig to read contexts from [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// For lab:<cluster> contexts: the lab's name (see `clustermesh lab up --name`).
    #[arg(
        long = "lab",
        global = true,
        env = "CLUSTERMESH_LAB",
        default_value = "lab"
    )]
    pub lab_name: String,
    /// For lab:<cluster> contexts: the lab's state directory [default: /run/clustermesh-lab/<lab>].
    #[arg(long, env = "CLUSTERMESH_LAB_STATE_DIR")]
    pub lab_state_dir: Option<PathBuf>,
}

/// A parsed `--context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextName {
    Kube(Option<String>),
    Lab(String),
}

impl ContextName {
    pub fn parse(text: Option<&str>) -> ContextName {
        match text {
            Some(text) => match text.strip_prefix("lab:") {
                Some(cluster) => ContextName::Lab(cluster.to_string()),
                None => ContextName::Kube(Some(text.to_string())),
            },
            None => ContextName::Kube(None),
        }
    }
}

impl std::fmt::Display for ContextName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContextName::Kube(Some(c)) => write!(f, "{c}"),
            ContextName::Kube(None) => write!(f, "the current context"),
            ContextName::Lab(c) => write!(f, "lab:{c}"),
        }
    }
}

impl TargetOptions {
    pub fn lab_state_dir(&self) -> PathBuf {
        self.lab_state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&self.lab_name))
    }

    /// Opens the lab, with a sentence that says what to do when there is none.
    pub fn open_lab(&self) -> Result<Lab> {
        let dir = self.lab_state_dir();
        if !dir.join("lab.json").exists() {
            anyhow::bail!(
                "there is no lab {:?} on this machine (no {}); start one with `sudo clustermesh lab up`, or pass --lab / --lab-state-dir",
                self.lab_name,
                dir.join("lab.json").display()
            );
        }
        clustermesh_lab::host::require_root()?;
        Ok(Lab::open(&dir)?)
    }

    /// Checks that `cluster` is a cluster of the lab.
    pub fn lab_cluster<'a>(&self, lab: &'a Lab, cluster: &str) -> Result<&'a str> {
        match lab.state().cluster(cluster) {
            Some(c) => Ok(c.name.as_str()),
            None => anyhow::bail!(
                "the lab {:?} has no cluster {cluster:?} (its clusters: {}); use one of them as lab:<cluster>",
                self.lab_name,
                lab.state()
                    .clusters
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    pub async fn kube(&self, context: Option<&str>) -> Result<KubeTarget> {
        let target = KubeTarget::connect(self.kubeconfig.as_ref(), context).await?;
        target.check_reachable().await?;
        Ok(target)
    }
}
