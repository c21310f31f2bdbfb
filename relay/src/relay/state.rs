//! The relay on its reactor: the state one poller owns (listener, pending connections,
//! every volume) and the poll that drives it in a fixed order: control messages, accept,
//! handshakes, then per volume its primary, its journal and its standby link
//! (`docs/replication.md`, relay role).

use std::net::SocketAddr;
use std::sync::Arc;

use arrayvec::ArrayVec;
use engine::clock::now_ns;
use engine::reactor::{self, Interest, PollStatus};
use rdma_transport::readiness::{Readiness, READY_EVENTS_MAX};
use rdma_transport::Connection;
use rdma_transport::{AnyAcceptor, AnyConnection};
use std::os::fd::RawFd;

use super::volume_journal::VolumeJournal;
use super::{RelayConfig, RelayCtl, RelayShared, STATUS_PERIOD_NS};
use crate::journal::lock::DirLock;

pub(super) type Conn = AnyConnection<Vec<u8>>;

pub(super) struct PendingConn {
    pub(super) conn: Conn,
    pub(super) peer: SocketAddr,
    pub(super) since_ns: u64,
}

/// A journal being opened off the reactor (`accept.rs`), and the Hellos waiting for it.
pub(super) struct Opening {
    pub(super) name: String,
    pub(super) rx: std::sync::mpsc::Receiver<Result<VolumeJournal, String>>,
    pub(super) waiting: Vec<(PendingConn, rdma_transport::wire::Hello<'static>)>,
}

pub(super) struct RelayState {
    pub(super) cfg: RelayConfig,
    pub(super) shared: Arc<RelayShared>,
    pub(super) acceptor: AnyAcceptor,
    pub(super) pending: Vec<PendingConn>,
    pub(super) volumes: Vec<VolumeJournal>,
    /// Journals being opened for a primary's first Hello.
    pub(super) opening: Vec<Opening>,
    pub(super) status_ns: u64,
    pub(super) poller: Option<reactor::PollerId>,
    pub(super) stopped: bool,
    /// Which primary connections are readable (None: epoll unavailable, all read every
    /// poll). A busy `recv` loop on a socket also contends for the socket's lock with the
    /// primary's side delivering into it (loopback delivery runs in the sender's context).
    pub(super) readiness: Option<Readiness>,
    pub(super) ready: ArrayVec<u64, READY_EVENTS_MAX>,
    pub(super) next_token: u64,
    /// The lock of `journal_root`, held until the relay stops (each volume's journal holds
    /// its own directory's).
    pub(super) root_lock: Option<DirLock>,
}

/// How often an idle relay's reactor wakes even if no socket does: the forward policy's
/// openings, `PrimaryLiveness` to the standby (every 100 ms), handshake and gap time-outs
/// and the status are timers of this poller (`docs/architecture.md`, "Idle reactors").
pub(super) const IDLE_TICK_NS: u64 = 10_000_000;

/// How often a relay with a journal being opened looks whether it is open.
const OPENING_POLL_NS: u64 = 1_000_000;

impl RelayState {
    /// Puts in `out` every socket the relay waits on while idle (listeners, handshakes,
    /// primaries, standby links); returns (every one could be watched, there is work now:
    /// a connection has whole frames buffered or a journal has I/O in flight).
    pub(super) fn wait_list(&self, out: &mut Vec<(RawFd, Interest)>) -> (bool, bool) {
        out.clear();
        let mut all = self.acceptor.wait_fds(out);
        let mut buffered = false;
        let conns = self
            .pending
            .iter()
            .map(|p| &p.conn)
            .chain(self.volumes.iter().flat_map(|v| {
                v.primary
                    .as_ref()
                    .map(|p| &p.conn)
                    .into_iter()
                    .chain(v.standby.as_ref())
            }));
        for c in conns {
            match c.wait_interest() {
                Some(w) => out.push(w),
                None => all &= !c.is_rdma(),
            }
            buffered |= c.has_buffered();
        }
        buffered |= self
            .volumes
            .iter()
            .any(|v| v.journal_failed.is_none() && v.journal.io_in_flight());
        (all, buffered)
    }

    pub(super) fn poll(&mut self) -> PollStatus {
        if self.stopped {
            return PollStatus::Idle;
        }
        let now = now_ns();
        let mut busy = false;
        while let Some(c) = self.shared.ctl.pop() {
            busy = true;
            match c {
                RelayCtl::SetForward(p) => {
                    log::info!("relay: forward policy now {p:?}");
                    self.cfg.forward = p;
                }
                RelayCtl::Stop(done) => {
                    self.stopped = true;
                    for v in &mut self.volumes {
                        if let Some(p) = v.primary.as_mut() {
                            p.conn.close();
                        }
                        if let Some(s) = v.standby.as_mut() {
                            s.close();
                        }
                    }
                    self.volumes.clear();
                    self.opening.clear();
                    self.root_lock = None;
                    self.pending.clear();
                    if let Some(id) = self.poller.take() {
                        reactor::unregister_poller(id);
                    }
                    done();
                    return PollStatus::Busy;
                }
            }
        }
        busy |= self.accept(now);
        busy |= self.handshakes(now);
        if !self.opening.is_empty() {
            busy |= self.poll_opening();
            // Look again soon: nothing the reactor watches says when a journal is open.
            reactor::wake_by(now + OPENING_POLL_NS);
        }
        self.ready.clear();
        if let Some(r) = self.readiness.as_mut() {
            if let Err(e) = r.poll(&mut self.ready) {
                log::warn!("relay: epoll_wait: {e}; reading every primary connection on every poll");
                self.readiness = None;
                for p in self.volumes.iter_mut().filter_map(|v| v.primary.as_mut()) {
                    p.watched = false;
                }
            }
        }
        for i in 0..self.volumes.len() {
            busy |= self.drive_primary(i, now);
            busy |= self.drive_journal(i);
            busy |= self.drive_standby(i, now);
        }
        if now.saturating_sub(self.status_ns) >= STATUS_PERIOD_NS {
            self.status_ns = now;
            self.publish();
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}
