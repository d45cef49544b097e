//! The gRPC APIs the daemons serve and the CLI calls, generated from `proto/`.

/// The clustermesh-apiserver's status API and agent certificate issuer (`proto/apiserver.proto`).
pub mod apiserver {
    tonic::include_proto!("clustermesh.apiserver.v1");
}

/// The node agent's status API (`proto/agent.proto`).
pub mod agent {
    tonic::include_proto!("clustermesh.agent.v1");
}
