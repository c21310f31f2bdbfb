//! The link reactor: the one reactor that owns every relay connection of a volume. It
//! numbers ops, sends them to every relay, reads their Acks, completes ops under the
//! acknowledgement policy, retains what a relay lacks, and drives resyncs, block syncs and
//! the switchover fence (`docs/replication.md`, "The replicated volume").

use super::*;

/// How often an idle link reactor wakes even if no relay socket does: reconnect
/// back-offs, relay-down time-outs, the sync's rate and the status are its timers, and
/// control calls (`ctl`) arrive through a ring without a wake-up (`docs/architecture.md`,
/// "Idle reactors").
pub(super) const IDLE_TICK_NS: u64 = 10_000_000;

/// Who is told when an op completes.
pub(super) enum Owner {
    Chan {
        chan: Arc<ChanShared>,
        slot: u32,
    },
    Restart {
        done: Option<RestartDone>,
        point: RestartPoint,
        _tag: Vec<u8>,
    },
    /// A block sync's Begin or End marker.
    SyncMark {
        end: bool,
    },
    /// A block sync's write: owns the data it read.
    SyncWrite {
        _buf: DmaBuf,
    },
}

/// An op with an LSN. `arg0`/`arg1` as on the wire (offset/blocks, or epoch/last LSN).
#[derive(Clone, Copy)]
pub(super) struct OpMeta {
    pub(super) lsn: u64,
    pub(super) kind: OpKind,
    pub(super) arg0: u64,
    pub(super) arg1: u64,
    pub(super) data: DataRef,
    /// CRC32C of `data`, computed once when the op gets its LSN: every relay's frame is
    /// sealed from it (`BatchEncoder::finish_with_crcs`) instead of each reading the data.
    pub(super) crc: u32,
}

pub(super) struct InFlight {
    pub(super) op: OpMeta,
    pub(super) owner: Owner,
    /// Data references held by connections.
    pub(super) refs: u32,
    /// Dirty-record mark the op waits to see persisted before it completes (0: none).
    pub(super) dirty_mark: u64,
}

pub(super) struct LinkState {
    pub(super) s: Arc<Shared>,
    pub(super) poller: Option<reactor::PollerId>,
    pub(super) links: Vec<Link>,
    pub(super) inflight: VecDeque<InFlight>,
    pub(super) retention: Retention,
    /// Next LSN to assign; 0 until the first handshakes said where to resume.
    pub(super) next_lsn: u64,
    pub(super) completed_lsn: u64,
    pub(super) epoch: u64,
    pub(super) created_ns: u64,
    pub(super) status_ns: u64,
    /// Restart points waiting for an LSN (before `next_lsn` is known).
    pub(super) pending_ctl: VecDeque<Ctl>,
    pub(super) stopped: bool,
    /// Which links' sockets are readable (None: epoll unavailable, every link is read on
    /// every poll).
    pub(super) readiness: Option<Readiness>,
    /// Tokens found readable by this poll.
    pub(super) ready: ArrayVec<u64, READY_EVENTS_MAX>,
    pub(super) next_token: u64,
    /// The dirty-block record (`volume/dirty.rs`).
    pub(super) dirty: dirty::DirtyMap,
    /// The current or last block sync (`volume/sync.rs`).
    pub(super) sync: Option<sync::BlockSync>,
    /// The switchover fence (`volume/demote.rs`).
    pub(super) fence: demote::Fence,
    /// The last restart point numbered (since this process started).
    pub(super) last_rp: Option<RestartPoint>,
}

/// A completion of a send on link `i`: which op references come back.
pub(super) type SendDone = SendCompletion<SegRef>;

