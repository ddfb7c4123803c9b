//! The Prometheus endpoint (`--metrics-addr`): exact values while
//! connections are held and at rest, `promtool check metrics`, bad and
//! silent clients, a real Prometheus scraping it, and the pretty monitor
//! through the binary.
//!
//! The promtool and Prometheus tests need Debian's `prometheus` package
//! (`.ci/run` installs it); without the binaries they print why and pass.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use poolserver::{Dispatch, MonitorFormat, Overflow, Server, Stats};
use rstest::rstest;

use crate::support::{self, connect, served_client, wait_until, ServerProcess, PATIENCE};

/// The endpoint's budget for one exchange (`metrics/http.rs`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

fn metrics_server(workers: usize) -> Server {
    metrics_server_in(Dispatch::Connection, workers)
}

fn metrics_server_in(mode: Dispatch, workers: usize) -> Server {
    support::builder_in(mode)
        .workers(workers)
        .metrics_addr("127.0.0.1:0")
        .start()
        .expect("server starts")
}

/// One HTTP exchange: sends `request`, reads until the endpoint closes.
/// Returns the status line, the header lines and the body.
fn http(addr: SocketAddr, request: &[u8]) -> (String, Vec<String>, String) {
    let mut s = connect(addr);
    s.write_all(request).expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .expect("read until the endpoint closes");
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n").map(str::to_string);
    let status = lines.next().expect("a status line");
    (status, lines.collect(), body.to_string())
}

fn get_metrics(addr: SocketAddr) -> String {
    let (status, headers, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains(&"Content-Type: text/plain; version=0.0.4; charset=utf-8".into()),
        "{headers:?}"
    );
    assert!(headers.contains(&"Connection: close".into()), "{headers:?}");
    assert!(
        headers.contains(&format!("Content-Length: {}", body.len())),
        "{headers:?}"
    );
    body
}

/// The value of the one sample named exactly `series` (name plus labels as
/// written, e.g. `poolserver_connections_ended_early_total{reason="idle"}`).
fn sample(exposition: &str, series: &str) -> f64 {
    let values: Vec<f64> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| *name == series)
        .map(|(_, v)| v.parse().expect("a number"))
        .collect();
    assert_eq!(values.len(), 1, "one sample {series} in:\n{exposition}");
    values[0]
}

/// Every series the exposition must hold, with its value in `s`.
fn expected(s: &Stats) -> Vec<(&'static str, u64)> {
    vec![
        ("poolserver_connections_accepted_total", s.accepted),
        (
            "poolserver_connections_rejected_total{reason=\"queue_full\"}",
            s.rejected_queue_full,
        ),
        (
            "poolserver_connections_rejected_total{reason=\"queue_timeout\"}",
            s.rejected_queue_timeout,
        ),
        (
            "poolserver_connections_rejected_total{reason=\"shutdown\"}",
            s.rejected_shutdown,
        ),
        (
            "poolserver_connections_rejected_total{reason=\"no_fds\"}",
            s.rejected_no_fds,
        ),
        ("poolserver_connections_closed_total", s.closed),
        (
            "poolserver_connections_ended_early_total{reason=\"idle\"}",
            s.idle_timeouts,
        ),
        (
            "poolserver_connections_ended_early_total{reason=\"slow\"}",
            s.slow_clients,
        ),
        (
            "poolserver_connections_ended_early_total{reason=\"write_timeout\"}",
            s.write_timeouts,
        ),
        (
            "poolserver_connections_ended_early_total{reason=\"io_error\"}",
            s.io_errors,
        ),
        (
            "poolserver_connections_ended_early_total{reason=\"proxy_refused\"}",
            s.proxy_refused,
        ),
        ("poolserver_accept_errors_total", s.accept_errors),
        ("poolserver_handler_panics_total", s.panics),
        ("poolserver_received_bytes_total", s.bytes_in),
        ("poolserver_sent_bytes_total", s.bytes_out),
        ("poolserver_workers", s.workers as u64),
        ("poolserver_workers_busy", s.busy as u64),
        ("poolserver_accept_queue_length", s.queued as u64),
        ("poolserver_accept_queue_capacity", s.backlog as u64),
        ("poolserver_connections_open", s.live),
    ]
}

