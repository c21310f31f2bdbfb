//! The NVMe-oF target: subsystems, namespaces over bdevs, listeners, allowed hosts, and the
//! controllers hosts create with Fabrics Connect.
//!
//! Management (this module) runs on any thread and takes the target's lock; the data path
//! ([`tcp`]) never does: an I/O queue copies what it needs (its namespaces' bdevs) when it
//! connects and re-reads it only when the subsystem's namespace generation changes.

pub mod ana;
pub mod auth;
pub(crate) mod channels;
pub(crate) mod connect;
pub mod ctrlr;
pub mod io;
pub mod keepalive;
pub mod keyring;
mod listeners;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod rdma_opts;
pub mod rdma_proto;
pub mod restart;
pub(crate) mod restart_wait;
pub mod tcp;
pub mod tls;

use crate::spec::fabrics::DISCOVERY_NQN;
use ana::{ListenerAna, SubsysAna};
use ctrlr::Controller;
use engine::bdev::Bdev;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use thiserror::Error;

/// Largest NQN, bytes (NVMe base spec: 223 bytes of UTF-8).
pub const NQN_BYTES_MAX: usize = 223;
/// Namespaces per subsystem when `max_namespaces` is not given.
pub const NAMESPACES_DEFAULT_MAX: u32 = 32;
/// Highest dynamic controller ID (0xFFF0..0xFFFF are reserved).
pub const CNTLID_MAX: u16 = 0xFFEF;

