//! Reactors: one pinned poller thread per core of a core mask (SPDK's model).
//!
//! Each reactor runs a run-to-completion loop forever:
//! 1. drain up to [`MSG_BATCH_MAX`] messages from its [`Ring`] (work sent by
//!    other threads with [`send_msg`] / [`Reactors::call`]);
//! 2. run every active poller once;
//! 3. run the timed pollers whose period has elapsed;
//! 4. account the iteration as busy (some message or poller did work) or idle.
//!
//! Contract (the same for every function here):
//! - Objects on the data path are owned by one reactor; other threads reach
//!   them by message. Pollers are `FnMut` closures owned by their reactor and
//!   need not be `Send`.
//! - A message always runs later on the target reactor, never inline in the
//!   call that sends it, even when sender and target are the same reactor.
//! - A full ring is back-pressure: the send fails with [`SendError::Full`]
//!   and the message is dropped by the caller's choice, never queued unbounded.
//! - Messages from one sender thread to one reactor run in the order sent.
//!
//! Idle behaviour: by default a reactor that has found no work for
//! [`IdleMode::Adaptive`]'s `idle_before_sleep_us` and has no I/O in flight
//! sleeps in one `epoll_wait` (module `sleep`): a message, a watched socket
//! becoming ready or the next timer wakes it at once; while a poller that watches
//! nothing is registered, the sleep lasts at most `sleep_us_max`.
//! `IdleMode::Poll` spins like SPDK, for the lowest latency.
//!
//! Shutdown: [`Reactors::shutdown`] (or SIGINT/SIGTERM after
//! [`install_signal_handlers`]) sets a flag pollers see through
//! [`shutdown_requested`]; they stop starting new work, the reactor keeps
//! polling until its in-flight I/O count reaches zero (or
//! [`SHUTDOWN_DRAIN_MS_MAX`] passes, which is logged), then drops its pollers
//! and exits.

use crate::clock::now_ns;
use crate::ring::Ring;
use crossbeam_utils::CachePadded;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;

mod sleep;
pub use crate::wait::Interest;
pub use sleep::{cannot_watch, register_fd_poller, wake_by, watch_fd, FdWatch, WatchError, WatchSet};

/// Messages a reactor's ring holds before senders see back-pressure.
pub const MSG_RING_CAPACITY: usize = 4096;
/// Messages a reactor runs per loop iteration before it polls again.
pub const MSG_BATCH_MAX: usize = 64;
/// How long a stopping reactor waits for in-flight I/O before giving up.
pub const SHUTDOWN_DRAIN_MS_MAX: u64 = 5_000;

/// What a poller found on this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Polled and found nothing to do.
    Idle,
    /// Did work (completed I/O, moved bytes, ran a state machine forward).
    Busy,
}

/// How a reactor spends time when it has nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleMode {
    /// Spin: lowest latency, one full core per reactor (SPDK's behaviour).
    Poll,
    /// Spin while work is recent; after `idle_before_sleep_us` with nothing
    /// to do and no I/O in flight, sleep until a message, a watched descriptor
    /// or a timer wakes the reactor, or at most `sleep_us_max` while a poller
    /// that watches no descriptor is registered.
    Adaptive {
        idle_before_sleep_us: u64,
        sleep_us_max: u64,
    },
}

/// Spin this long after the last work before sleeping: long enough that a steady
/// stream of I/O (anything above ~4000 per second) never puts the reactor to sleep,
/// short enough that a heartbeat every 100 ms costs a fraction of a percent.
pub const IDLE_BEFORE_SLEEP_US: u64 = 250;

impl Default for IdleMode {
    fn default() -> Self {
        IdleMode::Adaptive {
            idle_before_sleep_us: IDLE_BEFORE_SLEEP_US,
            sleep_us_max: 1_000,
        }
    }
}