#[test]
fn scrape_counts_held_connections_exactly() {
    let server = support::builder()
        .workers(2)
        .backlog(4)
        .metrics_addr("127.0.0.1:0")
        .start()
        .unwrap();
    let maddr = server.metrics_addr().expect("metrics on");
    let m = get_metrics(maddr);
    assert_eq!(sample(&m, "poolserver_connections_accepted_total"), 0.0);
    assert_eq!(sample(&m, "poolserver_workers"), 2.0);

    // Two served and held, one waiting in the accept queue.
    let a = served_client(server.local_addr());
    let b = served_client(server.local_addr());
    let mut waiting = connect(server.local_addr());
    wait_until("the third connection is queued", || {
        server.stats().queued == 1
    });
    // A worker counts a write just after it returns, so a client can read
    // its reply before the count moves (seen under load).
    wait_until("both replies are counted", || {
        server.stats().bytes_out == 10
    });
    let m = get_metrics(maddr);
    for (series, want) in [
        ("poolserver_connections_accepted_total", 3.0),
        ("poolserver_connections_closed_total", 0.0),
        ("poolserver_workers_busy", 2.0),
        ("poolserver_connections_open", 3.0),
        ("poolserver_accept_queue_length", 1.0),
        ("poolserver_accept_queue_capacity", 4.0),
        ("poolserver_received_bytes_total", 10.0),
        ("poolserver_sent_bytes_total", 10.0),
        ("poolserver_queue_wait_seconds_count", 2.0),
    ] {
        assert_eq!(sample(&m, series), want, "{series}");
    }

    drop((a, b));
    support::round_trip(&mut waiting, b"last\nquit\n", b"LAST\n");
    assert_eq!(support::read_to_close(&mut waiting), b"");
    wait_until("all closed", || server.stats().closed == 3);
    let m = get_metrics(maddr);
    for (series, want) in [
        ("poolserver_connections_accepted_total", 3.0),
        ("poolserver_connections_closed_total", 3.0),
        ("poolserver_workers_busy", 0.0),
        ("poolserver_connections_open", 0.0),
        ("poolserver_accept_queue_length", 0.0),
        ("poolserver_queue_wait_seconds_count", 3.0),
        ("poolserver_queue_wait_seconds_bucket{le=\"+Inf\"}", 3.0),
    ] {
        assert_eq!(sample(&m, series), want, "{series}");
    }
    // Scrapes are not the pool's connections.
    assert_eq!(server.stats().accepted, 3);
    server.shutdown(Duration::from_secs(5));
}

/// Pipes `exposition` through `promtool check metrics` and requires it to
/// pass silently.
fn promtool_check(promtool: &PathBuf, exposition: &str) {
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}\n--- the exposition:\n{exposition}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[test]
fn event_dispatch_exposes_parked_ready_and_the_ready_wait() {
    let server = support::builder()
        .workers(2)
        .dispatch(Dispatch::Event)
        .max_connections(50)
        .metrics_addr("127.0.0.1:0")
        .start()
        .unwrap();
    let maddr = server.metrics_addr().unwrap();
    // More served connections than workers, all idle now: parked.
    let clients: Vec<TcpStream> = (0..5).map(|_| served_client(server.local_addr())).collect();
    wait_until("all five parked", || server.stats().parked == 5);
    let m = get_metrics(maddr);
    for (series, want) in [
        ("poolserver_connections_parked", 5.0),
        ("poolserver_connections_ready", 0.0),
        ("poolserver_connections_max", 50.0),
        ("poolserver_connections_open", 5.0),
        ("poolserver_workers_busy", 0.0),
        ("poolserver_connections_accepted_total", 5.0),
    ] {
        assert_eq!(sample(&m, series), want, "{series}");
    }
    // A parked connection that becomes readable waits in the ready queue
    // for a worker: one more round trip each is one more wait each.
    let before = sample(&m, "poolserver_ready_wait_seconds_count");
    let mut clients = clients;
    for c in &mut clients {
        support::round_trip(c, b"again\n", b"AGAIN\n");
    }
    wait_until("all five parked again", || server.stats().parked == 5);
    let m = get_metrics(maddr);
    assert_eq!(
        sample(&m, "poolserver_ready_wait_seconds_count"),
        before + 5.0
    );
    assert_eq!(
        sample(&m, "poolserver_ready_wait_seconds_bucket{le=\"+Inf\"}"),
        before + 5.0
    );
    if let Some(promtool) = tool("promtool") {
        promtool_check(&promtool, &m);
    }
    drop(clients);
    wait_until("all closed", || server.stats().live == 0);
    let m = get_metrics(maddr);
    assert_eq!(sample(&m, "poolserver_connections_parked"), 0.0);
    server.shutdown(Duration::from_secs(5));

    // Connection dispatch leaves the event-only series out.
    let plain = metrics_server(1);
    let m = get_metrics(plain.metrics_addr().unwrap());
    for name in [
        "connections_parked",
        "connections_ready",
        "ready_wait_seconds",
    ] {
        assert!(
            !m.contains(&format!("poolserver_{name}")),
            "{name} in:\n{m}"
        );
    }
    plain.shutdown(Duration::ZERO);
}

