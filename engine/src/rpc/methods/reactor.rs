//! Reactor methods with SPDK's names and result shapes: `framework_get_reactors`
//! and `thread_get_stats`. baton has no lightweight threads: each reactor is one
//! pinned thread, shown as one "thread" named `reactor_<core>`.
//!
//! Both read the reactors' relaxed stats counters from the management thread
//! (`engine::reactor::stats`); no message is sent, so a busy data path is not
//! disturbed. Times are in nanoseconds, announced as `tick_rate` 1e9.

use serde_json::{json, Value};

use crate::reactor::{self, ReactorStats};
use crate::rpc::registry::Registry;

/// Ticks per second of every time value these methods report (ns).
pub const TICK_RATE_HZ: u64 = 1_000_000_000;

fn cpumask_of(core: u32) -> String {
    format!("{:x}", 1u128 << core.min(127))
}

fn reactor_entry(s: &ReactorStats) -> Value {
    json!({
        "lcore": s.core,
        "busy": s.busy_ns,
        "idle": s.idle_ns,
        "in_interrupt": false,
        "loops": s.loops,
        "msgs": s.msgs,
        "sleeps": s.sleeps,
        "lw_threads": [{
            "name": format!("reactor_{}", s.core),
            "id": s.core,
            "cpumask": cpumask_of(s.core),
            "elapsed": s.busy_ns + s.idle_ns,
        }],
        "pollers": s.pollers.iter().map(|p| json!({
            "id": p.id, "name": p.name, "period_us": p.period_us,
        })).collect::<Vec<_>>(),
    })
}

fn thread_entry(s: &ReactorStats) -> Value {
    let timed = s.pollers.iter().filter(|p| p.period_us.is_some()).count();
    json!({
        "name": format!("reactor_{}", s.core),
        "id": s.core,
        "cpumask": cpumask_of(s.core),
        "busy": s.busy_ns,
        "idle": s.idle_ns,
        "active_pollers_count": s.pollers.len() - timed,
        "timed_pollers_count": timed,
        "paused_pollers_count": 0,
    })
}

/// Register the reactor methods.
pub fn register_rpcs(reg: &mut Registry) {
    reg.register(
        "framework_get_reactors",
        "List the reactors with busy/idle time (ns), pollers and message counts",
        |_: ()| {
            Ok(json!({
                "tick_rate": TICK_RATE_HZ,
                "pid": std::process::id(),
                "reactors": reactor::stats().iter().map(reactor_entry).collect::<Vec<_>>(),
            }))
        },
    );
    reg.register(
        "thread_get_stats",
        "Busy/idle time (ns) and poller counts of each reactor thread",
        |_: ()| {
            Ok(json!({
                "tick_rate": TICK_RATE_HZ,
                "threads": reactor::stats().iter().map(thread_entry).collect::<Vec<_>>(),
            }))
        },
    );
}
