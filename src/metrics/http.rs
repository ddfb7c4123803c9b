//! The `/metrics` endpoint: one small thread answering one HTTP request at
//! a time, with hard limits, so that nothing on the metrics port can cost
//! the pool anything.
//!
//! Why not an HTTP crate: the usual small servers start a thread per extra
//! connection with no limit, and the async ones bring a runtime; a scrape is
//! one short `GET`, which a bounded loop answers in a few lines.
//!
//! The limits: a request head of at most [`MAX_HEAD`] bytes, and
//! [`REQUEST_TIMEOUT`] for the whole exchange (reading the head, writing
//! the answer, the short lingering close). A silent or slow client
//! therefore delays the next scrape by at most that timeout, and it never
//! reaches a worker, the accept queue or the pool's counters. Every answer
//! carries `Connection: close`.
//!
//! Answers: `GET`/`HEAD /metrics` → 200 with the exposition; another path →
//! 404; another method on `/metrics` → 405 with `Allow`; a head that is not
//! HTTP/1.x → 400; a head over the cap → 431; no whole head in time → 408.
//!
//! Stopping: the thread waits in `poll(2)` (mio) on the listener and on a
//! [`Waker`] that [`Endpoint::stop`] rings. When the server is only dropped
//! (no explicit shutdown), it notices within [`CHECK_EVERY`] that the
//! pool's threads are gone and exits on its own.

use std::io::{self, Read, Write};
use std::net::{Shutdown as Direction, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::{Exporter, CONTENT_TYPE};
use crate::error::Error;

/// The largest request head read; a longer one is answered 431.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// The whole exchange with one client, from accept to close.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// After the answer, unread request bytes are drained for at most this
/// long (and at most [`MAX_DRAIN`] bytes), so that closing with unread
/// input does not reset the connection before the client read the answer.
const LINGER: Duration = Duration::from_millis(100);
const MAX_DRAIN: usize = 64 * 1024;
/// How often the thread looks whether the pool is gone when nobody wakes it.
const CHECK_EVERY: Duration = Duration::from_millis(250);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// The running endpoint, owned by the server.
#[derive(Debug)]
pub(crate) struct Endpoint {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Binds `addr`; the endpoint serves once the server runs the returned
    /// [`Serve`] on a thread of its own and hands that thread to
    /// [`running`](Self::running). `pool_done` disconnects when the pool's
    /// threads have all exited.
    pub(crate) fn bind(
        addr: &str,
        exporter: Arc<Exporter>,
        pool_done: Receiver<()>,
    ) -> Result<(Endpoint, Serve), Error> {
        let bind_err = |source| Error::Bind {
            addr: format!("{addr} (--metrics-addr)"),
            source,
        };
        let listener = addr
            .to_socket_addrs()
            .and_then(|mut addrs| {
                addrs.next().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the address resolved to nothing",
                    )
                })
            })
            .and_then(TcpListener::bind)
            .map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let poll = Poll::new().map_err(Error::Spawn)?;
        listener.set_nonblocking(true).map_err(Error::Spawn)?;
        poll.registry()
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )
            .map_err(Error::Spawn)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(Error::Spawn)?);
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Serve {
            listener,
            poll,
            exporter,
            stop: Arc::clone(&stop),
            pool_done,
            failing: false,
        };
        let endpoint = Endpoint {
            local_addr,
            stop,
            waker,
            thread: None,
        };
        Ok((endpoint, serve))
    }

    /// The endpoint with the thread that runs its [`Serve`].
    pub(crate) fn running(mut self, thread: JoinHandle<()>) -> Self {
        self.thread = Some(thread);
        self
    }

    /// The address it listens on (with the real port when given port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the thread and waits for it: at most one request's timeout.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            warn!("could not wake the metrics endpoint: {e}; it stops within {CHECK_EVERY:?}");
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The endpoint's loop, run on its own thread.
pub(crate) struct Serve {
    listener: TcpListener,
    poll: Poll,
    exporter: Arc<Exporter>,
    stop: Arc<AtomicBool>,
    pool_done: Receiver<()>,
    /// True while accept(2) keeps failing, so the failure is logged once.
    failing: bool,
}

impl Serve {
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(4);
        while !self.should_stop() {
            if let Err(e) = self.poll.poll(&mut events, Some(CHECK_EVERY)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("the metrics endpoint cannot wait for connections: {e}; it stops");
                    return;
                }
            }
            // Edge-triggered readiness: take every waiting connection, and
            // try again after a timeout too, in case an error cut a round
            // short.
            while !self.should_stop() {
                match self.listener.accept() {
                    Ok((stream, peer)) => {
                        self.failing = false;
                        let exporter = &self.exporter;
                        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            serve_one(stream, peer, exporter)
                        }));
                        if served.is_err() {
                            warn!("the metrics endpoint panicked answering {peer}; it goes on");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => {
                        if !std::mem::replace(&mut self.failing, true) {
                            warn!("the metrics endpoint cannot accept: {e}; retrying");
                        }
                        break;
                    }
                }
            }
        }
    }

    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Acquire)
            || matches!(self.pool_done.try_recv(), Err(TryRecvError::Disconnected))
    }
}

