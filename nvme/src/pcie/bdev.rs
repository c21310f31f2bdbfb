//! One bdev per namespace of a PCIe controller. Each channel owns an I/O queue pair (made
//! when the channel opens, on the management path of whoever opens it) and drives it from
//! its reactor's poll: no lock, no allocation and no system call per I/O (doorbells are
//! stores to the mapped BAR).
//!
//! A request becomes one or more commands (read and write split at the controller's
//! maximum transfer, write zeroes at 65,536 blocks); it completes when its last command
//! does, with the first error any of them had. Buffers from the engine's pools are handed
//! to the device by IOVA; any other buffer goes through the channel's bounce slots (counted
//! in `bounced`). A command older than [`COMMAND_TIMEOUT`] is aborted; if it still has not
//! completed one timeout later the controller is reset. After a reset (asked for, or the
//! keeper thread's answer to a fatal status) the channel fails everything it had in flight
//! with an error naming the reset and makes a new queue pair.

use super::ctrlr::{set_prps, NsInfo, PcieCtrlr};
use super::mem::{DmaMem, PAGE};
use super::queue::QueuePair;
use crate::spec::cmd::io_opc;
use crate::spec::{Cqe, Sqe};
use engine::bdev::{
    Bdev, BdevChannel, BdevError, BdevInfo, ChannelBackend, IoCompletion, IoOp, IoRequest, IoStats, StatsSet,
    CHANNEL_QUEUE_DEPTH_MAX,
};
use engine::buf::DmaBuf;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const OPS: [IoOp; 5] = IoOp::ALL;
/// A command not answered within this is aborted; twice this, the controller is reset.
pub const COMMAND_TIMEOUT_NS: u64 = 30_000_000_000;
/// Size and number of a channel's bounce slots (buffers outside the mapped pools).
const BOUNCE_SLOT: usize = 128 << 10;
const BOUNCE_SLOTS: usize = 16;
/// Write Zeroes NLB is 16 bits.
const WRITE_ZEROES_BLOCKS_MAX: u64 = 1 << 16;
/// How often the channel looks for timed-out commands.
const TIMEOUT_SCAN_NS: u64 = 100_000_000;

/// A namespace of a PCIe controller as a bdev.
pub struct PcieBdev {
    info: BdevInfo,
    ns: NsInfo,
    ctrlr: Arc<PcieCtrlr>,
    stats: StatsSet,
    /// Totals over the bdev's channels (management queries).
    pub bounced: Arc<AtomicU64>,
    saves_config: AtomicBool,
}

impl PcieBdev {
    /// Namespace `nsid` of `ctrlr` as bdev `name` (not registered).
    pub fn new(ctrlr: &Arc<PcieCtrlr>, name: &str, nsid: u32) -> Result<Arc<PcieBdev>, BdevError> {
        let ns = *ctrlr
            .namespaces
            .iter()
            .find(|n| n.nsid == nsid)
            .ok_or_else(|| BdevError::NotFound(format!("{} namespace {nsid}", ctrlr.bdf)))?;
        let uuid = if ns.nguid == [0; 16] {
            engine::bdev::new_uuid()
        } else {
            ns.nguid
        };
        Ok(Arc::new(PcieBdev {
            info: BdevInfo::new(name, "NVMe disk", "nvme_pcie", uuid, ns.block_size, ns.num_blocks, &OPS),
            ns,
            ctrlr: ctrlr.clone(),
            stats: StatsSet::default(),
            bounced: Arc::new(AtomicU64::new(0)),
            saves_config: AtomicBool::new(false),
        }))
    }

    pub fn ctrlr(&self) -> &Arc<PcieCtrlr> {
        &self.ctrlr
    }

    pub fn nsid(&self) -> u32 {
        self.ns.nsid
    }

    /// Makes this bdev carry its controller's attach call in `save_config`.
    pub fn save_controller_config(&self) {
        self.saves_config.store(true, Ordering::Release);
    }
}

