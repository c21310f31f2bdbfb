//! The demo application: a bank ledger on a volume reached over NVMe/TCP (R15-R19).
//!
//! State (in memory, and that state is the application's execution image):
//! - `accounts` balances (u64 each; money only moves, the sum never changes);
//! - per account a count of transfers and a history ring of fixed-size records, which
//!   makes the image large (e.g. 64 MiB) while each group of transfers changes only the
//!   history pages of the accounts it touches: what the incremental image transfer is for.
//!
//! On the volume (block size `bs` from Identify Namespace):
//! - block 0: header (magic, accounts, group sequence, total, CRC32C);
//! - blocks 1..: the balances, 8 bytes each, little-endian.
//!
//! Each group of transfers: apply in memory, write the touched balance blocks and then the
//! header (all writes complete), send the execution image to the standby host (it is saved
//! there, keyed by the group sequence, before anything else happens), then declare a
//! restart point in band on the same NVMe/TCP queue (vendor command 0x81) with the tag
//! `seq || blake3(image)`. After a failover the standby's volume is at some restart point
//! `k` and the image handed to the restarted ledger is image `k`: `verify` checks that the
//! two agree block for block and that the money adds up (no half-applied group).

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nvme::host::{cmd, Controller, Data, HostOpts, Qpair};

/// Magic of the volume header block.
const VOL_MAGIC: &[u8; 8] = b"BATONLGV";
/// Magic of the execution image.
const IMG_MAGIC: &[u8; 8] = b"BATONLGI";
/// Bytes of one history record.
pub const HIST_RECORD_BYTES: usize = 32;
/// Bytes of the image header.
const IMG_HEADER_BYTES: usize = 64;
/// Bytes of the volume header (the rest of block 0 is zero).
const VOL_HEADER_BYTES: usize = 40;

/// Errors of the ledger, each naming what disagreed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("NVMe/TCP: {0}")]
    Host(#[from] nvme::host::HostError),
    #[error("execution image: {0}")]
    Image(String),
    #[error("volume: {0}")]
    Volume(String),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("{0}")]
    Config(String),
}

/// The application's processing state; its encoding is the execution image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    /// Groups of transfers completed (the image sequence number).
    pub group_seq: u64,
    /// Transfers completed.
    pub tx_count: u64,
    /// PRNG state (so a restarted ledger continues with fresh transfers).
    pub rng: u64,
    pub balances: Vec<u64>,
    pub counts: Vec<u32>,
    /// `accounts * hist_bytes` bytes of history rings.
    pub history: Vec<u8>,
    pub hist_bytes: usize,
}

impl Ledger {
    /// A new ledger of `accounts` accounts with `initial` each and an image of about
    /// `image_bytes` (history rings fill what the balances leave).
    pub fn new(accounts: usize, initial: u64, image_bytes: usize, seed: u64) -> Ledger {
        let fixed = IMG_HEADER_BYTES + accounts * 12;
        let per = (image_bytes.saturating_sub(fixed) / accounts.max(1)) / HIST_RECORD_BYTES * HIST_RECORD_BYTES;
        let hist_bytes = per.max(HIST_RECORD_BYTES);
        Ledger {
            group_seq: 0,
            tx_count: 0,
            rng: seed | 1,
            balances: vec![initial; accounts],
            counts: vec![0; accounts],
            history: vec![0; accounts * hist_bytes],
            hist_bytes,
        }
    }

    pub fn total(&self) -> u64 {
        self.balances.iter().sum()
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Applies one group of `n` random transfers; returns the accounts touched (sorted).
    pub fn run_group(&mut self, n: usize) -> Vec<usize> {
        let accounts = self.balances.len();
        let mut touched = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let from = (self.next_rand() % accounts as u64) as usize;
            let mut to = (self.next_rand() % accounts as u64) as usize;
            if to == from {
                to = (to + 1) % accounts;
            }
            let amount = if self.balances[from] == 0 {
                0
            } else {
                1 + self.next_rand() % self.balances[from].min(100)
            };
            self.balances[from] -= amount;
            self.balances[to] += amount;
            self.tx_count += 1;
            for (acct, other) in [(from, to), (to, from)] {
                let slots = self.hist_bytes / HIST_RECORD_BYTES;
                let slot = self.counts[acct] as usize % slots;
                let off = acct * self.hist_bytes + slot * HIST_RECORD_BYTES;
                let rec = &mut self.history[off..off + HIST_RECORD_BYTES];
                rec[0..8].copy_from_slice(&self.tx_count.to_le_bytes());
                rec[8..16].copy_from_slice(&(other as u64).to_le_bytes());
                rec[16..24].copy_from_slice(&amount.to_le_bytes());
                rec[24..32].copy_from_slice(&self.balances[acct].to_le_bytes());
                self.counts[acct] = self.counts[acct].wrapping_add(1);
            }
            touched.push(from);
            touched.push(to);
        }
        self.group_seq += 1;
        touched.sort_unstable();
        touched.dedup();
        touched
    }

