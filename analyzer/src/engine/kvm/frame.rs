//! Frame decoding: what a HLT exit at CPL 0 means for a run, from the
//! registers at the exit and guest memory alone (pure; tested without KVM).
//!
//! Which HLT it was is the machine's landing rule ([`landing`]): the sentinel
//! or a landing pad (the run completed at CPL 0), a harness entry stub
//! (SYSCALL, SYSENTER, call gate: a transfer), or the stub of an IDT vector.
//! Then the frame on the handler's stack gives the error code and the RIP of
//! the exception; a HLT at CPL 3 raises #GP(0), so a #GP(0) frame whose RIP
//! is a landing is a completion (or an arrival at an entry point) at CPL 3,
//! with the state at the HLT rebuilt from the frame.

use super::memory::bytes_at;
use super::vcpu::cpl_of;
use super::Flavor;
use crate::machine::landing::{exit_stub_vector, landing, ran_on, Landing, Stop};
use crate::machine::{GuestImage, Prepared, CODE, DATA, PAGE, STACK};
use crate::mode::Mode;
use crate::observe::{Outcome, TransferKind};
use kvm_bindings::{kvm_regs, kvm_sregs};

/// Vectors whose exceptions push an error code.
const ERROR_CODE_VECTORS: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

/// A HLT exit: the registers KVM reports and the memory they refer to.
pub(super) struct Halt<'a> {
    pub(super) image: &'a GuestImage,
    pub(super) test: &'a Prepared,
    /// The CPL the run started at.
    pub(super) start_cpl: u8,
    /// Guest physical memory.
    pub(super) mem: &'a [u8],
    pub(super) regs: kvm_regs,
    pub(super) sregs: kvm_sregs,
    /// Named in the message of an exception without a frame.
    pub(super) flavor: Flavor,
}

/// What a HLT exit means for the run.
#[derive(Debug, PartialEq)]
pub(super) enum End {
    /// Only an outcome: a trap, or an end the engine cannot explain.
    Only(Outcome),
    /// An outcome with the machine state at the end of the run: the system
    /// state is read from `at`, and the user state too if `user_rip` is set.
    State {
        outcome: Outcome,
        at: Box<At>,
        user_rip: Option<u64>,
    },
}

/// The registers at the end of a run (at the exit, or rebuilt from a frame).
#[derive(Debug, PartialEq)]
pub(super) struct At {
    pub(super) regs: kvm_regs,
    pub(super) sregs: kvm_sregs,
    /// The descriptor caches of CS and SS are not known (the frame carries
    /// only selectors).
    pub(super) uncached: [bool; 2],
}

impl At {
    fn exit(h: &Halt) -> Box<At> {
        Box::new(At {
            regs: h.regs,
            sregs: h.sregs,
            uncached: [false; 2],
        })
    }
}

/// What left the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// A HLT at CPL 0.
    Hlt,
    /// A write to this guest-physical address, which no memory backs: the
    /// exit stub of a vector ([`exit_stub_vector`]), or the test's own.
    MmioWrite(u64),
}

/// Decodes an exit: a HLT at CPL 0 (the sentinel, a landing pad, or an
/// entry stub, [`landing`]), or an MMIO write.
pub(super) fn decode(h: &Halt, arrival: Arrival) -> End {
    match arrival {
        Arrival::Hlt => decode_hlt(h),
        Arrival::MmioWrite(addr) => match exit_stub_vector(h.regs.rip, addr) {
            Some((vector, stub)) if h.image.has_exit_stubs() => decode_vector(h, vector, stub),
            _ => End::Only(Outcome::EngineError(format!(
                "mmio write at {addr:#x} at rip {:#x}",
                h.regs.rip
            ))),
        },
    }
}

