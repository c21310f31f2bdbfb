//! Asymmetric Namespace Access (ANA): each listener of a subsystem has a state per ANA group
//! (optimized, non-optimized, inaccessible), each namespace belongs to a group, and hosts
//! with native multipath choose their path by these states (`docs/nvme-tcp.md`, "ANA and
//! multipath"). After a DR failover the operator (or `baton switchover`) marks the old
//! primary's listener inaccessible and the promoted standby's optimized, and a host moves
//! its I/O by state change rather than by reconfiguration.
//!
//! A controller keeps the states of the listener it connected through ([`ListenerAna`]); its
//! I/O queues read one atomic per command and answer an ANA path error (status code type 3)
//! when the namespace's group is not accessible there, so the host retries on another path.

use super::{Subsystem, SubsystemKind, Target, TargetError};
use crate::spec::Status;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

pub use crate::spec::fabrics::AEC_ANA_CHANGE_NOTICES;
/// Asynchronous event DW0: Notice (2), ANA change (info 03h), log page 0Ch.
pub const AEN_ANA_CHANGE_DW0: u32 = 0x02 | (0x03 << 8) | (0x0C << 16);
/// ANA Transition Time advertised in Identify Controller (ANATT), seconds.
pub const ANATT_SECS: u8 = 10;
/// ANACAP: optimized, non-optimized, inaccessible, persistent loss and change states
/// reportable (bits 0-4), the ANAGRPID of a namespace does not change while attached
/// (bit 6), non-zero ANAGRPIDs supported (bit 7).
pub const ANACAP: u8 = 0x1F | (1 << 6) | (1 << 7);
/// CMIC bits: multiple ports (0), multiple controllers (1), ANA reporting (3).
pub const CMIC_MULTI_PORT: u8 = 1 << 0;
pub const CMIC_MULTI_CTRL: u8 = 1 << 1;
pub const CMIC_ANA_REPORTING: u8 = 1 << 3;
/// Bytes of the ANA log page header and of one group descriptor (before its NSIDs).
pub const ANA_LOG_HEADER_BYTES: usize = 16;
pub const ANA_GROUP_DESC_BYTES: usize = 32;

impl Status {
    /// Path related status (SCT 3): the namespace is permanently unreachable on this path.
    pub const ANA_PERSISTENT_LOSS: Status = Status {
        sct: 3,
        sc: 0x01,
        dnr: false,
    };
    /// Path related status: the namespace is not accessible through this controller.
    pub const ANA_INACCESSIBLE: Status = Status {
        sct: 3,
        sc: 0x02,
        dnr: false,
    };
    /// Path related status: the group is changing state; retry after a while.
    pub const ANA_TRANSITION: Status = Status {
        sct: 3,
        sc: 0x03,
        dnr: false,
    };
}

/// The state of an ANA group through one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnaState {
    Optimized,
    NonOptimized,
    Inaccessible,
    PersistentLoss,
    Change,
}

impl AnaState {
    /// The value in an ANA group descriptor.
    pub fn code(self) -> u8 {
        match self {
            AnaState::Optimized => 0x01,
            AnaState::NonOptimized => 0x02,
            AnaState::Inaccessible => 0x03,
            AnaState::PersistentLoss => 0x04,
            AnaState::Change => 0x0F,
        }
    }

    fn from_code(c: u8) -> AnaState {
        match c {
            0x02 => AnaState::NonOptimized,
            0x03 => AnaState::Inaccessible,
            0x04 => AnaState::PersistentLoss,
            0x0F => AnaState::Change,
            _ => AnaState::Optimized,
        }
    }

