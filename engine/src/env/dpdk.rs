//! The unsafe edge to DPDK (feature `dpdk`): EAL start-up, `rte_ring`-backed
//! rings and `rte_mempool`-backed buffer free lists. Every call into
//! `dpdk_sys` is here, each with its SAFETY argument; the rest of the engine
//! sees safe types only.

use super::{EnvError, EnvOpts};
use dpdk_sys as sys;
use std::ffi::{c_void, CStr, CString};
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

static EAL: OnceLock<Result<(), EnvError>> = OnceLock::new();
static NEXT_NAME: AtomicU64 = AtomicU64::new(0);
/// Whether EAL was started on hugepages.
static EAL_HUGE: AtomicBool = AtomicBool::new(false);
/// The PCI functions EAL was started with (`-a`), set once it runs.
static EAL_PCI: OnceLock<Vec<String>> = OnceLock::new();

fn rte_error(what: impl Into<String>) -> EnvError {
    // SAFETY: reads the calling thread's rte_errno through the C shim.
    let errno = unsafe { sys::baton_rte_errno() };
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    let reason = unsafe { CStr::from_ptr(sys::rte_strerror(errno)) }
        .to_string_lossy()
        .into_owned();
    EnvError::Dpdk {
        what: what.into(),
        reason: format!("{reason} (rte_errno {errno})"),
    }
}

/// A name DPDK has not seen in this process (memzone names are global).
fn unique_name(prefix: &str) -> CString {
    let n = NEXT_NAME.fetch_add(1, Ordering::Relaxed);
    CString::new(format!("{prefix}{n}")).expect("no NUL in a generated name")
}

/// The EAL arguments for `opts` on this machine.
pub(crate) fn eal_args(opts: &EnvOpts) -> Result<Vec<String>, EnvError> {
    // The main lcore is the first CPU this process may run on.
    let first_cpu = core_affinity::get_core_ids()
        .and_then(|c| c.first().map(|c| c.id))
        .unwrap_or(0);
    eal_args_for(opts, first_cpu, crate::sys::hugepages_reserved())
}

/// The EAL arguments for `opts` with main lcore `first_cpu` and `hugepages` reserved.
/// PCI: `--no-pci` unless `opts` allows PCI functions, then `-a BDF` for each (DPDK
/// probes those only) and hugepages are required (VFIO DMA needs pinned memory).
fn eal_args_for(opts: &EnvOpts, first_cpu: usize, hugepages: u64) -> Result<Vec<String>, EnvError> {
    let mut a: Vec<String> = vec!["baton".into(), "-l".into(), first_cpu.to_string()];
    if opts.dpdk_pci_allow.is_empty() {
        a.push("--no-pci".into());
    } else {
        if hugepages == 0 {
            return Err(EnvError::PciNeedsHugepages(opts.dpdk_pci_allow.join(" ")));
        }
        for bdf in &opts.dpdk_pci_allow {
            // Canonical already when set through `allow_pci`; checked again for a
            // hand-built EnvOpts, since EAL would take anything here.
            a.extend(["-a".into(), super::pci_addr(bdf)?]);
        }
    }
    a.push("--no-telemetry".into());
    a.push("--log-level=lib.eal:warning".into());
    if hugepages > 0 {
        match &opts.dpdk_file_prefix {
            Some(p) => a.extend(["--file-prefix".into(), p.clone()]),
            None => a.push("--in-memory".into()),
        }
    } else {
        a.extend(["--no-huge".into(), "-m".into(), opts.dpdk_mem_mb.to_string()]);
    }
    a.extend(opts.dpdk_extra_args.iter().cloned());
    Ok(a)
}

/// The PCI functions the running EAL was started with (`-a`); empty when EAL runs with
/// `--no-pci` or is not running.
pub(crate) fn eal_pci_allowed() -> &'static [String] {
    EAL_PCI.get().map(Vec::as_slice).unwrap_or(&[])
}

