//! A promoted standby's record of what changed since the common restart point: the
//! blocks written after promotion, and the blocks of the ops the rollback dropped (the old
//! primary wrote those). A failback (`docs/failback.md`) sends exactly these blocks (and
//! the old primary's own dirty-block record) back to the old primary, instead of the whole
//! volume.
//!
//! [`ChangedBdev`] wraps the promoted bdev: every write, write-zeroes and deallocate marks
//! its regions in an [`IntentMap`] first; a write that sets a new bit is issued only once
//! the map's file holds the bit (a crash cannot leave a changed block the record forgot).
//! Reads and flushes pass through. Steady state (regions already marked): one atomic load
//! per write, nothing parked, no allocation.

use std::collections::VecDeque;
use std::sync::Arc;

use engine::bdev::{
    Bdev, BdevChannel, BdevError, BdevInfo, ChannelBackend, IoCompletion, IoOp, IoRequest, IoStats, StatsSet,
    CHANNEL_QUEUE_DEPTH_MAX,
};
use engine::regionmap::IntentMap;
use serde::Serialize;

/// What `standby_get_status` shows of the record.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ChangedStatus {
    /// File it is persisted to ("" when in memory only: lost on a restart).
    pub file: String,
    /// Blocks per region (bit).
    pub region_blocks: u64,
    /// Regions marked (written since promotion, or dropped by the rollback).
    pub changed_regions: u64,
    /// The last error writing the file.
    pub last_error: String,
}

impl ChangedStatus {
    pub(crate) fn of(map: &IntentMap) -> ChangedStatus {
        ChangedStatus {
            file: map.path(),
            region_blocks: map.region_blocks(),
            changed_regions: map.marked_regions(),
            last_error: map.last_error(),
        }
    }
}

/// The promoted bdev, recording what it writes.
pub struct ChangedBdev {
    info: BdevInfo,
    inner: Arc<dyn Bdev>,
    map: Arc<IntentMap>,
    stats: StatsSet,
}

impl ChangedBdev {
    pub fn new(name: &str, inner: Arc<dyn Bdev>, map: Arc<IntentMap>) -> ChangedBdev {
        ChangedBdev {
            info: BdevInfo::wrapping(&*inner, name, "Promoted standby volume", "standby_promoted"),
            inner,
            map,
            stats: StatsSet::default(),
        }
    }
}

impl Bdev for ChangedBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        let inner = self.inner.open_channel()?;
        Ok(BdevChannel::new(
            &self.info.name,
            self.info.geometry(inner.geometry().buf_align),
            self.stats.new_channel(),
            Box::new(ChangedChannel {
                inner,
                map: self.map.clone(),
                parked: VecDeque::with_capacity(CHANNEL_QUEUE_DEPTH_MAX),
            }),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::to_value(ChangedStatus::of(&self.map)).unwrap_or_default()
    }
}

struct ChangedChannel {
    inner: BdevChannel,
    map: Arc<IntentMap>,
    /// Writes waiting for their mark to be persisted: (mark, request).
    parked: VecDeque<(u64, IoRequest)>,
}

impl ChangedChannel {
    /// Issues the parked writes whose marks the file holds, in order.
    fn issue_parked(&mut self) {
        let flushed = self.map.flushed();
        while self.parked.front().is_some_and(|(m, _)| *m <= flushed) {
            let Some((m, io)) = self.parked.pop_front() else { break };
            if let Err(io) = self.inner.submit(io) {
                self.parked.push_front((m, io));
                return;
            }
        }
    }
}

impl ChannelBackend for ChangedChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest> {
        if matches!(io.op, IoOp::Read | IoOp::Flush) {
            return self.inner.submit(io);
        }
        if self.parked.len() >= CHANNEL_QUEUE_DEPTH_MAX {
            return Err(io);
        }
        let mark = self.map.mark(io.offset_blocks, io.num_blocks.into());
        if self.parked.is_empty() && mark <= self.map.flushed() {
            return self.inner.submit(io);
        }
        self.parked.push_back((mark, io));
        self.issue_parked();
        Ok(())
    }

    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        if !self.parked.is_empty() {
            self.issue_parked();
        }
        self.inner.poll(f)
    }
}
