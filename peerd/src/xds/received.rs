//! `envoy.service.discovery.v3.DeltaDiscoveryResponse` as peerd's xDS client decodes it
//! ([`ReceivedResponse`]): each resource stays the bytes of its `Resource` message,
//! sliced out of tonic's receive buffer, until [`Envelope::parse`] reads it while the
//! response is applied.
//!
//! Why: decoding a first response of 100k resources into generated messages took three
//! allocations per resource and some 20 MB of short-lived structures, on one core, before
//! validation could start (the other core idle). Sliced, decoding the message is a walk
//! over lengths.
//!
//! It owns the client's decoding of this one message and must never change what is
//! accepted: an envelope other than the plain `version`, `resource { type_url, value }`,
//! `name` that servers send is read by the generated `Resource` decoder, so every
//! envelope is read, and rejected, exactly as the generated message would (the tests
//! compare them).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType, bytes as bytes_field, decode_key, decode_varint};

use super::response::{
    ANY_TYPE_URL, ANY_VALUE, OtherFields, RESOURCE_ANY, RESOURCE_NAME, RESOURCE_VERSION, RESOURCES,
    encode_response, other_fields_len,
};
use crate::proto::envoy::service::discovery::v3::Resource as WireResource;

/// A delta response whose resources are not parsed yet.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ReceivedResponse {
    pub system_version_info: String,
    /// Each one serialized `Resource`, as received.
    pub resources: Vec<Bytes>,
    pub type_url: String,
    pub nonce: String,
    pub removed_resources: Vec<String>,
}

impl ReceivedResponse {
    fn other_fields(&mut self) -> OtherFields<'_> {
        OtherFields {
            system_version_info: &mut self.system_version_info,
            type_url: &mut self.type_url,
            nonce: &mut self.nonce,
            removed_resources: &mut self.removed_resources,
        }
    }
}

impl prost::Message for ReceivedResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_response(
            &self.system_version_info,
            |mut out| bytes_field::encode_repeated(RESOURCES, &self.resources, &mut out),
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
            // `copy_to_bytes` on tonic's buffer: a slice, not a copy.
            RESOURCES => bytes_field::merge_repeated(wire_type, &mut self.resources, buf, ctx),
            _ => self.other_fields().merge(tag, wire_type, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        bytes_field::encoded_len_repeated(RESOURCES, &self.resources)
            + other_fields_len(
                &self.system_version_info,
                &self.type_url,
                &self.nonce,
                &self.removed_resources,
            )
    }

    fn clear(&mut self) {
        *self = ReceivedResponse::default();
    }
}

/// What a received `Resource` says: its name, version and payload.
#[derive(Clone, PartialEq, Debug)]
pub struct Envelope {
    pub name: Arc<str>,
    pub version: Arc<str>,
    /// `Resource.resource`; `None` when the sender left it out.
    pub payload: Option<Payload>,
}

/// A `google.protobuf.Any`: the resource body and the type it claims.
#[derive(Clone, PartialEq, Debug)]
pub struct Payload {
    /// Checked UTF-8.
    type_url: Bytes,
    /// A slice of the buffer the envelope came in.
    pub value: Bytes,
}

impl Payload {
    pub fn type_url(&self) -> &str {
        std::str::from_utf8(&self.type_url).unwrap_or_default()
    }
}

impl Envelope {
    /// Reads one serialized `Resource`: an error exactly when the generated message would
    /// not decode it.
    pub fn parse(raw: &Bytes) -> Result<Envelope, DecodeError> {
        if let Some(plain) = read_plain(raw) {
            return Ok(plain);
        }
        let r = <WireResource as prost::Message>::decode(raw.clone())?;
        Ok(Envelope::from(r))
    }
}

impl From<WireResource> for Envelope {
    fn from(r: WireResource) -> Envelope {
        Envelope {
            name: Arc::from(r.name),
            version: Arc::from(r.version),
            payload: r.resource.map(|any| Payload {
                type_url: Bytes::from(any.type_url),
                value: any.value,
            }),
        }
    }
}

