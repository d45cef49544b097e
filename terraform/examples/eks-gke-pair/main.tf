# One EKS and one GKE cluster, joined by an HA VPN with BGP (four IPsec tunnels), the mesh
# installed in both and each connected to the other. Mesh traffic stays on private addresses.

locals {
  eks_mesh_cidrs = var.aws_cluster.node_subnet_cidrs
  # GKE pods keep their IP towards private destinations, so the pod range is a source too.
  gke_mesh_cidrs = [var.gcp_cluster.node_cidr, var.gcp_cluster.pod_cidr]
}

# --- Clusters --------------------------------------------------------------------------------

module "eks" {
  source = "../../modules/eks-cluster"

  name                = var.aws_cluster.name
  vpc_cidr            = var.aws_cluster.vpc_cidr
  node_subnet_cidrs   = var.aws_cluster.node_subnet_cidrs
  public_subnet_cidrs = var.aws_cluster.public_subnet_cidrs
  peer_node_cidrs     = local.gke_mesh_cidrs
  api_allowed_cidrs   = var.api_allowed_cidrs
  tags                = var.tags
}

module "gke" {
  source = "../../modules/gke-cluster"

  name                = var.gcp_cluster.name
  project_id          = var.gcp_project_id
  region              = var.gcp_cluster.region
  zones               = var.gcp_cluster.zones
  node_cidr           = var.gcp_cluster.node_cidr
  pod_cidr            = var.gcp_cluster.pod_cidr
  service_cidr        = var.gcp_cluster.service_cidr
  master_cidr         = var.gcp_cluster.master_cidr
  peer_node_cidrs     = local.eks_mesh_cidrs
  api_allowed_cidrs   = var.api_allowed_cidrs
  deletion_protection = false
  labels              = var.tags
}

# --- The mesh --------------------------------------------------------------------------------

module "mesh_eks" {
  source    = "../../modules/clustermesh"
  providers = { kubernetes = kubernetes.eks }

  cluster_name = var.aws_cluster.name
  cluster_id   = var.aws_cluster.id
  image        = var.clustermesh_image
  service_type = "LoadBalancer"
  service_annotations = {
    "service.beta.kubernetes.io/aws-load-balancer-type"     = "nlb"
    "service.beta.kubernetes.io/aws-load-balancer-internal" = "true"
  }
  load_balancer_source_ranges = local.gke_mesh_cidrs
  labels                      = var.labels

  depends_on = [module.eks]
}

module "mesh_gke" {
  source    = "../../modules/clustermesh"
  providers = { kubernetes = kubernetes.gke }

  cluster_name = var.gcp_cluster.name
  cluster_id   = var.gcp_cluster.id
  image        = var.clustermesh_image
  service_type = "LoadBalancer"
  service_annotations = {
    "networking.gke.io/load-balancer-type"                         = "Internal"
    "networking.gke.io/internal-load-balancer-allow-global-access" = "true"
  }
  load_balancer_source_ranges = local.eks_mesh_cidrs
  labels                      = var.labels

  depends_on = [module.gke]
}

module "connect_eks" {
  source    = "../../modules/connect"
  providers = { kubernetes = kubernetes.eks }

  local_cluster = module.mesh_eks.cluster
  namespace     = module.mesh_eks.namespace
  secret_name   = module.mesh_eks.peers_secret_name
  peers         = [module.mesh_gke.peer_credentials]
  labels        = var.labels
}

module "connect_gke" {
  source    = "../../modules/connect"
  providers = { kubernetes = kubernetes.gke }

  local_cluster = module.mesh_gke.cluster
  namespace     = module.mesh_gke.namespace
  secret_name   = module.mesh_gke.peers_secret_name
  peers         = [module.mesh_eks.peer_credentials]
  labels        = var.labels
}
