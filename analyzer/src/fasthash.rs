//! A fast hasher for the maps the probe layer looks up on every run (a
//! state's baseline, a booted context, a code page already made). Their
//! keys are popek's own small values, never an attacker's, so the
//! standard library's SipHash, made to resist chosen keys, is not needed:
//! it was about 4% of a fuzz worker's instructions. No map that uses it
//! is iterated, so the order of its entries shows nowhere.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` hashed with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Multiply-rotate hashing, one machine word at a time.
#[derive(Clone, Copy, Debug, Default)]
pub struct FastHasher(u64);

/// An odd constant with well-mixed bits (2^64 divided by the golden ratio).
const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps "ab" and "ab\0" apart.
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        // hashbrown takes its control bits from the top seven: fold the
        // well-mixed high half down so that both ends carry every input bit.
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash<T: Hash>(v: &T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(v)
    }

    #[test]
    fn equal_keys_hash_equal_and_near_keys_apart() {
        assert_eq!(
            hash(&(1u8, 2u64, vec![3u8, 4])),
            hash(&(1u8, 2u64, vec![3u8, 4]))
        );
        let mut seen = std::collections::HashSet::new();
        for a in 0..64usize {
            for b in [vec![], vec![0u8], vec![0, 0], vec![1], vec![0x90; 9]] {
                assert!(seen.insert(hash(&(a, b.clone()))), "({a}, {b:?}) collides");
            }
        }
    }

    #[test]
    fn a_map_finds_what_it_holds() {
        // Distinct keys of several lengths: i's bytes, then i % 9 zeros.
        let key = |i: usize| {
            let mut b = i.to_le_bytes().to_vec();
            b.resize(8 + i % 9, 0);
            (i % 7, b)
        };
        let mut m: FastMap<(usize, Vec<u8>), usize> = FastMap::default();
        for i in 0..2000usize {
            m.insert(key(i), i);
        }
        assert_eq!(m.len(), 2000);
        for i in 0..2000usize {
            assert_eq!(m.get(&key(i)), Some(&i));
        }
    }
}
