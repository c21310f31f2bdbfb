//! Model of the standby's network side (`standby/src/net/mod.rs`, `net/drain.rs`): one
//! link per relay, Hello answered with the real `answer_hello`, batches offered to the real
//! `Receiver` with back-pressure, `SafeUpTo`, hole fetches from `Receiver::gaps`, stall
//! pulls decided by the real `stall_pull_wanted`, and the failover drain. Each function
//! names the real one it mirrors.

use crate::ops;
use crate::standby::SVol;
use rdma_transport::handshake::{answer_hello, LocalVolume};
use rdma_transport::wire::{
    self, Batch, Fence, ForwardState, GapRequest, GapStatus, Hello, HelloReply, RefuseReason, Role, SafeUpTo,
    FRAME_BYTES_MAX, WIRE_VERSION,
};
use standby::net::pull::{self, ReplyStep, StallVerdict};
use standby::net::{
    GAP_REQUEST_TIMEOUT_NS, GAP_RETRY_NS, PEAK_LINKS_WINDOW_NS, PULL_INTERVAL_MAX_NS, PULL_SPAN_LSN, REPORT_FRESH_NS,
    STALL_NS,
};
use standby::{Offer, OwnedOp};
use std::collections::VecDeque;

/// Holes looked at per poll (`GAPS_PER_POLL`).
const GAPS_PER_POLL: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct Pull {
    pub id: u64,
    pub sent_ns: u64,
    pub chain: bool,
    pub first: u64,
}

/// The standby's side of one relay connection (`Link`).
#[derive(Default)]
pub struct SLink {
    /// When the link was accepted (`Link::since_ns`).
    pub since_ns: u64,
    pub fwd: Option<(ForwardState, u64)>,
    pub held_lsn: u64,
    pub pull: Option<Pull>,
    /// `Link::fence_sent` / `fence_reply` (the relay's generation in its answer).
    pub fence_sent: bool,
    pub fence_reply: Option<u64>,
    pub drained: bool,
    pub drain_rescanned: bool,
    pub forward_frames: u64,
    pub last_forward_ns: u64,
    pub safe_sent: u64,
    pub held: VecDeque<OwnedOp>,
    /// Set when the link must close (fenced, refused offer).
    pub close: Option<String>,
}

impl SLink {
    fn fresh_fwd(&self, now: u64) -> Option<ForwardState> {
        self.fwd
            .filter(|&(_, at)| now.saturating_sub(at) < REPORT_FRESH_NS)
            .map(|(f, _)| f)
    }
    fn forwarding(&self, now: u64) -> bool {
        self.forward_frames > 0 && now.saturating_sub(self.last_forward_ns) < STALL_NS
    }
}

/// A stall pull sent while the checker should look at the forwarder (invariant 5).
#[derive(Debug, Clone, Copy)]
pub struct StallPull {
    pub next: u64,
}

/// `VolNet`, plus the drain.
#[derive(Default)]
pub struct SNet {
    pub links: Vec<Option<SLink>>,
    progress_lsn: u64,
    progress_ns: u64,
    last_pull_ns: u64,
    pull_interval_ns: u64,
    gap_asked: Vec<(u64, u64)>,
    rr: usize,
    next_req_id: u64,
    pub policy_holds: u64,
    pub draining: bool,
    /// `VolNet::peak_links` / `peak_ns`: most links at once lately.
    peak_links: usize,
    peak_ns: u64,
    /// `SimConfig::stall_waits_for_reports` off: the earlier stall rule.
    pub old_stall_rule: bool,
    /// `Drain::expected`, set by `start_drain`.
    pub expected: usize,
    /// `Drain::generation`: the fence's generation (0: the drain does not fence).
    pub fence_gen: u64,
    /// Frames to send: (relay, bytes).
    pub out: Vec<(usize, Vec<u8>)>,
    /// Stall pulls sent this poll (for the checker).
    pub stall_pulls: Vec<StallPull>,
}

impl SNet {
    pub fn new(relays: usize, old_stall_rule: bool) -> SNet {
        SNet {
            links: (0..relays).map(|_| None).collect(),
            old_stall_rule,
            ..SNet::default()
        }
    }

