//! Wires the agent together: connect to the local etcd, keep a session and the liveness
//! record, load the datapath (adopting what an earlier run pinned), set the mesh routes, watch
//! the inputs, and program the datapath from the merge once the first full sync is in.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clustermesh_ebpf::{AddressFamily, Datapath, Frontend};
use clustermesh_model::{Agent, ClusterName};
use clustermesh_store::{Session, connect};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::dns::zone::DnsView;
use crate::inputs::{self, Inputs, Source};
use crate::liveness::{LivenessRecord, read_boot_id};
use crate::merge::{Desired, ServiceName, merge, merge_services};
use crate::mesh_vip::TunnelTable;
use crate::metrics::{ClusterLabels, Metrics, ReasonLabels};
use crate::program::{Programmer, Scope};
use crate::routes::ensure_mesh_routes;
use crate::status::{self, BackendStatus, FrontendStatus, Status};
use crate::status_grpc::{self, GrpcListen, NodeName};
use crate::tunnel::{AgentTunnel, StreamCount, TunnelStart};

/// A running agent. Dropping it stops the control loop; the datapath stays pinned and keeps
/// serving with what was programmed last.
pub struct Running {
    status: watch::Receiver<Status>,
    tunnel_table: watch::Receiver<TunnelTable>,
    status_addr: std::net::SocketAddr,
    control: JoinHandle<()>,
    http: Vec<JoinHandle<()>>,
    session: Option<Arc<Session>>,
    tunnel: Option<AgentTunnel>,
    _liveness: LivenessRecord,
    /// The clusterset DNS server (`None` with --dns-disable); stops when dropped.
    dns: Option<crate::dns::DnsServer>,
}

impl Running {
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Every mesh VIP and where the tunnel must send its connections.
    pub fn tunnel_table(&self) -> watch::Receiver<TunnelTable> {
        self.tunnel_table.clone()
    }

    /// Open tunnel streams, both directions (0 without a tunnel).
    pub fn tunnel_streams(&self) -> usize {
        self.tunnel.as_ref().map_or(0, AgentTunnel::active_streams)
    }

