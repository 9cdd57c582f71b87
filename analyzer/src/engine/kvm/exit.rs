//! The exit loop: KVM_RUN until an exit that ends the run, under the
//! watchdog's deadline, and what each exit means (pure: [`step`]).
//!
//! A run still inside the guest after [`PAUSE_FROM`] is interrupted (the
//! watchdog's signal) every [`PAUSE_EVERY`]; at each pause the whole guest state is sampled (general,
//! special and debug registers, pending events, the XSAVE state, the
//! image's MSRs and all of guest memory). Two samples of one run that are
//! equal mean the guest's state came back to where it was: with no timer
//! or device input (no in-kernel irqchip, port reads answer all ones) its
//! future repeats the same cycle, so the run is a `Hang` now, not at
//! [`TIME_LIMIT`]. (On PVM, VMCALL, VMMCALL and VMGEXIT at CPL 0 loop
//! inside KVM that way: 164 of the default scan's runs, each 100 ms.)

use super::frame::{self, Arrival, End, Halt};
use super::hostsegs;
use super::vcpu::{system_state_now, user_state};
use super::{Ending, Flavor, KvmEngine, KvmError, TIME_LIMIT};
use crate::machine::{GuestImage, Prepared};
use crate::mode::Mode;
use crate::observe::{Outcome, Segment, Side};
use kvm_bindings::{kvm_debugregs, kvm_regs, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::time::{Duration, Instant};

/// Most port-I/O exits one run may take before it counts as a hang.
const IO_EXIT_LIMIT: usize = 4096;

/// From when on a run is paused every [`PAUSE_EVERY`] to look for a stall.
pub(super) const PAUSE_FROM: Duration = Duration::from_millis(10);

/// How long a paused run runs on until its next pause (and how long after
/// a signal the watchdog signals again while the run has not returned).
pub(super) const PAUSE_EVERY: Duration = Duration::from_millis(5);

/// How the exit loop ended (where not in a pause).
enum Exit {
    /// A HLT at CPL 0, or an MMIO write (perhaps an exit stub's): decode
    /// it ([`frame::decode`]).
    Stop(Arrival),
    Ended(Outcome),
}

/// The whole guest state at a pause.
#[derive(PartialEq)]
struct Sample {
    regs: kvm_regs,
    sregs: kvm_sregs,
    events: kvm_vcpu_events,
    debug: kvm_debugregs,
    xsave: Option<Box<[u32; 1024]>>,
    msrs: Vec<(u32, u64)>,
    mem: Vec<u8>,
}

/// What one exit means for the loop.
#[derive(Debug, PartialEq)]
enum Step {
    Stop(Arrival),
    /// Port I/O (IN reads 0xFF): go on.
    Go,
    /// A signal before the deadline.
    Pause,
    End(Outcome),
}

/// What `exit` means; `past_deadline` tells whether the run's time is up
/// (asked only for a signal exit: before it, a pause).
fn step(exit: VcpuExit<'_>, past_deadline: impl FnOnce() -> bool) -> Step {
    match exit {
        VcpuExit::Hlt => Step::Stop(Arrival::Hlt),
        VcpuExit::IoIn(_, data) => {
            data.fill(0xFF);
            Step::Go
        }
        VcpuExit::IoOut(..) => Step::Go,
        VcpuExit::Shutdown => Step::End(Outcome::Shutdown),
        VcpuExit::MmioRead(a, _) => Step::End(Outcome::EngineError(format!("mmio read at {a:#x}"))),
        VcpuExit::MmioWrite(a, _) => Step::Stop(Arrival::MmioWrite(a)),
        VcpuExit::InternalError => {
            Step::End(Outcome::EngineError("KVM_EXIT_INTERNAL_ERROR".into()))
        }
        VcpuExit::FailEntry(reason, cpu) => Step::End(Outcome::EngineError(format!(
            "KVM_EXIT_FAIL_ENTRY (reason {reason:#x}, cpu {cpu})"
        ))),
        VcpuExit::Intr => {
            if past_deadline() {
                Step::End(Outcome::Hang)
            } else {
                Step::Pause
            }
        }
        other => Step::End(Outcome::EngineError(format!("unexpected exit {other:?}"))),
    }
}

/// Runs the vCPU until an exit that ends the run, or a pause (`None`: a
/// signal before the deadline, the watchdog's pause or a late one)
/// (`synced`: KVM stores the registers into the sync_regs area when
/// KVM_RUN returns; `io_exits`: the run's port-I/O exits so far).
fn run_loop(
    vcpu: &mut VcpuFd,
    deadline: Instant,
    synced: bool,
    io_exits: &mut usize,
) -> Result<Option<Exit>, KvmError> {
    loop {
        let exit = match vcpu.run() {
            Ok(e) => e,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                if Instant::now() >= deadline {
                    return Ok(Some(Exit::Ended(Outcome::Hang)));
                }
                // The watchdog's pause, or a late signal from an earlier run.
                return Ok(None);
            }
            Err(e) => return Err(KvmError::Run(e)),
        };
        match step(exit, || Instant::now() >= deadline) {
            Step::Stop(a) => return Ok(Some(Exit::Stop(a))),
            Step::Pause => return Ok(None),
            Step::End(Outcome::EngineError(t)) => {
                let rip = if synced {
                    vcpu.sync_regs().regs.rip
                } else {
                    vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX)
                };
                return Ok(Some(Exit::Ended(Outcome::EngineError(format!(
                    "{t} at rip {rip:#x}"
                )))));
            }
            Step::End(o) => return Ok(Some(Exit::Ended(o))),
            Step::Go => {}
        }
        *io_exits += 1;
        if *io_exits > IO_EXIT_LIMIT || Instant::now() >= deadline {
            return Ok(Some(Exit::Ended(Outcome::Hang)));
        }
    }
}

