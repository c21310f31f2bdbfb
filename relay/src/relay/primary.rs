//! A primary's stream on the relay: its Ops and Base frames are appended to the volume's
//! journal (a frame that does not fit waits in the stash, and the socket is not read until
//! it fits: back-pressure), and an Ack goes back once the group commit made them durable
//! (`docs/replication.md`, `docs/relay-journal.md`).

use std::collections::VecDeque;
use std::net::SocketAddr;

use arrayvec::ArrayVec;
use engine::clock::now_ns;
use rdma_transport::link::heartbeat_echo;
use rdma_transport::wire::{self, Ack, Base, Batch, BatchEncoder, Frame, Heartbeat, Op, OPS_PER_FRAME_MAX};
use rdma_transport::{ConnState, Connection, OutFrame};

use super::forward::op_data;
use super::state::{Conn, RelayState};
use super::volume_journal::{fail_journal, VolumeMeta};
use crate::journal::{Journal, JournalError};
use crate::volume::RECV_UNREADY_PERIOD_NS;

/// The primary's connection to one volume.
pub(super) struct PrimaryConn {
    pub(super) conn: Conn,
    pub(super) peer: SocketAddr,
    /// Frames received but not yet appended (journal full or busy), as re-encoded frame
    /// bytes, with their LSN ranges; at most one receive buffer's worth.
    pub(super) stash: Vec<u8>,
    pub(super) stashed: VecDeque<(usize, usize, u64, u64)>,
    /// Highest LSN acknowledged on this connection.
    pub(super) acked: u64,
    /// Readiness token; `watched` when the socket is in the relay's readiness set.
    pub(super) token: u64,
    pub(super) watched: bool,
    /// Last `poll_recv`.
    pub(super) recv_ns: u64,
}

/// What a primary connection's receive produced.
pub(super) enum PrimaryEvent {
    Heartbeat(Heartbeat),
    Unexpected(u8),
    Fenced(u64),
}

