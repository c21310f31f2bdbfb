//! The NVMe/RDMA transport's options and listeners as the target's management sees them
//! (`nvmf_create_transport` / `nvmf_subsystem_add_listener` with `trtype: RDMA`). Compiled
//! in every build so the RPCs can answer; without the `rdma` feature creating the transport
//! or a listener fails with [`TargetError::RdmaNotBuilt`] (`docs/nvme-rdma.md`).

use super::ana::AnaState;
use super::{ListenerHandle, Target, TargetError, TransportOpts};
use std::net::SocketAddr;
use std::sync::Arc;

/// I/O queue entries at most (each queue registers `entries` data buffers of `max_io_size`).
pub const RDMA_QUEUE_DEPTH_MAX: u16 = 128;
/// Default I/O queue entries.
pub const RDMA_DEFAULT_QUEUE_DEPTH: u16 = 32;
/// In-capsule data per command at most, bytes.
pub const RDMA_IN_CAPSULE_MAX: u32 = 8192;
/// Default in-capsule data per command, bytes (what SPDK's RDMA transport uses).
pub const RDMA_DEFAULT_IN_CAPSULE: u32 = 4096;
/// Largest transfer per command `max_io_size` may set, bytes.
pub const RDMA_MAX_IO_MAX: u32 = 1024 * 1024;
/// Default largest transfer per command, bytes (SPDK's RDMA default).
pub const RDMA_DEFAULT_MAX_IO: u32 = 128 * 1024;

/// The RDMA transport's default options.
pub fn rdma_default_opts() -> TransportOpts {
    TransportOpts {
        max_queue_depth: RDMA_DEFAULT_QUEUE_DEPTH,
        max_aq_depth: RDMA_DEFAULT_QUEUE_DEPTH,
        in_capsule_data_size: RDMA_DEFAULT_IN_CAPSULE,
        max_io_size: RDMA_DEFAULT_MAX_IO,
        io_unit_size: RDMA_DEFAULT_MAX_IO,
        num_shared_buffers: 0,
        buf_cache_size: 0,
        rdma: true,
        ..TransportOpts::default()
    }
}

/// Checks RDMA transport options against the compiled limits.
pub fn check_rdma_opts(o: &TransportOpts) -> Result<(), TargetError> {
    let bad = |param, why: String| Err(TargetError::InvalidParam { param, why });
    if o.max_queue_depth < 2 || o.max_queue_depth > RDMA_QUEUE_DEPTH_MAX {
        return bad(
            "max_queue_depth",
            format!("{} not in 2..={RDMA_QUEUE_DEPTH_MAX}", o.max_queue_depth),
        );
    }
    if o.max_aq_depth < 2 || o.max_aq_depth > RDMA_QUEUE_DEPTH_MAX {
        return bad(
            "max_aq_depth",
            format!("{} not in 2..={RDMA_QUEUE_DEPTH_MAX}", o.max_aq_depth),
        );
    }
    if o.max_io_qpairs_per_ctrlr == 0 || o.max_io_qpairs_per_ctrlr > super::tcp::IO_QUEUES_MAX {
        return bad(
            "max_io_qpairs_per_ctrlr",
            format!("{} not in 1..={}", o.max_io_qpairs_per_ctrlr, super::tcp::IO_QUEUES_MAX),
        );
    }
    if o.in_capsule_data_size > RDMA_IN_CAPSULE_MAX || !o.in_capsule_data_size.is_multiple_of(16) {
        return bad(
            "in_capsule_data_size",
            format!(
                "{} not a multiple of 16 in 0..={RDMA_IN_CAPSULE_MAX}",
                o.in_capsule_data_size
            ),
        );
    }
    if !o.max_io_size.is_power_of_two() || o.max_io_size < 4096 || o.max_io_size > RDMA_MAX_IO_MAX {
        return bad(
            "max_io_size",
            format!("{} not a power of two in 4096..={RDMA_MAX_IO_MAX}", o.max_io_size),
        );
    }
    if o.io_unit_size < 4096 || o.io_unit_size > o.max_io_size {
        return bad(
            "io_unit_size",
            format!("{} not in 4096..=max_io_size ({})", o.io_unit_size, o.max_io_size),
        );
    }
    Ok(())
}

impl Target {
    /// Creates (or re-sets) the RDMA transport (`nvmf_create_transport`, `trtype: RDMA`).
    pub fn create_transport_rdma(&self, mut o: TransportOpts) -> Result<TransportOpts, TargetError> {
        if !cfg!(feature = "rdma") {
            return Err(TargetError::RdmaNotBuilt);
        }
        o.rdma = true;
        check_rdma_opts(&o)?;
        *self.rdma_opts.lock().unwrap_or_else(|e| e.into_inner()) = Some(o.clone());
        Ok(o)
    }

    /// The RDMA transport's options, if it was created.
    pub fn rdma_transport(&self) -> Option<TransportOpts> {
        self.rdma_opts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The options RDMA queues use: the created transport's, else the defaults.
    pub fn rdma_transport_opts(&self) -> TransportOpts {
        self.rdma_transport().unwrap_or_else(rdma_default_opts)
    }

    /// Makes `nqn` reachable over NVMe/RDMA on `addr` (an IP address of an RDMA device),
    /// starting an rdma_cm listener if none exists there.
    pub fn add_listener_rdma(
        self: &Arc<Self>,
        nqn: &str,
        addr: SocketAddr,
        initial: AnaState,
    ) -> Result<SocketAddr, TargetError> {
        if !cfg!(feature = "rdma") {
            return Err(TargetError::RdmaNotBuilt);
        }
        self.add_listener_on(nqn, addr, initial, false, true)
    }

    /// Whether the listener on `addr` is an RDMA one.
    pub fn listener_rdma(&self, addr: SocketAddr) -> bool {
        self.lock().listeners.iter().any(|l| l.addr == addr && l.rdma)
    }

    #[cfg(feature = "rdma")]
    pub(super) fn start_rdma_listener(self: &Arc<Self>, addr: SocketAddr) -> Result<ListenerHandle, TargetError> {
        super::rdma::start_listener(self.clone(), addr)
    }

    #[cfg(not(feature = "rdma"))]
    pub(super) fn start_rdma_listener(self: &Arc<Self>, _addr: SocketAddr) -> Result<ListenerHandle, TargetError> {
        Err(TargetError::RdmaNotBuilt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_their_own_checks_and_bad_values_are_named() {
        check_rdma_opts(&rdma_default_opts()).unwrap();
        let o = TransportOpts {
            max_io_size: 3 * 4096,
            ..rdma_default_opts()
        };
        match check_rdma_opts(&o) {
            Err(TargetError::InvalidParam { param, .. }) => assert_eq!(param, "max_io_size"),
            other => panic!("{other:?}"),
        }
        let o = TransportOpts {
            max_queue_depth: 1024,
            ..rdma_default_opts()
        };
        assert!(matches!(
            check_rdma_opts(&o),
            Err(TargetError::InvalidParam {
                param: "max_queue_depth",
                ..
            })
        ));
    }

    #[test]
    fn without_the_feature_rdma_is_refused_by_name() {
        let t = Target::new();
        let r = t.create_transport_rdma(rdma_default_opts());
        if cfg!(feature = "rdma") {
            assert!(r.is_ok());
            assert!(t.rdma_transport().is_some_and(|o| o.rdma));
        } else {
            assert_eq!(r, Err(TargetError::RdmaNotBuilt));
            assert!(r.unwrap_err().to_string().contains("`rdma` feature"));
        }
    }
}
