//! The evidence behind each condition: condenses one peer's raw observations (xDS
//! client, store sync, downstream ACKs, probes) into the [`Observation`] each condition's
//! hysteresis takes, with the message a person acts on.
//!
//! Pure: reads only its arguments. Must never decide a condition (hysteresis does),
//! never keep state between ticks, and never look at another peer.
//!
//! Evidence is what is new since the last tick. A client sleeping in its reconnect
//! backoff keeps its last failure; fed on every tick, that one failure would complete
//! the failure window after the peer is back, and both `PeerConnected` and
//! `PeeringSucceeded` would report an outage that had already ended. So the caller
//! passes the time of the failure it already fed (`seen`), and a failure seen before is
//! no signal. A new failure is evidence as of when the attempt failed
//! ([`new_failure_at`]), so the window is measured between failures, whatever the phase
//! of the ticks that read them.

use std::time::Instant;

use crate::peers::conditions::{hbone_timeout_message, reason};
use crate::peers::hysteresis::Observation;
use crate::peers::model::HBONE_PORT;
use crate::peers::model::PeerModel;
use crate::peers::observe::UpstreamObservation;
use crate::peers::observe::{
    AckObservation, ImportSource, ProbeObservation, ProbeTargets, Reachability,
};

/// Advice appended to a connection failure, by reason.
pub(super) fn connection_hint(reason_str: &str, endpoint: &str) -> String {
    match reason_str {
        reason::CONNECT_TIMEOUT => format!(
            "; check that {endpoint} is reachable from this cluster (address, firewall, NetworkPolicy on port 15012)"
        ),
        reason::CONNECTION_REFUSED => format!(
            "; nothing accepts connections on {endpoint}: check the peer's east-west gateway and its xDS listener"
        ),
        reason::TLS_ERROR => {
            "; check that both clusters' certificates chain to the same root (cacerts)".into()
        }
        reason::IDENTITY_MISMATCH => {
            "; the peer's peerd must present the expected SPIFFE ID: check the peer gateway's trust domain annotation, and set peering.solo.io/peerd-identity (serverIdentity in a config file) when that peerd runs under another namespace or service account".into()
        }
        _ => String::new(),
    }
}

/// When the client's latest attempt failed, if that failure is news (not `seen`) and the
/// client is still disconnected: the time the observations of this tick stand for.
pub(super) fn new_failure_at(
    upstream: Option<&UpstreamObservation>,
    seen: Option<Instant>,
) -> Option<Instant> {
    let u = upstream.filter(|u| !u.connected)?;
    u.failure
        .as_ref()
        .map(|f| f.at)
        .filter(|at| Some(*at) != seen)
}

/// Whether the client is between attempts: disconnected, with a last failure that was
/// already fed (`seen`). Nothing about the peer is new until the next attempt.
fn between_attempts(upstream: Option<&UpstreamObservation>, seen: Option<Instant>) -> bool {
    upstream.is_some_and(|u| !u.connected && u.failure.as_ref().is_some_and(|f| Some(f.at) == seen))
}

pub(super) fn connection_observation(
    upstream: Option<&UpstreamObservation>,
    probe: &ProbeObservation,
    seen: Option<Instant>,
) -> Observation {
    let Some(u) = upstream else {
        return Observation::NoSignal;
    };
    if u.connected {
        return Observation::healthy(
            reason::CONNECTED,
            format!("xDS stream to {} is up", u.endpoint),
        );
    }
    if between_attempts(upstream, seen) {
        return Observation::NoSignal;
    }
    if let Some(f) = &u.failure {
        let message = format!("{}{}", f.message, connection_hint(f.reason, &u.endpoint));
        return Observation::failing(f.reason, message);
    }
    // The client has no classified failure yet (first attempt in progress): the probe of
    // the xDS port, if any, already tells a refusal or a timeout.
    match probe.xds.map(|v| (v.reachability, v.target)) {
        Some((Reachability::Refused, target)) => Observation::failing(
            reason::CONNECTION_REFUSED,
            format!(
                "probe connects to {target} are refused{}",
                connection_hint(reason::CONNECTION_REFUSED, &u.endpoint)
            ),
        ),
        Some((Reachability::TimedOut, target)) => Observation::failing(
            reason::CONNECT_TIMEOUT,
            format!(
                "probe connects to {target} time out{}",
                connection_hint(reason::CONNECT_TIMEOUT, &u.endpoint)
            ),
        ),
        _ => Observation::NoSignal,
    }
}

/// Why nothing is synced yet, when the xDS client knows: `PeeringSucceeded` stays
/// `Pending`, and its message names the connection failure (e.g. `TLSError: ...`) so both
/// conditions point at the same cause.
pub(super) fn not_connected(upstream: Option<&UpstreamObservation>) -> Option<String> {
    let u = upstream?;
    if u.connected {
        return None;
    }
    let f = u.failure.as_ref()?;
    Some(format!(
        "not connected to peer ({}: {})",
        f.reason, f.message
    ))
}

