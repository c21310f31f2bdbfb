//! Fabrics Connect on the NVMe/TCP target: the admin queue's Connect creates a controller,
//! an I/O queue's Connect joins the live controller it names (`docs/nvme-tcp.md`).

use super::request::Req;
use super::{Conn, IN_CAPSULE_DATA_BYTES};
use crate::nvmf::auth::Session;
use crate::nvmf::connect;
use crate::nvmf::ctrlr::QueueInfo;
use crate::nvmf::restart_wait::RestartWaits;
use crate::nvmf::SubsystemKind;
use crate::spec::auth;
use crate::spec::cmd::sgl_type;
use crate::spec::fabrics::{self, ConnectCmd};
use crate::spec::Status;
use crate::tcp::pdu::RxLimits;

impl Conn {
    pub(super) fn connect(&mut self, slot: usize) {
        match self.try_connect(slot) {
            Ok(dw0) => self.complete(slot, Status::SUCCESS, dw0, 0),
            Err((status, dw0)) => self.complete(slot, status, dw0, 0),
        }
    }

    /// Connect: Ok carries the response's DW0 (CNTLID, and AUTHREQ.ATR when the host must
    /// authenticate this queue).
    pub(super) fn try_connect(&mut self, slot: usize) -> Result<u32, (Status, u32)> {
        let r = &self.reqs[slot];
        let cmd = connect::connect_cmd(&r.sqe)?;
        if r.sqe.sgl.sgl_type != sgl_type::DATA_BLOCK_OFFSET {
            // Connect data must come in-capsule (it always fits).
            return Err((Status::SGL_DESCRIPTOR_TYPE_INVALID, 0));
        }
        let checked = connect::check_data(&self.target, r.buf.as_deref().unwrap_or(&[]), self.listen, self.peer)?;
        let (subsys, hostnqn) = (checked.subsys.clone(), checked.hostnqn.clone());
        let subnqn = subsys.nqn.clone();
        if let Some(id) = self.tls_identity() {
            // The TLS PSK was the one of (host, subsystem) in its identity: Connect must name
            // the same pair.
            let bound = crate::nvmf::tls::psk::parse_identity(id.as_bytes()).ok();
            if bound.is_none_or(|b| b.hostnqn != hostnqn || b.subnqn != subnqn) {
                log::warn!(
                    "nvmf: {}: Connect as {hostnqn} to {subnqn} over TLS with PSK identity {id:?} of another host or subsystem",
                    self.peer
                );
                return Err((
                    Status::CONNECT_INVALID_HOST,
                    fabrics::connect_invalid_param_dw0(true, 512),
                ));
            }
        }
        let entries = u32::from(cmd.sqsize) + 1;
        let auth_keys = if subsys.kind == SubsystemKind::Nvme {
            subsys.auth_keys(&hostnqn, &self.target.keyring)
        } else {
            None
        };
        let auth_session = auth_keys.map(|k| Box::new(Session::new(k, &hostnqn, &subsys.nqn)));
        if cmd.qid == 0 {
            self.connect_admin(&checked, &cmd)?;
        } else {
            self.connect_io(&checked, &cmd)?;
        }
        // Size the request table to the queue (setup path: allocates once).
        self.sq_entries = entries as u16;
        while self.reqs.len() < entries as usize {
            self.free.push(self.reqs.len());
            self.reqs.push(Req::new(self.pools.slot_buf()));
        }
        self.buf_wait.reserve(entries as usize);
        self.rp = RestartWaits::new(entries as usize);
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
        let mut dw0 = u32::from(self.ctrlr.as_ref().map(|c| c.cntlid).unwrap_or(0));
        if let Some(a) = auth_session {
            // Authentication must finish within KATO (120 s without one), as SPDK does.
            let kato = self.ctrlr.as_ref().map(|c| c.kato_ms()).unwrap_or(0);
            self.auth_deadline_ns = crate::nvmf::auth::deadline_ns(engine::clock::now_ns(), kato);
            self.auth = Some(a);
            dw0 |= auth::CONNECT_AUTHREQ_ATR;
        }
        Ok(dw0)
    }

    /// Admin queue Connect: a new controller.
    fn connect_admin(&mut self, checked: &connect::Checked, cmd: &ConnectCmd) -> Result<(), (Status, u32)> {
        let c = connect::new_controller(checked, cmd, &self.opts, self.listen, self.peer)?;
        self.stat(|s| &s.admin_qpairs, 1);
        self.stat(|s| &s.current_admin_qpairs, 1);
        self.ctrlr = Some(c);
        self.qid = 0;
        Ok(())
    }

    /// I/O queue Connect: joins the live controller the Connect data names.
    fn connect_io(&mut self, checked: &connect::Checked, cmd: &ConnectCmd) -> Result<(), (Status, u32)> {
        let c = connect::join_controller(checked, cmd, &self.opts)?;
        self.stat(|s| &s.io_qpairs, 1);
        self.stat(|s| &s.current_io_qpairs, 1);
        self.qid = cmd.qid;
        self.ctrlr = Some(c);
        self.io.refresh(&checked.subsys);
        Ok(())
    }
}
