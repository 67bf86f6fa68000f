//! `cargo xtask bench probes`: the cost of the eBPF connect probes.
//!
//! Loopback connect loops without and with the programs attached (the sink's port in the
//! kernel filter), interleaved in the same run over an even number of rounds with the
//! order alternating (the headline ratio is their geometric mean), plus the kernel's own
//! per-program run time (BPF stats, sampled in separate loops: the accounting itself costs
//! time on every run, so the timed loops run without it, as peerd does). Needs root;
//! without eBPF it says why and exits 0, unless `PEERD_REQUIRE_EBPF=1`. Reports only:
//! never asserts timing.

mod support;

use std::time::Duration;

use peerd_testbed::bench;
use support::{Args, Goal, Report, percentile};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // An even number of rounds: half run the plain loop first, half the probed one, so the
    // order effect (TIME_WAIT sockets left by the previous loop) cancels out.
    let (connects, rounds) = if args.quick { (2_000, 4) } else { (20_000, 6) };
    if let Err(reason) = peerd_ebpf::connect_object() {
        return unavailable(&format!("probes not built: {reason}"));
    }
    let results = match bench::compare(connects, rounds) {
        Ok(results) => results,
        Err(err) => return unavailable(&err.to_string()),
    };

    let per_connect_us = |d: Duration| d.as_secs_f64() * 1e6 / connects as f64;
    let mut without: Vec<f64> = results
        .iter()
        .map(|r| per_connect_us(r.without.elapsed))
        .collect();
    let mut with: Vec<f64> = results
        .iter()
        .map(|r| per_connect_us(r.with.elapsed))
        .collect();
    let mut ratios: Vec<f64> = results.iter().map(|r| r.ratio).collect();
    // The baseline: the same connects with no programs attached.
    let baseline = percentile(&mut without, 50.0);

    let mut report = Report::new(
        "probes",
        format!("{connects} loopback connects x {rounds} rounds"),
    );
    report.row(
        "connect, no programs (median of rounds)",
        baseline,
        "us",
        Goal::None,
        None,
    );
    report.row(
        "connect, programs attached + port monitored (median)",
        percentile(&mut with, 50.0),
        "us",
        Goal::None,
        Some(baseline),
    );
    let geometric_mean =
        (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len().max(1) as f64).exp();
    report.row(
        "time ratio with/without (geometric mean, order-balanced)",
        geometric_mean,
        "x",
        Goal::Below(1.05),
        Some(1.0),
    );
    report.row(
        "time ratio with/without (median of rounds)",
        percentile(&mut ratios, 50.0),
        "x",
        Goal::None,
        Some(1.0),
    );
    report.row(
        "time ratio with/without (worst round)",
        percentile(&mut ratios, 100.0),
        "x",
        Goal::None,
        Some(1.0),
    );
    for name in [
        peerd_ebpf::programs::TP_STATE,
        peerd_ebpf::programs::TP_RETRANSMIT,
        peerd_ebpf::programs::BTF_STATE,
        peerd_ebpf::programs::BTF_RETRANSMIT,
    ] {
        let runs: Vec<_> = results
            .iter()
            .flat_map(|r| r.programs.iter())
            .filter(|p| p.name == name)
            .collect();
        if runs.is_empty() {
            continue;
        }
        let run_count: u64 = runs.iter().map(|p| p.run_count).sum();
        let run_time: Duration = runs.iter().map(|p| p.run_time).sum();
        if run_count > 0 {
            report.row(
                format!("{name}: kernel run time per run"),
                run_time.as_secs_f64() * 1e9 / run_count as f64,
                "ns",
                Goal::None,
                None,
            );
        }
        report.row(
            format!("{name}: runs per connect"),
            // The sampled loops (stats on) are a quarter of the timed ones.
            run_count as f64 / ((connects / 4).max(1) as f64 * f64::from(rounds)),
            "runs",
            Goal::None,
            None,
        );
    }
    report.emit(&args)
}

fn unavailable(reason: &str) -> anyhow::Result<()> {
    if std::env::var("PEERD_REQUIRE_EBPF").is_ok_and(|v| v == "1") {
        anyhow::bail!("PEERD_REQUIRE_EBPF=1 but the probes benchmark cannot run: {reason}");
    }
    println!("\nbenchmark probes skipped: {reason}");
    Ok(())
}
