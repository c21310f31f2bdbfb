//! The standby host's image server: accepts primary hosts' connections and
//! saves their images into an [`ImageStore`].
//!
//! This is the standby host's application plane, not a storage reactor:
//! blocking std sockets, one accept thread and one thread per connection
//! (at most [`CONNECTIONS_MAX`]).

use super::conn::{FrameReader, FrameWriter, Stream};
use super::store::{apply_delta, Plan};
use super::wire::{self, code, Msg, Propose, RUNS_PER_FRAME};
use super::{chunk_len, hex, Hash, ImageError, ImageStore};
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most connections served at once; one more is refused with a `BUSY` error.
pub const CONNECTIONS_MAX: usize = 64;
/// A transfer whose client sends nothing for this long is abandoned.
pub const TRANSFER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

type Conns = Arc<Mutex<HashMap<u64, (TcpStream, JoinHandle<()>)>>>;

/// A running image server. Stop it with [`ImageServer::stop`] (or drop it).
pub struct ImageServer {
    addr: SocketAddr,
    store: Arc<ImageStore>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    conns: Conns,
}

impl ImageServer {
    /// Opens the store in `store_dir` and listens on `listen` (port 0 picks
    /// one: see [`ImageServer::addr`]). Returns once the socket is bound.
    pub fn start(listen: SocketAddr, store_dir: &Path) -> Result<ImageServer, ImageError> {
        ImageServer::with_store(listen, Arc::new(ImageStore::open(store_dir)?))
    }

