//! [`Server`], the running server: how it starts (bind, spawn every thread
//! the same way, wait until each runs) and how it stops (the procedure of
//! README, Shutdown).
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

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, warn};
use mio::Waker;
use socket2::{Domain, Protocol, Socket, Type};

use crate::acceptor::{Acceptor, HandOver};
use crate::admission::{raise_fd_limit, Admission};
use crate::closer::Closer;
use crate::config::{Dispatch, ServerBuilder};
use crate::error::Error;
use crate::event::EventPool;
use crate::metrics::{http::Endpoint, Exporter};
use crate::monitor::Monitor;
use crate::poller::{Poller, Timeouts};
use crate::pool::{PoolContext, Worker};
use crate::proxy::Gate;
use crate::queue::Job;
use crate::queue::{self, Bell, QueueLen};
use crate::service::ServiceKind;
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
    acceptor_waker: Option<Arc<Waker>>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<Worker>,
    /// Event dispatch's timer thread (idle and shutdown deadlines of
    /// parked connections).
    poller: Option<JoinHandle<()>>,
    /// Exits once every worker and the acceptor are gone and the last
    /// lingering close is done.
    closer: Option<JoinHandle<()>>,
    monitor: Option<JoinHandle<()>>,
    /// The `/metrics` endpoint, when asked for; stopped last.
    metrics: Option<Endpoint>,
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

    /// The address of the Prometheus endpoint (with the real port when it
    /// was asked for port 0), or `None` without
    /// [`metrics_addr`](ServerBuilder::metrics_addr).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(Endpoint::local_addr)
    }

    /// A snapshot of the server's counters; see [`Stats`] for what holds.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot(self.queue.get())
    }

    /// Stops the server and waits until it has stopped (README, Shutdown):
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
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        if let Some(closer) = self.closer.take() {
            let _ = closer.join();
        }
        if let Some(monitor) = self.monitor.take() {
            let _ = monitor.join();
        }
        // Last, so the drain stays visible to scrapes until the pool is done.
        if let Some(mut metrics) = self.metrics.take() {
            metrics.stop();
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

// The builder's last step lives here, beside what it starts, so that
// `config.rs` (the settings) depends on nothing that runs them.
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
        Server::start(self)
    }
}

impl Drop for Server {
    /// Begins a shutdown with the builder's shutdown timeout and returns at
    /// once; it never waits for connections (use [`Server::shutdown`]).
    fn drop(&mut self) {
        self.begin_shutdown(self.default_grace);
    }
}

