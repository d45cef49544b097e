//! `clustermesh`: the mesh's command line. Today it has the `lab` command group (whole
//! clusters on one Linux machine); enabling, connecting and status of real clusters come
//! with their issues.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod lab;

#[derive(Debug, Parser)]
#[command(
    name = "clustermesh",
    version,
    about = "Connects Kubernetes clusters into one mesh, with any CNI",
    long_about = "Connects Kubernetes clusters into one mesh, with any CNI.\n\n\
                  Today only `clustermesh lab` exists: it builds whole clusters on one Linux \
                  machine (network namespaces, cgroups, pods, a routed WAN, one etcd per \
                  cluster) to try the mesh and to test it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build and drive whole clusters on this machine (needs root).
    #[command(subcommand)]
    Lab(lab::LabCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Lab(cmd) => lab::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Progress goes to stderr as plain lines; `RUST_LOG` changes the level,
/// `LOG_FORMAT=json` prints JSON for machines.
fn init_logging() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.without_time().init();
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