impl Bdev for PcieBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let q = self
            .ctrlr
            .create_io_qpair()
            .map_err(|e| BdevError::Channel(format!("{}: {e}", self.info.name)))?;
        let bounce = DmaMem::new(&self.ctrlr.dev, &self.ctrlr.iova, BOUNCE_SLOT * BOUNCE_SLOTS)
            .map_err(|e| BdevError::Channel(format!("{}: {e}", self.info.name)))?;
        let backend = PcieChannel::new(self.ctrlr.clone(), q, self.ns, bounce, self.bounced.clone());
        Ok(BdevChannel::new(
            &self.info.name,
            self.info.geometry(PAGE),
            self.stats.new_channel(),
            Box::new(backend),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
    fn config_entries(&self) -> Vec<(&'static str, serde_json::Value)> {
        if !self.saves_config.load(Ordering::Acquire) {
            return Vec::new();
        }
        let name = self
            .info
            .name
            .strip_suffix(&format!("n{}", self.ns.nsid))
            .unwrap_or(&self.info.name);
        vec![(
            "bdev_nvme_attach_controller",
            serde_json::json!({ "name": name, "trtype": "PCIe", "traddr": self.ctrlr.bdf }),
        )]
    }
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({ "nvme": [{
            "pci_address": self.ctrlr.bdf,
            "trid": { "trtype": "PCIe", "traddr": self.ctrlr.bdf },
            "ctrlr_data": {
                "model_number": crate::spec::get_str(&self.ctrlr.id.mn).trim(),
                "serial_number": crate::spec::get_str(&self.ctrlr.id.sn).trim(),
                "firmware_revision": crate::spec::get_str(&self.ctrlr.id.fr).trim(),
            },
            "ns_data": { "id": self.ns.nsid },
            "max_transfer_bytes": self.ctrlr.max_xfer,
            "bounced": self.bounced.load(Ordering::Relaxed),
        }] })
    }
}

/// A request in flight (one or more commands).
struct Req {
    op: IoOp,
    slba: u64,
    blocks: u64,
    user: u64,
    buf: Option<DmaBuf>,
    /// Bytes (read/write) or blocks (write zeroes) already submitted.
    next: u64,
    total: u64,
    inflight: u32,
    err: Option<String>,
    /// Not in a mapped pool: goes through bounce slots.
    bounce: bool,
}

/// A command in flight.
#[derive(Clone, Copy, Default)]
struct Cmd {
    req: usize,
    /// Byte offset and length of its data in the request (read/write).
    off: u64,
    len: u64,
    bounce: Option<u16>,
    submitted_ns: u64,
    aborted: bool,
}

struct PcieChannel {
    ctrlr: Arc<PcieCtrlr>,
    q: Option<QueuePair>,
    gen: u64,
    ns: NsInfo,
    reqs: Vec<Option<Req>>,
    free_reqs: Vec<usize>,
    pending: VecDeque<usize>,
    cmds: Vec<Cmd>,
    bounce: DmaMem,
    free_bounce: Vec<u16>,
    bounced: Arc<AtomicU64>,
    done: VecDeque<IoCompletion>,
    last_scan_ns: u64,
    /// The time of the last poll (one clock read per poll, not per command).
    now_ns: u64,
    chunk_max: u64,
}

impl PcieChannel {
    fn new(ctrlr: Arc<PcieCtrlr>, q: QueuePair, ns: NsInfo, bounce: DmaMem, bounced: Arc<AtomicU64>) -> PcieChannel {
        let depth = usize::from(q.depth());
        let gen = ctrlr.generation.load(Ordering::Acquire);
        let chunk_max = ctrlr.max_xfer as u64;
        PcieChannel {
            ctrlr,
            q: Some(q),
            gen,
            ns,
            reqs: (0..CHANNEL_QUEUE_DEPTH_MAX).map(|_| None).collect(),
            free_reqs: (0..CHANNEL_QUEUE_DEPTH_MAX).rev().collect(),
            pending: VecDeque::with_capacity(CHANNEL_QUEUE_DEPTH_MAX),
            cmds: vec![Cmd::default(); depth],
            bounce,
            free_bounce: (0..BOUNCE_SLOTS as u16).rev().collect(),
            bounced,
            done: VecDeque::with_capacity(CHANNEL_QUEUE_DEPTH_MAX),
            last_scan_ns: engine::clock::now_ns(),
            now_ns: engine::clock::now_ns(),
            chunk_max,
        }
    }

    /// Submits commands for pending requests while the queue (and bounce slots) allow.
    fn pump(&mut self) {
        while let Some(&r) = self.pending.front() {
            if !self.submit_next(r) {
                return;
            }
            let req = self.reqs[r].as_ref().expect("pending request exists");
            if req.next >= req.total {
                self.pending.pop_front();
            }
        }
    }

