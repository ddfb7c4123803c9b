//! `poolload` (README, "The load generator"): a load generator that checks
//! every reply byte for byte. This file owns the command line, the progress bar and the exit
//! codes; the connections, the check and the report are
//! `poolserver::load`.
//!
//! Exit codes: 0 when every reply was right and nothing failed; 1 for a
//! wrong reply, a connection error, a run cut by its deadline, or (with
//! `--fail-on-unserved`) a connection that was never served; 2 for bad
//! usage (clap); 130 for a run ended by Ctrl-C (SIGINT or SIGTERM), after
//! its report — unless it also failed (1). A second Ctrl-C exits at once
//! with 130 and no report.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use poolserver::load::{self, Expect, Live, LoadConfig, Mode, Report};
use poolserver::load::{
    DEFAULT_BULK_BYTES, DEFAULT_CONNECTIONS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DURATION,
    DEFAULT_IDLE_INTERVAL, DEFAULT_PIPELINE, DEFAULT_SIZE, IDLE_LINE, MAX_BULK_BYTES,
    MAX_CONNECTIONS, MAX_IDLE, MAX_PIPELINE, MAX_SIZE, MIN_SIZE,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Load generator for poolserver: opens C connections, sends messages of
/// BYTES bytes (lowercase letters and digits ending in a newline), checks
/// every reply byte for byte, and reports round trips per second,
/// throughput and latency percentiles.
///
/// Modes: pingpong sends a message and waits for its reply (with
/// --pipeline K in flight); bulk streams --bulk-mib MiB per connection
/// while reading the replies at the same time; connect runs whole
/// conversations (connect, one round trip, quit, close) in a loop.
///
/// Idle connections (--idle N): thousands of mostly silent clients without
/// a thread each. They connect at a bounded pace, each sends a short line
/// every --idle-interval, and the report gives how many were served, never
/// served, rejected or failed, their round trips and latency. With
/// --connections 0 only they run, for --duration.
///
/// A connection that never gets a reply within the run (it waits in the
/// server's accept queue) is closed at the end and reported as
/// never_served. Throughput is in MB/s, where MB = 10^6 bytes. Latencies
/// are in microseconds.
///
/// Durations take a unit (250ms, 10s, 1m); a bare number means seconds.
/// Every flag can also be set through the environment variable shown.
///
/// Exit status: 0 when every reply was right and nothing failed; 1 for a
/// wrong reply, an error, a run cut by --deadline, or an unserved
/// connection with --fail-on-unserved; 2 for bad usage.
#[derive(Parser, Debug)]
#[command(name = "poolload", version)]
struct Args {
    /// Address of the server, HOST:PORT
    #[arg(short, long, env = "POOLLOAD_ADDR", value_name = "HOST:PORT", default_value = poolserver::DEFAULT_ADDR)]
    addr: String,

    /// Concurrent connections, a thread each (connect mode: concurrent
    /// connect loops); 0 with --idle runs only the idle connections
    #[arg(short, long, env = "POOLLOAD_CONNECTIONS", value_name = "C",
          default_value_t = DEFAULT_CONNECTIONS, value_parser = between(0, MAX_CONNECTIONS))]
    connections: usize,

    #[arg(long, env = "POOLLOAD_IDLE", value_name = "N", default_value_t = 0,
          value_parser = between(0, MAX_IDLE),
          help = format!(
              "Extra idle connections, all on one thread: each sends a {IDLE_LINE}-byte line \
               every --idle-interval and checks the reply byte for byte. Reported apart (the \
               idle_* figures), never in the main connections' figures"))]
    idle: usize,

    /// How often each idle connection sends its line (the first one at a
    /// random-looking offset inside the first interval, so they do not all
    /// fire together)
    #[arg(long, env = "POOLLOAD_IDLE_INTERVAL", value_name = "DUR",
          default_value = shown(DEFAULT_IDLE_INTERVAL), value_parser = load::parse_positive_duration)]
    idle_interval: Duration,

    /// Message size in bytes, including the trailing newline (2 to 16 MiB)
    #[arg(short, long, env = "POOLLOAD_SIZE", value_name = "BYTES", default_value_t = DEFAULT_SIZE,
          value_parser = between(MIN_SIZE, MAX_SIZE))]
    size: usize,

    /// How long to measure, after --warmup (not used with -n, nor in bulk
    /// mode, which ends when every connection has streamed --bulk-mib)
    #[arg(short, long, env = "POOLLOAD_DURATION", value_name = "DUR",
          default_value = shown(DEFAULT_DURATION), value_parser = load::parse_positive_duration)]
    duration: Duration,

    /// Round trips per connection (connect mode: cycles per loop); the run
    /// ends when all are done instead of after --duration
    #[arg(short = 'n', long, env = "POOLLOAD_MESSAGES", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    messages: Option<u64>,

    /// Messages in flight per connection (pingpong)
    #[arg(long, env = "POOLLOAD_PIPELINE", value_name = "K", default_value_t = DEFAULT_PIPELINE,
          value_parser = between(1, MAX_PIPELINE))]
    pipeline: usize,

    /// Give up on a connect attempt after this long (counted as an error)
    #[arg(long, env = "POOLLOAD_CONNECT_TIMEOUT", value_name = "DUR",
          default_value = shown(DEFAULT_CONNECT_TIMEOUT), value_parser = load::parse_positive_duration)]
    connect_timeout: Duration,

    /// Run this long before measuring; round trips in it are not counted
    /// (not used in bulk mode)
    #[arg(long, env = "POOLLOAD_WARMUP", value_name = "DUR", default_value = "0", value_parser = load::parse_duration)]
    warmup: Duration,

    /// Hard cap on the whole run; when it passes every connection stops and
    /// the report says the run was cut [default: duration + warmup + 30s]
    #[arg(long, env = "POOLLOAD_DEADLINE", value_name = "DUR", value_parser = load::parse_positive_duration)]
    deadline: Option<Duration>,

    /// What each connection does
    #[arg(long, env = "POOLLOAD_MODE", value_enum, default_value_t = Mode::default().into())]
    mode: ModeArg,

    /// Bulk mode: MiB streamed per connection
    #[arg(long, env = "POOLLOAD_BULK_MIB", value_name = "M", default_value_t = DEFAULT_BULK_BYTES >> 20,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BULK_BYTES >> 20))]
    bulk_mib: u64,

    /// What a correct reply is: the uppercase of the message, or the
    /// message itself (for a server run with --service echo)
    #[arg(long, env = "POOLLOAD_EXPECT", value_enum, default_value_t = Expect::default().into())]
    expect: ExpectArg,

    /// Print exactly one JSON line on stdout (and nothing else there)
    #[arg(long, env = "POOLLOAD_JSON")]
    json: bool,

    /// No progress bar
    #[arg(short, long, env = "POOLLOAD_QUIET")]
    quiet: bool,

    /// Exit 1 if any connection was never served or was rejected with BUSY
    #[arg(long, env = "POOLLOAD_FAIL_ON_UNSERVED")]
    fail_on_unserved: bool,
}

