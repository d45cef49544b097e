provider "aws" {
  region = var.aws_cluster.region
  default_tags {
    tags = var.tags
  }
}

provider "google" {
  project        = var.gcp_project_id
  region         = var.gcp_cluster.region
  default_labels = var.tags
}

data "aws_eks_cluster_auth" "eks" {
  name = module.eks.name
}

data "google_client_config" "current" {}

provider "kubernetes" {
  alias                  = "eks"
  host                   = module.eks.endpoint
  cluster_ca_certificate = module.eks.cluster_ca_certificate
  token                  = data.aws_eks_cluster_auth.eks.token
}

provider "kubernetes" {
  alias                  = "gke"
  host                   = module.gke.endpoint
  cluster_ca_certificate = module.gke.cluster_ca_certificate
  token                  = data.google_client_config.current.access_token
}
