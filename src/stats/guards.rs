//! The RAII guards that move the gauges: a connection is counted live,
//! a worker busy, a listed [`Gauge`] up, for exactly as long as its guard
//! lives, so no panic or early return can leave a number wrong; and the
//! live guard's drop counts the connection closed or rejected (and writes
//! its access line) exactly once.

use std::net::SocketAddr;
use std::sync::atomic::{Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;

use super::{Counters, Gauge, Rejection};
use crate::access::{Access, Ending};

/// Counts one thing in a listed [`Gauge`] for as long as it lives, e.g.
/// `GaugeGuard::new(&counters, Counters::parked)` for a gauge listed as
/// `parked: Gauge => parked;`. Owns an `Arc`, so it can travel with a
/// connection.
#[derive(Debug)]
pub(crate) struct GaugeGuard {
    counters: Arc<Counters>,
    gauge: fn(&Counters) -> &Gauge,
}

impl GaugeGuard {
    pub(crate) fn new(counters: &Arc<Counters>, gauge: fn(&Counters) -> &Gauge) -> Self {
        gauge(counters).0.fetch_add(1, Relaxed);
        GaugeGuard {
            counters: Arc::clone(counters),
            gauge,
        }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.gauge)(&self.counters).0.fetch_sub(1, Relaxed);
    }
}

/// Why a connection ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Served and closed (including every error case: it was served).
    Closed,
    /// Turned away with `BUSY` without being served.
    Rejected(Rejection),
}

/// Counts one accepted connection for as long as it lives.
///
/// Created by the acceptor the moment `accept(2)` returns; travels with the
/// connection through the queue and into a worker; its `Drop` counts the
/// connection as closed or rejected. Whatever path a connection takes
/// (served, turned away, dropped by a panic, left in the queue at
/// shutdown), it is counted exactly once.
#[derive(Debug)]
pub(crate) struct LiveGuard {
    counters: Arc<Counters>,
    outcome: Outcome,
    /// With `--access-log`: the connection's record, logged at the drop.
    access: Option<Box<Access>>,
    /// Set once the closer owns the connection (see `outside_closer`).
    in_closer: bool,
}

impl LiveGuard {
    pub(crate) fn new(counters: &Arc<Counters>, peer: SocketAddr) -> Self {
        counters
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        counters.outside_closer.fetch_add(1, SeqCst);
        let live = counters.live.fetch_add(1, Relaxed) + 1;
        counters.peak_live.fetch_max(live, Relaxed);
        LiveGuard {
            counters: Arc::clone(counters),
            outcome: Outcome::Closed,
            access: counters.access_log.then(|| Box::new(Access::new(peer))),
            in_closer: false,
        }
    }

    /// The closer has taken the connection over: it no longer keeps event
    /// dispatch's workers and poller running. Sequentially consistent, as
    /// is the flag event dispatch checks it against (see `event.rs`).
    pub(crate) fn enter_closer(&mut self) {
        if !std::mem::replace(&mut self.in_closer, true) {
            self.counters.outside_closer.fetch_sub(1, SeqCst);
        }
    }

    /// The connection's access record, when the access log is on.
    pub(crate) fn access(&mut self) -> Option<&mut Access> {
        self.access.as_deref_mut()
    }

    /// Marks the connection as turned away rather than served, for `why`
    /// (counted at the drop; the access log says `busy` or `shutdown`).
    pub(crate) fn set_rejected(&mut self, why: Rejection) {
        self.outcome = Outcome::Rejected(why);
        if let Some(access) = self.access() {
            access.ended(match why {
                Rejection::Shutdown => Ending::Shutdown,
                Rejection::QueueFull | Rejection::QueueTimeout | Rejection::NoFds => Ending::Busy,
            });
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        // Logged before it is counted: once `closed` says so, the line is out.
        if let Some(access) = &self.access {
            access.log();
        }
        self.enter_closer();
        let before = self.counters.live.fetch_sub(1, Relaxed);
        if let Some(admission) = self.counters.admission.get() {
            admission.released(before);
        }
        let c = &self.counters;
        let counter = match self.outcome {
            Outcome::Closed => &c.closed,
            Outcome::Rejected(why) => {
                // The reason first: `rejected`, published last, never runs
                // ahead of the sum of its reasons.
                match why {
                    Rejection::QueueFull => c.rejected_queue_full(),
                    Rejection::QueueTimeout => c.rejected_queue_timeout(),
                    Rejection::Shutdown => c.rejected_shutdown(),
                    Rejection::NoFds => c.rejected_no_fds(),
                }
                &c.rejected
            }
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// Counts one worker as busy for as long as it lives.
#[derive(Debug)]
pub(crate) struct BusyGuard<'a> {
    counters: &'a Counters,
}

impl<'a> BusyGuard<'a> {
    pub(crate) fn new(counters: &'a Counters) -> Self {
        let busy = counters.busy.fetch_add(1, Relaxed) + 1;
        counters.peak_busy.fetch_max(busy, Relaxed);
        BusyGuard { counters }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.counters.busy.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

    #[test]
    fn guards_keep_live_and_busy_exact() {
        let c = Arc::new(Counters::new(2, 4));
        let a = LiveGuard::new(&c, PEER);
        let mut b = LiveGuard::new(&c, PEER);
        let s = c.snapshot(1);
        assert_eq!((s.accepted, s.live, s.peak_live), (2, 2, 2));
        {
            let _busy = BusyGuard::new(&c);
            assert_eq!(c.snapshot(0).busy, 1);
        }
        b.set_rejected(Rejection::QueueFull);
        drop(b);
        drop(a);
        let s = c.snapshot(0);
        assert_eq!(
            (s.accepted, s.rejected, s.closed, s.live, s.busy),
            (2, 1, 1, 0, 0)
        );
        assert_eq!((s.peak_busy, s.peak_live), (1, 2));
    }

    #[test]
    fn each_rejection_counts_its_reason_and_the_sum() {
        let c = Arc::new(Counters::new(1, 1));
        for why in [
            Rejection::QueueFull,
            Rejection::QueueFull,
            Rejection::QueueTimeout,
            Rejection::Shutdown,
            Rejection::NoFds,
        ] {
            LiveGuard::new(&c, PEER).set_rejected(why);
        }
        let s = c.snapshot(0);
        assert_eq!(
            (
                s.rejected,
                s.rejected_queue_full,
                s.rejected_queue_timeout,
                s.rejected_shutdown,
                s.rejected_no_fds
            ),
            (5, 2, 1, 1, 1)
        );
        assert_eq!((s.closed, s.live), (0, 0));
    }

    #[test]
    fn guards_count_through_a_panic() {
        let c = Arc::new(Counters::new(1, 1));
        let c2 = Arc::clone(&c);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _live = LiveGuard::new(&c2, PEER);
            let _busy = BusyGuard::new(&c2);
            panic!("boom");
        }));
        assert!(r.is_err());
        let s = c.snapshot(0);
        assert_eq!((s.live, s.busy, s.closed), (0, 0, 1));
    }
}
