//! How a run that stopped at a HLT ended (pure): the rule every engine
//! applies once it knows where a HLT stopped the guest.
//!
//! The harness puts a HLT (the sentinel, [`SENTINEL`]) in three kinds of
//! places, and nowhere else:
//!
//! - right after the instruction under test (`Prepared::sentinel`) and on
//!   every other byte of the code page the test does not use (the landing
//!   pads of branches): reaching one means the run *completed*;
//! - at the supervisor's entry points, SYSCALL, SYSENTER and the call gate
//!   ([`entry`]), and at the first byte of every IDT vector's stub
//!   (`entry::VECTORS + v * entry::VECTOR_STRIDE`): reaching one means
//!   control was *transferred* there;
//! - as filler around those entry points in the ring-0 page. Reaching a HLT
//!   of the filler is no landing: no instruction is sent there, and no
//!   vector is computed for it.
//!
//! A HLT at CPL 0 runs, and the engine stops with RIP after it; at CPL > 0
//! it raises #GP(0) where it stands ([`Stop`]).

use super::{entry, Prepared, CODE, HANDLERS, PAGE, SENTINEL};
use crate::observe::TransferKind;

/// Where a HLT stopped the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A HLT ran (at CPL 0) and the engine stopped with RIP at `next`, the
    /// byte after it.
    Ran { next: u64 },
    /// A #GP(0) was raised at `at`, where a HLT at CPL > 0 raises it. The
    /// engine has checked the vector (and the error code where it has one).
    Faulted { at: u64 },
}

/// How the run ended at that HLT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landing {
    /// The run completed at `rip`: the sentinel (`at_sentinel`) or a landing
    /// pad elsewhere in the code page.
    Completed { rip: u64, at_sentinel: bool },
    /// Control arrived at a supervisor entry point or at the stub of an IDT
    /// vector; the second field is its address.
    Transfer(TransferKind, u64),
}

/// How the run of `test` ended at a HLT, if that HLT is a landing the
/// harness placed; `None` if it is not (the engine then reports what else
/// stopped it: a trap, or an end it cannot explain).
pub fn landing(test: &Prepared, stop: Stop) -> Option<Landing> {
    let completed = |rip: u64| Landing::Completed {
        rip,
        at_sentinel: rip == test.sentinel,
    };
    let at = match stop {
        Stop::Ran { next } => {
            let at = next.wrapping_sub(1);
            // The instruction under test was itself HLT (after any
            // prefixes): it retired, and the next one is the sentinel.
            if next == test.sentinel && is_hlt(test, at) {
                return Some(completed(test.sentinel));
            }
            if at == test.rip {
                return None;
            }
            at
        }
        // The instruction under test raised it, whatever it is.
        Stop::Faulted { at } if at == test.rip => return None,
        Stop::Faulted { at } => at,
    };
    if at == test.sentinel || is_hlt(test, at) {
        return Some(completed(at));
    }
    entry_kind(at).map(|kind| Landing::Transfer(kind, at))
}

/// A fault or trap raised at `at` with the CPL at `cpl`, in a run of `test`
/// that started at `start_cpl`, that is not the test's own: the CPL
/// changed and it was raised away from the test. So the instruction under
/// test completed, going to another ring (IRET, far RET, SYSEXIT, SYSRET,
/// a call gate), and the code it went to raised it: the run *completed*,
/// at `at` (as a HLT landing pad at CPL > 0 is read).
/// `None` where the trap may be the test's own, and in the harness's own
/// code (the ring-0 page, the exit stubs), whose faults are no landing.
pub fn ran_on(test: &Prepared, start_cpl: u8, cpl: u8, at: u64) -> Option<Landing> {
    let harness = [HANDLERS, entry::EXIT_STUBS].contains(&(at & !(PAGE - 1)));
    (cpl != start_cpl && at != test.rip && !harness).then_some(Landing::Completed {
        rip: at,
        at_sentinel: at == test.sentinel,
    })
}

/// The vector whose exit stub ([`entry::EXIT_STUBS`]) wrote to `addr`, and
/// the stub's address, if the write came from it: RIP at the stub's write
/// or just after it (where an engine completed the write). Any other write
/// there is no landing.
pub fn exit_stub_vector(rip: u64, addr: u64) -> Option<(u8, u64)> {
    let v = u8::try_from(addr.checked_sub(entry::EXIT_MMIO)?).ok()?;
    let stub = entry::EXIT_STUBS + u64::from(v) * entry::EXIT_STUB_STRIDE;
    (rip == stub || rip == stub + entry::EXIT_STUB_LEN).then_some((v, stub))
}

