//! The `kubernetes` source: kube-runtime reflectors on the five kinds we publish from.
//!
//! Each kind has a watcher (list, then watch from the list's resource version, re-list on 410
//! Expired, reconnect with kube-runtime's default backoff) feeding a reflector store. The store
//! buffers a (re-)list and swaps it in at once on `InitDone`, so a re-list never shows a
//! half-filled kind and never removes an object that still exists. Views are built from the
//! five stores: none before every kind has completed its first full list, then a fresh one
//! after every change, at most one per `publish_interval` (longer when building a view of a big
//! cluster takes a while) so that bursts coalesce.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;

use super::{ClusterObjects, ObjectKey, ViewSender};

/// Publish at most one view per this interval; changes within it are coalesced.
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error(
        "cannot load the kubeconfig {}{}: {source}",
        path.display(),
        context.as_ref().map(|c| format!(" (context {c:?})")).unwrap_or_default()
    )]
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "cannot load the in-cluster Kubernetes configuration: {0}; is the apiserver running in a \
         pod with its service account token mounted? Outside a cluster, pass a kubeconfig"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("cannot build a Kubernetes client for {server}: {source}")]
    Client {
        server: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "RBAC forbids the apiserver to {verb} {kind} at the cluster scope: grant its service \
         account a ClusterRole rule with apiGroups [\"{group}\"], resources [\"{plural}\"], verbs \
         [\"list\", \"watch\"]; the API server at {server} said: {message}",
        group = kind.group(),
        plural = kind.plural()
    )]
    Forbidden {
        server: String,
        verb: &'static str,
        kind: WatchedKind,
        message: String,
    },
    #[error(
        "the API server at {server} rejected the apiserver's credentials (401 Unauthorized) on \
         {verb} {kind}: {message}; check the kubeconfig user or the service account token"
    )]
    Unauthorized {
        server: String,
        verb: &'static str,
        kind: WatchedKind,
        message: String,
    },
    #[error(
        "no first full sync from the API server at {server} within {timeout:?}: still waiting for \
         {waiting_for}; last error: {last_error}. Is the API server reachable from here?"
    )]
    InitialSyncTimeout {
        server: String,
        timeout: Duration,
        waiting_for: String,
        last_error: String,
    },
}

/// The kinds the source watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WatchedKind {
    Services,
    EndpointSlices,
    Pods,
    Nodes,
    Namespaces,
}

impl WatchedKind {
    pub const ALL: [WatchedKind; 5] = [
        WatchedKind::Services,
        WatchedKind::EndpointSlices,
        WatchedKind::Pods,
        WatchedKind::Nodes,
        WatchedKind::Namespaces,
    ];

    /// The API group, as RBAC rules name it (`""` is the core group).
    pub fn group(self) -> &'static str {
        match self {
            WatchedKind::EndpointSlices => "discovery.k8s.io",
            _ => "",
        }
    }

    /// The resource, as RBAC rules and URLs name it.
    pub fn plural(self) -> &'static str {
        match self {
            WatchedKind::Services => "services",
            WatchedKind::EndpointSlices => "endpointslices",
            WatchedKind::Pods => "pods",
            WatchedKind::Nodes => "nodes",
            WatchedKind::Namespaces => "namespaces",
        }
    }
}

impl fmt::Display for WatchedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.group() {
            "" => f.write_str(self.plural()),
            group => write!(f, "{}.{group}", self.plural()),
        }
    }
}

/// Watches a Kubernetes API server and publishes [`ClusterObjects`] views.
pub struct KubernetesSource {
    client: Client,
    /// Where the client points, for error messages.
    server: String,
    publish_interval: Duration,
    initial_sync_timeout: Option<Duration>,
}

impl KubernetesSource {
    /// A source using `client` as it is (tests hand in a client for the fake API server).
    pub fn from_client(client: Client) -> Self {
        Self {
            client,
            // A kube::Client does not tell where it points; the kubeconfig and in-cluster
            // constructors fill this in.
            server: "the configured API server".to_string(),
            publish_interval: DEFAULT_PUBLISH_INTERVAL,
            initial_sync_timeout: None,
        }
    }

    /// A source for the cluster in the kubeconfig at `path`, with `context` or the file's
    /// current context.
    pub async fn from_kubeconfig(
        path: &Path,
        context: Option<&str>,
    ) -> Result<Self, KubernetesError> {
        let kubeconfig_error = |source| KubernetesError::Kubeconfig {
            path: path.to_path_buf(),
            context: context.map(str::to_string),
            source,
        };
        let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
        let options = kube::config::KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(kubeconfig_error)?;
        Self::from_config(config)
    }

