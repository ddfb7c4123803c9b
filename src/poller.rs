//! Event dispatch's poller: where idle connections wait without a worker.
//!
//! A worker whose connection has nothing to read (or a reply its client's
//! socket has no room for: see [`Conn::unsent`]) *parks* it here: the
//! connection goes into its slot of the parked table, and its socket stays
//! registered with one epoll instance. Idle workers themselves wait in
//! that epoll ([`Parking::wait`]); when a parked socket becomes readable,
//! the kernel wakes one of them, which takes the connection out of the
//! table and serves it at once. A small thread, the *timer*
//! ([`Poller::run`]), pushes connections whose idle deadline or the
//! shutdown deadline has passed onto the ready queue.
//!
//! Decisions:
//!
//! * **Workers wait in epoll themselves** (leader/followers without a
//!   leader: Linux wakes one of the threads waiting on an epoll instance
//!   per event). The first version had a poller thread turn epoll events
//!   into ready-queue entries, so every round trip of a parked connection
//!   cost two wake-ups (poller, then worker) and went through one thread
//!   (see the README's event dispatch figures). Jobs that do not come from
//!   epoll (new connections, a slice that yielded, deadlines) go on their
//!   queues and ring the [`Bell`], an eventfd in the same epoll. mio's
//!   `Poll::poll` takes `&mut self`, so the workers call `epoll_wait` on
//!   the instance's descriptor directly; mio still registers the sockets.
//! * **Registered once, with a pending flag** (Go's netpoller way; approach
//!   C of the research). mio 1.x is edge-triggered with no oneshot. The
//!   first park registers the socket and it stays registered while the
//!   connection moves between workers and the table; an edge that arrives
//!   while a worker has it sets the slot's `pending` flag, and the next
//!   park then answers "read again" instead of parking, so no edge is
//!   lost. The first version registered on every park and deregistered on
//!   every event (httpd's way): two `epoll_ctl` calls per round trip; this
//!   one measured 1.4x its round trips at 512 clients. A registration ends
//!   ([`Parking::forget`]) before the connection is closed, and while a
//!   worker *holds* it (no events wanted then). Registering after a read
//!   said `WouldBlock`, or after a short read, cannot lose data on Linux:
//!   `EPOLL_CTL_ADD` checks current readiness.
//! * **Exactly one owner.** A connection is in exactly one place: the accept
//!   queue, a worker, the ready queue, this table, or the closer. Every
//!   change of a slot happens under the table's lock, so two workers, or a
//!   worker and the timer, never both think they have a connection.
//! * **Generations.** A token is `slot | generation << 32`; every new
//!   registration gets a new generation, so an event fetched in the same
//!   batch as a deregistration is recognised as stale and ignored.
//! * **Waiting to write** is the same park with the registration switched
//!   from readable to writable (`EPOLL_CTL_MOD`, which checks readiness,
//!   so neither edge is lost), and back on the next park after the rest is
//!   out: two `epoll_ctl` calls per stall, none per round trip.
//! * **Idle and write deadlines** sit in a binary heap with lazy deletion
//!   (an entry acts only if its connection is parked and its timer really
//!   has fired: silent that long, or no byte taken that long;
//!   the others are skipped when they come up); the heap is
//!   rebuilt from the table when stale entries outnumber live ones, so a
//!   busy server's parks cannot grow it without bound.
//! * **The ready queue is unbounded**, so nobody blocks on a worker (which
//!   would deadlock: workers push onto it). It holds at most the live
//!   connections, which `--max-connections` bounds.
//! * The timer wakes at least every [`POLL_SLICE`], like a connection-mode
//!   worker's read, to notice deadlines; a deadline is at most one slice
//!   late. A waiting worker also wakes every slice, so even a lost wake-up
//!   would cost a slice, not a hang.

use std::cmp::Reverse;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Interest, Poll, Registry, Token, Waker};
use parking_lot::Mutex;
use rustix::event::{epoll, Timespec};

use crate::proxy::HeaderWait;
use crate::queue::Bell;
use crate::ratelimit::RateLimit;
use crate::service::Session;
use crate::shutdown::{Shutdown, POLL_SLICE};
use crate::stats::{Counters, GaugeGuard, LiveGuard};

