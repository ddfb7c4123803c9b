//! `--monitor-format pretty`: the report as a person reads it at a glance in
//! a terminal — occupancy bars for the workers and the accept queue, then
//! live connections, rates and the interval's queue waits, on one line:
//!
//! ```text
//! workers [#####.....] 5/8  queue [..........] 0/1024  live 5  123 conn/s  in 1.2 MB/s  out 1.2 MB/s  wait p50 26us p99 33us
//! ```
//!
//! In event dispatch the line also shows `parked [bar] n/--max-connections`,
//! the ready queue's length and the interval's ready-queue wait.
//!
//! A second, indented line appears only once something went wrong since
//! start (connections turned away or ended early, panics, accept errors),
//! and names only the counts that are not zero. The `key=value` and JSON
//! formats stay the ones machines parse; this one may change its wording.

use std::fmt::Write as _;

use super::{human_wait, Report};

/// Cells in an occupancy bar.
const BAR: usize = 10;

/// One report: one line, or two when something went wrong since start.
/// `max_live` is event dispatch's `--max-connections` (`None` in
/// connection dispatch); with it the line also shows the parked
/// connections against that limit, the ready queue, and its wait.
pub(super) fn render(r: &Report, max_live: Option<u64>) -> String {
    let s = &r.stats;
    let mut out = format!(
        "workers {} {}/{}  queue {} {}/{}  ",
        bar(s.busy as u64, s.workers as u64),
        s.busy,
        s.workers,
        bar(s.queued as u64, s.backlog as u64),
        s.queued,
        s.backlog,
    );
    if let Some(max) = max_live {
        let _ = write!(
            out,
            "parked {} {}/{max}  ready {}  ",
            bar(s.parked, max),
            s.parked,
            s.ready
        );
    }
    let _ = write!(
        out,
        "live {}  {}  in {}  out {}  wait p50 {} p99 {}",
        s.live,
        conn_rate(r.per_s[0]),
        byte_rate(r.per_s[1]),
        byte_rate(r.per_s[2]),
        human_wait(r.wait_p50_us),
        human_wait(r.wait_p99_us),
    );
    if max_live.is_some() {
        let _ = write!(
            out,
            "  ready wait p50 {} p99 {}",
            human_wait(r.ready_wait_p50_us),
            human_wait(r.ready_wait_p99_us)
        );
    }
    if r.last {
        out.push_str("  (final)");
    }
    let reasons = [
        ("queue_full", s.rejected_queue_full),
        ("queue_timeout", s.rejected_queue_timeout),
        ("shutdown", s.rejected_shutdown),
        ("no_fds", s.rejected_no_fds),
    ];
    let trouble = [
        ("idle", s.idle_timeouts),
        ("slow", s.slow_clients),
        ("write timeouts", s.write_timeouts),
        ("io errors", s.io_errors),
        ("proxy refused", s.proxy_refused),
        ("panics", s.panics),
        ("accept errors", s.accept_errors),
    ];
    if s.rejected == 0 && trouble.iter().all(|&(_, n)| n == 0) {
        return out;
    }
    out.push_str("\n  since start:");
    if s.rejected > 0 {
        let why: Vec<String> = reasons
            .iter()
            .filter(|&&(_, n)| n > 0)
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
        let _ = write!(out, "  rejected {} ({})", s.rejected, why.join(", "));
    }
    for (what, n) in trouble.into_iter().filter(|&(_, n)| n > 0) {
        let _ = write!(out, "  {what} {n}");
    }
    out
}

/// `[###.......]`: empty only at 0 and full only at capacity, so a nearly
/// idle or nearly full pool never looks idle or full.
fn bar(n: u64, capacity: u64) -> String {
    let cells = BAR as u64;
    let filled = match n {
        0 => 0,
        _ if n >= capacity => cells,
        _ => ((n * cells + capacity / 2) / capacity).clamp(1, cells - 1),
    } as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR - filled))
}

fn conn_rate(per_s: f64) -> String {
    if per_s < 10.0 {
        format!("{per_s:.1} conn/s")
    } else {
        format!("{per_s:.0} conn/s")
    }
}

