//! Peer partitions for the chaos suite: the peer path to a cluster's peerd xDS port
//! (15012) cut off both ways with nftables, so every peer connection to it stalls and new
//! ones time out in the kernel. The cluster's own ztunnels reach their peerd from the
//! node address ([`super::node_path`]), which the rules leave alone, as a real partition
//! between clusters leaves a node's ztunnel connected to the peerd next to it.
//!
//! The rules live in a table of this process's own, `inet peerd_chaos_<pid>`, replaced
//! atomically whenever the set of partitioned clusters changes and deleted when it is
//! empty and on drop. Nothing else in the ruleset is read or touched. The chaos runner
//! lives in a network namespace of its own, so the rules never see another process's
//! traffic either.
//!
//! Owns: rule rendering and the table's lifetime. Must never match anything but TCP
//! port 15012 of the partitioned clusters' loopback addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::Context;

use crate::sandbox::faults::run_nft;
use crate::sandbox::layout::XDS_PORT;

/// The nft script that makes table `table` drop every TCP segment to or from port 15012
/// of each partitioned host, except those exchanged with that host's node address
/// (`hosts`: host → node). The table is created if missing, deleted and re-declared: one
/// atomic transaction. With no host the table is only deleted.
pub fn render(table: &str, hosts: &BTreeMap<IpAddr, IpAddr>) -> String {
    let mut script = format!("table inet {table} {{}}\ndelete table inet {table}\n");
    if hosts.is_empty() {
        return script;
    }
    script.push_str(&format!(
        "table inet {table} {{\n  chain output {{\n    type filter hook output priority -10; policy accept;\n"
    ));
    for (host, node) in hosts {
        script.push_str(&format!(
            "    ip daddr {host} tcp dport {XDS_PORT} ip saddr != {node} counter drop comment \"partition: to the peer's xDS\"\n    \
             ip saddr {host} tcp sport {XDS_PORT} ip daddr != {node} counter drop comment \"partition: from the peer's xDS\"\n"
        ));
    }
    script.push_str("  }\n}\n");
    script
}

/// The partitions in force and the table that holds them.
#[derive(Debug)]
pub struct Partitions {
    table: String,
    /// Partitioned host → its node address (exempt).
    hosts: BTreeMap<IpAddr, IpAddr>,
}

impl Partitions {
    /// `inet peerd_chaos_<pid>`.
    pub fn for_this_process() -> Partitions {
        Partitions {
            table: format!("peerd_chaos_{}", std::process::id()),
            hosts: BTreeMap::new(),
        }
    }

    /// Fails when nftables cannot be used here (not root, no nft).
    pub fn preflight(&mut self) -> anyhow::Result<()> {
        self.apply()
    }

    /// Cuts the peer path to `host`'s 15012; `node`'s path to it stays.
    pub fn cut(&mut self, host: IpAddr, node: IpAddr) -> anyhow::Result<()> {
        self.hosts.insert(host, node);
        self.apply()
    }

    pub fn heal(&mut self, host: IpAddr) -> anyhow::Result<()> {
        self.hosts.remove(&host);
        self.apply()
    }

    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        self.hosts.clear();
        self.apply()
    }

    fn apply(&self) -> anyhow::Result<()> {
        run_nft(&render(&self.table, &self.hosts)).with_context(|| {
            format!(
                "nftables (table inet {}): partitions need root (CAP_NET_ADMIN) and the nft tool",
                self.table
            )
        })
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        if let Err(e) = self.heal_all() {
            eprintln!(
                "chaos: could not delete nft table inet {}: {e:#}",
                self.table
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_directions_of_15012_in_our_table_only() {
        let hosts: BTreeMap<IpAddr, IpAddr> = [
            ("127.0.3.1".parse().unwrap(), "127.0.3.2".parse().unwrap()),
            ("127.0.1.1".parse().unwrap(), "127.0.1.2".parse().unwrap()),
        ]
        .into_iter()
        .collect();
        let script = render("peerd_chaos_7", &hosts);
        assert!(
            script.starts_with("table inet peerd_chaos_7 {}\ndelete table inet peerd_chaos_7\n")
        );
        for (host, node) in [("127.0.1.1", "127.0.1.2"), ("127.0.3.1", "127.0.3.2")] {
            assert!(script.contains(&format!(
                "ip daddr {host} tcp dport 15012 ip saddr != {node} counter drop"
            )));
            assert!(script.contains(&format!(
                "ip saddr {host} tcp sport 15012 ip daddr != {node} counter drop"
            )));
        }
        for line in script.lines().filter(|l| l.contains("table")) {
            assert!(line.contains("inet peerd_chaos_7"), "{line}");
        }
        assert_eq!(
            render("peerd_chaos_7", &BTreeMap::new()),
            "table inet peerd_chaos_7 {}\ndelete table inet peerd_chaos_7\n",
            "no partition: the table is only removed"
        );
    }
}
