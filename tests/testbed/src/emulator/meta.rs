//! Object metadata helpers: timestamps, uids, name validation, and typed access to the
//! few `metadata` fields the server itself manages.
//!
//! Owns the rules for server-owned metadata (uid, creationTimestamp, resourceVersion,
//! generation). It must never interpret anything outside `metadata`: objects are
//! schema-free JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use serde_json::{Map, Value};

/// RFC 3339 UTC timestamp with second precision, as Kubernetes writes them.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_rfc3339(secs)
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (past year 9999: the epoch).
pub fn format_rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

/// A random version-4 UUID string.
pub fn new_uid() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut b = bytes;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Five lowercase alphanumerics, as `generateName` appends.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Checks an object name as a DNS-1123 subdomain (what CRDs and most types require).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name or generateName is required".to_string());
    }
    if name.len() > 253 {
        return Err("must be no more than 253 characters".to_string());
    }
    let valid_chars = name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    let alnum = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !valid_chars || !alnum(name.bytes().next()) || !alnum(name.bytes().last()) {
        return Err(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (got {name:?})"
        ));
    }
    Ok(())
}

pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// The `metadata` map, created if missing or not a map.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = match obj {
        Value::Object(map) => map,
        _ => unreachable_object(),
    };
    let entry = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(map) => map,
        _ => unreachable_object(),
    }
}

fn unreachable_object() -> ! {
    unreachable!("the value was just made an object")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    metadata(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace").unwrap_or("")
}

pub fn resource_version(obj: &Value) -> Option<&str> {
    meta_str(obj, "resourceVersion").filter(|rv| !rv.is_empty())
}

pub fn labels(obj: &Value) -> Option<&Map<String, Value>> {
    metadata(obj)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
}

pub fn has_finalizers(obj: &Value) -> bool {
    metadata(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

pub fn deletion_requested(obj: &Value) -> bool {
    metadata(obj).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|t| !t.is_null()))
}

pub fn generation(obj: &Value) -> Option<i64> {
    metadata(obj)
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
}

/// Metadata fields only the server sets; client values for these are ignored.
pub const SERVER_OWNED: &[&str] = &[
    "uid",
    "creationTimestamp",
    "resourceVersion",
    "generation",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// Copies the server-owned metadata of `from` onto `to` (the rest of `to` stays).
pub fn carry_server_metadata(from: &Value, to: &mut Value) {
    let source = metadata(from).cloned().unwrap_or_default();
    let target = metadata_mut(to);
    for field in SERVER_OWNED {
        match source.get(*field) {
            Some(value) => {
                target.insert((*field).to_string(), value.clone());
            }
            None => {
                target.remove(*field);
            }
        }
    }
}

/// The object without `metadata` and `status`: what `generation` tracks.
pub fn spec_part(obj: &Value) -> Value {
    match obj {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The object with the fields that change on every write (resourceVersion, the time of
/// managed-field entries) removed: two writes with equal `comparable` forms are a no-op.
pub fn comparable(obj: &Value) -> Value {
    let mut copy = obj.clone();
    let meta = metadata_mut(&mut copy);
    meta.remove("resourceVersion");
    if let Some(Value::Array(entries)) = meta.get_mut("managedFields") {
        for entry in entries.iter_mut() {
            if let Value::Object(entry) = entry {
                entry.remove("time");
            }
        }
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_timestamps() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn uids_look_like_uuid_v4() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.as_bytes()[14], b'4');
        assert_ne!(uid, new_uid());
    }

    #[test]
    fn validates_names() {
        assert!(validate_name("autogenflat.c2.default.pod1.f2396f15c5c2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("Upper").is_err());
        assert!(validate_name("-lead").is_err());
        assert!(validate_name("trail.").is_err());
        assert!(validate_name(&"a".repeat(254)).is_err());
    }

    #[test]
    fn comparable_ignores_resource_version_and_entry_times() {
        let a = serde_json::json!({"metadata": {"resourceVersion": "1", "managedFields": [{"manager": "m", "time": "t1"}]}, "spec": {"x": 1}});
        let b = serde_json::json!({"metadata": {"resourceVersion": "2", "managedFields": [{"manager": "m", "time": "t2"}]}, "spec": {"x": 1}});
        assert_eq!(comparable(&a), comparable(&b));
    }
}
