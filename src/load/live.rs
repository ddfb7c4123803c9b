//! The counters a run updates while it goes on ([`Live`]), read by a
//! progress display through [`Live::snapshot`], and the stop signal
//! ([`Live::stop`]) that ends a run early. The library draws nothing: the
//! `poolload` binary draws its progress bar from these.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

#[cfg(doc)]
use super::{run, Report};

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

    /// The counters as they are now, for a progress display (poolload's
    /// bar draws these; the library draws nothing).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            round_trips: self.round_trips.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            wrong: self.wrong.load(Relaxed),
            errors: self.errors.load(Relaxed),
            stopped: self.stopped_at().is_some(),
        }
    }
}

/// The [`Live`] counters at one moment ([`Live::snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Round trips counted so far (connect mode: cycles; bulk: messages).
    pub round_trips: u64,
    /// Reply bytes checked so far.
    pub bytes: u64,
    /// Wrong replies so far.
    pub wrong: u64,
    /// Errors so far.
    pub errors: u64,
    /// The run has been asked to stop early.
    pub stopped: bool,
}