/// Errors of the management operations; each names the object and the value at fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TargetError {
    #[error("NVMe/TCP data buffer pools: {0}")]
    BufferPools(String),
    #[error("subsystem {0} already exists")]
    SubsystemExists(String),
    #[error("no subsystem with NQN {0}")]
    NoSuchSubsystem(String),
    #[error("invalid NQN {nqn:?}: {why}")]
    InvalidNqn { nqn: String, why: &'static str },
    #[error("no bdev named {0:?}")]
    NoSuchBdev(String),
    #[error("subsystem {nqn}: NSID {nsid} is already in use")]
    NsidInUse { nqn: String, nsid: u32 },
    #[error("subsystem {nqn}: NSID {nsid} is outside 1..={max}")]
    NsidInvalid { nqn: String, nsid: u32, max: u32 },
    #[error("subsystem {nqn}: no namespace {nsid}")]
    NoSuchNamespace { nqn: String, nsid: u32 },
    #[error("subsystem {nqn}: all {max} namespaces are in use")]
    NamespacesFull { nqn: String, max: u32 },
    #[error("subsystem {nqn} already listens on {addr}")]
    ListenerExists { nqn: String, addr: SocketAddr },
    #[error("listener {addr} exists with secure_channel {secure}: one socket has one mode")]
    ListenerMode { addr: SocketAddr, secure: bool },
    #[error("subsystem {nqn} does not listen on {addr}")]
    NoSuchListener { nqn: String, addr: SocketAddr },
    #[error("cannot listen on {addr}: {why}")]
    Listen { addr: SocketAddr, why: String },
    #[error("subsystem {nqn}: host {host} is not on the allow list")]
    NoSuchHost { nqn: String, host: String },
    #[error("the discovery subsystem cannot be changed this way")]
    DiscoveryImmutable,
    #[error("no reactors are running: {0}")]
    NoReactors(String),
    #[error("invalid parameter {param}: {why}")]
    InvalidParam { param: &'static str, why: String },
    #[error("a referral to {addr} ({subnqn}) already exists")]
    ReferralExists { addr: SocketAddr, subnqn: String },
    #[error("no referral to {addr} ({subnqn})")]
    NoSuchReferral { addr: SocketAddr, subnqn: String },
    #[error(transparent)]
    Keyring(#[from] keyring::KeyringError),
    #[error("trtype RDMA: this build has no NVMe/RDMA transport (build baton with the `rdma` feature)")]
    RdmaNotBuilt,
    #[error("listener {addr} exists with another transport: one address has one transport")]
    ListenerTransport { addr: SocketAddr },
}

/// Options of the TCP transport (SPDK's `nvmf_create_transport` names).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportOpts {
    /// I/O queue entries (MQES + 1).
    pub max_queue_depth: u16,
    /// Admin queue entries accepted at Connect.
    pub max_aq_depth: u16,
    pub max_io_qpairs_per_ctrlr: u16,
    /// In-capsule data accepted per command, bytes.
    pub in_capsule_data_size: u32,
    /// Largest transfer per command (advertised through MDTS), bytes.
    pub max_io_size: u32,
    /// MAXH2CDATA: largest H2CData payload, bytes.
    pub io_unit_size: u32,
    /// Use the C2HData SUCCESS flag instead of a response capsule for successful reads.
    pub c2h_success: bool,
    /// Large (128 KiB) data buffers shared by the poll groups; the huge pool
    /// (`max_io_size` buffers) gets half their bytes (`nvmf/tcp/buffers.rs`).
    pub num_shared_buffers: u32,
    /// SPDK's per-poll-group buffer cache: accepted and reported; baton's pools size
    /// their per-reactor caches themselves.
    pub buf_cache_size: u32,
    /// The options are the RDMA transport's (the controller then advertises keyed SGLs).
    #[serde(skip)]
    pub rdma: bool,
}

impl Default for TransportOpts {
    fn default() -> Self {
        TransportOpts {
            max_queue_depth: tcp::QUEUE_DEPTH_MAX,
            max_aq_depth: tcp::ADMIN_QUEUE_DEPTH_MAX,
            max_io_qpairs_per_ctrlr: tcp::IO_QUEUES_MAX,
            in_capsule_data_size: tcp::IN_CAPSULE_DATA_BYTES,
            max_io_size: tcp::DEFAULT_MAX_IO_BYTES,
            io_unit_size: tcp::MAXH2CDATA_BYTES,
            c2h_success: true,
            num_shared_buffers: tcp::DEFAULT_NUM_SHARED_BUFFERS,
            buf_cache_size: tcp::DEFAULT_BUF_CACHE_SIZE,
            rdma: false,
        }
    }
}

/// A namespace: an NSID bound to a bdev.
#[derive(Clone)]
pub struct Namespace {
    pub nsid: u32,
    pub bdev: Arc<dyn Bdev>,
    pub uuid: [u8; 16],
    /// ANA group (default: the NSID, as SPDK).
    pub anagrpid: u32,
}

/// Whether a subsystem serves I/O or is the discovery subsystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsystemKind {
    Discovery,
    Nvme,
}

/// Mutable part of a subsystem (management path, under the subsystem's lock).
pub struct SubsystemState {
    pub namespaces: BTreeMap<u32, Namespace>,
    pub hosts: BTreeSet<String>,
    pub allow_any_host: bool,
    pub listeners: Vec<SocketAddr>,
    /// ANA states per listener (one entry per address in `listeners`).
    pub ana: Vec<Arc<ListenerAna>>,
    pub controllers: Vec<Weak<Controller>>,
    /// DH-HMAC-CHAP key names of the hosts that must authenticate (keyring names).
    pub host_keys: BTreeMap<String, HostKeyNames>,
    /// NVMe/TCP TLS PSK (keyring name) per host (`nvmf_subsystem_add_host`'s `psk`).
    pub host_psks: BTreeMap<String, String>,
}

/// The keyring names a host entry carries (`nvmf_subsystem_add_host`'s `dhchap_key` and
/// `dhchap_ctrlr_key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostKeyNames {
    pub dhchap_key: String,
    pub dhchap_ctrlr_key: Option<String>,
}

