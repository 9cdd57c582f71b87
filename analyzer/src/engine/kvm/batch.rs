//! Batch execution on KVM: many CPL-3 cases of one 64-bit image per KVM_RUN.
//!
//! A second memory slot (`SLOT_BASE`, `SLOT_SIZE` bytes; engine scaffolding,
//! never part of the image) holds a small ring-0 runtime, the cases (their
//! code, data and stack pages, GPRs and entry state) and the results. For
//! the batch only, the engine's copy of guest memory is patched: PDPT
//! entry 1 maps the slot (1 GiB up, supervisor-only 4 KiB pages, so user
//! code cannot touch it; supervisor code under test could), and every IDT
//! gate points at a recording stub in the slot instead of the image's HLT
//! stub. Both patches are undone after the batch.
//!
//! Per case the runtime copies the three pages to the physical pages of the
//! program's CODE, DATA and STACK (through supervisor-only aliases in the
//! slot's page tables), resets x87/SSE with FXRSTOR of the
//! state KVM_SET_FPU gives a single run (skipped under CR0.TS, where no
//! test can touch that state), loads DS/ES/FS/GS, the GPRs, and IRETQs to
//! the test. Every exception from CPL 3 arrives at a recording stub, which
//! saves the vector, error code, frame, GPRs, data selectors, FS/GS base
//! (RDMSR) and copies the data and stack pages out, then starts the next
//! case. An exception whose frame shows CPL 0 (a fault of the runtime, or
//! a test that reached ring 0) stops the batch with a HLT; so does any
//! other exit (a HLT entry stub at CPL 0, the watchdog, a shutdown).
//!
//! The engine turns each record into the `Observation` a single run gives:
//! the same rules as `on_vector`, with the system state at the handler taken
//! from a single NOP run of the same image (at CPL 3 no instruction can
//! change CRs, descriptor-table registers, EFER or MSRs other than FS/GS
//! base, which the runtime reads). What the runtime cannot reproduce falls
//! back to a single run: software interrupts (their after-state is the
//! ring-0 handler's), data segment registers that changed selector, cases
//! after an early end, and a whole batch in which the guest dirtied a page
//! outside the test's pages, the ring-0 stack and the page tables.
//!
//! Not reproduced (no observation records them): the ring-0 stack page and
//! the page tables' accessed/dirty bits carry over between cases of a batch.
//!
//! **Off by default** (`POPEK_KVM_BATCH=1` or [`KvmEngine::set_batching`]
//! turn it on), because on this project's machines it is slower and not
//! equivalent. Measured on `kvm_pvm` (bench `kvm_batch`, 256 NOP cases):
//! batched CPL 3 runs about 380 cases/s, single runs 10,700/s (CPL 0:
//! 15,700/s; CPL-0 cases are never batched). Without the page copies a
//! batched case still took about 170 µs, and each copied page about
//! 0.45 ms; an explicit load/store loop was slower than REP MOVSQ. The likely
//! cause (inferred, not proven): per the PVM specification (virt-pvm/linux,
//! Documentation/virt/kvm/x86/pvm-spec.rst) a guest supervisor that does
//! not follow the PVM ABI (PVCS, event entry, ERETU) is not in "PVM
//! supervisor mode"; such code then runs instruction by instruction in
//! KVM's x86 emulator (measured by `nop_slide_speed_per_cpl`: 0.6 µs per
//! NOP at CPL 0, nothing measurable at CPL 3; a batched case runs about
//! 150 instructions at CPL 0, plus 512 REP MOVSQ steps per page), which would also explain why INT n, LAR,
//! RDTSCP and the like end in KVM_EXIT_INTERNAL_ERROR at CPL 0.
//! Neither supervisor aliases of the user pages nor 4 KiB slot pages changed
//! the rate.
//! A full 64-bit scan (`popek scan --engine kvm --mode 64`, 2 cores) takes
//! about 14 s with single runs and 40.5 s with `POPEK_KVM_BATCH=1`. Batching
//! everything at CPL 3 changed 61 of its 9,012 records: MOV r, Sreg (on PVM
//! the hardware selector it reads depends on the runs before) and stores of
//! x87, SSE, AVX and XSAVE state (not reset alike by FXRSTOR in the batch
//! and KVM_SET_FPU in a single run); hence [`batchable`]. With that filter
//! 24 records still differ from entry-by-entry single runs, all MOV r, Sreg
//! (each reported `nondeterministic`), and the same 24 differ when the
//! single runs are only reordered image by image: an order dependence of
//! single runs on PVM, not of the batch. On VT-x or SVM the runtime should
//! run natively; neither speed nor equivalence has been measured there.

use super::{hlt_gp_end, soft_interrupt_vector, Exit, KvmEngine, ERROR_CODE_VECTORS, TIME_LIMIT};
use crate::machine::descriptors::{gate64, TYPE_INTERRUPT_GATE};
use crate::machine::image::{msr, USER_GATES};
use crate::machine::{sel, GuestImage, Prepared, CODE, KSTACK, PAGE, SENTINEL};
use crate::mode::Mode;
use crate::observe::{
    Observation, Outcome, Segment, Side, SystemState, UserState, SYS_FLAGS_MASK, USER_FLAGS_MASK,
};
use std::time::Instant;

