//! The library's error type: what can go wrong while starting a server.
//!
//! Once a server runs, nothing is returned as an error any more: a failing
//! connection is logged and counted, and a failing `accept(2)` is logged,
//! backed off from, and retried.

use std::fmt;
use std::io;

/// Why a server could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range; the message says which and why.
    Config(String),
    /// The address could not be resolved, bound or listened on.
    Bind {
        /// The address as given.
        addr: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// A server thread, or the epoll instance the acceptor or the closer
    /// waits in, could not be set up (the system is out of threads, memory
    /// or file descriptors).
    Spawn(io::Error),
}

impl Error {
    /// True when the error is the caller's to fix (a bad setting or an
    /// address that cannot be used), as opposed to a system failure.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Config(_) | Error::Bind { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(why) => write!(f, "invalid configuration: {why}"),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Spawn(source) => write!(f, "cannot start the server's threads: {source} (out of threads, memory or file descriptors?)"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(_) => None,
            Error::Bind { source, .. } | Error::Spawn(source) => Some(source),
        }
    }
}
