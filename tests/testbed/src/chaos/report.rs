//! The tables a chaos or soak run prints. Formatting only.

use std::fmt::Write as _;
use std::time::Duration;

use super::catalogue::FaultRow;
use super::rig::Rig;

/// NACKs the nodes' simulated ztunnels sent.
pub fn node_nacks(rig: &Rig) -> u64 {
    rig.node_ztunnels
        .iter()
        .map(|s| {
            let s = s.snapshot();
            s.address_type.nacks_sent + s.authorization_type.nacks_sent
        })
        .sum()
}

pub fn chaos_table(rows: &[FaultRow], nacks: u64, took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<30} {:>9} {:>11} {:>10} {:>10}  first violation",
        "fault", "recovery", "cond.chgs", "withdrawn", "violations"
    );
    let _ = writeln!(out, "{}", "-".repeat(100));
    for r in rows {
        let _ = writeln!(
            out,
            "{:<30} {:>9} {:>11} {:>10} {:>10}  {}",
            r.fault,
            r.recovery_seconds
                .map_or("never".to_string(), |s| format!("{s:.1}s")),
            r.condition_changes,
            r.withdrawn,
            r.violations,
            r.detail
        );
    }
    let total: usize = rows.iter().map(|r| r.violations).sum();
    let _ = writeln!(out, "{}", "-".repeat(100));
    let _ = writeln!(
        out,
        "{} faults in {:.0}s: {total} violation(s) (target 0), {nacks} NACK(s) (target 0)",
        rows.len(),
        took.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "recovery: lift → exact expected state; cond.chgs: Gateway condition status changes seen; withdrawn: peer workloads dropped past grace/unlink"
    );
    let _ = writeln!(out, "\nwhat each fault did:");
    for r in rows {
        let _ = writeln!(out, "  {:<30} {}", r.fault, r.what);
    }
    out
}

/// `12.3 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_fault_and_the_total() {
        let rows = vec![
            FaultRow {
                fault: "partition < grace".into(),
                what: "cut".into(),
                recovery_seconds: Some(1.25),
                violations: 0,
                condition_changes: 2,
                withdrawn: 0,
                detail: String::new(),
            },
            FaultRow {
                fault: "API 5xx (50%)".into(),
                what: "503s".into(),
                recovery_seconds: None,
                violations: 2,
                condition_changes: 0,
                withdrawn: 7,
                detail: "(d) not converged".into(),
            },
        ];
        let t = chaos_table(&rows, 0, Duration::from_secs(61));
        assert!(t.contains("partition < grace"), "{t}");
        assert!(t.contains("1.2s") || t.contains("1.3s"), "{t}");
        assert!(t.contains("never"), "{t}");
        assert!(t.contains("2 faults in 61s: 2 violation(s)"), "{t}");
        assert_eq!(mib(3 * 1024 * 1024), "3.0 MiB");
    }
}
