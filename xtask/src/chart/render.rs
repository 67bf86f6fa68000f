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
