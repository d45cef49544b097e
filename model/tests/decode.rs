//! Strict decoding: every rejection has its own error, and good values round-trip.

use std::collections::BTreeMap;

use clustermesh_model::*;
use serde_json::{Value, json};

fn east() -> ExpectedCluster {
    ExpectedCluster {
        name: ClusterName::new("east").unwrap(),
        id: ClusterId::new(1, MaxConnectedClusters::Max255).unwrap(),
        mesh: MaxConnectedClusters::Max255,
    }
}

const SVC_KEY: &str = "clustermesh/state/services/v1/east/default/echo";

fn service_json() -> Value {
    json!({
        "cluster": "east", "namespace": "default", "name": "echo",
        "frontends": {"10.96.0.10": {"http": {"Protocol": "TCP", "Port": 80}}},
        "backends": {
            "10.244.1.5": {"http": {"Protocol": "TCP", "Port": 8080}},
            "10.244.2.7": {"http": {"Protocol": "TCP", "Port": 8080}}
        },
        "nodes": {"10.244.1.5": "node-1"},
        "zones": {"10.244.1.5": {"zone": "eu-west-1a"}},
        "notReady": ["10.244.2.7"],
        "shared": true, "affinity": "local", "clusterID": 1
    })
}

fn decode(key: &str, value: &Value) -> Result<StateValue, DecodeError> {
    let bytes = serde_json::to_vec(value).unwrap();
    decode_state(
        &KeySchema::default(),
        key,
        &bytes,
        &east(),
        &Limits::default(),
    )
    .map(|(_, v)| v)
}

fn with(mut v: Value, path: &[&str], new: Value) -> Value {
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = cur.get_mut(*p).unwrap();
    }
    cur[path[path.len() - 1]] = new;
    v
}

#[test]
fn a_good_service_decodes_with_every_field() {
    let StateValue::Service(svc) = decode(SVC_KEY, &service_json()).unwrap() else {
        panic!("not a service")
    };
    assert_eq!(svc.cluster.as_str(), "east");
    assert_eq!(svc.affinity, Affinity::Local);
    assert_eq!(svc.frontends[0].ports["http"].port, 80);
    assert_eq!(svc.backends.len(), 2);
    let b = &svc.backends[0];
    assert_eq!(b.ip.to_string(), "10.244.1.5");
    assert_eq!(b.node.as_deref(), Some("node-1"));
    assert_eq!(b.zone.as_deref(), Some("eu-west-1a"));
    assert!(b.ready);
    assert!(!svc.backends[1].ready);

    // Encoding and decoding again gives the same value.
    let again = decode_state(
        &KeySchema::default(),
        SVC_KEY,
        &svc.to_json(),
        &east(),
        &Limits::default(),
    )
    .unwrap()
    .1;
    assert_eq!(again, StateValue::Service(svc));
}

/// A ClusterService as Cilium writes it (its test fixtures use both spellings of the L4 fields,
/// no `nodes`/`notReady`/`affinity`), under Cilium's own root prefix.
#[test]
fn ciliums_cluster_service_format_decodes() {
    let fixture = r#"{"cluster":"cluster2","namespace":"test","name":"echo",
        "frontends":{"10.96.50.104":{"http":{"Protocol":"TCP","Port":80}}},
        "backends":{"10.244.2.10":{"http":{"protocol":"TCP","port":8080}}},
        "hostnames":{"10.244.2.10":"echo-abc"},
        "zones":{"10.244.2.10":{"zone":"a","forZones":[{"name":"a"}]}},
        "labels":{},"selector":{"name":"echo"},"includeExternal":true,"shared":true,"clusterID":2}"#;
    let expected = ExpectedCluster {
        name: ClusterName::new("cluster2").unwrap(),
        id: ClusterId::new(2, MaxConnectedClusters::Max255).unwrap(),
        mesh: MaxConnectedClusters::Max255,
    };
    let (_, value) = decode_state(
        &KeySchema::new("cilium").unwrap(),
        "cilium/state/services/v1/cluster2/test/echo",
        fixture.as_bytes(),
        &expected,
        &Limits::default(),
    )
    .unwrap();
    let StateValue::Service(svc) = value else {
        panic!()
    };
    assert_eq!(svc.backends[0].ports["http"].port, 8080);
    assert_eq!(svc.backends[0].hostname.as_deref(), Some("echo-abc"));
    assert!(svc.backends[0].ready && svc.include_external && svc.shared);
}

