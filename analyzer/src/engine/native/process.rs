//! The engine's side of the worker: the shared memory and the worker
//! process (fork, the socket, the wait with a deadline, the reaping). Every
//! `unsafe` of the engine's side is here.

use super::seccomp::{self, SockFilter};
use super::worker::{self, Control, Request, Response, Step, READY, SETUP_FAILED};
use super::NativeError;
use crate::machine::PAGE;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const PAGES: usize = 4;

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

    fn clear_response(&mut self) {
        // SAFETY: as for `set_request`.
        unsafe { std::ptr::write_volatile(&raw mut (*self.control()).resp, Response::default()) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base as *mut libc::c_void, PAGES * PAGE as usize) };
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
            segs: [0; 6],
        };
        match w.wait(limit) {
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

    /// Asks for one run: sends the byte.
    pub(super) fn start(&mut self) -> Result<(), ()> {
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

    /// Waits for the answer byte at most `limit`.
    pub(super) fn wait(&mut self, limit: Duration) -> Wait {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
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
                return Wait::Answered;
            }
            if got < 0 && last().kind() == std::io::ErrorKind::Interrupted {
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
