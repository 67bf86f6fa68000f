//! A deterministic synthetic workload population for one simulated cluster: namespaces,
//! services (VIPs, ports, app protocols), deployments of pods (uids, IPs, service
//! accounts, nodes, localities, the `services` map), and authorization policies
//! (namespace and workload-selector scopes), plus the mutation primitives churn uses.
//!
//! Same options + seed ⇒ same resources, byte for byte (no hash-map iteration order
//! reaches the output; the `services` map is encoded sorted).
//!
//! Addresses: everything is loopback. Cluster `k` (1..=31) owns second octets
//! `k + 32·j` (j = 0..8): pod IPs `127.(k+32j).x.y` with x ≥ 1, service VIPs
//! `127.(k+32j).0.y` with y ≥ 2. `127.0.*.*` (hosts: cluster k is `127.0.k.1`) is never
//! used. This file never produces an address outside 127/8.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use peerd::proto::istio::{security, workload};

use super::realism::{self, ServiceExtras, WaypointRef, WorkloadExtras};
use peerd::xds::resource::{Resource, ResourceError};

/// Highest cluster index: second octets `k + 32·j` must stay ≤ 255 for j < 8.
pub const MAX_CLUSTER_INDEX: u8 = 31;
const BLOCKS: u32 = 8;
const BLOCK_STRIDE: u32 = 32;
/// Pod slots per block: x in 1..=255, y in 1..=254.
const PODS_PER_BLOCK: u32 = 255 * 254;
/// VIPs per block: y in 2..=254.
const VIPS_PER_BLOCK: u32 = 253;
pub const MAX_WORKLOADS: usize = (PODS_PER_BLOCK * BLOCKS) as usize - FREE_RESERVE;
/// Services that get a VIP; further services are headless (no VIP), as Kubernetes
/// allows, so large benchmark populations fit in a cluster's loopback blocks.
pub const VIP_SERVICES: usize = (VIPS_PER_BLOCK * BLOCKS) as usize;
/// Most services of one cluster.
pub const MAX_SERVICES: usize = 100_000;
/// Freed pod IPs wait in a queue this long before reuse (a restarted pod gets a fresh IP,
/// as in Kubernetes); the same amount of the IP space is kept for that churn.
const FREE_RESERVE: usize = 1024;

const NAMESPACE_NAMES: &[&str] = &[
    "default",
    "bookinfo",
    "payments",
    "checkout",
    "inventory",
    "auth",
    "search",
    "media",
    "analytics",
    "notifications",
];
const SERVICE_WORDS: &[&str] = &[
    "reviews",
    "ratings",
    "details",
    "productpage",
    "cart",
    "catalog",
    "orders",
    "shipping",
    "frontend",
    "backend",
    "api",
    "users",
    "profile",
    "recommend",
    "ads",
    "currency",
    "email",
    "quote",
    "billing",
    "ledger",
];
const REGIONS: &[&str] = &["us-east1", "us-west1", "europe-west1", "asia-east1"];
const ZONE_SUFFIXES: &[&str] = &["a", "b", "c"];
/// Characters Kubernetes uses in generated name suffixes.
const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// (service port, target port, protocol) shapes real services have.
const PORT_SHAPES: &[(u32, u32, workload::AppProtocol)] = &[
    (80, 8080, workload::AppProtocol::Http11),
    (9080, 9080, workload::AppProtocol::Http11),
    (8080, 8080, workload::AppProtocol::Http2),
    (50051, 50051, workload::AppProtocol::Grpc),
    (443, 8443, workload::AppProtocol::Tls),
    (5432, 5432, workload::AppProtocol::Tcp),
    (6379, 6379, workload::AppProtocol::Tcp),
    (9090, 9090, workload::AppProtocol::Unknown),
];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PopulationError {
    #[error("cluster: must be a non-empty DNS label-like name, got {0:?}")]
    BadCluster(String),
    #[error("cluster_index: must be 1..={MAX_CLUSTER_INDEX}, got {0}")]
    BadClusterIndex(u8),
    #[error("workloads: {0} exceeds the loopback address space of one cluster ({MAX_WORKLOADS})")]
    TooManyWorkloads(usize),
    #[error("services: {0} exceeds the most services of one cluster ({MAX_SERVICES})")]
    TooManyServices(usize),
    #[error("services: at least one service is needed to place {0} workloads")]
    NoServices(usize),
    #[error("global_fraction: must be within 0..=1, got {0}")]
    BadGlobalFraction(f64),
    #[error("realistic_fraction: must be within 0..=1, got {0}")]
    BadRealisticFraction(f64),
    #[error("global_services: {0:?} is not an existing service (namespace/name)")]
    UnknownGlobalService(String),
    #[error("building resource {name}: {source}")]
    Resource {
        name: String,
        #[source]
        source: ResourceError,
    },
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct PopulationOptions {
    pub cluster: String,
    /// 1-based index of the cluster; selects the loopback blocks.
    pub cluster_index: u8,
    pub network: String,
    pub trust_domain: String,
    pub workloads: usize,
    pub services: usize,
    pub authorizations: usize,
    /// Fraction of services marked global (exported to peers), chosen by the seed.
    pub global_fraction: f64,
    /// Services (`namespace/name`) marked global in addition to the fraction.
    pub global_services: Vec<String>,
    pub seed: u64,
    /// Share (0..=1) of namespaces given a waypoint and of services, deployments and
    /// policies given the richer fields istiod sends (see [`super::realism`]). 0 keeps
    /// the plain population byte-for-byte.
    pub realistic_fraction: f64,
}

impl PopulationOptions {
    /// Defaults: network `network-<k>`, trust domain `cluster.local`, one authorization
    /// per five services, nothing global.
    pub fn new(
        cluster: &str,
        cluster_index: u8,
        workloads: usize,
        services: usize,
        seed: u64,
    ) -> PopulationOptions {
        PopulationOptions {
            cluster: cluster.to_string(),
            cluster_index,
            network: format!("network-{cluster_index}"),
            trust_domain: "cluster.local".to_string(),
            workloads,
            services,
            authorizations: services.div_ceil(5),
            global_fraction: 0.0,
            global_services: Vec::new(),
            seed,
            realistic_fraction: 0.0,
        }
    }

    fn validate(&self) -> Result<(), PopulationError> {
        if self.cluster.is_empty()
            || !self
                .cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(PopulationError::BadCluster(self.cluster.clone()));
        }
        if self.cluster_index == 0 || self.cluster_index > MAX_CLUSTER_INDEX {
            return Err(PopulationError::BadClusterIndex(self.cluster_index));
        }
        if self.workloads > MAX_WORKLOADS {
            return Err(PopulationError::TooManyWorkloads(self.workloads));
        }
        if self.services > MAX_SERVICES {
            return Err(PopulationError::TooManyServices(self.services));
        }
        if self.services == 0 && self.workloads > 0 {
            return Err(PopulationError::NoServices(self.workloads));
        }
        if !(0.0..=1.0).contains(&self.global_fraction) {
            return Err(PopulationError::BadGlobalFraction(self.global_fraction));
        }
        if !(0.0..=1.0).contains(&self.realistic_fraction) {
            return Err(PopulationError::BadRealisticFraction(
                self.realistic_fraction,
            ));
        }
        Ok(())
    }
}

