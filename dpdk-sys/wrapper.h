/* The DPDK headers baton's `dpdk` env binds (see build.rs). */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_ring_elem.h>
#include <rte_thread.h>

/* rte_errno is a thread-local variable: Rust reads it through this. */
int baton_rte_errno(void);
