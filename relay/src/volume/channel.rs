//! The volume's channel, one per reactor that submits I/O: reads and flushes pass through
//! to the local bdev; a write starts its local write, publishes the blocks it is writing
//! (for a block sync, `volume/sync.rs`) and goes to the link reactor through the
//! submission ring; it completes when both the local write and the relays are done.

use super::*;

/// Where one request of a channel stands.
#[derive(Default)]
pub(super) enum SlotState {
    /// Unused.
    #[default]
    Free,
    /// Read or flush passed through to the local bdev.
    Passthrough { user_data: u64 },
    /// Replicated op: local write and relay acknowledgement both pending or one done.
    Replicating {
        user_data: u64,
        local: Option<Result<(), BdevError>>,
        relays: Option<Result<(), BdevError>>,
        buf: Option<DmaBuf>,
    },
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) state: SlotState,
}

pub(super) struct VolChannel {
    pub(super) shared: Arc<Shared>,
    pub(super) me: Arc<ChanShared>,
    pub(super) base: BdevChannel,
    pub(super) slots: Vec<Slot>,
    pub(super) free: Vec<u32>,
    pub(super) ready: VecDeque<IoCompletion>,
    /// Submits the ring refused (full): pushed again at the next poll, in order.
    pub(super) unpushed: VecDeque<Submit>,
    /// Local writes waiting for their write-intent mark to be persisted: (mark, request).
    pub(super) parked: VecDeque<(u64, IoRequest)>,
}

impl VolChannel {
    pub(super) fn try_finish(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        let SlotState::Replicating {
            local: Some(_),
            relays: Some(_),
            ..
        } = s.state
        else {
            return;
        };
        if let SlotState::Replicating {
            user_data,
            local: Some(local),
            relays: Some(relays),
            buf,
        } = std::mem::take(&mut s.state)
        {
            self.ready.push_back(IoCompletion {
                user_data,
                result: local.and(relays),
                buf,
            });
            self.free.push(slot);
        }
    }

    /// Why a write cannot be taken now (the volume deleted, superseded by a newer
    /// generation, demoted, or its acknowledgement policy unmet), or `None`. Only the
    /// refused path builds a message.
    fn refusal(&self) -> Option<String> {
        let sh = &self.shared;
        let newer = sh.superseded.load(Ordering::Acquire);
        let (blocked, stopped, demoted) = (
            sh.writes_blocked.load(Ordering::Acquire),
            sh.stopped.load(Ordering::Acquire),
            sh.demoted.load(Ordering::Acquire),
        );
        if !(blocked || stopped || demoted || newer != 0) {
            return None;
        }
        Some(if stopped {
            format!("volume {} deleted", sh.cfg.name)
        } else if newer != 0 {
            super::VolumeError::superseded(&sh.cfg.name, newer).to_string()
        } else if demoted {
            super::VolumeError::Demoted(sh.cfg.name.clone()).to_string()
        } else {
            let st = sh.status.try_lock().map(|s| relays_down(&s)).unwrap_or_default();
            format!(
                "volume {}: acknowledgement policy cannot be met, relays down: {st}",
                sh.cfg.name
            )
        })
    }
}

