//! Sandbox faults: what `--fault KIND=CLUSTER` means, how a fault is injected and lifted,
//! and the commands that do it while the sandbox runs.
//!
//! - `stop-peer=<cluster>`: stop that cluster's peerd (lift: start it again).
//! - `drop-hbone=<cluster>`: SYNs to the cluster's HBONE port 15008 are dropped (its
//!   east-west gateway 127.0.k.1:15008 and its pods 127.(k+32j).x.y:15008), so connects
//!   time out in the kernel.
//! - `reject-hbone=<cluster>`: the same SYNs are answered with a TCP reset, so connects
//!   are refused.
//!
//! Drop and reject are nftables rules in a table of our own, `inet peerd_sandbox_<pid>`,
//! replaced atomically whenever the set of active faults changes and deleted on lift of
//! the last one and on exit. Nothing else in the ruleset is ever read or touched. They
//! need root (CAP_NET_ADMIN); without it the fault is refused with that reason, because
//! no userspace trick gives a real kernel timeout or refusal here: the pods' wildcard
//! HBONE listener would answer any address whose own listener was closed.
//!
//! Commands (a line on stdin, or in `STATE_DIR/control`, which the sandbox polls every
//! second and empties): `fault KIND=CLUSTER` (alias `inject`), `lift KIND=CLUSTER`, and
//! `restart CLUSTER` (SIGTERM that cluster's peerd and start a new one: a rollout).
//!
//! Owns: fault vocabulary, rule rendering, the nft table's lifetime. Must never match
//! traffic outside 127.0.0.0/8 or port 15008, and never touch another table.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::sandbox::cluster::Cluster;
use crate::sandbox::layout::HBONE_PORT;

/// The simulated population's address blocks: cluster k's pods live in
/// `127.(k + BLOCK_STRIDE·j).x.y` for j < BLOCKS (see `sim::population`; a test checks
/// the two agree).
const POD_BLOCKS: u32 = 8;
const POD_BLOCK_STRIDE: u32 = 32;

/// One fault of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Stop that cluster's peerd.
    StopPeer(String),
    /// Drop SYNs to the cluster's HBONE 15008 (connects time out).
    DropHbone(String),
    /// Answer SYNs to the cluster's HBONE 15008 with a TCP reset (connects are refused).
    RejectHbone(String),
}

pub const FAULT_KINDS: &str = "stop-peer, drop-hbone, reject-hbone";

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::StopPeer(_) => "stop-peer",
            Fault::DropHbone(_) => "drop-hbone",
            Fault::RejectHbone(_) => "reject-hbone",
        }
    }

    pub fn cluster(&self) -> &str {
        match self {
            Fault::StopPeer(c) | Fault::DropHbone(c) | Fault::RejectHbone(c) => c,
        }
    }

    /// Whether nftables implements it.
    pub fn is_network(&self) -> bool {
        !matches!(self, Fault::StopPeer(_))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind(), self.cluster())
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        let (kind, cluster) = s.trim().split_once('=').ok_or_else(|| {
            format!("fault {s:?}: expected KIND=CLUSTER, e.g. drop-hbone=cluster-3")
        })?;
        let cluster = cluster.trim();
        if cluster.is_empty() {
            return Err(format!("fault {s:?}: no cluster after '='"));
        }
        if !cluster
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(format!(
                "fault {s:?}: cluster name may only hold letters, digits, '-' and '.'"
            ));
        }
        let cluster = cluster.to_string();
        match kind.trim() {
            "stop-peer" => Ok(Fault::StopPeer(cluster)),
            "drop-hbone" => Ok(Fault::DropHbone(cluster)),
            "reject-hbone" => Ok(Fault::RejectHbone(cluster)),
            other => Err(format!(
                "unknown fault kind {other:?} (known: {FAULT_KINDS})"
            )),
        }
    }
}

