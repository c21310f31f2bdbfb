//! Fabrics Connect on the NVMe/TCP target: the admin queue's Connect creates a controller,
//! an I/O queue's Connect joins the live controller it names (`docs/nvme-tcp.md`).

use super::request::Req;
use super::{Conn, IN_CAPSULE_DATA_BYTES};
use crate::nvmf::auth::Session;
use crate::nvmf::ctrlr::{Controller, QueueInfo};
use crate::nvmf::{Subsystem, SubsystemKind};
use crate::spec::auth;
use crate::spec::cmd::sgl_type;
use crate::spec::fabrics::{self, ConnectCmd, ConnectData};
use crate::spec::{get_str, Plain, Status};
use crate::tcp::pdu::RxLimits;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How long a host has to authenticate a queue when its controller has no KATO.
const AUTH_TIMEOUT_NO_KATO_MS: u64 = 120_000;

/// Connect Invalid Parameters, naming the field at byte `off` of the command or its data.
fn invalid(in_data: bool, off: u16) -> (Status, u32) {
    (
        Status::CONNECT_INVALID_PARAMETERS,
        fabrics::connect_invalid_param_dw0(in_data, off),
    )
}

impl Conn {
    pub(super) fn connect(&mut self, slot: usize) {
        match self.try_connect(slot) {
            Ok(dw0) => self.complete(slot, Status::SUCCESS, dw0, 0),
            Err((status, dw0)) => self.complete(slot, status, dw0, 0),
        }
    }

    /// Connect: Ok carries the response's DW0 (CNTLID, and AUTHREQ.ATR when the host must
    /// authenticate this queue). The steps: read the command and its data, admit the host
    /// to the subsystem, create or join the controller, size the queue, arm authentication.
    pub(super) fn try_connect(&mut self, slot: usize) -> Result<u32, (Status, u32)> {
        let (cmd, data) = self.connect_command(slot)?;
        let hostnqn = get_str(&data.hostnqn);
        let subsys = self.admit(&get_str(&data.subnqn), &hostnqn)?;
        let auth_keys = if subsys.kind == SubsystemKind::Nvme {
            subsys.auth_keys(&hostnqn, &self.target.keyring)
        } else {
            None
        };
        let auth_session = auth_keys.map(|k| Box::new(Session::new(k, &hostnqn, &subsys.nqn)));
        if cmd.qid == 0 {
            self.connect_admin(&subsys, &cmd, &data, hostnqn)?;
        } else {
            self.connect_io(&subsys, &cmd, &data, &hostnqn)?;
        }
        self.size_queue(u32::from(cmd.sqsize) + 1);
        let dw0 = u32::from(self.ctrlr.as_ref().map(|c| c.cntlid).unwrap_or(0));
        Ok(match auth_session {
            Some(a) => self.arm_auth(a, dw0),
            None => dw0,
        })
    }

    /// The Connect command of `slot` and its in-capsule data.
    fn connect_command(&self, slot: usize) -> Result<(ConnectCmd, ConnectData), (Status, u32)> {
        let r = &self.reqs[slot];
        let cmd = ConnectCmd::from_sqe(&r.sqe);
        if cmd.recfmt != 0 {
            return Err((Status::CONNECT_INCOMPATIBLE_FORMAT, 0));
        }
        if r.sqe.sgl.sgl_type != sgl_type::DATA_BLOCK_OFFSET {
            // Connect data must come in-capsule (it always fits).
            return Err((Status::SGL_DESCRIPTOR_TYPE_INVALID, 0));
        }
        let data =
            ConnectData::read_from(r.buf.as_deref().unwrap_or(&[])).ok_or((Status::DATA_SGL_LENGTH_INVALID, 0))?;
        Ok((cmd, data))
    }

    /// The subsystem `subnqn` if it exists, listens where this connection came in, allows
    /// `hostnqn`, and (over TLS) is the one the PSK identity names.
    fn admit(&self, subnqn: &str, hostnqn: &str) -> Result<Arc<Subsystem>, (Status, u32)> {
        let subsys: Arc<Subsystem> = match self.target.subsystem(subnqn) {
            Ok(s) if !s.deleted.load(Ordering::Acquire) => s,
            _ => {
                log::info!("nvmf: {}: Connect to unknown subsystem {subnqn:?}", self.peer);
                return Err(invalid(true, 256));
            }
        };
        if subsys.kind == SubsystemKind::Nvme && !subsys.state().listeners.contains(&self.listen) {
            log::info!(
                "nvmf: {}: subsystem {subnqn} does not listen on {}",
                self.peer,
                self.listen
            );
            return Err(invalid(true, 256));
        }
        let invalid_host = (
            Status::CONNECT_INVALID_HOST,
            fabrics::connect_invalid_param_dw0(true, 512),
        );
        if !subsys.host_allowed(hostnqn) {
            log::info!("nvmf: {}: host {hostnqn:?} not allowed on {subnqn}", self.peer);
            return Err(invalid_host);
        }
        if let Some(id) = self.tls_identity() {
            // The TLS PSK was the one of (host, subsystem) in its identity: Connect must name
            // the same pair.
            let bound = crate::nvmf::tls::psk::parse_identity(id.as_bytes()).ok();
            if bound.is_none_or(|b| b.hostnqn != hostnqn || b.subnqn != subnqn) {
                log::warn!(
                    "nvmf: {}: Connect as {hostnqn} to {subnqn} over TLS with PSK identity {id:?} of another host or subsystem",
                    self.peer
                );
                return Err(invalid_host);
            }
        }
        Ok(subsys)
    }