mod table;

use table::{compact, State, Table};

const WAKER: Token = Token(usize::MAX);

/// Everything that moves with a connection between workers, the ready
/// queue and the parked table: a few hundred bytes, no buffer (buffers
/// stay with the workers).
pub(crate) struct Conn {
    /// Non-blocking while in event dispatch.
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// Counts the connection as live until it is closed.
    pub(crate) live: LiveGuard,
    pub(crate) accepted_at: Instant,
    /// The service's conversation state (the uppercase transform's held
    /// bytes).
    pub(crate) session: Box<dyn Session>,
    /// When the last byte arrived (or a worker first took it): the idle
    /// timer.
    pub(crate) last_data: Instant,
    /// The minimum-rate window: bytes received since `window_start`.
    pub(crate) window_start: Instant,
    pub(crate) window_bytes: u64,
    /// Bytes read from and written to this client, for the access log.
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    /// The socket is blocking, with the park grace as its receive timeout
    /// (a worker holds it; see `event.rs`); otherwise non-blocking.
    pub(crate) held: bool,
    /// Its registration with the poller's epoll, from its first park until
    /// [`Parking::forget`].
    pub(crate) registration: Option<Token>,
    /// That registration asks for room to write, not for data to read.
    watches_writes: bool,
    /// The rest of a reply the client's socket would not take yet (it
    /// does not read): the connection parks until there is room for it,
    /// and reads nothing meanwhile. Boxed: rare, and the parked table
    /// keeps every other connection small.
    pub(crate) unsent: Option<Box<Unsent>>,
    /// An epoll event said the peer has closed (or the socket failed).
    /// Until then a short read means the socket is drained and the worker
    /// parks without reading again (data that comes later raises a new
    /// edge); after it, the end of the stream may be waiting behind the
    /// data with no edge left to announce it, so the worker reads until a
    /// read says so.
    pub(crate) peer_closed: bool,
    /// With `--proxy-protocol`: the PROXY header, until it is whole. Till
    /// then `peer` is the balancer, `session` a stand-in, and the header's
    /// deadline is the connection's timer. Boxed: its buffer is only
    /// needed for the first bytes.
    pub(crate) header: Option<Box<HeaderWait>>,
}

impl Conn {
    /// A connection a worker is about to serve for the first time: its
    /// idle timer and minimum-rate window start now.
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        live: LiveGuard,
        accepted_at: Instant,
        session: Box<dyn Session>,
    ) -> Self {
        let now = Instant::now();
        Conn {
            stream,
            peer,
            live,
            accepted_at,
            session,
            last_data: now,
            window_start: now,
            window_bytes: 0,
            bytes_in: 0,
            bytes_out: 0,
            held: false,
            registration: None,
            watches_writes: false,
            unsent: None,
            peer_closed: false,
            header: None,
        }
    }

    /// Whether it waits for room to write its `unsent` bytes.
    pub(crate) fn waits_to_write(&self) -> bool {
        self.unsent.is_some()
    }

    /// When its timer fires while parked, and why: a PROXY header not
    /// whole by its deadline, a write stalled for the write timeout, or
    /// silence for the idle timeout.
    fn due(&self, timeouts: &Timeouts) -> Option<(Instant, Why)> {
        if let Some(header) = &self.header {
            Some((header.deadline, Why::ProxyTimeout))
        } else if let Some(unsent) = &self.unsent {
            timeouts
                .write
                .map(|t| (unsent.since + t, Why::WriteStalled))
        } else {
            timeouts.idle.map(|t| (self.last_data + t, Why::Idle))
        }
    }
}

/// Reply bytes waiting for the client to read (see [`Conn::unsent`]).
#[derive(Debug)]
pub(crate) struct Unsent {
    pub(crate) bytes: Vec<u8>,
    /// When the client last took reply bytes, or the write first stalled:
    /// the write timeout runs from here.
    pub(crate) since: Instant,
}

