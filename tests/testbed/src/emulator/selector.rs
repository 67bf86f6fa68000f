//! Label and field selectors as Kubernetes parses them.
//!
//! Owns parsing `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and
//! `fieldSelector` (`metadata.name`, `metadata.namespace` with `=`, `==`, `!=`) and
//! matching objects against them. It must never accept a selector it cannot evaluate
//! exactly: unknown operators and fields are errors, never "match everything".

use serde_json::Value;

use super::meta;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_label_term(term)?);
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = meta::labels(obj);
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelRequirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside `( … )`.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in selector {text:?}"))?;
            }
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in selector {text:?}"));
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        validate_key(key)?;
        return Ok(LabelRequirement::NotExists(key.to_string()));
    }
    if let Some((key, value)) = term.split_once("!=") {
        let (key, value) = (key.trim(), value.trim());
        validate_key(key)?;
        validate_value(value)?;
        return Ok(LabelRequirement::NotEquals(key.into(), value.into()));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        let (key, value) = (key.trim(), value.trim());
        validate_key(key)?;
        validate_value(value)?;
        return Ok(LabelRequirement::Equals(key.into(), value.into()));
    }
    if let Some(open) = term.find('(') {
        let head = term[..open].trim();
        let list = term[open..].trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("malformed set in selector term {term:?}"))?;
        let mut words = head.split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "expected `key in (…)` or `key notin (…)`, got {term:?}"
            ));
        };
        validate_key(key)?;
        let values: Vec<String> = inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        for value in &values {
            validate_value(value)?;
        }
        if values.is_empty() {
            return Err(format!("empty value set in selector term {term:?}"));
        }
        return match op {
            "in" => Ok(LabelRequirement::In(key.into(), values)),
            "notin" => Ok(LabelRequirement::NotIn(key.into(), values)),
            other => Err(format!("unknown set operator {other:?} in {term:?}")),
        };
    }
    if term.split_whitespace().count() != 1 {
        return Err(format!("unable to parse selector term {term:?}"));
    }
    validate_key(term)?;
    Ok(LabelRequirement::Exists(term.to_string()))
}

/// A label key: optional DNS prefix and `/`, then a name of up to 63 characters.
fn validate_key(key: &str) -> Result<(), String> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 {
                return Err(format!("invalid label key prefix in {key:?}"));
            }
            name
        }
        None => key,
    };
    if name.is_empty() || name.len() > 63 || !valid_label_chars(name) {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.len() > 63 || (!value.is_empty() && !valid_label_chars(value)) {
        return Err(format!("invalid label value {value:?}"));
    }
    Ok(())
}

fn valid_label_chars(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    bytes
        .iter()
        .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldRequirement {
    Equals(FieldPath, String),
    NotEquals(FieldPath, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldPath {
    Name,
    Namespace,
}

/// A parsed `fieldSelector` over `metadata.name` / `metadata.namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, negate) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, false)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            let path = match field.trim() {
                "metadata.name" => FieldPath::Name,
                "metadata.namespace" => FieldPath::Namespace,
                other => {
                    return Err(format!("field label not supported: {other}"));
                }
            };
            let value = value.trim().to_string();
            requirements.push(if negate {
                FieldRequirement::NotEquals(path, value)
            } else {
                FieldRequirement::Equals(path, value)
            });
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let get = |path: &FieldPath| match path {
            FieldPath::Name => meta::name(obj),
            FieldPath::Namespace => meta::namespace(obj),
        };
        self.requirements.iter().all(|req| match req {
            FieldRequirement::Equals(p, v) => get(p) == v,
            FieldRequirement::NotEquals(p, v) => get(p) != v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns1", "labels": labels}})
    }

    #[test]
    fn equality_and_set_operators() {
        let o = obj(json!({"app": "web", "tier": "front", "solo.io/source-cluster": "c2"}));
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("tier in (front, back)", true),
            ("tier in (back)", false),
            ("tier notin (back)", true),
            ("tier notin (front,back)", false),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("solo.io/source-cluster=c2,app=web", true),
            ("solo.io/source-cluster=c2,app=db", false),
            ("tier in (front,back),!missing,app", true),
        ];
        for (text, want) in cases {
            let sel = LabelSelector::parse(text).unwrap();
            assert_eq!(sel.matches(&o), want, "selector {text:?}");
        }
    }

    #[test]
    fn bad_label_selectors_are_errors() {
        for bad in [
            "tier in (",
            "tier in front",
            "a b",
            "tier within (x)",
            "-bad=x",
            "a=b c",
            "k in ()",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn field_selectors_on_name_and_namespace() {
        let o = obj(json!({}));
        assert!(FieldSelector::parse("metadata.name=a").unwrap().matches(&o));
        assert!(
            !FieldSelector::parse("metadata.name!=a")
                .unwrap()
                .matches(&o)
        );
        assert!(
            FieldSelector::parse("metadata.namespace==ns1,metadata.name=a")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("metadata.namespace=ns2")
                .unwrap()
                .matches(&o)
        );
        let err = FieldSelector::parse("spec.nodeName=x").unwrap_err();
        assert!(err.contains("not supported"), "{err}");
    }
}
