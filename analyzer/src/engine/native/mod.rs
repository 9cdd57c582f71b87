//! The native engine: the test bytes run on the host CPU, at CPL 3, in
//! 64-bit mode, in a worker process (the one hardware truth available
//! without VT-x; see `design/engines.md`, "The host CPU").
//!
//! The worker is forked (without exec) once per engine and serves runs
//! until the engine is dropped; one that dies or hangs is killed, reaped
//! and forked again at the next run. It maps the engine's shared memory
//! at the harness's linear addresses (`CODE`, `DATA`, `STACK`), so a test
//! sees the same addresses and registers as on every other engine, and it
//! runs under a seccomp filter that lets it use its socket and nothing
//! else ([`seccomp`]). See [`worker`] for how a run enters and leaves the
//! test, and for the handshake of a run through the shared control block
//! (both sides spin a little before they block on the socket, so that a
//! run needs no scheduler wake-up when each side has a CPU).
//!
//! What comes back is the signal that ended the test, with the CPU's
//! vector and error code as the kernel saved them (`trapno`, `err`):
//! - the sentinel (HLT) raises #GP(0) at CPL 3: a #GP(0) at a landing of
//!   [`crate::machine::landing`] is a completion, and the registers,
//!   flags, data and stack page there are the after-state;
//! - any other vector is a trap (SIGILL #UD, SIGSEGV #GP or #PF, SIGBUS
//!   #AC/#SS/#NP, SIGFPE #DE/#MF/#XM, SIGTRAP #DB/#BP), with the error code
//!   for the vectors that have one, and the #PF address (`si_addr`);
//! - a system call from the test (SYSCALL, SYSENTER, INT 0x80) is stopped
//!   by the filter (SIGSYS; the call is not made) and is a transfer that
//!   reached no harness entry point (`cpl: None`, like Unicorn's): SYSCALL
//!   by its 64-bit audit architecture or (from 32-bit code) its bytes
//!   `0f 05`, INT 0x80 by the bytes `cd 80` before the reported RIP,
//!   SYSENTER otherwise; a RIP the kernel moved to its vDSO (32-bit fast
//!   system calls) is recorded as the sentinel;
//! - no answer within [`TIME_LIMIT`] is a hang; a worker that dies is an
//!   engine error naming how it ended.
//!
//! What the engine runs: the user side (CPL 3) of 64-bit mode and of
//! 32-bit compatibility mode (entered by IRETQ in the kernel's 32-bit user
//! code segment, [`USER32_CS`], where the kernel has one; signals come back
//! to the 64-bit handler with that CS in the frame), in the base
//! state, in a configuration the host has (CR4.UMIP as the kernel set it,
//! IOPL 0, no CR4.TSD or CR4.PCE). Everything else is `NotSupported`, so
//! coverage marks it "not run" and the engine never claims a privilege
//! verdict: the supervisor side (the host's supervisor is its kernel),
//! 16-bit, 32-bit protected and real mode, and every variant that changes R or the system flags
//! (moved tables and pages, ring compression, IF, IOPL, CR0 bits), which a
//! user process cannot set.
//!
//! The before- and after-state hold what a user process can know: CPL 3
//! (from CS), the six selectors (CS and SS from the signal frame, the data
//! selectors read in the handler), IF/IOPL/AC from RFLAGS, and FS/GS base
//! where the kernel allows RDFSBASE. Descriptor caches, GDTR, IDTR, LDTR,
//! TR, CR0, CR3, CR4, EFER and the other MSRs are not observed (left at
//! their defaults, so they never differ).
//!
//! Measured on a 6.18 kernel with CR4.UMIP (AMD EPYC): SGDT, SIDT, SLDT,
//! SMSW and STR complete, with dummy values, because the kernel catches
//! their #GP and emulates them for user processes: the kernel's behaviour,
//! not the CPU's, and invisible to the worker.

mod process;
mod seccomp;
#[cfg(test)]
mod tests;
mod worker;

