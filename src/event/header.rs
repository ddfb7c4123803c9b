//! The PROXY header in event dispatch (`--proxy-protocol`): read without
//! blocking, as its bytes come, by whichever worker the connection is
//! readable on. A balancer sends the header with its first bytes, so it is
//! nearly always whole at the first read; a connection whose header is
//! late waits parked like any silent connection, without a worker, until
//! `--proxy-timeout` (its timer meanwhile), and is then refused. Connection
//! mode reads the header with a blocking read on its worker instead
//! (`proxy::read_header`), where a worker belongs to one connection anyway.
//!
//! Until the header is whole the connection's `peer` is the balancer and
//! its session a stand-in ([`not_open`]): the service opens its session
//! for the true client the header names.

use std::io;

use super::{EventPool, Local, Next};
use crate::access::Ending;
use crate::connection::End;
use crate::poller::{Conn, Why};
use crate::proxy::{Refusal, Step};
use crate::service::{Flow, Session};

/// The stand-in session of a connection whose session is not open yet.
struct NotOpen;

impl Session for NotOpen {
    fn on_data(&mut self, _input: &[u8], _out: &mut Vec<u8>) -> Flow {
        Flow::Continue
    }
    fn on_end(&mut self, _end: End, _out: &mut Vec<u8>) {}
}

/// A session to hold the place of one not opened yet.
pub(super) fn not_open() -> Box<dyn Session> {
    Box::new(NotOpen)
}

impl EventPool {
    /// Goes on with `conn`'s PROXY header: `None` once it is whole (the
    /// session is open, the bytes after the header served) and the slice
    /// may go on; otherwise how the slice ends.
    pub(super) fn read_header(
        &self,
        local: &mut Local,
        conn: &mut Conn,
        why: Why,
    ) -> io::Result<Option<Next>> {
        let Some(wait) = conn.header.as_mut() else {
            return Ok(None);
        };
        match why {
            Why::ProxyTimeout => return Ok(Some(Next::Refuse(Refusal::Timeout))),
            // Nothing was said to the client yet: closed unanswered.
            Why::Shutdown => return Ok(Some(Next::Close(Ending::Shutdown))),
            _ => {}
        }
        let admitted = match wait.reader.feed(&mut &conn.stream, Some(wait.deadline)) {
            Step::NeedMore => return Ok(Some(Next::Park)),
            Step::Refused(why) => return Ok(Some(Next::Refuse(why))),
            Step::Done(admitted) => admitted,
        };
        conn.header = None;
        if let Some(access) = conn.live.access() {
            access.proxied(admitted.client);
        }
        conn.peer = admitted.client;
        if !self.open_session(conn) {
            return Ok(Some(Next::Close(Ending::Panic)));
        }
        // The client's own timers start now.
        conn.last_data = std::time::Instant::now();
        conn.window_start = conn.last_data;
        if !admitted.leftover.is_empty()
            && self.feed(local, conn, &admitted.leftover)? == Flow::Close
        {
            return Ok(Some(Next::Close(Ending::closed_by(
                conn.session.closed_by(),
            ))));
        }
        Ok(None)
    }
}
