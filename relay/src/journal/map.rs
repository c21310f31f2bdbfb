//! A segment file of a memory-media journal mapped into the relay's address space: records
//! are encoded straight into the file's pages (one user-space copy from the receive buffer,
//! no staging copy, no `pwrite` walking the page cache page by page). A `MAP_SHARED`
//! mapping of a tmpfs file writes the page cache itself, so what is copied survives the
//! process (`kill -9`) exactly as a `pwrite` would.
//!
//! The only `unsafe` of the journal: `mmap`/`munmap` and the slice over the mapping.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A read-write shared mapping of the first `len` bytes of a file.
pub(super) struct SegmentMap {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the journal that owns it is
// used by one thread at a time (a reactor), and moving it between threads moves nothing.
unsafe impl Send for SegmentMap {}

impl SegmentMap {
    /// Maps `file`, which must be at least `len` bytes long. `populate` prefaults the pages
    /// (worth it for a reused file, whose pages exist: one call instead of a fault per page).
    pub(super) fn new(file: &File, len: usize, populate: bool) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let flags = libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: a new mapping chosen by the kernel (addr null) of a file descriptor that is
        // open for the duration of the call; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr: ptr.cast(), len })
    }

    /// Bytes mapped.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The `n` bytes at `at`, to write a record into. `None` when they are not all mapped.
    pub(super) fn slice_mut(&mut self, at: usize, n: usize) -> Option<&mut [u8]> {
        let end = at.checked_add(n)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `at..end` lies inside the mapping (checked), which lives as long as `self`;
        // the `&mut self` borrow makes this the only Rust reference into it. The kernel may
        // read other (earlier, durable) bytes of the file for forwarding reads meanwhile:
        // those are never the bytes being written.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), n) })
    }
}

impl Drop for SegmentMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned; no slice into the mapping
        // outlives `self` (they borrow it).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}
