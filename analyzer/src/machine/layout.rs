//! The harness ABI: where everything lives, which selectors exist, how a
//! test's operands are described, and which state variants exist.
//!
//! Addresses here are *program-view offsets* (what the code sees through its
//! segments). With a zero segment base, offset = linear address; with the
//! identity mapping of the base variant, linear = physical.

use crate::mode::{Config, Mode};
use serde::{Deserialize, Serialize};
use std::fmt;

pub const PAGE: u64 = 0x1000;
/// Physical memory every engine maps, from address 0.
pub const MEM_SIZE: u64 = 0x40000;

/// Base placement of the descriptor tables (linear = physical).
pub const GDT: u64 = 0x1000;
pub const IDT: u64 = 0x2000;
pub const TSS: u64 = 0x3000;
pub const LDT: u64 = 0x4000;
/// Ring-0 code: one handler stub per vector, the entry stubs and the boot stub.
pub const HANDLERS: u64 = 0x5000;
/// Ring-0 stack page (TSS.ESP0/RSP0 and IST1 point at its top).
pub const KSTACK: u64 = 0x6000;
pub const KSTACK_TOP: u64 = KSTACK + PAGE;
/// Code page: filled with the sentinel (HLT, 0xF4); the test sits at `TEST_RIP`.
pub const CODE: u64 = 0x7000;
pub const TEST_RIP: u64 = CODE + 0x100;
/// A landing pad for branches whose target the catalog chooses (HLT there).
pub const LANDING: u64 = CODE + 0x800;
pub const DATA: u64 = 0x8000;
pub const STACK: u64 = 0x9000;
/// Initial stack pointer: the middle of the stack page, so pushes and pops stay inside.
pub const STACK_PTR: u64 = STACK + 0x800;
/// Page tables of the base variant.
pub const PAGE_TABLES: u64 = 0xA000;
/// Where the "tables moved" variant puts GDT, IDT, TSS and LDT (same order).
pub const MOVED_TABLES: u64 = 0x21000;
/// Where the "other physical pages" variant backs code, data and stack.
pub const MOVED_PHYS: u64 = 0x27000;
/// Where the "other physical pages" variant puts its page tables.
pub const MOVED_PAGE_TABLES: u64 = 0x2A000;
/// Segment base used by the "shifted segment bases" variant.
pub const SEG_SHIFT: u64 = 0x10000;
/// The sentinel byte: HLT (exits at CPL 0, #GP at CPL 3).
pub const SENTINEL: u8 = 0xF4;
/// Pattern the data page is filled with before a test's own setup.
pub fn data_fill(i: usize) -> u8 {
    (i as u8).wrapping_mul(7).wrapping_add(3)
}
/// Pattern the stack page is filled with before a test's own setup.
pub fn stack_fill(i: usize) -> u8 {
    (i as u8).wrapping_mul(13).wrapping_add(0x51)
}

/// GDT selectors (index << 3), laid out so that SYSCALL, SYSRET and SYSEXIT
/// land on harness descriptors (STAR[47:32] = KCODE, STAR[63:48] = UCODE32,
/// SYSENTER_CS = KCODE).
pub mod sel {
    pub const NULL: u16 = 0x00;
    /// Supervisor code, DPL 0 (DPL 1 or 3 under ring compression; RPL follows).
    pub const KCODE: u16 = 0x08;
    /// Supervisor data/stack, DPL 0 (DPL 1 or 3 under ring compression).
    pub const KDATA: u16 = 0x10;
    /// User code, DPL 3: 32-bit compatibility code in long mode, the mode's
    /// own user code in 16/32-bit mode (SYSRET/SYSEXIT to 32-bit land here).
    pub const UCODE32: u16 = 0x18 | 3;
    /// User data/stack, DPL 3.
    pub const UDATA: u16 = 0x20 | 3;
    /// User code of the mode, DPL 3 (64-bit code in long mode). CPL 3 runs use it.
    pub const UCODE: u16 = 0x28 | 3;
    /// A second data descriptor, DPL 3, same base and limit as UDATA
    /// (also SYSEXIT's 64-bit stack segment).
    pub const ALTDATA: u16 = 0x30 | 3;
    /// The TSS (16 bytes in long mode).
    pub const TSS: u16 = 0x38;
    /// The LDT descriptor (16 bytes in long mode).
    pub const LDT: u16 = 0x48;
    /// A call gate, DPL 3, to the supervisor code at `entry::CALLGATE` (16 bytes in long mode).
    pub const CALLGATE: u16 = 0x58 | 3;
    /// A data descriptor in the LDT, DPL 3 (TI = 1, index 0).
    pub const LDT_DATA: u16 = 0x04 | 3;
    /// Where the "tables moved" variant puts the TSS and LDT descriptors: a
    /// VMM that owns the GDT places the guest's system descriptors in other
    /// slots, which STR and SLDT reveal.
    pub const MOVED_TSS: u16 = 0x68;
    pub const MOVED_LDT: u16 = 0x78;
    /// A second supervisor data/stack descriptor (DPL as KDATA), so that a
    /// load of SS at the supervisor's level has a different valid selector
    /// to load.
    pub const KALTDATA: u16 = 0x88;
    /// A second supervisor code descriptor (DPL as KCODE), the target of far
    /// transfers at the supervisor's level (a far JMP's work is changing CS).
    pub const KALTCODE: u16 = 0x90;
    /// GDTR limit (the same in every variant) of every mode but 32c.
    pub const GDT_LIMIT: u16 = 0x97;
    /// Supervisor 32-bit code (L = 0, D = 1, DPL as KCODE): the code segment
    /// of the supervisor side in 32-bit compatibility mode, whose KCODE is
    /// the 64-bit code of the handlers. Only the 32c GDT has this slot.
    pub const KCODE32: u16 = 0x98;
    /// GDTR limit of the 32c GDT (one slot more: KCODE32).
    pub const GDT_LIMIT_COMPAT: u16 = 0x9F;
}

