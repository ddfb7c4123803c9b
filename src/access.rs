//! The access log (`--access-log`): one logfmt line per connection when it
//! closes, on the log target [`ACCESS_TARGET`]:
//!
//! ```text
//! client=127.0.0.2:51000 proxy=127.0.0.1:40312 wait=0.041ms duration=3.112ms in=12 out=12 end=eof
//! ```
//!
//! * `client`: the true client — from the PROXY header when there is one;
//!   `proxy`: the balancer's address, only when it differs;
//! * `wait`: time in the accept queue (absent when the connection never
//!   reached a worker); `duration`: from accept to the close (after the
//!   lingering close), in milliseconds;
//! * `in` / `out`: bytes read from and written to this client (a PROXY
//!   header is not counted);
//! * `end`: how it ended, one of [`Ending`]'s words.
//!
//! The record travels inside the connection's [`LiveGuard`](crate::stats),
//! which every path a connection can take ends by dropping exactly once, so
//! every connection gets exactly one line at its true close. With the log
//! off the guard holds `None` and every note below is one branch.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::info;

/// The log target of access lines.
pub const ACCESS_TARGET: &str = "poolserver::access";

/// How a connection ended, as the access log's `end=` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The client closed its sending side.
    Eof,
    /// The service ended the conversation (an `exit` line, or a service
    /// that does not say which word).
    Exit,
    /// A `quit` line ended the conversation.
    Quit,
    /// The client sent nothing for the idle timeout.
    Idle,
    /// The client sent below the minimum data rate while others waited.
    Slow,
    /// The client stopped reading while a reply waited.
    WriteTimeout,
    /// Turned away with `BUSY` (queue full, waited too long, out of fds).
    Busy,
    /// Ended by shutdown (served until the deadline, or told `BUSY` then).
    Shutdown,
    /// The service panicked.
    Panic,
    /// A socket error (reset, broken pipe).
    Error,
    /// `--proxy-protocol` refused it (untrusted peer or no valid header).
    ProxyRefused,
}

impl Ending {
    /// The service closed the conversation after the line `word` (see
    /// [`Session::closed_by`](crate::Session::closed_by)).
    pub(crate) fn closed_by(word: Option<&str>) -> Self {
        match word {
            Some("quit") => Ending::Quit,
            _ => Ending::Exit,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Ending::Eof => "eof",
            Ending::Exit => "exit",
            Ending::Quit => "quit",
            Ending::Idle => "idle",
            Ending::Slow => "slow",
            Ending::WriteTimeout => "write-timeout",
            Ending::Busy => "busy",
            Ending::Shutdown => "shutdown",
            Ending::Panic => "panic",
            Ending::Error => "error",
            Ending::ProxyRefused => "proxy-refused",
        }
    }
}

/// One connection's access record, filled in as it goes.
#[derive(Debug)]
pub(crate) struct Access {
    client: SocketAddr,
    proxy: Option<SocketAddr>,
    accepted_at: Instant,
    wait: Option<Duration>,
    bytes_in: u64,
    bytes_out: u64,
    end: Ending,
}

impl Access {
    /// A record for a connection `accept(2)` just returned from `peer`.
    pub(crate) fn new(peer: SocketAddr) -> Self {
        Access {
            client: peer,
            proxy: None,
            accepted_at: Instant::now(),
            wait: None,
            bytes_in: 0,
            bytes_out: 0,
            // Every path sets its own; a line saying `error` with nothing
            // else set is a path that forgot.
            end: Ending::Error,
        }
    }

    /// The true client, when it came through a proxy.
    pub(crate) fn proxied(&mut self, client: SocketAddr) {
        if client != self.client {
            self.proxy = Some(self.client);
            self.client = client;
        }
    }

    pub(crate) fn waited(&mut self, wait: Duration) {
        self.wait = Some(wait);
    }

    pub(crate) fn transferred(&mut self, bytes_in: u64, bytes_out: u64) {
        self.bytes_in = bytes_in;
        self.bytes_out = bytes_out;
    }

    pub(crate) fn ended(&mut self, end: Ending) {
        self.end = end;
    }

    /// Writes the line; called once, when the connection is closed.
    pub(crate) fn log(&self) {
        info!(target: ACCESS_TARGET, "{self}");
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client={}", self.client)?;
        if let Some(proxy) = self.proxy {
            write!(f, " proxy={proxy}")?;
        }
        if let Some(wait) = self.wait {
            write!(f, " wait={}", Ms(wait))?;
        }
        write!(
            f,
            " duration={} in={} out={} end={}",
            Ms(self.accepted_at.elapsed()),
            self.bytes_in,
            self.bytes_out,
            self.end.as_str()
        )
    }
}

/// A duration as milliseconds with microsecond precision: `1.234ms`.
struct Ms(Duration);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        write!(f, "{}.{:03}ms", us / 1000, us % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_logfmt_with_the_true_client_first() {
        let mut a = Access::new("127.0.0.1:40000".parse().unwrap());
        a.proxied("127.0.0.2:5555".parse().unwrap());
        a.waited(Duration::from_micros(1_234));
        a.transferred(12, 13);
        a.ended(Ending::WriteTimeout);
        let line = a.to_string();
        assert!(
            line.starts_with("client=127.0.0.2:5555 proxy=127.0.0.1:40000 wait=1.234ms duration="),
            "{line}"
        );
        assert!(
            line.ends_with("ms in=12 out=13 end=write-timeout"),
            "{line}"
        );
        assert!(
            line.split(' ').all(|kv| kv
                .split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())),
            "{line}"
        );
    }

    #[test]
    fn a_direct_connection_names_no_proxy_and_an_unserved_one_no_wait() {
        let mut a = Access::new("[::1]:7".parse().unwrap());
        a.proxied("[::1]:7".parse().unwrap());
        a.ended(Ending::Busy);
        let line = a.to_string();
        assert!(line.starts_with("client=[::1]:7 duration="), "{line}");
        assert!(line.ends_with(" in=0 out=0 end=busy"), "{line}");
    }

    #[test]
    fn milliseconds_keep_three_decimals() {
        assert_eq!(Ms(Duration::from_nanos(999)).to_string(), "0.000ms");
        assert_eq!(Ms(Duration::from_micros(5)).to_string(), "0.005ms");
        assert_eq!(Ms(Duration::from_millis(2500)).to_string(), "2500.000ms");
    }
}
