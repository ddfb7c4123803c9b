//! [`RateLimit`]: at most one log line per interval for something that can
//! happen thousands of times a second (a failing `accept(2)`, a pool that
//! flaps in and out of saturation), with a count of what was held back so
//! the next line can say so.

use std::time::{Duration, Instant};

/// Lets a message through at most once per interval, counting the rest.
#[derive(Debug)]
pub(crate) struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) fn new(interval: Duration) -> Self {
        RateLimit {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a message may go out now (`n` were held back since the
    /// last one), `None` if it must be held back.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Makes the interval since the last message look over, as if it had
    /// gone out that long ago (for tests).
    #[cfg(test)]
    pub(crate) fn expire(&mut self) {
        if let Some(last) = self.last.as_mut() {
            *last -= self.interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_interval_and_counts_the_rest() {
        let mut r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        r.expire();
        assert_eq!(r.allow(), Some(2));
        assert_eq!(r.allow(), None);
    }
}
