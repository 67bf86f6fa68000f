//! External validators: the Kubernetes OpenAPI schemas (`kubernetes-validate`, strict),
//! deploy/schemas/ for CRD kinds, and `promtool check rules` for alert expressions.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::json;

use super::{KUBE_VERSION, Sourced, integral_numbers};

pub(super) fn validate_schemas(all: &[Sourced], schema_dir: &Path) -> anyhow::Result<Vec<String>> {
    let input = serde_json::to_vec(
        &all.iter()
            .map(|(s, o)| json!([s, integral_numbers(o)]))
            .collect::<Vec<_>>(),
    )?;
    let script = include_str!("validate_manifests.py");
    eprintln!("xtask: $ python3 validate_manifests.py {KUBE_VERSION} (kubernetes-validate)");
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(KUBE_VERSION)
        .arg(schema_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting python3")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("python stdin")?;
        stdin.write_all(&input)?;
    }
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let failures: Vec<&str> = text.lines().filter(|l| !l.starts_with("ok ")).collect();
    if !out.status.success() && failures.is_empty() {
        bail!(
            "schema validation did not run (is kubernetes-validate installed? cargo xtask setup)"
        );
    }
    eprintln!(
        "xtask chart: schema validation: {} of {} objects valid",
        text.lines().count() - failures.len(),
        all.len()
    );
    Ok(failures.into_iter().map(str::to_string).collect())
}

/// `promtool check rules` on every PrometheusRule's groups.
pub(super) fn check_alert_rules(all: &[Sourced]) -> anyhow::Result<()> {
    let dir = tempdir()?;
    let mut files = Vec::new();
    for (i, (_, o)) in all
        .iter()
        .enumerate()
        .filter(|(_, (_, o))| o["kind"] == "PrometheusRule")
    {
        let path = dir.join(format!("rules-{i}.yaml"));
        std::fs::write(
            &path,
            yaml_serde::to_string(&json!({"groups": o["spec"]["groups"]}))?,
        )?;
        files.push(path);
    }
    if files.is_empty() {
        bail!("no PrometheusRule rendered");
    }
    let result = crate::run(
        Command::new("promtool")
            .args(["check", "rules"])
            .args(&files),
    );
    let _ = std::fs::remove_dir_all(&dir);
    result.context("promtool check rules (promtool comes with Debian's prometheus package)")
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xtask-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
