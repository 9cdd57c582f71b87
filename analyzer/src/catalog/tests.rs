use super::encode::{decode_at, MAX_LEN};
use super::*;
use crate::machine::{Gpr, Region, SelRole, Sym, DATA, PAGE, TEST_RIP};
use iced_x86::{Code, OpKind};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

fn catalogs() -> &'static Vec<(Mode, Catalog)> {
    static C: OnceLock<Vec<(Mode, Catalog)>> = OnceLock::new();
    C.get_or_init(|| Mode::ALL.iter().map(|&m| (m, build(m))).collect())
}

fn cat(mode: Mode) -> &'static Catalog {
    &catalogs()
        .iter()
        .find(|(m, _)| *m == mode)
        .expect("mode built")
        .1
}

/// Per mode: entry coverage of the codes that exist in it.
/// Floors are the achieved coverage minus a small margin.
#[test]
fn catalog_coverage_per_mode() {
    for (mode, c) in catalogs() {
        let existing: BTreeSet<String> = Code::values()
            .filter(|&code| is_cataloged(code) && exists_in(code, *mode))
            .map(|code| format!("{code:?}"))
            .collect();
        let covered: BTreeSet<&str> = c.entries.iter().map(|e| e.code.as_str()).collect();
        let skipped: BTreeSet<&str> = c.skipped.iter().map(|s| s.code.as_str()).collect();
        // Every existing code is either covered or skipped, never both, never dropped.
        for code in &existing {
            assert!(
                covered.contains(code.as_str()) != skipped.contains(code.as_str()),
                "{mode}: {code} covered={} skipped={}",
                covered.contains(code.as_str()),
                skipped.contains(code.as_str())
            );
        }
        let mut reasons: BTreeMap<String, (usize, Vec<&str>)> = BTreeMap::new();
        for s in &c.skipped {
            let key: String = s.reason.chars().take(90).collect();
            let r = reasons.entry(key).or_default();
            r.0 += 1;
            if r.1.len() < 3 {
                r.1.push(&s.code);
            }
        }
        let mut reasons: Vec<_> = reasons.into_iter().collect();
        reasons.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        let pct = 100.0 * covered.len() as f64 / existing.len() as f64;
        println!(
            "mode {mode}: {} codes exist, {} with entries ({pct:.1}%), {} skipped, {} entries",
            existing.len(),
            covered.len(),
            c.skipped.len(),
            c.entries.len()
        );
        for (r, (n, eg)) in reasons.iter().take(12) {
            println!("    {n:5}  {r}  (e.g. {})", eg.join(", "));
        }
        let cov = c.coverage(*mode);
        assert_eq!(
            (cov.existing, cov.covered, cov.skipped),
            (existing.len(), covered.len(), c.skipped.len())
        );
        // Achieved (iced 1.22): 99.6% in 16/32-bit code, 95.2% in 64-bit
        // (207 MVEX codes cannot be encoded by this iced build).
        let floor = match mode {
            Mode::Long64 => 94.5,
            _ => 99.0,
        };
        assert!(pct >= floor, "{mode}: coverage {pct:.1}% below {floor}%");
    }
}

#[test]
fn entries_decode_back_to_their_code() {
    for (mode, c) in catalogs() {
        for e in &c.entries {
            assert!(
                e.bytes.len() <= MAX_LEN,
                "{mode} {}: {} bytes",
                e.form,
                e.bytes.len()
            );
            let code = Code::values()
                .find(|c| format!("{c:?}") == e.code)
                .expect("code name");
            let d = decode_at(
                &e.bytes,
                mode.bitness(),
                super::encode::decoder_options(code.op_code(), mode.bitness()),
            );
            assert_eq!(format!("{:?}", d.code()), e.code, "{mode} {}", e.form);
            assert_eq!(d.len(), e.bytes.len(), "{mode} {}", e.form);
            assert_eq!(e.mode, *mode);
        }
    }
}