/// An NVM subsystem (or the discovery subsystem).
pub struct Subsystem {
    pub nqn: String,
    pub kind: SubsystemKind,
    pub serial_number: String,
    pub model_number: String,
    pub max_namespaces: u32,
    /// Bumped on every namespace change; I/O queues compare it to refresh their view.
    pub ns_generation: AtomicU64,
    /// Set when the subsystem is deleted: its controllers stop.
    pub deleted: AtomicBool,
    /// Controller IDs this subsystem hands out (`min_cntlid..=max_cntlid`): two targets
    /// exporting one subsystem for multipath give disjoint ranges, as hosts require.
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    next_cntlid: AtomicU16,
    pub ana: SubsysAna,
    state: Mutex<SubsystemState>,
}

impl Subsystem {
    /// Locks the mutable state (management path only).
    pub fn state(&self) -> MutexGuard<'_, SubsystemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let s = self.state();
        self.kind == SubsystemKind::Discovery || s.allow_any_host || s.hosts.contains(hostnqn)
    }

    /// Whether `hostnqn` must authenticate, and with which keys: None = no; Some(None) =
    /// yes, but a key it names is gone from the keyring (authentication fails).
    pub fn auth_keys(&self, hostnqn: &str, ring: &keyring::Keyring) -> Option<Option<auth::HostKeys>> {
        let names = self.state().host_keys.get(hostnqn).cloned()?;
        let Ok(host) = ring.get(&names.dhchap_key).and_then(|k| k.secret()) else {
            return Some(None);
        };
        let ctrl = match &names.dhchap_ctrlr_key {
            None => None,
            Some(n) => match ring.get(n).and_then(|k| k.secret()) {
                Ok(k) => Some(k),
                Err(_) => return Some(None),
            },
        };
        Some(Some(auth::HostKeys { host, ctrl }))
    }

    /// The namespace with `nsid`, if any.
    pub fn namespace(&self, nsid: u32) -> Option<Namespace> {
        self.state().namespaces.get(&nsid).cloned()
    }

    /// The next controller ID of the range not held by a live controller, if any is free.
    pub(crate) fn alloc_cntlid(&self) -> Option<u16> {
        let live: BTreeSet<u16> = self.live_controllers().iter().map(|c| c.cntlid).collect();
        let span = u32::from(self.max_cntlid - self.min_cntlid) + 1;
        for _ in 0..span {
            let id = self.next_cntlid.fetch_add(1, Ordering::Relaxed);
            let id = if (self.min_cntlid..=self.max_cntlid).contains(&id) {
                id
            } else {
                self.next_cntlid.store(self.min_cntlid + 1, Ordering::Relaxed);
                self.min_cntlid
            };
            if !live.contains(&id) {
                return Some(id);
            }
        }
        None
    }

    fn live_controllers(&self) -> Vec<Arc<Controller>> {
        let mut s = self.state();
        s.controllers.retain(|w| w.strong_count() > 0);
        s.controllers.iter().filter_map(Weak::upgrade).collect()
    }

    fn notify_ns_changed(&self, nsid: u32) {
        self.ns_generation.fetch_add(1, Ordering::Release);
        for c in self.live_controllers() {
            c.ns_changed(nsid);
        }
    }
}

/// Parameters of `create_subsystem` (SPDK's `nvmf_create_subsystem`).
#[derive(Clone, Debug, Default)]
pub struct SubsystemParams {
    pub nqn: String,
    pub serial_number: Option<String>,
    pub model_number: Option<String>,
    pub allow_any_host: bool,
    pub max_namespaces: Option<u32>,
    /// Advertise ANA (Identify, the ANA log page, ANA change notices).
    pub ana_reporting: bool,
    /// Controller ID range (default 1..=0xFFEF).
    pub min_cntlid: Option<u16>,
    pub max_cntlid: Option<u16>,
}

/// Options of [`Target::add_ns`] (`nvmf_subsystem_add_ns`'s namespace object).
#[derive(Clone, Copy, Debug, Default)]
pub struct NsOptions {
    /// NSID (default: the lowest free one).
    pub nsid: Option<u32>,
    /// Namespace UUID and NGUID (default: the bdev's UUID).
    pub uuid: Option<[u8; 16]>,
    /// ANA group (default: the NSID).
    pub anagrpid: Option<u32>,
}

