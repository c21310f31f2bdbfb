//! The single place where wire structs are viewed as bytes and read back from bytes.

#[cfg(not(target_endian = "little"))]
compile_error!("baton's NVMe wire structs assume a little-endian host, as NVMe's wire format is");

/// Plain wire data: any bit pattern is a valid value and there is no padding.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs made of integers and arrays of integers whose
/// size assertion proves there is no padding (`size_of` equals the sum of the fields).
pub unsafe trait Plain: Copy + Sized + 'static {
    /// The value's bytes, as they go on the wire.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Self is repr(C) plain data without padding (trait contract), so all
        // size_of::<Self>() bytes are initialized and readable for the borrow's lifetime.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), core::mem::size_of::<Self>()) }
    }

    /// The value's bytes, mutable (used to build identify and log pages in place).
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in as_bytes; every bit pattern is a valid Self, so any write is fine.
        unsafe { core::slice::from_raw_parts_mut((self as *mut Self).cast::<u8>(), core::mem::size_of::<Self>()) }
    }

    /// Reads a value from the first `size_of::<Self>()` bytes; `None` if `bytes` is shorter.
    fn read_from(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked above; read_unaligned has no alignment requirement
        // and every bit pattern is a valid Self (trait contract).
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The all-zero value.
    fn zeroed() -> Self {
        // SAFETY: all-zero bytes are a valid Self (trait contract: plain integers).
        unsafe { core::mem::zeroed() }
    }
}
