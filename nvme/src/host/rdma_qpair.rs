//! One NVMe/RDMA queue pair of the host (initiator), feature `rdma`: an rdma_cm connection
//! with the NVMe/RDMA private data, memory registered once at connect, command capsules by
//! SEND, responses by receive, data moved by the target's RDMA READ / WRITE under one key.
//!
//! Per queue of `n` entries, created once (`docs/nvme-rdma.md`, "The host side"):
//!
//! - send region: `n` capsule slots of 64 bytes + the in-capsule data limit (slot = CID);
//! - receive region: `n` response slots, all posted before connecting (`hrqsize` = `n`);
//! - data region: `n` slots of [`DATA_SLOT_BYTES`], remotely readable and writable, named by
//!   a keyed SGL data block descriptor of subtype 0 (no invalidation asked: the key stays
//!   valid, so nothing is registered or re-registered per I/O).
//!
//! A command's slot is free again only when both its SEND completed and its response came:
//! the two completion queues are not ordered against each other. Completion queues are
//! polled by the owner (no completion channel, no thread).

use super::qpair::{connect_fabrics, Cids, Data, HostCompletion, Link, QueueSpec};
use super::rdma_wire::{parse_response, rdma_sgl};
use super::{HostError, HostOpts};
use crate::nvmf::rdma_proto::{self, decode_reject, CmRequest};
use crate::spec::{Cqe, Plain, Sqe, Status};
use engine::buf::DmaBuf;
use rdma_transport::rdma::verbs::{cm_event, wc_status_str, Channel, CmId, Mem, Qp, QpSizes, ReadDepth, Wc, WC_BATCH};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bytes of one command's registered data slot: the largest transfer of one command.
pub const DATA_SLOT_BYTES: usize = 128 * 1024;
/// Receive slot bytes: room beyond the CQE so a longer capsule is seen and refused.
const RECV_SLOT_BYTES: usize = 64;
/// How often an idle queue pair reads its rdma_cm events (a disconnect), ns.
const CM_CHECK_PERIOD_NS: u64 = 1_000_000;
/// rdma_cm resolution timeout.
const RESOLVE_TIMEOUT_MS: i32 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Capsule posted; `sent`: its SEND completed; `answered`: its response came.
    Busy {
        sent: bool,
        answered: bool,
    },
}

struct Slot {
    state: SlotState,
    from_ctrl: bool,
    user: u64,
    buf: Option<DmaBuf>,
}

/// One NVMe/RDMA queue pair. See the module docs.
pub struct RdmaQpair {
    // Field order is drop order: the queue pair and its memory, then the id, then its channel.
    qp: Qp,
    id: CmId,
    ch: Channel,
    peer: SocketAddr,
    pub qid: u16,
    /// Controller ID this queue belongs to.
    pub cntlid: u16,
    in_capsule_max: u32,
    capsule_bytes: usize,
    slots: Vec<Slot>,
    pub(crate) cids: Cids,
    /// Work completions of one batch (capacity [`WC_BATCH`], made at connect).
    wcs: Vec<Wc>,
    next_cm_check_ns: u64,
}

