//! The vCPU thread's own DS, ES, FS and GS selectors, for PVM.
//!
//! On `kvm_pvm` the guest's CPL-3 code runs in hardware user mode with the
//! vCPU thread's DS/ES/FS/GS selectors: KVM_SET_SREGS values never reach
//! the hardware, and what the guest loads stays in the thread after
//! KVM_RUN. So the engine loads the selectors a run wants into the thread
//! just before KVM_RUN ([`load`]) and puts the thread's own back afterwards
//! ([`Loaded::restore`]). Loading FS or GS also sets its base from the
//! host's descriptor, and Rust's thread-locals live at the FS base: both
//! bases are read with RDFSBASE/RDGSBASE and written back with
//! WRFSBASE/WRGSBASE in the same `asm!` block as the loads, so no Rust code
//! ever runs with a foreign FS base. That needs the kernel to allow the
//! FSGSBASE instructions in user space (AT_HWCAP2 bit 1, Linux 5.9 on).
//!
//! A selector is loaded only when VERR says the host's descriptor for it is
//! readable at CPL 3 (or it is null), so a load can never fault. The
//! guest's selectors name the *host's* descriptors here (the guest's GDT is
//! not the one the hardware uses at CPL 3): the harness's user data
//! selector 0x23 is the host's 32-bit user code segment, which is readable
//! and so loadable into a data segment register.
//!
//! This module holds the engine's segment-register `unsafe`.

use std::arch::asm;
use std::marker::PhantomData;

/// DS, ES, FS and GS selectors, in that order.
pub(super) type Selectors = [u16; 4];

/// The names of [`Selectors`]' registers, in order.
pub(super) const NAMES: [&str; 4] = ["ds", "es", "fs", "gs"];

/// AT_HWCAP2 bit: the kernel enabled RDFSBASE and friends for user space.
const HWCAP2_FSGSBASE: u64 = 1 << 1;

/// Whether user space may use RDFSBASE/WRFSBASE/RDGSBASE/WRGSBASE here.
pub(super) fn fsgsbase_usable() -> bool {
    // SAFETY: getauxval has no preconditions; it returns 0 for an unknown type.
    let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
    hwcap2 & HWCAP2_FSGSBASE != 0
}

/// Whether `sel` can be loaded into DS, ES, FS or GS at the host's CPL 3:
/// a null selector, or one whose host descriptor VERR finds readable.
pub(super) fn loadable(sel: u16) -> bool {
    if sel & !3 == 0 {
        return true;
    }
    let readable: u8;
    // SAFETY: VERR with a register operand reads the descriptor tables
    // and sets ZF; it faults for no selector value in 64-bit user mode
    // and writes nothing but the flags and the output register.
    unsafe {
        asm!(
            "verr {sel:x}",
            "setz {ok}",
            sel = in(reg) sel,
            ok = out(reg_byte) readable,
            options(nostack, nomem),
        );
    }
    readable != 0
}

/// The thread's DS, ES, FS and GS selectors now.
pub(super) fn current() -> Selectors {
    let (ds, es, fs, gs): (u16, u16, u16, u16);
    // SAFETY: reading segment selectors into registers has no side effects.
    unsafe {
        asm!(
            "mov {ds:x}, ds",
            "mov {es:x}, es",
            "mov {fs:x}, fs",
            "mov {gs:x}, gs",
            ds = out(reg) ds,
            es = out(reg) es,
            fs = out(reg) fs,
            gs = out(reg) gs,
            options(nostack, nomem, preserves_flags),
        );
    }
    [ds, es, fs, gs]
}

/// Why the selectors a run wants cannot be put into the vCPU thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unloadable {
    /// The kernel does not allow WRFSBASE in user space, so FS and GS cannot
    /// be loaded without losing the thread's FS base.
    NoFsgsbase,
    /// The host's descriptor for this selector is not a readable segment at
    /// CPL 3 (register name, selector).
    Selector(&'static str, u16),
}

impl std::fmt::Display for Unloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unloadable::NoFsgsbase => write!(
                f,
                "the host kernel does not enable FSGSBASE for user space, so the \
                 vCPU thread cannot hold the guest's FS/GS selectors"
            ),
            Unloadable::Selector(name, sel) => write!(
                f,
                "the guest's {name} {sel:#06x} is not loadable in the host's user mode"
            ),
        }
    }
}

