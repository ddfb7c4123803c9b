//! The library side of `poolclient` (README, "The client"): connect to a
//! server and run one conversation between a byte source (standard input) and a byte
//! sink (standard output).
//!
//! Two directions run at once, because the uppercase loop answers as bytes
//! arrive and neither side may wait for the other: a spawned thread copies
//! input → socket and half-closes the socket at end of input; the calling
//! thread copies socket → output until the server closes. The input thread
//! is never joined: when the server closes first it may be blocked reading a
//! terminal that will never say anything again, and the process exits
//! around it.
//!
//! The binary (`src/bin/poolclient.rs`) only parses flags and maps
//! [`Ending`] and [`ClientError`] to messages and exit codes, so the
//! behaviour here is testable without a process.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How long `poolclient` waits for a connect by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes moved per read in each direction. Large enough for piped bulk
/// input, and a terminal delivers a line at a time anyway.
const CHUNK: usize = 64 * 1024;

/// How a conversation ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The input ended, the socket was half-closed, and the server answered
    /// everything and closed: the normal end of piped use.
    Finished,
    /// The server closed while input could still come (the user typed
    /// `exit`, the server rejected the connection with `BUSY`, or it shut
    /// down). The caller should say so; it is not an error.
    ServerClosed,
    /// The output was closed under us (`poolclient | head -1`): stop
    /// quietly, there is nobody left to tell.
    OutputClosed,
}

/// Why a conversation could not start or did not finish.
#[derive(Debug)]
pub enum ClientError {
    /// The address did not resolve to any socket address.
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// No resolved address accepted the connection (refused, timed out,
    /// unreachable).
    Connect {
        /// The address as given.
        addr: String,
        /// The error of the last address tried.
        source: io::Error,
    },
    /// The connection broke mid-conversation (reset by the server, network
    /// error).
    Broken {
        /// The server's address.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// Writing the server's reply to the output failed (other than a closed
    /// pipe, which is [`Ending::OutputClosed`]).
    Output(io::Error),
    /// Reading the input failed. What was read before went to the server
    /// and its answers were printed.
    Input(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Resolve { addr, source } => unresolved(f, addr, source),
            ClientError::Connect { addr, source } => write!(
                f,
                "cannot connect to {addr} ({source}); is poolserver running? \
                 start it with `poolserver --addr {addr}`, or point --addr at it"
            ),
            ClientError::Broken { addr, source } => write!(
                f,
                "the connection to {addr} broke ({source}); the server may have been \
                 killed or restarted — run poolclient again to reconnect"
            ),
            ClientError::Output(e) => write!(f, "cannot write to standard output ({e})"),
            ClientError::Input(e) => write!(f, "cannot read standard input ({e})"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Resolve { source, .. }
            | ClientError::Connect { source, .. }
            | ClientError::Broken { source, .. } => Some(source),
            ClientError::Output(e) | ClientError::Input(e) => Some(e),
        }
    }
}

/// Connects to `addr` (`HOST:PORT`), trying each address it resolves to
/// with `timeout` per attempt.
///
/// # Errors
///
/// [`ClientError::Resolve`] when `addr` resolves to nothing,
/// [`ClientError::Connect`] when no address accepts.
pub fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let addrs = resolve(addr).map_err(|source| ClientError::Resolve {
        addr: addr.to_string(),
        source,
    })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to try");
    for sa in addrs {
        match TcpStream::connect_timeout(&sa, timeout) {
            Ok(stream) => {
                // Interactive lines are tiny; send each at once.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(ClientError::Connect {
        addr: addr.to_string(),
        source: last,
    })
}

/// Resolves `addr` (`HOST:PORT`) to the socket addresses to try, in the
/// resolver's order. Resolving to nothing is an error too. Shared with the
/// load generator, so both tools accept and refuse the same addresses.
pub(crate) fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the address resolved to nothing",
        ));
    }
    Ok(addrs)
}

/// The message for an address that did not resolve, with how to write one;
/// `poolclient` and `poolload` say the same.
pub(crate) fn unresolved(
    f: &mut fmt::Formatter<'_>,
    addr: &str,
    source: &io::Error,
) -> fmt::Result {
    write!(
        f,
        "cannot resolve `{addr}` ({source}); give --addr as HOST:PORT, e.g. 127.0.0.1:8080"
    )
}

