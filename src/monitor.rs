//! The monitor thread: every interval, one report of the pool (contract §3),
//! and a final one after the last worker has stopped.
//!
//! A report is the [`Stats`] snapshot plus what only makes sense over an
//! interval: connection and byte rates, and queue-wait percentiles of the
//! connections that a worker took during the interval (the monitor keeps
//! the previous cumulative histogram and subtracts it).
//!
//! Text reports are log lines under the target `poolserver::monitor` (this
//! module's path), so the binary's logger decides where they go. JSON
//! reports go to standard output (or the builder's sink), one object per
//! line.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver, Sender};
use hdrhistogram::Histogram;
use log::info;
use serde::Serialize;

use crate::config::MonitorFormat;
use crate::queue::QueueLen;
use crate::stats::{percentile, Counters, Stats};

/// One report: the snapshot's figures and the interval's, flat, in the
/// order the text line prints them.
#[derive(Debug, Serialize)]
struct Report {
    busy: usize,
    workers: usize,
    queued: usize,
    backlog: usize,
    live: u64,
    accepted: u64,
    rejected: u64,
    closed: u64,
    conn_per_s: f64,
    in_bytes_per_s: f64,
    out_bytes_per_s: f64,
    /// Queue-wait percentiles of the interval, as the text line shows them.
    wait_p50: String,
    wait_p99: String,
    /// The same in microseconds, for machines.
    wait_p50_us: u64,
    wait_p99_us: u64,
    peak_busy: usize,
    peak_queued: usize,
    peak_live: u64,
    panics: u64,
    idle_timeouts: u64,
    slow_clients: u64,
    write_timeouts: u64,
    io_errors: u64,
    accept_errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    #[serde(rename = "final")]
    last: bool,
}

impl Report {
    fn new(s: &Stats, per_s: [f64; 3], waits: &Histogram<u64>, last: bool) -> Self {
        let p50 = percentile(waits, 50.0).as_micros() as u64;
        let p99 = percentile(waits, 99.0).as_micros() as u64;
        Report {
            busy: s.busy,
            workers: s.workers,
            queued: s.queued,
            backlog: s.backlog,
            live: s.live,
            accepted: s.accepted,
            rejected: s.rejected,
            closed: s.closed,
            conn_per_s: per_s[0],
            in_bytes_per_s: per_s[1],
            out_bytes_per_s: per_s[2],
            wait_p50: micros(p50),
            wait_p99: micros(p99),
            wait_p50_us: p50,
            wait_p99_us: p99,
            peak_busy: s.peak_busy,
            peak_queued: s.peak_queued,
            peak_live: s.peak_live,
            panics: s.panics,
            idle_timeouts: s.idle_timeouts,
            slow_clients: s.slow_clients,
            write_timeouts: s.write_timeouts,
            io_errors: s.io_errors,
            accept_errors: s.accept_errors,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            last,
        }
    }
}

pub(crate) struct Monitor {
    pub(crate) interval: Duration,
    pub(crate) format: MonitorFormat,
    pub(crate) output: Option<Box<dyn Write + Send>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) queue: QueueLen,
    /// Disconnects when the acceptor and every worker have exited.
    pub(crate) done: Receiver<()>,
}

impl Monitor {
    pub(crate) fn spawn(self, ready: Sender<()>) -> io::Result<JoinHandle<()>> {
        thread::Builder::new()
            .name("poolserver-monitor".into())
            .spawn(move || {
                let _ = ready.send(());
                drop(ready);
                self.run();
            })
    }

    fn run(mut self) {
        let ticker = tick(self.interval);
        let mut prev = Previous {
            at: Instant::now(),
            stats: self.counters.snapshot(0),
            waits: self.counters.wait_histogram(),
        };
        loop {
            select! {
                recv(ticker) -> _ => self.report(&mut prev, false),
                recv(self.done) -> _ => {
                    self.report(&mut prev, true);
                    return;
                }
            }
        }
    }

