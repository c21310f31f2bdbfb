//! Counters of the NVMe/RDMA poll groups, reported by `nvmf_get_stats` in the shape of
//! SPDK's RDMA transport (a poll group's queue pairs and completed commands, and per
//! device: polls, idle polls, work completions, requests, requests waiting for a free
//! request, RDMA READs and WRITEs in flight, work requests posted; and the process's shared
//! protection domains: how many, their queue pairs, the engine pool registrations on them
//! and the bytes those pin). One device per poll
//! group here: the queues of a group may sit on different devices, and the counters are
//! the group's. Written by the group's reactor only (relaxed atomics, no locks on the
//! I/O path); the list of groups is touched when a group is made (setup path) and by the
//! RPC.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One poll group's counters.
#[derive(Debug, Default)]
pub struct RdmaGroupStats {
    pub core: u32,
    pub admin_qpairs: AtomicU64,
    pub io_qpairs: AtomicU64,
    pub current_admin_qpairs: AtomicU64,
    pub current_io_qpairs: AtomicU64,
    /// Bdev operations submitted and not yet completed.
    pub pending_bdev_io: AtomicU64,
    pub completed_nvme_io: AtomicU64,
    /// Times the group's poller ran, and the runs that found nothing to do.
    pub polls: AtomicU64,
    pub idle_polls: AtomicU64,
    /// Work completions reaped (receive and send queues).
    pub completions: AtomicU64,
    /// Command capsules taken into a request.
    pub requests: AtomicU64,
    /// Capsules waiting now for a free request.
    pub pending_free_request: AtomicU64,
    /// RDMA READs of host data in flight now.
    pub pending_rdma_read: AtomicU64,
    /// RDMA WRITEs of data to hosts posted (not awaited: the response SEND retires them).
    pub rdma_writes: AtomicU64,
    /// Send-queue work requests posted (SEND, RDMA READ, RDMA WRITE) and receives posted.
    pub total_send_wrs: AtomicU64,
    pub total_recv_wrs: AtomicU64,
    /// Responses sent as SEND with Invalidate (the host's keyed descriptor asked for its
    /// key to be invalidated and the device can).
    pub send_with_invalidate: AtomicU64,
    /// Restart points waiting now for their sink's answer, and those that timed out.
    pub awaiting_restart_point: AtomicU64,
    pub restart_point_timeouts: AtomicU64,
}

static GROUPS: Mutex<Vec<Arc<RdmaGroupStats>>> = Mutex::new(Vec::new());

/// Counters for a new poll group on `core` (setup path).
pub(super) fn register(core: u32) -> Arc<RdmaGroupStats> {
    let s = Arc::new(RdmaGroupStats {
        core,
        ..RdmaGroupStats::default()
    });
    GROUPS.lock().unwrap_or_else(|e| e.into_inner()).push(s.clone());
    s
}

/// Every RDMA poll group's counters (management path).
pub fn group_stats() -> Vec<Arc<RdmaGroupStats>> {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

pub(super) use crate::nvmf::tcp::bump;

impl RdmaGroupStats {
    /// The transport's entry of `nvmf_get_stats` for this group. The protection domain
    /// figures are the process's (one shared protection domain per device, whatever group
    /// its queues are in), the same in every group's entry.
    pub fn transport_json(&self) -> serde_json::Value {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let pd = rdma_transport::rdma::pd_stats();
        serde_json::json!({
            "trtype": "RDMA",
            "pending_data_buffer": 0,
            "devices": [{
                "name": "rdma",
                "polls": l(&self.polls),
                "idle_polls": l(&self.idle_polls),
                "completions": l(&self.completions),
                "requests": l(&self.requests),
                "pending_free_request": l(&self.pending_free_request),
                "pending_rdma_read": l(&self.pending_rdma_read),
                "pending_rdma_write": 0,
                "pending_rdma_send": 0,
                "rdma_writes": l(&self.rdma_writes),
                "total_send_wrs": l(&self.total_send_wrs),
                "total_recv_wrs": l(&self.total_recv_wrs),
                "send_with_invalidate": l(&self.send_with_invalidate),
                "protection_domains": pd.pds,
                "protection_domain_users": pd.users,
                "pool_registrations": pd.pool_registrations,
                "pool_bytes_pinned": pd.pool_bytes_pinned,
            }],
            "awaiting_restart_point": l(&self.awaiting_restart_point),
            "restart_point_timeouts": l(&self.restart_point_timeouts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_counts_both_ways_and_json_has_spdk_names() {
        let s = RdmaGroupStats::default();
        bump(&s.pending_rdma_read, 3);
        bump(&s.pending_rdma_read, -2);
        bump(&s.polls, 7);
        let j = s.transport_json();
        assert_eq!(j["trtype"], "RDMA");
        let d = &j["devices"][0];
        assert_eq!(d["pending_rdma_read"], 1);
        assert_eq!(d["polls"], 7);
        for k in [
            "idle_polls",
            "completions",
            "requests",
            "pending_free_request",
            "total_send_wrs",
            "send_with_invalidate",
            "protection_domains",
            "pool_registrations",
        ] {
            assert!(d.get(k).is_some(), "{k}");
        }
    }
}
