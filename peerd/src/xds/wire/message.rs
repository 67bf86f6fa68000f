//! Editing one message as an ordered list of encoded fields: replace, remove or rewrite
//! fields by number while every other field keeps its exact bytes and position.
//!
//! Owns: field-list edits and re-serialization. Never decodes a field it is not asked to
//! touch, never reorders untouched fields, never re-encodes an untouched field.

use std::borrow::Cow;

use super::codec::{FieldReader, WireError, WireType, len_field};

/// One encoded field: tag, optional length and payload, exactly as it will be written.
#[derive(Debug, Clone)]
struct EncodedField<'a> {
    number: u32,
    wire_type: WireType,
    bytes: Cow<'a, [u8]>,
    /// Where the payload starts inside `bytes` (length-delimited fields only).
    payload_start: usize,
}

impl EncodedField<'_> {
    fn payload(&self) -> &[u8] {
        self.bytes.get(self.payload_start..).unwrap_or_default()
    }
}

/// What to do with one length-delimited field in [`MessageEditor::rewrite_len_fields`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Leave the field exactly as it is.
    Keep,
    /// Remove the field.
    Drop,
    /// Replace the field's payload (the tag stays, the length is recomputed).
    Replace(Vec<u8>),
}

/// A message held as its fields in wire order; edits touch only the named field numbers.
#[derive(Debug, Clone, Default)]
pub struct MessageEditor<'a> {
    fields: Vec<EncodedField<'a>>,
}

impl<'a> MessageEditor<'a> {
    /// Splits `buf` into fields, rejecting malformed input.
    pub fn parse(buf: &'a [u8]) -> Result<MessageEditor<'a>, WireError> {
        let mut fields = Vec::new();
        for field in FieldReader::new(buf) {
            let field = field?;
            let payload_start = match field.value {
                super::codec::Value::Len(payload) => field.raw.len() - payload.len(),
                _ => field.raw.len(),
            };
            fields.push(EncodedField {
                number: field.number,
                wire_type: field.wire_type,
                bytes: Cow::Borrowed(field.raw),
                payload_start,
            });
        }
        Ok(MessageEditor { fields })
    }

    /// Field numbers in wire order (repeats included).
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.fields.iter().map(|f| f.number)
    }

    /// Payloads of every occurrence of length-delimited field `number`, in wire order.
    /// An occurrence with another wire type is an error (a schema violation prost would
    /// also reject).
    pub fn len_payloads(&self, number: u32) -> Result<Vec<&[u8]>, WireError> {
        self.fields
            .iter()
            .filter(|f| f.number == number)
            .map(|f| {
                if f.wire_type == WireType::Len {
                    Ok(f.payload())
                } else {
                    Err(WireError::UnexpectedWireType {
                        field: number,
                        expected: WireType::Len,
                        found: f.wire_type,
                    })
                }
            })
            .collect()
    }

    /// The value of string field `number` as a decoder sees it (last occurrence wins;
    /// absent = empty).
    pub fn last_string(&self, number: u32) -> Result<String, WireError> {
        let payloads = self.len_payloads(number)?;
        match payloads.last() {
            None => Ok(String::new()),
            Some(p) => std::str::from_utf8(p)
                .map(str::to_owned)
                .map_err(|_| WireError::InvalidUtf8 { field: number }),
        }
    }

    /// Removes every occurrence of field `number`; returns how many were removed.
    pub fn remove(&mut self, number: u32) -> usize {
        let before = self.fields.len();
        self.fields.retain(|f| f.number != number);
        before - self.fields.len()
    }

    /// Replaces singular length-delimited field `number`: all old occurrences go, and
    /// `payload` (if any) is written once, where the first old occurrence was or at the end.
    pub fn replace_len(&mut self, number: u32, payload: Option<&[u8]>) {
        let position = self.fields.iter().position(|f| f.number == number);
        self.remove(number);
        if let Some(payload) = payload {
            self.insert_len(position, number, payload);
        }
    }

    /// Inserts length-delimited field `number` with `payload` before the field at `at`
    /// (`None` or past the end: at the end). Other occurrences of `number` stay.
    pub fn insert_len(&mut self, at: Option<usize>, number: u32, payload: &[u8]) {
        let bytes = len_field(number, payload);
        let payload_start = bytes.len() - payload.len();
        let field = EncodedField {
            number,
            wire_type: WireType::Len,
            bytes: Cow::Owned(bytes),
            payload_start,
        };
        let at = at.unwrap_or(self.fields.len()).min(self.fields.len());
        self.fields.insert(at, field);
    }

    /// Sets proto3 string field `number`. An empty value is the default and is written as
    /// absence, like a proto3 encoder does.
    pub fn set_string(&mut self, number: u32, value: &str) {
        self.replace_len(number, (!value.is_empty()).then_some(value.as_bytes()));
    }

    /// Sets singular message field `number` to the encoded message `payload` (an empty
    /// payload is still written: a present-but-empty message differs from an absent one).
    pub fn set_message(&mut self, number: u32, payload: &[u8]) {
        self.replace_len(number, Some(payload));
    }

    /// Visits every occurrence of length-delimited field `number` (e.g. a repeated message
    /// or map field) and keeps, drops or replaces it in place.
    pub fn rewrite_len_fields(
        &mut self,
        number: u32,
        mut rewrite: impl FnMut(&[u8]) -> Result<Rewrite, WireError>,
    ) -> Result<(), WireError> {
        let mut kept = Vec::with_capacity(self.fields.len());
        for field in std::mem::take(&mut self.fields) {
            if field.number != number {
                kept.push(field);
                continue;
            }
            if field.wire_type != WireType::Len {
                return Err(WireError::UnexpectedWireType {
                    field: number,
                    expected: WireType::Len,
                    found: field.wire_type,
                });
            }
            match rewrite(field.payload())? {
                Rewrite::Keep => kept.push(field),
                Rewrite::Drop => {}
                Rewrite::Replace(payload) => {
                    let bytes = len_field(number, &payload);
                    let payload_start = bytes.len() - payload.len();
                    kept.push(EncodedField {
                        number,
                        wire_type: WireType::Len,
                        bytes: Cow::Owned(bytes),
                        payload_start,
                    });
                }
            }
        }
        self.fields = kept;
        Ok(())
    }

    /// The encoded size of the message.
    pub fn encoded_len(&self) -> usize {
        self.fields.iter().map(|f| f.bytes.len()).sum()
    }

    /// Serializes the message: the fields in order, untouched ones byte-for-byte.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        for field in &self.fields {
            out.extend_from_slice(&field.bytes);
        }
        out
    }
}
