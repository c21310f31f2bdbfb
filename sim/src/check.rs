//! The checker: invariants after every step, at stall pulls, at promotion and at the end.
//!
//! 1. An acknowledged op is durable at every relay counted for its acknowledgement.
//! 2. The standby's applied image is the primary's image at the applied restart point.
//! 3. After failover the promoted epoch is at least the newest restart point held in full
//!    by a relay reachable through the whole failover (alive and linked at the decision,
//!    neither crashed nor disconnected until promotion), together with what the standby
//!    had received in order.
//! 4. An acknowledged restart point is not lost while a relay counted for its
//!    acknowledgement was reachable (otherwise the loss comes with the "unreachable"
//!    warning, not silently): every one acknowledged before promotion, the old primary
//!    still alive meanwhile (with the drain's fence; without it, those acknowledged at the
//!    decision).
//! 5. No stall pull while the forwarder holds by policy and said so (a fresh report saying
//!    it holds what the standby lacks) for longer than the report freshness.
//!
//! Fencing: after promotion no op of an older generation is accepted by the receiver.
//! Liveness: a run without failover ends with every restart point applied.

use crate::world::{World, MS};
use rdma_transport::wire::{ForwardState, Frame};
use standby::net::REPORT_FRESH_NS;
use standby::Offer;

/// What a relay held at the failure decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelaySnap {
    pub alive: bool,
    pub inc: u64,
    pub linked: bool,
    pub first: u64,
    pub durable: u64,
}

/// The failover as it went.
#[derive(Debug, Clone, Default)]
pub struct Failover {
    pub decided_at: Option<u64>,
    pub promoted_at: Option<u64>,
    pub acked_rp: u64,
    pub epoch_start: u64,
    pub relays: Vec<RelaySnap>,
    pub gen: u64,
    pub warned_unreachable: bool,
    pub drain_gained: u64,
    pub fenced_offers: u64,
    pub relabelled_accepted: u64,
    pub missed_reconnecting: bool,
    /// The promoted epoch, and which relays were reachable through the failover.
    pub promoted_epoch: u64,
    pub reachable: Vec<bool>,
}

pub fn after_step(w: &mut World) {
    if w.fail.is_some() {
        return;
    }
    if let Some(e) = &w.sv.error {
        w.fail = Some(format!("standby: {e}"));
        return;
    }
    for (i, r) in w.r.iter().enumerate() {
        if r.durable < w.p.must_hold[i] {
            w.fail = Some(format!(
                "invariant 1: relay {i} durable to LSN {} but LSN {} was acknowledged counting it",
                r.durable, w.p.must_hold[i]
            ));
            return;
        }
        let contiguous = r.ops.is_empty()
            || (r.ops.back().map(|o| o.lsn) == Some(r.appended) && r.first() + r.ops.len() as u64 - 1 == r.appended);
        if !contiguous {
            w.fail = Some(format!("relay {i}: journal not contiguous up to {}", r.appended));
            return;
        }
    }
    if w.sv.image_dirty {
        w.sv.image_dirty = false;
        let e = w.sv.applied_epoch as usize;
        if w.p.images.get(e) != Some(&w.sv.image) {
            w.fail = Some(format!(
                "invariant 2: standby image at epoch {e} differs from the primary's"
            ));
        }
    }
}

/// Invariant 5, for the stall pulls the standby sent this poll.
pub fn stall_pulls(w: &mut World) {
    let now = w.q.now;
    for sp in std::mem::take(&mut w.sn.stall_pulls) {
        let f = &w.r[0];
        let Some(l) = w.sn.links[0].as_ref() else { continue };
        let holding_long = f.alive
            && f.rs_up
            && f.fwd_state == ForwardState::Holding
            && f.holding_since.is_some_and(|s| s + 600 * MS <= now);
        let told =
            matches!(l.fwd, Some((ForwardState::Holding, at)) if now - at < REPORT_FRESH_NS) && l.held_lsn >= sp.next;
        if holding_long && told {
            w.fail = Some(format!(
                "invariant 5: stall pull from LSN {} while the forwarder holds by policy (holds to {})",
                sp.next, l.held_lsn
            ));
        }
    }
}

/// The newest epoch whose restart point is at or below `lsn`.
fn epoch_upto(rp_lsn: &[u64], lsn: u64) -> u64 {
    rp_lsn.iter().rposition(|&l| l <= lsn).unwrap_or(0) as u64
}

