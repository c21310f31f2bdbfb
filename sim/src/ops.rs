//! Operations as the simulation keeps them, their data, and frames built from them with the
//! real encoder (`rdma_transport::wire::BatchEncoder`).
//!
//! Block images are `Vec<u64>`: one stamp per block, the LSN of the write that last wrote
//! it, 0 for zeroes (never written, write-zeroes, deallocate). A written block's data
//! carries its stamp and its block number, so the standby reads the image back out of the
//! bytes that crossed the codec, not out of the model.

use rdma_transport::wire::{self, BatchEncoder, Op, OPS_PER_FRAME_MAX};

/// Block size of the simulated volume (the wire's smallest).
pub const BLOCK: usize = 512;

/// What an op does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Write {
        off: u64,
        n: u32,
    },
    Zero {
        off: u64,
        n: u32,
    },
    Dealloc {
        off: u64,
        n: u32,
    },
    Rp {
        epoch: u64,
        last_lsn: u64,
    },
    /// Block-sync marker (arguments as on the wire). The simulated primary sends none;
    /// it is here so every wire op has a model.
    Sync {
        a0: u64,
        a1: u64,
    },
}

/// An op with its LSN and the generation of the primary that produced it, and its data
/// bytes as received (writes: `n * BLOCK`; restart points: the tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JOp {
    pub lsn: u64,
    pub gen: u64,
    pub kind: Kind,
    pub data: Vec<u8>,
}

/// The data a write of `lsn` carries: per block, its stamp and block number.
pub fn write_data(lsn: u64, off: u64, n: u32) -> Vec<u8> {
    let mut d = vec![0u8; n as usize * BLOCK];
    for b in 0..n as usize {
        d[b * BLOCK..b * BLOCK + 8].copy_from_slice(&lsn.to_le_bytes());
        d[b * BLOCK + 8..b * BLOCK + 16].copy_from_slice(&(off + b as u64).to_le_bytes());
    }
    d
}

/// Reads a block's (stamp, block number) back from write data.
pub fn read_stamp(data: &[u8], b: usize) -> (u64, u64) {
    let at = b * BLOCK;
    let mut s = [0u8; 8];
    let mut o = [0u8; 8];
    s.copy_from_slice(&data[at..at + 8]);
    o.copy_from_slice(&data[at + 8..at + 16]);
    (u64::from_le_bytes(s), u64::from_le_bytes(o))
}

/// The tag of restart point `epoch` (any bytes; checked on the way through).
pub fn rp_tag(epoch: u64) -> Vec<u8> {
    epoch.to_le_bytes().to_vec()
}

/// Applies an op to an image (restart points change nothing).
pub fn apply(image: &mut [u64], lsn: u64, k: Kind) {
    match k {
        Kind::Write { off, n } => image[off as usize..off as usize + n as usize].fill(lsn),
        Kind::Zero { off, n } | Kind::Dealloc { off, n } => image[off as usize..off as usize + n as usize].fill(0),
        Kind::Rp { .. } | Kind::Sync { .. } => {}
    }
}

/// Owns a parsed wire op.
pub fn from_wire(gen: u64, op: &Op<'_>) -> JOp {
    let (kind, data) = match *op {
        Op::Write {
            offset_blocks,
            num_blocks,
            data,
            ..
        } => (
            Kind::Write {
                off: offset_blocks,
                n: num_blocks,
            },
            data.to_vec(),
        ),
        Op::WriteZeroes {
            offset_blocks,
            num_blocks,
            ..
        } => (
            Kind::Zero {
                off: offset_blocks,
                n: num_blocks,
            },
            Vec::new(),
        ),
        Op::Deallocate {
            offset_blocks,
            num_blocks,
            ..
        } => (
            Kind::Dealloc {
                off: offset_blocks,
                n: num_blocks,
            },
            Vec::new(),
        ),
        Op::RestartPoint {
            epoch, last_lsn, tag, ..
        } => (Kind::Rp { epoch, last_lsn }, tag.to_vec()),
        Op::Sync { mark, .. } => {
            let (a0, a1) = mark.args();
            (Kind::Sync { a0, a1 }, Vec::new())
        }
    };
    JOp {
        lsn: op.lsn(),
        gen,
        kind,
        data,
    }
}

fn push(enc: &mut BatchEncoder, o: &JOp) -> bool {
    let r = match o.kind {
        Kind::Write { off, n } => enc.write(o.lsn, off, n, o.data.len()),
        Kind::Zero { off, n } => enc.write_zeroes(o.lsn, off, n),
        Kind::Dealloc { off, n } => enc.deallocate(o.lsn, off, n),
        Kind::Rp { epoch, last_lsn } => enc.restart_point(o.lsn, epoch, last_lsn, o.data.len()),
        Kind::Sync { a0, a1 } => enc.sync_args(o.lsn, a0, a1),
    };
    r.is_ok()
}

/// Encodes `ops` (at most [`OPS_PER_FRAME_MAX`], LSNs increasing) into one frame started by
/// `enc`. Returns the whole frame's bytes.
pub fn encode(mut enc: BatchEncoder, ops: &[&JOp]) -> Vec<u8> {
    debug_assert!(ops.len() <= OPS_PER_FRAME_MAX);
    let mut data: Vec<&[u8]> = Vec::with_capacity(ops.len());
    for o in ops {
        assert!(push(&mut enc, o), "sim built an invalid batch at LSN {}", o.lsn);
        data.push(&o.data);
    }
    let hdr = enc.finish(&data).expect("batch encodes");
    let mut out = Vec::new();
    wire::frame_to_vec(&hdr, &data, &mut out);
    out
}
