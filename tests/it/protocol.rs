//! Contract §2 over real sockets: every rule of the uppercase loop, as a
//! client sees it.

use rstest::rstest;

use crate::support::Dispatch;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;

use crate::support::{self, connect, read_to_close, round_trip, ServerProcess};

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn unicode_is_uppercased_by_unicode_rules(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    round_trip(
        &mut c,
        "straße ǆ é\n".as_bytes(),
        "STRASSE Ǆ É\n".as_bytes(),
    );
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn invalid_utf8_comes_back_unchanged(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    round_trip(&mut c, b"ab\xFF\xFEcd\xC3(\n", b"AB\xFF\xFECD\xC3(\n");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn replies_do_not_wait_for_a_newline(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    round_trip(&mut c, b"no newline yet", b"NO NEWLINE YET");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn multibyte_character_split_across_writes(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    // `ß` is C3 9F. The lone C3 is held back; everything before it is not.
    round_trip(&mut c, b"stra\xC3", b"STRA");
    round_trip(&mut c, b"\x9Fe\n", b"SSE\n");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn exit_split_across_writes_ends_the_connection_unanswered(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    round_trip(&mut c, b"hi\n", b"HI\n");
    for part in [&b"ex"[..], b"i", b"t", b"\r"] {
        c.write_all(part).unwrap();
    }
    c.write_all(b"\nnever answered\n").unwrap();
    assert_eq!(read_to_close(&mut c), b"");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn quit_with_crlf_closes_and_discards_what_follows(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    c.write_all(b"first\nquit\r\nsecond\n").unwrap();
    assert_eq!(read_to_close(&mut c), b"FIRST\n");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn lines_that_merely_contain_exit_are_data(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    round_trip(&mut c, b"exit now\n", b"EXIT NOW\n");
    round_trip(&mut c, b"quitter\n", b"QUITTER\n");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn end_of_stream_flushes_what_is_held(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    // What is held back at EOF is answered: an unterminated `exit` line,
    // then (second connection) half a UTF-8 character.
    c.write_all(b"tail\nexit").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut c), b"TAIL\nEXIT");

    let mut c = connect(server.local_addr());
    c.write_all(b"half \xE2\x82").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut c), b"HALF \xE2\x82");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn eof_without_newline(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    c.write_all(b"no newline at all").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut c), b"NO NEWLINE AT ALL");
}

/// Contract §2.6: the client sends `quit` and keeps sending; the server's
/// close must not reset the connection before the reply is read. Without
/// the lingering close the unread bytes make the kernel send RST and the
/// read below fails with "connection reset".
#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn closing_does_not_destroy_replies_in_flight(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    for _ in 0..5 {
        let mut c = connect(server.local_addr());
        let mut burst = b"last words\nquit\n".to_vec();
        burst.extend(std::iter::repeat_n(b'z', 256 * 1024));
        // The server stops reading at `quit`, so part of the burst may never
        // be read: write from a thread and ignore its outcome.
        let mut w = c.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let _ = w.write_all(&burst);
            let _ = w.shutdown(Shutdown::Write);
        });
        let mut reply = Vec::new();
        match c.read_to_end(&mut reply) {
            Ok(_) => assert_eq!(reply, b"LAST WORDS\n"),
            Err(e) => panic!("reply destroyed: {e} (read so far: {reply:?})"),
        }
        writer.join().unwrap();
    }
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn many_round_trips_on_one_connection(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    for i in 0..200 {
        let msg = format!("message number {i} ünïcödé\n");
        round_trip(&mut c, msg.as_bytes(), msg.to_uppercase().as_bytes());
    }
}

/// Contract §2.5: a 256 MiB line without a newline streams through, and the
/// server's memory stays bounded by its fixed buffers.
#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn huge_line_streams_through_in_bounded_memory(#[case] mode: Dispatch) {
    const TOTAL: usize = 256 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let server = ServerProcess::start_in(mode, &["--workers", "1", "--monitor-interval", "0"]);
    let mut c = connect(server.addr);
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let chunk = [b'q'; CHUNK];
        for _ in 0..TOTAL / CHUNK {
            w.write_all(&chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0usize;
    loop {
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(
            buf[..n].iter().all(|&b| b == b'Q'),
            "wrong reply byte near offset {got}"
        );
        got += n;
    }
    writer.join().unwrap();
    assert_eq!(got, TOTAL);
    let rss_mib = server.peak_rss_kib() / 1024;
    assert!(
        rss_mib < 32,
        "server peak RSS {rss_mib} MiB for a 256 MiB line"
    );
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn a_reset_client_does_not_disturb_others(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 2);
    let mut steady = connect(server.local_addr());
    round_trip(&mut steady, b"steady\n", b"STEADY\n");
    for _ in 0..3 {
        let c = connect(server.local_addr());
        let sock = socket2::SockRef::from(&c);
        sock.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        (&c).write_all(b"about to vanish\n").unwrap();
        drop(c); // RST
    }
    round_trip(&mut steady, b"still here\n", b"STILL HERE\n");
    drop(steady);
    support::wait_until("all connections closed", || {
        let s = server.stats();
        s.live == 0 && s.busy == 0
    });
    let s = server.stats();
    assert_eq!((s.accepted, s.closed, s.rejected), (4, 4, 0));
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn byte_counters_are_exact(#[case] mode: Dispatch) {
    let server = support::server_in(mode, 1);
    let mut c = connect(server.local_addr());
    round_trip(&mut c, "ßß\n".as_bytes(), b"SSSS\n"); // 5 bytes in, 5 out
    round_trip(&mut c, b"abc\n", b"ABC\n");
    c.write_all(b"quit\n").unwrap();
    assert_eq!(read_to_close(&mut c), b"");
    let s = server.shutdown(std::time::Duration::from_secs(5));
    assert_eq!((s.bytes_in, s.bytes_out), (5 + 4 + 5, 5 + 4));
}
