//! The NVMe-oF host library (initiator), over NVMe/TCP or (feature `rdma`) NVMe/RDMA:
//! connect to a controller (optionally through the discovery service), run admin commands,
//! open several I/O queue pairs and drive reads and writes on them by polling.
//!
//! Used by the tests, the perf harness and the primary host. Connecting and the `*_sync`
//! helpers block (management threads); [`Qpair::submit`] / [`Qpair::poll`] never do.

pub mod attach;
pub mod bdev;
mod channel;
pub mod qpair;
#[cfg(feature = "rdma")]
pub mod rdma_qpair;
pub mod rdma_wire;
pub mod reconnect;
pub mod tcp_qpair;
pub mod trid;

pub use attach::{HostBdevOpts, NvmeCtrlr};
pub use qpair::{Data, HostCompletion, Qpair};
pub use trid::{TransportId, TridError, Trtype};

use crate::spec::cmd::{admin_opc, io_opc};
use crate::spec::fabrics::{self, cc, csts, fctype, fid, prop, PropertyCmd, DISCOVERY_NQN};
use crate::spec::identify::{cns, IdentifyController, IdentifyNamespace, IDENTIFY_BYTES};
use crate::spec::log::{lid, parse_ana_log, AnaGroup, DiscoveryLogEntry, DiscoveryLogHeader};
use crate::spec::{get_str, Cqe, Plain, Sqe, Status};
use crate::tcp::pdu::PduError;
use engine::buf::DmaBuf;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Host-side errors.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HostError {
    #[error("socket: {0}")]
    Io(String),
    #[error("malformed PDU from the target: {0}")]
    Pdu(#[from] PduError),
    #[error("target terminated the connection: fes={fes:#x} fei={fei}")]
    Terminated { fes: u16, fei: u32 },
    #[error("target broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("connection closed by the target")]
    Closed,
    #[error("all command slots of the queue pair are in use")]
    QueueFull,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("Connect failed: {status} (dw0 {dw0:#x})")]
    Connect { status: Status, dw0: u32 },
    #[error("command failed: {0}")]
    Status(Status),
    #[error("{0}")]
    Invalid(String),
}

/// Host options.
#[derive(Clone, Debug)]
pub struct HostOpts {
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// Transport of every queue pair (RDMA needs the `rdma` feature).
    pub trtype: Trtype,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Keep alive timeout sent in the admin Connect, ms (0 = none).
    pub kato_ms: u32,
    /// Entries per I/O queue.
    pub io_queue_entries: u16,
    /// Entries of the admin queue.
    pub admin_queue_entries: u16,
    /// Override the in-capsule data limit of I/O queues (default: from Identify IOCCSZ);
    /// `Some(0)` forces every write through R2T.
    pub in_capsule_max: Option<u32>,
    /// Split H2CData below MAXH2CDATA (tests).
    pub h2c_chunk_bytes: Option<u32>,
    /// Limit for blocking steps (connect, sync commands).
    pub timeout: Duration,
}

