//! Special cases on top of the generic operands (pg-model section 5):
//! selectors, far pointers, stack frames, control registers, gates.
//!
//! Choices worth knowing:
//! - `MOV CS, r/m16` (8E /1) is #UD by definition and iced's decoder
//!   decodes it as invalid, so the `mov cs, ax` plan fails the decode-back
//!   check and is dropped; the `MOV Sreg` Codes keep their other five entries.
//! - Real mode: CR0 and LMSW values keep PE = 0 (0x32), so no test switches
//!   the harness into protected mode. LSS loads the stack pointer with the
//!   harness's own (`STACK_PTR`), so the stack stays in the stack page.
//! - `MOV Sreg, r/m` and `MOV r/m, Sreg` get one entry per segment register.
//! - `MOV CRn` gets entries for CR0, CR2, CR3, CR4 (and CR8 in 64-bit mode),
//!   writing the harness's base value of the mode back; `MOV DRn` for DR0
//!   and DR7 (DR7 = 0x400, its reset value).
//! - `INT imm8` gets `int 80h` (DPL-3 gate) and `int 21h` (DPL-0 gate).
//! - Far CALL (direct and through memory) gets a second entry whose selector
//!   is the harness's call gate (form ends in `; selector = call gate`).
//! - RDMSR/WRMSR use IA32_SYSENTER_CS (0x174); WRMSR writes 0x10 there
//!   (KDATA, a change the harness can see). XGETBV/XSETBV use XCR0, XSETBV
//!   writes x87|SSE (3).
//! - MONITOR-like instructions taking an address in rAX get `DATA + 0x100`.
//! - LDS/LES/LFS/LGS/LSS: the far pointer is laid out so that every
//!   documented reading loads the intended selector (REX.W: Intel's m16:64
//!   and AMD's m16:32), and the setup names the load ([`SegLoad`]) so that
//!   an engine loading anything else is flagged as a deviation.

use super::encode::{
    gpr_of, gpr_reg, reg_operand, set_gpr_of_operand, set_reg, Ctx, Plan, MEM_OFFSET,
};
use crate::machine::{
    Gpr, MemInit, Region, SegLoad, SelRole, Setup, Sym, SysValue, STACK, STACK_PTR,
};
use iced_x86::{Code, Mnemonic, OpKind, Register};

/// Offset inside the stack page of the initial stack pointer.
const SP_OFF: u16 = (STACK_PTR - STACK) as u16;

fn data(offset: u64, size: u8, value: Sym) -> MemInit {
    MemInit {
        region: Region::Data,
        offset: offset as u16,
        size,
        value,
    }
}

fn stack(offset: u16, size: u8, value: Sym) -> MemInit {
    MemInit {
        region: Region::Stack,
        offset,
        size,
        value,
    }
}

