//! The generators: bytes to try, each a pure function of its seed, lane and
//! index (structured, mutate) or of the previous input (tunnel), so that a
//! campaign is reproducible, resumable and splittable.
//!
//! - *structured*: a catalog encoding with random legal-looking changes:
//!   legacy prefixes (66, 67, F2, F3, segment overrides, LOCK), REX in
//!   64-bit mode, immediates and displacements drawn toward edge values,
//!   VEX/EVEX payload bits (vvvv, L, W, map) flipped;
//! - *tunnel*: sandsifter's walk over the byte space: the last byte of the
//!   instruction is advanced, a byte that wraps carries into the one
//!   before, and the bytes after it start again from zero;
//! - *mutate*: havoc over corpus entries (bit flips, byte changes,
//!   insertions, deletions, prefixes, splices of two entries).

use crate::rng::Rng;
use analyzer::mode::Mode;
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// Legacy prefixes the generators add.
pub const PREFIXES: [u8; 11] = [
    0x66, 0x67, 0xf2, 0xf3, 0xf0, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65,
];

/// Which generator makes an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenKind {
    Structured,
    Tunnel,
    Mutate,
}

/// The generators a campaign uses: one, or all three in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Generators {
    One(GenKind),
    All,
}

impl Generators {
    /// The generator of input `index` of a lane.
    pub fn kind_of(self, index: u64) -> GenKind {
        match self {
            Generators::One(k) => k,
            Generators::All => {
                [GenKind::Structured, GenKind::Tunnel, GenKind::Mutate][(index % 3) as usize]
            }
        }
    }
}

impl FromStr for Generators {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "structured" => Ok(Generators::One(GenKind::Structured)),
            "tunnel" => Ok(Generators::One(GenKind::Tunnel)),
            "mutate" => Ok(Generators::One(GenKind::Mutate)),
            "all" => Ok(Generators::All),
            _ => Err(format!(
                "unknown generator {:?}: structured, tunnel, mutate or all",
                analyzer::input::clip(s)
            )),
        }
    }
}

impl fmt::Display for GenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GenKind::Structured => "structured",
            GenKind::Tunnel => "tunnel",
            GenKind::Mutate => "mutate",
        })
    }
}

/// The first instruction of `bytes` in `mode`: its length (at least 1, at
/// most the bytes given) and whether the decoder knows it.
pub fn decode_len(mode: Mode, bytes: &[u8]) -> (usize, bool) {
    let d = decode(mode, bytes);
    (d.len, d.valid)
}

/// How many of the first bytes are prefixes: legacy prefixes, and REX in
/// 64-bit mode (where 0x40-0x4F are not INC and DEC).
pub fn prefix_count(mode: Mode, bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|&&b| PREFIXES.contains(&b) || (mode == Mode::Long64 && b & 0xF0 == 0x40))
        .count()
}

/// The decoder's view of the first instruction of some bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstInsn {
    /// At least 1, at most the bytes given.
    pub len: usize,
    pub valid: bool,
    /// The decoder's `Code` (`INVALID` where it finds no instruction).
    pub code: iced_x86::Code,
    /// The bytes end inside the instruction (the decoder needs more): run
    /// as they are, the engine would read the harness's bytes after them.
    pub truncated: bool,
    /// The RFLAGS bits the instruction leaves undefined (by the manuals, as
    /// iced-x86 records them): engines may differ there.
    pub undefined_flags: u64,
    /// A shift or rotate whose count is CL (a count of 0 changes no flag,
    /// so none is undefined then).
    pub cl_count: bool,
}

/// The first instruction of `bytes` in `mode`, decoded once.
pub fn decode(mode: Mode, bytes: &[u8]) -> FirstInsn {
    let mut d = Decoder::with_ip(mode.bitness(), bytes, 0, DecoderOptions::NONE);
    let insn = d.decode();
    FirstInsn {
        len: insn.len().clamp(1, bytes.len().max(1)),
        valid: !insn.is_invalid(),
        code: insn.code(),
        truncated: d.last_error() == iced_x86::DecoderError::NoMoreBytes,
        undefined_flags: analyzer::observe::rflags_bits(insn.rflags_undefined()),
        cl_count: (0..insn.op_count()).any(|i| {
            insn.op_kind(i) == iced_x86::OpKind::Register
                && insn.op_register(i) == iced_x86::Register::CL
        }) && matches!(
            insn.mnemonic(),
            Mnemonic::Shl
                | Mnemonic::Shr
                | Mnemonic::Sar
                | Mnemonic::Sal
                | Mnemonic::Rol
                | Mnemonic::Ror
                | Mnemonic::Rcl
                | Mnemonic::Rcr
                | Mnemonic::Shld
                | Mnemonic::Shrd
        ),
    }
}

/// Where the tunnel is: the candidate to run next (`MAX_LEN` bytes), the
/// byte it advances (the marker), and the length of the input before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub bytes: Vec<u8>,
    pub marker: usize,
    pub last_len: usize,
    /// The last first byte of the walk.
    pub hi: u8,
}

