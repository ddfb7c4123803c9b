//! The monitor thread: every interval, one report of the pool (README, The
//! monitor), and a final one after the last worker has stopped.
//!
//! A report is the [`Stats`] snapshot plus what only makes sense over an
//! interval: connection and byte rates, and queue-wait percentiles of the
//! connections that a worker took during the interval (the monitor keeps
//! the previous cumulative histogram and subtracts it).
//!
//! Text reports are log lines under the target `poolserver::monitor` (this
//! module's path), so the binary's logger decides where they go. JSON
//! reports (one object per line) and pretty ones (`pretty.rs`) go to
//! standard output or the builder's sink.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver};
use hdrhistogram::Histogram;
use log::info;
use serde::ser::{Serialize, SerializeMap};

use crate::config::MonitorFormat;
use crate::queue::QueueLen;
use crate::stats::{percentile, Counters, Stats};

mod pretty;

/// One report: the snapshot and what only makes sense over an interval.
#[derive(Debug)]
struct Report {
    stats: Stats,
    /// Accepted connections, bytes in and bytes out per second.
    per_s: [f64; 3],
    /// Queue-wait percentiles of the interval, in microseconds.
    wait_p50_us: u64,
    wait_p99_us: u64,
    /// Ready-queue wait percentiles of the interval (event dispatch).
    ready_wait_p50_us: u64,
    ready_wait_p99_us: u64,
    last: bool,
}

/// A report field's value, as each format writes it.
enum Value {
    Int(u64),
    /// A rate: a JSON number, and in the text line with this many decimals.
    Rate(f64, usize),
    Text(String),
}

/// Where a field appears.
#[derive(PartialEq)]
enum Shown {
    Everywhere,
    JsonOnly,
}

impl Report {
    fn new(s: &Stats, per_s: [f64; 3], waits: [&Histogram<u64>; 2], last: bool) -> Self {
        let us = |h: &Histogram<u64>, q: f64| percentile(h, q).as_micros() as u64;
        let [queue, ready] = waits;
        Report {
            stats: *s,
            per_s,
            wait_p50_us: us(queue, 50.0),
            wait_p99_us: us(queue, 99.0),
            ready_wait_p50_us: us(ready, 50.0),
            ready_wait_p99_us: us(ready, 99.0),
            last,
        }
    }

    /// Every field, in the order of both the text line and the JSON object:
    /// the contract's fixed fields, then the listed counters of `stats.rs`,
    /// then the JSON-only totals. `final` is added by each format.
    fn fields(&self) -> Vec<(&'static str, Value, Shown)> {
        use Shown::{Everywhere, JsonOnly};
        use Value::{Int, Rate, Text};
        let s = &self.stats;
        let int = |v: usize| Int(v as u64);
        let mut fields = vec![
            ("busy", int(s.busy), Everywhere),
            ("workers", int(s.workers), Everywhere),
            ("queued", int(s.queued), Everywhere),
            ("backlog", int(s.backlog), Everywhere),
            ("live", Int(s.live), Everywhere),
            ("accepted", Int(s.accepted), Everywhere),
            ("rejected", Int(s.rejected), Everywhere),
            ("closed", Int(s.closed), Everywhere),
            ("conn_per_s", Rate(self.per_s[0], 1), Everywhere),
            ("in_bytes_per_s", Rate(self.per_s[1], 0), Everywhere),
            ("out_bytes_per_s", Rate(self.per_s[2], 0), Everywhere),
            ("wait_p50", Text(human_wait(self.wait_p50_us)), Everywhere),
            ("wait_p99", Text(human_wait(self.wait_p99_us)), Everywhere),
            ("wait_p50_us", Int(self.wait_p50_us), JsonOnly),
            ("wait_p99_us", Int(self.wait_p99_us), JsonOnly),
            ("peak_busy", int(s.peak_busy), Everywhere),
            ("peak_queued", int(s.peak_queued), Everywhere),
            ("peak_live", Int(s.peak_live), Everywhere),
        ];
        s.each_listed(|name, v| fields.push((name, Int(v), Everywhere)));
        fields.extend([
            (
                "ready_wait_p50",
                Text(human_wait(self.ready_wait_p50_us)),
                Everywhere,
            ),
            (
                "ready_wait_p99",
                Text(human_wait(self.ready_wait_p99_us)),
                Everywhere,
            ),
            ("ready_wait_p50_us", Int(self.ready_wait_p50_us), JsonOnly),
            ("ready_wait_p99_us", Int(self.ready_wait_p99_us), JsonOnly),
        ]);
        fields.push(("bytes_in", Int(s.bytes_in), JsonOnly));
        fields.push(("bytes_out", Int(s.bytes_out), JsonOnly));
        fields
    }
}

/// The JSON object: every field, then `final`.
impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut map = ser.serialize_map(None)?;
        for (name, value, _) in self.fields() {
            match value {
                Value::Int(v) => map.serialize_entry(name, &v)?,
                Value::Rate(v, _) => map.serialize_entry(name, &v)?,
                Value::Text(v) => map.serialize_entry(name, &v)?,
            }
        }
        map.serialize_entry("final", &self.last)?;
        map.end()
    }
}

pub(crate) struct Monitor {
    pub(crate) interval: Duration,
    pub(crate) format: MonitorFormat,
    pub(crate) output: Option<Box<dyn Write + Send>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) queue: QueueLen,
    /// Event dispatch's `--max-connections` (`None` in connection
    /// dispatch): the pretty report shows parked and ready against it.
    pub(crate) max_live: Option<u64>,
    /// Disconnects when the acceptor and every worker have exited.
    pub(crate) done: Receiver<()>,
}

