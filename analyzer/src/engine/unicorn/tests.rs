//! Unicorn runs of the conformance suite and of Unicorn's own cases:
//! booting every variant, restoring what a run wrote, the limits.

use super::*;
use crate::machine::{Setup, Variant, DATA, GDT, MEM_SIZE, MOVED_TABLES, STACK, STACK_PTR};
use crate::mode::Config;
use crate::observe::Outcome;
use std::time::Instant;

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
use crate::engine::conformance::{completed, is_gp, NONE};

#[test]
fn privileged_instructions_trap_at_cpl3_and_complete_at_cpl0() {
    for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64, Mode::Compat32] {
        for (name, bytes, setup) in crate::engine::conformance::cpl0_only_cases(mode) {
            let u = base(mode, Side::User, &bytes, &setup);
            let s = base(mode, Side::Supervisor, &bytes, &setup);
            assert!(is_gp(&u), "{mode} {name} at cpl3: {:?}", u.outcome);
            assert!(completed(&s), "{mode} {name} at cpl0: {:?}", s.outcome);
        }
    }
}

#[test]
fn popfd_at_cpl3_leaves_if_and_iopl_alone() {
    let mut e = UnicornEngine::new().unwrap();
    crate::engine::conformance::check_popf(&mut e, Mode::Prot32);
    crate::engine::conformance::check_popf(&mut e, Mode::Compat32);
}

