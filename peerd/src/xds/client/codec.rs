//! The client stream's gRPC codec: requests are encoded as every service encodes them
//! (`xds::codec`), responses are decoded as [`ReceivedResponse`] by a decoder that keeps
//! the previous message's bytes until the next message is decoded.
//!
//! Why: tonic reads each stream into one receive buffer that grows to the largest message
//! and is never shrunk. Once a response is applied and its bodies copied out (a response
//! below `apply::SHARE_RECEIVE_BUFFER_BYTES`), the buffer is tonic's alone again, and it
//! reuses the whole block for every later message: each upstream stream kept a block the
//! size of its first response for its lifetime (with 50 peers of 2,000 workloads, about
//! 1 MB per peer beside the copied bodies, `cargo xtask bench peers`). While the previous
//! message is still held here, a message that does not fit in the block's unused tail
//! makes tonic move to a new buffer sized for that message, and the old block is freed
//! when its message is dropped here (or when the last resource sliced from it goes).
//!
//! It owns only where received bytes live; it must never change what is decoded.

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};

use crate::proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use crate::xds::codec::{ExactEncoder, PeerdCodec};
use crate::xds::received::ReceivedResponse;

/// The delta-ADS client's codec.
#[derive(Debug, Default)]
pub struct ClientCodec;

impl Codec for ClientCodec {
    type Encode = DeltaDiscoveryRequest;
    type Decode = ReceivedResponse;
    type Encoder = ExactEncoder<DeltaDiscoveryRequest>;
    type Decoder = ReceiveDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        PeerdCodec::<DeltaDiscoveryRequest, ReceivedResponse>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ReceiveDecoder::default()
    }
}

/// Decodes responses, holding the last message's bytes until the next one.
#[derive(Debug, Default)]
pub struct ReceiveDecoder {
    previous: Option<Bytes>,
}

impl Decoder for ReceiveDecoder {
    type Item = ReceivedResponse;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<ReceivedResponse>, Status> {
        self.decode_from(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl ReceiveDecoder {
    /// Decodes the whole of `buf` (tonic's view of one message in its receive buffer).
    fn decode_from(&mut self, buf: &mut impl Buf) -> Result<ReceivedResponse, prost::DecodeError> {
        // A slice of the receive buffer (no copy); the resources are slices of it.
        let message = buf.copy_to_bytes(buf.remaining());
        let decoded = ReceivedResponse::decode(message.clone())?;
        // The previous block is released only now: tonic has already moved to another
        // buffer if this message did not fit in the previous one's tail.
        self.previous = Some(message);
        Ok(decoded)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::xds::any::Any;
    use crate::xds::response::DeltaDiscoveryResponse;

    use crate::proto::envoy::service::discovery::v3::Resource as WireResource;

    fn response(nonce: &str, body: usize) -> Vec<u8> {
        DeltaDiscoveryResponse {
            type_url: "t".into(),
            nonce: nonce.into(),
            resources: vec![WireResource {
                name: "a".into(),
                version: "1".into(),
                resource: Some(Any {
                    type_url: "t".into(),
                    value: Bytes::from(vec![7u8; body]),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// What tonic does with its receive buffer (`BytesMut`): reserve, put the message,
    /// hand it to the decoder (tonic's `DecodeBuf::copy_to_bytes` is the buffer's).
    fn receive(decoder: &mut ReceiveDecoder, into: &mut BytesMut, message: &[u8]) -> String {
        into.reserve(message.len());
        into.put_slice(message);
        decoder.decode_from(into).unwrap().nonce
    }

    #[test]
    fn after_a_large_message_the_receive_buffer_does_not_keep_its_block() {
        let mut decoder = ReceiveDecoder::default();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        assert_eq!(
            receive(&mut decoder, &mut buf, &response("n1", 1 << 20)),
            "n1"
        );
        assert_eq!(receive(&mut decoder, &mut buf, &response("n2", 100)), "n2");
        // Without the held message the buffer reclaims the whole 1 MiB block for good.
        assert!(
            buf.capacity() < 64 * 1024,
            "receive buffer kept {} bytes",
            buf.capacity()
        );
        assert_eq!(
            decoder.previous.as_ref().map(Bytes::len),
            Some(response("n2", 100).len())
        );
    }

    #[test]
    fn decodes_what_was_sent_and_rejects_a_malformed_message() {
        let mut decoder = ReceiveDecoder::default();
        let sent = response("n1", 10);
        let got = decoder.decode_from(&mut Bytes::from(sent.clone())).unwrap();
        assert_eq!(got.encode_to_vec(), sent);
        let mut bad = Bytes::from_static(&[0x22, 0x05, b'a']);
        assert!(decoder.decode_from(&mut bad).is_err());
    }
}
