//! The closer thread: finishes lingering closes so workers do not have to.
//!
//! A lingering close (README, The protocol, rule 6) sends our FIN and then reads and
//! discards what the client still sends until it closes or 2 seconds pass,
//! so the client is never reset while replies are in flight. Done by the
//! worker, it would keep the worker from the next connection for up to 2
//! seconds per connection — with clients that are slow to close (an idle
//! timeout, `nc` after `exit`), a pool can spend most of its time waiting.
//!
//! So a worker sends its FIN and hands the socket, with the connection's
//! [`LiveGuard`], to this one thread, which watches every lingering socket
//! with `epoll` (through mio) and closes each when its client closes or its
//! 2 seconds are up. The connection stays `live` until then; its worker is
//! free at once. `BUSY` rejections are lingered the same way, so a client
//! that had already sent data still reads its `BUSY` line instead of a
//! reset.
//!
//! The thread holds at most [`MAX_LINGERING`] sockets; past that (a flood),
//! a socket is drained of what has already arrived and closed at once —
//! the same bounded drain as [`turn_away`], the close used when no
//! lingering is possible at all (the fd table is full).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use log::{debug, warn};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::stats::LiveGuard;

/// How long a closing connection keeps reading (and discarding) what the
/// client still sends, so that the client is not reset while our last
/// replies are in flight (README, The protocol, rule 6).
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// Most sockets lingering at once; each holds a file descriptor.
pub(crate) const MAX_LINGERING: usize = 4096;

const WAKER: Token = Token(usize::MAX);

/// A connection whose FIN is sent, waiting for its client to close.
struct Lingering {
    stream: TcpStream,
    live: LiveGuard,
}

/// The workers' and the acceptor's handle on the closer thread.
///
/// Cloned into every thread that closes connections. Dropping the last
/// clone (after the acceptor and every worker have exited) tells the closer
/// thread to finish what is lingering and exit.
#[derive(Debug, Clone)]
pub(crate) struct Closer {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    /// Always `Some` until `drop`, which must drop it before waking the
    /// thread: a wake-up that finds the channel still connected would leave
    /// the thread waiting forever.
    tx: Option<Sender<Lingering>>,
    /// Shared with the thread, which keeps it open: closing the eventfd
    /// right after the final wake-up would make epoll drop that wake-up.
    waker: Arc<Waker>,
    /// Sockets handed over and not yet closed (shared with the thread).
    count: Arc<AtomicUsize>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Disconnect the channel, then make the thread notice.
        drop(self.tx.take());
        let _ = self.waker.wake();
    }
}

impl std::fmt::Debug for Lingering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lingering")
            .field("stream", &self.stream)
            .finish()
    }
}

impl Closer {
    /// The handle, and the loop to run on the closer thread. The thread
    /// should hold the server's `done` until the loop returns, so the
    /// monitor's final report waits for the last lingering close.
    pub(crate) fn new() -> io::Result<(Closer, CloserLoop)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let count = Arc::new(AtomicUsize::new(0));
        let closer_loop = CloserLoop {
            poll,
            rx,
            count: Arc::clone(&count),
            _waker: Arc::clone(&waker),
        };
        let closer = Closer {
            inner: Arc::new(Handle {
                tx: Some(tx),
                waker,
                count,
            }),
        };
        Ok((closer, closer_loop))
    }

    /// Closes a connection without destroying replies in flight: our FIN
    /// now, the close when the client has closed too (or in 2 seconds).
    /// Returns at once.
    pub(crate) fn close(&self, stream: TcpStream, mut live: LiveGuard) {
        live.enter_closer();
        if stream.shutdown(Shutdown::Write).is_err() {
            return; // reset or gone already: nothing in flight to protect
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let item = Lingering { stream, live };
        if self.inner.count.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
            self.inner.count.fetch_sub(1, Ordering::Relaxed);
            drain_now(&item.stream);
            return;
        }
        let Some(tx) = &self.inner.tx else {
            drain_now(&item.stream);
            return;
        };
        match tx.send(item) {
            Ok(()) => {
                let _ = self.inner.waker.wake();
            }
            Err(e) => {
                self.inner.count.fetch_sub(1, Ordering::Relaxed);
                drain_now(&e.into_inner().stream);
            }
        }
    }
}

/// Writes one `BUSY …` line without blocking (a fresh socket's send buffer
/// is empty, so one short line fits). The caller then closes the
/// connection, normally through [`Closer::close`].
pub(crate) fn write_busy(stream: &TcpStream, line: &[u8]) {
    if stream.set_nonblocking(true).is_ok() {
        let _ = (&*stream).write(line);
    }
}