    /// Where the status endpoints listen (the bound port, if 0 was asked).
    /// Where the DNS server listens, if it runs.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(crate::dns::DnsServer::local_addr)
    }

    pub fn status_addr(&self) -> std::net::SocketAddr {
        self.status_addr
    }

    /// Waits until the first full sync is programmed.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut status = self.status.clone();
        let ready = tokio::time::timeout(timeout, status.wait_for(|s| s.ready)).await;
        match ready {
            Ok(Ok(_)) => Ok(()),
            _ => anyhow::bail!(
                "agent not ready after {timeout:?}: {}",
                self.status()
                    .waiting_for
                    .unwrap_or_else(|| "no reason given".into())
            ),
        }
    }

    /// Stops the agent: the tunnel drains its streams (with a deadline), the control loop ends
    /// (its datapath handles close; pins stay) and the lease is revoked, so the liveness
    /// record vanishes now rather than after its TTL.
    pub async fn stop(mut self) {
        if let Some(tunnel) = self.tunnel.take() {
            tunnel.shutdown().await;
        }
        self.control.abort();
        let _ = (&mut self.control).await;
        for task in &self.http {
            task.abort();
        }
        if let Some(session) = self.session.take().and_then(|s| Arc::try_unwrap(s).ok()) {
            session.close().await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.control.abort();
        for task in &self.http {
            task.abort();
        }
    }
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    info!(
        config = %serde_json::to_string(&config).unwrap_or_default(),
        "effective configuration"
    );
    let client = connect(&config.etcd)
        .await
        .context("connecting to the local etcd")?;

    // The datapath first: if it cannot load, nothing else is worth starting.
    let mut datapath = Datapath::load(&config.datapath).context("loading the eBPF datapath")?;
    datapath
        .attach_cgroup(&config.cgroup)
        .with_context(|| format!("attaching to the node cgroup {}", config.cgroup.display()))?;
    datapath
        .attach_sk_lookup(&config.netns)
        .with_context(|| format!("attaching sk_lookup in {}", config.netns.display()))?;
    ensure_mesh_routes(&config.netns, &config.datapath.mesh_vip_ranges)
        .context("routing the mesh VIP ranges")?;
    // The tunnel serves the outbound listener; sk_lookup is handed a second descriptor of
    // it after the first programming pass, once the tunnel knows every mesh VIP (an agent
    // restarting under traffic must not close connections as "unknown VIP").
    let outbound = match &config.tunnel {
        Some(settings) => {
            let listener = outbound_listener(settings.outbound)?;
            let for_sk_lookup = listener
                .try_clone()
                .context("duplicating the tunnel listener")?;
            Some((listener, for_sk_lookup))
        }
        None => {
            warn!("the tunnel is disabled (--disable-tunnel): remote backends are not used");
            None
        }
    };
    let programmer = Programmer::adopt(datapath, &config.datapath.mesh_vip_ranges)
        .context("adopting the pinned datapath")?;
    let tunnel_table = programmer.subscribe_tunnel_table();

    let session = Arc::new(
        Session::start(client.clone(), config.lease_ttl)
            .await
            .context("starting the etcd session for the liveness record")?,
    );
    let liveness = LivenessRecord::start(
        client.clone(),
        session.clone(),
        config.schema.state(
            &config.cluster.name,
            &clustermesh_model::ObjectName::Agent(config.node_name.clone()),
        ),
        Agent {
            cluster: config.cluster.name.clone(),
            cluster_id: config.cluster.id,
            node: config.node_name.clone(),
            tunnel_address: config.tunnel_address,
            cert_fingerprint: config.cert_fingerprint.clone(),
            boot_id: read_boot_id()?,
        },
    );

    let mut registry = Registry::with_prefix("clustermesh_agent");
    let metrics = Metrics::new(&mut registry);
    let (shared_backends_tx, shared_backends) = watch::channel(HashSet::new());
    let (outbound, pending_listener) = outbound.unzip();
    let tunnel = match (&config.tunnel, outbound) {
        (Some(settings), Some(outbound)) => Some(
            AgentTunnel::start(
                TunnelStart {
                    settings,
                    cluster: &config.cluster_name,
                    node: &config.node_name,
                    peers_dir: config.peers_dir.clone(),
                    mesh: config.cluster.mesh,
                    table: tunnel_table.clone(),
                    shared_backends,
                },
                outbound,
                &mut registry,
            )
            .await
            .context("starting the tunnel")?,
        ),
        _ => None,
    };
    // DNS: the clusterset zone, fed by the control loop after every programming pass.
    let (dns, dns_feed) = match &config.dns {
        Some(settings) => {
            let (server, feed) = crate::dns::DnsServer::start(settings, &mut registry)
                .await
                .context("starting the DNS server")?;
            (Some(server), Some(feed))
        }
        None => (None, None),
    };
    let registry = Arc::new(Mutex::new(registry));
    let (status_tx, status_rx) = watch::channel(Status::default());
    let (status_addr, http) = status::serve(
        config.status_addr,
        config.status_socket.as_deref(),
        status_rx.clone(),
        registry,
    )
    .await?;

    let stream_count = tunnel
        .as_ref()
        .map_or_else(StreamCount::none, AgentTunnel::stream_count);
    let (streams_tx, streams_rx) = watch::channel(0);
    let mut http = http;
    http.push(tokio::spawn(async move {
        // Sampled: the count lives in the tunnel's metrics; once a second is enough for status.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            streams_tx.send_if_modified(|n| {
                let now = stream_count.get();
                let changed = *n != now;
                *n = now;
                changed
            });
        }
    }));
    http.extend(
        status_grpc::serve(
            &GrpcListen {
                socket: config.grpc_socket.clone(),
                tcp: config.grpc_addr,
            },
            NodeName {
                cluster: config.cluster_name.clone(),
                cluster_id: config.cluster_id,
                node: config.node_name.clone(),
            },
            status_rx.clone(),
            streams_rx,
        )
        .await?,
    );

    let (watches, events) = inputs::watch(&client, &config.schema, &config.cluster.name);
    let inputs = Inputs::new(config.schema.clone(), config.cluster.clone());
    let control = tokio::spawn(control_loop(ControlLoop {
        config,
        inputs,
        programmer,
        events,
        status: status_tx,
        metrics,
        shared_backends: shared_backends_tx,
        pending_listener,
        liveness: liveness.subscribe(),
        _watches: watches,
        dns: dns_feed,
        status_frontends_at: None,
        status_frontends_stale: false,
        desired: Desired::new(),
        frontends_of: HashMap::new(),
        dns_view: DnsView::default(),
        full_pass_next: true,
    }));
    Ok(Running {
        status: status_rx,
        tunnel_table,
        status_addr,
        control,
        http,
        session: Some(session),
        tunnel,
        _liveness: liveness,
        dns,
    })
}