/// Starts DPDK's EAL once per process (later calls return the first result).
pub(crate) fn eal_init(opts: &EnvOpts) -> Result<(), EnvError> {
    EAL.get_or_init(|| {
        let args = eal_args(opts)?;
        let shown = args.join(" ");
        let cargs: Vec<CString> = args
            .iter()
            .map(|s| CString::new(s.as_str()))
            .collect::<Result<_, _>>()
            .map_err(|_| EnvError::Eal {
                args: shown.clone(),
                reason: "an argument contains a NUL byte".into(),
            })?;
        // rte_eal_init may permute argv, so it gets its own array of pointers
        // (the strings themselves live in `cargs` until after the call, and EAL
        // keeps no pointer to them).
        let mut argv: Vec<*mut std::ffi::c_char> = cargs.iter().map(|c| c.as_ptr() as *mut _).collect();
        // EAL pins the calling thread to the main lcore; threads spawned from
        // it later would inherit that. Keep this thread's affinity as it was.
        let saved = affinity_get();
        let t0 = std::time::Instant::now();
        // SAFETY: argv holds argc valid NUL-terminated strings that outlive the
        // call; OnceLock makes this the only call in the process.
        let rc = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        if let Some(set) = saved {
            affinity_set(&set);
        }
        if rc < 0 {
            let e = rte_error("rte_eal_init");
            let reason = match e {
                EnvError::Dpdk { reason, .. } => reason,
                other => other.to_string(),
            };
            return Err(EnvError::Eal { args: shown, reason });
        }
        EAL_HUGE.store(!args.iter().any(|a| a == "--no-huge"), Ordering::Relaxed);
        let pci: Vec<String> = args.windows(2).filter(|w| w[0] == "-a").map(|w| w[1].clone()).collect();
        EAL_PCI.get_or_init(|| pci);
        log::info!("DPDK EAL started in {:?}: {shown}", t0.elapsed());
        Ok(())
    })
    .clone()
}

fn eal_running() -> bool {
    matches!(EAL.get(), Some(Ok(())))
}

fn affinity_get() -> Option<libc::cpu_set_t> {
    let mut set = MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: set is a valid, writable cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set.as_mut_ptr()) };
    // SAFETY: zero-initialised and, on success, filled by the kernel.
    (rc == 0).then(|| unsafe { set.assume_init() })
}

fn affinity_set(set: &libc::cpu_set_t) {
    // SAFETY: set points to a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        log::warn!("could not restore the thread's CPU affinity after EAL start-up");
    }
}

/// Registers the calling thread with EAL as a non-EAL lcore (for per-lcore
/// mempool caches). False when EAL is not running or has no lcore left.
pub(crate) fn register_thread() -> bool {
    if !eal_running() {
        return false;
    }
    // SAFETY: EAL is initialised; the thread is not registered yet (reactor threads
    // call this once, at start).
    let rc = unsafe { sys::rte_thread_register() };
    if rc != 0 {
        log::warn!(
            "{}: this reactor runs without mempool caches",
            rte_error("rte_thread_register")
        );
    }
    rc == 0
}

pub(crate) fn unregister_thread() {
    // EAL does not flush a leaving thread's mempool caches: buffers there
    // would be lost to every other thread. Give them back first.
    for pool in crate::buf::pools() {
        pool.flush_lcore_cache();
    }
    // SAFETY: called once by a thread that registered itself successfully.
    unsafe { sys::rte_thread_unregister() }
}

/// One `rte_ring` slot: `T` padded to a multiple of 8 bytes (rte_ring's
/// element size must be a non-zero multiple of 4).
#[repr(C)]
union Slot<T> {
    v: ManuallyDrop<T>,
    _pad: u64,
}

