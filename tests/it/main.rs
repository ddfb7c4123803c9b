//! The integration tests: one test binary (it links once), one module per
//! concern. Every test starts a real server on 127.0.0.1 port 0 — through
//! the library API or as the built binary — and talks to it over real
//! sockets.

mod support;

/// `--access-log`: one line per connection (README, Running more than one).
mod access_log;
/// Attacks: floods, fd exhaustion, slow and vanishing clients, panics,
/// shutdown under load, monitor truth.
mod attack;
/// The `poolserver` binary: flags, exit codes, signals, monitor (§1, §3, §4).
mod cli;
/// The `poolclient` binary (§5).
mod client;
/// Event dispatch: more connections than workers, parking, admission.
mod event;
/// The fuzz corpus, replayed through the fuzz target's checks on stable.
mod fuzz_replay;
/// Two poolservers behind the real HAProxy (`deploy/haproxy.cfg`).
mod haproxy;
/// The `poolload` load generator (§6).
mod load;
/// The Prometheus endpoint, promtool, a real Prometheus, the pretty monitor.
mod metrics;
/// Occupancy, overflow, timeouts and panics in the worker pool (§1, §3).
mod pool;
/// The uppercase protocol over real sockets (contract §2).
mod protocol;
/// The PROXY protocol: true clients, refusals (`--proxy-protocol`).
mod proxy;
/// `--reuse-port`: several processes on one port, one stopped under load
/// in a private network namespace.
mod reuse_port;
/// Graceful shutdown through the library API (§4).
mod shutdown;
/// Under systemd: socket activation, notifications, the queue left to the
/// next instance.
mod systemd;
