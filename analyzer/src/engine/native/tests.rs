//! Tests of the native engine. The pure parts (the outcome of an answer,
//! host facts, configurations) run everywhere; the runs need the worker
//! (the harness's pages mapped low in a forked child) and print
//! `skipped: <reason>` where it cannot start.

use super::*;
use crate::catalog;
use crate::engine::unicorn::UnicornEngine;
use crate::machine::{Gpr, Setup, Sym, DATA, STACK, TEST_RIP};
use crate::observe::USER_FLAGS_MASK;

/// The configuration the host has (UMIP as the kernel set it).
fn host_config() -> Config {
    if HostFacts::read().umip {
        Config::UMIP_ON
    } else {
        Config::UMIP_OFF
    }
}

fn engine(test: &str) -> Option<NativeEngine> {
    match NativeEngine::new() {
        Ok(e) => Some(e),
        Err(e) => {
            println!("skipped: {test}: {e}");
            None
        }
    }
}

fn image() -> GuestImage {
    let cfg = host_config();
    GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg))
}

fn run_with(e: &mut NativeEngine, bytes: &[u8], setup: &Setup) -> Observation {
    let img = image();
    let p = img.prepare(Side::User, bytes, setup).unwrap();
    e.run(&img, Side::User, &p)
}

fn run(e: &mut NativeEngine, bytes: &[u8]) -> Observation {
    run_with(e, bytes, &Setup::default())
}

fn trap(vector: u8, error_code: Option<u32>, rip: u64) -> Outcome {
    Outcome::Trap {
        vector,
        error_code,
        rip,
        address: None,
    }
}

fn regs(r: &[(Gpr, u64)]) -> Setup {
    Setup {
        regs: r.iter().map(|(g, v)| (*g, Sym::Imm(*v))).collect(),
        ..Setup::default()
    }
}

#[test]
fn faults_are_outcomes_and_add_completes() {
    let Some(mut e) = engine("faults_are_outcomes_and_add_completes") else {
        return;
    };
    assert_eq!(run(&mut e, &[0xF4]).outcome, trap(13, Some(0), TEST_RIP));
    assert_eq!(run(&mut e, &[0x0F, 0x0B]).outcome, trap(6, None, TEST_RIP));
    // INT3 traps after itself.
    assert_eq!(run(&mut e, &[0xCC]).outcome, trap(3, None, TEST_RIP + 1));
    // div rcx with rcx = 0.
    let o = run_with(&mut e, &[0x48, 0xF7, 0xF1], &regs(&[(Gpr::Rcx, 0)]));
    assert_eq!(o.outcome, trap(0, None, TEST_RIP));
    // mov rax, [0]: no page there.
    let o = run(&mut e, &[0x48, 0x8B, 0x04, 0x25, 0, 0, 0, 0]);
    assert!(
        matches!(o.outcome, Outcome::Trap { vector: 14, error_code: Some(ec), rip: TEST_RIP, address: Some(0) } if ec & 4 != 0),
        "{o:?}"
    );
    // add rax, rcx: 0x11 + 2.
    let o = run(&mut e, &[0x48, 0x01, 0xC8]);
    assert_eq!(
        o.outcome,
        Outcome::Completed {
            rip: TEST_RIP + 3,
            at_sentinel: true
        }
    );
    let u = o.user.expect("a completed run has its user state");
    assert_eq!(u.gprs[0], 0x13);
    assert_eq!(u.gprs[1], 2);
    assert_eq!(u.rip, TEST_RIP + 3);
    let after = o.after.expect("and its system state");
    assert_eq!(after.cpl, 3);
    assert_eq!(o.before.cpl, 3);
    assert_eq!(after.sys_flags, o.before.sys_flags);
}

