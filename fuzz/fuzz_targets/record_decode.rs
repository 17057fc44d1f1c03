//! Any stored bytes: decoding never panics, and whatever decodes re-encodes to a record that
//! decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_idempotency::CompletedRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = CompletedRecord::decode(data) {
        let again = CompletedRecord::decode(&record.encode()).expect("a re-encoded record decodes");
        assert_eq!(again, record);
    }
});
