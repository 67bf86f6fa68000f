//! The `peerd.debug.v1.Debug` gRPC service, with `grpc.health.v1.Health` (SERVING once
//! peerd is ready) and server reflection, on the debug listener (127.0.0.1:15041).
//!
//! It owns the read-only operator view of a running peerd. It must never change state
//! (no writes to the store, views or streams), and never hold a lock across an await:
//! every answer is built from snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::admin::Readiness;
use crate::bounded::truncate_for_display;
use crate::config::Config;
use crate::debug::event_log::EventLog;
use crate::debug::source::PeerSource;
use crate::debug::{convert, listing, redact};
use crate::federation::Federation;
use crate::proto::debug::v1 as api;
use crate::proto::debug::v1::debug_server::{Debug, DebugServer};
use crate::store::{Store, StoreEvent};
use crate::view::View;
use crate::xds::server::Subscribers;
use crate::xds::stats::{UpstreamList, unix_ms};
use crate::xds::types::ResourceType;

/// The fully qualified name of the debug service (reflection, health).
pub const SERVICE_NAME: &str = "peerd.debug.v1.Debug";

/// How often readiness is re-read for the gRPC health status (readiness has no
/// notification of its own).
const HEALTH_POLL: Duration = Duration::from_millis(200);
/// Events buffered per Watch stream before the slowest watcher starts losing them.
const WATCH_QUEUE: usize = 256;

/// Everything the debug API reads. Clones share it.
#[derive(Clone)]
pub struct DebugState {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub federation: Arc<Federation>,
    pub subscribers: Arc<Subscribers>,
    pub readiness: Arc<Readiness>,
    /// Stats of each upstream stream, by origin name.
    pub upstreams: Arc<UpstreamList>,
    pub peers: Arc<dyn PeerSource>,
    /// The view peers are served, when this peerd exports one.
    pub export: Option<Arc<View>>,
    pub started: SystemTime,
    /// The probe mode in effect; `None` where no probes run (then the configured mode is
    /// shown).
    pub probe_mode: Option<crate::probe::mode::ProbeMode>,
    pub xds_address: String,
    pub debug_address: String,
}

/// The service implementation.
#[derive(Clone)]
pub struct DebugService {
    state: Arc<DebugState>,
    /// Recent events, recorded from the start of [`serve`].
    events: Arc<EventLog>,
}

impl DebugService {
    pub fn new(state: DebugState) -> Self {
        DebugService {
            state: Arc::new(state),
            events: Arc::new(EventLog::new()),
        }
    }

    /// The effective configuration as text, URL credentials redacted.
    pub fn config_dump(&self) -> api::ConfigDump {
        api::ConfigDump {
            text: redact::config_text(&self.state.config),
        }
    }

    /// The recent events (see [`EventLog`]).
    pub fn recent_events(&self) -> api::ListEventsResponse {
        self.events.snapshot()
    }