impl LinkState {
    pub(super) fn new(s: Arc<Shared>, dirty: dirty::DirtyMap) -> Self {
        let now = now_ns();
        let links: Vec<Link> = s
            .cfg
            .relays
            .iter()
            .enumerate()
            .map(|(k, &a)| Link::new(a, now, k as u64))
            .collect();
        let next_token = links.len() as u64;
        let readiness = Readiness::new()
            .map_err(|e| {
                log::warn!(
                    "volume {}: no epoll ({e}): every link is read on every poll",
                    s.cfg.name
                )
            })
            .ok();
        let retention = Retention::new(s.cfg.retain_bytes_max as usize);
        Self {
            s,
            poller: None,
            links,
            inflight: VecDeque::with_capacity(INFLIGHT_OPS_MAX),
            retention,
            next_lsn: 0,
            completed_lsn: 0,
            epoch: 0,
            created_ns: now,
            status_ns: 0,
            pending_ctl: VecDeque::new(),
            stopped: false,
            readiness,
            ready: ArrayVec::new(),
            next_token,
            dirty,
            sync: None,
            fence: demote::Fence::None,
            last_rp: None,
        }
    }

    pub(super) fn timeout_ns(&self) -> u64 {
        self.s.cfg.relay_down_timeout_ms * 1_000_000
    }

    pub(super) fn degraded(&self) -> bool {
        self.s.cfg.on_relay_down == OnRelayDown::Degraded
    }

    /// Puts in `out` every relay socket the link reactor waits on while idle; returns
    /// (every one could be watched, a link has whole frames buffered already).
    pub(super) fn wait_list(&self, out: &mut Vec<(std::os::fd::RawFd, engine::reactor::Interest)>) -> (bool, bool) {
        out.clear();
        let mut all = true;
        let mut buffered = false;
        for c in self.links.iter().filter_map(|l| l.conn.as_ref()) {
            match c.wait_interest() {
                Some(w) => out.push(w),
                None => all &= !c.is_rdma(),
            }
            buffered |= c.has_buffered();
        }
        (all, buffered)
    }

