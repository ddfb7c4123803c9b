//! Running under systemd: socket activation (the listener comes from
//! `LISTEN_FDS` instead of being bound), and the notifications of a
//! `Type=notify` service — `READY=1` once the server runs, `STOPPING=1` when
//! shutdown begins, and `WATCHDOG=1` every half `WATCHDOG_USEC` when the
//! unit sets `WatchdogSec=`.
//!
//! Everything here is a no-op outside systemd (no `NOTIFY_SOCKET`, no
//! `LISTEN_FDS`), so the binary calls it unconditionally. The sample units
//! are in `deploy/`; the README's "Running more than one" explains them.

use std::io;
use std::net::TcpListener;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, warn};
use sd_notify::NotifyState;

/// The listener passed by systemd socket activation (or
/// `systemd-socket-activate`), if this process was given one.
///
/// Reads and then unsets `LISTEN_FDS` / `LISTEN_PID`, so children do not
/// inherit them. Only the first descriptor is used; a unit that passes more
/// gets a warning.
///
/// # Errors
///
/// The descriptor passed is not a listening TCP socket.
pub fn inherited_listener() -> io::Result<Option<TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 1 {
        warn!(
            "systemd passed {} sockets; poolserver listens on the first only",
            fds.len()
        );
    }
    fds.take_tcp_listener(0)
}

/// Tells the service manager the server is ready: the listener and every
/// worker run. Failures are logged, never fatal.
pub fn notify_ready() {
    send(&[NotifyState::Ready], "READY=1");
}

/// Tells the service manager the server is stopping.
pub fn notify_stopping() {
    send(&[NotifyState::Stopping], "STOPPING=1");
}

fn send(state: &[NotifyState<'_>], what: &str) {
    if let Err(e) = sd_notify::notify(false, state) {
        warn!("could not tell systemd {what}: {e}");
    }
}

/// The watchdog interval asked for by `WATCHDOG_USEC`, if it applies to
/// this process (`WATCHDOG_PID` unset or ours), as `sd_watchdog_enabled(3)`
/// says.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// A thread that sends `WATCHDOG=1` every half watchdog interval until it
/// is dropped.
#[derive(Debug)]
pub struct Watchdog {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts pinging if `WATCHDOG_USEC` applies to this process; `None`
    /// otherwise.
    ///
    /// # Errors
    ///
    /// The thread cannot be started.
    pub fn start() -> io::Result<Option<Watchdog>> {
        let Some(interval) = watchdog_interval() else {
            return Ok(None);
        };
        let every = interval / 2;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = thread::Builder::new()
            .name("poolserver-watchdog".into())
            .spawn(move || ping(every, &stopped))?;
        debug!(
            "systemd watchdog: WATCHDOG=1 every {}",
            humantime::format_duration(every)
        );
        Ok(Some(Watchdog {
            stop: Some(stop),
            thread: Some(thread),
        }))
    }
}

fn ping(every: Duration, stopped: &Receiver<()>) {
    loop {
        send(&[NotifyState::Watchdog], "WATCHDOG=1");
        match stopped.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
