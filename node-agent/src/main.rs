//! `clustermesh-agent`: watches the local etcd, merges global services across clusters and programs the eBPF socket load balancer and the tunnel
//!
//! Not built yet: this binary only exists so the workspace has its final shape.
//! It says so and exits non-zero instead of pretending to work.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "watches the local etcd, merges global services across clusters and programs the eBPF socket load balancer and the tunnel")]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("clustermesh-agent: not implemented yet; see ARCHITECTURE.md for what exists today");
    ExitCode::from(2)
}
