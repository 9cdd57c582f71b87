//! GuestImage: one complete guest (memory + system registers + entry states)
//! for a mode, configuration and variant. (Placeholder: being written.)

use super::layout::*;
use crate::mode::{Config, Mode};
use crate::observe::{
    Page, Segment, Side, SystemState, TableReg, UserState, SYS_FLAGS_MASK, USER_FLAGS_MASK,
};
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// A segment register as a VMM would load it: selector and descriptor cache.
/// `attr` uses the VMX access-rights layout (type, S, DPL, P in bits 0-7;
/// AVL, L, D/B, G in bits 12-15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SegDesc {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub attr: u16,
}

/// System registers of the image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SysRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub gdtr: (u64, u16),
    pub idtr: (u64, u16),
    pub ldtr: SegDesc,
    pub tr: SegDesc,
    /// (MSR index, value), sorted by index.
    pub msrs: Vec<(u32, u64)>,
}

/// The state at the test's first byte on one side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntryState {
    pub cpl: u8,
    /// CS, SS, DS, ES, FS, GS.
    pub segs: [SegDesc; 6],
    pub rflags: u64,
    pub rip: u64,
    pub rsp: u64,
}

/// One complete guest.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub mode: Mode,
    pub config: Config,
    pub variant: Variant,
    /// Physical memory from 0, `MEM_SIZE` bytes.
    pub memory: Vec<u8>,
    pub sys: SysRegs,
    pub supervisor: EntryState,
    /// `None` in real mode (no CPL 3).
    pub user: Option<EntryState>,
    /// Segment base of every segment (0, or `SEG_SHIFT` in the shifted variant).
    pub seg_base: u64,
    /// Physical addresses of the code, data and stack pages.
    pub code_phys: u64,
    pub data_phys: u64,
    pub stack_phys: u64,
    /// Physical pages an instruction may dirty, restored before every run.
    pub restore_pages: Vec<u64>,
    /// The physical pages that hold the page tables (bit n: page n; 0
    /// without paging): the CPU's walks write their accessed and dirty
    /// bits, which no store hook sees.
    pub table_pages: u64,
    /// Selectors of the TSS and LDT descriptors (moved in the "tables moved" variant).
    pub tss_sel: u16,
    pub ldt_sel: u16,
}

/// A test resolved for one image and side: what the engine writes and sets.
/// A page the test does not set up is the harness's template, shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub code_page: Page,
    pub data_page: Page,
    pub stack_page: Page,
    pub gprs: [u64; 16],
    /// Offset of the test's first byte (`TEST_RIP`).
    pub rip: u64,
    /// Offset of the sentinel right after it.
    pub sentinel: u64,
    /// The vector the instruction raises as a software interrupt, from the
    /// entry's setup ([`Setup::soft_interrupt`]).
    pub soft_interrupt: Option<u8>,
}

impl Prepared {
    /// The test's bytes as placed: the code page from its RIP to its
    /// sentinel (empty if those lie outside the page).
    pub fn encoding(&self) -> &[u8] {
        let from = self.rip.wrapping_sub(CODE) as usize;
        let to = self.sentinel.wrapping_sub(CODE) as usize;
        self.code_page.get(from..to).unwrap_or(&[])
    }

    /// The test with only its first `k` bytes (1 to 15) in place, moved to
    /// end the code page: a fetch of byte `k` crosses into the next page,
    /// which a fenced image ([`GuestImage::is_fenced`]) makes not
    /// executable. Registers and pages are the test's own (so a register
    /// that held the sentinel still points after the instruction in its
    /// usual place).
    pub fn at_page_end(&self, k: usize) -> Prepared {
        let len = (self.sentinel - self.rip) as usize;
        let k = k.clamp(1, 15);
        let from = (self.rip - CODE) as usize;
        let mut bytes = self.code_page[from..from + len.min(k)].to_vec();
        // Past the encoding: what the page held after it (the sentinel).
        bytes.extend_from_slice(&self.code_page[from + bytes.len()..from + k]);
        let at = PAGE as usize - k;
        static TEMPLATE: LazyLock<Page> = LazyLock::new(|| Page::filled(SENTINEL, PAGE as usize));
        let code_page = Page::with_bytes_at(&TEMPLATE, at, &bytes);
        Prepared {
            code_page,
            rip: CODE + at as u64,
            // Where the instruction ends when it fits (HLTs follow it, as
            // they follow a test in its usual place).
            sentinel: CODE + (at + len.min(k)) as u64,
            ..self.clone()
        }
    }
}

/// Base CR4 bits: OSFXSR | OSXMMEXCPT (SSE works) | OSXSAVE, plus PAE and FSGSBASE in long mode (PAE in 32-bit mode too).
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_PAE: u64 = 1 << 5;
const CR4_TSD: u64 = 1 << 2;
const CR4_PCE: u64 = 1 << 8;
const CR4_UMIP: u64 = 1 << 11;
const CR4_FSGSBASE: u64 = 1 << 16;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// System MSRs the harness sets and every engine reads back.
pub mod msr {
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const STAR: u32 = 0xC000_0081;
    pub const LSTAR: u32 = 0xC000_0082;
    pub const CSTAR: u32 = 0xC000_0083;
    pub const SFMASK: u32 = 0xC000_0084;
    pub const FS_BASE: u32 = 0xC000_0100;
    pub const GS_BASE: u32 = 0xC000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
    /// A recognizable KERNEL_GS_BASE, so SWAPGS shows.
    pub const KERNEL_GS_VALUE: u64 = 0x4000_0000;
}

/// Vectors whose IDT gate has DPL 3 (INT3, INTO, and the INT 0x80 system-call gate).
pub const USER_GATES: [u8; 3] = [3, 4, 0x80];

