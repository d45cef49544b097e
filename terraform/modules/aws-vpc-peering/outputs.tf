output "id" {
  description = "The VPC peering connection's ID."
  value       = aws_vpc_peering_connection_accepter.this.id
}
