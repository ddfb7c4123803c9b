//! Pingpong mode: `pipeline` messages in flight per connection, each reply
//! checked and timed, the next message sent as each reply completes.
//! Measures round trips per second and latency.

use std::collections::VecDeque;
use std::time::Instant;

use super::ctx::{Ctx, Latencies, Opened, Progress};
use super::pattern::{is_busy, Checker};
use super::report::plural;
use super::sock::{read_once, Got, Pushed, Sender, READ_BUF};
use super::tally::Tally;

/// Pingpong: `pipeline` messages in flight, each reply checked and timed,
/// the next message sent as each reply completes.
pub(super) fn pingpong(ctx: &Ctx<'_>, idx: usize) -> Tally {
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
    let size = pattern.size;
    let window = ctx.cfg.pipeline;
    let mut sender = Sender::new(&stream, pattern, first_variant);
    let mut checker = Checker::new(pattern, first_variant);
    // Send times of the messages in flight, oldest first.
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(window);
    let mut budget = ctx.cfg.messages.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; READ_BUF];
    let mut latencies = Latencies::new(&ctx.latency);
    let mut progress = Progress::new(ctx.live);
    let mut served = false;
    let mut now = connected;

    let clean = 'conversation: loop {
        // Fill the window, as far as the socket takes it.
        loop {
            if !sender.pending() {
                if in_flight.len() == window || !ctx.may_start(now, budget) {
                    break;
                }
                sender.start();
                in_flight.push_back(now);
                if now >= ctx.warmup_end {
                    budget -= 1;
                }
            }
            match sender.push() {
                Ok(Pushed::Done) => {}
                Ok(Pushed::Full) => break,
                Err(e) => {
                    t.error(ctx.live, format!("sending failed: {e}"));
                    break 'conversation false;
                }
            }
        }
        if in_flight.is_empty() {
            // Nothing left to send or to wait for. Ending here without a
            // single reply (connected only after the measured time ended,
            // or the run was stopped first) is still never being served,
            // and such a connection just closes: a polite `quit` would
            // wait for a server that has not answered it yet, maybe until
            // the deadline.
            t.never_served += u64::from(!served);
            break served;
        }

        let n = match read_once(&stream, &mut buf) {
            Ok(Got::Data(n)) => n,
            Ok(Got::Idle) => {
                now = Instant::now();
                if ctx.past_deadline(now) || (!served && ctx.past_measure_end(now)) {
                    t.never_served += u64::from(!served);
                    t.cut |= ctx.past_deadline(now);
                    break false;
                }
                continue;
            }
            Ok(Got::Eof) => {
                t.error(
                    ctx.live,
                    format!(
                        "the server closed the connection with {} {} outstanding",
                        in_flight.len(),
                        plural(in_flight.len() as u64, "reply", "replies")
                    ),
                );
                break false;
            }
            Err(e) => {
                t.error(ctx.live, format!("receiving failed: {e}"));
                break false;
            }
        };
        now = Instant::now();
        if !served && checker.in_reply == 0 && is_busy(&buf[..n]) {
            t.rejected += 1;
            break false;
        }
        let outstanding = in_flight.len() * size - checker.in_reply;
        let (data, extra) = buf[..n].split_at(n.min(outstanding));
        let (done, wrong) = checker.feed(data);
        t.wrong(ctx.live, wrong);
        if done > 0 && !served {
            served = true;
            ctx.first_reply(&mut t, now, connected, true);
        }
        let mut counted = 0;
        for _ in 0..done {
            let Some(sent) = in_flight.pop_front() else {
                break;
            };
            if ctx.counts(sent, now) {
                counted += 1;
                latencies.record(now.duration_since(sent));
            }
        }
        if counted > 0 {
            t.counted += counted;
            t.bytes += counted * size as u64;
            t.last_counted = Some(now);
        }
        progress.add(counted, data.len() as u64, now);
        if !extra.is_empty() {
            t.unasked(ctx.live, extra.len());
            break false;
        }
        if ctx.past_deadline(now) {
            t.cut = true;
            break false;
        }
    };
    t.finished = Some(Instant::now());
    if clean {
        ctx.close(&stream, &mut buf, &mut t);
    }
    t
}
