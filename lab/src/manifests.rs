//! The Kubernetes objects of a lab cluster, kept as ordinary YAML in the cluster's manifest
//! directory (`<state>/clusters/<cluster>/manifests`), the way a real control plane would
//! report them. The apiserver's `manifests` source reads the same k8s-openapi types.
//!
//! One object per file, named `<kind>-<namespace>-<name>.yaml` (cluster-scoped kinds:
//! `<kind>-<name>.yaml`), written atomically (temporary file + rename) so a watcher never
//! reads half a file: `node-east-1.yaml`, `namespace-default.yaml`, `pod-default-echo-0.yaml`,
//! `service-default-echo.yaml`, `endpointslice-default-echo.yaml`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HostIP, Namespace, Node, NodeAddress, NodeCondition, NodeSpec,
    NodeStatus, Pod, PodCondition, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::state::{PodRecord, ServiceRecord};
use crate::topology::NodePlan;

pub const ANNOTATION_GLOBAL: &str = "clustermesh.io/global";
pub const ANNOTATION_SHARED: &str = "clustermesh.io/shared";
pub const ANNOTATION_AFFINITY: &str = "clustermesh.io/affinity";
/// `managed-by` label value on the EndpointSlices the lab writes.
pub const MANAGED_BY: &str = "clustermesh-lab";

/// What can go wrong writing manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{action} {path}: {source} (is the state directory writable?)")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode {0} as YAML: {1}")]
    Yaml(String, #[source] serde_yaml_ng::Error),
}

/// A cluster's manifest directory.
#[derive(Debug, Clone)]
pub struct ManifestDir {
    dir: PathBuf,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file of an object: `<kind>-<namespace>-<name>.yaml` or `<kind>-<name>.yaml`.
    pub fn file(&self, kind: &str, namespace: Option<&str>, name: &str) -> PathBuf {
        let kind = kind.to_ascii_lowercase();
        match namespace {
            Some(ns) => self.dir.join(format!("{kind}-{ns}-{name}.yaml")),
            None => self.dir.join(format!("{kind}-{name}.yaml")),
        }
    }

