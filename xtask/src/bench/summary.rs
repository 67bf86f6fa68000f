//! The summary of repeated benchmark runs (`cargo xtask bench … --runs N`): for every
//! figure its median over the runs, the lowest and highest value and the spread, and the
//! verdict of the median against the figure's target. These machines are noisy, so a
//! headline figure is a median with its spread, never one run.
//!
//! Owns: reading the per-run JSON files the benchmarks write and the summary table. It
//! never runs a benchmark and never judges a figure the benchmark itself did not target.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Deserialize)]
struct RunReport {
    bench: String,
    size: String,
    rows: Vec<RunRow>,
}

#[derive(Deserialize)]
struct RunRow {
    figure: String,
    /// `null` where the run had no value (serde_json writes NaN so).
    value: Option<f64>,
    unit: String,
    target: Option<Target>,
    baseline: Option<f64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Target {
    Below(f64),
    Above(f64),
}

/// One figure over every run.
#[derive(Debug, PartialEq)]
pub struct FigureSummary {
    /// The figure as the first run named it (names may carry that run's counts).
    pub figure: String,
    pub unit: String,
    pub values: Vec<f64>,
    pub baselines: Vec<f64>,
    target: Option<(bool, f64)>,
}

impl FigureSummary {
    pub fn median(&self) -> f64 {
        median(&self.values)
    }

    /// (highest − lowest) / median, in percent; NaN when the median is 0.
    pub fn spread_percent(&self) -> f64 {
        let (lo, hi) = min_max(&self.values);
        (hi - lo) / self.median().abs() * 100.0
    }

    pub fn verdict(&self) -> &'static str {
        let m = self.median();
        match self.target {
            None => "-",
            Some((true, t)) if m < t => "meets",
            Some((false, t)) if m > t => "meets",
            Some(_) => "MISSES",
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .filter(|x| !x.is_nan())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Reads one run's JSON file per element of `files` (runs of the same benchmark, in run
/// order) and lines their figures up by position: every run prints the same rows in the
/// same order; a run with other rows is an error, not a silent misalignment.
pub fn summarize(files: &[impl AsRef<Path>]) -> anyhow::Result<(String, Vec<FigureSummary>)> {
    let mut reports = Vec::with_capacity(files.len());
    for file in files {
        let file = file.as_ref();
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading benchmark figures {}", file.display()))?;
        let report: RunReport = serde_json::from_str(&text)
            .with_context(|| format!("parsing benchmark figures {}", file.display()))?;
        reports.push(report);
    }
    let Some(first) = reports.first() else {
        bail!("no runs to summarize");
    };
    let mut figures: Vec<FigureSummary> = first
        .rows
        .iter()
        .map(|row| FigureSummary {
            figure: row.figure.clone(),
            unit: row.unit.clone(),
            values: Vec::new(),
            baselines: Vec::new(),
            target: row.target.map(|t| match t {
                Target::Below(x) => (true, x),
                Target::Above(x) => (false, x),
            }),
        })
        .collect();
    for (run, report) in reports.iter().enumerate() {
        if report.bench != first.bench || report.rows.len() != figures.len() {
            bail!(
                "run {} of {} has {} rows, run 1 has {}: the runs cannot be lined up",
                run + 1,
                report.bench,
                report.rows.len(),
                figures.len()
            );
        }
        for (summary, row) in figures.iter_mut().zip(&report.rows) {
            if row.unit != summary.unit {
                bail!(
                    "run {}: row {:?} is in {}, run 1's row {:?} in {}",
                    run + 1,
                    row.figure,
                    row.unit,
                    summary.figure,
                    summary.unit
                );
            }
            summary.values.push(row.value.unwrap_or(f64::NAN));
            if let Some(b) = row.baseline {
                summary.baselines.push(b);
            }
        }
    }
    let heading = format!("{} ({}), {} runs", first.bench, first.size, reports.len());
    Ok((heading, figures))
}

pub fn table(heading: &str, figures: &[FigureSummary]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\nsummary of benchmark {heading}");
    let _ = writeln!(
        s,
        "{:<60} {:>11} {:>11} {:>11} {:>8} {:>11} {:>11} {:>8}",
        "figure", "median", "lowest", "highest", "spread", "baseline", "target", "verdict"
    );
    let _ = writeln!(s, "{}", "-".repeat(138));
    for f in figures {
        let (lo, hi) = min_max(&f.values);
        let target = match f.target {
            Some((true, t)) => format!("< {}", num(t)),
            Some((false, t)) => format!("> {}", num(t)),
            None => "-".into(),
        };
        let baseline = if f.baselines.is_empty() {
            "-".into()
        } else {
            num(median(&f.baselines))
        };
        let spread = f.spread_percent();
        let spread = if spread.is_finite() {
            format!("{spread:.0}%")
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "{:<60} {:>11} {:>11} {:>11} {:>8} {:>11} {:>11} {:>8}",
            format!("{} [{}]", f.figure, f.unit),
            num(f.median()),
            num(lo),
            num(hi),
            spread,
            baseline,
            target,
            f.verdict()
        );
    }
    s
}

pub fn json(heading: &str, figures: &[FigureSummary]) -> serde_json::Value {
    serde_json::json!({
        "summary": heading,
        "figures": figures.iter().map(|f| serde_json::json!({
            "figure": f.figure,
            "unit": f.unit,
            "values": f.values,
            "median": f.median(),
            "baseline_median": if f.baselines.is_empty() { None } else { Some(median(&f.baselines)) },
            "verdict": f.verdict(),
        })).collect::<Vec<_>>(),
    })
}

fn num(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_run(dir: &Path, name: &str, values: &[f64]) -> std::path::PathBuf {
        let rows: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::json!({"figure": format!("f{i}"), "value": v, "unit": "s",
                    "target": {"below": 2.0}, "baseline": 1.0, "verdict": "-"})
            })
            .collect();
        let path = dir.join(name);
        let report = serde_json::json!({"bench": "xds", "size": "n", "rows": rows});
        std::fs::write(&path, report.to_string()).expect("writing a test file");
        path
    }

    #[test]
    fn figures_are_lined_up_by_position_and_judged_on_their_median() {
        let dir = std::env::temp_dir().join(format!("xtask-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let files = [
            write_run(&dir, "a.json", &[1.0, 3.0]),
            write_run(&dir, "b.json", &[2.5, 1.0]),
            write_run(&dir, "c.json", &[1.5, 2.0]),
        ];
        let (_, figures) = summarize(&files).expect("summary");
        assert_eq!(figures[0].values, vec![1.0, 2.5, 1.5]);
        assert_eq!(figures[0].median(), 1.5);
        assert_eq!(figures[0].verdict(), "meets");
        assert_eq!(figures[1].median(), 2.0);
        assert_eq!(figures[1].verdict(), "MISSES");
        assert!((figures[1].spread_percent() - 100.0).abs() < 1e-9);

        // A figure a run could not measure is written as null: it is left out of the median.
        let with_gap = write_run(&dir, "e.json", &[f64::NAN, 2.0]);
        let (_, figures) = summarize(&[files[0].clone(), with_gap]).expect("null value");
        assert_eq!(figures[0].median(), 1.0);

        let other = write_run(&dir, "d.json", &[1.0]);
        let err = summarize(&[files[0].clone(), other]).expect_err("misaligned runs");
        assert!(err.to_string().contains("cannot be lined up"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
