//! The documented-behavior cases that every engine's tests run (pg-model
//! section 6), written once: each engine's tests assert what the engine
//! must do with them, or what it is measured to do instead.

use crate::machine::{MemInit, Region, Setup, Sym, SysValue};
use crate::mode::Mode;
use crate::observe::Side;

/// CPL-0-only instructions (#GP(0) at CPL 3 by the Intel SDM) with the
/// setups that let them complete at CPL 0: HLT, CLI (IOPL 0), LGDT of the
/// image's own GDT, MOV CR0 of the image's own CR0.
pub(crate) fn cpl0_only_cases(mode: Mode) -> Vec<(&'static str, Vec<u8>, Setup)> {
    let lgdt: Vec<u8> = match mode {
        Mode::Long64 => vec![0x0F, 0x01, 0x14, 0x25, 0x00, 0x81, 0, 0],
        Mode::Real | Mode::Prot16 => vec![0x66, 0x0F, 0x01, 0x16, 0x00, 0x81],
        Mode::Prot32 | Mode::Compat32 => vec![0x0F, 0x01, 0x15, 0x00, 0x81, 0, 0],
    };
    let base_size = if mode == Mode::Long64 { 8 } else { 4 };
    let lgdt_setup = Setup {
        mem: vec![
            MemInit {
                region: Region::Data,
                offset: 0x100,
                size: 2,
                value: Sym::Sys(SysValue::GdtLimit, 0),
            },
            MemInit {
                region: Region::Data,
                offset: 0x102,
                size: base_size,
                value: Sym::Sys(SysValue::GdtBase, 0),
            },
        ],
        ..Setup::default()
    };
    let cr0_setup = Setup {
        regs: vec![(crate::machine::Gpr::Rax, Sym::Sys(SysValue::Cr0, 0))],
        ..Setup::default()
    };
    vec![
        ("hlt", vec![0xF4], Setup::default()),
        ("cli", vec![0xFA], Setup::default()),
        ("lgdt", lgdt, lgdt_setup),
        ("mov cr0, eax", vec![0x0F, 0x22, 0xC0], cr0_setup),
    ]
}

/// POPF of the mode's default operand size, with a stacked value that flips
/// IF and sets IOPL 3 (the harness runs with IF=1, IOPL 0).
pub(crate) fn popf_case(mode: Mode) -> (Vec<u8>, Setup) {
    let size = match mode {
        Mode::Real | Mode::Prot16 => 2,
        Mode::Prot32 | Mode::Compat32 => 4,
        Mode::Long64 => 8,
    };
    let setup = Setup {
        mem: vec![MemInit {
            region: Region::Stack,
            offset: 0x800,
            size,
            value: Sym::FlagsXor(0x3200),
        }],
        ..Setup::default()
    };
    (vec![0x9D], setup)
}

/// A setup that sets nothing.
pub(crate) const NONE: Setup = Setup {
    regs: Vec::new(),
    mem: Vec::new(),
    patches: Vec::new(),
    seg_load: None,
    soft_interrupt: None,
};

/// The run trapped with #GP.
pub(crate) fn is_gp(o: &crate::observe::Observation) -> bool {
    matches!(o.outcome, crate::observe::Outcome::Trap { vector: 13, .. })
}

/// The run completed at the sentinel right after the instruction.
pub(crate) fn completed(o: &crate::observe::Observation) -> bool {
    matches!(
        o.outcome,
        crate::observe::Outcome::Completed {
            at_sentinel: true,
            ..
        }
    )
}

/// Runs `bytes` in the base state of `mode` (umip=off) on `side`.
fn run_base(
    e: &mut dyn super::Engine,
    mode: Mode,
    side: crate::observe::Side,
    bytes: &[u8],
    setup: &Setup,
) -> crate::observe::Observation {
    let cfg = crate::mode::Config::UMIP_OFF;
    let img = crate::machine::GuestImage::build(mode, cfg, crate::machine::Variant::base(&cfg));
    let p = img
        .prepare(side, bytes, setup)
        .expect("a side of the image");
    e.run(&img, side, &p)
}

