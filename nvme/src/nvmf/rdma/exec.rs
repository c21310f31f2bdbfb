//! A command's life on an NVMe/RDMA queue once its capsule is in: its data descriptor
//! checked (`rdma_proto::parse_sgl`), host data fetched by RDMA READ, then Connect, an admin
//! command (the shared controller) or an I/O command (the shared parser, the namespace's
//! bdev), then data to the host by RDMA WRITE and the response by SEND
//! (`docs/nvme-rdma.md`).

use super::queue::{Queue, Req, St, CQE_BYTES, WR_READ, WR_SEND, WR_WRITE};
use crate::nvmf::auth::{self, Session};
use crate::nvmf::channels::QueueChannels;
use crate::nvmf::connect;
use crate::nvmf::ctrlr::{AdminResult, QueueInfo, AER_MAX};
use crate::nvmf::io::{self, IoCmd};
use crate::nvmf::rdma_proto::{self, DataDesc, Dir, SglLimits};
use crate::nvmf::SubsystemKind;
use crate::spec::cmd::admin_opc;
use crate::spec::fabrics::fctype;
use crate::spec::{Cqe, Plain, Status};
use engine::bdev::{IoCompletion, IoOp, IoRequest};
use rdma_transport::rdma::verbs::{Mem, RdmaOp};

/// Data direction of an admin or Fabrics command from its opcode's (or FCTYPE's) low bits.
fn admin_dir(code: u8) -> Option<Dir> {
    match code & 3 {
        1 => Some(Dir::ToCtrl),
        2 => Some(Dir::ToHost),
        _ => None,
    }
}

/// The length a descriptor names (keyed: 24 bits; data block: 32 bits).
fn desc_len(r: &Req) -> u32 {
    if r.sqe.sgl.sgl_type >> 4 == rdma_proto::sgl::TYPE_KEYED_DATA_BLOCK {
        r.sqe.sgl.length & rdma_proto::sgl::KEYED_LENGTH_MAX
    } else {
        r.sqe.sgl.length
    }
}

impl Queue {
    fn sgl_limits(&self) -> SglLimits {
        SglLimits {
            in_capsule_max: self.opts.in_capsule_data_size,
            max_io_bytes: self.opts.max_io_size,
        }
    }

    /// Checks request `i`'s data descriptor against what its command moves. I/O commands
    /// are parsed here (their namespace and range), admin and Fabrics commands move what
    /// their descriptor says in the direction their opcode says.
    pub(super) fn parse_desc(&mut self, i: u32, in_capsule: u32) -> Result<DataDesc, Status> {
        let lim = self.sgl_limits();
        let sqe = self.reqs[i as usize].sqe;
        let fabrics = sqe.opc == admin_opc::FABRICS;
        if self.qid == 0 || fabrics || self.ctrlr.is_none() {
            let code = if fabrics { sqe.fctype() } else { sqe.opc };
            let (need, dir) = match admin_dir(code) {
                Some(d) => (desc_len(&self.reqs[i as usize]), d),
                None => (0, Dir::ToCtrl),
            };
            return rdma_proto::parse_sgl(&sqe, need, dir, in_capsule, lim);
        }
        self.parse_io(i)?;
        let r = &self.reqs[i as usize];
        let (need, dir) = match r.cmd {
            IoCmd::Read { bytes, .. } => (bytes, Dir::ToHost),
            c => (c.host_bytes(), Dir::ToCtrl),
        };
        rdma_proto::parse_sgl(&sqe, need, dir, in_capsule, lim)
    }

    /// Parses an I/O command against its namespace (shared parser, RDMA's descriptors).
    fn parse_io(&mut self, i: u32) -> Result<(), Status> {
        let Some(c) = self.ctrlr.clone() else {
            return Err(Status::COMMAND_SEQUENCE_ERROR);
        };
        let sqe = self.reqs[i as usize].sqe;
        let (geo, chan) = self.io.namespace(&c, sqe.nsid)?;
        let cmd = io::parse_io_cmd(&sqe, geo, self.opts.max_io_size)?;
        let r = &mut self.reqs[i as usize];
        r.cmd = cmd;
        r.chan = chan;
        Ok(())
    }

