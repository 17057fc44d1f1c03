//! Nothing to link: this package only holds the benches in `benches/`.
//!
//! Run them with `cargo bench -p benches`.
