//! A bdev backed by a remote NVMe/TCP namespace: `spdk_nvme_perf -r` through the engine's
//! bdev layer, so anything that drives a bdev (the perf harness with its verification,
//! histograms and per-core figures; a replicated volume's base) can drive a remote target.
//!
//! Threads: [`connect`] (management) connects the admin queue, identifies the namespace and
//! starts a keep-alive thread that owns the admin queue's polling. Each channel is one I/O
//! queue pair (one TCP connection) owned and polled by the reactor that opened it: submit
//! encodes the command into the queue pair's send buffer, poll moves bytes and reports
//! completions, nothing locks or allocates per I/O (buffers move through by value). Queue
//! pairs are connected ahead of time with [`NvmeHostBdev::preconnect`] so that opening a
//! channel on a reactor does not block it; a channel opened without one connects inline
//! (blocking that reactor for the handshake, logged).
//!
//! A queue pair that fails (target gone, protocol error) completes everything in flight with
//! an I/O error and every later request too; it does not reconnect.

use super::trid::TransportId;
use super::{cmd, Controller, Data, HostCompletion, HostError, HostOpts, Qpair};
use crate::spec::log::SUBTYPE_NVME;
use crate::spec::{fabrics, Sqe, Status};
use engine::bdev::{
    Bdev, BdevChannel, BdevError, ChannelBackend, Geometry, IoCompletion, IoOp, IoRequest, IoStats, StatsSet,
    CHANNEL_QUEUE_DEPTH_MAX,
};
use engine::buf::DmaBuf;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Keep-alive thread period.
const TICK: Duration = Duration::from_millis(100);

const OPS: [IoOp; 5] = IoOp::ALL;

/// Settings of [`connect`].
#[derive(Clone, Debug)]
pub struct HostBdevOpts {
    /// Host options (digests, timeouts, host NQN).
    pub host: HostOpts,
    /// Entries per I/O queue pair (capped at the controller's MQES + 1).
    pub queue_entries: u16,
}

impl Default for HostBdevOpts {
    fn default() -> Self {
        HostBdevOpts {
            host: HostOpts::default(),
            queue_entries: 1024,
        }
    }
}