/// A command read while the sandbox runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Inject(Fault),
    Lift(Fault),
    /// `link A B`: `peerd link` of the pair, both ways.
    Link(String, String),
    /// `unlink A B`: `peerd unlink` of the pair, both ways.
    Unlink(String, String),
    /// Restart that cluster's peerd (SIGTERM, then a new process).
    Restart(String),
}

impl FromStr for Command {
    type Err = String;
    fn from_str(line: &str) -> Result<Command, String> {
        let line = line.trim();
        let (verb, rest) = line.split_once(char::is_whitespace).ok_or_else(|| {
            format!(
                "command {line:?}: expected `fault KIND=CLUSTER`, `lift KIND=CLUSTER`, `restart CLUSTER`, `link A B` or `unlink A B`"
            )
        })?;
        let rest = rest.trim();
        match verb {
            "fault" | "inject" => Ok(Command::Inject(rest.parse()?)),
            "lift" => Ok(Command::Lift(rest.parse()?)),
            "restart" => Ok(Command::Restart(cluster_name(rest)?)),
            "link" | "unlink" => {
                let names: Vec<&str> = rest.split_whitespace().collect();
                let [a, b] = names[..] else {
                    return Err(format!(
                        "command {line:?}: expected `{verb} CLUSTER CLUSTER`"
                    ));
                };
                let (a, b) = (cluster_name(a)?, cluster_name(b)?);
                Ok(if verb == "link" {
                    Command::Link(a, b)
                } else {
                    Command::Unlink(a, b)
                })
            }
            other => Err(format!(
                "unknown command {other:?} (known: fault, inject, lift, restart, link, unlink)"
            )),
        }
    }
}

/// One cluster name argument (`cluster-k`), refused when it holds more than a name.
fn cluster_name(arg: &str) -> Result<String, String> {
    if arg.is_empty() || arg.contains(char::is_whitespace) {
        return Err(format!("expected one cluster name, got {arg:?}"));
    }
    if !arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "cluster {:?}: may only hold letters, digits, '-', '_' and '.'",
            arg.chars().take(64).collect::<String>()
        ));
    }
    Ok(arg.to_string())
}

/// Every address of cluster `index` that answers HBONE: its gateway and its pod blocks.
pub fn hbone_destinations(index: u8) -> Vec<String> {
    let mut out = vec![format!("127.0.{index}.1")];
    for block in 0..POD_BLOCKS {
        let octet = u32::from(index) + POD_BLOCK_STRIDE * block;
        if octet > 255 {
            break;
        }
        out.push(format!("127.{octet}.0.0/16"));
    }
    out
}

/// The nft script that makes table `table` hold exactly the rules of `faults` (each with
/// its cluster's index): created if missing, deleted, then re-declared, in one atomic
/// transaction. With no network fault the table is only deleted.
pub fn render_ruleset(table: &str, faults: &[(Fault, u8)]) -> String {
    let mut script = format!("table inet {table} {{}}\ndelete table inet {table}\n");
    let rules: Vec<String> = faults
        .iter()
        .filter_map(|(fault, index)| {
            let verdict = match fault {
                Fault::DropHbone(_) => "drop",
                Fault::RejectHbone(_) => "reject with tcp reset",
                Fault::StopPeer(_) => return None,
            };
            Some(format!(
                "    ip daddr {{ {} }} tcp dport {HBONE_PORT} tcp flags & (syn | ack) == syn counter {verdict} comment \"{fault}\"\n",
                hbone_destinations(*index).join(", ")
            ))
        })
        .collect();
    if rules.is_empty() {
        return script;
    }
    script.push_str(&format!(
        "table inet {table} {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n"
    ));
    for rule in rules {
        script.push_str(&rule);
    }
    script.push_str("  }\n}\n");
    script
}

/// The sandbox's own nft table.
#[derive(Debug)]
pub struct Nftables {
    table: String,
    created: bool,
}

