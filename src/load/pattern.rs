//! The messages a run sends and the byte-for-byte check of the replies:
//! pure code, no sockets, so it is unit-tested here and the drivers only
//! feed it what they read.
//!
//! Every message is a slice of one precomputed [`Pattern`] of distinct
//! lines, and every reply is compared against the matching slice of the
//! precomputed expected replies, so nothing is allocated per message.

use super::{Expect, MIN_SIZE};

/// Characters of the messages: lowercase ASCII letters and digits.
const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// At most this many distinct messages (fewer for very large messages, to
/// bound memory, and for 2-byte ones, which only have 36 possible bodies).
const MAX_VARIANTS: usize = 64;
/// Memory budget of one copy of the message pattern.
const PATTERN_BUDGET: usize = 4 * 1024 * 1024;

/// Message number `variant` of `size` bytes: lowercase letters and digits,
/// then `\n`.
///
/// The first two characters spell `variant` in base 36 (the first one only,
/// for 2-byte messages), so up to 1296 variants are distinct; the second
/// character is `0` or `1` for the 64 variants used, so no message is ever
/// the line `exit` or `quit`, and no reply starts with `BUSY`.
fn message(variant: usize, size: usize) -> Vec<u8> {
    let body = size - 1;
    let mut m = Vec::with_capacity(size);
    for j in 0..body {
        let c = match j {
            0 => variant % 36,
            1 => (variant / 36) % 36,
            _ => (variant * 7 + j * 13) % 36,
        };
        m.push(ALPHABET[c]);
    }
    m.push(b'\n');
    m
}

/// How many distinct messages of `size` bytes a run uses.
fn variant_count(size: usize) -> usize {
    let distinct = if size == MIN_SIZE { 36 } else { MAX_VARIANTS };
    (PATTERN_BUDGET / size).clamp(2, MAX_VARIANTS).min(distinct)
}

/// The distinct messages of a run, back to back, and the replies expected
/// for them, computed once.
#[derive(Debug)]
pub(super) struct Pattern {
    /// Bytes per message.
    pub(super) size: usize,
    /// How many distinct messages there are.
    pub(super) variants: usize,
    /// The messages, back to back.
    pub(super) sent: Vec<u8>,
    /// Their expected replies, back to back.
    pub(super) expected: Vec<u8>,
}

impl Pattern {
    pub(super) fn new(size: usize, expect: Expect) -> Pattern {
        let variants = variant_count(size);
        let mut sent = Vec::with_capacity(variants * size);
        let mut expected = Vec::with_capacity(variants * size);
        for v in 0..variants {
            let m = message(v, size);
            let reply = match expect {
                // The contract's own reference, so the check is the
                // contract's rule byte for byte, not a re-implementation.
                Expect::Upper => crate::protocol::reference_reply(&m).0,
                Expect::Echo => m.clone(),
            };
            debug_assert_eq!(reply.len(), m.len());
            sent.extend_from_slice(&m);
            expected.extend_from_slice(&reply);
        }
        Pattern {
            size,
            variants,
            sent,
            expected,
        }
    }

    pub(super) fn message(&self, variant: usize) -> &[u8] {
        &self.sent[variant * self.size..(variant + 1) * self.size]
    }
}

/// Compares a reply stream against the expected replies, message by
/// message, whatever the read boundaries.
#[derive(Debug)]
pub(super) struct Checker<'p> {
    expected: &'p [u8],
    size: usize,
    /// Index in `expected` of the next byte.
    pos: usize,
    /// Bytes of the current reply seen so far.
    pub(super) in_reply: usize,
    /// The current reply already differs.
    bad: bool,
}

impl<'p> Checker<'p> {
    pub(super) fn new(pattern: &'p Pattern, first_variant: usize) -> Self {
        Checker {
            expected: &pattern.expected,
            size: pattern.size,
            pos: first_variant * pattern.size,
            in_reply: 0,
            bad: false,
        }
    }

