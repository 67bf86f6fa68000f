//! Test support for the xDS integration tests: throwaway PKIs (rcgen), TLS configs, a
//! running `AdsServer` on 127.0.0.1, a scripted ztunnel-like downstream client (generated
//! tonic client over real TLS), a scripted upstream server for the ADS client, and
//! resource builders. Everything stays on loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerd::proto::envoy::config::core::v3::Node;
use peerd::proto::envoy::service::discovery::v3 as discovery;
use peerd::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use peerd::proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use peerd::proto::istio::{security, workload};
use peerd::view::View;
use peerd::xds::auth::ViewSelector;
use peerd::xds::server::{AdsServer, ServerOptions};
use peerd::xds::transport::{TlsConnectorService, tls_incoming};
use peerd::xds::{Resource, ResourceType};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Generous: the machine is shared and slow; only used to fail instead of hanging.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throwaway certificate authority.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test root"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    pub fn leaf(&self, sans: &[&str]) -> Leaf {
        let params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            chain: vec![cert.der().clone(), self.ca.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

/// Server-authenticated TLS 1.3 (what ztunnel expects); with `client_roots`, client
/// certificates are verified against them when presented (optional, like the shared
/// downstream+export listener).
pub fn server_tls(pki: &Pki, client_roots: Option<&Pki>) -> Arc<rustls::ServerConfig> {
    let leaf = pki.leaf(&["127.0.0.1", "localhost"]);
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap();
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots.roots()),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    Arc::new(builder.with_single_cert(leaf.chain, leaf.key).unwrap())
}

pub fn client_tls(trust: &Pki, client_cert: Option<Leaf>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(trust.roots());
    Arc::new(match client_cert {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder.with_client_auth_cert(leaf.chain, leaf.key).unwrap(),
    })
}

/// A running `AdsServer` on an ephemeral loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: AdsServer,
    pub shutdown: CancellationToken,
    pub pki: Pki,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start_server(selector: Arc<dyn ViewSelector>, options: ServerOptions) -> TestServer {
    start_server_with(selector, options, |pki| server_tls(pki, None)).await
}

pub async fn start_server_with(
    selector: Arc<dyn ViewSelector>,
    options: ServerOptions,
    tls: impl FnOnce(&Pki) -> Arc<rustls::ServerConfig>,
) -> TestServer {
    let pki = Pki::new("server");
    let config = tls(&pki);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = AdsServer::new(selector, options);
    let shutdown = CancellationToken::new();
    let s = server.clone();
    let sd = shutdown.clone();
    tokio::spawn(async move { s.serve(listener, config, sd).await });
    TestServer {
        addr,
        server,
        shutdown,
        pki,
    }
}

pub fn ztunnel_node() -> Node {
    Node {
        id: "ztunnel~127.0.0.1~ztunnel-x1.istio-system~istio-system.svc.cluster.local".into(),
        ..Default::default()
    }
}

/// A downstream that behaves like ztunnel on the wire, scripted step by step.
pub struct Downstream {
    pub tx: mpsc::Sender<discovery::DeltaDiscoveryRequest>,
    pub rx: Streaming<discovery::DeltaDiscoveryResponse>,
}

pub async fn channel_to(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector =
        TlsConnectorService::new(addr.to_string(), "127.0.0.1", tls, Duration::from_secs(10))
            .unwrap();
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
}