/// The timeouts the timer enforces on parked connections.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timeouts {
    /// A connection parked to read that got nothing this long is closed
    /// (`--idle-timeout`).
    pub(crate) idle: Option<Duration>,
    /// A connection parked to write whose client took nothing this long is
    /// closed (`--write-timeout`).
    pub(crate) write: Option<Duration>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("last_data", &self.last_data)
            .finish_non_exhaustive()
    }
}

/// Why a connection is on the ready queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Its socket became readable while parked.
    Readable,
    /// It used up its slice while others waited; data is still unread.
    Yield,
    /// It sent nothing for the idle timeout while parked.
    Idle,
    /// Its client read none of its unsent reply for the write timeout.
    WriteStalled,
    /// The shutdown deadline passed while it was parked.
    Shutdown,
    /// Its PROXY header was not whole by `--proxy-timeout`.
    ProxyTimeout,
}

/// An entry of the ready queue.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) conn: Conn,
    pub(crate) why: Why,
    /// When it was pushed: the ready-queue wait runs from here.
    pub(crate) since: Instant,
    /// Counts it in the `ready` gauge until a worker takes it.
    pub(crate) in_queue: GaugeGuard,
}

/// The workers' handle on the poller: park a connection, wait for parked
/// ones to become readable, push one onto the ready queue.
#[derive(Debug)]
pub(crate) struct Parking {
    /// Registers sockets with the epoll instance; its descriptor is the one
    /// the workers wait on.
    registry: Registry,
    table: Mutex<Table>,
    ready: Sender<Ready>,
    counters: Arc<Counters>,
    timeouts: Timeouts,
    /// Wakes a worker waiting in the epoll (its eventfd is registered there).
    bell: Arc<Bell>,
    /// Dropped when the pool has finished: the timer exits.
    stop: Mutex<Option<Sender<()>>>,
    /// `epoll_wait` failing other than by a signal (not expected).
    wait_errors: Mutex<RateLimit>,
}

/// How many events a worker takes from one `epoll_wait`: it serves the
/// first and puts the others on the ready queue for the next free worker.
pub(crate) const HARVEST: usize = 8;

/// A worker's buffer for `epoll_wait`.
pub(crate) type Events = [epoll::Event; HARVEST];

/// An empty [`Events`].
pub(crate) fn events() -> Events {
    [epoll::Event {
        flags: epoll::EventFlags::empty(),
        data: epoll::EventData::new_u64(0),
    }; HARVEST]
}

/// What [`Parking::park`] did.
pub(crate) enum Parked {
    /// The connection waits in the table.
    Yes,
    /// Data arrived since the worker's last read: read again.
    Retry(Conn),
    /// It could not be registered (epoll full): close it.
    Failed(Conn, io::Error),
}