/// `rte_ring` flags: exact capacity; MP/MC in "relaxed tail sync" (RTS)
/// mode. The classic MP/MC mode makes each producer wait for the one before it
/// to publish, so a producer preempted mid-enqueue (more threads than cores:
/// tests, RPC threads, a loaded machine) stalls every other producer for a
/// scheduler time slice; in the engine's test suite that turned a 1 s test
/// into minutes. RTS lets the last finisher publish for all.
const RING_FLAGS: u32 = sys::RING_F_EXACT_SZ | sys::RING_F_MP_RTS_ENQ | sys::RING_F_MC_RTS_DEQ;

/// A bounded MPMC ring on an `rte_ring` holding `T`s by value.
pub(crate) struct DpdkRing<T> {
    r: NonNull<sys::rte_ring>,
    _t: PhantomData<T>,
}

// SAFETY: the ring moves T values between threads (like a channel) and is
// itself MP/MC-safe (created without the SP/SC flags; enqueue/dequeue follow
// the ring's own sync mode).
unsafe impl<T: Send> Send for DpdkRing<T> {}
// SAFETY: as above: every operation through &self is multi-thread safe.
unsafe impl<T: Send> Sync for DpdkRing<T> {}

impl<T> DpdkRing<T> {
    const ESIZE: u32 = std::mem::size_of::<Slot<T>>() as u32;

    pub(crate) fn new(capacity: usize) -> Result<DpdkRing<T>, EnvError> {
        if !eal_running() {
            return Err(EnvError::Dpdk {
                what: "rte_ring".into(),
                reason: "EAL is not running".into(),
            });
        }
        let name = unique_name("baton_r");
        let count = u32::try_from(capacity).map_err(|_| EnvError::Dpdk {
            what: format!("rte_ring of {capacity}"),
            reason: "too large".into(),
        })?;
        // SAFETY: EAL is running; name is a valid C string DPDK copies; the
        // element size is a non-zero multiple of 8. Flags: exact size, and
        // multi-producer/multi-consumer in RTS mode (see `RING_FLAGS`).
        let r = unsafe { sys::rte_ring_create_elem(name.as_ptr(), Self::ESIZE, count, sys::SOCKET_ID_ANY, RING_FLAGS) };
        NonNull::new(r)
            .map(|r| DpdkRing { r, _t: PhantomData })
            .ok_or_else(|| rte_error(format!("rte_ring_create_elem({capacity} x {} B)", Self::ESIZE)))
    }

    #[inline]
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        let slot = Slot {
            v: ManuallyDrop::new(item),
        };
        // SAFETY: r is a live ring of ESIZE-byte elements; slot is ESIZE readable bytes.
        // On success the ring owns the bytes (slot is ManuallyDrop, so not dropped here).
        let rc =
            unsafe { sys::rte_ring_enqueue_elem(self.r.as_ptr(), &slot as *const Slot<T> as *mut c_void, Self::ESIZE) };
        if rc == 0 {
            Ok(())
        } else {
            // SAFETY: the ring refused the item, so `v` still holds the only copy.
            Err(ManuallyDrop::into_inner(unsafe { slot.v }))
        }
    }

    #[inline]
    pub(crate) fn pop(&self) -> Option<T> {
        let mut slot = MaybeUninit::<Slot<T>>::uninit();
        // SAFETY: r is a live ring of ESIZE-byte elements; slot has room for ESIZE bytes.
        let rc = unsafe { sys::rte_ring_dequeue_elem(self.r.as_ptr(), slot.as_mut_ptr().cast(), Self::ESIZE) };
        if rc != 0 {
            return None;
        }
        // SAFETY: a successful dequeue copied out a Slot pushed by `push`, whose
        // `v` is initialised, and removed it from the ring: we own it now.
        Some(ManuallyDrop::into_inner(unsafe { slot.assume_init().v }))
    }

    pub(crate) fn len(&self) -> usize {
        // SAFETY: r is a live ring.
        unsafe { sys::rte_ring_count(self.r.as_ptr()) as usize }
    }

    pub(crate) fn is_empty(&self) -> bool {
        // SAFETY: r is a live ring.
        unsafe { sys::rte_ring_empty(self.r.as_ptr()) != 0 }
    }

    pub(crate) fn capacity(&self) -> usize {
        // SAFETY: r is a live ring.
        unsafe { sys::rte_ring_get_capacity(self.r.as_ptr()) as usize }
    }
}

