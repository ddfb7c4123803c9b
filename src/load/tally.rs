//! What the load's drivers count as they go — a [`Tally`] per connection
//! (or connect loop), one [`IdleTally`] for the idle connections — and the
//! latency histograms' bounds. The report (`report.rs`) is built from
//! these once the drivers are done; the drivers themselves never see it.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::Live;

/// Highest latency the histograms hold, in microseconds (one hour);
/// anything longer is recorded as this.
const HIST_MAX_US: u64 = 3_600_000_000;
/// Examples of distinct error messages kept for the report.
pub(super) const MAX_EXAMPLES: usize = 5;

/// What one connection (or connect loop) did.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Round trips (cycles, bulk message lines) counted.
    pub(super) counted: u64,
    /// Reply bytes counted.
    pub(super) bytes: u64,
    /// Wrong replies.
    pub(super) wrong: u64,
    /// Errors; each also leaves an example in `error_messages`.
    pub(super) errors: u64,
    /// Connections that got no reply within the run.
    pub(super) never_served: u64,
    /// Connections answered with `BUSY`.
    pub(super) rejected: u64,
    /// The deadline cut this connection's work short.
    pub(super) cut: bool,
    /// When the last counted reply completed.
    pub(super) last_counted: Option<Instant>,
    /// When the connection's work ended (before its close).
    pub(super) finished: Option<Instant>,
    /// The first few error messages, for the report's examples.
    pub(super) error_messages: Vec<String>,
}

impl Tally {
    pub(super) fn error(&mut self, live: &Live, message: String) {
        self.errors += 1;
        live.errors.fetch_add(1, Relaxed);
        if self.error_messages.len() < MAX_EXAMPLES {
            self.error_messages.push(message);
        }
    }

    /// The server sent `n` bytes after every expected reply: a wrong reply
    /// and an error.
    pub(super) fn unasked(&mut self, live: &Live, n: usize) {
        self.wrong(live, 1);
        self.error(live, format!("the server sent {n} bytes nobody asked for"));
    }

    pub(super) fn wrong(&mut self, live: &Live, n: u64) {
        if n > 0 {
            self.wrong += n;
            live.wrong.fetch_add(n, Relaxed);
        }
    }
}

/// What the idle connections did, for the report.
#[derive(Debug)]
pub(super) struct IdleTally {
    /// Connections that had at least one correct reply during the run.
    pub(super) served: u64,
    /// Round trips counted (sent after the warm-up, answered before the
    /// end of the run).
    pub(super) round_trips: u64,
    /// Replies that differed from the expected bytes (and unasked bytes).
    pub(super) wrong: u64,
    /// Connections that failed: connect refused or timed out, reset,
    /// closed by the server.
    pub(super) errors: u64,
    /// Connections without a correct reply by the end that did not fail:
    /// waiting in the server's queue, or not connected yet.
    pub(super) never_served: u64,
    /// Of `never_served`, those not even connected by the end.
    pub(super) not_connected: u64,
    /// Connections answered with a `BUSY` line.
    pub(super) rejected: u64,
    /// The hard deadline passed with replies still outstanding.
    pub(super) cut: bool,
    /// Send-to-reply latencies of the counted round trips.
    pub(super) latency: Histogram<u64>,
    /// When the idle connections stopped sending.
    pub(super) finished: Option<Instant>,
    /// The first few error messages, for the report's examples.
    pub(super) error_messages: Vec<String>,
}

impl IdleTally {
    pub(super) fn new() -> Self {
        IdleTally {
            served: 0,
            round_trips: 0,
            wrong: 0,
            errors: 0,
            never_served: 0,
            not_connected: 0,
            rejected: 0,
            cut: false,
            latency: new_histogram(),
            finished: None,
            error_messages: Vec::new(),
        }
    }

    /// Idle connections that could not run at all: one error says why
    /// (and fails the run), and none of them counts as served.
    pub(super) fn failed(why: String) -> Self {
        let mut t = IdleTally::new();
        t.error(why);
        t
    }

    pub(super) fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_messages.len() < MAX_EXAMPLES {
            self.error_messages.push(format!("idle: {message}"));
        }
    }
}

pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// `d` in microseconds, clamped to what the histograms hold: 1 us (a
/// zero would be refused) to [`HIST_MAX_US`].
pub(super) fn histogram_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, HIST_MAX_US)
}
