//! The Unicorn engine: one Unicorn instance per processor mode, reused with
//! context restore (a new instance costs ~300 µs, a restore ~0.05 µs).
//!
//! CPL 3 is entered by the harness's boot stub, which IRETs from ring 0
//! inside the emulation; the context at the test's first byte is saved once
//! per image and side. Unicorn does not deliver exceptions through the guest
//! IDT: its interrupt hook gets the vector only (no error code), so traps
//! carry `error_code: None`, and software interrupts, SYSCALL and SYSENTER
//! are recorded as transfers that were not delivered (`cpl: None`).

use super::{Engine, EngineError};
use crate::machine::image::msr;
use crate::machine::landing::{landing, Landing, Stop};
use crate::machine::Variant;
use crate::machine::{GuestImage, Prepared, CODE, DATA, PAGE, STACK};
use crate::mode::{Config, Mode};
use crate::observe::{
    Observation, Outcome, Segment, Side, SystemState, TableReg, TransferKind, UserState,
    SYS_FLAGS_MASK, USER_FLAGS_MASK,
};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use unicorn_engine::{
    uc_error, uc_x86_mmr, uc_x86_msr, Arch, Context, HookType, Mode as UcMode, Prot,
    RegisterX86 as R, Unicorn, X86CpuModel, X86Insn,
};

/// Most instructions a run may execute before it counts as a hang (a jump to
/// itself, a REP with a wild count).
pub const INSN_LIMIT: usize = 256;
/// Wall-clock limit of one run, a safety net behind the count, enforced by
/// the engine's watchdog thread (Unicorn's own timeout starts a thread per
/// run, which would cost more than the run).
pub const TIME_LIMIT: Duration = Duration::from_millis(200);
/// How often the watchdog looks at the running emulation.
const WATCH_PERIOD: Duration = Duration::from_millis(20);

/// A Unicorn handle the watchdog may stop.
#[derive(Clone, Copy)]
struct StopHandle(*mut unicorn_engine::uc_engine);

// SAFETY: the watchdog uses the handle only to call `uc_emu_stop`, which
// Unicorn supports from another thread while `uc_emu_start` runs (its own
// timeout thread does exactly that), and only while armed: `Watchdog::arm`
// is called right before `uc_emu_start` and `disarm` right after, under the
// same lock the watchdog holds when it stops, so the handle is never used
// while no emulation runs or after its instance is gone.
unsafe impl Send for StopHandle {}

#[derive(Default)]
struct WatchState {
    armed: Option<(Instant, StopHandle)>,
    fired: bool,
    quit: bool,
}

