//! The acceptor thread: takes connections from the listener and puts them
//! into the bounded accept queue, the one place where connections wait for
//! a worker.
//!
//! The loop never ends on an error. Per-connection failures of `accept(2)`
//! (a client that gave up during the handshake) are skipped; resource
//! shortages (a full fd table, no buffers, no memory) are logged at a
//! bounded rate and backed off from, 5 ms doubling to 1 s, reset by the
//! next success. On a full fd table it also uses a spare descriptor to
//! accept one waiting client and tell it `BUSY`, so clients get an answer
//! instead of hanging in the kernel's queue (libuv's "EMFILE trick").
//!
//! The listener is non-blocking and the thread waits in `epoll` (through
//! mio) on it and on a [`Waker`] that shutdown rings. That is what lets
//! shutdown stop the loop *without* shutting the listening socket down:
//! on Linux `shutdown(2)` on a listener resets every connection that has
//! finished its handshake but was not accepted yet — clients that believe
//! they are connected and may already have sent data. Instead, when
//! shutdown begins the acceptor empties the kernel's queue itself (each
//! connection goes into the accept queue if there is room, or is told
//! `BUSY server shutting down`), and only then closes the listener.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Select, Sender, TrySendError};
use log::{debug, log, warn, Level};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::closer::{turn_away, Closer};
use crate::config::{Overflow, ServerBuilder};
use crate::proxy::{Gate, Refusal};
use crate::queue::{busy_line, Bell, Job};
use crate::ratelimit::RateLimit;
use crate::shutdown::Shutdown;
use crate::stats::{Counters, LiveGuard, Rejection};

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one accept-error line per this interval; the next line says how
/// many were left out.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// At shutdown, at most this many connections are taken from the kernel's
/// queue (it holds at most the listen backlog, but a flood keeps adding).
const MAX_DRAIN: usize = 65_536;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

pub(crate) struct Acceptor {
    /// Non-blocking; closed when the acceptor ends.
    pub(crate) listener: TcpListener,
    /// Waits for the listener to be readable or the waker to ring.
    pub(crate) poll: Poll,
    /// The only sender of the accept queue. Dropped when this thread ends,
    /// which tells the workers to exit once the queue is empty.
    pub(crate) queue: Sender<Job>,
    pub(crate) overflow: Overflow,
    pub(crate) counters: Arc<Counters>,
    pub(crate) shutdown: Arc<Shutdown>,
    /// Finishes the lingering close of connections turned away.
    pub(crate) closer: Closer,
    /// A descriptor kept open only to be closed when the fd table is full.
    pub(crate) spare_fd: Option<File>,
    pub(crate) backoff: Option<Duration>,
    pub(crate) error_log: RateLimit,
    /// With `--proxy-protocol`: peers outside `--proxy-from` are refused
    /// here, before they take a place in the queue.
    pub(crate) gate: Option<Arc<Gate>>,
    /// Whether the kernel's queue is left to others at shutdown.
    pub(crate) hand_over: HandOver,
    /// `--max-connections` in event dispatch (see `admission.rs`).
    pub(crate) max_live: Option<u64>,
    /// Event dispatch: rung after each job put on the queue, since idle
    /// event workers wait in epoll, not on the queue.
    pub(crate) bell: Option<Arc<Bell>>,
}

/// At shutdown, connections still in the kernel's queue are taken
/// (queued while there is room, told `BUSY` otherwise) unless someone else
/// will serve them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandOver {
    /// Take them: closing the listener would reset them.
    Never,
    /// Leave them: the listener was inherited (socket activation) and the
    /// service manager keeps it open for the next instance.
    Always,
    /// `--reuse-port`: leave them if `net.ipv4.tcp_migrate_req` is on (read
    /// at shutdown), which makes the kernel move them to another process
    /// listening on the port; take them otherwise.
    IfMigrating,
}

impl HandOver {
    /// What `b`'s listener calls for.
    pub(crate) fn of(b: &ServerBuilder) -> HandOver {
        if b.inherited {
            HandOver::Always
        } else if b.reuse_port && b.listener.is_none() {
            HandOver::IfMigrating
        } else {
            HandOver::Never
        }
    }

    fn leaves_queue(self) -> bool {
        match self {
            HandOver::Never => false,
            HandOver::Always => true,
            HandOver::IfMigrating => std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
                .is_ok_and(|v| v.trim() == "1"),
        }
    }
}

impl Acceptor {
    /// Makes the listener non-blocking and registers it. The returned
    /// waker must be woken after [`Shutdown::begin`] to stop the acceptor.
    pub(crate) fn new(
        listener: TcpListener,
        queue: Sender<Job>,
        overflow: Overflow,
        counters: Arc<Counters>,
        shutdown: Arc<Shutdown>,
        closer: Closer,
        gate: Option<Arc<Gate>>,
    ) -> io::Result<(Self, Arc<Waker>)> {
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let acceptor = Acceptor {
            listener,
            poll,
            queue,
            overflow,
            counters,
            shutdown,
            closer,
            spare_fd: File::open("/dev/null").ok(),
            backoff: None,
            error_log: RateLimit::new(ERROR_LOG_INTERVAL),
            gate,
            hand_over: HandOver::Never,
            max_live: None,
            bell: None,
        };
        Ok((acceptor, waker))
    }

