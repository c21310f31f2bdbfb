//! One relay's link on its volume's reactor: its state, and each poll's receive: ops
//! offered to the volume (held back under back-pressure), control frames answered, gap
//! replies followed (`docs/standby.md`).

use super::*;
use rdma_transport::link::{heartbeat_echo, Reconnect};

pub(super) struct Pull {
    pub(super) id: u64,
    pub(super) sent_ns: u64,
    /// A stall pull: follow a reply that carried ops with the next request.
    pub(super) chain: bool,
    /// First LSN asked for.
    pub(super) first: u64,
    /// Last LSN asked for.
    pub(super) last: u64,
}

pub(super) struct Link {
    pub(super) conn: Conn,
    pub(super) peer: SocketAddr,
    pub(super) generation: u64,
    pub(super) since_ns: u64,
    pub(super) forward_frames: u64,
    pub(super) gap_replies: u64,
    pub(super) gap_requests_sent: u64,
    pub(super) ops_offered: u64,
    pub(super) lsn_offered_max: u64,
    pub(super) last_forward_ns: u64,
    pub(super) safe_sent: u64,
    /// Ops refused with `Full`, offered again before the link is read again.
    pub(super) held: VecDeque<OwnedOp>,
    pub(super) pull: Option<Pull>,
    /// Why the link must close (the first reason wins); it closes at the end of the poll.
    pub(super) close: Option<String>,
    /// The link's lifecycle: accepted (the relay dialled, its Hello answered), then down
    /// with the reason it closed. The relay redials, as a new link.
    pub(super) life: Reconnect,
    /// The relay's last `PrimaryLiveness` forward state and when it arrived.
    pub(super) fwd: Option<(ForwardState, u64)>,
    /// Highest LSN the relay said it holds (its journal), from `PrimaryLiveness`.
    pub(super) held_lsn: u64,
    /// Failover drain: the fence order went out on this link.
    pub(super) fence_sent: bool,
    /// Failover drain: the relay's answer to the fence (its generation now, the highest LSN
    /// it journaled). Ops are asked for only after it: from then on the relay acknowledges
    /// nothing more of the old primary.
    pub(super) fence_reply: Option<(u64, u64)>,
    /// Failover drain: the relay answered that it holds nothing from the next LSN on.
    pub(super) drained: bool,
    /// This drain asked the relay again from the standby's next LSN after a `not_held`
    /// past it (once per drain: a relay that lacks the hole answers the same again).
    pub(super) drain_rescanned: bool,
    /// `bytes_received` when a drain started (what the drain brought from this relay).
    pub(super) drain_bytes0: u64,
    /// The standby's next LSN when this relay last answered that it does not hold it
    /// (0: never). When every relay says so, a block sync may cover the hole
    /// (`crate::sync_skip`).
    pub(super) lacks: u64,
    /// `frames_received` at the last poll, and when it last changed (or the link was not
    /// read): see [`super::RELAY_SILENT_NS`].
    pub(super) rx_frames: u64,
    pub(super) heard_ns: u64,
}