    /// `adopt`: answers a relay's Hello; an accepted relay becomes a link.
    pub fn on_hello(&mut self, i: usize, h: &Hello<'_>, v: &SVol, resume_at_durable: bool, now: u64) -> Vec<u8> {
        let received = v.next_lsn().saturating_sub(1);
        let local = LocalVolume {
            volume_id: crate::primary::VOLUME_ID,
            block_size: ops::BLOCK as u32,
            generation: v.gen.max(v.recv.generation()),
            durable_lsn: if resume_at_durable {
                v.durable_lsn().min(received)
            } else {
                received
            },
            frame_bytes_max: FRAME_BYTES_MAX as u32,
            recv_credits: 0,
        };
        let mut reply = answer_hello(h, Role::Relay, Some(&local));
        if matches!(reply, HelloReply::Accepted { .. }) && !v.intake_open() {
            reply = HelloReply::Refused {
                reason: RefuseReason::Busy,
                generation: local.generation,
                version_max: WIRE_VERSION,
            };
        }
        if matches!(reply, HelloReply::Accepted { .. }) {
            self.links[i] = Some(SLink {
                since_ns: now,
                ..SLink::default()
            });
        }
        wire::encode_hello_reply(&reply).as_bytes().to_vec()
    }

    pub fn link_down(&mut self, i: usize) {
        self.links[i] = None;
    }

    fn req_id(&mut self) -> u64 {
        self.next_req_id = self.next_req_id.wrapping_add(1) & 0xffff_ffff;
        self.next_req_id
    }

    fn request(&mut self, i: usize, id: u64, first: u64, last: u64, chain: bool, now: u64) {
        let g = GapRequest {
            request_id: id,
            lsn_first: first,
            lsn_last: last,
        };
        self.out.push((i, wire::encode_gap_request(&g).as_bytes().to_vec()));
        if let Some(l) = self.links[i].as_mut() {
            l.pull = Some(Pull {
                id,
                sent_ns: now,
                chain,
                first,
            });
        }
    }

    /// `offer`: offers a batch; a back-pressure refusal keeps the rest.
    pub fn offer(&mut self, i: usize, v: &mut SVol, b: &Batch<'_>, now: u64) -> Vec<Offer> {
        let mut seen = Vec::new();
        let Some(l) = self.links[i].as_mut() else { return seen };
        let mut taken = 0;
        if l.held.is_empty() {
            for op in &b.ops {
                let o = if v.intake_open() {
                    v.recv.offer(b.generation, op, now)
                } else {
                    Offer::Closed
                };
                seen.push(o);
                match o {
                    Offer::Accepted | Offer::Duplicate => taken += 1,
                    Offer::Full => break,
                    Offer::StaleGeneration { .. } | Offer::Closed => {
                        l.close = Some(format!("refused: {o:?}"));
                        return seen;
                    }
                }
            }
        }
        for op in &b.ops[taken..] {
            l.held.push_back(OwnedOp::from_wire(b.generation, op));
        }
        seen
    }

    /// The reply-handling half of `drive_link` for a GapReply.
    pub fn on_reply(&mut self, i: usize, v: &SVol, id: u64, status: GapStatus, last: Option<u64>, now: u64) {
        let Some(l) = self.links[i].as_mut() else { return };
        let Some(p) = l.pull.take_if(|p| p.id == id) else {
            return;
        };
        if !p.chain {
            return;
        }
        let first = match pull::after_chain_reply(p.first, status, last, v.next_lsn(), l.drain_rescanned) {
            ReplyStep::Drained => {
                l.drained = true;
                return;
            }
            ReplyStep::Rescan(first) => {
                l.drain_rescanned = true;
                first
            }
            ReplyStep::Continue(first) => first,
        };
        self.request(i, id.wrapping_add(1 << 32), first, first + PULL_SPAN_LSN - 1, true, now);
    }

