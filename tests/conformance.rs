//! The conformance suite, run against every store the crate ships.

mod common;

macro_rules! conformance {
    ($($store:ident => $make:path;)+) => {$(
        mod $store {
            use super::common::{self, suite};

            conformance!(@tests $make;
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
            suite::$test(store).await;
        }
    )+};
}

conformance! {
    memory => common::memory_store;
    redis => common::redis_store;
    cached_memory => common::cached_memory_store;
    cached_redis => common::cached_redis_store;
}

#[cfg(feature = "redis-cluster")]
conformance! {
    redis_cluster => common::cluster_store;
}

#[cfg(feature = "postgres")]
conformance! {
    postgres => common::postgres_store;
    tiered => common::tiered_store;
}