impl Nftables {
    /// `inet peerd_sandbox_<pid>`.
    pub fn for_this_process() -> Nftables {
        Nftables {
            table: format!("peerd_sandbox_{}", std::process::id()),
            created: false,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Makes the table hold exactly the rules of `faults`.
    pub fn apply(&mut self, faults: &[(Fault, u8)]) -> anyhow::Result<()> {
        let script = render_ruleset(&self.table, faults);
        run_nft(&script).with_context(|| {
            format!(
                "nftables (table inet {}): drop-hbone/reject-hbone need root (CAP_NET_ADMIN) and the nft tool",
                self.table
            )
        })?;
        self.created = faults.iter().any(|(f, _)| f.is_network());
        Ok(())
    }

    /// Deletes the table if this process created it.
    pub fn remove(&mut self) -> anyhow::Result<()> {
        if !self.created {
            return Ok(());
        }
        run_nft(&render_ruleset(&self.table, &[]))?;
        self.created = false;
        Ok(())
    }
}

impl Drop for Nftables {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!(
                "peerd sandbox: could not delete nft table inet {}: {e:#}",
                self.table
            );
        }
    }
}

pub(crate) fn run_nft(script: &str) -> anyhow::Result<()> {
    let mut child = Process::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())
        .context("writing the nft script")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One fault's history, as the status JSON shows it under `"faults"`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FaultStatus {
    /// `KIND=CLUSTER`.
    pub fault: String,
    pub active: bool,
    /// `nftables` or `process`.
    pub method: String,
    /// Seconds since sandbox start.
    pub injected_at_seconds: Option<u64>,
    pub lifted_at_seconds: Option<u64>,
    /// Why injecting or lifting failed, if it did.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Injects and lifts faults on the running clusters and keeps their history.
pub struct FaultController {
    nft: Nftables,
    /// Active faults and when each was injected.
    active: BTreeMap<Fault, Instant>,
    history: Vec<FaultStatus>,
    /// `--fault-for`: lift each fault this long after it was injected.
    auto_lift: Option<Duration>,
    started: Instant,
}

impl FaultController {
    pub fn new(auto_lift: Option<Duration>, started: Instant) -> FaultController {
        FaultController {
            nft: Nftables::for_this_process(),
            active: BTreeMap::new(),
            history: Vec::new(),
            auto_lift,
            started,
        }
    }

    /// Fails when network faults cannot be injected here (not root, no nft), so a
    /// requested fault is refused before anything starts.
    pub fn preflight(&mut self, faults: &[Fault]) -> anyhow::Result<()> {
        if faults.iter().any(Fault::is_network) {
            self.nft.apply(&[])?;
        }
        Ok(())
    }

    fn index_of(clusters: &[Cluster], name: &str) -> anyhow::Result<usize> {
        clusters
            .iter()
            .position(|c| c.layout.name == name)
            .with_context(|| format!("fault names unknown cluster {name:?}"))
    }

    fn network_faults(&self, clusters: &[Cluster]) -> Vec<(Fault, u8)> {
        self.active
            .keys()
            .filter(|f| f.is_network())
            .filter_map(|f| {
                let c = clusters.iter().find(|c| c.layout.name == f.cluster())?;
                Some((f.clone(), c.layout.index))
            })
            .collect()
    }

    fn seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn new_entry(fault: &Fault) -> FaultStatus {
        FaultStatus {
            fault: fault.to_string(),
            method: if fault.is_network() {
                "nftables"
            } else {
                "process"
            }
            .into(),
            ..FaultStatus::default()
        }
    }

    pub fn inject(&mut self, fault: &Fault, clusters: &mut [Cluster]) -> anyhow::Result<()> {
        let i = Self::index_of(clusters, fault.cluster())?;
        if self.active.contains_key(fault) {
            return Ok(());
        }
        let at = self.seconds();
        self.active.insert(fault.clone(), Instant::now());
        let result = if fault.is_network() {
            let rules = self.network_faults(clusters);
            self.nft.apply(&rules)
        } else {
            clusters[i].stop_peerd();
            Ok(())
        };
        let mut entry = Self::new_entry(fault);
        match &result {
            Ok(()) => {
                entry.active = true;
                entry.injected_at_seconds = Some(at);
                println!("fault injected at {at}s: {fault}");
            }
            Err(e) => {
                entry.error = format!("inject: {e:#}");
                self.active.remove(fault);
            }
        }
        self.history.push(entry);
        result
    }

