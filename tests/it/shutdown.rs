//! Graceful shutdown through the library API (contract §4): the drain, the
//! deadline, what happens to served and queued connections, and `Drop`.

use rstest::rstest;

use crate::support::Dispatch;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use poolserver::{Buffers, Connection, Service};

use crate::support::{
    self, connect, read_n, read_to_close, round_trip, served_client, wait_until, PATIENCE,
};

/// Without the read slices in `Connection`, a worker blocked reading a
/// silent client would hold shutdown until the idle timeout (5 minutes).
#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn the_deadline_ends_a_worker_blocked_on_a_silent_client(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    // `exi` may still become `exit`, so it is held back...
    round_trip(&mut c, b"held\nexi", b"HELD\n");
    let start = Instant::now();
    let stats = server.shutdown(Duration::from_millis(300));
    // ...and answered at the deadline, as at end of stream.
    assert_eq!(read_to_close(&mut c), b"EXI");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // Deadline + one poll slice + the lingering close's 2 s at most.
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(
        (stats.live, stats.busy, stats.closed, stats.accepted),
        (0, 0, 1, 1)
    );
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn shutdown_returns_as_soon_as_the_work_is_done(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let addr = server.local_addr();
    let holder = served_client(addr);
    let mut queued = connect(addr);
    queued.write_all(b"queued\n").unwrap();
    // In event dispatch the holder is parked and `queued` is served at
    // once; it need not wait in the queue.
    if mode == Dispatch::Connection {
        wait_until("queued", || server.stats().queued == 1);
    }

    let stopper = thread::spawn(move || {
        let start = Instant::now();
        (server.shutdown(Duration::from_secs(60)), start.elapsed())
    });
    // New connections are refused once shutdown has begun.
    wait_until("the listener is closed", || {
        TcpStream::connect(addr).is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
    });
    // Workers keep taking queued connections during the grace period.
    let mut holder = holder;
    holder.write_all(b"quit\n").unwrap();
    assert_eq!(read_to_close(&mut holder), b"");
    assert_eq!(read_n(&mut queued, 7), b"QUEUED\n");
    queued.write_all(b"quit\n").unwrap();
    assert_eq!(read_to_close(&mut queued), b"");

    let (stats, took) = stopper.join().unwrap();
    assert!(
        took < Duration::from_secs(30),
        "did not wait out the grace: {took:?}"
    );
    // A probe that connected before the listener closed was served too
    // (it sent nothing and closed), hence `>=`.
    assert!(stats.accepted >= 2, "{stats:?}");
    assert_eq!(
        (stats.closed, stats.rejected, stats.live),
        (stats.accepted, 0, 0)
    );
}

// Connection dispatch only: a silent client must hold the only worker to keep a newcomer queued; event dispatch parks it.
#[test]
fn a_connection_still_queued_at_the_deadline_is_closed_unserved() {
    let server = support::server(1);
    let addr = server.local_addr();
    let mut holder = served_client(addr);
    let mut queued = connect(addr);
    queued.write_all(b"too late\n").unwrap();
    wait_until("queued", || server.stats().queued == 1);
    let stats = server.shutdown(Duration::from_millis(200));
    assert_eq!(read_to_close(&mut holder), b"");
    let answer = String::from_utf8(read_to_close(&mut queued)).unwrap();
    assert_eq!(answer, "BUSY server shutting down\n");
    assert_eq!(
        (stats.accepted, stats.closed, stats.rejected, stats.live),
        (2, 1, 1, 0)
    );
}

