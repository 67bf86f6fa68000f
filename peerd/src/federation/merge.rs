//! The merged view served to ztunnel: the local cluster's full view plus every peer's
//! committed import, recomputed per changed name.
//!
//! Merge rules (deterministic; *precedence* = the local cluster first, then peers by
//! cluster name):
//! - **Names.** A name held by several clusters is served from the one with the highest
//!   precedence; each other holder is a `duplicate_name` conflict (e.g. a duplicate uid).
//! - **Global services** (`ns/<svc>.<ns>.mesh.internal`): one Service from all
//!   contributors (the local cluster's own export first). The highest-precedence
//!   contributor's bytes are the base; ports are the union by `service_port` — the same
//!   service port with a different `target_port` keeps the higher-precedence mapping and
//!   is a `port` conflict; VIPs are the union by (network, address), except a VIP the local
//!   cluster already uses for another service, which is dropped as a `vip` conflict.
//! - **Local workloads** backing global services also list the exported keys
//!   (`ns/<svc>.<ns>.mesh.internal`), so the global service's workloads come from every
//!   cluster.
//! - **Pod IPs.** Two clusters' workloads claiming the same `network/IP` (flat peers):
//!   the higher-precedence claimant (then the smaller uid) is served, the other is withheld
//!   and reported as a `pod_ip` conflict; when the winner goes, the other is served again.
//!
//! Never copies the whole state for one change; never edits bodies except via
//! [`crate::xds::wire`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use prost::Message;

use super::conflicts::{Conflict, ConflictKind, Conflicts};
use super::export::Exporter;
use super::grace::Commits;
use super::naming::is_global_key;
use super::settings::ExportFlavor;
use crate::half_empty_map::HalfEmptyMap;
use crate::proto::istio::workload;
use crate::view::{View, ViewState, address_keys};
use crate::xds::resource::{Resource, Summary};
use crate::xds::types::ResourceType;
use crate::xds::wire::{self, MessageEditor, WireError, codec::len_field};

/// Who claims a `network/IP`: ordered so the first is the winner.
type Claimant = (bool, Arc<str>, Arc<str>);

/// The claimants of one `network/IP`, sorted, winner first. Almost always exactly one,
/// so a sorted `Vec` (one small allocation) instead of a `BTreeSet` (a node of eleven
/// slots per address: hundreds of bytes times 100k workloads).
#[derive(Default)]
struct ClaimSet(Vec<Claimant>);

impl ClaimSet {
    fn first(&self) -> Option<&Claimant> {
        self.0.first()
    }

    fn insert(&mut self, who: Claimant) {
        if let Err(at) = self.0.binary_search(&who) {
            // Room for exactly the usual single claimant (a plain push reserves four).
            self.0.reserve_exact(1);
            self.0.insert(at, who);
        }
    }

