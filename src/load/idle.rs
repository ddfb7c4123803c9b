//! Idle connections (`--idle N`): thousands of mostly silent clients on
//! one thread, to measure a server against many more clients than it has
//! workers without poolload needing a thread per client.
//!
//! Design decisions:
//!
//! * **One thread, non-blocking sockets, one poller** (mio). A connection
//!   costs a socket and about a hundred bytes here, so 10,000 of them fit
//!   where 10,000 threads would not.
//! * **Each sends one short line every `idle_interval`** and checks the
//!   reply byte for byte against the pattern's expected replies (the
//!   protocol's `reference_reply`, or the line itself with `--expect
//!   echo`). Connection `i`'s first line is due at a jittered offset
//!   inside the first interval after the run starts (or at once, if its
//!   connect took longer), so the connections do not all fire together and
//!   a slow connect phase does not leave late ones silent at the end.
//! * **Connects are paced**: at most [`CONNECTS_IN_FLIGHT`] are under way
//!   at once, so 10,000 connects do not flood the server's listen queue in
//!   one burst, and none starts after the measured time ended.
//! * **Counted apart**: nothing here touches the main connections' tallies
//!   or the [`Live`](super::Live) counters; the report has its own `idle_*`
//!   fields.
//! * **Ending**: when the run's measured time ends (or it is stopped, or
//!   the main connections of a count-bound run are done), connections that
//!   never had a correct reply are closed at once and reported as never
//!   served; served ones with a line in flight wait for its reply (checked,
//!   not counted) until the hard deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::ctx::{connect_hint, Ctx};
use super::pattern::{is_busy, Pattern};
use super::sock::{is_timeout, READ_BUF};
use super::tally::{histogram_us, IdleTally};
use super::SLICE;

/// Connects under way at once, at most: below the listen backlog of 128
/// that std's listeners (and many servers) use, so a server that accepts
/// slowly sees a steady stream of handshakes instead of dropped SYNs and
/// their one-second retransmits.
pub(super) const CONNECTS_IN_FLIGHT: usize = 64;
/// Poller events handled per wake-up.
const EVENTS: usize = 1024;

/// Where one idle connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started yet (connects are paced).
    Pending,
    /// Connect under way; it fails if not done by `due`.
    Connecting,
    /// Connected; the next line goes out at `due`.
    Waiting,
    /// A line is (partly) sent and its reply (partly) read.
    InFlight,
    /// Closed; its outcome is in the tally.
    Closed,
}

/// One idle connection: the socket and a few counters, nothing more.
#[derive(Debug)]
struct Conn {
    stream: Option<TcpStream>,
    state: State,
    /// When the pending timer of this state fires (connect timeout, next
    /// send). Heap entries that do not match it are stale.
    due: Instant,
    /// The pattern's message of the current (or next) line.
    variant: usize,
    /// When the current line's first byte was written.
    sent_at: Instant,
    /// Bytes of the current line written.
    written: usize,
    /// Bytes of the current reply read.
    got: usize,
    /// The current reply already differs.
    bad: bool,
    /// Had a correct reply during the run.
    served: bool,
    /// The poller also watches for room to write (a line is partly out).
    want_write: bool,
}

/// The idle connections of one run and the poller they share.
struct Driver<'c, 'a> {
    ctx: &'c Ctx<'a>,
    /// The idle lines and their expected replies.
    pattern: &'c Pattern,
    poll: Poll,
    conns: Vec<Conn>,
    /// Timers: (when, connection). Stale entries are skipped.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// When the idle connections started.
    start: Instant,
    /// Next connection to start connecting.
    next_start: usize,
    /// Connects under way.
    connecting: usize,
    /// Connections not yet closed.
    open: usize,
    /// The run is winding down: send nothing new, count nothing more.
    ending: bool,
    buf: Vec<u8>,
    t: IdleTally,
}

