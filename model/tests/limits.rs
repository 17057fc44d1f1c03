//! What the protocol does not guarantee, shown by the checker rather than assumed: each test
//! finds the counterexample and checks that it is the one described (for the limits the README
//! admits, a lease that lapsed), not a hole elsewhere.

use protocol_model::{
    check::trace,
    counterexample,
    properties::{ONE_ACCEPTED_WRITE, REPLAYED_RECORD_KEPT},
    Action, Bounds, ProtocolModel,
};

#[test]
fn fencing_does_not_stop_a_stale_write_that_lands_before_the_new_holders() {
    // A holder pauses past its lease after its write; the next holder writes with a larger
    // token. A database that refuses only older tokens accepts both: fencing orders the writes
    // (a stale one that comes later is refused, see the example "the database refuses a stale
    // write"), it does not make them one.
    let (report, path) = counterexample(ProtocolModel::new(Bounds::FULL), ONE_ACCEPTED_WRITE);
    let path = path.expect("two accepted writes are reachable");
    println!(
        "{ONE_ACCEPTED_WRITE}: {} steps ({})\n{}",
        path.clone().into_actions().len(),
        report.summary(),
        trace(&path)
    );
    let last = path.last_state();
    assert!(last.ghost.lapsed, "only after a lease lapsed");
    assert_eq!(last.database.accepted, 2);
    assert!(!path.into_actions().contains(&Action::Failover));
}

#[test]
fn a_replay_served_before_its_record_reached_a_replica_is_lost_if_the_lease_lapses_after_failover()
{
    // `begin` waits for replica acks only when it acquires: a replay can come from a record the
    // replica does not have yet. After a failover, `record_later` writes it again while the
    // lease holds; when the lease lapses first, the key runs again.
    let bounds = Bounds {
        clients: 3,
        attempts: 1,
        horizon: 4,
        faults: 1,
        ..Bounds::FULL
    };
    let (report, path) = counterexample(ProtocolModel::new(bounds), REPLAYED_RECORD_KEPT);
    let path = path.expect("a lost replayed record is reachable");
    println!(
        "{REPLAYED_RECORD_KEPT}: {} steps ({})\n{}",
        path.clone().into_actions().len(),
        report.summary(),
        trace(&path)
    );
    assert!(path.last_state().ghost.lapsed, "only after a lease lapsed");
    assert!(path.into_actions().contains(&Action::Failover));
}
