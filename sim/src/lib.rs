//! Deterministic simulation of baton's replication and failover: a primary, 1-3 relays and
//! a standby host, driven by one seeded PRNG over virtual time (an event queue; no wall
//! clock, no threads, no sockets). A failing seed replays exactly.
//!
//! # Real code in the loop
//!
//! - `rdma_transport::wire`: every message between roles is encoded by the real encoders
//!   (`BatchEncoder`, `encode_*`) and parsed by `wire::parse` on arrival (CRCs included).
//! - `rdma_transport::liveness`: the primary's direct heartbeat datagrams.
//! - `rdma_transport::handshake::answer_hello`: every Hello (relay's primary port, the
//!   standby's relay port) is answered by it: resume points and generation fencing.
//! - `standby::receive::Receiver`: the standby's ordered intake (dedupe, reorder window,
//!   back-pressure, `gaps()`, generation fencing).
//! - `standby::net::pull::stall_pull_wanted`: the standby's decision to pull around a
//!   stalled forwarder, and the real timing constants of `standby::net`.
//! - `standby::failover::Detector`: primary-failure detection from the direct heartbeats and
//!   the relays' `PrimaryLiveness` reports.
//!
//! # Models (small state machines mirroring the real rules)
//!
//! - [`primary`]: `relay/src/volume.rs` — LSN assignment, Ops frames, resend from a relay's
//!   resume point, the ack policy (`on_relay_down = block`).
//! - [`relay`]: `relay/src/relay.rs` — journal before ack with group commit, crash losing
//!   what was not durable with a torn tail cut at recovery, `forward_gate`, forwarding of
//!   durable ops only, `serve_gap`, `report_liveness`, release on `SafeUpTo` and on the
//!   standby's `HelloReply`, fencing of older generations.
//! - [`standby`]: `standby/src/volume.rs` + `delayed.rs` (delayed mode only) — staging,
//!   whole-epoch apply, crash/restart, `declare_failure` rollback, `promote`.
//! - [`standby_net`]: `standby/src/net/mod.rs` + `net/drain.rs` — links, `offer`,
//!   `SafeUpTo`, `fetch_holes`/`pick_link`, `pull_on_stall`, `pull_drain`, chained replies.
//! - [`world`]: the standby host's failover sequence (`standby/src/host`: decide, drain,
//!   roll back, promote), the network and the fault menu; [`check`] the invariants.
//!
//! `docs/simulation.md` describes the fault menu, the invariants and how to replay and soak.

pub mod check;
pub mod net;
pub mod ops;
pub mod primary;
pub mod relay;
pub mod rng;
pub mod standby;
pub mod standby_net;
pub mod world;

pub use world::{Params, World};

/// Switches of a run (the seed draws everything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// The standby host drains the relays before rolling back (the real default).
    pub drain: bool,
    /// The drain fences every relay first (`Fence`) and pulls only from fenced ones (the
    /// real code; off replays the window in which relays went on acknowledging the old
    /// primary during and after the drain).
    pub fence: bool,
    /// Relays release their journal below the standby's resume point on its HelloReply, as
    /// the real relay does (`drive_standby`).
    pub release_on_resume: bool,
    /// Data frames on a relay -> standby link may overtake each other. Off by default: the
    /// real transports (TCP, RDMA RC) keep a connection's order, and with it on the
    /// standby's per-link back-pressure queue can deadlock (`docs/simulation.md`).
    pub reorder_in_link: bool,
    /// `start_drain` drops requests outstanding from before the drain, so only answers to
    /// requests made during it mark a relay drained (the real code since the simulation
    /// found seed 551013; off replays the defect).
    pub drain_drops_stale_pulls: bool,
    /// `adopt` resumes a relay after the standby's durable LSN, not its received one (the
    /// real code; off replays what the relays released before the fix).
    pub resume_at_durable: bool,
    /// A stall waits for a new link's first report and gives a reporting forwarder its
    /// second even when its last report shows less than a backup's (the real code; off
    /// replays the earlier rule, which pulled at once in both cases, as seed 551013 ran).
    pub stall_waits_for_reports: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            drain: true,
            fence: true,
            release_on_resume: true,
            reorder_in_link: false,
            drain_drops_stale_pulls: true,
            resume_at_durable: true,
            stall_waits_for_reports: true,
        }
    }
}

/// A broken invariant: the seed and the step that showed it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("seed {seed}: step {step} at {time_ms:.3} ms: {what}")]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub time_ms: f64,
    pub what: String,
}

/// What a run did (for the soak's summary).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub steps: u64,
    pub failed_over: bool,
    /// Restart points the drain gained over what the standby had taken in at the decision.
    pub drain_gained: u64,
    pub policy_holds: u64,
    pub torn_tails: u64,
    pub relabelled: u64,
    pub fenced: u64,
    /// A relay alive at the decision whose standby link was down then held a newer
    /// restart point than the promoted one (the drain does not wait for reconnects).
    pub missed_reconnecting: bool,
    /// A relay released below the standby's resume point while that point was past the
    /// standby's durable LSN (the release-on-resume hazard; see `docs/simulation.md`).
    pub released_past_durable: u64,
}

/// Runs one seed to its end.
pub fn run(seed: u64, cfg: SimConfig) -> Result<Outcome, Violation> {
    World::new(seed, cfg).run()
}
