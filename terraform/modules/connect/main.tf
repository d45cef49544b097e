# The receiving side of a connection: one Secret, mounted by the apiserver and the agents as
# their peers directory (store/src/peers.rs), with for each peer <peer>.yaml (name, ID, etcd
# endpoints, file names) and its PEM files beside it. Call this module once per cluster, with
# a kubernetes provider for that cluster and the other clusters' credentials as peers.

locals {
  peer_files = merge([
    for p in var.peers : {
      "${p.name}.yaml" = yamlencode({
        name      = p.name
        id        = p.id
        endpoints = p.endpoints
        ca        = "${p.name}-ca.crt"
        cert      = "${p.name}-client.crt"
        key       = "${p.name}-client.key"
        tunnel_ca = "${p.name}-tunnel-ca.crt"
      })
      "${p.name}-ca.crt"        = p.ca_pem
      "${p.name}-client.crt"    = p.client_cert_pem
      "${p.name}-client.key"    = p.client_key_pem
      "${p.name}-tunnel-ca.crt" = coalesce(p.tunnel_ca_pem, p.ca_pem)
    }
  ]...)

  peer_names = [for p in var.peers : p.name]
  peer_ids   = [for p in var.peers : p.id]
}

resource "kubernetes_secret_v1" "peers" {
  metadata {
    name      = var.secret_name
    namespace = var.namespace
    labels = merge(var.labels, {
      "app.kubernetes.io/part-of"    = "clustermesh"
      "app.kubernetes.io/managed-by" = "terraform"
      "clustermesh.io/cluster"       = var.local_cluster.name
    })
  }

  data = local.peer_files

  lifecycle {
    precondition {
      condition     = !contains(local.peer_names, var.local_cluster.name) && !contains(local.peer_ids, var.local_cluster.id)
      error_message = "A cluster cannot be its own peer: no peer may have local_cluster's name or ID."
    }
  }
}
