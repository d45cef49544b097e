//! `clustermesh lab …`: wiring of the lab commands to the `clustermesh-lab` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use clustermesh_lab::echo::EchoServerArgs;
use clustermesh_lab::lab::{Annotations, LabStatus, SuperviseArgs, default_state_dir};
use clustermesh_lab::state::{Affinity, ComponentBinaries, Helper};
use clustermesh_lab::topology::{ClusterSpec, Topology};
use clustermesh_lab::{DeploySpec, Lab, LabConfig, host};

/// Which lab a command acts on.
#[derive(Debug, Clone, Args)]
pub struct LabSelector {
    /// Lab name: 1 to 6 characters of [a-z0-9]. It prefixes every namespace (`cml-<name>-…`)
    /// and interface, so several labs can run side by side.
    #[arg(long, env = "CLUSTERMESH_LAB", default_value = "lab")]
    name: String,
    /// State directory (lab.json, logs, etcd data, manifests) [default: /run/clustermesh-lab/<name>]
    #[arg(long, env = "CLUSTERMESH_LAB_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl LabSelector {
    fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&self.name))
    }

    fn open(&self) -> Result<Lab> {
        host::require_root()?;
        Ok(Lab::open(&self.state_dir())?)
    }
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab and start its processes.
    ///
    /// Default: two clusters `east` and `west`, two nodes each, with the same (overlapping)
    /// pod CIDR 10.244.0.0/16, one etcd per cluster. Everything lives in network namespaces
    /// named cml-<name>-…; the host's own network is not touched.
    Up(UpArgs),
    /// Remove everything a lab made (also after a crash).
    ///
    /// Stops the supervisor and every process, deletes the lab's network namespaces (with their
    /// veths, bridges and routes), cgroups, bpffs directory and state directory. Works from the
    /// lab name alone when the state directory is lost; nothing to remove is not an error.
    Down(DownArgs),
    /// Show clusters, nodes, processes, pods and services of a lab.
    Status(StatusArgs),
    /// Deploy the echo workload with a Service (and its annotations).
    ///
    /// Starts N pods spread over a cluster's nodes, each answering TCP and UDP with one line
    /// naming its cluster, node and pod, and writes Pod, Service and EndpointSlice YAML with
    /// the clustermesh.io/global|shared|affinity annotations to the cluster's manifest
    /// directory. Waits until every pod answers.
    Deploy(DeployArgs),
    /// Change the number of replicas of a deployment.
    ///
    /// Scaling down withdraws the leaving pods' endpoints first and stops them a grace period
    /// later, as Kubernetes does with terminating pods.
    Scale(ScaleArgs),
    /// Change a deployed Service's clustermesh.io/global|shared|affinity annotations.
    Annotate(AnnotateArgs),
    /// Run a command in a pod (new or existing) or on a node.
    ///
    /// Default: a new pod `client-<n>` on the least loaded node (kept until `down`, or removed
    /// afterwards with --rm). --pod runs in an existing pod, --host on the node itself.
    Exec(ExecArgs),
    /// SIGKILL a supervised process; the supervisor restarts it (failure drill).
    ///
    /// Ids are shown by `status`, e.g. `east.etcd`, `west.pod.default.echo-0`. Use `stop` to
    /// keep a process down.
    Kill(ProcessArgs),
    /// Stop a supervised process, or every process of a node, and keep it stopped.
    ///
    /// With --node CLUSTER/NODE this is the "node dies" drill: its agent and its pods'
    /// workloads (and etcd on a cluster's first node) stop until `start --node`.
    Stop(StopStartArgs),
    /// Let a stopped process (or every stopped process of a node) run again.
    Start(StopStartArgs),
    /// Print the log of a supervised process (or of the supervisor with `supervisor`).
    Logs(LogsArgs),
    /// Connect two lab clusters both ways (each mirrors the other; their nodes trust each
    /// other's CA in the tunnel). Takes effect within seconds, without restarts.
    Connect(ConnectArgs),
    /// Disconnect two lab clusters: each drops the other's mirror, so the peer's backends
    /// leave every service, and stops trusting its nodes.
    Disconnect(ConnectArgs),
    /// Run a lab's supervisor daemon (started by `up`; not for direct use).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
    /// Run the echo server (started in pods by `deploy`; not for direct use).
    #[command(hide = true)]
    EchoServer(EchoServerArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    lab: LabSelector,
    /// YAML topology file, e.g. `clusters: [{name: east, nodes: 2}, {name: west, nodes: 3,
    /// pod_cidr: 10.8.0.0/16}]` (fields: name, id, nodes, node_cidr, pod_cidr,
    /// node_pod_prefix, service_cidr). Conflicts with --clusters/--nodes/--pod-cidr.
    #[arg(long, conflicts_with_all = ["clusters", "nodes", "pod_cidr"])]
    topology: Option<PathBuf>,
    /// Cluster names, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "east,west")]
    clusters: Vec<String>,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=200))]
    nodes: u16,
    /// Pod CIDR of every cluster (the same in all, so they overlap), split into a /24 per node.
    #[arg(long, default_value = "10.244.0.0/16")]
    pod_cidr: ipnet::Ipv4Net,
    /// etcd binary (Debian's `etcd`).
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// clustermesh-apiserver binary [default: the one next to this `clustermesh` binary, if
    /// built]. Without one no apiserver runs.
    #[arg(long)]
    apiserver_bin: Option<PathBuf>,
    /// clustermesh-agent binary [default: the one next to this `clustermesh` binary, if
    /// built]. Without one no agent runs.
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Start only the etcds: no apiserver and no agents, even if their binaries are built.
    #[arg(long, conflicts_with_all = ["apiserver_bin", "agent_bin"])]
    etcd_only: bool,
    /// Do not connect the clusters to each other (`clustermesh lab connect` does it later).
    /// By default every pair of clusters is connected: a full mesh.
    #[arg(long)]
    no_connect: bool,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    lab: LabSelector,
    /// One cluster.
    cluster: String,
    /// The other cluster.
    peer: String,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    lab: LabSelector,
    /// Take down every lab found on this machine (by its cgroup or `cml-<name>-` namespaces),
    /// e.g. after test runs were killed. Their state directories are removed only when they
    /// are in the default place.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    lab: LabSelector,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    lab: LabSelector,
    /// Cluster to deploy into.
    #[arg(long)]
    cluster: String,
    /// Deployment and Service name; pods are <name>-0, <name>-1, …
    #[arg(long = "app", default_value = "echo")]
    app: String,
    /// Kubernetes namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Number of pods.
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    /// TCP and UDP port of the echo server and the Service.
    #[arg(long, default_value_t = clustermesh_lab::echo::DEFAULT_PORT)]
    port: u16,
    /// Annotation clustermesh.io/global.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    global: bool,
    /// Annotation clustermesh.io/shared.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    shared: bool,
    /// Annotation clustermesh.io/affinity.
    #[arg(long, value_enum, default_value = "none")]
    affinity: Affinity,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    lab: LabSelector,
    #[arg(long)]
    cluster: String,
    /// Deployment name (as given to `deploy --app`).
    #[arg(long = "app", default_value = "echo")]
    app: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// New number of pods.
    #[arg(long)]
    replicas: u32,
}

