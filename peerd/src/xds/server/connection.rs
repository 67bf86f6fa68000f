//! One downstream delta-ADS stream: subscriptions per type (wildcard, explicit names,
//! ztunnel's on-demand keys), what the client holds (sent name → version), pushes of view
//! changes (debounced, coalesced by name, always computed from the latest snapshot),
//! ACK/NACK bookkeeping.
//!
//! It must never make the view writer or another connection wait: it reads the view's
//! change broadcast (falling back to a full diff when it lags) and only its own bounded
//! outbound queue can stall it. It must never leave an on-demand name unanswered.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::outstanding::Ledger;
use super::registry::{AckEvent, Subscriber, Subscribers};
use super::{FastSet, ServerOptions};
use crate::bounded::{DISPLAY_LIMIT, truncate_for_display};
use crate::half_empty_map::HalfEmptyMap;
use crate::proto::envoy::service::discovery::v3 as discovery;
use crate::view::{ChangeSet, View, ViewState};
use crate::xds::offload;
use crate::xds::resource::Resource;
use crate::xds::response::HeldResources;
use crate::xds::types::{PerType, ResourceType};

type Outbound = mpsc::Sender<Result<discovery::DeltaDiscoveryResponse, Status>>;

/// Distinct unknown type URLs answered per connection; more are ignored silently.
const MAX_UNKNOWN_TYPES: usize = 16;

/// Name used in subscriptions for "everything".
const WILDCARD: &str = "*";

/// What a flush owes the client: (wire name, resource) to send, sorted by name and
/// unique, and names to remove.
type Diff = (Vec<(Arc<str>, Arc<Resource>)>, BTreeSet<Arc<str>>);

#[derive(Default)]
struct TypeState {
    /// The initial request for this type arrived.
    subscribed: bool,
    wildcard: bool,
    /// Explicitly subscribed names or on-demand keys.
    explicit: FastSet<Arc<str>>,
    /// Wire name → version the client holds. Every pod restart removes a name and adds
    /// another: see [`HalfEmptyMap`].
    sent: HalfEmptyMap<Arc<str>, Arc<str>>,
    /// Resource names changed since the last flush.
    dirty: FastSet<Arc<str>>,
    /// Compare everything at the next flush (initial request, broadcast lag, wildcard on).
    full_diff: bool,
    /// The next flush must send a response even if empty (initial request).
    must_respond: bool,
    /// Keys that the next response must name, as a resource or as removed.
    must_answer: BTreeSet<Arc<str>>,
    /// Responses sent and not processed yet, for attributing ACKs and NACKs.
    outstanding: Ledger,
}

