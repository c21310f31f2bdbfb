//! The unsafe edge to SPDK's NVMe driver (feature `spdk`): env start-up, controller
//! connect/detach, namespaces, I/O queue pairs, command submission and completion
//! polling. Every call into `spdk_sys` is here, each with its SAFETY argument; the bdev
//! (`bdev.rs`) sees safe types only.

use super::SpdkError;
use spdk_sys as sys;
use std::ffi::{c_void, CStr, CString};
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::OnceLock;

static ENV: OnceLock<Result<(), SpdkError>> = OnceLock::new();

/// Makes SPDK's env usable in this process, once: baton's DPDK env (EAL) must be the
/// process's env (`--env dpdk` / `BATON_ENV=dpdk`), then `spdk_env_dpdk_post_init` sets
/// up SPDK's memory maps and PCI layer on that EAL. One EAL, one heap: buffers from
/// baton's pools are DPDK memory SPDK can translate.
pub(crate) fn env_init() -> Result<(), SpdkError> {
    ENV.get_or_init(|| {
        match engine::env::current() {
            Ok(engine::env::EnvKind::Dpdk) => {}
            Ok(other) => return Err(SpdkError::NeedsDpdkEnv(other.to_string())),
            Err(e) => return Err(SpdkError::NeedsDpdkEnv(e.to_string())),
        }
        // SAFETY: EAL is running (checked above: the engine started it and never stops
        // it); OnceLock makes this the only call in the process, and SPDK's env was not
        // initialised otherwise (this crate is its only user).
        let rc = unsafe { sys::spdk_env_dpdk_post_init(false) };
        if rc != 0 {
            return Err(SpdkError::Env(rc));
        }
        log::info!("SPDK env initialised on baton's DPDK EAL (spdk_env_dpdk_post_init)");
        Ok(())
    })
    .clone()
}

/// A parsed transport ID (`trtype:TCP adrfam:IPv4 traddr:... trsvcid:... subnqn:...`).
pub(crate) fn parse_trid(s: &str) -> Result<sys::spdk_nvme_transport_id, SpdkError> {
    let c = CString::new(s).map_err(|_| SpdkError::Trid(s.to_string(), "contains a NUL byte".into()))?;
    let mut trid = MaybeUninit::<sys::spdk_nvme_transport_id>::zeroed();
    // SAFETY: trid is writable memory of the struct's size, zeroed as the function
    // expects of a fresh ID; c is a NUL-terminated string alive for the call.
    let rc = unsafe { sys::spdk_nvme_transport_id_parse(trid.as_mut_ptr(), c.as_ptr()) };
    if rc != 0 {
        return Err(SpdkError::Trid(
            s.to_string(),
            format!("spdk_nvme_transport_id_parse: errno {}", -rc),
        ));
    }
    // SAFETY: zero-initialised, then filled by SPDK on success; all-zero is valid too.
    Ok(unsafe { trid.assume_init() })
}

/// An attached controller. Detached when the last owner (bdev, channels, admin poller)
/// drops it, after every queue pair of it was freed (they hold an `Arc` of it).
pub(crate) struct Ctrlr {
    ptr: NonNull<sys::spdk_nvme_ctrlr>,
}

// SAFETY: SPDK's controller handle may be used from any thread for the calls made here:
// namespace queries read data fixed at attach, queue pair allocation and admin
// completion processing take the controller's own lock inside SPDK.
unsafe impl Send for Ctrlr {}
// SAFETY: as above; no method mutates Rust-visible state.
unsafe impl Sync for Ctrlr {}

