//! The worker: the child process the engine forks, which runs the test
//! bytes on the host CPU at CPL 3. Every `unsafe` of the native engine's
//! child side is here.
//!
//! The child is forked without exec from a process that may run other
//! threads, so after the fork it only makes system calls: it allocates
//! nothing, takes no lock and never touches thread-local storage (a test
//! may change the FS base, which the worker then leaves as the test left
//! it). Its setup:
//!
//! 1. maps the engine's shared memory (a memfd) at the harness's linear
//!    addresses with `MAP_FIXED_NOREPLACE`: the code page at `CODE`
//!    (read, write, execute: the only such mapping), the data page at
//!    `DATA` and the stack page at `STACK` (read, write);
//! 2. installs one handler for SIGSEGV, SIGILL, SIGBUS, SIGFPE, SIGTRAP and
//!    SIGSYS on an alternate stack (so no signal frame lands on the test's
//!    stack page), with its own restorer; every other signal is reset to
//!    its default, and terminal signals are ignored;
//! 3. closes every file descriptor but its socket, and installs the seccomp
//!    filter of [`super::seccomp`].
//!
//! Then it serves runs: the engine writes the pages and the [`Request`]
//! into the shared memory and bumps the request number; the worker loads
//! every general register and RFLAGS and jumps to the test. Whatever ends
//! the test is a signal: the sentinel (HLT) raises #GP, SIGSEGV; a fault
//! its own signal; a system call SIGSYS from the filter. The handler
//! writes the registers, the signal and the CPU's vector and error code
//! (the kernel's `trapno` and `err`) into the [`Response`], points the
//! saved context back at the worker's loop, and returns; the worker sets
//! the answer's number to the request's.
//!
//! The numbers and two sleeping flags are the [`Handshake`] in the control
//! block, spin-then-block (all `SeqCst`, so no wake-up is lost): a side
//! that waits spins a bounded time on the other's number (the worker
//! reads the time stamp counter, no system call), then sets its sleeping
//! flag, looks at the number once more and blocks in its socket read (the
//! worker) or `poll` (the engine, with the run's time limit). The other
//! side, after setting its number, swaps the flag back to 0 and sends one
//! byte only if it was set; a sleeper that finds the number changed after
//! all swaps its flag back too, and if the other side took it first it
//! reads the byte that is coming, so no byte is left over (a byte with
//! no new number would only mean waiting on). A side spins only when the
//! last wait was short enough to be caught so, and the engine lets
//! neither side spin when its process has more engines than half the
//! CPUs ([`Handshake::worker_spin`]).

use super::seccomp::SockFilter;
use crate::machine::{CODE, DATA, PAGE, STACK};
use std::arch::global_asm;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// What the engine asks for: the registers the test starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Request {
    /// RAX..R15, hardware order (offsets 0..128, used by the entry code).
    pub gprs: [u64; 16],
    /// RFLAGS (offset 128).
    pub rflags: u64,
    /// FS and GS base (offsets 136, 144).
    pub fs_base: u64,
    pub gs_base: u64,
    /// 0: enter the test by a near jump, in the worker's 64-bit code
    /// segment. Otherwise the code segment to enter it in by IRETQ (the
    /// kernel's 32-bit user code segment for 32-bit compatibility mode),
    /// with `ss` as the stack segment (offsets 152, 160).
    pub cs: u64,
    pub ss: u64,
    /// Where the test starts, in the code page (offset 168).
    pub rip: u64,
}

/// What the worker answers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Response {
    /// [`READY`], [`SIGNALLED`] or [`SETUP_FAILED`].
    pub kind: u64,
    pub signo: u64,
    pub si_code: i64,
    /// `si_addr` (the faulting address of a #PF).
    pub si_addr: u64,
    /// SIGSYS: the system call number and the audit architecture.
    pub sys_nr: u64,
    pub sys_arch: u64,
    /// The CPU's vector and error code, as the kernel saved them.
    pub trapno: u64,
    pub err: u64,
    /// RAX..R15, hardware order.
    pub gprs: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    /// CS, SS, DS, ES, FS, GS selectors.
    pub segs: [u64; 6],
    pub fs_base: u64,
    pub gs_base: u64,
    /// [`SETUP_FAILED`]: the step ([`Step`]) and its errno.
    pub step: u64,
    pub errno: u64,
}

