//! The relay's link to the standby, per volume: connect and Hello, the standby's frames
//! (HelloReply, SafeUpTo -> release, GapRequest, Heartbeat), liveness reports, and closing
//! and reconnecting a failed link (`docs/replication.md`, `docs/failover.md`).

use arrayvec::ArrayVec;
use rdma_transport::link::heartbeat_echo;
use rdma_transport::wire::{
    self, Fence, Frame, GapRequest, Heartbeat, Hello, HelloReply, RefuseReason, Role, FRAME_BYTES_MAX,
};
use rdma_transport::{AnyConnection, Endpoint};
use rdma_transport::{ConnState, Connection, OutFrame};

use super::gap::serve_gap;
use super::state::RelayState;
use super::volume_journal::VolumeJournal;
use super::{GAP_QUEUE_MAX, LIVENESS_REPORT_MS};

impl RelayState {
    /// Drives volume `i`'s link to the standby, in order: (re)connect, take the standby's
    /// frames, answer a gap and report liveness once the link is up, forward what the
    /// policy lets through, then push the bytes out and handle a failed link.
    pub(super) fn drive_standby(&mut self, i: usize, now: u64) -> bool {
        let Some(standby_addr) = self.cfg.standby else {
            // No standby: keep records until a standby is configured.
            return false;
        };
        let mut busy = false;
        let v = &mut self.volumes[i];
        connect_standby(v, standby_addr, now);
        if v.standby.is_none() {
            return busy;
        }
        let (received, failed) = receive_standby(v, now);
        busy |= received;
        if v.standby_up() {
            busy |= serve_gap(v);
            busy |= report_liveness(v, now);
        }
        busy |= self.forward(i, now);
        busy |= flush_standby(&mut self.volumes[i], failed, now);
        busy
    }
}

/// Connects to the standby at `standby_addr` and sends the Hello, when the link is down
/// (or refused) and its retry time has come; a failed connect sets the next retry.
fn connect_standby(v: &mut VolumeJournal, standby_addr: Endpoint, now: u64) {
    let Some(link) = v.standby_link.as_mut() else {
        return;
    };
    if !link.should_connect(now) {
        return;
    }
    link.connecting();
    match AnyConnection::connect_as(standby_addr, rdma_transport::tls::Role::Standby) {
        Ok(mut c) => {
            let hello = Hello {
                role: Role::Relay,
                block_size: v.meta.block_size,
                volume_id: v.volume_id,
                volume_name: &v.meta.name,
                generation: v.meta.generation,
                resume_lsn: v.recovery.lsn_first.max(1),
                frame_bytes_max: FRAME_BYTES_MAX as u32,
                recv_credits: 0,
            };
            if let Ok(h) = wire::encode_hello(&hello) {
                let _ = c.send(OutFrame::control(h, 0));
            }
            v.standby = Some(c);
            link.hello_sent();
        }
        Err(e) => {
            v.last_error = e.to_string();
            link.connect_failed(&v.last_error, now);
        }
    }
}

/// Receives the standby's frames (not while the gap queue is full) and acts on each.
/// Returns whether any arrived, and why the link must close if it must (`Some("")`: a
/// refusal, already logged).
fn receive_standby(v: &mut VolumeJournal, now: u64) -> (bool, Option<String>) {
    let Some(conn) = v.standby.as_mut() else {
        return (false, None);
    };
    let mut replies: ArrayVec<StandbyEvent, 64> = ArrayVec::new();
    let room = GAP_QUEUE_MAX - v.gaps.len();
    let r = if room > 0 {
        conn.poll_recv(&mut |f: Frame<'_>| {
            let ev = match f {
                Frame::HelloReply(r) => StandbyEvent::Reply(r),
                Frame::SafeUpTo(s) => StandbyEvent::Safe(s.lsn),
                Frame::GapRequest(g) => StandbyEvent::Gap(g),
                Frame::Heartbeat(h) => StandbyEvent::Heartbeat(h),
                Frame::Fence(f) if !f.is_reply => StandbyEvent::Fence(f.generation),
                Frame::Ack(_) => StandbyEvent::Ignore,
                other => StandbyEvent::Unexpected(other.kind() as u8),
            };
            let _ = replies.try_push(ev);
        })
    } else {
        Ok(0)
    };
    let mut failed = r.err().map(|e| e.to_string());
    let mut busy = false;
    for ev in replies.drain(..) {
        busy = true;
        on_standby_event(v, ev, now, &mut failed);
    }
    (busy, failed)
}

