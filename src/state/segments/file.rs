//! The bytes of segment and manifest files. A segment file is indexed, so that a reader that
//! needs some of its parts (a compaction, a restore skipping parts compacted since) fetches and
//! decodes only those:
//!
//! ```text
//! [index length: u64, little-endian][index: format, segment, (part, whole, offset, length)…][part…]
//! ```
//!
//! Every piece is `bincode` with variable-length integers; offsets count from the end of the
//! index. Parts are encoded straight from the state ([`PartRows`] borrows what
//! [`PartData`] owns, and both encode alike).

use std::collections::VecDeque;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use super::{Manifest, Part, PartData, PartKey, SegmentRef, FORMAT};
use crate::event::{Day, FxRate, Micros, Quota, Rep, Survey};
use crate::source::DeadLetter;
use crate::state::hierarchy::Placement;
use crate::state::{DealEntry, IdHash, RepDay, Versioned};

fn codec() -> impl bincode::Options + Copy {
    bincode::DefaultOptions::new()
}

/// Bytes before a segment's index: its length.
pub const INDEX_LENGTH_BYTES: u64 = 8;

/// A segment or manifest that did not decode, or is in another format.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{0}")]
    Decode(#[from] bincode::Error),
    #[error("state format {found} is not {FORMAT}: written by another quotaflow version")]
    Format { found: u32 },
    #[error("{0}")]
    Layout(String),
}

/// A segment file's index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentIndex {
    pub format: u32,
    pub at: SegmentRef,
    pub parts: Vec<PartEntry>,
}

/// Where one part is in a segment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartEntry {
    pub key: PartKey,
    /// It holds all of the part (its chain starts again there).
    pub whole: bool,
    offset: u64,
    len: u64,
}

impl SegmentIndex {
    /// The length of the index, from a file's first [`INDEX_LENGTH_BYTES`].
    pub fn length(prefix: &[u8]) -> Result<u64, SegmentError> {
        let bytes: [u8; 8] = prefix
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| SegmentError::Layout("shorter than its index length".into()))?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// The index, from its `length` bytes after the length.
    pub fn decode(bytes: &[u8]) -> Result<SegmentIndex, SegmentError> {
        use bincode::Options;
        let index: SegmentIndex = codec().deserialize(bytes)?;
        if index.format != FORMAT {
            return Err(SegmentError::Format {
                found: index.format,
            });
        }
        Ok(index)
    }

    /// Where `entry`'s bytes are in the file whose index is `length` bytes long.
    pub fn range(length: u64, entry: &PartEntry) -> Range<u64> {
        let start = INDEX_LENGTH_BYTES + length + entry.offset;
        start..start + entry.len
    }
}

impl PartData {
    pub fn decode(bytes: &[u8]) -> Result<PartData, SegmentError> {
        use bincode::Options;
        Ok(codec().deserialize(bytes)?)
    }
}

/// A segment file as read back whole: a snapshot's delta (`base: false`) or what compaction
/// merged (`base: true`). Written by `State::encode_segment`.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub at: SegmentRef,
    pub parts: Vec<Part>,
}

impl Segment {
    /// A whole segment file, every part decoded.
    pub fn decode(bytes: &[u8]) -> Result<Segment, SegmentError> {
        let length = SegmentIndex::length(bytes)?;
        let body = |r: Range<u64>| {
            bytes
                .get(r.start as usize..r.end as usize)
                .ok_or_else(|| SegmentError::Layout("shorter than its index says".into()))
        };
        let index = SegmentIndex::decode(body(INDEX_LENGTH_BYTES..INDEX_LENGTH_BYTES + length)?)?;
        let parts = index
            .parts
            .iter()
            .map(|e| {
                Ok(Part {
                    key: e.key,
                    whole: e.whole,
                    data: PartData::decode(body(SegmentIndex::range(length, e))?)?,
                })
            })
            .collect::<Result<_, SegmentError>>()?;
        Ok(Segment {
            at: index.at,
            parts,
        })
    }
}

