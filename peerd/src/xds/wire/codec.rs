//! The protobuf wire format at its lowest level: varints, tags, the five wire types, and a
//! zero-copy field reader that hands out each field's exact original bytes.
//!
//! Owns: decoding and encoding of single fields. Never interprets field meaning, never
//! allocates for reading, never panics or indexes out of bounds on input: every malformed
//! byte sequence is a [`WireError`].

use thiserror::Error;

/// Largest field number protobuf allows (2^29 - 1).
pub const MAX_FIELD_NUMBER: u32 = (1 << 29) - 1;

/// How deeply (deprecated) groups may nest before the input is rejected; keeps the
/// group skipper's recursion bounded on hostile input.
const MAX_GROUP_DEPTH: usize = 64;

/// Why a byte sequence is not a valid protobuf encoding, or not the message we expected.
/// Offsets count bytes from the start of the message being read; [`WireError::Within`]
/// says which nested message that was.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("truncated varint at byte {offset}")]
    TruncatedVarint { offset: usize },
    #[error("varint at byte {offset} overflows 64 bits")]
    VarintOverflow { offset: usize },
    #[error("invalid field number {number} at byte {offset}")]
    BadFieldNumber { number: u64, offset: usize },
    #[error("field {field} at byte {offset}: invalid wire type {wire_type}")]
    BadWireType {
        field: u32,
        wire_type: u8,
        offset: usize,
    },
    #[error(
        "field {field} at byte {offset}: length {len} runs past the end ({remaining} bytes left)"
    )]
    LengthPastEnd {
        field: u32,
        offset: usize,
        len: u64,
        remaining: usize,
    },
    #[error("field {field} at byte {offset}: truncated fixed{bits} value")]
    TruncatedFixed { field: u32, offset: usize, bits: u8 },
    #[error("field {field} at byte {offset}: end-group without a matching start-group")]
    UnexpectedEndGroup { field: u32, offset: usize },
    #[error("field {field} at byte {offset}: group is never closed")]
    UnterminatedGroup { field: u32, offset: usize },
    #[error("groups nested deeper than {MAX_GROUP_DEPTH}")]
    GroupTooDeep,
    #[error("field {field}: expected wire type {expected:?}, found {found:?}")]
    UnexpectedWireType {
        field: u32,
        expected: WireType,
        found: WireType,
    },
    #[error("field {field}: string is not valid UTF-8")]
    InvalidUtf8 { field: u32 },
    #[error("Address holds a {found}, not a {expected}")]
    WrongVariant {
        expected: &'static str,
        found: &'static str,
    },
    #[error("Address holds neither a workload nor a service")]
    EmptyAddress,
    #[error("in {context}: {source}")]
    Within {
        context: &'static str,
        #[source]
        source: Box<WireError>,
    },
}

impl WireError {
    /// Wraps this error with the name of the nested message it occurred in.
    pub fn within(self, context: &'static str) -> WireError {
        WireError::Within {
            context,
            source: Box::new(self),
        }
    }
}

/// The wire types protobuf defines. 6 and 7 are invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    Varint = 0,
    Fixed64 = 1,
    Len = 2,
    StartGroup = 3,
    EndGroup = 4,
    Fixed32 = 5,
}

impl WireType {
    fn from_bits(bits: u8) -> Option<WireType> {
        Some(match bits {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::Fixed32,
            _ => return None,
        })
    }
}

/// A decoded field value, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    /// Length-delimited payload (string, bytes, message, packed repeated, map entry).
    Len(&'a [u8]),
    /// The bytes between a start-group and its end-group tag.
    Group(&'a [u8]),
    Fixed32(u32),
}

/// One field as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u32,
    pub wire_type: WireType,
    pub value: Value<'a>,
    /// The whole field exactly as encoded: tag, length prefix (if any) and payload.
    pub raw: &'a [u8],
    /// Offset of the field's first byte in the message.
    pub offset: usize,
}

impl<'a> Field<'a> {
    /// The payload of a length-delimited field, or an error naming the field.
    pub fn len_payload(&self) -> Result<&'a [u8], WireError> {
        match self.value {
            Value::Len(payload) => Ok(payload),
            _ => Err(WireError::UnexpectedWireType {
                field: self.number,
                expected: WireType::Len,
                found: self.wire_type,
            }),
        }
    }

    /// The payload of a string field, checked for UTF-8.
    pub fn as_str(&self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.len_payload()?)
            .map_err(|_| WireError::InvalidUtf8 { field: self.number })
    }
}

