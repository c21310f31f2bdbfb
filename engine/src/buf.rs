//! DMA-able I/O buffers, allocated up front.
//!
//! A [`BufPool`] maps one region at start-up (2 MiB hugepages when the
//! machine has them reserved, plain 4 KiB pages otherwise, and it logs which)
//! and cuts it into equal buffers, each aligned to [`BUF_ALIGN_BYTES`] so it
//! can be used for `O_DIRECT` I/O. The free list is a bounded lock-free queue:
//! taking and returning a buffer is two atomic operations and never allocates,
//! and a buffer may be returned from any thread (a write's buffer is often
//! freed on the reactor that sent it to a relay, not the one that took it).
//!
//! Pools live for the whole process (`&'static`): buffers are handed between
//! layers and threads by value, and a pool that could vanish under them would
//! need a reference count on every I/O.
//!
//! [`DmaBuf`] is the owned handle every layer passes: it derefs to its bytes,
//! it returns itself to its pool on drop, and its visible length can be set
//! below its capacity so a 128 KiB pool serves 4 KiB I/O too.
//!
//! Where the sizes vary per I/O and no pool fits (the standby copies ops of
//! any size out of its receive buffers and stages them), [`DmaBuf::recycled`]
//! takes a heap buffer from a per-thread cache of freed buffers, one free
//! list per power-of-two size class. A recycled buffer goes back to the cache
//! of the thread that drops it, up to [`RECYCLE_IDLE_BYTES_MAX`] idle bytes
//! per thread; only a cold cache or a size above [`RECYCLE_BYTES_MAX`]
//! reaches the allocator. Its bytes are whatever its last user left: callers
//! write before they read.
//!
//! With the `dpdk` feature and the DPDK env ([`crate::env`]), a pool's region
//! is one `rte_zmalloc` block of DPDK memory (hugepages when EAL has them) and
//! its free list an `rte_mempool` of buffer indices (with per-lcore caches on
//! reactor threads); everything else, `DmaBuf` included, is the same.

use crate::sys::Mapping;
use crossbeam_queue::ArrayQueue;
use std::alloc::Layout;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Alignment of every buffer: the largest logical block size we serve.
pub const BUF_ALIGN_BYTES: usize = 4096;
/// Smallest size class of [`DmaBuf::recycled`] buffers.
pub const RECYCLE_BYTES_MIN: usize = BUF_ALIGN_BYTES;
/// Size classes: `RECYCLE_BYTES_MIN << k` for `k < RECYCLE_CLASSES`.
pub const RECYCLE_CLASSES: usize = 11;
/// Largest recycled buffer (4 MiB); larger ones come from the heap and go
/// back to it.
pub const RECYCLE_BYTES_MAX: usize = RECYCLE_BYTES_MIN << (RECYCLE_CLASSES - 1);
/// Idle bytes one thread's cache keeps; buffers dropped beyond it are freed.
pub const RECYCLE_IDLE_BYTES_MAX: usize = 256 << 20;
/// At most this many pools per process (each io_uring channel registers them
/// all as fixed buffers, and the kernel's table is small).
pub const POOLS_MAX: usize = 16;
/// Most buffers a reactor thread keeps for itself per pool (see
/// [`BufPool::get`]); a pool's own limit is [`thread_cache_bufs`] of its size.
pub const THREAD_CACHE_BUFS: usize = 256;
/// Pools smaller than this have no reactor caches: a few buffers idle in one
/// reactor's cache could starve another (DPDK's mempools make the same call).
pub const THREAD_CACHE_POOL_MIN: usize = 1024;