    /// A source for the cluster this process runs in (service account token and the
    /// `KUBERNETES_SERVICE_HOST`/`PORT` environment).
    pub fn in_cluster() -> Result<Self, KubernetesError> {
        let config = kube::Config::incluster().map_err(KubernetesError::InCluster)?;
        Self::from_config(config)
    }

    fn from_config(config: kube::Config) -> Result<Self, KubernetesError> {
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|source| KubernetesError::Client {
            server: server.clone(),
            source,
        })?;
        Ok(Self {
            server,
            ..Self::from_client(client)
        })
    }

    /// Publish at most one view per `interval` (default [`DEFAULT_PUBLISH_INTERVAL`]).
    pub fn with_publish_interval(mut self, interval: Duration) -> Self {
        self.publish_interval = interval;
        self
    }

    /// Give up with [`KubernetesError::InitialSyncTimeout`] if the first full list of every
    /// kind has not completed within `timeout`. Without it (the default) the source keeps
    /// retrying, and readiness stays false, for as long as it runs.
    pub fn with_initial_sync_timeout(mut self, timeout: Duration) -> Self {
        self.initial_sync_timeout = Some(timeout);
        self
    }

    /// Watches until dropped, publishing `Some(view)` on `views` once every kind has completed
    /// its first full list and after every change from then on. Returns an error only for what
    /// retrying cannot fix before the first sync: RBAC forbidding or credentials rejected for
    /// a kind that has not been listed yet, or no first sync within the initial sync timeout.
    /// After the first sync of a kind, every error is logged and retried with backoff while
    /// the last good state stays published.
    pub async fn run(self, views: ViewSender) -> Result<(), KubernetesError> {
        let span = tracing::info_span!("kubernetes_source", server = %self.server);
        self.watch_and_publish(views).instrument(span).await
    }

    async fn watch_and_publish(self, views: ViewSender) -> Result<(), KubernetesError> {
        let (services, services_writer) = reflector::store::<Service>();
        let (endpoint_slices, endpoint_slices_writer) = reflector::store::<EndpointSlice>();
        let (pods, pods_writer) = reflector::store::<Pod>();
        let (nodes, nodes_writer) = reflector::store::<Node>();
        let (namespaces, namespaces_writer) = reflector::store::<Namespace>();
        let stores = Stores {
            services,
            endpoint_slices,
            pods,
            nodes,
            namespaces,
        };
        let client = &self.client;
        let mut progress = futures::stream::select_all([
            watch_kind(client, services_writer, WatchedKind::Services),
            watch_kind(client, endpoint_slices_writer, WatchedKind::EndpointSlices),
            watch_kind(client, pods_writer, WatchedKind::Pods),
            watch_kind(client, nodes_writer, WatchedKind::Nodes),
            watch_kind(client, namespaces_writer, WatchedKind::Namespaces),
        ]);

        let started = Instant::now();
        let mut synced: BTreeSet<WatchedKind> = BTreeSet::new();
        let mut last_error = String::from("none");
        let mut unpublished_changes = false;
        let mut next_publish = started;
        tracing::info!("watching services, endpointslices, pods, nodes and namespaces");

        loop {
            let all_synced = synced.len() == WatchedKind::ALL.len();
            let sync_deadline = self.initial_sync_timeout.map(|timeout| started + timeout);
            tokio::select! {
                next = progress.next() => {
                    let Some((kind, result)) = next else {
                        // Watchers retry forever; their streams do not end while we hold them.
                        return Ok(());
                    };
                    match result {
                        Ok(Progress::ListComplete) => {
                            if synced.insert(kind) {
                                tracing::info!(%kind, "first full list complete");
                            } else {
                                tracing::debug!(%kind, "re-list complete");
                            }
                            unpublished_changes = true;
                        }
                        // A (re-)list in progress is buffered by the reflector: nothing changed yet.
                        Ok(Progress::Listing) => {}
                        Ok(Progress::Changed) => unpublished_changes = true,
                        Err(error) => {
                            if let Some(fatal) = self.fatal_before_first_sync(kind, &error)
                                && !synced.contains(&kind)
                            {
                                return Err(fatal);
                            }
                            tracing::warn!(
                                %kind,
                                error = %error,
                                "watch failed; retrying with backoff, the last good state stays published"
                            );
                            last_error = format!("{kind}: {error}");
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_publish), if unpublished_changes && all_synced => {
                    let building = Instant::now();
                    views.send_replace(Some(Arc::new(stores.view())));
                    unpublished_changes = false;
                    // A view is a full copy of the cluster's objects. On a big cluster that
                    // copy is not free, so keep building views to at most a fifth of the time.
                    let built_in = building.elapsed();
                    next_publish = Instant::now() + self.publish_interval.max(built_in * 4);
                }
                _ = sleep_until_option(sync_deadline), if !all_synced => {
                    let waiting_for: Vec<String> = WatchedKind::ALL
                        .iter()
                        .filter(|kind| !synced.contains(kind))
                        .map(ToString::to_string)
                        .collect();
                    return Err(KubernetesError::InitialSyncTimeout {
                        server: self.server.clone(),
                        timeout: self.initial_sync_timeout.unwrap_or_default(),
                        waiting_for: waiting_for.join(", "),
                        last_error,
                    });
                }
            }
        }
    }

    /// The errors that no retry will fix without an operator: RBAC and credentials.
    fn fatal_before_first_sync(
        &self,
        kind: WatchedKind,
        error: &watcher::Error,
    ) -> Option<KubernetesError> {
        let (verb, status) = match error {
            watcher::Error::InitialListFailed(kube::Error::Api(status)) => ("list", status),
            watcher::Error::WatchStartFailed(kube::Error::Api(status))
            | watcher::Error::WatchFailed(kube::Error::Api(status)) => ("watch", status),
            watcher::Error::WatchError(status) => ("watch", status),
            _ => return None,
        };
        let server = self.server.clone();
        let message = status.message.clone();
        match status.code {
            403 => Some(KubernetesError::Forbidden {
                server,
                verb,
                kind,
                message,
            }),
            401 => Some(KubernetesError::Unauthorized {
                server,
                verb,
                kind,
                message,
            }),
            _ => None,
        }
    }
}

async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What a watcher event means for the published view.
enum Progress {
    /// A (re-)list is being buffered; the store has not changed.
    Listing,
    /// A (re-)list completed and was swapped into the store.
    ListComplete,
    /// An object was added, modified or deleted in the store.
    Changed,
}

/// One kind's reflector, reporting what each event did to its store.
fn watch_kind<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
    kind: WatchedKind,
) -> BoxStream<'static, (WatchedKind, Result<Progress, watcher::Error>)>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api = Api::<K>::all(client.clone());
    let events = watcher(api, watcher::Config::default()).default_backoff();
    reflector::reflector(writer, events)
        .map(move |event| {
            let progress = event.map(|event| match event {
                watcher::Event::Init | watcher::Event::InitApply(_) => Progress::Listing,
                watcher::Event::InitDone => Progress::ListComplete,
                watcher::Event::Apply(_) | watcher::Event::Delete(_) => Progress::Changed,
            });
            (kind, progress)
        })
        .boxed()
}

