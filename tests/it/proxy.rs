//! `--proxy-protocol` over real sockets: the true client comes from the
//! header, the bytes after it reach the service, and untrusted peers, bad
//! or long headers and silent clients get nothing and are counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use poolserver::{AllowList, Buffers, Connection, Server, Service, Stats};
use proxy_header::{ProxiedAddress, ProxyHeader};

use rstest::rstest;

use crate::support::{
    self, connect, read_n, read_to_close, round_trip, wait_until, Dispatch, PATIENCE,
};

/// A v2 header from `source` (to a destination of the same family).
pub fn v2(source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let dest = if source.is_ipv4() {
        "127.0.0.1:8080"
    } else {
        "[::1]:8080"
    };
    let mut out = Vec::new();
    ProxyHeader::with_address(ProxiedAddress::stream(source, dest.parse().unwrap()))
        .encode_v2(&mut out)
        .unwrap();
    out
}

pub fn v2_local() -> Vec<u8> {
    let mut out = Vec::new();
    ProxyHeader::with_local().encode_v2(&mut out).unwrap();
    out
}

fn proxied(workers: usize) -> poolserver::ServerBuilder {
    proxied_in(Dispatch::Connection, workers)
}

fn proxied_in(mode: Dispatch, workers: usize) -> poolserver::ServerBuilder {
    support::builder_in(mode)
        .workers(workers)
        .proxy_protocol(true)
}

/// Waits until every connection is closed and every worker idle, and
/// returns the stats.
fn settled(server: &Server) -> Stats {
    wait_until("every connection is closed and every worker idle", || {
        let s = server.stats();
        (s.live, s.busy) == (0, 0)
    });
    server.stats()
}

