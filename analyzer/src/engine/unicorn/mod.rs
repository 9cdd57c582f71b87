//! The Unicorn engine: one Unicorn instance per processor mode, reused with
//! context restore (a new instance costs ~300 µs, a restore ~0.05 µs).
//!
//! CPL 3 is entered by the harness's boot stub, which IRETs from ring 0
//! inside the emulation; the context at the test's first byte is saved once
//! per image and side. Unicorn does not deliver exceptions through the guest
//! IDT: its interrupt hook gets the vector only (no error code), so traps
//! carry `error_code: None`, and software interrupts, SYSCALL and SYSENTER
//! are recorded as transfers that were not delivered (`cpl: None`).
//!
//! `ffi` is the raw boundary (the instance and its hooks, struct registers,
//! the watchdog; every `unsafe` block), `boot` loads the guest (memory and
//! the boot of a side), and this module runs a test and turns how Unicorn
//! stopped into an outcome, by the machine's landing rule where a HLT
//! stopped it ([`crate::machine::landing`]).

mod boot;
mod code_buffer;
mod ffi;
#[cfg(test)]
mod tests;

use super::{Engine, EngineError};
use crate::engine::shadow::Shadow;
use crate::fasthash::FastMap;
use crate::machine::image::msr;
use crate::machine::landing::{landing, ran_on, Landing, Stop};
use crate::machine::{GuestImage, Prepared, CODE, DATA, MEM_SIZE, PAGE, STACK};
use crate::mode::Mode;
use crate::observe::{
    Observation, Outcome, Page, Segment, Side, SystemState, TableReg, TransferKind, UserState,
    SYS_FLAGS_MASK, USER_FLAGS_MASK,
};
use ffi::{Events, Uc, Watchdog};
use std::rc::Rc;
use std::time::Duration;
use unicorn_engine::{uc_error, uc_x86_mmr, Context, RegisterX86 as R};

/// Most instructions a run may execute before it counts as a hang (a jump to
/// itself, a REP with a wild count).
pub const INSN_LIMIT: usize = 256;
/// Wall-clock limit of one run, a safety net behind the count, enforced by
/// the engine's watchdog thread (Unicorn's own timeout starts a thread per
/// run, which would cost more than the run).
pub const TIME_LIMIT: Duration = Duration::from_millis(200);
/// How many times [`TIME_LIMIT`] a run that timed out gets when it runs again.
pub const RETRY_PATIENCE: u32 = 10;

/// Pages of guest memory, one bit each in a `u64`.
const PAGES: usize = (MEM_SIZE / PAGE) as usize;
const _: () = assert!(PAGES <= 64);

/// Bytes of a page compared (and written) at once when a page is brought
/// back to what it must hold.
const RESTORE_CHUNK: usize = 256;

use crate::engine::shadow::ImageKey;

/// What booting a side gave: the context at the test's first byte and the
/// system state read there, or why it failed.
type Booted = Result<(Context, SystemState), UnicornError>;

/// The physical pages (bit n: page n) a run's stray stores reached, with
/// the image's page tables (the CPU's walks set their accessed and dirty
/// bits, unseen by the hook); `None` where memory is to be put back whole:
/// outside 64-bit mode, for a store outside memory or across a page
/// boundary, or for one to a page table (later walks of the run may have
/// set bits wherever its entries then pointed).
/// Unicorn's write hook is given physical addresses. In 16-bit code it can
/// name another address than the one written (a real-mode PUSHA with SP
/// 0xF, run from page 0, wrote 0xFFFF..0x10000 and the hook was told 0xF),
/// and 32-bit code can address memory the 16-bit way (0x67), so only
/// 64-bit mode, where addresses do not wrap inside memory, puts back page
/// by page.
fn stray_physical(image: &GuestImage, ev: &Events) -> Option<u64> {
    if image.mode != Mode::Long64 || ev.stray_high || ev.stray_pages & image.table_pages != 0 {
        return None;
    }
    Some(image.table_pages | ev.stray_pages)
}