/// A listening socket shared by the subsystems that listen on its address.
pub struct ListenerHandle {
    pub addr: SocketAddr,
    pub(crate) closed: Arc<AtomicBool>,
    /// A secure channel (TLS 1.3 with a PSK) is required on this socket.
    pub secure: bool,
    /// An NVMe/RDMA listener (rdma_cm), not a TCP socket.
    pub rdma: bool,
}

impl ListenerHandle {
    /// Closes the listening socket: its accept poller drops it on its next pass. A
    /// sleeping reactor is woken for that pass, so the port is free when this returns
    /// plus one reactor iteration, not at the reactor's next timer.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for core in engine::reactor::cores() {
            engine::reactor::wake(core);
        }
    }
}

/// The target: every subsystem, listener and the transport options.
pub struct Target {
    opts: Mutex<TransportOpts>,
    /// The RDMA transport's options, once `nvmf_create_transport` made it.
    rdma_opts: Mutex<Option<TransportOpts>>,
    transport_created: AtomicBool,
    state: Mutex<TargetState>,
    /// Discovery log generation counter.
    genctr: AtomicU64,
    /// Hands accepted connections to reactors round-robin.
    pub(crate) next_core: AtomicU64,
    /// Named DH-HMAC-CHAP secrets host entries refer to.
    pub keyring: keyring::Keyring,
}

struct TargetState {
    subsystems: BTreeMap<String, Arc<Subsystem>>,
    listeners: Vec<ListenerHandle>,
    referrals: Vec<Referral>,
}

/// A discovery referral: another discovery service (or an NVM subsystem) at another
/// address, listed in this target's discovery log (`nvmf_discovery_add_referral`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referral {
    pub addr: SocketAddr,
    /// The discovery NQN for a referral to a discovery service, else an NVM subsystem.
    pub subnqn: String,
    pub secure_channel: bool,
}

fn check_nqn(nqn: &str) -> Result<(), TargetError> {
    let bad = |why| {
        Err(TargetError::InvalidNqn {
            nqn: nqn.to_string(),
            why,
        })
    };
    if nqn.len() > NQN_BYTES_MAX {
        return bad("longer than 223 bytes");
    }
    if !nqn.starts_with("nqn.") {
        return bad("does not start with \"nqn.\"");
    }
    if nqn.bytes().any(|b| b.is_ascii_control()) {
        return bad("contains control characters");
    }
    Ok(())
}

impl Target {
    /// A target with only the discovery subsystem and default TCP transport options.
    pub fn new() -> Arc<Target> {
        let t = Target {
            opts: Mutex::new(TransportOpts::default()),
            rdma_opts: Mutex::new(None),
            transport_created: AtomicBool::new(false),
            state: Mutex::new(TargetState {
                subsystems: BTreeMap::new(),
                listeners: Vec::new(),
                referrals: Vec::new(),
            }),
            genctr: AtomicU64::new(1),
            next_core: AtomicU64::new(0),
            keyring: keyring::Keyring::default(),
        };
        let disc = Subsystem {
            nqn: DISCOVERY_NQN.to_string(),
            kind: SubsystemKind::Discovery,
            serial_number: String::new(),
            model_number: "baton discovery".to_string(),
            max_namespaces: 0,
            ns_generation: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
            min_cntlid: 1,
            max_cntlid: CNTLID_MAX,
            next_cntlid: AtomicU16::new(1),
            ana: SubsysAna {
                reporting: false,
                chgcnt: AtomicU64::new(0),
            },
            state: Mutex::new(SubsystemState {
                namespaces: BTreeMap::new(),
                hosts: BTreeSet::new(),
                allow_any_host: true,
                listeners: Vec::new(),
                ana: Vec::new(),
                controllers: Vec::new(),
                host_keys: BTreeMap::new(),
                host_psks: BTreeMap::new(),
            }),
        };
        t.lock().subsystems.insert(DISCOVERY_NQN.to_string(), Arc::new(disc));
        Arc::new(t)
    }

