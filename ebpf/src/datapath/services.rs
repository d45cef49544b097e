//! Programming services into the maps: the bank-switching write order, reading them back, and
//! cleaning up what an interrupted agent left behind.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use aya::maps::{HashMap, MapData, MapError};

use super::{Datapath, map_error};
use crate::{
    DatapathError,
    maps::{Backend, BackendSlotKey, INLINE_BACKENDS, ServiceKey, ServiceValue, names},
    service::{Frontend, Service, SessionAffinity},
};

/// Most backends one service can have (`backend_count` is a `__u16`).
pub const MAX_BACKENDS_PER_SERVICE: usize = u16::MAX as usize;

impl Datapath {
    /// Programs a service, replacing what was there for the same frontend.
    ///
    /// A service with few backends (see `INLINE_BACKENDS` in `datapath.h`) is replaced with one
    /// map update. For a larger one, the new backends go into the service's unused bank of
    /// slots; one update of the service entry then switches the count and bank together; only
    /// then are the old slots deleted. Either way a connection never sees a half-written
    /// backend set, and a removed backend gets no new connection from the moment this returns.
    pub fn upsert_service(&mut self, service: &Service) -> Result<(), DatapathError> {
        validate(service)?;
        let key = ServiceKey::new(&service.frontend);
        let old = self.services.get(&key, 0).ok();
        let mut value = ServiceValue {
            backend_count: service.backends.len() as u16, // validate() bounds it to u16
            bank: 0,
            flags: 0,
            affinity_timeout_sec: affinity_timeout_sec(service.affinity),
            inline_backends: [Backend::UNUSED; INLINE_BACKENDS],
        };
        if value.uses_slots() {
            value.bank = match old {
                Some(old) if old.uses_slots() && old.bank == 0 => 1,
                _ => 0,
            };
            for (index, backend) in service.backends.iter().enumerate() {
                let slot = BackendSlotKey {
                    service: key,
                    bank: value.bank.into(),
                    index: index as u16,
                };
                self.backend_slots
                    .insert(slot, Backend::new(*backend), 0)
                    .map_err(map_error(names::BACKEND_SLOTS, "writing a backend slot"))?;
            }
        } else {
            for (inline, backend) in value.inline_backends.iter_mut().zip(&service.backends) {
                *inline = Backend::new(*backend);
            }
        }
        self.services
            .insert(key, value, 0)
            .map_err(map_error(names::SERVICES, "publishing a service"))?;
        if let Some(old) = old {
            self.remove_slots(key, old)?;
            if old.affinity_timeout_sec != 0 {
                let kept: HashSet<Backend> =
                    service.backends.iter().map(|b| Backend::new(*b)).collect();
                self.forget_affinity(key, |backend| !kept.contains(backend))?;
            }
        }
        Ok(())
    }

    /// Stops load balancing a frontend; new connections to it go to the VIP itself again.
    pub fn delete_service(&mut self, frontend: &Frontend) -> Result<(), DatapathError> {
        let key = ServiceKey::new(frontend);
        let Ok(old) = self.services.get(&key, 0) else {
            return Ok(());
        };
        self.services
            .remove(&key)
            .map_err(map_error(names::SERVICES, "deleting a service"))?;
        self.remove_slots(key, old)?;
        if old.affinity_timeout_sec != 0 {
            self.forget_affinity(key, |_| true)?;
        }
        Ok(())
    }

