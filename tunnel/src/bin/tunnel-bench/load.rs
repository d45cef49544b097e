//! The two ends every case shares: the backend in the server namespace (async) and the load
//! generator in the client namespace (blocking threads, so a measurement is one thread doing
//! plain system calls, the same for every case).
//!
//! The backend reads one mode byte per connection: `S` sinks everything until the client
//! half-closes, then answers the byte count (8 bytes, big endian); `E` echoes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of one ping and of each write of the sink case.
pub const PING: usize = 64;
const WRITE: usize = 256 * 1024;

pub async fn serve_backend(listener: tokio::net::TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = backend_connection(tcp).await;
        });
    }
}

async fn backend_connection(mut tcp: tokio::net::TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    tcp.read_exact(&mut mode).await?;
    match mode[0] {
        b'S' => {
            let mut buf = vec![0u8; WRITE];
            let mut total = 0u64;
            loop {
                let n = tcp.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            tcp.write_all(&total.to_be_bytes()).await?;
        }
        b'E' => {
            let (mut read, mut write) = tcp.split();
            tokio::io::copy(&mut read, &mut write).await?;
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown mode byte {other}"),
            ));
        }
    }
    tcp.shutdown().await
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(tcp)
}

/// One echo through `addr`: proves the path works end to end.
pub fn probe(addr: SocketAddr) -> io::Result<()> {
    let mut tcp = connect(addr)?;
    tcp.write_all(b"Eprobe")?;
    let mut reply = [0u8; 5];
    tcp.read_exact(&mut reply)?;
    if &reply != b"probe" {
        return Err(io::Error::other(format!("probe echoed {reply:?}")));
    }
    Ok(())
}

/// Sends `bytes` to the sink and waits for its count.
fn sink(addr: SocketAddr, bytes: u64) -> io::Result<()> {
    let buf = vec![0x5au8; WRITE];
    let mut tcp = connect(addr)?;
    tcp.write_all(b"S")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(WRITE as u64) as usize;
        tcp.write_all(&buf[..n])?;
        left -= n as u64;
    }
    tcp.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    tcp.read_exact(&mut count)?;
    let count = u64::from_be_bytes(count);
    if count != bytes {
        return Err(io::Error::other(format!(
            "the backend received {count} bytes of {bytes}"
        )));
    }
    Ok(())
}

/// `bytes` in total over `streams` parallel connections, started together; returns bytes/s.
/// Call on a thread inside the client namespace (the threads it spawns stay there).
pub fn throughput(addr: SocketAddr, bytes: u64, streams: usize) -> io::Result<f64> {
    let per_stream = bytes / streams as u64;
    let barrier = Arc::new(Barrier::new(streams + 1));
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                sink(addr, per_stream)
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for worker in workers {
        worker.join().expect("load thread panicked")?;
    }
    Ok((per_stream * streams as u64) as f64 / started.elapsed().as_secs_f64())
}

/// Round trips of [`PING`] bytes on one established connection, after `warmup` unmeasured ones.
pub fn pings(addr: SocketAddr, count: usize, warmup: usize) -> io::Result<Vec<Duration>> {
    let mut tcp = connect(addr)?;
    tcp.write_all(b"E")?;
    let out = [0x42u8; PING];
    let mut back = [0u8; PING];
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let started = Instant::now();
        tcp.write_all(&out)?;
        tcp.read_exact(&mut back)?;
        if i >= warmup {
            samples.push(started.elapsed());
        }
    }
    tcp.shutdown(Shutdown::Write)?;
    Ok(samples)
}

/// New connections, each: connect, send [`PING`] bytes, read them back; then close.
pub fn connects(addr: SocketAddr, count: usize) -> io::Result<Vec<Duration>> {
    let mut request = vec![b'E'];
    request.extend_from_slice(&[0x42u8; PING]);
    let mut back = [0u8; PING];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let mut tcp = connect(addr)?;
        tcp.write_all(&request)?;
        tcp.read_exact(&mut back)?;
        samples.push(started.elapsed());
        tcp.shutdown(Shutdown::Write)?;
    }
    Ok(samples)
}

/// A plain TCP relay (no TLS, no framing): what any user-space proxy pays for its two extra
/// TCP hops, the ceiling for the TLS cases.
pub async fn serve_relay(listener: tokio::net::TcpListener, to: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional_with_sizes(
                &mut inbound,
                &mut outbound,
                64 * 1024,
                64 * 1024,
            )
            .await;
        });
    }
}
