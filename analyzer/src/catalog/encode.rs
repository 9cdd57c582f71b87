//! The generic path: one concrete operand per `OpCodeOperandKind`, encoding
//! at `TEST_RIP`, branch targets on the sentinel, decode-back check.

use super::special;
use super::{exists_in, is_cataloged, Catalog, DocMeta, Entry, Skipped};
use crate::machine::{Gpr, Patch, Setup, Sym, DATA, TEST_RIP};
use crate::mode::Mode;
use iced_x86::{
    Code, Decoder, Encoder, Formatter, Instruction, IntelFormatter, OpCodeInfo,
    OpCodeOperandKind as K, OpKind, Register,
};

/// The architectural maximum instruction length.
pub const MAX_LEN: usize = 15;

/// Where ordinary memory operands point: `DATA + 0x100`.
pub const MEM_OFFSET: u64 = 0x100;

/// One planned encoding of a `Code`, before branch fix-up and encoding.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub instr: Instruction,
    pub setup: Setup,
    /// Appended to the Intel-syntax form as a comment (`; selector = call gate`).
    pub note: Option<String>,
    /// A direct far branch: the (offset, selector) values patched into the bytes.
    pub far: Option<(Sym, Sym)>,
}

/// What the special cases need to know about the code being planned.
pub(super) struct Ctx {
    pub mode: Mode,
    pub bitness: u32,
    pub code: Code,
    pub op: &'static OpCodeInfo,
}

impl Ctx {
    /// The operand size of the `Code` in bits, or the mode's default
    /// (16 in 16-bit code, 32 otherwise; 64 for stack operations in 64-bit mode).
    pub fn osz(&self) -> u32 {
        match self.op.operand_size() {
            0 => {
                if self.bitness == 64 && (self.op.default_op_size64() || self.op.force_op_size64())
                {
                    64
                } else if self.bitness == 16 {
                    16
                } else {
                    32
                }
            }
            n => n,
        }
    }
}

/// Register of a general-purpose family with a size in bytes (1, 2, 4, 8).
pub(super) fn gpr_reg(family: Gpr, size: u32) -> Register {
    let idx = family.index();
    let base = match size {
        1 => {
            // AL, CL, DL, BL are the first four 8-bit registers; higher families
            // need REX (SPL...), which no caller asks for.
            return match idx {
                0 => Register::AL,
                1 => Register::CL,
                2 => Register::DL,
                _ => Register::BL,
            };
        }
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    };
    reg_add(base, idx)
}

fn reg_add(base: Register, n: usize) -> Register {
    let v = base as usize + n;
    Register::values().nth(v).unwrap_or(base)
}

/// The general register family of a register, if it is a GPR.
pub(super) fn gpr_of(reg: Register) -> Option<Gpr> {
    if !reg.is_gpr() {
        return None;
    }
    let full = reg.full_register();
    let idx = (full as usize).checked_sub(Register::RAX as usize)?;
    Gpr::ALL.get(idx).copied()
}

/// Whether a `Code` stores an XSAVE-format area (can be larger than 512 bytes).
fn is_xsave_area(code: Code) -> bool {
    let m = format!("{:?}", code.mnemonic()).to_ascii_lowercase();
    m.starts_with("xsave") || m.starts_with("xrstor")
}

