//! The `poolserver` binary as a user runs it: flags and environment
//! variables, exit codes, the startup and monitor lines, and signals.

use rstest::rstest;

use crate::support::Dispatch;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{connect, read_to_close, round_trip, served_client, ServerProcess, PATIENCE};

fn poolserver(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_poolserver"))
        .args(args)
        .output()
        .expect("run poolserver")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_and_version_exit_zero() {
    let help = poolserver(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--addr",
        "--workers",
        "--backlog",
        "--listen-backlog",
        "--overflow",
        "--queue-timeout",
        "--idle-timeout",
        "--monitor-interval",
        "--monitor-format",
        "--shutdown-timeout",
        "--log-level",
        "--log-file",
        "POOLSERVER_WORKERS",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    let version = poolserver(&["-V"]);
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("poolserver "));
}

#[test]
fn bad_flags_exit_two_with_a_message() {
    for args in [
        &["--workers", "0"][..],
        &["--backlog", "0"],
        &["--overflow", "maybe"],
        &["--idle-timeout", "banana"],
        &["--monitor-format", "xml"],
        &["--no-such-flag"],
        &["--addr", "not an address"],
        &["--addr", "127.0.0.1:99999"],
    ] {
        let out = poolserver(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).trim().is_empty(), "{args:?}: silent");
    }
}