#[derive(Debug, Error)]
pub enum ReactorError {
    #[error("core {core} is not in this reactor set (cores {cores:?})")]
    NoSuchCore { core: u32, cores: Vec<u32> },
    #[error("cannot pin a reactor to core {core}: this machine has cores {available:?}")]
    PinFailed { core: u32, available: Vec<usize> },
    #[error("the reactor set needs at least one core")]
    NoCores,
    #[error("cannot spawn reactor thread for core {core}: {source}")]
    Spawn { core: u32, source: std::io::Error },
    #[error("no reactor set is running in this process")]
    NotRunning,
    #[error("a blocking call to core {core} was made from that reactor itself (it would deadlock)")]
    WouldDeadlock { core: u32 },
    #[error("the reactor on core {core} stopped before running the call")]
    Stopped { core: u32 },
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("reactor message rings: {0}")]
    Env(#[from] crate::env::EnvError),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SendError {
    #[error("message ring of core {core} is full ({MSG_RING_CAPACITY} messages): retry later")]
    Full { core: u32 },
    #[error("core {core} has no reactor")]
    NoSuchCore { core: u32 },
    #[error("no reactor set is running in this process")]
    NotRunning,
}

enum Msg {
    Boxed(Box<dyn FnOnce() + Send>),
    Call { f: fn(usize), arg: usize },
}

impl Msg {
    fn run(self) {
        match self {
            Msg::Boxed(f) => f(),
            Msg::Call { f, arg } => f(arg),
        }
    }
}

/// Counters a reactor updates once per loop iteration (relaxed stores to a
/// cache line only it writes), read by `framework_get_reactors`.
#[derive(Default)]
struct StatsCells {
    busy_ns: AtomicU64,
    idle_ns: AtomicU64,
    loops: AtomicU64,
    msgs: AtomicU64,
    sleeps: AtomicU64,
}

/// A snapshot of one reactor's accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactorStats {
    pub core: u32,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub loops: u64,
    pub msgs: u64,
    pub sleeps: u64,
    pub pollers: Vec<PollerInfo>,
}

/// A poller as `framework_get_reactors` / `thread_get_stats` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerInfo {
    pub id: u64,
    pub name: String,
    pub period_us: Option<u64>,
}

struct ReactorShared {
    core: u32,
    ring: Ring<Msg>,
    stats: CachePadded<StatsCells>,
    sleeping: AtomicBool,
    /// Written by senders while `sleeping` (and by shutdown) to end the sleep.
    wake: crate::wait::EventFd,
    /// Set by [`wake`]: work arrived through a ring of a caller's own, so the reactor must
    /// run its pollers before it sleeps.
    kick: AtomicBool,
    pollers: Mutex<Vec<PollerInfo>>,
}

struct SetShared {
    reactors: Vec<ReactorShared>,
    stop: AtomicBool,
    idle: IdleMode,
}

impl SetShared {
    fn index_of(&self, core: u32) -> Option<usize> {
        self.reactors.iter().position(|r| r.core == core)
    }

    fn push(&self, core: u32, msg: Msg) -> Result<(), SendError> {
        let i = self.index_of(core).ok_or(SendError::NoSuchCore { core })?;
        let r = &self.reactors[i];
        if r.ring.push(msg).is_err() {
            return Err(SendError::Full { core });
        }
        // Pairs with the reactor's fence between `sleeping = true` and its
        // last look at the ring: either it sees our message, or we see it
        // sleeping and wake it.
        fence(Ordering::SeqCst);
        if r.sleeping.load(Ordering::Relaxed) {
            r.wake.notify();
        }
        Ok(())
    }
}

impl SetShared {
    fn kick(&self, core: u32) {
        let Some(i) = self.index_of(core) else { return };
        let r = &self.reactors[i];
        if !r.kick.load(Ordering::Relaxed) {
            r.kick.store(true, Ordering::Relaxed);
        }
        // Pairs with the reactor's fence between `sleeping = true` and its look at `kick`.
        fence(Ordering::SeqCst);
        if r.sleeping.load(Ordering::Relaxed) {
            r.wake.notify();
        }
    }
}

/// Tells `core`'s reactor that work for one of its pollers arrived through a queue of
/// the caller's own (not a message): a sleeping reactor wakes, an awake one runs its
/// pollers once more before it sleeps. Costs a fence and a load while the reactor is
/// awake, one `write(2)` to its eventfd when it sleeps. Any thread may call it.
pub fn wake(core: u32) {
    let local = LOCAL.with(|l| l.borrow().as_ref().map(|l| l.set.kick(core)).is_some());
    if !local {
        if let Ok(s) = current_set() {
            s.kick(core);
        }
    }
}