/// Iterates over the fields of one message. After the first error it yields nothing more.
pub struct FieldReader<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> FieldReader<'a> {
    pub fn new(buf: &'a [u8]) -> FieldReader<'a> {
        FieldReader {
            buf,
            pos: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for FieldReader<'a> {
    type Item = Result<Field<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let result = read_field(self.buf, &mut self.pos, 0);
        match result {
            Ok(field) if field.wire_type == WireType::EndGroup => {
                self.failed = true;
                Some(Err(WireError::UnexpectedEndGroup {
                    field: field.number,
                    offset: field.offset,
                }))
            }
            Ok(field) => Some(Ok(field)),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Checks that `buf` is a well-formed sequence of fields (not looking inside payloads).
pub fn validate(buf: &[u8]) -> Result<(), WireError> {
    FieldReader::new(buf).try_for_each(|f| f.map(|_| ()))
}

/// Reads a varint at `*pos`, advancing it.
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let start = *pos;
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&byte) = buf.get(*pos) else {
            return Err(WireError::TruncatedVarint { offset: start });
        };
        *pos += 1;
        // The tenth byte may carry only the top bit of a u64 and no continuation.
        if i == 9 && byte > 1 {
            return Err(WireError::VarintOverflow { offset: start });
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(WireError::VarintOverflow { offset: start })
}

/// Reads one field starting at `*pos` (an end-group tag is returned as a field with an
/// empty group value; callers decide whether it is expected).
fn read_field<'a>(buf: &'a [u8], pos: &mut usize, depth: usize) -> Result<Field<'a>, WireError> {
    let offset = *pos;
    let tag = read_varint(buf, pos)?;
    let number = tag >> 3;
    if number == 0 || number > u64::from(MAX_FIELD_NUMBER) {
        return Err(WireError::BadFieldNumber { number, offset });
    }
    let number = number as u32; // bounded by MAX_FIELD_NUMBER above
    let bits = (tag & 0x7) as u8;
    let wire_type = WireType::from_bits(bits).ok_or(WireError::BadWireType {
        field: number,
        wire_type: bits,
        offset,
    })?;
    let value = match wire_type {
        WireType::Varint => Value::Varint(read_varint(buf, pos)?),
        WireType::Fixed64 => {
            let bytes = take(buf, pos, 8).ok_or(WireError::TruncatedFixed {
                field: number,
                offset,
                bits: 64,
            })?;
            let mut le = [0u8; 8];
            le.copy_from_slice(bytes);
            Value::Fixed64(u64::from_le_bytes(le))
        }
        WireType::Fixed32 => {
            let bytes = take(buf, pos, 4).ok_or(WireError::TruncatedFixed {
                field: number,
                offset,
                bits: 32,
            })?;
            let mut le = [0u8; 4];
            le.copy_from_slice(bytes);
            Value::Fixed32(u32::from_le_bytes(le))
        }
        WireType::Len => {
            let len = read_varint(buf, pos)?;
            let remaining = buf.len().saturating_sub(*pos);
            let payload = usize::try_from(len)
                .ok()
                .and_then(|n| take(buf, pos, n))
                .ok_or(WireError::LengthPastEnd {
                    field: number,
                    offset,
                    len,
                    remaining,
                })?;
            Value::Len(payload)
        }
        WireType::StartGroup => {
            if depth >= MAX_GROUP_DEPTH {
                return Err(WireError::GroupTooDeep);
            }
            let body_start = *pos;
            loop {
                if *pos >= buf.len() {
                    return Err(WireError::UnterminatedGroup {
                        field: number,
                        offset,
                    });
                }
                let inner_start = *pos;
                let inner = read_field(buf, pos, depth + 1)?;
                if inner.wire_type == WireType::EndGroup {
                    if inner.number != number {
                        return Err(WireError::UnexpectedEndGroup {
                            field: inner.number,
                            offset: inner.offset,
                        });
                    }
                    break Value::Group(buf.get(body_start..inner_start).unwrap_or_default());
                }
            }
        }
        WireType::EndGroup => Value::Group(&[]),
    };
    let raw = buf.get(offset..*pos).unwrap_or_default();
    Ok(Field {
        number,
        wire_type,
        value,
        raw,
        offset,
    })
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Option<&'a [u8]> {
    let end = pos.checked_add(n)?;
    let bytes = buf.get(*pos..end)?;
    *pos = end;
    Some(bytes)
}

/// Appends `value` as a varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends the tag of field `number` with `wire_type`.
pub fn put_tag(out: &mut Vec<u8>, number: u32, wire_type: WireType) {
    put_varint(out, (u64::from(number) << 3) | wire_type as u64);
}

/// Appends a complete length-delimited field.
pub fn put_len_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_tag(out, number, WireType::Len);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// A complete length-delimited field as a new buffer.
pub fn len_field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 6);
    put_len_field(&mut out, number, payload);
    out
}