#[derive(Debug, Args)]
pub struct AnnotateArgs {
    #[command(flatten)]
    lab: LabSelector,
    #[arg(long)]
    cluster: String,
    /// Deployment name (as given to `deploy --app`).
    #[arg(long = "app", default_value = "echo")]
    app: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// New clustermesh.io/global.
    #[arg(long, action = clap::ArgAction::Set)]
    global: Option<bool>,
    /// New clustermesh.io/shared.
    #[arg(long, action = clap::ArgAction::Set)]
    shared: Option<bool>,
    /// New clustermesh.io/affinity.
    #[arg(long, value_enum)]
    affinity: Option<Affinity>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    lab: LabSelector,
    #[arg(long)]
    cluster: String,
    /// Existing pod, as <name> (namespace default) or <namespace>/<name>.
    #[arg(long, conflicts_with = "host")]
    pod: Option<String>,
    /// Node for a new pod or for --host [default: the least loaded / the first node].
    #[arg(long)]
    node: Option<String>,
    /// Run on the node itself (its network namespace) instead of in a pod.
    #[arg(long)]
    host: bool,
    /// Delete the new pod when the command ends.
    #[arg(long, conflicts_with_all = ["pod", "host"])]
    rm: bool,
    /// The command and its arguments (after `--`).
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StopStartArgs {
    #[command(flatten)]
    lab: LabSelector,
    /// Process id as `status` shows it, e.g. east.etcd.
    #[arg(required_unless_present = "node", conflicts_with = "node")]
    id: Option<String>,
    /// All processes of a node, given as CLUSTER/NODE, e.g. east/east-1.
    #[arg(long)]
    node: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    lab: LabSelector,
    /// Process id as `status` shows it, e.g. east.etcd; `supervisor` for the daemon's own log.
    id: String,
    /// Only the last N lines.
    #[arg(long, default_value_t = 50)]
    tail: usize,
}

#[derive(Debug, Args)]
pub struct ProcessArgs {
    #[command(flatten)]
    lab: LabSelector,
    /// Process id as `status` shows it, e.g. east.etcd.
    id: String,
}

pub fn run(cmd: LabCommand) -> Result<ExitCode> {
    match cmd {
        LabCommand::Up(args) => up(args),
        LabCommand::Down(args) => down(&args),
        LabCommand::Status(args) => status(&args),
        LabCommand::Deploy(args) => deploy(args),
        LabCommand::Scale(args) => scale(&args),
        LabCommand::Annotate(args) => {
            if args.global.is_none() && args.shared.is_none() && args.affinity.is_none() {
                bail!("nothing to change: give --global, --shared and/or --affinity");
            }
            let mut lab = args.lab.open()?;
            lab.annotate(
                &args.cluster,
                &args.namespace,
                &args.app,
                Annotations {
                    global: args.global,
                    shared: args.shared,
                    affinity: args.affinity,
                },
            )?;
            println!(
                "{}/{}/{}: annotations updated; the apiserver publishes the change",
                args.cluster, args.namespace, args.app
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec(args) => exec(&args),
        LabCommand::Kill(args) => process_action(&args, Action::Kill),
        LabCommand::Stop(args) => stop_start(args, Action::Stop),
        LabCommand::Start(args) => stop_start(args, Action::Start),
        LabCommand::Logs(args) => logs(&args),
        LabCommand::Connect(args) => {
            let lab = args.lab.open()?;
            lab.connect(&args.cluster, &args.peer)?;
            println!("connected {} and {}", args.cluster, args.peer);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Disconnect(args) => {
            let lab = args.lab.open()?;
            if lab.disconnect(&args.cluster, &args.peer)? {
                println!("disconnected {} and {}", args.cluster, args.peer);
            } else {
                println!("{} and {} were not connected", args.cluster, args.peer);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Supervise(args) => {
            clustermesh_lab::lab::supervise(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::EchoServer(args) => {
            clustermesh_lab::echo::serve(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn up(args: UpArgs) -> Result<ExitCode> {
    let topology = match &args.topology {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --topology {}", path.display()))?;
            Topology::from_yaml(&text)
                .with_context(|| format!("in --topology {}", path.display()))?
        }
        None => {
            let pod_cidr = args.pod_cidr;
            Topology {
                clusters: args
                    .clusters
                    .iter()
                    .map(|name| ClusterSpec {
                        pod_cidr,
                        ..ClusterSpec::new(name, args.nodes)
                    })
                    .collect(),
                connect: true,
            }
        }
    };
    let topology = Topology {
        connect: topology.connect && !args.no_connect,
        ..topology
    };
    let program = std::env::current_exe().context("cannot find the clustermesh binary itself")?;
    // The apiserver and agent binaries are built next to this one.
    let sibling = |name: &str| {
        let path = program.with_file_name(name);
        path.is_file().then_some(path)
    };
    let (apiserver_bin, agent_bin) = if args.etcd_only {
        (None, None)
    } else {
        (
            args.apiserver_bin
                .or_else(|| sibling("clustermesh-apiserver")),
            args.agent_bin.or_else(|| sibling("clustermesh-agent")),
        )
    };
    let mut config = LabConfig::new(
        &args.lab.name,
        Helper {
            program,
            prefix_args: vec!["lab".into()],
        },
    );
    config.state_dir = args.lab.state_dir();
    config.etcd_bin = args.etcd_bin;
    config.binaries = ComponentBinaries {
        apiserver: apiserver_bin,
        agent: agent_bin,
    };
    let lab = Lab::up(&config, &topology)?;
    print_table(&lab.status());
    eprintln!(
        "\nlab {:?} is up. Next: `clustermesh lab deploy --name {} --cluster {} --replicas 2`, \
         `clustermesh lab status --name {}`, `clustermesh lab down --name {}`",
        args.lab.name,
        args.lab.name,
        lab.state().clusters[0].name,
        args.lab.name,
        args.lab.name
    );
    Ok(ExitCode::SUCCESS)
}

fn down(args: &DownArgs) -> Result<ExitCode> {
    host::require_root()?;
    if !args.all {
        down_one(&args.lab.name, &args.lab.state_dir())?;
        return Ok(ExitCode::SUCCESS);
    }
    let names = clustermesh_lab::lab::list_labs();
    if names.is_empty() {
        eprintln!("no lab found on this machine");
    }
    for name in names {
        down_one(&name, &default_state_dir(&name))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn down_one(name: &str, state_dir: &Path) -> Result<()> {
    let report = clustermesh_lab::down(name, state_dir)
        .with_context(|| format!("taking down lab {name:?}"))?;
    if report.netns_removed.is_empty()
        && report.cgroup_removed.is_none()
        && report.state_dir_removed.is_none()
    {
        eprintln!("lab {name:?}: nothing to remove");
    } else {
        eprintln!(
            "lab {name:?} removed: {} network namespace(s), {} process(es) stopped{}{}",
            report.netns_removed.len(),
            report.processes_killed,
            report
                .cgroup_removed
                .map(|p| format!(", cgroup {}", p.display()))
                .unwrap_or_default(),
            report
                .state_dir_removed
                .map(|p| format!(", state {}", p.display()))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

fn status(args: &StatusArgs) -> Result<ExitCode> {
    let lab = args.lab.open()?;
    let status = lab.status();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Table => print_table(&status),
    }
    Ok(ExitCode::SUCCESS)
}

fn deploy(args: DeployArgs) -> Result<ExitCode> {
    let mut lab = args.lab.open()?;
    let spec = DeploySpec {
        cluster: args.cluster.clone(),
        namespace: args.namespace.clone(),
        name: args.app.clone(),
        replicas: args.replicas,
        port: args.port,
        global: args.global,
        shared: args.shared,
        affinity: args.affinity,
    };
    let pods = lab.deploy(&spec)?;
    let svc = lab
        .state()
        .service(&args.cluster, &args.namespace, &args.app)
        .context("the deployment vanished")?
        .clone();
    println!(
        "deployed {}/{} in {}: {} pod(s), service IP {} port {} (global={} shared={} affinity={})",
        args.namespace,
        args.app,
        args.cluster,
        pods.len(),
        svc.cluster_ip,
        svc.port,
        svc.global,
        svc.shared,
        svc.affinity.as_str()
    );
    for p in pods {
        println!("  {:<20} {:<12} {}", p.key(), p.node, p.ip);
    }
    println!("manifests: {}", lab.manifests_dir(&args.cluster)?.display());
    Ok(ExitCode::SUCCESS)
}

fn scale(args: &ScaleArgs) -> Result<ExitCode> {
    let mut lab = args.lab.open()?;
    lab.scale(&args.cluster, &args.namespace, &args.app, args.replicas)?;
    let pods = lab.deployment_pods(&args.cluster, &args.namespace, &args.app);
    println!(
        "{}/{} in {} now has {} pod(s)",
        args.namespace,
        args.app,
        args.cluster,
        pods.len()
    );
    for p in pods {
        println!("  {:<20} {:<12} {}", p.key(), p.node, p.ip);
    }
    Ok(ExitCode::SUCCESS)
}

fn exec(args: &ExecArgs) -> Result<ExitCode> {
    let mut lab = args.lab.open()?;
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given after --")?;
    let mut created = None;
    let mut cmd = if args.host {
        let node = match &args.node {
            Some(n) => n.clone(),
            None => lab.cluster(&args.cluster)?.nodes[0].name.clone(),
        };
        lab.node_command(&args.cluster, &node, program)?
    } else {
        let pod = match &args.pod {
            Some(p) => lab.pod(&args.cluster, p)?.clone(),
            None => {
                let pod = lab.create_pod(&args.cluster, args.node.as_deref(), "default", None)?;
                eprintln!(
                    "created pod {} on {}/{} with IP {}{}",
                    pod.key(),
                    pod.cluster,
                    pod.node,
                    pod.ip,
                    if args.rm {
                        " (removed when the command ends)"
                    } else {
                        "; it stays until `lab down` (or use --rm)"
                    }
                );
                created = Some(pod.clone());
                pod
            }
        };
        lab.pod_command(&pod, program)
    };
    let status = cmd
        .args(rest)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if args.rm
        && let Some(pod) = created
    {
        lab.delete_pod(&pod.cluster, &pod.key())?;
    }
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn stop_start(args: StopStartArgs, action: Action) -> Result<ExitCode> {
    if let Some(id) = args.id {
        return process_action(&ProcessArgs { lab: args.lab, id }, action);
    }
    let spec = args.node.context("give a process id or --node")?;
    let Some((cluster, node)) = spec.split_once('/') else {
        bail!("--node {spec:?} must be CLUSTER/NODE, e.g. east/east-1");
    };
    let lab = args.lab.open()?;
    let ids = match action {
        Action::Start => lab.start_node(cluster, node)?,
        _ => lab.stop_node(cluster, node)?,
    };
    let verb = match action {
        Action::Start => "started",
        _ => "stopped (until `clustermesh lab start --node ...`)",
    };
    if ids.is_empty() {
        println!("node {cluster}/{node} has no process to act on");
    } else {
        println!("{verb} on {cluster}/{node}: {}", ids.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(args: &LogsArgs) -> Result<ExitCode> {
    let lab = args.lab.open()?;
    let procs = lab.processes();
    let path = if args.id == "supervisor" {
        procs.daemon_log_path()
    } else {
        procs.log_path(&args.id)
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no log for {:?} at {} (`clustermesh lab status` lists the processes)",
            args.id,
            path.display()
        )
    })?;
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(args.tail)..] {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

enum Action {
    Kill,
    Stop,
    Start,
}

fn process_action(args: &ProcessArgs, action: Action) -> Result<ExitCode> {
    let lab = args.lab.open()?;
    let procs = lab.processes();
    let known = procs.list();
    if !known.iter().any(|p| p.spec.id == args.id) {
        let not_built = [".apiserver", ".agent."]
            .iter()
            .any(|part| args.id.contains(part));
        let ids: Vec<_> = known.iter().map(|p| p.spec.id.as_str()).collect();
        if not_built {
            bail!(
                "{:?} does not run in this lab: it was started without the apiserver and \
                 agents (--etcd-only, or their binaries were not built: run `cargo build` and \
                 start a new lab). Running: {}",
                args.id,
                ids.join(", ")
            );
        }
        bail!(
            "no process {:?} in lab {:?}; processes: {}",
            args.id,
            args.lab.name,
            ids.join(", ")
        );
    }
    match action {
        Action::Kill => {
            if !procs.daemon_alive() {
                eprintln!("warning: the supervisor is not running, so nothing will restart it");
            }
            match procs.kill(&args.id)? {
                Some(pid) => {
                    println!(
                        "killed {} (pid {pid}) with SIGKILL; the supervisor restarts it",
                        args.id
                    );
                    if let Some(new) =
                        procs.wait_running(&args.id, Some(pid), Duration::from_secs(10))
                    {
                        println!("{} runs again as pid {new}", args.id);
                    }
                }
                None => println!("{} is not running (see `status`)", args.id),
            }
        }
        Action::Stop => {
            procs.stop(&args.id)?;
            println!(
                "{} is stopping and stays stopped until `clustermesh lab start {}`",
                args.id, args.id
            );
        }
        Action::Start => {
            procs.start(&args.id)?;
            match procs.wait_running(&args.id, None, Duration::from_secs(10)) {
                Some(pid) => println!("{} runs as pid {pid}", args.id),
                None => println!(
                    "{} was released; the supervisor starts it (see `status`)",
                    args.id
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints columns padded to their widest cell.
fn print_rows(rows: &[Vec<String>], indent: &str) {
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{indent}{}", line.join("  ").trim_end());
    }
}

fn print_table(s: &LabStatus) {
    println!(
        "LAB {}   state {}   supervisor {}",
        s.name,
        s.state_dir.display(),
        s.supervisor_pid
            .map(|p| format!("pid {p}"))
            .unwrap_or_else(
                || "NOT RUNNING (processes are not restarted; `down` and `up` again)".into()
            )
    );
    println!();
    let mut rows = vec![vec![
        "CLUSTER".into(),
        "ID".into(),
        "NODE CIDR".into(),
        "POD CIDR".into(),
        "ETCD".into(),
        "MANIFESTS".into(),
    ]];
    for c in &s.clusters {
        rows.push(vec![
            c.name.clone(),
            c.id.to_string(),
            c.node_cidr.clone(),
            c.pod_cidr.clone(),
            format!(
                "{} ({})",
                c.etcd_endpoint,
                if c.etcd_healthy {
                    "healthy"
                } else {
                    "NOT HEALTHY"
                }
            ),
            c.manifests_dir.display().to_string(),
        ]);
    }
    print_rows(&rows, "");
    println!();
    let mut rows = vec![vec![
        "NODE".into(),
        "CLUSTER".into(),
        "IP".into(),
        "POD CIDR".into(),
        "NETNS".into(),
    ]];
    for c in &s.clusters {
        for n in &c.nodes {
            rows.push(vec![
                n.name.clone(),
                c.name.clone(),
                n.ip.clone(),
                n.pod_cidr.clone(),
                n.netns.clone(),
            ]);
        }
    }
    print_rows(&rows, "");
    println!();
    let mut rows = vec![vec![
        "PROCESS".into(),
        "STATE".into(),
        "PID".into(),
        "RESTARTS".into(),
        "LAST EXIT".into(),
    ]];
    for p in &s.processes {
        rows.push(vec![
            p.id.clone(),
            p.state.clone(),
            p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            p.restarts.to_string(),
            p.last_exit.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print_rows(&rows, "");
    if !s.pods.is_empty() {
        println!();
        let mut rows = vec![vec![
            "POD".into(),
            "CLUSTER".into(),
            "NODE".into(),
            "IP".into(),
            "APP".into(),
        ]];
        for p in &s.pods {
            rows.push(vec![
                p.key(),
                p.cluster.clone(),
                p.node.clone(),
                p.ip.to_string(),
                p.app.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        print_rows(&rows, "");
    }
    if !s.services.is_empty() {
        println!();
        let mut rows = vec![vec![
            "SERVICE".into(),
            "CLUSTER".into(),
            "CLUSTER-IP".into(),
            "PORT".into(),
            "REPLICAS".into(),
            "GLOBAL".into(),
            "SHARED".into(),
            "AFFINITY".into(),
        ]];
        for v in &s.services {
            rows.push(vec![
                format!("{}/{}", v.namespace, v.name),
                v.cluster.clone(),
                v.cluster_ip.to_string(),
                v.port.to_string(),
                v.replicas.to_string(),
                v.global.to_string(),
                v.shared.to_string(),
                v.affinity.as_str().into(),
            ]);
        }
        print_rows(&rows, "");
    }
    if !s.not_available.is_empty() {
        println!();
        println!("NOT RUNNING IN THIS LAB");
        for line in &s.not_available {
            println!("  {line}");
        }
    }
}
