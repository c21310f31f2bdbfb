//! Forwarding on a forwarder relay: when the volume is behind and the forward policy lets
//! it, journal records are read back through io_uring and re-encoded as Forward frames to
//! the standby (`docs/replication.md`, forward policies).

use arrayvec::ArrayVec;
use rdma_transport::wire::{self, BatchEncoder, Frame, Op, FRAME_DATA_BYTES_MAX, OPS_PER_FRAME_MAX};
use rdma_transport::{Connection, OutFrame};

use super::state::RelayState;
use super::volume_journal::VolumeJournal;
use super::{ForwardPolicy, FWD_BUFS_MAX};
use crate::journal::{JournalError, ReadCursor, ReadDone};

impl RelayState {
    /// Whether volume `i` may start a forwarding read now (`forward_policy.rs`).
    pub(super) fn forward_gate(&mut self, i: usize, now: u64) -> bool {
        let unix_secs = if matches!(self.cfg.forward, ForwardPolicy::Windows { .. }) {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        } else {
            0
        };
        self.volumes[i].gate.open(&self.cfg.forward, now, unix_secs)
    }
}

impl RelayState {
    /// Forwarding for volume `i`: starts a journal read when the volume is behind and the
    /// policy's gate is open (a forwarder whose standby is up), and turns a finished read
    /// into Forward frames.
    pub(super) fn forward(&mut self, i: usize, now: u64) -> bool {
        let gate = self.forward_open(i, now);
        let mut busy = false;
        let v = &mut self.volumes[i];
        if gate {
            busy |= start_forward_read(v, i);
        }
        let mut done = None;
        v.journal.poll_reads(&mut |d| done = Some(d));
        if let Some(d) = done {
            busy = true;
            forward_read_done(v, d, &self.cfg.forward);
        }
        busy
    }

    /// Whether volume `i` forwards now: a forwarder, its standby up, behind the durable
    /// LSN, a read buffer free and the policy's gate open. Notes since when it is behind and
    /// whether the policy holds it back (reported in `PrimaryLiveness`).
    fn forward_open(&mut self, i: usize, now: u64) -> bool {
        if self.volumes[i].standby_up() && self.cfg.forwarder {
            let durable = self.volumes[i].journal.durable_lsn();
            let behind = self.volumes[i].fwd_next <= durable;
            let v = &mut self.volumes[i];
            if behind {
                v.behind_since_ns.get_or_insert(now);
            } else {
                v.behind_since_ns = None;
            }
            let ready = behind && v.read_buf.is_some();
            let open = ready && self.forward_gate(i, now);
            self.volumes[i].fwd_state = if ready && !open {
                wire::ForwardState::Holding
            } else {
                wire::ForwardState::Forwarding
            };
            open
        } else {
            false
        }
    }
}

/// Starts a journal read from the forwarding cursor into the volume's read buffer (volume
/// `i`'s index is the read's user data). Returns whether a read was submitted.
fn start_forward_read(v: &mut VolumeJournal, i: usize) -> bool {
    let Some(buf) = v.read_buf.take() else {
        return false;
    };
    let mut cursor = v.fwd_cursor.unwrap_or_else(|| v.journal.read_cursor(v.fwd_next));
    match v.journal.submit_read(&mut cursor, buf, i as u64) {
        Ok(None) => {
            v.fwd_cursor = Some(cursor);
            true
        }
        Ok(Some(buf)) => {
            v.fwd_cursor = Some(cursor);
            v.read_buf = Some(buf);
            false
        }
        Err((buf, e)) => {
            v.read_buf = Some(buf);
            v.fwd_cursor = None;
            if !matches!(e, JournalError::ReadsBusy) {
                v.last_error = format!("forward read: {e}");
            }
            false
        }
    }
}

/// Forward frames made from one journal read.
struct ForwardBatch {
    /// Sealed frames: header, data, last LSN.
    out: ArrayVec<(wire::HeaderBuf, Vec<u8>, u64), 8>,
    /// The cursor after the read's last whole record, or why the read failed.
    res: Result<ReadCursor, JournalError>,
    /// Frames or buffers ran out before the read's records did.
    stopped_early: bool,
    /// The LSN after the last base record (resync) read, 0: none.
    base_skip: u64,
}

