//! Failover drain: before the standby host rolls a volume back, the standby asks every
//! relay it is connected to for everything they hold past its next LSN, whatever their
//! forward policy (a failover is not the moment to save WAN bytes). A standby lagging its
//! relays is the normal state under forward policies; without the drain, restart points
//! that were acknowledged (durable at the relays) but not yet forwarded would be lost at
//! failover.
//!
//! Mechanics (in [`super::VolNet::poll`]): while a drain is active, every link that is not
//! yet drained and has no request outstanding is sent `GapRequest(next .. next + span)`;
//! a reply that carried ops is chained at once (one round trip per frame); a relay that
//! answers `not_held` from the next LSN on is drained. The drain is complete when every
//! connected relay is drained. The caller (the standby host's failover thread) bounds it
//! with its drain timeout and decides what no relay at all means.
//!
//! Fencing comes first: each link is sent a `Fence` with the generation the standby will be
//! promoted to, and only a relay that confirmed it (it acknowledges nothing more of the old
//! primary from then on) is asked for ops, so what the drain takes covers every op any
//! fenced relay ever acknowledged (`docs/failover.md`, "Fencing before the drain").
//!
//! Both functions run on the volume's reactor (`crate::registry::with_standby`).

use super::{reactor_net, NET};
use crate::StandbyVolume;
use engine::clock::now_ns;
use rdma_transport::Connection;
use serde::Serialize;

/// One volume's drain (kept after it ends, for the status).
#[derive(Debug, Clone)]
pub(super) struct Drain {
    started_ns: u64,
    expected: usize,
    lsn_start: u64,
    epoch_start: u64,
    /// The generation the relays are fenced with (the one the standby will be promoted to).
    generation: u64,
    active: bool,
}

impl Drain {
    pub(super) fn active(&self) -> bool {
        self.active
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }
}

/// Where a drain stands (`standby_host_get_status` → `failover.drain`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DrainProgress {
    /// Relay links connected now.
    pub relays: usize,
    /// Of them, those that confirmed the fence: they acknowledge nothing more of the old
    /// primary.
    pub relays_fenced: usize,
    /// The generation the relays were fenced with (the one promotion takes).
    pub fence_generation: u64,
    /// Of them, those that answered they hold nothing past the standby's next LSN (asked
    /// only once fenced).
    pub relays_drained: usize,
    /// Relay links connected at once within the 10 s before the drain (a relay that was
    /// reconnecting when the primary died is waited for, briefly).
    pub relays_expected: usize,
    /// Highest LSN received in order when the drain started.
    pub lsn_start: u64,
    /// Highest LSN received in order now.
    pub lsn_reached: u64,
    /// Highest LSN any connected relay reported holding.
    pub relay_lsn_max: u64,
    /// Bytes received from the relays since the drain started (frames, all links).
    pub bytes_drained: u64,
    /// Newest restart point the standby had taken in when the drain started.
    pub epoch_start: u64,
    /// Every relay expected is connected and drained (false with no relay link at all).
    pub done: bool,
    /// µs since the drain started.
    pub elapsed_us: u64,
}

/// Starts (or restarts) the drain of `v`'s relays, fencing them first with the generation
/// `v` will be promoted to.
pub fn start_drain(v: &mut StandbyVolume) {
    let generation = v.fence_generation();
    let rn = reactor_net();
    let mut rn = rn.borrow_mut();
    let vn = rn.vols.entry(v.name().to_string()).or_default();
    for l in &mut vn.links {
        l.fence_sent = false;
        l.fence_reply = None;
        l.drained = false;
        l.drain_rescanned = false;
        l.drain_bytes0 = l.conn.stats().bytes_received;
        // A request sent before the drain may be answered `not_held` for an LSN below
        // what the relay holds now: its answer must not count as drained (the reply is
        // dropped as unknown; the drain asks again at once).
        l.pull = None;
    }
    let now = now_ns();
    let expected = if now.saturating_sub(vn.peak_ns) <= super::PEAK_LINKS_WINDOW_NS {
        vn.peak_links.max(vn.links.len())
    } else {
        vn.links.len()
    };
    vn.drain = Some(Drain {
        started_ns: now,
        expected,
        lsn_start: v.next_lsn().saturating_sub(1),
        epoch_start: v.status().epoch_received_max,
        generation,
        active: true,
    });
    log::info!(
        "standby {}: fencing and draining {} relay link(s) from LSN {} (generation {generation})",
        v.name(),
        vn.links.len(),
        v.next_lsn()
    );
}

/// Progress of `v`'s drain; `finish` ends it (the links go back to their steady-state
/// behaviour). `None` when no drain was started.
pub fn drain_progress(v: &StandbyVolume, finish: bool) -> Option<DrainProgress> {
    let now = now_ns();
    NET.with(|n| {
        let n = n.borrow();
        let rn = n.as_ref()?;
        let mut rn = rn.try_borrow_mut().ok()?;
        let vn = rn.vols.get_mut(v.name())?;
        let d = vn.drain.as_mut()?;
        if finish {
            d.active = false;
        }
        let relays = vn.links.len();
        let relays_fenced = vn.links.iter().filter(|l| l.fenced(d.generation)).count();
        let relays_drained = vn.links.iter().filter(|l| l.drained).count();
        Some(DrainProgress {
            relays,
            relays_fenced,
            fence_generation: d.generation,
            relays_drained,
            relays_expected: d.expected,
            lsn_start: d.lsn_start,
            lsn_reached: v.next_lsn().saturating_sub(1),
            relay_lsn_max: vn.links.iter().map(|l| l.held_lsn).max().unwrap_or(0),
            bytes_drained: vn
                .links
                .iter()
                .map(|l| l.conn.stats().bytes_received.saturating_sub(l.drain_bytes0))
                .sum(),
            epoch_start: d.epoch_start,
            done: relays > 0 && relays_drained == relays && relays >= d.expected,
            elapsed_us: now.saturating_sub(d.started_ns) / 1_000,
        })
    })
}
