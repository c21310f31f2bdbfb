//! The world: roles, links, the fault schedule drawn from the seed, the event loop and
//! the standby host's failover sequence.

use crate::check::{self, Failover, RelaySnap};
use crate::net::{Ev, Link, Node, Queue, Side};
use crate::primary::{AckPolicy, Primary, VOLUME};
use crate::relay::{FwdPolicy, Out, Relay};
use crate::rng::Rng;
use crate::standby::SVol;
use crate::standby_net::SNet;
use crate::{Outcome, SimConfig, Violation};
use rdma_transport::liveness::{self, PrimaryHeartbeat};
use rdma_transport::wire::{self, Frame, FrameKind, Heartbeat, HelloReply, RefuseReason};
use standby::failover::{Detector, DetectorConfig};
use std::net::SocketAddr;

pub const MS: u64 = 1_000_000;
/// Poll period of relays and the standby (the real ones busy-poll; every timer they use
/// is 100 ms or more).
pub const TICK_NS: u64 = 10 * MS;
const PRIMARY_TICK_NS: u64 = 50 * MS;
/// The primary's direct heartbeat interval and its heartbeat to the relays
/// (`relay_down_timeout_ms / 4` with a 1 s timeout).
const UDP_HB_NS: u64 = 100 * MS;
const RELAY_HB_NS: u64 = 250 * MS;
/// `drain_timeout_ms` default and `DRAIN_NO_RELAY_GRACE_MS`.
pub const DRAIN_TIMEOUT_NS: u64 = 30_000 * MS;
pub const DRAIN_NO_RELAY_GRACE_NS: u64 = 1_000 * MS;
/// How long the run goes on after promotion (stragglers of the old generation arrive).
const AFTER_PROMOTION_NS: u64 = 1_000 * MS;
/// A run without a failover must have applied every restart point by then.
const CONVERGE_NS: u64 = 60_000 * MS;
const RECONNECT_NS: u64 = 100 * MS;

/// What the seed chose for a run.
#[derive(Debug, Clone)]
pub struct Params {
    pub relays: usize,
    pub ack: AckPolicy,
    pub fwd: FwdPolicy,
    /// Base one-way latency per relay: (primary link, standby link).
    pub lat: Vec<(u64, u64)>,
    /// Per mille of data frames to the standby duplicated / reordered.
    pub dup: u64,
    pub reorder: u64,
    /// Per mille of direct heartbeats lost.
    pub udp_drop: u64,
    pub ops_total: u64,
    pub burst_gap_ns: u64,
    /// When the primary dies (None: it never does).
    pub kill_at: Option<u64>,
    /// The operator declares the failure at `kill_at` (the primary dies soon after).
    pub declare: bool,
}

impl Params {
    pub fn draw(rng: &mut Rng) -> Params {
        let relays = rng.range(1, 3) as usize;
        let ack = match rng.below(3) {
            0 => AckPolicy::All,
            1 => AckPolicy::Quorum(rng.range(1, relays as u64) as usize),
            _ => AckPolicy::Any,
        };
        let fwd = match rng.below(5) {
            0 | 1 => FwdPolicy::Immediate,
            2 => FwdPolicy::Interval {
                ns: rng.range(50, 4_000) * MS,
            },
            3 => {
                let period = rng.range(200, 4_000) * MS;
                FwdPolicy::Windows {
                    open_ns: rng.range(period / 10, period * 9 / 10),
                    period_ns: period,
                }
            }
            _ => FwdPolicy::Bandwidth {
                bytes_per_sec: rng.range(50_000, 2_000_000) as f64,
            },
        };
        let lat = (0..relays)
            .map(|_| (rng.range(50_000, 5 * MS), rng.range(100_000, 30 * MS)))
            .collect();
        let ops_total = rng.range(20, 300);
        let burst_gap_ns = rng.range(1, 20) * MS;
        let kill_at = (!rng.chance(100)).then(|| rng.range(300, 1_000 + ops_total * 4) * MS);
        Params {
            relays,
            ack,
            fwd,
            lat,
            dup: rng.below(40),
            reorder: rng.below(40),
            udp_drop: rng.below(150),
            ops_total,
            burst_gap_ns,
            kill_at,
            declare: rng.chance(150),
        }
    }
}

