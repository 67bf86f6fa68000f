//! A small renderer for the subset of Go templates (Helm flavour) the peerd chart uses, so
//! the chart can be rendered and compared offline where no `helm` binary exists.
//!
//! Supported: text with `{{ }}` actions and `{{-`/`-}}` whitespace trimming, comments
//! `{{/* */}}`, `define`, `if`/`else`, `with`/`else`, `range` (lists and maps), pipelines
//! `a | f x`, fields `.Values.a.b` / `$.Values.a.b` / `.`, string literals (`"…"` and raw
//! `` `…` ``), numbers, and the functions `include`, `toYaml`, `toJson`, `nindent`,
//! `indent`, `quote`, `int`, `default`, `required`, `not`, `eq`, and `.Files.Get`.
//! Anything else is an error naming the template and the action, never silently ignored.
//!
//! Deliberately stricter than Helm: a field that does not exist (e.g. a `.Values` key
//! missing from values.yaml) is an error instead of an empty string.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;

/// One lexed piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Text(String),
    Action(String),
}

/// The parsed template tree.
#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Output(Pipeline),
    If(Pipeline, Vec<Node>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
    Range(Pipeline, Vec<Node>),
}

type Pipeline = Vec<Command>;
type Command = Vec<Arg>;

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    /// `.a.b` (from dot) or `$.a.b` (from the root); empty path = `.` / `$`.
    Field {
        from_root: bool,
        path: Vec<String>,
    },
    Str(String),
    Num(f64),
    Bool(bool),
    Func(String),
}

/// Splits `src` into text and actions, applying the trim markers. Errors on an unclosed
/// `{{` or a stray `}}` in text.
fn lex(name: &str, src: &str) -> anyhow::Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    let mut line = 1usize;
    while !rest.is_empty() {
        let (text, after) = match rest.find("{{") {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        let mut text = text.to_string();
        if text.contains("}}") {
            bail!("{name}:{line}: `}}}}` without a matching `{{{{`");
        }
        line += text.matches('\n').count();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let Some(after) = after else {
            tokens.push(Token::Text(text));
            break;
        };
        let trim_left = after.starts_with('-') && after[1..].starts_with(char::is_whitespace);
        if trim_left {
            text = text.trim_end().to_string();
        }
        tokens.push(Token::Text(text));
        let body_start = if trim_left { 1 } else { 0 };
        let end = find_action_end(&after[body_start..])
            .with_context(|| format!("{name}:{line}: `{{{{` is never closed"))?;
        let body = &after[body_start..body_start + end];
        line += body.matches('\n').count();
        let (body, trim_right) = match body.strip_suffix('-') {
            Some(b) if b.ends_with(char::is_whitespace) => (b, true),
            _ => (body, false),
        };
        let body = body.trim();
        if !(body.starts_with("/*") && body.ends_with("*/")) {
            tokens.push(Token::Action(body.to_string()));
        }
        trim_next = trim_right;
        rest = &after[body_start + end + 2..];
    }
    Ok(tokens)
}

