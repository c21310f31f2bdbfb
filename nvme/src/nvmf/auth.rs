//! In-band authentication of one queue (DH-HMAC-CHAP, NULL DH group), the controller's
//! side: the transaction a host runs with Authentication Send / Receive after a Connect
//! whose response asked for it (`docs/nvme-tcp.md`, "In-band authentication").
//!
//! The host sends Negotiate, receives Challenge, sends Reply, receives Success1 (or
//! Failure1); when it asked the controller to authenticate too, it checks the controller's
//! response and sends Success2 (or Failure2). Errors in a message's content are answered
//! with Failure1 at the next Authentication Receive, after which the queue is failed; a
//! malformed command (wrong protocol, no data) gets an error status. Nothing here panics on
//! what the host sends.

use crate::spec::auth::{self, failure, msg, AuthCmd, Hash, HostMsg, Secret};
use crate::spec::Status;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::Arc;

/// The keys a host entry carries: the host's, and the controller's for bidirectional
/// authentication.
#[derive(Clone, Debug)]
pub struct HostKeys {
    pub host: Arc<Secret>,
    pub ctrl: Option<Arc<Secret>>,
}

/// Where the transaction is: what the controller expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Waiting for Negotiate (Authentication Send).
    Negotiate,
    /// Challenge ready for the next Authentication Receive.
    Challenge,
    /// Waiting for the Reply.
    Reply,
    /// Success1 ready.
    Success1,
    /// Waiting for Success2 (bidirectional).
    Success2,
    /// Failure1 ready (explanation in `explanation`).
    Failure1,
    /// Authenticated.
    Done,
    /// Failed: the queue must close.
    Failed,
}

/// What the queue does after an authentication command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The transaction goes on.
    Pending,
    /// The queue is authenticated: other commands are accepted.
    Authenticated,
    /// Authentication failed: the queue (and on the admin queue the controller) fails.
    Failed,
}

/// One queue's authentication transaction.
pub struct Session {
    /// None: the host entry names a key the keyring no longer has (every attempt fails).
    keys: Option<HostKeys>,
    hostnqn: String,
    subnqn: String,
    step: Step,
    tid: u16,
    hash: Hash,
    c1: Vec<u8>,
    s1: u32,
    /// C2 and S2 when the host asked for bidirectional authentication.
    c2: Option<(Vec<u8>, u32)>,
    explanation: u8,
}

/// The hash to use among those the host offers: the strongest.
fn pick_hash(offered: &[u8]) -> Option<Hash> {
    offered.iter().filter_map(|&id| Hash::from_id(id)).max()
}

fn random(buf: &mut [u8]) -> bool {
    SystemRandom::new().fill(buf).is_ok()
}

/// How long a host has to authenticate a queue when its controller has no KATO.
pub const AUTH_TIMEOUT_NO_KATO_MS: u64 = 120_000;

/// When a queue whose Connect asked for authentication must be authenticated by: the
/// controller's KATO after `now_ns`, or [`AUTH_TIMEOUT_NO_KATO_MS`] without one (as SPDK).
pub fn deadline_ns(now_ns: u64, kato_ms: u32) -> u64 {
    let ms = if kato_ms == 0 {
        AUTH_TIMEOUT_NO_KATO_MS
    } else {
        u64::from(kato_ms)
    };
    now_ns + ms * 1_000_000
}

/// What a queue does with a transaction's [`Outcome`]: marks itself authenticated (logged
/// the first time) and says whether the transaction failed, in which case the caller ends
/// the queue (and, for the admin queue, its controller).
pub fn apply_outcome(
    outcome: Outcome,
    authenticated: &mut bool,
    peer: std::net::SocketAddr,
    qid: u16,
    cntlid: u16,
) -> bool {
    match outcome {
        Outcome::Pending => false,
        Outcome::Authenticated => {
            if !*authenticated {
                log::info!("nvmf: {peer}: queue {qid} of controller {cntlid} authenticated");
            }
            *authenticated = true;
            false
        }
        Outcome::Failed => true,
    }
}

