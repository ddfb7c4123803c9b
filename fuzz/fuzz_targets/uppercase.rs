//! Fuzz target: the streaming uppercase transform against the whole-input
//! reference, for arbitrary bytes and arbitrary read boundaries.
//!
//! The input format and every property checked live in `decode.rs`, which
//! the normal test suite also compiles (`tests/it/fuzz_replay.rs`) to replay
//! the committed corpus: a fuzz finding and a failing `cargo test` are the
//! same assertion.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod decode;

fuzz_target!(|data: &[u8]| {
    decode::check(data);
});
