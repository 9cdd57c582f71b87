//! Looking entries up by mnemonic, and "did you mean" suggestions.

use super::{Catalog, Entry};
use std::collections::BTreeSet;

impl Catalog {
    /// Entries whose mnemonic is `m` (case-insensitive), in catalog order.
    pub fn find_mnemonic(&self, m: &str) -> Vec<&Entry> {
        let m = m.trim().to_ascii_lowercase();
        self.entries.iter().filter(|e| e.mnemonic == m).collect()
    }

    /// Entries of one iced `Code` name (case-insensitive), in catalog order.
    pub fn find_code(&self, code: &str) -> Vec<&Entry> {
        let code = code.trim();
        self.entries
            .iter()
            .filter(|e| e.code.eq_ignore_ascii_case(code))
            .collect()
    }

    /// The distinct mnemonics of the catalog, sorted.
    pub fn mnemonics(&self) -> Vec<&str> {
        let set: BTreeSet<&str> = self.entries.iter().map(|e| e.mnemonic.as_str()).collect();
        set.into_iter().collect()
    }

    /// Up to `n` mnemonics closest to `m` by edit distance (ties broken
    /// alphabetically), for "unknown mnemonic, did you mean ...".
    pub fn suggest(&self, m: &str, n: usize) -> Vec<String> {
        let m = m.trim().to_ascii_lowercase();
        let mut scored: Vec<(usize, &str)> = self
            .mnemonics()
            .into_iter()
            .map(|c| (edit_distance(&m, c), c))
            .collect();
        scored.sort();
        scored
            .into_iter()
            .take(n)
            .map(|(_, c)| c.to_string())
            .collect()
    }
}

/// Damerau-Levenshtein distance (optimal string alignment: insertions,
/// deletions, substitutions and transpositions of neighbours cost 1).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}
