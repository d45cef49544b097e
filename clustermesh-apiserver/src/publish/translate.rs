//! From Kubernetes objects to the values we publish. Pure functions: a view in, values out, with
//! a list of problems (bad annotations, unusable addresses) for the operator; no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use clustermesh_model::{
    Affinity, Backend, ExpectedCluster, Frontend, GlobalService, L4Port, Node, NodeAddress,
    NodeAddressKind, Ports, Protocol, is_dns_label, is_dns_subdomain,
};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::source::{ClusterObjects, ObjectKey};

/// Our annotations, and Cilium's, accepted as aliases so Cilium manifests work unchanged.
const ANNOTATION_PREFIXES: [&str; 2] = ["clustermesh.io/", "service.cilium.io/"];
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Pod labels that change with every rollout and would make every revision a new identity.
const IGNORED_POD_LABELS: [&str; 3] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
];

/// The labels an identity stands for: the pod's labels, its namespace, and its namespace's labels.
pub type LabelSet = BTreeMap<String, String>;

fn annotation<'a>(svc: &'a Service, name: &str) -> Option<&'a str> {
    let annotations = svc.metadata.annotations.as_ref()?;
    ANNOTATION_PREFIXES
        .iter()
        .find_map(|p| annotations.get(&format!("{p}{name}")))
        .map(String::as_str)
}

fn protocol(p: Option<&str>) -> Option<Protocol> {
    Protocol::parse(p.unwrap_or("TCP"))
}

/// Every service annotated global, with its frontends and ready backends.
pub fn global_services(
    view: &ClusterObjects,
    cluster: &ExpectedCluster,
    problems: &mut Vec<String>,
) -> Vec<GlobalService> {
    // EndpointSlices by the service they belong to.
    let mut slices: BTreeMap<ObjectKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for (key, slice) in &view.endpoint_slices {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let Some(owner) = owner {
            slices
                .entry(ObjectKey::new(key.namespace.clone(), owner.clone()))
                .or_default()
                .push(slice);
        }
    }

    let mut out = Vec::new();
    for (key, svc) in &view.services {
        if !annotation(svc, "global").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            continue;
        }
        let what = format!("service {}/{}", key.namespace, key.name);
        if !is_dns_label(&key.namespace) || !is_dns_label(&key.name) {
            problems.push(format!("{what}: namespace and name must be DNS labels"));
            continue;
        }
        let shared = match annotation(svc, "shared") {
            None => true,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(other) => {
                problems.push(format!(
                    "{what}: shared annotation {other:?} is not \"true\" or \"false\"; treating it as \"false\" so nothing is offered by mistake"
                ));
                false
            }
        };
        let affinity = match annotation(svc, "affinity") {
            None => Affinity::None,
            Some(v) => Affinity::parse(&v.to_ascii_lowercase()).unwrap_or_else(|| {
                problems.push(format!(
                    "{what}: affinity annotation {v:?} is not none, local or remote; using none"
                ));
                Affinity::None
            }),
        };
        out.push(GlobalService {
            cluster: cluster.name.clone(),
            cluster_id: cluster.id,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            frontends: frontends(svc, &what, problems),
            backends: backends(
                slices.get(key).map(Vec::as_slice).unwrap_or(&[]),
                &what,
                problems,
            ),
            shared,
            affinity,
            include_external: false,
            headless: is_headless(svc),
            labels: svc.metadata.labels.clone().unwrap_or_default(),
            selector: svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default(),
            // Stamped by the publisher, which knows whether the content changed.
            modified_unix_millis: None,
        });
    }
    out
}

/// `clusterIP: None` (a headless Service: DNS answers with its backends' addresses).
fn is_headless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None")
}

fn frontends(svc: &Service, what: &str, problems: &mut Vec<String>) -> Vec<Frontend> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let mut ports = Ports::new();
    for p in spec.ports.iter().flatten() {
        let name = p.name.clone().unwrap_or_default();
        match (protocol(p.protocol.as_deref()), u16::try_from(p.port)) {
            (Some(protocol), Ok(port)) if port != 0 => {
                ports.insert(name, L4Port { protocol, port });
            }
            _ => problems.push(format!("{what}: port {name:?} is not usable; skipped")),
        }
    }
    let ips: BTreeSet<&String> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .collect();
    ips.into_iter()
        // Headless services have no frontend; they are still published for DNS.
        .filter(|ip| !ip.is_empty() && ip.as_str() != "None")
        .filter_map(|ip| match ip.parse::<IpAddr>() {
            Ok(ip) => Some(Frontend {
                ip,
                ports: ports.clone(),
            }),
            Err(_) => {
                problems.push(format!("{what}: cluster IP {ip:?} is not an IP; skipped"));
                None
            }
        })
        .collect()
}