    /// Records every event `Watch` would stream (without ACKs) into the history until
    /// `cancel` fires.
    fn spawn_event_recorder(&self, cancel: CancellationToken) {
        let sources = self.watch_sources();
        let (tx, mut rx) = mpsc::channel(WATCH_QUEUE);
        tokio::spawn(DebugService::forward_events(sources, false, tx));
        let log = Arc::clone(&self.events);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    event = rx.recv() => match event {
                        Some(Ok(event)) => log.record(event),
                        Some(Err(_)) | None => return,
                    },
                }
            }
        });
    }

    fn watch_sources(&self) -> WatchSources {
        WatchSources {
            peer_events: self.state.peers.events(),
            store_events: self.state.store.subscribe(),
            acks: self.state.subscribers.ack_events(),
        }
    }

    fn view_by_label(&self, label: &str) -> Option<Arc<View>> {
        match label {
            "merged" | "downstream" => Some(Arc::clone(self.state.federation.merged())),
            "export" => self.state.export.clone(),
            _ => None,
        }
    }

    /// `(view, origin name)` for a request's `view` field; the origin name is `None` for
    /// served views (each resource's origin is looked up).
    fn resolve_view(&self, name: &str) -> Result<(Arc<View>, Option<String>), Status> {
        let name = if name.is_empty() { "merged" } else { name };
        match name {
            "merged" => Ok((Arc::clone(self.state.federation.merged()), None)),
            "export" => self
                .state
                .export
                .clone()
                .map(|v| (v, Some(self.state.config.cluster.clone())))
                .ok_or_else(|| Status::not_found("this peerd serves no export view")),
            origin => self
                .state
                .store
                .get(origin)
                .map(|o| (Arc::clone(&o.view), Some(origin.to_string())))
                .ok_or_else(|| {
                    let known: Vec<String> = self
                        .state
                        .store
                        .origins()
                        .iter()
                        .map(|o| o.name.to_string())
                        .collect();
                    Status::not_found(format!(
                        "no view {:?}: use \"merged\", \"export\" or an origin ({})",
                        truncate_for_display(origin),
                        known.join(", ")
                    ))
                }),
        }
    }

    pub fn server_info(&self) -> api::ServerInfo {
        let s = &self.state;
        let pending: Vec<String> = match s.readiness.check() {
            Ok(()) => Vec::new(),
            Err(gates) => gates.iter().map(|g| g.to_string()).collect(),
        };
        let merged = s.federation.merged().snapshot();
        api::ServerInfo {
            cluster: s.config.cluster.clone(),
            network: s.config.network.clone(),
            version: crate::version::VERSION.to_string(),
            ready: pending.is_empty(),
            probe_mode: match &s.probe_mode {
                Some(mode) => mode.name().to_string(),
                None => format!("{:?}", s.config.probe.mode).to_ascii_lowercase(),
            },
            probe_mode_reason: match &s.probe_mode {
                Some(crate::probe::mode::ProbeMode::Ebpf { attach }) => {
                    format!("eBPF connect probes attached via {attach}")
                }
                Some(crate::probe::mode::ProbeMode::Userspace { reason }) => reason.clone(),
                None if s.config.probe.enabled => "configured".into(),
                None => "probing disabled".into(),
            },
            started_unix_ms: unix_ms(s.started),
            flat_networks: s.config.flat_networks,
            pending_gates: pending,
            trust_domain: s.config.trust_domain.clone(),
            merged_version: merged.version,
            merged: Some(convert::counts(convert::view_counts(merged.counts()))),
            xds_address: s.xds_address.clone(),
            debug_address: s.debug_address.clone(),
            metrics_address: s.config.listeners.metrics.to_string(),
            dropped_waypoints: s
                .federation
                .exporter()
                .dropped_waypoints()
                .iter()
                .map(|d| format!("{} -> {} ({})", d.resource, d.target, d.reason.as_str()))
                .collect(),
        }
    }

    pub fn peers(&self) -> api::ListPeersResponse {
        api::ListPeersResponse {
            peers: self.state.peers.peers().iter().map(convert::peer).collect(),
        }
    }

    pub fn upstreams(&self) -> api::ListUpstreamsResponse {
        let upstreams = self
            .state
            .upstreams
            .snapshot()
            .iter()
            .map(|(name, stats)| {
                let held = self
                    .state
                    .store
                    .get(name)
                    .map(|o| convert::view_counts(o.view.snapshot().counts()));
                convert::upstream(&stats.snapshot(), held)
            })
            .collect();
        api::ListUpstreamsResponse { upstreams }
    }

    pub fn subscribers(&self) -> api::ListSubscribersResponse {
        let mut versions: BTreeMap<String, Option<u64>> = BTreeMap::new();
        let subscribers = self
            .state
            .subscribers
            .list()
            .iter()
            .map(|s| {
                let version = *versions.entry(s.view_label.clone()).or_insert_with(|| {
                    self.view_by_label(&s.view_label)
                        .map(|v| v.snapshot().version)
                });
                convert::subscriber(s, version)
            })
            .collect();
        api::ListSubscribersResponse { subscribers }
    }

    pub fn resources(
        &self,
        view: &str,
        kind: &str,
        include_json: bool,
    ) -> Result<api::ListResourcesResponse, Status> {
        self.list_resources_filtered(&api::ListResourcesRequest {
            view: view.into(),
            r#type: kind.into(),
            include_json,
            ..api::ListResourcesRequest::default()
        })
    }

    /// One `ListResources` call: the filters run on each resource's summary first, so
    /// only matches are decoded (`include_json`, `include_summary`) and sent.
    pub fn list_resources_filtered(
        &self,
        request: &api::ListResourcesRequest,
    ) -> Result<api::ListResourcesResponse, Status> {
        let filter = listing::Filter::from_request(request).map_err(Status::invalid_argument)?;
        let (view, origin) = self.resolve_view(&request.view)?;
        let kinds = parse_kinds(&request.r#type)?;
        let limit = match request.limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let snapshot = view.snapshot();
        let mut resources = Vec::new();
        let mut matched = 0u64;
        for kind in kinds {
            for (name, r) in snapshot.resources(kind).iter() {
                let known_origin = filter
                    .needs_origin(r)
                    .then(|| self.origin_of(origin.as_deref(), kind, name));
                if !filter.matches(r, known_origin.as_deref()) {
                    continue;
                }
                matched += 1;
                if resources.len() >= limit {
                    continue;
                }
                let origin =
                    known_origin.unwrap_or_else(|| self.origin_of(origin.as_deref(), kind, name));
                let mut resource = convert::resource(r, &origin, request.include_json);
                if request.include_summary {
                    resource.summary = Some(listing::summary(r));
                }
                resources.push(resource);
            }
        }
        Ok(api::ListResourcesResponse { resources, matched })
    }

    fn origin_of(&self, fixed: Option<&str>, kind: ResourceType, name: &str) -> String {
        match fixed {
            Some(o) => o.to_string(),
            None => self
                .state
                .federation
                .origin_of(kind, name)
                .map(|o| o.to_string())
                .unwrap_or_default(),
        }
    }

    pub fn resource(&self, view: &str, kind: &str, name: &str) -> Result<api::Resource, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("name: required"));
        }
        let (view, origin) = self.resolve_view(view)?;
        let snapshot = view.snapshot();
        for kind in parse_kinds(kind)? {
            let found = match kind {
                // On-demand keys (`network/IP`, `ns/hostname`) work too.
                ResourceType::Address => snapshot.resolve_address_key(name),
                ResourceType::Authorization => snapshot.get(kind, name),
            };
            if let Some(r) = found {
                let origin = self.origin_of(origin.as_deref(), kind, &r.name);
                return Ok(convert::resource(r, &origin, true));
            }
        }
        Err(Status::not_found(format!(
            "no resource {:?} in view {:?}",
            truncate_for_display(name),
            view.label()
        )))
    }

    /// Everything as one JSON document.
    pub fn dump(&self, include_resources: bool) -> Result<serde_json::Value, String> {
        let mut doc = serde_json::json!({
            "serverInfo": convert::message_to_json(&self.server_info(), "peerd.debug.v1.ServerInfo")?,
            "peers": convert::list_field(convert::message_to_json(&self.peers(), "peerd.debug.v1.ListPeersResponse")?, "peers"),
            "upstreams": convert::list_field(convert::message_to_json(&self.upstreams(), "peerd.debug.v1.ListUpstreamsResponse")?, "upstreams"),
            "subscribers": convert::list_field(convert::message_to_json(&self.subscribers(), "peerd.debug.v1.ListSubscribersResponse")?, "subscribers"),
        });
        let mut views = vec!["merged".to_string()];
        if self.state.export.is_some() {
            views.push("export".into());
        }
        views.extend(
            self.state
                .store
                .origins()
                .iter()
                .map(|o| o.name.to_string()),
        );
        let mut rendered = serde_json::Map::new();
        for view in views {
            let list = self
                .resources(&view, "", include_resources)
                .map_err(|s| s.message().to_string())?;
            let entries: Vec<serde_json::Value> = list
                .resources
                .iter()
                .map(|r| {
                    let mut entry = serde_json::json!({
                        "name": r.name,
                        "type": ResourceType::from_type_url(&r.type_url).map(|t| t.short_name()).unwrap_or_default(),
                        "version": r.version,
                        "origin": r.origin,
                        "sizeBytes": r.size_bytes,
                    });
                    if include_resources {
                        entry["resource"] = serde_json::from_str(&r.json)
                            .unwrap_or_else(|_| serde_json::Value::String(r.json.clone()));
                    }
                    entry
                })
                .collect();
            rendered.insert(view, serde_json::Value::Array(entries));
        }
        doc["views"] = serde_json::Value::Object(rendered);
        Ok(doc)
    }

    /// Forwards peer events, store syncs and downstream NACKs (and ACKs on request) to
    /// `tx` until the receiver goes away (or a source closes: `None`).
    async fn forward_events(
        mut sources: WatchSources,
        include_acks: bool,
        tx: mpsc::Sender<Result<api::Event, Status>>,
    ) -> Option<()> {
        let WatchSources {
            peer_events,
            store_events,
            acks,
        } = &mut sources;
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return Some(()),
                e = peer_events.recv() => match e {
                    Ok(e) => Some(convert::event(&e)),
                    Err(e) => lagged(e, "peer")?,
                },
                e = store_events.recv() => match e {
                    Ok(StoreEvent::Synced { origin, kind, .. }) => Some(api::Event {
                        unix_ms: unix_ms(SystemTime::now()),
                        kind: "synced".into(),
                        peer: origin.to_string(),
                        message: format!("{origin}: first full {kind} response handled"),
                        r#type: kind.short_name().into(),
                        ..api::Event::default()
                    }),
                    Ok(StoreEvent::Removed { origin }) => Some(api::Event {
                        unix_ms: unix_ms(SystemTime::now()),
                        kind: "origin_removed".into(),
                        peer: origin.to_string(),
                        message: format!("{origin}: dropped with all its resources"),
                        ..api::Event::default()
                    }),
                    Ok(StoreEvent::Unsynced { origin, .. }) => Some(api::Event {
                        unix_ms: unix_ms(SystemTime::now()),
                        kind: "unsynced".into(),
                        peer: origin.to_string(),
                        message: format!("{origin}: stream ended; its last state is kept until it syncs again"),
                        ..api::Event::default()
                    }),
                    Ok(StoreEvent::Changed { .. }) => None,
                    Err(e) => lagged(e, "store")?,
                },
                e = acks.recv() => match e {
                    Ok(ack) if ack.nack.is_some() || include_acks => Some(api::Event {
                        unix_ms: unix_ms(ack.at),
                        kind: if ack.nack.is_some() { "nack" } else { "ack" }.into(),
                        peer: String::new(),
                        message: match &ack.nack {
                            Some(m) => format!("{} NACKed {} (view {} version {}): {m}", ack.node, ack.kind, ack.view_label, ack.view_version),
                            None => format!("{} ACKed {} (view {} version {})", ack.node, ack.kind, ack.view_label, ack.view_version),
                        },
                        node_id: ack.node.to_string(),
                        r#type: ack.kind.short_name().into(),
                        ..api::Event::default()
                    }),
                    Ok(_) => None,
                    Err(e) => lagged(e, "ack")?,
                },
            };
            if let Some(event) = event {
                tx.send(Ok(event)).await.ok()?;
            }
        }
    }
}

