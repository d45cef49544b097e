output "secret_name" {
  description = "The peers Secret written in the receiving cluster."
  value       = kubernetes_secret_v1.peers.metadata[0].name
}

output "connected_peers" {
  description = "Name => ID of every peer written into the Secret."
  value       = nonsensitive(zipmap(local.peer_names, local.peer_ids))
}
