//! The accept queue: the bounded channel between the acceptor and the
//! workers, and [`Job`], the accepted connection that travels through it.
//!
//! The queue is the one place where connections wait for a worker, so it
//! owns what concerns waiting: when a connection started to wait (the queue
//! wait and `--queue-timeout` run from `accept(2)`), the turn-away of a
//! connection that cannot be served ([`Job::reject`]), the length that the
//! monitor and [`Server::stats`](crate::Server::stats) report
//! ([`QueueLen`]), the pressure that switches the minimum data rate on
//! ([`Pressure`] for the workers' receiver), and the [`Bell`] that wakes
//! event dispatch's workers, which wait in epoll rather than on the queue.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::debug;

use crate::closer::{write_busy, Closer};
use crate::connection::Pressure;
use crate::protocol::{BUSY_FULL, BUSY_NO_FDS, BUSY_SHUTDOWN, BUSY_WAITED};
use crate::shutdown::Shutdown;
use crate::stats::{Counters, LiveGuard, Rejection};

/// One accepted connection on its way to a worker.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// When `accept(2)` returned it: the queue wait and the queue timeout
    /// run from here.
    pub(crate) accepted_at: Instant,
    /// Counts the connection as live until it is dropped.
    pub(crate) live: LiveGuard,
}

impl Job {
    /// A connection `accept(2)` just returned; counted as accepted (and
    /// live) from now on.
    pub(crate) fn accepted(stream: TcpStream, peer: SocketAddr, counters: &Arc<Counters>) -> Job {
        // Linux does not pass the listener's O_NONBLOCK on to accepted
        // sockets; other systems do, and workers expect blocking sockets.
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nonblocking(false);
        Job {
            stream,
            peer,
            accepted_at: Instant::now(),
            live: LiveGuard::new(counters, peer),
        }
    }

    /// A worker has reached this connection: the rules of both dispatch
    /// modes. Still queued at the shutdown deadline means closed unserved
    /// (README, Shutdown); waited past `--queue-timeout` means told `BUSY`.
    /// Otherwise the wait is recorded (in the counters and the access
    /// record) and the job comes back, to be served.
    pub(crate) fn admit(
        mut self,
        shutdown: &Shutdown,
        queue_timeout: Option<Duration>,
        counters: &Counters,
        closer: &Closer,
    ) -> Option<Job> {
        let waited = self.accepted_at.elapsed();
        if shutdown.deadline_passed() {
            self.reject(Rejection::Shutdown, closer);
            return None;
        }
        if queue_timeout.is_some_and(|limit| waited > limit) {
            debug!(
                "{} waited {} in the accept queue; turning it away",
                self.peer,
                humantime::format_duration(Duration::from_millis(waited.as_millis() as u64))
            );
            self.reject(Rejection::QueueTimeout, closer);
            return None;
        }
        counters.record_wait(waited);
        if let Some(access) = self.live.access() {
            access.waited(waited);
        }
        Some(self)
    }

    /// Turns the connection away with the `BUSY` line for `why` and counts
    /// it as rejected for that reason, once the closer has finished its
    /// lingering close.
    pub(crate) fn reject(mut self, why: Rejection, closer: &Closer) {
        write_busy(&self.stream, busy_line(why));
        self.live.set_rejected(why);
        closer.close(self.stream, self.live);
    }
}

/// The `BUSY` line of [`protocol`](crate::protocol) that tells a client why
/// it is turned away.
pub(crate) fn busy_line(why: Rejection) -> &'static [u8] {
    match why {
        Rejection::QueueFull => BUSY_FULL,
        Rejection::QueueTimeout => BUSY_WAITED,
        Rejection::Shutdown => BUSY_SHUTDOWN,
        Rejection::NoFds => BUSY_NO_FDS,
    }
}

/// A new accept queue holding at most `capacity` connections.
pub(crate) fn bounded(capacity: usize) -> (Sender<Job>, Receiver<Job>) {
    crossbeam_channel::bounded(capacity)
}

/// The length of the accept queue, for those who report it but never take
/// a connection from it (the server's `stats()`, the monitor).
#[derive(Debug, Clone)]
pub(crate) struct QueueLen(Receiver<Job>);

impl QueueLen {
    /// A view of the queue that `queue` receives from.
    pub(crate) fn of(queue: &Receiver<Job>) -> Self {
        QueueLen(queue.clone())
    }

    /// Connections waiting now.
    pub(crate) fn get(&self) -> usize {
        self.0.len()
    }
}

/// Others wait for a worker whenever the queue is not empty.
impl Pressure for Receiver<Job> {
    fn others_waiting(&self) -> bool {
        !self.is_empty()
    }
}

/// Wakes event dispatch's idle workers when work arrives on a queue.
///
/// An idle event worker waits in `epoll_wait` (see `poller.rs`), where a
/// readable connection wakes it directly; a job put on the accept queue or
/// the ready queue cannot, so whoever puts one there rings this bell: a
/// write to an eventfd registered in the same epoll, which wakes one
/// waiting worker. It rings only when a worker sleeps, so a busy pool pays
/// one atomic load per job.
///
/// No wake-up is lost (Dekker's handshake): a worker counts itself a
/// sleeper *before* it last looks at the queues, a producer puts its job on
/// the queue *before* it counts the sleepers, with a sequentially
/// consistent fence between each side's two steps. So either the worker
/// sees the job, or the producer sees the sleeper and rings; a ring that
/// comes before the worker is inside `epoll_wait` stays pending in the
/// epoll and ends the wait at once.
#[derive(Debug)]
pub(crate) struct Bell {
    waker: mio::Waker,
    sleepers: AtomicUsize,
}

impl Bell {
    pub(crate) fn new(waker: mio::Waker) -> Bell {
        Bell {
            waker,
            sleepers: AtomicUsize::new(0),
        }
    }

    /// After putting work on a queue: wakes a sleeping worker, if any.
    pub(crate) fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.ring_anyway();
        }
    }

    /// Wakes one sleeping worker, or the next one to sleep.
    pub(crate) fn ring_anyway(&self) {
        // Fails only if the eventfd's counter is full, which a waiting
        // worker's wake-up does not need (the pending edge is what counts).
        let _ = self.waker.wake();
    }

    /// Whether a worker sleeps (or is about to).
    pub(crate) fn sleepers(&self) -> bool {
        self.sleepers.load(Ordering::SeqCst) > 0
    }

    /// A worker is about to sleep: counted before its last look at the
    /// queues. Paired with [`Bell::awake`].
    pub(crate) fn sleeping(&self) {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    pub(crate) fn awake(&self) {
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}
