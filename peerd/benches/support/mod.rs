//! Shared by every `harness = false` benchmark: argument parsing (`--quick`, `--json
//! FILE`; cargo's own `--bench` flag is ignored), the result table (figure, target,
//! baseline measured in the same run, verdict), JSON output, and process measurements
//! (RSS, CPU time) read from `/proc`. Benchmarks report; they never assert timing.

#![allow(dead_code)]

pub mod child;
pub mod downstream;

use std::fmt::Write as _;
use std::time::Duration;

pub struct Args {
    pub quick: bool,
    pub json: Option<String>,
}

impl Args {
    pub fn parse() -> Args {
        let mut args = Args {
            quick: false,
            json: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => args.quick = true,
                "--json" => args.json = it.next(),
                _ => {} // cargo passes `--bench`; anything else is ignored too
            }
        }
        args
    }
}

/// How a figure compares with its target.
#[derive(Clone, Copy)]
pub enum Goal {
    /// Lower is better; the target is an upper bound.
    Below(f64),
    /// Higher is better; the target is a lower bound.
    Above(f64),
    /// Reported only.
    None,
}

pub struct Row {
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    pub goal: Goal,
    /// The same quantity for the baseline, measured in this run: what an operator would
    /// have without peerd (or without the part measured), as each bench says.
    pub baseline: Option<f64>,
}

pub struct Report {
    pub bench: &'static str,
    pub size: String,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn new(bench: &'static str, size: impl Into<String>) -> Report {
        Report {
            bench,
            size: size.into(),
            rows: Vec::new(),
        }
    }

    pub fn row(
        &mut self,
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
        goal: Goal,
        baseline: Option<f64>,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            value,
            unit,
            goal,
            baseline,
        });
    }

    fn verdict(row: &Row) -> &'static str {
        match row.goal {
            Goal::Below(t) if row.value < t => "meets",
            Goal::Above(t) if row.value > t => "meets",
            Goal::None => "-",
            _ => "MISSES",
        }
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "\nbenchmark {} ({})", self.bench, self.size);
        let _ = writeln!(
            s,
            "{:<52} {:>14} {:>14} {:>14} {:>8}",
            "figure", "value", "target", "baseline", "verdict"
        );
        let _ = writeln!(s, "{}", "-".repeat(106));
        for r in &self.rows {
            let target = match r.goal {
                Goal::Below(t) => format!("< {}", fmt_num(t)),
                Goal::Above(t) => format!("> {}", fmt_num(t)),
                Goal::None => "-".into(),
            };
            let baseline = r.baseline.map(fmt_num).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "{:<52} {:>14} {:>14} {:>14} {:>8}",
                format!("{} [{}]", r.figure, r.unit),
                fmt_num(r.value),
                target,
                baseline,
                Self::verdict(r)
            );
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": self.bench,
            "size": self.size,
            "rows": self.rows.iter().map(|r| serde_json::json!({
                "figure": r.figure,
                "value": r.value,
                "unit": r.unit,
                "target": match r.goal { Goal::Below(t) => serde_json::json!({"below": t}),
                                         Goal::Above(t) => serde_json::json!({"above": t}),
                                         Goal::None => serde_json::Value::Null },
                "baseline": r.baseline,
                "verdict": Self::verdict(r),
            })).collect::<Vec<_>>(),
        })
    }

    /// Prints the table and writes the JSON file when asked.
    pub fn emit(&self, args: &Args) -> anyhow::Result<()> {
        println!("{}", self.table());
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_vec_pretty(&self.json())?)?;
            println!("figures written to {path}");
        }
        Ok(())
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The p-th percentile (0..=100) of samples (sorted in place).
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

fn status_field_kb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size of a process, in MB.
pub fn rss_mb(pid: u32) -> Option<f64> {
    status_field_kb(pid, "VmRSS:").map(|kb| kb / 1024.0)
}

/// Peak resident set size of a process, in MB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    status_field_kb(pid, "VmHWM:").map(|kb| kb / 1024.0)
}

/// User + system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
