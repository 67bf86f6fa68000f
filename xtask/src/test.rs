//! `cargo xtask test`: the one command that runs every check and test (CI runs it).

use std::process::Command;

pub fn lint() -> anyhow::Result<()> {
    crate::cargo(&["fmt", "--all", "--check"])?;
    crate::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

pub fn run(setup: bool, bench: bool) -> anyhow::Result<()> {
    if setup {
        crate::setup::run()?;
    }
    lint()?;
    crate::cargo(&["test", "--workspace", "--no-fail-fast"])?;
    let py = crate::root().join("tests/python");
    if py.is_dir() {
        crate::run(
            Command::new("python3")
                .args(["-m", "pytest", "-q"])
                .arg(&py),
        )?;
    }
    if bench {
        crate::bench::run(&crate::bench::BenchArgs::all_quick())?;
    }
    Ok(())
}