struct Stores {
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
}

impl Stores {
    fn view(&self) -> ClusterObjects {
        ClusterObjects {
            services: namespaced(&self.services, |s| &s.metadata),
            endpoint_slices: namespaced(&self.endpoint_slices, |s| &s.metadata),
            pods: namespaced(&self.pods, |p| &p.metadata),
            nodes: cluster_scoped(&self.nodes, |n| &n.metadata),
            namespaces: cluster_scoped(&self.namespaces, |n| &n.metadata),
        }
    }
}

fn namespaced<K>(store: &Store<K>, metadata: fn(&K) -> &ObjectMeta) -> BTreeMap<ObjectKey, Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    store
        .state()
        .iter()
        .map(|object| {
            let meta = metadata(object);
            let key = ObjectKey::new(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            (key, Arc::clone(object))
        })
        .collect()
}

fn cluster_scoped<K>(store: &Store<K>, metadata: fn(&K) -> &ObjectMeta) -> BTreeMap<String, Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    store
        .state()
        .iter()
        .map(|object| {
            let name = metadata(object).name.clone().unwrap_or_default();
            (name, Arc::clone(object))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_their_rbac_resource() {
        assert_eq!(WatchedKind::Services.to_string(), "services");
        assert_eq!(
            WatchedKind::EndpointSlices.to_string(),
            "endpointslices.discovery.k8s.io"
        );
        let error = KubernetesError::Forbidden {
            server: "https://10.0.0.1:443/".into(),
            verb: "list",
            kind: WatchedKind::EndpointSlices,
            message: "endpointslices.discovery.k8s.io is forbidden".into(),
        };
        let text = error.to_string();
        assert!(
            text.contains("forbids the apiserver to list endpointslices.discovery.k8s.io"),
            "{text}"
        );
        assert!(
            text.contains(r#"apiGroups ["discovery.k8s.io"], resources ["endpointslices"]"#),
            "{text}"
        );
    }
}