pub(super) fn sync_observation(
    imports: &dyn ImportSource,
    peer: &str,
    upstream: Option<&UpstreamObservation>,
    seen: Option<Instant>,
) -> Observation {
    // A peer whose state was partly refused is not fully imported, synced or not.
    if let Some(message) = imports.budget_refusal(peer) {
        return Observation::failing(reason::MEMORY_BUDGET_EXCEEDED, message);
    }
    let sync = imports.sync(peer);
    // Not synced because the client waits out its backoff says nothing new of the peer:
    // the next attempt does.
    if !sync.as_ref().is_some_and(|s| s.fully_synced()) && between_attempts(upstream, seen) {
        return Observation::NoSignal;
    }
    match sync {
        None => Observation::failing(
            reason::PENDING,
            match not_connected(upstream) {
                Some(why) => format!("{why}; waiting for its first full xDS response"),
                None => {
                    "nothing received from the peer yet; waiting for its first full xDS response"
                        .to_string()
                }
            },
        ),
        Some(s) if s.fully_synced() => Observation::healthy(
            reason::SUCCEEDED,
            format!(
                "full sync of every type done; {} resources imported",
                s.held
            ),
        ),
        Some(s) => {
            let pending: Vec<&str> = s.pending().iter().map(|t| t.short_name()).collect();
            if s.held > 0 {
                Observation::failing(
                    reason::STALE,
                    format!(
                        "the peer's stream is not synced ({} pending); serving its last known state ({} resources) until it resyncs or the disconnect grace period ends",
                        pending.join(", "),
                        s.held
                    ),
                )
            } else {
                let waiting = format!(
                    "waiting for the first full response for: {}",
                    pending.join(", ")
                );
                Observation::failing(
                    reason::PENDING,
                    match not_connected(upstream) {
                        Some(why) => format!("{why}; {waiting}"),
                        None => waiting,
                    },
                )
            }
        }
    }
}