    fn lock(&self) -> MutexGuard<'_, TargetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Transport options in force.
    pub fn transport_opts(&self) -> TransportOpts {
        self.opts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `nvmf_create_transport` was called (listeners work either way, with defaults).
    pub fn transport_created(&self) -> bool {
        self.transport_created.load(Ordering::Relaxed)
    }

    /// Sets the TCP transport options (`nvmf_create_transport`). Values are clamped to the
    /// compiled limits; the result is returned.
    pub fn create_transport(&self, o: TransportOpts) -> Result<TransportOpts, TargetError> {
        let bad = |param, why: String| Err(TargetError::InvalidParam { param, why });
        if o.max_queue_depth < 2 || o.max_queue_depth > tcp::QUEUE_DEPTH_MAX {
            return bad(
                "max_queue_depth",
                format!("{} not in 2..={}", o.max_queue_depth, tcp::QUEUE_DEPTH_MAX),
            );
        }
        if o.max_aq_depth < 2 || o.max_aq_depth > tcp::ADMIN_QUEUE_DEPTH_MAX {
            return bad(
                "max_aq_depth",
                format!("{} not in 2..={}", o.max_aq_depth, tcp::ADMIN_QUEUE_DEPTH_MAX),
            );
        }
        if o.max_io_qpairs_per_ctrlr == 0 || o.max_io_qpairs_per_ctrlr > tcp::IO_QUEUES_MAX {
            return bad(
                "max_io_qpairs_per_ctrlr",
                format!("{} not in 1..={}", o.max_io_qpairs_per_ctrlr, tcp::IO_QUEUES_MAX),
            );
        }
        if o.in_capsule_data_size < 4096
            || o.in_capsule_data_size > tcp::IN_CAPSULE_DATA_BYTES
            || !o.in_capsule_data_size.is_multiple_of(16)
        {
            return bad(
                "in_capsule_data_size",
                format!(
                    "{} not a multiple of 16 in 4096..={}",
                    o.in_capsule_data_size,
                    tcp::IN_CAPSULE_DATA_BYTES
                ),
            );
        }
        if !o.max_io_size.is_power_of_two() || o.max_io_size < 4096 || o.max_io_size > tcp::MAX_IO_BYTES {
            return bad(
                "max_io_size",
                format!("{} not a power of two in 4096..={}", o.max_io_size, tcp::MAX_IO_BYTES),
            );
        }
        if o.io_unit_size < 4096 || o.io_unit_size > tcp::MAXH2CDATA_BYTES || !o.io_unit_size.is_multiple_of(4) {
            return bad(
                "io_unit_size",
                format!(
                    "{} not a multiple of 4 in 4096..={}",
                    o.io_unit_size,
                    tcp::MAXH2CDATA_BYTES
                ),
            );
        }
        // The data buffer pools are made now (or found, made by an earlier transport of
        // the same geometry), not at the first I/O.
        tcp::make_pools(&o)?;
        *self.opts.lock().unwrap_or_else(|e| e.into_inner()) = o.clone();
        self.transport_created.store(true, Ordering::Relaxed);
        Ok(o)
    }

    /// All subsystems, the discovery subsystem first.
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        let s = self.lock();
        let mut v: Vec<_> = s
            .subsystems
            .values()
            .filter(|s| s.kind == SubsystemKind::Discovery)
            .cloned()
            .collect();
        v.extend(s.subsystems.values().filter(|s| s.kind == SubsystemKind::Nvme).cloned());
        v
    }

    /// The subsystem named `nqn`.
    pub fn subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, TargetError> {
        self.lock()
            .subsystems
            .get(nqn)
            .cloned()
            .ok_or_else(|| TargetError::NoSuchSubsystem(nqn.to_string()))
    }