/// Sends the Forward frames of a finished journal read (`d`) to the standby, advances the
/// forwarding position and the cursor, and takes the read buffer back.
fn forward_read_done(v: &mut VolumeJournal, d: ReadDone, policy: &ForwardPolicy) {
    let mut batch = encode_forward(v, &d);
    let stopped_early = batch.stopped_early;
    let mut base_skip = batch.base_skip;
    let skip_base = batch.res.is_ok() && !stopped_early && base_skip > v.fwd_next;
    match batch.res {
        Ok(c) if !stopped_early => v.fwd_cursor = Some(c),
        Ok(_) => v.fwd_cursor = None,
        Err(e) => {
            v.last_error = format!("forward read: {e}");
            v.fwd_cursor = None;
        }
    }
    v.read_buf = Some(d.buf);
    for (hdr, data, last) in batch.out.drain(..) {
        let len = data.len();
        let mut segs = rdma_transport::Segs::new();
        segs.push(data);
        if let Some(c) = v.standby.as_mut() {
            match c.send(OutFrame {
                header: hdr,
                data: segs,
                user_data: last,
            }) {
                Ok(()) => {
                    v.fwd_next = last + 1;
                    v.bytes_forwarded += len as u64;
                    v.gate.spent(policy, len as u64);
                }
                Err(e) => {
                    let mut f = e.into_frame();
                    v.fwd_bufs.extend(f.data.drain(..));
                    v.fwd_cursor = None;
                    base_skip = 0;
                    break;
                }
            }
        }
    }
    if skip_base && base_skip > v.fwd_next {
        v.fwd_next = base_skip;
    }
}

/// Re-encodes the ops of read `d` from `fwd_next` on into Forward frames, as many as the
/// standby link takes now (at most 8) in buffers from the volume's pool.
fn encode_forward(v: &mut VolumeJournal, d: &ReadDone) -> ForwardBatch {
    let mut out: ArrayVec<(wire::HeaderBuf, Vec<u8>, u64), 8> = ArrayVec::new();
    let mut stopped_early = false;
    let mut next = v.fwd_next;
    // A base record (resync) declares the LSNs it covers not held: forwarding moves
    // past them; the standby fetches them from another relay.
    let mut base_skip = 0u64;
    let block_size = v.meta.block_size;
    let generation = v.meta.generation;
    let mut enc: Option<BatchEncoder> = None;
    let mut buf: Option<Vec<u8>> = None;
    let capacity = v.standby.as_ref().map_or(0, |c| c.send_capacity()).min(8);
    let mut bufs = std::mem::take(&mut v.fwd_bufs);
    let mut made = v.fwd_bufs_made;
    let mut get_buf = |bufs: &mut Vec<Vec<u8>>| {
        bufs.pop().or_else(|| {
            (made < FWD_BUFS_MAX).then(|| {
                made += 1;
                Vec::with_capacity(FRAME_DATA_BYTES_MAX)
            })
        })
    };
    let res = d.for_each_record(v.fwd_next, &mut |rec| {
        if stopped_early {
            return;
        }
        let batch = match wire::parse(rec.payload) {
            Ok(Frame::Ops(batch)) => batch,
            Ok(Frame::Base(_)) => {
                base_skip = rec.lsn_last + 1;
                next = next.max(base_skip);
                return;
            }
            _ => {
                log::error!("relay: journal record {} is not an Ops frame", rec.seq);
                return;
            }
        };
        for op in batch.ops.iter() {
            if op.lsn() < next {
                continue;
            }
            let dlen = op_data(op).len();
            let full = enc
                .as_ref()
                .is_some_and(|e| e.len() >= OPS_PER_FRAME_MAX || e.data_bytes() + dlen > FRAME_DATA_BYTES_MAX);
            if full {
                if let (Some(e), Some(b)) = (enc.take(), buf.take()) {
                    seal_into(&mut out, e, b, next - 1);
                }
            }
            if enc.is_none() {
                if out.len() >= capacity {
                    stopped_early = true;
                    return;
                }
                let Some(mut b) = get_buf(&mut bufs) else {
                    stopped_early = true;
                    return;
                };
                b.clear();
                buf = Some(b);
                enc = Some(BatchEncoder::forward(generation, block_size));
            }
            if let (Some(e), Some(b)) = (enc.as_mut(), buf.as_mut()) {
                if e.op(op).is_ok() {
                    b.extend_from_slice(op_data(op));
                    next = op.lsn() + 1;
                }
            }
        }
    });
    if let (Some(e), Some(b)) = (enc.take(), buf.take()) {
        if e.is_empty() {
            bufs.push(b);
        } else {
            seal_into(&mut out, e, b, next - 1);
        }
    }
    v.fwd_bufs = bufs;
    v.fwd_bufs_made = made;
    ForwardBatch {
        out,
        res,
        stopped_early,
        base_skip,
    }
}

pub(super) fn op_data<'a>(op: &Op<'a>) -> &'a [u8] {
    match *op {
        Op::Write { data, .. } => data,
        Op::RestartPoint { tag, .. } => tag,
        _ => &[],
    }
}

pub(super) fn seal_into(
    out: &mut ArrayVec<(wire::HeaderBuf, Vec<u8>, u64), 8>,
    e: BatchEncoder,
    b: Vec<u8>,
    last: u64,
) {
    match e.finish(&[&b]) {
        Ok(h) => {
            let _ = out.try_push((h, b, last));
        }
        Err(err) => log::error!("relay: cannot seal forward frame: {err}"),
    }
}
