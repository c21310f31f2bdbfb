//! The one PRNG of a run: SplitMix64 (no dependency, fast, good enough for choosing faults).

/// Deterministic generator; every choice of a run comes from one of these, seeded by the run's seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Decorrelate neighbouring seeds (soak runs walk 0, 1, 2, ...).
        let mut r = Rng(seed ^ 0x5eed_ba70_0000_0001);
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// A fork for an independent stream (so adding a choice in one place does not shift
    /// every later choice of another component).
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}
