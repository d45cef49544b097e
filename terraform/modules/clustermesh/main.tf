# The mesh in one cluster: namespace, service accounts and RBAC here; certificates in
# certificates.tf; etcd + clustermesh-apiserver in apiserver.tf; the node agents in agent.tf.

locals {
  common_labels = merge(var.labels, {
    "app.kubernetes.io/part-of"    = "clustermesh"
    "app.kubernetes.io/managed-by" = "terraform"
    "clustermesh.io/cluster"       = var.cluster_name
  })

  apiserver_selector = {
    "app.kubernetes.io/name"     = "clustermesh-apiserver"
    "app.kubernetes.io/instance" = var.cluster_name
  }
  agent_selector = {
    "app.kubernetes.io/name"     = "clustermesh-agent"
    "app.kubernetes.io/instance" = var.cluster_name
  }
  apiserver_labels = merge(local.common_labels, local.apiserver_selector)
  agent_labels     = merge(local.common_labels, local.agent_selector)

  namespace = var.create_namespace ? kubernetes_namespace_v1.this[0].metadata[0].name : var.namespace

  etcd_port         = 2379
  tunnel_port       = 4244
  apiserver_health  = 9880
  agent_status_port = 9964
  etcd_service_name = "clustermesh-etcd"

  # The apiserver's agent certificate issuer (clustermesh-apiserver/src/agent_certs.rs): agents
  # trade a projected ServiceAccount token for this audience and a CSR for their certificate.
  apiserver_service_name = "clustermesh-apiserver"
  agent_certs_port       = 9965
  agent_token_audience   = "clustermesh-apiserver"
  agent_certs_endpoint   = "https://${local.apiserver_service_name}.${local.namespace}.svc:${local.agent_certs_port}"

  # What the node agents of this cluster dial: the Service's cluster DNS name.
  in_cluster_etcd_endpoint = "https://${local.etcd_service_name}.${local.namespace}.svc:${local.etcd_port}"

  # Where files are mounted in the containers.
  ca_dir          = "/etc/clustermesh/ca"
  etcd_tls_dir    = "/etc/clustermesh/etcd-server"
  client_tls_dir  = "/etc/clustermesh/etcd-client"
  ca_key_dir      = "/etc/clustermesh/ca-key"
  agent_tls_dir   = "/etc/clustermesh/agent"
  agent_token_dir = "/var/run/secrets/clustermesh"
  peers_dir       = "/var/lib/clustermesh/peers"
}

resource "kubernetes_namespace_v1" "this" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name   = var.namespace
    labels = local.common_labels
  }
}

resource "kubernetes_service_account_v1" "apiserver" {
  metadata {
    name      = "clustermesh-apiserver"
    namespace = local.namespace
    labels    = local.apiserver_labels
  }
}

resource "kubernetes_service_account_v1" "agent" {
  metadata {
    name      = "clustermesh-agent"
    namespace = local.namespace
    labels    = local.agent_labels
  }
  # The agents read only their local etcd; they need no Kubernetes API access. Their only
  # token is the projected one for the apiserver's issuer (agent.tf).
  automount_service_account_token = false
}

# The apiserver watches the cluster's services, endpoint slices, pods, nodes and namespaces and
# publishes the global ones; it changes nothing in Kubernetes. It reviews the agents'
# ServiceAccount tokens before it issues them certificates.
resource "kubernetes_cluster_role_v1" "apiserver" {
  metadata {
    name   = "clustermesh-apiserver-${var.cluster_name}"
    labels = local.apiserver_labels
  }

  rule {
    api_groups = [""]
    resources  = ["services", "pods", "nodes", "namespaces"]
    verbs      = ["get", "list", "watch"]
  }

  rule {
    api_groups = ["discovery.k8s.io"]
    resources  = ["endpointslices"]
    verbs      = ["get", "list", "watch"]
  }

  rule {
    api_groups = ["authentication.k8s.io"]
    resources  = ["tokenreviews"]
    verbs      = ["create"]
  }
}

resource "kubernetes_cluster_role_binding_v1" "apiserver" {
  metadata {
    name   = "clustermesh-apiserver-${var.cluster_name}"
    labels = local.apiserver_labels
  }

  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "ClusterRole"
    name      = kubernetes_cluster_role_v1.apiserver.metadata[0].name
  }

  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.apiserver.metadata[0].name
    namespace = local.namespace
  }
}
