//! The KVM engine's end-to-end tests (each prints `skipped: <reason>` where
//! KVM is not usable; POPEK_REQUIRE_KVM=1 makes that a failure), and the
//! helpers the other modules' KVM tests share.

use super::super::conformance::{completed, is_gp, NONE};
use super::*;
use crate::machine::{entry, sel, Setup, Sym, SEG_SHIFT, STACK, TEST_RIP};
use crate::observe::TransferKind;
use std::time::Instant;

/// The engine, or `None` (test skipped) when KVM is not usable here;
/// with POPEK_REQUIRE_KVM=1 a missing KVM fails the test instead.
pub(super) fn engine() -> Option<KvmEngine> {
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

/// A run of `bytes` in the image of `mode`, `cfg` and `v`.
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
    // The decoder's facts, as the catalog gives them (the software-interrupt vector).
    let setup = Setup {
        soft_interrupt: crate::explain::entry_from_bytes(bytes, mode)
            .ok()
            .and_then(|x| x.setup.soft_interrupt),
        ..setup.clone()
    };
    let p = img.prepare(side, bytes, &setup).unwrap();
    e.run(&img, side, &p)
}

/// A run of `bytes` in the base image of `mode` (umip=off).
pub(super) fn base(
    e: &mut KvmEngine,
    mode: Mode,
    side: Side,
    bytes: &[u8],
    setup: &Setup,
) -> Observation {
    let cfg = Config::UMIP_OFF;
    run_on(e, mode, cfg, Variant::base(&cfg), side, bytes, setup)
}

fn flavor_is_pvm(e: &KvmEngine) -> bool {
    e.flavor() == Flavor::Pvm
}

#[test]
fn open_gives_the_kvm_engine_with_its_flavor() {
    let Some(e) = engine() else { return };
    let v = e.version();
    assert!(v.starts_with("kvm api 12, flavor "), "{v}");
    assert!(
        v.contains(&format!("flavor {} on ", e.flavor().name())),
        "{v}"
    );
    // On PVM the header says which side the emulator ran.
    assert_eq!(
        v.contains("CPL 0 runs in KVM's instruction emulator"),
        e.flavor() == Flavor::Pvm,
        "{v}"
    );
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
    for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64, Mode::Compat32] {
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
    for mode in [Mode::Prot16, Mode::Long64, Mode::Compat32] {
        super::super::conformance::check_popf(&mut e, mode);
    }
}

