//! The one watchdog every engine uses: a thread per engine that, once a run
//! is past its deadline, interrupts it through the engine's own means (an
//! [`Interrupt`]: Unicorn stops the emulation, KVM signals the vCPU thread so
//! that `KVM_RUN` returns). The engine arms it right before the run and
//! disarms it right after; the interrupt is only ever called while armed and
//! with the watchdog's lock held, and disarming takes that lock, so an
//! interrupt never reaches a run that has ended. A run that ends in time
//! costs no wake-up of the thread (it sleeps until the deadline it knows of,
//! and arming wakes it only for a deadline before that one).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How an engine interrupts its running run.
pub(crate) trait Interrupt: Copy + Send + 'static {
    /// Interrupts the run. Called only while armed, with the lock held.
    fn interrupt(&self);
    /// Interrupt again this long after, while still armed (a signal may
    /// arrive just before the run enters the guest); `None`: once is enough.
    fn again(&self) -> Option<Duration>;
    /// When to interrupt again after interrupting at `now`, while still
    /// armed: [`Interrupt::again`] after `now` unless the engine knows a
    /// better time (KVM: not past the run's own deadline).
    fn again_at(&self, now: Instant) -> Option<Instant> {
        self.again().map(|d| now + d)
    }
}

struct State<I> {
    /// The deadline and how to interrupt, while a run is under way.
    armed: Option<(Instant, I)>,
    /// The watchdog interrupted the run armed last.
    fired: bool,
    /// How the thread waits: arming must wake it where it waits for no
    /// deadline or for a later one than the run's. (Otherwise it wakes at
    /// the deadline it waits for and looks again, so a run that ends in
    /// time costs the thread nothing.)
    sleep: Sleep,
    quit: bool,
}

/// How the watchdog thread waits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sleep {
    /// It does not: it holds the lock and looks at the deadline.
    Awake,
    /// For no deadline.
    Idle,
    /// Until this instant.
    Until(Instant),
}

impl Sleep {
    /// Whether a run armed with `deadline` must wake the thread.
    fn must_wake(self, deadline: Instant) -> bool {
        match self {
            Sleep::Awake => false,
            Sleep::Idle => true,
            Sleep::Until(t) => deadline < t,
        }
    }
}

type Shared<I> = Arc<(Mutex<State<I>>, Condvar)>;

/// A thread that interrupts a run past its deadline.
pub(crate) struct Watchdog<I: Interrupt> {
    shared: Shared<I>,
    thread: Option<JoinHandle<()>>,
    name: String,
}

impl<I: Interrupt> Watchdog<I> {
    /// Starts the watchdog thread, named `name`.
    pub(crate) fn new(name: &str) -> std::io::Result<Watchdog<I>> {
        let shared: Shared<I> = Arc::new((
            Mutex::new(State {
                armed: None,
                fired: false,
                sleep: Sleep::Awake,
                quit: false,
            }),
            Condvar::new(),
        ));
        let mut dog = Watchdog {
            shared,
            thread: None,
            name: name.into(),
        };
        dog.start()?;
        Ok(dog)
    }

    /// Starts the thread where it is stopped ([`Watchdog::stop`]).
    pub(crate) fn start(&mut self) -> std::io::Result<()> {
        if self.thread.is_some() {
            return Ok(());
        }
        {
            let mut st = self.state();
            st.quit = false;
            st.sleep = Sleep::Awake;
        }
        let s = Arc::clone(&self.shared);
        self.thread = Some(
            std::thread::Builder::new()
                .name(self.name.clone())
                .spawn(move || serve(&s))?,
        );
        Ok(())
    }

    /// Ends the thread and waits for it, so that the process can fork with
    /// no thread of the watchdog's (a child has only the thread that
    /// forked). Until [`Watchdog::start`], an armed run is not interrupted:
    /// the engine starts it again before its next run.
    pub(crate) fn stop(&mut self) {
        {
            let mut st = self.state();
            st.armed = None;
            st.quit = true;
        }
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn state(&self) -> MutexGuard<'_, State<I>> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Interrupts with `how` from `deadline` on, until the returned guard
    /// is dropped (also when the run unwinds).
    pub(crate) fn arm(&self, deadline: Instant, how: I) -> Armed<'_, I> {
        let wake = {
            let mut st = self.state();
            st.armed = Some((deadline, how));
            st.fired = false;
            st.sleep.must_wake(deadline)
        };
        if wake {
            self.shared.1.notify_all();
        }
        Armed(self)
    }
}

/// An armed watchdog; dropping it disarms.
pub(crate) struct Armed<'w, I: Interrupt>(&'w Watchdog<I>);

impl<I: Interrupt> Armed<'_, I> {
    /// Disarms and says whether the watchdog interrupted the run.
    pub(crate) fn disarm(self) -> bool {
        let fired = {
            let mut st = self.0.state();
            st.armed = None;
            st.fired
        };
        // Dropping disarms again, which is harmless.
        drop(self);
        fired
    }
}