/// Where the harness's entry points are: the ring-0 entry points inside
/// the HANDLERS page, and the exit stubs of ring-compressed long-mode
/// images in their own page.
pub mod entry {
    use super::HANDLERS;
    /// Handler for vector v is at `VECTORS + v * VECTOR_STRIDE`: HLT, then padding.
    pub const VECTORS: u64 = HANDLERS;
    pub const VECTOR_STRIDE: u64 = 4;
    /// SYSCALL (LSTAR and CSTAR) entry: HLT.
    pub const SYSCALL: u64 = HANDLERS + 0x400;
    /// SYSENTER_EIP entry: HLT.
    pub const SYSENTER: u64 = HANDLERS + 0x410;
    /// Call-gate target: HLT.
    pub const CALLGATE: u64 = HANDLERS + 0x420;
    /// Boot stubs: load the data segments, then IRET to the test at the wanted CPL.
    pub const BOOT_SUPERVISOR: u64 = HANDLERS + 0x800;
    pub const BOOT_USER: u64 = HANDLERS + 0xA00;
    /// Exit stubs of a ring-compressed long-mode image, where the handlers
    /// run at CPL 1 or 3 and a HLT would not end the run: the IDT gate of
    /// vector v points at `EXIT_STUBS + v * EXIT_STUB_STRIDE`, whose stub
    /// writes AL to `EXIT_MMIO + v` (`mov [disp32], al`, no register
    /// changed) and is followed by HLTs. That page is mapped one page past
    /// guest memory, where no engine backs it, so the write leaves the
    /// guest at any CPL (KVM_EXIT_MMIO) and its address names the vector.
    /// Every other image keeps its gates on the HLT stubs at `VECTORS`.
    pub const EXIT_STUBS: u64 = 0xE000;
    pub const EXIT_STUB_STRIDE: u64 = 8;
    /// The write of one exit stub: `88 04 25 disp32`.
    pub const EXIT_STUB_LEN: u64 = 7;
    pub const EXIT_MMIO: u64 = super::MEM_SIZE;

    /// The bytes of vector `v`'s exit stub.
    pub fn exit_stub(v: u8) -> [u8; EXIT_STUB_LEN as usize] {
        let [a, b, c, d] = ((EXIT_MMIO + u64::from(v)) as u32).to_le_bytes();
        [0x88, 0x04, 0x25, a, b, c, d]
    }
}

/// General registers in hardware order (RAX = 0 ... R15 = 15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Gpr {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

