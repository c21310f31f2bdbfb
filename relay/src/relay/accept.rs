//! New connections to the relay: accepted, given [`HELLO_TIMEOUT_MS`] to send their Hello,
//! then answered; a primary's first Hello for a volume creates its journal
//! (`docs/replication-wire.md`, handshake).
//!
//! Opening a journal (recovery scans its segments, preallocation writes spare ones) can
//! take seconds, so it runs on a thread of its own and the Hello waits for it, parked:
//! the reactor goes on serving every other volume meanwhile, whose primaries would
//! otherwise see no Ack for as long and could mark this relay down.

use std::collections::VecDeque;
use std::sync::mpsc::{self, TryRecvError};

use engine::clock::now_ns;
use rdma_transport::handshake::{answer_hello, refusal_for};
use rdma_transport::tcp::RX_BUF_BYTES;
use rdma_transport::wire::{self, Frame, Hello, HelloReply, RefuseReason, Role, WIRE_VERSION};
use rdma_transport::{Connection, OutFrame};

use super::primary::PrimaryConn;
use super::state::{Opening, PendingConn, RelayState};
use super::volume_journal::{hex16, VolumeJournal, VolumeMeta};
use super::{HELLO_TIMEOUT_MS, PENDING_CONNS_MAX};

impl RelayState {
    pub(super) fn accept(&mut self, now: u64) -> bool {
        let mut busy = false;
        while self.pending.len() < PENDING_CONNS_MAX {
            match self.acceptor.poll_accept::<Vec<u8>>() {
                Ok(Some((conn, peer))) => {
                    busy = true;
                    self.pending.push(PendingConn {
                        conn,
                        peer,
                        since_ns: now,
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("relay: accept: {e}");
                    break;
                }
            }
        }
        busy
    }

    pub(super) fn handshakes(&mut self, now: u64) -> bool {
        let mut busy = false;
        let mut i = 0;
        while i < self.pending.len() {
            let mut hello: Option<(Hello<'static>, String)> = None;
            let mut bad: Option<String> = None;
            let p = &mut self.pending[i];
            let r = p.conn.poll_recv(&mut |f: Frame<'_>| {
                if hello.is_some() || bad.is_some() {
                    return;
                }
                match f {
                    Frame::Hello(h) => {
                        let name = h.volume_name.to_string();
                        hello = Some((Hello { volume_name: "", ..h }, name));
                    }
                    other => bad = Some(format!("first frame is {:?}, not Hello", other.kind())),
                }
            });
            let _ = p.conn.poll_send(&mut |_| {});
            if let Err(e) = r {
                if let Some(h) = refusal_for(&e) {
                    p.conn.send_last(h);
                }
                log::warn!("relay: connection from {}: {e}", p.peer);
                self.pending.swap_remove(i);
                continue;
            }
            if let Some(why) = bad {
                log::warn!("relay: connection from {}: {why}", p.peer);
                self.pending.swap_remove(i);
                continue;
            }
            let Some((h, name)) = hello else {
                if now.saturating_sub(p.since_ns) > HELLO_TIMEOUT_MS * 1_000_000 {
                    log::warn!(
                        "relay: connection from {} sent no Hello in {HELLO_TIMEOUT_MS} ms",
                        p.peer
                    );
                    self.pending.swap_remove(i);
                } else {
                    i += 1;
                }
                continue;
            };
            busy = true;
            let pc = self.pending.swap_remove(i);
            self.on_hello(pc, h, name);
        }
        busy
    }

    pub(super) fn on_hello(&mut self, pc: PendingConn, h: Hello<'static>, name: String) {
        let vi = self.volumes.iter().position(|v| v.meta.name == name);
        if vi.is_none() && h.role == Role::Primary {
            // A new volume: its journal opens off the reactor; the Hello waits for it.
            match self.opening.iter_mut().find(|o| o.name == name) {
                Some(o) => o.waiting.push((pc, h)),
                None => self.open_volume(pc, h, name),
            }
            return;
        }
        self.answer_hello(pc, h, &name, vi);
    }

    /// Answers a Hello for volume `name` (`vi`: its index, `None`: no such volume here).
    fn answer_hello(&mut self, mut pc: PendingConn, h: Hello<'static>, name: &str, vi: Option<usize>) {
        let hello = Hello { volume_name: name, ..h };
        let expected = Role::Primary;
        let local = vi.map(|i| self.volumes[i].local());
        let mut reply = answer_hello(&hello, expected, local.as_ref());
        if let (HelloReply::Accepted { generation, .. }, Some(i)) = (&reply, vi) {
            if let Some(why) = &self.volumes[i].journal_failed {
                log::warn!("relay: volume {name}: refusing primary {}: {why}", pc.peer);
                reply = HelloReply::Refused {
                    reason: RefuseReason::Unavailable,
                    generation: *generation,
                    version_max: WIRE_VERSION,
                };
            }
        }
        let _ = pc.conn.send(OutFrame::control(wire::encode_hello_reply(&reply), 0));
        let _ = pc.conn.poll_send(&mut |_| {});
        match (reply, vi) {
            (HelloReply::Accepted { resume_lsn, .. }, Some(i)) => self.adopt_primary(i, pc, &hello, resume_lsn),
            (r, vi) => {
                if let (
                    HelloReply::Refused {
                        reason: RefuseReason::StaleGeneration,
                        ..
                    },
                    Some(i),
                ) = (&r, vi)
                {
                    self.volumes[i].stale_primary_refusals += 1;
                }
                log::warn!("relay: volume {name}: refused Hello from {}: {r:?}", pc.peer);
                pc.conn.close();
            }
        }
    }

    /// A primary's first contact for volume `name`: opens (creates) its journal, in the
    /// directory its spec names or under the journal root, on a thread of its own; the
    /// Hello is answered by [`Self::poll_opening`] once it is open (or failed, logged).
    fn open_volume(&mut self, pc: PendingConn, h: Hello<'static>, name: String) {
        let spec = self
            .shared
            .specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.volume == name)
            .cloned();
        let dir = spec
            .as_ref()
            .and_then(|s| s.dir.clone())
            .unwrap_or_else(|| self.cfg.journal_root.join(&name));
        let meta = VolumeMeta {
            name: name.clone(),
            volume_id: hex16(&h.volume_id),
            block_size: h.block_size,
            generation: h.generation,
            fenced_below: 0,
        };
        let cfg = self.cfg.clone();
        let (tx, rx) = mpsc::channel();
        let job = move || {
            if let Some(hook) = &cfg.journal_open_hook {
                (hook.0)(&meta.name);
            }
            let r = VolumeJournal::open(&cfg, meta, dir, spec.as_ref(), true).map_err(|e| e.to_string());
            let _ = tx.send(r);
        };
        if let Err(e) = std::thread::Builder::new().name("journal-open".into()).spawn(job) {
            log::error!("relay: volume {name}: cannot start a thread to open its journal: {e}");
            self.answer_hello(pc, h, &name, None);
            return;
        }
        log::info!("relay: volume {name}: opening its journal for primary {}", pc.peer);
        self.opening.push(Opening {
            name,
            rx,
            waiting: vec![(pc, h)],
        });
    }

    /// Journals opened since the last poll join the relay's volumes, and the Hellos that
    /// waited for them are answered. True if any finished.
    pub(super) fn poll_opening(&mut self) -> bool {
        let mut busy = false;
        let mut i = 0;
        while i < self.opening.len() {
            let r = match self.opening[i].rx.try_recv() {
                Err(TryRecvError::Empty) => {
                    i += 1;
                    continue;
                }
                Ok(r) => r,
                Err(TryRecvError::Disconnected) => Err("the thread opening it ended without an answer".to_string()),
            };
            busy = true;
            let o = self.opening.swap_remove(i);
            let vi = match r {
                Ok(v) => {
                    self.volumes.push(v);
                    Some(self.volumes.len() - 1)
                }
                Err(e) => {
                    log::error!("relay: volume {}: {e}", o.name);
                    None
                }
            };
            for (pc, h) in o.waiting {
                self.answer_hello(pc, h, &o.name, vi);
            }
        }
        busy
    }

    /// An accepted primary becomes volume `i`'s primary connection (replacing any older
    /// one), at its Hello's generation (saved when newer), resuming at `resume_lsn`.
    fn adopt_primary(&mut self, i: usize, pc: PendingConn, hello: &Hello<'_>, resume_lsn: u64) {
        let v = &mut self.volumes[i];
        let name = &v.meta.name;
        if hello.generation > v.meta.generation {
            v.meta.generation = hello.generation;
            if let Err(e) = v.meta.save(&v.dir) {
                log::error!("relay: volume {name}: {e}");
            }
        }
        if let Some(mut old) = v.primary.take() {
            log::warn!(
                "relay: volume {name}: new primary connection from {} replaces {}",
                pc.peer,
                old.peer
            );
            old.conn.close();
        }
        log::info!(
            "relay: volume {name}: primary {} (generation {}) resumes at LSN {resume_lsn}",
            pc.peer,
            hello.generation
        );
        v.primary_heard_ns = now_ns();
        let token = self.next_token;
        self.next_token += 1;
        let watched = match (self.readiness.as_mut(), pc.conn.raw_fd()) {
            (Some(r), Some(fd)) => r.add(fd, token).is_ok(),
            _ => false,
        };
        let v = &mut self.volumes[i];
        v.primary = Some(PrimaryConn {
            conn: pc.conn,
            peer: pc.peer,
            stash: Vec::with_capacity(RX_BUF_BYTES),
            stashed: VecDeque::with_capacity(64),
            acked: resume_lsn - 1,
            token,
            watched,
            recv_ns: 0,
        });
    }
}
