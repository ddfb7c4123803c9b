//! Event dispatch's workers (`--dispatch event`): a worker serves a
//! connection while it has data, and parks it with the poller when it has
//! none, so far more connections than workers are served.
//!
//! A worker takes jobs from two queues — new connections from the accept
//! queue (admitted by the same rules as connection mode: `--queue-timeout`,
//! `BUSY` past the shutdown deadline) and connections the ready queue holds
//! (a slice that yielded, a deadline that passed, readable ones another
//! worker took from epoll with its own) — and, when both are empty, waits
//! in the poller's epoll, where a parked connection that becomes readable
//! wakes it directly (see `poller.rs`). Queues that never empty cannot
//! starve readable connections: every [`LOOK_EVERY`] queued jobs, and at
//! the end of every slice, a worker looks in the epoll without waiting and
//! queues what it finds. It serves one *slice* at a time,
//! holding the busy gauge only then: read, [`Session::on_data`], write,
//! again, until
//!
//! * a read comes back short (the socket's queue is drained) or would
//!   block: it parks the connection without a further read — unless there are no
//!   more live connections than workers, nobody waits for a worker and
//!   the server has more than one CPU (see `slice.rs`). Then holding the
//!   connection costs nobody a worker, so the worker
//!   *holds* it: the socket is switched to blocking with a receive timeout
//!   of [`PARK_GRACE`], and the worker reads as connection mode does (one
//!   syscall per read, no poller round trip: a ping-pong client's next
//!   message usually comes sooner than the grace). It parks the connection
//!   when the grace passes without data;
//! * the slice budget ([`SLICE_READS`] reads or [`SLICE_BYTES`] bytes) is
//!   spent while others wait (queued, or readable in the epoll: the worker
//!   looks without waiting): the connection goes to the tail of the ready
//!   queue (not parked: unread data raises no new edge), which is what keeps
//!   a bulk stream from starving ping-pong clients; with nobody waiting the
//!   budget starts again and the stream keeps its worker;
//! * the stream ends (end of stream, `exit`, an idle or shutdown deadline
//!   the poller reported, the minimum rate): [`Session::on_end`] answers
//!   what is held, and the closer does the lingering close.
//!
//! Writes never block in the kernel: they are sent with `MSG_DONTWAIT`,
//! also on a held socket. When the client's socket takes only part of a
//! reply, a held connection waits up to [`PARK_GRACE`] for room (`poll`,
//! without its CPU permit: a streaming client that reads makes room in
//! microseconds), and otherwise the rest stays with the connection
//! ([`Conn::unsent`]) and it parks waiting for room to write, reading
//! nothing meanwhile; the poller's
//! timer enforces the write timeout. Only the reply that ends a connection
//! (`exit`, an idle timeout, shutdown) gets connection mode's blocking
//! write with the write-timeout slices (the socket is switched to blocking
//! for it): nothing is left to park for after it.
//!
//! No more workers run at once than there are CPUs (`permits.rs`): a
//! worker takes a permit before it looks for work and gives it back while
//! it blocks on one connection (a held read or wait for room, a closing
//! reply's blocking write), so the other workers are there for those calls
//! and the running ones do not preempt each other half-way through
//! replies.
//!
//! With `--proxy-protocol` the PROXY header is read without blocking as
//! well, and a connection whose header is late parks (`header.rs`).
//!
//! A panic in the service is caught per slice: that connection is closed,
//! the panic counted, the worker goes on.
//!
//! The pool ends when the acceptor is gone and no connection is left
//! outside the closer; channel disconnection cannot tell (workers
//! themselves hold senders of the ready queue), so connections are counted
//! (`Counters::outside_closer`). The worker that finds it so sets the stop
//! flag and rings the bell; each worker that wakes to it rings again for
//! the next, so all of them exit.

use std::net::TcpStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};
use log::{debug, error, info, warn};

use crate::access::Ending;
use crate::closer::Closer;
use crate::connection::{is_write_stall, Limits, Pressure};
use crate::poller::{Conn, Events, Parked, Parking, Why};
use crate::pool::PoolContext;
use crate::proxy::{Gate, Refusal};
use crate::queue::Job;
use crate::service::{Buffers, EventService};
use crate::shutdown::Shutdown;
use crate::stats::{BusyGuard, Counters, LiveGuard};

mod header;
mod permits;
mod slice;

use permits::Permits;

/// How long a worker holding a connection (see the module doc) waits for
/// more data before it parks it. Long enough to cover a ping-pong client's
/// think time on a loaded two-core machine, short enough that a connection
/// that becomes ready meanwhile waits little (a worker blocked in a read
/// does not watch the queues).
pub(crate) const PARK_GRACE: Duration = Duration::from_millis(2);