struct Machine {
    uc: Uc,
    /// Physical memory as last written, to write only the pages that change.
    shadow: Shadow,
    /// Context at the test's first byte, and the system state read there.
    contexts: FastMap<(ImageKey, Side), Rc<Booted>>,
    /// The entry of `contexts` each side used last (supervisor, user): a
    /// scan runs one image's tests in a row, alternating the sides, so most
    /// runs find their context here without a lookup.
    recent: [Option<(ImageKey, Rc<Booted>)>; 2],
    /// The CPU state right after creation, to boot every image from.
    reset: Context,
    /// Guest memory may differ from the image anywhere: a run's stray
    /// stores went where their pages are not known, or paging changed.
    memory_suspect: bool,
    /// A run's stray stores went to known pages (now in `dirty`) since the
    /// last `load`: loading another image flushes the translations, as
    /// after suspect memory.
    strayed: bool,
    /// Pages (bit n: physical page n) that guest code wrote since they were
    /// last written from `loaded`. Outside these, and unless
    /// `memory_suspect`, guest memory equals `loaded` (the write hook is
    /// called for every guest store: one within a program page sets its
    /// bit; in 64-bit mode one within another page sets that page's bit
    /// and the page tables'; any other makes memory suspect).
    dirty: u64,
    /// The test pages that the code, data and stack pages of the loaded
    /// image hold (equal to `loaded` there) where not `dirty`: a test
    /// handing the same page again is not compared. Cleared whenever
    /// `load` writes memory.
    shown: [Option<Page>; 3],
    /// The watchdog, not the instruction count, ended the last run.
    timed_out: bool,
    /// Code may have been translated outside the code page since
    /// Unicorn's translations were last flushed. While not, the only
    /// translated code is the code page's, which every run removes before
    /// it starts, so `load` need not flush when it puts back what a run
    /// wrote into the same image.
    translated_elsewhere: bool,
    /// The linear pages outside the code page that code ran on since
    /// Unicorn's translations were last flushed (bit per page below
    /// `ffi::RAN_SPAN`, with the page after each), so that memory put back
    /// where no code ran keeps the translations; unless `ran_unknown`.
    ran_pages: ffi::RanPages,
    /// Some code since the last flush may have run where `ran_pages` does
    /// not tell (above `ffi::RAN_SPAN`, after a change of paging or CS, in
    /// a run the watchdog stopped, in a boot, in an image that shifts the
    /// code page).
    ran_unknown: bool,
    /// Guest memory as read back to find the pages the guest changed.
    guest_copy: Vec<u8>,
    /// A run left DR7 enabling an instruction breakpoint (at CPL 0: MOV
    /// DR7), which Unicorn keeps in a list outside the CPU state a context
    /// holds: the context restore drops Unicorn's own references to it, so
    /// no later run removes it. Every later run of the instance would then
    /// raise #DB where it reaches the breakpoint's address (whatever DR7
    /// holds by then), and the translation of every instruction walks the
    /// whole list (13% of a 64-bit lane's time after 400,000 structured
    /// inputs in one instance). The instance is replaced by a new one
    /// before the next run. (Data breakpoints are no matter: Unicorn keeps
    /// no watchpoints.)
    breakpoints_left: bool,
    /// The MSRs Unicorn keeps outside the CPU state a context holds, with
    /// their values in a new instance: the MTRRs and the machine-check
    /// controls and banks. A WRMSR at CPL 0 changes them for every later
    /// run (a RDMSR of MTRRdefType after a WRMSR of it read the value
    /// written), so they are put back before the run after one that may
    /// have run one (`msrs_suspect`).
    msrs_outside: Vec<(u32, u64)>,
    /// The last run may have run a WRMSR (see `execute`).
    msrs_suspect: bool,
}

/// The MSRs of [`Machine::msrs_outside`] in an instance whose MCG_CAP is
/// `mcg_cap`: the variable-range MTRRs (bases and masks), the fixed-range
/// ones, MTRRdefType, MCG_CTL, and four MSRs per machine-check bank.
fn msrs_outside_the_context(mcg_cap: u64) -> Vec<u32> {
    let banks = (mcg_cap & 0xff) as u32;
    (0x200..0x210)
        .chain([0x250, 0x258, 0x259])
        .chain(0x268..0x270)
        .chain([0x2ff, 0x17b])
        .chain(0x400..0x400 + 4 * banks)
        .collect()
}

const _: () =
    assert!(crate::machine::SEG_SHIFT != 0 && crate::machine::SEG_SHIFT.is_multiple_of(PAGE));

/// IA32_MCG_CAP, whose low byte is the number of machine-check banks.
const MCG_CAP: u32 = 0x179;

