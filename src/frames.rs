//! Frames waiting to be sent, and size hints that count them.

use bytes::Bytes;
use http_body::SizeHint;

/// `hint`, `extra` bytes longer.
pub(crate) fn plus(hint: SizeHint, extra: u64) -> SizeHint {
    let mut sum = SizeHint::new();
    sum.set_lower(hint.lower().saturating_add(extra));
    if let Some(upper) = hint.upper() {
        sum.set_upper(upper.saturating_add(extra));
    }
    sum
}

/// Frames waiting to be sent: slices of one buffer (a record's body), or frames as they were
/// read.
#[derive(Debug)]
pub(crate) enum Frames {
    Slices {
        rest: Bytes,
        /// Empty: `rest` is one frame.
        lengths: std::vec::IntoIter<u32>,
    },
    Queue(std::vec::IntoIter<Bytes>),
}

impl Default for Frames {
    fn default() -> Self {
        Self::Queue(Vec::new().into_iter())
    }
}

impl Frames {
    /// `body` cut at `lengths` (as in a record: empty for one frame, else adding up to it).
    pub(crate) fn slices(body: Bytes, lengths: Vec<u32>) -> Self {
        Self::Slices {
            rest: body,
            lengths: lengths.into_iter(),
        }
    }

    pub(crate) fn queue(frames: Vec<Bytes>) -> Self {
        Self::Queue(frames.into_iter())
    }

    pub(crate) fn next(&mut self) -> Option<Bytes> {
        match self {
            Self::Slices { rest, lengths } => match lengths.next() {
                Some(len) => Some(rest.split_to((len as usize).min(rest.len()))),
                None if rest.is_empty() => None,
                None => Some(std::mem::take(rest)),
            },
            Self::Queue(frames) => frames.next(),
        }
    }

    /// Bytes not handed out yet.
    pub(crate) fn remaining(&self) -> u64 {
        match self {
            Self::Slices { rest, .. } => rest.len() as u64,
            Self::Queue(frames) => frames.as_slice().iter().map(|f| f.len() as u64).sum(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Self::Slices { rest, lengths } => rest.is_empty() && lengths.len() == 0,
            Self::Queue(frames) => frames.len() == 0,
        }
    }
}
