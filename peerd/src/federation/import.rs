//! Import validation: a [`ResourceFilter`] per peer, plugged into that peer's
//! [`crate::xds::AdsClient`]. A resource failing a rule is NACKed by name with the rule's
//! reason and not stored; the rest of the response is applied, and other peers are never
//! affected (each peer has its own filter, store origin and caps).
//!
//! Rules (docs/design.md §5.3):
//! - only what a peer may export: Services named `ns/<svc>.<ns>.mesh.internal`, workloads
//!   whose every `services` key is such a name; no authorizations;
//! - cluster claims: a workload's uid starts with `<peer>//`, its `cluster_id` is the
//!   peer's cluster and its `network` the peer's network;
//! - address sanity: no unspecified, multicast or broadcast addresses (workloads, VIPs,
//!   gateways); a multi-network peer's workloads carry a `network_gateway`;
//! - caps: at most `max_resources` resources and `max_bytes` body bytes held per peer;
//! - the global memory budget ([`crate::budget`]): a resource that would grow the stored
//!   upstream state (all origins together) past the budget is refused.
//!
//! Every rejection is counted (`peerd_federation_import_rejected_total{peer_cluster,rule}`)
//! and the last ones are kept for status ([`ImportFilter::status`]). It never logs
//! resource bodies.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::naming::{is_global_hostname, is_global_key};
use super::settings::PeerPolicy;
use crate::budget::BudgetExceeded;
use crate::store::Store;
use crate::xds::client::ResourceFilter;
use crate::xds::resource::{Resource, Summary};
use crate::xds::types::ResourceType;

/// Rejections kept per peer for status.
const RECENT_REJECTIONS: usize = 32;

/// Why a peer resource was refused. `Display` is the NACK reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("peer {peer} exports no authorizations")]
    NotExportedAuthorization { peer: String },
    #[error("service hostname {hostname:?} is not an exported (*.mesh.internal) name")]
    NotExportedService { hostname: String },
    #[error(
        "workload backs {key:?}, which is not an exported (ns/<svc>.<ns>.mesh.internal) service"
    )]
    NotExportedServiceKey { key: String },
    #[error("workload backs no exported service")]
    NoExportedService,
    #[error(
        "uid {uid:?} claims another cluster than the peer {peer:?} (expected prefix \"{peer}//\")"
    )]
    UidClaimsOtherCluster { uid: String, peer: String },
    #[error("cluster_id {found:?} is not the peer's cluster {peer:?}")]
    ClusterIdMismatch { found: String, peer: String },
    #[error("network {found:?} is not the peer's network {expected:?}")]
    NetworkMismatch { found: String, expected: String },
    #[error("{field} holds a forbidden address {address}")]
    BadAddress {
        field: &'static str,
        address: IpAddr,
    },
    #[error("workload of multi-network peer {peer} has no network_gateway")]
    MissingGateway { peer: String },
    #[error("peer cap exceeded: {what} (limit {limit})")]
    CapExceeded { what: &'static str, limit: usize },
    #[error("peer {peer}: {exceeded}")]
    MemoryBudget {
        peer: String,
        exceeded: BudgetExceeded,
    },
}

impl ImportError {
    /// Metric label of the rule.
    pub fn rule(&self) -> &'static str {
        match self {
            ImportError::NotExportedAuthorization { .. }
            | ImportError::NotExportedService { .. }
            | ImportError::NotExportedServiceKey { .. }
            | ImportError::NoExportedService => "not_exported",
            ImportError::UidClaimsOtherCluster { .. }
            | ImportError::ClusterIdMismatch { .. }
            | ImportError::NetworkMismatch { .. } => "cluster_claim",
            ImportError::BadAddress { .. } | ImportError::MissingGateway { .. } => "address",
            ImportError::CapExceeded { .. } => "cap",
            ImportError::MemoryBudget { .. } => "budget",
        }
    }
}

/// One refused resource, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub name: String,
    pub rule: &'static str,
    pub reason: String,
}

/// What status shows about a peer's import.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportStatus {
    pub rejected_total: u64,
    pub recent: Vec<Rejection>,
}

