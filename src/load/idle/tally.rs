//! What the idle connections did (`--idle`), tallied by their one thread
//! and handed to the report.

use std::time::Instant;

use hdrhistogram::Histogram;

use crate::load::report::{new_histogram, MAX_EXAMPLES};

/// What the idle connections did, for the report.
#[derive(Debug)]
pub(in crate::load) struct IdleTally {
    /// Connections that had at least one correct reply during the run.
    pub(in crate::load) served: u64,
    /// Round trips counted (sent after the warm-up, answered before the
    /// end of the run).
    pub(in crate::load) round_trips: u64,
    /// Replies that differed from the expected bytes (and unasked bytes).
    pub(in crate::load) wrong: u64,
    /// Connections that failed: connect refused or timed out, reset,
    /// closed by the server.
    pub(in crate::load) errors: u64,
    /// Connections without a correct reply by the end that did not fail:
    /// waiting in the server's queue, or not connected yet.
    pub(in crate::load) never_served: u64,
    /// Of `never_served`, those not even connected by the end.
    pub(in crate::load) not_connected: u64,
    /// Connections answered with a `BUSY` line.
    pub(in crate::load) rejected: u64,
    /// The hard deadline passed with replies still outstanding.
    pub(in crate::load) cut: bool,
    /// Send-to-reply latencies of the counted round trips.
    pub(in crate::load) latency: Histogram<u64>,
    /// When the idle connections stopped sending.
    pub(in crate::load) finished: Option<Instant>,
    /// The first few error messages, for the report's examples.
    pub(in crate::load) error_messages: Vec<String>,
}

impl IdleTally {
    pub(in crate::load) fn new() -> Self {
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
    pub(in crate::load) fn failed(why: String) -> Self {
        let mut t = IdleTally::new();
        t.error(why);
        t
    }

    pub(in crate::load) fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_messages.len() < MAX_EXAMPLES {
            self.error_messages.push(format!("idle: {message}"));
        }
    }
}