pub struct World {
    pub cfg: SimConfig,
    pub seed: u64,
    pub par: Params,
    rng: Rng,
    wl: Rng,
    pub q: Queue,
    pub p: Primary,
    pub r: Vec<Relay>,
    pub pr: Vec<Link>,
    pub rs: Vec<Link>,
    pub sv: SVol,
    pub sn: SNet,
    det: Detector,
    pub fo: Failover,
    pub step: u64,
    pub fail: Option<String>,
    last_fault_at: u64,
    blocks: usize,
    /// `BATON_SIM_TRACE` set: every event is printed (replays).
    pub trace: bool,
    released_past_durable: u64,
}

fn trace(now: u64, ev: &Ev, next: u64, epoch: u64) {
    let head = format!("{:>10.3} ms [standby next {next} epoch {epoch}]", now as f64 / 1e6);
    match ev {
        Ev::Deliver {
            relay,
            side,
            to,
            inc,
            bytes,
        } => {
            let what = match wire::parse(bytes) {
                Ok(Frame::Ops(b)) | Ok(Frame::Forward(b)) => {
                    format!(
                        "{:?} gen {} {:?}..{:?}",
                        FrameKind::Ops,
                        b.generation,
                        b.lsn_first(),
                        b.lsn_last()
                    )
                }
                Ok(Frame::GapReply(g)) => format!(
                    "GapReply id {} {:?} gen {} {:?}..{:?}",
                    g.request_id,
                    g.status,
                    g.batch.generation,
                    g.batch.lsn_first(),
                    g.batch.lsn_last()
                ),
                Ok(f) if matches!(f.kind(), FrameKind::Heartbeat) => return,
                Ok(f) => format!("{f:?}"),
                Err(e) => format!("unparsable: {e}"),
            };
            let kind = bytes.get(1).copied().unwrap_or(0);
            println!("{head} relay {relay} {side:?} -> {to:?} (inc {inc}) kind {kind}: {what}");
        }
        Ev::Tick(_) | Ev::Udp(_) | Ev::Workload => {}
        other => println!("{head} {other:?}"),
    }
}

impl World {
    pub fn new(seed: u64, cfg: SimConfig) -> World {
        let mut rng = Rng::new(seed);
        let par = Params::draw(&mut rng);
        let wl = rng.fork();
        let blocks = 32;
        let n = par.relays;
        let r = (0..n).map(|i| Relay::new(i == 0, par.fwd)).collect();
        let det = Detector::new(
            DetectorConfig {
                timeout_ms: 1_000,
                relay_timeout_ms: 1_000,
            },
            [VOLUME.to_string()],
        );
        let mut w = World {
            cfg,
            seed,
            p: Primary::new(n, blocks, par.ack, par.ops_total),
            par,
            rng,
            wl,
            q: Queue::default(),
            r,
            pr: vec![Link::default(); n],
            rs: vec![Link::default(); n],
            sv: SVol::new(blocks),
            sn: SNet::new(n, !cfg.stall_waits_for_reports),
            det,
            fo: Failover::default(),
            step: 0,
            fail: None,
            last_fault_at: 0,
            blocks,
            trace: std::env::var_os("BATON_SIM_TRACE").is_some(),
            released_past_durable: 0,
        };
        w.schedule();
        w
    }

