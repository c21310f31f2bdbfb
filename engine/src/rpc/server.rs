//! The JSON-RPC server: non-blocking listening sockets (a Unix domain socket, as
//! SPDK's `-r`, and optionally TCP on loopback) and the accepted connections, all
//! advanced by one [`Server::poll`] call.
//!
//! The server runs on the management ("app") thread, outside the data-path core
//! mask: the binary calls `poll()` in a loop (or from a poller on that thread). Each
//! call accepts, reads, parses, dispatches and writes without blocking, bounded by the
//! `*_PER_POLL_MAX` constants so one busy client cannot starve the others. Handlers
//! run inline inside `poll()`; a handler that needs a data-path reactor sends it a
//! message and answers with a deferred reply, so no reactor ever waits on RPC.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::registry::Registry;
use super::session::Session;
use crate::wait::{Epoll, Interest};
use std::os::fd::{AsRawFd, RawFd};

pub use crate::reactor::PollStatus;

/// SPDK's default is `/var/tmp/spdk.sock`; ours sits next to it.
pub const DEFAULT_SOCKET_PATH: &str = "/var/tmp/baton.sock";
/// SPDK's `rpc.py` default TCP port.
pub const DEFAULT_TCP_PORT: u16 = 5260;
/// Connections served at once (SPDK: 64); more are accepted and closed at once.
pub const CONNECTIONS_MAX: usize = 64;
/// New connections accepted per listener per `poll()`.
pub const ACCEPTS_PER_POLL_MAX: usize = 8;
/// `read()` calls per connection per `poll()`.
pub const READS_PER_POLL_MAX: usize = 4;
/// Bytes asked for by one `read()`.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Top-level requests dispatched per connection per `poll()`.
pub const REQUESTS_PER_POLL_MAX: usize = 16;

/// How long the management thread naps when a `poll()` found nothing but a request is
/// still being answered (a deferred handler is polled, not signalled).
pub const APP_IDLE_SLEEP: std::time::Duration = std::time::Duration::from_micros(50);
/// How long the management thread blocks at most when nothing at all is going on: it
/// wakes at once for a connection or a request, and this often to see a stop request.
pub const APP_STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Why the server could not start listening.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("{path} is in use by a running server")]
    SocketInUse { path: PathBuf },
    #[error("{path} exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("TCP address {addr} is not a loopback address")]
    NotLoopback { addr: SocketAddr },
    #[error("socket mode {mode:#o}: {why}")]
    BadMode { mode: u32, why: &'static str },
    #[error("cannot set the owner group or mode of {path}: {source}")]
    Permissions { path: PathBuf, source: io::Error },
}

fn set_access(path: &Path, access: SocketAccess) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = access.gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode))
}

/// Mode of the JSON-RPC Unix socket unless told otherwise: the owner only (whoever can
/// connect can delete a volume or promote a standby).
pub const SOCKET_MODE_DEFAULT: u32 = 0o600;

/// Who may connect to the Unix socket: its mode (permission bits, no setuid/setgid/sticky
/// and no bits for others: management must not be world-reachable) and an optional group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    pub mode: u32,
    pub gid: Option<u32>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            mode: SOCKET_MODE_DEFAULT,
            gid: None,
        }
    }
}

impl SocketAccess {
    /// Checks the mode: owner read+write needed, nothing for others, permission bits only.
    pub fn check(&self) -> Result<(), ServerError> {
        let bad = |why| Err(ServerError::BadMode { mode: self.mode, why });
        if self.mode & !0o777 != 0 {
            return bad("only permission bits (at most 0o770) may be set");
        }
        if self.mode & 0o007 != 0 {
            return bad("others must have no access to the management socket");
        }
        if self.mode & 0o600 != 0o600 {
            return bad("the owner needs read and write");
        }
        Ok(())
    }
}

enum Listener {
    Unix { listener: UnixListener, path: PathBuf },
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
}

struct Conn {
    stream: Stream,
    session: Session,
    /// For the log.
    peer: String,
}

