//! The [`Report`] of a run (the `--json` line is it, serialized), its text
//! form, and the pure math that turns per-connection tallies and the
//! latency histograms into it.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::tally::{IdleTally, Tally, MAX_EXAMPLES};
use super::{Expect, LoadConfig, Mode};

/// The result of a run; the `--json` line is this, serialized.
///
/// Latencies are in microseconds; `MB` is 10^6 bytes. Fields that do not
/// apply to a mode are 0 (latency percentiles in bulk mode,
/// `connects_per_sec` outside connect mode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The mode that ran.
    pub mode: Mode,
    /// The address as given.
    pub addr: String,
    /// What a correct reply was.
    pub expect: Expect,
    /// Connections (or connect loops) asked for.
    pub connections: usize,
    /// Message size in bytes.
    pub size: usize,
    /// Messages in flight per connection.
    pub pipeline: usize,
    /// The measured time, in seconds, that the rates divide by.
    pub duration_s: f64,
    /// Round trips counted (connect mode: whole cycles; bulk mode: message
    /// lines whose reply was read in full).
    pub round_trips: u64,
    /// `round_trips / duration_s`.
    pub rt_per_sec: f64,
    /// Reply bytes counted (bulk mode: every reply byte read and compared).
    pub bytes_verified: u64,
    /// `bytes_verified / duration_s`, in MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Median latency (pingpong: send to reply complete; connect: whole
    /// cycle).
    pub p50_us: u64,
    /// 90th percentile latency.
    pub p90_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
    /// 99.9th percentile latency.
    pub p999_us: u64,
    /// Highest latency.
    pub max_us: u64,
    /// Replies that differed from the expected bytes (plus unexpected bytes
    /// after the last reply).
    pub wrong_replies: u64,
    /// Connections that failed: refused, reset, closed early, timed out.
    pub errors: u64,
    /// Connections that connected but got no reply within the run (they
    /// waited in the server's accept queue), then were closed.
    pub never_served: u64,
    /// Connections answered with a `BUSY` line instead of a reply.
    pub rejected: u64,
    /// Fewest round trips counted on one connection (loop).
    pub fewest_rt: u64,
    /// Most round trips counted on one connection (loop).
    pub most_rt: u64,
    /// Median time from connect to the first complete reply: the accept
    /// queue's wait as seen from outside.
    pub first_reply_p50_us: u64,
    /// 99th percentile of the same.
    pub first_reply_p99_us: u64,
    /// Longest of the same.
    pub first_reply_max_us: u64,
    /// Connect mode: counted cycles per second.
    pub connects_per_sec: f64,
    /// Idle connections asked for ([`LoadConfig::idle`]); none of the
    /// `idle_*` figures is part of the ones above.
    pub idle_connections: usize,
    /// Seconds between the lines of each idle connection.
    pub idle_interval_s: f64,
    /// Idle connections that had at least one correct reply.
    pub idle_served: u64,
    /// Idle connections without a correct reply by the end that did not
    /// fail: they waited in the server's queue (or had not connected yet;
    /// connects are paced).
    pub idle_never_served: u64,
    /// Of `idle_never_served`, those that had not even connected by the
    /// end (connects are paced; a full listen queue slows them down).
    pub idle_not_connected: u64,
    /// Idle connections answered with a `BUSY` line.
    pub idle_rejected: u64,
    /// Idle round trips counted (sent after the warm-up, answered within
    /// the run).
    pub idle_round_trips: u64,
    /// Idle replies that differed from the expected bytes.
    pub idle_wrong: u64,
    /// Idle connections that failed (connect refused or timed out, reset,
    /// closed by the server); examples are in `error_examples`.
    pub idle_errors: u64,
    /// Median idle round-trip latency.
    pub idle_p50_us: u64,
    /// 99th percentile of the same.
    pub idle_p99_us: u64,
    /// The hard deadline passed before the run finished: counts are
    /// incomplete.
    pub cut_by_deadline: bool,
    /// The run was ended early by [`Live::stop`](super::Live::stop) (Ctrl-C): the figures
    /// cover the time until then. Not a failure by itself.
    pub interrupted: bool,
    /// A few distinct error messages (and notes on unexpected bytes after
    /// the last reply), each with how often it happened.
    pub error_examples: Vec<String>,
}