    /// The execution image.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.balances.len();
        let mut v = Vec::with_capacity(IMG_HEADER_BYTES + n * 12 + self.history.len());
        v.extend_from_slice(IMG_MAGIC);
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&(n as u32).to_le_bytes());
        v.extend_from_slice(&self.group_seq.to_le_bytes());
        v.extend_from_slice(&self.tx_count.to_le_bytes());
        v.extend_from_slice(&self.rng.to_le_bytes());
        v.extend_from_slice(&(self.hist_bytes as u64).to_le_bytes());
        v.extend_from_slice(&self.total().to_le_bytes());
        v.resize(IMG_HEADER_BYTES, 0);
        for b in &self.balances {
            v.extend_from_slice(&b.to_le_bytes());
        }
        for c in &self.counts {
            v.extend_from_slice(&c.to_le_bytes());
        }
        v.extend_from_slice(&self.history);
        v
    }

    /// Decodes an execution image, checking its structure and that its money adds up.
    pub fn decode(b: &[u8]) -> Result<Ledger, LedgerError> {
        let bad = |why: String| LedgerError::Image(why);
        if b.len() < IMG_HEADER_BYTES || &b[0..8] != IMG_MAGIC {
            return Err(bad(format!("not a ledger image ({} bytes, wrong magic)", b.len())));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        if u32_at(8) != 1 {
            return Err(bad(format!("image version {} (this ledger reads 1)", u32_at(8))));
        }
        let n = u32_at(12) as usize;
        let hist_bytes = u64_at(40) as usize;
        if n == 0 || hist_bytes == 0 || !hist_bytes.is_multiple_of(HIST_RECORD_BYTES) {
            return Err(bad(format!("accounts {n}, history bytes {hist_bytes}")));
        }
        let want = n
            .checked_mul(12 + hist_bytes)
            .and_then(|x| x.checked_add(IMG_HEADER_BYTES))
            .ok_or_else(|| bad("sizes overflow".into()))?;
        if b.len() != want {
            return Err(bad(format!("{} bytes, header says {want}", b.len())));
        }
        let mut l = Ledger {
            group_seq: u64_at(16),
            tx_count: u64_at(24),
            rng: u64_at(32),
            balances: Vec::with_capacity(n),
            counts: Vec::with_capacity(n),
            history: b[IMG_HEADER_BYTES + n * 12..].to_vec(),
            hist_bytes,
        };
        for i in 0..n {
            l.balances.push(u64_at(IMG_HEADER_BYTES + i * 8));
            l.counts.push(u32_at(IMG_HEADER_BYTES + n * 8 + i * 4));
        }
        if l.total() != u64_at(48) {
            return Err(bad(format!(
                "balances sum to {}, header says {}",
                l.total(),
                u64_at(48)
            )));
        }
        Ok(l)
    }

    /// Blocks of balances on a volume of block size `bs`.
    pub fn balance_blocks(&self, bs: usize) -> usize {
        (self.balances.len() * 8).div_ceil(bs)
    }

    /// Volume block `1 + i` as it must be on the volume.
    pub fn balance_block(&self, i: usize, bs: usize) -> Vec<u8> {
        let mut v = vec![0u8; bs];
        let per = bs / 8;
        for (j, b) in self.balances.iter().skip(i * per).take(per).enumerate() {
            v[j * 8..j * 8 + 8].copy_from_slice(&b.to_le_bytes());
        }
        v
    }

    /// Volume block 0.
    pub fn header_block(&self, bs: usize) -> Vec<u8> {
        let mut v = vec![0u8; bs];
        v[0..8].copy_from_slice(VOL_MAGIC);
        v[8..12].copy_from_slice(&(self.balances.len() as u32).to_le_bytes());
        v[16..24].copy_from_slice(&self.group_seq.to_le_bytes());
        v[24..32].copy_from_slice(&self.tx_count.to_le_bytes());
        v[32..40].copy_from_slice(&self.total().to_le_bytes());
        let crc = crc32c::crc32c(&v[0..VOL_HEADER_BYTES]);
        v[12..16].copy_from_slice(&crc.to_le_bytes());
        v
    }
}

