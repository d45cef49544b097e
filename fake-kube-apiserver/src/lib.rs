//! A **test double** of the Kubernetes API server. It is not a Kubernetes API server and must
//! never be deployed as one: no authentication, no admission, no validation, no persistence.
//!
//! It exists because the machines this project is built and tested on cannot run a real API
//! server, and the `kubernetes` cluster source and the CLI's Kubernetes target must still be
//! tested over real HTTP with the real kube-rs client. It speaks the part of the API that
//! kube-runtime's watcher and the CLI use, for the five kinds the apiserver publishes from
//! (Services, EndpointSlices, Pods, Nodes, Namespaces) and the kinds `clustermesh enable`
//! creates (ConfigMaps, Secrets, ServiceAccounts, Deployments, DaemonSets, ClusterRoles,
//! ClusterRoleBindings):
//!
//! - `GET` of a collection (`/api/v1/services`, `/api/v1/namespaces/{ns}/services`,
//!   `/apis/discovery.k8s.io/v1/endpointslices`, ...) returns a list whose
//!   `metadata.resourceVersion` is the server's current resource version;
//! - the same with `?watch=true&resourceVersion=N` streams newline-delimited watch events
//!   (`ADDED`, `MODIFIED`, `DELETED`, and `BOOKMARK` when `allowWatchBookmarks=true`) from the
//!   retained history after `N`, then live;
//! - a watch from a resource version older than the retained history gets what a real API
//!   server sends: HTTP 200 with one `ERROR` event carrying a `Status` with code 410 and reason
//!   `Expired`. (kube-runtime re-lists on that event; it would retry a bare HTTP 410 forever with
//!   the same resource version, so the bare status is not what we serve.)
//! - `GET` of one object by name, and `GET /version`;
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews` (a `TokenReview`): tokens a test
//!   registered with [`FakeKubeApiServer::register_token`] map to the user info it gave
//!   (username, groups, extra such as `authentication.kubernetes.io/node-name`); unknown,
//!   expired and wrong-audience tokens are not authenticated, as on a real API server;
//! - `PATCH` with `application/apply-patch+yaml` (server-side apply, simplified: the applied
//!   object replaces the stored one, server-owned fields are kept, and an apply that changes
//!   nothing leaves the resource version alone), `POST` (create) and `DELETE`. Writes into a
//!   namespace that does not exist get 404, as on a real API server.
//!
//! Tests drive it in-process: [`FakeKubeApiServer::apply`], [`FakeKubeApiServer::delete`],
//! [`FakeKubeApiServer::compact_history`], [`FakeKubeApiServer::break_watches`],
//! [`FakeKubeApiServer::refuse_watches`], [`FakeKubeApiServer::forbid`],
//! [`FakeKubeApiServer::set_status`], inspect it with [`FakeKubeApiServer::get`],
//! [`FakeKubeApiServer::objects`] and [`FakeKubeApiServer::write_requests`], and get a client with
//! [`FakeKubeApiServer::client`] or a kubeconfig with [`FakeKubeApiServer::write_kubeconfig`].
//! It serves plain HTTP on 127.0.0.1 on a free port.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

/// The kinds the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    Service,
    EndpointSlice,
    Pod,
    Node,
    Namespace,
    ConfigMap,
    Secret,
    ServiceAccount,
    Deployment,
    DaemonSet,
    ClusterRole,
    ClusterRoleBinding,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 12] = [
        ResourceKind::Service,
        ResourceKind::EndpointSlice,
        ResourceKind::Pod,
        ResourceKind::Node,
        ResourceKind::Namespace,
        ResourceKind::ConfigMap,
        ResourceKind::Secret,
        ResourceKind::ServiceAccount,
        ResourceKind::Deployment,
        ResourceKind::DaemonSet,
        ResourceKind::ClusterRole,
        ResourceKind::ClusterRoleBinding,
    ];

    /// The kind of a k8s-openapi type, if the fake serves it.
    pub fn of<K: k8s_openapi::Resource>() -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.group() == K::GROUP && kind.kind() == K::KIND)
    }

    pub fn kind(self) -> &'static str {
        match self {
            ResourceKind::Service => "Service",
            ResourceKind::EndpointSlice => "EndpointSlice",
            ResourceKind::Pod => "Pod",
            ResourceKind::Node => "Node",
            ResourceKind::Namespace => "Namespace",
            ResourceKind::ConfigMap => "ConfigMap",
            ResourceKind::Secret => "Secret",
            ResourceKind::ServiceAccount => "ServiceAccount",
            ResourceKind::Deployment => "Deployment",
            ResourceKind::DaemonSet => "DaemonSet",
            ResourceKind::ClusterRole => "ClusterRole",
            ResourceKind::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            ResourceKind::Service => "services",
            ResourceKind::EndpointSlice => "endpointslices",
            ResourceKind::Pod => "pods",
            ResourceKind::Node => "nodes",
            ResourceKind::Namespace => "namespaces",
            ResourceKind::ConfigMap => "configmaps",
            ResourceKind::Secret => "secrets",
            ResourceKind::ServiceAccount => "serviceaccounts",
            ResourceKind::Deployment => "deployments",
            ResourceKind::DaemonSet => "daemonsets",
            ResourceKind::ClusterRole => "clusterroles",
            ResourceKind::ClusterRoleBinding => "clusterrolebindings",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            ResourceKind::EndpointSlice => "discovery.k8s.io",
            ResourceKind::Deployment | ResourceKind::DaemonSet => "apps",
            ResourceKind::ClusterRole | ResourceKind::ClusterRoleBinding => {
                "rbac.authorization.k8s.io"
            }
            _ => "",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            ResourceKind::EndpointSlice => "discovery.k8s.io/v1",
            ResourceKind::Deployment | ResourceKind::DaemonSet => "apps/v1",
            ResourceKind::ClusterRole | ResourceKind::ClusterRoleBinding => {
                "rbac.authorization.k8s.io/v1"
            }
            _ => "v1",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            ResourceKind::Node
                | ResourceKind::Namespace
                | ResourceKind::ClusterRole
                | ResourceKind::ClusterRoleBinding
        )
    }

    fn from_path(group: &str, plural: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.group() == group && kind.plural() == plural)
    }
}

/// Knobs a test may turn before the server starts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How many events the server keeps for watches to resume from. A watch from a resource
    /// version older than the oldest retained event gets 410 Expired.
    pub history_window: usize,
    /// How often an open watch that asked for bookmarks gets one (only when its position moved).
    pub bookmark_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            history_window: 10_000,
            bookmark_interval: Duration::from_millis(500),
        }
    }
}

/// The running test double. Dropping it stops the server and ends every open watch.
pub struct FakeKubeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

struct Shared {
    store: Mutex<Store>,
    /// Every change, sent while the store lock is held so that a watch that subscribes under
    /// the same lock sees each event exactly once: from history or from here.
    events: broadcast::Sender<StoredEvent>,
    /// Set by `break_watches` and `end_watches`; every open watch ends when it changes.
    watch_interruptions: watch::Sender<Interruption>,
    bookmark_interval: Duration,
    list_requests: Mutex<HashMap<ResourceKind, u64>>,
    expired_watches: AtomicU64,
    bookmarks_sent: AtomicU64,
    /// Open watches by id, with the newest resource version each has told its client (by an
    /// event or a bookmark).
    open_watches: Mutex<BTreeMap<u64, u64>>,
    next_watch_id: AtomicU64,
    /// How many create and apply requests were answered.
    writes: AtomicU64,
    /// Tokens a `TokenReview` authenticates, with their user.
    tokens: Mutex<HashMap<String, TokenUser>>,
    token_reviews: AtomicU64,
}

/// The audience a token review without audiences is checked against (the fake's own, as a
/// real API server uses its `--api-audiences`).
pub const FAKE_API_AUDIENCE: &str = "https://kubernetes.default.svc";

/// What a `TokenReview` of a registered token answers.
#[derive(Debug, Clone, Default)]
pub struct TokenUser {
    /// e.g. `system:serviceaccount:<ns>:<name>`.
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// User extra, e.g. `authentication.kubernetes.io/node-name` → `[node]`.
    pub extra: BTreeMap<String, Vec<String>>,
    /// The audiences the token was issued for (empty: [`FAKE_API_AUDIENCE`]).
    pub audiences: Vec<String>,
    /// After this the token is refused as expired.
    pub expires: Option<std::time::SystemTime>,
}

struct Store {
    resource_version: u64,
    objects: BTreeMap<(ResourceKind, String, String), Value>,
    history: VecDeque<StoredEvent>,
    history_window: usize,
    /// Watches from a resource version below this get 410 Expired: the events after it are gone.
    compacted_through: u64,
    refuse_watches: bool,
    failing_lists: BTreeSet<ResourceKind>,
    forbidden: BTreeSet<ResourceKind>,
}

/// How `break_watches` and `end_watches` end the open watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    /// The connection breaks mid-stream.
    Abrupt,
    /// The stream ends after what was already sent.
    Clean,
}

#[derive(Clone)]
struct StoredEvent {
    resource_version: u64,
    kind: ResourceKind,
    namespace: String,
    event_type: &'static str,
    object: Arc<Value>,
}

impl Store {
    fn record(&mut self, event: StoredEvent, events: &broadcast::Sender<StoredEvent>) {
        self.history.push_back(event.clone());
        while self.history.len() > self.history_window {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_through = dropped.resource_version;
            }
        }
        // No receiver is fine: nobody is watching.
        let _ = events.send(event);
    }
}

impl FakeKubeApiServer {
    /// Starts the fake with default settings on 127.0.0.1 and a free port.
    pub async fn start() -> Self {
        Self::start_with(Settings::default()).await
    }

    pub async fn start_with(settings: Settings) -> Self {
        let (events, _) = broadcast::channel(4096);
        let (watch_interruptions, _) = watch::channel(Interruption::Abrupt);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                resource_version: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_window: settings.history_window,
                compacted_through: 0,
                refuse_watches: false,
                failing_lists: BTreeSet::new(),
                forbidden: BTreeSet::new(),
            }),
            events,
            watch_interruptions,
            bookmark_interval: settings.bookmark_interval,
            list_requests: Mutex::new(HashMap::new()),
            expired_watches: AtomicU64::new(0),
            bookmarks_sent: AtomicU64::new(0),
            open_watches: Mutex::new(BTreeMap::new()),
            next_watch_id: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            tokens: Mutex::new(HashMap::new()),
            token_reviews: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server on 127.0.0.1");
        let addr = listener.local_addr().expect("local address of the fake");
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "fake API server stopped");
            }
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client pointing at the fake (no credentials). Needs a tokio runtime.
    pub fn client(&self) -> kube::Client {
        let url = self.url().parse().expect("the fake's URL is a valid URI");
        kube::Client::try_from(kube::Config::new(url)).expect("a kube client for the fake")
    }

    /// Writes a kubeconfig with one cluster, user and context, all named `fake`, that points
    /// at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: fake\n  user: {{}}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            url = self.url()
        );
        std::fs::write(path, text)
    }

    /// Creates or replaces an object (like a `PUT` of the whole object) and returns its new
    /// resource version. Namespaced objects without a namespace go to `default`.
    ///
    /// Panics if the kind is not one the fake serves or the object has no name: this is test
    /// setup, and a mistake in it should stop the test where it was made.
    pub fn apply<K>(&self, object: &K) -> String
    where
        K: k8s_openapi::Resource + serde::Serialize,
    {
        let kind = ResourceKind::of::<K>()
            .unwrap_or_else(|| panic!("the fake does not serve {}/{}", K::API_VERSION, K::KIND));
        let mut value = serde_json::to_value(object).expect("serialize the object");
        value["apiVersion"] = json!(kind.api_version());
        value["kind"] = json!(kind.kind());
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("a {} without metadata.name", kind.kind()))
            .to_string();
        let namespace = if kind.namespaced() {
            let namespace = value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            value["metadata"]["namespace"] = json!(namespace);
            namespace
        } else {
            String::new()
        };

        let mut store = self.shared.lock_store();
        store.resource_version += 1;
        let resource_version = store.resource_version;
        let key = (kind, namespace.clone(), name);
        let existing_uid = store
            .objects
            .get(&key)
            .and_then(|old| old["metadata"]["uid"].as_str().map(str::to_string));
        let event_type = if existing_uid.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        if value["metadata"]["uid"].as_str().is_none() {
            let uid = existing_uid.unwrap_or_else(|| format!("fake-uid-{resource_version}"));
            value["metadata"]["uid"] = json!(uid);
        }
        value["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        store.objects.insert(key, value.clone());
        store.record(
            StoredEvent {
                resource_version,
                kind,
                namespace,
                event_type,
                object: Arc::new(value),
            },
            &self.shared.events,
        );
        resource_version.to_string()
    }

    /// Deletes an object; returns whether it existed. `namespace` is ignored for cluster-scoped
    /// kinds.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        let kind = ResourceKind::of::<K>()
            .unwrap_or_else(|| panic!("the fake does not serve {}/{}", K::API_VERSION, K::KIND));
        self.shared.remove(kind, namespace, name).is_some()
    }

    /// The stored object (as a client would GET it), if any. `namespace` is ignored for
    /// cluster-scoped kinds.
    pub fn get(&self, kind: ResourceKind, namespace: &str, name: &str) -> Option<Value> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        let store = self.shared.lock_store();
        store
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every stored object of `kind`, ordered by namespace and name.
    pub fn objects(&self, kind: ResourceKind) -> Vec<Value> {
        let store = self.shared.lock_store();
        store
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Makes `token` known to `TokenReview`: it authenticates as `user` (for the user's
    /// audiences, until its expiry).
    pub fn register_token(&self, token: &str, user: TokenUser) {
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(token.to_owned(), user);
    }

    /// How many `TokenReview`s the server has answered.
    pub fn token_reviews(&self) -> u64 {
        self.shared.token_reviews.load(Ordering::SeqCst)
    }

    /// How many create and apply requests the server has answered (no-op applies included).
    pub fn write_requests(&self) -> u64 {
        self.shared.writes.load(Ordering::SeqCst)
    }

    /// Replaces the `status` of a stored object, as a controller would (for example a
    /// Service's load balancer address). Panics if the object does not exist.
    pub fn set_status(&self, kind: ResourceKind, namespace: &str, name: &str, status: Value) {
        let namespace = if kind.namespaced() { namespace } else { "" };
        let mut store = self.shared.lock_store();
        let key = (kind, namespace.to_string(), name.to_string());
        store.resource_version += 1;
        let resource_version = store.resource_version;
        let object = store
            .objects
            .get_mut(&key)
            .unwrap_or_else(|| panic!("set_status: no {} {namespace}/{name}", kind.kind()));
        object["status"] = status;
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        let object = Arc::new(object.clone());
        store.record(
            StoredEvent {
                resource_version,
                kind,
                namespace: namespace.to_string(),
                event_type: "MODIFIED",
                object,
            },
            &self.shared.events,
        );
    }

    /// The server's current resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock_store().resource_version
    }

    /// Forgets all watch history: a watch from any resource version older than the current one
    /// gets 410 Expired from now on.
    pub fn compact_history(&self) {
        let mut store = self.shared.lock_store();
        store.history.clear();
        store.compacted_through = store.resource_version;
    }

    /// Drops every open watch connection mid-stream (the client sees a broken connection).
    pub fn break_watches(&self) {
        self.shared
            .watch_interruptions
            .send_replace(Interruption::Abrupt);
    }

    /// Ends every open watch cleanly, as a real API server does when a watch's
    /// `timeoutSeconds` pass: everything already sent reaches the client, then the stream ends.
    pub fn end_watches(&self) {
        self.shared
            .watch_interruptions
            .send_replace(Interruption::Clean);
    }

    /// While `true`, new watch requests get 503 Service Unavailable (lists still work). With
    /// [`Self::break_watches`] and [`Self::compact_history`] this forces a client's resumed
    /// watch to be too old, deterministically.
    pub fn refuse_watches(&self, refuse: bool) {
        self.shared.lock_store().refuse_watches = refuse;
    }

    /// While `true`, lists of `kind` get 503 Service Unavailable: a transient failure the
    /// client retries, which keeps that kind from completing its first sync.
    pub fn fail_lists(&self, kind: ResourceKind, fail: bool) {
        let mut store = self.shared.lock_store();
        if fail {
            store.failing_lists.insert(kind);
        } else {
            store.failing_lists.remove(&kind);
        }
    }

    /// Answers list and watch of `kind` with 403 Forbidden, as a real API server does when
    /// RBAC does not allow them.
    pub fn forbid(&self, kind: ResourceKind) {
        self.shared.lock_store().forbidden.insert(kind);
    }

    /// How many list (not watch) requests for `kind` the server has received, failed ones included.
    pub fn list_requests(&self, kind: ResourceKind) -> u64 {
        let counts = self
            .shared
            .list_requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.get(&kind).copied().unwrap_or(0)
    }

    /// How many watches were answered with 410 Expired.
    pub fn expired_watches(&self) -> u64 {
        self.shared.expired_watches.load(Ordering::SeqCst)
    }

    /// How many bookmark events the server has sent, over all watches.
    pub fn bookmarks_sent(&self) -> u64 {
        self.shared.bookmarks_sent.load(Ordering::SeqCst)
    }

    /// How many watch streams are open right now.
    pub fn open_watches(&self) -> usize {
        self.shared.lock_open_watches().len()
    }

    /// How many open watches have not yet told their client the server's current resource
    /// version, by an event or a bookmark. Zero means every client could resume from now.
    pub fn watches_behind(&self) -> usize {
        let current = self.resource_version();
        let open = self.shared.lock_open_watches();
        open.values().filter(|told| **told < current).count()
    }
}

impl Drop for FakeKubeApiServer {
    fn drop(&mut self) {
        self.server.abort();
        // Connections live in their own tasks; end the watches so clients notice.
        self.break_watches();
    }
}

impl Shared {
    fn lock_store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the store consistent (every mutation is
        // completed before anything can panic), so a poisoned lock is still usable.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_open_watches(&self) -> MutexGuard<'_, BTreeMap<u64, u64>> {
        self.open_watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }

    /// Removes an object and sends its DELETED event; returns it if it existed.
    fn remove(&self, kind: ResourceKind, namespace: &str, name: &str) -> Option<Value> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        let mut store = self.lock_store();
        let key = (kind, namespace.to_string(), name.to_string());
        let mut value = store.objects.remove(&key)?;
        store.resource_version += 1;
        let resource_version = store.resource_version;
        // As a real API server does, the DELETED event carries the object at the deletion's
        // resource version.
        value["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        store.record(
            StoredEvent {
                resource_version,
                kind,
                namespace: namespace.to_string(),
                event_type: "DELETED",
                object: Arc::new(value.clone()),
            },
            &self.events,
        );
        Some(value)
    }

    fn count_list(&self, kind: ResourceKind) {
        let mut counts = self
            .list_requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry(kind).or_default() += 1;
    }
}

/// What a request path names.
#[derive(Debug, PartialEq)]
enum Target {
    Collection {
        kind: ResourceKind,
        namespace: Option<String>,
    },
    Object {
        kind: ResourceKind,
        namespace: Option<String>,
        name: String,
    },
}

fn parse_path(path: &str) -> Option<Target> {
    let (group, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("", rest)
    } else {
        let rest = path.strip_prefix("/apis/")?;
        let (group, rest) = rest.split_once('/')?;
        let rest = rest.strip_prefix("v1/")?;
        (group, rest)
    };
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        [plural] => Some(Target::Collection {
            kind: ResourceKind::from_path(group, plural)?,
            namespace: None,
        }),
        [plural, name] => {
            let kind = ResourceKind::from_path(group, plural)?;
            (!kind.namespaced()).then(|| Target::Object {
                kind,
                namespace: None,
                name: name.to_string(),
            })
        }
        ["namespaces", namespace, plural] => {
            let kind = ResourceKind::from_path(group, plural)?;
            kind.namespaced().then(|| Target::Collection {
                kind,
                namespace: Some(namespace.to_string()),
            })
        }
        ["namespaces", namespace, plural, name] => {
            let kind = ResourceKind::from_path(group, plural)?;
            kind.namespaced().then(|| Target::Object {
                kind,
                namespace: Some(namespace.to_string()),
                name: name.to_string(),
            })
        }
        _ => None,
    }
}

fn status_body(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(code, &status_body(code, reason, message))
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path() == "/version" && method == Method::GET {
        // What a client asks first to see whether the server is there.
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-fake", "platform": "linux/amd64"}),
        );
    }
    if uri.path() == "/apis/authentication.k8s.io/v1/tokenreviews" {
        if method != Method::POST {
            return status_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "tokenreviews can only be created",
            );
        }
        return token_review(&shared, &body);
    }
    let Some(target) = parse_path(uri.path()) else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the fake API server does not serve {}", uri.path()),
        );
    };
    if method == Method::PATCH || method == Method::DELETE || method == Method::POST {
        return write(&shared, &method, target, &query, &headers, &body);
    }
    if method != Method::GET {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!(
                "the fake API server serves GET, PATCH (apply), POST and DELETE, not {method}"
            ),
        );
    }
    for selector in ["labelSelector", "fieldSelector"] {
        if query.get(selector).is_some_and(|v| !v.is_empty()) {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("the fake API server does not implement {selector}"),
            );
        }
    }
    match target {
        Target::Collection { kind, namespace } => {
            let verb = if query.get("watch").is_some_and(|v| v == "true" || v == "1") {
                "watch"
            } else {
                "list"
            };
            if shared.lock_store().forbidden.contains(&kind) {
                return forbidden(kind, verb, namespace.as_deref());
            }
            if verb == "watch" {
                start_watch(&shared, kind, namespace, &query)
            } else {
                shared.count_list(kind);
                if shared.lock_store().failing_lists.contains(&kind) {
                    return status_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable",
                        &format!(
                            "the fake API server fails lists of {} (test setting)",
                            kind.plural()
                        ),
                    );
                }
                list(&shared, kind, namespace.as_deref())
            }
        }
        Target::Object {
            kind,
            namespace,
            name,
        } => {
            if shared.lock_store().forbidden.contains(&kind) {
                return forbidden(kind, "get", namespace.as_deref());
            }
            let store = shared.lock_store();
            let key = (kind, namespace.unwrap_or_default(), name.clone());
            match store.objects.get(&key) {
                Some(object) => json_response(StatusCode::OK, object),
                None => status_response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} \"{name}\" not found", kind.plural()),
                ),
            }
        }
    }
}

/// A `TokenReview`: authenticated only for a registered, unexpired token whose audiences meet
/// the requested ones (or the fake's own when none are requested).
fn token_review(shared: &Arc<Shared>, body: &Bytes) -> Response {
    shared.token_reviews.fetch_add(1, Ordering::SeqCst);
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a JSON TokenReview",
        );
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let requested: Vec<String> = match review["spec"]["audiences"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => vec![FAKE_API_AUDIENCE.to_owned()],
    };
    let user = shared
        .tokens
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(token)
        .cloned();
    let refused = |error: String| json!({"authenticated": false, "error": error});
    let status = match user {
        None => refused("invalid bearer token".into()),
        Some(user)
            if user
                .expires
                .is_some_and(|t| t <= std::time::SystemTime::now()) =>
        {
            refused("invalid bearer token, token has expired".into())
        }
        Some(user) => {
            let own = if user.audiences.is_empty() {
                vec![FAKE_API_AUDIENCE.to_owned()]
            } else {
                user.audiences.clone()
            };
            let met: Vec<&String> = requested.iter().filter(|a| own.contains(a)).collect();
            if met.is_empty() {
                refused(format!(
                    "invalid bearer token, token audiences {own:?} is invalid for the target audiences {requested:?}"
                ))
            } else {
                json!({
                    "authenticated": true,
                    "audiences": met,
                    "user": {
                        "username": user.username,
                        "uid": user.uid,
                        "groups": user.groups,
                        "extra": user.extra,
                    },
                })
            }
        }
    };
    json_response(
        StatusCode::CREATED,
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"],
            "status": status,
        }),
    )
}

/// `PATCH` with `application/apply-patch+yaml` (server-side apply), `POST` to a collection
/// (create) and `DELETE` of one object.
///
/// Server-side apply here is a simplification of the real thing: the applied object replaces
/// the stored one (one field manager owns every field; `status`, `uid`, `creationTimestamp`
/// and an assigned `nodePort` are kept), and an apply that changes nothing changes nothing —
/// the resource version stays, no event is sent — as on a real API server.
fn write(
    shared: &Arc<Shared>,
    method: &Method,
    target: Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let (kind, namespace, name) = match (method, target) {
        (&Method::POST, Target::Collection { kind, namespace }) => (kind, namespace, None),
        (&Method::POST, Target::Object { .. }) => {
            return status_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "POST creates objects in a collection, not at an object's path",
            );
        }
        (
            _,
            Target::Object {
                kind,
                namespace,
                name,
            },
        ) => (kind, namespace, Some(name)),
        (_, Target::Collection { .. }) => {
            return status_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("the fake API server does not {method} whole collections"),
            );
        }
    };
    let verb = match *method {
        Method::DELETE => "delete",
        Method::POST => "create",
        _ => "patch",
    };
    if shared.lock_store().forbidden.contains(&kind) {
        return forbidden(kind, verb, namespace.as_deref());
    }
    if *method == Method::DELETE {
        let name = name.unwrap_or_default();
        return match shared.remove(kind, namespace.as_deref().unwrap_or_default(), &name) {
            Some(object) => json_response(StatusCode::OK, &object),
            None => status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} \"{name}\" not found", kind.plural()),
            ),
        };
    }

    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let apply = *method == Method::PATCH;
    if apply && !content_type.starts_with("application/apply-patch") {
        return status_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!(
                "the fake API server implements only server-side apply patches, not {content_type:?}"
            ),
        );
    }
    let field_manager = query.get("fieldManager").cloned().unwrap_or_default();
    if apply && field_manager.is_empty() {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "PATCH is invalid: fieldManager is required for apply requests",
        );
    }
    // JSON is YAML, and kube-rs sends JSON; this fake accepts JSON only.
    let mut object: Value = match serde_json::from_slice(body) {
        Ok(object @ Value::Object(_)) => object,
        _ => {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the request body is not a JSON object",
            );
        }
    };
    if object["apiVersion"] != json!(kind.api_version()) || object["kind"] != json!(kind.kind()) {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "the body is a {} {}, the path names {} {}",
                object["apiVersion"],
                object["kind"],
                kind.api_version(),
                kind.kind()
            ),
        );
    }
    let body_name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = name.unwrap_or_else(|| body_name.clone());
    if name.is_empty() || body_name != name {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("metadata.name {body_name:?} does not match the name in the path {name:?}"),
        );
    }
    let namespace = namespace.unwrap_or_default();
    if kind.namespaced() {
        match object["metadata"]["namespace"].as_str() {
            None => object["metadata"]["namespace"] = json!(namespace),
            Some(ns) if ns == namespace => {}
            Some(ns) => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!(
                        "metadata.namespace {ns:?} does not match the namespace in the path {namespace:?}"
                    ),
                );
            }
        }
    }

    let mut store = shared.lock_store();
    if kind.namespaced()
        && !store
            .objects
            .contains_key(&(ResourceKind::Namespace, String::new(), namespace.clone()))
    {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("namespaces \"{namespace}\" not found"),
        );
    }
    let key = (kind, namespace.clone(), name.clone());
    let old = store.objects.get(&key).cloned();
    if !apply && old.is_some() {
        return status_response(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", kind.plural()),
        );
    }
    if let Some(string_data) = object.get_mut("stringData").map(Value::take) {
        let data = object["data"].as_object().cloned().unwrap_or_default();
        let mut data = data;
        for (k, v) in string_data.as_object().cloned().unwrap_or_default() {
            data.insert(
                k,
                json!(base64_encode(v.as_str().unwrap_or_default().as_bytes())),
            );
        }
        object["data"] = Value::Object(data);
        if let Some(map) = object.as_object_mut() {
            map.remove("stringData");
        }
    }
    // What the server owns: identity, status, an assigned node port.
    if let Some(old) = &old {
        for field in ["uid", "creationTimestamp"] {
            object["metadata"][field] = old["metadata"][field].clone();
        }
        if !old["status"].is_null() {
            object["status"] = old["status"].clone();
        }
    } else {
        object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    if kind == ResourceKind::Service {
        assign_node_ports(&mut object, old.as_ref());
    }
    object["metadata"]["managedFields"] = json!([{
        "manager": if apply { field_manager.as_str() } else { "unknown" },
        "operation": if apply { "Apply" } else { "Update" },
        "apiVersion": kind.api_version(),
    }]);
    shared.count_write();
    if let Some(old) = &old {
        let mut unchanged = old.clone();
        unchanged["metadata"]["managedFields"] = object["metadata"]["managedFields"].clone();
        object["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if unchanged == object {
            return json_response(StatusCode::OK, old);
        }
    }
    store.resource_version += 1;
    let resource_version = store.resource_version;
    if object["metadata"]["uid"].is_null() {
        object["metadata"]["uid"] = json!(format!("fake-uid-{resource_version}"));
    }
    object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
    store.objects.insert(key, object.clone());
    store.record(
        StoredEvent {
            resource_version,
            kind,
            namespace,
            event_type: if old.is_some() { "MODIFIED" } else { "ADDED" },
            object: Arc::new(object.clone()),
        },
        &shared.events,
    );
    let code = if old.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    json_response(code, &object)
}

/// Gives every port of a NodePort or LoadBalancer Service a node port (kept from the stored
/// object, else the next free one from 30000), as the real API server does.
fn assign_node_ports(object: &mut Value, old: Option<&Value>) {
    let service_type = object["spec"]["type"].as_str().unwrap_or("ClusterIP");
    if service_type != "NodePort" && service_type != "LoadBalancer" {
        return;
    }
    let old_ports = old
        .and_then(|o| o["spec"]["ports"].as_array().cloned())
        .unwrap_or_default();
    let Some(ports) = object["spec"]["ports"].as_array_mut() else {
        return;
    };
    for (i, port) in ports.iter_mut().enumerate() {
        if port["nodePort"].is_null() {
            let kept = old_ports
                .iter()
                .find(|p| p["port"] == port["port"])
                .map(|p| p["nodePort"].clone())
                .filter(|p| !p.is_null());
            port["nodePort"] = kept.unwrap_or_else(|| json!(30000 + i));
        }
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn forbidden(kind: ResourceKind, verb: &str, namespace: Option<&str>) -> Response {
    let scope = match namespace {
        Some(namespace) => format!("in the namespace \"{namespace}\""),
        None => "at the cluster scope".to_string(),
    };
    status_response(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "{plural} is forbidden: User \"system:anonymous\" cannot {verb} resource \"{plural}\" \
             in API group \"{group}\" {scope}",
            plural = kind.plural(),
            group = kind.group(),
        ),
    )
}

fn matches(kind: ResourceKind, namespace: Option<&str>, event: &StoredEvent) -> bool {
    event.kind == kind && namespace.is_none_or(|ns| ns == event.namespace)
}

fn list(shared: &Shared, kind: ResourceKind, namespace: Option<&str>) -> Response {
    let store = shared.lock_store();
    let items: Vec<&Value> = store
        .objects
        .iter()
        .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
        .map(|(_, object)| object)
        .collect();
    // `limit` is advisory: returning everything with no `continue` token is a valid answer.
    let body = json!({
        "kind": format!("{}List", kind.kind()),
        "apiVersion": kind.api_version(),
        "metadata": { "resourceVersion": store.resource_version.to_string() },
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": event_type, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn start_watch(
    shared: &Arc<Shared>,
    kind: ResourceKind,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Response {
    if query.get("sendInitialEvents").is_some_and(|v| v == "true") {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the fake API server does not implement streaming lists (sendInitialEvents)",
        );
    }
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs);
    let requested = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(text) => match text.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("resourceVersion {text:?} is not a resource version of this server"),
                );
            }
        },
    };

    // Everything up to `position` is decided under the store lock; everything after it comes
    // from the broadcast subscription taken under the same lock.
    let mut interruptions = shared.watch_interruptions.subscribe();
    let store = shared.lock_store();
    if store.refuse_watches {
        return status_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the fake API server refuses watches right now (test setting)",
        );
    }
    let first_lines: Vec<Bytes> = match requested {
        // No resource version: start with the current state as ADDED events.
        None => store
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.as_deref().is_none_or(|n| n == ns))
            .map(|(_, object)| event_line("ADDED", object))
            .collect(),
        Some(rv) if rv < store.compacted_through => {
            let message = format!(
                "too old resource version: {rv} ({})",
                store.compacted_through
            );
            drop(store);
            shared.expired_watches.fetch_add(1, Ordering::SeqCst);
            let expired = status_body(StatusCode::GONE, "Expired", &message);
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                event_line("ERROR", &expired),
            )
                .into_response();
        }
        Some(rv) => store
            .history
            .iter()
            .filter(|event| event.resource_version > rv)
            .filter(|event| matches(kind, namespace.as_deref(), event))
            .map(|event| event_line(event.event_type, &event.object))
            .collect(),
    };
    let position = store.resource_version;
    let events = shared.events.subscribe();
    drop(store);
    interruptions.mark_unchanged();

    let id = shared.next_watch_id.fetch_add(1, Ordering::SeqCst);
    shared
        .lock_open_watches()
        .insert(id, requested.unwrap_or(position));
    let (lines, body_lines) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let stream = WatchStream {
        id,
        shared: shared.clone(),
        kind,
        namespace,
        bookmarks,
        timeout,
        position,
        events,
        interruptions,
        lines,
    };
    tokio::spawn(stream.run(first_lines));
    let body = futures::stream::unfold(body_lines, |mut body_lines| async move {
        body_lines.recv().await.map(|line| (line, body_lines))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// One open watch: feeds its HTTP body until the client goes away, the test breaks it, or the
/// client's `timeoutSeconds` passes.
struct WatchStream {
    id: u64,
    shared: Arc<Shared>,
    kind: ResourceKind,
    namespace: Option<String>,
    bookmarks: bool,
    timeout: Option<Duration>,
    /// The resource version this stream has seen everything up to (the bookmark value).
    position: u64,
    events: broadcast::Receiver<StoredEvent>,
    interruptions: watch::Receiver<Interruption>,
    lines: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl WatchStream {
    async fn run(mut self, first_lines: Vec<Bytes>) {
        self.feed(first_lines).await;
        self.shared.lock_open_watches().remove(&self.id);
    }

    fn told(&self, resource_version: u64) {
        if let Some(told) = self.shared.lock_open_watches().get_mut(&self.id) {
            *told = resource_version;
        }
    }

    async fn feed(&mut self, first_lines: Vec<Bytes>) {
        for line in first_lines {
            if self.lines.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let deadline =
            tokio::time::sleep(self.timeout.unwrap_or(Duration::from_secs(365 * 24 * 3600)));
        tokio::pin!(deadline);
        let mut bookmark_tick = tokio::time::interval(self.shared.bookmark_interval);
        let mut bookmarked = self.position;
        loop {
            tokio::select! {
                changed = self.interruptions.changed() => {
                    let interruption = *self.interruptions.borrow_and_update();
                    if changed.is_ok() && interruption == Interruption::Abrupt {
                        // An error in the body makes hyper abort the connection mid-stream.
                        let broken = std::io::Error::other("watch broken by the test");
                        let _ = self.lines.send(Err(broken)).await;
                    }
                    return;
                }
                received = self.events.recv() => match received {
                    Ok(event) => {
                        self.position = event.resource_version;
                        if matches(self.kind, self.namespace.as_deref(), &event) {
                            let line = event_line(event.event_type, &event.object);
                            if self.lines.send(Ok(line)).await.is_err() {
                                return;
                            }
                            self.told(event.resource_version);
                        }
                    }
                    // Too slow or server gone: end the stream; the client resumes from its
                    // last resource version.
                    Err(_) => return,
                },
                _ = bookmark_tick.tick(), if self.bookmarks && self.position > bookmarked => {
                    bookmarked = self.position;
                    let bookmark = json!({
                        "kind": self.kind.kind(),
                        "apiVersion": self.kind.api_version(),
                        "metadata": { "resourceVersion": self.position.to_string() },
                    });
                    if self.lines.send(Ok(event_line("BOOKMARK", &bookmark))).await.is_err() {
                        return;
                    }
                    self.shared.bookmarks_sent.fetch_add(1, Ordering::SeqCst);
                    self.told(self.position);
                }
                _ = &mut deadline => return,
                _ = self.lines.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_reviews_authenticate_registered_tokens_for_their_audiences() {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let fake = FakeKubeApiServer::start().await;
        let extra = BTreeMap::from([(
            "authentication.kubernetes.io/node-name".to_owned(),
            vec!["node-1".to_owned()],
        )]);
        fake.register_token(
            "good",
            TokenUser {
                username: "system:serviceaccount:ns:sa".into(),
                extra,
                audiences: vec!["issuer".into()],
                ..TokenUser::default()
            },
        );
        fake.register_token(
            "old",
            TokenUser {
                username: "system:serviceaccount:ns:sa".into(),
                audiences: vec!["issuer".into()],
                expires: Some(std::time::SystemTime::now() - Duration::from_secs(1)),
                ..TokenUser::default()
            },
        );
        let api: kube::Api<TokenReview> = kube::Api::all(fake.client());
        let review = |token: &str, audience: &str| TokenReview {
            spec: TokenReviewSpec {
                token: token.into(),
                audiences: Some(vec![audience.into()]),
            },
            ..TokenReview::default()
        };
        let status = |r: TokenReview| r.status.unwrap();
        let pp = kube::api::PostParams::default();
        let ok = status(api.create(&pp, &review("good", "issuer")).await.unwrap());
        assert_eq!(ok.authenticated, Some(true));
        assert_eq!(ok.audiences, Some(vec!["issuer".to_owned()]));
        let user = ok.user.unwrap();
        assert_eq!(
            user.username.as_deref(),
            Some("system:serviceaccount:ns:sa")
        );
        assert_eq!(
            user.extra.unwrap()["authentication.kubernetes.io/node-name"],
            ["node-1"]
        );
        for (token, audience, error) in [
            ("good", "other", "audiences"),
            ("old", "issuer", "expired"),
            ("unknown", "issuer", "invalid bearer token"),
        ] {
            let refused = status(api.create(&pp, &review(token, audience)).await.unwrap());
            assert_ne!(refused.authenticated, Some(true), "{token}");
            assert!(refused.error.unwrap().contains(error), "{token}");
        }
        assert_eq!(fake.token_reviews(), 4);
    }

    #[test]
    fn paths_name_collections_and_objects() {
        assert_eq!(
            parse_path("/api/v1/services"),
            Some(Target::Collection {
                kind: ResourceKind::Service,
                namespace: None
            })
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/prod/pods"),
            Some(Target::Collection {
                kind: ResourceKind::Pod,
                namespace: Some("prod".into())
            })
        );
        assert_eq!(
            parse_path("/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices/web-1"),
            Some(Target::Object {
                kind: ResourceKind::EndpointSlice,
                namespace: Some("prod".into()),
                name: "web-1".into()
            })
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/prod"),
            Some(Target::Object {
                kind: ResourceKind::Namespace,
                namespace: None,
                name: "prod".into()
            })
        );
        assert_eq!(
            parse_path("/api/v1/nodes"),
            Some(Target::Collection {
                kind: ResourceKind::Node,
                namespace: None
            })
        );
        // Nodes are not namespaced; endpointslices are not in the core group.
        assert_eq!(parse_path("/api/v1/namespaces/prod/nodes"), None);
        assert_eq!(parse_path("/api/v1/endpointslices"), None);
        assert_eq!(
            parse_path("/apis/apps/v1/namespaces/clustermesh/daemonsets/agent"),
            Some(Target::Object {
                kind: ResourceKind::DaemonSet,
                namespace: Some("clustermesh".into()),
                name: "agent".into()
            })
        );
        assert_eq!(
            parse_path("/apis/rbac.authorization.k8s.io/v1/clusterroles/x"),
            Some(Target::Object {
                kind: ResourceKind::ClusterRole,
                namespace: None,
                name: "x".into()
            })
        );
        assert_eq!(parse_path("/apis/apps/v1/namespaces/x/clusterroles"), None);
        assert_eq!(parse_path("/apis/batch/v1/jobs"), None);
    }

    #[test]
    fn kinds_of_k8s_openapi_types() {
        use k8s_openapi::api::batch::v1::Job;
        use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        assert_eq!(ResourceKind::of::<Service>(), Some(ResourceKind::Service));
        assert_eq!(
            ResourceKind::of::<EndpointSlice>(),
            Some(ResourceKind::EndpointSlice)
        );
        assert_eq!(ResourceKind::of::<Pod>(), Some(ResourceKind::Pod));
        assert_eq!(ResourceKind::of::<Node>(), Some(ResourceKind::Node));
        assert_eq!(
            ResourceKind::of::<Namespace>(),
            Some(ResourceKind::Namespace)
        );
        assert_eq!(ResourceKind::of::<Job>(), None);
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}
