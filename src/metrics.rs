//! The Prometheus exposition: what `GET /metrics` answers, built at scrape
//! time from the server's own counters.
//!
//! There is no second set of books. A scrape takes the same [`Stats`]
//! snapshot that [`Server::stats`](crate::Server::stats) and the monitor
//! take, plus a copy of the queue-wait histogram, and encodes them with the
//! official `prometheus-client` crate through a custom [`Collector`]. So the
//! metrics agree with the monitor by construction, and the hot path pays
//! nothing for them.
//!
//! The output is the Prometheus text format 0.0.4
//! (`encoding::prometheus_text`), not the crate's default OpenMetrics
//! text, which `promtool check metrics` rejects. Counters are described
//! without `_total`; the encoder appends it.
//!
//! The HTTP side (one bounded thread) lives in [`http`].

pub(crate) mod http;

use std::fmt;
use std::sync::Arc;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::queue::QueueLen;
use crate::stats::{Counters, Stats};

/// The `Content-Type` of the text format 0.0.4.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the queue-wait histogram's buckets: 100 µs to
/// 10 s in 1-2.5-5 steps. A wait beyond 10 s only reaches `+Inf`.
const WAIT_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Reads the server's counters at scrape time.
#[derive(Debug)]
pub(crate) struct Exporter {
    counters: Arc<Counters>,
    queue: QueueLen,
    /// Event dispatch's `--max-connections`; `None` in connection
    /// dispatch, where the event-only series are left out.
    max_live: Option<u64>,
}

impl Exporter {
    pub(crate) fn new(counters: Arc<Counters>, queue: QueueLen, max_live: Option<u64>) -> Self {
        Exporter {
            counters,
            queue,
            max_live,
        }
    }

    /// One whole exposition, as the endpoint sends it.
    pub(crate) fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::with_prefix("poolserver");
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; the collector itself returns
        // only the writer's errors.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

impl Collector for Exporter {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.counters.snapshot(self.queue.get());
        let waits = self.counters.wait_histogram();
        let event = self.max_live.map(|max| Event {
            max_live: max,
            ready_waits: self.counters.ready_wait_histogram(),
        });
        encode(&stats, &waits, event.as_ref(), encoder)
    }
}

/// What only event dispatch exposes.
struct Event {
    max_live: u64,
    ready_waits: Histogram<u64>,
}

/// The metric families, in the order they are exposed.
fn encode(
    s: &Stats,
    waits: &Histogram<u64>,
    event: Option<&Event>,
    mut enc: DescriptorEncoder,
) -> fmt::Result {
    let mut e = Families(&mut enc);
    e.counter(
        "connections_accepted",
        "Connections taken from the listener since start.",
        s.accepted,
    )?;
    e.counter_family(
        "connections_rejected",
        "Connections turned away with a BUSY line without being served, by reason.",
        &[
            ("reason", "queue_full", s.rejected_queue_full),
            ("reason", "queue_timeout", s.rejected_queue_timeout),
            ("reason", "shutdown", s.rejected_shutdown),
            ("reason", "no_fds", s.rejected_no_fds),
        ],
    )?;
    e.counter(
        "connections_closed",
        "Connections served and closed (including those ended early).",
        s.closed,
    )?;
    e.counter_family(
        "connections_ended_early",
        "Connections the server closed before the client did, by reason (all counted in closed).",
        &[
            ("reason", "idle", s.idle_timeouts),
            ("reason", "slow", s.slow_clients),
            ("reason", "write_timeout", s.write_timeouts),
            ("reason", "io_error", s.io_errors),
            ("reason", "proxy_refused", s.proxy_refused),
        ],
    )?;
    e.counter(
        "accept_errors",
        "Errors returned by accept(2); the acceptor backs off and goes on.",
        s.accept_errors,
    )?;
    e.counter(
        "handler_panics",
        "Connections whose handler panicked; each was closed and its worker went on.",
        s.panics,
    )?;
    e.counter("received_bytes", "Bytes read from clients.", s.bytes_in)?;
    e.counter("sent_bytes", "Bytes written to clients.", s.bytes_out)?;
    e.gauge("workers", "Size of the worker pool.", s.workers as u64)?;
    e.gauge(
        "workers_busy",
        "Workers serving a connection now.",
        s.busy as u64,
    )?;
    e.gauge(
        "accept_queue_length",
        "Accepted connections waiting in the accept queue for a worker.",
        s.queued as u64,
    )?;
    e.gauge(
        "accept_queue_capacity",
        "Capacity of the accept queue (--backlog).",
        s.backlog as u64,
    )?;
    e.gauge(
        "connections_open",
        "Connections accepted and not yet closed (waiting or being served).",
        s.live,
    )?;
    e.wait_histogram(
        "queue_wait_seconds",
        "Time from accept to a worker taking the connection.",
        waits,
    )?;
    if let Some(ev) = event {
        e.gauge(
            "connections_parked",
            "Event dispatch: connections waiting in the poller (idle, or waiting for the client to read), not on a worker.",
            s.parked,
        )?;
        e.gauge(
            "connections_ready",
            "Event dispatch: readable connections waiting in the ready queue for a worker.",
            s.ready,
        )?;
        e.gauge(
            "connections_max",
            "Event dispatch: the most live connections allowed (--max-connections).",
            ev.max_live,
        )?;
        e.wait_histogram(
            "ready_wait_seconds",
            "Event dispatch: time a readable connection waited in the ready queue for a worker.",
            &ev.ready_waits,
        )?;
    }
    e.0.encode_descriptor(
        "build",
        "The running build; the value is always 1.",
        None,
        MetricType::Info,
    )?
    .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])
}

