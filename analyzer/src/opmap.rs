//! Where an encoding sits in the x86 opcode maps, from its bytes alone: the
//! map (one-byte, 0F, 0F38, 0F3A, or a VEX/EVEX/XOP map beyond them) and the
//! opcode byte within it, as the manuals' 16×16 opcode tables place it.
//!
//! The rule, in the order the bytes are read:
//! - legacy prefixes (F0, F2, F3, 2E, 36, 3E, 26, 64, 65, 66, 67) are
//!   skipped, and in 64-bit mode REX (40-4F) too: a cell holds an opcode
//!   with every prefix and mandatory prefix (66/F2/F3);
//! - `0F 38 xx`, `0F 3A xx` and `0F xx` are the legacy 0F38, 0F3A and 0F
//!   maps (a bare `0F 38`, Cyrix's SMINT, is the 0F map's 38);
//! - VEX (C5 with the 0F map implied, C4 with the map in its `mmmmm`
//!   field), EVEX (62, the map in the low three bits of P0) and XOP (8F with
//!   a map field of 8 or more) are placed by their map field, beside the
//!   legacy encodings of that map. Outside 64-bit mode C4, C5 and 62 are
//!   VEX/EVEX only when the next byte has ModRM.mod = 3 (otherwise they are
//!   LES, LDS and BOUND);
//! - anything else is the one-byte map.
//!
//! The opcode byte is the first byte after the escape; ModRM extensions
//! (`0F 01 /0`, `0F 01 D0`) and 3DNow!'s suffix byte (`0F 0F /r ib`) share
//! the cell of that byte.

use crate::mode::Mode;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An opcode map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OpMap {
    /// The one-byte (primary) map.
    OneByte,
    /// `0F xx` (VEX/EVEX map 1).
    Map0F,
    /// `0F 38 xx` (VEX/EVEX map 2).
    Map0F38,
    /// `0F 3A xx` (VEX/EVEX map 3).
    Map0F3A,
    /// Another VEX or EVEX map (EVEX maps 5 and 6), by number.
    Other(u8),
    /// An AMD XOP map (8, 9, 10), by number.
    Xop(u8),
}

impl OpMap {
    /// The four maps every mode has, in table order.
    pub const MAIN: [OpMap; 4] = [OpMap::OneByte, OpMap::Map0F, OpMap::Map0F38, OpMap::Map0F3A];

    /// `one-byte`, `0F`, `0F38`, `0F3A`, `map 5`, `XOP map 8`.
    pub fn name(self) -> String {
        match self {
            OpMap::OneByte => "one-byte".into(),
            OpMap::Map0F => "0F".into(),
            OpMap::Map0F38 => "0F38".into(),
            OpMap::Map0F3A => "0F3A".into(),
            OpMap::Other(n) => format!("map {n}"),
            OpMap::Xop(n) => format!("XOP map {n}"),
        }
    }

    /// The map a VEX/EVEX map field names.
    fn of_field(field: u8) -> OpMap {
        match field {
            1 => OpMap::Map0F,
            2 => OpMap::Map0F38,
            3 => OpMap::Map0F3A,
            n => OpMap::Other(n),
        }
    }
}

impl fmt::Display for OpMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// How the opcode was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Encoding {
    Legacy,
    Vex,
    Evex,
    Xop,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Legacy => "legacy",
            Encoding::Vex => "VEX",
            Encoding::Evex => "EVEX",
            Encoding::Xop => "XOP",
        }
    }
}

/// An encoding's place in the opcode maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub map: OpMap,
    /// The opcode byte: row = high nibble, column = low nibble.
    pub opcode: u8,
    pub encoding: Encoding,
}

fn is_legacy_prefix(b: u8) -> bool {
    matches!(
        b,
        0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 | 0x66 | 0x67
    )
}

