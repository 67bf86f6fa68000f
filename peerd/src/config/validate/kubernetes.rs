//! Validation of the `kubernetes` section: whether Kubernetes is on (explicit, or in a
//! pod), which API server, leader election, TokenReview and flat sync settings.
//!
//! Owns only the rules of that section. Never talks to the API server; never stops at
//! the first error.

use std::path::PathBuf;

use crate::config::file::FileConfig;
use crate::config::{KubeApi, Kubernetes, TokenReview, XdsServer, defaults};

use super::{Checker, is_dns_name};

impl Checker<'_> {
    pub(super) fn kubernetes(&mut self, file: &FileConfig, xds: &XdsServer) -> Option<Kubernetes> {
        let k = &file.kubernetes;
        let explicit =
            k.server.is_some() || (k.kubeconfig.is_some() && !self.kube_auto.kubeconfig_from_env);
        if !k.enabled.unwrap_or(explicit || self.kube_auto.in_cluster) {
            return None;
        }
        let api = if let Some(server) = &k.server {
            let rest = server
                .strip_prefix("http://")
                .or_else(|| server.strip_prefix("https://"));
            if rest.is_none_or(|r| r.trim_end_matches('/').is_empty()) {
                self.err(
                    "kubernetes.server",
                    format!("{server:?} is not an http:// or https:// URL"),
                );
            }
            KubeApi::Server(server.clone())
        } else if let Some(path) = &k.kubeconfig {
            // KUBECONFIG may list several files; the first one is used.
            let first = path
                .to_str()
                .and_then(|p| p.split(':').next())
                .map(PathBuf::from)
                .unwrap_or_else(|| path.clone());
            match self.file("kubernetes.kubeconfig", &Some(first)) {
                Some(p) => KubeApi::Kubeconfig(p),
                None => KubeApi::InCluster,
            }
        } else {
            KubeApi::InCluster
        };
        let le = &k.leader_election;
        let lease_name = le
            .lease_name
            .clone()
            .unwrap_or_else(|| defaults::LEASE_NAME.into());
        if !is_dns_name(&lease_name) {
            self.err(
                "kubernetes.leaderElection.leaseName",
                format!("{lease_name:?} is not a valid object name"),
            );
        }
        let identity = le.identity.clone();
        if identity
            .as_deref()
            .is_some_and(|i| i.trim().is_empty() || i.len() > 253)
        {
            self.err(
                "kubernetes.leaderElection.identity",
                "must be 1 to 253 characters",
            );
        }
        let lease_duration = self.nonzero_duration(
            "kubernetes.leaderElection.leaseDuration",
            &le.lease_duration,
            defaults::LEASE_DURATION,
        );
        let renew_period = self.nonzero_duration(
            "kubernetes.leaderElection.renewPeriod",
            &le.renew_period,
            defaults::LEASE_RENEW_PERIOD,
        );
        if renew_period >= lease_duration {
            self.err(
                "kubernetes.leaderElection.renewPeriod",
                "must be shorter than leaseDuration",
            );
        }
        let tr = &k.token_review;
        let token_review = if tr.enabled.unwrap_or(xds.token_file.is_none()) {
            let audiences = tr
                .audiences
                .clone()
                .unwrap_or_else(|| vec![defaults::TOKEN_REVIEW_AUDIENCE.to_string()]);
            for (i, a) in audiences.iter().enumerate() {
                if a.trim().is_empty() {
                    self.err(
                        format!("kubernetes.tokenReview.audiences[{i}]"),
                        "must not be empty",
                    );
                }
            }
            Some(TokenReview {
                audiences,
                cache_ttl: self.duration(
                    "kubernetes.tokenReview.cacheTtl",
                    &tr.cache_ttl,
                    defaults::TOKEN_REVIEW_CACHE_TTL,
                ),
            })
        } else {
            None
        };
        Some(Kubernetes {
            api,
            startup_timeout: self.nonzero_duration(
                "kubernetes.startupTimeout",
                &k.startup_timeout,
                defaults::KUBE_STARTUP_TIMEOUT,
            ),
            lease_name,
            identity,
            lease_duration,
            renew_period,
            flat_sync: k.flat_sync.unwrap_or(true),
            service_imports: k.service_imports.unwrap_or(false),
            resync_interval: self.nonzero_duration(
                "kubernetes.resyncInterval",
                &k.resync_interval,
                defaults::KUBE_RESYNC,
            ),
            token_review,
        })
    }
}
