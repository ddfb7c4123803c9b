//! The poller's own tests: edges, closes and tokens, over real loopback
//! sockets.

use super::table::{split, token};
use super::*;
use std::io::{Read, Write};
use std::net::TcpListener;

use crate::service::{EventService, Uppercase};

/// A parkable connection and its client end, over loopback.
fn conn_pair(counters: &Arc<Counters>) -> (Conn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (stream, peer) = listener.accept().unwrap();
    stream.set_nonblocking(true).unwrap();
    let live = LiveGuard::new(counters, peer);
    let conn = Conn::new(stream, peer, live, Instant::now(), Uppercase.open(peer));
    (conn, client)
}

/// Waits for the epoll's next event and hands it to the table, as a
/// waiting worker does.
fn next_event(parking: &Parking) -> Option<Conn> {
    let mut events = events();
    let n = parking.epoll_wait(&mut events, Some(Duration::from_secs(20)));
    assert_eq!(n, 1, "one event");
    let mut out = Vec::new();
    parking.take_readable(&events[..n], &mut out);
    out.pop()
}

/// The workers' handle on a fresh poller (no timer thread runs; the ready
/// queue's receiving end is dropped, nothing here pushes) and its counters.
fn parking() -> (Arc<Counters>, Arc<Parking>) {
    let counters = Arc::new(Counters::new(1, 1));
    let (tx, _rx) = crossbeam_channel::unbounded();
    let shutdown = Arc::new(Shutdown::new());
    let (_timer, parking) =
        Poller::new(tx, Arc::clone(&counters), shutdown, Timeouts::default()).unwrap();
    (counters, parking)
}

#[test]
fn an_edge_while_a_worker_has_the_connection_is_not_lost() {
    let (counters, parking) = parking();
    let (conn, mut client) = conn_pair(&counters);
    assert!(matches!(parking.park(conn), Parked::Yes), "first park");
    assert_eq!(counters.snapshot(0).parked, 1);

    client.write_all(b"a").unwrap();
    let mut conn = next_event(&parking).expect("the parked connection");
    assert_eq!(counters.snapshot(0).parked, 0);
    let mut buf = [0u8; 8];
    assert_eq!((&conn.stream).read(&mut buf).unwrap(), 1);
    // More data while the "worker" still has it: the edge is kept...
    client.write_all(b"b").unwrap();
    assert!(next_event(&parking).is_none());
    // ...so parking says read again, and the data is there.
    conn = match parking.park(conn) {
        Parked::Retry(conn) => conn,
        _ => panic!("a pending edge must not be parked over"),
    };
    assert_eq!((&conn.stream).read(&mut buf).unwrap(), 1);
    assert!(matches!(parking.park(conn), Parked::Yes), "parked again");
    // Still registered: the next byte wakes it without a new epoll_ctl.
    client.write_all(b"c").unwrap();
    let mut conn = next_event(&parking).expect("woken");
    parking.forget(&mut conn);
    assert!(conn.registration.is_none());
}

#[test]
fn a_close_that_came_with_the_data_is_remembered() {
    let (counters, parking) = parking();
    let (conn, mut client) = conn_pair(&counters);
    assert!(matches!(parking.park(conn), Parked::Yes));
    // Data and FIN before the worker looks: one edge for both.
    client.write_all(b"last").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut conn = next_event(&parking).expect("the parked connection");
    assert!(conn.peer_closed, "the event said the peer closed");
    // Without the flag the short read below would end the slice and
    // the end of the stream would never be read.
    let mut buf = [0u8; 8];
    assert_eq!((&conn.stream).read(&mut buf).unwrap(), 4);
    assert_eq!((&conn.stream).read(&mut buf).unwrap(), 0);
    parking.forget(&mut conn);
}

/// Fills the connection's socket until a write would block; what did not
/// fit is its unsent rest.
fn stall(conn: &mut Conn) {
    let chunk = [b'x'; 64 * 1024];
    for _ in 0..1024 {
        match (&conn.stream).write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.unsent = Some(Box::new(Unsent {
                    bytes: b"rest".to_vec(),
                    since: Instant::now(),
                }));
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("64 MiB went out without blocking");
}

#[test]
fn a_connection_with_unsent_bytes_waits_for_room_not_for_data() {
    let (counters, parking) = parking();
    let (mut conn, mut client) = conn_pair(&counters);
    // Registered for reading first, as after an ordinary park.
    assert!(matches!(parking.park(conn), Parked::Yes));
    client.write_all(b"a").unwrap();
    conn = next_event(&parking).expect("readable");
    let mut one = [0u8; 1];
    assert_eq!((&conn.stream).read(&mut one).unwrap(), 1);
    stall(&mut conn);
    assert!(matches!(parking.park(conn), Parked::Yes), "parked to write");
    // Data from the client wakes nobody while the reply waits...
    client.write_all(b"b").unwrap();
    let mut events = events();
    assert_eq!(parking.epoll_wait(&mut events, Some(Duration::ZERO)), 0);
    // ...room to write does, once the client reads.
    let mut sink = vec![0u8; 64 * 1024];
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reads = 0;
    let mut conn = loop {
        reads += 1;
        assert!(reads < 4096, "no event after reading 256 MiB");
        client.read_exact(&mut sink).unwrap();
        let n = parking.epoll_wait(&mut events, Some(Duration::from_millis(1)));
        let mut out = Vec::new();
        parking.take_readable(&events[..n], &mut out);
        if let Some(conn) = out.pop() {
            break conn;
        }
    };
    // Reading again: back to waiting for data, and the byte sent while
    // it waited to write raises an event at once (the change checks).
    conn.unsent = None;
    assert!(matches!(parking.park(conn), Parked::Yes));
    let mut conn = next_event(&parking).expect("the byte sent meanwhile");
    parking.forget(&mut conn);
}

#[test]
fn the_timer_of_a_parked_connection_is_its_write_or_its_idle_timeout() {
    let (counters, _parking) = parking();
    let (mut conn, _client) = conn_pair(&counters);
    let timeouts = Timeouts {
        idle: Some(Duration::from_secs(30)),
        write: Some(Duration::from_secs(5)),
    };
    assert_eq!(
        conn.due(&timeouts),
        Some((conn.last_data + Duration::from_secs(30), Why::Idle))
    );
    let since = Instant::now();
    conn.unsent = Some(Box::new(Unsent {
        bytes: b"rest".to_vec(),
        since,
    }));
    assert_eq!(
        conn.due(&timeouts),
        Some((since + Duration::from_secs(5), Why::WriteStalled))
    );
    assert_eq!(conn.due(&Timeouts::default()), None);
}

#[test]
fn tokens_round_trip_and_generations_differ() {
    let t = token(7, 3);
    assert_eq!(split(t), (7, 3));
    assert_ne!(token(7, 4), t);
    assert_ne!(token(7, u32::MAX), WAKER);
}
