//! `metadata.managedFields`: which field manager owns which fields.
//!
//! Owns field sets (leaf paths through nested maps and through the items of lists declared
//! as list-maps, e.g. Gateway `status.conditions` keyed by `type`; other lists and scalars
//! are atomic leaves), their `FieldsV1` encoding (`f:<field>`, `k:{<keys>}`), the split of an object into the main and `status` scopes,
//! and ownership changes made by non-apply writes (an update takes the fields it changed
//! from everyone else). It must never decide apply conflicts: `apply.rs` does.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::meta;

pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Lists merged item by item (`x-kubernetes-list-type: map`): a field path pattern, where
/// `*` stands for one list item, and the item's key fields.
pub type ListMaps = &'static [(&'static [&'static str], &'static [&'static str])];

/// Marks a path element that selects a list item; the rest is the item's keys as JSON,
/// e.g. `"\u{1}{\"type\":\"Accepted\"}"`. Field names never contain this character.
const ITEM: char = '\u{1}';

fn list_keys(list_maps: ListMaps, pattern: &[String]) -> Option<&'static [&'static str]> {
    list_maps
        .iter()
        .find(|(path, _)| {
            path.len() == pattern.len() && path.iter().zip(pattern).all(|(a, b)| a == b)
        })
        .map(|(_, keys)| *keys)
}

/// The path element of a list-map item, or None if a key field is missing.
fn item_element(item: &Value, keys: &[&str]) -> Option<String> {
    let mut text = String::from("{");
    for (i, key) in keys.iter().enumerate() {
        let value = item.get(*key)?;
        if i > 0 {
            text.push(',');
        }
        text.push_str(&Value::String((*key).to_string()).to_string());
        text.push(':');
        text.push_str(&value.to_string());
    }
    text.push('}');
    Some(format!("{ITEM}{text}"))
}

fn is_item(element: &str) -> bool {
    element.starts_with(ITEM)
}

/// The keys of an item element as a map.
fn item_keys(element: &str) -> Option<Map<String, Value>> {
    serde_json::from_str(element.strip_prefix(ITEM)?).ok()
}

fn matches_item(item: &Value, keys: &Map<String, Value>) -> bool {
    keys.iter().all(|(k, v)| item.get(k) == Some(v))
}

/// The list-map keys for the list at `schema` (field names, `*` for items), if every item
/// carries them; otherwise the list is atomic.
fn keyed_list(
    list_maps: ListMaps,
    schema: &[String],
    items: &[Value],
) -> Option<&'static [&'static str]> {
    let keys = list_keys(list_maps, schema)?;
    items
        .iter()
        .all(|item| item_element(item, keys).is_some())
        .then_some(keys)
}

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

/// Leaf paths of a value: keys through maps and items of list-maps; anything else is a
/// leaf. Empty maps and lists are structure, not values: nobody owns them.
pub fn field_set(value: &Value, list_maps: ListMaps) -> FieldSet {
    fn walk(
        value: &Value,
        prefix: &mut FieldPath,
        schema: &mut Vec<String>,
        list_maps: ListMaps,
        out: &mut FieldSet,
    ) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    prefix.push(key.clone());
                    schema.push(key.clone());
                    walk(child, prefix, schema, list_maps, out);
                    schema.pop();
                    prefix.pop();
                }
            }
            Value::Array(items) if keyed_list(list_maps, schema, items).is_some() => {
                let keys = keyed_list(list_maps, schema, items).unwrap_or_default();
                for item in items {
                    let Some(element) = item_element(item, keys) else {
                        continue;
                    };
                    prefix.push(element);
                    schema.push("*".to_string());
                    walk(item, prefix, schema, list_maps, out);
                    schema.pop();
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
    walk(value, &mut Vec::new(), &mut Vec::new(), list_maps, &mut out);
    out
}

pub fn get_path<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, element| {
        if is_item(element) {
            let keys = item_keys(element)?;
            v.as_array()?.iter().find(|item| matches_item(item, &keys))
        } else {
            v.get(element.as_str())
        }
    })
}

fn get_path_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cursor = value;
    for element in path {
        cursor = if is_item(element) {
            let keys = item_keys(element)?;
            cursor
                .as_array_mut()?
                .iter_mut()
                .find(|item| matches_item(item, &keys))?
        } else {
            cursor.get_mut(element.as_str())?
        };
    }
    Some(cursor)
}

/// The path up to and including its last list-item element, if it has one.
pub fn item_prefix(path: &[String]) -> Option<&[String]> {
    let last = path.iter().rposition(|e| is_item(e))?;
    Some(&path[..=last])
}

/// Whether `path` ends at a key field of the list item it is in.
pub fn is_key_field(path: &[String]) -> bool {
    match path {
        [.., item, field] if is_item(item) => {
            item_keys(item).is_some_and(|keys| keys.contains_key(field))
        }
        _ => false,
    }
}

/// Removes the field (or list item) at `path`, then any maps that became empty because
/// of it (but never a top-level field such as `spec` or `metadata`, nor a list item).
pub fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let Some(container) = get_path_mut(value, parents) else {
        return;
    };
    if is_item(last) {
        if let (Some(keys), Value::Array(items)) = (item_keys(last), container) {
            items.retain(|item| !matches_item(item, &keys));
        }
    } else if let Value::Object(map) = container {
        map.remove(last);
    }
    let parent_is_field = parents.last().is_some_and(|p| !is_item(p));
    if parents.len() > 1
        && parent_is_field
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

/// `.spec.ports` or `.status.conditions[type="Ready"].status`, as conflict messages write
/// field paths.
pub fn render_path(path: &[String]) -> String {
    path.iter()
        .map(|element| match item_keys(element) {
            Some(keys) if is_item(element) => {
                let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", parts.join(","))
            }
            _ => format!(".{element}"),
        })
        .collect()
}

