//! `clustermesh connect` and `disconnect`: each side gets a peer entry for the other in its
//! peers directory (`store/src/peers.rs`): in Kubernetes the `clustermesh-peers` Secret, in
//! the lab `<state>/clusters/<c>/peers/`. An entry holds the peer's etcd endpoints, the peer's
//! CA, and a read-only client certificate (CN `remote`) that the peer's CA issued for us; no
//! CA is shared between clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::kube_target::KubeTarget;
use crate::manifests::{
    CA_KEY_SECRET, CONFIG_MAP, DEFAULT_NAMESPACE, ETCD_PORT, ETCD_SERVICE, MeshSettings,
    PEERS_SECRET, ServiceType,
};
use crate::pki::{Ca, CertInfo, KeyPairPem};
use crate::target::{ContextName, TargetOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnectionMode {
    /// The source and each destination mirror each other.
    Bidirectional,
    /// Only the source mirrors the destinations (they do not see the source).
    Unicast,
    /// Every pair among the source and all destinations, both ways.
    Mesh,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub targets: crate::target::TargetOptions,
    /// The source cluster: a kubeconfig context, or lab:<cluster> [default: the current
    /// context].
    #[arg(long)]
    pub context: Option<String>,
    /// The cluster(s) to connect to (same forms as --context). Repeat for several.
    #[arg(long = "destination-context", required = true, value_name = "CONTEXT")]
    pub destinations: Vec<String>,
    #[arg(long, value_enum, default_value_t = ConnectionMode::Bidirectional)]
    pub connection_mode: ConnectionMode,
    /// Namespace the mesh runs in, in every cluster.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct DisconnectArgs {
    #[command(flatten)]
    pub targets: crate::target::TargetOptions,
    /// The source cluster [default: the current context].
    #[arg(long)]
    pub context: Option<String>,
    /// The cluster(s) to disconnect from. Repeat for several.
    #[arg(long = "destination-context", required = true, value_name = "CONTEXT")]
    pub destinations: Vec<String>,
    /// Namespace the mesh runs in, in every cluster.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// The ordered (from, to) pairs: `from` gets a peer entry for `to`.
fn directed_pairs(count: usize, mode: ConnectionMode) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    match mode {
        ConnectionMode::Unicast => pairs.extend((1..count).map(|d| (0, d))),
        ConnectionMode::Bidirectional => {
            for d in 1..count {
                pairs.push((0, d));
                pairs.push((d, 0));
            }
        }
        ConnectionMode::Mesh => {
            for a in 0..count {
                for b in 0..count {
                    if a != b {
                        pairs.push((a, b));
                    }
                }
            }
        }
    }
    pairs
}

/// Contexts → targets, all of one kind.
enum Targets {
    Lab(Vec<String>),
    Kube(Vec<Option<String>>),
}

fn targets(context: Option<&str>, destinations: &[String]) -> Result<Targets> {
    let mut names = vec![ContextName::parse(context)];
    names.extend(destinations.iter().map(|d| ContextName::parse(Some(d))));
    let mut seen = BTreeSet::new();
    for name in &names {
        if !seen.insert(name.to_string()) {
            bail!(
                "{name} is given twice; a cluster cannot be connected to itself, give each context once"
            );
        }
    }
    if names.iter().all(|n| matches!(n, ContextName::Lab(_))) {
        Ok(Targets::Lab(
            names
                .into_iter()
                .filter_map(|n| match n {
                    ContextName::Lab(c) => Some(c),
                    ContextName::Kube(_) => None,
                })
                .collect(),
        ))
    } else if names.iter().all(|n| matches!(n, ContextName::Kube(_))) {
        Ok(Targets::Kube(
            names
                .into_iter()
                .filter_map(|n| match n {
                    ContextName::Kube(c) => Some(c),
                    ContextName::Lab(_) => None,
                })
                .collect(),
        ))
    } else {
        bail!(
            "a lab cluster cannot be connected to a Kubernetes cluster (the lab's etcds live on private networks of this machine); connect lab:<cluster> contexts with each other only"
        )
    }
}

/// Refuses two clusters with one name or one ID.
pub(crate) fn check_unique(clusters: &[(String, u16, String)]) -> Result<()> {
    for (i, (name_a, id_a, where_a)) in clusters.iter().enumerate() {
        for (name_b, id_b, where_b) in &clusters[i + 1..] {
            if name_a == name_b {
                bail!(
                    "{where_a} and {where_b} are both named {name_a:?}; names must be unique in a mesh: `clustermesh disable` one of them and enable it again with another --cluster-name"
                );
            }
            if id_a == id_b {
                bail!(
                    "{where_a} ({name_a}) and {where_b} ({name_b}) both have cluster ID {id_a}; IDs must be unique in a mesh: `clustermesh disable` one of them and enable it again with another --cluster-id"
                );
            }
        }
    }
    Ok(())
}

/// One enabled Kubernetes cluster, as `connect` needs it.
pub struct KubeCluster {
    pub target: KubeTarget,
    pub settings: MeshSettings,
    pub ca: Ca,
    pub endpoints: Vec<String>,
    /// The peers Secret's data (decoded); empty if there is none.
    pub peers: BTreeMap<String, String>,
}

impl KubeCluster {
    pub async fn read(target: KubeTarget, namespace: &str) -> Result<KubeCluster> {
        let context = target.context.clone();
        let not_enabled = || {
            anyhow::anyhow!(
                "the cluster of context {context} has no mesh in namespace {namespace} (no ConfigMap {CONFIG_MAP}); run `clustermesh enable --context {context} --cluster-name <name> --cluster-id <id>` first"
            )
        };
        let config = target
            .get("v1", "ConfigMap", namespace, CONFIG_MAP)
            .await?
            .ok_or_else(not_enabled)?;
        let data: BTreeMap<String, String> =
            serde_json::from_value(config["data"].clone()).unwrap_or_default();
        let get = |k: &str| data.get(k).cloned().unwrap_or_default();
        let id: u16 = get("cluster-id").parse().map_err(|_| {
            anyhow::anyhow!(
                "the ConfigMap {namespace}/{CONFIG_MAP} of context {context} has no valid cluster-id; run `clustermesh enable --context {context}` again to repair it"
            )
        })?;
        let ca_data = target
            .secret_data(namespace, CA_KEY_SECRET)
            .await?
            .unwrap_or_default();
        let (Some(cert), Some(key)) = (ca_data.get("ca.crt"), ca_data.get("ca.key")) else {
            bail!(
                "context {context} has no CA key (Secret {namespace}/{CA_KEY_SECRET}), so no peer certificate can be issued from it; if the mesh was set up by Terraform, connect with the Terraform connect module, else run `clustermesh enable --context {context}` again"
            );
        };
        let ca = Ca::load(
            KeyPairPem {
                cert: cert.clone(),
                key: key.clone(),
            },
            &format!("Secret {namespace}/{CA_KEY_SECRET} of context {context}"),
        )?;
        let service = target
            .get("v1", "Service", namespace, ETCD_SERVICE)
            .await?
            .unwrap_or(Value::Null);
        let service_type =
            ServiceType::parse(&get("service-type")).unwrap_or(ServiceType::LoadBalancer);
        let advertised: Vec<String> = get("advertised-addresses")
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        let load_balancer = crate::enable::load_balancer_addresses(&service);
        let (hosts, port) = match service_type {
            ServiceType::LoadBalancer => {
                let mut hosts = load_balancer.clone();
                hosts.extend(advertised.iter().cloned());
                (hosts, ETCD_PORT)
            }
            ServiceType::NodePort => {
                let port = service["spec"]["ports"][0]["nodePort"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok());
                let Some(port) = port else {
                    bail!(
                        "the NodePort Service {namespace}/{ETCD_SERVICE} of context {context} has no node port yet; wait a moment and run connect again"
                    );
                };
                (advertised.clone(), port)
            }
        };
        if hosts.is_empty() {
            bail!(
                "peers cannot reach the etcd of context {context}: {}; wait for it, or `clustermesh enable --context {context} --service-type NodePort --advertised-address <node address>`",
                match service_type {
                    ServiceType::LoadBalancer => format!(
                        "its LoadBalancer Service {namespace}/{ETCD_SERVICE} has no address yet"
                    ),
                    ServiceType::NodePort => "no --advertised-address was given".to_string(),
                }
            );
        }
        let endpoints = hosts
            .iter()
            .map(|h| {
                if h.contains(':') {
                    format!("https://[{h}]:{port}")
                } else {
                    format!("https://{h}:{port}")
                }
            })
            .collect();
        let peers = target
            .secret_data(namespace, PEERS_SECRET)
            .await?
            .unwrap_or_default();
        let settings = MeshSettings {
            cluster_name: get("cluster-name"),
            cluster_id: id,
            namespace: namespace.to_string(),
            trust_domain: data
                .get("trust-domain")
                .cloned()
                .unwrap_or_else(|| "clustermesh.local".into()),
            service_type,
            node_port: None,
            advertised_addresses: advertised,
            load_balancer_addresses: load_balancer,
            image: get("image"),
            etcd_image: get("etcd-image"),
            agent_priority_class: get("agent-priority-class"),
        };
        Ok(KubeCluster {
            target,
            settings,
            ca,
            endpoints,
            peers,
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.cluster_name
    }

    /// The peers configured in the Secret: name → ID.
    pub fn configured_peers(&self) -> BTreeMap<String, u16> {
        self.peers
            .iter()
            .filter(|(k, _)| k.ends_with(".yaml"))
            .filter_map(|(_, v)| serde_yaml_ng::from_str::<Value>(v).ok())
            .filter_map(|v| {
                Some((
                    v["name"].as_str()?.to_string(),
                    u16::try_from(v["id"].as_u64()?).ok()?,
                ))
            })
            .collect()
    }

    /// Writes the peers Secret (server-side apply of the whole Secret, which we own).
    async fn write_peers(&self) -> Result<crate::kube_target::Applied> {
        let mut data = serde_json::Map::new();
        for (k, v) in &self.peers {
            data.insert(
                k.clone(),
                serde_json::to_value(k8s_openapi::ByteString(v.as_bytes().to_vec()))?,
            );
        }
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": PEERS_SECRET,
                "namespace": self.settings.namespace,
                "labels": {
                    "app.kubernetes.io/part-of": "clustermesh",
                    "app.kubernetes.io/managed-by": "clustermesh-cli",
                    "clustermesh.io/cluster": self.settings.cluster_name,
                },
            },
            "type": "Opaque",
            "data": data,
        });
        Ok(self.target.apply(&secret).await?)
    }
}

