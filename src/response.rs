//! The response a store keeps, and its compact, versioned encoding.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! version: u8 = 1
//! kind:    u8        0 = response, 1 = tombstone (response too large to keep)
//! status:  u16
//! -- kind 0 only --
//! headers:  u32 count, then per value: u16 name length, name, u32 value length, value
//! body:     u32 length, bytes
//! trailers: u32 count (0: none), then as headers
//! ```

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

const VERSION: u8 = 1;
const KIND_RESPONSE: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;

/// A response kept so that a retry can get it back: status, the replayable headers, the body,
/// and the trailers (gRPC carries its status there).
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
}

impl RecordedResponse {
    /// A response without trailers.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        Self {
            status,
            headers,
            body,
            trailers: None,
        }
    }

    /// Sets the trailers; an empty map counts as none.
    pub fn with_trailers(mut self, trailers: Option<HeaderMap>) -> Self {
        self.trailers = trailers.filter(|t| !t.is_empty());
        self
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
}

impl CompletedRecord {
    /// The length of [`encode`](Self::encode)'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Tombstone { .. } => 4,
            Self::Response(response) => {
                let trailers = response.trailers.as_ref().map_or(4, headers_len);
                4 + headers_len(&response.headers) + 4 + response.body.len() + trailers
            }
        }
    }

    /// Encodes the record in the crate's versioned binary format.
    pub fn encode(&self) -> Bytes {
        match self {
            Self::Tombstone { status } => {
                let mut out = BytesMut::with_capacity(4);
                out.put_u8(VERSION);
                out.put_u8(KIND_TOMBSTONE);
                out.put_u16(status.as_u16());
                out.freeze()
            }
            Self::Response(response) => {
                let empty = HeaderMap::new();
                let trailers = response.trailers.as_ref().unwrap_or(&empty);
                let mut out = BytesMut::with_capacity(self.encoded_len());
                out.put_u8(VERSION);
                out.put_u8(KIND_RESPONSE);
                out.put_u16(response.status.as_u16());
                put_headers(&mut out, &response.headers);
                out.put_u32(len_u32(response.body.len()));
                out.put_slice(&response.body);
                put_headers(&mut out, trailers);
                out.freeze()
            }
        }
    }

    /// Decodes bytes made by [`encode`](Self::encode). Never panics, whatever the input.
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_shared(Bytes::copy_from_slice(input))
    }

    /// Like [`decode`](Self::decode), but the body and header values share `input`'s memory
    /// instead of copying it: what a store that owns the bytes it read should call.
    pub fn decode_shared(input: Bytes) -> Result<Self, DecodeError> {
        let buf = &mut Reader(input);
        let version = buf.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let kind = buf.u8()?;
        let status =
            StatusCode::from_u16(buf.u16()?).map_err(|_| DecodeError::Invalid("status"))?;
        let record = match kind {
            KIND_TOMBSTONE => Self::Tombstone { status },
            KIND_RESPONSE => {
                // Room for the header that marks a replay.
                let headers = buf.headers(1)?;
                let body_len = buf.u32()? as usize;
                let body = buf.take(body_len)?;
                let trailers = buf.headers(0)?;
                Self::Response(
                    RecordedResponse::new(status, headers, body).with_trailers(Some(trailers)),
                )
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

    fn headers(&mut self, room: usize) -> Result<HeaderMap, DecodeError> {
        let count = self.u32()? as usize;
        // Each entry takes at least 6 bytes: refuse counts the input cannot hold.
        if count > self.0.len() / 6 {
            return Err(DecodeError::Truncated);
        }
        let mut headers = HeaderMap::with_capacity(count + room);
        for _ in 0..count {
            let name_len = usize::from(self.u16()?);
            let name = HeaderName::from_bytes(&self.take(name_len)?)
                .map_err(|_| DecodeError::Invalid("header name"))?;
            let value_len = self.u32()? as usize;
            let value = HeaderValue::from_maybe_shared(self.take(value_len)?)
                .map_err(|_| DecodeError::Invalid("header value"))?;
            headers.append(name, value);
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