/// Fill operand `i` of kind `kind` with a memory operand at `addr`.
fn set_mem(instr: &mut Instruction, i: u32, kind: K, bitness: u32, addr: u64) {
    instr.set_op_kind(i, OpKind::Memory);
    instr.set_memory_base(Register::None);
    instr.set_memory_index(Register::None);
    instr.set_memory_index_scale(1);
    instr.set_memory_displacement64(addr);
    let index = match kind {
        K::mem_vsib32x | K::mem_vsib64x => Some(Register::XMM5),
        K::mem_vsib32y | K::mem_vsib64y => Some(Register::YMM5),
        K::mem_vsib32z | K::mem_vsib64z => Some(Register::ZMM5),
        _ => None,
    };
    let absolute_only = index.is_some()
        || matches!(
            kind,
            K::mem_mpx
                | K::mem_mib
                | K::sibmem
                | K::r32_or_mem_mpx
                | K::r64_or_mem_mpx
                | K::bnd_or_mem_mpx
        );
    if let Some(ix) = index {
        instr.set_memory_index(ix);
    }
    let displ_size = match (bitness, kind) {
        (b, K::mem_offs) => b / 8,
        (64, _) if !absolute_only => {
            instr.set_memory_base(Register::RIP);
            8
        }
        (64, _) => 8,
        (32, _) => 4,
        (_, _) if absolute_only => 4,
        _ => 2,
    };
    instr.set_memory_displ_size(displ_size);
}