/// Counters for the closing report and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_closed: u64,
    pub requests: u64,
}

/// The JSON-RPC server. Owned by, and only touched from, the management thread.
pub struct Server {
    registry: Registry,
    listeners: Vec<Listener>,
    conns: Vec<Conn>,
    read_buf: Box<[u8]>,
    stats: ServerStats,
    /// Listeners and connections, for [`Server::wait`]; `None` if epoll could not be
    /// set up (the server then naps instead of blocking).
    waiter: Option<Epoll>,
}

impl Server {
    /// A server with no listeners yet, dispatching to `registry`.
    pub fn new(registry: Registry) -> Self {
        Server {
            registry,
            listeners: Vec::new(),
            conns: Vec::new(),
            read_buf: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            stats: ServerStats::default(),
            waiter: Epoll::new()
                .map_err(|e| log::warn!("rpc: no epoll ({e}); the management thread will nap instead"))
                .ok(),
        }
    }

    /// Listen on a Unix domain socket at `path`, mode 0600 (see [`Server::listen_unix_with`]).
    pub fn listen_unix(&mut self, path: &Path) -> Result<(), ServerError> {
        self.listen_unix_with(path, SocketAccess::default())
    }

    /// Listen on a Unix domain socket at `path` that only `access` may connect to,
    /// whatever the umask: the socket is bound under a temporary name beside `path`, given
    /// its group and mode, then renamed into place, so it is never reachable with looser
    /// permissions. A stale socket file left by a dead server is replaced; a live one is an
    /// error. The file is removed on drop.
    pub fn listen_unix_with(&mut self, path: &Path, access: SocketAccess) -> Result<(), ServerError> {
        access.check()?;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::SocketInUse {
                    path: path.to_path_buf(),
                });
            }
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |source| ServerError::Bind {
            addr: path.display().to_string(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
        let perm_err = |source| ServerError::Permissions {
            path: path.to_path_buf(),
            source,
        };
        let placed = set_access(&tmp, access)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(perm_err);
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        listener.set_nonblocking(true).map_err(bind_err)?;
        self.watch(listener.as_raw_fd());
        self.listeners.push(Listener::Unix {
            listener,
            path: path.to_path_buf(),
        });
        Ok(())
    }

    /// Listen on TCP `addr`, which must be a loopback address (management traffic
    /// has no authentication). Returns the bound address (port 0 picks one).
    pub fn listen_tcp(&mut self, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
        if !addr.ip().is_loopback() {
            return Err(ServerError::NotLoopback { addr });
        }
        let bind_err = |source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        self.watch(listener.as_raw_fd());
        self.listeners.push(Listener::Tcp(listener));
        Ok(local)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accept, read, dispatch, write; never blocks. `Busy` if anything moved.
    pub fn poll(&mut self) -> PollStatus {
        let mut busy = self.accept();
        let mut i = 0;
        while i < self.conns.len() {
            let conn = &mut self.conns[i];
            let before = conn.session.requests_total();
            let (moved, close) = service(conn, &self.registry, &mut self.read_buf);
            self.stats.requests += conn.session.requests_total() - before;
            busy |= moved;
            if let Some(why) = close {
                log::debug!("rpc: closing {}: {why}", conn.peer);
                if let Some(w) = &self.waiter {
                    w.remove(conn.stream.raw_fd());
                }
                self.conns.swap_remove(i);
                self.stats.connections_closed += 1;
                busy = true;
            } else {
                i += 1;
            }
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn watch(&mut self, fd: RawFd) {
        if let Some(w) = &self.waiter {
            if let Err(e) = w.add(fd, Interest::READABLE) {
                log::warn!("rpc: cannot watch a listener ({e}); the management thread will nap instead");
                self.waiter = None;
            }
        }
    }

    /// Sleeps until there may be something to do, at most `max`: blocks until a
    /// listener or connection is readable when every session is quiet (idle management
    /// costs nothing), else naps [`APP_IDLE_SLEEP`] (a deferred request is polled).
    pub fn wait(&self, max: std::time::Duration) {
        match &self.waiter {
            Some(w) if self.conns.iter().all(|c| c.session.quiet()) => {
                if let Err(e) = w.wait(Some(max)) {
                    log::warn!("rpc: epoll_wait failed: {e}");
                    std::thread::sleep(APP_IDLE_SLEEP);
                }
            }
            _ => std::thread::sleep(APP_IDLE_SLEEP.min(max)),
        }
    }

    fn accept(&mut self) -> bool {
        let mut busy = false;
        for listener in &self.listeners {
            for _ in 0..ACCEPTS_PER_POLL_MAX {
                let accepted = match listener {
                    Listener::Unix { listener, path } => listener
                        .accept()
                        .map(|(s, _)| (Stream::Unix(s), path.display().to_string())),
                    Listener::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), a.to_string())),
                };
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("rpc: accept failed: {e}");
                        break;
                    }
                };
                busy = true;
                if self.conns.len() >= CONNECTIONS_MAX {
                    log::warn!("rpc: refusing connection on {peer}: {CONNECTIONS_MAX} already open");
                    self.stats.connections_refused += 1;
                    continue; // dropping the stream closes it
                }
                let nonblocking = match &stream {
                    Stream::Unix(s) => s.set_nonblocking(true),
                    Stream::Tcp(s) => s.set_nonblocking(true).and_then(|_| s.set_nodelay(true)),
                };
                if let Err(e) = nonblocking {
                    log::warn!("rpc: dropping connection on {peer}: {e}");
                    continue;
                }
                self.stats.connections_accepted += 1;
                if let Some(w) = &self.waiter {
                    if let Err(e) = w.add(stream.raw_fd(), Interest::READABLE) {
                        log::warn!("rpc: dropping connection on {peer}: cannot watch it: {e}");
                        continue;
                    }
                }
                self.conns.push(Conn {
                    stream,
                    session: Session::new(),
                    peer,
                });
            }
        }
        busy
    }
}