/// Guest-physical (and linear) base of the batch slot: PDPT entry 1.
pub(super) const SLOT_BASE: u64 = 0x4000_0000;
/// Size of the batch slot (four 2 MiB pages).
pub(super) const SLOT_SIZE: u64 = 0x80_0000;
/// Most cases of one batch.
pub const MAX_BATCH: usize = 256;

// Layout of the slot (offsets). The page directory and its four page
// tables map the slot from `MAPPED` on with 4 KiB pages; the tables
// themselves are not mapped.
const PD: u64 = 0x0000;
const PTS: u64 = 0x1000;
const MAPPED: u64 = 0x10000;
// Supervisor-only aliases of the image's CODE, DATA, STACK and ring-0 stack
// pages (their physical pages): the runtime touches the image's pages only
// through these. Measured on PVM: every access of the guest supervisor to a
// user page (U/S = 1, as all of the image's pages are) traps to the
// hypervisor; a batched case that copied its pages through the user
// mappings took 2.5 ms.
const A_CODE: u64 = 0x8000;
const A_DATA: u64 = 0x9000;
const A_STACK: u64 = 0xA000;
const A_KSTACK: u64 = 0xB000;
const CTRL: u64 = 0x11000;
const CTRL_N: u64 = CTRL;
const CTRL_I: u64 = CTRL + 8;
const SCR: u64 = CTRL + 0x100;
const CUR: u64 = CTRL + 0x200;
const FPU_IMAGE: u64 = CTRL + 0x400;
const STUBS: u64 = 0x12000;
const STUB_STRIDE: u64 = 16;
const RUNTIME: u64 = 0x13000;
const RT_STACK_TOP: u64 = 0x15000;
const DESCS: u64 = 0x18000;
const DESC_SIZE: u64 = 256;
const RECS: u64 = 0x28000;
const REC_SIZE: u64 = 256;
const INPUT: u64 = 0x40000;
const OUTPUT: u64 = 0x340000;

// Case descriptor (qword index): GPRs 0..16, then these.
const D_RIP: u64 = 16;
const D_RFLAGS: u64 = 17;
const D_CS: u64 = 18;
const D_SS: u64 = 19;
const D_DATA: u64 = 20;
// Record (qword index): GPRs 0..16, then these.
const R_VECTOR: usize = 16;
const R_EC: usize = 17;
const R_RIP: usize = 18;
const R_CS: usize = 19;
const R_FLAGS: usize = 20;
const R_RSP: usize = 21;
const R_SS: usize = 22;
const R_SEGS: usize = 23; // DS, ES, FS, GS
const R_FS_BASE: usize = 27;
const R_GS_BASE: usize = 28;
const R_DONE: usize = 29;

fn abs(off: u64) -> u32 {
    (SLOT_BASE + off) as u32
}

/// A tiny x86-64 assembler for the runtime (absolute addresses < 2 GiB).
#[derive(Default)]
struct Asm {
    c: Vec<u8>,
}

impl Asm {
    fn b(&mut self, bytes: &[u8]) {
        self.c.extend_from_slice(bytes);
    }
    fn d32(&mut self, v: u32) {
        self.c.extend_from_slice(&v.to_le_bytes());
    }
    /// mov [abs], r64
    fn store(&mut self, addr: u32, r: u8) {
        self.b(&[0x48 | ((r >> 3) << 2), 0x89, 0x04 | ((r & 7) << 3), 0x25]);
        self.d32(addr);
    }
    /// mov r64, [abs]
    fn load(&mut self, r: u8, addr: u32) {
        self.b(&[0x48 | ((r >> 3) << 2), 0x8B, 0x04 | ((r & 7) << 3), 0x25]);
        self.d32(addr);
    }
    /// mov e(r), imm32 (zero-extends), r < 8
    fn mov_imm(&mut self, r: u8, v: u32) {
        self.b(&[0xB8 + r]);
        self.d32(v);
    }
    /// push qword [abs]
    fn push_mem(&mut self, addr: u32) {
        self.b(&[0xFF, 0x34, 0x25]);
        self.d32(addr);
    }
    /// rsi/rdi-relative page copy: mov ecx, n; rep movsq
    fn movsq(&mut self, qwords: u32) {
        self.mov_imm(1, qwords);
        self.b(&[0xF3, 0x48, 0xA5]);
    }
    /// rax = [CTRL_I] * size + base (absolute)
    fn index_addr(&mut self, size: u32, base: u64) {
        self.load(0, abs(CTRL_I));
        self.b(&[0x48, 0x69, 0xC0]);
        self.d32(size);
        self.b(&[0x48, 0x05]);
        self.d32(abs(base));
    }
    /// jmp/jcc rel32 to an absolute slot offset, given where this code goes.
    fn rel32_to(&mut self, origin: u64, target: u64) {
        let next = origin + self.c.len() as u64 + 4;
        self.d32(target.wrapping_sub(next) as u32);
    }
}

/// The runtime's entry points (slot offsets).
pub(super) struct Runtime {
    pub code: Vec<u8>,
    pub next: u64,
    pub done_hlt: u64,
}

