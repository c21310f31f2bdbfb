//! A controller: what one host's Fabrics Connect on an admin queue creates. Holds the
//! fabrics "registers" (CC, CSTS), features, keep-alive deadline, asynchronous events and
//! the set of I/O queues connected to it, and answers every admin command.
//!
//! Admin commands run on the admin queue's reactor, I/O queue Connects on theirs; the
//! shared state sits behind one lock that only the admin path and Connect take. The data
//! path reads only the `failed` flag (one relaxed atomic load per poll).

use super::ana::{self, AnaState, ListenerAna};
use super::keepalive::KeepAlive;
use super::restart::RESTART_TAG_BYTES_MAX;
use super::tcp::{IN_CAPSULE_DATA_BYTES, MAX_IO_BYTES};
use super::{Subsystem, SubsystemKind, Target, TransportOpts};
use crate::spec::cmd::{admin_opc, io_opc, sgl_type};
use crate::spec::fabrics::{self, cc, csts, fctype, fid, prop, PropertyCmd};
use crate::spec::identify::{self, cns, IdentifyController, IdentifyNamespace};
use crate::spec::log::{self as logpage, lid, DiscoveryLogEntry, DiscoveryLogHeader, FirmwareSlotLog, SmartLog};
use crate::spec::{put_str, Plain, Sqe, Status};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// NVMe version reported in VS and Identify (1.3.0).
pub const NVME_VERSION: u32 = 0x0001_0300;
/// Asynchronous Event Requests a host may leave outstanding (AERL + 1).
pub const AER_MAX: usize = 4;
/// Abort commands outstanding (ACL + 1).
pub const ABORT_MAX: u8 = 4;
/// CAP.TO: worst-case time to ready, in 500 ms units.
const CAP_TO_500MS: u64 = 30;
/// Keep alive granularity reported in KAS, 100 ms units: the timer is checked on every poll
/// of the admin queue, so KATO is used as given (no rounding).
const KAS_100MS: u16 = 1;
/// CTRATT bit 6: Traffic Based Keep Alive Support (commands restart the keep-alive timer).
pub const CTRATT_TBKAS: u32 = 1 << 6;
/// Firmware revision string.
const FIRMWARE_REVISION: &str = "0.1.0";

/// What an admin command produced.
#[derive(Debug)]
pub enum AdminResult {
    /// Complete now with this status, result dwords and data for the host.
    Reply {
        status: Status,
        dw0: u32,
        dw1: u32,
        data: Vec<u8>,
    },
    /// An Asynchronous Event Request: the admin queue keeps it until an event happens.
    ParkAer,
}

fn reply(status: Status) -> AdminResult {
    AdminResult::Reply {
        status,
        dw0: 0,
        dw1: 0,
        data: Vec::new(),
    }
}

fn reply_dw0(dw0: u32) -> AdminResult {
    AdminResult::Reply {
        status: Status::SUCCESS,
        dw0,
        dw1: 0,
        data: Vec::new(),
    }
}

fn reply_data(data: Vec<u8>) -> AdminResult {
    AdminResult::Reply {
        status: Status::SUCCESS,
        dw0: 0,
        dw1: 0,
        data,
    }
}

struct CtrlState {
    cc: u32,
    csts: u32,
    /// Async event configuration (Set Features 0Bh).
    aec: u32,
    /// I/O queues granted (Set Features Number of Queues), 1-based count.
    io_queues: u16,
    /// Bit n set = I/O queue n connected.
    io_qids: u128,
    changed_ns: Vec<u32>,
    changed_ns_overflow: bool,
    /// Events waiting for an outstanding AER (AER completion DW0 values).
    events: VecDeque<u32>,
    /// A namespace-changed notice was sent and the host has not read log 04h yet.
    ns_notice_masked: bool,
    /// An ANA change notice was sent and the ANA log not read since (RAE clear).
    ana_notice_masked: bool,
    /// The connected queues (admin and I/O), for management queries.
    queues: Vec<QueueInfo>,
}

/// One connected queue of a controller, as management reports it
/// (`nvmf_subsystem_get_qpairs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    pub qid: u16,
    /// The listener address the queue connected to.
    pub listen: SocketAddr,
    /// The host's address.
    pub peer: SocketAddr,
    /// The reactor (poll group) serving it.
    pub core: u32,
}

