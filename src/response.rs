//! The response a store keeps, and its compact, versioned encoding.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! version: u8        1 or 2
//! kind:    u8        0 = response, 1 = tombstone (response too large to keep),
//!                    2 = broken (the body failed mid-stream; version 2 only)
//! status:  u16
//! -- kind 0 only --
//! headers:  u32 count, then per value: u16 name length, name, u32 value length, value
//! body:     u32 length, bytes
//! frames:   (version 2 only) u32 count, then count u32 lengths that add up to the body's;
//!           count 0: the body is one frame
//! trailers: u32 count (0: none), then as headers
//! ```
//!
//! A record that version 1 can express (one frame, not broken) is written as version 1, so
//! instances still running 0.1 during a rolling upgrade read what newer ones write.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::frames::Frames;

const VERSION_1: u8 = 1;
const VERSION_2: u8 = 2;
const KIND_RESPONSE: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;
const KIND_BROKEN: u8 = 2;

/// A response kept so that a retry can get it back: status, the replayable headers, the body
/// with its frame boundaries, and the trailers (gRPC carries its status there).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedResponse {
    /// The status code.
    pub status: StatusCode,
    /// Headers to replay; a name with several values keeps all of them, in order.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Trailers to replay after the body, if the response had any.
    pub trailers: Option<HeaderMap>,
    /// The length of each frame the body came in; empty when it is one frame.
    frame_lengths: Vec<u32>,
}

impl RecordedResponse {
    /// A response without trailers.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        Self {
            status,
            headers,
            body,
            trailers: None,
            frame_lengths: Vec::new(),
        }
    }

    /// A response whose body came in `frames`, kept apart on replay (an SSE replay is the same
    /// events in the same writes).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{HeaderMap, StatusCode};
    /// use tower_idempotency::RecordedResponse;
    ///
    /// let events = [Bytes::from("data: 1\n\n"), Bytes::from("data: 2\n\n")];
    /// let recorded = RecordedResponse::from_frames(StatusCode::OK, HeaderMap::new(), events.clone());
    /// assert_eq!(recorded.body, "data: 1\n\ndata: 2\n\n");
    /// assert_eq!(recorded.frames().collect::<Vec<_>>(), events);
    /// ```
    pub fn from_frames(
        status: StatusCode,
        headers: HeaderMap,
        frames: impl IntoIterator<Item = Bytes>,
    ) -> Self {
        let mut frames = frames.into_iter();
        let Some(first) = frames.next() else {
            return Self::new(status, headers, Bytes::new());
        };
        let Some(second) = frames.next() else {
            return Self::new(status, headers, first);
        };
        let mut body = BytesMut::from(&first[..]);
        let mut frame_lengths = vec![len_u32(first.len())];
        for frame in std::iter::once(second).chain(frames) {
            frame_lengths.push(len_u32(frame.len()));
            body.extend_from_slice(&frame);
        }
        Self {
            frame_lengths,
            ..Self::new(status, headers, body.freeze())
        }
    }

    /// Sets the trailers; an empty map counts as none.
    pub fn with_trailers(mut self, trailers: Option<HeaderMap>) -> Self {
        self.trailers = trailers.filter(|t| !t.is_empty());
        self
    }

    /// The body as the frames it came in (sharing the body's memory).
    pub fn frames(&self) -> impl Iterator<Item = Bytes> + '_ {
        let mut frames = self.replay_frames();
        std::iter::from_fn(move || frames.next())
    }

    /// The frames a replay sends, sharing the body's memory.
    pub(crate) fn replay_frames(&self) -> Frames {
        Frames::slices(self.body.clone(), self.frame_lengths.clone())
    }

    /// Splits the record into what a replay sends: the frames, then the trailers.
    pub(crate) fn into_replay(self) -> (Frames, Option<HeaderMap>) {
        (Frames::slices(self.body, self.frame_lengths), self.trailers)
    }
}

/// What a completed record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // moved once per replay; a box would cost an allocation
pub enum CompletedRecord {
    /// The response, ready to replay.
    Response(RecordedResponse),
    /// The request ran, but its response was too large to keep. Retries must not run it again;
    /// they get a `409` problem that names the original status.
    Tombstone {
        /// The status the handler answered with.
        status: StatusCode,
    },
    /// The request ran, but its response body failed part-way (the client saw a broken answer).
    /// The side effect may have happened, so retries must not run it again; they get a `409`
    /// problem that says so.
    Broken {
        /// The status the handler answered with.
        status: StatusCode,
    },
}

