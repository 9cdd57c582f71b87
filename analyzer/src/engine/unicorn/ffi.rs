//! The raw Unicorn boundary: creating an instance with its hooks (what they
//! record is [`Events`]), the registers Unicorn's C API takes as structs,
//! the version, and how the shared watchdog ([`crate::engine::watchdog`])
//! stops a running emulation from its own thread. Every `unsafe` block of
//! the Unicorn engine is here, but for the placement of Unicorn's code
//! buffer ([`super::code_buffer`]).

use super::{code_buffer, uc_err, UnicornError};
use crate::engine::watchdog;
use crate::machine::{MEM_SIZE, PAGE, TEST_RIP};
use crate::mode::Mode;
use std::time::{Duration, Instant};
use unicorn_engine::{
    uc_error, uc_x86_mmr, uc_x86_msr, Arch, ControlType, HookType, Mode as UcMode, Prot,
    RegisterX86 as R, Unicorn, X86CpuModel, X86Insn,
};

/// A Unicorn instance of the engine: its hooks record into [`Events`].
pub(super) type Uc = Unicorn<'static, Events>;

/// What the hooks saw during a run.
#[derive(Default, Debug, Clone, Copy)]
pub(super) struct Events {
    /// (vector, RIP at the hook).
    pub(super) intr: Option<(u32, u64)>,
    /// CR2 when the interrupt was a #PF (the faulting linear address).
    pub(super) fault_address: Option<u64>,
    pub(super) syscall: bool,
    pub(super) sysenter: bool,
    /// Linear addresses of the pages a run writes as a matter of course
    /// (code, data, stack), restored before the next run when written.
    pub(super) program_pages: [u64; 3],
    /// Their physical pages, in the same order.
    pub(super) program_phys: [u64; 3],
    /// Physical pages among `program_phys` the run wrote (bit n: page n).
    pub(super) written: u64,
    /// A write landed elsewhere: on the physical pages in `stray_pages`
    /// (bit n: page n), or (`stray_high`) outside guest memory or across
    /// a page boundary, where the pages are not known.
    pub(super) stray_write: bool,
    pub(super) stray_pages: u64,
    pub(super) stray_high: bool,
    /// An instruction ran outside the code page (`program_pages[0]`).
    pub(super) ran_elsewhere: bool,
    /// The linear pages below [`RAN_SPAN`] those instructions are on (bit
    /// n of word w: page 64 w + n), with the page after each (a block may
    /// go on there).
    pub(super) ran_pages: RanPages,
    /// One of them is at or above [`RAN_SPAN`].
    pub(super) ran_high: bool,
    /// Instructions begun (see [`Events::begin`]).
    pub(super) count: usize,
    /// Most instructions the run may take (0: no limit).
    pub(super) limit: usize,
}

impl Events {
    /// Counts an instruction about to run; true when it is one past the
    /// limit, and the emulation is to stop before it (as Unicorn's own
    /// count stops it).
    fn begin(&mut self) -> bool {
        self.count += 1;
        self.limit != 0 && self.count > self.limit
    }
}

/// The linear addresses whose pages [`Events::ran_pages`] tells apart: the
/// 2 MiB every image maps its pages in.
pub(super) const RAN_SPAN: u64 = 2 << 20;

/// One bit per linear page below [`RAN_SPAN`].
pub(super) type RanPages = [u64; (RAN_SPAN / PAGE / 64) as usize];

/// Notes the page of `lin` and the one after it in `pages`; false where
/// either is not below [`RAN_SPAN`].
pub(super) fn note_page(pages: &mut RanPages, lin: u64) -> bool {
    let mut fits = true;
    for page in [lin / PAGE, lin / PAGE + 1] {
        if page < RAN_SPAN / PAGE {
            pages[(page / 64) as usize] |= 1 << (page % 64);
        } else {
            fits = false;
        }
    }
    fits
}

