//! `cargo xtask chart`: checks everything under `deploy/` offline, without a `helm` binary
//! (none is installable here: not in Debian's archive, no Go toolchain to build one).
//!
//! 1. The Helm chart is parsed and rendered by a small renderer of the Go-template subset
//!    the chart uses ([`gotmpl`]): unbalanced `{{ }}`/blocks and unsupported syntax are
//!    errors; every `.Values.x.y` a template names exists in values.yaml and every
//!    values.yaml key is used by a template.
//! 2. `kubectl kustomize` renders the Kustomize base and the example overlay.
//! 3. The chart's default rendering equals the Kustomize base, object by object (the only
//!    difference allowed is Helm's `helm.sh/chart` label).
//! 4. Every rendered object (chart defaults, chart with every option on, chart without
//!    eBPF, base, overlay) validates against the Kubernetes 1.32 schemas
//!    (`kubernetes-validate`, strict) or, for prometheus-operator CRDs, against
//!    `deploy/schemas/*.json`; alert expressions pass `promtool check rules`.
//! 5. RBAC: no `*` anywhere in rules; write verbs only on the resources peerd owns.
//! 6. Metrics: every `peerd_*` name used by alerts or the dashboard is in docs/metrics.md;
//!    rows marked "in code" are found in peerd/src and every name in peerd/src has a row.
//! 7. The dashboard JSON parses and the chart's copy equals deploy/dashboards/peerd.json.
//!
//! Never talks to a cluster; never writes outside a temporary directory.

mod gotmpl;

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
/// Resources peerd may write, and which write verbs (everything else: read-only).
const WRITABLE: &[(&str, &str, &[&str])] = &[
    (
        "networking.istio.io",
        "workloadentries",
        &["create", "update", "patch", "delete"],
    ),
    (
        "networking.istio.io",
        "serviceentries",
        &["create", "update", "patch", "delete"],
    ),
    (
        "gateway.networking.k8s.io",
        "gateways/status",
        &["patch", "update"],
    ),
    (
        "coordination.k8s.io",
        "leases",
        &["create", "update", "patch"],
    ),
    ("authentication.k8s.io", "tokenreviews", &["create"]),
];
const READ_VERBS: &[&str] = &["get", "list", "watch"];

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
        problems.extend(check_rbac(source, objects));
        problems.extend(check_config_maps(source, objects));
    }
    problems.extend(check_security(&defaults, &no_ebpf));
    problems.extend(validate_schemas(&all, &deploy.join("schemas"))?);
    if let Err(e) = check_alert_rules(&all) {
        problems.push(format!("{e:#}"));
    }
    problems.extend(check_dashboard(&deploy)?);
    problems.extend(check_metric_names(&root, &all)?);

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

