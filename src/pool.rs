//! The fixed pool of worker threads and the worker loop.
//!
//! Each worker owns a clone of the accept queue's receiver (crossbeam
//! channels are multi-consumer, so no lock is shared) and its own buffers.
//! It takes one connection, serves it from first byte to close, and takes
//! the next. The loop ends when the acceptor has dropped the queue's sender
//! and the queue is empty, which is how shutdown drains the pool.
//!
//! The pool never shrinks: a panic while serving is caught per connection,
//! counted and logged, and the worker goes on to the next connection.

use std::io;
use std::net::TcpStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use log::{debug, error, info, warn};

use crate::access::Ending;
use crate::closer::Closer;
use crate::connection::{is_write_stall, Connection, End, Limits};
use crate::proxy::{Admitted, Gate};
use crate::queue::Job;
use crate::service::{Buffers, ServiceKind};
use crate::shutdown::Shutdown;
use crate::stats::{BusyGuard, Counters, LiveGuard};

/// What every worker shares.
#[derive(Debug)]
pub(crate) struct PoolContext {
    pub(crate) counters: Arc<Counters>,
    pub(crate) shutdown: Arc<Shutdown>,
    pub(crate) service: ServiceKind,
    pub(crate) limits: Limits,
    /// `None` when connections may wait in the queue as long as it takes.
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) read_buffer_size: usize,
    /// Takes over each connection's lingering close, so the worker can go
    /// on to the next connection at once.
    pub(crate) closer: Closer,
    /// With `--proxy-protocol`: reads each connection's header first.
    pub(crate) gate: Option<Arc<Gate>>,
}

/// A running worker thread.
#[derive(Debug)]
pub(crate) struct Worker {
    id: usize,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Worker `id`, running on `thread`.
    pub(crate) fn new(id: usize, thread: JoinHandle<()>) -> Worker {
        Worker { id, thread }
    }

    /// Waits for the worker to finish its last connection and exit.
    pub(crate) fn join(self) {
        if self.thread.join().is_err() {
            // Connections are served under `catch_unwind`; reaching this
            // means the worker's own bookkeeping panicked.
            error!(
                "worker {} ended with a panic outside any connection",
                self.id
            );
        }
    }
}

impl PoolContext {
    /// The worker loop of worker `id`: serve connections from `queue`
    /// until it is closed and empty.
    pub(crate) fn run(&self, id: usize, queue: &Receiver<Job>) {
        let mut bufs = Buffers::new(self.read_buffer_size);
        for job in queue.iter() {
            self.handle(id, job, &mut bufs, queue);
            if queue.is_empty() {
                if let Some(lasted) = self.counters.end_saturation() {
                    info!(
                        "a worker is free again and nothing waits: saturation over after {}",
                        humantime::format_duration(round_ms(lasted))
                    );
                }
            }
        }
        debug!("worker {id} exiting: the accept queue is closed and empty");
    }

    /// Serves (or turns away) one connection, whatever happens inside.
    fn handle(&self, id: usize, job: Job, bufs: &mut Buffers, queue: &Receiver<Job>) {
        let Some(job) = job.admit(
            &self.shutdown,
            self.queue_timeout,
            &self.counters,
            &self.closer,
        ) else {
            return;
        };

        // The worker is busy until it hands the socket to the closer; the
        // connection stays live until the closer has closed it.
        let Job {
            stream,
            peer,
            mut live,
            ..
        } = job;
        let busy = BusyGuard::new(&self.counters);

        // With --proxy-protocol, the header first: the true client, and
        // the bytes that came after the header in the same read.
        let admitted = match &self.gate {
            None => Admitted::direct(peer),
            Some(gate) => match gate.admit(&stream, peer) {
                Ok(admitted) => {
                    if let Some(access) = live.access() {
                        access.proxied(admitted.client);
                    }
                    admitted
                }
                Err(why) => {
                    gate.refuse(why, stream, peer, live, &self.counters, &self.closer);
                    return;
                }
            },
        };

        let served = catch_unwind(AssertUnwindSafe(|| {
            self.serve(id, &stream, admitted, bufs, queue, &mut live)
        }));
        match served {
            Ok(Ok(())) => self.closer.close(stream, live),
            Ok(Err(e)) => {
                if is_write_stall(&e) {
                    warn!("{peer}: {e}; closing the connection");
                    self.counters.write_timeout();
                } else {
                    debug!("{peer}: connection ended with an error: {e}");
                    self.counters.io_error();
                }
                drop(stream);
                drop(live);
            }
            Err(panic) => {
                self.counters.panic();
                if let Some(access) = live.access() {
                    access.ended(Ending::Panic);
                }
                error!(
                    "worker {id}: the service panicked serving {peer}: {}; \
                     that connection is closed, the worker goes on",
                    panic_message(&*panic)
                );
                bufs.output.clear();
                self.closer.close(stream, live);
            }
        }
        drop(busy);
    }

    fn serve(
        &self,
        id: usize,
        stream: &TcpStream,
        admitted: Admitted,
        bufs: &mut Buffers,
        queue: &Receiver<Job>,
        live: &mut LiveGuard,
    ) -> io::Result<()> {
        let io = self.counters.worker_io(id);
        let peer = admitted.client;
        let mut conn = Connection::new(stream, peer, io, &self.shutdown, &self.limits, queue)?;
        if !admitted.leftover.is_empty() {
            conn.unread(admitted.leftover);
        }
        let result = self.service.serve(&mut conn, bufs);
        if let Some(access) = live.access() {
            let (bytes_in, bytes_out) = conn.transferred();
            access.transferred(bytes_in, bytes_out);
            access.ended(match (&result, conn.end()) {
                (Err(e), _) if is_write_stall(e) => Ending::WriteTimeout,
                (Err(_), _) => Ending::Error,
                (Ok(()), None) => Ending::closed_by(conn.closed_by()),
                (Ok(()), Some(End::Idle)) => Ending::Idle,
                (Ok(()), Some(End::TooSlow)) => Ending::Slow,
                (Ok(()), Some(End::Shutdown)) => Ending::Shutdown,
                (Ok(()), Some(_)) => Ending::Eof,
            });
        }
        match conn.end() {
            Some(End::Idle) => {
                self.counters.idle_timeout();
                debug!("{peer}: idle timeout; closing");
            }
            Some(End::TooSlow) => {
                self.counters.slow_client();
                info!("{peer}: sent below the minimum data rate while others waited; closing");
            }
            _ => {}
        }
        result
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-text panic payload)")
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
