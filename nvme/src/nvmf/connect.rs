//! Fabrics Connect, transport-neutral: checking the Connect command and data against the
//! target (subsystem, listener, allowed host), creating a controller for an admin queue and
//! finding the live controller an I/O queue joins. The NVMe/TCP and NVMe/RDMA queues call
//! these and keep only what is theirs (where the Connect data came from, TLS identities,
//! per-queue tables) (`docs/nvme-tcp.md`, `docs/nvme-rdma.md`).

use super::ctrlr::Controller;
use super::{Subsystem, SubsystemKind, Target, TransportOpts};
use crate::spec::fabrics::{self, ConnectCmd, ConnectData};
use crate::spec::{get_str, Plain, Sqe, Status};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A Connect refusal: the status and the response's DW0 (which field was invalid).
pub(crate) type Refusal = (Status, u32);

fn invalid(in_data: bool, off: u16) -> Refusal {
    (
        Status::CONNECT_INVALID_PARAMETERS,
        fabrics::connect_invalid_param_dw0(in_data, off),
    )
}

/// The Connect command's fields, if its record format is one this target speaks.
pub(crate) fn connect_cmd(sqe: &Sqe) -> Result<ConnectCmd, Refusal> {
    let cmd = ConnectCmd::from_sqe(sqe);
    if cmd.recfmt != 0 {
        return Err((Status::CONNECT_INCOMPATIBLE_FORMAT, 0));
    }
    Ok(cmd)
}

/// A Connect that passed the target-wide checks.
pub(crate) struct Checked {
    pub(crate) data: ConnectData,
    pub(crate) subsys: Arc<Subsystem>,
    pub(crate) hostnqn: String,
}

/// Checks the Connect data: the subsystem exists and listens on `listen`, the host may use
/// it.
pub(crate) fn check_data(
    target: &Target,
    data: &[u8],
    listen: SocketAddr,
    peer: SocketAddr,
) -> Result<Checked, Refusal> {
    let data = ConnectData::read_from(data).ok_or((Status::DATA_SGL_LENGTH_INVALID, 0))?;
    let subnqn = get_str(&data.subnqn);
    let hostnqn = get_str(&data.hostnqn);
    let subsys: Arc<Subsystem> = match target.subsystem(&subnqn) {
        Ok(s) if !s.deleted.load(Ordering::Acquire) => s,
        _ => {
            log::info!("nvmf: {peer}: Connect to unknown subsystem {subnqn:?}");
            return Err(invalid(true, 256));
        }
    };
    if subsys.kind == SubsystemKind::Nvme && !subsys.state().listeners.contains(&listen) {
        log::info!("nvmf: {peer}: subsystem {subnqn} does not listen on {listen}");
        return Err(invalid(true, 256));
    }
    if !subsys.host_allowed(&hostnqn) {
        log::info!("nvmf: {peer}: host {hostnqn:?} not allowed on {subnqn}");
        return Err((
            Status::CONNECT_INVALID_HOST,
            fabrics::connect_invalid_param_dw0(true, 512),
        ));
    }
    Ok(Checked { data, subsys, hostnqn })
}

/// Admin queue Connect: a new controller of `c.subsys` for the host.
pub(crate) fn new_controller(
    c: &Checked,
    cmd: &ConnectCmd,
    opts: &TransportOpts,
    listen: SocketAddr,
    peer: SocketAddr,
) -> Result<Arc<Controller>, Refusal> {
    let subsys = &c.subsys;
    if cmd.sqsize == 0 || u32::from(cmd.sqsize) + 1 > u32::from(opts.max_aq_depth) {
        return Err(invalid(false, 44));
    }
    if c.data.cntlid != 0xFFFF {
        return Err(invalid(true, 16));
    }
    let Some(cntlid) = subsys.alloc_cntlid() else {
        log::warn!(
            "nvmf: {peer}: every controller ID of {} ({}..={}) is in use",
            subsys.nqn,
            subsys.min_cntlid,
            subsys.max_cntlid
        );
        return Err((Status::CONNECT_CONTROLLER_BUSY, 0));
    };
    let ctrlr = Arc::new(Controller::new(
        cntlid,
        subsys.clone(),
        c.hostnqn.clone(),
        c.data.hostid,
        cmd.kato_ms,
        opts.clone(),
        subsys.listener_ana(listen),
    ));
    subsys.state().controllers.push(Arc::downgrade(&ctrlr));
    log::info!(
        "nvmf: {peer}: controller {} of {} for host {} (KATO {} ms)",
        ctrlr.cntlid,
        subsys.nqn,
        ctrlr.hostnqn,
        cmd.kato_ms
    );
    Ok(ctrlr)
}

/// I/O queue Connect: the live controller the Connect data names, with the queue's id
/// claimed in it.
pub(crate) fn join_controller(c: &Checked, cmd: &ConnectCmd, opts: &TransportOpts) -> Result<Arc<Controller>, Refusal> {
    // A controller that failed (keep-alive timeout, ...) is gone for new queues.
    let ctrlr = c
        .subsys
        .state()
        .controllers
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .find(|x| x.cntlid == c.data.cntlid && x.hostnqn == c.hostnqn && !x.failed())
        .ok_or(invalid(true, 16))?;
    if !ctrlr.ready() {
        return Err((Status::COMMAND_SEQUENCE_ERROR, 0));
    }
    if cmd.sqsize == 0 || u32::from(cmd.sqsize) + 1 > u32::from(opts.max_queue_depth) {
        return Err(invalid(false, 44));
    }
    ctrlr.claim_io_qid(cmd.qid).map_err(|_| invalid(false, 42))?;
    Ok(ctrlr)
}
