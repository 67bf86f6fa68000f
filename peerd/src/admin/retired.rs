//! Metric series of removed peers. The `metrics` crate cannot delete a series, so
//! `/metrics` leaves out every sample labelled `peer_cluster="<a removed peer>"`: a peer
//! an operator removed disappears from Prometheus instead of freezing at its last values.
//! A peer added again is reinstated (its counters continue from where they were, which
//! Prometheus reads as an ordinary monotonic counter).
//!
//! Process-wide, like the recorder itself. Owns only the set of retired names; it must
//! never change a value, and the local cluster is never retired (it is never a peer).

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

static RETIRED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn retired() -> MutexGuard<'static, BTreeSet<String>> {
    RETIRED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Leaves `cluster`'s `peer_cluster` series out of `/metrics` from now on.
pub fn retire_peer(cluster: &str) {
    retired().insert(cluster.to_string());
}

/// Shows `cluster`'s series again (the peer is back).
pub fn reinstate_peer(cluster: &str) {
    retired().remove(cluster);
}

/// The label matcher of one retired peer, escaped as the text format escapes values.
fn label_of(cluster: &str) -> String {
    let escaped = cluster
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("peer_cluster=\"{escaped}\"")
}

/// `rendered` (Prometheus text format) without the samples of retired peers.
pub fn without_retired(rendered: String) -> String {
    let labels: Vec<String> = retired().iter().map(|c| label_of(c)).collect();
    if labels.is_empty() {
        return rendered;
    }
    let mut out = String::with_capacity(rendered.len());
    for line in rendered.lines() {
        let is_sample = !line.starts_with('#');
        if is_sample && line_has_label(line, &labels) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Whether the label set of a sample line holds one of `labels` (exactly: the matcher
/// starts after `{` or `,` and the value ends with its closing quote).
fn line_has_label(line: &str, labels: &[String]) -> bool {
    let Some(open) = line.find('{') else {
        return false;
    };
    let set = &line[open..];
    labels.iter().any(|label| {
        set.match_indices(label.as_str())
            .any(|(at, _)| at > 0 && matches!(set.as_bytes()[at - 1], b'{' | b','))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE peerd_peer_connected gauge\n\
peerd_peer_connected{peer_cluster=\"gone-9\"} 1\n\
peerd_peer_connected{peer_cluster=\"gone-99\"} 1\n\
peerd_peer_condition{type=\"PeerConnected\",peer_cluster=\"gone-9\",status=\"True\"} 1\n\
peerd_resources{peer_cluster=\"local\",type=\"wds\"} 3\n\
peerd_probe_mode{mode=\"ebpf\"} 1\n";

    #[test]
    fn a_retired_peer_loses_exactly_its_samples_until_reinstated() {
        assert_eq!(without_retired(TEXT.to_string()), TEXT, "nothing retired");
        retire_peer("gone-9");
        let shown = without_retired(TEXT.to_string());
        assert!(!shown.contains("\"gone-9\""), "{shown}");
        assert!(
            shown.contains("peer_cluster=\"gone-99\""),
            "a longer name is another peer: {shown}"
        );
        assert!(shown.contains("peerd_resources{peer_cluster=\"local\""));
        assert!(shown.contains("# TYPE peerd_peer_connected gauge"));
        reinstate_peer("gone-9");
        assert_eq!(without_retired(TEXT.to_string()), TEXT);
    }
}