impl Ctrlr {
    /// Connects (synchronously) to the controller `trid` names. `keep_alive_ms` 0 turns
    /// keep-alive off.
    pub(crate) fn connect(trid_str: &str, io_queue_size: u32, keep_alive_ms: u32) -> Result<Ctrlr, SpdkError> {
        env_init()?;
        let trid = parse_trid(trid_str)?;
        // A PCIe controller DPDK may not probe would fail inside SPDK with nothing but a
        // log line; say what is missing instead.
        if let Some(bdf) = super::pcie_traddr(trid_str)? {
            if !engine::env::pci_allowed(&bdf) {
                return Err(SpdkError::PciNotAllowed(bdf));
            }
        }
        let mut opts = MaybeUninit::<sys::spdk_nvme_ctrlr_opts>::zeroed();
        let size = std::mem::size_of::<sys::spdk_nvme_ctrlr_opts>();
        // SAFETY: opts is writable memory of `size` bytes, which SPDK fills with defaults.
        unsafe { sys::spdk_nvme_ctrlr_get_default_ctrlr_opts(opts.as_mut_ptr(), size) };
        // SAFETY: initialised by the call above.
        let mut opts = unsafe { opts.assume_init() };
        opts.keep_alive_timeout_ms = keep_alive_ms;
        opts.io_queue_size = opts.io_queue_size.max(io_queue_size);
        // SAFETY: trid and opts are valid for the call; SPDK copies both.
        let p = unsafe { sys::spdk_nvme_connect(&trid, &opts, size) };
        let ptr = NonNull::new(p).ok_or_else(|| SpdkError::Connect(trid_str.to_string()))?;
        Ok(Ctrlr { ptr })
    }

    /// The active namespace IDs, in order.
    pub(crate) fn active_namespaces(&self) -> Vec<u32> {
        let mut out = Vec::new();
        // SAFETY: the controller is attached (self alive).
        let mut id = unsafe { sys::spdk_nvme_ctrlr_get_first_active_ns(self.ptr.as_ptr()) };
        while id != 0 {
            out.push(id);
            // SAFETY: as above; id is an active namespace ID SPDK returned.
            id = unsafe { sys::spdk_nvme_ctrlr_get_next_active_ns(self.ptr.as_ptr(), id) };
        }
        out
    }

    /// Namespace `nsid` with its geometry, if active.
    pub(crate) fn namespace(&self, nsid: u32) -> Option<Ns> {
        // SAFETY: the controller is attached; SPDK returns NULL for an unknown ID.
        let p = NonNull::new(unsafe { sys::spdk_nvme_ctrlr_get_ns(self.ptr.as_ptr(), nsid) })?;
        let ns = p.as_ptr();
        // SAFETY: ns is a namespace of this attached controller; these read its identify data.
        let (block_size, num_blocks, flags, max_xfer) = unsafe {
            (
                sys::spdk_nvme_ns_get_sector_size(ns),
                sys::spdk_nvme_ns_get_num_sectors(ns),
                sys::spdk_nvme_ns_get_flags(ns),
                sys::spdk_nvme_ns_get_max_io_xfer_size(ns),
            )
        };
        // SAFETY: as above; the UUID pointer (NULL when the namespace has none) points
        // into the namespace's data, valid while the controller is attached.
        let uuid = unsafe { sys::spdk_nvme_ns_get_uuid(ns).cast::<[u8; 16]>().as_ref().copied() };
        Some(Ns {
            ptr: p,
            nsid,
            block_size,
            num_blocks,
            flags,
            max_xfer,
            uuid,
        })
    }

    /// Model and serial number from Identify Controller (bytes 24..64 and 4..24).
    pub(crate) fn model_serial(&self) -> (String, String) {
        // SAFETY: the controller is attached; the identify data is 4,096 bytes owned by it.
        let d = unsafe {
            sys::spdk_nvme_ctrlr_get_data(self.ptr.as_ptr())
                .cast::<[u8; 4096]>()
                .as_ref()
        };
        let s = |r: std::ops::Range<usize>| {
            d.map(|d| String::from_utf8_lossy(&d[r]).trim().to_string())
                .unwrap_or_default()
        };
        (s(24..64), s(4..24))
    }