    /// The request's descriptor passed: fetch keyed host data, or go on.
    pub(super) fn start(&mut self, i: u32) {
        let r = &self.reqs[i as usize];
        let host_data = match r.desc {
            DataDesc::Keyed { addr, len, key, .. } => {
                let to_ctrl = if r.sqe.opc == admin_opc::FABRICS || self.qid == 0 {
                    admin_dir(if r.sqe.opc == admin_opc::FABRICS {
                        r.sqe.fctype()
                    } else {
                        r.sqe.opc
                    }) == Some(Dir::ToCtrl)
                } else {
                    !matches!(r.cmd, IoCmd::Read { .. })
                };
                to_ctrl.then_some((addr, len, key))
            }
            _ => None,
        };
        let Some((addr, len, key)) = host_data else {
            return self.dispatch(i);
        };
        self.reqs[i as usize].st = St::Reading;
        self.stat(|s| &s.pending_rdma_read, 1);
        self.stat(|s| &s.total_send_wrs, 1);
        let off = i as usize * self.slot_bytes;
        let posted = self.qp.post_rdma(
            WR_READ | u64::from(i),
            RdmaOp::Read,
            Mem::Data,
            off,
            len as usize,
            (addr, key),
            true,
        );
        if let Err((op, e)) = posted {
            log::info!("nvmf: RDMA queue from {}: {op}: {e}", self.peer);
            self.close("cannot post an RDMA READ");
        }
    }

    /// The host's data for request `i` arrived by RDMA READ: into its buffer, then on.
    pub(super) fn on_host_data(&mut self, i: u32) {
        let Some(r) = self.reqs.get_mut(i as usize) else { return };
        if r.st != St::Reading {
            return;
        }
        r.st = St::Executing { pending: 0 };
        self.stat(|s| &s.pending_rdma_read, -1);
        let r = &mut self.reqs[i as usize];
        let DataDesc::Keyed { len, .. } = r.desc else { return };
        let off = i as usize * self.slot_bytes;
        let mem = self.qp.mem(Mem::Data);
        if let Some(b) = r.buf.as_mut() {
            b.set_len(len as usize);
            b.copy_from_slice(&mem[off..off + len as usize]);
        }
        r.in_len = len;
        self.dispatch(i);
    }

