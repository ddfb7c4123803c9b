//! The library side of `poolload` (README, "The load generator"): the
//! connection drivers for the three modes, the byte-for-byte reply check, the latency histograms
//! and the [`Report`].
//!
//! Design decisions:
//!
//! * **One thread per connection** (two in bulk mode, where writing and
//!   reading must overlap or both TCP buffers fill and deadlock). Blocking
//!   sockets keep the pingpong hot path to one `write` and usually one
//!   `read` per round trip, which is what a comparison between servers
//!   should measure.
//! * **No allocation per message.** Every message is a slice of one
//!   precomputed pattern of distinct lines, and every reply is compared
//!   against the matching slice of the precomputed expected replies; the
//!   send times of messages in flight live in a ring sized once; latencies
//!   are buffered per connection and merged into one shared histogram a
//!   batch at a time.
//! * **Every wait is bounded.** Sockets carry a short read/write timeout
//!   ([`SLICE`]) so each blocked call wakes up to look at the clock. A
//!   connection that has had no reply by the end of the measured time (it
//!   sits in the server's accept queue) is closed and counted as
//!   `never_served`; nothing outlives the run's hard deadline.
//! * **What counts.** A round trip counts when its message was sent after
//!   the warm-up and, in a timed run, its reply completed before the
//!   measured time ended. Replies after that are still checked (a wrong one
//!   still fails the run) but not counted.
//! * **Stopping early** ([`Live::stop`], Ctrl-C in the binary) ends the
//!   measured time at that moment; the run then winds down exactly as a
//!   timed run does at its end, so the report stays honest.
//!
//! Where to look:
//!
//! | what | file |
//! |---|---|
//! | settings and [`run`] | `load/mod.rs` |
//! | the live counters and the stop signal | `load/live.rs` |
//! | the idle connections, on one thread | `load/idle.rs` |
//! | the messages and the reply check | `load/pattern.rs` |
//! | bounded socket reads and writes, the non-blocking sender | `load/sock.rs` |
//! | what connections share: connect, close, histograms | `load/ctx.rs` |
//! | one file per mode | `load/pingpong.rs`, `load/bulk.rs`, `load/connect.rs` |
//! | the [`Report`] and its math | `load/report.rs` |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use poolserver::load::{self, LoadConfig, Live};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = poolserver::Server::builder()
//!     .addr("127.0.0.1:0")
//!     .workers(2)
//!     .monitor_interval(Duration::ZERO)
//!     .start()?;
//! let cfg = LoadConfig {
//!     addr: server.local_addr().to_string(),
//!     connections: 2,
//!     messages: Some(100),
//!     ..LoadConfig::default()
//! };
//! let report = load::run(&cfg, &Live::default())?;
//! assert_eq!(report.round_trips, 200);
//! assert!(report.passed());
//! println!("{}", serde_json::to_string(&report)?);
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

mod bulk;
mod connect;
mod ctx;
mod idle;
mod live;
mod pattern;
mod pingpong;
mod report;
mod sock;
mod tally;

pub use live::{Live, Snapshot};
pub use report::Report;

use ctx::Ctx;
use pattern::Pattern;
use report::{build_report, Measured};
use tally::{new_histogram, IdleTally, Tally};

/// Smallest message: one character and the newline.
pub const MIN_SIZE: usize = 2;
/// Largest message. Two copies of each distinct message are kept in memory,
/// and a larger single line says nothing the bulk mode does not.
pub const MAX_SIZE: usize = 16 * 1024 * 1024;
/// Bytes a bulk writer hands to the kernel at a time (about).
pub const BULK_CHUNK: usize = 64 * 1024;
/// How long a blocked socket call waits before looking at the clock again:
/// the precision of the run's time limits.
pub const SLICE: Duration = Duration::from_millis(20);
/// What the default deadline adds to warm-up plus duration: room for the
/// last replies and the closes.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(30);

// The defaults and limits of [`LoadConfig`], written once: `poolload`'s
// flags take their defaults and ranges from here, and
// [`LoadConfig::validate`] checks the same limits for library callers.