impl Manifest {
    pub fn encode(&self) -> Result<Vec<u8>, bincode::Error> {
        use bincode::Options;
        codec().serialize(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, SegmentError> {
        use bincode::Options;
        let m: Manifest = codec().deserialize(bytes)?;
        if m.format != FORMAT {
            return Err(SegmentError::Format { found: m.format });
        }
        Ok(m)
    }
}

pub(super) type Rows<'a, K, V> = Vec<(&'a K, &'a V)>;

/// The rows of one part borrowed from the state, for encoding: serialised exactly as the
/// [`PartData`] they decode to (same variants in the same order; a reference serialises as
/// what it points to), so a segment is encoded without copying the state.
#[derive(Serialize)]
pub(super) enum PartRows<'a> {
    Daily(Rows<'a, (u32, Day), RepDay>),
    Seen(Rows<'a, IdHash, Micros>),
    Deals(Rows<'a, SmolStr, DealEntry>),
    DealActivity(Rows<'a, SmolStr, Micros>),
    RepFirstDeal(Rows<'a, SmolStr, Micros>),
    Quotas(Rows<'a, (String, Day), Versioned<Quota>>),
    Roster(Rows<'a, String, Versioned<Rep, Placement>>),
    Fx(Rows<'a, (String, Day), Versioned<FxRate>>),
    Surveys(Rows<'a, SmolStr, Box<Survey>>),
    RepNames(u32, &'a [String]),
    DeadLetters(&'a VecDeque<DeadLetter>),
}

/// One part to encode.
pub(super) struct PartOut<'a> {
    pub(super) key: PartKey,
    pub(super) whole: bool,
    pub(super) data: PartRows<'a>,
}

/// An encoded segment file and the parts it holds (and whether whole).
#[derive(Debug, Clone)]
pub struct Encoded {
    pub at: SegmentRef,
    pub bytes: bytes::Bytes,
    pub parts: Vec<(PartKey, bool)>,
}

/// A segment file in the layout above, built a few parts at a time: a compaction merges and
/// adds its parts in batches, so that only one batch is decoded at once.
pub struct SegmentBuilder {
    at: SegmentRef,
    body: Vec<u8>,
    entries: Vec<PartEntry>,
}

impl SegmentBuilder {
    /// An empty segment `at`.
    pub fn new(at: SegmentRef) -> SegmentBuilder {
        SegmentBuilder {
            at,
            body: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Encodes `parts` after those added before.
    pub(super) fn add(&mut self, parts: &[PartOut<'_>]) -> Result<(), bincode::Error> {
        use bincode::Options;
        for p in parts {
            let offset = self.body.len() as u64;
            codec().serialize_into(&mut self.body, &p.data)?;
            self.entries.push(PartEntry {
                key: p.key,
                whole: p.whole,
                offset,
                len: self.body.len() as u64 - offset,
            });
        }
        Ok(())
    }

    /// The file: its index, then every part added.
    pub fn finish(self) -> Result<Encoded, bincode::Error> {
        use bincode::Options;
        let parts = self.entries.iter().map(|e| (e.key, e.whole)).collect();
        let index = codec().serialize(&SegmentIndex {
            format: FORMAT,
            at: self.at,
            parts: self.entries,
        })?;
        let mut bytes = Vec::with_capacity(8 + index.len() + self.body.len());
        bytes.extend_from_slice(&(index.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&index);
        bytes.extend_from_slice(&self.body);
        Ok(Encoded {
            at: self.at,
            bytes: bytes.into(),
            parts,
        })
    }
}

/// Segment `at` of `parts`, in the layout above.
pub(super) fn encode(at: SegmentRef, parts: &[PartOut<'_>]) -> Result<Encoded, bincode::Error> {
    let mut file = SegmentBuilder::new(at);
    file.add(parts)?;
    file.finish()
}