/// All plans for one code. The first plan is the main one.
pub(super) fn plans(ctx: &Ctx, base: iced_x86::Instruction) -> Vec<Plan> {
    let mut p = Plan {
        instr: base,
        setup: Setup::default(),
        note: None,
        far: None,
    };
    let code = ctx.code;
    let osz = ctx.osz();
    let osz_b = (osz / 8) as u8;
    let mnem = code.mnemonic();

    // Registers used as a memory address (MOVDIR64B, ENQCMD...): point them into the data page.
    for (i, &k) in ctx.op.op_kinds().iter().enumerate() {
        use iced_x86::OpCodeOperandKind as K;
        if matches!(k, K::r16_reg_mem | K::r32_reg_mem | K::r64_reg_mem) {
            set_gpr_of_operand(&mut p, i as u32, Sym::Data(0x200));
        }
    }

    match code {
        Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 | Code::Mov_Sreg_r64m16 => {
            return segs()
                .into_iter()
                .map(|(s, role)| {
                    let mut q = p.clone();
                    q.instr.set_op_register(0, s);
                    // The source is the AX family (`mov ds, ax`).
                    let size = q.instr.op_register(1).size() as u32;
                    q.instr.set_op_register(1, gpr_reg(Gpr::Rax, size));
                    set_gpr_of_operand(&mut q, 1, Sym::Sel(role));
                    q
                })
                .collect();
        }
        Code::Mov_rm16_Sreg | Code::Mov_r32m16_Sreg | Code::Mov_r64m16_Sreg => {
            return segs()
                .into_iter()
                .map(|(s, _)| {
                    let mut q = p.clone();
                    q.instr.set_op_register(1, s);
                    q
                })
                .collect();
        }
        Code::Mov_cr_r32 | Code::Mov_cr_r64 | Code::Mov_r32_cr | Code::Mov_r64_cr => {
            let to_cr = matches!(code, Code::Mov_cr_r32 | Code::Mov_cr_r64);
            let mut crs = vec![
                // Write back the image's own value with one harmless bit
                // flipped (CR0.TS, CR4.OSXMMEXCPT), so a completed write shows.
                (
                    Register::CR0,
                    Sym::Sys(SysValue::Cr0, crate::machine::CR0_TS),
                ),
                (Register::CR2, Sym::Imm(0x8100)),
                (Register::CR3, Sym::Sys(SysValue::Cr3, 0)),
                (Register::CR4, Sym::Sys(SysValue::Cr4, 1 << 10)),
            ];
            if ctx.bitness == 64 {
                crs.push((Register::CR8, Sym::Imm(0)));
            }
            let cr_op = if to_cr { 0 } else { 1 };
            return crs
                .into_iter()
                .map(|(cr, v)| {
                    let mut q = p.clone();
                    q.instr.set_op_register(cr_op, cr);
                    if to_cr {
                        set_gpr_of_operand(&mut q, 1, v);
                    }
                    q
                })
                .collect();
        }
        Code::Mov_dr_r32 | Code::Mov_dr_r64 | Code::Mov_r32_dr | Code::Mov_r64_dr => {
            let to_dr = matches!(code, Code::Mov_dr_r32 | Code::Mov_dr_r64);
            let dr_op = if to_dr { 0 } else { 1 };
            return [(Register::DR0, 0x8100), (Register::DR7, 0x400)]
                .into_iter()
                .map(|(dr, v)| {
                    let mut q = p.clone();
                    q.instr.set_op_register(dr_op, dr);
                    if to_dr {
                        set_gpr_of_operand(&mut q, 1, Sym::Imm(v));
                    }
                    q
                })
                .collect();
        }
        Code::Int_imm8 => {
            return [0x80u8, 0x21]
                .into_iter()
                .map(|n| {
                    let mut q = p.clone();
                    q.instr.set_immediate8(n);
                    q
                })
                .collect();
        }
        Code::Jmp_ptr1616 | Code::Jmp_ptr1632 | Code::Call_ptr1616 | Code::Call_ptr1632 => {
            p.instr.set_far_branch_selector(0x1234);
            p.instr.set_far_branch32(0x5678);
            // Far transfers go to another code segment of the same level:
            // changing CS is their work.
            p.far = Some((Sym::Sentinel, Sym::Sel(SelRole::OwnAltCode)));
            let mut v = vec![p.clone()];
            if matches!(code, Code::Call_ptr1616 | Code::Call_ptr1632) {
                let mut g = p;
                g.far = Some((Sym::Sentinel, Sym::Sel(SelRole::CallGate)));
                g.note = Some("selector = call gate".into());
                v.push(g);
            }
            return v;
        }
        Code::Jmp_m1616
        | Code::Jmp_m1632
        | Code::Jmp_m1664
        | Code::Call_m1616
        | Code::Call_m1632
        | Code::Call_m1664 => {
            let off = match code {
                Code::Jmp_m1616 | Code::Call_m1616 => 2u8,
                Code::Jmp_m1632 | Code::Call_m1632 => 4,
                _ => 8,
            };
            let mk = |role: SelRole| {
                let mut q = p.clone();
                q.setup.mem.push(data(MEM_OFFSET, off, Sym::Sentinel));
                q.setup
                    .mem
                    .push(data(MEM_OFFSET + off as u64, 2, Sym::Sel(role)));
                q
            };
            let mut v = vec![mk(SelRole::OwnAltCode)];
            if matches!(code, Code::Call_m1616 | Code::Call_m1632 | Code::Call_m1664) {
                let mut g = mk(SelRole::CallGate);
                g.note = Some("selector = call gate".into());
                v.push(g);
            }
            return v;
        }
        _ => {}
    }

    match mnem {
        Mnemonic::Lgdt | Mnemonic::Lidt => {
            // Reload the image's own table (moved tables stay moved).
            let (limit, base) = if mnem == Mnemonic::Lgdt {
                (SysValue::GdtLimit, SysValue::GdtBase)
            } else {
                (SysValue::IdtLimit, SysValue::IdtBase)
            };
            let base_size = if ctx.bitness == 64 { 8 } else { 4 };
            p.setup.mem.push(data(MEM_OFFSET, 2, Sym::Sys(limit, 0)));
            p.setup
                .mem
                .push(data(MEM_OFFSET + 2, base_size, Sym::Sys(base, 0)));
        }
        Mnemonic::Lds | Mnemonic::Les | Mnemonic::Lfs | Mnemonic::Lgs | Mnemonic::Lss => {
            // Load another valid selector than the one the register holds,
            // so the load is a real change of R.
            let (role, off) = if mnem == Mnemonic::Lss {
                (SelRole::OwnAltStack, Sym::Stack(SP_OFF as u64))
            } else {
                (SelRole::AltData, Sym::Data(0x200))
            };
            let seg = match mnem {
                Mnemonic::Lss => 1,
                Mnemonic::Lds => 2,
                Mnemonic::Les => 3,
                Mnemonic::Lfs => 4,
                _ => 5,
            };
            let sel = Sym::Sel(role);
            if osz_b == 8 {
                // REX.W: Intel reads m16:64 (an 8-byte offset, the selector
                // at +8), AMD m16:32 (REX.W ignored: a 4-byte offset, the
                // selector at +4; iced's AMD decoder has no o64 LSS/LFS/LGS).
                // Lay it out for both: the offset's low half at +0, the
                // selector at +4 and at +8, zero at +6. AMD's reading gives
                // the offset, Intel's the offset plus the selector in bits
                // 32-47 (a general register: any value is usable), and both
                // load the intended selector.
                p.setup.mem.push(data(MEM_OFFSET, 4, off));
                p.setup.mem.push(data(MEM_OFFSET + 4, 2, sel));
                p.setup.mem.push(data(MEM_OFFSET + 6, 2, Sym::Imm(0)));
            } else {
                p.setup.mem.push(data(MEM_OFFSET, osz_b, off));
            }
            let at = MEM_OFFSET + osz_b as u64;
            p.setup.mem.push(data(at, 2, sel));
            p.setup.seg_load = Some(SegLoad {
                seg,
                region: Region::Data,
                offset: at as u16,
            });
        }
        Mnemonic::Bound => {
            let half = osz_b;
            p.setup.mem.push(data(MEM_OFFSET, half, Sym::Imm(0)));
            p.setup
                .mem
                .push(data(MEM_OFFSET + half as u64, half, Sym::Imm(0x100)));
        }
        Mnemonic::Ret => {
            p.setup.mem.push(stack(SP_OFF, osz_b, Sym::Sentinel));
        }
        Mnemonic::Retf => {
            p.setup.mem.push(stack(SP_OFF, osz_b, Sym::Sentinel));
            p.setup.mem.push(stack(
                SP_OFF + osz_b as u16,
                osz_b,
                Sym::Sel(SelRole::OwnAltCode),
            ));
        }
        Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => {
            let w = match mnem {
                Mnemonic::Iret => 2u8,
                Mnemonic::Iretd => 4,
                _ => 8,
            };
            let mut at = SP_OFF;
            let mut push = |v: Sym| {
                p.setup.mem.push(stack(at, w, v));
                at += w as u16;
            };
            push(Sym::Sentinel);
            push(Sym::Sel(SelRole::OwnCode));
            push(Sym::FlagsXor(0x3200));
            if ctx.bitness == 64 {
                push(Sym::Stack(0x900));
                push(Sym::Sel(SelRole::OwnStack));
            }
        }
        Mnemonic::Popf | Mnemonic::Popfd | Mnemonic::Popfq => {
            p.setup
                .mem
                .push(stack(SP_OFF, osz_b, Sym::FlagsXor(0x3200)));
        }
        Mnemonic::Pop => {
            if let Some((_, r)) = reg_operand(&p.instr, 0) {
                if r.is_segment_register() {
                    let role = if r == Register::SS {
                        SelRole::OwnAltStack
                    } else {
                        SelRole::AltData
                    };
                    p.setup.mem.push(stack(SP_OFF, osz_b, Sym::Sel(role)));
                }
            }
        }
        // The supervisor's own data descriptor: the one a deprivileging VMM
        // changes (ring compression) and CPL 3 may not see.
        Mnemonic::Lar | Mnemonic::Lsl => {
            set_gpr_of_operand(&mut p, 1, Sym::Sel(SelRole::SupervisorData))
        }
        Mnemonic::Verr | Mnemonic::Verw => {
            set_gpr_of_operand(&mut p, 0, Sym::Sel(SelRole::SupervisorData))
        }
        Mnemonic::Lldt => set_gpr_of_operand(&mut p, 0, Sym::Sel(SelRole::Ldt)),
        Mnemonic::Ltr => set_gpr_of_operand(&mut p, 0, Sym::Sel(SelRole::Tss)),
        Mnemonic::Lmsw => {
            set_gpr_of_operand(&mut p, 0, Sym::Sys(SysValue::Cr0, crate::machine::CR0_TS))
        }
        Mnemonic::Invpcid | Mnemonic::Invept | Mnemonic::Invvpid => {
            // The type register: 2 = all contexts (valid for every one of them).
            set_gpr_of_operand(&mut p, 0, Sym::Imm(2))
        }
        Mnemonic::Arpl => {
            set_gpr_of_operand(&mut p, 0, Sym::Sel(SelRole::OwnData));
            set_gpr_of_operand(&mut p, 1, Sym::Sel(SelRole::OwnData));
        }
        Mnemonic::Sysret | Mnemonic::Sysretq => {
            set_reg(&mut p.setup, Gpr::Rcx, Sym::Sentinel);
            set_reg(&mut p.setup, Gpr::R11, Sym::FlagsXor(0));
        }
        Mnemonic::Sysexit | Mnemonic::Sysexitq => {
            set_reg(&mut p.setup, Gpr::Rdx, Sym::Sentinel);
            set_reg(&mut p.setup, Gpr::Rcx, Sym::Stack(0x800));
        }
        Mnemonic::Enter => {
            p.instr.set_immediate16(8);
            p.instr.set_immediate8_2nd(0);
        }
        Mnemonic::In | Mnemonic::Out => {
            for i in 0..p.instr.op_count() {
                if p.instr.op_kind(i) == OpKind::Immediate8 {
                    p.instr.set_immediate8(0x40);
                }
            }
        }
        Mnemonic::Div | Mnemonic::Idiv => {
            // Divisor rBX (0x8180 / BL = 0x80): the quotient of rDX:rAX fits.
            if let Some((i, r)) = reg_operand(&p.instr, 0) {
                if r.is_gpr() {
                    p.instr
                        .set_op_register(i, gpr_reg(Gpr::Rbx, r.size() as u32));
                }
            }
        }
        Mnemonic::Jmp | Mnemonic::Call => {
            if let Some((i, r)) = reg_operand(&p.instr, 0) {
                if gpr_of(r).is_some() {
                    set_gpr_of_operand(&mut p, i, Sym::Sentinel);
                }
            } else if p.instr.op_count() > 0 && p.instr.op_kind(0) == OpKind::Memory {
                let size = match ctx.osz() {
                    16 => 2,
                    32 => 4,
                    _ => 8,
                };
                p.setup.mem.push(data(MEM_OFFSET, size, Sym::Sentinel));
            }
        }
        Mnemonic::Rdmsr => set_reg(&mut p.setup, Gpr::Rcx, Sym::Imm(0x174)),
        Mnemonic::Wrmsr | Mnemonic::Wrmsrns => {
            set_reg(&mut p.setup, Gpr::Rcx, Sym::Imm(0x174));
            set_reg(&mut p.setup, Gpr::Rdx, Sym::Imm(0));
            set_reg(&mut p.setup, Gpr::Rax, Sym::Imm(0x10));
        }
        Mnemonic::Xgetbv => set_reg(&mut p.setup, Gpr::Rcx, Sym::Imm(0)),
        Mnemonic::Xsetbv => {
            set_reg(&mut p.setup, Gpr::Rcx, Sym::Imm(0));
            set_reg(&mut p.setup, Gpr::Rdx, Sym::Imm(0));
            set_reg(&mut p.setup, Gpr::Rax, Sym::Imm(3));
        }
        Mnemonic::Monitor
        | Mnemonic::Monitorx
        | Mnemonic::Clzero
        | Mnemonic::Invlpga
        | Mnemonic::Vmrun
        | Mnemonic::Vmload
        | Mnemonic::Vmsave
        | Mnemonic::Skinit
        | Mnemonic::Pvalidate
        | Mnemonic::Rmpadjust
        | Mnemonic::Rmpupdate
        | Mnemonic::Psmash => set_reg(&mut p.setup, Gpr::Rax, Sym::Data(MEM_OFFSET)),
        Mnemonic::Umonitor => set_gpr_of_operand(&mut p, 0, Sym::Data(MEM_OFFSET)),
        Mnemonic::Rdpkru => set_reg(&mut p.setup, Gpr::Rcx, Sym::Imm(0)),
        Mnemonic::Wrpkru => {
            set_reg(&mut p.setup, Gpr::Rcx, Sym::Imm(0));
            set_reg(&mut p.setup, Gpr::Rdx, Sym::Imm(0));
        }
        Mnemonic::Mwait | Mnemonic::Mwaitx => {
            // ECX = 0: no extensions (reserved bits set would #GP); EAX = 0: C1 hint.
            set_reg(&mut p.setup, Gpr::Rcx, Sym::Imm(0));
            set_reg(&mut p.setup, Gpr::Rax, Sym::Imm(0));
        }
        Mnemonic::Tpause | Mnemonic::Umwait => {
            // EDX:EAX is a TSC deadline: already passed, so it returns at once.
            set_reg(&mut p.setup, Gpr::Rdx, Sym::Imm(0));
        }
        Mnemonic::Ldmxcsr | Mnemonic::Vldmxcsr => {
            p.setup.mem.push(data(MEM_OFFSET, 4, Sym::Imm(0x1f80)));
        }
        Mnemonic::Fxrstor | Mnemonic::Fxrstor64 => {
            // MXCSR (offset 24) without reserved bits, or FXRSTOR #GPs.
            p.setup.mem.push(data(MEM_OFFSET + 24, 4, Sym::Imm(0x1f80)));
        }
        Mnemonic::Xrstor | Mnemonic::Xrstor64 | Mnemonic::Xrstors | Mnemonic::Xrstors64 => {
            // The area is at DATA + 0: valid MXCSR, and an XSAVE header (offset
            // 512) restoring nothing: XSTATE_BV = 0, XCOMP_BV = 0 (standard
            // form) or bit 63 (compacted form, required by XRSTORS), the rest 0.
            let compacted = matches!(mnem, Mnemonic::Xrstors | Mnemonic::Xrstors64);
            p.setup.mem.push(data(24, 4, Sym::Imm(0x1f80)));
            for q in 0..8u64 {
                let v = if q == 1 && compacted { 1u64 << 63 } else { 0 };
                p.setup.mem.push(data(512 + 8 * q, 8, Sym::Imm(v)));
            }
        }
        _ => {}
    }
    vec![p]
}

/// Segment registers with the selector role a load of each one gets.
fn segs() -> Vec<(Register, SelRole)> {
    vec![
        (Register::ES, SelRole::AltData),
        (Register::CS, SelRole::OwnCode),
        (Register::SS, SelRole::OwnAltStack),
        (Register::DS, SelRole::AltData),
        (Register::FS, SelRole::AltData),
        (Register::GS, SelRole::AltData),
    ]
}
