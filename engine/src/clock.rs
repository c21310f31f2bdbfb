//! The monotonic clock every timestamp in baton is taken from.
//!
//! `CLOCK_MONOTONIC` through the vDSO (`std::time::Instant`), expressed as
//! nanoseconds since the first call in this process, so timestamps are plain
//! `u64`s that fit in request objects and histograms without conversion.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's clock epoch. Callable from any thread;
/// costs one vDSO `clock_gettime` (~20-30 ns here), so the data path takes one
/// timestamp per poll batch, not per I/O, where the difference matters.
#[inline]
pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    Instant::now().duration_since(epoch).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