/// Assembles the runtime at `RUNTIME` and the recording stubs at `STUBS`
/// (returned as one blob starting at `STUBS`).
fn runtime(fxrstor: bool) -> Runtime {
    let mut a = Asm::default();
    let origin = RUNTIME;
    // next: start case [CTRL_I], or stop at done.
    let next = origin;
    a.b(&[0xFC]); // cld
    a.load(0, abs(CTRL_I));
    a.b(&[0x48, 0x3B, 0x04, 0x25]); // cmp rax, [CTRL_N]
    a.d32(abs(CTRL_N));
    a.b(&[0x0F, 0x83]); // jae done
    let jae_at = a.c.len();
    a.d32(0);
    // Copy the case's three pages in.
    a.index_addr(3 * PAGE as u32, INPUT);
    a.b(&[0x48, 0x89, 0xC6]); // mov rsi, rax
    for page in [A_CODE, A_DATA, A_STACK] {
        a.mov_imm(7, abs(page));
        a.movsq(512);
    }
    // Its descriptor to CUR.
    a.index_addr(DESC_SIZE as u32, DESCS);
    a.b(&[0x48, 0x89, 0xC6]); // mov rsi, rax
    a.mov_imm(7, abs(CUR));
    a.movsq((DESC_SIZE / 8) as u32);
    if fxrstor {
        a.b(&[0x48, 0x0F, 0xAE, 0x0C, 0x25]); // fxrstor64 [FPU_IMAGE]
        a.d32(abs(FPU_IMAGE));
    }
    a.load(0, abs(CUR + D_DATA * 8));
    for sreg in [3u8, 0, 4, 5] {
        a.b(&[0x8E, 0xC0 | (sreg << 3)]); // mov ds/es/fs/gs, ax
    }
    for q in [D_SS, 4, D_RFLAGS, D_CS, D_RIP] {
        a.push_mem(abs(CUR + q * 8));
    }
    for r in 0..16u8 {
        if r != 4 {
            a.load(r, abs(CUR + r as u64 * 8));
        }
    }
    a.b(&[0x48, 0xCF]); // iretq
    let done = origin + a.c.len() as u64;
    let rel = (done - (origin + jae_at as u64 + 4)) as u32;
    a.c[jae_at..jae_at + 4].copy_from_slice(&rel.to_le_bytes());
    a.b(&[0xF4]); // hlt: the batch is done
    let done_hlt = done + 1;
    a.b(&[0xF4]); // hlt: stopped (a frame from CPL 0)
    let abort = done + 1;
    // common: the recording routine.
    let common = origin + a.c.len() as u64;
    for r in 0..16u8 {
        a.store(abs(SCR + r as u64 * 8), r);
    }
    // Frame at rsp: vector, error code, rip, cs, rflags, rsp, ss.
    a.b(&[0x48, 0x8B, 0x44, 0x24, 0x18]); // mov rax, [rsp+0x18]
    a.b(&[0xA8, 0x03]); // test al, 3
    a.b(&[0x0F, 0x84]); // jz abort
    a.rel32_to(origin, abort);
    a.b(&[0xFC]); // cld
    a.b(&[0x48, 0x89, 0xE6]); // mov rsi, rsp
    a.b(&[0x48, 0x81, 0xC6]); // add rsi, alias - KSTACK
    a.d32((SLOT_BASE + A_KSTACK - KSTACK) as u32);
    a.mov_imm(7, abs(SCR + R_VECTOR as u64 * 8));
    a.movsq(7);
    for (j, sreg) in [3u8, 0, 4, 5].into_iter().enumerate() {
        a.b(&[0x48, 0x8C, 0xC0 | (sreg << 3)]); // mov rax, sreg
        a.store(abs(SCR + (R_SEGS + j) as u64 * 8), 0);
    }
    for (idx, slot) in [(msr::FS_BASE, R_FS_BASE), (msr::GS_BASE, R_GS_BASE)] {
        a.mov_imm(1, idx);
        a.b(&[0x0F, 0x32]); // rdmsr
        let at = abs(SCR + slot as u64 * 8);
        a.b(&[0x89, 0x04, 0x25]); // mov [at], eax
        a.d32(at);
        a.b(&[0x89, 0x14, 0x25]); // mov [at+4], edx
        a.d32(at + 4);
    }
    a.b(&[0x48, 0xC7, 0x04, 0x25]); // mov qword [SCR+R_DONE], 1
    a.d32(abs(SCR + R_DONE as u64 * 8));
    a.d32(1);
    a.b(&[0x48, 0xBC]); // mov rsp, imm64
    a.c.extend_from_slice(&(SLOT_BASE + RT_STACK_TOP).to_le_bytes());
    a.index_addr(REC_SIZE as u32, RECS);
    a.b(&[0x48, 0x89, 0xC7]); // mov rdi, rax
    a.mov_imm(6, abs(SCR));
    a.movsq((REC_SIZE / 8) as u32);
    a.index_addr(2 * PAGE as u32, OUTPUT);
    a.b(&[0x48, 0x89, 0xC7]); // mov rdi, rax
    for page in [A_DATA, A_STACK] {
        a.mov_imm(6, abs(page));
        a.movsq(512);
    }
    a.b(&[0x48, 0xFF, 0x04, 0x25]); // inc qword [CTRL_I]
    a.d32(abs(CTRL_I));
    a.b(&[0xE9]); // jmp next
    a.rel32_to(origin, next);
    assert!(a.c.len() as u64 <= PAGE, "runtime too long");
    // The stubs, one per vector: [push 0] push v; jmp common.
    let mut blob = vec![SENTINEL; (RUNTIME - STUBS) as usize];
    for v in 0..256u64 {
        let mut s = Asm::default();
        if !ERROR_CODE_VECTORS.contains(&(v as u8)) {
            s.b(&[0x6A, 0x00]);
        }
        s.b(&[0x68]);
        s.d32(v as u32);
        s.b(&[0xE9]);
        s.rel32_to(STUBS + v * STUB_STRIDE, common);
        let at = (v * STUB_STRIDE) as usize;
        blob[at..at + s.c.len()].copy_from_slice(&s.c);
    }
    blob.extend_from_slice(&a.c);
    Runtime {
        code: blob,
        next,
        done_hlt,
    }
}

