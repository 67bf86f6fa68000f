//! The [`ViewSelector`] of the shared xDS listener (docs/design.md §9): a client presenting a
//! valid certificate whose SPIFFE ID is in a known peer's trust domain gets that peer's
//! export view (flat or gateway variant); a client with a valid bearer token gets the
//! merged view; anything else is refused with `Unauthenticated`.
//!
//! The certificate chain was already verified against the peering roots by the TLS layer
//! (a certificate from another root never gets here). When several peers share a trust
//! domain and would get different variants, the `clusterid` header picks the peer.
//!
//! Gate: until the local upstream has synced, peers are refused with `Unavailable` (they
//! keep their last state and retry); serving an empty export would make them withdraw
//! everything. Never logs tokens.

use std::sync::Arc;

use tonic::async_trait;

use super::export::Exporter;
use super::peer_set::PeerSet;
use super::settings::PeerPolicy;
use crate::identity::tls::peer_spiffe_id;
use crate::view::View;
use crate::xds::auth::{ConnectionInfo, Selected, TokenVerifier, ViewSelector};

pub struct FederationSelector {
    /// Read at every connection: a peer added at runtime is served at once.
    peers: Arc<PeerSet>,
    exporter: Arc<Exporter>,
    merged: Arc<View>,
    tokens: Option<Arc<dyn TokenVerifier>>,
}

impl FederationSelector {
    pub fn new(
        peers: Arc<PeerSet>,
        exporter: Arc<Exporter>,
        merged: Arc<View>,
        tokens: Option<Arc<dyn TokenVerifier>>,
    ) -> FederationSelector {
        FederationSelector {
            peers,
            exporter,
            merged,
            tokens,
        }
    }

    fn peer_for(
        &self,
        trust_domain: &str,
        cluster_id: Option<&str>,
    ) -> Result<PeerPolicy, tonic::Status> {
        let peers = self.peers.load();
        let candidates: Vec<&PeerPolicy> = peers
            .iter()
            .filter(|p| p.trust_domain.eq_ignore_ascii_case(trust_domain))
            .collect();
        let Some(first) = candidates.first() else {
            return Err(tonic::Status::unauthenticated(format!(
                "client certificate trust domain {trust_domain:?} is not the trust domain of any configured peer"
            )));
        };
        if candidates.iter().all(|p| p.flavor() == first.flavor()) {
            return Ok(PeerPolicy::clone(first));
        }
        let Some(cluster) = cluster_id else {
            return Err(tonic::Status::unauthenticated(format!(
                "several peers use trust domain {trust_domain:?}; send the clusterid header"
            )));
        };
        candidates
            .into_iter()
            .find(|p| p.cluster == cluster)
            .cloned()
            .ok_or_else(|| {
                tonic::Status::unauthenticated(format!(
                    "clusterid {cluster:?} is not a peer with trust domain {trust_domain:?}"
                ))
            })
    }
}

#[async_trait]
impl ViewSelector for FederationSelector {
    async fn select(&self, conn: &ConnectionInfo) -> Result<Selected, tonic::Status> {
        if let Some(certs) = conn.peer_certificates.as_deref() {
            let Some(id) = peer_spiffe_id(Some(certs)) else {
                return Err(tonic::Status::unauthenticated(
                    "client certificate carries no SPIFFE ID",
                ));
            };
            let peer = self.peer_for(id.trust_domain(), conn.cluster_id.as_deref())?;
            if !self.exporter.is_ready() {
                return Err(tonic::Status::unavailable(
                    "export not ready: the local istiod has not completed its first sync",
                ));
            }
            let flavor = peer.flavor();
            return Ok(Selected {
                view: Arc::clone(self.exporter.view(flavor)),
                label: flavor.label().to_string(),
                identity: format!("{id} (peer {})", peer.cluster),
            });
        }
        let Some(verifier) = &self.tokens else {
            return Err(tonic::Status::unauthenticated(
                "no client certificate and no token verifier configured",
            ));
        };
        let Some(token) = conn.bearer_token.as_deref() else {
            return Err(tonic::Status::unauthenticated(
                "missing bearer token (send `authorization: Bearer <token>`) or a peer certificate",
            ));
        };
        let identity = verifier.verify(token).await?;
        Ok(Selected {
            view: Arc::clone(&self.merged),
            label: "merged".to_string(),
            identity,
        })
    }
}
