//! vCPU state in and out: the registers a run starts from, and the system
//! and user state read back. Two ways in: the full one ([`set_state`]: one
//! ioctl per part, KVM_SET_XSAVE / DEBUGREGS / SREGS / MSRS / REGS) and the
//! lean one ([`set_state_synced`]: general and special registers, and
//! pending events when asked, through `kvm_run`'s sync_regs area, which
//! KVM_RUN loads; XSAVE state and debug registers only where an earlier run
//! may have changed them). The conversions between the harness's types and
//! KVM's are pure functions; the rest is one ioctl after another.

use super::memory::bytes_at;
use super::touch::Touches;
use super::KvmError;
use crate::machine::{EntryState, GuestImage, Prepared, SegDesc, SysRegs, PAGE};
use crate::mode::Mode;
use crate::observe::{Segment, Side, SystemState, TableReg, UserState};
use crate::observe::{SYS_FLAGS_MASK, USER_FLAGS_MASK};
use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events,
    kvm_xsave, Msrs,
};
use kvm_ioctls::{SyncReg, VcpuFd};

/// Clears pending events (after a run that ended at engine level).
pub(super) fn clear_events(vcpu: &VcpuFd) -> Result<(), KvmError> {
    vcpu.set_vcpu_events(&kvm_vcpu_events::default())
        .map_err(KvmError::ClearEvents)
}

/// x87 and SSE state at reset.
fn reset_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37F,
        mxcsr: 0x1F80,
        ..Default::default()
    }
}

/// The XSAVE-managed state a run starts from: a new vCPU's (every
/// component in its initial state: x87/SSE at reset, AVX upper halves,
/// AVX-512 and PKRU zero), read once. `None` where KVM has no XSAVE.
pub(super) fn reset_xsave(vcpu: &VcpuFd) -> Option<kvm_xsave> {
    vcpu.set_fpu(&reset_fpu()).ok()?;
    vcpu.get_xsave().ok()
}

/// Resets the XSAVE-managed registers (x87, SSE, AVX, AVX-512, PKRU: a
/// WRPKRU at CPL 3 on PVM runs on the CPU, and its PKRU would make the next
/// runs' data accesses fault) to `xsave`; without XSAVE, x87 and SSE.
fn reset_xstate(vcpu: &VcpuFd, xsave: Option<&kvm_xsave>) -> Result<(), KvmError> {
    match xsave {
        // SAFETY: popek enables no dynamically enabled XSTATE feature
        // (no arch_prctl(ARCH_REQ_XCOMP_PERM)), so the state KVM copies
        // fits the 4096-byte `kvm_xsave` it was read into.
        Some(x) => unsafe { vcpu.set_xsave(x) }.map_err(KvmError::SetFpu),
        None => vcpu.set_fpu(&reset_fpu()).map_err(KvmError::SetFpu),
    }
}

/// Resets the debug registers (no breakpoint, DR6 as after reset).
fn reset_debug_regs(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let dregs = kvm_debugregs {
        dr6: 0xFFFF_0FF0,
        dr7: 0x400,
        ..Default::default()
    };
    vcpu.set_debug_regs(&dregs).map_err(KvmError::SetDebugRegs)
}

/// Asks KVM to store the general and special registers and the pending
/// events into `kvm_run`'s sync_regs area whenever KVM_RUN returns.
pub(super) fn sync_after_every_run(vcpu: &mut VcpuFd) {
    vcpu.set_sync_valid_reg(SyncReg::Register);
    vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
    vcpu.set_sync_valid_reg(SyncReg::VcpuEvents);
}

/// Drops whatever the sync_regs area was asked to load on the next
/// KVM_RUN (the full path sets everything with ioctls instead).
pub(super) fn forget_synced_state(vcpu: &mut VcpuFd) {
    vcpu.clear_sync_dirty_reg(SyncReg::Register);
    vcpu.clear_sync_dirty_reg(SyncReg::SystemRegister);
    vcpu.clear_sync_dirty_reg(SyncReg::VcpuEvents);
}