    fn report(&mut self, prev: &mut Previous, last: bool) {
        let now = Instant::now();
        let stats = self.counters.snapshot(self.queue.get());
        let waits = self.counters.wait_histogram();
        let secs = now.duration_since(prev.at).as_secs_f64().max(1e-9);
        let rate = |cur: u64, old: u64| cur.saturating_sub(old) as f64 / secs;
        let mut interval_waits = waits.clone();
        // `waits` only ever grows from `prev.waits`, so this cannot fail.
        let _ = interval_waits.subtract(&prev.waits);
        let per_s = [
            rate(stats.accepted, prev.stats.accepted),
            rate(stats.bytes_in, prev.stats.bytes_in),
            rate(stats.bytes_out, prev.stats.bytes_out),
        ];
        let report = Report::new(&stats, per_s, &interval_waits, last);
        *prev = Previous {
            at: now,
            stats,
            waits,
        };
        match self.format {
            MonitorFormat::Text => info!("{}", text_line(&report)),
            MonitorFormat::Json => {
                let line = serde_json::to_string(&report).expect("a report always serializes");
                let result = match self.output.as_mut() {
                    Some(out) => writeln!(out, "{line}").and_then(|()| out.flush()),
                    None => {
                        let mut out = io::stdout().lock();
                        writeln!(out, "{line}").and_then(|()| out.flush())
                    }
                };
                if let Err(e) = result {
                    log::warn!("cannot write the monitor report: {e}");
                }
            }
        }
    }
}

struct Previous {
    at: Instant,
    stats: Stats,
    waits: Histogram<u64>,
}

/// The `key=value` line, fields in the contract's order.
fn text_line(r: &Report) -> String {
    let mut line = format!(
        "busy={} workers={} queued={} backlog={} live={} accepted={} rejected={} closed={}",
        r.busy, r.workers, r.queued, r.backlog, r.live, r.accepted, r.rejected, r.closed
    );
    let _ = write!(
        line,
        " conn_per_s={:.1} in_bytes_per_s={:.0} out_bytes_per_s={:.0} wait_p50={} wait_p99={} \
         peak_busy={} peak_queued={} peak_live={} panics={}",
        r.conn_per_s,
        r.in_bytes_per_s,
        r.out_bytes_per_s,
        r.wait_p50,
        r.wait_p99,
        r.peak_busy,
        r.peak_queued,
        r.peak_live,
        r.panics,
    );
    let _ = write!(
        line,
        " idle_timeouts={} slow_clients={} write_timeouts={} io_errors={} accept_errors={}",
        r.idle_timeouts, r.slow_clients, r.write_timeouts, r.io_errors, r.accept_errors
    );
    if r.last {
        line.push_str(" final=true");
    }
    line
}

/// A wait as a short human figure with its unit: `0us`, `850us`, `12.3ms`,
/// `2.50s`.
fn micros(us: u64) -> String {
    match us {
        0..=999 => format!("{us}us"),
        1_000..=999_999 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_line_has_contract_fields_in_order() {
        let c = Counters::new(8, 1024);
        let mut waits = crate::stats::new_wait_histogram();
        waits.record(1500).unwrap();
        let r = Report::new(&c.snapshot(0), [0.0; 3], &waits, false);
        let line = text_line(&r);
        assert!(
            line.starts_with(
                "busy=0 workers=8 queued=0 backlog=1024 live=0 accepted=0 rejected=0 closed=0 "
            ),
            "{line}"
        );
        assert!(line.contains(" wait_p50=1.5ms wait_p99=1.5ms "), "{line}");
        assert!(line.contains(" panics=0"), "{line}");
    }

    #[test]
    fn json_report_has_integer_counters() {
        let c = Counters::new(2, 4);
        let r = Report::new(
            &c.snapshot(1),
            [1.5, 0.0, 0.0],
            &crate::stats::new_wait_histogram(),
            true,
        );
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "busy", "workers", "queued", "backlog", "live", "accepted", "rejected", "closed",
        ] {
            assert!(v[key].is_u64(), "{key} in {v}");
        }
        assert_eq!(v["queued"], 1);
        assert_eq!(v["final"], true);
        assert!(v["wait_p99_us"].is_u64());
    }
}
