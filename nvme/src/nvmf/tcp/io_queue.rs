//! I/O commands on the NVMe/TCP target: the queue's table of namespaces and bdev channels,
//! and parsing a command against it before its data is fetched and it executes
//! (`docs/nvme-tcp.md`).

use super::request::BufFor;
use super::Conn;
use crate::nvmf::io::{self, IoCmd, NsGeometry};
use crate::nvmf::restart::{self, RestartPointSink};
use crate::nvmf::Subsystem;
use crate::spec::cmd::{admin_opc, io_opc};
use crate::spec::Status;
use engine::bdev::{Bdev, BdevChannel};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) struct NsEntry {
    pub(super) nsid: u32,
    pub(super) anagrpid: u32,
    pub(super) geo: NsGeometry,
    pub(super) chan: usize,
}

pub(super) struct ChanEntry {
    pub(super) bdev: Arc<dyn Bdev>,
    pub(super) chan: BdevChannel,
    pub(super) used: bool,
    /// The bdev's restart point sink (replicated volumes), as of `Conn::sink_gen`.
    pub(super) sink: Option<Arc<dyn RestartPointSink>>,
}

impl Conn {
    /// Rebuilds this I/O queue's namespace table from the subsystem (connect and after a
    /// namespace change). Opens channels for new bdevs; keeps channels with I/O in flight.
    pub(super) fn refresh_ns(&mut self, subsys: &Subsystem) {
        self.ns_gen = subsys.ns_generation.load(Ordering::Acquire);
        let nss: Vec<_> = subsys.state().namespaces.values().cloned().collect();
        self.ns.clear();
        for c in self.chans.iter_mut() {
            c.used = false;
        }
        for ns in nss {
            let idx = match self.chans.iter().position(|c| Arc::ptr_eq(&c.bdev, &ns.bdev)) {
                Some(i) => i,
                None => match ns.bdev.open_channel() {
                    Ok(chan) => {
                        self.chans.push(ChanEntry {
                            bdev: ns.bdev.clone(),
                            chan,
                            used: false,
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
            self.chans[idx].used = true;
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
    pub(super) fn refresh_sinks(&mut self) {
        self.sink_gen = restart::generation();
        for c in self.chans.iter_mut() {
            c.sink = restart::lookup(c.bdev.name());
        }
    }

    pub(super) fn io_cmd(&mut self, slot: usize) {
        let Some(c) = self.ctrlr.clone() else { return };
        let subsys = &c.subsys;
        // Safe with I/O in flight: refresh_ns never removes or reorders channels, so the
        // channel index a request holds stays valid.
        if subsys.ns_generation.load(Ordering::Acquire) != self.ns_gen {
            self.refresh_ns(subsys);
        }
        let sqe = self.reqs[slot].sqe;
        let in_capsule = self.reqs[slot].in_capsule;
        if sqe.opc == admin_opc::FABRICS {
            return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
        }
        let Some(ns) = self.ns.iter().find(|n| n.nsid == sqe.nsid) else {
            return self.complete(slot, Status::INVALID_NAMESPACE, 0, 0);
        };
        let (geo, chan) = (ns.geo, ns.chan);
        if let Some(s) = c.ana_state(ns.anagrpid).io_status() {
            // Not accessible through this listener: the host retries on another path.
            return self.complete(slot, s, 0, 0);
        }
        if sqe.opc == io_opc::RESTART_POINT || sqe.opc == io_opc::FLUSH {
            if restart::generation() != self.sink_gen {
                self.refresh_sinks();
            }
            if sqe.opc == io_opc::RESTART_POINT && self.chans[chan].sink.is_none() {
                // Only replicated volumes take restart points.
                return self.complete(slot, Status::INVALID_OPCODE, 0, 0);
            }
        }
        let cmd = match io::parse_io(&sqe, geo, in_capsule, self.opts.max_io_size) {
            Ok(cmd) => cmd,
            Err(s) => return self.complete(slot, s, 0, 0),
        };
        let r = &mut self.reqs[slot];
        r.cmd = cmd;
        r.chan = chan;
        let hb = cmd.host_bytes();
        if hb > 0 && r.in_capsule == 0 {
            return self.need_buffers(slot, BufFor::H2C);
        }
        if hb > 0 {
            if let Some(b) = r.buf.as_mut() {
                b.set_len(hb as usize);
            }
        }
        if matches!(cmd, IoCmd::Read { .. } | IoCmd::Compare { .. }) {
            // The bdev reads into a buffer of the request's.
            return self.need_buffers(slot, BufFor::Execute);
        }
        self.execute(slot);
    }
}