impl<T> Drop for DpdkRing<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
        // SAFETY: r was created by rte_ring_create_elem and nothing uses it any more.
        unsafe { sys::rte_ring_free(self.r.as_ptr()) }
    }
}

/// A buffer pool's memory and free list in DPDK: the buffers are one
/// contiguous, 4 KiB-aligned block of DPDK memory (`rte_zmalloc`: hugepages
/// when EAL has them), and the free list is an `rte_mempool` whose objects are
/// small descriptors holding a buffer index. (Mempool objects that were the
/// buffers themselves would carry a header each, so they could not be both
/// 4 KiB-aligned and dense, and the block would not be one region to register
/// with io_uring or an IOMMU.)
pub(crate) struct DpdkPool {
    base: NonNull<u8>,
    bytes: usize,
    mp: NonNull<sys::rte_mempool>,
    /// Descriptor of each buffer index, for `put`.
    objs: Box<[usize]>,
}

// SAFETY: the memory and the mempool are process-wide DPDK objects; rte_mempool
// get/put are MP/MC-safe (created without the SP/SC flags).
unsafe impl Send for DpdkPool {}
// SAFETY: as above.
unsafe impl Sync for DpdkPool {}

/// Mempool per-lcore cache size for a pool of `count` buffers: the rule
/// baton's own pools use for their reactor caches (none for small pools).
pub(crate) fn cache_size(count: usize) -> u32 {
    crate::buf::thread_cache_bufs(count) as u32
}

unsafe extern "C" fn init_obj(_mp: *mut sys::rte_mempool, opaque: *mut c_void, obj: *mut c_void, idx: u32) {
    // SAFETY: opaque is the `objs` Mutex passed by `DpdkPool::new` (alive for the
    // call), obj is an 8-byte element of the new pool; idx < count.
    unsafe {
        (obj as *mut u64).write(idx as u64);
        let objs = &*(opaque as *const Mutex<Vec<usize>>);
        objs.lock().unwrap_or_else(|e| e.into_inner())[idx as usize] = obj as usize;
    }
}

static MEM_LOCK: Mutex<()> = Mutex::new(());

