//! The library side of `poolload` (contract §6): the connection drivers for
//! the three modes, the byte-for-byte reply check, the latency histograms
//! and the [`Report`].
//!
//! Design decisions:
//!
//! * **One thread per connection** (two in bulk mode, where writing and
//!   reading must overlap or both TCP buffers fill and deadlock). Blocking
//!   sockets keep the pingpong hot path to one `write` and usually one
//!   `read` per round trip, which is what a comparison between servers
//!   should measure.
//! * **No allocation per message.** Every message is a slice of one
//!   precomputed pattern of distinct lines, and every reply is compared
//!   against the matching slice of the precomputed expected replies; the
//!   send times of messages in flight live in a ring sized once; latencies
//!   are buffered per connection and merged into one shared histogram a
//!   batch at a time.
//! * **Every wait is bounded.** Sockets carry a short read/write timeout
//!   ([`SLICE`]) so each blocked call wakes up to look at the clock. A
//!   connection that has had no reply by the end of the measured time (it
//!   sits in the server's accept queue) is closed and counted as
//!   `never_served`; nothing outlives the run's hard deadline.
//! * **What counts.** A round trip counts when its message was sent after
//!   the warm-up and, in a timed run, its reply completed before the
//!   measured time ended. Replies after that are still checked (a wrong one
//!   still fails the run) but not counted.
//! * **Stopping early** ([`Live::stop`], Ctrl-C in the binary) ends the
//!   measured time at that moment; the run then winds down exactly as a
//!   timed run does at its end, so the report stays honest.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use poolserver::load::{self, LoadConfig, Live};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = poolserver::Server::builder()
//!     .addr("127.0.0.1:0")
//!     .workers(2)
//!     .monitor_interval(Duration::ZERO)
//!     .start()?;
//! let cfg = LoadConfig {
//!     addr: server.local_addr().to_string(),
//!     connections: 2,
//!     messages: Some(100),
//!     ..LoadConfig::default()
//! };
//! let report = load::run(&cfg, &Live::default())?;
//! assert_eq!(report.round_trips, 200);
//! assert!(report.passed());
//! println!("{}", serde_json::to_string(&report)?);
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Smallest message: one character and the newline.
pub const MIN_SIZE: usize = 2;
/// Largest message. Two copies of each distinct message are kept in memory,
/// and a larger single line says nothing the bulk mode does not.
pub const MAX_SIZE: usize = 16 * 1024 * 1024;
/// Bytes a bulk writer hands to the kernel at a time (about).
pub const BULK_CHUNK: usize = 64 * 1024;
/// How long a blocked socket call waits before looking at the clock again:
/// the precision of the run's time limits.
pub const SLICE: Duration = Duration::from_millis(20);
/// What the default deadline adds to warm-up plus duration: room for the
/// last replies and the closes.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(30);

/// Size of the read buffer of every connection.
const READ_BUF: usize = 64 * 1024;
/// Latencies buffered per connection before they are merged into the
/// shared histogram.
const LATENCY_BATCH: usize = 256;
/// Highest latency the histograms hold, in microseconds (one hour);
/// anything longer is recorded as this.
const HIST_MAX_US: u64 = 3_600_000_000;
/// Characters of the messages: lowercase ASCII letters and digits.
const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// At most this many distinct messages (fewer for very large messages, to
/// bound memory, and for 2-byte ones, which only have 36 possible bodies).
const MAX_VARIANTS: usize = 64;
/// Memory budget of one copy of the message pattern.
const PATTERN_BUDGET: usize = 4 * 1024 * 1024;
/// Examples of distinct error messages kept for the report.
const MAX_EXAMPLES: usize = 5;

/// What the load generator does on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Send a message, wait for its reply, repeat (with `pipeline` messages
    /// in flight). Measures round trips per second and latency.
    #[default]
    Pingpong,
    /// Stream a fixed number of bytes per connection while reading the
    /// replies concurrently. Measures throughput.
    Bulk,
    /// Connect, one round trip, `quit`, close, repeat. Measures the cost of
    /// a whole connection: accept, queue, worker hand-off, lingering close.
    Connect,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Pingpong => "pingpong",
            Mode::Bulk => "bulk",
            Mode::Connect => "connect",
        })
    }
}

/// What a correct reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The uppercase of the message: the uppercase loop.
    #[default]
    Upper,
    /// The message itself: a server run with `--service echo`.
    Echo,
}

impl Expect {
    /// What the server sends after the last reply when the client sends
    /// `quit\n` and half-closes: the uppercase loop closes without
    /// answering it, echo sends it back and closes at end of stream.
    fn tail(self) -> &'static [u8] {
        match self {
            Expect::Upper => b"",
            Expect::Echo => b"quit\n",
        }
    }
}

/// Everything a run needs; the `poolload` flags map one to one.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Server address, `HOST:PORT`.
    pub addr: String,
    /// Concurrent connections (or connect loops).
    pub connections: usize,
    /// Bytes per message including the trailing `\n`; at least [`MIN_SIZE`].
    pub size: usize,
    /// Measured time of a timed run (ignored with `messages` and in bulk
    /// mode).
    pub duration: Duration,
    /// Round trips (connect mode: cycles) per connection; when set, the run
    /// ends when all are done instead of after `duration`.
    pub messages: Option<u64>,
    /// Messages in flight per connection (pingpong).
    pub pipeline: usize,
    /// Limit on each connect attempt.
    pub connect_timeout: Duration,
    /// Time at the start during which round trips are not counted.
    pub warmup: Duration,
    /// Hard cap on the whole run; `None` = warm-up + duration +
    /// [`DEADLINE_SLACK`].
    pub deadline: Option<Duration>,
    /// What each connection does.
    pub mode: Mode,
    /// Bulk mode: bytes streamed per connection.
    pub bulk_bytes: u64,
    /// What a correct reply is.
    pub expect: Expect,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            addr: crate::DEFAULT_ADDR.to_string(),
            connections: 8,
            size: 64,
            duration: Duration::from_secs(10),
            messages: None,
            pipeline: 1,
            connect_timeout: Duration::from_secs(5),
            warmup: Duration::ZERO,
            deadline: None,
            mode: Mode::Pingpong,
            bulk_bytes: 64 << 20,
            expect: Expect::Upper,
        }
    }
}

impl LoadConfig {
    /// The hard cap on the run: the configured deadline, or warm-up +
    /// duration + [`DEADLINE_SLACK`].
    pub fn effective_deadline(&self) -> Duration {
        self.deadline
            .unwrap_or_else(|| self.warmup + self.duration + DEADLINE_SLACK)
    }

