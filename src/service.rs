//! What a worker does with a connection: the [`Service`] trait, and the
//! uppercase loop ([`Uppercase`]) that is the server's default service.
//!
//! A service borrows the worker's [`Buffers`], allocated once per worker
//! thread, so serving a connection allocates nothing per read.

use std::io;

use crate::connection::Connection;
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
    pub(crate) fn new(read_size: usize) -> Self {
        Buffers {
            input: vec![0; read_size].into_boxed_slice(),
            output: Vec::with_capacity(MAX_EXPANSION * (read_size + 16)),
        }
    }
}

/// The uppercase loop of contract §2: every byte comes back uppercased
/// (Unicode rules; invalid UTF-8 unchanged) as soon as it arrives, until the
/// client closes or sends a line that is exactly `exit` or `quit`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Uppercase;

impl Service for Uppercase {
    fn serve(&self, conn: &mut Connection<'_>, bufs: &mut Buffers) -> io::Result<()> {
        let mut upper = Uppercaser::new();
        loop {
            let n = conn.read(&mut bufs.input)?;
            bufs.output.clear();
            if n == 0 {
                // End of stream (or idle, or shutdown): answer what is held.
                upper.finish(&mut bufs.output);
                return conn.write_all(&bufs.output);
            }
            let verdict = upper.feed(&bufs.input[..n], &mut bufs.output);
            conn.write_all(&bufs.output)?;
            if verdict == Feed::Exit {
                return Ok(());
            }
        }
    }
}

/// Sends every byte back unchanged: the uppercase loop with the transform
/// switched off, used to measure the server's I/O ceiling.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Service for Echo {
    fn serve(&self, conn: &mut Connection<'_>, bufs: &mut Buffers) -> io::Result<()> {
        loop {
            let n = conn.read(&mut bufs.input)?;
            if n == 0 {
                return Ok(());
            }
            conn.write_all(&bufs.input[..n])?;
        }
    }
}