/// `--mode`: the library's [`Mode`], spelled for the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Send a message, wait for its reply, repeat (with --pipeline messages
    /// in flight). Measures round trips per second and latency
    Pingpong,
    /// Stream --bulk-mib per connection while reading the replies
    /// concurrently. Measures throughput
    Bulk,
    /// Connect, one round trip, `quit`, close, repeat. Measures the cost of
    /// a whole connection: accept, queue, worker hand-off, lingering close
    Connect,
}

impl From<Mode> for ModeArg {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Pingpong => ModeArg::Pingpong,
            Mode::Bulk => ModeArg::Bulk,
            Mode::Connect => ModeArg::Connect,
        }
    }
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Pingpong => Mode::Pingpong,
            ModeArg::Bulk => Mode::Bulk,
            ModeArg::Connect => Mode::Connect,
        }
    }
}

/// `--expect`: the library's [`Expect`], spelled for the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExpectArg {
    /// The uppercase of the message: the uppercase loop
    Upper,
    /// The message itself: a server run with `--service echo`
    Echo,
}

impl From<Expect> for ExpectArg {
    fn from(e: Expect) -> Self {
        match e {
            Expect::Upper => ExpectArg::Upper,
            Expect::Echo => ExpectArg::Echo,
        }
    }
}

impl From<ExpectArg> for Expect {
    fn from(e: ExpectArg) -> Self {
        match e {
            ExpectArg::Upper => Expect::Upper,
            ExpectArg::Echo => Expect::Echo,
        }
    }
}

/// A count flag limited to `min..=max`: the library's limits, so clap
/// refuses what [`LoadConfig::validate`] would.
fn between(min: usize, max: usize) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(min as u64..=max as u64)
}