/// Tally sizes below which no recount is due: recounting a small peer costs nothing
/// worth saving, and this keeps a tiny tally from recounting on every insert.
pub(crate) const MIN_TALLY_RECOUNT: usize = 1024;

#[derive(Default)]
struct Tally {
    /// Name → (body bytes, version of the peer's store view when accepted) of what this
    /// filter accepted. It may still list names the peer removed since; before a cap is
    /// enforced it is corrected from the store (see [`ImportFilter::recount`]).
    held: HashMap<(ResourceType, Arc<str>), (usize, u64)>,
    bytes: usize,
    /// Size past which the tally is recounted even under the caps. Without it, a peer
    /// whose workloads come and go under new names (pods replaced) grew the tally by
    /// each name until the count cap (100k by default), holding every removed name:
    /// found by the soak as steady heap growth. Twice the size after the last recount,
    /// so the recounts cost O(1) per insert amortized and the tally stays within about
    /// twice what the peer holds.
    recount_above: usize,
}

/// The import rules of one peer.
pub struct ImportFilter {
    policy: PeerPolicy,
    store: Arc<Store>,
    tally: Mutex<Tally>,
    status: Mutex<(u64, VecDeque<Rejection>)>,
}

impl ImportFilter {
    pub fn new(policy: PeerPolicy, store: Arc<Store>) -> Arc<ImportFilter> {
        Arc::new(ImportFilter {
            policy,
            store,
            tally: Mutex::new(Tally::default()),
            status: Mutex::new((0, VecDeque::new())),
        })
    }

    pub fn policy(&self) -> &PeerPolicy {
        &self.policy
    }

    pub fn status(&self) -> ImportStatus {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        ImportStatus {
            rejected_total: s.0,
            recent: s.1.iter().cloned().collect(),
        }
    }

    /// Checks the content rules (everything but caps).
    pub fn check_content(&self, resource: &Resource) -> Result<(), ImportError> {
        let peer = &self.policy.cluster;
        match &*resource.summary {
            Summary::Authorization(_) => {
                Err(ImportError::NotExportedAuthorization { peer: peer.clone() })
            }
            Summary::Service(s) => {
                if !is_global_hostname(&s.hostname) || !is_global_key(&resource.name) {
                    return Err(ImportError::NotExportedService {
                        hostname: s.hostname.clone(),
                    });
                }
                for (_, ip) in &s.vips {
                    sane("Service.addresses", *ip)?;
                }
                Ok(())
            }
            Summary::Workload(w) => {
                if !w
                    .uid
                    .strip_prefix(peer.as_str())
                    .is_some_and(|r| r.starts_with("//"))
                {
                    return Err(ImportError::UidClaimsOtherCluster {
                        uid: w.uid.clone(),
                        peer: peer.clone(),
                    });
                }
                if *w.cluster_id != **peer {
                    return Err(ImportError::ClusterIdMismatch {
                        found: w.cluster_id.to_string(),
                        peer: peer.clone(),
                    });
                }
                if *w.network != *self.policy.network {
                    return Err(ImportError::NetworkMismatch {
                        found: w.network.to_string(),
                        expected: self.policy.network.clone(),
                    });
                }
                if w.services.is_empty() {
                    return Err(ImportError::NoExportedService);
                }
                if let Some(key) = w.services.iter().find(|k| !is_global_key(k)) {
                    return Err(ImportError::NotExportedServiceKey {
                        key: key.to_string(),
                    });
                }
                for ip in &w.addresses {
                    sane("Workload.addresses", *ip)?;
                }
                if !self.policy.flat && !w.has_network_gateway {
                    return Err(ImportError::MissingGateway { peer: peer.clone() });
                }
                Ok(())
            }
        }
    }

