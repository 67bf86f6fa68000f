//! The [`ViewSelector`] of the shared xDS listener (docs/design.md §9): a client presenting a
//! valid certificate whose SPIFFE ID is a configured peer's peerd identity gets that
//! peer's export view (flat or gateway variant); a client with a valid bearer token gets
//! the merged view; anything else is refused.
//!
//! The certificate chain was already verified against the peering roots by the TLS layer
//! (a certificate from another root never gets here). Only the exact peerd identity of a
//! peer counts, never its trust domain: with a shared root, every workload of the mesh
//! holds a certificate of that trust domain. The identity decides the peer; the
//! `clusterid` header may only confirm it (a header naming another cluster is refused),
//! or pick among peers that share one identity (then it is required).
//!
//! Gate: until the local upstream has synced, peers are refused with `Unavailable` (they
//! keep their last state and retry); serving an empty export would make them withdraw
//! everything. Never logs tokens.

use std::sync::Arc;

use tonic::async_trait;

use super::export::Exporter;
use super::peer_set::PeerSet;
use super::settings::PeerPolicy;
use crate::identity::spiffe::{SpiffeId, bounded};
use crate::identity::tls::peer_spiffe_ids;
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
}

/// The configured peer a client certificate proves to be: the peer whose peerd identity
/// is among `presented` (the certificate's SPIFFE IDs). A `clusterid` header must name
/// that peer's cluster; when several peers share the identity it must name one of them.
/// Refusals are `PermissionDenied` (the chain is valid, the identity is not allowed) and
/// name the presented identity, bounded.
pub fn peer_for<'a>(
    peers: &'a [PeerPolicy],
    presented: &[SpiffeId],
    cluster_id: Option<&str>,
) -> Result<&'a PeerPolicy, tonic::Status> {
    let Some(id) = presented
        .iter()
        .find(|id| peers.iter().any(|p| &p.identity == *id))
    else {
        let shown = presented
            .first()
            .map_or_else(|| "no SPIFFE ID".to_string(), |id| bounded(&id.to_string()));
        return Err(tonic::Status::permission_denied(format!(
            "client certificate identity {shown} is not the peerd identity of any configured peer"
        )));
    };
    let candidates: Vec<&PeerPolicy> = peers.iter().filter(|p| &p.identity == id).collect();
    let clusters = || {
        candidates
            .iter()
            .map(|p| p.cluster.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (cluster_id, candidates.as_slice()) {
        (None, [only]) => Ok(only),
        (None, _) => Err(tonic::Status::permission_denied(format!(
            "{} is the peerd identity of several peers ({}); send the clusterid header",
            bounded(&id.to_string()),
            clusters()
        ))),
        (Some(cluster), _) => candidates
            .iter()
            .find(|p| p.cluster == cluster)
            .copied()
            .ok_or_else(|| {
                tonic::Status::permission_denied(format!(
                    "clusterid {} does not match the client certificate: {} is the peerd identity of {}",
                    bounded(cluster),
                    bounded(&id.to_string()),
                    clusters()
                ))
            }),
    }
}

#[async_trait]
impl ViewSelector for FederationSelector {
    async fn select(&self, conn: &ConnectionInfo) -> Result<Selected, tonic::Status> {
        if let Some(certs) = conn.peer_certificates.as_deref() {
            let presented = peer_spiffe_ids(Some(certs));
            if presented.is_empty() {
                return Err(tonic::Status::unauthenticated(
                    "client certificate carries no SPIFFE ID",
                ));
            }
            let peers = self.peers.load();
            let peer = peer_for(&peers, &presented, conn.cluster_id.as_deref())?;
            if !self.exporter.is_ready() {
                return Err(tonic::Status::unavailable(
                    "export not ready: the local istiod has not completed its first sync",
                ));
            }
            let flavor = peer.flavor();
            return Ok(Selected {
                view: Arc::clone(self.exporter.view(flavor)),
                label: flavor.label().to_string(),
                identity: format!("{} (peer {})", peer.identity, peer.cluster),
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