impl GuestImage {
    /// The test's own pages and where they go: code, data and stack. What
    /// every engine writes before a run, on top of the image.
    pub fn test_pages<'t>(&self, test: &'t Prepared) -> [(u64, &'t Page); 3] {
        [
            (self.code_phys, &test.code_page),
            (self.data_phys, &test.data_page),
            (self.stack_phys, &test.stack_page),
        ]
    }

    /// What the page at `phys` holds when `test` starts: the test's own
    /// page, or the image's bytes (an engine restores a page it may have
    /// dirtied from this).
    pub fn page_for<'a>(&'a self, phys: u64, test: &'a Prepared) -> &'a [u8] {
        match self.test_pages(test).into_iter().find(|(p, _)| *p == phys) {
            Some((_, page)) => page,
            None => {
                let p = phys as usize;
                &self.memory[p..p + PAGE as usize]
            }
        }
    }

    /// Builds the whole guest for a mode, configuration and variant.
    pub fn build(mode: Mode, config: Config, variant: Variant) -> GuestImage {
        use super::descriptors::*;
        let mut mem = vec![0u8; MEM_SIZE as usize];
        let dpl = if mode.is_protected() {
            variant.supervisor_dpl & 3
        } else {
            0
        };
        let seg_base = if variant.seg_shifted && !mode.is_long() {
            SEG_SHIFT
        } else {
            0
        };
        let tables = if variant.tables_moved && mode.is_protected() {
            MOVED_TABLES
        } else {
            GDT
        };
        let (gdt, idt, tss, ldt) = (tables, tables + PAGE, tables + 2 * PAGE, tables + 3 * PAGE);
        let (tss_sel, ldt_sel) = if variant.tables_moved && mode.is_protected() {
            (sel::MOVED_TSS, sel::MOVED_LDT)
        } else {
            (sel::TSS, sel::LDT)
        };
        let paging = mode.has_paging();
        let long = mode.is_long();
        // Handlers at CPL 1 or 3 end the run through exit stubs (long mode
        // only: their write must not depend on a data segment the test
        // may have changed).
        let exit_stubs = long && dpl != 0;
        let compat = mode == Mode::Compat32;
        // Where the program's pages live physically. Without paging a segment
        // shift moves them physically; with paging the page tables alias them.
        let phys_moved = variant.phys_moved && paging;
        let shift_phys = if paging { 0 } else { seg_base };
        let (code_phys, data_phys, stack_phys) = if phys_moved {
            (MOVED_PHYS, MOVED_PHYS + PAGE, MOVED_PHYS + 2 * PAGE)
        } else {
            (CODE + shift_phys, DATA + shift_phys, STACK + shift_phys)
        };
        let handlers_phys = HANDLERS + shift_phys;
        let kstack_phys = KSTACK + shift_phys;

        // Segment descriptors of the mode.
        let (code_limit, code_flags, data_limit, data_flags) = match mode {
            Mode::Real | Mode::Prot16 => (0xFFFF, 0, 0xFFFF, 0),
            Mode::Prot32 => (0xF_FFFF, FLAG_G | FLAG_DB, 0xF_FFFF, FLAG_G | FLAG_DB),
            // 32c: KCODE, UCODE and KALTCODE are 64-bit code as in 64-bit
            // mode; the test's own code segments are 32-bit (below).
            Mode::Long64 | Mode::Compat32 => {
                (0xF_FFFF, FLAG_G | FLAG_L, 0xF_FFFF, FLAG_G | FLAG_DB)
            }
        };
        let b = seg_base as u32;
        let code = |d: u8| descriptor(b, code_limit, with_dpl(CODE_ACCESS, d), code_flags);
        let data = |d: u8| descriptor(b, data_limit, with_dpl(DATA_ACCESS, d), data_flags);
        // 32-bit code in long mode (compatibility mode), DPL d.
        let code32 = |d: u8| descriptor(0, 0xF_FFFF, with_dpl(CODE_ACCESS, d), FLAG_G | FLAG_DB);
        let ucode32 = if long { code32(3) } else { code(3) };
        if mode.is_protected() {
            let g = &mut mem[gdt as usize..(gdt + PAGE) as usize];
            put64(g, sel::KCODE as usize, code(dpl));
            put64(g, sel::KDATA as usize, data(dpl));
            put64(g, (sel::UCODE32 & !7) as usize, ucode32);
            put64(g, (sel::UDATA & !7) as usize, data(3));
            put64(g, (sel::UCODE & !7) as usize, code(3));
            put64(g, (sel::ALTDATA & !7) as usize, data(3));
            put64(g, sel::KALTDATA as usize, data(dpl));
            put64(g, sel::KALTCODE as usize, code(dpl));
            if compat {
                put64(g, sel::KCODE32 as usize, code32(dpl));
            }
            let (tss_d, ldt_d, gate) = if long {
                (
                    system_descriptor64(tss, 0x67, TYPE_TSS_AVAILABLE),
                    system_descriptor64(ldt, 7, TYPE_LDT),
                    gate64(entry::CALLGATE, sel::KCODE, 0, TYPE_CALL_GATE, 3),
                )
            } else {
                (
                    [
                        descriptor(tss as u32, 0x67, 0x80 | TYPE_TSS_AVAILABLE, 0),
                        0,
                    ],
                    [descriptor(ldt as u32, 7, 0x80 | TYPE_LDT, 0), 0],
                    [
                        gate32(entry::CALLGATE as u32, sel::KCODE, TYPE_CALL_GATE, 3),
                        0,
                    ],
                )
            };
            for (s, pair) in [
                (tss_sel, tss_d),
                (ldt_sel, ldt_d),
                (sel::CALLGATE & !7, gate),
            ] {
                put64(g, s as usize, pair[0]);
                if long {
                    put64(g, s as usize + 8, pair[1]);
                }
            }
            // LDT: one user data descriptor.
            put64(&mut mem[ldt as usize..], 0, data(3));
            // TSS: a ring-n stack for every ring, IST1, no I/O bitmap.
            let t = &mut mem[tss as usize..(tss + PAGE) as usize];
            if long {
                for off in [4usize, 0xC, 0x14, 0x24] {
                    put64(t, off, KSTACK_TOP);
                }
            } else {
                for ring in 0..3u16 {
                    put32(t, 4 + ring as usize * 8, KSTACK_TOP as u32);
                    put32(t, 8 + ring as usize * 8, (sel::KDATA | ring) as u32);
                }
            }
            put16(t, 0x66, 0x68);
            // IDT: one interrupt gate per vector to its HLT stub, or to its
            // exit stub where the handlers run at CPL 1 or 3.
            for v in 0..256u64 {
                let gdpl = if USER_GATES.contains(&(v as u8)) {
                    3
                } else {
                    0
                };
                let off = if exit_stubs {
                    entry::EXIT_STUBS + v * entry::EXIT_STUB_STRIDE
                } else {
                    entry::VECTORS + v * entry::VECTOR_STRIDE
                };
                if long {
                    let [lo, hi] = gate64(off, sel::KCODE, 1, TYPE_INTERRUPT_GATE, gdpl);
                    put64(&mut mem[idt as usize..], v as usize * 16, lo);
                    put64(&mut mem[idt as usize..], v as usize * 16 + 8, hi);
                } else {
                    let g = gate32(off as u32, sel::KCODE, TYPE_INTERRUPT_GATE, gdpl);
                    put64(&mut mem[idt as usize..], v as usize * 8, g);
                }
            }
        } else {
            // Real mode: the IVT at 0, every vector to its HLT stub.
            for v in 0..256u64 {
                let off = entry::VECTORS + v * entry::VECTOR_STRIDE;
                put16(&mut mem, v as usize * 4, off as u16);
                put16(&mut mem, v as usize * 4 + 2, (seg_base >> 4) as u16);
            }
        }

        // Entry states of both sides.
        let rflags = 0x2 | ((variant.if_flag as u64) << 9) | ((variant.iopl as u64 & 3) << 12);
        let seg = |selector: u16, d: u64| {
            let (base, limit, access, flags) = decode(d);
            SegDesc {
                selector,
                base: base as u64,
                limit,
                attr: access_rights(access, flags),
            }
        };
        let (supervisor, user) = if mode.is_protected() {
            // Both sides start with the same DS, ES, FS and GS: the user's
            // data segment (DPL 3), which every CPL may load. Only CS and SS
            // differ, because their RPL is the CPL (M itself). So an
            // instruction that reads a data segment register (PUSH DS, MOV
            // r/m, FS) reads equal inputs on both sides and in every
            // variant, and a difference between them is a result.
            let ks = seg(sel::KDATA | dpl as u16, data(dpl));
            let us = seg(sel::UDATA, data(3));
            // In 32c the test runs in the 32-bit code segments: KCODE32 on
            // the supervisor side, UCODE32 on the user side.
            let (kcs, ucs) = if compat {
                (
                    seg(sel::KCODE32 | dpl as u16, code32(dpl)),
                    seg(sel::UCODE32, ucode32),
                )
            } else {
                (
                    seg(sel::KCODE | dpl as u16, code(dpl)),
                    seg(sel::UCODE, code(3)),
                )
            };
            let sup = EntryState {
                cpl: dpl,
                segs: [kcs, ks, us, us, us, us],
                rflags,
                rip: TEST_RIP,
                rsp: STACK_PTR,
            };
            let usr = EntryState {
                cpl: 3,
                segs: [ucs, us, us, us, us, us],
                rflags,
                rip: TEST_RIP,
                rsp: STACK_PTR,
            };
            (sup, Some(usr))
        } else {
            let s = (seg_base >> 4) as u16;
            let c = SegDesc {
                selector: s,
                base: seg_base,
                limit: 0xFFFF,
                attr: 0x9B,
            };
            let d = SegDesc {
                selector: s,
                base: seg_base,
                limit: 0xFFFF,
                attr: 0x93,
            };
            (
                EntryState {
                    cpl: 0,
                    segs: [c, d, d, d, d, d],
                    rflags,
                    rip: TEST_RIP,
                    rsp: STACK_PTR,
                },
                None,
            )
        };

        // Ring-0 code page: HLT everywhere (every vector stub and entry
        // point is a HLT), then the boot stubs.
        mem[handlers_phys as usize..(handlers_phys + PAGE) as usize].fill(SENTINEL);
        if mode.is_protected() {
            for (at, e) in [
                (entry::BOOT_SUPERVISOR, &supervisor),
                (entry::BOOT_USER, user.as_ref().unwrap_or(&supervisor)),
            ] {
                let t = super::stubs::BootTarget {
                    cpl: e.cpl,
                    cs: e.segs[0].selector,
                    ss: e.segs[1].selector,
                    data: e.segs[2].selector,
                    rip: e.rip,
                    rsp: e.rsp,
                    rflags: e.rflags,
                };
                let stub = super::stubs::boot_stub(mode, &t);
                let at = (at - HANDLERS + handlers_phys) as usize;
                mem[at..at + stub.len()].copy_from_slice(&stub);
            }
        }
        if exit_stubs {
            let page = &mut mem[entry::EXIT_STUBS as usize..][..PAGE as usize];
            page.fill(SENTINEL);
            for v in 0..=255u8 {
                let at = (u64::from(v) * entry::EXIT_STUB_STRIDE) as usize;
                page[at..at + entry::EXIT_STUB_LEN as usize].copy_from_slice(&entry::exit_stub(v));
            }
        }
        mem[code_phys as usize..(code_phys + PAGE) as usize].fill(SENTINEL);
        for (i, x) in mem[data_phys as usize..(data_phys + PAGE) as usize]
            .iter_mut()
            .enumerate()
        {
            *x = data_fill(i);
        }
        for (i, x) in mem[stack_phys as usize..(stack_phys + PAGE) as usize]
            .iter_mut()
            .enumerate()
        {
            *x = stack_fill(i);
        }

        // Page tables: identity for everything but the null page; under a
        // segment shift the low pages are aliased at SEG_SHIFT; the program's
        // pages map to wherever they are backed.
        let pt_base = if phys_moved {
            MOVED_PAGE_TABLES
        } else {
            PAGE_TABLES
        };
        let mut table_pages = 0u64;
        if paging {
            let mut map: std::collections::BTreeMap<u64, u64> =
                (1..MEM_SIZE / PAGE).map(|p| (p * PAGE, p * PAGE)).collect();
            if seg_base != 0 {
                for p in 1..SEG_SHIFT / PAGE {
                    map.insert(seg_base + p * PAGE, p * PAGE);
                }
            }
            if exit_stubs {
                // Mapped, never backed: the exit stubs' writes leave the guest.
                map.insert(entry::EXIT_MMIO, entry::EXIT_MMIO);
            }
            map.insert(seg_base + CODE, code_phys);
            map.insert(seg_base + DATA, data_phys);
            map.insert(seg_base + STACK, stack_phys);
            let pages: Vec<(u64, u64)> = map.into_iter().collect();
            let kind = if long { Paging::Long } else { Paging::Pae };
            for (addr, page) in page_tables(kind, pt_base, &pages) {
                mem[addr as usize..addr as usize + page.len()].copy_from_slice(&page);
                table_pages |= 1 << (addr / PAGE);
            }
            if variant.fetch_fence {
                // The page after the code page: readable and writable, not
                // executable.
                let at = pte_address(kind, pt_base, seg_base + CODE + PAGE)
                    .expect("the code page is mapped by the harness's tables")
                    as usize;
                let pte = u64::from_le_bytes(mem[at..at + 8].try_into().expect("8 bytes"));
                mem[at..at + 8].copy_from_slice(&(pte | PTE_NX).to_le_bytes());
            }
        }

        let mut cr0 = match mode {
            Mode::Real => CR0_ET,
            Mode::Prot16 => CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM,
            Mode::Prot32 | Mode::Long64 | Mode::Compat32 => {
                CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
            }
        };
        cr0 ^= variant.cr0_xor;
        // OSXSAVE so that XGETBV, XSETBV and XSAVE do their work.
        let mut cr4 = CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE;
        if long {
            cr4 |= CR4_PAE | CR4_FSGSBASE;
        }
        if mode == Mode::Prot32 {
            // PAE paging in 32-bit mode: KVM's PVM runs no 2-level paging.
            cr4 |= CR4_PAE;
        }
        if config.umip {
            cr4 |= CR4_UMIP;
        }
        if config.tsd {
            cr4 |= CR4_TSD;
        }
        if config.pce {
            cr4 |= CR4_PCE;
        }
        let mut msrs = vec![
            (msr::SYSENTER_CS, sel::KCODE as u64),
            (msr::SYSENTER_ESP, KSTACK_TOP),
            (msr::SYSENTER_EIP, entry::SYSENTER),
        ];
        if long {
            msrs.extend([
                (
                    msr::STAR,
                    ((sel::UCODE32 as u64 & !3) << 48) | ((sel::KCODE as u64) << 32),
                ),
                (msr::LSTAR, entry::SYSCALL),
                (msr::CSTAR, entry::SYSCALL),
                (msr::SFMASK, 0x700),
                (msr::FS_BASE, 0),
                (msr::GS_BASE, 0),
                (msr::KERNEL_GS_BASE, msr::KERNEL_GS_VALUE),
            ]);
        }
        let sys = if mode.is_protected() {
            SysRegs {
                cr0,
                cr3: if paging { pt_base } else { 0 },
                cr4,
                efer: if long {
                    EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
                } else if variant.fetch_fence && paging {
                    EFER_NXE
                } else {
                    0
                },
                gdtr: (
                    gdt,
                    if compat {
                        sel::GDT_LIMIT_COMPAT
                    } else {
                        sel::GDT_LIMIT
                    },
                ),
                idtr: (idt, if long { 0xFFF } else { 0x7FF }),
                ldtr: SegDesc {
                    selector: ldt_sel,
                    base: ldt,
                    limit: 7,
                    attr: access_rights(0x80 | TYPE_LDT, 0),
                },
                tr: SegDesc {
                    selector: tss_sel,
                    base: tss,
                    limit: 0x67,
                    attr: access_rights(0x80 | TYPE_TSS_BUSY, 0),
                },
                msrs,
            }
        } else {
            SysRegs {
                cr0,
                cr3: 0,
                cr4: cr4 & !(CR4_PAE | CR4_FSGSBASE),
                efer: 0,
                gdtr: (0, 0xFFFF),
                idtr: (0, 0x3FF),
                ldtr: SegDesc {
                    selector: 0,
                    base: 0,
                    limit: 0xFFFF,
                    attr: 0x82,
                },
                tr: SegDesc {
                    selector: 0,
                    base: 0,
                    limit: 0xFFFF,
                    attr: 0x8B,
                },
                msrs,
            }
        };
        let mut restore_pages = vec![code_phys, data_phys, stack_phys, kstack_phys];
        if mode.is_protected() {
            restore_pages.extend([gdt, tss, ldt]);
        } else {
            restore_pages.push(0); // the IVT
        }
        GuestImage {
            mode,
            config,
            variant,
            memory: mem,
            sys,
            supervisor,
            user,
            seg_base,
            code_phys,
            data_phys,
            stack_phys,
            restore_pages,
            table_pages,
            tss_sel,
            ldt_sel,
        }
    }

    /// The entry state of a side (`None`: no user side in real mode).
    pub fn entry(&self, side: Side) -> Option<&EntryState> {
        match side {
            Side::Supervisor => Some(&self.supervisor),
            Side::User => self.user.as_ref(),
        }
    }

    /// Linear address at which an engine starts a side's boot stub, with the
    /// CPU still in its initial flat ring-0 state (segment bases 0).
    pub fn boot_linear(&self, side: Side) -> u64 {
        let at = match side {
            Side::Supervisor => entry::BOOT_SUPERVISOR,
            Side::User => entry::BOOT_USER,
        };
        if self.mode.has_paging() {
            at
        } else {
            at + self.seg_base
        }
    }

    /// Linear address of a program-view offset.
    pub fn linear(&self, offset: u64) -> u64 {
        self.seg_base + offset
    }

    /// The R and M state the image intends at the test's start on a side.
    pub fn system_state(&self, side: Side) -> Option<SystemState> {
        let e = self.entry(side)?;
        let mut segs = [Segment::default(); 6];
        for (s, d) in segs.iter_mut().zip(e.segs.iter()) {
            *s = Segment {
                selector: d.selector,
                cache: Some((d.base, d.limit, d.attr)),
            };
        }
        let t = |(base, limit): (u64, u16)| TableReg {
            selector: 0,
            base,
            limit: limit as u32,
        };
        let sd = |d: &SegDesc| TableReg {
            selector: d.selector,
            base: d.base,
            limit: d.limit,
        };
        Some(SystemState {
            cpl: e.cpl,
            segs,
            gdtr: t(self.sys.gdtr),
            idtr: t(self.sys.idtr),
            ldtr: sd(&self.sys.ldtr),
            tr: sd(&self.sys.tr),
            cr0: self.sys.cr0,
            cr3: self.sys.cr3,
            cr4: self.sys.cr4,
            efer: self.sys.efer,
            sys_flags: e.rflags & SYS_FLAGS_MASK,
            msrs: self.sys.msrs.clone(),
        })
    }

    /// Resolves a symbolic value for a side.
    pub fn resolve(&self, side: Side, e: &EntryState, sym: Sym, sentinel: u64) -> u64 {
        match sym {
            Sym::Imm(v) => v,
            Sym::Data(n) => DATA + n,
            Sym::Stack(n) => STACK + n,
            Sym::Code(n) => CODE + n,
            Sym::Sentinel => sentinel,
            Sym::FlagsXor(x) => e.rflags ^ x,
            Sym::Sys(v, x) => {
                x ^ match v {
                    SysValue::Cr0 => self.sys.cr0,
                    SysValue::Cr3 => self.sys.cr3,
                    SysValue::Cr4 => self.sys.cr4,
                    SysValue::GdtBase => self.sys.gdtr.0,
                    SysValue::GdtLimit => self.sys.gdtr.1 as u64,
                    SysValue::IdtBase => self.sys.idtr.0,
                    SysValue::IdtLimit => self.sys.idtr.1 as u64,
                }
            }
            Sym::Sel(role) => self.selector(side, role) as u64,
        }
    }

    /// The selector a role names on a side (segment values in real mode).
    pub fn selector(&self, side: Side, role: SelRole) -> u16 {
        if !self.mode.is_protected() {
            return if role == SelRole::Null {
                0
            } else {
                (self.seg_base >> 4) as u16
            };
        }
        let k = self.supervisor.cpl as u16;
        let user = side == Side::User;
        let compat = self.mode == Mode::Compat32;
        match role {
            // 32c: the own code segments are the 32-bit ones the test runs
            // in; the other code segment of the same level (far transfers)
            // is the 64-bit one, as UCODE32 is in 64-bit mode.
            SelRole::OwnCode if user && compat => sel::UCODE32,
            SelRole::OwnAltCode if user && compat => sel::UCODE,
            SelRole::OwnCode | SelRole::SupervisorCode if compat => sel::KCODE32 | k,
            SelRole::OwnCode if user => sel::UCODE,
            SelRole::OwnStack | SelRole::OwnData if user => sel::UDATA,
            SelRole::OwnAltStack if user => sel::ALTDATA,
            SelRole::OwnAltStack => sel::KALTDATA | k,
            SelRole::OwnAltCode if user => sel::UCODE32,
            SelRole::OwnAltCode => sel::KALTCODE | k,
            SelRole::OwnCode | SelRole::SupervisorCode => sel::KCODE | k,
            SelRole::OwnStack | SelRole::OwnData | SelRole::SupervisorData => sel::KDATA | k,
            SelRole::AltData => sel::ALTDATA,
            SelRole::UserCode => sel::UCODE,
            SelRole::UserData => sel::UDATA,
            SelRole::UserCode32 => sel::UCODE32,
            SelRole::Ldt => self.ldt_sel,
            SelRole::Tss => self.tss_sel,
            SelRole::CallGate => sel::CALLGATE,
            SelRole::LdtData => sel::LDT_DATA,
            SelRole::Null => sel::NULL,
        }
    }

    /// The user-visible state a prepared test starts from on a side.
    pub fn initial_user_state(&self, side: Side, p: &Prepared) -> Option<UserState> {
        let e = self.entry(side)?;
        Some(UserState {
            gprs: p.gprs,
            rip: p.rip,
            flags: e.rflags & USER_FLAGS_MASK,
            data: p.data_page.clone(),
            stack: p.stack_page.clone(),
        })
    }

    /// [`GuestImage::initial_user_state`], taking the pages from the test
    /// instead of copying them (for a test that has run).
    pub fn into_initial_user_state(&self, side: Side, p: Prepared) -> Option<UserState> {
        let e = self.entry(side)?;
        Some(UserState {
            gprs: p.gprs,
            rip: p.rip,
            flags: e.rflags & USER_FLAGS_MASK,
            data: p.data_page,
            stack: p.stack_page,
        })
    }

    /// Whether tests of this image can be measured by the page-boundary
    /// method ([`Prepared::at_page_end`]): the image is fenced and has
    /// paging (the fence is an NX page).
    pub fn is_fenced(&self) -> bool {
        self.variant.fetch_fence && self.mode.has_paging()
    }

    /// Whether the IDT gates lead to the exit stubs ([`entry::EXIT_STUBS`]):
    /// a ring-compressed long-mode image, whose handlers run at CPL 1 or 3.
    pub fn has_exit_stubs(&self) -> bool {
        self.mode.is_long() && self.supervisor.cpl != 0
    }

    /// Resolves a test for a side: the code page with the encoding (patched)
    /// at `TEST_RIP` and HLT everywhere else, the data and stack pages with
    /// the setup's values, and the general registers. `None` when the side
    /// does not exist (the user side in real mode).
    pub fn prepare(&self, side: Side, bytes: &[u8], setup: &Setup) -> Option<Prepared> {
        let e = self.entry(side)?;
        let sentinel = TEST_RIP + bytes.len() as u64;
        // The templates (the sentinel everywhere, the fill patterns), made
        // once; a test gets its own copy of a page only where it writes it.
        static TEMPLATES: LazyLock<[Page; 3]> = LazyLock::new(|| {
            [
                Page::filled(SENTINEL, PAGE as usize),
                (0..PAGE as usize)
                    .map(data_fill)
                    .collect::<Vec<u8>>()
                    .into(),
                (0..PAGE as usize)
                    .map(stack_fill)
                    .collect::<Vec<u8>>()
                    .into(),
            ]
        });
        let [code, mut data_page, mut stack_page] = TEMPLATES.clone();
        // What differs from the code template: the encoding, patched (a
        // patch that does not fit the page is left out).
        let at = (TEST_RIP - CODE) as usize;
        let mut window = bytes.to_vec();
        for p in &setup.patches {
            let v = self.resolve(side, e, p.value, sentinel).to_le_bytes();
            let start = p.offset as usize;
            let n = (p.size as usize).min(8);
            if at + start + n <= code.len() {
                if window.len() < start + n {
                    let len = window.len();
                    window.extend_from_slice(&code[at + len..at + start + n]);
                }
                window[start..start + n].copy_from_slice(&v[..n]);
            }
        }
        let code_page = Page::with_bytes_at(&code, at, &window);
        for m in &setup.mem {
            let v = self.resolve(side, e, m.value, sentinel).to_le_bytes();
            let page = match m.region {
                Region::Data => &mut data_page,
                Region::Stack => &mut stack_page,
            };
            let n = (m.size as usize).min(8);
            if let Some(dst) = page.get_mut(m.offset as usize..m.offset as usize + n) {
                dst.copy_from_slice(&v[..n]);
            }
        }
        let mut gprs = default_gprs();
        if self.mode != Mode::Long64 {
            // R8-R15 exist only in long mode.
            gprs[8..].fill(0);
        }
        for (r, v) in &setup.regs {
            gprs[r.index()] = self.resolve(side, e, *v, sentinel);
        }
        Some(Prepared {
            code_page,
            data_page,
            stack_page,
            gprs,
            rip: TEST_RIP,
            sentinel,
            soft_interrupt: setup.soft_interrupt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::descriptors::*;
    use super::*;

    fn gdt_entry(img: &GuestImage, selector: u16) -> u64 {
        let at = (img.sys.gdtr.0 + (selector & !7) as u64) as usize;
        u64::from_le_bytes(img.memory[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn gdt_has_flat_ring0_and_ring3_segments() {
        for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64] {
            let img = GuestImage::build(mode, Config::UMIP_OFF, Variant::base(&Config::UMIP_OFF));
            for (s, dpl, is_code) in [
                (sel::KCODE, 0, true),
                (sel::KDATA, 0, false),
                (sel::UCODE, 3, true),
                (sel::UDATA, 3, false),
                (sel::ALTDATA, 3, false),
            ] {
                let (base, _, access, flags) = decode(gdt_entry(&img, s));
                assert_eq!(base, 0, "{mode} {s:#x}");
                assert_eq!((access >> 5) & 3, dpl, "{mode} {s:#x} dpl");
                assert_eq!(
                    access & 0x8,
                    if is_code { 8 } else { 0 },
                    "{mode} {s:#x} code bit"
                );
                if mode == Mode::Long64 && is_code {
                    assert_eq!(flags & FLAG_L, FLAG_L, "64-bit code has L");
                }
                if mode == Mode::Prot16 {
                    assert_eq!(flags & FLAG_DB, 0, "16-bit segments have D=0");
                }
            }
            let (tss_base, tss_limit, tss_access, _) = decode(gdt_entry(&img, sel::TSS));
            assert_eq!((tss_base as u64, tss_limit, tss_access), (TSS, 0x67, 0x89));
            assert_eq!(img.sys.tr.base, TSS);
        }
    }

    #[test]
    fn long_mode_idt_gates_use_ist1_and_user_gates_have_dpl3() {
        let img = GuestImage::build(
            Mode::Long64,
            Config::UMIP_OFF,
            Variant::base(&Config::UMIP_OFF),
        );
        let rd = |v: usize| {
            u64::from_le_bytes(img.memory[IDT as usize + v * 16..][..8].try_into().unwrap())
        };
        let g13 = rd(13);
        assert_eq!((g13 >> 32) & 7, 1, "IST1");
        assert_eq!((g13 >> 45) & 3, 0, "#GP gate DPL 0");
        assert_eq!(
            (g13 & 0xFFFF) | ((g13 >> 48) << 16),
            entry::VECTORS + 13 * 4
        );
        assert_eq!((rd(0x80) >> 45) & 3, 3, "int 0x80 gate DPL 3");
        // TSS RSP0 and IST1 point at the ring-0 stack.
        let t = &img.memory[TSS as usize..];
        assert_eq!(u64::from_le_bytes(t[4..12].try_into().unwrap()), KSTACK_TOP);
        assert_eq!(
            u64::from_le_bytes(t[0x24..0x2c].try_into().unwrap()),
            KSTACK_TOP
        );
        assert_eq!(img.memory[HANDLERS as usize + 13 * 4], SENTINEL);
    }

    #[test]
    fn program_pages_are_mapped_where_the_variant_says() {
        let cfg = Config::UMIP_OFF;
        for mode in [Mode::Prot32, Mode::Long64] {
            for v in Variant::matrix(mode, &cfg) {
                let img = GuestImage::build(mode, cfg, v);
                let kind = if mode == Mode::Long64 {
                    Paging::Long
                } else {
                    Paging::Pae
                };
                for (off, phys) in [
                    (CODE, img.code_phys),
                    (DATA, img.data_phys),
                    (STACK, img.stack_phys),
                ] {
                    assert_eq!(
                        translate(&img.memory, kind, img.sys.cr3, img.linear(off)),
                        Some(phys),
                        "{mode} {}",
                        v.name(&cfg)
                    );
                }
                assert_eq!(
                    translate(&img.memory, kind, img.sys.cr3, img.linear(HANDLERS)),
                    Some(HANDLERS)
                );
                assert_eq!(translate(&img.memory, kind, img.sys.cr3, 0), None);
                assert_eq!(img.memory[img.code_phys as usize], SENTINEL);
                assert_eq!(img.memory[img.data_phys as usize + 1], data_fill(1));
            }
        }
        let moved = Variant {
            phys_moved: true,
            ..Variant::base(&cfg)
        };
        let img = GuestImage::build(Mode::Prot32, cfg, moved);
        assert_eq!(img.data_phys, MOVED_PHYS + PAGE);
        assert_eq!(img.sys.cr3, MOVED_PAGE_TABLES);
        // The page tables it records: PDPT, PD and PT there (PAE), four
        // tables at the usual place in 64-bit mode, none in real mode.
        assert_eq!(img.table_pages, 0b111 << (MOVED_PAGE_TABLES / PAGE));
        let long = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        assert_eq!(long.table_pages, 0b1111 << (PAGE_TABLES / PAGE));
        let real = GuestImage::build(Mode::Real, cfg, Variant::base(&cfg));
        assert_eq!(real.table_pages, 0);
    }

    #[test]
    fn relocation_moves_tables_and_shifts_bases() {
        let cfg = Config::UMIP_OFF;
        let moved = GuestImage::build(
            Mode::Prot32,
            cfg,
            Variant {
                tables_moved: true,
                ..Variant::base(&cfg)
            },
        );
        assert_eq!(moved.sys.gdtr.0, MOVED_TABLES);
        assert_eq!(moved.sys.idtr.0, MOVED_TABLES + PAGE);
        assert_eq!(moved.sys.tr.base, MOVED_TABLES + 2 * PAGE);
        assert_eq!(moved.sys.tr.selector, sel::MOVED_TSS);
        assert_eq!(moved.sys.ldtr.selector, sel::MOVED_LDT);
        let (_, _, access, _) = decode(gdt_entry(&moved, sel::MOVED_TSS));
        assert_eq!(access, 0x89, "TSS descriptor in its moved slot");
        assert_eq!(gdt_entry(&moved, sel::TSS), 0, "old slot empty");
        assert_eq!(moved.selector(Side::User, SelRole::Tss), sel::MOVED_TSS);
        let shifted = GuestImage::build(
            Mode::Prot16,
            cfg,
            Variant {
                seg_shifted: true,
                ..Variant::base(&cfg)
            },
        );
        assert_eq!(shifted.supervisor.segs[0].base, SEG_SHIFT);
        assert_eq!(shifted.user.as_ref().unwrap().segs[2].base, SEG_SHIFT);
        assert_eq!(
            shifted.data_phys,
            SEG_SHIFT + DATA,
            "no paging: pages move physically"
        );
        assert_eq!(
            shifted.memory[(SEG_SHIFT + entry::BOOT_USER) as usize],
            0xB8,
            "boot stub copied with the handlers"
        );
    }

    #[test]
    fn both_sides_start_with_the_same_data_segments_and_their_own_cs_and_ss() {
        // Equal inputs: what an instruction reads from DS, ES, FS or GS is the
        // same at CPL 0 and CPL 3, and in every variant (ring compression
        // included), so a difference in what it leaves is a result. CS and SS
        // must differ: their RPL is the CPL.
        let cfg = Config::UMIP_OFF;
        for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64] {
            for v in Variant::matrix(mode, &cfg) {
                let img = GuestImage::build(mode, cfg, v);
                let (s, u) = (&img.supervisor, img.user.as_ref().unwrap());
                let name = v.name(&cfg);
                for i in 2..6 {
                    assert_eq!(s.segs[i], u.segs[i], "{mode} {name} seg {i}");
                    assert_eq!(s.segs[i].selector, sel::UDATA, "{mode} {name} seg {i}");
                }
                for i in 0..2 {
                    assert_eq!(s.segs[i].selector & 3, u16::from(s.cpl), "{mode} {name}");
                    assert_eq!(u.segs[i].selector & 3, 3, "{mode} {name}");
                }
            }
        }
    }

    #[test]
    fn ring_compression_lowers_supervisor_descriptors() {
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(
            Mode::Prot32,
            cfg,
            Variant {
                supervisor_dpl: 1,
                ..Variant::base(&cfg)
            },
        );
        assert_eq!(img.supervisor.cpl, 1);
        assert_eq!(img.supervisor.segs[0].selector, sel::KCODE | 1);
        let (_, _, access, _) = decode(gdt_entry(&img, sel::KCODE));
        assert_eq!((access >> 5) & 3, 1);
        assert_eq!(
            img.selector(Side::Supervisor, SelRole::OwnStack),
            sel::KDATA | 1
        );
    }

    #[test]
    fn ring_compressed_long_mode_images_lead_their_gates_to_exit_stubs() {
        let cfg = Config::UMIP_OFF;
        let gate_offset = |img: &GuestImage, v: usize| {
            let at = IDT as usize + v * 16;
            let lo = u64::from_le_bytes(img.memory[at..at + 8].try_into().unwrap());
            let hi = u64::from_le_bytes(img.memory[at + 8..at + 16].try_into().unwrap());
            (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000) | ((hi & 0xFFFF_FFFF) << 32)
        };
        for mode in [Mode::Long64, Mode::Compat32] {
            for dpl in [0u8, 1, 3] {
                let v = Variant {
                    supervisor_dpl: dpl,
                    ..Variant::base(&cfg)
                };
                let img = GuestImage::build(mode, cfg, v);
                assert_eq!(img.has_exit_stubs(), dpl != 0, "{mode} ring{dpl}");
                let mmio = translate(&img.memory, Paging::Long, PAGE_TABLES, entry::EXIT_MMIO);
                for vec in [0usize, 13, 255] {
                    let (want, mapped) = if dpl == 0 {
                        (entry::VECTORS + vec as u64 * entry::VECTOR_STRIDE, None)
                    } else {
                        let stub = entry::EXIT_STUBS + vec as u64 * entry::EXIT_STUB_STRIDE;
                        let at = stub as usize;
                        assert_eq!(
                            img.memory[at..at + entry::EXIT_STUB_LEN as usize],
                            entry::exit_stub(vec as u8),
                            "{mode} ring{dpl} vector {vec}"
                        );
                        assert_eq!(img.memory[at + entry::EXIT_STUB_LEN as usize], SENTINEL);
                        (stub, Some(entry::EXIT_MMIO))
                    };
                    assert_eq!(
                        gate_offset(&img, vec),
                        want,
                        "{mode} ring{dpl} vector {vec}"
                    );
                    assert_eq!(mmio, mapped, "{mode} ring{dpl}");
                }
            }
        }
        // Without long mode the gates stay on the HLT stubs.
        let v = Variant {
            supervisor_dpl: 1,
            ..Variant::base(&cfg)
        };
        assert!(!GuestImage::build(Mode::Prot32, cfg, v).has_exit_stubs());
    }

    #[test]
    fn config_and_variant_reach_control_registers_and_flags() {
        let on = GuestImage::build(
            Mode::Long64,
            Config::UMIP_ON,
            Variant::base(&Config::UMIP_ON),
        );
        assert_ne!(on.sys.cr4 & CR4_UMIP, 0);
        let off = GuestImage::build(
            Mode::Long64,
            Config::UMIP_OFF,
            Variant::base(&Config::UMIP_OFF),
        );
        assert_eq!(off.sys.cr4 & CR4_UMIP, 0);
        assert_eq!(off.sys.efer & EFER_LMA, EFER_LMA);
        let v = Variant {
            if_flag: false,
            iopl: 3,
            cr0_xor: CR0_TS,
            ..Variant::base(&Config::UMIP_OFF)
        };
        let img = GuestImage::build(Mode::Prot32, Config::UMIP_OFF, v);
        assert_eq!(img.supervisor.rflags, 0x3002);
        assert_ne!(img.sys.cr0 & CR0_TS, 0);
    }

    #[test]
    fn a_run_tests_start_state_is_the_same_taken_or_copied() {
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        for side in Side::BOTH {
            let p = img.prepare(side, &[0x90], &Setup::default()).unwrap();
            assert_eq!(
                img.initial_user_state(side, &p),
                img.into_initial_user_state(side, p.clone())
            );
            assert_eq!(p.data_page[7], data_fill(7));
            assert_eq!(p.stack_page[9], stack_fill(9));
        }
    }

    #[test]
    fn prepare_resolves_symbols_per_side() {
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Prot32, cfg, Variant::base(&cfg));
        let setup = Setup {
            regs: vec![
                (Gpr::Rax, Sym::Sel(SelRole::OwnCode)),
                (Gpr::Rcx, Sym::Sentinel),
            ],
            mem: vec![MemInit {
                region: Region::Stack,
                offset: 0x800,
                size: 4,
                value: Sym::FlagsXor(0x3200),
            }],
            patches: vec![Patch {
                offset: 1,
                size: 2,
                value: Sym::Sel(SelRole::OwnCode),
            }],
            seg_load: None,
            soft_interrupt: None,
        };
        let bytes = [0x90, 0, 0];
        let s = img.prepare(Side::Supervisor, &bytes, &setup).unwrap();
        let u = img.prepare(Side::User, &bytes, &setup).unwrap();
        assert_eq!(s.gprs[0], sel::KCODE as u64);
        assert_eq!(u.gprs[0], sel::UCODE as u64);
        assert_eq!(s.gprs[1], TEST_RIP + 3);
        assert_eq!(s.sentinel, TEST_RIP + 3);
        assert_eq!(&u.code_page[0x100..0x104], &[0x90, 0x2b, 0x00, SENTINEL]);
        assert_eq!(
            u32::from_le_bytes(s.stack_page[0x800..0x804].try_into().unwrap()),
            0x202 ^ 0x3200
        );
        assert_eq!(s.gprs[3], DATA + 0x180);
        let real = GuestImage::build(Mode::Real, cfg, Variant::base(&cfg));
        assert!(real.prepare(Side::User, &bytes, &setup).is_none());
    }
}
