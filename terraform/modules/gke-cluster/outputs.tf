output "name" {
  description = "The GKE cluster's name."
  value       = google_container_cluster.this.name
}

output "endpoint" {
  description = "The Kubernetes API endpoint (https URL)."
  value       = "https://${google_container_cluster.this.endpoint}"
}

output "cluster_ca_certificate" {
  description = "The Kubernetes API's CA certificate (PEM), for a kubernetes provider or a kubeconfig."
  value       = base64decode(google_container_cluster.this.master_auth[0].cluster_ca_certificate)
}

output "region" {
  description = "The cluster's region."
  value       = var.region
}

output "network_id" {
  description = "The VPC network's ID, for VPN gateways and routers."
  value       = google_compute_network.this.id
}

output "network_name" {
  description = "The VPC network's name."
  value       = google_compute_network.this.name
}

output "node_cidrs" {
  description = "The node range."
  value       = [google_compute_subnetwork.nodes.ip_cidr_range]
}

output "mesh_source_cidrs" {
  description = "Where this cluster's mesh traffic comes from, for the other regions' peer_node_cidrs: the node range (agents run on the host network) and the pod range (the apiserver pod keeps its IP towards private destinations)."
  value       = [var.node_cidr, var.pod_cidr]
}

output "node_tag" {
  description = "The network tag of the nodes, which the mesh firewall rule targets."
  value       = local.node_tag
}
