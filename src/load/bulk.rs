//! Bulk mode: each connection streams `bulk_bytes` of message lines from a
//! writer thread while its own thread reads and checks the replies as they
//! come. Writing and reading must overlap, or both TCP buffers fill and the
//! two sides deadlock. Measures throughput.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};
use std::thread;
use std::time::Instant;

use super::ctx::{Ctx, Opened, Progress};
use super::pattern::{is_busy, Checker};
use super::sock::{read_some, write_all, Got, READ_BUF};
use super::tally::Tally;

/// Bulk: a writer thread streams `bulk_bytes` of message lines and
/// half-closes; this thread reads and checks the replies as they come.
pub(super) fn bulk(ctx: &Ctx<'_>, idx: usize) -> Tally {
    let mut t = Tally::default();
    let Some(Opened {
        stream,
        connected,
        first_variant,
    }) = ctx.open(idx, &mut t)
    else {
        return t;
    };
    let pattern = &ctx.pattern;
    let total = ctx.cfg.bulk_bytes;
    // Set by either side when it stops early, so the other does not wait
    // for the deadline.
    let abort = AtomicBool::new(false);
    // Bytes the writer has sent; less than `total` when the run is stopped.
    let sent = AtomicU64::new(0);

    thread::scope(|s| {
        let writer = thread::Builder::new()
            .name(format!("poolload-{idx}-writer"))
            .stack_size(128 * 1024)
            .spawn_scoped(s, || stream_out(ctx, &stream, first_variant, &abort, &sent));
        let writer = match writer {
            Ok(w) => w,
            Err(e) => {
                t.error(ctx.live, format!("cannot start a writer thread ({e})"));
                return;
            }
        };

        let mut checker = Checker::new(pattern, first_variant);
        let mut buf = vec![0u8; READ_BUF];
        let mut progress = Progress::new(ctx.live);
        let mut received: u64 = 0;
        let mut served = false;
        let give_up = |n| ctx.past_deadline(n) || abort.load(Relaxed);
        loop {
            match read_some(&stream, &mut buf, give_up) {
                Ok(Got::Data(n)) => {
                    let now = Instant::now();
                    if received == 0 && is_busy(&buf[..n]) {
                        t.rejected += 1;
                        break;
                    }
                    let take = n.min(usize::try_from(total - received).unwrap_or(usize::MAX));
                    let (done, wrong) = checker.feed(&buf[..take]);
                    t.wrong(ctx.live, wrong);
                    received += take as u64;
                    t.bytes += take as u64;
                    t.counted += done;
                    if done > 0 {
                        t.last_counted = Some(now);
                        if !served {
                            served = true;
                            ctx.first_reply(&mut t, now, connected, true);
                        }
                    }
                    progress.add(done, take as u64, now);
                    if n > take {
                        t.unasked(ctx.live, n - take);
                        break;
                    }
                }
                Ok(Got::Eof) => {
                    if checker.partial_is_wrong() {
                        t.wrong(ctx.live, 1);
                    }
                    // The writer's count is final: the server closes only
                    // after our FIN, which the writer sends after its last
                    // update.
                    let expected = if ctx.stopped() {
                        sent.load(SeqCst)
                    } else {
                        total
                    };
                    if received < expected {
                        t.error(
                            ctx.live,
                            format!(
                                "the server closed the connection after {received} of {expected} bytes"
                            ),
                        );
                    }
                    break;
                }
                Ok(Got::Idle) => {
                    if ctx.past_deadline(Instant::now()) {
                        t.cut = true;
                        if !served {
                            t.never_served += 1;
                        }
                    }
                    break;
                }
                Err(e) => {
                    t.error(ctx.live, format!("receiving failed: {e}"));
                    break;
                }
            }
        }
        t.finished = Some(Instant::now());
        abort.store(true, Relaxed);
        match writer.join() {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => t.cut |= ctx.past_deadline(Instant::now()),
            // The reader usually reports the same broken connection; one
            // error per connection is enough.
            Ok(Err(e)) if t.errors == 0 => t.error(ctx.live, format!("sending failed: {e}")),
            Ok(Err(_)) => {}
            Err(_) => t.error(
                ctx.live,
                "the writer thread panicked (a bug in poolload)".into(),
            ),
        }
    });
    t
}

/// The writer side of a bulk connection: streams `bulk_bytes` of the
/// pattern starting at `first_variant`, adding what it sent to `sent`, then
/// half-closes. `Ok(false)`: it gave up at the deadline or on `abort`.
fn stream_out(
    ctx: &Ctx<'_>,
    stream: &TcpStream,
    first_variant: usize,
    abort: &AtomicBool,
    sent: &AtomicU64,
) -> io::Result<bool> {
    let chunk = &ctx.bulk_chunk;
    let mut off = first_variant * ctx.pattern.size;
    let mut left = ctx.cfg.bulk_bytes;
    let give_up = |n| ctx.past_deadline(n) || abort.load(Relaxed);
    // A stopped run sends no more; the replies to what was sent are still
    // read and checked.
    while left > 0 && !ctx.stopped() {
        let end = chunk
            .len()
            .min(off + usize::try_from(left).unwrap_or(usize::MAX));
        match write_all(stream, &chunk[off..end], give_up) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => {
                abort.store(true, Relaxed);
                return Err(e);
            }
        }
        left -= (end - off) as u64;
        sent.fetch_add((end - off) as u64, SeqCst);
        off = if end == chunk.len() { 0 } else { end };
    }
    stream.shutdown(Shutdown::Write).map(|()| true)
}
