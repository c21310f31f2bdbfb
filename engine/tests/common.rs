//! Helpers shared by the engine's integration tests: drive a channel
//! synchronously from the test thread (a channel may be used on any one
//! thread; reactors are just the usual one).
#![allow(dead_code)]

use engine::bdev::{Bdev, BdevChannel, BdevError, IoCompletion, IoOp, IoRequest};
use engine::buf::DmaBuf;
use std::path::PathBuf;
use std::sync::Arc;

/// Submits one request and polls until it completes.
pub fn io_sync(
    ch: &mut BdevChannel,
    op: IoOp,
    offset_blocks: u64,
    num_blocks: u32,
    buf: Option<DmaBuf>,
) -> (Result<(), BdevError>, Option<DmaBuf>) {
    let mut req = IoRequest {
        op,
        offset_blocks,
        num_blocks,
        buf,
        user_data: 77,
    };
    loop {
        match ch.submit(req) {
            Ok(()) => break,
            Err(back) => {
                req = back;
                ch.poll(&mut |_| {});
            }
        }
    }
    let mut out: Option<IoCompletion> = None;
    while out.is_none() {
        ch.poll(&mut |c| out = Some(c));
    }
    let c = out.unwrap();
    assert_eq!(c.user_data, 77);
    (c.result, c.buf)
}

/// Fills a buffer with a pattern unique to (block, generation).
pub fn pattern(buf: &mut [u8], block_size: usize, first_block: u64, gen: u64) {
    for (i, blk) in buf.chunks_mut(block_size).enumerate() {
        let b = first_block + i as u64;
        for (j, word) in blk.chunks_mut(8).enumerate() {
            let v = (b.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen.rotate_left(17)).wrapping_add(j as u64);
            word.copy_from_slice(&v.to_le_bytes()[..word.len()]);
        }
    }
}

/// A scratch file of `bytes` in `dir`, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(dir: &str, tag: &str, bytes: u64) -> TempFile {
        let p = PathBuf::from(dir).join(format!(
            "baton-test-{}-{}-{}",
            tag,
            std::process::id(),
            engine::clock::now_ns()
        ));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(bytes).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Back ends to run data tests against: (label, bdev, keepalive file).
pub fn data_bdevs(tag: &str, num_blocks: u64, block_size: u32) -> Vec<(String, Arc<dyn Bdev>, Option<TempFile>)> {
    let mut v: Vec<(String, Arc<dyn Bdev>, Option<TempFile>)> = vec![(
        "malloc".into(),
        engine::bdev::malloc::create(&format!("{tag}-malloc"), num_blocks, block_size, None).unwrap(),
        None,
    )];
    for dir in ["/dev/shm", "/var/tmp"] {
        if std::path::Path::new(dir).is_dir() {
            let f = TempFile::new(dir, tag, num_blocks * block_size as u64);
            let b = engine::bdev::uring::create(&format!("{tag}-uring-{dir}"), &f.0, Some(block_size), None).unwrap();
            v.push((format!("uring:{dir}"), b, Some(f)));
        }
    }
    v
}
