//! One session of the delta-ADS client: dial with TLS, open the stream with the
//! bearer token and extra headers, send the initial requests (offering what the store
//! already holds in `initial_resource_versions`), then loop on responses until the
//! server closes, the stream fails, federation withdraws the origin the session offered
//! (its responses would then be diffs against state that is gone), or the client is
//! cancelled.
//!
//! It owns the stream's lifetime and the "no response in time" warning. It must never
//! touch the store directly (responses go through [`AdsClient::handle_response`]) and
//! never log the bearer token.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataKey, MetadataValue};

use crate::proto::envoy::service::discovery::v3 as discovery;
use crate::store::Origin;
use crate::xds::offload;
use crate::xds::received::ReceivedResponse;
use crate::xds::transport::TlsConnectorService;
use crate::xds::types::ResourceType;

use super::codec::ClientCodec;
use super::{
    AdsClient, ClientError, FailureKind, TokenSource, classify_status, classify_transport,
};

/// How a session that did not fail ended.
pub(super) enum SessionEnd {
    Cancelled,
    ServerClosed,
}

impl AdsClient {
    /// The `authorization` header value, read now (files rotate).
    fn bearer_header(&self) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, ClientError> {
        let token = match &self.opts.token {
            None => return Ok(None),
            Some(TokenSource::Literal(t)) => t.trim().to_string(),
            Some(TokenSource::File(path)) => std::fs::read_to_string(path)
                .map_err(|e| ClientError {
                    kind: FailureKind::Config,
                    message: format!("cannot read bearer token file {}: {e}", path.display()),
                    tls: None,
                })?
                .trim()
                .to_string(),
        };
        MetadataValue::try_from(format!("Bearer {token}"))
            .map(|mut value| {
                // Never indexed by HPACK, never shown by `Debug`.
                value.set_sensitive(true);
                Some(value)
            })
            .map_err(|_| ClientError {
                kind: FailureKind::Config,
                message: "bearer token contains characters not allowed in a header".to_string(),
                tls: None,
            })
    }

    fn initial_request(
        &self,
        held: &Origin,
        kind: ResourceType,
    ) -> discovery::DeltaDiscoveryRequest {
        let held = held.view.snapshot();
        let initial_resource_versions: HashMap<String, String> = held
            .resources(kind)
            .iter()
            .map(|(name, r)| (name.to_string(), r.version.to_string()))
            .collect();
        discovery::DeltaDiscoveryRequest {
            node: Some(self.opts.node.clone()),
            type_url: kind.type_url().to_string(),
            initial_resource_versions,
            ..Default::default()
        }
    }

    pub(super) async fn session(
        &self,
        cancel: &CancellationToken,
        got_response: &mut bool,
    ) -> Result<SessionEnd, ClientError> {
        let opts = &self.opts;
        let peer = opts.origin.clone();
        let bearer = self.bearer_header()?;
        let connector = TlsConnectorService::new(
            opts.endpoint.clone(),
            &opts.server_name,
            Arc::clone(&opts.tls),
            opts.connect_timeout,
        )
        .map_err(|e| ClientError {
            kind: FailureKind::Config,
            message: e.to_string(),
            tls: None,
        })?;
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("https://{}", opts.endpoint))
                .map_err(|e| ClientError {
                    kind: FailureKind::Config,
                    message: format!("invalid upstream endpoint {:?}: {e}", opts.endpoint),
                    tls: None,
                })?
                .http2_keep_alive_interval(opts.keepalive_interval)
                .keep_alive_timeout(opts.keepalive_timeout)
                .keep_alive_while_idle(true);
        let channel = tokio::select! {
            _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
            c = endpoint.connect_with_connector(connector) => c.map_err(|e| classify_transport(&e, &opts.endpoint))?,
        };
        let mut client = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(opts.max_message_size)
            .max_encoding_message_size(opts.max_message_size);