    /// SPDK's RPC spelling.
    pub fn name(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::NonOptimized => "non_optimized",
            AnaState::Inaccessible => "inaccessible",
            AnaState::PersistentLoss => "persistent_loss",
            AnaState::Change => "change",
        }
    }

    /// Parses SPDK's RPC spelling (`optimized`, `non_optimized`, `inaccessible`, plus
    /// `persistent_loss` and `change`).
    pub fn parse(s: &str) -> Option<AnaState> {
        [
            AnaState::Optimized,
            AnaState::NonOptimized,
            AnaState::Inaccessible,
            AnaState::PersistentLoss,
            AnaState::Change,
        ]
        .into_iter()
        .find(|a| a.name() == s)
    }

    /// The status an I/O command gets on a path in this state, None when it may run.
    pub fn io_status(self) -> Option<Status> {
        match self {
            AnaState::Optimized | AnaState::NonOptimized => None,
            AnaState::Inaccessible => Some(Status::ANA_INACCESSIBLE),
            AnaState::PersistentLoss => Some(Status::ANA_PERSISTENT_LOSS),
            AnaState::Change => Some(Status::ANA_TRANSITION),
        }
    }
}

/// The ANA states of one listener of a subsystem, one per group (1..=ANAGRPMAX).
/// Written by management, read by I/O queues (one relaxed load per command).
pub struct ListenerAna {
    pub addr: SocketAddr,
    states: Box<[AtomicU8]>,
}

impl ListenerAna {
    /// All `groups` groups in `initial`.
    pub fn new(addr: SocketAddr, groups: u32, initial: AnaState) -> ListenerAna {
        ListenerAna {
            addr,
            states: (0..groups.max(1)).map(|_| AtomicU8::new(initial.code())).collect(),
        }
    }

    /// The state of group `grp` (an unknown group reads as optimized).
    #[inline]
    pub fn state(&self, grp: u32) -> AnaState {
        match grp.checked_sub(1).and_then(|i| self.states.get(i as usize)) {
            Some(s) => AnaState::from_code(s.load(Ordering::Relaxed)),
            None => AnaState::Optimized,
        }
    }

    fn set(&self, grp: Option<u32>, st: AnaState) {
        for (i, s) in self.states.iter().enumerate() {
            if grp.is_none_or(|g| g as usize == i + 1) {
                s.store(st.code(), Ordering::Relaxed);
            }
        }
    }
}

/// ANA fields of a subsystem that management changes.
pub struct SubsysAna {
    /// Identify Controller advertises ANA and the ANA log page exists.
    pub reporting: bool,
    /// Change count of the ANA log page (bumped by every state or group change).
    pub chgcnt: AtomicU64,
}

impl Subsystem {
    /// The ANA states of listener `addr`, if the subsystem listens there.
    pub fn listener_ana(&self, addr: SocketAddr) -> Option<Arc<ListenerAna>> {
        self.state().ana.iter().find(|a| a.addr == addr).cloned()
    }

    /// Bumps the ANA change count and queues an ANA change notice for the controllers that
    /// connected through `only` (every controller when None).
    pub(crate) fn notify_ana_changed(&self, only: Option<&Arc<ListenerAna>>) {
        self.ana.chgcnt.fetch_add(1, Ordering::AcqRel);
        for c in self.live_controllers() {
            let through = c.ana.as_ref();
            if only.is_none() || through.zip(only).is_some_and(|(a, b)| Arc::ptr_eq(a, b)) {
                c.ana_changed();
            }
        }
    }

