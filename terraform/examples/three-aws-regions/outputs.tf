output "clusters" {
  description = "Per cluster: region, Kubernetes API endpoint, etcd endpoints of the mesh, and the command that writes a kubeconfig entry."
  value = {
    for m in [
      { eks = module.eks_a, mesh = module.mesh_a },
      { eks = module.eks_b, mesh = module.mesh_b },
      { eks = module.eks_c, mesh = module.mesh_c },
    ] :
    m.eks.name => {
      region              = m.eks.region
      endpoint            = m.eks.endpoint
      apiserver_endpoints = m.mesh.apiserver_endpoints
      kubeconfig_command  = "aws eks update-kubeconfig --region ${m.eks.region} --name ${m.eks.name} --alias ${m.eks.name}"
    }
  }
}

output "connected_peers" {
  description = "Per cluster, the peers written into its peers Secret (name => cluster ID)."
  value = {
    (module.mesh_a.cluster.name) = module.connect_a.connected_peers
    (module.mesh_b.cluster.name) = module.connect_b.connected_peers
    (module.mesh_c.cluster.name) = module.connect_c.connected_peers
  }
}