/// One controller. Shared (`Arc`) by the connections of its admin and I/O queues.
pub struct Controller {
    pub cntlid: u16,
    pub subsys: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// Keep-alive timer: KATO from Connect (changed by Set Features 0Fh), restarted by Keep
    /// Alive and by commands on any queue.
    pub(crate) ka: KeepAlive,
    /// The ANA states of the listener the admin queue connected through (None: the
    /// subsystem no longer listens there).
    pub(crate) ana: Option<Arc<ListenerAna>>,
    opts: TransportOpts,
    failed: AtomicBool,
    events_pending: AtomicBool,
    st: Mutex<CtrlState>,
}

impl Controller {
    pub(crate) fn new(
        cntlid: u16,
        subsys: Arc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        kato_ms: u32,
        opts: TransportOpts,
        ana: Option<Arc<ListenerAna>>,
    ) -> Controller {
        let io_queues = opts.max_io_qpairs_per_ctrlr;
        Controller {
            cntlid,
            ana,
            subsys,
            hostnqn,
            hostid,
            ka: KeepAlive::new(kato_ms, engine::clock::now_ns()),
            opts,
            failed: AtomicBool::new(false),
            events_pending: AtomicBool::new(false),
            st: Mutex::new(CtrlState {
                cc: 0,
                csts: 0,
                aec: 0,
                io_queues,
                io_qids: 0,
                changed_ns: Vec::new(),
                changed_ns_overflow: false,
                events: VecDeque::new(),
                ns_notice_masked: false,
                ana_notice_masked: false,
                queues: Vec::new(),
            }),
        }
    }