    /// Start-up events and the fault schedule.
    fn schedule(&mut self) {
        let n = self.par.relays;
        for i in 0..n {
            self.q.at(0, Ev::Reconnect(i, Side::Primary));
            self.q.at(0, Ev::Reconnect(i, Side::Standby));
            self.q.at(i as u64 * MS, Ev::Tick(Node::Relay(i)));
        }
        self.q.at(0, Ev::Tick(Node::Primary));
        self.q.at(5 * MS, Ev::Tick(Node::Standby));
        self.q.at(MS, Ev::Workload);
        let span = self.par.kill_at.unwrap_or(1_000 + self.par.ops_total * 4) + 500 * MS;
        let f = &mut self.rng;
        let mut faults = Vec::new();
        for _ in 0..f.below(4) {
            let at = f.below(span);
            let i = f.below(n as u64) as usize;
            faults.push((at, Ev::RelayCrash(i)));
            faults.push((at + f.range(5, 800) * MS, Ev::RelayRestart(i)));
        }
        for _ in 0..f.below(3) {
            let at = f.below(span);
            faults.push((at, Ev::StandbyCrash));
            faults.push((at + f.range(5, 500) * MS, Ev::StandbyRestart));
        }
        for _ in 0..f.below(5) {
            let side = if f.chance(500) { Side::Primary } else { Side::Standby };
            faults.push((f.below(span), Ev::LinkReset(f.below(n as u64) as usize, side)));
        }
        if let Some(k) = self.par.kill_at {
            faults.push((k, if self.par.declare { Ev::Declare } else { Ev::KillPrimary }));
        }
        for (at, ev) in faults {
            self.last_fault_at = self.last_fault_at.max(at);
            self.q.at(at, ev);
        }
    }