impl TypeState {
    fn resolve<'a>(
        kind: ResourceType,
        snapshot: &'a ViewState,
        key: &str,
    ) -> Option<&'a Arc<Resource>> {
        match kind {
            ResourceType::Address => snapshot.resolve_address_key(key),
            ResourceType::Authorization => snapshot.get(kind, key),
        }
    }

    /// Whether the client should hold something under `wire_name`.
    fn desired<'a>(
        &self,
        kind: ResourceType,
        snapshot: &'a ViewState,
        wire_name: &str,
    ) -> Option<&'a Arc<Resource>> {
        if self.wildcard
            && let Some(r) = snapshot.get(kind, wire_name)
        {
            return Some(r);
        }
        if self.explicit.contains(wire_name) {
            return Self::resolve(kind, snapshot, wire_name);
        }
        None
    }

    /// The changes to send, from `snapshot`: (wire name → resource, removed names).
    fn diff(&mut self, kind: ResourceType, snapshot: &ViewState) -> Diff {
        // A Vec sorted once at the end: a full diff of 100k names arrives already in
        // order, and a B-tree insert per name (long, shared-prefix keys) costs more.
        let mut upserts: Vec<(Arc<str>, Arc<Resource>)> = Vec::new();
        let mut removed = BTreeSet::new();
        let dirty = std::mem::take(&mut self.dirty);
        if !self.subscribed {
            return (upserts, removed);
        }
        let changed_version =
            |sent: &HalfEmptyMap<Arc<str>, Arc<str>>, name: &str, r: &Resource| {
                sent.get(name).is_none_or(|v| *v != r.version)
            };
        // When a large share of the view changed (a bulk load), walking the snapshot in
        // order is cheaper than a lookup per changed name plus a sort of the result.
        let bulk = self.wildcard && dirty.len() >= snapshot.len(kind) / 4 + 1024;
        let full = std::mem::take(&mut self.full_diff);
        tracing::debug!(%kind, full, bulk, dirty = dirty.len(), sent = self.sent.len(), explicit = self.explicit.len(), "xds server: diff");
        if full || bulk {
            if self.wildcard {
                for (name, r) in snapshot.resources(kind).iter() {
                    if changed_version(&self.sent, name, r) {
                        upserts.push((Arc::clone(name), Arc::clone(r)));
                    }
                }
            }
            for name in self.sent.keys() {
                if self.desired(kind, snapshot, name).is_none() {
                    removed.insert(Arc::clone(name));
                }
            }
        } else if self.wildcard {
            for name in dirty {
                match snapshot.get(kind, &name) {
                    Some(r) => {
                        if changed_version(&self.sent, &name, r) {
                            upserts.push((name, Arc::clone(r)));
                        }
                    }
                    None => {
                        if self.sent.contains_key(&name)
                            && self.desired(kind, snapshot, &name).is_none()
                        {
                            removed.insert(name);
                        }
                    }
                }
            }
        }
        // Explicit keys are few (on-demand lookups); re-resolving them all keeps aliases
        // (`network/IP` → workload) right without an index of who resolves to what.
        for key in &self.explicit {
            match Self::resolve(kind, snapshot, key) {
                Some(r) => {
                    if changed_version(&self.sent, key, r) {
                        upserts.push((Arc::clone(key), Arc::clone(r)));
                    }
                }
                None => {
                    if self.sent.contains_key(key) && self.desired(kind, snapshot, key).is_none() {
                        removed.insert(Arc::clone(key));
                    }
                }
            }
        }
        for key in std::mem::take(&mut self.must_answer) {
            match Self::resolve(kind, snapshot, &key) {
                Some(r) => {
                    upserts.push((key, Arc::clone(r)));
                }
                None => {
                    removed.insert(key);
                }
            }
        }
        // One name resolves to one resource in one snapshot: duplicates are equal.
        upserts.sort_by(|a, b| a.0.cmp(&b.0));
        upserts.dedup_by(|a, b| a.0 == b.0);
        if !removed.is_empty() {
            for (name, _) in &upserts {
                removed.remove(name);
            }
        }
        (upserts, removed)
    }
}

pub(crate) struct Connection {
    pub view: Arc<View>,
    pub options: ServerOptions,
    pub entry: Arc<Subscriber>,
    pub registry: Arc<Subscribers>,
    pub cancel: CancellationToken,
    types: PerType<TypeState>,
    /// Unknown type URLs already answered once.
    unknown_types: HashSet<String>,
    /// Empty answers to unknown types, sent at the next flush.
    pending_unknown: Vec<discovery::DeltaDiscoveryResponse>,
    next_nonce: u64,
    node_known: bool,
}

enum Exit {
    ClientClosed,
    Error(Status),
}

impl Connection {
    pub fn new(
        view: Arc<View>,
        options: ServerOptions,
        entry: Arc<Subscriber>,
        registry: Arc<Subscribers>,
        cancel: CancellationToken,
    ) -> Self {
        Connection {
            view,
            options,
            entry,
            registry,
            cancel,
            types: PerType::default(),
            unknown_types: HashSet::new(),
            pending_unknown: Vec::new(),
            next_nonce: 0,
            node_known: false,
        }
    }

    fn label(&self) -> String {
        self.entry.view_label.to_string()
    }