/// Options for [`Reactors::start`].
#[derive(Debug, Clone)]
pub struct ReactorOpts {
    /// Cores to run on, one reactor each (see [`crate::cpumask::parse`]).
    pub cores: Vec<u32>,
    /// Pin each reactor to its core. Off only for tests on machines with
    /// fewer cores than reactors.
    pub pin: bool,
    pub idle: IdleMode,
}

impl ReactorOpts {
    pub fn new(cores: Vec<u32>) -> ReactorOpts {
        ReactorOpts {
            cores,
            pin: true,
            idle: IdleMode::default(),
        }
    }
}

/// A running set of reactors. Dropping it shuts them down and joins them.
pub struct Reactors {
    shared: Arc<SetShared>,
    joins: Vec<JoinHandle<()>>,
}

static CURRENT: Mutex<Option<Arc<SetShared>>> = Mutex::new(None);

struct Local {
    set: Arc<SetShared>,
    index: usize,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
    static NEW_POLLERS: RefCell<Vec<Poller>> = const { RefCell::new(Vec::new()) };
    static REMOVED_POLLERS: RefCell<Vec<PollerId>> = const { RefCell::new(Vec::new()) };
    static IO_OUTSTANDING: Cell<usize> = const { Cell::new(0) };
    static CURRENT_CORE: Cell<Option<u32>> = const { Cell::new(None) };
}

static NEXT_POLLER_ID: AtomicU64 = AtomicU64::new(1);

/// Identifies a registered poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PollerId(u64);

struct Poller {
    id: PollerId,
    period_ns: Option<u64>,
    /// Registered with [`register_fd_poller`]: tells the reactor what it waits for.
    fd_driven: bool,
    next_due_ns: u64,
    f: Box<dyn FnMut() -> PollStatus>,
}

impl Reactors {
    /// Starts one reactor per core and returns once all are running (or the
    /// first one failed to pin). The set becomes the process's current one,
    /// which the free functions [`send_msg`] etc. use from non-reactor threads.
    pub fn start(opts: ReactorOpts) -> Result<Reactors, ReactorError> {
        Reactors::start_in(crate::env::current()?, opts)
    }

