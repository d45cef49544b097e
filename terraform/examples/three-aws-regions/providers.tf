# Providers cannot be created per list element, so each region has its own aws and kubernetes
# provider. The kubernetes providers use short-lived tokens from aws_eks_cluster_auth.

provider "aws" {
  alias  = "a"
  region = var.clusters[0].region
  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias  = "b"
  region = var.clusters[1].region
  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias  = "c"
  region = var.clusters[2].region
  default_tags {
    tags = var.tags
  }
}

data "aws_eks_cluster_auth" "a" {
  provider = aws.a
  name     = module.eks_a.name
}

data "aws_eks_cluster_auth" "b" {
  provider = aws.b
  name     = module.eks_b.name
}

data "aws_eks_cluster_auth" "c" {
  provider = aws.c
  name     = module.eks_c.name
}

provider "kubernetes" {
  alias                  = "a"
  host                   = module.eks_a.endpoint
  cluster_ca_certificate = module.eks_a.cluster_ca_certificate
  token                  = data.aws_eks_cluster_auth.a.token
}

provider "kubernetes" {
  alias                  = "b"
  host                   = module.eks_b.endpoint
  cluster_ca_certificate = module.eks_b.cluster_ca_certificate
  token                  = data.aws_eks_cluster_auth.b.token
}

provider "kubernetes" {
  alias                  = "c"
  host                   = module.eks_c.endpoint
  cluster_ca_certificate = module.eks_c.cluster_ca_certificate
  token                  = data.aws_eks_cluster_auth.c.token
}
