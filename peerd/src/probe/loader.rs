//! Loads and attaches the kernel connect probes (aya 0.14) and reads their maps.
//!
//! Owns: the `aya::Ebpf` instance, the attachment (classic tracepoint or tp_btf, with
//! fallback to the other), the mounts the attachment needs (tracefs, bpffs), the in-kernel
//! port filter, and raw map snapshots. Must never pin anything (dropping a
//! [`ProbeHandle`] detaches and frees everything, so a restart leaks nothing), never
//! interpret the counters (that is `aggregator`), and never panic on map contents.

use std::collections::BTreeSet;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use peerd_ebpf::layout::{DEST_KEY_SIZE, DEST_STATS_SIZE};
use peerd_ebpf::{Counter, DestKey, DestStats, maps, programs};

const TRACEFS: &str = "/sys/kernel/tracing";
const BPFFS: &str = "/sys/fs/bpf";
const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Which attachment to try, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachPreference {
    /// Classic tracepoints, falling back to tp_btf.
    #[default]
    TracepointFirst,
    /// tp_btf, falling back to classic tracepoints.
    BtfFirst,
    /// Only classic tracepoints.
    TracepointOnly,
    /// Only tp_btf.
    BtfOnly,
}

/// The attachment in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachKind {
    Tracepoint,
    TpBtf,
}

impl fmt::Display for AttachKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachKind::Tracepoint => "tracepoint",
            AttachKind::TpBtf => "tp_btf",
        })
    }
}

/// How to load the probes.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Destination ports counted in the kernel (at most [`peerd_ebpf::MAX_PORTS`]).
    pub ports: Vec<u16>,
    /// Capacity of the per-destination LRU map.
    pub max_destinations: u32,
    /// Capacity of the in-flight connect LRU map.
    pub max_in_flight: u32,
    pub attach: AttachPreference,
    /// Kernel BTF used for CO-RE relocation and tp_btf.
    pub btf_path: PathBuf,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            ports: peerd_ebpf::DEFAULT_PORTS.to_vec(),
            max_destinations: peerd_ebpf::DEFAULT_MAX_DESTINATIONS,
            max_in_flight: peerd_ebpf::DEFAULT_MAX_IN_FLIGHT,
            attach: AttachPreference::default(),
            btf_path: PathBuf::from(DEFAULT_BTF),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("probes unavailable: {0}")]
    NotBuilt(&'static str),
    #[error("invalid probe configuration: {0}")]
    Config(String),
    #[error("kernel BTF unavailable at {path}: {reason}")]
    Btf { path: PathBuf, reason: String },
    #[error("loading the eBPF object failed (missing privileges, CAP_BPF/CAP_PERFMON?): {0}")]
    Load(String),
    #[error("attaching failed: {0}")]
    Attach(String),
    #[error("eBPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
}

/// Health of the probes: the maps' own counters (the `counters` array), the live entry
/// count, and the runs the kernel skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapHealth {
    pub dest_inserted: u64,
    pub dest_insert_failed: u64,
    pub start_insert_failed: u64,
    pub start_missing: u64,
    pub live_destinations: u64,
    /// Runs of the attached programs the kernel skipped ([`ProgramRunStats::skipped`],
    /// summed). The programs run for every TCP state change on the host, so a skipped
    /// run was not necessarily a monitored connect; any nonzero count means one may be
    /// missing.
    pub skipped_runs: u64,
}

impl MapHealth {
    /// Destinations evicted by the LRU (peerd never deletes entries itself).
    pub fn dest_evicted(&self) -> u64 {
        self.dest_inserted.saturating_sub(self.live_destinations)
    }
}

/// One read of the kernel maps.
#[derive(Clone, Debug, Default)]
pub struct KernelSnapshot {
    pub destinations: Vec<(DestKey, DestStats)>,
    pub health: MapHealth,
}

/// Kernel run-time statistics of one attached program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRunStats {
    pub name: &'static str,
    /// Zero unless `kernel.bpf_stats_enabled` is set.
    pub run_count: u64,
    /// Zero unless `kernel.bpf_stats_enabled` is set.
    pub run_time: Duration,
    /// Runs the kernel skipped (`recursion_misses`, always kept): a classic tracepoint
    /// program whose event fired on a CPU already running a BPF program, or a tp_btf
    /// program that would have nested in itself.
    pub skipped: u64,
}

