# The node agent on every node: host network (the tunnel listens on the node's address),
# privileged (it loads eBPF programs, attaches them to the host's cgroup v2 root and adds
# routes), with bpffs so that pinned maps survive a restart of the agent. Each agent obtains
# its own certificate (CN agent-<node>) from the apiserver's issuer at start, with a projected
# ServiceAccount token bound to its pod and node, so nodes that join later need nothing here.

resource "kubernetes_daemon_set_v1" "agent" {
  metadata {
    name      = "clustermesh-agent"
    namespace = local.namespace
    labels    = local.agent_labels
  }

  # Agents start before the apiserver has published anything; do not hold the apply.
  wait_for_rollout = false

  spec {
    selector {
      match_labels = local.agent_selector
    }

    strategy {
      type = "RollingUpdate"
      rolling_update {
        max_unavailable = "10%"
      }
    }

    template {
      metadata {
        labels = local.agent_labels
        annotations = {
          # Restart on a new CA (agents verify etcd, the issuer and the tunnel with it).
          "clustermesh.io/certificates" = sha256(local.ca_cert_pem)
        }
      }

      spec {
        service_account_name            = kubernetes_service_account_v1.agent.metadata[0].name
        automount_service_account_token = false
        host_network                    = true
        # Host-network pods resolve cluster names (the etcd Service) only with this policy.
        dns_policy                       = "ClusterFirstWithHostNet"
        priority_class_name              = var.agent_priority_class_name == "" ? null : var.agent_priority_class_name
        node_selector                    = merge({ "kubernetes.io/os" = "linux" }, var.agent_node_selector)
        termination_grace_period_seconds = 30

        toleration {
          operator = "Exists"
        }

        container {
          name              = "agent"
          image             = var.image
          image_pull_policy = var.image_pull_policy
          command           = ["clustermesh-agent"]

          env {
            name  = "CLUSTERMESH_CLUSTER_NAME"
            value = var.cluster_name
          }
          env {
            name  = "CLUSTERMESH_CLUSTER_ID"
            value = tostring(var.cluster_id)
          }
          env {
            name  = "CLUSTERMESH_ETCD_ENDPOINTS"
            value = local.in_cluster_etcd_endpoint
          }
          env {
            name  = "CLUSTERMESH_ETCD_CA"
            value = "${local.ca_dir}/ca.crt"
          }
          env {
            name  = "CLUSTERMESH_ETCD_CERT"
            value = "${local.agent_tls_dir}/tls.crt"
          }
          env {
            name  = "CLUSTERMESH_ETCD_KEY"
            value = "${local.agent_tls_dir}/tls.key"
          }
          env {
            name  = "CLUSTERMESH_TUNNEL_CA"
            value = "${local.ca_dir}/ca.crt"
          }
          env {
            name  = "CLUSTERMESH_TUNNEL_CERT"
            value = "${local.agent_tls_dir}/tls.crt"
          }
          env {
            name  = "CLUSTERMESH_TUNNEL_KEY"
            value = "${local.agent_tls_dir}/tls.key"
          }
          # The agent obtains the tls.crt/tls.key above from the apiserver at start.
          env {
            name  = "CLUSTERMESH_BOOTSTRAP_ENDPOINT"
            value = local.agent_certs_endpoint
          }
          env {
            name  = "CLUSTERMESH_BOOTSTRAP_CA"
            value = "${local.ca_dir}/ca.crt"
          }
          env {
            name  = "CLUSTERMESH_BOOTSTRAP_TOKEN"
            value = "${local.agent_token_dir}/token"
          }
          env {
            name  = "CLUSTERMESH_BOOTSTRAP_CERT_DIR"
            value = local.agent_tls_dir
          }
          env {
            name  = "CLUSTERMESH_TRUST_DOMAIN"
            value = var.trust_domain
          }
          env {
            name  = "CLUSTERMESH_PEERS_DIR"
            value = local.peers_dir
          }
          env {
            name  = "CLUSTERMESH_NODE_CGROUP"
            value = "/run/clustermesh/cgroupv2"
          }
          env {
            name  = "CLUSTERMESH_STATUS_ADDR"
            value = "127.0.0.1:${local.agent_status_port}"
          }
          env {
            name = "CLUSTERMESH_NODE_NAME"
            value_from {
              field_ref {
                field_path = "spec.nodeName"
              }
            }
          }
          env {
            name = "CLUSTERMESH_NODE_IP"
            value_from {
              field_ref {
                field_path = "status.hostIP"
              }
            }
          }

          port {
            name           = "tunnel"
            container_port = local.tunnel_port
            host_port      = local.tunnel_port
            protocol       = "TCP"
          }

          # With the host network, the kubelet reaches the agent's loopback status port.
          readiness_probe {
            http_get {
              host = "127.0.0.1"
              path = "/readyz"
              port = local.agent_status_port
            }
            period_seconds = 5
          }
          # The status port opens only after the certificate bootstrap, which may wait up to
          # 5 minutes for the issuer: liveness starts after it.
          startup_probe {
            http_get {
              host = "127.0.0.1"
              path = "/healthz"
              port = local.agent_status_port
            }
            period_seconds    = 5
            failure_threshold = 72
          }
          liveness_probe {
            http_get {
              host = "127.0.0.1"
              path = "/healthz"
              port = local.agent_status_port
            }
            period_seconds    = 10
            failure_threshold = 6
          }

          security_context {
            privileged = true
          }

          volume_mount {
            name              = "bpffs"
            mount_path        = "/sys/fs/bpf"
            mount_propagation = "Bidirectional"
          }
          volume_mount {
            name       = "cgroup"
            mount_path = "/run/clustermesh/cgroupv2"
          }
          volume_mount {
            name       = "ca"
            mount_path = local.ca_dir
            read_only  = true
          }
          volume_mount {
            name       = "agent-tls"
            mount_path = local.agent_tls_dir
          }
          volume_mount {
            name       = "agent-token"
            mount_path = local.agent_token_dir
            read_only  = true
          }
          volume_mount {
            name       = "peers"
            mount_path = local.peers_dir
            read_only  = true
          }
        }

        volume {
          name = "bpffs"
          host_path {
            path = "/sys/fs/bpf"
            type = "DirectoryOrCreate"
          }
        }
        volume {
          name = "cgroup"
          host_path {
            path = "/sys/fs/cgroup"
            type = "Directory"
          }
        }
        volume {
          name = "ca"
          secret {
            secret_name = kubernetes_secret_v1.ca.metadata[0].name
          }
        }
        # The key and certificate the agent obtains; in memory, for the pod's lifetime (a
        # container restart keeps them).
        volume {
          name = "agent-tls"
          empty_dir {
            medium = "Memory"
          }
        }
        # Bound to the pod and its node: what the issuer trusts.
        volume {
          name = "agent-token"
          projected {
            sources {
              service_account_token {
                audience           = local.agent_token_audience
                expiration_seconds = 600
                path               = "token"
              }
            }
          }
        }
        volume {
          name = "peers"
          secret {
            secret_name = var.peers_secret_name
            optional    = true
          }
        }
      }
    }
  }
}
