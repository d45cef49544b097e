//! Who is who in a mesh: cluster names, cluster IDs and the identity IDs derived from them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest cluster name we accept (Cilium's rule, so names move between the two unchanged).
pub const MAX_CLUSTER_NAME_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster name is empty")]
    EmptyName,
    #[error(
        "cluster name {name:?} is {len} characters long; at most {MAX_CLUSTER_NAME_LEN} are allowed"
    )]
    NameTooLong { name: String, len: usize },
    #[error(
        "cluster name {0:?} is not valid: use lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    InvalidName(String),
    #[error(
        "cluster ID {id} is out of range: it must be between 1 and {max} (the mesh allows {max} connected clusters)"
    )]
    IdOutOfRange { id: u32, max: u16 },
    #[error(
        "max connected clusters must be 255 or 511, not {0} (511 halves the identities each cluster can allocate)"
    )]
    InvalidMaxConnectedClusters(u32),
    #[error("local identity {local} is out of range: this mesh allows 1..={max} per cluster")]
    LocalIdentityOutOfRange { local: u32, max: u32 },
    #[error(
        "identity {id} does not belong to any cluster of this mesh (its cluster bits decode to {cluster_bits})"
    )]
    IdentityWithoutCluster { id: u32, cluster_bits: u32 },
}

