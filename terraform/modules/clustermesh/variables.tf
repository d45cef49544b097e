variable "cluster_name" {
  type        = string
  description = "This cluster's name in the mesh: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 32 characters. Unique in the mesh."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.cluster_name)) && length(var.cluster_name) <= 32
    error_message = "cluster_name must match ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ and be at most 32 characters long."
  }
}

variable "cluster_id" {
  type        = number
  description = "This cluster's ID in the mesh, 1..255, unique in the mesh. Identities carry it in their high bits."

  validation {
    condition     = var.cluster_id >= 1 && var.cluster_id <= 255 && floor(var.cluster_id) == var.cluster_id
    error_message = "cluster_id must be a whole number from 1 to 255."
  }
}

variable "trust_domain" {
  type        = string
  description = "SPIFFE trust domain of the mesh; node certificates carry spiffe://<trust_domain>/cluster/<cluster_name>/node/<node>. The same in every cluster of a mesh."
  default     = "clustermesh.local"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.trust_domain))
    error_message = "trust_domain must be a lower-case DNS name (letters, digits, '-', '.')."
  }
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace the mesh is installed into."
  default     = "clustermesh"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.namespace)) && length(var.namespace) <= 63
    error_message = "namespace must be a DNS label (lower-case letters, digits, '-', at most 63 characters)."
  }
}

variable "create_namespace" {
  type        = bool
  description = "Create the namespace; set to false to install into one that exists."
  default     = true
}

variable "image" {
  type        = string
  description = "Container image holding the clustermesh-apiserver and clustermesh-agent binaries (for example registry.example.com/clustermesh:0.1.0)."

  validation {
    condition     = length(trimspace(var.image)) > 0 && !can(regex("\\s", var.image))
    error_message = "image must be a non-empty image reference without spaces."
  }
}

variable "image_pull_policy" {
  type        = string
  description = "Pull policy of the clustermesh containers."
  default     = "IfNotPresent"

  validation {
    condition     = contains(["Always", "IfNotPresent", "Never"], var.image_pull_policy)
    error_message = "image_pull_policy must be Always, IfNotPresent or Never."
  }
}

variable "etcd_image" {
  type        = string
  description = "Container image of the etcd that runs beside the apiserver (it must provide /usr/local/bin/etcd)."
  default     = "registry.k8s.io/etcd:3.5.21-0"

  validation {
    condition     = length(trimspace(var.etcd_image)) > 0 && !can(regex("\\s", var.etcd_image))
    error_message = "etcd_image must be a non-empty image reference without spaces."
  }
}

variable "service_type" {
  type        = string
  description = "How etcd (port 2379) is exposed to the other clusters: LoadBalancer (the address is read back from the Service) or NodePort (then set advertised_addresses to node addresses the peers can reach)."
  default     = "LoadBalancer"

  validation {
    condition     = contains(["LoadBalancer", "NodePort"], var.service_type)
    error_message = "service_type must be LoadBalancer or NodePort."
  }
}

variable "service_annotations" {
  type        = map(string)
  description = "Annotations of the etcd Service, for example to ask the cloud for an internal load balancer."
  default     = {}
}

variable "load_balancer_source_ranges" {
  type        = list(string)
  description = "With service_type LoadBalancer: the CIDRs allowed to reach etcd through the load balancer (the peers' node CIDRs). Empty means what the cloud's load balancer allows by default."
  default     = []

  validation {
    condition     = alltrue([for c in var.load_balancer_source_ranges : can(cidrhost(c, 0))])
    error_message = "every entry of load_balancer_source_ranges must be a CIDR such as 10.20.0.0/16."
  }
}

variable "node_port" {
  type        = number
  description = "With service_type NodePort: the node port of etcd (30000..32767), or null to let Kubernetes choose."
  default     = null

  validation {
    condition     = var.node_port == null ? true : (var.node_port >= 30000 && var.node_port <= 32767)
    error_message = "node_port must be in 30000..32767 (the default NodePort range) or null."
  }
}

variable "advertised_addresses" {
  type        = list(string)
  description = "Host names or IPs the peers dial to reach etcd, added to the etcd server certificate. Required with NodePort (node addresses); with LoadBalancer the load balancer's address is added on its own."
  default     = []
}

variable "ca" {
  type = object({
    cert_pem = string
    key_pem  = string
  })
  description = "Bring your own cluster CA (PEM certificate and its private key). When null, a CA is generated with the tls provider and kept in the Terraform state."
  default     = null
  sensitive   = true
}

variable "ca_validity_hours" {
  type        = number
  description = "Validity of a generated CA, in hours."
  default     = 87600

  validation {
    condition     = var.ca_validity_hours >= 24
    error_message = "ca_validity_hours must be at least 24."
  }
}

variable "certificate_validity_hours" {
  type        = number
  description = "Validity of the etcd, apiserver, agent and peer certificates, in hours. Terraform renews them on the first apply within a tenth of that before expiry."
  default     = 8760

  validation {
    condition     = var.certificate_validity_hours >= 24
    error_message = "certificate_validity_hours must be at least 24."
  }
}

variable "peers_secret_name" {
  type        = string
  description = "Name of the Secret that holds the peers directory (written by the connect module). It is mounted optionally, so the mesh runs before any peer is connected."
  default     = "clustermesh-peers"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.peers_secret_name)) && length(var.peers_secret_name) <= 253
    error_message = "peers_secret_name must be a DNS subdomain."
  }
}

variable "agent_priority_class_name" {
  type        = string
  description = "Priority class of the node agents. Some clusters allow system-node-critical only in kube-system; set to \"\" for none."
  default     = "system-node-critical"
}

variable "agent_node_selector" {
  type        = map(string)
  description = "Node selector of the node-agent DaemonSet (empty: every Linux node)."
  default     = {}
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every Kubernetes object of the mesh."
  default     = {}
}
