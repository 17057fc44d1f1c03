//! Scopes: keeping one client's keys apart from another's.

use std::{fmt, marker::PhantomData};

use http::request::Parts;

/// Names the scope a request's key lives in: a tenant, an API key, a user id.
///
/// Requests in different scopes never see each other's records, even with the same key. Return
/// `None` for requests that belong to no scope; they share the one unscoped space. Implemented
/// for closures:
///
/// ```
/// use tower_idempotency::{IdempotencyLayer, MemoryStore};
///
/// #[derive(Clone)]
/// struct UserId(String);
///
/// let layer = IdempotencyLayer::new(MemoryStore::new()).with_scope(|parts: &http::request::Parts| {
///     // Set by an authentication layer that runs before this one.
///     parts.extensions.get::<UserId>().map(|user| user.0.clone())
/// });
/// ```
pub trait MakeScope: Send + Sync + 'static {
    /// The scope of one request.
    fn scope(&self, parts: &Parts) -> Option<String>;
}

impl<F> MakeScope for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn scope(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

/// The scope is the `Display` text of a `T` in the request's extensions; see
/// [`IdempotencyLayer::with_scope_from_extension`](crate::IdempotencyLayer::with_scope_from_extension).
pub(crate) struct ScopeFromExtension<T>(PhantomData<fn() -> T>);

impl<T> ScopeFromExtension<T> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T: fmt::Display + Send + Sync + 'static> MakeScope for ScopeFromExtension<T> {
    fn scope(&self, parts: &Parts) -> Option<String> {
        parts.extensions.get::<T>().map(T::to_string)
    }
}
