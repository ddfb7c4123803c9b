//! What a worker does with a connection, in two shapes:
//!
//! * [`EventService`] and its per-connection [`Session`]: byte logic only,
//!   fed what each read returned and appending the reply to a buffer, with
//!   no sockets and no blocking. The built-in [`Uppercase`] and [`Echo`]
//!   are written this way, so they run in every dispatch mode; in
//!   connection mode [`serve_blocking`] drives a session over a
//!   [`Connection`] — the one read/answer/write loop of the crate.
//! * [`Service`]: a blocking handler that owns the whole conversation on a
//!   [`Connection`] (connection mode only), for protocols that are easier
//!   to write as straight-line code.
//!
//! Either one borrows the worker's [`Buffers`], allocated once per worker
//! thread, so serving a connection allocates nothing per read.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::connection::{Connection, End};
use crate::protocol::{Feed, Uppercaser, MAX_EXPANSION};

/// Serves one whole connection, from its first byte to the close.
///
/// The pool calls [`serve`](Service::serve) on a worker thread, then closes
/// the connection with a lingering close (unless `serve` returned an
/// error, which means the connection is broken and is simply dropped). A
/// panic inside `serve` is caught by the pool: the connection is closed,
/// counted in [`Stats::panics`](crate::Stats::panics), and the worker goes
/// on.
///
/// # Examples
///
/// A service that echoes bytes back unchanged:
///
/// ```
/// use poolserver::{Buffers, Connection, Service};
///
/// #[derive(Debug)]
/// struct Echo;
///
/// impl Service for Echo {
///     fn serve(&self, conn: &mut Connection<'_>, bufs: &mut Buffers) -> std::io::Result<()> {
///         loop {
///             let n = conn.read(&mut bufs.input)?;
///             if n == 0 {
///                 return Ok(());
///             }
///             conn.write_all(&bufs.input[..n])?;
///         }
///     }
/// }
///
/// # fn main() -> Result<(), poolserver::Error> {
/// let server = poolserver::Server::builder()
///     .addr("127.0.0.1:0")
///     .service(Echo)
///     .monitor_interval(std::time::Duration::ZERO)
///     .start()?;
/// # server.shutdown(std::time::Duration::ZERO);
/// # Ok(()) }
/// ```
pub trait Service: Send + Sync + std::fmt::Debug + 'static {
    /// Serves `conn` until the client is done.
    ///
    /// # Errors
    ///
    /// Return socket errors (a reset, a write timeout) as they come; they
    /// are logged at debug level and counted, never propagated further.
    fn serve(&self, conn: &mut Connection<'_>, bufs: &mut Buffers) -> io::Result<()>;
}

/// What a session wants after a chunk of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Send what was appended and keep reading.
    Continue,
    /// Send what was appended, then close the connection.
    Close,
}

/// One connection's conversation state. Fed what each read returned, in
/// either dispatch mode; in event mode it moves with the connection while
/// parked (keep it small).
pub trait Session: Send + 'static {
    /// `input` is what one read returned; append the reply to `out` (the
    /// caller clears `out` before each call and has reserved
    /// [`EventService::max_output`]`(input.len())` bytes).
    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Flow;

    /// The stream is over (`end`: [`End::Eof`], [`End::Idle`],
    /// [`End::TooSlow`], [`End::Shutdown`]); append what is still held.
    fn on_end(&mut self, end: End, out: &mut Vec<u8>);

    /// After [`on_data`](Session::on_data) returned [`Flow::Close`]: the
    /// word that ended the conversation, if the protocol has several (the
    /// access log's `end=` names it; `None` logs `end=exit`).
    fn closed_by(&self) -> Option<&'static str> {
        None
    }
}

/// An event-style service: byte logic only, no sockets. [`Uppercase`] and
/// [`Echo`] implement it; connection mode runs it through
/// [`serve_blocking`], event mode through the poller.
///
/// # Examples
///
/// A service that answers every chunk with its length, tested without a
/// server by feeding its session directly:
///
/// ```
/// use poolserver::{End, EventService, Flow, Session};
///
/// #[derive(Debug)]
/// struct Count;
/// struct CountSession;
///
/// impl EventService for Count {
///     fn open(&self, _peer: std::net::SocketAddr) -> Box<dyn Session> {
///         Box::new(CountSession)
///     }
///     fn max_output(&self, _input_len: usize) -> usize {
///         21 // "18446744073709551615\n"
///     }
/// }
///
/// impl Session for CountSession {
///     fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Flow {
///         out.extend_from_slice(format!("{}\n", input.len()).as_bytes());
///         Flow::Continue
///     }
///     fn on_end(&mut self, _end: End, _out: &mut Vec<u8>) {}
/// }
///
/// let mut session = Count.open("127.0.0.1:9".parse().unwrap());
/// let mut out = Vec::new();
/// assert_eq!(session.on_data(b"hello", &mut out), Flow::Continue);
/// assert_eq!(out, b"5\n");
///
/// // The same service behind a server: `.event_service(Count)`.
/// # let server = poolserver::Server::builder()
/// #     .addr("127.0.0.1:0")
/// #     .event_service(Count)
/// #     .monitor_interval(std::time::Duration::ZERO)
/// #     .start()
/// #     .unwrap();
/// # server.shutdown(std::time::Duration::ZERO);
/// ```
pub trait EventService: Send + Sync + std::fmt::Debug + 'static {
    /// A new conversation with the client at `peer`.
    fn open(&self, peer: SocketAddr) -> Box<dyn Session>;

    /// Upper bound of output bytes for `input_len` input bytes (default:
    /// `input_len`).
    fn max_output(&self, input_len: usize) -> usize {
        input_len
    }
}