/// One thread per engine that stops an emulation running past its deadline.
struct Watchdog {
    shared: Arc<(Mutex<WatchState>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    limit: Duration,
}

impl Watchdog {
    fn new(limit: Duration) -> Result<Watchdog, EngineError> {
        let shared = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("unicorn-watchdog".into())
            .spawn(move || {
                let (lock, wake) = &*s;
                let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !st.quit {
                    if let Some((deadline, handle)) = st.armed {
                        if Instant::now() >= deadline {
                            // SAFETY: see `StopHandle`: armed means an
                            // emulation of this live instance is running, and
                            // `disarm` cannot run while this lock is held.
                            unsafe { unicorn_engine::uc_emu_stop(handle.0) };
                            st.fired = true;
                            st.armed = None;
                        }
                    }
                    st = wake
                        .wait_timeout(st, WATCH_PERIOD)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            })
            .map_err(|e| EngineError::Unicorn {
                action: "start the watchdog thread",
                error: e.to_string(),
            })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
            limit,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arm(&self, handle: StopHandle) {
        let mut st = self.state();
        st.armed = Some((Instant::now() + self.limit, handle));
        st.fired = false;
    }

    /// Disarms; whether the watchdog stopped the run.
    fn disarm(&self) -> bool {
        let mut st = self.state();
        st.armed = None;
        st.fired
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state().quit = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the hooks saw during a run.
#[derive(Default, Debug, Clone, Copy)]
struct Events {
    /// (vector, RIP at the hook).
    intr: Option<(u32, u64)>,
    syscall: bool,
    sysenter: bool,
    /// Linear addresses of the pages a run writes as a matter of course
    /// (code, data, stack), restored before the next run when written.
    program_pages: [u64; 3],
    /// Their physical pages, in the same order.
    program_phys: [u64; 3],
    /// Physical pages among `program_phys` the run wrote (bit n: page n).
    written: u64,
    /// A write landed elsewhere: the next run restores all of memory.
    stray_write: bool,
}

/// Pages of guest memory, one bit each in a `u64`.
const PAGES: usize = (crate::machine::MEM_SIZE / PAGE) as usize;
const _: () = assert!(PAGES <= 64);

/// Bytes of a page compared (and written) at once when a page is brought
/// back to what it must hold.
const RESTORE_CHUNK: usize = 256;

type ImageKey = (Mode, Config, Variant);

struct Machine {
    uc: Unicorn<'static, Events>,
    /// Physical memory as last written, to write only the pages that change.
    loaded: Vec<u8>,
    loaded_key: Option<ImageKey>,
    /// Context at the test's first byte, and the system state read there.
    contexts: HashMap<(ImageKey, Side), Result<(Context, SystemState), String>>,
    /// The CPU state right after creation, to boot every image from.
    reset: Context,
    /// A run wrote outside the pages restored before every run: guest
    /// memory may differ from the image anywhere.
    memory_suspect: bool,
    /// Pages (bit n: physical page n) that guest code wrote since they were
    /// last written from `loaded`. Outside these, and unless
    /// `memory_suspect`, guest memory equals `loaded` (every guest store is
    /// seen by the write hook: a store to a program page sets its bit, any
    /// other store makes memory suspect).
    dirty: u64,
}

/// The Unicorn engine.
pub struct UnicornEngine {
    machines: HashMap<Mode, Machine>,
    watchdog: Watchdog,
    insn_limit: usize,
}

fn uc_err(action: &'static str) -> impl Fn(uc_error) -> EngineError {
    move |e| EngineError::Unicorn {
        action,
        error: format!("{e:?}"),
    }
}

impl UnicornEngine {
    /// Creates the engine; Unicorn instances are made per mode on first use.
    pub fn new() -> Result<Self, EngineError> {
        UnicornEngine::with_limits(INSN_LIMIT, TIME_LIMIT)
    }

    /// An engine with other limits: at most `insns` instructions per run (0:
    /// no count) and `time` of wall clock.
    pub fn with_limits(insns: usize, time: Duration) -> Result<Self, EngineError> {
        Ok(UnicornEngine {
            machines: HashMap::new(),
            watchdog: Watchdog::new(time)?,
            insn_limit: insns,
        })
    }
}

impl Machine {
    fn new(mode: Mode) -> Result<Machine, EngineError> {
        let uc_mode = match mode {
            Mode::Real | Mode::Prot16 => UcMode::MODE_16,
            Mode::Prot32 => UcMode::MODE_32,
            Mode::Long64 => UcMode::MODE_64,
        };
        let mut uc = Unicorn::new_with_data(Arch::X86, uc_mode, Events::default())
            .map_err(uc_err("create a Unicorn instance"))?;
        // A recent CPU model so that CPUID advertises what TCG implements.
        let model = X86CpuModel::HASWELL;
        let _ = uc.ctl_set_cpu_model(model as i32);
        uc.mem_map(0, crate::machine::MEM_SIZE, Prot::ALL)
            .map_err(uc_err("map guest memory"))?;
        uc.add_intr_hook(|uc, intno| {
            let rip = uc.reg_read(R::EIP).unwrap_or(0);
            let ev = uc.get_data_mut();
            if ev.intr.is_none() {
                ev.intr = Some((intno, rip));
            }
            let _ = uc.emu_stop();
        })
        .map_err(uc_err("add the interrupt hook"))?;
        uc.add_insn_sys_hook(X86Insn::SYSCALL, 1, 0, |uc| {
            uc.get_data_mut().syscall = true;
            let _ = uc.emu_stop();
        })
        .map_err(uc_err("add the SYSCALL hook"))?;
        uc.add_insn_sys_hook(X86Insn::SYSENTER, 1, 0, |uc| {
            uc.get_data_mut().sysenter = true;
            let _ = uc.emu_stop();
        })
        .map_err(uc_err("add the SYSENTER hook"))?;
        // Every store outside the program's own pages is noted, so that the
        // next run starts from the image again (KVM uses its dirty log).
        uc.add_mem_hook(HookType::MEM_WRITE, 0, u64::MAX, |uc, _, addr, size, _| {
            let ev = uc.get_data_mut();
            let first = addr & !(PAGE - 1);
            let last = (addr + size.max(1) as u64 - 1) & !(PAGE - 1);
            if !ev.program_pages.contains(&first) || !ev.program_pages.contains(&last) {
                ev.stray_write = true;
            }
            for (lin, phys) in ev.program_pages.into_iter().zip(ev.program_phys) {
                if lin == first || lin == last {
                    ev.written |= 1 << (phys / PAGE);
                }
            }
            true
        })
        .map_err(uc_err("add the memory write hook"))?;
        let reset = uc
            .context_init()
            .map_err(uc_err("save the reset context"))?;
        Ok(Machine {
            uc,
            loaded: vec![0; crate::machine::MEM_SIZE as usize],
            loaded_key: None,
            contexts: HashMap::new(),
            reset,
            memory_suspect: false,
            dirty: 0,
        })
    }

    /// Makes guest memory equal to the image's, writing only changed pages.
    fn load(&mut self, image: &GuestImage) -> Result<(), EngineError> {
        let key = (image.mode, image.config, image.variant);
        if self.loaded_key == Some(key) && !self.memory_suspect {
            return Ok(());
        }
        let all = std::mem::take(&mut self.memory_suspect);
        for (i, (new, old)) in image
            .memory
            .chunks(PAGE as usize)
            .zip(self.loaded.chunks_mut(PAGE as usize))
            .enumerate()
        {
            if all || new != old || self.dirty & (1 << i) != 0 {
                self.uc
                    .mem_write(i as u64 * PAGE, new)
                    .map_err(uc_err("write guest memory"))?;
                old.copy_from_slice(new);
                self.dirty &= !(1 << i);
            }
        }
        let _ = self.uc.ctl_flush_tb();
        let _ = self.uc.ctl_flush_tlb();
        self.loaded_key = Some(key);
        Ok(())
    }

    /// Writes a register that Unicorn's C API takes as a struct: a table
    /// register or system segment (`uc_x86_mmr`) or an MSR (`uc_x86_msr`).
    fn write_struct<T: Copy>(
        &mut self,
        reg: R,
        v: &T,
        action: &'static str,
    ) -> Result<(), EngineError> {
        // SAFETY: this module calls it only with GDTR/IDTR/LDTR/TR and a
        // `uc_x86_mmr`, or MSR and a `uc_x86_msr`, the repr(C) types the C API
        // reads for those registers; the pointer is valid for the whole call
        // and the handle belongs to the live instance owned by `self`.
        let err = unsafe {
            unicorn_engine::uc_reg_write(self.uc.get_handle(), reg as i32, (v as *const T).cast())
        };
        if err == uc_error::OK {
            Ok(())
        } else {
            Err(EngineError::Unicorn {
                action,
                error: format!("{err:?}"),
            })
        }
    }

    /// Reads such a register into `v` (for an MSR, `v.rid` names it).
    fn read_struct<T: Copy>(&self, reg: R, v: &mut T) {
        // SAFETY: as in `write_struct`: the C API writes (and for an MSR
        // first reads) one struct of the right type through the pointer,
        // which points at a live, aligned value for the whole call.
        let _ = unsafe {
            unicorn_engine::uc_reg_read(self.uc.get_handle(), reg as i32, (v as *mut T).cast())
        };
    }

    fn write_mmr(&mut self, reg: R, v: uc_x86_mmr) -> Result<(), EngineError> {
        self.write_struct(reg, &v, "write a table register")
    }

    fn read_mmr(&self, reg: R) -> uc_x86_mmr {
        let mut v = uc_x86_mmr {
            selector: 0,
            base: 0,
            limit: 0,
            flags: 0,
        };
        self.read_struct(reg, &mut v);
        v
    }

    fn write_msr(&mut self, rid: u32, value: u64) -> Result<(), EngineError> {
        self.write_struct(R::MSR, &uc_x86_msr { rid, value }, "write an MSR")
    }

    fn read_msr(&self, rid: u32) -> u64 {
        let mut v = uc_x86_msr { rid, value: 0 };
        self.read_struct(R::MSR, &mut v);
        v.value
    }

    /// Boots a side of an image and saves the context at the test's first byte.
    fn boot(&mut self, image: &GuestImage, side: Side) -> Result<(Context, SystemState), String> {
        let entry = image.entry(side).ok_or("no such side in this mode")?;
        let uc_fail = |action: &str| {
            let action = action.to_string();
            move |e: uc_error| format!("{action}: {e:?}")
        };
        self.uc
            .context_restore(&self.reset)
            .map_err(uc_fail("restore the reset context"))?;
        let sys = &image.sys;
        let long = image.mode == Mode::Long64;
        if image.mode.is_protected() {
            if image.mode == Mode::Prot16 {
                // Still in real mode: give CS the base the boot stub runs at
                // (emu_start in 16-bit mode takes a CS:IP-style address).
                self.uc
                    .reg_write(R::CS, image.seg_base >> 4)
                    .map_err(uc_fail("write CS"))?;
            }
            self.uc
                .reg_write(R::CR4, sys.cr4)
                .map_err(uc_fail("write CR4"))?;
            self.uc
                .reg_write(R::CR3, sys.cr3)
                .map_err(uc_fail("write CR3"))?;
            if long {
                self.write_msr(0xC000_0080, sys.efer)
                    .map_err(|e| e.to_string())?;
            }
            self.uc
                .reg_write(R::CR0, sys.cr0)
                .map_err(uc_fail("write CR0"))?;
            let mmr = |(base, limit): (u64, u16)| uc_x86_mmr {
                selector: 0,
                base,
                limit: limit as u32,
                flags: 0,
            };
            self.write_mmr(R::GDTR, mmr(sys.gdtr))
                .map_err(|e| e.to_string())?;
            self.write_mmr(R::IDTR, mmr(sys.idtr))
                .map_err(|e| e.to_string())?;
            let seg = |d: &crate::machine::SegDesc| uc_x86_mmr {
                selector: d.selector,
                base: d.base,
                limit: d.limit,
                flags: (d.attr as u32) << 8,
            };
            self.write_mmr(R::LDTR, seg(&sys.ldtr))
                .map_err(|e| e.to_string())?;
            // QEMU keeps TR's cached type "available" (9) and marks only the
            // GDT descriptor busy; with a busy type in the cache its TSS
            // lookups abort the process. KVM wants the architectural busy type.
            let mut tr = sys.tr;
            if tr.attr & 0xF == 0xB {
                tr.attr = (tr.attr & !0xF) | 0x9;
            }
            self.write_mmr(R::TR, seg(&tr)).map_err(|e| e.to_string())?;
            for &(rid, value) in &sys.msrs {
                self.write_msr(rid, value).map_err(|e| e.to_string())?;
            }
            let sp = if long { R::RSP } else { R::ESP };
            self.uc
                .reg_write(sp, crate::machine::KSTACK_TOP)
                .map_err(uc_fail("write RSP"))?;
            let _ = self.uc.ctl_flush_tlb();
            *self.uc.get_data_mut() = Events::default();
            // The stop at the test's first byte is compiled into translated
            // blocks: drop every block a test run left (they have no stop
            // there), or the boot would run into the previous test.
            self.uc
                .ctl_flush_tb()
                .map_err(uc_fail("flush the translation cache"))?;
            let start = image.boot_linear(side);
            let until = image.linear(entry.rip);
            let r = self.uc.emu_start(start, until, 0, 64);
            let rip = self.uc.reg_read(R::EIP).unwrap_or(0);
            let ev = *self.uc.get_data();
            // The stub's pushes land outside the program's pages (and its
            // events name no program pages): restore all of memory.
            self.memory_suspect = true;
            if r.is_err() || rip != entry.rip || ev.intr.is_some() {
                return Err(format!(
                    "boot stub did not reach the test (result {r:?}, rip {rip:#x}, interrupt {:?})",
                    ev.intr
                ));
            }
        } else {
            let s = entry.segs[0].selector as u64;
            self.uc
                .reg_write(R::CR0, sys.cr0)
                .map_err(uc_fail("write CR0"))?;
            for r in [R::CS, R::SS, R::DS, R::ES, R::FS, R::GS] {
                self.uc
                    .reg_write(r, s)
                    .map_err(uc_fail("write a segment register"))?;
            }
            self.uc
                .reg_write(R::ESP, entry.rsp)
                .map_err(uc_fail("write ESP"))?;
            self.uc
                .reg_write(R::EFLAGS, entry.rflags)
                .map_err(uc_fail("write EFLAGS"))?;
            self.uc
                .reg_write(R::EIP, entry.rip)
                .map_err(uc_fail("write EIP"))?;
        }
        let mut ctx = self
            .uc
            .context_alloc()
            .map_err(uc_fail("allocate a context"))?;
        self.uc
            .context_save(&mut ctx)
            .map_err(uc_fail("save the context"))?;
        let state = self.system_state(image);
        if image.mode.is_protected() && state.cpl != entry.cpl {
            return Err(format!(
                "boot reached cpl {} instead of {}",
                state.cpl, entry.cpl
            ));
        }
        Ok((ctx, state))
    }

    fn system_state(&self, image: &GuestImage) -> SystemState {
        let rd = |r: R| self.uc.reg_read(r).unwrap_or(0);
        let long = image.mode == Mode::Long64;
        let mut segs = [Segment::default(); 6];
        for (s, r) in segs
            .iter_mut()
            .zip([R::CS, R::SS, R::DS, R::ES, R::FS, R::GS])
        {
            s.selector = rd(r) as u16;
        }
        let t = |m: uc_x86_mmr| TableReg {
            selector: m.selector,
            base: m.base,
            limit: m.limit,
        };
        let mut msrs: Vec<(u32, u64)> = image
            .sys
            .msrs
            .iter()
            .map(|&(rid, _)| (rid, self.read_msr(rid)))
            .collect();
        if long {
            // FS/GS bases are read from Unicorn's registers, which track the MSRs.
            for (rid, v) in msrs.iter_mut() {
                if *rid == msr::FS_BASE {
                    *v = rd(R::FS_BASE);
                } else if *rid == msr::GS_BASE {
                    *v = rd(R::GS_BASE);
                }
            }
        }
        SystemState {
            cpl: if image.mode.is_protected() {
                (segs[0].selector & 3) as u8
            } else {
                0
            },
            segs,
            gdtr: t(self.read_mmr(R::GDTR)),
            idtr: t(self.read_mmr(R::IDTR)),
            ldtr: t(self.read_mmr(R::LDTR)),
            tr: t(self.read_mmr(R::TR)),
            cr0: rd(R::CR0),
            cr3: rd(R::CR3),
            cr4: rd(R::CR4),
            efer: if long { self.read_msr(0xC000_0080) } else { 0 },
            sys_flags: rd(R::EFLAGS) & SYS_FLAGS_MASK,
            msrs,
        }
    }

    fn user_state(&self, image: &GuestImage) -> Result<UserState, EngineError> {
        let regs: [R; 16] = if image.mode == Mode::Long64 {
            [
                R::RAX,
                R::RCX,
                R::RDX,
                R::RBX,
                R::RSP,
                R::RBP,
                R::RSI,
                R::RDI,
                R::R8,
                R::R9,
                R::R10,
                R::R11,
                R::R12,
                R::R13,
                R::R14,
                R::R15,
            ]
        } else {
            [
                R::EAX,
                R::ECX,
                R::EDX,
                R::EBX,
                R::ESP,
                R::EBP,
                R::ESI,
                R::EDI,
                R::INVALID,
                R::INVALID,
                R::INVALID,
                R::INVALID,
                R::INVALID,
                R::INVALID,
                R::INVALID,
                R::INVALID,
            ]
        };
        let mut gprs = [0u64; 16];
        for (g, r) in gprs.iter_mut().zip(regs) {
            if r != R::INVALID {
                *g = self
                    .uc
                    .reg_read(r)
                    .map_err(uc_err("read a general register"))?;
            }
        }
        let mut data = vec![0u8; PAGE as usize];
        let mut stack = vec![0u8; PAGE as usize];
        self.uc
            .mem_read(image.data_phys, &mut data)
            .map_err(uc_err("read the data page"))?;
        self.uc
            .mem_read(image.stack_phys, &mut stack)
            .map_err(uc_err("read the stack page"))?;
        Ok(UserState {
            gprs,
            rip: self.uc.reg_read(R::EIP).map_err(uc_err("read RIP"))?,
            flags: self.uc.reg_read(R::EFLAGS).map_err(uc_err("read EFLAGS"))? & USER_FLAGS_MASK,
            data,
            stack,
        })
    }

    fn run(
        &mut self,
        image: &GuestImage,
        side: Side,
        test: &Prepared,
        watchdog: &Watchdog,
        insn_limit: usize,
    ) -> Observation {
        let key = (image.mode, image.config, image.variant);
        if let Err(e) = self.load(image) {
            return Observation::outcome_only(
                Outcome::EngineError(e.to_string()),
                SystemState::default(),
            );
        }
        if !self.contexts.contains_key(&(key, side)) {
            let booted = self.boot(image, side);
            self.contexts.insert((key, side), booted);
            // Put back what the boot stub wrote.
            if let Err(e) = self.load(image) {
                return Observation::outcome_only(
                    Outcome::EngineError(e.to_string()),
                    SystemState::default(),
                );
            }
        }
        // Take the context out while the run borrows the instance mutably.
        let (ctx, before) = match self.contexts.remove(&(key, side)) {
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                let o = Outcome::EngineError(format!("boot: {e}"));
                self.contexts.insert((key, side), Err(e));
                return Observation::outcome_only(o, SystemState::default());
            }
            None => {
                return Observation::outcome_only(
                    Outcome::EngineError("no context".into()),
                    SystemState::default(),
                )
            }
        };
        let result = self.execute(image, test, (&ctx, &before), watchdog, insn_limit);
        let before_kept = before.clone();
        self.contexts.insert((key, side), Ok((ctx, before_kept)));
        match result {
            Ok((outcome, done)) => {
                let (after, user) = if done {
                    let user = match &outcome {
                        // Where the run ended, not where Unicorn's RIP stopped
                        // (one past a HLT that stopped it at CPL 0).
                        Outcome::Completed { rip, .. } => {
                            self.user_state(image).ok().map(|mut u| {
                                u.rip = *rip;
                                u
                            })
                        }
                        _ => None,
                    };
                    (Some(self.system_state(image)), user)
                } else {
                    (None, None)
                };
                Observation {
                    outcome,
                    before,
                    after,
                    user,
                }
            }
            Err(e) => Observation::outcome_only(Outcome::EngineError(e.to_string()), before),
        }
    }

    /// Writes the test, restores the context, runs, and turns what happened
    /// into an outcome. Returns whether the after-state is meaningful.
    fn execute(
        &mut self,
        image: &GuestImage,
        test: &Prepared,
        (ctx, before): (&Context, &SystemState),
        watchdog: &Watchdog,
        insn_limit: usize,
    ) -> Result<(Outcome, bool), EngineError> {
        // Restore the pages an instruction may dirty, then write the test's
        // own: only what differs from guest memory. Outside the pages the
        // last runs wrote (`dirty`), guest memory equals `loaded`, and
        // `load` left `loaded` equal to the image: the harness pages among
        // them (stacks, tables) hold the image's bytes already, since any
        // guest store to them made memory suspect and `load` rewrote it.
        for (page, bytes) in [
            (image.code_phys, &test.code_page),
            (image.data_phys, &test.data_page),
            (image.stack_phys, &test.stack_page),
        ] {
            let p = page as usize;
            let bit = 1u64 << (page / PAGE);
            let old = &mut self.loaded[p..p + PAGE as usize];
            if self.dirty & bit != 0 {
                self.uc
                    .mem_write(page, bytes)
                    .map_err(uc_err("write a test page"))?;
                old.copy_from_slice(bytes);
                self.dirty &= !bit;
                continue;
            }
            if old == &bytes[..] {
                continue;
            }
            for (k, (new, was)) in bytes
                .chunks(RESTORE_CHUNK)
                .zip(old.chunks_mut(RESTORE_CHUNK))
                .enumerate()
            {
                if new != was {
                    self.uc
                        .mem_write(page + (k * RESTORE_CHUNK) as u64, new)
                        .map_err(uc_err("write a test page"))?;
                    was.copy_from_slice(new);
                }
            }
        }
        self.uc
            .context_restore(ctx)
            .map_err(uc_err("restore the saved context"))?;
        // Unicorn's writes do not invalidate translated code. Remove the code
        // page's blocks only now: Unicorn finds them through the page tables
        // of the current context, which must be this image's.
        let code_lin = image.linear(CODE);
        self.uc
            .ctl_remove_cache(code_lin, code_lin + PAGE)
            .map_err(uc_err("remove cached code"))?;
        let long = image.mode == Mode::Long64;
        let regs: [R; 8] = [
            R::RAX,
            R::RCX,
            R::RDX,
            R::RBX,
            R::RSP,
            R::RBP,
            R::RSI,
            R::RDI,
        ];
        let regs32: [R; 8] = [
            R::EAX,
            R::ECX,
            R::EDX,
            R::EBX,
            R::ESP,
            R::EBP,
            R::ESI,
            R::EDI,
        ];
        for i in 0..8 {
            let r = if long { regs[i] } else { regs32[i] };
            self.uc
                .reg_write(r, test.gprs[i])
                .map_err(uc_err("write a general register"))?;
        }
        if long {
            let hi = [R::R8, R::R9, R::R10, R::R11, R::R12, R::R13, R::R14, R::R15];
            for (i, r) in hi.into_iter().enumerate() {
                self.uc
                    .reg_write(r, test.gprs[8 + i])
                    .map_err(uc_err("write a general register"))?;
            }
        }
        *self.uc.get_data_mut() = Events {
            program_pages: [image.linear(CODE), image.linear(DATA), image.linear(STACK)],
            program_phys: [image.code_phys, image.data_phys, image.stack_phys],
            ..Events::default()
        };
        // emu_start sets (E/R)IP from `begin`; in 16-bit mode it subtracts CS*16.
        let begin = if matches!(image.mode, Mode::Real | Mode::Prot16) {
            let cs = self.uc.reg_read(R::CS).unwrap_or(0);
            test.rip.wrapping_add(cs * 16)
        } else {
            test.rip
        };
        let until = image.linear(test.sentinel);
        watchdog.arm(StopHandle(self.uc.get_handle()));
        let result = self.uc.emu_start(begin, until, 0, insn_limit);
        let fired = watchdog.disarm();
        self.memory_suspect |= self.uc.get_data().stray_write;
        self.dirty |= self.uc.get_data().written;
        // The write hook tells program pages from others by linear address;
        // with paging changed (CR0, CR3, CR4) a program page's linear
        // address may have reached another physical page.
        let paging = [R::CR0, R::CR3, R::CR4].map(|r| self.uc.reg_read(r).unwrap_or(0));
        if paging != [before.cr0, before.cr3, before.cr4] {
            self.memory_suspect = true;
        }
        if fired {
            return Ok((Outcome::Hang, false));
        }
        let ev = *self.uc.get_data();
        let rip = self.uc.reg_read(R::EIP).unwrap_or(0);
        let cpl_now = if image.mode.is_protected() {
            (self.uc.reg_read(R::CS).unwrap_or(0) & 3) as u8
        } else {
            0
        };
        // Where a HLT stopped the run: the machine's landing rule.
        let landed = |stop: Stop| -> Option<Outcome> {
            landing(test, stop).map(|l| match l {
                Landing::Completed { rip, at_sentinel } => Outcome::Completed { rip, at_sentinel },
                Landing::Transfer(kind, rip) => Outcome::Transfer {
                    kind,
                    rip,
                    cpl: Some(cpl_now),
                },
            })
        };
        if ev.syscall || ev.sysenter {
            let kind = if ev.syscall {
                TransferKind::Syscall
            } else {
                TransferKind::Sysenter
            };
            return Ok((
                Outcome::Transfer {
                    kind,
                    rip,
                    cpl: None,
                },
                false,
            ));
        }
        if let Some((vector, at)) = ev.intr {
            let vector = vector.min(255) as u8;
            // A HLT reached at CPL > 0 raises #GP there.
            if vector == 13 {
                if let Some(o) = landed(Stop::Faulted { at }) {
                    return Ok((o, true));
                }
            }
            // Software interrupts leave RIP after the instruction; faults at it.
            if at == test.sentinel && at != test.rip {
                return Ok((
                    Outcome::Transfer {
                        kind: TransferKind::Interrupt(vector),
                        rip: at,
                        cpl: None,
                    },
                    false,
                ));
            }
            return Ok((
                Outcome::Trap {
                    vector,
                    error_code: None,
                    rip: at,
                },
                false,
            ));
        }
        match result {
            Ok(()) => {
                if rip == test.sentinel {
                    return Ok((
                        Outcome::Completed {
                            rip,
                            at_sentinel: true,
                        },
                        true,
                    ));
                }
                // A HLT at CPL 0 stops the emulation with RIP after it. The
                // instruction limit stops it with RIP at the next instruction
                // to run: a loop through the test itself ends at TEST_RIP.
                if rip == test.rip {
                    return Ok((Outcome::Hang, false));
                }
                if let Some(o) = landed(Stop::Ran { next: rip }) {
                    return Ok((o, true));
                }
                // No landing: the limit stopped it, or a HLT the harness did
                // not place for a landing (the ring-0 page's filler), which
                // Unicorn's stop does not tell apart from the limit.
                Ok((Outcome::Hang, false))
            }
            Err(uc_error::INSN_INVALID) => Ok((
                Outcome::Trap {
                    vector: 6,
                    error_code: None,
                    rip,
                },
                false,
            )),
            Err(e) => Ok((
                Outcome::EngineError(format!("emu_start: {e:?} at rip {rip:#x}")),
                false,
            )),
        }
    }
}

impl Engine for UnicornEngine {
    fn name(&self) -> &'static str {
        "unicorn"
    }
    fn version(&self) -> String {
        let (mut major, mut minor) = (0u32, 0u32);
        // SAFETY: `uc_version` only writes the two integers through the
        // pointers, which point at live locals.
        let _ = unsafe { unicorn_engine::uc_version(&raw mut major, &raw mut minor) };
        format!("unicorn {major}.{minor}")
    }
    fn run(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        let machine = match self.machines.entry(image.mode) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match Machine::new(image.mode) {
                Ok(m) => v.insert(m),
                Err(e) => {
                    return Observation::outcome_only(
                        Outcome::EngineError(e.to_string()),
                        SystemState::default(),
                    )
                }
            },
        };
        machine.run(image, side, test, &self.watchdog, self.insn_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Setup, DATA, GDT, MOVED_TABLES, STACK, STACK_PTR};
    use crate::observe::Outcome;

    fn run(
        mode: Mode,
        cfg: Config,
        v: Variant,
        side: Side,
        bytes: &[u8],
        setup: &Setup,
    ) -> Observation {
        let mut e = UnicornEngine::new().unwrap();
        let img = GuestImage::build(mode, cfg, v);
        let p = img.prepare(side, bytes, setup).unwrap();
        e.run(&img, side, &p)
    }
    fn base(mode: Mode, side: Side, bytes: &[u8], setup: &Setup) -> Observation {
        let cfg = Config::UMIP_OFF;
        run(mode, cfg, Variant::base(&cfg), side, bytes, setup)
    }
    use super::super::conformance::{completed, is_gp, NONE};

    #[test]
    fn privileged_instructions_trap_at_cpl3_and_complete_at_cpl0() {
        for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64] {
            for (name, bytes, setup) in super::super::conformance::cpl0_only_cases(mode) {
                let u = base(mode, Side::User, &bytes, &setup);
                let s = base(mode, Side::Supervisor, &bytes, &setup);
                assert!(is_gp(&u), "{mode} {name} at cpl3: {:?}", u.outcome);
                assert!(completed(&s), "{mode} {name} at cpl0: {:?}", s.outcome);
            }
        }
    }

    #[test]
    fn popfd_at_cpl3_leaves_if_and_iopl_alone() {
        super::super::conformance::check_popf(&mut UnicornEngine::new().unwrap(), Mode::Prot32);
    }

    #[test]
    fn push_cs_reveals_the_cpl() {
        let u = base(Mode::Prot32, Side::User, &[0x0E], &NONE);
        assert!(completed(&u), "{:?}", u.outcome);
        let user = u.user.unwrap();
        let off = (STACK_PTR - 4 - STACK) as usize;
        let pushed = u16::from_le_bytes([user.stack[off], user.stack[off + 1]]);
        assert_eq!(pushed & 3, 3, "RPL 3 at cpl3: {pushed:#x}");
        let s = base(Mode::Prot32, Side::Supervisor, &[0x0E], &NONE)
            .user
            .unwrap();
        assert_eq!(u16::from_le_bytes([s.stack[off], s.stack[off + 1]]) & 3, 0);
    }

    #[test]
    fn sgdt_stores_the_gdt_base_and_sees_relocation() {
        let cfg = Config::UMIP_OFF;
        let sgdt = [0x0F, 0x01, 0x05, 0x00, 0x81, 0, 0]; // sgdt [0x8100]
        let stored = |v: Variant| {
            let o = run(Mode::Prot32, cfg, v, Side::User, &sgdt, &NONE);
            assert!(completed(&o), "{:?}", o.outcome);
            let d = o.user.unwrap().data;
            u32::from_le_bytes(d[0x102..0x106].try_into().unwrap()) as u64
        };
        assert_eq!(stored(Variant::base(&cfg)), GDT);
        assert_eq!(
            stored(Variant {
                tables_moved: true,
                ..Variant::base(&cfg)
            }),
            MOVED_TABLES
        );
        let _ = DATA;
    }

    #[test]
    fn add_gives_identical_results_at_both_cpls() {
        let mut e = UnicornEngine::new().unwrap();
        for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64] {
            super::super::conformance::check_add_is_the_same_at_both_cpls(&mut e, mode);
        }
    }