/// Thin helpers over the descriptor encoder, one per metric shape.
struct Families<'e, 'a>(&'e mut DescriptorEncoder<'a>);

impl Families<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, u64, u64>(&v, None)
    }

    fn counter_family(
        &mut self,
        name: &str,
        help: &str,
        series: &[(&str, &str, u64)],
    ) -> fmt::Result {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for &(key, value, v) in series {
            m.encode_family(&[(key, value)])?
                .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
        }
        Ok(())
    }

    fn gauge(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        self.0
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&v)
    }

    fn wait_histogram(&mut self, name: &str, help: &str, waits: &Histogram<u64>) -> fmt::Result {
        let (sum, count, buckets) = seconds_buckets(waits);
        self.0
            .encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Turns a histogram of microseconds into Prometheus buckets over
/// [`WAIT_BUCKETS`]: the sum in seconds, the count, and each bucket's own
/// (not cumulative) count — the encoder accumulates them and adds `+Inf`.
///
/// A recorded value goes to the first bucket whose bound is at least the
/// lowest value of its histogram cell, so a wait exactly on a bound counts
/// in that bucket; the histogram's cells are within 1% of their values,
/// and so are the buckets and the sum.
fn seconds_buckets(h: &Histogram<u64>) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets: Vec<(f64, u64)> = WAIT_BUCKETS.iter().map(|&b| (b, 0)).collect();
    let mut sum_us = 0.0;
    for v in h.iter_recorded() {
        let n = v.count_at_value();
        let at = v.value_iterated_to();
        sum_us += h.median_equivalent(at) as f64 * n as f64;
        let lowest = h.lowest_equivalent(at) as f64 / 1e6;
        if let Some(b) = buckets.iter_mut().find(|(bound, _)| lowest <= *bound) {
            b.1 += n;
        }
    }
    (sum_us / 1e6, h.len(), buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_each_wait_once_and_bounds_are_inclusive() {
        let mut h = crate::stats::new_wait_histogram();
        h.record(100).unwrap(); // exactly 0.0001 s
        h.record(101).unwrap();
        h.record_n(1000, 3).unwrap(); // exactly 1 ms
        h.record(20_000_000).unwrap(); // 20 s: only +Inf
        let (sum, count, buckets) = seconds_buckets(&h);
        assert_eq!(count, 6);
        assert_eq!(buckets[0], (0.0001, 1));
        assert_eq!(buckets[1], (0.00025, 1));
        assert_eq!(buckets[3], (0.001, 3));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 5);
        assert!((sum - 20.0032).abs() < 0.2, "{sum}");
    }
}
