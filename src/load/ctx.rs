//! What every connection of a run shares ([`Ctx`]: the settings, the
//! resolved addresses, the pattern, the clock's landmarks and the shared
//! histograms) and the per-connection helpers that feed the shared parts in
//! batches ([`Latencies`], [`Progress`]). The connect, the polite close and
//! the first-reply bookkeeping every mode needs live here too, written once.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::pattern::Pattern;
use super::sock::{is_timeout, read_some, write_all, Got};
use super::tally::{histogram_us, Tally, MAX_EXAMPLES};
use super::{Live, LoadConfig, SLICE};

/// Latencies buffered per connection before they are merged into the
/// shared histogram.
const LATENCY_BATCH: usize = 256;

/// What every connection thread shares.
#[derive(Debug)]
pub(super) struct Ctx<'a> {
    /// The run's settings.
    pub(super) cfg: &'a LoadConfig,
    /// The progress counters and the stop signal.
    pub(super) live: &'a Live,
    /// What the address resolved to.
    pub(super) addrs: Vec<SocketAddr>,
    /// The address that last accepted a connection; tried first.
    pub(super) preferred: AtomicUsize,
    /// The messages and their expected replies.
    pub(super) pattern: Pattern,
    /// Bulk mode: the pattern repeated to about
    /// [`BULK_CHUNK`](super::BULK_CHUNK) bytes.
    pub(super) bulk_chunk: Vec<u8>,
    /// Round trips sent before this are not counted.
    pub(super) warmup_end: Instant,
    /// End of the measured time of a timed run; `None` when the run ends by
    /// count (`messages`, bulk).
    pub(super) measure_end: Option<Instant>,
    /// The hard cap on the whole run.
    pub(super) deadline: Instant,
    /// Counted round-trip (cycle) latencies.
    pub(super) latency: Mutex<Histogram<u64>>,
    /// Connect-to-first-reply times.
    pub(super) first_reply: Mutex<Histogram<u64>>,
}

/// A connection that [`Ctx::open`] made: the setup pingpong and bulk share.
#[derive(Debug)]
pub(super) struct Opened {
    /// The connected socket, with the [`SLICE`] timeouts set.
    pub(super) stream: TcpStream,
    /// When the connect completed: the start of the first-reply wait.
    pub(super) connected: Instant,
    /// The pattern's message this connection starts with, so connections
    /// do not all send the same bytes.
    pub(super) first_variant: usize,
}

/// Latencies of one connection, merged into a shared histogram a batch at
/// a time so connections neither allocate nor contend per message.
pub(super) struct Latencies<'a> {
    buf: Vec<u64>,
    sink: &'a Mutex<Histogram<u64>>,
}

impl<'a> Latencies<'a> {
    pub(super) fn new(sink: &'a Mutex<Histogram<u64>>) -> Self {
        Latencies {
            buf: Vec::with_capacity(LATENCY_BATCH),
            sink,
        }
    }

    pub(super) fn record(&mut self, d: Duration) {
        self.buf.push(histogram_us(d));
        if self.buf.len() == LATENCY_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut h = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        for &us in &self.buf {
            h.saturating_record(us);
        }
        self.buf.clear();
    }
}

impl Drop for Latencies<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Adds to the [`Live`] counters in small batches.
pub(super) struct Progress<'a> {
    live: &'a Live,
    round_trips: u64,
    bytes: u64,
    last: Instant,
}

impl<'a> Progress<'a> {
    pub(super) fn new(live: &'a Live) -> Self {
        Progress {
            live,
            round_trips: 0,
            bytes: 0,
            last: Instant::now(),
        }
    }

    pub(super) fn add(&mut self, round_trips: u64, bytes: u64, now: Instant) {
        self.round_trips += round_trips;
        self.bytes += bytes;
        if self.round_trips >= 64 || now.duration_since(self.last) >= Duration::from_millis(50) {
            self.flush();
            self.last = now;
        }
    }