    /// Sizes the request table and the receive limits to the connected queue, and tells
    /// the controller about it (setup path: allocates once).
    fn size_queue(&mut self, entries: u32) {
        self.sq_entries = entries as u16;
        while self.reqs.len() < entries as usize {
            self.free.push(self.reqs.len());
            self.reqs.push(Req::new(self.pools.slot_buf()));
        }
        self.buf_wait.reserve(entries as usize);
        let mut limits = RxLimits {
            in_capsule_data_bytes: self.opts.in_capsule_data_size,
            h2c_data_bytes: self.opts.io_unit_size,
            c2h_data_bytes: 0,
        };
        if self.qid == 0 {
            limits.in_capsule_data_bytes = IN_CAPSULE_DATA_BYTES;
        }
        self.rx.set_limits(limits);
        if let Some(c) = &self.ctrlr {
            c.add_queue(QueueInfo {
                qid: self.qid,
                listen: self.listen,
                peer: self.peer,
                core: self.core,
            });
        }
    }

    /// The queue must authenticate before anything else: arms the session and its deadline
    /// and returns `dw0` with AUTHREQ.ATR set.
    fn arm_auth(&mut self, session: Box<Session>, dw0: u32) -> u32 {
        // Authentication must finish within KATO (120 s without one), as SPDK does.
        let kato = self.ctrlr.as_ref().map(|c| c.kato_ms()).unwrap_or(0);
        let ms = if kato == 0 {
            AUTH_TIMEOUT_NO_KATO_MS
        } else {
            u64::from(kato)
        };
        self.auth_deadline_ns = engine::clock::now_ns() + ms * 1_000_000;
        self.auth = Some(session);
        dw0 | auth::CONNECT_AUTHREQ_ATR
    }

    /// Admin queue Connect: a new controller.
    pub(super) fn connect_admin(
        &mut self,
        subsys: &Arc<Subsystem>,
        cmd: &ConnectCmd,
        data: &ConnectData,
        hostnqn: String,
    ) -> Result<(), (Status, u32)> {
        if cmd.sqsize == 0 || u32::from(cmd.sqsize) + 1 > u32::from(self.opts.max_aq_depth) {
            return Err(invalid(false, 44));
        }
        if data.cntlid != 0xFFFF {
            return Err(invalid(true, 16));
        }
        let Some(cntlid) = subsys.alloc_cntlid() else {
            log::warn!(
                "nvmf: {}: every controller ID of {} ({}..={}) is in use",
                self.peer,
                subsys.nqn,
                subsys.min_cntlid,
                subsys.max_cntlid
            );
            return Err((Status::CONNECT_CONTROLLER_BUSY, 0));
        };
        let c = Arc::new(Controller::new(
            cntlid,
            subsys.clone(),
            hostnqn,
            data.hostid,
            cmd.kato_ms,
            self.opts.clone(),
            subsys.listener_ana(self.listen),
        ));
        subsys.state().controllers.push(Arc::downgrade(&c));
        log::info!(
            "nvmf: {}: controller {} of {} for host {} (KATO {} ms)",
            self.peer,
            c.cntlid,
            subsys.nqn,
            c.hostnqn,
            cmd.kato_ms
        );
        self.stat(|s| &s.admin_qpairs, 1);
        self.stat(|s| &s.current_admin_qpairs, 1);
        self.ctrlr = Some(c);
        self.qid = 0;
        Ok(())
    }

    /// I/O queue Connect: joins the live controller the Connect data names.
    pub(super) fn connect_io(
        &mut self,
        subsys: &Arc<Subsystem>,
        cmd: &ConnectCmd,
        data: &ConnectData,
        hostnqn: &str,
    ) -> Result<(), (Status, u32)> {
        // A controller that failed (keep-alive timeout, ...) is gone for new queues.
        let c = subsys
            .state()
            .controllers
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|c| c.cntlid == data.cntlid && c.hostnqn == hostnqn && !c.failed())
            .ok_or(invalid(true, 16))?;
        if !c.ready() {
            return Err((Status::COMMAND_SEQUENCE_ERROR, 0));
        }
        if cmd.sqsize == 0 || u32::from(cmd.sqsize) + 1 > u32::from(self.opts.max_queue_depth) {
            return Err(invalid(false, 44));
        }
        c.claim_io_qid(cmd.qid).map_err(|_| invalid(false, 42))?;
        self.stat(|s| &s.io_qpairs, 1);
        self.stat(|s| &s.current_io_qpairs, 1);
        self.qid = cmd.qid;
        self.ctrlr = Some(c);
        self.refresh_ns(subsys);
        Ok(())
    }
}
