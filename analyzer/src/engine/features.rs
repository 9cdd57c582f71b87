//! What an engine says about itself: its CPUID leaves and XCR0, probed once
//! per engine and mode by running CPUID and XGETBV through the engine's own
//! [`Engine::run`] (so it works for every engine), and the pure decision
//! whether an instruction must raise #UD on that engine ([`must_ud`]).
//!
//! The decision is data-driven: iced's CPUID features of the instruction
//! ([`crate::catalog::DocMeta::cpuid`]) looked up in [`FEATURE_BITS`] (the
//! CPUID bit each feature is documented at), and its encoding (a VEX- or
//! EVEX-encoded vector instruction needs CR4.OSXSAVE, seen as
//! CPUID.01H:ECX.OSXSAVE, and the XCR0 state components of its registers).
//! An instruction that completes where the engine's own CPUID or XCR0 says
//! it must #UD was run as something else: an engine deviation, not a
//! verdict ([`crate::deviation`]).
//!
//! What it does not claim:
//! - Features without a CPUID bit (8086 ... 486, CPUID, PAUSE, RDPMC, Cyrix,
//!   ...) and features named "A or B" are not looked up.
//! - Encodings that a CPU without the feature runs as another instruction by
//!   the architecture are left alone: iced's decoder for older CPUs
//!   ([`OLDER_CPU`]: the reserved-NOP space 0F 0D and 0F 18-1F, PAUSE as
//!   NOP, WBNOINVD as WBINVD, TZCNT/LZCNT as BSF/BSR) decodes them as a
//!   different `Code`, so a missing feature does not mean #UD there (RDSSP,
//!   ENDBR, CLDEMOTE, PREFETCHW, MPX are NOPs then).
//! - Codes that need a decoder option of their own (Knights Corner, Cyrix,
//!   MPX, ...) are not ISA the engine's CPUID describes: not judged.
//! - Where a probe run does not complete (XGETBV on KVM's PVM), that value
//!   is unknown and nothing is decided from it.

use super::Engine;
use crate::catalog::Entry;
use crate::machine::{Gpr, GuestImage, Setup, Sym, Variant};
use crate::mode::Mode;
use crate::observe::{Outcome, Side};
use iced_x86::{DecoderOptions, EncodingKind, OpKind, Register};
use std::collections::BTreeMap;
use std::fmt;

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        })
    }
}

/// Where a CPUID feature bit is: leaf, subleaf, register, bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bit {
    pub leaf: u32,
    pub sub: u32,
    pub reg: Reg,
    pub bit: u8,
}

impl fmt::Display for Bit {
    /// `CPUID.(EAX=07H,ECX=0):ECX[5]`, the SDM's notation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CPUID.(EAX={:02X}H,ECX={}):{}[{}]",
            self.leaf, self.sub, self.reg, self.bit
        )
    }
}

const fn b(leaf: u32, sub: u32, reg: Reg, bit: u8) -> Bit {
    Bit {
        leaf,
        sub,
        reg,
        bit,
    }
}