#[derive(Debug, Error)]
pub enum BufError {
    #[error("buffer pool {name:?}: {count} buffers of {size} bytes is not a valid pool (count and size must be > 0, size a multiple of {BUF_ALIGN_BYTES})")]
    BadGeometry { name: String, count: usize, size: usize },
    #[error("buffer pool {name:?}: cannot map {bytes} bytes: {source}")]
    Map {
        name: String,
        bytes: usize,
        source: std::io::Error,
    },
    #[error("at most {POOLS_MAX} buffer pools may exist in one process")]
    TooManyPools,
    #[error("buffer pool {name:?}: {source}")]
    Env { name: String, source: crate::env::EnvError },
}

/// A fixed set of equal, aligned buffers carved from one mapping.
pub struct BufPool {
    name: String,
    id: usize,
    mem: Backing,
    buf_size: usize,
    count: usize,
    /// Reactor threads keep up to this many of its buffers ([`thread_cache_bufs`]).
    cache_max: usize,
}

/// Where a pool's memory and free list live (see the module docs).
// The baton variant stays inline (boxing it would add a pointer chase to
// every get and put); there are at most POOLS_MAX of these.
#[allow(clippy::large_enum_variant)]
enum Backing {
    Baton {
        mapping: Mapping,
        free: ArrayQueue<u32>,
    },
    #[cfg(feature = "dpdk")]
    Dpdk(crate::env::dpdk::DpdkPool),
}