/// POPF at CPL 3 completes and leaves IF and IOPL as they were; at CPL 0 it
/// changes both (pg-model section 6). Every engine passes this.
pub(crate) fn check_popf(e: &mut dyn super::Engine, mode: Mode) {
    use crate::observe::Side;
    let (popf, setup) = popf_case(mode);
    let u = run_base(e, mode, Side::User, &popf, &setup);
    assert!(completed(&u), "{mode}: {:?}", u.outcome);
    assert_eq!(
        u.after.as_ref().expect("after-state").sys_flags,
        u.before.sys_flags,
        "{mode}: IF and IOPL unchanged at cpl3"
    );
    let s = run_base(e, mode, Side::Supervisor, &popf, &setup);
    assert!(completed(&s), "{mode}: {:?}", s.outcome);
    assert_eq!(
        s.after.as_ref().expect("after-state").sys_flags,
        (s.before.sys_flags ^ 0x3200) & crate::observe::SYS_FLAGS_MASK,
        "{mode}: cpl0 changes both"
    );
}

/// Each run sees its own code and data: rewritten code is never served
/// from a stale translation, and a data write of one run is gone by the
/// next. Every engine passes this.
pub(crate) fn check_runs_are_restored(e: &mut dyn super::Engine) {
    use crate::observe::{Outcome, Side};
    for (bytes, want) in [
        (&[0x0F, 0x0B][..], None),
        (&[0xB0, 0x01][..], Some(1)),
        (&[0xB0, 0x02][..], Some(2)),
        // mov byte [rbx], al: writes the data page.
        (&[0x88, 0x03][..], Some(0x11)),
        (&[0x90][..], Some(0x11)),
    ] {
        let o = run_base(e, Mode::Long64, Side::User, bytes, &NONE);
        match want {
            None => assert!(
                matches!(o.outcome, Outcome::Trap { vector: 6, .. }),
                "{:?}",
                o.outcome
            ),
            Some(al) => {
                let u = o.user.expect("user state");
                assert_eq!(u.gprs[0] & 0xFF, al, "{bytes:02x?}");
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

/// ADD between general registers completes at CPL 0 and CPL 3 with the same
/// user-visible result, the one the harness's inputs give (an innocuous
/// instruction is the same in every state). Every engine passes this.
pub(crate) fn check_add_is_the_same_at_both_cpls(e: &mut dyn super::Engine, mode: Mode) {
    use crate::observe::Side;
    let add = [0x01, 0xD8]; // add eax, ebx (ax, bx in 16-bit)
    let s = run_base(e, mode, Side::Supervisor, &add, &NONE);
    let u = run_base(e, mode, Side::User, &add, &NONE);
    assert!(
        completed(&s) && completed(&u),
        "{mode}: {:?} {:?}",
        s.outcome,
        u.outcome
    );
    assert_eq!(s.user, u.user, "{mode}");
    assert_eq!(
        s.user.expect("user state").gprs[0] & 0xFFFF,
        (0x11 + crate::machine::DATA + 0x180) & 0xFFFF
    );
}

/// What an engine's measured quirk makes of one NOP run of
/// [`check_every_state_runs_a_nop`].
pub(crate) enum NopRun {
    /// The run must complete with the image's state before and no change of R after.
    Standard,
    /// The quirk's own checks covered the run (a state the engine cannot run).
    Handled,
    /// As `Standard`, but the after-state shows IOPL 0 (the frame's RFLAGS
    /// on PVM at CPL 3): exactly that one change of R.
    IoplDroppedAfter,
}

/// Every state of every mode and default configuration boots on both sides
/// and runs a NOP: the run completes, R before it is the image's (CPL,
/// GDTR, CR0, system flags, selectors), a NOP changes nothing in R, and the
/// data page holds the harness's fill. `quirk` says, per run, where a
/// measured engine quirk applies (and checks that run itself).
pub(crate) fn check_every_state_runs_a_nop(
    e: &mut dyn super::Engine,
    quirk: &dyn Fn(
        &crate::machine::GuestImage,
        crate::observe::Side,
        &crate::observe::Observation,
    ) -> NopRun,
) {
    use crate::machine::{GuestImage, Variant};
    use crate::mode::Config;
    use crate::observe::{diff_system, Side};
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
                    let expected = quirk(&img, side, &o);
                    if matches!(expected, NopRun::Handled) {
                        continue;
                    }
                    assert!(completed(&o), "{what}: {:?}", o.outcome);
                    let want = img.system_state(side).expect("a side of the image");
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
                    let after = o.after.as_ref().expect("an after-state");
                    let changed = diff_system(&o.before, after);
                    if matches!(expected, NopRun::IoplDroppedAfter) {
                        assert_eq!(after.sys_flags, o.before.sys_flags & !(3 << 12), "{what}");
                        assert_eq!(changed.len(), 1, "{what}: {changed:?}");
                    } else {
                        assert!(changed.is_empty(), "{what}: nop changed {changed:?}");
                    }
                    let u = o.user.as_ref().expect("user state");
                    assert_eq!(u.data[5], crate::machine::data_fill(5), "{what}");
                }
            }
        }
    }
}