/// The NVMe/TCP-backed bdev. See the module docs.
pub struct NvmeHostBdev {
    name: String,
    uuid: [u8; 16],
    nsid: u32,
    block_size: u32,
    num_blocks: u64,
    subnqn: String,
    addr: SocketAddr,
    /// `None` once dropped (disconnected).
    ctrlr: Arc<Mutex<Option<Controller>>>,
    spare: Mutex<Vec<Qpair>>,
    stats: StatsSet,
    stop: Arc<AtomicBool>,
    ka: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Connects to the namespace `trid` names (through the discovery service when it names no
/// subsystem: the first NVM subsystem of the log, as `spdk_nvme_perf` does; the first active
/// namespace when it names none) and returns it as bdev `name` (not registered). Blocks.
pub fn connect(name: &str, trid: &TransportId, opts: &HostBdevOpts) -> Result<Arc<NvmeHostBdev>, HostError> {
    let mut host = opts.host.clone();
    if let Some(h) = &trid.hostnqn {
        host.hostnqn = h.clone();
    }
    let addr = trid.socket_addr().map_err(|e| HostError::Invalid(e.to_string()))?;
    let (addr, subnqn) = match &trid.subnqn {
        Some(n) => (addr, n.clone()),
        None => {
            let log = super::discover(addr, &host)?;
            let e = log
                .iter()
                .find(|e| e.subtype == SUBTYPE_NVME && e.subnqn != fabrics::DISCOVERY_NQN)
                .ok_or_else(|| HostError::Invalid(format!("the discovery log of {addr} lists no NVM subsystem")))?;
            let a = e
                .socket_addr()
                .ok_or_else(|| HostError::Invalid(format!("unusable address {}:{}", e.traddr, e.trsvcid)))?;
            log::info!("{addr}: discovered {} at {a}", e.subnqn);
            (a, e.subnqn.clone())
        }
    };
    let mut c = Controller::connect(addr, &subnqn, &host)?;
    let nsid = match trid.nsid {
        Some(n) => n,
        None => *c
            .active_namespaces()?
            .first()
            .ok_or_else(|| HostError::Invalid(format!("{subnqn} has no active namespace")))?,
    };
    let ns = c.identify_namespace(nsid)?;
    if ns.nsze == 0 {
        return Err(HostError::Invalid(format!("{subnqn}: namespace {nsid} is not active")));
    }
    let fmt = ns.lbaf[usize::from(ns.flbas & 0xF)];
    let lbads = (fmt >> 16) & 0xFF;
    if !(9..=16).contains(&lbads) {
        return Err(HostError::Invalid(format!(
            "{subnqn}: namespace {nsid} has an unusable block size 2^{lbads}"
        )));
    }
    let mqes = (c.cap & 0xFFFF) as u16;
    c.opts.io_queue_entries = opts.queue_entries.min(mqes.saturating_add(1)).max(2);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&ns.nguid);
    if uuid == [0; 16] {
        uuid = engine::bdev::new_uuid();
    }
    let ctrlr = Arc::new(Mutex::new(Some(c)));
    let stop = Arc::new(AtomicBool::new(false));
    let ka = {
        let (ctrlr, stop) = (ctrlr.clone(), stop.clone());
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("{name}-ka"))
            .spawn(move || {
                let mut failed = false;
                while !stop.load(Ordering::Relaxed) {
                    let r = ctrlr
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                        .map(|c| c.tick());
                    if let Some(Err(e)) = r {
                        if !failed {
                            log::warn!("bdev {name}: admin queue: {e}");
                        }
                        failed = true;
                    }
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| HostError::Io(format!("keep-alive thread: {e}")))?
    };
    Ok(Arc::new(NvmeHostBdev {
        name: name.to_string(),
        uuid,
        nsid,
        block_size: 1 << lbads,
        num_blocks: ns.nsze,
        subnqn,
        addr,
        ctrlr,
        spare: Mutex::new(Vec::new()),
        stats: StatsSet::default(),
        stop,
        ka: Mutex::new(Some(ka)),
    }))
}

impl NvmeHostBdev {
    fn new_qpair(&self) -> Result<Qpair, HostError> {
        self.ctrlr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .ok_or(HostError::Closed)?
            .create_io_qpair()
    }

    /// Connects `n` I/O queue pairs now (management thread) for the next `n` channels.
    pub fn preconnect(&self, n: usize) -> Result<(), HostError> {
        for _ in 0..n {
            let q = self.new_qpair()?;
            self.spare.lock().unwrap_or_else(|e| e.into_inner()).push(q);
        }
        Ok(())
    }

    /// The namespace ID driven.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    /// The subsystem connected to.
    pub fn subnqn(&self) -> &str {
        &self.subnqn
    }

    /// The I/O controller's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Entries of each I/O queue pair.
    pub fn queue_entries(&self) -> u16 {
        self.ctrlr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |c| c.opts.io_queue_entries)
    }
}

impl Drop for NvmeHostBdev {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.ka.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        for q in self.spare.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            q.close();
        }
        // Orderly shutdown (CC.SHN); open channels keep their own connections until closed.
        if let Some(c) = self.ctrlr.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c.disconnect();
        }
    }
}

