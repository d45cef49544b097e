variable "name" {
  type        = string
  description = "Name of the GKE cluster, also used for its network, subnetwork, router and firewall rules. Following the mesh's cluster name rule lets one name serve both."

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]*[a-z0-9])?$", var.name)) && length(var.name) <= 32
    error_message = "name must start with a letter, then lower-case letters, digits and '-', end with a letter or digit, and be at most 32 characters long."
  }
}

variable "project_id" {
  type        = string
  description = "The Google Cloud project to create everything in."

  validation {
    condition     = can(regex("^[a-z][-a-z0-9]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project ID (6 to 30 lower-case letters, digits and '-')."
  }
}

variable "region" {
  type        = string
  description = "The region of the subnetwork, router and cluster, for example europe-west1."

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1."
  }
}

variable "zones" {
  type        = list(string)
  description = "Zones of the region the nodes run in; empty makes a regional cluster with nodes in every zone GKE picks (three times the nodes of node_pools' counts)."
  default     = []
}

variable "node_cidr" {
  type        = string
  description = "Primary range of the subnetwork: the node IPs (and internal load balancer IPs). It must not overlap the other regions of the mesh."

  validation {
    condition     = can(cidrhost(var.node_cidr, 0))
    error_message = "node_cidr must be a CIDR such as 10.30.0.0/20."
  }
}

variable "pod_cidr" {
  type        = string
  description = "Secondary range for pod IPs. Pods keep their IP towards private destinations (GKE masquerades only to public ones), so the other regions must also accept mesh traffic from here; keep it apart from their ranges."

  validation {
    condition     = can(cidrhost(var.pod_cidr, 0))
    error_message = "pod_cidr must be a CIDR such as 10.31.0.0/16."
  }
}

variable "service_cidr" {
  type        = string
  description = "Secondary range for ClusterIP services (cluster-local; overlapping other clusters' service ranges is harmless)."

  validation {
    condition     = can(cidrhost(var.service_cidr, 0))
    error_message = "service_cidr must be a CIDR such as 10.32.0.0/20."
  }
}

variable "master_cidr" {
  type        = string
  description = "A /28 for the control plane's private endpoint (private nodes talk to it there)."
  default     = "172.16.0.0/28"

  validation {
    condition     = can(cidrhost(var.master_cidr, 0)) && endswith(var.master_cidr, "/28")
    error_message = "master_cidr must be a /28 CIDR."
  }
}

variable "api_allowed_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the Kubernetes API endpoint (where Terraform and kubectl run). No default on purpose: say who may reach the API."

  validation {
    condition     = length(var.api_allowed_cidrs) > 0 && alltrue([for c in var.api_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "api_allowed_cidrs must list at least one CIDR, such as 203.0.113.7/32."
  }
}

variable "peer_node_cidrs" {
  type        = list(string)
  description = "Where the other regions' mesh traffic comes from (their node CIDRs). Only TCP 2379 (etcd) and 4244 (tunnel) are opened to them, nothing else."
  default     = []

  validation {
    condition     = alltrue([for c in var.peer_node_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "peer_node_cidrs must be CIDRs, and not 0.0.0.0/0."
  }
}

variable "release_channel" {
  type        = string
  description = "GKE release channel."
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "datapath_provider" {
  type        = string
  description = "GKE datapath. LEGACY_DATAPATH (kube-proxy) by default: Dataplane V2 (ADVANCED_DATAPATH) is Cilium, whose own socket load balancer also hooks connect()."
  default     = "LEGACY_DATAPATH"

  validation {
    condition     = contains(["LEGACY_DATAPATH", "ADVANCED_DATAPATH"], var.datapath_provider)
    error_message = "datapath_provider must be LEGACY_DATAPATH or ADVANCED_DATAPATH."
  }
}

variable "node_pools" {
  type = map(object({
    machine_type   = string
    min_node_count = number
    max_node_count = number
    disk_size_gb   = optional(number, 50)
    spot           = optional(bool, false)
    labels         = optional(map(string), {})
  }))
  description = "Node pools by name; counts are per zone. COS nodes have cgroup v2 and BTF, which the agent needs."
  default = {
    default = {
      machine_type   = "e2-standard-4"
      min_node_count = 1
      max_node_count = 3
    }
  }

  validation {
    condition     = alltrue([for p in values(var.node_pools) : p.min_node_count >= 0 && p.min_node_count <= p.max_node_count && p.max_node_count >= 1])
    error_message = "Each node pool needs 0 <= min_node_count <= max_node_count and max_node_count >= 1."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to destroy the cluster (GKE's own guard). The examples turn it off so that `terraform destroy` works."
  default     = true
}

variable "labels" {
  type        = map(string)
  description = "Labels added to the cluster and its nodes."
  default     = {}
}