struct ControlLoop {
    config: Config,
    inputs: Inputs,
    programmer: Programmer<Datapath>,
    events: mpsc::Receiver<(Source, clustermesh_store::WatchEvent)>,
    status: watch::Sender<Status>,
    metrics: Metrics,
    /// What the tunnel's receiving side may dial.
    shared_backends: watch::Sender<HashSet<SocketAddr>>,
    /// The tunnel's outbound listener, until it is handed to sk_lookup after the first pass.
    pending_listener: Option<std::net::TcpListener>,
    liveness: watch::Receiver<bool>,
    _watches: inputs::Watches,
    /// Where the DNS server's view is published.
    dns: Option<crate::dns::DnsFeed>,
    /// When the status's per-frontend list was last rebuilt: at most once a second, because
    /// with thousands of backends it costs as much as the rest of a pass.
    status_frontends_at: Option<Instant>,
    /// A pass skipped the rebuild; the next tick after the second is up forces one.
    status_frontends_stale: bool,
    /// The merge's output as of the last pass, kept so that a pass after a change to a few
    /// services merges, programs and publishes only those (a pass over everything costs
    /// tens of milliseconds at 20k backends).
    desired: Desired,
    /// The frontends of each service in `desired`.
    frontends_of: HashMap<ServiceName, Vec<Frontend>>,
    /// The DNS view as of the last pass.
    dns_view: DnsView,
    /// The next pass redoes everything: the last one had errors (it is retried whole).
    full_pass_next: bool,
}

/// How often the status's per-frontend list is rebuilt at most.
const STATUS_FRONTENDS_EVERY: Duration = Duration::from_secs(1);

/// The loopback listener sk_lookup hands mesh-VIP connections to. `SO_REUSEADDR` so that a
/// restarted agent can bind it while the old one's accepted sockets linger.
fn outbound_listener(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding the tunnel's outbound listener on {addr}"))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn control_loop(mut cl: ControlLoop) {
    let started = Instant::now();
    let mut ready = false;
    let mut dirty = true;
    let mut rejected_seen: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = cl.events.recv() => {
                let Some((source, event)) = event else {
                    warn!("the etcd watches ended; the agent stops programming");
                    return;
                };
                dirty |= cl.inputs.apply(source, event);
                // Coalesce a burst: everything that arrives within the window is one pass.
                let window = tokio::time::Instant::now() + cl.config.coalesce;
                while let Ok(Some((source, event))) =
                    tokio::time::timeout_at(window, cl.events.recv()).await
                {
                    dirty |= cl.inputs.apply(source, event);
                }
            }
            _ = tick.tick() => {}
        }

        if !ready {
            match waiting_for(&cl.inputs, started, cl.config.peer_sync_timeout) {
                Some(reason) => {
                    let liveness = *cl.liveness.borrow();
                    cl.status.send_modify(|s| {
                        s.waiting_for = Some(reason);
                        s.local_synced = cl.inputs.local_synced();
                        s.peers = peers(&cl.inputs);
                        s.liveness_record_written = liveness;
                    });
                    continue;
                }
                None => {
                    info!(elapsed = ?started.elapsed(), "first full sync is in; programming the datapath");
                    ready = true;
                    dirty = true;
                }
            }
        }
        if !dirty
            && cl.status_frontends_stale
            && cl
                .status_frontends_at
                .is_some_and(|at| at.elapsed() >= STATUS_FRONTENDS_EVERY)
        {
            dirty = true;
        }
        if !dirty {
            let liveness = *cl.liveness.borrow();
            cl.status.send_if_modified(|s| {
                let changed = s.liveness_record_written != liveness;
                s.liveness_record_written = liveness;
                changed
            });
            continue;
        }
        // A pass with errors stays dirty: the next tick retries it.
        dirty = !pass(&mut cl, &mut rejected_seen);
    }
}