/// iced's CPUID features (`CpuidFeature` names) and the CPUID bit each one
/// is documented at (iced-x86 1.22 `CpuidFeature` docs, Intel SDM vol. 2A
/// CPUID, AMD APM vol. 3 appendix E).
pub const FEATURE_BITS: &[(&str, Bit)] = {
    use Reg::*;
    const E1: u32 = 0x8000_0001;
    const E8: u32 = 0x8000_0008;
    const E1F: u32 = 0x8000_001F;
    &[
        ("FPU", b(1, 0, Edx, 0)),
        ("TSC", b(1, 0, Edx, 4)),
        ("MSR", b(1, 0, Edx, 5)),
        ("CX8", b(1, 0, Edx, 8)),
        ("SEP", b(1, 0, Edx, 11)),
        ("CMOV", b(1, 0, Edx, 15)),
        ("CLFSH", b(1, 0, Edx, 19)),
        ("MMX", b(1, 0, Edx, 23)),
        ("FXSR", b(1, 0, Edx, 24)),
        ("SSE", b(1, 0, Edx, 25)),
        ("SSE2", b(1, 0, Edx, 26)),
        ("SSE3", b(1, 0, Ecx, 0)),
        ("PCLMULQDQ", b(1, 0, Ecx, 1)),
        ("MONITOR", b(1, 0, Ecx, 3)),
        ("VMX", b(1, 0, Ecx, 5)),
        ("SMX", b(1, 0, Ecx, 6)),
        ("SSSE3", b(1, 0, Ecx, 9)),
        ("FMA", b(1, 0, Ecx, 12)),
        ("CMPXCHG16B", b(1, 0, Ecx, 13)),
        ("SSE4_1", b(1, 0, Ecx, 19)),
        ("SSE4_2", b(1, 0, Ecx, 20)),
        ("MOVBE", b(1, 0, Ecx, 22)),
        ("POPCNT", b(1, 0, Ecx, 23)),
        ("AES", b(1, 0, Ecx, 25)),
        ("XSAVE", b(1, 0, Ecx, 26)),
        ("AVX", b(1, 0, Ecx, 28)),
        ("F16C", b(1, 0, Ecx, 29)),
        ("RDRAND", b(1, 0, Ecx, 30)),
        ("FSGSBASE", b(7, 0, Ebx, 0)),
        ("BMI1", b(7, 0, Ebx, 3)),
        ("AVX2", b(7, 0, Ebx, 5)),
        ("BMI2", b(7, 0, Ebx, 8)),
        ("INVPCID", b(7, 0, Ebx, 10)),
        ("RTM", b(7, 0, Ebx, 11)),
        ("MPX", b(7, 0, Ebx, 14)),
        ("AVX512F", b(7, 0, Ebx, 16)),
        ("AVX512DQ", b(7, 0, Ebx, 17)),
        ("RDSEED", b(7, 0, Ebx, 18)),
        ("ADX", b(7, 0, Ebx, 19)),
        ("SMAP", b(7, 0, Ebx, 20)),
        ("AVX512_IFMA", b(7, 0, Ebx, 21)),
        ("PCOMMIT", b(7, 0, Ebx, 22)),
        ("CLFLUSHOPT", b(7, 0, Ebx, 23)),
        ("CLWB", b(7, 0, Ebx, 24)),
        ("AVX512PF", b(7, 0, Ebx, 26)),
        ("AVX512ER", b(7, 0, Ebx, 27)),
        ("AVX512CD", b(7, 0, Ebx, 28)),
        ("SHA", b(7, 0, Ebx, 29)),
        ("AVX512BW", b(7, 0, Ebx, 30)),
        ("AVX512VL", b(7, 0, Ebx, 31)),
        ("PREFETCHWT1", b(7, 0, Ecx, 0)),
        ("AVX512_VBMI", b(7, 0, Ecx, 1)),
        ("PKU", b(7, 0, Ecx, 3)),
        ("WAITPKG", b(7, 0, Ecx, 5)),
        ("AVX512_VBMI2", b(7, 0, Ecx, 6)),
        ("CET_SS", b(7, 0, Ecx, 7)),
        ("GFNI", b(7, 0, Ecx, 8)),
        ("VAES", b(7, 0, Ecx, 9)),
        ("VPCLMULQDQ", b(7, 0, Ecx, 10)),
        ("AVX512_VNNI", b(7, 0, Ecx, 11)),
        ("AVX512_BITALG", b(7, 0, Ecx, 12)),
        ("AVX512_VPOPCNTDQ", b(7, 0, Ecx, 14)),
        ("RDPID", b(7, 0, Ecx, 22)),
        ("KL", b(7, 0, Ecx, 23)),
        ("CLDEMOTE", b(7, 0, Ecx, 25)),
        ("MOVDIRI", b(7, 0, Ecx, 27)),
        ("MOVDIR64B", b(7, 0, Ecx, 28)),
        ("ENQCMD", b(7, 0, Ecx, 29)),
        ("AVX512_4VNNIW", b(7, 0, Edx, 2)),
        ("AVX512_4FMAPS", b(7, 0, Edx, 3)),
        ("UINTR", b(7, 0, Edx, 5)),
        ("AVX512_VP2INTERSECT", b(7, 0, Edx, 8)),
        ("SERIALIZE", b(7, 0, Edx, 14)),
        ("TSXLDTRK", b(7, 0, Edx, 16)),
        ("PCONFIG", b(7, 0, Edx, 18)),
        ("CET_IBT", b(7, 0, Edx, 20)),
        ("AMX_BF16", b(7, 0, Edx, 22)),
        ("AVX512_FP16", b(7, 0, Edx, 23)),
        ("AMX_TILE", b(7, 0, Edx, 24)),
        ("AMX_INT8", b(7, 0, Edx, 25)),
        ("SHA512", b(7, 1, Eax, 0)),
        ("SM3", b(7, 1, Eax, 1)),
        ("SM4", b(7, 1, Eax, 2)),
        ("RAO_INT", b(7, 1, Eax, 3)),
        ("AVX_VNNI", b(7, 1, Eax, 4)),
        ("AVX512_BF16", b(7, 1, Eax, 5)),
        ("CMPCCXADD", b(7, 1, Eax, 7)),
        ("FRED", b(7, 1, Eax, 17)),
        ("LKGS", b(7, 1, Eax, 18)),
        ("WRMSRNS", b(7, 1, Eax, 19)),
        ("AMX_FP16", b(7, 1, Eax, 21)),
        ("HRESET", b(7, 1, Eax, 22)),
        ("AVX_IFMA", b(7, 1, Eax, 23)),
        ("MSRLIST", b(7, 1, Eax, 27)),
        ("TSE", b(7, 1, Ebx, 1)),
        ("AVX_VNNI_INT8", b(7, 1, Edx, 4)),
        ("AVX_NE_CONVERT", b(7, 1, Edx, 5)),
        ("AMX_COMPLEX", b(7, 1, Edx, 8)),
        ("AVX_VNNI_INT16", b(7, 1, Edx, 10)),
        ("PREFETCHITI", b(7, 1, Edx, 14)),
        ("XSAVEOPT", b(0xD, 1, Eax, 0)),
        ("XSAVEC", b(0xD, 1, Eax, 1)),
        ("XSAVES", b(0xD, 1, Eax, 3)),
        ("PTWRITE", b(0x14, 0, Ebx, 4)),
        ("AESKLE", b(0x19, 0, Ebx, 0)),
        ("WIDE_KL", b(0x19, 0, Ebx, 2)),
        ("SVM", b(E1, 0, Ecx, 2)),
        ("LZCNT", b(E1, 0, Ecx, 5)),
        ("SSE4A", b(E1, 0, Ecx, 6)),
        ("PREFETCHW", b(E1, 0, Ecx, 8)),
        ("XOP", b(E1, 0, Ecx, 11)),
        ("SKINIT", b(E1, 0, Ecx, 12)),
        ("LWP", b(E1, 0, Ecx, 15)),
        ("FMA4", b(E1, 0, Ecx, 16)),
        ("TBM", b(E1, 0, Ecx, 21)),
        ("MONITORX", b(E1, 0, Ecx, 29)),
        ("SYSCALL", b(E1, 0, Edx, 11)),
        ("RDTSCP", b(E1, 0, Edx, 27)),
        ("X64", b(E1, 0, Edx, 29)),
        ("D3NOWEXT", b(E1, 0, Edx, 30)),
        ("D3NOW", b(E1, 0, Edx, 31)),
        ("CLZERO", b(E8, 0, Ebx, 0)),
        ("INVLPGB", b(E8, 0, Ebx, 3)),
        ("RDPRU", b(E8, 0, Ebx, 4)),
        ("MCOMMIT", b(E8, 0, Ebx, 8)),
        ("WBNOINVD", b(E8, 0, Ebx, 9)),
        ("SEV_ES", b(E1F, 0, Eax, 3)),
        ("SEV_SNP", b(E1F, 0, Eax, 4)),
        ("RMPQUERY", b(E1F, 0, Eax, 6)),
    ]
};