/// A monitor sink the test can read.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn reports(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON report"))
            .collect()
    }
}

#[test]
fn at_rest_the_metrics_equal_stats_and_the_monitor() {
    let sink = Sink::default();
    let server = support::builder()
        .workers(1)
        .backlog(1)
        .overflow(Overflow::Reject)
        .idle_timeout(Duration::from_secs(1))
        .monitor_interval(Duration::from_millis(50))
        .monitor_format(MonitorFormat::Json)
        .monitor_output(sink.clone())
        .metrics_addr("127.0.0.1:0")
        .start()
        .unwrap();
    let addr = server.local_addr();
    // One served (then idle), one queued (then served and idle), one
    // turned away: every kind of ending the test can cause on purpose.
    // The idle timeout is long enough that the first client still holds
    // the worker when the third connects on a slow machine (with 200 ms, a
    // stall that long would let the queued one reach the worker, and the
    // third would be queued instead of turned away).
    let _held = served_client(addr);
    let _queued = connect(addr);
    wait_until("one queued", || server.stats().queued == 1);
    let mut refused = connect(addr);
    let busy = support::read_to_close(&mut refused);
    assert!(busy.starts_with(b"BUSY"), "{busy:?}");
    drop(refused);
    wait_until("at rest", || {
        let s = server.stats();
        s.live == 0 && s.closed == 2 && s.rejected == 1
    });

    let stats = server.stats();
    let m = get_metrics(server.metrics_addr().unwrap());
    assert_eq!(
        (
            stats.idle_timeouts,
            stats.rejected_queue_full,
            stats.bytes_in
        ),
        (2, 1, 5)
    );
    for (series, want) in expected(&stats) {
        assert_eq!(sample(&m, series), want as f64, "{series}");
    }
    assert_eq!(sample(&m, "poolserver_queue_wait_seconds_count"), 2.0);

    // The monitor's next report, taken after the scrape, says the same.
    let seen = sink.reports().len();
    wait_until("a report after the scrape", || sink.reports().len() > seen);
    let report = sink.reports().pop().unwrap();
    for (series, key) in [
        ("poolserver_connections_accepted_total", "accepted"),
        ("poolserver_connections_closed_total", "closed"),
        ("poolserver_workers", "workers"),
        ("poolserver_workers_busy", "busy"),
        ("poolserver_accept_queue_length", "queued"),
        ("poolserver_accept_queue_capacity", "backlog"),
        ("poolserver_connections_open", "live"),
        ("poolserver_handler_panics_total", "panics"),
        ("poolserver_accept_errors_total", "accept_errors"),
        ("poolserver_received_bytes_total", "bytes_in"),
        ("poolserver_sent_bytes_total", "bytes_out"),
        (
            "poolserver_connections_ended_early_total{reason=\"idle\"}",
            "idle_timeouts",
        ),
        (
            "poolserver_connections_rejected_total{reason=\"queue_full\"}",
            "rejected_queue_full",
        ),
    ] {
        assert_eq!(
            sample(&m, series),
            report[key].as_u64().unwrap() as f64,
            "{series} vs {key}"
        );
    }
    assert_eq!(report["rejected"], 1);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn rejections_are_exposed_by_reason() {
    let server = support::builder()
        .workers(1)
        .backlog(1)
        .overflow(Overflow::Reject)
        .queue_timeout(Duration::from_millis(100))
        .metrics_addr("127.0.0.1:0")
        .start()
        .unwrap();
    let addr = server.local_addr();
    let held = served_client(addr);
    let mut late = connect(addr);
    wait_until("one queued", || server.stats().queued == 1);
    let mut full = connect(addr);
    assert!(support::read_to_close(&mut full).starts_with(b"BUSY"));
    drop(full);
    // The queued one must outwait --queue-timeout before a worker frees.
    let queued_at = Instant::now();
    wait_until("the queue timeout passed", || {
        queued_at.elapsed() > Duration::from_millis(150)
    });
    drop(held);
    let busy = support::read_to_close(&mut late);
    assert!(busy.starts_with(b"BUSY waited"), "{busy:?}");
    drop(late);
    wait_until("at rest", || server.stats().live == 0);
    let m = get_metrics(server.metrics_addr().unwrap());
    let reason = |r: &str| {
        sample(
            &m,
            &format!("poolserver_connections_rejected_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(
        [
            reason("queue_full"),
            reason("queue_timeout"),
            reason("shutdown"),
            reason("no_fds")
        ],
        [1.0, 1.0, 0.0, 0.0]
    );
    let s = server.stats();
    assert_eq!(s.rejected, 2);
    assert_eq!(s.rejected_queue_full + s.rejected_queue_timeout, s.rejected);
    server.shutdown(Duration::from_secs(5));
}

/// `None` (after saying why) when Debian's `prometheus` package is absent.
fn tool(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin").join(name);
    if path.exists() {
        Some(path)
    } else {
        println!(
            "SKIPPED: {} not found; install Debian's `prometheus` package (.ci/run does)",
            path.display()
        );
        None
    }
}

/// In both modes: event dispatch adds its gauges and the ready-wait
/// histogram, which promtool checks too.
#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn promtool_accepts_the_exposition(#[case] mode: Dispatch) {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let server = metrics_server_in(mode, 2);
    // Some traffic, so every series has a non-zero value to check.
    for _ in 0..3 {
        let mut c = served_client(server.local_addr());
        c.write_all(b"quit\n").unwrap();
        support::read_to_close(&mut c);
    }
    wait_until("served", || server.stats().closed == 3);
    let exposition = get_metrics(server.metrics_addr().unwrap());
    assert_eq!(
        exposition.contains("poolserver_connections_parked "),
        mode == Dispatch::Event,
        "{exposition}"
    );
    promtool_check(&promtool, &exposition);
    server.shutdown(Duration::from_secs(5));
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn bad_requests_get_a_4xx_and_never_reach_the_pool(#[case] mode: Dispatch) {
    let server = metrics_server_in(mode, 1);
    let maddr = server.metrics_addr().unwrap();
    let oversized = [
        b"GET /metrics HTTP/1.1\r\nX-Filler: ".as_slice(),
        &[b'a'; 9000],
        b"\r\n\r\n",
    ]
    .concat();
    let cases: [(&[u8], &str); 6] = [
        (b"GET /nope HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (b"GET / HTTP/1.0\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP/1.1 405 Method Not Allowed",
        ),
        (
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (b"GET /metrics SPDY/3\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (&oversized, "HTTP/1.1 431 Request Header Fields Too Large"),
    ];
    for (request, want) in cases {
        let (status, headers, _) = http(maddr, request);
        assert_eq!(status, want, "{:?}", String::from_utf8_lossy(request));
        assert!(headers.contains(&"Connection: close".into()), "{headers:?}");
        if want.contains("405") {
            assert!(headers.contains(&"Allow: GET, HEAD".into()), "{headers:?}");
        }
        // The next scrape is answered: the endpoint is done with the last.
        get_metrics(maddr);
    }
    // HEAD: the same head, no body.
    let (status, headers, body) = http(maddr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.iter().any(|h| h.starts_with("Content-Length: ")));
    assert_eq!(body, "");
    // A client that connects and leaves at once costs nothing either.
    drop(TcpStream::connect(maddr).unwrap());
    get_metrics(maddr);
    let s = server.stats();
    assert_eq!((s.accepted, s.live, s.busy), (0, 0, 0));
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_silent_client_delays_a_scrape_by_at_most_the_request_timeout() {
    let server = metrics_server(1);
    let maddr = server.metrics_addr().unwrap();
    let mut silent = connect(maddr);
    // Half a request line, then nothing.
    silent.write_all(b"GET /met").unwrap();
    let started = Instant::now();
    let body = get_metrics(maddr);
    let took = started.elapsed();
    assert!(body.contains("poolserver_workers 1\n"), "{body}");
    // The bound is the endpoint's timeout; PATIENCE only absorbs a loaded
    // CI machine. What proves the cut-off is the 408 below.
    assert!(
        took < PATIENCE,
        "a silent client held the scrape for {took:?}"
    );
    eprintln!(
        "figure: a scrape behind a silent client took {took:?} (timeout {REQUEST_TIMEOUT:?})"
    );
    let mut answer = String::new();
    silent.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert_eq!(server.stats().accepted, 0);
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn the_endpoint_stops_with_the_server() {
    let server = metrics_server(1);
    let maddr = server.metrics_addr().unwrap();
    let idle = TcpStream::connect(maddr).unwrap();
    let started = Instant::now();
    server.shutdown(Duration::from_secs(5));
    assert!(started.elapsed() < PATIENCE);
    drop(idle);
    assert!(
        TcpStream::connect(maddr).is_err(),
        "the metrics port still listens"
    );
    // Without metrics_addr there is no endpoint.
    let plain = support::server(1);
    assert_eq!(plain.metrics_addr(), None);
    plain.shutdown(Duration::ZERO);
}

#[test]
fn a_taken_metrics_address_is_a_bind_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let err = support::builder()
        .metrics_addr(taken.local_addr().unwrap().to_string())
        .start()
        .unwrap_err();
    assert!(matches!(err, poolserver::Error::Bind { .. }), "{err}");
    assert!(err.to_string().contains("--metrics-addr"), "{err}");
}

#[test]
fn the_binary_serves_metrics_and_the_pretty_monitor() {
    let mut p = ServerProcess::start(&[
        "--workers",
        "3",
        "--metrics-addr",
        "127.0.0.1:0",
        "--monitor-interval",
        "100ms",
        "--monitor-format",
        "pretty",
    ]);
    let line = p.wait_for_line(|l| l.contains("metrics on http://"));
    let maddr: SocketAddr = line
        .split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .expect("an address in the startup line")
        .parse()
        .unwrap();
    let held = served_client(p.addr);
    let m = get_metrics(maddr);
    assert_eq!(sample(&m, "poolserver_workers_busy"), 1.0);
    assert_eq!(sample(&m, "poolserver_workers"), 3.0);
    drop(held);
    p.signal("TERM");
    assert!(p.wait_exit(PATIENCE).success());
    let mut stdout = String::new();
    p.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let last = stdout.lines().last().expect("pretty reports on stdout");
    assert!(
        last.starts_with("workers [..........] 0/3  queue [..........] 0/1024  live 0  "),
        "{stdout}"
    );
    assert!(last.ends_with("  (final)"), "{stdout}");
}

/// A Prometheus server on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    web: SocketAddr,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port (bound and released; Prometheus takes it next).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_prometheus(binary: &PathBuf, target: SocketAddr) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("poolserver-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: poolserver\n    static_configs:\n\
             \x20     - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus { child, web, dir }
}

/// An instant query's JSON answer, if Prometheus answers.
fn query_json(web: SocketAddr, promql: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(web).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let path = format!("/api/v1/query?query={encoded}");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    serde_json::from_str(raw.split_once("\r\n\r\n")?.1).ok()
}

/// The value of an instant query, if Prometheus answers and has a sample.
fn query(web: SocketAddr, promql: &str) -> Option<f64> {
    let v = query_json(web, promql)?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Every PromQL expression of `deploy/grafana-dashboard.json`, with the
/// dashboard's variables filled in as Grafana would.
fn dashboard_queries() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("a target with an expression")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m")
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_endpoint() {
    let Some(binary) = tool("prometheus") else {
        return;
    };
    let server = metrics_server(2);
    for _ in 0..4 {
        let mut c = served_client(server.local_addr());
        c.write_all(b"quit\n").unwrap();
        support::read_to_close(&mut c);
    }
    let prom = start_prometheus(&binary, server.metrics_addr().unwrap());
    // Its first scrape comes a few seconds after it starts; 60 s at most.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut up = None;
    while Instant::now() < deadline {
        up = query(prom.web, "up");
        if up == Some(1.0) {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(up, Some(1.0), "Prometheus never reported the target up");
    let accepted = query(prom.web, "poolserver_connections_accepted_total");
    assert_eq!(accepted, Some(4.0));
    let busy = query(prom.web, "poolserver_workers_busy");
    assert_eq!(busy, Some(0.0));
    // The dashboard's queries are valid PromQL over these series.
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    for q in queries {
        let answer = query_json(prom.web, &q);
        let status = answer.as_ref().map(|v| v["status"].clone());
        assert_eq!(
            status,
            Some(serde_json::json!("success")),
            "{q}: {answer:?}"
        );
    }
    drop(prom);
    server.shutdown(Duration::from_secs(5));
}