    fn st(&self) -> MutexGuard<'_, CtrlState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once the controller failed (keep-alive timeout, subsystem deleted, admin queue
    /// gone): every queue of it must close.
    #[inline]
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Marks the controller failed; its queues close on their next poll.
    pub fn fail(&self, why: &str) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            log::info!(
                "nvmf: controller {} of {} (host {}) failed: {why}",
                self.cntlid,
                self.subsys.nqn,
                self.hostnqn
            );
            self.st().csts |= csts::CFS;
        }
    }

    /// Keep alive timeout in ms (0 = disabled).
    pub fn kato_ms(&self) -> u32 {
        self.ka.kato_ms()
    }

    /// Restarts the keep-alive timer at `now_ns` (Keep Alive command; commands on any queue
    /// do it through [`super::keepalive::TrafficNote`]).
    pub fn keep_alive(&self, now_ns: u64) {
        self.ka.alive(now_ns);
    }

    /// Whether KATO plus the grace ([`super::keepalive::grace_ms`]) has passed at `now_ns`
    /// without a Keep Alive or any command.
    pub fn keep_alive_expired(&self, now_ns: u64) -> bool {
        self.ka.expired(now_ns)
    }

    /// The last sign of life (Connect, Keep Alive, command), `engine::clock` ns.
    pub fn last_alive_ns(&self) -> u64 {
        self.ka.last_alive_ns()
    }

    /// CC and CSTS as last set / reported (management queries).
    pub fn registers(&self) -> (u32, u32) {
        let st = self.st();
        (st.cc, st.csts)
    }

    /// Bitmap of connected I/O queue IDs (bit n = queue n).
    pub fn io_qids(&self) -> u128 {
        self.st().io_qids
    }

    /// The connected queues, admin first (management path).
    pub fn queues(&self) -> Vec<QueueInfo> {
        let mut q = self.st().queues.clone();
        q.sort_by_key(|q| q.qid);
        q
    }

    /// Records a queue that finished its Connect (connect path, not per I/O).
    pub(crate) fn add_queue(&self, q: QueueInfo) {
        self.st().queues.push(q);
    }

    /// Forgets queue `qid` from `peer` when its connection closes.
    pub(crate) fn remove_queue(&self, qid: u16, peer: SocketAddr) {
        self.st().queues.retain(|q| !(q.qid == qid && q.peer == peer));
    }

    /// Whether the controller is enabled and ready (I/O queues may connect).
    pub fn ready(&self) -> bool {
        self.st().csts & csts::RDY != 0
    }

    /// Claims I/O queue `qid` for a connecting queue.
    pub(crate) fn claim_io_qid(&self, qid: u16) -> Result<(), Status> {
        let mut st = self.st();
        if qid == 0 || qid > st.io_queues || qid > 127 {
            return Err(Status::CONNECT_INVALID_PARAMETERS);
        }
        if st.io_qids & (1u128 << qid) != 0 {
            return Err(Status::CONNECT_INVALID_PARAMETERS);
        }
        st.io_qids |= 1u128 << qid;
        Ok(())
    }

    /// Releases I/O queue `qid` when its connection closes.
    pub(crate) fn release_io_qid(&self, qid: u16) {
        if qid < 128 {
            self.st().io_qids &= !(1u128 << qid);
        }
    }

    /// Records a namespace attribute change and queues a notice if the host asked for them.
    pub(crate) fn ns_changed(&self, nsid: u32) {
        let mut st = self.st();
        if !st.changed_ns.contains(&nsid) {
            if st.changed_ns.len() >= 1024 {
                st.changed_ns_overflow = true;
            } else {
                st.changed_ns.push(nsid);
            }
        }
        if st.aec & fabrics::AEC_NS_ATTR_NOTICES != 0 && !st.ns_notice_masked {
            st.ns_notice_masked = true;
            st.events.push_back(fabrics::AEN_NS_ATTR_CHANGED_DW0);
            self.events_pending.store(true, Ordering::Release);
        }
    }

    /// Queues an ANA change notice if the host asked for them and has read the log since
    /// the last one.
    pub(crate) fn ana_changed(&self) {
        let mut st = self.st();
        if self.subsys.ana.reporting && st.aec & ana::AEC_ANA_CHANGE_NOTICES != 0 && !st.ana_notice_masked {
            st.ana_notice_masked = true;
            st.events.push_back(ana::AEN_ANA_CHANGE_DW0);
            self.events_pending.store(true, Ordering::Release);
        }
    }

    /// The ANA state of group `grp` through this controller's listener.
    #[inline]
    pub fn ana_state(&self, grp: u32) -> AnaState {
        self.ana.as_ref().map_or(AnaState::Optimized, |a| a.state(grp))
    }

    /// Takes the next asynchronous event for an outstanding AER, if any. Cheap when none.
    pub(crate) fn take_event(&self) -> Option<u32> {
        if !self.events_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut st = self.st();
        let e = st.events.pop_front();
        if st.events.is_empty() {
            self.events_pending.store(false, Ordering::Release);
        }
        e
    }

    fn cap(&self) -> u64 {
        let mqes = u64::from(self.opts.max_queue_depth - 1);
        mqes | (1 << 16) | (CAP_TO_500MS << 24) | (1 << 37)
    }

    /// Handles one admin-queue command other than Connect. `data_in` is what the host sent
    /// with it; `listen` is the address the admin queue connected to.
    pub fn admin(&self, target: &Target, sqe: &Sqe, data_in: &[u8], listen: SocketAddr) -> AdminResult {
        if sqe.opc == admin_opc::FABRICS {
            return self.fabrics(sqe);
        }
        if self.st().csts & csts::RDY == 0 {
            return reply(Status::COMMAND_SEQUENCE_ERROR);
        }
        let discovery = self.subsys.kind == SubsystemKind::Discovery;
        match sqe.opc {
            admin_opc::IDENTIFY => self.identify(sqe),
            admin_opc::GET_LOG_PAGE => self.get_log_page(target, sqe, listen),
            admin_opc::KEEP_ALIVE => {
                self.keep_alive(engine::clock::now_ns());
                reply(Status::SUCCESS)
            }
            admin_opc::ASYNC_EVENT_REQUEST => AdminResult::ParkAer,
            admin_opc::GET_FEATURES
                if !discovery || matches!(sqe.cdw10 as u8, fid::KEEP_ALIVE_TIMER | fid::ASYNC_EVENT_CONFIG) =>
            {
                self.get_features(sqe)
            }
            admin_opc::SET_FEATURES
                if !discovery || matches!(sqe.cdw10 as u8, fid::KEEP_ALIVE_TIMER | fid::ASYNC_EVENT_CONFIG) =>
            {
                self.set_features(sqe, data_in)
            }
            // We never abort: "command not aborted" (DW0 bit 0 set) is always a valid answer.
            admin_opc::ABORT if !discovery => reply_dw0(1),
            _ => reply(Status::INVALID_OPCODE),
        }
    }

    fn fabrics(&self, sqe: &Sqe) -> AdminResult {
        match sqe.fctype() {
            fctype::PROPERTY_GET => {
                let p = PropertyCmd::from_sqe(sqe);
                let st = self.st();
                let v: u64 = match (p.offset, p.size8) {
                    (prop::CAP, true) => self.cap(),
                    (prop::VS, false) => u64::from(NVME_VERSION),
                    (prop::CC, false) => u64::from(st.cc),
                    (prop::CSTS, false) => u64::from(st.csts),
                    (prop::AQA, false) => 0,
                    _ => return reply(Status::INVALID_FIELD),
                };
                AdminResult::Reply {
                    status: Status::SUCCESS,
                    dw0: v as u32,
                    dw1: (v >> 32) as u32,
                    data: Vec::new(),
                }
            }
            fctype::PROPERTY_SET => {
                let p = PropertyCmd::from_sqe(sqe);
                if p.offset != prop::CC || p.size8 {
                    return reply(Status::INVALID_FIELD);
                }
                let new = p.value as u32;
                let mut st = self.st();
                st.cc = new;
                if new & cc::SHN_MASK != 0 {
                    st.csts = (st.csts & !csts::RDY) | csts::SHST_COMPLETE;
                } else if new & cc::EN != 0 {
                    st.csts = (st.csts | csts::RDY) & !csts::SHST_COMPLETE;
                } else {
                    st.csts &= !(csts::RDY | csts::SHST_COMPLETE);
                }
                reply(Status::SUCCESS)
            }
            fctype::CONNECT => reply(Status::COMMAND_SEQUENCE_ERROR),
            _ => reply(Status::INVALID_OPCODE),
        }
    }

    fn identify(&self, sqe: &Sqe) -> AdminResult {
        let cns_ = sqe.cdw10 as u8;
        let csi = (sqe.cdw11 >> 24) as u8;
        let nvm = self.subsys.kind == SubsystemKind::Nvme;
        match cns_ {
            cns::CONTROLLER => reply_data(self.identify_controller().as_bytes().to_vec()),
            cns::NAMESPACE if nvm => match self.identify_namespace(sqe.nsid) {
                Ok(d) => reply_data(d),
                Err(s) => reply(s),
            },
            cns::ACTIVE_NS_LIST if nvm => {
                if sqe.nsid >= 0xFFFF_FFFE {
                    return reply(Status::INVALID_NAMESPACE);
                }
                let mut d = vec![0u8; identify::IDENTIFY_BYTES];
                let st = self.subsys.state();
                for (i, nsid) in st.namespaces.keys().filter(|&&n| n > sqe.nsid).take(1024).enumerate() {
                    d[i * 4..i * 4 + 4].copy_from_slice(&nsid.to_le_bytes());
                }
                reply_data(d)
            }
            cns::NS_ID_DESCRIPTORS if nvm => {
                let Some(ns) = self.subsys.namespace(sqe.nsid) else {
                    return reply(Status::INVALID_NAMESPACE);
                };
                let mut d = vec![0u8; identify::IDENTIFY_BYTES];
                let mut put = |at: usize, nidt: u8, id: &[u8]| {
                    d[at] = nidt;
                    d[at + 1] = id.len() as u8;
                    d[at + 4..at + 4 + id.len()].copy_from_slice(id);
                    at + 4 + id.len()
                };
                let at = put(0, identify::nidt::NGUID, &ns.uuid);
                let at = put(at, identify::nidt::UUID, &ns.uuid);
                put(at, identify::nidt::CSI, &[0]);
                reply_data(d)
            }
            // I/O command set specific controller data for the NVM set: no extra limits.
            cns::CS_CONTROLLER if nvm && csi == 0 => reply_data(vec![0u8; identify::IDENTIFY_BYTES]),
            _ => reply(Status::INVALID_FIELD),
        }
    }

    /// The Identify Controller data for this controller.
    pub fn identify_controller(&self) -> IdentifyController {
        let mut c = IdentifyController::zeroed();
        let s = &self.subsys;
        put_str(&mut c.sn, &s.serial_number, b' ');
        put_str(&mut c.mn, &s.model_number, b' ');
        put_str(&mut c.fr, FIRMWARE_REVISION, b' ');
        c.rab = 6;
        c.cmic = ana::CMIC_MULTI_CTRL; // may be associated with more than one controller
        c.mdts = (self.opts.max_io_size / 4096).trailing_zeros() as u8;
        c.cntlid = self.cntlid;
        c.ver = NVME_VERSION;
        c.oaes = 1 << 8;
        c.acl = ABORT_MAX - 1;
        c.aerl = AER_MAX as u8 - 1;
        c.frmw = 0x03; // slot 1 read-only, one slot
        c.lpa = 0x04; // extended Get Log Page (NUMDU, LPO)
        c.elpe = 0;
        c.kas = KAS_100MS;
        c.ctratt = CTRATT_TBKAS;
        c.sqes = 0x66;
        c.cqes = 0x44;
        c.maxcmd = self.opts.max_queue_depth;
        c.icdoff = 0;
        c.msdbd = 1;
        // SGLs with the offset data block; RDMA adds keyed data blocks (bit 2), which the
        // Linux nvme-rdma host requires.
        c.sgls = 0x1 | (1 << 20) | if self.opts.rdma { 1 << 2 } else { 0 };
        c.iorcsz = 1;
        c.ioccsz = (64 + self.opts.in_capsule_data_size.min(IN_CAPSULE_DATA_BYTES)) / 16;
        put_str(&mut c.subnqn, &s.nqn, 0);
        if s.kind == SubsystemKind::Discovery {
            c.cntrltype = identify::cntrltype::DISCOVERY;
            c.nn = 0;
        } else {
            c.cntrltype = identify::cntrltype::IO;
            c.nn = s.max_namespaces;
            // Multipath hosts (Linux) refuse an ANA controller whose MNAN is 0.
            c.mnan = s.max_namespaces;
            c.oncs = 0x01 | 0x04 | 0x08; // compare, dataset management, write zeroes
            c.vwc = 0x01;
            c.oacs = 0;
            c.wctemp = 343;
            c.cctemp = 373;
            c.lpa |= 0x02; // Commands Supported and Effects log (05h)
            if s.ana.reporting {
                c.cmic |= ana::CMIC_MULTI_PORT | ana::CMIC_ANA_REPORTING;
                c.oaes |= ana::AEC_ANA_CHANGE_NOTICES;
                c.anatt = ana::ANATT_SECS;
                c.anacap = ana::ANACAP;
                c.anagrpmax = s.max_namespaces;
                c.nanagrpid = s.max_namespaces;
            }
            c.vs[..RESTART_POINT_VS_MARKER.len()].copy_from_slice(RESTART_POINT_VS_MARKER);
            let at = RESTART_POINT_VS_MARKER.len();
            c.vs[at] = io_opc::RESTART_POINT;
            c.vs[at + 1..at + 3].copy_from_slice(&(RESTART_TAG_BYTES_MAX as u16).to_le_bytes());
        }
        debug_assert!(u32::from(c.mdts) <= (MAX_IO_BYTES / 4096).trailing_zeros());
        c
    }

    fn identify_namespace(&self, nsid: u32) -> Result<Vec<u8>, Status> {
        if nsid == 0 || nsid == 0xFFFF_FFFF {
            return Err(Status::INVALID_NAMESPACE);
        }
        let Some(ns) = self.subsys.namespace(nsid) else {
            return if nsid <= self.subsys.max_namespaces {
                Ok(vec![0u8; identify::IDENTIFY_BYTES]) // allocated-but-inactive reads as zeroes
            } else {
                Err(Status::INVALID_NAMESPACE)
            };
        };
        let mut n = IdentifyNamespace::zeroed();
        let blocks = ns.bdev.num_blocks();
        n.nsze = blocks;
        n.ncap = blocks;
        n.nuse = blocks;
        n.nlbaf = 0;
        n.flbas = 0;
        n.lbaf[0] = identify::lbaf(ns.bdev.block_size().trailing_zeros() as u8);
        n.nmic = 1;
        n.nguid = ns.uuid;
        if self.subsys.ana.reporting {
            n.anagrpid = ns.anagrpid;
        }
        Ok(n.as_bytes().to_vec())
    }

    fn get_log_page(&self, target: &Target, sqe: &Sqe, listen: SocketAddr) -> AdminResult {
        let lid_ = sqe.cdw10 as u8;
        let rae = sqe.cdw10 & (1 << 15) != 0;
        let numd = u64::from((sqe.cdw10 >> 16) | ((sqe.cdw11 & 0xFFFF) << 16)) + 1;
        let len = numd * 4;
        let lpo = u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32);
        if lpo % 4 != 0 || len > u64::from(self.opts.max_io_size) {
            return reply(Status::INVALID_FIELD);
        }
        let discovery = self.subsys.kind == SubsystemKind::Discovery;
        let page: Vec<u8> = match lid_ {
            lid::DISCOVERY if discovery => self.discovery_log(target, listen),
            lid::ERROR if !discovery => vec![0u8; 64],
            lid::SMART if !discovery => self.smart_log().as_bytes().to_vec(),
            lid::FIRMWARE_SLOT if !discovery => {
                let mut f = FirmwareSlotLog::zeroed();
                f.afi = 1;
                put_str(&mut f.frs[0], FIRMWARE_REVISION, b' ');
                f.as_bytes().to_vec()
            }
            lid::COMMANDS_SUPPORTED if !discovery => commands_supported_log(),
            lid::ANA if !discovery && self.subsys.ana.reporting => {
                // LSP bit 0 (CDW10 bit 8): Return Groups Only.
                let page = self.subsys.ana_log(self.ana.as_deref(), sqe.cdw10 & (1 << 8) != 0);
                if !rae {
                    self.st().ana_notice_masked = false;
                }
                page
            }
            lid::CHANGED_NS_LIST if !discovery => {
                let mut d = vec![0u8; logpage::CHANGED_NS_LIST_BYTES];
                let mut st = self.st();
                if st.changed_ns_overflow {
                    d[..4].copy_from_slice(&u32::MAX.to_le_bytes());
                } else {
                    st.changed_ns.sort_unstable();
                    for (i, n) in st.changed_ns.iter().enumerate() {
                        d[i * 4..i * 4 + 4].copy_from_slice(&n.to_le_bytes());
                    }
                }
                if !rae {
                    st.changed_ns.clear();
                    st.changed_ns_overflow = false;
                    st.ns_notice_masked = false;
                }
                d
            }
            _ => return reply(Status::INVALID_LOG_PAGE),
        };
        if lpo > page.len() as u64 {
            return reply(Status::INVALID_FIELD);
        }
        let mut out = vec![0u8; len as usize];
        let avail = (page.len() - lpo as usize).min(len as usize);
        out[..avail].copy_from_slice(&page[lpo as usize..lpo as usize + avail]);
        reply_data(out)
    }

    fn smart_log(&self) -> SmartLog {
        let mut s = SmartLog::zeroed();
        s.temperature = 300u16.to_le_bytes();
        s.avail_spare = 100;
        s.spare_thresh = 10;
        let mut t = engine::bdev::IoStats::default();
        for ns in self.subsys.state().namespaces.values() {
            let i = ns.bdev.io_stats();
            t.bytes_read += i.bytes_read;
            t.bytes_written += i.bytes_written;
            t.num_read_ops += i.num_read_ops;
            t.num_write_ops += i.num_write_ops;
        }
        let units = |bytes: u64| u128::from(bytes.div_ceil(512_000)).to_le_bytes();
        s.data_units_read = units(t.bytes_read);
        s.data_units_written = units(t.bytes_written);
        s.host_read_commands = u128::from(t.num_read_ops).to_le_bytes();
        s.host_write_commands = u128::from(t.num_write_ops).to_le_bytes();
        s.power_cycles = 1u128.to_le_bytes();
        s
    }

    /// Discovery log: one entry per (subsystem this host may use, listener it has), then
    /// one per referral.
    fn discovery_log(&self, target: &Target, _listen: SocketAddr) -> Vec<u8> {
        let asqsz = target.transport_opts().max_aq_depth;
        let not_required = logpage::TREQ_SECURE_CHANNEL_NOT_REQUIRED;
        let mut entries: Vec<DiscoveryLogEntry> = Vec::new();
        for s in target.subsystems() {
            if s.kind != SubsystemKind::Nvme || !s.host_allowed(&self.hostnqn) {
                continue;
            }
            for addr in s.state().listeners.iter() {
                let mut e = log_entry(*addr, logpage::SUBTYPE_NVME, not_required, &s.nqn, asqsz);
                if target.listener_rdma(*addr) {
                    e.trtype = super::rdma_proto::TRTYPE_RDMA;
                    e.tsas = super::rdma_proto::rdma_tsas();
                }
                if target.listener_secure(*addr) {
                    e.treq = logpage::TREQ_SECURE_CHANNEL_REQUIRED;
                    e.tsas[0] = logpage::TSAS_TCP_SECTYPE_TLS13;
                }
                entries.push(e);
            }
        }
        for r in target.referrals() {
            let subtype = if r.subnqn == fabrics::DISCOVERY_NQN {
                logpage::SUBTYPE_DISCOVERY
            } else {
                logpage::SUBTYPE_NVME
            };
            let treq = if r.secure_channel {
                logpage::TREQ_SECURE_CHANNEL_REQUIRED
            } else {
                not_required
            };
            entries.push(log_entry(r.addr, subtype, treq, &r.subnqn, asqsz));
        }
        let mut h = DiscoveryLogHeader::zeroed();
        h.genctr = target.genctr();
        h.numrec = entries.len() as u64;
        let mut out = h.as_bytes().to_vec();
        for e in &entries {
            out.extend_from_slice(e.as_bytes());
        }
        out
    }

    fn get_features(&self, sqe: &Sqe) -> AdminResult {
        let st = self.st();
        match sqe.cdw10 as u8 {
            fid::ARBITRATION => reply_dw0(0),
            fid::POWER_MANAGEMENT => reply_dw0(0),
            fid::ERROR_RECOVERY => reply_dw0(0),
            fid::VOLATILE_WRITE_CACHE => reply_dw0(1),
            fid::WRITE_ATOMICITY => reply_dw0(0),
            fid::TEMPERATURE_THRESHOLD => reply_dw0(343),
            fid::NUMBER_OF_QUEUES => {
                let n = u32::from(st.io_queues - 1);
                reply_dw0(n | (n << 16))
            }
            fid::ASYNC_EVENT_CONFIG => reply_dw0(st.aec),
            fid::KEEP_ALIVE_TIMER => reply_dw0(self.kato_ms()),
            _ => reply(Status::INVALID_FIELD),
        }
    }

    fn set_features(&self, sqe: &Sqe, _data_in: &[u8]) -> AdminResult {
        let mut st = self.st();
        match sqe.cdw10 as u8 {
            fid::ARBITRATION
            | fid::POWER_MANAGEMENT
            | fid::ERROR_RECOVERY
            | fid::TEMPERATURE_THRESHOLD
            | fid::VOLATILE_WRITE_CACHE => reply(Status::SUCCESS),
            fid::NUMBER_OF_QUEUES => {
                if st.io_qids != 0 {
                    // Allowed only before any I/O queue exists.
                    return reply(Status::COMMAND_SEQUENCE_ERROR);
                }
                let nsq = (sqe.cdw11 & 0xFFFF) as u16;
                let ncq = (sqe.cdw11 >> 16) as u16;
                if nsq == 0xFFFF || ncq == 0xFFFF {
                    return reply(Status::INVALID_FIELD);
                }
                let granted = (nsq.max(ncq) + 1).min(self.opts.max_io_qpairs_per_ctrlr);
                st.io_queues = granted;
                let n = u32::from(granted - 1);
                reply_dw0(n | (n << 16))
            }
            fid::ASYNC_EVENT_CONFIG => {
                st.aec = sqe.cdw11;
                reply(Status::SUCCESS)
            }
            fid::KEEP_ALIVE_TIMER => {
                drop(st);
                self.ka.set_kato(sqe.cdw11, engine::clock::now_ns());
                reply(Status::SUCCESS)
            }
            _ => reply(Status::INVALID_FIELD),
        }
    }
}

