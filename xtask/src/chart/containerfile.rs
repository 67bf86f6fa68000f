//! Static check of `deploy/Containerfile` against the repository and the chart (no
//! container engine runs in CI): sources of `COPY`/`ADD` from the build context exist (and
//! a whole-context copy leaves `target/` out through `.dockerignore`/`.containerignore`),
//! `COPY --from` names an earlier stage, and the final stage agrees with the rendered
//! DaemonSet: its numeric `USER` is the chart's non-root `runAsUser:runAsGroup`, its
//! `EXPOSE` set is the container's ports, its exec-form `ENTRYPOINT` is a file the stage
//! copies in and is what runs (the DaemonSet sets no `command`, or the same one).
//!
//! Parses only the instructions it checks; never builds or runs anything.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// What the rendered chart expects of the image.
#[derive(Debug, Default)]
pub(super) struct Expected {
    /// `runAsUser:runAsGroup` of the non-root (no eBPF) rendering.
    pub user: Option<(u64, u64)>,
    /// The peerd container's ports, as `port/protocol` (lowercase).
    pub ports: BTreeSet<String>,
    /// The container's `command`, if the chart sets one.
    pub command: Option<Vec<String>>,
}

impl Expected {
    /// Reads the peerd container of the DaemonSet in `defaults` (ports, command) and in
    /// `non_root` (the rendering without eBPF: user and group).
    pub(super) fn from_chart(defaults: &[Value], non_root: &[Value]) -> Result<Expected, String> {
        let container = |objects: &[Value], which: &str| -> Result<Value, String> {
            objects
                .iter()
                .filter(|o| o["kind"] == "DaemonSet")
                .flat_map(|o| {
                    o["spec"]["template"]["spec"]["containers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .find(|c| c["name"] == "peerd")
                .ok_or_else(|| {
                    format!("Containerfile: no peerd container in the {which} DaemonSet")
                })
        };
        let main = container(defaults, "default")?;
        let ports = main["ports"]
            .as_array()
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p["containerPort"],
                            p["protocol"].as_str().unwrap_or("TCP").to_lowercase()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let command = main["command"].as_array().map(|c| {
            c.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        });
        let security = &container(non_root, "non-root")?["securityContext"];
        let user = match (
            security["runAsUser"].as_u64(),
            security["runAsGroup"].as_u64(),
        ) {
            (Some(u), Some(g)) => Some((u, g)),
            _ => None,
        };
        Ok(Expected {
            user,
            ports,
            command,
        })
    }
}

/// One instruction: keyword (uppercase) and its arguments (the rest of the logical line).
#[derive(Debug)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

/// A build stage: its `FROM` line, name (`AS x`) and instructions.
#[derive(Debug)]
struct Stage {
    line: usize,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

/// Checks `deploy/Containerfile` (build context: the repository root) against the chart's
/// default and non-root renderings.
pub(super) fn check_repository(root: &Path, defaults: &[Value], non_root: &[Value]) -> Vec<String> {
    let expected = match Expected::from_chart(defaults, non_root) {
        Ok(e) => e,
        Err(e) => return vec![e],
    };
    match std::fs::read_to_string(root.join("deploy/Containerfile")) {
        Ok(text) => check(&text, "deploy/Containerfile", root, &expected),
        Err(e) => vec![format!("deploy/Containerfile: {e}")],
    }
}

/// Problems in `text` (the Containerfile at `file`, build context `context`).
pub(super) fn check(text: &str, file: &str, context: &Path, expected: &Expected) -> Vec<String> {
    let mut problems = Vec::new();
    let mut report = |line: usize, what: String| problems.push(format!("{file}:{line}: {what}"));
    let stages = match parse(text) {
        Ok(s) => s,
        Err((line, e)) => {
            report(line, e);
            return problems;
        }
    };
    let Some(last) = stages.last() else {
        report(1, "no FROM instruction".into());
        return problems;
    };

    for (index, stage) in stages.iter().enumerate() {
        for ins in stage.instructions.iter() {
            if ins.keyword != "COPY" && ins.keyword != "ADD" {
                continue;
            }
            let (flags, paths) = match copy_args(&ins.args) {
                Ok(v) => v,
                Err(e) => {
                    report(ins.line, e);
                    continue;
                }
            };
            if let Some(from) = flags.iter().find_map(|f| f.strip_prefix("--from=")) {
                let earlier = &stages[..index];
                let known = earlier.iter().any(|s| s.name.as_deref() == Some(from))
                    || from.parse::<usize>().is_ok_and(|i| i < index);
                if !known {
                    report(
                        ins.line,
                        format!(
                            "{} --from={from}: no earlier stage of that name",
                            ins.keyword
                        ),
                    );
                }
                continue;
            }
            for source in &paths[..paths.len() - 1] {
                if let Some(problem) = check_context_source(context, source) {
                    report(ins.line, format!("{} {source}: {problem}", ins.keyword));
                }
            }
        }
    }

    let last_line = |keyword: &str| last.instructions.iter().rfind(|i| i.keyword == keyword);
    match (last_line("USER"), expected.user) {
        (None, Some((u, g))) => report(
            last.line,
            format!("final stage has no USER; the chart runs as {u}:{g} without eBPF"),
        ),
        (Some(ins), Some((u, g))) if ins.args.trim() != format!("{u}:{g}") => report(
            ins.line,
            format!(
                "USER {} differs from the chart's runAsUser:runAsGroup {u}:{g} (numeric, so \
                 runAsNonRoot can be verified)",
                ins.args.trim()
            ),
        ),
        _ => {}
    }

    let exposed: BTreeSet<String> = last
        .instructions
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| {
            if p.contains('/') {
                p.to_lowercase()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    if exposed != expected.ports {
        report(
            last_line("EXPOSE").map_or(last.line, |i| i.line),
            format!(
                "EXPOSE {:?} differs from the DaemonSet's container ports {:?}",
                exposed, expected.ports
            ),
        );
    }

    match last_line("ENTRYPOINT") {
        None => report(last.line, "final stage has no ENTRYPOINT".into()),
        Some(ins) => match serde_json::from_str::<Vec<String>>(ins.args.trim()) {
            Err(_) => report(
                ins.line,
                "ENTRYPOINT must be in exec form (a JSON array)".into(),
            ),
            Ok(entry) => {
                let program = entry.first().cloned().unwrap_or_default();
                if !copied_files(last).contains(&program) {
                    report(
                        ins.line,
                        format!("ENTRYPOINT {program:?} is not a file the final stage copies in"),
                    );
                }
                if let Some(command) = &expected.command
                    && command != &entry
                {
                    report(
                        ins.line,
                        format!(
                            "ENTRYPOINT {entry:?} differs from the DaemonSet's command {command:?}"
                        ),
                    );
                }
            }
        },
    }
    problems
}

/// Logical lines (continuations joined, comments and blank lines dropped) grouped by stage.
fn parse(text: &str) -> Result<Vec<Stage>, (usize, String)> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_none()) {
            continue;
        }
        let (start, mut logical) = pending.take().unwrap_or((line_no, String::new()));
        if let Some(body) = trimmed.strip_suffix('\\') {
            logical.push_str(body);
            logical.push(' ');
            pending = Some((start, logical));
            continue;
        }
        logical.push_str(trimmed);
        let (keyword, args) = logical
            .split_once(char::is_whitespace)
            .unwrap_or((logical.as_str(), ""));
        let instruction = Instruction {
            line: start,
            keyword: keyword.to_uppercase(),
            args: args.trim().to_string(),
        };
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction
                .args
                .split_whitespace()
                .skip_while(|w| w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_] => None,
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => return Err((start, format!("cannot read FROM {}", instruction.args))),
            };
            stages.push(Stage {
                line: start,
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(instruction);
        } else if instruction.keyword != "ARG" {
            return Err((
                start,
                format!("{} before the first FROM", instruction.keyword),
            ));
        }
    }
    if let Some((line, _)) = pending {
        return Err((line, "continuation line at end of file".into()));
    }
    Ok(stages)
}

/// `--flag`s and paths (sources…, destination) of a COPY/ADD, shell or JSON form.
fn copy_args(args: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let mut flags = Vec::new();
    let mut rest = args.trim();
    while rest.starts_with("--") {
        let (flag, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        flags.push(flag.to_string());
        rest = tail.trim_start();
    }
    let paths: Vec<String> = if rest.starts_with('[') {
        serde_json::from_str(rest).map_err(|e| format!("COPY/ADD JSON form: {e}"))?
    } else {
        rest.split_whitespace().map(str::to_string).collect()
    };
    if paths.len() < 2 {
        return Err(format!("COPY/ADD {args}: needs a source and a destination"));
    }
    Ok((flags, paths))
}

/// Why a build-context source is not usable, if it is not.
fn check_context_source(context: &Path, source: &str) -> Option<String> {
    if source.contains(['*', '?', '[']) {
        return Some("globs are not checked; name the paths".into());
    }
    let relative = source.trim_start_matches("./").trim_start_matches('/');
    if relative.split('/').any(|c| c == "..") {
        return Some("outside the build context".into());
    }
    let path = context.join(relative);
    if !path.exists() {
        return Some(format!(
            "does not exist in the build context ({})",
            path.display()
        ));
    }
    if path.is_dir() && !ignores_target(context) {
        return Some(
            "copies a directory, but neither .containerignore nor .dockerignore in the build \
             context excludes target/"
                .into(),
        );
    }
    None
}

/// The build context's ignore file (Podman reads .containerignore first) lists `target`.
fn ignores_target(context: &Path) -> bool {
    let file = [".containerignore", ".dockerignore"]
        .iter()
        .map(|f| context.join(f))
        .find(|f| f.exists());
    file.and_then(|f| std::fs::read_to_string(f).ok())
        .is_some_and(|text| {
            text.lines().map(str::trim).any(|l| {
                matches!(
                    l,
                    "target" | "target/" | "/target" | "/target/" | "**/target" | "**/target/"
                )
            })
        })
}

/// Files a stage copies in: the destination when it is a file path, or the destination
/// directory joined with each source's file name.
fn copied_files(stage: &Stage) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for ins in stage
        .instructions
        .iter()
        .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
    {
        let Ok((_, paths)) = copy_args(&ins.args) else {
            continue;
        };
        let (dest, sources) = paths.split_last().unwrap_or((&paths[0], &[]));
        if dest.ends_with('/') {
            for s in sources {
                let name = s.rsplit('/').next().unwrap_or(s);
                files.insert(format!("{dest}{name}"));
            }
        } else {
            files.insert(dest.clone());
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# comment
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \\
 && apt-get install -y clang
WORKDIR /src
COPY . .
RUN cargo build --release -p peerd --bin peerd
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/peerd /usr/local/bin/peerd
USER 65532:65532
EXPOSE 15012/tcp 15020 15021/tcp
ENTRYPOINT [\"/usr/local/bin/peerd\"]
";

    fn expected() -> Expected {
        Expected {
            user: Some((65532, 65532)),
            ports: ["15012/tcp", "15020/tcp", "15021/tcp"]
                .map(String::from)
                .into(),
            command: None,
        }
    }

    fn problems(text: &str) -> Vec<String> {
        check(text, "Containerfile", &crate::root(), &expected())
    }

    #[test]
    fn a_consistent_file_passes() {
        assert_eq!(problems(GOOD), Vec::<String>::new());
    }

    #[test]
    fn the_repository_containerfile_passes() {
        let root = crate::root();
        let text = std::fs::read_to_string(root.join("deploy/Containerfile"))
            .unwrap_or_else(|e| panic!("reading deploy/Containerfile: {e}"));
        assert_eq!(
            check(&text, "deploy/Containerfile", &root, &expected()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_wrong_port_is_reported() {
        let text = GOOD.replace("15020 ", "15041 ");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("EXPOSE") && p[0].contains("15041/tcp"),
            "{p:?}"
        );
    }

    #[test]
    fn a_wrong_user_is_reported() {
        for user in ["1337:1337", "nonroot", "65532"] {
            let p = problems(&GOOD.replace("USER 65532:65532", &format!("USER {user}")));
            assert_eq!(p.len(), 1, "{user}: {p:?}");
            assert!(p[0].contains(&format!("USER {user} differs")), "{p:?}");
        }
        let p = problems(&GOOD.replace("USER 65532:65532\n", ""));
        assert!(p.len() == 1 && p[0].contains("no USER"), "{p:?}");
    }

    #[test]
    fn a_missing_copy_source_is_reported() {
        let text = GOOD.replace("COPY . .", "COPY . .\nCOPY rust-toolchain.toml peerd/ ./");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains(":7: COPY rust-toolchain.toml: does not exist"),
            "{p:?}"
        );
    }

    #[test]
    fn an_unknown_stage_and_an_entrypoint_not_copied_are_reported() {
        let text = GOOD
            .replace("--from=build", "--from=builder")
            .replace("[\"/usr/local/bin/peerd\"]", "[\"/peerd\"]");
        let p = problems(&text);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("--from=builder: no earlier stage"), "{p:?}");
        assert!(
            p[1].contains("ENTRYPOINT \"/peerd\" is not a file"),
            "{p:?}"
        );
    }

    #[test]
    fn a_command_that_bypasses_the_entrypoint_is_reported() {
        let mut e = expected();
        e.command = Some(vec!["/bin/peerd".into()]);
        let p = check(GOOD, "Containerfile", &crate::root(), &e);
        assert!(
            p.len() == 1 && p[0].contains("differs from the DaemonSet's command"),
            "{p:?}"
        );
    }

    #[test]
    fn expectations_are_read_from_the_rendered_daemonset() {
        let ds = |security: Value| {
            serde_json::json!({"kind": "DaemonSet", "spec": {"template": {"spec": {"containers": [
                {"name": "peerd", "ports": [{"containerPort": 15012, "protocol": "TCP"}],
                 "securityContext": security}
            ]}}}})
        };
        let e = Expected::from_chart(
            &[ds(serde_json::json!({"runAsUser": 0}))],
            &[ds(
                serde_json::json!({"runAsUser": 65532, "runAsGroup": 65532}),
            )],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.user, Some((65532, 65532)));
        assert_eq!(e.ports, BTreeSet::from(["15012/tcp".to_string()]));
        assert!(e.command.is_none());
        assert!(Expected::from_chart(&[], &[]).is_err());
    }
}