static POOLS: Mutex<Vec<&'static BufPool>> = Mutex::new(Vec::new());
/// `POOLS.len()`, readable without the lock (a transport that registers every pool with
/// its device checks it on its polls to notice pools made after it started).
static POOL_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl BufPool {
    /// Creates a pool of `count` buffers of `buf_size` bytes. Management path:
    /// maps memory and takes a lock; call at start-up, not per I/O.
    /// The pool is of the process's env ([`crate::env::current`]).
    pub fn new(name: &str, count: usize, buf_size: usize) -> Result<&'static BufPool, BufError> {
        let kind = crate::env::current().map_err(|source| BufError::Env {
            name: name.to_string(),
            source,
        })?;
        BufPool::new_in(kind, name, count, buf_size)
    }

    /// A pool of the given kind whatever the process's env (benchmarks compare
    /// the two side by side). DPDK's needs its EAL running ([`crate::env::ensure`]).
    pub fn new_in(
        kind: crate::env::EnvKind,
        name: &str,
        count: usize,
        buf_size: usize,
    ) -> Result<&'static BufPool, BufError> {
        if count == 0 || buf_size == 0 || !buf_size.is_multiple_of(BUF_ALIGN_BYTES) || count > u32::MAX as usize {
            return Err(BufError::BadGeometry {
                name: name.to_string(),
                count,
                size: buf_size,
            });
        }
        let bytes = count.checked_mul(buf_size).ok_or_else(|| BufError::BadGeometry {
            name: name.to_string(),
            count,
            size: buf_size,
        })?;
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        if pools.len() >= POOLS_MAX {
            return Err(BufError::TooManyPools);
        }
        let mem = match kind {
            crate::env::EnvKind::Baton => {
                let want_huge = crate::sys::hugepages_reserved() > 0;
                let mapping = Mapping::anonymous(bytes, want_huge).map_err(|source| BufError::Map {
                    name: name.to_string(),
                    bytes,
                    source,
                })?;
                let free = ArrayQueue::new(count);
                for i in 0..count {
                    let _ = free.push(i as u32);
                }
                Backing::Baton { mapping, free }
            }
            #[cfg(feature = "dpdk")]
            crate::env::EnvKind::Dpdk => Backing::Dpdk(
                crate::env::dpdk::DpdkPool::new(count, buf_size, BUF_ALIGN_BYTES).map_err(|source| BufError::Env {
                    name: name.to_string(),
                    source,
                })?,
            ),
            #[cfg(not(feature = "dpdk"))]
            crate::env::EnvKind::Dpdk => {
                return Err(BufError::Env {
                    name: name.to_string(),
                    source: crate::env::EnvError::NotBuilt,
                })
            }
        };
        let pool: &'static BufPool = Box::leak(Box::new(BufPool {
            name: name.to_string(),
            id: pools.len(),
            cache_max: if matches!(mem, Backing::Baton { .. }) {
                thread_cache_bufs(count)
            } else {
                0
            },
            mem,
            buf_size,
            count,
        }));
        log::info!(
            "buffer pool {name}: {count} x {buf_size} B on {} ({} env)",
            if pool.hugepages() {
                "2 MiB hugepages"
            } else {
                "4 KiB pages (no hugepages reserved)"
            },
            pool.env()
        );
        pools.push(pool);
        POOL_COUNT.store(pools.len(), Ordering::Release);
        Ok(pool)
    }

    /// Takes a buffer, with its length set to the pool's buffer size; `None`
    /// when every buffer is in use (back-pressure: retry on a later poll).
    ///
    /// On a reactor thread, a pool of at least [`THREAD_CACHE_POOL_MIN`]
    /// buffers serves it from the reactor's own cache of up to
    /// [`thread_cache_bufs`] buffers when it can (no atomic operation), and
    /// [`DmaBuf`]'s drop there refills that cache first; a cache goes back to
    /// the pool when its thread ends. So `None` may also mean that the last
    /// free buffers sit idle in other reactors' caches.
    #[inline]
    pub fn get(&'static self) -> Option<DmaBuf> {
        let (base, idx) = match &self.mem {
            Backing::Baton { mapping, free } => {
                let cached = if self.cache_max > 0 { cache_take(self.id) } else { None };
                (mapping.as_ptr(), cached.or_else(|| free.pop())?)
            }
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(d) => (d.base(), d.get()?),
        };
        // SAFETY: idx < count, so the offset stays inside the region.
        let ptr = unsafe { base.add(idx as usize * self.buf_size) };
        Some(DmaBuf {
            ptr: NonNull::new(ptr).expect("mapping is never null"),
            len: self.buf_size,
            cap: self.buf_size,
            origin: Origin::Pool(self, idx),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
    /// Total buffers in the pool.
    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Buffers currently free.
    /// Buffers currently free (reactor caches included).
    pub fn free(&self) -> usize {
        match &self.mem {
            Backing::Baton { free, .. } => free.len() + if self.cache_max > 0 { cached_count(self.id) } else { 0 },
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(d) => d.free(),
        }
    }
    pub fn hugepages(&self) -> bool {
        match &self.mem {
            Backing::Baton { mapping, .. } => mapping.hugepages,
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(d) => d.hugepages(),
        }
    }
    /// DPDK env: returns the calling thread's mempool cache to the pool (a
    /// reactor does this as it stops). A no-op for baton's pools.
    #[cfg(feature = "dpdk")]
    pub(crate) fn flush_lcore_cache(&self) {
        if let Backing::Dpdk(d) = &self.mem {
            d.flush_cache();
        }
    }
    /// Whose memory and free list this pool uses.
    pub fn env(&self) -> crate::env::EnvKind {
        match &self.mem {
            Backing::Baton { .. } => crate::env::EnvKind::Baton,
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(_) => crate::env::EnvKind::Dpdk,
        }
    }
    /// Returns buffer `idx` to the shared free list (not a thread cache).
    fn put_shared(&self, idx: u32) {
        match &self.mem {
            Backing::Baton { free, .. } => {
                let _ = free.push(idx);
            }
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(d) => d.put(idx),
        }
    }

    /// Returns buffer `idx` to the free list.
    #[inline]
    fn put(&self, idx: u32) {
        match &self.mem {
            Backing::Baton { free, .. } => {
                if self.cache_max > 0 && cache_keep(self.id, idx, self.cache_max) {
                    return;
                }
                // Cannot fail: each index is in the queue at most once and the
                // queue holds `count` slots.
                let pushed = free.push(idx);
                debug_assert!(pushed.is_ok(), "buffer {idx} returned twice to pool {}", self.name);
            }
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(d) => d.put(idx),
        }
    }
    /// Index of this pool among the process's pools (stable for its life).
    pub fn id(&self) -> usize {
        self.id
    }
    /// The region backing the pool, for registering with io_uring.
    pub fn region(&self) -> (*mut u8, usize) {
        match &self.mem {
            Backing::Baton { mapping, .. } => (mapping.as_ptr(), mapping.len()),
            #[cfg(feature = "dpdk")]
            Backing::Dpdk(d) => (d.base(), d.bytes()),
        }
    }
}

/// Every pool created so far, in id order (for fixed-buffer registration).
pub fn pools() -> Vec<&'static BufPool> {
    POOLS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// How many pools exist: one atomic load, no lock, no allocation (unlike [`pools`]).
#[inline]
pub fn pool_count() -> usize {
    POOL_COUNT.load(Ordering::Acquire)
}

/// How many of a pool's `count` buffers one reactor may keep idle: none below
/// [`THREAD_CACHE_POOL_MIN`], else a sixteenth, at most [`THREAD_CACHE_BUFS`].
/// The DPDK env sizes its mempool caches by the same rule, so the two compare fairly.
pub fn thread_cache_bufs(count: usize) -> usize {
    if count < THREAD_CACHE_POOL_MIN {
        0
    } else {
        (count / 16).min(THREAD_CACHE_BUFS)
    }
}

/// A reactor thread's caches of pool buffers: one small stack of indices per
/// pool id. Only its thread touches `items`; `lens` mirrors the stack heights
/// (relaxed stores, no read-modify-write) for [`BufPool::free`].
struct ThreadCache {
    items: [[u32; THREAD_CACHE_BUFS]; POOLS_MAX],
    lens: Arc<[AtomicU32; POOLS_MAX]>,
}

/// The `lens` of every live thread cache.
static CACHE_LENS: Mutex<Vec<Arc<[AtomicU32; POOLS_MAX]>>> = Mutex::new(Vec::new());

thread_local! {
    static CACHE: RefCell<Option<ThreadCache>> = const { RefCell::new(None) };
}

/// Gives the calling (reactor) thread its buffer caches; they return to their
/// pools when the thread ends. Allocates once: call at thread start.
pub(crate) fn thread_cache_enable() {
    let lens: Arc<[AtomicU32; POOLS_MAX]> = Arc::new([const { AtomicU32::new(0) }; POOLS_MAX]);
    CACHE_LENS.lock().unwrap_or_else(|e| e.into_inner()).push(lens.clone());
    let _ = CACHE.try_with(|c| {
        *c.borrow_mut() = Some(ThreadCache {
            items: [[0; THREAD_CACHE_BUFS]; POOLS_MAX],
            lens,
        })
    });
}

#[inline]
fn cache_take(pool: usize) -> Option<u32> {
    CACHE
        .try_with(|c| {
            let mut c = c.try_borrow_mut().ok()?;
            let c = c.as_mut()?;
            let n = c.lens[pool].load(Ordering::Relaxed) as usize;
            if n == 0 {
                return None;
            }
            c.lens[pool].store(n as u32 - 1, Ordering::Relaxed);
            Some(c.items[pool][n - 1])
        })
        .ok()
        .flatten()
}

/// Keeps `idx` in this thread's cache of `pool`; false when there is none or it is full.
#[inline]
fn cache_keep(pool: usize, idx: u32, max: usize) -> bool {
    CACHE
        .try_with(|c| {
            let Ok(mut c) = c.try_borrow_mut() else { return false };
            let Some(c) = c.as_mut() else { return false };
            let n = c.lens[pool].load(Ordering::Relaxed) as usize;
            if n >= max {
                return false;
            }
            c.items[pool][n] = idx;
            c.lens[pool].store(n as u32 + 1, Ordering::Relaxed);
            true
        })
        .unwrap_or(false)
}

fn cached_count(pool: usize) -> usize {
    CACHE_LENS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|l| l[pool].load(Ordering::Relaxed) as usize)
        .sum()
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        let pools = pools();
        for (id, pool) in pools.iter().enumerate() {
            let n = self.lens[id].swap(0, Ordering::Relaxed) as usize;
            for &idx in &self.items[id][..n] {
                pool.put_shared(idx);
            }
        }
        CACHE_LENS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| !Arc::ptr_eq(l, &self.lens));
    }
}

