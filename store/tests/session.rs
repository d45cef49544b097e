//! Sessions against a real etcd: keys vanish with the lease, and a lost lease is replaced.

use std::time::Duration;

use clustermesh_store::{EtcdConfig, Session, connect};
use clustermesh_testkit::{EtcdServer, assert_eventually};
use etcd_client::PutOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_vanish_when_the_session_lease_expires() {
    let etcd = EtcdServer::start();
    let mut client = connect(&EtcdConfig::plain(etcd.endpoint())).await.unwrap();
    let session = Session::start(client.clone(), Duration::from_secs(2))
        .await
        .unwrap();
    client
        .put(
            "t/alive",
            "1",
            Some(PutOptions::new().with_lease(session.lease_id())),
        )
        .await
        .unwrap();

    // While the session runs, the key outlives its TTL several times over.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(client.get("t/alive", None).await.unwrap().count(), 1);

    // The process stops renewing (as if it died): the key is gone within the TTL.
    drop(session);
    assert_eventually(
        "the key to vanish with its lease",
        Duration::from_secs(6),
        || {
            let mut c = client.clone();
            async move {
                match c.get("t/alive", None).await.map(|r| r.count()) {
                    Ok(0) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_replaced_and_subscribers_are_told() {
    let etcd = EtcdServer::start();
    let mut client = connect(&EtcdConfig::plain(etcd.endpoint())).await.unwrap();
    let session = Session::start(client.clone(), Duration::from_secs(3))
        .await
        .unwrap();
    let first = session.lease_id();
    let mut changes = session.subscribe();

    // Someone (an operator, a compaction of leases after a long partition) revokes it.
    client.lease_revoke(first).await.unwrap();

    // Renewals go out every TTL/3 (1 s); allow for a busy machine but not for a TTL-long miss
    // plus a retry cycle going unnoticed forever.
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the session notices the lost lease within a few keep-alive periods")
        .unwrap();
    let second = session.lease_id();
    assert_ne!(first, second);
    let ttl = client.lease_time_to_live(second, None).await.unwrap();
    assert!(ttl.ttl() > 0, "the new lease is alive");
    session.close().await;
    let ttl = client.lease_time_to_live(second, None).await.unwrap();
    assert!(ttl.ttl() <= 0, "close revokes the lease");
}
