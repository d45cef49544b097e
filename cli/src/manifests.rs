//! The Kubernetes objects of the mesh in one cluster, rendered from [`MeshSettings`] and the
//! cluster's [`Certificates`]. `clustermesh enable` applies exactly these objects (server-side
//! apply) and `clustermesh manifests` prints them as YAML. Names, labels, ports, mounts and
//! flags follow `terraform/modules/clustermesh`, so that a cluster set up either way looks the
//! same; the differences are listed in [`render`].

use std::net::IpAddr;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::pki::{KeyPairPem, LeafSpec};

pub const DEFAULT_NAMESPACE: &str = "clustermesh";
pub const FIELD_MANAGER: &str = "clustermesh";
pub const ETCD_SERVICE: &str = "clustermesh-etcd";
pub const APISERVER: &str = "clustermesh-apiserver";
pub const AGENT: &str = "clustermesh-agent";
pub const CONFIG_MAP: &str = "clustermesh-config";
pub const CA_SECRET: &str = "clustermesh-ca";
pub const CA_KEY_SECRET: &str = "clustermesh-ca-key";
pub const ETCD_SERVER_SECRET: &str = "clustermesh-etcd-server-tls";
pub const APISERVER_SECRET: &str = "clustermesh-apiserver-tls";
/// Per-node agent certificates of earlier versions (before the apiserver issued them); no
/// longer rendered, still deleted by `disable` and read by `troubleshoot` where it exists.
pub const AGENT_SECRET: &str = "clustermesh-agent-tls";
pub const PEERS_SECRET: &str = "clustermesh-peers";

pub const ETCD_PORT: u16 = 2379;
pub const TUNNEL_PORT: u16 = 4244;
pub const APISERVER_HEALTH_PORT: u16 = 9880;
pub const AGENT_STATUS_PORT: u16 = 9964;
/// The apiserver's agent certificate issuer (`clustermesh-apiserver/src/agent_certs.rs`).
pub const AGENT_CERTS_PORT: u16 = 9965;
/// The audience of the agents' projected ServiceAccount token, as the issuer expects it.
pub const AGENT_TOKEN_AUDIENCE: &str = "clustermesh-apiserver";
/// Lifetime of that token (the kubelet rotates it; 10 minutes is the shortest allowed).
pub const AGENT_TOKEN_SECONDS: u32 = 600;

const CA_DIR: &str = "/etc/clustermesh/ca";
const ETCD_TLS_DIR: &str = "/etc/clustermesh/etcd-server";
const CLIENT_TLS_DIR: &str = "/etc/clustermesh/etcd-client";
const CA_KEY_DIR: &str = "/etc/clustermesh/ca-key";
/// Where each agent keeps the key and certificate it obtained (an in-memory emptyDir).
const AGENT_TLS_DIR: &str = "/etc/clustermesh/agent";
const AGENT_TOKEN_DIR: &str = "/var/run/secrets/clustermesh";
const PEERS_DIR: &str = "/var/lib/clustermesh/peers";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceType {
    /// The cloud's load balancer; its address is read back from the Service.
    #[value(name = "LoadBalancer", alias = "load-balancer")]
    LoadBalancer,
    /// A port on every node; give the node addresses peers dial with --advertised-address.
    #[value(name = "NodePort", alias = "node-port")]
    NodePort,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "LoadBalancer" => Some(ServiceType::LoadBalancer),
            "NodePort" => Some(ServiceType::NodePort),
            _ => None,
        }
    }
}

/// Everything that decides the rendered objects, besides the certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    pub cluster_name: String,
    pub cluster_id: u16,
    pub namespace: String,
    pub trust_domain: String,
    pub service_type: ServiceType,
    pub node_port: Option<u16>,
    /// Host names or IPs peers dial, as the user gave them (node addresses with NodePort).
    pub advertised_addresses: Vec<String>,
    /// The addresses the etcd Service's load balancer got (read back from the cluster).
    pub load_balancer_addresses: Vec<String>,
    pub image: String,
    pub etcd_image: String,
    /// Priority class of the agents; empty for none.
    pub agent_priority_class: String,
}