/// The envelope when it has only the plain shape: length-delimited `version`, `name`
/// and at most one `resource` holding only `type_url` and `value`, all well formed.
/// Anything else (`None`) is left to the generated decoder, errors included.
fn read_plain(raw: &Bytes) -> Option<Envelope> {
    let mut buf: &[u8] = raw;
    let (mut name, mut version, mut payload) = ("", "", None);
    while !buf.is_empty() {
        let (tag, field) = take_length_delimited(&mut buf)?;
        match tag {
            // Proto3 scalars: the last occurrence wins, but the generated decoder checks
            // every occurrence's UTF-8 (an invalid earlier one fails the whole message).
            RESOURCE_VERSION => version = utf8(field)?,
            RESOURCE_NAME => name = utf8(field)?,
            RESOURCE_ANY if payload.is_none() => payload = Some(read_plain_any(raw, field)?),
            _ => return None,
        }
    }
    Some(Envelope {
        name: Arc::from(name),
        version: Arc::from(version),
        payload,
    })
}

fn utf8(field: &[u8]) -> Option<&str> {
    std::str::from_utf8(field).ok()
}

fn read_plain_any(raw: &Bytes, mut buf: &[u8]) -> Option<Payload> {
    let (mut type_url, mut value) = (&[][..], &[][..]);
    while !buf.is_empty() {
        let (tag, field) = take_length_delimited(&mut buf)?;
        match tag {
            ANY_TYPE_URL => type_url = utf8(field)?.as_bytes(),
            ANY_VALUE => value = field,
            _ => return None,
        }
    }
    Some(Payload {
        type_url: raw.slice_ref(type_url),
        value: raw.slice_ref(value),
    })
}

