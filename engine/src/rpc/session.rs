//! One management connection's protocol state, without the socket ("sans I/O"):
//! received bytes go in with [`Session::feed`], [`Session::process`] frames, parses
//! and dispatches requests, and response bytes come out of [`Session::output`].
//!
//! The server owns one `Session` per accepted connection and drives it from its
//! poller on the management thread; tests and the fuzz target drive it directly.
//! Responses leave in request order: while a request (or batch) waits on a
//! [`Reply::Later`], later requests on the same connection stay buffered.

use serde::Serialize;
use serde_json::Value;

use super::error::RpcError;
use super::registry::{Deferred, Registry, Reply, RpcResult};
use super::request::{parse, Call, FrameError, Framer, Incoming, RequestId};

/// Stop dispatching new requests while this many response bytes wait to be sent,
/// so a client that pipelines but never reads cannot grow our memory without bound.
pub const OUTPUT_BYTES_HIGH: usize = 4 * 1024 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Reading, dispatching and answering requests.
    Open,
    /// The peer closed its sending side: answer every complete request already
    /// buffered, then close once the output is flushed.
    Draining,
    /// The byte stream could not be framed: a parse error was queued; close once it
    /// is flushed. Nothing more is read.
    Failed,
}

/// One answer slot of a request or batch being answered.
enum Slot {
    /// Answer known; `None` for a notification (nothing is sent).
    Done(Option<(Value, RpcResult)>),
    /// Waiting on a deferred handler; `id` is `None` for a notification.
    Waiting {
        id: Option<Value>,
        deferred: Box<dyn Deferred>,
    },
}

/// The request or batch in progress.
struct InFlight {
    slots: Vec<Slot>,
    batch: bool,
}

/// Per-connection protocol state. Single-threaded (management thread).
pub struct Session {
    framer: Framer,
    out: Vec<u8>,
    in_flight: Option<InFlight>,
    state: SessionState,
    requests_total: u64,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Serialize)]
struct ResponseRef<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RpcError>,
}

