//! The JSON-RPC client behind `baton rpc`: connects to a server's Unix socket (or a
//! `host:port` TCP address), sends requests framed as SPDK's `rpc.py` does (JSON
//! objects back to back) and decodes responses from the byte stream.
//!
//! Blocking, with a timeout: meant for the command line, scripts and tests, never
//! for a reactor thread.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::error::RpcError;

/// How long `call` waits for a response (SPDK's rpc.py: 60 s).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes asked for by one `read()`.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source} (is baton running?)")]
    Connect { addr: String, source: io::Error },
    #[error("I/O error talking to the server: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed by the server{}", if partial.is_empty() { String::new() } else { format!(" with partial response: {partial}") })]
    Closed { partial: String },
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("invalid response from the server: {0}")]
    Protocol(String),
    #[error("{method} failed: error {} {}", error.code, error.message)]
    Rpc { method: String, error: RpcError },
    #[error("invalid command-line parameters: {0}")]
    BadParams(String),
}

impl ClientError {
    /// The JSON-RPC error, if the server answered with one.
    pub fn rpc_error(&self) -> Option<&RpcError> {
        match self {
            ClientError::Rpc { error, .. } => Some(error),
            _ => None,
        }
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// A connection to a server. Requests may be pipelined with [`Client::send`] and
/// their responses read in order with [`Client::recv`].
pub struct Client {
    stream: Stream,
    buf: Vec<u8>,
    next_id: u64,
    timeout: Duration,
}

impl Client {
    /// Connect to `addr`: a Unix socket path, or `IP:PORT` for TCP.
    pub fn connect(addr: &Path) -> Result<Client, ClientError> {
        match addr.to_str().and_then(|s| s.parse::<SocketAddr>().ok()) {
            Some(tcp) => Client::connect_tcp(tcp),
            None => Client::connect_unix(addr),
        }
    }

    pub fn connect_unix(path: &Path) -> Result<Client, ClientError> {
        let s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            addr: path.display().to_string(),
            source,
        })?;
        Ok(Client::with_stream(Stream::Unix(s)))
    }

    pub fn connect_tcp(addr: SocketAddr) -> Result<Client, ClientError> {
        let s = TcpStream::connect(addr).map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
        s.set_nodelay(true)?;
        Ok(Client::with_stream(Stream::Tcp(s)))
    }

