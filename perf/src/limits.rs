//! The machine's own limits, measured in the same run as baton so figures
//! can be reported as ratios (BENCHMARKS.md: VMs of one kind differ by up
//! to 3x, so an absolute number says little).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// 4 KiB copies per second on the calling thread, from random offsets of a
/// 1 GiB source (so the copy reads memory, not cache), for `time`.
pub fn memcpy_4k_per_s(time: Duration) -> f64 {
    let src = vec![1u8; 1 << 30];
    let mut dst = vec![0u8; 4096];
    let mut off = 0usize;
    let mut n = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < time {
        for _ in 0..1024 {
            dst.copy_from_slice(&src[off..off + 4096]);
            off = (off + 1_048_576 + 4096 * 7) % ((1 << 30) - 4096);
        }
        n += 1024;
        std::hint::black_box(&dst);
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// Median busy-polled loopback TCP round trip of a `size`-byte message
/// echoed back, in µs, over `iters` round trips (non-blocking sockets
/// spinning on both sides, as BENCHMARKS.md measured).
pub fn tcp_rtt_us(size: usize, iters: usize) -> std::io::Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let mut buf = vec![0u8; size];
        for _ in 0..iters {
            spin_read(&mut s, &mut buf)?;
            spin_write(&mut s, &buf)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_nonblocking(true)?;
    let mut buf = vec![7u8; size];
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        spin_write(&mut c, &buf)?;
        spin_read(&mut c, &mut buf)?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    echo.join()
        .map_err(|_| std::io::Error::other("echo thread panicked"))??;
    samples.sort_unstable();
    Ok(samples[samples.len() / 2] as f64 / 1000.0)
}

fn spin_read(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn spin_write(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    let mut put = 0;
    while put < buf.len() {
        match s.write(&buf[put..]) {
            Ok(n) => put += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_measure_something() {
        assert!(memcpy_4k_per_s(Duration::from_millis(50)) > 0.0);
        assert!(tcp_rtt_us(4096, 200).unwrap() > 0.0);
    }
}
