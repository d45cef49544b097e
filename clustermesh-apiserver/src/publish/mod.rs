//! Publishing this cluster's state into its own etcd: global services (shared ones under
//! `state/`, unshared ones under `local/`), endpoints, identities and nodes, each kind through
//! its own sync writer under the session lease, with a `synced/` marker once the first full view
//! is in. Each pass recomputes the whole desired state from the latest view; the writers turn
//! that into the minimal set of etcd writes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use clustermesh_model::{
    Endpoint, ExpectedCluster, GlobalService, Identity, KeySchema, Kind, Limits, Marker,
    ObjectName, StateValue, decode_state, is_dns_label, is_dns_subdomain,
};
use clustermesh_store::{
    Client, Session, SyncWriter, SyncWriterConfig, WriterError, unix_millis_now,
};
use tracing::{debug, warn};

use crate::source::ClusterObjects;

pub mod identities;
pub mod translate;

use identities::{IdentityAllocator, IdentityError};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Identities(#[from] IdentityError),
    #[error("internal error: {0}")]
    Writer(#[from] WriterError),
}

/// What the last pass published, for status output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishCounts {
    pub services: usize,
    pub local_services: usize,
    pub endpoints: usize,
    pub identities: usize,
    pub nodes: usize,
    /// Problems found in the Kubernetes objects (bad annotations, unusable addresses).
    pub problems: Vec<String>,
}

pub struct Publisher {
    cluster: ExpectedCluster,
    schema: KeySchema,
    services: SyncWriter,
    endpoints: SyncWriter,
    identities: SyncWriter,
    nodes: SyncWriter,
    /// Owns no keys: agents write their own records under their own leases. It only keeps the
    /// `synced/<cluster>/agents` marker written (also across a lease change), so that peers
    /// know the agents prefix is live and can mark their copy complete.
    agents_marker: SyncWriter,
    allocator: IdentityAllocator,
    synced: bool,
    /// Per service key: the service as published but without its stamp, and when that content
    /// was first published. A service is re-stamped only when its content changes, so an
    /// unchanged service is never rewritten (and a restart adopts the stamps already in etcd).
    service_stamps: HashMap<String, (GlobalService, u64)>,
}

impl Publisher {
    pub async fn start(
        client: Client,
        session: &Session,
        schema: KeySchema,
        cluster: ExpectedCluster,
        identity_grace: Duration,
    ) -> Result<Self, PublishError> {
        let marker = Marker {
            cluster: cluster.name.clone(),
            cluster_id: cluster.id,
            unix_millis: unix_millis_now(),
        }
        .to_json();
        let writer = |kind: Kind, prefixes: Vec<String>| {
            SyncWriter::start(
                client.clone(),
                session,
                SyncWriterConfig {
                    prefixes,
                    synced_key: schema.synced(&cluster.name, kind),
                    synced_value: marker.clone(),
                },
            )
        };
        let state = |kind| schema.state_prefix(kind, &cluster.name);
        let service_stamps = load_service_stamps(
            client.clone(),
            &schema,
            &cluster,
            [
                state(Kind::Services),
                schema.local_prefix(Kind::Services, &cluster.name),
            ],
        )
        .await;
        Ok(Self {
            services: writer(
                Kind::Services,
                vec![
                    state(Kind::Services),
                    schema.local_prefix(Kind::Services, &cluster.name),
                ],
            ),
            endpoints: writer(Kind::Endpoints, vec![state(Kind::Endpoints)]),
            identities: writer(Kind::Identities, vec![state(Kind::Identities)]),
            nodes: writer(Kind::Nodes, vec![state(Kind::Nodes)]),
            agents_marker: writer(Kind::Agents, Vec::new()),
            allocator: IdentityAllocator::load(
                client.clone(),
                schema.clone(),
                cluster.clone(),
                identity_grace,
            )
            .await?,
            cluster,
            schema,
            synced: false,
            service_stamps,
        })
    }

