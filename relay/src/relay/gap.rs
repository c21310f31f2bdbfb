//! Gap replies: the standby asks a relay for LSNs it lacks (the forwarder died, or a
//! backup holds what it needs) and gets one GapReply of at most one frame's worth,
//! contiguous from the first LSN held (`docs/replication-wire.md`, `docs/failover.md`).

use rdma_transport::wire::{
    self, BatchEncoder, Frame, GapRequest, GapStatus, Op, FRAME_DATA_BYTES_MAX, OPS_PER_FRAME_MAX,
};
use rdma_transport::{Connection, OutFrame};

use super::forward::op_data;
use super::volume_journal::VolumeJournal;

/// Answers the oldest queued GapRequest with one GapReply (at most one frame's worth; the
/// standby asks again for the rest). Blocking journal reads (`read_range`): recovery path.
pub(super) fn serve_gap(v: &mut VolumeJournal) -> bool {
    let Some(c) = v.standby.as_ref() else { return false };
    if c.send_capacity() == 0 {
        return false;
    }
    let Some(g) = v.gaps.pop_front() else { return false };
    v.gap_requests += 1;
    let mut data: Vec<u8> = v.fwd_bufs.pop().unwrap_or_default();
    data.clear();
    let (descs, first_held) = read_gap(v, &g, &mut data);
    let status = match first_held {
        None => GapStatus::NotHeld,
        Some(f) if f > g.lsn_first => GapStatus::Partial,
        Some(_) => GapStatus::Complete,
    };
    let mut enc = BatchEncoder::gap_reply(g.request_id, status, v.meta.generation, v.meta.block_size);
    for d in &descs {
        let r = match d.kind {
            1 => enc.write(d.lsn, d.a0, d.a1 as u32, d.len as usize),
            2 => enc.write_zeroes(d.lsn, d.a0, d.a1 as u32),
            3 => enc.deallocate(d.lsn, d.a0, d.a1 as u32),
            5 => enc.sync_args(d.lsn, d.a0, d.a1),
            _ => enc.restart_point(d.lsn, d.a0, d.a1, d.len as usize),
        };
        if r.is_err() {
            break;
        }
    }
    let Ok(hdr) = enc.finish(&[&data]) else {
        return false;
    };
    let mut segs = rdma_transport::Segs::new();
    segs.push(data);
    if let Some(c) = v.standby.as_mut() {
        if let Err(e) = c.send(OutFrame {
            header: hdr,
            data: segs,
            user_data: 0,
        }) {
            let mut f = e.into_frame();
            v.fwd_bufs.extend(f.data.drain(..));
        }
    }
    true
}

/// One op of a GapReply: its kind (1 write, 2 write-zeroes, 3 deallocate, 4 restart
/// point, 5 sync), LSN, two arguments and data length.
struct GapOp {
    kind: u8,
    lsn: u64,
    a0: u64,
    a1: u64,
    len: u32,
}

/// Reads the ops of `g`'s range the journal holds, from the first held one on, as one
/// contiguous run that fits a frame: their descriptions, and their data appended to
/// `data`. Also the first LSN held, if any.
fn read_gap(v: &mut VolumeJournal, g: &GapRequest, data: &mut Vec<u8>) -> (Vec<GapOp>, Option<u64>) {
    let mut descs: Vec<GapOp> = Vec::new();
    let mut next = g.lsn_first;
    let mut first_held: Option<u64> = None;
    // The reply is contiguous: it ends at the first op that does not fit. (Skipping that op
    // and taking smaller ones after it, such as restart points, sent the standby points
    // without their writes; its drain chained past the hole and rolled back before it.)
    let mut full = false;
    let r = v.journal.read_range(g.lsn_first, g.lsn_last, &mut |rec| {
        let Ok(Frame::Ops(batch)) = wire::parse(rec.payload) else {
            return;
        };
        for op in &batch.ops {
            let lsn = op.lsn();
            if full || lsn < next || lsn > g.lsn_last {
                continue;
            }
            // A reply is one contiguous run: a journal with a base (resync) holds nothing
            // between its older records and the base; the standby asks again from there.
            if first_held.is_some() && lsn != next {
                continue;
            }
            let d = op_data(op);
            if descs.len() >= OPS_PER_FRAME_MAX || data.len() + d.len() > FRAME_DATA_BYTES_MAX {
                full = true;
                continue;
            }
            first_held.get_or_insert(lsn);
            let (kind, a0, a1) = op_args(op);
            descs.push(GapOp {
                kind,
                lsn,
                a0,
                a1,
                len: d.len() as u32,
            });
            data.extend_from_slice(d);
            next = lsn + 1;
        }
    });
    if let Err(e) = r {
        v.last_error = format!("gap read: {e}");
    }
    (descs, first_held)
}

/// An op's kind and two arguments as a GapReply describes it.
fn op_args(op: &Op) -> (u8, u64, u64) {
    match *op {
        Op::Write {
            offset_blocks,
            num_blocks,
            ..
        } => (1, offset_blocks, u64::from(num_blocks)),
        Op::WriteZeroes {
            offset_blocks,
            num_blocks,
            ..
        } => (2, offset_blocks, u64::from(num_blocks)),
        Op::Deallocate {
            offset_blocks,
            num_blocks,
            ..
        } => (3, offset_blocks, u64::from(num_blocks)),
        Op::RestartPoint { epoch, last_lsn, .. } => (4, epoch, last_lsn),
        Op::Sync { mark, .. } => {
            let (a0, a1) = mark.args();
            (5, a0, a1)
        }
    }
}