impl<I: Interrupt> Drop for Armed<'_, I> {
    fn drop(&mut self) {
        self.0.state().armed = None;
    }
}

fn serve<I: Interrupt>(shared: &Shared<I>) {
    let (lock, wake) = &**shared;
    let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
    while !st.quit {
        let now = Instant::now();
        let wait = match st.armed {
            None => None,
            Some((deadline, _)) if now < deadline => Some(deadline - now),
            Some((_, how)) => {
                how.interrupt();
                st.fired = true;
                let again = how.again_at(now);
                if again.is_none() {
                    st.armed = None;
                }
                again.map(|t| t.saturating_duration_since(now))
            }
        };
        st.sleep = wait.map_or(Sleep::Idle, |d| Sleep::Until(now + d));
        st = match wait {
            None => wake.wait(st).unwrap_or_else(|p| p.into_inner()),
            Some(d) => wake
                .wait_timeout(st, d)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0),
        };
        st.sleep = Sleep::Awake;
    }
}

impl<I: Interrupt> Drop for Watchdog<I> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[derive(Clone, Copy)]
    struct Count(Option<Duration>);
    impl Interrupt for Count {
        fn interrupt(&self) {
            CALLS.fetch_add(1, Ordering::SeqCst);
        }
        fn again(&self) -> Option<Duration> {
            self.0
        }
    }

    static EARLY: AtomicUsize = AtomicUsize::new(0);

    #[derive(Clone, Copy)]
    struct Early;
    impl Interrupt for Early {
        fn interrupt(&self) {
            EARLY.fetch_add(1, Ordering::SeqCst);
        }
        fn again(&self) -> Option<Duration> {
            None
        }
    }

    /// A run armed with an earlier deadline than the one the thread sleeps
    /// until (a run before it had a long one and ended in time) is
    /// interrupted at its own, not at the earlier run's.
    #[test]
    fn an_earlier_deadline_wakes_the_sleeping_thread() {
        let dog = Watchdog::<Early>::new("test-watchdog").expect("thread");
        let long = dog.arm(Instant::now() + Duration::from_secs(600), Early);
        // The thread goes to sleep until the long deadline.
        let t = Instant::now();
        while !matches!(dog.state().sleep, Sleep::Until(_)) && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(matches!(dog.state().sleep, Sleep::Until(_)));
        assert!(!long.disarm());
        let short = dog.arm(Instant::now() + Duration::from_millis(20), Early);
        let t = Instant::now();
        while EARLY.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(EARLY.load(Ordering::SeqCst), 1, "not interrupted in 10 s");
        assert!(short.disarm());
        // A later deadline than the one slept for wakes nothing.
        assert!(!Sleep::Until(t).must_wake(t + Duration::from_secs(1)));
        assert!(Sleep::Idle.must_wake(t));
        assert!(!Sleep::Awake.must_wake(t));
    }

    #[test]
    fn interrupts_only_past_the_deadline_and_as_often_as_asked() {
        let dog = Watchdog::<Count>::new("test-watchdog").expect("thread");
        // A run that ends before its deadline is not interrupted.
        let armed = dog.arm(Instant::now() + Duration::from_secs(60), Count(None));
        assert!(!armed.disarm());
        assert_eq!(CALLS.load(Ordering::SeqCst), 0);
        // Past the deadline: once, then disarmed by the watchdog itself.
        let armed = dog.arm(Instant::now(), Count(None));
        while CALLS.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(30));
        assert!(armed.disarm());
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        // Repeating: again and again until disarmed, then never more.
        let armed = dog.arm(Instant::now(), Count(Some(Duration::from_millis(1))));
        while CALLS.load(Ordering::SeqCst) < 4 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(armed.disarm());
        let after = CALLS.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(CALLS.load(Ordering::SeqCst), after);
    }

    static AFTER: AtomicUsize = AtomicUsize::new(0);

    #[derive(Clone, Copy)]
    struct After;
    impl Interrupt for After {
        fn interrupt(&self) {
            AFTER.fetch_add(1, Ordering::SeqCst);
        }
        fn again(&self) -> Option<Duration> {
            None
        }
    }

    /// A stopped watchdog has no thread and interrupts nothing; started
    /// again, it interrupts as before.
    #[test]
    fn a_stopped_watchdog_starts_again() {
        let mut dog = Watchdog::<After>::new("test-watchdog").expect("thread");
        dog.stop();
        assert!(dog.thread.is_none());
        let armed = dog.arm(Instant::now(), After);
        std::thread::sleep(Duration::from_millis(30));
        assert!(!armed.disarm());
        assert_eq!(AFTER.load(Ordering::SeqCst), 0);
        dog.start().expect("thread");
        dog.start().expect("started already: nothing to do");
        let armed = dog.arm(Instant::now(), After);
        let t = Instant::now();
        while AFTER.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(armed.disarm());
        assert_eq!(AFTER.load(Ordering::SeqCst), 1);
    }
}