enum Origin {
    Pool(&'static BufPool, u32),
    Heap(Layout),
    /// From a thread's recycling cache; the size class.
    Recycled(u8),
}

fn class_layout(class: usize) -> Layout {
    Layout::from_size_align(RECYCLE_BYTES_MIN << class, BUF_ALIGN_BYTES).expect("aligned layout")
}

/// One thread's idle recycled buffers. Each list's capacity is reserved on
/// its first use, for as many buffers as the idle bound allows, so keeping a
/// buffer never allocates.
struct Recycler {
    lists: [Vec<NonNull<u8>>; RECYCLE_CLASSES],
    idle_bytes: usize,
}

impl Recycler {
    fn take(&mut self, class: usize) -> Option<NonNull<u8>> {
        let p = self.lists[class].pop()?;
        self.idle_bytes -= RECYCLE_BYTES_MIN << class;
        Some(p)
    }

    /// Keeps `p` (of `class`), or hands it back when the cache is full.
    fn keep(&mut self, class: usize, p: NonNull<u8>) -> Result<(), NonNull<u8>> {
        let bytes = RECYCLE_BYTES_MIN << class;
        if self.idle_bytes + bytes > RECYCLE_IDLE_BYTES_MAX {
            return Err(p);
        }
        let list = &mut self.lists[class];
        if list.capacity() == 0 {
            list.reserve_exact(RECYCLE_IDLE_BYTES_MAX / bytes);
        }
        list.push(p);
        self.idle_bytes += bytes;
        Ok(())
    }
}

impl Drop for Recycler {
    fn drop(&mut self) {
        for (class, list) in self.lists.iter_mut().enumerate() {
            for p in list.drain(..) {
                // SAFETY: every cached pointer was allocated with this class's layout
                // and is owned by the cache alone.
                unsafe { std::alloc::dealloc(p.as_ptr(), class_layout(class)) }
            }
        }
    }
}

thread_local! {
    static RECYCLER: RefCell<Recycler> = const {
        RefCell::new(Recycler {
            lists: [const { Vec::new() }; RECYCLE_CLASSES],
            idle_bytes: 0,
        })
    };
}

/// An owned, aligned I/O buffer. Moves between layers and threads by value;
/// returns to its pool (or the heap) when dropped.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    origin: Origin,
}