impl ChannelBackend for VolChannel {
    fn submit(&mut self, mut io: IoRequest) -> Result<(), IoRequest> {
        let Some(slot) = self.free.pop() else {
            return Err(io);
        };
        let user_data = io.user_data;
        let kind = match io.op {
            IoOp::Read | IoOp::Flush => {
                io.user_data = slot as u64;
                return match self.base.submit(io) {
                    Ok(()) => {
                        self.slots[slot as usize].state = SlotState::Passthrough { user_data };
                        Ok(())
                    }
                    Err(mut io) => {
                        io.user_data = user_data;
                        self.free.push(slot);
                        Err(io)
                    }
                };
            }
            IoOp::Write => OpKind::Write,
            IoOp::WriteZeroes => OpKind::WriteZeroes,
            IoOp::Unmap => OpKind::Deallocate,
        };
        if let Some(why) = self.refusal() {
            self.free.push(slot);
            self.ready.push_back(IoCompletion {
                user_data,
                result: Err(BdevError::Io(why)),
                buf: io.buf.take(),
            });
            return Ok(());
        }
        let data = match (&io.buf, kind) {
            // SAFETY: the buffer stays owned by this channel (in the local write, then in
            // the slot) until the link reactor returns the slot, which it does only after
            // every connection handed back its references (module docs). Write buffers are
            // only read.
            (Some(b), OpKind::Write) => unsafe { DataRef::new(b) },
            _ => DataRef::EMPTY,
        };
        let (offset_blocks, num_blocks) = (io.offset_blocks, io.num_blocks);
        io.user_data = slot as u64;
        // Published before the local write starts: a block sync does not read these blocks
        // until it has landed (`volume/sync.rs`, (a)).
        self.me.busy[slot as usize].store(pack_busy(offset_blocks, num_blocks.into()), Ordering::Release);
        // Write intent: a write to a region the persisted dirty-block record does not hold
        // yet waits until it does, so a crash cannot leave a changed block the record
        // forgot (`volume/dirty.rs`). No file: no intent, no wait.
        let intent = self.shared.dirty.intent(offset_blocks, num_blocks.into());
        if intent > self.shared.dirty.flushed_marks() || !self.parked.is_empty() {
            self.parked.push_back((intent, io));
        } else if let Err(mut io) = self.base.submit(io) {
            self.me.busy[slot as usize].store(0, Ordering::Release);
            io.user_data = user_data;
            self.free.push(slot);
            return Err(io);
        }
        self.slots[slot as usize].state = SlotState::Replicating {
            user_data,
            local: None,
            relays: None,
            buf: None,
        };
        let sub = Submit {
            chan: self.me.clone(),
            slot,
            kind,
            offset_blocks,
            num_blocks,
            data,
        };
        if !self.unpushed.is_empty() {
            self.unpushed.push_back(sub);
        } else if let Err(sub) = self.shared.subq.push(sub) {
            self.unpushed.push_back(sub);
        } else {
            reactor::wake(self.shared.link_core);
        }
        Ok(())
    }

    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        if !self.parked.is_empty() {
            let flushed = self.shared.dirty.flushed_marks();
            while self.parked.front().is_some_and(|(m, _)| *m <= flushed) {
                let Some((m, io)) = self.parked.pop_front() else { break };
                if let Err(io) = self.base.submit(io) {
                    self.parked.push_front((m, io));
                    break;
                }
            }
        }
        let mut pushed = false;
        while let Some(s) = self.unpushed.pop_front() {
            if let Err(s) = self.shared.subq.push(s) {
                self.unpushed.push_front(s);
                break;
            }
            pushed = true;
        }
        if pushed {
            reactor::wake(self.shared.link_core);
        }
        let mut local = ArrayVec::<(u32, Result<(), BdevError>, Option<DmaBuf>), 64>::new();
        loop {
            local.clear();
            self.base.poll(&mut |c| {
                // The base channel never has more than CHANNEL_SLOTS in flight; collect in
                // chunks to release the borrow of `self.base`.
                local.push((c.user_data as u32, c.result, c.buf));
            });
            let n = local.len();
            for (slot, result, buf) in local.drain(..) {
                let s = &mut self.slots[slot as usize];
                match &mut s.state {
                    SlotState::Passthrough { user_data } => {
                        self.ready.push_back(IoCompletion {
                            user_data: *user_data,
                            result,
                            buf,
                        });
                        s.state = SlotState::Free;
                        self.free.push(slot);
                    }
                    SlotState::Replicating { local, buf: b, .. } => {
                        *local = Some(result);
                        *b = buf;
                        self.me.busy[slot as usize].store(0, Ordering::Release);
                        self.try_finish(slot);
                    }
                    SlotState::Free => debug_assert!(false, "completion for free slot {slot}"),
                }
            }
            if n < 64 {
                break;
            }
        }
        while let Some((slot, result)) = self.me.done.pop() {
            if let SlotState::Replicating { relays, .. } = &mut self.slots[slot as usize].state {
                *relays = Some(result);
            }
            self.try_finish(slot);
        }
        let n = self.ready.len();
        while let Some(c) = self.ready.pop_front() {
            f(c);
        }
        n
    }
}

impl Drop for VolChannel {
    fn drop(&mut self) {
        // A buffer whose bytes a relay connection may still read must not go back to its
        // pool: leak it rather than let the pool hand it out while it is read.
        let mut leaked = 0;
        for s in &mut self.slots {
            if let SlotState::Replicating { relays: None, buf, .. } = &mut s.state {
                if let Some(b) = buf.take() {
                    std::mem::forget(b);
                    leaked += 1;
                }
            }
        }
        if leaked > 0 {
            log::warn!(
                "volume {}: channel closed with {leaked} writes awaiting relays; their buffers are leaked",
                self.shared.cfg.name
            );
        }
    }
}

pub(super) fn relays_down(s: &VolumeStatus) -> String {
    let v: Vec<&str> = s.relays.iter().filter(|r| r.down).map(|r| r.addr.as_str()).collect();
    v.join(", ")
}
