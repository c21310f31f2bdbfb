//! `null`: a bdev that completes everything without touching data. Reads
//! leave the buffer as it was; writes are discarded. For measuring the stack
//! above the device (SPDK's null bdev does the same).

use super::{
    check_geometry, Bdev, BdevChannel, BdevError, BdevInfo, ChannelBackend, DoneQueue, IoCompletion, IoOp, IoRequest,
    IoStats, StatsSet,
};
use std::sync::Arc;

pub struct NullBdev {
    info: BdevInfo,
    stats: StatsSet,
}

/// Creates (but does not register) a null bdev.
pub fn create(
    name: &str,
    num_blocks: u64,
    block_size: u32,
    uuid: Option<[u8; 16]>,
) -> Result<Arc<dyn Bdev>, BdevError> {
    check_geometry(name, block_size, num_blocks)?;
    Ok(Arc::new(NullBdev {
        info: BdevInfo::new(
            name,
            "Null disk",
            "null",
            uuid.unwrap_or_else(super::new_uuid),
            block_size,
            num_blocks,
            &OPS,
        ),
        stats: StatsSet::default(),
    }))
}

const OPS: [IoOp; 5] = IoOp::ALL;

impl Bdev for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        Ok(BdevChannel::new(
            &self.info.name,
            self.info.geometry(1),
            self.stats.new_channel(),
            Box::new(NullChannel {
                done: DoneQueue::default(),
            }),
        ))
    }
    fn io_stats(&self) -> IoStats {
        self.stats.sum()
    }
    fn config(&self) -> Option<(&'static str, serde_json::Value)> {
        Some((
            "bdev_null_create",
            serde_json::json!({
                "name": self.info.name,
                "num_blocks": self.info.num_blocks,
                "block_size": self.info.block_size,
                "uuid": super::uuid_to_string(&self.info.uuid),
            }),
        ))
    }
}

struct NullChannel {
    done: DoneQueue,
}

impl ChannelBackend for NullChannel {
    #[inline]
    fn submit(&mut self, io: IoRequest) -> Result<(), IoRequest> {
        if self.done.is_full() {
            return Err(io);
        }
        self.done.complete(io);
        Ok(())
    }

    #[inline]
    fn poll(&mut self, f: &mut dyn FnMut(IoCompletion)) -> usize {
        self.done.poll(f)
    }
}