/// Default [`LoadConfig::connections`].
pub const DEFAULT_CONNECTIONS: usize = 8;
/// Most [`LoadConfig::connections`]: each is a thread (two in bulk mode).
pub const MAX_CONNECTIONS: usize = 10_000;
/// Default [`LoadConfig::size`].
pub const DEFAULT_SIZE: usize = 64;
/// Default [`LoadConfig::duration`].
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Default [`LoadConfig::pipeline`].
pub const DEFAULT_PIPELINE: usize = 1;
/// Most [`LoadConfig::pipeline`]: the send times in flight are kept per
/// connection.
pub const MAX_PIPELINE: usize = 4096;
/// Default [`LoadConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`LoadConfig::bulk_bytes`]: 64 MiB.
pub const DEFAULT_BULK_BYTES: u64 = 64 << 20;
/// Most [`LoadConfig::bulk_bytes`]: 1 TiB, far beyond any sensible run.
pub const MAX_BULK_BYTES: u64 = 1 << 40;
/// Most [`LoadConfig::idle`] connections. They cost no thread, only a
/// socket each; the open-files limit is the real bound (see [`run`]).
pub const MAX_IDLE: usize = 1_000_000;
/// Default [`LoadConfig::idle_interval`].
pub const DEFAULT_IDLE_INTERVAL: Duration = Duration::from_secs(2);
/// Bytes of each line an idle connection sends, newline included.
pub const IDLE_LINE: usize = 16;

/// What the load generator does on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Send a message, wait for its reply, repeat (with `pipeline` messages
    /// in flight). Measures round trips per second and latency.
    #[default]
    Pingpong,
    /// Stream a fixed number of bytes per connection while reading the
    /// replies concurrently. Measures throughput.
    Bulk,
    /// Connect, one round trip, `quit`, close, repeat. Measures the cost of
    /// a whole connection: accept, queue, worker hand-off, lingering close.
    Connect,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Pingpong => "pingpong",
            Mode::Bulk => "bulk",
            Mode::Connect => "connect",
        })
    }
}

/// What a correct reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The uppercase of the message: the uppercase loop.
    #[default]
    Upper,
    /// The message itself: a server run with `--service echo`.
    Echo,
}

impl Expect {
    /// What the server sends after the last reply when the client sends
    /// `quit\n` and half-closes: the uppercase loop closes without
    /// answering it, echo sends it back and closes at end of stream.
    fn tail(self) -> &'static [u8] {
        match self {
            Expect::Upper => b"",
            Expect::Echo => b"quit\n",
        }
    }
}

/// Everything a run needs; the `poolload` flags map one to one.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Server address, `HOST:PORT`.
    pub addr: String,
    /// Concurrent connections (or connect loops).
    pub connections: usize,
    /// Bytes per message including the trailing `\n`; at least [`MIN_SIZE`].
    pub size: usize,
    /// Measured time of a timed run (ignored with `messages` and in bulk
    /// mode).
    pub duration: Duration,
    /// Round trips (connect mode: cycles) per connection; when set, the run
    /// ends when all are done instead of after `duration`.
    pub messages: Option<u64>,
    /// Messages in flight per connection (pingpong).
    pub pipeline: usize,
    /// Limit on each connect attempt.
    pub connect_timeout: Duration,
    /// Time at the start during which round trips are not counted.
    pub warmup: Duration,
    /// Hard cap on the whole run; `None` = warm-up + duration +
    /// [`DEADLINE_SLACK`].
    pub deadline: Option<Duration>,
    /// What each connection does.
    pub mode: Mode,
    /// Bulk mode: bytes streamed per connection.
    pub bulk_bytes: u64,
    /// What a correct reply is.
    pub expect: Expect,
    /// Extra, mostly silent connections held on one thread besides the
    /// `connections` (which may then be 0): each sends an [`IDLE_LINE`]-byte
    /// line every `idle_interval` and checks the reply. Reported apart, in
    /// the `idle_*` fields.
    pub idle: usize,
    /// How often each idle connection sends its line.
    pub idle_interval: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            addr: crate::DEFAULT_ADDR.to_string(),
            connections: DEFAULT_CONNECTIONS,
            size: DEFAULT_SIZE,
            duration: DEFAULT_DURATION,
            messages: None,
            pipeline: DEFAULT_PIPELINE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            warmup: Duration::ZERO,
            deadline: None,
            mode: Mode::default(),
            bulk_bytes: DEFAULT_BULK_BYTES,
            expect: Expect::default(),
            idle: 0,
            idle_interval: DEFAULT_IDLE_INTERVAL,
        }
    }
}

impl LoadConfig {
    /// The hard cap on the run: the configured deadline, or warm-up +
    /// duration + [`DEADLINE_SLACK`].
    pub fn effective_deadline(&self) -> Duration {
        self.deadline
            .unwrap_or_else(|| self.warmup + self.duration + DEADLINE_SLACK)
    }

