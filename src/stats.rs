//! The server's counters, the guards that move them (in `guards.rs`), and
//! the [`Stats`] snapshot that users and the monitor read.
//!
//! Two rules keep the numbers honest:
//!
//! * Gauges (`busy`, `live`, and any listed [`Gauge`]) change only through
//!   RAII guards ([`BusyGuard`], [`LiveGuard`], [`GaugeGuard`]), so a panic
//!   or an early return can never leave them wrong.
//! * `live` is never stored as its own number in a snapshot: it is derived
//!   as `accepted - rejected - closed` from counters read in an order that
//!   keeps it non-negative, so the contract's invariant holds by
//!   construction at every report.
//!
//! The plain counters are one list (the `listed!` invocation below): adding
//! one is one entry, which reaches [`Counters`], [`Stats`] and the monitor.
//!
//! Byte counters are per worker and cache-padded: they change on every
//! read and write, and a shared counter would make the workers fight over
//! one cache line.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use crate::admission::Admission;
use crate::ratelimit::RateLimit;

mod guards;
pub(crate) use guards::{BusyGuard, GaugeGuard, LiveGuard};

/// The one list of the server's plain counters and gauges.
///
/// Each entry is `doc, name: Kind => method;`. One entry gives a field of
/// [`Counters`] (kind [`Count`] or [`Gauge`]), the method other modules
/// change it through (`counters.idle_timeout()` counts one; a gauge's
/// method returns the [`Gauge`], to hold with a [`GaugeGuard`]), a public
/// field of
/// [`Stats`], and a `name=value` in the monitor's text line and JSON object
/// (after the contract's fixed fields, in this order). The fixed fields
/// (`busy` … `closed`, the peaks, the queue wait) are written out below,
/// because each is derived or guarded in its own way.
macro_rules! listed {
    ($( $(#[doc = $doc:literal])+ $name:ident: $kind:ident => $method:ident; )*) => {
        /// The listed counters' storage inside [`Counters`].
        #[derive(Debug, Default)]
        struct Listed {
            $( $name: $kind, )*
        }

        impl Counters {
            $( listed!(@method $kind $name $method $(#[doc = $doc])+); )*
        }

        /// A consistent picture of the server at one moment.
        ///
        /// The numbers satisfy the contract's invariants: `busy <= workers`,
        /// `queued <= backlog` and `live == accepted - rejected - closed`; when the
        /// server is idle `busy`, `queued` and `live` are all 0.
        ///
        /// # Examples
        ///
        /// ```
        /// # fn main() -> Result<(), poolserver::Error> {
        /// let server = poolserver::Server::builder()
        ///     .addr("127.0.0.1:0")
        ///     .workers(2)
        ///     .monitor_interval(std::time::Duration::ZERO)
        ///     .start()?;
        /// let stats = server.stats();
        /// assert_eq!((stats.workers, stats.busy, stats.live), (2, 0, 0));
        /// server.shutdown(std::time::Duration::ZERO);
        /// # Ok(()) }
        /// ```
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        #[non_exhaustive]
        pub struct Stats {
            /// Workers serving a connection now.
            pub busy: usize,
            /// Size of the worker pool.
            pub workers: usize,
            /// Accepted connections waiting in the accept queue.
            pub queued: usize,
            /// Capacity of the accept queue.
            pub backlog: usize,
            /// Connections accepted and not yet closed (waiting or being served).
            pub live: u64,
            /// Connections taken from the listener since start.
            pub accepted: u64,
            /// Of those, turned away with a `BUSY` line.
            pub rejected: u64,
            /// Of those, served and closed.
            pub closed: u64,
            /// Bytes read from clients since start.
            pub bytes_in: u64,
            /// Bytes written to clients since start.
            pub bytes_out: u64,
            /// Most workers busy at once since start.
            pub peak_busy: usize,
            /// Most connections waiting in the accept queue at once since start.
            pub peak_queued: usize,
            /// Most connections live at once since start.
            pub peak_live: u64,
            $( $(#[doc = $doc])+ pub $name: u64, )*
            /// Median time connections waited in the accept queue, since start.
            #[serde(serialize_with = "as_micros")]
            pub wait_p50: Duration,
            /// 99th percentile of the accept-queue wait, since start.
            #[serde(serialize_with = "as_micros")]
            pub wait_p99: Duration,
            /// Event dispatch: median time a readable connection waited in
            /// the ready queue for a worker, since start (zero in connection
            /// dispatch).
            #[serde(serialize_with = "as_micros")]
            pub ready_wait_p50: Duration,
            /// Event dispatch: 99th percentile of that wait, since start.
            #[serde(serialize_with = "as_micros")]
            pub ready_wait_p99: Duration,
        }

        impl Stats {
            /// Copies the listed counters' values in.
            fn with_listed(mut self, listed: &Listed) -> Stats {
                $( self.$name = listed.$name.get(); )*
                self
            }

            /// Calls `f` with the name and value of every listed counter, in
            /// the list's order.
            pub(crate) fn each_listed(&self, mut f: impl FnMut(&'static str, u64)) {
                $( f(stringify!($name), self.$name); )*
            }
        }
    };
    (@method Count $name:ident $method:ident $(#[doc = $doc:literal])+) => {
        /// Counts one more of these:
        $(#[doc = $doc])+
        pub(crate) fn $method(&self) {
            self.listed.$name.add();
        }
    };
    (@method Gauge $name:ident $method:ident $(#[doc = $doc:literal])+) => {
        /// The gauge of
        $(#[doc = $doc])+
        pub(crate) fn $method(&self) -> &Gauge {
            &self.listed.$name
        }
    };
}

listed! {
    /// Connections whose service panicked (each was closed; the worker
    /// went on).
    panics: Count => panic;
    /// Connections closed because the client sent nothing for the idle
    /// timeout.
    idle_timeouts: Count => idle_timeout;
    /// Connections closed because the client sent too slowly (below the
    /// minimum data rate).
    slow_clients: Count => slow_client;
    /// Connections closed because the client stopped reading and a write
    /// could not progress within the write timeout.
    write_timeouts: Count => write_timeout;
    /// Connections that ended with an I/O error (reset, broken pipe).
    io_errors: Count => io_error;
    /// Errors returned by `accept(2)` since start.
    accept_errors: Count => accept_error;
    /// Connections closed unanswered by `--proxy-protocol`: an untrusted
    /// peer, or no valid PROXY header in time (also counted in `closed`).
    proxy_refused: Count => proxy_refused;
    /// Of the rejected, turned away because the accept queue was full
    /// (`--overflow reject`).
    rejected_queue_full: Count => rejected_queue_full;
    /// Of the rejected, turned away because they waited longer than
    /// `--queue-timeout`.
    rejected_queue_timeout: Count => rejected_queue_timeout;
    /// Of the rejected, turned away because the server was shutting down.
    rejected_shutdown: Count => rejected_shutdown;
    /// Of the rejected, turned away because the server was out of file
    /// descriptors.
    rejected_no_fds: Count => rejected_no_fds;
    /// Event dispatch: connections waiting in the poller, not on a worker:
    /// idle ones, and ones whose client has not read their last reply
    /// yet (0 in connection dispatch).
    parked: Gauge => parked;
    /// Event dispatch: readable connections waiting in the ready queue for
    /// a worker (0 in connection dispatch).
    ready: Gauge => ready;
}

fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

/// A counter that only goes up, one event at a time.
#[derive(Debug, Default)]
pub(crate) struct Count(AtomicU64);

impl Count {
    fn add(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A number of things present now (connections in some state), moved
/// only by [`GaugeGuard`]s.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Byte counters owned by one worker.
#[derive(Debug, Default)]
pub(crate) struct WorkerIo {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl WorkerIo {
    pub(crate) const fn new() -> Self {
        WorkerIo {
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    /// Counts `n` bytes read from a client.
    pub(crate) fn read(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Relaxed);
    }

    /// Counts `n` bytes written to a client.
    pub(crate) fn wrote(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Relaxed);
    }
}

/// Why a connection was turned away with `BUSY`. Each reason has its own
/// listed counter; `rejected` is their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The accept queue was full (`--overflow reject`).
    QueueFull,
    /// It waited in the queue longer than `--queue-timeout`.
    QueueTimeout,
    /// The server was shutting down.
    Shutdown,
    /// The process was out of file descriptors.
    NoFds,
}

/// Every counter the server keeps. Shared by all threads through an `Arc`.
#[derive(Debug)]
pub(crate) struct Counters {
    workers: usize,
    backlog: usize,
    accepted: AtomicU64,
    rejected: AtomicU64,
    closed: AtomicU64,
    /// Gauge of live connections; used only for its peak (the snapshot
    /// derives `live` from the three counters above).
    live: AtomicU64,
    busy: AtomicUsize,
    peak_busy: AtomicUsize,
    peak_queued: AtomicUsize,
    peak_live: AtomicU64,
    /// The counters of the list above.
    listed: Listed,
    io: Box<[CachePadded<WorkerIo>]>,
    /// Connections accepted and not yet handed to the closer: what event
    /// dispatch waits for before its workers and poller may stop.
    outside_closer: AtomicUsize,
    /// Event dispatch: ready-queue waits in microseconds, one histogram per
    /// worker (recorded on every hand-off, so one shared lock would be
    /// contended); snapshots and the monitor merge them.
    ready_wait: Box<[CachePadded<Mutex<Histogram<u64>>>]>,
    /// `--max-connections`: wakes the acceptor when a close makes room.
    admission: OnceLock<Admission>,
    /// Accept-queue waits in microseconds. Recorded once per connection, so
    /// a lock is cheap here; the monitor diffs two copies for its interval.
    queue_wait: Mutex<Histogram<u64>>,
    /// True while every worker is busy and connections wait (a saturation
    /// episode); flipped only at the edges, so it is logged once each way.
    saturated: AtomicBool,
    /// Taken only at the edges of an episode.
    saturation_log: Mutex<SaturationLog>,
    /// `--access-log`: every connection carries an access record.
    access_log: bool,
}

/// How often saturation episodes are logged. Under a load that keeps the
/// pool exactly full, episodes can start and end thousands of times a
/// second; at most one is logged per this interval, and the next logged
/// one says how many were not.
const SATURATION_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct SaturationLog {
    /// Start of the current episode, if its start was logged.
    logged_since: Option<Instant>,
    /// Which episode starts are logged.
    limit: RateLimit,
}

impl Counters {
    /// Turns the access log on: every connection accepted from now on
    /// carries an access record (see `access.rs`).
    pub(crate) fn with_access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    pub(crate) fn new(workers: usize, backlog: usize) -> Self {
        Counters {
            workers,
            backlog,
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            live: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            peak_busy: AtomicUsize::new(0),
            peak_queued: AtomicUsize::new(0),
            peak_live: AtomicU64::new(0),
            listed: Listed::default(),
            access_log: false,
            io: (0..workers).map(|_| CachePadded::default()).collect(),
            outside_closer: AtomicUsize::new(0),
            ready_wait: (0..workers)
                .map(|_| CachePadded::new(Mutex::new(new_wait_histogram())))
                .collect(),
            admission: OnceLock::new(),
            queue_wait: Mutex::new(new_wait_histogram()),
            saturated: AtomicBool::new(false),
            saturation_log: Mutex::new(SaturationLog {
                logged_since: None,
                limit: RateLimit::new(SATURATION_LOG_INTERVAL),
            }),
        }
    }

    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    pub(crate) fn busy(&self) -> usize {
        self.busy.load(Relaxed)
    }

    /// The byte counters of worker `id`.
    pub(crate) fn worker_io(&self, id: usize) -> &WorkerIo {
        &self.io[id]
    }

    /// Live connections now: the gauge, one load (a snapshot derives the
    /// same figure from three counters).
    pub(crate) fn live_now(&self) -> u64 {
        self.live.load(Relaxed)
    }

    /// Connections accepted and not yet handed to the closer.
    pub(crate) fn outside_closer(&self) -> usize {
        self.outside_closer.load(SeqCst)
    }

    /// Installs `--max-connections` admission (once, at start).
    pub(crate) fn set_admission(&self, admission: Admission) {
        let _ = self.admission.set(admission);
    }

    /// Worker `id` took a connection that waited `waited` in the ready
    /// queue.
    pub(crate) fn record_ready_wait(&self, id: usize, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.ready_wait[id].lock().saturating_record(us.max(1));
    }

    /// The ready-queue wait histogram since start, all workers merged.
    pub(crate) fn ready_wait_histogram(&self) -> Histogram<u64> {
        let mut all = new_wait_histogram();
        for h in self.ready_wait.iter() {
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&*h.lock());
        }
        all
    }

    pub(crate) fn note_queued(&self, queued: usize) {
        self.peak_queued.fetch_max(queued, Relaxed);
    }

    pub(crate) fn record_wait(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.queue_wait.lock().saturating_record(us.max(1));
    }

    /// Marks the start of a saturation episode. `Some(n)` when the caller
    /// should log it (`n` earlier episodes went unlogged), `None` when the
    /// episode was already on or is one too many to log.
    pub(crate) fn begin_saturation(&self) -> Option<u64> {
        if self.saturated.load(Relaxed) || self.saturated.swap(true, Relaxed) {
            return None;
        }
        let mut log = self.saturation_log.lock();
        let unlogged = log.limit.allow();
        log.logged_since = unlogged.map(|_| Instant::now());
        unlogged
    }

    /// Ends a saturation episode if one is on; returns how long it lasted
    /// when its start was logged (so its end should be too).
    pub(crate) fn end_saturation(&self) -> Option<Duration> {
        if !self.saturated.load(Relaxed) || !self.saturated.swap(false, Relaxed) {
            return None;
        }
        self.saturation_log
            .lock()
            .logged_since
            .take()
            .map(|t| t.elapsed())
    }

    /// A copy of the queue-wait histogram since start.
    pub(crate) fn wait_histogram(&self) -> Histogram<u64> {
        self.queue_wait.lock().clone()
    }

    /// Takes a snapshot; `queued` comes from the accept queue itself.
    pub(crate) fn snapshot(&self, queued: usize) -> Stats {
        // Order matters: a connection is counted in `accepted` before it can
        // be counted in `closed` or `rejected`, so reading those two first
        // and `accepted` last keeps `live` from going negative.
        let closed = self.closed.load(std::sync::atomic::Ordering::Acquire);
        let rejected = self.rejected.load(std::sync::atomic::Ordering::Acquire);
        let accepted = self.accepted.load(std::sync::atomic::Ordering::Acquire);
        let live = accepted - rejected - closed;
        let busy = self.busy.load(Relaxed).min(self.workers);
        let queued = queued.min(self.backlog);
        let (bytes_in, bytes_out) = self.io.iter().fold((0, 0), |(i, o), w| {
            (i + w.bytes_in.load(Relaxed), o + w.bytes_out.load(Relaxed))
        });
        let (wait_p50, wait_p99) = {
            let h = self.queue_wait.lock();
            (percentile(&h, 50.0), percentile(&h, 99.0))
        };
        let ready_waits = self.ready_wait_histogram();
        Stats {
            busy,
            workers: self.workers,
            queued,
            backlog: self.backlog,
            live,
            accepted,
            rejected,
            closed,
            bytes_in,
            bytes_out,
            peak_busy: self.peak_busy.load(Relaxed).max(busy),
            peak_queued: self.peak_queued.load(Relaxed).max(queued),
            peak_live: self.peak_live.load(Relaxed).max(live),
            wait_p50,
            wait_p99,
            ready_wait_p50: percentile(&ready_waits, 50.0),
            ready_wait_p99: percentile(&ready_waits, 99.0),
            ..Stats::default()
        }
        .with_listed(&self.listed)
    }
}

/// A histogram of microseconds from 1 µs to one hour, 2 significant digits.
pub(crate) fn new_wait_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid")
}

/// The `q`th percentile of a microsecond histogram (zero when empty).
pub(crate) fn percentile(h: &Histogram<u64>, q: f64) -> Duration {
    if h.is_empty() {
        Duration::ZERO
    } else {
        Duration::from_micros(h.value_at_percentile(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_episodes_are_logged_at_most_once_per_interval() {
        let c = Counters::new(1, 1);
        assert_eq!(c.begin_saturation(), Some(0));
        assert_eq!(c.begin_saturation(), None, "already on");
        assert!(
            c.end_saturation().is_some(),
            "a logged start gets a logged end"
        );
        assert_eq!(c.end_saturation(), None, "already off");
        // A flapping pool: the next episodes are counted, not logged.
        for _ in 0..3 {
            assert_eq!(c.begin_saturation(), None);
            assert_eq!(c.end_saturation(), None);
        }
        c.saturation_log.lock().limit.expire();
        assert_eq!(c.begin_saturation(), Some(3));
    }

    #[test]
    fn wait_percentiles() {
        let c = Counters::new(1, 1);
        assert_eq!(c.snapshot(0).wait_p50, Duration::ZERO);
        for ms in 1..=100 {
            c.record_wait(Duration::from_millis(ms));
        }
        let s = c.snapshot(0);
        let p50 = s.wait_p50.as_millis();
        assert!((49..=51).contains(&p50), "{p50}");
        assert!(s.wait_p99 >= Duration::from_millis(98));
    }
}
