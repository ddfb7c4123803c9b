//! [`Server`], the running server: how it starts (bind, spawn, wait until
//! every thread runs) and how it stops (the procedure of contract §4).
//!
//! ```text
//!   listener ──▶ acceptor ──▶ [ accept queue: bounded, --backlog ] ──▶ worker 0..N
//!                    │                                                   │
//!                    └──────────────── Counters ◀────────────────────────┘
//!                                          │
//!                                       monitor
//! ```

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{debug, info, warn};
use mio::Waker;
use socket2::{Domain, Protocol, Socket, Type};

use crate::acceptor::Acceptor;
use crate::closer::Closer;
use crate::config::ServerBuilder;
use crate::connection::{Limits, MinRate};
use crate::error::Error;
use crate::monitor::Monitor;
use crate::pool::{PoolContext, Worker};
use crate::queue::{self, QueueLen};
use crate::shutdown::Shutdown;
use crate::stats::{Counters, Stats};

/// A running server.
///
/// Started by [`ServerBuilder::start`]. Stop it with
/// [`shutdown`](Server::shutdown), which waits for it; dropping a `Server`
/// only *begins* a shutdown (with the builder's shutdown timeout as the
/// grace period) and returns at once, leaving its threads to finish on
/// their own.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::TcpStream;
/// use std::time::Duration;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = poolserver::Server::builder()
///     .addr("127.0.0.1:0")
///     .workers(2)
///     .monitor_interval(Duration::ZERO)
///     .start()?;
///
/// let mut client = TcpStream::connect(server.local_addr())?;
/// client.write_all("straße\nquit\n".as_bytes())?;
/// let mut reply = String::new();
/// client.read_to_string(&mut reply)?;
/// assert_eq!(reply, "STRASSE\n");
///
/// let stats = server.shutdown(Duration::from_secs(1));
/// assert_eq!((stats.accepted, stats.closed, stats.live), (1, 1, 0));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    counters: Arc<Counters>,
    shutdown: Arc<Shutdown>,
    queue: QueueLen,
    /// Rung at shutdown to wake the acceptor, which then empties the
    /// kernel's queue and closes the listener.
    acceptor_waker: Option<Waker>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<Worker>,
    /// Exits once every worker and the acceptor are gone and the last
    /// lingering close is done.
    closer: Option<JoinHandle<()>>,
    monitor: Option<JoinHandle<()>>,
    default_grace: Duration,
}

impl Server {
    /// A builder with every setting at its default.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the server listens on, with the real port when it was
    /// asked for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the server's counters; see [`Stats`] for what holds.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot(self.queue.get())
    }

    /// Stops the server and waits until it has stopped (contract §4):
    ///
    /// 1. The listener closes at once; new connections are refused.
    ///    Connections that had finished their handshake but were still in
    ///    the kernel's queue join the accept queue while it has room and are
    ///    told `BUSY` otherwise — never reset.
    /// 2. For up to `grace`, live connections go on and workers keep
    ///    taking connections from the accept queue. If everything finishes
    ///    sooner, so does this call.
    /// 3. At the deadline, a connection being served has its held-back
    ///    bytes answered (as at end of stream) and a lingering close; one
    ///    still in the queue is told `BUSY` and closed unserved.
    /// 4. Every thread is joined, the monitor writes its final report, and
    ///    the final stats are returned.
    ///
    /// The call takes at most about `grace` plus the 2-second lingering
    /// close.
    pub fn shutdown(mut self, grace: Duration) -> Stats {
        self.begin_shutdown(grace);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for worker in self.workers.drain(..) {
            worker.join();
        }
        if let Some(closer) = self.closer.take() {
            let _ = closer.join();
        }
        if let Some(monitor) = self.monitor.take() {
            let _ = monitor.join();
        }
        let stats = self.stats();
        debug!("server stopped: {stats:?}");
        stats
    }

    fn begin_shutdown(&self, grace: Duration) {
        if !self.shutdown.begin(grace) {
            return;
        }
        info!(
            "shutting down: no new connections; live ones have {} to finish",
            humantime::format_duration(grace)
        );
        // Not `shutdown(2)` on the listener, the usual way to wake an
        // acceptor: on Linux it resets every connection still in the
        // kernel's queue. The acceptor empties that queue itself.
        if let Some(waker) = &self.acceptor_waker {
            if let Err(e) = waker.wake() {
                warn!(
                    "could not wake the acceptor: {e}; it will stop when the next client connects"
                );
            }
        }
    }
}

impl Drop for Server {
    /// Begins a shutdown with the builder's shutdown timeout and returns at
    /// once; it never waits for connections (use [`Server::shutdown`]).
    fn drop(&mut self) {
        self.begin_shutdown(self.default_grace);
    }
}

