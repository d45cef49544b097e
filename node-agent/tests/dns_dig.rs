//! The agent's DNS server on loopback, asked with `dig` (Debian's dnsutils) as a client would:
//! records of every kind, negative answers, TCP, forwarding to an upstream (a second instance
//! of the same server, answering `cluster.local`), refusal without one, and a view change.
//! Needs no root; without `dig` it skips, or fails when CI=true.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use clustermesh_model::Protocol;
use clustermesh_node_agent::dns::zone::{DnsEndpoint, DnsService, DnsView, NamedPort};
use clustermesh_node_agent::dns::{DnsFeed, DnsServer, DnsSettings};
use prometheus_client::registry::Registry;

fn have_dig() -> bool {
    if Command::new("dig").arg("-v").output().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("dig (dnsutils) is not installed and CI=true: this test must not be skipped");
    }
    eprintln!("skipped: dig (dnsutils) is not installed");
    false
}

/// What dig printed: the status, and the answer, authority and additional sections.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: String,
    answer: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
}

async fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let mut argv = vec![
        format!("@{}", server.ip()),
        "-p".to_owned(),
        server.port().to_string(),
        "+tries=1".to_owned(),
        "+time=3".to_owned(),
    ];
    argv.extend(args.iter().map(|s| s.to_string()));
    let output = tokio::task::spawn_blocking(move || Command::new("dig").args(&argv).output())
        .await
        .unwrap()
        .expect("running dig");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut dig = Dig::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            dig.status = rest.split(',').next().unwrap_or_default().to_owned();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            dig.flags = rest.split(';').next().unwrap_or_default().to_owned();
        }
        if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = "additional";
        } else if line.is_empty() || line.starts_with(';') {
            if line.is_empty() {
                section = "";
            }
        } else {
            // "name ttl class type rdata", whitespace-normalized.
            let norm = line.split_whitespace().collect::<Vec<_>>().join(" ");
            match section {
                "answer" => dig.answer.push(norm),
                "authority" => dig.authority.push(norm),
                "additional" => dig.additional.push(norm),
                _ => {}
            }
        }
    }
    assert!(!dig.status.is_empty(), "no status from dig: {text}");
    dig
}

fn port(name: &str, protocol: Protocol, port: u16) -> NamedPort {
    NamedPort {
        name: name.into(),
        protocol,
        port,
    }
}

fn view() -> DnsView {
    let mut services = BTreeMap::new();
    services.insert(
        ("demo".to_owned(), "echo".to_owned()),
        DnsService {
            headless: false,
            vips: vec![
                "10.96.0.10".parse().unwrap(),
                "fd00:96::10".parse().unwrap(),
            ],
            ports: vec![
                port("http", Protocol::Tcp, 80),
                port("dns", Protocol::Udp, 53),
            ],
            endpoints: vec![],
        },
    );
    services.insert(
        ("demo".to_owned(), "db".to_owned()),
        DnsService {
            headless: true,
            vips: vec![],
            ports: vec![],
            endpoints: vec![
                DnsEndpoint {
                    cluster: "west".into(),
                    hostname: "db-0".into(),
                    address: "10.1.0.5".parse().unwrap(),
                    ports: vec![port("pg", Protocol::Tcp, 5432)],
                },
                DnsEndpoint {
                    cluster: "east".into(),
                    hostname: "db-0".into(),
                    address: "100.64.0.5".parse().unwrap(),
                    ports: vec![port("pg", Protocol::Tcp, 5432)],
                },
            ],
        },
    );
    DnsView {
        ready: true,
        services: services
            .into_iter()
            .map(|(key, service)| (key, Arc::new(service)))
            .collect(),
    }
}