/// Advance one connection. Returns (did work, Some(reason) to close it).
fn service(conn: &mut Conn, registry: &Registry, read_buf: &mut [u8]) -> (bool, Option<String>) {
    let mut busy = false;
    // Read what the peer sent, unless its answers are backed up.
    for _ in 0..READS_PER_POLL_MAX {
        if !conn.session.wants_input() {
            break;
        }
        match conn.stream.read(read_buf) {
            Ok(0) => {
                if conn.session.mid_request() {
                    log::info!("rpc: {} disconnected in the middle of a request", conn.peer);
                }
                conn.session.peer_closed();
                busy = true;
                break;
            }
            Ok(n) => {
                conn.session.feed(&read_buf[..n]);
                busy = true;
                if n < read_buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (true, Some(format!("read failed: {e}"))),
        }
    }
    if conn.session.process(registry, REQUESTS_PER_POLL_MAX) > 0 {
        busy = true;
    }
    // Write as much of the answers as the socket takes.
    while !conn.session.output().is_empty() {
        match conn.stream.write(conn.session.output()) {
            Ok(0) => return (true, Some("peer stopped reading".into())),
            Ok(n) => {
                conn.session.consume_output(n);
                busy = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (true, Some(format!("write failed: {e}"))),
        }
    }
    if conn.session.finished() {
        return (true, Some("done".into()));
    }
    (busy, None)
}

/// Run `server` on a new management thread named `rpc_app` until `stop` says so
/// (e.g. `reactors.stop_flag()`), sleeping in [`Server::wait`] whenever a poll finds
/// nothing. Returns the thread; joining it yields the server's counters.
pub fn spawn_app_thread(
    mut server: Server,
    stop: crate::reactor::StopHandle,
) -> io::Result<std::thread::JoinHandle<ServerStats>> {
    std::thread::Builder::new().name("rpc_app".into()).spawn(move || {
        while !stop.is_stopping() {
            if server.poll() == PollStatus::Idle {
                server.wait(APP_STOP_CHECK);
            }
        }
        server.stats()
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        for l in &self.listeners {
            if let Listener::Unix { path, .. } = l {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