/// Acts on one frame from the standby; sets `failed` when the link must close.
fn on_standby_event(v: &mut VolumeJournal, ev: StandbyEvent, now: u64, failed: &mut Option<String>) {
    match ev {
        StandbyEvent::Reply(HelloReply::Accepted { resume_lsn, .. }) => {
            if let Some(l) = v.standby_link.as_mut() {
                l.up();
            }
            v.fwd_next = resume_lsn.max(1);
            v.fwd_cursor = None;
            v.safe_lsn = v.safe_lsn.max(resume_lsn.saturating_sub(1));
            log::info!("relay: volume {}: standby up, wants LSN {resume_lsn} on", v.meta.name);
            release(v);
        }
        StandbyEvent::Reply(HelloReply::Refused { reason, generation, .. }) => {
            v.last_error = format!("standby refused: {reason:?}");
            log::warn!("relay: volume {}: {}", v.meta.name, v.last_error);
            if reason == RefuseReason::StaleGeneration {
                adopt_generation(v, generation);
            }
            if let Some(l) = v.standby_link.as_mut() {
                l.refused(&v.last_error, now);
            }
            *failed = Some(String::new());
        }
        StandbyEvent::Safe(lsn) => {
            if lsn > v.safe_lsn {
                v.safe_lsn = lsn;
                release(v);
            }
        }
        StandbyEvent::Gap(g) => {
            if v.gaps.len() < GAP_QUEUE_MAX {
                v.gaps.push_back(g);
            }
        }
        StandbyEvent::Heartbeat(h) => {
            if let (Some(c), Some(f)) = (v.standby.as_mut(), heartbeat_echo(&h)) {
                let _ = c.send(f);
            }
        }
        StandbyEvent::Fence(generation) => fence(v, generation),
        StandbyEvent::Ignore => {}
        StandbyEvent::Unexpected(k) => *failed = Some(format!("unexpected frame kind {k} from standby")),
    }
}

/// The standby starts a failover drain and fences the old primary off first: the relay
/// takes `generation` (the one the standby will be promoted to) as its own, drops the
/// primary, and answers with the highest LSN it journaled. From the answer on, this relay
/// acknowledges nothing more of the old primary, so every op it ever acknowledged is at or
/// below that LSN, and the drain that follows fetches all of it (`docs/failover.md`,
/// "Fencing before the drain").
fn fence(v: &mut VolumeJournal, generation: u64) {
    if generation > v.primary_floor() {
        log::warn!(
            "relay: volume {}: the standby is failing over (to generation {generation}): primaries of \
             generation {} and older are fenced off",
            v.meta.name,
            generation - 1
        );
        v.meta.fenced_below = generation;
        save_and_drop_primary(v);
    }
    v.fenced_by_standby += 1;
    let reply = Fence {
        generation: v.primary_floor(),
        journal_lsn: v.journal.appended_lsn(),
        is_reply: true,
    };
    if let Some(c) = v.standby.as_mut() {
        let _ = c.send(OutFrame::control(wire::encode_fence(&reply), 0));
    }
}

