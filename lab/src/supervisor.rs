//! Process supervision for a lab.
//!
//! The supervisor is a detached daemon (`clustermesh lab supervise --state-dir DIR`, started by
//! `up`), so that processes keep running after the command that started the lab returns. It
//! talks with the rest of the lab only through files in the state directory:
//!
//! ```text
//! <state>/supervisor.pid            the daemon's pid, written by the daemon itself
//! <state>/supervisor.log            its own log
//! <state>/supervisor.stop           created by `down`: stop every process, then exit
//! <state>/processes/<id>/spec.json  a [`ProcessSpec`]: what to run, in which netns and cgroup
//! <state>/processes/<id>/stop       present: keep the process stopped (`lab stop`)
//! <state>/processes/<id>/status.json  a [`ProcessStatus`], rewritten by the daemon
//! <state>/processes/<id>/log        the process's stdout and stderr, appended
//! ```
//!
//! Every ~100 ms the daemon starts each registered process that is not running and not
//! stopped, restarting crashed ones with a backoff (100 ms doubling to 5 s, reset after 10 s
//! of good running). A process runs in its network namespace (`ip netns exec`) and its cgroup
//! (a tiny `sh` writes its own pid to `cgroup.procs` before it `exec`s, so the process is in
//! the cgroup from its first instruction). The daemon puts itself in `<lab cgroup>/supervisor`
//! so that killing the lab's cgroup ends everything, even after a crash.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// What can go wrong while supervising.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not valid: {source} (was it written by another clustermesh version? `lab down` and `up` again)"
    )]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no process {0:?} in this lab; `clustermesh lab status` lists them")]
    UnknownProcess(String),
    #[error("could not start the supervisor daemon `{program}`: {source}")]
    SpawnDaemon {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the supervisor daemon did not come up within {0:?}; see {1}")]
    DaemonNotReady(Duration, PathBuf),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SupervisorError + 'a {
    move |source| SupervisorError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Which part of the product a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// The cluster's etcd (Debian's `etcd`).
    Etcd,
    /// The cluster's clustermesh-apiserver (started when its binary is given).
    Apiserver,
    /// A node's clustermesh-agent (started when its binary is given).
    Agent,
    /// A pod's workload, e.g. the echo server.
    Workload,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::Apiserver => "apiserver",
            Component::Agent => "agent",
            Component::Workload => "workload",
        }
    }
}

/// Everything needed to (re)start one supervised process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Unique in the lab, e.g. `east.etcd`, `east.agent.east-1`, `east.pod.default.echo-0`.
    pub id: String,
    pub component: Component,
    pub cluster: String,
    pub node: String,
    /// `<namespace>/<name>` for pod workloads.
    pub pod: Option<String>,
    /// Network namespace name (under /run/netns) the process runs in.
    pub netns: String,
    /// Absolute cgroup v2 directory the process runs in.
    pub cgroup: PathBuf,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// What the daemon last knew about a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub state: RunState,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// How the last run ended, e.g. `exit status: 1` or `signal: 9 (SIGKILL)`.
    pub last_exit: Option<String>,
    /// Unix time (seconds) the current run started.
    pub started_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    /// Exited; will be started again after the backoff.
    Restarting,
    /// Stopped on request; stays stopped until `lab start`.
    Stopped,
    /// Could not be started (see the process log).
    Failed,
}

/// A registered process with its last known status (`None` until the daemon saw it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub spec: ProcessSpec,
    pub status: Option<ProcessStatus>,
    pub stop_requested: bool,
    pub log: PathBuf,
}

/// The file layout of a lab's supervision, rooted at the state directory.
#[derive(Debug, Clone)]
pub struct Processes {
    state_dir: PathBuf,
}

impl Processes {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Processes {
            state_dir: state_dir.into(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.state_dir.join("processes")
    }

    pub fn process_dir(&self, id: &str) -> PathBuf {
        self.dir().join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.process_dir(id).join("log")
    }

    pub fn daemon_pid_path(&self) -> PathBuf {
        self.state_dir.join("supervisor.pid")
    }

    pub fn daemon_log_path(&self) -> PathBuf {
        self.state_dir.join("supervisor.log")
    }

    pub fn daemon_stop_path(&self) -> PathBuf {
        self.state_dir.join("supervisor.stop")
    }

    /// Registers (or replaces) a process; the daemon starts it within ~100 ms.
    pub fn register(&self, spec: &ProcessSpec) -> Result<(), SupervisorError> {
        let dir = self.process_dir(&spec.id);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let json = serde_json::to_vec_pretty(spec).expect("specs serialize");
        write_atomic(&dir.join("spec.json"), &json)
    }