/// The receivers one Watch call follows, subscribed before the call answers.
struct WatchSources {
    peer_events: tokio::sync::broadcast::Receiver<crate::debug::source::PeerEvent>,
    store_events: tokio::sync::broadcast::Receiver<StoreEvent>,
    acks: tokio::sync::broadcast::Receiver<crate::xds::server::AckEvent>,
}

/// A lagged receiver becomes a `lagged` event; a closed one ends the watch (`None` via
/// `?` in an `Option<Option<_>>` context).
fn lagged(e: RecvError, what: &str) -> Option<Option<api::Event>> {
    match e {
        RecvError::Lagged(n) => Some(Some(api::Event {
            unix_ms: unix_ms(SystemTime::now()),
            kind: "lagged".into(),
            message: format!("watch fell behind: {n} {what} events lost"),
            ..api::Event::default()
        })),
        RecvError::Closed => None,
    }
}

/// `""` = both types; otherwise a full type URL or a short name.
fn parse_kinds(kind: &str) -> Result<Vec<ResourceType>, Status> {
    if kind.is_empty() {
        return Ok(ResourceType::ALL.to_vec());
    }
    ResourceType::parse_loose(kind)
        .map(|t| vec![t])
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "type: unknown {:?} (use a type URL, \"address\" or \"authorization\")",
                truncate_for_display(kind)
            ))
        })
}