    /// Accepts until shutdown begins, then empties the kernel's queue and
    /// closes the listener and the queue's sending end (by dropping them).
    pub(crate) fn run(mut self) {
        self.accept_until_shutdown();
        let bell = self.bell.take();
        drop(self);
        // Event workers waiting in epoll learn that the queue is closed.
        if let Some(bell) = bell {
            bell.ring_anyway();
        }
    }

    fn accept_until_shutdown(&mut self) {
        let mut events = Events::with_capacity(4);
        while !self.shutdown.has_begun() {
            if self.at_limit() {
                // Admission: newcomers wait in the kernel's queue until a
                // close rings the waker (or shutdown does).
                if let Err(e) = self.poll.poll(&mut events, None) {
                    if e.kind() != io::ErrorKind::Interrupted {
                        self.on_error(e);
                    }
                }
                continue;
            }
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    self.backoff = None;
                    self.dispatch(stream, peer);
                }
                // The kernel's queue is empty: wait for a client or for
                // shutdown. mio is edge-triggered, which is why the loop
                // only waits after `accept` has said WouldBlock.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.poll.poll(&mut events, None) {
                        if e.kind() != io::ErrorKind::Interrupted {
                            self.on_error(e);
                        }
                    }
                }
                Err(e) => self.on_error(e),
            }
        }
        if self.hand_over.leaves_queue() {
            debug!(
                "acceptor stopped: connections still waiting in the kernel are left to {}; \
                 the listener is closed",
                match self.hand_over {
                    HandOver::Always => "the next instance (socket activation)",
                    _ => "the other processes on the port (tcp_migrate_req)",
                }
            );
            return;
        }
        let (queued, refused) = self.drain_kernel_queue();
        debug!(
            "acceptor stopped: {queued} connections still waiting in the kernel were queued, \
             {refused} told BUSY; the listener is closed"
        );
    }

    /// Takes every connection that finished its handshake before shutdown
    /// and is still in the kernel's queue: it goes into the accept queue
    /// while there is room (workers keep serving until the deadline), and
    /// is told `BUSY server shutting down` otherwise. Returns how many of
    /// each.
    fn drain_kernel_queue(&mut self) -> (usize, usize) {
        let (mut queued, mut refused) = (0, 0);
        for _ in 0..MAX_DRAIN {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_per_connection(&e) && e.kind() != io::ErrorKind::WouldBlock => {
                    continue
                }
                // Out of fds: take them one at a time with the spare.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if self.shed_one_with_spare_fd() {
                        refused += 1;
                        continue;
                    }
                    break;
                }
                Err(_) => break, // the queue is empty (or failing): done
            };
            let job = Job::accepted(stream, peer, &self.counters);
            if self.queue_or_refuse(job) {
                queued += 1;
            } else {
                refused += 1;
            }
        }
        (queued, refused)
    }

    /// During shutdown: into the accept queue if it has room (true), else
    /// told `BUSY server shutting down` (false). Never waits.
    fn queue_or_refuse(&self, job: Job) -> bool {
        // Past `--max-connections` (the job itself is already counted):
        // told BUSY rather than reset with the listener.
        if self
            .max_live
            .is_some_and(|max| self.counters.live_now() > max)
        {
            job.reject(Rejection::Shutdown, &self.closer);
            return false;
        }
        match self.queue.try_send(job) {
            Ok(()) => {
                self.queued();
                true
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                job.reject(Rejection::Shutdown, &self.closer);
                false
            }
        }
    }

    /// True when `--max-connections` connections are live. Only this
    /// thread adds live connections, so the answer cannot go stale towards
    /// overshooting.
    fn at_limit(&self) -> bool {
        self.max_live
            .is_some_and(|max| self.counters.live_now() >= max)
    }

    /// Hands a new connection to the queue, or deals with a full queue.
    fn dispatch(&mut self, stream: TcpStream, peer: SocketAddr) {
        let job = Job::accepted(stream, peer, &self.counters);
        if let Some(gate) = self.gate.as_ref().filter(|g| !g.trusts(peer)) {
            let Job { stream, live, .. } = job;
            gate.refuse(
                Refusal::Untrusted,
                stream,
                peer,
                live,
                &self.counters,
                &self.closer,
            );
            return;
        }
        match self.queue.try_send(job) {
            Ok(()) => {
                let queued = self.queued();
                if queued > 0 && self.counters.busy() >= self.counters.workers() {
                    self.saturated();
                }
            }
            Err(TrySendError::Full(job)) => {
                self.saturated();
                match self.overflow {
                    Overflow::Reject => {
                        debug!("accept queue full; turning {} away", job.peer);
                        job.reject(Rejection::QueueFull, &self.closer);
                    }
                    Overflow::Block => self.wait_for_room(job),
                }
            }
            // Workers only drop their receivers after the acceptor is gone.
            Err(TrySendError::Disconnected(job)) => job.reject(Rejection::Shutdown, &self.closer),
        }
    }

    /// `--overflow block`: wait until a worker makes room, or shutdown.
    fn wait_for_room(&mut self, job: Job) {
        let mut select = Select::new();
        let send = select.send(&self.queue);
        let stop = select.recv(self.shutdown.signal());
        let op = select.select();
        if op.index() == send {
            if let Err(e) = op.send(&self.queue, job) {
                e.into_inner().reject(Rejection::Shutdown, &self.closer);
            }
            self.queued();
        } else {
            debug_assert_eq!(op.index(), stop);
            let _ = op.recv(self.shutdown.signal());
            if self.hand_over.leaves_queue() {
                // The kernel's queue goes to others, but this one was taken
                // from it already: wait for room while workers still serve.
                let deadline = self.shutdown.deadline().unwrap_or_else(Instant::now);
                match self.queue.send_deadline(job, deadline) {
                    Ok(()) => {
                        self.queued();
                    }
                    Err(e) => e.into_inner().reject(Rejection::Shutdown, &self.closer),
                }
                return;
            }
            // Treated like the connections still in the kernel's queue,
            // which arrived after it.
            self.queue_or_refuse(job);
        }
    }

    /// A job was put on the queue: counted, and event workers woken for
    /// it. Returns the queue's length.
    fn queued(&self) -> usize {
        let queued = self.queue.len();
        self.counters.note_queued(queued);
        if let Some(bell) = &self.bell {
            bell.ring();
        }
        queued
    }

    fn saturated(&self) {
        if let Some(unlogged) = self.counters.begin_saturation() {
            let earlier = if unlogged == 0 {
                String::new()
            } else {
                format!(" ({unlogged} shorter episodes since the last warning were not logged)")
            };
            warn!(
                "all {} workers are busy; new connections wait in the accept queue \
                 (capacity {}). More workers, or --overflow reject, or a --queue-timeout \
                 would shorten the wait{earlier}",
                self.counters.workers(),
                self.queue.capacity().unwrap_or(0),
            );
        }
    }

    fn on_error(&mut self, e: io::Error) {
        if self.shutdown.has_begun() {
            return; // the loop is about to end anyway
        }
        self.counters.accept_error();
        // What the log line says after the error, and whether to shed a
        // waiting client with the spare descriptor.
        let (level, why, shed) = match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => (
                Level::Warn,
                ": the process is out of file descriptors (raise the limit with \
                 `ulimit -n`); answering waiting clients BUSY and",
                true,
            ),
            Some(libc::ENOBUFS | libc::ENOMEM) => {
                (Level::Warn, ": the system is short of memory;", false)
            }
            _ if is_per_connection(&e) => {
                debug!("accept: {e} (the client gave up during the handshake); continuing");
                return;
            }
            _ => (Level::Error, ";", false),
        };
        let backoff = self.next_backoff();
        if let Some(skipped) = self.error_log.allow() {
            log!(
                level,
                "accept failed: {e}{why} retrying in {}{}",
                humantime::format_duration(backoff),
                suppressed(skipped),
            );
        }
        if shed {
            self.shed_one_with_spare_fd();
        }
        self.sleep(backoff);
    }

    fn next_backoff(&mut self) -> Duration {
        let next = self
            .backoff
            .map_or(MIN_BACKOFF, |d| (d * 2).min(MAX_BACKOFF));
        self.backoff = Some(next);
        next
    }

    /// Sleeps, but wakes at once when shutdown begins.
    fn sleep(&self, d: Duration) {
        let _ = self.shutdown.signal().recv_timeout(d);
    }

    /// With the fd table full, close the spare descriptor so that one
    /// waiting client can be accepted and told `BUSY`, then take the spare
    /// back. Non-blocking: if nobody is waiting, nothing happens. True if
    /// a client was turned away.
    fn shed_one_with_spare_fd(&mut self) -> bool {
        let Some(spare) = self.spare_fd.take() else {
            self.spare_fd = File::open("/dev/null").ok();
            return false;
        };
        drop(spare);
        let shed = match self.listener.accept() {
            Ok((stream, peer)) => {
                debug!("out of file descriptors; turning {peer} away");
                let mut live = LiveGuard::new(&self.counters, peer);
                live.set_rejected(Rejection::NoFds);
                turn_away(&stream, busy_line(Rejection::NoFds));
                true
            }
            Err(_) => false,
        };
        self.spare_fd = File::open("/dev/null").ok();
        shed
    }
}

/// Errors that concern one connection, not the listener: the client reset
/// or vanished between SYN and accept, or a firewall refused it.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENOPROTOOPT
                | libc::EOPNOTSUPP
                | libc::ETIMEDOUT
        )
    )
}

fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar errors not logged)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_errors_are_recognised() {
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_per_connection(&aborted));
        assert!(!is_per_connection(&emfile));
    }
}
