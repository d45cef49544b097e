//! `clustermesh-agent`: watches the local etcd, merges global services across clusters,
//! programs the eBPF socket load balancer and runs the tunnel to peers' nodes. With
//! `--bootstrap-endpoint` it first obtains its node certificate from the apiserver.

use std::process::ExitCode;

use clap::Parser;
use clustermesh_node_agent::{app, bootstrap, config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let args = config::Args::parse();
    // Without a certificate of its own, the agent first gets one from the apiserver.
    let bootstrap = match bootstrap::start(&args).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("clustermesh-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match config::Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clustermesh-agent: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "clustermesh-agent effective configuration: {}",
        serde_json::to_string_pretty(&config).unwrap_or_default()
    );
    let running = match app::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("clustermesh-agent: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Renewal writes new files that the tunnel and the etcd client pick up by themselves.
    let renewal = bootstrap
        .map(|(settings, validity)| tokio::spawn(bootstrap::keep_renewing(settings, validity)));
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("clustermesh-agent: cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if let Some(renewal) = renewal {
        renewal.abort();
    }
    tracing::info!("stopping; the datapath stays pinned and keeps serving");
    running.stop().await;
    ExitCode::SUCCESS
}