    /// Routes a command with its host data in: Connect, admin, or I/O.
    fn dispatch(&mut self, i: u32) {
        let sqe = self.reqs[i as usize].sqe;
        if self.ctrlr.is_none() {
            if sqe.opc == admin_opc::FABRICS && sqe.fctype() == fctype::CONNECT {
                return self.connect(i);
            }
            return self.complete(i, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
        }
        if sqe.opc == admin_opc::FABRICS && matches!(sqe.fctype(), fctype::AUTH_SEND | fctype::AUTH_RECV) {
            return self.auth_cmd(i);
        }
        if self.auth.is_some() && !self.authenticated {
            // Not authenticated yet: only authentication commands.
            return self.complete(i, Status::AUTH_REQUIRED, 0, 0);
        }
        if self.qid == 0 {
            self.admin(i)
        } else if sqe.opc == admin_opc::FABRICS {
            self.complete(i, Status::INVALID_OPCODE, 0, 0)
        } else {
            self.execute(i)
        }
    }

    /// Fabrics Connect through the shared checks; the queue id and size come from the
    /// rdma_cm request and must match the Connect command.
    fn connect(&mut self, i: u32) {
        let res = self.try_connect(i);
        match res {
            Ok(dw0) => self.complete(i, Status::SUCCESS, dw0, 0),
            Err((s, dw0)) => self.complete(i, s, dw0, 0),
        }
    }

    fn try_connect(&mut self, i: u32) -> Result<u32, connect::Refusal> {
        let r = &self.reqs[i as usize];
        let cmd = connect::connect_cmd(&r.sqe)?;
        if cmd.qid != self.params.qid || u32::from(cmd.sqsize) + 1 != u32::from(self.params.sq_entries) {
            // The queue the host asked rdma_cm for is the one it must connect.
            return Err((
                Status::CONNECT_INVALID_PARAMETERS,
                crate::spec::fabrics::connect_invalid_param_dw0(false, 42),
            ));
        }
        let data = &r.buf.as_deref().unwrap_or(&[])[..r.in_len as usize];
        let checked = connect::check_data(&self.target, data, self.listen, self.peer)?;
        let auth_keys = if checked.subsys.kind == SubsystemKind::Nvme {
            checked.subsys.auth_keys(&checked.hostnqn, &self.target.keyring)
        } else {
            None
        };
        let c = if cmd.qid == 0 {
            connect::new_controller(&checked, &cmd, &self.opts, self.listen, self.peer)?
        } else {
            let c = connect::join_controller(&checked, &cmd, &self.opts)?;
            self.ctrlr = Some(c.clone());
            self.io.refresh(&checked.subsys);
            c
        };
        c.add_queue(QueueInfo {
            qid: self.qid,
            listen: self.listen,
            peer: self.peer,
            core: self.core,
        });
        let mut dw0 = u32::from(c.cntlid);
        if let Some(keys) = auth_keys {
            // Authentication must finish within KATO (120 s without one), as on TCP.
            self.auth = Some(Box::new(Session::new(keys, &checked.hostnqn, &checked.subsys.nqn)));
            self.auth_deadline_ns = auth::deadline_ns(engine::clock::now_ns(), c.kato_ms());
            dw0 |= crate::spec::auth::CONNECT_AUTHREQ_ATR;
        }
        self.ctrlr = Some(c);
        if self.qid == 0 {
            self.stat(|s| &s.admin_qpairs, 1);
            self.stat(|s| &s.current_admin_qpairs, 1);
        } else {
            self.stat(|s| &s.io_qpairs, 1);
            self.stat(|s| &s.current_io_qpairs, 1);
        }
        Ok(dw0)
    }

    /// An admin command, handed to the shared controller; its data goes to the host by
    /// RDMA WRITE before the response.
    fn admin(&mut self, i: u32) {
        let Some(c) = self.ctrlr.clone() else { return };
        let r = &self.reqs[i as usize];
        let sqe = r.sqe;
        let data_in = &r.buf.as_deref().unwrap_or(&[])[..r.in_len as usize];
        match c.admin(&self.target, &sqe, data_in, self.listen) {
            AdminResult::ParkAer => {
                if self.aers.len() >= AER_MAX {
                    return self.complete(i, Status::ASYNC_EVENT_REQUEST_LIMIT, 0, 0);
                }
                self.reqs[i as usize].st = St::Parked;
                self.aers.push(i);
            }
            AdminResult::Reply { status, dw0, dw1, data } => {
                if status.is_success() && !data.is_empty() {
                    if let DataDesc::Keyed { .. } = self.reqs[i as usize].desc {
                        if !self.reply_to_host(i, &data) {
                            return;
                        }
                    }
                }
                self.complete(i, status, dw0, dw1)
            }
        }
    }

    /// Copies `data` (at most a slot) into request `i`'s data slot and writes it to the
    /// host's keyed buffer ([`Queue::write_to_host`]). False if the queue closed.
    pub(super) fn reply_to_host(&mut self, i: u32, data: &[u8]) -> bool {
        let off = i as usize * self.slot_bytes;
        let n = data.len().min(self.slot_bytes);
        self.qp.mem_mut(Mem::Data)[off..off + n].copy_from_slice(&data[..n]);
        self.write_to_host(i, n)
    }

    /// Posts the RDMA WRITE of `n` bytes of request `i`'s data slot to the host's keyed
    /// buffer (no more than the buffer holds). Unsignalled: the response SEND posted next
    /// on the same queue pair reaches the host after it. False if the queue closed.
    pub(super) fn write_to_host(&mut self, i: u32, n: usize) -> bool {
        let DataDesc::Keyed { addr, len, key, .. } = self.reqs[i as usize].desc else {
            return true;
        };
        let n = n.min(len as usize);
        if n == 0 {
            return true;
        }
        let off = i as usize * self.slot_bytes;
        self.stat(|s| &s.rdma_writes, 1);
        self.stat(|s| &s.total_send_wrs, 1);
        let posted = self.qp.post_rdma(
            WR_WRITE | u64::from(i),
            RdmaOp::Write,
            Mem::Data,
            off,
            n,
            (addr, key),
            false,
        );
        if let Err((op, e)) = posted {
            log::info!("nvmf: RDMA queue from {}: {op}: {e}", self.peer);
            self.close("cannot post an RDMA WRITE");
            return false;
        }
        true
    }

    /// Sends the response for request `i` (a SEND of its CQE); the request frees when the
    /// SEND completes. A keyed descriptor that asked for its key to be invalidated gets a
    /// SEND with Invalidate of that key where the device can (the host then skips its own
    /// local invalidation), else a plain SEND (docs/nvme-rdma.md).
    pub(super) fn complete(&mut self, i: u32, status: Status, dw0: u32, dw1: u32) {
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd: self.sqhd,
            sqid: self.qid,
            cid: self.reqs[i as usize].sqe.cid,
            status: status.to_field(),
        };
        let off = i as usize * CQE_BYTES;
        self.qp.mem_mut(Mem::Send)[off..off + CQE_BYTES].copy_from_slice(cqe.as_bytes());
        self.reqs[i as usize].st = St::Sending;
        if self.qid != 0 && self.reqs[i as usize].sqe.opc != admin_opc::FABRICS {
            self.stat(|s| &s.completed_nvme_io, 1);
        }
        self.stat(|s| &s.total_send_wrs, 1);
        let wr = WR_SEND | u64::from(i);
        let posted = match self.reqs[i as usize].desc {
            DataDesc::Keyed {
                key, invalidate: true, ..
            } => self.qp.post_send_inv(wr, off, CQE_BYTES, true, key),
            _ => self.qp.post_send(wr, off, CQE_BYTES, true).map(|()| false),
        };
        match posted {
            Ok(true) => self.stat(|s| &s.send_with_invalidate, 1),
            Ok(false) => {}
            Err((op, e)) => {
                log::info!("nvmf: RDMA queue from {}: {op}: {e}", self.peer);
                self.close("cannot post a SEND");
            }
        }
    }

