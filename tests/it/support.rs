//! Helpers shared by the integration tests: start a server on 127.0.0.1
//! port 0 (in process or as the built binary), connect, read with
//! deadlines, and wait on conditions instead of sleeping.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub use poolserver::Dispatch;
use poolserver::{Server, ServerBuilder};

/// How long any single wait in a test may take before the test fails.
/// Generous, because CI machines are shared and slow; a passing test never
/// waits this long.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The monitor fields that contract §3 requires after the first eight.
pub const MONITOR_EXTRA_FIELDS: [&str; 7] = [
    "conn_per_s",
    "wait_p50",
    "wait_p99",
    "peak_busy",
    "peak_queued",
    "peak_live",
    "panics",
];

/// A builder for a server on 127.0.0.1, any free port, monitor off, in
/// connection dispatch.
pub fn builder() -> ServerBuilder {
    builder_in(Dispatch::Connection)
}

/// Like [`builder`], in dispatch mode `mode`. The tests that run in both
/// modes take `mode` as an `rstest` case:
///
/// ```ignore
/// #[rstest]
/// #[case::connection(Dispatch::Connection)]
/// #[case::event(Dispatch::Event)]
/// fn a_test(#[case] mode: Dispatch) { … support::builder_in(mode) … }
/// ```
///
/// so that `cargo test` lists `a_test::case_1_connection` and
/// `a_test::case_2_event`.
pub fn builder_in(mode: Dispatch) -> ServerBuilder {
    Server::builder()
        .addr("127.0.0.1:0")
        .monitor_interval(Duration::ZERO)
        .dispatch(mode)
}

/// A started server with `workers` workers and otherwise the defaults, in
/// connection dispatch.
pub fn server(workers: usize) -> Server {
    server_in(Dispatch::Connection, workers)
}

/// Like [`server`], in dispatch mode `mode`.
pub fn server_in(mode: Dispatch, workers: usize) -> Server {
    builder_in(mode)
        .workers(workers)
        .start()
        .expect("server starts")
}

/// The `poolserver` arguments that select dispatch mode `mode`.
pub fn dispatch_args(mode: Dispatch) -> [&'static str; 2] {
    match mode {
        Dispatch::Connection => ["--dispatch", "connection"],
        Dispatch::Event => ["--dispatch", "event"],
    }
}

/// Connects to `addr` with a read timeout, so a test never hangs on a read.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Connects to `to` from the loopback address `ip` (127.0.0.2, …), with
/// the same timeouts as [`connect`].
pub fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    let from: SocketAddr = format!("{ip}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Waits until `cond` holds, checking every few milliseconds; panics with
/// `what` if it does not hold within [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Reads exactly `n` bytes (or fails the test).
pub fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream
        .read_exact(&mut buf)
        .expect("read the expected reply");
    buf
}

/// Reads until the server closes; returns everything read.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .expect("read until the server closes");
    buf
}

/// Sends `msg` and reads back exactly `expect.len()` bytes, asserting them.
pub fn round_trip(stream: &mut TcpStream, msg: &[u8], expect: &[u8]) {
    stream.write_all(msg).unwrap();
    assert_eq!(read_n(stream, expect.len()), expect);
}

/// A connection that is being served: it has had one round trip.
pub fn served_client(addr: SocketAddr) -> TcpStream {
    let mut c = connect(addr);
    round_trip(&mut c, b"ping\n", b"PING\n");
    c
}

/// The built `poolserver` binary, running with its stderr collected line
/// by line.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    pub seen: Vec<String>,
}

impl ServerProcess {
    /// Starts `poolserver --addr 127.0.0.1:0 ARGS…` and waits for its
    /// "listening on" line.
    pub fn start(args: &[&str]) -> ServerProcess {
        Self::start_with(Command::new(env!("CARGO_BIN_EXE_poolserver")), args)
    }

    /// Like [`start`](Self::start), in dispatch mode `mode`.
    pub fn start_in(mode: Dispatch, args: &[&str]) -> ServerProcess {
        Self::start_with_in(mode, Command::new(env!("CARGO_BIN_EXE_poolserver")), args)
    }

    /// Like [`start_with`](Self::start_with), in dispatch mode `mode`.
    pub fn start_with_in(mode: Dispatch, mut cmd: Command, args: &[&str]) -> ServerProcess {
        cmd.args(dispatch_args(mode));
        Self::start_with(cmd, args)
    }

    /// Like [`start`](Self::start) with a prepared command (environment,
    /// a wrapper such as `prlimit`).
    pub fn start_with(cmd: Command, args: &[&str]) -> ServerProcess {
        Self::start_on(cmd, "127.0.0.1:0", args)
    }

    /// Like [`start_with`](Self::start_with) on a given address.
    pub fn start_on(mut cmd: Command, addr: &str, args: &[&str]) -> ServerProcess {
        cmd.args(["--addr", addr]).args(args);
        let mut p = Self::spawn(cmd);
        let line = p.wait_for_line(|l| l.contains("listening on "));
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address after 'listening on'");
        p.addr = addr.parse().expect("a socket address");
        p
    }

    /// Runs `cmd` (the server, or a wrapper that starts it later) with its
    /// stderr collected; `addr` is left unset.
    pub fn spawn(mut cmd: Command) -> ServerProcess {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn poolserver");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ServerProcess {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line matching `pred` and returns it.
    pub fn wait_for_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no matching stderr line from poolserver; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Takes the stderr lines that have arrived, without waiting.
    pub fn collect_lines(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Collects the stderr lines still to come, until the process closes
    /// stderr (call after it exited).
    pub fn drain_lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Sends a signal (by name, e.g. "TERM") to the process.
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    /// Waits for the process to exit, within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("poolserver did not exit within {limit:?}");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last line the server wrote to stdout, as JSON: with
    /// `--monitor-format json`, the final monitor report. Call after exit.
    pub fn final_json_report(&mut self) -> serde_json::Value {
        let stdout = self.child.stdout.take().expect("stdout not taken yet");
        let last = BufReader::new(stdout)
            .lines()
            .map(|l| l.expect("read stdout"))
            .last()
            .expect("at least one report");
        serde_json::from_str(&last).expect("a JSON report")
    }

    /// Peak resident memory of the process so far, in KiB (Linux).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("VmHWM in /proc status")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends signal `name` (`TERM`, `INT`, …) to process `pid` with kill(1).
pub fn send_signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{name} {pid} failed");
}

/// Sends on a clone of `c` without ever reading, so the server's replies
/// back up until its writes block. Bounded: at most 1 GiB, far more than
/// socket buffers hold. The thread returns true once a write fails (the
/// server closed, or the test shut `c` down), false if all of it went out.
pub fn never_reading_writer(c: &TcpStream) -> thread::JoinHandle<bool> {
    let mut w = c.try_clone().expect("clone");
    thread::spawn(move || {
        let chunk = vec![b'w'; 64 * 1024];
        for _ in 0..16 * 1024 {
            if w.write_all(&chunk).is_err() {
                return true;
            }
        }
        false
    })
}
