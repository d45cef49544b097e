//! The clustermesh-apiserver: one per cluster. It reads the cluster's Kubernetes objects from a
//! `source`, publishes the global services, endpoints, identities and nodes into the cluster's
//! own etcd, and mirrors every connected peer's published state into the local `cache/`.

pub mod source;