fn backends(slices: &[&EndpointSlice], what: &str, problems: &mut Vec<String>) -> Vec<Backend> {
    let mut by_ip: BTreeMap<IpAddr, Backend> = BTreeMap::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let mut ports = Ports::new();
        for p in slice.ports.iter().flatten() {
            let Some(port) = p
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
            else {
                continue; // no port means "all ports": nothing we can load-balance to
            };
            let Some(protocol) = protocol(p.protocol.as_deref()) else {
                continue;
            };
            ports.insert(
                p.name.clone().unwrap_or_default(),
                L4Port { protocol, port },
            );
        }
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            // Kubernetes: an unknown readiness is ready.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            // Ready backends take traffic; terminating-but-serving ones are published as not
            // ready, a fallback the agent may use when nothing is ready (as kube-proxy does).
            if !(ready || (serving && terminating)) {
                continue;
            }
            let node = endpoint.node_name.clone().filter(|n| is_dns_subdomain(n));
            let zone = endpoint
                .zone
                .clone()
                .filter(|z| !z.chars().any(char::is_control));
            let hostname = endpoint.hostname.clone().filter(|h| is_dns_label(h));
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    problems.push(format!(
                        "{what}: endpoint address {address:?} is not an IP; skipped"
                    ));
                    continue;
                };
                let backend = by_ip.entry(ip).or_insert_with(|| Backend {
                    ip,
                    ports: Ports::new(),
                    node: node.clone(),
                    zone: zone.clone(),
                    hostname: hostname.clone(),
                    ready,
                });
                backend.ports.extend(ports.clone());
                backend.ready |= ready;
            }
        }
    }
    by_ip
        .into_values()
        .filter(|b| !b.ports.is_empty())
        .collect()
}

/// The label set of a pod's identity, or `None` for pods that have no identity of their own
/// (host-network pods share the node's).
pub fn pod_label_set(pod: &Pod, view: &ClusterObjects) -> Option<LabelSet> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut labels = LabelSet::new();
    for (k, v) in pod.metadata.labels.iter().flatten() {
        if !IGNORED_POD_LABELS.contains(&k.as_str()) {
            labels.insert(format!("k8s:{k}"), v.clone());
        }
    }
    labels.insert(
        "k8s:io.kubernetes.pod.namespace".to_owned(),
        namespace.to_owned(),
    );
    if let Some(ns) = view.namespaces.get(namespace) {
        for (k, v) in ns.metadata.labels.iter().flatten() {
            labels.insert(format!("k8s:io.cilium.k8s.namespace.labels.{k}"), v.clone());
        }
    }
    Some(labels)
}

/// A running pod's addresses and where it runs.
pub struct PodEndpoint<'a> {
    pub ips: Vec<IpAddr>,
    pub host_ip: Option<IpAddr>,
    pub node: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: LabelSet,
}

/// Pods that have an IP of their own, a node, and are not finished.
pub fn pod_endpoints(view: &ClusterObjects) -> Vec<PodEndpoint<'_>> {
    let mut out = Vec::new();
    for pod in view.pods.values() {
        let Some(status) = &pod.status else { continue };
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let Some(labels) = pod_label_set(pod, view) else {
            continue;
        };
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
        if ips.is_empty() {
            continue;
        }
        out.push(PodEndpoint {
            ips,
            host_ip: status.host_ip.as_deref().and_then(|ip| ip.parse().ok()),
            node,
            namespace: pod.metadata.namespace.as_deref().unwrap_or("default"),
            name: pod.metadata.name.as_deref().unwrap_or_default(),
            labels,
        });
    }
    out
}

/// The nodes of the cluster as Kubernetes reports them.
pub fn nodes(view: &ClusterObjects, cluster: &ExpectedCluster) -> Vec<Node> {
    view.nodes
        .iter()
        .filter(|(name, _)| is_dns_subdomain(name))
        .map(|(name, node)| {
            let status = node.status.as_ref();
            let addresses = status
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|a| {
                    Some(NodeAddress {
                        kind: NodeAddressKind::parse(&a.type_)?,
                        ip: a.address.parse().ok()?,
                    })
                })
                .collect();
            let spec = node.spec.as_ref();
            let mut cidrs: Vec<IpNet> = spec
                .and_then(|s| s.pod_cidrs.as_ref())
                .into_iter()
                .flatten()
                .chain(spec.and_then(|s| s.pod_cidr.as_ref()))
                .filter_map(|c| c.parse().ok())
                .collect();
            cidrs.sort();
            cidrs.dedup();
            Node {
                cluster: cluster.name.clone(),
                cluster_id: cluster.id,
                name: name.clone(),
                addresses,
                pod_cidrs: cidrs,
                zone: node
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ZONE_LABEL))
                    .cloned(),
            }
        })
        .collect()
}

/// Every distinct label set of the cluster's pods.
pub fn wanted_label_sets(pods: &[PodEndpoint<'_>]) -> BTreeSet<LabelSet> {
    pods.iter().map(|p| p.labels.clone()).collect()
}
