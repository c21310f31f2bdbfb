//! `replication_set_tls` / `replication_get_tls`: the process's TLS identity for its
//! replication links by JSON-RPC, and its `save_config` entry (paths only, never key
//! bytes; `docs/security.md`). Registered before the `replication` subsystem so a saved
//! config installs the identity before it creates volumes.

use engine::rpc::{ConfigEntry, Registry, RpcError};
use rdma_transport::tls::{self, TlsContext, TlsSettings};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    psk_file: Option<String>,
}

fn settings(p: SetTls) -> Result<TlsSettings, RpcError> {
    let path = |s: Option<String>| s.map(std::path::PathBuf::from);
    match TlsSettings::from_parts(path(p.ca), path(p.cert), path(p.key), path(p.psk_file)) {
        Ok(Some(s)) => Ok(s),
        Ok(None) | Err(()) => Err(RpcError::invalid_params(
            "give ca, cert and key together, or psk_file alone",
        )),
    }
}

fn describe(s: &TlsSettings) -> Value {
    match s {
        TlsSettings::Certs { ca, cert, key } => json!({
            "ca": ca.display().to_string(),
            "cert": cert.display().to_string(),
            "key": key.display().to_string(),
        }),
        TlsSettings::Psk { key_file } => json!({ "psk_file": key_file.display().to_string() }),
    }
}

fn set_tls(p: SetTls) -> Result<bool, RpcError> {
    let s = settings(p)?;
    let role = tls::process_role()
        .ok_or_else(|| RpcError::errno_detail(libc::EINVAL, "this process has no replication role"))?;
    if tls::process().is_some() {
        return Err(RpcError::errno_detail(
            libc::EEXIST,
            "TLS credentials are fixed once installed; restart the process to change them",
        ));
    }
    let ctx = TlsContext::load(&s, role).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    log::info!("replication links use TLS 1.3 as {}", ctx.name());
    tls::install(ctx).map_err(|e| RpcError::errno_detail(libc::EEXIST, e.to_string()))?;
    Ok(true)
}

/// Registers the methods and the `replication_tls` config subsystem.
pub(crate) fn register(reg: &mut Registry) {
    reg.register(
        "replication_set_tls",
        "Encrypt this process's replication links with TLS 1.3 from now on: ca, cert, key \
         (PEM paths; the certificate names <role>.<site>) or psk_file (a shared key file). \
         Once per process; links opened before keep their mode",
        set_tls,
    );
    reg.register(
        "replication_get_tls",
        "This process's TLS identity for replication links (paths, no secrets)",
        |_: Option<Value>| {
            Ok(match tls::process() {
                None => json!({ "enabled": false }),
                Some(c) => {
                    let mut v = describe(c.settings());
                    v["enabled"] = json!(true);
                    v["name"] = json!(c.name());
                    v
                }
            })
        },
    );
    reg.register_config_provider("replication_tls", &[], || {
        tls::process()
            .map(|c| ConfigEntry {
                method: "replication_set_tls".into(),
                params: Some(describe(c.settings())),
            })
            .into_iter()
            .collect()
    });
}
