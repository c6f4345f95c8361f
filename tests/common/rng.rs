//! The fuzz tests' deterministic random numbers (xorshift64*). Include with
//! `#[path = "common/rng.rs"] mod rng;`.

use std::ops::Range;

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in 0..n; 0 when n is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// A number in `r` (its start when `r` is empty).
    #[allow(dead_code)] // not every fuzz test draws from ranges
    pub fn in_range(&mut self, r: &Range<usize>) -> usize {
        r.start + self.below(r.len())
    }
}