/// Queued jobs a worker takes in a row before it looks in the epoll
/// (without waiting) for readable connections, which queue behind them.
pub(crate) const LOOK_EVERY: u32 = 8;

/// Reads per slice before a connection gives way to waiting ones.
pub(crate) const SLICE_READS: u32 = 16;
/// Bytes per slice before a connection gives way to waiting ones.
pub(crate) const SLICE_BYTES: usize = 256 * 1024;

/// What every event worker shares.
#[derive(Debug)]
pub(crate) struct EventPool {
    pub(crate) counters: Arc<Counters>,
    pub(crate) shutdown: Arc<Shutdown>,
    pub(crate) service: Arc<dyn EventService>,
    pub(crate) limits: Limits,
    /// `None` when connections may wait in the accept queue as long as it
    /// takes.
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) read_buffer_size: usize,
    pub(crate) closer: Closer,
    /// With `--proxy-protocol`: the header is read before the first slice.
    pub(crate) gate: Option<Arc<Gate>>,
    pub(crate) parking: Arc<Parking>,
    pub(crate) accept: Receiver<Job>,
    pub(crate) ready: Receiver<crate::poller::Ready>,
    pub(crate) grace: Duration,
    /// Set by the first worker that finds the accept queue closed and empty.
    accept_closed: AtomicBool,
    /// Set when the pool has finished: every worker exits.
    stopped: AtomicBool,
    /// No more workers run event work at once than there are CPUs.
    permits: Permits,
}

/// What a slice ended with.
enum Next {
    Park,
    Yield,
    /// To the closer; how it ended, for the access log.
    Close(Ending),
    /// Its PROXY header was refused: closed unanswered.
    Refuse(Refusal),
}

impl Pressure for EventPool {
    fn others_waiting(&self) -> bool {
        !self.ready.is_empty() || !self.accept.is_empty()
    }
}

impl EventPool {
    /// The event pool over connection mode's shared settings (`ctx`),
    /// running `service`.
    pub(crate) fn new(
        ctx: &PoolContext,
        service: Arc<dyn EventService>,
        parking: Arc<Parking>,
        accept: Receiver<Job>,
        ready: Receiver<crate::poller::Ready>,
    ) -> Self {
        EventPool {
            counters: Arc::clone(&ctx.counters),
            shutdown: Arc::clone(&ctx.shutdown),
            service,
            limits: ctx.limits.clone(),
            queue_timeout: ctx.queue_timeout,
            read_buffer_size: ctx.read_buffer_size,
            closer: ctx.closer.clone(),
            gate: ctx.gate.clone(),
            parking,
            accept,
            ready,
            grace: PARK_GRACE,
            accept_closed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            permits: Permits::for_this_machine(ctx.counters.workers()),
        }
    }

    /// What worker `id` owns: its id and its buffers.
    pub(crate) fn local(&self, id: usize) -> Local {
        Local {
            id,
            bufs: Buffers::new(self.read_buffer_size),
            events: crate::poller::events(),
            taken: Vec::with_capacity(crate::poller::HARVEST),
            accept_first: false,
            spent: Spent::default(),
            since_epoll: 0,
        }
    }

    /// The worker loop: queued work first, else wait in the epoll.
    pub(crate) fn run(&self, mut local: Local) {
        let local = &mut local;
        self.permits.acquire(&self.stopped);
        while !self.stopped.load(Ordering::SeqCst) {
            self.permits.rebalance(&self.stopped);
            if self.take_queued(local) {
                continue;
            }
            local.since_epoll = 0;
            let mut taken = std::mem::take(&mut local.taken);
            self.parking.wait(
                &mut local.events,
                || !self.stopped.load(Ordering::SeqCst) && self.nothing_queued(),
                &mut taken,
            );
            // The first readable connection is served here and now; any
            // others go to the ready queue for the next free worker.
            let mut readable = taken.drain(..);
            let first = readable.next();
            for conn in readable {
                self.parking.push(conn, Why::Readable);
            }
            local.taken = taken;
            if let Some(conn) = first {
                // Its ready wait: from the epoll to this worker, which is
                // at once (the time it was readable while every worker was
                // busy is the kernel's, and not seen).
                self.counters.record_ready_wait(local.id, Duration::ZERO);
                self.serve(local, conn, Why::Readable);
            }
        }
        // Wake the next worker, which wakes the next.
        self.permits.release();
        self.parking.bell().ring_anyway();
        debug!(
            "event worker {} exiting: every connection is closed",
            local.id
        );
    }