/// The shared control block (at the start of the control page).
#[repr(C)]
pub(super) struct Control {
    pub req: Request,
    pub resp: Response,
    pub hand: Handshake,
}

/// The spin-then-block handshake of the runs (see the module docs): two
/// sequence numbers and two sleeping flags, all used with `SeqCst`.
/// Zero (the memfd's fill, and what the engine resets it to before each
/// fork) is the start: no request, no answer, nobody asleep.
#[repr(C, align(64))]
pub(super) struct Handshake {
    /// The number of the last request; the engine bumps it (only it).
    pub req_seq: AtomicU64,
    /// The number of the last request answered; the worker sets it (only
    /// it), after the [`Response`].
    pub resp_seq: AtomicU64,
    /// 1 while the worker is (about to be) blocked in its socket read:
    /// set by the worker, taken back (swapped to 0) by whichever side
    /// comes first, the engine after a new request (which then owes the
    /// worker one byte) or the worker that found the request anyway.
    pub worker_sleeping: AtomicU64,
    /// The same for the engine blocked in `poll` for an answer.
    pub engine_sleeping: AtomicU64,
    /// How long (time-stamp-counter ticks) the worker may spin for the
    /// request after this one, set by the engine with each request (0
    /// where spinning does not pay).
    pub worker_spin: AtomicU64,
}

impl Handshake {
    /// Back to the start (only while no worker runs).
    pub(super) fn reset(&self) {
        for a in [
            &self.req_seq,
            &self.resp_seq,
            &self.worker_sleeping,
            &self.engine_sleeping,
            &self.worker_spin,
        ] {
            a.store(0, Ordering::SeqCst);
        }
    }
}

/// The time stamp counter (RDTSC is allowed at CPL 3: no process sets
/// CR4.TSD here, and the worker makes no system call to read it).
pub(super) fn tsc() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { std::arch::x86_64::_rdtsc() }
}

pub(super) const READY: u64 = 1;
pub(super) const SIGNALLED: u64 = 2;
pub(super) const SETUP_FAILED: u64 = 3;

/// The worker's exit status after a signal outside a test (its own fault).
pub(super) const EXIT_STRAY_SIGNAL: i32 = 64;

/// Setup steps, for the message when one fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub(super) enum Step {
    MapCode = 1,
    MapData,
    MapStack,
    AltStack,
    Signals,
    CloseFds,
    NoNewPrivs,
    Seccomp,
    ParentDeath,
}

impl Step {
    pub(super) fn from_u64(v: u64) -> Option<Step> {
        use Step::*;
        [
            MapCode,
            MapData,
            MapStack,
            AltStack,
            Signals,
            CloseFds,
            NoNewPrivs,
            Seccomp,
            ParentDeath,
        ]
        .into_iter()
        .find(|s| *s as u64 == v)
    }

    pub(super) fn action(self) -> String {
        match self {
            Step::MapCode => format!("map the code page at {CODE:#x}"),
            Step::MapData => format!("map the data page at {DATA:#x}"),
            Step::MapStack => format!("map the stack page at {STACK:#x}"),
            Step::AltStack => "set up the signal stack".into(),
            Step::Signals => "install the signal handlers".into(),
            Step::CloseFds => "close the inherited file descriptors".into(),
            Step::NoNewPrivs => "set no_new_privs".into(),
            Step::Seccomp => "install the seccomp filter".into(),
            Step::ParentDeath => "ask for SIGKILL on the engine's death".into(),
        }
    }
}

/// Everything the child needs, prepared by the engine before the fork.
pub(super) struct Setup {
    /// The child's end of the socket pair.
    pub fd: i32,
    /// The memfd: code, data, stack, control page at offsets 0..4 pages.
    pub memfd: i32,
    /// The control block, in the engine's shared mapping (inherited).
    pub control: *mut Control,
    /// The seccomp program.
    pub filter: *const SockFilter,
    pub filter_len: u16,
    /// The kernel lets user code use RDFSBASE/WRFSBASE.
    pub fsgsbase: bool,
    /// The engine's pid (the child dies if it is gone).
    pub parent: i32,
}