/// The lean way in: the registers of a run of `test` on `side` go into the
/// sync_regs area for the next KVM_RUN to load (the special registers
/// built on the ones the last KVM_RUN stored there, as [`set_state`] builds
/// on KVM_GET_SREGS); the XSAVE state and the debug registers are reset
/// where `reset` says, pending events cleared where `clear_events` says.
/// The image's MSRs are not set: the caller takes the full way where an
/// earlier run may have changed them. The FS and GS bases are the MSRs'
/// values, which is where [`set_state`] leaves them too (its KVM_SET_MSRS
/// comes after KVM_SET_SREGS).
pub(super) fn set_state_synced(
    vcpu: &mut VcpuFd,
    xsave: Option<&kvm_xsave>,
    image: &GuestImage,
    side: Side,
    test: &Prepared,
    reset: Touches,
    clear_events: bool,
) -> Result<(), KvmError> {
    let e = image.entry(side).ok_or(KvmError::NoSuchSide)?;
    if reset.xstate {
        reset_xstate(vcpu, xsave)?;
    }
    if reset.debug {
        reset_debug_regs(vcpu)?;
    }
    let sys = &image.sys;
    let mut sregs = sregs_for(vcpu.sync_regs().sregs, sys, e);
    for &(index, data) in &sys.msrs {
        match index {
            crate::machine::image::msr::FS_BASE => sregs.fs.base = data,
            crate::machine::image::msr::GS_BASE => sregs.gs.base = data,
            _ => {}
        }
    }
    let regs = regs_for(test, e.rflags);
    let s = vcpu.sync_regs_mut();
    s.sregs = sregs;
    s.regs = regs;
    if clear_events {
        s.events = kvm_vcpu_events::default();
        vcpu.set_sync_dirty_reg(SyncReg::VcpuEvents);
    }
    vcpu.set_sync_dirty_reg(SyncReg::Register);
    vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
    Ok(())
}

/// The MSRs a run's WRMSR may change that the image does not set: PAT, the
/// MTRRs (MTRRdefType, the variable and the fixed ranges), MISC_ENABLE,
/// TSC_ADJUST and MCG_STATUS. KVM keeps them in the vCPU from run to run
/// (measured on PVM: a RDMSR, INC, WRMSR of each read one more in every
/// state after the first, and a WRMSR of MTRRdefType made the next states'
/// #GP).
const MSRS_A_RUN_MAY_CHANGE: [u32; 32] = [
    0x277, 0x1a0, 0x3b, 0x17a, 0x2ff, 0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207,
    0x208, 0x209, 0x20a, 0x20b, 0x20c, 0x20d, 0x20e, 0x20f, 0x250, 0x258, 0x259, 0x268, 0x269,
    0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
];

/// The values a new vCPU has of [`MSRS_A_RUN_MAY_CHANGE`], of those KVM
/// reads and takes back (one at a time: KVM_GET_MSRS and KVM_SET_MSRS
/// stop at the first they do not), so that setting them cannot fail a run.
pub(super) fn reset_msrs(vcpu: &VcpuFd) -> Vec<(u32, u64)> {
    MSRS_A_RUN_MAY_CHANGE
        .iter()
        .filter_map(|&index| {
            let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
                index,
                ..Default::default()
            }])
            .ok()?;
            (vcpu.get_msrs(&mut msrs).ok()? == 1).then_some(())?;
            (vcpu.set_msrs(&msrs).ok()? == 1).then(|| (index, msrs.as_slice()[0].data))
        })
        .collect()
}

/// Sets every register for the start of a run of `test` on `side`, one
/// ioctl per part (the full way), and the MSRs of `msrs_reset` to their
/// values in a new vCPU.
pub(super) fn set_state(
    vcpu: &VcpuFd,
    xsave: Option<&kvm_xsave>,
    msrs_reset: &[(u32, u64)],
    image: &GuestImage,
    side: Side,
    test: &Prepared,
) -> Result<(), KvmError> {
    let e = image.entry(side).ok_or(KvmError::NoSuchSide)?;
    let sys = &image.sys;
    // State no outcome records but an instruction may change: the
    // XSAVE-managed registers and the debug registers start from their
    // reset values.
    reset_xstate(vcpu, xsave)?;
    reset_debug_regs(vcpu)?;
    let sregs = vcpu.get_sregs().map_err(KvmError::GetSregs)?;
    vcpu.set_sregs(&sregs_for(sregs, sys, e))
        .map_err(KvmError::SetSregs)?;
    if !sys.msrs.is_empty() || !msrs_reset.is_empty() {
        let entries: Vec<kvm_msr_entry> = sys
            .msrs
            .iter()
            .chain(msrs_reset)
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(KvmError::MsrList)?;
        let n = vcpu.set_msrs(&msrs).map_err(KvmError::SetMsrs)?;
        if n != entries.len() {
            return Err(KvmError::MsrRefused(
                entries.get(n).map(|m| m.index).unwrap_or(0),
            ));
        }
    }
    vcpu.set_regs(&regs_for(test, e.rflags))
        .map_err(KvmError::SetRegs)?;
    Ok(())
}

