//! Framework methods with SPDK's names, params and result shapes: version, method
//! list, init wait, config save/inspection, and `spdk_kill_instance`.
//! Handlers run on the management thread.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rpc::config::{save_config, ConfigFile};
use crate::rpc::error::{RpcError, INVALID_PARAMS};
use crate::rpc::registry::{ConfigEntry, Registry, Reply, RpcState, StateMask};

/// `spdk_get_version` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub version: String,
    pub fields: VersionFields,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionFields {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub suffix: String,
}

/// `rpc_get_methods` params.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetMethodsParams {
    /// Only methods callable in the current state.
    #[serde(default)]
    pub current: bool,
    /// Include deprecated aliases.
    #[serde(default)]
    pub include_aliases: bool,
}

/// `framework_get_config` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetConfigParams {
    /// Subsystem name.
    pub name: String,
    /// Accepted for rpc.py compatibility; baton never emits batches in configs.
    #[serde(default)]
    pub with_batches: bool,
}

/// One `framework_get_subsystems` element.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsystemInfo {
    pub subsystem: String,
    pub depends_on: Vec<String>,
}

/// Signals `spdk_kill_instance` accepts (SPDK's list).
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KillSignal {
    SIGINT,
    SIGTERM,
    SIGQUIT,
    SIGHUP,
    SIGKILL,
    SIGUSR1,
}

impl KillSignal {
    pub fn number(self) -> i32 {
        match self {
            KillSignal::SIGINT => libc::SIGINT,
            KillSignal::SIGTERM => libc::SIGTERM,
            KillSignal::SIGQUIT => libc::SIGQUIT,
            KillSignal::SIGHUP => libc::SIGHUP,
            KillSignal::SIGKILL => libc::SIGKILL,
            KillSignal::SIGUSR1 => libc::SIGUSR1,
        }
    }
}

/// `spdk_kill_instance` params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillParams {
    pub sig_name: KillSignal,
}

/// The running version, in SPDK's shape.
pub fn version() -> Version {
    let num = |s: &str| s.parse().unwrap_or(0);
    Version {
        version: format!("baton v{}", env!("CARGO_PKG_VERSION")),
        fields: VersionFields {
            major: num(env!("CARGO_PKG_VERSION_MAJOR")),
            minor: num(env!("CARGO_PKG_VERSION_MINOR")),
            patch: num(env!("CARGO_PKG_VERSION_PATCH")),
            suffix: env!("CARGO_PKG_VERSION_PRE").to_string(),
        },
    }
}

/// Register the framework methods.
pub fn register_rpcs(reg: &mut Registry) {
    reg.register(
        "spdk_get_version",
        "Get the version of the running baton (SPDK-compatible shape)",
        |_: ()| Ok(version()),
    )
    .states(StateMask::ANY);

    reg.register_with(
        "rpc_get_methods",
        "List the methods this server answers (current: only those callable now; include_aliases)",
        |reg: &Registry, p: Option<GetMethodsParams>| {
            let p = p.unwrap_or_default();
            let state = reg.state().get();
            Ok(reg
                .methods()
                .filter(|m| p.include_aliases || m.alias_of.is_none())
                .filter(|m| !p.current || m.states.allows(state))
                .map(|m| m.name.clone())
                .collect::<Vec<_>>())
        },
    )
    .states(StateMask::ANY);

    reg.register_deferred(
        "framework_wait_init",
        "Return true once initialization is complete (immediately if it is)",
        |reg: &Registry, _: ()| {
            let state = reg.state().clone();
            if state.get() == RpcState::Runtime {
                return Reply::Ready(Ok(Value::Bool(true)));
            }
            Reply::Later(Box::new(move || {
                (state.get() == RpcState::Runtime).then_some(Ok(Value::Bool(true)))
            }))
        },
    )
    .states(StateMask::ANY);

    reg.register_with(
        "save_config",
        "Return the current configuration of every subsystem in JSON config format",
        |reg: &Registry, _: ()| -> Result<ConfigFile, RpcError> { Ok(save_config(reg)) },
    );

    reg.register_with(
        "framework_get_subsystems",
        "List the subsystems and their dependencies (what rpc.py save_config walks)",
        |reg: &Registry, _: ()| {
            Ok(reg
                .subsystems()
                .map(|(name, deps)| SubsystemInfo {
                    subsystem: name.to_string(),
                    depends_on: deps.to_vec(),
                })
                .collect::<Vec<_>>())
        },
    );

    reg.register_with(
        "framework_get_config",
        "Return one subsystem's configuration entries (name)",
        |reg: &Registry, p: GetConfigParams| -> Result<Vec<ConfigEntry>, RpcError> {
            reg.subsystem_config(&p.name)
                .ok_or_else(|| RpcError::new(INVALID_PARAMS, format!("Subsystem '{}' not found", p.name)))
        },
    );

    reg.register_with(
        "spdk_kill_instance",
        "Send a signal to this process (sig_name: SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGKILL, SIGUSR1)",
        |reg: &Registry, p: KillParams| {
            log::info!("rpc: spdk_kill_instance {:?}", p.sig_name);
            reg.kill(p.sig_name.number());
            Ok(true)
        },
    );
}
