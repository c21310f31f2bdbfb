//! The NVMe/RDMA transport of the target (feature `rdma`, `docs/nvme-rdma.md`): an rdma_cm
//! listener polled by a reactor, one RC queue pair per NVMe queue, command capsules in
//! posted receives, data moved by RDMA READ (host writes) and RDMA WRITE (host reads),
//! responses in SENDs. The controller layer (Connect checks, admin commands, namespaces,
//! ANA, keep-alive) is the transport-neutral one NVMe/TCP uses (`nvmf::connect`,
//! `nvmf::ctrlr`, `nvmf::io`).
//!
//! - this file: the listener's poller (connection requests checked with
//!   `rdma_proto::accept_request`, refused with the reject private data) and the
//!   per-reactor poll group of queues.
//! - `queue.rs`: one queue pair: its memory, the rdma_cm events, completions, capsules in.
//! - `exec.rs`: a command's life after its capsule: Connect, admin, I/O to the bdev, data
//!   out and the response.
//!
//! Every verbs call goes through `rdma_transport::rdma::verbs` (no `unsafe` here). Memory
//! is registered when a queue is accepted, never per I/O; nothing on the I/O path
//! allocates, locks or blocks.

mod auth;
mod exec;
mod queue;
mod restart_point;
mod stats;

pub use stats::{group_stats, RdmaGroupStats};

use super::rdma_proto::{self, CmLimits};
use super::{ListenerHandle, Target, TargetError};
use engine::reactor::{self, PollStatus, PollerId};
use queue::{Queue, QueuePoll};
use rdma_transport::rdma::verbs::{cm_event, Channel, CmId};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the listener's poller looks for connection requests.
const ACCEPT_POLL_PERIOD_US: u64 = 1000;
/// rdma_cm listen backlog.
const LISTEN_BACKLOG: i32 = 64;

