//! Identity allocation against a real etcd: many label sets at once, and another apiserver
//! replica taking IDs between our load and our allocation.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clustermesh_apiserver::publish::identities::{FIRST_LOCAL_ID, IdentityAllocator};
use clustermesh_model::KeySchema;
use clustermesh_testkit::EtcdServer;
use common::*;

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("k8s:app".to_owned(), app.to_owned())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_label_sets_get_distinct_ids_even_when_a_replica_took_some() {
    let etcd = EtcdServer::start();
    let mut c = client(&etcd.endpoint()).await;
    let schema = KeySchema::default();
    let east = cluster("east", 1);
    let mut allocator = IdentityAllocator::load(
        c.clone(),
        schema.clone(),
        east.clone(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    // Another replica allocates two IDs after our load: the first batch's transaction fails and
    // we fall back to one at a time, learning what the replica took.
    for local in [FIRST_LOCAL_ID + 1, FIRST_LOCAL_ID + 70] {
        let other = serde_json::json!({ "labels": labels(&format!("other-{local}")) });
        c.put(
            schema.identity_allocation(&east.name, local),
            other.to_string(),
            None,
        )
        .await
        .unwrap();
    }

    // More than one batch worth.
    let wanted: BTreeSet<_> = (0..150).map(|i| labels(&format!("app-{i:03}"))).collect();
    allocator.sync(&wanted).await.unwrap();

    let allocations = allocator.allocations();
    let mine: BTreeSet<_> = wanted.iter().map(|l| allocations[l]).collect();
    assert_eq!(mine.len(), wanted.len(), "every label set has its own ID");
    assert_eq!(
        allocations
            .get(&labels(&format!("other-{}", FIRST_LOCAL_ID + 70)))
            .map(|id| id.local_id(east.mesh)),
        Some(FIRST_LOCAL_ID + 70),
        "the replica's allocation is learned, not overwritten"
    );

    // What etcd holds agrees: one record per ID, ours carry our labels.
    let stored = dump(&c, &schema.identity_allocation_prefix(&east.name)).await;
    assert_eq!(stored.len(), wanted.len() + 2);
    for set in &wanted {
        let key = schema.identity_allocation(&east.name, allocations[set].local_id(east.mesh));
        let record: serde_json::Value = serde_json::from_slice(&stored[&key]).unwrap();
        assert_eq!(record["labels"], serde_json::json!(set), "{key}");
    }

    // A restarted allocator loads the same IDs.
    let reloaded = IdentityAllocator::load(c.clone(), schema, east, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(reloaded.allocations(), allocator.allocations());
}
