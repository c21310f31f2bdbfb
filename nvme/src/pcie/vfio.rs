//! The VFIO calls the driver makes: container, group and device file descriptors, BAR0
//! mapped into the process, PCI config space reads and writes, and IOMMU mappings
//! (type 1). Every `unsafe` block of the driver that talks to the kernel lives here.
//!
//! Our own ioctls rather than `vfio-ioctls`: the driver needs eight requests with
//! fixed-layout structs (`linux/vfio.h`), which is less code than adapting a crate made for
//! VMMs, and keeps the dependency list short.

use super::PcieError;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::ptr::NonNull;

const VFIO_TYPE: libc::c_ulong = b';' as libc::c_ulong;
const fn vfio_io(nr: libc::c_ulong) -> libc::c_ulong {
    (VFIO_TYPE << 8) | (100 + nr)
}
const VFIO_GET_API_VERSION: libc::c_ulong = vfio_io(0);
const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
const VFIO_SET_IOMMU: libc::c_ulong = vfio_io(2);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);

const VFIO_API_VERSION: libc::c_int = 0;
const VFIO_TYPE1_IOMMU: libc::c_ulong = 1;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;
const BAR0_REGION: u32 = 0;
const CONFIG_REGION: u32 = 7;

/// PCI command register and its bits.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

#[repr(C)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

fn os(what: &str, e: std::io::Error) -> PcieError {
    PcieError::Vfio(format!("{what}: {e}"))
}

/// `ioctl(fd, req, arg)` returning the result or the OS error.
fn ioctl(fd: &File, what: &str, req: libc::c_ulong, arg: libc::c_ulong) -> Result<libc::c_int, PcieError> {
    // SAFETY: `fd` is an open VFIO file; every request of this module takes either an
    // integer or a pointer to a live, correctly sized `#[repr(C)]` struct of ours, as
    // `linux/vfio.h` defines it, that outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        return Err(os(what, std::io::Error::last_os_error()));
    }
    Ok(r)
}

/// An open VFIO device with its container (IOMMU) and BAR0 mapped.
pub struct VfioDevice {
    container: File,
    _group: File,
    device: File,
    config_offset: u64,
    bar0: NonNull<u8>,
    bar0_len: usize,
}

// SAFETY: the BAR mapping is device memory owned by this value; access to registers goes
// through volatile reads and writes whose ordering the driver manages (one owner per
// queue's doorbells, the controller registers on the management path).
unsafe impl Send for VfioDevice {}
// SAFETY: as above; shared references only read or write registers volatilely.
unsafe impl Sync for VfioDevice {}

/// The IOMMU group of PCI function `bdf`, which must exist and be bound to `vfio-pci`.
fn iommu_group(bdf: &str) -> Result<String, PcieError> {
    let dev_dir = Path::new("/sys/bus/pci/devices").join(bdf);
    if !dev_dir.exists() {
        return Err(PcieError::NoDevice(bdf.to_string()));
    }
    let group_link = std::fs::read_link(dev_dir.join("iommu_group"))
        .map_err(|e| PcieError::Vfio(format!("{bdf} has no IOMMU group (is the IOMMU on?): {e}")))?;
    let group_id = group_link
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PcieError::Vfio(format!("{bdf}: unreadable IOMMU group link")))?
        .to_string();
    let driver = std::fs::read_link(dev_dir.join("driver"))
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    if driver.as_deref() != Some("vfio-pci") {
        return Err(PcieError::Vfio(format!(
            "{bdf} is not bound to vfio-pci (driver: {})",
            driver.as_deref().unwrap_or("none")
        )));
    }
    Ok(group_id)
}

/// The container's API version checked, the best type 1 IOMMU it offers (v2 first).
fn container_iommu(container: &File) -> Result<libc::c_ulong, PcieError> {
    if ioctl(container, "VFIO_GET_API_VERSION", VFIO_GET_API_VERSION, 0)? != VFIO_API_VERSION {
        return Err(PcieError::Vfio("unknown VFIO API version".into()));
    }
    for iommu in [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU] {
        if ioctl(container, "VFIO_CHECK_EXTENSION", VFIO_CHECK_EXTENSION, iommu)? > 0 {
            return Ok(iommu);
        }
    }
    Err(PcieError::Vfio("the container offers no type 1 IOMMU".into()))
}