impl Report {
    /// True when every reply was right, nothing failed and the run was not
    /// cut. Unserved and rejected connections are not failures by
    /// themselves.
    pub fn passed(&self) -> bool {
        self.all_wrong() == 0 && self.all_errors() == 0 && !self.cut_by_deadline
    }

    /// Wrong replies, main and idle.
    fn all_wrong(&self) -> u64 {
        self.wrong_replies + self.idle_wrong
    }

    /// Errors, main and idle.
    fn all_errors(&self) -> u64 {
        self.errors + self.idle_errors
    }

    /// One sentence saying what went wrong, or `None` if [`passed`](Self::passed).
    pub fn failure_summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        let (wrong, errors) = (self.all_wrong(), self.all_errors());
        if wrong > 0 {
            parts.push(format!(
                "{wrong} wrong {} (bytes differed from the {} expected)",
                plural(wrong, "reply", "replies"),
                match self.expect {
                    Expect::Upper => "uppercase reply",
                    Expect::Echo => "echo",
                }
            ));
        }
        if errors > 0 {
            let example = self
                .error_examples
                .first()
                .map(|e| format!(", e.g. {e}"))
                .unwrap_or_default();
            parts.push(format!(
                "{errors} {}{example}",
                plural(errors, "error", "errors")
            ));
        }
        if self.cut_by_deadline {
            parts.push("the run hit its --deadline before finishing".to_string());
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

pub(super) fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "poolload: {} mode, {} {} to {}, {}-byte messages, pipeline {}, expecting {} replies",
            self.mode,
            self.connections,
            plural(self.connections as u64, "connection", "connections"),
            self.addr,
            self.size,
            self.pipeline,
            match self.expect {
                Expect::Upper => "uppercase",
                Expect::Echo => "echo",
            }
        )?;
        writeln!(f, "  measured       {:.3} s", self.duration_s)?;
        let what = match self.mode {
            Mode::Pingpong => "round trips",
            Mode::Bulk => "messages",
            Mode::Connect => "cycles",
        };
        writeln!(
            f,
            "  {what:<14} {} ({:.1}/s); per connection fewest {}, most {}",
            self.round_trips, self.rt_per_sec, self.fewest_rt, self.most_rt
        )?;
        writeln!(
            f,
            "  throughput     {:.2} MB/s of verified replies ({} bytes; MB = 10^6 bytes)",
            self.mb_per_sec, self.bytes_verified
        )?;
        if self.mode == Mode::Connect {
            writeln!(f, "  connects       {:.1}/s", self.connects_per_sec)?;
        }
        if self.mode != Mode::Bulk {
            writeln!(
                f,
                "  latency        p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
                self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
            )?;
        }
        writeln!(
            f,
            "  first reply    p50 {} us, p99 {} us, max {} us (connect to first reply)",
            self.first_reply_p50_us, self.first_reply_p99_us, self.first_reply_max_us
        )?;
        writeln!(
            f,
            "  never served   {}, rejected (BUSY) {}",
            self.never_served, self.rejected
        )?;
        if self.idle_connections > 0 {
            writeln!(
                f,
                "  idle           {} {}, a line every {:.3} s: served {}, never served {} \
                 ({} not connected), rejected (BUSY) {}",
                self.idle_connections,
                plural(self.idle_connections as u64, "connection", "connections"),
                self.idle_interval_s,
                self.idle_served,
                self.idle_never_served,
                self.idle_not_connected,
                self.idle_rejected
            )?;
            writeln!(
                f,
                "  idle replies   {} round trips, p50 {} us, p99 {} us; wrong {}, errors {}",
                self.idle_round_trips,
                self.idle_p50_us,
                self.idle_p99_us,
                self.idle_wrong,
                self.idle_errors
            )?;
        }
        write!(
            f,
            "  wrong replies  {}, errors {}, cut by deadline: {}",
            self.wrong_replies,
            self.errors,
            if self.cut_by_deadline { "yes" } else { "no" }
        )?;
        if self.interrupted {
            write!(
                f,
                "\n  interrupted    stopped early (Ctrl-C); the figures cover the {:.3} s measured",
                self.duration_s
            )?;
        }
        for e in &self.error_examples {
            write!(f, "\n  error          {e}")?;
        }
        Ok(())
    }
}

