//! Resync of a relay that lacks LSNs the primary no longer retains (a journal that lost its
//! tail, an outage longer than the retention ring, a relay added to a live volume, a
//! relay that holds fewer LSNs than its peers after a primary restart).
//!
//! The relay's history restarts at a **base** Y, the oldest LSN the primary still holds
//! (retention ring, in-flight table, or the next LSN to assign): the link queues a `Base`
//! frame before any Ops on the connection, the relay journals it as the record covering
//! the LSNs it skips (`relay/src/journal/base.rs`) and acknowledges `Y - 1` once that is
//! durable, and the link then sends ops from Y on through the ordinary send path (the
//! retention ring keeps them: the resyncing relay has not acknowledged them). The resync is
//! done when the relay acknowledged the newest LSN assigned when it started (`target`);
//! from then on it is an ordinary relay. The relay's journal is a contiguous history from
//! Y; what it skipped is held by the relays that acknowledged it (the standby fetches it
//! from them with GapRequests). See `docs/replication.md`, "Resync".
//!
//! Policy while resyncing: with `block` a resyncing relay counts as a relay that is up and
//! behind (writes wait for its acknowledgements, which come as it catches up from the
//! base; new writes are not failed); with `degraded` it does not count until it is done.

use rdma_transport::wire;
use rdma_transport::{Connection, OutFrame};
use serde::Serialize;

use super::{Link, LinkState};

/// A resync in progress on one link.
#[derive(Debug, Clone, Copy)]
pub(super) struct Resync {
    /// First LSN of the relay's new history.
    pub base: u64,
    /// The relay's last LSN before the base (what its journal held when the resync began).
    pub from: u64,
    /// Done when the relay acknowledged this: the newest LSN assigned when it began.
    pub target: u64,
    /// Data bytes of the ops `base..=target` (what the relay has to take to be done).
    pub bytes_total: u64,
    /// Data bytes of those it acknowledged.
    pub bytes_done: u64,
    /// No other relay was known to hold what the base skips: done only after a block sync
    /// (`volume/sync.rs`) ended and the relay acknowledged its End.
    pub wait_sync: bool,
    /// The block sync it waited for covers writes from this LSN on.
    pub sync_covers: Option<u64>,
}

/// A resync as `replication_get_volumes` shows it (the relay's `state` is `resyncing`).
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct ResyncStatus {
    /// First LSN of the relay's new history.
    pub base_lsn: u64,
    /// What the relay held before the base.
    pub from_lsn: u64,
    /// The resync is done when the relay acknowledged this LSN.
    pub target_lsn: u64,
    /// LSNs of `base_lsn..=target_lsn` the relay acknowledged.
    pub lsn_done: u64,
    /// LSNs in `base_lsn..=target_lsn`.
    pub lsn_total: u64,
    /// Data bytes of those ops the relay acknowledged.
    pub bytes_done: u64,
    /// Data bytes of the ops `base_lsn..=target_lsn`.
    pub bytes_total: u64,
    /// Waiting for a block sync to end (no other relay holds what the base skipped).
    pub waiting_for_sync: bool,
}

impl Resync {
    pub(super) fn status(&self, acked: u64) -> ResyncStatus {
        let total = (self.target + 1).saturating_sub(self.base);
        let done = (acked + 1).saturating_sub(self.base).min(total);
        ResyncStatus {
            base_lsn: self.base,
            from_lsn: self.from,
            target_lsn: self.target,
            lsn_done: done,
            lsn_total: total,
            bytes_done: self.bytes_done.min(self.bytes_total),
            bytes_total: self.bytes_total,
            waiting_for_sync: self.wait_sync,
        }
    }
}

impl Link {
    /// Resync progress after an Ack that retired `bytes` of this link's frames; ends the
    /// resync once the relay reached its target.
    pub(super) fn resync_acked(&mut self, bytes: u64, volume: &str) {
        let Some(r) = self.resync.as_mut() else { return };
        r.bytes_done += bytes;
        if !r.wait_sync && self.acked_lsn >= r.target {
            if let (Some(c), Some(h)) = (r.sync_covers, self.hole_from) {
                if c <= h {
                    // The block sync sent every block the skipped LSNs wrote.
                    self.hole_from = None;
                }
            }
            log::info!(
                "volume {volume}: relay {} resynced: history from LSN {} (held up to {} before), caught up to {}",
                self.addr,
                r.base,
                r.from,
                self.acked_lsn
            );
            self.resync = None;
            self.resyncs_done += 1;
            self.life.clear_error();
        }
    }

    /// Whether a resync is in progress.
    pub(super) fn resyncing(&self) -> bool {
        self.resync.is_some()
    }

    /// The relay lacks ops the primary dropped (retention overflow, or the next op to send
    /// is gone): said once, and the connection closes so the relay's next Hello starts a
    /// resync from what the primary holds then.
    pub(super) fn lost_history(&mut self, why: String, volume: &str) {
        if self.beyond_retention {
            return;
        }
        self.beyond_retention = true;
        log::warn!("volume {volume}: relay {}: {why}; it will be resynced", self.addr);
        self.life.set_error(why);
        if let Some(c) = self.conn.as_mut() {
            c.close();
        }
    }
}