    /// The ANA log page (0Ch) as a controller connected through `through` sees it: one
    /// descriptor per group that has namespaces, in group order; `rgo` (Return Groups Only)
    /// leaves out the NSID lists.
    pub fn ana_log(&self, through: Option<&ListenerAna>, rgo: bool) -> Vec<u8> {
        let st = self.state();
        let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
        for ns in st.namespaces.values() {
            match groups.iter_mut().find(|(g, _)| *g == ns.anagrpid) {
                Some((_, v)) => v.push(ns.nsid),
                None => groups.push((ns.anagrpid, vec![ns.nsid])),
            }
        }
        drop(st);
        groups.sort_by_key(|(g, _)| *g);
        let chgcnt = self.ana.chgcnt.load(Ordering::Acquire);
        let mut out = Vec::with_capacity(ANA_LOG_HEADER_BYTES + groups.len() * ANA_GROUP_DESC_BYTES);
        out.extend_from_slice(&chgcnt.to_le_bytes());
        out.extend_from_slice(&(groups.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0u8; 6]);
        for (g, nsids) in &groups {
            let state = through.map_or(AnaState::Optimized, |l| l.state(*g));
            let listed = if rgo { 0 } else { nsids.len() as u32 };
            out.extend_from_slice(&g.to_le_bytes());
            out.extend_from_slice(&listed.to_le_bytes());
            out.extend_from_slice(&chgcnt.to_le_bytes());
            out.push(state.code());
            out.extend_from_slice(&[0u8; 15]);
            if !rgo {
                for n in nsids {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        out
    }
}

impl Target {
    /// Sets the ANA state of group `grp` (every group when None) on listener `addr` of
    /// subsystem `nqn` (`nvmf_subsystem_listener_set_ana_state`), and sends an ANA change
    /// notice to the controllers connected through it.
    pub fn set_ana_state(
        &self,
        nqn: &str,
        addr: SocketAddr,
        state: AnaState,
        grp: Option<u32>,
    ) -> Result<(), TargetError> {
        let s = self.subsystem(nqn)?;
        if s.kind == SubsystemKind::Discovery {
            return Err(TargetError::DiscoveryImmutable);
        }
        if let Some(g) = grp {
            check_anagrpid(&s, g)?;
        }
        let l = s.listener_ana(addr).ok_or_else(|| TargetError::NoSuchListener {
            nqn: nqn.to_string(),
            addr,
        })?;
        l.set(grp, state);
        log::info!(
            "nvmf: {nqn} on {addr}: ANA group {} now {}",
            grp.map_or("*".to_string(), |g| g.to_string()),
            state.name()
        );
        s.notify_ana_changed(Some(&l));
        Ok(())
    }

    /// Moves namespace `nsid` to ANA group `grp` (`nvmf_subsystem_set_ns_ana_group`).
    pub fn set_ns_ana_group(&self, nqn: &str, nsid: u32, grp: u32) -> Result<(), TargetError> {
        let s = self.subsystem(nqn)?;
        check_anagrpid(&s, grp)?;
        {
            let mut st = s.state();
            let ns = st.namespaces.get_mut(&nsid).ok_or(TargetError::NoSuchNamespace {
                nqn: nqn.to_string(),
                nsid,
            })?;
            ns.anagrpid = grp;
        }
        s.notify_ns_changed(nsid);
        s.notify_ana_changed(None);
        Ok(())
    }
}

/// ANA group IDs run 1..=ANAGRPMAX, which is the subsystem's namespace limit (as SPDK).
pub(crate) fn check_anagrpid(s: &Subsystem, grp: u32) -> Result<(), TargetError> {
    if grp == 0 || grp > s.max_namespaces {
        return Err(TargetError::InvalidParam {
            param: "anagrpid",
            why: format!("{grp} is not in 1..={}", s.max_namespaces),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_map_to_path_statuses() {
        for s in [
            "optimized",
            "non_optimized",
            "inaccessible",
            "persistent_loss",
            "change",
        ] {
            assert_eq!(AnaState::parse(s).unwrap().name(), s);
        }
        assert!(AnaState::parse("Optimized").is_none());
        assert_eq!(AnaState::Optimized.io_status(), None);
        assert_eq!(AnaState::NonOptimized.io_status(), None);
        assert_eq!(AnaState::Inaccessible.io_status(), Some(Status::ANA_INACCESSIBLE));
        assert_eq!(Status::ANA_INACCESSIBLE.to_field() & 0x0E00, 3 << 9);
    }

    #[test]
    fn listener_groups_change_one_or_all() {
        let l = ListenerAna::new(([127, 0, 0, 1], 4420).into(), 4, AnaState::Optimized);
        l.set(Some(2), AnaState::Inaccessible);
        assert_eq!(l.state(1), AnaState::Optimized);
        assert_eq!(l.state(2), AnaState::Inaccessible);
        assert_eq!(l.state(9), AnaState::Optimized);
        assert_eq!(l.state(0), AnaState::Optimized);
        l.set(None, AnaState::NonOptimized);
        assert!((1..=4).all(|g| l.state(g) == AnaState::NonOptimized));
    }
}