    pub fn lift(&mut self, fault: &Fault, clusters: &mut [Cluster]) -> anyhow::Result<()> {
        let i = Self::index_of(clusters, fault.cluster())?;
        if self.active.remove(fault).is_none() {
            bail!("fault {fault} is not active");
        }
        let at = self.seconds();
        let result = if fault.is_network() {
            let rules = self.network_faults(clusters);
            if rules.is_empty() {
                self.nft.remove()
            } else {
                self.nft.apply(&rules)
            }
        } else {
            clusters[i].start_peerd()
        };
        let name = fault.to_string();
        if let Some(entry) = self
            .history
            .iter_mut()
            .rev()
            .find(|h| h.fault == name && h.active)
        {
            match &result {
                Ok(()) => {
                    entry.active = false;
                    entry.lifted_at_seconds = Some(at);
                    entry.error.clear();
                }
                Err(e) => entry.error = format!("lift: {e:#}"),
            }
        }
        match &result {
            Ok(()) => println!("fault lifted at {at}s: {fault}"),
            // Still in effect as far as we know.
            Err(_) => {
                self.active.insert(fault.clone(), Instant::now());
            }
        }
        result
    }

    /// Lifts the faults whose `--fault-for` has passed.
    pub fn lift_expired(&mut self, clusters: &mut [Cluster]) {
        let Some(after) = self.auto_lift else {
            return;
        };
        let expired: Vec<Fault> = self
            .active
            .iter()
            .filter(|(_, at)| at.elapsed() >= after)
            .map(|(f, _)| f.clone())
            .collect();
        for fault in expired {
            if let Err(e) = self.lift(&fault, clusters) {
                eprintln!("peerd sandbox: lifting {fault}: {e:#}");
            }
        }
    }

    /// Runs one command line.
    pub fn execute(&mut self, line: &str, clusters: &mut [Cluster]) -> anyhow::Result<()> {
        let command: Command = line.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        match command {
            Command::Inject(fault) => self.inject(&fault, clusters),
            Command::Lift(fault) => self.lift(&fault, clusters),
            Command::Link(a, b) => Self::link_pair("link", &a, &b, clusters),
            Command::Unlink(a, b) => Self::link_pair("unlink", &a, &b, clusters),
            Command::Restart(cluster) => self.restart(&cluster, clusters),
        }
    }

    /// `peerd link|unlink` of two sandbox clusters, both ways.
    fn link_pair(verb: &str, a: &str, b: &str, clusters: &[Cluster]) -> anyhow::Result<()> {
        for name in [a, b] {
            Self::index_of(clusters, name)?;
        }
        let kubeconfig = super::linking::kubeconfig_path(clusters)?;
        print!("{}", super::linking::pair(verb, &kubeconfig, a, b)?);
        Ok(())
    }

    /// Restarts a cluster's running peerd; refused while a `stop-peer` fault holds it
    /// down (lift the fault instead).
    pub fn restart(&mut self, cluster: &str, clusters: &mut [Cluster]) -> anyhow::Result<()> {
        let i = Self::index_of(clusters, cluster)?;
        let stop = Fault::StopPeer(cluster.to_string());
        if self.active.contains_key(&stop) {
            bail!("{cluster}'s peerd is stopped by fault {stop}; `lift {stop}` starts it");
        }
        clusters[i].restart_peerd()
    }

    pub fn statuses(&self) -> Vec<FaultStatus> {
        self.history.clone()
    }

