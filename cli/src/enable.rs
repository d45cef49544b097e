//! `clustermesh enable` and `clustermesh manifests`: both plan the same objects (settings +
//! certificates, reusing what the cluster already has), one applies them, the other prints them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use clustermesh_model::ClusterName;
use serde_json::Value;

use crate::kube_target::KubeTarget;
use crate::manifests::{
    self, APISERVER_SECRET, CA_KEY_SECRET, CONFIG_MAP, Certificates, DEFAULT_NAMESPACE,
    ETCD_SERVER_SECRET, ETCD_SERVICE, MeshSettings, ServiceType,
};
use crate::pki::{Ca, CertInfo, KeyPairPem, LeafSpec};
use crate::target::{ContextName, TargetOptions};

/// What decides the objects of one cluster (shared by `enable` and `manifests`).
#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    /// This cluster's name in the mesh: lower-case letters, digits and '-', at most 32
    /// characters, unique in the mesh.
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// This cluster's ID in the mesh, 1..=255, unique in the mesh (identities carry it).
    #[arg(long)]
    pub cluster_id: Option<u16>,
    /// How peers reach this cluster's etcd (port 2379) [default: as enabled before, else
    /// LoadBalancer].
    #[arg(long, value_enum)]
    pub service_type: Option<ServiceType>,
    /// With NodePort: the node port (30000..=32767) [default: chosen by Kubernetes].
    #[arg(long)]
    pub node_port: Option<u16>,
    /// A host name or IP peers dial to reach etcd (node addresses with NodePort); goes into
    /// the etcd certificate. Repeat for several [default: as enabled before].
    #[arg(long = "advertised-address", value_name = "ADDRESS")]
    pub advertised_addresses: Vec<String>,
    /// Namespace the mesh runs in.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// SPIFFE trust domain; the same in every cluster of a mesh [default: as enabled before,
    /// else clustermesh.local].
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Image holding the clustermesh-apiserver and clustermesh-agent binaries [default: as
    /// enabled before, else ghcr.io/clustermesh/clustermesh:0.1.0].
    #[arg(long)]
    pub image: Option<String>,
    /// Image of the etcd beside the apiserver [default: as enabled before, else
    /// registry.k8s.io/etcd:3.5.21-0].
    #[arg(long)]
    pub etcd_image: Option<String>,
    /// Priority class of the node agents ("" for none; some clusters allow
    /// system-node-critical only in kube-system) [default: as enabled before, else
    /// system-node-critical].
    #[arg(long)]
    pub agent_priority_class: Option<String>,
    /// Bring your own cluster CA: its PEM certificate (with --ca-key) [default: the CA the
    /// cluster already has, else a new one].
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The PEM private key of --ca-cert.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EnableArgs {
    #[command(flatten)]
    pub targets: crate::target::TargetOptions,
    /// The cluster: a kubeconfig context, or lab:<cluster> [default: the current context].
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// With LoadBalancer: how long to wait for the load balancer's address, which goes into
    /// the etcd certificate (0: do not wait; run enable again once it has one).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub wait_for_address: Duration,
}

#[derive(Debug, Args)]
pub struct ManifestsArgs {
    #[command(flatten)]
    pub targets: crate::target::TargetOptions,
    /// Read the certificates and load balancer address from this cluster (read-only), so that
    /// the output equals what `enable` applies there. Without it, a new CA (or --ca-cert) is
    /// used. (Nodes need nothing here: each agent gets its certificate from the apiserver.)
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// What the cluster already has, read back so that `enable` twice changes nothing.
#[derive(Debug, Default)]
struct Existing {
    config: Option<BTreeMap<String, String>>,
    ca: Option<KeyPairPem>,
    /// Secret name → data.
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    load_balancer: Vec<String>,
}

async fn read_existing(target: &KubeTarget, namespace: &str) -> Result<Existing> {
    let mut existing = Existing::default();
    if let Some(cm) = target.get("v1", "ConfigMap", namespace, CONFIG_MAP).await? {
        existing.config = serde_json::from_value(cm["data"].clone()).ok();
    }
    if let Some(data) = target.secret_data(namespace, CA_KEY_SECRET).await?
        && let (Some(cert), Some(key)) = (data.get("ca.crt"), data.get("ca.key"))
    {
        existing.ca = Some(KeyPairPem {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    for name in [ETCD_SERVER_SECRET, APISERVER_SECRET] {
        if let Some(data) = target.secret_data(namespace, name).await? {
            existing.secrets.insert(name.to_string(), data);
        }
    }
    if let Some(service) = target.get("v1", "Service", namespace, ETCD_SERVICE).await? {
        existing.load_balancer = load_balancer_addresses(&service);
    }
    Ok(existing)
}

/// The addresses a Service's load balancer got (IPs and host names).
pub fn load_balancer_addresses(service: &Value) -> Vec<String> {
    service["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| [i["ip"].as_str(), i["hostname"].as_str()])
        .flatten()
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// Settings from the arguments, completed from what the cluster says it is.
fn settings(mesh: &MeshArgs, existing: &Existing) -> Result<MeshSettings> {
    let config = existing.config.clone().unwrap_or_default();
    let name = match (&mesh.cluster_name, config.get("cluster-name")) {
        (Some(given), Some(had)) if given != had => bail!(
            "this cluster is already enabled as {had:?}, not {given:?}; run `clustermesh disable` first to rename it, or drop --cluster-name"
        ),
        (Some(given), _) => given.clone(),
        (None, Some(had)) => had.clone(),
        (None, None) => bail!(
            "--cluster-name is required the first time: the cluster's name in the mesh (lower-case letters, digits and '-')"
        ),
    };
    ClusterName::new(&name).map_err(|e| {
        anyhow::anyhow!("--cluster-name {name:?} is not a valid cluster name ({e}); use lower-case letters, digits and '-', at most 32 characters")
    })?;
    let had_id = config.get("cluster-id").and_then(|i| i.parse::<u16>().ok());
    let id = match (mesh.cluster_id, had_id) {
        (Some(given), Some(had)) if given != had => bail!(
            "this cluster is already enabled with cluster ID {had}, not {given}; run `clustermesh disable` first to change it, or drop --cluster-id"
        ),
        (Some(given), _) => given,
        (None, Some(had)) => had,
        (None, None) => bail!(
            "--cluster-id is required the first time: a number from 1 to 255, unique in the mesh"
        ),
    };
    if !(1..=255).contains(&id) {
        bail!(
            "--cluster-id {id} is out of range; pick a number from 1 to 255 that no other cluster of the mesh uses"
        );
    }
    if let Some(port) = mesh.node_port
        && !(30000..=32767).contains(&port)
    {
        bail!("--node-port {port} is outside the NodePort range; pick one in 30000..=32767");
    }
    let had = |key: &str| config.get(key).filter(|v| !v.is_empty()).cloned();
    let service_type = match mesh.service_type {
        Some(t) => t,
        None => had("service-type")
            .and_then(|t| ServiceType::parse(&t))
            .unwrap_or(ServiceType::LoadBalancer),
    };
    let advertised_addresses = if mesh.advertised_addresses.is_empty() {
        had("advertised-addresses")
            .map(|a| a.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    } else {
        mesh.advertised_addresses.clone()
    };
    let node_port = mesh
        .node_port
        .or_else(|| had("node-port").and_then(|p| p.parse().ok()));
    Ok(MeshSettings {
        cluster_name: name,
        cluster_id: id,
        namespace: mesh.namespace.clone(),
        trust_domain: mesh
            .trust_domain
            .clone()
            .or_else(|| had("trust-domain"))
            .unwrap_or_else(|| "clustermesh.local".into()),
        service_type,
        node_port,
        advertised_addresses,
        load_balancer_addresses: existing.load_balancer.clone(),
        image: mesh
            .image
            .clone()
            .or_else(|| had("image"))
            .unwrap_or_else(|| "ghcr.io/clustermesh/clustermesh:0.1.0".into()),
        etcd_image: mesh
            .etcd_image
            .clone()
            .or_else(|| had("etcd-image"))
            .unwrap_or_else(|| "registry.k8s.io/etcd:3.5.21-0".into()),
        agent_priority_class: mesh
            .agent_priority_class
            .clone()
            .or_else(|| config.get("agent-priority-class").cloned())
            .unwrap_or_else(|| "system-node-critical".into()),
    })
}

/// The certificates: the user's CA, else the cluster's, else a new one; each leaf kept while it
/// still fits its spec and was issued by that CA, else issued anew.
fn certificates(
    mesh: &MeshArgs,
    settings: &MeshSettings,
    existing: &Existing,
) -> Result<Certificates> {
    let ca = match (&mesh.ca_cert, &mesh.ca_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| {
                    format!("cannot read {}; pass a readable PEM file", p.display())
                })
            };
            Ca::load(
                KeyPairPem {
                    cert: read(cert)?,
                    key: read(key)?,
                },
                &format!("--ca-cert {}", cert.display()),
            )?
        }
        _ => match &existing.ca {
            Some(pem) => Ca::load(
                pem.clone(),
                &format!("the Secret {}/{CA_KEY_SECRET}", settings.namespace),
            )?,
            None => Ca::generate(&settings.cluster_name)?,
        },
    };
    let now = SystemTime::now();
    let keep_or_issue = |secret: &str, cert_key: &str, key_key: &str, spec: &LeafSpec| {
        let data = existing.secrets.get(secret);
        let kept = data.and_then(|d| {
            let same_ca = d.get("ca.crt") == Some(&ca.pem.cert);
            let cert = d.get(cert_key)?;
            let key = d.get(key_key)?;
            let info = CertInfo::parse(cert, secret).ok()?;
            (same_ca && info.still_fits(spec, now)).then(|| KeyPairPem {
                cert: cert.clone(),
                key: key.clone(),
            })
        });
        match kept {
            Some(pem) => Ok(pem),
            None => ca.issue(spec),
        }
    };
    let etcd_server = keep_or_issue(
        ETCD_SERVER_SECRET,
        "tls.crt",
        "tls.key",
        &settings.etcd_server_spec(),
    )?;
    let apiserver = keep_or_issue(
        APISERVER_SECRET,
        "tls.crt",
        "tls.key",
        &settings.apiserver_spec(),
    )?;
    Ok(Certificates {
        ca: ca.pem.clone(),
        etcd_server,
        apiserver,
    })
}

async fn plan(
    target: Option<&KubeTarget>,
    mesh: &MeshArgs,
) -> Result<(MeshSettings, Certificates)> {
    let existing = match target {
        Some(target) => read_existing(target, &mesh.namespace).await?,
        None => Existing::default(),
    };
    let settings = settings(mesh, &existing)?;
    let certs = certificates(mesh, &settings, &existing)?;
    Ok((settings, certs))
}

/// Applies `objects` in order and prints one line per object, kubectl-style.
async fn apply_all(target: &KubeTarget, objects: &[Value]) -> Result<usize> {
    let mut changed = 0;
    for object in objects {
        let applied = target.apply(object).await?;
        if applied != crate::kube_target::Applied::Unchanged {
            changed += 1;
        }
        println!("{} {}", manifests::describe(object), applied.as_str());
    }
    Ok(changed)
}

pub async fn enable(options: &TargetOptions, args: &EnableArgs) -> Result<ExitCode> {
    match ContextName::parse(args.context.as_deref()) {
        ContextName::Lab(cluster) => crate::lab_target::enable(options, &cluster),
        ContextName::Kube(context) => {
            let target = options.kube(context.as_deref()).await?;
            let (mut settings, mut certs) = plan(Some(&target), &args.mesh).await?;
            let objects = manifests::render(&settings, &certs);
            let mut changed = apply_all(&target, &objects).await?;
            if settings.service_type == ServiceType::LoadBalancer {
                let have = load_balancer_addresses_of(&target, &settings.namespace).await?;
                let mut addresses = have.clone();
                let deadline = Instant::now() + args.wait_for_address;
                if addresses.is_empty() && !args.wait_for_address.is_zero() {
                    eprintln!(
                        "waiting up to {} for the load balancer of Service {}/{ETCD_SERVICE} to get an address…",
                        humantime::format_duration(args.wait_for_address),
                        settings.namespace
                    );
                }
                while addresses.is_empty() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    addresses = load_balancer_addresses_of(&target, &settings.namespace).await?;
                }
                if addresses.is_empty() {
                    eprintln!(
                        "note: the load balancer of Service {}/{ETCD_SERVICE} has no address yet; run `clustermesh enable` again once it has one (it goes into the etcd certificate), or use --service-type NodePort with --advertised-address",
                        settings.namespace
                    );
                } else if addresses
                    .iter()
                    .any(|a| !settings.load_balancer_addresses.contains(a))
                {
                    // The address arrived after the first apply: re-issue the etcd
                    // certificate with it.
                    (settings, certs) = plan(Some(&target), &args.mesh).await?;
                    changed += apply_all(&target, &manifests::render(&settings, &certs)).await?;
                }
            }
            let _ = certs;
            if changed == 0 {
                println!(
                    "cluster {} (ID {}) in context {}: already enabled, nothing changed",
                    settings.cluster_name, settings.cluster_id, target.context
                );
            } else {
                println!(
                    "cluster {} (ID {}) in context {}: enabled ({changed} object(s) changed); next: `clustermesh connect --context {} --destination-context <other>`",
                    settings.cluster_name, settings.cluster_id, target.context, target.context
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn load_balancer_addresses_of(target: &KubeTarget, namespace: &str) -> Result<Vec<String>> {
    Ok(target
        .get("v1", "Service", namespace, ETCD_SERVICE)
        .await?
        .map(|s| load_balancer_addresses(&s))
        .unwrap_or_default())
}

pub async fn manifests(options: &TargetOptions, args: &ManifestsArgs) -> Result<ExitCode> {
    let target = match ContextName::parse(args.context.as_deref()) {
        ContextName::Lab(_) => bail!(
            "a lab cluster has no Kubernetes objects (the lab runs etcd, the apiserver and the agents as processes); drop --context, or pass a kubeconfig context"
        ),
        ContextName::Kube(None) if args.context.is_none() => None,
        ContextName::Kube(context) => Some(options.kube(context.as_deref()).await?),
    };
    let (settings, certs) = plan(target.as_ref(), &args.mesh).await?;
    print!(
        "{}",
        manifests::to_yaml(&manifests::render(&settings, &certs))
    );
    Ok(ExitCode::SUCCESS)
}