impl Gpr {
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The general registers every test starts with, unless its setup says otherwise.
/// Chosen so that common instructions do their real work without faulting:
/// string pointers inside the data page, small counts, no zero divisors.
pub fn default_gprs() -> [u64; 16] {
    [
        0x11,             // rax
        2,                // rcx: small count for REP, LOOP, shifts
        0x40,             // rdx: I/O port, small high half for DIV
        DATA + 0x180,     // rbx: data pointer (XLAT), low byte 0x80
        STACK_PTR,        // rsp
        STACK_PTR + 0x40, // rbp: inside the stack page (LEAVE, ENTER)
        DATA + 0x400,     // rsi: string source
        DATA + 0x800,     // rdi: string destination
        0x8,
        0x9,
        0xa,
        0xb,
        0xc,
        0xd,
        0xe,
        0xf,
    ]
}

/// Default RFLAGS of a test: bit 1, IF = 1, and the configuration's IOPL.
pub fn default_rflags(iopl: u8) -> u64 {
    0x2 | (1 << 9) | ((iopl as u64 & 3) << 12)
}

/// Which selector a symbolic value names. "Own" selectors are those of the
/// side the run is on (supervisor or user), as that side's code would use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelRole {
    OwnCode,
    OwnStack,
    OwnData,
    /// Another valid stack segment of the side's own privilege level
    /// (KALTDATA for the supervisor, ALTDATA for the user).
    OwnAltStack,
    /// Another code segment of the side's own privilege level (KALTCODE for
    /// the supervisor, UCODE32 for the user: compatibility mode in long mode).
    OwnAltCode,
    /// The second data descriptor (DPL 3), loadable at every CPL.
    AltData,
    UserCode,
    UserData,
    SupervisorCode,
    SupervisorData,
    /// 32-bit user code (long mode; SYSRET/SYSEXIT to compatibility mode).
    UserCode32,
    Ldt,
    Tss,
    CallGate,
    LdtData,
    Null,
}

/// A value the harness resolves for one run, in the program's own view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sym {
    /// A plain number.
    Imm(u64),
    /// The offset of a byte in the data page (`DATA + n`).
    Data(u64),
    /// The offset of a byte in the stack page (`STACK + n`).
    Stack(u64),
    /// The offset of a byte in the code page (`CODE + n`).
    Code(u64),
    /// The sentinel right after the test instruction (`TEST_RIP + len`).
    Sentinel,
    /// A selector (with the RPL that side would use).
    Sel(SelRole),
    /// The RFLAGS value of the run's start with the given bits XORed in
    /// (for POPF/IRET frames that try to flip IF or IOPL).
    FlagsXor(u64),
    /// A system register's value in the run's image with the given bits
    /// XORed in (MOV to CR writes back a value that differs in one harmless
    /// bit; LGDT/LIDT reload the image's own tables).
    Sys(SysValue, u64),
}

/// System values a setup can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SysValue {
    Cr0,
    Cr3,
    Cr4,
    GdtBase,
    GdtLimit,
    IdtBase,
    IdtLimit,
}

/// Where a memory setup value goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Region {
    Data,
    Stack,
}

/// A value written into the data or stack page before the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemInit {
    pub region: Region,
    /// Byte offset inside the page.
    pub offset: u16,
    /// Bytes written (1, 2, 4 or 8), little-endian.
    pub size: u8,
    pub value: Sym,
}

/// A value patched into the instruction bytes before the run (a far pointer's
/// selector and offset, an absolute address in an immediate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Patch {
    /// Byte offset inside the encoding.
    pub offset: u8,
    pub size: u8,
    pub value: Sym,
}

/// A segment register a test loads from its own memory setup (LDS, LSS,
/// ...), and where the selector it must load lies. The catalog lays such
/// operands out so that every documented reading of the operand (Intel's
/// m16:64 and AMD's m16:32 for a REX.W LSS, say) loads that selector; an
/// engine whose completed run left another selector in the register loaded
/// something no reading gives ([`crate::deviation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SegLoad {
    /// The register, as an index into CS, SS, DS, ES, FS, GS.
    pub seg: u8,
    pub region: Region,
    /// Byte offset of the 2-byte selector inside the page.
    pub offset: u16,
}

/// What a test needs beyond the default state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Setup {
    pub regs: Vec<(Gpr, Sym)>,
    pub mem: Vec<MemInit>,
    pub patches: Vec<Patch>,
    /// The segment load the test does, if it loads one from `mem`.
    #[serde(default)]
    pub seg_load: Option<SegLoad>,
    /// The vector the instruction raises as a software interrupt (INT n,
    /// INT3, INTO, INT1), from the decoder: engines read it from the
    /// prepared test instead of decoding the code page again.
    #[serde(default)]
    pub soft_interrupt: Option<u8>,
}

