//! `clustermesh`: enables the mesh in a cluster, connects and disconnects clusters, shows status and diagnostics
//!
//! Not built yet: this binary only exists so the workspace has its final shape.
//! It says so and exits non-zero instead of pretending to work.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "enables the mesh in a cluster, connects and disconnects clusters, shows status and diagnostics")]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("clustermesh: not implemented yet; see ARCHITECTURE.md for what exists today");
    ExitCode::from(2)
}