use super::{Engine, EngineError, Executor};
use crate::machine::image::msr;
use crate::machine::landing::{landing, Landing, Stop};
use crate::machine::{GuestImage, Prepared, Variant, CODE, PAGE};
use crate::mode::{Config, Mode};
use crate::observe::{
    Observation, Outcome, Page, Segment, Side, SystemState, TransferKind, UserState,
    SYS_FLAGS_MASK, USER_FLAGS_MASK,
};
use process::{Shared, Wait, Worker};
use std::time::Duration;
use worker::{Request, Response, SIGNALLED};

/// Linux x86-64's 32-bit user code segment (`__USER32_CS`): the test runs
/// in it in 32-bit compatibility mode.
pub const USER32_CS: u64 = 0x23;

/// Wall-clock limit of one run; a worker that has not answered then is
/// killed and the run is a `Hang`.
pub const TIME_LIMIT: Duration = Duration::from_millis(200);
/// How long a new worker may take to set up.
const START_LIMIT: Duration = Duration::from_secs(5);

/// What failed while starting or driving the worker.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("{0} failed: {1}")]
    Os(&'static str, #[source] std::io::Error),
    #[error("start the worker failed: {0}")]
    Setup(String),
}

pub use crate::host::HostFacts;

/// Why the native engine does not model `config` on this host, if it does
/// not (then no theorem verdict is drawn from its records there).
pub fn unmodeled(config: &Config) -> Option<String> {
    let umip = HostFacts::read().umip;
    config_unsupported(config, umip)
}

fn config_unsupported(config: &Config, host_umip: bool) -> Option<String> {
    if config.umip != host_umip {
        let on = |b: bool| if b { "on" } else { "off" };
        return Some(format!(
            "not modeled: the host kernel runs with UMIP {}, the configuration asks for {}",
            on(host_umip),
            on(config.umip)
        ));
    }
    if config.iopl != 0 {
        return Some("not modeled: a user process runs with IOPL 0".into());
    }
    if config.tsd {
        return Some("not modeled: CR4.TSD is not set for the worker".into());
    }
    if config.pce {
        return Some("not modeled: CR4.PCE is the kernel's choice, not set for the worker".into());
    }
    None
}

/// The native engine.
pub struct NativeEngine {
    shared: Shared,
    worker: Option<Worker>,
    facts: HostFacts,
    /// The selectors of the last worker (CS, SS, DS, ES, FS, GS).
    segs: [u64; 6],
    /// The kernel has its 32-bit user code segment ([`user32_cs_present`]).
    user32_cs: bool,
    /// With UMIP on in the kernel: whether it emulates the UMIP
    /// instructions for user code ([`NativeEngine::kernel_emulates_umip`]).
    umip_emulated: Option<bool>,
}

/// Whether the kernel's 32-bit user code segment is there (a kernel
/// without IA-32 emulation has none): LAR of [`USER32_CS`] at CPL 3 finds
/// a present DPL-3 code segment with D = 1 and L = 0.
fn user32_cs_present() -> bool {
    let ar: u64;
    let ok: u8;
    // SAFETY: LAR only reads the descriptor of the selector (it faults
    // on none: an unusable selector clears ZF); SETE reads ZF. No memory
    // or stack is touched.
    unsafe {
        std::arch::asm!(
            "lar {ar}, {sel:e}",
            "sete {ok}",
            sel = in(reg) USER32_CS,
            ar = out(reg) ar,
            ok = out(reg_byte) ok,
            options(nomem, nostack),
        );
    }
    let bit = |n: u32| (ar >> n) & 1 == 1;
    ok == 1 && bit(11) && bit(12) && bit(15) && (ar >> 13) & 3 == 3 && !bit(21) && bit(22)
}

