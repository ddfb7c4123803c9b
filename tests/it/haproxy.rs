//! Behind the real HAProxy: `deploy/haproxy.cfg`, with only addresses,
//! ports, `maxconn` and the check interval changed, in front of two
//! poolservers with `--proxy-protocol --access-log`, all on loopback.
//! Skipped (with a message) only where `haproxy` cannot be found.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;

use crate::support::{
    connect, connect_from, read_to_close, round_trip, wait_until, ServerProcess, PATIENCE,
};

/// Workers per poolserver; HAProxy's `maxconn` is one less (a worker is
/// kept for the health check).
const WORKERS: usize = 3;

fn haproxy_binary() -> Option<&'static str> {
    ["haproxy", "/usr/sbin/haproxy"].into_iter().find(|bin| {
        Command::new(bin)
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// A running `haproxy -db` with its log (stdout and stderr) collected.
struct HaProxy {
    child: Child,
    frontend: SocketAddr,
    stats: PathBuf,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl HaProxy {
    fn start(bin: &str, a: SocketAddr, b: SocketAddr) -> HaProxy {
        let frontend = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = std::env::temp_dir();
        let stats = dir.join(format!("poolserver-haproxy-{}.sock", std::process::id()));
        let cfg_path = dir.join(format!("poolserver-haproxy-{}.cfg", std::process::id()));
        let sample = include_str!("../../deploy/haproxy.cfg");
        let cfg = substitute(
            sample,
            &[
                ("/run/haproxy-poolserver.sock", stats.to_str().unwrap()),
                ("bind 127.0.0.1:8080", &format!("bind {frontend}")),
                ("server a 127.0.0.1:8081", &format!("server a {a}")),
                ("server b 127.0.0.1:8082", &format!("server b {b}")),
                ("maxconn 7", &format!("maxconn {}", WORKERS - 1)),
                ("check inter 2s", "check inter 200ms"),
            ],
        );
        std::fs::write(&cfg_path, cfg).unwrap();
        let mut child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut h = HaProxy {
            child,
            frontend,
            stats,
            lines,
            log: Vec::new(),
        };
        wait_until("haproxy answers on its stats socket", || {
            h.collect_log();
            assert!(
                h.child.try_wait().unwrap().is_none(),
                "haproxy exited:\n{}",
                h.log.join("\n")
            );
            UnixStream::connect(&h.stats).is_ok()
        });
        h
    }

    /// `show stat` as rows of (proxy, server) -> field -> value.
    fn stat(&self, proxy: &str, server: &str, field: &str) -> String {
        let mut s = UnixStream::connect(&self.stats).expect("stats socket");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        s.read_to_string(&mut csv).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .expect("a show stat header")
            .split(',')
            .collect();
        let col = header
            .iter()
            .position(|h| *h == field)
            .expect("a known field");
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|row| row.first() == Some(&proxy) && row.get(1) == Some(&server))
            .and_then(|row| row.get(col).map(|v| v.to_string()))
            .unwrap_or_else(|| panic!("no {proxy}/{server} row in:\n{csv}"))
    }

    fn collect_log(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stats);
    }
}

fn substitute(sample: &str, pairs: &[(&str, &str)]) -> String {
    let mut cfg = sample.to_string();
    for (from, to) in pairs {
        assert!(
            cfg.contains(from),
            "deploy/haproxy.cfg no longer has `{from}`"
        );
        cfg = cfg.replace(from, to);
    }
    cfg
}

/// Connects through HAProxy and has one whole conversation.
fn conversation(frontend: SocketAddr, msg: &str) -> Result<(), String> {
    let mut c = TcpStream::connect(frontend).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(format!("{msg}\nquit\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    c.read_to_string(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    let want = format!("{}\n", msg.to_uppercase());
    if reply == want {
        Ok(())
    } else {
        Err(format!("{msg:?} got {reply:?}"))
    }
}

/// How many access lines each server has written so far.
fn served_by(p: &mut ServerProcess) -> usize {
    p.collect_lines();
    p.seen
        .iter()
        .filter(|l| l.contains("poolserver::access: client=127.0.0.1:") && l.contains("proxy="))
        .count()
}

#[test]
fn two_poolservers_behind_haproxy() {
    let Some(bin) = haproxy_binary() else {
        eprintln!("SKIPPED: haproxy not found (Debian package haproxy; .ci/run installs it)");
        return;
    };
    let workers = WORKERS.to_string();
    let args = [
        "--proxy-protocol",
        "--access-log",
        "--workers",
        &workers,
        "--monitor-interval",
        "0",
        "--shutdown-timeout",
        "1s",
    ];
    let mut a = ServerProcess::start(&args);
    let mut b = ServerProcess::start(&args);
    let mut h = HaProxy::start(bin, a.addr, b.addr);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        behind_haproxy(&mut a, &mut b, &mut h)
    }));
    h.collect_log();
    let tail = h
        .log
        .len()
        .saturating_sub(if outcome.is_ok() { 6 } else { 60 });
    eprintln!("haproxy log (last lines):\n{}", h.log[tail..].join("\n"));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn behind_haproxy(a: &mut ServerProcess, b: &mut ServerProcess, h: &mut HaProxy) {
    let fe = h.frontend;

    // Health checks pass: both UP, the check having spoken the protocol.
    wait_until("both servers are UP by a layer-7 check", || {
        ["a", "b"].iter().all(|s| {
            h.stat("pool", s, "status") == "UP" && h.stat("pool", s, "check_status") == "L7OK"
        })
    });
    eprintln!("health checks: a and b UP, check_status L7OK");

    // Right replies, and the true client in the access log: a client
    // bound to 127.0.0.2 shows as 127.0.0.2 and its own port.
    let mut c = connect_from("127.0.0.2", fe);
    let me = c.local_addr().unwrap();
    round_trip(
        &mut c,
        b"hello through haproxy\n",
        b"HELLO THROUGH HAPROXY\n",
    );
    c.write_all(b"quit\n").unwrap();
    assert_eq!(read_to_close(&mut c), b"");
    // This client never closes its side: `timeout client-fin` (2 s, like
    // poolserver's lingering close) frees its slot anyway.
    wait_until("the half-closed client's slot is freed", || {
        h.stat("pool", "a", "scur") == "0" && h.stat("pool", "b", "scur") == "0"
    });
    drop(c);
    let needle = format!("poolserver::access: client={me} proxy=127.0.0.1:");
    wait_until("a server logs the true client", || {
        a.collect_lines();
        b.collect_lines();
        a.seen.iter().chain(&b.seen).any(|l| l.contains(&needle))
    });
    let line = a
        .seen
        .iter()
        .chain(&b.seen)
        .find(|l| l.contains(&needle))
        .unwrap()
        .clone();
    eprintln!("access line: {line}");
    assert!(line.ends_with("in=27 out=22 end=quit"), "{line}");

    // Clients spread over both servers (leastconn): 2 held on each.
    let mut held: Vec<TcpStream> = (0..2 * (WORKERS - 1))
        .map(|i| {
            let mut c = connect(fe);
            round_trip(
                &mut c,
                format!("held {i}\n").as_bytes(),
                format!("HELD {i}\n").as_bytes(),
            );
            c
        })
        .collect();
    assert_eq!(
        (h.stat("pool", "a", "scur"), h.stat("pool", "b", "scur")),
        ("2".into(), "2".into())
    );

    // Both pools full: the next client waits in HAProxy's queue, not in a
    // server's kernel queue (neither server has a connection more), and is
    // served when a slot frees.
    let mut queued = connect(fe);
    queued.write_all(b"queued\n").unwrap();
    wait_until("the client waits in haproxy's queue", || {
        h.stat("pool", "BACKEND", "qcur") == "1"
    });
    assert_eq!(h.stat("pool", "a", "scur"), "2");
    assert_eq!(h.stat("pool", "b", "scur"), "2");
    eprintln!(
        "pools full: a scur=2, b scur=2 (maxconn {}); one client in haproxy's queue (qcur=1)",
        WORKERS - 1
    );
    // Health checks still pass with every allowed connection in use.
    assert_eq!(
        (h.stat("pool", "a", "status"), h.stat("pool", "b", "status")),
        ("UP".into(), "UP".into())
    );
    drop(held.pop());
    let mut reply = [0u8; 7];
    queued.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"QUEUED\n");
    eprintln!(
        "queued client served after a slot freed; haproxy qmax={}",
        h.stat("pool", "BACKEND", "qmax")
    );
    drop(queued);
    drop(held);

    // Spread of sequential clients.
    for i in 0..20 {
        conversation(fe, &format!("spread {i}")).unwrap();
    }
    wait_until("every conversation is logged", || {
        served_by(a) + served_by(b) >= 21
    });
    let (on_a, on_b) = (served_by(a), served_by(b));
    eprintln!("proxied conversations: a={on_a} b={on_b}");
    assert!(on_a >= 5 && on_b >= 5, "a={on_a} b={on_b}");

    // One server stopped: new clients are served by the other, none gets
    // a wrong reply (retries with redispatch cover the moments before the
    // health check marks it DOWN).
    a.signal("TERM");
    assert!(a.wait_exit(PATIENCE).success());
    h.collect_log();
    let log_before = h.log.len();
    let before_b = served_by(b);
    let failures: Vec<String> = (0..20)
        .filter_map(|i| conversation(fe, &format!("after stop {i}")).err())
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    wait_until("b logs all 20", || served_by(b) >= before_b + 20);
    wait_until("haproxy marks a DOWN", || {
        h.stat("pool", "a", "status").starts_with("DOWN")
    });
    assert_eq!(h.stat("pool", "b", "status"), "UP");
    h.collect_log();
    // tcplog's retries field reads `+N` when the session was redispatched.
    let redispatched = h.log[log_before..]
        .iter()
        .filter(|l| l.contains("/+"))
        .count();
    eprintln!(
        "a stopped: 20 of 20 new clients answered right, all by b ({redispatched} refused by a \
         first and redispatched by haproxy); a DOWN, b UP"
    );

    h.collect_log();
    assert!(
        h.log
            .iter()
            .filter(|l| l.contains("is DOWN"))
            .all(|l| l.contains("pool/a")),
        "only the stopped server went DOWN:\n{}",
        h.log.join("\n")
    );
}
