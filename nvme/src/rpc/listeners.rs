//! Where a subsystem listens and whom it admits: `nvmf_subsystem_add_listener` /
//! `remove_listener` (SPDK's `listen_address` object), `nvmf_subsystem_add_host` /
//! `remove_host` and `nvmf_subsystem_allow_any_host` (`docs/nvme-tcp.md`, `docs/rpc.md`).

use super::{check_tgt, invalid, trtype_is_rdma, RpcFailure};
use crate::nvmf::ana::AnaState;
use crate::nvmf::{HostKeyNames, Target};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// SPDK's `listen_address` object.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenAddress {
    pub trtype: String,
    pub adrfam: Option<String>,
    pub traddr: String,
    pub trsvcid: Option<String>,
}

impl ListenAddress {
    /// Whether the address is an RDMA one (other than TCP and RDMA is an error).
    pub(crate) fn is_rdma(&self) -> Result<bool, RpcFailure> {
        trtype_is_rdma(&self.trtype)
    }

    pub(crate) fn socket_addr(&self) -> Result<SocketAddr, RpcFailure> {
        self.is_rdma()?;
        let ip: IpAddr = self
            .traddr
            .parse()
            .map_err(|_| invalid(format!("listen_address.traddr {:?} is not an IP address", self.traddr)))?;
        if let Some(f) = &self.adrfam {
            let ok =
                (f.eq_ignore_ascii_case("ipv4") && ip.is_ipv4()) || (f.eq_ignore_ascii_case("ipv6") && ip.is_ipv6());
            if !ok {
                return Err(invalid(format!(
                    "listen_address.adrfam {f:?} does not match traddr {}",
                    self.traddr
                )));
            }
        }
        let port = match &self.trsvcid {
            None => 4420,
            Some(s) => s
                .parse()
                .map_err(|_| invalid(format!("listen_address.trsvcid {s:?} is not a port number")))?,
        };
        Ok(SocketAddr::new(ip, port))
    }

    /// `a` as the target lists it: RDMA when its listener there is an RDMA one.
    pub(crate) fn on(t: &Target, a: &SocketAddr) -> ListenAddress {
        let mut l = ListenAddress::of(a);
        if t.listener_rdma(*a) {
            l.trtype = "RDMA".into();
        }
        l
    }

    pub(crate) fn of(a: &SocketAddr) -> ListenAddress {
        ListenAddress {
            trtype: "TCP".into(),
            adrfam: Some(if a.is_ipv4() { "IPv4" } else { "IPv6" }.into()),
            traddr: a.ip().to_string(),
            trsvcid: Some(a.port().to_string()),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerParams {
    pub nqn: String,
    pub listen_address: ListenAddress,
    pub tgt_name: Option<String>,
    pub secure_channel: Option<bool>,
    pub ana_state: Option<String>,
    pub anagrpid: Option<u32>,
    /// Socket implementation and NUMA node (rpc.py may send them): only the default.
    pub sock_impl: Option<String>,
    pub numa_id: Option<i32>,
}

/// Returns the address actually bound (trsvcid "0" picks a free port).
pub fn nvmf_subsystem_add_listener(t: &Arc<Target>, p: ListenerParams) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    if p.sock_impl.as_deref().is_some_and(|s| s != "posix") {
        return Err(invalid(format!(
            "sock_impl: {:?}: only \"posix\" sockets",
            p.sock_impl.as_deref().unwrap_or_default()
        )));
    }
    if p.anagrpid.is_some() {
        return Err(invalid(
            "anagrpid: give it to nvmf_subsystem_listener_set_ana_state, not to add_listener",
        ));
    }
    let a = p.listen_address.socket_addr()?;
    let state = match p.ana_state.as_deref() {
        None => AnaState::Optimized,
        Some(s) => ana_state(s)?,
    };
    if p.listen_address.is_rdma()? {
        if p.secure_channel == Some(true) {
            return Err(invalid("secure_channel: TLS is a TCP transport feature, not RDMA's"));
        }
        t.add_listener_rdma(&p.nqn, a, state)?;
    } else {
        t.add_listener_secure(&p.nqn, a, state, p.secure_channel.unwrap_or(false))?;
    }
    Ok(true)
}

fn ana_state(s: &str) -> Result<AnaState, RpcFailure> {
    AnaState::parse(s).ok_or_else(|| {
        invalid(format!(
            "ana_state {s:?}: one of optimized, non_optimized, inaccessible, persistent_loss, change"
        ))
    })
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAnaState {
    pub nqn: String,
    pub listen_address: ListenAddress,
    pub ana_state: String,
    pub anagrpid: Option<u32>,
    pub tgt_name: Option<String>,
}

/// `nvmf_subsystem_listener_set_ana_state`: one group (`anagrpid`) or all of them.
pub fn nvmf_subsystem_listener_set_ana_state(t: &Target, p: SetAnaState) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    let a = p.listen_address.socket_addr()?;
    let state = ana_state(&p.ana_state)?;
    t.set_ana_state(&p.nqn, a, state, p.anagrpid)?;
    Ok(true)
}

pub fn nvmf_subsystem_remove_listener(t: &Target, p: ListenerParams) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    let a = p.listen_address.socket_addr()?;
    t.remove_listener(&p.nqn, a)?;
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostParams {
    pub nqn: String,
    pub host: String,
    pub tgt_name: Option<String>,
    pub psk: Option<String>,
    pub dhchap_key: Option<String>,
    pub dhchap_ctrlr_key: Option<String>,
    /// `nvmf_subsystem_remove_host`: how long to wait for the host's controllers to go.
    pub timeout_ms: Option<u64>,
}

pub fn nvmf_subsystem_add_host(t: &Target, p: HostParams) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    let keys = match (p.dhchap_key, p.dhchap_ctrlr_key) {
        (None, None) => None,
        (None, Some(_)) => return Err(invalid("dhchap_ctrlr_key needs dhchap_key")),
        (Some(k), c) => Some(HostKeyNames {
            dhchap_key: k,
            dhchap_ctrlr_key: c,
        }),
    };
    if let Some(name) = &p.psk {
        t.keyring
            .get(name)
            .and_then(|k| k.tls_psk())
            .map_err(crate::nvmf::TargetError::from)?;
    }
    t.add_host_keys(&p.nqn, &p.host, keys)?;
    t.set_host_psk(&p.nqn, &p.host, p.psk)?;
    Ok(true)
}

pub fn nvmf_subsystem_remove_host(t: &Target, p: HostParams) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    t.remove_host(&p.nqn, &p.host)?;
    Ok(true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowAnyHost {
    pub nqn: String,
    pub allow_any_host: bool,
    pub tgt_name: Option<String>,
}

pub fn nvmf_subsystem_allow_any_host(t: &Target, p: AllowAnyHost) -> Result<bool, RpcFailure> {
    check_tgt(&p.tgt_name)?;
    t.allow_any_host(&p.nqn, p.allow_any_host)?;
    Ok(true)
}