    pub async fn run(
        mut self,
        mut inbound: tonic::Streaming<discovery::DeltaDiscoveryRequest>,
        tx: Outbound,
    ) {
        // Subscribe before reading anything, so no change between the first snapshot and
        // the subscription is missed.
        let mut changes = self.view.subscribe();
        // Until the view is ready nothing is sent, not even the first response (see
        // `View::pending`); the first flush after it is a full diff of every subscribed
        // type, so changes seen while held need no bookkeeping.
        let mut ready = self.view.ready_signal();
        let mut held = !*ready.borrow_and_update();
        if held {
            tracing::info!(view = %self.entry.view_label, remote = %self.entry.remote_addr, "xds server: view not ready yet (local upstream still syncing); holding this stream's first response");
        }
        let debounce = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(debounce);
        let mut armed = false;
        let exit = loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break Exit::Error(Status::unavailable("xds server shutting down")),
                changed = ready.changed(), if held => {
                    // The view (and its sender) outlives this task: an error cannot
                    // happen, and would mean there is nothing to wait for.
                    if changed.is_err() || *ready.borrow_and_update() {
                        held = false;
                        // Every change queued so far is in the snapshot the full flush
                        // reads (a change is sent after its snapshot is stored): dropped
                        // here, it costs no second pass over the same names.
                        while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) =
                            changes.try_recv()
                        {}
                        tracing::debug!(node = %self.entry.node(), "xds server: view ready; answering");
                        if !self.flush(&tx).await {
                            break Exit::ClientClosed;
                        }
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        match self.handle_request(req) {
                            Ok(flush_now) => {
                                if flush_now && !held && !self.flush(&tx).await {
                                    break Exit::ClientClosed;
                                }
                            }
                            Err(status) => break Exit::Error(status),
                        }
                    }
                    Ok(None) => break Exit::ClientClosed,
                    Err(status) => match bad_request_status(&status) {
                        Some(answer) => {
                            metrics::counter!("peerd_xds_server_bad_requests_total", "view" => self.label(), "code" => format!("{:?}", answer.code())).increment(1);
                            tracing::warn!(node = %self.entry.node(), view = %self.entry.view_label, remote = %self.entry.remote_addr, code = ?answer.code(), error = %truncate_for_display(status.message()), "xds server: undecodable request; ending the stream");
                            break Exit::Error(answer);
                        }
                        None => {
                            tracing::debug!(node = %self.entry.node(), error = %truncate_for_display(status.message()), "xds server: inbound stream error");
                            break Exit::ClientClosed;
                        }
                    },
                },
                change = changes.recv() => {
                    if held {
                        if matches!(change, Err(broadcast::error::RecvError::Closed)) {
                            break Exit::Error(Status::unavailable("view closed"));
                        }
                        continue;
                    }
                    if !self.on_change(change) {
                        break Exit::Error(Status::unavailable("view closed"));
                    }
                    if self.options.debounce.is_zero() {
                        // Coalesce what is already queued, then push right away.
                        loop {
                            match changes.try_recv() {
                                Ok(c) => { self.on_change(Ok(c)); }
                                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                    self.on_change(Err(broadcast::error::RecvError::Lagged(n)));
                                }
                                Err(_) => break,
                            }
                        }
                        if !self.flush(&tx).await {
                            break Exit::ClientClosed;
                        }
                    } else if !armed {
                        // The window starts at the first change and is never extended, so
                        // a steady stream of changes still gets pushed every window.
                        debounce.as_mut().reset(Instant::now() + self.options.debounce);
                        armed = true;
                    }
                }
                _ = &mut debounce, if armed => {
                    armed = false;
                    if !self.flush(&tx).await {
                        break Exit::ClientClosed;
                    }
                }
            }
        };
        let reason = match exit {
            Exit::ClientClosed => "stream closed".to_string(),
            Exit::Error(status) => {
                let reason = status.message().to_string();
                let _ = tx.try_send(Err(status));
                reason
            }
        };
        tracing::info!(node = %self.entry.node(), view = %self.entry.view_label, remote = %self.entry.remote_addr, reason = %reason, "xds server: downstream disconnected");
        self.entry.stats.disconnected(reason);
    }

    /// Marks changed names dirty. Returns false if the view is gone.
    fn on_change(&mut self, change: Result<Arc<ChangeSet>, broadcast::error::RecvError>) -> bool {
        match change {
            Ok(cs) => {
                let ts = self.types.get_mut(cs.kind);
                if ts.subscribed {
                    ts.dirty.extend(cs.names.iter().cloned());
                }
                true
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.entry
                    .full_diffs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(node = %self.entry.node(), skipped = n, "xds server: change feed lagged; full diff");
                metrics::counter!("peerd_xds_server_full_resyncs_total", "view" => self.label())
                    .increment(1);
                for t in ResourceType::ALL {
                    let ts = self.types.get_mut(t);
                    if ts.subscribed {
                        ts.full_diff = true;
                    }
                }
                true
            }
            Err(broadcast::error::RecvError::Closed) => false,
        }
    }

    /// Applies one request. Returns whether a flush is due now (initial request,
    /// on-demand names, wildcard turned on).
    fn handle_request(&mut self, req: discovery::DeltaDiscoveryRequest) -> Result<bool, Status> {
        if !self.node_known
            && let Some(node) = &req.node
        {
            self.node_known = true;
            // Client-controlled: bounded before it is stored, listed or logged.
            let node_id = truncate_for_display(&node.id);
            *self.entry.node_id.lock().unwrap_or_else(|p| p.into_inner()) = Arc::from(&*node_id);
            self.entry.stats.set_name(node_id.to_string());
            tracing::info!(node = %node_id, view = %self.entry.view_label, remote = %self.entry.remote_addr, "xds server: downstream connected");
        }
        let Some(kind) = ResourceType::from_type_url(&req.type_url) else {
            return Ok(self.unknown_type(&req.type_url));
        };
        if !req.response_nonce.is_empty() {
            self.handle_ack(kind, &req);
        }
        let snapshot = self.view.snapshot();
        let ts = self.types.get_mut(kind);
        if !ts.subscribed {
            ts.subscribed = true;
            let subscribe_all = req.resource_names_subscribe.iter().any(|n| n == WILDCARD);
            let unsubscribe_all = req.resource_names_unsubscribe.iter().any(|n| n == WILDCARD);
            let legacy_wildcard = req.resource_names_subscribe.is_empty()
                && req.resource_names_unsubscribe.is_empty();
            ts.wildcard = (legacy_wildcard || subscribe_all) && !unsubscribe_all;
            ts.sent = req
                .initial_resource_versions
                .iter()
                .map(|(n, v)| (Arc::from(n.as_str()), Arc::from(v.as_str())))
                .collect();
            if !ts.wildcard {
                // Without the wildcard, what the client holds is what it is subscribed to.
                ts.explicit.extend(ts.sent.keys().cloned());
            }
            for name in &req.resource_names_subscribe {
                if name != WILDCARD && !req.resource_names_unsubscribe.contains(name) {
                    let name: Arc<str> = Arc::from(name.as_str());
                    ts.explicit.insert(Arc::clone(&name));
                    ts.must_answer.insert(name);
                }
            }
            ts.full_diff = true;
            ts.must_respond = true;
            let mut p = self
                .entry
                .progress
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            p.get_mut(kind).subscribed = true;
            drop(p);
            self.registry.bump();
            tracing::debug!(node = %self.entry.node(), %kind, wildcard = ts.wildcard, explicit = ts.explicit.len(), held = ts.sent.len(), "xds server: initial request");
            return Ok(true);
        }
        let mut flush = false;
        for name in &req.resource_names_unsubscribe {
            if name == WILDCARD {
                ts.wildcard = false;
                let explicit = &ts.explicit;
                ts.sent.retain(|n, _| explicit.contains(n));
                continue;
            }
            ts.explicit.remove(name.as_str());
            ts.must_answer.remove(name.as_str());
            if !(ts.wildcard && snapshot.get(kind, name).is_some()) {
                ts.sent.remove(name.as_str());
            }
        }
        for name in &req.resource_names_subscribe {
            if name == WILDCARD {
                if !ts.wildcard {
                    ts.wildcard = true;
                    ts.full_diff = true;
                    flush = true;
                }
                continue;
            }
            let name: Arc<str> = Arc::from(name.as_str());
            ts.explicit.insert(Arc::clone(&name));
            ts.must_answer.insert(name);
            flush = true;
        }
        Ok(flush)
    }

    /// A request for a type this server does not serve: answered once with an empty
    /// response echoing the type URL (so a client waiting for it is not stuck), then
    /// ignored, including its ACKs. Returns whether a flush is due (only for the first
    /// request of that type, to send the empty answer).
    fn unknown_type(&mut self, type_url: &str) -> bool {
        // A type URL longer than any real one is not echoed or remembered.
        if type_url.len() <= DISPLAY_LIMIT
            && self.unknown_types.len() < MAX_UNKNOWN_TYPES
            && self.unknown_types.insert(type_url.to_string())
        {
            metrics::counter!("peerd_xds_server_unknown_type_requests_total", "view" => self.label()).increment(1);
            tracing::warn!(node = %self.entry.node(), type_url, "xds server: request for an unknown type; answering with an empty response");
            self.next_nonce += 1;
            self.pending_unknown
                .push(discovery::DeltaDiscoveryResponse {
                    type_url: type_url.to_string(),
                    nonce: self.next_nonce.to_string(),
                    system_version_info: self.view.snapshot().version.to_string(),
                    ..Default::default()
                });
            return true;
        }
        false
    }

    #[tracing::instrument(name = "xds.server.ack", skip_all, fields(node = %self.entry.node(), %kind, nonce = %truncate_for_display(&req.response_nonce), nack = req.error_detail.is_some()))]
    fn handle_ack(&mut self, kind: ResourceType, req: &discovery::DeltaDiscoveryRequest) {
        let Ok(nonce) = req.response_nonce.parse::<u64>() else {
            tracing::debug!(node = %self.entry.node(), %kind, nonce = %truncate_for_display(&req.response_nonce), "xds server: ACK for a nonce this server never sent; ignored");
            return;
        };
        // The nonce as this server wrote it (the client's text may carry leading zeros).
        let nonce_text = nonce.to_string();
        let ts = self.types.get_mut(kind);
        let full_nack = req.error_detail.as_ref().map(|s| s.message.as_str());
        // Responses are processed in order: everything up to this nonce is done. Every
        // response sent and not yet settled is on the ledger (folded when many are in
        // flight), so only a nonce never sent or already settled misses. The whole
        // message is read for the names it rejects; only a bounded copy is kept.
        let settled = ts.outstanding.settle(nonce, full_nack);
        let nack = full_nack.map(|m| truncate_for_display(m).into_owned());
        let Some(done) = settled else {
            tracing::debug!(node = %self.entry.node(), %kind, nonce, "xds server: ACK for an unknown or already settled nonce; ignored");
            return;
        };
        if let Some(message) = &nack {
            // Forgotten, so the next change of these names or a resync resends them.
            for name in &done.rejected {
                ts.sent.remove(name);
            }
            metrics::counter!("peerd_xds_server_nacks_received_total", "view" => self.entry.view_label.to_string(), "type" => kind.short_name()).increment(1);
            tracing::warn!(node = %self.entry.node(), %kind, nonce, message = %message, "xds server: downstream NACKed a response");
        }
        let held = ts.sent.len() as u64;
        self.entry.stats.update(kind, |t| {
            t.last_nonce_received = nonce_text.clone();
            t.resources = held;
            match &nack {
                Some(message) => {
                    t.nacks_received += 1;
                    t.last_nack_message = message.clone();
                }
                None => {
                    t.acks += 1;
                    t.last_nonce_acked = nonce_text.clone();
                }
            }
            t.synced = true;
        });
        {
            let mut p = self
                .entry
                .progress
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let p = p.get_mut(kind);
            p.acked_view_version = Some(
                p.acked_view_version
                    .map_or(done.view_version, |v| v.max(done.view_version)),
            );
            p.rejected = nack.is_some();
        }
        self.registry.publish(AckEvent {
            connection: self.entry.id,
            node: self.entry.node(),
            view_label: Arc::clone(&self.entry.view_label),
            kind,
            view_version: done.view_version,
            nonce: nonce_text,
            nack,
            at: SystemTime::now(),
        });
        self.registry.bump();
    }

    /// Computes and sends what each type owes the client from the current snapshot.
    /// Returns false if the client is gone.
    ///
    /// A type's first response on a stream is split only above `max_message_size`, and
    /// then all its parts are queued back to back before the next type is looked at (a
    /// flush is never interleaved with another). ztunnel turns ready once it has ACKed
    /// one response per type and processes responses in order, so when it ACKs the next
    /// type's first response it has applied every part of this one. The last type's own
    /// later parts may still be in flight when it turns ready: types are flushed Address
    /// first, the one large enough to be split at scale. Later pushes are split into
    /// parts of about `push_chunk_bytes`, each built only when the outbound queue has
    /// drained to one response: the client decodes one part while the next is encoded,
    /// and a 100k-resource push never exists as one giant message (or a queue of them)
    /// in memory.
    #[tracing::instrument(name = "xds.server.push", skip_all, fields(node = %self.entry.node()))]
    async fn flush(&mut self, tx: &Outbound) -> bool {
        for response in std::mem::take(&mut self.pending_unknown) {
            if !send(tx, &self.cancel, response).await {
                return false;
            }
        }
        let snapshot = self.view.snapshot();
        let mut progressed = false;
        for kind in ResourceType::ALL {
            let ts = self.types.get_mut(kind);
            if !ts.subscribed {
                ts.dirty.clear();
                continue;
            }
            let must_respond = std::mem::take(&mut ts.must_respond);
            // A full diff of a large view (a stream's first response, a bulk load) walks
            // every resource: not on the runtime worker.
            let heavy = ts.dirty.len() >= offload::HEAVY_STEP
                || (ts.full_diff && snapshot.len(kind) >= offload::HEAVY_STEP);
            let (upserts, removed) = offload::run(heavy, || ts.diff(kind, &snapshot));
            if upserts.is_empty() && removed.is_empty() && !must_respond {
                // Nothing changed for this client: once it has processed what is in
                // flight, it is current as of this snapshot.
                if !ts.outstanding.advance_newest(snapshot.version) {
                    let mut p = self
                        .entry
                        .progress
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let p = p.get_mut(kind);
                    if p.acked_view_version.is_none_or(|v| v < snapshot.version) {
                        p.acked_view_version = Some(snapshot.version);
                        progressed = true;
                    }
                }
                continue;
            }
            let max_bytes = if must_respond {
                self.options.max_message_size
            } else {
                self.options
                    .push_chunk_bytes
                    .clamp(1, self.options.max_message_size.max(1))
            };
            // Until the last part is processed the client is only as current as before.
            let prior = ts.outstanding.newest_version().or_else(|| {
                self.entry
                    .progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(kind)
                    .acked_view_version
            });
            let chunks = offload::run(heavy, || {
                chunk_response(kind, upserts, removed, max_bytes, &self.entry.view_label)
            });
            let parts = chunks.len();
            if must_respond {
                report_split(&self.entry, self.options.max_message_size, kind, parts);
            }
            for (i, (resources, removed)) in chunks.into_iter().enumerate() {
                let last = i + 1 == parts;
                // Build a later part only once the queue has drained to one response:
                // a burst then holds a few parts in memory, not the queue's worth.
                let room = tx.max_capacity().saturating_sub(1);
                if i > 0 && room > 0 {
                    let drained = tokio::select! {
                        permits = tx.reserve_many(room) => permits.is_ok(),
                        _ = self.cancel.cancelled() => false,
                    };
                    if !drained {
                        return false;
                    }
                }
                self.next_nonce += 1;
                let nonce = self.next_nonce;
                let part_heavy = resources.len() + removed.len() >= offload::HEAVY_STEP;
                let (held_resources, sent_count) = offload::run(part_heavy, || {
                    for (name, r) in &resources {
                        ts.sent.insert(Arc::clone(name), Arc::clone(&r.version));
                    }
                    for name in &removed {
                        ts.sent.remove(name);
                    }
                    ts.outstanding.push(
                        nonce,
                        if last {
                            snapshot.version
                        } else {
                            prior.unwrap_or(0)
                        },
                        resources.iter().map(|(n, _)| Arc::clone(n)).collect(),
                        &ts.sent,
                    );
                    let count = resources.len();
                    let mut held = HeldResources::new(kind.type_url(), resources);
                    // The gRPC encoder then only copies the bytes.
                    if part_heavy {
                        held.pre_encode();
                    }
                    (held, count)
                });
                metrics::counter!("peerd_xds_server_responses_total", "view" => self.entry.view_label.to_string(), "type" => kind.short_name()).increment(1);
                metrics::counter!("peerd_xds_server_resources_sent_total", "view" => self.entry.view_label.to_string(), "type" => kind.short_name()).increment(sent_count as u64);
                let held = ts.sent.len() as u64;
                self.entry.stats.update(kind, |t| {
                    t.last_nonce_sent = nonce.to_string();
                    t.resources = held;
                });
                let response = discovery::DeltaDiscoveryResponse {
                    system_version_info: snapshot.version.to_string(),
                    held: held_resources,
                    type_url: kind.type_url().to_string(),
                    nonce: nonce.to_string(),
                    removed_resources: removed.into_iter().map(|n| n.to_string()).collect(),
                    ..Default::default()
                };
                if !send(tx, &self.cancel, response).await {
                    return false;
                }
                tracing::debug!(%kind, "xds server: response queued");
            }
        }
        if progressed {
            self.registry.bump();
        }
        true
    }
}