    pub fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            step: self.step,
            time_ms: self.q.now as f64 / 1e6,
            what,
        }
    }

    pub fn run(mut self) -> Result<Outcome, Violation> {
        while let Some(ev) = self.q.pop() {
            self.step += 1;
            self.handle(ev);
            check::after_step(&mut self);
            if let Some(what) = self.fail.take() {
                return Err(self.violation(what));
            }
            if self.done() {
                break;
            }
        }
        check::at_end(&mut self);
        if let Some(what) = self.fail.take() {
            return Err(self.violation(what));
        }
        Ok(self.outcome())
    }

    fn done(&mut self) -> bool {
        let now = self.q.now;
        if let Some(at) = self.fo.promoted_at {
            return now >= at + AFTER_PROMOTION_NS;
        }
        if let Some(k) = self.par.kill_at {
            return now > k + DRAIN_TIMEOUT_NS + 10_000 * MS;
        }
        let converged =
            self.p.ops_left == 0 && self.sv.applied_epoch == self.p.epoch() && now > self.last_fault_at + 2_000 * MS;
        converged || now > CONVERGE_NS
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            steps: self.step,
            failed_over: self.fo.promoted_at.is_some(),
            drain_gained: self.fo.drain_gained,
            policy_holds: self.sn.policy_holds,
            torn_tails: self.r.iter().map(|r| r.torn_tails).sum(),
            relabelled: self.r.iter().map(|r| r.relabelled).sum(),
            fenced: self.r.iter().map(|r| r.fenced_frames).sum::<u64>() + self.fo.fenced_offers,
            missed_reconnecting: self.fo.missed_reconnecting,
            released_past_durable: self.released_past_durable,
        }
    }

    fn relay_addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i as u8 + 1], 4520))
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.q.now;
        if self.trace {
            trace(now, &ev, self.sv.next_lsn(), self.sv.applied_epoch);
        }
        match ev {
            Ev::Deliver {
                relay,
                side,
                to,
                inc,
                bytes,
            } => self.deliver(relay, side, to, inc, &bytes),
            Ev::Udp(b) => {
                if let Ok(hb) = liveness::decode(&b) {
                    self.det.heartbeat(&hb, now);
                } else {
                    self.fail = Some("direct heartbeat did not decode".into());
                }
            }
            Ev::Tick(node) => self.tick(node),
            Ev::Workload => {
                if self.p.alive && self.p.ops_left > 0 {
                    self.p.issue(&mut self.wl);
                    for i in 0..self.par.relays {
                        self.send_ops(i);
                    }
                    let gap = self.wl.range(MS / 10, self.par.burst_gap_ns);
                    self.q.after(gap, Ev::Workload);
                }
            }
            Ev::Commit { relay, inc, upto } => {
                if self.r[relay].alive && self.r[relay].inc == inc {
                    let mut out = Out::default();
                    self.r[relay].on_commit(upto, &mut out);
                    self.relay_out(relay, out);
                }
            }
            Ev::RelayCrash(i) => self.relay_crash(i),
            Ev::RelayRestart(i) => {
                if !self.r[i].alive {
                    self.r[i].alive = true;
                    self.reconnect_later(i, Side::Primary, RECONNECT_NS);
                    self.reconnect_later(i, Side::Standby, RECONNECT_NS);
                }
            }
            Ev::StandbyCrash => self.standby_crash(),
            Ev::StandbyRestart => {
                if !self.sv.alive {
                    self.sv.restart();
                    self.sn = SNet::new(self.par.relays, !self.cfg.stall_waits_for_reports);
                    for i in 0..self.par.relays {
                        self.reconnect_later(i, Side::Standby, RECONNECT_NS);
                    }
                }
            }
            Ev::LinkReset(i, side) => self.reset(i, side),
            Ev::Reconnect(i, side) => self.reconnect(i, side),
            Ev::KillPrimary => self.kill_primary(),
            Ev::Declare => self.det.declare("simulated operator"),
        }
    }

    /// Sends `bytes` on relay `i`'s `side` link; `from_relay` gives the direction.
    pub fn send(&mut self, i: usize, side: Side, from_relay: bool, bytes: Vec<u8>) {
        let link = match side {
            Side::Primary => &mut self.pr[i],
            Side::Standby => &mut self.rs[i],
        };
        if !link.open {
            return;
        }
        let base = match side {
            Side::Primary => self.par.lat[i].0,
            Side::Standby => self.par.lat[i].1,
        };
        let to = match (side, from_relay) {
            (_, false) => Node::Relay(i),
            (Side::Primary, true) => Node::Primary,
            (Side::Standby, true) => Node::Standby,
        };
        let dir = usize::from(from_relay);
        let now = self.q.now;
        let delay = base + self.rng.below(base + 1);
        let inc = link.inc;
        let data = side == Side::Standby
            && from_relay
            && matches!(bytes.get(1), Some(&k) if k == FrameKind::Forward as u8 || k == FrameKind::GapReply as u8);
        if data && self.cfg.reorder_in_link && self.rng.chance(self.par.reorder) {
            // Overtakes or falls behind its neighbours: not FIFO.
            let at = now + delay + self.rng.below(100 * MS);
            self.q.at(
                at,
                Ev::Deliver {
                    relay: i,
                    side,
                    to,
                    inc,
                    bytes,
                },
            );
            return;
        }
        let at = (now + delay).max(link.last[dir]);
        link.last[dir] = at;
        if data && self.rng.chance(self.par.dup) {
            let again = at + self.rng.below(50 * MS);
            let copy = bytes.clone();
            self.q.at(
                again,
                Ev::Deliver {
                    relay: i,
                    side,
                    to,
                    inc,
                    bytes: copy,
                },
            );
        }
        self.q.at(
            at,
            Ev::Deliver {
                relay: i,
                side,
                to,
                inc,
                bytes,
            },
        );
    }

    fn send_ops(&mut self, i: usize) {
        for f in self.p.frames_for(i) {
            self.send(i, Side::Primary, false, f);
        }
    }

    fn relay_out(&mut self, i: usize, out: Out) {
        for f in out.to_primary {
            self.send(i, Side::Primary, true, f);
        }
        for f in out.to_standby {
            self.send(i, Side::Standby, true, f);
        }
        if let Some(upto) = out.commit {
            let inc = self.r[i].inc;
            let dt = self.rng.range(100_000, 3 * MS);
            self.q.after(dt, Ev::Commit { relay: i, inc, upto });
        }
        if out.close_primary {
            self.close(i, Side::Primary);
            self.reconnect_later(i, Side::Primary, RECONNECT_NS);
        }
        if out.close_standby {
            self.close(i, Side::Standby);
            self.reconnect_later(i, Side::Standby, 5 * RECONNECT_NS);
        }
    }

    fn standby_out(&mut self) {
        for (i, f) in std::mem::take(&mut self.sn.out) {
            self.send(i, Side::Standby, false, f);
        }
    }

    /// Closes a connection: both ends lose their session.
    pub fn close(&mut self, i: usize, side: Side) {
        match side {
            Side::Primary => {
                self.pr[i].close();
                self.p.links[i].up = false;
                self.r[i].primary_connected = false;
            }
            Side::Standby => {
                self.rs[i].close();
                self.r[i].rs_up = false;
                self.r[i].gaps.clear();
                self.sn.link_down(i);
            }
        }
    }

    fn reconnect_later(&mut self, i: usize, side: Side, dt: u64) {
        let l = match side {
            Side::Primary => &mut self.pr[i],
            Side::Standby => &mut self.rs[i],
        };
        if !l.reconnecting {
            l.reconnecting = true;
            self.q.after(dt, Ev::Reconnect(i, side));
        }
    }

    fn reset(&mut self, i: usize, side: Side) {
        let open = match side {
            Side::Primary => self.pr[i].open,
            Side::Standby => self.rs[i].open,
        };
        if open {
            self.close(i, side);
            let dt = self.rng.range(10, 300) * MS;
            self.reconnect_later(i, side, dt);
        }
    }

    /// The initiator opens a connection and sends its Hello (the primary to a relay, a
    /// relay to the standby).
    fn reconnect(&mut self, i: usize, side: Side) {
        let now = self.q.now;
        match side {
            Side::Primary => {
                self.pr[i].reconnecting = false;
                if self.pr[i].open || !self.p.alive || !self.r[i].alive || self.p.links[i].fenced {
                    return;
                }
                self.pr[i].open(now);
                let h = wire::encode_hello(&self.p.hello()).expect("hello encodes");
                self.send(i, Side::Primary, false, h.as_bytes().to_vec());
            }
            Side::Standby => {
                self.rs[i].reconnecting = false;
                if self.rs[i].open || !self.r[i].alive || !self.sv.alive {
                    return;
                }
                self.rs[i].open(now);
                let h = self.r[i].hello_to_standby();
                self.send(i, Side::Standby, true, h);
            }
        }
    }

    fn relay_crash(&mut self, i: usize) {
        if !self.r[i].alive {
            return;
        }
        self.close(i, Side::Primary);
        self.close(i, Side::Standby);
        self.r[i].crash(&mut self.rng);
    }

    fn standby_crash(&mut self) {
        // The failover sequence runs to its end once decided (a crash then is not modelled).
        if !self.sv.alive || self.fo.decided_at.is_some() {
            return;
        }
        for i in 0..self.par.relays {
            self.close(i, Side::Standby);
        }
        self.sv.crash();
    }

    fn kill_primary(&mut self) {
        if !self.p.alive {
            return;
        }
        self.p.alive = false;
        // Frames already sent still arrive; then the connections close.
        for i in 0..self.par.relays {
            let at = self.pr[i].last[0] + 1;
            self.q.at(at, Ev::LinkReset(i, Side::Primary));
        }
    }

    fn tick(&mut self, node: Node) {
        let now = self.q.now;
        match node {
            Node::Primary => {
                if !self.p.alive {
                    return;
                }
                self.primary_heartbeats(now);
                self.q.after(PRIMARY_TICK_NS, Ev::Tick(Node::Primary));
            }
            Node::Relay(i) => {
                if self.r[i].alive {
                    let mut out = Out::default();
                    self.r[i].poll_standby(now, &mut out);
                    self.relay_out(i, out);
                }
                self.q.after(TICK_NS, Ev::Tick(node));
            }
            Node::Standby => {
                if self.sv.alive {
                    self.standby_poll(now);
                }
                self.q.after(TICK_NS, Ev::Tick(node));
            }
        }
    }

    fn primary_heartbeats(&mut self, now: u64) {
        if now % UDP_HB_NS < PRIMARY_TICK_NS {
            self.p.hb_seq += 1;
            let hb = PrimaryHeartbeat {
                volume: VOLUME,
                interval_ms: (UDP_HB_NS / MS) as u32,
                seq: self.p.hb_seq,
                generation: self.p.gen,
                last_lsn: self.p.last_lsn(),
                epoch: self.p.epoch(),
                time_ns: now,
            };
            let mut b = Vec::new();
            liveness::encode(&hb, &mut b).expect("heartbeat encodes");
            if !self.rng.chance(self.par.udp_drop) {
                let d = self.rng.range(100_000, 20 * MS);
                self.q.after(d, Ev::Udp(b));
            }
        }
        if now % RELAY_HB_NS < PRIMARY_TICK_NS {
            for i in 0..self.par.relays {
                if self.p.links[i].up {
                    let h = Heartbeat {
                        nonce: now,
                        time_ns: now,
                        is_reply: false,
                    };
                    self.send(i, Side::Primary, false, wire::encode_heartbeat(&h).as_bytes().to_vec());
                }
            }
        }
    }

    /// The standby's poll and the host's failover sequence.
    fn standby_poll(&mut self, now: u64) {
        let closed = self.sn.poll(&mut self.sv, now);
        for i in closed {
            self.close(i, Side::Standby);
            self.reconnect_later(i, Side::Standby, RECONNECT_NS);
        }
        check::stall_pulls(self);
        if self.fo.decided_at.is_none() {
            if self.det.poll(now).is_some() {
                self.decide(now);
            }
        } else if self.fo.promoted_at.is_none() {
            let started = self.fo.decided_at.unwrap_or(now);
            let links = self.sn.links.iter().flatten().count();
            let past_grace = now >= started + DRAIN_NO_RELAY_GRACE_NS;
            let grace = links == 0 && past_grace;
            let present = self.sn.present_drained() && past_grace;
            if self.sn.drain_done() || present || grace || now >= started + DRAIN_TIMEOUT_NS {
                self.fo.warned_unreachable = grace;
                self.promote(now);
            }
        }
        self.standby_out();
    }

    /// The detector decided: record what the relays hold, then drain (or not).
    fn decide(&mut self, now: u64) {
        self.fo.decided_at = Some(now);
        self.fo.acked_rp = self.p.acked_rp;
        self.fo.epoch_start = self.sv.applied_epoch;
        self.fo.relays = (0..self.par.relays)
            .map(|i| RelaySnap {
                alive: self.r[i].alive,
                inc: self.r[i].inc,
                linked: self.sn.links[i].is_some(),
                first: self.r[i].first(),
                durable: self.r[i].durable,
            })
            .collect();
        if self.p.alive {
            // A declared failure, or a false detection: the old primary dies soon after
            // (its frames meanwhile exercise fencing).
            let dt = self.rng.below(300 * MS);
            self.q.after(dt, Ev::KillPrimary);
        }
        if self.cfg.drain {
            let fence_gen = if self.cfg.fence { self.sv.fence_generation() } else { 0 };
            self.sn.start_drain(self.cfg.drain_drops_stale_pulls, fence_gen, now);
        } else {
            self.promote(now);
        }
    }

    /// Roll back and promote; the new primary's Hello fences every relay it reaches.
    fn promote(&mut self, now: u64) {
        self.sn.draining = false;
        self.sv.declare_failure();
        let gen = self.sv.promote();
        self.fo.promoted_at = Some(now);
        self.fo.gen = gen;
        let mut h = self.p.hello();
        h.generation = gen;
        h.resume_lsn = self.sv.applied_rp_lsn + 1;
        let b = wire::encode_hello(&h).expect("hello encodes").as_bytes().to_vec();
        for i in 0..self.par.relays {
            let d = self.par.lat[i].0 + self.rng.below(MS);
            let bytes = b.clone();
            self.q.after(
                d,
                Ev::Deliver {
                    relay: i,
                    side: Side::Primary,
                    to: Node::Relay(i),
                    inc: 0,
                    bytes,
                },
            );
        }
        check::at_promotion(self);
    }

    fn deliver(&mut self, i: usize, side: Side, to: Node, inc: u64, bytes: &[u8]) {
        let link = match side {
            Side::Primary => &self.pr[i],
            Side::Standby => &self.rs[i],
        };
        // inc 0: the promoted standby's fencing Hello on a connection of its own.
        if inc != 0 && (!link.open || link.inc != inc) {
            return;
        }
        let frame = match wire::parse(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.fail = Some(format!("frame from the simulation did not parse: {e}"));
                return;
            }
        };
        let now = self.q.now;
        match to {
            Node::Relay(_) if !self.r[i].alive => {}
            Node::Relay(_) if side == Side::Primary => self.relay_from_primary(i, inc, &frame, now),
            Node::Relay(_) => self.relay_from_standby(i, &frame),
            Node::Primary => self.primary_from_relay(i, &frame),
            Node::Standby => self.standby_from_relay(i, &frame, now),
        }
    }

    fn relay_from_primary(&mut self, i: usize, inc: u64, f: &Frame<'_>, now: u64) {
        let mut out = Out::default();
        match f {
            Frame::Hello(h) => {
                self.r[i].on_primary_hello(h, now, &mut out);
                if inc == 0 {
                    out.to_primary.clear();
                    out.close_primary = false;
                    // The old primary's connection is replaced by the new one.
                    if self.pr[i].open {
                        self.close(i, Side::Primary);
                    }
                }
            }
            Frame::Ops(b) => self.r[i].on_ops(b, now, &mut out),
            Frame::Heartbeat(_) => self.r[i].primary_heard = now,
            _ => {}
        }
        self.relay_out(i, out);
    }

    fn relay_from_standby(&mut self, i: usize, f: &Frame<'_>) {
        let mut out = Out::default();
        match f {
            Frame::HelloReply(r) => {
                if let HelloReply::Accepted { resume_lsn, .. } = r {
                    if self.cfg.release_on_resume && resume_lsn.saturating_sub(1) > self.sv.durable_lsn() {
                        self.released_past_durable += 1;
                    }
                }
                self.r[i].on_standby_reply(r, self.cfg.release_on_resume, &mut out)
            }
            Frame::SafeUpTo(s) => self.r[i].release(s.lsn),
            Frame::Fence(f) if !f.is_reply => self.r[i].on_fence(f.generation, &mut out),
            Frame::GapRequest(g) if self.r[i].gaps.len() < crate::relay::GAP_QUEUE_MAX => {
                self.r[i].gaps.push_back(*g);
            }
            _ => {}
        }
        self.relay_out(i, out);
    }

    fn primary_from_relay(&mut self, i: usize, f: &Frame<'_>) {
        if !self.p.alive {
            return;
        }
        match f {
            Frame::HelloReply(HelloReply::Accepted { resume_lsn, .. }) => {
                self.p.links[i].up = true;
                self.p.links[i].sent = resume_lsn.saturating_sub(1).min(self.p.last_lsn());
                self.send_ops(i);
            }
            Frame::HelloReply(HelloReply::Refused { reason, .. }) => {
                if *reason == RefuseReason::StaleGeneration {
                    self.p.links[i].fenced = true;
                }
                self.close(i, Side::Primary);
                self.reconnect_later(i, Side::Primary, 5 * RECONNECT_NS);
            }
            Frame::Ack(a) => self.p.on_ack(i, a.durable_lsn),
            _ => {}
        }
    }

    fn standby_from_relay(&mut self, i: usize, f: &Frame<'_>, now: u64) {
        if !self.sv.alive {
            return;
        }
        if self.sv.promoted {
            check::offer_after_promotion(self, f, now);
            return;
        }
        match f {
            Frame::Hello(h) => {
                let reply = self.sn.on_hello(i, h, &self.sv, self.cfg.resume_at_durable, now);
                self.send(i, Side::Standby, false, reply);
            }
            Frame::Forward(b) => {
                if let Some(l) = self.sn.links[i].as_mut() {
                    l.forward_frames += 1;
                    l.last_forward_ns = now;
                }
                self.sn.offer(i, &mut self.sv, b, now);
            }
            Frame::GapReply(g) => {
                self.sn.offer(i, &mut self.sv, &g.batch, now);
                self.sn
                    .on_reply(i, &self.sv, g.request_id, g.status, g.batch.lsn_last(), now);
            }
            Frame::Fence(f) if f.is_reply => self.sn.on_fence_reply(i, f.generation, f.journal_lsn),
            Frame::PrimaryLiveness(p) => {
                if let Some(l) = self.sn.links[i].as_mut() {
                    l.fwd = Some((p.forward, now));
                    l.held_lsn = p.primary_lsn;
                }
                self.det
                    .relay_report(Self::relay_addr(i), VOLUME, p.primary_age_ms, p.connected, now);
            }
            _ => {}
        }
        self.standby_out();
    }

    pub fn blocks(&self) -> usize {
        self.blocks
    }
}
