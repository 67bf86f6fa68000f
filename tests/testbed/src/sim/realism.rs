//! The fields istiod 1.28–1.30 sends beyond the basics, for a share of a population:
//! namespace waypoints (a `waypoint` Service and its one-pod Deployment per chosen
//! namespace), waypoint references on services and workloads (by hostname or by VIP,
//! single or weighted), load balancing, IP families, canonical and visibility flags,
//! CIDR-shaped VIPs, workload capacity and network mode, and dry-run authorizations.
//!
//! Decisions come from their own random stream (seeded from the population's seed), so a
//! share of 0 leaves the rest of the population byte-for-byte what it was, and the same
//! seed and share give the same output. Owns only these choices; where addresses come
//! from and how resources are encoded stays in [`super::population`].

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use peerd::proto::istio::workload;

/// Mixed into the population seed for the realism stream.
const REALISM_SEED: u64 = 0x5eed_f1de_11e7_a115;

/// The waypoint's HBONE port (what istiod puts in `hbone_mtls_port`).
pub const WAYPOINT_HBONE_PORT: u32 = 15008;

/// The name of every namespace waypoint (`istioctl waypoint apply` default), the same in
/// every cluster, as Istio's multicluster waypoints require.
pub const WAYPOINT_NAME: &str = "waypoint";

/// The random stream of realism decisions for `seed`.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ REALISM_SEED)
}

/// How a resource names its waypoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaypointRef {
    /// `GatewayAddress.hostname` = the waypoint Service's namespace/hostname.
    Hostname(usize),
    /// `GatewayAddress.address` = the waypoint Service's VIP (hostname if headless).
    Address(usize),
}

impl WaypointRef {
    pub fn service(self) -> usize {
        match self {
            WaypointRef::Hostname(s) | WaypointRef::Address(s) => s,
        }
    }
}

/// Extra Service fields (all default: a plain Service).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceExtras {
    pub waypoint: Option<WaypointRef>,
    /// Weighted waypoints: (waypoint, weight).
    pub weighted_waypoints: Vec<(WaypointRef, u32)>,
    pub load_balancing: Option<workload::LoadBalancing>,
    pub ip_families: i32,
    pub canonical: bool,
    pub visibility: i32,
    /// Prefix length sent with the VIP (`Some(32)`: a one-address CIDR).
    pub vip_length: Option<u32>,
}

/// Extra Workload fields of a Deployment's pods.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkloadExtras {
    pub waypoint: Option<WaypointRef>,
    pub capacity: Option<u32>,
    pub network_mode: i32,
}

/// Draws the extras of one ordinary Service; `waypoint`: the namespace's waypoint, if any.
pub fn service_extras(rng: &mut StdRng, share: f64, waypoint: Option<usize>) -> ServiceExtras {
    if share <= 0.0 || !rng.random_bool(share) {
        return ServiceExtras::default();
    }
    let mut extras = ServiceExtras {
        load_balancing: rng.random_bool(0.5).then(|| workload::LoadBalancing {
            routing_preference: vec![
                workload::load_balancing::Scope::Network as i32,
                workload::load_balancing::Scope::Region as i32,
                workload::load_balancing::Scope::Zone as i32,
            ],
            mode: if rng.random_bool(0.5) {
                workload::load_balancing::Mode::Failover
            } else {
                workload::load_balancing::Mode::Strict
            } as i32,
            health_policy: if rng.random_bool(0.3) {
                workload::load_balancing::HealthPolicy::AllowAll
            } else {
                workload::load_balancing::HealthPolicy::OnlyHealthy
            } as i32,
        }),
        ip_families: workload::IpFamilies::Ipv4Only as i32,
        canonical: rng.random_bool(0.5),
        visibility: if rng.random_bool(0.1) {
            workload::service::Visibility::Namespace as i32
        } else {
            workload::service::Visibility::Public as i32
        },
        vip_length: rng.random_bool(0.3).then_some(32),
        ..ServiceExtras::default()
    };
    if let Some(w) = waypoint
        && rng.random_bool(0.7)
    {
        let reference = if rng.random_bool(0.5) {
            WaypointRef::Address(w)
        } else {
            WaypointRef::Hostname(w)
        };
        if rng.random_bool(0.2) {
            extras.weighted_waypoints = vec![(reference, 100)];
        } else {
            extras.waypoint = Some(reference);
        }
    }
    extras
}

/// Draws the extras of one ordinary Deployment's pods.
pub fn workload_extras(rng: &mut StdRng, share: f64, waypoint: Option<usize>) -> WorkloadExtras {
    if share <= 0.0 || !rng.random_bool(share) {
        return WorkloadExtras::default();
    }
    WorkloadExtras {
        waypoint: waypoint
            .filter(|_| rng.random_bool(0.3))
            .map(WaypointRef::Hostname),
        capacity: rng.random_bool(0.5).then(|| rng.random_range(1..=4)),
        network_mode: if rng.random_bool(0.1) {
            workload::NetworkMode::HostNetwork as i32
        } else {
            workload::NetworkMode::Standard as i32
        },
    }
}

/// Whether an authorization policy is sent as dry-run.
pub fn dry_run(rng: &mut StdRng, share: f64) -> bool {
    share > 0.0 && rng.random_bool(share * 0.5)
}

/// The ports of a waypoint Service: HBONE, app protocol unset (as istiod sends it).
pub fn waypoint_ports() -> Vec<workload::Port> {
    vec![workload::Port {
        service_port: WAYPOINT_HBONE_PORT,
        target_port: WAYPOINT_HBONE_PORT,
        app_protocol: workload::AppProtocol::Unknown as i32,
    }]
}