/// Queues one response; false if the client is gone or the server shuts down.
async fn send(
    tx: &Outbound,
    cancel: &CancellationToken,
    response: discovery::DeltaDiscoveryResponse,
) -> bool {
    tokio::select! {
        r = tx.send(Ok(response)) => r.is_ok(),
        _ = cancel.cancelled() => false,
    }
}

/// The status a stream ends with when tonic could not decode the client's request, or
/// `None` when the error is the client going away (reset, cancelled, connection lost).
/// tonic reports a message over the decode limit as `OUT_OF_RANGE` (or, decompressed,
/// `RESOURCE_EXHAUSTED`) and a malformed one as `INTERNAL` with one of the messages
/// below; the client is told `RESOURCE_EXHAUSTED` or `INVALID_ARGUMENT`, as gRPC servers
/// answer those requests.
fn bad_request_status(error: &Status) -> Option<Status> {
    let message = error.message();
    match error.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Some(Status::resource_exhausted(format!(
                "request too large: {}",
                truncate_for_display(message)
            )))
        }
        tonic::Code::Internal
            if ["failed to decode", "protocol error", "Error decompressing"]
                .iter()
                .any(|p| message.starts_with(p)) =>
        {
            Some(Status::invalid_argument(format!(
                "malformed request: {}",
                truncate_for_display(message)
            )))
        }
        _ => None,
    }
}