/// CPUID.01H:ECX.OSXSAVE: CR4.OSXSAVE as the processor reports it.
pub const OSXSAVE: Bit = b(1, 0, Reg::Ecx, 27);

/// XCR0 state components (Intel SDM vol. 1 13.1).
pub const XCR0_SSE: u64 = 1 << 1;
pub const XCR0_AVX: u64 = 1 << 2;
/// Opmask, ZMM_Hi256 and Hi16_ZMM (AVX-512).
pub const XCR0_AVX512: u64 = 0b111 << 5;
/// TILECFG and TILEDATA (AMX).
pub const XCR0_AMX: u64 = 0b11 << 17;

/// The decoder options of a CPU that predates the newer instructions whose
/// encodings older CPUs ran as something else: those are decoded as what an
/// older CPU runs (reserved NOPs, NOP, WBINVD, BSF, BSR).
pub const OLDER_CPU: u32 = DecoderOptions::FORCE_RESERVED_NOP
    | DecoderOptions::NO_PAUSE
    | DecoderOptions::NO_WBNOINVD
    | DecoderOptions::NO_MPFX_0FBC
    | DecoderOptions::NO_MPFX_0FBD;

/// What an engine reported about itself in one mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineFeatures {
    /// (leaf, subleaf) -> EAX, EBX, ECX, EDX, for every leaf probed.
    pub leaves: BTreeMap<(u32, u32), [u32; 4]>,
    /// CPUID.00H:EAX and CPUID.80000000H:EAX (0 where the latter is not a
    /// valid extended leaf count).
    pub max_basic: u32,
    pub max_extended: u32,
    /// XGETBV(0), when it completed.
    pub xcr0: Option<u64>,
}

