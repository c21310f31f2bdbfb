//! Proves the data path allocates nothing: after warm-up, submitting and
//! reaping I/O on malloc, null and uring channels with pool buffers makes no
//! heap allocation on the submitting thread.

mod common;

use engine::alloc_count::{thread_allocations, CountingAllocator};
use engine::bdev::{IoOp, IoRequest};
use engine::buf::BufPool;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn run(ch: &mut engine::bdev::BdevChannel, pool: &'static BufPool, ios: u64, num_blocks: u64) -> u64 {
    let mut done = 0u64;
    let mut issued = 0u64;
    let mut lcg = 1u64;
    while done < ios {
        while issued < ios && ch.outstanding() < 32 {
            let Some(mut buf) = pool.get() else { break };
            buf.set_len(4096);
            lcg = lcg.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let op = if lcg >> 63 == 0 { IoOp::Read } else { IoOp::Write };
            let req = IoRequest {
                op,
                offset_blocks: (lcg >> 20) % (num_blocks / 8) * 8,
                num_blocks: 8,
                buf: Some(buf),
                user_data: issued,
            };
            if ch.submit(req).is_err() {
                break;
            }
            issued += 1;
        }
        ch.poll(&mut |c| {
            assert!(c.result.is_ok());
            done += 1;
        });
    }
    done
}

#[test]
fn data_path_makes_no_allocation() {
    let pool = BufPool::new("no-alloc", 64, 4096).unwrap();
    // tmpfs: the uring bdev's inline copy path; /var/tmp: its io_uring path.
    let shm = common::TempFile::new("/dev/shm", "noalloc", 16 << 20);
    let disk = common::TempFile::new("/var/tmp", "noalloc", 16 << 20);
    let bdevs = vec![
        engine::bdev::null::create("na-null", 32768, 512, None).unwrap(),
        engine::bdev::malloc::create("na-malloc", 32768, 512, None).unwrap(),
        engine::bdev::uring::create("na-uring-shm", &shm.0, Some(512), None).unwrap(),
        engine::bdev::uring::create("na-uring-disk", &disk.0, Some(512), None).unwrap(),
    ];
    for b in bdevs {
        let mut ch = b.open_channel().unwrap();
        run(&mut ch, pool, 1000, b.num_blocks()); // warm-up: lazily sized state settles
        let before = thread_allocations();
        let done = run(&mut ch, pool, 20_000, b.num_blocks());
        let allocs = thread_allocations() - before;
        assert_eq!(done, 20_000);
        assert_eq!(allocs, 0, "{}: {allocs} allocations in 20000 I/O", b.name());
    }
}