/// Names a NACK message reports: the text before `": "` of each `"; "`-separated part.
pub fn nacked_names(message: &str) -> HashSet<&str> {
    message
        .split("; ")
        .filter_map(|part| part.split_once(": ").map(|(name, _)| name.trim()))
        .filter(|n| !n.is_empty())
        .collect()
}

/// Protobuf framing allowance per resource (tags, lengths, the Any's type URL).
const PER_RESOURCE_OVERHEAD: usize = 32;
/// Allowance for the response's own fields.
const RESPONSE_OVERHEAD: usize = 1024;

type Chunk = (Vec<(Arc<str>, Arc<Resource>)>, Vec<Arc<str>>);

/// Records how many parts a response that had to be one message (the first of the
/// stream, or an answer to a request) took. More than one means the state exceeds
/// `maxMessageBytes`: ztunnel turns ready after ACKing one response per type, so this
/// is reported loudly (WARN, `peerd_xds_server_split_responses_total`, and `peerd
/// check` through the stream's stats).
fn report_split(entry: &Subscriber, max_message_size: usize, kind: ResourceType, parts: usize) {
    let parts = parts as u64;
    entry.stats.update(kind, |t| {
        t.split_parts = if parts > 1 { parts } else { 0 };
    });
    if parts > 1 {
        tracing::warn!(node = %entry.node(), view = %entry.view_label, %kind, parts, max_message_bytes = max_message_size, "xds server: the full state does not fit in one message of maxMessageBytes; its first response is split into parts (raise xds.maxMessageBytes: ztunnel accepts 200 MiB)");
        metrics::counter!("peerd_xds_server_split_responses_total", "view" => entry.view_label.to_string(), "type" => kind.short_name()).increment(1);
    }
}

