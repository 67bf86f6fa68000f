//! The names of exported (global) services: a Kubernetes Service `ns/name` is exported as
//! hostname `<name>.<ns>.mesh.internal`, xDS resource name `ns/<name>.<ns>.mesh.internal`
//! (docs/design.md §5.2).
//!
//! Owns only the naming rule; it never decides which services are global.

/// The domain every exported hostname ends with.
pub const GLOBAL_DOMAIN: &str = "mesh.internal";

/// `<name>.<ns>.mesh.internal`.
pub fn global_hostname(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.{GLOBAL_DOMAIN}")
}

/// `ns/<name>.<ns>.mesh.internal`: the Service resource name and the `Workload.services`
/// key of an exported service.
pub fn global_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{}", global_hostname(namespace, name))
}

/// Whether a hostname is in the exported domain.
pub fn is_global_hostname(hostname: &str) -> bool {
    hostname
        .strip_suffix(GLOBAL_DOMAIN)
        .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1)
}

/// Whether a `namespace/hostname` key names an exported service, and its namespace part
/// agrees with the hostname (`ns/<svc>.<ns>.mesh.internal`).
pub fn is_global_key(key: &str) -> bool {
    let Some((namespace, hostname)) = key.split_once('/') else {
        return false;
    };
    let Some(rest) = hostname.strip_suffix(GLOBAL_DOMAIN) else {
        return false;
    };
    let mut parts = rest.trim_end_matches('.').rsplitn(2, '.');
    let ns_part = parts.next().unwrap_or_default();
    let name_part = parts.next().unwrap_or_default();
    !namespace.is_empty() && ns_part == namespace && !name_part.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_names_follow_the_mesh_internal_rule() {
        assert_eq!(
            global_hostname("bookinfo", "reviews"),
            "reviews.bookinfo.mesh.internal"
        );
        assert_eq!(
            global_key("bookinfo", "reviews"),
            "bookinfo/reviews.bookinfo.mesh.internal"
        );
        assert!(is_global_key("bookinfo/reviews.bookinfo.mesh.internal"));
        assert!(is_global_hostname("reviews.bookinfo.mesh.internal"));
    }

    #[test]
    fn non_global_or_inconsistent_keys_are_refused() {
        assert!(!is_global_key(
            "bookinfo/reviews.bookinfo.svc.cluster.local"
        ));
        assert!(!is_global_key("other/reviews.bookinfo.mesh.internal"));
        assert!(!is_global_key("bookinfo/.bookinfo.mesh.internal"));
        assert!(!is_global_key("noslash"));
        assert!(!is_global_hostname("mesh.internal"));
        assert!(!is_global_hostname("evilmesh.internal"));
    }
}