impl Parking {
    /// Parks `conn` until its socket is readable — or, if it has unsent
    /// reply bytes, until the socket has room for them — or a deadline
    /// passes. The first park registers the socket; it stays registered
    /// while the connection moves between workers and this table, so a
    /// round trip costs no `epoll_ctl` (research approach C: an edge that
    /// comes while a worker has the connection is kept as `pending`). Only
    /// a change between reading and writing modifies the registration.
    pub(crate) fn park(&self, mut conn: Conn) -> Parked {
        let deadline = conn.due(&self.timeouts).map(|(at, _)| at);
        let writes = conn.waits_to_write();
        let interest = if writes {
            Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let fd = conn.stream.as_raw_fd();
        let mut table = self.table.lock();
        let token = match conn.registration {
            Some(token) => {
                if writes != conn.watches_writes {
                    // Under the lock, like a registration: an event the
                    // change raises at once (EPOLL_CTL_MOD checks
                    // readiness) finds the connection parked.
                    if let Err(e) = self
                        .registry
                        .reregister(&mut SourceFd(&fd), token, interest)
                    {
                        return Parked::Failed(conn, e);
                    }
                    conn.watches_writes = writes;
                }
                token
            }
            None => {
                let token = table.allocate();
                if let Err(e) = self.registry.register(&mut SourceFd(&fd), token, interest) {
                    table.release(token);
                    return Parked::Failed(conn, e);
                }
                conn.registration = Some(token);
                conn.watches_writes = writes;
                token
            }
        };
        let Some(slot) = table.slot(token) else {
            // Not reachable: only `forget` frees a slot, and it takes the
            // registration off the connection.
            conn.registration = None;
            return Parked::Retry(conn);
        };
        if let State::Out {
            pending: true,
            peer_closed,
        } = slot.state
        {
            conn.peer_closed |= peer_closed;
            slot.state = State::out();
            return Parked::Retry(conn);
        }
        let gauge = GaugeGuard::new(&self.counters, Counters::parked);
        slot.state = State::Parked(conn, gauge);
        table.parked += 1;
        if let Some(at) = deadline {
            table.deadlines.push(Reverse((at, token.0)));
        }
        Parked::Yes
    }

    /// Takes the connection out of the poller's epoll for good: before it
    /// is closed, or while a worker holds it (no events wanted then).
    pub(crate) fn forget(&self, conn: &mut Conn) {
        conn.watches_writes = false;
        if let Some(token) = conn.registration.take() {
            // By descriptor: the socket is still open (the caller owns
            // it), so this cannot hit a reused descriptor.
            let _ = self
                .registry
                .deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
            self.table.lock().release(token);
        }
    }

    /// Waits (up to a [`POLL_SLICE`]) for a parked connection to become
    /// readable or the [`Bell`] to ring, unless `idle()` says there is
    /// work after all once this worker counts as a sleeper. Readable
    /// connections taken out of the table go into `out`.
    pub(crate) fn wait(&self, events: &mut Events, idle: impl Fn() -> bool, out: &mut Vec<Conn>) {
        self.bell.sleeping();
        if !idle() {
            self.bell.awake();
            return;
        }
        let n = self.epoll_wait(events, Some(POLL_SLICE));
        self.bell.awake();
        self.take_readable(&events[..n], out);
    }

    /// Takes the parked connections that are readable now, without
    /// waiting: a worker whose slice is spent asks this to know whether
    /// others wait for a worker (readable connections nobody has taken
    /// yet are in the kernel's list, not on the ready queue). Pushes them
    /// onto the ready queue; true if there were any.
    pub(crate) fn harvest(&self, events: &mut Events, out: &mut Vec<Conn>) -> bool {
        let n = self.epoll_wait(events, None);
        self.take_readable(&events[..n], out);
        let found = !out.is_empty();
        for conn in out.drain(..) {
            self.push(conn, Why::Readable);
        }
        found
    }

    /// `epoll_wait` for up to `timeout` (`None`: do not wait); how many
    /// events it filled in.
    fn epoll_wait(&self, events: &mut Events, timeout: Option<Duration>) -> usize {
        let timeout = Timespec {
            tv_sec: timeout.map_or(0, |t| t.as_secs() as i64),
            tv_nsec: timeout.map_or(0, |t| i64::from(t.subsec_nanos())),
        };
        match epoll::wait(&self.registry, &mut events[..], Some(&timeout)) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => 0,
            Err(e) => {
                if self.wait_errors.lock().allow().is_some() {
                    // Not expected from a valid epoll instance; the worker
                    // goes on looking at its queues.
                    warn!("epoll_wait failed: {e}");
                }
                0
            }
        }
    }

    /// The connections of these events that were parked (the others were
    /// the bell, or belong to a connection a worker has: marked pending).
    fn take_readable(&self, events: &[epoll::Event], out: &mut Vec<Conn>) {
        if events.is_empty() {
            return;
        }
        let mut table = self.table.lock();
        for event in events {
            let token = Token(event.data.u64() as usize);
            if token == WAKER {
                continue;
            }
            // Copied out: the kernel's struct is packed.
            let flags = event.flags;
            let closed = flags.intersects(
                epoll::EventFlags::RDHUP | epoll::EventFlags::HUP | epoll::EventFlags::ERR,
            );
            if let Some(conn) = table.on_event(token, closed) {
                out.push(conn);
            }
        }
    }

