//! `envoy.service.discovery.v3.DeltaDiscoveryResponse`, written by hand (mapped in by
//! `build.rs` with `extern_path`) so a server can encode the resources it holds straight
//! into the outgoing buffer.
//!
//! Why: the generated message owns a `String` name, version and type URL per resource.
//! A first response to ztunnel holds every resource (100k and more) in one message, so
//! building it that way cost three allocations and copies per resource and some 30 MB
//! that lived only until the encoder ran. [`HeldResources`] borrows nothing and copies
//! nothing: it shares the served names and resources and writes them as field 2.
//!
//! It owns the wire format of this one message and must never change it: the encoding
//! is exactly the generated one's (the tests compare them byte for byte), and decoding
//! puts every resource in `resources`, so a receiver never sees `held`.

use std::fmt;
use std::sync::Arc;

use bytes::{Buf, BufMut};
use prost::DecodeError;
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, message,
    skip_field, string,
};

use crate::proto::envoy::service::discovery::v3::Resource as WireResource;
use crate::xds::resource::Resource;

const SYSTEM_VERSION_INFO: u32 = 1;
pub(crate) const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;

pub(crate) const RESOURCE_VERSION: u32 = 1;
pub(crate) const RESOURCE_ANY: u32 = 2;
pub(crate) const RESOURCE_NAME: u32 = 3;
pub(crate) const ANY_TYPE_URL: u32 = 1;
pub(crate) const ANY_VALUE: u32 = 2;

#[derive(Clone, PartialEq, Default, Debug)]
pub struct DeltaDiscoveryResponse {
    pub system_version_info: String,
    /// Resources as decoded (every received one) or built one by one.
    pub resources: Vec<WireResource>,
    pub type_url: String,
    pub nonce: String,
    pub removed_resources: Vec<String>,
    /// More resources for field 2, encoded after `resources` from what a server holds.
    /// Decoding never fills it.
    pub held: HeldResources,
}

/// Served resources under their wire names, encoded as `Resource { version, resource:
/// Any { type_url, value: body }, name }` without building that message.
#[derive(Clone, Default)]
pub struct HeldResources {
    type_url: &'static str,
    entries: Vec<(Arc<str>, Arc<Resource>)>,
    /// The entries already encoded (see [`HeldResources::pre_encode`]).
    encoded: Option<bytes::Bytes>,
}

impl HeldResources {
    /// `entries` (wire name → resource) of one type, whose URL is `type_url`.
    pub fn new(type_url: &'static str, entries: Vec<(Arc<str>, Arc<Resource>)>) -> Self {
        HeldResources {
            type_url,
            entries,
            encoded: None,
        }
    }

    /// Encodes the entries now, so the gRPC encoder (on the runtime worker that polls the
    /// connection) only copies them: a caller encodes a full state of tens of MB where
    /// it may block (see `xds::offload`). The bytes are exactly what `encode` writes.
    pub fn pre_encode(&mut self) {
        let mut buf = bytes::BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        self.encoded = Some(buf.freeze());
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The generated message of one entry, to compare encodings with.
    #[cfg(test)]
    fn to_wire(&self, name: &str, r: &Resource) -> WireResource {
        WireResource {
            version: r.version.to_string(),
            resource: Some(crate::xds::any::Any {
                type_url: self.type_url.to_string(),
                value: r.body.clone(),
            }),
            name: name.to_string(),
            ..Default::default()
        }
    }

    fn any_len(&self, r: &Resource) -> usize {
        str_field_len(ANY_TYPE_URL, self.type_url) + bytes_field_len(ANY_VALUE, r.body.len())
    }

    fn entry_len(&self, name: &str, r: &Resource) -> usize {
        let any = self.any_len(r);
        str_field_len(RESOURCE_VERSION, &r.version)
            + key_len(RESOURCE_ANY)
            + encoded_len_varint(any as u64)
            + any
            + str_field_len(RESOURCE_NAME, name)
    }

    fn encoded_len(&self) -> usize {
        if let Some(encoded) = &self.encoded {
            return encoded.len();
        }
        self.entries
            .iter()
            .map(|(name, r)| {
                let len = self.entry_len(name, r);
                key_len(RESOURCES) + encoded_len_varint(len as u64) + len
            })
            .sum()
    }

    fn encode(&self, buf: &mut impl BufMut) {
        if let Some(encoded) = &self.encoded {
            buf.put_slice(encoded);
            return;
        }
        for (name, r) in &self.entries {
            encode_key(RESOURCES, WireType::LengthDelimited, buf);
            encode_varint(self.entry_len(name, r) as u64, buf);
            put_str_field(RESOURCE_VERSION, &r.version, buf);
            // `Some(Any)` is always written, even when empty, as prost writes it.
            encode_key(RESOURCE_ANY, WireType::LengthDelimited, buf);
            encode_varint(self.any_len(r) as u64, buf);
            put_str_field(ANY_TYPE_URL, self.type_url, buf);
            if !r.body.is_empty() {
                encode_key(ANY_VALUE, WireType::LengthDelimited, buf);
                encode_varint(r.body.len() as u64, buf);
                buf.put_slice(&r.body);
            }
            put_str_field(RESOURCE_NAME, name, buf);
        }
    }
}

impl PartialEq for HeldResources {
    fn eq(&self, other: &Self) -> bool {
        self.type_url == other.type_url
            && self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|((n1, r1), (n2, r2))| {
                    n1 == n2 && r1.version == r2.version && r1.body == r2.body
                })
    }
}