/// The standby refused this relay's Hello as of an older generation: it was promoted, and
/// `generation` is its new one. The relay takes that generation as its own (persisted in
/// `volume.json`, so a restart keeps it) and drops the primary's connection. The old
/// primary's reconnect is then refused with `StaleGeneration`, and so is any Ops frame of
/// its generation: a primary cut off from the standby cannot go on writing through the
/// relays once they reach the promoted standby (`docs/faults.md`, "Split brain").
pub(super) fn adopt_generation(v: &mut VolumeJournal, generation: u64) {
    if generation <= v.meta.generation {
        return;
    }
    log::error!(
        "relay: volume {}: the standby is at generation {generation} (promoted), this relay was at {}: \
         the primary of generation {} is fenced off",
        v.meta.name,
        v.meta.generation,
        v.meta.generation
    );
    v.meta.generation = generation;
    v.generation_adopted += 1;
    save_and_drop_primary(v);
}

/// After a fence: `volume.json` is saved (a restart keeps the fence) and the primary's
/// connection dropped; its reconnect is refused by the Hello check.
fn save_and_drop_primary(v: &mut VolumeJournal) {
    if let Err(e) = v.meta.save(&v.dir) {
        log::error!("relay: volume {}: {e}", v.meta.name);
        v.last_error = e.to_string();
    }
    if let Some(mut p) = v.primary.take() {
        p.conn.close();
    }
}

/// Pushes queued bytes to the standby (sent buffers come back for reuse), then, if the link
/// failed (`failed`, or the connection itself), closes it and schedules a reconnect.
fn flush_standby(v: &mut VolumeJournal, failed: Option<String>, now: u64) -> bool {
    let mut failed = failed;
    if let Some(c) = v.standby.as_mut() {
        let bufs = &mut v.fwd_bufs;
        if let Err(e) = c.poll_send(&mut |d| bufs.extend(d.data)) {
            failed.get_or_insert(e.to_string());
        }
        if c.state() == ConnState::Failed {
            failed.get_or_insert_with(|| "connection failed".into());
        }
    }
    let Some(why) = failed else {
        return false;
    };
    if let Some(mut c) = v.standby.take() {
        c.close();
        let bufs = &mut v.fwd_bufs;
        let _ = c.poll_send(&mut |d| bufs.extend(d.data));
    }
    if let Some(l) = v.standby_link.as_mut() {
        // A refused link keeps its (longer) retry time.
        l.down(&why, now);
    }
    if !why.is_empty() {
        log::warn!("relay: volume {}: standby: {why}", v.meta.name);
        v.last_error = why;
    }
    v.gaps.clear();
    true
}

enum StandbyEvent {
    Reply(HelloReply),
    Safe(u64),
    Gap(GapRequest),
    Heartbeat(Heartbeat),
    Fence(u64),
    Ignore,
    Unexpected(u8),
}

/// Tells the standby, every [`LIVENESS_REPORT_MS`], when this relay last heard the
/// volume's primary (its failure detector needs it to tell a dead primary from a cut
/// standby-primary link).
fn report_liveness(v: &mut VolumeJournal, now: u64) -> bool {
    if now.saturating_sub(v.liveness_sent_ns) < LIVENESS_REPORT_MS * 1_000_000 {
        return false;
    }
    let Some(c) = v.standby.as_mut() else {
        return false;
    };
    if c.send_capacity() == 0 {
        return false;
    }
    let p = wire::PrimaryLiveness {
        primary_age_ms: if v.primary_heard_ns == 0 {
            wire::PRIMARY_AGE_NEVER
        } else {
            now.saturating_sub(v.primary_heard_ns) / 1_000_000
        },
        primary_lsn: v.journal.appended_lsn(),
        connected: v.primary.is_some(),
        forward: v.fwd_state,
    };
    if c.send(OutFrame::control(wire::encode_primary_liveness(&p), 0)).is_ok() {
        v.liveness_sent_ns = now;
        return true;
    }
    false
}

fn release(v: &mut VolumeJournal) {
    match v.journal.release(v.safe_lsn) {
        Ok(0) => {}
        Ok(n) => log::debug!(
            "relay: volume {}: released {n} bytes up to LSN {}",
            v.meta.name,
            v.safe_lsn
        ),
        Err(e) => {
            v.last_error = format!("release: {e}");
            log::warn!("relay: volume {}: release: {e}", v.meta.name);
        }
    }
}