    fn nvme_subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, TargetError> {
        let s = self.subsystem(nqn)?;
        if s.kind == SubsystemKind::Discovery {
            return Err(TargetError::DiscoveryImmutable);
        }
        Ok(s)
    }

    /// Creates an NVM subsystem (`nvmf_create_subsystem`).
    pub fn create_subsystem(&self, p: SubsystemParams) -> Result<Arc<Subsystem>, TargetError> {
        check_nqn(&p.nqn)?;
        let sn = p.serial_number.unwrap_or_else(|| "00000000000000000000".to_string());
        if sn.len() > 20 || !sn.is_ascii() {
            return Err(TargetError::InvalidParam {
                param: "serial_number",
                why: format!("{sn:?} is not ASCII of at most 20 bytes"),
            });
        }
        let mn = p.model_number.unwrap_or_else(|| "baton Controller".to_string());
        if mn.len() > 40 || !mn.is_ascii() {
            return Err(TargetError::InvalidParam {
                param: "model_number",
                why: format!("{mn:?} is not ASCII of at most 40 bytes"),
            });
        }
        let max_ns = p.max_namespaces.filter(|&m| m > 0).unwrap_or(NAMESPACES_DEFAULT_MAX);
        if max_ns > 1024 {
            return Err(TargetError::InvalidParam {
                param: "max_namespaces",
                why: format!("{max_ns} exceeds 1024"),
            });
        }
        let (min_cntlid, max_cntlid) = (p.min_cntlid.unwrap_or(1), p.max_cntlid.unwrap_or(CNTLID_MAX));
        if min_cntlid == 0 || max_cntlid > CNTLID_MAX || min_cntlid > max_cntlid {
            return Err(TargetError::InvalidParam {
                param: "min_cntlid/max_cntlid",
                why: format!("{min_cntlid}..={max_cntlid} is not a range within 1..={CNTLID_MAX}"),
            });
        }
        let mut st = self.lock();
        if st.subsystems.contains_key(&p.nqn) {
            return Err(TargetError::SubsystemExists(p.nqn));
        }
        let s = Arc::new(Subsystem {
            nqn: p.nqn.clone(),
            kind: SubsystemKind::Nvme,
            serial_number: sn,
            model_number: mn,
            max_namespaces: max_ns,
            ns_generation: AtomicU64::new(1),
            deleted: AtomicBool::new(false),
            min_cntlid,
            max_cntlid,
            next_cntlid: AtomicU16::new(min_cntlid),
            ana: SubsysAna {
                reporting: p.ana_reporting,
                chgcnt: AtomicU64::new(1),
            },
            state: Mutex::new(SubsystemState {
                namespaces: BTreeMap::new(),
                hosts: BTreeSet::new(),
                allow_any_host: p.allow_any_host,
                listeners: Vec::new(),
                ana: Vec::new(),
                controllers: Vec::new(),
                host_keys: BTreeMap::new(),
                host_psks: BTreeMap::new(),
            }),
        });
        st.subsystems.insert(p.nqn, s.clone());
        drop(st);
        self.bump_genctr();
        Ok(s)
    }

