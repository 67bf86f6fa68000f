//! `cargo xtask chart`: checks everything under `deploy/` offline, without a `helm` binary
//! (Helm is not in Debian's archive) but with Helm's template engine: Go's `text/template`,
//! sprig and Helm's own functions, built from Debian's Go packages ([`render`]).
//! `cargo xtask chart --template` prints the chart's default rendering (what
//! `helm template` prints).
//!
//! 1. The Helm chart is rendered by [`render`] (strict: a missing map key is an error, as
//!    with `helm lint --strict`); every `.Values.x.y` a template names exists in
//!    values.yaml and every values.yaml key is used by a template; values.yaml and the
//!    override sets validate against values.schema.json.
//! 2. `kubectl kustomize` renders the Kustomize base and the example overlay.
//! 3. The chart's default rendering equals the Kustomize base, object by object (the only
//!    difference allowed is Helm's `helm.sh/chart` label).
//! 4. Every rendered object (chart defaults, chart with every option on, chart without
//!    eBPF, base, overlay) validates against the Kubernetes 1.32 schemas
//!    (`kubernetes-validate`, strict) or, for prometheus-operator CRDs, against
//!    `deploy/schemas/*.json`; alert expressions pass `promtool check rules`
//!    ([`validate`]).
//! 5. RBAC has no `*` and writes only what peerd owns; the pod-security promises hold;
//!    config files carry only known keys ([`policy`]).
//! 6. Metric names used by alerts and the dashboard are documented, docs and code agree,
//!    dashboard copies are identical ([`metrics`]).
//! 7. `deploy/Containerfile` agrees with the rendered DaemonSet ([`containerfile`]).
//!
//! This file owns the orchestration, the chart loading and the chart-vs-base comparison.
//! Never talks to a cluster; never writes outside a temporary directory and the target
//! directory (the renderer's build).

mod containerfile;
mod metrics;
mod policy;
mod render;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Kubernetes version the manifests are validated against.
const KUBE_VERSION: &str = "1.32.0";
/// Release name and namespace used to render the chart (the base's values).
const RELEASE_NAME: &str = "peerd";
const RELEASE_NAMESPACE: &str = "istio-system";
/// Labels only Helm adds.
const HELM_ONLY_LABELS: &[&str] = &["helm.sh/chart"];
/// An object with where it came from (for messages).
type Sourced = (String, Value);

pub fn run() -> anyhow::Result<()> {
    let root = crate::root();
    let deploy = root.join("deploy");
    let chart = Chart::load(&deploy.join("helm/peerd"))?;
    chart.check_values_references()?;

    let all_on_values = json!({
        "network": "net1",
        "flatNetworks": true,
        "eastWestGateway": {"address": "192.0.2.10"},
        "telemetry": {"otlpEndpoint": "http://otel-collector.observability:4317"},
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccount": {"annotations": {"example.com/owner": "mesh-team"}},
        "prometheusRule": {"labels": {"release": "prometheus"}},
        "dashboard": {"enabled": true},
        "networkPolicy": {
            "enabled": true,
            "extraXdsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-gateways"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "healthFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
        },
    });
    let no_ebpf_values = json!({
        "ebpf": {"enabled": false},
        "probe": {"mode": "userspace"},
        "podMonitor": {"enabled": false},
        "prometheusRule": {"enabled": false},
    });
    let mut problems = chart.check_values_schema(&[
        ("defaults", &json!({})),
        ("all options", &all_on_values),
        ("without eBPF", &no_ebpf_values),
    ])?;
    let defaults = chart.render(&json!({}))?;
    let all_on = chart.render(&all_on_values)?;
    let no_ebpf = chart.render(&no_ebpf_values)?;
    let base = kustomize(&deploy.join("kustomize/base"))?;
    let overlay = kustomize(&deploy.join("kustomize/overlays/example"))?;

    problems.extend(compare(&defaults, &base));
    let mut all: Vec<Sourced> = Vec::new();
    for (source, objects) in [
        ("chart defaults", &defaults),
        ("chart all options", &all_on),
        ("chart without eBPF", &no_ebpf),
        ("kustomize base", &base),
        ("kustomize overlay", &overlay),
    ] {
        for o in objects {
            all.push((source.to_string(), o.clone()));
        }
        problems.extend(policy::check_rbac(source, objects));
        problems.extend(policy::check_config_maps(source, objects));
    }
    problems.extend(policy::check_security(&defaults, &no_ebpf));
    problems.extend(validate::validate_schemas(&all, &deploy.join("schemas"))?);
    if let Err(e) = validate::check_alert_rules(&all) {
        problems.push(format!("{e:#}"));
    }
    problems.extend(metrics::check_dashboard(&deploy)?);
    problems.extend(metrics::check_metric_names(&root, &all)?);
    problems.extend(containerfile::check_repository(&root, &defaults, &no_ebpf));

    if !problems.is_empty() {
        for p in &problems {
            eprintln!("xtask chart: {p}");
        }
        bail!("{} problem(s) in deploy/", problems.len());
    }
    eprintln!(
        "xtask chart: ok ({} chart objects = kustomize base, {} objects validated)",
        defaults.len(),
        all.len()
    );
    Ok(())
}