/// Bytes per second in SI units, three significant figures at most.
fn byte_rate(per_s: f64) -> String {
    match per_s {
        x if x < 1e3 => format!("{x:.0} B/s"),
        x if x < 1e6 => format!("{:.1} kB/s", x / 1e3),
        x if x < 1e9 => format!("{:.1} MB/s", x / 1e6),
        x => format!("{:.1} GB/s", x / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_wait_histogram, Counters};

    fn report(busy: usize, queued: usize, per_s: [f64; 3], waits_us: &[u64]) -> Report {
        let mut s = Counters::new(8, 1024).snapshot(queued);
        s.busy = busy;
        s.live = (busy + queued) as u64;
        let mut h = new_wait_histogram();
        for &w in waits_us {
            h.record(w).unwrap();
        }
        Report::new(&s, per_s, [&h, &new_wait_histogram()], false)
    }

    #[test]
    fn an_idle_pool_is_one_line_of_empty_bars() {
        let r = report(0, 0, [0.0; 3], &[]);
        assert_eq!(
            render(&r, None),
            "workers [..........] 0/8  queue [..........] 0/1024  live 0  0.0 conn/s  \
             in 0 B/s  out 0 B/s  wait p50 0us p99 0us"
        );
    }

    #[test]
    fn a_busy_pool_shows_bars_rates_and_waits() {
        let r = report(5, 1, [123.4, 1_234_567.0, 999.0], &[26, 26, 33]);
        assert_eq!(
            render(&r, None),
            "workers [######....] 5/8  queue [#.........] 1/1024  live 6  123 conn/s  \
             in 1.2 MB/s  out 999 B/s  wait p50 26us p99 33us"
        );
        let full = report(8, 1024, [2.5, 12_345.0, 3.2e9], &[1500]);
        assert_eq!(
            render(&full, None),
            "workers [##########] 8/8  queue [##########] 1024/1024  live 1032  2.5 conn/s  \
             in 12.3 kB/s  out 3.2 GB/s  wait p50 1.5ms p99 1.5ms"
        );
    }

    #[test]
    fn event_dispatch_adds_parked_ready_and_the_ready_wait() {
        let mut r = report(2, 0, [40.0, 2_000.0, 2_000.0], &[12]);
        r.stats.parked = 800;
        r.stats.ready = 3;
        r.stats.live = 805;
        r.ready_wait_p50_us = 40;
        r.ready_wait_p99_us = 1_200;
        assert_eq!(
            render(&r, Some(10_000)),
            "workers [###.......] 2/8  queue [..........] 0/1024  parked [#.........] 800/10000  \
             ready 3  live 805  40 conn/s  in 2.0 kB/s  out 2.0 kB/s  wait p50 12us p99 12us  \
             ready wait p50 40us p99 1.2ms"
        );
    }

    #[test]
    fn trouble_gets_a_second_line_naming_only_what_happened() {
        let mut r = report(1, 0, [0.0; 3], &[]);
        r.stats.rejected = 3;
        r.stats.rejected_queue_full = 2;
        r.stats.rejected_shutdown = 1;
        r.stats.idle_timeouts = 2;
        r.last = true;
        assert_eq!(
            render(&r, None),
            "workers [#.........] 1/8  queue [..........] 0/1024  live 1  0.0 conn/s  \
             in 0 B/s  out 0 B/s  wait p50 0us p99 0us  (final)\n  since start:  rejected 3 \
             (queue_full 2, shutdown 1)  idle 2"
        );
    }

    #[test]
    fn event_dispatch_shows_parked_against_max_connections() {
        let mut s = Counters::new(2, 4).snapshot(0);
        s.parked = 300;
        s.ready = 2;
        let mut ready = new_wait_histogram();
        ready.record(1500).unwrap();
        let r = Report::new(&s, [0.0; 3], [&new_wait_histogram(), &ready], false);
        let line = render(&r, Some(10_000));
        assert!(
            line.contains("  parked [#.........] 300/10000  ready 2  live "),
            "{line}"
        );
        assert!(line.ends_with("  ready wait p50 1.5ms p99 1.5ms"), "{line}");
        // Connection dispatch has neither, whatever the gauges say.
        assert!(!render(&r, None).contains("parked"));
    }
}