#[test]
fn compatibility_mode_is_32_bit_code_in_a_long_mode_guest() {
    // Unicorn has no CR4.UMIP: the UMIP fact is not checked here.
    crate::engine::conformance::check_compat_mode_facts(&mut UnicornEngine::new().unwrap(), false);
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
    for mode in [Mode::Prot16, Mode::Prot32, Mode::Long64, Mode::Compat32] {
        crate::engine::conformance::check_add_is_the_same_at_both_cpls(&mut e, mode);
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
    // A run the clock ended runs once more with RETRY_PATIENCE times the
    // limit before it is a hang: a stall of a loaded machine is not one.
    assert!(t.elapsed() >= Duration::from_millis(30) * (1 + RETRY_PATIENCE));
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
fn the_limit_counts_every_instruction_and_every_round_of_a_rep() {
    let cfg = Config::UMIP_OFF;
    for (mode, v) in [
        (Mode::Long64, Variant::base(&cfg)),
        (Mode::Prot32, Variant::base(&cfg)),
        // Segment bases shifted: the test's first byte is another linear
        // address.
        (
            Mode::Prot32,
            Variant {
                seg_shifted: true,
                ..Variant::base(&cfg)
            },
        ),
    ] {
        let img = GuestImage::build(mode, cfg, v);
        for side in Side::BOTH {
            let mut rcx5 = Setup::default();
            rcx5.regs
                .push((crate::machine::Gpr::Rcx, crate::machine::Sym::Imm(5)));
            // Four NOPs in the test's block; REP STOSB with RCX = 5: six
            // runs of the test's block, five rounds and the one that finds
            // RCX zero, as Unicorn's own count counted them.
            for (bytes, setup, n) in [(&[0x90u8; 4][..], &NONE, 4), (&[0xF3, 0xAA][..], &rcx5, 6)] {
                let p = img.prepare(side, bytes, setup).unwrap();
                for limit in [n - 1, n] {
                    let mut e = UnicornEngine::with_limits(limit, TIME_LIMIT).unwrap();
                    let o = e.run(&img, side, &p).outcome;
                    if limit < n {
                        assert_eq!(o, Outcome::Hang, "{mode} {side} {bytes:02x?} limit {limit}");
                    } else {
                        assert!(
                            matches!(
                                o,
                                Outcome::Completed {
                                    at_sentinel: true,
                                    ..
                                }
                            ),
                            "{mode} {side} {bytes:02x?} limit {limit}: {o:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rewritten_code_and_data_are_restored_between_runs() {
    crate::engine::conformance::check_runs_are_restored(&mut UnicornEngine::new().unwrap());
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
                u32::from_le_bytes(std::array::from_fn(|i| crate::machine::data_fill(0x10 + i))),
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
fn stray_stores_are_put_back_page_by_page() {
    // Stores outside the test's pages put back before the next run: to a
    // harness table, a free page, a page table (later walks may set bits
    // anywhere: all of memory is put back), the data page through another
    // linear address, across two pages (the hook is told the first byte's
    // physical page only: from the stack page, moved in one variant, into
    // the next linear page, which is not the next physical one there).
    // After a NOP run, guest memory is the image's again, but for the
    // accessed and dirty bits the CPU sets in the page tables.
    let cfg = Config::UMIP_OFF;
    let mut e = UnicornEngine::new().unwrap();
    // mov dword [abs addr], imm
    let store = |mode: Mode, addr: u64, imm: u32| -> Vec<u8> {
        let mut b = if mode == Mode::Long64 {
            vec![0xC7, 0x04, 0x25]
        } else {
            vec![0xC7, 0x05]
        };
        b.extend((addr as u32).to_le_bytes());
        b.extend(imm.to_le_bytes());
        b
    };
    let mut checked = 0;
    for mode in [Mode::Prot32, Mode::Long64] {
        for v in Variant::matrix(mode, &cfg) {
            let img = GuestImage::build(mode, cfg, v);
            let tables = img.table_pages;
            let cr3 = img.sys.cr3 & !0xFFF;
            for addr in [
                img.sys.gdtr.0 + 0x400,
                0x5000,
                cr3 + 0x800,
                img.data_phys + 0x24,
                0x5FFE,
                STACK + 0xFFE,
            ] {
                let side = Side::Supervisor;
                let w = img.prepare(side, &store(mode, addr, 0xdead_beef), &NONE);
                let o = e.run(&img, side, &w.unwrap());
                let what = format!("{mode} {} {addr:#x}", v.name(&cfg));
                if v.supervisor_dpl != 0 {
                    continue; // some of these are the supervisor's: a ring-1/3 store faults
                }
                assert!(completed(&o), "{what}: {:?}", o.outcome);
                let nop = img.prepare(side, &[0x90], &NONE).unwrap();
                assert!(completed(&e.run(&img, side, &nop)), "{what}");
                let m = &e.machines.iter().find(|(m, _)| *m == mode).unwrap().1;
                let mut held = vec![0u8; MEM_SIZE as usize];
                m.uc.mem_read(0, &mut held).unwrap();
                for (i, (a, b)) in held
                    .chunks(PAGE as usize)
                    .zip(img.memory.chunks(PAGE as usize))
                    .enumerate()
                {
                    if i as u64 * PAGE == img.code_phys {
                        continue; // the NOP's own page
                    }
                    if tables & (1 << i) == 0 {
                        assert!(a == b, "{what}: page {i:#x}");
                        continue;
                    }
                    // Accessed (bit 5) and dirty (bit 6) aside.
                    for (x, y) in a.chunks(8).zip(b.chunks(8)) {
                        let x = u64::from_le_bytes(x.try_into().unwrap()) & !0x60;
                        let y = u64::from_le_bytes(y.try_into().unwrap()) & !0x60;
                        assert_eq!(x, y, "{what}: page table {i:#x}");
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "{checked}");
}

#[test]
fn pages_handed_back_unread_are_what_guest_memory_holds() {
    // The data and stack pages of a completed run are the test's own
    // (shared, not read) where the run did not write them: they must be
    // the bytes Unicorn holds, whatever the run wrote, also through
    // another linear address of the page (the identity map's alias of a
    // moved page) or with paging changed.
    let cfg = Config::UMIP_OFF;
    let mut e = UnicornEngine::new().unwrap();
    let (mut shared, mut written) = (0, 0);
    for mode in [Mode::Prot32, Mode::Long64] {
        for v in Variant::matrix(mode, &cfg) {
            let img = GuestImage::build(mode, cfg, v);
            let mut cases: Vec<Vec<u8>> = vec![
                vec![0x90],
                store32(DATA as u32 + 0x20, 7),
                store32(img.data_phys as u32 + 0x24, 8),
                store32(img.stack_phys as u32 + 0x28, 9),
                vec![0x50],                               // push eax / rax
                vec![0xF3, 0xAA],                         // rep stosb
                vec![0x0F, 0xAE, 0x05, 0, 0x81, 0, 0],    // fxsave [0x8100] (rip-relative in 64)
                vec![0x0F, 0x20, 0xD8, 0x0F, 0x22, 0xD8], // mov eax, cr3; mov cr3, eax
            ];
            cases.push(store32(DATA as u32 + 0xFFE, 10)); // across the page's end
            for bytes in &cases {
                for side in Side::BOTH {
                    let Some(p) = img.prepare(side, bytes, &NONE) else {
                        continue;
                    };
                    let o = e.run(&img, side, &p);
                    let Some(u) = o.user else { continue };
                    let m = &e.machines.iter().find(|(m, _)| *m == mode).unwrap().1;
                    for (what, page, phys, ours) in [
                        ("data", &u.data, img.data_phys, &p.data_page),
                        ("stack", &u.stack, img.stack_phys, &p.stack_page),
                    ] {
                        let mut held = vec![0u8; PAGE as usize];
                        m.uc.mem_read(phys, &mut held).unwrap();
                        let at = format!("{mode} {} {side} {bytes:02x?} {what}", v.name(&cfg));
                        assert_eq!(&page[..], &held[..], "{at}");
                        if Page::same(page, ours) {
                            shared += 1;
                        } else if page != ours {
                            written += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(
        shared > 0 && written > 0,
        "{shared} shared, {written} written"
    );
}

#[test]
fn results_do_not_depend_on_the_run_before() {
    // Each case alone on a fresh engine, and all of them in a row on one
    // engine (as a scan's batches run them): the same observations.
    let cfg = Config::UMIP_OFF;
    let gate = (crate::machine::entry::CALLGATE as u32).to_le_bytes();
    // mov eax, CALLGATE; jmp eax
    let jump_to_gate = [vec![0xB8], gate.to_vec(), vec![0xFF, 0xE0]].concat();
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
        // A stray write over a handler's HLT, then a jump there (code
        // translated from a page that the next run's restore rewrites),
        // then the jump alone: the HLT is back.
        [
            vec![0xC6, 0x05],
            gate.to_vec(),
            vec![0x90],
            jump_to_gate.clone(),
        ]
        .concat(),
        jump_to_gate,
        vec![0x90],
        // A breakpoint at the test's first byte (DR0, enabled in DR7),
        // then what runs there next.
        [
            vec![0xB8],
            (crate::machine::TEST_RIP as u32).to_le_bytes().to_vec(),
            vec![0x0F, 0x23, 0xC0], // mov dr0, eax
            vec![0xB8, 0x02, 0x04, 0, 0],
            vec![0x0F, 0x23, 0xF8], // mov dr7, eax
        ]
        .concat(),
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
    use crate::engine::conformance::{check_every_state_runs_a_nop, NopRun};
    check_every_state_runs_a_nop(&mut UnicornEngine::new().unwrap(), &|_, _, _| {
        NopRun::Standard
    });
}

#[test]
fn errors_name_the_failed_action_and_keep_their_source() {
    use std::error::Error;
    let e = UnicornError::Call {
        action: "write CR4",
        source: uc_error::EXCEPTION,
    };
    assert_eq!(
        e.source().map(|s| s.to_string()),
        Some(uc_error::EXCEPTION.to_string())
    );
    let text = EngineError::from(e).to_string();
    assert!(text.starts_with("unicorn: write CR4 failed: "), "{text}");
    let stub = UnicornError::BootStub {
        rip: 0x5800,
        intr: None,
        error: Some(uc_error::EXCEPTION),
    };
    assert!(stub.source().is_some());
    assert!(stub.to_string().starts_with("run the boot stub failed: "));
}

/// How a stop that Unicorn reports turns into an outcome (no Unicorn needed).
mod outcomes {
    use super::super::{outcome, Stopped};
    use super::*;
    use crate::machine::entry;
    use crate::observe::TransferKind;

    fn test64() -> Prepared {
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        img.prepare(Side::User, &[0x90], &NONE).unwrap()
    }

    /// The emulation ended normally with RIP at `rip` (at CPL 0).
    fn ran_to(rip: u64) -> Stopped {
        Stopped {
            events: Events::default(),
            result: Ok(()),
            rip,
            cpl: 0,
            start_cpl: 0,
        }
    }

    /// The interrupt hook stopped it with `vector` at `at` (at CPL 3).
    fn hooked(vector: u32, at: u64) -> Stopped {
        Stopped {
            events: Events {
                intr: Some((vector, at)),
                ..Events::default()
            },
            result: Ok(()),
            rip: at,
            cpl: 3,
            start_cpl: 3,
        }
    }

    #[test]
    fn a_trap_in_another_ring_away_from_the_test_is_a_completion_there() {
        let t = test64();
        // The test at CPL 0 went to CPL 3 (SYSEXIT, say), where code at 0x15000 faulted.
        let mut s = hooked(13, 0x15000);
        s.start_cpl = 0;
        assert_eq!(
            outcome(&t, &s),
            (
                Outcome::Completed {
                    rip: 0x15000,
                    at_sentinel: false
                },
                true
            )
        );
        // At the test's own RIP it is the test's trap, whatever the CPL.
        let mut s = hooked(13, t.rip);
        s.start_cpl = 0;
        assert!(matches!(
            outcome(&t, &s).0,
            Outcome::Trap { vector: 13, .. }
        ));
        // In the ring it started in, a trap elsewhere stays a trap.
        let s = hooked(14, 0x15000);
        assert!(matches!(
            outcome(&t, &s).0,
            Outcome::Trap { vector: 14, .. }
        ));
    }

    #[test]
    fn the_sentinel_completes_at_both_cpls() {
        let t = test64();
        let done = Outcome::Completed {
            rip: t.sentinel,
            at_sentinel: true,
        };
        assert_eq!(outcome(&t, &ran_to(t.sentinel)), (done.clone(), true));
        assert_eq!(outcome(&t, &hooked(13, t.sentinel)), (done, true));
    }

    #[test]
    fn int_0dh_is_a_software_interrupt_not_the_sentinels_gp() {
        // Vector 13 at the sentinel: the HLT's #GP at CPL 3 for any other
        // test, the test's own INT 0Dh for `cd 0d`.
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        let int = crate::explain::raw_entry(&[0xCD, 0x0D], Mode::Long64);
        assert_eq!(int.setup.soft_interrupt, Some(13));
        let t = img.prepare(Side::User, &int.bytes, &int.setup).unwrap();
        assert_eq!(
            outcome(&t, &hooked(13, t.sentinel)),
            (
                Outcome::Transfer {
                    kind: TransferKind::Interrupt(13),
                    rip: t.sentinel,
                    cpl: None
                },
                false
            )
        );
        // Run on Unicorn, at both CPLs, as INT 0Eh is.
        for side in Side::BOTH {
            for (v, b) in [(13u8, [0xCD, 0x0D]), (14, [0xCD, 0x0E])] {
                let e = crate::explain::raw_entry(&b, Mode::Long64);
                let o = base(Mode::Long64, side, &e.bytes, &e.setup).outcome;
                assert!(
                    matches!(o, Outcome::Transfer { kind: TransferKind::Interrupt(n), .. } if n == v),
                    "{side:?} int {v:#x}: {o:?}"
                );
            }
        }
    }

    #[test]
    fn a_hlt_at_an_entry_point_is_a_transfer_there() {
        let t = test64();
        let stub = entry::VECTORS + 6 * entry::VECTOR_STRIDE;
        for (at, kind) in [
            (entry::CALLGATE, TransferKind::CallGate),
            (stub, TransferKind::Interrupt(6)),
        ] {
            assert_eq!(
                outcome(&t, &ran_to(at + 1)),
                (
                    Outcome::Transfer {
                        kind,
                        rip: at,
                        cpl: Some(0)
                    },
                    true
                ),
                "{at:#x}"
            );
            assert_eq!(
                outcome(&t, &hooked(13, at)),
                (
                    Outcome::Transfer {
                        kind,
                        rip: at,
                        cpl: Some(3)
                    },
                    true
                ),
                "{at:#x}"
            );
        }
    }

    #[test]
    fn a_hlt_between_the_ring0_stubs_is_no_transfer() {
        // It used to be called a transfer to the vector its offset divides
        // into; it is no entry point.
        let t = test64();
        let filler = entry::VECTORS + 6 * entry::VECTOR_STRIDE + 2;
        assert_eq!(outcome(&t, &ran_to(filler + 1)), (Outcome::Hang, false));
        assert_eq!(
            outcome(&t, &hooked(13, filler)),
            (
                Outcome::Trap {
                    vector: 13,
                    error_code: None,
                    rip: filler,
                    address: None,
                },
                false
            )
        );
    }

    #[test]
    fn a_gp_at_the_test_itself_is_a_trap() {
        let t = test64();
        assert_eq!(
            outcome(&t, &hooked(13, t.rip)),
            (
                Outcome::Trap {
                    vector: 13,
                    error_code: None,
                    rip: t.rip,
                    address: None,
                },
                false
            )
        );
    }
}

#[test]
fn lengths_by_the_page_boundary_are_the_manuals() {
    let mut e = UnicornEngine::new().unwrap();
    for mode in [Mode::Prot32, Mode::Long64] {
        let failed = crate::engine::conformance::check_lengths(
            &mut e,
            mode,
            Config::UMIP_OFF,
            &Side::BOTH,
            &[],
        );
        assert!(failed.is_empty());
    }
}

#[test]
fn a_page_fault_reports_its_address() {
    // mov eax, [0x123]: the null page is not mapped.
    let o = base(
        Mode::Long64,
        Side::User,
        &[0x8B, 0x04, 0x25, 0x23, 1, 0, 0],
        &NONE,
    );
    assert!(
        matches!(
            o.outcome,
            Outcome::Trap {
                vector: 14,
                address: Some(0x123),
                ..
            }
        ),
        "{:?}",
        o.outcome
    );
}

#[test]
fn a_fetch_probe_crosses_where_the_whole_run_does() {
    // At every count of bytes before the boundary: an instruction that
    // completes, one that raises #UD, one that loops on itself, REP with a
    // wild count, and XOP, which Unicorn runs as POP and then a CALL into
    // zero-filled memory.
    let cfg = Config::UMIP_OFF;
    let img = GuestImage::build(
        Mode::Long64,
        cfg,
        crate::length::fenced_variant(Mode::Long64, &cfg).unwrap(),
    );
    let mut e = UnicornEngine::new().unwrap();
    let inputs: [&[u8]; 5] = [
        &[0x48, 0x01, 0xC8],
        &[0x0F, 0x0B],
        &[0xEB, 0xFE],
        &[0xF3, 0x48, 0xAB],
        &[0x8F, 0xEA, 0xE8, 0x12, 0xC9, 0x01, 0, 0, 0],
    ];
    for bytes in inputs {
        let mut setup = Setup::default();
        setup
            .regs
            .push((crate::machine::Gpr::Rcx, crate::machine::Sym::Imm(1 << 20)));
        for side in [Side::Supervisor, Side::User] {
            let p = img.prepare(side, bytes, &setup).unwrap();
            for k in 1..=bytes.len() {
                let t = p.at_page_end(k);
                let whole = e.run(&img, side, &t).outcome;
                let fetch = e.run_fetch(&img, side, &t).outcome;
                assert_eq!(
                    crate::length::crossed(&img, &t, &whole),
                    crate::length::crossed(&img, &t, &fetch),
                    "{bytes:02x?} {side:?} k={k}: {whole:?} / {fetch:?}"
                );
                let crossed = crate::length::crossed(&img, &t, &fetch);
                assert!(crossed.is_some());
                if bytes.len() == 3 {
                    // ADD RAX, RCX needs all three bytes.
                    assert_eq!(crossed, Some(k < 3), "k={k}");
                }
            }
        }
    }
}

/// What a run of an image gives does not depend on the images run before
/// it: an image that shifts the code page reaching the unshifted code
/// page's linear address (a far jump to segment 0 in real mode) runs what
/// is there in its own memory, not the translations of the image before.
#[test]
fn translations_of_one_image_are_not_run_in_another() {
    let cfg = Config::UMIP_OFF;
    let base = GuestImage::build(Mode::Real, cfg, Variant::base(&cfg));
    let shifted = GuestImage::build(
        Mode::Real,
        cfg,
        Variant {
            seg_shifted: true,
            ..Variant::base(&cfg)
        },
    );
    // JMP FAR 0000:TEST_RIP.
    let rip = crate::machine::TEST_RIP.to_le_bytes();
    let jump = [0xEA, rip[0], rip[1], 0x00, 0x00];
    let p = shifted.prepare(Side::Supervisor, &jump, &NONE).unwrap();
    let alone = UnicornEngine::new()
        .unwrap()
        .run(&shifted, Side::Supervisor, &p)
        .outcome;
    let mut e = UnicornEngine::new().unwrap();
    for bytes in [&[0x90u8, 0x90][..], &[0x40], &[0xF4]] {
        let q = base.prepare(Side::Supervisor, bytes, &NONE).unwrap();
        let _ = e.run(&base, Side::Supervisor, &q);
        let after = e.run(&shifted, Side::Supervisor, &p).outcome;
        assert_eq!(after, alone, "after {bytes:02x?} in the base image");
    }
}

#[test]
fn instruction_breakpoints_are_told_by_dr7() {
    assert!(!enables_instruction_breakpoint(0x400));
    assert!(enables_instruction_breakpoint(0x402));
    // L1 alone.
    assert!(enables_instruction_breakpoint(0x404));
    assert!(enables_instruction_breakpoint(0x4ff));
    // Enabled, but a write watchpoint (slot 0) and I/O (slot 1).
    assert!(!enables_instruction_breakpoint(0x0021_0405));
    assert!(!enables_instruction_breakpoint(0xffff_ffff));
}

#[test]
fn a_breakpoint_left_at_the_test_does_not_trap_later_runs() {
    // mov eax, TEST_RIP; mov dr0, eax; mov eax, 0x402; mov dr7, eax: a
    // breakpoint at the test's first byte, enabled at CPL 0.
    let set = [
        vec![0xB8],
        (crate::machine::TEST_RIP as u32).to_le_bytes().to_vec(),
        vec![0x0F, 0x23, 0xC0, 0xB8, 0x02, 0x04, 0, 0, 0x0F, 0x23, 0xF8],
    ]
    .concat();
    let cfg = Config::UMIP_OFF;
    for mode in [Mode::Prot32, Mode::Long64] {
        let img = GuestImage::build(mode, cfg, Variant::base(&cfg));
        let mut e = UnicornEngine::new().unwrap();
        for round in 0..3 {
            for (bytes, side) in [
                (&set[..], Side::Supervisor),
                (&[0x90][..], Side::User),
                (&[0x90][..], Side::Supervisor),
            ] {
                let p = img.prepare(side, bytes, &NONE).unwrap();
                let o = e.run(&img, side, &p);
                assert!(
                    completed(&o),
                    "{mode} {round} {side} {bytes:02x?}: {:?}",
                    o.outcome
                );
                let alone = UnicornEngine::new().unwrap().run(&img, side, &p);
                assert_eq!(o, alone, "{mode} {round} {side} {bytes:02x?}");
            }
        }
        assert_eq!(e.machines.len(), 1);
    }
}

#[test]
fn msrs_a_run_wrote_outside_the_context_are_put_back() {
    let cfg = Config::UMIP_OFF;
    for mode in [Mode::Prot32, Mode::Long64] {
        let img = GuestImage::build(mode, cfg, Variant::base(&cfg));
        let mut e = UnicornEngine::new().unwrap();
        // MTRRdefType, a variable and a fixed MTRR, MCG_CTL, MC0_STATUS.
        for (msr, value) in [
            (0x2ffu32, 0xc06u32),
            (0x200, 6),
            (0x26f, 0x0606),
            (0x17b, 0),
            (0x401, 5),
        ] {
            // mov ecx, msr; mov eax, value; xor edx, edx; wrmsr
            let write = [
                vec![0xB9],
                msr.to_le_bytes().to_vec(),
                vec![0xB8],
                value.to_le_bytes().to_vec(),
                vec![0x31, 0xD2, 0x0F, 0x30],
            ]
            .concat();
            // mov ecx, msr; rdmsr
            let read = [vec![0xB9], msr.to_le_bytes().to_vec(), vec![0x0F, 0x32]].concat();
            let p = img.prepare(Side::Supervisor, &write, &NONE).unwrap();
            assert!(
                completed(&e.run(&img, Side::Supervisor, &p)),
                "{mode} {msr:#x}"
            );
            let p = img.prepare(Side::Supervisor, &read, &NONE).unwrap();
            let after = e.run(&img, Side::Supervisor, &p);
            let alone = UnicornEngine::new()
                .unwrap()
                .run(&img, Side::Supervisor, &p);
            assert!(completed(&after), "{mode} {msr:#x}: {:?}", after.outcome);
            assert_eq!(after, alone, "{mode} {msr:#x}");
        }
    }
}

#[test]
fn a_wrmsr_the_test_wrote_into_its_own_code_is_put_back_too() {
    // mov ecx, 0x2ff; mov eax, 0xc06; xor edx, edx;
    // inc byte [TEST_RIP + 20]; 0f 2f, which the INC makes a WRMSR.
    let at = (crate::machine::TEST_RIP as u32 + 20).to_le_bytes();
    let write = [
        vec![0xB9, 0xFF, 0x02, 0, 0, 0xB8, 0x06, 0x0C, 0, 0, 0x31, 0xD2],
        vec![0xFE, 0x04, 0x25],
        at.to_vec(),
        vec![0x0F, 0x2F],
    ]
    .concat();
    assert!(!holds_wrmsr(&write));
    // mov ecx, 0x2ff; rdmsr
    let read = [0xB9, 0xFF, 0x02, 0, 0, 0x0F, 0x32];
    let cfg = Config::UMIP_OFF;
    for mode in [Mode::Prot32, Mode::Long64] {
        let img = GuestImage::build(mode, cfg, Variant::base(&cfg));
        let mut e = UnicornEngine::new().unwrap();
        let p = img.prepare(Side::Supervisor, &write, &NONE).unwrap();
        assert!(completed(&e.run(&img, Side::Supervisor, &p)), "{mode}");
        let p = img.prepare(Side::Supervisor, &read, &NONE).unwrap();
        let after = e.run(&img, Side::Supervisor, &p);
        let alone = UnicornEngine::new()
            .unwrap()
            .run(&img, Side::Supervisor, &p);
        assert_eq!(
            after.user.as_ref().map(|u| u.gprs[0]),
            alone.user.as_ref().map(|u| u.gprs[0]),
            "{mode}"
        );
        assert_eq!(after, alone, "{mode}");
    }
}

#[test]
fn the_msrs_outside_the_context_are_the_mtrrs_and_machine_check_ones() {
    let all = msrs_outside_the_context(0x0a);
    assert_eq!(all.len(), 16 + 11 + 2 + 40);
    assert!(all.contains(&0x2ff) && all.contains(&0x20f) && all.contains(&0x427));
    assert!(!all.contains(&0x428) && !all.contains(&0x174));
    assert!(holds_wrmsr(&[0xB9, 0, 0, 0, 0, 0x0F, 0x30]));
    assert!(!holds_wrmsr(&[0x0F, 0x32, 0x30]));
}