impl Downstream {
    /// Opens the stream with optional bearer token. Initial requests are sent separately.
    pub async fn connect(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        token: Option<&str>,
    ) -> Result<Downstream, Status> {
        let channel = channel_to(addr, tls)
            .await
            .map_err(|e| Status::unavailable(format!("connect: {}", chain(&e))))?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(256 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(64);
        let mut req = Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req.metadata_mut()
            .insert("clusterid", "cluster-a".parse().unwrap());
        let resp = client.delta_aggregated_resources(req).await?;
        Ok(Downstream {
            tx,
            rx: resp.into_inner(),
        })
    }

    pub async fn send(&self, req: discovery::DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    /// ztunnel's initial request: node, type, subscriptions, held versions.
    pub async fn initial(
        &self,
        kind: ResourceType,
        subscribe: &[&str],
        unsubscribe: &[&str],
        held: &[(&str, &str)],
    ) {
        self.send(discovery::DeltaDiscoveryRequest {
            node: Some(ztunnel_node()),
            type_url: kind.type_url().into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
            initial_resource_versions: held
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn subscribe(&self, kind: ResourceType, names: &[&str]) {
        self.send(discovery::DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn recv(&mut self) -> discovery::DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("timed out waiting for a response")
            .expect("stream error")
            .expect("stream ended")
    }

    pub async fn ack(&self, r: &discovery::DeltaDiscoveryResponse) {
        self.send(discovery::DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&self, r: &discovery::DeltaDiscoveryResponse, message: &str) {
        self.send(discovery::DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(peerd::proto::google::rpc::Status {
                code: 0,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }

    /// Receives and ACKs one response.
    pub async fn recv_ack(&mut self) -> discovery::DeltaDiscoveryResponse {
        let r = self.recv().await;
        self.ack(&r).await;
        r
    }
}

/// What a downstream holds of one type, built from responses: name → (version, bytes).
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Held(pub BTreeMap<String, (String, Vec<u8>)>);

impl Held {
    pub fn apply(&mut self, r: &discovery::DeltaDiscoveryResponse) {
        for name in &r.removed_resources {
            self.0.remove(name);
        }
        for res in &r.resources {
            let body = res
                .resource
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default();
            self.0
                .insert(res.name.clone(), (res.version.clone(), body.to_vec()));
        }
    }

    pub fn of_view(view: &View, kind: ResourceType) -> Held {
        Held(
            view.snapshot()
                .resources(kind)
                .iter()
                .map(|(n, r)| (n.to_string(), (r.version.to_string(), r.body.to_vec())))
                .collect(),
        )
    }
}

pub fn wl(uid: &str, ip: [u8; 4]) -> Arc<Resource> {
    wl_named(uid, ip, uid)
}

/// A workload whose (debug) name can be made large to fill flow-control windows.
pub fn wl_named(uid: &str, ip: [u8; 4], name: &str) -> Arc<Resource> {
    Arc::new(
        Resource::workload(&workload::Workload {
            uid: uid.into(),
            name: name.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            ..Default::default()
        })
        .unwrap(),
    )
}

pub fn svc(ns: &str, host: &str, vip: [u8; 4]) -> Arc<Resource> {
    Arc::new(
        Resource::service(&workload::Service {
            name: host.split('.').next().unwrap().into(),
            namespace: ns.into(),
            hostname: host.into(),
            addresses: vec![workload::NetworkAddress {
                network: String::new(),
                address: vip.to_vec(),
                length: None,
            }],
            ..Default::default()
        })
        .unwrap(),
    )
}

pub fn authz(ns: &str, name: &str) -> Arc<Resource> {
    Arc::new(
        Resource::authorization(&security::Authorization {
            name: name.into(),
            namespace: ns.into(),
            ..Default::default()
        })
        .unwrap(),
    )
}

// ------------------------------------------------------------------------------------
// A scripted upstream: each stream opened by the ADS client under test is handed to the
// test, which reads requests and writes responses by hand.

pub struct UpstreamStream {
    pub requests: Streaming<discovery::DeltaDiscoveryRequest>,
    pub responses: mpsc::Sender<Result<discovery::DeltaDiscoveryResponse, Status>>,
    pub metadata: tonic::metadata::MetadataMap,
}

impl UpstreamStream {
    pub async fn recv(&mut self) -> discovery::DeltaDiscoveryRequest {
        tokio::time::timeout(WAIT, self.requests.message())
            .await
            .expect("timed out waiting for a request")
            .expect("request stream error")
            .expect("request stream ended")
    }

    pub async fn send(&self, r: discovery::DeltaDiscoveryResponse) {
        self.responses.send(Ok(r)).await.unwrap();
    }
}

#[derive(Clone)]
struct ScriptedAds {
    streams: mpsc::Sender<UpstreamStream>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for ScriptedAds {
    type DeltaAggregatedResourcesStream =
        ReceiverStream<Result<discovery::DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<discovery::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let metadata = request.metadata().clone();
        let _ = self
            .streams
            .send(UpstreamStream {
                requests: request.into_inner(),
                responses: tx,
                metadata,
            })
            .await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    pub pki: Pki,
    pub streams: mpsc::Receiver<UpstreamStream>,
    pub shutdown: CancellationToken,
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl ScriptedUpstream {
    pub async fn start() -> ScriptedUpstream {
        let pki = Pki::new("upstream");
        let config = server_tls(&pki, None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let incoming = tls_incoming(listener, config, Duration::from_secs(10), shutdown.clone());
        let sd = shutdown.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(
                    AggregatedDiscoveryServiceServer::new(ScriptedAds { streams: tx })
                        .max_encoding_message_size(usize::MAX),
                )
                .serve_with_incoming_shutdown(incoming, sd.cancelled_owned())
                .await
        });
        ScriptedUpstream {
            addr,
            pki,
            streams: rx,
            shutdown,
        }
    }

    pub async fn next_stream(&mut self) -> UpstreamStream {
        tokio::time::timeout(WAIT, self.streams.recv())
            .await
            .expect("timed out waiting for the client to connect")
            .expect("scripted upstream stopped")
    }
}

/// A response carrying raw wire resources.
pub fn response(
    kind: ResourceType,
    nonce: &str,
    resources: Vec<discovery::Resource>,
    removed: &[&str],
) -> discovery::DeltaDiscoveryResponse {
    discovery::DeltaDiscoveryResponse {
        type_url: kind.type_url().into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A wire resource from a validated one.
pub fn wire(r: &Resource) -> discovery::Resource {
    discovery::Resource {
        name: r.name.to_string(),
        version: r.version.to_string(),
        resource: Some(peerd::xds::any::Any {
            type_url: r.kind.type_url().into(),
            value: r.body.clone(),
        }),
        ..Default::default()
    }
}

/// An error with its sources, joined by ": ".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// Polls `check` until it holds or [`WAIT`] passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Collects log-free shared state in tests.
pub type Shared<T> = Arc<Mutex<T>>;