impl Session {
    pub fn new(keys: Option<HostKeys>, hostnqn: &str, subnqn: &str) -> Session {
        Session {
            keys,
            hostnqn: hostnqn.to_string(),
            subnqn: subnqn.to_string(),
            step: Step::Negotiate,
            tid: 0,
            hash: Hash::Sha256,
            c1: Vec::new(),
            s1: 0,
            c2: None,
            explanation: failure::FAILED,
        }
    }

    /// Whether the queue is authenticated.
    pub fn authenticated(&self) -> bool {
        self.step == Step::Done
    }

    fn fail(&mut self, explanation: u8, why: &str) {
        log::info!(
            "nvmf: authentication of host {} on {} failed: {why}",
            self.hostnqn,
            self.subnqn
        );
        self.explanation = explanation;
        self.step = Step::Failure1;
    }

    /// Authentication Send: the command's status and what the queue does next.
    pub fn send(&mut self, cmd: &AuthCmd, data: &[u8]) -> (Status, Outcome) {
        if !cmd.is_dhchap() {
            return (Status::INVALID_FIELD, self.outcome());
        }
        if cmd.len == 0 || data.len() < cmd.len as usize {
            return (Status::INVALID_FIELD, self.outcome());
        }
        let data = &data[..cmd.len as usize];
        let m = match auth::parse_host_msg(data) {
            Ok(m) => m,
            Err(e) => {
                self.fail(failure::INCORRECT_PAYLOAD, &format!("bad message: {e}"));
                return (Status::SUCCESS, self.outcome());
            }
        };
        match m {
            HostMsg::Negotiate {
                tid,
                sc_c,
                hashes,
                dhgroups,
            } => {
                // A new transaction (the first, or a re-authentication).
                self.tid = tid;
                self.c2 = None;
                self.negotiate(sc_c, hashes, dhgroups);
            }
            _ if self.step == Step::Failure1 || self.step == Step::Failed => {}
            HostMsg::Reply { tid, .. } | HostMsg::Success2 { tid } if tid != self.tid => {
                self.fail(
                    failure::INCORRECT_PAYLOAD,
                    &format!("transaction {tid}, expected {}", self.tid),
                );
            }
            HostMsg::Reply {
                hl,
                cvalid,
                seqnum,
                response,
                c2,
                dhv,
                ..
            } => {
                if self.step != Step::Reply {
                    self.fail(failure::INCORRECT_PROTOCOL, "Reply out of order");
                } else if usize::from(hl) != self.hash.digest_len() || !dhv.is_empty() {
                    self.fail(failure::INCORRECT_PAYLOAD, "Reply length does not match the challenge");
                } else {
                    self.reply(cvalid, seqnum, response, c2);
                }
            }
            HostMsg::Success2 { .. } => {
                if self.step == Step::Success2 {
                    self.step = Step::Done;
                } else {
                    self.fail(failure::INCORRECT_PROTOCOL, "Success2 out of order");
                }
            }
            HostMsg::Failure2 { explanation, .. } => {
                log::info!(
                    "nvmf: host {} on {} rejected the controller's response (explanation {explanation:#x})",
                    self.hostnqn,
                    self.subnqn
                );
                self.step = Step::Failed;
            }
        }
        (Status::SUCCESS, self.outcome())
    }

    fn negotiate(&mut self, sc_c: u8, hashes: &[u8], dhgroups: &[u8]) {
        if self.keys.is_none() {
            return self.fail(failure::NOT_USABLE, "the host's key is not in the keyring");
        }
        if sc_c != 0 {
            return self.fail(failure::CONCAT_MISMATCH, "secure channel concatenation requested");
        }
        let Some(h) = pick_hash(hashes) else {
            return self.fail(failure::HASH_UNUSABLE, "no supported hash offered");
        };
        if !dhgroups.contains(&auth::dh_group::NULL) {
            return self.fail(failure::DHGROUP_UNUSABLE, "the NULL DH group was not offered");
        }
        let mut c1 = vec![0u8; h.digest_len()];
        let mut s1 = [0u8; 4];
        if !random(&mut c1) || !random(&mut s1) {
            return self.fail(failure::FAILED, "no random numbers");
        }
        self.hash = h;
        self.c1 = c1;
        self.s1 = u32::from_le_bytes(s1).max(1);
        self.step = Step::Challenge;
    }