fn write_response(out: &mut Vec<u8>, id: &Value, result: &RpcResult) {
    let (result, error) = match result {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    let resp = ResponseRef {
        jsonrpc: "2.0",
        id,
        result,
        error,
    };
    // Writing a Value into a Vec cannot fail (no I/O, keys are strings).
    serde_json::to_writer(&mut *out, &resp).expect("serialise JSON-RPC response");
}

impl Session {
    pub fn new() -> Self {
        Session {
            framer: Framer::new(),
            out: Vec::new(),
            in_flight: None,
            state: SessionState::Open,
            requests_total: 0,
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Requests (batch elements counted singly) dispatched so far.
    pub fn requests_total(&self) -> u64 {
        self.requests_total
    }

    /// Append bytes received from the peer (ignored once the session failed).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.state != SessionState::Failed {
            self.framer.extend(bytes);
        }
    }

    /// The peer will send nothing more.
    pub fn peer_closed(&mut self) {
        if self.state == SessionState::Open {
            self.state = SessionState::Draining;
        }
    }

    /// True if the peer stopped in the middle of a request (for the log).
    pub fn mid_request(&self) -> bool {
        self.framer.mid_value()
    }

    /// Should the owner read more bytes? (No while output is backed up or once failed.)
    pub fn wants_input(&self) -> bool {
        self.state == SessionState::Open && self.out.len() < OUTPUT_BYTES_HIGH
    }

    /// Response bytes waiting to be sent.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Drop the first `n` output bytes (they were sent).
    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// True when nothing can happen on this session until the peer sends more bytes:
    /// no answer waiting to go out, no deferred request in flight, no complete request
    /// buffered. Its owner may then sleep until the socket is readable.
    pub fn quiet(&self) -> bool {
        self.out.is_empty()
            && self.in_flight.is_none()
            && self.state == SessionState::Open
            && (self.framer.pending_bytes() == 0 || self.framer.mid_value())
    }

    /// True when the connection should be closed now: failed or drained, nothing
    /// in flight and all output sent.
    pub fn finished(&self) -> bool {
        self.out.is_empty()
            && self.in_flight.is_none()
            && match self.state {
                SessionState::Open => false,
                SessionState::Failed => true,
                SessionState::Draining => !self.has_complete_request_buffered(),
            }
    }

    fn has_complete_request_buffered(&self) -> bool {
        // Conservative: any buffered bytes may still hold a complete request until
        // `process` has looked at them; `process` clears them when they don't.
        self.framer.pending_bytes() > 0 && !self.framer.mid_value()
    }

    /// Poll the in-flight request, then frame and dispatch up to `budget` new
    /// top-level values. Returns the number of requests completed or dispatched
    /// (0 = idle).
    pub fn process(&mut self, registry: &Registry, budget: usize) -> usize {
        let mut work = 0;
        if let Some(done) = self.poll_in_flight() {
            work += done;
        }
        let mut dispatched = 0;
        while self.in_flight.is_none()
            && self.state != SessionState::Failed
            && self.out.len() < OUTPUT_BYTES_HIGH
            && dispatched < budget
        {
            let incoming = match self.framer.next_frame() {
                Ok(None) => {
                    if self.state == SessionState::Draining {
                        // Leftover bytes can never complete now.
                        self.framer = Framer::new();
                    }
                    break;
                }
                Ok(Some(frame)) => parse(frame),
                Err(e) => Err(e),
            };
            dispatched += 1;
            match incoming {
                Ok(incoming) => self.start(registry, incoming),
                Err(e) => self.fail(e),
            }
            if let Some(done) = self.poll_in_flight() {
                work += done;
            }
        }
        work + dispatched
    }

    fn fail(&mut self, e: FrameError) {
        log::warn!("rpc: closing connection: {e}");
        write_response(&mut self.out, &Value::Null, &Err(e.to_rpc_error()));
        self.out.push(b'\n');
        self.state = SessionState::Failed;
        self.framer = Framer::new();
    }

    fn start(&mut self, registry: &Registry, incoming: Incoming) {
        let (calls, batch) = match incoming {
            Incoming::Single(call) => (vec![call], false),
            Incoming::Batch(calls) => (calls, true),
            Incoming::InvalidBatch(e) => {
                write_response(&mut self.out, &Value::Null, &Err(e.to_rpc_error()));
                self.out.push(b'\n');
                return;
            }
        };
        let slots = calls
            .into_iter()
            .map(|call| {
                self.requests_total += 1;
                match call {
                    Call::Invalid { id, error } => Slot::Done(Some((
                        id.map_or(Value::Null, |i| i.to_value()),
                        Err(error.to_rpc_error()),
                    ))),
                    Call::Valid(req) => {
                        let id = req.id.as_ref().map(RequestId::to_value);
                        match registry.dispatch(&req) {
                            Reply::Ready(r) => Slot::Done(id.map(|id| (id, r))),
                            Reply::Later(deferred) => Slot::Waiting { id, deferred },
                        }
                    }
                }
            })
            .collect();
        self.in_flight = Some(InFlight { slots, batch });
    }

    /// Poll waiting slots; once all are done, write the response(s). Returns
    /// `Some(n)` with the number of slots completed when the in-flight work ended.
    fn poll_in_flight(&mut self) -> Option<usize> {
        let flight = self.in_flight.as_mut()?;
        let mut all_done = true;
        for slot in flight.slots.iter_mut() {
            if let Slot::Waiting { id, deferred } = slot {
                match deferred.poll() {
                    Some(r) => *slot = Slot::Done(id.take().map(|id| (id, r))),
                    None => all_done = false,
                }
            }
        }
        if !all_done {
            return None;
        }
        let flight = self.in_flight.take()?;
        let n = flight.slots.len();
        let answers: Vec<(Value, RpcResult)> = flight
            .slots
            .into_iter()
            .filter_map(|s| match s {
                Slot::Done(a) => a,
                Slot::Waiting { .. } => unreachable!("all slots done"),
            })
            .collect();
        if flight.batch {
            // A batch of only notifications gets no response at all (JSON-RPC 2.0).
            if !answers.is_empty() {
                self.out.push(b'[');
                for (i, (id, r)) in answers.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    write_response(&mut self.out, id, r);
                }
                self.out.extend_from_slice(b"]\n");
            }
        } else if let Some((id, r)) = answers.first() {
            write_response(&mut self.out, id, r);
            // SPDK ends each response with a newline; clients skip whitespace.
            self.out.push(b'\n');
        }
        Some(n)
    }
}