impl MeshSettings {
    fn spiffe(&self, role: &str) -> String {
        format!(
            "spiffe://{}/cluster/{}/{role}",
            self.trust_domain, self.cluster_name
        )
    }

    /// The etcd server certificate: the Service's cluster names, loopback, and every address
    /// peers dial.
    pub fn etcd_server_spec(&self) -> LeafSpec {
        let ns = &self.namespace;
        let mut dns_names = vec![
            "localhost".to_string(),
            ETCD_SERVICE.to_string(),
            format!("{ETCD_SERVICE}.{ns}"),
            format!("{ETCD_SERVICE}.{ns}.svc"),
            format!("{ETCD_SERVICE}.{ns}.svc.cluster.local"),
        ];
        let mut ip_addresses: Vec<IpAddr> = vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        for address in self
            .advertised_addresses
            .iter()
            .chain(&self.load_balancer_addresses)
        {
            match address.parse::<IpAddr>() {
                Ok(ip) if !ip_addresses.contains(&ip) => ip_addresses.push(ip),
                Ok(_) => {}
                Err(_) if !dns_names.contains(address) => dns_names.push(address.clone()),
                Err(_) => {}
            }
        }
        LeafSpec {
            purpose: "etcd server".into(),
            common_name: ETCD_SERVICE.into(),
            dns_names,
            ip_addresses,
            uris: vec![self.spiffe("etcd")],
            server: true,
            client: false,
        }
    }

    /// The apiserver: etcd client (CN `clustermesh-apiserver`, etcd's root user) and the
    /// server certificate of its agent certificate issuer, named as agents dial it.
    pub fn apiserver_spec(&self) -> LeafSpec {
        let ns = &self.namespace;
        LeafSpec {
            purpose: "apiserver".into(),
            common_name: clustermesh_model::etcd_users::APISERVER_USER.into(),
            dns_names: vec![
                APISERVER.to_string(),
                format!("{APISERVER}.{ns}"),
                format!("{APISERVER}.{ns}.svc"),
                format!("{APISERVER}.{ns}.svc.cluster.local"),
            ],
            ip_addresses: vec![],
            uris: vec![self.spiffe("apiserver")],
            server: true,
            client: true,
        }
    }

    /// Where agents get their certificates (CN `agent-<node>`, SPIFFE `…/node/<node>`, both
    /// checked by the issuer against the node their bound ServiceAccount token names).
    pub fn agent_certs_endpoint(&self) -> String {
        format!(
            "https://{APISERVER}.{}.svc:{AGENT_CERTS_PORT}",
            self.namespace
        )
    }

    /// The read-only client certificate this cluster's CA issues for `peer` (etcd user
    /// `remote`).
    pub fn remote_spec(&self, peer: &str) -> LeafSpec {
        LeafSpec {
            purpose: format!("peer {peer}"),
            common_name: clustermesh_model::etcd_users::REMOTE_USER.into(),
            dns_names: vec![],
            ip_addresses: vec![],
            uris: vec![self.spiffe(&format!("peer/{peer}"))],
            server: false,
            client: true,
        }
    }
}

/// The certificates the objects carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificates {
    pub ca: KeyPairPem,
    pub etcd_server: KeyPairPem,
    pub apiserver: KeyPairPem,
}

fn bytes(text: &str) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec()))
        .expect("a byte string serializes")
}

fn hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The objects in the order they are applied (namespace first, workloads last).
///
/// Agents hold no certificate made here: each obtains its own (CN `agent-<node>`) from the
/// apiserver's issuer with its pod's bound ServiceAccount token, so nodes that join later need
/// nothing from `enable`. The apiserver mounts the `clustermesh-ca-key` Secret for that (and
/// `connect` issues peer certificates from it).
///
/// Differences from the Terraform module: a `clustermesh-config` ConfigMap (the cluster's name,
/// ID and advertised endpoints, read by `connect` and `status`), and labels saying who manages
/// the objects.
pub fn render(settings: &MeshSettings, certs: &Certificates) -> Vec<Value> {
    let mut objects = render_objects(settings, certs);
    if !settings.agent_priority_class.is_empty()
        && let Some(daemonset) = objects.iter_mut().find(|o| o["kind"] == "DaemonSet")
    {
        daemonset["spec"]["template"]["spec"]["priorityClassName"] =
            json!(settings.agent_priority_class);
    }
    objects
}