    /// Checks the limits the command line also enforces, for library
    /// callers.
    ///
    /// # Errors
    ///
    /// [`LoadError::Config`] naming the setting and its limit.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: &str| Err(LoadError::Config(m.to_string()));
        if self.connections == 0 {
            return bad("connections must be at least 1");
        }
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return bad("size must be between 2 bytes and 16 MiB");
        }
        if self.pipeline == 0 {
            return bad("pipeline must be at least 1");
        }
        if self.messages == Some(0) {
            return bad("messages must be at least 1");
        }
        if self.duration.is_zero() && self.messages.is_none() && self.mode != Mode::Bulk {
            return bad("duration must be more than 0 (or give a message count)");
        }
        if self.mode == Mode::Bulk && self.bulk_bytes == 0 {
            return bad("bulk size must be more than 0");
        }
        if self.connect_timeout.is_zero() || self.effective_deadline().is_zero() {
            return bad("connect timeout and deadline must be more than 0");
        }
        Ok(())
    }
}

/// Why a run could not start.
#[derive(Debug)]
pub enum LoadError {
    /// A setting is out of range.
    Config(String),
    /// The address did not resolve.
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        source: io::Error,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Config(m) => write!(f, "invalid settings: {m}"),
            LoadError::Resolve { addr, source } => write!(
                f,
                "cannot resolve `{addr}` ({source}); give --addr as HOST:PORT, e.g. 127.0.0.1:8080"
            ),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Config(_) => None,
            LoadError::Resolve { source, .. } => Some(source),
        }
    }
}

/// Counters updated while a run goes on, for a progress display. They lag
/// a little: connections add to them in small batches.
#[derive(Debug, Default)]
pub struct Live {
    /// Round trips counted so far (connect mode: cycles; bulk: messages).
    pub round_trips: AtomicU64,
    /// Reply bytes checked so far.
    pub bytes: AtomicU64,
    /// Wrong replies so far.
    pub wrong: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
    /// When [`stop`](Live::stop) was first called.
    stopped_at: OnceLock<Instant>,
}

impl Live {
    /// Ends the run early, as if its measured time ended now (poolload
    /// calls it on Ctrl-C): connections start no new message, finish the
    /// ones in flight, close as usual, and [`run`] returns a report of the
    /// time until now with [`Report::interrupted`] set. A connection still
    /// waiting for its first reply gives up at once and counts as never
    /// served. The hard deadline still bounds what is left. Calling it
    /// again changes nothing.
    pub fn stop(&self) {
        let _ = self.stopped_at.set(Instant::now());
    }

    /// When [`stop`](Live::stop) was called, if it was.
    pub fn stopped_at(&self) -> Option<Instant> {
        self.stopped_at.get().copied()
    }
}

/// The result of a run; the `--json` line is this, serialized.
///
/// Latencies are in microseconds; `MB` is 10^6 bytes. Fields that do not
/// apply to a mode are 0 (latency percentiles in bulk mode,
/// `connects_per_sec` outside connect mode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The mode that ran.
    pub mode: Mode,
    /// The address as given.
    pub addr: String,
    /// What a correct reply was.
    pub expect: Expect,
    /// Connections (or connect loops) asked for.
    pub connections: usize,
    /// Message size in bytes.
    pub size: usize,
    /// Messages in flight per connection.
    pub pipeline: usize,
    /// The measured time, in seconds, that the rates divide by.
    pub duration_s: f64,
    /// Round trips counted (connect mode: whole cycles; bulk mode: message
    /// lines whose reply was read in full).
    pub round_trips: u64,
    /// `round_trips / duration_s`.
    pub rt_per_sec: f64,
    /// Reply bytes counted (bulk mode: every reply byte read and compared).
    pub bytes_verified: u64,
    /// `bytes_verified / duration_s`, in MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Median latency (pingpong: send to reply complete; connect: whole
    /// cycle).
    pub p50_us: u64,
    /// 90th percentile latency.
    pub p90_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
    /// 99.9th percentile latency.
    pub p999_us: u64,
    /// Highest latency.
    pub max_us: u64,
    /// Replies that differed from the expected bytes (plus unexpected bytes
    /// after the last reply).
    pub wrong_replies: u64,
    /// Connections that failed: refused, reset, closed early, timed out.
    pub errors: u64,
    /// Connections that connected but got no reply within the run (they
    /// waited in the server's accept queue), then were closed.
    pub never_served: u64,
    /// Connections answered with a `BUSY` line instead of a reply.
    pub rejected: u64,
    /// Fewest round trips counted on one connection (loop).
    pub fewest_rt: u64,
    /// Most round trips counted on one connection (loop).
    pub most_rt: u64,
    /// Median time from connect to the first complete reply: the accept
    /// queue's wait as seen from outside.
    pub first_reply_p50_us: u64,
    /// 99th percentile of the same.
    pub first_reply_p99_us: u64,
    /// Longest of the same.
    pub first_reply_max_us: u64,
    /// Connect mode: counted cycles per second.
    pub connects_per_sec: f64,
    /// The hard deadline passed before the run finished: counts are
    /// incomplete.
    pub cut_by_deadline: bool,
    /// The run was ended early by [`Live::stop`] (Ctrl-C): the figures
    /// cover the time until then. Not a failure by itself.
    pub interrupted: bool,
    /// A few distinct error messages (and notes on unexpected bytes after
    /// the last reply), each with how often it happened.
    pub error_examples: Vec<String>,
}

impl Report {
    /// True when every reply was right, nothing failed and the run was not
    /// cut. Unserved and rejected connections are not failures by
    /// themselves.
    pub fn passed(&self) -> bool {
        self.wrong_replies == 0 && self.errors == 0 && !self.cut_by_deadline
    }

