//! `cargo xtask test`: the one command that runs every check and test (CI runs it).

use std::process::Command;

use anyhow::{Context, bail};

pub fn lint() -> anyhow::Result<()> {
    crate::cargo(&["fmt", "--all", "--check"])?;
    // The fuzz crate is its own workspace; `--all` does not reach it.
    crate::cargo(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"])?;
    crate::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

/// The daemon carries only the daemon: `peerd-testbed` (simulators, emulated API server,
/// test CA, sandbox) is not among peerd's normal dependencies, and the `peerd` binary has
/// no `sandbox` or `sim` subcommand.
fn check_split() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = output(
        Command::new(cargo)
            .args(["tree", "-p", "peerd", "-e", "normal", "--prefix", "none"])
            .current_dir(crate::root()),
    )?;
    if let Some(line) = tree.lines().find(|l| l.starts_with("peerd-testbed ")) {
        bail!("peerd depends on the testbed ({line}): it must never be linked into the daemon");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"));
    let help = output(Command::new(target.join("debug/peerd")).arg("--help"))?;
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if commands.is_empty() {
        bail!("no command list in `peerd --help`:\n{help}");
    }
    if let Some(c) = commands.iter().find(|c| ["sandbox", "sim"].contains(c)) {
        bail!("`peerd --help` lists `{c}`: the sandbox and simulators belong to peerd-sandbox");
    }
    eprintln!("xtask: split ok: peerd has no testbed dependency; commands {commands:?}");
    Ok(())
}

/// Runs a command and returns its stdout, failing on a non-zero exit.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}\n{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Seconds each fuzz target runs in the suite's smoke (`cargo xtask fuzz` runs longer).
const FUZZ_SMOKE_SECS: u64 = 10;

pub fn run(setup: bool, bench: bool, fuzz: bool) -> anyhow::Result<()> {
    if setup {
        crate::setup::run()?;
    }
    lint()?;
    crate::chart::run()?;
    // Both binaries first: the sandbox tests (Rust and Python) run `peerd-sandbox`,
    // which runs the `peerd` next to it.
    crate::cargo(&["build", "-p", "peerd", "-p", "peerd-testbed", "--bins"])?;
    check_split()?;
    crate::cargo(&["test", "--workspace", "--no-fail-fast"])?;
    let py = crate::root().join("tests/python");
    if py.is_dir() {
        crate::run(
            Command::new("python3")
                .args(["-m", "pytest", "-q"])
                .arg(&py),
        )?;
    }
    if fuzz {
        crate::fuzz::run(&crate::fuzz::FuzzArgs {
            target: None,
            secs: FUZZ_SMOKE_SECS,
            asan: false,
            dev: true,
        })?;
    }
    chaos_quick()?;
    if bench {
        crate::bench::run(&crate::bench::BenchArgs::all_quick())?;
    }
    Ok(())
}

/// `chaos --quick` needs root (a network namespace, nftables). Without it the run is
/// skipped with the reason, unless `PEERD_REQUIRE_EBPF=1` (CI), where that is a failure
/// like every other kernel test.
fn chaos_quick() -> anyhow::Result<()> {
    if !crate::setup::is_root() {
        if std::env::var("PEERD_REQUIRE_EBPF").is_ok_and(|v| v == "1") {
            bail!(
                "chaos --quick needs root (network namespaces, nftables) and PEERD_REQUIRE_EBPF=1 is set"
            );
        }
        eprintln!(
            "xtask: skipping chaos --quick: not root (it needs a network namespace and nftables)"
        );
        return Ok(());
    }
    crate::chaos::run(
        "chaos",
        &["--quick".to_string()],
        crate::chaos::Profile::Debug,
    )
}
