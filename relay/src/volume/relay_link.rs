//! One relay's connection, driven by the link reactor: connect, Hello and its reply (a
//! resync base when the relay lacks history), Ops frames out within the in-flight bounds,
//! Acks and heartbeats in, failure and reconnect (`docs/replication.md`, "The replicated
//! volume"; `docs/replication-wire.md`).

use super::*;

pub(super) struct Link {
    pub(super) addr: Endpoint,
    pub(super) conn: Option<AnyConnection<SegRef>>,
    /// Connect, Hello, up, reconnect (refused by the relay: retried after a longer pause).
    pub(super) life: Reconnect,
    /// The relay holds LSNs beyond this primary's: it needs a full resync, and the link is
    /// neither used nor redialled.
    pub(super) needs_resync: bool,
    /// Marked down (timeout).
    pub(super) down: bool,
    pub(super) removed: bool,
    pub(super) acked_lsn: u64,
    pub(super) sent_lsn: u64,
    /// (last LSN of a frame, its data bytes), oldest first: unacknowledged frames.
    pub(super) frames: VecDeque<(u64, u64)>,
    pub(super) bytes_in_flight: u64,
    /// Last time the relay was heard from (or the link came up / was created).
    pub(super) heard_ns: u64,
    /// Last heartbeat sent.
    pub(super) hb_sent_ns: u64,
    pub(super) frames_sent: u64,
    /// Readiness token of this link's socket.
    pub(super) token: u64,
    /// The socket is in the link reactor's readiness set.
    pub(super) watched: bool,
    /// Last `poll_recv`.
    pub(super) recv_ns: u64,
    /// See [`RelayStatus::late_reads`].
    pub(super) late_reads: u64,
    /// Resync in progress (`volume/resync.rs`).
    pub(super) resync: Option<resync::Resync>,
    pub(super) resyncs: u64,
    pub(super) resyncs_done: u64,
    /// The primary dropped ops this relay lacks (said once; cleared when a resync starts).
    pub(super) beyond_retention: bool,
    /// A resync base skipped LSNs from here on: the relay never confirms their writes, so
    /// the dirty-block record keeps them (until a block sync that covers them ended).
    pub(super) hole_from: Option<u64>,
}

impl Link {
    pub(super) fn new(addr: Endpoint, now: u64, token: u64) -> Self {
        Self {
            addr,
            token,
            watched: false,
            recv_ns: 0,
            late_reads: 0,
            resync: None,
            resyncs: 0,
            resyncs_done: 0,
            beyond_retention: false,
            hole_from: None,
            conn: None,
            life: Reconnect::new(RELAY_LINK_SCHEDULE, now),
            needs_resync: false,
            down: false,
            removed: false,
            acked_lsn: 0,
            sent_lsn: 0,
            frames: VecDeque::with_capacity(LINK_FRAMES_IN_FLIGHT_MAX),
            bytes_in_flight: 0,
            heard_ns: now,
            hb_sent_ns: now,
            frames_sent: 0,
        }
    }
    pub(super) fn phase_name(&self) -> &'static str {
        if self.needs_resync {
            "needs_resync"
        } else if self.life.is_up() && self.resync.is_some() {
            "resyncing"
        } else {
            self.life.state_name()
        }
    }
    /// Up and usable: the Hello accepted and the relay not beyond this primary.
    pub(super) fn is_up(&self) -> bool {
        self.life.is_up() && !self.needs_resync
    }
    pub(super) fn counts(&self, degraded: bool) -> bool {
        !self.removed && !(degraded && (self.down || self.needs_resync || self.resyncing()))
    }
}

/// What [`LinkState::receive`] found.
enum Received {
    NoConnection,
    /// The receive failed; the link is closed.
    Failed,
    Frames,
}

pub(super) enum RxEvent {
    Reply(HelloReply),
    Ack(u64, u64),
    Heartbeat(Heartbeat),
    Unexpected(u8),
}