/// The `127.(k+32j).0.y` VIP of service slot `s`.
pub fn vip_address(cluster_index: u8, s: u32) -> Ipv4Addr {
    let block = s / VIPS_PER_BLOCK;
    let y = 2 + s % VIPS_PER_BLOCK;
    Ipv4Addr::new(127, second_octet(cluster_index, block), 0, y as u8)
}

/// The `127.(k+32j).x.y` pod IP of slot `p` (x ≥ 1, y in 1..=254).
pub fn pod_address(cluster_index: u8, p: u32) -> Ipv4Addr {
    let block = p / PODS_PER_BLOCK;
    let rem = p % PODS_PER_BLOCK;
    Ipv4Addr::new(
        127,
        second_octet(cluster_index, block),
        (1 + rem / 254) as u8,
        (1 + rem % 254) as u8,
    )
}

fn second_octet(cluster_index: u8, block: u32) -> u8 {
    // validate() bounds cluster_index ≤ 31 and block < 8, so this is ≤ 255.
    (u32::from(cluster_index) + BLOCK_STRIDE * block).min(255) as u8
}

/// Hands out pod IP slots; freed slots are reused only after a queue of others, so a
/// restarted pod normally gets a different IP.
#[derive(Debug, Clone)]
struct IpAllocator {
    next_fresh: u32,
    capacity: u32,
    free: VecDeque<u32>,
}

