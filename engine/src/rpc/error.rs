//! JSON-RPC error values: the `error` member of a response.
//!
//! Sits at the end of the management path: a handler, the request parser or the
//! dispatcher produces an [`RpcError`], the server serializes it as
//! `{"code": …, "message": …}`. Codes follow JSON-RPC 2.0 for protocol errors and
//! SPDK's convention (a negative errno, message = `strerror`) for application errors,
//! so scripts written against SPDK's `rpc.py` see the same numbers.

use serde::{Deserialize, Serialize};

/// JSON-RPC 2.0: the bytes are not valid JSON (the connection is closed after it).
pub const PARSE_ERROR: i32 = -32700;
/// JSON-RPC 2.0: valid JSON that is not a request object.
pub const INVALID_REQUEST: i32 = -32600;
/// JSON-RPC 2.0: no method of that name is registered.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// JSON-RPC 2.0: the params do not decode into the method's parameter type.
pub const INVALID_PARAMS: i32 = -32602;
/// JSON-RPC 2.0: the server failed for a reason that is not the caller's.
pub const INTERNAL_ERROR: i32 = -32603;
/// SPDK: the method exists but may not be called in the current framework state.
pub const INVALID_STATE: i32 = -1;

/// One JSON-RPC error. Created on the management thread by the dispatcher or a
/// handler; owned by the response it is written into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("JSON-RPC error {code}: {message}")]
pub struct RpcError {
    /// JSON-RPC code: one of the constants above or a negative errno.
    pub code: i32,
    /// Human-readable text naming what was wrong and the value received.
    pub message: String,
}

impl RpcError {
    /// An error with an explicit code and message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// `-32602 Invalid parameters: <detail>`.
    pub fn invalid_params(detail: impl std::fmt::Display) -> Self {
        RpcError::new(INVALID_PARAMS, format!("Invalid parameters: {detail}"))
    }

    /// `-32603 Internal error: <detail>`.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        RpcError::new(INTERNAL_ERROR, format!("Internal error: {detail}"))
    }

    /// SPDK's application error: code `-errno`, message `strerror(errno)`,
    /// e.g. `errno(libc::ENODEV)` is `-19 No such device`.
    pub fn errno(errno: i32) -> Self {
        RpcError::new(-errno.abs(), strerror(errno.abs()))
    }

    /// Like [`RpcError::errno`] with the standard text followed by a detail that names
    /// the object, e.g. `-17 File exists: bdev 'Malloc0'`.
    pub fn errno_detail(errno: i32, detail: impl std::fmt::Display) -> Self {
        RpcError::new(-errno.abs(), format!("{}: {detail}", strerror(errno.abs())))
    }
}

/// The C library's text for `errno` without Rust's " (os error N)" suffix.
pub fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_matches_spdk_text() {
        let e = RpcError::errno(libc::ENODEV);
        assert_eq!(e.code, -19);
        assert_eq!(e.message, "No such device");
        let e = RpcError::errno(-libc::EEXIST);
        assert_eq!(e.code, -17);
        assert_eq!(e.message, "File exists");
        assert_eq!(RpcError::errno(libc::EINVAL).message, "Invalid argument");
    }

    #[test]
    fn serializes_as_code_and_message() {
        let v = serde_json::to_value(RpcError::new(METHOD_NOT_FOUND, "Method not found")).unwrap();
        assert_eq!(v, serde_json::json!({"code": -32601, "message": "Method not found"}));
    }
}
