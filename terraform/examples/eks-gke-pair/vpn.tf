# HA VPN between the GKE network and the EKS VPC: Google's HA VPN gateway has two interfaces;
# each gets an AWS customer gateway and a VPN connection of two tunnels, so four tunnels in
# all, each with a BGP session. Google advertises its subnet ranges (nodes, pods, services);
# AWS advertises the VPC and propagates what it learns into the nodes' route table.

resource "google_compute_ha_vpn_gateway" "aws" {
  name    = "${var.gcp_cluster.name}-to-aws"
  region  = var.gcp_cluster.region
  network = module.gke.network_id
}

resource "google_compute_router" "vpn" {
  name    = "${var.gcp_cluster.name}-vpn"
  region  = var.gcp_cluster.region
  network = module.gke.network_id

  bgp {
    asn            = var.gcp_bgp_asn
    advertise_mode = "DEFAULT"
  }
}

resource "aws_vpn_gateway" "gcp" {
  vpc_id          = module.eks.vpc_id
  amazon_side_asn = var.aws_bgp_asn
  tags            = { Name = "${var.aws_cluster.name}-to-gcp" }
}

resource "aws_vpn_gateway_route_propagation" "nodes" {
  vpn_gateway_id = aws_vpn_gateway.gcp.id
  route_table_id = module.eks.node_route_table_id
}

resource "aws_customer_gateway" "gcp" {
  count = 2

  bgp_asn    = var.gcp_bgp_asn
  ip_address = google_compute_ha_vpn_gateway.aws.vpn_interfaces[count.index].ip_address
  type       = "ipsec.1"
  tags       = { Name = "${var.gcp_cluster.name}-interface-${count.index}" }
}

resource "aws_vpn_connection" "gcp" {
  count = 2

  vpn_gateway_id       = aws_vpn_gateway.gcp.id
  customer_gateway_id  = aws_customer_gateway.gcp[count.index].id
  type                 = "ipsec.1"
  static_routes_only   = false
  tunnel1_ike_versions = ["ikev2"]
  tunnel2_ike_versions = ["ikev2"]
  tags                 = { Name = "${var.aws_cluster.name}-to-${var.gcp_cluster.name}-${count.index}" }
}

locals {
  # The four AWS tunnel endpoints, in the order of the external gateway's interfaces.
  aws_tunnels = [
    for i in range(4) : {
      gcp_interface = floor(i / 2)
      address       = i % 2 == 0 ? aws_vpn_connection.gcp[floor(i / 2)].tunnel1_address : aws_vpn_connection.gcp[floor(i / 2)].tunnel2_address
      shared_secret = i % 2 == 0 ? aws_vpn_connection.gcp[floor(i / 2)].tunnel1_preshared_key : aws_vpn_connection.gcp[floor(i / 2)].tunnel2_preshared_key
      gcp_inside_ip = i % 2 == 0 ? aws_vpn_connection.gcp[floor(i / 2)].tunnel1_cgw_inside_address : aws_vpn_connection.gcp[floor(i / 2)].tunnel2_cgw_inside_address
      aws_inside_ip = i % 2 == 0 ? aws_vpn_connection.gcp[floor(i / 2)].tunnel1_vgw_inside_address : aws_vpn_connection.gcp[floor(i / 2)].tunnel2_vgw_inside_address
    }
  ]
}

resource "google_compute_external_vpn_gateway" "aws" {
  name            = "${var.aws_cluster.name}-vpn"
  redundancy_type = "FOUR_IPS_REDUNDANCY"

  dynamic "interface" {
    for_each = range(4)
    content {
      id         = interface.value
      ip_address = local.aws_tunnels[interface.value].address
    }
  }
}

resource "google_compute_vpn_tunnel" "aws" {
  count = 4

  name                            = "${var.gcp_cluster.name}-to-aws-${count.index}"
  region                          = var.gcp_cluster.region
  vpn_gateway                     = google_compute_ha_vpn_gateway.aws.id
  vpn_gateway_interface           = local.aws_tunnels[count.index].gcp_interface
  peer_external_gateway           = google_compute_external_vpn_gateway.aws.id
  peer_external_gateway_interface = count.index
  shared_secret                   = local.aws_tunnels[count.index].shared_secret
  router                          = google_compute_router.vpn.id
  ike_version                     = 2
}

resource "google_compute_router_interface" "aws" {
  count = 4

  name       = "${var.gcp_cluster.name}-to-aws-${count.index}"
  region     = var.gcp_cluster.region
  router     = google_compute_router.vpn.name
  ip_range   = "${local.aws_tunnels[count.index].gcp_inside_ip}/30"
  vpn_tunnel = google_compute_vpn_tunnel.aws[count.index].name
}

resource "google_compute_router_peer" "aws" {
  count = 4

  name            = "${var.gcp_cluster.name}-to-aws-${count.index}"
  region          = var.gcp_cluster.region
  router          = google_compute_router.vpn.name
  interface       = google_compute_router_interface.aws[count.index].name
  peer_ip_address = local.aws_tunnels[count.index].aws_inside_ip
  peer_asn        = var.aws_bgp_asn
}