/// Encodings whose length every engine fetches as the manuals give it,
/// with that length: an ALU instruction, UD2 (#UD), HLT (#GP at CPL 3),
/// INT3 (a transfer), a load with a 32-bit displacement, and the longest
/// instruction there is (14 operand-size prefixes and NOP). For the
/// page-boundary method ([`crate::length`]).
pub(crate) fn length_cases(mode: Mode) -> Vec<(&'static str, Vec<u8>, usize)> {
    let mut nop15 = vec![0x66; 14];
    nop15.push(0x90);
    let mut cases = vec![
        ("ud2", vec![0x0F, 0x0B], 2),
        ("hlt", vec![0xF4], 1),
        ("int3", vec![0xCC], 1),
        ("15-byte nop", nop15, 15),
    ];
    match mode {
        Mode::Long64 => cases.extend([
            ("add rax, rcx", vec![0x48, 0x01, 0xC8], 3),
            (
                "mov eax, [disp32]",
                vec![0x8B, 0x04, 0x25, 0, 0x81, 0, 0],
                7,
            ),
        ]),
        _ => cases.extend([
            ("add eax, ecx", vec![0x01, 0xC8], 2),
            ("mov eax, [disp32]", vec![0x8B, 0x05, 0, 0x81, 0, 0], 6),
        ]),
    }
    cases
}

/// Checks [`length_cases`] on `engine` in `mode` on `sides`: each is
/// measured at its length, or, on the sides in `may_fail`, not measured
/// because the engine failed (never another length). Returns what was
/// not measured.
pub(crate) fn check_lengths(
    engine: &mut dyn crate::engine::Engine,
    mode: Mode,
    cfg: crate::mode::Config,
    sides: &[Side],
    may_fail: &[Side],
) -> Vec<String> {
    let mut failed = Vec::new();
    use crate::length::{measure, FetchLength};
    let v = crate::length::fenced_variant(mode, &cfg).expect("a mode with paging");
    let image = crate::machine::GuestImage::build(mode, cfg, v);
    for &side in sides {
        for (name, bytes, len) in length_cases(mode) {
            let test = image.prepare(side, &bytes, &Setup::default()).unwrap();
            for hint in [len, 1, 15] {
                let got = measure(&image, &test, hint, |t| {
                    Ok::<_, ()>(engine.run(&image, side, t).outcome)
                })
                .unwrap();
                let what = format!("{} {mode} {side} {name} (hint {hint})", engine.name());
                if let (FetchLength::NotMeasured(why), true) = (&got, may_fail.contains(&side)) {
                    failed.push(format!("{what}: {why}"));
                    continue;
                }
                assert_eq!(got, FetchLength::Bytes(len as u8), "{what}");
            }
        }
    }
    failed
}

