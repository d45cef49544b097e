//! The built-in echo workload: a server that answers every TCP connection and every UDP
//! datagram with one line naming where it runs, e.g.
//! `cluster=east node=east-1 pod=default/echo-0`.
//!
//! TCP: the line is sent as soon as a connection is accepted, then the connection is closed
//! (so `nc <ip> 8080` or a plain `read_to_string` gets it). UDP: each datagram is answered
//! with the line. Run it with `clustermesh lab echo-server --cluster … --node … --pod …`.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// The default port of the echo workload (TCP and UDP).
pub const DEFAULT_PORT: u16 = 8080;

/// What can go wrong with the echo server.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("cannot listen on {addr} ({proto}): {source} (is another server on that port?)")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Where an echo server runs; it answers with [`Identity::line`].
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Identity {
    /// Cluster the server runs in.
    #[arg(long)]
    pub cluster: String,
    /// Node the server runs on.
    #[arg(long)]
    pub node: String,
    /// Pod as `<namespace>/<name>`.
    #[arg(long)]
    pub pod: String,
}

impl Identity {
    /// The answer, without the trailing newline.
    pub fn line(&self) -> String {
        format!(
            "cluster={} node={} pod={}",
            self.cluster, self.node, self.pod
        )
    }

    /// Parses a line written by [`Identity::line`].
    pub fn parse(line: &str) -> Option<Self> {
        let mut cluster = None;
        let mut node = None;
        let mut pod = None;
        for field in line.trim().split(' ') {
            let (key, value) = field.split_once('=')?;
            match key {
                "cluster" => cluster = Some(value.to_owned()),
                "node" => node = Some(value.to_owned()),
                "pod" => pod = Some(value.to_owned()),
                _ => {}
            }
        }
        Some(Identity {
            cluster: cluster?,
            node: node?,
            pod: pod?,
        })
    }
}

/// Arguments of `echo-server`.
#[derive(Debug, Clone, clap::Args)]
pub struct EchoServerArgs {
    #[command(flatten)]
    pub identity: Identity,
    /// TCP and UDP port to listen on (all addresses of the pod).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
}

/// Serves forever on `0.0.0.0:<port>` (TCP and UDP).
pub fn serve(args: &EchoServerArgs) -> Result<(), EchoError> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port));
    let tcp = TcpListener::bind(addr).map_err(|source| EchoError::Bind {
        addr,
        proto: "tcp",
        source,
    })?;
    let udp = UdpSocket::bind(addr).map_err(|source| EchoError::Bind {
        addr,
        proto: "udp",
        source,
    })?;
    let line = format!("{}\n", args.identity.line());
    eprintln!(
        "echo server listening on {addr} (tcp, udp): {}",
        line.trim()
    );
    let udp_line = line.clone();
    std::thread::spawn(move || serve_udp(&udp, udp_line.as_bytes()));
    for conn in tcp.incoming() {
        match conn {
            Ok(conn) => {
                let line = line.clone();
                std::thread::spawn(move || answer_tcp(conn, line.as_bytes()));
            }
            Err(err) => eprintln!("accept: {err}"),
        }
    }
    Ok(())
}

fn answer_tcp(mut conn: TcpStream, line: &[u8]) {
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = conn.write_all(line);
}

fn serve_udp(sock: &UdpSocket, line: &[u8]) {
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let _ = sock.send_to(line, peer);
            }
            Err(err) => eprintln!("udp recv: {err}"),
        }
    }
}

/// Asks an echo server over TCP who it is (connect, read the line).
pub fn ask_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    use std::io::Read;
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out.trim_end().to_owned())
}

/// Asks an echo server over UDP who it is (one datagram each way).
pub fn ask_udp(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(b"who\n", addr)?;
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_line_round_trips() {
        let id = Identity {
            cluster: "east".into(),
            node: "east-1".into(),
            pod: "default/echo-0".into(),
        };
        assert_eq!(id.line(), "cluster=east node=east-1 pod=default/echo-0");
        assert_eq!(Identity::parse(&id.line()), Some(id));
        assert_eq!(Identity::parse("hello"), None);
    }

    #[test]
    fn serves_tcp_and_udp_on_loopback() {
        // Find a free port, then serve on it (a tiny race is acceptable in a unit test).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let args = EchoServerArgs {
            identity: Identity {
                cluster: "c".into(),
                node: "n".into(),
                pod: "ns/p".into(),
            },
            port,
        };
        std::thread::spawn(move || serve(&args));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut answer = Err(io::Error::other("not tried"));
        for _ in 0..50 {
            answer = ask_tcp(addr, Duration::from_secs(1));
            if answer.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(answer.unwrap(), "cluster=c node=n pod=ns/p");
        assert_eq!(
            ask_udp(addr, Duration::from_secs(2)).unwrap(),
            "cluster=c node=n pod=ns/p"
        );
    }
}
