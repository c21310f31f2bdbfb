//! A queue pair of the host (initiator), whatever the transport: NVMe/TCP
//! ([`super::tcp_qpair`]) or NVMe/RDMA ([`super::rdma_qpair`], feature `rdma`), chosen by
//! [`HostOpts::trtype`]. The controller bring-up, the bdev channels and the tools use only
//! this type.
//!
//! Set-up (`connect`) blocks; it is management work. After it the queue pair never blocks:
//! [`Qpair::submit`] queues a command, [`Qpair::poll`] moves what the transport has and
//! reports completions. A queue pair is owned by one thread (it may be a reactor) and is not
//! shared. Buffers move in with `submit` and come back in the [`HostCompletion`].
//!
//! What both transports share is here: the command's data ([`Data`]), its completion, the
//! Fabrics Connect exchange and the blocking `sync` loop.

use super::tcp_qpair::TcpQpair;
use super::trid::Trtype;
use super::{HostError, HostOpts};
use crate::spec::cmd::admin_opc;
use crate::spec::fabrics::{fctype, ConnectCmd, ConnectData};
use crate::spec::{put_str, Cqe, Plain, Sqe, Status};
use crate::tcp::pdu::TxDigests;
use engine::buf::DmaBuf;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// In-capsule data the admin queue may carry (NVMe/TCP: 8 KiB on the admin queue).
pub const ADMIN_IN_CAPSULE_BYTES: u32 = 8192;

/// The data that goes with a command; the buffer's length is the transfer length.
#[derive(Debug)]
pub enum Data {
    None,
    /// Host to controller (write, compare, DSM ranges, Connect data).
    ToCtrl(DmaBuf),
    /// Controller to host (read, identify, log pages).
    FromCtrl(DmaBuf),
}

impl Data {
    pub(crate) fn into_buf(self) -> Option<DmaBuf> {
        match self {
            Data::None => None,
            Data::ToCtrl(b) | Data::FromCtrl(b) => Some(b),
        }
    }
}

/// A finished command.
#[derive(Debug)]
pub struct HostCompletion {
    /// The token given to `submit`.
    pub user: u64,
    pub cqe: Cqe,
    /// The command's buffer, handed back (read data is in it).
    pub buf: Option<DmaBuf>,
}

impl HostCompletion {
    pub fn status(&self) -> Status {
        self.cqe.status()
    }
}

/// What the shared steps need of a transport's queue pair.
pub(crate) trait Link {
    fn submit(&mut self, sqe: Sqe, data: Data, user: u64) -> Result<u16, (HostError, Data)>;
    /// Moves what can move without blocking; finished commands wait for `take_done`/`poll`.
    fn poll_io(&mut self) -> Result<(), HostError>;
    /// Takes the finished command `cid` submitted with token `user`, if it finished.
    fn take_done(&mut self, cid: u16, user: u64) -> Option<HostCompletion>;
}

/// What both transports' queue pairs keep alike: the free CIDs (slot = CID), the finished
/// commands not yet reported and the error that ended the queue pair.
pub(crate) struct Cids {
    depth: usize,
    pub(crate) free: Vec<usize>,
    pub(crate) done: Vec<HostCompletion>,
    pub(crate) failed: Option<HostError>,
}

impl Cids {
    pub(crate) fn new(depth: usize) -> Cids {
        Cids {
            depth,
            free: (0..depth).rev().collect(),
            done: Vec::with_capacity(depth),
            failed: None,
        }
    }