    /// [`Reactors::start`] with message rings of the given kind whatever the
    /// process's env (benchmarks compare the two side by side).
    pub fn start_in(kind: crate::env::EnvKind, opts: ReactorOpts) -> Result<Reactors, ReactorError> {
        if opts.cores.is_empty() {
            return Err(ReactorError::NoCores);
        }
        let available: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        if opts.pin {
            if let Some(&core) = opts.cores.iter().find(|c| !available.contains(&(**c as usize))) {
                return Err(ReactorError::PinFailed { core, available });
            }
        }
        let mut reactors = Vec::with_capacity(opts.cores.len());
        for &core in &opts.cores {
            reactors.push(ReactorShared {
                core,
                ring: Ring::new_in(kind, MSG_RING_CAPACITY)?,
                stats: CachePadded::new(StatsCells::default()),
                sleeping: AtomicBool::new(false),
                kick: AtomicBool::new(false),
                wake: crate::wait::EventFd::new().map_err(|source| ReactorError::Spawn { core, source })?,
                pollers: Mutex::new(Vec::new()),
            });
        }
        let shared = Arc::new(SetShared {
            reactors,
            stop: AtomicBool::new(false),
            idle: opts.idle,
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), ReactorError>>();
        let mut joins = Vec::new();
        for (index, &core) in opts.cores.iter().enumerate() {
            let set = shared.clone();
            let ready = ready_tx.clone();
            let pin = opts.pin;
            let j = std::thread::Builder::new()
                .name(format!("reactor_{core}"))
                .spawn(move || {
                    if pin && !core_affinity::set_for_current(core_affinity::CoreId { id: core as usize }) {
                        let _ = ready.send(Err(ReactorError::PinFailed {
                            core,
                            available: vec![],
                        }));
                        return;
                    }
                    if let Err(e) = sleep::reactor_start(&set.reactors[index].wake) {
                        log::warn!("reactor {core}: no epoll ({e}); idle naps instead of sleeping");
                    }
                    let _env = crate::env::reactor_thread();
                    crate::buf::thread_cache_enable();
                    let _ = ready.send(Ok(()));
                    run_reactor(set, index);
                })
                .map_err(|source| ReactorError::Spawn { core, source })?;
            joins.push(j);
        }
        drop(ready_tx);
        let mut result = Ok(());
        for _ in 0..opts.cores.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => break,
            }
        }
        let reactors = Reactors { shared, joins };
        if let Err(e) = result {
            reactors.shutdown();
            return Err(e);
        }
        log::info!(
            "started {} reactor(s) on cores {:?}{}",
            reactors.shared.reactors.len(),
            opts.cores,
            if opts.pin { "" } else { " (not pinned)" }
        );
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(reactors.shared.clone());
        Ok(reactors)
    }

    /// The cores of this set, in mask order.
    pub fn cores(&self) -> Vec<u32> {
        self.shared.reactors.iter().map(|r| r.core).collect()
    }

    /// Sends a closure to run on `core`'s reactor (boxed: allocates, so for
    /// setup and management; the data path uses [`Reactors::call`]).
    pub fn send_msg(&self, core: u32, f: impl FnOnce() + Send + 'static) -> Result<(), SendError> {
        self.shared.push(core, Msg::Boxed(Box::new(f)))
    }

    /// Sends `f(arg)` to run on `core`'s reactor without allocating.
    pub fn call(&self, core: u32, f: fn(usize), arg: usize) -> Result<(), SendError> {
        self.shared.push(core, Msg::Call { f, arg })
    }

    /// Runs `f` on `core`'s reactor and waits for its result. Management
    /// path only: blocks the calling thread, so never call it from a reactor.
    pub fn run_on<R: Send + 'static>(
        &self,
        core: u32,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ReactorError> {
        run_on_set(&self.shared, core, f)
    }

    /// Asks every reactor to stop (non-blocking; see [`Reactors::wait`]).
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for r in &self.shared.reactors {
            r.wake.notify();
        }
    }

    /// True once shutdown was asked for (by a call or a signal).
    pub fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Waits for every reactor to drain and exit.
    pub fn wait(mut self) {
        self.join_all();
    }

    fn join_all(&mut self) {
        for j in self.joins.drain(..) {
            let _ = j.join();
        }
        let mut cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.shared)) {
            *cur = None;
        }
    }

    /// Busy/idle accounting and pollers of every reactor.
    pub fn stats(&self) -> Vec<ReactorStats> {
        stats_of(&self.shared)
    }

    /// The flag signal handlers set to stop this set (see
    /// [`install_signal_handlers`]).
    pub fn stop_flag(&self) -> StopHandle {
        StopHandle(self.shared.clone())
    }
}

impl Drop for Reactors {
    fn drop(&mut self) {
        if !self.joins.is_empty() {
            self.shutdown();
            self.join_all();
        }
    }
}

/// A cloneable handle that can stop a reactor set from any thread.
#[derive(Clone)]
pub struct StopHandle(Arc<SetShared>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::SeqCst);
        for r in &self.0.reactors {
            r.wake.notify();
        }
    }
    pub fn is_stopping(&self) -> bool {
        self.0.stop.load(Ordering::SeqCst)
    }
}

/// Stops `reactors` on the first SIGINT or SIGTERM; a second one exits the
/// process at once (for a drain that hangs on a dead device).
pub fn install_signal_handlers(reactors: &Reactors) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    let stop = reactors.stop_flag();
    std::thread::Builder::new().name("signal_watch".into()).spawn(move || {
        while !flag.load(Ordering::SeqCst) && !stop.is_stopping() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if flag.load(Ordering::SeqCst) {
            log::info!("signal received: shutting down reactors");
        }
        stop.stop();
    })?;
    Ok(())
}

fn current_set() -> Result<Arc<SetShared>, SendError> {
    if let Some(s) = LOCAL.with(|l| l.borrow().as_ref().map(|l| l.set.clone())) {
        return Ok(s);
    }
    CURRENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or(SendError::NotRunning)
}

/// Sends a closure to `core`'s reactor in the set this thread belongs to (or
/// the process's current set). Boxed: allocates; management and setup only.
pub fn send_msg(core: u32, f: impl FnOnce() + Send + 'static) -> Result<(), SendError> {
    current_set()?.push(core, Msg::Boxed(Box::new(f)))
}