    /// An I/O command with its data in: submit its bdev operation.
    fn execute(&mut self, i: u32) {
        let r = &mut self.reqs[i as usize];
        let (io, chan) = (&self.io, r.chan);
        let supports = |op| io.supports(chan, op);
        let ud = u64::from(i);
        let (op, slba, nlb, buf) = match r.cmd {
            IoCmd::Read { slba, nlb, bytes } => {
                if let Some(b) = r.buf.as_mut() {
                    b.set_len(bytes as usize);
                }
                (IoOp::Read, slba, nlb, r.buf.take())
            }
            IoCmd::Write { slba, nlb, .. } => (IoOp::Write, slba, nlb, r.buf.take()),
            IoCmd::Compare { slba, nlb, bytes } => {
                // The host's data waits in the registered data slot (a keyed transfer left
                // it there; in-capsule data is put there) while the bdev reads into the
                // request's buffer beside it.
                let (off, n) = (i as usize * self.slot_bytes, bytes as usize);
                if let (Some(b), false) = (r.buf.as_mut(), matches!(r.desc, DataDesc::Keyed { .. })) {
                    let m = n.min(b.len());
                    self.qp.mem_mut(Mem::Data)[off..off + m].copy_from_slice(&b[..m]);
                }
                if let Some(b) = r.buf.as_mut() {
                    b.set_len(n);
                }
                (IoOp::Read, slba, nlb, r.buf.take())
            }
            IoCmd::RestartPoint { tag_len } => return self.start_restart_point(i, tag_len),
            IoCmd::Flush if supports(IoOp::Flush) => (IoOp::Flush, 0, 0, None),
            IoCmd::Flush => return self.flush_done(i),
            IoCmd::WriteZeroes { slba, nlb } if supports(IoOp::WriteZeroes) => (IoOp::WriteZeroes, slba, nlb, None),
            IoCmd::WriteZeroes { .. } => return self.complete(i, Status::INVALID_OPCODE, 0, 0),
            IoCmd::Dsm { ranges, deallocate } if deallocate && supports(IoOp::Unmap) => {
                return self.execute_dsm(i, ranges)
            }
            _ => return self.complete(i, Status::SUCCESS, 0, 0),
        };
        r.st = St::Executing { pending: 1 };
        self.submit(
            i,
            IoRequest {
                op,
                offset_blocks: slba,
                num_blocks: nlb,
                buf,
                user_data: ud,
            },
        );
    }