/// Whether a batch may run this test: not when its instruction has a
/// segment register operand or touches x87, MMX, SSE, AVX or XSAVE state. Measured
/// on PVM: such results differ between a batch and single runs (the
/// hardware selectors and that state are not reset the same way).
pub(super) fn batchable(test: &Prepared) -> bool {
    use iced_x86::{CpuidFeature as F, Decoder, DecoderOptions, EncodingKind, OpKind};
    let Some(start) = test.rip.checked_sub(CODE) else {
        return false;
    };
    let Some(bytes) = test.code_page.get(start as usize..) else {
        return false;
    };
    let mut d = Decoder::with_ip(64, bytes, test.rip, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        return true; // #UD, as in a single run
    }
    if i.encoding() != EncodingKind::Legacy {
        return false;
    }
    for n in 0..i.op_count() {
        if i.op_kind(n) == OpKind::Register {
            let r = i.op_register(n);
            if r.is_segment_register()
                || r.is_st()
                || r.is_mm()
                || r.is_xmm()
                || r.is_ymm()
                || r.is_zmm()
                || r.is_k()
            {
                return false;
            }
        }
    }
    !i.cpuid_features().iter().any(|f| {
        matches!(
            f,
            F::FPU
                | F::FPU287
                | F::FPU287XL_ONLY
                | F::FPU387
                | F::FPU387SL_ONLY
                | F::FXSR
                | F::MMX
                | F::SSE
                | F::SSE2
                | F::SSE3
                | F::SSSE3
                | F::SSE4_1
                | F::SSE4_2
                | F::SSE4A
                | F::XSAVE
                | F::XSAVEOPT
                | F::XSAVEC
                | F::XSAVES
                | F::AVX
                | F::AVX2
        )
    })
}

