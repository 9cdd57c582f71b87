//! The engine's side of the worker: the shared memory and the worker
//! process (fork, the socket, the wait with a deadline, the reaping). Every
//! `unsafe` of the engine's side is here.

use super::seccomp::{self, SockFilter};
use super::worker::{self, tsc, Control, Handshake, Request, Response, Step, READY, SETUP_FAILED};
use super::NativeError;
use crate::machine::PAGE;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PAGES: usize = 4;

/// How long the worker spins for the next request before it blocks in its
/// socket read (the engine prepares the next test meanwhile), when the
/// last request came within that time (otherwise it blocks at once).
const WORKER_SPIN: Duration = Duration::from_micros(50);
/// How long the engine spins for an answer before it blocks in `poll`,
/// when the last answer came within that time (otherwise it blocks at
/// once).
const ENGINE_SPIN: Duration = Duration::from_micros(50);

/// Native engines alive in this process (one worker each).
static ENGINES: AtomicUsize = AtomicUsize::new(0);

/// Whether spinning pays: only while every engine and its worker can have
/// a CPU of their own. Otherwise a spinning side takes the CPU the other
/// side (or another engine) needs, and both sides block at once, as
/// before the handshake spun.
fn spin_pays() -> bool {
    static CPUS: OnceLock<usize> = OnceLock::new();
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    2 * ENGINES.load(Ordering::Relaxed) <= cpus
}

/// Time-stamp-counter ticks per microsecond, measured once (over about
/// 200 µs of wall-clock time).
fn ticks_per_us() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        let (t0, c0) = (Instant::now(), tsc());
        while t0.elapsed() < Duration::from_micros(200) {
            std::hint::spin_loop();
        }
        let (us, c1) = (t0.elapsed().as_micros().max(1) as u64, tsc());
        (c1.wrapping_sub(c0) / us).max(1)
    })
}

fn ticks(d: Duration) -> u64 {
    d.as_micros() as u64 * ticks_per_us()
}

/// The memfd with the code, data and stack pages and the control block,
/// and the engine's mapping of it.
pub(super) struct Shared {
    fd: OwnedFd,
    base: *mut u8,
}

impl Shared {
    pub(super) fn new() -> Result<Shared, NativeError> {
        let name = c"popek-native";
        // SAFETY: memfd_create with a valid name; the result is checked.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(NativeError::Os("create the shared memory", last()));
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = PAGES * PAGE as usize;
        // SAFETY: ftruncate of the descriptor just made.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(NativeError::Os("size the shared memory", last()));
        }
        // SAFETY: a new shared mapping of the whole memfd, checked below;
        // it lives as long as `Shared` (unmapped in Drop).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(NativeError::Os("map the shared memory", last()));
        }
        ENGINES.fetch_add(1, Ordering::Relaxed);
        Ok(Shared {
            fd,
            base: base as *mut u8,
        })
    }

    /// Page `i` (0 code, 1 data, 2 stack). Only while the worker is idle.
    pub(super) fn page(&self, i: usize) -> &[u8] {
        assert!(i < 3);
        // SAFETY: the mapping has PAGES pages and lives as long as self;
        // the worker writes it only between a request and its answer,
        // while the engine does not hold this slice (the engine is not
        // shared between threads and reads only after the answer).
        unsafe { std::slice::from_raw_parts(self.base.add(i * PAGE as usize), PAGE as usize) }
    }

    /// Writes page `i` (0 code, 1 data, 2 stack).
    pub(super) fn write_page(&mut self, i: usize, bytes: &[u8]) {
        assert!(i < 3 && bytes.len() == PAGE as usize);
        // SAFETY: as for `page`; the worker is idle, and `bytes` is a
        // page of the engine's own memory, not of the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.add(i * PAGE as usize),
                PAGE as usize,
            )
        }
    }

    fn control(&self) -> *mut Control {
        // SAFETY: the fourth page of the mapping; Control fits in it.
        unsafe { self.base.add(3 * PAGE as usize) as *mut Control }
    }

    pub(super) fn set_request(&mut self, req: Request) {
        // SAFETY: the control block in the mapping; the worker is idle.
        unsafe { std::ptr::write_volatile(&raw mut (*self.control()).req, req) }
    }

    pub(super) fn response(&self) -> Response {
        // SAFETY: as for `set_request`; the worker has answered.
        unsafe { std::ptr::read_volatile(&raw const (*self.control()).resp) }
    }

    fn hand(&self) -> &Handshake {
        // SAFETY: the control block in the mapping, which lives as long
        // as self; the handshake is only used atomically.
        unsafe { &(*self.control()).hand }
    }

    fn clear_response(&mut self) {
        // SAFETY: as for `set_request`.
        unsafe { std::ptr::write_volatile(&raw mut (*self.control()).resp, Response::default()) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base as *mut libc::c_void, PAGES * PAGE as usize) };
        ENGINES.fetch_sub(1, Ordering::Relaxed);
    }
}