/// Sends `f(arg)` to `core`'s reactor without allocating (data path).
pub fn call(core: u32, f: fn(usize), arg: usize) -> Result<(), SendError> {
    current_set()?.push(core, Msg::Call { f, arg })
}

/// Runs `f` on `core`'s reactor of the current set and waits for the result.
/// Blocks: management threads only.
pub fn run_on<R: Send + 'static>(core: u32, f: impl FnOnce() -> R + Send + 'static) -> Result<R, ReactorError> {
    let set = current_set().map_err(|_| ReactorError::NotRunning)?;
    run_on_set(&set, core, f)
}

fn run_on_set<R: Send + 'static>(
    set: &Arc<SetShared>,
    core: u32,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, ReactorError> {
    if current_core() == Some(core) {
        return Err(ReactorError::WouldDeadlock { core });
    }
    if set.index_of(core).is_none() {
        return Err(ReactorError::NoSuchCore {
            core,
            cores: set.reactors.iter().map(|r| r.core).collect(),
        });
    }
    let (tx, rx) = mpsc::sync_channel(1);
    set.push(
        core,
        Msg::Boxed(Box::new(move || {
            let _ = tx.send(f());
        })),
    )?;
    rx.recv().map_err(|_| ReactorError::Stopped { core })
}

/// Cores of the current set (the calling reactor's, or the process's).
pub fn cores() -> Vec<u32> {
    current_set()
        .map(|s| s.reactors.iter().map(|r| r.core).collect())
        .unwrap_or_default()
}

/// Stats of the current set.
pub fn stats() -> Vec<ReactorStats> {
    current_set().map(|s| stats_of(&s)).unwrap_or_default()
}