    /// Deletes the nft table (exit).
    pub fn shutdown(&mut self) {
        self.active.clear();
        if let Err(e) = self.nft.remove() {
            eprintln!(
                "peerd sandbox: could not delete nft table inet {}: {e:#}",
                self.nft.table()
            );
        }
    }
}

/// Lines typed on stdin, read by a plain thread (a blocked read must not hold up the
/// runtime's shutdown). The channel closes at end of input.
pub fn stdin_commands() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("sandbox-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { return };
                if !line.trim().is_empty() && tx.send(line).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("peerd sandbox: stdin commands unavailable: {e}");
    }
    rx
}

/// Takes the lines of the control file (`STATE_DIR/control`), if any: the file is
/// renamed first, so a line appended meanwhile lands in a new file for the next poll.
pub fn take_control_lines(path: &Path) -> Vec<String> {
    let taken = path.with_extension("taken");
    if std::fs::rename(path, &taken).is_err() {
        return Vec::new();
    }
    let text = std::fs::read_to_string(&taken).unwrap_or_default();
    let _ = std::fs::remove_file(&taken);
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print_back() {
        for text in [
            "stop-peer=cluster-2",
            "drop-hbone=cluster-3",
            "reject-hbone=cluster-1",
        ] {
            let fault: Fault = text.parse().unwrap();
            assert_eq!(fault.to_string(), text);
        }
        assert_eq!(
            "drop-hbone=cluster-3".parse::<Fault>().unwrap(),
            Fault::DropHbone("cluster-3".into())
        );
        assert!(Fault::RejectHbone("c".into()).is_network());
        assert!(!Fault::StopPeer("c".into()).is_network());
    }

    #[test]
    fn bad_faults_are_refused_with_a_reason() {
        let err = "drop-hbone".parse::<Fault>().unwrap_err();
        assert!(err.contains("KIND=CLUSTER"), "{err}");
        let err = "drop-hbone=".parse::<Fault>().unwrap_err();
        assert!(err.contains("no cluster"), "{err}");
        let err = "flood=cluster-1".parse::<Fault>().unwrap_err();
        assert!(
            err.contains("unknown fault kind") && err.contains("reject-hbone"),
            "{err}"
        );
        // Nothing that could smuggle text into the nft script.
        let err = "drop-hbone=c\" }; flush ruleset"
            .parse::<Fault>()
            .unwrap_err();
        assert!(err.contains("may only hold"), "{err}");
    }

    #[test]
    fn link_commands_parse_and_need_two_clusters() {
        assert_eq!(
            "link cluster-1 cluster-3".parse::<Command>().unwrap(),
            Command::Link("cluster-1".into(), "cluster-3".into())
        );
        assert_eq!(
            " unlink  cluster-2 cluster-1 ".parse::<Command>().unwrap(),
            Command::Unlink("cluster-2".into(), "cluster-1".into())
        );
        for bad in ["link cluster-1", "unlink a b c"] {
            let err = bad.parse::<Command>().unwrap_err();
            assert!(err.contains("CLUSTER CLUSTER"), "{bad}: {err}");
        }
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            "lift drop-hbone=cluster-3".parse::<Command>().unwrap(),
            Command::Lift(Fault::DropHbone("cluster-3".into()))
        );
        assert_eq!(
            "  fault reject-hbone=cluster-2 \n"
                .parse::<Command>()
                .unwrap(),
            Command::Inject(Fault::RejectHbone("cluster-2".into()))
        );
        assert_eq!(
            "inject stop-peer=cluster-1".parse::<Command>().unwrap(),
            Command::Inject(Fault::StopPeer("cluster-1".into()))
        );
        assert!("lift".parse::<Command>().is_err());
        assert!("remove drop-hbone=cluster-3".parse::<Command>().is_err());
        assert_eq!(
            " restart  cluster-2 ".parse::<Command>().unwrap(),
            Command::Restart("cluster-2".into())
        );
        let err = "restart cluster-1 cluster-2"
            .parse::<Command>()
            .unwrap_err();
        assert!(err.contains("one cluster name"), "{err}");
        let err = "restart c;rm".parse::<Command>().unwrap_err();
        assert!(err.contains("may only hold"), "{err}");
        let err = "restart".parse::<Command>().unwrap_err();
        assert!(err.contains("restart CLUSTER"), "{err}");
    }

    #[test]
    fn destinations_cover_gateway_and_every_pod_block_and_stay_loopback() {
        let d = hbone_destinations(3);
        assert_eq!(d[0], "127.0.3.1");
        assert_eq!(d[1], "127.3.0.0/16");
        assert_eq!(d[2], "127.35.0.0/16");
        assert_eq!(d.len(), 9);
        // High indices stop at 127.255.
        assert!(hbone_destinations(31).iter().all(|a| {
            let second: u32 = a.split('.').nth(1).unwrap().parse().unwrap();
            second <= 255
        }));
        // Every pod the population can generate is covered.
        use crate::sim::population::{MAX_WORKLOADS, pod_address};
        for k in [1u8, 3, 31] {
            let blocks: Vec<String> = hbone_destinations(k);
            for p in (0..MAX_WORKLOADS as u32).step_by(997) {
                let ip = pod_address(k, p);
                let block = format!("127.{}.0.0/16", ip.octets()[1]);
                assert!(
                    blocks.contains(&block),
                    "{ip} of cluster {k} not in {blocks:?}"
                );
            }
        }
    }

    #[test]
    fn control_file_lines_are_taken_once() {
        let dir = std::env::temp_dir().join(format!("peerd-control-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control");
        assert!(take_control_lines(&path).is_empty(), "no file, no lines");
        std::fs::write(
            &path,
            "# comment\nlift drop-hbone=cluster-3\n\n  fault stop-peer=cluster-1 \n",
        )
        .unwrap();
        assert_eq!(
            take_control_lines(&path),
            vec!["lift drop-hbone=cluster-3", "fault stop-peer=cluster-1"]
        );
        assert!(!path.exists());
        assert!(take_control_lines(&path).is_empty(), "taken only once");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ruleset_renders_one_rule_per_network_fault_in_our_table_only() {
        let script = render_ruleset(
            "sandbox_test_42",
            &[
                (Fault::DropHbone("cluster-3".into()), 3),
                (Fault::StopPeer("cluster-2".into()), 2),
                (Fault::RejectHbone("cluster-1".into()), 1),
            ],
        );
        let expected = [
            "table inet sandbox_test_42 {}",
            "delete table inet sandbox_test_42",
            "table inet sandbox_test_42 {",
            "  chain input {",
            "    type filter hook input priority -10; policy accept;",
            "    ip daddr { 127.0.3.1, 127.3.0.0/16, 127.35.0.0/16, 127.67.0.0/16, 127.99.0.0/16, 127.131.0.0/16, 127.163.0.0/16, 127.195.0.0/16, 127.227.0.0/16 } tcp dport 15008 tcp flags & (syn | ack) == syn counter drop comment \"drop-hbone=cluster-3\"",
            "    ip daddr { 127.0.1.1, 127.1.0.0/16, 127.33.0.0/16, 127.65.0.0/16, 127.97.0.0/16, 127.129.0.0/16, 127.161.0.0/16, 127.193.0.0/16, 127.225.0.0/16 } tcp dport 15008 tcp flags & (syn | ack) == syn counter reject with tcp reset comment \"reject-hbone=cluster-1\"",
            "  }",
            "}",
            "",
        ]
        .join("\n");
        assert_eq!(script, expected);
        // No network fault: the table is only removed.
        assert_eq!(
            render_ruleset("sandbox_test_42", &[(Fault::StopPeer("c".into()), 2)]),
            "table inet sandbox_test_42 {}\ndelete table inet sandbox_test_42\n"
        );
        for line in script.lines().filter(|l| l.contains("table")) {
            assert!(line.contains("inet sandbox_test_42"), "{line}");
        }
    }
}
