//! One NVMe/RDMA queue pair: its registered memory, rdma_cm events, completion polling and
//! command capsules coming in (`docs/nvme-rdma.md`).
//!
//! Memory, registered once at accept (`Qp`'s regions), for a queue of `n` entries:
//! - receive region: `n` capsule slots of 64 + `in_capsule_data_size` bytes, all posted
//!   before the accept;
//! - send region: `n` response slots of 16 bytes (one per request);
//! - data region: `n` slots of `max_io_size` bytes, the local end of every RDMA READ and
//!   WRITE (request `i` uses slot `i`).
//!
//! Each request also owns one `DmaBuf` of `max_io_size` made at accept, which the bdev
//! reads into and writes from: data is copied once between it and the registered slot.

use super::super::auth::Session;
use super::super::channels::QueueChannels;
use super::super::ctrlr::Controller;
use super::super::io::IoCmd;
use super::super::keepalive::{self, TrafficNote};
use super::super::rdma_proto::{self, DataDesc, QueueParams};
use super::super::restart_wait::{next_queue_id, RestartWaits};
use super::super::{Target, TargetError, TransportOpts};
use super::stats::{bump, RdmaGroupStats};
use crate::spec::{Plain, Sqe, Status};
use engine::buf::DmaBuf;
use rdma_transport::rdma::verbs::{cm_event, wc_status_str, Channel, CmId, Qp, QpSizes, ReadDepth, Wc};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Work request id kinds (bits 32..; the low 32 bits are a slot or request index).
pub(super) const WR_RECV: u64 = 1 << 32;
pub(super) const WR_SEND: u64 = 2 << 32;
pub(super) const WR_READ: u64 = 3 << 32;
pub(super) const WR_WRITE: u64 = 4 << 32;
const WR_KIND: u64 = 0xFFFF_FFFF << 32;
/// Bytes of a response capsule (the CQE).
pub(super) const CQE_BYTES: usize = 16;
/// Bytes of the SQE at the head of a command capsule.
pub(super) const SQE_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepted; waiting for ESTABLISHED (capsules may already arrive).
    Live,
    /// Disconnected or failed: waiting for bdev I/O in flight, then dropped.
    Closing,
}