/// Runs `n` idle connections until the run ends: its measured time is over,
/// it is stopped, or `main_done` is set (the main connections of a
/// count-bound run finished). Returns their tally.
pub(super) fn idle(ctx: &Ctx<'_>, pattern: &Pattern, main_done: &AtomicBool) -> IdleTally {
    let n = ctx.cfg.idle;
    let mut t = IdleTally::new();
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            t.error(format!("cannot create a poller ({e})"));
            t.finished = Some(Instant::now());
            return t;
        }
    };
    let start = Instant::now();
    let mut d = Driver {
        ctx,
        pattern,
        poll,
        conns: (0..n)
            .map(|idx| Conn {
                stream: None,
                state: State::Pending,
                due: start,
                variant: idx % pattern.variants,
                sent_at: start,
                written: 0,
                got: 0,
                bad: false,
                served: false,
                want_write: false,
            })
            .collect(),
        timers: BinaryHeap::with_capacity(n),
        start,
        next_start: 0,
        connecting: 0,
        open: n,
        ending: false,
        buf: vec![0u8; READ_BUF],
        t,
    };
    d.run(main_done);
    d.t
}

impl Driver<'_, '_> {
    fn run(&mut self, main_done: &AtomicBool) {
        let mut events = Events::with_capacity(EVENTS);
        while self.open > 0 {
            let now = Instant::now();
            if self.ctx.past_deadline(now) {
                self.cut_at_deadline();
                break;
            }
            if !self.ending
                && (self.ctx.past_measure_end(now) || self.ctx.stopped() || main_done.load(Relaxed))
            {
                self.begin_ending(now);
                continue;
            }
            if !self.ending {
                self.start_connects(now);
            }
            self.fire_timers(now);
            // Every wait is bounded by one slice, so the end of the run,
            // a stop and the deadline are noticed without a waker.
            let wait = self
                .timers
                .peek()
                .map_or(SLICE, |Reverse((at, _))| at.saturating_duration_since(now))
                .min(SLICE);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.t.error(format!("the poller failed ({e})"));
                    for i in 0..self.conns.len() {
                        self.close(i);
                    }
                    break;
                }
            }
            let now = Instant::now();
            for ev in &events {
                let i = ev.token().0;
                match self.conns[i].state {
                    State::Connecting if ev.is_writable() || ev.is_error() => {
                        self.connect_done(i, now);
                    }
                    State::Waiting | State::InFlight => {
                        if ev.is_writable() && self.conns[i].state == State::InFlight {
                            self.push(i);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // Only after a close or an error may more wait
                            // behind a short read with no edge to come.
                            self.read(i, !ev.is_read_closed() && !ev.is_error());
                        }
                    }
                    _ => {}
                }
            }
        }
        self.t.finished.get_or_insert_with(Instant::now);
    }

    /// Starts connects while fewer than [`CONNECTS_IN_FLIGHT`] are under way.
    fn start_connects(&mut self, now: Instant) {
        let addr = self.addr();
        while self.connecting < CONNECTS_IN_FLIGHT && self.next_start < self.conns.len() {
            let i = self.next_start;
            self.next_start += 1;
            let stream = TcpStream::connect(addr).and_then(|mut s| {
                self.poll
                    .registry()
                    .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                    .map(|()| s)
            });
            match stream {
                Ok(s) => {
                    let c = &mut self.conns[i];
                    c.stream = Some(s);
                    c.state = State::Connecting;
                    c.due = now + self.ctx.cfg.connect_timeout;
                    self.timers.push(Reverse((c.due, i)));
                    self.connecting += 1;
                }
                Err(e) => self.connect_failed(i, &e),
            }
        }
    }

    /// A connect finished (or failed): schedule the first line at a
    /// jittered offset inside the first interval of the run.
    fn connect_done(&mut self, i: usize, now: Instant) {
        let Some(s) = self.conns[i].stream.as_ref() else {
            return;
        };
        let failed = match s.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match s.peer_addr() {
                Ok(_) => None,
                // Not connected yet: a spurious wake-up.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e),
            },
        };
        self.connecting -= 1;
        if let Some(e) = failed {
            return self.connect_failed(i, &e);
        }
        let _ = s.set_nodelay(true);
        let interval = self.ctx.cfg.idle_interval;
        let c = &mut self.conns[i];
        // Reading only from now on: a writable wake-up per send would
        // double the wake-ups for nothing.
        if let Some(s) = c.stream.as_mut() {
            if let Err(e) = self
                .poll
                .registry()
                .reregister(s, Token(i), Interest::READABLE)
            {
                self.fail(i, format!("cannot watch the socket ({e})"));
                return;
            }
        }
        c.state = State::Waiting;
        c.due = (self.start + interval.mul_f64(jitter(i))).max(now);
        self.timers.push(Reverse((c.due, i)));
    }

    /// Handles the timers that are due: connect timeouts and sends.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let c = &self.conns[i];
            if c.due != at {
                continue;
            }
            match c.state {
                State::Connecting => {
                    self.connecting -= 1;
                    let limit = self.ctx.cfg.connect_timeout;
                    self.fail(
                        i,
                        format!(
                            "connect not done within {limit:?}; the server's listen queue may be full, or raise --connect-timeout"
                        ),
                    );
                }
                State::Waiting if !self.ending => self.send(i, now),
                _ => {}
            }
        }
    }

    /// Starts the next line.
    fn send(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        c.state = State::InFlight;
        c.sent_at = now;
        c.written = 0;
        c.got = 0;
        c.bad = false;
        self.push(i);
    }

    /// Writes what the socket takes of the current line; if not all, asks
    /// to be woken when it takes more (and stops asking once it is all
    /// out).
    fn push(&mut self, i: usize) {
        let pattern = self.pattern;
        let size = pattern.size;
        let c = &mut self.conns[i];
        let Some(s) = c.stream.as_mut() else {
            return;
        };
        let msg = pattern.message(c.variant);
        while c.written < size {
            match s.write(&msg[c.written..]) {
                Ok(0) => return self.fail(i, "sending failed: wrote zero bytes".into()),
                Ok(k) => c.written += k,
                Err(e) if is_timeout(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(i, format!("sending failed: {e}")),
            }
        }
        let want_write = c.written < size;
        if want_write != c.want_write {
            c.want_write = want_write;
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self.poll.registry().reregister(s, Token(i), interest) {
                self.fail(i, format!("cannot watch the socket ({e})"));
            }
        }
    }

    /// Reads what arrived (until the socket is drained: the poller only
    /// reports changes) and checks it. `short_drains`: a read that does
    /// not fill the buffer has drained the socket, and the read that would
    /// only say so is skipped (a third of this side's system calls); data
    /// that comes after it raises a new edge.
    fn read(&mut self, i: usize, short_drains: bool) {
        loop {
            let Some(s) = self.conns[i].stream.as_mut() else {
                return;
            };
            let n = match s.read(&mut self.buf) {
                Ok(0) => {
                    let what = match self.conns[i].state {
                        State::InFlight => "the server closed an idle connection before replying",
                        _ => "the server closed an idle connection",
                    };
                    return self.fail(i, what.into());
                }
                Ok(n) => n,
                Err(e) if is_timeout(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(i, format!("receiving failed: {e}")),
            };
            if !self.check(i, n) || (short_drains && n < self.buf.len()) {
                return;
            }
        }
    }

    /// Checks `n` bytes of `self.buf` against the expected reply; false
    /// when the connection was closed over them.
    fn check(&mut self, i: usize, n: usize) -> bool {
        let now = Instant::now();
        let size = self.pattern.size;
        let c = &mut self.conns[i];
        if !c.served && c.got == 0 && is_busy(&self.buf[..n]) {
            self.t.rejected += 1;
            self.close(i);
            return false;
        }
        let outstanding = if c.state == State::InFlight {
            size - c.got
        } else {
            0
        };
        let take = n.min(outstanding);
        let start = c.variant * size + c.got;
        if self.buf[..take] != self.pattern.expected[start..start + take] {
            c.bad = true;
        }
        c.got += take;
        if take > 0 && c.got == size {
            // Within the run: before the idle side noticed its end, and
            // before the measured time ended (the main connections close
            // then, and a queued idle one served by the freed worker must
            // not look served).
            let in_time = !self.ending && !self.ctx.past_measure_end(now);
            if c.bad {
                self.t.wrong += 1;
            } else if in_time {
                c.served = true;
            }
            if in_time && c.sent_at >= self.ctx.warmup_end {
                self.t.round_trips += 1;
                self.t
                    .latency
                    .saturating_record(histogram_us(now.duration_since(c.sent_at)));
            }
            c.variant = (c.variant + 1) % self.pattern.variants;
            if self.ending {
                // The last reply of a served connection: done.
                self.close(i);
                return false;
            }
            c.state = State::Waiting;
            c.due = (c.sent_at + self.ctx.cfg.idle_interval).max(now);
            self.timers.push(Reverse((c.due, i)));
        }
        if n > take {
            self.t.wrong += 1;
            self.fail(
                i,
                format!("the server sent {} bytes nobody asked for", n - take),
            );
            return false;
        }
        true
    }

    /// The run is over: close every connection that has nothing left to
    /// wait for; served ones with a line in flight wait for its reply.
    fn begin_ending(&mut self, now: Instant) {
        self.ending = true;
        self.t.finished = Some(now);
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            match c.state {
                State::Closed => {}
                State::InFlight if c.served => {}
                State::Pending | State::Connecting => {
                    if c.state == State::Connecting {
                        self.connecting -= 1;
                    }
                    self.t.never_served += 1;
                    self.t.not_connected += 1;
                    self.close(i);
                }
                _ => {
                    self.t.never_served += u64::from(!c.served);
                    self.close(i);
                }
            }
        }
    }

    /// The hard deadline passed: whatever is still open is cut off.
    fn cut_at_deadline(&mut self) {
        self.t.cut = true;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.state != State::Closed {
                self.t.never_served += u64::from(!c.served);
                self.close(i);
            }
        }
    }

    /// The address idle connections connect to: the one the main
    /// connections last reached, else the first resolved.
    fn addr(&self) -> SocketAddr {
        self.ctx.addrs[self.ctx.preferred.load(Relaxed) % self.ctx.addrs.len()]
    }

    fn connect_failed(&mut self, i: usize, e: &io::Error) {
        let addr = self.addr();
        self.fail(
            i,
            format!("cannot connect to {addr}: {e}{}", connect_hint(e)),
        );
    }

    /// Records an error on connection `i` and closes it.
    fn fail(&mut self, i: usize, message: String) {
        self.t.error(message);
        self.close(i);
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.state == State::Closed {
            return;
        }
        if c.served {
            self.t.served += 1;
        }
        c.state = State::Closed;
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
            let _ = s.shutdown(Shutdown::Both);
        }
        self.open -= 1;
    }
}

/// Where in the first interval connection `i` sends its first line, as a
/// fraction in `[0, 1)`: the golden-ratio sequence, which spreads any
/// number of connections evenly without a random number generator.
fn jitter(i: usize) -> f64 {
    const PHI_FRACTION: f64 = 0.618_033_988_749_895;
    (i as f64 * PHI_FRACTION).fract()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_lines_are_spread_over_the_interval() {
        // 1000 connections over 10 slices of the interval: each slice gets
        // about a tenth, none is empty or crowded.
        let mut slices = [0u32; 10];
        for i in 0..1000 {
            let j = jitter(i);
            assert!((0.0..1.0).contains(&j), "{j}");
            slices[(j * 10.0) as usize] += 1;
        }
        assert!(
            slices.iter().all(|&n| (90..=110).contains(&n)),
            "{slices:?}"
        );
    }
}
