//! A real etcd (Debian's `etcd-server` package) for tests: one member on free loopback ports, its
//! data in a temporary directory, optionally serving mTLS with certificates made on the spot.
//! It is killed when the `EtcdServer` is dropped, also when the test panics.

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs::{TestCa, TlsFiles};

const ETCD_BINARY: &str = "etcd";
// etcd 3.4 and 3.5 log this once a client listener serves (securely or not).
const READY_LINE: &str = "serving client traffic";

/// The certificates an mTLS etcd was started with.
pub struct EtcdTls {
    /// The CA that signed the server certificate and the client certificates.
    pub ca: TestCa,
    /// A client certificate for the `root` user, trusted by the server.
    pub client: TlsFiles,
}

pub struct EtcdServer {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTls>,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts a plain-text etcd on 127.0.0.1.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts an etcd that requires client certificates signed by its own test CA.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("clustermesh-etcd-")
            .tempdir()
            .expect("create a temp dir for etcd");
        let tls = tls.then(|| {
            let ca = TestCa::new("etcd", dir.path());
            ca.server("etcd-server", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
            let client = ca.client("etcd-client", "root");
            EtcdTls { ca, client }
        });
        let mut server = Self {
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            tls,
            child: None,
        };
        server.spawn();
        server
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// A directory for the test's own files; removed with the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills etcd with SIGKILL, as a crash would, and waits for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory, and waits until it serves.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd log");
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);

        let mut cmd = Command::new(ETCD_BINARY);
        cmd.arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        if let Some(tls) = &self.tls {
            let dir = self.dir.path();
            cmd.arg(format!(
                "--cert-file={}",
                dir.join("etcd-server.pem").display()
            ))
            .arg(format!(
                "--key-file={}",
                dir.join("etcd-server-key.pem").display()
            ))
            .arg(format!("--trusted-ca-file={}", tls.ca.ca_path().display()))
            .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start `{ETCD_BINARY}` ({e}); install Debian's etcd-server package \
                 (`apt-get install -y etcd-server`) or run ./scripts/test.sh, which does"
            )
        });
        self.child = Some(child);
        self.wait_ready(log_start);
    }

    fn wait_ready(&mut self, log_start: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log_since(log_start);
            if log.contains(READY_LINE) {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("etcd exited with {status} before it was ready; its log:\n{log}");
            }
            if Instant::now() > deadline {
                panic!("etcd was not ready after 30 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        text.get(offset as usize..).unwrap_or_default().to_owned()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A port that was free a moment ago. The kernel does not hand the same ephemeral port out again
/// right away, so two servers started side by side get different ports.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}
