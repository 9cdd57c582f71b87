//! The worker as a fork server: the worker process forks a child that runs
//! the jobs, and when the child dies (an engine aborted the process, say),
//! reports how and gives the next job to the next child, a spare forked
//! beforehand. A restart then costs neither a new process that loads popek
//! and builds iced-x86's tables again nor the wait for the child to open
//! and warm up its engines: the server holds them opened, warmed and
//! without threads (`worker::warmed`), each child has a copy, and the
//! spare started their threads while the last one worked.
//!
//! The server relays stdin to the child a job line at a time, through a
//! pipe of the child's own: a job that reached a child that died is gone
//! with it (the campaign, told of the death, sends what it needs again),
//! and never runs twice. A line the child had not read when it was killed
//! (it waited for it) never reached it, and goes to the next child; the
//! death is reported as no job's ([`Death::resent`]), as is one of a
//! child killed after it finished its job ([`Death::job`]), so that the
//! campaign blames no input for it. The child's stderr goes through a pipe the server
//! reads to its end (and passes on to its own), so that a report holds
//! what the child wrote (its first lines, as the campaign keeps a
//! worker's), then the child's wait status. A child never outlives its
//! server (it is killed when the server dies), so killing the worker, as
//! the campaign does with one gone silent, takes the child with it. Every
//! `unsafe` block of the fuzzer is here.

