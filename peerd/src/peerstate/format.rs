//! The on-disk form of the peer-state snapshot (docs/design.md §5.7): what each peer last
//! sent, exactly as received (name, upstream version, body bytes), and since when the
//! peer has been stale.
//!
//! Layout (integers little-endian; `str`/`bytes` = u32 length + content):
//! `MAGIC`, u32 format version, u64 written-at (Unix ms), str local cluster, u32 origin
//! count; per origin: str name, u64 stale-since (Unix ms, 0 = synced when written), and
//! per type (Address, Authorization) u32 count and per resource str name, str version,
//! bytes body; then the XXH3-64 of everything before it.
//!
//! Owns encoding and structural checks only. It must never trust what it reads: a file
//! of another format version, another cluster, a wrong checksum or any length past the
//! end is refused as a whole ([`FormatError`]); resource bodies are validated by the
//! caller through the same path as received ones.

use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3;

use crate::view::ViewState;
use crate::xds::types::ResourceType;

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"PEERDPS\n";
/// Bumped whenever the layout changes: a file of another version is ignored.
pub const FORMAT_VERSION: u32 = 1;
/// Longest name, version or cluster name accepted when reading.
const MAX_STRING_BYTES: usize = 4096;
/// Magic, version and written-at, then the trailing checksum.
const HEADER_BYTES: usize = MAGIC.len() + 4 + 8;
const CHECKSUM_BYTES: usize = 8;

/// Why a snapshot file is refused (as a whole).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a peer-state snapshot (bad magic)")]
    NotASnapshot,
    #[error("format version {found} is not {}", FORMAT_VERSION)]
    UnsupportedVersion { found: u32 },
    #[error("checksum mismatch (the file is corrupt or was cut short)")]
    Checksum,
    #[error("truncated: {what} runs past the end")]
    Truncated { what: &'static str },
    #[error("{what} is {len} bytes, more than {}", MAX_STRING_BYTES)]
    TooLong { what: &'static str, len: usize },
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("written by cluster {found:?}, not this one")]
    ForeignCluster { found: String },
    #[error("{extra} bytes after the last origin")]
    TrailingBytes { extra: usize },
}

/// One peer origin to write: its committed state per type (each type read from its own
/// snapshot) and since when it is stale.
pub struct OriginToWrite {
    pub origin: Arc<str>,
    /// `None`: fully synced when written.
    pub stale_since_unix_ms: Option<u64>,
    pub state: [Arc<ViewState>; 2],
}

/// One resource as read back: not validated yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResource {
    pub name: String,
    pub version: String,
    pub body: Bytes,
}

/// One origin as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRead {
    pub origin: String,
    pub stale_since_unix_ms: Option<u64>,
    pub resources: [Vec<RawResource>; 2],
}

/// A whole snapshot as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRead {
    pub written_at_unix_ms: u64,
    pub origins: Vec<OriginRead>,
}

/// Hashes everything written through it.
struct Hashing<W> {
    inner: W,
    hash: Xxh3,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put_u32(out: &mut impl Write, v: u32) -> io::Result<()> {
    out.write_all(&v.to_le_bytes())
}

fn put_u64(out: &mut impl Write, v: u64) -> io::Result<()> {
    out.write_all(&v.to_le_bytes())
}

fn put_bytes(out: &mut impl Write, b: &[u8]) -> io::Result<()> {
    let len = u32::try_from(b.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "field longer than 4 GiB"))?;
    put_u32(out, len)?;
    out.write_all(b)
}

/// Writes a snapshot of `origins` to `out` (streamed: nothing is copied whole).
pub fn encode(
    out: impl Write,
    local_cluster: &str,
    written_at_unix_ms: u64,
    origins: &[OriginToWrite],
) -> io::Result<()> {
    let mut w = Hashing {
        inner: out,
        hash: Xxh3::new(),
    };
    w.write_all(MAGIC)?;
    put_u32(&mut w, FORMAT_VERSION)?;
    put_u64(&mut w, written_at_unix_ms)?;
    put_bytes(&mut w, local_cluster.as_bytes())?;
    put_u32(&mut w, origins.len() as u32)?;
    for o in origins {
        put_bytes(&mut w, o.origin.as_bytes())?;
        put_u64(&mut w, o.stale_since_unix_ms.unwrap_or(0))?;
        for kind in ResourceType::ALL {
            let resources = o.state[kind.index()].resources(kind);
            put_u32(&mut w, resources.len() as u32)?;
            for r in resources.values() {
                put_bytes(&mut w, r.name.as_bytes())?;
                put_bytes(&mut w, r.version.as_bytes())?;
                put_bytes(&mut w, &r.body)?;
            }
        }
    }
    let sum = w.hash.digest();
    let mut inner = w.inner;
    put_u64(&mut inner, sum)?;
    inner.flush()
}