/// The state of one feature bit on an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Has {
    Yes,
    No,
    /// The leaf was not probed (it is not in [`FEATURE_BITS`]).
    Unknown,
}

impl EngineFeatures {
    /// Whether the engine reports `bit` set. A leaf above the engine's
    /// maximum (basic or extended) reports nothing: the feature is absent.
    pub fn has(&self, bit: Bit) -> Has {
        let max = if bit.leaf >= 0x8000_0000 {
            self.max_extended
        } else {
            self.max_basic
        };
        if bit.leaf > max || (bit.leaf == 7 && bit.sub > 0 && self.sub7_max() < bit.sub) {
            return Has::No;
        }
        match self.leaves.get(&(bit.leaf, bit.sub)) {
            Some(r) if r[bit.reg.index()] >> bit.bit & 1 == 1 => Has::Yes,
            Some(_) => Has::No,
            None => Has::Unknown,
        }
    }

    /// CPUID.(EAX=07H,ECX=0):EAX, the highest subleaf of leaf 7.
    fn sub7_max(&self) -> u32 {
        self.leaves.get(&(7, 0)).map_or(0, |r| r[0])
    }
}

/// The CPUID bit iced's feature `name` is documented at, if it is one.
pub fn bit_of(name: &str) -> Option<Bit> {
    FEATURE_BITS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bit)| *bit)
}