/// A HLT exit at CPL 0.
fn decode_hlt(h: &Halt) -> End {
    let hlt_at = h.regs.rip.wrapping_sub(1);
    let cpl_now = cpl_of(h.image.mode, &h.sregs);
    match landing(h.test, Stop::Ran { next: h.regs.rip }) {
        Some(Landing::Completed { rip, at_sentinel }) => End::State {
            outcome: Outcome::Completed { rip, at_sentinel },
            at: At::exit(h),
            user_rip: Some(rip),
        },
        // The stub of a vector: the frame on the handler's stack tells what
        // arrived there.
        Some(Landing::Transfer(TransferKind::Interrupt(vector), stub)) => {
            decode_vector(h, vector, stub)
        }
        Some(Landing::Transfer(kind, rip)) => End::State {
            outcome: Outcome::Transfer {
                kind,
                rip,
                cpl: Some(cpl_now),
            },
            at: At::exit(h),
            user_rip: None,
        },
        None => End::Only(Outcome::EngineError(format!(
            "hlt at unexpected rip {hlt_at:#x}"
        ))),
    }
}

/// An exception or interrupt arrived at the handler of `vector`.
fn decode_vector(h: &Halt, vector: u8, handler: u64) -> End {
    let (image, test, regs, sregs) = (h.image, h.test, &h.regs, &h.sregs);
    let (size, stack_mask) = match image.mode {
        // 32c: the handlers are 64-bit; the frame is a 64-bit one.
        Mode::Long64 | Mode::Compat32 => (8usize, u64::MAX),
        Mode::Real => (2, 0xFFFF),
        Mode::Prot16 | Mode::Prot32 => (
            4,
            if sregs.ss.db != 0 {
                0xFFFF_FFFF
            } else {
                0xFFFF
            },
        ),
    };
    let sp = regs.rsp & stack_mask;
    let has_ec = image.mode.is_protected() && ERROR_CODE_VECTORS.contains(&vector);
    let first = usize::from(has_ec);
    // Where the frame is: at SS:ESP. Seen on PVM: in 16-bit protected mode
    // with a nonzero SS base the frame is written at linear ESP, ignoring
    // the SS base (nothing the test observes lives there: the shifted
    // image keeps its pages SEG_SHIFT higher, and the guest's writes of
    // the last run are undone before each run); it is read where it was
    // written. A frame holds a code selector of the image's GDT.
    let holds_frame = |frame: u64| {
        read_phys(h.mem, frame.wrapping_add(((first + 1) * size) as u64), size)
            .is_some_and(|cs| is_code_selector(h, cs))
    };
    let based = phys(image, sp);
    let frame = if !holds_frame(based) && sregs.ss.base != 0 && holds_frame(sp) {
        sp
    } else {
        based
    };
    let slot = |i: usize| read_phys(h.mem, frame.wrapping_add((i * size) as u64), size);
    let cpl_now = cpl_of(image.mode, sregs);
    // A software interrupt: the test is INT n / INT3 / INTO / INT1 for
    // this vector and the frame (no error code) returns after it.
    let soft = test.soft_interrupt == Some(vector) && slot(0) == Some(test.sentinel);
    if soft {
        return End::State {
            outcome: Outcome::Transfer {
                kind: TransferKind::Interrupt(vector),
                rip: handler,
                cpl: Some(cpl_now),
            },
            at: At::exit(h),
            user_rip: None,
        };
    }
    let error_code = if has_ec {
        slot(0).map(|v| v as u32)
    } else {
        None
    };
    let (Some(frame_rip), Some(frame_cs), Some(frame_flags)) =
        (slot(first), slot(first + 1), slot(first + 2))
    else {
        return End::Only(Outcome::EngineError(format!(
            "vector {vector}: exception frame at {sp:#x} outside guest memory"
        )));
    };
    if !is_code_selector(h, frame_cs) {
        return End::Only(Outcome::EngineError(format!(
            "{}: vector {vector}: no exception frame at ss:{sp:#x} (ss base {:#x})",
            h.flavor, sregs.ss.base,
        )));
    }
    // A HLT at CPL > 0 raises #GP(0) where it stands: at the sentinel or a
    // landing pad the run completed; at a harness entry point control
    // arrived there at CPL > 0 (seen on PVM: SYSCALL from CPL 3 jumps to
    // LSTAR and stays at CPL 3). Anything else is a trap.
    let landed = if vector == 13 && error_code == Some(0) {
        landing(test, Stop::Faulted { at: frame_rip })
    } else {
        None
    };
    // Raised in another ring than the run started in, away from the test:
    // the code the test went to raised it ([`ran_on`]).
    // (Real mode has no CPL: a CS value's low bits are no RPL there.)
    let frame_cpl = if image.mode.is_protected() {
        (frame_cs & 3) as u8
    } else {
        0
    };
    let landed = landed.or_else(|| ran_on(test, h.start_cpl, frame_cpl, frame_rip));
    let Some(landed) = landed else {
        return End::Only(Outcome::Trap {
            vector,
            error_code,
            rip: frame_rip,
            // CR2 is cleared before every run; the handler leaves it alone.
            address: (vector == 14).then_some(sregs.cr2),
        });
    };
    // Rebuild the state at the HLT: the frame has RIP, CS, RFLAGS and
    // (with a privilege change, always here) RSP and SS.
    let cs_changed = (frame_cs as u16) & 3 != cpl_now as u16 || image.mode.is_long();
    let (frame_rsp, frame_ss) = if cs_changed {
        (slot(first + 3), slot(first + 4))
    } else {
        (None, None)
    };
    let mut at = *regs;
    at.rip = frame_rip;
    at.rflags = frame_flags;
    at.rsp = frame_rsp.unwrap_or(sp.wrapping_add(((first + 3) * size) as u64));
    let mut s = *sregs;
    s.cs.selector = frame_cs as u16;
    s.cs.dpl = (frame_cs & 3) as u8;
    if let Some(ss) = frame_ss {
        s.ss.selector = ss as u16;
        s.ss.dpl = (ss & 3) as u8;
    }
    let at = Box::new(At {
        regs: at,
        sregs: s,
        uncached: [true, frame_ss.is_some()],
    });
    match landed {
        Landing::Transfer(kind, rip) => End::State {
            outcome: Outcome::Transfer {
                kind,
                rip,
                cpl: Some((frame_cs & 3) as u8),
            },
            at,
            user_rip: None,
        },
        Landing::Completed { rip, at_sentinel } => End::State {
            outcome: Outcome::Completed { rip, at_sentinel },
            at,
            user_rip: Some(rip),
        },
    }
}

