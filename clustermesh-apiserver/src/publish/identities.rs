//! Identity allocation: one numeric ID per distinct label set, with the cluster ID in the high
//! bits. Allocations are kept in etcd under `allocations/identities/<cluster>/<local-id>`, not
//! under any lease, so the same labels keep the same ID across apiserver restarts. An ID that no
//! pod uses any more is released after a grace period (pods being rescheduled keep theirs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use clustermesh_model::{ExpectedCluster, IdentityId, Key, KeySchema};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::translate::LabelSet;

/// Local IDs below this are reserved (Cilium keeps 1..=255 for well-known identities).
pub const FIRST_LOCAL_ID: u32 = 256;

/// Allocations per etcd transaction: a compare and a put each, within etcd's default limit of
/// 128 operations per transaction.
const ALLOCATION_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write identity allocations in etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error(
        "all {max} cluster-local identities are in use; the cluster has more distinct label sets than the mesh allows (511-cluster meshes have half as many)"
    )]
    Exhausted { max: u32 },
}

#[derive(Serialize, Deserialize)]
struct AllocationRecord {
    labels: LabelSet,
}

pub struct IdentityAllocator {
    client: Client,
    schema: KeySchema,
    cluster: ExpectedCluster,
    grace: Duration,
    by_labels: BTreeMap<LabelSet, IdentityId>,
    by_local: BTreeMap<u32, LabelSet>,
    unused_since: HashMap<u32, Instant>,
}

