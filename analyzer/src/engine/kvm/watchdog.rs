//! The watchdog's interrupt for KVM: the shared watchdog
//! ([`crate::engine::watchdog`]) sends a real-time signal to the vCPU thread
//! while a run is past its deadline, so that `KVM_RUN` returns EINTR. The engine's signal `unsafe` (sigaction, pthread_kill,
//! pthread_self) lives here.

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

/// Interrupts `KVM_RUN` on a vCPU thread: the watchdog signal, sent again
/// every 5 ms while the run is armed (one that arrives just before KVM_RUN
/// enters the guest is followed by another).
#[derive(Clone, Copy)]
struct Signal(libc::pthread_t);

impl Interrupt for Signal {
    fn interrupt(&self) {
        // SAFETY: the thread is the vCPU thread, which armed the watchdog
        // and disarms it (under the lock the watchdog holds while calling
        // this) before it leaves the run, so it is alive; the signal has a
        // handler installed for the process (`install_signal_handler`).
        unsafe {
            libc::pthread_kill(self.0, watchdog_signal());
        }
    }

    fn again(&self) -> Option<Duration> {
        Some(Duration::from_millis(5))
    }
}

/// The engine's watchdog: the shared one, interrupting with the signal.
pub(super) struct Watchdog(watchdog::Watchdog<Signal>);

impl Watchdog {
    pub(super) fn new() -> Result<Watchdog, KvmError> {
        install_signal_handler()?;
        watchdog::Watchdog::new("kvm-watchdog")
            .map(Watchdog)
            .map_err(KvmError::StartWatchdog)
    }

    /// Runs `f` on the calling thread (the vCPU thread) under the deadline:
    /// past it, the thread is signalled until `f` returns.
    pub(super) fn run<R>(&self, deadline: Instant, f: impl FnOnce() -> R) -> R {
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
        let me = unsafe { libc::pthread_self() };
        let armed = self.0.arm(deadline, Signal(me));
        let result = f();
        armed.disarm();
        result
    }
}
