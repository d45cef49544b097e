output "name" {
  description = "The EKS cluster's name."
  value       = aws_eks_cluster.this.name
}

output "endpoint" {
  description = "The Kubernetes API endpoint (https URL)."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_ca_certificate" {
  description = "The Kubernetes API's CA certificate (PEM), for a kubernetes provider or a kubeconfig."
  value       = base64decode(aws_eks_cluster.this.certificate_authority[0].data)
}

output "region" {
  description = "The region the cluster runs in (from the provider this module was given)."
  value       = data.aws_region.current.name
}

output "vpc_id" {
  description = "The VPC's ID, for peering and VPN connections."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "The VPC's CIDR."
  value       = aws_vpc.this.cidr_block
}

output "node_route_table_id" {
  description = "The route table of the node subnets: add routes to the other regions here."
  value       = aws_route_table.nodes.id
}

output "node_cidrs" {
  description = "The node subnets' CIDRs."
  value       = aws_subnet.nodes[*].cidr_block
}

output "mesh_source_cidrs" {
  description = "Where this cluster's mesh traffic comes from, for the other regions' peer_node_cidrs: the node subnets (the VPC CNI gives pods IPs there too, and SNATs traffic leaving the VPC to the node's IP)."
  value       = var.node_subnet_cidrs
}

output "cluster_security_group_id" {
  description = "The cluster security group the nodes use, where the mesh rules are."
  value       = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}
