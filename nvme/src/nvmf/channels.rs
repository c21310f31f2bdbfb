//! One I/O queue's view of its subsystem, shared by the NVMe/TCP and NVMe/RDMA targets:
//! the namespace table, one bdev I/O channel per bdev the namespaces use (with the bdev's
//! restart point sink), the table's refresh after a namespace change, the bdev completion
//! poll and the retry queue for what a full channel hands back (back-pressure).
//!
//! The transports keep what differs: how a command's data moves and how it completes. A
//! request holds the index of its channel; a refresh never removes or reorders channels,
//! so that index stays valid for I/O in flight.
//!
//! Hot path: a namespace lookup, a submit and a poll neither lock nor allocate (the retry
//! and completion queues are sized when the queue is made; a refresh, which locks the
//! subsystem and may open channels, runs at Connect and after a namespace change only).

use super::ctrlr::Controller;
use super::io::{self, NsGeometry};
use super::restart::{self, RestartPointSink};
use super::Subsystem;
use crate::spec::Status;
use engine::bdev::{Bdev, BdevChannel, IoCompletion, IoOp, IoRequest};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One namespace of the queue's subsystem, as of the last refresh.
struct NsEntry {
    nsid: u32,
    anagrpid: u32,
    geo: NsGeometry,
    /// Index of its bdev's channel.
    chan: usize,
}

/// The queue's channel to one bdev.
struct ChanEntry {
    bdev: Arc<dyn Bdev>,
    chan: BdevChannel,
    /// The bdev's restart point sink (replicated volumes), as of `QueueChannels::sink_gen`.
    sink: Option<Arc<dyn RestartPointSink>>,
}

/// Where [`QueueChannels::submit`] put a bdev operation. Every operation completes once,
/// through [`QueueChannels::poll`], whichever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Submitted {
    /// The channel took it.
    Accepted,
    /// The channel was full: it waits in the retry queue.
    Full,
    /// Earlier operations wait in the retry queue: it waits behind them, untried (keeps
    /// the queue's order).
    Queued,
}

/// The Unmaps [`QueueChannels::unmap_ranges`] submitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Unmaps {
    /// How many (each completes once, or is dropped by [`QueueChannels::close`]).
    pub(crate) pending: u32,
}

/// A queue's namespaces, bdev channels and bdev retry queue.
pub(crate) struct QueueChannels {
    ns: Vec<NsEntry>,
    /// `Subsystem::ns_generation` the table was built at.
    ns_gen: u64,
    chans: Vec<ChanEntry>,
    /// `restart::generation()` the channels' sinks were looked up at.
    sink_gen: u64,
    /// Operations a full channel handed back (channel index, operation), oldest first;
    /// resubmitted after each poll.
    retry: VecDeque<(usize, IoRequest)>,
    /// Completions of one poll (kept to reuse its room).
    done: Vec<IoCompletion>,
}

impl QueueChannels {
    /// An empty table; `depth` (the queue's entries) sizes the completion and retry queues.
    /// Setup path: allocates.
    pub(crate) fn new(depth: usize) -> QueueChannels {
        QueueChannels {
            ns: Vec::new(),
            ns_gen: 0,
            chans: Vec::new(),
            sink_gen: 0,
            retry: VecDeque::with_capacity(depth),
            done: Vec::with_capacity(depth),
        }
    }

    /// Rebuilds the namespace table from the subsystem (Connect and after a namespace
    /// change) and looks the sinks up again. Opens channels for new bdevs; keeps the
    /// channels already open, in place (requests in flight hold their indexes).
    pub(crate) fn refresh(&mut self, subsys: &Subsystem) {
        self.ns_gen = subsys.ns_generation.load(Ordering::Acquire);
        let nss: Vec<_> = subsys.state().namespaces.values().cloned().collect();
        self.ns.clear();
        for ns in nss {
            let idx = match self.chans.iter().position(|c| Arc::ptr_eq(&c.bdev, &ns.bdev)) {
                Some(i) => i,
                None => match ns.bdev.open_channel() {
                    Ok(chan) => {
                        self.chans.push(ChanEntry {
                            bdev: ns.bdev.clone(),
                            chan,
                            sink: None,
                        });
                        self.chans.len() - 1
                    }
                    Err(e) => {
                        log::warn!("nvmf: cannot open a channel to bdev {}: {e}", ns.bdev.name());
                        continue;
                    }
                },
            };
            self.ns.push(NsEntry {
                nsid: ns.nsid,
                anagrpid: ns.anagrpid,
                geo: NsGeometry {
                    block_size: ns.bdev.block_size(),
                    num_blocks: ns.bdev.num_blocks(),
                },
                chan: idx,
            });
        }
        self.refresh_sinks();
    }

    /// Looks up every channel's restart point sink again (after a registry change).
    fn refresh_sinks(&mut self) {
        self.sink_gen = restart::generation();
        for c in self.chans.iter_mut() {
            c.sink = restart::lookup(c.bdev.name());
        }
    }

    /// The namespace `nsid` of an I/O command on a queue of controller `ctrlr`: its
    /// geometry and channel index. Refreshes the table first if the subsystem's namespaces
    /// changed. Invalid Namespace if it has none; the ANA status if the namespace is not
    /// accessible through the controller's listener (the host retries on another path).
    pub(crate) fn namespace(&mut self, ctrlr: &Controller, nsid: u32) -> Result<(NsGeometry, usize), Status> {
        if ctrlr.subsys.ns_generation.load(Ordering::Acquire) != self.ns_gen {
            self.refresh(&ctrlr.subsys);
        }
        let ns = self
            .ns
            .iter()
            .find(|n| n.nsid == nsid)
            .ok_or(Status::INVALID_NAMESPACE)?;
        if let Some(s) = ctrlr.ana_state(ns.anagrpid).io_status() {
            return Err(s);
        }
        Ok((ns.geo, ns.chan))
    }

