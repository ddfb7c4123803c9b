//! One client connection's socket I/O: reads that enforce the idle timeout
//! and the shutdown deadline, and writes that cannot hang on a client that
//! never reads. (Closing is the closer's: `closer.rs`.)
//!
//! A [`Service`](crate::Service) only ever sees a [`Connection`], so every
//! protocol served by the pool gets these guarantees for free. The
//! defaults of the two per-connection timeouts live here, with the code
//! that enforces them.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::shutdown::{Shutdown, POLL_SLICE};
use crate::stats::WorkerIo;

/// Default idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Default write timeout.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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
/// server's timeouts built in, and `Connection` implements [`Read`] and
/// [`Write`] with the same behaviour, so [`BufReader`](std::io::BufReader),
/// `lines()` and `write!` work on it. A read returns `Ok(0)` when the
/// stream is over for any reason (see [`Connection::end`]); a service
/// answers what it still holds and returns. The pool closes the socket
/// afterwards with a lingering close.
///
/// # Examples
///
/// A line-based service, unit-tested without a server: both ends of a
/// loopback connection, and [`Connection::standalone`] on the server's end.
///
/// ```
/// use std::io::{self, BufRead, BufReader, Read, Write};
/// use std::net::{Shutdown, TcpListener, TcpStream};
/// use poolserver::{Buffers, Connection, End, Service};
///
/// /// Greets every line.
/// #[derive(Debug)]
/// struct Greet;
///
/// impl Service for Greet {
///     fn serve(&self, conn: &mut Connection<'_>, _bufs: &mut Buffers) -> io::Result<()> {
///         let mut reader = BufReader::new(conn);
///         let mut line = String::new();
///         while reader.read_line(&mut line)? > 0 {
///             writeln!(reader.get_mut(), "hello, {}", line.trim_end())?;
///             line.clear();
///         }
///         Ok(())
///     }
/// }
///
/// # fn main() -> io::Result<()> {
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let mut client = TcpStream::connect(listener.local_addr()?)?;
/// let (server_end, _) = listener.accept()?;
/// client.write_all(b"ann\nbob\n")?;
/// client.shutdown(Shutdown::Write)?;
///
/// let mut conn = Connection::standalone(&server_end)?;
/// Greet.serve(&mut conn, &mut Buffers::new(1024))?;
/// assert_eq!(conn.end(), Some(End::Eof));
/// assert!(!conn.shutting_down());
/// drop(conn);
/// drop(server_end);
///
/// let mut reply = String::new();
/// client.read_to_string(&mut reply)?;
/// assert_eq!(reply, "hello, ann\nhello, bob\n");
/// # Ok(()) }
/// ```
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
    /// The line that made the service close, for the access log.
    closed_by: Option<&'static str>,
    /// Bytes that arrived with the PROXY header, handed out before the
    /// socket is read again.
    pending: Vec<u8>,
    /// Bytes read from and written to this client, for the access log.
    bytes_in: u64,
    bytes_out: u64,
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

/// What a standalone connection has around it instead of a server: the
/// default timeouts, a shutdown that never begins, counters nobody reads,
/// and nobody waiting.
static STANDALONE_LIMITS: Limits = Limits {
    idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
    write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
    min_rate: None,
};
static STANDALONE_SHUTDOWN: LazyLock<Shutdown> = LazyLock::new(Shutdown::new);
static STANDALONE_IO: WorkerIo = WorkerIo::new();

#[derive(Debug)]
struct NobodyWaits;

impl Pressure for NobodyWaits {
    fn others_waiting(&self) -> bool {
        false
    }
}

