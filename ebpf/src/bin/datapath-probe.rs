//! Test helper for the datapath's end-to-end tests (`tests/datapath.rs`); not for production.
//!
//! The socket programs act on processes in the cgroup they are attached to, and cgroup
//! membership is per process, so the tests run their clients as this separate process:
//!
//! ```text
//! datapath-probe [--netns FILE] [--cgroup DIR] COMMAND ...
//!   tcp-connect ADDR COUNT     one line per connection: "<getpeername> <what the server sent>"
//!   udp-sendto ADDR            "<source of the reply> <reply>"  (unconnected socket)
//!   udp-connected ADDR         "<source of the reply> <reply> <getpeername>"
//!   tcp-loop ADDR MILLIS       connects until MILLIS elapse: "ok=N failed=M", fails if M > 0
//!   loader PIN_DIR CGROUP VIP BACKEND...
//!                              loads the datapath, attaches it to CGROUP, programs one TCP
//!                              service, prints "ready services_found=N", then sleeps
//! ```
//!
//! `--netns` and `--cgroup` are applied first, to the whole (still single-threaded) process.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clustermesh_ebpf::{Datapath, DatapathConfig, Frontend, Protocol, Service, SessionAffinity};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    while args.first().is_some_and(|arg| arg.starts_with("--")) {
        let flag = args.remove(0);
        anyhow::ensure!(!args.is_empty(), "{flag} needs a value");
        let value = args.remove(0);
        match flag.as_str() {
            "--netns" => {
                let netns = File::open(&value).with_context(|| format!("opening {value}"))?;
                nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering network namespace {value}"))?;
            }
            // Writing 0 to cgroup.procs moves the writing process.
            "--cgroup" => std::fs::write(format!("{value}/cgroup.procs"), "0")
                .with_context(|| format!("joining cgroup {value}"))?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    let arg = |index: usize| -> anyhow::Result<&str> {
        args.get(index)
            .map(String::as_str)
            .with_context(|| format!("missing argument {index}"))
    };
    let addr = |index: usize| -> anyhow::Result<SocketAddr> {
        arg(index)?.parse().context("not a socket address")
    };

    match arg(0)? {
        "tcp-connect" => {
            let target = addr(1)?;
            let count: usize = arg(2)?.parse()?;
            let mut out = std::io::stdout().lock();
            for _ in 0..count {
                let (peer, reply) = tcp_exchange(target)?;
                writeln!(out, "{peer} {reply}")?;
            }
        }
        "udp-sendto" => {
            let target = addr(1)?;
            let socket = UdpSocket::bind(unspecified_like(target))?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            socket.send_to(b"ping", target)?;
            let mut buf = [0u8; 256];
            let (len, source) = socket
                .recv_from(&mut buf)
                .context("waiting for the reply")?;
            println!("{source} {}", String::from_utf8_lossy(&buf[..len]));
        }
        "udp-connected" => {
            let target = addr(1)?;
            let socket = UdpSocket::bind(unspecified_like(target))?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            socket.connect(target)?;
            socket.send(b"ping")?;
            let mut buf = [0u8; 256];
            let (len, source) = socket
                .recv_from(&mut buf)
                .context("waiting for the reply")?;
            let peer = socket.peer_addr()?;
            println!("{source} {} {peer}", String::from_utf8_lossy(&buf[..len]));
        }
        "tcp-loop" => {
            let target = addr(1)?;
            let deadline = Instant::now() + Duration::from_millis(arg(2)?.parse()?);
            let (mut ok, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline {
                match tcp_exchange(target) {
                    Ok(_) => ok += 1,
                    Err(error) => {
                        failed += 1;
                        eprintln!("connection {} failed: {error:#}", ok + failed);
                    }
                }
            }
            println!("ok={ok} failed={failed}");
            if failed > 0 {
                std::process::exit(1);
            }
        }
        "loader" => {
            let config = DatapathConfig {
                pin_dir: PathBuf::from(arg(1)?),
                ..DatapathConfig::default()
            };
            let mut datapath = Datapath::load(&config)?;
            let services_found = datapath.services()?.len();
            datapath.attach_cgroup(arg(2)?.as_ref())?;
            let backends = (4..args.len()).map(addr).collect::<Result<Vec<_>, _>>()?;
            datapath.upsert_service(&Service {
                frontend: Frontend {
                    addr: addr(3)?,
                    protocol: Protocol::Tcp,
                },
                backends,
                affinity: SessionAffinity::None,
            })?;
            println!("ready services_found={services_found}");
            std::io::stdout().flush()?;
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        other => bail!("unknown command {other}"),
    }
    Ok(())
}

/// Connects, reads everything the server sends, and returns (getpeername, what it sent).
fn tcp_exchange(target: SocketAddr) -> anyhow::Result<(SocketAddr, String)> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = stream.peer_addr()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok((peer, reply.trim().to_owned()))
}

fn unspecified_like(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("valid"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("valid"),
    }
}