impl fmt::Debug for HeldResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldResources")
            .field("type_url", &self.type_url)
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// A proto3 string field: omitted when empty.
fn str_field_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        bytes_field_len(tag, value.len())
    }
}

fn bytes_field_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
}

fn put_str_field(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

/// A delta response's fields other than `resources`, shared by its two forms: this one
/// (what a server sends) and [`crate::xds::received::ReceivedResponse`] (what peerd's
/// client decodes).
pub(crate) struct OtherFields<'a> {
    pub system_version_info: &'a mut String,
    pub type_url: &'a mut String,
    pub nonce: &'a mut String,
    pub removed_resources: &'a mut Vec<String>,
}

impl OtherFields<'_> {
    /// Decodes one field that is not `resources` (unknown ones are skipped).
    pub(crate) fn merge(
        self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            SYSTEM_VERSION_INFO => string::merge(wire_type, self.system_version_info, buf, ctx),
            TYPE_URL => string::merge(wire_type, self.type_url, buf, ctx),
            NONCE => string::merge(wire_type, self.nonce, buf, ctx),
            REMOVED_RESOURCES => {
                string::merge_repeated(wire_type, self.removed_resources, buf, ctx)
            }
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }
}

/// Encodes a delta response in field order, `resources` written by `resources`.
pub(crate) fn encode_response(
    system_version_info: &str,
    resources: impl FnOnce(&mut dyn BufMut),
    type_url: &str,
    nonce: &str,
    removed_resources: &[String],
    mut buf: &mut impl BufMut,
) {
    put_str_field(SYSTEM_VERSION_INFO, system_version_info, buf);
    resources(&mut buf);
    put_str_field(TYPE_URL, type_url, buf);
    put_str_field(NONCE, nonce, buf);
    string::encode_repeated(REMOVED_RESOURCES, removed_resources, buf);
}

/// The encoded length of a delta response's fields other than `resources`.
pub(crate) fn other_fields_len(
    system_version_info: &str,
    type_url: &str,
    nonce: &str,
    removed_resources: &[String],
) -> usize {
    str_field_len(SYSTEM_VERSION_INFO, system_version_info)
        + str_field_len(TYPE_URL, type_url)
        + str_field_len(NONCE, nonce)
        + string::encoded_len_repeated(REMOVED_RESOURCES, removed_resources)
}

impl DeltaDiscoveryResponse {
    fn other_fields(&mut self) -> OtherFields<'_> {
        OtherFields {
            system_version_info: &mut self.system_version_info,
            type_url: &mut self.type_url,
            nonce: &mut self.nonce,
            removed_resources: &mut self.removed_resources,
        }
    }
}

