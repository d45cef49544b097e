//! The agent's DNS server: pods resolve global services by their clusterset name
//! (`<svc>.<ns>.svc.clusterset.local`), also when a service exists only in other clusters.
//!
//! - `zone`: the pure part — the view built from the agent's merged view, and the answer to one
//!   question ([`zone::resolve`]).
//! - this module: the thin network part — hickory-server on UDP and TCP, forwarding of every
//!   other name to the configured upstream (in Kubernetes: kube-dns), and metrics.
//!
//! The control loop replaces the view after every programming pass ([`DnsFeed::update`]), so
//! answers change as soon as the merged view does. Two ways to deploy it: pods use it as their
//! only resolver (`dnsPolicy: None`, `nameservers: [<node-ip>]`; other names are forwarded to
//! `--dns-upstream`), or kube-dns/CoreDNS forwards the zone to it
//! (`clusterset.local:53 { forward . <node-ip> }`), in which case no upstream is needed and
//! other names are refused.

pub mod zone;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use zone::{DnsView, Resolution, Zone, ZoneAnswer};

/// How long a forwarded question may take before the client gets SERVFAIL.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The DNS part of the agent's configuration.
#[derive(Debug, Clone, Serialize)]
pub struct DnsSettings {
    /// UDP and TCP.
    pub listen: SocketAddr,
    /// Where names outside the zone go; `None`: they are refused.
    pub upstream: Option<SocketAddr>,
    /// TTL of every record and of negative answers.
    pub ttl_seconds: u32,
    pub zone: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("--dns-zone {zone:?} is not a domain name: {reason}")]
    Zone { zone: String, reason: String },
    #[error("cannot listen on --dns-listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// `zone` (answered from the view) or `forward`.
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RcodeLabels {
    pub path: String,
    pub rcode: String,
}

/// The DNS server's metrics.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    pub queries: Family<PathLabels, Counter>,
    pub responses: Family<RcodeLabels, Counter>,
    pub forward_duration: Histogram,
    pub forward_errors: Counter,
}

impl DnsMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            queries: Family::default(),
            responses: Family::default(),
            forward_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
            ]),
            forward_errors: Counter::default(),
        };
        let dns = registry.sub_registry_with_prefix("dns");
        dns.register(
            "queries",
            "DNS questions received, by how they were answered (zone or forward)",
            m.queries.clone(),
        );
        dns.register(
            "responses",
            "DNS responses sent, by path and response code",
            m.responses.clone(),
        );
        dns.register(
            "forward_duration_seconds",
            "round trip to the upstream resolver of a forwarded question",
            m.forward_duration.clone(),
        );
        dns.register(
            "forward_errors",
            "forwarded questions that failed (timeout, upstream unreachable, bad answer)",
            m.forward_errors.clone(),
        );
        m
    }

    fn answered(&self, path: &str, rcode: ResponseCode) {
        self.responses
            .get_or_create(&RcodeLabels {
                path: path.to_owned(),
                rcode: rcode.to_str().to_ascii_lowercase(),
            })
            .inc();
    }
}

/// Where the control loop publishes the zone's view.
#[derive(Clone, Debug)]
pub struct DnsFeed {
    tx: Arc<watch::Sender<Arc<DnsView>>>,
}

impl DnsFeed {
    /// Replaces the view if it changed.
    pub fn update(&self, view: DnsView) {
        self.tx.send_if_modified(|current| {
            if **current == view {
                return false;
            }
            *current = Arc::new(view);
            true
        });
    }
}

/// The running server; dropping it stops it.
pub struct DnsServer {
    server: Server<Handler>,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `settings.listen` and serves until dropped.
    pub async fn start(
        settings: &DnsSettings,
        registry: &mut Registry,
    ) -> Result<(DnsServer, DnsFeed), DnsError> {
        let zone = Zone::new(&settings.zone, settings.ttl_seconds).map_err(|e| DnsError::Zone {
            zone: settings.zone.clone(),
            reason: e.to_string(),
        })?;
        let bind = |source| DnsError::Bind {
            addr: settings.listen,
            source,
        };
        let udp = tokio::net::UdpSocket::bind(settings.listen)
            .await
            .map_err(bind)?;
        let local_addr = udp.local_addr().map_err(bind)?;
        // The same port for TCP (matters when port 0 was asked).
        let tcp = tokio::net::TcpListener::bind(local_addr)
            .await
            .map_err(bind)?;
        let (tx, view) = watch::channel(Arc::new(DnsView::default()));
        let handler = Handler {
            zone,
            view,
            upstream: settings.upstream,
            metrics: DnsMetrics::new(registry),
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, 64);
        info!(listen = %local_addr, upstream = ?settings.upstream, zone = %settings.zone, "DNS server listening");
        Ok((
            DnsServer { server, local_addr },
            DnsFeed { tx: Arc::new(tx) },
        ))
    }

    /// Where it listens (the bound port, if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for questions in flight.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

struct Handler {
    zone: Zone,
    view: watch::Receiver<Arc<DnsView>>,
    upstream: Option<SocketAddr>,
    metrics: DnsMetrics,
}

/// The response EDNS for a request that carried one.
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|req| {
        let mut edns = Edns::new();
        edns.set_max_payload(req.max_payload().max(512));
        edns
    })
}

