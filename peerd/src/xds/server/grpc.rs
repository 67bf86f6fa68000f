//! The ADS gRPC service, written by hand instead of tonic's generated one: routing of
//! the two ADS methods, request decoding with tonic's `Streaming`, and a response body
//! that frames each message in a buffer of its own.
//!
//! Why: tonic's response encoder writes every message of a stream into one per-stream
//! buffer and splits each message off it; the emptied buffer still owns the whole
//! allocation, so an idle stream kept a block the size of its largest message (its first
//! response: the whole view) for its lifetime. With every node of a peer cluster
//! subscribed to an export view, that was subscribers × view size. Here each message is
//! encoded into an exactly sized buffer (5-byte gRPC header + message) that h2 frees
//! once written; an idle stream holds no response bytes.
//!
//! It owns only the gRPC framing of the ADS service; it must never change the bytes of a
//! message (the encoding is `prost::Message` of [`discovery::DeltaDiscoveryResponse`],
//! the same the generated service used) nor decide anything about a stream (that is
//! [`super::AdsServer::open_stream`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use http::HeaderMap;
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use tonic::{Request, Status};

use super::AdsServer;
use crate::proto::envoy::service::discovery::v3 as discovery;
use crate::proto::envoy::service::discovery::v3::aggregated_discovery_service_server::SERVICE_NAME;
use crate::xds::codec::PeerdCodec;

const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The gRPC message prefix: compression flag (never set) and big-endian length.
const GRPC_HEADER_BYTES: usize = 5;

/// What a connection task sends to its client, in order; the stream ends after an error.
pub(super) type Responses = mpsc::Receiver<Result<discovery::DeltaDiscoveryResponse, Status>>;

/// `envoy.service.discovery.v3.AggregatedDiscoveryService` for a tonic router.
#[derive(Clone)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> Self {
        AdsService { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

impl tower::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            if req.uri().path() != DELTA_PATH {
                // The state-of-the-world RPC and any unknown method, as tonic answers them.
                return Ok(
                    Status::unimplemented("only DeltaAggregatedResources is served").into_http(),
                );
            }
            if let Some(encoding) = req.headers().get("grpc-encoding")
                && encoding.as_bytes() != b"identity"
            {
                // No compression is enabled, as with the generated service.
                let shown = crate::bounded::truncate_owned(
                    String::from_utf8_lossy(encoding.as_bytes()).into_owned(),
                );
                let mut status = Status::unimplemented(format!(
                    "Content is compressed with `{shown}` which isn't supported"
                ));
                status.metadata_mut().insert(
                    "grpc-accept-encoding",
                    tonic::metadata::MetadataValue::from_static("identity"),
                );
                return Ok(status.into_http());
            }
            let max = server.options.max_message_size;
            let request = Request::from_http(req.map(|body| {
                Streaming::new_request(
                    PeerdCodec::<
                        discovery::DeltaDiscoveryResponse,
                        discovery::DeltaDiscoveryRequest,
                    >::default()
                    .decoder(),
                    body,
                    None,
                    Some(max),
                )
            }));
            Ok(match server.open_stream(request).await {
                Ok(responses) => {
                    let mut response = http::Response::new(tonic::body::Body::new(ResponseBody {
                        responses,
                        max_message_size: max,
                        ended: false,
                    }));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    response
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

/// The response body: one data frame per message, then the grpc-status trailers.
struct ResponseBody {
    responses: Responses,
    max_message_size: usize,
    ended: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let next = std::task::ready!(self.responses.poll_recv(cx));
        let frame = match next.map(|r| r.and_then(|m| frame_message(&m, self.max_message_size))) {
            Some(Ok(data)) => Frame::data(data),
            Some(Err(status)) => self.end(&status),
            None => self.end(&Status::ok("")),
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

impl ResponseBody {
    fn end(&mut self, status: &Status) -> Frame<Bytes> {
        self.ended = true;
        // No more sends are read: the connection task sees its channel closed.
        self.responses.close();
        Frame::trailers(status_trailers(status))
    }
}

/// `message` with its gRPC prefix, in a buffer of exactly that size.
pub(super) fn frame_message(
    message: &discovery::DeltaDiscoveryResponse,
    max_message_size: usize,
) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    if len > max_message_size {
        return Err(Status::out_of_range(format!(
            "encoded response of {len} bytes is over the limit of {max_message_size} bytes"
        )));
    }
    let prefix = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!("a gRPC message cannot hold {len} bytes"))
    })?;
    let mut buf = BytesMut::with_capacity(GRPC_HEADER_BYTES + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    message.encode_raw(&mut buf);
    debug_assert_eq!(buf.len(), GRPC_HEADER_BYTES + len);
    Ok(buf.freeze())
}

/// The trailers ending a stream with `status`.
fn status_trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a message or details that cannot be a header value get here: keep the code.
        trailers.clear();
        let _ = Status::new(status.code(), "").add_header(&mut trailers);
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> discovery::DeltaDiscoveryResponse {
        discovery::DeltaDiscoveryResponse {
            type_url: "type.googleapis.com/istio.workload.Address".into(),
            nonce: "n1".into(),
            system_version_info: "v".into(),
            removed_resources: vec!["a".into(), "b".into()],
            ..Default::default()
        }
    }

    #[test]
    fn frame_is_the_generated_encoding_with_its_prefix_and_nothing_more() {
        let message = response();
        let framed = frame_message(&message, 1 << 20).unwrap();
        // What the generated service's encoder (`xds::codec`) writes: `encode_raw`.
        let generated = message.encode_to_vec();
        assert_eq!(framed[0], 0, "never compressed");
        assert_eq!(
            u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize,
            generated.len()
        );
        assert_eq!(&framed[5..], &generated[..]);
        // Exactly sized: the frame keeps no spare capacity alive.
        assert_eq!(framed.len(), GRPC_HEADER_BYTES + message.encoded_len());
    }

    #[test]
    fn a_response_over_the_limit_is_out_of_range() {
        let message = response();
        let status = frame_message(&message, message.encoded_len() - 1).unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(frame_message(&message, message.encoded_len()).is_ok());
    }

    #[test]
    fn trailers_carry_the_status_code_and_message() {
        let trailers = status_trailers(&Status::unavailable("view closed"));
        let back = Status::from_header_map(&trailers).unwrap();
        assert_eq!(back.code(), tonic::Code::Unavailable);
        assert_eq!(back.message(), "view closed");
        let ok = Status::from_header_map(&status_trailers(&Status::ok(""))).unwrap();
        assert_eq!(ok.code(), tonic::Code::Ok);
    }
}