// The state the entry code, the handler and the loop share. Statics, so
// the handler reaches them without TLS; each child has its own copy.
static SAVED_RSP: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(crate::machine::TEST_RIP);
static MXCSR: AtomicU64 = AtomicU64::new(0x1f80);
static FSGSBASE: AtomicU64 = AtomicU64::new(0);
static IN_TEST: AtomicBool = AtomicBool::new(false);
static CONTROL: AtomicUsize = AtomicUsize::new(0);

/// The general registers from a `Request` at RDI, all but RSP and RDI
/// (the entry code loads those last, as its two paths need).
macro_rules! load_gprs {
    () => {
        concat!(
            "    mov rax, [rdi + 0]\n",
            "    mov rcx, [rdi + 8]\n",
            "    mov rdx, [rdi + 16]\n",
            "    mov rbx, [rdi + 24]\n",
            "    mov rbp, [rdi + 40]\n",
            "    mov rsi, [rdi + 48]\n",
            "    mov r8, [rdi + 64]\n",
            "    mov r9, [rdi + 72]\n",
            "    mov r10, [rdi + 80]\n",
            "    mov r11, [rdi + 88]\n",
            "    mov r12, [rdi + 96]\n",
            "    mov r13, [rdi + 104]\n",
            "    mov r14, [rdi + 112]\n",
            "    mov r15, [rdi + 120]",
        )
    };
}

global_asm!(
    ".pushsection .text.popek_native,\"ax\",@progbits",
    // u64 popek_native_syscall(nr, a0, a1, a2): the worker's one
    // `syscall` after setup (the filter allows calls from here only).
    ".globl popek_native_syscall",
    ".p2align 4",
    "popek_native_syscall:",
    "    mov rax, rdi",
    "    mov rdi, rsi",
    "    mov rsi, rdx",
    "    mov rdx, rcx",
    "    syscall",
    ".globl popek_native_syscall_ret",
    "popek_native_syscall_ret:",
    "    ret",
    // The signal restorer: rt_sigreturn.
    ".globl popek_native_restorer",
    ".p2align 4",
    "popek_native_restorer:",
    "    mov eax, 15",
    "    syscall",
    ".globl popek_native_restorer_ret",
    "popek_native_restorer_ret:",
    "    ud2",
    // void popek_native_enter(const Request *): saves the callee-saved
    // registers and RSP, resets x87/SSE state, loads FS/GS base (with
    // FSGSBASE), RFLAGS and every general register, and jumps to the
    // test (or IRETQs to it in the request's code segment). The signal
    // handler resumes at popek_native_resume.
    ".globl popek_native_enter",
    ".p2align 4",
    "popek_native_enter:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rip + {saved}], rsp",
    "    fninit",
    "    ldmxcsr [rip + {mxcsr}]",
    "    pxor xmm0, xmm0",
    "    pxor xmm1, xmm1",
    "    pxor xmm2, xmm2",
    "    pxor xmm3, xmm3",
    "    pxor xmm4, xmm4",
    "    pxor xmm5, xmm5",
    "    pxor xmm6, xmm6",
    "    pxor xmm7, xmm7",
    "    pxor xmm8, xmm8",
    "    pxor xmm9, xmm9",
    "    pxor xmm10, xmm10",
    "    pxor xmm11, xmm11",
    "    pxor xmm12, xmm12",
    "    pxor xmm13, xmm13",
    "    pxor xmm14, xmm14",
    "    pxor xmm15, xmm15",
    // 32-bit compatibility mode uses DS, ES, FS and GS (a null one
    // faults there): load the stack segment's selector into all four
    // before the FS and GS bases are set.
    "    cmp qword ptr [rdi + 152], 0",
    "    je 4f",
    "    mov eax, [rdi + 160]",
    "    mov ds, eax",
    "    mov es, eax",
    "    mov fs, eax",
    "    mov gs, eax",
    "4:",
    "    cmp qword ptr [rip + {fsgs}], 0",
    "    je 2f",
    "    mov rax, [rdi + 136]",
    "    wrfsbase rax",
    "    mov rax, [rdi + 144]",
    "    wrgsbase rax",
    "2:",
    "    mov rax, [rdi + 168]",
    "    mov [rip + {target}], rax",
    "    cmp qword ptr [rdi + 152], 0",
    "    jne 3f",
    "    push qword ptr [rdi + 128]",
    "    popfq",
    load_gprs!(),
    "    mov rsp, [rdi + 32]",
    "    mov rdi, [rdi + 56]",
    "    jmp qword ptr [rip + {target}]",
    // Another code segment (32-bit compatibility mode): an IRETQ frame on
    // the worker's stack (SS, RSP, RFLAGS, CS, RIP), so that the test's
    // stack is not written, then the registers, RDI last.
    "3:",
    "    push qword ptr [rdi + 160]",
    "    push qword ptr [rdi + 32]",
    "    push qword ptr [rdi + 128]",
    "    push qword ptr [rdi + 152]",
    "    push qword ptr [rip + {target}]",
    load_gprs!(),
    "    mov rdi, [rdi + 56]",
    "    iretq",
    ".globl popek_native_resume",
    ".p2align 4",
    "popek_native_resume:",
    // The worker's own data selectors back (a 32c run loaded others).
    "    mov rax, [rip + {dsegs}]",
    "    mov ds, eax",
    "    shr rax, 16",
    "    mov es, eax",
    "    shr rax, 16",
    "    mov fs, eax",
    "    shr rax, 16",
    "    mov gs, eax",
    "    fninit",
    "    ldmxcsr [rip + {mxcsr}]",
    "    cld",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
    ".popsection",
    saved = sym SAVED_RSP,
    mxcsr = sym MXCSR,
    fsgs = sym FSGSBASE,
    target = sym TARGET,
    dsegs = sym DATA_SEGS,
);

