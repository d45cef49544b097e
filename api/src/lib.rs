//! The gRPC APIs the daemons serve and the CLI calls, generated from `proto/`.

/// The clustermesh-apiserver's status API (`proto/apiserver.proto`).
pub mod apiserver {
    tonic::include_proto!("clustermesh.apiserver.v1");
}
