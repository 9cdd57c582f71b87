//! Ring-0 code of the harness: the boot stubs that enter the test at the
//! wanted privilege level by IRET (pg-model section 5), hand-assembled
//! because they are a dozen fixed instructions.

use crate::mode::Mode;

/// What a boot stub loads before it IRETs to the test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTarget {
    pub cpl: u8,
    pub cs: u16,
    pub ss: u16,
    /// Loaded into DS, ES, FS and GS.
    pub data: u16,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
}

/// The boot stub for a protected or long mode: runs at CPL 0 on the
/// harness's ring-0 stack, loads the data segments, then IRETs to `t`.
/// Real mode has no boot stub (the engine sets the segments directly).
pub fn boot_stub(mode: Mode, t: &BootTarget) -> Vec<u8> {
    let mut c = Vec::new();
    // Operand-size prefix for 16-bit immediates / 32-bit ones, by mode.
    let (imm16_prefix, wide): (&[u8], bool) = match mode {
        Mode::Real | Mode::Prot16 => (&[], false),
        Mode::Prot32 | Mode::Long64 | Mode::Compat32 => (&[0x66], true),
    };
    let mov_ax = |c: &mut Vec<u8>, v: u16| {
        c.extend_from_slice(imm16_prefix);
        c.push(0xB8);
        c.extend_from_slice(&v.to_le_bytes());
    };
    let push = |c: &mut Vec<u8>, v: u64| {
        c.push(0x68);
        if wide {
            c.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            c.extend_from_slice(&(v as u16).to_le_bytes());
        }
    };
    mov_ax(&mut c, t.data);
    for modrm in [0xD8u8, 0xC0, 0xE0, 0xE8] {
        c.extend_from_slice(&[0x8E, modrm]); // mov ds/es/fs/gs, ax
    }
    // The stub of a 32c image is 64-bit code like every handler: its IRETQ
    // enters the 32-bit code segment of `t.cs`.
    let long = mode.is_long();
    if t.cpl == 0 && !long {
        // Same-privilege IRET pops no stack: load SS:ESP here.
        mov_ax(&mut c, t.ss);
        c.extend_from_slice(&[0x8E, 0xD0]); // mov ss, ax
        if wide {
            c.push(0xBC); // mov esp, imm32
            c.extend_from_slice(&(t.rsp as u32).to_le_bytes());
        } else {
            c.extend_from_slice(&[0x66, 0xBC]); // mov esp, imm32 (whole ESP)
            c.extend_from_slice(&(t.rsp as u32).to_le_bytes());
        }
    } else {
        push(&mut c, t.ss as u64);
        push(&mut c, t.rsp);
    }
    push(&mut c, t.rflags);
    push(&mut c, t.cs as u64);
    push(&mut c, t.rip);
    if long {
        c.push(0x48); // REX.W: iretq
    }
    c.push(0xCF);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    fn mnemonics(mode: Mode, bytes: &[u8]) -> Vec<Mnemonic> {
        // The 32c stub is 64-bit code (it runs before the IRETQ to 32-bit code).
        let bits = if mode.is_long() { 64 } else { mode.bitness() };
        let mut d = Decoder::with_ip(bits, bytes, 0x5800, DecoderOptions::NONE);
        let mut out = Vec::new();
        while d.can_decode() {
            let i = d.decode();
            assert!(!i.is_invalid(), "{mode}: invalid instruction in boot stub");
            out.push(i.mnemonic());
        }
        out
    }

    #[test]
    fn boot_stubs_decode_and_end_in_iret() {
        let t = BootTarget {
            cpl: 3,
            cs: 0x2b,
            ss: 0x23,
            data: 0x23,
            rip: 0x7100,
            rsp: 0x9800,
            rflags: 0x202,
        };
        for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64, Mode::Compat32] {
            for cpl in [0u8, 3] {
                let m = mnemonics(mode, &boot_stub(mode, &BootTarget { cpl, ..t }));
                let last = *m.last().unwrap();
                let want = match mode {
                    Mode::Long64 | Mode::Compat32 => Mnemonic::Iretq,
                    Mode::Prot32 => Mnemonic::Iretd,
                    _ => Mnemonic::Iret,
                };
                assert_eq!(last, want, "{mode} cpl {cpl}");
                let pushes = m.iter().filter(|x| **x == Mnemonic::Push).count();
                let frame = if cpl == 0 && !mode.is_long() { 3 } else { 5 };
                assert_eq!(pushes, frame, "{mode} cpl {cpl}: IRET frame size");
            }
        }
    }
}