fn verbs_err(peer: SocketAddr) -> impl Fn((&'static str, std::io::Error)) -> HostError {
    move |(op, e)| HostError::Io(format!("{peer}: {op}: {e}"))
}

/// Waits for rdma_cm event `want` on `ch`; any other terminal event is an error.
fn wait_event(ch: &Channel, want: u32, peer: SocketAddr, deadline: Instant) -> Result<Vec<u8>, HostError> {
    loop {
        match ch.poll().map_err(verbs_err(peer))? {
            Some(ev) if ev.kind == want => return Ok(ev.private.to_vec()),
            Some(ev) if ev.kind == cm_event::RDMA_CM_EVENT_REJECTED => {
                let why = match decode_reject(&ev.private) {
                    Some(sts) => format!("{peer}: NVMe/RDMA connection rejected: {sts}"),
                    None => format!("{peer}: RDMA connection rejected (status {})", ev.status),
                };
                return Err(HostError::Io(why));
            }
            Some(ev)
                if matches!(
                    ev.kind,
                    cm_event::RDMA_CM_EVENT_ADDR_ERROR
                        | cm_event::RDMA_CM_EVENT_ROUTE_ERROR
                        | cm_event::RDMA_CM_EVENT_UNREACHABLE
                        | cm_event::RDMA_CM_EVENT_CONNECT_ERROR
                        | cm_event::RDMA_CM_EVENT_DISCONNECTED
                        | cm_event::RDMA_CM_EVENT_DEVICE_REMOVAL
                ) =>
            {
                return Err(HostError::Io(format!(
                    "{peer}: rdma_cm event {} (status {}): no RDMA path to the target?",
                    ev.kind, ev.status
                )));
            }
            Some(_) => {}
            None => {
                if Instant::now() > deadline {
                    return Err(HostError::Timeout("rdma_cm connection"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl RdmaQpair {
    /// Connects queue `qid` with `entries` slots over rdma_cm, registers its memory, posts
    /// every receive and runs Fabrics Connect. The admin queue sends no in-capsule data (the
    /// Linux target gives the admin queue none); I/O queues up to `in_capsule_max`. Blocks
    /// up to `opts.timeout`; management threads only.
    pub(crate) fn connect(spec: &QueueSpec<'_>, opts: &HostOpts) -> Result<RdmaQpair, HostError> {
        let QueueSpec {
            addr,
            qid,
            entries,
            cntlid,
            in_capsule_max,
            ..
        } = *spec;
        let n = usize::from(entries);
        let in_capsule_max = if qid == 0 { 0 } else { in_capsule_max.min(8192) };
        let capsule_bytes = 64 + in_capsule_max as usize;
        let deadline = Instant::now() + opts.timeout;
        let err = verbs_err(addr);
        let ch = Channel::new().map_err(&err)?;
        let id = CmId::new(&ch).map_err(&err)?;
        id.resolve_addr(addr, RESOLVE_TIMEOUT_MS).map_err(&err)?;
        wait_event(&ch, cm_event::RDMA_CM_EVENT_ADDR_RESOLVED, addr, deadline)?;
        id.resolve_route(RESOLVE_TIMEOUT_MS).map_err(&err)?;
        wait_event(&ch, cm_event::RDMA_CM_EVENT_ROUTE_RESOLVED, addr, deadline)?;
        let sizes = QpSizes {
            send_wr: u32::from(entries) + 1,
            recv_wr: u32::from(entries),
            send_bytes: n * capsule_bytes,
            recv_bytes: n * RECV_SLOT_BYTES,
            ctl_bytes: 64,
            data_bytes: n * DATA_SLOT_BYTES,
            send_sge: 1,
        };
        let mut qp = Qp::new(&id, sizes).map_err(&err)?;
        for i in 0..n {
            qp.post_recv(i as u64, i * RECV_SLOT_BYTES, RECV_SLOT_BYTES)
                .map_err(&err)?;
        }
        let private = CmRequest {
            recfmt: rdma_proto::RECFMT,
            qid,
            hrqsize: entries,
            hsqsize: entries - 1,
            cntlid,
        }
        .encode();
        // The target fetches write data by RDMA READ from the data slots: serve as many at
        // once as the device can (it takes the least of this, its device and the queue);
        // the host itself reads nothing.
        let depth = ReadDepth {
            responder_resources: qp.max_rd_atom(),
            initiator_depth: 0,
        };
        id.connect_with(&private, depth).map_err(&err)?;
        let accept = wait_event(&ch, cm_event::RDMA_CM_EVENT_ESTABLISHED, addr, deadline)?;
        if let Some(crqsize) = rdma_proto::decode_accept(&accept) {
            log::debug!("{addr}: NVMe/RDMA queue {qid} established, crqsize {crqsize}");
        }
        let mut q = RdmaQpair {
            qp,
            id,
            ch,
            peer: addr,
            qid,
            cntlid: 0,
            in_capsule_max,
            capsule_bytes,
            slots: (0..n)
                .map(|_| Slot {
                    state: SlotState::Free,
                    from_ctrl: false,
                    user: 0,
                    buf: None,
                })
                .collect(),
            cids: Cids::new(usize::from(entries)),
            wcs: Vec::with_capacity(WC_BATCH),
            next_cm_check_ns: 0,
        };
        q.cntlid = connect_fabrics(&mut q, spec, opts)?;
        Ok(q)
    }

    /// The target's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Largest in-capsule data this queue sends, capped by what its send slots hold.
    pub fn set_in_capsule_max(&mut self, bytes: u32) {
        self.in_capsule_max = bytes.min((self.capsule_bytes - 64) as u32);
    }

    /// Posts a command capsule. Sets its CID and data descriptor; `data`'s buffer length is
    /// the transfer length (at most [`DATA_SLOT_BYTES`]). Never blocks, never allocates.
    pub fn submit(&mut self, mut sqe: Sqe, data: Data, user: u64) -> Result<u16, (HostError, Data)> {
        if let Some(e) = &self.cids.failed {
            return Err((e.clone(), data));
        }
        let (to_ctrl, from_ctrl, len) = match &data {
            Data::None => (false, false, 0),
            Data::ToCtrl(b) => (true, false, b.len()),
            Data::FromCtrl(b) => (false, true, b.len()),
        };
        if len > DATA_SLOT_BYTES {
            let e = HostError::Invalid(format!(
                "NVMe/RDMA transfer of {len} bytes above the queue's registered slot of {DATA_SLOT_BYTES}"
            ));
            return Err((e, data));
        }
        let Some(slot) = self.cids.free.pop() else {
            return Err((HostError::QueueFull, data));
        };
        sqe.cid = slot as u16;
        sqe.set_sgl_psdt();
        let in_capsule = to_ctrl && len > 0 && len <= self.in_capsule_max as usize;
        let buf = data.into_buf();
        let data_off = slot * DATA_SLOT_BYTES;
        let (addr, key) = self.qp.remote_ref(Mem::Data, data_off);
        sqe.sgl = if len == 0 {
            rdma_sgl(None, 0, 0, 0)
        } else {
            rdma_sgl(in_capsule.then_some(len as u32), addr, len as u32, key)
        };
        let off = slot * self.capsule_bytes;
        let mut send_len = 64;
        if let Some(b) = buf.as_deref() {
            if in_capsule {
                self.qp.mem_mut(Mem::Send)[off + 64..off + 64 + len].copy_from_slice(b);
                send_len += len;
            } else if to_ctrl {
                self.qp.mem_mut(Mem::Data)[data_off..data_off + len].copy_from_slice(b);
            }
        }
        self.qp.mem_mut(Mem::Send)[off..off + 64].copy_from_slice(sqe.as_bytes());
        if let Err(e) = self.qp.post_send(slot as u64, off, send_len, true) {
            self.cids.free.push(slot);
            let e = self.cids.fail(verbs_err(self.peer)(e));
            let data = match buf {
                None => Data::None,
                Some(b) if from_ctrl => Data::FromCtrl(b),
                Some(b) => Data::ToCtrl(b),
            };
            return Err((e, data));
        }
        self.slots[slot] = Slot {
            state: SlotState::Busy {
                sent: false,
                answered: false,
            },
            from_ctrl,
            user,
            buf,
        };
        Ok(slot as u16)
    }

    /// Reaps both completion queues and reports finished commands through `f`; returns how
    /// many. Never blocks. An error is fatal to the queue pair.
    pub fn poll(&mut self, f: &mut dyn FnMut(HostCompletion)) -> Result<usize, HostError> {
        self.poll_cqs()?;
        Ok(self.cids.report(f))
    }

    fn poll_cqs(&mut self) -> Result<(), HostError> {
        if let Some(e) = &self.cids.failed {
            return Err(e.clone());
        }
        let r = self.reap(false).and_then(|r| Ok(r + self.reap(true)?));
        let r = match r {
            Ok(0) => self.check_cm(),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        r.map_err(|e| self.cids.fail(e))
    }

    /// When a poll found nothing, at most once per [`CM_CHECK_PERIOD_NS`]: reads the
    /// connection's rdma_cm events. A target that went away (its process killed) leaves
    /// commands that will never be answered and, with nothing to send, no work completion
    /// to say so; rdma_cm's DISCONNECTED does. A management read, never one per I/O.
    fn check_cm(&mut self) -> Result<(), HostError> {
        let now = engine::clock::now_ns();
        if now < self.next_cm_check_ns {
            return Ok(());
        }
        self.next_cm_check_ns = now + CM_CHECK_PERIOD_NS;
        while let Some(ev) = self.ch.poll().map_err(verbs_err(self.peer))? {
            if matches!(
                ev.kind,
                cm_event::RDMA_CM_EVENT_DISCONNECTED | cm_event::RDMA_CM_EVENT_DEVICE_REMOVAL
            ) {
                // Moves the queue pair to the error state: posted work is flushed.
                self.id.disconnect();
                return Err(HostError::Io(format!(
                    "{}: NVMe/RDMA queue {}: the target disconnected (rdma_cm event {})",
                    self.peer, self.qid, ev.kind
                )));
            }
        }
        Ok(())
    }

    /// One batch of receive (`send` false) or send completions; returns how many.
    fn reap(&mut self, send: bool) -> Result<usize, HostError> {
        let mut wcs = std::mem::take(&mut self.wcs);
        wcs.clear();
        let mut push = |wc: Wc| {
            if wcs.len() < WC_BATCH {
                wcs.push(wc);
            }
        };
        let polled = if send {
            self.qp.poll_send_cq(&mut push)
        } else {
            self.qp.poll_recv_cq(&mut push)
        };
        let mut res = polled.map(|_| ()).map_err(verbs_err(self.peer));
        for wc in &wcs {
            if res.is_err() {
                break;
            }
            res = if !wc.ok {
                Err(HostError::Io(format!(
                    "{}: NVMe/RDMA queue {}: {} completion failed: {} (disconnected?)",
                    self.peer,
                    self.qid,
                    if send { "send" } else { "receive" },
                    wc_status_str(wc.status)
                )))
            } else if send {
                self.on_sent(wc.wr_id as usize)
            } else {
                self.on_response(wc.wr_id as usize, wc.byte_len)
            };
        }
        let n = wcs.len();
        self.wcs = wcs;
        res.map(|_| n)
    }

    fn on_sent(&mut self, slot: usize) -> Result<(), HostError> {
        match self.slots.get(slot).map(|s| s.state) {
            Some(SlotState::Busy { answered, .. }) => {
                if answered {
                    self.release(slot);
                } else {
                    self.slots[slot].state = SlotState::Busy {
                        sent: true,
                        answered: false,
                    };
                }
                Ok(())
            }
            _ => Err(HostError::Protocol("send completion for a free slot")),
        }
    }

    /// A response capsule in receive slot `rslot`: completes its command (matched by CID),
    /// then the receive is posted again.
    fn on_response(&mut self, rslot: usize, byte_len: u32) -> Result<(), HostError> {
        let off = rslot * RECV_SLOT_BYTES;
        let cqe = parse_response(&self.qp.mem(Mem::Recv)[off..off + RECV_SLOT_BYTES], byte_len)?;
        self.qp
            .post_recv(rslot as u64, off, RECV_SLOT_BYTES)
            .map_err(verbs_err(self.peer))?;
        let slot = usize::from(cqe.cid);
        let sent = match self.slots.get(slot).map(|s| s.state) {
            Some(SlotState::Busy { sent, answered: false }) => sent,
            Some(_) => return Err(HostError::Protocol("response for a command not in flight")),
            None => return Err(HostError::Protocol("response with an unknown CID")),
        };
        let s = &mut self.slots[slot];
        let mut buf = s.buf.take();
        if let (true, Some(b)) = (s.from_ctrl, buf.as_mut()) {
            if cqe.status().is_success() {
                let d = slot * DATA_SLOT_BYTES;
                let n = b.len();
                b.copy_from_slice(&self.qp.mem(Mem::Data)[d..d + n]);
            }
        }
        self.cids.done.push(HostCompletion { user: s.user, cqe, buf });
        if sent {
            self.release(slot);
        } else {
            s.state = SlotState::Busy {
                sent: false,
                answered: true,
            };
        }
        Ok(())
    }

    fn release(&mut self, slot: usize) {
        self.slots[slot].state = SlotState::Free;
        self.cids.free.push(slot);
    }

    /// Ends every unanswered command with Aborted - SQ Deletion and reports it through `f`
    /// with its buffer, after the queue pair failed; answered ones not yet reported are
    /// reported too. Every slot is free afterwards.
    pub fn abort_outstanding(&mut self, f: &mut dyn FnMut(HostCompletion)) -> usize {
        for slot in 0..self.slots.len() {
            let SlotState::Busy { answered, .. } = self.slots[slot].state else {
                continue;
            };
            if !answered {
                let cqe = Cqe {
                    cid: slot as u16,
                    sqid: self.qid,
                    status: Status::ABORTED_SQ_DELETION.to_field(),
                    ..Cqe::default()
                };
                let s = &mut self.slots[slot];
                self.cids.done.push(HostCompletion {
                    user: s.user,
                    cqe,
                    buf: s.buf.take(),
                });
            }
            self.release(slot);
        }
        self.cids.report(f)
    }

    /// Disconnects; the queue pair, its memory and the id go when dropped.
    pub fn close(self) {
        self.id.disconnect();
    }
}

impl Link for RdmaQpair {
    fn submit(&mut self, sqe: Sqe, data: Data, user: u64) -> Result<u16, (HostError, Data)> {
        RdmaQpair::submit(self, sqe, data, user)
    }
    fn poll_io(&mut self) -> Result<(), HostError> {
        self.poll_cqs()
    }
    fn take_done(&mut self, cid: u16, user: u64) -> Option<HostCompletion> {
        self.cids.take(cid, user)
    }
}
