# One EKS cluster in one region: a VPC with private node subnets and public subnets (one NAT
# gateway), the cluster and its managed node groups, and a security group rule set that lets
# the other regions of the mesh reach etcd (2379) and the tunnel (4244) on the nodes, and
# nothing else.

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_availability_zones" "available" {
  state = "available"
}

locals {
  azs = length(var.availability_zones) > 0 ? var.availability_zones : slice(data.aws_availability_zones.available.names, 0, length(var.node_subnet_cidrs))

  tags = merge(var.tags, {
    "clustermesh.io/cluster" = var.name
  })

  mesh_ports = {
    etcd   = 2379
    tunnel = 4244
  }
  # One ingress rule per (port, peer CIDR).
  mesh_rules = {
    for pair in setproduct(keys(local.mesh_ports), var.peer_node_cidrs) :
    "${pair[0]}-${pair[1]}" => { port = local.mesh_ports[pair[0]], cidr = pair[1], what = pair[0] }
  }

  policy_prefix = "arn:${data.aws_partition.current.partition}:iam::aws:policy"
}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(local.tags, { Name = var.name })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = var.name })
}

resource "aws_subnet" "public" {
  count = length(var.public_subnet_cidrs)

  vpc_id                  = aws_vpc.this.id
  cidr_block              = var.public_subnet_cidrs[count.index]
  availability_zone       = local.azs[count.index]
  map_public_ip_on_launch = false

  tags = merge(local.tags, {
    Name                                = "${var.name}-public-${local.azs[count.index]}"
    "kubernetes.io/role/elb"            = "1"
    "kubernetes.io/cluster/${var.name}" = "shared"
  })

  lifecycle {
    precondition {
      condition     = length(var.public_subnet_cidrs) == length(var.node_subnet_cidrs)
      error_message = "public_subnet_cidrs and node_subnet_cidrs must have one CIDR per availability zone each (the same number)."
    }
  }
}

resource "aws_subnet" "nodes" {
  count = length(var.node_subnet_cidrs)

  vpc_id            = aws_vpc.this.id
  cidr_block        = var.node_subnet_cidrs[count.index]
  availability_zone = local.azs[count.index]

  tags = merge(local.tags, {
    Name                                = "${var.name}-nodes-${local.azs[count.index]}"
    "kubernetes.io/role/internal-elb"   = "1"
    "kubernetes.io/cluster/${var.name}" = "shared"
  })
}

resource "aws_eip" "nat" {
  domain = "vpc"
  tags   = merge(local.tags, { Name = "${var.name}-nat" })
}

# One NAT gateway for the whole VPC keeps the cost down; it is a single point of failure for
# egress to the internet (not for mesh traffic, which stays on private routes).
resource "aws_nat_gateway" "this" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public[0].id
  tags          = merge(local.tags, { Name = var.name })

  depends_on = [aws_internet_gateway.this]
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route" "public_internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "public" {
  count = length(var.public_subnet_cidrs)

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

# Routes to the other regions (peering, VPN) are added to this table by the caller.
resource "aws_route_table" "nodes" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = "${var.name}-nodes" })
}

resource "aws_route" "nodes_internet" {
  route_table_id         = aws_route_table.nodes.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this.id
}

resource "aws_route_table_association" "nodes" {
  count = length(var.node_subnet_cidrs)

  subnet_id      = aws_subnet.nodes[count.index].id
  route_table_id = aws_route_table.nodes.id
}

# --- IAM -------------------------------------------------------------------------------------

resource "aws_iam_role" "cluster" {
  name_prefix = "${var.name}-cluster-"
  tags        = local.tags

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "eks.amazonaws.com" }
      Action    = ["sts:AssumeRole", "sts:TagSession"]
    }]
  })
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "${local.policy_prefix}/AmazonEKSClusterPolicy"
}

resource "aws_iam_role" "nodes" {
  name_prefix = "${var.name}-nodes-"
  tags        = local.tags

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "nodes" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ])

  role       = aws_iam_role.nodes.name
  policy_arn = "${local.policy_prefix}/${each.key}"
}

# --- The cluster -----------------------------------------------------------------------------

resource "aws_eks_cluster" "this" {
  name     = var.name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn
  tags     = local.tags

  vpc_config {
    subnet_ids              = aws_subnet.nodes[*].id
    endpoint_private_access = true
    endpoint_public_access  = true
    public_access_cidrs     = var.api_allowed_cidrs
  }

  access_config {
    authentication_mode                         = "API_AND_CONFIG_MAP"
    bootstrap_cluster_creator_admin_permissions = true
  }

  depends_on = [aws_iam_role_policy_attachment.cluster]
}

resource "aws_eks_node_group" "this" {
  for_each = var.node_groups

  cluster_name    = aws_eks_cluster.this.name
  node_group_name = each.key
  node_role_arn   = aws_iam_role.nodes.arn
  subnet_ids      = aws_subnet.nodes[*].id
  version         = var.kubernetes_version
  ami_type        = "AL2023_x86_64_STANDARD"
  instance_types  = each.value.instance_types
  capacity_type   = each.value.capacity_type
  disk_size       = each.value.disk_size_gb
  labels          = each.value.labels
  tags            = local.tags

  scaling_config {
    min_size     = each.value.min_size
    max_size     = each.value.max_size
    desired_size = each.value.desired_size
  }

  update_config {
    max_unavailable = 1
  }

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.nodes, aws_route_table_association.nodes]
}

# --- Mesh ports ------------------------------------------------------------------------------
# Managed node groups without a launch template use the cluster security group, so the mesh
# rules go there: TCP 2379 and 4244 from each peer CIDR, one rule each.

resource "aws_vpc_security_group_ingress_rule" "mesh" {
  for_each = local.mesh_rules

  security_group_id = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
  description       = "clustermesh ${each.value.what} from ${each.value.cidr}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
  tags              = merge(local.tags, { Name = "${var.name}-mesh-${each.key}" })
}
