//! Merge conflicts: what the merge had to decide between clusters, kept until the
//! conflicting resource changes, exposed for status ([`Conflicts::list`]) and as the gauge
//! `peerd_federation_conflicts{peer_cluster,kind}` (the number of current conflicts whose
//! losing side is that cluster).
//!
//! Owns only the bookkeeping; the rules live in [`super::merge`]. Never holds unbounded
//! labels (no names or IPs in metric labels).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// The kind of a conflict (metric label `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Two clusters sent a resource under the same name (e.g. a workload uid).
    DuplicateName,
    /// Two clusters' workloads claim the same `network/IP` (flat peers).
    PodIp,
    /// The same service port maps to different target ports in two clusters.
    Port,
    /// A VIP of a global service is also a VIP of another service.
    Vip,
}

impl ConflictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::DuplicateName => "duplicate_name",
            ConflictKind::PodIp => "pod_ip",
            ConflictKind::Port => "port",
            ConflictKind::Vip => "vip",
        }
    }
}

/// One conflict: `loser` (a cluster) had `name` overridden, in part or whole, by `winner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub kind: ConflictKind,
    /// The merged resource the conflict is about.
    pub name: String,
    /// The cluster whose contribution was dropped.
    pub loser: String,
    /// The cluster (or resource) that kept it.
    pub winner: String,
    pub detail: String,
}

/// Current conflicts, keyed by the merged resource they were found while computing.
#[derive(Default)]
pub struct Conflicts {
    by_name: Mutex<BTreeMap<Arc<str>, Vec<Conflict>>>,
    counts: Mutex<HashMap<(String, ConflictKind), u64>>,
}

impl Conflicts {
    pub fn new() -> Arc<Conflicts> {
        Arc::new(Conflicts::default())
    }

    /// Replaces the conflicts recorded for `name` (empty = none any more).
    pub fn set(&self, name: &Arc<str>, now: Vec<Conflict>) {
        let mut by_name = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let old = if now.is_empty() {
            by_name.remove(name).unwrap_or_default()
        } else {
            by_name
                .insert(Arc::clone(name), now.clone())
                .unwrap_or_default()
        };
        if old == now {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for c in &old {
            let n = counts.entry((c.loser.clone(), c.kind)).or_default();
            *n = n.saturating_sub(1);
            publish(&c.loser, c.kind, *n);
        }
        for c in &now {
            if !old.contains(c) {
                tracing::warn!(kind = c.kind.as_str(), name = %c.name, loser = %c.loser, winner = %c.winner, detail = %c.detail, "federation: merge conflict");
            }
            let n = counts.entry((c.loser.clone(), c.kind)).or_default();
            *n += 1;
            publish(&c.loser, c.kind, *n);
        }
    }

    /// Every current conflict, ordered by resource name.
    pub fn list(&self) -> Vec<Conflict> {
        self.by_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// How many current conflicts have `cluster` as the losing side and are of `kind`.
    pub fn count(&self, cluster: &str, kind: ConflictKind) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(cluster.to_string(), kind))
            .copied()
            .unwrap_or(0)
    }
}

fn publish(cluster: &str, kind: ConflictKind, n: u64) {
    metrics::gauge!("peerd_federation_conflicts", "peer_cluster" => cluster.to_string(), "kind" => kind.as_str())
        .set(n as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(loser: &str, kind: ConflictKind) -> Conflict {
        Conflict {
            kind,
            name: "x".into(),
            loser: loser.into(),
            winner: "c1".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn gauge_counts_current_conflicts_per_losing_cluster_and_kind() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let conflicts = Conflicts::new();
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        metrics::with_local_recorder(&recorder, || {
            conflicts.set(&a, vec![conflict("c2", ConflictKind::PodIp)]);
            conflicts.set(&b, vec![conflict("c2", ConflictKind::PodIp)]);
        });
        let text = handle.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("peerd_federation_conflicts{") && l.contains("kind=\"pod_ip\""))
            .unwrap_or_else(|| panic!("no gauge in:\n{text}"));
        assert!(line.contains("peer_cluster=\"c2\""), "{line}");
        assert!(line.ends_with(" 2"), "{line}");
        assert_eq!(conflicts.list().len(), 2);
        metrics::with_local_recorder(&recorder, || conflicts.set(&a, Vec::new()));
        assert_eq!(conflicts.count("c2", ConflictKind::PodIp), 1);
        let text = handle.render();
        assert!(
            text.lines()
                .any(|l| l.starts_with("peerd_federation_conflicts{") && l.ends_with(" 1")),
            "{text}"
        );
    }
}