fn put_u64(buf: &mut [u8], off: u64, v: u64) {
    let o = off as usize;
    buf[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(buf: &[u8], off: u64) -> u64 {
    let o = off as usize;
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[o..o + 8]);
    u64::from_le_bytes(b)
}

/// The state of a single NOP run at CPL 3 in an image: its before-state and
/// its after-state (the system state at the #GP handler of the sentinel).
#[derive(Clone)]
pub(super) struct Template {
    before: SystemState,
    after: SystemState,
}

impl KvmEngine {
    /// Whether `run_batch` may batch the CPL-3 cases of this image.
    pub(super) fn can_batch(&mut self, image: &GuestImage) -> bool {
        self.batching
            && image.mode == Mode::Long64
            && image.supervisor.cpl == 0
            && image.user.is_some()
            && self.dirty_log
            && self.mode_supported(image.mode, image.config).is_ok()
    }

    fn template(&mut self, image: &GuestImage) -> Option<Template> {
        let key = (image.mode, image.config, image.variant);
        if let Some(t) = self.templates.get(&key) {
            return t.clone();
        }
        let t = image
            .prepare(Side::User, &[0x90], &Default::default())
            .and_then(|p| {
                let o = self.run_checked(image, Side::User, &p);
                match (&o.outcome, o.after) {
                    (
                        Outcome::Completed {
                            at_sentinel: true, ..
                        },
                        Some(after),
                    ) => Some(Template {
                        before: o.before,
                        after,
                    }),
                    _ => None,
                }
            });
        self.templates.insert(key, t.clone());
        t
    }

    /// The pages of the image's 4-level page tables: PML4, PDPT, PD, PT.
    fn table_pages(&self, image: &GuestImage) -> Option<[u64; 4]> {
        let mem = self.mem.slice();
        let next = |table: u64| -> Option<u64> {
            let e = get_u64(mem.get(table as usize..table as usize + 8)?, 0);
            (e & 1 != 0).then_some(e & 0x000F_FFFF_FFFF_F000)
        };
        let pml4 = image.sys.cr3 & !0xFFF;
        let pdpt = next(pml4)?;
        let pd = next(pdpt)?;
        let pt = next(pd)?;
        Some([pml4, pdpt, pd, pt])
    }

    /// Runs up to `MAX_BATCH` CPL-3 cases in one go; `None` for every case
    /// the batch did not decide (the caller runs those one by one).
    pub(super) fn batch_user(
        &mut self,
        image: &GuestImage,
        cases: &[&Prepared],
    ) -> Vec<Option<Observation>> {
        let mut out = vec![None; cases.len()];
        if cases.is_empty() || cases.len() > MAX_BATCH {
            return out;
        }
        let Some(tpl) = self.template(image) else {
            return out;
        };
        let Some(user) = image.user.clone() else {
            return out;
        };
        // Fresh image memory, as a single run starts.
        self.undo_guest_writes();
        self.load(image);
        self.restore(image, cases[0]);
        let Some(tables) = self.table_pages(image) else {
            return out;
        };
        let fxrstor = image.sys.cr0 & crate::machine::CR0_TS == 0;
        let rt = runtime(fxrstor);
        // The slot: page directory, control, FPU image, code, cases.
        {
            let s = self.slot.slice_mut();
            s[..MAPPED as usize].fill(0);
            for i in 0..(SLOT_SIZE >> 21) {
                put_u64(s, PD + i * 8, (SLOT_BASE + PTS + i * PAGE) | 0x3);
            }
            for off in (MAPPED..SLOT_SIZE).step_by(PAGE as usize) {
                put_u64(s, PTS + (off >> 12) * 8, (SLOT_BASE + off) | 0x3);
            }
            for (alias, phys) in [
                (A_CODE, image.code_phys),
                (A_DATA, image.data_phys),
                (A_STACK, image.stack_phys),
                (A_KSTACK, KSTACK),
            ] {
                put_u64(s, PTS + (alias >> 12) * 8, phys | 0x3);
            }
            put_u64(s, CTRL_N, cases.len() as u64);
            put_u64(s, CTRL_I, 0);
            let f = FPU_IMAGE as usize;
            s[f..f + 512].fill(0);
            s[f..f + 2].copy_from_slice(&0x37Fu16.to_le_bytes());
            s[f + 24..f + 28].copy_from_slice(&0x1F80u32.to_le_bytes());
            let c = STUBS as usize;
            s[c..c + rt.code.len()].copy_from_slice(&rt.code);
            for (i, p) in cases.iter().enumerate() {
                let d = DESCS + i as u64 * DESC_SIZE;
                for (r, g) in p.gprs.iter().enumerate() {
                    put_u64(s, d + r as u64 * 8, *g);
                }
                put_u64(s, d + D_RIP * 8, p.rip);
                put_u64(s, d + D_RFLAGS * 8, user.rflags);
                put_u64(s, d + D_CS * 8, user.segs[0].selector as u64);
                put_u64(s, d + D_SS * 8, user.segs[1].selector as u64);
                put_u64(s, d + D_DATA * 8, user.segs[2].selector as u64);
                let r = (RECS + i as u64 * REC_SIZE) as usize;
                s[r..r + REC_SIZE as usize].fill(0);
                let inp = (INPUT + i as u64 * 3 * PAGE) as usize;
                let pg = PAGE as usize;
                s[inp..inp + pg].copy_from_slice(&p.code_page);
                s[inp + pg..inp + 2 * pg].copy_from_slice(&p.data_page);
                s[inp + 2 * pg..inp + 3 * pg].copy_from_slice(&p.stack_page);
            }
        }
        // Rounds: a case that stops the runtime (a hang, an exit) is left
        // to a single run and the batch goes on after it.
        let mut start = 0usize;
        while start < cases.len() {
            let Some((done, stray)) = self.batch_round(image, cases[0], &tables, &rt, start) else {
                return out;
            };
            if stray {
                // Some case wrote outside its pages: trust no result.
                return vec![None; cases.len()];
            }
            let s = self.slot.slice();
            for (i, p) in cases.iter().enumerate().take(done).skip(start) {
                let r = (RECS + i as u64 * REC_SIZE) as usize;
                let rec: Vec<u64> = s[r..r + REC_SIZE as usize]
                    .chunks_exact(8)
                    .map(|c| get_u64(c, 0))
                    .collect();
                let o = (OUTPUT + i as u64 * 2 * PAGE) as usize;
                let pg = PAGE as usize;
                out[i] = decide(image, p, &tpl, &rec, &s[o..o + pg], &s[o + pg..o + 2 * pg]);
            }
            start = done + 1;
        }
        out
    }

    /// One entry into the runtime from case `start`: how far it got (cases
    /// before that have records) and whether the guest wrote a page outside
    /// the test's pages, the ring-0 stack and the page tables; `None` if the
    /// slot's state cannot be trusted.
    fn batch_round(
        &mut self,
        image: &GuestImage,
        first: &Prepared,
        tables: &[u64; 4],
        rt: &Runtime,
        start: usize,
    ) -> Option<(usize, bool)> {
        put_u64(self.slot.slice_mut(), CTRL_I, start as u64);
        // Patch the PDPT (slot mapping) and the IDT (recording stubs).
        let pdpt = tables[1];
        let idt = image.sys.idtr.0;
        {
            let g = self.mem.slice_mut();
            put_u64(g, pdpt + 8, (SLOT_BASE + PD) | 0x3);
            for v in 0..256u64 {
                let dpl = if USER_GATES.contains(&(v as u8)) {
                    3
                } else {
                    0
                };
                let [lo, hi] = gate64(
                    SLOT_BASE + STUBS + v * STUB_STRIDE,
                    sel::KCODE,
                    1,
                    TYPE_INTERRUPT_GATE,
                    dpl,
                );
                put_u64(g, idt + v * 16, lo);
                put_u64(g, idt + v * 16 + 8, hi);
            }
        }
        let ended = self.batch_execute(image, first, rt.next);
        let clean = ended == Some(SLOT_BASE + rt.done_hlt);
        let mut allowed = vec![image.code_phys, image.data_phys, image.stack_phys, KSTACK];
        allowed.extend(tables);
        let dirty = self.take_dirty_pages();
        let stray = dirty.iter().any(|p| !allowed.contains(p));
        // Undo the guest's writes and the patches.
        {
            let g = self.mem.slice_mut();
            for p in dirty.iter().copied().chain([pdpt, idt & !(PAGE - 1)]) {
                let (a, b) = (p as usize, (p + PAGE) as usize);
                g[a..b].copy_from_slice(&self.loaded[a..b]);
            }
        }
        if !clean {
            self.reset_events = true;
        }
        let done = get_u64(self.slot.slice(), CTRL_I) as usize;
        if done < start || done > MAX_BATCH {
            return None;
        }
        Some((done, stray))
    }

    /// Starts the runtime at CPL 0 and runs to an exit; the RIP of a HLT
    /// exit, `None` for any other end.
    fn batch_execute(&mut self, image: &GuestImage, first: &Prepared, next: u64) -> Option<u64> {
        if self.set_state(image, Side::Supervisor, first).is_err() {
            self.reset_events = true;
            return None;
        }
        let regs = kvm_bindings::kvm_regs {
            rip: SLOT_BASE + next,
            rsp: SLOT_BASE + RT_STACK_TOP,
            rflags: 0x2,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).ok()?;
        let deadline = Instant::now() + TIME_LIMIT;
        self.watchdog.arm(deadline);
        let result = self.run_loop(deadline);
        self.watchdog.disarm();
        match result {
            Ok(Exit::Hlt) => self.vcpu.get_regs().ok().map(|r| r.rip),
            _ => None,
        }
    }

    /// The guest pages KVM logged as dirty since the last look.
    fn take_dirty_pages(&mut self) -> Vec<u64> {
        let Ok(bitmap) = self._vm.get_dirty_log(0, crate::machine::MEM_SIZE as usize) else {
            return (0..crate::machine::MEM_SIZE / PAGE)
                .map(|p| p * PAGE)
                .collect();
        };
        let host_page = super::page_size() as u64;
        let mut pages = Vec::new();
        for (w, bits) in bitmap.iter().enumerate() {
            let mut bits = *bits;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let start = (w as u64 * 64 + b) * host_page;
                let mut p = start;
                while p < start + host_page && p < crate::machine::MEM_SIZE {
                    pages.push(p);
                    p += PAGE;
                }
            }
        }
        pages
    }
}

