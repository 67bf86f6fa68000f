//! The sandbox's view of itself: each cluster's status read from its peerd's debug API
//! (the same API `peerd status` uses), written as JSON (`--status-json`) and shown as a
//! table. Reading status never changes anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::sandbox::layout::ClusterLayout;
use peerd::proto::debug::v1 as debug;
use peerd::proto::debug::v1::debug_client::DebugClient;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub workloads: u64,
    pub services: u64,
    pub authorizations: u64,
}

impl From<Option<debug::ResourceCounts>> for Counts {
    fn from(c: Option<debug::ResourceCounts>) -> Counts {
        let c = c.unwrap_or_default();
        Counts {
            workloads: c.workloads,
            services: c.services,
            authorizations: c.authorizations,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ConditionStatus {
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ProbeStatus {
    pub mode: String,
    pub attempts: u64,
    pub established: u64,
    pub refused: u64,
    pub timeouts: u64,
    pub aborted: u64,
    pub syn_retransmits: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl From<Option<debug::ProbeStats>> for ProbeStatus {
    fn from(p: Option<debug::ProbeStats>) -> ProbeStatus {
        let p = p.unwrap_or_default();
        ProbeStatus {
            mode: p.mode,
            attempts: p.attempts,
            established: p.established,
            refused: p.refused,
            timeouts: p.timeouts,
            aborted: p.aborted,
            syn_retransmits: p.syn_retransmits,
            p50_us: p.p50_us,
            p99_us: p.p99_us,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub cluster: String,
    pub network: String,
    pub flat: bool,
    pub conditions: BTreeMap<String, ConditionStatus>,
    pub imported: Counts,
    pub probe: ProbeStatus,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ClusterStatus {
    pub name: String,
    pub network: String,
    pub xds_address: String,
    /// The cluster's emulated Kubernetes API server (`kubectl --server <kube_api>`).
    pub kube_api: String,
    pub peerd_running: bool,
    pub ready: bool,
    /// Why the status could not be read (peerd down or starting).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub peers: Vec<PeerStatus>,
    pub downstream: Counts,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SandboxStatus {
    pub state_dir: String,
    pub elapsed_seconds: u64,
    pub clusters: Vec<ClusterStatus>,
    /// Faults injected so far (`--fault`, or commands), active or lifted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<crate::sandbox::faults::FaultStatus>,
}

/// Reads one cluster's status from its debug API.
pub async fn read_cluster(layout: &ClusterLayout, running: bool) -> ClusterStatus {
    let mut status = ClusterStatus {
        name: layout.name.clone(),
        network: layout.network.clone(),
        xds_address: layout.xds().to_string(),
        kube_api: layout.kube_api_url(),
        peerd_running: running,
        ..ClusterStatus::default()
    };
    if !running {
        status.error = "peerd is stopped".into();
        return status;
    }
    if let Err(e) = fill(layout, &mut status).await {
        status.error = format!("{e:#}");
    }
    status
}

async fn fill(layout: &ClusterLayout, status: &mut ClusterStatus) -> anyhow::Result<()> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", layout.debug()))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let mut client = DebugClient::new(endpoint.connect().await?)
        .max_decoding_message_size(peerd::debug::client::MAX_MESSAGE_BYTES);
    let info = client
        .get_server_info(debug::GetServerInfoRequest {})
        .await?
        .into_inner();
    status.ready = info.ready;
    status.downstream = info.merged.into();
    let peers = client
        .list_peers(debug::ListPeersRequest {})
        .await?
        .into_inner()
        .peers;
    status.peers = peers
        .into_iter()
        .map(|p| PeerStatus {
            cluster: p.cluster,
            network: p.network,
            flat: p.flat,
            conditions: p
                .conditions
                .into_iter()
                .map(|c| {
                    (
                        c.r#type,
                        ConditionStatus {
                            status: c.status,
                            reason: c.reason,
                            message: c.message,
                        },
                    )
                })
                .collect(),
            imported: p.imported.into(),
            probe: p.hbone_probe.into(),
        })
        .collect();
    Ok(())
}

/// The condition types shown in the table, in order, with short headers.
const TABLE_CONDITIONS: &[(&str, &str)] = &[
    ("gloo.solo.io/PeerConnected", "CONNECTED"),
    ("gloo.solo.io/PeeringSucceeded", "SYNCED"),
    ("gloo.solo.io/PeerDataPlaneProgrammed", "DATAPLANE"),
];

/// A fixed-width table: one line per (cluster, peer).
pub fn table(status: &SandboxStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<11} {:<10} {:<6} {:<11} {:<5} {:<22} {:<22} {:<26} {:>8} {:>9}",
        "CLUSTER",
        "PEER",
        "FLAT",
        "NETWORK",
        "READY",
        "CONNECTED",
        "SYNCED",
        "DATAPLANE",
        "IMPORTED",
        "SERVED"
    );
    for c in &status.clusters {
        if c.peers.is_empty() {
            let _ = writeln!(
                s,
                "{:<11} {:<10} {:<6} {:<11} {:<5} {}",
                c.name,
                "-",
                "-",
                c.network,
                yes_no(c.ready),
                if c.error.is_empty() {
                    "(no peers reported)"
                } else {
                    &c.error
                }
            );
            continue;
        }
        for p in &c.peers {
            let cond = |t: &str| {
                p.conditions
                    .get(t)
                    .map(|c| {
                        if c.status == "True" {
                            "True".to_string()
                        } else {
                            format!("{} {}", c.status, c.reason)
                        }
                    })
                    .unwrap_or_else(|| "-".into())
            };
            let served = c.downstream.workloads + c.downstream.services;
            let _ = writeln!(
                s,
                "{:<11} {:<10} {:<6} {:<11} {:<5} {:<22} {:<22} {:<26} {:>8} {:>9}",
                c.name,
                p.cluster,
                yes_no(p.flat),
                p.network,
                yes_no(c.ready),
                cond(TABLE_CONDITIONS[0].0),
                cond(TABLE_CONDITIONS[1].0),
                cond(TABLE_CONDITIONS[2].0),
                p.imported.workloads + p.imported.services,
                served
            );
        }
    }
    s
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
