//! The controller: reset and enable by the registers (honouring CAP.TO and CSTS.RDY), the
//! admin queue (driven synchronously on management threads), Identify, Number of Queues,
//! I/O queue pairs created and deleted on request, Abort, and a keeper thread that reaps
//! admin completions and notices a fatal controller (CSTS.CFS), which it resets: the
//! generation moves on, I/O queues of the old generation fail what they had in flight with
//! a clear error and their channels make new ones (`bdev.rs`).

use super::mem::{DmaMem, IovaAlloc, PoolMap, PAGE};
use super::queue::QueuePair;
use super::vfio::VfioDevice;
use super::PcieError;
use crate::spec::cmd::admin_opc;
use crate::spec::identify::{cns, IdentifyController, IdentifyNamespace};
use crate::spec::{Cqe, Plain, Sgl, Sqe, Status};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Controller registers (BAR0 offsets).
mod reg {
    pub const CAP: usize = 0x00;
    pub const VS: usize = 0x08;
    pub const CC: usize = 0x14;
    pub const CSTS: usize = 0x1C;
    pub const AQA: usize = 0x24;
    pub const ASQ: usize = 0x28;
    pub const ACQ: usize = 0x30;
}
const CC_EN: u32 = 1;
/// IOSQES 6 (64 bytes), IOCQES 4 (16 bytes), CSS NVM, MPS 4 KiB, round robin.
const CC_QUEUE_ENTRY_SIZES: u32 = (6 << 16) | (4 << 20);
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;
const ADMIN_DEPTH: u16 = 32;
/// Admin commands are answered within this (the controller is local).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPER_TICK: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets DPTR to PRP1/PRP2.
pub fn set_prps(sqe: &mut Sqe, prp1: u64, prp2: u64) {
    let b = prp2.to_le_bytes();
    sqe.sgl = Sgl {
        addr: prp1,
        length: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        rsvd: [b[4], b[5], b[6]],
        sgl_type: b[7],
    };
}

/// A namespace as Identify reported it.
#[derive(Clone, Copy, Debug)]
pub struct NsInfo {
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub nguid: [u8; 16],
}

/// A queue pair the controller has, for listings.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct QueueInfo {
    pub qid: u16,
    pub depth: u16,
}

struct Admin {
    q: QueuePair,
    /// Identify data and other admin transfers.
    buf: DmaMem,
}

