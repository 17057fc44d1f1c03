//! The protocol with every guard, checked exhaustively within each set of bounds: no
//! counterexample to any guarantee, and an example of every state the guarantees are about (a
//! lapsed lease, a replay, a fenced-out write, a background `complete`, a failover).

use protocol_model::{check, check::assert_keeps_guarantees, Bounds, ProtocolModel};

/// Two threads: the runs are independent, and the machine has two cores.
const THREADS: usize = 2;

fn keeps_every_guarantee(bounds: Bounds) {
    let report = check(ProtocolModel::new(bounds), THREADS);
    println!("{}", report.summary());
    assert_keeps_guarantees(&report);
}

#[test]
fn two_clients_that_retry_through_two_faults_and_a_failover() {
    keeps_every_guarantee(Bounds::FULL);
}

#[test]
fn three_clients_that_retry_through_a_fault_and_a_failover() {
    keeps_every_guarantee(Bounds {
        clients: 3,
        horizon: 4,
        faults: 1,
        ..Bounds::FULL
    });
}

#[test]
fn a_key_reused_for_another_request_is_never_replayed_to_it() {
    keeps_every_guarantee(Bounds {
        clients: 3,
        attempts: 1,
        horizon: 5,
        other_fingerprint: true,
        ..Bounds::FULL
    });
}

#[test]
fn a_complete_repeated_over_a_new_connection_is_on_a_replica_before_it_is_acknowledged() {
    keeps_every_guarantee(Bounds {
        reconnect_after_lost_reply: true,
        ..Bounds::FULL
    });
}
