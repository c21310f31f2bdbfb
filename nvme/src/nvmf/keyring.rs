//! The target's keyring: named DH-HMAC-CHAP secrets and NVMe/TCP TLS PSKs read from files
//! (SPDK's `keyring_file_add_key`), which host entries name (`nvmf_subsystem_add_host`'s
//! `dhchap_key` / `dhchap_ctrlr_key` / `psk`). A file holding `NVMeTLSkey-1:...` is a TLS
//! PSK, anything else must be a `DHHC-1` secret. Key bytes never leave this module except
//! to the authentication and TLS code; listings give names and paths only.

use super::tls::{ConfiguredPsk, PskError};
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
    #[error("key file {path:?}: {err}")]
    Psk { path: String, err: PskError },
    #[error("key {0:?} is not a DH-HMAC-CHAP secret")]
    NotSecret(String),
    #[error("key {0:?} is not a TLS PSK (NVMeTLSkey-1:...)")]
    NotPsk(String),
}

/// What a key file holds.
#[derive(Clone, Debug)]
pub enum KeyMaterial {
    /// A DH-HMAC-CHAP secret (`DHHC-1:...`).
    Secret(Arc<Secret>),
    /// An NVMe/TCP TLS PSK in interchange format (`NVMeTLSkey-1:...`).
    TlsPsk(Arc<ConfiguredPsk>),
}

/// One key: its name, the file it came from and the parsed secret.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub path: String,
    pub material: KeyMaterial,
}

impl Key {
    /// The DH-HMAC-CHAP secret, or an error naming the key.
    pub fn secret(&self) -> Result<Arc<Secret>, KeyringError> {
        match &self.material {
            KeyMaterial::Secret(s) => Ok(s.clone()),
            KeyMaterial::TlsPsk(_) => Err(KeyringError::NotSecret(self.name.clone())),
        }
    }

    /// The TLS PSK, or an error naming the key.
    pub fn tls_psk(&self) -> Result<Arc<ConfiguredPsk>, KeyringError> {
        match &self.material {
            KeyMaterial::TlsPsk(p) => Ok(p.clone()),
            KeyMaterial::Secret(_) => Err(KeyringError::NotPsk(self.name.clone())),
        }
    }
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
        let material = if text.trim_start().starts_with("NVMeTLSkey-") {
            let p = ConfiguredPsk::parse(&text).map_err(|err| KeyringError::Psk {
                path: path.to_string(),
                err,
            })?;
            KeyMaterial::TlsPsk(Arc::new(p))
        } else {
            let s = Secret::parse(&text).map_err(|err| KeyringError::Secret {
                path: path.to_string(),
                err,
            })?;
            KeyMaterial::Secret(Arc::new(s))
        };
        let mut k = self.lock();
        if k.contains_key(name) {
            return Err(KeyringError::Exists(name.to_string()));
        }
        k.insert(
            name.to_string(),
            Key {
                name: name.to_string(),
                path: path.to_string(),
                material,
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