/// Invariants 2, 3 and 4 at promotion.
pub fn at_promotion(w: &mut World) {
    let d = w.fo.decided_at.unwrap_or(0);
    let promoted = w.sv.applied_epoch;
    w.fo.drain_gained = promoted.saturating_sub(w.fo.epoch_start);
    let prefix = w.sv.next_lsn() - 1;
    let mut want = (epoch_upto(&w.p.rp_lsn, prefix), None);
    let mut reachable = vec![false; w.r.len()];
    for (i, s) in w.fo.relays.iter().enumerate() {
        let bound = if s.first <= prefix + 1 {
            prefix.max(s.durable)
        } else {
            prefix
        };
        let held = epoch_upto(&w.p.rp_lsn, bound);
        let r = &w.r[i];
        reachable[i] = s.alive && s.linked && r.alive && r.inc == s.inc && w.rs[i].open && w.rs[i].since <= d;
        if reachable[i] && held > want.0 {
            want = (held, Some(i));
        }
        if !reachable[i] && s.alive && r.inc == s.inc && held > promoted {
            w.fo.missed_reconnecting = true;
        }
    }
    if promoted < want.0 {
        w.fail = Some(format!(
            "invariant 3: promoted at restart point {promoted}, but relay {:?} reachable at failover held restart point {} in full (standby had epoch {} at the decision)",
            want.1, want.0, w.fo.epoch_start
        ));
        return;
    }
    // With the fence, every restart point acknowledged until promotion counts: a fenced
    // relay acknowledges nothing more and the drain took what it had. Without it, only
    // those acknowledged at the decision (the old window).
    w.fo.promoted_epoch = promoted;
    w.fo.reachable = reachable.clone();
    let acked = if w.cfg.drain { w.p.acked_rp } else { w.fo.acked_rp };
    if promoted < acked {
        let rp = w.p.rp_lsn[acked as usize];
        if let Some(i) = (0..w.r.len()).find(|&i| reachable[i] && w.p.must_hold[i] >= rp) {
            w.fail = Some(format!(
                "invariant 4: acknowledged restart point {acked} lost (promoted at {promoted}) although relay {i}, counted for its acknowledgement, was reachable"
            ));
            return;
        }
    }
    if w.p.images.get(promoted as usize) != Some(&w.sv.image) {
        w.fail = Some(format!(
            "invariant 2: promoted image differs from the primary's at restart point {promoted}"
        ));
    }
}

/// Fencing: frames reaching the promoted standby are offered to its receiver; none of an
/// older generation may be accepted.
pub fn offer_after_promotion(w: &mut World, f: &Frame<'_>, now: u64) {
    let b = match f {
        Frame::Forward(b) => b,
        Frame::GapReply(g) => &g.batch,
        _ => return,
    };
    for op in &b.ops {
        match w.sv.recv.offer(b.generation, op, now) {
            Offer::Accepted if b.generation < w.fo.gen => {
                w.fail = Some(format!(
                    "fencing: op at LSN {} of generation {} accepted after promotion to generation {}",
                    op.lsn(),
                    b.generation,
                    w.fo.gen
                ));
                return;
            }
            Offer::Accepted => w.fo.relabelled_accepted += 1,
            Offer::StaleGeneration { .. } => w.fo.fenced_offers += 1,
            _ => {}
        }
    }
}

/// Invariant 4 once more at the end, after a failover with a drain: the old primary lives
/// on for a while after the decision; no restart point may have been acknowledged to it
/// after promotion counting a relay the drain reached (that relay was fenced before it
/// was drained), and then lost.
fn acknowledged_after_promotion(w: &mut World) {
    if w.fail.is_some() || w.fo.promoted_at.is_none() || !w.cfg.drain {
        return;
    }
    let (acked, promoted) = (w.p.acked_rp, w.fo.promoted_epoch);
    if acked <= promoted {
        return;
    }
    let rp = w.p.rp_lsn[acked as usize];
    let counted = (0..w.r.len()).find(|&i| w.fo.reachable.get(i) == Some(&true) && w.p.must_hold[i] >= rp);
    if let Some(i) = counted {
        w.fail = Some(format!(
            "invariant 4: restart point {acked} acknowledged to the old primary after promotion at {promoted}, counting relay {i}, which the drain reached"
        ));
    }
}

/// Liveness of a run without failover.
pub fn at_end(w: &mut World) {
    acknowledged_after_promotion(w);
    if w.fail.is_some() || w.par.kill_at.is_some() {
        return;
    }
    if w.sv.applied_epoch != w.p.epoch() {
        w.fail = Some(format!(
            "liveness: no failover, faults over, but the standby applied epoch {} of {} (next LSN {}, relays hold from {:?})",
            w.sv.applied_epoch,
            w.p.epoch(),
            w.sv.next_lsn(),
            w.r.iter().map(|r| (r.first(), r.durable)).collect::<Vec<_>>()
        ));
    }
}
