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
                let capacity = 16
                    + encoded_len(&response.headers)
                    + response.body.len()
                    + encoded_len(trailers);
                let mut out = BytesMut::with_capacity(capacity);
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
    pub fn decode(mut input: &[u8]) -> Result<Self, DecodeError> {
        let buf = &mut input;
        let version = take_u8(buf)?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let kind = take_u8(buf)?;
        let status =
            StatusCode::from_u16(take_u16(buf)?).map_err(|_| DecodeError::Invalid("status"))?;
        let record = match kind {
            KIND_TOMBSTONE => Self::Tombstone { status },
            KIND_RESPONSE => {
                let headers = take_headers(buf)?;
                let body_len = take_u32(buf)? as usize;
                let body = Bytes::copy_from_slice(take_slice(buf, body_len)?);
                let trailers = take_headers(buf)?;
                Self::Response(
                    RecordedResponse::new(status, headers, body).with_trailers(Some(trailers)),
                )
            }
            _ => return Err(DecodeError::Invalid("record kind")),
        };
        if buf.has_remaining() {
            return Err(DecodeError::Invalid("trailing bytes"));
        }
        Ok(record)
    }
}

fn encoded_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| 6 + name.as_str().len() + value.len())
        .sum()
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

fn take_headers(buf: &mut &[u8]) -> Result<HeaderMap, DecodeError> {
    let count = take_u32(buf)? as usize;
    // Each entry takes at least 6 bytes: refuse counts the input cannot hold.
    if count > buf.remaining() / 6 {
        return Err(DecodeError::Truncated);
    }
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        let name_len = usize::from(take_u16(buf)?);
        let name = HeaderName::from_bytes(take_slice(buf, name_len)?)
            .map_err(|_| DecodeError::Invalid("header name"))?;
        let value_len = take_u32(buf)? as usize;
        let value = HeaderValue::from_bytes(take_slice(buf, value_len)?)
            .map_err(|_| DecodeError::Invalid("header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn len_u32(len: usize) -> u32 {
    // Bodies and values over 4 GiB never reach here: the layer's record limit is far lower.
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn take_slice<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], DecodeError> {
    if buf.len() < len {
        return Err(DecodeError::Truncated);
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

fn take_u8(buf: &mut &[u8]) -> Result<u8, DecodeError> {
    Ok(take_slice(buf, 1)?[0])
}

fn take_u16(buf: &mut &[u8]) -> Result<u16, DecodeError> {
    let bytes = take_slice(buf, 2)?;
    Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn take_u32(buf: &mut &[u8]) -> Result<u32, DecodeError> {
    let bytes = take_slice(buf, 4)?;
    Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
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