impl DpdkPool {
    pub(crate) fn new(count: usize, buf_size: usize, align: usize) -> Result<DpdkPool, EnvError> {
        if !eal_running() {
            return Err(EnvError::Dpdk {
                what: "buffer pool".into(),
                reason: "EAL is not running".into(),
            });
        }
        let _g = MEM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = count * buf_size;
        let tag = unique_name("baton_b");
        // SAFETY: EAL is running; tag is a valid C string; align is a power of two.
        let base = unsafe { sys::rte_zmalloc(tag.as_ptr(), bytes, align as u32) };
        let base = NonNull::new(base as *mut u8)
            .ok_or_else(|| rte_error(format!("rte_zmalloc({bytes} B) for {count} x {buf_size} B buffers")))?;
        let objs = Mutex::new(vec![0usize; count]);
        let name = unique_name("baton_p");
        // SAFETY: EAL is running; name is a valid C string; init_obj only uses
        // `objs`, which outlives this call; 8-byte elements.
        let mp = unsafe {
            sys::rte_mempool_create(
                name.as_ptr(),
                count as u32,
                8,
                cache_size(count),
                0,
                None,
                std::ptr::null_mut(),
                Some(init_obj),
                &objs as *const Mutex<Vec<usize>> as *mut c_void,
                sys::SOCKET_ID_ANY,
                0,
            )
        };
        let Some(mp) = NonNull::new(mp) else {
            let e = rte_error(format!("rte_mempool_create({count} descriptors)"));
            // SAFETY: base came from rte_zmalloc and is not used elsewhere.
            unsafe { sys::rte_free(base.as_ptr().cast()) };
            return Err(e);
        };
        Ok(DpdkPool {
            base,
            bytes,
            mp,
            objs: objs.into_inner().unwrap_or_else(|e| e.into_inner()).into_boxed_slice(),
        })
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    #[inline]
    pub(crate) fn get(&self) -> Option<u32> {
        let mut obj: *mut c_void = std::ptr::null_mut();
        // SAFETY: mp is a live mempool; obj is a valid out-pointer.
        let rc = unsafe { sys::rte_mempool_get(self.mp.as_ptr(), &mut obj) };
        if rc != 0 {
            return None;
        }
        // SAFETY: every object was initialised by init_obj with its index.
        Some(unsafe { (obj as *const u64).read() } as u32)
    }

    #[inline]
    pub(crate) fn put(&self, idx: u32) {
        let obj = self.objs[idx as usize] as *mut c_void;
        // SAFETY: obj is this pool's descriptor for idx, which the caller took
        // with `get` and returns once.
        unsafe { sys::rte_mempool_put(self.mp.as_ptr(), obj) }
    }

    /// Returns the calling lcore's cached buffers to the pool.
    pub(crate) fn flush_cache(&self) {
        // SAFETY: mp is a live mempool; rte_lcore_id is the calling thread's.
        unsafe {
            let cache = sys::rte_mempool_default_cache(self.mp.as_ptr(), sys::rte_lcore_id());
            if !cache.is_null() {
                sys::rte_mempool_cache_flush(cache, self.mp.as_ptr());
            }
        }
    }

    /// Free buffers (including those in per-lcore caches).
    pub(crate) fn free(&self) -> usize {
        // SAFETY: mp is a live mempool.
        unsafe { sys::rte_mempool_avail_count(self.mp.as_ptr()) as usize }
    }

    /// Whether DPDK backs its memory with hugepages (it was started with them).
    pub(crate) fn hugepages(&self) -> bool {
        EAL_HUGE.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_pci(addrs: &[&str]) -> EnvOpts {
        let mut o = EnvOpts {
            kind: super::super::EnvKind::Dpdk,
            ..EnvOpts::default()
        };
        o.allow_pci(addrs).unwrap();
        o
    }

    #[test]
    fn no_pci_unless_asked() {
        let a = eal_args_for(&EnvOpts::default(), 0, 0).unwrap();
        assert!(a.iter().any(|x| x == "--no-pci"));
        assert!(a.iter().any(|x| x == "--no-huge"));
        let a = eal_args_for(&EnvOpts::default(), 1, 64).unwrap();
        assert!(a.iter().any(|x| x == "--no-pci") && a.iter().any(|x| x == "--in-memory"));
        assert!(!a.iter().any(|x| x == "-a"));
    }

    #[test]
    fn pci_allow_list_replaces_no_pci_and_needs_hugepages() {
        let o = with_pci(&["00:04.0", "0000:00:05.0"]);
        let a = eal_args_for(&o, 0, 64).unwrap();
        assert!(!a.iter().any(|x| x == "--no-pci" || x == "--no-huge"), "{a:?}");
        let allowed: Vec<&str> = a.windows(2).filter(|w| w[0] == "-a").map(|w| w[1].as_str()).collect();
        assert_eq!(allowed, ["0000:00:04.0", "0000:00:05.0"]);
        assert_eq!(
            eal_args_for(&o, 0, 0),
            Err(EnvError::PciNeedsHugepages("0000:00:04.0 0000:00:05.0".into()))
        );
        let mut hand_built = EnvOpts::default();
        hand_built.dpdk_pci_allow.push("--no-huge".into());
        assert!(matches!(
            eal_args_for(&hand_built, 0, 64),
            Err(EnvError::BadPciAddr(..))
        ));
    }
}
