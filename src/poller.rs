//! Event dispatch's poller: where idle connections wait without a worker.
//!
//! One thread owns a mio [`Poll`] (epoll). A worker whose connection has
//! nothing to read *parks* it here: the connection goes into the parked
//! table and its socket is registered with the poller's epoll. When the
//! socket becomes readable, its idle deadline passes, or the shutdown
//! deadline passes, the poller takes it out of the table, deregisters it and
//! pushes it onto the ready queue, where the next free worker picks it up.
//!
//! Decisions:
//!
//! * **Register on park, deregister on event** (httpd's way). mio 1.x is
//!   edge-triggered with no oneshot, so a connection must not stay
//!   registered while a worker serves it. Registering after the worker's
//!   read said `WouldBlock` cannot lose data on Linux: `EPOLL_CTL_ADD`
//!   checks the socket's current readiness and queues an event if bytes
//!   arrived in between.
//! * **Exactly one owner.** A connection is in exactly one place: the accept
//!   queue, a worker, the ready queue, this table, or the closer. Insertion
//!   and registration happen under the table's lock, so the poller cannot
//!   take an entry (at a deadline) before its socket is registered, and a
//!   socket is only ever registered while its entry is in the table.
//! * **Generations.** A token is `slot | generation << 32`; every park gets
//!   a new generation, so an event fetched in the same batch as a
//!   deregistration, or a deadline of an earlier park, is recognised as
//!   stale and ignored.
//! * **Idle deadlines** sit in a binary heap with lazy deletion (entries of
//!   connections that left are skipped when they come up); the heap is
//!   rebuilt from the table when stale entries outnumber live ones, so a
//!   busy server's parks cannot grow it without bound.
//! * **The ready queue is unbounded**, so the poller never blocks on a
//!   worker (which would deadlock: workers park into the poller). It holds
//!   at most the live connections, which `--max-connections` bounds.
//! * The thread wakes at least every [`POLL_SLICE`], like a connection-mode
//!   worker's read, to notice deadlines; a deadline is at most one slice
//!   late.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use parking_lot::Mutex;

use crate::service::Session;
use crate::shutdown::{Shutdown, POLL_SLICE};
use crate::stats::{Counters, GaugeGuard, LiveGuard};

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
    /// The shutdown deadline passed while it was parked.
    Shutdown,
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

/// The workers' handle on the poller: park a connection, push one onto the
/// ready queue.
#[derive(Debug)]
pub(crate) struct Parking {
    registry: Registry,
    table: Mutex<Table>,
    ready: Sender<Ready>,
    counters: Arc<Counters>,
    idle_timeout: Option<Duration>,
    waker: Waker,
    /// Set when the pool has finished; the thread exits.
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    parked: usize,
    /// Idle deadlines; entries whose token no longer matches are stale.
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    /// The connection, counted in the `parked` gauge while here.
    conn: Option<(Conn, GaugeGuard)>,
}

fn token(slot: u32, generation: u32) -> Token {
    Token(slot as usize | (generation as usize) << 32)
}

fn split(token: Token) -> (usize, u32) {
    ((token.0 & 0xFFFF_FFFF), (token.0 >> 32) as u32)
}

impl Table {
    /// Takes the connection parked under `token`, if it is still there.
    fn take(&mut self, token: Token) -> Option<Conn> {
        let (slot, generation) = split(token);
        let s = self.slots.get_mut(slot)?;
        if s.generation != generation {
            return None;
        }
        let (conn, _parked) = s.conn.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot as u32);
        self.parked -= 1;
        Some(conn)
    }

    fn insert(&mut self, conn: (Conn, GaugeGuard)) -> Token {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.conn = Some(conn);
        self.parked += 1;
        token(slot, s.generation)
    }

    fn tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, s)| token(i as u32, s.generation))
    }
}

