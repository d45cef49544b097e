//! The baselines: stunnel4 and HAProxy, each as a TLS-originating instance in the client
//! namespace and a TLS-terminating instance in the server namespace, with mutual TLS 1.3 and
//! the same certificates the tunnel uses. Each process is killed when its guard drops (and,
//! since it lives in a benchmark namespace, when that namespace is deleted).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clustermesh_tunnel::CredentialPaths;
use clustermesh_tunnel::testing::netns::NetNs;

/// The programs, found on the PATH (or in /usr/sbin, where Debian puts haproxy).
pub struct Tools {
    pub stunnel: PathBuf,
    pub haproxy: PathBuf,
}

impl Tools {
    /// Finds stunnel4 and haproxy; installs the missing Debian packages with apt-get when
    /// `install` is set and we are root, else fails naming them.
    pub fn find_or_install(install: bool) -> anyhow::Result<Self> {
        if let Some(tools) = Self::find() {
            return Ok(tools);
        }
        let missing: Vec<&str> = [
            (find_program(&["stunnel4", "stunnel"]).is_none(), "stunnel4"),
            (find_program(&["haproxy"]).is_none(), "haproxy"),
        ]
        .into_iter()
        .filter_map(|(missing, package)| missing.then_some(package))
        .collect();
        if !install {
            bail!(
                "missing Debian package(s) {}: install them with `apt-get install -y {}`",
                missing.join(", "),
                missing.join(" ")
            );
        }
        eprintln!("installing {} with apt-get", missing.join(" "));
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        let mut install_args = vec!["install", "-y", "-qq"];
        install_args.extend(&missing);
        // A stale package index is the usual reason for a failed install: update, try again.
        let installed = apt(&install_args) || (apt(&["update", "-qq"]) && apt(&install_args));
        if !installed {
            bail!(
                "`apt-get install -y {}` failed; install the package(s) and run again",
                missing.join(" ")
            );
        }
        Self::find()
            .with_context(|| format!("{} installed but not found on the PATH", missing.join(", ")))
    }

    fn find() -> Option<Self> {
        Some(Self {
            stunnel: find_program(&["stunnel4", "stunnel"])?,
            haproxy: find_program(&["haproxy"])?,
        })
    }

    /// `stunnel 5.68 ... / HAProxy version 2.6.12 ...`, for the result file.
    pub fn versions(&self) -> (String, String) {
        let first_line = |program: &Path, arg: &str, needle: &str| {
            Command::new(program)
                .arg(arg)
                .output()
                .map(|out| {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    text.lines()
                        .find(|line| line.contains(needle))
                        .unwrap_or("unknown")
                        .trim()
                        .to_owned()
                })
                .unwrap_or_else(|_| "unknown".to_owned())
        };
        (
            first_line(&self.stunnel, "-version", "stunnel "),
            first_line(&self.haproxy, "-v", "HAProxy version"),
        )
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').chain(["/usr/sbin", "/usr/bin", "/sbin"]);
    dirs.flat_map(|dir| names.iter().map(move |name| Path::new(dir).join(name)))
        .find(|candidate| candidate.is_file())
}

/// One side's TLS material: its own certificate and key, and the CA of the peer's cluster.
pub struct Side<'a> {
    pub own: &'a CredentialPaths,
    pub peer_ca: &'a Path,
}

