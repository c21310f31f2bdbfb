//! Shared harness for the rpc integration tests: a server with every engine
//! method on a private Unix socket, polled by a background "management" thread.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use engine::reactor::PollStatus;
use engine::rpc::client::{Client, ClientError};
use engine::rpc::registry::Registry;
use engine::rpc::server::{Server, ServerStats};
use serde_json::Value;

pub struct TestServer {
    pub path: PathBuf,
    pub tcp: Option<std::net::SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ServerStats>>,
}

/// A fresh socket path under the system temp dir, unique per test.
pub fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("baton-rpc-{}-{tag}.sock", std::process::id()))
}

/// A registry with every engine method.
pub fn engine_registry() -> Registry {
    let mut reg = Registry::new();
    engine::rpc::methods::register_rpcs(&mut reg);
    reg
}

impl TestServer {
    pub fn start(tag: &str) -> TestServer {
        Self::start_with(tag, engine_registry(), false)
    }

    pub fn start_with(tag: &str, registry: Registry, tcp: bool) -> TestServer {
        let path = socket_path(tag);
        let mut server = Server::new(registry);
        server.listen_unix(&path).expect("listen");
        let tcp = tcp.then(|| server.listen_tcp("127.0.0.1:0".parse().unwrap()).expect("tcp"));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if server.poll() == PollStatus::Idle {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            server.stats()
        });
        TestServer {
            path,
            tcp,
            stop,
            thread: Some(thread),
        }
    }

    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.path).expect("connect");
        c.set_timeout(Duration::from_secs(20));
        c
    }

    /// Stop the poll thread and return the server's counters.
    pub fn stop(mut self) -> ServerStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Call and expect an RPC error; returns (code, message).
pub fn call_err(c: &mut Client, method: &str, params: Option<Value>) -> (i32, String) {
    match c.call(method, params) {
        Err(ClientError::Rpc { error, .. }) => (error.code, error.message),
        other => panic!("{method}: expected an RPC error, got {other:?}"),
    }
}