/// Whether `cs` selects a code segment of the image's GDT (a frame's CS
/// always does; a null selector, an LDT selector or one past the limit
/// never). Real mode has no descriptors: any value.
fn is_code_selector(h: &Halt, cs: u64) -> bool {
    if !h.image.mode.is_protected() {
        return true;
    }
    let (base, limit) = h.image.sys.gdtr;
    let index = cs & 0xFFF8;
    if cs > 0xFFFF || cs & 4 != 0 || index == 0 || index + 7 > u64::from(limit) {
        return false;
    }
    // The access byte: present, a code or data segment, and code.
    read_phys(h.mem, base + index + 5, 1).is_some_and(|a| a & 0x98 == 0x98)
}

/// Physical address of a program-view offset in the harness's pages.
fn phys(image: &GuestImage, off: u64) -> u64 {
    let page = off & !(PAGE - 1);
    let within = off - page;
    if page == CODE {
        image.code_phys + within
    } else if page == DATA {
        image.data_phys + within
    } else if page == STACK {
        image.stack_phys + within
    } else if image.mode.has_paging() {
        off
    } else {
        image.seg_base + off
    }
}

/// A little-endian value of `size` bytes at physical address `at`.
fn read_phys(mem: &[u8], at: u64, size: usize) -> Option<u64> {
    let b = bytes_at(mem, at, size)?;
    let mut v = [0u8; 8];
    v[..size].copy_from_slice(b);
    Some(u64::from_le_bytes(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{entry, sel, Variant, KSTACK_TOP, TEST_RIP};
    use crate::mode::Config;

    /// A 64-bit base image, a test of `bytes` at CPL 3, and guest memory as
    /// KVM would hold it for the run.
    fn setup64(bytes: &[u8]) -> (GuestImage, Prepared, Vec<u8>) {
        setup_in(Mode::Long64, Variant::base(&Config::UMIP_OFF), bytes)
    }

    /// As [`setup64`], in the image of `mode` and `variant`.
    fn setup_in(mode: Mode, variant: Variant, bytes: &[u8]) -> (GuestImage, Prepared, Vec<u8>) {
        let img = GuestImage::build(mode, Config::UMIP_OFF, variant);
        let setup = crate::explain::entry_from_bytes(bytes, mode)
            .map(|e| e.setup)
            .unwrap_or_default();
        // The user side; real mode has only the supervisor's.
        let side = if mode.is_protected() {
            crate::observe::Side::User
        } else {
            crate::observe::Side::Supervisor
        };
        let p = img.prepare(side, bytes, &setup).unwrap();
        let mut mem = img.memory.clone();
        for (phys, page) in [
            (img.code_phys, &p.code_page),
            (img.data_phys, &p.data_page),
            (img.stack_phys, &p.stack_page),
        ] {
            mem[phys as usize..][..PAGE as usize].copy_from_slice(page);
        }
        (img, p, mem)
    }

    /// Writes a 64-bit frame of qwords below the top of the ring-0 stack and
    /// gives the registers at the HLT of `vector`'s stub (ring 0).
    fn frame64(mem: &mut [u8], vector: u8, qwords: &[u64]) -> (kvm_regs, kvm_sregs) {
        let sp = KSTACK_TOP - 8 * qwords.len() as u64;
        for (i, q) in qwords.iter().enumerate() {
            let at = (sp + 8 * i as u64) as usize;
            mem[at..at + 8].copy_from_slice(&q.to_le_bytes());
        }
        let stub = entry::VECTORS + u64::from(vector) * entry::VECTOR_STRIDE;
        let regs = kvm_regs {
            rip: stub + 1,
            rsp: sp,
            rflags: 0x2,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.cs.selector = sel::KCODE;
        sregs.cs.dpl = 0;
        (regs, sregs)
    }

    fn halt<'a>(
        img: &'a GuestImage,
        p: &'a Prepared,
        mem: &'a [u8],
        (regs, sregs): (kvm_regs, kvm_sregs),
    ) -> Halt<'a> {
        Halt {
            image: img,
            test: p,
            // The tests' runs are at CPL 3 (setup64).
            start_cpl: 3,
            mem,
            regs,
            sregs,
            flavor: Flavor::Pvm,
        }
    }

    const UCS: u64 = sel::UCODE as u64;
    const USS: u64 = sel::UDATA as u64;

    #[test]
    fn gp0_at_the_test_rip_is_a_trap() {
        let (img, p, mut mem) = setup64(&[0xF4]); // hlt at CPL 3
        let at = frame64(&mut mem, 13, &[0, TEST_RIP, UCS, 0x202, 0x9800, USS]);
        assert_eq!(
            decode_hlt(&halt(&img, &p, &mem, at)),
            End::Only(Outcome::Trap {
                vector: 13,
                error_code: Some(0),
                rip: TEST_RIP,
                address: None,
            })
        );
    }

    #[test]
    fn a_fault_in_another_ring_away_from_the_test_is_a_completion_there() {
        // The test started at CPL 0 and went to CPL 3, where 0x15000 faulted.
        let (img, p, mut mem) = setup64(&[0x0F, 0x35]);
        let at = frame64(&mut mem, 13, &[0, 0x15000, UCS, 0x202, 0x9800, USS]);
        let h = Halt {
            start_cpl: 0,
            ..halt(&img, &p, &mem, at)
        };
        assert!(matches!(
            decode_hlt(&h),
            End::State {
                outcome: Outcome::Completed {
                    rip: 0x15000,
                    at_sentinel: false
                },
                ..
            }
        ));
        // In the ring the run started in, it is a trap.
        let at = frame64(&mut mem, 13, &[0, 0x15000, UCS, 0x202, 0x9800, USS]);
        assert!(matches!(
            decode_hlt(&halt(&img, &p, &mem, at)),
            End::Only(Outcome::Trap { vector: 13, .. })
        ));
    }

    #[test]
    fn an_exit_stubs_write_is_read_as_its_vectors_arrival() {
        let ring1 = Variant {
            supervisor_dpl: 1,
            ..Variant::base(&Config::UMIP_OFF)
        };
        let (img, p, mut mem) = setup_in(Mode::Long64, ring1, &[0x0F, 0x0B]);
        let stub6 = entry::EXIT_STUBS + 6 * entry::EXIT_STUB_STRIDE;
        let (mut regs, sregs) = frame64(&mut mem, 6, &[TEST_RIP, UCS, 0x202, 0x9800, USS]);
        // KVM completed the write: RIP after it.
        regs.rip = stub6 + entry::EXIT_STUB_LEN;
        let h = halt(&img, &p, &mem, (regs, sregs));
        let ud = End::Only(Outcome::Trap {
            vector: 6,
            error_code: None,
            rip: TEST_RIP,
            address: None,
        });
        assert_eq!(decode(&h, Arrival::MmioWrite(entry::EXIT_MMIO + 6)), ud);
        // Another vector's address than the stub's, or an image without
        // exit stubs: a write the engine cannot explain.
        let other = decode(&h, Arrival::MmioWrite(entry::EXIT_MMIO + 7));
        assert!(
            matches!(other, End::Only(Outcome::EngineError(ref t)) if t.starts_with("mmio write at 0x40007")),
            "{other:?}"
        );
        let (img0, p0, mem0) = setup64(&[0x0F, 0x0B]);
        let base = decode(
            &halt(&img0, &p0, &mem0, (regs, sregs)),
            Arrival::MmioWrite(entry::EXIT_MMIO + 6),
        );
        assert!(
            matches!(base, End::Only(Outcome::EngineError(_))),
            "{base:?}"
        );
    }

    #[test]
    fn a_real_mode_cs_has_no_cpl() {
        // A fault after a far jump to a segment whose low bits are set:
        // still the run's trap (real mode has no rings).
        let (img, p, mut mem) = setup_in(Mode::Real, Variant::base(&Config::UMIP_OFF), &[0x90]);
        let sp = 0x6FF0u64;
        for (i, w) in [0x1234u16, 0x0001, 0x0002].iter().enumerate() {
            mem[sp as usize + 2 * i..][..2].copy_from_slice(&w.to_le_bytes());
        }
        let regs = kvm_regs {
            rip: entry::VECTORS + 6 * entry::VECTOR_STRIDE + 1,
            rsp: sp,
            ..Default::default()
        };
        let h = Halt {
            start_cpl: 0,
            ..halt(&img, &p, &mem, (regs, kvm_sregs::default()))
        };
        assert!(
            matches!(
                decode_hlt(&h),
                End::Only(Outcome::Trap {
                    vector: 6,
                    rip: 0x1234,
                    ..
                })
            ),
            "{:?}",
            decode_hlt(&h)
        );
    }

    #[test]
    fn a_frame_holds_a_code_selector_of_the_images_gdt() {
        let (img, p, mem) = setup64(&[0x90]);
        let h = halt(&img, &p, &mem, (kvm_regs::default(), kvm_sregs::default()));
        assert!(is_code_selector(&h, u64::from(sel::KCODE)));
        assert!(is_code_selector(&h, UCS));
        for not_code in [
            0,
            3,
            USS,
            u64::from(sel::TSS),
            u64::from(sel::LDT_DATA),
            0x1_0008,
            0xF6E9,
        ] {
            assert!(!is_code_selector(&h, not_code), "{not_code:#x}");
        }
        // 32c: the 32-bit code slot at the end of its longer GDT.
        let (img, p, mem) = setup_in(Mode::Compat32, Variant::base(&Config::UMIP_OFF), &[0x90]);
        let h = halt(&img, &p, &mem, (kvm_regs::default(), kvm_sregs::default()));
        assert!(is_code_selector(&h, u64::from(sel::KCODE32)));
    }

    #[test]
    fn page_fault_keeps_its_error_code() {
        let (img, p, mut mem) = setup64(&[0x8B, 0x04, 0x25, 0, 0, 0, 0]);
        let at = frame64(&mut mem, 14, &[4, TEST_RIP, UCS, 0x202, 0x9800, USS]);
        assert_eq!(
            decode_hlt(&halt(&img, &p, &mem, at)),
            End::Only(Outcome::Trap {
                vector: 14,
                error_code: Some(4),
                rip: TEST_RIP,
                address: Some(0),
            })
        );
    }

    #[test]
    fn gp0_at_the_sentinel_is_a_completion_at_cpl3_rebuilt_from_the_frame() {
        let (img, p, mut mem) = setup64(&[0x90]);
        let (sentinel, rsp) = (p.sentinel, 0x9800);
        let at = frame64(&mut mem, 13, &[0, sentinel, UCS, 0x246, rsp, USS]);
        let End::State {
            outcome,
            at,
            user_rip,
        } = decode_hlt(&halt(&img, &p, &mem, at))
        else {
            panic!("no state");
        };
        assert_eq!(
            outcome,
            Outcome::Completed {
                rip: sentinel,
                at_sentinel: true
            }
        );
        assert_eq!(user_rip, Some(sentinel));
        assert_eq!(
            (at.regs.rip, at.regs.rsp, at.regs.rflags),
            (sentinel, rsp, 0x246)
        );
        assert_eq!((at.sregs.cs.selector, at.sregs.cs.dpl), (sel::UCODE, 3));
        assert_eq!((at.sregs.ss.selector, at.sregs.ss.dpl), (sel::UDATA, 3));
        assert_eq!(at.uncached, [true, true]);
    }

    #[test]
    fn a_software_interrupt_is_a_transfer_to_its_stub() {
        let (img, p, mut mem) = setup64(&[0xCD, 0x80]); // int 0x80
        let at = frame64(&mut mem, 0x80, &[p.sentinel, UCS, 0x202, 0x9800, USS]);
        let stub = entry::VECTORS + 0x80 * entry::VECTOR_STRIDE;
        let End::State {
            outcome, user_rip, ..
        } = decode_hlt(&halt(&img, &p, &mem, at))
        else {
            panic!("no state");
        };
        assert_eq!(
            outcome,
            Outcome::Transfer {
                kind: TransferKind::Interrupt(0x80),
                rip: stub,
                cpl: Some(0)
            }
        );
        assert_eq!(user_rip, None);
    }

    #[test]
    fn a_syscall_stub_at_cpl0_is_a_transfer() {
        let (img, p, mem) = setup64(&[0x0F, 0x05]);
        let regs = kvm_regs {
            rip: entry::SYSCALL + 1,
            ..Default::default()
        };
        let End::State { outcome, .. } =
            decode_hlt(&halt(&img, &p, &mem, (regs, kvm_sregs::default())))
        else {
            panic!("no state");
        };
        assert_eq!(
            outcome,
            Outcome::Transfer {
                kind: TransferKind::Syscall,
                rip: entry::SYSCALL,
                cpl: Some(0)
            }
        );
    }

    #[test]
    fn a_hlt_at_an_unknown_address_or_without_a_frame_is_an_engine_error() {
        let (img, p, mut mem) = setup64(&[0x90]);
        // Between two vector stubs.
        let regs = kvm_regs {
            rip: entry::VECTORS + 2 + 1,
            ..Default::default()
        };
        let got = decode_hlt(&halt(&img, &p, &mem, (regs, kvm_sregs::default())));
        let want = format!("hlt at unexpected rip {:#x}", entry::VECTORS + 2);
        assert_eq!(got, End::Only(Outcome::EngineError(want)));
        // A stack pointer outside guest memory.
        let (mut regs, sregs) = frame64(&mut mem, 6, &[TEST_RIP, UCS, 0x202]);
        regs.rsp = 0x4000_0000;
        let got = decode_hlt(&halt(&img, &p, &mem, (regs, sregs)));
        assert_eq!(
            got,
            End::Only(Outcome::EngineError(
                "vector 6: exception frame at 0x40000000 outside guest memory".into()
            ))
        );
        // A frame with a null CS.
        let at = frame64(&mut mem, 6, &[TEST_RIP, 0, 0x202]);
        let End::Only(Outcome::EngineError(t)) = decode_hlt(&halt(&img, &p, &mem, at)) else {
            panic!("not an engine error");
        };
        assert!(
            t.starts_with("kvm_pvm: vector 6: no exception frame at ss:"),
            "{t}"
        );
    }
}
