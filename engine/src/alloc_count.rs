//! A counting global allocator for tests and benchmarks that prove a path allocates
//! nothing: install [`CountingAllocator`] as a binary's `#[global_allocator]`, then read
//! [`allocations`] (every thread of the process) or [`thread_allocations`] (the calling
//! thread) before and after the work. Allocations and reallocations count; frees do not.
//! It forwards everything to the system allocator and costs one relaxed atomic add and
//! one thread-local add per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static PROCESS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Const-initialized and without a destructor: usable from inside the allocator.
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

/// Allocations (and reallocations) by every thread since the process started.
pub fn allocations() -> u64 {
    PROCESS.load(Ordering::Relaxed)
}

/// Allocations (and reallocations) by the calling thread since it started.
pub fn thread_allocations() -> u64 {
    THREAD.with(Cell::get)
}

fn count() {
    PROCESS.fetch_add(1, Ordering::Relaxed);
    THREAD.with(|c| c.set(c.get() + 1));
}

/// See the module documentation.
pub struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are an
// atomic and a const-initialized thread-local Cell, neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, n) }
    }
}
