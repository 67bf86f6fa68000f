//! Metric names and the dashboard: every `peerd_*` series used by alerts or the
//! dashboard is documented in docs/metrics.md, documentation and code agree, and the
//! dashboard's copies are identical.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use super::Sourced;

pub(super) fn check_dashboard(deploy: &Path) -> anyhow::Result<Vec<String>> {
    let main = deploy.join("dashboards/peerd.json");
    let copies = [
        deploy.join("helm/peerd/files/peerd-dashboard.json"),
        deploy.join("kustomize/overlays/example/peerd.json"),
    ];
    let text =
        std::fs::read_to_string(&main).with_context(|| format!("reading {}", main.display()))?;
    let mut problems = Vec::new();
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", main.display()))?;
    if v["panels"].as_array().is_none_or(|p| p.is_empty()) {
        problems.push("dashboard has no panels".to_string());
    }
    for copy in copies {
        if std::fs::read_to_string(&copy).ok().as_deref() != Some(text.as_str()) {
            problems.push(format!(
                "{} differs from {} (copy it: Helm and kustomize only load files inside \
                 their own directory)",
                copy.display(),
                main.display()
            ));
        }
    }
    Ok(problems)
}

/// `peerd_*` names in a PromQL expression or text, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("peerd_") {
        let before_ok = i == 0
            || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let after = &rest[i..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if before_ok {
            let name = &after[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        rest = &after[end..];
    }
    out
}

pub(super) fn check_metric_names(root: &Path, all: &[Sourced]) -> anyhow::Result<Vec<String>> {
    let doc_path = root.join("docs/metrics.md");
    let doc = std::fs::read_to_string(&doc_path).context("reading docs/metrics.md")?;
    // Table rows: | `name` | type | labels | unit | status | meaning |
    let mut documented: BTreeMap<String, String> = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 7
            && let Some(name) = cells[1]
                .strip_prefix("`peerd_")
                .and_then(|n| n.strip_suffix('`'))
        {
            documented.insert(format!("peerd_{name}"), cells[5].to_string());
        }
    }
    let code = code_metric_names(&root.join("peerd/src"))?;
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (_, o) in all.iter().filter(|(_, o)| o["kind"] == "PrometheusRule") {
        used.extend(metric_names(&o["spec"].to_string()));
    }
    let dashboard = std::fs::read_to_string(root.join("deploy/dashboards/peerd.json"))?;
    used.extend(metric_names(&dashboard));
    for name in &used {
        if !documented.contains_key(name) {
            problems.push(format!(
                "{name} is used by an alert or the dashboard but not in docs/metrics.md"
            ));
        }
    }
    for (name, status) in &documented {
        if status.starts_with("in code") && !code.contains(name) {
            problems.push(format!(
                "docs/metrics.md says {name} is in code, but peerd/src never names it"
            ));
        }
        if status.starts_with("planned") && code.contains(name) {
            eprintln!(
                "xtask chart: note: {name} is now in code; mark it \"in code\" in docs/metrics.md"
            );
        }
    }
    for name in code.iter().filter(|n| !documented.contains_key(*n)) {
        problems.push(format!(
            "{name} is emitted by peerd/src but has no row in docs/metrics.md"
        ));
    }
    Ok(problems)
}

/// Every `"peerd_…"` string literal in the daemon's sources.
fn code_metric_names(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)?;
                let mut rest = text.as_str();
                while let Some(i) = rest.find("\"peerd_") {
                    let after = &rest[i + 1..];
                    let end = after.find('"').unwrap_or(after.len());
                    let name = &after[..end];
                    if name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    {
                        out.insert(name.to_string());
                    }
                    rest = &after[end..];
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_strip_histogram_suffixes() {
        let names = metric_names(
            "histogram_quantile(0.9, rate(peerd_x_seconds_bucket[5m])) + peerd_y_total",
        );
        assert_eq!(
            names,
            BTreeSet::from(["peerd_x_seconds".to_string(), "peerd_y_total".into()])
        );
    }
}
