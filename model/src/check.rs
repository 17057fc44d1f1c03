//! Running the checker and printing what it found, for the tests.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    time::{Duration, Instant},
};

use stateright::{Checker, Expectation, HasDiscoveries, Model, Path};

use crate::{
    model::{Action, ProtocolModel, State},
    properties,
    request::{Step, Task},
    store::Record,
};

/// What one checker run explored and found.
pub struct Report {
    /// The model that was checked.
    pub model: ProtocolModel,
    /// Distinct states visited.
    pub unique_states: usize,
    /// States generated, repeats included.
    pub states: usize,
    /// How far the search went: every state it visited is at most this many steps from the
    /// start by its shortest path (stateright's depth, less the initial state).
    pub max_depth: usize,
    /// How long it took.
    pub elapsed: Duration,
    /// Whether every reachable state was visited (no early stop).
    pub exhaustive: bool,
    /// A path per property that has a (counter)example.
    pub discoveries: HashMap<&'static str, Path<State, Action>>,
}

/// Explores every reachable state of `model` breadth first, on `threads` threads.
pub fn check(model: ProtocolModel, threads: usize) -> Report {
    run(model, threads, None, None)
}

/// The shortest path to a state that violates `property` (or, for an example, satisfies it),
/// with the report of the run that found it; `None` when no reachable state has one.
///
/// Stateright's breadth-first search keeps the last discovery of a property it made, not the
/// first, so the path it reports can be longer than needed. Searching again with the depth
/// bounded to 1, 2, ... steps until the property shows up gives a shortest one, which is the
/// one worth reading.
pub fn counterexample(
    model: ProtocolModel,
    property: &'static str,
) -> (Report, Option<Path<State, Action>>) {
    let first = run(model, 1, Some(property), None);
    let Some(found) = first.discoveries.get(property) else {
        return (first, None);
    };
    let steps = found.clone().into_actions().len();
    for bound in 0..steps {
        // A state `bound` steps from the start is at depth `bound + 1`, and the checker looks
        // only at states less deep than its target.
        let report = run(model, 1, Some(property), Some(bound + 2));
        if let Some(path) = report.discoveries.get(property).cloned() {
            return (report, Some(path));
        }
    }
    let path = first.discoveries.get(property).cloned();
    (first, path)
}

fn run(
    model: ProtocolModel,
    threads: usize,
    stop_at: Option<&'static str>,
    max_depth: Option<usize>,
) -> Report {
    let started = Instant::now();
    let mut builder = model.checker().threads(threads);
    if let Some(name) = stop_at {
        builder = builder.finish_when(HasDiscoveries::AnyOf(BTreeSet::from([name])));
    }
    if let Some(depth) = max_depth {
        builder = builder.target_max_depth(depth);
    }
    let checker = builder.spawn_bfs().join();
    let discoveries = checker.discoveries();
    let exhaustive =
        max_depth.is_none() && stop_at.is_none_or(|name| !discoveries.contains_key(name));
    Report {
        model,
        unique_states: checker.unique_state_count(),
        states: checker.state_count(),
        max_depth: checker.max_depth().saturating_sub(1),
        elapsed: started.elapsed(),
        exhaustive,
        discoveries,
    }
}

impl Report {
    /// One line: how much was explored, how deep, how fast.
    pub fn summary(&self) -> String {
        format!(
            "{} unique states ({} generated), depth {} steps, {:.1} s{}; bounds {:?}",
            self.unique_states,
            self.states,
            self.max_depth,
            self.elapsed.as_secs_f64(),
            if self.exhaustive {
                ", exhaustive"
            } else {
                ", stopped at the discovery"
            },
            self.model.bounds,
        )
    }

    /// The discovery for `property`, printed step by step, if there is one.
    pub fn trace(&self, property: &str) -> Option<String> {
        let path = self.discoveries.get(property)?;
        Some(trace(path))
    }
}

/// A path, one line per step: the action, then the state it led to.
pub fn trace(path: &Path<State, Action>) -> String {
    let steps = path.clone().into_vec();
    let mut out = format!("  0. (start) -> {}\n", describe(&steps[0].0));
    for (i, pair) in steps.windows(2).enumerate() {
        if let [(_, Some(action)), (next, _)] = pair {
            let action = format!("{action:?}");
            let _ = writeln!(out, "  {}. {action:<26} -> {}", i + 1, describe(next));
        }
    }
    out
}

/// A state in one line.
pub fn describe(state: &State) -> String {
    let record = |record: &Option<Record>| match record {
        None => "-".to_owned(),
        Some(Record::InProgress {
            token, expires_at, ..
        }) => format!("held by {} until {expires_at}", token.0),
        Some(Record::Completed { response, .. }) => {
            format!("done({} f{})", response.by.0, response.fence.0)
        }
    };
    let mut out = format!(
        "t={} primary=[{}] replica=[{}] db=[newest {:?}, {} accepted]",
        state.now,
        record(&state.store.primary),
        record(&state.store.replica),
        state.database.newest.map(|f| f.0),
        state.database.accepted,
    );
    for (c, client) in state.clients.iter().enumerate() {
        let step = match client.step {
            Step::Idle => match client.answer {
                Some(answer) => format!("{answer:?}"),
                None => format!("idle, {} sent", client.sent),
            },
            Step::Running {
                token,
                fence,
                lease_until,
                effect,
                ..
            } => format!(
                "running {} f{} lease<{lease_until} {effect:?}",
                token.0, fence.0
            ),
            Step::Returned {
                token, settlement, ..
            } => format!("returned {} {settlement:?}", token.0),
        };
        let _ = write!(out, " | c{c}: {step}");
    }
    for task in &state.tasks {
        let _ = match task {
            Task::GuardRelease { token } => write!(out, " | task: release {}", token.0),
            Task::RecordLater {
                token, deadline, ..
            } => write!(out, " | task: record_later {} until {deadline}", token.0),
        };
    }
    if state.ghost.lapsed {
        out.push_str(" | lapsed");
    }
    out
}

/// Panics unless `report` (an exhaustive run) found no counterexample to any guarantee, and an
/// example of every example property (so that the guarantees did not hold for want of reaching
/// the states that test them). A violated guarantee is shown by a shortest counterexample.
pub fn assert_keeps_guarantees(report: &Report) {
    assert!(report.exhaustive, "not every state was explored");
    for property in properties::GUARANTEES {
        if report.discoveries.contains_key(property) {
            let (_, path) = counterexample(report.model, property);
            let path = path.expect("a violated property has a counterexample");
            panic!(
                "counterexample to \"{property}\" ({} steps):\n{}",
                path.clone().into_actions().len(),
                trace(&path)
            );
        }
    }
    for property in report.model.properties() {
        if property.expectation == Expectation::Sometimes {
            assert!(
                report.discoveries.contains_key(property.name),
                "the model never reached an example of \"{}\": the checks above prove less \
                 than they seem to",
                property.name
            );
        }
    }
}