/// Offset of the `}}` closing an action, skipping string literals.
fn find_action_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Splits an action into words, keeping string literals whole.
fn words(action: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = action.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' => {
                cur.push(c);
                loop {
                    let Some(n) = chars.next() else {
                        bail!("unterminated string in `{action}`");
                    };
                    cur.push(n);
                    if c == '"' && n == '\\' {
                        if let Some(e) = chars.next() {
                            cur.push(e);
                        }
                        continue;
                    }
                    if n == c {
                        break;
                    }
                }
            }
            '|' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push("|".into());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            '(' | ')' => bail!("parentheses are outside the supported subset: `{action}`"),
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn parse_arg(word: &str) -> anyhow::Result<Arg> {
    if let Some(s) = word.strip_prefix('"') {
        let inner = s
            .strip_suffix('"')
            .with_context(|| format!("bad string {word}"))?;
        return Ok(Arg::Str(unescape_go(inner)?));
    }
    if let Some(s) = word.strip_prefix('`') {
        let inner = s
            .strip_suffix('`')
            .with_context(|| format!("bad raw string {word}"))?;
        return Ok(Arg::Str(inner.to_string()));
    }
    if word == "true" || word == "false" {
        return Ok(Arg::Bool(word == "true"));
    }
    if word.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        return word
            .parse()
            .map(Arg::Num)
            .with_context(|| format!("bad number {word}"));
    }
    let (from_root, rest) = if let Some(r) = word.strip_prefix('$') {
        (true, r)
    } else if word.starts_with('.') {
        (false, word)
    } else {
        if word.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(Arg::Func(word.to_string()));
        }
        bail!("unsupported term `{word}` (variables are outside the subset)");
    };
    let path: Vec<String> = rest
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if path
        .iter()
        .any(|p| !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        bail!("bad field `{word}`");
    }
    Ok(Arg::Field { from_root, path })
}

fn unescape_go(s: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            other => bail!("unsupported escape \\{other:?}"),
        }
    }
    Ok(out)
}

fn parse_pipeline(ws: &[String]) -> anyhow::Result<Pipeline> {
    let mut pipeline = Vec::new();
    for part in ws.split(|w| w == "|") {
        if part.is_empty() {
            bail!("empty command in pipeline");
        }
        pipeline.push(
            part.iter()
                .map(|w| parse_arg(w))
                .collect::<anyhow::Result<_>>()?,
        );
    }
    Ok(pipeline)
}

/// A set of templates sharing named `define`s, plus the files `.Files.Get` may read.
pub struct Templates {
    bodies: BTreeMap<String, Vec<Node>>,
    defines: BTreeMap<String, Vec<Node>>,
    files_dir: PathBuf,
}

enum Closer {
    Eof,
    End,
    Else,
}

impl Templates {
    pub fn new(files_dir: PathBuf) -> Templates {
        Templates {
            bodies: BTreeMap::new(),
            defines: BTreeMap::new(),
            files_dir,
        }
    }

    /// Parses one template file; its `define`s become available to every template.
    pub fn add(&mut self, name: &str, src: &str) -> anyhow::Result<()> {
        let tokens = lex(name, src)?;
        let mut pos = 0;
        let (nodes, end) = self
            .parse_block(&tokens, &mut pos)
            .with_context(|| format!("parsing {name}"))?;
        match end {
            Closer::Eof => {}
            Closer::End => bail!("{name}: `end` without an opening action"),
            Closer::Else => bail!("{name}: `else` without an opening action"),
        }
        self.bodies.insert(name.to_string(), nodes);
        Ok(())
    }

    fn parse_block(
        &mut self,
        tokens: &[Token],
        pos: &mut usize,
    ) -> anyhow::Result<(Vec<Node>, Closer)> {
        let mut nodes = Vec::new();
        while let Some(tok) = tokens.get(*pos) {
            *pos += 1;
            let action = match tok {
                Token::Text(t) => {
                    if !t.is_empty() {
                        nodes.push(Node::Text(t.clone()));
                    }
                    continue;
                }
                Token::Action(a) => a,
            };
            let ws = words(action)?;
            let keyword = ws.first().map(String::as_str).unwrap_or("");
            match keyword {
                "end" => return Ok((nodes, Closer::End)),
                "else" => {
                    if ws.len() > 1 {
                        bail!("`{action}`: `else if`/`else with` are outside the subset");
                    }
                    return Ok((nodes, Closer::Else));
                }
                "define" => {
                    let [_, n] = ws.as_slice() else {
                        bail!("`{action}`: define takes one name");
                    };
                    let Arg::Str(n) = parse_arg(n)? else {
                        bail!("`{action}`: define name must be a string");
                    };
                    let (body, end) = self.parse_block(tokens, pos)?;
                    if !matches!(end, Closer::End) {
                        bail!("define {n:?} is not closed by `end`");
                    }
                    self.defines.insert(n, body);
                }
                "if" | "with" | "range" => {
                    let pipe = parse_pipeline(&ws[1..])?;
                    let (body, end) = self.parse_block(tokens, pos)?;
                    let (other, end) = match end {
                        Closer::Else if keyword != "range" => self.parse_block(tokens, pos)?,
                        Closer::Else => bail!("`range … else` is outside the subset"),
                        e => (Vec::new(), e),
                    };
                    if !matches!(end, Closer::End) {
                        bail!("`{action}` is not closed by `end`");
                    }
                    nodes.push(match keyword {
                        "if" => Node::If(pipe, body, other),
                        "with" => Node::With(pipe, body, other),
                        _ => Node::Range(pipe, body),
                    });
                }
                _ => nodes.push(Node::Output(parse_pipeline(&ws)?)),
            }
        }
        Ok((nodes, Closer::Eof))
    }

