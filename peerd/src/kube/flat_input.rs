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
    GLOBAL_HOST_SUFFIX, GlobalService, ImportedWorkload, PeerExports, PeerNetworkMode,
    desired_objects, exported_names, flat_entry,
};
use super::types::{Gateway, LABEL_CLUSTER, ServiceEntryPort, WorkloadEntry};
use crate::config;
use crate::half_empty_map::HalfEmptyMap;
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
    /// The flat entries of the previous build, for the next one to reuse.
    pub memo: FlatEntryMemo,
}

/// The WorkloadEntry the previous build made of each workload of each flat peer, reused
/// while the store holds the same resource (the same `Arc`: an unchanged resource is the
/// same one) and the peer's network, its exported services and the control namespace
/// are unchanged. A hit is the value [`flat_entry`] would make again.
///
/// Why: the input is rebuilt whole after every burst of changes (every half second
/// under steady churn). Making every entry afresh allocated the full set each time (4,000
/// entries, a few MB, in the soak), and the heap's pages followed that transient, not
/// what the entries need. Per workload it keeps three pointers and the entry's name; the
/// entries themselves are those the input holds anyway.
#[derive(Debug, Default)]
pub struct FlatEntryMemo {
    control_namespace: String,
    peers: HashMap<String, PeerMemo>,
    /// Counts builds; what the latest build did not use is dropped after it.
    pass: u64,
}

#[derive(Debug, Default)]
struct PeerMemo {
    network: String,
    exported: BTreeSet<(String, String)>,
    /// One entry per remote workload, renamed by pod churn: see [`HalfEmptyMap`].
    by_resource: HalfEmptyMap<Arc<str>, MemoizedEntry>,
    /// The build that last used this peer (its entries take it when used).
    pass: u64,
}

#[derive(Debug)]
struct MemoizedEntry {
    resource: Arc<Resource>,
    /// `None`: the workload gets no entry (no IP, or backs no exported service).
    entry: Option<(String, Arc<WorkloadEntry>)>,
    pass: u64,
}

