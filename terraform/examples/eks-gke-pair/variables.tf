variable "aws_cluster" {
  type = object({
    name                = string
    id                  = number
    region              = string
    vpc_cidr            = string
    node_subnet_cidrs   = list(string)
    public_subnet_cidrs = list(string)
  })
  description = "The EKS side: mesh name and ID, AWS region, VPC CIDR and subnets."
  default = {
    name                = "aws-euw1"
    id                  = 1
    region              = "eu-west-1"
    vpc_cidr            = "10.10.0.0/16"
    node_subnet_cidrs   = ["10.10.0.0/19", "10.10.32.0/19"]
    public_subnet_cidrs = ["10.10.192.0/24", "10.10.193.0/24"]
  }
}

variable "gcp_cluster" {
  type = object({
    name         = string
    id           = number
    region       = string
    zones        = list(string)
    node_cidr    = string
    pod_cidr     = string
    service_cidr = string
    master_cidr  = string
  })
  description = "The GKE side: mesh name and ID, region and zones, and the node, pod, service and control-plane ranges. One zone makes a zonal cluster (cheaper)."
  default = {
    name         = "gcp-euw1"
    id           = 2
    region       = "europe-west1"
    zones        = ["europe-west1-b"]
    node_cidr    = "10.20.0.0/20"
    pod_cidr     = "10.24.0.0/14"
    service_cidr = "10.20.16.0/20"
    master_cidr  = "172.16.0.0/28"
  }
}

variable "gcp_project_id" {
  type        = string
  description = "The Google Cloud project for the GKE side."
}

variable "api_allowed_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach both Kubernetes API endpoints: where you run Terraform and kubectl (for example your IP as 203.0.113.7/32)."
}

variable "clustermesh_image" {
  type        = string
  description = "Container image with the clustermesh-apiserver and clustermesh-agent binaries, pullable from both clouds."
}

variable "aws_bgp_asn" {
  type        = number
  description = "Private BGP ASN of the AWS virtual private gateway."
  default     = 64512

  validation {
    condition     = var.aws_bgp_asn >= 64512 && var.aws_bgp_asn <= 65534
    error_message = "aws_bgp_asn must be a private 16-bit ASN (64512..65534)."
  }
}

variable "gcp_bgp_asn" {
  type        = number
  description = "Private BGP ASN of the Google Cloud Router; different from aws_bgp_asn."
  default     = 64514

  validation {
    condition     = var.gcp_bgp_asn >= 64512 && var.gcp_bgp_asn <= 65534
    error_message = "gcp_bgp_asn must be a private 16-bit ASN (64512..65534)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags of the AWS resources and labels of the Google Cloud ones (keys and values in lower case, digits, '-' and '_' suit both)."
  default = {
    "project" = "clustermesh-example"
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every Kubernetes object of the mesh."
  default     = {}
}
