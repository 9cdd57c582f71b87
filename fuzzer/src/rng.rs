//! A small deterministic generator (SplitMix64): the same seed gives the
//! same inputs on every host, and an input is a pure function of its seed,
//! lane and index, so a campaign can resume or be split anywhere.

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator of input `index` of `lane` in a campaign of `seed`.
    pub fn for_input(seed: u64, lane: u32, index: u64) -> Rng {
        let mut r = Rng::new(seed ^ (u64::from(lane) << 48));
        r.0 ^= r
            .next_u64()
            .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// True with probability `num`/`den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_others_differ() {
        let a: Vec<u64> = (0..4).map(|i| Rng::for_input(7, 0, i).next_u64()).collect();
        let b: Vec<u64> = (0..4).map(|i| Rng::for_input(7, 0, i).next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(Rng::for_input(7, 1, 0).next_u64(), a[0]);
        assert_ne!(Rng::for_input(8, 0, 0).next_u64(), a[0]);
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.below(10) < 10));
    }
}
