//! What kind of medium a segment file lives on.
//!
//! On a memory file system (tmpfs, ramfs) a write into the page cache *is* the store:
//! `fdatasync` there is the kernel's `noop_fsync` and O_DIRECT is emulated by buffered
//! copies. The journal then skips both and stores each batch with one `pwrite` on the
//! reactor. That changes no guarantee (tmpfs holds nothing across power loss either way;
//! `/dev/shm` stands in for the relay's NVRAM), and it takes the io-wq worker hops out of
//! every group commit: io_uring always runs `IORING_OP_FSYNC` on a kernel worker thread,
//! and tmpfs has no non-blocking buffered-write path either, which on a machine whose
//! cores are all busy polling cost ~50 µs per commit for calls that do nothing.

pub use engine::is_memory_fs;
