// Generates the gRPC client and server code from proto/ (needs `protoc`, from Debian's
// protobuf-compiler, which scripts/install-deps.sh installs).
fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/apiserver.proto", "proto/agent.proto"], &["proto"])
}