/// What the volume header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolHeader {
    pub accounts: u32,
    pub group_seq: u64,
    pub tx_count: u64,
    pub total: u64,
}

/// Parses volume block 0.
pub fn parse_header(b: &[u8]) -> Result<VolHeader, LedgerError> {
    if b.len() < VOL_HEADER_BYTES || &b[0..8] != VOL_MAGIC {
        return Err(LedgerError::Volume("block 0 holds no ledger header".into()));
    }
    let mut c = b[0..VOL_HEADER_BYTES].to_vec();
    let stored = u32::from_le_bytes(c[12..16].try_into().unwrap_or_default());
    c[12..16].fill(0);
    if crc32c::crc32c(&c) != stored {
        return Err(LedgerError::Volume(
            "header CRC mismatch (torn or corrupt block 0)".into(),
        ));
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    Ok(VolHeader {
        accounts: u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()),
        group_seq: u64_at(16),
        tx_count: u64_at(24),
        total: u64_at(32),
    })
}

/// Where the ledger's volume is.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub nsid: u32,
}

/// A connected volume: admin queue kept alive, one I/O queue.
pub struct Volume {
    pub ctrl: Controller,
    pub q: Qpair,
    pub nsid: u32,
    pub bs: usize,
    pub blocks: u64,
}

const IO_TIMEOUT: Duration = Duration::from_secs(30);

impl Volume {
    pub fn connect(t: &Target) -> Result<Volume, LedgerError> {
        let opts = HostOpts {
            kato_ms: 5_000,
            ..HostOpts::default()
        };
        let mut ctrl = Controller::connect(t.addr, &t.subnqn, &opts)?;
        let ns = ctrl.identify_namespace(t.nsid)?;
        let lbaf = ns.lbaf[usize::from(ns.flbas & 0xF)];
        let bs = 1usize << ((lbaf >> 16) & 0xFF);
        let q = ctrl.create_io_qpair()?;
        Ok(Volume {
            ctrl,
            q,
            nsid: t.nsid,
            bs,
            blocks: ns.nsze,
        })
    }

    /// Writes `(lba, block)` pairs, all in flight at once, and waits for all of them.
    pub fn write_blocks(&mut self, blocks: Vec<(u64, Vec<u8>)>) -> Result<(), LedgerError> {
        let n = blocks.len();
        for (i, (lba, data)) in blocks.into_iter().enumerate() {
            let mut buf = engine::buf::DmaBuf::alloc(data.len());
            buf.copy_from_slice(&data);
            self.q
                .submit(cmd::write(self.nsid, lba, 1), Data::ToCtrl(buf), i as u64)
                .map_err(|(e, _)| e)?;
        }
        let mut done = 0;
        let mut failed = None;
        let deadline = Instant::now() + IO_TIMEOUT;
        while done < n {
            self.q.poll(&mut |c| {
                done += 1;
                if !c.status().is_success() && failed.is_none() {
                    failed = Some(c.status());
                }
            })?;
            self.ctrl.tick()?;
            if Instant::now() > deadline {
                return Err(nvme::host::HostError::Timeout("ledger writes").into());
            }
        }
        match failed {
            Some(s) => Err(nvme::host::HostError::Status(s).into()),
            None => Ok(()),
        }
    }

    pub fn read_block(&mut self, lba: u64) -> Result<Vec<u8>, LedgerError> {
        let buf = engine::buf::DmaBuf::alloc(self.bs);
        let c = self
            .q
            .sync(cmd::read(self.nsid, lba, 1), Data::FromCtrl(buf), IO_TIMEOUT)?;
        nvme::host::status_ok(&c.cqe)?;
        Ok(c.buf.map(|b| b.to_vec()).unwrap_or_default())
    }

    /// Writes what a group changed: its balance blocks, then the header.
    pub fn write_group(&mut self, l: &Ledger, touched: &[usize]) -> Result<(), LedgerError> {
        let per = self.bs / 8;
        let mut blocks: Vec<usize> = touched.iter().map(|a| a / per).collect();
        blocks.dedup();
        let w = blocks
            .into_iter()
            .map(|i| (1 + i as u64, l.balance_block(i, self.bs)))
            .collect();
        self.write_blocks(w)?;
        self.write_blocks(vec![(0, l.header_block(self.bs))])
    }

