//! The receive gate of the NVMe/TCP target's poll groups: a connection whose reads found
//! its socket empty 16 times in a row is not read again until the group's one readiness
//! call per poll reports the socket readable.
//!
//! Counted, not timed. Idle queues sit beside a busy one on the same poll groups; every
//! command of the busy queue needs at least one poll of its group, so reading every
//! connection on every poll would cost each idle queue of that group one empty read per
//! command. With the gate an idle queue costs at most 16 empty reads in all, and the busy
//! queue at most 16 per command.

mod common;

use common::*;
use std::sync::atomic::Ordering::Relaxed;

/// Controllers left idle (each an admin and an I/O queue: twice as many connections).
const IDLE_CONTROLLERS: u64 = 32;
/// Empty reads in a row before a connection is gated (the target's constant), plus one.
const RUN: u64 = 17;
/// Commands the busy queue runs (a write and a read per round).
const COMMANDS: u64 = 400;

fn empty_reads() -> u64 {
    nvme::nvmf::tcp::group_stats()
        .iter()
        .map(|g| g.empty_reads.load(Relaxed))
        .sum()
}

#[test]
fn idle_connections_are_not_read_until_readable() {
    let f = fixture();
    let mut idle: Vec<_> = (0..IDLE_CONTROLLERS).map(|_| connect(&f, &opts())).collect();
    let (_c, mut q) = connect(&f, &opts());
    write_read(&mut q, 0, 8, 1);
    let before = empty_reads();
    for i in 0..COMMANDS / 2 {
        write_read(&mut q, (i % 64) * 8, 8, i as u8);
    }
    let n = empty_reads() - before;
    // Gated: at most RUN per command of the busy queue and per idle connection (two for a
    // Keep Alive). Ungated: at least IDLE_CONTROLLERS (half the idle connections: one
    // reactor's share) per command, 12 800 here against a bound of 8 976.
    let bound = RUN * COMMANDS + 2 * RUN * 2 * IDLE_CONTROLLERS;
    assert!(
        n <= bound,
        "{n} empty socket reads over {COMMANDS} commands beside {} idle connections (at most {bound})",
        2 * IDLE_CONTROLLERS
    );
    // A gated connection still hears its host at once.
    for (i, (_, q)) in idle.iter_mut().enumerate() {
        write_read(q, 512 + i as u64 * 8, 8, 7);
    }
}