/// The generic instruction: every operand gets an ordinary concrete value.
pub(super) fn generic(ctx: &Ctx) -> Result<Instruction, String> {
    let code = ctx.code;
    let op = ctx.op;
    let bitness = ctx.bitness;
    let mut instr = Instruction::default();
    instr.set_code(code);
    let addr = if is_xsave_area(code) {
        DATA
    } else {
        DATA + MEM_OFFSET
    };
    // MOVDIR64B/ENQCMD: the memory operand's address size is that of the
    // register operand holding the destination address.
    let reg_mem_size = op.op_kinds().iter().find_map(|k| match k {
        K::r16_reg_mem => Some(16),
        K::r32_reg_mem => Some(32),
        K::r64_reg_mem => Some(64),
        _ => None,
    });
    let addr_size = bitness;
    let mut imms = 0;
    for (i, &kind) in op.op_kinds().iter().enumerate() {
        let i = i as u32;
        let reg = |r: Register, instr: &mut Instruction| {
            instr.set_op_kind(i, OpKind::Register);
            instr.set_op_register(i, r);
        };
        match kind {
            K::None => {}
            K::farbr2_2 | K::farbr4_2 => {
                let f = Instruction::with_far_branch(code, 0, 0).map_err(|e| e.to_string())?;
                instr.set_op_kind(i, f.op0_kind());
                instr.set_far_branch_selector(0);
                instr.set_far_branch32(0);
            }
            K::xbegin_2 | K::xbegin_4 => {
                // XBEGIN does not mask its target by operand size; iced wants
                // NearBranch64 in 64-bit code and NearBranch32 otherwise.
                instr.set_op_kind(
                    i,
                    if bitness == 64 {
                        OpKind::NearBranch64
                    } else {
                        OpKind::NearBranch32
                    },
                );
                instr.set_near_branch64(TEST_RIP + 2);
            }
            K::br16_1
            | K::br32_1
            | K::br64_1
            | K::br16_2
            | K::br32_4
            | K::br64_4
            | K::brdisp_2
            | K::brdisp_4 => {
                let k = match kind {
                    K::br16_1 | K::br16_2 | K::brdisp_2 => OpKind::NearBranch16,
                    K::br32_1 | K::br32_4 | K::brdisp_4 => OpKind::NearBranch32,
                    _ => OpKind::NearBranch64,
                };
                instr.set_op_kind(i, k);
                instr.set_near_branch64(TEST_RIP + 2);
            }
            K::mem_offs
            | K::mem
            | K::mem_mpx
            | K::mem_mib
            | K::mem_vsib32x
            | K::mem_vsib64x
            | K::mem_vsib32y
            | K::mem_vsib64y
            | K::mem_vsib32z
            | K::mem_vsib64z
            | K::sibmem => {
                set_mem(&mut instr, i, kind, bitness, addr);
                if let Some(size) = reg_mem_size {
                    if size != bitness {
                        instr.set_memory_base(Register::None);
                        instr.set_memory_displ_size(size / 8);
                    }
                }
            }
            K::r8_or_mem | K::r8_opcode => reg(Register::CL, &mut instr),
            K::r8_reg => reg(Register::AL, &mut instr),
            K::r16_or_mem | K::r16_rm | K::r16_opcode => reg(Register::CX, &mut instr),
            K::r16_reg | K::r16_reg_mem => reg(Register::AX, &mut instr),
            K::r32_or_mem | K::r32_or_mem_mpx | K::r32_rm | K::r32_opcode => {
                reg(Register::ECX, &mut instr)
            }
            K::r32_reg | K::r32_reg_mem => reg(Register::EAX, &mut instr),
            K::r32_vvvv => reg(Register::EDX, &mut instr),
            K::r64_or_mem | K::r64_or_mem_mpx | K::r64_rm | K::r64_opcode => {
                reg(Register::RCX, &mut instr)
            }
            K::r64_reg | K::r64_reg_mem => reg(Register::RAX, &mut instr),
            K::r64_vvvv => reg(Register::RDX, &mut instr),
            K::seg_reg => reg(Register::DS, &mut instr),
            K::k_reg => reg(Register::K1, &mut instr),
            K::kp1_reg => reg(Register::K2, &mut instr),
            K::k_rm | K::k_or_mem => reg(Register::K3, &mut instr),
            K::k_vvvv => reg(Register::K4, &mut instr),
            K::mm_reg => reg(Register::MM0, &mut instr),
            K::mm_rm | K::mm_or_mem => reg(Register::MM1, &mut instr),
            K::xmm_reg => reg(Register::XMM0, &mut instr),
            K::xmm_rm | K::xmm_or_mem => reg(Register::XMM1, &mut instr),
            K::xmm_vvvv => reg(Register::XMM2, &mut instr),
            K::xmmp3_vvvv => reg(Register::XMM4, &mut instr),
            K::xmm_is4 | K::xmm_is5 => reg(Register::XMM3, &mut instr),
            K::ymm_reg => reg(Register::YMM0, &mut instr),
            K::ymm_rm | K::ymm_or_mem => reg(Register::YMM1, &mut instr),
            K::ymm_vvvv => reg(Register::YMM2, &mut instr),
            K::ymm_is4 | K::ymm_is5 => reg(Register::YMM3, &mut instr),
            K::zmm_reg => reg(Register::ZMM0, &mut instr),
            K::zmm_rm | K::zmm_or_mem => reg(Register::ZMM1, &mut instr),
            K::zmm_vvvv => reg(Register::ZMM2, &mut instr),
            K::zmmp3_vvvv => reg(Register::ZMM4, &mut instr),
            K::cr_reg => reg(Register::CR0, &mut instr),
            K::dr_reg => reg(Register::DR0, &mut instr),
            K::tr_reg => reg(Register::TR6, &mut instr),
            K::bnd_reg => reg(Register::BND0, &mut instr),
            K::bnd_or_mem_mpx => reg(Register::BND1, &mut instr),
            K::es => reg(Register::ES, &mut instr),
            K::cs => reg(Register::CS, &mut instr),
            K::ss => reg(Register::SS, &mut instr),
            K::ds => reg(Register::DS, &mut instr),
            K::fs => reg(Register::FS, &mut instr),
            K::gs => reg(Register::GS, &mut instr),
            K::al => reg(Register::AL, &mut instr),
            K::cl => reg(Register::CL, &mut instr),
            K::ax => reg(Register::AX, &mut instr),
            K::dx => reg(Register::DX, &mut instr),
            K::eax => reg(Register::EAX, &mut instr),
            K::rax => reg(Register::RAX, &mut instr),
            K::st0 => reg(Register::ST0, &mut instr),
            K::sti_opcode => reg(Register::ST1, &mut instr),
            K::tmm_reg => reg(Register::TMM0, &mut instr),
            K::tmm_rm => reg(Register::TMM1, &mut instr),
            K::tmm_vvvv => reg(Register::TMM2, &mut instr),
            K::imm4_m2z => {
                instr.set_op_kind(i, OpKind::Immediate8);
                instr.set_immediate8(0);
                imms += 1;
            }
            K::imm8 | K::imm8_const_1 => {
                let k = if imms > 0 {
                    OpKind::Immediate8_2nd
                } else {
                    OpKind::Immediate8
                };
                instr.set_op_kind(i, k);
                if k == OpKind::Immediate8_2nd {
                    instr.set_immediate8_2nd(1);
                } else {
                    instr.set_immediate8(1);
                }
                imms += 1;
            }
            K::imm8sex16
            | K::imm8sex32
            | K::imm8sex64
            | K::imm16
            | K::imm32
            | K::imm32sex64
            | K::imm64 => {
                let k = match kind {
                    K::imm8sex16 => OpKind::Immediate8to16,
                    K::imm8sex32 => OpKind::Immediate8to32,
                    K::imm8sex64 => OpKind::Immediate8to64,
                    K::imm16 => OpKind::Immediate16,
                    K::imm32 => OpKind::Immediate32,
                    K::imm32sex64 => OpKind::Immediate32to64,
                    _ => OpKind::Immediate64,
                };
                instr.set_op_kind(i, k);
                instr
                    .try_set_immediate_u64(i, 1)
                    .map_err(|e| e.to_string())?;
                imms += 1;
            }
            K::seg_rSI => instr.set_op_kind(
                i,
                match addr_size {
                    64 => OpKind::MemorySegRSI,
                    32 => OpKind::MemorySegESI,
                    _ => OpKind::MemorySegSI,
                },
            ),
            K::es_rDI => instr.set_op_kind(
                i,
                match addr_size {
                    64 => OpKind::MemoryESRDI,
                    32 => OpKind::MemoryESEDI,
                    _ => OpKind::MemoryESDI,
                },
            ),
            K::seg_rDI => instr.set_op_kind(
                i,
                match addr_size {
                    64 => OpKind::MemorySegRDI,
                    32 => OpKind::MemorySegEDI,
                    _ => OpKind::MemorySegDI,
                },
            ),
            K::seg_rBX_al => {
                instr.set_op_kind(i, OpKind::Memory);
                instr.set_memory_base(match addr_size {
                    64 => Register::RBX,
                    32 => Register::EBX,
                    _ => Register::BX,
                });
                instr.set_memory_index(Register::AL);
                instr.set_memory_index_scale(1);
                instr.set_memory_displ_size(0);
            }
            other => return Err(format!("operand kind {other:?} not handled")),
        }
    }
    if op.require_op_mask_register() {
        instr.set_op_mask(Register::K6);
    }
    Ok(instr)
}

