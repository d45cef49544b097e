//! The lab's helper commands as a binary of the lab crate itself, so that the lab's own tests
//! (which cannot build the `clustermesh` CLI) can start supervisors and echo servers.
//! The CLI offers the same commands as `clustermesh lab supervise` and
//! `clustermesh lab echo-server`.

use std::process::ExitCode;

use clap::Parser;
use clustermesh_lab::echo::{self, EchoServerArgs};
use clustermesh_lab::lab::{self, SuperviseArgs};

#[derive(Debug, Parser)]
#[command(about = "helper processes of `clustermesh lab` (supervisor daemon, echo server)")]
enum Helper {
    /// Run the supervisor daemon of a lab.
    Supervise(SuperviseArgs),
    /// Run the echo server (answers TCP and UDP with its cluster, node and pod).
    EchoServer(EchoServerArgs),
}

fn main() -> ExitCode {
    let result = match Helper::parse() {
        Helper::Supervise(args) => lab::supervise(&args).map_err(|e| e.to_string()),
        Helper::EchoServer(args) => echo::serve(&args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
