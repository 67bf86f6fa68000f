//! `metadata.managedFields`: which field manager owns which fields.
//!
//! Owns field sets (leaf paths through nested maps; lists and scalars are atomic leaves),
//! their `FieldsV1` encoding, the split of an object into the main and `status` scopes,
//! and ownership changes made by non-apply writes (an update takes the fields it changed
//! from everyone else). It must never decide apply conflicts: `apply.rs` does.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::meta;

pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The main resource; `status_separate` when the type has a `/status` subresource
    /// (then `.status` is outside this scope).
    Main { status_separate: bool },
    /// The `/status` subresource: only `.status`.
    Status,
}

impl Scope {
    pub fn subresource(self) -> &'static str {
        match self {
            Scope::Main { .. } => "",
            Scope::Status => "status",
        }
    }
}

/// Metadata fields that field managers own; everything else in metadata is the server's
/// or identity (name, namespace).
const MANAGED_METADATA: &[&str] = &["labels", "annotations", "ownerReferences", "finalizers"];

/// The part of `obj` that writes in `scope` may own, keeping the object's shape.
pub fn scoped(obj: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    let Value::Object(map) = obj else {
        return Value::Object(out);
    };
    for (key, value) in map {
        let keep = match (scope, key.as_str()) {
            (_, "apiVersion" | "kind") => false,
            (Scope::Status, field) => field == "status",
            (Scope::Main { .. }, "metadata") => {
                let tracked: Map<String, Value> = value
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(k, _)| MANAGED_METADATA.contains(&k.as_str()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                if !tracked.is_empty() {
                    out.insert(key.clone(), Value::Object(tracked));
                }
                false
            }
            (
                Scope::Main {
                    status_separate: true,
                },
                "status",
            ) => false,
            (Scope::Main { .. }, _) => true,
        };
        if keep {
            out.insert(key.clone(), value.clone());
        }
    }
    Value::Object(out)
}

/// Leaf paths of a value: keys through maps; anything but a map is a leaf. Empty maps
/// are structure, not values: nobody owns them, so they never conflict.
pub fn field_set(value: &Value) -> FieldSet {
    fn walk(value: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    prefix.push(key.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            _ if !prefix.is_empty() => {
                out.insert(prefix.clone());
            }
            _ => {}
        }
    }
    let mut out = FieldSet::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

pub fn get_path<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key.as_str()))
}

/// Removes the field at `path`, then any maps that became empty because of it (but never
/// a top-level field such as `spec` or `metadata`).
pub fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cursor = &mut *value;
    for key in parents {
        match cursor.get_mut(key.as_str()) {
            Some(next) => cursor = next,
            None => return,
        }
    }
    if let Value::Object(map) = cursor {
        map.remove(last);
    }
    if parents.len() > 1
        && get_path(value, parents).is_some_and(|v| v.as_object().is_some_and(Map::is_empty))
    {
        remove_path(value, parents);
    }
}

/// One path is a prefix of (or equal to) the other: ownership of one touches the other.
pub fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// `.spec.ports`, as conflict messages write field paths.
pub fn render_path(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedEntry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

impl ManagedEntry {
    pub fn is(&self, manager: &str, operation: Operation, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation.as_str(),
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": encode_fields(&self.fields),
        });
        if !self.subresource.is_empty()
            && let Value::Object(map) = &mut entry
        {
            map.insert(
                "subresource".into(),
                Value::String(self.subresource.clone()),
            );
        }
        entry
    }

    fn from_json(entry: &Value) -> Option<Self> {
        let operation = match entry.get("operation")?.as_str()? {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            _ => return None,
        };
        let text = |key: &str| {
            entry
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Some(Self {
            manager: text("manager"),
            operation,
            api_version: text("apiVersion"),
            time: text("time"),
            subresource: text("subresource"),
            fields: entry.get("fieldsV1").map(decode_fields).unwrap_or_default(),
        })
    }
}

/// `{"f:spec":{"f:x":{}}}` for the path `spec.x`.
pub fn encode_fields(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for key in path {
            let child = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            node = match child {
                Value::Object(map) => map,
                _ => unreachable!("the child was just made an object"),
            };
        }
    }
    Value::Object(root)
}

/// Inverse of [`encode_fields`]; `.` marks and keyed list items (`k:`/`v:`/`i:`) make
/// their parent an atomic leaf.
pub fn decode_fields(value: &Value) -> FieldSet {
    fn walk(node: &Map<String, Value>, prefix: &mut FieldPath, out: &mut FieldSet) {
        if node.is_empty() {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            return;
        }
        for (key, child) in node {
            match key.strip_prefix("f:") {
                Some(name) => {
                    prefix.push(name.to_string());
                    match child {
                        Value::Object(map) => walk(map, prefix, out),
                        _ => {
                            out.insert(prefix.clone());
                        }
                    }
                    prefix.pop();
                }
                None if !prefix.is_empty() => {
                    out.insert(prefix.clone());
                }
                None => {}
            }
        }
    }
    let mut out = FieldSet::new();
    if let Value::Object(map) = value {
        walk(map, &mut Vec::new(), &mut out);
    }
    out
}