extern "C" {
    fn popek_native_syscall(nr: i64, a0: u64, a1: u64, a2: u64) -> i64;
    fn popek_native_syscall_ret();
    fn popek_native_restorer();
    fn popek_native_restorer_ret();
    fn popek_native_enter(req: *const Request);
    fn popek_native_resume();
}

/// The RIPs right after the `syscall` of the stub and of the restorer:
/// what the seccomp filter allows.
pub(super) fn syscall_sites() -> (u64, u64) {
    (
        popek_native_syscall_ret as *const () as usize as u64,
        popek_native_restorer_ret as *const () as usize as u64,
    )
}

/// A system call through the stub (after setup, the only way the worker
/// makes one).
fn sys(nr: i64, a0: u64, a1: u64, a2: u64) -> i64 {
    // SAFETY: the stub makes the system call `nr` with these arguments;
    // every call site passes arguments valid for that call (a buffer it
    // owns for read/write, or plain numbers).
    unsafe { popek_native_syscall(nr, a0, a1, a2) }
}

fn exit(code: i32) -> ! {
    sys(libc::SYS_exit_group, code as u64, 0, 0);
    loop {
        std::hint::spin_loop();
    }
}

/// Reports a failed setup step to the engine and exits.
fn fail(setup: &Setup, step: Step, errno: i32) -> ! {
    let resp = Response {
        kind: SETUP_FAILED,
        step: step as u64,
        errno: errno as u64,
        ..Response::default()
    };
    // SAFETY: `control` points into the shared mapping the engine made
    // before the fork, which the child inherited; the engine reads it only
    // after the byte below.
    unsafe { std::ptr::write_volatile(&raw mut (*setup.control).resp, resp) };
    let b = 0u8;
    sys(libc::SYS_write, setup.fd as u64, &raw const b as u64, 1);
    exit(1)
}

/// The last OS error number (setup runs before any test, with TLS intact).
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The selectors CS, SS, DS, ES, FS, GS as the CPU has them now.
fn selectors() -> [u64; 6] {
    let (cs, ss, ds, es, fs, gs): (u16, u16, u16, u16, u16, u16);
    // SAFETY: reading segment registers has no side effect.
    unsafe {
        std::arch::asm!(
            "mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds",
            "mov {3:x}, es", "mov {4:x}, fs", "mov {5:x}, gs",
            out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs,
            options(nomem, nostack, preserves_flags)
        );
    }
    [cs, ss, ds, es, fs, gs].map(u64::from)
}

