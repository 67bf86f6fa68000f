//! Resource figures of a process from `/proc/<pid>`: resident memory, open file
//! descriptors, threads; and the machine's CPU time from `/proc/stat`. Reads only; a
//! process that is gone reads as `None`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcStat {
    pub rss_bytes: u64,
    pub fds: u64,
    pub threads: u64,
}

/// The figures of `pid` now.
pub fn read(pid: u32) -> Option<ProcStat> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let (rss_bytes, threads) = parse_status(&status)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(ProcStat {
        rss_bytes,
        fds,
        threads,
    })
}

/// `VmRSS` (bytes) and `Threads` of a `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmRSS:")? * 1024, field("Threads:")?))
}

/// The machine's CPU time so far (`/proc/stat`, all CPUs, in clock ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub steal: u64,
    pub total: u64,
}

impl CpuTimes {
    /// The machine's CPU times now; `None` when `/proc/stat` is unreadable.
    pub fn now() -> Option<CpuTimes> {
        parse_cpu_line(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Busy and steal shares (percent of all CPU time) between `earlier` and `self`;
    /// `None` when no CPU time passed in between (a window a long fault spanned whole:
    /// both its marks were taken after the fault).
    pub fn shares_since(&self, earlier: &CpuTimes) -> Option<(f64, f64)> {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return None;
        }
        let total = total as f64;
        Some((
            100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total,
            100.0 * self.steal.saturating_sub(earlier.steal) as f64 / total,
        ))
    }
}

/// The aggregate `cpu` line of a `/proc/stat` text: user nice system idle iowait irq
/// softirq steal [guest guest_nice] (guest time is already counted in user).
pub fn parse_cpu_line(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = <[u64; 8]>::try_from(v).ok()?;
    Some(CpuTimes {
        busy: user + nice + system + irq + softirq,
        steal,
        total: user + nice + system + idle + iowait + irq + softirq + steal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_is_parsed_and_shares_computed() {
        let text = "cpu  100 0 50 800 20 5 5 20 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let t = parse_cpu_line(text).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                busy: 160,
                steal: 20,
                total: 1000
            }
        );
        let later = CpuTimes {
            busy: 160 + 50,
            steal: 20 + 10,
            total: 1000 + 100,
        };
        assert_eq!(later.shares_since(&t), Some((50.0, 10.0)));
        assert_eq!(t.shares_since(&t), None, "no time passed: no share, not 0%");
        assert_eq!(parse_cpu_line("cpu0 1 2 3\n"), None, "no aggregate line");
        assert_eq!(parse_cpu_line("cpu  1 2 x 4 5 6 7 8\n"), None);
        assert!(CpuTimes::now().is_some_and(|t| t.total > 0));
    }

    #[test]
    fn status_fields_are_parsed() {
        let text = "Name:\tpeerd\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\nThreads:\t7\n";
        assert_eq!(parse_status(text), Some((2048 * 1024, 7)));
        assert_eq!(
            parse_status("Name:\tx\n"),
            None,
            "a missing field is not a zero"
        );
    }

    #[test]
    fn this_process_reads() {
        let me = read(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0 && me.threads >= 1 && me.fds >= 1, "{me:?}");
    }
}
