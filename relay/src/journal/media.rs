//! What kind of medium a segment file lives on: the one `fstatfs` call the journal makes.
//!
//! On a memory file system (tmpfs, ramfs) a write into the page cache *is* the store:
//! `fdatasync` there is the kernel's `noop_fsync` and O_DIRECT is emulated by buffered
//! copies. The journal then skips both. That changes no guarantee (tmpfs holds nothing
//! across power loss either way; `/dev/shm` stands in for the relay's NVRAM), and it takes
//! the io-wq worker hop out of every group commit: io_uring always runs `IORING_OP_FSYNC`
//! on a kernel worker thread, which on a machine whose cores are all busy polling costs
//! tens of microseconds for a call that does nothing.

use std::fs::File;
use std::os::fd::AsRawFd;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Whether `file` lives on a memory file system (tmpfs or ramfs). `false` when unsure.
pub fn is_memory_fs(file: &File) -> bool {
    // SAFETY: `statfs` is plain old data, so an all-zero value is valid; `fstatfs` writes
    // at most `size_of::<statfs>()` bytes into it and reads nothing else; the fd stays
    // open for the call because `file` is borrowed.
    let (rc, st) = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        let rc = libc::fstatfs(file.as_raw_fd(), &mut st);
        (rc, st)
    };
    #[allow(clippy::unnecessary_cast)] // f_type is i64 on x86_64, u32/i32 elsewhere
    let t = st.f_type as i64;
    rc == 0 && (t == TMPFS_MAGIC || t == RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_shm_is_memory_and_the_build_dir_is_not() {
        if let Ok(f) = File::open("/dev/shm") {
            assert!(is_memory_fs(&f), "/dev/shm is tmpfs on Debian");
        }
        let here = File::open(env!("CARGO_MANIFEST_DIR")).unwrap();
        let on_tmpfs = std::env::var("CARGO_TARGET_DIR").is_ok_and(|d| d.starts_with("/dev/shm"));
        if !on_tmpfs && !env!("CARGO_MANIFEST_DIR").starts_with("/dev/shm") {
            assert!(!is_memory_fs(&here));
        }
    }
}