impl LinkState {
    /// The oldest LSN the primary can still send a relay.
    pub(super) fn oldest_held(&self) -> u64 {
        self.retention
            .first_lsn()
            .or_else(|| self.inflight.front().map(|e| e.op.lsn))
            .unwrap_or(self.next_lsn.max(1))
    }

    /// Starts the resync of link `i` (accepted, `acked_lsn` = what its journal holds) from
    /// `base`: queues the Base frame ahead of any Ops on its connection and sends from
    /// `base` on. Returns false (and fails the link) if the frame cannot be queued.
    pub(super) fn start_resync(&mut self, i: usize, base: u64, why: &str, now: u64) -> bool {
        let target = self.next_lsn.saturating_sub(1).max(base - 1);
        let bytes_total = self.bytes_between(base, target);
        let generation = self.s.cfg.generation;
        let name = &self.s.cfg.name;
        let l = &mut self.links[i];
        let from = l.acked_lsn;
        let queued = match l.conn.as_mut() {
            Some(c) => c
                .send(OutFrame::control(
                    wire::encode_base(&wire::Base { lsn: base, generation }),
                    0,
                ))
                .is_ok(),
            None => false,
        };
        if !queued {
            self.link_failed(i, "cannot queue the resync base".into(), now);
            return false;
        }
        let l = &mut self.links[i];
        log::warn!(
            "volume {name}: relay {}: {why}; resync: its history restarts at LSN {base} (done at {target})",
            l.addr
        );
        l.needs_resync = false;
        l.sent_lsn = base - 1;
        l.beyond_retention = false;
        l.hole_from = Some(l.hole_from.map_or(from + 1, |h| h.min(from + 1)));
        l.resyncs += 1;
        l.life.set_error(format_args!("resyncing from LSN {base}: {why}"));
        l.resync = Some(Resync {
            base,
            from,
            target,
            bytes_total,
            bytes_done: 0,
            wait_sync: false,
            sync_covers: None,
        });
        self.sync_for_resync(i, base, from);
        true
    }

    /// After a resync base: when no other relay is known to hold what the base skips
    /// (`from + 1 .. base`), a block sync covers it (`volume/sync.rs`) and the resync ends
    /// only after it: from the dirty-block record if it reaches back far enough, else a
    /// full copy.
    fn sync_for_resync(&mut self, i: usize, base: u64, from: u64) {
        let covered = self.links.iter().enumerate().any(|(j, l)| {
            j != i
                && !l.removed
                && l.is_up()
                && l.resync.is_none()
                && l.acked_lsn + 1 >= base
                && l.hole_from.is_none_or(|h| h >= base)
        });
        if covered || base <= from + 1 {
            return;
        }
        let name = self.s.cfg.name.clone();
        let running = self.sync.as_ref().map(|s| s.status());
        let wait = match running {
            Some(st) if st.state == "reading" || st.state == "ending" => {
                if st.covers_from_lsn > from + 1 {
                    log::warn!(
                        "volume {name}: relay {}: the running block sync covers writes from LSN {} only, not its hole from {}",
                        self.links[i].addr,
                        st.covers_from_lsn,
                        from + 1
                    );
                    false
                } else {
                    true
                }
            }
            _ => {
                let full = self.dirty.covers_from() > from + 1;
                let why = format!(
                    "relay {} lacks LSNs {}..{} and no other relay is known to hold them",
                    self.links[i].addr,
                    from + 1,
                    base - 1
                );
                match self.start_block_sync(full, 0, why) {
                    Ok(()) => true,
                    Err(e) => {
                        log::error!("volume {name}: cannot start a block sync: {e}");
                        false
                    }
                }
            }
        };
        if let Some(r) = self.links[i].resync.as_mut() {
            r.wait_sync = wait;
        }
    }

    /// A block sync's End met the acknowledgement policy: resyncs that waited for it end
    /// once their relay acknowledged it.
    pub(super) fn sync_ended(&mut self, end_lsn: u64) {
        let Some(s) = self.sync.as_mut() else { return };
        s.ended();
        let covers = s.status().covers_from_lsn;
        let name = self.s.cfg.name.clone();
        for l in &mut self.links {
            if let Some(r) = l.resync.as_mut().filter(|r| r.wait_sync) {
                r.wait_sync = false;
                r.target = r.target.max(end_lsn);
                r.sync_covers = Some(covers);
                l.resync_acked(0, &name);
            }
        }
    }

    /// Data bytes of the held ops `first..=last`.
    fn bytes_between(&self, first: u64, last: u64) -> u64 {
        let in_range = |lsn: u64| lsn >= first && lsn <= last;
        let retained: u64 = self
            .retention
            .entries
            .iter()
            .filter(|e| in_range(e.op.lsn))
            .map(|e| e.op.data.len() as u64)
            .sum();
        let inflight: u64 = self
            .inflight
            .iter()
            .filter(|e| in_range(e.op.lsn))
            .map(|e| e.op.data.len() as u64)
            .sum();
        retained + inflight
    }
}