    /// Serves an already open store (which the caller may also use, e.g.
    /// to restore or prune).
    pub fn with_store(listen: SocketAddr, store: Arc<ImageStore>) -> Result<ImageServer, ImageError> {
        let l = TcpListener::bind(listen).map_err(|e| ImageError::io(format!("bind {listen}"), e))?;
        let addr = l.local_addr().map_err(|e| ImageError::io("local address", e))?;
        l.set_nonblocking(true)
            .map_err(|e| ImageError::io("set listener non-blocking", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::default();
        let accept = {
            let (store, stop, conns) = (store.clone(), stop.clone(), conns.clone());
            std::thread::Builder::new()
                .name("image-accept".into())
                .spawn(move || accept_loop(l, store, stop, conns))
                .map_err(|e| ImageError::io("spawn accept thread", e))?
        };
        Ok(ImageServer {
            addr,
            store,
            stop,
            accept: Some(accept),
            conns,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The store it saves into.
    pub fn store(&self) -> Arc<ImageStore> {
        self.store.clone()
    }

    /// Connections being served now.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Stops accepting, closes every connection (a transfer in progress is
    /// abandoned: nothing of it becomes visible) and joins all threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let conns: Vec<_> = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, v)| v)
            .collect();
        for (s, _) in &conns {
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, h) in conns {
            let _ = h.join();
        }
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(l: TcpListener, store: Arc<ImageStore>, stop: Arc<AtomicBool>, conns: Conns) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    while !stop.load(Ordering::Acquire) {
        let (s, peer) = match l.accept() {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                log::warn!("image server: accept: {e}");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        if s.set_nonblocking(false).is_err() {
            continue;
        }
        let _ = s.set_nodelay(true);
        // Hold the map while spawning so the thread's own removal comes after.
        let mut map = conns.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CONNECTIONS_MAX {
            drop(map);
            let Ok(st) = Stream::server(s) else { continue };
            let mut w = FrameWriter::new(st);
            wire::encode_error(&mut w.out, code::BUSY, "too many connections");
            let _ = w.send().and_then(|_| w.flush());
            continue;
        }
        let Ok(clone) = s.try_clone() else { continue };
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let (store, conns2) = (store.clone(), conns.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("image-conn-{id}"))
            .spawn(move || {
                if let Err(e) = serve(&store, s) {
                    log::warn!("image server: connection from {peer}: {e}");
                }
                conns2.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            });
        match spawned {
            Ok(h) => {
                map.insert(id, (clone, h));
            }
            Err(e) => log::error!("image server: spawn connection thread: {e}"),
        }
    }
}

fn error_code(e: &ImageError) -> u16 {
    match e {
        ImageError::Wire(_) | ImageError::Protocol(_) | ImageError::Closed(_) => code::PROTOCOL,
        ImageError::BadAppName(_)
        | ImageError::TooLarge { .. }
        | ImageError::ChunkMismatch { .. }
        | ImageError::ImageHashMismatch { .. }
        | ImageError::SeqNotIncreasing { .. }
        | ImageError::BadTag { .. } => code::BAD_IMAGE,
        _ => code::STORE,
    }
}

/// Serves one connection until the client closes it or an error; an error
/// is reported to the client in an `Error` frame before closing.
fn serve(store: &ImageStore, s: TcpStream) -> Result<(), ImageError> {
    let s = Stream::server(s)?;
    let mut rd = FrameReader::new(s.try_clone()?);
    let mut wr = FrameWriter::new(s);
    let r = serve_inner(store, &mut rd, &mut wr);
    if let Err(e) = &r {
        if !matches!(e, ImageError::Closed(_) | ImageError::Io { .. }) {
            wr.out.clear();
            wire::encode_error(&mut wr.out, error_code(e), &e.to_string());
            let _ = wr.send().and_then(|_| wr.flush());
        }
    }
    r
}

fn serve_inner(store: &ImageStore, rd: &mut FrameReader, wr: &mut FrameWriter) -> Result<(), ImageError> {
    let set_timeout = |rd: &FrameReader, t: Option<Duration>| {
        rd.stream()
            .set_read_timeout(t)
            .map_err(|e| ImageError::io("set read timeout", e))
    };
    set_timeout(rd, Some(TRANSFER_READ_TIMEOUT))?;
    let app = match rd.next()? {
        Msg::Hello { app } => store.app(app)?,
        m => return Err(ImageError::Protocol(format!("expected Hello, got {:?}", m.kind()))),
    };
    wire::encode_empty(&mut wr.out, wire::Kind::HelloOk).expect("HelloOk has no body");
    wr.send()?;
    wr.flush()?;
    loop {
        // Idle between transfers: no timeout (the primary transfers at its
        // restart points, which may be far apart).
        set_timeout(rd, None)?;
        let p = match rd.next_or_eof()? {
            None => return Ok(()),
            Some(Msg::Propose(p)) => p,
            Some(m) => return Err(ImageError::Protocol(format!("expected Propose, got {:?}", m.kind()))),
        };
        set_timeout(rd, Some(TRANSFER_READ_TIMEOUT))?;
        transfer(&app, rd, wr, p)?;
    }
}

/// One proposed image: entries, need list, chunks, commit, `Saved` (or
/// `NeedFull` if the base is not held, after which the client proposes again).
fn transfer(
    app: &Arc<super::store::AppShared>,
    rd: &mut FrameReader,
    wr: &mut FrameWriter,
    p: Propose,
) -> Result<(), ImageError> {
    let want = p.entry_count as usize;
    let mut entries: Vec<(u32, Hash)> = Vec::with_capacity(want.min(1 << 20));
    while entries.len() < want {
        match rd.next()? {
            Msg::Entries(e) => {
                if entries.len() + e.len() > want {
                    return Err(ImageError::Protocol(format!(
                        "{} entries sent, {} proposed",
                        entries.len() + e.len(),
                        want
                    )));
                }
                entries.extend(e.iter());
            }
            m => return Err(ImageError::Protocol(format!("expected Entries, got {:?}", m.kind()))),
        }
    }
    let base = match p.base {
        None => None,
        Some(b) => match app.manifest(b.seq, &b.hash) {
            Some(m) => Some(m),
            None => {
                log::info!(
                    "image server {}: base seq {} {} not held; asking for the full manifest",
                    app.name(),
                    b.seq,
                    hex(&b.hash)
                );
                wire::encode_empty(&mut wr.out, wire::Kind::NeedFull).expect("no body");
                wr.send()?;
                return wr.flush();
            }
        },
    };
    let m = apply_delta(p.seq, p.image_len, p.image_hash, base.as_deref(), &entries)
        .map_err(|why| ImageError::Protocol(format!("image seq {}: {why}", p.seq)))?;
    drop(entries);
    let plan: Plan = app.plan(m);
    let runs = to_runs(&plan.need);
    wire::encode_need(&mut wr.out, runs.len() as u32, plan.need.len() as u32);
    wr.send()?;
    for part in runs.chunks(RUNS_PER_FRAME) {
        wire::encode_runs(&mut wr.out, part).expect("bounded runs");
        wr.send()?;
    }
    wr.flush()?;
    let pack = if plan.need.is_empty() {
        None
    } else {
        let mut pack = plan.pack_writer()?;
        let mut k = 0;
        while k < plan.need.len() {
            let data = match rd.next()? {
                Msg::Chunks(d) => d,
                m => return Err(ImageError::Protocol(format!("expected Chunks, got {:?}", m.kind()))),
            };
            let mut d = data;
            while !d.is_empty() {
                let Some(&idx) = plan.need.get(k) else {
                    return Err(ImageError::Protocol(format!(
                        "{} bytes of chunk data beyond the {} chunks asked for",
                        d.len(),
                        plan.need.len()
                    )));
                };
                let l = chunk_len(p.image_len, idx as u64);
                if d.len() < l {
                    return Err(ImageError::Protocol(format!(
                        "chunk {idx} ({l} bytes) cut at a frame end after {} bytes",
                        d.len()
                    )));
                }
                let (c, rest) = d.split_at(l);
                let h = &plan.manifest.chunks[idx as usize];
                if blake3::hash(c).as_bytes() != h {
                    return Err(ImageError::ChunkMismatch {
                        seq: p.seq,
                        index: idx as u64,
                        hash: hex(h),
                    });
                }
                pack.append(h, c)?;
                k += 1;
                d = rest;
            }
        }
        Some(pack)
    };
    plan.commit(pack)?;
    wire::encode_saved(&mut wr.out, p.seq, &p.image_hash);
    wr.send()?;
    wr.flush()
}

/// Ascending indices -> (first, count) runs.
fn to_runs(idx: &[u32]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &i in idx {
        match runs.last_mut() {
            Some((s, c)) if *s + *c == i => *c += 1,
            _ => runs.push((i, 1)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::to_runs;

    #[test]
    fn runs_from_indices() {
        assert_eq!(to_runs(&[]), vec![]);
        assert_eq!(to_runs(&[0, 1, 2, 5, 7, 8]), vec![(0, 3), (5, 1), (7, 2)]);
    }
}
