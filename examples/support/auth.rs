//! A demo authentication layer: `Authorization: Bearer <user>-<anything>` is user `<user>`.
//!
//! Stands for a real one (JWT validation, a session lookup): what matters for idempotency is
//! that it puts *who the caller is* in the request's extensions, the same for every token of
//! one user, so that the idempotency layer can scope keys by it.

use std::fmt;

use axum::{
    extract::Request,
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};

/// The caller, as the authentication layer found it.
#[derive(Debug, Clone)]
pub(crate) struct User(String);

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Puts the [`User`] in the request's extensions; 401 for a token it cannot read. Requests
/// without `Authorization` go on anonymously.
pub(crate) async fn authenticate(mut req: Request, next: Next) -> Response {
    if let Some(value) = req.headers().get("authorization") {
        let user = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|token| token.rsplit_once('-'))
            .map(|(user, _)| User(user.to_owned()))
            .filter(|user| !user.0.is_empty());
        match user {
            Some(user) => {
                req.extensions_mut().insert(user);
            }
            None => {
                return (StatusCode::UNAUTHORIZED, "expected Bearer <user>-<token>").into_response()
            }
        }
    }
    next.run(req).await
}
