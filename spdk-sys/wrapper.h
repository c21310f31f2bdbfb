/* The SPDK headers baton's `spdk-nvme` bdev binds (see build.rs). */
#include <spdk/stdinc.h>
#include <spdk/env.h>
#include <spdk/env_dpdk.h>
#include <spdk/nvme.h>
