//! Client options for each upstream: the local istiod (TLS, bearer token) and every peer
//! (mTLS with the peering roots and the expected identity).
//!
//! It owns translating config into [`ClientOptions`]; it must never connect.

use std::sync::Arc;

use anyhow::{Context, bail};

use crate::config::{Config, Peer, Upstream};
use crate::identity::reload::{CertSource, RootsSource};
use crate::identity::tls::{ClientTlsOptions, ServerIdentity};
use crate::proto::envoy::config::core::v3::Node;
use crate::xds::client::{ClientOptions, TokenSource};

/// The node identity peerd presents upstream, in ztunnel's style.
fn node(config: &Config) -> Node {
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "peerd".into());
    let namespace =
        std::env::var("POD_NAMESPACE").unwrap_or_else(|_| config.control_namespace.clone());
    let ip = std::env::var("INSTANCE_IP").unwrap_or_else(|_| "127.0.0.1".into());
    Node {
        id: format!("peerd~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
        ..Node::default()
    }
}

/// mTLS to a peer: our certificate as the client identity, the peer's certificate must
/// chain to the peering roots and carry the peer's peerd SPIFFE ID (or its configured DNS
/// name); never just any ID of its trust domain.
pub(super) fn peer_client_options(
    config: &Config,
    peer: &Peer,
    roots: Arc<RootsSource>,
    identity: Arc<CertSource>,
) -> anyhow::Result<ClientOptions> {
    let expected = match &peer.server_identity {
        Some(crate::config::ServerIdentity::Dns(_)) => ServerIdentity::Name,
        Some(crate::config::ServerIdentity::Spiffe(_)) | None => ServerIdentity::Spiffe(
            config
                .peer_identity(peer)
                .with_context(|| format!("peer {}: its peerd identity", peer.cluster))?,
        ),
    };
    let tls = crate::identity::tls::client_config(
        &ClientTlsOptions::new(roots, expected).with_client_cert(identity),
    )
    .context("building the peer TLS configuration")?;
    let host = peer.address.to_string();
    let endpoint = match peer.address {
        crate::config::PeerAddress::Ip(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{}", peer.port),
        _ => format!("{host}:{}", peer.port),
    };
    let server_name = match &peer.server_identity {
        Some(crate::config::ServerIdentity::Dns(name)) => name.clone(),
        _ => host,
    };
    let mut options = ClientOptions::new(peer.cluster.clone(), endpoint, server_name, tls);
    options.headers = vec![("clusterid".into(), config.cluster.clone())];
    options.node = node(config);
    options.max_message_size = config.xds.max_message_bytes;
    Ok(options)
}

pub(super) fn client_options(
    config: &Config,
    upstream: &Upstream,
) -> anyhow::Result<ClientOptions> {
    let Some(root_ca) = &upstream.root_ca else {
        bail!(
            "rootCa: a root certificate is required to verify {}",
            upstream.server_name
        );
    };
    let roots = RootsSource::from_file(root_ca).context("rootCa")?;
    let mut tls = ClientTlsOptions::new(roots, ServerIdentity::Name);
    if let Some(cert) = &upstream.client_cert {
        let source = CertSource::from_files(&cert.cert_chain, &cert.key).context("clientCert")?;
        tls = tls.with_client_cert(source);
    }
    let tls =
        crate::identity::tls::client_config(&tls).context("building the TLS configuration")?;
    let mut options = ClientOptions::new(
        upstream.name.clone(),
        upstream.authority(),
        upstream.server_name.clone(),
        tls,
    );
    options.token = upstream.token_file.clone().map(TokenSource::File);
    options.headers = vec![("clusterid".into(), config.cluster.clone())];
    options.node = node(config);
    options.backoff_initial = upstream.backoff_initial;
    options.backoff_max = upstream.backoff_max;
    options.keepalive_interval = upstream.keepalive_interval;
    options.keepalive_timeout = upstream.keepalive_timeout;
    options.connect_timeout = upstream.connect_timeout;
    options.max_message_size = upstream.max_message_bytes;
    Ok(options)
}