impl FlatEntryMemo {
    /// Workloads remembered (those of the latest build's flat peers).
    pub fn len(&self) -> usize {
        self.peers.values().map(|p| p.by_resource.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a build: a new pass, and nothing kept when the control namespace changed.
    fn begin(&mut self, control_namespace: &str) {
        if self.control_namespace != control_namespace {
            self.peers.clear();
            self.control_namespace = control_namespace.to_string();
        }
        self.pass += 1;
    }

    /// The memo of flat peer `cluster` for this build: emptied when what every entry of
    /// the peer is made from changed.
    fn peer(
        &mut self,
        cluster: &str,
        network: &str,
        exported: BTreeSet<(String, String)>,
    ) -> &mut PeerMemo {
        let pass = self.pass;
        let memo = self.peers.entry(cluster.to_string()).or_default();
        if memo.network != network || memo.exported != exported {
            memo.by_resource.clear();
            memo.network = network.to_string();
            memo.exported = exported;
        }
        memo.pass = pass;
        memo
    }

    /// Drops what the latest build did not use.
    fn sweep(&mut self) {
        let pass = self.pass;
        self.peers.retain(|_, peer| {
            peer.by_resource.retain(|_, kept| kept.pass == pass);
            peer.pass == pass
        });
    }
}

impl PeerMemo {
    /// The entry of `resource` (a workload of this peer's): the one made last time when
    /// the store still holds the same resource, else a new one.
    fn entry(
        &mut self,
        control_namespace: &str,
        cluster: &str,
        resource: &Arc<Resource>,
        summary: &WorkloadSummary,
    ) -> Option<(String, Arc<WorkloadEntry>)> {
        if let Some(kept) = self.by_resource.get_mut(&resource.name)
            && Arc::ptr_eq(&kept.resource, resource)
        {
            kept.pass = self.pass;
            return kept.entry.clone();
        }
        let workload = ImportedWorkload::from_summary(summary, "");
        let entry = flat_entry(
            control_namespace,
            cluster,
            &self.network,
            &workload,
            &self.exported,
        )
        .map(|(name, entry)| (name, Arc::new(entry)));
        self.by_resource.insert(
            Arc::clone(&resource.name),
            MemoizedEntry {
                resource: Arc::clone(resource),
                entry: entry.clone(),
                pass: self.pass,
            },
        );
        entry
    }
}

impl InputBuilder {
    /// The input for the peers in `present` (peers whose Gateway still exists).
    pub fn build(&mut self, present: &BTreeSet<String>) -> SyncInput {
        let memo = &mut self.memo;
        memo.begin(&self.control_namespace);
        let mut exports = Vec::new();
        let mut flat_entries = Vec::new();
        let mut states = Vec::new();
        for peer in self.peers.iter().filter(|p| present.contains(&p.cluster)) {
            let origin = self.store.get(&peer.cluster);
            states.push(PeerSyncState {
                cluster: peer.cluster.clone(),
                fully_synced: origin.as_ref().is_some_and(|o| o.is_fully_synced()),
            });
            let mode =
                PeerNetworkMode::decide(&peer.network, &self.local_network, self.flat_networks);
            let mut workloads = 0;
            let mut services = Vec::new();
            let mut origin_version = 0;
            if let Some(origin) = origin {
                let snapshot = origin.view.snapshot();
                origin_version = snapshot.version;
                let addresses = snapshot.resources(ResourceType::Address);
                for resource in addresses.values() {
                    if resource.as_workload().is_some() {
                        workloads += 1;
                    } else if let Some(s) = resource.as_service()
                        && let Some(service) = exported_service(&s.hostname, &s.ports)
                    {
                        services.push(service);
                    }
                }
                services.sort();
                // A multi-network peer's workloads make no object: its services do. A
                // flat peer's entries depend on the services it exports, hence a second
                // pass once they are known.
                if mode == PeerNetworkMode::Flat {
                    let of_peer =
                        memo.peer(&peer.cluster, &peer.network, exported_names(&services));
                    for resource in addresses.values() {
                        if let Some(w) = resource.as_workload() {
                            flat_entries.extend(of_peer.entry(
                                &self.control_namespace,
                                &peer.cluster,
                                resource,
                                w,
                            ));
                        }
                    }
                }
            }
            tracing::debug!(peer = %peer.cluster, workloads, global_services = services.len(), version = origin_version, "flat sync input");
            exports.push(PeerExports {
                cluster: peer.cluster.clone(),
                network: peer.network.clone(),
                mode,
                // Flat peers' entries come from the memo, added below.
                workloads: Vec::new(),
                services,
            });
        }
        memo.sweep();
        for cluster in present {
            if !self.peers.iter().any(|p| p.cluster == *cluster) {
                states.push(PeerSyncState {
                    cluster: cluster.clone(),
                    fully_synced: false,
                });
            }
        }
        let mut desired = desired_objects(&self.control_namespace, &exports);
        desired.workload_entries.extend(flat_entries);
        SyncInput {
            desired,
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
    use crate::kube::flatsync::DesiredObjects;
    use crate::proto::istio::workload;

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

    fn peer_on(cluster: &str, network: &str) -> config::Peer {
        config::Peer {
            cluster: cluster.into(),
            network: network.into(),
            address: config::PeerAddress::Ip("127.0.0.2".parse().unwrap()),
            port: 15012,
            hbone_port: 15008,
            trust_domain: format!("{cluster}.local"),
            server_identity: None,
            preferred_data_plane_service_type: config::DataPlaneServiceType::LoadBalancer,
            max_resources: config::defaults::PEER_MAX_RESOURCES,
            max_bytes: config::defaults::PEER_MAX_BYTES,
        }
    }

    fn flat_peer(cluster: &str) -> config::Peer {
        peer_on(cluster, "net1")
    }

    #[test]
    fn input_covers_present_peers_only_and_reports_their_sync() {
        let peer = |cluster: &str| peer_on(cluster, "net2");
        let mut builder = InputBuilder {
            store: Store::new(),
            peers: vec![peer("c2"), peer("c3")],
            local_network: "net1".into(),
            flat_networks: false,
            control_namespace: "istio-system".into(),
            memo: FlatEntryMemo::default(),
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

    fn pod(name: &str, ip: [u8; 4], services: &[&str]) -> Arc<Resource> {
        let services = services
            .iter()
            .map(|svc| {
                (
                    format!("default/{svc}.default.mesh.internal"),
                    workload::PortList::default(),
                )
            })
            .collect();
        Arc::new(
            Resource::workload(&workload::Workload {
                uid: format!("c2//Pod/default/{name}"),
                name: name.into(),
                namespace: "default".into(),
                network: "net1".into(),
                service_account: "sa".into(),
                addresses: vec![ip.to_vec()],
                services,
                ..Default::default()
            })
            .unwrap(),
        )
    }

    fn global_service(name: &str) -> Arc<Resource> {
        Arc::new(
            Resource::service(&workload::Service {
                name: name.into(),
                namespace: "default".into(),
                hostname: format!("{name}.default.mesh.internal"),
                ports: vec![workload::Port {
                    service_port: 80,
                    target_port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .unwrap(),
        )
    }

    /// What the input builder builds, made from scratch by the reconciler alone.
    fn fresh(store: &Store, builder: &InputBuilder) -> DesiredObjects {
        let snapshot = store.get("c2").unwrap().view.snapshot();
        let mut exports = PeerExports {
            cluster: "c2".into(),
            network: "net1".into(),
            mode: PeerNetworkMode::Flat,
            workloads: Vec::new(),
            services: Vec::new(),
        };
        for resource in snapshot.resources(ResourceType::Address).values() {
            if let Some(w) = resource.as_workload() {
                exports
                    .workloads
                    .push(ImportedWorkload::from_summary(w, ""));
            } else if let Some(s) = resource.as_service() {
                exports
                    .services
                    .extend(exported_service(&s.hostname, &s.ports));
            }
        }
        exports.services.sort();
        desired_objects(&builder.control_namespace, &[exports])
    }

    /// The memo changes what a rebuild allocates, never what it yields.
    #[test]
    fn a_rebuild_reuses_the_entries_of_unchanged_workloads_and_equals_a_fresh_build() {
        let store = Store::new();
        let mut builder = InputBuilder {
            store: Arc::clone(&store),
            peers: vec![flat_peer("c2")],
            local_network: "net1".into(),
            flat_networks: true,
            control_namespace: "istio-system".into(),
            memo: FlatEntryMemo::default(),
        };
        let present: BTreeSet<String> = ["c2".to_string()].into();
        let entry = |input: &SyncInput, pod: &str| {
            let name = format!(".default.{pod}.");
            input
                .desired
                .workload_entries
                .iter()
                .find(|(n, _)| n.contains(&name))
                .map(|(_, e)| Arc::clone(e))
                .unwrap()
        };
        let same = |input: &SyncInput, builder: &InputBuilder| {
            assert_eq!(
                format!("{:?}", input.desired),
                format!("{:?}", fresh(&store, builder))
            );
        };
        store.apply(
            "c2",
            ResourceType::Address,
            vec![
                global_service("svc1"),
                pod("a", [127, 2, 0, 1], &["svc1"]),
                pod("b", [127, 2, 0, 2], &["svc1"]),
                // Backs no exported service: no entry, still remembered as such.
                pod("c", [127, 2, 0, 3], &["other"]),
            ],
            vec![],
        );
        let first = builder.build(&present);
        same(&first, &builder);
        assert_eq!(first.desired.workload_entries.len(), 2);
        assert_eq!(builder.memo.len(), 3);

        // b restarts with another IP; a is untouched; c leaves.
        store.apply(
            "c2",
            ResourceType::Address,
            vec![pod("b", [127, 2, 0, 9], &["svc1"])],
            vec![Arc::from("c2//Pod/default/c")],
        );
        let second = builder.build(&present);
        same(&second, &builder);
        assert!(Arc::ptr_eq(&entry(&first, "a"), &entry(&second, "a")));
        assert!(!Arc::ptr_eq(&entry(&first, "b"), &entry(&second, "b")));
        assert_eq!(entry(&second, "b").spec.address, "127.2.0.9");
        assert_eq!(builder.memo.len(), 2, "c left the store, so the memo");

        // The peer now exports svc2 too, which a backs: every entry of the peer is
        // made again (a's under a new name).
        store.apply(
            "c2",
            ResourceType::Address,
            vec![
                global_service("svc2"),
                pod("a", [127, 2, 0, 1], &["svc1", "svc2"]),
            ],
            vec![],
        );
        let third = builder.build(&present);
        same(&third, &builder);
        assert!(!Arc::ptr_eq(&entry(&second, "b"), &entry(&third, "b")));

        // Another control namespace: nothing reused.
        builder.control_namespace = "peerd-system".into();
        let elsewhere = builder.build(&present);
        same(&elsewhere, &builder);
        assert_eq!(
            entry(&elsewhere, "b").metadata.namespace.as_deref(),
            Some("peerd-system")
        );

        // The peer's Gateway is gone: its part of the memo goes with it.
        assert!(
            builder
                .build(&BTreeSet::new())
                .desired
                .workload_entries
                .is_empty()
        );
        assert!(builder.memo.is_empty());
    }
}