impl Tunnel {
    /// The walk of the first bytes `lo..=hi`: `lo` then zeros.
    pub fn start(lo: u8, hi: u8) -> Tunnel {
        let mut bytes = vec![0u8; MAX_LEN];
        bytes[0] = lo;
        Tunnel {
            bytes,
            marker: 0,
            last_len: 0,
            hi,
        }
    }

    /// The walk after the candidate ran as an instruction of `len` bytes
    /// (sandsifter's tunneling): when the length changed, the marker moves
    /// to the instruction's last byte; the byte at the marker goes up by
    /// one, every byte after it starts again from zero, and a byte that
    /// wraps moves the marker to the byte before. So the bytes that do not
    /// change the length (a displacement, an immediate) are walked one at
    /// a time, not in every combination. `None` when the walk is done.
    pub fn next(&self, len: usize) -> Option<Tunnel> {
        let len = len.clamp(1, MAX_LEN);
        let mut b = self.bytes.clone();
        b.resize(MAX_LEN, 0);
        let mut m = if len != self.last_len {
            len - 1
        } else {
            self.marker.min(MAX_LEN - 1)
        };
        loop {
            let (v, wrapped) = b[m].overflowing_add(1);
            b[m] = v;
            if !wrapped {
                b[m + 1..].iter_mut().for_each(|x| *x = 0);
                if m == 0 && b[0] > self.hi {
                    return None;
                }
                return Some(Tunnel {
                    bytes: b,
                    marker: m,
                    last_len: len,
                    hi: self.hi,
                });
            }
            if m == 0 {
                return None;
            }
            m -= 1;
        }
    }
}

/// An immediate or displacement (little-endian) drawn toward edge values:
/// 0, all ones, the sign bit alone, the largest positive, 1, or random.
fn edge_bytes(rng: &mut Rng, out: &mut [u8]) {
    let Some(top) = out.len().checked_sub(1) else {
        return;
    };
    match rng.below(6) {
        0 => out.fill(0),
        1 => out.fill(0xff),
        2 => {
            out.fill(0);
            out[top] = 0x80;
        }
        3 => {
            out.fill(0xff);
            out[top] = 0x7f;
        }
        4 => {
            out.fill(0);
            out[0] = 1;
        }
        _ => out.iter_mut().for_each(|x| *x = rng.byte()),
    }
}

/// The generators' templates: the catalog's encodings of `mode`.
pub fn templates(mode: Mode) -> Vec<Vec<u8>> {
    analyzer::catalog::build(mode)
        .entries
        .into_iter()
        .map(|e| e.bytes)
        .collect()
}

/// A structured input from a catalog encoding (see the module documentation).
pub fn structured(rng: &mut Rng, mode: Mode, templates: &[Vec<u8>]) -> Vec<u8> {
    let Some(base) = rng.pick(templates) else {
        return vec![rng.byte()];
    };
    let mut b = base.clone();
    // Immediates and displacements toward edge values.
    let mut d = Decoder::with_ip(mode.bitness(), &b, 0, DecoderOptions::NONE);
    let insn = d.decode();
    if !insn.is_invalid() {
        let co = d.get_constant_offsets(&insn);
        let mut fields = Vec::new();
        if co.has_immediate() {
            fields.push((co.immediate_offset(), co.immediate_size()));
        }
        if co.has_immediate2() {
            fields.push((co.immediate_offset2(), co.immediate_size2()));
        }
        if co.has_displacement() {
            fields.push((co.displacement_offset(), co.displacement_size()));
        }
        for (off, size) in fields {
            if rng.chance(1, 2) {
                if let Some(f) = b.get_mut(off..off + size) {
                    edge_bytes(rng, f);
                }
            }
        }
    }
    // Where the prefixes end and the opcode (or REX, VEX, EVEX) starts.
    let mut at = b.iter().take_while(|x| PREFIXES.contains(x)).count();
    let rex_here = mode == Mode::Long64 && b.get(at).is_some_and(|x| x & 0xf0 == 0x40);
    if mode == Mode::Long64 && rng.chance(1, 3) {
        let rex = 0x40 | (rng.byte() & 0x0f);
        if rex_here {
            b[at] = rex;
        } else {
            b.insert(at, rex);
        }
    }
    if rex_here {
        at += 1;
    }
    // VEX/EVEX payload bits (in 64-bit mode, or where ModRM.mod would be 3).
    if let Some(&esc) = b.get(at) {
        let payload = match esc {
            0xc5 => 1,
            0xc4 => 2,
            0x62 => 3,
            _ => 0,
        };
        let is_vex = payload > 0
            && (mode == Mode::Long64 || b.get(at + 1).is_some_and(|m| m & 0xc0 == 0xc0));
        if is_vex && rng.chance(1, 2) {
            let k = at + 1 + rng.below(payload);
            if let Some(x) = b.get_mut(k) {
                *x ^= 1 << rng.below(8);
            }
        }
    }
    // Legacy prefixes in front.
    for _ in 0..rng.below(4) {
        if let Some(&p) = rng.pick(&PREFIXES) {
            b.insert(0, p);
        }
    }
    b.truncate(MAX_LEN);
    b
}