    /// Checks the limits the command line also enforces, for library
    /// callers.
    ///
    /// # Errors
    ///
    /// [`LoadError::Config`] naming the setting and its limit.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: &str| Err(LoadError::Config(m.to_string()));
        if self.connections > MAX_CONNECTIONS {
            return bad(&format!("connections must be at most {MAX_CONNECTIONS}"));
        }
        if self.idle > MAX_IDLE {
            return bad(&format!("idle connections must be at most {MAX_IDLE}"));
        }
        if self.connections == 0 {
            if self.idle == 0 {
                return bad("connections must be at least 1 (or give idle connections)");
            }
            // Without main connections nothing but the clock ends the run.
            if self.messages.is_some() || self.mode == Mode::Bulk {
                return bad(
                    "with only idle connections the run ends after its duration: \
                     give no message count and no bulk mode",
                );
            }
        }
        if self.idle > 0 && self.idle_interval.is_zero() {
            return bad("the idle interval must be more than 0");
        }
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return bad(&format!(
                "size must be between {MIN_SIZE} bytes and {} MiB",
                MAX_SIZE >> 20
            ));
        }
        if !(1..=MAX_PIPELINE).contains(&self.pipeline) {
            return bad(&format!("pipeline must be between 1 and {MAX_PIPELINE}"));
        }
        if self.messages == Some(0) {
            return bad("messages must be at least 1");
        }
        if self.duration.is_zero() && self.messages.is_none() && self.mode != Mode::Bulk {
            return bad("duration must be more than 0 (or give a message count)");
        }
        if self.mode == Mode::Bulk && !(1..=MAX_BULK_BYTES).contains(&self.bulk_bytes) {
            return bad(&format!(
                "bulk size must be more than 0 and at most {} MiB",
                MAX_BULK_BYTES >> 20
            ));
        }
        if self.connect_timeout.is_zero() || self.effective_deadline().is_zero() {
            return bad("connect timeout and deadline must be more than 0");
        }
        Ok(())
    }
}

/// Why a run could not start.
#[derive(Debug)]
pub enum LoadError {
    /// A setting is out of range.
    Config(String),
    /// The connections asked for need more open files than the process
    /// may have, even after raising its soft limit to the hard one.
    OpenFiles {
        /// Files the run needs (one per connection, plus a few).
        needed: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The address did not resolve.
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        source: io::Error,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Config(m) => write!(f, "invalid settings: {m}"),
            LoadError::OpenFiles { needed, limit } => write!(
                f,
                "this run needs about {needed} open files (one per connection and idle \
                 connection) but this process may open only {limit}; raise the hard limit \
                 (`ulimit -Hn` as root, or LimitNOFILE= in a service) or ask for fewer"
            ),
            LoadError::Resolve { addr, source } => crate::client::unresolved(f, addr, source),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Config(_) | LoadError::OpenFiles { .. } => None,
            LoadError::Resolve { source, .. } => Some(source),
        }
    }
}

pub use crate::config::parse_duration;

/// Like [`parse_duration`], but zero is refused.
///
/// # Errors
///
/// A message saying how to write a duration, or that it must be positive.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be more than 0"));
    }
    Ok(d)
}