#[test]
fn memory_operands_stay_inside_the_data_page() {
    for (mode, c) in catalogs() {
        for e in c.entries.iter().take(usize::MAX) {
            let code = Code::values()
                .find(|c| format!("{c:?}") == e.code)
                .expect("code name");
            let d = decode_at(
                &e.bytes,
                mode.bitness(),
                super::encode::decoder_options(code.op_code(), mode.bitness()),
            );
            for i in 0..d.op_count() {
                if d.op_kind(i) == OpKind::Memory && d.memory_index() == iced_x86::Register::None {
                    let a = d.memory_displacement64();
                    let a = if mode.bitness() == 16 { a & 0xffff } else { a };
                    assert!(
                        (DATA..DATA + PAGE).contains(&a),
                        "{mode} {}: address {a:#x}",
                        e.form
                    );
                }
            }
            for m in &e.setup.mem {
                assert!(m.offset as u64 + m.size as u64 <= PAGE, "{mode} {}", e.form);
            }
        }
    }
}

fn has_reg(e: &Entry, g: Gpr, v: Sym) -> bool {
    e.setup.regs.contains(&(g, v))
}

#[test]
fn specific_entries_have_their_setup() {
    let c32 = cat(Mode::Prot32);
    let sgdt = c32.find_mnemonic("sgdt");
    assert!(!sgdt.is_empty());
    assert!(
        sgdt.iter().all(|e| e.form.contains("8100h")),
        "{:?}",
        sgdt[0].form
    );

    let mov_ds: Vec<_> = c32
        .find_mnemonic("mov")
        .into_iter()
        .filter(|e| {
            e.form.starts_with("mov ds,") && has_reg(e, Gpr::Rax, Sym::Sel(SelRole::AltData))
        })
        .collect();
    assert!(!mov_ds.is_empty(), "mov ds, ax with rax = AltData");

    let popfd = c32.find_mnemonic("popfd");
    assert!(!popfd.is_empty());
    assert!(popfd[0].setup.mem.iter().any(|m| m.region == Region::Stack
        && m.offset == 0x800
        && m.value == Sym::FlagsXor(0x3200)));

    let ltr = c32.find_mnemonic("ltr");
    assert!(!ltr.is_empty());
    assert!(ltr.iter().all(|e| e
        .setup
        .regs
        .iter()
        .any(|(_, v)| *v == Sym::Sel(SelRole::Tss))));

    for mode in Mode::ALL {
        let c = cat(mode);
        assert!(
            c.find_mnemonic("int")
                .iter()
                .any(|e| e.bytes == [0xcd, 0x80]),
            "{mode}: int 80h"
        );
        assert!(
            c.find_mnemonic("int")
                .iter()
                .any(|e| e.bytes == [0xcd, 0x21]),
            "{mode}: int 21h"
        );
    }

    let far = c32.find_code("Jmp_m1632");
    assert_eq!(far.len(), 1);
    let mem = &far[0].setup.mem;
    assert!(mem
        .iter()
        .any(|m| m.offset == 0x100 && m.size == 4 && m.value == Sym::Sentinel));
    assert!(mem
        .iter()
        .any(|m| m.offset == 0x104 && m.size == 2 && m.value == Sym::Sel(SelRole::OwnAltCode)));

    let gate = c32.find_code("Call_m1632");
    assert!(gate.iter().any(|e| e.form.contains("call gate")
        && e.setup
            .mem
            .iter()
            .any(|m| m.value == Sym::Sel(SelRole::CallGate))));

    // Direct far jump: offset and selector patched.
    let jf = c32.find_code("Jmp_ptr1632");
    assert_eq!(jf.len(), 1);
    let p = &jf[0].setup.patches;
    assert!(p
        .iter()
        .any(|x| x.value == Sym::Sentinel && x.size == 4 && x.offset == 1));
    assert!(p
        .iter()
        .any(|x| x.value == Sym::Sel(SelRole::OwnAltCode) && x.size == 2 && x.offset == 5));

    // Near branches land on the sentinel right after the instruction.
    for mode in Mode::ALL {
        for e in cat(mode)
            .find_mnemonic("jmp")
            .iter()
            .chain(cat(mode).find_mnemonic("je").iter())
        {
            let code = Code::values()
                .find(|c| format!("{c:?}") == e.code)
                .expect("code name");
            let d = decode_at(
                &e.bytes,
                mode.bitness(),
                super::encode::decoder_options(code.op_code(), mode.bitness()),
            );
            if matches!(
                d.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            ) {
                assert_eq!(
                    d.near_branch_target(),
                    TEST_RIP + e.bytes.len() as u64,
                    "{mode} {}",
                    e.form
                );
            }
        }
    }

    // Returns and IRET have a frame; MOV CR0 writes the image's CR0 with TS flipped.
    let c64 = cat(Mode::Long64);
    let iretq = c64.find_mnemonic("iretq");
    assert_eq!(iretq[0].setup.mem.len(), 5);
    let mov_cr0: Vec<_> = c64
        .find_code("Mov_cr_r64")
        .into_iter()
        .filter(|e| e.form.starts_with("mov cr0,"))
        .collect();
    assert!(
        has_reg(
            mov_cr0[0],
            Gpr::Rcx,
            Sym::Sys(crate::machine::SysValue::Cr0, crate::machine::CR0_TS)
        ),
        "{:?}",
        mov_cr0[0].setup
    );
    let ret = c64.find_code("Retnq");
    assert!(ret[0]
        .setup
        .mem
        .iter()
        .any(|m| m.value == Sym::Sentinel && m.size == 8));
}

