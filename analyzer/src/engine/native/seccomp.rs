//! The worker's seccomp filter, as a classic BPF program (pure; built in
//! the engine before the fork, installed by the worker).
//!
//! After its setup the worker makes system calls from two places only: its
//! own `syscall` stub and its signal restorer (`rt_sigreturn`). The filter
//! looks at the address of the `syscall` instruction (the RIP after it, as
//! the kernel gives it) and at the architecture:
//!
//! - from the stub: `read` and `write` on the worker's socket,
//!   `arch_prctl` (FS/GS base, where the CPU has no FSGSBASE) and
//!   `exit_group` are allowed; any other call kills the worker (a bug of
//!   the worker, never a test's doing);
//! - from the restorer: only `rt_sigreturn`;
//! - from anywhere else (the test's SYSCALL, SYSENTER, INT 0x80, a 32-bit
//!   or x32 call): `SECCOMP_RET_TRAP`. The call is not made; the worker
//!   gets SIGSYS, and the engine reports a transfer.

/// One BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06;

pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
#[cfg(test)]
pub(crate) const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;
pub(crate) const RET_TRAP: u32 = 0x0003_0000;
pub(crate) const RET_KILL_PROCESS: u32 = 0x8000_0000;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const IP_LO: u32 = 8;
const IP_HI: u32 = 12;
const ARG0_LO: u32 = 16;
#[cfg(test)]
const ARG0_HI: u32 = 20;

/// What the worker may do, and from where.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Allowed {
    /// The RIP right after the `syscall` of the worker's stub.
    pub stub: u64,
    /// The RIP right after the `syscall` of the signal restorer.
    pub restorer: u64,
    /// The worker's socket.
    pub fd: u32,
}

fn ld(k: u32) -> SockFilter {
    SockFilter {
        code: BPF_LD_W_ABS,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}

fn ret(k: u32) -> SockFilter {
    SockFilter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The filter program.
pub(crate) fn program(a: &Allowed) -> Vec<SockFilter> {
    let lo = |x: u64| x as u32;
    let hi = |x: u64| (x >> 32) as u32;
    // Jumps are relative; the layout is fixed, so they are written out,
    // and the tests run the program through an interpreter.
    vec![
        /* 0 */ ld(ARCH),
        /* 1 */ jeq(AUDIT_ARCH_X86_64, 0, 19), // -> 21 trap
        /* 2 */ ld(IP_HI),
        /* 3 */ jeq(hi(a.stub), 0, 2), // -> 6 restorer?
        /* 4 */ ld(IP_LO),
        /* 5 */ jeq(lo(a.stub), 7, 0), // -> 13 the stub's calls
        /* 6 */ ld(IP_HI),
        /* 7 */ jeq(hi(a.restorer), 0, 13), // -> 21 trap
        /* 8 */ ld(IP_LO),
        /* 9 */ jeq(lo(a.restorer), 0, 11), // -> 21 trap
        /* 10 */ ld(NR),
        /* 11 */ jeq(libc::SYS_rt_sigreturn as u32, 8, 9), // -> 20 allow, 21 trap
        /* 12 */ ret(RET_TRAP),
        /* 13 */ ld(NR),
        /* 14 */ jeq(libc::SYS_exit_group as u32, 5, 0), // -> 20 allow
        /* 15 */ jeq(libc::SYS_arch_prctl as u32, 4, 0), // -> 20 allow
        /* 16 */ jeq(libc::SYS_read as u32, 1, 0), // -> 18 fd?
        /* 17 */ jeq(libc::SYS_write as u32, 0, 4), // -> 22 kill
        // read and write take an unsigned int: the low half is the fd.
        /* 18 */
        ld(ARG0_LO),
        /* 19 */ jeq(a.fd, 0, 2), // -> 22 kill
        /* 20 */ ret(RET_ALLOW),
        /* 21 */ ret(RET_TRAP),
        /* 22 */ ret(RET_KILL_PROCESS),
    ]
}

/// Runs `prog` on one `seccomp_data` (a small interpreter of the
/// instructions `program` uses), for tests.
#[cfg(test)]
pub(crate) fn eval(prog: &[SockFilter], nr: u32, arch: u32, ip: u64, arg0: u64) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            NR => nr,
            ARCH => arch,
            IP_LO => ip as u32,
            IP_HI => (ip >> 32) as u32,
            ARG0_LO => arg0 as u32,
            ARG0_HI => (arg0 >> 32) as u32,
            _ => panic!("offset {off}"),
        }
    };
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        match i.code {
            BPF_LD_W_ABS => {
                acc = word(i.k);
                pc += 1;
            }
            BPF_JEQ_K => {
                pc += 1 + if acc == i.k { i.jt } else { i.jf } as usize;
            }
            BPF_RET_K => return i.k,
            c => panic!("opcode {c:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Allowed = Allowed {
        stub: 0x5555_0000_1234,
        restorer: 0x5555_0000_5678,
        fd: 7,
    };

    #[test]
    fn the_worker_may_use_its_socket_and_little_else() {
        let p = program(&A);
        let x64 = AUDIT_ARCH_X86_64;
        let nr = |n: i64| n as u32;
        for (call, fd, want) in [
            (libc::SYS_read, 7, RET_ALLOW),
            (libc::SYS_write, 7, RET_ALLOW),
            (libc::SYS_write, 1, RET_KILL_PROCESS),
            (libc::SYS_read, 0, RET_KILL_PROCESS),
            (libc::SYS_exit_group, 0, RET_ALLOW),
            (libc::SYS_arch_prctl, 0x1002, RET_ALLOW),
            (libc::SYS_mmap, 0, RET_KILL_PROCESS),
            (libc::SYS_kill, 0, RET_KILL_PROCESS),
            (libc::SYS_rt_sigreturn, 0, RET_KILL_PROCESS),
        ] {
            assert_eq!(eval(&p, nr(call), x64, A.stub, fd), want, "stub {call}");
        }
        assert_eq!(
            eval(&p, nr(libc::SYS_rt_sigreturn), x64, A.restorer, 0),
            RET_ALLOW
        );
        assert_eq!(eval(&p, nr(libc::SYS_write), x64, A.restorer, 7), RET_TRAP);
    }

    #[test]
    fn calls_from_anywhere_else_trap() {
        let p = program(&A);
        for (nr, arch, ip) in [
            (libc::SYS_exit_group as u32, AUDIT_ARCH_X86_64, 0x7102),
            (libc::SYS_write as u32, AUDIT_ARCH_X86_64, 0x7102),
            (libc::SYS_rt_sigreturn as u32, AUDIT_ARCH_X86_64, 0x7102),
            // Same low half as the stub, another high half.
            (libc::SYS_read as u32, AUDIT_ARCH_X86_64, 0x1234),
            (libc::SYS_rt_sigreturn as u32, AUDIT_ARCH_X86_64, 0x5678),
            // A 32-bit call (INT 0x80) from the stub's very address.
            (1, AUDIT_ARCH_I386, A.stub),
            (252, AUDIT_ARCH_I386, 0x7102),
        ] {
            assert_eq!(
                eval(&p, nr, arch, ip, 7),
                RET_TRAP,
                "{nr} {arch:#x} {ip:#x}"
            );
        }
    }
}