    /// Records the first error that ends the queue pair; returns `e`.
    pub(crate) fn fail(&mut self, e: HostError) -> HostError {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    /// Reports the finished commands through `f`; returns how many.
    pub(crate) fn report(&mut self, f: &mut dyn FnMut(HostCompletion)) -> usize {
        let n = self.done.len();
        for c in self.done.drain(..) {
            f(c);
        }
        n
    }

    /// Takes the finished command `cid` submitted with token `user`, if it finished.
    pub(crate) fn take(&mut self, cid: u16, user: u64) -> Option<HostCompletion> {
        let i = self.done.iter().position(|c| c.cqe.cid == cid && c.user == user)?;
        Some(self.done.remove(i))
    }
}

/// Submits one command and polls until it completes (other completions stay for the next
/// poll). Blocks up to `timeout`: not for reactor threads.
pub(crate) fn sync_on(q: &mut dyn Link, sqe: Sqe, data: Data, timeout: Duration) -> Result<HostCompletion, HostError> {
    const SYNC_TOKEN: u64 = u64::MAX - 7;
    let cid = q.submit(sqe, data, SYNC_TOKEN).map_err(|(e, _)| e)?;
    let deadline = Instant::now() + timeout;
    loop {
        q.poll_io()?;
        if let Some(c) = q.take_done(cid, SYNC_TOKEN) {
            return Ok(c);
        }
        if Instant::now() > deadline {
            return Err(HostError::Timeout("command completion"));
        }
        std::thread::yield_now();
    }
}

/// The Fabrics Connect command and its 1024 bytes of data for queue `qid` of `entries`
/// slots; `cntlid` is 0xFFFF for an admin queue, the controller's ID for an I/O queue.
pub(crate) fn connect_capsule(subnqn: &str, qid: u16, entries: u16, cntlid: u16, opts: &HostOpts) -> (Sqe, DmaBuf) {
    let mut sqe = Sqe {
        opc: admin_opc::FABRICS,
        nsid: u32::from(fctype::CONNECT),
        ..Sqe::default()
    };
    ConnectCmd {
        recfmt: 0,
        qid,
        sqsize: entries - 1,
        cattr: 0,
        kato_ms: if qid == 0 { opts.kato_ms } else { 0 },
    }
    .to_sqe(&mut sqe);
    let mut cd = ConnectData::zeroed();
    cd.hostid = opts.hostid;
    cd.cntlid = cntlid;
    put_str(&mut cd.subnqn, subnqn, 0);
    put_str(&mut cd.hostnqn, &opts.hostnqn, 0);
    let mut b = DmaBuf::alloc(1024);
    b.copy_from_slice(cd.as_bytes());
    (sqe, b)
}

/// Which queue a transport connects, and how (the arguments of [`Qpair::connect`]).
#[derive(Clone, Copy)]
pub(crate) struct QueueSpec<'a> {
    pub addr: SocketAddr,
    pub subnqn: &'a str,
    pub qid: u16,
    /// Entries (at least 2).
    pub entries: u16,
    /// 0xFFFF for an admin queue, the controller's ID for an I/O queue.
    pub cntlid: u16,
    /// Largest write carried in the command capsule.
    pub in_capsule_max: u32,
}

/// Runs Fabrics Connect on a connected transport queue; returns the controller ID.
pub(crate) fn connect_fabrics(q: &mut dyn Link, s: &QueueSpec<'_>, opts: &HostOpts) -> Result<u16, HostError> {
    let (sqe, b) = connect_capsule(s.subnqn, s.qid, s.entries, s.cntlid, opts);
    let c = sync_on(q, sqe, Data::ToCtrl(b), opts.timeout)?;
    if !c.status().is_success() {
        return Err(HostError::Connect {
            status: c.status(),
            dw0: c.cqe.dw0,
        });
    }
    Ok(c.cqe.dw0 as u16)
}

/// One queue pair over the transport its [`HostOpts::trtype`] named. (The RDMA one is
/// boxed: its verbs state is large; a queue pair is made once, at connect.)
#[allow(clippy::large_enum_variant)]
pub enum Qpair {
    Tcp(TcpQpair),
    #[cfg(feature = "rdma")]
    Rdma(Box<super::rdma_qpair::RdmaQpair>),
}

/// Runs `$e` on the transport's queue pair `$q`.
macro_rules! each {
    ($s:expr, $q:ident => $e:expr) => {
        match $s {
            Qpair::Tcp($q) => $e,
            #[cfg(feature = "rdma")]
            Qpair::Rdma($q) => $e,
        }
    };
}

impl Qpair {
    /// Connects queue `qid` with `entries` slots over `opts.trtype` and runs Fabrics Connect.
    /// `cntlid` is 0xFFFF for an admin queue, the admin queue's controller ID for an I/O
    /// queue; `in_capsule_max` is the largest write carried in the command capsule. Blocks up
    /// to `opts.timeout`; management threads only.
    pub fn connect(
        addr: SocketAddr,
        subnqn: &str,
        qid: u16,
        entries: u16,
        cntlid: u16,
        in_capsule_max: u32,
        opts: &HostOpts,
    ) -> Result<Qpair, HostError> {
        let spec = QueueSpec {
            addr,
            subnqn,
            qid,
            entries: entries.max(2),
            cntlid,
            in_capsule_max,
        };
        match opts.trtype {
            Trtype::Tcp => TcpQpair::connect(&spec, opts).map(Qpair::Tcp),
            #[cfg(feature = "rdma")]
            Trtype::Rdma => super::rdma_qpair::RdmaQpair::connect(&spec, opts).map(|q| Qpair::Rdma(Box::new(q))),
            #[cfg(not(feature = "rdma"))]
            Trtype::Rdma => Err(HostError::Invalid(super::trid::RDMA_FEATURE_MISSING.into())),
        }
    }