/// A cluster's name: `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 32 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(name: impl Into<String>) -> Result<Self, ClusterError> {
        let name = name.into();
        validate_cluster_name(&name)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_cluster_name(name: &str) -> Result<(), ClusterError> {
    if name.is_empty() {
        return Err(ClusterError::EmptyName);
    }
    let len = name.chars().count();
    if len > MAX_CLUSTER_NAME_LEN {
        return Err(ClusterError::NameTooLong {
            name: name.to_owned(),
            len,
        });
    }
    let allowed = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = name.as_bytes();
    let inner_ok = bytes.iter().all(|&c| allowed(c) || c == b'-');
    let ends_ok = allowed(bytes[0]) && allowed(bytes[bytes.len() - 1]);
    if !(inner_ok && ends_ok) {
        return Err(ClusterError::InvalidName(name.to_owned()));
    }
    Ok(())
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClusterName {
    type Err = ClusterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for ClusterName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// How many clusters one mesh may connect. It decides the range of cluster IDs and how the
/// 24-bit identity space is split between the cluster ID and the cluster-local identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(try_from = "u32", into = "u32")]
pub enum MaxConnectedClusters {
    /// Cluster IDs 1..=255, 16 bits of cluster-local identity.
    #[default]
    Max255,
    /// Cluster IDs 1..=511, 15 bits of cluster-local identity.
    Max511,
}

impl MaxConnectedClusters {
    pub fn max_cluster_id(self) -> u16 {
        match self {
            Self::Max255 => 255,
            Self::Max511 => 511,
        }
    }

    /// Bits of an identity ID below the cluster ID.
    pub fn local_identity_bits(self) -> u32 {
        match self {
            Self::Max255 => 16,
            Self::Max511 => 15,
        }
    }

    pub fn max_local_identity(self) -> u32 {
        (1 << self.local_identity_bits()) - 1
    }
}

impl TryFrom<u32> for MaxConnectedClusters {
    type Error = ClusterError;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        match v {
            255 => Ok(Self::Max255),
            511 => Ok(Self::Max511),
            other => Err(ClusterError::InvalidMaxConnectedClusters(other)),
        }
    }
}

impl From<MaxConnectedClusters> for u32 {
    fn from(m: MaxConnectedClusters) -> u32 {
        u32::from(m.max_cluster_id())
    }
}

/// A cluster's numeric ID, unique in the mesh: 1..=255, or 1..=511 when the mesh allows 511.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterId(u16);

impl ClusterId {
    pub fn new(id: u32, mesh: MaxConnectedClusters) -> Result<Self, ClusterError> {
        let max = mesh.max_cluster_id();
        if id == 0 || id > u32::from(max) {
            return Err(ClusterError::IdOutOfRange { id, max });
        }
        Ok(Self(id as u16))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A numeric security identity, unique across the mesh because the owning cluster's ID sits in
/// the high bits: `cluster_id << local_bits | local_id` (16 local bits, or 15 with 511 clusters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdentityId(u32);

impl IdentityId {
    pub fn new(
        cluster: ClusterId,
        local: u32,
        mesh: MaxConnectedClusters,
    ) -> Result<Self, ClusterError> {
        let max = mesh.max_local_identity();
        if local == 0 || local > max {
            return Err(ClusterError::LocalIdentityOutOfRange { local, max });
        }
        Ok(Self(
            (u32::from(cluster.get()) << mesh.local_identity_bits()) | local,
        ))
    }

    /// Reads a raw identity ID, checking that its cluster bits name a valid cluster.
    pub fn from_raw(id: u32, mesh: MaxConnectedClusters) -> Result<Self, ClusterError> {
        let cluster_bits = id >> mesh.local_identity_bits();
        ClusterId::new(cluster_bits, mesh)
            .map_err(|_| ClusterError::IdentityWithoutCluster { id, cluster_bits })?;
        let local = id & mesh.max_local_identity();
        if local == 0 {
            return Err(ClusterError::LocalIdentityOutOfRange {
                local,
                max: mesh.max_local_identity(),
            });
        }
        Ok(Self(id))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    pub fn cluster_id(self, mesh: MaxConnectedClusters) -> ClusterId {
        ClusterId((self.0 >> mesh.local_identity_bits()) as u16)
    }

    pub fn local_id(self, mesh: MaxConnectedClusters) -> u32 {
        self.0 & mesh.max_local_identity()
    }
}

impl fmt::Display for IdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_follow_ciliums_rule() {
        for good in ["a", "east", "eu-west-1", "0", "a1-b2", &"x".repeat(32)] {
            assert!(ClusterName::new(good).is_ok(), "{good} should be valid");
        }
        assert_eq!(ClusterName::new(""), Err(ClusterError::EmptyName));
        assert!(matches!(
            ClusterName::new("x".repeat(33)),
            Err(ClusterError::NameTooLong { len: 33, .. })
        ));
        for bad in ["-a", "a-", "East", "a_b", "a.b", "a b", "é"] {
            assert!(
                matches!(ClusterName::new(bad), Err(ClusterError::InvalidName(_))),
                "{bad} should be invalid"
            );
        }
    }

    #[test]
    fn cluster_id_range_depends_on_the_mesh_setting() {
        let m255 = MaxConnectedClusters::Max255;
        let m511 = MaxConnectedClusters::Max511;
        assert!(ClusterId::new(0, m255).is_err());
        assert!(ClusterId::new(1, m255).is_ok());
        assert!(ClusterId::new(255, m255).is_ok());
        assert_eq!(
            ClusterId::new(256, m255),
            Err(ClusterError::IdOutOfRange { id: 256, max: 255 })
        );
        assert!(ClusterId::new(511, m511).is_ok());
        assert!(ClusterId::new(512, m511).is_err());
        assert!(MaxConnectedClusters::try_from(300).is_err());
    }

    #[test]
    fn identities_carry_the_cluster_id_in_the_high_bits() {
        let m = MaxConnectedClusters::Max255;
        let c7 = ClusterId::new(7, m).unwrap();
        let id = IdentityId::new(c7, 300, m).unwrap();
        assert_eq!(id.get(), (7 << 16) | 300);
        assert_eq!(id.cluster_id(m), c7);
        assert_eq!(id.local_id(m), 300);
        assert_eq!(IdentityId::from_raw(id.get(), m).unwrap(), id);
        // Two clusters allocating the same local number never collide.
        let c8 = ClusterId::new(8, m).unwrap();
        assert_ne!(IdentityId::new(c8, 300, m).unwrap(), id);

        let m511 = MaxConnectedClusters::Max511;
        let c511 = ClusterId::new(511, m511).unwrap();
        let id = IdentityId::new(c511, 0x7fff, m511).unwrap();
        assert_eq!(id.get(), (511 << 15) | 0x7fff);
        assert!(id.get() < 1 << 24, "identities stay within 24 bits");
        assert!(IdentityId::new(c511, 0x8000, m511).is_err());
        assert!(IdentityId::from_raw(300, m).is_err(), "cluster bits 0");
    }
}