/// Whether `code` (a test's bytes) holds a WRMSR (`0f 30`) anywhere.
fn holds_wrmsr(code: &[u8]) -> bool {
    code.windows(2).any(|w| w == [0x0f, 0x30])
}

/// Whether a DR7 value enables an instruction breakpoint: a slot with an
/// enable bit (local or global) and the type "execute".
fn enables_instruction_breakpoint(dr7: u64) -> bool {
    (0..4).any(|i| (dr7 >> (2 * i)) & 3 != 0 && (dr7 >> (16 + 4 * i)) & 3 == 0)
}

/// The general registers of `mode` in hardware order (RAX..RDI, then
/// R8..R15 in long mode; EAX..EDI otherwise, where R8-R15 do not exist).
fn gpr_registers(mode: Mode) -> &'static [R] {
    const LONG: [R; 16] = [
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
    ];
    const LEGACY: [R; 8] = [
        R::EAX,
        R::ECX,
        R::EDX,
        R::EBX,
        R::ESP,
        R::EBP,
        R::ESI,
        R::EDI,
    ];
    if mode == Mode::Long64 {
        &LONG
    } else {
        &LEGACY
    }
}

/// The Unicorn engine.
pub struct UnicornEngine {
    /// One per mode, in the order first used.
    machines: Vec<(Mode, Machine)>,
    watchdog: Watchdog,
    insn_limit: usize,
}

/// What failed while driving Unicorn: the action, and Unicorn's error for
/// it where it gave one.
#[derive(Debug, thiserror::Error)]
pub enum UnicornError {
    #[error("{action} failed: {source}")]
    Call {
        action: &'static str,
        #[source]
        source: uc_error,
    },
    #[error("start the watchdog thread failed: {0}")]
    StartWatchdog(#[source] std::io::Error),
    #[error("pick the side failed: no such side in this mode")]
    NoSuchSide,
    #[error("run the boot stub failed: it did not reach the test (rip {rip:#x}, interrupt {intr:?}, error {error:?})")]
    BootStub {
        rip: u64,
        /// (vector, RIP) of the interrupt that stopped it.
        intr: Option<(u32, u64)>,
        #[source]
        error: Option<uc_error>,
    },
    #[error("boot the side failed: it reached cpl {reached} instead of {wanted}")]
    BootCpl { reached: u8, wanted: u8 },
}

/// The error of a Unicorn call that did `action`.
fn uc_err(action: &'static str) -> impl Fn(uc_error) -> UnicornError {
    move |source| UnicornError::Call { action, source }
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
            machines: Vec::new(),
            watchdog: Watchdog::new(time)?,
            insn_limit: insns,
        })
    }
}

impl Machine {
    fn new(mode: Mode) -> Result<Machine, UnicornError> {
        let uc = ffi::open(mode)?;
        let reset = uc
            .context_init()
            .map_err(uc_err("save the reset context"))?;
        Ok(Machine {
            uc,
            shadow: Shadow::new(),
            contexts: FastMap::default(),
            recent: [None, None],
            reset,
            memory_suspect: false,
            strayed: false,
            dirty: 0,
            shown: [None, None, None],
            timed_out: false,
            translated_elsewhere: true,
            ran_pages: Default::default(),
            ran_unknown: true,
            guest_copy: Vec::new(),
            breakpoints_left: false,
            msrs_outside: Vec::new(),
            msrs_suspect: false,
        }
        .with_msrs_read())
    }

    /// The machine with the values of its MSRs outside the context read
    /// (MCG_CAP says how many machine-check banks there are).
    fn with_msrs_read(mut self) -> Machine {
        let cap = ffi::read_msr(&self.uc, MCG_CAP);
        self.msrs_outside = msrs_outside_the_context(cap)
            .into_iter()
            .map(|rid| (rid, ffi::read_msr(&self.uc, rid)))
            .collect();
        self
    }

    /// Puts back the MSRs outside the context that differ from a new
    /// instance's.
    fn put_back_msrs(&mut self) -> Result<(), UnicornError> {
        for &(rid, value) in &self.msrs_outside {
            if ffi::read_msr(&self.uc, rid) != value {
                ffi::write_msr(&mut self.uc, rid, value)?;
            }
        }
        Ok(())
    }