    /// Serves one job from the ready or the accept queue (taking turns
    /// which is looked at first); false if both were empty.
    fn take_queued(&self, local: &mut Local) -> bool {
        // Queued jobs come first, so while the queues never empty (a flood
        // of new connections, streams taking turns) readable connections
        // would wait in the epoll for good: every few jobs, look there
        // without waiting and queue what is readable behind them.
        local.since_epoll += 1;
        if local.since_epoll >= LOOK_EVERY {
            local.since_epoll = 0;
            let Local { events, taken, .. } = local;
            self.parking.harvest(events, taken);
        }
        local.accept_first = !local.accept_first;
        if local.accept_first && self.take_accept(local) {
            return true;
        }
        if let Ok(item) = self.ready.try_recv() {
            self.pass_on();
            self.counters
                .record_ready_wait(local.id, item.since.elapsed());
            drop(item.in_queue);
            self.serve(local, item.conn, item.why);
            return true;
        }
        !local.accept_first && self.take_accept(local)
    }

    fn take_accept(&self, local: &mut Local) -> bool {
        match self.accept.try_recv() {
            Ok(job) => {
                self.pass_on();
                self.serve_new(local, job);
                if self.accept.is_empty() {
                    if let Some(lasted) = self.counters.end_saturation() {
                        info!(
                            "a worker is free again and nothing waits: saturation over after {}",
                            humantime::format_duration(Duration::from_millis(
                                lasted.as_millis() as u64
                            ))
                        );
                    }
                }
                true
            }
            Err(TryRecvError::Empty) => false,
            Err(TryRecvError::Disconnected) => {
                if !self.accept_closed.swap(true, Ordering::SeqCst) {
                    self.check_finished();
                }
                false
            }
        }
    }

    /// Having taken a job: if more wait and a worker sleeps, wake it (one
    /// ring wakes one worker, which passes it on in turn).
    fn pass_on(&self) {
        if !self.nothing_queued() && self.parking.bell().sleepers() {
            self.parking.bell().ring_anyway();
        }
    }

    /// Runs `f`, which may block on one connection, without a permit (see
    /// `permits.rs`).
    fn blocking<T>(&self, f: impl FnOnce() -> T) -> T {
        self.permits.blocking(!self.parking.bell().sleepers(), f)
    }

    /// Whether both queues are empty (a closed, empty accept queue counts
    /// as empty).
    fn nothing_queued(&self) -> bool {
        self.ready.is_empty() && self.accept.is_empty()
    }

    /// Ends the pool once the acceptor is gone and every connection has
    /// reached the closer. Both sides of that race use sequentially
    /// consistent operations (the flag here, the count in `LiveGuard`), so
    /// whichever happens last sees the other.
    fn check_finished(&self) {
        if self.accept_closed.load(Ordering::SeqCst)
            && self.counters.outside_closer() == 0
            && !self.stopped.swap(true, Ordering::SeqCst)
        {
            self.parking.stop();
            self.permits.wake_all();
            self.parking.bell().ring_anyway();
            debug!("event dispatch finished: the acceptor is gone, every connection closed");
        }
    }

    /// A new connection from the accept queue: connection mode's admission
    /// rules, then its first slice.
    fn serve_new(&self, local: &mut Local, job: Job) {
        let Some(job) = job.admit(
            &self.shutdown,
            self.queue_timeout,
            &self.counters,
            &self.closer,
        ) else {
            return self.check_finished();
        };
        let Job {
            stream,
            peer,
            accepted_at,
            live,
        } = job;
        // Non-blocking from the start, the PROXY header included.
        if let Err(e) = stream
            .set_nonblocking(true)
            .and_then(|()| stream.set_nodelay(true))
        {
            debug!("{peer}: cannot set the socket up: {e}");
            self.counters.io_error();
            drop((stream, live));
            return self.check_finished();
        }
        let mut conn = Conn::new(stream, peer, live, accepted_at, header::not_open());
        match &self.gate {
            // With --proxy-protocol the session opens once the header has
            // named the true client (`header.rs`); until then the
            // connection waits for the header's bytes like any other.
            Some(gate) => match gate.expect(peer) {
                Ok(wait) => conn.header = Some(Box::new(wait)),
                Err(why) => {
                    self.refuse(conn, why);
                    return self.check_finished();
                }
            },
            None => {
                if !self.open_session(&mut conn) {
                    self.close(conn, Ending::Panic);
                    return self.check_finished();
                }
            }
        }
        self.serve(local, conn, Why::Readable);
    }