pub(crate) enum QueuePoll {
    Busy,
    Idle,
    Dead,
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum St {
    Free,
    /// RDMA READ of the host's data posted.
    Reading,
    /// Submitted to the bdev: `pending` operations outstanding.
    Executing {
        pending: u32,
    },
    /// An Asynchronous Event Request waiting for an event.
    Parked,
    /// Handed to the namespace's restart point sink; waiting for its answer or its
    /// deadline (`Queue::rp`).
    AwaitRestartPoint,
    /// Response SEND posted; free when it completes.
    Sending,
}

pub(super) struct Req {
    pub(super) st: St,
    pub(super) sqe: Sqe,
    pub(super) desc: DataDesc,
    /// Host data bytes in `buf` (admin data, DSM ranges, write data).
    pub(super) in_len: u32,
    pub(super) cmd: IoCmd,
    pub(super) chan: usize,
    pub(super) status: Status,
    /// The bdev's buffer (taken by the bdev while it runs).
    pub(super) buf: Option<DmaBuf>,
}

/// One NVMe queue over one RC queue pair. Field order is drop order: the queue pair goes
/// before its rdma_cm id, the id before its event channel.
pub(crate) struct Queue {
    pub(super) qp: Qp,
    pub(super) id: CmId,
    ch: Channel,
    pub(super) target: Arc<Target>,
    pub(super) opts: TransportOpts,
    pub(super) listen: SocketAddr,
    pub(super) peer: SocketAddr,
    pub(super) phase: Phase,
    pub(super) params: QueueParams,
    /// Bytes of one receive slot (64 + in-capsule data).
    capsule_bytes: usize,
    /// Bytes of one data slot (`max_io_size`).
    pub(super) slot_bytes: usize,
    pub(super) reqs: Vec<Req>,
    pub(super) free: Vec<u32>,
    /// Capsules that found no free request (receive slot, bytes), oldest first; their
    /// receives are re-posted once taken. Room for every slot: never allocates.
    backlog: VecDeque<(u32, u32)>,
    pub(super) ctrlr: Option<Arc<Controller>>,
    pub(super) qid: u16,
    pub(super) sqhd: u16,
    pub(super) aers: Vec<u32>,
    /// Namespaces, bdev channels and the bdev retry queue (`nvmf::channels`).
    pub(super) io: QueueChannels,
    pub(super) traffic: bool,
    ka_note: TrafficNote,
    pub(super) core: u32,
    /// Unique per process: restart point answers find the queue by it.
    pub(super) uid: u64,
    /// Requests in AwaitRestartPoint: their answers' numbers and deadlines.
    pub(super) rp: RestartWaits,
    /// The poll group's counters (set when the queue joins its group).
    stats: Option<Arc<RdmaGroupStats>>,
    /// The DH-HMAC-CHAP transaction of a queue whose Connect asked for one.
    pub(super) auth: Option<Box<Session>>,
    /// The queue authenticated (a re-authentication keeps it so while it runs).
    pub(super) authenticated: bool,
    /// Authentication must be done by then (`engine::clock::now_ns`).
    pub(super) auth_deadline_ns: u64,
}

impl Queue {
    /// Makes the queue pair for an accepted request, posts every receive and accepts,
    /// taking as many outstanding RDMA READs as the host (`host_ird`), the device and the
    /// queue allow ([`rdma_proto::read_depth`]). Runs on the reactor that will poll the
    /// queue. Setup path: allocates.
    pub(crate) fn accept(
        target: Arc<Target>,
        id: CmId,
        params: QueueParams,
        host_ird: u8,
        opts: TransportOpts,
        listen: SocketAddr,
    ) -> Result<Box<Queue>, TargetError> {
        let peer = id.peer_addr().unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let fail = |id: &CmId, (op, e): (&'static str, std::io::Error)| {
            id.reject_with(&rdma_proto::encode_reject(rdma_proto::CmRejectStatus::NoResources));
            TargetError::Listen {
                addr: listen,
                why: format!("{op}: {e}"),
            }
        };
        let ch = Channel::new().map_err(|e| fail(&id, e))?;
        id.migrate(&ch).map_err(|e| fail(&id, e))?;
        let n = usize::from(params.sq_entries);
        let capsule_bytes = SQE_BYTES + opts.in_capsule_data_size as usize;
        let slot_bytes = opts.max_io_size as usize;
        let sizes = QpSizes {
            // A SEND, and an RDMA READ or WRITE, per request; room to spare.
            send_wr: 3 * n as u32,
            recv_wr: n as u32,
            send_bytes: n * CQE_BYTES,
            recv_bytes: n * capsule_bytes,
            ctl_bytes: 0,
            data_bytes: n * slot_bytes,
            send_sge: 1,
        };
        let mut qp = Qp::new(&id, sizes).map_err(|e| fail(&id, e))?;
        for s in 0..n {
            qp.post_recv(WR_RECV | s as u64, s * capsule_bytes, capsule_bytes)
                .map_err(|e| fail(&id, e))?;
        }
        let reqs = (0..n)
            .map(|_| Req {
                st: St::Free,
                sqe: Sqe::default(),
                desc: DataDesc::None,
                in_len: 0,
                cmd: IoCmd::Flush,
                chan: 0,
                status: Status::SUCCESS,
                buf: Some(DmaBuf::alloc(slot_bytes)),
            })
            .collect();
        let q = Box::new(Queue {
            qp,
            id,
            ch,
            target,
            opts,
            listen,
            peer,
            phase: Phase::Live,
            params,
            capsule_bytes,
            slot_bytes,
            reqs,
            free: (0..n as u32).rev().collect(),
            backlog: VecDeque::with_capacity(n),
            ctrlr: None,
            qid: params.qid,
            sqhd: 0,
            aers: Vec::with_capacity(n),
            io: QueueChannels::new(n),
            traffic: false,
            ka_note: TrafficNote::default(),
            core: 0,
            uid: next_queue_id(),
            rp: RestartWaits::new(n),
            stats: None,
            auth: None,
            authenticated: false,
            auth_deadline_ns: 0,
        });
        let accept = rdma_proto::encode_accept(params.sq_entries);
        // The listener refused a host that serves no READs, so this is at least 1.
        let reads = rdma_proto::read_depth(host_ird, q.qp.max_init_rd_atom(), params.sq_entries).unwrap_or(1);
        let depth = ReadDepth {
            // The host reads nothing from the target.
            responder_resources: 0,
            initiator_depth: reads,
        };
        q.id.accept_with(&accept, depth)
            .map_err(|(op, e)| TargetError::Listen {
                addr: listen,
                why: format!("{op}: {e}"),
            })?;
        log::debug!(
            "nvmf: RDMA queue {} from {peer} on {listen}: {n} entries, {reads} READs outstanding at most",
            params.qid
        );
        Ok(q)
    }

    /// The queue joins the poll group of reactor `core`.
    pub(super) fn join_group(&mut self, core: u32, stats: Arc<RdmaGroupStats>) {
        self.core = core;
        self.stats = Some(stats);
        self.stat(|s| &s.total_recv_wrs, i64::from(self.params.sq_entries));
    }

