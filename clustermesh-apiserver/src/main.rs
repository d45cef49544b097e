//! `clustermesh-apiserver`: publishes this cluster's global services, endpoints, identities and nodes into its etcd and mirrors every connected peer's state
//!
//! Not built yet: this binary only exists so the workspace has its final shape.
//! It says so and exits non-zero instead of pretending to work.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "publishes this cluster's global services, endpoints, identities and nodes into its etcd and mirrors every connected peer's state")]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("clustermesh-apiserver: not implemented yet; see ARCHITECTURE.md for what exists today");
    ExitCode::from(2)
}
