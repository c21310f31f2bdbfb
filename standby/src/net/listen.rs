//! Accepting relays: the listener poller reads each new connection's Hello and hands it
//! to the reactor that owns the named volume, where [`adopt`] answers it and makes it a
//! link of that volume.

use super::*;

struct Pending {
    conn: Conn,
    peer: SocketAddr,
    since_ns: u64,
}

/// What the owning reactor needs of a Hello.
pub(super) struct HelloOwned {
    role: Role,
    block_size: u32,
    volume_id: [u8; 16],
    name: String,
    generation: u64,
    resume_lsn: u64,
}

impl HelloOwned {
    fn hello(&self) -> Hello<'_> {
        Hello {
            role: self.role,
            block_size: self.block_size,
            volume_id: self.volume_id,
            volume_name: &self.name,
            generation: self.generation,
            resume_lsn: self.resume_lsn,
            frame_bytes_max: FRAME_BYTES_MAX as u32,
            recv_credits: 0,
        }
    }
}

pub(super) struct Listener {
    acceptor: AnyAcceptor,
    pending: Vec<Pending>,
}

pub(super) fn refused(reason: RefuseReason, generation: u64) -> HelloReply {
    HelloReply::Refused {
        reason,
        generation,
        version_max: WIRE_VERSION,
    }
}

impl Listener {
    pub(super) fn new(acceptor: AnyAcceptor) -> Listener {
        Listener {
            acceptor,
            pending: Vec::with_capacity(PENDING_CONNS_MAX),
        }
    }

    /// Puts in `out` the listening sockets and handshaking connections an idle reactor
    /// waits on; returns (every one could be watched, one has a whole frame buffered).
    pub(super) fn wait_list(&self, out: &mut Vec<(std::os::fd::RawFd, engine::reactor::Interest)>) -> (bool, bool) {
        out.clear();
        let mut all = self.acceptor.wait_fds(out);
        let mut buffered = false;
        for p in &self.pending {
            match p.conn.wait_interest() {
                Some(w) => out.push(w),
                None => all &= !p.conn.is_rdma(),
            }
            buffered |= p.conn.has_buffered();
        }
        (all, buffered)
    }

