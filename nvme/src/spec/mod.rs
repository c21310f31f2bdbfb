//! NVMe base and NVMe-oF specification types: the bytes every transport carries.
//!
//! Everything here is plain data: `#[repr(C)]` structs made only of little-endian integers and
//! byte arrays, each with a size assertion and offset tests against the specification. They are
//! converted from and to bytes with [`Plain`], the one place that reinterprets memory. Nothing
//! here allocates or touches the engine, so the codec and the fuzz target use it directly.

pub mod auth;
pub mod cmd;
pub mod fabrics;
pub mod identify;
pub mod log;
mod plain;
pub mod status;

pub use cmd::{Cqe, Sgl, Sqe};
pub use plain::Plain;
pub use status::Status;

/// Copies `s` into a fixed, space- or zero-padded ASCII field (serial, model, NQN...).
/// Longer input is cut at the field's size.
pub fn put_str(field: &mut [u8], s: &str, pad: u8) {
    field.fill(pad);
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Reads a NUL- or space-padded ASCII field back into a string (lossy for non-UTF-8 bytes).
pub fn get_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).trim_end().to_string()
}
