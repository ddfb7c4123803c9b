//! [`ServerBuilder`]: every knob of the server, each with its documented
//! default, validated when the server starts.
//!
//! One setter per command-line flag of `poolserver` (README, The server),
//! plus a few that only embedders need (a pre-bound listener, a custom
//! service, a monitor sink, buffer and stack sizes), and
//! [`start`](ServerBuilder::start), which `server.rs` defines: this file
//! only holds settings, and depends on nothing that runs them.

use std::fmt;
use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::DEFAULT_MAX_CONNECTIONS;
use crate::connection::{Limits, MinRate};
use crate::proxy::{AllowList, ProxySettings, DEFAULT_PROXY_TIMEOUT};
use crate::service::{EventService, Service, ServiceKind, Uppercase};

/// What the acceptor does when the accept queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Wait for room. The acceptor stops calling `accept(2)`, so new
    /// clients wait in the kernel's listen queue (back-pressure).
    #[default]
    Block,
    /// Answer the new connection with one `BUSY …` line and close it.
    Reject,
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overflow::Block => "block",
            Overflow::Reject => "reject",
        })
    }
}

/// How connections are handed to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dispatch {
    /// A worker serves one connection from its first byte to its close.
    #[default]
    Connection,
    /// A worker serves a connection while it has data; an idle connection
    /// waits in a poller, not on a worker, so far more connections than
    /// workers are served. Needs an [`EventService`].
    Event,
}

impl fmt::Display for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dispatch::Connection => "connection",
            Dispatch::Event => "event",
        })
    }
}

/// How the monitor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MonitorFormat {
    /// One `key=value` log line (target `poolserver::monitor`, level info).
    #[default]
    Text,
    /// One JSON object per line on standard output (or the sink given to
    /// [`ServerBuilder::monitor_output`]); nothing in the log.
    Json,
    /// A short report a person reads at a glance in a terminal: occupancy
    /// bars, rates and waits, on standard output (or the sink given to
    /// [`ServerBuilder::monitor_output`]); nothing in the log.
    Pretty,
}

/// Configures and starts a [`Server`](crate::Server).
///
/// Obtained from [`Server::builder`](crate::Server::builder). Setters take
/// and return the builder; nothing is checked or bound until
/// [`start`](ServerBuilder::start).
///
/// Durations follow the command line's convention: `Duration::ZERO` turns a
/// timeout (or the monitor) off.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use poolserver::{Overflow, Server};
///
/// # fn main() -> Result<(), poolserver::Error> {
/// let server = Server::builder()
///     .addr("127.0.0.1:0")          // any free port
///     .workers(4)
///     .backlog(64)
///     .overflow(Overflow::Reject)
///     .idle_timeout(Duration::from_secs(30))
///     .monitor_interval(Duration::ZERO)
///     .start()?;
/// println!("listening on {}", server.local_addr());
/// let stats = server.shutdown(Duration::from_secs(1));
/// assert_eq!(stats.live, 0);
/// # Ok(()) }
/// ```
pub struct ServerBuilder {
    pub(crate) addr: String,
    pub(crate) listener: Option<TcpListener>,
    pub(crate) workers: usize,
    pub(crate) backlog: usize,
    pub(crate) listen_backlog: Option<usize>,
    pub(crate) overflow: Overflow,
    // Settings that can be off are `None` when off: the setters turn the
    // command line's zero into `None`, here and nowhere else.
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) min_rate: Option<MinRate>,
    pub(crate) monitor_interval: Option<Duration>,
    pub(crate) proxy_protocol: bool,
    pub(crate) proxy_from: AllowList,
    pub(crate) proxy_timeout: Duration,
    pub(crate) access_log: bool,
    pub(crate) reuse_port: bool,
    /// The listener came from socket activation (see `inherited_listener`).
    pub(crate) inherited: bool,
    pub(crate) monitor_format: MonitorFormat,
    pub(crate) monitor_output: Option<Box<dyn Write + Send>>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) service: ServiceKind,
    pub(crate) dispatch: Dispatch,
    pub(crate) max_connections: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) worker_stack_size: usize,
    pub(crate) metrics_addr: Option<String>,
}