/// Index of the first operand that is a register, from `start` on.
pub(super) fn reg_operand(instr: &Instruction, start: u32) -> Option<(u32, Register)> {
    (start..instr.op_count())
        .find(|&i| instr.op_kind(i) == OpKind::Register)
        .map(|i| (i, instr.op_register(i)))
}

/// Sets `reg_of_operand(i)`'s GPR family to `value` in the setup.
pub(super) fn set_gpr_of_operand(plan: &mut Plan, i: u32, value: Sym) {
    if plan.instr.op_kind(i) == OpKind::Register {
        if let Some(g) = gpr_of(plan.instr.op_register(i)) {
            set_reg(&mut plan.setup, g, value);
        }
    }
}

/// Sets (or replaces) a register's start value in a setup.
pub(super) fn set_reg(setup: &mut Setup, g: Gpr, value: Sym) {
    setup.regs.retain(|(r, _)| *r != g);
    setup.regs.push((g, value));
}

fn encode_at(
    instr: &Instruction,
    bitness: u32,
) -> Result<(Vec<u8>, iced_x86::ConstantOffsets), String> {
    let mut enc = Encoder::new(bitness);
    enc.encode(instr, TEST_RIP).map_err(|e| e.to_string())?;
    let offs = enc.get_constant_offsets();
    Ok((enc.take_buffer(), offs))
}