    /// Checks the caps for adding or replacing `resource`, and counts it if it fits.
    fn admit(&self, resource: &Resource) -> Result<(), ImportError> {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        let key = (resource.kind, Arc::clone(&resource.name));
        let size = resource.body.len();
        let version = self.store_version();
        let fits = |t: &Tally| {
            let old = t.held.get(&key).map(|(bytes, _)| *bytes);
            let count = t.held.len() + usize::from(old.is_none());
            let bytes = t.bytes - old.unwrap_or(0) + size;
            if count > self.policy.max_resources {
                Err(ImportError::CapExceeded {
                    what: "resource count",
                    limit: self.policy.max_resources,
                })
            } else if bytes > self.policy.max_bytes {
                Err(ImportError::CapExceeded {
                    what: "bytes",
                    limit: self.policy.max_bytes,
                })
            } else {
                Ok(())
            }
        };
        if fits(&tally).is_err() {
            // The tally never sees removals; recount from what the store holds.
            let recounted = self.recount(&tally);
            *tally = recounted;
        }
        fits(&tally)?;
        if let Some((old, _)) = tally.held.insert(key, (size, version)) {
            tally.bytes -= old;
        }
        tally.bytes += size;
        if tally.held.len() > tally.recount_above.max(MIN_TALLY_RECOUNT) {
            let recounted = self.recount(&tally);
            *tally = recounted;
        }
        Ok(())
    }

    /// Names the tally holds (for tests of its bound).
    #[cfg(test)]
    pub(crate) fn tally_len(&self) -> usize {
        self.tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .held
            .len()
    }

    /// Version of the peer's store view (bumped by every applied response).
    fn store_version(&self) -> u64 {
        self.store
            .get(&self.policy.cluster)
            .map_or(0, |o| o.view.snapshot().version)
    }

    /// What the store holds for the peer, plus what was accepted from the response being
    /// checked right now (accepted at the current store version, so not applied yet).
    fn recount(&self, previous: &Tally) -> Tally {
        let mut tally = Tally::default();
        let mut version = 0;
        if let Some(origin) = self.store.get(&self.policy.cluster) {
            let snapshot = origin.view.snapshot();
            version = snapshot.version;
            for kind in ResourceType::ALL {
                for (name, r) in snapshot.resources(kind).iter() {
                    tally
                        .held
                        .insert((kind, Arc::clone(name)), (r.body.len(), version));
                    tally.bytes += r.body.len();
                }
            }
        }
        for (key, (size, accepted_at)) in &previous.held {
            if *accepted_at == version
                && let Some((old, _)) = tally.held.insert(key.clone(), (*size, version))
            {
                tally.bytes -= old;
                tally.bytes += size;
            } else if *accepted_at == version {
                tally.bytes += size;
            }
        }
        tally.recount_above = tally.held.len().saturating_mul(2);
        tally
    }

    fn record(&self, name: &str, e: &ImportError) {
        metrics::counter!("peerd_federation_import_rejected_total", "peer_cluster" => self.policy.cluster.clone(), "rule" => e.rule())
            .increment(1);
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        if s.1.len() >= RECENT_REJECTIONS {
            s.1.pop_front();
        }
        s.1.push_back(Rejection {
            name: name.to_string(),
            rule: e.rule(),
            reason: e.to_string(),
        });
    }
}

fn sane(field: &'static str, ip: IpAddr) -> Result<(), ImportError> {
    let bad = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if bad {
        Err(ImportError::BadAddress { field, address: ip })
    } else {
        Ok(())
    }
}

impl ResourceFilter for ImportFilter {
    fn check(&self, origin: &str, resource: &Resource) -> Result<(), String> {
        debug_assert_eq!(origin, self.policy.cluster);
        // The budget before the caps: a resource the caps refuse leaves at most pending
        // growth until the response is applied, while one the budget refuses must not
        // stay counted in the caps' tally.
        let result = self
            .check_content(resource)
            .and_then(|()| {
                self.store
                    .admit(origin, resource)
                    .map_err(|exceeded| ImportError::MemoryBudget {
                        peer: self.policy.cluster.clone(),
                        exceeded,
                    })
            })
            .and_then(|()| self.admit(resource));
        result.map_err(|e| {
            self.record(&resource.name, &e);
            e.to_string()
        })
    }
}