/// Prints the chart's default rendering, template by template, as `helm template` does
/// (Helm's default `missingkey=zero`, not the strict mode the checks use).
pub fn template() -> anyhow::Result<()> {
    use std::io::Write;
    let chart = Chart::load(&crate::root().join("deploy/helm/peerd"))?;
    let mut out = String::new();
    for (name, text) in chart.render_texts(&json!({}), false)? {
        if name.ends_with(".yaml") && !text.trim().is_empty() {
            out.push_str(&format!("---\n# Source: {name}\n{}\n", text.trim_end()));
        }
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    Ok(())
}

/// The chart: template sources (for the values cross-check), default values and the
/// renderer.
struct Chart {
    dir: PathBuf,
    sources: BTreeMap<String, String>,
    values: Value,
    renderer: render::Renderer,
}

impl Chart {
    fn load(dir: &Path) -> anyhow::Result<Chart> {
        let values = read_yaml(&dir.join("values.yaml"))?;
        let mut sources = BTreeMap::new();
        for entry in std::fs::read_dir(dir.join("templates")).context("reading templates/")? {
            let path = entry.context("reading templates/")?.path();
            let name = format!(
                "templates/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            let src = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            sources.insert(name, src);
        }
        Ok(Chart {
            dir: dir.to_path_buf(),
            sources,
            values,
            renderer: render::Renderer::build()?,
        })
    }

    /// Renders every template strictly with values.yaml overlaid by `overrides` (like
    /// `helm template -f`), returning the objects.
    fn render(&self, overrides: &Value) -> anyhow::Result<Vec<Value>> {
        let mut objects = Vec::new();
        for (name, text) in self.render_texts(overrides, true)? {
            if let Some(number) = exponent_number(&text) {
                bail!(
                    "{name} with overrides {overrides}: {number:?} is a values number printed \
                     raw (Helm reads values numbers as float64); print it with `int`"
                );
            }
            if !name.ends_with(".yaml") {
                continue; // NOTES.txt: rendered (so checked), not an object
            }
            for (i, doc) in split_documents(&text).iter().enumerate() {
                let v: Value = yaml_serde::from_str(doc).with_context(|| {
                    format!("{name}: rendered document {i} is not valid YAML:\n{doc}")
                })?;
                if !v.is_null() {
                    objects.push(v);
                }
            }
        }
        Ok(objects)
    }

    /// The rendered text of each output template, by Helm's template name.
    fn render_texts(
        &self,
        overrides: &Value,
        strict: bool,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let release = render::Release {
            name: RELEASE_NAME,
            namespace: RELEASE_NAMESPACE,
            kube_version: KUBE_VERSION,
            strict,
        };
        self.renderer.render(&self.dir, overrides, &release)
    }

    /// values.yaml overlaid by each override set validates against values.schema.json.
    fn check_values_schema(&self, sets: &[(&str, &Value)]) -> anyhow::Result<Vec<String>> {
        let schema = read_yaml(&self.dir.join("values.schema.json"))?;
        let instances: Vec<Value> = sets
            .iter()
            .map(|(label, over)| {
                let mut v = self.values.clone();
                merge(&mut v, over);
                json!([label, v])
            })
            .collect();
        let script = "import json, sys, jsonschema\n\
            d = json.load(sys.stdin)\n\
            for label, values in d['instances']:\n\
            \x20   for e in jsonschema.Draft7Validator(d['schema']).iter_errors(values):\n\
            \x20       print(f\"values.schema.json, {label}: /{'/'.join(map(str, e.absolute_path))}: {e.message}\")\n";
        let input = serde_json::to_vec(&json!({"schema": schema, "instances": instances}))?;
        let mut child = Command::new("python3")
            .args(["-c", script])
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
        if !out.status.success() {
            bail!("values schema check did not run (python3 with jsonschema: cargo xtask setup)");
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Every `.Values.a.b` in a template exists in values.yaml, and every values.yaml
    /// leaf is covered by some reference (itself or an ancestor used whole, e.g. with
    /// `toYaml`).
    fn check_values_references(&self) -> anyhow::Result<()> {
        let mut referenced = BTreeSet::new();
        let mut errors = Vec::new();
        for (name, src) in &self.sources {
            for path in values_references(src) {
                if lookup(&self.values, &path).is_none() {
                    errors.push(format!(
                        "{name}: .Values.{} is not in values.yaml",
                        path.join(".")
                    ));
                }
                referenced.insert(path);
            }
        }
        let mut leaves = Vec::new();
        collect_leaves(&self.values, &mut Vec::new(), &mut leaves);
        for leaf in leaves {
            let used = (1..=leaf.len()).any(|n| referenced.contains(&leaf[..n]));
            if !used {
                errors.push(format!(
                    "values.yaml: {} is never used by a template",
                    leaf.join(".")
                ));
            }
        }
        if !errors.is_empty() {
            bail!(
                "chart {}: values references:\n  {}",
                self.dir.display(),
                errors.join("\n  ")
            );
        }
        Ok(())
    }
}

fn read_yaml(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    yaml_serde::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Deep merge of maps; anything else in `over` replaces.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// JSON's view of a number (what the API server sees): an integral float is an integer,
/// so `3` from a template and `3.0` parsed elsewhere compare equal.
fn integral_numbers(v: &Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9e15 => Value::from(f as i64),
            _ => Value::Number(n.clone()),
        },
        Value::Array(a) => Value::Array(a.iter().map(integral_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), integral_numbers(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A number in Go's float exponent form (`1.6777216e+07`): how Helm prints a large
/// integer from values.yaml without `int`.
fn exponent_number(text: &str) -> Option<&str> {
    text.split(|c: char| c.is_whitespace() || ",[]{}\"'".contains(c))
        .find(|w| w.contains("e+") && w.parse::<f64>().is_ok())
}

/// YAML documents of a rendered template (split on `---` lines, like Helm).
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(d) = docs.last_mut() {
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

/// The `.Values.a.b` paths a template source names (also `$.Values…`).
fn values_references(src: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find(".Values.") {
        let after = &rest[i + ".Values.".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(after.len());
        let path: Vec<String> = after[..end]
            .split('.')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if !path.is_empty() {
            out.push(path);
        }
        rest = &after[end..];
    }
    out
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn collect_leaves(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                prefix.push(k.clone());
                collect_leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ => out.push(prefix.clone()),
    }
}

/// `kubectl kustomize DIR` parsed into objects.
fn kustomize(dir: &Path) -> anyhow::Result<Vec<Value>> {
    eprintln!("xtask: $ kubectl kustomize {}", dir.display());
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running kubectl (cargo xtask setup reports it if missing)")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("kustomize output is not UTF-8")?;
    split_documents(&text)
        .iter()
        .map(|d| yaml_serde::from_str(d).context("parsing kustomize output"))
        .collect()
}

fn object_key(o: &Value) -> String {
    format!(
        "{}/{} {}/{}",
        o["apiVersion"].as_str().unwrap_or("?"),
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["namespace"].as_str().unwrap_or("-"),
        o["metadata"]["name"].as_str().unwrap_or("?"),
    )
}

/// Removes the labels only Helm sets, everywhere labels appear.
fn strip_helm_labels(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(labels)) = map.get_mut("labels") {
                for l in HELM_ONLY_LABELS {
                    labels.remove(*l);
                }
            }
            for child in map.values_mut() {
                strip_helm_labels(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_helm_labels),
        _ => {}
    }
}

/// The chart's default objects must equal the base's, object by object.
fn compare(chart: &[Value], base: &[Value]) -> Vec<String> {
    let index = |objects: &[Value], strip: bool| -> BTreeMap<String, Value> {
        objects
            .iter()
            .map(|o| {
                let mut o = integral_numbers(o);
                if strip {
                    strip_helm_labels(&mut o);
                }
                (object_key(&o), o)
            })
            .collect()
    };
    let chart = index(chart, true);
    let base = index(base, false);
    let mut problems = Vec::new();
    for key in chart.keys().chain(base.keys()).collect::<BTreeSet<_>>() {
        match (chart.get(key), base.get(key)) {
            (Some(c), Some(b)) => {
                let mut diffs = Vec::new();
                diff("", c, b, &mut diffs);
                for d in diffs {
                    problems.push(format!("chart vs kustomize base, {key}: {d}"));
                }
            }
            (Some(_), None) => problems.push(format!("{key}: in the chart, not in the base")),
            (None, Some(_)) => problems.push(format!("{key}: in the base, not in the chart")),
            (None, None) => {}
        }
    }
    problems
}

fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                let p = format!("{path}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(a), Some(b)) => diff(&p, a, b, out),
                    (Some(a), None) => out.push(format!("{p} only in chart ({a})")),
                    (None, Some(b)) => out.push(format!("{p} only in base ({b})")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (a, b)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}/{i}"), a, b, out);
            }
        }
        (Value::String(x), Value::String(y))
            if x != y && (x.contains('\n') || y.contains('\n')) =>
        {
            let line = x
                .lines()
                .zip(y.lines())
                .position(|(l, r)| l != r)
                .unwrap_or(x.lines().count().min(y.lines().count()));
            out.push(format!(
                "{path}: text differs from line {}: chart {:?} vs base {:?}",
                line + 1,
                x.lines().nth(line).unwrap_or("<end>"),
                y.lines().nth(line).unwrap_or("<end>")
            ));
        }
        (a, b) if a != b => out.push(format!("{path}: chart {a} vs base {b}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn raw_float_numbers_are_found() {
        assert_eq!(
            exponent_number("maxMessageBytes: 1.6777216e+07\n"),
            Some("1.6777216e+07")
        );
        assert_eq!(exponent_number("ports: [1.5e+04]"), Some("1.5e+04"));
        assert_eq!(exponent_number("size: 16777216 name: e+x 1e5"), None);
    }

    #[test]
    fn values_references_are_found() {
        let refs = values_references("{{ .Values.a.b | quote }} {{ toYaml $.Values.c }}");
        assert_eq!(
            refs,
            vec![vec!["a".to_string(), "b".into()], vec!["c".into()]]
        );
    }

    #[test]
    fn compare_reports_field_differences() {
        let a = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"helm.sh/chart": "c"}}, "spec": {"x": 1}});
        let b = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {}}, "spec": {"x": 2}});
        let problems = compare(std::slice::from_ref(&a), &[b]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("/spec/x"));
        let mut same = a.clone();
        strip_helm_labels(&mut same);
        assert!(compare(&[a], &[same]).is_empty());
    }
}