use analyzer::say;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How a child ended: its wait status as `std::process` prints it, what
/// it wrote to stderr, the job it was given last and whether it read it.
pub struct Death {
    pub status: ExitStatus,
    pub stderr: String,
    /// The job line the child was given last, counted over the server's
    /// life from 1: a death reported after the child finished that job
    /// (it was killed while it waited for the next) names a job before the
    /// one the campaign sent since.
    pub job: u64,
    /// The child was killed before it read that line, which the server
    /// gave to the next child: the death is no input's.
    pub resent: bool,
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

/// How much of a child's stderr a report keeps: lines while fewer than
/// this many bytes are kept, as the campaign keeps a worker's.
const SAID: usize = 4096;

/// The longest line of a child's stderr kept whole (so that what is kept
/// stays under twice [`SAID`], whatever the child writes).
const LONGEST: usize = SAID;

/// A line cut at [`LONGEST`] bytes as text: `None` where it is not UTF-8
/// (a character that the cut splits is left out; a line that ends in part
/// of one without a cut is not text).
fn cut_text(line: &[u8]) -> Option<&str> {
    let cut = line.len() > LONGEST;
    let line = &line[..line.len().min(LONGEST)];
    match std::str::from_utf8(line) {
        Ok(l) => Some(l),
        Err(e) if cut && e.error_len().is_none() => {
            std::str::from_utf8(&line[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

/// What a report keeps of a child's stderr, and the campaign of a
/// worker's: its lines (without their ends, each cut at [`LONGEST`]
/// bytes) while fewer than [`SAID`] bytes are kept, until one is not
/// UTF-8. Everything is read (a writer never blocks on a full pipe).
#[derive(Default)]
pub(crate) struct Said {
    kept: String,
    /// The line being read.
    partial: Vec<u8>,
    /// A line was not UTF-8: nothing more is kept.
    broken: bool,
}

impl Said {
    /// A line whole (without its end of line), cut here.
    fn line(&mut self, line: &[u8]) {
        match cut_text(line) {
            Some(l) if !self.broken => {
                if self.kept.len() < SAID {
                    self.kept.push_str(l);
                    self.kept.push('\n');
                }
            }
            _ => self.broken = true,
        }
    }

    /// Bytes as read.
    pub(crate) fn hear(&mut self, bytes: &[u8]) {
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            if self.broken || self.kept.len() >= SAID {
                return;
            }
            let (text, ends) = match piece.strip_suffix(b"\n") {
                Some(t) => (t, true),
                None => (piece, false),
            };
            // Kept to one byte past the cut: the '\r' of a "\r\n" that
            // came in two reads.
            let room = (LONGEST + 1).saturating_sub(self.partial.len());
            self.partial
                .extend_from_slice(&text[..text.len().min(room)]);
            if ends {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line(&line);
            }
        }
    }

    /// The end: a last line without its end of line counts too.
    pub(crate) fn end(mut self) -> String {
        let last = std::mem::take(&mut self.partial);
        if !last.is_empty() {
            self.line(&last);
        }
        self.kept
    }

    /// What [`Said::end`] would give now.
    pub(crate) fn so_far(&self) -> String {
        Said {
            kept: self.kept.clone(),
            partial: self.partial.clone(),
            broken: self.broken,
        }
        .end()
    }
}

/// Writes `what` to stderr and ends the process (a child that cannot set
/// itself up).
fn die_saying(what: &[u8]) -> ! {
    // SAFETY: a write of a valid buffer to descriptor 2, then _exit, which
    // has no preconditions.
    unsafe {
        libc::write(2, what.as_ptr().cast(), what.len());
        libc::_exit(1)
    }
}

/// Closes every descriptor from `first` up (in a child: see
/// [`Child::fork`]): by the close_range system call (Linux 5.9), else one by
/// one as /proc lists them (a kernel without the call, or a seccomp filter
/// that refuses it).
fn close_from(first: libc::c_uint) {
    // SAFETY: close_range takes two descriptor numbers and flags; none of
    // the descriptors it closes is owned by anything in this child that
    // closes it again (see `Child::fork`).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    if r == 0 {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        die_saying(b"popek fuzz worker: a child could not close the server's descriptors\n");
    };
    let open: Vec<libc::c_int> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open.into_iter().filter(|&fd| fd >= first as libc::c_int) {
        // SAFETY: as above; the directory's own descriptor, listed too, is
        // closed already (EBADF is harmless).
        unsafe { libc::close(fd) };
    }
}

/// Whether process `pid` (a child) has ended or is ending: its main thread
/// is a zombie (or dead), as /proc shows it.
fn exiting(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

/// How many threads the process has, as /proc shows it.
pub(crate) fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// How many times a job line goes to another child after the one it went
/// to was killed before it read it.
const GIVEN_AGAIN: u32 = 3;

/// How a spare child tells the server it is ready for a job (given to
/// `run` in a spare only): once it has opened its engines and warmed up.
pub struct Ready(File);

impl Ready {
    /// Tells the server this child is ready.
    pub fn signal(mut self) {
        let _ = self.0.write_all(b"r");
    }
}

/// How long the server waits for a spare to be ready when a job needs it
/// (it takes a few milliseconds); one that is not is ended, and the job
/// goes to a child forked for it.
const SPARE_PATIENCE_MS: libc::c_int = 10_000;

/// A running child: its pid, the write end of its stdin, its stderr, and
/// (a spare's) the read end of its [`Ready`].
struct Child {
    pid: libc::pid_t,
    stdin: Option<File>,
    stderr: File,
    said: Said,
    ready: Option<File>,
    /// The job line it was given last ([`Death::job`]).
    job: u64,
}

impl Child {
    /// Forks a child that runs `run` with stdin from a new pipe and stderr
    /// into another; a `spare` is given its [`Ready`]. The child holds no
    /// descriptor of the server's but its stdout: neither the server's
    /// stdin nor another child's pipes (which would keep that child from
    /// seeing the end of its stdin, or the server the end of its stderr).
    fn fork<S>(
        server: libc::pid_t,
        state: &S,
        run: &impl Fn(&S, Option<Ready>) -> i32,
        spare: bool,
    ) -> std::io::Result<Child> {
        let (in_read, in_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        let ready = if spare { Some(pipe()?) } else { None };
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
            let (in_fd, err_fd) = (in_read.into_raw_fd(), err_write.into_raw_fd());
            let ready_fd = ready.map(|(r, w)| {
                drop(r);
                w.into_raw_fd()
            });
            // SAFETY: prctl(PR_SET_PDEATHSIG) takes the signal; dup2 of
            // open descriptors onto 0, 2 and 3 (the pipes' descriptors are
            // above 2, and the ones for 0 and 2 are copied before 3 is
            // written over); getppid and _exit have no preconditions.
            // Every descriptor above those is closed next (`close_from`),
            // none of which an owner in this process closes again: the
            // child leaves through `exit`, and the pipes' ends were made
            // raw descriptors.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The server died before the child could ask to die with it.
                if libc::getppid() != server {
                    libc::_exit(1);
                }
                if libc::dup2(in_fd, 0) < 0
                    || libc::dup2(err_fd, 2) < 0
                    || ready_fd.is_some_and(|fd| fd != 3 && libc::dup2(fd, 3) < 0)
                {
                    die_saying(b"popek fuzz worker: a child could not set up its pipes\n");
                }
            }
            close_from(if ready_fd.is_some() { 4 } else { 3 });
            // SAFETY: descriptor 3 is the ready pipe's write end, which
            // nothing else owns since `close_from`.
            let ready = ready_fd.map(|_| Ready(unsafe { File::from_raw_fd(3) }));
            // A panic does not unwind into the server's frames (which own
            // descriptors the child closed): it is the child's end.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(state, ready)))
                .unwrap_or(101);
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
        Ok(Child {
            pid,
            stdin: Some(File::from(in_write)),
            stderr: File::from(err_read),
            said: Said::default(),
            ready: ready.map(|(r, _)| File::from(r)),
            job: 0,
        })
    }

    /// Whether bytes written to the child's stdin are still in the pipe:
    /// it has not read the whole of its last line (a line is run only once
    /// it is read whole).
    fn unread(&self) -> bool {
        let Some(stdin) = self.stdin.as_ref() else {
            return false;
        };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on an open pipe descriptor (either end counts
        // what the pipe holds) writes one int, to `n`.
        let r = unsafe { libc::ioctl(stdin.as_raw_fd(), libc::FIONREAD, &raw mut n) };
        r == 0 && n > 0
    }

    /// A spare taking over a job: once it is ready (waited for a while) and
    /// still alive. A spare that died or is not ready in time is ended here
    /// (what it wrote to stderr passed on; no death is reported: it had no
    /// job), and `None` is returned.
    fn take_over(mut self) -> Option<Child> {
        let Some(ready) = self.ready.take() else {
            self.discard();
            return None;
        };
        let mut fds = [libc::pollfd {
            fd: ready.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let until =
            std::time::Instant::now() + std::time::Duration::from_millis(SPARE_PATIENCE_MS as u64);
        let n = loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, left.as_millis() as libc::c_int) };
            // A signal (Ctrl-C, which the campaign handles) is no answer.
            if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break n;
            }
        };
        let mut byte = [0u8; 1];
        let said = n == 1 && matches!((&ready).read(&mut byte), Ok(1));
        let mut raw = 0;
        // SAFETY: a non-blocking wait for our own child, not yet waited for.
        let alive = unsafe { libc::waitpid(self.pid, &raw mut raw, libc::WNOHANG) } == 0;
        // A killed child whose engine threads are still ending is not yet
        // waited for, but it is gone: its main thread is a zombie.
        if said && alive && !exiting(self.pid) {
            return Some(self);
        }
        if alive {
            self.discard();
        } else {
            // Waited for above: what it wrote is passed on.
            while self.hear() {}
        }
        None
    }

    /// Reads what the child wrote to stderr, passing it on to the server's
    /// own (where the campaign sees it as a worker's); false once it has
    /// ended.
    fn hear(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match self.stderr.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                let _ = std::io::stderr().write_all(&buf[..n]);
                self.said.hear(&buf[..n]);
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
        }
    }

    /// Ends a child that was never given a job (a spare): killed, what it
    /// wrote to stderr passed on, then waited for.
    fn discard(mut self) {
        // SAFETY: kill of our own child, which has not been waited for, so
        // its pid is still its own.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        while self.hear() {}
        let mut raw = 0;
        // SAFETY: waits for that child; `raw` receives its status.
        while unsafe { libc::waitpid(self.pid, &raw mut raw, 0) } < 0
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
    }

    /// Waits for the child's end (its stdin closed first): how it ended.
    /// `unread`: the server knows the child did not read its last line (the
    /// write of it failed); else the pipe tells.
    fn reap(mut self, unread: bool) -> std::io::Result<Death> {
        let unread = unread || self.unread();
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
        let status = ExitStatus::from_raw(raw);
        Ok(Death {
            // Killed, not ended by a failure of its own start (which
            // exits with a code before it reads a job), with its line
            // unread: it goes to the next child.
            resent: unread && status.signal().is_some(),
            status,
            stderr: self.said.end(),
            job: self.job,
        })
    }
}

/// Serves: relays each job line of stdin to a child that runs `run` (its
/// exit code ends the child); after each death calls `report` (which
/// writes it on stdout). Returns the worker's exit code: the last child's
/// once stdin has ended (0 when it exited normally).
///
/// The server keeps a `state` that `take_in` updates with every job line
/// once it was relayed, and a child runs with the state of its fork: one
/// forked for a line has what the lines before it gave, a spare what the
/// lines up to the last gave, and each is sent the lines after. Where
/// `take_in` says a line makes forked spares stale, the spare is ended and
/// another forked.
///
/// Once the first job has come, a spare child waits beside the one that
/// runs the jobs, forked when that one got its first job: it readies its
/// engines (its copy of the server's, or its own where the server holds
/// none: a few milliseconds) while the other works, says it is [`Ready`], and
/// takes the next job after a death. A restart then costs what relaying a
/// job does. A spare is a child like any other, forked from the same
/// server: the same as one forked at the death but for what `run` does
/// while it waits. One that dies before it
/// has a job (in its warm-up, say) has no death to report: the job goes to
/// a child forked for it, as it would without spares; so does one where
/// the spare cannot be forked.
///
/// Neither the server nor its children dump core: a child's abort is a
/// finding (Unicorn aborts on LOCK BT with a register some 25 times in
/// 40,000 structured 64-bit inputs), and with core dumps on, every one of
/// them wrote the child's memory to disk, about 10 MB to a core file and
/// 76 MB to a piped handler (`|systemd-coredump ...`, which the core size
/// limit does not hold back). Its `reproduce` line runs it again.
///
/// Must be called while the process has one thread: the child has only
/// the thread that forked.
pub fn serve<S>(
    mut state: S,
    take_in: impl Fn(&mut S, &str) -> bool,
    run: impl Fn(&S, Option<Ready>) -> i32,
    mut report: impl FnMut(&Death),
) -> i32 {
    let fail = |what: &str, e: std::io::Error| {
        say!("popek fuzz worker: {what}: {e}");
        2
    };
    // Not dumpable: the kernel writes no core of the process, to a file or
    // a pipe, and fork keeps the setting (exec, which no child makes, would
    // reset it). The process still reads its own /proc entries.
    // SAFETY: prctl(PR_SET_DUMPABLE) takes a value and no pointer.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong) } != 0 {
        return fail("turn core dumps off", std::io::Error::last_os_error());
    }
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
    let mut spare: Option<Child> = None;
    // Whether a spare could not be forked and it was said.
    let mut said_no_spare = false;
    // The job lines read, the last one given to the child, and a line to
    // give again: the child it went to was killed before it read it. A
    // line is given again at most `GIVEN_AGAIN` times (children killed as
    // fast as they come: the next death is reported as any other).
    let mut lines = 0u64;
    let mut last = String::new();
    let mut again: Option<String> = None;
    let mut given_again = 0u32;
    // Reports a death; true where its line goes to the next child.
    let mut give_again = |d: &mut Death, given: &mut u32| {
        d.resent &= *given < GIVEN_AGAIN;
        report(d);
        *given += u32::from(d.resent);
        d.resent
    };
    loop {
        let (line, fresh) = match again.take() {
            Some(line) => (line, false),
            None => {
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
                            match c.reap(false) {
                                Ok(mut d) => {
                                    if give_again(&mut d, &mut given_again) {
                                        again = Some(std::mem::take(&mut last));
                                    }
                                }
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
                        if let Some(s) = spare.take() {
                            s.discard();
                        }
                        let Some(c) = child.take() else { return 0 };
                        return match c.reap(false) {
                            Ok(d) if d.status.success() => 0,
                            Ok(mut d) => {
                                // No child is left to give its line to.
                                d.resent = false;
                                report(&d);
                                d.status.code().unwrap_or(3)
                            }
                            Err(e) => fail("wait for the child", e),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => return fail("read a job", e),
                }
                lines += 1;
                given_again = 0;
                (line, true)
            }
        };
        if child.is_none() {
            match spare
                .take()
                .and_then(Child::take_over)
                .map_or_else(|| Child::fork(server, &state, &run, false), Ok)
            {
                Ok(c) => child = Some(c),
                Err(e) => return fail("fork the child", e),
            }
        }
        let sent = child.as_mut().is_some_and(|c| {
            c.job = lines;
            c.stdin.as_mut().is_some_and(|s| {
                s.write_all(line.as_bytes())
                    .and_then(|()| s.flush())
                    .is_ok()
            })
        });
        let mut resend = false;
        if !sent {
            // The child is dying: the job goes with it (see the module),
            // unless it was killed before the line reached it.
            if let Some(c) = child.take() {
                match c.reap(true) {
                    Ok(mut d) => resend = give_again(&mut d, &mut given_again),
                    Err(e) => return fail("wait for the child", e),
                }
            }
        }
        if fresh && take_in(&mut state, &line) {
            if let Some(s) = spare.take() {
                s.discard();
            }
        }
        if resend {
            again = Some(line);
        } else {
            last = line;
        }
        // The next child starts while this one works (the server holds
        // its state, a lane's job, and the warmed engines, some 15 MB
        // resident: its fork is quick);
        // without one, the next job's child is forked when it comes.
        if spare.is_none() {
            match Child::fork(server, &state, &run, true) {
                Ok(c) => spare = Some(c),
                Err(e) if !said_no_spare => {
                    said_no_spare = true;
                    say!("popek fuzz worker: fork a spare child: {e} (going on without)");
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The rule `Said` keeps by, on the whole of what was written.
    fn rule(bytes: &[u8]) -> String {
        let mut s = String::new();
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let line = match line.strip_suffix(b"\n") {
                Some(l) => l.strip_suffix(b"\r").unwrap_or(l),
                None => line,
            };
            let Some(l) = cut_text(line) else {
                break;
            };
            if s.len() < SAID {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    #[test]
    fn long_lines_are_cut_and_a_cut_character_left_out() {
        let z = "z".repeat(LONGEST);
        let w = "w".repeat(LONGEST - 1);
        let lone = [
            &"v".repeat(LONGEST - 1).into_bytes()[..],
            &[0xc3],
            b"\nafter\n",
        ]
        .concat();
        for (bytes, kept) in [
            (
                format!("short\n{}\nafter\n", "y".repeat(3 * SAID)).into_bytes(),
                format!("short\n{}\n", "y".repeat(LONGEST)),
            ),
            (format!("{z}\r\nafter\n").into_bytes(), format!("{z}\n")),
            (format!("{w}é\nafter\n").into_bytes(), format!("{w}\n")),
            // Exactly LONGEST bytes that end inside a character: not text.
            (lone, String::new()),
        ] {
            for chunk in [1, 7, 4096] {
                let mut said = Said::default();
                for c in bytes.chunks(chunk) {
                    said.hear(c);
                }
                assert_eq!(said.end(), kept, "by {chunk}");
            }
        }
    }

    #[test]
    fn what_is_kept_is_the_same_however_stderr_comes_in_reads() {
        let long = "x".repeat(5000);
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"one line\n".to_vec(),
            b"no end of line".to_vec(),
            b"crlf\r\nthen\rmid\r\n\nlast\r".to_vec(),
            format!("{long}\nafter the cap\n").into_bytes(),
            format!("short\n{}\nafter\n", "y".repeat(3 * SAID)).into_bytes(),
            format!("{}\r\nafter\n", "z".repeat(LONGEST)).into_bytes(),
            format!("{}é\nafter\n", "w".repeat(LONGEST - 1)).into_bytes(),
            [&b"ok\n"[..], &[0xff, 0xfe, b'\n'], b"after bad utf-8\n"].concat(),
            (0..2000)
                .flat_map(|i| format!("line {i}\n").into_bytes())
                .collect(),
        ];
        for bytes in cases {
            for chunk in [1, 3, 4096] {
                let mut said = Said::default();
                for c in bytes.chunks(chunk) {
                    said.hear(c);
                }
                assert_eq!(said.so_far(), rule(&bytes), "{bytes:?} by {chunk}");
                let kept = said.end();
                assert_eq!(kept, rule(&bytes), "{bytes:?} by {chunk}");
                assert!(kept.len() < 2 * SAID + 2, "{bytes:?} by {chunk}");
            }
        }
    }
}