impl IdentityAllocator {
    /// Loads the allocations an earlier run made.
    pub async fn load(
        mut client: Client,
        schema: KeySchema,
        cluster: ExpectedCluster,
        grace: Duration,
    ) -> Result<Self, IdentityError> {
        let prefix = schema.identity_allocation_prefix(&cluster.name);
        // Paged: 10k label sets make a response larger than the gRPC limit.
        let (kvs, _) = clustermesh_store::list(&mut client, &prefix).await?;
        let mut allocator = Self {
            client,
            schema,
            cluster,
            grace,
            by_labels: BTreeMap::new(),
            by_local: BTreeMap::new(),
            unused_since: HashMap::new(),
        };
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key());
            let local = match allocator.schema.parse(&key) {
                Ok(Key::IdentityAllocation { id, .. }) => id,
                _ => {
                    warn!(%key, "ignoring a malformed identity allocation key");
                    continue;
                }
            };
            let Ok(record) = serde_json::from_slice::<AllocationRecord>(kv.value()) else {
                warn!(%key, "ignoring an identity allocation whose value does not parse");
                continue;
            };
            match allocator.identity(local) {
                Some(id) => allocator.remember(local, id, record.labels),
                None => warn!(%key, "ignoring an identity allocation out of this mesh's range"),
            }
        }
        info!(
            count = allocator.by_local.len(),
            "loaded identity allocations"
        );
        Ok(allocator)
    }

    fn identity(&self, local: u32) -> Option<IdentityId> {
        IdentityId::new(self.cluster.id, local, self.cluster.mesh).ok()
    }

    fn remember(&mut self, local: u32, id: IdentityId, labels: LabelSet) {
        self.by_labels.insert(labels.clone(), id);
        self.by_local.insert(local, labels);
    }

    pub fn allocations(&self) -> &BTreeMap<LabelSet, IdentityId> {
        &self.by_labels
    }

    /// Makes sure every wanted label set has an ID, and releases IDs unused for the grace period.
    pub async fn sync(&mut self, wanted: &BTreeSet<LabelSet>) -> Result<(), IdentityError> {
        let new: Vec<&LabelSet> = wanted
            .iter()
            .filter(|labels| !self.by_labels.contains_key(*labels))
            .collect();
        let mut candidate = FIRST_LOCAL_ID;
        for chunk in new.chunks(ALLOCATION_BATCH) {
            candidate = self.allocate_batch(chunk, candidate).await?;
        }

        let now = Instant::now();
        let mut expired = Vec::new();
        for (local, labels) in &self.by_local {
            if wanted.contains(labels) {
                self.unused_since.remove(local);
            } else {
                let since = *self.unused_since.entry(*local).or_insert(now);
                if now.duration_since(since) >= self.grace {
                    expired.push(*local);
                }
            }
        }
        for local in expired {
            let key = self.schema.identity_allocation(&self.cluster.name, local);
            self.client.delete(key.as_str(), None).await?;
            if let Some(labels) = self.by_local.remove(&local) {
                self.by_labels.remove(&labels);
            }
            self.unused_since.remove(&local);
            info!(local, "released an identity no pod uses any more");
        }
        Ok(())
    }

    /// Allocates IDs for several label sets in one transaction (a cluster starting with
    /// thousands of distinct label sets would otherwise wait for one etcd round trip and fsync
    /// each). If another apiserver replica took any of the IDs, falls back to one at a time.
    /// Returns where to look next time.
    async fn allocate_batch(
        &mut self,
        labels: &[&LabelSet],
        mut from: u32,
    ) -> Result<u32, IdentityError> {
        let max = self.cluster.mesh.max_local_identity();
        let mut picked = Vec::with_capacity(labels.len());
        for set in labels {
            while self.by_local.contains_key(&from) {
                from += 1;
            }
            let Some(id) = self.identity(from).filter(|_| from <= max) else {
                return Err(IdentityError::Exhausted { max });
            };
            picked.push((from, id, (*set).clone()));
            from += 1;
        }
        let mut compares = Vec::with_capacity(picked.len());
        let mut puts = Vec::with_capacity(picked.len());
        for (local, _, set) in &picked {
            let key = self.schema.identity_allocation(&self.cluster.name, *local);
            let value = serde_json::to_vec(&AllocationRecord {
                labels: set.clone(),
            })
            .expect("a map of strings serializes");
            compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
            puts.push(TxnOp::put(key.as_str(), value, None));
        }
        if self
            .client
            .txn(Txn::new().when(compares).and_then(puts))
            .await?
            .succeeded()
        {
            for (local, id, set) in picked {
                self.remember(local, id, set);
            }
            return Ok(from);
        }
        let mut from = picked.first().map_or(from, |(local, _, _)| *local);
        for (_, _, set) in picked {
            if !self.by_labels.contains_key(&set) {
                from = self.allocate(set, from).await?;
            }
        }
        Ok(from)
    }

    /// Takes the lowest free local ID at or above `from`, recording it in etcd only if no one
    /// else (another apiserver replica) took it first. Returns where to look next time.
    async fn allocate(&mut self, labels: LabelSet, mut from: u32) -> Result<u32, IdentityError> {
        let max = self.cluster.mesh.max_local_identity();
        loop {
            while self.by_local.contains_key(&from) {
                from += 1;
            }
            let Some(id) = self.identity(from).filter(|_| from <= max) else {
                return Err(IdentityError::Exhausted { max });
            };
            let key = self.schema.identity_allocation(&self.cluster.name, from);
            let value = serde_json::to_vec(&AllocationRecord {
                labels: labels.clone(),
            })
            .expect("a map of strings serializes");
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value, None)]);
            if self.client.txn(txn).await?.succeeded() {
                self.remember(from, id, labels);
                return Ok(from + 1);
            }
            // Someone else holds this ID: learn what it is and try the next one.
            warn!(
                local = from,
                "identity already allocated elsewhere; trying the next"
            );
            let resp = self.client.get(key.as_str(), None).await?;
            if let Some(record) = resp
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice::<AllocationRecord>(kv.value()).ok())
            {
                self.remember(from, id, record.labels);
                if self.by_labels.get(&labels) == Some(&id) {
                    return Ok(from + 1);
                }
            }
            from += 1;
        }
    }
}
