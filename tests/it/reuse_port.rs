//! `--reuse-port`: several processes on one address. The stop-under-load
//! test runs in a private network namespace (`unshare -n`, as root), where
//! it may switch `net.ipv4.tcp_migrate_req` on without touching the host.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{connect, round_trip, wait_until, ServerProcess, PATIENCE};

#[test]
fn two_processes_share_a_port_only_with_reuse_port() {
    let a = ServerProcess::start(&["--reuse-port", "--workers", "1"]);
    let port = a.addr.port().to_string();
    let b = ServerProcess::start_on(
        Command::new(env!("CARGO_BIN_EXE_poolserver")),
        &a.addr.to_string(),
        &["--reuse-port", "--workers", "1"],
    );
    assert_eq!(b.addr, a.addr);
    let mut c = connect(a.addr);
    round_trip(&mut c, b"shared\n", b"SHARED\n");
    // Without the flag the port is taken.
    let out = Command::new(env!("CARGO_BIN_EXE_poolserver"))
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Set in the re-executed test binary inside the namespace.
const IN_NETNS: &str = "POOLSERVER_TEST_IN_NETNS";

#[test]
fn stopping_one_of_two_under_load_resets_no_client() {
    if std::env::var_os(IN_NETNS).is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("unshare")
            .arg("-n")
            .arg(&exe)
            .args([
                "reuse_port::stopping_one_of_two_under_load_resets_no_client",
                "--exact",
                "--nocapture",
            ])
            .env(IN_NETNS, "1")
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                eprintln!(
                    "SKIPPED: cannot run unshare(1) ({e}); a private network namespace is needed"
                );
                return;
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() && stderr.starts_with("unshare:") {
            eprintln!(
                "SKIPPED: no private network namespace here ({}); run as root, as CI does",
                stderr.trim()
            );
            return;
        }
        eprintln!("{stdout}{stderr}");
        assert!(out.status.success(), "the test inside the namespace failed");
        assert!(stdout.contains("1 passed"), "the inner test did not run");
        return;
    }
    in_namespace();
}

/// Inside the namespace: loopback up, migration on, two instances, load,
/// stop one.
fn in_namespace() {
    let ok = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip(8) (Debian package iproute2)")
        .success();
    assert!(ok, "ip link set lo up");
    std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1").expect("set tcp_migrate_req");

    // Small pools and queues, so clients wait in each kernel queue.
    let args = [
        "--reuse-port",
        "--workers",
        "2",
        "--backlog",
        "2",
        "--access-log",
    ];
    let mut a = ServerProcess::start(&args);
    let addr = a.addr;
    let mut b = ServerProcess::start_on(
        Command::new(env!("CARGO_BIN_EXE_poolserver")),
        &addr.to_string(),
        &args,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let loops: Vec<_> = (0..24)
        .map(|_| {
            let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
            thread::spawn(move || client_loop(addr, &stop, &served, &failures))
        })
        .collect();

    // Both serve, then one stops while the load goes on.
    a.wait_for_line(|l| l.contains("poolserver::access"));
    b.wait_for_line(|l| l.contains("poolserver::access"));
    a.signal("TERM");
    assert!(a.wait_exit(PATIENCE).success());
    let after_stop = served.load(Ordering::Relaxed);
    wait_until("the survivor serves 500 more conversations", || {
        served.load(Ordering::Relaxed) >= after_stop + 500
    });
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let a_served = a
        .drain_lines()
        .iter()
        .filter(|l| l.contains("end=quit"))
        .count();
    eprintln!(
        "reuse-port: {} conversations, {} by the stopped instance, {} failed",
        served.load(Ordering::Relaxed),
        a_served,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "clients failed: {:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(a_served > 0);
}

/// Whole conversations in a loop until told to stop (at most 20,000).
fn client_loop(
    addr: SocketAddr,
    stop: &AtomicBool,
    served: &AtomicU64,
    failures: &Mutex<Vec<String>>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..20_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        match conversation(addr) {
            Ok(()) => {
                served.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => failures.lock().unwrap().push(e),
        }
    }
}

fn conversation(addr: SocketAddr) -> Result<(), String> {
    let mut c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(b"ping\nquit\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    c.read_to_end(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    if reply == b"PING\n" {
        Ok(())
    } else {
        Err(format!("reply {:?}", String::from_utf8_lossy(&reply)))
    }
}