/// The observation a single run gives for a recorded case, or `None` where
/// the record does not determine it.
fn decide(
    image: &GuestImage,
    p: &Prepared,
    tpl: &Template,
    rec: &[u64],
    data: &[u8],
    stack: &[u8],
) -> Option<Observation> {
    if rec[R_DONE] != 1 {
        return None;
    }
    let vector = rec[R_VECTOR] as u8;
    let has_ec = ERROR_CODE_VECTORS.contains(&vector);
    let error_code = has_ec.then_some(rec[R_EC] as u32);
    let (frame_rip, frame_cs, frame_flags) = (rec[R_RIP], rec[R_CS], rec[R_FLAGS]);
    if frame_cs & 0xFFFC == 0 {
        return None;
    }
    let first_slot = if has_ec { rec[R_EC] } else { frame_rip };
    if soft_interrupt_vector(&p.code_page, p.rip, image.mode) == Some(vector)
        && first_slot == p.sentinel
    {
        return None;
    }
    let (landed, arrived) = hlt_gp_end(p, vector, error_code, frame_rip);
    let before = tpl.before.clone();
    if !landed && arrived.is_none() {
        return Some(Observation::outcome_only(
            Outcome::Trap {
                vector,
                error_code,
                rip: frame_rip,
            },
            before,
        ));
    }
    // The state at the HLT, as on_vector rebuilds it.
    let mut after = tpl.after.clone();
    for j in 0..4 {
        if rec[R_SEGS + j] as u16 != after.segs[2 + j].selector {
            return None;
        }
    }
    after.cpl = (frame_cs & 3) as u8;
    let seg = |selector: u16, b: &Segment| Segment {
        selector,
        cache: if selector == b.selector {
            b.cache
        } else {
            None
        },
    };
    after.segs[0] = seg(frame_cs as u16, &before.segs[0]);
    after.segs[1] = seg(rec[R_SS] as u16, &before.segs[1]);
    after.sys_flags = frame_flags & SYS_FLAGS_MASK;
    // KVM reports FS/GS base as the segment caches' base too.
    for (i, base) in [(4, rec[R_FS_BASE]), (5, rec[R_GS_BASE])] {
        if let Some(c) = after.segs[i].cache.as_mut() {
            c.0 = base;
        }
    }
    for m in after.msrs.iter_mut() {
        if m.0 == msr::FS_BASE {
            m.1 = rec[R_FS_BASE];
        } else if m.0 == msr::GS_BASE {
            m.1 = rec[R_GS_BASE];
        }
    }
    if let Some(kind) = arrived {
        return Some(Observation {
            outcome: Outcome::Transfer {
                kind,
                rip: frame_rip,
                cpl: Some((frame_cs & 3) as u8),
            },
            before,
            after: Some(after),
            user: None,
            baseline: None,
            start: None,
        });
    }
    let mut gprs = [0u64; 16];
    gprs.copy_from_slice(&rec[..16]);
    gprs[4] = rec[R_RSP];
    Some(Observation {
        outcome: Outcome::Completed {
            rip: frame_rip,
            at_sentinel: frame_rip == p.sentinel,
        },
        before,
        after: Some(after),
        user: Some(UserState {
            gprs,
            rip: frame_rip,
            flags: frame_flags & USER_FLAGS_MASK,
            data: data.to_vec(),
            stack: stack.to_vec(),
        }),
        baseline: None,
        start: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::machine::{Setup, Variant};
    use crate::mode::Config;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    /// The engine, or `None` (test skipped) when KVM is not usable here;
    /// with POPEK_REQUIRE_KVM=1 a missing KVM fails the test instead.
    fn engine() -> Option<KvmEngine> {
        let reason = match KvmEngine::availability() {
            Ok(_) => match KvmEngine::new() {
                Ok(mut e) => {
                    e.set_batching(true);
                    return Some(e);
                }
                Err(e) => e.to_string(),
            },
            Err(r) => r,
        };
        if std::env::var("POPEK_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("KVM required (POPEK_REQUIRE_KVM=1) but unavailable: {reason}");
        }
        println!("skipped: {reason}");
        None
    }

    /// The instructions of the equivalence test: every outcome kind.
    fn cases() -> Vec<(&'static str, Vec<u8>, Setup)> {
        let cat = crate::catalog::build(Mode::Long64);
        let from_catalog = |m: &str, code: &str| {
            let e = cat
                .find_mnemonic(m)
                .into_iter()
                .find(|e| e.code == code)
                .unwrap_or_else(|| panic!("no {code} in the catalog"));
            (e.bytes.clone(), e.setup.clone())
        };
        let none = Setup::default;
        let (popf, popf_setup) = from_catalog("popfq", "Popfq");
        let (movcr0, movcr0_setup) = from_catalog("mov", "Mov_cr_r64");
        vec![
            ("nop", vec![0x90], none()),
            ("add", vec![0x01, 0xD8], none()),
            ("hlt", vec![0xF4], none()),
            ("cli", vec![0xFA], none()),
            (
                "sgdt",
                vec![0x0F, 0x01, 0x04, 0x25, 0x00, 0x81, 0, 0],
                none(),
            ),
            ("pushfq", vec![0x9C], none()),
            ("popfq", popf, popf_setup),
            ("mov cr0, rax", movcr0, movcr0_setup),
            ("ud2", vec![0x0F, 0x0B], none()),
            ("syscall", vec![0x0F, 0x05], none()),
            ("jmp $", vec![0xEB, 0xFE], none()),
            (
                "mov eax, [0] (#PF)",
                vec![0x8B, 0x04, 0x25, 0, 0, 0, 0],
                none(),
            ),
            ("int3", vec![0xCC], none()),
            ("int 0x80", vec![0xCD, 0x80], none()),
            ("wrfsbase rax", vec![0xF3, 0x48, 0x0F, 0xAE, 0xD0], none()),
            ("mov ds, ax (null)", vec![0x31, 0xC0, 0x8E, 0xD8], none()),
            ("std", vec![0xFD], none()),
            ("fld1", vec![0xD9, 0xE8], none()),
            ("movd eax, xmm0", vec![0x66, 0x0F, 0x7E, 0xC0], none()),
            ("stosb", vec![0xAA], none()),
            ("in al, dx", vec![0xEC], none()),
            ("jmp landing", vec![0xE9, 0xFB, 0x06, 0, 0], none()),
            // Not batched (they read state a batch does not reset alike).
            ("mov ecx, ds", vec![0x8C, 0xD9], none()),
            ("fnstcw", vec![0xD9, 0x3C, 0x25, 0x00, 0x81, 0, 0], none()),
            (
                "movntps",
                vec![0x0F, 0x2B, 0x04, 0x25, 0x00, 0x81, 0, 0],
                none(),
            ),
        ]
    }

    /// Every case run alone and in one batch, on every variant of 64-bit
    /// mode and both sides, gives equal observations.
    #[test]
    fn batch_results_equal_single_runs() {
        let Some(mut e) = engine() else { return };
        let list = cases();
        for cfg in Config::DEFAULTS {
            for v in Variant::matrix(Mode::Long64, &cfg) {
                let img = GuestImage::build(Mode::Long64, cfg, v);
                let mut prepared = Vec::new();
                for (name, bytes, setup) in &list {
                    for side in Side::BOTH {
                        if let Some(p) = img.prepare(side, bytes, setup) {
                            prepared.push((*name, side, p));
                        }
                    }
                }
                let single: Vec<Observation> = prepared
                    .iter()
                    .map(|(_, side, p)| e.run(&img, *side, p))
                    .collect();
                let batch_cases: Vec<(Side, &Prepared)> =
                    prepared.iter().map(|(_, side, p)| (*side, p)).collect();
                let batched = e.run_batch(&img, &batch_cases);
                assert_eq!(batched.len(), single.len());
                for ((name, side, _), (s, b)) in prepared.iter().zip(single.iter().zip(&batched)) {
                    let what = format!("{cfg} {} {side} {name}", v.name(&cfg));
                    assert_eq!(s.outcome, b.outcome, "{what}");
                    assert_eq!(s.before, b.before, "{what}");
                    assert_eq!(s.after, b.after, "{what}");
                    assert_eq!(s.user, b.user, "{what}");
                    assert_eq!(s, b, "{what}");
                }
            }
        }
        let (batched, alone) = e.batch_stats();
        println!("batched {batched}, run alone {alone}");
        if v_supports_batch(&mut e) {
            // Every CPL-3 case but the hang, INT3 and the five that are not
            // batched (segment register operands, x87/SSE), of the images
            // with a CPL-0 supervisor (9 per configuration).
            let want = (list.len() as u64 - 7) * 9 * Config::DEFAULTS.len() as u64;
            assert!(
                batched >= want,
                "batched {batched} of {want}, alone {alone}"
            );
        }
    }

    fn v_supports_batch(e: &mut KvmEngine) -> bool {
        let cfg = Config::UMIP_OFF;
        e.can_batch(&GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg)))
    }

    /// Batched NOP cases per second (`--ignored`; the bench `kvm_batch`
    /// measures the same).
    #[test]
    #[ignore]
    fn batch_rate() {
        let Some(mut e) = engine() else { return };
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        for side in Side::BOTH {
            let p = img.prepare(side, &[0x90], &Setup::default()).unwrap();
            let cases: Vec<(Side, &Prepared)> = (0..256).map(|_| (side, &p)).collect();
            let _ = e.run_batch(&img, &cases);
            let t = Instant::now();
            let n = 20;
            for _ in 0..n {
                let o = e.run_batch(&img, &cases);
                assert!(o[255].outcome.is_completed());
            }
            let rate = (n * cases.len()) as f64 / t.elapsed().as_secs_f64();
            println!(
                "{side}: {rate:.0} NOP runs/s by run_batch, stats {:?}",
                e.batch_stats()
            );
        }
    }

    /// How fast guest code runs at CPL 0 and at CPL 3: one run of 3,000
    /// NOPs against one run of one NOP (`--ignored`).
    #[test]
    #[ignore]
    fn nop_slide_speed_per_cpl() {
        let Some(mut e) = engine() else { return };
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        for side in Side::BOTH {
            let mut per = Vec::new();
            for len in [1usize, 3000] {
                let p = img
                    .prepare(side, &vec![0x90; len], &Setup::default())
                    .unwrap();
                let n = 200;
                let t = Instant::now();
                for _ in 0..n {
                    assert!(e.run(&img, side, &p).outcome.is_completed());
                }
                per.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
            }
            println!(
                "{side}: 1 nop {:.1} us, 3000 nops {:.1} us: {:.3} us per nop",
                per[0],
                per[1],
                (per[1] - per[0]) / 2999.0
            );
        }
    }

    /// A sample of the 64-bit catalog, batch against single runs.
    #[test]
    fn batch_results_equal_single_runs_on_a_catalog_sample() {
        let Some(mut e) = engine() else { return };
        let cat = crate::catalog::build(Mode::Long64);
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        let sample: Vec<_> = cat.entries.iter().step_by(7).collect();
        let mut prepared = Vec::new();
        for en in &sample {
            for side in Side::BOTH {
                if let Some(p) = img.prepare(side, &en.bytes, &en.setup) {
                    prepared.push((en.form.clone(), side, p));
                }
            }
        }
        let batch_cases: Vec<(Side, &Prepared)> =
            prepared.iter().map(|(_, side, p)| (*side, p)).collect();
        let batched = e.run_batch(&img, &batch_cases);
        let mut differ = Vec::new();
        for ((form, side, p), b) in prepared.iter().zip(&batched) {
            let s = e.run(&img, *side, p);
            if s != e.run(&img, *side, p) {
                continue; // not deterministic (RDRAND, RDTSC, ...)
            }
            if &s != b {
                differ.push(format!(
                    "{form} {side}: single {} batch {}",
                    s.outcome.short(),
                    b.outcome.short()
                ));
            }
        }
        let (batched, alone) = e.batch_stats();
        println!(
            "{} cases; batched {batched}, run alone {alone}",
            prepared.len()
        );
        assert!(
            differ.is_empty(),
            "{} differ:\n{}",
            differ.len(),
            differ.join("\n")
        );
    }

    #[test]
    fn segment_reads_and_fpu_vector_state_are_not_batched() {
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        for (bytes, want) in [
            (&[0x90][..], true),
            (&[0x01, 0xD8], true),
            (&[0x0F, 0x0B], true),
            (&[0x8E, 0xD8], false), // mov ds, ax: any segment register operand
            (&[0x8C, 0xD9], false),
            (&[0xD9, 0x3C, 0x25, 0x00, 0x81, 0, 0], false),
            (&[0x0F, 0x2B, 0x04, 0x25, 0x00, 0x81, 0, 0], false),
            (&[0xC5, 0xFC, 0x2B, 0x04, 0x25, 0x00, 0x81, 0, 0], false),
            (&[0x0F, 0xAE, 0x24, 0x25, 0x00, 0x80, 0, 0], false),
        ] {
            let p = img.prepare(Side::User, bytes, &Setup::default()).unwrap();
            assert_eq!(batchable(&p), want, "{bytes:02x?}");
        }
    }

    #[test]
    fn runtime_decodes_and_its_stubs_reach_the_recorder() {
        for fx in [true, false] {
            let rt = runtime(fx);
            let code = &rt.code[(RUNTIME - STUBS) as usize..];
            let mut d = Decoder::with_ip(64, code, SLOT_BASE + RUNTIME, DecoderOptions::NONE);
            let mut seen = Vec::new();
            while d.can_decode() {
                let i = d.decode();
                assert!(!i.is_invalid(), "invalid at {:#x}", i.ip());
                seen.push(i.mnemonic());
            }
            assert!(seen.contains(&Mnemonic::Iretq));
            assert_eq!(seen.contains(&Mnemonic::Fxrstor64), fx);
            let stub = &rt.code[..16];
            let mut d = Decoder::with_ip(64, stub, SLOT_BASE + STUBS, DecoderOptions::NONE);
            let m: Vec<Mnemonic> = (0..3).map(|_| d.decode().mnemonic()).collect();
            assert_eq!(m, [Mnemonic::Push, Mnemonic::Push, Mnemonic::Jmp]);
        }
    }
}
