//! What the checker checks: the guarantees the README states, the limits it admits (checked so
//! that the model shows them, not assumed), and examples that show the model reaches the states
//! that matter (a model that never lapses a lease would pass every property for nothing).

use stateright::Property;

use crate::{
    model::{ProtocolModel, State},
    request::{Answer, Step, Task},
    store::{LeaseToken, Record, Tick},
};

/// Two requests never hold live leases at once: at most one handler runs per key while leases
/// hold.
pub const ONE_HOLDER: &str = "two requests never hold live leases on the key at once";
/// While no lease has lapsed, at most one handler run does its side effect.
pub const ONE_SIDE_EFFECT: &str = "while leases hold, at most one handler run does its side effect";
/// `complete` lands only on the caller's own in-progress record.
pub const OWN_COMPLETION: &str = "a completion lands only on the caller's own lease";
/// While no lease has lapsed, every client that got a 2xx got the same response: every replay
/// equals the committed response, which is what its first execution answered.
pub const ONE_RESPONSE: &str = "while leases hold, every client gets the one recorded response";
/// With fencing, the recorded response is the write the downstream kept.
pub const RECORD_IS_NEWEST_WRITE: &str =
    "the recorded response is the write the fenced database kept";
/// A response is replayed only to the request it was recorded for (same fingerprint).
pub const REPLAY_SAME_REQUEST: &str = "a response is replayed only to a request like its own";
/// Liveness, bounded: every path ends with every request settled and the key completed or free.
pub const SETTLES: &str = "every request settles and the key ends completed or free";

/// Admitted limit (the README's "fencing closes the gap"): at most one write per key is ever
/// accepted downstream. It does not hold: a holder whose lease lapsed can write before the new
/// holder does, and a downstream that refuses only older tokens accepts both.
pub const ONE_ACCEPTED_WRITE: &str = "at most one write per key is ever accepted downstream";
/// Admitted limit: a record a retry was replayed is never lost (the key never runs again after
/// a replay). With replica acks it holds unless a lease lapses after a failover (see README).
pub const REPLAYED_RECORD_KEPT: &str = "a replayed record is never lost";

/// Example: a retry is replayed.
pub const EXAMPLE_REPLAY: &str = "a retry is replayed";
/// Example: a lease lapses before its holder settled.
pub const EXAMPLE_LAPSE: &str = "a lease lapses before its holder settled";
/// Example: the database refuses a stale write.
pub const EXAMPLE_FENCED: &str = "the database refuses a stale write";
/// Example: a failed `complete` is written again by `record_later`.
pub const EXAMPLE_RECORD_LATER: &str = "a failed complete is written again in the background";
/// Example: the primary fails over.
pub const EXAMPLE_FAILOVER: &str = "the primary fails over";

/// The properties the crate promises; the full model must have no counterexample to any.
pub const GUARANTEES: [&str; 7] = [
    ONE_HOLDER,
    ONE_SIDE_EFFECT,
    OWN_COMPLETION,
    ONE_RESPONSE,
    RECORD_IS_NEWEST_WRITE,
    REPLAY_SAME_REQUEST,
    SETTLES,
];

/// The properties the README admits do not hold; the checker shows each one's counterexample.
pub const LIMITS: [&str; 2] = [ONE_ACCEPTED_WRITE, REPLAYED_RECORD_KEPT];

/// Requests that hold a lease they have not settled, with when it ends as far as they know.
pub fn holders(state: &State) -> impl Iterator<Item = (LeaseToken, Tick)> + '_ {
    let running = state.clients.iter().filter_map(|client| match client.step {
        Step::Running {
            token, lease_until, ..
        }
        | Step::Returned {
            token, lease_until, ..
        } => Some((token, lease_until)),
        Step::Idle => None,
    });
    let tasks = state.tasks.iter().filter_map(|task| match *task {
        Task::RecordLater {
            token, lease_until, ..
        } => Some((token, lease_until)),
        Task::GuardRelease { .. } => None,
    });
    running.chain(tasks)
}

fn one_holder(_: &ProtocolModel, state: &State) -> bool {
    holders(state)
        .filter(|(_, lease_until)| state.now < *lease_until)
        .count()
        <= 1
}

fn one_side_effect(_: &ProtocolModel, state: &State) -> bool {
    state.ghost.lapsed || state.ghost.side_effects <= 1
}

fn own_completion(_: &ProtocolModel, state: &State) -> bool {
    !state.ghost.completed_over_another_holder
}

fn one_response(_: &ProtocolModel, state: &State) -> bool {
    let mut responses = state
        .clients
        .iter()
        .filter_map(|client| client.answer.and_then(Answer::response));
    let first = responses.next();
    state.ghost.lapsed || responses.all(|response| Some(response) == first)
}

fn record_is_newest_write(_: &ProtocolModel, state: &State) -> bool {
    match state.store.primary {
        Some(Record::Completed { response, .. }) => state.database.newest == Some(response.fence),
        _ => true,
    }
}

fn replay_same_request(model: &ProtocolModel, state: &State) -> bool {
    (0u8..)
        .zip(&state.clients)
        .all(|(c, client)| match client.answer {
            Some(Answer::Replayed(response)) => {
                model.fingerprint_of(model.client_of(response.by)) == model.fingerprint_of(c)
            }
            _ => true,
        })
}

fn settles(model: &ProtocolModel, state: &State) -> bool {
    model.quiescent(state) && state.store.lock(state.now).is_none()
}

fn one_accepted_write(_: &ProtocolModel, state: &State) -> bool {
    state.database.accepted <= 1
}

fn replayed_record_kept(_: &ProtocolModel, state: &State) -> bool {
    !state.ghost.replayed_record_lost
}

/// Every property for `model`; the failover example only where failovers may happen.
pub fn all(model: &ProtocolModel) -> Vec<Property<ProtocolModel>> {
    let mut properties = vec![
        Property::always(ONE_HOLDER, one_holder),
        Property::always(ONE_SIDE_EFFECT, one_side_effect),
        Property::always(OWN_COMPLETION, own_completion),
        Property::always(ONE_RESPONSE, one_response),
        Property::always(RECORD_IS_NEWEST_WRITE, record_is_newest_write),
        Property::always(REPLAY_SAME_REQUEST, replay_same_request),
        Property::eventually(SETTLES, settles),
        Property::always(ONE_ACCEPTED_WRITE, one_accepted_write),
        Property::always(REPLAYED_RECORD_KEPT, replayed_record_kept),
        Property::sometimes(EXAMPLE_REPLAY, |_, state: &State| {
            state
                .clients
                .iter()
                .any(|client| matches!(client.answer, Some(Answer::Replayed(_))))
        }),
        Property::sometimes(EXAMPLE_LAPSE, |_, state: &State| state.ghost.lapsed),
        Property::sometimes(EXAMPLE_FENCED, |_, state: &State| {
            state.database.refused > 0
        }),
        Property::sometimes(EXAMPLE_RECORD_LATER, |_, state: &State| {
            state
                .tasks
                .iter()
                .any(|task| matches!(task, Task::RecordLater { .. }))
        }),
    ];
    if model.bounds.failovers > 0 {
        properties.push(Property::sometimes(
            EXAMPLE_FAILOVER,
            |model: &ProtocolModel, state: &State| state.failovers_left < model.bounds.failovers,
        ));
    }
    properties
}