/// The loaded and attached probes. Dropping it detaches the programs and frees the maps.
pub struct ProbeHandle {
    ebpf: Ebpf,
    kind: AttachKind,
    ports: BTreeSet<u16>,
}

impl fmt::Debug for ProbeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeHandle")
            .field("kind", &self.kind)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl ProbeHandle {
    /// Loads the object, fills the port filter and attaches one pair of programs.
    pub fn load(config: &LoaderConfig) -> Result<Self, LoadError> {
        let object = peerd_ebpf::connect_object().map_err(LoadError::NotBuilt)?;
        let ports = validate_ports(&config.ports)?;
        if config.max_destinations == 0 || config.max_in_flight == 0 {
            return Err(LoadError::Config("map capacities must be positive".into()));
        }
        let btf = Btf::parse_file(&config.btf_path, aya::Endianness::default()).map_err(|err| {
            LoadError::Btf {
                path: config.btf_path.clone(),
                reason: err.to_string(),
            }
        })?;
        raise_memlock_limit();
        ensure_mounted(BPFFS, "bpf");

        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .map_max_entries(maps::DEST_STATS, config.max_destinations)
            .map_max_entries(maps::CONNECT_START, config.max_in_flight)
            .load(object)
            .map_err(|err| LoadError::Load(error_chain(&err)))?;

        // Fill the filter before attaching so no event sees a half-written config.
        write_ports(&mut ebpf, &BTreeSet::new(), &ports)?;

        let order: &[AttachKind] = match config.attach {
            AttachPreference::TracepointFirst => &[AttachKind::Tracepoint, AttachKind::TpBtf],
            AttachPreference::BtfFirst => &[AttachKind::TpBtf, AttachKind::Tracepoint],
            AttachPreference::TracepointOnly => &[AttachKind::Tracepoint],
            AttachPreference::BtfOnly => &[AttachKind::TpBtf],
        };
        let mut failures = Vec::new();
        for kind in order {
            match attach(&mut ebpf, *kind, &btf) {
                Ok(()) => {
                    tracing::info!(attach = %kind, ports = ?ports, "eBPF connect probes attached");
                    return Ok(ProbeHandle {
                        ebpf,
                        kind: *kind,
                        ports,
                    });
                }
                Err(reason) => {
                    tracing::warn!(attach = %kind, %reason, "eBPF attachment failed");
                    failures.push(format!("{kind}: {reason}"));
                }
            }
        }
        Err(LoadError::Attach(failures.join("; ")))
    }

    pub fn attach_kind(&self) -> AttachKind {
        self.kind
    }

    /// The ports currently filtered in the kernel, ascending.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.iter().copied().collect()
    }

    /// Replaces the in-kernel port filter; takes effect for the next kernel event.
    /// On error the previous filter is kept as far as the kernel allowed.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), LoadError> {
        let wanted = validate_ports(ports)?;
        write_ports(&mut self.ebpf, &self.ports, &wanted)?;
        self.ports = wanted;
        Ok(())
    }

    /// Reads every destination entry and the map-health counters.
    pub fn snapshot(&self) -> Result<KernelSnapshot, LoadError> {
        let map = self.ebpf.map(maps::DEST_STATS).ok_or(LoadError::Map {
            map: maps::DEST_STATS,
            reason: "missing from object".into(),
        })?;
        let dest: BpfHashMap<&MapData, [u8; DEST_KEY_SIZE], [u8; DEST_STATS_SIZE]> =
            BpfHashMap::try_from(map).map_err(|err| map_error(maps::DEST_STATS, &err))?;
        let mut destinations = Vec::new();
        for entry in dest.iter() {
            match entry {
                Ok((key, value)) => {
                    destinations.push((DestKey::from_bytes(&key), DestStats::from_bytes(&value)))
                }
                // An entry evicted between get_next_key and lookup: skip it, not fatal.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(err) => return Err(map_error(maps::DEST_STATS, &err)),
            }
        }
        let counters_map = self.ebpf.map(maps::COUNTERS).ok_or(LoadError::Map {
            map: maps::COUNTERS,
            reason: "missing from object".into(),
        })?;
        let counters: Array<&MapData, u64> =
            Array::try_from(counters_map).map_err(|err| map_error(maps::COUNTERS, &err))?;
        let read = |counter: Counter| -> Result<u64, LoadError> {
            counters
                .get(&(counter as u32), 0)
                .map_err(|err| map_error(maps::COUNTERS, &err))
        };
        let health = MapHealth {
            dest_inserted: read(Counter::DestInserted)?,
            dest_insert_failed: read(Counter::DestInsertFailed)?,
            start_insert_failed: read(Counter::StartInsertFailed)?,
            start_missing: read(Counter::StartMissing)?,
            live_destinations: destinations.len() as u64,
            skipped_runs: self
                .attached_names()
                .iter()
                .map(|name| self.skipped_runs_of(name))
                .sum(),
        };
        Ok(KernelSnapshot {
            destinations,
            health,
        })
    }

    /// Kernel ids of the attached programs (to check that nothing outlives the handle).
    pub fn program_ids(&self) -> Vec<u32> {
        self.attached_names()
            .iter()
            .filter_map(|name| Some(self.ebpf.program(name)?.info().ok()?.id()))
            .collect()
    }

    fn attached_names(&self) -> &'static [&'static str] {
        match self.kind {
            AttachKind::Tracepoint => &[programs::TP_STATE, programs::TP_RETRANSMIT],
            AttachKind::TpBtf => &[programs::BTF_STATE, programs::BTF_RETRANSMIT],
        }
    }

    /// Per-program kernel run statistics.
    pub fn program_stats(&self) -> Vec<ProgramRunStats> {
        self.attached_names()
            .iter()
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramRunStats {
                    name,
                    run_count: info.run_count(),
                    run_time: info.run_time(),
                    skipped: self.skipped_runs_of(name),
                })
            })
            .collect()
    }

    /// [`ProgramRunStats::skipped`] of one attached program (0 when unreadable): one
    /// procfs read, no BPF syscall, since every snapshot takes it.
    fn skipped_runs_of(&self, name: &str) -> u64 {
        self.ebpf
            .program(name)
            .and_then(|program| program.fd().ok())
            .and_then(|fd| recursion_misses(fd.as_fd()))
            .unwrap_or(0)
    }
}

