use super::*;
use std::sync::atomic::AtomicUsize;

fn opts(cores: Vec<u32>) -> ReactorOpts {
    ReactorOpts {
        cores,
        pin: false,
        idle: IdleMode::Poll,
    }
}

#[test]
fn messages_run_on_target_core() {
    let r = Reactors::start(opts(vec![0, 1])).unwrap();
    for core in [0, 1] {
        assert_eq!(r.run_on(core, current_core).unwrap(), Some(core));
    }
    assert!(matches!(
        r.run_on(7, || ()),
        Err(ReactorError::NoSuchCore { core: 7, .. })
    ));
    r.shutdown();
    r.wait();
}

#[test]
fn pollers_run_and_unregister() {
    let r = Reactors::start(opts(vec![0])).unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    let id = r
        .run_on(0, move || {
            register_poller("count", None, move || {
                c2.fetch_add(1, Ordering::Relaxed);
                PollStatus::Busy
            })
        })
        .unwrap();
    while count.load(Ordering::Relaxed) < 1000 {
        std::thread::yield_now();
    }
    r.run_on(0, move || unregister_poller(id)).unwrap();
    // Removal takes effect at the end of the loop iteration; messages
    // sent meanwhile may run in the same iteration, so wait for it.
    while !r.stats()[0].pollers.is_empty() {
        std::thread::yield_now();
    }
    let a = count.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    r.run_on(0, || ()).unwrap();
    assert_eq!(count.load(Ordering::Relaxed), a, "unregistered poller still runs");
    let s = &r.stats()[0];
    assert!(s.busy_ns > 0 && s.loops > 0);
}