    #[test]
    fn the_time_limit_stops_what_the_count_does_not() {
        // No instruction count: only the watchdog can end `jmp $`.
        let mut e = UnicornEngine::with_limits(0, Duration::from_millis(30)).unwrap();
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        let p = img.prepare(Side::User, &[0xEB, 0xFE], &NONE).unwrap();
        let t = Instant::now();
        assert_eq!(e.run(&img, Side::User, &p).outcome, Outcome::Hang);
        assert!(t.elapsed() < Duration::from_secs(5));
        // The engine goes on working after a stopped run.
        let p = img.prepare(Side::User, &[0x90], &NONE).unwrap();
        assert!(completed(&e.run(&img, Side::User, &p)));
    }

    #[test]
    fn a_jump_to_itself_ends_by_the_limit() {
        for side in Side::BOTH {
            let o = base(Mode::Long64, side, &[0xEB, 0xFE], &NONE);
            assert_eq!(o.outcome, Outcome::Hang, "{side}");
        }
    }

    #[test]
    fn rewritten_code_and_data_are_restored_between_runs() {
        super::super::conformance::check_runs_are_restored(&mut UnicornEngine::new().unwrap());
    }

    #[test]
    fn a_side_booted_after_other_tests_still_reaches_its_first_byte() {
        // Run a test that faults at the test address at CPL 3 (the ring3
        // variant's supervisor runs there), then boot the user side of the
        // same image, also CPL 3: the boot must stop at the test address,
        // not run the cached block of the previous test.
        let cfg = Config::UMIP_ON;
        let v = Variant {
            supervisor_dpl: 3,
            ..Variant::base(&cfg)
        };
        let img = GuestImage::build(Mode::Long64, cfg, v);
        let mut e = UnicornEngine::new().unwrap();
        let evex = [0x62, 0xf2, 0x7d, 0x48, 0x4c, 0xc1];
        let p = img.prepare(Side::Supervisor, &evex, &NONE).unwrap();
        assert!(matches!(
            e.run(&img, Side::Supervisor, &p).outcome,
            Outcome::Trap { vector: 6, .. }
        ));
        let p = img.prepare(Side::User, &evex, &NONE).unwrap();
        let o = e.run(&img, Side::User, &p);
        assert!(
            matches!(o.outcome, Outcome::Trap { vector: 6, .. }),
            "{:?}",
            o.outcome
        );
    }