/// Probes the engine in `image` (its user side where it has one, else the
/// supervisor): CPUID leaf 0 and 80000000H, every leaf [`FEATURE_BITS`]
/// names up to the engine's maximum, and XGETBV(0). `None` when CPUID leaf 0
/// does not complete with a vendor and at least leaf 1 (an engine that
/// does not model CPUID, such as a fake): then nothing is decided.
pub fn probe(engine: &mut dyn Engine, image: &GuestImage) -> Option<EngineFeatures> {
    let sides: &[Side] = if image.user.is_some() {
        &[Side::User, Side::Supervisor]
    } else {
        &[Side::Supervisor]
    };
    let mut run = |bytes: &[u8], regs: Vec<(Gpr, Sym)>| -> Option<[u64; 16]> {
        let setup = Setup {
            regs,
            ..Setup::default()
        };
        sides.iter().find_map(|&side| {
            let p = image.prepare(side, bytes, &setup)?;
            let o = engine.run(image, side, &p);
            match (&o.outcome, o.user) {
                (
                    Outcome::Completed {
                        at_sentinel: true, ..
                    },
                    Some(u),
                ) => Some(u.gprs),
                _ => None,
            }
        })
    };
    let mut cpuid = |leaf: u32, sub: u32| {
        run(
            &[0x0F, 0xA2],
            vec![
                (Gpr::Rax, Sym::Imm(leaf as u64)),
                (Gpr::Rcx, Sym::Imm(sub as u64)),
            ],
        )
        .map(|g| {
            let r = |x: Gpr| g[x.index()] as u32;
            [r(Gpr::Rax), r(Gpr::Rbx), r(Gpr::Rcx), r(Gpr::Rdx)]
        })
    };
    let l0 = cpuid(0, 0)?;
    if l0[0] == 0 || l0[1] | l0[2] | l0[3] == 0 {
        return None;
    }
    let mut f = EngineFeatures {
        max_basic: l0[0],
        ..EngineFeatures::default()
    };
    f.leaves.insert((0, 0), l0);
    if let Some(e0) = cpuid(0x8000_0000, 0) {
        if (0x8000_0000..=0x8000_00FF).contains(&e0[0]) {
            f.max_extended = e0[0];
        }
        f.leaves.insert((0x8000_0000, 0), e0);
    }
    let mut wanted: Vec<(u32, u32)> = FEATURE_BITS
        .iter()
        .map(|(_, bit)| (bit.leaf, bit.sub))
        .chain([(OSXSAVE.leaf, OSXSAVE.sub)])
        .collect();
    wanted.sort();
    wanted.dedup();
    for (leaf, sub) in wanted {
        let max = if leaf >= 0x8000_0000 {
            f.max_extended
        } else {
            f.max_basic
        };
        if leaf > max || (leaf == 7 && sub > f.sub7_max()) {
            continue;
        }
        if let Some(r) = cpuid(leaf, sub) {
            f.leaves.insert((leaf, sub), r);
        }
    }
    f.xcr0 = run(&[0x0F, 0x01, 0xD0], vec![(Gpr::Rcx, Sym::Imm(0))])
        .map(|g| (g[Gpr::Rdx.index()] & 0xFFFF_FFFF) << 32 | (g[Gpr::Rax.index()] & 0xFFFF_FFFF));
    Some(f)
}

/// [`probe`] once per mode, in the base state of the first image of each
/// mode among `images` whose variant is its configuration's base.
pub fn probe_modes<'i>(
    engine: &mut dyn Engine,
    images: impl IntoIterator<Item = &'i GuestImage>,
) -> BTreeMap<Mode, EngineFeatures> {
    let mut out = BTreeMap::new();
    let mut tried = Vec::new();
    for img in images {
        if img.variant != Variant::base(&img.config) || tried.contains(&img.mode) {
            continue;
        }
        tried.push(img.mode);
        if let Some(f) = probe(engine, img) {
            out.insert(img.mode, f);
        }
    }
    out
}

/// Whether any of `entries` has something [`must_ud`] can look at, so a
/// scan needs the probe at all.
pub fn worth_probing<'e>(entries: impl IntoIterator<Item = &'e Entry>) -> bool {
    entries.into_iter().any(|e| !e.doc.cpuid.is_empty())
}

/// XCR0 state components a VEX- or EVEX-encoded instruction needs, from its
/// registers: SSE and AVX state for any XMM/YMM/ZMM register (or a VSIB
/// index), AVX-512 state too for EVEX, AMX state for tile registers; none
/// for a VEX instruction on general registers only (BMI1, BMI2).
fn xcr0_needed(instr: &iced_x86::Instruction, encoding: EncodingKind) -> u64 {
    if !matches!(encoding, EncodingKind::VEX | EncodingKind::EVEX) {
        return 0;
    }
    let vector = |r: Register| r.is_xmm() || r.is_ymm() || r.is_zmm();
    let mut need = 0;
    for i in 0..instr.op_count() {
        match instr.op_kind(i) {
            OpKind::Register if vector(instr.op_register(i)) => need |= XCR0_SSE | XCR0_AVX,
            OpKind::Register if instr.op_register(i).is_tmm() => need |= XCR0_AMX,
            OpKind::Memory if vector(instr.memory_index()) => need |= XCR0_SSE | XCR0_AVX,
            _ => {}
        }
    }
    if encoding == EncodingKind::EVEX && need & XCR0_AVX != 0 {
        need |= XCR0_AVX512;
    }
    need
}