    pub(super) fn poll(&mut self) -> PollStatus {
        if self.stopped {
            return PollStatus::Idle;
        }
        let now = now_ns();
        let mut busy = false;
        while let Some(c) = self.s.ctl.pop() {
            busy = true;
            self.pending_ctl.push_back(c);
        }
        self.run_ctl();
        if self.stopped {
            return PollStatus::Busy;
        }
        if self.next_lsn == 0 {
            self.try_start(now);
        }
        let mut took_new = false;
        if self.superseded_by() != 0 {
            busy |= self.supersede(now);
        } else if self.fence.fenced() {
            self.fail_fenced_submits();
        } else if self.next_lsn != 0 {
            let mut n = 0;
            while n < SUBMITS_PER_POLL_MAX && self.inflight.len() < INFLIGHT_OPS_MAX {
                let Some(sub) = self.s.subq.pop() else { break };
                n += 1;
                let lsn = self.next_lsn;
                self.next_lsn += 1;
                let crc = crc32c::crc32c(&sub.data);
                let dirty_mark = self.dirty.mark(sub.offset_blocks, sub.num_blocks.into());
                if let Some(s) = self.sync.as_mut() {
                    s.on_write(sub.offset_blocks, sub.num_blocks.into());
                }
                self.inflight.push_back(InFlight {
                    dirty_mark,
                    op: OpMeta {
                        lsn,
                        kind: sub.kind,
                        arg0: sub.offset_blocks,
                        arg1: sub.num_blocks.into(),
                        data: sub.data,
                        crc,
                    },
                    owner: Owner::Chan {
                        chan: sub.chan,
                        slot: sub.slot,
                    },
                    refs: 0,
                });
            }
            took_new = n > 0;
            took_new |= self.drive_sync(now);
            took_new |= self.try_fence();
            busy |= took_new;
        }
        if took_new {
            // New ops go out before the readiness check: at QD 1 the write the last Ack
            // released is on the wire one epoll_wait sooner.
            for i in 0..self.links.len() {
                if self.links[i].is_up() && self.pump(i) {
                    self.flush_link(i, now);
                }
            }
        }
        self.ready.clear();
        if let Some(r) = self.readiness.as_mut() {
            if let Err(e) = r.poll(&mut self.ready) {
                log::warn!(
                    "volume {}: epoll_wait: {e}; reading every link on every poll",
                    self.s.cfg.name
                );
                self.readiness = None;
                for l in &mut self.links {
                    l.watched = false;
                }
            }
        }
        for i in 0..self.links.len() {
            busy |= self.drive_link(i, now);
        }
        // A relay named a newer generation just now: nothing in flight may complete.
        busy |= self.supersede(now);
        busy |= self.retire();
        self.links.retain(|l| !(l.removed && l.conn.is_none()));
        self.update_blocked();
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

    /// Sets the first LSN once every relay answered its first Hello or the down timeout
    /// passed: a primary that restarts resumes after the highest LSN any relay holds.
    pub(super) fn try_start(&mut self, now: u64) {
        let answered = self.links.iter().all(|l| l.is_up() || l.life.is_refused());
        if answered || now.saturating_sub(self.created_ns) >= self.timeout_ns() {
            let resume = self.links.iter().map(|l| l.acked_lsn).max().unwrap_or(0);
            self.next_lsn = resume + 1;
            self.completed_lsn = resume;
            self.dirty.begin(self.next_lsn);
            let rate = self.s.cfg.initial_sync_bytes_per_sec;
            if self.resume_sync(rate) {
                // A sync cut short by a restart goes on where it was (`volume/sync.rs`).
                self.drive_sync(now);
            } else if self.s.cfg.initial_sync {
                let delta = self.s.cfg.initial_sync_delta.clone();
                let (full, why) = match &delta {
                    Some(_) => (false, "failback: the blocks that differ from the other site"),
                    None => (true, "initial sync of the base bdev's data"),
                };
                match self.start_sync_with(full, true, rate, why.into(), delta) {
                    // Its marker takes the first LSN, ahead of any write waiting to be
                    // numbered: no restart point precedes it.
                    Ok(()) => {
                        self.drive_sync(now);
                    }
                    Err(e) => log::error!("volume {}: cannot start the initial sync: {e}", self.s.cfg.name),
                }
            }
            for i in 0..self.links.len() {
                let l = &mut self.links[i];
                l.sent_lsn = l.sent_lsn.max(resume);
                if l.is_up() && l.acked_lsn < resume {
                    // This relay missed LSNs an earlier incarnation sent to others.
                    let why = format!("relay holds up to LSN {} but others hold up to {resume}", l.acked_lsn);
                    self.start_resync(i, resume + 1, &why, now);
                }
            }
            log::info!("volume {}: LSNs resume at {}", self.s.cfg.name, self.next_lsn);
        }
    }

    pub(super) fn run_ctl(&mut self) {
        let mut keep = VecDeque::new();
        while let Some(c) = self.pending_ctl.pop_front() {
            let newer = self.superseded_by();
            match c {
                Ctl::RestartPoint { done, .. } | Ctl::Demote { done, .. } if newer != 0 => {
                    done(Err(VolumeError::superseded(&self.s.cfg.name, newer)));
                }
                Ctl::Sync { done, .. } if newer != 0 => {
                    done(Err(VolumeError::superseded(&self.s.cfg.name, newer).to_string()));
                }
                Ctl::RestartPoint { done, .. } if self.fence.active() => {
                    done(Err(VolumeError::Demoted(self.s.cfg.name.clone())));
                }
                Ctl::RestartPoint { tag, done } => {
                    if let Err((tag, done)) = self.issue_restart_point(tag, done) {
                        keep.push_back(Ctl::RestartPoint { tag, done });
                    }
                }
                Ctl::Demote { tag, done } => {
                    if let Err((tag, done)) = self.start_demote(tag, done) {
                        keep.push_back(Ctl::Demote { tag, done });
                    }
                }
                Ctl::Resume(done) => done(self.resume_writes()),
                Ctl::Sync { done, .. } if self.fence.active() => {
                    done(Err(format!("volume {} is demoted", self.s.cfg.name)));
                }
                Ctl::Sync {
                    full,
                    bytes_per_sec,
                    done,
                } => {
                    let r = self.start_block_sync(full, bytes_per_sec, "requested".into());
                    done(r);
                }
                Ctl::AddRelay(addr) => {
                    let mut l = Link::new(addr, now_ns(), self.next_token);
                    self.next_token += 1;
                    // A new relay starts at the oldest LSN the primary can still send it;
                    // its Hello reply says what it already has.
                    l.sent_lsn = self.completed_lsn;
                    l.acked_lsn = 0;
                    self.links.push(l);
                }
                Ctl::RemoveRelay(addr) => {
                    for l in self.links.iter_mut().filter(|l| l.addr == addr) {
                        l.removed = true;
                        if let Some(c) = l.conn.as_mut() {
                            c.close();
                        }
                    }
                }
                Ctl::Stop(done) => {
                    self.persist_sync_at_stop();
                    self.stop();
                    done();
                    return;
                }
            }
        }
        self.pending_ctl = keep;
    }

    /// Numbers a restart point now, or hands it back when it must wait (no LSN known yet,
    /// in-flight table full).
    pub(super) fn issue_restart_point(
        &mut self,
        tag: Vec<u8>,
        done: RestartDone,
    ) -> Result<(), (Vec<u8>, RestartDone)> {
        if self.next_lsn == 0 || self.inflight.len() >= INFLIGHT_OPS_MAX {
            return Err((tag, done));
        }
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        self.epoch += 1;
        let point = RestartPoint {
            epoch: self.epoch,
            lsn,
            last_lsn: lsn - 1,
        };
        self.last_rp = Some(point);
        // SAFETY: the tag's heap bytes live in `Owner::Restart::_tag` until the
        // entry is retired, which waits for `refs == 0`; moving a Vec does not
        // move its heap bytes.
        let data = unsafe { DataRef::new(&tag) };
        self.inflight.push_back(InFlight {
            op: OpMeta {
                lsn,
                kind: OpKind::RestartPoint,
                arg0: point.epoch,
                arg1: point.last_lsn,
                crc: crc32c::crc32c(&data),
                data,
            },
            owner: Owner::Restart {
                done: Some(done),
                point,
                _tag: tag,
            },
            refs: 0,
            dirty_mark: 0,
        });
        Ok(())
    }

    pub(super) fn stop(&mut self) {
        self.stopped = true;
        for l in &mut self.links {
            if let Some(c) = l.conn.as_mut() {
                c.close();
                // Hand back every queued frame's references.
                let _ = c.poll_send(&mut |_| {});
            }
            l.conn = None;
        }
        let name = self.s.cfg.name.clone();
        while let Some(e) = self.inflight.pop_front() {
            complete(e.owner, Err(VolumeError::Deleted(name.clone())));
        }
        // Channels may still submit: fail those submits too.
        while let Some(sub) = self.s.subq.pop() {
            let _ = sub
                .chan
                .done
                .push((sub.slot, Err(BdevError::Io(format!("volume {name} deleted")))));
        }
        if let Some(id) = self.poller.take() {
            reactor::unregister_poller(id);
        }
        self.publish();
    }

    /// Finds an op with `lsn` in the in-flight table or the retention ring, taking a
    /// reference for a connection.
    pub(super) fn take_ref(&mut self, lsn: u64) -> Option<OpMeta> {
        if let Some(first) = self.inflight.front().map(|e| e.op.lsn) {
            if lsn >= first {
                let e = self.inflight.get_mut((lsn - first) as usize)?;
                e.refs += 1;
                return Some(e.op);
            }
        }
        let r = self.retention.get_mut(lsn)?;
        r.refs += 1;
        Some(r.op)
    }

    pub(super) fn drop_ref(&mut self, lsn: u64) {
        if let Some(first) = self.inflight.front().map(|e| e.op.lsn) {
            if lsn >= first {
                if let Some(e) = self.inflight.get_mut((lsn - first) as usize) {
                    e.refs -= 1;
                }
                return;
            }
        }
        if let Some(r) = self.retention.get_mut(lsn) {
            r.refs -= 1;
        }
    }

    pub(super) fn peek(&self, lsn: u64) -> Option<OpMeta> {
        if let Some(first) = self.inflight.front().map(|e| e.op.lsn) {
            if lsn >= first {
                return self.inflight.get((lsn - first) as usize).map(|e| e.op);
            }
        }
        let first = self.retention.first_lsn()?;
        self.retention
            .entries
            .get(lsn.checked_sub(first)? as usize)
            .map(|e| e.op)
    }

    /// (acks needed, relays that count) for the policy, or None when it cannot be met.
    pub(super) fn policy_met(&self, lsn: u64) -> bool {
        // Called on every poll while an op waits: counts in place (no collected Vec).
        let degraded = self.degraded();
        let (mut counting, mut acks) = (0, 0);
        for l in self.links.iter().filter(|l| l.counts(degraded)) {
            counting += 1;
            acks += usize::from(l.acked_lsn >= lsn);
        }
        acks >= self.needed(counting)
    }

    pub(super) fn needed(&self, counting: usize) -> usize {
        let degraded = self.degraded();
        let want = match self.s.cfg.ack_policy {
            AckPolicy::All => counting,
            AckPolicy::Quorum(k) => k as usize,
            AckPolicy::Any => 1.min(counting.max(usize::from(!degraded))),
        };
        if degraded {
            want.min(counting)
        } else {
            want
        }
    }

    /// Completes ops at the front that meet the policy and that no connection references,
    /// copying into the retention ring the ones some relay still lacks.
    pub(super) fn retire(&mut self) -> bool {
        let mut n = 0;
        while let Some(front) = self.inflight.front() {
            if front.refs > 0 || front.dirty_mark > self.dirty.flushed() || !self.policy_met(front.op.lsn) {
                break;
            }
            let lsn = front.op.lsn;
            let lacking = self
                .links
                .iter()
                .any(|l| !l.removed && !l.needs_resync && l.acked_lsn < lsn);
            if lacking {
                let op = front.op;
                let (ok, dropped) = self.retention.push(&op);
                if dropped != 0 || !ok {
                    let upto = if ok { dropped } else { lsn };
                    for l in &mut self.links {
                        if !l.removed && !l.needs_resync && l.acked_lsn < upto {
                            let why = format!(
                                "retention ring ({} bytes) overflowed: LSN {upto} dropped before the relay had it",
                                self.s.cfg.retain_bytes_max
                            );
                            l.lost_history(why, &self.s.cfg.name);
                        }
                    }
                }
            }
            let Some(e) = self.inflight.pop_front() else { break };
            self.completed_lsn = lsn;
            match e.owner {
                Owner::SyncWrite { .. } => {
                    if let Some(s) = self.sync.as_mut() {
                        s.retired();
                    }
                }
                Owner::SyncMark { end: true } => self.sync_ended(lsn),
                _ => {}
            }
            complete(e.owner, Ok(()));
            n += 1;
        }
        // Retained ops every relay now has are no longer needed.
        let min_acked = self
            .links
            .iter()
            .filter(|l| !l.removed && !l.needs_resync)
            .map(|l| l.acked_lsn)
            .min()
            .unwrap_or(u64::MAX);
        self.retention.trim(min_acked.min(self.completed_lsn));
        // Writes every relay confirmed (a skipped hole never is) leave the dirty record.
        let confirmed = self
            .links
            .iter()
            .filter(|l| !l.removed)
            .map(|l| {
                l.hole_from
                    .map_or(l.acked_lsn, |h| h.saturating_sub(1).min(l.acked_lsn))
            })
            .min()
            .unwrap_or(self.completed_lsn)
            .min(self.completed_lsn);
        self.dirty.rotate(confirmed, self.next_lsn, now_ns());
        n > 0
    }

    pub(super) fn update_blocked(&self) {
        let blocked = if self.degraded() {
            false
        } else {
            let live = self
                .links
                .iter()
                .filter(|l| !l.removed && !l.down && !l.needs_resync)
                .count();
            let counting = self.links.iter().filter(|l| !l.removed).count();
            live < self.needed(counting)
        };
        if self.s.writes_blocked.swap(blocked, Ordering::AcqRel) != blocked {
            if blocked {
                log::error!(
                    "volume {}: acknowledgement policy cannot be met: new writes fail",
                    self.s.cfg.name
                );
            } else {
                log::info!("volume {}: acknowledgement policy can be met again", self.s.cfg.name);
            }
        }
    }

    pub(super) fn publish(&self) {
        let cfg = &self.s.cfg;
        let st = VolumeStatus {
            name: cfg.name.clone(),
            base_bdev: self.s.base.name().to_string(),
            ack_policy: cfg.ack_policy.name().to_string(),
            quorum_k: match cfg.ack_policy {
                AckPolicy::Quorum(k) => k,
                _ => 0,
            },
            on_relay_down: match cfg.on_relay_down {
                OnRelayDown::Block => "block",
                OnRelayDown::Degraded => "degraded",
            }
            .to_string(),
            relay_down_timeout_ms: cfg.relay_down_timeout_ms,
            generation: cfg.generation,
            next_lsn: self.next_lsn,
            completed_lsn: self.completed_lsn,
            inflight_ops: self.inflight.len(),
            retained_ops: self.retention.entries.len(),
            retained_bytes: self.retention.used,
            writes_blocked: self.s.writes_blocked.load(Ordering::Acquire),
            epoch: self.epoch,
            // Read by `ReplicatedVolume::status` off the reactor (its error string is
            // behind a lock the reactor never takes).
            dirty: DirtyStatus::default(),
            sync: self.sync.as_ref().map(|s| s.status()),
            demoted: self.s.demoted.load(Ordering::Acquire),
            superseded_by: self.superseded_by(),
            fence_lsn: self.fence.lsn(),
            relays: self
                .links
                .iter()
                .filter(|l| !l.removed)
                .map(|l| (l, l.conn.as_ref().map(|c| c.stats()).unwrap_or_default()))
                .map(|(l, cs)| RelayStatus {
                    addr: l.addr.to_string(),
                    state: l.phase_name().to_string(),
                    connected: l.is_up(),
                    down: l.down,
                    acked_lsn: l.acked_lsn,
                    sent_lsn: l.sent_lsn,
                    bytes_in_flight: l.bytes_in_flight,
                    lag_lsn: self.next_lsn.saturating_sub(1).saturating_sub(l.acked_lsn),
                    frames_sent: l.frames_sent,
                    payload_bytes_copied: cs.payload_bytes_copied,
                    payload_bytes_zero_copy: cs.payload_bytes_zero_copy,
                    late_reads: l.late_reads,
                    last_error: l.life.last_error().to_string(),
                    link: LinkCounters::from(&l.life),
                    resync: l.resync.map(|r| r.status(l.acked_lsn)),
                    resyncs: l.resyncs,
                    resyncs_done: l.resyncs_done,
                })
                .collect(),
        };
        // Never block the reactor: a reader holding the lock only delays the snapshot.
        if let Ok(mut s) = self.s.status.try_lock() {
            *s = st;
        }
        self.s.published_ns.store(now_ns().max(1), Ordering::Release);
    }
}

pub(super) fn complete(owner: Owner, r: Result<(), VolumeError>) {
    match owner {
        Owner::Chan { chan, slot } => {
            let r = r.map_err(|e| BdevError::Io(e.to_string()));
            // Sized to the channel's slot count: cannot be full.
            let _ = chan.done.push((slot, r));
        }
        Owner::Restart { done, point, .. } => {
            if let Some(d) = done {
                d(r.map(|()| point));
            }
        }
        Owner::SyncMark { .. } | Owner::SyncWrite { .. } => {}
    }
}