impl KvmEngine {
    /// Runs the vCPU, under the watchdog, until the run ends. On PVM the
    /// vCPU thread holds the side's DS/ES/FS/GS selectors while it runs
    /// ([`hostsegs`]); where they cannot be loaded the run is not run.
    /// `msrs`: the image's MSRs after the run where it cannot have changed
    /// them (else they are read from the vCPU).
    pub(super) fn execute(
        &mut self,
        image: &GuestImage,
        side: Side,
        test: &Prepared,
        msrs: Option<&[(u32, u64)]>,
    ) -> Result<Ending, KvmError> {
        let want = thread_selectors(self.flavor, image, side);
        let loaded = match want {
            None => None,
            Some(want) => match hostsegs::load(want) {
                Ok(l) => Some(l),
                Err(why) => {
                    // No KVM_RUN: the sync_regs area holds this run's
                    // registers, not the vCPU's.
                    self.synced = false;
                    return Ok(Ending::only(Outcome::NotSupported(format!(
                        "{}: {why}",
                        self.flavor
                    ))));
                }
            },
        };
        let start = Instant::now();
        let deadline = start + TIME_LIMIT;
        let sync = self.sync;
        let mut io_exits = 0;
        let mut first: Option<Sample> = None;
        let mut pause_at = start + PAUSE_FROM;
        let result = loop {
            let vcpu = &mut self.guest.vcpu;
            match self.watchdog.run(deadline, pause_at, || {
                run_loop(vcpu, deadline, sync, &mut io_exits)
            }) {
                Ok(Some(exit)) => break Ok(exit),
                Err(e) => break Err(e),
                Ok(None) => {}
            }
            // A pause: the same state twice is a cycle. (A late signal
            // from an earlier run may pause it before PAUSE_FROM.)
            pause_at = (Instant::now() + PAUSE_EVERY).max(start + PAUSE_FROM);
            let Some(now) = self.sample(image) else {
                continue;
            };
            match &first {
                Some(s) if *s == now => break Ok(Exit::Ended(Outcome::Hang)),
                _ => first = Some(now),
            }
        };
        // Every KVM_RUN that returns stores the registers into the
        // sync_regs area (asked for where `sync`).
        self.synced = self.sync && result.is_ok();
        // What the guest's hardware code left in the thread.
        let held = loaded.map(|l| {
            let held = hostsegs::current();
            l.restore();
            held
        });
        // Only 64-bit CPL-3 code runs in hardware (the user side, and the
        // supervisor side under ring3 compression): there a selector the
        // thread holds and the run did not start with was loaded by the guest.
        let at_cpl3 = image.entry(side).is_some_and(|e| e.cpl == 3);
        let loads = match (want, held) {
            (Some(want), Some(held)) if image.mode == Mode::Long64 && at_cpl3 => {
                Some([0, 1, 2, 3].map(|i| (held[i] != want[i]).then_some(held[i])))
            }
            _ => None,
        };
        match result? {
            Exit::Stop(arrival) => {
                let start_cpl = image.entry(side).map_or(0, |e| e.cpl);
                self.on_stop(image, test, start_cpl, arrival, loads, msrs)
            }
            Exit::Ended(o) => Ok(Ending::only(o)),
        }
    }