    /// The services in the maps, for the agent to reconcile against after a restart.
    pub fn services(&self) -> Result<Vec<Service>, DatapathError> {
        let mut services = Vec::new();
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(map_error(names::SERVICES, "listing services"))?;
            let Some(frontend) = key.frontend() else {
                continue;
            };
            let mut backends = Vec::with_capacity(value.backend_count.into());
            if value.uses_slots() {
                for index in 0..value.backend_count {
                    let slot = BackendSlotKey {
                        service: key,
                        bank: value.bank.into(),
                        index,
                    };
                    let backend = self
                        .backend_slots
                        .get(&slot, 0)
                        .map_err(map_error(names::BACKEND_SLOTS, "reading a backend slot"))?;
                    backends.push(backend.socket_addr());
                }
            } else {
                let inline = &value.inline_backends[..value.backend_count.into()];
                backends.extend(inline.iter().map(Backend::socket_addr));
            }
            let affinity = match value.affinity_timeout_sec {
                0 => SessionAffinity::None,
                seconds => SessionAffinity::ClientIp {
                    timeout: Duration::from_secs(seconds.into()),
                },
            };
            services.push(Service {
                frontend,
                backends,
                affinity,
            });
        }
        services.sort_by_key(|service| service.frontend);
        Ok(services)
    }

    /// Deletes the slots of a service value that has just been replaced or deleted.
    fn remove_slots(
        &mut self,
        service: ServiceKey,
        value: ServiceValue,
    ) -> Result<(), DatapathError> {
        if !value.uses_slots() {
            return Ok(());
        }
        for index in 0..value.backend_count {
            let slot = BackendSlotKey {
                service,
                bank: value.bank.into(),
                index,
            };
            remove_if_present(&mut self.backend_slots, &slot, names::BACKEND_SLOTS)?;
        }
        Ok(())
    }

    fn forget_affinity(
        &mut self,
        service: ServiceKey,
        forget: impl Fn(&Backend) -> bool,
    ) -> Result<(), DatapathError> {
        let mut doomed = Vec::new();
        for entry in self.affinity.iter() {
            // An LRU entry may be evicted while we iterate; skip what vanished.
            let Ok((key, value)) = entry else { continue };
            if key.service == service && forget(&value.backend) {
                doomed.push(key);
            }
        }
        for key in doomed {
            remove_if_present(&mut self.affinity, &key, names::AFFINITY)?;
        }
        Ok(())
    }

    /// Deletes backend slots no service points at: left behind when an agent died between
    /// writing a new bank and publishing it, or between publishing and deleting the old bank.
    pub(super) fn remove_unreachable_slots(&mut self) -> Result<(), DatapathError> {
        let mut unreachable = Vec::new();
        for slot in self.backend_slots.keys() {
            let slot = slot.map_err(map_error(names::BACKEND_SLOTS, "listing backend slots"))?;
            let reachable = self.services.get(&slot.service, 0).is_ok_and(|service| {
                service.uses_slots()
                    && u16::from(service.bank) == slot.bank
                    && slot.index < service.backend_count
            });
            if !reachable {
                unreachable.push(slot);
            }
        }
        for slot in unreachable {
            remove_if_present(&mut self.backend_slots, &slot, names::BACKEND_SLOTS)?;
        }
        Ok(())
    }
}

fn validate(service: &Service) -> Result<(), DatapathError> {
    let invalid = |reason: String| DatapathError::InvalidService {
        frontend: service.frontend,
        reason,
    };
    if service.backends.len() > MAX_BACKENDS_PER_SERVICE {
        return Err(invalid(format!(
            "{} backends, at most {MAX_BACKENDS_PER_SERVICE} are supported",
            service.backends.len()
        )));
    }
    let family = |addr: &SocketAddr| addr.is_ipv4();
    if let Some(backend) = service
        .backends
        .iter()
        .find(|backend| family(backend) != family(&service.frontend.addr))
    {
        return Err(invalid(format!(
            "backend {backend} is not of the frontend's address family"
        )));
    }
    if let SessionAffinity::ClientIp { timeout } = service.affinity
        && (timeout.as_secs() == 0 || timeout.as_secs() > u64::from(u32::MAX))
    {
        return Err(invalid(format!(
            "a ClientIP affinity timeout of {timeout:?} is outside 1s..={}s",
            u32::MAX
        )));
    }
    Ok(())
}

fn affinity_timeout_sec(affinity: SessionAffinity) -> u32 {
    match affinity {
        SessionAffinity::None => 0,
        // validate() bounds it to 1..=u32::MAX.
        SessionAffinity::ClientIp { timeout } => timeout.as_secs() as u32,
    }
}

fn remove_if_present<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), DatapathError> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(error))
            if error.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(source) => Err(DatapathError::Map {
            map: name,
            action: "deleting an entry",
            source: Box::new(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Protocol;

    fn tcp_service(vip: &str, backends: &[&str]) -> Service {
        Service {
            frontend: Frontend {
                addr: vip.parse().unwrap(),
                protocol: Protocol::Tcp,
            },
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            affinity: SessionAffinity::None,
        }
    }

    #[test]
    fn a_service_needs_backends_of_its_own_family() {
        assert!(
            validate(&tcp_service(
                "10.96.0.1:80",
                &["10.0.0.1:8080", "100.64.0.9:8080"]
            ))
            .is_ok()
        );
        assert!(validate(&tcp_service("[fd00::1]:80", &["[fd00::2]:8080"])).is_ok());
        assert!(validate(&tcp_service("10.96.0.1:80", &[])).is_ok());
        let mixed = validate(&tcp_service(
            "10.96.0.1:80",
            &["10.0.0.1:8080", "[fd00::2]:8080"],
        ));
        assert!(matches!(mixed, Err(DatapathError::InvalidService { .. })));
    }

    #[test]
    fn affinity_timeouts_are_whole_seconds_the_map_can_hold() {
        let mut service = tcp_service("10.96.0.1:80", &["10.0.0.1:8080"]);
        for (timeout, ok) in [
            (Duration::from_secs(10_800), true),
            (Duration::from_millis(500), false),
            (Duration::from_secs(u64::from(u32::MAX) + 1), false),
        ] {
            service.affinity = SessionAffinity::ClientIp { timeout };
            assert_eq!(validate(&service).is_ok(), ok, "{timeout:?}");
        }
        assert_eq!(
            affinity_timeout_sec(SessionAffinity::ClientIp {
                timeout: Duration::from_secs(10_800)
            }),
            10_800
        );
    }
}