fn stats_of(set: &SetShared) -> Vec<ReactorStats> {
    set.reactors
        .iter()
        .map(|r| ReactorStats {
            core: r.core,
            busy_ns: r.stats.busy_ns.load(Ordering::Relaxed),
            idle_ns: r.stats.idle_ns.load(Ordering::Relaxed),
            loops: r.stats.loops.load(Ordering::Relaxed),
            msgs: r.stats.msgs.load(Ordering::Relaxed),
            sleeps: r.stats.sleeps.load(Ordering::Relaxed),
            pollers: r.pollers.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
        .collect()
}

/// The core of the reactor running this thread, `None` elsewhere.
#[inline]
pub fn current_core() -> Option<u32> {
    CURRENT_CORE.with(|c| c.get())
}

/// True once the current set (or the process's) was asked to stop. Pollers
/// check it to stop starting new work.
pub fn shutdown_requested() -> bool {
    current_set().map(|s| s.stop.load(Ordering::Relaxed)).unwrap_or(false)
}

/// Registers a poller on the calling reactor. `period: None` runs it on every
/// loop iteration; `Some(d)` runs it once `d` has elapsed since its last run.
/// It starts on the next iteration. Panics off a reactor thread: pollers
/// belong to a reactor, so registering one elsewhere is a bug.
pub fn register_poller(name: &str, period: Option<Duration>, f: impl FnMut() -> PollStatus + 'static) -> PollerId {
    register(name, period, false, f)
}

fn register(
    name: &str,
    period: Option<Duration>,
    fd_driven: bool,
    f: impl FnMut() -> PollStatus + 'static,
) -> PollerId {
    let id = PollerId(NEXT_POLLER_ID.fetch_add(1, Ordering::Relaxed));
    LOCAL.with(|l| {
        let l = l.borrow();
        let l = l.as_ref().expect("register_poller called off a reactor thread");
        l.set.reactors[l.index]
            .pollers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PollerInfo {
                id: id.0,
                name: name.to_string(),
                period_us: period.map(|d| d.as_micros() as u64),
            });
    });
    let period_ns = period.map(|d| d.as_nanos() as u64);
    NEW_POLLERS.with(|n| {
        n.borrow_mut().push(Poller {
            id,
            period_ns,
            fd_driven,
            next_due_ns: now_ns() + period_ns.unwrap_or(0),
            f: Box::new(f),
        })
    });
    id
}

/// Unregisters a poller of the calling reactor. It is dropped at the end of
/// the current loop iteration (it may run at most once more before that).
pub fn unregister_poller(id: PollerId) {
    REMOVED_POLLERS.with(|r| r.borrow_mut().push(id));
}

/// Counts an I/O as started on this reactor (the bdev layer calls this), so a
/// stopping reactor waits for it, and an idle one does not nap on it.
#[inline]
pub(crate) fn io_started() {
    IO_OUTSTANDING.with(|c| c.set(c.get() + 1));
}

#[inline]
pub(crate) fn io_finished() {
    IO_OUTSTANDING.with(|c| c.set(c.get().saturating_sub(1)));
}

/// I/O in flight on the calling thread's channels.
pub fn io_outstanding() -> usize {
    IO_OUTSTANDING.with(|c| c.get())
}

// One piece on purpose: the reactor loop is the runtime contract `docs/architecture.md`
// describes (messages, pollers, timed pollers, busy/idle accounting, shutdown drain, idle
// nap, in that order); it reads top to bottom as that list does.
fn run_reactor(set: Arc<SetShared>, index: usize) {
    let core = set.reactors[index].core;
    CURRENT_CORE.with(|c| c.set(Some(core)));
    LOCAL.with(|l| {
        *l.borrow_mut() = Some(Local {
            set: set.clone(),
            index,
        })
    });
    let mut lp = ReactorLoop::new(&set, index);
    loop {
        let mut busy = lp.run_messages();
        let pass = lp.run_pollers();
        busy |= pass.busy;
        lp.apply_registrations();
        let t1 = lp.account(busy);
        if set.stop.load(Ordering::Relaxed) {
            if lp.drained_for_stop(t1) {
                break;
            }
            continue;
        }
        lp.maybe_sleep(busy, t1, &pass);
    }
    // Pollers own channels and sockets: drop them on this thread.
    drop(lp);
    sleep::reactor_stop();
    NEW_POLLERS.with(|np| np.borrow_mut().clear());
    set.reactors[index]
        .pollers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    LOCAL.with(|l| *l.borrow_mut() = None);
    CURRENT_CORE.with(|c| c.set(None));
    log::debug!("reactor {core} stopped");
}

/// What one pass over the pollers found: whether any did work, and when the reactor must
/// be awake again (its non-fd-driven timed pollers' next runs, or a nap bound when some
/// poller gives no other way to know: `blind`).
struct PollerPass {
    busy: bool,
    next_timer_ns: u64,
    blind: bool,
}

/// The state of one reactor's loop, owned by its thread; each step of an iteration is a
/// method (messages, pollers, registrations, accounting, stop, sleep).
struct ReactorLoop<'a> {
    set: &'a SetShared,
    me: &'a ReactorShared,
    pollers: Vec<Poller>,
    last_busy_ns: u64,
    stop_since_ns: Option<u64>,
    /// Start of the current iteration's accounting interval.
    t0: u64,
    /// Set after a sleep or a kick ([`wake`]): fd-driven timed pollers run on the next
    /// pass whatever their period (their period only paces them while the reactor is awake).
    woke: bool,
}

