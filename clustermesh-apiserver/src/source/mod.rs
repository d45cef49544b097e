//! Where the apiserver learns its own cluster's objects. Two sources, one output: a complete,
//! consistent view of the Kubernetes objects we publish from, in k8s-openapi types, so that the
//! code from here on does not know which source is running.
//!
//! - `manifests`: a directory of ordinary Kubernetes YAML, watched for changes (the lab, tests,
//!   machines without Kubernetes).
//! - `kubernetes`: kube-rs watchers against a real API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;

pub mod kubernetes;
pub mod manifests;

/// A namespaced object's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// Everything the apiserver publishes from, as the cluster reports it right now.
///
/// Objects are shared (`Arc`) between the source's own state and the views it publishes, so a
/// new view after one change costs a map of pointers, not a copy of every object: with 100k
/// pods a deep copy per change was the apiserver's largest cost in time and memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterObjects {
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub pods: BTreeMap<ObjectKey, Arc<Pod>>,
    pub nodes: BTreeMap<String, Arc<Node>>,
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
}

/// Views are published on a watch channel: `None` until the first full sync of every kind is
/// in, then `Some(view)` again after every change. Consumers coalesce bursts themselves.
pub type ViewSender = watch::Sender<Option<Arc<ClusterObjects>>>;
pub type ViewReceiver = watch::Receiver<Option<Arc<ClusterObjects>>>;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Manifests(#[from] manifests::ManifestsError),
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::KubernetesError),
}

/// The configured source.
pub enum ClusterSource {
    Manifests(manifests::ManifestsSource),
    Kubernetes(kubernetes::KubernetesSource),
}

impl ClusterSource {
    /// Runs until the task is dropped, publishing views on `views`.
    pub async fn run(self, views: ViewSender) -> Result<(), SourceError> {
        match self {
            ClusterSource::Manifests(s) => Ok(s.run(views).await?),
            ClusterSource::Kubernetes(s) => Ok(s.run(views).await?),
        }
    }
}
