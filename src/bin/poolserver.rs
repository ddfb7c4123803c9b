//! `poolserver`: parses the flags, sets up logging, starts the library's
//! server, and turns SIGINT/SIGTERM into a graceful shutdown (a second
//! signal exits at once with code 130).
//!
//! Exit codes: 0 after a graceful shutdown, 2 for bad usage or an address
//! that cannot be bound (clap exits 2 on its own for bad flags), 1 for any
//! other fatal error.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use log::{info, LevelFilter};
use poolserver::{
    parse_duration, AllowList, Dispatch, Echo, MonitorFormat, Overflow, Server, Uppercase,
};
use poolserver::{
    DEFAULT_BACKLOG, DEFAULT_IDLE_TIMEOUT, DEFAULT_MONITOR_INTERVAL, DEFAULT_PROXY_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, SharedLogger, TermLogger, TerminalMode, WriteLogger,
};

/// A TCP server with a fixed pool of worker threads fed by a bounded accept
/// queue. Each worker serves one connection at a time: every byte the client
/// sends comes back uppercased, until the client closes or sends a line
/// `exit` or `quit`.
///
/// Durations take a unit (250ms, 30s, 5m); a bare number means seconds.
/// Every flag can also be set through the environment variable shown.
#[derive(Parser, Debug)]
#[command(name = "poolserver", version, about, long_about)]
struct Args {
    /// Address to listen on, IPv4 or IPv6 (port 0 = any free port)
    #[arg(short, long, env = "POOLSERVER_ADDR", default_value = poolserver::DEFAULT_ADDR)]
    addr: String,

    /// Size of the fixed worker pool [default: number of logical CPUs]
    #[arg(short, long, env = "POOLSERVER_WORKERS", value_parser = clap::value_parser!(u32).range(1..))]
    workers: Option<u32>,

    /// Capacity of the bounded accept queue between acceptor and workers
    #[arg(short, long, env = "POOLSERVER_BACKLOG", default_value_t = DEFAULT_BACKLOG,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=u64::from(u32::MAX)))]
    backlog: usize,

    /// The kernel's listen(2) backlog [default: same as --backlog]
    #[arg(long, env = "POOLSERVER_LISTEN_BACKLOG", value_parser = clap::value_parser!(u32).range(1..))]
    listen_backlog: Option<u32>,

    /// When the accept queue is full: wait for room, or answer BUSY and close
    #[arg(long, env = "POOLSERVER_OVERFLOW", value_enum, default_value_t = OverflowArg::Block)]
    overflow: OverflowArg,

    /// Answer BUSY to a connection that waited longer than this for a worker (0 = no limit)
    #[arg(long, env = "POOLSERVER_QUEUE_TIMEOUT", default_value = "0", value_parser = parse_duration)]
    queue_timeout: Duration,

    /// Close a connection that has sent nothing for this long (0 = never)
    #[arg(long, env = "POOLSERVER_IDLE_TIMEOUT", default_value = shown(DEFAULT_IDLE_TIMEOUT), value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Close a connection whose client has read nothing for this long while
    /// a reply waits (0 = never; shutdown still ends it)
    #[arg(long, env = "POOLSERVER_WRITE_TIMEOUT", default_value = shown(DEFAULT_WRITE_TIMEOUT), value_parser = parse_duration)]
    write_timeout: Duration,

    /// While connections wait for a worker, close clients that sent fewer
    /// than this many bytes in the last --min-rate-window (0 = off)
    #[arg(long, env = "POOLSERVER_MIN_RATE", default_value_t = 0)]
    min_rate: u64,

    /// The window over which --min-rate is measured
    #[arg(long, env = "POOLSERVER_MIN_RATE_WINDOW", default_value = shown(MIN_RATE_WINDOW), value_parser = parse_duration)]
    min_rate_window: Duration,

    /// Time between monitor reports (0 = no monitor)
    #[arg(long, env = "POOLSERVER_MONITOR_INTERVAL", default_value = shown(DEFAULT_MONITOR_INTERVAL), value_parser = parse_duration)]
    monitor_interval: Duration,

    /// Monitor reports as a key=value log line, as JSON lines on stdout, or
    /// as a short report on stdout that a person reads at a glance (pretty)
    #[arg(long, env = "POOLSERVER_MONITOR_FORMAT", value_enum, default_value_t = FormatArg::Text)]
    monitor_format: FormatArg,

    /// On SIGINT/SIGTERM, how long live connections may go on before they are closed
    #[arg(long, env = "POOLSERVER_SHUTDOWN_TIMEOUT", default_value = shown(DEFAULT_SHUTDOWN_TIMEOUT), value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// Log level
    #[arg(long, env = "POOLSERVER_LOG_LEVEL", value_enum, default_value_t = LevelArg::Info)]
    log_level: LevelArg,

