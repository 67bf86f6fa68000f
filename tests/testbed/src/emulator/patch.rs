//! Non-apply patch formats: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).
//!
//! Owns applying a patch document to a JSON value. Strategic merge patch is served as a
//! merge patch (identical for maps, which is all peerd's objects use; list merge keys are
//! not emulated). It must never touch ownership or metadata rules: `rest.rs` does.

use serde_json::Value;

/// RFC 7386: maps merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// RFC 6902 operations `add`, `remove`, `replace`, `move`, `copy`, `test`.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for (index, op) in ops.iter().enumerate() {
        apply_op(target, op).map_err(|e| format!("operation {index}: {e}"))?;
    }
    Ok(())
}

fn apply_op(target: &mut Value, op: &Value) -> Result<(), String> {
    let name = op
        .get("op")
        .and_then(Value::as_str)
        .ok_or("missing \"op\"")?;
    let path = pointer(op, "path")?;
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| format!("{name} needs \"value\""))
    };
    match name {
        "add" => add(target, &path, value()?),
        "remove" => remove(target, &path).map(|_| ()),
        "replace" => {
            remove(target, &path)?;
            add(target, &path, value()?)
        }
        "move" => {
            let from = pointer(op, "from")?;
            let moved = remove(target, &from)?;
            add(target, &path, moved)
        }
        "copy" => {
            let from = pointer(op, "from")?;
            let copied = get(target, &from)
                .cloned()
                .ok_or("\"from\" does not exist")?;
            add(target, &path, copied)
        }
        "test" => {
            if get(target, &path) == Some(&value()?) {
                Ok(())
            } else {
                Err(format!("test failed at {}", render(&path)))
            }
        }
        other => Err(format!("unknown operation {other:?}")),
    }
}

fn pointer(op: &Value, field: &str) -> Result<Vec<String>, String> {
    let text = op
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing \"{field}\""))?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let rest = text
        .strip_prefix('/')
        .ok_or_else(|| format!("JSON pointer {text:?} must start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn render(path: &[String]) -> String {
    path.iter().map(|t| format!("/{t}")).collect()
}

fn get<'a>(target: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(target, |v, token| match v {
        Value::Object(map) => map.get(token),
        Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn parent<'a>(target: &'a mut Value, path: &[String]) -> Result<(&'a mut Value, String), String> {
    let (last, parents) = path
        .split_last()
        .ok_or("the root cannot be the target here")?;
    let mut cursor = target;
    for token in parents {
        cursor = match cursor {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path {} does not exist", render(path)))?;
    }
    Ok((cursor, last.clone()))
}

fn add(target: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (container, last) = parent(target, path)?;
    match container {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(items) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("bad array index {last:?}"))?
            };
            if index > items.len() {
                return Err(format!("array index {index} out of range"));
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err(format!("cannot add below a scalar at {}", render(path))),
    }
}

fn remove(target: &mut Value, path: &[String]) -> Result<Value, String> {
    let (container, last) = parent(target, path)?;
    let missing = || format!("path {} does not exist", render(path));
    match container {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(items) => {
            let index = last.parse::<usize>().map_err(|_| missing())?;
            if index < items.len() {
                Ok(items.remove(index))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
    }

    #[test]
    fn json_patch_operations() {
        let mut doc = json!({"metadata": {"labels": {"a/b": "1"}}, "spec": {"ports": [1, 3]}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
                {"op": "add", "path": "/spec/ports/1", "value": 2},
                {"op": "add", "path": "/spec/ports/-", "value": 4},
                {"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"},
                {"op": "copy", "from": "/spec/ports", "path": "/spec/copy"},
                {"op": "move", "from": "/spec/copy", "path": "/spec/moved"},
                {"op": "remove", "path": "/spec/ports/0"}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a/b": "2"}}, "spec": {"ports": [2, 3, 4], "moved": [1, 2, 3, 4]}})
        );
    }

    #[test]
    fn json_patch_errors_are_reported() {
        let mut doc = json!({"a": 1});
        assert!(
            json_patch(&mut doc, &json!([{"op": "test", "path": "/a", "value": 2}]))
                .unwrap_err()
                .contains("test failed")
        );
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/zz"}])).is_err());
        assert!(json_patch(&mut doc, &json!({"op": "add"})).is_err());
        assert!(json_patch(&mut doc, &json!([{"op": "frob", "path": "/a"}])).is_err());
        assert_eq!(doc, json!({"a": 1}));
    }
}