    /// The whole guest state now, between two KVM_RUNs (`None` where KVM
    /// does not give some of it: then no stall is seen).
    fn sample(&self, image: &GuestImage) -> Option<Sample> {
        let v = &self.guest.vcpu;
        Some(Sample {
            regs: v.get_regs().ok()?,
            sregs: v.get_sregs().ok()?,
            events: v.get_vcpu_events().ok()?,
            debug: v.get_debug_regs().ok()?,
            xsave: match self.guest.xsave_reset {
                Some(_) => Some(Box::new(v.get_xsave().ok()?.region)),
                None => None,
            },
            msrs: super::vcpu::read_msrs(v, image).ok()?,
            mem: self.guest.mem().to_vec(),
        })
    }

    /// A HLT at CPL 0 or an MMIO write exited: decode it, then read the
    /// state it asks for.
    /// `loads`: the DS/ES/FS/GS selectors the guest's hardware code loaded
    /// into the vCPU thread, which KVM's state does not show (PVM). The
    /// registers are those KVM_RUN stored in the sync_regs area, where it
    /// does. `msrs`: as in [`KvmEngine::execute`].
    fn on_stop(
        &mut self,
        image: &GuestImage,
        test: &Prepared,
        start_cpl: u8,
        arrival: Arrival,
        loads: Option<[Option<u16>; 4]>,
        msrs: Option<&[(u32, u64)]>,
    ) -> Result<Ending, KvmError> {
        let vcpu = &self.guest.vcpu;
        let (regs, sregs) = if self.synced {
            let s = vcpu.sync_regs();
            (s.regs, s.sregs)
        } else {
            (
                vcpu.get_regs().map_err(KvmError::GetRegs)?,
                vcpu.get_sregs().map_err(KvmError::GetSregs)?,
            )
        };
        let halt = Halt {
            image,
            test,
            start_cpl,
            mem: self.guest.mem(),
            regs,
            sregs,
            flavor: self.flavor,
        };
        match frame::decode(&halt, arrival) {
            End::Only(o) => Ok(Ending::only(o)),
            End::State {
                outcome,
                at,
                user_rip,
            } => {
                let mut after = system_state_now(vcpu, image, &at.sregs, at.regs.rflags, msrs)?;
                for (seg, uncached) in after.segs.iter_mut().zip(at.uncached) {
                    if uncached {
                        seg.cache = None;
                    }
                }
                for (seg, load) in after.segs[2..].iter_mut().zip(loads.unwrap_or_default()) {
                    match load {
                        Some(sel) if sel != seg.selector => {
                            // The hardware's selector; its cache is the
                            // host's descriptor, which KVM does not report.
                            *seg = Segment {
                                selector: sel,
                                cache: None,
                            };
                        }
                        _ => {}
                    }
                }
                let user = user_rip
                    .map(|rip| user_state(self.guest.mem(), image, &at.regs, rip))
                    .transpose()?;
                Ok(Ending {
                    outcome,
                    after: Some(after),
                    user,
                })
            }
        }
    }
}

