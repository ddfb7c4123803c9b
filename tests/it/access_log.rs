//! `--access-log`: one logfmt line per connection at its close, naming the
//! true client, with exact byte counts and how the connection ended.

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use rstest::rstest;

use crate::proxy::v2;
use crate::support::{connect, read_n, read_to_close, round_trip, Dispatch, ServerProcess};

/// Waits for the access line of the client at `client` and returns it.
fn access_line(p: &mut ServerProcess, client: SocketAddr) -> String {
    let needle = format!("poolserver::access: client={client} ");
    p.wait_for_line(|l| l.contains(&needle))
}

/// The value of `key=` in a logfmt line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// `end=` names the line that ended the conversation: `exit` or `quit`,
/// whole in one read or split across reads (held back, then decided).
#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn exit_and_quit_lines_are_told_apart(#[case] mode: Dispatch) {
    let mut p = ServerProcess::start_in(mode, &["--access-log", "--log-level", "warn"]);
    let cases: [(&[&[u8]], &str); 4] = [
        (&[b"a\nquit\n"], "quit"),
        (&[b"a\nexit\r\n"], "exit"),
        (&[b"a\nqu", b"it\n"], "quit"),
        (&[b"a\nex", b"it\n"], "exit"),
    ];
    for (writes, word) in cases {
        let mut c = connect(p.addr);
        round_trip(&mut c, writes[0], b"A\n");
        for w in &writes[1..] {
            c.write_all(w).unwrap();
        }
        assert_eq!(read_to_close(&mut c), b"", "{word}");
        let me = c.local_addr().unwrap();
        drop(c);
        let line = access_line(&mut p, me);
        assert_eq!(field(&line, "end"), Some(word), "{line}");
    }
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(20)).success());
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn each_connection_gets_one_line_with_the_true_client_bytes_and_end(#[case] mode: Dispatch) {
    let mut p = ServerProcess::start_in(
        mode,
        &[
            "--access-log",
            "--proxy-protocol",
            "--workers",
            "2",
            "--idle-timeout",
            "2s",
            "--log-level",
            "warn",
        ],
    );
    // Through a proxy: the header's client, the proxy's own address.
    let mut c = connect(p.addr);
    let mut first = v2("127.0.0.2:5555");
    first.extend_from_slice(b"hello\n");
    round_trip(&mut c, &first, b"HELLO\n");
    c.write_all(b"quit\n").unwrap();
    assert_eq!(read_to_close(&mut c), b"");
    let proxy_side = c.local_addr().unwrap();
    drop(c);
    let line = access_line(&mut p, "127.0.0.2:5555".parse().unwrap());
    assert_eq!(
        field(&line, "proxy"),
        Some(proxy_side.to_string().as_str()),
        "{line}"
    );
    assert_eq!(
        (field(&line, "in"), field(&line, "out")),
        (Some("11"), Some("6")),
        "{line}"
    );
    assert_eq!(field(&line, "end"), Some("quit"), "{line}");
    assert!(
        field(&line, "wait").is_some_and(|w| w.ends_with("ms")),
        "{line}"
    );
    assert!(
        field(&line, "duration").is_some_and(|d| d.ends_with("ms")),
        "{line}"
    );

    // A health check (v2 LOCAL) is its own client; end of stream is `eof`.
    let mut c = connect(p.addr);
    let mut first = crate::proxy::v2_local();
    first.extend_from_slice(b"abc");
    c.write_all(&first).unwrap();
    assert_eq!(read_n(&mut c, 3), b"ABC");
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut c), b"");
    let me = c.local_addr().unwrap();
    drop(c);
    let line = access_line(&mut p, me);
    assert_eq!(field(&line, "proxy"), None, "{line}");
    assert_eq!(
        (field(&line, "in"), field(&line, "out")),
        (Some("3"), Some("3")),
        "{line}"
    );
    assert_eq!(field(&line, "end"), Some("eof"), "{line}");

    // Silent past the idle timeout after the header: `idle`.
    let mut c = connect(p.addr);
    c.write_all(&v2("127.0.0.3:7777")).unwrap();
    assert_eq!(read_to_close(&mut c), b"");
    drop(c);
    let line = access_line(&mut p, "127.0.0.3:7777".parse().unwrap());
    assert_eq!(field(&line, "end"), Some("idle"), "{line}");

    // A refused header: the peer itself, never what it claimed.
    let mut c = connect(p.addr);
    // (A port past 65535: malformed, whatever the address says.)
    c.write_all(b"PROXY TCP4 203.0.113.1 127.0.0.1 9 99999\r\n")
        .unwrap();
    assert_eq!(read_to_close(&mut c), b"");
    let me = c.local_addr().unwrap();
    drop(c);
    let line = access_line(&mut p, me);
    assert_eq!(field(&line, "end"), Some("proxy-refused"), "{line}");
    assert_eq!(
        (field(&line, "in"), field(&line, "out")),
        (Some("0"), Some("0")),
        "{line}"
    );

    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(20)).success());
    let lines = p.drain_lines();
    let access: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("poolserver::access"))
        .collect();
    assert_eq!(access.len(), 4, "one line per connection:\n{access:#?}");
    assert!(!lines.iter().any(|l| l.contains("203.0.113.1")));
}

// Connection dispatch only: BUSY needs a full pool, which event dispatch does not fill.
#[test]
fn turned_away_and_shutdown_connections_are_logged_and_the_log_is_off_by_default() {
    let mut p = ServerProcess::start(&[
        "--access-log",
        "--workers",
        "1",
        "--backlog",
        "1",
        "--overflow",
        "reject",
        "--shutdown-timeout",
        "0",
    ]);
    let mut held = connect(p.addr);
    round_trip(&mut held, b"x", b"X");
    let waiting = connect(p.addr);
    p.wait_for_line(|l| l.contains("all 1 workers are busy"));
    let mut turned = connect(p.addr);
    let busy = read_to_close(&mut turned);
    assert!(busy.starts_with(b"BUSY"), "{busy:?}");
    let line = access_line(&mut p, turned.local_addr().unwrap());
    assert_eq!(field(&line, "end"), Some("busy"), "{line}");
    assert_eq!(field(&line, "wait"), None, "never reached a worker: {line}");

    // Shutdown with no grace: the served one ends `shutdown`, and so does
    // the one still waiting (told BUSY when a worker reaches it).
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(20)).success());
    let line = access_line(&mut p, held.local_addr().unwrap());
    assert_eq!(field(&line, "end"), Some("shutdown"), "{line}");
    assert_eq!(
        (field(&line, "in"), field(&line, "out")),
        (Some("1"), Some("1")),
        "{line}"
    );
    let line = access_line(&mut p, waiting.local_addr().unwrap());
    assert_eq!(field(&line, "end"), Some("shutdown"), "{line}");

    // Off by default.
    let mut quiet = ServerProcess::start(&["--shutdown-timeout", "0"]);
    let mut c = connect(quiet.addr);
    round_trip(&mut c, b"z", b"Z");
    drop(c);
    quiet.signal("TERM");
    assert!(quiet.wait_exit(Duration::from_secs(20)).success());
    assert!(!quiet
        .drain_lines()
        .iter()
        .any(|l| l.contains("poolserver::access")));
}
