//! `--max-connections`: admission control at the acceptor, as Tomcat's
//! `LimitLatch` does it.
//!
//! In event dispatch a connection costs no worker while it is idle, so the
//! accept queue no longer bounds how many are live; this does. At the limit
//! the acceptor stops calling `accept(2)`, so newcomers wait in the
//! kernel's listen queue (nobody is closed or answered `BUSY`). Only the
//! acceptor adds live connections, so "check, then accept" cannot
//! overshoot; closes happen on other threads, and the one that brings the
//! count below the limit rings the acceptor's waker (the same one shutdown
//! rings), so the acceptor sleeps in `epoll` instead of polling a counter.
//!
//! Also here: raising the process's open-file limit, because every live
//! connection holds a descriptor.

use std::sync::Arc;

use log::{debug, warn};
use mio::Waker;

/// The default `--max-connections`.
///
/// 10,000: the "ten thousand mostly idle clients" a server of this kind is
/// expected to hold (each costs a descriptor and a few hundred bytes here,
/// plus the kernel's socket buffers), while fitting common hard limits on
/// open files (this project's machines: 20,000; many systems: 524,288)
/// with room for the server's own descriptors (`FD_RESERVE`). A higher figure
/// would let a flood of connections run the process out of descriptors,
/// where accepting starts to fail instead of waiting politely in the
/// kernel's queue.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Descriptors the server needs besides one per live connection: the
/// listener, the epoll instances and their wakers (acceptor, poller,
/// closer, one per worker for its short wait), the spare descriptor for
/// the out-of-descriptors answer, standard streams and a log file, with
/// headroom. Per worker 2, plus this.
pub(crate) const FD_RESERVE: u64 = 64;

/// Wakes the acceptor when a close brings live connections below the limit.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) max: u64,
    pub(crate) waker: Arc<Waker>,
}

impl Admission {
    /// Called by every close with the live count before it.
    pub(crate) fn released(&self, live_before: u64) {
        if live_before >= self.max {
            let _ = self.waker.wake();
        }
    }
}

/// Raises the soft open-file limit to the hard limit (as Go's runtime
/// does), and warns when `max_connections` plus the server's own
/// descriptors cannot fit in it. Returns the soft limit in force.
pub(crate) fn raise_fd_limit(max_connections: Option<usize>, workers: usize) -> Option<u64> {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(e) => {
            debug!("cannot read the open-file limit: {e}");
            return None;
        }
    };
    let mut now = soft;
    if soft < hard {
        match rlimit::Resource::NOFILE.set(hard, hard) {
            Ok(()) => {
                debug!("raised the open-file limit from {soft} to {hard}");
                now = hard;
            }
            Err(e) => debug!("cannot raise the open-file limit from {soft} to {hard}: {e}"),
        }
    }
    if let Some(max) = max_connections {
        let needed = max as u64 + FD_RESERVE + 2 * workers as u64;
        if needed > now {
            warn!(
                "--max-connections {max} needs about {needed} file descriptors but the limit \
                 is {now}; beyond about {} live connections accepting will fail. Raise the \
                 hard limit (`ulimit -Hn`, systemd LimitNOFILE=) or lower --max-connections",
                now.saturating_sub(FD_RESERVE + 2 * workers as u64)
            );
        }
    }
    Some(now)
}