/// A mutated input from the corpus (and the catalog's encodings).
pub fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], templates: &[Vec<u8>]) -> Vec<u8> {
    let from = if !corpus.is_empty() && rng.chance(1, 2) {
        corpus
    } else {
        templates
    };
    let mut b = rng.pick(from).cloned().unwrap_or_default();
    for _ in 0..1 + rng.below(4) {
        let n = b.len();
        match rng.below(7) {
            0 if n > 0 => {
                let i = rng.below(n);
                b[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                b[i] = rng.byte();
            }
            2 => {
                let i = rng.below(n + 1);
                b.insert(i, rng.byte());
            }
            3 if n > 1 => {
                let i = rng.below(n);
                b.remove(i);
            }
            4 => {
                if let Some(&p) = rng.pick(&PREFIXES) {
                    b.insert(0, p);
                }
            }
            5 if n > 0 => {
                let i = rng.below(n);
                b.insert(i, b[i]);
            }
            _ => {
                // Splice: this entry's head and a window of another's tail.
                if let Some(other) = rng.pick(from) {
                    let cut = rng.below(n + 1);
                    let from_at = rng.below(other.len() + 1);
                    b.truncate(cut);
                    b.extend_from_slice(&other[from_at..]);
                }
            }
        }
    }
    if b.is_empty() {
        b.push(rng.byte());
    }
    b.truncate(MAX_LEN);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoder_names_undefined_flags_and_shift_counts_in_cl() {
        // SHLD by 1: AF undefined; by CL: a count in CL; ADD: none.
        let shld = decode(Mode::Long64, &[0x0F, 0xA4, 0xC1, 0x01]);
        assert_eq!(shld.undefined_flags & 0x10, 0x10);
        assert!(!shld.cl_count);
        assert!(decode(Mode::Long64, &[0x0F, 0xA5, 0xC1]).cl_count);
        assert!(decode(Mode::Long64, &[0xD3, 0xE0]).cl_count);
        let add = decode(Mode::Long64, &[0x48, 0x01, 0xC8]);
        assert_eq!((add.undefined_flags, add.cl_count), (0, false));
    }

    #[test]
    fn the_tunnel_walks_the_lengths_of_add_r_m8_by_the_decoder() {
        // First byte 00 (ADD r/m8, r8) in 32-bit mode, walked with the
        // decoder's lengths: ModRM alone (2), with SIB (3), disp8 (3 or 4),
        // disp32 (6 or 7) -- every documented length, each displacement byte
        // walked on its own, and the walk ends by itself.
        let mut t = Tunnel::start(0x00, 0x00);
        let mut lengths = std::collections::BTreeSet::new();
        let mut steps = 0u64;
        loop {
            let (len, valid) = decode_len(Mode::Prot32, &t.bytes);
            assert!(valid, "{:02x?}", &t.bytes[..len]);
            lengths.insert(len);
            steps += 1;
            match t.next(len) {
                Some(n) => t = n,
                None => break,
            }
        }
        assert_eq!(lengths.into_iter().collect::<Vec<_>>(), vec![2, 3, 4, 6, 7]);
        assert!(steps > 256 * 24 && steps < 1_000_000, "{steps} steps");
        // A wrapped byte carries into the one before; past `hi`: done.
        let mut t = Tunnel::start(0x01, 0x02);
        t.bytes[1] = 0xff;
        t.last_len = 2;
        t.marker = 1;
        let n = t.next(2).expect("next");
        assert_eq!(&n.bytes[..3], &[0x02, 0x00, 0x00]);
        assert_eq!(n.marker, 0);
        let mut end = Tunnel::start(0x02, 0x02);
        end.bytes[0] = 0x02;
        assert_eq!(end.next(1).map(|t| t.bytes[0]), None);
    }

    #[test]
    fn generators_are_deterministic_and_bounded() {
        let templates = vec![
            vec![0x0f, 0x01, 0x05, 0, 0x81, 0, 0],
            vec![0x48, 0x01, 0xc8],
        ];
        let corpus = vec![vec![0x66, 0x01, 0xc8]];
        for i in 0..200 {
            let a = structured(&mut Rng::for_input(3, 0, i), Mode::Long64, &templates);
            let b = structured(&mut Rng::for_input(3, 0, i), Mode::Long64, &templates);
            assert_eq!(a, b);
            assert!(!a.is_empty() && a.len() <= MAX_LEN);
            let m = mutate(&mut Rng::for_input(3, 0, i), &corpus, &templates);
            assert_eq!(m, mutate(&mut Rng::for_input(3, 0, i), &corpus, &templates));
            assert!(!m.is_empty() && m.len() <= MAX_LEN);
        }
        assert_eq!("ALL".parse::<Generators>(), Ok(Generators::All));
        assert!("nope".parse::<Generators>().is_err());
        assert_eq!(
            decode_len(Mode::Long64, &[0x48, 0x01, 0xc8, 0xf4]),
            (3, true)
        );
    }
}
