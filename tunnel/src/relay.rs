//! Moving bytes between a TCP connection and an HTTP/2 stream, both ways, with backpressure,
//! half-close and an idle timeout.
//!
//! Backpressure: data read from TCP is sent only as HTTP/2 send capacity is granted, and data
//! received from the stream is acknowledged (flow-control capacity released) only once written
//! to TCP, so nothing buffers more than the flow-control windows allow.

use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

/// Read size from TCP; one read becomes at most one DATA frame's worth of sends.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("TCP side: {0}")]
    Io(#[from] std::io::Error),
    #[error("tunnel stream: {0}")]
    H2(#[from] h2::Error),
    #[error("the other side reset the stream ({0:?})")]
    Reset(h2::Reason),
    #[error("the peer refused the stream: {0}")]
    Refused(String),
    #[error("no bytes in either direction for {0:?}")]
    Idle(Duration),
    #[error("the tunnel stopped (drain deadline reached)")]
    Stopped,
}

/// When bytes last moved, for the idle timeout.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            if last.elapsed() >= limit {
                return;
            }
            tokio::time::sleep_until(last + limit).await;
        }
    }
}

/// Counts bytes per relay and both directions.
pub(crate) struct Counters<'a> {
    /// Bytes read from TCP and sent into the stream.
    pub to_stream: &'a Counter,
    /// Bytes received from the stream and written to TCP.
    pub to_tcp: &'a Counter,
}

/// Relays until both directions have ended. `recv` resolves to the stream's receiving half
/// (on the sending side that is when the peer accepts; then upload starts before the answer,
/// saving a round trip). `stopped` ends the relay at once.
pub(crate) async fn relay(
    mut tcp: TcpStream,
    send: SendStream<Bytes>,
    recv: impl Future<Output = Result<RecvStream, RelayError>>,
    idle: Duration,
    counters: Counters<'_>,
    stopped: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let activity = Activity::new();
    let (read, write) = tcp.split();
    let up = tcp_to_stream(read, send, &activity, counters.to_stream);
    let down = async {
        let recv = recv.await?;
        stream_to_tcp(recv, write, &activity, counters.to_tcp).await
    };
    tokio::select! {
        result = async { tokio::try_join!(up, down) } => result.map(|_| ()),
        () = activity.idle_for(idle) => Err(RelayError::Idle(idle)),
        () = stopped => Err(RelayError::Stopped),
    }
}

async fn tcp_to_stream(
    mut tcp: ReadHalf<'_>,
    mut send: SendStream<Bytes>,
    activity: &Activity,
    counter: &Counter,
) -> Result<(), RelayError> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        if buf.capacity() < CHUNK / 4 {
            buf.reserve(CHUNK);
        }
        // Watch for a reset while waiting for the client, or a dead backend would go
        // unnoticed until the client writes again.
        let n = tokio::select! {
            n = tcp.read_buf(&mut buf) => n?,
            reason = poll_fn(|cx| send.poll_reset(cx)) => return Err(RelayError::Reset(reason?)),
        };
        if n == 0 {
            // Half-close: the client is done sending, the stream stays open for the reply.
            send.send_data(Bytes::new(), true)?;
            return Ok(());
        }
        activity.touch();
        counter.inc_by(n as u64);
        let mut data = buf.split().freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(granted) => granted?,
                None => {
                    let reason = poll_fn(|cx| send.poll_reset(cx)).await?;
                    return Err(RelayError::Reset(reason));
                }
            };
            if granted == 0 {
                continue;
            }
            send.send_data(data.split_to(granted.min(data.len())), false)?;
        }
    }
}

async fn stream_to_tcp(
    mut recv: RecvStream,
    mut tcp: WriteHalf<'_>,
    activity: &Activity,
    counter: &Counter,
) -> Result<(), RelayError> {
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let n = chunk.len();
        tcp.write_all(&chunk).await?;
        // Acknowledge only what reached the socket: this is the backpressure towards the peer.
        recv.flow_control().release_capacity(n)?;
        activity.touch();
        counter.inc_by(n as u64);
    }
    // End of stream from the peer: pass the half-close on to our TCP side.
    tcp.shutdown().await?;
    Ok(())
}
