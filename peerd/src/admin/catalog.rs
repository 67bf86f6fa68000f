//! The metric catalog: every `peerd_*` metric's HELP text and unit, read from the table
//! in `docs/metrics.md` (compiled in), so the documentation is the one source of truth
//! and `/metrics` carries a `# HELP` line for each series (`promtool check metrics`).
//!
//! It owns describing metrics and `peerd_build_info`; it must never record data-path
//! values.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// The documentation table the descriptions come from.
const METRICS_DOC: &str = include_str!("../../../docs/metrics.md");

/// One documented metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub kind: MetricKind,
    pub unit: &'static str,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Rows of the documentation tables (`| \`name\` | type | labels | unit | status | meaning |`).
pub fn entries() -> Vec<CatalogEntry> {
    parse(METRICS_DOC)
}

fn parse(doc: &'static str) -> Vec<CatalogEntry> {
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&'static str> = line.trim().trim_matches('|').split('|').collect();
            let [name, kind, _labels, unit, _status, help] = cells.as_slice() else {
                return None;
            };
            let name = name.trim().strip_prefix('`')?.strip_suffix('`')?;
            let kind = match kind.trim() {
                "counter" => MetricKind::Counter,
                "gauge" => MetricKind::Gauge,
                "histogram" => MetricKind::Histogram,
                _ => return None,
            };
            Some(CatalogEntry {
                name,
                kind,
                unit: unit.trim(),
                help: help.trim(),
            })
        })
        .collect()
}

/// Prometheus units for the documented unit words; other words are counts.
fn unit(word: &str) -> Option<Unit> {
    match word {
        "seconds" => Some(Unit::Seconds),
        "bytes" => Some(Unit::Bytes),
        _ => None,
    }
}

/// Describes every documented metric to the installed recorder and sets
/// `peerd_build_info{version}` to 1.
pub fn describe_all() {
    for entry in entries() {
        let help = entry.help;
        match (entry.kind, unit(entry.unit)) {
            (MetricKind::Counter, Some(u)) => describe_counter!(entry.name, u, help),
            (MetricKind::Counter, None) => describe_counter!(entry.name, help),
            (MetricKind::Gauge, Some(u)) => describe_gauge!(entry.name, u, help),
            (MetricKind::Gauge, None) => describe_gauge!(entry.name, help),
            (MetricKind::Histogram, Some(u)) => describe_histogram!(entry.name, u, help),
            (MetricKind::Histogram, None) => describe_histogram!(entry.name, help),
        }
    }
    metrics::gauge!("peerd_build_info", "version" => crate::version::VERSION).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_metric_is_parsed_with_help_and_a_known_kind() {
        let entries = entries();
        assert!(entries.len() >= 30, "only {} rows parsed", entries.len());
        for e in &entries {
            assert!(e.name.starts_with(concat!("peerd", "_")), "{e:?}");
            assert!(!e.help.is_empty(), "{} has no meaning text", e.name);
            if e.kind == MetricKind::Counter {
                assert!(
                    e.name.ends_with("_total"),
                    "counter {} lacks _total",
                    e.name
                );
            }
        }
        let build = entries.iter().find(|e| e.name == "peerd_build_info");
        assert_eq!(build.map(|e| e.kind), Some(MetricKind::Gauge));
    }

    #[test]
    fn rows_that_are_not_metric_rows_are_skipped() {
        let doc = "| name | type | labels | unit | status | meaning |\n|---|---|---|---|---|---|\n\
                   | `demo_x_total` | counter | a | things | in code | counts x |\n\
                   | `not_a_metric` | table | a | b | c | d |\n";
        let parsed = parse(doc);
        assert_eq!(
            parsed,
            vec![CatalogEntry {
                name: "demo_x_total",
                kind: MetricKind::Counter,
                unit: "things",
                help: "counts x",
            }]
        );
    }
}