    /// Checks `data`; returns how many replies it completed and how many of
    /// those were wrong.
    pub(super) fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
        let (mut done, mut wrong) = (0, 0);
        while !data.is_empty() {
            let take = data
                .len()
                .min(self.size - self.in_reply)
                .min(self.expected.len() - self.pos);
            if data[..take] != self.expected[self.pos..self.pos + take] {
                self.bad = true;
            }
            data = &data[take..];
            self.in_reply += take;
            self.pos += take;
            if self.pos == self.expected.len() {
                self.pos = 0;
            }
            if self.in_reply == self.size {
                done += 1;
                wrong += u64::from(self.bad);
                self.in_reply = 0;
                self.bad = false;
            }
        }
        (done, wrong)
    }

    /// The unfinished reply at the end of a stream already differs.
    pub(super) fn partial_is_wrong(&self) -> bool {
        self.in_reply > 0 && self.bad
    }
}
/// A `BUSY …` line instead of a first reply. No expected reply starts with
/// `BUSY` (see [`message`]), so this cannot hide a wrong reply.
pub(super) fn is_busy(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(b"BUSY")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::MAX_SIZE;
    #[test]
    fn messages_are_lowercase_lines_of_the_right_size() {
        for size in [2, 3, 4, 5, 6, 64, 1000] {
            let p = Pattern::new(size, Expect::Upper);
            assert!(p.variants >= 2);
            for v in 0..p.variants {
                let m = p.message(v);
                assert_eq!(m.len(), size);
                assert_eq!(m[size - 1], b'\n');
                assert!(m[..size - 1]
                    .iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
                assert!(!matches!(m, b"exit\n" | b"quit\n"), "{m:?}");
                assert!(!m.to_ascii_uppercase().starts_with(b"BUSY"));
            }
        }
    }

    #[test]
    fn messages_are_distinct() {
        for size in [2, 3, 5, 64] {
            let p = Pattern::new(size, Expect::Upper);
            let mut all: Vec<&[u8]> = (0..p.variants).map(|v| p.message(v)).collect();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), p.variants, "size {size}");
        }
        assert_eq!(variant_count(2), 36);
        assert_eq!(variant_count(64), 64);
        assert_eq!(variant_count(MAX_SIZE), 2);
    }

    #[test]
    fn expected_replies_follow_the_contract() {
        let up = Pattern::new(16, Expect::Upper);
        assert_eq!(up.expected, up.sent.to_ascii_uppercase());
        assert_ne!(up.expected, up.sent);
        let echo = Pattern::new(16, Expect::Echo);
        assert_eq!(echo.expected, echo.sent);
    }

    #[test]
    fn checker_counts_replies_across_any_split() {
        let p = Pattern::new(8, Expect::Upper);
        // Three replies starting at variant 63, wrapping round the pattern.
        let start = p.variants - 1;
        let mut stream = Vec::new();
        for i in 0..3 {
            stream.extend_from_slice(&p.message((start + i) % p.variants).to_ascii_uppercase());
        }
        for split in 0..stream.len() {
            let mut c = Checker::new(&p, start);
            let (a, b) = stream.split_at(split);
            let (d1, w1) = c.feed(a);
            let (d2, w2) = c.feed(b);
            assert_eq!((d1 + d2, w1 + w2), (3, 0), "split at {split}");
            assert_eq!(c.in_reply, 0);
        }
    }

    #[test]
    fn checker_flags_one_corrupt_byte_in_the_right_reply() {
        let p = Pattern::new(8, Expect::Upper);
        let mut stream = Vec::new();
        for v in 0..4 {
            stream.extend_from_slice(&p.message(v).to_ascii_uppercase());
        }
        stream[8 * 2 + 3] ^= 0x20; // the third reply
        let mut c = Checker::new(&p, 0);
        let mut wrong_at = Vec::new();
        for (i, chunk) in stream.chunks(8).enumerate() {
            let (done, wrong) = c.feed(chunk);
            assert_eq!(done, 1);
            if wrong > 0 {
                wrong_at.push(i);
            }
        }
        assert_eq!(wrong_at, [2]);
        // An unchanged echo is wrong for the uppercase loop.
        let mut c = Checker::new(&p, 0);
        assert_eq!(c.feed(p.message(0)), (1, 1));
        // A cut-off wrong reply is noticed at the end of the stream.
        let mut c = Checker::new(&p, 0);
        assert_eq!(c.feed(b"xx"), (0, 0));
        assert!(c.partial_is_wrong());
    }
}