/// 32-bit compatibility mode (32c) is what it says, at both CPLs: 32-bit
/// code (PUSH CS pushes 4 bytes, the 32-bit code selector of the side) in a
/// long-mode guest (EFER.LMA); SGDT stores the guest's own GDTR (6 bytes:
/// the 32c limit and the 32-bit base); PUSHFD shows IF and IOPL as they are
/// (IOPL 3 and IF 1 in the iopl=3 state); MOV EAX, CR0 is #GP at CPL 3
/// and reads CR0 at CPL 0. With `umip` (the engine models CR4.UMIP), SGDT
/// is #GP at CPL 3 and completes at CPL 0. Every engine that runs 32c
/// passes this.
pub(crate) fn check_compat_mode_facts(e: &mut dyn super::Engine, umip: bool) {
    use crate::machine::{sel, GuestImage, Variant, STACK, STACK_PTR, TEST_RIP};
    use crate::mode::Config;
    use crate::observe::{Outcome, Side};
    let mode = Mode::Compat32;
    let cfg = Config::UMIP_OFF;
    let img = GuestImage::build(mode, cfg, Variant::base(&cfg));
    let run = |e: &mut dyn super::Engine, img: &GuestImage, side, bytes: &[u8], setup: &Setup| {
        let p = img
            .prepare(side, bytes, setup)
            .expect("a side of the image");
        e.run(img, side, &p)
    };
    let efer_lma = 1 << 10;
    for (side, cs) in [(Side::Supervisor, sel::KCODE32), (Side::User, sel::UCODE32)] {
        // push cs: 4 bytes (32-bit code), the side's 32-bit code selector.
        let o = run(e, &img, side, &[0x0E], &NONE);
        assert!(completed(&o), "{side} push cs: {:?}", o.outcome);
        assert_ne!(o.before.efer & efer_lma, 0, "{side}: long mode");
        assert_eq!(o.before.segs[0].selector, cs, "{side}: cs");
        let u = o.user.as_ref().expect("user state");
        assert_eq!(u.gprs[4], STACK_PTR - 4, "{side}: push cs pushes 4 bytes");
        let at = (STACK_PTR - 4 - STACK) as usize;
        assert_eq!(
            u16::from_le_bytes([u.stack[at], u.stack[at + 1]]),
            cs,
            "{side}: pushed cs"
        );

        // sgdt [0x8100]: the guest's GDTR, 6 bytes.
        let o = run(e, &img, side, &[0x0F, 0x01, 0x05, 0x00, 0x81, 0, 0], &NONE);
        assert!(completed(&o), "{side} sgdt: {:?}", o.outcome);
        let u = o.user.as_ref().expect("user state");
        let stored = &u.data[0x100..0x106];
        let mut want = sel::GDT_LIMIT_COMPAT.to_le_bytes().to_vec();
        want.extend_from_slice(&(img.sys.gdtr.0 as u32).to_le_bytes());
        assert_eq!(stored, &want[..], "{side}: sgdt stores the guest's GDTR");
        assert_eq!(
            u.data[0x106],
            crate::machine::data_fill(0x106),
            "{side}: 6 bytes only"
        );

        // pushfd in the iopl=3 state: IF and IOPL as they are.
        let v = Variant {
            iopl: 3,
            ..Variant::base(&cfg)
        };
        let iopl3 = GuestImage::build(mode, cfg, v);
        let o = run(e, &iopl3, side, &[0x9C], &NONE);
        assert!(completed(&o), "{side} pushfd: {:?}", o.outcome);
        let u = o.user.as_ref().expect("user state");
        let pushed = u32::from_le_bytes(u.stack[at..at + 4].try_into().unwrap());
        assert_eq!(pushed & 0x3200, 0x3200, "{side}: pushfd shows IF=1 IOPL=3");

        // mov eax, cr0.
        let o = run(e, &img, side, &[0x0F, 0x20, 0xC0], &NONE);
        match side {
            Side::User => assert!(
                matches!(o.outcome, Outcome::Trap { vector: 13, rip, .. } if rip == TEST_RIP),
                "mov eax, cr0 at cpl3: {:?}",
                o.outcome
            ),
            Side::Supervisor => {
                assert!(completed(&o), "mov eax, cr0 at cpl0: {:?}", o.outcome);
                let u = o.user.as_ref().expect("user state");
                assert_eq!(u.gprs[0], img.sys.cr0 & 0xFFFF_FFFF, "cr0 read");
            }
        }
    }
    if umip {
        let cfg = Config::UMIP_ON;
        let img = GuestImage::build(mode, cfg, Variant::base(&cfg));
        let sgdt = [0x0F, 0x01, 0x05, 0x00, 0x81, 0, 0];
        let u = run(e, &img, Side::User, &sgdt, &NONE);
        assert!(is_gp(&u), "sgdt at cpl3 with UMIP: {:?}", u.outcome);
        let s = run(e, &img, Side::Supervisor, &sgdt, &NONE);
        assert!(completed(&s), "sgdt at cpl0 with UMIP: {:?}", s.outcome);
    }
}