impl Bdev for NvmeHostBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &str {
        "NVMe/TCP namespace"
    }
    fn driver(&self) -> &'static str {
        "nvme_tcp_host"
    }
    fn uuid(&self) -> [u8; 16] {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn supports(&self, op: IoOp) -> bool {
        OPS.contains(&op)
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let q = match spare {
            Some(q) => q,
            None => {
                log::info!("bdev {}: connecting an I/O queue pair inline", self.name);
                self.new_qpair()
                    .map_err(|e| BdevError::Channel(format!("{}: {e}", self.subnqn)))?
            }
        };
        let depth = q.depth();
        Ok(BdevChannel::new(
            &self.name,
            Geometry::new(self.block_size, self.num_blocks, 1, &OPS),
            self.stats.new_channel(),
            Box::new(HostChannel {
                q,
                nsid: self.nsid,
                failed: None,
                errors: VecDeque::with_capacity(CHANNEL_QUEUE_DEPTH_MAX),
                held: (0..depth).map(|_| None).collect(),
            }),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
    fn config(&self) -> Option<(&'static str, serde_json::Value)> {
        None
    }
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({
            "nvme_tcp_host": {
                "subnqn": self.subnqn,
                "traddr": self.addr.ip().to_string(),
                "trsvcid": self.addr.port().to_string(),
                "nsid": self.nsid,
            }
        })
    }
}

/// One reactor's queue pair.
struct HostChannel {
    q: Qpair,
    nsid: u32,
    /// Why the queue pair failed; every request from then on completes with an error.
    failed: Option<String>,
    /// Error completions waiting for the next poll (never inline).
    errors: VecDeque<IoCompletion>,
    /// Caller buffers of commands that carry none on the wire (flush, write zeroes) or
    /// another (unmap's range list), by CID, handed back at completion.
    held: Vec<Option<DmaBuf>>,
}

fn io_error(s: Status) -> BdevError {
    BdevError::Io(format!("NVMe status {s}"))
}

impl HostChannel {
    fn fail(&mut self, e: &HostError) {
        if self.failed.is_none() {
            log::warn!("NVMe/TCP queue pair {} failed: {e}", self.q.qid);
            self.failed = Some(e.to_string());
        }
    }

    fn complete(held: &mut [Option<DmaBuf>], c: HostCompletion, f: &mut dyn FnMut(IoCompletion)) {
        let st = c.status();
        let buf = match held.get_mut(usize::from(c.cqe.cid)).and_then(Option::take) {
            Some(b) => Some(b),
            None if c.user & UNMAP_TAG != 0 => None,
            None => c.buf,
        };
        f(IoCompletion {
            user_data: c.user & !UNMAP_TAG,
            result: if st.is_success() { Ok(()) } else { Err(io_error(st)) },
            buf,
        })
    }
}

/// Marks tokens of commands whose wire buffer is ours (unmap ranges), not the caller's.
/// The engine's callers use small slot indices as tokens; a token with this bit set is
/// refused up front (see `submit`).
const UNMAP_TAG: u64 = 1 << 63;

impl ChannelBackend for HostChannel {
    fn submit(&mut self, mut io: IoRequest) -> Result<(), IoRequest> {
        if self.failed.is_some() || io.user_data & UNMAP_TAG != 0 {
            if self.errors.len() == self.errors.capacity() {
                return Err(io);
            }
            let why = match &self.failed {
                Some(f) => format!("queue pair failed: {f}"),
                None => "user_data with bit 63 set is reserved by the NVMe/TCP bdev".into(),
            };
            self.errors.push_back(IoCompletion {
                user_data: io.user_data,
                result: Err(BdevError::Io(why)),
                buf: io.buf.take(),
            });
            return Ok(());
        }
        let (slba, nlb) = (io.offset_blocks, io.num_blocks);
        let (sqe, data, keep, token): (Sqe, Data, Option<DmaBuf>, u64) = match io.op {
            // The channel wrapper checked that reads and writes carry a buffer.
            IoOp::Read => (
                cmd::read(self.nsid, slba, nlb),
                io.buf.take().map_or(Data::None, Data::FromCtrl),
                None,
                io.user_data,
            ),
            IoOp::Write => (
                cmd::write(self.nsid, slba, nlb),
                io.buf.take().map_or(Data::None, Data::ToCtrl),
                None,
                io.user_data,
            ),
            IoOp::Flush => (cmd::flush(self.nsid), Data::None, io.buf.take(), io.user_data),
            IoOp::WriteZeroes => (
                cmd::write_zeroes(self.nsid, slba, nlb),
                Data::None,
                io.buf.take(),
                io.user_data,
            ),
            IoOp::Unmap => (
                cmd::deallocate(self.nsid, 1),
                // Management-rate op: the 16-byte range list is allocated here.
                Data::ToCtrl(cmd::dsm_ranges(&[(slba, nlb)])),
                io.buf.take(),
                io.user_data | UNMAP_TAG,
            ),
        };
        match self.q.submit(sqe, data, token) {
            Ok(cid) => {
                if let Some(slot) = self.held.get_mut(usize::from(cid)) {
                    *slot = keep;
                }
                Ok(())
            }
            Err((e, data)) => {
                let buf = match data {
                    Data::ToCtrl(b) | Data::FromCtrl(b) if io.op != IoOp::Unmap => Some(b),
                    _ => keep,
                };
                if e == HostError::QueueFull {
                    io.buf = buf;
                    return Err(io);
                }
                self.fail(&e);
                self.errors.push_back(IoCompletion {
                    user_data: io.user_data,
                    result: Err(BdevError::Io(e.to_string())),
                    buf,
                });
                Ok(())
            }
        }
    }

    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.errors.pop_front() {
            f(c);
            n += 1;
        }
        if self.failed.is_some() {
            return n;
        }
        let held = &mut self.held;
        match self.q.poll(&mut |c| Self::complete(held, c, f)) {
            Ok(k) => n + k,
            Err(e) => {
                self.fail(&e);
                let held = &mut self.held;
                n + self.q.abort_outstanding(&mut |c| Self::complete(held, c, f))
            }
        }
    }
}