    /// Adds `d` to one of the poll group's counters.
    pub(super) fn stat(&self, f: impl Fn(&RdmaGroupStats) -> &AtomicU64, d: i64) {
        if let Some(s) = &self.stats {
            bump(f(s), d);
        }
    }

    pub(crate) fn poll(&mut self, now: u64) -> QueuePoll {
        if self.phase == Phase::Closing {
            return self.poll_closing();
        }
        let mut busy = self.poll_cm();
        if self.ctrlr.as_ref().is_some_and(|c| c.failed()) {
            self.close("controller failed");
        }
        busy |= self.poll_cqs();
        if self.phase == Phase::Closing {
            return QueuePoll::Busy;
        }
        if self.auth_expired(now) {
            return QueuePoll::Busy;
        }
        if let Some(c) = &self.ctrlr {
            if keepalive::queue_poll(c, &mut self.ka_note, &mut self.traffic, self.qid == 0, now) {
                self.close("keep alive timeout");
                return QueuePoll::Busy;
            }
        }
        busy |= self.poll_bdev();
        busy |= self.expire_restart_points(now);
        busy |= self.deliver_events();
        if busy {
            QueuePoll::Busy
        } else {
            QueuePoll::Idle
        }
    }

    /// The queue's rdma_cm events: a disconnect closes it.
    fn poll_cm(&mut self) -> bool {
        match self.ch.poll() {
            Ok(None) => false,
            Ok(Some(ev)) => {
                match ev.kind {
                    cm_event::RDMA_CM_EVENT_DISCONNECTED => self.close("host disconnected"),
                    cm_event::RDMA_CM_EVENT_DEVICE_REMOVAL => self.close("RDMA device removed"),
                    cm_event::RDMA_CM_EVENT_CONNECT_ERROR | cm_event::RDMA_CM_EVENT_UNREACHABLE => {
                        self.close("connection not established")
                    }
                    _ => {}
                }
                true
            }
            Err((op, e)) => {
                log::info!("nvmf: RDMA queue from {}: {op}: {e}", self.peer);
                self.close("rdma_cm error");
                true
            }
        }
    }

    /// Reads receive and send completions and acts on them.
    fn poll_cqs(&mut self) -> bool {
        let mut wcs = [Wc {
            wr_id: 0,
            ok: true,
            status: 0,
            byte_len: 0,
        }; rdma_transport::rdma::verbs::WC_BATCH];
        let mut busy = false;
        for send in [false, true] {
            let mut n = 0;
            let polled = if send {
                self.qp.poll_send_cq(&mut |wc| {
                    wcs[n] = wc;
                    n += 1;
                })
            } else {
                self.qp.poll_recv_cq(&mut |wc| {
                    wcs[n] = wc;
                    n += 1;
                })
            };
            if let Err((op, e)) = polled {
                log::info!("nvmf: RDMA queue from {}: {op}: {e}", self.peer);
                self.close("completion queue error");
                return true;
            }
            busy |= n > 0;
            self.stat(|s| &s.completions, n as i64);
            for wc in &wcs[..n] {
                if self.phase == Phase::Closing {
                    return true;
                }
                self.on_wc(*wc);
            }
        }
        busy
    }

    fn on_wc(&mut self, wc: Wc) {
        let idx = (wc.wr_id & 0xFFFF_FFFF) as u32;
        if !wc.ok {
            // Flushed work after a disconnect, or the host's key refused an access.
            log::info!(
                "nvmf: RDMA queue {} from {}: work request {:#x} failed: {}",
                self.qid,
                self.peer,
                wc.wr_id,
                wc_status_str(wc.status)
            );
            self.close("work request failed");
            return;
        }
        match wc.wr_id & WR_KIND {
            WR_RECV => self.on_capsule(idx, wc.byte_len),
            WR_SEND => self.on_sent(idx),
            WR_READ => self.on_host_data(idx),
            _ => {}
        }
    }

    /// A command capsule arrived in receive slot `slot`: take a request for it (or keep it
    /// waiting in its receive until one frees).
    fn on_capsule(&mut self, slot: u32, len: u32) {
        self.traffic = true;
        if self.free.is_empty() || !self.backlog.is_empty() {
            self.stat(|s| &s.pending_free_request, 1);
            self.backlog.push_back((slot, len));
            return;
        }
        self.take_capsule(slot, len);
    }

