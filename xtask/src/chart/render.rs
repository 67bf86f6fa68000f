//! Renders the Helm chart with Helm's own template engine: the Go program
//! `xtask/chart-render/` (Go's `text/template` + sprig + Helm's functions), built here from
//! Debian's Go packages, offline.
//!
//! The build runs in GOPATH mode (`GO111MODULE=off`) over `/usr/share/gocode/src`, where
//! the `golang-github-masterminds-sprig-dev` and `golang-k8s-sigs-yaml-dev` packages put
//! their sources, with `GOPROXY=off`: nothing is ever downloaded. The program is copied
//! into a private GOPATH under the target directory (its `go.mod` is what lets GOPATH
//! mode resolve sprig's `/v3` import path) and built there; Go's build cache makes the
//! rebuild on every run cheap. Owns only that build and the process call; never
//! interprets template syntax itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::Value;

/// Where Debian's `golang-*-dev` packages install Go sources.
const DEBIAN_GOPATH: &str = "/usr/share/gocode";
/// Go packages the renderer imports, with the Debian package providing each.
const GO_PACKAGES: &[(&str, &str)] = &[
    (
        "github.com/Masterminds/sprig",
        "golang-github-masterminds-sprig-dev",
    ),
    ("sigs.k8s.io/yaml", "golang-k8s-sigs-yaml-dev"),
];
/// The renderer's sources, relative to the repository root.
const SOURCES: &[&str] = &["xtask/chart-render/main.go", "xtask/chart-render/go.mod"];

/// The built renderer.
pub(super) struct Renderer {
    binary: PathBuf,
}

/// How a rendering is requested.
pub(super) struct Release<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub kube_version: &'a str,
    /// `missingkey=error` (`helm lint --strict`) instead of Helm's default zero value.
    pub strict: bool,
}

