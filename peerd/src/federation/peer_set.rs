//! The peers federation knows right now ([`PeerSet`]): their policies, shared by the
//! merge status, the import filters and the selector of the shared listener. Peers come
//! and go at runtime (live `istio-remote` Gateways, a SIGHUP of the config file).
//!
//! Owns the list only; it must never touch the store (withdrawing a removed peer's state
//! is [`super::Federation::withdraw_peer`]'s).

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::settings::PeerPolicy;

/// The current peer policies, replaced as a whole on every change (readers never lock).
#[derive(Default)]
pub struct PeerSet {
    peers: ArcSwap<Vec<PeerPolicy>>,
}

impl PeerSet {
    pub fn new(peers: Vec<PeerPolicy>) -> Arc<PeerSet> {
        Arc::new(PeerSet {
            peers: ArcSwap::from_pointee(peers),
        })
    }

    /// The peers now, in the order they were added.
    pub fn load(&self) -> Arc<Vec<PeerPolicy>> {
        self.peers.load_full()
    }

    /// Adds `policy`, or replaces the policy of the same cluster in place.
    pub fn upsert(&self, policy: PeerPolicy) {
        self.peers.rcu(|peers| {
            let mut next = Vec::clone(peers);
            match next.iter_mut().find(|p| p.cluster == policy.cluster) {
                Some(existing) => *existing = policy.clone(),
                None => next.push(policy.clone()),
            }
            next
        });
    }

    /// Forgets `cluster`; whether it was known.
    pub fn remove(&self, cluster: &str) -> bool {
        let before = self.peers.rcu(|peers| {
            peers
                .iter()
                .filter(|p| p.cluster != cluster)
                .cloned()
                .collect::<Vec<_>>()
        });
        before.iter().any(|p| p.cluster == cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(cluster: &str, network: &str) -> PeerPolicy {
        PeerPolicy {
            cluster: cluster.into(),
            network: network.into(),
            identity: crate::identity::spiffe::SpiffeId::new(
                &format!("{cluster}.local"),
                "istio-system",
                "peerd",
            )
            .unwrap(),
            flat: false,
            prefers_node_port: false,
            max_resources: 10,
            max_bytes: 1000,
        }
    }

    #[test]
    fn upsert_replaces_in_place_and_remove_says_whether_it_was_known() {
        let set = PeerSet::new(vec![policy("c2", "n2")]);
        set.upsert(policy("c3", "n3"));
        set.upsert(policy("c2", "n22"));
        let names: Vec<(String, String)> = set
            .load()
            .iter()
            .map(|p| (p.cluster.clone(), p.network.clone()))
            .collect();
        assert_eq!(
            names,
            [("c2".into(), "n22".into()), ("c3".into(), "n3".into())]
        );
        assert!(set.remove("c2"));
        assert!(!set.remove("c2"), "already gone");
        assert_eq!(set.load().len(), 1);
    }
}
