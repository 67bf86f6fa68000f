//! Which peer Gateways a `link`/`unlink` writes, and whether the clusters may be linked:
//! checked in full before anything is written, so a bad input leaves every cluster as it
//! was. Pure functions; nothing here talks to an API server.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::endpoint::ClusterEndpoint;
use super::shown;
use crate::debug::check_kube::ContextArg;

/// One direction: write into cluster `from` (by index) a peer Gateway for cluster `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direction {
    pub from: usize,
    pub to: usize,
}

/// The directions between `contexts`: every ordered pair, or only the first to the second
/// when `one_way`.
pub fn directions(count: usize, one_way: bool) -> Vec<Direction> {
    if one_way {
        return vec![Direction { from: 0, to: 1 }];
    }
    (0..count)
        .flat_map(|from| {
            (0..count)
                .filter(move |to| *to != from)
                .map(move |to| Direction { from, to })
        })
        .collect()
}

/// A cluster name usable in a Gateway name (`istio-remote-peer-<cluster>`) and as a label
/// value: at most 63 characters of lowercase letters, digits, `-` and `.`, starting and
/// ending with a letter or digit.
pub fn cluster_name_problem(cluster: &str) -> Option<String> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid = cluster.len() <= 63
        && edge_ok(cluster.chars().next())
        && edge_ok(cluster.chars().last())
        && cluster
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    (!valid).then(|| {
        format!(
            "cluster name {} is not usable in a Gateway name and label (at most 63 of a-z, 0-9, '-', '.'; starting and ending with a letter or digit)",
            shown(cluster)
        )
    })
}

/// A label value (networks): at most 63 of letters, digits, `-`, `_`, `.`, starting and
/// ending with a letter or digit.
fn label_value_problem(what: &str, value: &str) -> Option<String> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = value.len() <= 63
        && edge_ok(value.chars().next())
        && edge_ok(value.chars().last())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (!valid).then(|| format!("{what} {} is not a valid label value", shown(value)))
}

