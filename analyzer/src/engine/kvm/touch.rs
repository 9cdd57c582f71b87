//! What a run may change beyond the registers every run sets anyway (the
//! general, segment and control registers, through `kvm_run`'s sync_regs):
//! the XSAVE-managed state (x87, SSE, AVX, AVX-512, PKRU, ...), the debug
//! registers and the image's MSRs. The engine resets a part before a run
//! only when an earlier run may have changed it, and reads the MSRs after a
//! run only when the run may have changed them (pure; decided from the
//! test's encoding with iced-x86).
//!
//! The rule is conservative: a part counts as touched unless the one
//! instruction between the test's RIP and its sentinel decodes, in the
//! mode's bitness, to exactly those bytes, falls through (flow control
//! `Next`: no branch, call, return, interrupt or `UD`), and needs only CPU
//! features known to leave that part alone. Everything else (an undecodable
//! or truncated encoding, any transfer, system instructions such as WRMSR,
//! XSETBV, WRFSBASE, CET or VMX ones) touches everything, which is the full
//! reset of every run the engine did before. The engine widens it further
//! where the run wrote a page outside the data, stack and system-table pages
//! (code it might then have run), or ended at engine level.

use crate::machine::Prepared;
use crate::mode::Mode;
use iced_x86::{CpuidFeature as F, Decoder, DecoderOptions, FlowControl, Mnemonic, Register};

/// The parts of the vCPU's state outside the per-run registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Touches {
    /// x87/SSE/AVX/... state (KVM_SET_XSAVE or KVM_SET_FPU).
    pub(super) xstate: bool,
    /// DR0-DR7 (KVM_SET_DEBUGREGS); DR6 also changes on a debug exception.
    pub(super) debug: bool,
    /// The image's MSRs (KVM_SET_MSRS / KVM_GET_MSRS), FS and GS bases included.
    pub(super) msrs: bool,
}

impl Touches {
    pub(super) const ALL: Touches = Touches {
        xstate: true,
        debug: true,
        msrs: true,
    };
    pub(super) const NONE: Touches = Touches {
        xstate: false,
        debug: false,
        msrs: false,
    };

    /// Either's parts.
    pub(super) fn or(self, other: Touches) -> Touches {
        Touches {
            xstate: self.xstate || other.xstate,
            debug: self.debug || other.debug,
            msrs: self.msrs || other.msrs,
        }
    }
}

/// What a feature says about the state an instruction needing it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// General registers, flags, memory, the per-run system registers.
    Plain,
    /// The XSAVE-managed state as well.
    Xstate,
    /// Not known to leave anything alone.
    Any,
}

fn class(f: F) -> Class {
    match f {
        F::INTEL8086
        | F::INTEL8086_ONLY
        | F::INTEL186
        | F::INTEL286
        | F::INTEL386
        | F::INTEL486
        | F::X64
        | F::ADX
        | F::BMI1
        | F::BMI2
        | F::TBM
        | F::CMOV
        | F::CX8
        | F::CMPXCHG16B
        | F::CPUID
        | F::LZCNT
        | F::POPCNT
        | F::MOVBE
        | F::MULTIBYTENOP
        | F::PAUSE
        | F::RDRAND
        | F::RDSEED
        | F::RDPID
        | F::RDTSCP
        | F::TSC
        | F::RDPMC
        | F::CLFSH
        | F::CLFLUSHOPT
        | F::CLWB
        | F::PREFETCHW
        | F::SMAP => Class::Plain,
        F::FPU
        | F::FPU287
        | F::FPU287XL_ONLY
        | F::FPU387
        | F::FPU387SL_ONLY
        | F::MMX
        | F::D3NOW
        | F::D3NOWEXT
        | F::SSE
        | F::SSE2
        | F::SSE3
        | F::SSSE3
        | F::SSE4_1
        | F::SSE4_2
        | F::SSE4A
        | F::AVX
        | F::AVX2
        | F::AVX_VNNI
        | F::AVX_IFMA
        | F::AVX_NE_CONVERT
        | F::AVX_VNNI_INT8
        | F::AVX_VNNI_INT16
        | F::AVX512F
        | F::AVX512VL
        | F::AVX512BW
        | F::AVX512DQ
        | F::AVX512CD
        | F::AVX512ER
        | F::AVX512PF
        | F::AVX512_4FMAPS
        | F::AVX512_4VNNIW
        | F::AVX512_BF16
        | F::AVX512_BITALG
        | F::AVX512_IFMA
        | F::AVX512_VBMI
        | F::AVX512_VBMI2
        | F::AVX512_VNNI
        | F::AVX512_VP2INTERSECT
        | F::AVX512_VPOPCNTDQ
        | F::AVX512_FP16
        | F::FMA
        | F::FMA4
        | F::F16C
        | F::XOP
        | F::AES
        | F::VAES
        | F::PCLMULQDQ
        | F::VPCLMULQDQ
        | F::GFNI
        | F::SHA
        | F::SHA512
        | F::SM3
        | F::SM4
        | F::FXSR
        | F::MPX
        | F::PKU => Class::Xstate,
        _ => Class::Any,
    }
}

/// What a run of `test` in `mode` may change beyond the per-run registers.
pub(super) fn touches(mode: Mode, test: &Prepared) -> Touches {
    // An encoding outside the page is empty: it touches everything.
    touches_of(mode.bitness(), test.encoding(), test.rip)
}