    fn with_stream(stream: Stream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            next_id: 1,
            timeout: CALL_TIMEOUT,
        }
    }

    /// Change the response timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Send raw bytes (tests use this to send split or malformed requests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.stream {
            Stream::Unix(s) => s.write_all(bytes)?,
            Stream::Tcp(s) => s.write_all(bytes)?,
        }
        Ok(())
    }

    /// Send one request without waiting; returns its id.
    pub fn send(&mut self, method: &str, params: Option<Value>) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(p) = params {
            req["params"] = p;
        }
        let bytes = serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send_raw(&bytes)?;
        Ok(id)
    }

    /// Read the next complete JSON value (a response object or a batch array).
    pub fn recv(&mut self) -> Result<Value, ClientError> {
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            if let Some(v) = self.decode_one()? {
                return Ok(v);
            }
            let read = match &mut self.stream {
                Stream::Unix(s) => {
                    s.set_read_timeout(Some(self.timeout))?;
                    s.read(&mut chunk)
                }
                Stream::Tcp(s) => {
                    s.set_read_timeout(Some(self.timeout))?;
                    s.read(&mut chunk)
                }
            };
            match read {
                Ok(0) => {
                    return Err(ClientError::Closed {
                        partial: String::from_utf8_lossy(&self.buf).trim().to_string(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
                    return Err(ClientError::Timeout(self.timeout))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn decode_one(&mut self) -> Result<Option<Value>, ClientError> {
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        match it.next() {
            None => {
                self.buf.clear(); // only whitespace
                Ok(None)
            }
            Some(Ok(v)) => {
                let used = it.byte_offset();
                self.buf.drain(..used);
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            Some(Err(e)) => Err(ClientError::Protocol(e.to_string())),
        }
    }

    /// Call `method` and wait for its result.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.send(method, params)?;
        let resp = match self.recv() {
            Ok(r) => r,
            // As rpc.py: the instance may die before it answers; that is success.
            Err(ClientError::Closed { .. }) if method == "spdk_kill_instance" => return Ok(json!({})),
            Err(e) => return Err(e),
        };
        response_result(method, id, resp)
    }
}

/// Take a response object apart: its result, or its error as `ClientError::Rpc`.
pub fn response_result(method: &str, id: u64, mut resp: Value) -> Result<Value, ClientError> {
    if resp.get("id") != Some(&json!(id)) {
        return Err(ClientError::Protocol(format!(
            "expected response to request {id}, got {resp}"
        )));
    }
    if let Some(err) = resp.get_mut("error") {
        let error: RpcError =
            serde_json::from_value(err.take()).map_err(|e| ClientError::Protocol(format!("bad error object: {e}")))?;
        return Err(ClientError::Rpc {
            method: method.to_string(),
            error,
        });
    }
    match resp.get_mut("result") {
        Some(r) => Ok(r.take()),
        None => Err(ClientError::Protocol(format!(
            "response has neither result nor error: {resp}"
        ))),
    }
}

/// What `baton rpc METHOD [ARGS…]` runs: connect to `socket` (a path, or
/// `IP:PORT`), call `method` with `params`, return the result (the binary prints it
/// as pretty JSON; on `Err` it prints the error to stderr and exits non-zero).
pub fn run_cli(socket: &Path, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
    Client::connect(socket)?.call(method, params)
}

/// Turn `baton rpc` arguments after the method name into `params`.
///
/// Either one JSON object/array argument (`'{"name":"Malloc0","num_blocks":256}'`),
/// or `--key value` / `--key=value` pairs, where dashes in a key become underscores
/// (`--num-blocks` is `num_blocks`), a value that parses as JSON is taken as JSON
/// (`256`, `true`, `[1,2]`, `"\"007\""` for a string of digits) and anything else as
/// a string, and a `--flag` followed by another `--key` or nothing is `true`.
/// No arguments: `None` (no `params` member is sent, as rpc.py does).
pub fn build_params(args: &[String]) -> Result<Option<Value>, ClientError> {
    if args.is_empty() {
        return Ok(None);
    }
    if args.len() == 1 && matches!(args[0].trim_start().as_bytes().first(), Some(b'{' | b'[')) {
        let v: Value = serde_json::from_str(&args[0])
            .map_err(|e| ClientError::BadParams(format!("params is not valid JSON: {e}")))?;
        return Ok(Some(v));
    }
    let mut map = Map::new();
    let mut i = 0;
    while i < args.len() {
        let Some(key) = args[i].strip_prefix("--") else {
            return Err(ClientError::BadParams(format!("expected --name before '{}'", args[i])));
        };
        let (key, value) = match key.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => match args.get(i + 1) {
                Some(next) if !next.starts_with("--") => {
                    i += 1;
                    (key, Some(next.clone()))
                }
                _ => (key, None),
            },
        };
        i += 1;
        if key.is_empty() {
            return Err(ClientError::BadParams("empty parameter name '--'".into()));
        }
        let key = key.replace('-', "_");
        let value = match value {
            None => Value::Bool(true),
            Some(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        };
        if map.insert(key.clone(), value).is_some() {
            return Err(ClientError::BadParams(format!("--{key} given twice")));
        }
    }
    Ok(Some(Value::Object(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn builds_params_from_flags_and_json() {
        assert_eq!(build_params(&[]).unwrap(), None);
        assert_eq!(
            build_params(&args(&[
                "--name",
                "Malloc0",
                "--num-blocks",
                "256",
                "--current",
                "--uuid=a-b",
                "--x",
                "-1"
            ]))
            .unwrap(),
            Some(json!({"name":"Malloc0","num_blocks":256,"current":true,"uuid":"a-b","x":-1}))
        );
        assert_eq!(
            build_params(&args(&["--name", "\"007\""])).unwrap(),
            Some(json!({"name":"007"}))
        );
        assert_eq!(
            build_params(&args(&[r#"{"name":"a"}"#])).unwrap(),
            Some(json!({"name":"a"}))
        );
        assert!(build_params(&args(&["name"])).is_err());
        assert!(build_params(&args(&["--a", "1", "--a", "2"])).is_err());
        assert!(build_params(&args(&["{bad"])).is_err());
    }

    #[test]
    fn response_result_maps_errors() {
        let err = response_result(
            "m",
            1,
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-19,"message":"No such device"}}),
        )
        .unwrap_err();
        assert_eq!(err.rpc_error().unwrap().code, -19);
        assert_eq!(err.to_string(), "m failed: error -19 No such device");
        assert_eq!(
            response_result("m", 1, json!({"jsonrpc":"2.0","id":1,"result":true})).unwrap(),
            json!(true)
        );
        assert!(response_result("m", 2, json!({"jsonrpc":"2.0","id":1,"result":true})).is_err());
    }
}