    /// Back-pressure first (`drive_link`): ops held for a link are offered again.
    fn offer_held(&mut self, v: &mut SVol, now: u64) {
        for l in self.links.iter_mut().flatten() {
            while let Some(op) = l.held.pop_front() {
                if !v.intake_open() {
                    l.held.clear();
                    break;
                }
                match v.recv.offer_owned(op, now) {
                    Ok(()) => {}
                    Err((Offer::Duplicate, _)) => {}
                    Err((Offer::Full, op)) => {
                        l.held.push_front(op);
                        break;
                    }
                    Err((o, _)) => {
                        l.close = Some(format!("refused: {o:?}"));
                        break;
                    }
                }
            }
        }
    }

    /// `VolNet::poll` (after the links were read). Returns links closed this poll.
    pub fn poll(&mut self, v: &mut SVol, now: u64) -> Vec<usize> {
        self.offer_held(v, now);
        v.poll();
        let mut closed = Vec::new();
        for (i, slot) in self.links.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|l| l.close.is_some()) {
                *slot = None;
                closed.push(i);
            }
        }
        let n = self.links.iter().flatten().count();
        if n >= self.peak_links || now.saturating_sub(self.peak_ns) > PEAK_LINKS_WINDOW_NS {
            self.peak_links = n;
            self.peak_ns = now;
        }
        let next = v.next_lsn();
        if next != self.progress_lsn || self.progress_ns == 0 {
            self.progress_lsn = next;
            self.progress_ns = now;
            self.pull_interval_ns = STALL_NS;
        }
        let durable = v.durable_lsn();
        for i in 0..self.links.len() {
            let Some(l) = self.links[i].as_mut() else { continue };
            if durable > l.safe_sent {
                l.safe_sent = durable;
                let s = SafeUpTo {
                    lsn: durable,
                    generation: v.gen,
                };
                self.out.push((i, wire::encode_safe_up_to(&s).as_bytes().to_vec()));
            }
            if l.pull
                .is_some_and(|p| now.saturating_sub(p.sent_ns) > GAP_REQUEST_TIMEOUT_NS)
            {
                l.pull = None;
            }
        }
        if v.intake_open() && self.links.iter().any(Option::is_some) {
            self.fetch_holes(v, now);
            if self.draining {
                self.pull_drain(v, now);
            } else {
                self.pull_on_stall(v, now);
            }
        }
        closed
    }

    /// `pull_drain`: fence every link first, pull only from those that answered.
    fn pull_drain(&mut self, v: &SVol, now: u64) {
        let first = v.next_lsn();
        let g = self.fence_gen;
        for i in 0..self.links.len() {
            let Some(l) = self.links[i].as_mut() else { continue };
            if g != 0 && !l.fence_sent {
                l.fence_sent = true;
                let f = Fence {
                    generation: g,
                    journal_lsn: 0,
                    is_reply: false,
                };
                self.out.push((i, wire::encode_fence(&f).as_bytes().to_vec()));
            }
            let fenced = g == 0 || l.fence_reply.is_some_and(|r| r >= g);
            if fenced && !l.drained && l.pull.is_none() {
                let id = self.req_id();
                self.request(i, id, first, first + PULL_SPAN_LSN - 1, true, now);
            }
        }
    }

    /// A relay's answer to the fence (`receive`, `Frame::Fence` reply).
    pub fn on_fence_reply(&mut self, i: usize, generation: u64, journal_lsn: u64) {
        if let Some(l) = self.links[i].as_mut() {
            l.fence_reply = Some(generation);
            l.held_lsn = l.held_lsn.max(journal_lsn);
        }
    }

    /// `fetch_holes` with `pick_link`.
    fn fetch_holes(&mut self, v: &SVol, now: u64) {
        self.gap_asked.retain(|&(_, at)| now.saturating_sub(at) < GAP_RETRY_NS);
        for g in v.recv.gaps(now, GAPS_PER_POLL) {
            if self.gap_asked.iter().any(|&(f, _)| f == g.lsn_first) {
                continue;
            }
            let Some(li) = self.pick_link(now) else { break };
            self.rr = li + 1;
            let id = self.req_id();
            self.request(li, id, g.lsn_first, g.lsn_last, false, now);
            self.gap_asked.push((g.lsn_first, now));
        }
    }

    fn pick_link(&self, now: u64) -> Option<usize> {
        let n = self.links.len();
        let free = |i: &usize| self.links[*i].as_ref().is_some_and(|l| l.pull.is_none());
        let mut order = (0..n).map(|k| (self.rr + k) % n);
        order
            .clone()
            .filter(free)
            .find(|&i| !self.links[i].as_ref().is_some_and(|l| l.forwarding(now)))
            .or_else(|| order.find(free))
    }

    /// `pull_on_stall`, with the real `stall_pull_wanted`.
    fn pull_on_stall(&mut self, v: &SVol, now: u64) {
        if now.saturating_sub(self.progress_ns) < STALL_NS
            || now.saturating_sub(self.last_pull_ns) < self.pull_interval_ns
        {
            return;
        }
        let reports: Vec<pull::RelayReport> = self
            .links
            .iter()
            .flatten()
            .map(|l| pull::RelayReport {
                forward: l.fresh_fwd(now),
                held_lsn: l.held_lsn,
                first_due: !self.old_stall_rule && l.fwd.is_none() && now.saturating_sub(l.since_ns) < REPORT_FRESH_NS,
            })
            .collect();
        let mut verdict = pull::stall_pull_wanted(&reports, v.next_lsn(), now.saturating_sub(self.progress_ns));
        if self.old_stall_rule && verdict == StallVerdict::Wait {
            // The earlier rule waited only for a forwarder whose report held what is missing.
            let next = v.next_lsn();
            let fwd_has_more = reports.iter().any(|r| {
                matches!(r.forward, Some(ForwardState::Forwarding | ForwardState::Holding)) && r.held_lsn >= next
            });
            if !fwd_has_more {
                verdict = StallVerdict::Pull;
            }
        }
        match verdict {
            StallVerdict::Pull => {}
            verdict => {
                if verdict == StallVerdict::PolicyHold {
                    self.policy_holds += 1;
                }
                self.last_pull_ns = now;
                return;
            }
        }
        self.last_pull_ns = now;
        let first = v.next_lsn();
        let view: Vec<pull::StallLink> = self
            .links
            .iter()
            .map(|l| match l {
                Some(l) => pull::StallLink {
                    free: l.pull.is_none(),
                    chain_pull: l.pull.as_ref().is_some_and(|p| p.chain),
                    reported: l.fresh_fwd(now).is_some(),
                    held_lsn: l.held_lsn,
                },
                // No link: never asked.
                None => pull::StallLink {
                    free: false,
                    chain_pull: false,
                    reported: true,
                    held_lsn: 0,
                },
            })
            .collect();
        let Some(t) = pull::stall_targets(&view, self.rr, first) else {
            return;
        };
        self.pull_interval_ns = (self.pull_interval_ns * 2).min(PULL_INTERVAL_MAX_NS);
        self.stall_pulls.push(StallPull { next: first });
        for i in t.ask {
            let id = self.req_id();
            self.request(i, id, first, first + PULL_SPAN_LSN - 1, true, now);
        }
        if let Some(b) = t.best {
            self.rr = b + 1;
        }
    }

    /// `start_drain`; `fence_gen` 0 drains without fencing (`SimConfig::fence` off).
    pub fn start_drain(&mut self, drop_stale_pulls: bool, fence_gen: u64, now: u64) {
        self.draining = true;
        self.fence_gen = fence_gen;
        let n = self.links.iter().flatten().count();
        self.expected = if now.saturating_sub(self.peak_ns) <= PEAK_LINKS_WINDOW_NS {
            self.peak_links.max(n)
        } else {
            n
        };
        for l in self.links.iter_mut().flatten() {
            l.fence_sent = false;
            l.fence_reply = None;
            l.drained = false;
            l.drain_rescanned = false;
            if drop_stale_pulls {
                l.pull = None;
            }
        }
    }

    /// `drain_progress(..).done`: every connected relay drained (false with none).
    pub fn drain_done(&self) -> bool {
        self.present_drained() && self.links.iter().flatten().count() >= self.expected
    }

    /// Every connected relay drained (the host's end after the grace).
    pub fn present_drained(&self) -> bool {
        let n = self.links.iter().flatten().count();
        n > 0 && self.links.iter().flatten().all(|l| l.drained)
    }
}