impl Monitor {
    /// Reports every interval until `done` disconnects, then once more.
    pub(crate) fn run(mut self) {
        let ticker = tick(self.interval);
        let mut prev = Previous {
            at: Instant::now(),
            stats: self.counters.snapshot(0),
            waits: self.counters.wait_histogram(),
            ready_waits: self.counters.ready_wait_histogram(),
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
        let ready_waits = self.counters.ready_wait_histogram();
        let mut interval_ready = ready_waits.clone();
        let _ = interval_ready.subtract(&prev.ready_waits);
        let per_s = [
            rate(stats.accepted, prev.stats.accepted),
            rate(stats.bytes_in, prev.stats.bytes_in),
            rate(stats.bytes_out, prev.stats.bytes_out),
        ];
        let report = Report::new(&stats, per_s, [&interval_waits, &interval_ready], last);
        *prev = Previous {
            at: now,
            stats,
            waits,
            ready_waits,
        };
        match self.format {
            MonitorFormat::Text => info!("{}", text_line(&report)),
            MonitorFormat::Json => {
                let line = serde_json::to_string(&report).expect("a report always serializes");
                self.emit(&line);
            }
            MonitorFormat::Pretty => self.emit(&pretty::render(&report, self.max_live)),
        }
    }

    /// Writes one report to the sink (standard output by default).
    fn emit(&mut self, report: &str) {
        let result = match self.output.as_mut() {
            Some(out) => writeln!(out, "{report}").and_then(|()| out.flush()),
            None => {
                let mut out = io::stdout().lock();
                writeln!(out, "{report}").and_then(|()| out.flush())
            }
        };
        if let Err(e) = result {
            log::warn!("cannot write the monitor report: {e}");
        }
    }
}

struct Previous {
    at: Instant,
    stats: Stats,
    waits: Histogram<u64>,
    ready_waits: Histogram<u64>,
}

/// The `key=value` line, fields in the contract's order.
fn text_line(r: &Report) -> String {
    let mut line = String::new();
    for (name, value, shown) in r.fields() {
        if shown == Shown::JsonOnly {
            continue;
        }
        let sep = if line.is_empty() { "" } else { " " };
        let _ = match value {
            Value::Int(v) => write!(line, "{sep}{name}={v}"),
            Value::Rate(v, decimals) => write!(line, "{sep}{name}={v:.decimals$}"),
            Value::Text(v) => write!(line, "{sep}{name}={v}"),
        };
    }
    if r.last {
        line.push_str(" final=true");
    }
    line
}

/// A wait in microseconds as a short human figure with its unit: `0us`,
/// `850us`, `12.3ms`, `2.50s`.
fn human_wait(us: u64) -> String {
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
        let r = Report::new(&c.snapshot(0), [0.0; 3], [&waits, &waits], false);
        let line = text_line(&r);
        assert!(
            line.starts_with(
                "busy=0 workers=8 queued=0 backlog=1024 live=0 accepted=0 rejected=0 closed=0 "
            ),
            "{line}"
        );
        assert!(line.contains(" wait_p50=1.5ms wait_p99=1.5ms "), "{line}");
        assert!(line.contains(" panics=0"), "{line}");
        assert!(
            line.ends_with(" parked=0 ready=0 ready_wait_p50=1.5ms ready_wait_p99=1.5ms"),
            "{line}"
        );
    }

    #[test]
    fn json_report_has_integer_counters() {
        let c = Counters::new(2, 4);
        let r = Report::new(
            &c.snapshot(1),
            [1.5, 0.0, 0.0],
            [&crate::stats::new_wait_histogram(); 2],
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
        for key in ["parked", "ready", "ready_wait_p50_us", "ready_wait_p99_us"] {
            assert!(v[key].is_u64(), "{key} in {v}");
        }
    }

    #[test]
    fn text_and_json_keep_the_contract_order() {
        let c = Counters::new(2, 4);
        c.panic();
        c.accept_error();
        let r = Report::new(
            &c.snapshot(0),
            [0.25, 10.4, 7.0],
            [&crate::stats::new_wait_histogram(); 2],
            true,
        );
        // Counters added to the list later come after these, before `final`.
        let line = text_line(&r);
        assert!(
            line.starts_with(
                "busy=0 workers=2 queued=0 backlog=4 live=0 accepted=0 rejected=0 closed=0 \
                 conn_per_s=0.2 in_bytes_per_s=10 out_bytes_per_s=7 wait_p50=0us wait_p99=0us \
                 peak_busy=0 peak_queued=0 peak_live=0 panics=1 idle_timeouts=0 slow_clients=0 \
                 write_timeouts=0 io_errors=0 accept_errors=1"
            ),
            "{line}"
        );
        assert!(line.ends_with(" final=true"), "{line}");
        let json = serde_json::to_string(&r).unwrap();
        let keys: Vec<&str> = json
            .split(['{', ','])
            .filter_map(|kv| kv.split(':').next()?.strip_prefix('"')?.strip_suffix('"'))
            .collect();
        assert_eq!(
            keys[..24],
            [
                "busy",
                "workers",
                "queued",
                "backlog",
                "live",
                "accepted",
                "rejected",
                "closed",
                "conn_per_s",
                "in_bytes_per_s",
                "out_bytes_per_s",
                "wait_p50",
                "wait_p99",
                "wait_p50_us",
                "wait_p99_us",
                "peak_busy",
                "peak_queued",
                "peak_live",
                "panics",
                "idle_timeouts",
                "slow_clients",
                "write_timeouts",
                "io_errors",
                "accept_errors",
            ]
        );
        assert_eq!(keys[keys.len() - 3..], ["bytes_in", "bytes_out", "final"]);
        assert!(json.contains(r#""conn_per_s":0.25,"#), "{json}");
    }
}