/// `current` with the system registers of the image and the segments of
/// the side's entry state (CR2, CR8 and pending interrupts cleared).
fn sregs_for(current: kvm_sregs, sys: &SysRegs, e: &EntryState) -> kvm_sregs {
    let mut sregs = current;
    sregs.cr8 = 0;
    sregs.cr0 = sys.cr0;
    sregs.cr3 = sys.cr3;
    sregs.cr4 = sys.cr4;
    sregs.efer = sys.efer;
    sregs.cr2 = 0;
    sregs.gdt.base = sys.gdtr.0;
    sregs.gdt.limit = sys.gdtr.1;
    sregs.idt.base = sys.idtr.0;
    sregs.idt.limit = sys.idtr.1;
    sregs.ldt = kvm_seg(&sys.ldtr);
    sregs.tr = kvm_seg(&sys.tr);
    sregs.cs = kvm_seg(&e.segs[0]);
    sregs.ss = kvm_seg(&e.segs[1]);
    sregs.ds = kvm_seg(&e.segs[2]);
    sregs.es = kvm_seg(&e.segs[3]);
    sregs.fs = kvm_seg(&e.segs[4]);
    sregs.gs = kvm_seg(&e.segs[5]);
    sregs.interrupt_bitmap = [0; 4];
    sregs
}

/// The general registers of the test, at its first instruction.
fn regs_for(test: &Prepared, rflags: u64) -> kvm_regs {
    let g = &test.gprs;
    kvm_regs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rsp: g[4],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: test.rip,
        rflags,
    }
}

/// R and M as KVM reports them now (`sregs`, the image's MSRs read from
/// the vCPU unless `msrs` gives them: what KVM reported before a run that
/// cannot have changed them); `rflags` gives the system flags.
pub(super) fn system_state_now(
    vcpu: &VcpuFd,
    image: &GuestImage,
    sregs: &kvm_sregs,
    rflags: u64,
    msrs: Option<&[(u32, u64)]>,
) -> Result<SystemState, KvmError> {
    let mut s = system_state(image.mode, sregs, rflags, Vec::new());
    s.msrs = match msrs {
        Some(m) => m.to_vec(),
        None => read_msrs(vcpu, image)?,
    };
    Ok(s)
}

/// R and M from the segment and system registers, the flags and the MSRs.
pub(super) fn system_state(
    mode: Mode,
    sregs: &kvm_sregs,
    rflags: u64,
    msrs: Vec<(u32, u64)>,
) -> SystemState {
    let segs = [sregs.cs, sregs.ss, sregs.ds, sregs.es, sregs.fs, sregs.gs].map(|s| Segment {
        selector: s.selector,
        cache: Some((s.base, s.limit, attr_of(&s))),
    });
    let t = |base: u64, limit: u16| TableReg {
        selector: 0,
        base,
        limit: limit as u32,
    };
    let sd = |s: &kvm_segment| TableReg {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
    };
    SystemState {
        cpl: cpl_of(mode, sregs),
        segs,
        gdtr: t(sregs.gdt.base, sregs.gdt.limit),
        idtr: t(sregs.idt.base, sregs.idt.limit),
        ldtr: sd(&sregs.ldt),
        tr: sd(&sregs.tr),
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
        sys_flags: rflags & SYS_FLAGS_MASK,
        msrs,
    }
}

/// The CPL: CS.DPL in protected modes, 0 in real mode.
pub(super) fn cpl_of(mode: Mode, sregs: &kvm_sregs) -> u8 {
    if mode.is_protected() {
        sregs.cs.dpl
    } else {
        0
    }
}

/// The image's MSRs as the vCPU has them now.
pub(super) fn read_msrs(vcpu: &VcpuFd, image: &GuestImage) -> Result<Vec<(u32, u64)>, KvmError> {
    if image.sys.msrs.is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<kvm_msr_entry> = image
        .sys
        .msrs
        .iter()
        .map(|&(index, _)| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries).map_err(KvmError::MsrList)?;
    let n = vcpu.get_msrs(&mut msrs).map_err(KvmError::GetMsrs)?;
    Ok(msrs
        .as_slice()
        .iter()
        .take(n)
        .map(|m| (m.index, m.data))
        .collect())
}

/// The user state from `regs` and the data and stack pages in `mem`, with
/// `rip` as the program counter.
pub(super) fn user_state(
    mem: &[u8],
    image: &GuestImage,
    regs: &kvm_regs,
    rip: u64,
) -> Result<UserState, KvmError> {
    let long = image.mode == Mode::Long64;
    let mut gprs = [
        regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
        regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ];
    if !long {
        // As the mode sees them: 32-bit registers, no R8-R15.
        for (i, g) in gprs.iter_mut().enumerate() {
            *g = if i < 8 { *g & 0xFFFF_FFFF } else { 0 };
        }
    }
    let page = |phys: u64, page: &'static str| {
        bytes_at(mem, phys, PAGE as usize)
            .map(crate::observe::Page::from)
            .ok_or(KvmError::PageOutside { page, phys })
    };
    Ok(UserState {
        gprs,
        rip,
        flags: regs.rflags & USER_FLAGS_MASK,
        data: page(image.data_phys, "data")?,
        stack: page(image.stack_phys, "stack")?,
    })
}