/// FS and GS base, where the kernel allows RDFSBASE.
fn bases() -> (u64, u64) {
    if FSGSBASE.load(Ordering::Relaxed) == 0 {
        return (0, 0);
    }
    let (fs, gs): (u64, u64);
    // SAFETY: CR4.FSGSBASE is set (the kernel says so in AT_HWCAP2), so
    // RDFSBASE/RDGSBASE only read the bases.
    unsafe {
        std::arch::asm!(
            "rdfsbase {0}", "rdgsbase {1}", out(reg) fs, out(reg) gs,
            options(nomem, nostack, preserves_flags)
        );
    }
    (fs, gs)
}

/// The kernel's `struct sigaction` for rt_sigaction.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

const SA_RESTORER: u64 = 0x0400_0000;
const ARCH_SET_GS: u64 = 0x1001;
const ARCH_SET_FS: u64 = 0x1002;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
/// Signals a test's end arrives by.
const TEST_SIGNALS: [i32; 6] = [
    libc::SIGSEGV,
    libc::SIGILL,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// The handler of every signal that ends a test.
extern "C" fn on_signal(sig: i32, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: clears EFLAGS.AC, which the test may have set, so the
    // handler's own accesses cannot raise #AC; touches only the flags
    // through the handler's own (alternate) stack.
    unsafe {
        std::arch::asm!("pushfq", "and dword ptr [rsp], 0xfffbffff", "popfq");
    }
    if !IN_TEST.swap(false, Ordering::SeqCst) {
        // The worker's own fault, not a test's: end, the engine says so.
        exit(EXIT_STRAY_SIGNAL + sig);
    }
    let control = CONTROL.load(Ordering::Relaxed) as *mut Control;
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler; `control` is the shared control block the
    // setup stored. The union fields of siginfo are read at their
    // x86-64 offsets (si_addr / _call_addr at 16, _syscall at 24,
    // _arch at 28).
    unsafe {
        let raw = info as *const u8;
        let si_code = (*info).si_code;
        let si_addr = std::ptr::read_unaligned(raw.add(16) as *const u64);
        let sys_nr = std::ptr::read_unaligned(raw.add(24) as *const i32);
        let sys_arch = std::ptr::read_unaligned(raw.add(28) as *const u32);
        let uc = ctx as *mut libc::ucontext_t;
        let g = &mut (*uc).uc_mcontext.gregs;
        let r = |i: i32| g[i as usize] as u64;
        use libc::{
            REG_CSGSFS, REG_EFL, REG_ERR, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15,
            REG_R8, REG_R9, REG_RAX, REG_RBP, REG_RBX, REG_RCX, REG_RDI, REG_RDX, REG_RIP, REG_RSI,
            REG_RSP, REG_TRAPNO,
        };
        let order = [
            REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI, REG_R8, REG_R9,
            REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15,
        ];
        let csgsfs = r(REG_CSGSFS);
        let mut segs = selectors();
        segs[0] = csgsfs & 0xffff;
        segs[1] = (csgsfs >> 48) & 0xffff;
        let (fs_base, gs_base) = bases();
        let resp = Response {
            kind: SIGNALLED,
            signo: sig as u64,
            si_code: si_code as i64,
            si_addr,
            sys_nr: sys_nr as u32 as u64,
            sys_arch: sys_arch as u64,
            trapno: r(REG_TRAPNO),
            err: r(REG_ERR),
            gprs: order.map(r),
            rip: r(REG_RIP),
            rflags: r(REG_EFL),
            segs,
            fs_base,
            gs_base,
            step: 0,
            errno: 0,
        };
        std::ptr::write_volatile(&raw mut (*control).resp, resp);
        // Back to the worker's loop, on its own stack, code and stack
        // segments, with clean flags.
        let segs0 = WORKER_SEGS.load(Ordering::Relaxed);
        g[REG_RIP as usize] = popek_native_resume as *const () as usize as i64;
        g[REG_RSP as usize] = SAVED_RSP.load(Ordering::Relaxed) as i64;
        g[REG_EFL as usize] = 0x202;
        g[REG_CSGSFS as usize] = ((segs0 & 0xffff) | ((segs0 >> 16) << 48)) as i64;
        (*uc).uc_flags |= UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS;
    }
}

/// The worker's own CS (bits 0-15) and SS (bits 16-31).
static WORKER_SEGS: AtomicU64 = AtomicU64::new(0);
/// The worker's own DS, ES, FS and GS (16 bits each, from bit 0), which
/// the resume path loads back.
static DATA_SEGS: AtomicU64 = AtomicU64::new(0);

/// The child's life after the fork: set up, then serve runs until the
/// engine closes its end of the socket. Never returns.
///
/// # Safety
/// Call only in the child right after `fork`, with `setup` prepared by the
/// engine before the fork (its pointers valid in the child's copy of the
/// address space).
pub(super) unsafe fn serve(setup: &Setup) -> ! {
    let s = selectors();
    WORKER_SEGS.store(s[0] | (s[1] << 16), Ordering::Relaxed);
    DATA_SEGS.store(
        s[2] | (s[3] << 16) | (s[4] << 32) | (s[5] << 48),
        Ordering::Relaxed,
    );
    CONTROL.store(setup.control as usize, Ordering::Relaxed);
    FSGSBASE.store(setup.fsgsbase as u64, Ordering::Relaxed);

    // SAFETY: plain system calls on values the child owns; each result is
    // checked, a failure reported through `fail`.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            fail(setup, Step::ParentDeath, errno());
        }
        if libc::getppid() != setup.parent {
            exit(0);
        }
        let page = PAGE as usize;
        for (step, at, offset, prot) in [
            (
                Step::MapCode,
                CODE,
                0,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            ),
            (Step::MapData, DATA, 1, libc::PROT_READ | libc::PROT_WRITE),
            (Step::MapStack, STACK, 2, libc::PROT_READ | libc::PROT_WRITE),
        ] {
            let p = libc::mmap(
                at as usize as *mut libc::c_void,
                page,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
                setup.memfd,
                (offset * page) as libc::off_t,
            );
            if p == libc::MAP_FAILED {
                fail(setup, step, errno());
            }
            if p as u64 != at {
                // A kernel without MAP_FIXED_NOREPLACE put it elsewhere.
                fail(setup, step, libc::EEXIST);
            }
        }
        // The alternate signal stack.
        const ALT: usize = 64 * 1024;
        let alt = libc::mmap(
            std::ptr::null_mut(),
            ALT,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if alt == libc::MAP_FAILED {
            fail(setup, Step::AltStack, errno());
        }
        let ss = libc::stack_t {
            ss_sp: alt,
            ss_flags: 0,
            ss_size: ALT,
        };
        if libc::sigaltstack(&ss, std::ptr::null_mut()) != 0 {
            fail(setup, Step::AltStack, errno());
        }
        // Signals: every handler inherited from the engine's process goes
        // back to its default, terminal signals are ignored, and the
        // signals a test ends by get the handler.
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let ignore = [
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGHUP,
                libc::SIGTSTP,
                libc::SIGTTIN,
                libc::SIGTTOU,
                libc::SIGPIPE,
            ]
            .contains(&sig);
            let ours = TEST_SIGNALS.contains(&sig);
            let act = KernelSigaction {
                handler: if ours {
                    on_signal as *const () as usize
                } else if ignore {
                    libc::SIG_IGN
                } else {
                    libc::SIG_DFL
                },
                flags: if ours {
                    (libc::SA_SIGINFO | libc::SA_ONSTACK) as u64 | SA_RESTORER
                } else {
                    SA_RESTORER
                },
                restorer: popek_native_restorer as *const () as usize,
                mask: u64::MAX,
            };
            let r = libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &raw const act,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
            if r != 0 && ours {
                fail(setup, Step::Signals, errno());
            }
        }
        let empty: u64 = 0;
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const empty,
            std::ptr::null_mut::<u64>(),
            8usize,
        ) != 0
        {
            fail(setup, Step::Signals, errno());
        }
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        // Every descriptor but the socket (the memfd too: its pages are mapped).
        let fd = setup.fd as u32;
        let ranges = [(0u32, fd.wrapping_sub(1)), (fd + 1, u32::MAX)];
        for (lo, hi) in ranges {
            if lo <= hi && libc::syscall(libc::SYS_close_range, lo, hi, 0) != 0 {
                let e = errno();
                if e != libc::ENOSYS {
                    fail(setup, Step::CloseFds, e);
                }
                for d in lo..hi.min(4096) {
                    libc::close(d as i32);
                }
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(setup, Step::NoNewPrivs, errno());
        }
        let prog = libc::sock_fprog {
            len: setup.filter_len,
            filter: setup.filter as *mut libc::sock_filter,
        };
        if libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &raw const prog,
        ) != 0
        {
            fail(setup, Step::Seccomp, errno());
        }
        let ready = Response {
            kind: READY,
            segs: selectors(),
            ..Response::default()
        };
        std::ptr::write_volatile(&raw mut (*setup.control).resp, ready);
    }
    let fd = setup.fd as u64;
    let b = 0u8;
    if sys(libc::SYS_write, fd, &raw const b as u64, 1) != 1 {
        exit(2);
    }
    // SAFETY: the handshake lives in the shared mapping the child
    // inherited, for the child's whole life; it is only used atomically.
    let hand = unsafe { &(*setup.control).hand };
    let (mut seq, mut spin) = (0u64, 0u64);
    loop {
        let waited;
        (seq, waited) = next_request(hand, fd, seq, spin);
        // Spin next time (as long as the engine allows) if this request
        // came soon enough to be caught so.
        let max = hand.worker_spin.load(Ordering::SeqCst);
        spin = if waited <= max { max } else { 0 };
        // SAFETY: the control block is shared with the engine, which does
        // not touch it until the answer (`resp_seq`) below; the copy is the
        // worker's own.
        let req = unsafe { std::ptr::read_volatile(&raw const (*setup.control).req) };
        if !setup.fsgsbase {
            sys(libc::SYS_arch_prctl, ARCH_SET_FS, req.fs_base, 0);
            sys(libc::SYS_arch_prctl, ARCH_SET_GS, req.gs_base, 0);
        }
        IN_TEST.store(true, Ordering::SeqCst);
        // SAFETY: the entry code runs the test with the request's
        // registers; every way out of it is a signal whose handler resumes
        // at `popek_native_resume`, which restores the callee-saved
        // registers and returns here (the test can only reach the
        // worker's memory by guessing its addresses; a test that breaks
        // the worker makes it die, which the engine reports).
        unsafe { popek_native_enter(&raw const req) };
        hand.resp_seq.store(seq, Ordering::SeqCst);
        if hand.engine_sleeping.swap(0, Ordering::SeqCst) != 0
            && sys(libc::SYS_write, fd, &raw const b as u64, 1) != 1
        {
            exit(0);
        }
    }
}