    /// `mov dword [addr], imm` and `mov eax, [addr]` in 32-bit code.
    fn store32(addr: u32, imm: u32) -> Vec<u8> {
        let mut b = vec![0xC7, 0x05];
        b.extend(addr.to_le_bytes());
        b.extend(imm.to_le_bytes());
        b
    }
    fn load32(addr: u32) -> Vec<u8> {
        let mut b = vec![0xA1];
        b.extend(addr.to_le_bytes());
        b
    }

    #[test]
    fn what_a_run_wrote_is_undone_before_the_next() {
        // A store to the data page (restored only when written) and one to
        // the GDT (a stray write: all of memory is restored): the next run
        // reads the image's bytes again, in every variant.
        let cfg = Config::UMIP_OFF;
        let mut e = UnicornEngine::new().unwrap();
        for v in Variant::matrix(Mode::Prot32, &cfg) {
            let img = GuestImage::build(Mode::Prot32, cfg, v);
            let side = Side::Supervisor;
            for (addr, want) in [
                (
                    DATA + 0x10,
                    u32::from_le_bytes(std::array::from_fn(|i| {
                        crate::machine::data_fill(0x10 + i)
                    })),
                ),
                (img.sys.gdtr.0 + 0x400, {
                    let at = (img.sys.gdtr.0 + 0x400) as usize;
                    u32::from_le_bytes(img.memory[at..at + 4].try_into().unwrap())
                }),
            ] {
                let what = format!("{} {addr:#x}", v.name(&cfg));
                let w = img.prepare(side, &store32(addr as u32, 0xdead_beef), &NONE);
                let o = e.run(&img, side, &w.unwrap());
                if v.supervisor_dpl != 0 && addr != DATA + 0x10 {
                    continue; // the GDT is the supervisor's: a ring-1/3 store faults
                }
                assert!(completed(&o), "{what}: {:?}", o.outcome);
                for _ in 0..2 {
                    let r = img.prepare(side, &load32(addr as u32), &NONE).unwrap();
                    let o = e.run(&img, side, &r);
                    assert!(completed(&o), "{what}: {:?}", o.outcome);
                    assert_eq!(o.user.unwrap().gprs[0] as u32, want, "{what}");
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_run_before() {
        // Each case alone on a fresh engine, and all of them in a row on one
        // engine (as a scan's batches run them): the same observations.
        let cfg = Config::UMIP_OFF;
        let cases: Vec<Vec<u8>> = vec![
            store32(DATA as u32 + 0x20, 7),
            load32(DATA as u32 + 0x20),
            store32(GDT as u32 + 0x400, 9),
            load32(GDT as u32 + 0x400),
            vec![0x0F, 0x01, 0x05, 0x00, 0x81, 0, 0], // sgdt [0x8100]
            vec![0x0F, 0x20, 0xC0],                   // mov eax, cr0
            vec![0x0F, 0x22, 0xD8],                   // mov cr3, eax
            vec![0xF3, 0xA4],                         // rep movsb
            vec![0xEB, 0xFE],                         // jmp $
            vec![0x90],
        ];
        let mut shared = UnicornEngine::new().unwrap();
        for v in Variant::matrix(Mode::Prot32, &cfg) {
            let img = GuestImage::build(Mode::Prot32, cfg, v);
            for bytes in &cases {
                for side in Side::BOTH {
                    let p = img.prepare(side, bytes, &NONE).unwrap();
                    let alone = UnicornEngine::new().unwrap().run(&img, side, &p);
                    let in_row = shared.run(&img, side, &p);
                    assert_eq!(in_row, alone, "{} {side} {bytes:02x?}", v.name(&cfg));
                }
            }
        }
    }

    #[test]
    fn real_mode_runs_at_cpl0_only() {
        let o = base(Mode::Real, Side::Supervisor, &[0x01, 0xD8], &NONE);
        assert!(completed(&o), "{:?}", o.outcome);
    }

    #[test]
    fn every_variant_boots_on_both_sides_and_runs_a_nop() {
        let mut e = UnicornEngine::new().unwrap();
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
                        assert!(
                            crate::observe::diff_system(&o.before, o.after.as_ref().unwrap())
                                .is_empty(),
                            "{what}: nop changed {:?}",
                            crate::observe::diff_system(&o.before, o.after.as_ref().unwrap())
                        );
                        let u = o.user.unwrap();
                        assert_eq!(u.data[5], crate::machine::data_fill(5), "{what}");
                    }
                }
            }
        }
    }
}
