//! `clustermesh`: the mesh's command line. `enable`, `connect`, `disconnect`, `disable`,
//! `status`, `troubleshoot` and `manifests` work against a Kubernetes context or a lab cluster
//! (`--context lab:<cluster>`); `lab` builds whole clusters on one Linux machine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod connect;
mod disable;
mod enable;
mod kube_target;
mod lab;
mod lab_target;
mod manifests;
mod pki;
mod status;
mod target;
mod troubleshoot;

#[derive(Debug, Parser)]
#[command(
    name = "clustermesh",
    version,
    about = "Connects Kubernetes clusters into one mesh, with any CNI",
    long_about = "Connects Kubernetes clusters into one mesh, with any CNI.\n\n\
                  Typical use: `clustermesh enable --context east --cluster-name east \
                  --cluster-id 1`, the same for west, then `clustermesh connect --context east \
                  --destination-context west` and `clustermesh status --context east --wait`.\n\n\
                  Every --context is a kubeconfig context, or lab:<cluster> for a cluster of a \
                  lab on this machine (`clustermesh lab up` builds one: network namespaces, \
                  cgroups, pods, a routed WAN, one etcd per cluster)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up the mesh in a cluster: CA and certificates, etcd + clustermesh-apiserver, and
    /// the node agents.
    ///
    /// Creates the cluster's CA (or takes --ca-cert/--ca-key), certificates for the etcd
    /// server and the apiserver (with SPIFFE URIs), and applies by server-side apply:
    /// namespace, service accounts, RBAC, the clustermesh-config ConfigMap, Secrets, the etcd
    /// Service (LoadBalancer or NodePort), the apiserver Deployment and the agent DaemonSet
    /// (privileged, host network, bpffs and cgroup mounts). Each agent obtains its own node
    /// certificate from the apiserver at start, so nodes added later need nothing (Kubernetes
    /// 1.30 or later). Running it again changes nothing unless something changed:
    /// certificates are kept while they fit and are far from expiry.
    ///
    /// For lab:<cluster>: the lab already runs etcd, the apiserver and the agents with its own
    /// CA; enable makes sure they run (starts them after `disable`) and reports their health.
    Enable(enable::EnableArgs),
    /// Print, as YAML, exactly the objects `enable` applies (for GitOps or Terraform).
    ///
    /// With --context the certificates, nodes and load balancer address are read from that
    /// cluster (nothing is written), so the output equals what `enable` applies there.
    Manifests(enable::ManifestsArgs),
    /// Connect clusters: each gets a peer entry for the other (no shared CA needed).
    ///
    /// Reads both clusters' names, IDs, etcd endpoints and CAs, refuses duplicate names or IDs,
    /// and writes into the source's `clustermesh-peers` Secret (or lab peers directory) the
    /// destination's endpoints, its CA, and a read-only client certificate (CN remote) that
    /// the destination's CA issues; and the same the other way round. --connection-mode mesh
    /// connects every pair among --context and all --destination-context. Connecting twice
    /// changes nothing.
    Connect(connect::ConnectArgs),
    /// Remove the peer entries of two clusters from each other (both ways). The peers' mirrors
    /// and their backends go away within seconds; nothing restarts.
    Disconnect(connect::DisconnectArgs),
    /// Remove what `enable` made. Refuses while peers are connected, unless --force.
    Disable(disable::DisableArgs),
    /// Is the mesh healthy? Per cluster: apiserver, etcd, agents; per peer: connected,
    /// synced, counts, last error, how many nodes see it.
    ///
    /// Prints a verdict per cluster, then only what is wrong with what to do about it.
    /// --wait polls until healthy (progress on stderr). Exit code 0 only when every cluster
    /// is healthy. For lab:<cluster> it reads the apiserver's gRPC status and every agent's
    /// /status inside the lab's namespaces; for a Kubernetes context, the Deployment and
    /// DaemonSet readiness and the configured peers.
    Status(status::StatusArgs),
    /// Go further than status: certificate expiry, clock skew, tunnel reachability node to
    /// node, per-node sync state, the top validation errors; each finding with what to do.
    ///
    /// Exit code 0 when nothing is an error (warnings allowed). Give several --context to
    /// compare the clusters' clocks.
    Troubleshoot(troubleshoot::TroubleshootArgs),
    /// Build and drive whole clusters on this machine (needs root).
    #[command(subcommand)]
    Lab(lab::LabCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Lab(cmd) => lab::run(cmd),
        command => runtime().and_then(|rt| rt.block_on(run(command))),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Enable(args) => enable::enable(&args.targets, &args).await,
        Command::Manifests(args) => enable::manifests(&args.targets, &args).await,
        Command::Connect(args) => connect::connect(&args.targets, &args).await,
        Command::Disconnect(args) => connect::disconnect(&args.targets, &args).await,
        Command::Disable(args) => disable::disable(&args.targets, &args).await,
        Command::Status(args) => status::status(&args.targets, &args).await,
        Command::Troubleshoot(args) => troubleshoot::troubleshoot(&args.targets, &args).await,
        Command::Lab(_) => unreachable!("lab commands run without the async runtime"),
    }
}

/// Progress goes to stderr as plain lines; `RUST_LOG` changes the level,
/// `LOG_FORMAT=json` prints JSON for machines.
fn init_logging() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    // kube-rs logs every failed request itself; the CLI reports failures in one sentence.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube=off,kube_client=off"));
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