/// Waits for the request after `last`: spins `spin_ticks`, then blocks in
/// the socket read until the engine's byte. Its number, and how long it
/// took (ticks). Exits when the engine has closed its end.
fn next_request(hand: &Handshake, fd: u64, last: u64, spin_ticks: u64) -> (u64, u64) {
    let read = || {
        let mut b = 0u8;
        if sys(libc::SYS_read, fd, &raw mut b as u64, 1) != 1 {
            exit(0);
        }
    };
    let t0 = tsc();
    loop {
        let seq = hand.req_seq.load(Ordering::SeqCst);
        if seq != last {
            return (seq, tsc().wrapping_sub(t0));
        }
        if tsc().wrapping_sub(t0) >= spin_ticks {
            break;
        }
        std::hint::spin_loop();
    }
    loop {
        // Asleep first, then the last look (the engine bumps the number
        // first, then looks at the flag): one of the two sees the other.
        hand.worker_sleeping.store(1, Ordering::SeqCst);
        let seq = hand.req_seq.load(Ordering::SeqCst);
        if seq != last {
            if hand.worker_sleeping.swap(0, Ordering::SeqCst) == 0 {
                // The engine took the flag: its byte is coming; take it,
                // so that no byte is left over.
                read();
            }
            return (seq, tsc().wrapping_sub(t0));
        }
        read();
        // The engine took the flag before its byte. A byte with no new
        // request (there should be none) only means waiting again.
        let seq = hand.req_seq.load(Ordering::SeqCst);
        if seq != last {
            return (seq, tsc().wrapping_sub(t0));
        }
    }
}
