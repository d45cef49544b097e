//! The etcd key schema, as typed builders and one parser. Every key the mesh reads or writes is
//! built and parsed here, so no other crate formats key strings by hand.
//!
//! ```text
//! <root>/cluster-config/<cluster>                  cluster ID, capabilities, CA fingerprint
//! <root>/.heartbeat                                timestamp, rewritten periodically
//! <root>/state/services/v1/<cluster>/<ns>/<name>   global service
//! <root>/state/endpoints/v1/<cluster>/<ip>         pod IP -> identity, node, namespace, pod
//! <root>/state/identities/v1/<cluster>/<id>        identity -> label set
//! <root>/state/nodes/v1/<cluster>/<node>           node IPs, pod CIDRs, zone
//! <root>/state/agents/v1/<cluster>/<node>          the node agent's liveness record
//! <root>/synced/<cluster>/<kind>                   first full sync of <kind> is in etcd
//! <root>/cache/<kind>/v1/<remote>/...              the mirror of a remote cluster's state
//! <root>/cache/synced/<remote>/<kind>              the mirror of <kind> is complete
//! <root>/local/services/v1/<cluster>/<ns>/<name>   an unshared global service: local agents only
//! <root>/allocations/identities/<cluster>/<id>     an identity allocation, kept across restarts
//! <root>/local/clusterset-vips/v1/<cluster>/<ns>/<name>  the clusterset VIP of a remote-only
//!                                                  global service, kept across restarts
//! ```
//!
//! Peers' read-only credentials cover `state/`, never `local/` or `allocations/`.

use std::fmt;
use std::net::IpAddr;

use crate::cluster::{ClusterError, ClusterName};
use crate::names::{is_dns_label, is_dns_subdomain};

/// The only schema version this build reads and writes.
pub const SCHEMA_VERSION: &str = "v1";

/// The default root prefix.
pub const DEFAULT_ROOT: &str = "clustermesh";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "root prefix {0:?} is not valid: use one or more non-empty segments separated by '/', without leading or trailing '/'"
    )]
    BadRoot(String),
    #[error("key {key:?} is not under the root prefix {root:?}")]
    NotUnderRoot { key: String, root: String },
    #[error("key {0:?} does not match any layout of the clustermesh schema")]
    UnknownLayout(String),
    #[error("key {key:?} names an unknown kind {kind:?}")]
    UnknownKind { key: String, kind: String },
    #[error(
        "key {key:?} uses schema version {found:?}, this build understands only {SCHEMA_VERSION:?}; upgrade this component to match its peers"
    )]
    UnknownSchemaVersion { key: String, found: String },
    #[error("key {key:?}: {source}")]
    BadCluster { key: String, source: ClusterError },
    #[error("key {key:?}: {kind} name {name:?} is not valid ({reason})")]
    BadObjectName {
        key: String,
        kind: Kind,
        name: String,
        reason: &'static str,
    },
}

/// The kinds of state a cluster publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Services,
    Endpoints,
    Identities,
    Nodes,
    Agents,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Services,
        Kind::Endpoints,
        Kind::Identities,
        Kind::Nodes,
        Kind::Agents,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::Endpoints => "endpoints",
            Kind::Identities => "identities",
            Kind::Nodes => "nodes",
            Kind::Agents => "agents",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a state key names inside its cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectName {
    Service { namespace: String, name: String },
    Endpoint(IpAddr),
    Identity(u32),
    Node(String),
    Agent(String),
}

impl ObjectName {
    pub fn kind(&self) -> Kind {
        match self {
            ObjectName::Service { .. } => Kind::Services,
            ObjectName::Endpoint(_) => Kind::Endpoints,
            ObjectName::Identity(_) => Kind::Identities,
            ObjectName::Node(_) => Kind::Nodes,
            ObjectName::Agent(_) => Kind::Agents,
        }
    }

    fn path(&self) -> String {
        match self {
            ObjectName::Service { namespace, name } => format!("{namespace}/{name}"),
            ObjectName::Endpoint(ip) => ip.to_string(),
            ObjectName::Identity(id) => id.to_string(),
            ObjectName::Node(n) | ObjectName::Agent(n) => n.clone(),
        }
    }

