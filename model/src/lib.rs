//! A model of tower-idempotency's claim protocol, checked exhaustively with [`stateright`].
//!
//! Tests against a real store show that the protocol works on the interleavings a test happens
//! to produce; a model checker tries every interleaving of a small system: clients that retry
//! one key, handlers that pause past their lease, replies that are lost after the store applied
//! the call, a Redis primary that fails over to a replica lacking recent writes. The model
//! mirrors the code's names (`begin`, `complete`, `release`, `renew`, [`store::BeginOutcome`],
//! [`store::LeaseToken`], [`store::FencingToken`]) so that a change to one can be carried to the
//! other; `README.md` maps each part to the file it stands for.
//!
//! - [`store`]: the Lua scripts (and `MemoryStore`) on one key, with a replica.
//! - [`request`]: one request's steps in `protocol`, `lease` and `record`, and the tasks it
//!   leaves behind.
//! - [`model`]: the actions and how each changes the state.
//! - [`properties`]: what must hold, what the README admits does not, and reachability
//!   examples.
//! - [`config`]: the guards (each can be removed) and the bounds.
//! - [`check`]: running the checker and printing paths.

pub mod check;
pub mod config;
pub mod model;
pub mod properties;
pub mod request;
pub mod store;

pub use check::{check, counterexample, Report};
pub use config::{Bounds, Guards};
pub use model::{Action, Delivery, ProtocolModel, State};