/// Prints the chart's default rendering, template by template (like `helm template`).
pub fn template() -> anyhow::Result<()> {
    use std::io::Write;
    let chart = Chart::load(&crate::root().join("deploy/helm/peerd"))?;
    let mut out = String::new();
    for (name, text) in chart.render_texts(&json!({}))? {
        if name.ends_with(".yaml") && !text.trim().is_empty() {
            out.push_str(&format!(
                "---\n# Source: peerd/{name}\n{}\n",
                text.trim_end()
            ));
        }
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    Ok(())
}

/// The chart: templates and default values.
struct Chart {
    dir: PathBuf,
    templates: gotmpl::Templates,
    sources: BTreeMap<String, String>,
    values: Value,
    meta: Value,
}

impl Chart {
    fn load(dir: &Path) -> anyhow::Result<Chart> {
        let meta = read_yaml(&dir.join("Chart.yaml"))?;
        let values = read_yaml(&dir.join("values.yaml"))?;
        let mut templates = gotmpl::Templates::new(dir.to_path_buf());
        let mut sources = BTreeMap::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))
            .context("reading templates/")?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        // Helpers first so their defines exist (Helm loads all; order does not matter
        // there because includes resolve at render time, as they do here too).
        for path in names {
            let name = format!(
                "templates/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            let src = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            templates.add(&name, &src)?;
            sources.insert(name, src);
        }
        Ok(Chart {
            dir: dir.to_path_buf(),
            templates,
            sources,
            values,
            meta,
        })
    }

    /// Renders every template with values.yaml overlaid by `overrides` (deep merge, like
    /// `helm template --set`), returning the objects.
    fn render(&self, overrides: &Value) -> anyhow::Result<Vec<Value>> {
        let mut objects = Vec::new();
        for (name, text) in self.render_texts(overrides)? {
            if !name.ends_with(".yaml") {
                continue; // NOTES.txt: rendered (so checked), not an object
            }
            for (i, doc) in split_documents(&text).iter().enumerate() {
                let v: Value = serde_yaml::from_str(doc).with_context(|| {
                    format!("{name}: rendered document {i} is not valid YAML:\n{doc}")
                })?;
                if !v.is_null() {
                    objects.push(v);
                }
            }
        }
        Ok(objects)
    }

    /// The rendered text of each output template.
    fn render_texts(&self, overrides: &Value) -> anyhow::Result<Vec<(String, String)>> {
        let mut values = self.values.clone();
        merge(&mut values, overrides);
        let root = json!({
            "Values": gotmpl::helm_numbers(&values),
            "Release": {"Name": RELEASE_NAME, "Namespace": RELEASE_NAMESPACE, "Service": "Helm"},
            "Chart": {
                "Name": self.meta["name"],
                "Version": self.meta["version"],
                "AppVersion": self.meta["appVersion"],
            },
        });
        self.templates
            .names()
            .into_iter()
            .map(|n| {
                let text = self.templates.render(&n, &root)?;
                Ok((n, text))
            })
            .collect()
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
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
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
        .map(|d| serde_yaml::from_str(d).context("parsing kustomize output"))
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
                let mut o = gotmpl::integral_numbers(o);
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

/// No wildcards; writes only where peerd owns the objects.
fn check_rbac(source: &str, objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or("");
        if kind != "ClusterRole" && kind != "Role" {
            continue;
        }
        let key = object_key(o);
        if o.get("aggregationRule").is_some() {
            problems.push(format!(
                "{source}: {key}: aggregationRule grants unknown rules"
            ));
        }
        for (i, rule) in o["rules"].as_array().into_iter().flatten().enumerate() {
            let list = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            };
            for field in [
                "verbs",
                "resources",
                "apiGroups",
                "resourceNames",
                "nonResourceURLs",
            ] {
                for s in list(field) {
                    if s.contains('*') {
                        problems.push(format!(
                            "{source}: {key}: rules[{i}].{field} has wildcard {s:?}"
                        ));
                    }
                }
            }
            if rule.get("nonResourceURLs").is_some() {
                problems.push(format!(
                    "{source}: {key}: rules[{i}] grants nonResourceURLs"
                ));
            }
            for group in list("apiGroups") {
                for resource in list("resources") {
                    let allowed: Vec<&str> = WRITABLE
                        .iter()
                        .filter(|(g, r, _)| *g == group && *r == resource)
                        .flat_map(|(_, _, verbs)| verbs.iter().copied())
                        .collect();
                    for verb in list("verbs") {
                        if !READ_VERBS.contains(&verb.as_str()) && !allowed.contains(&verb.as_str())
                        {
                            problems.push(format!(
                                "{source}: {key}: rules[{i}] grants {verb} on {group}/{resource}, which peerd does not own"
                            ));
                        }
                    }
                    if resource == "secrets" {
                        problems.push(format!(
                            "{source}: {key}: rules[{i}] grants access to secrets"
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// The peerd config file inside each ConfigMap parses as YAML with only known top-level
/// keys (the full schema check is the peerd test `deploy_config`).
fn check_config_maps(source: &str, objects: &[Value]) -> Vec<String> {
    const KEYS: &[&str] = &[
        "cluster",
        "network",
        "trustDomain",
        "peeringNamespace",
        "controlNamespace",
        "flatNetworks",
        "sandboxMode",
        "disconnectGracePeriod",
        "listeners",
        "xds",
        "upstreams",
        "peers",
        "export",
        "hysteresis",
        "probe",
        "telemetry",
    ];
    let mut problems = Vec::new();
    for o in objects.iter().filter(|o| o["kind"] == "ConfigMap") {
        let Some(text) = o["data"]["config.yaml"].as_str() else {
            continue;
        };
        match serde_yaml::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                for k in map.keys().filter(|k| !KEYS.contains(&k.as_str())) {
                    problems.push(format!(
                        "{source}: {}: unknown config key {k}",
                        object_key(o)
                    ));
                }
            }
            Ok(_) => problems.push(format!(
                "{source}: {}: config.yaml is not a map",
                object_key(o)
            )),
            Err(e) => problems.push(format!("{source}: {}: config.yaml: {e}", object_key(o))),
        }
    }
    problems
}

/// The pod security promises of docs/deploy.md.
fn check_security(ebpf: &[Value], no_ebpf: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let container = |objects: &[Value]| -> Option<Value> {
        objects
            .iter()
            .find(|o| o["kind"] == "DaemonSet")
            .map(|ds| ds["spec"]["template"]["spec"]["containers"][0].clone())
    };
    for (label, objects, caps, non_root) in [
        ("eBPF", ebpf, json!(["BPF", "PERFMON"]), false),
        ("no eBPF", no_ebpf, Value::Null, true),
    ] {
        let Some(c) = container(objects) else {
            problems.push(format!("{label}: no DaemonSet container"));
            continue;
        };
        let sc = &c["securityContext"];
        let expect = [
            ("privileged", json!(false)),
            ("allowPrivilegeEscalation", json!(false)),
            ("readOnlyRootFilesystem", json!(true)),
            ("runAsNonRoot", json!(non_root)),
        ];
        for (field, want) in expect {
            if sc[field] != want {
                problems.push(format!(
                    "{label}: securityContext.{field} = {}, want {want}",
                    sc[field]
                ));
            }
        }
        if sc["capabilities"]["drop"] != json!(["ALL"]) {
            problems.push(format!("{label}: capabilities.drop must be [ALL]"));
        }
        if sc["capabilities"]["add"] != caps {
            problems.push(format!(
                "{label}: capabilities.add = {}, want {caps}",
                sc["capabilities"]["add"]
            ));
        }
        let host_paths = objects
            .iter()
            .filter(|o| o["kind"] == "DaemonSet")
            .flat_map(|ds| {
                ds["spec"]["template"]["spec"]["volumes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|v| v.get("hostPath").is_some())
            .count();
        if non_root && host_paths > 0 {
            problems.push(format!("{label}: hostPath volumes without eBPF"));
        }
    }
    problems
}

fn validate_schemas(all: &[Sourced], schema_dir: &Path) -> anyhow::Result<Vec<String>> {
    let input = serde_json::to_vec(
        &all.iter()
            .map(|(s, o)| json!([s, gotmpl::integral_numbers(o)]))
            .collect::<Vec<_>>(),
    )?;
    let script = include_str!("chart/validate_manifests.py");
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
fn check_alert_rules(all: &[Sourced]) -> anyhow::Result<()> {
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
            serde_yaml::to_string(&json!({"groups": o["spec"]["groups"]}))?,
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

fn check_dashboard(deploy: &Path) -> anyhow::Result<Vec<String>> {
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

fn check_metric_names(root: &Path, all: &[Sourced]) -> anyhow::Result<Vec<String>> {
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
    fn rbac_wildcards_and_foreign_writes_are_reported() {
        let role = json!({"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": [
            {"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["services"], "verbs": ["delete"]},
            {"apiGroups": ["networking.istio.io"], "resources": ["workloadentries"], "verbs": ["create", "list"]},
        ]});
        let problems = check_rbac("t", &[role]);
        let text = problems.join("\n");
        assert!(text.contains("apiGroups has wildcard \"*\""), "{text}");
        assert!(text.contains("verbs has wildcard \"*\""), "{text}");
        assert!(text.contains("grants delete on /services"), "{text}");
        assert!(text.contains("access to secrets"), "{text}");
        assert!(!text.contains("workloadentries"), "{text}");
    }

    fn daemonset(security: Value, host_path: bool) -> Value {
        let volumes = if host_path {
            json!([{"name": "t", "hostPath": {"path": "/sys/kernel/tracing"}}])
        } else {
            json!([])
        };
        json!({"kind": "DaemonSet", "spec": {"template": {"spec": {
            "containers": [{"securityContext": security}], "volumes": volumes}}}})
    }

    #[test]
    fn security_promises_are_enforced() {
        let good_ebpf = json!({"privileged": false, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true, "runAsNonRoot": false,
            "capabilities": {"drop": ["ALL"], "add": ["BPF", "PERFMON"]}});
        let good_plain = json!({"privileged": false, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true, "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]}});
        let ok = check_security(
            &[daemonset(good_ebpf.clone(), true)],
            &[daemonset(good_plain.clone(), false)],
        );
        assert!(ok.is_empty(), "{ok:?}");

        let mut extra_cap = good_ebpf.clone();
        extra_cap["capabilities"]["add"] = json!(["BPF", "PERFMON", "SYS_ADMIN"]);
        let mut privileged = good_plain.clone();
        privileged["privileged"] = json!(true);
        let bad = check_security(
            &[daemonset(extra_cap, true)],
            &[daemonset(privileged, true)],
        );
        let text = bad.join("\n");
        assert!(text.contains("capabilities.add"), "{text}");
        assert!(text.contains("securityContext.privileged"), "{text}");
        assert!(text.contains("hostPath volumes without eBPF"), "{text}");
    }

    #[test]
    fn unknown_config_keys_are_reported() {
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"config.yaml": "cluster: a\nclustr: b\n"}});
        let problems = check_config_maps("t", &[cm]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("unknown config key clustr"));
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
    fn metric_names_strip_histogram_suffixes() {
        let names = metric_names(
            "histogram_quantile(0.9, rate(peerd_x_seconds_bucket[5m])) + peerd_y_total",
        );
        assert_eq!(
            names,
            BTreeSet::from(["peerd_x_seconds".to_string(), "peerd_y_total".into()])
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