/// Merges `patch` into `target` as apply does: maps deep-merge, list-maps merge item by
/// key, anything else replaces; `null` removes.
pub fn merge_into(target: &mut Value, patch: &Value, list_maps: ListMaps) {
    fn merge(target: &mut Value, patch: &Value, schema: &mut Vec<String>, list_maps: ListMaps) {
        match (target, patch) {
            (Value::Object(target), Value::Object(patch)) => {
                for (key, value) in patch {
                    if value.is_null() {
                        target.remove(key);
                        continue;
                    }
                    schema.push(key.clone());
                    match target.get_mut(key) {
                        Some(slot) => merge(slot, value, schema, list_maps),
                        None => {
                            target.insert(key.clone(), value.clone());
                        }
                    }
                    schema.pop();
                }
            }
            (Value::Array(target), Value::Array(patch))
                if keyed_list(list_maps, schema, target).is_some()
                    && keyed_list(list_maps, schema, patch).is_some() =>
            {
                let keys = keyed_list(list_maps, schema, patch).unwrap_or_default();
                schema.push("*".to_string());
                for item in patch {
                    let element = item_element(item, keys);
                    let existing = target
                        .iter_mut()
                        .find(|t| element.is_some() && item_element(t, keys) == element);
                    match existing {
                        Some(slot) => merge(slot, item, schema, list_maps),
                        None => target.push(item.clone()),
                    }
                }
                schema.pop();
            }
            (target, patch) => *target = patch.clone(),
        }
    }
    merge(target, patch, &mut Vec::new(), list_maps);
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
        for element in path {
            let name = match element.strip_prefix(ITEM) {
                Some(keys) => format!("k:{keys}"),
                None => format!("f:{element}"),
            };
            let child = node
                .entry(name)
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

/// Inverse of [`encode_fields`]; `.` marks and set/index list items (`v:`/`i:`) make
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
            let element = match (key.strip_prefix("f:"), key.strip_prefix("k:")) {
                (Some(name), _) => Some(name.to_string()),
                (_, Some(keys)) => Some(format!("{ITEM}{keys}")),
                _ => None,
            };
            match element {
                Some(element) => {
                    prefix.push(element);
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
    list_maps: ListMaps,
    api_version: &str,
    now: &str,
) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let empty = Value::Object(Map::new());
    let old_scoped = scoped(old.unwrap_or(&empty), scope);
    let new_scoped = scoped(new, scope);
    let old_leaves = field_set(&old_scoped, list_maps);
    let new_leaves = field_set(&new_scoped, list_maps);
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
        let fields = field_set(&obj, &[]);
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
        record_update(None, &mut created, "first", scope, &[], "v1", "t0");
        let mut updated = json!({"metadata": {"name": "n"}, "spec": {"a": 2, "b": 1}});
        record_update(
            Some(&created),
            &mut updated,
            "second",
            scope,
            &[],
            "v1",
            "t1",
        );
        let entries = read_entries(&updated);
        let first = entries.iter().find(|e| e.manager == "first").unwrap();
        let second = entries.iter().find(|e| e.manager == "second").unwrap();
        assert_eq!(first.fields, [path("spec.b")].into_iter().collect());
        assert_eq!(second.fields, [path("spec.a")].into_iter().collect());
        assert_eq!(second.operation, Operation::Update);
    }

    const CONDITIONS: ListMaps = &[(&["status", "conditions"], &["type"])];

    #[test]
    fn list_map_items_are_addressed_by_key() {
        let obj = json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "False"}]}});
        let fields = field_set(&obj, CONDITIONS);
        assert_eq!(fields.len(), 4, "type and status of two items: {fields:?}");
        let b_status: FieldPath = vec![
            "status".into(),
            "conditions".into(),
            format!("{ITEM}{{\"type\":\"B\"}}"),
            "status".into(),
        ];
        assert!(fields.contains(&b_status));
        assert_eq!(get_path(&obj, &b_status), Some(&json!("False")));
        assert_eq!(
            render_path(&b_status),
            ".status.conditions[type=\"B\"].status"
        );
        let encoded = encode_fields(&fields);
        assert_eq!(
            encoded["f:status"]["f:conditions"]["k:{\"type\":\"B\"}"]["f:status"],
            json!({})
        );
        assert_eq!(decode_fields(&encoded), fields);

        let mut removed = obj.clone();
        remove_path(&mut removed, item_prefix(&b_status).unwrap());
        assert_eq!(
            removed["status"]["conditions"],
            json!([{"type": "A", "status": "True"}])
        );
        assert!(is_key_field(&[
            b_status[0].clone(),
            b_status[1].clone(),
            b_status[2].clone(),
            "type".into()
        ]));

        let mut merged = obj.clone();
        merge_into(
            &mut merged,
            &json!({"status": {"conditions": [{"type": "B", "status": "True"}, {"type": "C", "status": "True"}]}}),
            CONDITIONS,
        );
        assert_eq!(
            merged["status"]["conditions"],
            json!([{"type": "A", "status": "True"}, {"type": "B", "status": "True"}, {"type": "C", "status": "True"}])
        );
        // Without the declaration the list is atomic.
        assert_eq!(field_set(&obj, &[]).len(), 1);
    }

    #[test]
    fn remove_path_prunes_emptied_maps_below_top_level() {
        let mut obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"deep": {"x": 1}}});
        remove_path(&mut obj, &path("spec.deep.x"));
        remove_path(&mut obj, &path("metadata.labels.a"));
        assert_eq!(obj, json!({"metadata": {}, "spec": {}}));
    }
}