    fn reply(&mut self, cvalid: bool, s2: u32, response: &[u8], c2: &[u8]) {
        let Some(keys) = &self.keys else {
            return self.fail(failure::NOT_USABLE, "no key");
        };
        let want = auth::host_response(
            self.hash,
            &keys.host,
            &self.c1,
            self.s1,
            self.tid,
            &self.hostnqn,
            &self.subnqn,
        );
        if !constant_time_eq(&want, response) {
            return self.fail(failure::FAILED, "wrong host response (wrong key?)");
        }
        if cvalid {
            if keys.ctrl.is_none() {
                return self.fail(failure::FAILED, "bidirectional authentication asked, no controller key");
            }
            self.c2 = Some((c2.to_vec(), s2));
        }
        self.step = Step::Success1;
    }

    /// Authentication Receive: the command's status, the data for the host (at most AL
    /// bytes) and what the queue does next.
    pub fn recv(&mut self, cmd: &AuthCmd) -> (Status, Vec<u8>, Outcome) {
        if !cmd.is_dhchap() || cmd.len == 0 {
            return (Status::INVALID_FIELD, Vec::new(), self.outcome());
        }
        let data = match self.step {
            Step::Challenge => {
                self.step = Step::Reply;
                auth::encode_challenge(self.tid, self.hash, self.s1, &self.c1)
            }
            Step::Success1 => {
                let resp = match (&self.c2, self.keys.as_ref().and_then(|k| k.ctrl.as_ref())) {
                    (Some((c2, s2)), Some(kc)) => Some(auth::ctrl_response(
                        self.hash,
                        kc,
                        c2,
                        *s2,
                        self.tid,
                        &self.hostnqn,
                        &self.subnqn,
                    )),
                    _ => None,
                };
                self.step = if resp.is_some() { Step::Success2 } else { Step::Done };
                auth::encode_success1(self.tid, self.hash, resp.as_deref())
            }
            Step::Failure1 => {
                self.step = Step::Failed;
                auth::encode_failure(msg::FAILURE1, self.tid, self.explanation)
            }
            _ => {
                self.fail(failure::INCORRECT_PROTOCOL, "Authentication Receive out of order");
                self.step = Step::Failed;
                auth::encode_failure(msg::FAILURE1, self.tid, self.explanation)
            }
        };
        let mut data = data;
        data.truncate(cmd.len as usize);
        (Status::SUCCESS, data, self.outcome())
    }

    fn outcome(&self) -> Outcome {
        match self.step {
            Step::Done => Outcome::Authenticated,
            Step::Failed => Outcome::Failed,
            _ => Outcome::Pending,
        }
    }
}

/// Fuzz entry point (`nvme/fuzz`, `auth`): the input is a sequence of Authentication Send
/// payloads (each a 2-byte little-endian length, then that many bytes; a zero length is an
/// Authentication Receive) run through one session with keys. Must never panic, and a
/// Receive never returns more than its allocation length.
pub fn fuzz_auth(data: &[u8]) {
    let keys = HostKeys {
        host: Arc::new(Secret {
            hash: 1,
            key: vec![7; 32],
        }),
        ctrl: Some(Arc::new(Secret {
            hash: 0,
            key: vec![9; 48],
        })),
    };
    let mut s = Session::new(
        Some(keys),
        "nqn.2014-08.org.nvmexpress:uuid:fuzz",
        "nqn.2016-06.io.baton:fuzz",
    );
    let mut d = data;
    while d.len() >= 2 {
        let n = usize::from(u16::from_le_bytes([d[0], d[1]]));
        d = &d[2..];
        if n == 0 {
            let (_, out, _) = s.recv(&AuthCmd::dhchap(64));
            assert!(out.len() <= 64);
            continue;
        }
        let m = &d[..n.min(d.len())];
        d = &d[m.len()..];
        let _ = s.send(&AuthCmd::dhchap(n as u32), m);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
