//! The `poolclient` binary (README, "The client"), driven through pipes
//! against a real server started in-process: piped lines come back uppercased, `exit`
//! ends the conversation, the server closing first ends the client while
//! its stdin is still open, and a refused connection is one clear line and
//! exit code 1. Every wait has a deadline; no sleep stands in for a
//! condition.

use rstest::rstest;

use crate::support::Dispatch;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use poolserver::Overflow;

use crate::support::{self, PATIENCE};

/// A running `poolclient` whose stdout and stderr are collected by threads,
/// so the child never blocks on a full pipe.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// What a finished client left behind.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

impl Client {
    fn start(addr: SocketAddr) -> Client {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolclient"));
        cmd.env_remove("POOLCLIENT_ADDR")
            .args(["--addr", &addr.to_string()]);
        Client::start_with(cmd)
    }

    fn start_with(mut cmd: Command) -> Client {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn poolclient");
        let stdin = child.stdin.take();
        let stdout = Some(collect(child.stdout.take().unwrap()));
        let stderr = Some(collect(child.stderr.take().unwrap()));
        Client {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits (within `PATIENCE`) for the client to exit on its own; stdin
    /// stays as it is, open or closed.
    fn wait(mut self) -> Finished {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("poolclient did not exit within {PATIENCE:?}");
            }
            thread::sleep(Duration::from_millis(5));
        };
        Finished {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: String::from_utf8(self.stderr.take().unwrap().join().unwrap()).unwrap(),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pipes `input` into a client (stdin closed after it) and waits for it.
fn pipe(addr: SocketAddr, input: &[u8]) -> Finished {
    let mut c = Client::start(addr);
    c.send(input);
    c.close_stdin();
    c.wait()
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn piped_line_comes_back_uppercased(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 2);
    let out = pipe(server.local_addr(), b"hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    // Input ended first and the server answered it: nothing to report.
    assert_eq!(out.stderr, "");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn address_can_come_from_the_environment(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolclient"));
    cmd.env("POOLCLIENT_ADDR", server.local_addr().to_string());
    let mut c = Client::start_with(cmd);
    c.send("straße\n".as_bytes());
    c.close_stdin();
    let out = c.wait();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "STRASSE\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn lines_after_exit_are_not_answered(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 2);
    let out = pipe(server.local_addr(), b"one\ntwo\nexit\nthree\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ONE\nTWO\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn input_without_a_newline_is_answered_at_end_of_input(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 2);
    let out = pipe(server.local_addr(), b"abc\ndef");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ABC\nDEF");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    // An unterminated `quit` at end of input is data (README, "The protocol").
    let out = pipe(server.local_addr(), b"quit");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "QUIT");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn large_piped_input_streams_through_both_ways(#[case] mode: Dispatch) {
    // More than the socket buffers hold in both directions: only works if
    // reading and writing really run at the same time.
    let server = support::server_in(mode, 1);
    let line = b"the quick brown fox jumps over the lazy dog 0123456789\n";
    let input: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * 80_000)
        .collect();
    let out = pipe(server.local_addr(), &input);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input.to_ascii_uppercase());
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn server_closing_first_ends_the_client_while_stdin_is_open(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 2);
    let mut c = Client::start(server.local_addr());
    c.send(b"hi\nquit\n");
    // stdin stays open: the client must notice the close by itself.
    let out = c.wait();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HI\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stderr, "poolclient: the server closed the connection\n");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn server_shutdown_ends_an_idle_client(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let addr = server.local_addr();
    let mut c = Client::start(addr);
    c.send(b"x\n");
    // Wait until the client is being served, then stop the server.
    support::wait_until("the client is served", || server.stats().bytes_out >= 2);
    let stats = server.shutdown(Duration::ZERO);
    assert_eq!(stats.accepted, 1);
    let out = c.wait();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "X\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("the server closed the connection"),
        "{}",
        out.stderr
    );
}

// Connection dispatch only: a silent client must hold the only worker to fill the queue; event dispatch parks it.
#[test]
fn busy_line_is_printed_and_the_client_exits_0() {
    let server = support::builder()
        .workers(1)
        .backlog(1)
        .overflow(Overflow::Reject)
        .start()
        .unwrap();
    let addr = server.local_addr();
    let _held = support::served_client(addr); // the only worker
    let _queued = support::connect(addr); // the only queue slot
    support::wait_until("the queue is full", || server.stats().queued == 1);
    // Rejected at once, before any input; stdin stays open.
    let out = Client::start(addr).wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("BUSY") && stdout.ends_with('\n'),
        "{stdout:?}"
    );
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    // Counted when the turned-away connection's lingering close ends,
    // which may be after the client has exited.
    support::wait_until("the rejection is counted", || server.stats().rejected == 1);
}

#[test]
fn refused_connection_is_one_line_and_exit_1() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut c = Client::start(addr);
    c.close_stdin();
    let out = c.wait();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("poolclient: cannot connect to "));
    assert!(out.stderr.contains(&addr.to_string()), "{}", out.stderr);
    assert!(
        out.stderr.contains("is poolserver running?"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_usage_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_poolclient"))
        .args(["--no-such-flag"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