/// The next field when it is length-delimited and complete: (tag, payload).
fn take_length_delimited<'a>(buf: &mut &'a [u8]) -> Option<(u32, &'a [u8])> {
    let (tag, wire_type) = decode_key(buf).ok()?;
    if wire_type != WireType::LengthDelimited {
        return None;
    }
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Some((tag, field))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use prost::Message;
    use prost::encoding::{encode_key, encode_varint};

    use super::*;
    use crate::xds::any::Any;
    use crate::xds::response::DeltaDiscoveryResponse;

    fn wire(name: &str, version: &str, payload: Option<(&str, &[u8])>) -> WireResource {
        WireResource {
            name: name.into(),
            version: version.into(),
            resource: payload.map(|(type_url, value)| Any {
                type_url: type_url.into(),
                value: Bytes::copy_from_slice(value),
            }),
            ..Default::default()
        }
    }

    /// What the generated decoder makes of `raw`, as an envelope.
    fn generated(raw: &[u8]) -> Result<Envelope, DecodeError> {
        WireResource::decode(raw).map(Envelope::from)
    }

    fn field(tag: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key(tag, WireType::LengthDelimited, &mut out);
        encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_response_round_trips_with_its_resources_as_sent() {
        let sent = DeltaDiscoveryResponse {
            system_version_info: "v9".into(),
            resources: vec![wire("a", "1", Some(("t", b"body-a"))), wire("b", "", None)],
            type_url: "t".into(),
            nonce: "n1".into(),
            removed_resources: vec!["gone".into()],
            ..Default::default()
        };
        let bytes = Bytes::from(sent.encode_to_vec());
        let got = ReceivedResponse::decode(bytes.clone()).unwrap();
        assert_eq!(got.system_version_info, "v9");
        assert_eq!((got.type_url.as_str(), got.nonce.as_str()), ("t", "n1"));
        assert_eq!(got.removed_resources, vec!["gone".to_string()]);
        assert_eq!(got.resources.len(), 2);
        for (raw, r) in got.resources.iter().zip(&sent.resources) {
            assert_eq!(raw.as_ref(), r.encode_to_vec().as_slice());
        }
        assert_eq!(
            got.encode_to_vec(),
            bytes.as_ref(),
            "re-encodes to the same bytes"
        );
        let a = Envelope::parse(&got.resources[0]).unwrap();
        assert_eq!((&*a.name, &*a.version), ("a", "1"));
        let payload = a.payload.unwrap();
        assert_eq!(payload.type_url(), "t");
        assert_eq!(payload.value.as_ref(), b"body-a");
        let b = Envelope::parse(&got.resources[1]).unwrap();
        assert_eq!((&*b.name, &*b.version), ("b", ""));
        assert!(b.payload.is_none(), "a resource without payload says so");
    }

    #[test]
    fn a_plain_envelope_shares_the_received_buffer() {
        let raw = Bytes::from(wire("a", "1", Some(("t", b"body"))).encode_to_vec());
        let payload = Envelope::parse(&raw).unwrap().payload.unwrap();
        let inside = raw.as_ptr_range();
        assert!(
            inside.contains(&payload.value.as_ptr()),
            "value is a slice, not a copy"
        );
    }

    #[test]
    fn every_envelope_reads_as_the_generated_decoder_reads_it() {
        let plain = wire("c1//Pod/ns/a", "v1", Some(("t", b"\x0a\x02hi"))).encode_to_vec();
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("plain", plain.clone()),
            ("empty", Vec::new()),
            (
                "empty payload",
                wire("a", "1", Some(("", b""))).encode_to_vec(),
            ),
        ];
        // Repeated scalars (last wins), a repeated Any (merged), aliases, a TTL, an unknown
        // field in the envelope and in the Any.
        let mut repeated = plain.clone();
        repeated.extend(field(RESOURCE_NAME, b"renamed"));
        repeated.extend(field(RESOURCE_ANY, &field(ANY_VALUE, b"other body")));
        cases.push(("repeated fields", repeated));
        let mut extras = plain.clone();
        extras.extend(field(4, b"alias"));
        extras.extend(field(6, &[0x08, 0x05]));
        extras.extend(field(15, b"unknown"));
        cases.push(("aliases, ttl, unknown", extras));
        let mut any_extra = wire("a", "1", None).encode_to_vec();
        any_extra.extend(field(RESOURCE_ANY, &field(3, b"unknown in Any")));
        cases.push(("unknown field in Any", any_extra));
        // Malformed: each must fail as the generated decoder fails.
        cases.push(("truncated", plain[..plain.len() - 3].to_vec()));
        cases.push(("bad name UTF-8", field(RESOURCE_NAME, &[0xff, 0xfe])));
        cases.push((
            "bad type_url UTF-8",
            field(RESOURCE_ANY, &field(ANY_TYPE_URL, &[0xc3])),
        ));
        cases.push(("bad alias UTF-8", field(4, &[0xff])));
        cases.push(("name as varint", vec![0x18, 0x01]));
        cases.push(("bad ttl", field(6, &[0x08])));
        cases.push(("length past the end", vec![0x1a, 0x7f, b'a']));
        cases.push(("invalid wire type", vec![0x1f]));
        for (label, raw) in cases {
            let ours = Envelope::parse(&Bytes::from(raw.clone()));
            let theirs = generated(&raw);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{label}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{label}: ours {ours:?}, generated {theirs:?}"),
            }
        }
    }

    /// Found by the `envelope` fuzz target: a string field repeated with invalid UTF-8
    /// before a valid value was accepted (only the last value was checked), while the
    /// generated decoder rejects the whole Resource.
    #[test]
    fn an_invalid_string_overridden_by_a_later_one_is_still_rejected() {
        let any = |inner: Vec<u8>| field(RESOURCE_ANY, &inner);
        let cases: [(&str, Vec<u8>); 3] = [
            (
                "version",
                [
                    field(RESOURCE_VERSION, &[0xb3]),
                    field(RESOURCE_VERSION, b"v1"),
                ]
                .concat(),
            ),
            (
                "name",
                [
                    field(RESOURCE_NAME, &[0xff, 0xfe]),
                    field(RESOURCE_NAME, b"a"),
                ]
                .concat(),
            ),
            (
                "type_url",
                any([field(ANY_TYPE_URL, &[0xc3]), field(ANY_TYPE_URL, b"t")].concat()),
            ),
        ];
        for (label, raw) in cases {
            assert!(
                generated(&raw).is_err(),
                "{label}: the generated decoder rejects it"
            );
            let err = Envelope::parse(&Bytes::from(raw)).unwrap_err();
            assert!(
                err.to_string().contains("invalid string"),
                "{label}: a clear decode error, got {err}"
            );
        }
    }

    #[test]
    fn a_malformed_response_is_an_error() {
        let mut raw = field(RESOURCES, b"anything");
        raw.extend([0x22, 0x05, b'a']); // type_url claims 5 bytes, 1 left
        assert!(ReceivedResponse::decode(raw.as_slice()).is_err());
    }
}