    /// Stops a process (SIGTERM, SIGKILL after 3 s) and forgets it; waits until it is gone.
    pub fn unregister(&self, id: &str, timeout: Duration) -> Result<(), SupervisorError> {
        self.stop(id)?;
        self.wait_stopped(id, timeout);
        let dir = self.process_dir(id);
        // Kill it ourselves if the daemon is not there to do it.
        if let Some(pid) = self.status(id).and_then(|s| s.pid) {
            kill_pid(pid, Signal::SIGKILL);
        }
        fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))
    }

    /// Asks the daemon to stop the process and keep it stopped.
    pub fn stop(&self, id: &str) -> Result<(), SupervisorError> {
        let dir = self.existing(id)?;
        let path = dir.join("stop");
        fs::write(&path, b"").map_err(io_err("write", &path))
    }

    /// Lets the daemon start a stopped process again.
    pub fn start(&self, id: &str) -> Result<(), SupervisorError> {
        let dir = self.existing(id)?;
        match fs::remove_file(dir.join("stop")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SupervisorError::Io {
                action: "remove",
                path: dir.join("stop"),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Sends SIGKILL to the process's current run (a failure drill: the daemon restarts it).
    /// Returns the pid that was killed.
    pub fn kill(&self, id: &str) -> Result<Option<u32>, SupervisorError> {
        self.existing(id)?;
        let pid = self
            .status(id)
            .filter(|s| s.state == RunState::Running)
            .and_then(|s| s.pid);
        if let Some(pid) = pid {
            kill_pid(pid, Signal::SIGKILL);
        }
        Ok(pid)
    }

    /// The last status the daemon wrote for `id`.
    pub fn status(&self, id: &str) -> Option<ProcessStatus> {
        let text = fs::read(self.process_dir(id).join("status.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Every registered process, sorted by id.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.dir()).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok(text) = fs::read(entry.path().join("spec.json")) else {
                continue;
            };
            let Ok(spec) = serde_json::from_slice::<ProcessSpec>(&text) else {
                continue;
            };
            out.push(ProcessInfo {
                status: self.status(&id),
                stop_requested: entry.path().join("stop").exists(),
                log: self.log_path(&id),
                spec,
            });
        }
        out.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        out
    }

    /// Waits until the process `id` runs with a pid other than `not`, returning the pid.
    pub fn wait_running(&self, id: &str, not: Option<u32>, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.status(id)
                && s.state == RunState::Running
                && s.pid.is_some()
                && s.pid != not
            {
                return s.pid;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn wait_stopped(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.status(id) {
                Some(s) if s.state == RunState::Running => {}
                _ => return true,
            }
            if !self.daemon_alive() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn existing(&self, id: &str) -> Result<PathBuf, SupervisorError> {
        let dir = self.process_dir(id);
        if dir.join("spec.json").exists() {
            Ok(dir)
        } else {
            Err(SupervisorError::UnknownProcess(id.to_owned()))
        }
    }

    /// The daemon's pid, if it is alive (checked against `/proc/<pid>/cmdline`).
    pub fn daemon_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.daemon_pid_path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let state_dir = self.state_dir.to_string_lossy();
        (cmdline.contains("supervise") && cmdline.contains(state_dir.as_ref())).then_some(pid)
    }

    pub fn daemon_alive(&self) -> bool {
        self.daemon_pid().is_some()
    }

    /// Starts the daemon detached (`setsid -f <program> <args…>`) and waits until it runs.
    pub fn spawn_daemon(&self, program: &Path, args: &[String]) -> Result<u32, SupervisorError> {
        let log_path = self.daemon_log_path();
        let log = open_log(&log_path)?;
        let log2 = log.try_clone().map_err(io_err("open", &log_path))?;
        let _ = fs::remove_file(self.daemon_stop_path());
        // setsid -f forks, so the daemon is reparented to init and is nobody's zombie.
        let status = Command::new("setsid")
            .arg("-f")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .status()
            .map_err(|source| SupervisorError::SpawnDaemon {
                program: program.to_owned(),
                source,
            })?;
        if !status.success() {
            return Err(SupervisorError::SpawnDaemon {
                program: program.to_owned(),
                source: io::Error::other(format!("setsid exited with {status}")),
            });
        }
        let timeout = Duration::from_secs(10);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(pid) = self.daemon_pid() {
                return Ok(pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(SupervisorError::DaemonNotReady(timeout, log_path))
    }

    /// Asks the daemon to stop all processes and exit; SIGKILLs it after `timeout`.
    pub fn stop_daemon(&self, timeout: Duration) {
        let Some(pid) = self.daemon_pid() else {
            return;
        };
        let _ = fs::write(self.daemon_stop_path(), b"");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.daemon_alive() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.daemon_alive() {
            kill_pid(pid, Signal::SIGKILL);
        }
    }
}

/// The daemon's main loop: supervises until `supervisor.stop` appears or the state directory
/// disappears, then stops every process and returns. `own_cgroup`, when given, is where the
/// daemon moves itself first.
pub fn run_daemon(state_dir: &Path, own_cgroup: Option<&Path>) -> Result<(), SupervisorError> {
    let procs = Processes::new(state_dir);
    if let Some(cg) = own_cgroup {
        fs::create_dir_all(cg).map_err(io_err("create cgroup", cg))?;
        let path = cg.join("cgroup.procs");
        fs::write(&path, std::process::id().to_string()).map_err(io_err("write", &path))?;
    }
    fs::create_dir_all(procs.dir()).map_err(io_err("create", &procs.dir()))?;
    write_atomic(
        &procs.daemon_pid_path(),
        std::process::id().to_string().as_bytes(),
    )?;
    eprintln!(
        "supervisor {} started for {}",
        std::process::id(),
        state_dir.display()
    );

    let mut running: HashMap<String, Running> = HashMap::new();
    let mut waiting: HashMap<String, Backoff> = HashMap::new();
    loop {
        if procs.daemon_stop_path().exists() || !state_dir.exists() {
            break;
        }
        let specs = read_specs(&procs);

        // Reap exits and handle stop requests of running processes.
        let ids: Vec<String> = running.keys().cloned().collect();
        for id in ids {
            let run = running.get_mut(&id).expect("key from map");
            let wanted = specs.get(&id);
            let stop = wanted.is_none() || procs.process_dir(&id).join("stop").exists();
            if stop && run.term_sent.is_none() {
                kill_pid(run.child.id(), Signal::SIGTERM);
                run.term_sent = Some(Instant::now());
            }
            if let Some(t) = run.term_sent
                && t.elapsed() > Duration::from_secs(3)
            {
                kill_pid(run.child.id(), Signal::SIGKILL);
            }
            let Ok(Some(exit)) = run.child.try_wait() else {
                continue;
            };
            let run = running.remove(&id).expect("key from map");
            let ran = run.started.elapsed();
            let backoff = waiting.entry(id.clone()).or_default();
            if !stop {
                backoff.after_exit(ran);
            }
            backoff.last_exit = Some(exit.to_string());
            eprintln!("{id}: pid {} ended ({exit}) after {ran:?}", run.child.id());
            if wanted.is_some() {
                let state = if stop {
                    RunState::Stopped
                } else {
                    RunState::Restarting
                };
                write_status(&procs, &id, state, None, backoff, None);
            }
        }

        // Start what should run.
        for (id, spec) in &specs {
            if running.contains_key(id) {
                continue;
            }
            let backoff = waiting.entry(id.clone()).or_default();
            if procs.process_dir(id).join("stop").exists() {
                write_status(&procs, id, RunState::Stopped, None, backoff, None);
                continue;
            }
            if Instant::now() < backoff.next_start {
                continue;
            }
            match spawn(&procs, spec) {
                Ok(child) => {
                    let started = now_secs();
                    write_status(
                        &procs,
                        id,
                        RunState::Running,
                        Some(child.id()),
                        backoff,
                        Some(started),
                    );
                    eprintln!("{id}: started pid {}", child.id());
                    running.insert(
                        id.clone(),
                        Running {
                            child,
                            started: Instant::now(),
                            term_sent: None,
                        },
                    );
                }
                Err(err) => {
                    eprintln!("{id}: cannot start: {err}");
                    backoff.after_exit(Duration::ZERO);
                    backoff.last_exit = Some(format!("cannot start: {err}"));
                    write_status(&procs, id, RunState::Failed, None, backoff, None);
                }
            }
        }
        waiting.retain(|id, _| specs.contains_key(id));
        std::thread::sleep(Duration::from_millis(100));
    }

    // Shut down: SIGTERM everything, SIGKILL what is left after 3 s.
    eprintln!("supervisor stopping {} processes", running.len());
    for run in running.values() {
        kill_pid(run.child.id(), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !running.is_empty() {
        running.retain(|_, run| !matches!(run.child.try_wait(), Ok(Some(_))));
        std::thread::sleep(Duration::from_millis(50));
    }
    for run in running.values_mut() {
        let _ = run.child.kill();
        let _ = run.child.wait();
    }
    let _ = fs::remove_file(procs.daemon_pid_path());
    Ok(())
}

struct Running {
    child: Child,
    started: Instant,
    term_sent: Option<Instant>,
}

struct Backoff {
    restarts: u32,
    delay: Duration,
    next_start: Instant,
    last_exit: Option<String>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            restarts: 0,
            delay: Duration::from_millis(100),
            next_start: Instant::now(),
            last_exit: None,
        }
    }
}

impl Backoff {
    fn after_exit(&mut self, ran: Duration) {
        if ran > Duration::from_secs(10) {
            self.delay = Duration::from_millis(100);
        }
        self.restarts += 1;
        self.next_start = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
    }
}

fn read_specs(procs: &Processes) -> BTreeMap<String, ProcessSpec> {
    let mut specs = BTreeMap::new();
    for entry in fs::read_dir(procs.dir()).into_iter().flatten().flatten() {
        if let Ok(text) = fs::read(entry.path().join("spec.json"))
            && let Ok(spec) = serde_json::from_slice::<ProcessSpec>(&text)
        {
            specs.insert(spec.id.clone(), spec);
        }
    }
    specs
}

/// Starts one run of `spec`: `sh` puts itself into the cgroup, then execs
/// `nsenter --net=<netns> <program> <args…>`, which execs the program (same pid throughout).
fn spawn(procs: &Processes, spec: &ProcessSpec) -> io::Result<Child> {
    let log = open_log(&procs.log_path(&spec.id)).map_err(io::Error::other)?;
    let log2 = log.try_clone()?;
    fs::create_dir_all(&spec.cgroup)?;
    command_in(&spec.netns, &spec.cgroup, &spec.program)
        .args(&spec.args)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
}

/// A [`Command`] that runs `program` in network namespace `netns` and cgroup `cgroup`
/// (absolute; it must exist): `sh` writes its own pid to `cgroup.procs`, then execs
/// `nsenter --net=/run/netns/<netns> <program>`, which execs the program, so the pid stays
/// the same and the program is in the cgroup from its first instruction. Add arguments as
/// usual.
///
/// `nsenter` rather than `ip netns exec`: the latter also unshares the mount namespace and
/// remounts `/sys`, which hides the bpffs and cgroup2 mounts below it from the program, and
/// the agent needs both.
pub fn command_in(netns: &str, cgroup: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$0" && ns="$1" && shift && exec nsenter --net="/run/netns/$ns" "$@""#)
        .arg(cgroup.join("cgroup.procs"))
        .arg(netns)
        .arg(program);
    cmd
}

use std::os::unix::process::CommandExt as _;

fn write_status(
    procs: &Processes,
    id: &str,
    state: RunState,
    pid: Option<u32>,
    backoff: &Backoff,
    started_at: Option<u64>,
) {
    let status = ProcessStatus {
        state,
        pid,
        restarts: backoff.restarts,
        last_exit: backoff.last_exit.clone(),
        started_at,
    };
    if procs.status(id).as_ref() == Some(&status) {
        return;
    }
    let path = procs.process_dir(id).join("status.json");
    if path.parent().is_some_and(Path::exists) {
        let json = serde_json::to_vec_pretty(&status).expect("status serializes");
        if let Err(err) = write_atomic(&path, &json) {
            eprintln!("{id}: {err}");
        }
    }
}

fn open_log(path: &Path) -> Result<File, SupervisorError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("open log", path))
}

/// Writes `data` to `path` through a temporary file and a rename, so readers never see half.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SupervisorError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into", path))
}

pub(crate) fn kill_pid(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets_after_a_good_run() {
        let mut b = Backoff::default();
        b.after_exit(Duration::ZERO);
        b.after_exit(Duration::ZERO);
        assert_eq!(b.delay, Duration::from_millis(400));
        for _ in 0..10 {
            b.after_exit(Duration::ZERO);
        }
        assert_eq!(b.delay, Duration::from_secs(5));
        b.after_exit(Duration::from_secs(11));
        assert_eq!(b.delay, Duration::from_millis(200));
        assert_eq!(b.restarts, 13);
    }

    #[test]
    fn registry_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let procs = Processes::new(dir.path());
        let spec = ProcessSpec {
            id: "east.etcd".into(),
            component: Component::Etcd,
            cluster: "east".into(),
            node: "east-1".into(),
            pod: None,
            netns: "cml-x-east-east-1".into(),
            cgroup: "/nonexistent".into(),
            program: "/usr/bin/etcd".into(),
            args: vec![],
            env: BTreeMap::new(),
        };
        procs.register(&spec).unwrap();
        let list = procs.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].spec, spec);
        assert!(list[0].status.is_none());
        procs.stop("east.etcd").unwrap();
        assert!(procs.list()[0].stop_requested);
        procs.start("east.etcd").unwrap();
        assert!(!procs.list()[0].stop_requested);
        assert!(matches!(
            procs.stop("nope"),
            Err(SupervisorError::UnknownProcess(_))
        ));
    }
}