pub struct PcieCtrlr {
    pub bdf: String,
    pub(crate) dev: Arc<VfioDevice>,
    pub(crate) iova: IovaAlloc,
    pub(crate) pools: PoolMap,
    pub cap: u64,
    pub vs: u32,
    pub dstrd: u32,
    pub id: Box<IdentifyController>,
    /// Largest transfer per command, bytes (MDTS, at most one PRP list page's worth).
    pub max_xfer: usize,
    /// I/O queues the controller granted (Number of Queues).
    pub io_queues: u16,
    /// Entries per I/O queue (MQES + 1, capped at 256).
    pub io_depth: u16,
    pub namespaces: Vec<NsInfo>,
    admin: Mutex<Admin>,
    qids: Mutex<Vec<u16>>,
    queues: Mutex<Vec<QueueInfo>>,
    /// Bumped by every reset: I/O queues of an older generation are gone.
    pub generation: AtomicU64,
    pub resets: AtomicU64,
    pub aborts: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl PcieCtrlr {
    /// Opens `bdf` through VFIO, resets and enables the controller, identifies it and its
    /// namespaces, maps the engine's buffer pools, and starts the keeper thread. Blocks.
    pub fn attach(bdf: &str) -> Result<Arc<PcieCtrlr>, PcieError> {
        let dev = Arc::new(VfioDevice::open(bdf)?);
        let iova = IovaAlloc::default();
        let cap = dev.read64(reg::CAP);
        let vs = dev.read32(reg::VS);
        let dstrd = ((cap >> 32) & 0xF) as u32;
        let mpsmin = (cap >> 48) & 0xF;
        if mpsmin != 0 {
            return Err(PcieError::Unsupported(format!(
                "{bdf}: minimum memory page size is {} KiB; this driver uses 4 KiB",
                4u64 << mpsmin
            )));
        }
        let admin = Admin {
            q: QueuePair::new(&dev, &iova, 0, ADMIN_DEPTH, dstrd)?,
            buf: DmaMem::new(&dev, &iova, PAGE)?,
        };
        let pools = PoolMap::map_all(&dev, &iova)?;
        let mqes = (cap & 0xFFFF) as u16;
        let mut c = PcieCtrlr {
            bdf: bdf.to_string(),
            dev,
            iova,
            pools,
            cap,
            vs,
            dstrd,
            id: Box::new(IdentifyController::zeroed()),
            max_xfer: 0,
            io_queues: 0,
            io_depth: mqes.saturating_add(1).min(256),
            namespaces: Vec::new(),
            admin: Mutex::new(admin),
            qids: Mutex::new(Vec::new()),
            queues: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            aborts: AtomicU64::new(0),
            stop: Arc::new(AtomicBool::new(false)),
        };
        c.enable()?;
        c.identify_all()?;
        log::info!(
            "nvme pcie {bdf}: {} (VS {:#x}, MQES {mqes}, DSTRD {dstrd}, max transfer {} KiB), {} I/O queues, namespaces {:?}, {} buffer pools mapped",
            crate::spec::get_str(&c.id.mn).trim(),
            vs,
            c.max_xfer >> 10,
            c.io_queues,
            c.namespaces.iter().map(|n| n.nsid).collect::<Vec<_>>(),
            c.pools.count()
        );
        let c = Arc::new(c);
        Keeper::start(&c)?;
        Ok(c)
    }

    /// CC.EN 0 (waiting CSTS.RDY 0), the admin queue registers, CC.EN 1 (waiting RDY 1),
    /// each within CAP.TO.
    fn enable(&self) -> Result<(), PcieError> {
        let to = Duration::from_millis(((self.cap >> 24) & 0xFF).max(1) * 500);
        let d = &self.dev;
        d.write32(reg::CC, d.read32(reg::CC) & !CC_EN);
        self.wait_rdy(false, to)?;
        let mut a = lock(&self.admin);
        a.q = QueuePair::new(&self.dev, &self.iova, 0, ADMIN_DEPTH, self.dstrd)?;
        let n = u32::from(ADMIN_DEPTH - 1);
        d.write32(reg::AQA, (n << 16) | n);
        d.write64(reg::ASQ, a.q.sq_iova());
        d.write64(reg::ACQ, a.q.cq_iova());
        drop(a);
        d.write32(reg::CC, CC_QUEUE_ENTRY_SIZES | CC_EN);
        self.wait_rdy(true, to)
    }

    fn wait_rdy(&self, want: bool, to: Duration) -> Result<(), PcieError> {
        let t0 = Instant::now();
        loop {
            let csts = self.dev.read32(reg::CSTS);
            if csts != u32::MAX && (csts & CSTS_RDY != 0) == want {
                return Ok(());
            }
            if t0.elapsed() > to {
                return Err(PcieError::Timeout(format!(
                    "CSTS.RDY {} within CAP.TO ({} ms), CSTS {csts:#x}",
                    u8::from(want),
                    to.as_millis()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether the controller reports a fatal status (or has vanished: all ones).
    pub fn fatal(&self) -> bool {
        let csts = self.dev.read32(reg::CSTS);
        csts == u32::MAX || csts & CSTS_CFS != 0
    }

    fn identify_all(&mut self) -> Result<(), PcieError> {
        let d = self.identify(cns::CONTROLLER, 0)?;
        *self.id = IdentifyController::read_from(&d).ok_or(PcieError::Protocol("short Identify"))?;
        let mdts = usize::from(self.id.mdts);
        let by_mdts = if mdts == 0 { usize::MAX } else { PAGE << mdts };
        // One PRP list page holds 512 entries: up to 2 MiB (plus PRP1's page).
        self.max_xfer = by_mdts.min(512 * PAGE);
        let want = 63u32;
        let dw0 = self.admin_sync(Sqe {
            opc: admin_opc::SET_FEATURES,
            cdw10: 0x07,
            cdw11: (want << 16) | want,
            ..Sqe::default()
        })?;
        self.io_queues = (((dw0 & 0xFFFF).min(dw0 >> 16)) + 1).min(64) as u16;
        *lock(&self.qids) = (1..=self.io_queues).rev().collect();
        let list = self.identify(cns::ACTIVE_NS_LIST, 0)?;
        let nsids: Vec<u32> = list
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&n| n != 0)
            .collect();
        self.namespaces.clear();
        for nsid in nsids {
            let d = self.identify(cns::NAMESPACE, nsid)?;
            let ns = IdentifyNamespace::read_from(&d).ok_or(PcieError::Protocol("short Identify Namespace"))?;
            let lbads = (ns.lbaf[usize::from(ns.flbas & 0xF)] >> 16) & 0xFF;
            if ns.nsze == 0 || !(9..=12).contains(&lbads) {
                log::warn!(
                    "nvme pcie {}: namespace {nsid} skipped (size 0 or block size 2^{lbads})",
                    self.bdf
                );
                continue;
            }
            self.namespaces.push(NsInfo {
                nsid,
                block_size: 1 << lbads,
                num_blocks: ns.nsze,
                nguid: ns.nguid,
            });
        }
        Ok(())
    }

    fn identify(&self, cns_: u8, nsid: u32) -> Result<Vec<u8>, PcieError> {
        let mut s = Sqe {
            opc: admin_opc::IDENTIFY,
            nsid,
            cdw10: u32::from(cns_),
            ..Sqe::default()
        };
        let mut a = lock(&self.admin);
        set_prps(&mut s, a.buf.iova(), 0);
        run_admin(&mut a, s)?;
        let mut out = vec![0u8; PAGE];
        // SAFETY: the admin buffer is one page of our DMA memory; the command that filled
        // it has completed and the admin lock, held, keeps other commands off it.
        unsafe { std::ptr::copy_nonoverlapping(a.buf.ptr(), out.as_mut_ptr(), PAGE) };
        Ok(out)
    }

    /// Runs an admin command to completion (management threads); returns DW0.
    pub fn admin_sync(&self, s: Sqe) -> Result<u32, PcieError> {
        run_admin(&mut lock(&self.admin), s)
    }

    /// Creates an I/O queue pair (CQ then SQ, physically contiguous, no interrupts).
    /// Management path (a channel being opened); the queue is polled by its owner.
    pub fn create_io_qpair(&self) -> Result<QueuePair, PcieError> {
        let qid = lock(&self.qids)
            .pop()
            .ok_or_else(|| PcieError::Unsupported(format!("{}: all {} I/O queues in use", self.bdf, self.io_queues)))?;
        let r = self.try_create(qid);
        if r.is_err() {
            lock(&self.qids).push(qid);
        }
        r
    }

    fn try_create(&self, qid: u16) -> Result<QueuePair, PcieError> {
        let q = QueuePair::new(&self.dev, &self.iova, qid, self.io_depth, self.dstrd)?;
        let size = u32::from(q.depth() - 1) << 16;
        let mut cq = Sqe {
            opc: admin_opc::CREATE_IO_CQ,
            cdw10: size | u32::from(qid),
            cdw11: 1, // physically contiguous, interrupts off
            ..Sqe::default()
        };
        set_prps(&mut cq, q.cq_iova(), 0);
        self.admin_sync(cq)?;
        let mut sq = Sqe {
            opc: admin_opc::CREATE_IO_SQ,
            cdw10: size | u32::from(qid),
            cdw11: (u32::from(qid) << 16) | 1,
            ..Sqe::default()
        };
        set_prps(&mut sq, q.sq_iova(), 0);
        if let Err(e) = self.admin_sync(sq) {
            let _ = self.delete_queue(admin_opc::DELETE_IO_CQ, qid);
            return Err(e);
        }
        lock(&self.queues).push(QueueInfo { qid, depth: q.depth() });
        Ok(q)
    }

    fn delete_queue(&self, opc: u8, qid: u16) -> Result<u32, PcieError> {
        self.admin_sync(Sqe {
            opc,
            cdw10: u32::from(qid),
            ..Sqe::default()
        })
    }

    /// Deletes queue pair `q` (SQ then CQ) if it belongs to the current generation.
    pub fn delete_io_qpair(&self, q: QueuePair, generation: u64) {
        let qid = q.qid;
        if generation == self.generation.load(Ordering::Acquire) {
            let _ = self.delete_queue(admin_opc::DELETE_IO_SQ, qid);
            let _ = self.delete_queue(admin_opc::DELETE_IO_CQ, qid);
        }
        if generation == self.generation.load(Ordering::Acquire) {
            // After a reset every qid is free again already.
            lock(&self.queues).retain(|i| i.qid != qid);
            lock(&self.qids).push(qid);
        }
        drop(q);
    }

    /// Asks the controller to abort command `cid` of queue `qid` (a timed-out command).
    /// Does not wait for the answer beyond the admin round trip.
    pub fn abort(&self, qid: u16, cid: u16) -> Result<(), PcieError> {
        self.aborts.fetch_add(1, Ordering::Relaxed);
        self.admin_sync(Sqe {
            opc: admin_opc::ABORT,
            cdw10: (u32::from(cid) << 16) | u32::from(qid),
            ..Sqe::default()
        })
        .map(|_| ())
    }

    /// Resets the controller (disable, enable, admin queue anew): every I/O queue is gone;
    /// the generation moves so their owners fail what they had and make new ones.
    pub fn reset(&self) -> Result<(), PcieError> {
        log::warn!("nvme pcie {}: resetting the controller", self.bdf);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.resets.fetch_add(1, Ordering::Relaxed);
        lock(&self.queues).clear();
        *lock(&self.qids) = (1..=self.io_queues).rev().collect();
        self.enable()?;
        let want = u32::from(self.io_queues - 1);
        self.admin_sync(Sqe {
            opc: admin_opc::SET_FEATURES,
            cdw10: 0x07,
            cdw11: (want << 16) | want,
            ..Sqe::default()
        })?;
        Ok(())
    }

    /// The I/O queues in use.
    pub fn queues(&self) -> Vec<QueueInfo> {
        lock(&self.queues).clone()
    }

    /// Status of an I/O completion as an error message.
    pub fn status_error(s: Status) -> String {
        format!("NVMe status {s}")
    }
}

impl Drop for PcieCtrlr {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Orderly shutdown: CC.SHN normal, then disable.
        let cc = self.dev.read32(reg::CC);
        self.dev.write32(reg::CC, (cc & !(3 << 14)) | (1 << 14));
        let t0 = Instant::now();
        while self.dev.read32(reg::CSTS) & (3 << 2) != (2 << 2) && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.dev.write32(reg::CC, 0);
    }
}

/// Submits `s` on the admin queue and polls until it completes (or times out).
fn run_admin(a: &mut Admin, mut s: Sqe) -> Result<u32, PcieError> {
    let cid = a.q.alloc_cid().ok_or(PcieError::Protocol("admin queue full"))?;
    s.cid = cid;
    a.q.submit(&s);
    let t0 = Instant::now();
    let mut got: Option<Cqe> = None;
    while got.is_none() {
        a.q.poll(&mut |c| {
            if c.cid == cid {
                got = Some(c);
            }
        });
        if got.is_none() {
            if t0.elapsed() > ADMIN_TIMEOUT {
                return Err(PcieError::Timeout(format!("admin command {:#x}", s.opc)));
            }
            std::hint::spin_loop();
        }
    }
    let c = got.expect("set above");
    let st = c.status();
    if !st.is_success() {
        return Err(PcieError::Status(st));
    }
    Ok(c.dw0)
}

/// Polls for a fatal controller and resets it. Holds only a weak reference.
struct Keeper;

impl Keeper {
    fn start(c: &Arc<PcieCtrlr>) -> Result<(), PcieError> {
        let weak = Arc::downgrade(c);
        let stop = c.stop.clone();
        std::thread::Builder::new()
            .name(format!("nvme-{}", c.bdf))
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(KEEPER_TICK);
                    let Some(c) = weak.upgrade() else { return };
                    if c.fatal() {
                        log::error!("nvme pcie {}: controller fatal status (CSTS.CFS)", c.bdf);
                        if let Err(e) = c.reset() {
                            log::error!("nvme pcie {}: reset failed: {e}", c.bdf);
                        }
                    }
                }
            })
            .map_err(|e| PcieError::Vfio(format!("keeper thread: {e}")))?;
        Ok(())
    }
}