impl Link {
    pub(super) fn role(&self) -> &'static str {
        if let Some((f, _)) = self.fwd {
            return match f {
                ForwardState::Backup => "backup",
                ForwardState::Forwarding | ForwardState::Holding => "forwarder",
            };
        }
        if self.forward_frames > 0 {
            "forwarder"
        } else if self.gap_replies > 0 {
            "backup"
        } else {
            "unknown"
        }
    }

    pub(super) fn forwarding(&self, now: u64) -> bool {
        self.forward_frames > 0 && now.saturating_sub(self.last_forward_ns) < STALL_NS
    }

    /// The relay's forward state, if it reported one within [`REPORT_FRESH_NS`].
    pub(super) fn fresh_fwd(&self, now: u64) -> Option<ForwardState> {
        self.fwd
            .filter(|&(_, at)| now.saturating_sub(at) < REPORT_FRESH_NS)
            .map(|(f, _)| f)
    }

    pub(super) fn status(&self, durable: u64, now: u64) -> LinkStatus {
        let st = self.conn.stats();
        LinkStatus {
            addr: self.peer.to_string(),
            connected: self.life.is_up(),
            role: self.role(),
            generation: self.generation,
            connected_seconds: now.saturating_sub(self.since_ns) as f64 / 1e9,
            frames_received: st.frames_received,
            bytes_received: st.bytes_received,
            forward_frames: self.forward_frames,
            gap_replies: self.gap_replies,
            gap_requests_sent: self.gap_requests_sent,
            ops_offered: self.ops_offered,
            lsn_offered_max: self.lsn_offered_max,
            lag_lsn: self.lsn_offered_max.saturating_sub(durable),
            safe_lsn_sent: self.safe_sent,
            held_ops: self.held.len(),
            forward_state: forward_state_name(self.fresh_fwd(now)),
            relay_held_lsn: self.held_lsn,
            last_error: self.life.last_error().to_string(),
        }
    }

    /// Queues the drain's fence order (once per drain); false when the send queue is full
    /// or closed.
    pub(super) fn fence(&mut self, generation: u64) -> bool {
        let f = Fence {
            generation,
            journal_lsn: 0,
            is_reply: false,
        };
        if self.conn.send(OutFrame::control(wire::encode_fence(&f), 0)).is_err() {
            return false;
        }
        self.fence_sent = true;
        true
    }

    /// The relay confirmed a fence at `generation` or newer.
    pub(super) fn fenced(&self, generation: u64) -> bool {
        self.fence_reply.is_some_and(|(g, _)| g >= generation)
    }

    /// Queues a GapRequest; false when the send queue is full or closed.
    pub(super) fn request(&mut self, id: u64, first: u64, last: u64, chain: bool, now: u64) -> bool {
        let g = GapRequest {
            request_id: id,
            lsn_first: first,
            lsn_last: last,
        };
        if self
            .conn
            .send(OutFrame::control(wire::encode_gap_request(&g), 0))
            .is_err()
        {
            return false;
        }
        self.gap_requests_sent += 1;
        self.pull = Some(Pull {
            id,
            sent_ns: now,
            chain,
            first,
            last,
        });
        true
    }
}

fn forward_state_name(f: Option<ForwardState>) -> &'static str {
    match f {
        None => "unknown",
        Some(ForwardState::Backup) => "backup",
        Some(ForwardState::Forwarding) => "forwarding",
        Some(ForwardState::Holding) => "holding",
    }
}

/// Why an offer refusal closes a link.
fn refusal_reason(o: Offer) -> Option<String> {
    match o {
        Offer::StaleGeneration { got, current } => Some(format!(
            "fenced: ops of generation {got}, the standby is at generation {current}"
        )),
        Offer::Closed => Some("the standby takes no more ops (failure declared, promoted or stopped)".into()),
        Offer::Accepted | Offer::Duplicate | Offer::Full => None,
    }
}

/// Offers `batch`; a back-pressure refusal keeps the rest (copied) in `held`.
fn offer(
    v: &mut StandbyVolume,
    batch: &Batch<'_>,
    held: &mut VecDeque<OwnedOp>,
    ops_offered: &mut u64,
    now: u64,
) -> Option<String> {
    let taken = if held.is_empty() {
        let (n, refusal) = v.offer_batch(batch, now);
        if let Some(o) = refusal {
            if let Some(why) = refusal_reason(o) {
                return Some(why);
            }
        }
        n
    } else {
        0
    };
    *ops_offered += taken as u64;
    for op in &batch.ops[taken..] {
        held.push_back(OwnedOp::from_wire(batch.generation, op));
    }
    None
}

/// What a link's receive produced besides offers.
enum Event {
    Echo(Heartbeat),
    Reply {
        id: u64,
        status: GapStatus,
        first: Option<u64>,
        last: Option<u64>,
    },
}

/// Receives and offers what one link sent. Returns whether anything happened.
pub(super) fn drive_link(name: &str, l: &mut Link, v: &mut StandbyVolume, now: u64) -> bool {
    // Back-pressure first: nothing more is read while ops wait.
    let Some(mut busy) = offer_held(l, v, now) else {
        return true;
    };
    if l.held.is_empty() {
        let mut events: Vec<Event> = Vec::new();
        busy |= receive(name, l, v, now, &mut events);
        for ev in events {
            on_event(l, v, ev, now);
        }
    }
    if let Err(e) = l.conn.poll_send(&mut |_| {}) {
        l.close.get_or_insert_with(|| e.to_string());
    }
    if l.conn.state() == ConnState::Failed {
        l.close.get_or_insert_with(|| "connection failed".into());
    }
    busy
}

