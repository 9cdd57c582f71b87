//! The KVM engine: one VM with one vCPU per engine (one engine per worker),
//! reused for every run. Every run sets all registers anew with
//! KVM_SET_SREGS / KVM_SET_MSRS / KVM_SET_REGS and restores the harness
//! pages an instruction may dirty; nothing runs the boot stubs.
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
//! A watchdog thread per engine sends a real-time signal to the vCPU thread
//! when a run overstays [`TIME_LIMIT`]; `KVM_RUN` then returns EINTR and the
//! run is a `Hang`.
//!
//! Besides the image's `restore_pages`, every page the guest dirtied (KVM's
//! dirty log) gets back its last written content before the next run; x87/SSE
//! state, debug registers, CR8 and (after an engine-level end) pending events
//! are reset too. The before-state is what KVM reports right after the
//! registers are set (read once per image and side).
//!
//! Not supported: a supervisor at CPL 1 or 3 (ring-compression variants):
//! its HLT entry stubs raise #GP instead of exiting, without end.
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
//!   exception frame is written at linear ESP, ignoring the SS base (an
//!   `EngineError` that says so).
//! - Real mode: INT 0x80 never leaves the instruction (a `Hang`).
//! - Guest CPL-0 code runs at about 0.6 µs per NOP, CPL-3 code natively
//!   (test `nop_slide_speed_per_cpl`); likely because the harness's supervisor does not follow the PVM ABI
//!   and KVM emulates it, in which case the CPL-0 observations are those of
//!   KVM's instruction emulator (inferred, not proven).
//! - Some results depend on the run before: `mov r, ds` (es, fs, gs) at
//!   CPL 3 reads the hardware selector, which KVM_SET_SREGS does not reset;
//!   the same scan with the runs in another order (image by image) makes 24
//!   of these records of the 64-bit catalog `nondeterministic`.
//!
//! There was a batch path (many CPL-3 cases per KVM_RUN through a ring-0
//! runtime in a second memory slot; removed, git history keeps it): on
//! `kvm_pvm` guest CPL-0 code runs in KVM's instruction emulator, and
//! batched CPL-3 cases ran at about 380 cases/s against 10,700 single
//! runs/s (bench `kvm_batch`, 256 NOP cases).

use super::{Engine, EngineError};
use crate::machine::{entry, GuestImage, Prepared, SegDesc, CODE, MEM_SIZE, PAGE, SENTINEL};
use crate::machine::{Setup, Variant};
use crate::mode::{Config, Mode};
use crate::observe::{
    Observation, Outcome, Segment, Side, SystemState, TableReg, TransferKind, UserState,
    SYS_FLAGS_MASK, USER_FLAGS_MASK,
};
use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Wall-clock limit of one run; a run still inside the guest then is a `Hang`.
pub const TIME_LIMIT: Duration = Duration::from_millis(100);
/// Most port-I/O exits one run may take before it counts as a hang.
const IO_EXIT_LIMIT: usize = 4096;
/// Vectors whose exceptions push an error code.
const ERROR_CODE_VECTORS: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

/// Which KVM implementation /dev/kvm is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// VT-x (`kvm_intel`).
    Intel,
    /// SVM (`kvm_amd`).
    Amd,
    /// PVM (`kvm_pvm`): software virtualization, the guest supervisor runs in
    /// hardware user mode.
    Pvm,
    Unknown,
}