/// A default duration as `--help` shows it and the parser reads it back.
fn shown(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = LoadConfig {
        addr: args.addr.clone(),
        connections: args.connections,
        size: args.size,
        duration: args.duration,
        messages: args.messages,
        pipeline: args.pipeline,
        connect_timeout: args.connect_timeout,
        warmup: args.warmup,
        deadline: args.deadline,
        mode: args.mode.into(),
        bulk_bytes: args.bulk_mib << 20,
        expect: args.expect.into(),
        idle: args.idle,
        idle_interval: args.idle_interval,
    };
    // What clap cannot check alone (flags that depend on each other) is
    // still bad usage.
    if let Err(e) = cfg.validate() {
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, e.to_string())
            .exit();
    }

    let live = Arc::new(Live::default());
    let show_bar = !args.json && !args.quiet && io::stderr().is_terminal();
    // With a bar on screen, the bar says it instead (a plain line would be
    // drawn over).
    if let Err(e) = stop_on_signals(Arc::clone(&live), !show_bar) {
        let _ = writeln!(
            io::stderr(),
            "poolload: cannot install signal handlers: {e}"
        );
        return ExitCode::FAILURE;
    }
    let finished = AtomicBool::new(false);
    let result = thread::scope(|s| {
        if show_bar {
            s.spawn(|| progress_bar(&cfg, &live, &finished));
        }
        let result = load::run(&cfg, &live);
        finished.store(true, Relaxed);
        result
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(io::stderr(), "poolload: {e}");
            return ExitCode::FAILURE;
        }
    };

    print_report(&report, args.json);

    let mut problems = Vec::new();
    if let Some(summary) = report.failure_summary() {
        problems.push(summary);
    }
    let unserved = report.never_served + report.idle_never_served;
    let rejected = report.rejected + report.idle_rejected;
    if args.fail_on_unserved && (unserved > 0 || rejected > 0) {
        problems.push(format!(
            "{unserved} connections never served and {rejected} rejected with BUSY (--fail-on-unserved)"
        ));
    }
    if problems.is_empty() {
        if report.interrupted {
            ExitCode::from(130)
        } else {
            ExitCode::SUCCESS
        }
    } else {
        let _ = writeln!(io::stderr(), "poolload: FAILED: {}", problems.join("; "));
        ExitCode::FAILURE
    }
}

/// The first SIGINT or SIGTERM ends the run early ([`Live::stop`]), so
/// the report of what was measured is still printed; a second one exits at
/// once. The conditional exit is registered before the flag it reads, so
/// the first signal finds the flag unset.
fn stop_on_signals(live: Arc<Live>, announce: bool) -> io::Result<()> {
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&signalled))?;
        signal_hook::flag::register(sig, Arc::clone(&signalled))?;
    }
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    thread::Builder::new()
        .name("poolload-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                // Said first: once stopped, the run may end and the
                // process exit before a later line is written.
                if announce {
                    let _ = writeln!(io::stderr(), "{STOPPING}");
                }
                live.stop();
            }
        })?;
    Ok(())
}

const STOPPING: &str =
    "poolload: stopping: finishing the messages in flight (Ctrl-C again to quit at once)";

fn print_report(report: &Report, json: bool) {
    let text = if json {
        match serde_json::to_string(report) {
            Ok(line) => line,
            Err(e) => {
                let _ = writeln!(io::stderr(), "poolload: cannot encode the report: {e}");
                return;
            }
        }
    } else {
        report.to_string()
    };
    // A closed stdout (`poolload | head -1`) is not worth a panic.
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// Draws on stderr until the run is over: elapsed time against the
/// measured time for a timed run, or counts against the totals.
fn progress_bar(cfg: &LoadConfig, live: &Live, finished: &AtomicBool) {
    let c = cfg.connections as u64;
    let (len, by_count) = match (cfg.mode, cfg.messages) {
        (Mode::Bulk, _) => (c * cfg.bulk_bytes, true),
        (_, Some(n)) => (c * n, true),
        (_, None) => (millis(cfg.warmup + cfg.duration), false),
    };
    let style = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{wide_bar}] {percent:>3}% {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar =
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style);
    let start = Instant::now();
    let mut announced = false;
    while !finished.load(Relaxed) {
        let now = live.snapshot();
        if !announced && now.stopped {
            bar.println(STOPPING);
            announced = true;
        }
        let (rt, bytes) = (now.round_trips, now.bytes);
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        let pos = match (by_count, cfg.mode) {
            (true, Mode::Bulk) => bytes,
            (true, _) => rt,
            (false, _) => millis(start.elapsed()),
        };
        bar.set_position(pos.min(len));
        bar.set_message(format!(
            "{rt} rt, {:.0} rt/s, {:.1} MB/s, {} wrong, {} errors",
            rt as f64 / secs,
            bytes as f64 / secs / 1e6,
            now.wrong,
            now.errors
        ));
        thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
