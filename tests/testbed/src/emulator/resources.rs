//! The fixed catalog of resource types the emulated API server serves.
//!
//! Owns the static facts about each type (group, versions, plural, kind, scope, which
//! subresources exist, whether `metadata.generation` is tracked, which lists merge by
//! key). It must never hold
//! objects or any mutable state: the store owns those.

use super::managed_fields::ListMaps;

/// Index of a resource type in [`RESOURCES`]; stable for the life of the process.
pub type ResourceId = usize;

/// Static description of one served resource type.
#[derive(Debug)]
pub struct ResourceDef {
    /// API group, empty for the core group.
    pub group: &'static str,
    /// Served versions; the first one is the preferred (and storage) version.
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource: main-resource writes ignore `.status`, status writes
    /// change nothing else.
    pub status_subresource: bool,
    /// `metadata.generation` is set and bumped on every change outside metadata/status.
    pub tracks_generation: bool,
    /// Only `create` is served (TokenReview): nothing is stored.
    pub create_only: bool,
    /// Lists merged item by item in server-side apply (`x-kubernetes-list-type: map`).
    pub list_maps: ListMaps,
}

impl ResourceDef {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The name Kubernetes uses in error messages: `plural.group` or `plural` for core.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn serves_version(&self, version: &str) -> bool {
        self.versions.contains(&version)
    }

    pub fn preferred_version(&self) -> &'static str {
        self.versions.first().copied().unwrap_or("v1")
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        if self.create_only {
            &["create"]
        } else {
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }
}

const ISTIO_CATEGORIES: &[&str] = &["istio-io", "networking-istio-io"];

/// Every type: owner references are keyed by uid.
const COMMON_LISTS: ListMaps = &[(&["metadata", "ownerReferences"], &["uid"])];

/// Gateway API v1 list-maps (as its CRD declares them), so conditions written by
/// different controllers merge instead of replacing each other.
const GATEWAY_LISTS: ListMaps = &[
    (&["metadata", "ownerReferences"], &["uid"]),
    (&["spec", "listeners"], &["name"]),
    (&["status", "conditions"], &["type"]),
    (&["status", "listeners"], &["name"]),
    (&["status", "listeners", "*", "conditions"], &["type"]),
];

/// ServiceExport/ServiceImport: conditions by type, importing clusters by name.
const MCS_LISTS: ListMaps = &[
    (&["metadata", "ownerReferences"], &["uid"]),
    (&["status", "conditions"], &["type"]),
    (&["status", "clusters"], &["cluster"]),
];

const SERVICE_LISTS: ListMaps = &[
    (&["metadata", "ownerReferences"], &["uid"]),
    (&["spec", "ports"], &["port", "protocol"]),
];