    /// Writes one object as YAML, atomically.
    pub fn write<T: Serialize>(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        object: &T,
    ) -> Result<PathBuf, ManifestError> {
        fs::create_dir_all(&self.dir).map_err(|source| ManifestError::Io {
            action: "create",
            path: self.dir.clone(),
            source,
        })?;
        let path = self.file(kind, namespace, name);
        let yaml = serde_yaml_ng::to_string(object)
            .map_err(|e| ManifestError::Yaml(format!("{kind} {name}"), e))?;
        let tmp = self.dir.join(format!(".{kind}-{name}.tmp"));
        fs::write(&tmp, yaml).map_err(|source| ManifestError::Io {
            action: "write",
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|source| ManifestError::Io {
            action: "rename into",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Removes one object's file; missing is fine.
    pub fn remove(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ManifestError> {
        let path = self.file(kind, namespace, name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ManifestError::Io {
                action: "remove",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    pub fn write_node(&self, cluster: &str, node: &NodePlan) -> Result<PathBuf, ManifestError> {
        self.write("node", None, &node.name, &node_object(cluster, node))
    }

    pub fn write_namespace(&self, name: &str) -> Result<PathBuf, ManifestError> {
        self.write("namespace", None, name, &namespace_object(name))
    }

    pub fn write_pod(&self, pod: &PodRecord, node_ip: &str) -> Result<PathBuf, ManifestError> {
        self.write(
            "pod",
            Some(&pod.namespace),
            &pod.name,
            &pod_object(pod, node_ip),
        )
    }

    pub fn remove_pod(&self, pod: &PodRecord) -> Result<(), ManifestError> {
        self.remove("pod", Some(&pod.namespace), &pod.name)
    }

    /// Writes the Service and its EndpointSlice (with `pods` as ready endpoints).
    pub fn write_service(
        &self,
        svc: &ServiceRecord,
        pods: &[&PodRecord],
    ) -> Result<(), ManifestError> {
        self.write(
            "service",
            Some(&svc.namespace),
            &svc.name,
            &service_object(svc),
        )?;
        self.write(
            "endpointslice",
            Some(&svc.namespace),
            &svc.name,
            &endpoint_slice_object(svc, pods),
        )?;
        Ok(())
    }
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// A Ready Node with its InternalIP and pod CIDR; the zone label is the cluster name.
pub fn node_object(cluster: &str, node: &NodePlan) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: labels(&[
                ("kubernetes.io/hostname", &node.name),
                ("kubernetes.io/os", "linux"),
                ("topology.kubernetes.io/zone", cluster),
                ("clustermesh.io/cluster", cluster),
            ]),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(node.pod_cidr.to_string()),
            pod_cidrs: Some(vec![node.pod_cidr.to_string()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: node.ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: node.name.clone(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("LabNodeReady".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

pub fn namespace_object(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: labels(&[("kubernetes.io/metadata.name", name)]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A Running, Ready Pod on its node with its pod IP.
pub fn pod_object(pod: &PodRecord, node_ip: &str) -> Pod {
    let mut pod_labels = vec![];
    if let Some(app) = &pod.app {
        pod_labels.push(("app", app.as_str()));
    }
    let ports = pod.port.map(|port| {
        vec![
            ContainerPort {
                name: Some("tcp".into()),
                container_port: i32::from(port),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("udp".into()),
                container_port: i32::from(port),
                protocol: Some("UDP".into()),
                ..Default::default()
            },
        ]
    });
    let ready = vec![
        PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        },
        PodCondition {
            type_: "ContainersReady".into(),
            status: "True".into(),
            ..Default::default()
        },
    ];
    Pod {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            labels: labels(&pod_labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(pod.node.clone()),
            containers: vec![Container {
                name: pod.app.clone().unwrap_or_else(|| "main".into()),
                image: Some("clustermesh-lab/echo".into()),
                ports,
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(pod.ip.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: pod.ip.to_string(),
            }]),
            host_ip: Some(node_ip.to_owned()),
            host_ips: Some(vec![HostIP {
                ip: node_ip.to_owned(),
            }]),
            conditions: Some(ready),
            ..Default::default()
        }),
    }
}

/// A ClusterIP Service (TCP and UDP on the same port) with the clustermesh annotations.
pub fn service_object(svc: &ServiceRecord) -> Service {
    let mut annotations = BTreeMap::new();
    if svc.global {
        annotations.insert(ANNOTATION_GLOBAL.to_owned(), "true".to_owned());
    }
    annotations.insert(ANNOTATION_SHARED.to_owned(), svc.shared.to_string());
    annotations.insert(
        ANNOTATION_AFFINITY.to_owned(),
        svc.affinity.as_str().to_owned(),
    );
    let port = |name: &str, proto: &str| ServicePort {
        name: Some(name.into()),
        port: i32::from(svc.port),
        target_port: Some(IntOrString::Int(i32::from(svc.port))),
        protocol: Some(proto.into()),
        ..Default::default()
    };
    Service {
        metadata: ObjectMeta {
            name: Some(svc.name.clone()),
            namespace: Some(svc.namespace.clone()),
            annotations: Some(annotations),
            labels: labels(&[("app", &svc.name)]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(svc.cluster_ip.to_string()),
            cluster_ips: Some(vec![svc.cluster_ip.to_string()]),
            selector: labels(&[("app", &svc.name)]),
            ports: Some(vec![port("tcp", "TCP"), port("udp", "UDP")]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Service's EndpointSlice (discovery.k8s.io/v1): one ready endpoint per pod.
pub fn endpoint_slice_object(svc: &ServiceRecord, pods: &[&PodRecord]) -> EndpointSlice {
    let endpoints: Vec<Endpoint> = pods
        .iter()
        .map(|pod| Endpoint {
            addresses: vec![pod.ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(pod.node.clone()),
            zone: Some(pod.cluster.clone()),
            target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let port = |name: &str, proto: &str| EndpointPort {
        name: Some(name.into()),
        port: Some(i32::from(svc.port)),
        protocol: Some(proto.into()),
        ..Default::default()
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(svc.name.clone()),
            namespace: Some(svc.namespace.clone()),
            labels: labels(&[
                ("kubernetes.io/service-name", &svc.name),
                ("endpointslice.kubernetes.io/managed-by", MANAGED_BY),
            ]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(vec![port("tcp", "TCP"), port("udp", "UDP")]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Affinity;

    fn pod(name: &str, ip: [u8; 4]) -> PodRecord {
        PodRecord {
            cluster: "east".into(),
            namespace: "default".into(),
            name: name.into(),
            node: "east-1".into(),
            ip: ip.into(),
            index: 0,
            netns: "x".into(),
            veth: "y".into(),
            cgroup: "/z".into(),
            app: Some("echo".into()),
            port: Some(8080),
        }
    }

    #[test]
    fn service_and_slice_round_trip_through_yaml_with_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let m = ManifestDir::new(dir.path());
        let svc = ServiceRecord {
            cluster: "east".into(),
            namespace: "default".into(),
            name: "echo".into(),
            cluster_ip: [10, 96, 0, 10].into(),
            port: 8080,
            replicas: 2,
            global: true,
            shared: false,
            affinity: Affinity::Local,
        };
        let (a, b) = (
            pod("echo-0", [10, 244, 0, 2]),
            pod("echo-1", [10, 244, 1, 2]),
        );
        m.write_service(&svc, &[&a, &b]).unwrap();

        let text = fs::read_to_string(dir.path().join("service-default-echo.yaml")).unwrap();
        assert!(text.contains("apiVersion: v1"), "{text}");
        assert!(text.contains("kind: Service"), "{text}");
        let back: Service = serde_yaml_ng::from_str(&text).unwrap();
        let ann = back.metadata.annotations.unwrap();
        assert_eq!(ann[ANNOTATION_GLOBAL], "true");
        assert_eq!(ann[ANNOTATION_SHARED], "false");
        assert_eq!(ann[ANNOTATION_AFFINITY], "local");
        assert_eq!(back.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));

        let text = fs::read_to_string(dir.path().join("endpointslice-default-echo.yaml")).unwrap();
        assert!(text.contains("apiVersion: discovery.k8s.io/v1"), "{text}");
        let slice: EndpointSlice = serde_yaml_ng::from_str(&text).unwrap();
        let endpoints = slice.endpoints.unwrap();
        let ips: Vec<_> = endpoints.iter().map(|e| e.addresses[0].as_str()).collect();
        assert_eq!(ips, ["10.244.0.2", "10.244.1.2"]);
        assert_eq!(
            slice.metadata.labels.unwrap()["kubernetes.io/service-name"],
            "echo"
        );
    }

    #[test]
    fn pod_and_node_yaml_decode() {
        let dir = tempfile::tempdir().unwrap();
        let m = ManifestDir::new(dir.path());
        let p = pod("echo-0", [10, 244, 0, 2]);
        let path = m.write_pod(&p, "172.20.1.10").unwrap();
        let back: Pod = serde_yaml_ng::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back.status.unwrap().pod_ip.as_deref(), Some("10.244.0.2"));
        m.remove_pod(&p).unwrap();
        assert!(!path.exists());

        let node = NodePlan {
            name: "east-1".into(),
            index: 0,
            ip: [172, 20, 1, 10].into(),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
        };
        let path = m.write_node("east", &node).unwrap();
        let back: Node = serde_yaml_ng::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            back.spec.unwrap().pod_cidr.as_deref(),
            Some("10.244.0.0/24")
        );
    }
}