    pub(super) fn poll(&mut self, now: u64) -> PollStatus {
        let mut busy = self.accept(now);
        let mut i = 0;
        while i < self.pending.len() {
            let mut hello: Option<HelloOwned> = None;
            let mut bad: Option<String> = None;
            let p = &mut self.pending[i];
            let r = p.conn.poll_recv(&mut |f: Frame<'_>| {
                if bad.is_some() {
                    return;
                }
                match f {
                    Frame::Hello(h) if hello.is_none() => {
                        hello = Some(HelloOwned {
                            role: h.role,
                            block_size: h.block_size,
                            volume_id: h.volume_id,
                            name: h.volume_name.to_string(),
                            generation: h.generation,
                            resume_lsn: h.resume_lsn,
                        })
                    }
                    Frame::Hello(_) => bad = Some("a second frame before the HelloReply".into()),
                    other => bad = Some(format!("first frame is {:?}, not Hello", other.kind())),
                }
            });
            let _ = p.conn.poll_send(&mut |_| {});
            if let Err(e) = r {
                if let Some(h) = refusal_for(&e) {
                    p.conn.send_last(h);
                }
                log::warn!("standby: connection from {}: {e}", p.peer);
                self.pending.swap_remove(i);
                continue;
            }
            if let Some(why) = bad {
                log::warn!("standby: connection from {}: {why}", p.peer);
                p.conn.close();
                self.pending.swap_remove(i);
                continue;
            }
            let Some(h) = hello else {
                if now.saturating_sub(p.since_ns) > HELLO_TIMEOUT_MS * 1_000_000 {
                    log::warn!(
                        "standby: connection from {} sent no Hello in {HELLO_TIMEOUT_MS} ms",
                        p.peer
                    );
                    p.conn.close();
                    self.pending.swap_remove(i);
                } else {
                    i += 1;
                }
                continue;
            };
            busy = true;
            hand_off(self.pending.swap_remove(i), h);
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    /// Accepts new connections, up to PENDING_CONNS_MAX waiting for their Hello.
    fn accept(&mut self, now: u64) -> bool {
        let mut busy = false;
        while self.pending.len() < PENDING_CONNS_MAX {
            match self.acceptor.poll_accept::<Vec<u8>>() {
                Ok(Some((conn, peer))) => {
                    busy = true;
                    self.pending.push(Pending {
                        conn,
                        peer,
                        since_ns: now,
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("standby: accept: {e}");
                    break;
                }
            }
        }
        busy
    }
}

/// A connection whose Hello `h` arrived: a relay's goes to the reactor of the standby
/// volume it names ([`adopt`]); anything else is refused.
fn hand_off(mut pc: Pending, h: HelloOwned) {
    if h.role != Role::Relay {
        log::warn!(
            "standby: connection from {} for volume {:?}: role {:?}, only relays connect here",
            pc.peer,
            h.name,
            h.role
        );
        pc.conn
            .send_last(wire::encode_hello_reply(&refused(RefuseReason::Role, 0)));
        return;
    }
    let Some(core) = registry::owner_core(&h.name) else {
        log::warn!(
            "standby: relay {} asks for volume {:?}: no such standby volume",
            pc.peer,
            h.name
        );
        pc.conn
            .send_last(wire::encode_hello_reply(&refused(RefuseReason::UnknownVolume, 0)));
        return;
    };
    let (conn, peer) = (pc.conn, pc.peer);
    if let Err(e) = reactor::send_msg(core, move || adopt(conn, peer, h, now_ns())) {
        log::warn!("standby: cannot hand the connection from {peer} to reactor {core}: {e}");
    }
}

/// On the volume's reactor: answers the Hello and adopts the connection.
pub(super) fn adopt(mut conn: Conn, peer: SocketAddr, h: HelloOwned, now: u64) {
    let rn = reactor_net();
    let mut rn = rn.borrow_mut();
    let Some(vol) = registry::local_volume(&h.name) else {
        log::warn!(
            "standby: relay {peer} asks for volume {:?}: no such standby volume",
            h.name
        );
        conn.send_last(wire::encode_hello_reply(&refused(RefuseReason::UnknownVolume, 0)));
        return;
    };
    let v = vol.borrow();
    let vn = rn.vols.entry(h.name.clone()).or_default();
    let local = LocalVolume {
        volume_id: vn.volume_id.unwrap_or(h.volume_id),
        block_size: v.block_size(),
        generation: v.generation(),
        // What is durable here, not what was received: the relay resumes after it and
        // takes it as safe to release. Ops received but still being staged would be lost
        // with both copies if the relay released them and the standby then crashed.
        durable_lsn: v.durable_lsn().min(v.next_lsn().saturating_sub(1)),
        frame_bytes_max: FRAME_BYTES_MAX as u32,
        recv_credits: 0,
    };
    let mut reply = answer_hello(&h.hello(), Role::Relay, Some(&local));
    let mut why = match reply {
        HelloReply::Refused { reason, generation, .. } => match reason {
            RefuseReason::StaleGeneration => format!(
                "generation {} is older than the standby's {generation} (fenced)",
                h.generation
            ),
            RefuseReason::UnknownVolume => format!(
                "volume id or block size ({} B) differs from the standby's ({} B)",
                h.block_size, local.block_size
            ),
            r => format!("{r:?}"),
        },
        HelloReply::Accepted { .. } => String::new(),
    };
    if why.is_empty() && !v.intake_open() {
        reply = refused(RefuseReason::Busy, local.generation);
        why = "the standby takes no ops now (failure declared, promoted or stopped)".into();
    }
    if why.is_empty() && vn.links.len() >= LINKS_PER_VOLUME_MAX {
        reply = refused(RefuseReason::Busy, local.generation);
        why = format!("already {LINKS_PER_VOLUME_MAX} relay links");
    }
    if !why.is_empty() {
        log::warn!("standby {}: refused relay {peer}: {why}", h.name);
        conn.send_last(wire::encode_hello_reply(&reply));
        vn.remember_closed(refused_status(peer, h.generation, &why));
        return;
    }
    if conn
        .send(OutFrame::control(wire::encode_hello_reply(&reply), 0))
        .is_err()
    {
        log::warn!("standby {}: relay {peer}: cannot queue the HelloReply", h.name);
        return;
    }
    vn.volume_id.get_or_insert(h.volume_id);
    log::info!(
        "standby {}: relay {peer} connected (generation {}, holds from LSN {}); resume at LSN {}",
        h.name,
        h.generation,
        h.resume_lsn,
        local.durable_lsn + 1
    );
    vn.links
        .push(Link::adopted(conn, peer, h.generation, now, local.durable_lsn));
}

/// What the status reports of a relay refused at its Hello.
fn refused_status(peer: SocketAddr, generation: u64, why: &str) -> LinkStatus {
    LinkStatus {
        addr: peer.to_string(),
        connected: false,
        role: "unknown",
        generation,
        connected_seconds: 0.0,
        frames_received: 0,
        bytes_received: 0,
        forward_frames: 0,
        gap_replies: 0,
        gap_requests_sent: 0,
        ops_offered: 0,
        lsn_offered_max: 0,
        lag_lsn: 0,
        safe_lsn_sent: 0,
        held_ops: 0,
        forward_state: "unknown",
        relay_held_lsn: 0,
        last_error: format!("refused: {why}"),
    }
}

impl Link {
    /// The link of a relay of `generation` just accepted at `now`; the volume holds up
    /// to `durable_lsn`, which the HelloReply told the relay.
    fn adopted(conn: Conn, peer: SocketAddr, generation: u64, now: u64, durable_lsn: u64) -> Link {
        Link {
            conn,
            peer,
            generation,
            since_ns: now,
            forward_frames: 0,
            gap_replies: 0,
            gap_requests_sent: 0,
            ops_offered: 0,
            lsn_offered_max: 0,
            last_forward_ns: 0,
            // The relay takes resume - 1 as safe from the HelloReply.
            safe_sent: durable_lsn,
            held: VecDeque::new(),
            pull: None,
            close: None,
            life: rdma_transport::link::Reconnect::accepted(),
            fwd: None,
            held_lsn: 0,
            fence_sent: false,
            fence_reply: None,
            drained: false,
            drain_rescanned: false,
            drain_bytes0: 0,
            lacks: 0,
            rx_frames: 0,
            heard_ns: now,
        }
    }
}