impl Server {
    /// Starts a server with validated settings: binds, spawns the closer,
    /// the workers, the monitor and the acceptor (in that order, so that
    /// nothing is accepted before there is someone to serve it), and waits
    /// until every thread runs. Called by [`ServerBuilder::start`].
    pub(crate) fn start(b: ServerBuilder) -> Result<Server, Error> {
        let listen_backlog = b.listen_backlog.unwrap_or(b.backlog);
        let hand_over = HandOver::of(&b);
        let listening = if b.inherited {
            "listener from systemd".to_string()
        } else if b.reuse_port {
            format!("listen backlog {listen_backlog}, reuse-port")
        } else {
            format!("listen backlog {listen_backlog}")
        };
        let listener = match b.listener {
            Some(ref l) => l.try_clone().map_err(|source| Error::Bind {
                addr: "the given listener".into(),
                source,
            })?,
            None => bind(&b.addr, listen_backlog, b.reuse_port)?,
        };
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: b.addr.clone(),
            source,
        })?;

        let counters = Arc::new(Counters::new(b.workers, b.backlog).with_access_log(b.access_log));
        let shutdown = Arc::new(Shutdown::new());
        let (queue_tx, queue_rx) = queue::bounded(b.backlog);
        let (mut threads, ready, done) = Threads::new();

        // From here on a failure must stop what already started: a server
        // value owns the threads, so dropping it (on error) begins shutdown.
        let mut server = Server {
            local_addr,
            counters: Arc::clone(&counters),
            shutdown: Arc::clone(&shutdown),
            queue: QueueLen::of(&queue_rx),
            acceptor_waker: None,
            acceptor: None,
            workers: Vec::with_capacity(b.workers),
            poller: None,
            closer: None,
            monitor: None,
            metrics: None,
            default_grace: b.shutdown_timeout,
        };

        let (closer, closer_loop) = Closer::new().map_err(Error::Spawn)?;
        server.closer = Some(threads.spawn(
            "poolserver-closer".into(),
            None,
            Holds::Done,
            move || closer_loop.run(),
        )?);

        let proxy = b.proxy_settings();
        let gate = proxy.clone().map(|s| Arc::new(Gate::new(s)));
        let ctx = Arc::new(PoolContext {
            gate: gate.clone(),
            counters: Arc::clone(&counters),
            shutdown: Arc::clone(&shutdown),
            limits: b.limits(),
            service: b.service.clone(),
            queue_timeout: b.queue_timeout,
            read_buffer_size: b.read_buffer_size,
            closer: closer.clone(),
        });
        let event = b.dispatch == Dispatch::Event;
        let max_live = event.then_some(b.max_connections as u64);
        raise_fd_limit(event.then_some(b.max_connections), b.workers);
        let mut bell = None;
        if event {
            let (poller, rings) =
                start_event_pool(&b, &mut threads, &mut server.workers, &ctx, &queue_rx)?;
            server.poller = Some(poller);
            bell = Some(rings);
        } else {
            for id in 0..b.workers {
                let (ctx, queue) = (Arc::clone(&ctx), queue_rx.clone());
                let thread = threads.spawn(
                    format!("poolserver-worker-{id}"),
                    Some(b.worker_stack_size),
                    Holds::Done,
                    move || ctx.run(id, &queue),
                )?;
                server.workers.push(Worker::new(id, thread));
            }
        }

        if let Some(interval) = b.monitor_interval {
            let monitor = Monitor {
                interval,
                format: b.monitor_format,
                output: b.monitor_output,
                counters: Arc::clone(&counters),
                queue: QueueLen::of(&queue_rx),
                max_live,
                done: done.clone(),
            };
            server.monitor = Some(threads.spawn(
                "poolserver-monitor".into(),
                None,
                Holds::Nothing,
                move || monitor.run(),
            )?);
        }

        if let Some(addr) = &b.metrics_addr {
            let exporter = Exporter::new(Arc::clone(&counters), QueueLen::of(&queue_rx), max_live);
            let (endpoint, serve) = Endpoint::bind(addr, Arc::new(exporter), done)?;
            let thread = threads.spawn(
                "poolserver-metrics".into(),
                None,
                Holds::Nothing,
                move || serve.run(),
            )?;
            info!(
                target: STARTUP_TARGET,
                "metrics on http://{}/metrics",
                endpoint.local_addr()
            );
            server.metrics = Some(endpoint.running(thread));
        }

        let (mut acceptor, waker) = Acceptor::new(
            listener,
            queue_tx,
            b.overflow,
            Arc::clone(&counters),
            shutdown,
            closer,
            gate,
        )
        .map_err(Error::Spawn)?;
        acceptor.hand_over = hand_over;
        acceptor.max_live = max_live;
        acceptor.bell = bell;
        if let Some(max) = max_live {
            counters.set_admission(Admission {
                max,
                waker: Arc::clone(&waker),
            });
        }
        server.acceptor_waker = Some(waker);
        server.acceptor = Some(threads.spawn(
            "poolserver-acceptor".into(),
            None,
            Holds::Done,
            move || acceptor.run(),
        )?);

        threads.wait_until_running(&ready);
        // Its own target, so a binary can show this line even when it logs
        // only warnings: it is how a user learns the real port.
        info!(
            target: STARTUP_TARGET,
            "listening on {local_addr} with {} workers, accept queue capacity {} \
             ({listening}, overflow {}), dispatch {}{}{}",
            b.workers,
            b.backlog,
            b.overflow,
            b.dispatch,
            match max_live {
                Some(max) => format!(", max connections {max}"),
                None => String::new(),
            },
            match &proxy {
                Some(p) => format!(
                    "; PROXY protocol required, from {} within {}",
                    p.allow,
                    humantime::format_duration(p.timeout)
                ),
                None => String::new(),
            }
        );
        Ok(server)
    }
}

