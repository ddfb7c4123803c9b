//! The shutdown signal every server thread watches.
//!
//! Shutdown has two moments: *begin* (stop accepting; live connections go
//! on) and the *deadline* (`begin + grace`; whatever is still live is
//! closed). Threads learn of them in the way that suits where they block:
//!
//! * the acceptor and the monitor block in crossbeam `select!`, so they
//!   also wait on [`Shutdown::signal`], a channel whose only sender is
//!   dropped at begin: disconnection wakes every receiver at once;
//! * workers block in socket reads and writes whose timeouts are cut into
//!   short slices ([`POLL_SLICE`]), and look at [`Shutdown::deadline_passed`]
//!   after every slice and every read: a worker notices the deadline within
//!   one slice even while a silent client holds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

/// The longest a worker blocks in one read or write before it looks at the
/// shutdown deadline (and the idle and write timers) again.
///
/// 100 ms keeps shutdown prompt while costing an idle worker ten wake-ups
/// a second, which is nothing next to the connection it is holding.
pub(crate) const POLL_SLICE: Duration = Duration::from_millis(100);

/// How long past the deadline a reply already being written may still take
/// to reach a client that reads slowly.
///
/// Cutting it at the deadline itself would lose bytes the server had read
/// and answered from a client that is reading, only slowly (on a loaded
/// machine a client thread can be starved of CPU for a few hundred
/// milliseconds); a client that reads nothing at all is still cut, one
/// second later. Shutdown then takes at most the grace period, this second
/// and the 2-second lingering close.
pub(crate) const WRITE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Shutdown {
    begun: AtomicBool,
    deadline: OnceLock<Instant>,
    /// The only sender of `signal`. Taken and dropped at begin, which
    /// disconnects the channel and wakes everyone selecting on it.
    trigger: Mutex<Option<Sender<()>>>,
    signal: Receiver<()>,
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Shutdown {
            begun: AtomicBool::new(false),
            deadline: OnceLock::new(),
            trigger: Mutex::new(Some(tx)),
            signal: rx,
        }
    }

    /// Starts shutting down with `grace` for live connections. Returns
    /// false if shutdown had already begun (the first deadline stands).
    pub(crate) fn begin(&self, grace: Duration) -> bool {
        let now = Instant::now();
        let first = self.deadline.set(now + grace).is_ok();
        self.begun.store(true, Ordering::Release);
        drop(self.trigger.lock().take());
        first
    }

    /// When the grace period ends, once shutdown has begun.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline.get().copied()
    }

    pub(crate) fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// True once the grace period is over.
    ///
    /// Cheap enough for every read: one atomic load while running.
    pub(crate) fn deadline_passed(&self) -> bool {
        self.has_begun() && self.deadline.get().is_some_and(|d| Instant::now() >= *d)
    }

    /// True once a reply still being written must give up: [`WRITE_GRACE`]
    /// after the deadline.
    pub(crate) fn write_cutoff_passed(&self) -> bool {
        self.has_begun()
            && self
                .deadline
                .get()
                .is_some_and(|d| Instant::now() >= *d + WRITE_GRACE)
    }

    /// A receiver that becomes ready (disconnected) when shutdown begins.
    pub(crate) fn signal(&self) -> &Receiver<()> {
        &self.signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_wakes_signal_and_sets_deadline_once() {
        let s = Shutdown::new();
        assert!(!s.has_begun());
        assert!(s.signal().try_recv().is_err_and(|e| e.is_empty()));
        assert!(s.begin(Duration::ZERO));
        assert!(!s.begin(Duration::from_secs(60)));
        assert!(s.signal().recv().is_err(), "disconnected once begun");
        assert!(s.deadline_passed(), "the first (zero) grace stands");
        assert!(!s.write_cutoff_passed(), "writes get WRITE_GRACE more");
    }
}