/// A running proxy process; killed on drop.
pub struct Proxy {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proxy {
    fn spawn(
        netns: &NetNs,
        name: &str,
        program: &Path,
        args: &[&str],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = netns
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of its log if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                tail.join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// stunnel: `client = yes` in the client namespace (plain in, TLS out), a TLS server in the
/// server namespace (TLS in, plain out to the backend). Both verify the peer's chain.
#[expect(
    clippy::too_many_arguments,
    reason = "one place that wires a pair of processes"
)]
pub fn start_stunnel(
    tools: &Tools,
    dir: &Path,
    client_ns: &NetNs,
    server_ns: &NetNs,
    client: Side<'_>,
    server: Side<'_>,
    listen: SocketAddr,
    tls: SocketAddr,
    backend: SocketAddr,
) -> anyhow::Result<[Proxy; 2]> {
    let conf = |side: &Side<'_>, client_mode: bool, accept: SocketAddr, connect: SocketAddr| {
        format!(
            "foreground = yes\n\
             pid =\n\
             syslog = no\n\
             debug = 4\n\
             \n\
             [bench]\n\
             client = {}\n\
             accept = {accept}\n\
             connect = {connect}\n\
             cert = {}\n\
             key = {}\n\
             CAfile = {}\n\
             verifyChain = yes\n\
             {}\
             sslVersionMin = TLSv1.3\n",
            if client_mode { "yes" } else { "no" },
            side.own.cert.display(),
            side.own.key.display(),
            side.peer_ca.display(),
            if client_mode {
                ""
            } else {
                "requireCert = yes\n"
            },
        )
    };
    let client_conf = dir.join("stunnel-client.conf");
    let server_conf = dir.join("stunnel-server.conf");
    std::fs::write(&client_conf, conf(&client, true, listen, tls))?;
    std::fs::write(&server_conf, conf(&server, false, tls, backend))?;
    let server = Proxy::spawn(
        server_ns,
        "stunnel-server",
        &tools.stunnel,
        &[&server_conf.to_string_lossy()],
        dir,
    )?;
    let client = Proxy::spawn(
        client_ns,
        "stunnel-client",
        &tools.stunnel,
        &[&client_conf.to_string_lossy()],
        dir,
    )?;
    Ok([client, server])
}

/// HAProxy in TCP mode: in the client namespace a `server ... ssl` line originates mutual TLS,
/// in the server namespace a `bind ... ssl` line terminates it. `threads` per process.
#[expect(
    clippy::too_many_arguments,
    reason = "one place that wires a pair of processes"
)]
pub fn start_haproxy(
    tools: &Tools,
    dir: &Path,
    client_ns: &NetNs,
    server_ns: &NetNs,
    client: Side<'_>,
    server: Side<'_>,
    listen: SocketAddr,
    tls: SocketAddr,
    backend: SocketAddr,
    threads: usize,
) -> anyhow::Result<[Proxy; 2]> {
    // HAProxy wants the certificate and its key in one file.
    let combined = |side: &Side<'_>, name: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        let pem =
            std::fs::read_to_string(&side.own.cert)? + &std::fs::read_to_string(&side.own.key)?;
        std::fs::write(&path, pem)?;
        Ok(path)
    };
    let client_pem = combined(&client, "haproxy-client.pem")?;
    let server_pem = combined(&server, "haproxy-server.pem")?;
    let head = format!(
        "global\n    nbthread {threads}\n    maxconn 4000\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n"
    );
    let client_conf = dir.join("haproxy-client.cfg");
    let server_conf = dir.join("haproxy-server.cfg");
    std::fs::write(
        &client_conf,
        format!(
            "{head}listen bench\n    bind {listen}\n    server peer {tls} ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3\n",
            client_pem.display(),
            client.peer_ca.display()
        ),
    )?;
    std::fs::write(
        &server_conf,
        format!(
            "{head}listen bench\n    bind {tls} ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3\n    server backend {backend}\n",
            server_pem.display(),
            server.peer_ca.display()
        ),
    )?;
    let server = Proxy::spawn(
        server_ns,
        "haproxy-server",
        &tools.haproxy,
        &["-db", "-f", &server_conf.to_string_lossy()],
        dir,
    )?;
    let client = Proxy::spawn(
        client_ns,
        "haproxy-client",
        &tools.haproxy,
        &["-db", "-f", &client_conf.to_string_lossy()],
        dir,
    )?;
    Ok([client, server])
}

/// Waits until `probe` succeeds, failing early if a process of `proxies` died.
pub fn wait_ready(
    what: &str,
    proxies: &mut [Proxy],
    mut probe: impl FnMut() -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for proxy in proxies.iter_mut() {
            proxy.check_alive()?;
        }
        match probe() {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() > deadline => {
                bail!("{what} did not carry a probe within 15 s: {error}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