    fn remove(&mut self, who: &Claimant) {
        if let Ok(at) = self.0.binary_search(who) {
            self.0.remove(at);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Claimant> {
        self.0.iter()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Computed served forms by name, with their origin (`None`: not served).
type Results = FastMap<Arc<str>, Option<(Arc<str>, Arc<Resource>)>>;

/// Names per published part of a large recompute (see [`Merger::recompute`]).
const PIPELINE_PART: usize = 8192;

/// One entry per served workload: foldhash rather than SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Both maps lose and gain entries with every pod restart: see [`HalfEmptyMap`].
#[derive(Default)]
struct Claims {
    by_key: HalfEmptyMap<Arc<str>, ClaimSet>,
    of_uid: HalfEmptyMap<Arc<str>, (Claimant, Vec<Arc<str>>)>,
}

/// What [`Merger::resolve`] reads for one name: the origins' candidates (in precedence
/// order), the exporter and the local view.
struct ResolveInput<'a> {
    candidates: &'a [(Arc<str>, Arc<Resource>)],
    exporter: &'a Exporter,
    local_state: Option<&'a ViewState>,
}

/// Computes the merged view.
pub struct Merger {
    local: Arc<str>,
    merged: Arc<View>,
    conflicts: Arc<Conflicts>,
    /// Origin of each served name that a peer won. A served name without an entry is
    /// the local cluster's (most names: this saves an entry per local resource).
    peer_origin_of: DashMap<(ResourceType, Arc<str>), Arc<str>, foldhash::fast::RandomState>,
    claims: Mutex<Claims>,
}

const ADDRESS_SERVICE: u32 = 2;
const ADDRESS_WORKLOAD: u32 = 1;
const SERVICE_ADDRESSES: u32 = 4;
const SERVICE_PORTS: u32 = 5;
const WORKLOAD_SERVICES: u32 = 22;

impl Merger {
    pub fn new(local: &str, conflicts: Arc<Conflicts>) -> Merger {
        Merger {
            local: Arc::from(local),
            merged: View::pending("merged"),
            conflicts,
            peer_origin_of: DashMap::default(),
            claims: Mutex::new(Claims::default()),
        }
    }

    pub fn view(&self) -> &Arc<View> {
        &self.merged
    }

    pub fn origin_of(&self, kind: ResourceType, name: &str) -> Option<Arc<str>> {
        if let Some(peer) = self.peer_origin_of.get(&(kind, Arc::from(name))) {
            return Some(Arc::clone(&peer));
        }
        let served = self.merged.snapshot().get(kind, name).is_some();
        served.then(|| Arc::clone(&self.local))
    }

    /// Recomputes the served form of `names` of `kind` and publishes the difference.
    ///
    /// A large batch (a bulk load) is published in parts by a second thread while the
    /// next part is computed: the merged view's B-tree inserts are about half the work,
    /// and this way they use the other core. Readers may see the earlier parts first,
    /// as with any delta; a name recomputed later in the batch is published again.
    pub fn recompute(
        &self,
        commits: &Commits,
        exporter: &Exporter,
        kind: ResourceType,
        names: impl IntoIterator<Item = Arc<str>>,
    ) {
        // Deduplicated by sorting (a bulk load arrives sorted): no set of 100k names to
        // hash, grow and empty again.
        let mut names: Vec<Arc<str>> = names.into_iter().collect();
        if !names.is_sorted() {
            names.sort_unstable();
        }
        names.dedup();
        let queue = VecDeque::from(names);
        let run = |queue, chunk, sink: &mut dyn FnMut(Results)| {
            self.compute(commits, exporter, kind, queue, chunk, sink);
        };
        let inline = |queue| {
            run(queue, usize::MAX, &mut |results| {
                self.publish(kind, results)
            });
        };
        if queue.len() < 2 * PIPELINE_PART {
            inline(queue);
            return;
        }
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Results>(2);
            let publisher = std::thread::Builder::new()
                .name("merge-publish".into())
                .spawn_scoped(scope, move || {
                    for results in rx {
                        self.publish(kind, results);
                    }
                });
            if let Err(e) = publisher {
                tracing::warn!(error = %e, "federation: cannot start the publish thread; publishing inline");
                return inline(queue);
            }
            run(queue, PIPELINE_PART, &mut |results| {
                // The publisher stops once `tx` is dropped, at the end of this scope.
                let _ = tx.send(results);
            });
        });
    }

    /// Computes every queued name (and those requeued by address claims), handing the
    /// results to `publish` each time `chunk` of them are ready, and at the end.
    fn compute(
        &self,
        commits: &Commits,
        exporter: &Exporter,
        kind: ResourceType,
        mut queue: VecDeque<Arc<str>>,
        chunk: usize,
        publish: &mut dyn FnMut(Results),
    ) {
        let origins = commits.ordered();
        let export = exporter.view(ExportFlavor::Flat).snapshot();
        let local_state = commits
            .committed(&self.local, ResourceType::Address)
            .cloned();
        // A name requeued after it was computed is computed again: the last result wins.
        // Only requeued names are tracked (to requeue each once): one still waiting
        // from the input may be computed twice, which changes nothing.
        let mut requeued: FastSet<Arc<str>> = FastSet::default();
        let mut results: Results =
            FastMap::with_capacity_and_hasher(queue.len().min(chunk), Default::default());
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if kind == ResourceType::Address
            && let Some(local) = &local_state
        {
            // The claims end up about the local view's size: when that view is already
            // whole (a resync, a sync committed at once), sizing them once skips the
            // rehash of every entry (reading each key again) at each doubling.
            let expected = local.len(ResourceType::Address);
            claims.of_uid.size_for(expected);
            claims.by_key.size_for(expected);
        }
        while let Some(name) = queue.pop_front() {
            if !requeued.is_empty() {
                requeued.remove(&name);
            }
            let mut candidates: Vec<(Arc<str>, Arc<Resource>)> = Vec::new();
            for o in &origins {
                if let Some(r) = commits.committed(o, kind).and_then(|s| s.get(kind, &name)) {
                    candidates.push((Arc::clone(o), Arc::clone(r)));
                }
            }
            if kind == ResourceType::Address
                && is_global_key(&name)
                && let Some(r) = export.get(kind, &name)
            {
                let at = usize::from(candidates.first().is_some_and(|(o, _)| *o == self.local));
                candidates.insert(at, (Arc::clone(&self.local), Arc::clone(r)));
            }
            let mut conflicts = Vec::new();
            let result = self.resolve(
                &name,
                ResolveInput {
                    candidates: &candidates,
                    exporter,
                    local_state: local_state.as_deref(),
                },
                &mut claims,
                &mut conflicts,
                &mut |other| {
                    if requeued.insert(Arc::clone(&other)) {
                        queue.push_back(other);
                    }
                },
            );
            self.conflicts.set(&name, conflicts);
            match &result {
                Some((origin, _)) if *origin != self.local => {
                    self.peer_origin_of
                        .insert((kind, Arc::clone(&name)), Arc::clone(origin));
                }
                _ => {
                    if !self.peer_origin_of.is_empty() {
                        self.peer_origin_of.remove(&(kind, Arc::clone(&name)));
                    }
                }
            }
            results.insert(name, result);
            if results.len() >= chunk {
                publish(std::mem::take(&mut results));
            }
        }
        drop(claims);
        if !results.is_empty() {
            publish(results);
        }
    }

    /// Applies computed results to the merged view.
    fn publish(&self, kind: ResourceType, results: Results) {
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        // A handful of origins at most, shared `Arc`s: a linear scan.
        let mut origins: Vec<Arc<str>> = Vec::new();
        for (name, r) in results {
            match r {
                Some((origin, r)) => {
                    if !origins
                        .iter()
                        .any(|o| Arc::ptr_eq(o, &origin) || *o == origin)
                    {
                        origins.push(origin);
                    }
                    upserts.push(r);
                }
                None => removals.push(name),
            }
        }
        origins.sort();
        self.merged.apply_from(kind, upserts, removals, origins);
    }

    /// The served resource for one name and its origin, or `None`.
    fn resolve(
        &self,
        name: &Arc<str>,
        input: ResolveInput<'_>,
        claims: &mut Claims,
        conflicts: &mut Vec<Conflict>,
        requeue: &mut dyn FnMut(Arc<str>),
    ) -> Option<(Arc<str>, Arc<Resource>)> {
        let ResolveInput {
            candidates,
            exporter,
            local_state,
        } = input;
        let Some((origin, first)) = candidates.first() else {
            self.update_claims(claims, name, None, requeue);
            return None;
        };
        if matches!(*first.summary, Summary::Service(_)) && is_global_key(name) {
            let merged = merge_service(name, candidates, local_state, conflicts);
            return merged.map(|r| (Arc::clone(origin), Arc::new(r)));
        }
        for (other, _) in &candidates[1..] {
            conflicts.push(Conflict {
                kind: ConflictKind::DuplicateName,
                name: name.to_string(),
                loser: other.to_string(),
                winner: origin.to_string(),
                detail: format!("{other} sent {name} too; {origin} has precedence"),
            });
        }
        let Summary::Workload(w) = &*first.summary else {
            return Some((Arc::clone(origin), served(first)));
        };
        let form = if *origin == self.local {
            let extra = exporter.exported_keys(&w.services);
            match add_service_keys(first, &extra) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(workload = %name, error = %e, "federation: cannot add exported service keys; serving the workload unchanged");
                    served(first)
                }
            }
        } else {
            served(first)
        };
        let me: Claimant = (*origin != self.local, Arc::clone(origin), Arc::clone(name));
        let keys = address_keys(&form).to_vec();
        self.update_claims(claims, name, Some((me.clone(), keys.clone())), requeue);
        for key in &keys {
            if let Some(winner) = claims.by_key.get(key).and_then(|set| set.first())
                && *winner != me
            {
                conflicts.push(Conflict {
                    kind: ConflictKind::PodIp,
                    name: name.to_string(),
                    loser: origin.to_string(),
                    winner: winner.1.to_string(),
                    detail: format!(
                        "address {key} is also claimed by {} of {}; withheld",
                        winner.2, winner.1
                    ),
                });
            }
        }
        if conflicts.iter().any(|c| c.kind == ConflictKind::PodIp) {
            return None;
        }
        Some((Arc::clone(origin), form))
    }

    /// Records `uid`'s address claims; when they changed, the other claimants of the old
    /// and new addresses are recomputed (their winner may have changed).
    fn update_claims(
        &self,
        claims: &mut Claims,
        uid: &Arc<str>,
        now: Option<(Claimant, Vec<Arc<str>>)>,
        requeue: &mut dyn FnMut(Arc<str>),
    ) {
        if claims.of_uid.get(uid) == now.as_ref() {
            return;
        }
        let old = claims.of_uid.remove(uid);
        // Usually empty (one claimant per address): a Vec allocates only when used, and
        // the caller's queue drops duplicates.
        let mut touched: Vec<Arc<str>> = Vec::new();
        if let Some((who, keys)) = &old {
            for k in keys {
                if let Some(set) = claims.by_key.get_mut(k) {
                    set.remove(who);
                    touched.extend(set.iter().map(|c| Arc::clone(&c.2)));
                    if set.is_empty() {
                        claims.by_key.remove(k);
                    }
                }
            }
        }
        if let Some((who, keys)) = now {
            for k in &keys {
                let set = claims.by_key.entry(Arc::clone(k)).or_default();
                touched.extend(set.iter().map(|c| Arc::clone(&c.2)));
                set.insert(who.clone());
            }
            claims.of_uid.insert(Arc::clone(uid), (who, keys));
        }
        for other in touched {
            if other != *uid {
                requeue(other);
            }
        }
    }
}

