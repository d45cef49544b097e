# etcd and clustermesh-apiserver in one pod. etcd keeps nothing that cannot be rebuilt (the
# apiserver republishes the cluster and re-mirrors its peers after a restart), so its data
# lives in an emptyDir, and there is one replica.

resource "kubernetes_service_v1" "etcd" {
  metadata {
    name        = local.etcd_service_name
    namespace   = local.namespace
    labels      = local.apiserver_labels
    annotations = var.service_annotations
  }

  spec {
    type                        = var.service_type
    selector                    = local.apiserver_selector
    load_balancer_source_ranges = var.service_type == "LoadBalancer" ? var.load_balancer_source_ranges : null

    port {
      name        = "etcd"
      protocol    = "TCP"
      port        = local.etcd_port
      target_port = local.etcd_port
      node_port   = var.service_type == "NodePort" ? var.node_port : null
    }
  }

  wait_for_load_balancer = var.service_type == "LoadBalancer"

  lifecycle {
    precondition {
      condition     = var.service_type == "LoadBalancer" || length(var.advertised_addresses) > 0
      error_message = "With service_type NodePort, set advertised_addresses to node addresses the peers can reach: they go into the etcd certificate and the peer credentials."
    }
  }
}

# The agent certificate issuer, inside the cluster only.
resource "kubernetes_service_v1" "apiserver" {
  metadata {
    name      = local.apiserver_service_name
    namespace = local.namespace
    labels    = local.apiserver_labels
  }

  spec {
    type     = "ClusterIP"
    selector = local.apiserver_selector

    port {
      name        = "agent-certs"
      protocol    = "TCP"
      port        = local.agent_certs_port
      target_port = local.agent_certs_port
    }
  }
}

resource "kubernetes_deployment_v1" "apiserver" {
  metadata {
    name      = "clustermesh-apiserver"
    namespace = local.namespace
    labels    = local.apiserver_labels
  }

  spec {
    replicas = 1

    strategy {
      # One etcd: never two at once.
      type = "Recreate"
    }

    selector {
      match_labels = local.apiserver_selector
    }

    template {
      metadata {
        labels = local.apiserver_labels
        annotations = {
          # Restart on a new certificate or CA.
          "clustermesh.io/certificates" = sha256(join("", [
            local.ca_cert_pem,
            tls_locally_signed_cert.leaf["etcd-server"].cert_pem,
            tls_locally_signed_cert.leaf["apiserver"].cert_pem,
          ]))
        }
      }

      spec {
        service_account_name = kubernetes_service_account_v1.apiserver.metadata[0].name

        security_context {
          run_as_non_root = true
          run_as_user     = 65532
          run_as_group    = 65532
          fs_group        = 65532
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        container {
          name    = "etcd"
          image   = var.etcd_image
          command = ["/usr/local/bin/etcd"]
          args = [
            "--name=clustermesh",
            "--data-dir=/var/run/etcd/data",
            "--listen-client-urls=https://0.0.0.0:${local.etcd_port}",
            "--advertise-client-urls=https://127.0.0.1:${local.etcd_port}",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=clustermesh=http://127.0.0.1:2380",
            "--initial-cluster-state=new",
            "--client-cert-auth=true",
            "--trusted-ca-file=${local.etcd_tls_dir}/ca.crt",
            "--cert-file=${local.etcd_tls_dir}/tls.crt",
            "--key-file=${local.etcd_tls_dir}/tls.key",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=5m",
            "--quota-backend-bytes=2147483648",
            "--max-txn-ops=128",
          ]

          port {
            name           = "etcd"
            container_port = local.etcd_port
            protocol       = "TCP"
          }

          readiness_probe {
            tcp_socket {
              port = local.etcd_port
            }
            period_seconds = 5
          }

          volume_mount {
            name       = "etcd-data"
            mount_path = "/var/run/etcd"
          }
          volume_mount {
            name       = "etcd-server-tls"
            mount_path = local.etcd_tls_dir
            read_only  = true
          }

          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
        }

        container {
          name              = "apiserver"
          image             = var.image
          image_pull_policy = var.image_pull_policy
          command           = ["clustermesh-apiserver"]
          # Flags rather than environment variables, whose names have changed before.
          args = [
            "--source=kubernetes",
            "--cluster-name=${var.cluster_name}",
            "--cluster-id=${var.cluster_id}",
            "--etcd-endpoints=https://127.0.0.1:${local.etcd_port}",
            "--etcd-ca=${local.client_tls_dir}/ca.crt",
            "--etcd-cert=${local.client_tls_dir}/tls.crt",
            "--etcd-key=${local.client_tls_dir}/tls.key",
            "--peers-dir=${local.peers_dir}",
            "--health-addr=0.0.0.0:${local.apiserver_health}",
            "--cluster-ca=${local.ca_dir}/ca.crt",
            "--agent-certs-ca-key=${local.ca_key_dir}/ca.key",
            "--agent-certs-addr=0.0.0.0:${local.agent_certs_port}",
            "--agent-certs-tls-cert=${local.client_tls_dir}/tls.crt",
            "--agent-certs-tls-key=${local.client_tls_dir}/tls.key",
            "--agent-certs-audience=${local.agent_token_audience}",
            "--agent-service-account=system:serviceaccount:${local.namespace}:${kubernetes_service_account_v1.agent.metadata[0].name}",
            "--trust-domain=${var.trust_domain}",
          ]

          port {
            name           = "health"
            container_port = local.apiserver_health
            protocol       = "TCP"
          }
          port {
            name           = "agent-certs"
            container_port = local.agent_certs_port
            protocol       = "TCP"
          }

          readiness_probe {
            http_get {
              path = "/readyz"
              port = local.apiserver_health
            }
            period_seconds = 5
          }
          liveness_probe {
            http_get {
              path = "/healthz"
              port = local.apiserver_health
            }
            initial_delay_seconds = 10
            period_seconds        = 10
            failure_threshold     = 6
          }

          volume_mount {
            name       = "ca"
            mount_path = local.ca_dir
            read_only  = true
          }
          volume_mount {
            name       = "ca-key"
            mount_path = local.ca_key_dir
            read_only  = true
          }
          volume_mount {
            name       = "apiserver-tls"
            mount_path = local.client_tls_dir
            read_only  = true
          }
          volume_mount {
            name       = "peers"
            mount_path = local.peers_dir
            read_only  = true
          }

          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
        }

        volume {
          name = "etcd-data"
          empty_dir {}
        }
        volume {
          name = "etcd-server-tls"
          secret {
            secret_name = kubernetes_secret_v1.tls["etcd-server"].metadata[0].name
          }
        }
        volume {
          name = "apiserver-tls"
          secret {
            secret_name = kubernetes_secret_v1.tls["apiserver"].metadata[0].name
          }
        }
        volume {
          name = "ca"
          secret {
            secret_name = kubernetes_secret_v1.ca.metadata[0].name
          }
        }
        # Only the key: the issuer signs agent certificates with it.
        volume {
          name = "ca-key"
          secret {
            secret_name  = kubernetes_secret_v1.ca_key.metadata[0].name
            default_mode = "0440"
            items {
              key  = "ca.key"
              path = "ca.key"
            }
          }
        }
        # Written by the connect module; the apiserver watches the directory, so peers come
        # and go without a restart.
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
