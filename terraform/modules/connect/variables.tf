variable "local_cluster" {
  type = object({
    name = string
    id   = number
  })
  description = "The cluster that receives the peer entries (the one this module's kubernetes provider points at): its name and ID, as given to its clustermesh module."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.local_cluster.name)) && length(var.local_cluster.name) <= 32 && var.local_cluster.id >= 1 && var.local_cluster.id <= 255
    error_message = "local_cluster.name must be a cluster name (^[a-z0-9]([-a-z0-9]*[a-z0-9])?$, at most 32 characters) and local_cluster.id must be in 1..255."
  }
}

variable "namespace" {
  type        = string
  description = "Namespace of the mesh in the receiving cluster (the clustermesh module's namespace output)."
  default     = "clustermesh"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.namespace)) && length(var.namespace) <= 63
    error_message = "namespace must be a DNS label."
  }
}

variable "secret_name" {
  type        = string
  description = "Name of the peers Secret (the clustermesh module's peers_secret_name output)."
  default     = "clustermesh-peers"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.secret_name)) && length(var.secret_name) <= 253
    error_message = "secret_name must be a DNS subdomain."
  }
}

variable "peers" {
  type = list(object({
    name            = string
    id              = number
    endpoints       = list(string)
    ca_pem          = string
    client_cert_pem = string
    client_key_pem  = string
    tunnel_ca_pem   = optional(string)
  }))
  description = "The clusters to connect to: each one's clustermesh module peer_credentials output (etcd endpoints, CA, read-only client certificate and key, name and ID). Pass every other cluster of the mesh."
  sensitive   = true

  validation {
    condition = alltrue([
      for p in var.peers :
      can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", p.name)) && length(p.name) <= 32 && p.id >= 1 && p.id <= 255
    ])
    error_message = "Every peer needs a valid cluster name (^[a-z0-9]([-a-z0-9]*[a-z0-9])?$, at most 32 characters) and an ID in 1..255."
  }

  validation {
    condition     = length(distinct([for p in var.peers : p.name])) == length(var.peers) && length(distinct([for p in var.peers : p.id])) == length(var.peers)
    error_message = "Peer names and IDs must be unique."
  }

  validation {
    condition     = alltrue([for p in var.peers : length(p.endpoints) > 0 && alltrue([for e in p.endpoints : startswith(e, "https://")])])
    error_message = "Every peer needs at least one etcd endpoint, each an https:// URL (etcd is served with mTLS only)."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels added to the peers Secret."
  default     = {}
}
