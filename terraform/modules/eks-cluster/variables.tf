variable "name" {
  type        = string
  description = "Name of the EKS cluster, also used for its VPC, roles and security groups. Following the mesh's cluster name rule lets one name serve both."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.name)) && length(var.name) <= 32
    error_message = "name must match ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ and be at most 32 characters long."
  }
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the control plane and node groups, for example \"1.31\"."
  default     = "1.31"

  validation {
    condition     = can(regex("^1\\.[0-9]+$", var.kubernetes_version))
    error_message = "kubernetes_version must look like 1.31."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR of the VPC. It must not overlap the other regions of the mesh (their nodes are reached through peering or VPN)."

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 24
    error_message = "vpc_cidr must be a CIDR of /24 or larger, such as 10.10.0.0/16."
  }
}

variable "node_subnet_cidrs" {
  type        = list(string)
  description = "Private subnets of the nodes, one per availability zone (2 to 6), inside vpc_cidr. With the VPC CNI, pods take their IPs from these subnets too. These are the node CIDRs the other regions open 2379 and 4244 to."

  validation {
    condition     = length(var.node_subnet_cidrs) >= 2 && length(var.node_subnet_cidrs) <= 6 && alltrue([for c in var.node_subnet_cidrs : can(cidrhost(c, 0))])
    error_message = "node_subnet_cidrs must list 2 to 6 CIDRs (EKS needs subnets in at least two availability zones)."
  }
}

variable "public_subnet_cidrs" {
  type        = list(string)
  description = "Public subnets (NAT gateway, internet-facing load balancers), one per availability zone, inside vpc_cidr; as many as node_subnet_cidrs."

  validation {
    condition     = length(var.public_subnet_cidrs) >= 2 && alltrue([for c in var.public_subnet_cidrs : can(cidrhost(c, 0))])
    error_message = "public_subnet_cidrs must list at least 2 CIDRs."
  }
}

variable "availability_zones" {
  type        = list(string)
  description = "Availability zones of the subnets, in order; empty picks the region's first available ones."
  default     = []
}

variable "api_allowed_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the Kubernetes API endpoint from the internet (where Terraform and kubectl run). No default on purpose: say who may reach the API."

  validation {
    condition     = length(var.api_allowed_cidrs) > 0 && alltrue([for c in var.api_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "api_allowed_cidrs must list at least one CIDR, such as 203.0.113.7/32."
  }
}

variable "peer_node_cidrs" {
  type        = list(string)
  description = "Where the other regions' mesh traffic comes from (their node CIDRs, and on GKE their pod range). Only TCP 2379 (etcd) and 4244 (tunnel) are opened to them, nothing else."
  default     = []

  validation {
    condition     = alltrue([for c in var.peer_node_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "peer_node_cidrs must be CIDRs, and not 0.0.0.0/0."
  }
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
  description = "Managed node groups by name. The nodes need a kernel with cgroup v2 and BTF (Amazon Linux 2023, the default AMI type here)."
  default = {
    default = {
      instance_types = ["m6i.large"]
      min_size       = 2
      max_size       = 4
      desired_size   = 2
    }
  }

  validation {
    condition = alltrue([
      for g in values(var.node_groups) :
      g.min_size >= 0 && g.min_size <= g.desired_size && g.desired_size <= g.max_size && g.max_size >= 1 && contains(["ON_DEMAND", "SPOT"], g.capacity_type)
    ])
    error_message = "Each node group needs 0 <= min_size <= desired_size <= max_size, max_size >= 1, and capacity_type ON_DEMAND or SPOT."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every AWS resource."
  default     = {}
}