    /// Submits the next command of request `r`; false when out of command IDs or bounce.
    // One piece: every arm fills the same SQE and command from the queue, the request and
    // the bounce slots, borrowed at once from disjoint fields; split into methods each
    // would have to take all of them apart again.
    fn submit_next(&mut self, r: usize) -> bool {
        let Some(q) = self.q.as_mut() else { return false };
        let Some(cid) = q.alloc_cid() else { return false };
        let req = self.reqs[r].as_mut().expect("request exists");
        let bs = u64::from(self.ns.block_size);
        let nsid = self.ns.nsid;
        let mut cmd = Cmd {
            req: r,
            // The last poll's time: a command is at most one poll older than this says,
            // which a 30 s timeout does not notice.
            submitted_ns: self.now_ns,
            ..Cmd::default()
        };
        let mut sqe = Sqe {
            nsid,
            cid,
            ..Sqe::default()
        };
        match req.op {
            IoOp::Read | IoOp::Write => {
                let limit = if req.bounce {
                    self.chunk_max.min(BOUNCE_SLOT as u64)
                } else {
                    self.chunk_max
                };
                let len = (req.total - req.next).min(limit);
                cmd.off = req.next;
                cmd.len = len;
                let (list, list_iova) = q.prp_list(cid);
                let buf = req.buf.as_ref().expect("reads and writes carry a buffer");
                let prps = if req.bounce {
                    let Some(slot) = self.free_bounce.pop() else {
                        q.release_cid(cid);
                        return false;
                    };
                    cmd.bounce = Some(slot);
                    let biova = self.bounce.iova() + (usize::from(slot) * BOUNCE_SLOT) as u64;
                    if req.op == IoOp::Write {
                        let src = &buf[cmd.off as usize..(cmd.off + len) as usize];
                        // SAFETY: the slot has BOUNCE_SLOT ≥ len bytes of our DMA memory,
                        // owned by this command until it completes.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                src.as_ptr(),
                                self.bounce.ptr().add(usize::from(slot) * BOUNCE_SLOT),
                                len as usize,
                            )
                        };
                    }
                    super::mem::build_prps(biova, len as usize, list, list_iova)
                } else {
                    let base = self.ctrlr.pools.iova_of(buf).expect("checked at submit") + cmd.off;
                    super::mem::build_prps(base, len as usize, list, list_iova)
                };
                let Ok((p1, p2)) = prps else {
                    q.release_cid(cid);
                    return false;
                };
                set_prps(&mut sqe, p1, p2);
                let slba = req.slba + cmd.off / bs;
                sqe.opc = if req.op == IoOp::Read {
                    io_opc::READ
                } else {
                    io_opc::WRITE
                };
                sqe.cdw10 = slba as u32;
                sqe.cdw11 = (slba >> 32) as u32;
                sqe.cdw12 = (len / bs - 1) as u32;
                req.next += len;
            }
            IoOp::Flush => {
                sqe.opc = io_opc::FLUSH;
                req.next = req.total;
            }
            IoOp::WriteZeroes => {
                let n = (req.total - req.next).min(WRITE_ZEROES_BLOCKS_MAX);
                let slba = req.slba + req.next;
                sqe.opc = io_opc::WRITE_ZEROES;
                sqe.cdw10 = slba as u32;
                sqe.cdw11 = (slba >> 32) as u32;
                sqe.cdw12 = (n - 1) as u32;
                req.next += n;
            }
            IoOp::Unmap => {
                // One range, written to the command's PRP list page (its data buffer here).
                let (list, list_iova) = q.prp_list(cid);
                list[0] = 0; // context attributes and length (bytes 0..8)
                let nlb = req.blocks as u32;
                list[0] = u64::from(nlb) << 32;
                list[1] = req.slba;
                set_prps(&mut sqe, list_iova, 0);
                sqe.opc = io_opc::DATASET_MANAGEMENT;
                sqe.cdw10 = 0; // one range
                sqe.cdw11 = 1 << 2; // deallocate
                req.next = req.total;
            }
        }
        req.inflight += 1;
        self.cmds[usize::from(cid)] = cmd;
        q.submit(&sqe);
        true
    }

    fn on_completion(&mut self, c: Cqe) {
        let cmd = self.cmds[usize::from(c.cid)];
        let st = c.status();
        let Some(req) = self.reqs[cmd.req].as_mut() else { return };
        req.inflight -= 1;
        if !st.is_success() && req.err.is_none() {
            req.err = Some(PcieCtrlr::status_error(st));
        }
        if let Some(slot) = cmd.bounce {
            if req.op == IoOp::Read && st.is_success() {
                if let Some(b) = req.buf.as_mut() {
                    let dst = &mut b[cmd.off as usize..(cmd.off + cmd.len) as usize];
                    // SAFETY: the slot holds cmd.len bytes the device wrote; the command
                    // completed, so nothing writes them any more.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            self.bounce.ptr().add(usize::from(slot) * BOUNCE_SLOT),
                            dst.as_mut_ptr(),
                            cmd.len as usize,
                        )
                    };
                }
            }
            self.free_bounce.push(slot);
        }
        self.finish_if_done(cmd.req);
    }

    fn finish_if_done(&mut self, r: usize) {
        let done = self.reqs[r]
            .as_ref()
            .is_some_and(|q| q.inflight == 0 && q.next >= q.total);
        if !done {
            return;
        }
        let req = self.reqs[r].take().expect("checked");
        self.free_reqs.push(r);
        self.done.push_back(IoCompletion {
            user_data: req.user,
            result: match req.err {
                None => Ok(()),
                Some(e) => Err(BdevError::Io(e)),
            },
            buf: req.buf,
        });
    }

    /// The controller was reset: everything in flight failed; make a new queue pair.
    fn after_reset(&mut self) {
        let gen = self.ctrlr.generation.load(Ordering::Acquire);
        if let Some(q) = self.q.take() {
            let qid = q.qid;
            self.ctrlr.delete_io_qpair(q, self.gen);
            log::warn!("nvme pcie {}: queue {qid} lost to a controller reset", self.ctrlr.bdf);
        }
        let why = format!("controller {} was reset; the command may not have run", self.ctrlr.bdf);
        for r in 0..self.reqs.len() {
            if let Some(req) = self.reqs[r].as_mut() {
                if req.inflight > 0 || req.next > 0 {
                    req.err.get_or_insert_with(|| why.clone());
                    req.inflight = 0;
                    req.next = req.total;
                    self.pending.retain(|&p| p != r);
                    self.finish_if_done(r);
                }
            }
        }
        self.free_bounce = (0..BOUNCE_SLOTS as u16).rev().collect();
        match self.ctrlr.create_io_qpair() {
            Ok(q) => {
                self.q = Some(q);
                self.gen = gen;
            }
            Err(e) => log::error!("nvme pcie {}: new queue after reset: {e}", self.ctrlr.bdf),
        }
    }

    /// Aborts commands older than the timeout; asks for a reset past twice that.
    fn scan_timeouts(&mut self, now: u64) {
        self.last_scan_ns = now;
        let Some(q) = self.q.as_ref() else { return };
        let qid = q.qid;
        let mut reset = false;
        for (cid, c) in self.cmds.iter_mut().enumerate() {
            let live = self.reqs[c.req].as_ref().is_some_and(|r| r.inflight > 0);
            if !live || c.submitted_ns == 0 || now.saturating_sub(c.submitted_ns) < COMMAND_TIMEOUT_NS {
                continue;
            }
            if !c.aborted {
                c.aborted = true;
                log::warn!(
                    "nvme pcie {}: command {cid} of queue {qid} timed out: aborting it",
                    self.ctrlr.bdf
                );
                let _ = self.ctrlr.abort(qid, cid as u16);
            } else if now.saturating_sub(c.submitted_ns) >= 2 * COMMAND_TIMEOUT_NS {
                reset = true;
            }
        }
        if reset {
            if let Err(e) = self.ctrlr.reset() {
                log::error!("nvme pcie {}: reset after a timeout failed: {e}", self.ctrlr.bdf);
            }
        }
    }
}

