//! Under systemd: socket activation with the real `systemd-socket-activate`
//! (Debian's systemd package), readiness and watchdog notifications on a
//! `NOTIFY_SOCKET` datagram socket, and the kernel's queue left for the
//! next instance at shutdown.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use crate::support::{self, connect, round_trip, wait_until, ServerProcess, PATIENCE};

/// Whether `cmd` can be run here.
fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").output().is_ok()
}

#[test]
fn systemd_socket_activate_hands_its_listener_over() {
    if !have("systemd-socket-activate") {
        eprintln!("SKIPPED: systemd-socket-activate not found (Debian package systemd)");
        return;
    }
    // A free port for systemd-socket-activate to bind.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &format!("127.0.0.1:{port}")])
        .arg(env!("CARGO_BIN_EXE_poolserver"))
        .args([
            "--addr",
            "127.0.0.1:1",
            "--workers",
            "1",
            "--monitor-interval",
            "0",
        ]);
    let mut p = ServerProcess::spawn(cmd);
    p.wait_for_line(|l| l.contains("Listening on"));
    // It starts poolserver on the first connection, which waits in the
    // kernel's queue meanwhile.
    let mut c = connect(format!("127.0.0.1:{port}").parse().unwrap());
    round_trip(&mut c, b"activated\n", b"ACTIVATED\n");
    p.wait_for_line(|l| l.contains("passed by systemd (LISTEN_FDS); --addr is ignored"));
    let line = p.wait_for_line(|l| l.contains("listening on "));
    assert!(
        line.contains(&format!("listening on 127.0.0.1:{port} ")),
        "{line}"
    );
    drop(c);
    p.signal("TERM");
    assert!(p.wait_exit(PATIENCE).success());
}

/// A datagram socket standing in for systemd's notify socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "poolserver-test-{}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        NotifySocket { socket, path }
    }

    /// The next datagram (fails the test after [`PATIENCE`]).
    fn next(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self.socket.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn ready_watchdog_and_stopping_are_notified() {
    let notify = NotifySocket::new("notify");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolserver"));
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "100000");
    let mut p = ServerProcess::start_with(cmd, &["--monitor-interval", "0"]);
    // Sent once the listener and every worker run, which is before the
    // server is known to accept: it does.
    assert_eq!(notify.next(), "READY=1\n");
    let mut c = connect(p.addr);
    round_trip(&mut c, b"up\n", b"UP\n");
    // Every 50 ms (half of WATCHDOG_USEC).
    assert_eq!(notify.next(), "WATCHDOG=1\n");
    assert_eq!(notify.next(), "WATCHDOG=1\n");
    drop(c);
    p.signal("TERM");
    let mut seen = Vec::new();
    loop {
        let msg = notify.next();
        if msg == "STOPPING=1\n" {
            break;
        }
        assert_eq!(msg, "WATCHDOG=1\n", "after: {seen:?}");
        seen.push(msg);
        assert!(seen.len() < 1000, "no STOPPING=1");
    }
    assert!(p.wait_exit(PATIENCE).success());
}

#[test]
fn a_watchdog_meant_for_another_process_is_ignored() {
    let notify = NotifySocket::new("other");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolserver"));
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1");
    let mut p = ServerProcess::start_with(cmd, &["--monitor-interval", "0"]);
    assert_eq!(notify.next(), "READY=1\n");
    p.signal("TERM");
    // No WATCHDOG=1 in between.
    assert_eq!(notify.next(), "STOPPING=1\n");
    assert!(p.wait_exit(PATIENCE).success());
}

#[test]
fn an_inherited_listener_leaves_the_kernel_queue_to_the_next_instance() {
    // The test plays systemd: it owns the socket and keeps it open.
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let server = support::builder()
        .workers(1)
        .backlog(1)
        .inherited_listener(socket.try_clone().unwrap())
        .start()
        .unwrap();
    // One served, one in the accept queue, one held by the acceptor
    // waiting for room: the next one stays in the kernel's queue.
    let mut served = connect(addr);
    round_trip(&mut served, b"a", b"A");
    let _queued = connect(addr);
    let _held = connect(addr);
    wait_until("one served, one queued, one held", || {
        let s = server.stats();
        (s.accepted, s.busy, s.queued) == (3, 1, 1)
    });
    let mut waiting = connect(addr);
    waiting.write_all(b"next\n").unwrap();
    // (`served` stays open: closing it would free a worker, and the
    // acceptor would take `waiting` before shutdown begins.)
    server.shutdown(Duration::ZERO);
    drop(served);
    // The next instance takes it from the same socket, untouched: the old
    // one wrote nothing to it (no BUSY).
    socket.set_nonblocking(true).unwrap();
    let mut taken = None;
    wait_until("the next instance finds it in the queue", || {
        taken = socket.accept().ok().map(|(s, _)| s);
        taken.is_some()
    });
    let mut taken = taken.unwrap();
    taken.set_nonblocking(false).unwrap();
    taken.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = [0u8; 5];
    taken.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"next\n");
    taken.write_all(b"NEXT\n").unwrap();
    let mut reply = [0u8; 5];
    read_exact_or_fail(&mut waiting, &mut reply);
    assert_eq!(&reply, b"NEXT\n");
}

fn read_exact_or_fail(s: &mut TcpStream, buf: &mut [u8]) {
    s.read_exact(buf).expect("read the next instance's reply");
}
