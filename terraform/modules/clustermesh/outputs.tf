output "cluster" {
  description = "This cluster's name and ID in the mesh."
  value = {
    name = var.cluster_name
    id   = var.cluster_id
  }
}

output "namespace" {
  description = "The namespace the mesh runs in."
  value       = local.namespace
}

output "apiserver_endpoints" {
  description = "The etcd endpoints (https://host:port) other clusters' apiservers dial to mirror this cluster."
  value       = local.external_endpoints
}

output "in_cluster_endpoint" {
  description = "The etcd endpoint inside this cluster (the Service's cluster DNS name)."
  value       = local.in_cluster_etcd_endpoint
}

output "ca_bundle" {
  description = "The cluster CA certificate (PEM): it signs this cluster's etcd server and node certificates."
  value       = local.ca_cert_pem
}

output "peers_secret_name" {
  description = "The Secret the apiserver and agents read peers from; pass it to the connect module."
  value       = var.peers_secret_name
}

output "peer_credentials" {
  description = "What another cluster needs to connect to this one (the connect module's peers element): name, ID, etcd endpoints, the CA, and a read-only client certificate (CN remote) with its key."
  sensitive   = true
  value = {
    name            = var.cluster_name
    id              = var.cluster_id
    endpoints       = local.external_endpoints
    ca_pem          = local.ca_cert_pem
    client_cert_pem = tls_locally_signed_cert.leaf["remote"].cert_pem
    client_key_pem  = tls_private_key.leaf["remote"].private_key_pem
    tunnel_ca_pem   = local.ca_cert_pem
  }
}