fn last() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// How waiting for the worker ended.
pub(super) enum Wait {
    /// It answered.
    Answered,
    /// It did not answer in time (it has been killed and reaped).
    TimedOut,
    /// It died (reaped): how.
    Died(String),
}

/// A running worker.
pub(super) struct Worker {
    pid: libc::pid_t,
    sock: OwnedFd,
    /// The number of the last request (`Handshake::req_seq`).
    seq: u64,
    /// Whether to spin for the next answer (the last one came within
    /// [`ENGINE_SPIN`]).
    spin: bool,
    /// [`spin_pays`] at the last request.
    spin_pays: bool,
    /// The selectors it reported when ready (CS, SS, DS, ES, FS, GS).
    pub segs: [u64; 6],
}

impl Worker {
    /// Forks a worker over `shared`, waits until it is set up.
    pub(super) fn spawn(
        shared: &mut Shared,
        fsgsbase: bool,
        limit: Duration,
    ) -> Result<Worker, NativeError> {
        let mut fds = [0i32; 2];
        // SAFETY: socketpair into a two-element array; checked.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(NativeError::Os("create the worker's socket", last()));
        }
        // SAFETY: both descriptors are new and owned here.
        let (mine, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        shared.clear_response();
        shared.hand().reset();
        let filter = filter_for(theirs.as_raw_fd() as u32);
        let setup = worker::Setup {
            fd: theirs.as_raw_fd(),
            memfd: shared.fd.as_raw_fd(),
            control: shared.control(),
            filter: filter.as_ptr(),
            filter_len: filter.len() as u16,
            fsgsbase,
            parent: std::process::id() as i32,
        };
        // SAFETY: fork; the child runs only `worker::serve`, which makes
        // system calls and allocates nothing (the process may have other
        // threads), and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(NativeError::Os("fork the worker", last()));
        }
        if pid == 0 {
            // SAFETY: in the child right after fork, with `setup` made
            // before it.
            unsafe { worker::serve(&setup) }
        }
        drop(theirs);
        let mut w = Worker {
            pid,
            sock: mine,
            seq: 0,
            spin: true,
            spin_pays: false,
            segs: [0; 6],
        };
        // The worker's first byte says it is set up (or failed to).
        match w.block(Instant::now() + limit, || true) {
            Wait::Answered => {}
            Wait::TimedOut => {
                return Err(NativeError::Setup(
                    "the worker did not start in time".into(),
                ))
            }
            Wait::Died(how) => {
                let r = shared.response();
                if r.kind == SETUP_FAILED {
                    return Err(setup_error(&r));
                }
                return Err(NativeError::Setup(format!(
                    "the worker {how} during its setup"
                )));
            }
        }
        let r = shared.response();
        match r.kind {
            READY => {
                w.segs = r.segs;
                Ok(w)
            }
            SETUP_FAILED => Err(setup_error(&r)),
            k => Err(NativeError::Setup(format!(
                "the worker answered {k} to its setup"
            ))),
        }
    }

    pub(super) fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Asks for one run (the request is in `shared`): bumps the request
    /// number, and sends the worker a byte if it is asleep.
    pub(super) fn start(&mut self, shared: &Shared) -> Result<(), ()> {
        self.seq += 1;
        let hand = shared.hand();
        self.spin_pays = spin_pays();
        let spin = if self.spin_pays {
            ticks(WORKER_SPIN)
        } else {
            0
        };
        hand.worker_spin.store(spin, Ordering::SeqCst);
        hand.req_seq.store(self.seq, Ordering::SeqCst);
        if hand.worker_sleeping.swap(0, Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let b = [1u8];
        // SAFETY: send one byte from a local buffer on the socket we own.
        let n = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                b.as_ptr() as *const libc::c_void,
                1,
                libc::MSG_NOSIGNAL,
            )
        };
        if n == 1 {
            Ok(())
        } else {
            Err(())
        }
    }

    /// Waits at most `limit` for the answer to the last request: spins a
    /// while, then blocks in `poll` until the worker's byte.
    pub(super) fn wait(&mut self, shared: &Shared, limit: Duration) -> Wait {
        let deadline = Instant::now() + limit;
        let hand = shared.hand();
        let seq = self.seq;
        let answered = || hand.resp_seq.load(Ordering::SeqCst) == seq;
        let (t0, max) = (tsc(), ticks(ENGINE_SPIN));
        let spin = if self.spin && self.spin_pays { max } else { 0 };
        loop {
            if answered() {
                self.spin = true;
                return Wait::Answered;
            }
            if tsc().wrapping_sub(t0) >= spin {
                break;
            }
            std::hint::spin_loop();
        }
        let wait = self.sleep(hand, deadline, answered);
        // Spin next time if this answer came soon enough to be caught so.
        self.spin = tsc().wrapping_sub(t0) <= max;
        wait
    }

    /// The blocking part of [`Worker::wait`].
    fn sleep(&mut self, hand: &Handshake, deadline: Instant, answered: impl Fn() -> bool) -> Wait {
        // Asleep first, then the last look (the worker sets the answer's
        // number first, then looks at the flag): one sees the other.
        hand.engine_sleeping.store(1, Ordering::SeqCst);
        if answered() {
            if hand.engine_sleeping.swap(0, Ordering::SeqCst) == 0 {
                // The worker took the flag: its byte is coming; take it,
                // so that no byte is left over.
                return self.block(deadline, || true);
            }
            return Wait::Answered;
        }
        // A byte with no answer (there should be none) means waiting on.
        self.block(deadline, answered)
    }

    /// Waits until a byte from the worker after which `done` holds, at
    /// most until `deadline` (then kills it).
    fn block(&mut self, deadline: Instant, done: impl Fn() -> bool) -> Wait {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut p = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: poll on one pollfd we own.
            let n = unsafe { libc::poll(&mut p, 1, ms) };
            if n < 0 && last().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n == 0 {
                self.kill();
                return Wait::TimedOut;
            }
            let mut b = [0u8];
            // SAFETY: receive one byte into a local buffer.
            let got = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    b.as_mut_ptr() as *mut libc::c_void,
                    1,
                    libc::MSG_DONTWAIT,
                )
            };
            if got == 1 {
                if done() {
                    return Wait::Answered;
                }
                continue;
            }
            if got < 0
                && matches!(
                    last().kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                )
            {
                continue;
            }
            return Wait::Died(self.reap());
        }
    }

    /// Kills the worker and reaps it.
    pub(super) fn kill(&mut self) -> String {
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.reap()
    }

    /// Waits for the worker's end: how it ended.
    fn reap(&mut self) -> String {
        let mut status = 0;
        loop {
            // SAFETY: waitpid for our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                break;
            }
            if r < 0 && last().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return format!("ended (waitpid: {})", last());
        }
        self.pid = 0;
        how_it_ended(status)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.pid > 0 {
            self.kill();
        }
    }
}

