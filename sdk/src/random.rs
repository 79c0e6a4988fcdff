//! Randomness for filters: a small, fast generator per VM (splitmix64), seeded from WASI
//! randomness — std's `RandomState` keys come from `random_get` — and never from the proxy's
//! clock, which every VM would share (two VMs must not make the same "random" choices).
//!
//! Not cryptographic: for traffic splits, fault percentages, trace and span ids.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

/// splitmix64 behind a `Cell`, so a VM's contexts can share it through an `Rc` without `RefCell`.
#[derive(Debug)]
pub struct Rng(Cell<u64>);

impl Rng {
    /// A generator seeded from WASI randomness.
    pub fn from_entropy() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        Self(Cell::new(h.finish()))
    }

    /// A generator with a fixed seed (tests).
    pub fn with_seed(seed: u64) -> Self {
        Self(Cell::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let s = self.0.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n` (multiply-shift; the bias is below 2^-32 for any u32-sized `n`).
    /// `n` = 0 gives 0.
    pub fn below(&self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `percent` / 100 (≤ 0: never, ≥ 100: always).
    pub fn percent(&self, percent: f64) -> bool {
        if percent <= 0.0 {
            return false;
        }
        if percent >= 100.0 {
            return true;
        }
        // 53 random bits → [0, 1).
        let x = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        x * 100.0 < percent
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::from_entropy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_ranges() {
        let r = Rng::with_seed(1);
        assert!(!r.percent(0.0) && r.percent(100.0));
        let hits = (0..100_000).filter(|_| r.percent(25.0)).count();
        assert!((24_000..26_000).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| r.below(7) < 7));
        assert_eq!(r.below(0), 0);
        assert_ne!(
            Rng::from_entropy().next_u64(),
            Rng::from_entropy().next_u64()
        );
    }
}
