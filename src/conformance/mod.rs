//! The conformance suite, for any store: every behaviour the layer promises, checked through
//! the real layer against a fresh store per test (feature `conformance`).
//!
//! Every store the crate ships runs it, and a store written elsewhere runs the same tests with
//! one macro call in its own tests:
//!
//! ```ignore
//! // tests/conformance.rs of a crate with its own store; dev-dependencies: tower-idempotency
//! // with feature `conformance`, and tokio with `macros` and `rt-multi-thread`.
//! use my_store::LedgerStore;
//!
//! async fn ledger() -> (LedgerStore, ()) {
//!     (LedgerStore::connect("...").await.unwrap(), ())
//! }
//!
//! tower_idempotency::conformance_tests! {
//!     ledger => ledger;
//! }
//! ```
//!
//! Each entry names a module and an `async fn` that returns a fresh store and whatever must live
//! as long as the test (a server handle, `()`); the store must be `Clone` (cheap: a handle). The
//! macro writes one `#[tokio::test]` per behaviour. [`suite`] holds the tests themselves, to call
//! one by one; [`harness`] the handler and request helpers they use.
//! `examples/custom_store.rs` is a store written outside the crate that passes it.

pub mod counting_store;
pub mod harness;
pub mod suite;

/// Writes the whole conformance suite as tests, once per store; see the [module
/// docs](crate::conformance).
///
/// Every test of [`suite`] is listed here, and a unit test of this crate fails when one is not:
/// a store that runs the macro runs all of them.
#[macro_export]
macro_rules! conformance_tests {
    ($($store:ident => $make:path;)+) => {$(
        mod $store {
            #[allow(unused_imports)]
            use super::*;

            $crate::conformance_tests!(@tests $make;
            first_response_and_replay_are_identical,
            quoted_and_bare_keys_are_the_same_key,
            a_different_payload_is_422,
            a_different_payload_is_a_mismatch_while_in_progress,
            concurrent_duplicates_run_once_under_reject,
            concurrent_duplicates_run_once_under_wait,
            wait_gives_up_with_409_after_its_timeout,
            an_expired_lease_lets_a_later_request_in_and_fences_the_old_holder,
            server_errors_and_handler_failures_are_not_recorded,
            a_body_over_the_limit_is_413_and_never_runs,
            bad_or_missing_keys_are_400,
            optional_keys_and_uncovered_methods_pass_through,
            scopes_never_share_records,
            a_response_too_large_to_record_leaves_a_tombstone,
            trailers_are_recorded_and_replayed,
            a_handler_slower_than_its_lease_lets_no_duplicate_in,
            a_dropped_request_still_records_its_response,
            a_request_dropped_during_begin_releases_the_key,
            waiters_are_capped,
            hostile_keys_are_hashed_or_refused,
            a_panicking_handler_releases_the_key,
            unscoped_records_never_cross_credentials,
            scoped_by_principal_replays_across_tokens_and_isolates_users,
            in_progress_keys_are_capped_per_scope,
            a_stream_reaches_its_client_as_it_comes_and_replays_frame_by_frame,
            a_stream_past_the_record_limit_reaches_its_client_and_leaves_a_tombstone,
            a_grpc_stream_is_recorded_by_its_final_status,
            a_body_that_breaks_leaves_a_broken_tombstone_and_never_runs_again,
            a_client_that_leaves_mid_stream_gets_the_whole_record_on_its_retry,
            the_same_holder_may_repeat_begin_and_complete,
            );
        }
    )+};
    (@tests $make:path; $($test:ident,)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let (store, _keep_alive) = $make().await;
            $crate::conformance::suite::$test(store).await;
        }
    )+};
}

#[cfg(test)]
mod tests {
    /// A test written into `suite.rs` but left out of the macro would be skipped by every store,
    /// silently: this fails instead.
    #[test]
    fn the_macro_lists_every_test_of_the_suite() {
        let suite = include_str!("suite.rs");
        let listed = include_str!("mod.rs");
        let listing = &listed[listed.find("@tests $make;").expect("the listing")..];
        let listing = &listing[..listing.find(");").expect("its end")];
        let mut missing = Vec::new();
        for line in suite.lines() {
            let Some(name) = line.strip_prefix("pub async fn ") else {
                continue;
            };
            let name = &name[..name.find(['<', '(']).expect("a signature")];
            if !listing.contains(&format!(" {name},")) {
                missing.push(name);
            }
        }
        assert!(missing.is_empty(), "not in conformance_tests!: {missing:?}");
        assert!(listing.matches(',').count() >= 30);
    }
}
