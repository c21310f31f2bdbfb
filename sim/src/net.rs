//! Virtual time, the event queue and the links between roles.
//!
//! Links behave like TCP connections: per direction FIFO with a random delay per frame,
//! so frames of one link never overtake each other except when a fault says so (a data
//! frame reordered or duplicated on the relay -> standby link, which the standby's
//! receiver must absorb). A link reset closes the connection: every frame in flight on
//! it is lost (its incarnation no longer matches) and both ends lose their session; the
//! initiator reconnects with a Hello later. Frames between different links reorder freely.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Primary,
    Relay(usize),
    Standby,
}

/// Which link of relay `i`: to the primary or to the standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Primary,
    Standby,
}

/// What happens at an instant of virtual time.
#[derive(Debug)]
pub enum Ev {
    /// A frame arrives on relay `relay`'s `side` link, connection incarnation `inc`.
    Deliver {
        relay: usize,
        side: Side,
        to: Node,
        inc: u64,
        bytes: Vec<u8>,
    },
    /// The primary's direct heartbeat datagram reaches the standby host.
    Udp(Vec<u8>),
    Tick(Node),
    Workload,
    /// Relay `relay`'s group commit covering LSNs up to `upto` completes.
    Commit {
        relay: usize,
        inc: u64,
        upto: u64,
    },
    RelayCrash(usize),
    RelayRestart(usize),
    StandbyCrash,
    StandbyRestart,
    LinkReset(usize, Side),
    Reconnect(usize, Side),
    KillPrimary,
    /// An operator declares the primary failed (the detector is told at once).
    Declare,
}

struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Events ordered by time, ties by insertion order (so a run is a pure function of its seed).
#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<Item>>,
    seq: u64,
    pub now: u64,
}

impl Queue {
    pub fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse(Item { at, seq: self.seq, ev }));
    }
    pub fn after(&mut self, dt: u64, ev: Ev) {
        self.at(self.now + dt, ev);
    }
    pub fn pop(&mut self) -> Option<Ev> {
        let Reverse(it) = self.heap.pop()?;
        self.now = self.now.max(it.at);
        Some(it.ev)
    }
}

/// One connection slot (relay i to the primary, or relay i to the standby).
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// A connection exists (frames on it are delivered).
    pub open: bool,
    /// Connection incarnation: frames of an older one are lost.
    pub inc: u64,
    /// Last delivery time per direction (0: towards the relay, 1: from it): FIFO.
    pub last: [u64; 2],
    /// When the current connection opened.
    pub since: u64,
    /// A reconnect is scheduled.
    pub reconnecting: bool,
}

impl Link {
    /// Opens a new connection (a Hello is about to be sent on it).
    pub fn open(&mut self, now: u64) {
        self.inc += 1;
        self.open = true;
        self.since = now;
        self.last = [now, now];
        self.reconnecting = false;
    }
    pub fn close(&mut self) {
        self.open = false;
        self.inc += 1;
    }
}
