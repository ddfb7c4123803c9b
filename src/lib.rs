//! A TCP server built on a fixed pool of worker threads fed by a bounded
//! accept queue.
//!
//! ```text
//!            accept(2)               bounded channel (--backlog)
//! clients ──────────────▶ acceptor ─────────────────────────────▶ worker 1
//!                            │      full? block (back-pressure)   worker 2
//!                            │         or reject with BUSY        ...
//!                            ▼                                    worker N
//!                         Counters ◀──────── busy / live / bytes ────┘
//!                            │
//!                         monitor: one report every --monitor-interval
//! ```
//!
//! With [`Dispatch::Connection`] (the default) each worker serves one
//! connection's whole conversation — by default the uppercase loop: every
//! byte comes back uppercased until the client closes or sends a line
//! `exit` or `quit` — then takes the next connection. With
//! [`Dispatch::Event`] a worker serves a connection only while it has data;
//! an idle one is parked in the poller's epoll, where idle workers wait
//! too, and the first free worker serves it when it is readable, so far
//! more connections than workers are served.
//!
//! Where to look:
//!
//! | what | module |
//! |---|---|
//! | settings, defaults, [`start`](ServerBuilder::start) | [`ServerBuilder`] (`config.rs`) |
//! | starting the threads, stopping | [`Server`] (`server.rs`) |
//! | the accept loop | `acceptor.rs` |
//! | the accept queue: `Job`, its turn-away, its length; the bell that wakes event workers | `queue.rs` |
//! | the worker loop (connection dispatch) | `pool.rs` |
//! | the worker loop (event dispatch): queues, then epoll | `event.rs` |
//! | one slice of a connection: reads, writes, parking, yielding | `event/slice.rs` |
//! | where idle connections (and idle event workers) wait; deadlines | `poller.rs`, `poller/table.rs` |
//! | `--max-connections`, the open-files limit | `admission.rs` |
//! | a connection's reads, writes and timeouts | [`Connection`] (`connection.rs`) |
//! | the lingering close, the `BUSY` turn-away | `closer.rs` |
//! | the uppercase byte rules, the `BUSY` lines | [`protocol`] |
//! | what a worker runs | [`EventService`], [`Service`], [`Uppercase`], [`Echo`] (`service.rs`) |
//! | the counters (one list) and their guards | [`Stats`] (`stats.rs`) |
//! | the periodic report | `monitor.rs` |
//! | the shutdown signal | `shutdown.rs` |
//! | one log line per interval | `ratelimit.rs` |
//! | the Prometheus endpoint | `metrics.rs`, `metrics/http.rs` |
//! | the PROXY protocol header, `--proxy-from` | [`Cidr`], [`AllowList`] (`proxy.rs`) |
//! | the access log | `access.rs` |
//! | systemd: notify, watchdog, socket activation | [`systemd`] |
//! | the `poolclient` conversation | [`client`] |
//! | the `poolload` drivers, reply check and report | [`load`] |
//!
//! # Example
//!
//! ```
//! use std::io::{BufRead, BufReader, Write};
//! use std::net::TcpStream;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = poolserver::Server::builder()
//!     .addr("127.0.0.1:0")
//!     .workers(4)
//!     .backlog(16)
//!     .monitor_interval(Duration::ZERO)
//!     .start()?;
//!
//! let mut client = TcpStream::connect(server.local_addr())?;
//! client.write_all(b"hello\n")?;
//! let mut line = String::new();
//! BufReader::new(&client).read_line(&mut line)?;
//! assert_eq!(line, "HELLO\n");
//!
//! drop(client);
//! let stats = server.shutdown(Duration::from_secs(5));
//! assert_eq!(stats.accepted, 1);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

mod acceptor;
mod access;
mod admission;
pub mod client;
mod closer;
mod config;
mod connection;
mod error;
mod event;
pub mod load;
mod metrics;
mod monitor;
mod poller;
mod pool;
pub mod protocol;
mod proxy;
mod queue;
mod ratelimit;
mod server;
mod service;
mod shutdown;
mod stats;
pub mod systemd;

pub use access::ACCESS_TARGET;
pub use admission::DEFAULT_MAX_CONNECTIONS;
pub use config::{parse_duration, Dispatch, MonitorFormat, Overflow, ServerBuilder};
pub use config::{
    DEFAULT_ADDR, DEFAULT_BACKLOG, DEFAULT_IDLE_TIMEOUT, DEFAULT_MONITOR_INTERVAL,
    DEFAULT_READ_BUFFER, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_WORKER_STACK, DEFAULT_WRITE_TIMEOUT,
};
pub use connection::{Connection, End};
pub use error::Error;
pub use proxy::{AllowList, Cidr, DEFAULT_PROXY_TIMEOUT, MAX_HEADER};
pub use server::{Server, STARTUP_TARGET};
pub use service::{serve_blocking, Buffers, Echo, EventService, Flow, Service, Session, Uppercase};
pub use stats::Stats;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
struct ReadmeDoctests;