/// Serves a connection with an [`EventService`], blocking: reads, feeds
/// the session, writes its reply, until the session closes or the stream
/// ends (then the session answers what it still holds).
///
/// This is how the pool runs an event service in connection mode; a
/// blocking [`Service`] can call it to hand a connection on, as in
/// `serve_blocking(&Uppercase, conn, bufs)`.
///
/// # Errors
///
/// Socket errors from the connection's reads and writes.
pub fn serve_blocking(
    service: &dyn EventService,
    conn: &mut Connection<'_>,
    bufs: &mut Buffers,
) -> io::Result<()> {
    let mut session = service.open(conn.peer_addr());
    loop {
        let n = conn.read(&mut bufs.input)?;
        bufs.output.clear();
        if n == 0 {
            // End of stream (or idle, or shutdown): answer what is held.
            session.on_end(conn.end().unwrap_or(End::Eof), &mut bufs.output);
            return conn.write_all(&bufs.output);
        }
        bufs.output.reserve(service.max_output(n));
        let flow = session.on_data(&bufs.input[..n], &mut bufs.output);
        conn.write_all(&bufs.output)?;
        if flow == Flow::Close {
            conn.note_closed_by(session.closed_by());
            return Ok(());
        }
    }
}

/// The service a server runs, in either shape.
#[derive(Debug, Clone)]
pub(crate) enum ServiceKind {
    /// A [`Service`]: connection mode only.
    Blocking(Arc<dyn Service>),
    /// An [`EventService`]: every dispatch mode.
    Event(Arc<dyn EventService>),
}

impl ServiceKind {
    /// Serves one connection in connection mode.
    pub(crate) fn serve(&self, conn: &mut Connection<'_>, bufs: &mut Buffers) -> io::Result<()> {
        match self {
            ServiceKind::Blocking(service) => service.serve(conn, bufs),
            ServiceKind::Event(service) => serve_blocking(&**service, conn, bufs),
        }
    }
}

/// Buffers owned by one worker and lent to each connection it serves.
#[derive(Debug)]
pub struct Buffers {
    /// Where reads land. Its length is the server's read size.
    pub input: Box<[u8]>,
    /// Room for replies; cleared by the service as it likes. Its capacity is
    /// reserved up front for the worst-case uppercase expansion of one read.
    pub output: Vec<u8>,
}

impl Buffers {
    /// Buffers for reads of up to `read_size` bytes (the server uses its
    /// [`read_buffer_size`](crate::ServerBuilder::read_buffer_size)).
    pub fn new(read_size: usize) -> Self {
        Buffers {
            input: vec![0; read_size].into_boxed_slice(),
            output: Vec::with_capacity(MAX_EXPANSION * (read_size + 16)),
        }
    }
}

/// The uppercase loop (README, The protocol): every byte comes back
/// uppercased (Unicode rules; invalid UTF-8 unchanged) as soon as it
/// arrives, until the client closes or sends a line that is exactly `exit`
/// or `quit`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Uppercase;

/// Its session is the pure [`Uppercaser`] of the protocol module.
struct UppercaseSession(Uppercaser);

impl EventService for Uppercase {
    fn open(&self, _peer: SocketAddr) -> Box<dyn Session> {
        Box::new(UppercaseSession(Uppercaser::new()))
    }

    /// What [`Uppercaser::feed`] may append: every input byte and each of
    /// the (at most 8) held-back bytes expanded.
    fn max_output(&self, input_len: usize) -> usize {
        MAX_EXPANSION * (input_len + 8)
    }
}

impl Session for UppercaseSession {
    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Flow {
        match self.0.feed(input, out) {
            Feed::Continue => Flow::Continue,
            Feed::Exit => Flow::Close,
        }
    }

    fn on_end(&mut self, _end: End, out: &mut Vec<u8>) {
        self.0.finish(out);
    }

    fn closed_by(&self) -> Option<&'static str> {
        self.0.closed_by()
    }
}

/// Sends every byte back unchanged: the uppercase loop with the transform
/// switched off, used to measure the server's I/O ceiling.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

/// Echo holds nothing between reads.
struct EchoSession;

impl EventService for Echo {
    fn open(&self, _peer: SocketAddr) -> Box<dyn Session> {
        Box::new(EchoSession)
    }
}

impl Session for EchoSession {
    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Flow {
        out.extend_from_slice(input);
        Flow::Continue
    }

    fn on_end(&mut self, _end: End, _out: &mut Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn uppercase_session_closes_on_quit_and_answers_what_it_held_at_the_end() {
        let mut s = Uppercase.open(peer());
        let mut out = Vec::new();
        assert_eq!(s.on_data(b"stra\xC3", &mut out), Flow::Continue);
        assert_eq!(s.on_data(b"\x9Fe\nqui", &mut out), Flow::Continue);
        assert_eq!(out, "STRASSE\n".as_bytes());
        out.clear();
        s.on_end(End::Eof, &mut out);
        assert_eq!(out, b"QUI");

        let mut s = Uppercase.open(peer());
        out.clear();
        assert_eq!(s.on_data(b"a\nquit\nb", &mut out), Flow::Close);
        assert_eq!(s.closed_by(), Some("quit"));
        assert_eq!(out, b"A\n");
    }

    #[test]
    fn echo_session_returns_input_unchanged() {
        let mut s = Echo.open(peer());
        let mut out = Vec::new();
        assert_eq!(s.on_data(b"quit\n\xFF", &mut out), Flow::Continue);
        assert_eq!(out, b"quit\n\xFF");
        assert_eq!(Echo.max_output(7), 7);
    }
}