#[test]
fn cluster_name_mismatch_between_key_and_value() {
    let err = decode(SVC_KEY, &with(service_json(), &["cluster"], json!("west"))).unwrap_err();
    assert!(
        matches!(err, DecodeError::ClusterNameMismatch { ref key, ref value } if key == "east" && value == "west"),
        "{err}"
    );
}

#[test]
fn key_for_another_cluster_than_the_configured_peer() {
    let v = with(service_json(), &["cluster"], json!("west"));
    let err = decode("clustermesh/state/services/v1/west/default/echo", &v).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnexpectedCluster { .. }),
        "{err}"
    );
}

#[test]
fn cluster_id_out_of_range_and_mismatched() {
    let err = decode(SVC_KEY, &with(service_json(), &["clusterID"], json!(256))).unwrap_err();
    assert!(matches!(err, DecodeError::ClusterIdOutOfRange(_)), "{err}");
    let err = decode(SVC_KEY, &with(service_json(), &["clusterID"], json!(0))).unwrap_err();
    assert!(matches!(err, DecodeError::ClusterIdOutOfRange(_)), "{err}");
    let err = decode(SVC_KEY, &with(service_json(), &["clusterID"], json!(2))).unwrap_err();
    assert!(
        matches!(err, DecodeError::ClusterIdMismatch { found: 2, .. }),
        "{err}"
    );
}

#[test]
fn bad_ip() {
    let mut v = service_json();
    v["backends"]["10.244.1.999"] = json!({"http": {"Protocol": "TCP", "Port": 1}});
    let err = decode(SVC_KEY, &v).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::BadIp {
                field: "backend",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn port_zero_and_port_65536() {
    for port in [0, 65536] {
        let v = with(
            service_json(),
            &["backends", "10.244.1.5", "http", "Port"],
            json!(port),
        );
        let err = decode(SVC_KEY, &v).unwrap_err();
        assert!(
            matches!(err, DecodeError::BadPort { value, .. } if value == port),
            "{port}: {err}"
        );
    }
    let v = with(
        service_json(),
        &["backends", "10.244.1.5", "http", "Protocol"],
        json!("ICMP"),
    );
    assert!(matches!(
        decode(SVC_KEY, &v).unwrap_err(),
        DecodeError::BadProtocol { .. }
    ));
}

#[test]
fn oversize_value() {
    let huge = vec![b' '; Limits::default().max_value_bytes + 1];
    let err = decode_state(
        &KeySchema::default(),
        SVC_KEY,
        &huge,
        &east(),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, DecodeError::Oversize { .. }), "{err}");
}

#[test]
fn too_many_backends() {
    let limits = Limits {
        max_backends: 3,
        ..Limits::default()
    };
    let backends: BTreeMap<String, Value> = (1..=4)
        .map(|i| {
            (
                format!("10.0.0.{i}"),
                json!({"p": {"Protocol": "TCP", "Port": 80}}),
            )
        })
        .collect();
    let v = with(service_json(), &["backends"], json!(backends));
    let err = decode_state(
        &KeySchema::default(),
        SVC_KEY,
        &serde_json::to_vec(&v).unwrap(),
        &east(),
        &limits,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooMany {
                what: "backends",
                count: 4,
                limit: 3
            }
        ),
        "{err}"
    );
}

#[test]
fn unknown_schema_version() {
    let err = decode(
        "clustermesh/state/services/v2/east/default/echo",
        &service_json(),
    )
    .unwrap_err();
    assert!(
        matches!(err, DecodeError::Key(KeyError::UnknownSchemaVersion { .. })),
        "{err}"
    );
    assert_eq!(err.reason(), "schema_version");
}

