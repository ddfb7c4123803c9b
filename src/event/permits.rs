//! How many event workers run at once: no more than there are CPUs.
//!
//! `--workers` bounds the threads that may be *blocked* on a connection (a
//! held read, the closing reply to a slow reader); in event dispatch
//! most of the time no worker is, and then every worker that runs competes
//! for the same few CPUs. Measured on 2 cores, 64 ping-pong clients, 8
//! workers: with all 8 taking epoll events, the reply p99 was 3.4–3.9 ms
//! (thread-per-connection: 1.2–1.5 ms); with only 2 running it was
//! 1.0–1.4 ms at the same rate. Linux wakes a waiting worker per event, a
//! woken worker preempts one that is half-way through a reply, and the
//! replies in progress pile up behind each other; with as many running
//! workers as CPUs, a worker finishes its reply before the next one
//! starts. Go's scheduler works the same way (`GOMAXPROCS` running
//! goroutine threads, more threads only for blocking system calls).
//!
//! So a worker needs a *permit* to do event work — take a queued job, wait
//! in the epoll, serve a slice — and there are `min(workers, CPUs)` of
//! them. A worker about to block on one connection gives its permit back
//! ([`Permits::blocking`]), so another worker runs meanwhile and a blocked
//! worker never keeps the others from serving (it wakes one only if no
//! running worker waits in the epoll; one that does is there already, and
//! a waiting worker also looks for a free permit every 100 ms); when the
//! call returns it
//! takes a permit back at once, even if none is free (it holds a
//! connection, and waiting there could deadlock), and the pool is over its
//! quota until a worker next goes round its loop
//! ([`Permits::rebalance`]), where the extra one steps aside. Workers
//! without a permit wait on a condition variable, not in the epoll, so
//! events wake only running workers.
//!
//! With `workers <= CPUs` there is nothing to limit and every call returns
//! at once.

use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::shutdown::POLL_SLICE;

/// The permits to run event work (see the module doc).
#[derive(Debug)]
pub(crate) struct Permits {
    /// Permits free; below zero while workers back from a blocking call
    /// have overdrawn.
    free: AtomicIsize,
    /// Workers waiting for a permit: a release notifies only when there
    /// are any.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
    /// False when there are no more workers than permits.
    limited: bool,
    /// The CPUs they are for.
    cpus: usize,
}

impl Permits {
    /// `running` permits for `workers` workers.
    pub(crate) fn new(running: usize, workers: usize) -> Self {
        Permits {
            free: AtomicIsize::new(running.min(workers) as isize),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
            limited: running < workers,
            cpus: running,
        }
    }

    /// How many permits a pool of `workers` gets on this machine.
    pub(crate) fn for_this_machine(workers: usize) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Permits::new(cpus, workers)
    }

    /// The CPUs the permits are for (the `running` they were made with).
    pub(crate) fn cpus(&self) -> usize {
        self.cpus
    }

    /// Takes a permit, waiting for one to be free (the worker holds no
    /// connection). Returns without one once `stopped` is set.
    pub(crate) fn acquire(&self, stopped: &AtomicBool) {
        if !self.limited || self.try_take() {
            return;
        }
        let mut guard = self.lock.lock();
        // Counted before the last look: a release that comes after it
        // sees the waiter and notifies under the lock, which this thread
        // holds until it waits, so the notification cannot fall between.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        while !self.try_take() && !stopped.load(Ordering::SeqCst) {
            // The timeout only guards against a bug; a release notifies.
            self.freed.wait_for(&mut guard, POLL_SLICE);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Gives the permit back for a call that may block on one connection
    /// (`f`), and takes one again after it, free or not. `hand_over`: wake
    /// a waiting worker to run meanwhile. The caller says no while another
    /// running worker waits in the epoll, ready for whatever comes: a
    /// stream on a held socket reads without pause, and waking a worker
    /// for each of its reads, only for it to step aside again when the read
    /// returns, cost a quarter of a bulk stream's rate (1 GiB, medians of
    /// 5 alternating runs, 2 cores).
    pub(crate) fn blocking<T>(&self, hand_over: bool, f: impl FnOnce() -> T) -> T {
        self.give_back(hand_over);
        let out = f();
        if self.limited {
            self.free.fetch_sub(1, Ordering::SeqCst);
        }
        out
    }

    /// At the top of a worker's loop: while more workers run than there
    /// are permits (some came back from blocking calls), this one steps
    /// aside until a permit is free.
    pub(crate) fn rebalance(&self, stopped: &AtomicBool) {
        if self.limited && self.free.load(Ordering::SeqCst) < 0 {
            self.release();
            self.acquire(stopped);
        }
    }

    /// Gives a permit back and wakes a waiting worker to take it.
    pub(crate) fn release(&self) {
        self.give_back(true);
    }

    fn give_back(&self, wake: bool) {
        if !self.limited {
            return;
        }
        self.free.fetch_add(1, Ordering::SeqCst);
        if wake && self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock();
            self.freed.notify_one();
        }
    }

    /// Wakes every waiting worker (the pool has stopped).
    pub(crate) fn wake_all(&self) {
        let _guard = self.lock.lock();
        self.freed.notify_all();
    }

    fn try_take(&self) -> bool {
        self.free
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 0).then(|| n - 1)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn no_more_run_than_permits_and_a_blocked_worker_lets_another_run() {
        let p = Arc::new(Permits::new(1, 3));
        let stopped = AtomicBool::new(false);
        p.acquire(&stopped);
        assert!(!p.try_take(), "the only permit is taken");
        // A second worker waits until the first blocks.
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = Arc::clone(&p);
        let waiter = std::thread::spawn(move || {
            p2.acquire(&AtomicBool::new(false));
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        // Blocking hands the permit over; coming back overdraws.
        p.blocking(true, || rx.recv_timeout(Duration::from_secs(5)).unwrap());
        waiter.join().unwrap();
        assert_eq!(p.free.load(Ordering::SeqCst), -1);
        // The next one round its loop steps aside until a permit is free:
        // here the other worker gives its permit back.
        let p3 = Arc::clone(&p);
        let other = std::thread::spawn(move || p3.release());
        p.rebalance(&stopped);
        other.join().unwrap();
        assert_eq!(p.free.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_stopped_pool_lets_waiting_workers_go() {
        let p = Permits::new(1, 2);
        let stopped = AtomicBool::new(false);
        p.acquire(&stopped);
        stopped.store(true, Ordering::SeqCst);
        let started = Instant::now();
        p.acquire(&stopped);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn with_no_more_workers_than_permits_nothing_is_limited() {
        let p = Permits::new(8, 8);
        let stopped = AtomicBool::new(false);
        for _ in 0..20 {
            p.acquire(&stopped);
        }
        p.rebalance(&stopped);
        assert_eq!(p.blocking(true, || 7), 7);
    }
}