    /// Runs admin completions (keep-alive, asynchronous events). Management path: takes
    /// the controller's lock inside SPDK. Negative: the controller failed.
    pub(crate) fn process_admin(&self) -> i32 {
        // SAFETY: the controller is attached; SPDK serialises admin processing itself.
        unsafe { sys::spdk_nvme_ctrlr_process_admin_completions(self.ptr.as_ptr()) }
    }
}

/// A controller reset in SPDK's asynchronous steps (the caller serialises them, and every
/// other call on the controller's admin side, with [`super::recover::Recovery`]).
impl Ctrlr {
    /// Whether SPDK marked the controller failed.
    pub(crate) fn is_failed(&self) -> bool {
        // SAFETY: the controller is attached; SPDK reads a flag under its lock.
        unsafe { sys::spdk_nvme_ctrlr_is_failed(self.ptr.as_ptr()) }
    }

    /// First step of a reset: starts disconnecting the controller (its I/O queue pairs
    /// fail with it). The disconnect is done when [`process_admin`](Self::process_admin)
    /// returns an error. `Err(errno)`: EBUSY, a reset is running; ENXIO, removed.
    pub(crate) fn disconnect(&self) -> Result<(), i32> {
        // SAFETY: the controller is attached; the caller serialises reset steps.
        match unsafe { sys::spdk_nvme_ctrlr_disconnect(self.ptr.as_ptr()) } {
            0 => Ok(()),
            rc => Err(-rc),
        }
    }

    /// Second step, once disconnected: starts reconnecting (then `reset_poll`).
    pub(crate) fn reconnect_start(&self) {
        // SAFETY: the controller is attached and disconnected; the caller serialises.
        unsafe { sys::spdk_nvme_ctrlr_reconnect_async(self.ptr.as_ptr()) };
    }

    /// Advances a started reset without blocking: `Ok(true)` the controller is enabled
    /// again, `Ok(false)` still connecting, `Err(errno)` this attempt failed.
    pub(crate) fn reset_poll(&self) -> Result<bool, i32> {
        // SAFETY: the controller is attached and `reconnect_start` ran.
        match unsafe { sys::spdk_nvme_ctrlr_reconnect_poll_async(self.ptr.as_ptr()) } {
            0 => Ok(true),
            rc if rc == -libc::EAGAIN => Ok(false),
            rc => Err(-rc),
        }
    }
}

impl Drop for Ctrlr {
    fn drop(&mut self) {
        // SAFETY: last owner: every queue pair (which holds an Arc of this) is freed.
        let rc = unsafe { sys::spdk_nvme_detach(self.ptr.as_ptr()) };
        if rc != 0 {
            log::warn!("spdk_nvme_detach: errno {}", -rc);
        }
    }
}

/// One namespace and what the bdev needs of it.
#[derive(Clone, Copy)]
pub(crate) struct Ns {
    ptr: NonNull<sys::spdk_nvme_ns>,
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub flags: u32,
    pub max_xfer: u32,
    pub uuid: Option<[u8; 16]>,
}

// SAFETY: a namespace handle is read-only data of its controller; the bdev keeps the
// controller attached (an Arc) as long as it keeps the handle.
unsafe impl Send for Ns {}
// SAFETY: as above.
unsafe impl Sync for Ns {}

impl Ns {
    pub(crate) fn supports_flush(&self) -> bool {
        self.flags & sys::spdk_nvme_ns_flags_SPDK_NVME_NS_FLUSH_SUPPORTED != 0
    }
    pub(crate) fn supports_write_zeroes(&self) -> bool {
        self.flags & sys::spdk_nvme_ns_flags_SPDK_NVME_NS_WRITE_ZEROES_SUPPORTED != 0
    }
}

/// What a queue pair command does.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cmd {
    Read(*mut u8),
    Write(*mut u8),
    Flush,
    WriteZeroes,
}