fn verbs_err(addr: SocketAddr) -> impl Fn((&'static str, std::io::Error)) -> TargetError {
    move |(op, e)| TargetError::Listen {
        addr,
        why: format!("{op}: {e}"),
    }
}

/// Binds an rdma_cm listener on `addr` (an address of an RDMA device; Soft-RoCE included)
/// and starts its poller on the first reactor. Management path.
pub(crate) fn start_listener(target: Arc<Target>, addr: SocketAddr) -> Result<ListenerHandle, TargetError> {
    let cores = reactor::cores();
    if cores.is_empty() {
        return Err(TargetError::NoReactors(
            "start reactors before adding a listener".into(),
        ));
    }
    let err = verbs_err(addr);
    let ch = Channel::new().map_err(&err)?;
    let id = CmId::new(&ch).map_err(&err)?;
    id.listen(addr, LISTEN_BACKLOG).map_err(&err)?;
    let bound = match id.local_addr() {
        Some(a) if a.port() != 0 => a,
        _ => addr,
    };
    let closed = Arc::new(AtomicBool::new(false));
    let c2 = closed.clone();
    reactor::send_msg(cores[0], move || {
        let pid: Rc<Cell<Option<PollerId>>> = Rc::new(Cell::new(None));
        let pid2 = pid.clone();
        // The id before its channel: rdma_cm wants ids destroyed first.
        let mut listener = Some((id, ch));
        let p = reactor::register_poller(
            "nvmf_rdma_accept",
            Some(Duration::from_micros(ACCEPT_POLL_PERIOD_US)),
            move || {
                if c2.load(Ordering::Acquire) {
                    if let Some(p) = pid2.get() {
                        reactor::unregister_poller(p);
                    }
                    listener = None;
                    return PollStatus::Idle;
                }
                match &listener {
                    Some((_, ch)) => accept_some(ch, &target, &cores, bound),
                    None => PollStatus::Idle,
                }
            },
        );
        pid.set(Some(p));
    })
    .map_err(|e| TargetError::NoReactors(format!("{e:?}")))?;
    log::info!("nvmf: RDMA listener on {bound}");
    Ok(ListenerHandle {
        addr: bound,
        closed,
        secure: false,
        rdma: true,
    })
}

/// Handles the listener's pending rdma_cm events: each connection request is checked and
/// either refused here (reject private data with the NVMe/RDMA status) or handed to a
/// reactor, which accepts it.
fn accept_some(ch: &Channel, target: &Arc<Target>, cores: &[u32], listen: SocketAddr) -> PollStatus {
    let mut status = PollStatus::Idle;
    loop {
        let ev = match ch.poll() {
            Ok(Some(ev)) => ev,
            Ok(None) => return status,
            Err((op, e)) => {
                log::warn!("nvmf: RDMA listener {listen}: {op}: {e}");
                return status;
            }
        };
        status = PollStatus::Busy;
        if ev.kind != cm_event::RDMA_CM_EVENT_CONNECT_REQUEST {
            continue;
        }
        let Some(id) = ev.new_id else { continue };
        let opts = target.rdma_transport_opts();
        let limits = CmLimits {
            max_queue_depth: opts.max_queue_depth,
            max_aq_depth: opts.max_aq_depth,
            max_io_qpairs: opts.max_io_qpairs_per_ctrlr,
        };
        let peer = id.peer_addr();
        let checked = rdma_proto::accept_request(&ev.private, limits)
            .and_then(|p| rdma_proto::read_depth(ev.initiator_depth, u8::MAX, p.sq_entries).map(|_| p));
        let params = match checked {
            Ok(p) => p,
            Err(sts) => {
                log::info!("nvmf: RDMA connection request from {peer:?} refused: {sts:?}");
                id.reject_with(&rdma_proto::encode_reject(sts));
                continue;
            }
        };
        let i = target.next_core.fetch_add(1, Ordering::Relaxed) as usize % cores.len();
        let t = target.clone();
        let host_ird = ev.initiator_depth;
        let add = move || match Queue::accept(t, id, params, host_ird, opts, listen) {
            Ok(q) => group_add(q),
            Err(e) => log::warn!("nvmf: RDMA connection from {peer:?} not accepted: {e}"),
        };
        if let Err(e) = reactor::send_msg(cores[i], add) {
            log::warn!("nvmf: RDMA connection dropped: reactor {} unreachable: {e:?}", cores[i]);
        }
    }
}

/// One reactor's RDMA queues.
struct PollGroup {
    queues: Vec<Queue>,
    stats: Arc<RdmaGroupStats>,
}

thread_local! {
    static GROUP: RefCell<Option<PollGroup>> = const { RefCell::new(None) };
}

/// Adds an accepted queue to the calling reactor's poll group (creating the group and its
/// poller on first use). Runs on the reactor, from a message.
fn group_add(mut q: Box<Queue>) {
    let core = reactor::current_core().unwrap_or(0);
    GROUP.with(|g| {
        let mut g = g.borrow_mut();
        if g.is_none() {
            reactor::register_poller("nvmf_rdma_poll_group", None, group_poll);
        }
        let g = g.get_or_insert_with(|| PollGroup {
            queues: Vec::new(),
            stats: stats::register(core),
        });
        q.join_group(core, g.stats.clone());
        g.queues.push(*q);
    });
}

/// Polls every queue of this reactor; drops the ones that finished closing. Completion
/// queues have no completion channel: the reactor keeps polling while it has queues.
fn group_poll() -> PollStatus {
    GROUP.with(|g| {
        let mut g = g.borrow_mut();
        let Some(g) = g.as_mut() else {
            return PollStatus::Idle;
        };
        let now = engine::clock::now_ns();
        let mut busy = false;
        let mut i = 0;
        while i < g.queues.len() {
            match g.queues[i].poll(now) {
                QueuePoll::Busy => {
                    busy = true;
                    i += 1;
                }
                QueuePoll::Idle => i += 1,
                QueuePoll::Dead => {
                    // Setup/teardown path: the queue's memory is deregistered on drop.
                    g.queues.swap_remove(i);
                    busy = true;
                }
            }
        }
        stats::bump(&g.stats.polls, 1);
        if busy {
            PollStatus::Busy
        } else {
            stats::bump(&g.stats.idle_polls, 1);
            PollStatus::Idle
        }
    })
}