impl ServerBuilder {
    /// Binds the listener, starts the acceptor, the workers and the
    /// monitor, and returns once all of them are running.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid setting, [`Error::Bind`] when the
    /// address cannot be resolved or bound (in use, not local, no
    /// permission), [`Error::Spawn`] when a thread cannot be started.
    /// Nothing is left running after an error.
    pub fn start(self) -> Result<Server, Error> {
        self.validate().map_err(Error::Config)?;
        let listen_backlog = self.listen_backlog.unwrap_or(self.backlog);
        let listener = match self.listener {
            Some(ref l) => l.try_clone().map_err(|source| Error::Bind {
                addr: "the given listener".into(),
                source,
            })?,
            None => bind(&self.addr, listen_backlog)?,
        };
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: self.addr.clone(),
            source,
        })?;

        let counters = Arc::new(Counters::new(self.workers, self.backlog));
        let shutdown = Arc::new(Shutdown::new());
        let (queue_tx, queue_rx) = queue::bounded(self.backlog);
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        // The acceptor, every worker and the closer hold a clone of `done_tx`; the
        // monitor's receive fails once all of them have exited.
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);

        // From here on a failure must stop what already started: a server
        // value owns the threads, so dropping it (on error) begins shutdown.
        let mut server = Server {
            local_addr,
            counters: Arc::clone(&counters),
            shutdown: Arc::clone(&shutdown),
            queue: QueueLen::of(&queue_rx),
            acceptor_waker: None,
            acceptor: None,
            workers: Vec::with_capacity(self.workers),
            closer: None,
            monitor: None,
            default_grace: self.shutdown_timeout,
        };

        let (closer, closer_thread) = Closer::spawn(done_tx.clone()).map_err(Error::Spawn)?;
        server.closer = Some(closer_thread);

        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let ctx = Arc::new(PoolContext {
            counters: Arc::clone(&counters),
            shutdown: Arc::clone(&shutdown),
            service: self.service,
            limits: Limits {
                idle_timeout: nonzero(self.idle_timeout),
                write_timeout: nonzero(self.write_timeout),
                min_rate: self
                    .min_rate
                    .map(|(bytes, window)| MinRate { bytes, window }),
            },
            queue_timeout: nonzero(self.queue_timeout),
            read_buffer_size: self.read_buffer_size,
            closer: closer.clone(),
        });
        let mut started = 0;
        for id in 0..self.workers {
            let worker = Worker::spawn(
                id,
                Arc::clone(&ctx),
                queue_rx.clone(),
                self.worker_stack_size,
                ready_tx.clone(),
                done_tx.clone(),
            )
            .map_err(Error::Spawn)?;
            server.workers.push(worker);
            started += 1;
        }

        if !self.monitor_interval.is_zero() {
            let monitor = Monitor {
                interval: self.monitor_interval,
                format: self.monitor_format,
                output: self.monitor_output,
                counters: Arc::clone(&counters),
                queue: QueueLen::of(&queue_rx),
                done: done_rx,
            };
            server.monitor = Some(monitor.spawn(ready_tx.clone()).map_err(Error::Spawn)?);
            started += 1;
        }

        let (acceptor, acceptor_waker) = Acceptor::new(
            listener,
            queue_tx,
            self.overflow,
            counters,
            shutdown,
            closer,
        )
        .map_err(Error::Spawn)?;
        server.acceptor_waker = Some(acceptor_waker);
        let acceptor_ready = ready_tx.clone();
        let acceptor_done = done_tx;
        server.acceptor = Some(
            thread::Builder::new()
                .name("poolserver-acceptor".into())
                .spawn(move || {
                    let _done = acceptor_done;
                    let _ = acceptor_ready.send(());
                    drop(acceptor_ready);
                    acceptor.run();
                })
                .map_err(Error::Spawn)?,
        );
        started += 1;
        drop(ready_tx);
        for _ in 0..started {
            if ready_rx.recv().is_err() {
                break;
            }
        }

        // Its own target, so a binary can show this line even when it logs
        // only warnings: it is how a user learns the real port.
        info!(
            target: STARTUP_TARGET,
            "listening on {local_addr} with {} workers, accept queue capacity {} \
             (listen backlog {listen_backlog}, overflow {})",
            self.workers, self.backlog, self.overflow
        );
        Ok(server)
    }
}

/// The log target of the one line that says where the server listens.
pub const STARTUP_TARGET: &str = "poolserver::startup";

/// Binds and listens with an explicit kernel backlog, which std's
/// `TcpListener::bind` does not allow.
fn bind(addr: &str, listen_backlog: usize) -> Result<TcpListener, Error> {
    let bind_err = |source| Error::Bind {
        addr: addr.to_string(),
        source,
    };
    let mut last_err = None;
    let addrs = addr.to_socket_addrs().map_err(bind_err)?;
    for sa in addrs {
        match listen_on(sa, listen_backlog) {
            Ok(l) => {
                warn_if_capped(listen_backlog);
                return Ok(l);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(bind_err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    })))
}

fn listen_on(addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets a restarted server bind while old connections sit in TIME_WAIT;
    // it does not let two servers listen on one port.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Linux silently caps the listen backlog at `net.core.somaxconn`.
fn warn_if_capped(requested: usize) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") else {
        return;
    };
    if let Ok(max) = text.trim().parse::<usize>() {
        if requested > max {
            warn!(
                "the kernel caps the listen backlog at net.core.somaxconn = {max}, below the \
                 {requested} asked for; raise it with `sysctl -w net.core.somaxconn={requested}`"
            );
        }
    }
}