/// The position of the instruction `bytes` encode in `mode` (see the module
/// documentation), or `None` when the bytes end before the opcode byte.
pub fn position(mode: Mode, bytes: &[u8]) -> Option<Position> {
    let long = mode == Mode::Long64;
    let mut i = 0;
    while i < bytes.len() && (is_legacy_prefix(bytes[i]) || (long && bytes[i] & 0xf0 == 0x40)) {
        i += 1;
    }
    let b = &bytes[i..];
    let at = |k: usize| b.get(k).copied();
    let first = at(0)?;
    // Outside 64-bit mode C4/C5/62 are VEX/EVEX only with ModRM.mod = 3.
    let escapes = || long || at(1).is_some_and(|n| n & 0xc0 == 0xc0);
    let (map, opcode, encoding) = match first {
        // `0F 38` with nothing after it is the 0F map's 38 (Cyrix SMINT).
        0x0f => match (at(1)?, at(2)) {
            (0x38, Some(op)) => (OpMap::Map0F38, op, Encoding::Legacy),
            (0x3a, Some(op)) => (OpMap::Map0F3A, op, Encoding::Legacy),
            (op, _) => (OpMap::Map0F, op, Encoding::Legacy),
        },
        0xc5 if escapes() => (OpMap::Map0F, at(2)?, Encoding::Vex),
        0xc4 if escapes() => (OpMap::of_field(at(1)? & 0x1f), at(3)?, Encoding::Vex),
        0x62 if escapes() => (OpMap::of_field(at(1)? & 0x07), at(4)?, Encoding::Evex),
        0x8f if at(1).is_some_and(|n| n & 0x1f >= 8) => {
            (OpMap::Xop(at(1)? & 0x1f), at(3)?, Encoding::Xop)
        }
        op => (OpMap::OneByte, op, Encoding::Legacy),
    };
    Some(Position {
        map,
        opcode,
        encoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::OpCodeTableKind;

    fn pos(mode: Mode, hex: &str) -> Option<(OpMap, u8, Encoding)> {
        let bytes: Vec<u8> = hex
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).expect("hex"))
            .collect();
        position(mode, &bytes).map(|p| (p.map, p.opcode, p.encoding))
    }

    #[test]
    fn legacy_maps_with_prefixes_and_rex() {
        use Encoding::Legacy;
        use Mode::*;
        // One-byte: ADD, HLT, POPF; prefixes and REX skipped.
        assert_eq!(pos(Prot16, "00 c1"), Some((OpMap::OneByte, 0x00, Legacy)));
        assert_eq!(pos(Long64, "f4"), Some((OpMap::OneByte, 0xf4, Legacy)));
        assert_eq!(pos(Prot32, "66 9d"), Some((OpMap::OneByte, 0x9d, Legacy)));
        assert_eq!(
            pos(Long64, "66 48 01 c1"),
            Some((OpMap::OneByte, 0x01, Legacy))
        );
        assert_eq!(
            pos(Long64, "f3 48 a5"),
            Some((OpMap::OneByte, 0xa5, Legacy))
        );
        // 40-4F are INC/DEC outside 64-bit mode, REX inside it.
        assert_eq!(pos(Prot32, "48"), Some((OpMap::OneByte, 0x48, Legacy)));
        assert_eq!(pos(Long64, "48 90"), Some((OpMap::OneByte, 0x90, Legacy)));
        // 0F: SGDT (0F 01 /0), XGETBV (0F 01 D0), with a segment override.
        assert_eq!(
            pos(Prot16, "0f 01 06 00 81"),
            Some((OpMap::Map0F, 0x01, Legacy))
        );
        assert_eq!(
            pos(Prot32, "2e 0f 01 d0"),
            Some((OpMap::Map0F, 0x01, Legacy))
        );
        // 0F38 and 0F3A, with mandatory 66 and REX.W.
        assert_eq!(
            pos(Long64, "66 48 0f 38 f6 c1"),
            Some((OpMap::Map0F38, 0xf6, Legacy))
        );
        assert_eq!(
            pos(Prot32, "66 0f 3a 0f c1 01"),
            Some((OpMap::Map0F3A, 0x0f, Legacy))
        );
        // 3DNow!: the 0F 0F cell.
        assert_eq!(
            pos(Prot32, "0f 0f c1 0c"),
            Some((OpMap::Map0F, 0x0f, Legacy))
        );
    }

    #[test]
    fn vex_evex_and_xop_by_their_map_field() {
        use Encoding::*;
        use Mode::*;
        // VEX2 (map 0F implied) and VEX3 with mmmmm = 1, 2, 3.
        assert_eq!(pos(Long64, "c5 f8 77"), Some((OpMap::Map0F, 0x77, Vex)));
        assert_eq!(
            pos(Long64, "c4 e1 78 10 c1"),
            Some((OpMap::Map0F, 0x10, Vex))
        );
        assert_eq!(
            pos(Prot32, "c4 e2 71 f7 c2"),
            Some((OpMap::Map0F38, 0xf7, Vex))
        );
        assert_eq!(
            pos(Prot16, "c4 e3 71 0f c2 01"),
            Some((OpMap::Map0F3A, 0x0f, Vex))
        );
        // A legacy prefix before VEX is skipped like any other.
        assert_eq!(
            pos(Long64, "67 c5 f8 10 01"),
            Some((OpMap::Map0F, 0x10, Vex))
        );
        // Outside 64-bit mode C4/C5/62 with ModRM.mod != 3 are LES/LDS/BOUND.
        assert_eq!(
            pos(Prot32, "c5 06 00 81"),
            Some((OpMap::OneByte, 0xc5, Legacy))
        );
        assert_eq!(
            pos(Prot32, "c4 06 00 81"),
            Some((OpMap::OneByte, 0xc4, Legacy))
        );
        assert_eq!(
            pos(Prot16, "62 06 00 81"),
            Some((OpMap::OneByte, 0x62, Legacy))
        );
        // EVEX: map in P0's low three bits (1, 2, 3, and FP16's 5 and 6).
        assert_eq!(
            pos(Long64, "62 f1 7c 48 10 c1"),
            Some((OpMap::Map0F, 0x10, Evex))
        );
        assert_eq!(
            pos(Prot32, "62 f2 7d 48 58 c1"),
            Some((OpMap::Map0F38, 0x58, Evex))
        );
        assert_eq!(
            pos(Long64, "62 f5 7c 48 58 c1"),
            Some((OpMap::Other(5), 0x58, Evex))
        );
        // XOP: 8F with a map field of 8 or more; 8F /0 is POP.
        assert_eq!(
            pos(Long64, "8f e9 78 c1 c1"),
            Some((OpMap::Xop(9), 0xc1, Xop))
        );
        assert_eq!(
            pos(Prot32, "8f 06 00 81"),
            Some((OpMap::OneByte, 0x8f, Legacy))
        );
        // Bytes that end before the opcode.
        assert_eq!(pos(Long64, ""), None);
        assert_eq!(pos(Long64, "66 48"), None);
        assert_eq!(pos(Prot32, "0f"), None);
        assert_eq!(pos(Prot32, "0f 38"), Some((OpMap::Map0F, 0x38, Legacy)));
        assert_eq!(pos(Long64, "c4 e2 71"), None);
    }

    #[test]
    fn names_in_table_order() {
        let names: Vec<String> = OpMap::MAIN.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["one-byte", "0F", "0F38", "0F3A"]);
        assert_eq!(OpMap::Xop(8).to_string(), "XOP map 8");
        assert!(OpMap::Map0F3A < OpMap::Other(5) && OpMap::Other(6) < OpMap::Xop(8));
    }

    /// iced's own opcode tables agree with the byte rule for every catalog
    /// entry of every mode (each entry's `Code` gives its table and opcode).
    #[test]
    fn every_catalog_entry_sits_where_iced_puts_its_code() {
        let mut checked = 0;
        for mode in Mode::ALL {
            for e in crate::catalog::build(mode).entries {
                let code: iced_x86::Code = iced_x86::Code::values()
                    .find(|c| format!("{c:?}") == e.code)
                    .expect("an iced Code");
                let op = code.op_code();
                let map = match op.table() {
                    OpCodeTableKind::Normal => OpMap::OneByte,
                    OpCodeTableKind::T0F => OpMap::Map0F,
                    OpCodeTableKind::T0F38 => OpMap::Map0F38,
                    OpCodeTableKind::T0F3A => OpMap::Map0F3A,
                    OpCodeTableKind::MAP5 => OpMap::Other(5),
                    OpCodeTableKind::MAP6 => OpMap::Other(6),
                    OpCodeTableKind::MAP8 => OpMap::Xop(8),
                    OpCodeTableKind::MAP9 => OpMap::Xop(9),
                    OpCodeTableKind::MAP10 => OpMap::Xop(10),
                    other => panic!("{other:?}"),
                };
                // A two-byte opcode (`0F 01 D8`, `D9 E8`) sits in the cell
                // of its first byte.
                // iced gives 3DNow!'s suffix byte; the map has them at 0F 0F.
                let byte = if e.code.starts_with("D3NOW_") {
                    0x0f
                } else if op.op_code_len() == 2 {
                    (op.op_code() >> 8) as u8
                } else {
                    op.op_code() as u8
                };
                // A register in the opcode's low three bits (`40+rw`,
                // `0F C8+rd`) moves it within the eight cells from iced's.
                let plus_r = op.op_code_len() == 1
                    && op
                        .op_kinds()
                        .iter()
                        .any(|k| format!("{k:?}").ends_with("_opcode"));
                let p = position(mode, &e.bytes)
                    .unwrap_or_else(|| panic!("{mode} {} {:02x?}: no position", e.code, e.bytes));
                let cell = if plus_r { p.opcode & !7 } else { p.opcode };
                assert_eq!(
                    (p.map, cell),
                    (map, byte),
                    "{mode} {} {:02x?}",
                    e.code,
                    e.bytes
                );
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