    /// Names of the templates that produce output (not `_*.tpl` helpers).
    pub fn names(&self) -> Vec<String> {
        self.bodies
            .keys()
            .filter(|n| !n.rsplit('/').next().unwrap_or(n).starts_with('_'))
            .cloned()
            .collect()
    }

    /// Renders template `name` with `root` (the `{Values, Release, Chart}` object) as dot.
    pub fn render(&self, name: &str, root: &Value) -> anyhow::Result<String> {
        let body = self
            .bodies
            .get(name)
            .with_context(|| format!("no template {name}"))?;
        let mut out = String::new();
        self.exec(body, root, root, &mut out)
            .with_context(|| format!("rendering {name}"))?;
        Ok(out)
    }

    fn exec(
        &self,
        nodes: &[Node],
        root: &Value,
        dot: &Value,
        out: &mut String,
    ) -> anyhow::Result<()> {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Output(p) => {
                    let v = self.eval(p, root, dot)?;
                    out.push_str(&print(&v)?);
                }
                Node::If(p, then, other) => {
                    let v = self.eval(p, root, dot)?;
                    self.exec(if truthy(&v) { then } else { other }, root, dot, out)?;
                }
                Node::With(p, body, other) => {
                    let v = self.eval(p, root, dot)?;
                    if truthy(&v) {
                        self.exec(body, root, &v, out)?;
                    } else {
                        self.exec(other, root, dot, out)?;
                    }
                }
                Node::Range(p, body) => match self.eval(p, root, dot)? {
                    Value::Array(items) => {
                        for item in &items {
                            self.exec(body, root, item, out)?;
                        }
                    }
                    Value::Object(map) => {
                        for item in map.values() {
                            self.exec(body, root, item, out)?;
                        }
                    }
                    Value::Null => {}
                    other => bail!("range over {other}"),
                },
            }
        }
        Ok(())
    }

    fn eval(&self, pipe: &Pipeline, root: &Value, dot: &Value) -> anyhow::Result<Value> {
        let mut piped: Option<Value> = None;
        for cmd in pipe {
            piped = Some(self.eval_command(cmd, root, dot, piped.take())?);
        }
        piped.context("empty pipeline")
    }

    fn eval_command(
        &self,
        cmd: &Command,
        root: &Value,
        dot: &Value,
        piped: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (head, rest) = cmd.split_first().context("empty command")?;
        // `.Files.Get "path"`
        if let Arg::Field { path, .. } = head
            && path.len() == 2
            && path[0] == "Files"
            && path[1] == "Get"
        {
            let [Arg::Str(file)] = rest else {
                bail!(".Files.Get takes one string");
            };
            let p = self.files_dir.join(file);
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            return Ok(Value::String(text));
        }
        let Arg::Func(func) = head else {
            if !rest.is_empty() || piped.is_some() {
                bail!("{head:?} is not a function but has arguments");
            }
            return self.term(head, root, dot);
        };
        let mut args: Vec<Value> = rest
            .iter()
            .map(|a| self.term(a, root, dot))
            .collect::<anyhow::Result<_>>()?;
        args.extend(piped);
        call(self, func, args, root)
    }

    fn term(&self, arg: &Arg, root: &Value, dot: &Value) -> anyhow::Result<Value> {
        Ok(match arg {
            Arg::Str(s) => Value::String(s.clone()),
            Arg::Num(n) => serde_json::Number::from_f64(*n)
                .map(Value::Number)
                .context("bad number")?,
            Arg::Bool(b) => Value::Bool(*b),
            Arg::Func(f) => call(self, f, Vec::new(), root)?,
            Arg::Field { from_root, path } => {
                let mut v = if *from_root { root } else { dot };
                for (i, key) in path.iter().enumerate() {
                    v = v.get(key).with_context(|| {
                        format!(
                            "{}.{} is not defined (missing from values.yaml?)",
                            if *from_root { "$" } else { "" },
                            path[..=i].join(".")
                        )
                    })?;
                }
                v.clone()
            }
        })
    }
}

