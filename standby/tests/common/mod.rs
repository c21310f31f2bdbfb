//! Shared test helpers: a deterministic primary model (op stream + reference
//! images per restart point), a multi-relay delivery simulator, and bdev
//! read helpers.
#![allow(dead_code)]

use engine::bdev::{Bdev, IoCompletion, IoOp, IoRequest};
use engine::buf::DmaBuf;
use rdma_transport::wire::Op;
use standby::{Offer, OpBody, OwnedOp, StandbyVolume};
use std::sync::Arc;

/// SplitMix64.
#[derive(Clone)]
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The primary: a stream of ops in LSN order and the image at every restart point.
pub struct Primary {
    pub ops: Vec<OwnedOp>,
    /// images[n] = volume at restart point n (images[0] = zeroes).
    pub images: Vec<Vec<u8>>,
    /// rp_lsn[n] = LSN of restart point n (rp_lsn[0] = 0).
    pub rp_lsn: Vec<u64>,
    pub last_lsn: Vec<u64>,
}

pub struct Shape {
    pub volume_blocks: u64,
    pub block_size: usize,
    pub epochs: u64,
    pub ops_per_epoch_max: u64,
    pub blocks_per_write_max: u64,
    pub generation: u64,
}

impl Primary {
    pub fn generate(seed: u64, s: &Shape) -> Primary {
        let mut rng = Rng(seed);
        let bs = s.block_size;
        let mut img = vec![0u8; s.volume_blocks as usize * bs];
        // Writes in LSN order with their epoch assigned later.
        let mut ops: Vec<OwnedOp> = Vec::new();
        let mut images = vec![img.clone()];
        let mut rp_lsn = vec![0];
        let mut last_lsns = vec![0u64];
        let mut applied_upto = 0usize; // index into ops of the first op not in an image
        let mut lsn = 0u64;
        for epoch in 1..=s.epochs {
            let n = rng.below(s.ops_per_epoch_max + 1);
            for _ in 0..n {
                lsn += 1;
                let nb = 1 + rng.below(s.blocks_per_write_max);
                let nb = nb.min(s.volume_blocks);
                let off = rng.below(s.volume_blocks - nb + 1);
                let body = match rng.below(10) {
                    0 => OpBody::WriteZeroes {
                        offset_blocks: off,
                        num_blocks: nb as u32,
                    },
                    1 => OpBody::Deallocate {
                        offset_blocks: off,
                        num_blocks: nb as u32,
                    },
                    _ => {
                        let mut d = DmaBuf::alloc(nb as usize * bs);
                        let fill = rng.next();
                        for (i, c) in d.chunks_mut(8).enumerate() {
                            let v = fill ^ (i as u64).wrapping_mul(0x9e37) ^ lsn << 40;
                            c.copy_from_slice(&v.to_le_bytes()[..c.len()]);
                        }
                        OpBody::Write {
                            offset_blocks: off,
                            num_blocks: nb as u32,
                            data: standby::receive::DmaBufEq(d),
                        }
                    }
                };
                ops.push(OwnedOp {
                    lsn,
                    generation: s.generation,
                    body,
                });
            }
            lsn += 1;
            // Up to two of the latest writes were still in flight when the
            // host declared the point: they belong to the next epoch.
            let prev_last = *last_lsns.last().unwrap();
            let mut last = lsn - 1;
            let k = rng.below(3);
            for _ in 0..k {
                if last > prev_last
                    && ops
                        .iter()
                        .any(|o| o.lsn == last && !matches!(o.body, OpBody::RestartPoint { .. }))
                {
                    last -= 1;
                }
            }
            let last = last.max(prev_last);
            ops.push(OwnedOp {
                lsn,
                generation: s.generation,
                body: OpBody::RestartPoint {
                    epoch,
                    last_lsn: last,
                    tag: format!("rp{epoch}").into_bytes(),
                },
            });
            // Image at this restart point: writes with LSN <= last.
            while applied_upto < ops.len() && ops[applied_upto].lsn <= last {
                apply(&mut img, &ops[applied_upto], bs);
                applied_upto += 1;
            }
            // Skip restart points inside the applied prefix (they carry no data).
            images.push(img.clone());
            rp_lsn.push(lsn);
            last_lsns.push(last);
        }
        Primary {
            ops,
            images,
            rp_lsn,
            last_lsn: last_lsns,
        }
    }

