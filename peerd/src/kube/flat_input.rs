//! The input of the flat-network sync, built from the store: what each peer exports to
//! this cluster (its workloads and its `*.mesh.internal` global services) and whether the
//! peer's stream is fully synced.
//!
//! Reads the store only. Must never write to the store or the API server (the
//! [`FlatSyncExecutor`](super::apply::FlatSyncExecutor) applies what this builds), and
//! must never build input for a peer whose Gateway is gone (its objects then leave at
//! once: removing the Gateway is the operator's explicit act). A peer whose Gateway exists
//! but whose client does not run (unusable since start) counts as not synced: its objects
//! stay.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ::kube::ResourceExt;

use super::apply::{PeerSyncState, SyncInput};
use super::flatsync::{
    EntryMemo, GLOBAL_HOST_SUFFIX, GlobalService, ImportedWorkload, PeerExports, PeerNetworkMode,
    desired_objects_reusing,
};
use super::types::{Gateway, LABEL_CLUSTER, ServiceEntryPort};
use crate::config;
use crate::store::Store;
use crate::xds::resource::{Resource, WorkloadSummary};
use crate::xds::types::ResourceType;

/// Builds the flat-network sync input from the store (what each peer exports to us).
pub struct InputBuilder {
    pub store: Arc<Store>,
    /// The peers whose xDS clients run (they follow the Gateways).
    pub peers: Vec<config::Peer>,
    pub local_network: String,
    /// `PEERING_ENABLE_FLAT_NETWORKS`.
    pub flat_networks: bool,
    /// Where the `autogenflat.*` objects live.
    pub control_namespace: String,
    /// What the previous build made, for the next one to reuse.
    pub memo: InputMemo,
}

/// What one build leaves for the next: the imported form of each workload resource and
/// the WorkloadEntry made of it. A rebuild after a burst of changes then allocates for
/// the changed workloads only, not the whole input again (see [`EntryMemo`]).
#[derive(Debug, Default)]
pub struct InputMemo {
    /// By peer cluster, then by resource name: the resource last imported (the store's
    /// own `Arc`: an unchanged resource is the same one) and its imported form.
    imported: HashMap<String, HashMap<Arc<str>, ImportedResource>>,
    entries: EntryMemo,
    pass: u64,
}

#[derive(Debug)]
struct ImportedResource {
    resource: Arc<Resource>,
    workload: Arc<ImportedWorkload>,
    pass: u64,
}

impl InputMemo {
    /// Workloads whose imported form is kept, and WorkloadEntries kept.
    pub fn len(&self) -> (usize, usize) {
        (
            self.imported.values().map(HashMap::len).sum(),
            self.entries.len(),
        )
    }

    /// The imported form of `resource` (a workload of `cluster`'s): the one made last time
    /// when the store still holds the same resource.
    fn import(
        &mut self,
        cluster: &str,
        resource: &Arc<Resource>,
        summary: &WorkloadSummary,
    ) -> Arc<ImportedWorkload> {
        let pass = self.pass;
        let of_peer = match self.imported.get_mut(cluster) {
            Some(of_peer) => of_peer,
            None => self.imported.entry(cluster.to_string()).or_default(),
        };
        if let Some(kept) = of_peer.get_mut(&resource.name)
            && Arc::ptr_eq(&kept.resource, resource)
        {
            kept.pass = pass;
            return Arc::clone(&kept.workload);
        }
        let workload = Arc::new(ImportedWorkload::from_summary(summary, ""));
        of_peer.insert(
            Arc::clone(&resource.name),
            ImportedResource {
                resource: Arc::clone(resource),
                workload: Arc::clone(&workload),
                pass,
            },
        );
        workload
    }

    /// Drops what the latest build did not use.
    fn sweep(&mut self) {
        let pass = self.pass;
        self.imported.retain(|_, of_peer| {
            of_peer.retain(|_, kept| kept.pass == pass);
            !of_peer.is_empty()
        });
    }
}

impl InputBuilder {
    /// The input for the peers in `present` (peers whose Gateway still exists).
    pub fn build(&mut self, present: &BTreeSet<String>) -> SyncInput {
        self.memo.pass += 1;
        let mut exports = Vec::new();
        let mut states = Vec::new();
        for peer in self.peers.iter().filter(|p| present.contains(&p.cluster)) {
            let origin = self.store.get(&peer.cluster);
            states.push(PeerSyncState {
                cluster: peer.cluster.clone(),
                fully_synced: origin.as_ref().is_some_and(|o| o.is_fully_synced()),
            });
            let mode =
                PeerNetworkMode::decide(&peer.network, &self.local_network, self.flat_networks);
            let mut workloads = Vec::new();
            let mut services = Vec::new();
            let mut origin_version = 0;
            if let Some(origin) = origin {
                let snapshot = origin.view.snapshot();
                origin_version = snapshot.version;
                for resource in snapshot.resources(ResourceType::Address).values() {
                    if let Some(w) = resource.as_workload() {
                        workloads.push(self.memo.import(&peer.cluster, resource, w));
                    } else if let Some(s) = resource.as_service()
                        && let Some(service) = exported_service(&s.hostname, &s.ports)
                    {
                        services.push(service);
                    }
                }
            }
            services.sort();
            tracing::debug!(peer = %peer.cluster, workloads = workloads.len(), global_services = services.len(), version = origin_version, "flat sync input");
            exports.push(PeerExports {
                cluster: peer.cluster.clone(),
                network: peer.network.clone(),
                mode,
                workloads,
                services,
            });
        }
        for cluster in present {
            if !self.peers.iter().any(|p| p.cluster == *cluster) {
                states.push(PeerSyncState {
                    cluster: cluster.clone(),
                    fully_synced: false,
                });
            }
        }
        self.memo.sweep();
        SyncInput {
            desired: desired_objects_reusing(
                &self.control_namespace,
                &exports,
                &mut self.memo.entries,
            ),
            peers: states,
        }
    }
}