impl ChannelBackend for PcieChannel {
    fn submit(&mut self, mut io: IoRequest) -> Result<(), IoRequest> {
        let Some(r) = self.free_reqs.pop() else { return Err(io) };
        let bs = u64::from(self.ns.block_size);
        let bounce = match (&io.op, io.buf.as_ref()) {
            (IoOp::Read | IoOp::Write, Some(b)) => self.ctrlr.pools.iova_of(b).is_none(),
            _ => false,
        };
        if bounce {
            self.bounced.fetch_add(1, Ordering::Relaxed);
        }
        let blocks = u64::from(io.num_blocks);
        let total = match io.op {
            IoOp::Read | IoOp::Write => blocks * bs,
            IoOp::WriteZeroes => blocks,
            IoOp::Flush | IoOp::Unmap => 1,
        };
        self.reqs[r] = Some(Req {
            op: io.op,
            slba: io.offset_blocks,
            blocks,
            user: io.user_data,
            buf: io.buf.take(),
            next: 0,
            total,
            inflight: 0,
            err: None,
            bounce,
        });
        self.pending.push_back(r);
        self.pump();
        Ok(())
    }

    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        if self.ctrlr.generation.load(Ordering::Acquire) != self.gen {
            self.after_reset();
        }
        self.now_ns = engine::clock::now_ns();
        let mut got: [Option<Cqe>; 64] = [None; 64];
        while let Some(q) = self.q.as_mut() {
            let mut n = 0;
            // Reap in batches of 64 so completions can be handled with `self` borrowed.
            q.poll_max(got.len(), &mut |c| {
                got[n] = Some(c);
                n += 1;
            });
            for c in got.iter_mut().take(n) {
                if let Some(c) = c.take() {
                    self.on_completion(c);
                }
            }
            if n < got.len() {
                break;
            }
        }
        self.pump();
        let now = self.now_ns;
        if now.saturating_sub(self.last_scan_ns) > TIMEOUT_SCAN_NS {
            self.scan_timeouts(now);
        }
        let mut k = 0;
        while let Some(c) = self.done.pop_front() {
            f(c);
            k += 1;
        }
        k
    }
}

impl Drop for PcieChannel {
    fn drop(&mut self) {
        if let Some(q) = self.q.take() {
            self.ctrlr.delete_io_qpair(q, self.gen);
        }
    }
}
