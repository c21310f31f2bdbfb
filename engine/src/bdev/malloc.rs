//! `malloc`: a RAM bdev. The whole device is one anonymous mapping
//! (hugepage-backed when hugepages are reserved); reads and writes are
//! `memcpy`s done at submit time, and the completion is reported by the next
//! poll, keeping the "never inline" rule of the channel contract.
//!
//! Unmap and write-zeroes zero the range, so reads after a deallocate return
//! zeroes (what NVMe's DLFEAT "reads return zeroes" promises).

use super::{
    check_geometry, Bdev, BdevChannel, BdevError, BdevInfo, ChannelBackend, DoneQueue, IoCompletion, IoOp, IoRequest,
    IoStats, StatsSet,
};
use crate::sys::Mapping;
use std::sync::Arc;

pub struct MallocBdev {
    info: BdevInfo,
    mem: Arc<Mapping>,
    stats: StatsSet,
}

/// Creates (but does not register) a RAM bdev of `num_blocks` x `block_size`.
pub fn create(
    name: &str,
    num_blocks: u64,
    block_size: u32,
    uuid: Option<[u8; 16]>,
) -> Result<Arc<dyn Bdev>, BdevError> {
    check_geometry(name, block_size, num_blocks)?;
    let bytes = num_blocks
        .checked_mul(block_size as u64)
        .filter(|&b| b <= isize::MAX as u64)
        .ok_or_else(|| BdevError::InvalidParam {
            param: "num_blocks",
            why: format!("{num_blocks} blocks of {block_size} bytes overflow the address space"),
        })?;
    let mem = Mapping::anonymous(bytes as usize, crate::sys::hugepages_reserved() > 0).map_err(|e| {
        BdevError::InvalidParam {
            param: "num_blocks",
            why: format!("cannot allocate {bytes} bytes: {e}"),
        }
    })?;
    // Touch every page now, as SPDK's malloc bdev zeroes its buffer: an
    // untouched anonymous page reads from the kernel's shared zero page, which
    // would make reads of never-written blocks cache-hot and flatter the bdev.
    // SAFETY: the mapping is `bytes` long, freshly created and not yet shared.
    unsafe { std::ptr::write_bytes(mem.as_ptr(), 0, bytes as usize) };
    Ok(Arc::new(MallocBdev {
        info: BdevInfo::new(
            name,
            "Malloc disk",
            "malloc",
            uuid.unwrap_or_else(super::new_uuid),
            block_size,
            num_blocks,
            &OPS,
        ),
        mem: Arc::new(mem),
        stats: StatsSet::default(),
    }))
}

const OPS: [IoOp; 5] = IoOp::ALL;

impl Bdev for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        Ok(BdevChannel::new(
            &self.info.name,
            self.info.geometry(1),
            self.stats.new_channel(),
            Box::new(MallocChannel {
                mem: self.mem.clone(),
                block_size: self.info.block_size as usize,
                done: DoneQueue::default(),
            }),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
    fn config(&self) -> Option<(&'static str, serde_json::Value)> {
        Some((
            "bdev_malloc_create",
            serde_json::json!({
                "name": self.info.name,
                "num_blocks": self.info.num_blocks,
                "block_size": self.info.block_size,
                "uuid": super::uuid_to_string(&self.info.uuid),
            }),
        ))
    }
}

struct MallocChannel {
    mem: Arc<Mapping>,
    block_size: usize,
    done: DoneQueue,
}

impl ChannelBackend for MallocChannel {
    #[inline]
    fn submit(&mut self, mut io: IoRequest) -> Result<(), IoRequest> {
        if self.done.is_full() {
            return Err(io);
        }
        let off = io.offset_blocks as usize * self.block_size;
        let len = io.num_blocks as usize * self.block_size;
        let base = self.mem.as_ptr();
        match io.op {
            IoOp::Read => {
                if let Some(buf) = io.buf.as_mut() {
                    // SAFETY: the channel wrapper checked off+len <= device
                    // size and buf.len() == len, so both ranges are in bounds
                    // and do not overlap (different allocations). Concurrent
                    // I/O to the same blocks from other reactors may race on
                    // the bytes, as on any block device; u8 has no invalid
                    // values, and ordering such I/O is the caller's job.
                    unsafe { std::ptr::copy_nonoverlapping(base.add(off), buf.as_mut_ptr(), len) }
                }
            }
            IoOp::Write => {
                if let Some(buf) = io.buf.as_ref() {
                    // SAFETY: as for reads, with the copy in the other direction.
                    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), base.add(off), len) }
                }
            }
            IoOp::WriteZeroes | IoOp::Unmap => {
                // SAFETY: off+len is within the mapping (checked by the wrapper).
                unsafe { std::ptr::write_bytes(base.add(off), 0, len) }
            }
            IoOp::Flush => {}
        }
        self.done.complete(io);
        Ok(())
    }

    #[inline]
    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        self.done.poll(f)
    }
}