/// The thread's own selectors and bases while a run's selectors are loaded;
/// [`Loaded::restore`] puts them back. Not `Send`: it belongs to the thread.
#[must_use = "the thread's own selectors must be restored"]
pub(super) struct Loaded {
    own: Selectors,
    fs_base: u64,
    gs_base: u64,
    _thread: PhantomData<*const ()>,
}

/// Loads `want` into the calling thread's DS, ES, FS and GS, keeping its FS
/// and GS bases; checks first that every selector is loadable.
pub(super) fn load(want: Selectors) -> Result<Loaded, Unloadable> {
    if !fsgsbase_usable() {
        return Err(Unloadable::NoFsgsbase);
    }
    if let Some(i) = (0..4).find(|&i| !loadable(want[i])) {
        return Err(Unloadable::Selector(NAMES[i], want[i]));
    }
    let own = current();
    let (fs_base, gs_base): (u64, u64);
    // SAFETY: FSGSBASE is enabled for user space (checked above), so
    // RDFSBASE etc. do not fault; every selector is null or names a
    // descriptor VERR found readable at CPL 3 (checked above), so no load
    // faults. The FS and GS bases, which the loads overwrite, are written
    // back before the block ends: no code (no thread-local access) runs with
    // another FS base. Flags are untouched; no memory is accessed.
    unsafe {
        asm!(
            "rdfsbase {fsb}",
            "rdgsbase {gsb}",
            "mov ds, {ds:x}",
            "mov es, {es:x}",
            "mov fs, {fs:x}",
            "mov gs, {gs:x}",
            "wrfsbase {fsb}",
            "wrgsbase {gsb}",
            fsb = out(reg) fs_base,
            gsb = out(reg) gs_base,
            ds = in(reg) want[0],
            es = in(reg) want[1],
            fs = in(reg) want[2],
            gs = in(reg) want[3],
            options(nostack, nomem, preserves_flags),
        );
    }
    Ok(Loaded {
        own,
        fs_base,
        gs_base,
        _thread: PhantomData,
    })
}

impl Loaded {
    /// Puts back the thread's own selectors (null where one is no longer
    /// loadable) and its FS and GS bases.
    pub(super) fn restore(self) {
        let own = self.own.map(|s| if loadable(s) { s } else { 0 });
        // SAFETY: `Loaded` exists only after `load` found FSGSBASE usable,
        // on this thread (`Loaded` is not `Send`); every selector is null or
        // loadable (checked just above); the bases are the thread's own,
        // read by `load`, and are written back in the same block as the
        // loads that overwrite them.
        unsafe {
            asm!(
                "mov ds, {ds:x}",
                "mov es, {es:x}",
                "mov fs, {fs:x}",
                "mov gs, {gs:x}",
                "wrfsbase {fsb}",
                "wrgsbase {gsb}",
                ds = in(reg) own[0],
                es = in(reg) own[1],
                fs = in(reg) own[2],
                gs = in(reg) own[3],
                fsb = in(reg) self.fs_base,
                gsb = in(reg) self.gs_base,
                options(nostack, nomem, preserves_flags),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_selectors_are_loadable_and_kernel_ones_are_not() {
        for s in [0u16, 1, 2, 3] {
            assert!(loadable(s), "{s:#x}");
        }
        // The host kernel's data segment (0x18 on x86_64 Linux, DPL 0) is
        // not readable at CPL 3; a selector far past the GDT is not either.
        assert!(!loadable(0x18 | 3));
        assert!(!loadable(0xFFF8 | 3));
    }

    #[test]
    fn loading_keeps_thread_locals_and_restore_puts_the_selectors_back() {
        if !fsgsbase_usable() {
            println!("skipped: {}", Unloadable::NoFsgsbase);
            return;
        }
        thread_local! {
            static MARK: std::cell::Cell<u32> = const { std::cell::Cell::new(7) };
        }
        let own = current();
        // The host's user data selector on x86_64 Linux.
        let want = [0x2B; 4];
        if !loadable(0x2B) {
            println!("skipped: 0x2b is not loadable on this host");
            return;
        }
        let l = load(want).unwrap();
        assert_eq!(current(), want);
        MARK.with(|m| m.set(m.get() + 1));
        l.restore();
        assert_eq!(current(), own.map(|s| if loadable(s) { s } else { 0 }));
        assert_eq!(MARK.with(|m| m.get()), 8);
        assert_eq!(
            load([0x18 | 3, 0, 0, 0]).err(),
            Some(Unloadable::Selector("ds", 0x1B))
        );
    }
}
