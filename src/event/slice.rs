//! One slice of a connection on an event worker: read, feed the session,
//! write, again — and why the slice stops (parked, yielded, ended). Also
//! the two regimes a socket can be read in (non-blocking, or *held*:
//! blocking with the park grace as its receive timeout) and the writes:
//! never blocked in the kernel (a held connection waits up to the same
//! grace for room), and what the client's socket does not take is kept
//! with the connection, which parks until there is room for it.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use log::{debug, info};

use super::{EventPool, Local, Next, Spent, SLICE_BYTES, SLICE_READS};
use crate::access::Ending;
use crate::connection::{is_timeout, write_stalled, Connection, End, Pressure};
use crate::poller::{Conn, Unsent, Why};
use crate::service::Flow;
use crate::stats::WorkerIo;

impl EventPool {
    /// Reads, transforms and writes until the connection parks, yields or
    /// ends.
    pub(super) fn slice(&self, local: &mut Local, conn: &mut Conn, why: Why) -> io::Result<Next> {
        // With --proxy-protocol, the header first.
        if let Some(next) = self.read_header(local, conn, why)? {
            return Ok(next);
        }
        let io = self.counters.worker_io(local.id);
        match why {
            Why::Idle => {
                self.counters.idle_timeout();
                debug!(
                    "{}: idle timeout; closing after {:?}",
                    conn.peer,
                    conn.accepted_at.elapsed()
                );
                return self.end(local, conn, End::Idle, io);
            }
            Why::Shutdown => return self.end(local, conn, End::Shutdown, io),
            // Dropped by the caller as a write timeout, as in connection
            // mode.
            Why::WriteStalled => {
                let limit = self.limits.write_timeout.unwrap_or_default();
                return Err(write_stalled(limit));
            }
            // A header's timer (`read_header` handled it).
            Why::Readable | Why::Yield | Why::ProxyTimeout => {}
        }
        loop {
            if self.shutdown.deadline_passed() {
                return self.end(local, conn, End::Shutdown, io);
            }
            // Never held while a reply waits: its writes must not block.
            let hold = !conn.waits_to_write() && self.may_hold();
            if hold != conn.held {
                self.set_held(conn, hold)?;
            }
            if let Some(unsent) = conn.unsent.take() {
                // Woken because the client read some of its reply: the
                // rest first, and nothing read until it is all out (a
                // client that never reads cannot make the server buffer
                // more for it).
                if !self.write_or_keep(conn, &unsent.bytes, io, Some(unsent.since))? {
                    return Ok(Next::Park);
                }
            }
            let input = &mut local.bufs.input;
            let read = if conn.held {
                // Blocks up to the grace: another worker runs meanwhile.
                self.blocking(|| (&conn.stream).read(input))
            } else {
                (&conn.stream).read(input)
            };
            match read {
                Ok(0) => return self.end(local, conn, End::Eof, io),
                Ok(n) => {
                    io.read(n);
                    conn.bytes_in += n as u64;
                    conn.window_bytes += n as u64;
                    conn.last_data = Instant::now();
                    if self.too_slow(conn) {
                        self.counters.slow_client();
                        info!(
                            "{}: sent below the minimum data rate while others waited; closing",
                            conn.peer
                        );
                        return self.end(local, conn, End::TooSlow, io);
                    }
                    let Local {
                        bufs,
                        events,
                        taken,
                        spent,
                        ..
                    } = &mut *local;
                    let out = &mut bufs.output;
                    out.clear();
                    out.reserve(self.service.max_output(n));
                    let flow = conn.session.on_data(&bufs.input[..n], out);
                    if flow == Flow::Close {
                        // The last reply: written out (or timed out) here,
                        // then the close.
                        self.write_all(conn, &bufs.output, io)?;
                        return Ok(Next::Close(Ending::closed_by(conn.session.closed_by())));
                    }
                    if !self.write_or_keep(conn, &bufs.output, io, None)? {
                        // The client is not reading: park until it does.
                        return Ok(Next::Park);
                    }
                    spent.reads += 1;
                    spent.bytes += n;
                    if spent.reads >= SLICE_READS || spent.bytes >= SLICE_BYTES {
                        // Readable connections nobody has taken yet are in
                        // the epoll, not on a queue: looked for without
                        // waiting, and queued (ahead of this one) if found.
                        // Always, not only when the queues are empty: a
                        // queue that never empties (streams taking turns)
                        // would otherwise keep them waiting for good.
                        let readable = self.parking.harvest(events, taken);
                        if readable || self.others_waiting() {
                            return Ok(Next::Yield);
                        }
                        *spent = Spent::default();
                    }
                    // A short read drained the socket: park without the
                    // read that would only say so (an edge since then is
                    // the slot's pending flag, and a first registration
                    // checks readiness) — unless the peer has closed, when
                    // the end of the stream may wait behind the data with
                    // no edge to come (see `Conn::peer_closed`). A held
                    // socket waits out its grace in the next read instead.
                    if n < bufs.input.len() && !conn.held && !conn.peer_closed {
                        return Ok(Next::Park);
                    }
                }
                // Nothing to read (or, held, nothing within the grace).
                Err(e) if is_timeout(&e) => {
                    if conn.held || !self.may_hold() {
                        return Ok(Next::Park);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a worker may keep an idle connection for the grace wait:
    /// only while nobody waits for a worker and there are no more live
    /// connections than workers, so holding one costs no other connection
    /// its turn. With more connections, parking at once leaves the worker
    /// free for whichever becomes readable next. And only on a server with
    /// more than one CPU: on one, the held connections' workers take turns
    /// with a context switch per message, where one worker
    /// taking them from the epoll serves several per wake-up (server on a
    /// CPU of its own, 8 ping-pong clients: 89.9k round trips/s parked at
    /// once against 77.8k held, medians of 3 alternating runs).
    fn may_hold(&self) -> bool {
        hold_allowed(
            self.permits.cpus(),
            self.counters.live_now(),
            self.counters.workers(),
        ) && !self.others_waiting()
    }

    /// Serves bytes that did not come from a read of this slice.
    pub(super) fn feed(
        &self,
        local: &mut Local,
        conn: &mut Conn,
        input: &[u8],
    ) -> io::Result<Flow> {
        // Counted as read: they are the client's data (a PROXY header is not).
        self.counters.worker_io(local.id).read(input.len());
        conn.bytes_in += input.len() as u64;
        let out = &mut local.bufs.output;
        out.clear();
        out.reserve(self.service.max_output(input.len()));
        let flow = conn.session.on_data(input, out);
        self.write_all(conn, out, self.counters.worker_io(local.id))?;
        Ok(flow)
    }

    /// Switches the socket between held (blocking, with the grace as its
    /// receive timeout) and non-blocking. Only on a change of regime, so
    /// the two or three syscalls are rare in a steady state.
    fn set_held(&self, conn: &mut Conn, hold: bool) -> io::Result<()> {
        if hold {
            // Held: no poller events wanted (each would wake the poller).
            self.parking.forget(conn);
            conn.stream.set_read_timeout(Some(self.grace))?;
        }
        conn.stream.set_nonblocking(!hold)?;
        conn.held = hold;
        Ok(())
    }

    /// The stream is over: the session answers what it holds, then the
    /// connection closes.
    fn end(&self, local: &mut Local, conn: &mut Conn, end: End, io: &WorkerIo) -> io::Result<Next> {
        local.bufs.output.clear();
        conn.session.on_end(end, &mut local.bufs.output);
        self.write_all(conn, &local.bufs.output, io)?;
        Ok(Next::Close(match end {
            End::Idle => Ending::Idle,
            End::TooSlow => Ending::Slow,
            End::Shutdown => Ending::Shutdown,
            _ => Ending::Eof,
        }))
    }

    /// Connection mode's minimum-rate rule: at the end of each window, a
    /// connection that sent less than the minimum while others wait is cut.
    fn too_slow(&self, conn: &mut Conn) -> bool {
        let Some(rate) = self.limits.min_rate else {
            return false;
        };
        let now = conn.last_data;
        if now.duration_since(conn.window_start) < rate.window {
            return false;
        }
        let slow = conn.window_bytes < rate.bytes && self.others_waiting();
        conn.window_start = now;
        conn.window_bytes = 0;
        slow
    }

    /// Writes what the socket takes of `buf` without blocking; the rest is
    /// kept in `conn.unsent` for when the client reads (see
    /// [`Conn::unsent`]). True if all of it went out. `stalled`: for the
    /// rest of an earlier reply, when its write stalled; the write timer
    /// runs on from there unless this call makes progress (a new reply's
    /// timer starts when it stalls).
    fn write_or_keep(
        &self,
        conn: &mut Conn,
        mut buf: &[u8],
        io: &WorkerIo,
        stalled: Option<Instant>,
    ) -> io::Result<bool> {
        let mut progressed = false;
        while !buf.is_empty() {
            match send_now(&conn.stream, buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    io.wrote(n);
                    conn.bytes_out += n as u64;
                    buf = &buf[n..];
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A held connection waits up to the grace for room, as
                    // its reads wait for data: a streaming client that
                    // reads makes room within microseconds, cheaper than a
                    // park and a hand-off to another worker; one that does
                    // not read is parked after the grace (no permit is
                    // kept meanwhile).
                    if conn.held && self.blocking(|| room_within(&conn.stream, self.grace)) {
                        continue;
                    }
                    let since = match stalled {
                        Some(since) if !progressed => since,
                        _ => Instant::now(),
                    };
                    conn.unsent = Some(Box::new(Unsent {
                        bytes: buf.to_vec(),
                        since,
                    }));
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes all of `buf` (after any unsent bytes of an earlier reply):
    /// non-blocking first; if the client's receive window is full,
    /// connection mode's blocking write with its write timeout and
    /// shutdown deadline. For the replies that end a connection, after
    /// which there is nothing to park for.
    fn write_all(&self, conn: &mut Conn, buf: &[u8], io: &WorkerIo) -> io::Result<()> {
        let earlier = conn.unsent.take();
        let earlier = earlier.as_ref().map_or(&[][..], |u| &u.bytes[..]);
        for part in [earlier, buf] {
            if !self.write_or_keep(conn, part, io, None)? {
                // What the socket did not take, written blocking.
                let rest = conn.unsent.take().map(|u| u.bytes).unwrap_or_default();
                self.write_blocking(conn, &rest, io)?;
            }
        }
        Ok(())
    }

    fn write_blocking(&self, conn: &mut Conn, buf: &[u8], io: &WorkerIo) -> io::Result<()> {
        conn.stream.set_nonblocking(false)?;
        // Blocks up to the write timeout: another worker runs meanwhile.
        let written = self.blocking(|| {
            Connection::new(
                &conn.stream,
                conn.peer,
                io,
                &self.shutdown,
                &self.limits,
                self,
            )
            .and_then(|mut c| c.write_all(buf))
        });
        // Connection mode's timeouts replaced the grace: start over
        // non-blocking.
        conn.stream.set_nonblocking(true)?;
        conn.held = false;
        written
    }
}

/// The part of [`EventPool::may_hold`] that does not change from one read
/// to the next: the server has more than one of `cpus`, and the `live`
/// connections fit the `workers`.
fn hold_allowed(cpus: usize, live: u64, workers: usize) -> bool {
    cpus > 1 && live <= workers as u64
}

/// Sends what the socket takes of `buf` now, without blocking even on a
/// held (blocking) socket: `send(2)` with `MSG_DONTWAIT`. A client that
/// does not read can then never keep a worker, or its CPU permit, in a
/// write the kernel blocks; how long to wait for room is the caller's
/// choice ([`room_within`], without the permit). (`MSG_NOSIGNAL`, as
/// std's own writes: a reset peer is an error, not a `SIGPIPE`.)
fn send_now(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    use rustix::net::{send, SendFlags};
    Ok(send(
        stream,
        buf,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?)
}

/// Waits up to `limit` for room to write in `stream`'s send buffer
/// (`poll(2)` for `POLLOUT`); true if there is some, if the socket failed
/// (the next send then says how) or if a signal interrupted the wait.
fn room_within(stream: &TcpStream, limit: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec {
        tv_sec: limit.as_secs() as i64,
        tv_nsec: i64::from(limit.subsec_nanos()),
    };
    let mut fds = [PollFd::new(stream, PollFlags::OUT)];
    match poll(&mut fds, Some(&timeout)) {
        Ok(0) => false,
        Ok(_) | Err(rustix::io::Errno::INTR) => true,
        // Not expected; parked, the poller reports the socket.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    #[test]
    fn connections_are_held_only_when_they_fit_the_workers_on_more_than_one_cpu() {
        // 8 workers on 2 CPUs: up to 8 live connections are held.
        assert!(hold_allowed(2, 8, 8));
        assert!(hold_allowed(2, 1, 8));
        assert!(!hold_allowed(2, 9, 8));
        // One CPU: parked at once, however few the connections.
        assert!(!hold_allowed(1, 1, 8));
        assert!(!hold_allowed(1, 8, 8));
        // One worker on two CPUs holds its one connection: no other held
        // worker takes turns with it.
        assert!(hold_allowed(2, 1, 1));
        assert!(!hold_allowed(2, 2, 1));
    }

    /// A blocking socket with no send timeout would block for good once
    /// the peer's window and its own buffer are full; `send_now` must say
    /// `WouldBlock` instead. Run on a thread and waited for with a
    /// deadline, so a blocking send fails the test instead of hanging it.
    #[test]
    fn send_now_does_not_block_on_a_blocking_socket_whose_peer_never_reads() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(false).unwrap();
        server.set_write_timeout(None).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            // Bounded: loopback buffers hold a few MiB at most.
            let outcome = loop {
                match send_now(&server, &chunk) {
                    Ok(n) => sent += n,
                    Err(e) => break e.kind(),
                }
                if sent > 1 << 30 {
                    break io::ErrorKind::Other;
                }
            };
            let _ = tx.send((outcome, sent));
            drop(server);
        });
        let (outcome, sent) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("send_now blocked on a full socket");
        assert_eq!(outcome, io::ErrorKind::WouldBlock);
        assert!(sent > 0, "the socket took nothing at all");
        drop(client);
    }
}
