//! `down` leaves nothing behind: no namespace, no cgroup, no process, no bpffs dir, no state;
//! also after the supervisor was SIGKILLed (a crash). Root only.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use clustermesh_lab::DeploySpec;
use clustermesh_lab::netns::NetNs;
use common::{TestLab, eventually, require_root};

struct Leftovers {
    prefix: String,
    cgroup: PathBuf,
    bpffs: Option<PathBuf>,
    state_dir: PathBuf,
    pids: Vec<u32>,
}

fn snapshot(t: &TestLab) -> Leftovers {
    let status = t.lab.status();
    let mut pids: Vec<u32> = status.processes.iter().filter_map(|p| p.pid).collect();
    pids.extend(status.supervisor_pid);
    assert!(
        pids.len() >= 3,
        "supervisor, 2 etcd and the echo pods run: {pids:?}"
    );
    Leftovers {
        prefix: t.lab.naming().netns_prefix(),
        cgroup: status.cgroup_dir,
        bpffs: status.bpffs_dir,
        state_dir: t.state_dir().to_owned(),
        pids,
    }
}

fn assert_nothing_left(l: &Leftovers) {
    assert_eq!(NetNs::list_with_prefix(&l.prefix), Vec::<String>::new());
    assert!(!l.cgroup.exists(), "cgroup {} is left", l.cgroup.display());
    if let Some(b) = &l.bpffs {
        assert!(!b.exists(), "bpffs dir {} is left", b.display());
    }
    assert!(
        !l.state_dir.exists(),
        "state dir {} is left",
        l.state_dir.display()
    );
    // Killed processes may stay zombies for a moment until their new parent reaps them.
    eventually(
        "every process of the lab to be gone",
        Duration::from_secs(5),
        || l.pids.iter().all(|pid| !alive(*pid)).then_some(()),
    );
}

#[test]
fn down_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let mut t = TestLab::up(None);
    t.lab.deploy(&DeploySpec::echo("east", "echo", 2)).unwrap();
    t.lab.create_pod("west", None, "default", None).unwrap();
    let l = snapshot(&t);
    let report = clustermesh_lab::down(&t.name, t.state_dir()).unwrap();
    assert_eq!(report.netns_removed.len(), 5 + 3, "{report:?}");
    assert_nothing_left(&l);
    // A second down finds nothing and does not fail.
    let again = clustermesh_lab::down(&t.name, t.state_dir()).unwrap();
    assert!(again.netns_removed.is_empty());
}

#[test]
fn down_after_the_supervisor_was_sigkilled_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let mut t = TestLab::up(None);
    t.lab.deploy(&DeploySpec::echo("west", "echo", 2)).unwrap();
    let l = snapshot(&t);
    let supervisor = t.lab.processes().daemon_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the supervisor to die", Duration::from_secs(5), || {
        (!t.lab.processes().daemon_alive()).then_some(())
    });
    // Its children outlive it (orphans), which is what `down` must clean up.
    let etcd = t.lab.processes().status("east.etcd").unwrap().pid.unwrap();
    assert!(alive(etcd), "etcd {etcd} should outlive the supervisor");

    clustermesh_lab::down(&t.name, t.state_dir()).unwrap();
    assert_nothing_left(&l);
}

/// True when `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state follows the command name in parentheses.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z') | Some('X'))
        })
        .unwrap_or(false)
}