/// Where a completion is recorded: the queue pair's list of finished slots. One per
/// slot, at a fixed address (a boxed slice), passed to SPDK as the callback argument.
struct Cookie {
    done: *mut Vec<(u32, u16)>,
    slot: u32,
}

/// SPDK's completion callback: records (slot, status) in the queue pair's done list,
/// whose capacity is the slot count, so it never allocates.
unsafe extern "C" fn on_complete(arg: *mut c_void, cpl: *const sys::spdk_nvme_cpl) {
    // SAFETY: arg is the address of a Cookie in a live queue pair's table (SPDK calls
    // this only from process_completions or qpair free, both while the table lives);
    // cpl is SPDK's completion entry, valid for the call.
    let (c, status) = unsafe { (&*(arg as *const Cookie), (*cpl).__bindgen_anon_1.status_raw) };
    // SAFETY: the done list is a separate heap allocation of the queue pair, reached only
    // through this raw pointer while SPDK runs callbacks (no Rust reference is live).
    let done = unsafe { &mut *c.done };
    debug_assert!(done.len() < done.capacity(), "one completion per submitted slot");
    done.push((c.slot, status));
}

/// One I/O queue pair on one reactor. Not `Send`: SPDK requires one thread per qpair.
pub(crate) struct Qpair {
    ptr: NonNull<sys::spdk_nvme_qpair>,
    ns: Ns,
    cookies: Box<[Cookie]>,
    done: *mut Vec<(u32, u16)>,
    _ctrlr: std::sync::Arc<Ctrlr>,
}

impl Qpair {
    /// Allocates an I/O queue pair with `slots` commands; over a fabric it connects
    /// asynchronously, as the queue pair is polled.
    pub(crate) fn alloc(ctrlr: &std::sync::Arc<Ctrlr>, ns: Ns, slots: u32) -> Result<Qpair, SpdkError> {
        let mut opts = MaybeUninit::<sys::spdk_nvme_io_qpair_opts>::zeroed();
        let size = std::mem::size_of::<sys::spdk_nvme_io_qpair_opts>();
        // SAFETY: the controller is attached; opts is writable memory of `size` bytes.
        unsafe { sys::spdk_nvme_ctrlr_get_default_io_qpair_opts(ctrlr.ptr.as_ptr(), opts.as_mut_ptr(), size) };
        // SAFETY: initialised by the call above.
        let mut opts = unsafe { opts.assume_init() };
        // Large I/O is split into child requests: room for them beyond the slots.
        opts.io_queue_requests = opts.io_queue_requests.max(slots * 2);
        // Connect without blocking: a reactor opening a channel must not wait for a
        // fabric round trip (the target may be served by this very reactor). The
        // connection advances in process_completions; I/O submitted before it is up
        // is queued by SPDK and sent once it is.
        opts.async_mode = true;
        // SAFETY: as above; SPDK copies opts.
        let p = unsafe { sys::spdk_nvme_ctrlr_alloc_io_qpair(ctrlr.ptr.as_ptr(), &opts, size) };
        let ptr = NonNull::new(p).ok_or(SpdkError::Qpair)?;
        let done = Box::into_raw(Box::new(Vec::with_capacity(slots as usize)));
        let cookies = (0..slots).map(|slot| Cookie { done, slot }).collect();
        Ok(Qpair {
            ptr,
            ns,
            cookies,
            done,
            _ctrlr: ctrlr.clone(),
        })
    }

