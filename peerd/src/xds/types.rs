//! The two ambient xDS resource types peerd federates, and their type URLs.

use std::fmt;

/// `type_url` of WDS: one `istio.workload.Address` (a Workload or a Service) per resource.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// `type_url` of WADS: one `istio.security.Authorization` per resource.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// One of the xDS types peerd carries. The order of [`ResourceType::ALL`] is the order
/// ztunnel registers them in (Address first), which peerd also uses for initial requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Address,
    Authorization,
}

impl ResourceType {
    pub const ALL: [ResourceType; 2] = [ResourceType::Address, ResourceType::Authorization];

    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Address => ADDRESS_TYPE_URL,
            ResourceType::Authorization => AUTHORIZATION_TYPE_URL,
        }
    }

    pub fn from_type_url(type_url: &str) -> Option<Self> {
        match type_url {
            ADDRESS_TYPE_URL => Some(ResourceType::Address),
            AUTHORIZATION_TYPE_URL => Some(ResourceType::Authorization),
            _ => None,
        }
    }

    /// Accepts a full type URL or a short name (`address`, `workload`, `service`, `wds`,
    /// `authorization`, `authz`, `wads`), for the CLI and the debug API.
    pub fn parse_loose(s: &str) -> Option<Self> {
        if let Some(t) = Self::from_type_url(s) {
            return Some(t);
        }
        match s.to_ascii_lowercase().as_str() {
            "address" | "addresses" | "workload" | "workloads" | "service" | "services" | "wds" => {
                Some(ResourceType::Address)
            }
            "authorization" | "authorizations" | "authz" | "wads" | "policy" | "policies" => {
                Some(ResourceType::Authorization)
            }
            _ => None,
        }
    }

    /// Dense index, for per-type arrays.
    pub const fn index(self) -> usize {
        match self {
            ResourceType::Address => 0,
            ResourceType::Authorization => 1,
        }
    }

    pub const fn short_name(self) -> &'static str {
        match self {
            ResourceType::Address => "address",
            ResourceType::Authorization => "authorization",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// A value per resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerType<T>(pub [T; 2]);

impl<T> PerType<T> {
    pub fn get(&self, t: ResourceType) -> &T {
        &self.0[t.index()]
    }
    pub fn get_mut(&mut self, t: ResourceType) -> &mut T {
        &mut self.0[t.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_and_reject_unknown() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(
            ResourceType::from_type_url("type.googleapis.com/envoy.config.cluster.v3.Cluster"),
            None
        );
        assert_eq!(
            ResourceType::parse_loose("authz"),
            Some(ResourceType::Authorization)
        );
        assert_eq!(ResourceType::parse_loose("nope"), None);
    }
}
