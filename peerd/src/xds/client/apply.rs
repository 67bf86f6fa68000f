//! Applying one response: validate every resource, write the accepted ones to the
//! store (in parts, so the federation starts merging early), mark the type synced, and
//! build the ACK or the NACK that names every rejected resource.
//!
//! It must never store a resource that failed validation (or the filter), never drop an
//! already stored version of a rejected or duplicated name, and never remove a name
//! that the same response also sends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::proto::envoy::service::discovery::v3 as discovery;
use crate::proto::google::rpc;
use crate::store::{Origin, Withdrawn};
use crate::xds::received::{Envelope, ReceivedResponse};
use crate::xds::resource::{Resource, ResourceError};
use crate::xds::types::ResourceType;

use super::AdsClient;

/// Bodies of a response at least this large stay slices of tonic's receive buffer (no
/// copy: the buffer is then mostly those bodies). Smaller responses are copied out, so a
/// resource that lives for days never pins a receive buffer holding mostly other data.
const SHARE_RECEIVE_BUFFER_BYTES: usize = 1 << 20;

/// A large response is applied to the store in parts of this many resources, so the
/// federation can merge the first part while later ones are still being validated (on
/// another core). Removals go with the last part.
const APPLY_PART: usize = 8192;

/// A response with at least this many resources is validated on several threads (when
/// the machine has the cores: the chart's one CPU means one): validation is most of the
/// CPU of a full sync, and the sync is what a restarted node waits for.
const PARALLEL_FROM: usize = 4096;
/// Validation threads at most (the merge runs beside them on its own thread).
const MAX_THREADS: usize = 4;

/// One resource of a response part on its way through validation.
enum Slot {
    Malformed(usize, prost::DecodeError),
    Duplicate,
    Pending(Envelope),
    Accepted(Resource),
    Rejected(Arc<str>, String),
}

/// A NACK names at most this many rejected resources, then says how many more there
/// were: a peer pushing 50k resources past the memory budget must not get (and we must
/// not log) a NACK message of megabytes.
const NACK_LISTED: usize = 32;