impl<'a> ReactorLoop<'a> {
    fn new(set: &'a SetShared, index: usize) -> ReactorLoop<'a> {
        let now = now_ns();
        ReactorLoop {
            set,
            me: &set.reactors[index],
            pollers: Vec::with_capacity(64),
            last_busy_ns: now,
            stop_since_ns: None,
            t0: now,
            woke: false,
        }
    }

    /// Runs up to [`MSG_BATCH_MAX`] messages; true when there were any.
    fn run_messages(&mut self) -> bool {
        let mut n = 0;
        while n < MSG_BATCH_MAX {
            match self.me.ring.pop() {
                Some(m) => {
                    m.run();
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            self.me.stats.msgs.fetch_add(n as u64, Ordering::Relaxed);
        }
        n > 0
    }

    /// Runs every poller that is due (all untimed ones; timed ones at their period, and
    /// fd-driven timed ones at once after a wake-up).
    fn run_pollers(&mut self) -> PollerPass {
        let run_fd_pollers = std::mem::take(&mut self.woke);
        let mut now = self.t0;
        let mut pass = PollerPass {
            busy: false,
            next_timer_ns: u64::MAX,
            blind: false,
        };
        for p in self.pollers.iter_mut() {
            match p.period_ns {
                None => {
                    pass.busy |= (p.f)() == PollStatus::Busy;
                    pass.blind |= !p.fd_driven;
                }
                Some(period) => {
                    if now >= p.next_due_ns || (run_fd_pollers && p.fd_driven) {
                        pass.busy |= (p.f)() == PollStatus::Busy;
                        now = now_ns();
                        p.next_due_ns = now + period;
                    }
                    if !p.fd_driven {
                        pass.next_timer_ns = pass.next_timer_ns.min(p.next_due_ns);
                    }
                }
            }
        }
        let (wake_by, cannot_watch) = sleep::take_hints();
        pass.next_timer_ns = pass.next_timer_ns.min(wake_by);
        pass.blind |= cannot_watch;
        pass
    }

    /// Applies the registrations and removals made during this iteration.
    fn apply_registrations(&mut self) {
        NEW_POLLERS.with(|np| self.pollers.append(&mut np.borrow_mut()));
        REMOVED_POLLERS.with(|rp| {
            let mut rp = rp.borrow_mut();
            if !rp.is_empty() {
                self.pollers.retain(|p| !rp.contains(&p.id));
                self.me
                    .pollers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|p| !rp.contains(&PollerId(p.id)));
                rp.clear();
            }
        });
    }

    /// Counts the iteration as busy or idle time; returns its end.
    fn account(&mut self, busy: bool) -> u64 {
        let t1 = now_ns();
        let dt = t1.saturating_sub(self.t0);
        if busy {
            self.me.stats.busy_ns.fetch_add(dt, Ordering::Relaxed);
            self.last_busy_ns = t1;
        } else {
            self.me.stats.idle_ns.fetch_add(dt, Ordering::Relaxed);
        }
        self.me.stats.loops.fetch_add(1, Ordering::Relaxed);
        self.t0 = t1;
        t1
    }

    /// Asked to stop: true once no I/O is in flight and no message waits, or after
    /// [`SHUTDOWN_DRAIN_MS_MAX`] (with a warning).
    fn drained_for_stop(&mut self, t1: u64) -> bool {
        let since = *self.stop_since_ns.get_or_insert(t1);
        let drained = io_outstanding() == 0 && self.me.ring.is_empty();
        let expired = t1.saturating_sub(since) > SHUTDOWN_DRAIN_MS_MAX * 1_000_000;
        if !drained && expired {
            log::warn!(
                "reactor {}: stopping with {} I/O still in flight after {SHUTDOWN_DRAIN_MS_MAX} ms",
                self.me.core,
                io_outstanding()
            );
        }
        drained || expired
    }

    /// In adaptive idle mode, after [`IdleMode::Adaptive`]'s quiet stretch with nothing in
    /// flight: blocks until a message, a kick, a watched fd or the next timer (bounded by
    /// the nap when some poller is blind).
    fn maybe_sleep(&mut self, busy: bool, t1: u64, pass: &PollerPass) {
        let IdleMode::Adaptive {
            idle_before_sleep_us,
            sleep_us_max,
        } = self.set.idle
        else {
            return;
        };
        if busy || io_outstanding() != 0 || t1.saturating_sub(self.last_busy_ns) < idle_before_sleep_us * 1_000 {
            return;
        }
        let mut nap_ns = if pass.blind { sleep_us_max * 1_000 } else { u64::MAX };
        if pass.next_timer_ns != u64::MAX {
            nap_ns = nap_ns.min(pass.next_timer_ns.saturating_sub(t1));
        }
        if nap_ns == 0 {
            return;
        }
        let me = self.me;
        me.sleeping.store(true, Ordering::Relaxed);
        // Pairs with the fence in `SetShared::push`.
        fence(Ordering::SeqCst);
        if me.ring.is_empty() && !me.kick.swap(false, Ordering::Relaxed) && !self.set.stop.load(Ordering::Relaxed) {
            me.stats.sleeps.fetch_add(1, Ordering::Relaxed);
            sleep::sleep(nap_ns);
        }
        self.woke = true;
        me.sleeping.store(false, Ordering::Relaxed);
        me.wake.drain();
        let t2 = now_ns();
        me.stats
            .idle_ns
            .fetch_add(t2.saturating_sub(self.t0), Ordering::Relaxed);
        self.t0 = t2;
    }
}

#[cfg(test)]
mod tests;
