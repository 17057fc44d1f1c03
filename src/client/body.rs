//! The request body the inner client receives, and keeping a body to send it again.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner client receives: the kept bytes of a covered request (sent
    /// again on each retry), or the caller's body as it comes (requests not covered, bodies
    /// over the limit).
    pub struct RetryBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Kept { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Inner { #[pin] body: B },
        // A body read past the limit: what was read, then the rest as it comes.
        Prefixed { prefix: Option<Bytes>, rest: Pin<Box<B>> },
        // A body that failed while it was read: what was read, then its error, so the inner
        // client fails the request the way it fails any broken body.
        Failed { prefix: Option<Bytes>, error: Option<B::Error> },
    }
}

impl<B: Body> RetryBody<B> {
    /// The caller's body, as it comes.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }
}

impl<B: Body> fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Kept { .. } => "Kept",
            Kind::Inner { .. } => "Inner",
            Kind::Prefixed { .. } => "Prefixed",
            Kind::Failed { .. } => "Failed",
        };
        f.debug_struct("RetryBody").field("kind", &kind).finish()
    }
}

fn non_empty(data: Bytes) -> Option<Bytes> {
    (!data.is_empty()).then_some(data)
}

fn to_bytes(mut data: impl Buf) -> Bytes {
    data.copy_to_bytes(data.remaining())
}

impl<B: Body> Body for RetryBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Kept { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            KindProj::Inner { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map(|f| f.map_data(to_bytes)))),
            KindProj::Prefixed { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => rest
                    .as_mut()
                    .poll_frame(cx)
                    .map(|frame| frame.map(|frame| frame.map(|f| f.map_data(to_bytes)))),
            },
            KindProj::Failed { prefix, error } => Poll::Ready(match prefix.take() {
                Some(prefix) => Some(Ok(Frame::data(prefix))),
                None => error.take().map(Err),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Kept { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            Kind::Failed { prefix, error } => prefix.is_none() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = |prefix: &Option<Bytes>| prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.kind {
            Kind::Kept { data, .. } => SizeHint::with_exact(prefix(data)),
            Kind::Inner { body } => body.size_hint(),
            Kind::Prefixed { prefix: p, rest } => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(prefix(p)));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(prefix(p)));
                }
                hint
            }
            Kind::Failed { prefix: p, .. } => {
                let mut hint = SizeHint::new();
                hint.set_lower(prefix(p));
                hint
            }
        }
    }
}

/// A request body after the layer read it.
pub(crate) enum Kept<B: Body> {
    /// Within the limit: sent again, whole, on every attempt.
    Replayable {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Over the limit, or broken: sent once.
    Once(RetryBody<B>),
}

impl<B: Body> Kept<B> {
    /// Reads `body` up to `limit` bytes; a body that says it is larger is not read at all.
    pub(crate) async fn read(body: B, limit: usize) -> Self {
        let limit = limit as u64;
        if body.size_hint().lower() > limit {
            return Self::Once(RetryBody::new(body));
        }
        let mut body = Box::pin(body);
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0u64;
        let mut trailers: Option<HeaderMap> = None;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => {
                    return Self::Once(RetryBody {
                        kind: Kind::Failed {
                            prefix: non_empty(concat(chunks)),
                            error: Some(error),
                        },
                    })
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let data = to_bytes(data);
                    len += data.len() as u64;
                    chunks.push(data);
                    if len > limit {
                        return Self::Once(RetryBody {
                            kind: Kind::Prefixed {
                                prefix: non_empty(concat(chunks)),
                                rest: body,
                            },
                        });
                    }
                }
                Err(frame) => {
                    if let Ok(more) = frame.into_trailers() {
                        trailers.get_or_insert_with(HeaderMap::new).extend(more);
                    }
                }
            }
        }
        Self::Replayable {
            data: concat(chunks),
            trailers,
        }
    }

    /// Whether the body can be sent again.
    pub(crate) fn replayable(&self) -> bool {
        matches!(self, Self::Replayable { .. })
    }

    /// The body for the next attempt; `None` once a body that is sent once has been sent.
    pub(crate) fn next(this: &mut Option<Self>) -> Option<RetryBody<B>> {
        match this {
            Some(Self::Replayable { data, trailers }) => Some(RetryBody {
                kind: Kind::Kept {
                    data: non_empty(data.clone()),
                    trailers: trailers.clone(),
                },
            }),
            Some(Self::Once(_)) => match this.take() {
                Some(Self::Once(body)) => Some(body),
                _ => None,
            },
            None => None,
        }
    }
}

/// One `Bytes` from many, copying only when there are several.
fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in chunks {
                all.extend_from_slice(&chunk);
            }
            all.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{Full, StreamBody};
    use std::convert::Infallible;

    type Chunks = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, &'static str>>>>;

    fn chunks(parts: &[&'static str]) -> Chunks {
        let frames: Vec<_> = parts
            .iter()
            .map(|part| match *part {
                "!" => Err("broken"),
                part => Ok(Frame::data(Bytes::from_static(part.as_bytes()))),
            })
            .collect();
        StreamBody::new(stream::iter(frames))
    }

    async fn sent<B: Body>(body: RetryBody<B>) -> Result<Bytes, B::Error> {
        Ok(body.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_kept_and_sent_whole_each_time() {
        let mut kept = Some(Kept::read(chunks(&["ab", "cd", "ef"]), 6).await);
        assert!(kept.as_ref().unwrap().replayable());
        for _ in 0..3 {
            let body = Kept::next(&mut kept).unwrap();
            assert_eq!(body.size_hint().exact(), Some(6));
            assert_eq!(sent(body).await.unwrap(), "abcdef");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_sent_once_whole() {
        let mut kept = Some(Kept::read(chunks(&["ab", "cd", "ef"]), 3).await);
        assert!(!kept.as_ref().unwrap().replayable());
        assert_eq!(
            sent(Kept::next(&mut kept).unwrap()).await.unwrap(),
            "abcdef"
        );
        assert!(Kept::next(&mut kept).is_none());
    }

    #[tokio::test]
    async fn a_body_that_says_it_is_too_large_is_not_read() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let Kept::Once(body) = Kept::read(body, 9).await else {
            panic!("kept a body over the limit")
        };
        assert!(matches!(body.kind, Kind::Inner { .. }));
        assert_eq!(sent::<Full<Bytes>>(body).await.unwrap(), "0123456789");
    }

    #[tokio::test]
    async fn a_body_that_breaks_is_sent_once_with_what_was_read_then_its_error() {
        let mut kept = Some(Kept::read(chunks(&["ab", "!", "cd"]), 100).await);
        assert!(!kept.as_ref().unwrap().replayable());
        let mut body = Kept::next(&mut kept).unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab");
        assert_eq!(body.frame().await.unwrap().unwrap_err(), "broken");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn an_empty_body_is_kept_and_ends_at_once() {
        let mut kept = Some(Kept::read(String::new(), 0).await);
        let body = Kept::next(&mut kept).unwrap();
        assert!(body.is_end_stream());
        assert_eq!(sent::<String>(body).await.unwrap(), "");
    }

    #[tokio::test]
    async fn trailers_are_kept_too() {
        let mut trailers = HeaderMap::new();
        trailers.insert("checksum", "abc".parse().unwrap());
        let frames: Vec<Result<_, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let mut kept = Some(Kept::read(StreamBody::new(stream::iter(frames)), 10).await);
        for _ in 0..2 {
            let collected = Kept::next(&mut kept).unwrap().collect().await.unwrap();
            assert_eq!(collected.trailers(), Some(&trailers));
        }
    }
}