    fn flush(&mut self) {
        self.live.round_trips.fetch_add(self.round_trips, Relaxed);
        self.live.bytes.fetch_add(self.bytes, Relaxed);
        self.round_trips = 0;
        self.bytes = 0;
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Ctx<'_> {
    pub(super) fn past_deadline(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Was the run stopped early ([`Live::stop`])?
    pub(super) fn stopped(&self) -> bool {
        self.live.stopped_at().is_some()
    }

    /// The end of the measured time: the configured one (timed runs) or
    /// the moment the run was stopped, whichever is first.
    pub(super) fn end_of_measure(&self) -> Option<Instant> {
        match (self.measure_end, self.live.stopped_at()) {
            (Some(end), Some(stop)) => Some(end.min(stop)),
            (end, stop) => end.or(stop),
        }
    }

    pub(super) fn past_measure_end(&self, now: Instant) -> bool {
        self.end_of_measure().is_some_and(|m| now >= m)
    }

    /// May a connection start another message (cycle) at `now`, with
    /// `budget` counted ones left (count-bound runs)?
    pub(super) fn may_start(&self, now: Instant, budget: u64) -> bool {
        if self.past_deadline(now) || self.stopped() {
            return false;
        }
        match self.measure_end {
            Some(end) => now < end,
            None => budget > 0,
        }
    }

    /// Is a round trip sent at `sent` and complete at `done` counted?
    pub(super) fn counts(&self, sent: Instant, done: Instant) -> bool {
        sent >= self.warmup_end && self.end_of_measure().map_or(true, |m| done <= m)
    }

    /// Connects connection number `idx` and picks the message it starts
    /// with. On failure the tally says why, its work is marked finished,
    /// and `None` is returned.
    pub(super) fn open(&self, idx: usize, t: &mut Tally) -> Option<Opened> {
        let Some(stream) = self.connect(t) else {
            t.finished = Some(Instant::now());
            return None;
        };
        Some(Opened {
            stream,
            connected: Instant::now(),
            first_variant: idx % self.pattern.variants,
        })
    }

    /// Connects to the first address that accepts, within the connect
    /// timeout and the deadline. On failure the tally says why and `None`
    /// is returned.
    pub(super) fn connect(&self, t: &mut Tally) -> Option<TcpStream> {
        let n = self.addrs.len();
        let first = self.preferred.load(Relaxed);
        let mut last_err = None;
        for i in 0..n {
            let k = (first + i) % n;
            let now = Instant::now();
            let left = self.deadline.saturating_duration_since(now);
            if left.is_zero() {
                t.cut = true;
                return None;
            }
            let limit = self.cfg.connect_timeout.min(left);
            match TcpStream::connect_timeout(&self.addrs[k], limit) {
                Ok(s) => {
                    self.preferred.store(k, Relaxed);
                    let set = s
                        .set_nodelay(true)
                        .and_then(|()| s.set_read_timeout(Some(SLICE)))
                        .and_then(|()| s.set_write_timeout(Some(SLICE)));
                    if let Err(e) = set {
                        t.error(self.live, format!("cannot set up a socket: {e}"));
                        return None;
                    }
                    return Some(s);
                }
                Err(e) if is_timeout(&e) && limit < self.cfg.connect_timeout => {
                    t.cut = true;
                    return None;
                }
                Err(e) => last_err = Some((k, e)),
            }
        }
        if let Some((k, e)) = last_err {
            let addr = self.addrs[k];
            t.error(
                self.live,
                format!("cannot connect to {addr}: {e}{}", connect_hint(&e)),
            );
        }
        None
    }

    /// Ends a conversation the polite way: `quit` and a half-close, then
    /// reads to the server's close, checking that nothing but the expected
    /// tail comes after the last reply.
    pub(super) fn close(&self, stream: &TcpStream, buf: &mut [u8], t: &mut Tally) {
        let give_up = |now| self.past_deadline(now);
        let sent = write_all(stream, b"quit\n", give_up)
            .and_then(|done| stream.shutdown(Shutdown::Write).map(|()| done));
        match sent {
            Ok(true) => {}
            Ok(false) => {
                t.cut = true;
                return;
            }
            Err(e) => {
                t.error(self.live, format!("sending quit failed: {e}"));
                return;
            }
        }
        let tail = self.cfg.expect.tail();
        let mut seen = 0usize;
        let mut differs = false;
        loop {
            match read_some(stream, buf, give_up) {
                Ok(Got::Data(n)) => {
                    let expected = &tail[seen.min(tail.len())..];
                    if n > expected.len() || buf[..n] != expected[..n] {
                        differs = true;
                    }
                    seen += n;
                    // A server that never stops sending must not hold us.
                    if self.past_deadline(Instant::now()) {
                        t.cut = true;
                        return;
                    }
                }
                Ok(Got::Eof) => break,
                Ok(Got::Idle) => {
                    t.cut = true;
                    return;
                }
                Err(e) => {
                    t.error(self.live, format!("reading the server's close failed: {e}"));
                    return;
                }
            }
        }
        if differs || seen != tail.len() {
            t.wrong(self.live, 1);
            if t.error_messages.len() < MAX_EXAMPLES {
                t.error_messages.push(format!(
                    "after `quit` the server sent {seen} bytes, expected {:?}",
                    String::from_utf8_lossy(tail)
                ));
            }
        }
    }

    /// Records a connection's first reply. One that only came after the
    /// measured time ended counts as never served: otherwise a connection
    /// queued behind the measured ones would look served whenever their
    /// closes freed a worker just before it gave up.
    ///
    /// Connect mode passes `late_is_unserved = false`: there a cycle that
    /// merely straddles the end of the measured time is normal, and it is
    /// neither counted nor recorded.
    pub(super) fn first_reply(
        &self,
        t: &mut Tally,
        now: Instant,
        connected: Instant,
        late_is_unserved: bool,
    ) {
        if self.past_measure_end(now) {
            t.never_served += u64::from(late_is_unserved);
            return;
        }
        let mut h = self.first_reply.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(histogram_us(now.duration_since(connected)));
    }
}

/// What to do about a failed connect, as a `; …` tail for its message.
pub(super) fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "; is poolserver running there? start it with `poolserver --addr ADDR`"
        }
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            "; the server's listen queue may be full, or raise --connect-timeout"
        }
        _ if e.raw_os_error() == Some(24) => {
            "; raise the open-files limit (`ulimit -n`) or use fewer --connections or --idle"
        }
        _ => "",
    }
}
