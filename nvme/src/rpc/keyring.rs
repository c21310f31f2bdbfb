//! SPDK's file keyring methods: `keyring_file_add_key`, `keyring_file_remove_key` and
//! `keyring_get_keys` (names and paths, never key bytes), and the "keyring" part of
//! `save_config` (`docs/nvme-tcp.md`, "In-band authentication").

use super::{invalid, RpcFailure};
use crate::nvmf::Target;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddKey {
    pub name: String,
    pub path: String,
}

pub fn keyring_file_add_key(t: &Target, p: AddKey) -> Result<bool, RpcFailure> {
    t.keyring
        .add_file(&p.name, &p.path)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveKey {
    pub name: String,
}

pub fn keyring_file_remove_key(t: &Target, p: RemoveKey) -> Result<bool, RpcFailure> {
    t.keyring.remove(&p.name).map_err(|e| invalid(e.to_string()))?;
    Ok(true)
}

pub fn keyring_get_keys(t: &Target, _p: Option<Value>) -> Result<Vec<Value>, RpcFailure> {
    Ok(t.keyring
        .list()
        .into_iter()
        .map(|(name, path)| json!({ "name": name, "path": path, "module": "keyring_file", "removed": false }))
        .collect())
}

/// The calls that recreate the keyring (`save_config`'s "keyring" subsystem).
pub fn keyring_config_entries(t: &Target) -> Vec<(&'static str, Value)> {
    t.keyring
        .list()
        .into_iter()
        .map(|(name, path)| ("keyring_file_add_key", json!({ "name": name, "path": path })))
        .collect()
}