    /// Dataset Management with Deallocate: one Unmap per range, after all are checked.
    fn execute_dsm(&mut self, i: u32, ranges: u32) {
        let r = &self.reqs[i as usize];
        let data = &r.buf.as_deref().unwrap_or(&[])[..r.in_len as usize];
        match self.io.unmap_ranges(r.chan, data, ranges, u64::from(i)) {
            Err(s) => self.complete(i, s, 0, 0),
            Ok(n) => {
                self.stat(|s| &s.pending_bdev_io, i64::from(n.pending));
                if n.pending == 0 {
                    return self.complete(i, Status::SUCCESS, 0, 0);
                }
                self.reqs[i as usize].st = St::Executing { pending: n.pending };
            }
        }
    }

    fn submit(&mut self, i: u32, io: IoRequest) {
        let chan = self.reqs[i as usize].chan;
        // Counted whatever the channel did with it, as on TCP: it completes once through
        // `poll_bdev` or `poll_closing`, or `close` drops it, and each takes it off.
        self.io.submit(chan, io);
        self.stat(|s| &s.pending_bdev_io, 1);
    }

    /// Reaps bdev completions and resubmits what a full channel handed back.
    pub(super) fn poll_bdev(&mut self) -> bool {
        QueueChannels::poll(
            self,
            |q| &mut q.io,
            |q, done| {
                q.stat(|s| &s.pending_bdev_io, -(done.len() as i64));
                for cpl in done.drain(..) {
                    q.on_bdev_done(cpl);
                }
            },
        )
    }

    fn on_bdev_done(&mut self, cpl: IoCompletion) {
        let i = (cpl.user_data & 0xFFFF_FFFF) as u32;
        let Some(r) = self.reqs.get_mut(i as usize) else { return };
        let St::Executing { pending } = r.st else { return };
        if cpl.buf.is_some() {
            r.buf = cpl.buf;
        }
        if let Err(e) = &cpl.result {
            let op = match r.cmd {
                IoCmd::Read { .. } | IoCmd::Compare { .. } => IoOp::Read,
                IoCmd::WriteZeroes { .. } => IoOp::WriteZeroes,
                IoCmd::Dsm { .. } => IoOp::Unmap,
                IoCmd::Flush => IoOp::Flush,
                _ => IoOp::Write,
            };
            if r.status.is_success() {
                log::debug!("nvmf: bdev {op:?} failed: {e}");
                r.status = io::status_of(op, e);
            }
        }
        let pending = pending.saturating_sub(1);
        r.st = St::Executing { pending };
        if pending > 0 {
            return;
        }
        let status = r.status;
        if !status.is_success() {
            return self.complete(i, status, 0, 0);
        }
        let off = i as usize * self.slot_bytes;
        match r.cmd {
            IoCmd::Read { bytes, .. } => {
                let n = bytes as usize;
                if let Some(b) = r.buf.as_deref() {
                    self.qp.mem_mut(Mem::Data)[off..off + n].copy_from_slice(&b[..n]);
                }
                if !self.write_to_host(i, n) {
                    return;
                }
                self.complete(i, status, 0, 0);
            }
            IoCmd::Compare { bytes, .. } => {
                let n = bytes as usize;
                let host = &self.qp.mem(Mem::Data)[off..off + n];
                let same = r.buf.as_deref().is_some_and(|b| b.len() >= n && b[..n] == *host);
                let st = if same { Status::SUCCESS } else { Status::COMPARE_FAILURE };
                self.complete(i, st, 0, 0);
            }
            IoCmd::Flush => self.flush_done(i),
            _ => self.complete(i, status, 0, 0),
        }
    }
}