/// Turns a connection away at once, for when it cannot be lingered over
/// (the fd table is full): the `BUSY` line, our FIN, and what the client
/// already sent is drained without waiting, so the close is usually a FIN
/// rather than a reset.
pub(crate) fn turn_away(stream: &TcpStream, line: &[u8]) {
    write_busy(stream, line);
    let _ = stream.shutdown(Shutdown::Write);
    drain_now(stream);
}

/// The close without lingering: discard what has already arrived (at most
/// 64 KiB; the socket is non-blocking), and let the caller drop the socket.
fn drain_now(stream: &TcpStream) {
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        match (&*stream).read(&mut scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// The closer thread's work: everything it needs, moved onto the thread.
pub(crate) struct CloserLoop {
    poll: Poll,
    rx: Receiver<Lingering>,
    /// Sockets handed over and not yet closed (shared with the handles).
    count: Arc<AtomicUsize>,
    /// Kept open until the loop returns: closing the eventfd right after
    /// the final wake-up would make epoll drop that wake-up.
    _waker: Arc<Waker>,
}

impl CloserLoop {
    /// Lingers over what the handles send until every handle is dropped
    /// and nothing lingers any more.
    pub(crate) fn run(self) {
        let CloserLoop {
            poll,
            rx,
            count,
            _waker: waker,
        } = self;
        run(poll, rx, &count);
        drop(waker);
    }
}

fn run(mut poll: Poll, rx: Receiver<Lingering>, count: &AtomicUsize) {
    let mut events = Events::with_capacity(256);
    let mut lingering: HashMap<Token, (mio::net::TcpStream, LiveGuard)> = HashMap::new();
    // Every socket lingers for the same time, so arrival order is deadline
    // order; entries closed early are skipped when they come up.
    let mut deadlines: VecDeque<(Instant, Token)> = VecDeque::new();
    let mut next_token = 0usize;
    let mut scratch = vec![0u8; 16 * 1024];
    let mut open = true;
    loop {
        let timeout = deadlines
            .front()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                warn!("closer: poll failed: {e}; closing what lingers");
                return; // dropping `lingering` closes everything
            }
        }
        for event in events.iter() {
            let token = event.token();
            if token == WAKER {
                continue;
            }
            let done = match lingering.get_mut(&token) {
                Some((stream, _)) => drain(stream, &mut scratch),
                None => false,
            };
            if done {
                close(&mut poll, &mut lingering, token, count);
            }
        }
        // New sockets (and disconnection) arrive through the channel.
        loop {
            match rx.try_recv() {
                Ok(item) => {
                    let token = Token(next_token);
                    next_token = next_token.wrapping_add(1) % (usize::MAX - 1);
                    let mut stream = mio::net::TcpStream::from_std(item.stream);
                    if poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE)
                        .is_ok()
                    {
                        // Bytes that arrived before registration raise no
                        // edge; read them now.
                        if drain(&mut stream, &mut scratch) {
                            let _ = poll.registry().deregister(&mut stream);
                            drop((stream, item.live));
                            count.fetch_sub(1, Ordering::Relaxed);
                            continue;
                        }
                        lingering.insert(token, (stream, item.live));
                        deadlines.push_back((Instant::now() + LINGER, token));
                    } else {
                        count.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let now = Instant::now();
        while let Some(&(at, token)) = deadlines.front() {
            if at > now {
                break;
            }
            deadlines.pop_front();
            close(&mut poll, &mut lingering, token, count);
        }
        if !open && lingering.is_empty() {
            debug!("closer: nothing lingers and no more will come; exiting");
            return;
        }
    }
}

/// Reads and discards what is there. True when the client has closed (or
/// the socket failed): the linger is over.
fn drain(stream: &mut mio::net::TcpStream, scratch: &mut [u8]) -> bool {
    loop {
        match stream.read(scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn close(
    poll: &mut Poll,
    lingering: &mut HashMap<Token, (mio::net::TcpStream, LiveGuard)>,
    token: Token,
    count: &AtomicUsize,
) {
    if let Some((mut stream, live)) = lingering.remove(&token) {
        let _ = poll.registry().deregister(&mut stream);
        drop(stream);
        drop(live); // counted as closed (or rejected) only now
        count.fetch_sub(1, Ordering::Relaxed);
    }
}
