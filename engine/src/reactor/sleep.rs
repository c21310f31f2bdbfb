//! How an idle reactor sleeps: in one `epoll_wait` over its wake-up `eventfd` (written
//! by whoever sends it a message while it sleeps) and every descriptor its pollers
//! watch, for as long as nothing it runs can need it sooner.
//!
//! A poller tells the reactor what it waits for in one of three ways:
//! - it is **timed** (`register_poller(.., Some(period), ..)`): its timer bounds the sleep;
//! - it is **fd-driven** ([`register_fd_poller`]): everything it waits for is a descriptor
//!   it watches with [`watch_fd`] (or a message); it promises that when it returns
//!   [`super::PollStatus::Idle`] nothing will happen for it until one of those is ready, or
//!   until a time it gave with [`wake_by`] in that call (a keep-alive, a retry back-off);
//!   its own period, if any, only paces it while the reactor is awake; a poller whose
//!   connections come and go keeps its descriptors in a [`WatchSet`]; one that waits for
//!   something no descriptor signals says so with [`cannot_watch`] for that pass;
//! - otherwise the reactor cannot know, and naps at most `sleep_us_max`.
//!
//! Under load a reactor never sleeps: only after `idle_before_sleep_us` of nothing to do
//! and with no I/O in flight (`docs/architecture.md`, "Idle reactors").

use crate::wait::{Epoll, EventFd, Interest};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

thread_local! {
    static EPOLL: RefCell<Option<Rc<Epoll>>> = const { RefCell::new(None) };
    /// The earliest time (ns, `clock::now_ns`) a poller asked to be run again by during
    /// this loop iteration; `u64::MAX` for none.
    static WAKE_BY: Cell<u64> = const { Cell::new(u64::MAX) };
    /// A poller said during this iteration that it waits for something it cannot watch.
    static BLIND: Cell<bool> = const { Cell::new(false) };
}

/// Sets up the calling reactor's epoll set, watching its wake-up eventfd.
pub(super) fn reactor_start(wake: &EventFd) -> io::Result<()> {
    let ep = Epoll::new()?;
    ep.add(wake.as_raw_fd(), Interest::READABLE)?;
    EPOLL.with(|e| *e.borrow_mut() = Some(Rc::new(ep)));
    Ok(())
}

pub(super) fn reactor_stop() {
    EPOLL.with(|e| *e.borrow_mut() = None);
}

/// Takes this iteration's [`wake_by`] and [`cannot_watch`] and resets them for the next.
pub(super) fn take_hints() -> (u64, bool) {
    (WAKE_BY.with(|w| w.replace(u64::MAX)), BLIND.with(|b| b.replace(false)))
}

/// Blocks in the reactor's epoll set for at most `timeout_ns` (`u64::MAX`: until a
/// descriptor or a message wakes it).
pub(super) fn sleep(timeout_ns: u64) {
    let ep = EPOLL.with(|e| e.borrow().clone());
    match ep {
        Some(ep) => {
            let t = (timeout_ns != u64::MAX).then(|| std::time::Duration::from_nanos(timeout_ns));
            if let Err(e) = ep.wait(t) {
                log::warn!("reactor: epoll_wait failed ({e}); napping instead");
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
        None => std::thread::sleep(std::time::Duration::from_nanos(timeout_ns.min(1_000_000))),
    }
}

/// Asks the calling reactor to run its pollers again by `deadline_ns` (`clock::now_ns`
/// time) even if no watched descriptor becomes ready: for an fd-driven poller's timers.
/// Holds for the current loop iteration only; call it again each time the poller runs.
/// A deadline in the past keeps the reactor from sleeping at all this iteration.
pub fn wake_by(deadline_ns: u64) {
    WAKE_BY.with(|w| w.set(w.get().min(deadline_ns)));
}

/// Tells the calling reactor that an fd-driven poller waits, this iteration, for
/// something no descriptor signals (an RDMA completion queue, a retry after a full
/// queue): the reactor then naps at most `sleep_us_max`, as for a poller that watches
/// nothing. Holds for the current loop iteration only.
pub fn cannot_watch() {
    BLIND.with(|b| b.set(true));
}

/// A descriptor the calling reactor watches while it sleeps: readable (and optionally
/// writable) wakes it. Not `Send`: it belongs to the reactor that made it. Dropping it
/// stops the watch; drop it before closing the descriptor's last duplicate, or let the
/// close remove it.
pub struct FdWatch {
    fd: RawFd,
    interest: Interest,
    epoll: Rc<Epoll>,
}

impl std::fmt::Debug for FdWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdWatch")
            .field("fd", &self.fd)
            .field("interest", &self.interest)
            .finish()
    }
}