/// The served form: same bytes under a content version. A resource already announced
/// under its content version is shared with the origin's view, not copied (at 100k
/// workloads a copy per resource is tens of MB).
fn served(r: &Arc<Resource>) -> Arc<Resource> {
    Resource::content_versioned(r)
}

/// Adds a `services` entry under each exported key, copying the port list of the local
/// key it comes from. Keys already present are left alone; with nothing to add the
/// result is [`served`] (shared with the origin when possible).
pub fn add_service_keys(
    r: &Arc<Resource>,
    extra: &[(Arc<str>, Arc<str>)],
) -> Result<Arc<Resource>, String> {
    let Some(w) = r.as_workload() else {
        return Ok(served(r));
    };
    let wanted: Vec<&(Arc<str>, Arc<str>)> = extra
        .iter()
        .filter(|(_, g)| !w.services.iter().any(|k| k == g))
        .collect();
    if wanted.is_empty() {
        return Ok(served(r));
    }
    let mut entries: Vec<u8> = Vec::new();
    wire::edit_workload(&r.body, |e| {
        for entry in e.fields().len_payloads(WORKLOAD_SERVICES)? {
            let fields = MessageEditor::parse(entry)?;
            let key = fields.last_string(1)?;
            if let Some((_, global)) = wanted.iter().find(|(k, _)| **k == *key) {
                let mut out = len_field(1, global.as_bytes());
                if let Some(value) = fields.len_payloads(2)?.last() {
                    out.extend(len_field(2, value));
                }
                entries.extend(len_field(WORKLOAD_SERVICES, &out));
            }
        }
        Ok::<(), WireError>(())
    })
    .map_err(|e| e.to_string())?;
    // A repeated occurrence of `Address.workload` merges into the first: appending one
    // that holds only the new map entries adds them; the no-op edit writes it back as one.
    let mut body = r.body.to_vec();
    body.extend(len_field(ADDRESS_WORKLOAD, &entries));
    let body = wire::edit_workload(&body, |_| Ok(())).map_err(|e| e.to_string())?;
    r.with_body(body).map(Arc::new).map_err(|e| e.to_string())
}