impl Flavor {
    /// The kernel module's name (`unknown` if none of the three is loaded).
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Intel => "kvm_intel",
            Flavor::Amd => "kvm_amd",
            Flavor::Pvm => "kvm_pvm",
            Flavor::Unknown => "unknown",
        }
    }

    /// Detects the flavor from the loaded modules.
    pub fn detect() -> Flavor {
        for (m, f) in [
            ("kvm_pvm", Flavor::Pvm),
            ("kvm_intel", Flavor::Intel),
            ("kvm_amd", Flavor::Amd),
        ] {
            if Path::new("/sys/module").join(m).exists() {
                return f;
            }
        }
        Flavor::Unknown
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn kvm_err(action: &'static str) -> impl Fn(vmm_sys_util::errno::Error) -> EngineError {
    move |e| EngineError::Kvm {
        action,
        error: e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Guest memory

/// An anonymous private mapping of `MEM_SIZE` bytes, the guest's physical memory.
struct GuestMemory {
    ptr: *mut u8,
    len: usize,
}

impl GuestMemory {
    fn new(len: usize) -> Result<GuestMemory, EngineError> {
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(EngineError::Kvm {
                action: "map guest memory",
                error: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(GuestMemory { ptr: p.cast(), len })
    }

    fn slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes owned by
        // `self` (unmapped only in Drop). The guest may write it while a
        // vCPU runs, but runs happen only inside `&mut self` methods of the
        // engine, never while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn read(&self, phys: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(phys).ok()?;
        self.slice().get(start..start.checked_add(len)?)
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`; the VM
        // that used it as a memory slot is dropped before (field order of
        // `KvmEngine`: `vcpu` and `vm` come first).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

// ---------------------------------------------------------------------------
// Watchdog

/// The host page size (the granule of KVM's dirty log).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => PAGE as usize,
    }
}

/// The real-time signal the watchdog sends to interrupt KVM_RUN.
fn watchdog_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 3
}

extern "C" fn on_watchdog_signal(
    _num: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // Nothing to do: delivering the signal makes KVM_RUN return EINTR.
}

static SIGNAL_SETUP: Once = Once::new();
static SIGNAL_SETUP_RESULT: Mutex<Option<String>> = Mutex::new(None);

/// Installs the no-op handler once per process (sigaction is per process).
/// SA_RESTART keeps other system calls of the vCPU thread from failing with
/// EINTR when a late signal arrives; KVM_RUN returns EINTR regardless.
fn install_signal_handler() -> Result<(), EngineError> {
    SIGNAL_SETUP.call_once(|| {
        let num = watchdog_signal();
        let err = match vmm_sys_util::signal::validate_signal_num(num) {
            Err(e) => Some(e.to_string()),
            Ok(()) => {
                // SAFETY: `sigaction` is plain data; an all-zero value is a
                // valid empty action that is filled in below.
                let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
                act.sa_sigaction = on_watchdog_signal as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                // SAFETY: `act` is a fully initialized action whose handler
                // is an `extern "C"` function that does nothing (so it is
                // async-signal-safe); the old action is not asked for.
                let r = unsafe {
                    libc::sigemptyset(&raw mut act.sa_mask);
                    libc::sigaction(num, &raw const act, std::ptr::null_mut())
                };
                (r != 0).then(|| std::io::Error::last_os_error().to_string())
            }
        };
        if let (Some(e), Ok(mut r)) = (err, SIGNAL_SETUP_RESULT.lock()) {
            *r = Some(e);
        }
    });
    match SIGNAL_SETUP_RESULT.lock().ok().and_then(|r| r.clone()) {
        Some(e) => Err(EngineError::Kvm {
            action: "install the watchdog signal handler",
            error: e,
        }),
        None => Ok(()),
    }
}

#[derive(Default)]
struct WatchState {
    /// Deadline and the thread running the vCPU, while a run is under way.
    armed: Option<(Instant, libc::pthread_t)>,
    quit: bool,
}

type WatchShared = Arc<(Mutex<WatchState>, Condvar)>;

/// A thread that signals the vCPU thread while a run is past its deadline
/// (repeatedly, so a signal that arrives just before KVM_RUN enters the
/// guest is followed by another).
struct Watchdog {
    shared: WatchShared,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn new() -> Result<Watchdog, EngineError> {
        install_signal_handler()?;
        let shared: WatchShared = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kvm-watchdog".into())
            .spawn(move || Watchdog::serve(&s))
            .map_err(|e| EngineError::Kvm {
                action: "start the watchdog thread",
                error: e.to_string(),
            })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    fn serve(shared: &WatchShared) {
        let (lock, cv) = &**shared;
        let Ok(mut st) = lock.lock() else { return };
        loop {
            if st.quit {
                return;
            }
            let wait = match st.armed {
                None => None,
                Some((deadline, thread)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        // SAFETY: `thread` is the vCPU thread, which armed
                        // the watchdog and disarms it (under this lock)
                        // before it leaves the run, so it is alive; the
                        // signal has a handler installed for the process.
                        unsafe {
                            libc::pthread_kill(thread, watchdog_signal());
                        }
                        Some(Duration::from_millis(5))
                    } else {
                        Some(deadline - now)
                    }
                }
            };
            st = match wait {
                None => match cv.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                },
                Some(d) => match cv.wait_timeout(st, d) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                },
            };
        }
    }

    fn set(&self, armed: Option<(Instant, libc::pthread_t)>) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut st) = lock.lock() {
            st.armed = armed;
        }
        cv.notify_all();
    }

    fn arm(&self, deadline: Instant) {
        thread_local! {
            static UNBLOCKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        // The vCPU thread must not block the signal, or KVM_RUN never sees it.
        UNBLOCKED.with(|u| {
            if !u.get() {
                let _ = vmm_sys_util::signal::unblock_signal(watchdog_signal());
                u.set(true);
            }
        });
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.set(Some((deadline, me)));
    }

    fn disarm(&self) {
        self.set(None);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut st) = lock.lock() {
            st.armed = None;
            st.quit = true;
        }
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The engine

type ImageKey = (Mode, Config, Variant);

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

/// The KVM engine: one VM, one vCPU, `MEM_SIZE` bytes of guest memory.
pub struct KvmEngine {
    // Field order matters for Drop: the vCPU and the VM go before the memory.
    vcpu: VcpuFd,
    _vm: VmFd,
    _kvm: Kvm,
    mem: GuestMemory,
    /// Guest memory as the last image left it (to write only changed pages).
    loaded: Vec<u8>,
    loaded_key: Option<ImageKey>,
    api: i32,
    flavor: Flavor,
    watchdog: Watchdog,
    /// Per mode and configuration: whether a NOP at CPL 0 completes in its
    /// base image (`Err`: why the mode is not supported here).
    modes: HashMap<(Mode, Config), Result<(), String>>,
    /// The before-state KVM reported for an image and side (it is the same
    /// for every run: all of it is set anew from the image).
    befores: HashMap<(ImageKey, Side), SystemState>,
    /// Whether KVM logs the pages the guest dirties (then every one of them
    /// is restored, not only the image's `restore_pages`).
    dirty_log: bool,
    /// The last run ended at engine level: clear pending events first.
    reset_events: bool,
    /// Whether KVM offers the guest CR4.UMIP (CPUID.7.0:ECX bit 2 of the
    /// supported CPUID), in hardware or emulated.
    umip: bool,
}

impl KvmEngine {
    /// Whether /dev/kvm can be used, and which flavor it is; the error says
    /// what is wrong and how to fix it.
    pub fn availability() -> Result<Flavor, String> {
        let path = device_path();
        let name = path.display();
        if !path.exists() {
            return Err(format!(
                "{name} does not exist: load kvm_intel, kvm_amd or kvm_pvm (modprobe), \
                 or enable virtualization in the firmware or for this VM"
            ));
        }
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(_) => Ok(Flavor::detect()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
                "permission denied opening {name}: add your user to the kvm group or run as root"
            )),
            Err(e) => Err(format!("cannot open {name} read/write: {e}")),
        }
    }

    /// Creates the VM, its memory and its vCPU.
    pub fn new() -> Result<KvmEngine, EngineError> {
        let flavor = KvmEngine::availability().map_err(EngineError::KvmUnavailable)?;
        let path = std::ffi::CString::new(device_path().as_os_str().as_encoded_bytes())
            .map_err(|e| EngineError::KvmUnavailable(format!("bad device path: {e}")))?;
        let kvm = Kvm::new_with_path(&path).map_err(kvm_err("open the KVM device"))?;
        let api = kvm.get_api_version();
        let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        let mem = GuestMemory::new(MEM_SIZE as usize)?;
        let mut region = kvm_userspace_memory_region {
            slot: 0,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE,
            userspace_addr: mem.ptr as u64,
        };
        // SAFETY: the region is the live mapping owned by `mem`, which the
        // engine keeps until after the VM is dropped (field order).
        let mut dirty_log = unsafe { vm.set_user_memory_region(region) }.is_ok();
        if !dirty_log {
            region.flags = 0;
            // SAFETY: as above.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(kvm_err("set the guest memory region"))?;
        }
        dirty_log = dirty_log && vm.get_dirty_log(0, MEM_SIZE as usize).is_ok();
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("create a vCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get the supported CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        let umip = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == 7 && e.index == 0 && e.ecx & (1 << 2) != 0);
        let watchdog = Watchdog::new()?;
        Ok(KvmEngine {
            vcpu,
            _vm: vm,
            _kvm: kvm,
            mem,
            loaded: vec![0; MEM_SIZE as usize],
            loaded_key: None,
            api,
            flavor,
            watchdog,
            modes: HashMap::new(),
            befores: HashMap::new(),
            dirty_log,
            reset_events: false,
            umip,
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

    /// Undoes the guest's own writes of the last run (pages KVM logged as
    /// dirty get back what the engine last wrote there).
    fn undo_guest_writes(&mut self) {
        if !self.dirty_log {
            return;
        }
        let Ok(bitmap) = self._vm.get_dirty_log(0, MEM_SIZE as usize) else {
            // Without the log, restore_pages still covers the harness pages.
            self.dirty_log = false;
            return;
        };
        let host_page = page_size();
        let guest = self.mem.slice_mut();
        for (w, bits) in bitmap.iter().enumerate() {
            let mut bits = *bits;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let start = (w * 64 + b) * host_page;
                let end = (start + host_page).min(guest.len());
                if start < end {
                    guest[start..end].copy_from_slice(&self.loaded[start..end]);
                }
            }
        }
    }

    /// Makes guest memory equal to the image's, writing only changed pages.
    fn load(&mut self, image: &GuestImage) {
        let key = (image.mode, image.config, image.variant);
        if self.loaded_key == Some(key) {
            return;
        }
        let guest = self.mem.slice_mut();
        for ((new, old), g) in image
            .memory
            .chunks(PAGE as usize)
            .zip(self.loaded.chunks_mut(PAGE as usize))
            .zip(guest.chunks_mut(PAGE as usize))
        {
            if new != old {
                g.copy_from_slice(new);
                old.copy_from_slice(new);
            }
        }
        self.loaded_key = Some(key);
    }

    /// Restores the pages an instruction may dirty and writes the test's own.
    fn restore(&mut self, image: &GuestImage, test: &Prepared) {
        let guest = self.mem.slice_mut();
        for &page in &image.restore_pages {
            let p = page as usize;
            let bytes: &[u8] = if page == image.code_phys {
                &test.code_page
            } else if page == image.data_phys {
                &test.data_page
            } else if page == image.stack_phys {
                &test.stack_page
            } else {
                &image.memory[p..p + PAGE as usize]
            };
            if let Some(dst) = guest.get_mut(p..p + PAGE as usize) {
                dst.copy_from_slice(bytes);
            }
            self.loaded[p..p + PAGE as usize].copy_from_slice(bytes);
        }
    }

    /// Sets every register for the start of a run.
    fn set_state(
        &mut self,
        image: &GuestImage,
        side: Side,
        test: &Prepared,
    ) -> Result<(), EngineError> {
        let e = image.entry(side).ok_or(EngineError::Kvm {
            action: "pick the side",
            error: "no such side in this mode".into(),
        })?;
        let sys = &image.sys;
        if self.reset_events {
            self.vcpu
                .set_vcpu_events(&kvm_vcpu_events::default())
                .map_err(kvm_err("clear pending events"))?;
            self.reset_events = false;
        }
        // State no outcome records but an instruction may change: x87/SSE
        // and the debug registers start from their reset values.
        let fpu = kvm_fpu {
            fcw: 0x37F,
            mxcsr: 0x1F80,
            ..Default::default()
        };
        self.vcpu.set_fpu(&fpu).map_err(kvm_err("set fpu"))?;
        let dregs = kvm_debugregs {
            dr6: 0xFFFF_0FF0,
            dr7: 0x400,
            ..Default::default()
        };
        self.vcpu
            .set_debug_regs(&dregs)
            .map_err(kvm_err("set debug registers"))?;
        let mut sregs = self.vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
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
        self.vcpu.set_sregs(&sregs).map_err(kvm_err("set sregs"))?;
        if !sys.msrs.is_empty() {
            let entries: Vec<kvm_msr_entry> = sys
                .msrs
                .iter()
                .map(|&(index, data)| kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let msrs = Msrs::from_entries(&entries).map_err(|e| EngineError::Kvm {
                action: "build the MSR list",
                error: format!("{e:?}"),
            })?;
            let n = self.vcpu.set_msrs(&msrs).map_err(kvm_err("set msrs"))?;
            if n != entries.len() {
                return Err(EngineError::Kvm {
                    action: "set msrs",
                    error: format!(
                        "KVM refused MSR {:#x}",
                        entries.get(n).map(|m| m.index).unwrap_or(0)
                    ),
                });
            }
        }
        let g = &test.gprs;
        let regs = kvm_regs {
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
            rflags: e.rflags,
        };
        self.vcpu.set_regs(&regs).map_err(kvm_err("set regs"))?;
        Ok(())
    }

    /// R and M as KVM reports them now; `flags` overrides RFLAGS.
    fn system_state(
        &self,
        image: &GuestImage,
        sregs: &kvm_sregs,
        rflags: u64,
    ) -> Result<SystemState, EngineError> {
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
        Ok(SystemState {
            cpl: if image.mode.is_protected() {
                sregs.cs.dpl
            } else {
                0
            },
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
            msrs: self.read_msrs(image)?,
        })
    }

    fn read_msrs(&self, image: &GuestImage) -> Result<Vec<(u32, u64)>, EngineError> {
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
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| EngineError::Kvm {
            action: "build the MSR list",
            error: format!("{e:?}"),
        })?;
        let n = self.vcpu.get_msrs(&mut msrs).map_err(kvm_err("get msrs"))?;
        Ok(msrs
            .as_slice()
            .iter()
            .take(n)
            .map(|m| (m.index, m.data))
            .collect())
    }

    /// Physical address of a program-view offset in the harness's pages.
    fn phys(image: &GuestImage, off: u64) -> u64 {
        let page = off & !(PAGE - 1);
        let within = off - page;
        if page == crate::machine::CODE {
            image.code_phys + within
        } else if page == crate::machine::DATA {
            image.data_phys + within
        } else if page == crate::machine::STACK {
            image.stack_phys + within
        } else if image.mode.has_paging() {
            off
        } else {
            image.seg_base + off
        }
    }

    fn read_uint(&self, image: &GuestImage, off: u64, size: usize) -> Option<u64> {
        let b = self.mem.read(Self::phys(image, off), size)?;
        let mut v = [0u8; 8];
        v[..size].copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    }

    fn user_state(
        &self,
        image: &GuestImage,
        regs: &kvm_regs,
        rip: u64,
    ) -> Result<UserState, EngineError> {
        let long = image.mode == Mode::Long64;
        let mut gprs = [
            regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ];
        if !long {
            // As the mode sees them: 32-bit registers, no R8-R15.
            for (i, g) in gprs.iter_mut().enumerate() {
                *g = if i < 8 { *g & 0xFFFF_FFFF } else { 0 };
            }
        }
        let page = |phys: u64, what: &'static str| {
            self.mem
                .read(phys, PAGE as usize)
                .map(<[u8]>::to_vec)
                .ok_or(EngineError::Kvm {
                    action: what,
                    error: format!("{phys:#x} outside guest memory"),
                })
        };
        Ok(UserState {
            gprs,
            rip,
            flags: regs.rflags & USER_FLAGS_MASK,
            data: page(image.data_phys, "read the data page")?,
            stack: page(image.stack_phys, "read the stack page")?,
        })
    }

    /// Runs the vCPU until an exit that ends the run.
    fn execute(&mut self, image: &GuestImage, test: &Prepared) -> Result<Ending, EngineError> {
        let start = Instant::now();
        let deadline = start + TIME_LIMIT;
        self.watchdog.arm(deadline);
        let result = self.run_loop(deadline);
        self.watchdog.disarm();
        match result? {
            Exit::Hlt => self.on_hlt(image, test),
            Exit::Ended(o) => Ok(Ending::only(o)),
        }
    }

    fn run_loop(&mut self, deadline: Instant) -> Result<Exit, EngineError> {
        let mut io_exits = 0usize;
        loop {
            let exit = match self.vcpu.run() {
                Ok(e) => e,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if Instant::now() >= deadline {
                        return Ok(Exit::Ended(Outcome::Hang));
                    }
                    // A late watchdog signal from an earlier run: go on.
                    continue;
                }
                Err(e) => return Err(kvm_err("run the vCPU")(e)),
            };
            let ended = match exit {
                VcpuExit::Hlt => return Ok(Exit::Hlt),
                VcpuExit::IoIn(_, data) => {
                    data.fill(0xFF);
                    None
                }
                VcpuExit::IoOut(..) => None,
                VcpuExit::Shutdown => Some(Outcome::Shutdown),
                VcpuExit::MmioRead(a, _) => {
                    Some(Outcome::EngineError(format!("mmio read at {a:#x}")))
                }
                VcpuExit::MmioWrite(a, _) => {
                    Some(Outcome::EngineError(format!("mmio write at {a:#x}")))
                }
                VcpuExit::InternalError => {
                    Some(Outcome::EngineError("KVM_EXIT_INTERNAL_ERROR".into()))
                }
                VcpuExit::FailEntry(reason, cpu) => Some(Outcome::EngineError(format!(
                    "KVM_EXIT_FAIL_ENTRY (reason {reason:#x}, cpu {cpu})"
                ))),
                VcpuExit::Intr => {
                    if Instant::now() >= deadline {
                        Some(Outcome::Hang)
                    } else {
                        None
                    }
                }
                other => Some(Outcome::EngineError(format!("unexpected exit {other:?}"))),
            };
            if let Some(o) = ended {
                let o = match o {
                    Outcome::EngineError(t) => {
                        let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
                        Outcome::EngineError(format!("{t} at rip {rip:#x}"))
                    }
                    o => o,
                };
                return Ok(Exit::Ended(o));
            }
            io_exits += 1;
            if io_exits > IO_EXIT_LIMIT || Instant::now() >= deadline {
                return Ok(Exit::Ended(Outcome::Hang));
            }
        }
    }

    /// A HLT at CPL 0 exited: the sentinel, a landing pad, or an entry stub.
    fn on_hlt(&mut self, image: &GuestImage, test: &Prepared) -> Result<Ending, EngineError> {
        let regs = self.vcpu.get_regs().map_err(kvm_err("get regs"))?;
        let sregs = self.vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
        let rip = regs.rip;
        let hlt_at = rip.wrapping_sub(1);
        let code = CODE..CODE + PAGE;
        let cpl_now = if image.mode.is_protected() {
            sregs.cs.dpl
        } else {
            0
        };
        // The sentinel, or the instruction under test was itself HLT.
        if hlt_at == test.sentinel || (rip == test.sentinel && hlt_at == test.rip) {
            let after = self.system_state(image, &sregs, regs.rflags)?;
            let user = self.user_state(image, &regs, test.sentinel)?;
            return Ok(Ending {
                outcome: Outcome::Completed {
                    rip: test.sentinel,
                    at_sentinel: true,
                },
                after: Some(after),
                user: Some(user),
            });
        }
        if code.contains(&hlt_at) {
            let after = self.system_state(image, &sregs, regs.rflags)?;
            let user = self.user_state(image, &regs, hlt_at)?;
            return Ok(Ending {
                outcome: Outcome::Completed {
                    rip: hlt_at,
                    at_sentinel: false,
                },
                after: Some(after),
                user: Some(user),
            });
        }
        let kind = match hlt_at {
            entry::SYSCALL | entry::SYSENTER | entry::CALLGATE => entry_kind(hlt_at),
            _ => None,
        };
        if let Some(kind) = kind {
            let after = self.system_state(image, &sregs, regs.rflags)?;
            return Ok(Ending {
                outcome: Outcome::Transfer {
                    kind,
                    rip: hlt_at,
                    cpl: Some(cpl_now),
                },
                after: Some(after),
                user: None,
            });
        }
        let vectors_end = entry::VECTORS + 256 * entry::VECTOR_STRIDE;
        if !(entry::VECTORS..vectors_end).contains(&hlt_at)
            || !(hlt_at - entry::VECTORS).is_multiple_of(entry::VECTOR_STRIDE)
        {
            return Ok(Ending::only(Outcome::EngineError(format!(
                "hlt at unexpected rip {hlt_at:#x}"
            ))));
        }
        let vector = ((hlt_at - entry::VECTORS) / entry::VECTOR_STRIDE) as u8;
        self.on_vector(image, test, vector, hlt_at, &regs, &sregs)
    }

    /// An exception or interrupt arrived at the handler of `vector`.
    fn on_vector(
        &mut self,
        image: &GuestImage,
        test: &Prepared,
        vector: u8,
        handler: u64,
        regs: &kvm_regs,
        sregs: &kvm_sregs,
    ) -> Result<Ending, EngineError> {
        let (size, stack_mask) = match image.mode {
            Mode::Long64 => (8usize, u64::MAX),
            Mode::Real => (2, 0xFFFF),
            Mode::Prot16 | Mode::Prot32 => (
                4,
                if sregs.ss.db != 0 {
                    0xFFFF_FFFF
                } else {
                    0xFFFF
                },
            ),
        };
        let sp = regs.rsp & stack_mask;
        let slot = |i: usize| self.read_uint(image, sp + (i * size) as u64, size);
        let cpl_now = if image.mode.is_protected() {
            sregs.cs.dpl
        } else {
            0
        };
        // A software interrupt: the test is INT n / INT3 / INTO / INT1 for
        // this vector and the frame (no error code) returns after it.
        let soft = soft_interrupt_vector(&test.code_page, test.rip, image.mode) == Some(vector)
            && slot(0) == Some(test.sentinel);
        if soft {
            let after = self.system_state(image, sregs, regs.rflags)?;
            return Ok(Ending {
                outcome: Outcome::Transfer {
                    kind: TransferKind::Interrupt(vector),
                    rip: handler,
                    cpl: Some(cpl_now),
                },
                after: Some(after),
                user: None,
            });
        }
        let has_ec = image.mode.is_protected() && ERROR_CODE_VECTORS.contains(&vector);
        let first = usize::from(has_ec);
        let error_code = if has_ec {
            slot(0).map(|v| v as u32)
        } else {
            None
        };
        let (Some(frame_rip), Some(frame_cs), Some(frame_flags)) =
            (slot(first), slot(first + 1), slot(first + 2))
        else {
            return Ok(Ending::only(Outcome::EngineError(format!(
                "vector {vector}: exception frame at {sp:#x} outside guest memory"
            ))));
        };
        // No frame has a null CS. Seen on PVM: in 16-bit protected mode with
        // a nonzero SS base, the frame is written at linear ESP, ignoring
        // the SS base, so the handler's own view (SS:ESP) holds no frame.
        if frame_cs & 0xFFFC == 0 {
            let unbased = self
                .mem
                .read(sp, size * 3)
                .map(|b| b.iter().any(|&x| x != 0))
                .unwrap_or(false);
            return Ok(Ending::only(Outcome::EngineError(format!(
                "{}: vector {vector}: no exception frame at ss:{sp:#x} (ss base {:#x}){}",
                self.flavor,
                sregs.ss.base,
                if unbased && sregs.ss.base != 0 {
                    "; one was written at linear esp, without the ss base"
                } else {
                    ""
                }
            ))));
        }
        let (landed, arrived) = hlt_gp_end(test, vector, error_code, frame_rip);
        if !landed && arrived.is_none() {
            return Ok(Ending::only(Outcome::Trap {
                vector,
                error_code,
                rip: frame_rip,
            }));
        }
        // Rebuild the state at the HLT: the frame has RIP, CS, RFLAGS and
        // (with a privilege change, always here) RSP and SS.
        let cs_changed = (frame_cs as u16) & 3 != cpl_now as u16 || image.mode == Mode::Long64;
        let (frame_rsp, frame_ss) = if cs_changed {
            (slot(first + 3), slot(first + 4))
        } else {
            (None, None)
        };
        let mut at = *regs;
        at.rip = frame_rip;
        at.rflags = frame_flags;
        at.rsp = frame_rsp.unwrap_or(sp + ((first + 3) * size) as u64);
        let mut s = *sregs;
        s.cs.selector = frame_cs as u16;
        s.cs.dpl = (frame_cs & 3) as u8;
        if let Some(ss) = frame_ss {
            s.ss.selector = ss as u16;
            s.ss.dpl = (ss & 3) as u8;
        }
        let mut after = self.system_state(image, &s, frame_flags)?;
        // The caches of CS and SS at the HLT are not in the frame.
        after.segs[0].cache = None;
        if frame_ss.is_some() {
            after.segs[1].cache = None;
        }
        if let Some(kind) = arrived {
            return Ok(Ending {
                outcome: Outcome::Transfer {
                    kind,
                    rip: frame_rip,
                    cpl: Some((frame_cs & 3) as u8),
                },
                after: Some(after),
                user: None,
            });
        }
        let user = self.user_state(image, &at, frame_rip)?;
        Ok(Ending {
            outcome: Outcome::Completed {
                rip: frame_rip,
                at_sentinel: frame_rip == test.sentinel,
            },
            after: Some(after),
            user: Some(user),
        })
    }

    /// One run; every failure of KVM itself becomes `Outcome::EngineError`.
    fn run_checked(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        let fail = |e: EngineError, before: SystemState| {
            Observation::outcome_only(Outcome::EngineError(e.to_string()), before)
        };
        self.undo_guest_writes();
        self.load(image);
        self.restore(image, test);
        if let Err(e) = self.set_state(image, side, test) {
            self.reset_events = true;
            return fail(e, SystemState::default());
        }
        // The before-state is what KVM reported right after setting it
        // (the first time for this image and side; every run sets the same).
        let key = ((image.mode, image.config, image.variant), side);
        let before = match self.befores.get(&key) {
            Some(b) => b.clone(),
            None => {
                let read = self
                    .vcpu
                    .get_sregs()
                    .map_err(kvm_err("get sregs"))
                    .and_then(|s| Ok((s, self.vcpu.get_regs().map_err(kvm_err("get regs"))?)))
                    .and_then(|(s, r)| self.system_state(image, &s, r.rflags));
                match read {
                    Ok(b) => {
                        self.befores.insert(key, b.clone());
                        b
                    }
                    Err(e) => return fail(e, SystemState::default()),
                }
            }
        };
        let result = self.execute(image, test);
        if !matches!(&result, Ok(end) if !end.outcome.is_engine_level()) {
            self.reset_events = true;
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
                    baseline: None,
                    start: None,
                }
            }
            Err(e) => fail(e, before),
        }
    }
}

impl KvmEngine {
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
                         but neither with 2-level nor with PAE paging)"
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

enum Exit {
    Hlt,
    Ended(Outcome),
}

/// The kind of transfer that ends at a harness entry point, if `off` is one
/// (SYSCALL, SYSENTER, call gate, or the stub of an IDT vector).
fn entry_kind(off: u64) -> Option<TransferKind> {
    match off {
        entry::SYSCALL => Some(TransferKind::Syscall),
        entry::SYSENTER => Some(TransferKind::Sysenter),
        entry::CALLGATE => Some(TransferKind::CallGate),
        _ if (entry::VECTORS..entry::VECTORS + 256 * entry::VECTOR_STRIDE).contains(&off)
            && (off - entry::VECTORS).is_multiple_of(entry::VECTOR_STRIDE) =>
        {
            Some(TransferKind::Interrupt(
                ((off - entry::VECTORS) / entry::VECTOR_STRIDE) as u8,
            ))
        }
        _ => None,
    }
}

/// The vector a software-interrupt instruction at `rip` raises, if it is one
/// (INT n, INT3, INTO, INT1 after any legacy or REX prefixes).
/// What an exception with this frame means for a run: `(landed, arrived)`.
/// A HLT at CPL > 0 raises #GP(0) where it stands: at the sentinel or a
/// landing pad in the code page the run completed (`landed`); at a harness
/// entry point control arrived there at CPL > 0 (`arrived`; seen on PVM:
/// SYSCALL from CPL 3 jumps to LSTAR and stays at CPL 3). Neither: a trap.
pub(super) fn hlt_gp_end(
    test: &Prepared,
    vector: u8,
    error_code: Option<u32>,
    frame_rip: u64,
) -> (bool, Option<TransferKind>) {
    if vector != 13 || error_code != Some(0) {
        return (false, None);
    }
    let code_byte = (CODE..CODE + PAGE)
        .contains(&frame_rip)
        .then(|| test.code_page.get((frame_rip - CODE) as usize).copied())
        .flatten();
    let landed =
        frame_rip != test.rip && (frame_rip == test.sentinel || code_byte == Some(SENTINEL));
    (landed, entry_kind(frame_rip))
}

fn soft_interrupt_vector(code_page: &[u8], rip: u64, mode: Mode) -> Option<u8> {
    let mut i = rip.checked_sub(CODE)? as usize;
    for _ in 0..15 {
        let b = *code_page.get(i)?;
        match b {
            0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 | 0x2E | 0x36 | 0x3E | 0x26 | 0x64 | 0x65 => i += 1,
            0x40..=0x4F if mode == Mode::Long64 => i += 1,
            0xCD => return code_page.get(i + 1).copied(),
            0xCC => return Some(3),
            0xCE => return Some(4),
            0xF1 => return Some(1),
            _ => return None,
        }
    }
    None
}

/// A `kvm_segment` from a selector and a descriptor cache in VMX
/// access-rights layout.
fn kvm_seg(d: &SegDesc) -> kvm_segment {
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

impl Engine for KvmEngine {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn version(&self) -> String {
        format!("kvm api {}, flavor {}", self.api, self.flavor)
    }

    fn run(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        if image.mode.is_protected() && image.supervisor.cpl != 0 {
            return Observation::outcome_only(
                Outcome::NotSupported(format!(
                    "kvm: supervisor at cpl {}: the harness's HLT entry stubs only exit to KVM at cpl 0",
                    image.supervisor.cpl
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

/// The KVM device: `/dev/kvm`, or the path in `POPEK_KVM_DEVICE`.
pub fn device_path() -> std::path::PathBuf {
    std::env::var_os("POPEK_KVM_DEVICE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/dev/kvm"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Gpr, Setup, Sym};

    /// The engine, or `None` (test skipped) when KVM is not usable here;
    /// with POPEK_REQUIRE_KVM=1 a missing KVM fails the test instead.
    fn engine() -> Option<KvmEngine> {
        let reason = match KvmEngine::availability() {
            Ok(_) => match KvmEngine::new() {
                Ok(e) => return Some(e),
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

    fn run_on(
        e: &mut KvmEngine,
        mode: Mode,
        cfg: Config,
        v: Variant,
        side: Side,
        bytes: &[u8],
        setup: &Setup,
    ) -> Observation {
        let img = GuestImage::build(mode, cfg, v);
        let p = img.prepare(side, bytes, setup).unwrap();
        e.run(&img, side, &p)
    }
    fn base(e: &mut KvmEngine, mode: Mode, side: Side, bytes: &[u8], setup: &Setup) -> Observation {
        let cfg = Config::UMIP_OFF;
        run_on(e, mode, cfg, Variant::base(&cfg), side, bytes, setup)
    }
    use super::super::conformance::{completed, is_gp, NONE};

    fn flavor_is_pvm(e: &KvmEngine) -> bool {
        e.flavor() == Flavor::Pvm
    }

    #[test]
    fn open_gives_the_kvm_engine_with_its_flavor() {
        let Some(e) = engine() else { return };
        let v = e.version();
        assert!(v.starts_with("kvm api 12, flavor "), "{v}");
        assert!(v.ends_with(e.flavor().name()), "{v}");
        let opened = super::super::open(super::super::EngineKind::Kvm).unwrap();
        assert_eq!(opened.name(), "kvm");
        assert_eq!(
            super::super::availability(super::super::EngineKind::Kvm).unwrap(),
            v
        );
    }

    #[test]
    fn privileged_instructions_trap_at_cpl3_and_complete_at_cpl0() {
        let Some(mut e) = engine() else { return };
        for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64] {
            for (name, bytes, setup) in super::super::conformance::cpl0_only_cases(mode) {
                let bytes = bytes.as_slice();
                let u = base(&mut e, mode, Side::User, bytes, &setup);
                let s = base(&mut e, mode, Side::Supervisor, bytes, &setup);
                if mode == Mode::Prot32 && flavor_is_pvm(&e) {
                    // Measured on PVM: every 32-bit paged guest shuts down.
                    for o in [&u, &s] {
                        assert!(
                            matches!(o.outcome, Outcome::NotSupported(_)),
                            "{mode} {name}: {:?}",
                            o.outcome
                        );
                    }
                    continue;
                }
                assert!(is_gp(&u), "{mode} {name} at cpl3: {:?}", u.outcome);
                assert!(
                    matches!(u.outcome, Outcome::Trap { error_code: Some(0), rip, .. } if rip == crate::machine::TEST_RIP),
                    "{mode} {name}: #GP(0) at the instruction: {:?}",
                    u.outcome
                );
                assert!(completed(&s), "{mode} {name} at cpl0: {:?}", s.outcome);
            }
        }
    }

    #[test]
    fn popf_at_cpl3_leaves_if_and_iopl_alone() {
        let Some(mut e) = engine() else { return };
        for mode in [Mode::Prot16, Mode::Long64] {
            let (popf, setup) = super::super::conformance::popf_case(mode);
            let u = base(&mut e, mode, Side::User, &popf, &setup);
            assert!(completed(&u), "{mode}: {:?}", u.outcome);
            assert_eq!(
                u.after.as_ref().unwrap().sys_flags,
                u.before.sys_flags,
                "{mode}: IF and IOPL unchanged at cpl3"
            );
            let s = base(&mut e, mode, Side::Supervisor, &popf, &setup);
            assert!(completed(&s), "{mode}: {:?}", s.outcome);
            assert_eq!(
                s.after.as_ref().unwrap().sys_flags,
                (s.before.sys_flags ^ 0x3200) & SYS_FLAGS_MASK,
                "{mode}: cpl0 changes both"
            );
        }
    }

    #[test]
    fn umip_makes_descriptor_table_stores_trap_at_cpl3() {
        let Some(mut e) = engine() else { return };
        if !e.offers_umip() {
            println!("skipped: this KVM does not offer CR4.UMIP to its guests");
            return;
        }
        let cfg = Config::UMIP_ON;
        let cases: [(&str, &[u8]); 5] = [
            ("sgdt", &[0x0F, 0x01, 0x04, 0x25, 0x00, 0x81, 0x00, 0x00]),
            ("sidt", &[0x0F, 0x01, 0x0C, 0x25, 0x00, 0x81, 0x00, 0x00]),
            ("sldt", &[0x0F, 0x00, 0x04, 0x25, 0x00, 0x81, 0x00, 0x00]),
            ("smsw", &[0x0F, 0x01, 0xE0]),
            ("str", &[0x0F, 0x00, 0xC8]),
        ];
        for (name, bytes) in cases {
            let u = run_on(
                &mut e,
                Mode::Long64,
                cfg,
                Variant::base(&cfg),
                Side::User,
                bytes,
                &NONE,
            );
            assert!(is_gp(&u), "{name} at cpl3 with UMIP: {:?}", u.outcome);
            let s = run_on(
                &mut e,
                Mode::Long64,
                cfg,
                Variant::base(&cfg),
                Side::Supervisor,
                bytes,
                &NONE,
            );
            assert!(completed(&s), "{name} at cpl0 with UMIP: {:?}", s.outcome);
        }
    }

    #[test]
    fn add_gives_identical_results_at_both_cpls() {
        let Some(mut e) = engine() else { return };
        for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64] {
            let add = [0x01, 0xD8]; // add eax, ebx (ax, bx in 16-bit)
            let s = base(&mut e, mode, Side::Supervisor, &add, &NONE);
            let u = base(&mut e, mode, Side::User, &add, &NONE);
            if mode == Mode::Prot32 && flavor_is_pvm(&e) {
                assert!(
                    matches!(s.outcome, Outcome::NotSupported(_)),
                    "{:?}",
                    s.outcome
                );
                continue;
            }
            assert!(
                completed(&s) && completed(&u),
                "{mode}: {:?} {:?}",
                s.outcome,
                u.outcome
            );
            assert_eq!(s.user, u.user, "{mode}");
            assert_eq!(
                s.user.unwrap().gprs[0] & 0xFFFF,
                (0x11 + crate::machine::DATA + 0x180) & 0xFFFF
            );
        }
    }

    #[test]
    fn a_jump_to_itself_ends_as_a_hang_by_the_watchdog() {
        let Some(mut e) = engine() else { return };
        for side in Side::BOTH {
            let t = Instant::now();
            let o = base(&mut e, Mode::Long64, side, &[0xEB, 0xFE], &NONE);
            assert_eq!(o.outcome, Outcome::Hang, "{side}");
            assert!(t.elapsed() < TIME_LIMIT * 10, "{side}: {:?}", t.elapsed());
        }
        // The engine still works after a hang.
        let o = base(&mut e, Mode::Long64, Side::User, &[0x90], &NONE);
        assert!(completed(&o), "{:?}", o.outcome);
    }

    #[test]
    fn rewritten_code_and_data_are_restored_between_runs() {
        let Some(mut e) = engine() else { return };
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        for (bytes, want) in [
            (&[0x0F, 0x0B][..], None),
            (&[0xB0, 0x01][..], Some(1)),
            (&[0xB0, 0x02][..], Some(2)),
            // mov byte [rbx], al: dirties the data page.
            (&[0x88, 0x03][..], Some(0x11)),
            (&[0x90][..], Some(0x11)),
        ] {
            let p = img.prepare(Side::User, bytes, &NONE).unwrap();
            let o = e.run(&img, Side::User, &p);
            match want {
                None => assert!(
                    matches!(o.outcome, Outcome::Trap { vector: 6, .. }),
                    "{:?}",
                    o.outcome
                ),
                Some(al) => {
                    let u = o.user.unwrap();
                    assert_eq!(u.gprs[0] & 0xFF, al);
                    let want_data = if bytes == [0x88, 0x03] {
                        0x11
                    } else {
                        crate::machine::data_fill(0x180)
                    };
                    assert_eq!(u.data[0x180], want_data, "{bytes:02x?}");
                }
            }
        }
    }

    /// The hosts these PVM quirks were measured on: kvm_pvm on AMD EPYC
    /// and on Intel Xeon (see README, "KVM engine"). Elsewhere the test is
    /// skipped with the reason.
    fn pvm_quirk_host(e: &KvmEngine) -> Result<(), String> {
        let vendor = crate::host::cpu_vendor();
        if !flavor_is_pvm(e) {
            return Err(format!("flavor {} is not kvm_pvm", e.flavor()));
        }
        if vendor == crate::host::Vendor::Other {
            return Err(format!(
                "kvm_pvm on a {vendor} CPU: these quirks were measured on AMD and Intel hosts only"
            ));
        }
        Ok(())
    }

    #[test]
    fn measured_pvm_deviations_are_recorded_as_they_are() {
        let Some(mut e) = engine() else { return };
        if let Err(why) = pvm_quirk_host(&e) {
            println!("skipped: {why}");
            return;
        }
        // mov ax, cs at CPL 3 in 64-bit mode reads the host's user selector.
        let u = base(&mut e, Mode::Long64, Side::User, &[0x8C, 0xC8], &NONE);
        assert!(completed(&u), "{:?}", u.outcome);
        assert_eq!(u.before.segs[0].selector, crate::machine::sel::UCODE);
        assert_eq!(u.user.unwrap().gprs[0] & 0xFFFF, 0x33);
        // INT n at CPL 0 ends in KVM_EXIT_INTERNAL_ERROR.
        let s = base(&mut e, Mode::Long64, Side::Supervisor, &[0xCD, 0x80], &NONE);
        assert!(
            matches!(&s.outcome, Outcome::EngineError(t) if t.contains("INTERNAL_ERROR")),
            "{:?}",
            s.outcome
        );
        // INT3 at CPL 3 is delivered to the ring-0 handler.
        let u = base(&mut e, Mode::Long64, Side::User, &[0xCC], &NONE);
        assert!(
            matches!(
                u.outcome,
                Outcome::Transfer {
                    kind: TransferKind::Interrupt(3),
                    cpl: Some(0),
                    ..
                }
            ),
            "{:?}",
            u.outcome
        );
        // INT 0x80 at CPL 3 (a DPL-3 gate) raises #UD instead.
        let u = base(&mut e, Mode::Long64, Side::User, &[0xCD, 0x80], &NONE);
        assert!(
            matches!(u.outcome, Outcome::Trap { vector: 6, .. }),
            "{:?}",
            u.outcome
        );
        // PUSHFQ at CPL 3 pushes IF = 1 although the guest runs with IF = 0
        // (at CPL 0 it pushes IF = 0).
        let cfg = Config::UMIP_OFF;
        let if0 = Variant {
            if_flag: false,
            ..Variant::base(&cfg)
        };
        for (side, want) in [(Side::Supervisor, 0x2), (Side::User, 0x202)] {
            let o = run_on(&mut e, Mode::Long64, cfg, if0, side, &[0x9C], &NONE);
            assert!(completed(&o), "{side}: {:?}", o.outcome);
            assert_eq!(o.before.sys_flags, 0, "{side}");
            let st = o.user.unwrap().stack;
            let pushed = u64::from_le_bytes(st[0x7F8..0x800].try_into().unwrap());
            assert_eq!(pushed, want, "{side}: pushfq pushed {pushed:#x}");
        }
        // At CPL 0 these end in KVM_EXIT_INTERNAL_ERROR; at CPL 3 in 64-bit
        // mode they run (XGETBV: #GP, CR4.OSXSAVE is clear), in 16-bit
        // mode they raise #UD.
        let cases: [(&str, &[u8], &str); 5] = [
            ("lar", &[0x0F, 0x02, 0xC1], "completed"),
            ("lsl", &[0x0F, 0x03, 0xC1], "completed"),
            ("verr", &[0x0F, 0x00, 0xE1], "completed"),
            ("rdtscp", &[0x0F, 0x01, 0xF9], "completed"),
            ("xgetbv", &[0x0F, 0x01, 0xD0], "#GP(0x0)"),
        ];
        for (name, bytes, user64) in cases {
            for mode in [Mode::Long64, Mode::Prot16] {
                let s = base(&mut e, mode, Side::Supervisor, bytes, &NONE);
                assert!(
                    matches!(&s.outcome, Outcome::EngineError(t) if t.contains("INTERNAL_ERROR")),
                    "{mode} {name} cpl0: {:?}",
                    s.outcome
                );
                let u = base(&mut e, mode, Side::User, bytes, &NONE);
                let want = if mode == Mode::Long64 { user64 } else { "#UD" };
                assert_eq!(u.outcome.short(), want, "{mode} {name} cpl3");
            }
        }
        // INT1 (F1) differs between PVM hosts: at CPL 3 in 64-bit mode it
        // reached the vector-1 handler on AMD EPYC and Intel Xeon hosts, and
        // was reported as #DB on an earlier host. Either way vector 1 is
        // raised and recorded as it happened; at CPL 0 the emulator lacks it.
        for mode in [Mode::Long64, Mode::Prot16] {
            let s = base(&mut e, mode, Side::Supervisor, &[0xF1], &NONE);
            assert!(
                matches!(&s.outcome, Outcome::EngineError(t) if t.contains("INTERNAL_ERROR")),
                "{mode} int1 cpl0: {:?}",
                s.outcome
            );
        }
        let u = base(&mut e, Mode::Long64, Side::User, &[0xF1], &NONE);
        assert!(
            matches!(
                u.outcome,
                Outcome::Trap { vector: 1, .. }
                    | Outcome::Transfer {
                        kind: TransferKind::Interrupt(1),
                        ..
                    }
            ),
            "64 int1 cpl3: {:?}",
            u.outcome
        );
        let u = base(&mut e, Mode::Prot16, Side::User, &[0xF1], &NONE);
        assert_eq!(u.outcome.short(), "#UD", "16 int1 cpl3");
        let s = base(&mut e, Mode::Long64, Side::Supervisor, &[0x0F, 0x34], &NONE);
        assert!(
            matches!(&s.outcome, Outcome::EngineError(t) if t.contains("INTERNAL_ERROR")),
            "sysenter cpl0: {:?}",
            s.outcome
        );
        for bytes in [&[0xCD, 0x80][..], &[0xCC]] {
            let u = base(&mut e, Mode::Prot16, Side::User, bytes, &NONE);
            assert_eq!(u.outcome.short(), "#UD", "16-bit cpl3 {bytes:02x?}");
        }
        // Real mode: INT 0x80 never leaves the instruction (INT 0x21 and
        // INT 3 are delivered through the IVT).
        let o = base(&mut e, Mode::Real, Side::Supervisor, &[0xCD, 0x80], &NONE);
        assert_eq!(o.outcome, Outcome::Hang);
        let o = base(&mut e, Mode::Real, Side::Supervisor, &[0xCD, 0x21], &NONE);
        assert!(
            matches!(
                o.outcome,
                Outcome::Transfer {
                    kind: TransferKind::Interrupt(0x21),
                    cpl: Some(0),
                    ..
                }
            ),
            "{:?}",
            o.outcome
        );
    }

    #[test]
    fn every_variant_boots_on_both_sides_and_runs_a_nop() {
        let Some(mut e) = engine() else { return };
        for mode in Mode::ALL {
            for cfg in Config::DEFAULTS {
                for v in Variant::matrix(mode, &cfg) {
                    let img = GuestImage::build(mode, cfg, v);
                    for side in Side::BOTH {
                        let Some(p) = img.prepare(side, &[0x90], &NONE) else {
                            continue;
                        };
                        let o = e.run(&img, side, &p);
                        let what = format!("{mode} {cfg} {} {side}", v.name(&cfg));
                        let pvm = flavor_is_pvm(&e);
                        let pvm32 = mode == Mode::Prot32 && pvm;
                        if pvm && mode == Mode::Prot16 && v.seg_shifted && side == Side::User {
                            // Measured on PVM: the #GP frame of the sentinel
                            // is pushed at linear ESP, ignoring the SS base.
                            assert!(
                                matches!(&o.outcome, Outcome::EngineError(t) if t.contains("without the ss base")),
                                "{what}: {:?}",
                                o.outcome
                            );
                            continue;
                        }
                        if pvm32 || v.supervisor_dpl != 0 {
                            // PVM shuts down 32-bit paged guests; ring
                            // compression has no HLT exit at CPL > 0.
                            assert!(
                                matches!(o.outcome, Outcome::NotSupported(_)),
                                "{what}: {:?}",
                                o.outcome
                            );
                            continue;
                        }
                        assert!(completed(&o), "{what}: {:?}", o.outcome);
                        let want = img.system_state(side).unwrap();
                        assert_eq!(o.before.cpl, want.cpl, "{what}");
                        assert_eq!(o.before.gdtr.base, want.gdtr.base, "{what}");
                        assert_eq!(o.before.cr0, want.cr0, "{what}");
                        assert_eq!(o.before.sys_flags, want.sys_flags, "{what}");
                        for i in 0..6 {
                            assert_eq!(
                                o.before.segs[i].selector, want.segs[i].selector,
                                "{what} seg {i}"
                            );
                        }
                        let iopl = (o.before.sys_flags >> 12) & 3;
                        if pvm && mode == Mode::Long64 && side == Side::User && iopl != 0 {
                            // Measured on PVM: the RFLAGS in the #GP frame of
                            // the sentinel (the after-state at CPL 3) has
                            // IOPL 0 although the guest runs with IOPL 3.
                            let after = o.after.as_ref().unwrap();
                            assert_eq!(after.sys_flags, o.before.sys_flags & !(3 << 12), "{what}");
                            assert_eq!(o.changed_r().len(), 1, "{what}: {:?}", o.changed_r());
                        } else {
                            assert!(
                                o.changed_r().is_empty(),
                                "{what}: nop changed {:?}",
                                o.changed_r()
                            );
                        }
                        let u = o.user.unwrap();
                        assert_eq!(u.data[5], crate::machine::data_fill(5), "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn entry_points_port_io_and_page_faults() {
        let Some(mut e) = engine() else { return };
        let m = Mode::Long64;
        // SYSCALL at CPL 3 arrives at the LSTAR entry: at CPL 0 on hardware;
        // measured on PVM: at CPL 3 (CS stays 0x2b, RSP unchanged), so the
        // entry's HLT raises #GP there.
        let o = base(&mut e, m, Side::User, &[0x0F, 0x05], &NONE);
        let want_cpl = if flavor_is_pvm(&e) { 3 } else { 0 };
        assert_eq!(
            o.outcome,
            Outcome::Transfer {
                kind: TransferKind::Syscall,
                rip: entry::SYSCALL,
                cpl: Some(want_cpl)
            }
        );
        assert_eq!(o.after.unwrap().cpl, want_cpl);
        // IN at CPL 0 reaches KVM, which answers 0xff.
        let o = base(&mut e, m, Side::Supervisor, &[0xEC], &NONE);
        assert!(completed(&o), "{:?}", o.outcome);
        assert_eq!(o.user.unwrap().gprs[0] & 0xFF, 0xFF);
        // OUT at CPL 3 with IOPL 0 and no I/O bitmap: #GP(0).
        let o = base(&mut e, m, Side::User, &[0xEE], &NONE);
        assert!(is_gp(&o), "{:?}", o.outcome);
        // A read of the unmapped null page at CPL 3: #PF, user read, not present.
        let o = base(
            &mut e,
            m,
            Side::User,
            &[0x8B, 0x04, 0x25, 0, 0, 0, 0],
            &NONE,
        );
        assert_eq!(
            o.outcome,
            Outcome::Trap {
                vector: 14,
                error_code: Some(4),
                rip: crate::machine::TEST_RIP
            }
        );
        // A far call through the call gate at CPL 3 (16-bit mode, call
        // ptr16:16) arrives at CPL 0 on hardware; measured on PVM: #UD at
        // the instruction.
        let o = base(
            &mut e,
            Mode::Prot16,
            Side::User,
            &[0x9A, 0, 0, 0, 0],
            &Setup {
                patches: vec![crate::machine::Patch {
                    offset: 3,
                    size: 2,
                    value: Sym::Sel(crate::machine::SelRole::CallGate),
                }],
                ..Setup::default()
            },
        );
        if flavor_is_pvm(&e) {
            assert_eq!(
                o.outcome,
                Outcome::Trap {
                    vector: 6,
                    error_code: None,
                    rip: crate::machine::TEST_RIP
                }
            );
        } else {
            assert!(
                matches!(
                    o.outcome,
                    Outcome::Transfer {
                        kind: TransferKind::CallGate,
                        cpl: Some(0),
                        ..
                    }
                ),
                "{:?}",
                o.outcome
            );
        }
    }

    #[test]
    fn guest_writes_outside_the_harness_pages_are_undone() {
        let Some(mut e) = engine() else { return };
        if !e.dirty_log {
            println!("skipped: KVM does not log dirty pages here");
            return;
        }
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        let at = 0x20000usize;
        assert!(!img.restore_pages.contains(&(at as u64)));
        let store = [0x88, 0x04, 0x25, 0x00, 0x00, 0x02, 0x00]; // mov [0x20000], al
        let load = [0x8A, 0x04, 0x25, 0x00, 0x00, 0x02, 0x00]; // mov al, [0x20000]
        let setup = Setup {
            regs: vec![(Gpr::Rax, Sym::Imm(0x5A))],
            ..Setup::default()
        };
        let p = img.prepare(Side::Supervisor, &store, &setup).unwrap();
        assert!(completed(&e.run(&img, Side::Supervisor, &p)));
        assert_eq!(e.mem.slice()[at], 0x5A, "the store reached guest memory");
        let p = img.prepare(Side::Supervisor, &load, &NONE).unwrap();
        let o = e.run(&img, Side::Supervisor, &p);
        assert!(completed(&o), "{:?}", o.outcome);
        assert_eq!(o.user.unwrap().gprs[0] & 0xFF, img.memory[at] as u64);
    }

    #[test]
    #[ignore]
    fn nop_runs_per_second() {
        let Some(mut e) = engine() else { return };
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        for side in Side::BOTH {
            let p = img.prepare(side, &[0x90], &NONE).unwrap();
            let n = 20_000;
            let t = Instant::now();
            for _ in 0..n {
                let o = e.run(&img, side, &p);
                assert!(completed(&o));
            }
            let rate = n as f64 / t.elapsed().as_secs_f64();
            println!("{side}: {rate:.0} NOP runs/s ({})", e.version());
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
                let p = img.prepare(side, &vec![0x90; len], &NONE).unwrap();
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
}
