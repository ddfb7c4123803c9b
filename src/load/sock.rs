//! Socket helpers of the blocking drivers: reads and writes that wake up
//! every [`SLICE`](super::SLICE) to look at the clock (so every wait is bounded), and the
//! [`Sender`] that writes messages without ever blocking on a full socket
//! buffer.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use super::pattern::Pattern;
pub(super) use crate::connection::is_timeout;

/// Size of the read buffer of every connection.
pub(super) const READ_BUF: usize = 64 * 1024;

pub(super) enum Got {
    /// This many bytes arrived.
    Data(usize),
    /// The peer closed its side.
    Eof,
    /// No data: one [`SLICE`](super::SLICE) passed ([`read_once`]), or the caller's
    /// `give_up` said stop ([`read_some`]).
    Idle,
}

/// One read that waits at most one [`SLICE`](super::SLICE) (then `Got::Idle`).
pub(super) fn read_once(mut stream: &TcpStream, buf: &mut [u8]) -> io::Result<Got> {
    loop {
        match stream.read(buf) {
            Ok(0) => return Ok(Got::Eof),
            Ok(n) => return Ok(Got::Data(n)),
            Err(e) if is_timeout(&e) => return Ok(Got::Idle),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads, waking every [`SLICE`](super::SLICE) to ask `give_up`; `Got::Idle` means it
/// said give up.
pub(super) fn read_some(
    stream: &TcpStream,
    buf: &mut [u8],
    give_up: impl Fn(Instant) -> bool,
) -> io::Result<Got> {
    loop {
        match read_once(stream, buf)? {
            Got::Idle if !give_up(Instant::now()) => {}
            got => return Ok(got),
        }
    }
}

/// Writes all of `buf` unless `give_up` says stop first (then `Ok(false)`).
/// `std`'s `write_all` cannot be used: after a timeout it would not say how
/// much was already sent.
pub(super) fn write_all(
    mut stream: &TcpStream,
    mut buf: &[u8],
    give_up: impl Fn(Instant) -> bool,
) -> io::Result<bool> {
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if is_timeout(&e) => {
                if give_up(Instant::now()) {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The sending side of a pingpong or connect conversation.
///
/// Messages are written without blocking and the caller reads replies
/// whenever the socket will not take more. Blocking writes would deadlock
/// once the bytes in flight (`pipeline × size`) outgrow the socket buffers:
/// the server stops reading while it waits to write replies that this
/// side, stuck in its write, never reads.
pub(super) struct Sender<'a> {
    stream: &'a TcpStream,
    pattern: &'a Pattern,
    variant: usize,
    /// Bytes of the current message already written; `None` between
    /// messages.
    offset: Option<usize>,
}

/// What [`Sender::push`] achieved.
pub(super) enum Pushed {
    /// The current message is fully written.
    Done,
    /// The socket takes no more for now: read replies, then push again.
    Full,
}

impl<'a> Sender<'a> {
    pub(super) fn new(stream: &'a TcpStream, pattern: &'a Pattern, first_variant: usize) -> Self {
        Sender {
            stream,
            pattern,
            variant: first_variant,
            offset: None,
        }
    }

    /// A message is partly written.
    pub(super) fn pending(&self) -> bool {
        self.offset.is_some()
    }

    /// Starts the next message; [`push`](Self::push) writes it.
    pub(super) fn start(&mut self) {
        debug_assert!(self.offset.is_none());
        self.offset = Some(0);
    }

    /// Writes as much of the current message as the socket takes at once.
    pub(super) fn push(&mut self) -> io::Result<Pushed> {
        let Some(mut off) = self.offset else {
            return Ok(Pushed::Done);
        };
        let msg = self.pattern.message(self.variant);
        while off < msg.len() {
            match send_now(self.stream, &msg[off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if is_timeout(&e) => {
                    self.offset = Some(off);
                    return Ok(Pushed::Full);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.offset = None;
        self.variant = (self.variant + 1) % self.pattern.variants;
        Ok(Pushed::Done)
    }
}

/// One `send(2)` that does not wait for room in the socket buffer
/// (`WouldBlock` instead), on a socket that otherwise blocks.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_now(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    // MSG_NOSIGNAL as std does: a reset peer is an error, not a SIGPIPE.
    socket2::SockRef::from(stream).send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Elsewhere: a write that waits at most one [`SLICE`](super::SLICE), which is as safe,
/// only slower when the socket buffer is full.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_now(mut stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    stream.write(buf)
}

/// The open files a run needs: one socket per connection, main or idle,
/// and some room for the process's own (standard streams, the poller).
pub(super) fn files_needed(connections: usize, idle: usize) -> u64 {
    (connections + idle) as u64 + 64
}
