//! Resource figures of a process from `/proc/<pid>`: resident memory, open file
//! descriptors, threads. Reads only; a process that is gone reads as `None`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