    /// Submits `cmd` for slot `slot` (which must not be in flight). `Err(errno)`:
    /// not submitted (ENOMEM: out of requests, retry after polling).
    pub(crate) fn submit(&mut self, slot: u32, cmd: Cmd, lba: u64, blocks: u32) -> Result<(), i32> {
        let arg = &self.cookies[slot as usize] as *const Cookie as *mut c_void;
        let (ns, qp, cb) = (self.ns.ptr.as_ptr(), self.ptr.as_ptr(), Some(on_complete as _));
        // SAFETY: ns and qp are live (this owns the qpair and, through the Arc, the
        // controller); this reactor is the qpair's only user; a data pointer is the start
        // of a buffer of `blocks` blocks that the caller keeps alive and untouched until
        // the slot's completion; arg is a Cookie at a fixed address living as long as
        // the qpair.
        let rc = unsafe {
            match cmd {
                Cmd::Read(b) => sys::spdk_nvme_ns_cmd_read(ns, qp, b.cast(), lba, blocks, cb, arg, 0),
                Cmd::Write(b) => sys::spdk_nvme_ns_cmd_write(ns, qp, b.cast(), lba, blocks, cb, arg, 0),
                Cmd::Flush => sys::spdk_nvme_ns_cmd_flush(ns, qp, cb, arg),
                Cmd::WriteZeroes => sys::spdk_nvme_ns_cmd_write_zeroes(ns, qp, lba, blocks, cb, arg, 0),
            }
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(-rc)
        }
    }

    /// Runs SPDK's completion processing, then hands each finished (slot, raw status)
    /// to `f`. Returns SPDK's result: completions processed, or a negative errno when
    /// the queue pair failed at the transport level.
    #[inline]
    pub(crate) fn poll(&mut self, f: &mut dyn FnMut(u32, u16)) -> i32 {
        // SAFETY: this reactor is the qpair's only user; callbacks only touch the done
        // list through its raw pointer, and no reference to it is live during the call.
        let rc = unsafe { sys::spdk_nvme_qpair_process_completions(self.ptr.as_ptr(), 0) };
        // SAFETY: SPDK is not running callbacks now; this is the only reference.
        let done = unsafe { &mut *self.done };
        for (slot, status) in done.drain(..) {
            f(slot, status);
        }
        rc
    }
}

impl Qpair {
    /// Reconnects a failed queue pair (what was in flight was aborted back through the
    /// completions). `Err(errno)`: EAGAIN, not now (the controller is resetting or did not
    /// answer); ENXIO, the controller needs a reset; ENODEV, it is gone.
    pub(crate) fn reconnect(&mut self) -> Result<(), i32> {
        // SAFETY: this reactor is the qpair's only user (SPDK requires the thread that
        // processes its completions); callbacks of aborted commands push into the done
        // list through its raw pointer, and no reference to it is live during the call.
        match unsafe { sys::spdk_nvme_ctrlr_reconnect_io_qpair(self.ptr.as_ptr()) } {
            0 => Ok(()),
            rc => Err(-rc),
        }
    }
}

impl Drop for Qpair {
    fn drop(&mut self) {
        // SAFETY: the qpair is ours and not used after this; SPDK may run callbacks for
        // aborted commands during the free, which push into the still-live done list.
        let rc = unsafe { sys::spdk_nvme_ctrlr_free_io_qpair(self.ptr.as_ptr()) };
        if rc != 0 {
            log::warn!("spdk_nvme_ctrlr_free_io_qpair: errno {}", -rc);
        }
        // SAFETY: from Box::into_raw in alloc; SPDK holds no cookie any more.
        drop(unsafe { Box::from_raw(self.done) });
    }
}

/// SPDK's text for a raw completion status (`status_raw`: phase bit 0, SC bits 1..9,
/// SCT bits 9..12).
pub(crate) fn status_string(status: u16) -> String {
    let cpl = MaybeUninit::<sys::spdk_nvme_cpl>::zeroed();
    // SAFETY: zeroed is a valid completion entry; only the status is set.
    let mut cpl = unsafe { cpl.assume_init() };
    cpl.__bindgen_anon_1.status_raw = status;
    // SAFETY: SPDK reads the status of a valid entry and returns a static string.
    let s = unsafe { CStr::from_ptr(sys::spdk_nvme_cpl_get_status_string(&cpl.__bindgen_anon_1.status)) };
    s.to_string_lossy().into_owned()
}
