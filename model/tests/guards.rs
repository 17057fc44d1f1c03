//! The checker earns its keep: with any one guard of the protocol removed, it finds a
//! counterexample to the guarantee that guard protects. Each test prints the shortest one.

use protocol_model::{
    counterexample,
    properties::{ONE_HOLDER, ONE_SIDE_EFFECT, OWN_COMPLETION, RECORD_IS_NEWEST_WRITE, SETTLES},
    Action, Bounds, Delivery, Guards, ProtocolModel, State,
};
use stateright::Path;

/// The full bounds, with `guards`.
fn without(guards: Guards) -> ProtocolModel {
    ProtocolModel::new(Bounds::FULL).with_guards(guards)
}

/// The shortest counterexample to `property`, printed; panics when there is none.
fn finds(model: ProtocolModel, property: &'static str) -> Path<State, Action> {
    let (report, path) = counterexample(model, property);
    let Some(path) = path else {
        panic!(
            "no counterexample to \"{property}\" without the guard ({}): the model cannot tell \
             the guard is missing",
            report.summary()
        );
    };
    println!(
        "counterexample to \"{property}\", {} steps (found in {}):\n{}",
        path.clone().into_actions().len(),
        report.summary(),
        protocol_model::check::trace(&path)
    );
    path
}

fn has(path: &Path<State, Action>, wanted: impl Fn(&Action) -> bool) -> bool {
    path.clone().into_actions().iter().any(wanted)
}

#[test]
fn without_the_token_check_a_stale_holder_completes_over_the_new_one() {
    let model = without(Guards {
        complete_checks_token: false,
        ..Guards::ALL
    });
    finds(model, OWN_COMPLETION);
    // What a client sees: the replayed response is not the write the database kept.
    let path = finds(model, RECORD_IS_NEWEST_WRITE);
    assert!(path.last_state().ghost.completed_over_another_holder);
}

#[test]
fn releasing_after_a_failed_complete_runs_the_handler_twice() {
    let model = without(Guards {
        keep_lease_after_failed_complete: false,
        ..Guards::ALL
    });
    let path = finds(model, ONE_SIDE_EFFECT);
    assert!(has(&path, |action| matches!(
        action,
        Action::Settle(
            _,
            Delivery::Failed | Delivery::LostReply | Delivery::Unreplicated
        )
    )));
    assert!(!path.last_state().ghost.lapsed, "no lease lapsed");
}

#[test]
fn failover_without_replica_acks_lets_two_requests_hold_the_key() {
    let model = without(Guards {
        replica_acks: false,
        ..Guards::ALL
    });
    let path = finds(model, ONE_HOLDER);
    assert!(has(&path, |action| *action == Action::Failover));
    let path = finds(model, ONE_SIDE_EFFECT);
    assert!(has(&path, |action| *action == Action::Failover));
}

#[test]
fn without_failover_replica_acks_are_not_needed() {
    // One node (`MemoryStore`, a Redis without replicas): the same model keeps every guarantee.
    let model = ProtocolModel::new(Bounds {
        failovers: 0,
        ..Bounds::FULL
    })
    .with_guards(Guards {
        replica_acks: false,
        ..Guards::ALL
    });
    let report = protocol_model::check(model, 2);
    println!("{}", report.summary());
    protocol_model::check::assert_keeps_guarantees(&report);
}

#[test]
fn a_renewal_without_the_token_check_extends_another_holders_lease() {
    let model = without(Guards {
        renew_checks_token: false,
        ..Guards::ALL
    });
    let path = finds(model, ONE_HOLDER);
    assert!(has(&path, |action| matches!(action, Action::Renew(..))));
}

#[test]
fn a_lock_without_expiry_stays_when_its_release_fails() {
    let model = without(Guards {
        leases_expire: false,
        ..Guards::ALL
    });
    let path = finds(model, SETTLES);
    assert!(path
        .last_state()
        .store
        .lock(path.last_state().now)
        .is_some());
}

#[test]
fn a_complete_repeated_over_a_new_connection_that_writes_nothing_runs_the_handler_twice() {
    // The model's finding, fixed in COMPLETE: the reply of `complete` is lost with its
    // connection; the repeat (`record_later`) goes over a new one and finds its record. Writing
    // nothing, its `WAIT` counts replicas that need not have the record; a failover brings back
    // the lock, which ends with its lease, and the key runs again with no lease lapsed while
    // its holder ran.
    let model = ProtocolModel::new(Bounds {
        reconnect_after_lost_reply: true,
        ..Bounds::FULL
    })
    .with_guards(Guards {
        complete_repeat_writes: false,
        ..Guards::ALL
    });
    let path = finds(model, ONE_SIDE_EFFECT);
    assert!(!path.last_state().ghost.lapsed, "no lease lapsed");
    assert!(has(&path, |action| matches!(action, Action::Failover)));
    assert!(has(&path, |action| matches!(
        action,
        Action::RecordLater(_, Delivery::Ok)
    )));
}