/// Connections that finished their handshake but were never accepted —
/// the acceptor was blocked on a full queue — are owed an answer too. Shutting
/// the listening socket down (the usual way to wake an acceptor) would make
/// Linux reset every one of them, data sent and all: this is the regression
/// test for that.
// Connection dispatch only: a silent client must hold the only worker to fill the queue; event dispatch parks it.
#[test]
fn connections_still_in_the_kernels_queue_are_answered_not_reset() {
    let server = support::builder()
        .workers(1)
        .backlog(1)
        .listen_backlog(16)
        .start()
        .unwrap();
    let addr = server.local_addr();
    let mut holder = served_client(addr);
    let mut queued = connect(addr);
    queued.write_all(b"queued\n").unwrap();
    wait_until("queued", || server.stats().queued == 1);
    // `--overflow block`: the acceptor takes this one and waits for room...
    let mut held = connect(addr);
    held.write_all(b"held\n").unwrap();
    wait_until("accepted", || server.stats().accepted == 3);
    // ...so these stay in the kernel's queue, with data sent.
    let mut waiting: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = connect(addr);
            c.write_all(&[b'x'; 1000]).unwrap();
            c
        })
        .collect();

    let stopper = thread::spawn(move || server.shutdown(Duration::from_secs(60)));
    for c in std::iter::once(&mut held).chain(&mut waiting) {
        let answer = String::from_utf8(read_to_close(c)).unwrap();
        assert_eq!(answer, "BUSY server shutting down\n");
    }
    // A probe that connects before the listener is closed lands in the
    // kernel's queue like the three above: the acceptor may still take it
    // and tell it BUSY (counted accepted and rejected), or the close resets
    // it. Either way it never gets anything else.
    let mut probes_told_busy = 0;
    wait_until("the listener is closed", || {
        match TcpStream::connect(addr) {
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
            Ok(probe) => {
                probe.set_read_timeout(Some(PATIENCE)).unwrap();
                let mut answer = Vec::new();
                let _ = (&probe).read_to_end(&mut answer); // EOF, or reset by the close
                if answer == b"BUSY server shutting down\n" {
                    probes_told_busy += 1;
                } else {
                    assert_eq!(answer, b"", "a probe during shutdown");
                }
                false
            }
        }
    });
    // What was already in the accept queue is still served.
    round_trip(&mut holder, b"quit\n", b"");
    assert_eq!(read_to_close(&mut holder), b"");
    assert_eq!(read_n(&mut queued, 7), b"QUEUED\n");
    queued.write_all(b"quit\n").unwrap();
    assert_eq!(read_to_close(&mut queued), b"");
    let stats = stopper.join().unwrap();
    assert_eq!(
        (stats.accepted, stats.rejected, stats.closed, stats.live),
        (6 + probes_told_busy, 4 + probes_told_busy, 2, 0)
    );
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn dropping_the_server_begins_shutdown_without_blocking(#[case] mode: Dispatch) {
    let server = support::builder_in(mode)
        .workers(1)
        .shutdown_timeout(Duration::from_millis(100))
        .start()
        .unwrap();
    let addr = server.local_addr();
    let mut c = served_client(addr);
    let start = Instant::now();
    drop(server);
    // A Drop that blocked would take the deadline plus the lingering close
    // (over 2 s); 1.5 s leaves a loaded machine room.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "Drop blocked"
    );
    // The threads finish on their own: the client is closed at the deadline.
    assert_eq!(read_to_close(&mut c), b"");
    wait_until("the listener is closed", || {
        TcpStream::connect(addr).is_err()
    });
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn shutdown_of_an_idle_server_is_immediate(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 4);
    let start = Instant::now();
    let stats = server.shutdown(Duration::from_secs(60));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!((stats.accepted, stats.live, stats.busy), (0, 0, 0));
}

/// Answers each line with whether shutdown has begun, and stops after the
/// first request answered during shutdown: a service with a natural
/// stopping point, written with `BufReader` and `write!` on the connection.
#[derive(Debug)]
struct StopsBetweenRequests;

impl Service for StopsBetweenRequests {
    fn serve(&self, conn: &mut Connection<'_>, _bufs: &mut Buffers) -> io::Result<()> {
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            let conn = reader.get_mut();
            if conn.shutting_down() {
                return write!(conn, "bye after {}", line);
            }
            write!(conn, "serving {}", line)?;
            line.clear();
        }
        Ok(())
    }
}

// Connection dispatch only: a blocking `Service` runs only in connection dispatch.
#[test]
fn a_service_sees_shutdown_begin_and_stops_between_requests() {
    let server = support::builder()
        .workers(1)
        .service(StopsBetweenRequests)
        .start()
        .unwrap();
    let addr = server.local_addr();
    let mut c = connect(addr);
    round_trip(&mut c, b"one\n", b"serving one\n");

    let stopper = thread::spawn(move || server.shutdown(Duration::from_secs(60)));
    wait_until("the listener is closed", || {
        TcpStream::connect(addr).is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
    });
    c.write_all(b"two\n").unwrap();
    assert_eq!(read_to_close(&mut c), b"bye after two\n");

    // Long before the 60 s grace: the service ended the conversation. (A
    // probe of the wait above may have been accepted too, and closed.)
    let stats = stopper.join().unwrap();
    assert_eq!((stats.closed, stats.live), (stats.accepted, 0), "{stats:?}");
}