    fn parse(kind: Kind, rest: &str, key: &str) -> Result<ObjectName, KeyError> {
        let bad = |reason| KeyError::BadObjectName {
            key: key.to_owned(),
            kind,
            name: rest.to_owned(),
            reason,
        };
        match kind {
            Kind::Services => {
                let (namespace, name) = rest
                    .split_once('/')
                    .ok_or_else(|| bad("expected <namespace>/<name>"))?;
                if !is_dns_label(namespace) || !is_dns_label(name) {
                    return Err(bad("namespace and name must be DNS labels"));
                }
                Ok(ObjectName::Service {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            Kind::Endpoints => {
                let ip: IpAddr = rest.parse().map_err(|_| bad("not an IP address"))?;
                // Only the canonical spelling, so one IP never has two keys.
                if ip.to_string() != rest {
                    return Err(bad("IP address not in canonical form"));
                }
                Ok(ObjectName::Endpoint(ip))
            }
            Kind::Identities => {
                let canonical = rest.bytes().all(|b| b.is_ascii_digit())
                    && !rest.is_empty()
                    && (rest == "0" || !rest.starts_with('0'));
                let id = rest
                    .parse::<u32>()
                    .ok()
                    .filter(|_| canonical)
                    .ok_or_else(|| bad("not a decimal identity ID"))?;
                Ok(ObjectName::Identity(id))
            }
            Kind::Nodes | Kind::Agents => {
                if !is_dns_subdomain(rest) {
                    return Err(bad("node names must be DNS subdomains"));
                }
                Ok(if kind == Kind::Nodes {
                    ObjectName::Node(rest.to_owned())
                } else {
                    ObjectName::Agent(rest.to_owned())
                })
            }
        }
    }
}

/// A parsed key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    ClusterConfig(ClusterName),
    Heartbeat,
    Synced {
        cluster: ClusterName,
        kind: Kind,
    },
    State {
        cluster: ClusterName,
        object: ObjectName,
    },
    Cache {
        remote: ClusterName,
        object: ObjectName,
    },
    CacheSynced {
        remote: ClusterName,
        kind: Kind,
    },
    /// Published for the local cluster's agents only (services with `shared: "false"`).
    Local {
        cluster: ClusterName,
        object: ObjectName,
    },
    IdentityAllocation {
        cluster: ClusterName,
        id: u32,
    },
    /// The clusterset VIP the local apiserver allocated for a global service that exists only
    /// in peers; for the local agents (and their DNS) only, not under any lease.
    ClustersetVip {
        cluster: ClusterName,
        namespace: String,
        name: String,
    },
}

/// The path segment of clusterset VIPs under `local/` (not a [`Kind`]: peers never publish or
/// mirror them).
const CLUSTERSET_VIPS: &str = "clusterset-vips";

/// Builds and parses keys under one root prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    root: String,
}

impl Default for KeySchema {
    fn default() -> Self {
        Self {
            root: DEFAULT_ROOT.to_owned(),
        }
    }
}

impl KeySchema {
    pub fn new(root: &str) -> Result<Self, KeyError> {
        if root.is_empty() || root.split('/').any(str::is_empty) {
            return Err(KeyError::BadRoot(root.to_owned()));
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn cluster_config(&self, cluster: &ClusterName) -> String {
        format!("{}/cluster-config/{cluster}", self.root)
    }

    pub fn heartbeat(&self) -> String {
        format!("{}/.heartbeat", self.root)
    }

    pub fn synced(&self, cluster: &ClusterName, kind: Kind) -> String {
        format!("{}/synced/{cluster}/{kind}", self.root)
    }

    /// All of a cluster's published objects of one kind live under this prefix (ends in '/').
    pub fn state_prefix(&self, kind: Kind, cluster: &ClusterName) -> String {
        format!("{}/state/{kind}/{SCHEMA_VERSION}/{cluster}/", self.root)
    }

    pub fn state(&self, cluster: &ClusterName, object: &ObjectName) -> String {
        format!(
            "{}{}",
            self.state_prefix(object.kind(), cluster),
            object.path()
        )
    }

    /// The local mirror of a remote cluster's objects of one kind (ends in '/').
    pub fn cache_prefix(&self, kind: Kind, remote: &ClusterName) -> String {
        format!("{}/cache/{kind}/{SCHEMA_VERSION}/{remote}/", self.root)
    }

    pub fn cache(&self, remote: &ClusterName, object: &ObjectName) -> String {
        format!(
            "{}{}",
            self.cache_prefix(object.kind(), remote),
            object.path()
        )
    }

    pub fn cache_synced(&self, remote: &ClusterName, kind: Kind) -> String {
        format!("{}{kind}", self.cache_synced_prefix(remote))
    }

    /// All of a remote's cache markers (ends in '/').
    pub fn cache_synced_prefix(&self, remote: &ClusterName) -> String {
        format!("{}/cache/synced/{remote}/", self.root)
    }

    /// Objects published for the local agents only (ends in '/').
    pub fn local_prefix(&self, kind: Kind, cluster: &ClusterName) -> String {
        format!("{}/local/{kind}/{SCHEMA_VERSION}/{cluster}/", self.root)
    }

    pub fn local(&self, cluster: &ClusterName, object: &ObjectName) -> String {
        format!(
            "{}{}",
            self.local_prefix(object.kind(), cluster),
            object.path()
        )
    }

    /// Persistent identity allocations of a cluster (ends in '/'); not under any lease.
    pub fn identity_allocation_prefix(&self, cluster: &ClusterName) -> String {
        format!("{}/allocations/identities/{cluster}/", self.root)
    }

    pub fn identity_allocation(&self, cluster: &ClusterName, id: u32) -> String {
        format!("{}{id}", self.identity_allocation_prefix(cluster))
    }

    /// Clusterset VIPs of a cluster (ends in '/'); under `local/`, so peers cannot read them.
    pub fn clusterset_vip_prefix(&self, cluster: &ClusterName) -> String {
        format!(
            "{}/local/{CLUSTERSET_VIPS}/{SCHEMA_VERSION}/{cluster}/",
            self.root
        )
    }

    pub fn clusterset_vip(&self, cluster: &ClusterName, namespace: &str, name: &str) -> String {
        format!("{}{namespace}/{name}", self.clusterset_vip_prefix(cluster))
    }

    /// Every remote cluster's mirror of one kind (ends in '/').
    pub fn cache_kind_prefix(&self, kind: Kind) -> String {
        format!("{}/cache/{kind}/{SCHEMA_VERSION}/", self.root)
    }

    /// Every remote cluster's cache markers (ends in '/').
    pub fn cache_synced_root(&self) -> String {
        format!("{}/cache/synced/", self.root)
    }

    /// Everything mirrored from remote clusters (ends in '/').
    pub fn cache_root(&self) -> String {
        format!("{}/cache/", self.root)
    }

    /// Builds the string form of a parsed key.
    pub fn key(&self, key: &Key) -> String {
        match key {
            Key::ClusterConfig(c) => self.cluster_config(c),
            Key::Heartbeat => self.heartbeat(),
            Key::Synced { cluster, kind } => self.synced(cluster, *kind),
            Key::State { cluster, object } => self.state(cluster, object),
            Key::Cache { remote, object } => self.cache(remote, object),
            Key::CacheSynced { remote, kind } => self.cache_synced(remote, *kind),
            Key::Local { cluster, object } => self.local(cluster, object),
            Key::IdentityAllocation { cluster, id } => self.identity_allocation(cluster, *id),
            Key::ClustersetVip {
                cluster,
                namespace,
                name,
            } => self.clusterset_vip(cluster, namespace, name),
        }
    }

    pub fn parse(&self, key: &str) -> Result<Key, KeyError> {
        let rest = key
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| KeyError::NotUnderRoot {
                key: key.to_owned(),
                root: self.root.clone(),
            })?;
        let unknown = || KeyError::UnknownLayout(key.to_owned());
        let cluster = |s: &str| {
            ClusterName::new(s).map_err(|source| KeyError::BadCluster {
                key: key.to_owned(),
                source,
            })
        };
        let kind = |s: &str| {
            Kind::parse(s).ok_or_else(|| KeyError::UnknownKind {
                key: key.to_owned(),
                kind: s.to_owned(),
            })
        };

        if rest == ".heartbeat" {
            return Ok(Key::Heartbeat);
        }
        let (head, tail) = rest.split_once('/').ok_or_else(unknown)?;
        match head {
            "cluster-config" => Ok(Key::ClusterConfig(cluster(tail)?)),
            "synced" => {
                let (c, k) = tail.split_once('/').ok_or_else(unknown)?;
                Ok(Key::Synced {
                    cluster: cluster(c)?,
                    kind: kind(k)?,
                })
            }
            "state" => {
                let (cluster_name, object) = self.parse_versioned(tail, key)?;
                Ok(Key::State {
                    cluster: cluster(cluster_name)?,
                    object,
                })
            }
            "cache" => {
                if let Some(synced) = tail.strip_prefix("synced/") {
                    let (c, k) = synced.split_once('/').ok_or_else(unknown)?;
                    return Ok(Key::CacheSynced {
                        remote: cluster(c)?,
                        kind: kind(k)?,
                    });
                }
                let (remote, object) = self.parse_versioned(tail, key)?;
                Ok(Key::Cache {
                    remote: cluster(remote)?,
                    object,
                })
            }
            "local" => {
                if let Some(rest) = tail
                    .strip_prefix(CLUSTERSET_VIPS)
                    .and_then(|r| r.strip_prefix('/'))
                {
                    let (version, rest) = rest.split_once('/').ok_or_else(unknown)?;
                    if version != SCHEMA_VERSION {
                        return Err(KeyError::UnknownSchemaVersion {
                            key: key.to_owned(),
                            found: version.to_owned(),
                        });
                    }
                    let (c, service) = rest.split_once('/').ok_or_else(unknown)?;
                    let ObjectName::Service { namespace, name } =
                        ObjectName::parse(Kind::Services, service, key)?
                    else {
                        return Err(unknown());
                    };
                    return Ok(Key::ClustersetVip {
                        cluster: cluster(c)?,
                        namespace,
                        name,
                    });
                }
                let (cluster_name, object) = self.parse_versioned(tail, key)?;
                Ok(Key::Local {
                    cluster: cluster(cluster_name)?,
                    object,
                })
            }
            "allocations" => {
                let rest = tail.strip_prefix("identities/").ok_or_else(unknown)?;
                let (c, id) = rest.split_once('/').ok_or_else(unknown)?;
                let ObjectName::Identity(id) = ObjectName::parse(Kind::Identities, id, key)? else {
                    return Err(unknown());
                };
                Ok(Key::IdentityAllocation {
                    cluster: cluster(c)?,
                    id,
                })
            }
            _ => Err(unknown()),
        }
    }

    /// Parses `<kind>/<version>/<cluster>/<object...>`, returning the cluster segment unparsed.
    fn parse_versioned<'a>(
        &self,
        tail: &'a str,
        key: &str,
    ) -> Result<(&'a str, ObjectName), KeyError> {
        let mut parts = tail.splitn(4, '/');
        let (Some(kind_s), Some(version), Some(cluster), Some(object)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyError::UnknownLayout(key.to_owned()));
        };
        let kind = Kind::parse(kind_s).ok_or_else(|| KeyError::UnknownKind {
            key: key.to_owned(),
            kind: kind_s.to_owned(),
        })?;
        if version != SCHEMA_VERSION {
            return Err(KeyError::UnknownSchemaVersion {
                key: key.to_owned(),
                found: version.to_owned(),
            });
        }
        Ok((cluster, ObjectName::parse(kind, object, key)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn east() -> ClusterName {
        ClusterName::new("east").unwrap()
    }

    #[test]
    fn every_layout_round_trips() {
        let s = KeySchema::default();
        let keys = [
            Key::ClusterConfig(east()),
            Key::Heartbeat,
            Key::Synced {
                cluster: east(),
                kind: Kind::Services,
            },
            Key::State {
                cluster: east(),
                object: ObjectName::Service {
                    namespace: "default".into(),
                    name: "echo".into(),
                },
            },
            Key::State {
                cluster: east(),
                object: ObjectName::Endpoint("10.0.0.1".parse().unwrap()),
            },
            Key::State {
                cluster: east(),
                object: ObjectName::Endpoint("fd00::1".parse().unwrap()),
            },
            Key::State {
                cluster: east(),
                object: ObjectName::Identity(65537),
            },
            Key::State {
                cluster: east(),
                object: ObjectName::Node("node-1".into()),
            },
            Key::Cache {
                remote: east(),
                object: ObjectName::Agent("node-1".into()),
            },
            Key::CacheSynced {
                remote: east(),
                kind: Kind::Nodes,
            },
            Key::Local {
                cluster: east(),
                object: ObjectName::Service {
                    namespace: "default".into(),
                    name: "private".into(),
                },
            },
            Key::IdentityAllocation {
                cluster: east(),
                id: 256,
            },
            Key::ClustersetVip {
                cluster: east(),
                namespace: "default".into(),
                name: "remote-only".into(),
            },
        ];
        for key in keys {
            let text = s.key(&key);
            assert_eq!(s.parse(&text).unwrap(), key, "{text}");
        }
    }

    #[test]
    fn paths_match_the_design() {
        let s = KeySchema::default();
        let svc = ObjectName::Service {
            namespace: "default".into(),
            name: "echo".into(),
        };
        assert_eq!(
            s.state(&east(), &svc),
            "clustermesh/state/services/v1/east/default/echo"
        );
        assert_eq!(
            s.cache(&east(), &svc),
            "clustermesh/cache/services/v1/east/default/echo"
        );
        assert_eq!(
            s.synced(&east(), Kind::Endpoints),
            "clustermesh/synced/east/endpoints"
        );
        assert_eq!(s.heartbeat(), "clustermesh/.heartbeat");
        assert_eq!(s.cluster_config(&east()), "clustermesh/cluster-config/east");
        assert_eq!(
            s.clusterset_vip(&east(), "demo", "echo"),
            "clustermesh/local/clusterset-vips/v1/east/demo/echo"
        );
        assert!(
            s.clusterset_vip(&east(), "demo", "echo")
                .starts_with(&s.clusterset_vip_prefix(&east()))
        );
        let custom = KeySchema::new("cilium").unwrap();
        assert_eq!(
            custom.state_prefix(Kind::Services, &east()),
            "cilium/state/services/v1/east/"
        );
    }

    #[test]
    fn malformed_keys_are_rejected_with_a_reason() {
        let s = KeySchema::default();
        assert!(matches!(
            s.parse("other/state/services/v1/east/default/echo"),
            Err(KeyError::NotUnderRoot { .. })
        ));
        assert!(matches!(
            s.parse("clustermesh/state/services/v2/east/default/echo"),
            Err(KeyError::UnknownSchemaVersion { found, .. }) if found == "v2"
        ));
        assert!(matches!(
            s.parse("clustermesh/state/pods/v1/east/x"),
            Err(KeyError::UnknownKind { .. })
        ));
        assert!(matches!(
            s.parse("clustermesh/state/services/v1/East/default/echo"),
            Err(KeyError::BadCluster { .. })
        ));
        for bad in [
            "clustermesh/state/services/v1/east/default",
            "clustermesh/state/services/v1/east/default/echo/x",
            "clustermesh/state/endpoints/v1/east/10.0.0.256",
            "clustermesh/state/endpoints/v1/east/fd00:0::1",
            "clustermesh/state/identities/v1/east/007",
            "clustermesh/state/identities/v1/east/-1",
            "clustermesh/state/nodes/v1/east/../../etc",
            "clustermesh/local/clusterset-vips/v1/east/demo",
            "clustermesh/local/clusterset-vips/v1/east/demo/Echo",
            "clustermesh/local/clusterset-vips/v1/east/demo/echo/x",
        ] {
            assert!(
                matches!(s.parse(bad), Err(KeyError::BadObjectName { .. })),
                "{bad}: {:?}",
                s.parse(bad)
            );
        }
        assert!(matches!(
            s.parse("clustermesh/local/clusterset-vips/v2/east/demo/echo"),
            Err(KeyError::UnknownSchemaVersion { .. })
        ));
        assert!(matches!(
            s.parse("clustermesh/local/clusterset-vips/v1/EAST/demo/echo"),
            Err(KeyError::BadCluster { .. })
        ));
        assert!(matches!(
            s.parse("clustermesh/nothing"),
            Err(KeyError::UnknownLayout(_))
        ));
        assert!(KeySchema::new("a//b").is_err());
        assert!(KeySchema::new("/a").is_err());
    }
}