#[test]
fn the_stack_and_data_pages_are_the_harness_pages() {
    let Some(mut e) = engine("the_stack_and_data_pages_are_the_harness_pages") else {
        return;
    };
    // push rax; mov [rbx], rcx (rbx = DATA + 0x180).
    let o = run(&mut e, &[0x50, 0x48, 0x89, 0x0B]);
    assert!(o.outcome.is_completed(), "{o:?}");
    let u = o.user.unwrap();
    let sp = (crate::machine::STACK_PTR - 8 - STACK) as usize;
    assert_eq!(&u.stack[sp..sp + 8], &0x11u64.to_le_bytes());
    assert_eq!(u.gprs[4], crate::machine::STACK_PTR - 8);
    let d = (0x180u64) as usize;
    assert_eq!(&u.data[d..d + 8], &2u64.to_le_bytes());
    // The next run starts from the test's own pages again.
    let o = run(&mut e, &[0x90]);
    let u = o.user.unwrap();
    assert_eq!(u.data[d], crate::machine::data_fill(d));
    let _ = DATA;
}

#[test]
fn system_calls_are_transfers_that_harm_nothing() {
    let Some(mut e) = engine("system_calls_are_transfers_that_harm_nothing") else {
        return;
    };
    let pid = e.worker_pid();
    let syscall = [0x0F, 0x05];
    let want = Outcome::Transfer {
        kind: TransferKind::Syscall,
        rip: TEST_RIP + 2,
        cpl: None,
    };
    for r in [
        regs(&[(Gpr::Rax, libc::SYS_exit_group as u64), (Gpr::Rdi, 0)]),
        // kill(0, SIGKILL): the whole process group, this test included.
        regs(&[
            (Gpr::Rax, libc::SYS_kill as u64),
            (Gpr::Rdi, 0),
            (Gpr::Rsi, 9),
        ]),
        // write(fd, ...) on the worker's socket and on stdout.
        regs(&[(Gpr::Rax, libc::SYS_write as u64), (Gpr::Rdi, 1)]),
        regs(&[(Gpr::Rax, libc::SYS_rt_sigreturn as u64)]),
    ] {
        assert_eq!(run_with(&mut e, &syscall, &r).outcome, want);
    }
    // INT 0x80 with eax = 1 (exit in the 32-bit ABI).
    let o = run_with(&mut e, &[0xCD, 0x80], &regs(&[(Gpr::Rax, 1)]));
    assert_eq!(
        o.outcome,
        Outcome::Transfer {
            kind: TransferKind::Interrupt(0x80),
            rip: TEST_RIP + 2,
            cpl: None
        }
    );
    // SYSENTER: a 32-bit system call on Intel, #UD in long mode on AMD.
    let o = run(&mut e, &[0x0F, 0x34]);
    assert!(
        matches!(
            o.outcome,
            Outcome::Transfer {
                kind: TransferKind::Sysenter,
                ..
            } | Outcome::Trap { vector: 6, .. }
        ),
        "{o:?}"
    );
    assert_eq!(e.worker_pid(), pid, "the worker survived");
    assert!(run(&mut e, &[0x48, 0x01, 0xC8]).outcome.is_completed());
}

#[test]
fn writes_outside_the_pages_fault() {
    let Some(mut e) = engine("writes_outside_the_pages_fault") else {
        return;
    };
    let pid = e.worker_pid();
    for addr in [0x5000u32, 0xA000, 0x6FF8, 0x10_0000] {
        // mov [addr], rax
        let mut b = vec![0x48, 0x89, 0x04, 0x25];
        b.extend_from_slice(&addr.to_le_bytes());
        let o = run(&mut e, &b);
        assert!(
            matches!(
                o.outcome,
                Outcome::Trap {
                    vector: 14,
                    rip: TEST_RIP,
                    ..
                }
            ),
            "{addr:#x}: {o:?}"
        );
    }
    // A push with RSP at the bottom of the code page (below it: nothing).
    let o = run_with(&mut e, &[0x50], &regs(&[(Gpr::Rsp, CODE)]));
    assert!(
        matches!(o.outcome, Outcome::Trap { vector: 14, .. }),
        "{o:?}"
    );
    assert_eq!(e.worker_pid(), pid);
    assert!(run(&mut e, &[0x90]).outcome.is_completed());
}

