//! The `kubernetes` source: kube-rs watchers. Being built; see ARCHITECTURE.md.

use super::ViewSender;

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("the kubernetes source is not built yet; use --source manifests")]
    NotBuilt,
}

pub struct KubernetesSource;

impl KubernetesSource {
    pub async fn run(self, _views: ViewSender) -> Result<(), KubernetesError> {
        Err(KubernetesError::NotBuilt)
    }
}