impl CompletedRecord {
    /// The length of [`encode`](Self::encode)'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Tombstone { .. } | Self::Broken { .. } => 4,
            Self::Response(response) => {
                let trailers = response.trailers.as_ref().map_or(4, headers_len);
                let frames = match response.frame_lengths.len() {
                    0 => 0,
                    n => 4 + 4 * n,
                };
                4 + headers_len(&response.headers) + 4 + response.body.len() + frames + trailers
            }
        }
    }

    /// Encodes the record in the crate's versioned binary format.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        match self {
            Self::Tombstone { status } | Self::Broken { status } => {
                let (version, kind) = match self {
                    Self::Broken { .. } => (VERSION_2, KIND_BROKEN),
                    _ => (VERSION_1, KIND_TOMBSTONE),
                };
                out.put_u8(version);
                out.put_u8(kind);
                out.put_u16(status.as_u16());
            }
            Self::Response(response) => {
                let framed = !response.frame_lengths.is_empty();
                out.put_u8(if framed { VERSION_2 } else { VERSION_1 });
                out.put_u8(KIND_RESPONSE);
                out.put_u16(response.status.as_u16());
                put_headers(&mut out, &response.headers);
                out.put_u32(len_u32(response.body.len()));
                out.put_slice(&response.body);
                if framed {
                    out.put_u32(len_u32(response.frame_lengths.len()));
                    for &len in &response.frame_lengths {
                        out.put_u32(len);
                    }
                }
                match &response.trailers {
                    Some(trailers) => put_headers(&mut out, trailers),
                    None => out.put_u32(0),
                }
            }
        }
        out.freeze()
    }

    /// Decodes bytes made by [`encode`](Self::encode) (or by 0.1). Never panics, whatever the
    /// input.
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_shared(Bytes::copy_from_slice(input))
    }

    /// Like [`decode`](Self::decode), but the body and header values share `input`'s memory
    /// instead of copying it: what a store that owns the bytes it read should call.
    pub fn decode_shared(input: Bytes) -> Result<Self, DecodeError> {
        let buf = &mut Reader(input);
        let version = buf.u8()?;
        if version != VERSION_1 && version != VERSION_2 {
            return Err(DecodeError::UnknownVersion(version));
        }
        let kind = buf.u8()?;
        let status =
            StatusCode::from_u16(buf.u16()?).map_err(|_| DecodeError::Invalid("status"))?;
        let record = match kind {
            KIND_TOMBSTONE => Self::Tombstone { status },
            KIND_BROKEN if version == VERSION_2 => Self::Broken { status },
            KIND_RESPONSE => {
                // Room for the header that marks a replay.
                let headers = buf.headers(1)?;
                let body_len = buf.u32()? as usize;
                let body = buf.take(body_len)?;
                let frame_lengths = if version == VERSION_2 {
                    buf.frame_lengths(body_len)?
                } else {
                    Vec::new()
                };
                let trailers = buf.headers(0)?;
                Self::Response(RecordedResponse {
                    frame_lengths,
                    ..RecordedResponse::new(status, headers, body).with_trailers(Some(trailers))
                })
            }
            _ => return Err(DecodeError::Invalid("record kind")),
        };
        if !buf.0.is_empty() {
            return Err(DecodeError::Invalid("trailing bytes"));
        }
        Ok(record)
    }
}

/// Encoded size of a header block: the count, then each name and value with their lengths.
fn headers_len(headers: &HeaderMap) -> usize {
    4 + headers
        .iter()
        .map(|(name, value)| 6 + name.as_str().len() + value.len())
        .sum::<usize>()
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    out.put_u32(len_u32(headers.len()));
    for (name, value) in headers {
        // Header names are far below 64 KiB: `http` refuses longer ones.
        out.put_u16(u16::try_from(name.as_str().len()).unwrap_or(u16::MAX));
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(len_u32(value.len()));
        out.put_slice(value.as_bytes());
    }
}

