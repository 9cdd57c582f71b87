//! The worker as a fork server: the worker process forks a child that runs
//! the jobs, and when the child dies (an engine aborted the process, say),
//! reports how and forks the next one for the next job. A restart then
//! costs a fork, not a new process that loads popek and builds iced-x86's
//! tables again (the child still opens its engines, which start threads,
//! so it does that after the fork).
//!
//! The server relays stdin to the child a job line at a time, through a
//! pipe of the child's own: a job that reached a child that died is gone
//! with it (the campaign, told of the death, sends what it needs again),
//! and never runs twice. The child's stderr goes through a pipe the server
//! reads to its end, so that a report holds all the child wrote, then the
//! child's wait status. A child never outlives its server (it is killed
//! when the server dies), so killing the worker, as the campaign does with
//! one gone silent, takes the child with it. Every `unsafe` block of the
//! fuzzer is here.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How a child ended: its wait status as `std::process` prints it and
/// what it wrote to stderr.
pub struct Death {
    pub status: ExitStatus,
    pub stderr: String,
}

/// A pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors owned by no
    // one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Which of stdin and the child's stderr (`None`: no child) can be read
/// (or have ended): waits for either.
fn readable(jobs: &File, child_err: Option<&File>) -> std::io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: jobs.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: child_err.map_or(-1, AsRawFd::as_raw_fd),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfds for the duration of the call (a
        // negative descriptor is ignored).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n >= 0 {
            return Ok((fds[0].revents != 0, fds[1].revents != 0));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A running child: its pid, the write end of its stdin, its stderr.
struct Child {
    pid: libc::pid_t,
    stdin: Option<File>,
    stderr: File,
    said: Vec<u8>,
}

impl Child {
    /// Forks a child that runs `run` with stdin from a new pipe and stderr
    /// into another.
    fn fork(server: libc::pid_t, jobs: &File, run: &impl Fn() -> i32) -> std::io::Result<Child> {
        let (in_read, in_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: the process has one thread (see `serve`), so the child
        // is a full copy of it and may go on running Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            drop(in_write);
            drop(err_read);
            // SAFETY: prctl(PR_SET_PDEATHSIG) takes the signal; dup2 of two
            // open descriptors onto stdin and stderr; close of the server's
            // own copy of its stdin, which the child never reads (nor
            // closes otherwise: it leaves through `exit`); getppid and
            // _exit have no preconditions.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The server died before the child could ask to die with it.
                if libc::getppid() != server
                    || libc::dup2(in_read.as_raw_fd(), 0) < 0
                    || libc::dup2(err_write.as_raw_fd(), 2) < 0
                {
                    libc::_exit(1);
                }
                libc::close(jobs.as_raw_fd());
            }
            drop(in_read);
            drop(err_write);
            let code = run();
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
        Ok(Child {
            pid,
            stdin: Some(File::from(in_write)),
            stderr: File::from(err_read),
            said: Vec::new(),
        })
    }

    /// Reads what the child wrote to stderr; false once it has ended.
    fn hear(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match self.stderr.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                // Enough to tell how it died; the rest is let go.
                if self.said.len() < 1 << 16 {
                    self.said.extend_from_slice(&buf[..n]);
                }
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
        }
    }

    /// Waits for the child's end (its stdin closed first): how it ended.
    fn reap(mut self) -> std::io::Result<Death> {
        self.stdin = None;
        while self.hear() {}
        let mut raw = 0;
        loop {
            // SAFETY: waits for our own child; `raw` receives its status.
            let r = unsafe { libc::waitpid(self.pid, &raw mut raw, 0) };
            if r == self.pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(Death {
            status: ExitStatus::from_raw(raw),
            stderr: String::from_utf8_lossy(&self.said).into_owned(),
        })
    }
}

/// Serves: relays each job line of stdin to a child that runs `run` (its
/// exit code ends the child), forked when a job comes and none is alive;
/// after each death calls `report` (which writes it on stdout). Returns
/// the worker's exit code: the last child's once stdin has ended (0 when
/// it exited normally).
///
/// Must be called while the process has one thread: the child has only
/// the thread that forked.
pub fn serve(run: impl Fn() -> i32, mut report: impl FnMut(&Death)) -> i32 {
    let fail = |what: &str, e: std::io::Error| {
        eprintln!("popek fuzz worker: {what}: {e}");
        2
    };
    // SAFETY: getpid has no preconditions.
    let server = unsafe { libc::getpid() };
    // Stdin read through a descriptor of its own, not `std::io::stdin()`:
    // that one's buffer is the child's (a copy of the server's memory) and
    // must hold nothing of the server's.
    // SAFETY: dup of stdin, which is open; the new descriptor is ours.
    let jobs = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if jobs < 0 {
        return fail("read the jobs", std::io::Error::last_os_error());
    }
    // SAFETY: `jobs` was just opened and is owned by nothing else.
    let jobs = unsafe { File::from_raw_fd(jobs) };
    let mut stdin = BufReader::new(&jobs);
    let mut child: Option<Child> = None;
    loop {
        // A line already read waits in the buffer: no need to poll.
        let (job, heard) = if stdin.buffer().is_empty() {
            match readable(&jobs, child.as_ref().map(|c| &c.stderr)) {
                Ok(r) => r,
                Err(e) => return fail("wait for a job", e),
            }
        } else {
            (true, false)
        };
        if heard {
            if let Some(c) = child.as_mut() {
                if !c.hear() {
                    let Some(c) = child.take() else { continue };
                    match c.reap() {
                        Ok(d) => report(&d),
                        Err(e) => return fail("wait for the child", e),
                    }
                }
            }
            continue;
        }
        if !job {
            continue;
        }
        let mut line = String::new();
        match stdin.read_line(&mut line) {
            Ok(0) => {
                // The end of the jobs: the child ends with them.
                let Some(c) = child.take() else { return 0 };
                return match c.reap() {
                    Ok(d) if d.status.success() => 0,
                    Ok(d) => {
                        report(&d);
                        d.status.code().unwrap_or(3)
                    }
                    Err(e) => fail("wait for the child", e),
                };
            }
            Ok(_) => {}
            Err(e) => return fail("read a job", e),
        }
        if child.is_none() {
            match Child::fork(server, &jobs, &run) {
                Ok(c) => child = Some(c),
                Err(e) => return fail("fork the child", e),
            }
        }
        let sent = child
            .as_mut()
            .and_then(|c| c.stdin.as_mut())
            .is_some_and(|s| {
                s.write_all(line.as_bytes())
                    .and_then(|()| s.flush())
                    .is_ok()
            });
        if !sent {
            // The child is dying: the job goes with it (see the module).
            if let Some(c) = child.take() {
                match c.reap() {
                    Ok(d) => report(&d),
                    Err(e) => return fail("wait for the child", e),
                }
            }
        }
    }
}
