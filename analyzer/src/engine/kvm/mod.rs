//! The KVM engine: one VM with one vCPU per engine (one engine per worker),
//! reused for every run. Every run sets all registers anew and restores the
//! harness pages an instruction may dirty; nothing runs the boot stubs.
//!
//! The lean run path (where KVM offers KVM_CAP_SYNC_REGS; kvm_pvm offers
//! REGS, SREGS and EVENTS): a run is one KVM_RUN and one KVM_GET_DIRTY_LOG.
//! The general and special registers (and pending events, when they must be
//! cleared) go in through `kvm_run`'s sync_regs area and come back out of
//! it; the XSAVE state, the debug registers and the image's MSRs are reset
//! only where an earlier run may have changed them, and the MSRs read after
//! a run only where it may have changed them ([`touch`]: decided from the
//! test's decoded encoding, everything where in doubt). The first run of an
//! image and side, and every run after one that may have changed the MSRs,
//! takes the full path (one ioctl per part), which is what the before-state
//! is read from. `POPEK_KVM_FULL=1` takes the full path for every run.
//!
//! Exits: every HLT at CPL 0 exits with KVM_EXIT_HLT (no in-kernel irqchip),
//! so the sentinel, the landing pads and every IDT/SYSCALL/SYSENTER/call-gate
//! entry stub of the harness end the run. Exceptions are delivered through
//! the guest's IDT; the frame on the handler's stack gives the vector's
//! error code and the faulting RIP. A HLT at CPL 3 raises #GP, so a run at
//! CPL 3 that reaches its sentinel arrives at the #GP handler with the
//! sentinel as the frame's RIP: that is a completion, and the user state is
//! rebuilt from the registers and the frame.
//!
//! The shared watchdog thread ([`crate::engine::watchdog`], one per engine;
//! a run that ends in time wakes it not) sends a real-time signal to the
//! vCPU thread when a run overstays [`TIME_LIMIT`]; `KVM_RUN` then returns
//! EINTR and the run is a `Hang`. From 10 ms on a run is also paused every
//! 5 ms and its whole guest state sampled: the same state twice is a
//! cycle, a `Hang` at once (see `exit`).
//!
//! Besides the image's `restore_pages`, every page the guest dirtied (KVM's
//! dirty log) gets back its last written content before the next run; x87/SSE
//! state and debug registers (where a run may have changed them), CR8 and
//! (after an engine-level end) pending events are reset too. The before-state is what KVM reports right after the
//! registers are set (read once per image and side).
//!
//! Ring compression (a supervisor at CPL 1 or 3) runs in long-mode images
//! (64 and 32c): there the IDT gates lead to the harness's exit stubs
//! (`entry::EXIT_STUBS`), each an MMIO write to an unbacked page whose
//! address names the vector, which exits at any CPL (KVM_EXIT_MMIO); the
//! frame is read as after a HLT stub. A HLT at CPL 1 or 3 raises #GP, so
//! the #GP stub's exit is how such a run reaches its sentinel. (Once the
//! write exited, KVM has completed it: the next KVM_RUN owes it nothing.)
//! In 16- and 32-bit protected mode the supervisor at CPL 1 or 3 is not
//! supported: a HLT stub raises #GP without end there, and a write would
//! go through a data segment the test may have changed.
//!
//! On PVM (`kvm_pvm`, a software hypervisor) the guest's supervisor runs in
//! hardware user mode; what it reports is recorded as it is. Measured there
//! (the tests assert each):
//! - 32-bit protected mode with paging (2-level or PAE): every run shuts down; the
//!   engine reports the mode as `NotSupported`. Real mode and 16-bit
//!   protected mode run.
//! - At CPL 0, INT n / INT3 / INT1, LAR, LSL, VERR, RDTSCP, XGETBV and
//!   SYSENTER (64-bit) end in KVM_EXIT_INTERNAL_ERROR (an `EngineError`).
//! - At CPL 3 in 64-bit mode: `mov ax, cs` reads 0x33 (the host's user
//!   selector), PUSHFQ pushes IF = 1 when the guest has IF = 0, INT 0x80
//!   raises #UD, the #GP frame's RFLAGS shows IOPL 0 when the guest has
//!   IOPL 3, and SYSCALL jumps to LSTAR without leaving CPL 3 (recorded as a
//!   transfer at CPL 3).
//! - 16-bit mode at CPL 3: INT n, INT3, LAR, LSL, VERR raise #UD; a far
//!   call through the call gate raises #UD; with a nonzero SS base the
//!   exception frame is written at linear ESP, ignoring the SS base (at
//!   CPL 0 too). The engine reads the frame where it was written (guest
//!   memory there is the image's before every run) when SS:ESP holds none;
//!   a frame must hold a code selector of the image's GDT.
//! - Ring compression (64 and 32c, through the exit stubs): a handler
//!   whose code segment has DPL 1 or 3 is entered with CS = the gate's
//!   selector unchanged (RPL 0, its cached DPL 1 or 3) and SS = 0, where
//!   the manuals give CS with RPL = the new CPL and SS = NULL | CPL; the
//!   stack is IST1's, as it should be. No observation reads the handler's
//!   CS or SS (the frame gives the test's), so this decides no verdict.
//!   CPL 1 runs in the emulator (LAR, LSL, VERR, VERW, INT n are
//!   KVM_EXIT_INTERNAL_ERROR there); SWAPGS and SYSRET at CPL 1 complete
//!   (manuals: #GP(0) at CPL != 0); LAR, LSL, VERR and VERW at CPL 3 read
//!   the host's GDT (selector 0x10 is the host kernel's data segment, so
//!   ring3's CPL-3 evidence for them is the base state's); a far CALL from
//!   CPL 3 through the call gate to a DPL-1 or DPL-3 code segment is #UD.
//! - RDPMC is #GP(0) at every CPL where KVM's PMU is off
//!   (`kvm.enable_pmu=N`, as here).
//! - Real mode: INT 0x80 never leaves the instruction (a `Hang`).
//! - Guest CPL-0 code runs at about 0.6 µs per NOP, CPL-3 code natively
//!   (test `nop_slide_speed_per_cpl`); likely because the harness's
//!   supervisor does not follow the PVM ABI and KVM emulates it, in which
//!   case the CPL-0 observations are those of KVM's instruction emulator
//!   (inferred, not proven).
//! - The guest's CPL-3 code reads the vCPU thread's own hardware DS, ES,
//!   FS and GS selectors (KVM_SET_SREGS values never reach the hardware),
//!   and what it loads stays in the thread. So in protected modes the
//!   engine loads the side's entry selectors into the thread just before
//!   KVM_RUN and puts the thread's own (and its FS/GS bases) back after it
//!   (`hostsegs`); without that `mov r, ds` (es, fs, gs) at CPL 3 read what
//!   an earlier run left (0x33, or 0), and a scan's evidence depended on
//!   the order of runs. A selector the host cannot load at CPL 3 (or a
//!   kernel without FSGSBASE for user space) makes the run `NotSupported`.
//!   KVM's state after a 64-bit CPL-3 run does not show what the guest
//!   loaded (after LFS it still held 0x23): a selector the thread holds
//!   when KVM_RUN returns and the run did not start with replaces KVM's,
//!   without a descriptor cache (the hardware holds the host's descriptor).
//!
//! Speed of the lean path, side by side with the full path it replaced
//! (commit fba1d18) on 2026-12-01, AMD EPYC, a machine shared with other
//! sessions (load 3-8 on 2 cores): the full default scan 617,760 runs in
//! 15.1-15.9 s (38,800-40,800 runs/s, 15.3-15.6 CPU-s) against 28.8-43.1 s
//! (14,300-21,400 runs/s, 28.6-29.0 CPU-s), reports byte-identical; the
//! 64-bit umip=on scan with `--jobs 1` 5.9-7.0 s against 14.0 s. Ioctls per
//! run in that scan: 2.3 against 8.6 (KVM_SET_XSAVE before most SSE/AVX
//! runs is most of the rest). Before the stall check, 164 runs of the
//! default scan (VMCALL, VMMCALL, VMGEXIT at CPL 0, looping inside KVM)
//! took 100 ms each: 16 of its 29 CPU-seconds. What is left is KVM's: on
//! PVM every vCPU ioctl costs 2-3 µs (vcpu_load/put), CPL-0 code runs in
//! the instruction emulator, and a CPL-3 run ends through #GP delivery to
//! the ring-0 stub. Not done: an MMIO-write sentinel at CPL 3 (measured
//! 3 µs cheaper than HLT, #GP and the stub), which would change the code
//! page's bytes after the test, which a test can read.
//!
//! There was a batch path (many CPL-3 cases per KVM_RUN through a ring-0
//! runtime in a second memory slot; removed, git history keeps it): on
//! `kvm_pvm` guest CPL-0 code runs in KVM's instruction emulator, and
//! batched CPL-3 cases ran at about 380 cases/s against 10,700 single
//! runs/s (bench `kvm_batch`, 256 NOP cases).
//!
//! Modules, one job each: `flavor` (which KVM, the device), `memory` (the
//! VM, its vCPU and guest memory, the dirty log; the memory `unsafe`),
//! `signal` (how the watchdog interrupts a run; the signal `unsafe`), `hostsegs` (the
//! vCPU thread's segment selectors on PVM; the segment-register `unsafe`),
//! `vcpu` (register state in and out), `touch` (what a test may change
//! beyond the registers, pure), `exit` (the KVM_RUN loop, stalls) and
//! `frame` (what a HLT exit means, pure).