pub(super) fn data_plane_observation(
    model: &PeerModel,
    targets: &ProbeTargets,
    probe: &ProbeObservation,
    acks: AckObservation,
) -> Observation {
    if let AckObservation::Rejected { node, text } = &acks {
        return Observation::failing(
            reason::NOT_ACKED,
            format!("local ztunnel {node} rejected the peer's resources: {text}"),
        );
    }
    let port = model.hbone_port.unwrap_or(HBONE_PORT);
    match probe.hbone.map(|v| (v.reachability, v.target)) {
        Some((Reachability::TimedOut, _)) => {
            return Observation::failing(
                reason::HBONE_CONNECT_TIMEOUT,
                hbone_timeout_message(port),
            );
        }
        Some((Reachability::Refused, target)) => {
            return Observation::failing(
                reason::HBONE_CONNECTION_REFUSED,
                format!(
                    "connection to {target} refused: nothing accepts HBONE on port {port} of the peer's {}",
                    if model.flat {
                        "pods"
                    } else {
                        "east-west gateway"
                    }
                ),
            );
        }
        Some((Reachability::Unreachable, target)) => {
            return Observation::failing(
                reason::HBONE_CONNECT_TIMEOUT,
                format!(
                    "{target} is unreachable (no route); check routing to the peer's HBONE port {port}"
                ),
            );
        }
        _ => {}
    }
    let acked = match &acks {
        AckObservation::Waiting {
            version,
            behind,
            downstreams,
            waited,
        } => {
            return Observation::failing(
                reason::NOT_ACKED,
                format!(
                    "{behind} of {downstreams} local ztunnel(s) have not ACKed view version {version}, which carries a change of the peer published {:.1}s ago",
                    waited.as_secs_f64()
                ),
            );
        }
        // Younger than the ACK allowance: neither a success nor a failure yet.
        AckObservation::InFlight { .. } => return Observation::NoSignal,
        AckObservation::Acked {
            version,
            downstreams,
        } => format!("view version {version} ACKed by {downstreams} local ztunnel(s)"),
        AckObservation::NothingToAck { downstreams: 0 } => "no local ztunnel connected".to_string(),
        AckObservation::NothingToAck { .. } => "nothing of the peer served yet".to_string(),
        AckObservation::Rejected { .. } => String::new(),
    };
    match probe.hbone {
        Some(v) => Observation::healthy(
            reason::PROGRAMMED,
            format!("{acked}; HBONE {} reachable", v.target),
        ),
        None if model.node_port => Observation::healthy(
            reason::PROGRAMMED,
            format!("{acked}; NodePort data plane (HBONE listener not used, not probed)"),
        ),
        None if model.flat && targets.hbone.is_empty() => Observation::healthy(
            reason::PROGRAMMED,
            format!("{acked}; no pod of the flat peer is known yet, nothing to reach"),
        ),
        None => Observation::NoSignal,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::peers::observe::{SyncObservation, UpstreamFailure};

    fn upstream(connected: bool, failure: Option<(&'static str, &str)>) -> UpstreamObservation {
        failed_at(connected, failure, Instant::now())
    }

    fn failed_at(
        connected: bool,
        failure: Option<(&'static str, &str)>,
        at: Instant,
    ) -> UpstreamObservation {
        UpstreamObservation {
            endpoint: "127.0.0.2:15012".into(),
            connected,
            failure: failure.map(|(reason, message)| UpstreamFailure {
                reason,
                message: message.into(),
                at,
            }),
        }
    }

    #[test]
    fn a_connection_failure_carries_its_reason_and_advice() {
        let probe = ProbeObservation::default();
        assert_eq!(
            connection_observation(None, &probe, None),
            Observation::NoSignal
        );
        assert!(matches!(
            connection_observation(Some(&upstream(true, None)), &probe, None),
            Observation::Healthy { reason, .. } if reason == reason::CONNECTED
        ));
        let failing = upstream(false, Some((reason::CONNECT_TIMEOUT, "dial timed out")));
        let Observation::Failing { reason, message } =
            connection_observation(Some(&failing), &probe, None)
        else {
            panic!("a classified failure is failing");
        };
        assert_eq!(reason, reason::CONNECT_TIMEOUT);
        assert!(
            message.starts_with("dial timed out; check that 127.0.0.2:15012 is reachable"),
            "{message}"
        );
        // No classified failure yet and no probe of the xDS port: nothing known.
        assert_eq!(
            connection_observation(Some(&upstream(false, None)), &probe, None),
            Observation::NoSignal
        );
    }

    #[test]
    fn not_connected_names_the_failure_only_while_disconnected() {
        assert_eq!(not_connected(None), None);
        assert_eq!(
            not_connected(Some(&upstream(true, Some((reason::TLS_ERROR, "x"))))),
            None
        );
        assert_eq!(not_connected(Some(&upstream(false, None))), None);
        assert_eq!(
            not_connected(Some(&upstream(
                false,
                Some((reason::TLS_ERROR, "bad root"))
            )))
            .as_deref(),
            Some("not connected to peer (TLSError: bad root)")
        );
    }

    /// A store with one peer's sync state, for `sync_observation`.
    struct OneSync(Option<SyncObservation>);

    impl ImportSource for OneSync {
        fn sync(&self, _peer: &str) -> Option<SyncObservation> {
            self.0.clone()
        }
        fn workload_ips(&self, _peer: &str, _limit: usize) -> Vec<std::net::IpAddr> {
            Vec::new()
        }
    }

    #[test]
    fn a_failure_already_seen_is_no_signal_while_the_client_waits_to_retry() {
        let probe = ProbeObservation::default();
        let t = Instant::now();
        let down = failed_at(false, Some((reason::CONNECTION_REFUSED, "refused")), t);
        // First read of the failure: evidence.
        assert!(matches!(
            connection_observation(Some(&down), &probe, None),
            Observation::Failing { .. }
        ));
        assert_eq!(new_failure_at(Some(&down), None), Some(t));
        assert_eq!(new_failure_at(Some(&down), Some(t)), None);
        assert_eq!(new_failure_at(Some(&upstream(true, None)), None), None);
        // Read again, the client still in its backoff: nothing new.
        assert_eq!(
            connection_observation(Some(&down), &probe, Some(t)),
            Observation::NoSignal
        );
        // The next attempt failed too: evidence again.
        let again = failed_at(
            false,
            Some((reason::CONNECTION_REFUSED, "refused")),
            t + Duration::from_secs(3),
        );
        assert!(matches!(
            connection_observation(Some(&again), &probe, Some(t)),
            Observation::Failing { .. }
        ));

        // The peer's last state, held but no longer synced: stale only on news.
        let stale = OneSync(Some(SyncObservation {
            synced: Vec::new(),
            held: 7,
        }));
        assert!(matches!(
            sync_observation(&stale, "p", Some(&down), None),
            Observation::Failing { reason, .. } if reason == reason::STALE
        ));
        assert_eq!(
            sync_observation(&stale, "p", Some(&down), Some(t)),
            Observation::NoSignal
        );
        assert!(matches!(
            sync_observation(&stale, "p", Some(&again), Some(t)),
            Observation::Failing { reason, .. } if reason == reason::STALE
        ));
        // Connected but not synced is evidence on every tick, whatever was seen.
        let up = failed_at(true, None, t);
        assert!(matches!(
            sync_observation(&stale, "p", Some(&up), Some(t)),
            Observation::Failing { reason, .. } if reason == reason::STALE
        ));
    }
}
