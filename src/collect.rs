//! Reading request bodies into memory, within a limit.

use std::error::Error;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError};

use crate::problems::Problem;

type BoxError = Box<dyn Error + Send + Sync>;

/// Buffers a request body of at most `limit` bytes: 413 over it, without reading it all when
/// `Content-Length` already says so.
pub(crate) async fn request_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, Problem>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = Problem::BodyTooLarge { limit: Some(limit) };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
    if declared.is_some_and(|len| len > limit_u64) || body.size_hint().lower() > limit_u64 {
        return Err(too_large);
    }
    // Most bodies come in one frame: kept as it came, with no copy and no buffer list.
    let mut body = std::pin::pin!(body);
    let mut chunks = Chunks::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            // A body limit further out (tower-http's `RequestBodyLimitLayer`) is still a 413,
            // but not ours to state.
            if error.into().is::<LengthLimitError>() {
                Problem::BodyTooLarge { limit: None }
            } else {
                Problem::BodyUnreadable
            }
        })?;
        // Request trailers are not kept: nothing downstream of the buffer reads them.
        if let Ok(data) = frame.into_data() {
            chunks.push(data);
            if chunks.len > limit {
                return Err(too_large);
            }
        }
    }
    Ok(chunks.into_bytes())
}

/// Body chunks, joined only when there is more than one.
#[derive(Default)]
struct Chunks {
    first: Option<Bytes>,
    rest: Option<BytesMut>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, data: Bytes) {
        self.len += data.len();
        match (&mut self.first, &mut self.rest) {
            (None, _) => self.first = Some(data),
            (Some(first), None) => {
                let mut joined = BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(&data);
                self.rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }

    fn into_bytes(self) -> Bytes {
        match (self.first, self.rest) {
            (_, Some(joined)) => joined.freeze(),
            (Some(first), None) => first,
            (None, None) => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::{Full, StreamBody};

    fn stream(
        chunks: &[&'static str],
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn request_over_the_limit_is_refused_by_declared_length_and_by_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "10".parse().unwrap());
        let declared = request_body(&headers, stream(&["a"]), 5).await;
        assert_eq!(declared, Err(Problem::BodyTooLarge { limit: Some(5) }));
        let streamed = request_body(&HeaderMap::new(), stream(&["abc", "def"]), 5).await;
        assert_eq!(streamed, Err(Problem::BodyTooLarge { limit: Some(5) }));
        let exact = request_body(
            &HeaderMap::new(),
            Full::new(Bytes::from_static(b"12345")),
            5,
        )
        .await;
        assert_eq!(exact.unwrap(), "12345");
    }

    #[tokio::test]
    async fn a_limit_further_out_is_413_and_other_body_errors_400() {
        let limited = http_body_util::Limited::new(Full::new(Bytes::from_static(b"123456")), 2);
        let outer = request_body(&HeaderMap::new(), limited, 100).await;
        assert_eq!(
            outer,
            Err(Problem::BodyTooLarge { limit: None }),
            "not our limit to state"
        );
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
            vec![Err(std::io::Error::other("connection reset"))];
        let broken = StreamBody::new(futures_util::stream::iter(frames));
        let broken = request_body(&HeaderMap::new(), broken, 100).await;
        assert_eq!(broken, Err(Problem::BodyUnreadable));
    }
}
