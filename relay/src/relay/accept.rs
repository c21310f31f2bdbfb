//! New connections to the relay: accepted, given [`HELLO_TIMEOUT_MS`] to send their Hello,
//! then answered; a primary's first Hello for a volume creates its journal
//! (`docs/replication-wire.md`, handshake).

use std::collections::VecDeque;

use engine::clock::now_ns;
use rdma_transport::handshake::{answer_hello, refusal_for};
use rdma_transport::tcp::RX_BUF_BYTES;
use rdma_transport::wire::{self, Frame, Hello, HelloReply, RefuseReason, Role, WIRE_VERSION};
use rdma_transport::{Connection, OutFrame};

use super::primary::PrimaryConn;
use super::state::{PendingConn, RelayState};
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

    pub(super) fn on_hello(&mut self, mut pc: PendingConn, h: Hello<'static>, name: String) {
        let hello = Hello {
            volume_name: &name,
            ..h
        };
        let expected = Role::Primary;
        let mut vi = self.volumes.iter().position(|v| v.meta.name == name);
        if vi.is_none() && hello.role == expected {
            vi = self.open_volume(&hello, &name);
        }
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
    /// directory its spec names or under the journal root. `None` (logged) if that fails.
    fn open_volume(&mut self, hello: &Hello<'_>, name: &str) -> Option<usize> {
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
            .unwrap_or_else(|| self.cfg.journal_root.join(name));
        let meta = VolumeMeta {
            name: name.to_string(),
            volume_id: hex16(&hello.volume_id),
            block_size: hello.block_size,
            generation: hello.generation,
            fenced_below: 0,
        };
        match VolumeJournal::open(&self.cfg, meta, dir, spec.as_ref(), true) {
            Ok(v) => {
                self.volumes.push(v);
                Some(self.volumes.len() - 1)
            }
            Err(e) => {
                log::error!("relay: volume {name}: {e}");
                None
            }
        }
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
