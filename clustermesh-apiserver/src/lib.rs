//! The clustermesh-apiserver: one per cluster. It reads the cluster's Kubernetes objects from a
//! `source`, publishes the global services, endpoints, identities and nodes into the cluster's
//! own etcd (`publish`), and mirrors every connected peer's published state into the local
//! `cache/` (`mirror`); for global services that exist only in peers it allocates clusterset
//! VIPs (`clusterset_vips`); with the cluster CA's key it issues node agents their certificates
//! (`agent_certs`). `app` wires them together; `config` is its command line.

pub mod agent_certs;
pub mod app;
pub mod clusterset_vips;
pub mod config;
pub mod http;
pub mod mirror;
pub mod publish;
pub mod security;
pub mod source;
pub mod status_api;
