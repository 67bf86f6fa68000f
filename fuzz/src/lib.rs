//! Helpers shared by the fuzz targets: an independent protobuf field splitter (the wire
//! editor's oracle must not trust the editor's own reader) and the input framing used by
//! targets that take a structured header plus a raw tail.
//!
//! Owns nothing of peerd: every target calls peerd's real library functions.

/// One field as it appears on the wire: its number and its exact bytes (tag included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawField<'a> {
    pub number: u32,
    pub bytes: &'a [u8],
}

/// Splits a protobuf message into its top-level fields; `None` when malformed. Written
/// independently of `peerd::xds::wire::codec` (it is the reference the editor is checked
/// against).
pub fn split_fields(buf: &[u8]) -> Option<Vec<RawField<'_>>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let start = pos;
        let number = skip_field(buf, &mut pos, None, 0)?;
        out.push(RawField {
            number,
            bytes: &buf[start..pos],
        });
    }
    Some(out)
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        if shift == 63 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Skips one field (a whole group for a start-group tag); returns its number. `group`
/// is the number of the group being read, whose end tag is returned as `u32::MAX`.
fn skip_field(buf: &[u8], pos: &mut usize, group: Option<u32>, depth: usize) -> Option<u32> {
    let key = varint(buf, pos)?;
    let number = u32::try_from(key >> 3)
        .ok()
        .filter(|n| *n >= 1 && *n < (1 << 29))?;
    match key & 7 {
        0 => {
            varint(buf, pos)?;
        }
        1 => *pos = pos.checked_add(8).filter(|end| *end <= buf.len())?,
        2 => {
            let len = usize::try_from(varint(buf, pos)?).ok()?;
            *pos = pos.checked_add(len).filter(|end| *end <= buf.len())?;
        }
        3 => {
            if depth >= 100 {
                return None;
            }
            loop {
                if skip_field(buf, pos, Some(number), depth + 1)? == u32::MAX {
                    break;
                }
            }
        }
        4 => return (group == Some(number)).then_some(u32::MAX),
        5 => *pos = pos.checked_add(4).filter(|end| *end <= buf.len())?,
        _ => return None,
    }
    Some(number)
}

/// The bytes of every field whose number is not in `touched`, in order.
pub fn untouched<'a>(fields: &[RawField<'a>], touched: &[u32]) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|f| !touched.contains(&f.number))
        .map(|f| f.bytes)
        .collect()
}

/// Splits `data` into a header of at most 255 bytes (its length is the first byte) and
/// the rest: targets read a structured edit from the header with `arbitrary` and keep
/// the tail as raw protobuf, so seeds are real encodings behind a short header.
pub fn header_and_tail(data: &[u8]) -> (&[u8], &[u8]) {
    match data.split_first() {
        None => (&[], &[]),
        Some((len, rest)) => rest.split_at(usize::from(*len).min(rest.len())),
    }
}