/// Reads until the server closes, asserting it sent nothing at all. A
/// reset (the server closed with our bytes unread) counts as nothing too.
fn assert_closed_unanswered(client: &mut TcpStream) {
    let mut got = Vec::new();
    match client.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "the server answered {got:?}"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "expected a close, got {e}"
        ),
    }
    assert!(got.is_empty(), "the server answered {got:?}");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn a_v2_header_and_data_in_one_write_are_served_as_the_true_client(#[case] mode: Dispatch) {
    let server = proxied_in(mode, 2).start().unwrap();
    let mut c = connect(server.local_addr());
    let mut first = v2("127.0.0.2:61000");
    first.extend_from_slice(b"hello\n");
    round_trip(&mut c, &first, b"HELLO\n");
    round_trip(&mut c, b"again\n", b"AGAIN\n");
    drop(c);
    let s = settled(&server);
    assert_eq!((s.accepted, s.closed, s.proxy_refused), (1, 1, 0));
    assert_eq!(s.bytes_in, 12, "the header is not counted as data");
    server.shutdown(Duration::ZERO);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn a_header_split_across_writes_is_put_together(#[case] mode: Dispatch) {
    let server = proxied_in(mode, 1).start().unwrap();
    for cut in [1, 8, 15, 16, 20] {
        let mut c = connect(server.local_addr());
        c.set_nodelay(true).unwrap();
        let header = v2("127.0.0.2:5000");
        c.write_all(&header[..cut]).unwrap();
        c.flush().unwrap();
        c.write_all(&header[cut..]).unwrap();
        round_trip(&mut c, b"split\n", b"SPLIT\n");
    }
    let mut c = connect(server.local_addr());
    c.write_all(b"PROXY TCP4 192.0.2.1 ").unwrap();
    c.write_all(b"127.0.0.1 4000 8080\r\nv1\n").unwrap();
    assert_eq!(read_n(&mut c, 3), b"V1\n");
    drop(c);
    assert_eq!(settled(&server).proxy_refused, 0);
    server.shutdown(Duration::ZERO);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn a_v2_local_header_is_served_as_a_direct_connection(#[case] mode: Dispatch) {
    let server = proxied_in(mode, 1).start().unwrap();
    let mut c = connect(server.local_addr());
    let mut first = v2_local();
    first.extend_from_slice(b"ping\r\nquit\r\n");
    c.write_all(&first).unwrap();
    assert_eq!(read_to_close(&mut c), b"PING\r\n");
    let s = settled(&server);
    assert_eq!((s.closed, s.proxy_refused), (1, 0));
    server.shutdown(Duration::ZERO);
}

/// A service that answers with the address it was told the client has.
#[derive(Debug)]
struct WhoAmI;

impl Service for WhoAmI {
    fn serve(&self, conn: &mut Connection<'_>, _bufs: &mut Buffers) -> std::io::Result<()> {
        let line = format!("{}\n", conn.peer_addr());
        conn.write_all(line.as_bytes())
    }
}

// Connection dispatch only: WhoAmI is a blocking Service, which event dispatch refuses.
#[test]
fn the_service_sees_the_true_client() {
    let server = proxied(1).service(WhoAmI).start().unwrap();
    let mut c = connect(server.local_addr());
    c.write_all(&v2("[2001:db8::7]:4242")).unwrap();
    assert_eq!(read_to_close(&mut c), b"[2001:db8::7]:4242\n");
    // LOCAL: the connection's own peer.
    let mut c = connect(server.local_addr());
    c.write_all(&v2_local()).unwrap();
    let me = c.local_addr().unwrap();
    assert_eq!(read_to_close(&mut c), format!("{me}\n").as_bytes());
    server.shutdown(Duration::ZERO);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn a_peer_outside_proxy_from_is_closed_unanswered_before_reading(#[case] mode: Dispatch) {
    let only_elsewhere: AllowList = "192.0.2.0/24".parse().unwrap();
    let server = proxied_in(mode, 1)
        .proxy_from(only_elsewhere)
        .start()
        .unwrap();
    let mut c = connect(server.local_addr());
    // A perfectly good header claiming to be someone else: never believed.
    let mut first = v2("203.0.113.9:1111");
    first.extend_from_slice(b"hello\n");
    c.write_all(&first).unwrap();
    assert_closed_unanswered(&mut c);
    drop(c);
    let s = settled(&server);
    assert_eq!((s.accepted, s.closed, s.rejected), (1, 1, 0));
    assert_eq!((s.proxy_refused, s.bytes_in, s.bytes_out), (1, 0, 0));
    server.shutdown(Duration::ZERO);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn malformed_headers_are_closed_unanswered_and_counted(#[case] mode: Dispatch) {
    let server = proxied_in(mode, 1).start().unwrap();
    let mut bad_command = v2_local();
    bad_command[12] = 0x2f;
    let cases: [&[u8]; 5] = [
        b"hello\n",
        b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\nhello\n",
        b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
        b"\r\n\r\n\x00\r\nQUIZ\n\x21\x11\x00\x0c",
        &bad_command,
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut c = connect(server.local_addr());
        c.write_all(case).unwrap();
        assert_closed_unanswered(&mut c);
        wait_until("the refusal is counted", || {
            server.stats().proxy_refused == i as u64 + 1
        });
    }
    let s = settled(&server);
    assert_eq!((s.accepted, s.closed, s.proxy_refused), (5, 5, 5));
    assert_eq!((s.bytes_in, s.bytes_out), (0, 0));
    server.shutdown(Duration::ZERO);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn an_oversized_header_is_refused_as_soon_as_its_length_says_so(#[case] mode: Dispatch) {
    // A long timeout: the refusal must come from the length alone.
    let server = proxied_in(mode, 1)
        .proxy_timeout(PATIENCE * 3)
        .start()
        .unwrap();
    let mut c = connect(server.local_addr());
    let mut fixed = v2_local();
    fixed[14..16].copy_from_slice(&5000u16.to_be_bytes());
    c.write_all(&fixed).unwrap();
    // The client's read timeout is PATIENCE: a server waiting for the
    // rest would fail this read.
    assert_closed_unanswered(&mut c);
    drop(c);
    // A v1 line that is 107 bytes without CRLF.
    let mut c = connect(server.local_addr());
    let mut line = b"PROXY TCP4 ".to_vec();
    line.resize(107, b'7');
    c.write_all(&line).unwrap();
    assert_closed_unanswered(&mut c);
    drop(c);
    let s = settled(&server);
    assert_eq!((s.proxy_refused, s.bytes_out), (2, 0));
    server.shutdown(Duration::ZERO);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn a_silent_client_is_closed_at_the_proxy_timeout_and_frees_its_worker(#[case] mode: Dispatch) {
    let server = proxied_in(mode, 1)
        .proxy_timeout(Duration::from_millis(300))
        .start()
        .unwrap();
    let addr = server.local_addr();
    let mut silent = connect(addr);
    // (Or, on a machine stalled past the proxy timeout, it is already cut.)
    wait_until("the silent client holds the only worker", || {
        let s = server.stats();
        s.busy == 1 || s.proxy_refused == 1
    });
    // Half a header, then nothing.
    silent.write_all(&v2("127.0.0.2:1")[..10]).unwrap();
    assert_closed_unanswered(&mut silent);
    drop(silent);
    // The worker is free: the next client is served.
    let mut next = connect(addr);
    let mut first = v2("127.0.0.3:2");
    first.extend_from_slice(b"next\n");
    round_trip(&mut next, &first, b"NEXT\n");
    drop(next);
    let s = settled(&server);
    assert_eq!((s.accepted, s.closed, s.rejected), (2, 2, 0));
    assert_eq!((s.proxy_refused, s.idle_timeouts, s.busy), (1, 0, 0));
    assert_eq!((s.bytes_in, s.bytes_out), (5, 5));
    server.shutdown(Duration::ZERO);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn without_proxy_protocol_a_header_is_just_data(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    round_trip(&mut c, b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN\r\n");
    drop(c);
    assert_eq!(settled(&server).proxy_refused, 0);
    server.shutdown(Duration::ZERO);
}

#[test]
fn proxy_settings_are_validated() {
    let err = proxied(1)
        .proxy_timeout(Duration::ZERO)
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("proxy timeout"), "{err}");
}

#[test]
fn the_flags_reach_the_server_and_bad_networks_exit_two() {
    let mut p = support::ServerProcess::start(&[
        "--proxy-protocol",
        "--proxy-from",
        "10.0.0.0/8,::1",
        "--proxy-timeout",
        "750ms",
    ]);
    let line = p.wait_for_line(|l| l.contains("listening on"));
    assert!(
        line.contains("PROXY protocol required, from 10.0.0.0/8,::1/128 within 750ms"),
        "{line}"
    );
    // 127.0.0.1 is not in the list now: closed unanswered.
    let mut c = connect(p.addr);
    c.write_all(&v2("127.0.0.2:1")).unwrap();
    assert_closed_unanswered(&mut c);
    p.wait_for_line(|l| l.contains("refused 127.0.0.1:") && l.contains("untrusted peer"));
    assert!(
        !p.seen.iter().any(|l| l.contains("127.0.0.2")),
        "the claimed address appeared in the log"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poolserver"))
        .args(["--proxy-protocol", "--proxy-from", "10.0.0.0/40"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prefix length must be 0 to 32"), "{err}");
}
