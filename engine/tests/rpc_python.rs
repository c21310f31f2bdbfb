//! Drives the server with a tiny Python client that speaks the framing of SPDK's
//! `scripts/rpc.py` (indented JSON requests joined by newlines, responses decoded
//! with `json.JSONDecoder().raw_decode` from the byte stream), including rpc.py's
//! save_config walk (`framework_get_subsystems` + `framework_get_config`).
//! Skipped (with a message) where python3 is not installed.

mod rpc_support;

use std::process::Command;

use rpc_support::TestServer;

const CLIENT: &str = r#"
import json, socket, sys

class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(20)
        self.buf = ""
        self.next_id = 0

    def send(self, reqs):
        out = []
        for method, params in reqs:
            self.next_id += 1
            req = {"jsonrpc": "2.0", "method": method, "id": self.next_id}
            if params:
                req["params"] = params
            out.append(json.dumps(req, indent=2))
        self.sock.sendall("\n".join(out).encode("utf-8"))

    def recv(self):
        while True:
            buf = self.buf.lstrip()
            try:
                obj, idx = json.JSONDecoder().raw_decode(buf)
                self.buf = buf[idx:]
                return obj
            except ValueError:
                data = self.sock.recv(4096)
                if not data:
                    raise RuntimeError("closed with partial response: " + self.buf)
                self.buf += data.decode("utf-8")

    def call(self, method, params=None):
        self.send([(method, params)])
        resp = self.recv()
        if "error" in resp:
            raise RuntimeError(json.dumps(resp["error"]))
        return resp["result"]

c = Client(sys.argv[1])
v = c.call("spdk_get_version")
assert v["version"].startswith("baton"), v
# Parameters exactly as rpc.py's bdev_malloc_create sends them (None removed).
name = c.call("bdev_malloc_create", {"num_blocks": 2048, "block_size": 512, "name": "py0",
                                     "md_interleave": False, "dif_is_head_of_md": False})
assert name == "py0", name
b = c.call("bdev_get_bdevs", {"name": "py0"})
assert b[0]["num_blocks"] == 2048, b
try:
    c.call("bdev_malloc_delete", {"name": "nope"})
    raise AssertionError("expected an error")
except RuntimeError as e:
    err = json.loads(str(e))
    assert err["code"] == -19, err
# Pipelined: two requests in one write, answers in order.
c.send([("spdk_get_version", None), ("bdev_get_iostat", {"name": "py0"})])
r1, r2 = c.recv(), c.recv()
assert r1["id"] + 1 == r2["id"], (r1, r2)
assert r2["result"]["bdevs"][0]["name"] == "py0", r2
# rpc.py's save_config.
config = {"subsystems": []}
for elem in c.call("framework_get_subsystems"):
    config["subsystems"].append({"subsystem": elem["subsystem"],
        "config": c.call("framework_get_config", {"name": elem["subsystem"]})})
methods = [e["method"] for s in config["subsystems"] for e in s["config"]]
assert "bdev_malloc_create" in methods, config
assert c.call("bdev_malloc_delete", {"name": "py0"}) is True
print("OK")
"#;

#[test]
fn python_client_with_rpc_py_framing() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipping the rpc.py-framing test");
        return;
    }
    let srv = TestServer::start("python");
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .arg(&srv.path)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "OK");
}
