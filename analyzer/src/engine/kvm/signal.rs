//! How the shared watchdog ([`crate::engine::watchdog`]) interrupts a KVM
//! run: a real-time signal to the vCPU thread, so that `KVM_RUN` returns
//! EINTR. The engine arms it for the run's next pause (see `exit`), and it
//! signals again every [`PAUSE_EVERY`] while still armed, but never past
//! the run's deadline: a run is signalled at its deadline, not up to a
//! pause after it (whether a slow run ends as a hang or reaches its end a
//! few milliseconds later must not depend on the pauses). The engine's
//! signal `unsafe` (sigaction, pthread_kill, pthread_self) lives here.

use super::exit::PAUSE_EVERY;
use super::KvmError;
use crate::engine::watchdog::{self, Interrupt};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// The real-time signal the watchdog sends to interrupt KVM_RUN.
fn watchdog_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 3
}

extern "C" fn on_watchdog_signal(
    _num: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // Nothing to do: delivering the signal makes KVM_RUN return EINTR.
}

static SIGNAL_SETUP: Once = Once::new();
/// The OS error number of a failed setup (kept as a number: `io::Error` is
/// not `Clone`, and every engine opened later reports the same failure).
static SIGNAL_SETUP_RESULT: Mutex<Option<i32>> = Mutex::new(None);

/// Installs the no-op handler once per process (sigaction is per process).
/// SA_RESTART keeps other system calls of the vCPU thread from failing with
/// EINTR when a late signal arrives; KVM_RUN returns EINTR regardless.
fn install_signal_handler() -> Result<(), KvmError> {
    SIGNAL_SETUP.call_once(|| {
        let num = watchdog_signal();
        let err = match vmm_sys_util::signal::validate_signal_num(num) {
            Err(e) => Some(e.errno()),
            Ok(()) => {
                // SAFETY: `sigaction` is plain data; an all-zero value is a
                // valid empty action that is filled in below.
                let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
                act.sa_sigaction = on_watchdog_signal as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                // SAFETY: `act` is a fully initialized action whose handler
                // is an `extern "C"` function that does nothing (so it is
                // async-signal-safe); the old action is not asked for.
                let r = unsafe {
                    libc::sigemptyset(&raw mut act.sa_mask);
                    libc::sigaction(num, &raw const act, std::ptr::null_mut())
                };
                (r != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
            }
        };
        if let (Some(e), Ok(mut r)) = (err, SIGNAL_SETUP_RESULT.lock()) {
            *r = Some(e);
        }
    });
    match SIGNAL_SETUP_RESULT.lock().ok().and_then(|r| *r) {
        Some(e) => Err(KvmError::InstallSignalHandler(
            std::io::Error::from_raw_os_error(e),
        )),
        None => Ok(()),
    }
}

/// Interrupts `KVM_RUN` on the vCPU thread `thread` with the watchdog
/// signal, again and again while armed.
#[derive(Clone, Copy)]
struct Signal {
    thread: libc::pthread_t,
    /// The run's deadline: the signal comes again at it, if that is sooner
    /// than [`PAUSE_EVERY`].
    deadline: Instant,
}

impl Interrupt for Signal {
    fn interrupt(&self) {
        // SAFETY: the thread is the vCPU thread that armed the watchdog;
        // it disarms (under the lock the watchdog holds while calling this)
        // before it leaves the run, so it is alive; the signal has a
        // handler installed for the process (`install_signal_handler`).
        unsafe {
            libc::pthread_kill(self.thread, watchdog_signal());
        }
    }

    /// A signal that arrives just before KVM_RUN enters the guest is lost:
    /// another follows.
    fn again(&self) -> Option<Duration> {
        Some(PAUSE_EVERY)
    }

    fn again_at(&self, now: Instant) -> Option<Instant> {
        Some(next_signal(now, self.deadline))
    }
}

/// When a run signalled at `now` is signalled again: [`PAUSE_EVERY`]
/// later, or at its `deadline` where that comes sooner.
fn next_signal(now: Instant, deadline: Instant) -> Instant {
    let later = now + PAUSE_EVERY;
    if now < deadline {
        later.min(deadline)
    } else {
        later
    }
}

/// The engine's watchdog: the shared one, signalling the vCPU thread.
pub(super) struct Watchdog {
    dog: watchdog::Watchdog<Signal>,
}

impl Watchdog {
    pub(super) fn new() -> Result<Watchdog, KvmError> {
        install_signal_handler()?;
        Ok(Watchdog {
            dog: watchdog::Watchdog::new("kvm-watchdog").map_err(KvmError::StartWatchdog)?,
        })
    }

    /// Runs `f` on the calling thread (the vCPU thread), signalling it
    /// from `pause_at` (or the run's `deadline`, where sooner) on until
    /// `f` returns (see [`Signal`]).
    pub(super) fn run<R>(&self, deadline: Instant, pause_at: Instant, f: impl FnOnce() -> R) -> R {
        thread_local! {
            static UNBLOCKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        // The vCPU thread must not block the signal, or KVM_RUN never sees it.
        UNBLOCKED.with(|u| {
            if !u.get() {
                let _ = vmm_sys_util::signal::unblock_signal(watchdog_signal());
                u.set(true);
            }
        });
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        // Disarmed when dropped, also when `f` unwinds.
        let _armed = self
            .dog
            .arm(pause_at.min(deadline), Signal { thread, deadline });
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_comes_again_after_a_pause_or_at_the_deadline() {
        let now = Instant::now();
        let later = now + PAUSE_EVERY * 10;
        assert_eq!(next_signal(now, later), now + PAUSE_EVERY);
        let soon = now + Duration::from_micros(300);
        assert_eq!(next_signal(now, soon), soon);
        // Past the deadline: again a pause later.
        assert_eq!(next_signal(now, now), now + PAUSE_EVERY);
    }
}
