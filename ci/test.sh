#!/usr/bin/env bash
# The whole test suite: what a newcomer runs, and what CI (.ci/run) runs.
# Installs what it needs itself, then checks formatting and lints, runs
# every test of every crate (unit, integration, end-to-end), and gives every
# fuzz target a short run (ci/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# Native tools the tests use; skipped when already present.
need=()
command -v cc >/dev/null || need+=(gcc)
command -v python3 >/dev/null || need+=(python3)
command -v c++ >/dev/null || need+=(g++) # libFuzzer, built by the fuzz targets' libfuzzer-sys
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "ci/test.sh: please install: ${need[*]}" >&2
    exit 1
  fi
fi
if ! command -v cargo >/dev/null; then
  echo "ci/test.sh: cargo (Rust stable) is required" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy 2>/dev/null || true

export CARGO_TERM_COLOR=never
# The suite links some 80 test binaries in release mode. Thin LTO across every crate at each
# of those links, and full debug info, are what a benchmark wants, not a test run: the
# release profile's LTO is off and debug info is line tables only for every cargo call
# below (the guest scripts' builds included, so nothing is built twice). Benchmarks
# (`baton perf`, ci/bench-*.sh) still build with the profile in Cargo.toml.
export CARGO_PROFILE_RELEASE_LTO=${CARGO_PROFILE_RELEASE_LTO:-false}
export CARGO_PROFILE_RELEASE_DEBUG=${CARGO_PROFILE_RELEASE_DEBUG:-line-tables-only}
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
# Release mode: the end-to-end tests move real data through real processes.
cargo test --workspace --release --no-fail-fast -- --test-threads=2

# The engine's tests again in the DPDK env (docs/dpdk.md): rte_rings behind the reactors'
# message rings, rte_mempool and DPDK memory behind the buffer pools. Needs Debian's
# libdpdk-dev (22.11), libclang-dev (bindgen) and pkg-config. Adds about 3.5 minutes here
# (2 shared cores; mostly compiling the engine once more in release with the feature).
echo "== cargo test -p baton-engine --features dpdk (BATON_ENV=dpdk)"
dpdk_need=()
for p in libdpdk-dev libclang-dev pkg-config; do dpkg -s "$p" >/dev/null 2>&1 || dpdk_need+=("$p"); done
if [ ${#dpdk_need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${dpdk_need[@]}" >/dev/null
  else
    echo "ci/test.sh: please install: ${dpdk_need[*]}" >&2
    exit 1
  fi
fi
cargo clippy -p baton-engine --features dpdk --all-targets -- -D warnings
BATON_ENV=dpdk cargo test -p baton-engine --release --features dpdk -- --test-threads=2

# The RDMA verbs transport (docs/rdma.md): feature `rdma`, rdma-sys over Debian's
# libibverbs/librdmacm (bindgen: libclang-dev). Lints of every crate it reaches, then the
# transport's tests; those that need a device print SKIPPED here (none on this machine)
# and run in the Soft-RoCE guest below. Never `cargo test -p rdma-sys`: its layout tests abort.
echo "== cargo clippy/test --features rdma"
rdma_need=()
for p in libibverbs-dev librdmacm-dev libclang-dev pkg-config; do dpkg -s "$p" >/dev/null 2>&1 || rdma_need+=("$p"); done
if [ ${#rdma_need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${rdma_need[@]}" >/dev/null
  else
    echo "ci/test.sh: please install: ${rdma_need[*]}" >&2
    exit 1
  fi
fi
cargo clippy -p baton-rdma-transport --features rdma --all-targets -- -D warnings
cargo clippy -p baton --features rdma --all-targets -- -D warnings
cargo test -p baton-rdma-transport --release --features rdma -- --test-threads=2

# Every parser of network input has a cargo-fuzz target; each gets a short
# coverage-guided run (stable Rust, no cargo-fuzz needed; docs/fuzzing.md).
echo "== ci/fuzz.sh"
bash ci/fuzz.sh
# SPDK's own rpc.py (PyPI `spdk`, in a virtualenv) against `baton target`.
echo "== ci/spdk-rpc.sh"
bash ci/spdk-rpc.sh
# The Linux kernel's NVMe/TCP initiator against baton's target in a QEMU/TCG guest
# (about 3 minutes here; BATON_SKIP_GUEST=1 skips the guest tests on a machine without QEMU or root).
# Then baton's user-space NVMe driver over VFIO against QEMU's NVMe controller behind an
# emulated IOMMU, in the same kind of guest (about 2 minutes here; same switch).
if [ "${BATON_SKIP_GUEST:-0}" != 1 ]; then
  echo "== ci/nvme-tcp-e2e.sh"
  bash ci/nvme-tcp-e2e.sh
  echo "== ci/nvme-pcie-e2e.sh"
  bash ci/nvme-pcie-e2e.sh
  # Delay, loss, reordering and healing partitions between the sites (tc netem, which this
  # host's kernel lacks) in the same kind of guest: tests/netem.rs (docs/faults.md; about
  # 5 minutes here, build included). The split-brain rounds need no netem and ran above,
  # in cargo test (tests/split_brain.rs, as root).
  echo "== ci/netem-guest.sh"
  bash ci/netem-guest.sh
  # Replication over RDMA verbs on Soft-RoCE in the same kind of guest: the transport's
  # device tests, then baton chaos with every link over RDMA (docs/rdma.md). About 8
  # minutes here: 5 to build baton in release with the rdma feature, 3 in the guest.
  echo "== ci/rdma-e2e.sh"
  bash ci/rdma-e2e.sh
  # In-band authentication (DH-HMAC-CHAP) with the kernel's host: one guest boot of
  # Debian's 6.12 kernel package (6.1 lacks it).
  echo "== ci/nvme-auth-e2e.sh"
  bash ci/nvme-auth-e2e.sh
  # NVMe/TCP TLS (PSK) with the kernel's host and tlshd (built once, cached), same kernel.
  echo "== ci/nvme-tls-e2e.sh"
  bash ci/nvme-tls-e2e.sh
fi

# The buffer pools and the malloc bdev map 2 MiB hugepages when some are reserved and
# 4 KiB pages otherwise; the run above took whichever this machine has. Run the engine's
# tests once more on the other path (as root, reserving a few and giving them back).
hp=/proc/sys/vm/nr_hugepages
if [ "$(id -u)" = 0 ] && [ -w "$hp" ]; then
  before=$(cat "$hp")
  if [ "$before" = 0 ]; then want=64; else want=0; fi
  echo "== cargo test -p baton-engine with nr_hugepages=$want"
  echo "$want" > "$hp"
  rc=0
  cargo test --release -p baton-engine -- --test-threads=2 || rc=$?
  echo "$before" > "$hp"
  exit $rc
fi