async fn send<R: ResponseHandler>(
    request: &Request,
    mut handle: R,
    metadata: Metadata,
    edns: Option<&Edns>,
    answer: &ZoneAnswer,
) -> ResponseInfo {
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(edns) = edns {
        builder.edns(edns);
    }
    let response = builder.build(
        metadata,
        answer.answers.iter(),
        answer.authorities.iter(),
        std::iter::empty::<&Record>(),
        answer.additionals.iter(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            debug!(error = %e, "cannot send a DNS response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        let edns = response_edns(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let refuse = |code: ResponseCode| ZoneAnswer {
            rcode: code,
            ..ZoneAnswer::default()
        };
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            metadata.response_code = ResponseCode::NotImp;
            self.metrics.answered("zone", ResponseCode::NotImp);
            return send(
                request,
                handle,
                metadata,
                edns.as_ref(),
                &refuse(ResponseCode::NotImp),
            )
            .await;
        }
        let Ok(info) = request.request_info() else {
            metadata.response_code = ResponseCode::FormErr;
            self.metrics.answered("zone", ResponseCode::FormErr);
            return send(
                request,
                handle,
                metadata,
                edns.as_ref(),
                &refuse(ResponseCode::FormErr),
            )
            .await;
        };
        let query = info.query;
        let resolution = if query.query_class() == DNSClass::IN {
            let view = self.view.borrow().clone();
            zone::resolve(&self.zone, &view, &query.name().into(), query.query_type())
        } else {
            Resolution::Forward
        };
        match resolution {
            Resolution::Answer(answer) => {
                self.metrics
                    .queries
                    .get_or_create(&PathLabels {
                        path: "zone".into(),
                    })
                    .inc();
                metadata.authoritative = answer.rcode != ResponseCode::ServFail;
                metadata.response_code = answer.rcode;
                self.metrics.answered("zone", answer.rcode);
                send(request, handle, metadata, edns.as_ref(), &answer).await
            }
            Resolution::Forward => {
                self.metrics
                    .queries
                    .get_or_create(&PathLabels {
                        path: "forward".into(),
                    })
                    .inc();
                let Some(upstream) = self.upstream else {
                    metadata.response_code = ResponseCode::Refused;
                    self.metrics.answered("forward", ResponseCode::Refused);
                    return send(
                        request,
                        handle,
                        metadata,
                        edns.as_ref(),
                        &refuse(ResponseCode::Refused),
                    )
                    .await;
                };
                let started = Instant::now();
                let tcp = request.protocol() == hickory_server::net::xfer::Protocol::Tcp;
                match forward(upstream, request.as_slice(), request.metadata.id, tcp).await {
                    Ok(reply) => {
                        self.metrics
                            .forward_duration
                            .observe(started.elapsed().as_secs_f64());
                        metadata.response_code = reply.metadata.response_code;
                        metadata.authoritative = reply.metadata.authoritative;
                        metadata.recursion_available = reply.metadata.recursion_available;
                        metadata.truncation = reply.metadata.truncation;
                        self.metrics
                            .answered("forward", reply.metadata.response_code);
                        let answer = ZoneAnswer {
                            rcode: reply.metadata.response_code,
                            answers: reply.answers,
                            authorities: reply.authorities,
                            additionals: reply.additionals,
                        };
                        send(request, handle, metadata, edns.as_ref(), &answer).await
                    }
                    Err(e) => {
                        self.metrics.forward_errors.inc();
                        warn!(%upstream, error = %e, "forwarding a DNS question failed");
                        metadata.response_code = ResponseCode::ServFail;
                        self.metrics.answered("forward", ResponseCode::ServFail);
                        send(
                            request,
                            handle,
                            metadata,
                            edns.as_ref(),
                            &refuse(ResponseCode::ServFail),
                        )
                        .await
                    }
                }
            }
        }
    }
}

/// Asks the upstream the client's question as is (UDP from a fresh ephemeral port, so replies
/// cannot be spoofed by guessing it; TCP when the client used TCP or the reply was truncated).
async fn forward(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    tcp: bool,
) -> std::io::Result<Message> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let exchange = async {
        if !tcp {
            let bind: SocketAddr = if upstream.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = tokio::net::UdpSocket::bind(bind).await?;
            socket.connect(upstream).await?;
            socket.send(query).await?;
            let mut buf = vec![0u8; 65535];
            loop {
                let n = socket.recv(&mut buf).await?;
                let Ok(reply) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if reply.metadata.id != id {
                    continue;
                }
                if !reply.metadata.truncation {
                    return Ok(reply);
                }
                break;
            }
        }
        let mut stream = tokio::net::TcpStream::connect(upstream).await?;
        let len = u16::try_from(query.len()).map_err(|_| bad("query too long".into()))?;
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(query).await?;
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        let reply = Message::from_vec(&buf).map_err(|e| bad(e.to_string()))?;
        if reply.metadata.id != id {
            return Err(bad("the upstream answered another question".into()));
        }
        Ok(reply)
    };
    tokio::time::timeout(FORWARD_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from the upstream in time",
            )
        })?
}