    /// One sentence saying what went wrong, or `None` if [`passed`](Self::passed).
    pub fn failure_summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.wrong_replies > 0 {
            parts.push(format!(
                "{} wrong {} (bytes differed from the {} expected)",
                self.wrong_replies,
                plural(self.wrong_replies, "reply", "replies"),
                match self.expect {
                    Expect::Upper => "uppercase reply",
                    Expect::Echo => "echo",
                }
            ));
        }
        if self.errors > 0 {
            let example = self
                .error_examples
                .first()
                .map(|e| format!(", e.g. {e}"))
                .unwrap_or_default();
            parts.push(format!(
                "{} {}{example}",
                self.errors,
                plural(self.errors, "error", "errors")
            ));
        }
        if self.cut_by_deadline {
            parts.push("the run hit its --deadline before finishing".to_string());
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "poolload: {} mode, {} {} to {}, {}-byte messages, pipeline {}, expecting {} replies",
            self.mode,
            self.connections,
            plural(self.connections as u64, "connection", "connections"),
            self.addr,
            self.size,
            self.pipeline,
            match self.expect {
                Expect::Upper => "uppercase",
                Expect::Echo => "echo",
            }
        )?;
        writeln!(f, "  measured       {:.3} s", self.duration_s)?;
        let what = match self.mode {
            Mode::Pingpong => "round trips",
            Mode::Bulk => "messages",
            Mode::Connect => "cycles",
        };
        writeln!(
            f,
            "  {what:<14} {} ({:.1}/s); per connection fewest {}, most {}",
            self.round_trips, self.rt_per_sec, self.fewest_rt, self.most_rt
        )?;
        writeln!(
            f,
            "  throughput     {:.2} MB/s of verified replies ({} bytes; MB = 10^6 bytes)",
            self.mb_per_sec, self.bytes_verified
        )?;
        if self.mode == Mode::Connect {
            writeln!(f, "  connects       {:.1}/s", self.connects_per_sec)?;
        }
        if self.mode != Mode::Bulk {
            writeln!(
                f,
                "  latency        p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
                self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
            )?;
        }
        writeln!(
            f,
            "  first reply    p50 {} us, p99 {} us, max {} us (connect to first reply)",
            self.first_reply_p50_us, self.first_reply_p99_us, self.first_reply_max_us
        )?;
        writeln!(
            f,
            "  never served   {}, rejected (BUSY) {}",
            self.never_served, self.rejected
        )?;
        write!(
            f,
            "  wrong replies  {}, errors {}, cut by deadline: {}",
            self.wrong_replies,
            self.errors,
            if self.cut_by_deadline { "yes" } else { "no" }
        )?;
        if self.interrupted {
            write!(
                f,
                "\n  interrupted    stopped early (Ctrl-C); the figures cover the {:.3} s measured",
                self.duration_s
            )?;
        }
        for e in &self.error_examples {
            write!(f, "\n  error          {e}")?;
        }
        Ok(())
    }
}

pub use crate::config::parse_duration;

/// Like [`parse_duration`], but zero is refused.
///
/// # Errors
///
/// A message saying how to write a duration, or that it must be positive.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be more than 0"));
    }
    Ok(d)
}

// ---------------------------------------------------------------------------
// Messages and the reply check (pure).

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
struct Pattern {
    size: usize,
    variants: usize,
    sent: Vec<u8>,
    expected: Vec<u8>,
}

impl Pattern {
    fn new(size: usize, expect: Expect) -> Pattern {
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

    fn message(&self, variant: usize) -> &[u8] {
        &self.sent[variant * self.size..(variant + 1) * self.size]
    }
}

/// Compares a reply stream against the expected replies, message by
/// message, whatever the read boundaries.
#[derive(Debug)]
struct Checker<'p> {
    expected: &'p [u8],
    size: usize,
    /// Index in `expected` of the next byte.
    pos: usize,
    /// Bytes of the current reply seen so far.
    in_reply: usize,
    /// The current reply already differs.
    bad: bool,
}

impl<'p> Checker<'p> {
    fn new(pattern: &'p Pattern, first_variant: usize) -> Self {
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
    fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
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
    fn partial_is_wrong(&self) -> bool {
        self.in_reply > 0 && self.bad
    }
}

// ---------------------------------------------------------------------------
// Report math (pure).

/// What one connection (or connect loop) did.
#[derive(Debug, Default)]
struct Tally {
    counted: u64,
    bytes: u64,
    wrong: u64,
    errors: u64,
    never_served: u64,
    rejected: u64,
    cut: bool,
    /// When the last counted reply completed.
    last_counted: Option<Instant>,
    /// When the connection's work ended (before its close).
    finished: Option<Instant>,
    error_messages: Vec<String>,
}

impl Tally {
    fn error(&mut self, live: &Live, message: String) {
        self.errors += 1;
        live.errors.fetch_add(1, Relaxed);
        if self.error_messages.len() < MAX_EXAMPLES {
            self.error_messages.push(message);
        }
    }

    fn wrong(&mut self, live: &Live, n: u64) {
        if n > 0 {
            self.wrong += n;
            live.wrong.fetch_add(n, Relaxed);
        }
    }
}

/// The measured window and the histograms, as the drivers left them.
#[derive(Debug)]
struct Measured<'h> {
    window: Duration,
    latency: &'h Histogram<u64>,
    first_reply: &'h Histogram<u64>,
    interrupted: bool,
}