/// What a request asked for, once its head is read.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics {
        head_only: bool,
    },
    NotFound,
    MethodNotAllowed,
    Malformed,
    TooLarge,
    TimedOut,
    /// The client closed or reset before sending a whole head.
    Gone,
}

/// Serves one connection, within [`REQUEST_TIMEOUT`].
fn serve_one(mut stream: TcpStream, peer: SocketAddr, exporter: &Arc<Exporter>) {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    // Accepted sockets do not inherit the listener's non-blocking mode on
    // Linux, but say so rather than rely on it.
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    let request = read_request(&mut stream, deadline);
    if request != (Request::Metrics { head_only: false }) {
        debug!("metrics endpoint: {peer} sent {request:?}");
    }
    let (status, extra, body) = match request {
        Request::Metrics { head_only } => {
            let body = exporter.render();
            let remaining = deadline.saturating_duration_since(Instant::now());
            let _ = stream.set_write_timeout(Some(remaining.max(LINGER)));
            let head = head("200 OK", CONTENT_TYPE, "", body.len());
            let result = stream.write_all(head.as_bytes()).and_then(|()| {
                if head_only {
                    Ok(())
                } else {
                    stream.write_all(body.as_bytes())
                }
            });
            if let Err(e) = result {
                debug!("metrics endpoint: cannot answer {peer}: {e}");
                return;
            }
            close(stream, deadline);
            return;
        }
        Request::NotFound => (
            "404 Not Found",
            "",
            "not found; the metrics are at /metrics\n",
        ),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "method not allowed; use GET or HEAD\n",
        ),
        Request::Malformed => ("400 Bad Request", "", "bad request\n"),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            "request head over 8 KiB\n",
        ),
        Request::TimedOut => ("408 Request Timeout", "", "no whole request in time\n"),
        Request::Gone => return,
    };
    let _ = stream.set_write_timeout(Some(LINGER));
    let answer = head(status, "text/plain; charset=utf-8", extra, body.len()) + body;
    if stream.write_all(answer.as_bytes()).is_ok() {
        close(stream, deadline);
    }
}

fn head(status: &str, content_type: &str, extra: &str, len: usize) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Connection: close\r\n{extra}\r\n"
    )
}

/// Reads the request head (up to its blank line) and classifies it.
fn read_request(stream: &mut TcpStream, deadline: Instant) -> Request {
    let mut buf = [0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        if let Some(end) = head_end(&buf[..len]) {
            return classify(&buf[..end]);
        }
        if len == buf.len() {
            return Request::TooLarge;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return Request::TimedOut;
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Request::Gone,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Request::TimedOut
            }
            Err(_) => return Request::Gone,
        }
    }
}

/// Where the head ends (the index just past its blank line), if it has.
/// Bare `\n` line ends are tolerated, as HTTP/1.1 allows.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let nl = from + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => from = nl + 1,
        }
    }
    None
}

/// The request line decides: `METHOD TARGET HTTP/1.x`.
fn classify(head: &[u8]) -> Request {
    let line_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Request::Malformed;
    };
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Request::Malformed;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Request::NotFound;
    }
    match method {
        "GET" => Request::Metrics { head_only: false },
        "HEAD" => Request::Metrics { head_only: true },
        _ => Request::MethodNotAllowed,
    }
}

/// Ends the exchange without resetting it: send FIN, then drain what the
/// client still sends, briefly, so that unread input does not turn the
/// close into a reset that could destroy the answer in flight.
fn close(mut stream: TcpStream, deadline: Instant) {
    let _ = stream.shutdown(Direction::Write);
    let until = deadline.min(Instant::now() + LINGER);
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_DRAIN {
        let remaining = until.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_classified() {
        let cases: [(&[u8], Request); 10] = [
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Request::Metrics { head_only: false },
            ),
            (
                b"HEAD /metrics HTTP/1.0\n\n",
                Request::Metrics { head_only: true },
            ),
            (
                b"GET /metrics?x=1 HTTP/1.1\r\n\r\n",
                Request::Metrics { head_only: false },
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Request::MethodNotAllowed),
            (b"GET /metrics HTTP/2\r\n\r\n", Request::Malformed),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Request::Malformed),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", Request::Malformed),
            (b"hello\r\n\r\n", Request::Malformed),
        ];
        for (head, want) in cases {
            let end = head_end(head).expect("a whole head");
            assert_eq!(end, head.len(), "{head:?}");
            assert_eq!(classify(&head[..end]), want, "{head:?}");
        }
    }

    #[test]
    fn head_end_needs_a_blank_line() {
        assert_eq!(head_end(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"\r\n\r\n"), Some(4));
        assert_eq!(head_end(b"a\nb\n\nbody"), Some(5));
    }
}