/// Default address: loopback only, so a server started by accident is not
/// reachable from the network.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Default accept-queue capacity.
pub const DEFAULT_BACKLOG: usize = 1024;
pub use crate::connection::{DEFAULT_IDLE_TIMEOUT, DEFAULT_WRITE_TIMEOUT};
/// Default time between monitor reports.
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(5);
/// Default grace period for live connections at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default size of each worker's read buffer.
pub const DEFAULT_READ_BUFFER: usize = 32 * 1024;
/// Default worker stack size.
///
/// Workers keep their buffers on the heap, so the stack only needs room for
/// the service's own frames and for unwinding (with a backtrace) out of a
/// panicking one; 512 KiB is plenty for that and a quarter of std's 2 MiB
/// default. Only touched pages cost memory either way.
pub const DEFAULT_WORKER_STACK: usize = 512 * 1024;

/// Parses a duration the way every poolserver command line takes one:
/// `250ms`, `30s`, `5m`, or a bare number of seconds (`1.5`); zero allowed
/// (for a timeout it means "off").
///
/// # Errors
///
/// A message saying how to write a duration.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// assert_eq!(poolserver::parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(poolserver::parse_duration("2"), Ok(Duration::from_secs(2)));
/// assert!(poolserver::parse_duration("soon").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("`{s}` is not a valid number of seconds"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 250ms, 30s or 5m"))
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            addr: DEFAULT_ADDR.to_string(),
            listener: None,
            workers: num_cpus::get(),
            backlog: DEFAULT_BACKLOG,
            listen_backlog: None,
            overflow: Overflow::Block,
            queue_timeout: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            min_rate: None,
            monitor_interval: Some(DEFAULT_MONITOR_INTERVAL),
            proxy_protocol: false,
            proxy_from: AllowList::default(),
            proxy_timeout: DEFAULT_PROXY_TIMEOUT,
            access_log: false,
            reuse_port: false,
            inherited: false,
            monitor_format: MonitorFormat::Text,
            monitor_output: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            service: ServiceKind::Event(Arc::new(Uppercase)),
            dispatch: Dispatch::Connection,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_buffer_size: DEFAULT_READ_BUFFER,
            worker_stack_size: DEFAULT_WORKER_STACK,
            metrics_addr: None,
        }
    }
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("addr", &self.addr)
            .field("listener", &self.listener)
            .field("workers", &self.workers)
            .field("backlog", &self.backlog)
            .field("listen_backlog", &self.listen_backlog)
            .field("overflow", &self.overflow)
            .field("queue_timeout", &self.queue_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("min_rate", &self.min_rate)
            .field("proxy_protocol", &self.proxy_protocol)
            .field("proxy_from", &self.proxy_from)
            .field("proxy_timeout", &self.proxy_timeout)
            .field("access_log", &self.access_log)
            .field("reuse_port", &self.reuse_port)
            .field("inherited", &self.inherited)
            .field("monitor_interval", &self.monitor_interval)
            .field("monitor_format", &self.monitor_format)
            .field(
                "monitor_output",
                &self.monitor_output.as_ref().map(|_| "<writer>"),
            )
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("service", &self.service)
            .field("dispatch", &self.dispatch)
            .field("max_connections", &self.max_connections)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("worker_stack_size", &self.worker_stack_size)
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

impl ServerBuilder {
    /// A builder with every default; the same as [`Server::builder`](crate::Server::builder).
    pub fn new() -> Self {
        Self::default()
    }

    /// The address to listen on, IPv4 or IPv6; port 0 picks a free port
    /// (read it back with [`Server::local_addr`](crate::Server::local_addr)).
    /// Defaults to `127.0.0.1:8080`.
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// Serve on a listener bound elsewhere (a test harness, socket
    /// activation). The address and listen-backlog settings are then
    /// ignored. Defaults to binding [`addr`](Self::addr).
    ///
    /// The server takes the socket over: it makes it non-blocking and
    /// closes it at shutdown. A clone kept elsewhere shares that mode and
    /// keeps the socket listening after the server has stopped.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Serve on a listener passed by systemd socket activation (see
    /// [`systemd::inherited_listener`](crate::systemd::inherited_listener)).
    /// Like [`listener`](Self::listener), except at shutdown: connections
    /// still in the kernel's queue are left there for the next instance
    /// (the service manager keeps the socket open) instead of being
    /// answered `BUSY`.
    pub fn inherited_listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self.inherited = true;
        self
    }

    /// Set `SO_REUSEPORT` on the listener, so that several processes (of
    /// the same user) can listen on one address; the kernel spreads new
    /// connections over them by a hash of the client's address and port,
    /// not by load. At shutdown, with `net.ipv4.tcp_migrate_req = 1`,
    /// connections still in this process's kernel queue are left there for
    /// the kernel to move to the others; without it they are taken and
    /// served or answered `BUSY` as usual (README, "Running more than
    /// one"). Defaults to off; ignored for a listener given ready-made.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// Size of the fixed worker pool; must be at least 1. Defaults to the
    /// number of logical CPUs.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Capacity of the bounded accept queue between the acceptor and the
    /// workers; must be at least 1. Defaults to 1024.
    pub fn backlog(mut self, n: usize) -> Self {
        self.backlog = n;
        self
    }

    /// The kernel's `listen(2)` backlog (the kernel may cap it: on Linux at
    /// `net.core.somaxconn`, which is logged as a warning). Defaults to the
    /// accept-queue capacity.
    pub fn listen_backlog(mut self, n: usize) -> Self {
        self.listen_backlog = Some(n);
        self
    }

    /// What to do when the accept queue is full. Defaults to
    /// [`Overflow::Block`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// A connection that waited in the accept queue longer than this is
    /// answered `BUSY` and closed when a worker reaches it, instead of being
    /// served late. Defaults to zero: wait as long as it takes.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = off_if_zero(timeout);
        self
    }

    /// Close a connection whose client has sent nothing for this long,
    /// freeing its worker. Defaults to 5 minutes; zero means never.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = off_if_zero(timeout);
        self
    }

    /// Close a connection whose client has not read anything for this
    /// long while a reply waits to be sent. Defaults to 30 seconds; zero
    /// means never (the shutdown deadline still ends such a write).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = off_if_zero(timeout);
        self
    }

    /// A minimum data rate: while connections wait in the accept queue, a
    /// client that sent fewer than `bytes` in the last `window` is closed to
    /// free its worker (a defence against clients that trickle bytes to hold
    /// a worker forever). `bytes == 0` or a zero window turns it off.
    /// Defaults to off.
    pub fn min_rate(mut self, bytes: u64, window: Duration) -> Self {
        self.min_rate = (bytes > 0 && !window.is_zero()).then_some(MinRate { bytes, window });
        self
    }

    /// Require a PROXY protocol header (v1 or v2) at the start of every
    /// connection, as a load balancer such as HAProxy sends it: the true
    /// client's address comes from it. Peers outside
    /// [`proxy_from`](Self::proxy_from), malformed or over-long headers and
    /// headers that do not arrive within [`proxy_timeout`](Self::proxy_timeout)
    /// are closed unanswered and counted in
    /// [`Stats::proxy_refused`](crate::Stats::proxy_refused). A v2 LOCAL
    /// header (a health check) is served as a direct connection. Defaults
    /// to off.
    pub fn proxy_protocol(mut self, on: bool) -> Self {
        self.proxy_protocol = on;
        self
    }

    /// The peers allowed to connect and send a PROXY header. Defaults to
    /// loopback only (`127.0.0.0/8`, `::1/128`).
    pub fn proxy_from(mut self, allow: AllowList) -> Self {
        self.proxy_from = allow;
        self
    }

    /// How long a worker waits for a whole PROXY header, from the moment
    /// it takes the connection. Defaults to 3 seconds; must not be zero.
    pub fn proxy_timeout(mut self, timeout: Duration) -> Self {
        self.proxy_timeout = timeout;
        self
    }

    /// Log one line per connection when it closes, on the target
    /// [`ACCESS_TARGET`](crate::ACCESS_TARGET) at level info: the true
    /// client, the proxy (when different), queue wait, duration, bytes in
    /// and out, and how it ended (README, "Running more than one").
    /// Defaults to off.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// The PROXY protocol settings, when it is on.
    pub(crate) fn proxy_settings(&self) -> Option<ProxySettings> {
        self.proxy_protocol.then(|| ProxySettings {
            allow: self.proxy_from.clone(),
            timeout: self.proxy_timeout,
        })
    }

    /// Time between monitor reports; zero turns the monitor off. Defaults
    /// to 5 seconds.
    pub fn monitor_interval(mut self, interval: Duration) -> Self {
        self.monitor_interval = off_if_zero(interval);
        self
    }

    /// Format of monitor reports. Defaults to [`MonitorFormat::Text`].
    pub fn monitor_format(mut self, format: MonitorFormat) -> Self {
        self.monitor_format = format;
        self
    }

    /// Where JSON monitor reports go. Defaults to standard output.
    pub fn monitor_output(mut self, out: impl Write + Send + 'static) -> Self {
        self.monitor_output = Some(Box::new(out));
        self
    }

    /// Grace period used when the server is dropped without an explicit
    /// [`Server::shutdown`](crate::Server::shutdown). Defaults to 10 seconds.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// What each worker does with a connection, as a blocking [`Service`]
    /// (connection mode only). Replaces any earlier
    /// [`event_service`](Self::event_service). Defaults to
    /// `event_service(Uppercase)`.
    pub fn service(mut self, service: impl Service) -> Self {
        self.service = ServiceKind::Blocking(Arc::new(service));
        self
    }

    /// What each worker does with a connection, as an [`EventService`]
    /// (byte logic that runs in every dispatch mode). Replaces any earlier
    /// [`service`](Self::service). Defaults to the uppercase loop,
    /// [`Uppercase`].
    pub fn event_service(mut self, service: impl EventService) -> Self {
        self.service = ServiceKind::Event(Arc::new(service));
        self
    }

    /// How connections are handed to workers. Defaults to
    /// [`Dispatch::Connection`]. [`Dispatch::Event`] needs an
    /// [`event_service`](Self::event_service) (the default one is).
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    /// In event dispatch, the most live connections (accepted and not yet
    /// closed); at the limit the acceptor stops accepting and newcomers
    /// wait in the kernel's listen queue. Must be at least 1. Defaults to
    /// [`DEFAULT_MAX_CONNECTIONS`] (see there why). Not used in connection
    /// dispatch, where the pool and the accept queue bound live
    /// connections.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Bytes read from a client at a time, per worker; must be at least 1.
    /// Defaults to 32 KiB.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.read_buffer_size = bytes;
        self
    }

    /// Stack size of each worker thread. Defaults to 512 KiB.
    pub fn worker_stack_size(mut self, bytes: usize) -> Self {
        self.worker_stack_size = bytes;
        self
    }

    /// Serve Prometheus metrics (`GET /metrics`, text format 0.0.4) on this
    /// address; port 0 picks a free port (read it back with
    /// [`Server::metrics_addr`](crate::Server::metrics_addr)). Anyone who
    /// can reach it can read the pool's figures: prefer a loopback or
    /// private address. Defaults to off.
    pub fn metrics_addr(mut self, addr: impl Into<String>) -> Self {
        self.metrics_addr = Some(addr.into());
        self
    }

    /// The per-connection limits every worker applies.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            min_rate: self.min_rate,
        }
    }

    /// Checks the settings that have limits.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        if self.backlog == 0 {
            return Err("backlog (the accept-queue capacity) must be at least 1".into());
        }
        if self.listen_backlog == Some(0) {
            return Err("listen backlog must be at least 1".into());
        }
        if self.proxy_protocol && self.proxy_timeout.is_zero() {
            return Err("the proxy timeout must be more than zero".into());
        }
        if self.read_buffer_size == 0 {
            return Err("read buffer size must be at least 1 byte".into());
        }
        if self.max_connections == 0 {
            return Err("max connections must be at least 1".into());
        }
        if self.dispatch == Dispatch::Event && matches!(self.service, ServiceKind::Blocking(_)) {
            return Err("--dispatch event needs an EventService (set with \
                        ServerBuilder::event_service); a blocking Service runs only in \
                        connection dispatch"
                .into());
        }
        Ok(())
    }
}

/// The command line's convention: a zero duration turns the setting off.
fn off_if_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}