/// The contexts of a command, before any API server is asked: at least two, no context
/// twice (a cluster linked to itself), no cluster name twice, every name usable.
pub fn check_contexts(contexts: &[ContextArg]) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if contexts.len() < 2 {
        problems.push(
            "name at least two clusters (`--context A --context B`, or `--from A --to B`)".into(),
        );
    }
    let mut by_context: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_cluster: BTreeMap<&str, &str> = BTreeMap::new();
    for c in contexts {
        *by_context.entry(c.context.as_str()).or_default() += 1;
        if let Some(problem) = cluster_name_problem(&c.cluster) {
            problems.push(format!("context {}: {problem}", shown(&c.context)));
        }
        match by_cluster.get(c.cluster.as_str()) {
            Some(other) if *other != c.context => problems.push(format!(
                "contexts {} and {} both name cluster {}: every cluster needs its own name (NAME=CLUSTER)",
                shown(other),
                shown(&c.context),
                shown(&c.cluster)
            )),
            _ => {
                by_cluster.insert(&c.cluster, &c.context);
            }
        }
    }
    for (context, count) in by_context {
        if count > 1 {
            problems.push(format!(
                "context {} is given {count} times: a cluster cannot be linked to itself",
                shown(context)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The clusters as read, before writing: no two contexts reach one cluster, addresses
/// and networks are usable, and networks are distinct unless `flat_networks` (then
/// clusters on one network peer flat).
pub fn check_endpoints(
    endpoints: &[ClusterEndpoint],
    flat_networks: bool,
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut by_uid: BTreeMap<&str, &str> = BTreeMap::new();
    let mut by_network: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in endpoints {
        if let Some(uid) = e.namespace_uid.as_deref() {
            match by_uid.get(uid) {
                Some(other) => problems.push(format!(
                    "contexts {} and {} reach the same cluster (one istio-system namespace): a cluster cannot be linked to itself",
                    shown(other),
                    shown(&e.context)
                )),
                None => {
                    by_uid.insert(uid, &e.context);
                }
            }
        }
        if let Some(problem) = label_value_problem("network", &e.network) {
            problems.push(format!("{}: {problem}", e.cluster));
        }
        if e.trust_domain.len() > 253 || e.trust_domain.chars().any(char::is_whitespace) {
            problems.push(format!(
                "{}: trust domain {} is not usable",
                e.cluster,
                shown(&e.trust_domain)
            ));
        }
        match e.address.type_.as_deref().unwrap_or("IPAddress") {
            "IPAddress" if e.address.value.parse::<IpAddr>().is_err() => problems.push(format!(
                "{}: the east-west Gateway's address {} is not an IP address",
                e.cluster,
                shown(&e.address.value)
            )),
            "IPAddress" | "Hostname" => {}
            other => problems.push(format!(
                "{}: the east-west Gateway's address type {} is not IPAddress or Hostname",
                e.cluster,
                shown(other)
            )),
        }
        by_network.entry(&e.network).or_default().push(&e.cluster);
    }
    if !flat_networks {
        for (network, clusters) in &by_network {
            if clusters.len() > 1 {
                problems.push(format!(
                    "{} are all on network {}: networks must be distinct, unless their pod IPs are routable between them (--flat-networks, with PEERING_ENABLE_FLAT_NETWORKS on their peerds)",
                    clusters.join(", "),
                    shown(network)
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::types::GatewayAddress;

    fn ctx(context: &str, cluster: &str) -> ContextArg {
        ContextArg {
            context: context.into(),
            cluster: cluster.into(),
        }
    }

    fn endpoint(cluster: &str, network: &str, uid: &str) -> ClusterEndpoint {
        ClusterEndpoint {
            context: cluster.into(),
            cluster: cluster.into(),
            network: network.into(),
            trust_domain: "cluster.local".into(),
            address: GatewayAddress {
                type_: Some("IPAddress".into()),
                value: "192.0.2.1".into(),
            },
            node_port: false,
            namespace_uid: Some(uid.into()),
        }
    }

    #[test]
    fn directions_are_every_ordered_pair_or_one() {
        assert_eq!(directions(3, false).len(), 6);
        assert!(directions(3, false).iter().all(|d| d.from != d.to));
        assert_eq!(directions(2, true), vec![Direction { from: 0, to: 1 }]);
    }

    #[test]
    fn contexts_refuse_self_links_and_shared_names() {
        let err = check_contexts(&[ctx("a", "a"), ctx("a", "a")]).unwrap_err();
        assert!(err[0].contains("cannot be linked to itself"), "{err:?}");
        let err = check_contexts(&[ctx("a", "c1"), ctx("b", "c1")]).unwrap_err();
        assert!(err[0].contains("both name cluster \"c1\""), "{err:?}");
        let err = check_contexts(&[ctx("a", "a")]).unwrap_err();
        assert!(err[0].contains("at least two"), "{err:?}");
        let err = check_contexts(&[ctx("a", "Bad_Name"), ctx("b", "b")]).unwrap_err();
        assert!(err[0].contains("not usable in a Gateway name"), "{err:?}");
        assert!(check_contexts(&[ctx("a", "c1"), ctx("b", "c2")]).is_ok());
    }

    #[test]
    fn endpoints_need_distinct_networks_unless_flat() {
        let shared = [endpoint("c1", "n", "u1"), endpoint("c2", "n", "u2")];
        let err = check_endpoints(&shared, false).unwrap_err();
        assert!(err[0].contains("--flat-networks"), "{err:?}");
        assert!(check_endpoints(&shared, true).is_ok());
        let same_cluster = [endpoint("c1", "n1", "u"), endpoint("c2", "n2", "u")];
        let err = check_endpoints(&same_cluster, false).unwrap_err();
        assert!(err[0].contains("reach the same cluster"), "{err:?}");
        let mut bad_address = endpoint("c1", "n1", "u1");
        bad_address.address.value = "not-an-ip".into();
        let err = check_endpoints(&[bad_address, endpoint("c2", "n2", "u2")], false).unwrap_err();
        assert!(err[0].contains("is not an IP address"), "{err:?}");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(1000);
        let problem = cluster_name_problem(&long).unwrap();
        assert!(problem.len() < 400, "{}", problem.len());
    }
}
