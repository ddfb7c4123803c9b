//! How the size of the worker pool shapes throughput: round trips per
//! second for every pool size in {1, 2, 4, 8, 16, 32} against every number
//! of concurrent connections in {1, 8, 64}, in connection dispatch (group
//! `pool_sizes`); and event dispatch with more connections than workers,
//! pool sizes {1, 2, 8} against {64, 512} connections (group
//! `pool_sizes_event`).
//!
//! ```text
//! cargo bench --bench pool_sizes
//! cargo bench --bench pool_sizes -- pool_sizes_event    # event mode only
//! python3 scripts/plot_benches.py          # docs/pool_sizes.png + tables
//! ```
//!
//! The server runs in-process through the library, on 127.0.0.1 port 0,
//! with the monitor off. One server is started per pool size (and mode),
//! outside the timed part, and reused by every connection count and
//! iteration; it is shut down (and its counters checked) when that pool
//! size is done.
//!
//! # What one iteration is
//!
//! `C` client threads each open one connection and then, all released at
//! once, do [`ROUND_TRIPS`] round trips of a 64-byte message (63 lowercase
//! letters and `\n`), checking every reply byte: a wrong reply panics the
//! bench. Then each closes its connection.
//!
//! * **Not timed:** spawning the client threads and `connect(2)`. The
//!   handshake is done by the kernel whether or not a worker is free, so it
//!   says nothing about the pool (and would add thread-spawn noise).
//! * **Timed:** from the moment all connections are open to the moment the
//!   last one has done its round trips and closed. With more connections
//!   than workers, the extra connections wait in the accept queue until a
//!   worker finishes one (when its client closes); that wait *is* part of
//!   what this bench shows, since it is what a client of a too-small pool
//!   experiences. In event dispatch a connection holds a worker only while
//!   it has data, so all of them progress together.
//!
//! `Throughput::Elements` is the number of round trips in one iteration
//! (`C * ROUND_TRIPS`), so criterion reports round trips per second.
//!
//! # Keeping it short
//!
//! The machine this was written on has 2 cores, shared by the client
//! threads and the server. Flat sampling with 10 samples, 0.5 s of warm-up
//! and 2 s of measurement per point keep the 24 points to a few minutes.
//! 512 client threads are spawned per event-mode iteration at 512
//! connections, outside the timed part like the connects.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use poolserver::{Dispatch, Server};

const WORKERS: [usize; 6] = [1, 2, 4, 8, 16, 32];
const CONNECTIONS: [usize; 3] = [1, 8, 64];
/// Event dispatch: pool sizes against connection counts above them.
const EVENT_WORKERS: [usize; 3] = [1, 2, 8];
const EVENT_CONNECTIONS: [usize; 2] = [64, 512];
/// Round trips per connection per iteration. Large enough that a
/// connection's cost is dominated by its round trips, not by the first
/// (queue hand-off) one, small enough that 64 connections through one
/// worker still fit many iterations in the measurement time.
const ROUND_TRIPS: usize = 50;
const MESSAGE_LEN: usize = 64;
/// A server that stops answering fails the bench instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The 26 messages a connection cycles through (each starting at another
/// letter, so a reply meant for the previous round trip cannot pass), and
/// the replies they must get.
struct Messages {
    requests: Vec<[u8; MESSAGE_LEN]>,
    replies: Vec<[u8; MESSAGE_LEN]>,
}

impl Messages {
    fn new() -> Self {
        let requests: Vec<[u8; MESSAGE_LEN]> = (0..26u8)
            .map(|start| {
                let mut m = [b'\n'; MESSAGE_LEN];
                for (i, b) in m[..MESSAGE_LEN - 1].iter_mut().enumerate() {
                    *b = b'a' + (start + i as u8) % 26;
                }
                m
            })
            .collect();
        let replies = requests
            .iter()
            .map(|m| m.map(|b| b.to_ascii_uppercase()))
            .collect();
        Messages { requests, replies }
    }
}

/// One client connection, opened before the clock starts.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    // Same setting as the server side: small messages, latency matters.
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("set write timeout");
    stream
}