#[test]
fn timed_poller_respects_period() {
    let r = Reactors::start(opts(vec![0])).unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    r.run_on(0, move || {
        register_poller("tick", Some(Duration::from_millis(50)), move || {
            c2.fetch_add(1, Ordering::Relaxed);
            PollStatus::Busy
        })
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(120));
    // Lower bound only: a slow machine may run it fewer times, never more
    // than elapsed/period + 1.
    let n = count.load(Ordering::Relaxed);
    assert!(n <= 3, "timed poller ran {n} times in 120 ms with a 50 ms period");
}

/// Several producer threads each send numbered messages to one reactor;
/// the reactor must run every message exactly once and, per producer, in
/// the order sent, with back-pressure handled by retrying.
#[test]
fn per_producer_ordering_under_backpressure() {
    const PRODUCERS: usize = 3;
    const PER: usize = 100_000;
    let r = Arc::new(Reactors::start(opts(vec![0])).unwrap());
    static NEXT: [AtomicUsize; PRODUCERS] = [const { AtomicUsize::new(0) }; PRODUCERS];
    static BAD: AtomicUsize = AtomicUsize::new(0);
    fn on_msg(arg: usize) {
        let p = arg >> 32;
        let seq = arg & 0xffff_ffff;
        if NEXT[p].load(Ordering::Relaxed) != seq {
            BAD.fetch_add(1, Ordering::Relaxed);
        }
        NEXT[p].store(seq + 1, Ordering::Relaxed);
    }
    let hs: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let r = r.clone();
            std::thread::spawn(move || {
                for seq in 0..PER {
                    while r.call(0, on_msg, (p << 32) | seq) == Err(SendError::Full { core: 0 }) {
                        std::hint::spin_loop();
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    r.run_on(0, || ()).unwrap();
    assert_eq!(BAD.load(Ordering::Relaxed), 0);
    for n in &NEXT {
        assert_eq!(n.load(Ordering::Relaxed), PER);
    }
}

#[test]
fn adaptive_idle_sleeps_and_wakes_on_message() {
    let r = Reactors::start(ReactorOpts {
        cores: vec![0],
        pin: false,
        idle: IdleMode::Adaptive {
            idle_before_sleep_us: 1_000,
            sleep_us_max: 1_000_000,
        },
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(r.stats()[0].sleeps > 0, "idle reactor never slept");
    // A message must wake it well before the 1 s nap ends; the test only
    // checks that it runs at all (no timed assertion).
    assert_eq!(r.run_on(0, || 42).unwrap(), 42);
}

#[test]
fn shutdown_is_clean_and_current_set_is_cleared() {
    let r = Reactors::start(opts(vec![0, 1])).unwrap();
    let stop = r.stop_flag();
    stop.stop();
    r.wait();
}

#[test]
fn empty_core_list_is_an_error() {
    assert!(matches!(Reactors::start(opts(vec![])), Err(ReactorError::NoCores)));
}

fn sleepy(sleep_us_max: u64) -> Reactors {
    Reactors::start(ReactorOpts {
        cores: vec![0],
        pin: false,
        idle: IdleMode::Adaptive {
            idle_before_sleep_us: 1_000,
            sleep_us_max,
        },
    })
    .unwrap()
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    crate::testing::wait_until(crate::testing::WAIT, what, f)
}

/// Whether reactor 0 comes to rest: a stretch in which it runs no loop at all. A reactor
/// that naps (1 ms at a time) or keeps being woken never does.
fn comes_to_rest(r: &Reactors) -> bool {
    (0..100).any(|_| {
        let before = r.stats()[0].loops;
        std::thread::sleep(Duration::from_millis(30));
        r.stats()[0].loops == before
    })
}

#[test]
fn an_fd_driven_reactor_sleeps_until_its_socket_is_readable() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let r = sleepy(1_000);
    let (mut tx, rx) = UnixStream::pair().unwrap();
    rx.set_nonblocking(true).unwrap();
    r.run_on(0, move || {
        let w = watch_fd(rx.as_raw_fd(), Interest::READABLE).unwrap();
        let mut rx = rx;
        register_fd_poller("reader", None, move || {
            let _keep = &w;
            let mut b = [0u8; 16];
            match rx.read(&mut b) {
                Ok(n) if n > 0 => {
                    SEEN.fetch_add(n, Ordering::Relaxed);
                    PollStatus::Busy
                }
                _ => PollStatus::Idle,
            }
        });
    })
    .unwrap();
    // Asleep with nothing to wake it: no nap ends, so no loop runs.
    assert!(comes_to_rest(&r), "the reactor kept waking with nothing to do");
    tx.write_all(b"hello").unwrap();
    wait_for("the poller to read", || SEEN.load(Ordering::Relaxed) == 5);
}

#[test]
fn a_poller_that_watches_nothing_bounds_the_sleep() {
    let r = sleepy(1_000);
    r.run_on(0, || {
        register_poller("blind", None, || PollStatus::Idle);
    })
    .unwrap();
    wait_for("a sleep", || r.stats()[0].sleeps > 0);
    let s0 = r.stats()[0].sleeps;
    wait_for("naps to end on their own", || r.stats()[0].sleeps > s0 + 3);
}

#[test]
fn wake_by_brings_a_sleeping_reactor_back_for_an_fd_pollers_timer() {
    static RUNS_AFTER_DEADLINE: AtomicUsize = AtomicUsize::new(0);
    let r = sleepy(1_000_000_000);
    r.run_on(0, || {
        let deadline = now_ns() + 20_000_000;
        register_fd_poller("timer", None, move || {
            if now_ns() >= deadline {
                RUNS_AFTER_DEADLINE.fetch_add(1, Ordering::Relaxed);
                return PollStatus::Idle;
            }
            wake_by(deadline);
            PollStatus::Idle
        });
    })
    .unwrap();
    // Nothing but the deadline can wake it (no message is sent until it has run).
    wait_for("the poller to run at its deadline", || {
        RUNS_AFTER_DEADLINE.load(Ordering::Relaxed) > 0
    });
    assert!(comes_to_rest(&r), "no deadline left, yet the reactor kept waking");
}

#[test]
fn watch_fd_off_a_reactor_is_an_error() {
    assert!(matches!(watch_fd(0, Interest::READABLE), Err(WatchError::NotOnReactor)));
}