// SAFETY: a DmaBuf is the unique owner of its bytes (pools hand each index to
// one DmaBuf at a time), like a Box<[u8]>, so it can move between threads.
unsafe impl Send for DmaBuf {}
// SAFETY: shared access only reads the bytes through `&self`.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// Allocates a zeroed, aligned buffer on the heap. This allocates: use it
    /// for setup, management and tests, never per I/O.
    pub fn alloc(len: usize) -> DmaBuf {
        let cap = len.max(1).div_ceil(BUF_ALIGN_BYTES) * BUF_ALIGN_BYTES;
        let layout = Layout::from_size_align(cap, BUF_ALIGN_BYTES).expect("aligned layout");
        // SAFETY: layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        DmaBuf {
            ptr,
            len,
            cap,
            origin: Origin::Heap(layout),
        }
    }

    /// An aligned buffer of `len` bytes from this thread's recycling cache (see
    /// the module docs): allocation-free once the cache is warm, for per-I/O
    /// buffers whose sizes vary. The contents are NOT zeroed: they are what
    /// the buffer's previous user left (a fresh one is zeroed). Sizes above
    /// [`RECYCLE_BYTES_MAX`] fall back to [`DmaBuf::alloc`].
    pub fn recycled(len: usize) -> DmaBuf {
        if len > RECYCLE_BYTES_MAX {
            return DmaBuf::alloc(len);
        }
        let class = len
            .max(1)
            .div_ceil(RECYCLE_BYTES_MIN)
            .next_power_of_two()
            .trailing_zeros() as usize;
        let cached = RECYCLER.try_with(|r| r.borrow_mut().take(class)).ok().flatten();
        let ptr = cached.unwrap_or_else(|| {
            let layout = class_layout(class);
            // SAFETY: layout has a non-zero size.
            let p = unsafe { std::alloc::alloc_zeroed(layout) };
            NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
        });
        DmaBuf {
            ptr,
            len,
            cap: RECYCLE_BYTES_MIN << class,
            origin: Origin::Recycled(class as u8),
        }
    }

    /// Capacity in bytes (the visible length can be set up to this).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the visible length. Panics if `len` exceeds the capacity: that is
    /// a bug in the caller, not an operating error.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "DmaBuf::set_len({len}) beyond capacity {}", self.cap);
        self.len = len;
    }

    /// The pool this buffer came from and its index there, if any.
    pub fn pool(&self) -> Option<(&'static BufPool, u32)> {
        match self.origin {
            Origin::Pool(p, i) => Some((p, i)),
            Origin::Heap(_) | Origin::Recycled(_) => None,
        }
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len bytes, initialised (pools come
        // from zeroed mappings, heap buffers are zeroed), uniquely owned.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .field("pool", &self.pool().map(|(p, i)| (p.name.as_str(), i)))
            .finish()
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        match self.origin {
            Origin::Pool(pool, idx) => pool.put(idx),
            Origin::Heap(layout) => {
                // SAFETY: ptr was allocated with exactly this layout in `alloc`.
                unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
            }
            Origin::Recycled(class) => {
                let class = class as usize;
                // A thread that is exiting has no cache any more: free.
                let kept = RECYCLER
                    .try_with(|r| {
                        r.try_borrow_mut()
                            .map_or(Err(self.ptr), |mut r| r.keep(class, self.ptr))
                    })
                    .unwrap_or(Err(self.ptr));
                if let Err(p) = kept {
                    // SAFETY: recycled buffers are allocated with their class's layout in
                    // `recycled`, and this DmaBuf was their only owner.
                    unsafe { std::alloc::dealloc(p.as_ptr(), class_layout(class)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_each_buffer_once_and_takes_it_back() {
        let pool = BufPool::new("t-once", 8, 4096).unwrap();
        let mut bufs: Vec<DmaBuf> = (0..8).map(|_| pool.get().unwrap()).collect();
        assert!(pool.get().is_none(), "exhausted pool must push back");
        let mut idx: Vec<u32> = bufs.iter().map(|b| b.pool().unwrap().1).collect();
        idx.sort();
        assert_eq!(idx, (0..8).collect::<Vec<_>>());
        for (i, b) in bufs.iter_mut().enumerate() {
            assert_eq!(b.as_ptr() as usize % BUF_ALIGN_BYTES, 0);
            b.fill(i as u8);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|&x| x == i as u8), "buffers overlap");
        }
        bufs.truncate(3);
        assert_eq!(pool.free(), 5);
        drop(bufs);
        assert_eq!(pool.free(), 8);
    }

    #[test]
    fn pool_count_follows_pools_without_the_lock() {
        // Other tests make pools concurrently: the count only grows and covers this one.
        let before = pool_count();
        let pool = BufPool::new("t-count", 4, 4096).unwrap();
        let after = pool_count();
        assert!(
            after > before && after > pool.id(),
            "{before} -> {after}, id {}",
            pool.id()
        );
        assert!(pools().len() >= after);
    }

    #[test]
    fn bad_geometry_is_an_error() {
        assert!(BufPool::new("t-bad", 0, 4096).is_err());
        assert!(BufPool::new("t-bad", 4, 1000).is_err());
    }

    #[test]
    fn heap_buffers_are_aligned_and_sized() {
        let mut b = DmaBuf::alloc(5000);
        assert_eq!(b.len(), 5000);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN_BYTES, 0);
        b.set_len(8192);
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn recycled_buffers_are_reused_by_size_class() {
        let a = DmaBuf::recycled(4096);
        assert_eq!((a.len(), a.capacity()), (4096, 4096));
        assert_eq!(a.as_ptr() as usize % BUF_ALIGN_BYTES, 0);
        let pa = a.as_ptr();
        drop(a);
        // Same class (4 KiB): the same memory comes back.
        let b = DmaBuf::recycled(512);
        assert_eq!((b.len(), b.capacity()), (512, 4096));
        assert_eq!(b.as_ptr(), pa);
        // 5000 bytes is the 8 KiB class: another buffer.
        let c = DmaBuf::recycled(5000);
        assert_eq!(c.capacity(), 8192);
        assert_ne!(c.as_ptr(), pa);
        // Above the largest class: a plain heap buffer.
        let d = DmaBuf::recycled(RECYCLE_BYTES_MAX + 1);
        assert!(d.capacity() > RECYCLE_BYTES_MAX);
        drop((b, c, d));
    }

    #[test]
    fn recycled_cache_is_bounded() {
        std::thread::spawn(|| {
            let n = RECYCLE_IDLE_BYTES_MAX / RECYCLE_BYTES_MAX + 4;
            let bufs: Vec<DmaBuf> = (0..n).map(|_| DmaBuf::recycled(RECYCLE_BYTES_MAX)).collect();
            drop(bufs);
            let idle = RECYCLER.with(|r| r.borrow().idle_bytes);
            assert_eq!(
                idle, RECYCLE_IDLE_BYTES_MAX,
                "the cache keeps up to its bound and frees the rest"
            );
        })
        .join()
        .unwrap();
    }

    /// A reactor keeps returned buffers of a large pool in its own cache; they
    /// still count as free, and go back to the pool when the reactor stops.
    #[test]
    fn reactor_caches_count_as_free_and_return_at_exit() {
        use crate::reactor::{IdleMode, ReactorOpts, Reactors};
        let pool = BufPool::new("t-cache", THREAD_CACHE_POOL_MIN, 4096).unwrap();
        let r = Reactors::start(ReactorOpts {
            cores: vec![0],
            pin: false,
            idle: IdleMode::Poll,
        })
        .unwrap();
        let max = thread_cache_bufs(THREAD_CACHE_POOL_MIN);
        r.run_on(0, move || {
            let bufs: Vec<DmaBuf> = (0..2 * max).map(|_| pool.get().unwrap()).collect();
            drop(bufs);
        })
        .unwrap();
        assert_eq!(pool.free(), THREAD_CACHE_POOL_MIN);
        if pool.env() == crate::env::EnvKind::Baton {
            assert_eq!(cached_count(pool.id()), max, "the reactor kept its share");
        }
        r.shutdown();
        r.wait();
        assert_eq!(pool.free(), THREAD_CACHE_POOL_MIN);
        if pool.env() == crate::env::EnvKind::Baton {
            assert_eq!(cached_count(pool.id()), 0, "the cache went back at exit");
        }
        let all: Vec<DmaBuf> = (0..THREAD_CACHE_POOL_MIN).map(|_| pool.get().unwrap()).collect();
        assert!(pool.get().is_none());
        drop(all);
    }

    #[test]
    fn buffers_return_from_other_threads() {
        let pool = BufPool::new("t-threads", 4, 4096).unwrap();
        let bufs: Vec<DmaBuf> = (0..4).map(|_| pool.get().unwrap()).collect();
        std::thread::spawn(move || drop(bufs)).join().unwrap();
        assert_eq!(pool.free(), 4);
    }
}