/// Why a descriptor could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watch_fd called off a reactor thread")]
    NotOnReactor,
    #[error("cannot watch fd {fd}: {source}")]
    Epoll { fd: RawFd, source: io::Error },
}

/// Watches `fd` from the calling reactor (see [`FdWatch`]).
pub fn watch_fd(fd: RawFd, interest: Interest) -> Result<FdWatch, WatchError> {
    let epoll = EPOLL.with(|e| e.borrow().clone()).ok_or(WatchError::NotOnReactor)?;
    epoll
        .add(fd, interest)
        .map_err(|source| WatchError::Epoll { fd, source })?;
    Ok(FdWatch { fd, interest, epoll })
}

impl FdWatch {
    /// Changes what wakes the reactor (e.g. writable while output is queued).
    /// A no-op when unchanged, so pollers may call it on every pass.
    pub fn set_interest(&mut self, interest: Interest) {
        if interest == self.interest {
            return;
        }
        match self.epoll.modify(self.fd, interest) {
            Ok(()) => self.interest = interest,
            // The reactor cannot see this descriptor any more: keep it awake instead.
            Err(e) => {
                log::warn!("reactor: cannot change the watch of fd {}: {e}", self.fd);
                cannot_watch();
            }
        }
    }

    pub fn interest(&self) -> Interest {
        self.interest
    }
}

impl Drop for FdWatch {
    fn drop(&mut self) {
        self.epoll.remove(self.fd);
    }
}

/// Registers an fd-driven poller on the calling reactor (see the module comment):
/// `f` watches its descriptors with [`watch_fd`] and gives [`wake_by`] for its timers,
/// so an idle reactor may sleep until one of them is due. `period` paces it while the
/// reactor is awake (e.g. an accept poller every 100 µs) and never wakes a sleeping one.
pub fn register_fd_poller(
    name: &str,
    period: Option<std::time::Duration>,
    f: impl FnMut() -> super::PollStatus + 'static,
) -> super::PollerId {
    super::register(name, period, true, f)
}

/// The descriptors one fd-driven poller waits on, kept in step with a list it gives on
/// every pass ([`WatchSet::sync`]): for pollers whose connections come and go. A pass
/// whose list is unchanged makes no system call and allocates nothing once the set
/// has grown to its size. Dropping it stops every watch.
#[derive(Default)]
pub struct WatchSet {
    fds: Vec<(RawFd, Interest)>,
    epoll: Option<Rc<Epoll>>,
    warned: bool,
}

impl WatchSet {
    pub fn new() -> WatchSet {
        WatchSet::default()
    }

    /// Watches exactly `fds` from now on. Descriptors it could not watch make this
    /// iteration [`cannot_watch`] (logged once per set).
    pub fn sync(&mut self, fds: &[(RawFd, Interest)]) {
        if self.fds == fds {
            return;
        }
        if self.epoll.is_none() {
            self.epoll = EPOLL.with(|e| e.borrow().clone());
        }
        let Some(ep) = self.epoll.clone() else {
            cannot_watch();
            return;
        };
        for &(fd, _) in &self.fds {
            if !fds.iter().any(|&(f, _)| f == fd) {
                ep.remove(fd);
            }
        }
        let mut failed = None;
        for &(fd, interest) in fds {
            let r = match self.fds.iter().find(|&&(f, _)| f == fd) {
                Some(&(_, old)) if old == interest => Ok(()),
                Some(_) => ep.modify(fd, interest),
                // A descriptor number closed and reused since the last pass may still be in
                // the set under its old registration: then update it.
                None => ep.add(fd, interest).or_else(|e| {
                    if e.raw_os_error() == Some(libc::EEXIST) {
                        ep.modify(fd, interest)
                    } else {
                        Err(e)
                    }
                }),
            };
            if let Err(e) = r {
                failed = Some((fd, e));
            }
        }
        self.fds.clear();
        self.fds.extend_from_slice(fds);
        if let Some((fd, e)) = failed {
            // Forget the list so the next pass tries again.
            self.fds.clear();
            cannot_watch();
            if !std::mem::replace(&mut self.warned, true) {
                log::warn!("reactor: cannot watch fd {fd} ({e}); this poller's reactor naps instead of sleeping");
            }
        }
    }
}

impl Drop for WatchSet {
    fn drop(&mut self) {
        if let Some(ep) = &self.epoll {
            for &(fd, _) in &self.fds {
                ep.remove(fd);
            }
        }
    }
}