/// Fuzz entry point for the whole per-connection path: feed `data` (split into
/// chunks as the fuzzer chooses) through a session with a small registry and check
/// every byte written back is a sequence of JSON values.
pub fn fuzz_session(data: &[u8]) {
    let mut reg = Registry::new();
    reg.register("echo", "Echo params", |p: Option<Value>| Ok(p));
    reg.register("fail", "Always fails", |_: ()| -> Result<(), _> {
        Err(RpcError::errno(libc::EINVAL))
    });
    let (split, body) = data.split_at(data.len().min(1));
    let step = split.first().map_or(body.len().max(1), |&s| usize::from(s).max(1));
    let mut s = Session::new();
    for chunk in body.chunks(step) {
        s.feed(chunk);
        s.process(&reg, 64);
    }
    s.peer_closed();
    while s.process(&reg, 64) > 0 {}
    let out = s.output().to_vec();
    for v in serde_json::Deserializer::from_slice(&out).into_iter::<Value>() {
        let v = v.expect("session wrote invalid JSON");
        assert!(v.is_object() || v.is_array());
    }
    s.consume_output(out.len());
    assert!(s.finished());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Registry {
        let mut reg = Registry::new();
        reg.register("echo", "Echo", |p: Option<Value>| Ok(p));
        reg
    }

    fn run(s: &mut Session, reg: &Registry, bytes: &[u8]) -> Vec<Value> {
        s.feed(bytes);
        while s.process(reg, 16) > 0 {}
        let out = s.output().to_vec();
        s.consume_output(out.len());
        serde_json::Deserializer::from_slice(&out)
            .into_iter::<Value>()
            .map(|v| v.unwrap())
            .collect()
    }

    #[test]
    fn answers_pipelined_requests_in_order() {
        let reg = registry();
        let mut s = Session::new();
        let out = run(
            &mut s,
            &reg,
            br#"{"jsonrpc":"2.0","method":"echo","id":1,"params":{"a":1}}
{"jsonrpc":"2.0","method":"echo","id":"two"}{"method":"echo"}{"method":"nope","id":3}"#,
        );
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], json!({"jsonrpc":"2.0","id":1,"result":{"a":1}}));
        assert_eq!(out[1], json!({"jsonrpc":"2.0","id":"two","result":null}));
        assert_eq!(out[2]["error"]["code"], json!(-32601));
        assert_eq!(out[2]["id"], json!(3));
    }

    #[test]
    fn batch_gets_array_without_notifications() {
        let reg = registry();
        let mut s = Session::new();
        let out = run(
            &mut s,
            &reg,
            br#"[{"method":"echo","id":1},{"method":"echo"},7,{"method":"echo","id":2,"params":[1]}]"#,
        );
        assert_eq!(out.len(), 1);
        let arr = out[0].as_array().unwrap();
        assert_eq!(arr.len(), 3);
        assert_eq!(arr[0]["id"], json!(1));
        assert_eq!(arr[1]["error"]["code"], json!(-32600));
        assert_eq!(arr[1]["id"], Value::Null);
        assert_eq!(arr[2]["result"], json!([1]));
        // Only notifications: nothing at all.
        assert!(run(&mut s, &reg, br#"[{"method":"echo"}]"#).is_empty());
        let out = run(&mut s, &reg, b"[]");
        assert_eq!(out[0]["error"]["code"], json!(-32600));
    }

    #[test]
    fn garbage_fails_the_session_after_a_parse_error() {
        let reg = registry();
        let mut s = Session::new();
        let out = run(
            &mut s,
            &reg,
            br#"{"method":"echo","id":1} nonsense {"method":"echo","id":2}"#,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["id"], json!(1));
        assert_eq!(out[1]["error"]["code"], json!(-32700));
        assert_eq!(s.state(), SessionState::Failed);
        assert!(s.finished());
    }

    #[test]
    fn deferred_reply_holds_later_requests_back() {
        let mut reg = registry();
        let gate = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let g = gate.clone();
        reg.register_deferred("wait", "Wait for gate", move |_, _: ()| {
            let g = g.clone();
            Reply::Later(Box::new(move || {
                g.load(std::sync::atomic::Ordering::Relaxed).then_some(Ok(json!(true)))
            }))
        });
        let mut s = Session::new();
        let out = run(&mut s, &reg, br#"{"method":"wait","id":1}{"method":"echo","id":2}"#);
        assert!(out.is_empty());
        gate.store(true, std::sync::atomic::Ordering::Relaxed);
        let out = run(&mut s, &reg, b"");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["id"], json!(1));
        assert_eq!(out[1]["id"], json!(2));
    }

    #[test]
    fn draining_answers_buffered_requests_then_finishes() {
        let reg = registry();
        let mut s = Session::new();
        s.feed(br#"{"method":"echo","id":1}{"method":"echo","id":2}{"method":"ec"#);
        s.peer_closed();
        while s.process(&reg, 1) > 0 {}
        let out: Vec<Value> = serde_json::Deserializer::from_slice(s.output())
            .into_iter::<Value>()
            .map(|v| v.unwrap())
            .collect();
        assert_eq!(out.len(), 2);
        let n = s.output().len();
        s.consume_output(n);
        assert!(s.finished());
    }

    #[test]
    fn fuzz_session_over_mutated_inputs() {
        let seeds: &[&[u8]] = &[
            br#"{"jsonrpc":"2.0","method":"echo","id":1,"params":{"a":[1,2]}}{"method":"fail","id":2}"#,
            br#"[{"method":"echo","id":"x"},{"method":"fail"},{"method":"nope","id":null}]"#,
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for i in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut input = vec![(x % 23) as u8];
            input.extend_from_slice(seeds[i as usize % seeds.len()]);
            let pos = 1 + (x >> 8) as usize % (input.len() - 1);
            match (x >> 32) % 3 {
                0 => input[pos] = (x >> 40) as u8,
                1 => input.truncate(pos),
                _ => input.insert(pos, b"{}[]\",:"[(x >> 40) as usize % 7]),
            }
            fuzz_session(&input);
        }
    }
}
