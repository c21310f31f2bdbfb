//! Start-up configuration in SPDK's JSON config format:
//!
//! ```json
//! {"subsystems": [{"subsystem": "bdev",
//!                  "config": [{"method": "bdev_malloc_create", "params": {…}}]}]}
//! ```
//!
//! [`load_config`] replays each entry as an RPC call through the registry, in file
//! order; [`save_config`] asks each subsystem's config provider for the calls that
//! recreate its current state. Both run on the management thread (load before the
//! server starts serving, save inside the `save_config` RPC).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::RpcError;
use super::registry::{ConfigEntry, Registry};

/// How long one config call may wait on a deferred reply while loading (polls × pause).
pub const CONFIG_CALL_POLLS_MAX: u32 = 10_000;
/// Pause between polls of a deferred config call.
pub const CONFIG_CALL_POLL_PAUSE: Duration = Duration::from_millis(1);

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub subsystems: Vec<SubsystemConfig>,
}

/// One subsystem's entries. SPDK writes `"config": null` for a subsystem with nothing
/// to configure; that is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    pub subsystem: String,
    #[serde(default)]
    pub config: Option<Vec<ConfigEntry>>,
}

/// Why a config could not be loaded. Entries before the failing one have been applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid: {0}")]
    Format(String),
    #[error("config subsystem '{subsystem}' entry {index} ({method}) failed: {error}")]
    Call {
        subsystem: String,
        index: usize,
        method: String,
        error: RpcError,
    },
}

/// Read `path` and apply it. See [`load_config_value`].
pub fn load_config(registry: &Registry, path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_slice(&text).map_err(|e| ConfigError::Format(e.to_string()))?;
    load_config_value(registry, value)
}

/// Apply a parsed config: every entry of every subsystem, in order, as an RPC call.
/// Stops at the first failing call. Deferred replies are waited for (bounded by
/// [`CONFIG_CALL_POLLS_MAX`]), so call this at start-up, not from a poller.
pub fn load_config_value(registry: &Registry, value: Value) -> Result<(), ConfigError> {
    let file: ConfigFile = serde_path_to_error::deserialize(value)
        .map_err(|e| ConfigError::Format(format!("{}: {}", e.path(), e.inner())))?;
    for sub in file.subsystems {
        for (index, entry) in sub.config.unwrap_or_default().into_iter().enumerate() {
            registry
                .call_blocking(
                    &entry.method,
                    entry.params,
                    CONFIG_CALL_POLLS_MAX,
                    CONFIG_CALL_POLL_PAUSE,
                )
                .map_err(|error| ConfigError::Call {
                    subsystem: sub.subsystem.clone(),
                    index,
                    method: entry.method.clone(),
                    error,
                })?;
        }
    }
    Ok(())
}

/// The current configuration of every registered subsystem, in registration order.
pub fn save_config(registry: &Registry) -> ConfigFile {
    ConfigFile {
        subsystems: registry
            .subsystems()
            .map(|(name, _)| SubsystemConfig {
                subsystem: name.to_string(),
                config: Some(registry.subsystem_config(name).unwrap_or_default()),
            })
            .collect(),
    }
}