    /// Copies the capsule's SQE and in-capsule data into a free request, re-posts the
    /// receive, and starts the command.
    fn take_capsule(&mut self, slot: u32, len: u32) {
        let Some(i) = self.free.pop() else { return };
        self.stat(|s| &s.requests, 1);
        let off = slot as usize * self.capsule_bytes;
        let len = (len as usize).min(self.capsule_bytes);
        let mem = self.qp.mem(rdma_transport::rdma::verbs::Mem::Recv);
        let r = &mut self.reqs[i as usize];
        r.st = St::Executing { pending: 0 };
        r.status = Status::SUCCESS;
        r.in_len = 0;
        r.desc = DataDesc::None;
        let short = len < SQE_BYTES;
        r.sqe = Sqe::read_from(&mem[off..off + SQE_BYTES]).unwrap_or_default();
        let in_capsule = len.saturating_sub(SQE_BYTES) as u32;
        let desc = self.parse_desc(i, in_capsule);
        if let Ok(DataDesc::InCapsule { offset, len: n }) = desc {
            // parse_sgl checked offset + len against what arrived.
            let from = off + SQE_BYTES + offset as usize;
            let mem = self.qp.mem(rdma_transport::rdma::verbs::Mem::Recv);
            let r = &mut self.reqs[i as usize];
            if let Some(b) = r.buf.as_mut() {
                b.set_len(n as usize);
                b.copy_from_slice(&mem[from..from + n as usize]);
            }
            r.in_len = n;
        }
        self.sqhd = (self.sqhd + 1) % self.params.sq_entries.max(1);
        self.stat(|s| &s.total_recv_wrs, 1);
        if let Err((op, e)) = self.qp.post_recv(WR_RECV | u64::from(slot), off, self.capsule_bytes) {
            log::info!("nvmf: RDMA queue from {}: {op}: {e}", self.peer);
            self.close("cannot re-post a receive");
            return;
        }
        match desc {
            _ if short => self.complete(i, Status::INVALID_FIELD, 0, 0),
            Err(s) => self.complete(i, s, 0, 0),
            Ok(d) => {
                self.reqs[i as usize].desc = d;
                self.start(i)
            }
        }
    }

    /// A request's response was sent: the request is free; a capsule waiting for one
    /// takes it.
    fn on_sent(&mut self, i: u32) {
        let Some(r) = self.reqs.get_mut(i as usize) else { return };
        if r.st != St::Sending {
            return;
        }
        r.st = St::Free;
        self.free.push(i);
        if let Some((slot, len)) = self.backlog.pop_front() {
            self.stat(|s| &s.pending_free_request, -1);
            self.take_capsule(slot, len);
        }
    }

    /// Answers parked Asynchronous Event Requests with pending events.
    fn deliver_events(&mut self) -> bool {
        let mut busy = false;
        if self.aers.is_empty() {
            return false;
        }
        let Some(c) = self.ctrlr.clone() else { return false };
        while !self.aers.is_empty() {
            let Some(ev) = c.take_event() else { break };
            let i = self.aers.remove(0);
            self.complete(i, Status::SUCCESS, ev, 0);
            busy = true;
        }
        busy
    }

    /// Closes the queue: disconnects, takes it out of its controller; in-flight bdev I/O
    /// is waited for before the queue pair is destroyed.
    pub(super) fn close(&mut self, why: &str) {
        if self.phase == Phase::Closing {
            return;
        }
        log::debug!("nvmf: closing RDMA queue {} from {}: {why}", self.qid, self.peer);
        self.phase = Phase::Closing;
        self.id.disconnect();
        if let Some(c) = &self.ctrlr {
            c.remove_queue(self.qid, self.peer);
            if self.qid == 0 {
                c.fail("admin queue disconnected");
            } else {
                c.release_io_qid(self.qid);
            }
        }
        let dropped = self.io.close();
        self.stat(|s| &s.pending_bdev_io, -(dropped as i64));
        self.aers.clear();
        // Work and waits that will never complete leave the group's counts now; a
        // restart point answer still in flight finds no wait and completes nothing.
        let reading = self.reqs.iter().filter(|r| r.st == St::Reading).count();
        self.stat(|s| &s.pending_rdma_read, -(reading as i64));
        self.stat(|s| &s.awaiting_restart_point, -i64::from(self.rp.pending()));
        self.rp.clear();
        self.stat(|s| &s.pending_free_request, -(self.backlog.len() as i64));
        self.backlog.clear();
        if self.ctrlr.is_some() {
            if self.qid == 0 {
                self.stat(|s| &s.current_admin_qpairs, -1);
            } else {
                self.stat(|s| &s.current_io_qpairs, -1);
            }
        }
    }

    fn poll_closing(&mut self) -> QueuePoll {
        let (n, idle) = self.io.drain();
        self.stat(|s| &s.pending_bdev_io, -(n as i64));
        if idle {
            QueuePoll::Dead
        } else {
            QueuePoll::Busy
        }
    }
}