impl Parking {
    /// Parks `conn` until its socket is readable (or a deadline passes).
    /// On failure (epoll cannot take another descriptor) the connection
    /// comes back to the caller, who closes it.
    #[allow(clippy::result_large_err)] // the error path is rare; no box on the common one
    pub(crate) fn park(&self, conn: Conn) -> Result<(), (Conn, io::Error)> {
        let fd = conn.stream.as_raw_fd();
        let deadline = self.idle_timeout.map(|t| conn.last_data + t);
        let parked = GaugeGuard::new(&self.counters, Counters::parked);
        let mut table = self.table.lock();
        let token = table.insert((conn, parked));
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            let conn = table.take(token).expect("inserted under this lock");
            return Err((conn, e));
        }
        if let Some(at) = deadline {
            table.deadlines.push(Reverse((at, token.0)));
        }
        Ok(())
    }

    /// Puts a connection on the ready queue (never blocks).
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
    }

    /// Tells the poller thread to exit (the pool has finished).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }

    /// Takes `token`'s connection out of the table and the epoll set.
    fn unpark(&self, token: Token) -> Option<Conn> {
        let conn = self.table.lock().take(token)?;
        // Deregistering by descriptor: the socket is still open (we own
        // it), so this cannot hit a reused descriptor.
        let _ = self
            .registry
            .deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
        Some(conn)
    }
}

/// The poller thread's state.
#[derive(Debug)]
pub(crate) struct Poller {
    poll: Poll,
    parking: Arc<Parking>,
    shutdown: Arc<Shutdown>,
}

impl Poller {
    /// Creates the poller and the workers' handle on it.
    pub(crate) fn new(
        ready: Sender<Ready>,
        counters: Arc<Counters>,
        shutdown: Arc<Shutdown>,
        idle_timeout: Option<Duration>,
    ) -> io::Result<(Poller, Arc<Parking>)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let parking = Arc::new(Parking {
            registry: poll.registry().try_clone()?,
            table: Mutex::new(Table::default()),
            ready,
            counters,
            idle_timeout,
            waker,
            stop: AtomicBool::new(false),
        });
        let poller = Poller {
            poll,
            parking: Arc::clone(&parking),
            shutdown,
        };
        Ok((poller, parking))
    }

    /// The poller loop; returns when [`Parking::stop`] is called.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let p = Arc::clone(&self.parking);
        while !p.stop.load(Ordering::Acquire) {
            let timeout = {
                let table = p.table.lock();
                table
                    .deadlines
                    .peek()
                    .map_or(POLL_SLICE, |Reverse((at, _))| {
                        at.saturating_duration_since(Instant::now()).min(POLL_SLICE)
                    })
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    // Not expected from a valid epoll instance; back off a
                    // slice rather than spin, deadlines still run below.
                    warn!("poller: poll failed: {e}");
                    std::thread::sleep(POLL_SLICE);
                }
            }
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                if let Some(conn) = p.unpark(event.token()) {
                    p.push(conn, Why::Readable);
                }
            }
            self.expire_idle(&p);
            if self.shutdown.deadline_passed() {
                // Every parked connection gets its held bytes and a
                // lingering close from a worker; one parked after this
                // sweep is caught by the next (within a slice).
                let tokens: Vec<Token> = p.table.lock().tokens().collect();
                for t in tokens {
                    if let Some(conn) = p.unpark(t) {
                        p.push(conn, Why::Shutdown);
                    }
                }
            }
        }
        debug!("poller exiting: every connection has been closed");
    }

    /// Pushes every connection whose idle deadline has passed.
    fn expire_idle(&self, p: &Parking) {
        let now = Instant::now();
        loop {
            let token = {
                let mut table = p.table.lock();
                match table.deadlines.peek() {
                    Some(Reverse((at, _))) if *at <= now => {}
                    _ => {
                        compact(&mut table, p.idle_timeout);
                        return;
                    }
                }
                let Some(Reverse((_, t))) = table.deadlines.pop() else {
                    return;
                };
                Token(t)
            };
            if let Some(conn) = p.unpark(token) {
                p.push(conn, Why::Idle);
            }
        }
    }
}

/// Rebuilds the deadline heap from the table when stale entries (of
/// connections that were unparked before their deadline) outnumber live
/// ones: O(parked), at most once per that many parks.
fn compact(table: &mut Table, idle_timeout: Option<Duration>) {
    let Some(idle) = idle_timeout else { return };
    if table.deadlines.len() <= 2 * table.parked + 1024 {
        return;
    }
    let fresh: BinaryHeap<_> = table
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let (conn, _) = s.conn.as_ref()?;
            Some(Reverse((
                conn.last_data + idle,
                token(i as u32, s.generation).0,
            )))
        })
        .collect();
    table.deadlines = fresh;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_generations_differ() {
        let t = token(7, 3);
        assert_eq!(split(t), (7, 3));
        assert_ne!(token(7, 4), t);
        assert_ne!(token(7, u32::MAX), WAKER);
    }
}