/// One discovery log entry for a TCP address.
fn log_entry(addr: SocketAddr, subtype: u8, treq: u8, subnqn: &str, asqsz: u16) -> DiscoveryLogEntry {
    let mut e = DiscoveryLogEntry::zeroed();
    e.trtype = logpage::TRTYPE_TCP;
    e.adrfam = if addr.is_ipv4() {
        logpage::ADRFAM_IPV4
    } else {
        logpage::ADRFAM_IPV6
    };
    e.subtype = subtype;
    e.treq = treq;
    e.portid = addr.port();
    e.cntlid = logpage::CNTLID_DYNAMIC;
    e.asqsz = asqsz;
    put_str(&mut e.trsvcid, &addr.port().to_string(), b' ');
    put_str(&mut e.subnqn, subnqn, 0);
    put_str(&mut e.traddr, &addr.ip().to_string(), b' ');
    e
}

/// Identify Controller vendor-specific area (bytes 3072..): this marker, then the Restart
/// Point opcode (1 byte), then the largest tag (u16, little endian). NVM subsystems only.
pub const RESTART_POINT_VS_MARKER: &[u8; 8] = b"BATONRP1";

/// The Commands Supported and Effects log (LID 05h) of an NVM controller.
fn commands_supported_log() -> Vec<u8> {
    use logpage::effects::{CSUPP, LBCC};
    let mut d = vec![0u8; logpage::COMMANDS_SUPPORTED_BYTES];
    let mut put = |at: usize, e: u32| d[at..at + 4].copy_from_slice(&e.to_le_bytes());
    for opc in [
        admin_opc::GET_LOG_PAGE,
        admin_opc::IDENTIFY,
        admin_opc::ABORT,
        admin_opc::SET_FEATURES,
        admin_opc::GET_FEATURES,
        admin_opc::ASYNC_EVENT_REQUEST,
        admin_opc::KEEP_ALIVE,
    ] {
        put(usize::from(opc) * 4, CSUPP);
    }
    let io = logpage::COMMANDS_SUPPORTED_IOCS_OFFSET;
    for (opc, e) in [
        (io_opc::FLUSH, CSUPP),
        (io_opc::WRITE, CSUPP | LBCC),
        (io_opc::READ, CSUPP),
        (io_opc::COMPARE, CSUPP),
        (io_opc::WRITE_ZEROES, CSUPP | LBCC),
        (io_opc::DATASET_MANAGEMENT, CSUPP | LBCC),
        (io_opc::RESTART_POINT, CSUPP),
    ] {
        put(io + usize::from(opc) * 4, e);
    }
    d
}

