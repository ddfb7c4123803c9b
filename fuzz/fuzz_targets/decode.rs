//! The fuzz input format and the properties checked for one input, shared by
//! the fuzz target (`fuzz/fuzz_targets/uppercase.rs`, `mod decode;`) and the
//! corpus replay in the normal test suite (`tests/it/fuzz_replay.rs`, via
//! `#[path]`).
//!
//! Why one shared file rather than a few duplicated lines: the replay is
//! only worth something if it decodes a corpus file exactly as the fuzzer
//! did when it saved it, and asserts exactly what the fuzzer asserted. Two
//! copies would drift silently (a corpus file would then test a different
//! split than the one that made the fuzzer keep it). So this file depends on
//! nothing but `std` and the `poolserver` library, which both crates have.
//!
//! # Input format
//!
//! ```text
//! byte 0         k = byte0 & 0x0F: how many chunk-length bytes follow (0..=15)
//! bytes 1..=k    chunk lengths, one byte each (0..=255; 0 = an empty read)
//! the rest       the payload
//! ```
//!
//! The payload is fed to [`Uppercaser::feed`] in chunks of those lengths (a
//! length larger than what is left takes what is left), then whatever
//! remains as one last chunk. An input shorter than `1 + k` bytes uses the
//! lengths it has and an empty payload; an empty input is an empty payload
//! in one empty chunk.

use poolserver::protocol::{reference_reply, Feed, Uppercaser};

/// The most bytes [`Uppercaser`] may hold back: `exit\r` waiting for its
/// `\n` (an incomplete UTF-8 sequence is at most 3 and never held together
/// with a line start).
pub const MAX_HELD: usize = 5;

/// Splits a fuzz input into its payload and the chunks the payload is fed
/// in. The chunks concatenate to the payload.
pub fn decode(data: &[u8]) -> (&[u8], Vec<&[u8]>) {
    let (k, rest) = match data.split_first() {
        Some((&first, rest)) => (usize::from(first & 0x0F), rest),
        None => (0, data),
    };
    let k = k.min(rest.len());
    let (lengths, payload) = rest.split_at(k);
    let mut chunks = Vec::with_capacity(k + 1);
    let mut left = payload;
    for &len in lengths {
        let (chunk, tail) = left.split_at(usize::from(len).min(left.len()));
        chunks.push(chunk);
        left = tail;
    }
    chunks.push(left);
    (payload, chunks)
}

/// Decodes `data` and asserts, panicking on the first violation:
///
/// 1. nothing panics (including the transform's own `debug_assert!`s when
///    built with debug assertions);
/// 2. after every `feed`, [`Uppercaser::held`] is at most [`MAX_HELD`];
/// 3. after every `feed` that says `Continue`, what was streamed so far plus
///    what `finish` would add (on a clone) is exactly
///    `reference_reply(payload fed so far)`, not exited, and `finish` adds
///    exactly `held()` bytes: replies never lag by more than what is held;
/// 4. a `feed` says `Exit` exactly when the reference first sees an
///    `exit`/`quit` line, and the stream stops there;
/// 5. the whole stream (plus `finish` unless it exited) and its exit verdict
///    equal `reference_reply(payload)`.
pub fn check(data: &[u8]) {
    let (payload, chunks) = decode(data);
    let mut up = Uppercaser::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut exited = false;
    for chunk in chunks {
        let verdict = up.feed(chunk, &mut out);
        fed += chunk.len();
        let held = up.held();
        assert!(
            held <= MAX_HELD,
            "held {held} > {MAX_HELD} bytes after feeding {fed} of {payload:?}"
        );
        let (expected, expected_exit) = reference_reply(&payload[..fed]);
        match verdict {
            Feed::Exit => {
                assert!(
                    expected_exit,
                    "Exit after {fed} bytes, but the reference sees no exit line in {:?}",
                    &payload[..fed]
                );
                assert_eq!(out, expected, "reply at Exit after {fed} bytes");
                exited = true;
                break;
            }
            Feed::Continue => {
                assert!(
                    !expected_exit,
                    "no Exit after {fed} bytes, but the reference exits in {:?}",
                    &payload[..fed]
                );
                let mut finished = out.clone();
                up.clone().finish(&mut finished);
                assert_eq!(
                    finished.len() - out.len(),
                    held,
                    "finish() must add exactly the held bytes"
                );
                assert_eq!(
                    finished, expected,
                    "streamed + finish after {fed} bytes differs from the reference"
                );
            }
        }
    }
    if !exited {
        up.finish(&mut out);
        assert_eq!(up.held(), 0, "finish() must leave nothing held");
    }
    let (expected, expected_exit) = reference_reply(payload);
    assert_eq!(exited, expected_exit, "exit verdict for {payload:?}");
    assert_eq!(out, expected, "reply for {payload:?}");
}