fn call(t: &Templates, func: &str, args: Vec<Value>, root: &Value) -> anyhow::Result<Value> {
    let arity = |n: usize| -> anyhow::Result<()> {
        if args.len() != n {
            bail!("{func} takes {n} argument(s), got {}", args.len());
        }
        Ok(())
    };
    Ok(match func {
        "include" => {
            arity(2)?;
            let Value::String(name) = &args[0] else {
                bail!("include: template name must be a string");
            };
            let body = t
                .defines
                .get(name)
                .with_context(|| format!("include: no define {name:?}"))?;
            let mut out = String::new();
            t.exec(body, root, &args[1], &mut out)?;
            Value::String(out)
        }
        "toYaml" => {
            arity(1)?;
            let s = yaml_serde::to_string(&integral_numbers(&args[0]))?;
            Value::String(s.trim_end_matches('\n').to_string())
        }
        "toJson" => {
            arity(1)?;
            Value::String(serde_json::to_string(&integral_numbers(&args[0]))?)
        }
        "nindent" | "indent" => {
            arity(2)?;
            let n = args[0].as_f64().context("indent width must be a number")? as usize;
            let pad = " ".repeat(n);
            let s = print(&args[1])?;
            let body = format!("{pad}{}", s.replace('\n', &format!("\n{pad}")));
            Value::String(if func == "nindent" {
                format!("\n{body}")
            } else {
                body
            })
        }
        "quote" => {
            arity(1)?;
            Value::String(go_quote(&print(&args[0])?))
        }
        "int" => {
            arity(1)?;
            let n = match &args[0] {
                Value::Number(n) => n.as_f64().unwrap_or(0.0),
                Value::String(s) => s.parse().unwrap_or(0.0),
                Value::Bool(b) => f64::from(u8::from(*b)),
                _ => 0.0,
            };
            Value::from(n as i64)
        }
        "default" => {
            arity(2)?;
            if truthy(&args[1]) {
                args[1].clone()
            } else {
                args[0].clone()
            }
        }
        "required" => {
            arity(2)?;
            if matches!(&args[1], Value::Null) || args[1] == Value::String(String::new()) {
                bail!("required: {}", print(&args[0])?);
            }
            args[1].clone()
        }
        "not" => {
            arity(1)?;
            Value::Bool(!truthy(&args[0]))
        }
        "eq" => {
            arity(2)?;
            Value::Bool(args[0] == args[1])
        }
        other => bail!("function {other:?} is outside the supported subset"),
    })
}