/// What one instruction, `bytes` at `ip`, may change (see the module doc).
fn touches_of(bitness: u32, bytes: &[u8], ip: u64) -> Touches {
    if bytes.is_empty() {
        return Touches::ALL;
    }
    let mut decoder = Decoder::with_ip(bitness, bytes, ip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() || instr.len() != bytes.len() || instr.flow_control() != FlowControl::Next
    {
        return Touches::ALL;
    }
    let mut t = Touches::NONE;
    for &f in instr.cpuid_features() {
        match class(f) {
            Class::Plain => {}
            Class::Xstate => t.xstate = true,
            Class::Any => return Touches::ALL,
        }
    }
    let registers = (0..instr.op_count()).map(|i| instr.op_register(i));
    for r in registers {
        if r.is_dr() {
            t.debug = true;
        }
        if matches!(r, Register::FS | Register::GS) {
            t.msrs = true;
        }
        if r.is_st() || r.is_mm() || r.is_vector_register() || r.is_k() {
            t.xstate = true;
        }
    }
    match instr.mnemonic() {
        // The trap flag they may set makes the next instruction raise #DB
        // (DR6).
        Mnemonic::Popf | Mnemonic::Popfd | Mnemonic::Popfq => t.debug = true,
        // Raises #MF where the x87 state holds an unmasked exception.
        Mnemonic::Wait => t.xstate = true,
        // GS base and KERNEL_GS_BASE; FS and GS bases.
        Mnemonic::Swapgs | Mnemonic::Lfs | Mnemonic::Lgs => t.msrs = true,
        _ => {}
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{GuestImage, Setup, Variant};
    use crate::mode::Config;
    use crate::observe::Side;

    const PLAIN: Touches = Touches::NONE;
    const XSTATE: Touches = Touches {
        xstate: true,
        ..Touches::NONE
    };
    const DEBUG: Touches = Touches {
        debug: true,
        ..Touches::NONE
    };
    const MSRS: Touches = Touches {
        msrs: true,
        ..Touches::NONE
    };

    #[test]
    fn plain_instructions_touch_nothing_and_system_ones_everything() {
        let ip = 0x7100;
        for (bytes, want, what) in [
            (&[0x90u8][..], PLAIN, "nop"),
            (&[0x48, 0x01, 0xC8], PLAIN, "add rax, rcx"),
            (&[0x0F, 0x01, 0x05, 0, 0, 0, 0], PLAIN, "sgdt"),
            (&[0x0F, 0x31], PLAIN, "rdtsc"),
            (&[0xF4], PLAIN, "hlt"),
            (&[0x0F, 0x58, 0xC1], XSTATE, "addps"),
            (&[0xD9, 0xE8], XSTATE, "fld1"),
            (&[0x0F, 0xAE, 0x08], XSTATE, "fxrstor"),
            (&[0x0F, 0x77], XSTATE, "emms"),
            (&[0x9B], XSTATE, "fwait"),
            (&[0x0F, 0x23, 0xF8], DEBUG, "mov dr7, rax"),
            (&[0x0F, 0x21, 0xF0], DEBUG, "mov rax, dr6"),
            (&[0x9D], DEBUG, "popfq"),
            (&[0x8E, 0xE0], MSRS, "mov fs, ax"),
            (&[0x0F, 0xA9], MSRS, "pop gs"),
            (&[0x0F, 0x01, 0xF8], MSRS, "swapgs"),
            (&[0x0F, 0x30], Touches::ALL, "wrmsr"),
            (&[0x0F, 0x01, 0xD1], Touches::ALL, "xsetbv"),
            (&[0xF3, 0x48, 0x0F, 0xAE, 0xD0], Touches::ALL, "wrfsbase"),
            (&[0xEB, 0x00], Touches::ALL, "jmp"),
            (&[0xCC], Touches::ALL, "int3"),
            (&[0x0F, 0x0B], Touches::ALL, "ud2"),
            (&[0x0F, 0x05], Touches::ALL, "syscall"),
            (&[0x0F, 0xFF], Touches::ALL, "not decodable"),
            (&[0x48, 0x01], Touches::ALL, "truncated"),
            (&[0x90, 0x90], Touches::ALL, "two instructions"),
            (&[], Touches::ALL, "nothing"),
        ] {
            assert_eq!(touches_of(64, bytes, ip), want, "{what}");
        }
        // In 16-bit code too.
        assert_eq!(touches_of(16, &[0x8E, 0xE8], ip), MSRS, "mov gs, ax");
        assert_eq!(touches_of(16, &[0x9D], ip), DEBUG, "popf");
    }

    #[test]
    fn the_test_s_own_bytes_are_decoded() {
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        let p = img
            .prepare(Side::User, &[0x0F, 0x58, 0xC1], &Setup::default())
            .unwrap();
        assert_eq!(touches(Mode::Long64, &p), XSTATE);
        // The sentinel after the encoding is not part of it.
        let p = img.prepare(Side::User, &[0x90], &Setup::default()).unwrap();
        assert_eq!(touches(Mode::Long64, &p), PLAIN);
        // Cut at the end of the code page (length measurement): all.
        let p = img
            .prepare(Side::User, &[0x48, 0x01, 0xC8], &Setup::default())
            .unwrap();
        assert_eq!(touches(Mode::Long64, &p.at_page_end(2)), Touches::ALL);
        assert_eq!(
            Touches::NONE.or(XSTATE).or(MSRS),
            Touches {
                xstate: true,
                msrs: true,
                debug: false
            }
        );
    }
}