/// Checks that an admin command that returns data has a transport SGL; returns how many
/// bytes the host can take.
pub fn data_out_len(sqe: &Sqe) -> Result<usize, Status> {
    if sqe.sgl.sgl_type != sgl_type::TRANSPORT_DATA_BLOCK {
        return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID);
    }
    Ok(sqe.sgl.length as usize)
}

/// The target and controller `fuzz_command` drives (created once per process).
fn fuzz_ctx() -> Option<&'static (Arc<Target>, Arc<Controller>)> {
    use std::sync::OnceLock;
    static CTX: OnceLock<Option<(Arc<Target>, Arc<Controller>)>> = OnceLock::new();
    CTX.get_or_init(|| {
        let t = Target::new();
        let nqn = "nqn.2016-06.io.baton:fuzz";
        t.create_subsystem(super::SubsystemParams {
            nqn: nqn.into(),
            allow_any_host: true,
            ..Default::default()
        })
        .ok()?;
        let b = engine::bdev::malloc::create("FuzzCmdMalloc0", 64, 512, None).ok()?;
        engine::bdev::register(b).ok()?;
        t.add_namespace(nqn, "FuzzCmdMalloc0", None, None).ok()?;
        let s = t.subsystem(nqn).ok()?;
        let c = Arc::new(Controller::new(
            1,
            s,
            "nqn.2014-08.org.nvmexpress:uuid:fuzz".into(),
            [0; 16],
            0,
            TransportOpts::default(),
            None,
        ));
        Some((t, c))
    })
    .as_ref()
}