/// The entries stored on `obj` (malformed entries are dropped).
pub fn read_entries(obj: &Value) -> Vec<ManagedEntry> {
    meta::metadata(obj)
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
        .map(|entries| entries.iter().filter_map(ManagedEntry::from_json).collect())
        .unwrap_or_default()
}

/// Stores `entries` on `obj`, dropping entries that own nothing.
pub fn write_entries(obj: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(ManagedEntry::to_json)
        .collect();
    let metadata = meta::metadata_mut(obj);
    if list.is_empty() {
        metadata.remove("managedFields");
    } else {
        metadata.insert("managedFields".into(), Value::Array(list));
    }
}

/// Records a non-apply write (create, update, patch) by `manager`: it takes ownership of
/// every field it changed; fields it removed are no longer owned by anyone.
/// `new`'s own `managedFields` (from the client) are replaced.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    scope: Scope,
    api_version: &str,
    now: &str,
) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let empty = Value::Object(Map::new());
    let old_scoped = scoped(old.unwrap_or(&empty), scope);
    let new_scoped = scoped(new, scope);
    let old_leaves = field_set(&old_scoped);
    let new_leaves = field_set(&new_scoped);
    let changed: FieldSet = new_leaves
        .iter()
        .filter(|p| get_path(&old_scoped, p) != get_path(&new_scoped, p))
        .cloned()
        .collect();
    let removed: FieldSet = old_leaves.difference(&new_leaves).cloned().collect();
    let touched = |f: &FieldPath| changed.iter().chain(removed.iter()).any(|c| overlaps(f, c));
    for entry in entries.iter_mut() {
        entry.fields.retain(|f| !touched(f));
    }
    if !changed.is_empty() {
        let subresource = scope.subresource();
        let index = match entries
            .iter()
            .position(|e| e.is(manager, Operation::Update, subresource))
        {
            Some(index) => index,
            None => {
                entries.push(ManagedEntry {
                    manager: manager.to_string(),
                    operation: Operation::Update,
                    api_version: String::new(),
                    time: String::new(),
                    subresource: subresource.to_string(),
                    fields: FieldSet::new(),
                });
                entries.len() - 1
            }
        };
        let entry = &mut entries[index];
        entry.fields.extend(changed);
        entry.api_version = api_version.to_string();
        entry.time = now.to_string();
    }
    write_entries(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> FieldPath {
        p.split('.').map(String::from).collect()
    }

    #[test]
    fn fields_round_trip_through_fields_v1() {
        let obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1, "ports": [1, 2], "empty": {}}});
        let fields = field_set(&obj);
        let expected: FieldSet = ["metadata.labels.a", "spec.x", "spec.ports"]
            .into_iter()
            .map(path)
            .collect();
        assert_eq!(fields, expected);
        let encoded = encode_fields(&fields);
        assert_eq!(encoded["f:spec"]["f:ports"], json!({}));
        assert_eq!(decode_fields(&encoded), fields);
    }

    #[test]
    fn scopes_split_status_from_the_rest() {
        let obj = json!({"apiVersion": "v", "kind": "K", "metadata": {"name": "n", "labels": {"a": "1"}}, "spec": {"x": 1}, "status": {"y": 2}});
        let main = scoped(
            &obj,
            Scope::Main {
                status_separate: true,
            },
        );
        assert_eq!(
            main,
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1}})
        );
        assert_eq!(scoped(&obj, Scope::Status), json!({"status": {"y": 2}}));
        let whole = scoped(
            &obj,
            Scope::Main {
                status_separate: false,
            },
        );
        assert_eq!(whole["status"], json!({"y": 2}));
    }

    #[test]
    fn update_takes_changed_fields_from_other_managers() {
        let scope = Scope::Main {
            status_separate: true,
        };
        let mut created = json!({"metadata": {"name": "n"}, "spec": {"a": 1, "b": 1}});
        record_update(None, &mut created, "first", scope, "v1", "t0");
        let mut updated = json!({"metadata": {"name": "n"}, "spec": {"a": 2, "b": 1}});
        record_update(Some(&created), &mut updated, "second", scope, "v1", "t1");
        let entries = read_entries(&updated);
        let first = entries.iter().find(|e| e.manager == "first").unwrap();
        let second = entries.iter().find(|e| e.manager == "second").unwrap();
        assert_eq!(first.fields, [path("spec.b")].into_iter().collect());
        assert_eq!(second.fields, [path("spec.a")].into_iter().collect());
        assert_eq!(second.operation, Operation::Update);
    }

    #[test]
    fn remove_path_prunes_emptied_maps_below_top_level() {
        let mut obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"deep": {"x": 1}}});
        remove_path(&mut obj, &path("spec.deep.x"));
        remove_path(&mut obj, &path("metadata.labels.a"));
        assert_eq!(obj, json!({"metadata": {}, "spec": {}}));
    }
}