#[test]
fn lookup_and_suggestions() {
    let c = cat(Mode::Prot32);
    assert!(!c.find_mnemonic("SGDT").is_empty());
    assert!(c.find_mnemonic("nosuchinsn").is_empty());
    let s = c.suggest("sgtd", 3);
    assert!(s.contains(&"sgdt".to_string()), "{s:?}");
    assert_eq!(c.suggest("x", 5).len(), 5);
    assert_eq!(edit_distance("sgtd", "sgdt"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}

#[test]
fn building_is_deterministic() {
    for mode in [Mode::Prot16, Mode::Long64] {
        assert_eq!(&build(mode), cat(mode));
    }
    let all = build_all(&[Mode::Prot32, Mode::Long64]);
    assert_eq!(
        all.entries.len(),
        cat(Mode::Prot32).entries.len() + cat(Mode::Long64).entries.len()
    );
}

/// One `Code`'s entries, built alone, are the catalog's entries of it.
#[test]
fn one_codes_entries_are_the_catalogs() {
    for mode in [Mode::Long64, Mode::Real, Mode::Compat32] {
        let c = cat(mode);
        let mut names: BTreeSet<&str> = c.entries.iter().map(|e| e.code.as_str()).collect();
        names.extend(c.skipped.iter().map(|s| s.code.as_str()));
        assert!(names.len() > 1000, "{mode:?}: {} codes", names.len());
        for name in names {
            let alone = code_entries(mode, name);
            let from_catalog: Vec<Entry> = c.find_code(name).into_iter().cloned().collect();
            assert_eq!(alone, from_catalog, "{mode:?} {name}");
        }
    }
    let sgdt = code_entries(Mode::Long64, " sgdt_M1664 ");
    assert!(!sgdt.is_empty());
    assert_eq!(sgdt, code_entries(Mode::Long64, "Sgdt_m1664"));
    assert!(code_entries(Mode::Long64, "no_such_code").is_empty());
    // Not in the mode: no entries (PUSH ES does not exist in 64-bit mode).
    assert!(code_entries(Mode::Long64, "Pushd_ES").is_empty());
    assert!(!code_entries(Mode::Prot32, "Pushd_ES").is_empty());
}

/// Every `Code` is found by its name, as entries spell it and in any case.
#[test]
fn every_code_is_found_by_its_name() {
    for c in Code::values() {
        let name = format!("{c:?}");
        assert_eq!(code_named(&name), Some(c), "{name}");
        assert_eq!(code_named(&name.to_ascii_uppercase()), Some(c), "{name}");
    }
    assert_eq!(code_named(" nopd "), Some(Code::Nopd));
    assert_eq!(code_named("no_such_code"), None);
}

/// Writes every entry to `/tmp/popek-catalog-<mode>.txt` for review:
/// `cargo test -p analyzer dump_catalog -- --ignored`.
#[test]
#[ignore]
fn dump_catalog() {
    use std::fmt::Write as _;
    for (mode, c) in catalogs() {
        let mut out = String::new();
        for e in &c.entries {
            let hex: String = e.bytes.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(out, "{:28} {:40} {hex:30} {:?}", e.code, e.form, e.setup);
        }
        for s in &c.skipped {
            let _ = writeln!(out, "SKIPPED {} {}", s.code, s.reason);
        }
        std::fs::write(format!("/tmp/popek-catalog-{}.txt", mode.name()), out).expect("write dump");
    }
}

/// Every far-pointer load names its segment load, and every documented
/// reading of its operand gives the intended selector on both sides: for
/// REX.W LSS/LFS/LGS, Intel's m16:64 (selector at +8) and AMD's m16:32
/// (REX.W ignored, selector at +4).
#[test]
fn far_pointer_loads_give_the_intended_selector_at_every_reading() {
    use crate::machine::{GuestImage, Variant};
    use crate::observe::Side;
    let cfg = crate::mode::Config::UMIP_OFF;
    let mut wide = 0;
    for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64] {
        let img = GuestImage::build(mode, cfg, Variant::base(&cfg));
        for e in cat(mode)
            .entries
            .iter()
            .filter(|e| ["lds", "les", "lfs", "lgs", "lss"].contains(&e.mnemonic.as_str()))
        {
            let load = e
                .setup
                .seg_load
                .unwrap_or_else(|| panic!("{mode} {}", e.form));
            let want_seg = match e.mnemonic.as_str() {
                "lss" => 1,
                "lds" => 2,
                "les" => 3,
                "lfs" => 4,
                _ => 5,
            };
            assert_eq!(load.seg, want_seg, "{mode} {}", e.form);
            assert_eq!(load.region, Region::Data);
            let role = if e.mnemonic == "lss" {
                SelRole::OwnAltStack
            } else {
                SelRole::AltData
            };
            let offset_bytes: u16 = if e.code.ends_with("m1616") {
                2
            } else if e.code.ends_with("m1632") {
                4
            } else {
                8
            };
            assert_eq!(load.offset, 0x100 + offset_bytes, "{mode} {}", e.form);
            for side in Side::BOTH {
                let p = img.prepare(side, &e.bytes, &e.setup).expect("side");
                let at = |o: u16| {
                    u16::from_le_bytes([p.data_page[o as usize], p.data_page[o as usize + 1]])
                };
                let want = img.selector(side, role);
                assert_eq!(at(load.offset), want, "{mode} {side} {}", e.form);
                if offset_bytes == 8 {
                    wide += 1;
                    // AMD's reading: a 4-byte offset, the selector at +4.
                    assert_eq!(at(0x104), want, "{mode} {side} {}: m16:32 reading", e.form);
                    let lo = u32::from_le_bytes(p.data_page[0x100..0x104].try_into().unwrap());
                    let full = u64::from_le_bytes(p.data_page[0x100..0x108].try_into().unwrap());
                    assert_eq!(
                        full,
                        lo as u64 | (want as u64) << 32,
                        "{mode} {side} {}",
                        e.form
                    );
                }
            }
        }
    }
    assert_eq!(wide, 6, "LSS, LFS and LGS with REX.W, on both sides");
}