/// Go template truthiness.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// How an action prints a value (Helm prints nil as empty).
fn print(v: &Value) -> anyhow::Result<String> {
    Ok(match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        // Helm's values are float64 (printed with Go's %v: exponent form from 1e6 up);
        // integers only come from `int`.
        Value::Number(n) => match (n.is_f64(), n.as_f64()) {
            (true, Some(f)) if f.fract() == 0.0 && f.abs() < 1e6 => format!("{}", f as i64),
            (true, Some(f)) if f.fract() == 0.0 => {
                bail!("{f} prints in exponent form in Helm (1.6e+07 style): pipe it through `int`")
            }
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => bail!("printing a map or list ({other}); use toYaml or toJson"),
    })
}

/// Helm's view of YAML values: every number is a float64.
pub fn helm_numbers(v: &Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(a) => Value::Array(a.iter().map(helm_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), helm_numbers(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// JSON's view (what toYaml/toJson print and the API server sees): integral floats are
/// integers.
pub fn integral_numbers(v: &Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9e15 => Value::from(f as i64),
            _ => Value::Number(n.clone()),
        },
        Value::Array(a) => Value::Array(a.iter().map(integral_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), integral_numbers(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Go's `%q` for the characters our values use.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, values: Value) -> anyhow::Result<String> {
        let mut t = Templates::new(PathBuf::from("."));
        t.add(
            "_helpers.tpl",
            r#"{{- define "x.l" -}}a: {{ .Release.Name }}{{- end }}"#,
        )?;
        t.add("t.yaml", src)?;
        t.render(
            "t.yaml",
            &json!({"Values": helm_numbers(&values), "Release": {"Name": "r", "Namespace": "ns"}}),
        )
    }

    #[test]
    fn trims_and_indents_like_helm() {
        let out = render(
            "m:\n  labels:\n    {{- include \"x.l\" . | nindent 4 }}\n  {{- with .Values.ann }}\n  ann:\n    {{- toYaml . | nindent 4 }}\n  {{- end }}\n",
            json!({"ann": {"k": "v"}}),
        )
        .unwrap();
        assert_eq!(out, "m:\n  labels:\n    a: r\n  ann:\n    k: v\n");
    }

    #[test]
    fn missing_values_key_is_an_error() {
        let err = render("x: {{ .Values.a.b }}", json!({"a": {}})).unwrap_err();
        assert!(
            format!("{err:#}").contains("Values.a.b is not defined"),
            "{err:#}"
        );
    }

    #[test]
    fn unbalanced_actions_are_errors() {
        assert!(render("x: {{ .Values.a ", json!({"a": 1})).is_err());
        assert!(render("x: }}", json!({})).is_err());
        assert!(render("{{ if .Values.a }}x", json!({"a": 1})).is_err());
        assert!(render("x{{ end }}", json!({})).is_err());
    }

    #[test]
    fn raw_strings_pass_prometheus_templates_through_and_quote_escapes() {
        let out = render(r#"d: {{ `say "{{ $labels.x }}"` | quote }}"#, json!({})).unwrap();
        assert_eq!(out, r#"d: "say \"{{ $labels.x }}\"""#);
    }

    #[test]
    fn if_else_and_int() {
        let src = "{{ if .Values.on }}on{{ else }}off{{ end }} {{ int .Values.n }}";
        assert_eq!(
            render(src, json!({"on": false, "n": 16777216})).unwrap(),
            "off 16777216"
        );
        assert_eq!(render(src, json!({"on": true, "n": 1})).unwrap(), "on 1");
    }

    #[test]
    fn large_numbers_need_int_like_in_helm() {
        let err = render("{{ .Values.n }}", json!({"n": 16777216})).unwrap_err();
        assert!(format!("{err:#}").contains("exponent form"), "{err:#}");
        assert_eq!(
            render("{{ toJson .Values.p }}", json!({"p": [15008]})).unwrap(),
            "[15008]"
        );
    }

    #[test]
    fn unsupported_functions_are_errors() {
        let err = render("{{ printf \"%s\" .Values.a }}", json!({"a": "x"})).unwrap_err();
        assert!(format!("{err:#}").contains("outside the supported subset"));
    }
}