impl NativeEngine {
    /// Forks the worker and waits until it is set up.
    pub fn new() -> Result<NativeEngine, EngineError> {
        let facts = HostFacts::read();
        let mut shared = Shared::new()?;
        let worker = Worker::spawn(&mut shared, facts.fsgsbase, START_LIMIT)?;
        let segs = worker.segs;
        let mut engine = NativeEngine {
            shared,
            worker: Some(worker),
            facts,
            segs,
            user32_cs: user32_cs_present(),
            umip_emulated: None,
        };
        if engine.facts.umip {
            engine.umip_emulated = engine.kernel_emulates_umip();
        }
        Ok(engine)
    }

    /// Whether the kernel emulates SGDT, SIDT, SLDT, SMSW and STR for user
    /// code: with CR4.UMIP the CPU raises #GP for them at CPL 3, and a
    /// kernel that emulates them completes them with dummy values instead
    /// of sending SIGSEGV. Measured once per engine with SMSW in the 64-bit
    /// base state; `None` if the probe ended otherwise.
    fn kernel_emulates_umip(&mut self) -> Option<bool> {
        let config = Config::UMIP_ON;
        let image = GuestImage::build(Mode::Long64, config, Variant::base(&config));
        let smsw_eax = [0x0f, 0x01, 0xe0];
        let test = image.prepare(Side::User, &smsw_eax, &Default::default())?;
        match self.run_user(&image, &test).outcome {
            Outcome::Completed { .. } => Some(true),
            Outcome::Trap { vector: 13, .. } => Some(false),
            _ => None,
        }
    }

    /// The host facts this engine reports.
    pub fn facts(&self) -> &HostFacts {
        &self.facts
    }

    /// The worker's process id, if one is running (for tests).
    pub fn worker_pid(&self) -> Option<i32> {
        self.worker.as_ref().map(|w| w.pid())
    }

    /// Why this engine cannot run `side` of `image`, if it cannot.
    fn unsupported(&self, image: &GuestImage, side: Side, test: &Prepared) -> Option<String> {
        if side == Side::Supervisor {
            return Some("native: runs at cpl 3 only (the host's supervisor is its kernel)".into());
        }
        if image.mode == Mode::Compat32 && !self.user32_cs {
            return Some(format!(
                "native: the kernel offers no 32-bit user code segment {USER32_CS:#x} \
                 (no IA-32 emulation): 32-bit compatibility mode cannot be entered"
            ));
        }
        if !image.mode.is_long() {
            return Some(format!(
                "native: runs 64-bit and 32-bit compatibility-mode code only \
                 (mode {} is not one a user process of this kernel runs in)",
                image.mode
            ));
        }
        if let Some(why) = config_unsupported(&image.config, self.facts.umip) {
            return Some(format!("native: {why}"));
        }
        // The fetch fence is what this engine has anyway: the data page is
        // not executable.
        let variant = Variant {
            fetch_fence: false,
            ..image.variant
        };
        if variant != Variant::base(&image.config) {
            return Some(format!(
                "native: the variant {} changes state a user process cannot set",
                image.variant.name(&image.config)
            ));
        }
        if !(CODE..CODE + PAGE).contains(&test.rip) {
            return Some(format!(
                "native: tests start in the code page only (not at {:#x})",
                test.rip
            ));
        }
        None
    }

    fn before(&self, rflags: u64, fs_base: u64, gs_base: u64) -> SystemState {
        SystemState {
            cpl: (self.segs[0] & 3) as u8,
            segs: self.segs.map(|s| Segment {
                selector: s as u16,
                cache: None,
            }),
            sys_flags: rflags & SYS_FLAGS_MASK,
            msrs: self.bases(fs_base, gs_base),
            ..SystemState::default()
        }
    }

    fn bases(&self, fs_base: u64, gs_base: u64) -> Vec<(u32, u64)> {
        if self.facts.fsgsbase {
            vec![(msr::FS_BASE, fs_base), (msr::GS_BASE, gs_base)]
        } else {
            Vec::new()
        }
    }

    /// A page of the worker's after-state: the test's own page where the
    /// run did not change it.
    fn page_after(&self, i: usize, start: &Page) -> Page {
        let now = self.shared.page(i);
        if now == &start[..] {
            start.clone()
        } else {
            Page::from(now)
        }
    }