impl RelayState {
    /// Reads the primary's frames into the journal (stash first; not read while stashed).
    pub(super) fn drive_primary(&mut self, i: usize, now: u64) -> bool {
        let v = &mut self.volumes[i];
        let Some(p) = v.primary.as_mut() else {
            return false;
        };
        // Stashed frames first, in order.
        let mut busy = match append_stashed(&mut v.journal, p, &mut v.bytes_appended) {
            Ok(busy) => busy,
            Err(e) => {
                let why = format!("journal append failed: {e}");
                fail_journal(&mut v.journal_failed, &mut v.last_error, &v.meta.name, why);
                p.conn.close();
                v.primary = None;
                return true;
            }
        };
        if p.stashed.is_empty() {
            p.stash.clear();
        } else {
            let _ = v.journal.poll();
            return busy;
        }
        // Read a watched socket only when it is readable (or a whole frame waits in the
        // buffer), and at least every RECV_UNREADY_PERIOD_NS regardless.
        let expected = !p.watched || self.ready.contains(&p.token) || p.conn.has_buffered();
        let read = expected || now.saturating_sub(p.recv_ns) >= RECV_UNREADY_PERIOD_NS;
        if !read {
            return busy;
        }
        p.recv_ns = now;
        let mut events: ArrayVec<PrimaryEvent, 64> = ArrayVec::new();
        let generation = v.meta.generation.max(v.meta.fenced_below);
        let bs = v.meta.block_size;
        let mut intake = Intake {
            journal: &mut v.journal,
            stash: &mut p.stash,
            stashed: &mut p.stashed,
            appended: 0,
            errors: ArrayVec::new(),
        };
        let r = p.conn.poll_recv(&mut |f: Frame<'_>| match f {
            Frame::Ops(batch) => {
                if batch.generation < generation {
                    let _ = events.try_push(PrimaryEvent::Fenced(batch.generation));
                    return;
                }
                intake.ops(&batch, bs);
            }
            // The primary no longer holds the LSNs between this journal's end and the base:
            // journal the frame as the record covering them (resync, journal/base.rs), in
            // order with the Ops frames around it, then the ops from the base on follow.
            Frame::Base(b) => {
                if b.generation < generation {
                    let _ = events.try_push(PrimaryEvent::Fenced(b.generation));
                    return;
                }
                intake.base(&b);
            }
            Frame::Heartbeat(h) => {
                let _ = events.try_push(PrimaryEvent::Heartbeat(h));
            }
            other => {
                let _ = events.try_push(PrimaryEvent::Unexpected(other.kind() as u8));
            }
        });
        let Intake { appended, errors, .. } = intake;
        v.bytes_appended += appended;
        busy |= appended > 0;
        if matches!(r, Ok(n) if n > 0) {
            v.primary_heard_ns = now_ns();
            if !expected {
                v.primary_late_reads += 1;
            }
        }
        let mut close = false;
        for (journal, e) in errors {
            // Frames this relay could not journal must not be skipped over: close, and the
            // primary resends from the journal's end (or, if the journal failed, elsewhere).
            if journal {
                let why = format!("journal append failed: {e}");
                fail_journal(&mut v.journal_failed, &mut v.last_error, &v.meta.name, why);
            } else {
                log::error!("relay: volume {}: primary {}: {e}", v.meta.name, p.peer);
                v.last_error = e;
            }
            close = true;
        }
        if let Err(e) = r {
            log::warn!("relay: volume {}: primary {}: {e}", v.meta.name, p.peer);
            close = true;
        }
        busy |= !events.is_empty();
        v.stale_primary_refusals += events.iter().filter(|e| matches!(e, PrimaryEvent::Fenced(_))).count() as u64;
        close |= on_primary_events(p, &v.meta, &mut events);
        if close || p.conn.state() == ConnState::Failed {
            p.conn.close();
            v.primary = None;
        }
        busy
    }

    /// Group commit, then Acks for what became durable.
    pub(super) fn drive_journal(&mut self, i: usize) -> bool {
        let v = &mut self.volumes[i];
        let durable = match v.journal.poll() {
            Ok(d) => d,
            Err(e) => {
                // A failed journal fails every poll: say so once (no string per poll).
                if v.journal_failed.is_none() {
                    let why = format!("journal commit failed: {e}");
                    fail_journal(&mut v.journal_failed, &mut v.last_error, &v.meta.name, why);
                }
                if let Some(mut p) = v.primary.take() {
                    p.conn.close();
                    return true;
                }
                return false;
            }
        };
        let mut busy = false;
        if let Some(p) = v.primary.as_mut() {
            if durable > p.acked && p.conn.send_capacity() > 0 {
                let ack = Ack {
                    durable_lsn: durable,
                    frame_lsn_first: 0,
                    frame_lsn_last: 0,
                    generation: v.meta.generation,
                };
                if p.conn.send(OutFrame::control(wire::encode_ack(&ack), 0)).is_ok() {
                    p.acked = durable;
                    busy = true;
                }
            }
            if p.conn.poll_send(&mut |_| {}).is_err() {
                v.primary = None;
            }
        }
        busy
    }
}

/// An Ops frame holding `ops` (a subset of `batch`), as header + data slices.
pub(super) fn reencode_ops<'a>(
    batch: &Batch<'a>,
    ops: &[&Op<'a>],
    bs: u32,
) -> Result<(wire::HeaderBuf, ArrayVec<&'a [u8], OPS_PER_FRAME_MAX>), wire::EncodeError> {
    let mut enc = BatchEncoder::ops(batch.generation, bs);
    let mut data: ArrayVec<&'a [u8], OPS_PER_FRAME_MAX> = ArrayVec::new();
    for op in ops {
        enc.op(op)?;
        let d = op_data(op);
        if !d.is_empty() {
            data.push(d);
        }
    }
    // The common case, nothing already held: the received frame's CRC stands.
    let hdr = enc.finish_as_received(&data, batch)?;
    Ok((hdr, data))
}

