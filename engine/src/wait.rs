//! Sleeping until something happens: one `epoll` set per sleeper and an `eventfd`
//! that other threads write to wake it. The only way an idle reactor or the management
//! thread blocks (`docs/architecture.md`, "Idle reactors"). Every `unsafe` block here is
//! a plain system call on file descriptors this module owns or the caller lends.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// What readiness of a descriptor wakes the sleeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    pub readable: bool,
    pub writable: bool,
}

impl Interest {
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };

    fn bits(self) -> u32 {
        let mut e = (libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP) as u32;
        if self.readable {
            e |= libc::EPOLLIN as u32;
        }
        if self.writable {
            e |= libc::EPOLLOUT as u32;
        }
        e
    }
}

/// A counter other threads bump to wake whoever waits on it (`eventfd(2)`,
/// non-blocking, close-on-exec).
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns, so `OwnedFd` may take it.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by no one else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable (wakes a sleeper). Never blocks: a counter at its
    /// maximum is already readable, so EAGAIN is success.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to a descriptor this value owns.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter (after a wake-up). Never blocks.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local from a descriptor this value owns.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// One readiness report of [`Epoll::ready`] (the kernel's `epoll_event`): the watch's
/// token is its `u64` field.
pub type ReadyEvent = libc::epoll_event;

/// An empty [`ReadyEvent`], to fill the arrays [`Epoll::ready`] writes into.
pub const NO_EVENT: ReadyEvent = libc::epoll_event { events: 0, u64: 0 };

/// An `epoll` set, level-triggered: a descriptor stays ready until its owner reads
/// (or writes) it, so a wake-up is never lost between two waits.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

/// Events one `wait` returns at most; more stay queued for the next call.
const EVENTS_MAX: usize = 16;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; a non-negative result is a new descriptor owned by no one.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by no one else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.bits(),
            u64: token,
        };
        // SAFETY: `ev` is a live local the kernel only reads; `fd` is the caller's
        // descriptor, and an invalid one makes the call fail, never undefined behaviour.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` (the caller keeps it open while it is watched, and removes it
    /// before closing it; closing it removes it too once no duplicate remains).
    pub fn add(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, fd as u64, interest)
    }

    /// [`Epoll::add`], reporting `token` instead of the descriptor from [`Epoll::ready`].
    pub fn add_token(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    pub fn modify(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, fd as u64, interest)
    }

    /// [`Epoll::modify`] of a watch added with [`Epoll::add_token`]: `token` from now on.
    pub fn modify_token(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    /// Stops watching `fd`; an fd that was never added or is already closed is fine.
    pub fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `ctl`; errors (ENOENT, EBADF) mean there is nothing to remove.
        let _ = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// Blocks until a watched descriptor is ready or `timeout` passes (`None`: no
    /// limit). Returns how many descriptors were ready; 0 on timeout or a signal.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<usize> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
        self.wait_into(&mut events, timeout)
    }

    /// Without blocking, the tokens (or descriptors) of up to `events.len()` ready
    /// watches into `events[..n].u64`; returns n.
    pub fn ready(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        self.wait_into(events, Some(Duration::ZERO))
    }

    fn wait_into(&self, events: &mut [libc::epoll_event], timeout: Option<Duration>) -> io::Result<usize> {
        let cap = events.len().min(i32::MAX as usize) as libc::c_int;
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `events` is a live slice of `cap` entries the kernel writes at most that
        // many of; `ts_ptr` is null or points to a live local; no signal mask.
        let mut n =
            unsafe { libc::epoll_pwait2(self.0.as_raw_fd(), events.as_mut_ptr(), cap, ts_ptr, std::ptr::null()) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            // Kernels before 5.11: millisecond timeouts, rounded up so a timer is never early.
            let ms = timeout.map_or(-1, |t| {
                t.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
            });
            // SAFETY: as above.
            n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), cap, ms) };
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn times_out_with_nothing_ready() {
        let ep = Epoll::new().unwrap();
        assert_eq!(ep.wait(Some(Duration::from_millis(1))).unwrap(), 0);
    }

    #[test]
    fn an_eventfd_wakes_until_drained() {
        let ep = Epoll::new().unwrap();
        let ev = EventFd::new().unwrap();
        ep.add(ev.as_raw_fd(), Interest::READABLE).unwrap();
        ev.notify();
        ev.notify();
        assert_eq!(ep.wait(None).unwrap(), 1);
        // Level-triggered: still ready until drained.
        assert_eq!(ep.wait(Some(Duration::ZERO)).unwrap(), 1);
        ev.drain();
        assert_eq!(ep.wait(Some(Duration::ZERO)).unwrap(), 0);
    }

    #[test]
    fn a_socket_wakes_when_readable_and_not_after_removal() {
        let ep = Epoll::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        ep.add(b.as_raw_fd(), Interest::READABLE).unwrap();
        assert_eq!(ep.wait(Some(Duration::ZERO)).unwrap(), 0);
        a.write_all(b"x").unwrap();
        assert_eq!(ep.wait(None).unwrap(), 1);
        ep.remove(b.as_raw_fd());
        assert_eq!(ep.wait(Some(Duration::ZERO)).unwrap(), 0);
        // Removing twice, or a descriptor never added, is harmless.
        ep.remove(b.as_raw_fd());
        ep.remove(a.as_raw_fd());
    }

    #[test]
    fn writable_interest_reports_a_socket_with_room() {
        let ep = Epoll::new().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        ep.add(a.as_raw_fd(), Interest::READABLE).unwrap();
        assert_eq!(ep.wait(Some(Duration::ZERO)).unwrap(), 0);
        ep.modify(a.as_raw_fd(), Interest::BOTH).unwrap();
        assert_eq!(ep.wait(Some(Duration::ZERO)).unwrap(), 1);
    }
}