/// The DS, ES, FS and GS selectors the vCPU thread must hold during a run
/// of `side`: the side's entry selectors on PVM in a protected mode (where
/// the guest's CPL-3 code reads the thread's own), none elsewhere.
fn thread_selectors(flavor: Flavor, image: &GuestImage, side: Side) -> Option<hostsegs::Selectors> {
    if flavor != Flavor::Pvm || !image.mode.is_protected() {
        return None;
    }
    let e = image.entry(side)?;
    Some([2, 3, 4, 5].map(|i| e.segs[i].selector))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{base, engine};
    use super::*;
    use crate::engine::conformance::{completed, NONE};
    use crate::mode::Mode;
    use crate::observe::Side;

    #[test]
    fn exits_end_the_run_or_let_it_go_on() {
        assert_eq!(step(VcpuExit::Hlt, || false), Step::Stop(Arrival::Hlt));
        let mut data = [0u8; 2];
        assert_eq!(step(VcpuExit::IoIn(0x60, &mut data), || false), Step::Go);
        assert_eq!(data, [0xFF; 2], "IN reads all ones");
        assert_eq!(step(VcpuExit::IoOut(0x80, &[1]), || true), Step::Go);
        assert_eq!(
            step(VcpuExit::Shutdown, || false),
            Step::End(Outcome::Shutdown)
        );
        assert_eq!(
            step(VcpuExit::MmioWrite(0x4000_0000, &[0]), || false),
            Step::Stop(Arrival::MmioWrite(0x4000_0000))
        );
        assert_eq!(
            step(VcpuExit::InternalError, || false),
            Step::End(Outcome::EngineError("KVM_EXIT_INTERNAL_ERROR".into()))
        );
    }

    #[test]
    fn a_signal_past_the_deadline_is_a_hang() {
        assert_eq!(step(VcpuExit::Intr, || true), Step::End(Outcome::Hang));
        assert_eq!(step(VcpuExit::Intr, || false), Step::Pause);
    }

    #[test]
    fn a_jump_to_itself_ends_as_a_hang_by_the_watchdog() {
        let Some(mut e) = engine() else { return };
        for side in Side::BOTH {
            let t = Instant::now();
            let o = base(&mut e, Mode::Long64, side, &[0xEB, 0xFE], &NONE);
            assert_eq!(o.outcome, Outcome::Hang, "{side}");
            assert!(t.elapsed() < TIME_LIMIT * 10, "{side}: {:?}", t.elapsed());
        }
        // The engine still works after a hang.
        let o = base(&mut e, Mode::Long64, Side::User, &[0x90], &NONE);
        assert!(completed(&o), "{:?}", o.outcome);
    }

    /// A run whose whole state comes back (a jump to itself; on PVM
    /// VMCALL, VMMCALL and VMGEXIT at CPL 0, which loop inside KVM) is a
    /// hang at its second pause, about PAUSE_FROM + PAUSE_EVERY after its
    /// start, long before TIME_LIMIT.
    #[test]
    fn a_run_that_comes_back_to_its_state_is_a_hang_at_once() {
        let Some(mut e) = engine() else { return };
        let mut cases = vec![
            (Side::Supervisor, &[0xEB, 0xFE][..]),
            (Side::User, &[0xEB, 0xFE]),
        ];
        if e.flavor == Flavor::Pvm {
            for bytes in [
                &[0x0F, 0x01, 0xC1][..],
                &[0x0F, 0x01, 0xD9],
                &[0xF3, 0x0F, 0x01, 0xD9],
            ] {
                cases.push((Side::Supervisor, bytes));
            }
        }
        for (side, bytes) in cases {
            let t = Instant::now();
            let o = base(&mut e, Mode::Long64, side, bytes, &NONE);
            let took = t.elapsed();
            assert_eq!(o.outcome, Outcome::Hang, "{side} {bytes:02x?}");
            // Not before the first pause (a late signal of an earlier run
            // may bring the second one forward), and well before the
            // limit (the stall check ended it, not the deadline; a loaded
            // machine delays the pauses, so the margin is generous).
            assert!(took >= PAUSE_FROM, "{side} {bytes:02x?}: {took:?}");
            assert!(took < TIME_LIMIT * 3 / 4, "{side} {bytes:02x?}: {took:?}");
        }
    }
}
