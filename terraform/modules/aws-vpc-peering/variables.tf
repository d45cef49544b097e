variable "name" {
  type        = string
  description = "Name tag of the peering connection, for example \"east-west\"."
}

variable "requester" {
  type = object({
    vpc_id         = string
    route_table_id = string
    cidr           = string
  })
  description = "The requesting side (the aws.requester provider's region): its VPC, the route table of its nodes, and its VPC CIDR."
}

variable "accepter" {
  type = object({
    vpc_id         = string
    route_table_id = string
    cidr           = string
    region         = string
  })
  description = "The accepting side (the aws.accepter provider's region, which may be another region or account): its VPC, the route table of its nodes, its VPC CIDR and region."
}

variable "tags" {
  type        = map(string)
  description = "Tags added to the peering connection."
  default     = {}
}