impl IpAllocator {
    fn new() -> IpAllocator {
        IpAllocator {
            next_fresh: 0,
            capacity: PODS_PER_BLOCK * BLOCKS,
            free: VecDeque::new(),
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        if (self.free.len() >= FREE_RESERVE || self.next_fresh >= self.capacity)
            && let Some(slot) = self.free.pop_front()
        {
            return Some(slot);
        }
        if self.next_fresh < self.capacity {
            self.next_fresh += 1;
            return Some(self.next_fresh - 1);
        }
        None
    }

    fn release(&mut self, slot: u32) {
        self.free.push_back(slot);
    }
}

#[derive(Debug, Clone)]
struct ServiceModel {
    name: String,
    namespace: String,
    hostname: String,
    /// `None`: headless (past the VIP space).
    vip: Option<Ipv4Addr>,
    ports: Vec<workload::Port>,
    extras: ServiceExtras,
}

impl ServiceModel {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

#[derive(Debug, Clone)]
struct Deployment {
    name: String,
    namespace: String,
    service_account: String,
    template_hash: String,
    revision: String,
    /// Indices into `services` this deployment's pods back.
    services: Vec<usize>,
    /// `namespace/name` of workload-selector policies selecting it.
    policies: Vec<String>,
    weight: u32,
    pods: BTreeSet<Arc<str>>,
    extras: WorkloadExtras,
}

#[derive(Debug, Clone)]
struct Pod {
    deployment: usize,
    name: String,
    ip_slot: u32,
    node: usize,
    status: workload::WorkloadStatus,
}

/// A change to the population, ready for `View::apply` on the Address type.
#[derive(Debug, Clone, Default)]
pub struct Mutation {
    pub upserts: Vec<Arc<Resource>>,
    pub removals: Vec<Arc<str>>,
}

/// Whether a Service routes through a waypoint (plain or weighted reference).
fn uses_waypoint(s: &ServiceModel) -> bool {
    s.extras.waypoint.is_some() || !s.extras.weighted_waypoints.is_empty()
}

/// One cluster's synthetic population.
#[derive(Debug, Clone)]
pub struct Population {
    options: PopulationOptions,
    services: Vec<ServiceModel>,
    deployments: Vec<Deployment>,
    authorizations: Vec<security::Authorization>,
    global: BTreeSet<String>,
    pods: HashMap<Arc<str>, Pod>,
    /// Uids in an order that depends only on the sequence of operations, for O(1)
    /// deterministic random picks; `pod_index` maps uid → position.
    pod_order: Vec<Arc<str>>,
    pod_index: HashMap<Arc<str>, usize>,
    ips: IpAllocator,
    nodes: usize,
    weight_total: u32,
}

impl Population {
    /// Generates the population `options` describe.
    pub fn generate(options: &PopulationOptions) -> Result<Population, PopulationError> {
        options.validate()?;
        let mut rng = StdRng::seed_from_u64(options.seed);
        let k = options.cluster_index;

        let namespace_count = options.services.div_ceil(8).clamp(1, 64);
        let namespaces: Vec<String> = (0..namespace_count)
            .map(|i| match NAMESPACE_NAMES.get(i) {
                Some(n) => (*n).to_string(),
                None => format!("team-{i}"),
            })
            .collect();

        // Services: ~10% are "aggregate" services selecting another service's pods.
        let aggregates = if options.services >= 2 {
            options.services / 10
        } else {
            0
        };
        let primaries = options.services - aggregates;
        let mut used: BTreeSet<(String, String)> = BTreeSet::new();
        let mut services = Vec::with_capacity(options.services);
        let mut deployments = Vec::with_capacity(primaries);
        for s in 0..primaries {
            let namespace = namespaces[rng.random_range(0..namespaces.len())].clone();
            let word = SERVICE_WORDS[rng.random_range(0..SERVICE_WORDS.len())];
            let name = unique_name(&mut used, &namespace, word);
            let ports = random_ports(&mut rng);
            services.push(service_model(&name, &namespace, k, s as u32, ports));
            let service_account = if rng.random_bool(0.15) {
                "default".to_string()
            } else {
                name.clone()
            };
            deployments.push(Deployment {
                name: name.clone(),
                namespace,
                service_account,
                template_hash: random_suffix(&mut rng, 10),
                revision: if rng.random_bool(0.2) { "v2" } else { "v1" }.to_string(),
                services: vec![s],
                policies: Vec::new(),
                weight: rng.random_range(1..=6),
                pods: BTreeSet::new(),
                extras: WorkloadExtras::default(),
            });
        }
        for a in 0..aggregates {
            let target = rng.random_range(0..primaries);
            let namespace = deployments[target].namespace.clone();
            let base = format!("{}-all", deployments[target].name);
            let name = unique_name(&mut used, &namespace, &base);
            let ports = services[target].ports.clone();
            let slot = (primaries + a) as u32;
            services.push(service_model(&name, &namespace, k, slot, ports));
            deployments[target].services.push(primaries + a);
        }

        // Namespace waypoints and the richer fields, from their own random stream.
        let share = options.realistic_fraction;
        let mut realism_rng = realism::rng(options.seed);
        let ordinary = services.len();
        let mut waypoint_deployments = Vec::new();
        if share > 0.0 {
            let mut waypoint_of: BTreeMap<String, usize> = BTreeMap::new();
            // One draw per namespace; when none is drawn, the first namespace still gets a
            // waypoint, so every realistic population exercises the waypoint rules.
            let mut chosen: Vec<String> = namespaces
                .iter()
                .filter(|_| realism_rng.random_bool(share))
                .cloned()
                .collect();
            if chosen.is_empty() {
                chosen.extend(namespaces.first().cloned());
            }
            for ns in &chosen {
                let name = unique_name(&mut used, ns, realism::WAYPOINT_NAME);
                let s = services.len();
                let ports = realism::waypoint_ports();
                services.push(service_model(&name, ns, k, s as u32, ports));
                waypoint_of.insert(ns.clone(), s);
                waypoint_deployments.push(deployments.len());
                deployments.push(Deployment {
                    name: name.clone(),
                    namespace: ns.clone(),
                    service_account: name.clone(),
                    template_hash: random_suffix(&mut realism_rng, 10),
                    revision: "v1".to_string(),
                    services: vec![s],
                    policies: Vec::new(),
                    // Never picked for the random pods: one pod is added below.
                    weight: 0,
                    pods: BTreeSet::new(),
                    extras: WorkloadExtras::default(),
                });
            }
            for svc in services.iter_mut().take(ordinary) {
                let waypoint = waypoint_of.get(&svc.namespace).copied();
                svc.extras = realism::service_extras(&mut realism_rng, share, waypoint);
            }
            // And at least one Service uses a waypoint (by hostname), when one can.
            if !services.iter().take(ordinary).any(uses_waypoint)
                && let Some(svc) = services
                    .iter_mut()
                    .take(ordinary)
                    .find(|s| waypoint_of.contains_key(&s.namespace))
            {
                svc.extras.waypoint = waypoint_of
                    .get(&svc.namespace)
                    .map(|w| WaypointRef::Hostname(*w));
            }
            for d in deployments.iter_mut().filter(|d| d.weight > 0) {
                let waypoint = waypoint_of.get(&d.namespace).copied();
                d.extras = realism::workload_extras(&mut realism_rng, share, waypoint);
            }
        }

        let mut global = BTreeSet::new();
        for svc in services.iter().take(ordinary) {
            if options.global_fraction > 0.0 && rng.random_bool(options.global_fraction) {
                global.insert(format!("{}/{}", svc.namespace, svc.name));
            }
        }
        // A realistic population with global services has a global one behind a waypoint
        // (the cross-cluster waypoint rule then always has something to export).
        let ns_name = |s: &ServiceModel| format!("{}/{}", s.namespace, s.name);
        if share > 0.0
            && options.global_fraction > 0.0
            && !services
                .iter()
                .take(ordinary)
                .any(|s| uses_waypoint(s) && global.contains(&ns_name(s)))
            && let Some(s) = services.iter().take(ordinary).find(|s| uses_waypoint(s))
        {
            global.insert(ns_name(s));
        }
        for g in &options.global_services {
            if !services
                .iter()
                .any(|s| format!("{}/{}", s.namespace, s.name) == *g)
            {
                return Err(PopulationError::UnknownGlobalService(g.clone()));
            }
            global.insert(g.clone());
        }

        let mut authorizations =
            generate_authorizations(&mut rng, options, &namespaces, &mut deployments, &services);
        for a in &mut authorizations {
            a.dry_run = realism::dry_run(&mut realism_rng, share);
        }

        let nodes = options.workloads.div_ceil(40).clamp(1, 5000);
        let weight_total = deployments.iter().map(|d| d.weight).sum();
        let mut population = Population {
            options: options.clone(),
            services,
            deployments,
            authorizations,
            global,
            pods: HashMap::with_capacity(options.workloads),
            pod_order: Vec::with_capacity(options.workloads),
            pod_index: HashMap::with_capacity(options.workloads),
            ips: IpAllocator::new(),
            nodes,
            weight_total,
        };
        // One pod per waypoint, out of the same workload budget.
        let waypoint_pods = waypoint_deployments.len().min(options.workloads);
        for _ in 0..options.workloads - waypoint_pods {
            let d = population.pick_deployment(&mut rng);
            population.add_pod(&mut rng, d);
        }
        for d in waypoint_deployments.into_iter().take(waypoint_pods) {
            population.add_pod(&mut realism_rng, d);
        }
        Ok(population)
    }