    /// Puts a connection on the ready queue (never blocks) and wakes a
    /// sleeping worker for it.
    pub(crate) fn push(&self, conn: Conn, why: Why) {
        let item = Ready {
            conn,
            why,
            since: Instant::now(),
            in_queue: GaugeGuard::new(&self.counters, Counters::ready),
        };
        // The workers hold receivers until the pool has finished, and the
        // pool finishes only when no connection is outside the closer, so
        // this cannot fail while there is a connection to push; if it
        // somehow did, dropping the connection still counts it closed.
        if let Err(e) = self.ready.send(item) {
            drop(e.into_inner());
        }
        self.bell.ring();
    }

    /// The bell that wakes waiting workers.
    pub(crate) fn bell(&self) -> &Arc<Bell> {
        &self.bell
    }

    /// Tells the timer to exit (the pool has finished).
    pub(crate) fn stop(&self) {
        drop(self.stop.lock().take());
    }
}

/// The timer thread: idle deadlines and the shutdown deadline of parked
/// connections.
#[derive(Debug)]
pub(crate) struct Poller {
    parking: Arc<Parking>,
    shutdown: Arc<Shutdown>,
    stop: Receiver<()>,
}

impl Poller {
    /// Creates the epoll instance, the timer and the workers' handle.
    pub(crate) fn new(
        ready: Sender<Ready>,
        counters: Arc<Counters>,
        shutdown: Arc<Shutdown>,
        timeouts: Timeouts,
    ) -> io::Result<(Poller, Arc<Parking>)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        // The registry's own descriptor keeps the epoll instance open once
        // `poll` is dropped; nobody calls `Poll::poll`.
        let registry = poll.registry().try_clone()?;
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let parking = Arc::new(Parking {
            registry,
            table: Mutex::new(Table::default()),
            ready,
            counters,
            timeouts,
            bell: Arc::new(Bell::new(waker)),
            stop: Mutex::new(Some(stop_tx)),
            wait_errors: Mutex::new(RateLimit::new(Duration::from_secs(1))),
        });
        let poller = Poller {
            parking: Arc::clone(&parking),
            shutdown,
            stop: stop_rx,
        };
        Ok((poller, parking))
    }

    /// The timer loop; returns when [`Parking::stop`] is called.
    pub(crate) fn run(self) {
        let p = Arc::clone(&self.parking);
        loop {
            let timeout = {
                let table = p.table.lock();
                table
                    .deadlines
                    .peek()
                    .map_or(POLL_SLICE, |Reverse((at, _))| {
                        at.saturating_duration_since(Instant::now()).min(POLL_SLICE)
                    })
            };
            if let Err(RecvTimeoutError::Disconnected) = self.stop.recv_timeout(timeout) {
                break;
            }
            self.expire(&p);
            if self.shutdown.deadline_passed() {
                // Every parked connection gets its held bytes and a
                // lingering close from a worker; one parked after this
                // sweep is caught by the next (within a slice).
                let taken: Vec<Conn> = {
                    let mut table = p.table.lock();
                    let tokens: Vec<Token> = table.parked_tokens().collect();
                    tokens.into_iter().filter_map(|t| table.take(t)).collect()
                };
                for conn in taken {
                    p.push(conn, Why::Shutdown);
                }
            }
        }
        debug!("poller timer exiting: every connection has been closed");
    }

    /// Pushes every parked connection whose timer has fired: idle, or a
    /// write stalled.
    fn expire(&self, p: &Parking) {
        let now = Instant::now();
        loop {
            let due = {
                let mut table = p.table.lock();
                match table.deadlines.peek() {
                    Some(Reverse((at, _))) if *at <= now => {}
                    _ => {
                        compact(&mut table, &p.timeouts);
                        return;
                    }
                }
                let Some(Reverse((_, t))) = table.deadlines.pop() else {
                    return;
                };
                // Registrations outlive parks, so the entry may be an
                // earlier park's: act only if the connection is parked and
                // its timer really has fired.
                let token = Token(t);
                let why = table.slot(token).and_then(|s| match &s.state {
                    State::Parked(conn, _) => conn
                        .due(&p.timeouts)
                        .and_then(|(at, why)| (at <= now).then_some(why)),
                    _ => None,
                });
                why.and_then(|why| table.take(token).map(|conn| (conn, why)))
            };
            if let Some((conn, why)) = due {
                p.push(conn, why);
            }
        }
    }
}

#[cfg(test)]
mod tests;
