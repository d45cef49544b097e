# Three EKS clusters in three regions, their VPCs peered pairwise, the mesh installed in each,
# and each cluster connected to the other two.

locals {
  a = var.clusters[0]
  b = var.clusters[1]
  c = var.clusters[2]

  # Each cluster opens the mesh ports to the other two's node subnets, and nothing else.
  peer_cidrs = [
    for i, _ in var.clusters :
    flatten([for j, other in var.clusters : other.node_subnet_cidrs if j != i])
  ]

  # etcd is exposed on an internal NLB: reachable over the peering, not from the internet. The
  # cloud controller opens its node port to load_balancer_source_ranges (the peers) alone.
  internal_nlb = {
    "service.beta.kubernetes.io/aws-load-balancer-type"     = "nlb"
    "service.beta.kubernetes.io/aws-load-balancer-internal" = "true"
  }
}

# --- Clusters --------------------------------------------------------------------------------

module "eks_a" {
  source    = "../../modules/eks-cluster"
  providers = { aws = aws.a }

  name                = local.a.name
  vpc_cidr            = local.a.vpc_cidr
  node_subnet_cidrs   = local.a.node_subnet_cidrs
  public_subnet_cidrs = local.a.public_subnet_cidrs
  peer_node_cidrs     = local.peer_cidrs[0]
  api_allowed_cidrs   = var.api_allowed_cidrs
  node_groups         = var.node_groups
  tags                = var.tags
}

module "eks_b" {
  source    = "../../modules/eks-cluster"
  providers = { aws = aws.b }

  name                = local.b.name
  vpc_cidr            = local.b.vpc_cidr
  node_subnet_cidrs   = local.b.node_subnet_cidrs
  public_subnet_cidrs = local.b.public_subnet_cidrs
  peer_node_cidrs     = local.peer_cidrs[1]
  api_allowed_cidrs   = var.api_allowed_cidrs
  node_groups         = var.node_groups
  tags                = var.tags
}

module "eks_c" {
  source    = "../../modules/eks-cluster"
  providers = { aws = aws.c }

  name                = local.c.name
  vpc_cidr            = local.c.vpc_cidr
  node_subnet_cidrs   = local.c.node_subnet_cidrs
  public_subnet_cidrs = local.c.public_subnet_cidrs
  peer_node_cidrs     = local.peer_cidrs[2]
  api_allowed_cidrs   = var.api_allowed_cidrs
  node_groups         = var.node_groups
  tags                = var.tags
}

# --- Private routes between the regions ------------------------------------------------------

module "peering_ab" {
  source    = "../../modules/aws-vpc-peering"
  providers = { aws.requester = aws.a, aws.accepter = aws.b }

  name      = "${local.a.name}-${local.b.name}"
  requester = { vpc_id = module.eks_a.vpc_id, route_table_id = module.eks_a.node_route_table_id, cidr = local.a.vpc_cidr }
  accepter  = { vpc_id = module.eks_b.vpc_id, route_table_id = module.eks_b.node_route_table_id, cidr = local.b.vpc_cidr, region = local.b.region }
  tags      = var.tags
}

module "peering_ac" {
  source    = "../../modules/aws-vpc-peering"
  providers = { aws.requester = aws.a, aws.accepter = aws.c }

  name      = "${local.a.name}-${local.c.name}"
  requester = { vpc_id = module.eks_a.vpc_id, route_table_id = module.eks_a.node_route_table_id, cidr = local.a.vpc_cidr }
  accepter  = { vpc_id = module.eks_c.vpc_id, route_table_id = module.eks_c.node_route_table_id, cidr = local.c.vpc_cidr, region = local.c.region }
  tags      = var.tags
}

module "peering_bc" {
  source    = "../../modules/aws-vpc-peering"
  providers = { aws.requester = aws.b, aws.accepter = aws.c }

  name      = "${local.b.name}-${local.c.name}"
  requester = { vpc_id = module.eks_b.vpc_id, route_table_id = module.eks_b.node_route_table_id, cidr = local.b.vpc_cidr }
  accepter  = { vpc_id = module.eks_c.vpc_id, route_table_id = module.eks_c.node_route_table_id, cidr = local.c.vpc_cidr, region = local.c.region }
  tags      = var.tags
}

# --- The mesh --------------------------------------------------------------------------------

module "mesh_a" {
  source    = "../../modules/clustermesh"
  providers = { kubernetes = kubernetes.a }

  cluster_name                = local.a.name
  cluster_id                  = local.a.id
  image                       = var.clustermesh_image
  service_type                = "LoadBalancer"
  service_annotations         = local.internal_nlb
  load_balancer_source_ranges = local.peer_cidrs[0]
  labels                      = var.labels

  depends_on = [module.eks_a]
}

module "mesh_b" {
  source    = "../../modules/clustermesh"
  providers = { kubernetes = kubernetes.b }

  cluster_name                = local.b.name
  cluster_id                  = local.b.id
  image                       = var.clustermesh_image
  service_type                = "LoadBalancer"
  service_annotations         = local.internal_nlb
  load_balancer_source_ranges = local.peer_cidrs[1]
  labels                      = var.labels

  depends_on = [module.eks_b]
}

module "mesh_c" {
  source    = "../../modules/clustermesh"
  providers = { kubernetes = kubernetes.c }

  cluster_name                = local.c.name
  cluster_id                  = local.c.id
  image                       = var.clustermesh_image
  service_type                = "LoadBalancer"
  service_annotations         = local.internal_nlb
  load_balancer_source_ranges = local.peer_cidrs[2]
  labels                      = var.labels

  depends_on = [module.eks_c]
}

# Each cluster receives the other two as peers (what `clustermesh connect` does).

module "connect_a" {
  source    = "../../modules/connect"
  providers = { kubernetes = kubernetes.a }

  local_cluster = module.mesh_a.cluster
  namespace     = module.mesh_a.namespace
  secret_name   = module.mesh_a.peers_secret_name
  peers         = [module.mesh_b.peer_credentials, module.mesh_c.peer_credentials]
  labels        = var.labels
}

module "connect_b" {
  source    = "../../modules/connect"
  providers = { kubernetes = kubernetes.b }

  local_cluster = module.mesh_b.cluster
  namespace     = module.mesh_b.namespace
  secret_name   = module.mesh_b.peers_secret_name
  peers         = [module.mesh_a.peer_credentials, module.mesh_c.peer_credentials]
  labels        = var.labels
}

module "connect_c" {
  source    = "../../modules/connect"
  providers = { kubernetes = kubernetes.c }

  local_cluster = module.mesh_c.cluster
  namespace     = module.mesh_c.namespace
  secret_name   = module.mesh_c.peers_secret_name
  peers         = [module.mesh_a.peer_credentials, module.mesh_b.peer_credentials]
  labels        = var.labels
}
