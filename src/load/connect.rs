//! Connect mode: whole conversations one after another on each loop —
//! connect, one round trip, `quit`, the server's close. Measures the cost
//! of a whole connection: accept, queue, worker hand-off, lingering close.

use std::net::TcpStream;
use std::time::Instant;

use super::ctx::{Ctx, Latencies, Progress};
use super::pattern::{is_busy, Checker};
use super::sock::{read_once, Got, Sender, READ_BUF};
use super::tally::Tally;

/// How one connect-mode cycle ended.
enum Cycle {
    /// The reply came back and the server closed after `quit`.
    Done,
    /// The server answered `BUSY`.
    Rejected,
    /// Something is recorded in the tally; stop the loop.
    Stop,
}

/// Connect mode: whole conversations, one after another.
pub(super) fn connect_loop(ctx: &Ctx<'_>, idx: usize) -> Tally {
    let mut t = Tally::default();
    let pattern = &ctx.pattern;
    let mut variant = idx % pattern.variants;
    let mut budget = ctx.cfg.messages.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; READ_BUF];
    let mut latencies = Latencies::new(&ctx.latency);
    let mut progress = Progress::new(ctx.live);

    loop {
        let start = Instant::now();
        if !ctx.may_start(start, budget) {
            break;
        }
        if start >= ctx.warmup_end {
            budget -= 1;
        }
        let Some(stream) = ctx.connect(&mut t) else {
            break;
        };
        match one_cycle(ctx, &stream, variant, &mut buf, &mut t) {
            Cycle::Done => {}
            Cycle::Rejected => {
                t.rejected += 1;
                continue;
            }
            Cycle::Stop => break,
        }
        drop(stream);
        let end = Instant::now();
        // A wrong reply is still a cycle; it is counted in `wrong_replies`
        // as well and fails the run.
        if ctx.counts(start, end) {
            t.counted += 1;
            t.bytes += pattern.size as u64;
            t.last_counted = Some(end);
            latencies.record(end.duration_since(start));
            progress.add(1, pattern.size as u64, end);
        }
        variant = (variant + 1) % pattern.variants;
    }
    t.finished = Some(Instant::now());
    t
}

/// One message, its reply, `quit`, and the server's close.
fn one_cycle(
    ctx: &Ctx<'_>,
    stream: &TcpStream,
    variant: usize,
    buf: &mut [u8],
    t: &mut Tally,
) -> Cycle {
    let connected = Instant::now();
    let size = ctx.pattern.size;
    let mut sender = Sender::new(stream, &ctx.pattern, variant);
    let mut checker = Checker::new(&ctx.pattern, variant);
    sender.start();
    let mut got = 0usize;
    while got < size {
        if let Err(e) = sender.push() {
            t.error(ctx.live, format!("sending failed: {e}"));
            return Cycle::Stop;
        }
        match read_once(stream, buf) {
            Ok(Got::Data(n)) => {
                if got == 0 && is_busy(&buf[..n]) {
                    return Cycle::Rejected;
                }
                let take = n.min(size - got);
                let (_, wrong) = checker.feed(&buf[..take]);
                t.wrong(ctx.live, wrong);
                got += take;
                if n > take {
                    t.unasked(ctx.live, n - take);
                    return Cycle::Stop;
                }
            }
            // A cycle under way when the measured time ends may finish
            // (uncounted): only the deadline proves it would never be
            // served.
            Ok(Got::Idle) => {
                if ctx.past_deadline(Instant::now()) {
                    t.never_served += 1;
                    t.cut = true;
                    return Cycle::Stop;
                }
            }
            Ok(Got::Eof) => {
                t.error(
                    ctx.live,
                    "the server closed the connection before replying".into(),
                );
                return Cycle::Stop;
            }
            Err(e) => {
                t.error(ctx.live, format!("receiving failed: {e}"));
                return Cycle::Stop;
            }
        }
    }
    ctx.first_reply(t, Instant::now(), connected, false);
    let (errors, cut) = (t.errors, t.cut);
    ctx.close(stream, buf, t);
    if t.errors > errors || t.cut != cut {
        return Cycle::Stop;
    }
    Cycle::Done
}