#[test]
fn a_hang_and_a_dead_worker_are_reported_and_the_worker_restarts() {
    let Some(mut e) = engine("a_hang_and_a_dead_worker_are_reported") else {
        return;
    };
    // jmp $
    assert_eq!(run(&mut e, &[0xEB, 0xFE]).outcome, Outcome::Hang);
    assert!(run(&mut e, &[0x90]).outcome.is_completed());
    let pid = e.worker_pid().unwrap();
    // SAFETY: kills the worker this engine forked (a test of its death).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(20));
    match run(&mut e, &[0x90]).outcome {
        Outcome::EngineError(t) => assert!(t.contains("SIGKILL"), "{t}"),
        o => panic!("{o:?}"),
    }
    assert!(run(&mut e, &[0x90]).outcome.is_completed());
    assert_ne!(e.worker_pid(), Some(pid));
}

#[test]
fn what_the_engine_cannot_set_is_not_supported() {
    let Some(mut e) = engine("what_the_engine_cannot_set_is_not_supported") else {
        return;
    };
    let cfg = host_config();
    let img = image();
    let p = img
        .prepare(Side::Supervisor, &[0x90], &Setup::default())
        .unwrap();
    let not = |o: Observation| matches!(o.outcome, Outcome::NotSupported(_));
    assert!(not(e.run(&img, Side::Supervisor, &p)));
    let img32 = GuestImage::build(Mode::Prot32, cfg, Variant::base(&cfg));
    let p = img32
        .prepare(Side::User, &[0x90], &Setup::default())
        .unwrap();
    assert!(not(e.run(&img32, Side::User, &p)));
    let c32 = GuestImage::build(Mode::Compat32, cfg, Variant::base(&cfg));
    let p = c32
        .prepare(Side::Supervisor, &[0x90], &Setup::default())
        .unwrap();
    assert!(not(e.run(&c32, Side::Supervisor, &p)));
    for v in Variant::matrix(Mode::Long64, &cfg).into_iter().skip(1) {
        let img = GuestImage::build(Mode::Long64, cfg, v);
        let p = img.prepare(Side::User, &[0x90], &Setup::default()).unwrap();
        assert!(not(e.run(&img, Side::User, &p)), "{}", v.name(&cfg));
    }
    let other = if cfg.umip {
        Config::UMIP_OFF
    } else {
        Config::UMIP_ON
    };
    let img = GuestImage::build(Mode::Long64, other, Variant::base(&other));
    let p = img.prepare(Side::User, &[0x90], &Setup::default()).unwrap();
    assert!(not(e.run(&img, Side::User, &p)));
}