#[test]
fn name_in_value_must_match_key() {
    let err = decode(SVC_KEY, &with(service_json(), &["name"], json!("other"))).unwrap_err();
    assert!(
        matches!(err, DecodeError::ObjectMismatch { field: "name", .. }),
        "{err}"
    );
}

#[test]
fn not_json_is_a_json_error() {
    let err = decode_state(
        &KeySchema::default(),
        SVC_KEY,
        b"{not json",
        &east(),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, DecodeError::Json { .. }), "{err}");
}

#[test]
fn endpoints_identities_nodes_and_agents() {
    let mesh = MaxConnectedClusters::Max255;
    let id = IdentityId::new(east().id, 42, mesh).unwrap();
    let ep = json!({"cluster": "east", "clusterID": 1, "ip": "10.244.1.5", "identity": id.get(),
        "node": "node-1", "namespace": "default", "pod": "echo-0"});
    assert!(decode("clustermesh/state/endpoints/v1/east/10.244.1.5", &ep).is_ok());
    // The identity must belong to the cluster that published it.
    let foreign = with(ep.clone(), &["identity"], json!((2u32 << 16) | 42));
    assert!(matches!(
        decode("clustermesh/state/endpoints/v1/east/10.244.1.5", &foreign).unwrap_err(),
        DecodeError::ForeignIdentity { owner: 2, .. }
    ));
    assert!(matches!(
        decode("clustermesh/state/endpoints/v1/east/10.244.1.6", &ep).unwrap_err(),
        DecodeError::ObjectMismatch { field: "ip", .. }
    ));

    let identity = json!({"cluster": "east", "clusterID": 1, "id": id.get(),
        "labels": {"k8s:app": "echo", "k8s:io.kubernetes.pod.namespace": "default"}});
    let key = format!("clustermesh/state/identities/v1/east/{}", id.get());
    assert!(decode(&key, &identity).is_ok());

    let node = json!({"cluster": "east", "clusterID": 1, "name": "node-1",
        "addresses": [{"type": "InternalIP", "ip": "192.168.10.2"}],
        "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"], "zone": "a"});
    let StateValue::Node(n) = decode("clustermesh/state/nodes/v1/east/node-1", &node).unwrap()
    else {
        panic!()
    };
    assert_eq!(n.pod_cidrs.len(), 2);
    let bad_cidr = with(node, &["podCIDRs"], json!(["10.244.1.0/33"]));
    assert!(matches!(
        decode("clustermesh/state/nodes/v1/east/node-1", &bad_cidr).unwrap_err(),
        DecodeError::BadCidr { .. }
    ));

    let agent = json!({"cluster": "east", "clusterID": 1, "node": "node-1",
        "tunnelAddress": "192.168.10.2:4244", "certFingerprint": format!("sha256:{}", "ab".repeat(32)),
        "bootID": "5c1d"});
    assert!(decode("clustermesh/state/agents/v1/east/node-1", &agent).is_ok());
    let bad = with(agent, &["tunnelAddress"], json!("192.168.10.2:0"));
    assert!(matches!(
        decode("clustermesh/state/agents/v1/east/node-1", &bad).unwrap_err(),
        DecodeError::BadPort { .. }
    ));
}