/// A sampled state of the matrix (pg-model section 4), minus the CPL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Variant {
    /// GDT, IDT, TSS and LDT at `MOVED_TABLES` instead of their base places.
    pub tables_moved: bool,
    /// Code, data and stack backed by other physical pages (and page tables
    /// moved too); same linear addresses. Needs paging.
    pub phys_moved: bool,
    /// Every segment base set to `SEG_SHIFT`, with the program's own view
    /// unchanged (16/32-bit protected mode and real mode).
    pub seg_shifted: bool,
    /// DPL of the supervisor's code and data descriptors: 0, or 1/3 under
    /// ring compression. The supervisor side runs at this CPL.
    pub supervisor_dpl: u8,
    /// EFLAGS.IF of the run's start.
    pub if_flag: bool,
    /// EFLAGS.IOPL of the run's start.
    pub iopl: u8,
    /// CR0 bits XORed into the base CR0 (TS, MP, WP, AM).
    pub cr0_xor: u64,
    /// The page after the code page (the data page) is not executable: the
    /// fence of the page-boundary length measurement
    /// ([`crate::probe::Prober::fetch_length`]). Never part of the matrix;
    /// needs paging (NX).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fetch_fence: bool,
}

pub const CR0_PE: u64 = 1;
pub const CR0_MP: u64 = 1 << 1;
pub const CR0_TS: u64 = 1 << 3;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_AM: u64 = 1 << 18;
pub const CR0_PG: u64 = 1 << 31;

impl Variant {
    /// The base state of a configuration.
    pub fn base(config: &Config) -> Variant {
        Variant {
            tables_moved: false,
            phys_moved: false,
            seg_shifted: false,
            supervisor_dpl: 0,
            if_flag: true,
            iopl: config.iopl,
            cr0_xor: 0,
            fetch_fence: false,
        }
    }

    /// Whether this variant keeps everything the configuration fixes (IOPL,
    /// and a supervisor at CPL 0). Only such variants take part in the
    /// privilege test; the others serve as behavior-sensitivity partners.
    pub fn keeps_config(&self, config: &Config) -> bool {
        self.iopl == config.iopl && self.supervisor_dpl == 0
    }

    /// Stable, human-readable name: `base`, `tables-moved`, `ring1`, `iopl=3`, `cr0^ts`, ...
    pub fn name(&self, config: &Config) -> String {
        use std::fmt::Write;
        // Written into one string (the classifier names every run's state).
        let mut name = String::new();
        let mut part = |args: std::fmt::Arguments<'_>| {
            if !name.is_empty() {
                name.push('+');
            }
            let _ = name.write_fmt(args);
        };
        if self.tables_moved {
            part(format_args!("tables-moved"));
        }
        if self.phys_moved {
            part(format_args!("phys-moved"));
        }
        if self.seg_shifted {
            part(format_args!("segbase={SEG_SHIFT:#x}"));
        }
        if self.supervisor_dpl != 0 {
            part(format_args!("ring{}", self.supervisor_dpl));
        }
        if !self.if_flag {
            part(format_args!("if=0"));
        }
        if self.iopl != config.iopl {
            part(format_args!("iopl={}", self.iopl));
        }
        for (bit, n) in [
            (CR0_TS, "ts"),
            (CR0_MP, "mp"),
            (CR0_WP, "wp"),
            (CR0_AM, "am"),
        ] {
            if self.cr0_xor & bit != 0 {
                part(format_args!("cr0^{n}"));
            }
        }
        if self.fetch_fence {
            part(format_args!("fetch-fence"));
        }
        if name.is_empty() {
            name.push_str("base");
        }
        name
    }

    /// The sampled-state matrix for a mode and configuration (pg-model
    /// section 4): the base state and one variant per relocation, ring
    /// compression and system-flag change that applies to the mode.
    pub fn matrix(mode: Mode, config: &Config) -> Vec<Variant> {
        let base = Variant::base(config);
        let mut v = vec![base];
        if mode.is_protected() {
            v.push(Variant {
                tables_moved: true,
                ..base
            });
        }
        if mode.has_paging() {
            v.push(Variant {
                phys_moved: true,
                ..base
            });
        }
        if matches!(mode, Mode::Real | Mode::Prot16 | Mode::Prot32) {
            v.push(Variant {
                seg_shifted: true,
                ..base
            });
        }
        if mode.is_protected() {
            v.push(Variant {
                supervisor_dpl: 1,
                ..base
            });
            v.push(Variant {
                supervisor_dpl: 3,
                ..base
            });
        }
        v.push(Variant {
            if_flag: false,
            ..base
        });
        if mode.is_protected() {
            v.push(Variant {
                iopl: if config.iopl == 3 { 0 } else { 3 },
                ..base
            });
        }
        v.push(Variant {
            cr0_xor: CR0_TS,
            ..base
        });
        v.push(Variant {
            cr0_xor: CR0_MP,
            ..base
        });
        if mode.has_paging() {
            v.push(Variant {
                cr0_xor: CR0_WP,
                ..base
            });
        }
        if mode.is_protected() {
            v.push(Variant {
                cr0_xor: CR0_AM,
                ..base
            });
        }
        v
    }
}