impl LinkState {
    pub(super) fn link_failed(&mut self, i: usize, why: String, now: u64) {
        let l = &mut self.links[i];
        if l.watched {
            l.watched = false;
            if let (Some(r), Some(fd)) = (self.readiness.as_mut(), l.conn.as_ref().and_then(|c| c.raw_fd())) {
                r.remove(fd);
            }
        }
        if let Some(mut c) = l.conn.take() {
            c.close();
            let mut back: ArrayVec<u64, 1024> = ArrayVec::new();
            let _ = c.poll_send(&mut |d: SendDone| {
                for seg in &d.data {
                    let _ = back.try_push(seg.lsn);
                }
            });
            for lsn in back.drain(..) {
                self.drop_ref(lsn);
            }
        }
        let l = &mut self.links[i];
        // A refused link keeps its refusal (and its slower retry).
        if l.life.down(&why, now) {
            log::warn!("volume {}: relay {}: {why}", self.s.cfg.name, l.addr);
        }
        l.frames.clear();
        l.bytes_in_flight = 0;
        l.sent_lsn = l.acked_lsn;
    }

    /// Drives link `i`: connect, handshake, acks, heartbeats, sends. Returns "did work".
    pub(super) fn drive_link(&mut self, i: usize, now: u64) -> bool {
        let timeout = self.timeout_ns();
        if self.links[i].removed {
            if self.links[i].conn.is_some() {
                self.link_failed(i, String::new(), now);
            }
            return false;
        }
        self.detect_down(i, now, timeout);
        let mut busy = self.connect_if_due(i, now);
        let mut frames: ArrayVec<RxEvent, 64> = ArrayVec::new();
        match self.receive(i, now, &mut frames) {
            Received::NoConnection => return busy,
            Received::Failed => return true,
            Received::Frames => {}
        }
        for ev in frames.drain(..) {
            busy = true;
            if !self.on_event(i, ev, now) {
                return true;
            }
        }
        if self.links[i].life.is_refused() {
            self.link_failed(i, String::new(), now);
            return true;
        }
        if self.links[i].is_up() && self.next_lsn != 0 {
            busy |= self.pump(i);
            self.send_heartbeat_if_due(i, now, timeout);
        }
        busy | self.flush_link(i, now)
    }

    /// Down detection: silent for the timeout while something is expected of it.
    fn detect_down(&mut self, i: usize, now: u64, timeout: u64) {
        let l = &mut self.links[i];
        let silent = now.saturating_sub(l.heard_ns) >= timeout;
        if silent && !l.down && !l.is_up() {
            l.down = true;
            log::warn!(
                "volume {}: relay {} marked down ({})",
                self.s.cfg.name,
                l.addr,
                l.phase_name()
            );
        }
        if self.links[i].is_up() && now.saturating_sub(self.links[i].heard_ns) >= timeout {
            self.links[i].down = true;
            let why = format!("no answer for {} ms: marked down", self.s.cfg.relay_down_timeout_ms);
            self.link_failed(i, why, now);
        }
    }

    /// Connects and queues the Hello when a reconnect (or a retry after a refusal) is due.
    /// Returns whether it tried.
    fn connect_if_due(&mut self, i: usize, now: u64) -> bool {
        if self.superseded_by() != 0 {
            // Fenced for good: nothing to say to any relay any more.
            return false;
        }
        // Refusals (stale generation, unknown volume) are retried slowly; a relay beyond
        // this primary is not redialled.
        let l = &mut self.links[i];
        if l.needs_resync || !l.life.should_connect(now) {
            return false;
        }
        l.life.connecting();
        let addr = l.addr;
        match AnyConnection::connect_as(addr, rdma_transport::tls::Role::Relay) {
            Ok(mut c) => {
                let hello = Hello {
                    role: Role::Primary,
                    block_size: self.s.base.block_size(),
                    volume_id: self.s.volume_id,
                    volume_name: &self.s.cfg.name,
                    generation: self.s.cfg.generation,
                    resume_lsn: self.links[i].acked_lsn + 1,
                    frame_bytes_max: FRAME_BYTES_MAX as u32,
                    recv_credits: 0,
                };
                match wire::encode_hello(&hello) {
                    Ok(h) => {
                        let _ = c.send(OutFrame::control(h, 0));
                        let l = &mut self.links[i];
                        if let (Some(r), Some(fd)) = (self.readiness.as_mut(), c.raw_fd()) {
                            l.watched = r.add(fd, l.token).is_ok();
                        }
                        self.links[i].conn = Some(c);
                        self.links[i].life.hello_sent();
                    }
                    Err(e) => self.links[i].life.connect_failed(e, now),
                }
            }
            Err(e) => self.links[i].life.connect_failed(e, now),
        }
        true
    }

