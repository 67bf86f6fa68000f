//! Server-side apply (`PATCH` with `application/apply-patch+yaml`).
//!
//! Owns the apply merge: the applied configuration is the manager's full intent, so
//! fields it applied before and no longer applies are removed (unless another manager
//! also owns them); fields another manager owns with a different value are conflicts
//! (409 naming that manager) unless `force`, which transfers ownership. Field granularity
//! is every leaf of nested maps; lists are atomic. It must never touch fields outside the
//! write's scope (`status` for the main resource, everything else for `/status`).

use serde_json::Value;

use super::managed_fields::{
    FieldSet, ListMaps, ManagedEntry, Operation, Scope, field_set, get_path, is_key_field,
    item_prefix, merge_into, overlaps, read_entries, remove_path, render_path, scoped,
    write_entries,
};

/// Who applies, how, and when.
#[derive(Debug, Clone, Copy)]
pub struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub scope: Scope,
    /// Lists of this type merged item by item.
    pub list_maps: ListMaps,
    pub api_version: &'a str,
    pub now: &'a str,
}

/// Conflicts as (manager, rendered field path), sorted and unique.
pub type Conflicts = Vec<(String, String)>;

/// Applies `config` onto `current` (or onto `skeleton` when the object does not exist)
/// and returns the new object with updated `managedFields`.
pub fn apply(
    current: Option<&Value>,
    skeleton: Value,
    config: &Value,
    req: ApplyRequest<'_>,
) -> Result<Value, Conflicts> {
    let mut object = current.cloned().unwrap_or(skeleton);
    let mut entries = current.map(read_entries).unwrap_or_default();
    let intent = scoped(config, req.scope);
    let applied = field_set(&intent, req.list_maps);
    let live = scoped(&object, req.scope);

    let mut conflicts: Conflicts = Vec::new();
    let mut conflicting_paths: Vec<(usize, FieldSet)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry.manager == req.manager {
            continue;
        }
        let mut lost = FieldSet::new();
        for owned in &entry.fields {
            for path in applied.iter().filter(|p| overlaps(owned, p)) {
                if get_path(&intent, path) != get_path(&live, path) {
                    conflicts.push((entry.manager.clone(), render_path(path)));
                    lost.insert(owned.clone());
                }
            }
        }
        if !lost.is_empty() {
            conflicting_paths.push((index, lost));
        }
    }
    conflicts.sort();
    conflicts.dedup();
    if !conflicts.is_empty() {
        if !req.force {
            return Err(conflicts);
        }
        for (index, lost) in conflicting_paths {
            entries[index].fields.retain(|f| !lost.contains(f));
        }
    }

    let subresource = req.scope.subresource();
    let own_index = entries
        .iter()
        .position(|e| e.is(req.manager, Operation::Apply, subresource));
    if let Some(index) = own_index {
        let previously: Vec<_> = entries[index]
            .fields
            .difference(&applied)
            .cloned()
            .collect();
        let owned_elsewhere = |path: &[String]| {
            entries
                .iter()
                .enumerate()
                .any(|(i, e)| i != index && e.fields.iter().any(|f| overlaps(f, path)))
        };
        let still_applied = |path: &[String]| applied.iter().any(|p| overlaps(p, path));
        for dropped in previously {
            if still_applied(&dropped) || owned_elsewhere(&dropped) {
                continue;
            }
            // A list item nobody applies or owns any more goes as a whole; otherwise
            // its key fields stay so the item remains addressable.
            match item_prefix(&dropped) {
                Some(item) if !still_applied(item) && !owned_elsewhere(item) => {
                    remove_path(&mut object, item)
                }
                _ if is_key_field(&dropped) => {}
                _ => remove_path(&mut object, &dropped),
            }
        }
    }

    merge_into(&mut object, &intent, req.list_maps);

    let entry = ManagedEntry {
        manager: req.manager.to_string(),
        operation: Operation::Apply,
        api_version: req.api_version.to_string(),
        time: req.now.to_string(),
        subresource: subresource.to_string(),
        fields: applied,
    };
    match own_index {
        Some(index) => entries[index] = entry,
        None => entries.push(entry),
    }
    write_entries(&mut object, &entries);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::managed_fields::record_update;
    use serde_json::json;

    const MAIN: Scope = Scope::Main {
        status_separate: true,
    };

    fn req(manager: &str, force: bool) -> ApplyRequest<'_> {
        ApplyRequest {
            manager,
            force,
            scope: MAIN,
            list_maps: &[],
            api_version: "networking.istio.io/v1",
            now: "t",
        }
    }

    fn skeleton() -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "we", "namespace": "ns"}})
    }

    #[test]
    fn reapplying_without_a_field_removes_it() {
        let first = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"address": "10.0.0.1", "network": "n1"}});
        let obj = apply(None, skeleton(), &first, req("peerd", false)).unwrap();
        let second = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"address": "10.0.0.1"}});
        let obj = apply(Some(&obj), skeleton(), &second, req("peerd", false)).unwrap();
        assert_eq!(obj["spec"], json!({"address": "10.0.0.1"}));
        assert_eq!(obj["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(obj["metadata"]["name"], "we");
    }

    #[test]
    fn conflicting_value_of_another_manager_needs_force() {
        let mine = json!({"spec": {"address": "10.0.0.1"}});
        let obj = apply(None, skeleton(), &mine, req("peerd", false)).unwrap();
        let theirs = json!({"spec": {"address": "10.0.0.2"}});
        let conflicts = apply(Some(&obj), skeleton(), &theirs, req("other", false)).unwrap_err();
        assert_eq!(
            conflicts,
            vec![("peerd".to_string(), ".spec.address".to_string())]
        );

        let forced = apply(Some(&obj), skeleton(), &theirs, req("other", true)).unwrap();
        assert_eq!(forced["spec"]["address"], "10.0.0.2");
        let entries = read_entries(&forced);
        assert!(
            entries.iter().all(|e| e.manager != "peerd"),
            "peerd lost its only field"
        );
    }

    #[test]
    fn same_value_is_shared_not_a_conflict() {
        let config = json!({"spec": {"address": "10.0.0.1"}});
        let obj = apply(None, skeleton(), &config, req("peerd", false)).unwrap();
        let obj = apply(Some(&obj), skeleton(), &config, req("other", false)).unwrap();
        assert_eq!(read_entries(&obj).len(), 2);
        // peerd stops applying the field; "other" still owns it, so it stays.
        let obj = apply(
            Some(&obj),
            skeleton(),
            &json!({"spec": {}}),
            req("peerd", false),
        )
        .unwrap();
        assert_eq!(obj["spec"]["address"], "10.0.0.1");
    }

    #[test]
    fn fields_changed_by_an_update_conflict_with_the_applier() {
        let mine = json!({"spec": {"address": "10.0.0.1", "weight": 1}});
        let obj = apply(None, skeleton(), &mine, req("peerd", false)).unwrap();
        let mut edited = obj.clone();
        edited["spec"]["weight"] = json!(5);
        record_update(
            Some(&obj),
            &mut edited,
            "kubectl-edit",
            MAIN,
            &[],
            "networking.istio.io/v1",
            "t",
        );
        let conflicts = apply(Some(&edited), skeleton(), &mine, req("peerd", false)).unwrap_err();
        assert_eq!(
            conflicts,
            vec![("kubectl-edit".to_string(), ".spec.weight".to_string())]
        );
        let restored = apply(Some(&edited), skeleton(), &mine, req("peerd", true)).unwrap();
        assert_eq!(restored["spec"]["weight"], 1);
    }

    #[test]
    fn main_apply_never_touches_status() {
        let mut obj = apply(
            None,
            skeleton(),
            &json!({"spec": {"a": 1}}),
            req("peerd", false),
        )
        .unwrap();
        obj["status"] = json!({"conditions": [1]});
        let obj = apply(
            Some(&obj),
            skeleton(),
            &json!({"spec": {"a": 2}, "status": {"conditions": []}}),
            req("peerd", false),
        )
        .unwrap();
        assert_eq!(obj["status"], json!({"conditions": [1]}));
        assert_eq!(obj["spec"]["a"], 2);
    }
}