/// A wait status in words.
fn how_it_ended(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        format!("was killed by signal {sig} ({})", signal_name(sig))
    } else if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        if code > worker::EXIT_STRAY_SIGNAL {
            let sig = code - worker::EXIT_STRAY_SIGNAL;
            format!(
                "exited after signal {sig} ({}) in its own code",
                signal_name(sig)
            )
        } else {
            format!("exited with status {code}")
        }
    } else {
        format!("ended with wait status {status:#x}")
    }
}

pub(super) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGILL => "SIGILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGALRM => "SIGALRM",
        libc::SIGABRT => "SIGABRT",
        _ => "another signal",
    }
}

fn setup_error(r: &Response) -> NativeError {
    let action = Step::from_u64(r.step)
        .map(|s| s.action())
        .unwrap_or_else(|| format!("setup step {}", r.step));
    let err = std::io::Error::from_raw_os_error(r.errno as i32);
    let mut hint = String::new();
    if matches!(
        Step::from_u64(r.step),
        Some(Step::MapCode | Step::MapData | Step::MapStack)
    ) {
        if r.errno as i32 == libc::EPERM || r.errno as i32 == libc::EACCES {
            let min = std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into());
            hint = format!(
                " (vm.mmap_min_addr is {min}: mappings below it need CAP_SYS_RAWIO; \
                 `sysctl vm.mmap_min_addr=4096` allows the harness's pages)"
            );
        } else if r.errno as i32 == libc::EEXIST {
            hint = " (the address is taken in the worker's address space)".into();
        }
    }
    NativeError::Setup(format!("{action} failed: {err}{hint}"))
}

/// The seccomp program for a worker on socket `fd`.
fn filter_for(fd: u32) -> Vec<SockFilter> {
    let (stub, restorer) = worker::syscall_sites();
    seccomp::program(&seccomp::Allowed { stub, restorer, fd })
}