/// Turns per-connection tallies into the report.
fn build_report(cfg: &LoadConfig, tallies: &[Tally], m: &Measured<'_>) -> Report {
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let round_trips = sum(|t| t.counted);
    let bytes_verified = sum(|t| t.bytes);
    let secs = m.window.as_secs_f64();
    let rate = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
    let q = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    let bulk = cfg.mode == Mode::Bulk;

    // Distinct error messages with counts, most frequent first.
    let mut examples: Vec<(String, u64)> = Vec::new();
    for msg in tallies.iter().flat_map(|t| &t.error_messages) {
        match examples.iter_mut().find(|(m, _)| m == msg) {
            Some((_, n)) => *n += 1,
            None => examples.push((msg.clone(), 1)),
        }
    }
    examples.sort_by_key(|e| std::cmp::Reverse(e.1));
    let error_examples = examples
        .into_iter()
        .take(MAX_EXAMPLES)
        .map(|(m, n)| if n > 1 { format!("{m} (x{n})") } else { m })
        .collect();

    Report {
        mode: cfg.mode,
        addr: cfg.addr.clone(),
        expect: cfg.expect,
        connections: cfg.connections,
        size: cfg.size,
        pipeline: cfg.pipeline,
        duration_s: secs,
        round_trips,
        rt_per_sec: rate(round_trips as f64),
        bytes_verified,
        mb_per_sec: rate(bytes_verified as f64) / 1e6,
        p50_us: if bulk { 0 } else { q(m.latency, 0.5) },
        p90_us: if bulk { 0 } else { q(m.latency, 0.9) },
        p99_us: if bulk { 0 } else { q(m.latency, 0.99) },
        p999_us: if bulk { 0 } else { q(m.latency, 0.999) },
        max_us: if bulk || m.latency.is_empty() {
            0
        } else {
            m.latency.max()
        },
        wrong_replies: sum(|t| t.wrong),
        errors: sum(|t| t.errors),
        never_served: sum(|t| t.never_served),
        rejected: sum(|t| t.rejected),
        fewest_rt: tallies.iter().map(|t| t.counted).min().unwrap_or(0),
        most_rt: tallies.iter().map(|t| t.counted).max().unwrap_or(0),
        first_reply_p50_us: q(m.first_reply, 0.5),
        first_reply_p99_us: q(m.first_reply, 0.99),
        first_reply_max_us: if m.first_reply.is_empty() {
            0
        } else {
            m.first_reply.max()
        },
        connects_per_sec: if cfg.mode == Mode::Connect {
            rate(round_trips as f64)
        } else {
            0.0
        },
        cut_by_deadline: tallies.iter().any(|t| t.cut),
        interrupted: m.interrupted,
        error_examples,
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// The run.

/// What every connection thread shares.
#[derive(Debug)]
struct Ctx<'a> {
    cfg: &'a LoadConfig,
    live: &'a Live,
    addrs: Vec<SocketAddr>,
    /// The address that last accepted a connection; tried first.
    preferred: AtomicUsize,
    pattern: Pattern,
    /// Bulk mode: the pattern repeated to about [`BULK_CHUNK`] bytes.
    bulk_chunk: Vec<u8>,
    warmup_end: Instant,
    /// End of the measured time of a timed run; `None` when the run ends by
    /// count (`messages`, bulk).
    measure_end: Option<Instant>,
    deadline: Instant,
    latency: Mutex<Histogram<u64>>,
    first_reply: Mutex<Histogram<u64>>,
}

/// Runs the load described by `cfg` and returns its report. `live` is
/// updated as the run goes (for a progress bar); pass a fresh one.
///
/// Individual connection failures do not stop the run: they are counted in
/// [`Report::errors`].
///
/// # Errors
///
/// [`LoadError::Config`] for settings out of range, [`LoadError::Resolve`]
/// when the address does not resolve.
pub fn run(cfg: &LoadConfig, live: &Live) -> Result<Report, LoadError> {
    cfg.validate()?;
    let addrs: Vec<SocketAddr> = cfg
        .addr
        .to_socket_addrs()
        .map_err(|source| LoadError::Resolve {
            addr: cfg.addr.clone(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(LoadError::Resolve {
            addr: cfg.addr.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "the address resolved to nothing"),
        });
    }
    let pattern = Pattern::new(cfg.size, cfg.expect);
    let bulk_chunk = if cfg.mode == Mode::Bulk {
        // A whole number of patterns, so the stream position modulo the
        // pattern length stays right across chunks.
        pattern
            .sent
            .repeat((BULK_CHUNK / pattern.sent.len()).max(1))
    } else {
        Vec::new()
    };

    let t0 = Instant::now();
    let warmup_end = t0 + cfg.warmup;
    let timed = cfg.messages.is_none() && cfg.mode != Mode::Bulk;
    let ctx = Ctx {
        cfg,
        live,
        addrs,
        preferred: AtomicUsize::new(0),
        pattern,
        bulk_chunk,
        warmup_end,
        measure_end: timed.then(|| warmup_end + cfg.duration),
        deadline: t0 + cfg.effective_deadline(),
        latency: Mutex::new(new_histogram()),
        first_reply: Mutex::new(new_histogram()),
    };

    let tallies: Vec<Tally> = thread::scope(|s| {
        let mut handles = Vec::with_capacity(cfg.connections);
        let mut failed = Vec::new();
        for idx in 0..cfg.connections {
            let ctx = &ctx;
            let spawned = thread::Builder::new()
                .name(format!("poolload-{idx}"))
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || match ctx.cfg.mode {
                    Mode::Pingpong => pingpong(ctx, idx),
                    Mode::Bulk => bulk(ctx, idx),
                    Mode::Connect => connect_loop(ctx, idx),
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    let mut t = Tally::default();
                    t.error(
                        live,
                        format!(
                            "cannot start a thread per connection ({e}); use fewer --connections"
                        ),
                    );
                    failed.push(t);
                }
            }
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    let mut t = Tally::default();
                    t.error(
                        live,
                        "a connection thread panicked (a bug in poolload)".into(),
                    );
                    t
                })
            })
            .chain(failed)
            .collect()
    });

    // The measured window: from the end of warm-up to the last counted
    // reply (count-bound runs), or to the end of the measured time unless
    // every connection stopped sooner (timed runs).
    let last = |f: fn(&Tally) -> Option<Instant>| tallies.iter().filter_map(f).max();
    let window = match ctx.measure_end {
        Some(end) => {
            let end = ctx.end_of_measure().unwrap_or(end);
            let stopped = last(|t| t.finished).unwrap_or(warmup_end);
            stopped.min(end).saturating_duration_since(warmup_end)
        }
        None if cfg.mode == Mode::Bulk => last(|t| t.finished)
            .unwrap_or(t0)
            .saturating_duration_since(t0),
        None => last(|t| t.last_counted)
            .unwrap_or(warmup_end)
            .saturating_duration_since(warmup_end),
    };
    let latency = ctx.latency.lock().unwrap_or_else(|e| e.into_inner());
    let first_reply = ctx.first_reply.lock().unwrap_or_else(|e| e.into_inner());
    Ok(build_report(
        cfg,
        &tallies,
        &Measured {
            window,
            latency: &latency,
            first_reply: &first_reply,
            interrupted: live.stopped_at().is_some(),
        },
    ))
}