/// The measured window and the histograms, as the drivers left them.
#[derive(Debug)]
pub(super) struct Measured<'h> {
    /// The measured time the rates divide by.
    pub(super) window: Duration,
    /// Round-trip (cycle) latencies.
    pub(super) latency: &'h Histogram<u64>,
    /// Connect-to-first-reply times.
    pub(super) first_reply: &'h Histogram<u64>,
    /// The run was stopped early.
    pub(super) interrupted: bool,
    /// What the idle connections did, if there were any.
    pub(super) idle: Option<&'h IdleTally>,
}

/// Turns per-connection tallies into the report.
pub(super) fn build_report(cfg: &LoadConfig, tallies: &[Tally], m: &Measured<'_>) -> Report {
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let round_trips = sum(|t| t.counted);
    let bytes_verified = sum(|t| t.bytes);
    let secs = m.window.as_secs_f64();
    let rate = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
    let q = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    let bulk = cfg.mode == Mode::Bulk;
    let idle = |f: fn(&IdleTally) -> u64| m.idle.map_or(0, f);

    // Distinct error messages with counts, most frequent first.
    let mut examples: Vec<(String, u64)> = Vec::new();
    let idle_messages = m.idle.iter().flat_map(|i| &i.error_messages);
    for msg in tallies
        .iter()
        .flat_map(|t| &t.error_messages)
        .chain(idle_messages)
    {
        match examples.iter_mut().find(|(m, _)| m == msg) {
            Some((_, n)) => *n += 1,
            None => examples.push((msg.clone(), 1)),
        }
    }
    examples.sort_by_key(|e| std::cmp::Reverse(e.1));
    let error_examples = examples
        .into_iter()
        .take(MAX_EXAMPLES)
        .map(|(m, n)| if n > 1 { format!("{m} (x{n})") } else { m })
        .collect();

    Report {
        mode: cfg.mode,
        addr: cfg.addr.clone(),
        expect: cfg.expect,
        connections: cfg.connections,
        size: cfg.size,
        pipeline: cfg.pipeline,
        duration_s: secs,
        round_trips,
        rt_per_sec: rate(round_trips as f64),
        bytes_verified,
        mb_per_sec: rate(bytes_verified as f64) / 1e6,
        p50_us: if bulk { 0 } else { q(m.latency, 0.5) },
        p90_us: if bulk { 0 } else { q(m.latency, 0.9) },
        p99_us: if bulk { 0 } else { q(m.latency, 0.99) },
        p999_us: if bulk { 0 } else { q(m.latency, 0.999) },
        max_us: if bulk || m.latency.is_empty() {
            0
        } else {
            m.latency.max()
        },
        wrong_replies: sum(|t| t.wrong),
        errors: sum(|t| t.errors),
        never_served: sum(|t| t.never_served),
        rejected: sum(|t| t.rejected),
        fewest_rt: tallies.iter().map(|t| t.counted).min().unwrap_or(0),
        most_rt: tallies.iter().map(|t| t.counted).max().unwrap_or(0),
        first_reply_p50_us: q(m.first_reply, 0.5),
        first_reply_p99_us: q(m.first_reply, 0.99),
        first_reply_max_us: if m.first_reply.is_empty() {
            0
        } else {
            m.first_reply.max()
        },
        connects_per_sec: if cfg.mode == Mode::Connect {
            rate(round_trips as f64)
        } else {
            0.0
        },
        idle_connections: cfg.idle,
        idle_interval_s: if cfg.idle > 0 {
            cfg.idle_interval.as_secs_f64()
        } else {
            0.0
        },
        idle_served: idle(|i| i.served),
        idle_never_served: idle(|i| i.never_served),
        idle_not_connected: idle(|i| i.not_connected),
        idle_rejected: idle(|i| i.rejected),
        idle_round_trips: idle(|i| i.round_trips),
        idle_wrong: idle(|i| i.wrong),
        idle_errors: idle(|i| i.errors),
        idle_p50_us: m.idle.map_or(0, |i| q(&i.latency, 0.5)),
        idle_p99_us: m.idle.map_or(0, |i| q(&i.latency, 0.99)),
        cut_by_deadline: tallies.iter().any(|t| t.cut) || m.idle.is_some_and(|i| i.cut),
        interrupted: m.interrupted,
        error_examples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::tally::new_histogram;
    use crate::load::Live;

    fn tally(counted: u64) -> Tally {
        Tally {
            counted,
            bytes: counted * 64,
            ..Tally::default()
        }
    }

    #[test]
    fn report_math() {
        let cfg = LoadConfig {
            connections: 3,
            ..LoadConfig::default()
        };
        let mut lat = new_histogram();
        for us in 1..=1000 {
            lat.record(us).unwrap();
        }
        let mut first = new_histogram();
        first.record(500).unwrap();
        first.record(1500).unwrap();
        let mut broken = tally(0);
        broken.error(&Live::default(), "boom".into());
        broken.error(&Live::default(), "boom".into());
        broken.never_served = 1;
        let tallies = [tally(100), tally(300), broken];
        let r = build_report(
            &cfg,
            &tallies,
            &Measured {
                window: Duration::from_secs(2),
                latency: &lat,
                first_reply: &first,
                interrupted: false,
                idle: None,
            },
        );
        assert_eq!(r.round_trips, 400);
        assert_eq!(r.rt_per_sec, 200.0);
        assert_eq!(r.bytes_verified, 400 * 64);
        assert!((r.mb_per_sec - 400.0 * 64.0 / 2.0 / 1e6).abs() < 1e-12);
        assert_eq!((r.fewest_rt, r.most_rt), (0, 300));
        assert_eq!(r.p50_us, 500);
        assert_eq!(r.p90_us, 900);
        assert_eq!(r.p99_us, 990);
        assert_eq!(r.p999_us, 999);
        assert_eq!(r.max_us, 1000);
        assert_eq!(r.first_reply_max_us, 1500);
        assert_eq!((r.errors, r.never_served, r.wrong_replies), (2, 1, 0));
        assert_eq!(r.error_examples, ["boom (x2)"]);
        assert_eq!(r.connects_per_sec, 0.0);
        assert!(!r.passed());
        assert!(r.failure_summary().unwrap().contains("2 errors, e.g. boom"));
    }

    #[test]
    fn idle_figures_are_apart_but_fail_the_run() {
        let cfg = LoadConfig {
            connections: 0,
            idle: 5,
            ..LoadConfig::default()
        };
        let h = new_histogram();
        let mut idle = IdleTally::new();
        (idle.served, idle.never_served, idle.round_trips) = (3, 1, 30);
        idle.error("reset".into());
        idle.latency.record(100).unwrap();
        let r = build_report(
            &cfg,
            &[],
            &Measured {
                window: Duration::from_secs(1),
                latency: &h,
                first_reply: &h,
                interrupted: false,
                idle: Some(&idle),
            },
        );
        assert_eq!((r.idle_connections, r.idle_served), (5, 3));
        assert_eq!((r.idle_never_served, r.idle_errors), (1, 1));
        assert_eq!((r.idle_round_trips, r.idle_p50_us), (30, 100));
        assert_eq!((r.round_trips, r.errors, r.never_served), (0, 0, 0));
        assert_eq!(r.error_examples, ["idle: reset"]);
        assert!(!r.passed());
        assert!(r
            .failure_summary()
            .unwrap()
            .contains("1 error, e.g. idle: reset"));
        assert!(r.to_string().contains("served 3, never served 1"), "{r}");
    }

    #[test]
    fn empty_run_reports_zeros_not_nan() {
        let cfg = LoadConfig::default();
        let h = new_histogram();
        let r = build_report(
            &cfg,
            &[tally(0)],
            &Measured {
                window: Duration::ZERO,
                latency: &h,
                first_reply: &h,
                interrupted: false,
                idle: None,
            },
        );
        assert_eq!(
            (r.rt_per_sec, r.mb_per_sec, r.p50_us, r.max_us),
            (0.0, 0.0, 0, 0)
        );
        assert!(r.passed());
        assert_eq!(r.failure_summary(), None);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"mode\":\"pingpong\""), "{json}");
    }
}