    /// Also append the log to this file
    #[arg(long, env = "POOLSERVER_LOG_FILE")]
    log_file: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (prefer a loopback or
    /// private address: anyone who reaches it reads the pool's figures)
    #[arg(long, env = "POOLSERVER_METRICS_ADDR")]
    metrics_addr: Option<String>,

    /// connection: a worker serves one connection from first byte to close;
    /// event: a worker serves a connection while it has data and idle ones
    /// wait in a poller, so far more connections than workers are served
    #[arg(long, env = "POOLSERVER_DISPATCH", value_enum, default_value_t = DispatchArg::Connection)]
    dispatch: DispatchArg,

    /// With --dispatch event, the most live connections; at the limit new
    /// ones wait in the kernel's listen queue
    #[arg(long, env = "POOLSERVER_MAX_CONNECTIONS",
          default_value_t = poolserver::DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,

    /// What workers do with a connection: the uppercase loop, or plain echo
    /// (the transform switched off, to measure the I/O ceiling)
    #[arg(long, env = "POOLSERVER_SERVICE", value_enum, default_value_t = ServiceArg::Uppercase)]
    service: ServiceArg,

    /// Require a PROXY protocol (v1 or v2) header at the start of every
    /// connection, as a load balancer sends it: the true client's address
    /// comes from it
    #[arg(long, env = "POOLSERVER_PROXY_PROTOCOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    proxy_protocol: bool,

    /// With --proxy-protocol, the only peers allowed to connect
    /// (comma-separated networks); any other is closed unanswered
    #[arg(
        long,
        env = "POOLSERVER_PROXY_FROM",
        value_name = "CIDR[,CIDR…]",
        default_value = "127.0.0.0/8,::1/128"
    )]
    proxy_from: AllowList,

    /// With --proxy-protocol, close a connection whose header has not
    /// arrived whole within this time
    #[arg(long, env = "POOLSERVER_PROXY_TIMEOUT", default_value = shown(DEFAULT_PROXY_TIMEOUT), value_parser = parse_duration)]
    proxy_timeout: Duration,

    /// Log one line per connection when it closes (target
    /// poolserver::access, logfmt): client, proxy, queue wait, duration,
    /// bytes in and out, how it ended
    #[arg(long, env = "POOLSERVER_ACCESS_LOG",
          value_parser = clap::builder::BoolishValueParser::new())]
    access_log: bool,

    /// Set SO_REUSEPORT, so several poolserver processes can listen on one
    /// address (the kernel spreads connections by hash, not by load)
    #[arg(long, env = "POOLSERVER_REUSE_PORT",
          value_parser = clap::builder::BoolishValueParser::new())]
    reuse_port: bool,
}

/// `--min-rate-window`'s default. The library has none: its `min_rate`
/// takes the rate and the window together, and is off unless given.
const MIN_RATE_WINDOW: Duration = Duration::from_secs(10);