/// The timed part of one connection: its round trips, each reply checked
/// byte for byte, then the close that frees its worker.
fn round_trips(mut stream: TcpStream, id: usize, msgs: &Messages) {
    let mut reply = [0u8; MESSAGE_LEN];
    for i in 0..ROUND_TRIPS {
        let k = (id + i) % msgs.requests.len();
        stream
            .write_all(&msgs.requests[k])
            .unwrap_or_else(|e| panic!("connection {id}, round trip {i}: write: {e}"));
        stream
            .read_exact(&mut reply)
            .unwrap_or_else(|e| panic!("connection {id}, round trip {i}: read: {e}"));
        assert!(
            reply == msgs.replies[k],
            "connection {id}, round trip {i}: wrong reply {:?}, expected {:?}",
            String::from_utf8_lossy(&reply),
            String::from_utf8_lossy(&msgs.replies[k]),
        );
    }
    // Dropping the stream closes it: the worker reads end of stream, does
    // its (immediate) lingering close and takes the next queued connection.
    drop(stream);
}

/// One iteration with `conns` concurrent connections; returns the timed
/// part only.
fn run_once(addr: SocketAddr, conns: usize, msgs: &Messages) -> Duration {
    // Every client plus this thread: the clock starts when all are ready.
    let ready = Barrier::new(conns + 1);
    thread::scope(|s| {
        for id in 0..conns {
            let ready = &ready;
            s.spawn(move || {
                let stream = connect(addr);
                ready.wait();
                round_trips(stream, id, msgs);
            });
        }
        ready.wait();
        let start = Instant::now();
        // Leaving the scope joins every client (and re-raises a client's
        // panic, so a wrong reply fails the bench).
        start
    })
    .elapsed()
}

/// Flat sampling, 10 samples, short warm-up and measurement: one iteration
/// takes milliseconds to a few hundred milliseconds, and flat sampling
/// avoids the linear mode's 55-iteration minimum.
fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// Benches every connection count in `conns` against one server with
/// `workers` workers in `dispatch` mode, then shuts it down and checks its
/// counters.
fn bench_pool(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    msgs: &Messages,
    dispatch: Dispatch,
    workers: usize,
    conns: &[usize],
) {
    let server = Server::builder()
        .addr("127.0.0.1:0")
        .workers(workers)
        .backlog(1024)
        .dispatch(dispatch)
        .monitor_interval(Duration::ZERO)
        .start()
        .expect("start the server");
    let addr = server.local_addr();

    for &conns in conns {
        group.throughput(Throughput::Elements((conns * ROUND_TRIPS) as u64));
        let id = BenchmarkId::new(format!("conns={conns}"), format!("workers={workers}"));
        group.bench_with_input(id, &conns, |b, &conns| {
            b.iter_custom(|iters| (0..iters).map(|_| run_once(addr, conns, msgs)).sum())
        });
    }

    // Every connection was closed by its client, so this returns as soon
    // as the threads are joined.
    let stats = server.shutdown(Duration::from_secs(2));
    assert_eq!(stats.panics, 0, "workers panicked: {stats:?}");
    assert_eq!(stats.live, 0, "connections left open: {stats:?}");
    assert_eq!(stats.rejected, 0, "connections turned away: {stats:?}");
}

fn pool_sizes(c: &mut Criterion) {
    let msgs = Messages::new();
    let mut group = c.benchmark_group("pool_sizes");
    configure(&mut group);
    for workers in WORKERS {
        bench_pool(
            &mut group,
            &msgs,
            Dispatch::Connection,
            workers,
            &CONNECTIONS,
        );
    }
    group.finish();

    let mut group = c.benchmark_group("pool_sizes_event");
    configure(&mut group);
    for workers in EVENT_WORKERS {
        bench_pool(
            &mut group,
            &msgs,
            Dispatch::Event,
            workers,
            &EVENT_CONNECTIONS,
        );
    }
    group.finish();
}

criterion_group!(benches, pool_sizes);
criterion_main!(benches);
