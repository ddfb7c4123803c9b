//! The `poolload` binary (README, "The load generator") against servers
//! started in-process on 127.0.0.1 port 0: exact round-trip counts in every mode, a deliberately
//! wrong server caught byte for byte, unserved connections reported (not
//! hidden, not hanging), deadlines, and the exit codes. The server's own
//! counters cross-check what poolload says it did.

use rstest::rstest;

use crate::support::Dispatch;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use poolserver::{Buffers, Connection, Echo, End, EventService, Flow, Overflow, Service};
use poolserver::{Session, Uppercase};
use serde_json::Value;

use crate::support;

/// `--idle`: many mostly idle connections on one poolload thread.
mod idle;

/// Runs `poolload --addr ADDR --json -q ARGS…` to completion. poolload
/// bounds itself (`--deadline`), so `output()` cannot hang for long.
fn poolload(addr: SocketAddr, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolload"));
    for (k, _) in std::env::vars() {
        if k.starts_with("POOLLOAD_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--addr", &addr.to_string(), "--json", "-q"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run poolload")
}

/// The one JSON line of a `--json` run.
fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "--json prints exactly one line; stdout: {stdout:?}, stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim_end()).expect("stdout is one JSON object")
}

fn num(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is an integer in {r}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A report with every reply right and nothing failed.
fn assert_clean(out: &Output, r: &Value) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(out));
    assert_eq!(num(r, "wrong_replies"), 0, "{r}");
    assert_eq!(num(r, "errors"), 0, "{r}");
    assert_eq!(num(r, "never_served"), 0, "{r}");
    assert_eq!(r["cut_by_deadline"], false, "{r}");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn pingpong_counts_every_round_trip(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 4);
    let out = poolload(server.local_addr(), &["-n", "200", "-c", "4"]);
    let r = report(&out);
    assert_clean(&out, &r);
    assert_eq!(r["mode"], "pingpong");
    assert_eq!(num(&r, "round_trips"), 800);
    assert_eq!((num(&r, "fewest_rt"), num(&r, "most_rt")), (200, 200));
    assert_eq!(num(&r, "bytes_verified"), 800 * 64);
    assert!(num(&r, "p50_us") <= num(&r, "p99_us") && num(&r, "p99_us") <= num(&r, "max_us"));
    assert!(num(&r, "max_us") > 0 && num(&r, "first_reply_max_us") > 0);
    for key in [
        "connections",
        "rt_per_sec",
        "mb_per_sec",
        "p90_us",
        "p999_us",
        "duration_s",
        "connects_per_sec",
    ] {
        assert!(r[key].is_number(), "{key} in {r}");
    }
    assert!(r["rt_per_sec"].as_f64().unwrap() > 0.0);
    // What the server saw: four connections, 200 messages and a `quit`
    // each, every reply byte sent.
    let stats = server.shutdown(Duration::from_secs(5));
    assert_eq!(stats.accepted, 4);
    assert_eq!(stats.closed, 4);
    assert_eq!(stats.bytes_in, 4 * (200 * 64 + 5));
    assert_eq!(stats.bytes_out, 4 * 200 * 64);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn pipelining_gives_the_same_count(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 2);
    let out = poolload(
        server.local_addr(),
        &["-n", "200", "-c", "4", "--pipeline", "4", "-s", "100"],
    );
    let r = report(&out);
    assert_clean(&out, &r);
    assert_eq!(num(&r, "round_trips"), 800);
    assert_eq!(num(&r, "pipeline"), 4);
    assert_eq!(num(&r, "bytes_verified"), 800 * 100);
    assert_eq!(server.shutdown(Duration::from_secs(5)).bytes_out, 800 * 100);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn deep_pipelines_of_large_messages_do_not_deadlock(#[case] mode: Dispatch) {
    // 16 MiB in flight, far more than the socket buffers hold: poolload must
    // read replies while its writes wait for room, or both sides block.
    let server = support::server_in(mode, 1);
    let size = 4 << 20;
    let out = poolload(
        server.local_addr(),
        &[
            "-n",
            "8",
            "-c",
            "1",
            "--pipeline",
            "4",
            "-s",
            &size.to_string(),
        ],
    );
    let r = report(&out);
    assert_clean(&out, &r);
    assert_eq!(num(&r, "round_trips"), 8);
    assert_eq!(num(&r, "bytes_verified"), 8 * size);
    assert_eq!(server.shutdown(Duration::from_secs(5)).bytes_out, 8 * size);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn timed_run_with_warmup_counts_only_the_measured_part(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 2);
    let out = poolload(
        server.local_addr(),
        // A measured second: on a loaded 2-core machine one round trip can
        // take a few hundred milliseconds (each side waits its turn for a
        // CPU), and a 300 ms window once counted none at all.
        &["-c", "2", "-d", "1s", "--warmup", "300ms", "-s", "2"],
    );
    let r = report(&out);
    assert_clean(&out, &r);
    let rts = num(&r, "round_trips");
    assert!(rts > 0, "{r}");
    let secs = r["duration_s"].as_f64().unwrap();
    assert!((0.95..=1.1).contains(&secs), "{r}");
    // Warm-up round trips reached the server but are not counted.
    let stats = server.shutdown(Duration::from_secs(5));
    assert!(
        stats.bytes_out / 2 > rts,
        "{} replies vs {rts}",
        stats.bytes_out / 2
    );
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn bulk_verifies_every_byte(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 2);
    let out = poolload(
        server.local_addr(),
        &["--mode", "bulk", "--bulk-mib", "2", "-c", "2", "-s", "100"],
    );
    let r = report(&out);
    assert_clean(&out, &r);
    assert_eq!(r["mode"], "bulk");
    assert_eq!(num(&r, "bytes_verified"), 2 * (2 << 20));
    // Whole 100-byte lines per connection (the last one is cut short).
    assert_eq!(num(&r, "round_trips"), 2 * ((2 << 20) / 100));
    assert!(r["mb_per_sec"].as_f64().unwrap() > 0.0);
    let stats = server.shutdown(Duration::from_secs(5));
    assert_eq!(stats.bytes_in, 2 * (2 << 20));
    assert_eq!(stats.bytes_out, 2 * (2 << 20));
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn connect_mode_counts_whole_cycles(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 2);
    let out = poolload(
        server.local_addr(),
        &["--mode", "connect", "-n", "20", "-c", "2"],
    );
    let r = report(&out);
    assert_clean(&out, &r);
    assert_eq!(num(&r, "round_trips"), 40);
    assert_eq!((num(&r, "fewest_rt"), num(&r, "most_rt")), (20, 20));
    assert!(r["connects_per_sec"].as_f64().unwrap() > 0.0);
    let stats = server.shutdown(Duration::from_secs(5));
    assert_eq!((stats.accepted, stats.closed), (40, 40));
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn echo_server_passes_with_expect_echo(#[case] mode: Dispatch) {
    let server = support::builder_in(mode)
        .workers(2)
        .event_service(Echo)
        .start()
        .unwrap();
    let out = poolload(
        server.local_addr(),
        &["-n", "50", "-c", "2", "--expect", "echo"],
    );
    let r = report(&out);
    assert_clean(&out, &r);
    assert_eq!(num(&r, "round_trips"), 100);
    assert_eq!(r["expect"], "echo");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn uppercase_replies_are_wrong_for_expect_echo(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let out = poolload(
        server.local_addr(),
        &["-n", "10", "-c", "1", "--expect", "echo"],
    );
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1));
    // All ten replies, plus the missing echo of `quit`.
    assert_eq!(num(&r, "wrong_replies"), 11, "{r}");
    assert!(stderr(&out).contains("wrong replies"), "{}", stderr(&out));
}

/// The uppercase loop with one byte of every fifth reply changed: the
/// uppercase session, wrapped.
#[derive(Debug, Default)]
struct Corrupting {
    replies: Arc<AtomicU64>,
}

struct CorruptingSession {
    upper: Box<dyn Session>,
    replies: Arc<AtomicU64>,
}

impl EventService for Corrupting {
    fn open(&self, peer: SocketAddr) -> Box<dyn Session> {
        Box::new(CorruptingSession {
            upper: Uppercase.open(peer),
            replies: Arc::clone(&self.replies),
        })
    }

    fn max_output(&self, input_len: usize) -> usize {
        Uppercase.max_output(input_len)
    }
}

impl Session for CorruptingSession {
    fn on_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Flow {
        let flow = self.upper.on_data(input, out);
        if !out.is_empty() && self.replies.fetch_add(1, Ordering::Relaxed) % 5 == 4 {
            out[0] ^= 0x01;
        }
        flow
    }

    fn on_end(&mut self, end: End, out: &mut Vec<u8>) {
        self.upper.on_end(end, out);
    }
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn corrupted_replies_fail_the_run(#[case] mode: Dispatch) {
    let server = support::builder_in(mode)
        .workers(1)
        .event_service(Corrupting::default())
        .start()
        .unwrap();
    let out = poolload(server.local_addr(), &["-n", "50", "-c", "1"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{r}");
    // Corruption keeps lengths, so every round trip completed. With one
    // message in flight each server read is one whole 64-byte message (one
    // segment on loopback), so replies 5, 10, …, 50 were the bad ones.
    assert_eq!(num(&r, "round_trips"), 50);
    assert_eq!(num(&r, "wrong_replies"), 10, "{r}");
    assert_eq!(num(&r, "errors"), 0, "{r}");
    let err = stderr(&out);
    assert!(
        err.starts_with("poolload: FAILED: ") && err.contains("wrong"),
        "{err}"
    );
}

// Connection dispatch only: poolload's never-served accounting needs a worker held by a silent client; event dispatch parks it.
#[test]
fn unserved_connection_is_reported_not_waited_for() {
    let server = support::server(1);
    let addr = server.local_addr();
    // Holds the only worker for the whole test.
    let _held = support::served_client(addr);

    let out = poolload(addr, &["-c", "1", "-d", "500ms"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(num(&r, "never_served"), 1, "{r}");
    assert_eq!(num(&r, "round_trips"), 0, "{r}");
    assert_eq!((num(&r, "errors"), num(&r, "wrong_replies")), (0, 0));
    assert_eq!(r["cut_by_deadline"], false);
    assert_eq!(num(&r, "first_reply_max_us"), 0);

    let out = poolload(addr, &["-c", "1", "-d", "300ms", "--fail-on-unserved"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(num(&r, "never_served"), 1, "{r}");
    assert!(stderr(&out).contains("never served"), "{}", stderr(&out));
}

// Connection dispatch only: poolload's never-served accounting needs a worker held by a silent client; event dispatch parks it.
#[test]
fn served_and_unserved_connections_are_told_apart() {
    // Two connections, one worker: whichever the acceptor hands over first
    // is served for the whole run, the other waits in the queue.
    let server = support::server(1);
    let out = poolload(server.local_addr(), &["-c", "2", "-d", "1s"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(num(&r, "never_served"), 1, "{r}");
    assert_eq!(num(&r, "fewest_rt"), 0, "{r}");
    assert_eq!(num(&r, "most_rt"), num(&r, "round_trips"), "{r}");
    assert!(num(&r, "round_trips") > 0, "{r}");
}

// Connection dispatch only: poolload's never-served accounting needs a worker held by a silent client; event dispatch parks it.
#[test]
fn deadline_cuts_a_run_that_cannot_finish() {
    let server = support::server(1);
    let addr = server.local_addr();
    let _held = support::served_client(addr);
    // A count-bound run never ends on its own while the worker is held.
    // Long enough that poolload surely connects (and is queued) before it.
    let out = poolload(addr, &["-c", "1", "-n", "5", "--deadline", "2s"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(r["cut_by_deadline"], true, "{r}");
    assert_eq!(num(&r, "never_served"), 1, "{r}");
    assert!(stderr(&out).contains("--deadline"), "{}", stderr(&out));
}

// Connection dispatch only: poolload's rejection accounting needs a full pool and queue; event dispatch parks the silent holder.
#[test]
fn busy_rejection_is_reported_as_rejected() {
    let server = support::builder()
        .workers(1)
        .backlog(1)
        .overflow(Overflow::Reject)
        .start()
        .unwrap();
    let addr = server.local_addr();
    let _held = support::served_client(addr);
    let _queued = support::connect(addr);
    support::wait_until("the queue is full", || server.stats().queued == 1);
    // Count-bound, not timed: the connection is surely made and told BUSY
    // (a 300 ms run on a stalled machine could end before it connects).
    let out = poolload(addr, &["-c", "1", "-n", "1", "--deadline", "20s"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(num(&r, "rejected"), 1, "{r}");
    assert_eq!((num(&r, "wrong_replies"), num(&r, "errors")), (0, 0), "{r}");
    let out = poolload(
        addr,
        &[
            "-c",
            "1",
            "-n",
            "1",
            "--deadline",
            "20s",
            "--fail-on-unserved",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn refused_connections_are_errors_with_a_hint() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = poolload(addr, &["-c", "3", "-d", "1s"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(num(&r, "errors"), 3, "{r}");
    assert_eq!(num(&r, "round_trips"), 0);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("3 errors") && err.contains("is poolserver running"),
        "{err}"
    );
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn text_report_and_bad_usage(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let out = Command::new(env!("CARGO_BIN_EXE_poolload"))
        .args([
            "--addr",
            &server.local_addr().to_string(),
            "-n",
            "10",
            "-c",
            "1",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("round trips    10 "), "{text}");
    assert!(text.contains("p99.9"), "{text}");
    // Not a terminal: no progress bar on stderr.
    assert_eq!(stderr(&out), "");

    for bad in [
        &["--size", "1"][..],
        &["--mode", "sideways"],
        &["-d", "soon"],
        &["--pipeline", "0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_poolload"))
            .args(bad)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(out.stdout.is_empty(), "{bad:?}");
    }
}

/// `poolload` started in the background with `--json -q`, for the Ctrl-C
/// tests.
fn spawn_poolload(addr: SocketAddr, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_poolload"))
        .args(["--addr", &addr.to_string(), "--json", "-q"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start poolload")
}

fn ctrl_c(child: &Child) {
    support::send_signal(child.id(), "INT");
}

/// Waits (bounded) for `child` to exit and collects its output.
fn wait_output(mut child: Child) -> Output {
    support::wait_until("poolload exits", || {
        child.try_wait().expect("try_wait").is_some()
    });
    child.wait_with_output().expect("collect poolload's output")
}

/// Ctrl-C ends a long run early, and the report of what was measured is
/// still printed: connections finish the message in flight and close
/// politely, the one still queued gives up, and the exit code says the run
/// was interrupted.
#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn ctrl_c_ends_the_run_with_a_report_of_what_was_measured(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 2);
    let addr = server.local_addr();
    let child = spawn_poolload(addr, &["-c", "3", "-d", "10m", "--deadline", "20m"]);
    // Two connections served (one waits for a worker), replies flowing.
    support::wait_until("round trips", || server.stats().bytes_out >= 64 * 100);
    ctrl_c(&child);
    let out = wait_output(child);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(130), "stderr: {}", stderr(&out));
    assert_eq!(r["interrupted"], true, "{r}");
    assert_eq!(r["cut_by_deadline"], false, "{r}");
    assert_eq!((num(&r, "wrong_replies"), num(&r, "errors")), (0, 0), "{r}");
    // The third connection can never be served (both workers are held
    // until poolload stops); the second served one may not have read its
    // first reply yet when Ctrl-C came, on a loaded machine.
    let never_served = match mode {
        Dispatch::Connection => 1..=2,
        // Event dispatch serves all three by turns; only the lagging
        // one may not have read its first reply.
        Dispatch::Event => 0..=1,
    };
    assert!(never_served.contains(&num(&r, "never_served")), "{r}");
    assert!(r["duration_s"].as_f64().unwrap() < 300.0, "{r}");
    assert!(stderr(&out).contains("stopping"), "{}", stderr(&out));
    // The server answered every counted round trip, plus at most one
    // message per connection that poolload did not count: the one in
    // flight when Ctrl-C came, and the queued connection's first message,
    // which a worker reads (and answers) after poolload gave up on it.
    // Every connection was closed.
    support::wait_until("all closed", || server.stats().closed == 3);
    let stats = server.shutdown(Duration::from_secs(5));
    let rt = num(&r, "round_trips");
    assert!(rt > 0, "{r}");
    assert!(
        (rt * 64..=(rt + 3) * 64).contains(&stats.bytes_out),
        "{rt} round trips counted, {} bytes answered",
        stats.bytes_out
    );
    assert_eq!((stats.accepted, stats.live), (3, 0));
}

/// A bulk stream stopped by Ctrl-C sends no more, reads the replies to all
/// it sent, and counts them exactly.
#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn ctrl_c_ends_a_bulk_stream_with_every_sent_byte_checked(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let child = spawn_poolload(
        server.local_addr(),
        &[
            "--mode",
            "bulk",
            "-c",
            "1",
            "--bulk-mib",
            "100000",
            "--deadline",
            "10m",
        ],
    );
    support::wait_until("streaming", || server.stats().bytes_out >= 1 << 20);
    ctrl_c(&child);
    let out = wait_output(child);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(130), "stderr: {}", stderr(&out));
    assert_eq!(r["interrupted"], true, "{r}");
    assert_eq!((num(&r, "wrong_replies"), num(&r, "errors")), (0, 0), "{r}");
    support::wait_until("closed", || server.stats().closed == 1);
    let stats = server.shutdown(Duration::from_secs(5));
    // Every byte sent was answered and every answer was checked.
    assert_eq!(stats.bytes_in, stats.bytes_out);
    assert_eq!(num(&r, "bytes_verified"), stats.bytes_out, "{r}");
    assert_eq!(num(&r, "round_trips") * 64, stats.bytes_out, "{r}");
}

/// Answers the first read, then reads and never answers again.
#[derive(Debug)]
struct Stalling;

impl Service for Stalling {
    fn serve(&self, conn: &mut Connection<'_>, bufs: &mut Buffers) -> io::Result<()> {
        let n = conn.read(&mut bufs.input)?;
        let reply = bufs.input[..n].to_ascii_uppercase();
        conn.write_all(&reply)?;
        while conn.read(&mut bufs.input)? > 0 {}
        Ok(())
    }
}

/// A run stuck on a reply that never comes: the first Ctrl-C cannot end it
/// (the message in flight is waited for), the second exits at once, with
/// no report.
// Connection dispatch only: a blocking `Service` runs only in connection dispatch.
#[test]
fn a_second_ctrl_c_exits_at_once() {
    let server = support::builder()
        .workers(1)
        .service(Stalling)
        .start()
        .unwrap();
    let mut child = spawn_poolload(server.local_addr(), &["-c", "1", "-d", "10m"]);
    // The first reply came back and the second message is waiting.
    support::wait_until("stuck", || server.stats().bytes_in >= 2 * 64);
    ctrl_c(&child);
    let mut err = child.stderr.take().unwrap();
    let mut line = [0u8; 18];
    io::Read::read_exact(&mut err, &mut line).unwrap();
    assert_eq!(&line, b"poolload: stopping");
    ctrl_c(&child);
    child.stderr = Some(err);
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(130), "stderr: {}", stderr(&out));
    assert_eq!(out.stdout, b"", "no report after the second Ctrl-C");
}

/// TCP's count of SYNs dropped because a listen queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").expect("read /proc/net/netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")
        .expect("ListenOverflows is counted");
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// A connection whose connect completes only after the measured time (its
/// SYN met a full listen queue and was sent again a second later) has
/// nothing to measure: it is reported never served and poolload exits,
/// instead of saying `quit` and waiting for an answer until `--deadline`
/// (here from a listener that never reads).
#[test]
fn a_connection_that_connects_after_the_run_is_not_waited_for() {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any.into()).unwrap();
    // Room for one connection in the kernel's queue, taken by a filler.
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let _filler = std::net::TcpStream::connect(addr).unwrap();
    let dropped_before = listen_overflows();

    let child = spawn_poolload(
        addr,
        &[
            "-c",
            "1",
            "-d",
            "200ms",
            "--connect-timeout",
            "60s",
            "--deadline",
            "60s",
        ],
    );
    // Its first SYN is dropped; then make room for the one sent again.
    support::wait_until("poolload's SYN is dropped by the full queue", || {
        listen_overflows() > dropped_before
    });
    let _accepted = listener.accept().unwrap();
    let out = wait_output(child);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(num(&r, "never_served"), 1, "{r}");
    assert_eq!(num(&r, "round_trips"), 0, "{r}");
    assert_eq!(r["cut_by_deadline"], false, "{r}");
}