    pub fn options(&self) -> &PopulationOptions {
        &self.options
    }

    pub fn workload_count(&self) -> usize {
        self.pod_order.len()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Services marked global, as `namespace/name` (what a sandbox config lists).
    pub fn global_services(&self) -> &BTreeSet<String> {
        &self.global
    }

    /// All Address resources (workloads and services), sorted by name.
    pub fn address_resources(&self) -> Result<Vec<Arc<Resource>>, PopulationError> {
        let mut out = Vec::with_capacity(self.pods.len() + self.services.len());
        for s in 0..self.services.len() {
            out.push(self.service_resource(s)?);
        }
        for uid in &self.pod_order {
            out.push(self.workload_resource(uid)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// All Authorization resources, sorted by name.
    pub fn authorization_resources(&self) -> Result<Vec<Arc<Resource>>, PopulationError> {
        let mut out = self
            .authorizations
            .iter()
            .map(|a| {
                Resource::authorization(a).map(Arc::new).map_err(|source| {
                    PopulationError::Resource {
                        name: format!("{}/{}", a.namespace, a.name),
                        source,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn pick_deployment(&self, rng: &mut StdRng) -> usize {
        let mut ticket = rng.random_range(0..self.weight_total.max(1));
        for (i, d) in self.deployments.iter().enumerate() {
            if ticket < d.weight {
                return i;
            }
            ticket -= d.weight;
        }
        0
    }

    /// Adds one pod to deployment `d`; `None` when the address space is exhausted.
    fn add_pod(&mut self, rng: &mut StdRng, d: usize) -> Option<Arc<str>> {
        let ip_slot = self.ips.alloc()?;
        let dep = &self.deployments[d];
        let (name, uid) = loop {
            let name = format!(
                "{}-{}-{}",
                dep.name,
                dep.template_hash,
                random_suffix(rng, 5)
            );
            let uid: Arc<str> = Arc::from(format!(
                "{}//Pod/{}/{}",
                self.options.cluster, dep.namespace, name
            ));
            if !self.pods.contains_key(&uid) {
                break (name, uid);
            }
        };
        let pod = Pod {
            deployment: d,
            name,
            ip_slot,
            node: rng.random_range(0..self.nodes),
            status: workload::WorkloadStatus::Healthy,
        };
        self.deployments[d].pods.insert(uid.clone());
        self.pods.insert(uid.clone(), pod);
        self.pod_index.insert(uid.clone(), self.pod_order.len());
        self.pod_order.push(uid.clone());
        Some(uid)
    }

    fn remove_pod(&mut self, uid: &Arc<str>) -> Option<Pod> {
        let pod = self.pods.remove(uid)?;
        if let Some(i) = self.pod_index.remove(uid) {
            self.pod_order.swap_remove(i);
            if let Some(moved) = self.pod_order.get(i) {
                self.pod_index.insert(moved.clone(), i);
            }
        }
        self.deployments[pod.deployment].pods.remove(uid);
        self.ips.release(pod.ip_slot);
        Some(pod)
    }

    fn random_pod(&self, rng: &mut StdRng) -> Option<Arc<str>> {
        if self.pod_order.is_empty() {
            return None;
        }
        Some(self.pod_order[rng.random_range(0..self.pod_order.len())].clone())
    }

    /// A pod restarts: it disappears and a replacement with a new name (new uid) and a
    /// new IP appears in the same deployment.
    pub fn restart_pod(&mut self, rng: &mut StdRng) -> Result<Mutation, PopulationError> {
        let Some(uid) = self.random_pod(rng) else {
            return Ok(Mutation::default());
        };
        let Some(old) = self.remove_pod(&uid) else {
            return Ok(Mutation::default());
        };
        let mut m = Mutation {
            removals: vec![uid],
            upserts: Vec::new(),
        };
        if let Some(new_uid) = self.add_pod(rng, old.deployment) {
            m.upserts.push(self.workload_resource(&new_uid)?);
        }
        Ok(m)
    }

    /// A pod turns unhealthy, or healthy again.
    pub fn flip_status(&mut self, rng: &mut StdRng) -> Result<Mutation, PopulationError> {
        let Some(uid) = self.random_pod(rng) else {
            return Ok(Mutation::default());
        };
        if let Some(pod) = self.pods.get_mut(&uid) {
            pod.status = match pod.status {
                workload::WorkloadStatus::Healthy => workload::WorkloadStatus::Unhealthy,
                workload::WorkloadStatus::Unhealthy => workload::WorkloadStatus::Healthy,
            };
        }
        Ok(Mutation {
            upserts: vec![self.workload_resource(&uid)?],
            removals: Vec::new(),
        })
    }

    /// A deployment scales up by one pod.
    pub fn scale_up(&mut self, rng: &mut StdRng) -> Result<Mutation, PopulationError> {
        if self.deployments.is_empty() {
            return Ok(Mutation::default());
        }
        let d = self.pick_deployment(rng);
        match self.add_pod(rng, d) {
            Some(uid) => Ok(Mutation {
                upserts: vec![self.workload_resource(&uid)?],
                removals: Vec::new(),
            }),
            None => Ok(Mutation::default()),
        }
    }

    /// A deployment scales down by one pod.
    pub fn scale_down(&mut self, rng: &mut StdRng) -> Mutation {
        let Some(uid) = self.random_pod(rng) else {
            return Mutation::default();
        };
        self.remove_pod(&uid);
        Mutation {
            upserts: Vec::new(),
            removals: vec![uid],
        }
    }

    /// A service's first target port changes (moves by one and back): the service and
    /// every workload backing it (their `services` map carries the ports) change.
    pub fn change_service_port(&mut self, rng: &mut StdRng) -> Result<Mutation, PopulationError> {
        if self.services.is_empty() {
            return Ok(Mutation::default());
        }
        let s = rng.random_range(0..self.services.len());
        if let Some(port) = self.services[s].ports.first_mut() {
            port.target_port = if port.target_port % 2 == 0 {
                port.target_port + 1
            } else {
                port.target_port - 1
            };
        }
        let mut m = Mutation {
            upserts: vec![self.service_resource(s)?],
            removals: Vec::new(),
        };
        let backing: Vec<Arc<str>> = self
            .deployments
            .iter()
            .filter(|d| d.services.contains(&s))
            .flat_map(|d| d.pods.iter().cloned())
            .collect();
        for uid in backing {
            m.upserts.push(self.workload_resource(&uid)?);
        }
        Ok(m)
    }

    fn service_resource(&self, s: usize) -> Result<Arc<Resource>, PopulationError> {
        let svc = &self.services[s];
        let x = &svc.extras;
        let message = workload::Service {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            hostname: svc.hostname.clone(),
            addresses: svc
                .vip
                .map(|vip| workload::NetworkAddress {
                    network: self.options.network.clone(),
                    address: vip.octets().to_vec(),
                    length: x.vip_length,
                })
                .into_iter()
                .collect(),
            ports: svc.ports.clone(),
            waypoint: x.waypoint.map(|w| self.gateway_ref(w)),
            weighted_waypoints: x
                .weighted_waypoints
                .iter()
                .map(|(w, weight)| workload::WeightedWaypoint {
                    destination: Some(self.gateway_ref(*w)),
                    weight: *weight,
                })
                .collect(),
            load_balancing: x.load_balancing.clone(),
            ip_families: x.ip_families,
            canonical: x.canonical,
            visibility: x.visibility,
            ..Default::default()
        };
        Resource::service(&message)
            .map(Arc::new)
            .map_err(|source| PopulationError::Resource {
                name: svc.key(),
                source,
            })
    }

    /// A waypoint reference as istiod writes it: the waypoint Service's VIP, or its
    /// namespace/hostname (asked for, or the Service is headless).
    fn gateway_ref(&self, r: WaypointRef) -> workload::GatewayAddress {
        let svc = &self.services[r.service()];
        let destination = match (r, svc.vip) {
            (WaypointRef::Address(_), Some(vip)) => {
                workload::gateway_address::Destination::Address(workload::NetworkAddress {
                    network: self.options.network.clone(),
                    address: vip.octets().to_vec(),
                    length: None,
                })
            }
            _ => workload::gateway_address::Destination::Hostname(workload::NamespacedHostname {
                namespace: svc.namespace.clone(),
                hostname: svc.hostname.clone(),
            }),
        };
        workload::GatewayAddress {
            destination: Some(destination),
            hbone_mtls_port: realism::WAYPOINT_HBONE_PORT,
        }
    }

    /// The Address resource of pod `uid` (which must exist).
    fn workload_resource(&self, uid: &Arc<str>) -> Result<Arc<Resource>, PopulationError> {
        let pod = self
            .pods
            .get(uid)
            .ok_or_else(|| PopulationError::Resource {
                name: uid.to_string(),
                source: ResourceError::MissingUid,
            })?;
        let dep = &self.deployments[pod.deployment];
        let region = REGIONS[usize::from(self.options.cluster_index - 1) % REGIONS.len()];
        let zone = ZONE_SUFFIXES[pod.node % ZONE_SUFFIXES.len()];
        let w = workload::Workload {
            uid: uid.to_string(),
            name: pod.name.clone(),
            namespace: dep.namespace.clone(),
            addresses: vec![
                pod_address(self.options.cluster_index, pod.ip_slot)
                    .octets()
                    .to_vec(),
            ],
            network: self.options.network.clone(),
            tunnel_protocol: workload::TunnelProtocol::Hbone as i32,
            trust_domain: self.options.trust_domain.clone(),
            service_account: dep.service_account.clone(),
            node: format!("{}-worker-{}", self.options.cluster, pod.node),
            canonical_name: dep.name.clone(),
            canonical_revision: dep.revision.clone(),
            workload_type: workload::WorkloadType::Deployment as i32,
            workload_name: dep.name.clone(),
            authorization_policies: dep.policies.clone(),
            status: pod.status as i32,
            cluster_id: self.options.cluster.clone(),
            locality: Some(workload::Locality {
                region: region.to_string(),
                zone: format!("{region}-{zone}"),
                subzone: String::new(),
            }),
            waypoint: dep.extras.waypoint.map(|r| self.gateway_ref(r)),
            capacity: dep.extras.capacity,
            network_mode: dep.extras.network_mode,
            ..Default::default()
        };
        let services: BTreeMap<String, workload::PortList> = dep
            .services
            .iter()
            .map(|s| {
                let svc = &self.services[*s];
                (
                    svc.key(),
                    workload::PortList {
                        ports: svc.ports.clone(),
                    },
                )
            })
            .collect();
        Resource::workload(&workload::Workload { services, ..w })
            .map(Arc::new)
            .map_err(|source| PopulationError::Resource {
                name: uid.to_string(),
                source,
            })
    }
}

fn service_model(
    name: &str,
    namespace: &str,
    cluster_index: u8,
    slot: u32,
    ports: Vec<workload::Port>,
) -> ServiceModel {
    ServiceModel {
        name: name.to_string(),
        namespace: namespace.to_string(),
        hostname: format!("{name}.{namespace}.svc.cluster.local"),
        vip: ((slot as usize) < VIP_SERVICES).then(|| vip_address(cluster_index, slot)),
        ports,
        extras: ServiceExtras::default(),
    }
}

fn unique_name(used: &mut BTreeSet<(String, String)>, namespace: &str, base: &str) -> String {
    let mut name = base.to_string();
    let mut n = 2;
    while used.contains(&(namespace.to_string(), name.clone())) {
        name = format!("{base}-{n}");
        n += 1;
    }
    used.insert((namespace.to_string(), name.clone()));
    name
}

fn random_ports(rng: &mut StdRng) -> Vec<workload::Port> {
    let count = match rng.random_range(0..10) {
        0..=6 => 1,
        7..=8 => 2,
        _ => 3,
    };
    let mut chosen: Vec<usize> = Vec::new();
    while chosen.len() < count {
        let i = rng.random_range(0..PORT_SHAPES.len());
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    chosen
        .into_iter()
        .map(|i| {
            let (service_port, target_port, proto) = PORT_SHAPES[i];
            workload::Port {
                service_port,
                target_port,
                app_protocol: proto as i32,
            }
        })
        .collect()
}

fn random_suffix(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(NAME_CHARS[rng.random_range(0..NAME_CHARS.len())]))
        .collect()
}

fn exact(s: impl Into<String>) -> security::StringMatch {
    security::StringMatch {
        match_type: Some(security::string_match::MatchType::Exact(s.into())),
    }
}

/// Half namespace-scoped "allow same namespace" policies, half workload-selector
/// policies on deployments (allow named callers on the first port; every fourth one a
/// DENY of other namespaces). Selected deployments list the policy key.
fn generate_authorizations(
    rng: &mut StdRng,
    options: &PopulationOptions,
    namespaces: &[String],
    deployments: &mut [Deployment],
    services: &[ServiceModel],
) -> Vec<security::Authorization> {
    let mut out = Vec::with_capacity(options.authorizations);
    let namespace_scoped = (options.authorizations / 2).min(namespaces.len());
    for ns in namespaces.iter().take(namespace_scoped) {
        out.push(security::Authorization {
            name: "allow-same-namespace".into(),
            namespace: ns.clone(),
            scope: security::Scope::Namespace as i32,
            action: security::Action::Allow as i32,
            rules: vec![security::Rule {
                clauses: vec![security::Clause {
                    matches: vec![security::Match {
                        namespaces: vec![exact(ns.clone())],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        });
    }
    if deployments.is_empty() {
        return out;
    }
    let mut selected_names: BTreeSet<(String, String)> = BTreeSet::new();
    let mut i = 0usize;
    while out.len() < options.authorizations {
        let d = rng.random_range(0..deployments.len());
        let deny = i % 4 == 3;
        i += 1;
        let base = if deny {
            format!("{}-deny-external", deployments[d].name)
        } else {
            format!("{}-allow-callers", deployments[d].name)
        };
        let ns = deployments[d].namespace.clone();
        if selected_names.contains(&(ns.clone(), base.clone())) {
            if i > options.authorizations * 8 + 64 {
                break; // not enough distinct targets; stop rather than loop
            }
            continue;
        }
        selected_names.insert((ns.clone(), base.clone()));
        let rule = if deny {
            security::Match {
                not_namespaces: vec![exact(ns.clone())],
                ..Default::default()
            }
        } else {
            let callers = rng.random_range(1..=2);
            let principals = (0..callers)
                .map(|_| {
                    let caller = &deployments[rng.random_range(0..deployments.len())];
                    exact(format!(
                        "{}/ns/{}/sa/{}",
                        options.trust_domain, caller.namespace, caller.service_account
                    ))
                })
                .collect();
            let port = deployments[d]
                .services
                .first()
                .and_then(|s| services[*s].ports.first())
                .map(|p| p.target_port);
            security::Match {
                principals,
                destination_ports: port.into_iter().collect(),
                ..Default::default()
            }
        };
        out.push(security::Authorization {
            name: base.clone(),
            namespace: ns.clone(),
            scope: security::Scope::WorkloadSelector as i32,
            action: if deny {
                security::Action::Deny
            } else {
                security::Action::Allow
            } as i32,
            rules: vec![security::Rule {
                clauses: vec![security::Clause {
                    matches: vec![rule],
                }],
            }],
            ..Default::default()
        });
        deployments[d].policies.push(format!("{ns}/{base}"));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::net::IpAddr;

    use super::*;
    use bytes::Bytes;
    use peerd::xds::resource::Summary;
    use prost::Message;

    fn options(workloads: usize, services: usize, seed: u64) -> PopulationOptions {
        PopulationOptions::new("cluster-2", 2, workloads, services, seed)
    }

    fn bytes_of(p: &Population) -> Vec<(String, Bytes)> {
        p.address_resources()
            .unwrap()
            .into_iter()
            .chain(p.authorization_resources().unwrap())
            .map(|r| (r.name.to_string(), r.body.clone()))
            .collect()
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let mut o = options(500, 40, 7);
        o.global_fraction = 0.3;
        let a = Population::generate(&o).unwrap();
        let b = Population::generate(&o).unwrap();
        assert_eq!(bytes_of(&a), bytes_of(&b));
        assert_eq!(a.global_services(), b.global_services());
        // Multi-service workloads exist, so the sorted map encoding is exercised.
        assert!(
            a.address_resources()
                .unwrap()
                .iter()
                .any(|r| r.as_workload().is_some_and(|w| w.services.len() > 1))
        );
        o.seed = 8;
        let c = Population::generate(&o).unwrap();
        assert_ne!(bytes_of(&a), bytes_of(&c));
    }

    #[test]
    fn every_resource_passes_wire_validation_with_semantic_names() {
        let mut o = options(300, 30, 1);
        o.authorizations = 12;
        let p = Population::generate(&o).unwrap();
        let addrs = p.address_resources().unwrap();
        let authz = p.authorization_resources().unwrap();
        assert_eq!(authz.len(), 12);
        let (mut workloads, mut services) = (0, 0);
        for r in addrs.iter().chain(&authz) {
            let again = Resource::from_wire(r.kind, &*r.name, &*r.version, r.body.clone()).unwrap();
            assert_eq!(again.summary, r.summary);
            match &*r.summary {
                Summary::Workload(w) => {
                    workloads += 1;
                    assert!(w.uid.starts_with("cluster-2//Pod/"), "{}", w.uid);
                    assert_eq!(w.uid, format!("cluster-2//Pod/{}/{}", w.namespace, w.name));
                    assert_eq!(&*w.cluster_id, "cluster-2");
                    assert_eq!(&*w.network, "network-2");
                    assert!(!w.services.is_empty());
                    for key in &w.services {
                        assert!(
                            addrs.iter().any(|s| *s.name == **key),
                            "{key} names a generated service"
                        );
                    }
                }
                Summary::Service(s) => {
                    services += 1;
                    assert_eq!(
                        s.hostname,
                        format!("{}.{}.svc.cluster.local", s.name, s.namespace)
                    );
                    assert!(!s.ports.is_empty());
                }
                Summary::Authorization(_) => {}
            }
        }
        assert_eq!((workloads, services), (300, 30));
        // Both policy scopes are present, and selector policies are referenced.
        let decoded: Vec<security::Authorization> = authz
            .iter()
            .map(|r| security::Authorization::decode(r.body.as_ref()).unwrap())
            .collect();
        assert!(
            decoded
                .iter()
                .any(|a| a.scope == security::Scope::Namespace as i32)
        );
        let selector = decoded
            .iter()
            .find(|a| a.scope == security::Scope::WorkloadSelector as i32)
            .unwrap();
        let key = format!("{}/{}", selector.namespace, selector.name);
        assert!(addrs.iter().any(|r| {
            r.decode_address().is_some_and(|a| matches!(
            a.r#type,
            Some(workload::address::Type::Workload(w)) if w.authorization_policies.contains(&key)
        ))
        }));
    }

    #[test]
    fn addresses_are_loopback_and_never_in_127_0() {
        // Large enough to spill into a second block of pods.
        let o = PopulationOptions::new("c31", 31, 70_000, 300, 3);
        let p = Population::generate(&o).unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut blocks = BTreeSet::new();
        for r in p.address_resources().unwrap() {
            let ips: Vec<IpAddr> = match &*r.summary {
                Summary::Workload(w) => w.addresses.clone(),
                Summary::Service(s) => s.vips.iter().map(|(_, ip)| *ip).collect(),
                Summary::Authorization(_) => Vec::new(),
            };
            for ip in ips {
                let IpAddr::V4(v4) = ip else {
                    panic!("IPv6 address {ip}")
                };
                let o = v4.octets();
                assert_eq!(o[0], 127, "{ip}");
                assert_ne!(o[1], 0, "{ip} is in 127.0/16, reserved for hosts");
                assert_eq!(u32::from(o[1]) % 32, 31, "{ip} outside cluster 31's blocks");
                if r.as_workload().is_some() {
                    assert!(o[2] >= 1, "pod {ip} has x = 0");
                } else {
                    assert_eq!(o[2], 0, "VIP {ip}");
                    assert!(o[3] >= 2, "VIP {ip}");
                }
                blocks.insert(o[1]);
                assert!(seen.insert(ip), "{ip} used twice");
            }
        }
        assert!(blocks.len() >= 2, "70k pods span two blocks: {blocks:?}");
    }

    #[test]
    fn address_helpers_cover_the_whole_range_without_127_0() {
        for k in [1u8, 2, 31] {
            for slot in [
                0,
                1,
                PODS_PER_BLOCK - 1,
                PODS_PER_BLOCK,
                PODS_PER_BLOCK * BLOCKS - 1,
            ] {
                let ip = pod_address(k, slot).octets();
                assert_eq!(ip[0], 127);
                assert!(
                    ip[1] >= 1 && ip[2] >= 1 && (1..=254).contains(&ip[3]),
                    "{ip:?}"
                );
            }
            for slot in [
                0,
                VIPS_PER_BLOCK - 1,
                VIPS_PER_BLOCK,
                VIPS_PER_BLOCK * BLOCKS - 1,
            ] {
                let ip = vip_address(k, slot).octets();
                assert!(
                    ip[1] >= 1 && ip[2] == 0 && (2..=254).contains(&ip[3]),
                    "{ip:?}"
                );
            }
        }
        // Different clusters never share an address.
        assert_ne!(pod_address(1, PODS_PER_BLOCK), pod_address(2, 0));
        assert_ne!(pod_address(1, PODS_PER_BLOCK * 7), pod_address(31, 0));
    }

    proptest::proptest! {
        #[test]
        fn address_slots_stay_in_the_clusters_loopback_blocks(
            k in 1u8..=MAX_CLUSTER_INDEX,
            other in 1u8..=MAX_CLUSTER_INDEX,
            pod in 0u32..PODS_PER_BLOCK * BLOCKS,
            vip in 0u32..VIPS_PER_BLOCK * BLOCKS,
        ) {
            let p = pod_address(k, pod).octets();
            let v = vip_address(k, vip).octets();
            for o in [p, v] {
                proptest::prop_assert_eq!(o[0], 127);
                proptest::prop_assert!(o[1] != 0);
                proptest::prop_assert_eq!(o[1] % 32, k % 32);
            }
            proptest::prop_assert!(p[2] >= 1 && (1..=254).contains(&p[3]));
            proptest::prop_assert!(v[2] == 0 && (2..=254).contains(&v[3]));
            if other != k {
                proptest::prop_assert_ne!(pod_address(other, pod), pod_address(k, pod));
            }
        }
    }

    #[test]
    fn global_services_from_fraction_and_list() {
        let mut o = options(50, 20, 5);
        o.global_fraction = 1.0;
        let all = Population::generate(&o).unwrap();
        assert_eq!(all.global_services().len(), 20);
        let one = all.global_services().iter().next().unwrap().clone();

        o.global_fraction = 0.0;
        o.global_services = vec![one.clone()];
        let p = Population::generate(&o).unwrap();
        assert_eq!(p.global_services().iter().collect::<Vec<_>>(), vec![&one]);

        o.global_services = vec!["nowhere/nothing".into()];
        assert_eq!(
            Population::generate(&o).unwrap_err(),
            PopulationError::UnknownGlobalService("nowhere/nothing".into())
        );
    }

    #[test]
    fn bad_options_are_rejected_naming_the_field() {
        let cases: Vec<(PopulationOptions, &str)> = vec![
            (PopulationOptions::new("c", 0, 1, 1, 0), "cluster_index"),
            (PopulationOptions::new("c", 32, 1, 1, 0), "cluster_index"),
            (PopulationOptions::new("", 1, 1, 1, 0), "cluster"),
            (PopulationOptions::new("a/b", 1, 1, 1, 0), "cluster"),
            (
                PopulationOptions::new("c", 1, MAX_WORKLOADS + 1, 1, 0),
                "workloads",
            ),
            (
                PopulationOptions::new("c", 1, 1, MAX_SERVICES + 1, 0),
                "services",
            ),
            (PopulationOptions::new("c", 1, 5, 0, 0), "services"),
            (
                PopulationOptions {
                    global_fraction: 1.5,
                    ..PopulationOptions::new("c", 1, 1, 1, 0)
                },
                "global_fraction",
            ),
            (
                PopulationOptions {
                    realistic_fraction: -0.1,
                    ..PopulationOptions::new("c", 1, 1, 1, 0)
                },
                "realistic_fraction",
            ),
        ];
        for (o, field) in cases {
            let err = Population::generate(&o).unwrap_err().to_string();
            assert!(err.starts_with(field), "{err}");
        }
        // Empty is allowed.
        let empty = Population::generate(&PopulationOptions::new("c", 1, 0, 0, 0)).unwrap();
        assert_eq!(empty.workload_count(), 0);
    }

    #[test]
    fn realistic_share_adds_waypoints_and_rich_fields_deterministically() {
        let mut o = options(300, 60, 11);
        let plain = bytes_of(&Population::generate(&o).unwrap());
        o.realistic_fraction = 1.0;
        let rich = Population::generate(&o).unwrap();
        assert_eq!(
            bytes_of(&rich),
            bytes_of(&Population::generate(&o).unwrap())
        );
        assert_ne!(bytes_of(&rich), plain);
        assert_eq!(
            rich.workload_count(),
            300,
            "waypoint pods come out of the budget"
        );
        o.realistic_fraction = 0.0;
        assert_eq!(
            bytes_of(&Population::generate(&o).unwrap()),
            plain,
            "share 0 is the plain population"
        );

        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut bump =
            |what: &'static str, yes: bool| *seen.entry(what).or_default() += usize::from(yes);
        for r in rich.address_resources().unwrap() {
            match r.decode_address().unwrap().r#type.unwrap() {
                workload::address::Type::Service(s) => {
                    bump("waypoint service", s.name == "waypoint");
                    bump("service waypoint", s.waypoint.is_some());
                    bump("weighted waypoints", !s.weighted_waypoints.is_empty());
                    bump("load balancing", s.load_balancing.is_some());
                    bump("ip families", s.ip_families != 0);
                    bump("canonical", s.canonical);
                    bump("namespace visibility", s.visibility == 1);
                    bump("cidr", s.addresses.iter().any(|a| a.length.is_some()));
                    bump("app protocol", s.ports.iter().any(|p| p.app_protocol != 0));
                }
                workload::address::Type::Workload(w) => {
                    bump("waypoint pod", w.name.starts_with("waypoint-"));
                    bump("workload waypoint", w.waypoint.is_some());
                    bump("capacity", w.capacity.is_some());
                    bump("host network", w.network_mode == 1);
                    bump("locality", w.locality.is_some());
                }
            }
        }
        for r in rich.authorization_resources().unwrap() {
            let a = security::Authorization::decode(&r.body[..]).unwrap();
            bump("dry run", a.dry_run);
        }
        for (what, count) in &seen {
            assert!(
                *count > 0,
                "no {what} in a fully realistic population: {seen:?}"
            );
        }
        assert_eq!(seen.len(), 15);
    }

    #[test]
    fn restart_replaces_uid_and_ip() {
        let mut p = Population::generate(&options(20, 4, 9)).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let m = p.restart_pod(&mut rng).unwrap();
        assert_eq!(m.removals.len(), 1);
        assert_eq!(m.upserts.len(), 1);
        let new = m.upserts[0].as_workload().unwrap();
        assert_ne!(&*m.removals[0], new.uid.as_str());
        assert_eq!(p.workload_count(), 20);
        // The old IP is not immediately reused.
        let ips: Vec<IpAddr> = p
            .address_resources()
            .unwrap()
            .iter()
            .filter_map(|r| r.as_workload().map(|w| w.addresses[0]))
            .collect();
        assert_eq!(ips.iter().collect::<BTreeSet<_>>().len(), 20);
    }
}
