//! `google.protobuf.Any` with `value` as [`Bytes`], used by every generated message in
//! place of `prost_types::Any` (see `build.rs`).
//!
//! Why: a resource body is `Any.value`. With `Bytes`, decoding a large response slices
//! the bodies out of tonic's receive buffer instead of copying each one, and encoding a
//! response shares the held bodies instead of copying them: at 100k workloads each copy
//! is ~40 MB of allocation on the sync path. Wire format is unchanged (fields 1 and 2).

use bytes::Bytes;

#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}
