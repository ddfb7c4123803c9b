//! One client connection's socket I/O: reads that enforce the idle timeout
//! and the shutdown deadline, and writes that cannot hang on a client that
//! never reads. (Closing is the closer's: `closer.rs`.)
//!
//! A [`Service`](crate::Service) only ever sees a [`Connection`], so every
//! protocol served by the pool gets these guarantees for free.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::shutdown::{Shutdown, POLL_SLICE};
use crate::stats::WorkerIo;

/// Why [`Connection::read`] reported the end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum End {
    /// The client closed its sending side.
    Eof,
    /// The client sent nothing for the idle timeout.
    Idle,
    /// The client sent below the minimum data rate while others waited.
    TooSlow,
    /// The server's shutdown deadline passed.
    Shutdown,
}

/// The client connection handed to a [`Service`](crate::Service).
///
/// `read` and `write_all` behave like their `std::io` namesakes with the
/// server's timeouts built in. A read returns `Ok(0)` when the stream is
/// over for any reason (see [`Connection::end`]); a service answers what it
/// still holds and returns. The pool closes the socket afterwards with a
/// lingering close.
#[derive(Debug)]
pub struct Connection<'a> {
    stream: &'a TcpStream,
    peer: SocketAddr,
    io: &'a WorkerIo,
    shutdown: &'a Shutdown,
    limits: &'a Limits,
    pressure: &'a dyn Pressure,
    /// When the last byte arrived (or the worker took the connection).
    last_data: Instant,
    /// Bytes received in the current minimum-rate window.
    window_bytes: u64,
    window_start: Instant,
    end: Option<End>,
}

/// Per-connection time limits, fixed at server start.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    /// Minimum bytes per `window`, enforced only while connections wait in
    /// the accept queue (see `MinRate`).
    pub(crate) min_rate: Option<MinRate>,
}

/// A minimum data rate: at least `bytes` every `window`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MinRate {
    pub(crate) bytes: u64,
    pub(crate) window: Duration,
}

/// Tells a connection whether others are waiting for a worker, which is
/// when the minimum data rate applies.
pub(crate) trait Pressure: std::fmt::Debug {
    fn others_waiting(&self) -> bool;
}

impl<'a> Connection<'a> {
    pub(crate) fn new(
        stream: &'a TcpStream,
        peer: SocketAddr,
        io: &'a WorkerIo,
        shutdown: &'a Shutdown,
        limits: &'a Limits,
        pressure: &'a dyn Pressure,
    ) -> io::Result<Self> {
        // Replies are small and latency matters more than segment count.
        stream.set_nodelay(true)?;
        // Slice every blocking call so deadlines are noticed (see
        // `POLL_SLICE`); the timers themselves are checked in `read`/`write`.
        let slice = |t: Option<Duration>| Some(t.map_or(POLL_SLICE, |t| t.min(POLL_SLICE)));
        stream.set_read_timeout(slice(limits.idle_timeout))?;
        stream.set_write_timeout(slice(limits.write_timeout))?;
        let now = Instant::now();
        Ok(Connection {
            stream,
            peer,
            io,
            shutdown,
            limits,
            pressure,
            last_data: now,
            window_bytes: 0,
            window_start: now,
            end: None,
        })
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Why the stream ended, once a read has returned `Ok(0)`.
    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// Reads what the client sent into `buf`, waiting as long as the idle
    /// timeout allows. `Ok(0)` means the stream is over: the client closed,
    /// went idle, or the server is past its shutdown deadline.
    ///
    /// # Errors
    ///
    /// Socket errors such as a reset by the client.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.end.is_some() {
            return Ok(0);
        }
        loop {
            if self.shutdown.deadline_passed() {
                return Ok(self.finish(End::Shutdown));
            }
            match self.stream.read(buf) {
                Ok(0) => return Ok(self.finish(End::Eof)),
                Ok(n) => {
                    self.io.read(n);
                    self.window_bytes += n as u64;
                    if self.limits.idle_timeout.is_some() || self.limits.min_rate.is_some() {
                        self.last_data = Instant::now();
                        if self.too_slow() {
                            return Ok(self.finish(End::TooSlow));
                        }
                    }
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) => {
                    let now = Instant::now();
                    if self
                        .limits
                        .idle_timeout
                        .is_some_and(|t| now.duration_since(self.last_data) >= t)
                    {
                        return Ok(self.finish(End::Idle));
                    }
                    if self.too_slow() {
                        return Ok(self.finish(End::TooSlow));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Checks the minimum data rate at the end of each window; the window
    /// restarts whether or not the check applied.
    fn too_slow(&mut self) -> bool {
        let Some(rate) = self.limits.min_rate else {
            return false;
        };
        let now = Instant::now();
        if now.duration_since(self.window_start) < rate.window {
            return false;
        }
        let slow = self.window_bytes < rate.bytes && self.pressure.others_waiting();
        self.window_start = now;
        self.window_bytes = 0;
        slow
    }

    fn finish(&mut self, end: End) -> usize {
        self.end = Some(end);
        0
    }

    /// Writes all of `buf`, or fails if the client stops reading for the
    /// write timeout, or the shutdown deadline passes while the write is
    /// stuck.
    ///
    /// # Errors
    ///
    /// `TimedOut` for a client that does not read; socket errors such as a
    /// broken pipe.
    pub fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let mut stalled_since: Option<Instant> = None;
        while !buf.is_empty() {
            match self.stream.write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.io.wrote(n);
                    buf = &buf[n..];
                    stalled_since = None;
                }
                Err(e) if is_timeout(&e) => {
                    let since = *stalled_since.get_or_insert_with(|| Instant::now() - POLL_SLICE);
                    if self.shutdown.deadline_passed() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "shutdown deadline passed while the client was not reading",
                        ));
                    }
                    if let Some(limit) = self.limits.write_timeout {
                        if since.elapsed() >= limit {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                WriteStalled(limit),
                            ));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The error inside the `TimedOut` returned when a client stops reading.
#[derive(Debug)]
pub(crate) struct WriteStalled(Duration);

impl std::fmt::Display for WriteStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client read nothing for {} (write timeout)",
            humantime::format_duration(self.0)
        )
    }
}

impl std::error::Error for WriteStalled {}

/// True for an `io::Error` caused by a client that stopped reading.
pub(crate) fn is_write_stall(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<WriteStalled>())
}

/// A socket timeout surfaces as `WouldBlock` on Unix and `TimedOut` on
/// Windows.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
