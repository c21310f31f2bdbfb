//! DMA memory and the IOVA map. The driver's own memory (queues, PRP list pages, a bounce
//! area) and every engine buffer pool are mapped into the IOMMU once, at attach or queue
//! creation, never per I/O. IOVAs come from a bump allocator of our own starting at 1 GiB
//! (below the 39-bit address width of QEMU's emulated IOMMU), each mapping aligned to
//! 2 MiB. An I/O buffer's IOVA is found by a scan of at most `POOLS_MAX` pool regions.

use super::vfio::VfioDevice;
use super::PcieError;
use engine::buf::DmaBuf;
use engine::Mapping;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// First IOVA handed out.
pub const IOVA_BASE: u64 = 1 << 30;
/// Alignment of every mapping in IOVA space.
const IOVA_ALIGN: u64 = 2 << 20;
/// The controller's memory page size (CC.MPS 0).
pub const PAGE: usize = 4096;

/// Hands out IOVA ranges (never reused: mappings live as long as the controller).
pub struct IovaAlloc {
    next: AtomicU64,
}

impl Default for IovaAlloc {
    fn default() -> Self {
        IovaAlloc {
            next: AtomicU64::new(IOVA_BASE),
        }
    }
}

impl IovaAlloc {
    /// A range of `len` bytes.
    pub fn take(&self, len: usize) -> u64 {
        let len = (len as u64).div_ceil(IOVA_ALIGN) * IOVA_ALIGN;
        self.next.fetch_add(len, Ordering::Relaxed)
    }
}

/// Driver memory mapped for the device: zeroed, page aligned, contiguous in IOVA space.
pub struct DmaMem {
    map: Mapping,
    iova: u64,
    dev: Arc<VfioDevice>,
}

impl DmaMem {
    /// Maps `len` bytes (rounded up to pages) for the device. Management path.
    pub fn new(dev: &Arc<VfioDevice>, iova: &IovaAlloc, len: usize) -> Result<DmaMem, PcieError> {
        let len = len.div_ceil(PAGE) * PAGE;
        let map = Mapping::anonymous(len, false).map_err(|e| PcieError::Vfio(format!("DMA memory: {e}")))?;
        let at = iova.take(len);
        dev.map_dma(map.as_ptr(), at, len)?;
        Ok(DmaMem {
            map,
            iova: at,
            dev: dev.clone(),
        })
    }

    pub fn ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    pub fn iova(&self) -> u64 {
        self.iova
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

impl Drop for DmaMem {
    fn drop(&mut self) {
        if let Err(e) = self.dev.unmap_dma(self.iova, self.map.len()) {
            log::warn!("nvme pcie: unmapping {:#x}: {e}", self.iova);
        }
    }
}

/// The engine's buffer pools as the device sees them: (start, length, IOVA).
#[derive(Default)]
pub struct PoolMap {
    regions: Vec<(usize, usize, u64)>,
}

impl PoolMap {
    /// Maps every pool that exists now. Pools made later are not mapped: their buffers go
    /// through the bounce area (counted).
    pub fn map_all(dev: &VfioDevice, iova: &IovaAlloc) -> Result<PoolMap, PcieError> {
        let mut regions = Vec::new();
        for p in engine::buf::pools() {
            let (ptr, len) = p.region();
            let at = iova.take(len);
            dev.map_dma(ptr, at, len)?;
            regions.push((ptr as usize, len, at));
        }
        Ok(PoolMap { regions })
    }

    /// The IOVA of `b`'s bytes if it lies in a mapped pool.
    #[inline]
    pub fn iova_of(&self, b: &DmaBuf) -> Option<u64> {
        let a = b.as_ptr() as usize;
        self.regions
            .iter()
            .find(|(s, l, _)| a >= *s && a + b.capacity() <= s + l)
            .map(|(s, _, i)| i + (a - s) as u64)
    }

    pub fn count(&self) -> usize {
        self.regions.len()
    }
}

/// PRP1/PRP2 of a transfer of `len` bytes at IOVA `iova` (page aligned start, as every
/// engine buffer is): PRP2 is the second page, or a list written to `list` (one page of
/// 512 entries, at IOVA `list_iova`) when more than two pages are needed.
pub fn build_prps(iova: u64, len: usize, list: &mut [u64], list_iova: u64) -> Result<(u64, u64), PcieError> {
    let pages = len.div_ceil(PAGE).max(1);
    if pages == 1 {
        return Ok((iova, 0));
    }
    if pages == 2 {
        return Ok((iova, iova + PAGE as u64));
    }
    if pages - 1 > list.len() {
        return Err(PcieError::TooLarge(len));
    }
    for (i, e) in list.iter_mut().take(pages - 1).enumerate() {
        *e = iova + ((i + 1) * PAGE) as u64;
    }
    Ok((iova, list_iova))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prps_for_one_two_and_many_pages() {
        let mut list = [0u64; 512];
        assert_eq!(
            build_prps(0x1000_0000, 512, &mut list, 0x9000).unwrap(),
            (0x1000_0000, 0)
        );
        assert_eq!(
            build_prps(0x1000_0000, 4096, &mut list, 0x9000).unwrap(),
            (0x1000_0000, 0)
        );
        assert_eq!(
            build_prps(0x1000_0000, 8192, &mut list, 0x9000).unwrap(),
            (0x1000_0000, 0x1000_1000)
        );
        assert_eq!(
            build_prps(0x1000_0000, 5 * 4096, &mut list, 0x9000).unwrap(),
            (0x1000_0000, 0x9000)
        );
        assert_eq!(&list[..4], &[0x1000_1000, 0x1000_2000, 0x1000_3000, 0x1000_4000]);
        assert!(build_prps(0, 514 * 4096, &mut list, 0).is_err());
    }

    #[test]
    fn iovas_are_aligned_and_disjoint() {
        let a = IovaAlloc::default();
        let x = a.take(4096);
        let y = a.take(3 << 20);
        let z = a.take(1);
        assert_eq!(x, IOVA_BASE);
        assert_eq!(y, IOVA_BASE + (2 << 20));
        assert_eq!(z, y + (4 << 20));
    }
}