/// How a blocking read ended.
enum Got {
    Data(usize),
    Eof,
    /// No data: one [`SLICE`] passed ([`read_once`]), or the caller's
    /// `give_up` said stop ([`read_some`]).
    Idle,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One read that waits at most one [`SLICE`] (then `Got::Idle`).
fn read_once(mut stream: &TcpStream, buf: &mut [u8]) -> io::Result<Got> {
    loop {
        match stream.read(buf) {
            Ok(0) => return Ok(Got::Eof),
            Ok(n) => return Ok(Got::Data(n)),
            Err(e) if is_timeout(&e) => return Ok(Got::Idle),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads, waking every [`SLICE`] to ask `give_up`; `Got::Idle` means it
/// said give up.
fn read_some(
    stream: &TcpStream,
    buf: &mut [u8],
    give_up: impl Fn(Instant) -> bool,
) -> io::Result<Got> {
    loop {
        match read_once(stream, buf)? {
            Got::Idle if !give_up(Instant::now()) => {}
            got => return Ok(got),
        }
    }
}

/// Writes all of `buf` unless `give_up` says stop first (then `Ok(false)`).
/// `std`'s `write_all` cannot be used: after a timeout it would not say how
/// much was already sent.
fn write_all(
    mut stream: &TcpStream,
    mut buf: &[u8],
    give_up: impl Fn(Instant) -> bool,
) -> io::Result<bool> {
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if is_timeout(&e) => {
                if give_up(Instant::now()) {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Latencies of one connection, merged into a shared histogram a batch at
/// a time so connections neither allocate nor contend per message.
struct Latencies<'a> {
    buf: Vec<u64>,
    sink: &'a Mutex<Histogram<u64>>,
}

impl<'a> Latencies<'a> {
    fn new(sink: &'a Mutex<Histogram<u64>>) -> Self {
        Latencies {
            buf: Vec::with_capacity(LATENCY_BATCH),
            sink,
        }
    }

    fn record(&mut self, d: Duration) {
        self.buf.push(micros(d));
        if self.buf.len() == LATENCY_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut h = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        for &us in &self.buf {
            h.saturating_record(us.clamp(1, HIST_MAX_US));
        }
        self.buf.clear();
    }
}

impl Drop for Latencies<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Adds to the [`Live`] counters in small batches.
struct Progress<'a> {
    live: &'a Live,
    round_trips: u64,
    bytes: u64,
    last: Instant,
}

impl<'a> Progress<'a> {
    fn new(live: &'a Live) -> Self {
        Progress {
            live,
            round_trips: 0,
            bytes: 0,
            last: Instant::now(),
        }
    }

    fn add(&mut self, round_trips: u64, bytes: u64, now: Instant) {
        self.round_trips += round_trips;
        self.bytes += bytes;
        if self.round_trips >= 64 || now.duration_since(self.last) >= Duration::from_millis(50) {
            self.flush();
            self.last = now;
        }
    }

    fn flush(&mut self) {
        self.live.round_trips.fetch_add(self.round_trips, Relaxed);
        self.live.bytes.fetch_add(self.bytes, Relaxed);
        self.round_trips = 0;
        self.bytes = 0;
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A `BUSY …` line instead of a first reply. No expected reply starts with
/// `BUSY` (see [`message`]), so this cannot hide a wrong reply.
fn is_busy(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(b"BUSY")
}

impl Ctx<'_> {
    fn past_deadline(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Was the run stopped early ([`Live::stop`])?
    fn stopped(&self) -> bool {
        self.live.stopped_at().is_some()
    }

    /// The end of the measured time: the configured one (timed runs) or
    /// the moment the run was stopped, whichever is first.
    fn end_of_measure(&self) -> Option<Instant> {
        match (self.measure_end, self.live.stopped_at()) {
            (Some(end), Some(stop)) => Some(end.min(stop)),
            (end, stop) => end.or(stop),
        }
    }

    fn past_measure_end(&self, now: Instant) -> bool {
        self.end_of_measure().is_some_and(|m| now >= m)
    }

    /// May a connection start another message (cycle) at `now`, with
    /// `budget` counted ones left (count-bound runs)?
    fn may_start(&self, now: Instant, budget: u64) -> bool {
        if self.past_deadline(now) || self.stopped() {
            return false;
        }
        match self.measure_end {
            Some(end) => now < end,
            None => budget > 0,
        }
    }

    /// Is a round trip sent at `sent` and complete at `done` counted?
    fn counts(&self, sent: Instant, done: Instant) -> bool {
        sent >= self.warmup_end && self.end_of_measure().map_or(true, |m| done <= m)
    }

    /// Connects to the first address that accepts, within the connect
    /// timeout and the deadline. On failure the tally says why and `None`
    /// is returned.
    fn connect(&self, t: &mut Tally) -> Option<TcpStream> {
        let n = self.addrs.len();
        let first = self.preferred.load(Relaxed);
        let mut last_err = None;
        for i in 0..n {
            let k = (first + i) % n;
            let now = Instant::now();
            let left = self.deadline.saturating_duration_since(now);
            if left.is_zero() {
                t.cut = true;
                return None;
            }
            let limit = self.cfg.connect_timeout.min(left);
            match TcpStream::connect_timeout(&self.addrs[k], limit) {
                Ok(s) => {
                    self.preferred.store(k, Relaxed);
                    let set = s
                        .set_nodelay(true)
                        .and_then(|()| s.set_read_timeout(Some(SLICE)))
                        .and_then(|()| s.set_write_timeout(Some(SLICE)));
                    if let Err(e) = set {
                        t.error(self.live, format!("cannot set up a socket: {e}"));
                        return None;
                    }
                    return Some(s);
                }
                Err(e) if is_timeout(&e) && limit < self.cfg.connect_timeout => {
                    t.cut = true;
                    return None;
                }
                Err(e) => last_err = Some((k, e)),
            }
        }
        if let Some((k, e)) = last_err {
            let addr = self.addrs[k];
            let hint = match e.kind() {
                io::ErrorKind::ConnectionRefused => {
                    "; is poolserver running there? start it with `poolserver --addr ADDR`"
                }
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    "; the server's listen queue may be full, or raise --connect-timeout"
                }
                _ if e.raw_os_error() == Some(24) => {
                    "; raise the open-files limit (`ulimit -n`) or use fewer --connections"
                }
                _ => "",
            };
            t.error(self.live, format!("cannot connect to {addr}: {e}{hint}"));
        }
        None
    }

    /// Ends a conversation the polite way: `quit` and a half-close, then
    /// reads to the server's close, checking that nothing but the expected
    /// tail comes after the last reply.
    fn close(&self, stream: &TcpStream, buf: &mut [u8], t: &mut Tally) {
        let give_up = |now| self.past_deadline(now);
        let sent = write_all(stream, b"quit\n", give_up)
            .and_then(|done| stream.shutdown(Shutdown::Write).map(|()| done));
        match sent {
            Ok(true) => {}
            Ok(false) => {
                t.cut = true;
                return;
            }
            Err(e) => {
                t.error(self.live, format!("sending quit failed: {e}"));
                return;
            }
        }
        let tail = self.cfg.expect.tail();
        let mut seen = 0usize;
        let mut differs = false;
        loop {
            match read_some(stream, buf, give_up) {
                Ok(Got::Data(n)) => {
                    let expected = &tail[seen.min(tail.len())..];
                    if n > expected.len() || buf[..n] != expected[..n] {
                        differs = true;
                    }
                    seen += n;
                    // A server that never stops sending must not hold us.
                    if self.past_deadline(Instant::now()) {
                        t.cut = true;
                        return;
                    }
                }
                Ok(Got::Eof) => break,
                Ok(Got::Idle) => {
                    t.cut = true;
                    return;
                }
                Err(e) => {
                    t.error(self.live, format!("reading the server's close failed: {e}"));
                    return;
                }
            }
        }
        if differs || seen != tail.len() {
            t.wrong(self.live, 1);
            if t.error_messages.len() < MAX_EXAMPLES {
                t.error_messages.push(format!(
                    "after `quit` the server sent {seen} bytes, expected {:?}",
                    String::from_utf8_lossy(tail)
                ));
            }
        }
    }

    /// Records a connection's first reply. One that only came after the
    /// measured time ended counts as never served: otherwise a connection
    /// queued behind the measured ones would look served whenever their
    /// closes freed a worker just before it gave up.
    ///
    /// Connect mode passes `late_is_unserved = false`: there a cycle that
    /// merely straddles the end of the measured time is normal, and it is
    /// neither counted nor recorded.
    fn first_reply(&self, t: &mut Tally, now: Instant, connected: Instant, late_is_unserved: bool) {
        if self.past_measure_end(now) {
            t.never_served += u64::from(late_is_unserved);
            return;
        }
        let mut h = self.first_reply.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(micros(now.duration_since(connected)).clamp(1, HIST_MAX_US));
    }
}

/// The sending side of a pingpong or connect conversation.
///
/// Messages are written without blocking and the caller reads replies
/// whenever the socket will not take more. Blocking writes would deadlock
/// once the bytes in flight (`pipeline × size`) outgrow the socket buffers:
/// the server stops reading while it waits to write replies that this
/// side, stuck in its write, never reads.
struct Sender<'a> {
    stream: &'a TcpStream,
    pattern: &'a Pattern,
    variant: usize,
    /// Bytes of the current message already written; `None` between
    /// messages.
    offset: Option<usize>,
}

/// What [`Sender::push`] achieved.
enum Pushed {
    /// The current message is fully written.
    Done,
    /// The socket takes no more for now: read replies, then push again.
    Full,
}

impl<'a> Sender<'a> {
    fn new(stream: &'a TcpStream, pattern: &'a Pattern, first_variant: usize) -> Self {
        Sender {
            stream,
            pattern,
            variant: first_variant,
            offset: None,
        }
    }

    /// A message is partly written.
    fn pending(&self) -> bool {
        self.offset.is_some()
    }

    /// Starts the next message; [`push`](Self::push) writes it.
    fn start(&mut self) {
        debug_assert!(self.offset.is_none());
        self.offset = Some(0);
    }

    /// Writes as much of the current message as the socket takes at once.
    fn push(&mut self) -> io::Result<Pushed> {
        let Some(mut off) = self.offset else {
            return Ok(Pushed::Done);
        };
        let msg = self.pattern.message(self.variant);
        while off < msg.len() {
            match send_now(self.stream, &msg[off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if is_timeout(&e) => {
                    self.offset = Some(off);
                    return Ok(Pushed::Full);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.offset = None;
        self.variant = (self.variant + 1) % self.pattern.variants;
        Ok(Pushed::Done)
    }
}

/// One `send(2)` that does not wait for room in the socket buffer
/// (`WouldBlock` instead), on a socket that otherwise blocks.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_now(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    // MSG_NOSIGNAL as std does: a reset peer is an error, not a SIGPIPE.
    socket2::SockRef::from(stream).send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Elsewhere: a write that waits at most one [`SLICE`], which is as safe,
/// only slower when the socket buffer is full.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_now(mut stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    stream.write(buf)
}

/// Pingpong: `pipeline` messages in flight, each reply checked and timed,
/// the next message sent as each reply completes.
fn pingpong(ctx: &Ctx<'_>, idx: usize) -> Tally {
    let mut t = Tally::default();
    let Some(stream) = ctx.connect(&mut t) else {
        t.finished = Some(Instant::now());
        return t;
    };
    let connected = Instant::now();
    let pattern = &ctx.pattern;
    let size = pattern.size;
    let window = ctx.cfg.pipeline;
    let first_variant = idx % pattern.variants;
    let mut sender = Sender::new(&stream, pattern, first_variant);
    let mut checker = Checker::new(pattern, first_variant);
    // Send times of the messages in flight, oldest first.
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(window);
    let mut budget = ctx.cfg.messages.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; READ_BUF];
    let mut latencies = Latencies::new(&ctx.latency);
    let mut progress = Progress::new(ctx.live);
    let mut served = false;
    let mut now = connected;

    let clean = 'conversation: loop {
        // Fill the window, as far as the socket takes it.
        loop {
            if !sender.pending() {
                if in_flight.len() == window || !ctx.may_start(now, budget) {
                    break;
                }
                sender.start();
                in_flight.push_back(now);
                if now >= ctx.warmup_end {
                    budget -= 1;
                }
            }
            match sender.push() {
                Ok(Pushed::Done) => {}
                Ok(Pushed::Full) => break,
                Err(e) => {
                    t.error(ctx.live, format!("sending failed: {e}"));
                    break 'conversation false;
                }
            }
        }
        if in_flight.is_empty() {
            // Nothing left to send or to wait for. Ending here without a
            // single reply (connected only after the measured time ended,
            // or the run was stopped first) is still never being served.
            t.never_served += u64::from(!served);
            break true;
        }

        let n = match read_once(&stream, &mut buf) {
            Ok(Got::Data(n)) => n,
            Ok(Got::Idle) => {
                now = Instant::now();
                if ctx.past_deadline(now) || (!served && ctx.past_measure_end(now)) {
                    t.never_served += u64::from(!served);
                    t.cut |= ctx.past_deadline(now);
                    break false;
                }
                continue;
            }
            Ok(Got::Eof) => {
                t.error(
                    ctx.live,
                    format!(
                        "the server closed the connection with {} {} outstanding",
                        in_flight.len(),
                        plural(in_flight.len() as u64, "reply", "replies")
                    ),
                );
                break false;
            }
            Err(e) => {
                t.error(ctx.live, format!("receiving failed: {e}"));
                break false;
            }
        };
        now = Instant::now();
        if !served && checker.in_reply == 0 && is_busy(&buf[..n]) {
            t.rejected += 1;
            break false;
        }
        let outstanding = in_flight.len() * size - checker.in_reply;
        let (data, extra) = buf[..n].split_at(n.min(outstanding));
        let (done, wrong) = checker.feed(data);
        t.wrong(ctx.live, wrong);
        if done > 0 && !served {
            served = true;
            ctx.first_reply(&mut t, now, connected, true);
        }
        let mut counted = 0;
        for _ in 0..done {
            let Some(sent) = in_flight.pop_front() else {
                break;
            };
            if ctx.counts(sent, now) {
                counted += 1;
                latencies.record(now.duration_since(sent));
            }
        }
        if counted > 0 {
            t.counted += counted;
            t.bytes += counted * size as u64;
            t.last_counted = Some(now);
        }
        progress.add(counted, data.len() as u64, now);
        if !extra.is_empty() {
            t.wrong(ctx.live, 1);
            t.error(
                ctx.live,
                format!("the server sent {} bytes nobody asked for", extra.len()),
            );
            break false;
        }
        if ctx.past_deadline(now) {
            t.cut = true;
            break false;
        }
    };
    t.finished = Some(Instant::now());
    if clean {
        ctx.close(&stream, &mut buf, &mut t);
    }
    t
}

/// How one connect-mode cycle ended.
enum Cycle {
    /// The reply came back and the server closed after `quit`.
    Done,
    /// The server answered `BUSY`.
    Rejected,
    /// Something is recorded in the tally; stop the loop.
    Stop,
}

/// Connect mode: whole conversations, one after another.
fn connect_loop(ctx: &Ctx<'_>, idx: usize) -> Tally {
    let mut t = Tally::default();
    let pattern = &ctx.pattern;
    let mut variant = idx % pattern.variants;
    let mut budget = ctx.cfg.messages.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; READ_BUF];
    let mut latencies = Latencies::new(&ctx.latency);
    let mut progress = Progress::new(ctx.live);

    loop {
        let start = Instant::now();
        if !ctx.may_start(start, budget) {
            break;
        }
        if start >= ctx.warmup_end {
            budget -= 1;
        }
        let Some(stream) = ctx.connect(&mut t) else {
            break;
        };
        match one_cycle(ctx, &stream, variant, &mut buf, &mut t) {
            Cycle::Done => {}
            Cycle::Rejected => {
                t.rejected += 1;
                continue;
            }
            Cycle::Stop => break,
        }
        drop(stream);
        let end = Instant::now();
        // A wrong reply is still a cycle; it is counted in `wrong_replies`
        // as well and fails the run.
        if ctx.counts(start, end) {
            t.counted += 1;
            t.bytes += pattern.size as u64;
            t.last_counted = Some(end);
            latencies.record(end.duration_since(start));
            progress.add(1, pattern.size as u64, end);
        }
        variant = (variant + 1) % pattern.variants;
    }
    t.finished = Some(Instant::now());
    t
}

/// One message, its reply, `quit`, and the server's close.
fn one_cycle(
    ctx: &Ctx<'_>,
    stream: &TcpStream,
    variant: usize,
    buf: &mut [u8],
    t: &mut Tally,
) -> Cycle {
    let connected = Instant::now();
    let size = ctx.pattern.size;
    let mut sender = Sender::new(stream, &ctx.pattern, variant);
    let mut checker = Checker::new(&ctx.pattern, variant);
    sender.start();
    let mut got = 0usize;
    while got < size {
        if let Err(e) = sender.push() {
            t.error(ctx.live, format!("sending failed: {e}"));
            return Cycle::Stop;
        }
        match read_once(stream, buf) {
            Ok(Got::Data(n)) => {
                if got == 0 && is_busy(&buf[..n]) {
                    return Cycle::Rejected;
                }
                let take = n.min(size - got);
                let (_, wrong) = checker.feed(&buf[..take]);
                t.wrong(ctx.live, wrong);
                got += take;
                if n > take {
                    t.wrong(ctx.live, 1);
                    t.error(
                        ctx.live,
                        format!("the server sent {} bytes nobody asked for", n - take),
                    );
                    return Cycle::Stop;
                }
            }
            // A cycle under way when the measured time ends may finish
            // (uncounted): only the deadline proves it would never be
            // served.
            Ok(Got::Idle) => {
                if ctx.past_deadline(Instant::now()) {
                    t.never_served += 1;
                    t.cut = true;
                    return Cycle::Stop;
                }
            }
            Ok(Got::Eof) => {
                t.error(
                    ctx.live,
                    "the server closed the connection before replying".into(),
                );
                return Cycle::Stop;
            }
            Err(e) => {
                t.error(ctx.live, format!("receiving failed: {e}"));
                return Cycle::Stop;
            }
        }
    }
    ctx.first_reply(t, Instant::now(), connected, false);
    let (errors, cut) = (t.errors, t.cut);
    ctx.close(stream, buf, t);
    if t.errors > errors || t.cut != cut {
        return Cycle::Stop;
    }
    Cycle::Done
}

/// Bulk: a writer thread streams `bulk_bytes` of message lines and
/// half-closes; this thread reads and checks the replies as they come.
fn bulk(ctx: &Ctx<'_>, idx: usize) -> Tally {
    let mut t = Tally::default();
    let Some(stream) = ctx.connect(&mut t) else {
        t.finished = Some(Instant::now());
        return t;
    };
    let connected = Instant::now();
    let pattern = &ctx.pattern;
    let total = ctx.cfg.bulk_bytes;
    let first_variant = idx % pattern.variants;
    // Set by either side when it stops early, so the other does not wait
    // for the deadline.
    let abort = AtomicBool::new(false);
    // Bytes the writer has sent; less than `total` when the run is stopped.
    let sent = AtomicU64::new(0);

    thread::scope(|s| {
        let writer = thread::Builder::new()
            .name(format!("poolload-{idx}-writer"))
            .stack_size(128 * 1024)
            .spawn_scoped(s, || {
                let chunk = &ctx.bulk_chunk;
                let mut off = first_variant * pattern.size;
                let mut left = total;
                let give_up = |n| ctx.past_deadline(n) || abort.load(Relaxed);
                // A stopped run sends no more; the replies to what was
                // sent are still read and checked.
                while left > 0 && !ctx.stopped() {
                    let end = chunk
                        .len()
                        .min(off + usize::try_from(left).unwrap_or(usize::MAX));
                    match write_all(&stream, &chunk[off..end], give_up) {
                        Ok(true) => {}
                        Ok(false) => return Ok(false),
                        Err(e) => {
                            abort.store(true, Relaxed);
                            return Err(e);
                        }
                    }
                    left -= (end - off) as u64;
                    sent.fetch_add((end - off) as u64, SeqCst);
                    off = if end == chunk.len() { 0 } else { end };
                }
                stream.shutdown(Shutdown::Write).map(|()| true)
            });
        let writer = match writer {
            Ok(w) => w,
            Err(e) => {
                t.error(ctx.live, format!("cannot start a writer thread ({e})"));
                return;
            }
        };

        let mut checker = Checker::new(pattern, first_variant);
        let mut buf = vec![0u8; READ_BUF];
        let mut progress = Progress::new(ctx.live);
        let mut received: u64 = 0;
        let mut served = false;
        let give_up = |n| ctx.past_deadline(n) || abort.load(Relaxed);
        loop {
            match read_some(&stream, &mut buf, give_up) {
                Ok(Got::Data(n)) => {
                    let now = Instant::now();
                    if received == 0 && is_busy(&buf[..n]) {
                        t.rejected += 1;
                        break;
                    }
                    let take = n.min(usize::try_from(total - received).unwrap_or(usize::MAX));
                    let (done, wrong) = checker.feed(&buf[..take]);
                    t.wrong(ctx.live, wrong);
                    received += take as u64;
                    t.bytes += take as u64;
                    t.counted += done;
                    if done > 0 {
                        t.last_counted = Some(now);
                        if !served {
                            served = true;
                            ctx.first_reply(&mut t, now, connected, true);
                        }
                    }
                    progress.add(done, take as u64, now);
                    if n > take {
                        t.wrong(ctx.live, 1);
                        t.error(
                            ctx.live,
                            format!("the server sent {} bytes nobody asked for", n - take),
                        );
                        break;
                    }
                }
                Ok(Got::Eof) => {
                    if checker.partial_is_wrong() {
                        t.wrong(ctx.live, 1);
                    }
                    // The writer's count is final: the server closes only
                    // after our FIN, which the writer sends after its last
                    // update.
                    let expected = if ctx.stopped() {
                        sent.load(SeqCst)
                    } else {
                        total
                    };
                    if received < expected {
                        t.error(
                            ctx.live,
                            format!(
                                "the server closed the connection after {received} of {expected} bytes"
                            ),
                        );
                    }
                    break;
                }
                Ok(Got::Idle) => {
                    if ctx.past_deadline(Instant::now()) {
                        t.cut = true;
                        if !served {
                            t.never_served += 1;
                        }
                    }
                    break;
                }
                Err(e) => {
                    t.error(ctx.live, format!("receiving failed: {e}"));
                    break;
                }
            }
        }
        t.finished = Some(Instant::now());
        abort.store(true, Relaxed);
        match writer.join() {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => t.cut |= ctx.past_deadline(Instant::now()),
            // The reader usually reports the same broken connection; one
            // error per connection is enough.
            Ok(Err(e)) if t.errors == 0 => t.error(ctx.live, format!("sending failed: {e}")),
            Ok(Err(_)) => {}
            Err(_) => t.error(
                ctx.live,
                "the writer thread panicked (a bug in poolload)".into(),
            ),
        }
    });
    t
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn tally(counted: u64) -> Tally {
        Tally {
            counted,
            bytes: counted * 64,
            ..Tally::default()
        }
    }

    #[test]
    fn report_math() {
        let cfg = LoadConfig {
            connections: 3,
            ..LoadConfig::default()
        };
        let mut lat = new_histogram();
        for us in 1..=1000 {
            lat.record(us).unwrap();
        }
        let mut first = new_histogram();
        first.record(500).unwrap();
        first.record(1500).unwrap();
        let mut broken = tally(0);
        broken.error(&Live::default(), "boom".into());
        broken.error(&Live::default(), "boom".into());
        broken.never_served = 1;
        let tallies = [tally(100), tally(300), broken];
        let r = build_report(
            &cfg,
            &tallies,
            &Measured {
                window: Duration::from_secs(2),
                latency: &lat,
                first_reply: &first,
                interrupted: false,
            },
        );
        assert_eq!(r.round_trips, 400);
        assert_eq!(r.rt_per_sec, 200.0);
        assert_eq!(r.bytes_verified, 400 * 64);
        assert!((r.mb_per_sec - 400.0 * 64.0 / 2.0 / 1e6).abs() < 1e-12);
        assert_eq!((r.fewest_rt, r.most_rt), (0, 300));
        assert_eq!(r.p50_us, 500);
        assert_eq!(r.p90_us, 900);
        assert_eq!(r.p99_us, 990);
        assert_eq!(r.p999_us, 999);
        assert_eq!(r.max_us, 1000);
        assert_eq!(r.first_reply_max_us, 1500);
        assert_eq!((r.errors, r.never_served, r.wrong_replies), (2, 1, 0));
        assert_eq!(r.error_examples, ["boom (x2)"]);
        assert_eq!(r.connects_per_sec, 0.0);
        assert!(!r.passed());
        assert!(r.failure_summary().unwrap().contains("2 errors, e.g. boom"));
    }

    #[test]
    fn empty_run_reports_zeros_not_nan() {
        let cfg = LoadConfig::default();
        let h = new_histogram();
        let r = build_report(
            &cfg,
            &[tally(0)],
            &Measured {
                window: Duration::ZERO,
                latency: &h,
                first_reply: &h,
                interrupted: false,
            },
        );
        assert_eq!(
            (r.rt_per_sec, r.mb_per_sec, r.p50_us, r.max_us),
            (0.0, 0.0, 0, 0)
        );
        assert!(r.passed());
        assert_eq!(r.failure_summary(), None);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"mode\":\"pingpong\""), "{json}");
    }

    #[test]
    fn durations_and_defaults() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").unwrap_err().contains("250ms"));
        assert!(parse_positive_duration("0").is_err());
        let cfg = LoadConfig {
            warmup: Duration::from_secs(2),
            ..LoadConfig::default()
        };
        assert_eq!(cfg.effective_deadline(), Duration::from_secs(42));
        assert!(cfg.validate().is_ok());
        let bad = LoadConfig {
            size: 1,
            ..LoadConfig::default()
        };
        assert!(matches!(bad.validate(), Err(LoadError::Config(_))));
    }
}
