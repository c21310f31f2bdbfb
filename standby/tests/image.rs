//! Execution images end to end over loopback: client -> server -> store,
//! deltas, dedup, restore, corruption, restart, disconnects, prune, apps.

use standby::image::wire::{self, Base, Msg, Propose};
use standby::image::{
    chunk_hashes, parse_restart_tag, restart_tag, ImageClient, ImageError, ImageServer, ImageStore, CHUNK_SIZE,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn image(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
    /// Changes `k` distinct random pages; returns their indices.
    fn change_pages(&mut self, img: &mut [u8], k: usize) -> Vec<usize> {
        let pages = img.len().div_ceil(CHUNK_SIZE);
        let mut picked = std::collections::BTreeSet::new();
        while picked.len() < k {
            picked.insert((self.next() % pages as u64) as usize);
        }
        for &p in &picked {
            let end = ((p + 1) * CHUNK_SIZE).min(img.len());
            self.fill(&mut img[p * CHUNK_SIZE..end]);
        }
        picked.into_iter().collect()
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("baton-image-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn hash(b: &[u8]) -> [u8; 32] {
    *blake3::hash(b).as_bytes()
}

fn restored(store: &ImageStore, app: &str, seq: u64, img: &[u8]) -> Vec<u8> {
    let p = store.restore(app, seq, &hash(img)).unwrap();
    std::fs::read(p).unwrap()
}

use engine::testing::wait_until;
const WAIT: Duration = Duration::from_secs(20);

/// Exact client bytes of a delta of `k` chunks sent in one Chunks frame:
/// Propose frame (16 + 93), one Entries frame (16 + 4 + 36 k), one Chunks
/// frame (16 + 4096 k). k <= 256 keeps both in one frame.
fn delta_wire_bytes(k: u64) -> u64 {
    (16 + 93) + (16 + 4 + 36 * k) + if k > 0 { 16 + 4096 * k } else { 0 }
}

#[test]
fn first_sends_all_then_only_changed_pages_then_nothing() {
    let dir = tmp("delta");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let mut rng = Rng(1);
    let mut img = rng.image(256 * CHUNK_SIZE);
    let mut c = ImageClient::connect(srv.addr(), "db").unwrap();

    let r1 = c.transfer(1, &img).unwrap();
    assert_eq!(r1.base, None);
    assert_eq!(r1.chunks_total, 256);
    assert_eq!(r1.chunks_sent, 256);
    assert_eq!(r1.data_bytes_sent, img.len() as u64);
    assert_eq!(r1.hash, hash(&img));
    // Propose + 1 Entries frame of 256 entries + 1 Chunks frame (exactly 1 MiB).
    assert_eq!(r1.wire_bytes_sent, (16 + 93) + (16 + 4 + 36 * 256) + (16 + 256 * 4096));
    let v1 = img.clone();

    let changed = rng.change_pages(&mut img, 7);
    let r2 = c.transfer(2, &img).unwrap();
    assert_eq!(r2.base, Some(1));
    assert_eq!(r2.entries_sent, 7);
    assert_eq!(r2.chunks_sent, 7, "changed pages {changed:?}");
    assert_eq!(r2.data_bytes_sent, 7 * 4096);
    assert!(r2.wire_bytes_sent <= delta_wire_bytes(7), "{r2:?}");
    // Overhead over the changed bytes is under 1.5%.
    assert!(r2.wire_bytes_sent * 1000 < 7 * 4096 * 1015, "{r2:?}");

    let r3 = c.transfer(3, &img).unwrap();
    assert_eq!(r3.base, Some(2));
    assert_eq!(r3.chunks_sent, 0);
    assert_eq!(r3.entries_sent, 0);
    assert!(r3.wire_bytes_sent <= delta_wire_bytes(0), "{r3:?}");

    let store = srv.store();
    assert_eq!(store.list("db"), vec![(1, hash(&v1)), (2, hash(&img)), (3, hash(&img))]);
    assert_eq!(restored(&store, "db", 1, &v1), v1);
    assert_eq!(restored(&store, "db", 2, &img), img);
    assert_eq!(restored(&store, "db", 3, &img), img);
    assert_eq!(c.last_saved(), Some((3, hash(&img))));
    srv.stop();
}

#[test]
fn duplicate_chunks_are_sent_once() {
    let dir = tmp("dedup");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let mut c = ImageClient::connect(srv.addr(), "zero").unwrap();
    // 64 zero pages: one distinct chunk.
    let mut img = vec![0u8; 64 * CHUNK_SIZE];
    let r = c.transfer(1, &img).unwrap();
    assert_eq!((r.chunks_total, r.chunks_sent), (64, 1));
    // Page 5 gets new content, page 9 a copy of it: one chunk sent.
    img[5 * CHUNK_SIZE..6 * CHUNK_SIZE].fill(7);
    img.copy_within(5 * CHUNK_SIZE..6 * CHUNK_SIZE, 9 * CHUNK_SIZE);
    let r = c.transfer(2, &img).unwrap();
    assert_eq!((r.entries_sent, r.chunks_sent), (2, 1));
    // Page 9 back to zeroes: an entry, no data (the zero chunk is held).
    img[9 * CHUNK_SIZE..10 * CHUNK_SIZE].fill(0);
    let r = c.transfer(3, &img).unwrap();
    assert_eq!((r.entries_sent, r.chunks_sent), (1, 0));
    assert_eq!(restored(&srv.store(), "zero", 3, &img), img);
    assert_eq!(srv.store().stats("zero").chunks, 2);
    srv.stop();
}

#[test]
fn odd_lengths_growth_shrink_and_empty() {
    let dir = tmp("lengths");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let mut c = ImageClient::connect(srv.addr(), "odd").unwrap();
    let mut rng = Rng(2);
    let mut seq = 0;
    for len in [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 17, 10, 0, 9000] {
        seq += 1;
        let img = rng.image(len);
        let r = c.transfer(seq, &img).unwrap();
        assert_eq!(r.image_bytes, len as u64);
        assert_eq!(restored(&srv.store(), "odd", seq, &img), img, "len {len}");
    }
    // Growing keeps the unchanged prefix: only the new tail chunk and the
    // formerly short last chunk go.
    let mut img = rng.image(2 * 4096 + 100);
    seq += 1;
    c.transfer(seq, &img).unwrap();
    img.extend_from_slice(&[5u8; 4096]);
    seq += 1;
    let r = c.transfer(seq, &img).unwrap();
    assert_eq!(r.chunks_sent, 2);
    assert_eq!(restored(&srv.store(), "odd", seq, &img), img);
    // Shrinking to a whole number of kept chunks sends nothing.
    img.truncate(2 * 4096);
    seq += 1;
    let r = c.transfer(seq, &img).unwrap();
    assert_eq!((r.entries_sent, r.chunks_sent), (0, 0));
    assert_eq!(restored(&srv.store(), "odd", seq, &img), img);
    srv.stop();
}

#[test]
fn restore_tag_finds_the_image() {
    let dir = tmp("tag");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let mut c = ImageClient::connect(srv.addr(), "t").unwrap();
    let img = Rng(3).image(5 * 4096);
    let r = c.transfer(42, &img).unwrap();
    let tag = restart_tag(r.seq, &r.hash);
    assert_eq!(parse_restart_tag(&tag), Some((42, hash(&img))));
    let store = srv.store();
    assert_eq!(std::fs::read(store.restore_tag("t", &tag).unwrap()).unwrap(), img);
    assert!(matches!(
        store.restore_tag("t", &tag[..39]),
        Err(ImageError::BadTag { len: 39 })
    ));
    assert!(matches!(
        store.restore_tag("t", &restart_tag(43, &r.hash)),
        Err(ImageError::NotFound { seq: 43, .. })
    ));
    assert!(matches!(
        store.restore_tag("other", &tag),
        Err(ImageError::NotFound { .. })
    ));
    srv.stop();
}

#[test]
fn corrupt_stored_chunk_fails_restore_naming_it_and_is_resent() {
    let dir = tmp("corrupt");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let img = Rng(4).image(16 * 4096);
    let mut c = ImageClient::connect(srv.addr(), "c").unwrap();
    c.transfer(1, &img).unwrap();
    srv.stop();

    // One pack holding chunks 0..16 in order after its 8-byte magic.
    let packs: Vec<_> = std::fs::read_dir(dir.join("apps/c/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(packs.len(), 1);
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    bytes[8 + 3 * 4096 + 100] ^= 0x40;
    std::fs::write(&packs[0], &bytes).unwrap();

    let store = ImageStore::open(&dir).unwrap();
    let err = store.restore("c", 1, &hash(&img)).unwrap_err();
    match &err {
        ImageError::CorruptChunk {
            index, seq, hash: h, ..
        } => {
            assert_eq!((*index, *seq), (3, 1));
            assert_eq!(h, &standby::image::hex(&chunk_hashes(&img)[3]));
        }
        e => panic!("expected CorruptChunk, got {e}"),
    }
    assert!(err.to_string().contains("chunk 3"), "{err}");
    // No file was left where the restored image would be.
    assert_eq!(std::fs::read_dir(dir.join("apps/c/restore")).unwrap().count(), 0);
    drop(store);

    // The corrupt chunk was dropped: a new transfer (fresh client, full
    // manifest) resends exactly it, and the new image restores.
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let mut c = ImageClient::connect(srv.addr(), "c").unwrap();
    let r = c.transfer(2, &img).unwrap();
    assert_eq!((r.base, r.chunks_sent), (None, 1));
    assert_eq!(restored(&srv.store(), "c", 2, &img), img);
    srv.stop();
}

#[test]
fn corrupt_old_chunk_is_caught_when_saving_a_delta() {
    let dir = tmp("corrupt-save");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let addr = srv.addr();
    let mut img = Rng(5).image(8 * 4096);
    let mut c = ImageClient::connect(addr, "c").unwrap();
    c.transfer(1, &img).unwrap();
    srv.stop();
    let pack = std::fs::read_dir(dir.join("apps/c/packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[8 + 6 * 4096] ^= 1;
    std::fs::write(&pack, &bytes).unwrap();
    let srv = ImageServer::start(addr, &dir).unwrap();
    // Delta of page 0 reuses the corrupt stored page 6: the whole-image check fails.
    img[0] ^= 1;
    let err = c.transfer(2, &img).unwrap_err();
    assert!(
        matches!(&err, ImageError::Remote { message, .. } if message.contains("chunk 6")),
        "{err}"
    );
    assert_eq!(srv.store().list("c").len(), 1);
    // Retried, the dropped chunk is asked for again (page 0 was stored by
    // the failed attempt) and the image saves.
    let r = c.transfer(2, &img).unwrap();
    assert_eq!(r.chunks_sent, 1);
    assert_eq!(restored(&srv.store(), "c", 2, &img), img);
    srv.stop();
}

#[test]
fn restarted_server_keeps_images_and_client_reconnects_with_a_delta() {
    let dir = tmp("restart");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let addr = srv.addr();
    let mut rng = Rng(6);
    let mut img = rng.image(64 * 4096);
    let mut c = ImageClient::connect(addr, "r").unwrap();
    c.transfer(1, &img).unwrap();
    let v1 = img.clone();
    rng.change_pages(&mut img, 3);
    c.transfer(2, &img).unwrap();
    srv.stop();

    let srv = ImageServer::start(addr, &dir).unwrap();
    let store = srv.store();
    assert_eq!(store.list("r"), vec![(1, hash(&v1)), (2, hash(&img))]);
    assert_eq!(restored(&store, "r", 1, &v1), v1);
    assert_eq!(restored(&store, "r", 2, &img), img);
    // The client's connection died with the old server: it reconnects and
    // still sends only the changed pages against seq 2.
    rng.change_pages(&mut img, 4);
    let r = c.transfer(3, &img).unwrap();
    assert_eq!((r.base, r.chunks_sent), (Some(2), 4));
    assert_eq!(restored(&store, "r", 3, &img), img);
    srv.stop();
}

// ---- raw protocol helpers for misbehaving clients ----

struct Raw {
    s: TcpStream,
    body: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw { s, body: Vec::new() }
    }
    fn send(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let mut out = Vec::new();
        f(&mut out);
        self.s.write_all(&out).unwrap();
    }
    /// The next frame, or None if the server closed.
    fn recv(&mut self) -> Option<Msg<'_>> {
        let mut h = [0u8; wire::HEADER_BYTES];
        if self.s.read_exact(&mut h).is_err() {
            return None;
        }
        let hdr = wire::parse_header(&h).unwrap();
        self.body.resize(hdr.body_len, 0);
        self.s.read_exact(&mut self.body).unwrap();
        Some(wire::parse_body(&hdr, &self.body).unwrap())
    }
    fn hello(&mut self, app: &str) {
        self.send(|o| wire::encode_hello(o, app).unwrap());
        assert!(matches!(self.recv(), Some(Msg::HelloOk)));
    }
    fn propose_full(&mut self, seq: u64, img: &[u8], claimed_hash: [u8; 32]) {
        let hs = chunk_hashes(img);
        self.send(|o| {
            wire::encode_propose(
                o,
                &Propose {
                    seq,
                    image_len: img.len() as u64,
                    image_hash: claimed_hash,
                    base: None,
                    entry_count: hs.len() as u32,
                },
            );
            wire::encode_entries(o, hs.iter().enumerate().map(|(i, h)| (i as u32, *h))).unwrap();
        });
    }
    /// Reads Need + NeedRuns; returns the chunk indices asked for.
    fn need(&mut self) -> Vec<u32> {
        let Some(Msg::Need { runs, .. }) = self.recv() else {
            panic!("expected Need")
        };
        let mut v = Vec::new();
        let mut seen = 0;
        while seen < runs {
            let Some(Msg::NeedRuns(r)) = self.recv() else {
                panic!("expected NeedRuns")
            };
            seen += r.len() as u32;
            for (s, c) in r.iter() {
                v.extend(s..s + c);
            }
        }
        v
    }
}

#[test]
fn disconnect_mid_transfer_leaves_no_visible_image_and_server_keeps_serving() {
    let dir = tmp("disconnect");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let store = srv.store();
    let img = Rng(7).image(32 * 4096);
    let mut raw = Raw::connect(srv.addr());
    raw.hello("d");
    raw.propose_full(1, &img, hash(&img));
    let need = raw.need();
    assert_eq!(need.len(), 32);
    // Half the chunks, then the client vanishes.
    raw.send(|o| {
        let parts: Vec<&[u8]> = img[..16 * 4096].chunks(4096).collect();
        wire::encode_chunks(o, &parts).unwrap();
    });
    wait_until(WAIT, "chunks of the half transfer reach the server", || {
        store.stats("d").in_flight == 1
    });
    drop(raw);
    wait_until(WAIT, "server drops the abandoned transfer", || {
        store.stats("d").in_flight == 0 && srv.connections() == 0
    });
    assert!(store.list("d").is_empty());
    assert_eq!(store.stats("d").chunks, 0);
    assert_eq!(std::fs::read_dir(dir.join("apps/d/tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.join("apps/d/images")).unwrap().count(), 0);

    // Garbage on another connection: an Error frame or a close, nothing else.
    let mut g = TcpStream::connect(srv.addr()).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut junk = vec![0u8; 4096];
    Rng(8).fill(&mut junk);
    junk[0] = wire::WIRE_VERSION;
    let _ = g.write_all(&junk);
    let mut got = Vec::new();
    let _ = g.read_to_end(&mut got);
    if !got.is_empty() {
        let (m, _) = wire::parse_frame(&got).unwrap();
        assert!(
            matches!(
                m,
                Msg::Error {
                    code: wire::code::PROTOCOL,
                    ..
                }
            ),
            "{m:?}"
        );
    }

    // The server still serves: a real transfer of the same image works.
    let mut c = ImageClient::connect(srv.addr(), "d").unwrap();
    let r = c.transfer(1, &img).unwrap();
    assert_eq!(r.chunks_sent, 32);
    assert_eq!(restored(&store, "d", 1, &img), img);
    srv.stop();
    let reopened = ImageStore::open(&dir).unwrap();
    assert_eq!(reopened.list("d"), vec![(1, hash(&img))]);
}

#[test]
fn stop_during_a_transfer_leaves_no_visible_image() {
    let dir = tmp("stop-mid");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let img = Rng(9).image(8 * 4096);
    let mut raw = Raw::connect(srv.addr());
    raw.hello("s");
    raw.propose_full(1, &img, hash(&img));
    assert_eq!(raw.need().len(), 8);
    raw.send(|o| wire::encode_chunks(o, &[&img[..4096]]).unwrap());
    let store = srv.store();
    wait_until(WAIT, "transfer in flight", || store.stats("s").in_flight == 1);
    srv.stop();
    assert!(raw.recv().is_none(), "server closed the connection");
    let reopened = ImageStore::open(&dir).unwrap();
    assert!(reopened.list("s").is_empty());
    assert_eq!(std::fs::read_dir(dir.join("apps/s/tmp")).unwrap().count(), 0);
}

#[test]
fn lying_client_is_refused() {
    let dir = tmp("lying");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let img = Rng(10).image(4 * 4096);
    // Whole-image hash that does not match the chunks.
    let mut raw = Raw::connect(srv.addr());
    raw.hello("l");
    raw.propose_full(1, &img, [0xAB; 32]);
    raw.need();
    raw.send(|o| {
        let parts: Vec<&[u8]> = img.chunks(4096).collect();
        wire::encode_chunks(o, &parts).unwrap();
    });
    match raw.recv() {
        Some(Msg::Error { code, message }) => {
            assert_eq!(code, wire::code::BAD_IMAGE);
            assert!(message.contains("whole-image BLAKE3"), "{message}");
        }
        m => panic!("expected Error, got {m:?}"),
    }
    // A chunk whose bytes do not match its manifest hash (new content: the
    // chunks of the refused image above were stored, verified one by one).
    let img = Rng(15).image(4 * 4096);
    let mut raw = Raw::connect(srv.addr());
    raw.hello("l");
    raw.propose_full(2, &img, hash(&img));
    assert_eq!(raw.need().len(), 4);
    let mut bad = img.clone();
    bad[2 * 4096] ^= 1;
    raw.send(|o| {
        let parts: Vec<&[u8]> = bad.chunks(4096).collect();
        wire::encode_chunks(o, &parts).unwrap();
    });
    match raw.recv() {
        Some(Msg::Error { message, .. }) => assert!(message.contains("chunk 2"), "{message}"),
        m => panic!("expected Error, got {m:?}"),
    }
    // A delta whose new chunks have no entries.
    let mut raw = Raw::connect(srv.addr());
    raw.hello("l");
    raw.propose_full(3, &img, hash(&img));
    let need = raw.need();
    raw.send(|o| {
        let parts: Vec<&[u8]> = need
            .iter()
            .map(|&i| &img[i as usize * 4096..(i as usize + 1) * 4096])
            .collect();
        wire::encode_chunks(o, &parts).unwrap();
    });
    assert!(matches!(raw.recv(), Some(Msg::Saved { seq: 3, .. })));
    raw.send(|o| {
        wire::encode_propose(
            o,
            &Propose {
                seq: 4,
                image_len: 8 * 4096,
                image_hash: [1; 32],
                base: Some(Base {
                    seq: 3,
                    hash: hash(&img),
                }),
                entry_count: 0,
            },
        )
    });
    match raw.recv() {
        Some(Msg::Error { code, message }) => {
            assert_eq!(code, wire::code::PROTOCOL);
            assert!(message.contains("no entry"), "{message}");
        }
        m => panic!("expected Error, got {m:?}"),
    }
    assert_eq!(srv.store().list("l"), vec![(3, hash(&img))]);
    srv.stop();
}

#[test]
fn prune_removes_old_images_and_unreferenced_chunks() {
    let dir = tmp("prune");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let store = srv.store();
    let mut rng = Rng(11);
    let mut img = rng.image(64 * 4096);
    let v1 = img.clone();
    let mut c = ImageClient::connect(srv.addr(), "p").unwrap();
    c.transfer(1, &img).unwrap();
    let a = rng.change_pages(&mut img, 8);
    c.transfer(2, &img).unwrap();
    let v2 = img.clone();
    // 8 pages not among the first 8.
    let pages: Vec<usize> = (0..64).filter(|p| !a.contains(p)).take(8).collect();
    for &p in &pages {
        rng.fill(&mut img[p * 4096..(p + 1) * 4096]);
    }
    c.transfer(3, &img).unwrap();
    let s = store.stats("p");
    assert_eq!((s.images, s.chunks, s.packs), (3, 80, 3));
    store.restore("p", 1, &hash(&v1)).unwrap();

    let rep = store.prune("p", 3).unwrap();
    assert_eq!(rep.images_removed, 2);
    assert_eq!(rep.chunks_removed, 16);
    // The first pack lost 16 of its 64 chunks: rewritten; the others are live.
    assert_eq!((rep.packs_deleted, rep.packs_compacted), (0, 1));
    assert!(rep.bytes_freed >= 16 * 4096, "{rep:?}");
    let s = store.stats("p");
    assert_eq!((s.images, s.chunks), (1, 64));
    assert_eq!(store.list("p"), vec![(3, hash(&img))]);
    assert!(matches!(
        store.restore("p", 1, &hash(&v1)),
        Err(ImageError::NotFound { .. })
    ));
    assert!(matches!(
        store.restore("p", 2, &hash(&v2)),
        Err(ImageError::NotFound { .. })
    ));
    assert_eq!(restored(&store, "p", 3, &img), img);
    // Restored files of pruned images are gone too.
    assert_eq!(std::fs::read_dir(dir.join("apps/p/restore")).unwrap().count(), 1);
    // Deltas still work against the kept image.
    rng.change_pages(&mut img, 2);
    let r = c.transfer(4, &img).unwrap();
    assert_eq!((r.base, r.chunks_sent), (Some(3), 2));
    // Prune of everything below 4 leaves image 4 and exactly its chunks.
    let rep = store.prune("p", 4).unwrap();
    assert_eq!(rep.images_removed, 1);
    assert_eq!(store.stats("p").chunks, 64);
    srv.stop();
    let reopened = ImageStore::open(&dir).unwrap();
    assert_eq!(reopened.list("p"), vec![(4, hash(&img))]);
    assert_eq!(reopened.stats("p").chunks, 64);
    assert_eq!(restored(&reopened, "p", 4, &img), img);
}

#[test]
fn pruning_everything_deletes_every_pack() {
    let dir = tmp("prune-all");
    let store = std::sync::Arc::new(ImageStore::open(&dir).unwrap());
    let srv = ImageServer::with_store(any_port(), store.clone()).unwrap();
    let mut c = ImageClient::connect(srv.addr(), "q").unwrap();
    c.transfer(1, &Rng(12).image(10 * 4096)).unwrap();
    let rep = store.prune("q", u64::MAX).unwrap();
    assert_eq!((rep.images_removed, rep.chunks_removed, rep.packs_deleted), (1, 10, 1));
    assert_eq!(std::fs::read_dir(dir.join("apps/q/packs")).unwrap().count(), 0);
    srv.stop();
}

#[test]
fn missing_base_makes_the_server_ask_for_the_full_manifest() {
    let dir = tmp("nobase");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let mut rng = Rng(13);
    let mut img = rng.image(20 * 4096);
    let mut c = ImageClient::connect(srv.addr(), "n").unwrap();
    c.transfer(1, &img).unwrap();
    // The standby drops image 1 (and its chunks): the client's base is gone.
    srv.store().prune("n", 2).unwrap();
    assert_eq!(srv.store().stats("n").chunks, 0);
    rng.change_pages(&mut img, 1);
    let r = c.transfer(2, &img).unwrap();
    assert_eq!(r.base, None);
    assert_eq!(r.entries_sent, 1 + 20, "the delta, then the full manifest");
    assert_eq!(r.chunks_sent, 20);
    assert_eq!(restored(&srv.store(), "n", 2, &img), img);
    // And the next one is a delta again.
    rng.change_pages(&mut img, 1);
    let r = c.transfer(3, &img).unwrap();
    assert_eq!((r.base, r.chunks_sent), (Some(2), 1));
    srv.stop();
}

#[test]
fn apps_are_isolated_and_served_concurrently() {
    let dir = tmp("apps");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    let addr = srv.addr();
    let img = Rng(14).image(40 * 4096);
    let threads: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|app| {
            let img = img.clone();
            std::thread::spawn(move || {
                let mut c = ImageClient::connect(addr, app).unwrap();
                let mut v = img;
                let mut reps = Vec::new();
                for seq in 1..=5u64 {
                    v[(seq as usize) * 4096] ^= app.as_bytes()[0];
                    reps.push((c.transfer(seq * 10 + (app == "b") as u64, &v).unwrap(), v.clone()));
                }
                reps
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let store = srv.store();
    for (reps, app) in results.iter().zip(["a", "b"]) {
        // Identical content in the other app does not save a chunk here.
        assert_eq!(reps[0].0.chunks_sent, 40, "{app}");
        let listed: Vec<u64> = store.list(app).into_iter().map(|(s, _)| s).collect();
        let sent: Vec<u64> = reps.iter().map(|(r, _)| r.seq).collect();
        assert_eq!(listed, sent, "{app}");
        for (r, v) in reps {
            assert_eq!(restored(&store, app, r.seq, v), *v);
        }
    }
    // a's image is not b's.
    let (ra, _) = &results[0][0];
    assert!(matches!(
        store.restore("b", ra.seq, &ra.hash),
        Err(ImageError::NotFound { .. })
    ));
    srv.stop();
}

#[test]
fn client_checks_its_arguments() {
    let dir = tmp("args");
    let srv = ImageServer::start(any_port(), &dir).unwrap();
    assert!(matches!(
        ImageClient::connect(srv.addr(), "../etc"),
        Err(ImageError::BadAppName(_))
    ));
    let mut c = ImageClient::connect(srv.addr(), "x").unwrap();
    c.transfer(5, b"hello").unwrap();
    assert!(matches!(
        c.transfer(5, b"again"),
        Err(ImageError::SeqNotIncreasing { seq: 5, last: 5 })
    ));
    // The connection survives a refused call.
    c.transfer(6, b"again").unwrap();
    assert_eq!(srv.store().list("x").len(), 2);
    srv.stop();
}
