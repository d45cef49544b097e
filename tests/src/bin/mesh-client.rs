//! `mesh-client`: the client the end-to-end tests run inside lab pods (the socket load
//! balancer only sees processes in a node's cgroup, so the client must be a process there).
//!
//! - `ask ADDR COUNT`: COUNT connections one after another; a line per connection:
//!   `ok <answer>` or `err <error>`.
//! - `loop ADDR --stop-file F`: connects back to back until F exists; a line per connection:
//!   `<unix millis> ok <answer>` or `<unix millis> err <error>`.
//! - `tunnel-connect`: speaks the tunnel protocol itself (mTLS + HTTP/2 CONNECT) to a node's
//!   tunnel listener, as an attacker holding some node's certificate would; prints
//!   `status <code> <refusal>` or `handshake-error <error>`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use clustermesh_tunnel::framing::{ConnectRequest, REFUSED};
use clustermesh_tunnel::tls::{NodeCredentials, TlsConfigs};
use clustermesh_tunnel::{CredentialPaths, NodeIdentity, TrustBundle};

#[derive(Parser)]
#[command(about = "the end-to-end tests' client, run inside lab pods")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// COUNT connections one after another, printing what answered.
    Ask {
        addr: SocketAddr,
        count: u32,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Connections back to back until the stop file exists.
    Loop {
        addr: SocketAddr,
        #[arg(long)]
        stop_file: PathBuf,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Open a tunnel stream to TARGET through the tunnel listener PEER, with a node's
    /// credentials.
    TunnelConnect {
        #[arg(long)]
        peer: SocketAddr,
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// The CA of the credentials' own cluster.
        #[arg(long)]
        ca: PathBuf,
        /// The peer cluster's CA, to verify the listener.
        #[arg(long)]
        peer_ca: PathBuf,
        #[arg(long)]
        peer_cluster: String,
        #[arg(long)]
        trust_domain: String,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        node: String,
    },
}

fn ask(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    let line = out.trim_end().to_owned();
    if line.is_empty() {
        return Err(std::io::Error::other("closed without an answer"));
    }
    Ok(line)
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut out = std::io::stdout().lock();
    match args.command {
        Command::Ask {
            addr,
            count,
            timeout_ms,
        } => {
            for _ in 0..count {
                let line = match ask(addr, Duration::from_millis(timeout_ms)) {
                    Ok(answer) => format!("ok {answer}"),
                    Err(e) => format!("err {e}"),
                };
                let _ = writeln!(out, "{line}");
            }
        }
        Command::Loop {
            addr,
            stop_file,
            timeout_ms,
        } => {
            while !stop_file.exists() {
                let line = match ask(addr, Duration::from_millis(timeout_ms)) {
                    Ok(answer) => format!("{} ok {answer}", unix_millis()),
                    Err(e) => format!("{} err {e}", unix_millis()),
                };
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
        Command::TunnelConnect {
            peer,
            target,
            cert,
            key,
            ca,
            peer_ca,
            peer_cluster,
            trust_domain,
            cluster,
            node,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let line = runtime.block_on(tunnel_connect(TunnelConnect {
                peer,
                target,
                credentials: CredentialPaths { cert, key, ca },
                peer_ca,
                peer_cluster,
                identity: NodeIdentity::new(&trust_domain, &cluster, &node),
            }));
            let _ = writeln!(out, "{line}");
        }
    }
    ExitCode::SUCCESS
}

struct TunnelConnect {
    peer: SocketAddr,
    target: SocketAddr,
    credentials: CredentialPaths,
    peer_ca: PathBuf,
    peer_cluster: String,
    identity: NodeIdentity,
}

async fn tunnel_connect(t: TunnelConnect) -> String {
    let credentials = match NodeCredentials::load(&t.credentials, &t.identity) {
        Ok(c) => c,
        Err(e) => return format!("credentials-error {e}"),
    };
    let bundle = match TrustBundle::from_pem_file(&t.peer_ca) {
        Ok(b) => b,
        Err(e) => return format!("credentials-error {e}"),
    };
    let connected = [(t.peer_cluster.clone(), bundle)].into_iter().collect();
    let configs = match TlsConfigs::build(&credentials, &connected) {
        Ok(c) => c,
        Err(e) => return format!("credentials-error {e}"),
    };
    let tcp = match tokio::net::TcpStream::connect(t.peer).await {
        Ok(tcp) => tcp,
        Err(e) => return format!("connect-error {e}"),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&configs.client));
    let server_name = rustls::pki_types::ServerName::IpAddress(t.peer.ip().into());
    let tls = match connector.connect(server_name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return format!("handshake-error {e}"),
    };
    let (mut send, connection) = match h2::client::handshake(tls).await {
        Ok(pair) => pair,
        // A server that refused our certificate after the TLS 1.3 handshake completed on our
        // side shows up here, when the first bytes are exchanged.
        Err(e) => return format!("handshake-error {e}"),
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = ConnectRequest {
        target: t.target,
        source_cluster: t.identity.cluster.clone(),
        source_node: t.identity.node.clone(),
        source_identity: 0,
    }
    .to_http();
    let response = match send.send_request(request, false) {
        Ok((response, _stream)) => response.await,
        Err(e) => return format!("handshake-error {e}"),
    };
    match response {
        Ok(response) => {
            let refusal = response
                .headers()
                .get(REFUSED)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            format!("status {} {refusal}", response.status().as_u16())
        }
        Err(e) => format!("handshake-error {e}"),
    }
}
