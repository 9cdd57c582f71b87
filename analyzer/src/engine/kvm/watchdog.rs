//! The watchdog: a thread per engine that sends a real-time signal to the
//! vCPU thread while a run is past its deadline, so that `KVM_RUN` returns
//! EINTR. The engine's signal `unsafe` (sigaction, pthread_kill,
//! pthread_self) lives here.

use super::KvmError;
use std::sync::{Arc, Condvar, Mutex, Once};
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

#[derive(Default)]
struct WatchState {
    /// Deadline and the thread running the vCPU, while a run is under way.
    armed: Option<(Instant, libc::pthread_t)>,
    quit: bool,
}

type WatchShared = Arc<(Mutex<WatchState>, Condvar)>;

/// A thread that signals the vCPU thread while a run is past its deadline
/// (repeatedly, so a signal that arrives just before KVM_RUN enters the
/// guest is followed by another).
pub(super) struct Watchdog {
    shared: WatchShared,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub(super) fn new() -> Result<Watchdog, KvmError> {
        install_signal_handler()?;
        let shared: WatchShared = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kvm-watchdog".into())
            .spawn(move || Watchdog::serve(&s))
            .map_err(KvmError::StartWatchdog)?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    fn serve(shared: &WatchShared) {
        let (lock, cv) = &**shared;
        let Ok(mut st) = lock.lock() else { return };
        loop {
            if st.quit {
                return;
            }
            let wait = match st.armed {
                None => None,
                Some((deadline, thread)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        // SAFETY: `thread` is the vCPU thread, which armed
                        // the watchdog and disarms it (under this lock)
                        // before it leaves the run, so it is alive; the
                        // signal has a handler installed for the process.
                        unsafe {
                            libc::pthread_kill(thread, watchdog_signal());
                        }
                        Some(Duration::from_millis(5))
                    } else {
                        Some(deadline - now)
                    }
                }
            };
            st = match wait {
                None => match cv.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                },
                Some(d) => match cv.wait_timeout(st, d) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                },
            };
        }
    }

    fn set(&self, armed: Option<(Instant, libc::pthread_t)>) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut st) = lock.lock() {
            st.armed = armed;
        }
        cv.notify_all();
    }

    /// Signals the calling thread from `deadline` on, until [`Watchdog::disarm`].
    pub(super) fn arm(&self, deadline: Instant) {
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
        self.set(Some((deadline, me)));
    }

    pub(super) fn disarm(&self) {
        self.set(None);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut st) = lock.lock() {
            st.armed = None;
            st.quit = true;
        }
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