    fn run_user(&mut self, image: &GuestImage, test: &Prepared) -> Observation {
        let entry = image
            .user
            .as_ref()
            .expect("checked: long mode has a user side");
        let base = |m: u32| {
            image
                .sys
                .msrs
                .iter()
                .find(|(i, _)| *i == m)
                .map_or(0, |(_, v)| *v)
        };
        let (fs_base, gs_base) = (base(msr::FS_BASE), base(msr::GS_BASE));
        let compat = image.mode == Mode::Compat32;
        let mut before = self.before(entry.rflags, fs_base, gs_base);
        if compat {
            // The worker enters the test in USER32_CS with its stack
            // segment's selector in DS, ES, FS and GS.
            before.segs[0].selector = USER32_CS as u16;
            for s in &mut before.segs[2..] {
                s.selector = self.segs[1] as u16;
            }
        }
        let fail = |why: String, before: SystemState| {
            Observation::outcome_only(Outcome::EngineError(format!("native: {why}")), before)
        };
        if self.worker.is_none() {
            match Worker::spawn(&mut self.shared, self.facts.fsgsbase, START_LIMIT) {
                Ok(w) => {
                    self.segs = w.segs;
                    self.worker = Some(w);
                }
                Err(e) => return fail(format!("restart the worker: {e}"), before),
            }
        }
        for (i, page) in [&test.code_page, &test.data_page, &test.stack_page]
            .into_iter()
            .enumerate()
        {
            self.shared.write_page(i, page);
        }
        self.shared.set_request(Request {
            gprs: test.gprs,
            rflags: entry.rflags,
            fs_base,
            gs_base,
            cs: if compat { USER32_CS } else { 0 },
            ss: self.segs[1],
            rip: test.rip,
        });
        let Some(w) = self.worker.as_mut() else {
            return fail("no worker".into(), before);
        };
        if w.start(&self.shared).is_err() {
            let how = w.kill();
            self.worker = None;
            return fail(format!("the worker {how} before the run"), before);
        }
        match w.wait(&self.shared, TIME_LIMIT) {
            Wait::Answered => {}
            Wait::TimedOut => {
                self.worker = None;
                return Observation::outcome_only(Outcome::Hang, before);
            }
            Wait::Died(how) => {
                self.worker = None;
                return fail(format!("the worker {how} during the run"), before);
            }
        }
        let r = self.shared.response();
        if r.kind != SIGNALLED {
            return fail(format!("the worker answered {} to a run", r.kind), before);
        }
        let outcome = outcome(test, &r);
        let (after, user) = match outcome {
            Outcome::Completed { rip, .. } => {
                let after = SystemState {
                    cpl: (r.segs[0] & 3) as u8,
                    segs: r.segs.map(|s| Segment {
                        selector: s as u16,
                        cache: None,
                    }),
                    sys_flags: r.rflags & SYS_FLAGS_MASK,
                    msrs: self.bases(r.fs_base, r.gs_base),
                    ..SystemState::default()
                };
                let mut gprs = r.gprs;
                if compat {
                    // As the mode sees them (as on KVM): 32-bit registers,
                    // no R8-R15.
                    for (i, g) in gprs.iter_mut().enumerate() {
                        *g = if i < 8 { *g & 0xFFFF_FFFF } else { 0 };
                    }
                }
                let user = UserState {
                    gprs,
                    rip,
                    flags: r.rflags & USER_FLAGS_MASK,
                    data: self.page_after(1, &test.data_page),
                    stack: self.page_after(2, &test.stack_page),
                };
                (Some(after), Some(user))
            }
            _ => (None, None),
        };
        Observation {
            outcome,
            before,
            after,
            user,
        }
    }
}

/// Vectors that push an error code.
fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21)
}

const SI_KERNEL: i64 = 0x80;
const SYS_SECCOMP: i64 = 1;