#[test]
fn the_host_agrees_with_unicorn_on_simple_alu_instructions() {
    let Some(mut native) = engine("the_host_agrees_with_unicorn") else {
        return;
    };
    let mut uni = UnicornEngine::new().expect("unicorn");
    let img = image();
    const ALU: [&str; 22] = [
        "add", "sub", "adc", "sbb", "and", "or", "xor", "cmp", "test", "mov", "lea", "inc", "dec",
        "neg", "not", "movzx", "movsx", "movsxd", "xchg", "bswap", "shl", "imul",
    ];
    let cat = catalog::build(Mode::Long64);
    let mut compared = 0;
    let mut alu = 0;
    let mut differ = Vec::new();
    let mut outcomes = Vec::new();
    for entry in cat.entries.iter().filter(|e| !e.bytes.is_empty()) {
        let Some(p) = img.prepare(Side::User, &entry.bytes, &entry.setup) else {
            continue;
        };
        let a = native.run(&img, Side::User, &p);
        let b = uni.run(&img, Side::User, &p);
        if a.outcome.short() != b.outcome.short()
            && !(a.outcome.is_trap_like() && b.outcome.is_trap_like())
        {
            outcomes.push(format!(
                "{} ({}): native {} unicorn {}",
                entry.form,
                entry.code,
                a.outcome.short(),
                b.outcome.short()
            ));
        }
        let (Some(ua), Some(ub)) = (&a.user, &b.user) else {
            continue;
        };
        compared += 1;
        let mut d = iced_x86::Decoder::new(64, &entry.bytes, 0);
        let undefined = crate::observe::rflags_bits(d.decode().rflags_undefined());
        let mask = USER_FLAGS_MASK & !undefined;
        let same = ua.gprs == ub.gprs
            && ua.rip == ub.rip
            && ua.flags & mask == ub.flags & mask
            && ua.data == ub.data
            && ua.stack == ub.stack;
        let text = entry.form.to_ascii_lowercase();
        let is_alu = ALU.contains(&entry.mnemonic.as_str())
            && !["cs", "ds", "es", "fs", "gs", "ss", "cr", "dr"]
                .iter()
                .any(|r| {
                    text.split(|c: char| !c.is_ascii_alphanumeric())
                        .any(|w| w == *r)
                });
        if is_alu {
            alu += 1;
        }
        if !same {
            differ.push((is_alu, format!("{} ({})", entry.form, entry.code)));
        }
    }
    println!(
        "native vs unicorn, 64-bit cpl3 base: {compared} completed on both ({alu} simple ALU), \
         {} with other user-visible results, {} with other outcomes",
        differ.len(),
        outcomes.len()
    );
    for (_, d) in &differ {
        println!("  results differ: {d}");
    }
    for o in &outcomes {
        println!("  outcomes differ: {o}");
    }
    assert!(alu > 200, "only {alu} simple ALU entries completed on both");
    let alu_differ: Vec<_> = differ.iter().filter(|(a, _)| *a).map(|(_, t)| t).collect();
    assert!(alu_differ.is_empty(), "{alu_differ:#?}");
}

fn answer(signo: i32, si_code: i64, trapno: u64, err: u64, rip: u64) -> Response {
    Response {
        kind: SIGNALLED,
        signo: signo as u64,
        si_code,
        trapno,
        err,
        rip,
        ..Response::default()
    }
}

fn prepared(bytes: &[u8]) -> Prepared {
    image()
        .prepare(Side::User, bytes, &Setup::default())
        .unwrap()
}

#[test]
fn answers_become_outcomes() {
    let t = prepared(&[0x90]);
    let s = t.sentinel;
    // The sentinel's #GP(0) is a completion; the test's own is a trap.
    assert_eq!(
        outcome(&t, &answer(libc::SIGSEGV, SI_KERNEL, 13, 0, s)),
        Outcome::Completed {
            rip: s,
            at_sentinel: true
        }
    );
    assert_eq!(
        outcome(&t, &answer(libc::SIGSEGV, SI_KERNEL, 13, 0, TEST_RIP)),
        trap(13, Some(0), TEST_RIP)
    );
    let mut pf = answer(libc::SIGSEGV, 1, 14, 6, TEST_RIP);
    pf.si_addr = 0x1234;
    assert_eq!(
        outcome(&t, &pf),
        Outcome::Trap {
            vector: 14,
            error_code: Some(6),
            rip: TEST_RIP,
            address: Some(0x1234),
        }
    );
    assert_eq!(
        outcome(&t, &answer(libc::SIGBUS, 1, 17, 0, TEST_RIP)),
        trap(17, Some(0), TEST_RIP)
    );
    // A signal some process sent is no outcome of the test.
    assert!(matches!(
        outcome(&t, &answer(libc::SIGSEGV, 0, 13, 0, s)),
        Outcome::EngineError(_)
    ));
    // A vector the signal never reports.
    assert!(matches!(
        outcome(&t, &answer(libc::SIGILL, 2, 13, 0, TEST_RIP)),
        Outcome::EngineError(_)
    ));
    let sys = |arch: u32, bytes: &[u8]| {
        let t = prepared(bytes);
        let mut r = answer(libc::SIGSYS, SYS_SECCOMP, 0, 0, TEST_RIP + 2);
        r.sys_arch = u64::from(arch);
        outcome(&t, &r)
    };
    let kind = |o: Outcome| match o {
        Outcome::Transfer {
            kind, cpl: None, ..
        } => Some(kind),
        _ => None,
    };
    assert_eq!(
        kind(sys(seccomp::AUDIT_ARCH_X86_64, &[0x0F, 0x05])),
        Some(TransferKind::Syscall)
    );
    assert_eq!(
        kind(sys(seccomp::AUDIT_ARCH_I386, &[0xCD, 0x80])),
        Some(TransferKind::Interrupt(0x80))
    );
    assert_eq!(
        kind(sys(seccomp::AUDIT_ARCH_I386, &[0x0F, 0x34])),
        Some(TransferKind::Sysenter)
    );
}