impl Default for HostOpts {
    fn default() -> Self {
        HostOpts {
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000ba70e".into(),
            hostid: *b"baton-host-id-01",
            trtype: Trtype::Tcp,
            hdgst: false,
            ddgst: false,
            kato_ms: 10_000,
            io_queue_entries: 128,
            admin_queue_entries: 32,
            in_capsule_max: None,
            h2c_chunk_bytes: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One discovery log entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub trsvcid: String,
    pub traddr: String,
    pub subnqn: String,
}

impl DiscoveryEntry {
    /// The entry's address as a socket address, if it is IP.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let port: u16 = self.trsvcid.parse().ok()?;
        let ip: std::net::IpAddr = self.traddr.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    }
}

/// A connected controller: its admin queue plus what Identify said.
pub struct Controller {
    pub admin: Qpair,
    pub addr: SocketAddr,
    pub subnqn: String,
    pub opts: HostOpts,
    pub cap: u64,
    pub vs: u32,
    pub id: Box<IdentifyController>,
    /// I/O queues granted by Set Features (Number of Queues).
    pub io_queues_granted: u16,
    /// Asynchronous event completions and other admin completions reaped by [`Controller::tick`].
    pub events: Vec<HostCompletion>,
    next_qid: u16,
    last_keep_alive: Instant,
    keep_alive_inflight: bool,
}

/// Token of the Keep Alive commands `tick` sends.
const KEEP_ALIVE_TOKEN: u64 = u64::MAX - 1;

fn sqe(opc: u8) -> Sqe {
    Sqe { opc, ..Sqe::default() }
}

fn check(c: HostCompletion) -> Result<HostCompletion, HostError> {
    if c.status().is_success() {
        Ok(c)
    } else {
        Err(HostError::Status(c.status()))
    }
}

impl Controller {
    /// Connects the admin queue, enables the controller and identifies it. Blocks.
    pub fn connect(addr: SocketAddr, subnqn: &str, opts: &HostOpts) -> Result<Controller, HostError> {
        let kato = if subnqn == DISCOVERY_NQN { 0 } else { opts.kato_ms };
        let o = HostOpts {
            kato_ms: kato,
            ..opts.clone()
        };
        let admin = Qpair::connect(
            addr,
            subnqn,
            0,
            opts.admin_queue_entries,
            0xFFFF,
            qpair::ADMIN_IN_CAPSULE_BYTES,
            &o,
        )?;
        let mut c = Controller {
            admin,
            addr,
            subnqn: subnqn.to_string(),
            opts: opts.clone(),
            cap: 0,
            vs: 0,
            id: Box::new(IdentifyController::zeroed()),
            io_queues_granted: 0,
            events: Vec::new(),
            next_qid: 1,
            last_keep_alive: Instant::now(),
            keep_alive_inflight: false,
        };
        c.cap = c.property_get(prop::CAP, true)?;
        c.vs = c.property_get(prop::VS, false)? as u32;
        // EN, IOSQES = 6 (64 B), IOCQES = 4 (16 B).
        c.property_set(prop::CC, cc::EN | (6 << 16) | (4 << 20))?;
        let deadline = Instant::now() + opts.timeout;
        while c.property_get(prop::CSTS, false)? as u32 & csts::RDY == 0 {
            if Instant::now() > deadline {
                return Err(HostError::Timeout("CSTS.RDY"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let id = c.identify(cns::CONTROLLER, 0)?;
        c.id = Box::new(IdentifyController::read_from(&id).ok_or(HostError::Protocol("short identify"))?);
        if subnqn != DISCOVERY_NQN {
            let want = u32::from(opts.io_queue_entries.max(1)) - 1;
            let want = want.min(63);
            let dw0 = c.set_features(fid::NUMBER_OF_QUEUES, want | (want << 16))?;
            c.io_queues_granted = ((dw0 & 0xFFFF) as u16).min((dw0 >> 16) as u16) + 1;
            let mut aec = fabrics::AEC_NS_ATTR_NOTICES;
            if c.ana_reporting() {
                aec |= fabrics::AEC_ANA_CHANGE_NOTICES;
            }
            c.set_features(fid::ASYNC_EVENT_CONFIG, aec)?;
        }
        Ok(c)
    }

    /// Whether the controller reports ANA (CMIC bit 3).
    pub fn ana_reporting(&self) -> bool {
        self.id.cmic & (1 << 3) != 0
    }

    /// Reads and decodes the ANA log page (0Ch): every group, its state and namespaces.
    pub fn ana_log(&mut self) -> Result<Vec<AnaGroup>, HostError> {
        if !self.ana_reporting() {
            return Err(HostError::Invalid(format!("{} does not report ANA", self.subnqn)));
        }
        // Header, a descriptor per group and every NSID once, as the spec sizes it.
        let len = 16 + 32 * self.id.nanagrpid.min(1024) as usize + 4 * self.id.nn.min(1024) as usize;
        let page = self.get_log_page(lid::ANA, 0, len.next_multiple_of(4), 0)?;
        let (_, groups) = parse_ana_log(&page).map_err(|e| HostError::Invalid(format!("ANA log: {e}")))?;
        Ok(groups)
    }

    /// The controller ID the target assigned.
    pub fn cntlid(&self) -> u16 {
        self.admin.cntlid()
    }

    /// Runs an admin command and waits for it.
    pub fn admin_sync(&mut self, s: Sqe, data: Data) -> Result<HostCompletion, HostError> {
        self.admin.sync(s, data, self.opts.timeout)
    }

    pub fn property_get(&mut self, offset: u32, size8: bool) -> Result<u64, HostError> {
        let mut s = Sqe {
            opc: admin_opc::FABRICS,
            nsid: u32::from(fctype::PROPERTY_GET),
            ..Sqe::default()
        };
        PropertyCmd {
            size8,
            offset,
            value: 0,
        }
        .to_sqe(&mut s);
        let c = check(self.admin_sync(s, Data::None)?)?;
        Ok(u64::from(c.cqe.dw0) | (u64::from(c.cqe.dw1) << 32))
    }

    pub fn property_set(&mut self, offset: u32, value: u32) -> Result<(), HostError> {
        let mut s = Sqe {
            opc: admin_opc::FABRICS,
            nsid: u32::from(fctype::PROPERTY_SET),
            ..Sqe::default()
        };
        PropertyCmd {
            size8: false,
            offset,
            value: u64::from(value),
        }
        .to_sqe(&mut s);
        check(self.admin_sync(s, Data::None)?).map(|_| ())
    }

    /// Identify with `cns` for `nsid`; returns the 4096-byte data.
    pub fn identify(&mut self, cns_: u8, nsid: u32) -> Result<Vec<u8>, HostError> {
        let s = Sqe {
            nsid,
            cdw10: u32::from(cns_),
            ..sqe(admin_opc::IDENTIFY)
        };
        let c = check(self.admin_sync(s, Data::FromCtrl(DmaBuf::alloc(IDENTIFY_BYTES)))?)?;
        Ok(c.buf.map(|b| b.to_vec()).unwrap_or_default())
    }

    pub fn identify_namespace(&mut self, nsid: u32) -> Result<Box<IdentifyNamespace>, HostError> {
        let d = self.identify(cns::NAMESPACE, nsid)?;
        Ok(Box::new(
            IdentifyNamespace::read_from(&d).ok_or(HostError::Protocol("short identify"))?,
        ))
    }

    /// Active namespace IDs (CNS 02h from NSID 0).
    pub fn active_namespaces(&mut self) -> Result<Vec<u32>, HostError> {
        let d = self.identify(cns::ACTIVE_NS_LIST, 0)?;
        Ok(d.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&n| n != 0)
            .collect())
    }

    /// Get Log Page `lid` of `len` bytes (a multiple of 4) from byte `offset`.
    pub fn get_log_page(&mut self, lid_: u8, nsid: u32, len: usize, offset: u64) -> Result<Vec<u8>, HostError> {
        if len == 0 || !len.is_multiple_of(4) {
            return Err(HostError::Invalid(format!(
                "log page length {len} is not a positive multiple of 4"
            )));
        }
        let numd = (len / 4 - 1) as u32;
        let s = Sqe {
            nsid,
            cdw10: u32::from(lid_) | ((numd & 0xFFFF) << 16),
            cdw11: numd >> 16,
            cdw12: offset as u32,
            cdw13: (offset >> 32) as u32,
            ..sqe(admin_opc::GET_LOG_PAGE)
        };
        let c = check(self.admin_sync(s, Data::FromCtrl(DmaBuf::alloc(len)))?)?;
        Ok(c.buf.map(|b| b.to_vec()).unwrap_or_default())
    }

    /// Get Features `fid`; returns DW0.
    pub fn get_features(&mut self, fid_: u8) -> Result<u32, HostError> {
        let s = Sqe {
            cdw10: u32::from(fid_),
            ..sqe(admin_opc::GET_FEATURES)
        };
        Ok(check(self.admin_sync(s, Data::None)?)?.cqe.dw0)
    }

    /// Set Features `fid` with CDW11 `value`; returns DW0.
    pub fn set_features(&mut self, fid_: u8, value: u32) -> Result<u32, HostError> {
        let s = Sqe {
            cdw10: u32::from(fid_),
            cdw11: value,
            ..sqe(admin_opc::SET_FEATURES)
        };
        Ok(check(self.admin_sync(s, Data::None)?)?.cqe.dw0)
    }

    /// Keeps the controller alive without blocking: sends a Keep Alive once half the KATO
    /// has passed since the last one, and reaps admin completions (kept in `events`). Call it
    /// from the thread that owns the controller at least a few times per KATO.
    pub fn tick(&mut self) -> Result<(), HostError> {
        let kato = Duration::from_millis(u64::from(self.opts.kato_ms));
        if !kato.is_zero() && !self.keep_alive_inflight && self.last_keep_alive.elapsed() >= kato / 2 {
            self.admin
                .submit(sqe(admin_opc::KEEP_ALIVE), Data::None, KEEP_ALIVE_TOKEN)
                .map_err(|e| e.0)?;
            self.keep_alive_inflight = true;
            self.last_keep_alive = Instant::now();
        }
        let mut got = Vec::new();
        self.admin.poll(&mut |c| got.push(c))?;
        for c in got {
            if c.user == KEEP_ALIVE_TOKEN {
                self.keep_alive_inflight = false;
                status_ok(&c.cqe)?;
            } else {
                self.events.push(c);
            }
        }
        Ok(())
    }

    pub fn keep_alive(&mut self) -> Result<(), HostError> {
        check(self.admin_sync(sqe(admin_opc::KEEP_ALIVE), Data::None)?).map(|_| ())
    }

    /// Reads the whole discovery log (discovery controllers only).
    pub fn discovery_log(&mut self) -> Result<Vec<DiscoveryEntry>, HostError> {
        let h = self.get_log_page(lid::DISCOVERY, 0, 1024, 0)?;
        let h = DiscoveryLogHeader::read_from(&h).ok_or(HostError::Protocol("short discovery log"))?;
        let n = h.numrec.min(1024) as usize;
        if n == 0 {
            return Ok(Vec::new());
        }
        let d = self.get_log_page(lid::DISCOVERY, 0, 1024 * n, 1024)?;
        Ok(d.chunks_exact(1024)
            .filter_map(DiscoveryLogEntry::read_from)
            .map(|e| DiscoveryEntry {
                trtype: e.trtype,
                adrfam: e.adrfam,
                subtype: e.subtype,
                portid: e.portid,
                cntlid: e.cntlid,
                asqsz: e.asqsz,
                trsvcid: get_str(&e.trsvcid),
                traddr: get_str(&e.traddr),
                subnqn: get_str(&e.subnqn),
            })
            .collect())
    }

    /// Opens the next I/O queue pair (a new TCP connection). Blocks.
    pub fn create_io_qpair(&mut self) -> Result<Qpair, HostError> {
        let qid = self.next_qid;
        let q = self.create_io_qpair_with_qid(qid)?;
        self.next_qid += 1;
        Ok(q)
    }

    /// Opens I/O queue `qid` (tests use this to try invalid or duplicate queue IDs).
    pub fn create_io_qpair_with_qid(&mut self, qid: u16) -> Result<Qpair, HostError> {
        let icd = self
            .opts
            .in_capsule_max
            .unwrap_or_else(|| (self.id.ioccsz * 16).saturating_sub(64));
        let mut entries = self.opts.io_queue_entries;
        if self.opts.trtype == Trtype::Rdma {
            // An NVMe/RDMA target refuses a queue above CAP.MQES + 1 at connection time.
            entries = entries.min(((self.cap & 0xFFFF) as u16).saturating_add(1));
        }
        Qpair::connect(self.addr, &self.subnqn, qid, entries, self.cntlid(), icd, &self.opts)
    }

    /// Orderly shutdown: CC.SHN = normal, then close.
    pub fn disconnect(mut self) {
        let _ = self.property_set(prop::CC, (1 << cc::SHN_SHIFT) | (6 << 16) | (4 << 20));
        self.admin.close();
    }
}

/// Connects to the discovery service at `addr` and returns its log. Blocks.
pub fn discover(addr: SocketAddr, opts: &HostOpts) -> Result<Vec<DiscoveryEntry>, HostError> {
    let mut c = Controller::connect(addr, DISCOVERY_NQN, opts)?;
    let log = c.discovery_log();
    c.disconnect();
    log
}

/// Connects to `subnqn` through the discovery service at `discovery_addr`. Blocks.
pub fn connect_discovered(discovery_addr: SocketAddr, subnqn: &str, opts: &HostOpts) -> Result<Controller, HostError> {
    let entries = discover(discovery_addr, opts)?;
    let e = entries
        .iter()
        .find(|e| e.subnqn == subnqn)
        .ok_or_else(|| HostError::Invalid(format!("{subnqn} is not in the discovery log of {discovery_addr}")))?;
    let addr = e
        .socket_addr()
        .ok_or_else(|| HostError::Invalid(format!("unusable address {}:{}", e.traddr, e.trsvcid)))?;
    Controller::connect(addr, subnqn, opts)
}

/// NVM command builders for [`Qpair::submit`].
pub mod cmd {
    use super::*;

    fn rw(opc: u8, nsid: u32, slba: u64, nlb: u32) -> Sqe {
        Sqe {
            opc,
            nsid,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: nlb.saturating_sub(1) & 0xFFFF,
            ..Sqe::default()
        }
    }
    /// Read `nlb` blocks at `slba` (the buffer must be `nlb * block_size` bytes).
    pub fn read(nsid: u32, slba: u64, nlb: u32) -> Sqe {
        rw(io_opc::READ, nsid, slba, nlb)
    }
    pub fn write(nsid: u32, slba: u64, nlb: u32) -> Sqe {
        rw(io_opc::WRITE, nsid, slba, nlb)
    }
    pub fn compare(nsid: u32, slba: u64, nlb: u32) -> Sqe {
        rw(io_opc::COMPARE, nsid, slba, nlb)
    }
    pub fn write_zeroes(nsid: u32, slba: u64, nlb: u32) -> Sqe {
        rw(io_opc::WRITE_ZEROES, nsid, slba, nlb)
    }
    pub fn flush(nsid: u32) -> Sqe {
        Sqe {
            opc: io_opc::FLUSH,
            nsid,
            ..Sqe::default()
        }
    }
    /// Dataset Management with the deallocate attribute; pair with [`dsm_ranges`].
    pub fn deallocate(nsid: u32, ranges: usize) -> Sqe {
        Sqe {
            opc: io_opc::DATASET_MANAGEMENT,
            nsid,
            cdw10: (ranges as u32).saturating_sub(1),
            cdw11: 1 << 2,
            ..Sqe::default()
        }
    }
    /// Vendor-specific Restart Point (81h) on namespace `nsid` with a tag of `tag_len` bytes
    /// (CDW10); submit it with `Data::ToCtrl(tag)` (or `Data::None` for an empty tag). The
    /// completion's DW0/DW1 carry the epoch. See `docs/restart-points.md`.
    pub fn restart_point(nsid: u32, tag_len: u32) -> Sqe {
        Sqe {
            opc: io_opc::RESTART_POINT,
            nsid,
            cdw10: tag_len,
            ..Sqe::default()
        }
    }
    /// The DSM range list for `(slba, nlb)` pairs.
    pub fn dsm_ranges(ranges: &[(u64, u32)]) -> DmaBuf {
        let mut b = DmaBuf::alloc(ranges.len() * 16);
        for (i, &(slba, nlb)) in ranges.iter().enumerate() {
            b[i * 16 + 4..i * 16 + 8].copy_from_slice(&nlb.to_le_bytes());
            b[i * 16 + 8..i * 16 + 16].copy_from_slice(&slba.to_le_bytes());
        }
        b
    }
}

/// Convenience: runs one command on an I/O queue and waits (tests and tools).
pub fn io_sync(q: &mut Qpair, s: Sqe, data: Data, timeout: Duration) -> Result<HostCompletion, HostError> {
    q.sync(s, data, timeout)
}

/// Declares a restart point with application tag `tag` on namespace `nsid` (a replicated
/// volume) through I/O queue `q`, and waits up to `timeout` for it to be replicated. Returns
/// the epoch the point closed. It covers every write `q` (or any queue) saw complete
/// before this call. Blocks: not for reactor threads. Errors: `HostError::Status` with
/// Invalid Opcode (namespace not replicated), Invalid Field (tag over 256 bytes), Namespace
/// Not Ready (replication policy unmet or not replicated in the target's time), Internal
/// Error (volume gone).
pub fn declare_restart_point(q: &mut Qpair, nsid: u32, tag: &[u8], timeout: Duration) -> Result<u64, HostError> {
    let len = u32::try_from(tag.len()).map_err(|_| HostError::Invalid(format!("tag of {} bytes", tag.len())))?;
    let data = if tag.is_empty() {
        Data::None
    } else {
        let mut b = DmaBuf::alloc(tag.len());
        b.copy_from_slice(tag);
        Data::ToCtrl(b)
    };
    let c = check(q.sync(cmd::restart_point(nsid, len), data, timeout)?)?;
    Ok(restart_point_epoch(&c.cqe))
}

/// The epoch in a successful Restart Point completion (DW0 = bits 31:0, DW1 = bits 63:32).
pub fn restart_point_epoch(c: &Cqe) -> u64 {
    u64::from(c.dw0) | (u64::from(c.dw1) << 32)
}

/// The completion status as a `Result`.
pub fn status_ok(c: &Cqe) -> Result<(), HostError> {
    if c.status().is_success() {
        Ok(())
    } else {
        Err(HostError::Status(c.status()))
    }
}
