# The cluster CA (generated unless var.ca is given) and the leaf certificates, all ECDSA P-256.
# etcd maps a client certificate's common name to its user (clustermesh-apiserver/src/security.rs):
# `clustermesh-apiserver` is root, `remote` may only read what peers mirror. Node agents get no
# certificate here: each obtains its own (CN agent-<node>) from the apiserver's issuer, which
# signs with the CA key in the clustermesh-ca-key Secret (see README.md).

locals {
  generate_ca = var.ca == null
  ca_cert_pem = local.generate_ca ? tls_self_signed_cert.ca[0].cert_pem : var.ca.cert_pem
  ca_key_pem  = local.generate_ca ? tls_private_key.ca[0].private_key_pem : var.ca.key_pem

  spiffe_cluster = "spiffe://${var.trust_domain}/cluster/${var.cluster_name}"

  # The load balancer's address, once the cloud has given it one.
  lb_ingress  = var.service_type == "LoadBalancer" ? try(kubernetes_service_v1.etcd.status[0].load_balancer[0].ingress[0], null) : null
  lb_hostname = try(local.lb_ingress.hostname, "")
  lb_ip       = try(local.lb_ingress.ip, "")

  # Where peers dial etcd: the load balancer and/or the advertised addresses.
  external_addresses = distinct(compact(concat(var.advertised_addresses, [local.lb_hostname, local.lb_ip])))
  external_etcd_port = var.service_type == "NodePort" ? kubernetes_service_v1.etcd.spec[0].port[0].node_port : local.etcd_port
  external_endpoints = [
    for a in local.external_addresses :
    "https://${strcontains(a, ":") ? "[${a}]" : a}:${local.external_etcd_port}"
  ]

  is_ip = { for a in local.external_addresses : a => can(regex("^[0-9.]+$", a)) || strcontains(a, ":") }

  etcd_server_dns_names = concat(
    [
      "localhost",
      local.etcd_service_name,
      "${local.etcd_service_name}.${local.namespace}",
      "${local.etcd_service_name}.${local.namespace}.svc",
      "${local.etcd_service_name}.${local.namespace}.svc.cluster.local",
    ],
    [for a in local.external_addresses : a if !local.is_ip[a]],
  )
  etcd_server_ips = concat(["127.0.0.1", "::1"], [for a in local.external_addresses : a if local.is_ip[a]])

  leaf_certificates = {
    etcd-server = {
      common_name  = local.etcd_service_name
      dns_names    = local.etcd_server_dns_names
      ip_addresses = local.etcd_server_ips
      uris         = []
      uses         = ["digital_signature", "key_encipherment", "server_auth"]
    }
    # etcd client (root) and the server certificate of the agent certificate issuer, named
    # as the agents dial it.
    apiserver = {
      common_name = "clustermesh-apiserver"
      dns_names = [
        local.apiserver_service_name,
        "${local.apiserver_service_name}.${local.namespace}",
        "${local.apiserver_service_name}.${local.namespace}.svc",
        "${local.apiserver_service_name}.${local.namespace}.svc.cluster.local",
      ]
      ip_addresses = []
      uris         = ["${local.spiffe_cluster}/apiserver"]
      uses         = ["digital_signature", "key_encipherment", "client_auth", "server_auth"]
    }
    # Given to the other clusters, so that their apiservers can mirror this cluster read-only.
    remote = {
      common_name  = "remote"
      dns_names    = []
      ip_addresses = []
      uris         = []
      uses         = ["digital_signature", "key_encipherment", "client_auth"]
    }
  }
}

resource "tls_private_key" "ca" {
  count = local.generate_ca ? 1 : 0

  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "ca" {
  count = local.generate_ca ? 1 : 0

  private_key_pem       = tls_private_key.ca[0].private_key_pem
  is_ca_certificate     = true
  validity_period_hours = var.ca_validity_hours
  allowed_uses          = ["cert_signing", "crl_signing", "digital_signature"]

  subject {
    common_name  = "clustermesh CA ${var.cluster_name}"
    organization = "clustermesh"
  }
}

resource "tls_private_key" "leaf" {
  for_each = local.leaf_certificates

  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "leaf" {
  for_each = local.leaf_certificates

  private_key_pem = tls_private_key.leaf[each.key].private_key_pem
  dns_names       = each.value.dns_names
  ip_addresses    = each.value.ip_addresses
  uris            = each.value.uris

  subject {
    common_name  = each.value.common_name
    organization = "clustermesh"
  }
}

resource "tls_locally_signed_cert" "leaf" {
  for_each = local.leaf_certificates

  cert_request_pem      = tls_cert_request.leaf[each.key].cert_request_pem
  ca_private_key_pem    = local.ca_key_pem
  ca_cert_pem           = local.ca_cert_pem
  validity_period_hours = var.certificate_validity_hours
  early_renewal_hours   = floor(var.certificate_validity_hours / 10)
  allowed_uses          = each.value.uses
}

# The public CA certificate, for anything in the cluster that wants to verify mesh peers.
resource "kubernetes_secret_v1" "ca" {
  metadata {
    name      = "clustermesh-ca"
    namespace = local.namespace
    labels    = local.common_labels
  }

  data = {
    "ca.crt" = local.ca_cert_pem
  }
}

# The CA key, for the apiserver's agent certificate issuer (mounted there only, key only).
resource "kubernetes_secret_v1" "ca_key" {
  metadata {
    name      = "clustermesh-ca-key"
    namespace = local.namespace
    labels    = local.common_labels
  }

  data = {
    "ca.crt" = local.ca_cert_pem
    "ca.key" = local.ca_key_pem
  }
}

resource "kubernetes_secret_v1" "tls" {
  for_each = toset(["etcd-server", "apiserver"])

  metadata {
    name      = "clustermesh-${each.key}-tls"
    namespace = local.namespace
    labels    = local.common_labels
  }

  type = "kubernetes.io/tls"
  data = {
    "ca.crt"  = local.ca_cert_pem
    "tls.crt" = tls_locally_signed_cert.leaf[each.key].cert_pem
    "tls.key" = tls_private_key.leaf[each.key].private_key_pem
  }
}