/// Merges the contributions to one global service (see the module rules).
fn merge_service(
    name: &Arc<str>,
    candidates: &[(Arc<str>, Arc<Resource>)],
    local_state: Option<&ViewState>,
    conflicts: &mut Vec<Conflict>,
) -> Option<Resource> {
    let (base_origin, base) = candidates.first()?;
    let decoded: Vec<(&Arc<str>, workload::Service)> = candidates
        .iter()
        .filter_map(|(o, r)| match r.decode_address()?.r#type? {
            workload::address::Type::Service(s) => Some((o, s)),
            workload::address::Type::Workload(_) => None,
        })
        .collect();
    let (_, base_svc) = decoded.first()?;
    let own = (base_svc.namespace.clone(), base_svc.name.clone());
    // A VIP the local cluster uses for another service (not the one this was exported from).
    let taken = |a: &workload::NetworkAddress| -> Option<String> {
        let ip = crate::xds::resource::ip_from_bytes("Service.addresses", &a.address).ok()?;
        // Services only: a store view indexes service VIPs (see `AddressIndexing`).
        let holder = local_state?.indexed_address_owner(&format!("{}/{}", a.network, ip))?;
        let same_service = holder
            .as_service()
            .is_some_and(|s| (s.namespace.clone(), s.name.clone()) == own);
        (holder.name != *name && !same_service).then(|| holder.name.to_string())
    };
    let mut seen: HashSet<(String, Vec<u8>)> = HashSet::new();
    let mut vips: Vec<workload::NetworkAddress> = Vec::new();
    let mut base_dropped = false;
    let mut ports: BTreeMap<u32, (u32, Arc<str>)> = BTreeMap::new();
    let mut extra_ports: Vec<workload::Port> = Vec::new();
    for (i, (origin, svc)) in decoded.iter().enumerate() {
        for a in &svc.addresses {
            if !seen.insert((a.network.clone(), a.address.clone())) {
                continue;
            }
            if let Some(holder) = taken(a) {
                base_dropped |= i == 0;
                conflicts.push(Conflict {
                    kind: ConflictKind::Vip,
                    name: name.to_string(),
                    loser: origin.to_string(),
                    winner: format!("{holder} (local)"),
                    detail: format!(
                        "VIP {}/{} already serves {holder}; dropped",
                        a.network,
                        crate::xds::resource::ip_from_bytes("Service.addresses", &a.address)
                            .map_or_else(|_| "?".to_string(), |ip| ip.to_string())
                    ),
                });
                continue;
            }
            vips.push(a.clone());
        }
        for p in &svc.ports {
            match ports.get(&p.service_port) {
                Some((target, winner)) if *target != p.target_port => conflicts.push(Conflict {
                    kind: ConflictKind::Port,
                    name: name.to_string(),
                    loser: origin.to_string(),
                    winner: winner.to_string(),
                    detail: format!(
                        "service port {} targets {} in {origin} but {target} in {winner}; kept {target}",
                        p.service_port, p.target_port
                    ),
                }),
                Some(_) => {}
                None => {
                    ports.insert(p.service_port, (p.target_port, Arc::clone(origin)));
                    if i > 0 {
                        extra_ports.push(*p);
                    }
                }
            }
        }
    }
    let mut body = if base_dropped {
        wire::edit_service(&base.body, |s| {
            s.remove_addresses();
            Ok(())
        })
        .ok()?
        .to_vec()
    } else {
        base.body.to_vec()
    };
    // Base VIPs are already in the body unless they were all removed above.
    let append_vips: Vec<&workload::NetworkAddress> = if base_dropped {
        vips.iter().collect()
    } else {
        vips.iter()
            .filter(|a| !base_svc.addresses.contains(a))
            .collect()
    };
    let mut extra: Vec<u8> = Vec::new();
    for a in append_vips {
        extra.extend(len_field(SERVICE_ADDRESSES, &a.encode_to_vec()));
    }
    for p in &extra_ports {
        extra.extend(len_field(SERVICE_PORTS, &p.encode_to_vec()));
    }
    if !extra.is_empty() {
        body.extend(len_field(ADDRESS_SERVICE, &extra));
        body = wire::edit_service(&body, |_| Ok(())).ok()?.to_vec();
    }
    match Resource::from_body(ResourceType::Address, body.into()) {
        Ok(r) if r.name == *name => Some(r),
        Ok(r) => {
            tracing::warn!(service = %name, got = %r.name, base = %base_origin, "federation: merged service changed its name; skipped");
            None
        }
        Err(e) => {
            tracing::warn!(service = %name, error = %e, "federation: merged service invalid; skipped");
            None
        }
    }
}
