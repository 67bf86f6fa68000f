//! Issue 4 acceptance through the real binaries: `peerd-sandbox` with HBONE faults drives
//! cluster-1's `PeerDataPlaneProgrammed` for cluster-3 to False with the measured reason
//! and back to True once the fault is lifted; bad fault input is refused; without
//! privileges peerd keeps running in userspace mode and says why.
//!
//! Each sandbox runs inside a network namespace this test creates (its own loopback, so
//! the fixed 127.0.k.1 ports never collide with another sandbox, and its own nftables).
//! Root-only parts skip with a printed reason when not root or without `ip`/`nft`, and
//! fail instead under `PEERD_REQUIRE_EBPF=1` (CI), like the other kernel tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../peerd/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SANDBOX: &str = env!("CARGO_BIN_EXE_peerd-sandbox");
const DATA_PLANE: &str = "gloo.solo.io/PeerDataPlaneProgrammed";
const CONNECTED: &str = "gloo.solo.io/PeerConnected";

/// The daemon the sandbox runs: `peerd` next to `peerd-sandbox` (built by `cargo build
/// -p peerd`, which `cargo xtask test` runs first).
fn peerd_bin() -> String {
    let path = Path::new(SANDBOX).with_file_name("peerd");
    assert!(
        path.is_file(),
        "no peerd binary at {} (cargo build -p peerd)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// A network namespace with loopback up, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("peerd-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        let ns = Netns(name);
        assert!(ns.run(&["ip", "link", "set", "lo", "up"]).status.success());
        ns
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn nft_tables(&self) -> String {
        String::from_utf8_lossy(&self.run(&["nft", "list", "tables"]).stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peerd-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `peerd-sandbox`; stopped with SIGTERM (so it cleans up) on drop.
struct Sandbox {
    child: Child,
    dir: PathBuf,
}

impl Sandbox {
    fn start(mut command: Command, dir: PathBuf) -> Sandbox {
        let out = std::fs::File::create(dir.join("sandbox.out")).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Sandbox { child, dir }
    }

    fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    fn control(&self, line: &str) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("state").join("control"))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("sandbox.out")).unwrap_or_default()
    }

    /// Waits (generously) for the status JSON to satisfy `done`.
    fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Ok(Some(code)) = self.child.try_wait() {
                panic!(
                    "sandbox exited ({code}) while waiting for {what}:\n{}",
                    self.output()
                );
            }
            if let Ok(text) = std::fs::read_to_string(self.status_path())
                && let Ok(status) = serde_json::from_str::<Value>(&text)
            {
                if done(&status) {
                    return status;
                }
                last = status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status:\n{}",
                serde_json::to_string_pretty(&last).unwrap()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn peer<'a>(status: &'a Value, cluster: &str, peer: &str) -> Option<&'a Value> {
    status["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == cluster)?["peers"]
        .as_array()?
        .iter()
        .find(|p| p["cluster"] == peer)
}

fn condition(status: &Value, cluster: &str, of: &str, kind: &str) -> Option<(String, String)> {
    let c = &peer(status, cluster, of)?["conditions"][kind];
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

fn is(status: &Value, kind: &str, want: &str, reason: Option<&str>) -> bool {
    condition(status, "cluster-1", "cluster-3", kind)
        .is_some_and(|(s, r)| s == want && reason.is_none_or(|want_reason| r == want_reason))
}

fn fault<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["faults"]
        .as_array()?
        .iter()
        .rev()
        .find(|f| f["fault"] == name)
}

fn ebpf_expected() -> bool {
    peerd_ebpf::connect_object().is_ok() && Path::new("/sys/kernel/btf/vmlinux").exists()
}

/// Generous: a loaded 2-core machine; the sandbox's failure window is 10 s.
const CONDITION_WAIT: Duration = Duration::from_secs(120);

#[test]
fn hbone_faults_turn_data_plane_programmed_false_with_the_reason_and_lifting_restores_it() {
    if support::unavailable_reason().is_some() {
        return;
    }
    let ns = Netns::new("sbx");
    let dir = scratch("sandbox-faults");
    let mut command = ns.command(&[SANDBOX]);
    command
        .args([
            "--workloads-per-cluster",
            "30",
            "--services-per-cluster",
            "5",
        ])
        .args(["--for", "900s", "--fault", "drop-hbone=cluster-3"])
        .args(["--fault-after", "40s"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--status-json")
        .arg(dir.join("status.json"));
    let mut sandbox = Sandbox::start(command, dir.clone());

    // drop-hbone: connects to cluster-3's 15008 time out.
    let injected = sandbox.wait_for("drop-hbone injected", Duration::from_secs(240), |s| {
        fault(s, "drop-hbone=cluster-3").is_some_and(|f| f["active"] == true)
    });
    assert_eq!(
        fault(&injected, "drop-hbone=cluster-3").unwrap()["method"],
        "nftables"
    );
    assert!(
        ns.nft_tables().contains("peerd_sandbox_"),
        "{}",
        ns.nft_tables()
    );
    let down = sandbox.wait_for("HBONEConnectTimeout", CONDITION_WAIT, |s| {
        is(s, DATA_PLANE, "False", Some("HBONEConnectTimeout"))
    });
    let p = peer(&down, "cluster-1", "cluster-3").unwrap();
    assert_eq!(
        p["conditions"][DATA_PLANE]["message"],
        "connection timed out, maybe a NetworkPolicy is blocking HBONE port 15008"
    );
    let probe = &p["probe"];
    let expected_mode = if ebpf_expected() { "ebpf" } else { "userspace" };
    assert_eq!(probe["mode"], expected_mode, "{probe}");
    assert!(
        probe["timeouts"].as_u64().unwrap() + probe["aborted"].as_u64().unwrap() > 0,
        "{probe}"
    );
    if expected_mode == "ebpf" {
        assert!(probe["syn_retransmits"].as_u64().unwrap() > 0, "{probe}");
    }
    assert!(
        is(&down, CONNECTED, "True", None),
        "the xDS port is not faulted: {down}"
    );

    // Lift through the control file.
    sandbox.control("lift drop-hbone=cluster-3");
    let up = sandbox.wait_for("recovery after lifting drop-hbone", CONDITION_WAIT, |s| {
        is(s, DATA_PLANE, "True", None)
    });
    let lifted = fault(&up, "drop-hbone=cluster-3").unwrap();
    assert_eq!(lifted["active"], false);
    assert!(lifted["lifted_at_seconds"].as_u64().is_some(), "{lifted}");
    assert!(
        !ns.nft_tables().contains("peerd_sandbox_"),
        "table deleted on lift"
    );

    // reject-hbone, injected by command: connects are refused.
    sandbox.control("fault reject-hbone=cluster-3");
    let refused = sandbox.wait_for("HBONEConnectionRefused", CONDITION_WAIT, |s| {
        is(s, DATA_PLANE, "False", Some("HBONEConnectionRefused"))
    });
    let probe = &peer(&refused, "cluster-1", "cluster-3").unwrap()["probe"];
    assert!(probe["refused"].as_u64().unwrap() > 0, "{probe}");
    sandbox.control("lift reject-hbone=cluster-3");
    sandbox.wait_for("recovery after lifting reject-hbone", CONDITION_WAIT, |s| {
        is(s, DATA_PLANE, "True", None)
    });

    // A fault left active is cleaned up on exit.
    sandbox.control("fault drop-hbone=cluster-3");
    sandbox.wait_for("drop-hbone injected again", CONDITION_WAIT, |s| {
        fault(s, "drop-hbone=cluster-3").is_some_and(|f| f["active"] == true)
    });
    assert!(ns.nft_tables().contains("peerd_sandbox_"));
    let exit = sandbox.stop();
    assert!(exit.success(), "{exit}: {}", sandbox.output());
    assert!(
        !ns.nft_tables().contains("peerd_sandbox_"),
        "table deleted on exit: {}",
        ns.nft_tables()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_faults_are_refused_before_anything_starts() {
    let dir = scratch("bad-faults");
    let run = |args: &[&str]| {
        Command::new(SANDBOX)
            .args(args)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["--fault", "flood=cluster-1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown fault kind") && stderr.contains("reject-hbone"),
        "{stderr}"
    );
    let out = run(&["--fault", "drop-hbone=cluster-9"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no such cluster"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_privileges_nft_faults_are_refused_and_peerd_runs_in_userspace_mode() {
    if support::unavailable_reason().is_some() {
        return;
    }
    if !support::tool_works("setpriv", &["--version"]) {
        eprintln!("SKIPPED: setpriv missing");
        return;
    }
    let drop_caps = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"];

    // A network fault needs nftables: refused with the reason, nothing started.
    let dir = scratch("unprivileged-fault");
    let ns = Netns::new("unpriv-fault");
    let mut args: Vec<&str> = drop_caps.to_vec();
    args.extend([SANDBOX, "--fault", "reject-hbone=cluster-2", "--state-dir"]);
    let state = dir.join("state");
    args.push(state.to_str().unwrap());
    let out = ns.run(&args);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("need root (CAP_NET_ADMIN)"),
        "the refusal names the missing privilege: {stderr}"
    );
    let started = std::fs::read_dir(&state).map_or(0, |entries| entries.count());
    assert_eq!(started, 0, "nothing was started in {}", state.display());
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);

    // Without capabilities the eBPF probes cannot load: every peerd keeps running in
    // userspace mode, and `peerd status` says why.
    let ns = Netns::new("unpriv-run");
    let dir = scratch("unprivileged-run");
    let mut command = ns.command(&drop_caps);
    command
        .args([SANDBOX, "--clusters", "2", "--workloads-per-cluster", "10"])
        .args(["--services-per-cluster", "3", "--for", "600s"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--status-json")
        .arg(dir.join("status.json"));
    let mut sandbox = Sandbox::start(command, dir.clone());
    let status = sandbox.wait_for("peers probed", Duration::from_secs(240), |s| {
        peer(s, "cluster-1", "cluster-2").is_some_and(|p| {
            p["probe"]["attempts"].as_u64().unwrap_or(0) > 0
                && p["conditions"][DATA_PLANE]["status"] == "True"
        })
    });
    assert_eq!(
        peer(&status, "cluster-1", "cluster-2").unwrap()["probe"]["mode"],
        "userspace"
    );
    let peerd = peerd_bin();
    let out = ns.run(&[&peerd, "status", "--addr", "127.0.1.1:15041"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("probes: "))
        .unwrap_or_else(|| panic!("no probe mode line in:\n{text}"));
    assert!(line.starts_with("probes: userspace ("), "{line}");
    assert!(
        line.contains("privileges") || line.contains("not permitted"),
        "the reason names the missing permission: {line}"
    );
    let exit = sandbox.stop();
    assert!(exit.success(), "{exit}: {}", sandbox.output());
    let _ = std::fs::remove_dir_all(&dir);
}