#[test]
fn host_facts_and_configurations() {
    let f = HostFacts::parse(
        "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Xeon\n\
         stepping\t: 7\nmicrocode\t: 0x5003604\nflags\t\t: fpu umip sse\n\nvendor_id : other\n",
    );
    assert_eq!(f.vendor, "GenuineIntel");
    assert_eq!((f.family.as_str(), f.model.as_str()), ("6", "85"));
    assert!(f.umip);
    assert!(f
        .text()
        .contains("microcode 0x5003604, UMIP on in the kernel"));
    assert!(!HostFacts::parse("flags : fpu umipx\n").umip);
    assert_eq!(config_unsupported(&Config::UMIP_ON, true), None);
    assert!(config_unsupported(&Config::UMIP_OFF, true).is_some());
    assert!(config_unsupported(&Config::UMIP_ON, false).is_some());
}

#[test]
fn lengths_by_the_page_boundary_are_the_manuals() {
    let Some(mut e) = engine("lengths_by_the_page_boundary_are_the_manuals") else {
        return;
    };
    let failed = crate::engine::conformance::check_lengths(
        &mut e,
        Mode::Long64,
        host_config(),
        &[Side::User],
        &[],
    );
    assert!(failed.is_empty());
}

/// 32-bit compatibility mode on the host CPU, entered in the kernel's
/// 32-bit user code segment (where the kernel has one): PUSH CS moves ESP
/// by 4, writes that selector (the slot's upper half as the vendor's
/// manual says) and ends at the sentinel, a 32-bit write zeroes
/// nothing above (the registers are read as the mode sees them), MOV EAX,
/// CR0 is #GP(0) at the instruction, INT 0x80 is a transfer recorded at
/// the sentinel, and so is SYSCALL where the vendor allows it there (AMD),
/// and the results match Unicorn's where both model the instruction.
#[test]
fn compatibility_mode_runs_in_the_kernel_s_32_bit_code_segment() {
    let test = "compatibility_mode_runs_in_the_kernel_s_32_bit_code_segment";
    let Some(mut e) = engine(test) else {
        return;
    };
    if !e.user32_cs {
        println!("skipped: {test}: the kernel has no 32-bit user code segment");
        return;
    }
    let cfg = host_config();
    let img = GuestImage::build(Mode::Compat32, cfg, Variant::base(&cfg));
    let run32 = |e: &mut dyn Engine, bytes: &[u8]| {
        let p = img.prepare(Side::User, bytes, &Setup::default()).unwrap();
        e.run(&img, Side::User, &p)
    };
    let o = run32(&mut e, &[0x0E]);
    assert!(
        matches!(
            o.outcome,
            Outcome::Completed {
                at_sentinel: true,
                ..
            }
        ),
        "{:?}",
        o.outcome
    );
    assert_eq!(o.before.segs[0].selector, USER32_CS as u16);
    let u = o.user.as_ref().expect("user state");
    let at = (crate::machine::STACK_PTR - 4 - STACK) as usize;
    assert_eq!(u.gprs[4], crate::machine::STACK_PTR - 4);
    // The low 16 bits are the selector. Above them the vendors differ, as
    // the manuals say: AMD zero-extends the selector to the operand size;
    // recent Intel CPUs write it with a 16-bit move and leave the rest of
    // the slot as it was (the harness's stack fill).
    let slot = u32::from_le_bytes(u.stack[at..at + 4].try_into().unwrap());
    assert_eq!(slot as u16, USER32_CS as u16, "slot {slot:#010x}");
    let kept = u32::from_le_bytes([
        0,
        0,
        crate::machine::stack_fill(at + 2),
        crate::machine::stack_fill(at + 3),
    ]);
    match crate::host::cpu_vendor() {
        crate::host::Vendor::Amd => assert_eq!(slot >> 16, 0, "slot {slot:#010x}"),
        crate::host::Vendor::Intel => {
            assert_eq!(slot & 0xFFFF_0000, kept, "slot {slot:#010x}")
        }
        crate::host::Vendor::Other => assert!(
            slot >> 16 == 0 || slot & 0xFFFF_0000 == kept,
            "slot {slot:#010x}"
        ),
    }
    assert!(u.gprs[8..].iter().all(|&g| g == 0));
    let o = run32(&mut e, &[0x0F, 0x20, 0xC0]);
    assert_eq!(o.outcome, trap(13, Some(0), TEST_RIP));
    let transfer = |kind| Outcome::Transfer {
        kind,
        rip: TEST_RIP + 2,
        cpl: None,
    };
    // SYSCALL outside 64-bit mode: AMD's manual allows it in compatibility
    // mode, Intel's makes it #UD there.
    let syscall = run32(&mut e, &[0x0F, 0x05]).outcome;
    let (transferred, ud) = (transfer(TransferKind::Syscall), trap(6, None, TEST_RIP));
    match crate::host::cpu_vendor() {
        crate::host::Vendor::Amd => assert_eq!(syscall, transferred),
        crate::host::Vendor::Intel => assert_eq!(syscall, ud),
        crate::host::Vendor::Other => {
            assert!(syscall == transferred || syscall == ud, "{syscall:?}")
        }
    }
    let o = run32(&mut e, &[0xCD, 0x80]);
    assert_eq!(o.outcome, transfer(TransferKind::Interrupt(0x80)));
    // add eax, ebx and a store: as on Unicorn.
    let mut uc = UnicornEngine::new().unwrap();
    for bytes in [&[0x01, 0xD8][..], &[0x89, 0x03][..], &[0x9C][..]] {
        let n = run32(&mut e, bytes);
        let u = run32(&mut uc, bytes);
        assert_eq!(n.outcome, u.outcome, "{bytes:02x?}");
        let (n, u) = (n.user.unwrap(), u.user.unwrap());
        assert_eq!(n.gprs, u.gprs, "{bytes:02x?}");
        assert_eq!(n.data, u.data, "{bytes:02x?}");
        assert_eq!(n.stack, u.stack, "{bytes:02x?}");
    }
}

#[test]
fn the_report_header_says_whether_the_kernel_emulates_the_umip_instructions() {
    let test = "the_report_header_says_whether_the_kernel_emulates_the_umip_instructions";
    let Some(mut e) = engine(test) else {
        return;
    };
    let version = e.version();
    if !e.facts().umip {
        println!("skipped: {test}: the kernel runs without CR4.UMIP");
        assert!(!version.contains("SMSW"), "{version}");
        return;
    }
    // What the header says is what SMSW does at CPL 3 here, in every form.
    for bytes in [&[0x0f, 0x01, 0xe0][..], &[0x48, 0x0f, 0x01, 0xe0]] {
        match run(&mut e, bytes).outcome {
            Outcome::Completed { .. } => {
                assert!(version.contains("the kernel emulates SGDT"), "{version}")
            }
            Outcome::Trap { vector: 13, .. } => {
                assert!(version.contains("raise #GP at CPL 3"), "{version}")
            }
            other => panic!("SMSW at CPL 3: {other:?}"),
        }
    }
}
