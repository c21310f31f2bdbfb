//! `DataRef`: a borrowed view of bytes whose owner is kept alive by a protocol, not by the
//! type system; the one `unsafe` module of the replication data path.
//!
//! Where it sits: the primary's replicated volume hands the caller's write buffer to the
//! local bdev (which takes the `DmaBuf` by value) and, at the same time, to every relay
//! connection (which take their data segments by value). Copying 4 KiB per relay per write
//! is what this avoids: the relay sends carry `DataRef`s pointing at the same bytes. The
//! owner (the volume channel's slot, or the volume's retention ring) promises not to release
//! or overwrite the bytes until every `DataRef` to them has been handed back by the
//! transport (`SendCompletion`), which the volume counts per operation (`refs`).

use core::ops::Deref;
use core::ptr::NonNull;

/// A pointer and length into bytes that stay valid and unmodified while any copy of this
/// value is alive (see the module docs for who guarantees it). Plain data: `Copy`.
#[derive(Clone, Copy, Debug)]
pub struct DataRef {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `DataRef` only reads bytes that nobody writes while it lives (the protocol of
// the module docs), so reading them from another thread is as safe as sharing `&[u8]`.
unsafe impl Send for DataRef {}

impl DataRef {
    /// No bytes.
    pub const EMPTY: DataRef = DataRef {
        ptr: NonNull::dangling(),
        len: 0,
    };

    /// A view of `bytes`.
    ///
    /// # Safety
    /// The caller guarantees that `bytes` stay allocated and unmodified until every copy
    /// of the returned value is dropped.
    pub unsafe fn new(bytes: &[u8]) -> DataRef {
        match NonNull::new(bytes.as_ptr() as *mut u8) {
            Some(ptr) if !bytes.is_empty() => DataRef { ptr, len: bytes.len() },
            _ => DataRef::EMPTY,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Deref for DataRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `new`'s contract keeps `len` bytes at `ptr` allocated and unmodified for
        // as long as this value exists; EMPTY is a dangling, aligned pointer with len 0.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// A data segment of a frame on its way to a relay or standby: the bytes plus the LSN of
/// the operation they belong to, so the send completion returns the reference to the right
/// owner.
#[derive(Clone, Copy, Debug)]
pub struct SegRef {
    /// The bytes.
    pub data: DataRef,
    /// LSN of the op the bytes belong to.
    pub lsn: u64,
}

impl Deref for SegRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_bytes_and_empty() {
        let v = vec![1u8, 2, 3];
        // SAFETY: `v` outlives `d`.
        let d = unsafe { DataRef::new(&v) };
        assert_eq!(&*d, &[1, 2, 3]);
        // SAFETY: an empty slice has nothing to keep alive.
        let e = unsafe { DataRef::new(&[]) };
        assert!(e.is_empty() && DataRef::EMPTY.is_empty());
        assert_eq!(&*e, &[] as &[u8]);
    }
}