    /// Deletes a subsystem: its controllers fail and their connections close
    /// (`nvmf_delete_subsystem`).
    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), TargetError> {
        let s = self.nvme_subsystem(nqn)?;
        self.lock().subsystems.remove(nqn);
        s.deleted.store(true, Ordering::Release);
        for c in s.live_controllers() {
            c.fail("subsystem deleted");
        }
        let addrs: Vec<SocketAddr> = s.state().listeners.drain(..).collect();
        for a in addrs {
            self.release_listener(a);
        }
        self.bump_genctr();
        Ok(())
    }

    /// Adds a namespace over bdev `bdev_name`; returns its NSID (`nvmf_subsystem_add_ns`).
    pub fn add_namespace(
        &self,
        nqn: &str,
        bdev_name: &str,
        nsid: Option<u32>,
        uuid: Option<[u8; 16]>,
    ) -> Result<u32, TargetError> {
        self.add_ns(
            nqn,
            bdev_name,
            NsOptions {
                nsid,
                uuid,
                anagrpid: None,
            },
        )
    }

    /// [`Target::add_namespace`] with every option, the ANA group among them (default: the
    /// NSID).
    pub fn add_ns(&self, nqn: &str, bdev_name: &str, o: NsOptions) -> Result<u32, TargetError> {
        let NsOptions { nsid, uuid, anagrpid } = o;
        let s = self.nvme_subsystem(nqn)?;
        if let Some(g) = anagrpid {
            ana::check_anagrpid(&s, g)?;
        }
        let bdev = engine::bdev::lookup(bdev_name).ok_or_else(|| TargetError::NoSuchBdev(bdev_name.to_string()))?;
        let nsid = {
            let mut st = s.state();
            let nsid = match nsid.filter(|&n| n != 0) {
                Some(n) if n > s.max_namespaces => {
                    return Err(TargetError::NsidInvalid {
                        nqn: nqn.to_string(),
                        nsid: n,
                        max: s.max_namespaces,
                    })
                }
                Some(n) if st.namespaces.contains_key(&n) => {
                    return Err(TargetError::NsidInUse {
                        nqn: nqn.to_string(),
                        nsid: n,
                    })
                }
                Some(n) => n,
                None => (1..=s.max_namespaces).find(|n| !st.namespaces.contains_key(n)).ok_or(
                    TargetError::NamespacesFull {
                        nqn: nqn.to_string(),
                        max: s.max_namespaces,
                    },
                )?,
            };
            let uuid = uuid.unwrap_or_else(|| bdev.uuid());
            let anagrpid = anagrpid.unwrap_or(nsid);
            st.namespaces.insert(
                nsid,
                Namespace {
                    nsid,
                    bdev,
                    uuid,
                    anagrpid,
                },
            );
            nsid
        };
        s.notify_ns_changed(nsid);
        s.notify_ana_changed(None);
        Ok(nsid)
    }

    /// Removes namespace `nsid` (`nvmf_subsystem_remove_ns`). I/O queues see it gone on their
    /// next command; in-flight I/O to it completes normally.
    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), TargetError> {
        let s = self.nvme_subsystem(nqn)?;
        if s.state().namespaces.remove(&nsid).is_none() {
            return Err(TargetError::NoSuchNamespace {
                nqn: nqn.to_string(),
                nsid,
            });
        }
        s.notify_ns_changed(nsid);
        Ok(())
    }

    /// Adds a host NQN to the allow list (`nvmf_subsystem_add_host`).
    pub fn add_host(&self, nqn: &str, host: &str) -> Result<(), TargetError> {
        self.add_host_keys(nqn, host, None)
    }

    /// Adds a host NQN to the allow list with DH-HMAC-CHAP keys (keyring names): the host
    /// must then authenticate every queue. Re-adding a host replaces its keys.
    pub fn add_host_keys(&self, nqn: &str, host: &str, keys: Option<HostKeyNames>) -> Result<(), TargetError> {
        check_nqn(host)?;
        let s = self.nvme_subsystem(nqn)?;
        if let Some(k) = &keys {
            self.keyring.get(&k.dhchap_key)?.secret()?;
            if let Some(c) = &k.dhchap_ctrlr_key {
                self.keyring.get(c)?.secret()?;
            }
        }
        let mut st = s.state();
        st.hosts.insert(host.to_string());
        match keys {
            Some(k) => st.host_keys.insert(host.to_string(), k),
            None => st.host_keys.remove(host),
        };
        drop(st);
        self.bump_genctr();
        Ok(())
    }

    /// Sets (or clears) the TLS PSK (keyring name) `host` uses on secure listeners; the
    /// host must be on the allow list already ([`Target::add_host_keys`]).
    pub fn set_host_psk(&self, nqn: &str, host: &str, psk: Option<String>) -> Result<(), TargetError> {
        let s = self.nvme_subsystem(nqn)?;
        if let Some(name) = &psk {
            self.keyring.get(name)?.tls_psk()?;
        }
        let mut st = s.state();
        match psk {
            Some(p) => st.host_psks.insert(host.to_string(), p),
            None => st.host_psks.remove(host),
        };
        Ok(())
    }

    /// Whether the listener on `addr` requires TLS.
    pub fn listener_secure(&self, addr: SocketAddr) -> bool {
        self.lock().listeners.iter().any(|l| l.addr == addr && l.secure)
    }

    /// Removes a host NQN (`nvmf_subsystem_remove_host`); its controllers are disconnected.
    pub fn remove_host(&self, nqn: &str, host: &str) -> Result<(), TargetError> {
        let s = self.nvme_subsystem(nqn)?;
        s.state().host_keys.remove(host);
        s.state().host_psks.remove(host);
        if !s.state().hosts.remove(host) {
            return Err(TargetError::NoSuchHost {
                nqn: nqn.to_string(),
                host: host.to_string(),
            });
        }
        if !s.state().allow_any_host {
            for c in s.live_controllers().iter().filter(|c| c.hostnqn == host) {
                c.fail("host removed from the allow list");
            }
        }
        self.bump_genctr();
        Ok(())
    }

    /// Sets allow-any-host (`nvmf_subsystem_allow_any_host`).
    pub fn allow_any_host(&self, nqn: &str, allow: bool) -> Result<(), TargetError> {
        self.nvme_subsystem(nqn)?.state().allow_any_host = allow;
        self.bump_genctr();
        Ok(())
    }

    /// Adds a discovery referral; `subnqn` None means the discovery NQN.
    pub fn add_referral(
        &self,
        addr: SocketAddr,
        subnqn: Option<&str>,
        secure_channel: bool,
    ) -> Result<(), TargetError> {
        let subnqn = subnqn.unwrap_or(DISCOVERY_NQN).to_string();
        check_nqn(&subnqn)?;
        let mut st = self.lock();
        if st.referrals.iter().any(|r| r.addr == addr && r.subnqn == subnqn) {
            return Err(TargetError::ReferralExists { addr, subnqn });
        }
        st.referrals.push(Referral {
            addr,
            subnqn,
            secure_channel,
        });
        drop(st);
        self.bump_genctr();
        Ok(())
    }

    /// Removes a discovery referral; `subnqn` None means the discovery NQN.
    pub fn remove_referral(&self, addr: SocketAddr, subnqn: Option<&str>) -> Result<(), TargetError> {
        let subnqn = subnqn.unwrap_or(DISCOVERY_NQN).to_string();
        let mut st = self.lock();
        let before = st.referrals.len();
        st.referrals.retain(|r| !(r.addr == addr && r.subnqn == subnqn));
        if st.referrals.len() == before {
            return Err(TargetError::NoSuchReferral { addr, subnqn });
        }
        drop(st);
        self.bump_genctr();
        Ok(())
    }

    /// The discovery referrals, in the order they were added.
    pub fn referrals(&self) -> Vec<Referral> {
        self.lock().referrals.clone()
    }

    /// Addresses the target listens on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.lock().listeners.iter().map(|l| l.addr).collect()
    }

    /// Stops every listener and fails every controller (process shutdown, tests).
    pub fn shutdown(&self) {
        let subs: Vec<_> = self.lock().subsystems.values().cloned().collect();
        for s in subs {
            for c in s.live_controllers() {
                c.fail("target shutting down");
            }
        }
        for l in self.lock().listeners.drain(..) {
            l.close();
        }
    }

    pub(crate) fn genctr(&self) -> u64 {
        self.genctr.load(Ordering::Relaxed)
    }

    fn bump_genctr(&self) {
        self.genctr.fetch_add(1, Ordering::Relaxed);
    }
}
