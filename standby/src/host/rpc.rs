//! The standby host's RPC methods: `standby_host_get_status`,
//! `standby_host_declare_failure`.

use super::{global, StandbyHost};
use engine::rpc::{Registry, RpcError};
use serde::Deserialize;
use std::sync::Arc;

/// `standby_host_declare_failure` parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclareParams {
    #[serde(default)]
    pub reason: Option<String>,
    /// Fail over even to standbys that are not valid targets, and retry a failed failover.
    #[serde(default)]
    pub force: bool,
}

fn no_host() -> RpcError {
    RpcError::new(
        engine::rpc::error::INVALID_STATE,
        "this process runs no standby host (start `baton standby` with --failover-nqn / --heartbeat-listen)",
    )
}

fn host_methods(reg: &mut Registry, get: impl Fn() -> Option<Arc<StandbyHost>> + Send + Sync + Clone + 'static) {
    let g = get.clone();
    reg.register(
        "standby_host_get_status",
        "Standby host: failure detector state (direct heartbeats, relay reports) and the failover \
         timeline (detected, rolled back, promoted, exported, application started; RTO)",
        move |_: ()| Ok(g().ok_or_else(no_host)?.status()),
    );
    reg.register(
        "standby_host_declare_failure",
        "Declare the primary failed (optional reason): roll back, promote, export and restart the application",
        move |p: DeclareParams| {
            let h = get().ok_or_else(no_host)?;
            h.declare_failure(p.reason.as_deref().unwrap_or("declared by RPC"), p.force)
                .map_err(|e| RpcError::errno_detail(libc::EALREADY, e))?;
            Ok(true)
        },
    );
}

/// Registers `standby_host_get_status` and `standby_host_declare_failure` acting on the
/// process's host ([`global`], set by [`StandbyHost::start`]).
pub fn register_rpcs(reg: &mut Registry) {
    host_methods(reg, global);
}

/// As [`register_rpcs`], acting on `host` (tests).
pub fn register_rpcs_for(reg: &mut Registry, host: Arc<StandbyHost>) {
    host_methods(reg, move || Some(host.clone()));
}