    /// Makes etcd match `view`. The first call also marks every kind synced, which lets the
    /// writers delete what an earlier run left behind.
    pub async fn publish(&mut self, view: &ClusterObjects) -> Result<PublishCounts, PublishError> {
        let mut counts = PublishCounts::default();
        let cluster = &self.cluster;
        let schema = &self.schema;

        let mut services = BTreeMap::new();
        let mut stamps = HashMap::new();
        let now = unix_millis_now();
        for mut svc in translate::global_services(view, cluster, &mut counts.problems) {
            let object = ObjectName::Service {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
            };
            let key = if svc.shared {
                counts.services += 1;
                schema.state(&cluster.name, &object)
            } else {
                counts.local_services += 1;
                schema.local(&cluster.name, &object)
            };
            // Compared as values, so each service is serialized once per pass.
            svc.modified_unix_millis = None;
            let stamp = match self.service_stamps.get(&key) {
                Some((known, stamp)) if *known == svc => *stamp,
                _ => now,
            };
            svc.modified_unix_millis = Some(stamp);
            services.insert(key.clone(), svc.to_json());
            svc.modified_unix_millis = None;
            stamps.insert(key, (svc, stamp));
        }
        self.service_stamps = stamps;

        let pods = translate::pod_endpoints(view);
        self.allocator
            .sync(&translate::wanted_label_sets(&pods))
            .await?;
        let allocations = self.allocator.allocations();

        let mut endpoints = BTreeMap::new();
        for pod in &pods {
            let Some(identity) = allocations.get(&pod.labels).copied() else {
                continue;
            };
            if !is_dns_subdomain(pod.node)
                || !is_dns_label(pod.namespace)
                || !is_dns_subdomain(pod.name)
            {
                counts.problems.push(format!(
                    "pod {}/{}: node, namespace or name is not a valid DNS name; not published",
                    pod.namespace, pod.name
                ));
                continue;
            }
            for ip in &pod.ips {
                let endpoint = Endpoint {
                    cluster: cluster.name.clone(),
                    cluster_id: cluster.id,
                    ip: *ip,
                    identity,
                    node: pod.node.to_owned(),
                    host_ip: pod.host_ip,
                    namespace: pod.namespace.to_owned(),
                    pod: pod.name.to_owned(),
                };
                let key = schema.state(&cluster.name, &ObjectName::Endpoint(*ip));
                endpoints.insert(key, endpoint.to_json());
            }
        }
        counts.endpoints = endpoints.len();

        let identities: BTreeMap<String, Vec<u8>> = allocations
            .iter()
            .map(|(labels, id)| {
                let identity = Identity {
                    cluster: cluster.name.clone(),
                    cluster_id: cluster.id,
                    id: *id,
                    labels: labels.clone(),
                };
                let key = schema.state(&cluster.name, &ObjectName::Identity(id.get()));
                (key, identity.to_json())
            })
            .collect();
        counts.identities = identities.len();

        let nodes: BTreeMap<String, Vec<u8>> = translate::nodes(view, cluster)
            .into_iter()
            .map(|node| {
                let key = schema.state(&cluster.name, &ObjectName::Node(node.name.clone()));
                (key, node.to_json())
            })
            .collect();
        counts.nodes = nodes.len();

        self.services.replace_all(services)?;
        self.endpoints.replace_all(endpoints)?;
        self.identities.replace_all(identities)?;
        self.nodes.replace_all(nodes)?;
        if !self.synced {
            for writer in self.writers() {
                writer.mark_synced();
            }
            self.synced = true;
        }
        for problem in &counts.problems {
            warn!(%problem, "kubernetes object not published as is");
        }
        debug!(?counts, "published");
        Ok(counts)
    }

    fn writers(&self) -> [&SyncWriter; 5] {
        [
            &self.services,
            &self.endpoints,
            &self.identities,
            &self.nodes,
            &self.agents_marker,
        ]
    }

    /// Waits until everything published so far is in etcd.
    pub async fn flush(&self) {
        for writer in self.writers() {
            writer.flush().await;
        }
    }

    /// True once every kind's first full sync and marker are written.
    pub fn is_synced(&self) -> bool {
        self.writers().iter().all(|w| w.status().synced)
    }
}

/// The stamps of the services an earlier run published, by key (see `service_stamps`). A
/// value that does not decode is left out: it will be rewritten with a new stamp.
async fn load_service_stamps(
    mut client: Client,
    schema: &KeySchema,
    cluster: &ExpectedCluster,
    prefixes: [String; 2],
) -> HashMap<String, (GlobalService, u64)> {
    let mut stamps = HashMap::new();
    for prefix in prefixes {
        let kvs = match clustermesh_store::list(&mut client, &prefix).await {
            Ok((kvs, _)) => kvs,
            Err(e) => {
                warn!(%prefix, error = %e, "cannot read the services published before; they are stamped anew");
                continue;
            }
        };
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Ok((_, StateValue::Service(mut svc))) =
                decode_state(schema, &key, kv.value(), cluster, &Limits::default())
            else {
                continue;
            };
            let Some(stamp) = svc.modified_unix_millis.take() else {
                continue;
            };
            stamps.insert(key, (svc, stamp));
        }
    }
    stamps
}