fn has_near_branch(instr: &Instruction) -> bool {
    (0..instr.op_count()).any(|i| {
        matches!(
            instr.op_kind(i),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        )
    })
}

/// Encode a plan: near branches aimed at the sentinel right after the
/// instruction, far pointers patched, and the bytes decoded back.
fn finish(ctx: &Ctx, mut plan: Plan) -> Result<Entry, String> {
    let bitness = ctx.bitness;
    if has_near_branch(&plan.instr) {
        let mut target = TEST_RIP + 2;
        let mut ok = false;
        for _ in 0..4 {
            plan.instr.set_near_branch64(target);
            let (bytes, _) = encode_at(&plan.instr, bitness)?;
            let t = TEST_RIP + bytes.len() as u64;
            if t == target {
                ok = true;
                break;
            }
            target = t;
        }
        if !ok {
            return Err("branch target does not converge on the sentinel".into());
        }
    }
    let (bytes, offs) = encode_at(&plan.instr, bitness)?;
    if bytes.len() > MAX_LEN {
        return Err(format!("encoding is {} bytes (> 15)", bytes.len()));
    }
    if let Some((off, sel)) = plan.far {
        if !offs.has_immediate() || !offs.has_immediate2() {
            return Err("far pointer without immediate offsets".into());
        }
        plan.setup.patches.push(Patch {
            offset: offs.immediate_offset() as u8,
            size: offs.immediate_size() as u8,
            value: off,
        });
        plan.setup.patches.push(Patch {
            offset: offs.immediate_offset2() as u8,
            size: offs.immediate_size2() as u8,
            value: sel,
        });
    }
    let decoded = decode_at(&bytes, bitness, decoder_options(ctx.op, bitness));
    if decoded.code() != ctx.code {
        return Err(format!("decodes back as {:?}", decoded.code()));
    }
    if decoded.len() != bytes.len() {
        return Err(format!(
            "decodes back with length {} instead of {}",
            decoded.len(),
            bytes.len()
        ));
    }
    let mut form = format_intel(&decoded);
    if let Some(note) = &plan.note {
        form.push_str(" ; ");
        form.push_str(note);
    }
    let mut setup = plan.setup;
    setup.soft_interrupt = soft_interrupt(&decoded);
    Ok(Entry {
        mode: ctx.mode,
        code: format!("{:?}", ctx.code),
        mnemonic: format!("{:?}", decoded.mnemonic()).to_lowercase(),
        form,
        bytes,
        setup,
        doc: doc_meta(ctx.op, &decoded),
    })
}

/// The vector a software-interrupt instruction raises (INT n, INT3, INTO,
/// INT1), if `instr` is one.
pub fn soft_interrupt(instr: &Instruction) -> Option<u8> {
    match instr.mnemonic() {
        iced_x86::Mnemonic::Int => Some(instr.immediate8()),
        iced_x86::Mnemonic::Int3 => Some(3),
        iced_x86::Mnemonic::Into => Some(4),
        iced_x86::Mnemonic::Int1 => Some(1),
        _ => None,
    }
}

/// The decoder options under which a `Code` decodes: its own option
/// (`DecoderOptions::MPX`, `::CYRIX`, ...), plus `AMD` for forms that only
/// AMD's decoder gives in this bitness (e.g. `66`-prefixed branches in 64-bit code).
pub fn decoder_options(op: &OpCodeInfo, bitness: u32) -> u32 {
    let (intel, amd) = match bitness {
        16 => (op.intel_decoder16(), op.amd_decoder16()),
        32 => (op.intel_decoder32(), op.amd_decoder32()),
        _ => (op.intel_decoder64(), op.amd_decoder64()),
    };
    let amd_only = if amd && !intel {
        iced_x86::DecoderOptions::AMD
    } else {
        0
    };
    op.decoder_option() | amd_only
}