mod exit;
mod flavor;
mod frame;
mod hostsegs;
mod memory;
mod signal;
mod touch;
mod vcpu;

pub use flavor::{device_path, Flavor};

use super::{Engine, EngineError, Executor};
use crate::machine::{GuestImage, Prepared, Setup, Variant};
use crate::mode::{Config, Mode};
use crate::observe::{Observation, Outcome, Side, SystemState, UserState};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use memory::Guest;
use signal::Watchdog;
use std::collections::HashMap;
use std::time::Duration;
use touch::Touches;
use vmm_sys_util::errno::Error as Errno;

/// Wall-clock limit of one run; a run still inside the guest then is a `Hang`.
pub const TIME_LIMIT: Duration = Duration::from_millis(100);

/// What failed while opening the engine or driving a run: the action, and
/// the error KVM or the OS gave for it.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("open the KVM device failed: {0}")]
    OpenDevice(#[source] Errno),
    #[error("create a VM failed: {0}")]
    CreateVm(#[source] Errno),
    #[error("map guest memory failed: {0}")]
    MapMemory(#[source] std::io::Error),
    #[error("set the guest memory region failed: {0}")]
    SetMemoryRegion(#[source] Errno),
    #[error("create a vCPU failed: {0}")]
    CreateVcpu(#[source] Errno),
    #[error("get the supported CPUID failed: {0}")]
    GetSupportedCpuid(#[source] Errno),
    #[error("set CPUID failed: {0}")]
    SetCpuid(#[source] Errno),
    #[error("install the watchdog signal handler failed: {0}")]
    InstallSignalHandler(#[source] std::io::Error),
    #[error("start the watchdog thread failed: {0}")]
    StartWatchdog(#[source] std::io::Error),
    #[error("pick the side failed: no such side in this mode")]
    NoSuchSide,
    #[error("clear pending events failed: {0}")]
    ClearEvents(#[source] Errno),
    #[error("set fpu failed: {0}")]
    SetFpu(#[source] Errno),
    #[error("set debug registers failed: {0}")]
    SetDebugRegs(#[source] Errno),
    #[error("get sregs failed: {0}")]
    GetSregs(#[source] Errno),
    #[error("set sregs failed: {0}")]
    SetSregs(#[source] Errno),
    #[error("build the MSR list failed: {0:?}")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    #[error("set msrs failed: {0}")]
    SetMsrs(#[source] Errno),
    #[error("set msrs failed: KVM refused MSR {0:#x}")]
    MsrRefused(u32),
    #[error("get msrs failed: {0}")]
    GetMsrs(#[source] Errno),
    #[error("get regs failed: {0}")]
    GetRegs(#[source] Errno),
    #[error("set regs failed: {0}")]
    SetRegs(#[source] Errno),
    #[error("run the vCPU failed: {0}")]
    Run(#[source] Errno),
    #[error("read the {page} page failed: {phys:#x} outside guest memory")]
    PageOutside { page: &'static str, phys: u64 },
}

use crate::engine::shadow::ImageKey;

/// How a run ended, before it is turned into an observation.
struct Ending {
    outcome: Outcome,
    after: Option<SystemState>,
    user: Option<UserState>,
}

impl Ending {
    fn only(outcome: Outcome) -> Ending {
        Ending {
            outcome,
            after: None,
            user: None,
        }
    }
}

/// Gives the guest's vCPU `cpuid` and, where `sync`, asks KVM to store its
/// registers into the sync_regs area after every run.
fn set_up_vcpu(guest: &mut Guest, cpuid: &kvm_bindings::CpuId, sync: bool) -> Result<(), KvmError> {
    guest.vcpu.set_cpuid2(cpuid).map_err(KvmError::SetCpuid)?;
    guest.msrs_reset = vcpu::reset_msrs(&guest.vcpu);
    if sync {
        vcpu::sync_after_every_run(&mut guest.vcpu);
    }
    Ok(())
}

/// A VM with its memory and a vCPU set up as by [`set_up_vcpu`].
fn new_guest(kvm: &Kvm, cpuid: &kvm_bindings::CpuId, sync: bool) -> Result<Guest, KvmError> {
    let mut guest = Guest::new(kvm)?;
    set_up_vcpu(&mut guest, cpuid, sync)?;
    Ok(guest)
}

/// Whether KVM can pass the general and special registers and the pending
/// events through `kvm_run` (KVM_CAP_SYNC_REGS).
fn offers_sync_regs(kvm: &Kvm) -> bool {
    let want = kvm_bindings::KVM_SYNC_X86_REGS
        | kvm_bindings::KVM_SYNC_X86_SREGS
        | kvm_bindings::KVM_SYNC_X86_EVENTS;
    let have = kvm.check_extension_int(kvm_ioctls::Cap::SyncRegs);
    have > 0 && (have as u32) & want == want
}

/// Whether a run of `test` may leave state behind that setting the
/// registers does not undo: WRPKRU (`0f 01 ef`) at CPL 3, which on PVM
/// runs on the CPU although the guest's CR4.PKE is clear, and whose PKRU
/// then outlives the run (measured: the next runs' data accesses took #PF
/// with the protection-key bit, in an order that depended on `--jobs`).
fn leaves_state_behind(side: Side, test: &Prepared) -> bool {
    side == Side::User && test.encoding().windows(3).any(|w| w == [0x0F, 0x01, 0xEF])
}

/// The KVM engine: one VM, one vCPU, `MEM_SIZE` bytes of guest memory.
pub struct KvmEngine {
    guest: Guest,
    kvm: Kvm,
    /// The CPUID every vCPU is given (KVM's supported one).
    cpuid: kvm_bindings::CpuId,
    /// The last run may have changed state no register setting restores:
    /// the next run gets a new VM ([`leaves_state_behind`]).
    fresh_guest: bool,
    api: i32,
    flavor: Flavor,
    watchdog: Watchdog,
    /// Per mode and configuration: whether a NOP at CPL 0 completes in its
    /// base image (`Err`: why the mode is not supported here).
    modes: HashMap<(Mode, Config), Result<(), String>>,
    /// The before-state KVM reported for an image and side (it is the same
    /// for every run: all of it is set anew from the image).
    befores: HashMap<(ImageKey, Side), SystemState>,
    /// The last run ended at engine level: clear pending events first.
    reset_events: bool,
    /// A run since the MSRs of `Guest::msrs_reset` were last set back may
    /// have run a WRMSR: it started at CPL 0, or may have run code other
    /// than its test (it wrote where code may be, or ended at engine
    /// level). A run at CPL 3 reaches CPL 0 only in the harness's stubs.
    msrs_written: bool,
    /// Whether KVM offers the guest CR4.UMIP (CPUID.7.0:ECX bit 2 of the
    /// supported CPUID), in hardware or emulated.
    umip: bool,
    /// Whether KVM offers sync_regs (then runs take the lean way in).
    sync: bool,
    /// The sync_regs area holds the vCPU's registers as the last KVM_RUN
    /// left them (false for a new guest until its first run).
    synced: bool,
    /// The parts of the vCPU's state an earlier run may have changed: reset
    /// before the next run ([`touch`]).
    dirty: Touches,
    /// The pages (bit n: page n) the last run may write without widening
    /// `dirty` to all (its image's `restore_pages` but the code page).
    quiet_pages: u64,
}

impl KvmEngine {
    /// Whether /dev/kvm can be used, and which flavor it is; the error says
    /// what is wrong and how to fix it.
    pub fn availability() -> Result<Flavor, String> {
        flavor::availability()
    }

    /// Creates the VM, its memory and its vCPU.
    pub fn new() -> Result<KvmEngine, EngineError> {
        let flavor = KvmEngine::availability().map_err(EngineError::KvmUnavailable)?;
        let path = std::ffi::CString::new(device_path().as_os_str().as_encoded_bytes())
            .map_err(|e| EngineError::KvmUnavailable(format!("bad device path: {e}")))?;
        let kvm = Kvm::new_with_path(&path).map_err(KvmError::OpenDevice)?;
        let api = kvm.get_api_version();
        // The VM first: a device that is not KVM fails here, and the
        // error names the device.
        let mut guest = Guest::new(&kvm)?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::GetSupportedCpuid)?;
        let sync = offers_sync_regs(&kvm) && std::env::var_os("POPEK_KVM_FULL").is_none();
        set_up_vcpu(&mut guest, &cpuid, sync)?;
        let umip = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == 7 && e.index == 0 && e.ecx & (1 << 2) != 0);
        let watchdog = Watchdog::new()?;
        Ok(KvmEngine {
            guest,
            kvm,
            cpuid,
            fresh_guest: false,
            api,
            flavor,
            watchdog,
            modes: HashMap::new(),
            befores: HashMap::new(),
            reset_events: false,
            msrs_written: false,
            umip,
            sync,
            synced: false,
            dirty: Touches::ALL,
            quiet_pages: 0,
        })
    }

    /// The flavor of /dev/kvm this engine runs on.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Whether the guest can have CR4.UMIP on this host.
    pub fn offers_umip(&self) -> bool {
        self.umip
    }

    /// Sets every register for the start of a run (after clearing pending
    /// events if the last run ended at engine level): the lean way where
    /// KVM offers sync_regs, the before-state is known (`known_before`)
    /// and no earlier run may have changed the image's MSRs; else the full
    /// way, one ioctl per part.
    fn set_state(
        &mut self,
        image: &GuestImage,
        side: Side,
        test: &Prepared,
        known_before: bool,
        touches: Touches,
    ) -> Result<(), KvmError> {
        // The XSAVE state only where this run may use it (no other
        // instruction sees it); the debug registers and the MSRs whenever
        // dirty (DR7 arms breakpoints for every run, and every observation
        // records the MSRs).
        let dirty = std::mem::replace(&mut self.dirty, Touches::ALL);
        let reset = Touches {
            xstate: dirty.xstate && touches.xstate,
            ..dirty
        };
        let clear_events = std::mem::take(&mut self.reset_events);
        let lean = self.sync && self.synced && known_before && !reset.msrs;
        let v = &mut self.guest.vcpu;
        let xsave = self.guest.xsave_reset.as_ref();
        if lean {
            vcpu::set_state_synced(v, xsave, image, side, test, reset, clear_events)?;
        } else {
            vcpu::forget_synced_state(v);
            if clear_events {
                vcpu::clear_events(v)?;
            }
            let msrs_reset: &[(u32, u64)] = if std::mem::take(&mut self.msrs_written) {
                &self.guest.msrs_reset
            } else {
                &[]
            };
            vcpu::set_state(v, xsave, msrs_reset, image, side, test)?;
        }
        // Left dirty: the XSAVE state this run did not reset.
        self.dirty = Touches {
            xstate: lean && dirty.xstate && !touches.xstate,
            ..Touches::NONE
        };
        Ok(())
    }

    /// The before-state: what KVM reports right after the state is set.
    fn read_before(&self, image: &GuestImage) -> Result<SystemState, KvmError> {
        let v = &self.guest.vcpu;
        let sregs = v.get_sregs().map_err(KvmError::GetSregs)?;
        let regs = v.get_regs().map_err(KvmError::GetRegs)?;
        vcpu::system_state_now(v, image, &sregs, regs.rflags, None)
    }

    /// One run; every failure of KVM itself becomes `Outcome::EngineError`.
    fn run_checked(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        let fail = |e: KvmError, before: SystemState| {
            Observation::outcome_only(
                Outcome::EngineError(EngineError::from(e).to_string()),
                before,
            )
        };
        if std::mem::take(&mut self.fresh_guest) {
            match new_guest(&self.kvm, &self.cpuid, self.sync) {
                Ok(g) => {
                    self.guest = g;
                    self.synced = false;
                    self.dirty = Touches::ALL;
                    self.msrs_written = false;
                }
                Err(e) => return fail(e, SystemState::default()),
            }
        }
        self.fresh_guest = leaves_state_behind(side, test);
        if !self.guest.undo_guest_writes(self.quiet_pages) {
            // The last run wrote where code may be (or the engine cannot
            // tell where it wrote): it may have run more than its test.
            self.dirty = Touches::ALL;
            self.msrs_written = true;
        }
        self.quiet_pages = memory::page_mask(
            image
                .restore_pages
                .iter()
                .copied()
                .filter(|&p| p != image.code_phys),
        );
        self.guest.load(image);
        self.guest.restore(image, test);
        if let Err(e) = self.guest.sync_translations() {
            return fail(e, SystemState::default());
        }
        let key = ((image.mode, image.config, image.variant), side);
        let touches = touch::touches(image.mode, test);
        let known = self.befores.get(&key).cloned();
        if let Err(e) = self.set_state(image, side, test, known.is_some(), touches) {
            self.reset_events = true;
            self.synced = false;
            self.msrs_written = true;
            return fail(e, SystemState::default());
        }
        // The before-state is what KVM reported right after setting it
        // (the first time for this image and side, set the full way; every
        // run sets the same).
        let before = match known {
            Some(b) => b,
            None => match self.read_before(image) {
                Ok(b) => {
                    self.befores.insert(key, b.clone());
                    b
                }
                Err(e) => return fail(e, SystemState::default()),
            },
        };
        let msrs = (!touches.msrs).then_some(&before.msrs[..]);
        let result = self.execute(image, side, test, msrs);
        self.msrs_written |= side == Side::Supervisor;
        if !matches!(&result, Ok(end) if !end.outcome.is_engine_level()) {
            self.reset_events = true;
            if !self.stopped_at_start(&result, test) {
                self.dirty = Touches::ALL;
                self.msrs_written = true;
            }
        } else {
            self.dirty = self.dirty.or(touches);
        }
        match result {
            Ok(mut end) => {
                // Caches the frame does not carry: keep what the run started
                // with when the selector did not change.
                if let Some(after) = end.after.as_mut() {
                    for i in 0..2 {
                        if after.segs[i].cache.is_none()
                            && after.segs[i].selector == before.segs[i].selector
                        {
                            after.segs[i].cache = before.segs[i].cache;
                        }
                    }
                }
                Observation {
                    outcome: end.outcome,
                    before,
                    after: end.after,
                    user: end.user,
                }
            }
            Err(e) => fail(e, before),
        }
    }

    /// Whether a run ended by KVM with the vCPU still at the test's first
    /// byte: KVM could not run the instruction (KVM_EXIT_INTERNAL_ERROR: an
    /// instruction its emulator does not know), so it retired nothing and
    /// left the XSAVE state, the debug registers and the MSRs as they were.
    fn stopped_at_start(&self, result: &Result<Ending, KvmError>, test: &Prepared) -> bool {
        self.synced
            && matches!(result, Ok(end) if matches!(end.outcome, Outcome::EngineError(_)))
            && self.guest.vcpu.sync_regs().regs.rip == test.rip
    }

    /// Probes a mode once: a NOP at CPL 0 in the base image must complete.
    /// (PVM, for one, stops every 32-bit paged guest with a shutdown.)
    fn mode_supported(&mut self, mode: Mode, config: Config) -> Result<(), String> {
        if let Some(r) = self.modes.get(&(mode, config)) {
            return r.clone();
        }
        let img = GuestImage::build(mode, config, Variant::base(&config));
        let r = match img.prepare(Side::Supervisor, &[0x90], &Setup::default()) {
            None => Err("no supervisor side".to_string()),
            Some(p) => {
                let o = self.run_checked(&img, Side::Supervisor, &p);
                if o.outcome.is_completed() {
                    Ok(())
                } else {
                    let hint = if mode == Mode::Prot32 && self.flavor == Flavor::Pvm {
                        " (measured: PVM runs this 32-bit guest without paging, \
                         but neither with 2-level nor with PAE paging; \
                         mode 32c runs 32-bit code as compatibility mode in a long-mode guest)"
                    } else {
                        ""
                    };
                    Err(format!(
                        "{}: a NOP at cpl0 in mode {mode} ended in {}{hint}",
                        self.flavor,
                        o.outcome.short()
                    ))
                }
            }
        };
        self.modes.insert((mode, config), r.clone());
        r
    }
}

impl Engine for KvmEngine {
    fn name(&self) -> &'static str {
        "kvm"
    }

    /// The API, the flavor and the host CPU; on PVM also where each side
    /// runs (CPL 0 in KVM's instruction emulator, CPL 3 on the CPU in
    /// 64-bit mode only; measured: VERR is #UD at CPL 3 in 16-bit mode and
    /// 32c and completes in 64, LAR is KVM_EXIT_INTERNAL_ERROR at CPL 1),
    /// so that every report says which results are whose.
    fn version(&self) -> String {
        let cpu = format!(
            "{} {}",
            crate::host::cpu_vendor().name(),
            crate::host::cpu_model()
        );
        match self.flavor {
            Flavor::Pvm => format!(
                "kvm api {}, flavor {} on {cpu}: CPL 0 runs in KVM's instruction emulator, CPL 3 on the CPU \
                 in 64-bit mode only (CPL 1 and 2, and 16-bit and 32-bit compatibility-mode code at CPL 3, \
                 in the emulator too)",
                self.api, self.flavor
            ),
            _ => format!("kvm api {}, flavor {} on {cpu}", self.api, self.flavor),
        }
    }

    /// On PVM only 64-bit code at CPL 3 runs on the CPU; CPL 0, 1 and 2
    /// and 16-bit and 32c code run in KVM's instruction emulator (as
    /// [`Engine::version`] says); with VT-x or SVM the CPU (where KVM
    /// emulates an instruction after an exit, that is not told apart).
    fn executor(&self, mode: Mode, cpl: u8) -> Executor {
        match (self.flavor, mode, cpl) {
            (Flavor::Pvm, Mode::Long64, 3) => Executor::Hardware,
            (Flavor::Pvm, _, _) => Executor::Emulator,
            _ => Executor::Hardware,
        }
    }

    fn run(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        if image.mode.is_protected() && image.supervisor.cpl != 0 && !image.has_exit_stubs() {
            return Observation::outcome_only(
                Outcome::NotSupported(format!(
                    "kvm: supervisor at cpl {} in mode {}: ring compression runs on kvm in long-mode \
                     images only (16- and 32-bit handlers at cpl {} have no exit: a HLT raises #GP, \
                     and an MMIO write would go through a data segment the test may have changed)",
                    image.supervisor.cpl, image.mode, image.supervisor.cpl
                )),
                SystemState::default(),
            );
        }
        if let Err(why) = self.mode_supported(image.mode, image.config) {
            return Observation::outcome_only(Outcome::NotSupported(why), SystemState::default());
        }
        self.run_checked(image, side, test)
    }
}

#[cfg(test)]
pub(super) mod tests;
