output "clusters" {
  description = "Per cluster: cloud, region, Kubernetes API endpoint, etcd endpoints of the mesh, and the command that writes a kubeconfig entry."
  value = {
    (module.eks.name) = {
      cloud               = "aws"
      region              = module.eks.region
      endpoint            = module.eks.endpoint
      apiserver_endpoints = module.mesh_eks.apiserver_endpoints
      kubeconfig_command  = "aws eks update-kubeconfig --region ${module.eks.region} --name ${module.eks.name} --alias ${module.eks.name}"
    }
    (module.gke.name) = {
      cloud               = "gcp"
      region              = module.gke.region
      endpoint            = module.gke.endpoint
      apiserver_endpoints = module.mesh_gke.apiserver_endpoints
      kubeconfig_command  = "gcloud container clusters get-credentials ${module.gke.name} --location ${length(var.gcp_cluster.zones) == 1 ? var.gcp_cluster.zones[0] : var.gcp_cluster.region} --project ${var.gcp_project_id}"
    }
  }
}

output "vpn_tunnels" {
  description = "The four VPN tunnels' names on the Google side (check their BGP sessions with gcloud compute routers get-status)."
  value       = google_compute_vpn_tunnel.aws[*].name
}

output "connected_peers" {
  description = "Per cluster, the peers written into its peers Secret (name => cluster ID)."
  value = {
    (module.mesh_eks.cluster.name) = module.connect_eks.connected_peers
    (module.mesh_gke.cluster.name) = module.connect_gke.connected_peers
  }
}
