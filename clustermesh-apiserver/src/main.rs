//! `clustermesh-apiserver`: thin wiring around the library; see `app.rs`.

use std::process::ExitCode;

use clap::Parser;
use clustermesh_apiserver::{app, config};
use tracing::{error, info};

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = config::Args::parse();
    init_logging();
    let config = match config::Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clustermesh-apiserver: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match app::start(config).await {
        Ok(r) => r,
        Err(e) => {
            error!("{e:#}");
            eprintln!("clustermesh-apiserver: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("clustermesh-apiserver: cannot install the SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!(
        "shutting down; published keys stay until the lease expires, so a successor takes over without a gap"
    );
    running.stop();
    ExitCode::SUCCESS
}
