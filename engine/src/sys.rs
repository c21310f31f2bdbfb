//! The few raw OS calls the engine makes that std does not wrap: anonymous
//! memory mappings (optionally hugepage-backed) and block-device geometry
//! ioctls. Every `unsafe` block of the engine outside the buffer and malloc
//! modules lives here, each with the reason it is sound.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// 2 MiB: the hugepage size this engine asks for with `MAP_HUGETLB`.
pub const HUGEPAGE_BYTES: usize = 2 << 20;

/// A private anonymous mapping, zero-filled by the kernel, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    pub hugepages: bool,
}

// SAFETY: the mapping is plain memory owned by this value; moving the owner
// between threads does not invalidate it.
unsafe impl Send for Mapping {}
// SAFETY: `Mapping` hands out only raw pointers; whoever writes through them
// is responsible for synchronisation (the pools hand each buffer to one owner).
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes. With `try_hugepages`, asks for 2 MiB pages first
    /// (rounding `len` up) and falls back to 4 KiB pages if none are reserved.
    pub fn anonymous(len: usize, try_hugepages: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero-length mapping"));
        }
        if try_hugepages {
            let huge_len = len.div_ceil(HUGEPAGE_BYTES) * HUGEPAGE_BYTES;
            if let Ok(mut m) = Self::map(huge_len, libc::MAP_HUGETLB) {
                // Set the flag on `m` itself: `Mapping { hugepages: true, ..m }` would copy
                // ptr and len out of `m` and then drop (munmap) it, handing out a mapping
                // that no longer exists.
                m.hugepages = true;
                return Ok(m);
            }
        }
        Self::map(len, 0)
    }

    fn map(len: usize, extra_flags: libc::c_int) -> io::Result<Mapping> {
        // SAFETY: a fresh private anonymous mapping at a kernel-chosen address
        // aliases no Rust object; the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p as *mut u8).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping {
            ptr,
            len,
            hugepages: false,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (a mapping has at least one byte); for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, unmapped once here;
        // owners guarantee no buffer into the mapping outlives it.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

/// Number of hugepages the kernel has reserved (`/proc/sys/vm/nr_hugepages`).
pub fn hugepages_reserved() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Logical block size and byte size of an open block device.
pub fn block_device_geometry(f: &std::fs::File) -> io::Result<(u32, u64)> {
    let mut lbs: libc::c_int = 0;
    let mut bytes: u64 = 0;
    // SAFETY: BLKSSZGET writes one c_int through the pointer, which points at
    // a live local of that type; the fd is open for the duration of the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKSSZGET, &mut lbs as *mut libc::c_int) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at
    // a live local of that type.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut bytes as *mut u64) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lbs as u32, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_zeroed_and_writable() {
        let m = Mapping::anonymous(1 << 20, false).unwrap();
        assert_eq!(m.len(), 1 << 20);
        // SAFETY: the mapping is 1 MiB, owned by this test, read/write.
        let s = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), m.len()) };
        assert!(s.iter().all(|&b| b == 0));
        s[12345] = 7;
        assert_eq!(s[12345], 7);
    }

    #[test]
    fn zero_length_is_rejected() {
        assert!(Mapping::anonymous(0, false).is_err());
    }
}

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Whether `f` lives on a memory file system (tmpfs, ramfs); `false` when unsure.
///
/// There a write into the page cache *is* the store: `fdatasync` is the kernel's
/// `noop_fsync`, O_DIRECT is emulated by buffered copies, and tmpfs has no non-blocking
/// path for io_uring, which therefore hands every read and write to an io-wq kernel
/// worker. Callers that poll (the uring bdev, the relay journal) copy inline instead.
pub fn is_memory_fs(f: &std::fs::File) -> bool {
    // SAFETY: `statfs` is plain old data, so an all-zero value is valid; `fstatfs` writes
    // at most `size_of::<statfs>()` bytes into it; the fd is open for the call because
    // `f` is borrowed.
    let (rc, st) = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        let rc = libc::fstatfs(f.as_raw_fd(), &mut st);
        (rc, st)
    };
    #[allow(clippy::unnecessary_cast)] // f_type is i64 on x86_64, narrower elsewhere
    let t = st.f_type as i64;
    rc == 0 && (t == TMPFS_MAGIC || t == RAMFS_MAGIC)
}

/// `fallocate(2)` on `f` (e.g. `PUNCH_HOLE | KEEP_SIZE`), for callers that do it inline.
pub fn fallocate(f: &std::fs::File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate takes the fd and three integers and touches no memory of ours.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as libc::off_t, len as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod mapping_tests {
    use super::*;

    /// Both paths: 4 KiB pages always, hugepages when some are reserved (`ci/test.sh`
    /// runs the engine's tests a second time with hugepages reserved for this).
    #[test]
    fn a_mapping_is_usable_over_its_whole_length_until_dropped() {
        for try_huge in [false, true] {
            let m = Mapping::anonymous(HUGEPAGE_BYTES + 4096, try_huge).unwrap();
            assert!(m.len() >= HUGEPAGE_BYTES + 4096);
            // Other tests running at the same time may hold every reserved hugepage, so
            // the 4 KiB fallback is legitimate here; a hugepage mapping must be whole pages.
            if m.hugepages {
                assert_eq!(m.len() % HUGEPAGE_BYTES, 0);
            }
            // SAFETY: the mapping is m.len() bytes, owned here and not shared.
            let bytes = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), m.len()) };
            assert!(bytes.iter().all(|&b| b == 0), "anonymous memory starts zeroed");
            bytes.fill(0xA5);
            assert!(bytes.iter().all(|&b| b == 0xA5));
        }
    }
}

#[cfg(test)]
mod fs_tests {
    #[test]
    fn dev_shm_is_memory_and_the_source_tree_is_not() {
        if let Ok(f) = std::fs::File::open("/dev/shm") {
            assert!(super::is_memory_fs(&f), "/dev/shm is tmpfs on Debian");
        }
        let src = env!("CARGO_MANIFEST_DIR");
        if !src.starts_with("/dev/shm") && !src.starts_with("/tmp") {
            assert!(!super::is_memory_fs(&std::fs::File::open(src).unwrap()));
        }
    }
}
