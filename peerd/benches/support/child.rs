//! The real `peerd` binary as a child process of a benchmark (so its RSS and CPU are its
//! own): written config file, log file, kill on drop; plus the loopback helpers the
//! multi-process benchmarks share (a free port on a given address, the fd limit).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use peerd::config::file::FileConfig;

// Not every bench that includes this module picks ports.
#[allow(unused_imports)]
pub use peerd_testbed::ports::free_addr;

/// A running `peerd run --config <dir>/peerd.yaml`, logging to `<dir>/peerd.log`.
pub struct Peerd {
    child: Child,
    log: PathBuf,
}

impl Peerd {
    /// Writes `config` to `dir` and starts peerd on it (`RUST_LOG=warn`).
    pub fn start(dir: &Path, config: &FileConfig) -> anyhow::Result<Peerd> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("peerd.yaml");
        std::fs::write(&path, yaml_serde::to_string(config)?)?;
        let log = dir.join("peerd.log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_peerd"))
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting peerd in {}", dir.display()))?;
        Ok(Peerd { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last 20 lines of its log (for a failure message).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Peerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's soft open-file limit to its hard limit (a benchmark holding a
/// thousand client connections needs more than the common 1024 default); returns the
/// limit now in force. Children (the peerd under test) inherit it.
#[allow(unsafe_code)] // getrlimit/setrlimit(2) have no safe wrapper in std; no pointers kept.
pub fn raise_nofile_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; only this process's limit changes.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(limit.rlim_cur)
}