fn len_u32(len: usize) -> u32 {
    // Bodies and values over 4 GiB never reach here: the layer's record limit is far lower.
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The rest of a record being decoded; every field taken is a slice of the same memory.
struct Reader(Bytes);

impl Reader {
    fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.0.len() < len {
            return Err(DecodeError::Truncated);
        }
        Ok(self.0.split_to(len))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        if self.0.len() < N {
            return Err(DecodeError::Truncated);
        }
        self.0.copy_to_slice(&mut out);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// Frame lengths that must add up to `body_len`; none: the body is one frame.
    fn frame_lengths(&mut self, body_len: usize) -> Result<Vec<u32>, DecodeError> {
        let count = self.u32()? as usize;
        if count == 0 {
            return Ok(Vec::new());
        }
        if count > self.0.len() / 4 {
            return Err(DecodeError::Truncated);
        }
        let lengths: Vec<u32> = (0..count).map(|_| self.u32()).collect::<Result<_, _>>()?;
        let total: u64 = lengths.iter().map(|&len| u64::from(len)).sum();
        if total != body_len as u64 {
            return Err(DecodeError::Invalid("frame lengths"));
        }
        Ok(lengths)
    }

    fn headers(&mut self, room: usize) -> Result<HeaderMap, DecodeError> {
        let count = self.u32()? as usize;
        // Each entry takes at least 6 bytes: refuse counts the input cannot hold.
        if count > self.0.len() / 6 {
            return Err(DecodeError::Truncated);
        }
        // A map that holds this many values exists (the record was made from one), but its
        // capacity is asked for only up to a size any response has, and every step is fallible:
        // `http` panics past its largest map.
        let too_many = |_| DecodeError::Invalid("header count");
        let mut headers = HeaderMap::try_with_capacity((count + room).min(64)).map_err(too_many)?;
        for _ in 0..count {
            let name_len = usize::from(self.u16()?);
            let name = HeaderName::from_bytes(&self.take(name_len)?)
                .map_err(|_| DecodeError::Invalid("header name"))?;
            let value_len = self.u32()? as usize;
            let value = HeaderValue::from_maybe_shared(self.take(value_len)?)
                .map_err(|_| DecodeError::Invalid("header value"))?;
            headers.try_append(name, value).map_err(too_many)?;
        }
        Ok(headers)
    }
}

/// Why stored bytes are not a record this version understands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends in the middle of a field.
    Truncated,
    /// The record was written by an encoding this version does not know.
    UnknownVersion(u8),
    /// A field holds a value that is not allowed there.
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("record is truncated"),
            Self::UnknownVersion(v) => write!(f, "record has unknown encoding version {v}"),
            Self::Invalid(what) => write!(f, "record has an invalid {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CompletedRecord {
        let mut headers = HeaderMap::new();
        headers.append("x-multi", HeaderValue::from_static("one"));
        headers.append("x-multi", HeaderValue::from_static("two"));
        headers.append("location", HeaderValue::from_static("/orders/1"));
        headers.append("x-bin", HeaderValue::from_bytes(&[0x80, 0xff]).unwrap());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        CompletedRecord::Response(
            RecordedResponse::new(
                StatusCode::CREATED,
                headers,
                Bytes::from_static(b"{\"id\":1}"),
            )
            .with_trailers(Some(trailers)),
        )
    }

    #[test]
    fn encoded_len_is_exact() {
        let tombstone = CompletedRecord::Tombstone {
            status: StatusCode::CREATED,
        };
        for record in [sample(), tombstone] {
            assert_eq!(record.encoded_len(), record.encode().len());
        }
    }

    #[test]
    fn response_round_trips_with_multi_valued_headers_in_order() {
        let record = sample();
        let decoded = CompletedRecord::decode(&record.encode()).unwrap();
        assert_eq!(decoded, record);
        let CompletedRecord::Response(r) = decoded else {
            panic!("not a response")
        };
        let values: Vec<_> = r.headers.get_all("x-multi").iter().collect();
        assert_eq!(values, ["one", "two"]);
    }

    #[test]
    fn tombstone_round_trips() {
        let record = CompletedRecord::Tombstone {
            status: StatusCode::ACCEPTED,
        };
        assert_eq!(CompletedRecord::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                CompletedRecord::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    /// Bytes `CompletedRecord::encode` wrote in 0.1 (version 1), checked in as they were.
    const WRITTEN_BY_0_1: &[u8] =
        b"\x01\x00\x00\xc9\x00\x00\x00\x03\x00\x08location\x00\x00\x00\x09/orders/1\
        \x00\x07x-multi\x00\x00\x00\x03one\x00\x07x-multi\x00\x00\x00\x03two\
        \x00\x00\x00\x08{\"id\":1}\x00\x00\x00\x01\x00\x0bgrpc-status\x00\x00\x00\x010";

    #[test]
    fn records_written_by_0_1_still_decode() {
        let CompletedRecord::Response(decoded) = CompletedRecord::decode(WRITTEN_BY_0_1).unwrap()
        else {
            panic!("not a response");
        };
        assert_eq!(decoded.status, StatusCode::CREATED);
        assert_eq!(decoded.headers["location"], "/orders/1");
        let multi: Vec<_> = decoded.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two"]);
        assert_eq!(decoded.body, "{\"id\":1}");
        assert_eq!(decoded.frames().collect::<Vec<_>>(), ["{\"id\":1}"]);
        assert_eq!(decoded.trailers.unwrap()["grpc-status"], "0");
        assert_eq!(
            CompletedRecord::decode(&[1, 1, 0, 202]).unwrap(),
            CompletedRecord::Tombstone {
                status: StatusCode::ACCEPTED
            }
        );
    }

    #[test]
    fn one_frame_is_still_written_as_version_1() {
        let encoded = sample().encode();
        assert_eq!(
            encoded[0], 1,
            "0.1 instances read it during a rolling upgrade"
        );
        let mut headers = HeaderMap::new();
        headers.append("location", HeaderValue::from_static("/orders/1"));
        headers.append("x-multi", HeaderValue::from_static("one"));
        headers.append("x-multi", HeaderValue::from_static("two"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let same = CompletedRecord::Response(
            RecordedResponse::new(
                StatusCode::CREATED,
                headers,
                Bytes::from_static(b"{\"id\":1}"),
            )
            .with_trailers(Some(trailers)),
        );
        assert_eq!(&same.encode()[..], WRITTEN_BY_0_1);
    }

    #[test]
    fn frames_and_broken_records_round_trip_as_version_2() {
        let frames =
            [&b"data: 1\n\n"[..], b"data: 2\n\n", b"", b"event: done\n\n"].map(Bytes::from_static);
        let record = CompletedRecord::Response(RecordedResponse::from_frames(
            StatusCode::OK,
            HeaderMap::new(),
            frames.clone(),
        ));
        let encoded = record.encode();
        assert_eq!(encoded[0], 2);
        assert_eq!(record.encoded_len(), encoded.len());
        let decoded = CompletedRecord::decode(&encoded).unwrap();
        assert_eq!(decoded, record);
        let CompletedRecord::Response(decoded) = decoded else {
            panic!("not a response");
        };
        assert_eq!(decoded.frames().collect::<Vec<_>>(), frames);

        let broken = CompletedRecord::Broken {
            status: StatusCode::OK,
        };
        assert_eq!(broken.encode()[..], [2, 2, 0, 200]);
        assert_eq!(CompletedRecord::decode(&broken.encode()).unwrap(), broken);
        assert!(
            CompletedRecord::decode(&[1, 2, 0, 200]).is_err(),
            "version 1 has no kind 2"
        );
    }

    #[test]
    fn frame_lengths_must_add_up_to_the_body() {
        let record = CompletedRecord::Response(RecordedResponse::from_frames(
            StatusCode::OK,
            HeaderMap::new(),
            [Bytes::from_static(b"ab"), Bytes::from_static(b"cd")],
        ));
        let mut encoded = record.encode().to_vec();
        // version, kind, status, 0 headers, body length 4, "abcd", 2 frames, then lengths 2, 2.
        let first_length = 4 + 4 + 4 + 4 + 4;
        assert_eq!(encoded[first_length..first_length + 4], [0, 0, 0, 2]);
        encoded[first_length + 3] = 3;
        assert_eq!(
            CompletedRecord::decode(&encoded),
            Err(DecodeError::Invalid("frame lengths"))
        );
    }

    #[test]
    fn a_record_with_many_header_values_decodes() {
        let mut headers = HeaderMap::new();
        for i in 0..25_000u32 {
            headers.append("x-many", HeaderValue::from(i));
        }
        let record =
            CompletedRecord::Response(RecordedResponse::new(StatusCode::OK, headers, Bytes::new()));
        assert_eq!(CompletedRecord::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn version_2_with_no_frame_lengths_is_one_frame() {
        // version 2, response, 200, no headers, body "ab", 0 frame lengths, no trailers.
        let bytes = [
            2, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let CompletedRecord::Response(decoded) = CompletedRecord::decode(&bytes).unwrap() else {
            panic!("not a response");
        };
        assert_eq!(decoded.frames().collect::<Vec<_>>(), ["ab"]);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            CompletedRecord::decode(b"garbage"),
            Err(DecodeError::UnknownVersion(b'g'))
        );
        assert_eq!(
            CompletedRecord::decode(&[1, 0, 0, 200, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Truncated)
        );
        assert!(CompletedRecord::decode(&[1, 9, 0, 200]).is_err());
        assert!(CompletedRecord::decode(&[1, 1, 0, 1]).is_err());
    }
}