    /// Opens the service's session for `conn.peer`; false (the panic
    /// counted and logged) if the service panicked, when the caller closes
    /// the connection.
    fn open_session(&self, conn: &mut Conn) -> bool {
        let peer = conn.peer;
        match catch_unwind(AssertUnwindSafe(|| self.service.open(peer))) {
            Ok(session) => {
                conn.session = session;
                true
            }
            Err(panic) => {
                self.counters.panic();
                error!(
                    "the service panicked opening {peer}: {}; that connection is closed",
                    crate::pool::panic_message(&*panic)
                );
                false
            }
        }
    }

    /// Serves one slice of `conn` and hands it on: parked, back to the
    /// ready queue, or to the closer.
    fn serve(&self, local: &mut Local, conn: Conn, why: Why) {
        let busy = BusyGuard::new(&self.counters);
        let (mut conn, mut why) = (conn, why);
        // Loops only when a park finds data arrived since the last read:
        // the same slice goes on, its budget not renewed (a stream whose
        // client never pauses nearly always has such data, and would
        // otherwise never give way).
        local.spent = Spent::default();
        while let Some(retry) = self.serve_slice(local, conn, why) {
            (conn, why) = (retry, Why::Readable);
        }
        drop(busy);
        self.check_finished();
    }

    /// One slice and the hand-off; the connection back if it must be read
    /// again instead of parked.
    fn serve_slice(&self, local: &mut Local, mut conn: Conn, why: Why) -> Option<Conn> {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.slice(local, &mut conn, why)));
        match outcome {
            Ok(Ok(Next::Park)) => match self.parking.park(conn) {
                Parked::Yes => {}
                Parked::Retry(conn) => return Some(conn),
                Parked::Failed(conn, e) => {
                    warn!(
                        "{}: cannot park the connection ({e}); closing it",
                        conn.peer
                    );
                    self.close(conn, Ending::Error);
                }
            },
            Ok(Ok(Next::Yield)) => self.parking.push(conn, Why::Yield),
            Ok(Ok(Next::Close(ending))) => self.close(conn, ending),
            Ok(Ok(Next::Refuse(why))) => self.refuse(conn, why),
            Ok(Err(e)) => {
                let ending = if is_write_stall(&e) {
                    warn!("{}: {e}; closing the connection", conn.peer);
                    self.counters.write_timeout();
                    Ending::WriteTimeout
                } else {
                    debug!("{}: connection ended with an error: {e}", conn.peer);
                    self.counters.io_error();
                    Ending::Error
                };
                // Broken: dropped, not lingered over.
                drop(self.account(conn, ending));
            }
            Err(panic) => {
                self.counters.panic();
                error!(
                    "worker {}: the service panicked serving {}: {}; that connection is \
                     closed, the worker goes on",
                    local.id,
                    conn.peer,
                    crate::pool::panic_message(&*panic)
                );
                local.bufs.output.clear();
                self.close(conn, Ending::Panic);
            }
        }
        None
    }

    /// Hands the connection to the closer for its lingering close.
    fn close(&self, conn: Conn, ending: Ending) {
        let (stream, live) = self.account(conn, ending);
        self.closer.close(stream, live);
    }

    /// Closes a connection whose PROXY header was refused, unanswered, as
    /// connection mode does (counted in `proxy_refused`).
    fn refuse(&self, mut conn: Conn, why: Refusal) {
        self.parking.forget(&mut conn);
        let Some(gate) = &self.gate else {
            // Not reachable: only a gate makes a connection wait for a
            // header.
            return self.close(conn, Ending::Error);
        };
        let Conn {
            stream, peer, live, ..
        } = conn;
        gate.refuse(why, stream, peer, live, &self.counters, &self.closer);
    }

    /// Fills in the access record (when the log is on) and takes the
    /// connection apart.
    fn account(&self, mut conn: Conn, ending: Ending) -> (TcpStream, LiveGuard) {
        self.parking.forget(&mut conn);
        let Conn {
            stream,
            mut live,
            bytes_in,
            bytes_out,
            ..
        } = conn;
        if let Some(access) = live.access() {
            access.transferred(bytes_in, bytes_out);
            access.ended(ending);
        }
        (stream, live)
    }
}

/// What one worker owns: its id, its buffers, its `epoll_wait` buffer and
/// where it puts the connections taken from it.
pub(crate) struct Local {
    id: usize,
    bufs: Buffers,
    events: Events,
    taken: Vec<Conn>,
    /// Which queue to look at first next time (they take turns).
    accept_first: bool,
    /// What the current slice has used of its budget.
    spent: Spent,
    /// Queued jobs taken since this worker last looked in the epoll.
    since_epoll: u32,
}

/// Reads and bytes of the current slice, against [`SLICE_READS`] and
/// [`SLICE_BYTES`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Spent {
    reads: u32,
    bytes: usize,
}
