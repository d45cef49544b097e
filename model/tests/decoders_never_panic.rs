//! Property tests that feed arbitrary bytes and keys to every decoder: they may refuse, never
//! panic, and what they accept re-encodes to something they accept again. These run in CI with
//! the rest of the suite (a cargo-fuzz target would need nightly, which these machines lack).

use clustermesh_model::*;
use proptest::prelude::*;

fn expected() -> ExpectedCluster {
    ExpectedCluster {
        name: ClusterName::new("east").unwrap(),
        id: ClusterId::new(1, MaxConnectedClusters::Max255).unwrap(),
        mesh: MaxConnectedClusters::Max255,
    }
}

/// Keys that are mostly well-formed, so the value decoders behind the key parser get exercised.
fn keys() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("services".to_owned()),
        Just("endpoints".to_owned()),
        Just("identities".to_owned()),
        Just("nodes".to_owned()),
        Just("agents".to_owned()),
        Just("clusterset-vips".to_owned()),
        "[a-z]{1,8}",
    ];
    let object = prop_oneof![
        Just("default/echo".to_owned()),
        Just("10.244.1.5".to_owned()),
        Just("65578".to_owned()),
        Just("node-1".to_owned()),
        "[ -~]{0,40}",
    ];
    let cluster = prop_oneof![Just("east".to_owned()), "[a-z0-9-]{0,34}"];
    let area = prop_oneof![
        Just("state".to_owned()),
        Just("cache".to_owned()),
        Just("local".to_owned())
    ];
    prop_oneof![
        (
            area,
            kind,
            prop_oneof![Just("v1".to_owned()), Just("v2".to_owned())],
            cluster,
            object
        )
            .prop_map(|(a, k, v, c, o)| format!("clustermesh/{a}/{k}/{v}/{c}/{o}")),
        "[ -~]{0,80}",
    ]
}

/// JSON-ish values built from the fields the decoders look at, with arbitrary contents.
fn values() -> impl Strategy<Value = Vec<u8>> {
    let scalar = prop_oneof![
        Just(serde_json::json!("east")),
        Just(serde_json::json!(1)),
        Just(serde_json::json!("10.244.1.5")),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[ -~]{0,20}".prop_map(|s| serde_json::json!(s)),
    ];
    let fields = proptest::collection::btree_map(
        prop_oneof![
            Just("cluster"),
            Just("clusterID"),
            Just("namespace"),
            Just("name"),
            Just("ip"),
            Just("identity"),
            Just("node"),
            Just("pod"),
            Just("id"),
            Just("tunnelAddress"),
            Just("ips"),
        ]
        .prop_map(str::to_owned),
        scalar,
        0..10,
    );
    prop_oneof![
        fields.prop_map(|m| serde_json::to_vec(&m).unwrap()),
        proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn state_decoder_never_panics(key in keys(), value in values()) {
        let schema = KeySchema::default();
        if let Ok((parsed, decoded)) = decode_state(&schema, &key, &value, &expected(), &Limits::default()) {
            // What we accept, we can write back and accept again.
            let again = decode_state(&schema, &schema.key(&parsed), &decoded.to_json(), &expected(), &Limits::default());
            prop_assert_eq!(again.map(|(_, v)| v), Ok(decoded));
        }
    }

    #[test]
    fn key_parser_never_panics(key in "\\PC{0,120}") {
        let schema = KeySchema::default();
        if let Ok(parsed) = schema.parse(&key) {
            prop_assert_eq!(schema.parse(&schema.key(&parsed)), Ok(parsed));
        }
    }

    #[test]
    fn config_and_marker_decoders_never_panic(value in values()) {
        let schema = KeySchema::default();
        let name = expected().name;
        let _ = decode_cluster_config(&schema, &schema.cluster_config(&name), &value, &name, &Limits::default());
        let _ = decode_marker(&value, &expected(), &Limits::default());
    }

    #[test]
    fn clusterset_vip_decoder_never_panics(key in keys(), value in values(), ips in proptest::collection::vec("[0-9a-f:.]{0,20}", 0..4)) {
        let schema = KeySchema::default();
        let mut with_ips: serde_json::Value = serde_json::from_slice(&value).unwrap_or_default();
        if let Some(map) = with_ips.as_object_mut() {
            map.insert("ips".into(), serde_json::json!(ips));
        }
        for value in [value, serde_json::to_vec(&with_ips).unwrap()] {
            if let Ok(vip) = decode_clusterset_vip(&schema, &key, &value, &expected(), &Limits::default()) {
                let again = decode_clusterset_vip(&schema, &key, &vip.to_json(), &expected(), &Limits::default());
                prop_assert_eq!(again, Ok(vip));
            }
        }
    }

    #[test]
    fn services_round_trip(
        ports in proptest::collection::btree_map("[a-z]{0,5}", (1u16.., prop_oneof![Just("TCP"), Just("UDP")]), 1..4),
        backend_ips in proptest::collection::btree_set(any::<std::net::Ipv4Addr>(), 0..50),
        shared in any::<bool>(),
    ) {
        let ports_json: serde_json::Map<String, serde_json::Value> = ports
            .iter()
            .map(|(n, (p, proto))| (n.clone(), serde_json::json!({"Protocol": proto, "Port": p})))
            .collect();
        let backends: serde_json::Map<String, serde_json::Value> = backend_ips
            .iter()
            .map(|ip| (ip.to_string(), serde_json::Value::Object(ports_json.clone())))
            .collect();
        let v = serde_json::json!({"cluster": "east", "clusterID": 1, "namespace": "ns", "name": "svc",
            "backends": backends, "shared": shared});
        let schema = KeySchema::default();
        let key = "clustermesh/state/services/v1/east/ns/svc";
        match decode_state(&schema, key, &serde_json::to_vec(&v).unwrap(), &expected(), &Limits::default()) {
            Ok((_, StateValue::Service(svc))) => {
                // Unspecified and multicast addresses are refused; everything else survives.
                let usable = backend_ips.iter().filter(|ip| !ip.is_unspecified() && !ip.is_multicast()).count();
                prop_assert_eq!(svc.backends.len(), usable);
                prop_assert_eq!(svc.shared, shared);
            }
            Ok(other) => prop_assert!(false, "decoded as {:?}", other),
            Err(DecodeError::BadIp { .. }) => {
                prop_assert!(backend_ips.iter().any(|ip| ip.is_unspecified() || ip.is_multicast()));
            }
            Err(e) => prop_assert!(false, "rejected a good service: {}", e),
        }
    }
}