/// Decode one instruction at `TEST_RIP`.
pub fn decode_at(bytes: &[u8], bitness: u32, options: u32) -> Instruction {
    let mut d = Decoder::with_ip(bitness, bytes, TEST_RIP, options);
    d.decode()
}

/// iced's Intel syntax, lower-case mnemonics (e.g. `sgdt [8100h]`).
pub fn format_intel(instr: &Instruction) -> String {
    let mut f = IntelFormatter::new();
    let mut out = String::new();
    f.format(instr, &mut out);
    out
}

/// iced's documented metadata. Mapping: every `DocMeta` field is the
/// `OpCodeInfo` method of the same name; `flow_control` is
/// `Instruction::flow_control()` and `cpuid` is
/// `Instruction::cpuid_features()` of the encoded instruction.
pub fn doc_meta(op: &OpCodeInfo, instr: &Instruction) -> DocMeta {
    DocMeta {
        is_privileged: op.is_privileged(),
        must_be_cpl0: op.must_be_cpl0(),
        may_require_cpl0: op.may_require_cpl0(),
        is_input_output: op.is_input_output(),
        intel_vm_exit: op.intel_vm_exit(),
        intel_may_vm_exit: op.intel_may_vm_exit(),
        amd_vm_exit: op.amd_vm_exit(),
        flow_control: format!("{:?}", instr.flow_control()),
        cpuid: instr
            .cpuid_features()
            .iter()
            .map(|f| format!("{f:?}"))
            .collect(),
    }
}

/// Build the catalog of one mode.
pub(super) fn build_mode(mode: Mode) -> Catalog {
    let mut cat = Catalog::default();
    for code in Code::values() {
        build_code(mode, code, &mut cat);
    }
    cat
}

/// Adds one `Code`'s entries of `mode` to `cat`, or why it has none (a
/// `Code` that is not cataloged or does not exist in the mode adds
/// nothing). Each `Code`'s entries depend on no other `Code`'s.
pub(super) fn build_code(mode: Mode, code: Code, cat: &mut Catalog) {
    if !is_cataloged(code) || !exists_in(code, mode) {
        return;
    }
    let ctx = Ctx {
        mode,
        bitness: mode.bitness(),
        code,
        op: code.op_code(),
    };
    if ctx.op.fwait() {
        // iced encodes these as WAIT (9B) followed by the no-wait Code,
        // which decode as two instructions; both are cataloged on their own.
        cat.skipped.push(Skipped {
            mode,
            code: format!("{code:?}"),
            reason: "fwait form: encodes as WAIT + the no-wait Code (both cataloged separately)"
                .into(),
        });
        return;
    }
    let base = match generic(&ctx) {
        Ok(i) => i,
        Err(e) => {
            cat.skipped.push(Skipped {
                mode,
                code: format!("{code:?}"),
                reason: format!("operands: {e}"),
            });
            return;
        }
    };
    if ctx.op.encoding() == iced_x86::EncodingKind::MVEX {
        cat.skipped.push(Skipped {
            mode,
            code: format!("{code:?}"),
            reason: "MVEX (Knights Corner): iced is built without its MVEX encoder".into(),
        });
        return;
    }
    let plans = special::plans(&ctx, base);
    let mut first_err = None;
    let mut got = 0;
    for plan in plans {
        match finish(&ctx, plan) {
            Ok(e) => {
                if !cat
                    .entries
                    .iter()
                    .rev()
                    .take(got)
                    .any(|x| x.bytes == e.bytes && x.setup == e.setup)
                {
                    cat.entries.push(e);
                    got += 1;
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if got == 0 {
        let reason = first_err.unwrap_or_else(|| "no encoding planned".into());
        cat.skipped.push(Skipped {
            mode,
            code: format!("{code:?}"),
            reason: format!("encode: {reason}"),
        });
    }
}