    fn system_state(&self, image: &GuestImage) -> SystemState {
        let rd = |r: R| self.uc.reg_read(r).unwrap_or(0);
        let long = image.mode.is_long();
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
            .map(|&(rid, _)| (rid, ffi::read_msr(&self.uc, rid)))
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
            gdtr: t(ffi::read_mmr(&self.uc, R::GDTR)),
            idtr: t(ffi::read_mmr(&self.uc, R::IDTR)),
            ldtr: t(ffi::read_mmr(&self.uc, R::LDTR)),
            tr: t(ffi::read_mmr(&self.uc, R::TR)),
            cr0: rd(R::CR0),
            cr3: rd(R::CR3),
            cr4: rd(R::CR4),
            efer: if long {
                ffi::read_msr(&self.uc, boot::EFER)
            } else {
                0
            },
            sys_flags: rd(R::EFLAGS) & SYS_FLAGS_MASK,
            msrs,
        }
    }

    /// The user-visible state after a run of `test`. A data or stack page
    /// the run did not write holds the test's page still: it is handed back
    /// shared, not read (the write hook is called for every guest store,
    /// which sets its page's `dirty` bit or makes memory suspect, and a
    /// change of paging makes it suspect).
    fn user_state(&self, image: &GuestImage, test: &Prepared) -> Result<UserState, UnicornError> {
        let regs = gpr_registers(image.mode);
        let mut gprs = [0u64; 16];
        for (g, r) in gprs.iter_mut().zip(regs) {
            *g = self
                .uc
                .reg_read(*r)
                .map_err(uc_err("read a general register"))?;
        }
        let page = |phys: u64, ours: &Page, action| -> Result<Page, UnicornError> {
            if !self.memory_suspect && self.dirty & (1u64 << (phys / PAGE)) == 0 {
                return Ok(ours.clone());
            }
            let mut bytes = vec![0u8; PAGE as usize];
            self.uc.mem_read(phys, &mut bytes).map_err(uc_err(action))?;
            Ok(bytes.into())
        };
        let data = page(image.data_phys, &test.data_page, "read the data page")?;
        let stack = page(image.stack_phys, &test.stack_page, "read the stack page")?;
        Ok(UserState {
            gprs,
            rip: self.uc.reg_read(R::EIP).map_err(uc_err("read RIP"))?,
            flags: self.uc.reg_read(R::EFLAGS).map_err(uc_err("read EFLAGS"))? & USER_FLAGS_MASK,
            data,
            stack,
        })
    }

    /// The boot of a side of the image (which `load` made guest memory):
    /// the side is booted on first use, then remembered.
    fn booted(&mut self, image: &GuestImage, side: Side) -> Result<Rc<Booted>, UnicornError> {
        let key = (image.mode, image.config, image.variant);
        let slot = match side {
            Side::Supervisor => 0,
            Side::User => 1,
        };
        if let Some((k, b)) = &self.recent[slot] {
            if *k == key {
                return Ok(Rc::clone(b));
            }
        }
        let booted = match self.contexts.get(&(key, side)) {
            Some(b) => Rc::clone(b),
            None => {
                let b = Rc::new(self.boot(image, side));
                self.contexts.insert((key, side), Rc::clone(&b));
                // Put back what the boot stub wrote.
                self.load(image)?;
                b
            }
        };
        self.recent[slot] = Some((key, Rc::clone(&booted)));
        Ok(booted)
    }

    /// A run of `test` with `patience` times the time limit.
    fn run(
        &mut self,
        image: &GuestImage,
        side: Side,
        test: &Prepared,
        watchdog: &Watchdog,
        insn_limit: usize,
        patience: u32,
    ) -> Observation {
        let engine_error = |e: UnicornError| {
            Observation::outcome_only(
                Outcome::EngineError(EngineError::from(e).to_string()),
                SystemState::default(),
            )
        };
        // A run that fails before it starts did not time out.
        self.timed_out = false;
        if let Err(e) = self.load(image) {
            return engine_error(e);
        }
        let booted = match self.booted(image, side) {
            Ok(b) => b,
            Err(e) => return engine_error(e),
        };
        let (ctx, before) = match &*booted {
            Ok((ctx, before)) => (ctx, before),
            Err(e) => {
                return Observation::outcome_only(
                    Outcome::EngineError(format!("boot: {e}")),
                    SystemState::default(),
                )
            }
        };
        let result = self.execute(image, test, (ctx, before), watchdog, insn_limit, patience);
        let before = before.clone();
        match result {
            Ok((outcome, done)) => {
                let (after, user) = if done {
                    let user = match &outcome {
                        // Where the run ended, not where Unicorn's RIP stopped
                        // (one past a HLT that stopped it at CPL 0).
                        Outcome::Completed { rip, .. } => {
                            self.user_state(image, test).ok().map(|mut u| {
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
            Err(e) => Observation::outcome_only(
                Outcome::EngineError(EngineError::from(e).to_string()),
                before,
            ),
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
        patience: u32,
    ) -> Result<(Outcome, bool), UnicornError> {
        if std::mem::take(&mut self.msrs_suspect) {
            self.put_back_msrs()?;
        }
        // Restore the pages an instruction may dirty, then write the test's
        // own: only what differs from guest memory. Outside the pages the
        // last runs wrote (`dirty`), guest memory equals `loaded`, and
        // `load` left `loaded` equal to the image: the harness pages among
        // them (stacks, tables) hold the image's bytes already, since any
        // guest store to them made them dirty or memory suspect, and `load`
        // rewrote them.
        // A page that holds this very test page (`shown`) is not compared.
        for (i, (page, bytes)) in image.test_pages(test).into_iter().enumerate() {
            let bit = 1u64 << (page / PAGE);
            let stale = self.dirty & bit != 0;
            if !stale && self.shown[i].as_ref().is_some_and(|s| Page::same(s, bytes)) {
                continue;
            }
            self.shown[i] = None;
            let uc = &mut self.uc;
            self.shadow
                .put(page, bytes, stale, RESTORE_CHUNK, |at, b| {
                    uc.mem_write(at, b).map_err(uc_err("write a test page"))
                })?;
            self.dirty &= !bit;
            self.shown[i] = Some(bytes.clone());
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
        let long = image.mode.is_long();
        for (r, v) in gpr_registers(image.mode).iter().zip(test.gprs) {
            self.uc
                .reg_write(*r, v)
                .map_err(uc_err("write a general register"))?;
        }
        *self.uc.get_data_mut() = Events {
            program_pages: [image.linear(CODE), image.linear(DATA), image.linear(STACK)],
            program_phys: [image.code_phys, image.data_phys, image.stack_phys],
            limit: insn_limit,
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
        let (result, fired) = watchdog.emu_start(&mut self.uc, begin, until, patience);
        self.timed_out = fired;
        // Translated code outside the code page: an instruction ran there
        // (the code hooks saw it), or the run stopped there or was stopped
        // from outside (a block may have been translated and not begun:
        // the count stops before its first instruction's hooks, and the
        // watchdog at any time), or CS changed (a code page offset is
        // another linear page then).
        let pc = self
            .uc
            .reg_read(if long { R::RIP } else { R::EIP })
            .unwrap_or(u64::MAX);
        let ev = *self.uc.get_data();
        self.breakpoints_left |=
            enables_instruction_breakpoint(self.uc.reg_read(R::DR7).unwrap_or(0));
        let cs_changed = self.uc.reg_read(R::CS).ok() != Some(before.segs[0].selector as u64);
        let stopped_elsewhere = pc & !(PAGE - 1) != CODE;
        self.translated_elsewhere |= fired || ev.ran_elsewhere || stopped_elsewhere || cs_changed;
        self.dirty |= ev.written;
        // The write hook tells program pages from others by their linear
        // addresses (which it compares with the physical ones it is given);
        // with paging changed (CR0, CR3, CR4) memory is put back whole.
        let paging = [R::CR0, R::CR3, R::CR4].map(|r| self.uc.reg_read(r).unwrap_or(0));
        let paging_changed = paging != [before.cr0, before.cr3, before.cr4];
        if paging_changed {
            self.memory_suspect = true;
        } else if ev.stray_write {
            // Stores elsewhere: the physical pages they reached are put
            // back with the page tables, or all of memory is (see
            // `stray_physical`).
            match stray_physical(image, &ev) {
                Some(pages) => {
                    self.dirty |= pages;
                    self.strayed = true;
                }
                None => self.memory_suspect = true,
            }
        }
        // Where code ran outside the code page, by the image's mappings
        // (the block where the run stopped may be translated and not run).
        // The code hooks leave out the linear page at CODE, which is not
        // the code page where an image shifts it: code there goes unseen.
        let ran_outside = ev.ran_elsewhere || stopped_elsewhere;
        let unseen = image.linear(CODE) != CODE;
        if fired || ev.ran_high || unseen || (ran_outside && (paging_changed || cs_changed)) {
            self.ran_unknown = true;
        } else {
            for (all, run) in self.ran_pages.iter_mut().zip(ev.ran_pages) {
                *all |= run;
            }
            if stopped_elsewhere && !ffi::note_page(&mut self.ran_pages, image.linear(pc)) {
                self.ran_unknown = true;
            }
        }
        // A WRMSR may have run: the test holds one and started at CPL 0,
        // or code ran where the hooks do not tell which (outside the code
        // page, in another code segment, or stopped by the watchdog). A
        // test placed at the end of the code page (a length probe) has no
        // sentinel in it: its bytes run to the page's end. The one
        // instruction the code hooks leave out where an image shifts the
        // code page (at linear TEST_RIP) is followed by one they see off
        // the code page, or the run stops off the code page's offsets (the
        // shift is a whole number of pages), or the watchdog stops it.
        let start_cpl0 = !image.mode.is_protected() || before.cpl == 0;
        let code = match test.encoding() {
            [] => test
                .code_page
                .get(test.rip.wrapping_sub(CODE) as usize..)
                .unwrap_or(&[]),
            code => code,
        };
        // Code the test wrote (its own page, or any other through a stray
        // store, which is how a shifted image reaches its code page at
        // linear CODE) or mapped anew may hold a WRMSR its bytes did not.
        let code_written = ev.written & (1u64 << (image.code_phys / PAGE)) != 0;
        self.msrs_suspect = fired
            || ev.ran_high
            || ran_outside
            || cs_changed
            || (start_cpl0
                && (holds_wrmsr(code) || code_written || ev.stray_write || paging_changed));
        if fired {
            return Ok((Outcome::Hang, false));
        }
        let protected = image.mode.is_protected();
        let stopped = Stopped {
            events: *self.uc.get_data(),
            result,
            rip: self.uc.reg_read(R::EIP).unwrap_or(0),
            cpl: if protected {
                (self.uc.reg_read(R::CS).unwrap_or(0) & 3) as u8
            } else {
                0
            },
            start_cpl: if protected {
                (before.segs[0].selector & 3) as u8
            } else {
                0
            },
        };
        Ok(outcome(test, &stopped))
    }
}

/// How the emulation of a run stopped, as Unicorn reports it.
#[derive(Debug, Clone, Copy)]
struct Stopped {
    /// What the hooks saw.
    events: Events,
    /// What `emu_start` returned.
    result: Result<(), uc_error>,
    /// (E/R)IP where it stopped.
    rip: u64,
    /// The CPL there.
    cpl: u8,
    /// The CPL the run started at.
    start_cpl: u8,
}

/// What a run of `test` that stopped so means: its outcome, and whether the
/// machine state after it is meaningful (pure).
fn outcome(test: &Prepared, stopped: &Stopped) -> (Outcome, bool) {
    let Stopped {
        events: ev,
        result,
        rip,
        cpl: cpl_now,
        start_cpl,
    } = *stopped;
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
        return (
            Outcome::Transfer {
                kind,
                rip,
                cpl: None,
            },
            false,
        );
    }
    if let Some((vector, at)) = ev.intr {
        let vector = vector.min(255) as u8;
        // Software interrupts leave RIP after the instruction; faults at it.
        let after = at == test.sentinel && at != test.rip;
        // A HLT reached at CPL > 0 raises #GP there; but the test's own
        // INT 0Dh leaves RIP at the sentinel's HLT with vector 13 too (it
        // stops the run before that HLT could run).
        if vector == 13 && !(after && test.soft_interrupt == Some(13)) {
            if let Some(o) = landed(Stop::Faulted { at }) {
                return (o, true);
            }
        }
        // Raised in another ring than the run started in (a software
        // interrupt never is: the hook takes it before delivery).
        if let Some(Landing::Completed { rip, at_sentinel }) = ran_on(test, start_cpl, cpl_now, at)
        {
            return (Outcome::Completed { rip, at_sentinel }, true);
        }
        if after {
            return (
                Outcome::Transfer {
                    kind: TransferKind::Interrupt(vector),
                    rip: at,
                    cpl: None,
                },
                false,
            );
        }
        return (
            Outcome::Trap {
                vector,
                error_code: None,
                rip: at,
                address: ev.fault_address,
            },
            false,
        );
    }
    match result {
        Ok(()) => {
            if rip == test.sentinel {
                return (
                    Outcome::Completed {
                        rip,
                        at_sentinel: true,
                    },
                    true,
                );
            }
            // A HLT at CPL 0 stops the emulation with RIP after it. The
            // instruction limit stops it with RIP at the next instruction
            // to run: a loop through the test itself ends at TEST_RIP.
            if rip == test.rip {
                return (Outcome::Hang, false);
            }
            if let Some(o) = landed(Stop::Ran { next: rip }) {
                return (o, true);
            }
            // No landing: the limit stopped it, or a HLT the harness did
            // not place for a landing (the ring-0 page's filler), which
            // Unicorn's stop does not tell apart from the limit.
            (Outcome::Hang, false)
        }
        Err(uc_error::INSN_INVALID) => (
            Outcome::Trap {
                vector: 6,
                error_code: None,
                rip,
                address: None,
            },
            false,
        ),
        Err(e) => (
            Outcome::EngineError(format!("emu_start: {e:?} at rip {rip:#x}")),
            false,
        ),
    }
}

impl UnicornEngine {
    /// Runs `test` on the machine of its mode (made on first use) with at
    /// most `insn_limit` instructions.
    fn run_limited(
        &mut self,
        image: &GuestImage,
        side: Side,
        test: &Prepared,
        insn_limit: usize,
    ) -> Observation {
        if let Err(e) = self.watchdog.ready() {
            return Observation::outcome_only(
                Outcome::EngineError(EngineError::from(e).to_string()),
                SystemState::default(),
            );
        }
        let (o, timed_out) = self.run_once(image, side, test, insn_limit, 1);
        if !timed_out {
            return o;
        }
        // The wall clock, not the instruction count, ended the run: on a
        // loaded machine a run can stall past the limit, so it runs once
        // more with RETRY_PATIENCE times the time before it counts as a
        // hang (reports must not depend on the machine's load).
        self.run_once(image, side, test, insn_limit, RETRY_PATIENCE)
            .0
    }

    /// One run on the machine of the test's mode, and whether the watchdog
    /// ended it.
    fn run_once(
        &mut self,
        image: &GuestImage,
        side: Side,
        test: &Prepared,
        insn_limit: usize,
        patience: u32,
    ) -> (Observation, bool) {
        let at = self.machines.iter().position(|(m, _)| *m == image.mode);
        // A new machine where there is none, or where the guest left a
        // breakpoint in the old one.
        let at = match at {
            Some(at) if !self.machines[at].1.breakpoints_left => at,
            _ => match Machine::new(image.mode) {
                Ok(m) => match at {
                    Some(at) => {
                        self.machines[at].1 = m;
                        at
                    }
                    None => {
                        self.machines.push((image.mode, m));
                        self.machines.len() - 1
                    }
                },
                Err(e) => {
                    let o = Observation::outcome_only(
                        Outcome::EngineError(EngineError::from(e).to_string()),
                        SystemState::default(),
                    );
                    return (o, false);
                }
            },
        };
        let m = &mut self.machines[at].1;
        let o = m.run(image, side, test, &self.watchdog, insn_limit, patience);
        (o, m.timed_out)
    }
}

impl Engine for UnicornEngine {
    fn name(&self) -> &'static str {
        "unicorn"
    }
    fn version(&self) -> String {
        ffi::version()
    }
    fn run(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        self.run_limited(image, side, test, self.insn_limit)
    }

    /// The run stops before the second instruction (a count of one): the
    /// fetch of the first has crossed the boundary or not by then (only a
    /// fetch faults there: the page after is mapped, only not executable).
    /// Unicorn translates a block before it runs it, so a block whose later
    /// instruction crosses faults at its first (see the README), with any
    /// count. What the whole run could add is an engine failure later on,
    /// which would leave the length not measured.
    fn run_fetch(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        self.run_limited(image, side, test, 1)
    }

    /// Unicorn's instances are the process's memory, which a child has a
    /// copy of; the watchdog's thread is the engine's only one.
    fn park(&mut self) -> bool {
        self.watchdog.park();
        true
    }
}
