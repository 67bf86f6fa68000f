//! The `peerd` binary's allocator options reach jemalloc: they are a symbol jemalloc reads
//! at start (`malloc_conf`), which a build change could silently drop. jemalloc's own
//! statistics (`MALLOC_CONF=stats_print:true`, printed at exit) say what it runs with.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn jemalloc_options(malloc_conf: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_peerd"))
        .arg("--version")
        .env("MALLOC_CONF", malloc_conf)
        .output()
        .expect("running peerd --version");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_binary_runs_with_its_compiled_in_jemalloc_options() {
    let stats = jemalloc_options("stats_print:true");
    for line in [
        "opt.narenas: 1",
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
        "opt.tcache_max: 1024",
        "opt.thp: \"never\"",
    ] {
        assert!(stats.contains(line), "{line:?} missing from:\n{stats}");
    }
}

#[test]
fn malloc_conf_in_the_environment_overrides_one_option_and_keeps_the_rest() {
    let stats = jemalloc_options("stats_print:true,narenas:3");
    assert!(stats.contains("opt.narenas: 3"), "{stats}");
    assert!(stats.contains("opt.tcache_max: 1024"), "{stats}");
}