/// Whether `off` lies in the code page and holds a HLT in the test's page.
fn is_hlt(test: &Prepared, off: u64) -> bool {
    (CODE..CODE + PAGE).contains(&off)
        && test.code_page.get((off - CODE) as usize) == Some(&SENTINEL)
}

/// The kind of transfer that ends at a harness entry point, if `off` is one
/// (SYSCALL, SYSENTER, call gate, or the stub of an IDT vector).
pub fn entry_kind(off: u64) -> Option<TransferKind> {
    match off {
        entry::SYSCALL => Some(TransferKind::Syscall),
        entry::SYSENTER => Some(TransferKind::Sysenter),
        entry::CALLGATE => Some(TransferKind::CallGate),
        _ => vector_of_stub(off).map(TransferKind::Interrupt),
    }
}

/// The vector whose IDT stub starts at `off`, if one does (a stub's HLT is
/// its first byte; the bytes after it up to the next stub are filler).
pub fn vector_of_stub(off: u64) -> Option<u8> {
    let vectors_end = entry::VECTORS + 256 * entry::VECTOR_STRIDE;
    ((entry::VECTORS..vectors_end).contains(&off)
        && (off - entry::VECTORS).is_multiple_of(entry::VECTOR_STRIDE))
    .then(|| ((off - entry::VECTORS) / entry::VECTOR_STRIDE) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{GuestImage, Setup, Variant, HANDLERS, LANDING, TEST_RIP};
    use crate::mode::{Config, Mode};
    use crate::observe::Side;

    fn prepared(bytes: &[u8]) -> Prepared {
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        img.prepare(Side::User, bytes, &Setup::default()).unwrap()
    }

    fn stub(v: u8) -> u64 {
        entry::VECTORS + u64::from(v) * entry::VECTOR_STRIDE
    }

    const fn done(rip: u64, at_sentinel: bool) -> Option<Landing> {
        Some(Landing::Completed { rip, at_sentinel })
    }

    #[test]
    fn the_sentinel_is_a_completion_at_any_cpl() {
        let t = prepared(&[0x90]);
        let s = t.sentinel;
        assert_eq!(landing(&t, Stop::Ran { next: s + 1 }), done(s, true));
        assert_eq!(landing(&t, Stop::Faulted { at: s }), done(s, true));
    }

    #[test]
    fn a_landing_pad_in_the_code_page_is_a_completion_off_the_sentinel() {
        let t = prepared(&[0xEB, 0x00]);
        assert_eq!(
            landing(&t, Stop::Ran { next: LANDING + 1 }),
            done(LANDING, false)
        );
        assert_eq!(
            landing(&t, Stop::Faulted { at: LANDING }),
            done(LANDING, false)
        );
        // A byte of the test itself is no landing pad.
        assert_eq!(landing(&t, Stop::Ran { next: TEST_RIP + 2 }), None);
    }

    #[test]
    fn a_hlt_under_test_completes_at_cpl0_and_traps_at_cpl3() {
        for bytes in [&[0xF4][..], &[0xF3, 0xF4], &[0x66, 0xF4]] {
            let t = prepared(bytes);
            assert_eq!(
                landing(&t, Stop::Ran { next: t.sentinel }),
                done(t.sentinel, true),
                "{bytes:02x?}"
            );
            assert_eq!(landing(&t, Stop::Faulted { at: TEST_RIP }), None);
        }
        // Only a HLT stops one byte before the sentinel.
        let t = prepared(&[0x90, 0x90]);
        assert_eq!(landing(&t, Stop::Ran { next: t.sentinel }), None);
    }

    #[test]
    fn entry_points_and_vector_stubs_are_transfers() {
        let t = prepared(&[0x0F, 0x05]);
        for (off, kind) in [
            (entry::SYSCALL, TransferKind::Syscall),
            (entry::SYSENTER, TransferKind::Sysenter),
            (entry::CALLGATE, TransferKind::CallGate),
            (stub(0), TransferKind::Interrupt(0)),
            (stub(13), TransferKind::Interrupt(13)),
            (stub(255), TransferKind::Interrupt(255)),
        ] {
            let want = Some(Landing::Transfer(kind, off));
            assert_eq!(landing(&t, Stop::Ran { next: off + 1 }), want, "{off:#x}");
            assert_eq!(landing(&t, Stop::Faulted { at: off }), want, "{off:#x}");
        }
    }

    #[test]
    fn the_filler_of_the_ring0_page_is_no_landing() {
        let t = prepared(&[0x90]);
        for off in [
            stub(0) + 1,
            stub(13) + 2,
            stub(255) + 3,
            entry::SYSCALL + 4,
            entry::CALLGATE + 1,
            HANDLERS + PAGE - 1,
        ] {
            assert_eq!(landing(&t, Stop::Ran { next: off + 1 }), None, "{off:#x}");
            assert_eq!(landing(&t, Stop::Faulted { at: off }), None, "{off:#x}");
        }
    }

    #[test]
    fn a_byte_the_test_overwrote_or_outside_the_harness_is_no_landing() {
        let mut t = prepared(&[0x90]);
        t.code_page[(LANDING - CODE) as usize] = 0x90;
        assert_eq!(landing(&t, Stop::Ran { next: LANDING + 1 }), None);
        assert_eq!(landing(&t, Stop::Faulted { at: LANDING }), None);
        for off in [0, CODE - 1, CODE + PAGE, 0x1_0000] {
            assert_eq!(landing(&t, Stop::Faulted { at: off }), None, "{off:#x}");
        }
    }

    #[test]
    fn a_trap_in_another_ring_away_from_the_test_means_the_test_completed() {
        let t = prepared(&[0x0F, 0x35]);
        assert_eq!(ran_on(&t, 0, 3, 0x15000), done(0x15000, false));
        assert_eq!(ran_on(&t, 0, 3, t.sentinel), done(t.sentinel, true));
        assert_eq!(ran_on(&t, 1, 3, 0x15000), done(0x15000, false));
        // Its own ring, or the test's own RIP: the trap may be the test's.
        assert_eq!(ran_on(&t, 3, 3, 0x15000), None);
        assert_eq!(ran_on(&t, 0, 3, TEST_RIP), None);
        // The harness's own code: its faults are no landing.
        assert_eq!(ran_on(&t, 0, 3, HANDLERS + 0x34), None);
        assert_eq!(ran_on(&t, 1, 0, entry::EXIT_STUBS + 13 * 8), None);
    }

    #[test]
    fn an_exit_stub_names_its_vector_by_the_address_it_writes() {
        let stub = |v: u64| entry::EXIT_STUBS + v * entry::EXIT_STUB_STRIDE;
        let mmio = entry::EXIT_MMIO;
        assert_eq!(exit_stub_vector(stub(13), mmio + 13), Some((13, stub(13))));
        let after = stub(255) + entry::EXIT_STUB_LEN;
        assert_eq!(exit_stub_vector(after, mmio + 255), Some((255, stub(255))));
        // Another stub's RIP, a test's write, an address past the vectors.
        assert_eq!(exit_stub_vector(stub(12), mmio + 13), None);
        assert_eq!(exit_stub_vector(TEST_RIP + 7, mmio), None);
        assert_eq!(exit_stub_vector(stub(0), mmio + 256), None);
        assert_eq!(exit_stub_vector(stub(0), mmio - 1), None);
    }

    #[test]
    fn exit_stubs_are_writes_of_al_to_their_vectors_address() {
        for v in [0u8, 13, 255] {
            let bytes = entry::exit_stub(v);
            let mut d = iced_x86::Decoder::with_ip(64, &bytes, 0, iced_x86::DecoderOptions::NONE);
            let i = d.decode();
            assert_eq!(i.len() as u64, entry::EXIT_STUB_LEN, "{v}");
            assert_eq!(i.code(), iced_x86::Code::Mov_rm8_r8, "{v}");
            assert_eq!(i.op1_register(), iced_x86::Register::AL);
            assert_eq!(i.memory_base(), iced_x86::Register::None);
            assert_eq!(i.memory_displacement64(), entry::EXIT_MMIO + u64::from(v));
        }
    }

    #[test]
    fn stubs_are_found_by_their_first_byte_only() {
        assert_eq!(vector_of_stub(stub(0x80)), Some(0x80));
        assert_eq!(vector_of_stub(stub(0x80) + 1), None);
        assert_eq!(vector_of_stub(entry::VECTORS - 1), None);
        assert_eq!(vector_of_stub(stub(255) + entry::VECTOR_STRIDE), None);
        assert_eq!(entry_kind(entry::BOOT_SUPERVISOR), None);
        assert_eq!(entry_kind(entry::BOOT_USER), None);
    }
}
