//! Compiles the kernel programs (`src/*.bpf.c`) with clang when it is available.
//!
//! Owns: producing `$OUT_DIR/probes.rs`, which either embeds the stripped object or
//! records why probing is unavailable. Must never fail the build just because clang or
//! the libbpf headers are missing, unless `PEERD_REQUIRE_EBPF=1` asks for the programs.
//!
//! A build made before the tools were installed must not keep "probes unavailable"
//! forever, so the script tells cargo what its outcome depended on: the tool binaries it
//! used (an upgrade reruns it), and, when a tool or the headers were missing, the
//! directories they would appear in (every `PATH` directory, the include directory).
//! Installing a package changes those directories' modification time, so the next build
//! reruns this script. Only existing paths are named: cargo treats a missing path as
//! always stale, which would rerun the script on every build.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &["connect"];
const CLANG_CANDIDATES: &[&str] = &[
    "clang", "clang-21", "clang-20", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15",
    "clang-14",
];
const STRIP_CANDIDATES: &[&str] = &[
    "llvm-strip",
    "llvm-strip-21",
    "llvm-strip-20",
    "llvm-strip-19",
    "llvm-strip-18",
    "llvm-strip-17",
    "llvm-strip-16",
    "llvm-strip-15",
    "llvm-strip-14",
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap_or_default());
    let src = manifest.join("src");
    for entry in ["connect.bpf.c", "kernel_types.h", "shared.h"] {
        println!("cargo:rerun-if-changed={}", src.join(entry).display());
    }
    for var in [
        "PEERD_CLANG",
        "PEERD_LLVM_STRIP",
        "PEERD_REQUIRE_EBPF",
        "PEERD_NO_EBPF_BUILD",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let require = env::var("PEERD_REQUIRE_EBPF").is_ok_and(|v| v == "1");

    let disabled = env::var("PEERD_NO_EBPF_BUILD").is_ok_and(|v| v == "1");
    let outcome = if disabled {
        Err("eBPF build disabled by PEERD_NO_EBPF_BUILD=1".to_string())
    } else {
        compile_all(&src, &out_dir)
    };

    let mut generated = String::new();
    if !disabled {
        watch_tools(outcome.is_err());
    }
    match outcome {
        Ok(objects) => {
            for (name, path) in objects {
                let _ = writeln!(
                    generated,
                    "/// The compiled `{name}.bpf.c` object.\npub const {}_OBJECT: Option<&[u8]> = Some(include_bytes!({:?}));",
                    name.to_uppercase(),
                    path.display().to_string()
                );
            }
            generated.push_str("/// Why the programs were not built (`None`: they were).\npub const UNAVAILABLE_REASON: Option<&str> = None;\n");
        }
        Err(reason) => {
            if require {
                panic!("PEERD_REQUIRE_EBPF=1 but the eBPF programs could not be built: {reason}");
            }
            println!("cargo:warning=peerd-ebpf: probes unavailable: {reason}");
            for name in SOURCES {
                let _ = writeln!(
                    generated,
                    "/// The compiled `{name}.bpf.c` object.\npub const {}_OBJECT: Option<&[u8]> = None;",
                    name.to_uppercase()
                );
            }
            let _ = writeln!(
                generated,
                "/// Why the programs were not built (`None`: they were).\npub const UNAVAILABLE_REASON: Option<&str> = Some({reason:?});"
            );
        }
    }
    if let Err(err) = fs::write(out_dir.join("probes.rs"), generated) {
        panic!("cannot write probes.rs: {err}");
    }
}

/// The directories of `PATH` that exist (absolute only: a relative entry depends on the
/// working directory, not on what is installed).
fn path_dirs() -> Vec<PathBuf> {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.is_absolute() && d.is_dir())
        .collect()
}

/// Where `tool` resolves in `PATH`, like the shell's `command -v`.
fn resolve_in_path(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return Some(PathBuf::from(tool)).filter(|p| p.exists());
    }
    path_dirs()
        .into_iter()
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Tells cargo when to rerun this script: when a tool it used changes, and, if the
/// build `failed`, when anything is installed where the missing tools or headers would
/// go.
fn watch_tools(failed: bool) {
    for (var, candidates) in [
        ("PEERD_CLANG", CLANG_CANDIDATES),
        ("PEERD_LLVM_STRIP", STRIP_CANDIDATES),
    ] {
        if let Some(path) = find_tool(var, candidates).and_then(|t| resolve_in_path(&t)) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    if !failed && find_tool("PEERD_LLVM_STRIP", STRIP_CANDIDATES).is_some() {
        return;
    }
    for dir in path_dirs() {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    if failed {
        let headers = ["/usr/include/bpf", "/usr/include"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_dir());
        if let Some(dir) = headers {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
}

fn find_tool(env_var: &str, candidates: &[&str]) -> Option<String> {
    if let Ok(explicit) = env::var(env_var) {
        return Some(explicit);
    }
    candidates
        .iter()
        .find(|candidate| {
            Command::new(candidate)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .map(|s| s.to_string())
}

fn compile_all(src: &Path, out_dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let clang = find_tool("PEERD_CLANG", CLANG_CANDIDATES)
        .ok_or_else(|| "clang not found (install clang, or set PEERD_CLANG)".to_string())?;
    let strip = find_tool("PEERD_LLVM_STRIP", STRIP_CANDIDATES);
    if strip.is_none() {
        println!("cargo:warning=peerd-ebpf: llvm-strip not found; embedding unstripped objects");
    }
    let mut objects = Vec::new();
    for name in SOURCES {
        let input = src.join(format!("{name}.bpf.c"));
        let output = out_dir.join(format!("{name}.bpf.o"));
        let result = Command::new(&clang)
            .args([
                "-O2",
                "-g",
                "-mcpu=v3",
                "-target",
                "bpf",
                "-D__TARGET_ARCH_x86",
                "-Wall",
            ])
            .arg("-I")
            .arg(src)
            .arg("-c")
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .output()
            .map_err(|err| format!("cannot run {clang}: {err}"))?;
        if !result.status.success() {
            let stderr = String::from_utf8_lossy(&result.stderr);
            let first_lines: Vec<&str> = stderr.lines().take(6).collect();
            return Err(format!(
                "{clang} failed on {name}.bpf.c (is libbpf-dev installed?): {}",
                first_lines.join(" | ")
            ));
        }
        if let Some(strip) = &strip {
            let stripped = Command::new(strip)
                .arg("-g")
                .arg(&output)
                .status()
                .map_err(|err| format!("cannot run {strip}: {err}"))?;
            if !stripped.success() {
                return Err(format!("{strip} -g failed on {name}.bpf.o"));
            }
        }
        objects.push((name.to_string(), output));
    }
    Ok(objects)
}