/// Why `entry` must raise #UD on an engine that reports `f`, if it must:
/// a CPUID feature it needs is absent, or it is a VEX/EVEX vector
/// instruction and CR4.OSXSAVE is clear or XCR0 lacks its state. `None`
/// where nothing says so (or nothing is known). Pure.
pub fn must_ud(f: &EngineFeatures, entry: &Entry) -> Option<String> {
    let code = crate::catalog::code_named(&entry.code)?;
    let op = code.op_code();
    if op.decoder_option() != DecoderOptions::NONE {
        return None;
    }
    let bitness = entry.mode.bitness();
    let options = crate::catalog::decoder_options(op, bitness);
    let instr = crate::catalog::decode_at(&entry.bytes, bitness, options);
    if instr.code() != code {
        return None;
    }
    let older = crate::catalog::decode_at(&entry.bytes, bitness, options | OLDER_CPU);
    if older.code() != code {
        // A CPU without the feature runs these bytes as `older` (a NOP, BSF, ...).
        return None;
    }
    let mut why = Vec::new();
    for name in &entry.doc.cpuid {
        if let Some(bit) = bit_of(name) {
            if f.has(bit) == Has::No {
                why.push(format!("its CPUID lacks {name} ({bit} = 0)"));
            }
        }
    }
    let need = xcr0_needed(&instr, op.encoding());
    if need != 0 {
        let enc = format!("{:?}", op.encoding());
        if f.has(OSXSAVE) == Has::No {
            why.push(format!(
                "its CPUID shows CR4.OSXSAVE clear ({OSXSAVE} = 0), which {enc} vector instructions need"
            ));
        } else if let Some(xcr0) = f.xcr0 {
            let lacks = need & !xcr0;
            if lacks != 0 {
                why.push(format!(
                    "its XCR0 {xcr0:#x} lacks {lacks:#x} ({enc} on these registers needs {need:#x})"
                ));
            }
        }
    }
    if why.is_empty() {
        None
    } else {
        Some(why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::DocMeta;

    /// A Haswell-like engine (Unicorn's model): AVX in CPUID, OSXSAVE set,
    /// XCR0 = x87 | SSE, no WAITPKG, no CET, no AVX-512.
    fn haswell_like() -> EngineFeatures {
        let mut f = EngineFeatures {
            max_basic: 0xD,
            max_extended: 0x8000_0008,
            xcr0: Some(0x3),
            ..EngineFeatures::default()
        };
        let ecx1 = (1 << 28) | (1 << 27) | (1 << 26) | (1 << 0) | (1 << 19) | (1 << 20);
        f.leaves.insert((1, 0), [0, 0, ecx1, (1 << 25) | (1 << 26)]);
        f.leaves.insert((7, 0), [0, (1 << 3) | (1 << 8), 0, 0]);
        f.leaves.insert((0x8000_0001, 0), [0, 0, 1 << 5, 1 << 29]);
        f
    }

    /// The catalog entry of `code` in `mode` (its first form).
    fn entry(mode: Mode, code: &str) -> Entry {
        crate::catalog::build(mode)
            .find_code(code)
            .first()
            .map(|e| (*e).clone())
            .unwrap_or_else(|| panic!("{mode}: no {code}"))
    }

    #[test]
    fn the_feature_table_names_iced_features_and_no_feature_twice() {
        let names: Vec<String> = iced_x86::CpuidFeature::values()
            .map(|f| format!("{f:?}"))
            .collect();
        for (i, (n, bit)) in FEATURE_BITS.iter().enumerate() {
            assert!(names.iter().any(|x| x == n), "{n} is no iced CpuidFeature");
            assert!(bit.bit < 32);
            assert!(
                !FEATURE_BITS[..i].iter().any(|(m, _)| m == n),
                "{n} listed twice"
            );
        }
        assert_eq!(
            bit_of("WAITPKG").map(|b| b.to_string()).as_deref(),
            Some("CPUID.(EAX=07H,ECX=0):ECX[5]")
        );
    }

    #[test]
    fn absent_features_and_missing_xcr0_state_mean_ud() {
        let f = haswell_like();
        for (mode, code, why) in [
            (Mode::Long64, "Incsspq_r64", "lacks CET_SS"),
            (Mode::Long64, "Umonitor_r64", "lacks WAITPKG"),
            (Mode::Prot32, "Tpause_r32", "lacks WAITPKG"),
            (
                Mode::Long64,
                "VEX_Vaddps_xmm_xmm_xmmm128",
                "XCR0 0x3 lacks 0x4",
            ),
            (
                Mode::Long64,
                "EVEX_Vaddps_zmm_k1z_zmm_zmmm512b32_er",
                "lacks AVX512F",
            ),
            (
                Mode::Long64,
                "EVEX_Vaddps_zmm_k1z_zmm_zmmm512b32_er",
                "XCR0 0x3 lacks 0xe4",
            ),
        ] {
            let e = entry(mode, code);
            let got = must_ud(&f, &e).unwrap_or_else(|| panic!("{mode} {code}: no reason"));
            assert!(got.contains(why), "{mode} {code}: {got}");
        }
        // Present, or on general registers only, or no CPUID bit: nothing.
        for (mode, code) in [
            (Mode::Long64, "Add_rm64_r64"),
            (Mode::Long64, "VEX_Andn_r64_r64_rm64"),
            (Mode::Prot32, "Addps_xmm_xmmm128"),
            (Mode::Long64, "Lzcnt_r64_rm64"),
            (Mode::Long64, "Cpuid"),
        ] {
            assert_eq!(must_ud(&f, &entry(mode, code)), None, "{mode} {code}");
        }
        // With AVX state enabled the VEX instruction may complete.
        let avx = EngineFeatures {
            xcr0: Some(0x7),
            ..haswell_like()
        };
        assert_eq!(
            must_ud(&avx, &entry(Mode::Long64, "VEX_Vaddps_xmm_xmm_xmmm128")),
            None
        );
        // XCR0 unknown (XGETBV did not complete): no claim from it, but a
        // clear CR4.OSXSAVE is enough.
        let unknown = EngineFeatures {
            xcr0: None,
            ..haswell_like()
        };
        assert_eq!(
            must_ud(&unknown, &entry(Mode::Long64, "VEX_Vaddps_xmm_xmm_xmmm128")),
            None
        );
        let mut no_osxsave = unknown;
        no_osxsave.leaves.get_mut(&(1, 0)).expect("leaf 1")[2] &= !(1 << 27);
        assert!(must_ud(
            &no_osxsave,
            &entry(Mode::Long64, "VEX_Vaddps_xmm_xmm_xmmm128")
        )
        .is_some_and(|w| w.contains("CR4.OSXSAVE clear")));
    }

    #[test]
    fn encodings_older_cpus_run_as_something_else_are_not_judged() {
        // RDSSP and ENDBR64 are NOPs without CET (reserved-NOP space), TZCNT
        // is BSF without BMI1: a missing feature does not mean #UD.
        let none = EngineFeatures {
            max_basic: 7,
            max_extended: 0x8000_0001,
            xcr0: Some(1),
            leaves: [
                ((1, 0), [0; 4]),
                ((7, 0), [0; 4]),
                ((0x8000_0001, 0), [0; 4]),
            ]
            .into_iter()
            .collect(),
        };
        for code in ["Rdsspq_r64", "Endbr64", "Tzcnt_r64_rm64", "Pause"] {
            assert_eq!(must_ud(&none, &entry(Mode::Long64, code)), None, "{code}");
        }
        // A leaf above the engine's maximum reports nothing: absent.
        let low = EngineFeatures {
            max_basic: 1,
            ..none
        };
        assert!(must_ud(&low, &entry(Mode::Long64, "Incsspq_r64"))
            .is_some_and(|w| w.contains("lacks CET_SS")));
    }

    /// An engine that answers CPUID and XGETBV from tables and completes
    /// everything else with the registers it was given.
    struct Answers {
        leaves: BTreeMap<(u32, u32), [u32; 4]>,
        xcr0: Option<u64>,
        runs: usize,
    }

    impl Engine for Answers {
        fn name(&self) -> &'static str {
            "answers"
        }
        fn version(&self) -> String {
            "answers 1".into()
        }
        fn run(
            &mut self,
            _: &GuestImage,
            side: Side,
            test: &crate::machine::Prepared,
        ) -> crate::observe::Observation {
            use crate::engine::fake::obs;
            use crate::observe::{SystemState, UserState};
            self.runs += 1;
            let mut g = test.gprs;
            let sys = SystemState {
                cpl: if side == Side::User { 3 } else { 0 },
                ..SystemState::default()
            };
            match test.encoding() {
                [0x0F, 0xA2] => {
                    let key = (g[0] as u32, g[1] as u32);
                    // Above the maximum, hardware repeats the highest leaf:
                    // the probe must not ask.
                    let r = self.leaves.get(&key).copied().unwrap_or([0xDEAD; 4]);
                    g[0] = r[0] as u64;
                    g[3] = r[1] as u64;
                    g[1] = r[2] as u64;
                    g[2] = r[3] as u64;
                }
                [0x0F, 0x01, 0xD0] => match self.xcr0 {
                    Some(x) => {
                        g[0] = x & 0xFFFF_FFFF;
                        g[2] = x >> 32;
                    }
                    None => return obs::trap(13, Some(0), sys),
                },
                _ => {}
            }
            obs::completed(
                sys,
                UserState {
                    gprs: g,
                    rip: test.sentinel,
                    ..UserState::default()
                },
            )
        }
    }

    #[test]
    fn the_probe_runs_cpuid_and_xgetbv_through_the_engine() {
        let cfg = crate::mode::Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        let vendor = [0x7, 0x756e_6547, 0x6c65_746e, 0x4965_6e69];
        let mut e = Answers {
            leaves: [
                ((0, 0), vendor),
                ((1, 0), [0, 0, 1 << 27, 0]),
                ((7, 0), [0, 1 << 3, 0, 0]),
                ((0x8000_0000, 0), [0x8000_0001, 0, 0, 0]),
                ((0x8000_0001, 0), [0, 0, 0, 1 << 29]),
            ]
            .into_iter()
            .collect(),
            xcr0: Some(0x3),
            runs: 0,
        };
        let f = probe(&mut e, &img).expect("features");
        assert_eq!(
            (f.max_basic, f.max_extended, f.xcr0),
            (7, 0x8000_0001, Some(3))
        );
        assert_eq!(f.leaves.get(&(7, 0)), Some(&[0, 1 << 3, 0, 0]));
        assert!(
            f.leaves
                .keys()
                .all(|&(l, _)| l <= 7 || (0x8000_0000..=0x8000_0001).contains(&l)),
            "no leaf above the maximum: {:?}",
            f.leaves.keys()
        );
        assert_eq!(f.has(bit_of("BMI1").expect("bit")), Has::Yes);
        assert_eq!(f.has(bit_of("WAITPKG").expect("bit")), Has::No);
        assert_eq!(
            f.has(bit_of("XSAVEOPT").expect("bit")),
            Has::No,
            "leaf 0xD > max 7"
        );
        assert_eq!(f.has(bit_of("X64").expect("bit")), Has::Yes);
        // The probe asks each leaf once: 0, 80000000H, 1, 7.0, 80000001H, XGETBV.
        assert_eq!(e.runs, 6);
        // An XGETBV that traps leaves XCR0 unknown.
        e.xcr0 = None;
        assert_eq!(probe(&mut e, &img).expect("features").xcr0, None);
        let by_mode = probe_modes(&mut e, [&img]);
        assert_eq!(
            by_mode.keys().copied().collect::<Vec<_>>(),
            vec![Mode::Long64]
        );
    }

    #[test]
    fn an_engine_without_cpuid_gives_no_features() {
        use crate::engine::fake::FakeEngine;
        let cfg = crate::mode::Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        // The fake completes everything with zeroed registers: no vendor.
        let mut fake = FakeEngine::new(crate::scan::tests::rule);
        assert_eq!(probe(&mut fake, &img), None);
        assert_eq!(fake.runs(), 1, "nothing asked after leaf 0");
        assert!(!worth_probing(&[Entry {
            mode: Mode::Long64,
            code: "X".into(),
            mnemonic: "x".into(),
            form: "x".into(),
            bytes: vec![0x90],
            setup: Setup::default(),
            doc: DocMeta::default(),
        }]));
    }
}