/// The files of `peer`'s entry in a peers directory (the Terraform connect module's names).
fn peer_files(peer: &str) -> [String; 5] {
    [
        format!("{peer}.yaml"),
        format!("{peer}-ca.crt"),
        format!("{peer}-client.crt"),
        format!("{peer}-client.key"),
        format!("{peer}-tunnel-ca.crt"),
    ]
}

/// Puts `to`'s entry into `from`'s peers, keeping a client certificate that still fits.
fn add_peer(from: &mut KubeCluster, to: &KubeCluster) -> Result<()> {
    let peer = to.name().to_string();
    let spec = to.settings.remote_spec(from.name());
    let [yaml, ca, cert, key, tunnel_ca] = peer_files(&peer);
    let kept = match (
        from.peers.get(&ca),
        from.peers.get(&cert),
        from.peers.get(&key),
    ) {
        (Some(old_ca), Some(old_cert), Some(old_key)) if *old_ca == to.ca.pem.cert => {
            CertInfo::parse(old_cert, &cert)
                .ok()
                .filter(|info| info.still_fits(&spec, SystemTime::now()))
                .map(|_| KeyPairPem {
                    cert: old_cert.clone(),
                    key: old_key.clone(),
                })
        }
        _ => None,
    };
    let client = match kept {
        Some(pem) => pem,
        None => to.ca.issue(&spec)?,
    };
    let entry = json!({
        "name": peer,
        "id": to.settings.cluster_id,
        "endpoints": to.endpoints,
        "ca": ca,
        "cert": cert,
        "key": key,
        "tunnel_ca": tunnel_ca,
    });
    let text = format!(
        "# written by `clustermesh connect`: {} mirrors {peer}\n{}",
        from.name(),
        serde_yaml_ng::to_string(&entry)?
    );
    from.peers.insert(yaml, text);
    from.peers.insert(ca, to.ca.pem.cert.clone());
    from.peers.insert(cert, client.cert);
    from.peers.insert(key, client.key);
    from.peers.insert(tunnel_ca, to.ca.pem.cert.clone());
    Ok(())
}