/// Runs the load described by `cfg` and returns its report. `live` is
/// updated as the run goes (for a progress bar); pass a fresh one.
///
/// Individual connection failures do not stop the run: they are counted in
/// [`Report::errors`].
///
/// # Errors
///
/// [`LoadError::Config`] for settings out of range, [`LoadError::Resolve`]
/// when the address does not resolve, [`LoadError::OpenFiles`] when the
/// connections cannot all be open at once: the soft open-files limit is
/// raised to the hard one first (as Go's runtime does at start), a
/// process-wide change that outlives the run.
pub fn run(cfg: &LoadConfig, live: &Live) -> Result<Report, LoadError> {
    cfg.validate()?;
    let addrs = crate::client::resolve(&cfg.addr).map_err(|source| LoadError::Resolve {
        addr: cfg.addr.clone(),
        source,
    })?;
    // The soft open-files limit goes up to the hard one, the server's way.
    // If it cannot be read, go on: a connect that hits it is reported with
    // a hint.
    let needed = sock::files_needed(cfg.connections, cfg.idle);
    if let Some(limit) = crate::admission::raise_fd_limit(None, 0) {
        if limit < needed {
            return Err(LoadError::OpenFiles { needed, limit });
        }
    }
    let pattern = Pattern::new(cfg.size, cfg.expect);
    let idle_pattern = Pattern::new(IDLE_LINE, cfg.expect);
    let bulk_chunk = if cfg.mode == Mode::Bulk {
        // A whole number of patterns, so the stream position modulo the
        // pattern length stays right across chunks.
        pattern
            .sent
            .repeat((BULK_CHUNK / pattern.sent.len()).max(1))
    } else {
        Vec::new()
    };

    let t0 = Instant::now();
    let warmup_end = t0 + cfg.warmup;
    let timed = cfg.messages.is_none() && cfg.mode != Mode::Bulk;
    let ctx = Ctx {
        cfg,
        live,
        addrs,
        preferred: AtomicUsize::new(0),
        pattern,
        bulk_chunk,
        warmup_end,
        measure_end: timed.then(|| warmup_end + cfg.duration),
        deadline: t0 + cfg.effective_deadline(),
        latency: Mutex::new(new_histogram()),
        first_reply: Mutex::new(new_histogram()),
    };

    let main_done = AtomicBool::new(false);
    let (tallies, idle): (Vec<Tally>, Option<IdleTally>) = thread::scope(|s| {
        let idle = (cfg.idle > 0).then(|| {
            let (ctx, main_done, pattern) = (&ctx, &main_done, &idle_pattern);
            thread::Builder::new()
                .name("poolload-idle".into())
                .spawn_scoped(s, move || idle::idle(ctx, pattern, main_done))
        });
        let mut handles = Vec::with_capacity(cfg.connections);
        let mut failed = Vec::new();
        for idx in 0..cfg.connections {
            let ctx = &ctx;
            let spawned = thread::Builder::new()
                .name(format!("poolload-{idx}"))
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || match ctx.cfg.mode {
                    Mode::Pingpong => pingpong::pingpong(ctx, idx),
                    Mode::Bulk => bulk::bulk(ctx, idx),
                    Mode::Connect => connect::connect_loop(ctx, idx),
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    let mut t = Tally::default();
                    t.error(
                        live,
                        format!(
                            "cannot start a thread per connection ({e}); use fewer --connections"
                        ),
                    );
                    failed.push(t);
                }
            }
        }
        let tallies = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    let mut t = Tally::default();
                    t.error(
                        live,
                        "a connection thread panicked (a bug in poolload)".into(),
                    );
                    t
                })
            })
            .chain(failed)
            .collect();
        // The idle connections end with the main ones; alone, with the
        // measured time.
        if cfg.connections > 0 {
            main_done.store(true, Relaxed);
        }
        let idle = idle.map(|spawned| {
            let joined = spawned.map_err(|e| format!("cannot start its thread ({e})"));
            joined
                .and_then(|h| {
                    h.join()
                        .map_err(|_| "its thread panicked (a bug in poolload)".to_string())
                })
                .unwrap_or_else(IdleTally::failed)
        });
        (tallies, idle)
    });

    // The measured window: from the end of warm-up to the last counted
    // reply (count-bound runs), or to the end of the measured time unless
    // every connection stopped sooner (timed runs).
    let last = |f: fn(&Tally) -> Option<Instant>| tallies.iter().filter_map(f).max();
    let window = match ctx.measure_end {
        Some(end) => {
            let end = ctx.end_of_measure().unwrap_or(end);
            let stopped = last(|t| t.finished)
                .max(idle.as_ref().and_then(|i| i.finished))
                .unwrap_or(warmup_end);
            stopped.min(end).saturating_duration_since(warmup_end)
        }
        None if cfg.mode == Mode::Bulk => last(|t| t.finished)
            .unwrap_or(t0)
            .saturating_duration_since(t0),
        None => last(|t| t.last_counted)
            .unwrap_or(warmup_end)
            .saturating_duration_since(warmup_end),
    };
    let latency = ctx.latency.lock().unwrap_or_else(|e| e.into_inner());
    let first_reply = ctx.first_reply.lock().unwrap_or_else(|e| e.into_inner());
    Ok(build_report(
        cfg,
        &tallies,
        &Measured {
            window,
            latency: &latency,
            first_reply: &first_reply,
            interrupted: live.stopped_at().is_some(),
            idle: idle.as_ref(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_defaults() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").unwrap_err().contains("250ms"));
        assert!(parse_positive_duration("0").is_err());
        let cfg = LoadConfig {
            warmup: Duration::from_secs(2),
            ..LoadConfig::default()
        };
        assert_eq!(cfg.effective_deadline(), Duration::from_secs(42));
        assert!(cfg.validate().is_ok());
        let bad = LoadConfig {
            size: 1,
            ..LoadConfig::default()
        };
        assert!(matches!(bad.validate(), Err(LoadError::Config(_))));
    }

    #[test]
    fn idle_connections_may_stand_alone_in_a_timed_run() {
        let only_idle = LoadConfig {
            connections: 0,
            idle: 10,
            ..LoadConfig::default()
        };
        assert!(only_idle.validate().is_ok());
        for bad in [
            LoadConfig {
                idle: 0,
                ..only_idle.clone()
            },
            LoadConfig {
                messages: Some(5),
                ..only_idle.clone()
            },
            LoadConfig {
                mode: Mode::Bulk,
                ..only_idle.clone()
            },
            LoadConfig {
                idle_interval: Duration::ZERO,
                ..only_idle.clone()
            },
            LoadConfig {
                idle: MAX_IDLE + 1,
                ..only_idle.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(LoadError::Config(_))),
                "{bad:?}"
            );
        }
    }
}
