//! The parked table: one slot per registration with the epoll, what each
//! slot holds (a parked connection, or the pending edge of one a worker
//! has), the generations that make stale events harmless, and the idle
//! deadlines. Every access happens under the [`Parking`](super::Parking)
//! lock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use mio::Token;

use super::{Conn, Timeouts};
use crate::stats::GaugeGuard;

#[derive(Debug, Default)]
pub(super) struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    pub(super) parked: usize,
    /// Idle and write deadlines of parks; an entry is acted on only if its
    /// connection is still parked and its timer really has fired.
    pub(super) deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
}

/// One registration with the poller's epoll: a connection's from its first
/// park until it is forgotten (closed, or held by a worker).
#[derive(Debug, Default)]
pub(super) struct Slot {
    generation: u32,
    pub(super) state: State,
}

#[derive(Debug, Default)]
pub(super) enum State {
    #[default]
    Free,
    /// Registered; a worker or the ready queue has the connection.
    /// `pending`: the socket became readable meanwhile (an edge that must
    /// not be lost: the next park reads again instead of parking);
    /// `peer_closed`: that edge said the peer has closed (see
    /// [`Conn::peer_closed`]).
    Out { pending: bool, peer_closed: bool },
    /// Registered and parked here, counted in the `parked` gauge.
    Parked(Conn, GaugeGuard),
}

impl State {
    /// Registered, with a worker, nothing pending.
    pub(super) fn out() -> State {
        State::Out {
            pending: false,
            peer_closed: false,
        }
    }
}

pub(super) fn token(slot: u32, generation: u32) -> Token {
    Token(slot as usize | (generation as usize) << 32)
}

pub(super) fn split(token: Token) -> (usize, u32) {
    ((token.0 & 0xFFFF_FFFF), (token.0 >> 32) as u32)
}

impl Table {
    /// The slot of `token`, if the token is not stale.
    pub(super) fn slot(&mut self, token: Token) -> Option<&mut Slot> {
        let (slot, generation) = split(token);
        self.slots
            .get_mut(slot)
            .filter(|s| s.generation == generation)
    }

    /// Takes the connection parked under `token`, if it is still there.
    pub(super) fn take(&mut self, token: Token) -> Option<Conn> {
        let s = self.slot(token)?;
        if !matches!(s.state, State::Parked(..)) {
            return None;
        }
        let State::Parked(conn, _gauge) = std::mem::replace(&mut s.state, State::out()) else {
            unreachable!("checked just above");
        };
        self.parked -= 1;
        Some(conn)
    }

    /// The socket under `token` became readable (`closed`: the event said
    /// the peer has closed, or the socket failed): its connection if
    /// parked, else the edge is remembered for the worker that has it.
    pub(super) fn on_event(&mut self, token: Token, closed: bool) -> Option<Conn> {
        let s = self.slot(token)?;
        match &mut s.state {
            State::Parked(..) => {
                let mut conn = self.take(token)?;
                conn.peer_closed |= closed;
                Some(conn)
            }
            State::Out {
                pending,
                peer_closed,
            } => {
                *pending = true;
                *peer_closed |= closed;
                None
            }
            State::Free => None,
        }
    }

    pub(super) fn allocate(&mut self) -> Token {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.state = State::out();
        token(slot, s.generation)
    }

    pub(super) fn release(&mut self, token: Token) {
        let (slot, _) = split(token);
        if let Some(s) = self.slot(token) {
            s.state = State::Free;
            s.generation = s.generation.wrapping_add(1);
            self.free.push(slot as u32);
        }
    }

    pub(super) fn parked_tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, State::Parked(..)))
            .map(|(i, s)| token(i as u32, s.generation))
    }
}

/// Rebuilds the deadline heap from the table when stale entries (of
/// connections that were unparked before their deadline) outnumber live
/// ones: O(parked), at most once per that many parks.
pub(super) fn compact(table: &mut Table, timeouts: &Timeouts) {
    if table.deadlines.len() <= 2 * table.parked + 1024 {
        return;
    }
    let fresh: BinaryHeap<_> = table
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let State::Parked(conn, _) = &s.state else {
                return None;
            };
            let (at, _) = conn.due(timeouts)?;
            Some(Reverse((at, token(i as u32, s.generation).0)))
        })
        .collect();
    table.deadlines = fresh;
}