    /// The geometry of the namespace channel `chan` serves (None if no namespace of the
    /// table uses it any more).
    pub(crate) fn geometry(&self, chan: usize) -> Option<NsGeometry> {
        self.ns.iter().find(|n| n.chan == chan).map(|n| n.geo)
    }

    /// Whether the bdev behind channel `chan` does `op`.
    pub(crate) fn supports(&self, chan: usize, op: IoOp) -> bool {
        self.chans.get(chan).is_some_and(|c| c.bdev.supports(op))
    }

    /// Channel `chan`'s restart point sink as last looked up.
    pub(crate) fn sink(&self, chan: usize) -> Option<&Arc<dyn RestartPointSink>> {
        self.chans.get(chan)?.sink.as_ref()
    }

    /// Channel `chan`'s restart point sink, looked up again first if the registry changed
    /// (one atomic load when it did not).
    pub(crate) fn current_sink(&mut self, chan: usize) -> Option<&Arc<dyn RestartPointSink>> {
        if restart::generation() != self.sink_gen {
            self.refresh_sinks();
        }
        self.sink(chan)
    }

    /// Submits `io` on channel `chan`; behind the retry queue when it holds operations,
    /// into it when the channel is full.
    pub(crate) fn submit(&mut self, chan: usize, io: IoRequest) -> Submitted {
        if !self.retry.is_empty() {
            self.retry.push_back((chan, io));
            return Submitted::Queued;
        }
        // `chan` is an index the table gave (never removed): in range.
        match self.chans[chan].chan.submit(io) {
            Ok(()) => Submitted::Accepted,
            Err(io) => {
                self.retry.push_back((chan, io));
                Submitted::Full
            }
        }
    }

    /// Dataset Management with Deallocate on channel `chan`: checks all `ranges` of `data`
    /// (16 bytes each) against the namespace, then submits one Unmap per non-empty range,
    /// each with `user_data`. Nothing is submitted unless every range is in the namespace.
    pub(crate) fn unmap_ranges(
        &mut self,
        chan: usize,
        data: &[u8],
        ranges: u32,
        user_data: u64,
    ) -> Result<Unmaps, Status> {
        let geo = self.geometry(chan).ok_or(Status::INVALID_NAMESPACE)?;
        if data.len() < ranges as usize * 16 {
            return Err(Status::INVALID_FIELD);
        }
        (0..ranges as usize).try_for_each(|i| {
            let (nlb, slba) = io::dsm_range(data, i);
            io::check_dsm_range(nlb, slba, geo)
        })?;
        let mut n = Unmaps::default();
        for i in 0..ranges as usize {
            let (nlb, slba) = io::dsm_range(data, i);
            if nlb == 0 {
                continue;
            }
            let io = IoRequest {
                op: IoOp::Unmap,
                offset_blocks: slba,
                num_blocks: nlb,
                buf: None,
                user_data,
            };
            n.pending += 1;
            self.submit(chan, io);
        }
        Ok(n)
    }

    /// Whether operations wait in the retry queue (the queue's reactor must keep polling:
    /// nothing wakes it for them).
    pub(crate) fn retry_pending(&self) -> bool {
        !self.retry.is_empty()
    }

    /// Reaps the completions of every channel with I/O in flight and hands them to
    /// `handle` with the queue's owner `owner` (which reaches this table through `get`;
    /// `handle` drains them and may submit more), then resubmits what waits in the retry
    /// queue, oldest first, until a channel is full again. True if anything completed.
    pub(crate) fn poll<O>(
        owner: &mut O,
        get: fn(&mut O) -> &mut QueueChannels,
        handle: impl FnOnce(&mut O, &mut Vec<IoCompletion>),
    ) -> bool {
        let qc = get(owner);
        let mut done = std::mem::take(&mut qc.done);
        for c in qc.chans.iter_mut() {
            if c.chan.outstanding() > 0 {
                c.chan.poll(&mut |cpl| done.push(cpl));
            }
        }
        let busy = !done.is_empty();
        handle(owner, &mut done);
        done.clear();
        let qc = get(owner);
        qc.done = done;
        qc.resubmit();
        busy
    }

    /// Resubmits retried operations in order until a channel hands one back.
    fn resubmit(&mut self) {
        while let Some((chan, io)) = self.retry.pop_front() {
            if let Err(io) = self.chans[chan].chan.submit(io) {
                self.retry.push_front((chan, io));
                break;
            }
        }
    }

    /// The queue is closing: drops the operations never submitted (they never complete).
    /// Returns how many, so whoever counts operations in flight can take them off.
    pub(crate) fn close(&mut self) -> usize {
        let n = self.retry.len();
        self.retry.clear();
        n
    }

    /// While closing: reaps (and drops) completions. Returns how many, and whether no
    /// channel has I/O in flight any more (the queue may then be dropped).
    pub(crate) fn drain(&mut self) -> (usize, bool) {
        let mut n = 0;
        for c in self.chans.iter_mut() {
            n += c.chan.poll(&mut |_| {});
        }
        (n, self.chans.iter().all(|c| c.chan.outstanding() == 0))
    }
}

#[cfg(test)]
#[path = "channels_tests.rs"]
mod tests;