/// A label for one sampled state in evidence: variant name and side.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StateLabel {
    pub variant: String,
    pub side: crate::observe::Side,
}

impl fmt::Display for StateLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.variant, self.side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_has_distinct_named_variants() {
        for mode in Mode::ALL {
            for cfg in Config::DEFAULTS {
                let m = Variant::matrix(mode, &cfg);
                let mut names: Vec<_> = m.iter().map(|v| v.name(&cfg)).collect();
                assert_eq!(names[0], "base");
                names.sort();
                names.dedup();
                assert_eq!(names.len(), m.len(), "{mode}: duplicate variants");
            }
        }
        let cfg = Config::UMIP_OFF;
        let m32 = Variant::matrix(Mode::Prot32, &cfg);
        assert!(m32.iter().any(|v| v.seg_shifted));
        assert!(m32.iter().any(|v| v.phys_moved));
        assert!(m32.iter().any(|v| v.supervisor_dpl == 1));
        assert!(!Variant::matrix(Mode::Long64, &cfg)
            .iter()
            .any(|v| v.seg_shifted));
        assert!(!Variant::matrix(Mode::Prot16, &cfg)
            .iter()
            .any(|v| v.phys_moved));
    }

    #[test]
    fn names_join_the_changed_parts_with_plus() {
        // The parts each variant changes, joined: as the reports name them.
        let reference = |v: &Variant, config: &Config| -> String {
            let mut parts = Vec::new();
            if v.tables_moved {
                parts.push("tables-moved".to_string());
            }
            if v.phys_moved {
                parts.push("phys-moved".to_string());
            }
            if v.seg_shifted {
                parts.push(format!("segbase={SEG_SHIFT:#x}"));
            }
            if v.supervisor_dpl != 0 {
                parts.push(format!("ring{}", v.supervisor_dpl));
            }
            if !v.if_flag {
                parts.push("if=0".into());
            }
            if v.iopl != config.iopl {
                parts.push(format!("iopl={}", v.iopl));
            }
            for (bit, n) in [
                (CR0_TS, "ts"),
                (CR0_MP, "mp"),
                (CR0_WP, "wp"),
                (CR0_AM, "am"),
            ] {
                if v.cr0_xor & bit != 0 {
                    parts.push(format!("cr0^{n}"));
                }
            }
            if parts.is_empty() {
                "base".into()
            } else {
                parts.join("+")
            }
        };
        let cfg = Config::UMIP_OFF;
        for bits in 0u32..1 << 10 {
            let v = Variant {
                tables_moved: bits & 1 != 0,
                phys_moved: bits & 2 != 0,
                seg_shifted: bits & 4 != 0,
                supervisor_dpl: ((bits >> 3) & 3) as u8,
                if_flag: bits & 32 != 0,
                iopl: ((bits >> 6) & 1) as u8 * 3,
                cr0_xor: [0, CR0_TS, CR0_MP | CR0_AM, CR0_WP | CR0_TS][(bits >> 7) as usize & 3],
                fetch_fence: false,
            };
            assert_eq!(v.name(&cfg), reference(&v, &cfg), "{v:?}");
        }
        assert_eq!(
            Variant {
                tables_moved: true,
                iopl: 3,
                ..Variant::base(&cfg)
            }
            .name(&cfg),
            "tables-moved+iopl=3"
        );
    }

    #[test]
    fn privilege_test_uses_only_config_preserving_variants() {
        let cfg = Config::UMIP_OFF;
        let m = Variant::matrix(Mode::Prot32, &cfg);
        let kept: Vec<_> = m
            .iter()
            .filter(|v| v.keeps_config(&cfg))
            .map(|v| v.name(&cfg))
            .collect();
        assert!(kept.contains(&"base".to_string()));
        assert!(!kept
            .iter()
            .any(|n| n.contains("iopl") || n.contains("ring")));
    }
}