/// Starts event dispatch's workers on `accept` and its poller's timer
/// thread (returned, with the bell the acceptor rings for each job). Both
/// hold `done`, so the final report waits for them.
fn start_event_pool(
    b: &ServerBuilder,
    threads: &mut Threads,
    workers: &mut Vec<Worker>,
    ctx: &PoolContext,
    accept: &Receiver<Job>,
) -> Result<(JoinHandle<()>, Arc<Bell>), Error> {
    let ServiceKind::Event(service) = &b.service else {
        // `ServerBuilder::validate` refuses this combination first.
        return Err(Error::Config(
            "--dispatch event needs an EventService".into(),
        ));
    };
    let limits = b.limits();
    // Unbounded, so nobody blocks on a worker; it holds at most
    // the live connections, which --max-connections bounds.
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let (poller, parking) = Poller::new(
        ready_tx,
        Arc::clone(&ctx.counters),
        Arc::clone(&ctx.shutdown),
        Timeouts {
            idle: limits.idle_timeout,
            write: limits.write_timeout,
        },
    )
    .map_err(Error::Spawn)?;
    let bell = Arc::clone(parking.bell());
    let pool = Arc::new(EventPool::new(
        ctx,
        Arc::clone(service),
        parking,
        accept.clone(),
        ready_rx,
    ));
    for id in 0..b.workers {
        let pool = Arc::clone(&pool);
        let thread = threads.spawn(
            format!("poolserver-worker-{id}"),
            Some(b.worker_stack_size),
            Holds::Done,
            move || pool.run(pool.local(id)),
        )?;
        workers.push(Worker::new(id, thread));
    }
    let timer = threads.spawn("poolserver-poller".into(), None, Holds::Done, move || {
        poller.run()
    })?;
    Ok((timer, bell))
}

/// Whether a thread holds a clone of the `done` sender while it runs.
enum Holds {
    /// The acceptor, every worker and the closer: the monitor's receive on
    /// `done` fails once all of them have exited, which is when it writes
    /// the final report.
    Done,
    /// The monitor itself, and the metrics endpoint (which also watches
    /// `done`, to stop on its own after a drop without a shutdown).
    Nothing,
}

/// Spawns the server's threads, every one the same way: named, reporting
/// on `ready` once it runs, holding `done` (never sending on it) until it
/// returns if asked to.
struct Threads {
    ready: Sender<()>,
    done: Sender<()>,
    started: usize,
}

impl Threads {
    /// The spawner, the receiver of `ready` and the receiver of `done`.
    fn new() -> (Threads, Receiver<()>, Receiver<()>) {
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        let (done_tx, done_rx) = crossbeam_channel::bounded(0);
        let threads = Threads {
            ready: ready_tx,
            done: done_tx,
            started: 0,
        };
        (threads, ready_rx, done_rx)
    }

    fn spawn(
        &mut self,
        name: String,
        stack_size: Option<usize>,
        holds: Holds,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<JoinHandle<()>, Error> {
        let ready = self.ready.clone();
        let done = matches!(holds, Holds::Done).then(|| self.done.clone());
        let mut builder = thread::Builder::new().name(name);
        if let Some(bytes) = stack_size {
            builder = builder.stack_size(bytes);
        }
        let thread = builder
            .spawn(move || {
                let _done = done;
                let _ = ready.send(());
                drop(ready);
                body();
            })
            .map_err(Error::Spawn)?;
        self.started += 1;
        Ok(thread)
    }

    /// Waits until every thread spawned has reported that it runs. Drops
    /// the spawner's own `done`, so that only the threads hold it.
    fn wait_until_running(self, ready: &Receiver<()>) {
        let started = self.started;
        drop(self);
        for _ in 0..started {
            if ready.recv().is_err() {
                break;
            }
        }
    }
}

/// The log target of the one line that says where the server listens.
pub const STARTUP_TARGET: &str = "poolserver::startup";

/// Binds and listens with an explicit kernel backlog, which std's
/// `TcpListener::bind` does not allow.
fn bind(addr: &str, listen_backlog: usize, reuse_port: bool) -> Result<TcpListener, Error> {
    let bind_err = |source| Error::Bind {
        addr: addr.to_string(),
        source,
    };
    let mut last_err = None;
    let addrs = addr.to_socket_addrs().map_err(bind_err)?;
    for sa in addrs {
        match listen_on(sa, listen_backlog, reuse_port) {
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

fn listen_on(addr: SocketAddr, backlog: usize, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets a restarted server bind while old connections sit in TIME_WAIT;
    // it does not let two servers listen on one port.
    socket.set_reuse_address(true)?;
    // This does (--reuse-port).
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
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