/// Why the agent may not program yet, or `None` once it may.
fn waiting_for(inputs: &Inputs, started: Instant, peer_timeout: Duration) -> Option<String> {
    if !inputs.listed() {
        return Some("the first list of the local etcd".into());
    }
    if !inputs.local_synced() {
        return Some("the local apiserver's first full sync (synced/<cluster>/services)".into());
    }
    let unsynced: Vec<String> = inputs
        .peers()
        .into_iter()
        .filter(|(_, p)| !p.synced)
        .map(|(name, _)| name.to_string())
        .collect();
    if !unsynced.is_empty() && started.elapsed() < peer_timeout {
        return Some(format!("the mirror of peers {unsynced:?} to be synced"));
    }
    if !unsynced.is_empty() {
        warn!(peers = ?unsynced, "peer mirrors not synced within the timeout; programming without them");
    }
    None
}

fn peers(inputs: &Inputs) -> std::collections::BTreeMap<String, inputs::PeerSummary> {
    inputs
        .peers()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// One programming pass; returns whether it went without errors.
fn pass(
    cl: &mut ControlLoop,
    rejected_seen: &mut std::collections::BTreeMap<&'static str, u64>,
) -> bool {
    let changes = cl.inputs.take_changes();
    let full = changes.everything || cl.full_pass_next;
    let mut input = cl.inputs.merge_input();
    if cl.config.tunnel.is_none() {
        // Without the tunnel a remote backend cannot be reached: use local ones only.
        input.peers.clear();
    }
    let mut changed_frontends = BTreeSet::new();
    if full {
        cl.desired = merge(&input);
        cl.frontends_of.clear();
        for (frontend, merged) in &cl.desired {
            cl.frontends_of
                .entry(merged.service.clone())
                .or_default()
                .push(*frontend);
        }
    } else {
        // Only the services whose inputs changed: their old frontends out, their new ones in.
        for name in &changes.services {
            for frontend in cl.frontends_of.remove(name).unwrap_or_default() {
                cl.desired.remove(&frontend);
                changed_frontends.insert(frontend);
            }
        }
        for (frontend, merged) in merge_services(&input, &changes.services) {
            cl.frontends_of
                .entry(merged.service.clone())
                .or_default()
                .push(frontend);
            changed_frontends.insert(frontend);
            cl.desired.insert(frontend, merged);
        }
    }
    if full || changes.local {
        let shared = cl.inputs.shared_backends();
        cl.shared_backends.send_if_modified(|current| {
            let changed = *current != shared;
            *current = shared;
            changed
        });
    }
    if cl.dns.is_some() {
        cl.programmer
            .set_direct_remotes(crate::dns::zone::headless_remote_backends(&input));
    }
    let inputs = &cl.inputs;
    let scope = if full {
        Scope::All
    } else {
        Scope::Frontends(&changed_frontends)
    };
    let mut report = cl
        .programmer
        .apply_scoped(&cl.desired, scope, |cluster, node| {
            inputs.tunnel_address(cluster, node)
        });
    if let Some(dns) = &cl.dns {
        let programmer = &cl.programmer;
        let mesh_vip = |cluster: &ClusterName, ip| programmer.mesh_vip(cluster, ip);
        let changed = if full {
            cl.dns_view = DnsView::build(&input, &cl.config.cluster.name, mesh_vip);
            true
        } else {
            cl.dns_view.update_services(
                &input,
                &changes.services,
                &cl.config.cluster.name,
                mesh_vip,
            )
        };
        if changed {
            // The view's services are shared pointers: the copy is of the index only.
            dns.update(cl.dns_view.clone());
        }
    }
    if let Some(listener) = cl.pending_listener.take() {
        match cl
            .programmer
            .table_mut()
            .set_tunnel_listener(AddressFamily::Ipv4, &listener)
        {
            Ok(()) => info!("mesh VIP connections now go to the tunnel"),
            Err(e) => {
                report
                    .errors
                    .push(format!("handing the tunnel listener to sk_lookup: {e}"));
                cl.pending_listener = Some(listener);
            }
        }
    }
    if !report.errors.is_empty() {
        warn!(errors = ?report.errors, "programming pass had errors; the next pass retries");
    }
    cl.full_pass_next = !report.errors.is_empty();
    let now = clustermesh_store::unix_millis_now();
    for stamp in &changes.stamps {
        let lag_ms = now.saturating_sub(*stamp);
        cl.metrics.propagation_lag.observe(lag_ms as f64 / 1000.0);
    }

    let m = &cl.metrics;
    m.ready.set(1);
    m.passes.inc();
    m.pass_duration.observe(report.duration.as_secs_f64());
    m.map_errors.inc_by(report.errors.len() as u64);
    m.services_programmed
        .set(cl.programmer.programmed().len() as i64);
    m.backends_programmed.clear();
    for (cluster, n) in &report.backends_by_cluster {
        let cluster = if cluster.is_empty() {
            cl.config.cluster_name.clone()
        } else {
            cluster.clone()
        };
        m.backends_programmed
            .get_or_create(&ClusterLabels { cluster })
            .set(*n as i64);
    }
    for (reason, n) in &cl.inputs.rejected {
        let seen = rejected_seen.entry(reason).or_default();
        m.validation_failures
            .get_or_create(&ReasonLabels {
                reason: (*reason).to_owned(),
            })
            .inc_by(n - *seen);
        *seen = *n;
    }

    let rebuild_frontends = cl
        .status_frontends_at
        .is_none_or(|at| at.elapsed() >= STATUS_FRONTENDS_EVERY);
    cl.status_frontends_stale = !rebuild_frontends;
    let frontends: Option<Vec<FrontendStatus>> = rebuild_frontends.then(|| {
        cl.status_frontends_at = Some(Instant::now());
        status_frontends(&cl.desired, &cl.programmer)
    });
    let liveness = *cl.liveness.borrow();
    let last_error = report.errors.first().cloned();
    let clean = report.errors.is_empty();
    cl.status.send_modify(|s| {
        s.ready = true;
        s.waiting_for = None;
        s.local_synced = cl.inputs.local_synced();
        s.local_services = cl.inputs.local_service_count();
        s.peers = peers(&cl.inputs);
        if let Some(frontends) = frontends {
            s.frontends = frontends;
        }
        s.passes += 1;
        s.last_pass = Some(report);
        s.liveness_record_written = liveness;
        s.rejected = cl
            .inputs
            .rejected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        if last_error.is_some() {
            s.last_error = last_error;
        } else if let Some(rejection) = &cl.inputs.last_rejection {
            s.last_error = Some(rejection.clone());
        }
    });
    clean
}

/// The status's view of every frontend and its backends.
fn status_frontends(
    desired: &crate::merge::Desired,
    programmer: &Programmer<Datapath>,
) -> Vec<FrontendStatus> {
    desired
        .iter()
        .map(|(frontend, merged)| FrontendStatus {
            service: merged.service.clone(),
            frontend: frontend.addr,
            protocol: match frontend.protocol {
                clustermesh_ebpf::Protocol::Tcp => "TCP",
                clustermesh_ebpf::Protocol::Udp => "UDP",
            },
            backends: merged
                .backends
                .iter()
                .map(|b| BackendStatus {
                    cluster: BackendStatus::cluster_of(&b.location),
                    addr: b.addr,
                    node: b.node.clone(),
                    state: if b.active { "active" } else { "standby" },
                    mesh_vip: match &b.location {
                        crate::merge::BackendLocation::Remote { cluster } => {
                            programmer.mesh_vip(cluster, b.addr.ip())
                        }
                        crate::merge::BackendLocation::Local => None,
                    },
                })
                .collect(),
        })
        .collect()
}