impl<'a> Connection<'a> {
    /// A connection over `stream` with no server around it, for testing a
    /// [`Service`](crate::Service) (see the example above): the default
    /// idle and write timeouts, no minimum data rate, and a shutdown that
    /// never begins. Like the pool, it switches the stream to `TCP_NODELAY`
    /// and sets its read and write timeouts.
    ///
    /// # Errors
    ///
    /// When the socket options cannot be set or the peer's address read.
    pub fn standalone(stream: &'a TcpStream) -> io::Result<Self> {
        let peer = stream.peer_addr()?;
        Connection::new(
            stream,
            peer,
            &STANDALONE_IO,
            &STANDALONE_SHUTDOWN,
            &STANDALONE_LIMITS,
            &NobodyWaits,
        )
    }

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
            closed_by: None,
            pending: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
        })
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Makes `bytes` (read from the socket before the connection was
    /// handed over, after a PROXY header) the first that `read` returns.
    pub(crate) fn unread(&mut self, bytes: Vec<u8>) {
        debug_assert!(self.pending.is_empty());
        self.pending = bytes;
    }

    /// Bytes read from and written to this client so far.
    pub(crate) fn transferred(&self) -> (u64, u64) {
        (self.bytes_in, self.bytes_out)
    }

    /// Why the stream ended, once a read has returned `Ok(0)`.
    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// Records the line that made an event service close (see
    /// [`Session::closed_by`](crate::Session::closed_by)).
    pub(crate) fn note_closed_by(&mut self, word: Option<&'static str>) {
        self.closed_by = word;
    }

    /// The line that made the service close, if it said.
    pub(crate) fn closed_by(&self) -> Option<&'static str> {
        self.closed_by
    }

    /// True once the server has begun to shut down. Reads go on working
    /// until the shutdown deadline (then they return `Ok(0)` with
    /// [`End::Shutdown`]); a service with a natural stopping point — the
    /// end of a request — can use this to stop there instead of waiting
    /// for the next one.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.has_begun()
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
        if !self.pending.is_empty() && !buf.is_empty() {
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            self.io.read(n);
            self.bytes_in += n as u64;
            return Ok(n);
        }
        loop {
            if self.shutdown.deadline_passed() {
                return Ok(self.finish(End::Shutdown));
            }
            match self.stream.read(buf) {
                Ok(0) => return Ok(self.finish(End::Eof)),
                Ok(n) => {
                    self.io.read(n);
                    self.bytes_in += n as u64;
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
    /// write timeout, or the write is still stuck one second after the
    /// shutdown deadline (a slow reader gets that second to take what was
    /// answered).
    ///
    /// # Errors
    ///
    /// `TimedOut` for a client that does not read; socket errors such as a
    /// broken pipe.
    pub fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_some(buf)? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => buf = &buf[n..],
            }
        }
        Ok(())
    }

    /// One write that makes progress, waiting (in slices) while the client
    /// does not read, up to the write timeout or one second past the
    /// shutdown deadline.
    fn write_some(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut stalled_since: Option<Instant> = None;
        loop {
            match self.stream.write(buf) {
                Ok(n) => {
                    self.io.wrote(n);
                    self.bytes_out += n as u64;
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) => {
                    let since = *stalled_since.get_or_insert_with(|| Instant::now() - POLL_SLICE);
                    if self.shutdown.write_cutoff_passed() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "shutdown deadline (and its 1 s write grace) passed while the \
                             client was not reading",
                        ));
                    }
                    if let Some(limit) = self.limits.write_timeout {
                        if since.elapsed() >= limit {
                            return Err(write_stalled(limit));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The same reads as [`Connection::read`].
impl Read for Connection<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Connection::read(self, buf)
    }
}

/// Writes with the write timeout of [`Connection::write_all`]. Nothing is
/// buffered, so `flush` has nothing to do.
impl Write for Connection<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_some(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Connection::write_all(self, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
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

/// The error of a write whose client read nothing for `limit`.
pub(crate) fn write_stalled(limit: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, WriteStalled(limit))
}

/// True for an `io::Error` caused by a client that stopped reading.
pub(crate) fn is_write_stall(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<WriteStalled>())
}

/// True when a socket read or write timed out: a timeout surfaces as
/// `WouldBlock` on Unix and `TimedOut` on Windows.
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