    /// Writes the whole ledger (format).
    pub fn write_all(&mut self, l: &Ledger) -> Result<(), LedgerError> {
        let need = 1 + l.balance_blocks(self.bs) as u64;
        if need > self.blocks {
            return Err(LedgerError::Config(format!(
                "{} accounts need {need} blocks; the namespace has {}",
                l.balances.len(),
                self.blocks
            )));
        }
        let w: Vec<_> = (0..l.balance_blocks(self.bs))
            .map(|i| (1 + i as u64, l.balance_block(i, self.bs)))
            .collect();
        for chunk in w.chunks(64) {
            self.write_blocks(chunk.to_vec())?;
        }
        self.write_blocks(vec![(0, l.header_block(self.bs))])
    }

    /// Checks the volume against the ledger `l` (decoded from an execution image):
    /// same group, every balance block equal, the money adds up.
    pub fn verify(&mut self, l: &Ledger, initial_total: Option<u64>) -> Result<VolHeader, LedgerError> {
        let h = parse_header(&self.read_block(0)?)?;
        if h.group_seq != l.group_seq || h.tx_count != l.tx_count {
            return Err(LedgerError::Verify(format!(
                "volume is at group {} ({} transfers), the execution image at group {} ({} transfers)",
                h.group_seq, h.tx_count, l.group_seq, l.tx_count
            )));
        }
        if h.accounts as usize != l.balances.len() {
            return Err(LedgerError::Verify(format!(
                "volume has {} accounts, image {}",
                h.accounts,
                l.balances.len()
            )));
        }
        let mut sum = 0u64;
        for i in 0..l.balance_blocks(self.bs) {
            let got = self.read_block(1 + i as u64)?;
            let want = l.balance_block(i, self.bs);
            if got != want {
                let per = self.bs / 8;
                let j = (0..per)
                    .find(|&j| got[j * 8..j * 8 + 8] != want[j * 8..j * 8 + 8])
                    .unwrap_or(0);
                return Err(LedgerError::Verify(format!(
                    "account {} differs: volume {} vs image {} (half-applied group?)",
                    i * per + j,
                    u64::from_le_bytes(got[j * 8..j * 8 + 8].try_into().unwrap_or_default()),
                    u64::from_le_bytes(want[j * 8..j * 8 + 8].try_into().unwrap_or_default())
                )));
            }
            for j in 0..self.bs / 8 {
                sum += u64::from_le_bytes(got[j * 8..j * 8 + 8].try_into().unwrap_or_default());
            }
        }
        if sum != h.total || initial_total.is_some_and(|t| t != sum) {
            return Err(LedgerError::Verify(format!(
                "balances on the volume sum to {sum}, header says {}, expected {:?}",
                h.total, initial_total
            )));
        }
        Ok(h)
    }
}

