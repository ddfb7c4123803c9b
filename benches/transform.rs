//! Throughput of the uppercase transform alone, with no sockets: how many
//! bytes per second one worker can uppercase once the data is in memory.
//!
//! ```text
//! cargo bench --bench transform
//! ```
//!
//! It answers "is the transform ever the bottleneck?": a loopback round
//! trip costs tens of microseconds, so as long as one 32 KiB read is
//! transformed in a few microseconds the pool's throughput is set by
//! syscalls and scheduling, not by `Uppercaser`. Targets: at least 2 GB/s
//! on ASCII text and 300 MB/s on mixed UTF-8.
//!
//! Each input is 1 MiB, fed in 32 KiB chunks (the server's read size) into
//! an output `Vec` reserved once up front and cleared before every chunk,
//! exactly as a worker does with its `Buffers`; so the numbers include the
//! per-read bookkeeping (line-start and UTF-8 carry) but no allocation.
//! Inputs come from a fixed-seed generator so runs compare, and contain no
//! `exit`/`quit` line (checked before measuring), so all of every input is
//! transformed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use poolserver::protocol::{Feed, Uppercaser, MAX_EXPANSION};

const INPUT_SIZE: usize = 1 << 20;
/// poolserver's read size, so chunk boundaries fall where they would.
const CHUNK: usize = poolserver::DEFAULT_READ_BUFFER;

/// A tiny xorshift generator: deterministic inputs without a `rand`
/// dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Builds about `INPUT_SIZE` bytes of lines of 3 to 14 words taken from
/// `words`, then cuts the result to exactly `INPUT_SIZE` bytes (which may
/// cut a character in two at the very end: harmless, it is held back).
fn text_from(words: &[&[u8]], seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed);
    let mut out = Vec::with_capacity(INPUT_SIZE + 256);
    while out.len() < INPUT_SIZE {
        let n = 3 + rng.below(12);
        for i in 0..n {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(words[rng.below(words.len())]);
        }
        out.push(b'\n');
    }
    out.truncate(INPUT_SIZE);
    out
}

/// (a) Plain ASCII prose with newlines, the common case.
fn ascii() -> Vec<u8> {
    let words: &[&[u8]] = &[
        b"the",
        b"pool",
        b"of",
        b"worker",
        b"threads",
        b"serves",
        b"one",
        b"connection",
        b"at",
        b"a",
        b"time",
        b"and",
        b"every",
        b"byte",
        b"comes",
        b"back",
        b"uppercased",
        b"accept",
        b"queue",
        b"bounded",
        b"Hello,",
        b"world!",
        b"42",
        b"x",
        b"ok;",
    ];
    text_from(words, 0x5eed_0001)
}

/// (b) Mixed UTF-8: roughly half the bytes ASCII, the rest Latin-1
/// accents, Greek (including final sigma and `ΐ`, which expands),
/// German `ß` (expands to `SS`), CJK (no case, passes through the slow
/// path unchanged) and emoji (4-byte sequences).
fn mixed_utf8() -> Vec<u8> {
    let words: &[&[u8]] = &[
        b"the",
        b"pool",
        b"serves",
        b"connections",
        b"uppercase",
        b"and",
        b"of",
        b"queue",
        "café".as_bytes(),
        "naïve".as_bytes(),
        "straße".as_bytes(),
        "élève".as_bytes(),
        "λόγος".as_bytes(),
        "ΐ".as_bytes(),
        "καλημέρα".as_bytes(),
        "漢字".as_bytes(),
        "東京".as_bytes(),
        "🦀".as_bytes(),
        "🎉ok".as_bytes(),
    ];
    text_from(words, 0x5eed_0002)
}

/// (c) ASCII text with invalid bytes mixed in: lone continuation bytes,
/// bytes that can never appear in UTF-8, truncated sequences and overlong
/// encodings, all of which must pass through unchanged.
fn invalid_mixed() -> Vec<u8> {
    let words: &[&[u8]] = &[
        b"the",
        b"pool",
        b"serves",
        b"bytes",
        b"uppercased",
        b"and",
        b"invalid",
        b"ones",
        b"unchanged",
        b"\xff",
        b"\x80abc",
        b"\xc3",
        b"\xe2\x82",
        b"\xc0\xaf",
        b"\xfe\xfe",
        "ünïcode".as_bytes(),
    ];
    text_from(words, 0x5eed_0003)
}

/// Feeds `input` through a fresh transformer the way a worker does, and
/// returns the number of reply bytes (so the work cannot be optimised out).
fn run(input: &[u8], out: &mut Vec<u8>) -> usize {
    let mut up = Uppercaser::new();
    let mut total = 0;
    for chunk in input.chunks(CHUNK) {
        out.clear();
        let verdict = up.feed(black_box(chunk), out);
        debug_assert_eq!(verdict, Feed::Continue);
        total += black_box(&out[..]).len();
    }
    out.clear();
    up.finish(out);
    total + out.len()
}

fn transform(c: &mut Criterion) {
    let inputs = [
        ("ascii", ascii()),
        ("mixed_utf8", mixed_utf8()),
        ("invalid_bytes", invalid_mixed()),
    ];
    let mut group = c.benchmark_group("transform");
    group.throughput(Throughput::Bytes(INPUT_SIZE as u64));
    for (name, input) in &inputs {
        // The same output buffer a worker reserves for one read; growing it
        // inside the timed loop would measure the allocator instead.
        let mut out = Vec::with_capacity(MAX_EXPANSION * (CHUNK + 16));
        // Check the whole input is data: no quit line cut it short.
        let mut up = Uppercaser::new();
        for chunk in input.chunks(CHUNK) {
            out.clear();
            assert_eq!(
                up.feed(chunk, &mut out),
                Feed::Continue,
                "{name} has a quit line"
            );
        }
        let ascii_share = input.iter().filter(|b| b.is_ascii()).count() * 100 / input.len();
        eprintln!(
            "transform/{name}: {} bytes, {ascii_share}% ASCII",
            input.len()
        );
        group.bench_with_input(BenchmarkId::from_parameter(name), input, |b, input| {
            b.iter(|| run(input, &mut out))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // 1 MiB takes well under a millisecond, so a short run already gives
    // thousands of iterations per sample.
    config = Criterion::default()
        .measurement_time(std::time::Duration::from_secs(3))
        .warm_up_time(std::time::Duration::from_secs(1));
    targets = transform
}
criterion_main!(benches);