    /// The queue ID.
    pub fn qid(&self) -> u16 {
        each!(self, q => q.qid)
    }

    /// Controller ID this queue belongs to.
    pub fn cntlid(&self) -> u16 {
        each!(self, q => q.cntlid)
    }

    /// The transport of this queue pair.
    pub fn trtype(&self) -> Trtype {
        match self {
            Qpair::Tcp(_) => Trtype::Tcp,
            #[cfg(feature = "rdma")]
            Qpair::Rdma(_) => Trtype::Rdma,
        }
    }

    /// The target's address.
    pub fn peer(&self) -> SocketAddr {
        each!(self, q => q.peer())
    }

    /// Commands that can be in flight.
    pub fn depth(&self) -> usize {
        each!(self, q => q.cids.depth)
    }

    /// Commands in flight.
    pub fn outstanding(&self) -> usize {
        each!(self, q => q.cids.depth - q.cids.free.len())
    }

    /// Largest in-capsule data this queue sends; larger writes go through R2T (TCP) or a
    /// keyed data block the target reads (RDMA).
    pub fn set_in_capsule_max(&mut self, bytes: u32) {
        each!(self, q => q.set_in_capsule_max(bytes))
    }

    /// The digests negotiated (NVMe/TCP; for tests that write raw PDUs with `send_raw`).
    pub fn digests(&self) -> TxDigests {
        match self {
            Qpair::Tcp(q) => q.digests(),
            #[cfg(feature = "rdma")]
            Qpair::Rdma(_) => TxDigests::default(),
        }
    }

    /// Queues raw bytes on the socket (NVMe/TCP negative tests; ignored over RDMA).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        match self {
            Qpair::Tcp(q) => q.send_raw(bytes),
            #[cfg(feature = "rdma")]
            Qpair::Rdma(_) => {}
        }
    }

    /// The error that ended this queue pair, if any.
    pub fn failure(&self) -> Option<&HostError> {
        each!(self, q => q.cids.failed.as_ref())
    }

    /// Queues a command. Sets its CID and data descriptor; `data`'s buffer length is the
    /// transfer length. Never blocks. On error the data is handed back.
    pub fn submit(&mut self, sqe: Sqe, data: Data, user: u64) -> Result<u16, (HostError, Data)> {
        each!(self, q => q.submit(sqe, data, user))
    }

    /// Moves what the transport has and reports finished commands through `f`; returns how
    /// many. Never blocks. An error is fatal to the queue pair; commands in flight are lost
    /// (see [`Qpair::abort_outstanding`]).
    pub fn poll(&mut self, f: &mut dyn FnMut(HostCompletion)) -> Result<usize, HostError> {
        each!(self, q => q.poll(f))
    }

    /// Submits one command and polls until it completes (other completions are kept for the
    /// next `poll`). Blocks up to `timeout`: not for reactor threads.
    pub fn sync(&mut self, sqe: Sqe, data: Data, timeout: Duration) -> Result<HostCompletion, HostError> {
        each!(self, q => sync_on(q.link(), sqe, data, timeout))
    }

    /// Ends every command in flight with Aborted - SQ Deletion and reports it through `f`
    /// with its buffer, after the queue pair failed. Returns how many completions `f` saw.
    pub fn abort_outstanding(&mut self, f: &mut dyn FnMut(HostCompletion)) -> usize {
        each!(self, q => q.abort_outstanding(f))
    }

    /// Closes the connection.
    pub fn close(self) {
        each!(self, q => q.close())
    }
}

/// `link` for both arms of [`each!`]: the TCP queue pair itself, the boxed RDMA one.
trait AsLink {
    fn link(&mut self) -> &mut dyn Link;
}

impl AsLink for TcpQpair {
    fn link(&mut self) -> &mut dyn Link {
        self
    }
}

#[cfg(feature = "rdma")]
impl AsLink for Box<super::rdma_qpair::RdmaQpair> {
    fn link(&mut self) -> &mut dyn Link {
        &mut **self
    }
}