fn render_objects(settings: &MeshSettings, certs: &Certificates) -> Vec<Value> {
    let name = &settings.cluster_name;
    let ns = &settings.namespace;
    let common = json!({
        "app.kubernetes.io/part-of": "clustermesh",
        "app.kubernetes.io/managed-by": "clustermesh-cli",
        "clustermesh.io/cluster": name,
    });
    let apiserver_selector = json!({
        "app.kubernetes.io/name": APISERVER,
        "app.kubernetes.io/instance": name,
    });
    let agent_selector = json!({
        "app.kubernetes.io/name": AGENT,
        "app.kubernetes.io/instance": name,
    });
    let merge = |a: &Value, b: &Value| {
        let mut out = a.clone();
        for (k, v) in b.as_object().into_iter().flatten() {
            out[k] = v.clone();
        }
        out
    };
    let apiserver_labels = merge(&common, &apiserver_selector);
    let agent_labels = merge(&common, &agent_selector);
    let meta =
        |name: &str, labels: &Value| json!({"name": name, "namespace": ns, "labels": labels});
    let cluster_role = format!("clustermesh-apiserver-{name}");

    let tls_secret = |secret: &str, pem: &KeyPairPem| {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": meta(secret, &common),
            "type": "kubernetes.io/tls",
            "data": {
                "ca.crt": bytes(&certs.ca.cert),
                "tls.crt": bytes(&pem.cert),
                "tls.key": bytes(&pem.key),
            },
        })
    };
    let apiserver_certs_hash = hash(&[
        &certs.ca.cert,
        &certs.etcd_server.cert,
        &certs.apiserver.cert,
    ]);
    // Agents restart on a new CA (they verify etcd, the issuer and the tunnel with it).
    let agent_certs_hash = hash(&[&certs.ca.cert]);

    let mut service_port = json!({
        "name": "etcd", "protocol": "TCP", "port": ETCD_PORT, "targetPort": ETCD_PORT,
    });
    if let (ServiceType::NodePort, Some(port)) = (settings.service_type, settings.node_port) {
        service_port["nodePort"] = json!(port);
    }
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    });
    let env = |name: &str, value: String| json!({"name": name, "value": value});

    vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": common},
        }),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(APISERVER, &apiserver_labels),
        }),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(AGENT, &agent_labels),
            // The agents read only their local etcd; they need no Kubernetes API access.
            "automountServiceAccountToken": false,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": cluster_role, "labels": apiserver_labels},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "nodes", "namespaces"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "verbs": ["get", "list", "watch"]},
                // The agent certificate issuer reviews the agents' ServiceAccount tokens.
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
                 "verbs": ["create"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_role, "labels": apiserver_labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
            "subjects": [{"kind": "ServiceAccount", "name": APISERVER, "namespace": ns}],
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": meta(CONFIG_MAP, &common),
            "data": {
                "cluster-name": name,
                "cluster-id": settings.cluster_id.to_string(),
                "trust-domain": settings.trust_domain,
                "service-type": settings.service_type.as_str(),
                "advertised-addresses": settings.advertised_addresses.join(","),
                "node-port": settings.node_port.map(|p| p.to_string()).unwrap_or_default(),
                "image": settings.image,
                "etcd-image": settings.etcd_image,
                "agent-priority-class": settings.agent_priority_class,
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": meta(CA_SECRET, &common),
            "type": "Opaque",
            "data": {"ca.crt": bytes(&certs.ca.cert)},
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": meta(CA_KEY_SECRET, &common),
            "type": "Opaque",
            "data": {"ca.crt": bytes(&certs.ca.cert), "ca.key": bytes(&certs.ca.key)},
        }),
        tls_secret(ETCD_SERVER_SECRET, &certs.etcd_server),
        tls_secret(APISERVER_SECRET, &certs.apiserver),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(ETCD_SERVICE, &apiserver_labels),
            "spec": {
                "type": settings.service_type.as_str(),
                "selector": apiserver_selector,
                "ports": [service_port],
            },
        }),
        // The agent certificate issuer, inside the cluster only.
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(APISERVER, &apiserver_labels),
            "spec": {
                "type": "ClusterIP",
                "selector": apiserver_selector,
                "ports": [{"name": "agent-certs", "protocol": "TCP", "port": AGENT_CERTS_PORT, "targetPort": AGENT_CERTS_PORT}],
            },
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": meta(APISERVER, &apiserver_labels),
            "spec": {
                "replicas": 1,
                // One etcd: never two at once.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": apiserver_selector},
                "template": {
                    "metadata": {
                        "labels": apiserver_labels,
                        "annotations": {"clustermesh.io/certificates": apiserver_certs_hash},
                    },
                    "spec": {
                        "serviceAccountName": APISERVER,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                            "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "etcd",
                                "image": settings.etcd_image,
                                "command": ["/usr/local/bin/etcd"],
                                "args": [
                                    "--name=clustermesh",
                                    "--data-dir=/var/run/etcd/data",
                                    format!("--listen-client-urls=https://0.0.0.0:{ETCD_PORT}"),
                                    format!("--advertise-client-urls=https://127.0.0.1:{ETCD_PORT}"),
                                    "--listen-peer-urls=http://127.0.0.1:2380",
                                    "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                                    "--initial-cluster=clustermesh=http://127.0.0.1:2380",
                                    "--initial-cluster-state=new",
                                    "--client-cert-auth=true",
                                    format!("--trusted-ca-file={ETCD_TLS_DIR}/ca.crt"),
                                    format!("--cert-file={ETCD_TLS_DIR}/tls.crt"),
                                    format!("--key-file={ETCD_TLS_DIR}/tls.key"),
                                    "--auto-compaction-mode=periodic",
                                    "--auto-compaction-retention=5m",
                                    "--quota-backend-bytes=2147483648",
                                    "--max-txn-ops=128",
                                ],
                                "ports": [{"name": "etcd", "containerPort": ETCD_PORT, "protocol": "TCP"}],
                                "readinessProbe": {"tcpSocket": {"port": ETCD_PORT}, "periodSeconds": 5},
                                "volumeMounts": [
                                    {"name": "etcd-data", "mountPath": "/var/run/etcd"},
                                    {"name": "etcd-server-tls", "mountPath": ETCD_TLS_DIR, "readOnly": true},
                                ],
                                "securityContext": restricted,
                            },
                            {
                                "name": "apiserver",
                                "image": settings.image,
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["clustermesh-apiserver"],
                                "args": [
                                    "--source=kubernetes",
                                    format!("--cluster-name={name}"),
                                    format!("--cluster-id={}", settings.cluster_id),
                                    format!("--etcd-endpoints=https://127.0.0.1:{ETCD_PORT}"),
                                    format!("--etcd-ca={CLIENT_TLS_DIR}/ca.crt"),
                                    format!("--etcd-cert={CLIENT_TLS_DIR}/tls.crt"),
                                    format!("--etcd-key={CLIENT_TLS_DIR}/tls.key"),
                                    format!("--peers-dir={PEERS_DIR}"),
                                    format!("--health-addr=0.0.0.0:{APISERVER_HEALTH_PORT}"),
                                    format!("--cluster-ca={CA_DIR}/ca.crt"),
                                    format!("--agent-certs-ca-key={CA_KEY_DIR}/ca.key"),
                                    format!("--agent-certs-addr=0.0.0.0:{AGENT_CERTS_PORT}"),
                                    format!("--agent-certs-tls-cert={CLIENT_TLS_DIR}/tls.crt"),
                                    format!("--agent-certs-tls-key={CLIENT_TLS_DIR}/tls.key"),
                                    format!("--agent-certs-audience={AGENT_TOKEN_AUDIENCE}"),
                                    format!("--agent-service-account=system:serviceaccount:{ns}:{AGENT}"),
                                    format!("--trust-domain={}", settings.trust_domain),
                                ],
                                "ports": [
                                    {"name": "health", "containerPort": APISERVER_HEALTH_PORT, "protocol": "TCP"},
                                    {"name": "agent-certs", "containerPort": AGENT_CERTS_PORT, "protocol": "TCP"},
                                ],
                                "readinessProbe": {"httpGet": {"path": "/readyz", "port": APISERVER_HEALTH_PORT}, "periodSeconds": 5},
                                "livenessProbe": {
                                    "httpGet": {"path": "/healthz", "port": APISERVER_HEALTH_PORT},
                                    "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 6,
                                },
                                "volumeMounts": [
                                    {"name": "ca", "mountPath": CA_DIR, "readOnly": true},
                                    {"name": "ca-key", "mountPath": CA_KEY_DIR, "readOnly": true},
                                    {"name": "apiserver-tls", "mountPath": CLIENT_TLS_DIR, "readOnly": true},
                                    {"name": "peers", "mountPath": PEERS_DIR, "readOnly": true},
                                ],
                                "securityContext": restricted,
                            },
                        ],
                        "volumes": [
                            {"name": "etcd-data", "emptyDir": {}},
                            {"name": "etcd-server-tls", "secret": {"secretName": ETCD_SERVER_SECRET}},
                            {"name": "apiserver-tls", "secret": {"secretName": APISERVER_SECRET}},
                            {"name": "ca", "secret": {"secretName": CA_SECRET}},
                            // Only the key: the issuer signs agent certificates with it.
                            {"name": "ca-key", "secret": {
                                "secretName": CA_KEY_SECRET, "defaultMode": 0o440,
                                "items": [{"key": "ca.key", "path": "ca.key"}],
                            }},
                            // Written by `clustermesh connect`; watched, so peers come and go
                            // without a restart.
                            {"name": "peers", "secret": {"secretName": PEERS_SECRET, "optional": true}},
                        ],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": meta(AGENT, &agent_labels),
            "spec": {
                "selector": {"matchLabels": agent_selector},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
                "template": {
                    "metadata": {
                        "labels": agent_labels,
                        "annotations": {"clustermesh.io/certificates": agent_certs_hash},
                    },
                    "spec": {
                        "serviceAccountName": AGENT,
                        "automountServiceAccountToken": false,
                        "hostNetwork": true,
                        "dnsPolicy": "ClusterFirstWithHostNet",
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "terminationGracePeriodSeconds": 30,
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{
                            "name": "agent",
                            "image": settings.image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["clustermesh-agent"],
                            "env": [
                                {"name": "CLUSTERMESH_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                {"name": "CLUSTERMESH_NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                                env("CLUSTERMESH_CLUSTER_NAME", name.clone()),
                                env("CLUSTERMESH_CLUSTER_ID", settings.cluster_id.to_string()),
                                env("CLUSTERMESH_ETCD_ENDPOINTS", format!("https://{ETCD_SERVICE}.{ns}.svc:{ETCD_PORT}")),
                                env("CLUSTERMESH_ETCD_CA", format!("{CA_DIR}/ca.crt")),
                                env("CLUSTERMESH_ETCD_CERT", format!("{AGENT_TLS_DIR}/tls.crt")),
                                env("CLUSTERMESH_ETCD_KEY", format!("{AGENT_TLS_DIR}/tls.key")),
                                env("CLUSTERMESH_TUNNEL_CA", format!("{CA_DIR}/ca.crt")),
                                env("CLUSTERMESH_TUNNEL_CERT", format!("{AGENT_TLS_DIR}/tls.crt")),
                                env("CLUSTERMESH_TUNNEL_KEY", format!("{AGENT_TLS_DIR}/tls.key")),
                                // The agent obtains those two files from the apiserver at start.
                                env("CLUSTERMESH_BOOTSTRAP_ENDPOINT", settings.agent_certs_endpoint()),
                                env("CLUSTERMESH_BOOTSTRAP_CA", format!("{CA_DIR}/ca.crt")),
                                env("CLUSTERMESH_BOOTSTRAP_TOKEN", format!("{AGENT_TOKEN_DIR}/token")),
                                env("CLUSTERMESH_BOOTSTRAP_CERT_DIR", AGENT_TLS_DIR.to_string()),
                                env("CLUSTERMESH_TRUST_DOMAIN", settings.trust_domain.clone()),
                                env("CLUSTERMESH_PEERS_DIR", PEERS_DIR.to_string()),
                                env("CLUSTERMESH_NODE_CGROUP", "/run/clustermesh/cgroupv2".to_string()),
                                env("CLUSTERMESH_STATUS_ADDR", format!("127.0.0.1:{AGENT_STATUS_PORT}")),
                            ],
                            "ports": [{"name": "tunnel", "containerPort": TUNNEL_PORT, "hostPort": TUNNEL_PORT, "protocol": "TCP"}],
                            "readinessProbe": {
                                "httpGet": {"host": "127.0.0.1", "path": "/readyz", "port": AGENT_STATUS_PORT},
                                "periodSeconds": 5,
                            },
                            // The status port opens only after the certificate bootstrap, which may
                            // wait up to 5 minutes for the issuer: liveness starts after it.
                            "startupProbe": {
                                "httpGet": {"host": "127.0.0.1", "path": "/healthz", "port": AGENT_STATUS_PORT},
                                "periodSeconds": 5, "failureThreshold": 72,
                            },
                            "livenessProbe": {
                                "httpGet": {"host": "127.0.0.1", "path": "/healthz", "port": AGENT_STATUS_PORT},
                                "periodSeconds": 10, "failureThreshold": 6,
                            },
                            "securityContext": {"privileged": true},
                            "volumeMounts": [
                                {"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"},
                                {"name": "cgroup", "mountPath": "/run/clustermesh/cgroupv2"},
                                {"name": "ca", "mountPath": CA_DIR, "readOnly": true},
                                {"name": "agent-tls", "mountPath": AGENT_TLS_DIR},
                                {"name": "agent-token", "mountPath": AGENT_TOKEN_DIR, "readOnly": true},
                                {"name": "peers", "mountPath": PEERS_DIR, "readOnly": true},
                            ],
                        }],
                        "volumes": [
                            {"name": "bpffs", "hostPath": {"path": "/sys/fs/bpf", "type": "DirectoryOrCreate"}},
                            {"name": "cgroup", "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}},
                            {"name": "ca", "secret": {"secretName": CA_SECRET}},
                            // The key and certificate the agent obtains; in memory, for the
                            // pod's lifetime (a container restart keeps them).
                            {"name": "agent-tls", "emptyDir": {"medium": "Memory"}},
                            // Bound to the pod and its node: what the issuer trusts.
                            {"name": "agent-token", "projected": {"sources": [{"serviceAccountToken": {
                                "audience": AGENT_TOKEN_AUDIENCE,
                                "expirationSeconds": AGENT_TOKEN_SECONDS,
                                "path": "token",
                            }}]}},
                            {"name": "peers", "secret": {"secretName": PEERS_SECRET, "optional": true}},
                        ],
                    },
                },
            },
        }),
    ]
}

/// The objects as one YAML stream (`---` between documents), the way `manifests` prints them.
pub fn to_yaml(objects: &[Value]) -> String {
    let mut out = String::from(
        "# Rendered by `clustermesh manifests`: the objects `clustermesh enable` applies.\n\
         # The Secrets hold the cluster CA and its private key: keep this file as secret as they are.\n",
    );
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(object).expect("JSON values serialize as YAML"));
    }
    out
}

/// `<apiVersion>/<kind> <namespace>/<name>`, for messages.
pub fn describe(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}
