//! One submission/completion queue pair in DMA memory, driven by polling: the SQ ring
//! (64-byte entries), the CQ ring (16-byte entries, completion found by its phase tag), a
//! PRP list page per command ID, and the two doorbells at CAP.DSTRD stride.
//!
//! Layout of the queue's DMA memory: SQ at 0, CQ at the next page boundary, then one 4 KiB
//! PRP list page per command ID. At most `depth - 1` commands are outstanding, so the SQ
//! can never overrun its head (a command's SQ slot is consumed before it completes).

use super::mem::{DmaMem, IovaAlloc, PAGE};
use super::vfio::VfioDevice;
use super::PcieError;
use crate::spec::{Cqe, Sqe};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

/// Offset of the doorbells in BAR0.
const DOORBELL_BASE: usize = 0x1000;

pub struct QueuePair {
    dev: Arc<VfioDevice>,
    pub qid: u16,
    depth: u16,
    mem: DmaMem,
    cq_off: usize,
    prp_off: usize,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    sq_db: usize,
    cq_db: usize,
    free: Vec<u16>,
    busy: Vec<bool>,
}

impl QueuePair {
    /// Queue memory for `depth` entries (2..=MQES+1); not yet known to the controller.
    pub fn new(
        dev: &Arc<VfioDevice>,
        iova: &IovaAlloc,
        qid: u16,
        depth: u16,
        dstrd: u32,
    ) -> Result<QueuePair, PcieError> {
        let depth = depth.max(2);
        let sq_bytes = usize::from(depth) * 64;
        let cq_off = sq_bytes.div_ceil(PAGE) * PAGE;
        let prp_off = cq_off + (usize::from(depth) * 16).div_ceil(PAGE) * PAGE;
        let mem = DmaMem::new(dev, iova, prp_off + usize::from(depth) * PAGE)?;
        let stride = 4usize << dstrd;
        Ok(QueuePair {
            dev: dev.clone(),
            qid,
            depth,
            mem,
            cq_off,
            prp_off,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            sq_db: DOORBELL_BASE + 2 * usize::from(qid) * stride,
            cq_db: DOORBELL_BASE + (2 * usize::from(qid) + 1) * stride,
            // Highest CIDs first out, so CID 0.. are used first (easier to read in traces).
            free: (0..depth - 1).rev().collect(),
            busy: vec![false; usize::from(depth)],
        })
    }

    pub fn depth(&self) -> u16 {
        self.depth
    }
    pub fn sq_iova(&self) -> u64 {
        self.mem.iova()
    }
    pub fn cq_iova(&self) -> u64 {
        self.mem.iova() + self.cq_off as u64
    }
    /// Commands that can be outstanding at once.
    pub fn capacity(&self) -> usize {
        usize::from(self.depth) - 1
    }
    pub fn outstanding(&self) -> usize {
        self.capacity() - self.free.len()
    }

    /// The PRP list page of command `cid`: its entries and its IOVA.
    pub fn prp_list(&mut self, cid: u16) -> (&mut [u64], u64) {
        let off = self.prp_off + usize::from(cid) * PAGE;
        // SAFETY: the page lies inside this queue's DMA memory (cid < depth), is 8-byte
        // aligned, and belongs to command `cid` alone until it completes; the device only
        // reads it after the doorbell write that follows.
        let list = unsafe { std::slice::from_raw_parts_mut(self.mem.ptr().add(off) as *mut u64, PAGE / 8) };
        (list, self.mem.iova() + off as u64)
    }

    /// Takes a command ID; None when the queue is full (back-pressure).
    pub fn alloc_cid(&mut self) -> Option<u16> {
        let cid = self.free.pop()?;
        self.busy[usize::from(cid)] = true;
        Some(cid)
    }

    /// Returns a command ID that was taken but not submitted.
    pub fn release_cid(&mut self, cid: u16) {
        if std::mem::replace(&mut self.busy[usize::from(cid)], false) {
            self.free.push(cid);
        }
    }

    /// Writes `sqe` (its `cid` taken with `alloc_cid`) into the SQ and rings the doorbell.
    pub fn submit(&mut self, sqe: &Sqe) {
        let slot = usize::from(self.sq_tail) * 64;
        // SAFETY: the slot is inside the SQ ring of this queue's DMA memory and 64-byte
        // aligned; the controller does not read it before the doorbell below moves past it.
        unsafe { std::ptr::write_volatile(self.mem.ptr().add(slot) as *mut Sqe, *sqe) };
        self.sq_tail = (self.sq_tail + 1) % self.depth;
        // The entry must be visible to the device before the doorbell write.
        fence(Ordering::Release);
        self.dev.write32(self.sq_db, u32::from(self.sq_tail));
    }

    /// Reaps every new completion, handing each to `f`; rings the CQ head doorbell once.
    /// The completion's CID goes back to the free list before `f` sees it.
    pub fn poll(&mut self, f: &mut dyn FnMut(Cqe)) -> usize {
        self.poll_max(usize::MAX, f)
    }

    /// [`QueuePair::poll`], reaping at most `max` completions.
    pub fn poll_max(&mut self, max: usize, f: &mut dyn FnMut(Cqe)) -> usize {
        let mut n = 0;
        while n < max {
            let at = self.cq_off + usize::from(self.cq_head) * 16;
            // SAFETY: the entry is inside the CQ ring of this queue's DMA memory, 16-byte
            // aligned; the device writes it, so it is read volatilely.
            let cqe = unsafe { std::ptr::read_volatile(self.mem.ptr().add(at) as *const Cqe) };
            if (cqe.status & 1 == 1) != self.phase {
                break;
            }
            // Read the rest of the entry only after its phase said it is new.
            fence(Ordering::Acquire);
            self.cq_head += 1;
            if self.cq_head == self.depth {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            if self.busy.get(usize::from(cqe.cid)).copied().unwrap_or(false) {
                self.release_cid(cqe.cid);
                f(cqe);
            } else {
                log::warn!("nvme pcie: queue {}: completion for unknown CID {}", self.qid, cqe.cid);
            }
            n += 1;
        }
        if n > 0 {
            self.dev.write32(self.cq_db, u32::from(self.cq_head));
        }
        n
    }
}
