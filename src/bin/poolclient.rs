//! `poolclient` (README, "The client"): sends standard input to a
//! poolserver and prints what comes back, both directions at once. This file owns only the
//! command line and the mapping to messages and exit codes; the
//! conversation itself is `poolserver::client`.
//!
//! Exit codes: 0 when the conversation ended (input done and answered, the
//! server closed first, or stdout was closed); 1 when the connection could
//! not be made or broke; 2 for bad usage (clap).

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use poolserver::client::{self, Ending};

/// Send standard input to a poolserver and print its answers.
///
/// Type lines and see them come back uppercased; a line `exit` or `quit`
/// ends the conversation. Piped use: `printf 'hello\n' | poolclient` prints
/// HELLO and exits once the server has answered everything.
///
/// Exit status: 0 when the conversation ended normally (including when the
/// server closed first), 1 when the server could not be reached or the
/// connection broke, 2 for bad usage.
#[derive(Parser, Debug)]
#[command(name = "poolclient", version)]
struct Args {
    /// Address of the server, HOST:PORT
    #[arg(short, long, env = "POOLCLIENT_ADDR", value_name = "HOST:PORT", default_value = poolserver::DEFAULT_ADDR)]
    addr: String,

    /// Give up connecting after this long (250ms, 5s; a bare number is seconds)
    #[arg(long, env = "POOLCLIENT_CONNECT_TIMEOUT", value_name = "DUR",
          default_value = humantime::format_duration(client::DEFAULT_CONNECT_TIMEOUT).to_string(),
          value_parser = poolserver::load::parse_positive_duration)]
    connect_timeout: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let stream = match client::connect(&args.addr, args.connect_timeout) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match client::run(stream, io::stdin(), &mut out) {
        Ok(Ending::Finished) | Ok(Ending::OutputClosed) => ExitCode::SUCCESS,
        Ok(Ending::ServerClosed) => {
            let _ = writeln!(io::stderr(), "poolclient: the server closed the connection");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &client::ClientError) -> ExitCode {
    let _ = writeln!(io::stderr(), "poolclient: {e}");
    ExitCode::FAILURE
}