/// The kernel's `recursion_misses` of a program, from this process's `fdinfo` of its fd
/// (kernels since 5.12; aya 0.14's `ProgramInfo` does not carry it). `None` when absent.
fn recursion_misses(fd: BorrowedFd<'_>) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    parse_recursion_misses(&text)
}

fn parse_recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|value| value.trim().parse().ok())
}

fn validate_ports(ports: &[u16]) -> Result<BTreeSet<u16>, LoadError> {
    let set: BTreeSet<u16> = ports.iter().copied().collect();
    if set.contains(&0) {
        return Err(LoadError::Config("port 0 cannot be monitored".into()));
    }
    if set.len() > peerd_ebpf::MAX_PORTS as usize {
        return Err(LoadError::Config(format!(
            "{} ports requested, the kernel filter holds at most {}",
            set.len(),
            peerd_ebpf::MAX_PORTS
        )));
    }
    Ok(set)
}

fn write_ports(
    ebpf: &mut Ebpf,
    current: &BTreeSet<u16>,
    wanted: &BTreeSet<u16>,
) -> Result<(), LoadError> {
    let map = ebpf.map_mut(maps::PORTS).ok_or(LoadError::Map {
        map: maps::PORTS,
        reason: "missing from object".into(),
    })?;
    let mut filter: BpfHashMap<&mut MapData, u16, u8> =
        BpfHashMap::try_from(map).map_err(|err| map_error(maps::PORTS, &err))?;
    // Add first, then remove: a port kept in both sets is never briefly missing.
    for port in wanted.difference(current) {
        filter
            .insert(port, 1, 0)
            .map_err(|err| map_error(maps::PORTS, &err))?;
    }
    for port in current.difference(wanted) {
        match filter.remove(port) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(err) => return Err(map_error(maps::PORTS, &err)),
        }
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, kind: AttachKind, btf: &Btf) -> Result<(), String> {
    let pair: [(&str, &str, &str); 2] = match kind {
        AttachKind::Tracepoint => [
            (programs::TP_STATE, "sock", "inet_sock_set_state"),
            (programs::TP_RETRANSMIT, "tcp", "tcp_retransmit_skb"),
        ],
        AttachKind::TpBtf => [
            (programs::BTF_STATE, "", "inet_sock_set_state"),
            (programs::BTF_RETRANSMIT, "", "tcp_retransmit_skb"),
        ],
    };
    if kind == AttachKind::Tracepoint {
        ensure_mounted(TRACEFS, "tracefs");
    }
    let mut attached: Vec<&str> = Vec::new();
    let mut result = Ok(());
    for (name, category, event) in pair {
        let outcome = attach_one(ebpf, kind, name, category, event, btf);
        match outcome {
            Ok(()) => attached.push(name),
            Err(reason) => {
                result = Err(format!("{name}: {reason}"));
                break;
            }
        }
    }
    if result.is_err() {
        // Leave nothing half attached: unloading detaches the program's links.
        for name in attached {
            if let Some(program) = ebpf.program_mut(name) {
                let _ = unload(program, kind);
            }
        }
    }
    result
}