/// A default duration as `--help` shows it and [`parse_duration`] reads
/// it back (`5m`, `30s`).
fn shown(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OverflowArg {
    Block,
    Reject,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LevelArg {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DispatchArg {
    Connection,
    Event,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ServiceArg {
    Uppercase,
    Echo,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.log_level {
        LevelArg::Error => LevelFilter::Error,
        LevelArg::Warn => LevelFilter::Warn,
        LevelArg::Info => LevelFilter::Info,
        LevelArg::Debug => LevelFilter::Debug,
        LevelArg::Trace => LevelFilter::Trace,
    };
    if let Err(e) = init_logging(level, args.log_file.as_ref()) {
        eprintln!("poolserver: {e}");
        return ExitCode::from(2);
    }

    // Signals first, so one that arrives during start-up is not lost. The
    // conditional shutdown is registered before the flag it reads, so the
    // first signal sees the flag still false (and only sets it); a second
    // one finds it set and exits at once with 130.
    let interrupted = Arc::new(AtomicBool::new(false));
    let signals = [SIGINT, SIGTERM].iter().try_for_each(|&sig| {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&interrupted))?;
        signal_hook::flag::register(sig, Arc::clone(&interrupted)).map(|_| ())
    });
    let mut signals = match signals.and_then(|()| Signals::new([SIGINT, SIGTERM])) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("poolserver: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };

    let mut builder = Server::builder()
        .addr(args.addr.clone())
        .backlog(args.backlog)
        .overflow(match args.overflow {
            OverflowArg::Block => Overflow::Block,
            OverflowArg::Reject => Overflow::Reject,
        })
        .queue_timeout(args.queue_timeout)
        .idle_timeout(args.idle_timeout)
        .write_timeout(args.write_timeout)
        .min_rate(args.min_rate, args.min_rate_window)
        .monitor_interval(args.monitor_interval)
        .monitor_format(match args.monitor_format {
            FormatArg::Text => MonitorFormat::Text,
            FormatArg::Json => MonitorFormat::Json,
            FormatArg::Pretty => MonitorFormat::Pretty,
        })
        .shutdown_timeout(args.shutdown_timeout)
        .proxy_protocol(args.proxy_protocol)
        .proxy_from(args.proxy_from.clone())
        .proxy_timeout(args.proxy_timeout)
        .access_log(args.access_log)
        .reuse_port(args.reuse_port);
    if let Some(n) = args.workers {
        builder = builder.workers(n as usize);
    }
    if let Some(n) = args.listen_backlog {
        builder = builder.listen_backlog(n as usize);
    }
    if let Some(addr) = &args.metrics_addr {
        builder = builder.metrics_addr(addr.clone());
    }
    builder = builder
        .dispatch(match args.dispatch {
            DispatchArg::Connection => Dispatch::Connection,
            DispatchArg::Event => Dispatch::Event,
        })
        .max_connections(args.max_connections as usize);
    builder = match args.service {
        ServiceArg::Uppercase => builder.event_service(Uppercase),
        ServiceArg::Echo => builder.event_service(Echo),
    };

    // Socket activation: systemd's listener replaces --addr.
    match poolserver::systemd::inherited_listener() {
        Ok(Some(listener)) => {
            info!("using the listening socket passed by systemd (LISTEN_FDS); --addr is ignored");
            builder = builder.inherited_listener(listener);
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("poolserver: the socket passed in LISTEN_FDS is unusable: {e}");
            return ExitCode::from(2);
        }
    }

    let server = match builder.start() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("poolserver: {e}");
            if let poolserver::Error::Bind { source, .. } = &e {
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    eprintln!(
                        "poolserver: another process listens there; stop it, or pick another \
                         address with --addr (port 0 picks any free port)"
                    );
                }
            }
            return ExitCode::from(if e.is_usage() { 2 } else { 1 });
        }
    };
    // Under systemd (Type=notify): ready now that every thread runs.
    poolserver::systemd::notify_ready();
    let watchdog = match poolserver::systemd::Watchdog::start() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("poolserver: cannot start the systemd watchdog thread: {e}");
            return ExitCode::from(1);
        }
    };

    if let Some(sig) = signals.forever().next() {
        let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
        info!(
            "{name} received: shutting down within {} (send it again to exit at once)",
            humantime::format_duration(args.shutdown_timeout)
        );
    }
    poolserver::systemd::notify_stopping();
    let stats = server.shutdown(args.shutdown_timeout);
    // Pinged through the whole shutdown, which may take the grace period.
    drop(watchdog);
    info!(
        "stopped: {} connections accepted, {} served, {} turned away",
        stats.accepted, stats.closed, stats.rejected
    );
    ExitCode::SUCCESS
}

/// Logs go to stderr (coloured only on a terminal) and, if asked, to a
/// file. The startup line (where the server listens) is shown at every
/// level: with `--log-level warn` it is still the only way to learn the
/// real port.
fn init_logging(level: LevelFilter, file: Option<&PathBuf>) -> Result<(), String> {
    let base = || {
        let mut b = ConfigBuilder::new();
        b.set_target_level(LevelFilter::Error)
            .set_thread_level(LevelFilter::Off)
            .set_location_level(LevelFilter::Off)
            .set_time_format_rfc3339();
        b
    };
    // The startup line and the access log (asked for by its own flag) show
    // at every level.
    let everything_else = base()
        .add_filter_ignore_str(poolserver::STARTUP_TARGET)
        .add_filter_ignore_str(poolserver::ACCESS_TARGET)
        .build();
    let startup_only = base()
        .add_filter_allow_str(poolserver::STARTUP_TARGET)
        .add_filter_allow_str(poolserver::ACCESS_TARGET)
        .build();
    let startup_level = level.max(LevelFilter::Info);
    let color = if std::io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![
        TermLogger::new(level, everything_else.clone(), TerminalMode::Stderr, color),
        TermLogger::new(
            startup_level,
            startup_only.clone(),
            TerminalMode::Stderr,
            color,
        ),
    ];
    if let Some(path) = file {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))
        };
        loggers.push(WriteLogger::new(level, everything_else, open()?));
        loggers.push(WriteLogger::new(startup_level, startup_only, open()?));
    }
    CombinedLogger::init(loggers).map_err(|e| format!("cannot set up logging: {e}"))
}