impl VfioDevice {
    /// Opens PCI function `bdf` (`0000:00:04.0`), which must be bound to `vfio-pci`.
    pub fn open(bdf: &str) -> Result<VfioDevice, PcieError> {
        let group_id = iommu_group(bdf)?;
        let rw = |p: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| os(&format!("open {p}"), e))
        };
        let container = rw("/dev/vfio/vfio")?;
        let iommu = container_iommu(&container)?;
        let group = rw(&format!("/dev/vfio/{group_id}"))?;
        let mut status = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        ioctl(
            &group,
            "VFIO_GROUP_GET_STATUS",
            VFIO_GROUP_GET_STATUS,
            &mut status as *mut GroupStatus as libc::c_ulong,
        )?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(PcieError::Vfio(format!(
                "IOMMU group {group_id} is not viable: bind every device of it to vfio-pci"
            )));
        }
        let cfd: libc::c_int = container.as_raw_fd();
        ioctl(
            &group,
            "VFIO_GROUP_SET_CONTAINER",
            VFIO_GROUP_SET_CONTAINER,
            &cfd as *const libc::c_int as libc::c_ulong,
        )?;
        ioctl(&container, "VFIO_SET_IOMMU", VFIO_SET_IOMMU, iommu)?;
        let name = std::ffi::CString::new(bdf).map_err(|_| PcieError::NoDevice(bdf.to_string()))?;
        let fd = ioctl(
            &group,
            "VFIO_GROUP_GET_DEVICE_FD",
            VFIO_GROUP_GET_DEVICE_FD,
            name.as_ptr() as libc::c_ulong,
        )?;
        // SAFETY: the ioctl returned a new file descriptor that nothing else owns.
        let device = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let config = region_info(&device, CONFIG_REGION)?;
        let bar = region_info(&device, BAR0_REGION)?;
        if bar.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || bar.size < 0x2000 {
            return Err(PcieError::Vfio(format!("{bdf}: BAR0 cannot be mapped")));
        }
        let len = bar.size as usize;
        // SAFETY: maps the device's BAR0 region as VFIO reports it (offset and size from
        // VFIO_DEVICE_GET_REGION_INFO, a fresh shared mapping at a kernel-chosen address);
        // the result is checked against MAP_FAILED and unmapped once in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device.as_raw_fd(),
                bar.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os("mmap BAR0", std::io::Error::last_os_error()));
        }
        let bar0 = NonNull::new(p as *mut u8).ok_or_else(|| PcieError::Vfio("mmap BAR0 returned null".into()))?;
        let d = VfioDevice {
            container,
            _group: group,
            device,
            config_offset: config.offset,
            bar0,
            bar0_len: len,
        };
        d.enable_bus_master()?;
        Ok(d)
    }

    /// vfio-pci leaves bus mastering off: without it the controller cannot DMA.
    fn enable_bus_master(&self) -> Result<(), PcieError> {
        let mut b = [0u8; 2];
        self.device
            .read_exact_at(&mut b, self.config_offset + PCI_COMMAND)
            .map_err(|e| os("read PCI command", e))?;
        let cmd = u16::from_le_bytes(b) | PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY;
        self.device
            .write_all_at(&cmd.to_le_bytes(), self.config_offset + PCI_COMMAND)
            .map_err(|e| os("write PCI command", e))
    }

    /// Maps `len` bytes at `vaddr` for the device at `iova` (read and write).
    pub fn map_dma(&self, vaddr: *mut u8, iova: u64, len: usize) -> Result<(), PcieError> {
        let mut m = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size: len as u64,
        };
        ioctl(
            &self.container,
            "VFIO_IOMMU_MAP_DMA",
            VFIO_IOMMU_MAP_DMA,
            &mut m as *mut DmaMap as libc::c_ulong,
        )?;
        Ok(())
    }

    /// Removes the mapping at `iova` (management path).
    pub fn unmap_dma(&self, iova: u64, len: usize) -> Result<(), PcieError> {
        let mut m = DmaUnmap {
            argsz: std::mem::size_of::<DmaUnmap>() as u32,
            flags: 0,
            iova,
            size: len as u64,
        };
        ioctl(
            &self.container,
            "VFIO_IOMMU_UNMAP_DMA",
            VFIO_IOMMU_UNMAP_DMA,
            &mut m as *mut DmaUnmap as libc::c_ulong,
        )?;
        Ok(())
    }

    /// Reads the 32-bit register at BAR0 offset `off`.
    #[inline]
    pub fn read32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.bar0_len && off.is_multiple_of(4));
        // SAFETY: the offset is inside the mapped BAR (checked) and 4-byte aligned; device
        // registers are read with a volatile access.
        unsafe { std::ptr::read_volatile(self.bar0.as_ptr().add(off) as *const u32) }
    }

    /// Writes the 32-bit register at BAR0 offset `off` (doorbells, CC, AQA).
    #[inline]
    pub fn write32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.bar0_len && off.is_multiple_of(4));
        // SAFETY: as in `read32`; a volatile store reaches the device in program order
        // after the preceding stores to queue memory (a release fence precedes doorbells).
        unsafe { std::ptr::write_volatile(self.bar0.as_ptr().add(off) as *mut u32, v) }
    }

    /// Reads a 64-bit register as two 32-bit reads (low first), as the spec allows.
    pub fn read64(&self, off: usize) -> u64 {
        u64::from(self.read32(off)) | (u64::from(self.read32(off + 4)) << 32)
    }

    /// Writes a 64-bit register as two 32-bit writes (low first).
    pub fn write64(&self, off: usize, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

fn region_info(device: &File, index: u32) -> Result<RegionInfo, PcieError> {
    let mut r = RegionInfo {
        argsz: std::mem::size_of::<RegionInfo>() as u32,
        index,
        ..RegionInfo::default()
    };
    ioctl(
        device,
        "VFIO_DEVICE_GET_REGION_INFO",
        VFIO_DEVICE_GET_REGION_INFO,
        &mut r as *mut RegionInfo as libc::c_ulong,
    )?;
    Ok(r)
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `open`, unmapped once; no register pointer
        // outlives the device (queues hold an Arc of it).
        unsafe {
            libc::munmap(self.bar0.as_ptr() as *mut libc::c_void, self.bar0_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_linux_vfio_h() {
        assert_eq!(VFIO_GET_API_VERSION, 0x3B64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3B6A);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3B6C);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3B71);
        assert_eq!(std::mem::size_of::<RegionInfo>(), 32);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
        assert_eq!(std::mem::size_of::<DmaUnmap>(), 24);
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        match VfioDevice::open("0000:ff:1f.7") {
            Err(PcieError::NoDevice(d)) => assert_eq!(d, "0000:ff:1f.7"),
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("opened a device that does not exist"),
        }
    }
}