fn attach_one(
    ebpf: &mut Ebpf,
    kind: AttachKind,
    name: &str,
    category: &str,
    event: &str,
    btf: &Btf,
) -> Result<(), String> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| "not in the object".to_string())?;
    match kind {
        AttachKind::Tracepoint => {
            let tp: &mut TracePoint = program.try_into().map_err(|e| error_chain(&e))?;
            tp.load().map_err(|e| error_chain(&e))?;
            tp.attach(category, event).map_err(|e| error_chain(&e))?;
        }
        AttachKind::TpBtf => {
            let tp: &mut BtfTracePoint = program.try_into().map_err(|e| error_chain(&e))?;
            tp.load(event, btf).map_err(|e| error_chain(&e))?;
            tp.attach().map_err(|e| error_chain(&e))?;
        }
    }
    Ok(())
}

fn unload(program: &mut aya::programs::Program, kind: AttachKind) -> Result<(), String> {
    match kind {
        AttachKind::Tracepoint => {
            let tp: &mut TracePoint = program.try_into().map_err(|e| error_chain(&e))?;
            tp.unload().map_err(|e| error_chain(&e))
        }
        AttachKind::TpBtf => {
            let tp: &mut BtfTracePoint = program.try_into().map_err(|e| error_chain(&e))?;
            tp.unload().map_err(|e| error_chain(&e))
        }
    }
}

fn map_error(map: &'static str, err: &dyn std::error::Error) -> LoadError {
    LoadError::Map {
        map,
        reason: error_chain(err),
    }
}

/// `err: source: source…` so the verifier log or errno is visible in one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Whether `path` is a mount point of filesystem type `fstype` (from /proc/self/mounts).
pub fn is_mounted(path: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next();
            fields.next() == Some(path) && fields.next() == Some(fstype)
        })
    })
}

/// Mounts `fstype` at `path` when absent; failures are logged, the attach reports them.
fn ensure_mounted(path: &str, fstype: &str) {
    if is_mounted(path, fstype) || !Path::new(path).is_dir() {
        return;
    }
    match Command::new("mount")
        .args(["-t", fstype, fstype, path])
        .output()
    {
        Ok(out) if out.status.success() => tracing::info!(path, fstype, "mounted"),
        Ok(out) => tracing::warn!(
            path,
            fstype,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "mount failed"
        ),
        Err(err) => tracing::warn!(path, fstype, %err, "cannot run mount"),
    }
}

/// Kernels ≥ 5.11 account BPF memory to the memcg, so a refused rlimit is only a warning.
#[allow(unsafe_code)] // setrlimit(2) has no safe wrapper in std; plain FFI, no pointers kept.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `limit` is a valid, initialised rlimit that outlives the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot raise RLIMIT_MEMLOCK; continuing (memcg accounting usually suffices)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program's fdinfo as kernel 6.18 prints it.
    const FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t26\nprog_type:\t5\n\
        prog_jited:\t1\nprog_tag:\t62eb1e6d9c075184\nmemlock:\t4096\nprog_id:\t4051\n\
        run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t3\nverified_insns:\t947\n";

    #[test]
    fn skipped_runs_are_read_from_fdinfo_and_absent_on_older_kernels() {
        assert_eq!(parse_recursion_misses(FDINFO), Some(3));
        let older = FDINFO.replace("recursion_misses:\t3\n", "");
        assert_eq!(parse_recursion_misses(&older), None);
        assert_eq!(parse_recursion_misses("recursion_misses:\tmany\n"), None);
    }
}