/// Reads fields off a byte slice, refusing any length past its end.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or(FormatError::Truncated { what })?;
        let out = &self.data[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], FormatError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, FormatError> {
        let b = self.bytes(what)?;
        if b.len() > MAX_STRING_BYTES {
            return Err(FormatError::TooLong { what, len: b.len() });
        }
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| FormatError::NotUtf8 { what })
    }
}

/// Reads a snapshot written by `local_cluster`. Bodies are copied out of `data` one by
/// one, so no resource keeps the file's buffer alive.
pub fn decode(data: &[u8], local_cluster: &str) -> Result<SnapshotRead, FormatError> {
    if data.len() < HEADER_BYTES + CHECKSUM_BYTES || &data[..MAGIC.len()] != MAGIC {
        return Err(FormatError::NotASnapshot);
    }
    let (body, sum) = data.split_at(data.len() - CHECKSUM_BYTES);
    let mut c = Cursor { data: body, at: 0 };
    c.take(MAGIC.len(), "magic")?;
    let version = c.u32("format version")?;
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    let mut expected = [0u8; 8];
    expected.copy_from_slice(sum);
    if xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(expected) {
        return Err(FormatError::Checksum);
    }
    let written_at_unix_ms = c.u64("written-at")?;
    let cluster = c.string("local cluster")?;
    if cluster != local_cluster {
        return Err(FormatError::ForeignCluster {
            found: cluster.chars().take(64).collect(),
        });
    }
    let count = c.u32("origin count")?;
    // No allocation sized by a count read from the file: each entry is read (and its
    // bounds checked) before it is stored.
    let mut origins = Vec::new();
    for _ in 0..count {
        let origin = c.string("origin name")?;
        let stale = c.u64("stale-since")?;
        let mut resources: [Vec<RawResource>; 2] = Default::default();
        for list in resources.iter_mut() {
            let n = c.u32("resource count")?;
            for _ in 0..n {
                let name = c.string("resource name")?;
                let version = c.string("resource version")?;
                let body = Bytes::copy_from_slice(c.bytes("resource body")?);
                list.push(RawResource {
                    name,
                    version,
                    body,
                });
            }
        }
        origins.push(OriginRead {
            origin,
            stale_since_unix_ms: (stale != 0).then_some(stale),
            resources,
        });
    }
    if c.at != body.len() {
        return Err(FormatError::TrailingBytes {
            extra: body.len() - c.at,
        });
    }
    Ok(SnapshotRead {
        written_at_unix_ms,
        origins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::istio::workload;
    use crate::view::View;
    use crate::xds::resource::Resource;

    fn state() -> Arc<ViewState> {
        let view = View::new("test");
        let w = Resource::workload(&workload::Workload {
            uid: "c2//Pod/default/a".into(),
            name: "a".into(),
            namespace: "default".into(),
            ..Default::default()
        })
        .unwrap();
        view.apply(ResourceType::Address, [Arc::new(w)], []);
        view.snapshot()
    }

    fn encoded(cluster: &str) -> Vec<u8> {
        let s = state();
        let mut out = Vec::new();
        encode(
            &mut out,
            cluster,
            1_000,
            &[OriginToWrite {
                origin: "c2".into(),
                stale_since_unix_ms: Some(900),
                state: [Arc::clone(&s), s],
            }],
        )
        .unwrap();
        out
    }

    #[test]
    fn round_trips_names_versions_bodies_and_staleness() {
        let s = state();
        let read = decode(&encoded("c1"), "c1").unwrap();
        assert_eq!(read.written_at_unix_ms, 1_000);
        assert_eq!(read.origins.len(), 1);
        let o = &read.origins[0];
        assert_eq!(o.origin, "c2");
        assert_eq!(o.stale_since_unix_ms, Some(900));
        let r = s.get(ResourceType::Address, "c2//Pod/default/a").unwrap();
        assert_eq!(
            o.resources[0],
            vec![RawResource {
                name: r.name.to_string(),
                version: r.version.to_string(),
                body: r.body.clone(),
            }]
        );
        assert!(o.resources[1].is_empty());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let good = encoded("c1");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, "c1").is_err(), "byte {i} flipped was accepted");
        }
    }

    #[test]
    fn cut_short_foreign_version_and_foreign_cluster_are_refused() {
        let good = encoded("c1");
        for len in [0, 5, HEADER_BYTES, good.len() / 2, good.len() - 1] {
            assert!(decode(&good[..len], "c1").is_err(), "cut at {len} accepted");
        }
        let mut other = good.clone();
        other[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            decode(&other, "c1"),
            Err(FormatError::UnsupportedVersion { found: 2 })
        );
        assert_eq!(
            decode(&good, "c3"),
            Err(FormatError::ForeignCluster { found: "c1".into() })
        );
        assert_eq!(
            decode(b"garbage that is long enough to look", "c1"),
            Err(FormatError::NotASnapshot)
        );
    }
}