/// Runs one conversation on `stream`: `input` goes to the server from a
/// spawned thread, the server's bytes go to `output` (flushed after every
/// chunk, so interactive use shows each answer at once) on this thread.
///
/// Returns when the server closes the connection or `output` is closed;
/// it does not wait for `input` to end (see [`Ending::ServerClosed`]).
///
/// # Errors
///
/// [`ClientError::Broken`] when the socket fails, [`ClientError::Output`]
/// when writing `output` fails, [`ClientError::Input`] when reading `input`
/// failed (reported once the server has answered what was sent).
pub fn run<R, W>(stream: TcpStream, input: R, output: &mut W) -> Result<Ending, ClientError>
where
    R: Read + Send + 'static,
    W: Write + ?Sized,
{
    let peer = stream.peer_addr().map_err(|source| ClientError::Broken {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let sender = stream
        .try_clone()
        .map_err(|source| ClientError::Broken { addr: peer, source })?;
    let input_done = Arc::new(AtomicBool::new(false));
    let input_error: Arc<Mutex<Option<io::Error>>> = Arc::default();
    {
        let input_done = Arc::clone(&input_done);
        let input_error = Arc::clone(&input_error);
        thread::Builder::new()
            .name("poolclient-input".into())
            .spawn(move || copy_input(input, sender, &input_done, &input_error))
            .map_err(|source| ClientError::Broken { addr: peer, source })?;
    }

    let mut buf = vec![0u8; CHUNK];
    let mut reader = &stream;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ClientError::Broken { addr: peer, source }),
        };
        let written = output.write_all(&buf[..n]).and_then(|()| output.flush());
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Ending::OutputClosed),
            Err(e) => return Err(ClientError::Output(e)),
        }
    }

    // The flag is set before the half-close (see `copy_input`), so an end
    // of stream that answers our FIN always finds it set.
    if !input_done.load(Ordering::SeqCst) {
        return Ok(Ending::ServerClosed);
    }
    let failed = input_error.lock().map(|mut e| e.take()).unwrap_or(None);
    match failed {
        Some(e) => Err(ClientError::Input(e)),
        None => Ok(Ending::Finished),
    }
}

/// Copies `input` to the socket; at its end (or a read error) half-closes
/// the socket so the server answers what it holds and closes.
fn copy_input<R: Read>(
    mut input: R,
    mut sender: TcpStream,
    input_done: &AtomicBool,
    input_error: &Mutex<Option<io::Error>>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A failed write means the server closed or the connection
                // broke; the reading side sees which and reports it.
                if sender.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if let Ok(mut slot) = input_error.lock() {
                    *slot = Some(e);
                }
                break;
            }
        }
    }
    // Set before the FIN leaves: the server can only close in answer to it
    // after this store, so the reader never mistakes our own end of input
    // for the server hanging up first.
    input_done.store(true, Ordering::SeqCst);
    let _ = sender.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::net::TcpListener;

    /// A one-connection server that uppercases ASCII until end of stream,
    /// enough to exercise both directions without the real pool.
    fn tiny_server() -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                s.write_all(&buf[..n].to_ascii_uppercase()).unwrap();
            }
            got
        });
        (addr, handle)
    }

    #[test]
    fn input_end_half_closes_and_everything_is_printed() {
        let (addr, server) = tiny_server();
        let stream = connect(&addr.to_string(), Duration::from_secs(5)).unwrap();
        let mut out = Vec::new();
        let ending = run(stream, Cursor::new(b"abc\ndef".to_vec()), &mut out).unwrap();
        assert_eq!(ending, Ending::Finished);
        assert_eq!(out, b"ABC\nDEF");
        assert_eq!(server.join().unwrap(), b"abc\ndef");
    }

    #[test]
    fn refused_connection_names_the_address_and_the_fix() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = format!("127.0.0.1:{port}");
        let err = connect(&addr, Duration::from_secs(5)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        assert!(
            msg.contains(&addr) && msg.contains("poolserver --addr"),
            "{msg}"
        );
    }

    #[test]
    fn unresolvable_address_is_a_resolve_error() {
        let err = connect("not an address", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::Resolve { .. }), "{err:?}");
    }
}