impl prost::Message for DeltaDiscoveryResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_response(
            &self.system_version_info,
            |mut out| {
                message::encode_repeated(RESOURCES, &self.resources, &mut out);
                self.held.encode(&mut out);
            },
            &self.type_url,
            &self.nonce,
            &self.removed_resources,
            buf,
        );
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            RESOURCES => message::merge_repeated(wire_type, &mut self.resources, buf, ctx),
            _ => self.other_fields().merge(tag, wire_type, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        message::encoded_len_repeated(RESOURCES, &self.resources)
            + self.held.encoded_len()
            + other_fields_len(
                &self.system_version_info,
                &self.type_url,
                &self.nonce,
                &self.removed_resources,
            )
    }

    fn clear(&mut self) {
        *self = DeltaDiscoveryResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::istio::workload;
    use crate::xds::types::ResourceType;
    use prost::Message;

    /// The generated message's encoding, for comparison: the same fields, derived.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(string, tag = "1")]
        system_version_info: String,
        #[prost(message, repeated, tag = "2")]
        resources: Vec<WireResource>,
        #[prost(string, tag = "4")]
        type_url: String,
        #[prost(string, tag = "5")]
        nonce: String,
        #[prost(string, repeated, tag = "6")]
        removed_resources: Vec<String>,
    }

    fn held(n: usize, body_pad: usize) -> Vec<(Arc<str>, Arc<Resource>)> {
        (0..n)
            .map(|i| {
                let r = Resource::workload(&workload::Workload {
                    uid: format!("c1//Pod/ns/p{i}"),
                    name: "x".repeat(body_pad + i),
                    ..Default::default()
                })
                .unwrap();
                (Arc::from(format!("wire-{i}")), Arc::new(r))
            })
            .collect()
    }

    #[test]
    fn held_resources_encode_exactly_as_the_generated_message() {
        let type_url = ResourceType::Address.type_url();
        // Sizes around the varint length boundaries (127/128, 16383/16384 bytes).
        for pad in [0, 100, 130, 16_300, 16_400] {
            let entries = held(3, pad);
            let held = HeldResources::new(type_url, entries.clone());
            let ours = DeltaDiscoveryResponse {
                system_version_info: "7".into(),
                resources: vec![held.to_wire("first", &entries[0].1)],
                type_url: type_url.into(),
                nonce: "3".into(),
                removed_resources: vec!["gone".into()],
                held: held.clone(),
            };
            let mut all = vec![held.to_wire("first", &entries[0].1)];
            all.extend(entries.iter().map(|(n, r)| held.to_wire(n, r)));
            let generated = Generated {
                system_version_info: "7".into(),
                resources: all,
                type_url: type_url.into(),
                nonce: "3".into(),
                removed_resources: vec!["gone".into()],
            };
            let bytes = ours.encode_to_vec();
            assert_eq!(bytes, generated.encode_to_vec(), "pad {pad}");
            assert_eq!(ours.encoded_len(), bytes.len());
            // Pre-encoded (off the runtime worker), the same bytes and length.
            let mut pre = ours.clone();
            pre.held.pre_encode();
            assert_eq!(pre.encode_to_vec(), bytes, "pre-encoded, pad {pad}");
            assert_eq!(pre.encoded_len(), bytes.len());
            // Decoding puts every resource in `resources`, in order.
            let back = DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap();
            assert!(back.held.is_empty());
            assert_eq!(back.resources, generated.resources);
            assert_eq!(back.removed_resources, ["gone"]);
            assert_eq!(
                (back.nonce.as_str(), back.type_url.as_str()),
                ("3", type_url)
            );
        }
    }

    #[test]
    fn an_empty_response_encodes_to_nothing_and_unknown_fields_are_skipped() {
        assert!(DeltaDiscoveryResponse::default().encode_to_vec().is_empty());
        // Field 3 (unused here) as a string, then a nonce.
        let bytes = [0x1a, 0x01, b'x', 0x2a, 0x01, b'9'];
        let r = DeltaDiscoveryResponse::decode(&bytes[..]).unwrap();
        assert_eq!(r.nonce, "9");
    }

    #[test]
    fn malformed_input_is_an_error() {
        // Resources field claiming 5 bytes with 1 present; a nonce that is not UTF-8.
        assert!(DeltaDiscoveryResponse::decode(&[0x12, 0x05, 0x00][..]).is_err());
        assert!(DeltaDiscoveryResponse::decode(&[0x2a, 0x01, 0xff][..]).is_err());
    }
}