#[tonic::async_trait]
impl Debug for DebugService {
    async fn get_server_info(
        &self,
        _: Request<api::GetServerInfoRequest>,
    ) -> Result<Response<api::ServerInfo>, Status> {
        Ok(Response::new(self.server_info()))
    }

    async fn list_peers(
        &self,
        _: Request<api::ListPeersRequest>,
    ) -> Result<Response<api::ListPeersResponse>, Status> {
        Ok(Response::new(self.peers()))
    }

    async fn list_upstreams(
        &self,
        _: Request<api::ListUpstreamsRequest>,
    ) -> Result<Response<api::ListUpstreamsResponse>, Status> {
        Ok(Response::new(self.upstreams()))
    }

    async fn list_subscribers(
        &self,
        _: Request<api::ListSubscribersRequest>,
    ) -> Result<Response<api::ListSubscribersResponse>, Status> {
        Ok(Response::new(self.subscribers()))
    }

    async fn list_resources(
        &self,
        request: Request<api::ListResourcesRequest>,
    ) -> Result<Response<api::ListResourcesResponse>, Status> {
        self.list_resources_filtered(request.get_ref())
            .map(Response::new)
    }

    async fn get_resource(
        &self,
        request: Request<api::GetResourceRequest>,
    ) -> Result<Response<api::Resource>, Status> {
        let r = request.into_inner();
        self.resource(&r.view, &r.r#type, &r.name)
            .map(Response::new)
    }

    type WatchStream = ReceiverStream<Result<api::Event, Status>>;

    async fn watch(
        &self,
        request: Request<api::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let include_acks = request.into_inner().include_acks;
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        // Subscribe before answering, so nothing after the call is missed.
        let sources = self.watch_sources();
        let ready = tx.clone();
        tokio::spawn(async move {
            DebugService::forward_events(sources, include_acks, tx).await;
        });
        // A first event says the watch is live (clients wait for it before acting).
        let _ = ready
            .send(Ok(api::Event {
                unix_ms: unix_ms(SystemTime::now()),
                kind: "watching".into(),
                message: format!("watching peerd {}", self.state.config.cluster),
                ..api::Event::default()
            }))
            .await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn dump(
        &self,
        request: Request<api::DumpRequest>,
    ) -> Result<Response<api::DumpResponse>, Status> {
        let doc = self
            .dump(request.into_inner().include_resources)
            .map_err(Status::internal)?;
        Ok(Response::new(api::DumpResponse {
            json: doc.to_string(),
        }))
    }

    async fn get_config(
        &self,
        _: Request<api::GetConfigRequest>,
    ) -> Result<Response<api::ConfigDump>, Status> {
        Ok(Response::new(self.config_dump()))
    }

    async fn list_events(
        &self,
        _: Request<api::ListEventsRequest>,
    ) -> Result<Response<api::ListEventsResponse>, Status> {
        Ok(Response::new(self.recent_events()))
    }
}

/// Serves Debug + Health + reflection on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    service: DebugService,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let local = listener.local_addr().ok();
    service.spawn_event_recorder(cancel.clone());
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in ["", SERVICE_NAME] {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    {
        let readiness = Arc::clone(&service.state.readiness);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut serving = false;
            loop {
                let ready = readiness.check().is_ok();
                if ready != serving {
                    serving = ready;
                    let status = if ready {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    for name in ["", SERVICE_NAME] {
                        reporter.set_service_status(name, status).await;
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(HEALTH_POLL) => {}
                }
            }
        });
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(SERVICE_NAME)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    // Each build adds only its own version's descriptors: both versions are listed, so
    // each server also gets the other's, and every listed name resolves on either.
    let reflection_v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;
    tracing::info!(address = ?local, "debug API listening");
    tonic::transport::Server::builder()
        .add_service(
            DebugServer::new(service)
                .max_encoding_message_size(crate::debug::client::MAX_MESSAGE_BYTES),
        )
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), cancel.cancelled_owned())
        .await
        .map_err(|e| anyhow::anyhow!("debug API on {local:?} failed: {e}"))
}

#[cfg(test)]
mod tests;