pub async fn connect(options: &TargetOptions, args: &ConnectArgs) -> Result<ExitCode> {
    let pairs = directed_pairs(1 + args.destinations.len(), args.connection_mode);
    match targets(args.context.as_deref(), &args.destinations)? {
        Targets::Lab(clusters) => crate::lab_target::connect(options, &clusters, &pairs),
        Targets::Kube(contexts) => {
            let mut clusters = Vec::new();
            for context in &contexts {
                let target = options.kube(context.as_deref()).await?;
                clusters.push(KubeCluster::read(target, &args.namespace).await?);
            }
            let ids: Vec<(String, u16, String)> = clusters
                .iter()
                .map(|c| {
                    (
                        c.name().to_string(),
                        c.settings.cluster_id,
                        format!("context {}", c.target.context),
                    )
                })
                .collect();
            check_unique(&ids)?;
            // A peer one side already has must not clash with the clusters connected now.
            for (from, to) in &pairs {
                let (from, to) = (&clusters[*from], &clusters[*to]);
                for (name, id) in from.configured_peers() {
                    let same_ca =
                        from.peers.get(&format!("{name}-ca.crt")) == Some(&to.ca.pem.cert);
                    if name == to.name() && (id != to.settings.cluster_id || !same_ca) {
                        bail!(
                            "context {} is already connected to another cluster named {name} (ID {id}, another CA) than the one of context {}; names must be unique in a mesh: disconnect the old {name} first, or enable one of them under another --cluster-name",
                            from.target.context,
                            to.target.context
                        );
                    }
                    if name != to.name() && id == to.settings.cluster_id {
                        bail!(
                            "context {} is already connected to {name} with cluster ID {id}, the ID of {} (context {}); IDs must be unique in a mesh: disconnect {name} first, or give one of them another --cluster-id",
                            from.target.context,
                            to.name(),
                            to.target.context
                        );
                    }
                }
            }
            for (from, to) in &pairs {
                let to_cluster = clusters_snapshot(&clusters[*to]);
                add_peer(&mut clusters[*from], &to_cluster)?;
            }
            let sources: BTreeSet<usize> = pairs.iter().map(|(f, _)| *f).collect();
            for i in sources {
                let applied = clusters[i].write_peers().await?;
                println!(
                    "Secret {}/{PEERS_SECRET} of context {} {}",
                    args.namespace,
                    clusters[i].target.context,
                    applied.as_str()
                );
            }
            for (from, to) in &pairs {
                println!(
                    "{} → {}: {} mirrors {} (endpoints {})",
                    clusters[*from].target.context,
                    clusters[*to].target.context,
                    clusters[*from].name(),
                    clusters[*to].name(),
                    clusters[*to].endpoints.join(", ")
                );
            }
            println!(
                "connected; check with `clustermesh status --context {} --wait`",
                clusters[0].target.context
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `add_peer` reads of the destination (so the source can be borrowed mutably).
fn clusters_snapshot(c: &KubeCluster) -> KubeCluster {
    KubeCluster {
        target: c.target.clone(),
        settings: c.settings.clone(),
        ca: Ca::load(c.ca.pem.clone(), "the CA").expect("a CA that loaded once loads again"),
        endpoints: c.endpoints.clone(),
        peers: BTreeMap::new(),
    }
}

pub async fn disconnect(options: &TargetOptions, args: &DisconnectArgs) -> Result<ExitCode> {
    let pairs = directed_pairs(1 + args.destinations.len(), ConnectionMode::Bidirectional);
    match targets(args.context.as_deref(), &args.destinations)? {
        Targets::Lab(clusters) => crate::lab_target::disconnect(options, &clusters),
        Targets::Kube(contexts) => {
            let mut clusters = Vec::new();
            for context in &contexts {
                let target = options.kube(context.as_deref()).await?;
                clusters.push(KubeCluster::read(target, &args.namespace).await?);
            }
            let mut any = false;
            for (from, to) in &pairs {
                let peer = clusters[*to].name().to_string();
                let from = &mut clusters[*from];
                let mut removed = false;
                for file in peer_files(&peer) {
                    removed |= from.peers.remove(&file).is_some();
                }
                if removed {
                    any = true;
                    from.write_peers().await?;
                    println!("{}: no longer mirrors {peer}", from.target.context);
                }
            }
            if !any {
                println!("not connected; nothing changed");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Used by `disable` and `status`: the namespace's peers Secret holds entries.
pub fn has_peers(data: &BTreeMap<String, String>) -> Vec<String> {
    data.keys()
        .filter_map(|k| k.strip_suffix(".yaml"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_per_mode() {
        assert_eq!(directed_pairs(2, ConnectionMode::Unicast), vec![(0, 1)]);
        assert_eq!(
            directed_pairs(3, ConnectionMode::Bidirectional),
            vec![(0, 1), (1, 0), (0, 2), (2, 0)]
        );
        assert_eq!(directed_pairs(3, ConnectionMode::Mesh).len(), 6);
    }

    #[test]
    fn clashes_are_refused_with_what_to_do() {
        let a = ("east".to_string(), 1, "context a".to_string());
        let b = ("west".to_string(), 1, "context b".to_string());
        let err = check_unique(&[a.clone(), b]).unwrap_err().to_string();
        assert!(err.contains("both have cluster ID 1"), "{err}");
        assert!(err.contains("--cluster-id"), "{err}");
        let c = ("east".to_string(), 2, "context c".to_string());
        let err = check_unique(&[a, c]).unwrap_err().to_string();
        assert!(err.contains("are both named \"east\""), "{err}");
    }
}