#[test]
fn compatibility_mode_is_32_bit_code_in_a_long_mode_guest() {
    // Where 32-bit protected mode cannot run (PVM), this is how 32-bit code
    // runs; on VT-x and SVM it runs beside mode 32.
    let Some(mut e) = engine() else { return };
    let umip = e.offers_umip();
    super::super::conformance::check_compat_mode_facts(&mut e, umip);
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
    for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64, Mode::Compat32] {
        if mode == Mode::Prot32 && flavor_is_pvm(&e) {
            // Measured on PVM: every 32-bit paged guest shuts down.
            let s = base(&mut e, mode, Side::Supervisor, &[0x01, 0xD8], &NONE);
            assert!(
                matches!(s.outcome, Outcome::NotSupported(_)),
                "{:?}",
                s.outcome
            );
            continue;
        }
        super::super::conformance::check_add_is_the_same_at_both_cpls(&mut e, mode);
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
    // 16-bit protected mode with the segment bases shifted: the #GP frame
    // of the sentinel at CPL 3 is written at linear ESP, ignoring the SS
    // base; the engine reads it there.
    let cfg = Config::UMIP_OFF;
    let shifted = Variant {
        seg_shifted: true,
        ..Variant::base(&cfg)
    };
    let o = run_on(
        &mut e,
        Mode::Prot16,
        cfg,
        shifted,
        Side::User,
        &[0x90],
        &NONE,
    );
    assert!(completed(&o), "{:?}", o.outcome);
    let esp = e.guest.vcpu.get_regs().unwrap().rsp & 0xFFFF;
    let cs_slot = |at: u64| {
        let at = (at + 8) as usize;
        u16::from_le_bytes([e.guest.mem()[at], e.guest.mem()[at + 1]])
    };
    assert_eq!(cs_slot(esp), sel::UCODE, "frame at linear esp {esp:#x}");
    assert_ne!(cs_slot(SEG_SHIFT + esp), sel::UCODE, "no frame at ss:esp");
    // The next run starts with the image's bytes there again (so a frame
    // found there is its own): a CPL-0 NOP, which pushes no frame.
    let o = run_on(
        &mut e,
        Mode::Prot16,
        cfg,
        shifted,
        Side::Supervisor,
        &[0x90],
        &NONE,
    );
    assert!(completed(&o), "{:?}", o.outcome);
    let img = GuestImage::build(Mode::Prot16, cfg, shifted);
    let at = esp as usize..esp as usize + 24;
    assert_eq!(
        e.guest.mem()[at.clone()],
        img.memory[at],
        "stale frame at linear esp"
    );
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

/// `mov cx, ds` (fs, gs) at CPL 3 in 64-bit mode reads the harness's user
/// data selector, whatever ran before: also after runs that loaded other
/// selectors into DS, FS and GS, whose after-states show those loads. (On
/// PVM the vCPU thread holds the run's selectors during KVM_RUN; afterwards
/// it has its own back.)
#[test]
fn data_segment_selectors_at_cpl3_are_the_harness_s_whatever_ran_before() {
    let Some(mut e) = engine() else { return };
    let cfg = Config::UMIP_OFF;
    let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
    let want = img.entry(Side::User).unwrap().segs[2].selector;
    assert_eq!(want, crate::machine::sel::UDATA);
    // mov ax, 0x33 / 0x2b; mov ds, ax; mov fs, ax; mov gs, ax
    let loads: [&[u8]; 2] = [
        &[0x66, 0xB8, 0x33, 0x00, 0x8E, 0xD8, 0x8E, 0xE0, 0x8E, 0xE8],
        &[0x66, 0xB8, 0x2B, 0x00, 0x8E, 0xD8, 0x8E, 0xE0, 0x8E, 0xE8],
    ];
    // mov cx, ds / fs / gs
    let reads: [(&str, &[u8]); 3] = [
        ("ds", &[0x66, 0x8C, 0xD9]),
        ("fs", &[0x66, 0x8C, 0xE1]),
        ("gs", &[0x66, 0x8C, 0xE9]),
    ];
    let own = hostsegs::current();
    for round in 0..3 {
        for load in loads {
            for side in Side::BOTH {
                let o = base(&mut e, Mode::Long64, side, load, &NONE);
                if let (Side::User, Some(after)) = (side, &o.after) {
                    // The after-state shows the loads (PVM: from the thread).
                    let sel = u16::from_le_bytes([load[2], load[3]]);
                    for i in [2, 4, 5] {
                        assert_eq!(after.segs[i].selector, sel, "{load:02x?} seg {i}");
                    }
                    assert_eq!(after.segs[3].selector, want, "{load:02x?} es");
                }
            }
            for (name, bytes) in reads {
                let o = base(&mut e, Mode::Long64, Side::User, bytes, &NONE);
                if let Outcome::NotSupported(why) = &o.outcome {
                    assert!(flavor_is_pvm(&e) && why.contains("FSGSBASE"), "{why}");
                    println!("skipped: {why}");
                    return;
                }
                assert!(completed(&o), "{name}: {:?}", o.outcome);
                assert_eq!(o.before.segs[2].selector, want);
                let got = o.user.unwrap().gprs[1] & 0xFFFF;
                assert_eq!(
                    got, want as u64,
                    "round {round}, after {load:02x?}: mov cx, {name} read {got:#x}"
                );
            }
        }
    }
    // The vCPU thread has its own selectors back.
    assert_eq!(hostsegs::current(), own);
}

#[test]
fn every_variant_boots_on_both_sides_and_runs_a_nop() {
    use crate::engine::conformance::{check_every_state_runs_a_nop, NopRun};
    let Some(mut e) = engine() else { return };
    let pvm = flavor_is_pvm(&e);
    check_every_state_runs_a_nop(&mut e, &|img, side, o| {
        let (mode, v) = (img.mode, img.variant);
        if (pvm && mode == Mode::Prot32) || (v.supervisor_dpl != 0 && !img.has_exit_stubs()) {
            // PVM shuts down 32-bit paged guests; ring compression runs in
            // long-mode images only (exit stubs).
            assert!(
                matches!(o.outcome, Outcome::NotSupported(_)),
                "{:?}",
                o.outcome
            );
            return NopRun::Handled;
        }
        let iopl = (o.before.sys_flags >> 12) & 3;
        if pvm && mode == Mode::Long64 && side == Side::User && iopl != 0 {
            // Measured on PVM: the RFLAGS in the #GP frame of the sentinel
            // (the after-state at CPL 3) has IOPL 0 although the guest runs
            // with IOPL 3.
            return NopRun::IoplDroppedAfter;
        }
        NopRun::Standard
    });
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
            rip: crate::machine::TEST_RIP,
            address: Some(0),
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
    call_gate_arrives(flavor_is_pvm(&e), &o, 0, "16-bit cpl3");
}

/// A far call through the harness's call gate arrived at its entry point
/// at `cpl` (on hardware); measured on PVM: #UD at the instruction.
fn call_gate_arrives(pvm: bool, o: &Observation, cpl: u8, what: &str) {
    if pvm {
        let ud = Outcome::Trap {
            vector: 6,
            error_code: None,
            rip: TEST_RIP,
            address: None,
        };
        assert_eq!(o.outcome, ud, "{what}");
    } else {
        assert!(
            matches!(
                o.outcome,
                Outcome::Transfer {
                    kind: TransferKind::CallGate,
                    cpl: Some(c),
                    ..
                } if c == cpl
            ),
            "{what}: {:?}",
            o.outcome
        );
    }
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

#[test]
fn errors_name_the_failed_action_and_keep_their_source() {
    use std::error::Error;
    let e = KvmError::SetSregs(Errno::new(libc::EINVAL));
    assert_eq!(
        e.source().map(|s| s.to_string()),
        Some(Errno::new(libc::EINVAL).to_string())
    );
    let text = EngineError::from(e).to_string();
    assert!(text.starts_with("kvm: set sregs failed: "), "{text}");
    assert_eq!(
        EngineError::from(KvmError::MsrRefused(0xC000_0080)).to_string(),
        "kvm: set msrs failed: KVM refused MSR 0xc0000080"
    );
}

#[test]
fn lengths_by_the_page_boundary_are_the_manuals() {
    let Some(mut e) = engine() else { return };
    // On PVM CPL 0 runs in KVM's instruction emulator, which fails on
    // some of these at the end of a page (not measured, never another
    // length); CPL 3 runs on the CPU.
    let pvm = flavor_is_pvm(&e);
    let may_fail: &[Side] = if pvm { &[Side::Supervisor] } else { &[] };
    let failed = crate::engine::conformance::check_lengths(
        &mut e,
        Mode::Long64,
        Config::UMIP_OFF,
        &Side::BOTH,
        may_fail,
    );
    for f in &failed {
        println!("not measured on PVM's emulator: {f}");
    }
}

#[test]
fn page_tables_the_engine_changes_take_effect() {
    // The fenced image differs from the base one only by NX on the data
    // page's entry, at the same physical page: after runs in the base
    // image, a fetch into the data page must fault in the fenced one.
    let Some(mut e) = engine() else { return };
    let cfg = Config::UMIP_OFF;
    let base = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
    let fenced = GuestImage::build(
        Mode::Long64,
        cfg,
        crate::length::fenced_variant(Mode::Long64, &cfg).unwrap(),
    );
    let add = [0x48, 0x01, 0xC8];
    // Every state of the matrix first (measured on PVM: after the moved
    // page tables' image, the fence was not seen at CPL 3).
    let images: Vec<GuestImage> = Variant::matrix(Mode::Long64, &cfg)
        .into_iter()
        .map(|v| GuestImage::build(Mode::Long64, cfg, v))
        .chain([base])
        .collect();
    for image in &images {
        for side in Side::BOTH {
            if let Some(p) = image.prepare(side, &add, &NONE) {
                let _ = e.run(image, side, &p);
            }
        }
    }
    for side in Side::BOTH {
        let t = fenced.prepare(side, &add, &NONE).unwrap().at_page_end(2);
        let o = e.run(&fenced, side, &t);
        assert_eq!(
            crate::length::crossed(&fenced, &t, &o.outcome),
            Some(true),
            "{side}: {:?}",
            o.outcome
        );
    }
}

#[test]
fn a_wrpkru_leaves_nothing_behind() {
    // On PVM WRPKRU runs at CPL 3 although CR4.PKE is clear; the PKRU it
    // writes (access disabled for key 0) must not reach the next run.
    let Some(mut e) = engine() else { return };
    let wrpkru = Setup {
        regs: vec![
            (crate::machine::Gpr::Rax, Sym::Imm(1)),
            (crate::machine::Gpr::Rcx, Sym::Imm(0)),
            (crate::machine::Gpr::Rdx, Sym::Imm(0)),
        ],
        ..Setup::default()
    };
    let load = [0x8B, 0x04, 0x25, 0x00, 0x81, 0x00, 0x00]; // mov eax, [0x8100]
    let before = base(&mut e, Mode::Long64, Side::User, &load, &NONE);
    assert!(completed(&before), "{:?}", before.outcome);
    let _ = base(
        &mut e,
        Mode::Long64,
        Side::User,
        &[0x0F, 0x01, 0xEF],
        &wrpkru,
    );
    let after = base(&mut e, Mode::Long64, Side::User, &load, &NONE);
    assert_eq!(after.outcome, before.outcome);
    assert_eq!(after.user, before.user);
}

/// Ring compression in long-mode images: every ring1/ring3 state runs and
/// ends through the exit stubs, on both sides, in 64 and 32c; LAR, LSL,
/// VERR, VERW and PUSH FS give their ring-compression evidence (on VT-x and
/// SVM as the manuals say; on PVM with its measured quirks, each asserted).
#[test]
fn ring_compression_runs_through_the_exit_stubs() {
    let Some(mut e) = engine() else { return };
    let pvm = pvm_quirk_host(&e).is_ok();
    let cfg = Config::UMIP_OFF;
    let ring = |dpl: u8| Variant {
        supervisor_dpl: dpl,
        ..Variant::base(&cfg)
    };
    for mode in [Mode::Long64, Mode::Compat32] {
        for dpl in [1u8, 3] {
            let v = ring(dpl);
            for side in Side::BOTH {
                let cpl = if side == Side::User { 3 } else { dpl };
                let at = format!("{mode} ring{dpl}@{side}");
                let o = run_on(&mut e, mode, cfg, v, side, &[0x90], &NONE);
                assert!(completed(&o), "{at}: {:?}", o.outcome);
                let after = o.after.as_ref().expect("a completed run has its state");
                assert_eq!(after.segs[0].selector & 3, u16::from(cpl), "{at}");
                // The handler that took the sentinel's #GP runs at the
                // compressed ring; PVM loads CS with the gate's selector
                // unchanged (RPL 0) and SS = 0 (measured), which no
                // observation reads (the frame gives the test's CS and SS).
                let sregs = e.guest.vcpu.get_sregs().unwrap();
                assert_eq!(sregs.cs.dpl, dpl, "{at}");
                if pvm {
                    assert_eq!(
                        (sregs.cs.selector, sregs.ss.selector),
                        (sel::KCODE, 0),
                        "{at}"
                    );
                } else {
                    assert_eq!(sregs.cs.selector, sel::KCODE | u16::from(dpl), "{at}");
                }
                let o = run_on(&mut e, mode, cfg, v, side, &[0x0F, 0x0B], &NONE);
                assert_eq!(
                    o.outcome,
                    Outcome::Trap {
                        vector: 6,
                        error_code: None,
                        rip: TEST_RIP,
                        address: None
                    },
                    "{at}"
                );
                // PUSH FS pushes the harness's data selector in every state.
                let o = run_on(&mut e, mode, cfg, v, side, &[0x0F, 0xA0], &NONE);
                let u = o
                    .user
                    .as_ref()
                    .unwrap_or_else(|| panic!("{at}: {:?}", o.outcome));
                let sp = (u.gprs[4] - STACK) as usize;
                assert_eq!(u.stack[sp..sp + 2], sel::UDATA.to_le_bytes(), "{at}");
            }
        }
    }
    // A far call from CPL 3 through the call gate (32c, call ptr16:32) to
    // the supervisor's code at DPL 1 or 3: a transfer there on hardware;
    // measured on PVM: #UD at the instruction.
    let gate = Setup {
        patches: vec![crate::machine::Patch {
            offset: 5,
            size: 2,
            value: Sym::Sel(crate::machine::SelRole::CallGate),
        }],
        ..Setup::default()
    };
    for dpl in [1u8, 3] {
        let v = ring(dpl);
        let call = [0x9A, 0, 0, 0, 0, 0, 0];
        let o = run_on(&mut e, Mode::Compat32, cfg, v, Side::User, &call, &gate);
        call_gate_arrives(pvm, &o, dpl, &format!("32c ring{dpl}@cpl3"));
    }
    // SWAPGS at CPL 1: #GP(0) (CPL != 0) by the manuals; measured on PVM,
    // whose emulator runs CPL 1, it completes.
    let at_cpl1 = |e: &mut KvmEngine, bytes: &[u8]| {
        run_on(
            e,
            Mode::Long64,
            cfg,
            ring(1),
            Side::Supervisor,
            bytes,
            &NONE,
        )
    };
    let o = at_cpl1(&mut e, &[0x0F, 0x01, 0xF8]);
    if pvm {
        assert!(completed(&o), "swapgs ring1@cpl1: {:?}", o.outcome);
    } else {
        assert!(is_gp(&o), "swapgs ring1@cpl1: {:?}", o.outcome);
    }
    // LAR, LSL, VERR, VERW of the supervisor's data selector (RAX holds
    // KDATA | 1): readable where the compressed ring lets the CPL see
    // it, in ring3 at CPL 3 above all (the base state's CPL 3 cannot).
    for (bytes, name) in [
        (&[0x0F, 0x02, 0xC0][..], "lar eax, eax"),
        (&[0x0F, 0x03, 0xC0], "lsl eax, eax"),
        (&[0x0F, 0x00, 0xE0], "verr ax"),
        (&[0x0F, 0x00, 0xE8], "verw ax"),
    ] {
        let o = run_on(&mut e, Mode::Long64, cfg, ring(3), Side::User, bytes, &NONE);
        let zf = o.user.as_ref().map(|u| u.flags & 0x40 != 0);
        if pvm {
            // Measured: CPL-3 code on PVM runs with the host's GDT, where
            // 0x10 is the kernel's data segment (DPL 0): not readable.
            assert_eq!(zf, Some(false), "{name} ring3@cpl3: {:?}", o.outcome);
        } else {
            assert_eq!(zf, Some(true), "{name} ring3@cpl3: {:?}", o.outcome);
        }
        let o = at_cpl1(&mut e, bytes);
        if pvm {
            // Measured: KVM's emulator, which runs CPL 1 on PVM, lacks them.
            assert!(
                matches!(&o.outcome, Outcome::EngineError(t) if t.contains("INTERNAL_ERROR")),
                "{name} ring1@cpl1: {:?}",
                o.outcome
            );
        } else {
            let u = o
                .user
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: {:?}", o.outcome));
            assert_ne!(u.flags & 0x40, 0, "{name} ring1@cpl1");
        }
    }
}

/// The MSRs KVM keeps in the vCPU (PAT, the MTRRs, ...) are what a new vCPU has
/// at the start of every run after one that wrote them.
#[test]
fn msrs_a_run_wrote_are_put_back() {
    let Some(mut e) = engine() else { return };
    // RDMSR, INC EAX, WRMSR of each: a run that read what an earlier one
    // wrote would write one more.
    for msr in [0x277u32, 0x2ff, 0x200, 0x250, 0x1a0, 0x3b, 0x17a] {
        let mut bytes = vec![0xB9];
        bytes.extend(msr.to_le_bytes());
        bytes.extend([0x0F, 0x32, 0xFF, 0xC0, 0x0F, 0x30]);
        let first = base(&mut e, Mode::Long64, Side::Supervisor, &bytes, &NONE);
        // PAT is architectural; another KVM may not give the guest the
        // others (a WRMSR of them traps, and there is nothing to keep).
        if msr != 0x277 && !completed(&first) {
            println!("{msr:#x}: traps on this KVM ({:?})", first.outcome);
            continue;
        }
        assert!(completed(&first), "{msr:#x}: {:?}", first.outcome);
        let again = base(&mut e, Mode::Long64, Side::Supervisor, &bytes, &NONE);
        assert_eq!(
            again.outcome, first.outcome,
            "{msr:#x}: a second run saw the first one's WRMSR"
        );
        assert_eq!(
            again.user.as_ref().map(|u| u.gprs[0]),
            first.user.as_ref().map(|u| u.gprs[0]),
            "{msr:#x}"
        );
    }
}
