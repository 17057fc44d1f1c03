//! Any header value: parsing never panics, and an accepted key is 1 to 255 bytes of printable
//! ASCII (spaces only from a quoted string).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_idempotency::IdempotencyKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = IdempotencyKey::parse(data) {
        let text = key.as_str();
        assert!(!text.is_empty() && text.len() <= 255);
        assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)));
        if text.contains(' ') {
            assert!(data.iter().any(|&b| b == b'"'));
        }
    }
});
