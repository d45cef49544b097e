//! The CLI's commands against a lab cluster (`--context lab:<cluster>`).
//!
//! The lab already does for its clusters what `enable` does for a Kubernetes cluster: at
//! `lab up` it creates each cluster's CA and node certificates (`lab/src/mesh.rs`) and starts
//! etcd, the apiserver and an agent per node as supervised processes, with etcd's server and
//! client certificates (mTLS, etcd authentication turned on by the apiserver). So for a lab
//! cluster `enable` makes sure the apiserver and agents run (starting what `disable`
//! stopped) and reports their health; `disable` stops them and keeps them stopped; `connect`
//! and `disconnect` write and remove peer files (with the peer's CA and a read-only client
//! certificate from it) through the lab library.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clustermesh_lab::Lab;
use clustermesh_lab::mesh;
use clustermesh_lab::supervisor::{Component, RunState};

use crate::target::TargetOptions;

/// The ids of the cluster's apiserver and agent processes.
fn mesh_processes(lab: &Lab, cluster: &str) -> Vec<(String, Component, bool)> {
    lab.processes()
        .list()
        .into_iter()
        .filter(|p| p.spec.cluster == cluster)
        .filter(|p| matches!(p.spec.component, Component::Apiserver | Component::Agent))
        .map(|p| (p.spec.id, p.spec.component, p.stop_requested))
        .collect()
}

pub fn enable(options: &TargetOptions, cluster: &str) -> Result<ExitCode> {
    let lab = options.open_lab()?;
    let cluster = options.lab_cluster(&lab, cluster)?.to_string();
    let processes = mesh_processes(&lab, &cluster);
    if !processes
        .iter()
        .any(|(_, c, _)| matches!(c, Component::Apiserver))
    {
        bail!(
            "the lab runs no clustermesh-apiserver for {cluster} (it was built without the binaries); run `clustermesh lab down` and `clustermesh lab up` with the apiserver and agent binaries built"
        );
    }
    let procs = lab.processes();
    let mut started = 0;
    for (id, _, stopped) in &processes {
        if *stopped {
            procs.start(id)?;
            started += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (id, _, _) in &processes {
        while procs.status(id).map(|s| s.state) != Some(RunState::Running) {
            if Instant::now() > deadline {
                bail!(
                    "{id} did not start within 20 s; read its log: {}",
                    procs.log_path(id).display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let etcd = lab.etcd_healthy(&cluster)?;
    let id = lab.cluster(&cluster)?.id;
    if started == 0 {
        println!(
            "lab cluster {cluster} (ID {id}): already enabled, nothing changed (the lab made its CA and node certificates at `lab up`; etcd {})",
            if etcd { "healthy" } else { "NOT healthy" }
        );
    } else {
        println!(
            "lab cluster {cluster} (ID {id}): enabled, {started} process(es) started; etcd {}",
            if etcd { "healthy" } else { "NOT healthy" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn disable(options: &TargetOptions, cluster: &str, force: bool) -> Result<ExitCode> {
    let lab = options.open_lab()?;
    let cluster = options.lab_cluster(&lab, cluster)?.to_string();
    let peers = lab.peers_of(&cluster)?;
    // Peers that mirror this cluster, too.
    let mut mirrored_by: Vec<String> = lab
        .state()
        .clusters
        .iter()
        .filter(|c| c.name != cluster)
        .filter(|c| mesh::connected_peers(&lab.state().state_dir, &c.name).contains(&cluster))
        .map(|c| c.name.clone())
        .collect();
    mirrored_by.retain(|c| !peers.contains(c));
    let all: Vec<String> = peers.iter().chain(&mirrored_by).cloned().collect();
    if !all.is_empty() && !force {
        bail!(
            "lab:{cluster} is still connected to {}; disconnect first (`clustermesh disconnect --context lab:{cluster} --destination-context lab:{}`), or pass --force to disconnect and disable at once",
            all.join(", "),
            all[0]
        );
    }
    for peer in &all {
        lab.disconnect(&cluster, peer)?;
        println!("lab:{cluster}: disconnected from {peer}");
    }
    let procs = lab.processes();
    let mut stopped = 0;
    for (id, _, already) in mesh_processes(&lab, &cluster) {
        if !already {
            procs.stop(&id)?;
            stopped += 1;
        }
    }
    if stopped == 0 && all.is_empty() {
        println!("lab cluster {cluster}: already disabled, nothing changed");
    } else {
        println!(
            "lab cluster {cluster}: disabled ({stopped} process(es) stopped; etcd and the pods keep running; `clustermesh enable --context lab:{cluster}` starts them again)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn connect(
    options: &TargetOptions,
    clusters: &[String],
    pairs: &[(usize, usize)],
) -> Result<ExitCode> {
    let lab = options.open_lab()?;
    let mut ids = Vec::new();
    for c in clusters {
        let name = options.lab_cluster(&lab, c)?;
        ids.push((
            name.to_string(),
            lab.cluster(name)?.id,
            format!("lab:{name}"),
        ));
    }
    crate::connect::check_unique(&ids)?;
    let mut changed = 0;
    for (from, to) in pairs {
        let (from, to) = (&clusters[*from], &clusters[*to]);
        let had = lab.peers_of(from)?.contains(to);
        if pairs.contains(&(
            clusters.iter().position(|c| c == to).unwrap_or_default(),
            clusters.iter().position(|c| c == from).unwrap_or_default(),
        )) {
            // Both ways: the lab's own connect (idempotent).
            if !had || !lab.peers_of(to)?.contains(from) {
                lab.connect(from, to)?;
                changed += 1;
            }
        } else if !had {
            lab.connect_one_way(from, to)?;
            changed += 1;
        }
        println!("lab:{from} → lab:{to}: {from} mirrors {to}");
    }
    if changed == 0 {
        println!("already connected, nothing changed");
    } else {
        println!(
            "connected; check with `clustermesh status --context lab:{} --wait`",
            clusters[0]
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn disconnect(options: &TargetOptions, clusters: &[String]) -> Result<ExitCode> {
    let lab = options.open_lab()?;
    for c in clusters {
        options.lab_cluster(&lab, c)?;
    }
    let mut any = false;
    for other in &clusters[1..] {
        if lab.disconnect(&clusters[0], other)? {
            any = true;
            println!("lab:{} and lab:{other}: disconnected", clusters[0]);
        }
    }
    if !any {
        println!("not connected; nothing changed");
    }
    Ok(ExitCode::SUCCESS)
}
