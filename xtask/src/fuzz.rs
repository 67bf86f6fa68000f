//! `cargo xtask fuzz [--target T] [--secs N]`: builds the coverage-guided fuzz targets in
//! `fuzz/` with cargo-fuzz (installed when missing), writes seed corpora from the
//! simulated population and the emulated API server (`peerd-sandbox fuzz-seeds`), runs
//! each target for N seconds and prints a table. Any crash, OOM or timeout fails the run
//! and leaves the input in `fuzz/artifacts/<target>/`.
//!
//! Built on the stable toolchain with `--sanitizer none`: cargo-fuzz then passes no `-Z`
//! flag (no nightly, no `RUSTC_BOOTSTRAP`); peerd has no `unsafe`, so the crash
//! detectors that matter are panics (debug assertions and overflow checks are on), OOM
//! (`-rss_limit_mb`) and hangs (`-timeout`). `--asan` adds AddressSanitizer (stable
//! rustc ships its runtime; cargo-fuzz passes `-Zsanitizer`, so that build alone sets
//! `RUSTC_BOOTSTRAP=1`, into a separate target directory).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// Every target in `fuzz/Cargo.toml`, in the order they run.
pub const TARGETS: &[&str] = &[
    "envelope",
    "resource",
    "wire_edit",
    "config",
    "gateway",
    "service",
    "tokenreview",
    "lease",
];

/// The cargo-fuzz release this was written against (installed with `--locked`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(clap::Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Run only this target (default: every target).
    #[arg(long)]
    pub target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Build and run with AddressSanitizer (needs `RUSTC_BOOTSTRAP=1`, set for that build
    /// only; a separate target directory).
    #[arg(long)]
    pub asan: bool,
    /// An unoptimised build (`cargo fuzz build --dev`): a third of the build's CPU time,
    /// runs several times slower. What the suite's smoke uses; long runs want the default.
    #[arg(long)]
    pub dev: bool,
}

/// One target's run.
struct Outcome {
    target: String,
    executions: u64,
    seconds: f64,
    corpus: usize,
    crashes: Vec<PathBuf>,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<&str> = match &args.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!("unknown fuzz target {t:?}; targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    ensure_cargo_fuzz()?;
    let fuzz = crate::root().join("fuzz");
    let seeds = fuzz.join("seeds");
    crate::cargo(&[
        "run",
        "-q",
        "-p",
        "peerd-testbed",
        "--bin",
        "peerd-sandbox",
        "--",
        "fuzz-seeds",
        "--out",
        &seeds.to_string_lossy(),
    ])?;
    let target_dir = fuzz.join(if args.asan { "target-asan" } else { "target" });
    let built = Instant::now();
    crate::run(&mut build_command(&target_dir, args, &targets))?;
    eprintln!(
        "xtask fuzz: built {} target(s) in {:.0} s",
        targets.len(),
        built.elapsed().as_secs_f64()
    );
    let profile = if args.dev { "debug" } else { "release" };
    let bin_dir = target_dir.join(format!("{}/{profile}", host_triple()?));
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(&fuzz, &bin_dir, &seeds, target, args.secs)?);
    }
    print_table(&outcomes);
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.crashes.is_empty()).collect();
    if !crashed.is_empty() {
        let list: Vec<String> = crashed
            .iter()
            .flat_map(|o| o.crashes.iter().map(|p| p.display().to_string()))
            .collect();
        bail!(
            "fuzzing found {} failing input(s): {} (reproduce: {}/<target> <file>)",
            list.len(),
            list.join(", "),
            bin_dir.display()
        );
    }
    Ok(())
}

/// Installs cargo-fuzz when `cargo fuzz` is missing (`cargo xtask setup` does it too).
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let installed = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    eprintln!("xtask fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    crate::cargo(&[
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ])
}

fn build_command(target_dir: &Path, args: &FuzzArgs, targets: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Run from the repository root (`crate::run`), where cargo-fuzz finds `fuzz/`.
    cmd.args(["fuzz", "build"]);
    if args.dev {
        // Debug assertions and overflow checks are on in the dev profile too.
        cmd.arg("--dev");
    } else {
        // Many codegen units: a shorter build for a slightly slower run.
        cmd.args(["-O", "--codegen-units", "16"]);
    }
    cmd.arg("--target-dir").arg(target_dir);
    if args.asan {
        // cargo-fuzz passes `-Zsanitizer=address`: accepted by stable rustc only so.
        cmd.args(["--sanitizer", "address"])
            .env("RUSTC_BOOTSTRAP", "1");
    } else {
        cmd.args(["--sanitizer", "none"]);
    }
    if let [one] = targets {
        cmd.arg(one);
    }
    cmd
}

fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("no host triple in `rustc -vV`")
}

fn run_target(
    fuzz: &Path,
    bin_dir: &Path,
    seeds: &Path,
    target: &str,
    secs: u64,
) -> anyhow::Result<Outcome> {
    let corpus = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let before = failing_inputs(&artifacts)?;
    let seed_dir = seeds.join(target);
    let mut cmd = Command::new(bin_dir.join(target));
    cmd.arg(&corpus);
    if seed_dir.is_dir() {
        cmd.arg(&seed_dir);
    }
    cmd.args([
        format!("-max_total_time={secs}"),
        // A single input taking longer than this is a hang.
        "-timeout=10".to_string(),
        "-rss_limit_mb=2048".to_string(),
        "-print_final_stats=1".to_string(),
        format!("-artifact_prefix={}/", artifacts.display()),
    ]);
    eprintln!("xtask fuzz: {target} for {secs} s");
    let started = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("running fuzz target {target}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    let executions = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let crashes: Vec<PathBuf> = failing_inputs(&artifacts)?
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !out.status.success() || !crashes.is_empty() {
        // The fuzzer's own report, without the backtrace: the panic message, the
        // failure kind and where the input was written.
        let report: Vec<&str> = log
            .lines()
            .filter(|l| {
                [
                    "panicked at",
                    "SUMMARY:",
                    "Test unit written",
                    "ERROR: libFuzzer",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect();
        let message: Vec<&str> = log
            .lines()
            .skip_while(|l| !l.contains("panicked at"))
            .skip(1)
            .take(3)
            .collect();
        eprintln!(
            "xtask fuzz: {target} failed ({}):\n{}\n{}",
            out.status,
            report.join("\n"),
            message.join("\n")
        );
        if crashes.is_empty() {
            bail!(
                "fuzz target {target} exited with {} and left no input",
                out.status
            );
        }
    }
    let corpus_size = std::fs::read_dir(&corpus)
        .with_context(|| format!("reading {}", corpus.display()))?
        .count();
    Ok(Outcome {
        target: target.to_string(),
        executions,
        seconds,
        corpus: corpus_size,
        crashes,
    })
}

/// Inputs libFuzzer saved for a crash, OOM, timeout or leak.
fn failing_inputs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| {
            ["crash-", "oom-", "timeout-", "leak-"]
                .iter()
                .any(|p| n.starts_with(p))
        }) {
            found.push(path);
        }
    }
    Ok(found)
}

fn print_table(outcomes: &[Outcome]) {
    println!(
        "{:<12} {:>14} {:>9} {:>10} {:>8} {:>8}",
        "target", "executions", "seconds", "exec/s", "corpus", "crashes"
    );
    for o in outcomes {
        println!(
            "{:<12} {:>14} {:>9.1} {:>10.0} {:>8} {:>8}",
            o.target,
            o.executions,
            o.seconds,
            o.executions as f64 / o.seconds.max(0.001),
            o.corpus,
            o.crashes.len()
        );
    }
}