impl AdsClient {
    /// Validates and applies one response; returns the ACK or NACK to send. Fails
    /// (applying nothing more) once `held`, the origin whose versions the session
    /// offered, has been withdrawn.
    #[tracing::instrument(name = "xds.client.response", skip_all, fields(origin = %self.origin(), type_url = %resp.type_url, nonce = %resp.nonce, resources = resp.resources.len(), removed = resp.removed_resources.len()))]
    pub(super) fn handle_response(
        &self,
        held: &Arc<Origin>,
        resp: ReceivedResponse,
        synced: &mut [bool; 2],
    ) -> Result<discovery::DeltaDiscoveryRequest, Withdrawn> {
        let peer = self.origin();
        let ack = discovery::DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        };
        let Some(kind) = ResourceType::from_type_url(&resp.type_url) else {
            tracing::error!(origin = %peer, type_url = %resp.type_url, "xds client: response for an unknown type; ACKing and ignoring it");
            return Ok(ack);
        };
        metrics::counter!("peerd_xds_client_responses_total", "peer_cluster" => peer.to_string(), "type" => kind.short_name())
            .increment(1);
        // Every envelope first: duplicates are known before anything is applied.
        let envelopes: Vec<Result<Envelope, prost::DecodeError>> =
            resp.resources.iter().map(Envelope::parse).collect();
        let mut seen: HashMap<&str, usize, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(envelopes.len(), Default::default());
        for e in envelopes.iter().flatten() {
            *seen.entry(&*e.name).or_default() += 1;
        }
        let duplicated: HashSet<String> = seen
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(name, _)| name.to_string())
            .collect();
        let mut errors: Vec<(String, String)> = Vec::new();
        for name in {
            let mut d: Vec<&String> = duplicated.iter().collect();
            d.sort();
            d
        } {
            errors.push((name.clone(), ResourceError::Duplicate.to_string()));
        }
        let body_bytes: usize = envelopes
            .iter()
            .flatten()
            .map(|e| e.payload.as_ref().map_or(0, |p| p.value.len()))
            .sum();
        let share_buffer = body_bytes >= SHARE_RECEIVE_BUFFER_BYTES;
        // Accepted names matter only to drop removals of names this response also sends.
        let mut upserted: HashSet<Arc<str>> = HashSet::new();
        let mut upserts = Vec::with_capacity(envelopes.len().min(APPLY_PART));
        let mut n_up = 0;
        let threads = if envelopes.len() >= PARALLEL_FROM {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
        } else {
            1
        };
        let mut envelopes = envelopes.into_iter().enumerate().peekable();
        while envelopes.peek().is_some() {
            // One part: every slot in response order, validated (on several threads
            // when the machine has the cores), then taken in order.
            let mut slots: Vec<Slot> = envelopes
                .by_ref()
                .take(APPLY_PART)
                .map(|(i, envelope)| match envelope {
                    Err(e) => Slot::Malformed(i, e),
                    Ok(e) if duplicated.contains(&*e.name) => Slot::Duplicate,
                    Ok(e) => Slot::Pending(e),
                })
                .collect();
            self.accept_slots(kind, &resp.type_url, &mut slots, share_buffer, threads);
            for slot in slots {
                match slot {
                    // No name to give: the position in the response says which.
                    Slot::Malformed(i, e) => errors.push((
                        format!("resources[{i}]"),
                        format!("malformed Resource: {e}"),
                    )),
                    Slot::Duplicate | Slot::Pending(_) => {}
                    Slot::Accepted(res) => upserts.push(Arc::new(res)),
                    Slot::Rejected(name, reason) => errors.push((name.to_string(), reason)),
                }
                if upserts.len() == APPLY_PART {
                    n_up += upserts.len();
                    if !resp.removed_resources.is_empty() {
                        upserted.extend(upserts.iter().map(|r| Arc::clone(&r.name)));
                    }
                    let part = std::mem::take(&mut upserts);
                    if let Err(withdrawn) = self.store.apply_to(held, kind, part, Vec::new()) {
                        self.store.memory_budget().finish_response(peer, kind);
                        return Err(withdrawn);
                    }
                }
            }
        }
        n_up += upserts.len();
        let removals: Vec<Arc<str>> = if resp.removed_resources.is_empty() {
            Vec::new()
        } else {
            upserted.extend(upserts.iter().map(|r| Arc::clone(&r.name)));
            resp.removed_resources
                .iter()
                .filter(|n| !upserted.contains(n.as_str()))
                .map(|n| Arc::<str>::from(n.as_str()))
                .collect()
        };
        let n_rm = removals.len();
        let applied = self.store.apply_to(held, kind, upserts, removals);
        self.store.memory_budget().finish_response(peer, kind);
        applied?;
        if !synced[kind.index()] {
            synced[kind.index()] = true;
            self.store.mark_synced_in(held, kind)?;
        }
        let stored = held.view.snapshot().len(kind) as u64;
        tracing::debug!(origin = %peer, %kind, nonce = %resp.nonce, upserts = n_up, removals = n_rm, rejected = errors.len(), "xds client: response applied");
        if errors.is_empty() {
            self.stats.update(kind, |t| {
                t.last_nonce_received = resp.nonce.clone();
                t.last_nonce_acked = resp.nonce.clone();
                t.acks += 1;
                t.resources = stored;
                t.synced = true;
            });
            return Ok(ack);
        }
        let mut message = errors
            .iter()
            .take(NACK_LISTED)
            .map(|(name, reason)| format!("{name}: {reason}"))
            .collect::<Vec<_>>()
            .join("; ");
        if errors.len() > NACK_LISTED {
            message.push_str(&format!(
                "; and {} more rejected resources",
                errors.len() - NACK_LISTED
            ));
        }
        metrics::counter!("peerd_xds_client_nacks_sent_total", "peer_cluster" => peer.to_string(), "type" => kind.short_name())
            .increment(1);
        metrics::counter!("peerd_xds_client_resources_rejected_total", "peer_cluster" => peer.to_string(), "type" => kind.short_name())
            .increment(errors.len() as u64);
        tracing::warn!(origin = %peer, %kind, nonce = %resp.nonce, rejected = errors.len(), message = %message, "xds client: NACKing rejected resources (the others were applied)");
        self.stats.update(kind, |t| {
            t.last_nonce_received = resp.nonce.clone();
            t.nacks_sent += 1;
            t.last_nack_message = message.clone();
            t.resources = stored;
            t.synced = true;
        });
        Ok(discovery::DeltaDiscoveryRequest {
            error_detail: Some(rpc::Status {
                code: 0,
                message,
                details: Vec::new(),
            }),
            ..ack
        })
    }

    /// Validates every pending slot in place, on up to `threads` threads (each takes a
    /// contiguous share, so the order of the slots is kept).
    fn accept_slots(
        &self,
        kind: ResourceType,
        type_url: &str,
        slots: &mut [Slot],
        share_buffer: bool,
        threads: usize,
    ) {
        let validate = |share: &mut [Slot]| {
            for slot in share {
                if let Slot::Pending(_) = slot {
                    let Slot::Pending(envelope) = std::mem::replace(slot, Slot::Duplicate) else {
                        continue;
                    };
                    let name = Arc::clone(&envelope.name);
                    *slot = match self.accept(kind, type_url, envelope, share_buffer) {
                        Ok(res) => Slot::Accepted(res),
                        Err(reason) => Slot::Rejected(name, reason),
                    };
                }
            }
        };
        if threads <= 1 || slots.len() < PARALLEL_FROM {
            validate(slots);
            return;
        }
        let share = slots.len().div_ceil(threads);
        let validate = &validate;
        std::thread::scope(|scope| {
            let mut shares = slots.chunks_mut(share);
            let mine = shares.next();
            for other in shares {
                let spawned = std::thread::Builder::new()
                    .name("xds-validate".into())
                    .spawn_scoped(scope, move || validate(other));
                if let Err(e) = spawned {
                    // The share is validated below, on this thread, once `mine` is done.
                    tracing::debug!(error = %e, "xds client: validation thread not started");
                }
            }
            if let Some(mine) = mine {
                validate(mine);
            }
        });
        // A share whose thread could not start is still pending.
        validate(slots);
    }

    /// Validates one received resource. `Err` is the NACK reason.
    fn accept(
        &self,
        kind: ResourceType,
        type_url: &str,
        envelope: Envelope,
        share_buffer: bool,
    ) -> Result<Resource, String> {
        let any = envelope
            .payload
            .ok_or_else(|| ResourceError::MissingPayload.to_string())?;
        // ztunnel ignores Any.type_url; an empty one is tolerated, a different one is not.
        if !any.type_url().is_empty() && any.type_url() != type_url {
            return Err(ResourceError::TypeMismatch {
                expected: type_url.to_string(),
                found: any.type_url().to_string(),
            }
            .to_string());
        }
        let body = if share_buffer {
            any.value
        } else {
            Bytes::copy_from_slice(&any.value)
        };
        let resource = Resource::from_wire(kind, envelope.name, envelope.version, body)
            .map_err(|e| e.to_string())?;
        if let Some(filter) = &self.filter {
            filter.check(self.origin(), &resource)?;
        }
        Ok(resource)
    }
}
