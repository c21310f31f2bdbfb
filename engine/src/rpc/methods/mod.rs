//! The methods the engine itself serves. Other crates add theirs with their own
//! `register_rpcs(&mut Registry)`.

pub mod bdev;
pub mod framework;
pub mod logging;
pub mod reactor;

use super::registry::Registry;

/// Register every engine method on `reg`.
pub fn register_rpcs(reg: &mut Registry) {
    framework::register_rpcs(reg);
    logging::register_rpcs(reg);
    reactor::register_rpcs(reg);
    bdev::register_rpcs(reg);
}