/// What a worker's answer means for `test` (pure).
fn outcome(test: &Prepared, r: &Response) -> Outcome {
    let sig = r.signo as i32;
    let name = process::signal_name(sig);
    if sig == libc::SIGSYS {
        if r.si_code != SYS_SECCOMP {
            return Outcome::EngineError(format!(
                "native: SIGSYS with si_code {} (not the filter's)",
                r.si_code
            ));
        }
        // The kernel returns a 32-bit fast system call (SYSCALL from
        // compatibility mode, SYSENTER) to its vDSO landing pad, not after
        // the instruction: there the bytes before the sentinel tell the
        // instruction, and the sentinel is the RIP recorded (the address
        // the CPU saved; the landing pad moves with ASLR).
        let in_code = (CODE + 2..=CODE + PAGE).contains(&r.rip);
        let rip = if in_code { r.rip } else { test.sentinel };
        let before2 = rip
            .checked_sub(2)
            .filter(|a| (CODE..CODE + PAGE - 1).contains(a))
            .and_then(|a| {
                test.code_page
                    .get((a - CODE) as usize..(a - CODE + 2) as usize)
            });
        let kind = if r.sys_arch == u64::from(seccomp::AUDIT_ARCH_X86_64)
            || before2 == Some(&[0x0F, 0x05][..])
        {
            TransferKind::Syscall
        } else if before2 == Some(&[0xCD, 0x80][..]) {
            TransferKind::Interrupt(0x80)
        } else {
            TransferKind::Sysenter
        };
        return Outcome::Transfer {
            kind,
            rip,
            cpl: None,
        };
    }
    if r.si_code <= 0 && r.si_code != SI_KERNEL {
        return Outcome::EngineError(format!(
            "native: the worker got {name} from a process (si_code {})",
            r.si_code
        ));
    }
    let expected: &[u64] = match sig {
        libc::SIGILL => &[6],
        libc::SIGFPE => &[0, 16, 19],
        libc::SIGSEGV => &[4, 5, 13, 14],
        libc::SIGBUS => &[11, 12, 17],
        libc::SIGTRAP => &[1, 3],
        _ => &[],
    };
    if !expected.contains(&r.trapno) {
        return Outcome::EngineError(format!(
            "native: {name} (si_code {}) with vector {} at {:#x}: not a vector that signal reports",
            r.si_code, r.trapno, r.rip
        ));
    }
    let vector = r.trapno as u8;
    if vector == 13 && r.err == 0 {
        if let Some(l) = landing(test, Stop::Faulted { at: r.rip }) {
            return match l {
                Landing::Completed { rip, at_sentinel } => Outcome::Completed { rip, at_sentinel },
                Landing::Transfer(kind, rip) => Outcome::Transfer {
                    kind,
                    rip,
                    cpl: Some(3),
                },
            };
        }
    }
    Outcome::Trap {
        vector,
        error_code: has_error_code(vector).then_some(r.err as u32),
        rip: r.rip,
        address: (vector == 14).then_some(r.si_addr),
    }
}

impl Engine for NativeEngine {
    fn name(&self) -> &'static str {
        "native"
    }

    fn version(&self) -> String {
        let umip = match self.umip_emulated {
            Some(true) => {
                "; the kernel emulates SGDT, SIDT, SLDT, SMSW and STR at CPL 3 (SMSW completed \
                 in a probe): their results are the kernel's dummy values, not the CPU's"
            }
            Some(false) => "; SGDT, SIDT, SLDT, SMSW and STR raise #GP at CPL 3 (SMSW in a probe)",
            None => "",
        };
        format!("native cpl3 on {}{umip}", self.facts.text())
    }

    fn executor(&self, _mode: Mode, _cpl: u8) -> Executor {
        Executor::Hardware
    }

    fn run(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        if let Some(why) = self.unsupported(image, side, test) {
            return Observation::outcome_only(Outcome::NotSupported(why), SystemState::default());
        }
        self.run_user(image, test)
    }
}