/// Offers the ops held back while the volume was full. Returns whether any was taken, or
/// `None` when the volume refused one (the link closes).
fn offer_held(l: &mut Link, v: &mut StandbyVolume, now: u64) -> Option<bool> {
    let mut busy = false;
    while let Some(op) = l.held.pop_front() {
        match v.try_offer_owned(op, now) {
            Ok(_) => {
                l.ops_offered += 1;
                busy = true;
            }
            Err((Offer::Full, op)) => {
                l.held.push_front(op);
                break;
            }
            Err((o, _)) => {
                l.close = refusal_reason(o).or_else(|| Some(format!("refused: {o:?}")));
                return None;
            }
        }
    }
    Some(busy)
}

/// Reads the link's frames: ops are offered to the volume (those it cannot take yet are
/// held), control frames answered or noted; what needs the link afterwards goes to
/// `events`. Returns whether anything was read.
fn receive(name: &str, l: &mut Link, v: &mut StandbyVolume, now: u64, events: &mut Vec<Event>) -> bool {
    let Link {
        conn,
        peer,
        held,
        ops_offered,
        lsn_offered_max,
        forward_frames,
        gap_replies,
        last_forward_ns,
        close,
        fwd,
        held_lsn,
        fence_reply,
        ..
    } = l;
    let peer = *peer;
    let r = conn.poll_recv(&mut |f: Frame<'_>| {
        if close.is_some() {
            return;
        }
        match &f {
            Frame::Forward(b) => {
                *forward_frames += 1;
                *last_forward_ns = now;
                *lsn_offered_max = (*lsn_offered_max).max(b.lsn_last().unwrap_or(0));
                *close = offer(v, b, held, ops_offered, now);
            }
            Frame::GapReply(g) => {
                *gap_replies += 1;
                *lsn_offered_max = (*lsn_offered_max).max(g.batch.lsn_last().unwrap_or(0));
                *close = offer(v, &g.batch, held, ops_offered, now);
                events.push(Event::Reply {
                    id: g.request_id,
                    status: g.status,
                    first: g.batch.ops.first().map(|o| o.lsn()),
                    last: g.batch.lsn_last(),
                });
            }
            other => {
                on_other_frame(name, peer, other);
                match other {
                    Frame::Heartbeat(h) if !h.is_reply => events.push(Event::Echo(*h)),
                    Frame::Heartbeat(_) | Frame::Ack(_) => {}
                    Frame::Fence(f) if f.is_reply => {
                        *fence_reply = Some((f.generation, f.journal_lsn));
                        *held_lsn = (*held_lsn).max(f.journal_lsn);
                    }
                    // The relay says when it last heard the primary: the standby
                    // host's failure detector wants it (10 Hz per relay; a short
                    // uncontended lock, control frames only).
                    Frame::PrimaryLiveness(p) => {
                        *fwd = Some((p.forward, now));
                        *held_lsn = p.primary_lsn;
                        if let Some(h) = crate::host::global() {
                            h.relay_report(peer, name, p.primary_age_ms, p.connected);
                        }
                    }
                    _ => *close = Some(format!("unexpected {:?} frame from a relay", other.kind())),
                }
            }
        }
    });
    match r {
        Ok(n) => n > 0,
        Err(e) => {
            close.get_or_insert_with(|| e.to_string());
            false
        }
    }
}

/// Answers a heartbeat, or takes a gap reply: notes what the relay lacks and, in a drain,
/// asks for the next span.
fn on_event(l: &mut Link, v: &mut StandbyVolume, ev: Event, now: u64) {
    match ev {
        Event::Echo(h) => {
            if let Some(f) = heartbeat_echo(&h) {
                let _ = l.conn.send(f);
            }
        }
        Event::Reply {
            id,
            status,
            first,
            last,
        } => {
            let Some(p) = l.pull.take_if(|p| p.id == id) else {
                return;
            };
            let next = v.next_lsn();
            let asked = p.first <= next && next <= p.last;
            if asked && (status == GapStatus::NotHeld || first.is_some_and(|f| f > next)) {
                l.lacks = next;
            }
            if !p.chain {
                return;
            }
            let rescanned = l.drain_rescanned;
            let first = match pull::after_chain_reply(p.first, status, last, v.next_lsn(), rescanned) {
                pull::ReplyStep::Drained => {
                    l.drained = true;
                    return;
                }
                pull::ReplyStep::Rescan(first) => {
                    l.drain_rescanned = true;
                    first
                }
                pull::ReplyStep::Continue(first) => first,
            };
            l.request(id.wrapping_add(1 << 32), first, first + PULL_SPAN_LSN - 1, true, now);
        }
    }
}