/// Appends the stashed frames, oldest first, while the journal takes them (adding their
/// bytes to `bytes_appended`). Returns whether any went in, or the journal's failure.
fn append_stashed(journal: &mut Journal, p: &mut PrimaryConn, bytes_appended: &mut u64) -> Result<bool, JournalError> {
    let mut busy = false;
    while let Some(&(off, len, first, last)) = p.stashed.front() {
        match journal.append_frame(first, last, &[&p.stash[off..off + len]]) {
            Ok(_) => {
                *bytes_appended += len as u64;
                p.stashed.pop_front();
                busy = true;
            }
            Err(JournalError::Full { .. } | JournalError::Busy) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(busy)
}

/// Answers the primary's Heartbeats. Returns whether an event closes the connection (ops
/// of a stale generation: the primary is fenced off; a frame a primary never sends).
fn on_primary_events(p: &mut PrimaryConn, meta: &VolumeMeta, events: &mut ArrayVec<PrimaryEvent, 64>) -> bool {
    let mut close = false;
    for ev in events.drain(..) {
        match ev {
            PrimaryEvent::Heartbeat(h) => {
                if let Some(f) = heartbeat_echo(&h) {
                    let _ = p.conn.send(f);
                }
            }
            PrimaryEvent::Fenced(g) => {
                log::error!(
                    "relay: volume {}: ops of stale generation {g} (volume is at {}): primary fenced off",
                    meta.name,
                    meta.generation
                );
                close = true;
            }
            PrimaryEvent::Unexpected(k) => {
                log::warn!("relay: volume {}: unexpected frame kind {k} from primary", meta.name);
                close = true;
            }
        }
    }
    close
}

/// Where a primary's frames go during one receive: into the journal, or into the stash
/// behind frames already waiting there (journal full or busy: back-pressure).
struct Intake<'a> {
    journal: &'a mut Journal,
    stash: &'a mut Vec<u8>,
    stashed: &'a mut VecDeque<(usize, usize, u64, u64)>,
    /// Bytes appended to the journal.
    appended: u64,
    /// (journal failure, what): a frame that could not be re-encoded is the primary's
    /// fault (close); one the journal could not take is the relay's (fail the journal).
    errors: ArrayVec<(bool, String), 4>,
}

impl Intake<'_> {
    /// The highest LSN held, journaled or stashed.
    fn have(&self) -> u64 {
        self.journal.appended_lsn().max(self.stashed.back().map_or(0, |s| s.3))
    }

    /// An Ops frame of the current generation: the ops not held yet, re-encoded as one
    /// frame, appended (or stashed).
    fn ops(&mut self, batch: &Batch<'_>, bs: u32) {
        // Drop ops already held (a primary resending after a reconnect).
        let have = self.have();
        let new: ArrayVec<&Op<'_>, OPS_PER_FRAME_MAX> = batch.ops.iter().filter(|o| o.lsn() > have).collect();
        if new.is_empty() {
            return;
        }
        let (hdr, data) = match reencode_ops(batch, &new, bs) {
            Ok(x) => x,
            Err(e) => {
                let _ = self.errors.try_push((false, format!("re-encode: {e}")));
                return;
            }
        };
        let (first, last) = (new[0].lsn(), new[new.len() - 1].lsn());
        let mut parts: ArrayVec<&[u8], { OPS_PER_FRAME_MAX + 1 }> = ArrayVec::new();
        parts.push(hdr.as_bytes());
        for d in &data {
            parts.push(d);
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.stashed.is_empty() {
            match self.journal.append_frame(first, last, &parts) {
                Ok(_) => {
                    self.appended += len as u64;
                    return;
                }
                Err(JournalError::Full { .. } | JournalError::Busy) => {}
                Err(e) => {
                    let _ = self.errors.try_push((true, e.to_string()));
                    return;
                }
            }
        }
        let off = self.stash.len();
        for p in &parts {
            self.stash.extend_from_slice(p);
        }
        self.stashed.push_back((off, len, first, last));
    }

    /// A Base frame of the current generation: journaled (or stashed) as the record
    /// covering the LSNs from the journal's end up to the base.
    fn base(&mut self, b: &Base) {
        let have = self.have();
        if b.lsn <= have + 1 {
            return;
        }
        let hdr = wire::encode_base(b);
        let (first, last) = (have + 1, b.lsn - 1);
        if self.stashed.is_empty() {
            match self.journal.append_frame(first, last, &[hdr.as_bytes()]) {
                Ok(_) => return,
                Err(JournalError::Full { .. } | JournalError::Busy) => {}
                Err(e) => {
                    let _ = self.errors.try_push((true, e.to_string()));
                    return;
                }
            }
        }
        let off = self.stash.len();
        self.stash.extend_from_slice(hdr.as_bytes());
        self.stashed.push_back((off, hdr.as_bytes().len(), first, last));
    }
}
