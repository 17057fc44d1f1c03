//! The body types the layer hands on: the buffered request body and the response body.
//!
//! Each is "ours or the inner one", so no `http-body-util` type shows in the public API.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{
    frames::{plus, Frames},
    tee::Tee,
};

pin_project! {
    /// The request body the inner service receives: the buffered bytes of a covered request, or
    /// the untouched body of a request the layer let through.
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    /// The response body the layer returns: a replayed body, a problem, or the inner service's
    /// body (as it is, after frames the layer already read, or recorded while it streams).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Full { frames: Frames, trailers: Option<HeaderMap> },
        Inner { #[pin] body: B },
        Prefixed { pending: Frames, rest: Pin<Box<B>> },
        // Boxed: a tee is large, and every response body (replays, buffered answers) would
        // carry its room through every future that holds one.
        Tee { tee: Box<Tee<B>> },
    }
}

impl<B> RequestBody<B> {
    /// The body of a request the layer did not need to read.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body the layer buffered.
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::full(data),
        }
    }
}

impl<B> Default for ResponseBody<B> {
    /// An empty body, as layers such as tower-http's `TimeoutLayer` need for their own answers.
    fn default() -> Self {
        Self::full(Bytes::new())
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::full(data),
        }
    }

    /// A recorded body: its frames as they came, then its trailers.
    pub(crate) fn frames(frames: Frames, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Full { frames, trailers },
        }
    }

    /// Frames the layer already read, then the rest of the inner body.
    pub(crate) fn prefixed(pending: Vec<Bytes>, rest: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Prefixed {
                pending: Frames::queue(pending),
                rest,
            },
        }
    }

    /// A body recorded while it streams.
    pub(crate) fn tee(tee: Tee<B>) -> Self {
        Self {
            kind: Kind::Tee { tee: Box::new(tee) },
        }
    }
}

impl<B> Kind<B> {
    fn full(data: Bytes) -> Self {
        Self::Full {
            frames: Frames::slices(data, Vec::new()),
            trailers: None,
        }
    }
}

impl<B: Body<Data = Bytes>> Kind<B> {
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            KindProj::Full { frames, trailers } => Poll::Ready(
                frames
                    .next()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Prefixed { pending, rest } => match pending.next() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => rest.as_mut().poll_frame(cx),
            },
            KindProj::Tee { tee } => tee.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full { frames, trailers } => frames.is_empty() && trailers.is_none(),
            Self::Inner { body } => body.is_end_stream(),
            Self::Prefixed { pending, rest } => pending.is_empty() && rest.is_end_stream(),
            Self::Tee { tee } => tee.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full { frames, .. } => SizeHint::with_exact(frames.remaining()),
            Self::Inner { body } => body.size_hint(),
            Self::Prefixed { pending, rest } => plus(rest.size_hint(), pending.remaining()),
            Self::Tee { tee } => tee.size_hint(),
        }
    }
}

macro_rules! impl_body {
    ($name:ident) => {
        impl<B: Body<Data = Bytes>> Body for $name<B> {
            type Data = Bytes;
            type Error = B::Error;

            fn poll_frame(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
                self.project().kind.poll_frame(cx)
            }

            fn is_end_stream(&self) -> bool {
                self.kind.is_end_stream()
            }

            fn size_hint(&self) -> SizeHint {
                self.kind.size_hint()
            }
        }
    };
}

impl_body!(RequestBody);
impl_body!(ResponseBody);

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn a_prefixed_body_yields_the_prefix_then_the_rest() {
        let body = ResponseBody::prefixed(
            vec![Bytes::from_static(b"he"), Bytes::from_static(b"ad-")],
            Box::pin(Full::new(Bytes::from_static(b"tail"))),
        );
        assert_eq!(body.size_hint().exact(), Some(9));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "head-tail");
    }

    #[tokio::test]
    async fn a_full_body_yields_its_trailers_last() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = ResponseBody::<Full<Bytes>>::frames(
            Frames::slices(Bytes::from_static(b"data"), Vec::new()),
            Some(trailers.clone()),
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "data");
    }

    #[tokio::test]
    async fn a_full_body_has_an_exact_size() {
        let body = RequestBody::<Full<Bytes>>::full(Bytes::from_static(b"abc"));
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
        assert!(ResponseBody::<Full<Bytes>>::full(Bytes::new()).is_end_stream());
    }
}