        // The origin whose versions this session offers: every response is applied to it
        // only while federation has not withdrawn it (the responses are diffs against it).
        let held = self.store.origin(self.origin());
        let (tx, rx) = mpsc::channel::<discovery::DeltaDiscoveryRequest>(16);
        for kind in ResourceType::ALL {
            let req = self.initial_request(&held, kind);
            tracing::debug!(origin = %peer, %kind, held = req.initial_resource_versions.len(), "xds client: initial request");
            // The receiver is alive (held below); capacity 16 > 2.
            let _ = tx.send(req).await;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(value) = bearer {
            request.metadata_mut().insert("authorization", value);
        }
        for (name, value) in &opts.headers {
            let key = MetadataKey::from_bytes(name.as_bytes()).map_err(|_| ClientError {
                kind: FailureKind::Config,
                message: format!("invalid header name {name:?}"),
                tls: None,
            })?;
            let value = MetadataValue::try_from(value.as_str()).map_err(|_| ClientError {
                kind: FailureKind::Config,
                message: format!("invalid value for header {name:?}"),
                tls: None,
            })?;
            request.metadata_mut().insert(key, value);
        }
        let response = tokio::select! {
            _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
            r = open_delta_stream(&mut client, request) => r.map_err(|s| classify_status(&s, &opts.endpoint))?,
        };
        let mut inbound = response.into_inner();
        self.stats.connected();
        self.set_failure(None);
        metrics::counter!("peerd_xds_client_connects_total", "peer_cluster" => peer.clone())
            .increment(1);
        metrics::gauge!("peerd_xds_client_connected", "peer_cluster" => peer.clone()).set(1.0);
        tracing::info!(origin = %peer, endpoint = %opts.endpoint, "xds client: stream established");

        let mut synced = [false; 2];
        let silence = tokio::time::sleep_until(Instant::now() + opts.response_timeout);
        tokio::pin!(silence);
        let mut silence_reported = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
                _ = &mut silence, if !silence_reported && !synced.iter().all(|s| *s) => {
                    silence_reported = true;
                    let missing: Vec<&str> = ResourceType::ALL
                        .iter()
                        .filter(|t| !synced[t.index()])
                        .map(|t| t.short_name())
                        .collect();
                    let message = format!(
                        "upstream {} sent no response for {} within {:?} of the initial requests",
                        opts.endpoint,
                        missing.join(", "),
                        opts.response_timeout
                    );
                    tracing::warn!(origin = %peer, "xds client: {message}; keeping the stream open");
                    metrics::counter!("peerd_xds_client_errors_total", "peer_cluster" => peer.clone(), "reason" => FailureKind::NoResponse.as_str())
                        .increment(1);
                    self.stats.set_last_error(message.clone());
                    self.set_failure(Some(ClientError {
                        kind: FailureKind::NoResponse,
                        message,
                        tls: None,
                    }));
                }
                msg = inbound.message() => match msg {
                    Ok(Some(resp)) => {
                        *got_response = true;
                        // Validating a full state (100k resources) takes a good part of a
                        // second: not on the runtime worker.
                        let heavy = resp.resources.len() >= offload::HEAVY_STEP;
                        let reply = offload::run(heavy, || self.handle_response(&held, resp, &mut synced))
                            .map_err(|withdrawn| ClientError {
                                kind: FailureKind::Withdrawn,
                                message: withdrawn.to_string(),
                                tls: None,
                            })?;
                        if synced.iter().all(|s| *s) && silence_reported {
                            silence_reported = false;
                            self.stats.set_last_error("");
                            self.set_failure(None);
                        }
                        if tx.send(reply).await.is_err() {
                            return Err(ClientError {
                                kind: FailureKind::Stream,
                                message: format!("request stream to {} closed", opts.endpoint),
                                tls: None,
                            });
                        }
                    }
                    Ok(None) => return Ok(SessionEnd::ServerClosed),
                    Err(status) => return Err(classify_status(&status, &opts.endpoint)),
                },
            }
        }
    }
}

/// Opens `DeltaAggregatedResources` as the generated client does, except that responses
/// are decoded as [`ReceivedResponse`] (resources parsed while they are applied).
async fn open_delta_stream(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    request: tonic::Request<ReceiverStream<discovery::DeltaDiscoveryRequest>>,
) -> Result<tonic::Response<tonic::Streaming<ReceivedResponse>>, tonic::Status> {
    const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
    const METHOD: &str = "DeltaAggregatedResources";
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
    );
    let mut request = tonic::IntoStreamingRequest::into_streaming_request(request);
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new(SERVICE, METHOD));
    grpc.streaming(request, path, ClientCodec).await
}
