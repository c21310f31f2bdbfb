//! `null`: a bdev that completes everything without touching data. Reads
//! leave the buffer as it was; writes are discarded. For measuring the stack
//! above the device (SPDK's null bdev does the same).

use super::{
    check_geometry, Bdev, BdevChannel, BdevError, ChannelBackend, DoneQueue, Geometry, IoCompletion, IoOp, IoRequest,
    IoStats, StatsSet,
};
use std::sync::Arc;

pub struct NullBdev {
    name: String,
    uuid: [u8; 16],
    block_size: u32,
    num_blocks: u64,
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
        name: name.to_string(),
        uuid: uuid.unwrap_or_else(super::new_uuid),
        block_size,
        num_blocks,
        stats: StatsSet::default(),
    }))
}

const OPS: [IoOp; 5] = IoOp::ALL;

impl Bdev for NullBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &str {
        "Null disk"
    }
    fn driver(&self) -> &'static str {
        "null"
    }
    fn uuid(&self) -> [u8; 16] {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn supports(&self, op: IoOp) -> bool {
        OPS.contains(&op)
    }
    fn open_channel(&self) -> Result<BdevChannel, BdevError> {
        Ok(BdevChannel::new(
            &self.name,
            Geometry::new(self.block_size, self.num_blocks, 1, &OPS),
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
                "name": self.name,
                "num_blocks": self.num_blocks,
                "block_size": self.block_size,
                "uuid": super::uuid_to_string(&self.uuid),
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
