//! Peer partitions for the chaos suite: a cluster's peerd xDS port (15012) cut off both
//! ways with nftables, so every connection to it (from the other peerds and from the
//! cluster's own ztunnels) stalls and new ones time out in the kernel.
//!
//! The rules live in a table of this process's own, `inet peerd_chaos_<pid>`, replaced
//! atomically whenever the set of partitioned clusters changes and deleted when it is
//! empty and on drop. Nothing else in the ruleset is read or touched. The chaos runner
//! lives in a network namespace of its own, so the rules never see another process's
//! traffic either.
//!
//! Owns: rule rendering and the table's lifetime. Must never match anything but TCP
//! port 15012 of the partitioned clusters' loopback addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Context;

use crate::sandbox::faults::run_nft;
use crate::sandbox::layout::XDS_PORT;

/// The nft script that makes table `table` drop every TCP segment to or from port 15012
/// of `hosts` (created if missing, deleted, re-declared: one atomic transaction). With no
/// host the table is only deleted.
pub fn render(table: &str, hosts: &BTreeSet<IpAddr>) -> String {
    let mut script = format!("table inet {table} {{}}\ndelete table inet {table}\n");
    if hosts.is_empty() {
        return script;
    }
    let set: Vec<String> = hosts.iter().map(IpAddr::to_string).collect();
    let set = set.join(", ");
    script.push_str(&format!(
        "table inet {table} {{\n  chain output {{\n    type filter hook output priority -10; policy accept;\n    \
         ip daddr {{ {set} }} tcp dport {XDS_PORT} counter drop comment \"partition: to the peer's xDS\"\n    \
         ip saddr {{ {set} }} tcp sport {XDS_PORT} counter drop comment \"partition: from the peer's xDS\"\n  }}\n}}\n"
    ));
    script
}

/// The partitions in force and the table that holds them.
#[derive(Debug)]
pub struct Partitions {
    table: String,
    hosts: BTreeSet<IpAddr>,
}

impl Partitions {
    /// `inet peerd_chaos_<pid>`.
    pub fn for_this_process() -> Partitions {
        Partitions {
            table: format!("peerd_chaos_{}", std::process::id()),
            hosts: BTreeSet::new(),
        }
    }

    /// Fails when nftables cannot be used here (not root, no nft).
    pub fn preflight(&mut self) -> anyhow::Result<()> {
        self.apply()
    }

    pub fn cut(&mut self, host: IpAddr) -> anyhow::Result<()> {
        self.hosts.insert(host);
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
        let hosts: BTreeSet<IpAddr> = ["127.0.3.1".parse().unwrap(), "127.0.1.1".parse().unwrap()]
            .into_iter()
            .collect();
        let script = render("peerd_chaos_7", &hosts);
        assert!(
            script.starts_with("table inet peerd_chaos_7 {}\ndelete table inet peerd_chaos_7\n")
        );
        assert!(script.contains("ip daddr { 127.0.1.1, 127.0.3.1 } tcp dport 15012 counter drop"));
        assert!(script.contains("ip saddr { 127.0.1.1, 127.0.3.1 } tcp sport 15012 counter drop"));
        for line in script.lines().filter(|l| l.contains("table")) {
            assert!(line.contains("inet peerd_chaos_7"), "{line}");
        }
        assert_eq!(
            render("peerd_chaos_7", &BTreeSet::new()),
            "table inet peerd_chaos_7 {}\ndelete table inet peerd_chaos_7\n",
            "no partition: the table is only removed"
        );
    }
}
