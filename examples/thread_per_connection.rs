//! Baseline for the benchmarks: the uppercase protocol served the naive way,
//! one `std::thread` per accepted connection, with no pool and no queue.
//!
//! ```text
//! cargo run --release --example thread_per_connection -- [--addr 127.0.0.1:0] [--echo]
//! ```
//!
//! It exists so `scripts/compare.sh` can tell what the fixed pool costs or
//! saves against the simplest blocking design. To keep the comparison about
//! the *threading model* only, everything a connection does is the same as
//! in poolserver's worker: TCP_NODELAY, a 32 KiB read buffer, the very same
//! [`Uppercaser`] writing into an output buffer reserved up front, and the
//! same lingering close (shut down our sending side, then drain the client
//! for at most 2 seconds). What it deliberately lacks: a bound on threads,
//! idle/write timeouts, a monitor and graceful shutdown. It runs until
//! killed.
//!
//! On start it prints exactly one line, `listening on ADDR`, to stderr, with
//! the real port when `--addr` asked for port 0. `--echo` skips the
//! transform (poolserver's `--service echo` counterpart).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use poolserver::protocol::{Feed, Uppercaser, MAX_EXPANSION};

/// Same read size as poolserver's default (`DEFAULT_READ_BUFFER`).
const READ_BUFFER: usize = poolserver::DEFAULT_READ_BUFFER;
/// Same stack size as poolserver's workers: only touched pages cost memory,
/// but matching it keeps the RSS and thread-creation comparison honest.
const STACK_SIZE: usize = poolserver::DEFAULT_WORKER_STACK;
/// Same upper bound on the lingering close as poolserver (contract §2.6).
const LINGER: Duration = Duration::from_secs(2);
/// Pause after a failed accept(2) (for example a full fd table), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// What each connection thread does with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Uppercase,
    Echo,
}

struct Args {
    addr: String,
    mode: Mode,
}

const USAGE: &str = "usage: thread_per_connection [--addr ADDR] [--echo]\n\
    \n  --addr ADDR   address to listen on [default: 127.0.0.1:0]\
    \n  --echo        send bytes back unchanged instead of uppercased";

/// Parses the two flags by hand: a clap derive would be more code than the
/// whole server for two options.
fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:0".to_string(),
        mode: Mode::Uppercase,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--addr" | "-a" => args.addr = it.next().ok_or("--addr needs a value")?,
            s if s.starts_with("--addr=") => args.addr = s["--addr=".len()..].to_string(),
            "--echo" => args.mode = Mode::Echo,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument '{other}'")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&args.addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.addr);
            return ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        Ok(addr) => eprintln!("listening on {addr}"),
        Err(e) => {
            eprintln!("error: cannot read the bound address: {e}");
            return ExitCode::from(1);
        }
    }

    let mut last_complaint: Option<Instant> = None;
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => spawn_connection(stream, args.mode),
            Err(e) => {
                // Never stop accepting: EMFILE, ECONNABORTED and friends are
                // transient for a server. Log at most once a second.
                if last_complaint.map_or(true, |t| t.elapsed() >= Duration::from_secs(1)) {
                    eprintln!("accept failed: {e}");
                    last_complaint = Some(Instant::now());
                }
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

fn spawn_connection(stream: TcpStream, mode: Mode) {
    let spawned = thread::Builder::new()
        .name("conn".into())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            if let Err(e) = serve(&stream, mode) {
                // A reset or broken pipe is the client's business; there is
                // nothing to protect, so the socket is simply dropped.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) {
                    eprintln!("connection error: {e}");
                }
                return;
            }
            lingering_close(&stream);
        });
    // When the thread cannot be created the closure (and the stream in it)
    // is dropped, which closes the connection: the one failure mode this
    // design has under load, logged so it shows up in comparisons.
    if let Err(e) = spawned {
        eprintln!("cannot spawn a connection thread: {e}");
    }
}

/// The uppercase loop (or echo), exactly as poolserver's worker runs it.
fn serve(mut stream: &TcpStream, mode: Mode) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // Buffers on the heap, allocated once per connection (poolserver
    // allocates them once per worker, which is part of what is compared).
    let mut input = vec![0u8; READ_BUFFER];
    let mut output = Vec::with_capacity(MAX_EXPANSION * (READ_BUFFER + 16));
    let mut upper = Uppercaser::new();
    loop {
        let n = match stream.read(&mut input) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if mode == Mode::Echo {
            if n == 0 {
                return Ok(());
            }
            stream.write_all(&input[..n])?;
            continue;
        }
        output.clear();
        if n == 0 {
            // End of stream: answer what the transform still holds.
            upper.finish(&mut output);
            return stream.write_all(&output);
        }
        let verdict = upper.feed(&input[..n], &mut output);
        stream.write_all(&output)?;
        if verdict == Feed::Exit {
            return Ok(());
        }
    }
}

/// Send our FIN, then read and discard what the client still sends until it
/// closes or [`LINGER`] passes, so replies in flight are not destroyed by a
/// reset (the same procedure as poolserver's `lingering_close`).
fn lingering_close(mut stream: &TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut scratch = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
