variable "clusters" {
  type = list(object({
    name                = string
    id                  = number
    region              = string
    vpc_cidr            = string
    node_subnet_cidrs   = list(string)
    public_subnet_cidrs = list(string)
  }))
  description = "The three clusters of the mesh, one per region: mesh name and ID, AWS region, VPC CIDR and subnets. The VPC CIDRs must not overlap (they are peered)."
  default = [
    {
      name                = "aws-use1"
      id                  = 1
      region              = "us-east-1"
      vpc_cidr            = "10.10.0.0/16"
      node_subnet_cidrs   = ["10.10.0.0/19", "10.10.32.0/19", "10.10.64.0/19"]
      public_subnet_cidrs = ["10.10.192.0/24", "10.10.193.0/24", "10.10.194.0/24"]
    },
    {
      name                = "aws-euw1"
      id                  = 2
      region              = "eu-west-1"
      vpc_cidr            = "10.20.0.0/16"
      node_subnet_cidrs   = ["10.20.0.0/19", "10.20.32.0/19", "10.20.64.0/19"]
      public_subnet_cidrs = ["10.20.192.0/24", "10.20.193.0/24", "10.20.194.0/24"]
    },
    {
      name                = "aws-apse1"
      id                  = 3
      region              = "ap-southeast-1"
      vpc_cidr            = "10.30.0.0/16"
      node_subnet_cidrs   = ["10.30.0.0/19", "10.30.32.0/19", "10.30.64.0/19"]
      public_subnet_cidrs = ["10.30.192.0/24", "10.30.193.0/24", "10.30.194.0/24"]
    },
  ]

  validation {
    condition     = length(var.clusters) == 3
    error_message = "This example wires exactly three regions (one provider each); add a provider block and module calls for more."
  }

  validation {
    condition     = length(distinct([for c in var.clusters : c.name])) == 3 && length(distinct([for c in var.clusters : c.id])) == 3 && length(distinct([for c in var.clusters : c.region])) == 3
    error_message = "The clusters need distinct names, IDs and regions."
  }
}

variable "api_allowed_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the three Kubernetes API endpoints: where you run Terraform and kubectl (for example your IP as 203.0.113.7/32)."
}

variable "clustermesh_image" {
  type        = string
  description = "Container image with the clustermesh-apiserver and clustermesh-agent binaries, pullable from all three regions."
}

variable "node_groups" {
  type = map(object({
    instance_types = list(string)
    min_size       = number
    max_size       = number
    desired_size   = number
    capacity_type  = optional(string, "ON_DEMAND")
    disk_size_gb   = optional(number, 50)
    labels         = optional(map(string), {})
  }))
  description = "Managed node groups of every cluster (see the eks-cluster module)."
  default = {
    default = {
      instance_types = ["m6i.large"]
      min_size       = 2
      max_size       = 4
      desired_size   = 2
    }
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every AWS resource."
  default = {
    "project" = "clustermesh-example"
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every Kubernetes object of the mesh."
  default     = {}
}