    /// Receives link `i`'s frames into `frames`: a watched socket only when it is readable
    /// (or bytes wait in the buffer), and every RECV_UNREADY_PERIOD_NS regardless.
    fn receive(&mut self, i: usize, now: u64, frames: &mut ArrayVec<RxEvent, 64>) -> Received {
        let l = &mut self.links[i];
        let up = l.is_up();
        let Some(conn) = l.conn.as_mut() else {
            return Received::NoConnection;
        };
        let expected = !l.watched || !up || self.ready.contains(&l.token) || conn.has_buffered();
        let read = expected || now.saturating_sub(l.recv_ns) >= RECV_UNREADY_PERIOD_NS;
        if read {
            l.recv_ns = now;
        }
        let r = if !read {
            Ok(0)
        } else {
            conn.poll_recv(&mut |f: Frame<'_>| {
                let ev = match f {
                    Frame::HelloReply(r) => RxEvent::Reply(r),
                    Frame::Ack(a) => RxEvent::Ack(a.durable_lsn, a.generation),
                    Frame::Heartbeat(h) => RxEvent::Heartbeat(h),
                    other => RxEvent::Unexpected(other.kind() as u8),
                };
                let _ = frames.try_push(ev);
            })
        };
        if !expected && !frames.is_empty() {
            self.links[i].late_reads += 1;
        }
        if let Err(e) = r {
            self.link_failed(i, format!("receive: {e}"), now);
            return Received::Failed;
        }
        Received::Frames
    }

    /// Handles one frame from link `i`'s relay. Returns false when the link failed (or a
    /// resync could not start): nothing more is done with it this round.
    fn on_event(&mut self, i: usize, ev: RxEvent, now: u64) -> bool {
        let l = &mut self.links[i];
        // A relay that refuses this volume holds none of its writes: not an answer for down
        // detection, so the volume's policy applies once the timeout passes.
        if !matches!(ev, RxEvent::Reply(HelloReply::Refused { .. })) {
            l.heard_ns = now;
            if l.down {
                log::info!("volume {}: relay {} answers again", self.s.cfg.name, l.addr);
                l.down = false;
            }
        }
        match ev {
            RxEvent::Reply(HelloReply::Accepted { resume_lsn, .. }) => {
                if let Some((base, why)) = self.on_accepted(i, resume_lsn) {
                    return self.start_resync(i, base, &why, now);
                }
            }
            RxEvent::Reply(HelloReply::Refused { reason, generation, .. }) => {
                l.life
                    .refused(format_args!("refused: {reason:?} (relay generation {generation})"), now);
                log::error!("volume {}: relay {}: {}", self.s.cfg.name, l.addr, l.life.last_error());
                if reason == RefuseReason::StaleGeneration {
                    let addr = l.addr;
                    self.note_generation(generation, addr);
                }
            }
            RxEvent::Ack(_, generation) if generation > self.s.cfg.generation => {
                // A relay that learnt of a promotion: its Acks no longer count.
                let addr = l.addr;
                self.note_generation(generation, addr);
            }
            RxEvent::Ack(durable, _gen) => {
                if durable > l.acked_lsn {
                    l.acked_lsn = durable;
                    let mut acked_bytes = 0u64;
                    while let Some(&(last, bytes)) = l.frames.front() {
                        if last > durable {
                            break;
                        }
                        l.bytes_in_flight -= bytes;
                        acked_bytes += bytes;
                        l.frames.pop_front();
                    }
                    l.resync_acked(acked_bytes, &self.s.cfg.name);
                }
            }
            RxEvent::Heartbeat(h) => {
                if let (Some(c), Some(f)) = (l.conn.as_mut(), heartbeat_echo(&h)) {
                    let _ = c.send(f);
                }
            }
            RxEvent::Unexpected(k) => {
                let why = format!("unexpected frame kind {k} from relay");
                self.link_failed(i, why, now);
                return false;
            }
        }
        true
    }

    /// The relay accepted the Hello and holds LSNs below `resume_lsn`: the link is up.
    /// Returns the resync base and why when it cannot be caught up from what the primary
    /// still holds (its history then restarts at the oldest LSN the primary holds).
    fn on_accepted(&mut self, i: usize, resume_lsn: u64) -> Option<(u64, String)> {
        let l = &mut self.links[i];
        let have = resume_lsn.saturating_sub(1);
        // What the relay holds now: less than it acknowledged before if its
        // journal lost a tail (recovery cut it), which then needs a resync.
        l.acked_lsn = have;
        l.beyond_retention = false;
        l.sent_lsn = l.acked_lsn;
        l.life.up();
        let oldest = self.oldest_held();
        let l = &mut self.links[i];
        if self.next_lsn != 0 && have + 1 < oldest && have < self.completed_lsn {
            return Some((
                oldest,
                format!("relay holds up to LSN {have}; the primary holds LSNs from {oldest} on only"),
            ));
        }
        if self.next_lsn != 0 && have >= self.next_lsn {
            l.needs_resync = true;
            l.life.set_error(format_args!(
                "relay holds LSN {have}, beyond this primary's {}",
                self.next_lsn - 1
            ));
            log::error!("volume {}: relay {}: {}", self.s.cfg.name, l.addr, l.life.last_error());
        } else {
            log::info!(
                "volume {}: relay {} up, resumes at LSN {resume_lsn}",
                self.s.cfg.name,
                l.addr
            );
        }
        None
    }

    /// A heartbeat every quarter of the down timeout while the link is up.
    fn send_heartbeat_if_due(&mut self, i: usize, now: u64, timeout: u64) {
        let l = &mut self.links[i];
        if now.saturating_sub(l.hb_sent_ns) >= timeout / 4 {
            l.hb_sent_ns = now;
            if let Some(c) = l.conn.as_mut() {
                let _ = c.send(OutFrame::control(
                    wire::encode_heartbeat(&Heartbeat {
                        nonce: now,
                        time_ns: now,
                        is_reply: false,
                    }),
                    0,
                ));
            }
        }
    }

    /// Pushes link `i`'s queued bytes to its socket and takes back the references of
    /// frames the transport is done with. Returns whether anything happened.
    pub(super) fn flush_link(&mut self, i: usize, now: u64) -> bool {
        let mut back: ArrayVec<u64, 1024> = ArrayVec::new();
        let r = match self.links[i].conn.as_mut() {
            Some(c) => c.poll_send(&mut |d: SendDone| {
                for seg in &d.data {
                    let _ = back.try_push(seg.lsn);
                }
            }),
            None => Ok(0),
        };
        let busy = !back.is_empty();
        for lsn in back.drain(..) {
            self.drop_ref(lsn);
        }
        if let Err(e) = r {
            self.link_failed(i, format!("send: {e}"), now);
            return true;
        }
        if self.links[i]
            .conn
            .as_ref()
            .is_some_and(|c| c.state() == ConnState::Failed)
        {
            self.link_failed(i, "connection failed".into(), now);
        }
        busy
    }

    /// Sends link `i` every op after its `sent_lsn` that is available, up to its flow
    /// control bound, in frames of up to `OPS_PER_FRAME_MAX` ops.
    pub(super) fn pump(&mut self, i: usize) -> bool {
        let gen = self.s.cfg.generation;
        let bs = self.s.base.block_size();
        let cap = self.s.cfg.relay_bytes_in_flight_max;
        let mut sent = false;
        loop {
            let l = &self.links[i];
            let Some(c) = l.conn.as_ref() else { break };
            if c.send_capacity() == 0 || l.bytes_in_flight >= cap || l.frames.len() >= LINK_FRAMES_IN_FLIGHT_MAX {
                break;
            }
            let mut lsn = l.sent_lsn + 1;
            if lsn >= self.next_lsn {
                break;
            }
            let mut enc = BatchEncoder::ops(gen, bs);
            let mut segs: ArrayVec<SegRef, OPS_PER_FRAME_MAX> = ArrayVec::new();
            let mut crcs: ArrayVec<u32, OPS_PER_FRAME_MAX> = ArrayVec::new();
            let mut bytes = 0usize;
            while enc.len() < OPS_PER_FRAME_MAX && lsn < self.next_lsn {
                let Some(op) = self.peek(lsn) else { break };
                let len = bytes + op.data.len();
                if len > FRAME_DATA_BYTES_MAX || (bytes > 0 && len > FRAME_BYTES_TARGET) {
                    break;
                }
                let Some(op) = self.take_ref(lsn) else { break };
                let r = match op.kind {
                    OpKind::Write => enc.write(lsn, op.arg0, op.arg1 as u32, op.data.len()),
                    OpKind::WriteZeroes => enc.write_zeroes(lsn, op.arg0, op.arg1 as u32),
                    OpKind::Deallocate => enc.deallocate(lsn, op.arg0, op.arg1 as u32),
                    OpKind::RestartPoint => enc.restart_point(lsn, op.arg0, op.arg1, op.data.len()),
                    OpKind::Sync => enc.sync_args(lsn, op.arg0, op.arg1),
                };
                if let Err(e) = r {
                    // A bug: the op was checked when it was made.
                    self.drop_ref(lsn);
                    log::error!("volume {}: cannot encode LSN {lsn}: {e}", self.s.cfg.name);
                    break;
                }
                bytes += op.data.len();
                // Every op gets a segment (possibly empty) so its reference comes back.
                segs.push(SegRef { data: op.data, lsn });
                crcs.push(op.crc);
                lsn += 1;
            }
            if enc.is_empty() {
                // The next LSN is neither in flight nor retained: the relay cannot be
                // caught up by this primary.
                let l = &mut self.links[i];
                if l.is_up() && l.sent_lsn + 1 < self.next_lsn {
                    let why = format!("LSN {} no longer held by the primary", l.sent_lsn + 1);
                    l.lost_history(why, &self.s.cfg.name);
                }
                break;
            }
            let slices: ArrayVec<&[u8], OPS_PER_FRAME_MAX> = segs.iter().map(|s| &*s.data).collect();
            let hdr = match enc.finish_with_crcs(&slices, &crcs) {
                Ok(h) => h,
                Err(e) => {
                    log::error!("volume {}: cannot seal frame: {e}", self.s.cfg.name);
                    for s in &segs {
                        self.drop_ref(s.lsn);
                    }
                    break;
                }
            };
            drop(slices);
            let last = lsn - 1;
            let mut data = rdma_transport::Segs::new();
            for s in segs.drain(..) {
                data.push(s);
            }
            let l = &mut self.links[i];
            let Some(c) = l.conn.as_mut() else { break };
            match c.send(OutFrame {
                header: hdr,
                data,
                user_data: last,
            }) {
                Ok(()) => {
                    l.sent_lsn = last;
                    l.frames.push_back((last, bytes as u64));
                    l.bytes_in_flight += bytes as u64;
                    l.frames_sent += 1;
                    sent = true;
                }
                Err(e) => {
                    let f = e.into_frame();
                    let lsns: ArrayVec<u64, OPS_PER_FRAME_MAX> = f.data.iter().map(|s| s.lsn).collect();
                    for lsn in lsns {
                        self.drop_ref(lsn);
                    }
                    break;
                }
            }
        }
        sent
    }
}
