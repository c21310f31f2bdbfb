/*
 * vfio-probe BDF: a known-good VFIO user for ci/nvme-pcie-e2e.sh. It shows that the
 * guest's VFIO set-up works independently of baton's driver (nvme/src/pcie/): the
 * container and type1 IOMMU (refused without interrupt remapping), the group, a DMA
 * mapping, the device's config space and BAR0 (the NVMe controller's CAP and VS), its
 * MSI-X vectors. It sets nothing on the device (bus mastering stays as vfio-pci left it,
 * so the driver under test must set it) and releases everything on exit.
 *
 * Prints "VFIO-PROBE ok NAME ..." / "VFIO-PROBE FAIL NAME ..." lines; exit 0 iff all ok.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static int failed;

__attribute__((format(printf, 3, 4))) static int step(const char *name, int ok, const char *fmt, ...) {
  va_list ap;
  int saved = errno;
  printf("VFIO-PROBE %s %s", ok ? "ok  " : "FAIL", name);
  if (fmt) {
    putchar(' ');
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
  }
  if (!ok) {
    printf(" (%s)", strerror(saved));
    failed = 1;
  }
  putchar('\n');
  fflush(stdout);
  return ok;
}

int main(int argc, char **argv) {
  char path[256], link[256];
  ssize_t n;
  int container, group, device;

  if (argc != 2) {
    fprintf(stderr, "usage: vfio-probe BDF\n");
    return 2;
  }
  const char *bdf = argv[1];

  container = open("/dev/vfio/vfio", O_RDWR);
  if (!step("container", container >= 0, "/dev/vfio/vfio")) return 1;
  int api = ioctl(container, VFIO_GET_API_VERSION);
  step("api-version", api == VFIO_API_VERSION, "%d", api);
  int v2 = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) > 0;
  step("type1-extension", v2 || ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU) > 0, "%s",
       v2 ? "type1v2" : "type1");

  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", bdf);
  n = readlink(path, link, sizeof link - 1);
  if (!step("iommu-group", n > 0, "%s", path)) return 1;
  link[n] = 0;
  snprintf(path, sizeof path, "/dev/vfio/%s", basename(link));
  group = open(path, O_RDWR);
  if (!step("group-open", group >= 0, "%s", path)) return 1;
  struct vfio_group_status gs = {.argsz = sizeof gs};
  int r = ioctl(group, VFIO_GROUP_GET_STATUS, &gs);
  step("group-viable", r == 0 && (gs.flags & VFIO_GROUP_FLAGS_VIABLE), "flags 0x%x", gs.flags);
  r = ioctl(group, VFIO_GROUP_SET_CONTAINER, &container);
  if (!step("group-set-container", r == 0, NULL)) return 1;
  /* vfio_iommu_type1 refuses this without interrupt remapping (allow_unsafe_interrupts). */
  r = ioctl(container, VFIO_SET_IOMMU, v2 ? VFIO_TYPE1v2_IOMMU : VFIO_TYPE1_IOMMU);
  if (!step("set-iommu", r == 0, NULL)) return 1;

  struct vfio_iommu_type1_info ii = {.argsz = sizeof ii};
  r = ioctl(container, VFIO_IOMMU_GET_INFO, &ii);
  step("iommu-info", r == 0, "flags 0x%x pgsizes 0x%llx", ii.flags, (unsigned long long)ii.iova_pgsizes);

  size_t len = 1 << 20;
  void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf != MAP_FAILED) {
    memset(buf, 0, len);
    struct vfio_iommu_type1_dma_map map = {.argsz = sizeof map,
                                           .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                           .vaddr = (uintptr_t)buf,
                                           .iova = 0x100000,
                                           .size = len};
    r = ioctl(container, VFIO_IOMMU_MAP_DMA, &map);
    step("dma-map", r == 0, "1 MiB at iova 0x100000");
    struct vfio_iommu_type1_dma_unmap unmap = {.argsz = sizeof unmap, .iova = 0x100000, .size = len};
    if (r == 0) step("dma-unmap", ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap) == 0, NULL);
  } else {
    step("dma-buffer", 0, NULL);
  }

  device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
  if (!step("device-fd", device >= 0, "%s", bdf)) return 1;
  struct vfio_device_info di = {.argsz = sizeof di};
  r = ioctl(device, VFIO_DEVICE_GET_INFO, &di);
  step("device-info", r == 0 && (di.flags & VFIO_DEVICE_FLAGS_PCI), "flags 0x%x regions %u irqs %u", di.flags,
       di.num_regions, di.num_irqs);

  struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  r = ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &cfg);
  uint16_t id[3] = {0, 0, 0};
  if (step("config-region", r == 0, "size %llu", (unsigned long long)cfg.size)) {
    n = pread(device, id, sizeof id, (off_t)cfg.offset);
    step("config-ids", n == (ssize_t)sizeof id && id[0] == 0x1b36 && id[1] == 0x0010, "%04x:%04x", id[0], id[1]);
    printf("VFIO-PROBE info command 0x%04x (bus master %s)\n", id[2], (id[2] & 4) ? "on" : "off");
  }

  struct vfio_region_info bar = {.argsz = sizeof bar, .index = VFIO_PCI_BAR0_REGION_INDEX};
  r = ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &bar);
  if (step("bar0-region", r == 0 && bar.size >= 0x1000, "size %llu flags 0x%x", (unsigned long long)bar.size,
           bar.flags)) {
    uint64_t cap = 0;
    uint32_t vs = 0;
    if (bar.flags & VFIO_REGION_INFO_FLAG_MMAP) {
      volatile uint8_t *regs = mmap(NULL, 0x1000, PROT_READ, MAP_SHARED, device, (off_t)bar.offset);
      if (step("bar0-mmap", regs != MAP_FAILED, NULL)) {
        cap = *(volatile uint32_t *)regs | (uint64_t) * (volatile uint32_t *)(regs + 4) << 32;
        vs = *(volatile uint32_t *)(regs + 8);
        munmap((void *)regs, 0x1000);
      }
    } else {
      n = pread(device, &cap, 8, (off_t)bar.offset) + pread(device, &vs, 4, (off_t)bar.offset + 8);
      step("bar0-pread", n == 12, NULL);
    }
    step("nvme-regs", cap != 0 && vs >= 0x10000, "CAP 0x%016llx MQES %llu VS %u.%u", (unsigned long long)cap,
         (unsigned long long)(cap & 0xffff) + 1, vs >> 16, (vs >> 8) & 0xff);
  }

  struct vfio_irq_info irq = {.argsz = sizeof irq, .index = VFIO_PCI_MSIX_IRQ_INDEX};
  r = ioctl(device, VFIO_DEVICE_GET_IRQ_INFO, &irq);
  step("msix", r == 0 && irq.count > 0, "%u vectors", irq.count);

  close(device);
  close(group);
  close(container);
  printf("vfio-probe: %s\n", failed ? "failed" : "all ok");
  return failed;
}
