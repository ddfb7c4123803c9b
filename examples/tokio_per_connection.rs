//! Baseline for the benchmarks: the uppercase protocol on tokio, one task
//! per accepted connection on the multi-threaded runtime.
//!
//! ```text
//! cargo run --release --example tokio_per_connection -- [--addr 127.0.0.1:0] [--echo]
//! ```
//!
//! It exists so `scripts/compare.sh` can put poolserver's fixed pool of
//! blocking threads next to the usual async design. Everything a connection
//! does is kept the same as in poolserver's worker, so that only the
//! threading model differs: TCP_NODELAY, a 32 KiB read buffer, the same
//! [`Uppercaser`] writing into an output buffer reserved up front, and the
//! same lingering close (shut down our sending side, then drain the client
//! for at most 2 seconds). The transform runs inline on the runtime's
//! threads: one call handles at most 32 KiB (well under a millisecond), so
//! `spawn_blocking` would cost more than it saves. No limits, no timeouts,
//! no graceful shutdown: it runs until killed.
//!
//! On start it prints exactly one line, `listening on ADDR`, to stderr, with
//! the real port when `--addr` asked for port 0. `--echo` skips the
//! transform (poolserver's `--service echo` counterpart).

use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use poolserver::protocol::{Feed, Uppercaser, MAX_EXPANSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Same read size as poolserver's default (`DEFAULT_READ_BUFFER`).
const READ_BUFFER: usize = poolserver::DEFAULT_READ_BUFFER;
/// Same upper bound on the lingering close as poolserver (contract §2.6).
const LINGER: Duration = Duration::from_secs(2);
/// Pause after a failed accept(2) (for example a full fd table).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Uppercase,
    Echo,
}

struct Args {
    addr: String,
    mode: Mode,
}

const USAGE: &str = "usage: tokio_per_connection [--addr ADDR] [--echo]\n\
    \n  --addr ADDR   address to listen on [default: 127.0.0.1:0]\
    \n  --echo        send bytes back unchanged instead of uppercased";

/// Parses the two flags by hand, like the std baseline.
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

/// The default multi-threaded runtime: one worker thread per logical CPU,
/// the same number poolserver uses for its pool by default.
#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&args.addr).await {
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
        match listener.accept().await {
            Ok((mut stream, _peer)) => {
                let mode = args.mode;
                tokio::spawn(async move {
                    match serve(&mut stream, mode).await {
                        Ok(()) => lingering_close(stream).await,
                        Err(e) => {
                            if !matches!(
                                e.kind(),
                                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                            ) {
                                eprintln!("connection error: {e}");
                            }
                        }
                    }
                });
            }
            Err(e) => {
                // Never stop accepting; log at most once a second.
                if last_complaint.map_or(true, |t| t.elapsed() >= Duration::from_secs(1)) {
                    eprintln!("accept failed: {e}");
                    last_complaint = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The uppercase loop (or echo), exactly as poolserver's worker runs it.
async fn serve(stream: &mut TcpStream, mode: Mode) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut input = vec![0u8; READ_BUFFER];
    let mut output = Vec::with_capacity(MAX_EXPANSION * (READ_BUFFER + 16));
    let mut upper = Uppercaser::new();
    loop {
        // tokio retries EINTR itself.
        let n = stream.read(&mut input).await?;
        if mode == Mode::Echo {
            if n == 0 {
                return Ok(());
            }
            stream.write_all(&input[..n]).await?;
            continue;
        }
        output.clear();
        if n == 0 {
            // End of stream: answer what the transform still holds.
            upper.finish(&mut output);
            return stream.write_all(&output).await;
        }
        let verdict = upper.feed(&input[..n], &mut output);
        stream.write_all(&output).await?;
        if verdict == Feed::Exit {
            return Ok(());
        }
    }
}

/// Send our FIN, then read and discard what the client still sends until it
/// closes or [`LINGER`] passes (the same procedure as poolserver's).
async fn lingering_close(mut stream: TcpStream) {
    // `AsyncWriteExt::shutdown` on a TcpStream is shutdown(Write).
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut scratch = [0u8; 4096];
    let drain = async {
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    // Either the client closed or the linger time is up; both end here.
    let _ = tokio::time::timeout(LINGER, drain).await;
}
