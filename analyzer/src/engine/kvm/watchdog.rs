//! The KVM engine's watchdog: a thread per engine that polls the deadline
//! of the run under way and sends a real-time signal to the vCPU thread
//! while the run is past it, so that `KVM_RUN` returns EINTR. Unlike the
//! shared watchdog ([`crate::engine::watchdog`], which sleeps until the
//! deadline it knows of and is woken when a run arms it), no run wakes this
//! one: at tens of thousands of runs a second, polling every few
//! milliseconds costs less than waking a thread per run. The engine's
//! signal `unsafe` (sigaction, pthread_kill, pthread_self) lives here.

use super::KvmError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
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

/// How often the watchdog thread looks at the run's deadline. A run past
/// [`super::TIME_LIMIT`] is signalled within this much, and again every
/// tick while it has not returned (a signal that arrives just before
/// KVM_RUN enters the guest is followed by another).
const TICK: Duration = Duration::from_millis(5);

/// The run under way: its deadline, from when on it is paused every tick
/// to look for a stall, and the vCPU thread running it.
struct Armed {
    deadline: Instant,
    pause_from: Instant,
    thread: libc::pthread_t,
}

/// What the engine and its watchdog thread share.
struct Shared {
    /// Set by the vCPU thread for the length of one run. The lock is never
    /// contended in the run's hot path (the watchdog takes it once a tick),
    /// so arming and disarming cost no system call and wake no thread.
    armed: Mutex<Option<Armed>>,
    quit: AtomicBool,
}

impl Shared {
    fn armed(&self) -> MutexGuard<'_, Option<Armed>> {
        self.armed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The engine's watchdog: a thread that polls the deadline of the run under
/// way every [`TICK`] and signals the vCPU thread once it is past. No run
/// wakes it: a run only writes its deadline (and clears it after).
pub(super) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// How long the watchdog sleeps after looking at the run under way (its
/// deadline and when its pauses start) at `now`: a tick, or less where one
/// of them comes sooner (so that a run is signalled at its deadline, not up
/// to a tick after it: whether a slow run ends as a hang or reaches its end
/// a few milliseconds later must not depend on the tick).
fn nap(armed: Option<(Instant, Instant)>, now: Instant) -> Duration {
    let Some((deadline, pause_from)) = armed else {
        return TICK;
    };
    [deadline, pause_from]
        .into_iter()
        .filter(|&t| t > now)
        .map(|t| t - now)
        .fold(TICK, Duration::min)
}

fn serve(shared: &Shared) {
    let mut sleep = TICK;
    while !shared.quit.load(Ordering::Acquire) {
        std::thread::park_timeout(sleep);
        let armed = shared.armed();
        let now = Instant::now();
        if let Some(a) = armed.as_ref() {
            if now >= a.deadline || now >= a.pause_from {
                // SAFETY: the thread is the vCPU thread that armed the
                // watchdog; it disarms under this lock before it leaves the
                // run, so it is alive while the lock is held here; the
                // signal has a handler installed for the process
                // (`install_signal_handler`).
                unsafe {
                    libc::pthread_kill(a.thread, watchdog_signal());
                }
            }
        }
        sleep = nap(armed.as_ref().map(|a| (a.deadline, a.pause_from)), now);
    }
}

impl Watchdog {
    pub(super) fn new() -> Result<Watchdog, KvmError> {
        install_signal_handler()?;
        let shared = Arc::new(Shared {
            armed: Mutex::new(None),
            quit: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kvm-watchdog".into())
            .spawn(move || serve(&s))
            .map_err(KvmError::StartWatchdog)?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Runs `f` on the calling thread (the vCPU thread) under the deadline:
    /// from `pause_from` on, and past the deadline, the thread is signalled
    /// every tick until `f` returns.
    pub(super) fn run<R>(
        &self,
        deadline: Instant,
        pause_from: Instant,
        f: impl FnOnce() -> R,
    ) -> R {
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
        /// Disarms when dropped, also when `f` unwinds.
        struct Disarm<'a>(&'a Shared);
        impl Drop for Disarm<'_> {
            fn drop(&mut self) {
                *self.0.armed() = None;
            }
        }
        *self.shared.armed() = Some(Armed {
            deadline,
            pause_from,
            thread,
        });
        let _disarm = Disarm(&self.shared);
        f()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_naps_a_tick_or_until_the_deadline() {
        let now = Instant::now();
        let later = now + TICK * 10;
        assert_eq!(nap(None, now), TICK);
        assert_eq!(nap(Some((later, later)), now), TICK);
        let soon = Duration::from_micros(300);
        assert_eq!(nap(Some((now + soon, later)), now), soon);
        assert_eq!(nap(Some((later, now + soon)), now), soon);
        // Past both: signalled now, again a tick later.
        assert_eq!(nap(Some((now, now)), now), TICK);
    }
}