/// Every served resource type. Namespaces must stay first: the store relies on
/// [`NAMESPACES`] to check that a namespace exists.
pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        status_subresource: true,
        tracks_generation: false,
        create_only: false,
        list_maps: COMMON_LISTS,
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        status_subresource: true,
        tracks_generation: false,
        create_only: false,
        list_maps: SERVICE_LISTS,
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        status_subresource: true,
        tracks_generation: false,
        create_only: false,
        list_maps: COMMON_LISTS,
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        status_subresource: false,
        tracks_generation: false,
        create_only: false,
        list_maps: COMMON_LISTS,
    },
    ResourceDef {
        group: "gateway.networking.k8s.io",
        versions: &["v1"],
        plural: "gateways",
        singular: "gateway",
        kind: "Gateway",
        namespaced: true,
        short_names: &["gtw"],
        categories: &["gateway-api"],
        status_subresource: true,
        tracks_generation: true,
        create_only: false,
        list_maps: GATEWAY_LISTS,
    },
    ResourceDef {
        group: "networking.istio.io",
        versions: &["v1", "v1beta1"],
        plural: "workloadentries",
        singular: "workloadentry",
        kind: "WorkloadEntry",
        namespaced: true,
        short_names: &["we"],
        categories: ISTIO_CATEGORIES,
        status_subresource: true,
        tracks_generation: true,
        create_only: false,
        list_maps: COMMON_LISTS,
    },
    ResourceDef {
        group: "networking.istio.io",
        versions: &["v1", "v1beta1"],
        plural: "serviceentries",
        singular: "serviceentry",
        kind: "ServiceEntry",
        namespaced: true,
        short_names: &["se"],
        categories: ISTIO_CATEGORIES,
        status_subresource: true,
        tracks_generation: true,
        create_only: false,
        list_maps: COMMON_LISTS,
    },
    // The Multi-Cluster Services API (KEP-1645, `multicluster.x-k8s.io/v1alpha1`), as its
    // CRDs declare them.
    ResourceDef {
        group: "multicluster.x-k8s.io",
        versions: &["v1alpha1"],
        plural: "serviceexports",
        singular: "serviceexport",
        kind: "ServiceExport",
        namespaced: true,
        short_names: &["svcex"],
        categories: &[],
        status_subresource: true,
        tracks_generation: true,
        create_only: false,
        list_maps: MCS_LISTS,
    },
    ResourceDef {
        group: "multicluster.x-k8s.io",
        versions: &["v1alpha1"],
        plural: "serviceimports",
        singular: "serviceimport",
        kind: "ServiceImport",
        namespaced: true,
        short_names: &["svcim"],
        categories: &[],
        status_subresource: true,
        tracks_generation: true,
        create_only: false,
        list_maps: MCS_LISTS,
    },
    ResourceDef {
        group: "coordination.k8s.io",
        versions: &["v1"],
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        status_subresource: false,
        tracks_generation: false,
        create_only: false,
        list_maps: COMMON_LISTS,
    },
    ResourceDef {
        group: "authentication.k8s.io",
        versions: &["v1"],
        plural: "tokenreviews",
        singular: "tokenreview",
        kind: "TokenReview",
        namespaced: false,
        short_names: &[],
        categories: &[],
        status_subresource: false,
        tracks_generation: false,
        create_only: true,
        list_maps: COMMON_LISTS,
    },
];

/// Id of the `namespaces` resource.
pub const NAMESPACES: ResourceId = 0;

/// Looks a resource up by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<ResourceId> {
    RESOURCES
        .iter()
        .position(|def| def.group == group && def.plural == plural && def.serves_version(version))
}

/// The definition behind a resource id.
pub fn def(id: ResourceId) -> &'static ResourceDef {
    &RESOURCES[id]
}

/// Resources served under one group/version, in catalog order.
pub fn in_group_version(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceDef> {
    RESOURCES
        .iter()
        .filter(move |def| def.group == group && def.serves_version(version))
}

/// Non-core groups with their versions (preferred first), in catalog order.
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for def in RESOURCES.iter().filter(|def| !def.group.is_empty()) {
        match out.iter_mut().find(|(group, _)| *group == def.group) {
            Some((_, versions)) => {
                for version in def.versions {
                    if !versions.contains(version) {
                        versions.push(version);
                    }
                }
            }
            None => out.push((def.group, def.versions.to_vec())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_id_points_at_namespaces() {
        assert_eq!(RESOURCES[NAMESPACES].plural, "namespaces");
    }

    #[test]
    fn istio_types_are_served_in_both_versions() {
        assert!(find("networking.istio.io", "v1", "workloadentries").is_some());
        assert!(find("networking.istio.io", "v1beta1", "serviceentries").is_some());
        assert!(find("networking.istio.io", "v1alpha3", "serviceentries").is_none());
        let groups = groups();
        let istio = groups
            .iter()
            .find(|(group, _)| *group == "networking.istio.io")
            .map(|(_, versions)| versions.clone());
        assert_eq!(istio, Some(vec!["v1", "v1beta1"]));
    }
}