impl Renderer {
    /// Builds `xtask/chart-render` into `<target>/chart-render/`.
    pub(super) fn build() -> anyhow::Result<Renderer> {
        let root = crate::root();
        let work = target_dir(&root).join("chart-render");
        let package = work.join("gopath/src/chart-render");
        std::fs::create_dir_all(&package)
            .with_context(|| format!("creating {}", package.display()))?;
        for source in SOURCES {
            let from = root.join(source);
            let name = Path::new(source).file_name().context("source file name")?;
            std::fs::copy(&from, package.join(name))
                .with_context(|| format!("copying {}", from.display()))?;
        }
        check_go_toolchain()?;
        let binary = work.join("chart-render");
        let gopath = std::env::join_paths([work.join("gopath"), PathBuf::from(DEBIAN_GOPATH)])
            .context("GOPATH")?;
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(&package)
            .env("GO111MODULE", "off")
            .env("GOPATH", gopath)
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env("GOENV", "off")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", work.join("go-cache"))
            .output()
            .context("running go build")?;
        if !out.status.success() {
            bail!(
                "building xtask/chart-render with go (GOPATH mode over {DEBIAN_GOPATH}) failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Renderer { binary })
    }

    /// Renders the chart in `chart_dir` with `overrides` coalesced over values.yaml (like
    /// `helm template -f`): template name (`peerd/templates/x.yaml`) to rendered text.
    /// Partials are not in the result; NOTES.txt is.
    pub(super) fn render(
        &self,
        chart_dir: &Path,
        overrides: &Value,
        release: &Release<'_>,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-chart")
            .arg(chart_dir)
            .args(["-f", "-", "-release", release.name])
            .args(["-namespace", release.namespace])
            .args(["-kube-version", release.kube_version]);
        if release.strict {
            cmd.arg("-strict");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().context("chart-render stdin")?;
            stdin.write_all(&serde_json::to_vec(overrides)?)?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "rendering {} with overrides {overrides}: {}",
                chart_dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("parsing chart-render output")
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"))
}

/// `go` and the Go sources exist, or an error saying what installs them.
fn check_go_toolchain() -> anyhow::Result<()> {
    match Command::new("go").arg("version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => bail!(
            "`go version` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no `go` on PATH: the chart is rendered by Helm's engine (xtask/chart-render), \
             built with Go; `cargo xtask setup` installs Debian's golang-go"
        ),
        Err(e) => return Err(e).context("running go version"),
    }
    for (dir, package) in GO_PACKAGES {
        let path = Path::new(DEBIAN_GOPATH).join("src").join(dir);
        if !path.is_dir() {
            bail!(
                "{} is missing: `cargo xtask setup` installs Debian's {package}",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use serde_json::json;

    use super::*;

    /// One build for all tests (they run in parallel and share the output path).
    fn renderer() -> &'static Renderer {
        static RENDERER: OnceLock<Renderer> = OnceLock::new();
        RENDERER.get_or_init(|| Renderer::build().unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// A small chart exercising what Helm adds to Go templates.
    fn fixture(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-render-{}-{name}", std::process::id()));
        let files = [
            (
                "Chart.yaml",
                "apiVersion: v2\nname: demo\nversion: 1.2.3\nappVersion: \"9\"\nkubeVersion: \">=1.28.0-0\"\n",
            ),
            (
                "values.yaml",
                "a: {b: 1, c: x}\nbig: 16777216\nneedX: false\nx: \"\"\nboom: false\nprobe: false\nuseLookup: false\n",
            ),
            (
                "templates/_helpers.tpl",
                "{{- define \"demo.name\" -}}{{ .Chart.Name }}-{{ .Release.Name }}{{- end }}\n",
            ),
            (
                "templates/cm.yaml",
                "name: {{ include \"demo.name\" . }}\n\
                 tpl: {{ tpl \"{{ .Values.a.c }}\" . }}\n\
                 big: {{ .Values.big }}\n\
                 int: {{ int .Values.big }}\n\
                 a: {{- toYaml .Values.a | nindent 2 }}\n\
                 file: {{ .Files.Get \"files/x.txt\" | trim }}\n\
                 sprig: {{ \"abc\" | upper | quote }}\n\
                 kube: {{ .Capabilities.KubeVersion.Version }}\n\
                 template: {{ .Template.Name }}\n\
                 {{ if .Values.needX }}{{ required \"x is required\" .Values.x }}{{ end }}\n\
                 {{ if .Values.boom }}{{ fail \"boom!\" }}{{ end }}\n\
                 {{ if .Values.probe }}{{ .Values.nope }}{{ end }}\n\
                 {{ if .Values.useLookup }}{{ tpl \"{{ lookup \\\"v1\\\" \\\"Pod\\\" \\\"\\\" \\\"\\\" }}\" . }}{{ end }}\n",
            ),
            ("files/x.txt", "hello\n"),
        ];
        for (path, text) in files {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
            }
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        }
        dir
    }

    fn release(strict: bool, kube_version: &str) -> Release<'_> {
        Release {
            name: "rel",
            namespace: "ns",
            kube_version,
            strict,
        }
    }

    #[test]
    fn renders_like_helm() {
        let dir = fixture("like-helm");
        let out = renderer()
            .render(
                &dir,
                &json!({"a": {"b": null, "c": "y"}}),
                &release(true, "1.32.0"),
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["demo/templates/cm.yaml"]);
        let text = &out["demo/templates/cm.yaml"];
        for line in [
            "name: demo-rel",
            "tpl: y",
            // Helm reads values numbers as float64: printed raw, a large one is in
            // exponent form; `int` is the cure.
            "big: 1.6777216e+07",
            "int: 16777216",
            // null in the overrides deletes the key, as `helm -f` does; sigs.k8s.io/yaml
            // quotes "y" (a YAML 1.1 boolean), as Helm's toYaml does.
            "a:\n  c: \"y\"\n",
            "file: hello",
            "sprig: \"ABC\"",
            "kube: v1.32.0",
            "template: demo/templates/cm.yaml",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
    }

    #[test]
    fn template_errors_are_reported() {
        let dir = fixture("errors");
        let r = renderer();
        let err = |overrides: Value, rel: Release<'_>| match r.render(&dir, &overrides, &rel) {
            Ok(out) => panic!("rendered instead of failing: {out:?}"),
            Err(e) => format!("{e:#}"),
        };
        let required = err(json!({"needX": true}), release(false, "1.32.0"));
        let fail = err(json!({"boom": true}), release(false, "1.32.0"));
        let missing = err(json!({"probe": true}), release(true, "1.32.0"));
        let lookup = err(json!({"useLookup": true}), release(false, "1.32.0"));
        let kube = err(json!({}), release(false, "1.27.0"));
        // Without strict mode a missing key renders as nothing, as in `helm template`.
        let lenient = r.render(&dir, &json!({"probe": true}), &release(false, "1.32.0"));
        std::fs::remove_dir_all(&dir).ok();
        assert!(required.contains("x is required"), "{required}");
        assert!(fail.contains("boom!"), "{fail}");
        assert!(
            missing.contains("map has no entry for key \"nope\""),
            "{missing}"
        );
        assert!(
            lookup.contains("function \"lookup\" not defined"),
            "{lookup}"
        );
        assert!(
            kube.contains("incompatible with Kubernetes v1.27.0"),
            "{kube}"
        );
        assert!(lenient.is_ok(), "{lenient:?}");
    }
}
