//! Log level methods with SPDK's names and shapes: `log_set_level` / `log_get_level` and
//! `log_set_print_level` / `log_get_print_level`. baton has one log output (stderr through
//! the `log` crate), so both pairs act on the same level: `log::set_max_level`.
//!
//! SPDK's levels map to `log`'s: DISABLED → off, ERROR → error, WARNING → warn, NOTICE and
//! INFO → info, DEBUG → debug. The name last set is what the getters report, so a NOTICE
//! set reads back as NOTICE. The logger's own filter (`BATON_LOG` in the `baton` binary)
//! still applies: records it drops at start-up stay dropped.

use serde::Deserialize;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::rpc::error::RpcError;
use crate::rpc::registry::{Registry, StateMask};

/// SPDK's level names, most severe first; the index is what [`LEVEL`] stores.
pub const LEVELS: [&str; 6] = ["DISABLED", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"];

/// Index into [`LEVELS`] of the level last set; `u8::MAX` until a set (then the getters
/// derive the name from `log::max_level()`).
static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);

fn filter_of(i: usize) -> log::LevelFilter {
    match i {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 | 4 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    }
}

/// Sets the level by SPDK name (case-insensitive). Errors name the accepted values.
pub fn set_level(name: &str) -> Result<(), RpcError> {
    let i = LEVELS
        .iter()
        .position(|l| l.eq_ignore_ascii_case(name))
        .ok_or_else(|| RpcError::invalid_params(format!("level {name:?}: expected one of {}", LEVELS.join(", "))))?;
    log::set_max_level(filter_of(i));
    LEVEL.store(i as u8, Ordering::Relaxed);
    Ok(())
}

/// The current level's SPDK name.
pub fn get_level() -> &'static str {
    let i = LEVEL.load(Ordering::Relaxed) as usize;
    if i < LEVELS.len() && filter_of(i) == log::max_level() {
        return LEVELS[i];
    }
    match log::max_level() {
        log::LevelFilter::Off => "DISABLED",
        log::LevelFilter::Error => "ERROR",
        log::LevelFilter::Warn => "WARNING",
        log::LevelFilter::Info => "INFO",
        log::LevelFilter::Debug | log::LevelFilter::Trace => "DEBUG",
    }
}

/// `log_set_level` / `log_set_print_level` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLevel {
    pub level: String,
}

/// Register the log methods.
pub fn register_rpcs(reg: &mut Registry) {
    for (set, get) in [
        ("log_set_level", "log_get_level"),
        ("log_set_print_level", "log_get_print_level"),
    ] {
        reg.register(
            set,
            "Set the log level (level: DISABLED, ERROR, WARNING, NOTICE, INFO or DEBUG)",
            |p: SetLevel| set_level(&p.level).map(|()| true),
        )
        .states(StateMask::ANY);
        reg.register(get, "Get the log level (an SPDK level name)", |_: ()| {
            Ok::<_, RpcError>(get_level())
        })
        .states(StateMask::ANY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_and_bad_names_are_refused() {
        let before = log::max_level();
        for name in LEVELS {
            set_level(&name.to_lowercase()).unwrap();
            assert_eq!(get_level(), name);
        }
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
        let e = set_level("verbose").unwrap_err();
        assert!(e.message.contains("NOTICE"), "{}", e.message);
        assert_eq!(get_level(), "DEBUG");
        log::set_max_level(before);
    }
}