/// The clusters whose peer Gateway exists (by the cluster label).
pub fn present_clusters(peer_gateways: &[Arc<Gateway>]) -> BTreeSet<String> {
    peer_gateways
        .iter()
        .filter_map(|g| g.labels().get(LABEL_CLUSTER).cloned())
        .collect()
}

/// `<svc>.<ns>.mesh.internal` with its (port, target port) pairs → a global service.
/// `None` for any other hostname.
pub fn exported_service(hostname: &str, ports: &[(u32, u32)]) -> Option<GlobalService> {
    let stem = hostname.strip_suffix(GLOBAL_HOST_SUFFIX)?;
    let (name, namespace) = stem.split_once('.')?;
    if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    let mut ports: Vec<_> = ports
        .iter()
        .map(|(port, target)| ServiceEntryPort {
            number: *port,
            name: format!("port-{port}"),
            protocol: String::new(),
            target_port: (*target != 0 && target != port).then_some(*target),
        })
        .collect();
    ports.sort();
    ports.dedup_by_key(|p| p.number);
    Some(GlobalService {
        namespace: namespace.to_string(),
        name: name.to_string(),
        ports,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn port(number: u32, target_port: Option<u32>) -> ServiceEntryPort {
        ServiceEntryPort {
            number,
            name: format!("port-{number}"),
            protocol: String::new(),
            target_port,
        }
    }

    #[test]
    fn exported_service_reads_mesh_internal_hostnames_only() {
        let s = exported_service(
            "reviews.bookinfo.mesh.internal",
            &[(9080, 9080), (443, 0), (80, 8080), (80, 9090)],
        )
        .unwrap();
        assert_eq!(
            (s.namespace.as_str(), s.name.as_str()),
            ("bookinfo", "reviews")
        );
        // Sorted by port, one entry per port, a target port only when it differs.
        assert_eq!(
            s.ports,
            [port(80, Some(8080)), port(443, None), port(9080, None)]
        );

        for other in [
            "reviews.bookinfo.svc.cluster.local",
            ".bookinfo.mesh.internal",
            "reviews..mesh.internal",
            "reviews.a.b.mesh.internal",
            "mesh.internal",
        ] {
            assert_eq!(exported_service(other, &[(80, 80)]), None, "{other}");
        }
    }

    #[test]
    fn present_clusters_are_the_cluster_labels_of_the_gateways() {
        let gateway = |labels: serde_json::Value| -> Arc<Gateway> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": "gw", "labels": labels},
                    "spec": {"gatewayClassName": "istio-remote", "listeners": []},
                }))
                .unwrap(),
            )
        };
        let present = present_clusters(&[
            gateway(json!({"topology.istio.io/cluster": "c3"})),
            gateway(json!({})),
            gateway(json!({"topology.istio.io/cluster": "c2"})),
        ]);
        assert_eq!(present.into_iter().collect::<Vec<_>>(), ["c2", "c3"]);
    }

    #[test]
    fn input_covers_present_peers_only_and_reports_their_sync() {
        let peer = |cluster: &str| config::Peer {
            cluster: cluster.into(),
            network: "net2".into(),
            address: config::PeerAddress::Ip("127.0.0.2".parse().unwrap()),
            port: 15012,
            hbone_port: 15008,
            trust_domain: format!("{cluster}.local"),
            server_identity: None,
            preferred_data_plane_service_type: config::DataPlaneServiceType::LoadBalancer,
            max_resources: config::defaults::PEER_MAX_RESOURCES,
            max_bytes: config::defaults::PEER_MAX_BYTES,
        };
        let mut builder = InputBuilder {
            store: Store::new(),
            peers: vec![peer("c2"), peer("c3")],
            local_network: "net1".into(),
            flat_networks: false,
            control_namespace: "istio-system".into(),
            memo: InputMemo::default(),
        };
        let input = builder.build(&["c2".to_string()].into());
        assert_eq!(
            input.peers,
            [PeerSyncState {
                cluster: "c2".into(),
                fully_synced: false,
            }]
        );
        assert!(builder.build(&BTreeSet::new()).peers.is_empty());
        // A Gateway whose client does not run (unusable) counts as present, not synced.
        let input = builder.build(&["c2".to_string(), "c9".to_string()].into());
        let states: Vec<(&str, bool)> = input
            .peers
            .iter()
            .map(|p| (p.cluster.as_str(), p.fully_synced))
            .collect();
        assert_eq!(states, [("c2", false), ("c9", false)]);
    }
}