/// One line of the ledger's progress protocol on stdout (the demo reads it).
pub fn emit(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_round_trips_and_money_is_conserved() {
        let mut l = Ledger::new(256, 1000, 256 * 1024, 7);
        let total = l.total();
        for _ in 0..50 {
            let t = l.run_group(16);
            assert!(!t.is_empty());
        }
        assert_eq!(l.total(), total);
        assert_eq!(l.group_seq, 50);
        let img = l.encode();
        let back = Ledger::decode(&img).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn corrupt_images_are_refused() {
        let l = Ledger::new(16, 10, 4096, 1);
        let img = l.encode();
        assert!(Ledger::decode(&img[..img.len() - 1]).is_err());
        let mut bad = img.clone();
        bad[IMG_HEADER_BYTES] ^= 1; // a balance changes: sum no longer matches
        assert!(Ledger::decode(&bad).is_err());
        let mut bad = img.clone();
        bad[0] = b'X';
        assert!(Ledger::decode(&bad).is_err());
        for n in 0..img.len().min(200) {
            let _ = Ledger::decode(&img[..n]);
        }
    }

    #[test]
    fn a_group_changes_few_image_pages() {
        let mut l = Ledger::new(4096, 1000, 64 << 20, 3);
        let a = l.encode();
        l.run_group(64);
        let b = l.encode();
        assert_eq!(a.len(), b.len());
        let changed = a.chunks(4096).zip(b.chunks(4096)).filter(|(x, y)| x != y).count();
        let pages = a.len().div_ceil(4096);
        // 64 transfers touch at most 128 history pages plus the balance/count pages.
        assert!(changed <= 128 + 12 + 1, "{changed} of {pages} pages changed");
        assert!(changed >= 2);
    }

    #[test]
    fn header_block_round_trips_and_detects_corruption() {
        let mut l = Ledger::new(1000, 5, 8192, 9);
        l.run_group(3);
        let h = l.header_block(4096);
        let p = parse_header(&h).unwrap();
        assert_eq!(p.group_seq, 1);
        assert_eq!(p.total, 5000);
        let mut bad = h.clone();
        bad[20] ^= 0x40;
        assert!(parse_header(&bad).is_err());
    }
}

/// `baton ledger`: run the ledger against a volume (primary), or restore it from an
/// execution image on the promoted standby and serve again (`--restore`).
#[derive(clap::Args, Debug, Clone)]
pub struct LedgerArgs {
    /// Target address (the standby host sets BATON_TRADDR on failover).
    #[arg(long, env = "BATON_TRADDR", default_value = "127.0.0.1")]
    pub traddr: String,
    /// Target port.
    #[arg(long, env = "BATON_TRSVCID", default_value = "4420")]
    pub trsvcid: u16,
    /// Subsystem NQN.
    #[arg(long, env = "BATON_SUBNQN")]
    pub subnqn: String,
    /// Namespace ID.
    #[arg(long, env = "BATON_NSID", default_value_t = 1)]
    pub nsid: u32,
    /// Standby host's execution-image server; without it no images and no restart points.
    #[arg(long)]
    pub image_server: Option<SocketAddr>,
    /// Application name under which images are stored.
    #[arg(long, default_value = "ledger")]
    pub app: String,
    /// Accounts.
    #[arg(long, default_value_t = 4096)]
    pub accounts: usize,
    /// Initial balance of each account.
    #[arg(long, default_value_t = 1000)]
    pub initial: u64,
    /// Execution image size in MiB (the history rings fill it).
    #[arg(long, default_value_t = 64)]
    pub image_mib: usize,
    /// Transfers per group (one restart point per group).
    #[arg(long, default_value_t = 64)]
    pub group: usize,
    /// Groups to run (0: until killed).
    #[arg(long, default_value_t = 0)]
    pub groups: u64,
    /// Pause between groups, ms.
    #[arg(long, default_value_t = 0)]
    pub pace_ms: u64,
    /// Restore from this execution image (the standby host sets BATON_IMAGE), verify the
    /// volume against it and continue from there.
    #[arg(long)]
    pub restore: bool,
    /// The image path for --restore.
    #[arg(long, env = "BATON_IMAGE")]
    pub image: Option<std::path::PathBuf>,
    /// Write a JSON result here (restore mode: verification outcome and timings).
    #[arg(long)]
    pub result: Option<std::path::PathBuf>,
    /// Seed of the transfer generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs `baton ledger`.
pub fn run(a: LedgerArgs) -> Result<(), LedgerError> {
    let started_ms = now_unix_ms();
    let ip: std::net::IpAddr = a
        .traddr
        .parse()
        .map_err(|e| LedgerError::Config(format!("--traddr {:?}: {e}", a.traddr)))?;
    let t = Target {
        addr: SocketAddr::new(ip, a.trsvcid),
        subnqn: a.subnqn.clone(),
        nsid: a.nsid,
    };
    let (mut l, mut vol, initial_total, restored) = if a.restore {
        let path = a
            .image
            .as_ref()
            .ok_or_else(|| LedgerError::Config("--restore needs --image (or BATON_IMAGE)".into()))?;
        let bytes = std::fs::read(path).map_err(|e| LedgerError::Image(format!("{}: {e}", path.display())))?;
        let l = Ledger::decode(&bytes)?;
        let mut vol = Volume::connect(&t)?;
        let total = l.total();
        let res = vol.verify(&l, Some(a.initial * l.balances.len() as u64));
        let ok = res.is_ok();
        emit(&format!(
            "RESTORED seq={} tx={} total={} verify={}",
            l.group_seq,
            l.tx_count,
            total,
            match &res {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("FAILED:{e}"),
            }
        ));
        if !ok {
            let err = res.as_ref().err().map(|e| e.to_string());
            write_result(&a, started_ms, (l.group_seq, l.tx_count), &l, false, err)?;
            return res.map(|_| ());
        }
        let from = (l.group_seq, l.tx_count);
        (l, vol, total, Some(from))
    } else {
        let l = Ledger::new(a.accounts, a.initial, a.image_mib << 20, a.seed);
        let mut vol = Volume::connect(&t)?;
        vol.write_all(&l)?;
        let total = l.total();
        (l, vol, total, None)
    };
    let mut images = match a.image_server {
        Some(addr) => {
            Some(standby::image::ImageClient::connect(addr, &a.app).map_err(|e| LedgerError::Image(e.to_string()))?)
        }
        None => None,
    };
    emit(&format!(
        "READY accounts={} total={} image_bytes={} block_size={} restored={}",
        l.balances.len(),
        initial_total,
        l.encode().len(),
        vol.bs,
        restored.is_some()
    ));
    // Restart point 0: the formatted ledger, so a failure before the first group restores it.
    if let Some(img) = images.as_mut() {
        restart_point(&mut vol, img, &l, 0)?;
    }
    let mut done = 0u64;
    while a.groups == 0 || done < a.groups {
        let t0 = Instant::now();
        let touched = l.run_group(a.group);
        vol.write_group(&l, &touched)?;
        let write_us = t0.elapsed().as_micros();
        emit(&format!(
            "WROTE seq={} tx={} write_us={write_us}",
            l.group_seq, l.tx_count
        ));
        if let Some(img) = images.as_mut() {
            restart_point(&mut vol, img, &l, write_us)?;
        }
        done += 1;
        if let (Some(from), 1) = (restored, done) {
            emit(&format!(
                "SERVING seq={} since_start_ms={}",
                l.group_seq,
                now_unix_ms() - started_ms
            ));
            write_result(&a, started_ms, from, &l, true, None)?;
        }
        if a.pace_ms > 0 {
            std::thread::sleep(Duration::from_millis(a.pace_ms));
        }
    }
    if let (Some(from), 0) = (restored, done) {
        write_result(&a, started_ms, from, &l, true, None)?;
    }
    vol.ctrl.tick()?;
    Ok(())
}

/// Saves the image at the standby host, then declares the restart point in band.
fn restart_point(
    vol: &mut Volume,
    img: &mut standby::image::ImageClient,
    l: &Ledger,
    write_us: u128,
) -> Result<(), LedgerError> {
    let image = l.encode();
    let t1 = Instant::now();
    let rep = img
        .transfer(l.group_seq, &image)
        .map_err(|e| LedgerError::Image(e.to_string()))?;
    let image_us = t1.elapsed().as_micros();
    emit(&format!(
        "POINTING seq={} image_us={image_us} chunks_sent={} chunks_total={} wire_bytes={} image_bytes={}",
        l.group_seq,
        rep.chunks_sent,
        rep.chunks_total,
        rep.wire_bytes_sent,
        image.len()
    ));
    let tag = standby::image::restart_tag(l.group_seq, &rep.hash);
    let t2 = Instant::now();
    let epoch = nvme::host::declare_restart_point(&mut vol.q, vol.nsid, &tag, IO_TIMEOUT)?;
    emit(&format!(
        "POINT seq={} epoch={epoch} tx={} write_us={write_us} image_us={image_us} point_us={}",
        l.group_seq,
        l.tx_count,
        t2.elapsed().as_micros()
    ));
    Ok(())
}

/// `restored` is the (group, transfers) the image held, before the restarted
/// ledger ran on; `l` is the state at the moment of writing.
fn write_result(
    a: &LedgerArgs,
    started_ms: u64,
    restored: (u64, u64),
    l: &Ledger,
    ok: bool,
    error: Option<String>,
) -> Result<(), LedgerError> {
    let Some(p) = &a.result else { return Ok(()) };
    let v = serde_json::json!({
        "verified": ok,
        "error": error,
        "restored_seq": restored.0,
        "restored_tx": restored.1,
        "serving_seq": l.group_seq,
        "total": l.total(),
        "started_unix_ms": started_ms,
        "serving_unix_ms": now_unix_ms(),
    });
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, v.to_string()).map_err(|e| LedgerError::Config(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, p).map_err(|e| LedgerError::Config(format!("{}: {e}", p.display())))
}
