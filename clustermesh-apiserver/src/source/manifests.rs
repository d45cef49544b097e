//! The `manifests` source. Being built.

use super::ViewSender;

#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {}

pub struct ManifestsSource;

impl ManifestsSource {
    pub async fn run(self, _views: ViewSender) -> Result<(), ManifestsError> {
        std::future::pending().await
    }
}
