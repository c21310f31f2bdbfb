//! The target's keyring: named DH-HMAC-CHAP secrets read from files (SPDK's
//! `keyring_file_add_key`), which host entries name (`nvmf_subsystem_add_host`'s
//! `dhchap_key` / `dhchap_ctrlr_key`). Key bytes never leave this module except to the
//! authentication code; listings give names and paths only.

use crate::spec::auth::{Secret, SecretError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;

/// Why a keyring operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyringError {
    #[error("key {0:?} already exists")]
    Exists(String),
    #[error("no key named {0:?}")]
    NoSuchKey(String),
    #[error("key name must be 1 to 255 printable characters")]
    BadName,
    #[error("key file {0:?}: the path must be absolute")]
    NotAbsolute(String),
    #[error("key file {path:?}: {why}")]
    Io { path: String, why: String },
    #[error("key file {0:?} is accessible to group or others (chmod 0600 it)")]
    Permissions(String),
    #[error("key file {path:?}: {err}")]
    Secret { path: String, err: SecretError },
}

/// One key: its name, the file it came from and the parsed secret.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub path: String,
    pub secret: Arc<Secret>,
}

/// Named keys.
#[derive(Default)]
pub struct Keyring {
    keys: Mutex<BTreeMap<String, Key>>,
}

impl Keyring {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Key>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads and checks the secret in `path` and keeps it as `name`.
    pub fn add_file(&self, name: &str, path: &str) -> Result<(), KeyringError> {
        if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control()) {
            return Err(KeyringError::BadName);
        }
        if !path.starts_with('/') {
            return Err(KeyringError::NotAbsolute(path.to_string()));
        }
        if self.lock().contains_key(name) {
            return Err(KeyringError::Exists(name.to_string()));
        }
        let io = |e: std::io::Error| KeyringError::Io {
            path: path.to_string(),
            why: e.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(KeyringError::Permissions(path.to_string()));
            }
        }
        if meta.len() > 4096 {
            return Err(KeyringError::Io {
                path: path.to_string(),
                why: "larger than 4 KiB: not a key".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let secret = Secret::parse(&text).map_err(|err| KeyringError::Secret {
            path: path.to_string(),
            err,
        })?;
        let mut k = self.lock();
        if k.contains_key(name) {
            return Err(KeyringError::Exists(name.to_string()));
        }
        k.insert(
            name.to_string(),
            Key {
                name: name.to_string(),
                path: path.to_string(),
                secret: Arc::new(secret),
            },
        );
        Ok(())
    }

    /// Forgets `name`. Host entries naming it fail authentication from then on.
    pub fn remove(&self, name: &str) -> Result<(), KeyringError> {
        self.lock()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| KeyringError::NoSuchKey(name.to_string()))
    }

    /// The key named `name`.
    pub fn get(&self, name: &str) -> Result<Key, KeyringError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| KeyringError::NoSuchKey(name.to_string()))
    }

    /// (name, path) of every key, by name.
    pub fn list(&self) -> Vec<(String, String)> {
        self.lock().values().map(|k| (k.name.clone(), k.path.clone())).collect()
    }
}