#[test]
fn cluster_config_and_markers() {
    let schema = KeySchema::default();
    let cfg = ClusterConfig {
        cluster: east().name,
        id: east().id,
        max_connected_clusters: MaxConnectedClusters::Max255,
        synced_canaries: true,
        ca_fingerprint: Some(format!("sha256:{}", "0f".repeat(32))),
    };
    let key = schema.cluster_config(&east().name);
    let back = decode_cluster_config(
        &schema,
        &key,
        &cfg.to_json(),
        &east().name,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(back, cfg);
    // Cilium's own cluster config shape (no name, id only) is refused: we need the name check.
    assert!(
        decode_cluster_config(
            &schema,
            &key,
            br#"{"id":300,"cluster":"east"}"#,
            &east().name,
            &Limits::default()
        )
        .is_err()
    );

    let marker = Marker {
        cluster: east().name,
        cluster_id: east().id,
        unix_millis: 1_700_000_000_000,
    };
    assert_eq!(
        decode_marker(&marker.to_json(), &east(), &Limits::default()).unwrap(),
        marker
    );
}

const VIP_KEY: &str = "clustermesh/local/clusterset-vips/v1/east/demo/echo";

fn vip_json() -> Value {
    json!({"cluster": "east", "clusterID": 1, "namespace": "demo", "name": "echo",
        "ips": ["fd00:636c::5", "10.255.0.5"]})
}

fn decode_vip(key: &str, value: &Value) -> Result<ClustersetVip, DecodeError> {
    decode_clusterset_vip(
        &KeySchema::default(),
        key,
        &serde_json::to_vec(value).unwrap(),
        &east(),
        &Limits::default(),
    )
}

#[test]
fn a_clusterset_vip_decodes_and_round_trips() {
    let vip = decode_vip(VIP_KEY, &vip_json()).unwrap();
    assert_eq!(
        (vip.namespace.as_str(), vip.name.as_str()),
        ("demo", "echo")
    );
    // IPv4 first, whatever the order written.
    assert_eq!(
        vip.ips,
        [
            "10.255.0.5".parse::<std::net::IpAddr>().unwrap(),
            "fd00:636c::5".parse().unwrap()
        ]
    );
    let again = decode_clusterset_vip(
        &KeySchema::default(),
        VIP_KEY,
        &vip.to_json(),
        &east(),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(again, vip);
}

#[test]
fn clusterset_vips_are_refused_with_a_reason() {
    let reason = |key: &str, v: Value| decode_vip(key, &v).unwrap_err().reason();
    assert_eq!(
        reason(VIP_KEY, with(vip_json(), &["cluster"], json!("west"))),
        "cluster_name"
    );
    assert_eq!(
        reason(VIP_KEY, with(vip_json(), &["clusterID"], json!(2))),
        "cluster_id"
    );
    assert_eq!(
        reason(VIP_KEY, with(vip_json(), &["clusterID"], json!(300))),
        "cluster_id"
    );
    assert_eq!(
        reason(
            "clustermesh/local/clusterset-vips/v1/west/demo/echo",
            vip_json()
        ),
        "unexpected_cluster"
    );
    assert_eq!(
        reason(VIP_KEY, with(vip_json(), &["name"], json!("other"))),
        "object_mismatch"
    );
    assert_eq!(
        reason(VIP_KEY, with(vip_json(), &["ips"], json!(["10.0.0.300"]))),
        "address"
    );
    assert_eq!(
        reason(VIP_KEY, with(vip_json(), &["ips"], json!(["0.0.0.0"]))),
        "address"
    );
    assert_eq!(
        reason(VIP_KEY, with(vip_json(), &["ips"], json!([]))),
        "field"
    );
    assert_eq!(
        reason(
            VIP_KEY,
            with(vip_json(), &["ips"], json!(["10.0.0.1", "10.0.0.2"]))
        ),
        "field"
    );
    assert_eq!(
        reason(
            VIP_KEY,
            with(
                vip_json(),
                &["ips"],
                json!(["10.0.0.1", "fd00::1", "fd00::2"])
            )
        ),
        "too_many"
    );
    assert_eq!(reason(VIP_KEY, json!({"cluster": "east"})), "json");
    // A service key is not a VIP key.
    assert_eq!(reason(SVC_KEY, vip_json()), "key");
}

#[test]
fn headless_is_optional_and_round_trips() {
    let StateValue::Service(svc) = decode(SVC_KEY, &service_json()).unwrap() else {
        panic!()
    };
    assert!(!svc.headless);
    let headless = with(service_json(), &["headless"], json!(true));
    let StateValue::Service(svc) = decode(SVC_KEY, &headless).unwrap() else {
        panic!()
    };
    assert!(svc.headless);
    let again: Value = serde_json::from_slice(&svc.to_json()).unwrap();
    assert_eq!(again["headless"], json!(true));
}
