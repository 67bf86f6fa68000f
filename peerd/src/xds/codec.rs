//! The gRPC codec of every generated service (`build.rs` sets it with `codec_path`):
//! prost's, except that a large message gets a buffer of exactly its size.
//!
//! Why: tonic encodes each message into one per-stream buffer that grows by doubling
//! and is then split. After a first response to ztunnel (the whole state, tens of MB),
//! the buffer's spare capacity stayed behind in that allocation, the next small pushes
//! were written there, and the stream kept the whole block for its lifetime. Reserving
//! exactly leaves no spare capacity: a message encoded while the large one is still
//! being sent starts a new, small buffer, and the large one is freed once sent (measured:
//! RSS after the churn phase of `bench xds` back from 297 to about 255 MB; ztunnel's
//! first responses of both types go out back to back). A stream whose next message comes
//! only after the large one was sent may still get its block back for reuse: `bytes`
//! reclaims a buffer nobody else holds.
//!
//! What it cannot do: free that per-stream buffer. After the split, the emptied buffer
//! still owns the allocation, so an idle stream keeps a block the size of its largest
//! message. The ADS server therefore frames its responses itself
//! (`xds::server::grpc`); this codec still serves every other service and client.
//!
//! It owns only buffer sizing; it must never change what is encoded or decoded.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder};

/// Messages at least this large are encoded into a buffer of their exact size.
const EXACT_FROM_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct PeerdCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for PeerdCodec<T, U> {
    fn default() -> Self {
        PeerdCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for PeerdCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ExactEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ExactEncoder { _type: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::default().decoder()
    }
}

#[derive(Debug, Clone)]
pub struct ExactEncoder<T> {
    _type: PhantomData<T>,
}

impl<T: Message> Encoder for ExactEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let len = item.encoded_len();
        if len >= EXACT_FROM_BYTES {
            buf.reserve(len);
        }
        // `Message::encode` would compute the length again (a walk over every resource of
        // a full response) only to check capacity, and this buffer grows as needed.
        item.encode_raw(buf);
        Ok(())
    }
}