async fn server(zone: &str, upstream: Option<SocketAddr>) -> (DnsServer, DnsFeed) {
    DnsServer::start(
        &DnsSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream,
            ttl_seconds: 5,
            zone: zone.into(),
        },
        &mut Registry::default(),
    )
    .await
    .expect("the DNS server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_every_kind_of_answer() {
    if !have_dig() {
        return;
    }
    // The upstream: the same server, authoritative for cluster.local.
    let (upstream, upstream_feed) = server("cluster.local.", None).await;
    let mut upstream_view = DnsView {
        ready: true,
        services: BTreeMap::new(),
    };
    upstream_view.services.insert(
        ("default".to_owned(), "kubernetes".to_owned()),
        Arc::new(DnsService {
            headless: false,
            vips: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![port("https", Protocol::Tcp, 443)],
            endpoints: vec![],
        }),
    );
    upstream_feed.update(upstream_view);

    let (dns, feed) = server("clusterset.local.", Some(upstream.local_addr())).await;
    let addr = dns.local_addr();

    // Before the first view: SERVFAIL, so clients retry instead of caching NXDOMAIN.
    let d = dig(addr, &["echo.demo.svc.clusterset.local", "A"]).await;
    assert_eq!(d.status, "SERVFAIL");
    feed.update(view());

    let d = dig(addr, &["echo.demo.svc.clusterset.local", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(d.flags.contains("aa"), "authoritative: {d:?}");
    assert_eq!(
        d.answer,
        ["echo.demo.svc.clusterset.local. 5 IN A 10.96.0.10"]
    );
    let d = dig(addr, &["echo.demo.svc.clusterset.local", "AAAA"]).await;
    assert_eq!(
        d.answer,
        ["echo.demo.svc.clusterset.local. 5 IN AAAA fd00:96::10"]
    );
    let d = dig(addr, &["_http._tcp.echo.demo.svc.clusterset.local", "SRV"]).await;
    assert_eq!(
        d.answer,
        [
            "_http._tcp.echo.demo.svc.clusterset.local. 5 IN SRV 0 100 80 echo.demo.svc.clusterset.local."
        ]
    );
    assert!(
        d.additional
            .contains(&"echo.demo.svc.clusterset.local. 5 IN A 10.96.0.10".to_owned()),
        "{d:?}"
    );

    // Headless: every cluster's backends, SRV per backend, and per-cluster names.
    let mut d = dig(addr, &["db.demo.svc.clusterset.local", "A"]).await;
    d.answer.sort();
    assert_eq!(
        d.answer,
        [
            "db.demo.svc.clusterset.local. 5 IN A 10.1.0.5",
            "db.demo.svc.clusterset.local. 5 IN A 100.64.0.5"
        ]
    );
    let mut d = dig(addr, &["_pg._tcp.db.demo.svc.clusterset.local", "SRV"]).await;
    d.answer.sort();
    assert_eq!(
        d.answer,
        [
            "_pg._tcp.db.demo.svc.clusterset.local. 5 IN SRV 0 100 5432 db-0.east.db.demo.svc.clusterset.local.",
            "_pg._tcp.db.demo.svc.clusterset.local. 5 IN SRV 0 100 5432 db-0.west.db.demo.svc.clusterset.local."
        ]
    );
    let d = dig(addr, &["db-0.east.db.demo.svc.clusterset.local", "A"]).await;
    assert_eq!(
        d.answer,
        ["db-0.east.db.demo.svc.clusterset.local. 5 IN A 100.64.0.5"]
    );

    // Negative answers: NXDOMAIN and NODATA, both with the SOA.
    let d = dig(addr, &["nope.demo.svc.clusterset.local", "A"]).await;
    assert_eq!((d.status.as_str(), d.answer.len()), ("NXDOMAIN", 0));
    assert!(d.authority[0].contains("IN SOA"), "{d:?}");
    let d = dig(addr, &["echo.demo.svc.clusterset.local", "TXT"]).await;
    assert_eq!((d.status.as_str(), d.answer.len()), ("NOERROR", 0));
    assert!(d.authority[0].contains("IN SOA"), "{d:?}");
    let d = dig(addr, &["demo.svc.clusterset.local", "A"]).await;
    assert_eq!(
        (d.status.as_str(), d.answer.len()),
        ("NOERROR", 0),
        "an empty non-terminal"
    );

    // TCP.
    let d = dig(addr, &["+tcp", "echo.demo.svc.clusterset.local", "A"]).await;
    assert_eq!(
        d.answer,
        ["echo.demo.svc.clusterset.local. 5 IN A 10.96.0.10"]
    );

    // Forwarding: the upstream answers its own zone, over UDP and TCP; its NXDOMAIN comes back.
    for transport in ["+notcp", "+tcp"] {
        let d = dig(
            addr,
            &[transport, "kubernetes.default.svc.cluster.local", "A"],
        )
        .await;
        assert_eq!(
            (d.status.as_str(), d.answer.clone()),
            (
                "NOERROR",
                vec!["kubernetes.default.svc.cluster.local. 5 IN A 10.96.0.1".to_owned()]
            ),
            "{transport}"
        );
    }
    let d = dig(addr, &["nope.default.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    // The upstream refuses what is in neither zone, and that is what the client hears.
    let d = dig(addr, &["example.com", "A"]).await;
    assert_eq!(d.status, "REFUSED");

    // The view changes: the name vanishes at once.
    let mut changed = view();
    changed
        .services
        .remove(&("demo".to_owned(), "echo".to_owned()));
    feed.update(changed);
    let d = dig(addr, &["echo.demo.svc.clusterset.local", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");

    // Without an upstream, other names are refused; an unreachable upstream is SERVFAIL.
    let (alone, alone_feed) = server("clusterset.local.", None).await;
    alone_feed.update(view());
    let d = dig(
        alone.local_addr(),
        &["kubernetes.default.svc.cluster.local", "A"],
    )
    .await;
    assert_eq!(d.status, "REFUSED");
    let dead: SocketAddr = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let (broken, broken_feed) = server("clusterset.local.", Some(dead)).await;
    broken_feed.update(view());
    let d = dig(broken.local_addr(), &["+time=5", "example.com", "A"]).await;
    assert_eq!(d.status, "SERVFAIL");
}