#[test]
fn an_address_in_use_exits_two_and_says_what_to_do() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = poolserver(&["--addr", &addr, "--monitor-interval", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("--addr"), "{err}");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn environment_variables_set_flags_and_the_startup_line_tells_the_truth(#[case] mode: Dispatch) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poolserver"));
    cmd.env("POOLSERVER_WORKERS", "3")
        .env("POOLSERVER_BACKLOG", "7");
    let mut server = ServerProcess::start_with_in(mode, cmd, &["--monitor-interval", "0"]);
    let line = server.wait_for_line(|l| l.contains("listening on"));
    assert_ne!(server.addr.port(), 0);
    assert!(
        line.contains(&format!("listening on {} ", server.addr)),
        "{line}"
    );
    assert!(
        line.contains("3 workers") && line.contains("capacity 7"),
        "{line}"
    );
    assert!(
        !line.contains('\u{1b}'),
        "colour codes while stderr is a pipe: {line:?}"
    );
    let mut c = connect(server.addr);
    round_trip(&mut c, b"env\n", b"ENV\n");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn a_listen_backlog_above_somaxconn_is_warned_about(#[case] mode: Dispatch) {
    let Ok(max) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") else {
        return; // not Linux: nothing caps it
    };
    let asked = max.trim().parse::<u64>().unwrap() + 1;
    let asked = asked.to_string();
    let mut server = ServerProcess::start_in(
        mode,
        &["--listen-backlog", &asked, "--monitor-interval", "0"],
    );
    let warning = server.wait_for_line(|l| l.contains("somaxconn"));
    assert!(
        warning.contains(&asked) && warning.contains(max.trim()),
        "{warning}"
    );
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn sigterm_with_live_connections_exits_zero_within_the_deadline(#[case] mode: Dispatch) {
    let mut server = ServerProcess::start_in(
        mode,
        &[
            "--workers",
            "2",
            "--shutdown-timeout",
            "1s",
            "--monitor-interval",
            "1h",
        ],
    );
    let mut a = served_client(server.addr);
    let mut b = served_client(server.addr);
    let start = Instant::now();
    server.signal("TERM");
    server.wait_for_line(|l| l.contains("SIGTERM received"));
    assert_eq!(read_to_close(&mut a), b"");
    assert_eq!(read_to_close(&mut b), b"");
    // Closed at once, as a client does, so the lingering close ends now
    // instead of after its 2 s (which left a loaded machine 1 s to exit).
    drop((a, b));
    let status = server.wait_exit(PATIENCE);
    let took = start.elapsed();
    assert_eq!(status.code(), Some(0));
    // 1 s grace, plus a poll slice and at most the 2 s lingering close.
    assert!(took < Duration::from_secs(4), "{took:?}");
    let lines = server.drain_lines();
    let last = lines
        .iter()
        .rfind(|l| l.contains("poolserver::monitor"))
        .expect("a final monitor line");
    assert!(
        last.contains("busy=0 workers=2 queued=0") && last.contains("final=true"),
        "{last}"
    );
    assert!(
        last.contains("live=0 accepted=2 rejected=0 closed=2"),
        "{last}"
    );
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn a_second_signal_exits_at_once_with_130(#[case] mode: Dispatch) {
    let mut server = ServerProcess::start_in(
        mode,
        &["--shutdown-timeout", "1h", "--monitor-interval", "0"],
    );
    let _client = served_client(server.addr);
    server.signal("INT");
    server.wait_for_line(|l| l.contains("SIGINT received"));
    let start = Instant::now();
    server.signal("INT");
    let status = server.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(130));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn text_monitor_lines_have_the_contract_fields_in_order(#[case] mode: Dispatch) {
    let mut server =
        ServerProcess::start_in(mode, &["--workers", "2", "--monitor-interval", "100ms"]);
    let _c = served_client(server.addr);
    // Event dispatch parks the silent client: it holds no worker.
    let (ready, busy) = match mode {
        Dispatch::Connection => ("live=1", "busy=1"),
        Dispatch::Event => ("parked=1", "busy=0"),
    };
    let line = server.wait_for_line(|l| l.contains("poolserver::monitor") && l.contains(ready));
    let fields = line.split("poolserver::monitor: ").nth(1).unwrap();
    let keys: Vec<&str> = fields
        .split(' ')
        .map(|kv| kv.split('=').next().unwrap())
        .collect();
    assert_eq!(
        &keys[..8],
        ["busy", "workers", "queued", "backlog", "live", "accepted", "rejected", "closed"]
    );
    for key in crate::support::MONITOR_EXTRA_FIELDS {
        assert!(keys.contains(&key), "{key} missing: {line}");
    }
    assert!(
        fields.starts_with(&format!(
            "{busy} workers=2 queued=0 backlog=1024 live=1 accepted=1 rejected=0 closed=0"
        )),
        "{line}"
    );
    assert!(line.contains("[INFO]"), "{line}");
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn json_monitor_goes_to_stdout_and_not_to_the_log(#[case] mode: Dispatch) {
    let mut server = ServerProcess::start_in(
        mode,
        &[
            "--workers",
            "1",
            "--monitor-interval",
            "50ms",
            "--monitor-format",
            "json",
        ],
    );
    let stdout = server.child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a report").unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    for key in [
        "busy", "workers", "queued", "backlog", "live", "accepted", "rejected", "closed",
    ] {
        assert!(v[key].is_u64(), "{key}: {first}");
    }
    assert_eq!(v["workers"], 1);
    server.signal("TERM");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let last: serde_json::Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(last["final"], true);
    assert!(server
        .drain_lines()
        .iter()
        .all(|l| !l.contains("poolserver::monitor")));
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn the_log_file_gets_the_log_too(#[case] mode: Dispatch) {
    // One directory per case: both cases run at once in one process, and a
    // shared file let one read the other's log (seen: "dispatch event" in
    // the connection case's file, removed and rewritten under it).
    let dir = std::env::temp_dir().join(format!("poolserver-log-{}-{mode:?}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.log");
    let _ = std::fs::remove_file(&path);
    let mut server = ServerProcess::start_in(
        mode,
        &[
            "--log-file",
            path.to_str().unwrap(),
            "--monitor-interval",
            "0",
        ],
    );
    server.signal("TERM");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(
        log.contains(&format!("listening on {}", server.addr)),
        "{log}"
    );
    assert!(log.contains("SIGTERM received"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn saturation_is_warned_once_per_episode_and_its_end_is_logged(#[case] mode: Dispatch) {
    let mut server = ServerProcess::start_in(mode, &["--workers", "1", "--monitor-interval", "0"]);
    let holder = served_client(server.addr);
    let mut waiting: Vec<_> = (0..3).map(|_| connect(server.addr)).collect();
    for w in &mut waiting {
        w.write_all(b"w\n").unwrap();
    }
    server.wait_for_line(|l| l.contains("all 1 workers are busy"));
    drop(holder);
    for mut w in waiting {
        w.write_all(b"quit\n").unwrap();
        assert_eq!(read_to_close(&mut w), b"W\n");
    }
    server.wait_for_line(|l| l.contains("saturation over"));
    let warnings = server
        .seen
        .iter()
        .filter(|l| l.contains("workers are busy"))
        .count();
    assert_eq!(warnings, 1, "{:?}", server.seen);
    let _ = std::io::stdout().flush();
}

#[rstest]
#[case::connection(Dispatch::Connection)]
#[case::event(Dispatch::Event)]
fn the_startup_line_shows_even_when_only_warnings_are_logged(#[case] mode: Dispatch) {
    // `start` waits for the "listening on" line: it must come.
    let mut server =
        ServerProcess::start_in(mode, &["--log-level", "warn", "--monitor-interval", "50ms"]);
    let mut c = served_client(server.addr);
    c.write_all(b"quit\n").unwrap();
    assert_eq!(read_to_close(&mut c), b"");
    server.signal("TERM");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    let lines = server.drain_lines();
    let infos: Vec<_> = lines.iter().filter(|l| l.contains("[INFO]")).collect();
    assert_eq!(infos.len(), 1, "only the startup line at info: {infos:?}");
    assert!(
        infos[0].contains("poolserver::startup: listening on"),
        "{infos:?}"
    );
}