/// Splits a response so each part encodes under `max_bytes`; removals go in the last
/// part. A single resource that can never fit is dropped with an error (it would kill
/// the stream) and not recorded as sent.
fn chunk_response(
    kind: ResourceType,
    upserts: impl IntoIterator<Item = (Arc<str>, Arc<Resource>)>,
    removed: BTreeSet<Arc<str>>,
    max_bytes: usize,
    view_label: &str,
) -> Vec<Chunk> {
    let budget = max_bytes.saturating_sub(RESPONSE_OVERHEAD).max(1);
    let mut chunks: Vec<Chunk> = vec![(Vec::new(), Vec::new())];
    let mut used = 0usize;
    for (name, r) in upserts {
        let size = r.body.len()
            + name.len()
            + r.version.len()
            + kind.type_url().len()
            + PER_RESOURCE_OVERHEAD;
        if size > budget {
            metrics::counter!("peerd_xds_server_oversized_resources_total", "view" => view_label.to_string(), "type" => kind.short_name()).increment(1);
            tracing::error!(%kind, name = %name, bytes = size, max_bytes, "xds server: resource larger than the max message size; not sent");
            continue;
        }
        if used + size > budget && chunks.last().is_some_and(|c| !c.0.is_empty()) {
            chunks.push((Vec::new(), Vec::new()));
            used = 0;
        }
        used += size;
        if let Some(last) = chunks.last_mut() {
            last.0.push((name, r));
        }
    }
    let mut removed_used = used;
    for name in removed {
        let size = name.len() + 4;
        if removed_used + size > budget
            && chunks
                .last()
                .is_some_and(|c| !c.0.is_empty() || !c.1.is_empty())
        {
            chunks.push((Vec::new(), Vec::new()));
            removed_used = 0;
        }
        removed_used += size;
        if let Some(last) = chunks.last_mut() {
            last.1.push(name);
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::istio::workload;
    use std::collections::BTreeMap;

    fn wl(uid: &str, pad: usize) -> Arc<Resource> {
        Arc::new(
            Resource::workload(&workload::Workload {
                uid: uid.into(),
                name: "n".repeat(pad),
                ..Default::default()
            })
            .unwrap(),
        )
    }

    #[test]
    fn decode_errors_map_to_the_status_a_client_is_told() {
        let too_large = Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes",
        );
        assert_eq!(
            bad_request_status(&too_large).unwrap().code(),
            tonic::Code::ResourceExhausted
        );
        let malformed = Status::internal("failed to decode Protobuf message: invalid wire type");
        assert_eq!(
            bad_request_status(&malformed).unwrap().code(),
            tonic::Code::InvalidArgument
        );
        assert!(bad_request_status(&Status::cancelled("gone")).is_none());
        assert!(bad_request_status(&Status::internal("h2 protocol error: reset")).is_none());
        assert!(bad_request_status(&Status::unknown("connection reset")).is_none());
    }

    #[test]
    fn nack_messages_name_resources_before_the_colon() {
        let names = nacked_names("a/b: bad; Kubernetes//Pod/ns/x: cannot decode: eof; junk");
        assert_eq!(names, HashSet::from(["a/b", "Kubernetes//Pod/ns/x"]));
        assert!(nacked_names("whole response rejected").is_empty());
    }

    #[test]
    fn chunks_stay_under_the_budget_and_keep_everything() {
        let upserts: BTreeMap<Arc<str>, Arc<Resource>> = (0..10)
            .map(|i| {
                let r = wl(&format!("u{i}"), 1000);
                (Arc::clone(&r.name), r)
            })
            .collect();
        let huge = wl("huge", 10_000);
        let mut with_huge = upserts.clone();
        with_huge.insert(Arc::clone(&huge.name), huge);
        let removed: BTreeSet<Arc<str>> = [Arc::from("gone")].into();
        let chunks = chunk_response(ResourceType::Address, with_huge, removed, 4096, "test");
        assert!(chunks.len() >= 3);
        let sent: Vec<&str> = chunks
            .iter()
            .flat_map(|c| c.0.iter().map(|(n, _)| &**n))
            .collect();
        assert_eq!(sent.len(), 10, "the oversized resource is left out");
        assert!(!sent.contains(&"huge"));
        assert_eq!(chunks.last().unwrap().1, vec![Arc::<str>::from("gone")]);
        for (resources, _) in &chunks {
            let size: usize = resources.iter().map(|(_, r)| r.body.len()).sum();
            assert!(size < 4096);
        }
        // No resources at all still yields one (empty) response.
        let empty = chunk_response(
            ResourceType::Address,
            BTreeMap::new(),
            BTreeSet::new(),
            4096,
            "t",
        );
        assert_eq!(empty.len(), 1);
        assert!(empty[0].0.is_empty() && empty[0].1.is_empty());
    }
}