    /// The newest epoch whose restart point and every LSN before it are in
    /// the contiguous prefix `1..=upto`.
    pub fn newest_complete(&self, upto: u64) -> u64 {
        self.rp_lsn.iter().rposition(|&l| l <= upto).unwrap_or(0) as u64
    }
}

pub fn apply(img: &mut [u8], op: &OwnedOp, bs: usize) {
    match &op.body {
        OpBody::Write {
            offset_blocks, data, ..
        } => {
            let at = *offset_blocks as usize * bs;
            img[at..at + data.0.len()].copy_from_slice(&data.0);
        }
        OpBody::WriteZeroes {
            offset_blocks,
            num_blocks,
        }
        | OpBody::Deallocate {
            offset_blocks,
            num_blocks,
        } => {
            let at = *offset_blocks as usize * bs;
            img[at..at + *num_blocks as usize * bs].fill(0);
        }
        OpBody::RestartPoint { .. } | OpBody::Sync { .. } => {}
    }
}

/// Reads a whole bdev through a fresh channel (spins; test thread).
pub fn read_all(b: &Arc<dyn Bdev>) -> Vec<u8> {
    read_range(b, 0, b.num_blocks())
}

pub fn read_range(b: &Arc<dyn Bdev>, off: u64, n: u64) -> Vec<u8> {
    let mut ch = b.open_channel().unwrap();
    let bs = b.block_size() as usize;
    let mut out = vec![0u8; n as usize * bs];
    let chunk = 64u64;
    let mut i = 0;
    while i < n {
        let len = chunk.min(n - i);
        ch.submit(IoRequest {
            op: IoOp::Read,
            offset_blocks: off + i,
            num_blocks: len as u32,
            buf: Some(DmaBuf::alloc(len as usize * bs)),
            user_data: i,
        })
        .unwrap();
        let mut got: Option<IoCompletion> = None;
        while got.is_none() {
            ch.poll(&mut |c| got = Some(c));
        }
        let c = got.unwrap();
        c.result.unwrap();
        out[i as usize * bs..(i + len) as usize * bs].copy_from_slice(&c.buf.unwrap());
        i += len;
    }
    out
}

pub fn sync_io(b: &Arc<dyn Bdev>, op: IoOp, off: u64, n: u32, buf: Option<DmaBuf>) -> Option<DmaBuf> {
    let mut ch = b.open_channel().unwrap();
    ch.submit(IoRequest {
        op,
        offset_blocks: off,
        num_blocks: n,
        buf,
        user_data: 0,
    })
    .unwrap();
    let mut got: Option<IoCompletion> = None;
    while got.is_none() {
        ch.poll(&mut |c| got = Some(c));
    }
    let c = got.unwrap();
    c.result.unwrap();
    c.buf
}

/// First differing block, for readable failures.
pub fn first_diff(a: &[u8], b: &[u8], bs: usize) -> Option<usize> {
    a.chunks(bs).zip(b.chunks(bs)).position(|(x, y)| x != y)
}

/// Offers a wire op (generation 1) as the network side does, polling the volume while its
/// window is full, until the op is taken. Anything else than `Accepted`/`Full` is a bug.
pub fn offer_wire(v: &mut StandbyVolume, op: &Op<'_>) {
    loop {
        match v.offer(1, op, 0) {
            Offer::Accepted => return,
            Offer::Full => {
                v.poll(0);
            }
            o => panic!("{o:?}: {:?}", v.status()),
        }
    }
}

/// One JSON-RPC call on an in-process registry (the tests' management thread).
pub fn call(
    reg: &engine::rpc::Registry,
    m: &str,
    p: serde_json::Value,
) -> Result<serde_json::Value, engine::rpc::RpcError> {
    reg.call_blocking(m, Some(p), 100_000, std::time::Duration::from_micros(100))
}

/// A one-block (512 bytes) write of `byte` at `off`, generation 1.
pub fn write(lsn: u64, off: u64, byte: u8) -> OwnedOp {
    let mut d = DmaBuf::alloc(512);
    d.fill(byte);
    OwnedOp {
        lsn,
        generation: 1,
        body: OpBody::Write {
            offset_blocks: off,
            num_blocks: 1,
            data: standby::receive::DmaBufEq(d),
        },
    }
}

#[allow(unused_imports)]
pub use engine::testing::wait_until;

/// The bound of these tests' waits.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
