//! Where subsystems listen: adding and removing TCP (plain or TLS) and RDMA listeners, the
//! listening sockets / rdma_cm ids shared by the subsystems on one address
//! (`nvmf_subsystem_add_listener` / `remove_listener`; `docs/nvme-tcp.md`,
//! `docs/nvme-rdma.md`).

use super::ana::{AnaState, ListenerAna};
use super::{tcp, Target, TargetError};
use std::net::SocketAddr;
use std::sync::Arc;

impl Target {
    /// Makes `nqn` reachable on `addr` (`nvmf_subsystem_add_listener`), starting a TCP
    /// listener if none exists on that address. Port 0 picks a free port; the address
    /// actually bound is returned. Needs running reactors (the accept poller runs on one).
    pub fn add_listener(self: &Arc<Self>, nqn: &str, addr: SocketAddr) -> Result<SocketAddr, TargetError> {
        self.add_listener_ana(nqn, addr, AnaState::Optimized)
    }

    /// [`Target::add_listener`] with the ANA state every group starts in on this listener.
    pub fn add_listener_ana(
        self: &Arc<Self>,
        nqn: &str,
        addr: SocketAddr,
        initial: AnaState,
    ) -> Result<SocketAddr, TargetError> {
        self.add_listener_secure(nqn, addr, initial, false)
    }

    /// [`Target::add_listener_ana`]; `secure`: the socket accepts only TLS 1.3 with a PSK
    /// (`secure_channel`). A socket shared by several subsystems has one mode.
    pub fn add_listener_secure(
        self: &Arc<Self>,
        nqn: &str,
        addr: SocketAddr,
        initial: AnaState,
        secure: bool,
    ) -> Result<SocketAddr, TargetError> {
        self.add_listener_on(nqn, addr, initial, secure, false)
    }

    /// Adds a TCP (`rdma` false) or RDMA listener of `nqn` on `addr`.
    pub(super) fn add_listener_on(
        self: &Arc<Self>,
        nqn: &str,
        addr: SocketAddr,
        initial: AnaState,
        secure: bool,
        rdma: bool,
    ) -> Result<SocketAddr, TargetError> {
        let s = self.subsystem(nqn)?;
        let bound = {
            let existing = self
                .lock()
                .listeners
                .iter()
                .find(|l| l.addr == addr)
                .map(|l| (l.addr, l.secure, l.rdma));
            match existing {
                Some((a, _, r)) if r != rdma => return Err(TargetError::ListenerTransport { addr: a }),
                Some((a, sec, _)) if sec != secure => {
                    return Err(TargetError::ListenerMode { addr: a, secure: sec });
                }
                Some((a, _, _)) => a,
                None => {
                    let h = if rdma {
                        self.start_rdma_listener(addr)?
                    } else {
                        tcp::start_listener(self.clone(), addr, secure)?
                    };
                    let a = h.addr;
                    self.lock().listeners.push(h);
                    a
                }
            }
        };
        let mut st = s.state();
        if st.listeners.contains(&bound) {
            return Err(TargetError::ListenerExists {
                nqn: nqn.to_string(),
                addr: bound,
            });
        }
        st.listeners.push(bound);
        st.ana
            .push(Arc::new(ListenerAna::new(bound, s.max_namespaces, initial)));
        drop(st);
        self.bump_genctr();
        Ok(bound)
    }

    /// Stops `nqn` listening on `addr` (`nvmf_subsystem_remove_listener`); the socket closes
    /// when no subsystem uses it any more. Existing connections stay.
    pub fn remove_listener(&self, nqn: &str, addr: SocketAddr) -> Result<(), TargetError> {
        let s = self.subsystem(nqn)?;
        {
            let mut st = s.state();
            let before = st.listeners.len();
            st.listeners.retain(|a| *a != addr);
            st.ana.retain(|a| a.addr != addr);
            if st.listeners.len() == before {
                return Err(TargetError::NoSuchListener {
                    nqn: nqn.to_string(),
                    addr,
                });
            }
        }
        self.release_listener(addr);
        self.bump_genctr();
        Ok(())
    }

    pub(super) fn release_listener(&self, addr: SocketAddr) {
        let used = self
            .lock()
            .subsystems
            .values()
            .any(|s| s.state().listeners.contains(&addr));
        if !used {
            let mut st = self.lock();
            if let Some(i) = st.listeners.iter().position(|l| l.addr == addr) {
                st.listeners.swap_remove(i).close();
            }
        }
    }
}
