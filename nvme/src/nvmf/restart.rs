//! Restart points in band: the NVMe/TCP target's side of the restart-point hook. The
//! registry, the sink trait and its errors live in `engine::bdev::restart` (so the `relay`
//! crate's replicated volume registers without depending on `nvme`); this maps the errors to
//! NVMe statuses. An I/O queue looks the sink up by its namespace's bdev name and again
//! whenever the registry changed; the vendor-specific I/O command
//! [`RESTART_POINT`](crate::spec::cmd::io_opc::RESTART_POINT) (opcode 81h) then calls
//! [`RestartPointSink::declare`]. Wire format and semantics: `docs/restart-points.md`.

pub use engine::bdev::restart::*;

use crate::spec::Status;

/// The NVMe status a Restart Point (or Flush-as-restart-point) command completes with.
pub fn status(e: &RestartPointError) -> Status {
    match e {
        // Retryable: the relays may come back.
        RestartPointError::PolicyUnmet(_) => Status::NAMESPACE_NOT_READY,
        RestartPointError::InvalidTag(_) => Status::INVALID_FIELD,
        RestartPointError::Failed(_) => Status::INTERNAL_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(
            status(&RestartPointError::PolicyUnmet("x".into())),
            Status::NAMESPACE_NOT_READY
        );
        assert!(!status(&RestartPointError::PolicyUnmet(String::new())).dnr, "retryable");
        assert_eq!(
            status(&RestartPointError::InvalidTag("x".into())),
            Status::INVALID_FIELD
        );
        assert_eq!(status(&RestartPointError::Failed("x".into())), Status::INTERNAL_ERROR);
    }
}