/// A `kvm_segment` from a selector and a descriptor cache in VMX
/// access-rights layout.
pub(super) fn kvm_seg(d: &SegDesc) -> kvm_segment {
    let a = d.attr;
    kvm_segment {
        base: d.base,
        limit: d.limit,
        selector: d.selector,
        type_: (a & 0xF) as u8,
        s: ((a >> 4) & 1) as u8,
        dpl: ((a >> 5) & 3) as u8,
        present: ((a >> 7) & 1) as u8,
        avl: ((a >> 12) & 1) as u8,
        l: ((a >> 13) & 1) as u8,
        db: ((a >> 14) & 1) as u8,
        g: ((a >> 15) & 1) as u8,
        unusable: u8::from(a & 0x80 == 0),
        padding: 0,
    }
}

/// The access-rights attributes of a `kvm_segment` (0 if unusable).
fn attr_of(s: &kvm_segment) -> u16 {
    if s.unusable != 0 {
        return 0;
    }
    (s.type_ as u16 & 0xF)
        | ((s.s as u16 & 1) << 4)
        | ((s.dpl as u16 & 3) << 5)
        | ((s.present as u16 & 1) << 7)
        | ((s.avl as u16 & 1) << 12)
        | ((s.l as u16 & 1) << 13)
        | ((s.db as u16 & 1) << 14)
        | ((s.g as u16 & 1) << 15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Variant, DATA};
    use crate::mode::Config;

    #[test]
    fn segment_attributes_survive_the_trip_through_kvm_segment() {
        // 64-bit ring-3 code (L=1, P, DPL 3, S, type 0xB), flat data, a TSS.
        for attr in [0xA0FBu16, 0xC0F3, 0x008B] {
            let d = SegDesc {
                selector: 0x2B,
                base: 0x1000,
                limit: 0xFFFF_FFFF,
                attr,
            };
            let k = kvm_seg(&d);
            assert_eq!(k.unusable, 0);
            assert_eq!(attr_of(&k), attr, "{attr:#x}");
            assert_eq!((k.selector, k.base, k.limit), (0x2B, 0x1000, 0xFFFF_FFFF));
        }
        // Not present: unusable, and read back as 0.
        let k = kvm_seg(&SegDesc {
            attr: 0x0013,
            ..SegDesc::default()
        });
        assert_eq!((k.unusable, attr_of(&k)), (1, 0));
    }

    #[test]
    fn the_state_set_is_the_state_read_back() {
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        for side in Side::BOTH {
            let p = img.prepare(side, &[0x90], &Default::default()).unwrap();
            let e = img.entry(side).unwrap();
            let sregs = sregs_for(kvm_sregs::default(), &img.sys, e);
            let regs = regs_for(&p, e.rflags);
            assert_eq!(regs.rip, p.rip);
            let got = system_state(img.mode, &sregs, regs.rflags, img.sys.msrs.clone());
            let want = img.system_state(side).unwrap();
            assert_eq!(got.cpl, want.cpl, "{side}");
            for i in 0..6 {
                assert_eq!(
                    got.segs[i].selector, want.segs[i].selector,
                    "{side} seg {i}"
                );
            }
            assert_eq!((got.cr0, got.cr3, got.cr4), (want.cr0, want.cr3, want.cr4));
            assert_eq!(got.gdtr.base, want.gdtr.base);
            assert_eq!(got.sys_flags, want.sys_flags, "{side}");
        }
    }

    #[test]
    fn user_state_reads_the_pages_and_masks_registers_by_mode() {
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Prot32, cfg, Variant::base(&cfg));
        let mut mem = img.memory.clone();
        mem[img.data_phys as usize] = 0xAB;
        let regs = kvm_regs {
            rax: 0x1_2345_6789,
            r8: 7,
            rflags: 0x202,
            ..Default::default()
        };
        let u = user_state(&mem, &img, &regs, 0x7102).unwrap();
        assert_eq!((u.gprs[0], u.gprs[8], u.rip), (0x2345_6789, 0, 0x7102));
        assert_eq!(u.data[0], 0xAB);
        assert_eq!(u.data.len(), PAGE as usize);
        let short = &mem[..DATA as usize];
        let err = user_state(short, &img, &regs, 0).unwrap_err();
        assert!(
            err.to_string().starts_with("read the data page failed: "),
            "{err}"
        );
    }
}