/// A Unicorn instance for `mode` with guest memory mapped and the hooks
/// installed: interrupts, SYSCALL and SYSENTER stop the emulation and are
/// noted; every store is noted by page.
pub(super) fn open(mode: Mode) -> Result<Uc, UnicornError> {
    let uc_mode = match mode {
        Mode::Real | Mode::Prot16 => UcMode::MODE_16,
        Mode::Prot32 => UcMode::MODE_32,
        // 32c: a long-mode guest; the 32-bit code segment (CS.L = 0) makes
        // the CPU decode 32-bit code.
        Mode::Long64 | Mode::Compat32 => UcMode::MODE_64,
    };
    let mut uc = Unicorn::new_with_data(Arch::X86, uc_mode, Events::default())
        .map_err(uc_err("create a Unicorn instance"))?;
    // A code buffer that fits within reach of the helpers (set before the
    // first call that makes Unicorn allocate it).
    // SAFETY: UC_CTL_TCG_BUFFER_SIZE written takes one uint32_t; the handle
    // belongs to the live instance `uc`.
    let err = unsafe {
        unicorn_engine::uc_ctl(
            uc.get_handle(),
            ControlType(ControlType::TCG_BUFFER_SIZE.0 | ControlType::IO_WRITE.0),
            code_buffer::SIZE,
        )
    };
    if err != uc_error::OK {
        return Err(uc_err("size the code buffer")(err));
    }
    // A recent CPU model so that CPUID advertises what TCG implements.
    let model = X86CpuModel::HASWELL;
    let _ = uc.ctl_set_cpu_model(model as i32);
    uc.mem_map(0, MEM_SIZE, Prot::ALL)
        .map_err(uc_err("map guest memory"))?;
    uc.add_intr_hook(|uc, intno| {
        let rip = uc.reg_read(R::EIP).unwrap_or(0);
        // The emulated CPU has set CR2 before it raises the #PF.
        let cr2 = (intno == 14).then(|| uc.reg_read(R::CR2).ok()).flatten();
        let ev = uc.get_data_mut();
        if ev.intr.is_none() {
            ev.intr = Some((intno, rip));
            ev.fault_address = cr2;
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
    // The instruction limit is counted here, not by Unicorn's count (a
    // code hook on every instruction, whose calls cost a fifth of a
    // fuzzing run's translation). The code hooks count every instruction
    // but the one at TEST_RIP, the test's first byte in the images that do
    // not shift the code page, which a block hook counts instead: each
    // block that starts there (a test, or one more round of a REP or a
    // loop through the test) begins with it, and no block reaches it from
    // before, where the code page holds HLTs that end a block. So the test's
    // block has one hook call, not one per instruction. (An instruction at
    // TEST_RIP in the middle of a block goes uncounted: only where the HLTs
    // before it were rewritten, or where an image moves the code page and a
    // run reaches that linear address.)
    //
    // The code hooks also note instructions outside the code page (so that
    // `load` knows whether translated code can live anywhere else); where
    // an image shifts the page, the callback tells. With one code hook
    // (or block hook) Unicorn would inline it into every translated
    // instruction, and each inlining allocates and formats a helper
    // description and enters it in two hash tables; with two or more, it
    // translates into one call to its generic hook helper, which checks
    // the bounds.
    for (begin, end) in [(0, TEST_RIP - 1), (TEST_RIP + 1, u64::MAX)] {
        uc.add_code_hook(begin, end, |uc, addr, _| {
            let ev = uc.get_data_mut();
            if ev.begin() {
                let _ = uc.emu_stop();
                return;
            }
            if addr & !(PAGE - 1) != ev.program_pages[0] {
                ev.ran_elsewhere = true;
                if !note_page(&mut ev.ran_pages, addr) {
                    ev.ran_high = true;
                }
            }
        })
        .map_err(uc_err("add the code hook"))?;
    }
    uc.add_block_hook(TEST_RIP, TEST_RIP, |uc, _, _| {
        if uc.get_data_mut().begin() {
            let _ = uc.emu_stop();
        }
    })
    .map_err(uc_err("add the block hook"))?;
    // Never called (no block starts at the last address): the second
    // block hook keeps the first from being inlined.
    uc.add_block_hook(u64::MAX, u64::MAX, |_, _, _| {})
        .map_err(uc_err("add the block hook"))?;
    // Every store outside the program's own pages is noted with its pages,
    // so that the next run starts from the image again (KVM uses its dirty
    // log). Unicorn gives the hook physical addresses, of the first byte
    // only for a store across two pages: the program's pages are told by
    // their linear addresses, which equal their physical ones where the
    // image does not move them (a store to a moved page counts as stray).
    uc.add_mem_hook(HookType::MEM_WRITE, 0, u64::MAX, |uc, _, addr, size, _| {
        let ev = uc.get_data_mut();
        let first = addr & !(PAGE - 1);
        let last = (addr + size.max(1) as u64 - 1) & !(PAGE - 1);
        for page in [first, last] {
            if !ev.program_pages.contains(&page) {
                ev.stray_write = true;
                // The hook is called once for a store across two pages,
                // with the first byte's physical address: where the rest
                // went (the next linear page's physical page) is unknown.
                if page < MEM_SIZE && first == last {
                    ev.stray_pages |= 1 << (page / PAGE);
                } else {
                    ev.stray_high = true;
                }
            }
        }
        for (lin, phys) in ev.program_pages.into_iter().zip(ev.program_phys) {
            if lin == first || lin == last {
                ev.written |= 1 << (phys / PAGE);
            }
        }
        true
    })
    .map_err(uc_err("add the memory write hook"))?;
    Ok(uc)
}

/// Writes a register that Unicorn's C API takes as a struct: a table
/// register or system segment (`uc_x86_mmr`) or an MSR (`uc_x86_msr`).
fn write_struct<T: Copy>(
    uc: &mut Uc,
    reg: R,
    v: &T,
    action: &'static str,
) -> Result<(), UnicornError> {
    // SAFETY: this module calls it only with GDTR/IDTR/LDTR/TR and a
    // `uc_x86_mmr`, or MSR and a `uc_x86_msr`, the repr(C) types the C API
    // reads for those registers; the pointer is valid for the whole call
    // and the handle belongs to the live instance `uc` borrows.
    let err = unsafe {
        unicorn_engine::uc_reg_write(uc.get_handle(), reg as i32, (v as *const T).cast())
    };
    if err == uc_error::OK {
        Ok(())
    } else {
        Err(UnicornError::Call {
            action,
            source: err,
        })
    }
}

/// Reads such a register into `v` (for an MSR, `v.rid` names it).
fn read_struct<T: Copy>(uc: &Uc, reg: R, v: &mut T) {
    // SAFETY: as in `write_struct`: the C API writes (and for an MSR
    // first reads) one struct of the right type through the pointer,
    // which points at a live, aligned value for the whole call.
    let _ =
        unsafe { unicorn_engine::uc_reg_read(uc.get_handle(), reg as i32, (v as *mut T).cast()) };
}

/// Writes a table register (GDTR, IDTR) or a system segment with its
/// descriptor cache (LDTR, TR).
pub(super) fn write_mmr(uc: &mut Uc, reg: R, v: uc_x86_mmr) -> Result<(), UnicornError> {
    write_struct(uc, reg, &v, "write a table register")
}

pub(super) fn read_mmr(uc: &Uc, reg: R) -> uc_x86_mmr {
    let mut v = uc_x86_mmr {
        selector: 0,
        base: 0,
        limit: 0,
        flags: 0,
    };
    read_struct(uc, reg, &mut v);
    v
}

pub(super) fn write_msr(uc: &mut Uc, rid: u32, value: u64) -> Result<(), UnicornError> {
    write_struct(uc, R::MSR, &uc_x86_msr { rid, value }, "write an MSR")
}

pub(super) fn read_msr(uc: &Uc, rid: u32) -> u64 {
    let mut v = uc_x86_msr { rid, value: 0 };
    read_struct(uc, R::MSR, &mut v);
    v.value
}

/// The version of the linked Unicorn library: `unicorn <major>.<minor>`.
pub(super) fn version() -> String {
    let (mut major, mut minor) = (0u32, 0u32);
    // SAFETY: `uc_version` only writes the two integers through the
    // pointers, which point at live locals.
    let _ = unsafe { unicorn_engine::uc_version(&raw mut major, &raw mut minor) };
    format!("unicorn {major}.{minor}")
}

/// A Unicorn handle the watchdog may stop.
#[derive(Clone, Copy)]
struct StopHandle(*mut unicorn_engine::uc_engine);

// SAFETY: the watchdog uses the handle only to call `uc_emu_stop`, which
// Unicorn supports from another thread while `uc_emu_start` runs (its own
// timeout thread does exactly that), and only while armed:
// `Watchdog::emu_start` arms it right before `uc_emu_start` and disarms it
// as soon as that returns (or unwinds), under the same lock the watchdog
// holds when it stops, and it borrows the instance all the while; so the
// handle is never used while no emulation runs or after its instance is
// gone.
unsafe impl Send for StopHandle {}

impl watchdog::Interrupt for StopHandle {
    fn interrupt(&self) {
        // SAFETY: see `StopHandle`: the watchdog calls this only while
        // armed, that is while an emulation of this live instance runs, and
        // it cannot be disarmed while the watchdog holds its lock.
        unsafe { unicorn_engine::uc_emu_stop(self.0) };
    }

    fn again(&self) -> Option<Duration> {
        // A stop request is not lost: once is enough.
        None
    }
}

/// The engine's watchdog: the shared one, stopping the emulation.
pub(super) struct Watchdog {
    dog: watchdog::Watchdog<StopHandle>,
    limit: Duration,
}

impl Watchdog {
    pub(super) fn new(limit: Duration) -> Result<Watchdog, UnicornError> {
        Ok(Watchdog {
            dog: watchdog::Watchdog::new("unicorn-watchdog")
                .map_err(UnicornError::StartWatchdog)?,
            limit,
        })
    }

    /// Ends the watchdog's thread (see [`crate::engine::Engine::park`]).
    pub(super) fn park(&mut self) {
        self.dog.stop();
    }

    /// Starts the thread where [`Watchdog::park`] ended it: before a run.
    pub(super) fn ready(&mut self) -> Result<(), UnicornError> {
        self.dog.start().map_err(UnicornError::StartWatchdog)
    }

    /// Runs the emulation of `uc` from `begin` until `until` (at most
    /// `Events::limit` instructions) under the deadline (`patience`
    /// times the limit): what `emu_start` returned, and whether the watchdog
    /// stopped it. The watchdog is armed only while `emu_start` runs
    /// (disarmed even if it unwinds), which is what makes its stop sound
    /// (see `StopHandle`).
    pub(super) fn emu_start(
        &self,
        uc: &mut Uc,
        begin: u64,
        until: u64,
        patience: u32,
    ) -> (Result<(), uc_error>, bool) {
        let armed = self.dog.arm(
            Instant::now() + self.limit * patience,
            StopHandle(uc.get_handle()),
        );
        let result = uc.emu_start(begin, until, 0, 0);
        (result, armed.disarm())
    }
}