/// Fuzz entry point for command handling: the first 64 bytes are an SQE, the rest its data.
/// It goes through [`Controller::admin`] (a controller of a subsystem with one RAM namespace,
/// kept enabled) and through the I/O command parser. Must never panic. Used by
/// `nvme/fuzz` (`command`) and a unit test.
pub fn fuzz_command(data: &[u8]) {
    use crate::spec::fabrics::PropertyCmd;
    let Some(sqe) = Sqe::read_from(data) else { return };
    let rest = &data[64..];
    let Some((t, c)) = fuzz_ctx() else { return };
    let addr: SocketAddr = ([127, 0, 0, 1], 4420).into();
    let mut en = Sqe {
        opc: admin_opc::FABRICS,
        nsid: u32::from(fctype::PROPERTY_SET),
        ..Sqe::default()
    };
    PropertyCmd {
        size8: false,
        offset: prop::CC,
        value: u64::from(cc::EN),
    }
    .to_sqe(&mut en);
    let _ = c.admin(t, &en, &[], addr);
    if let AdminResult::Reply { data: d, .. } = c.admin(t, &sqe, rest, addr) {
        assert!(d.len() <= MAX_IO_BYTES as usize);
    }
    let g = super::io::NsGeometry {
        block_size: 512,
        num_blocks: 64,
    };
    if let Ok(cmd) = super::io::parse_io(&sqe, g, rest.len() as u32, MAX_IO_BYTES) {
        assert!(cmd.host_bytes() <= MAX_IO_BYTES.max(256 * 16));
        if let super::io::IoCmd::Dsm { ranges, .. } = cmd {
            let ranges = (ranges as usize).min(rest.len() / 16);
            for i in 0..ranges {
                let (nlb, slba) = super::io::dsm_range(rest, i);
                let _ = super::io::check_dsm_range(nlb, slba, g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_command_survives_100k_random_commands() {
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let opcodes = [
            0x00u8, 0x01, 0x02, 0x05, 0x06, 0x08, 0x09, 0x0A, 0x0C, 0x18, 0x7F, 0x81, 0xFF,
        ];
        for _ in 0..100_000 {
            let len = 64 + (next() % 200) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            d[0] = opcodes[(next() % opcodes.len() as u64) as usize];
            // Keep the interesting low values in CNS / LID / FID / NSID often.
            if next() % 2 == 0 {
                d[40] = (next() % 8) as u8;
                d[4..8].copy_from_slice(&((next() % 4) as u32).to_le_bytes());
            }
            fuzz_command(&d);
        }
        // The context was really built, so the commands above reached the controller.
        let (_, c) = fuzz_ctx().expect("fuzz context");
        assert!(c.ready());
        assert_eq!(c.identify_controller().cntlid, 1);
    }
}
