//! A campaign: lanes of inputs run by worker processes, findings
//! deduplicated and minimized, written as `findings.jsonl` and
//! `corpus.txt`. What a campaign finds depends only on its seed, its
//! iterations and its lanes (by default one per job): the same give a
//! byte-identical `findings.jsonl`, and the lanes of `--shard K/N` runs,
//! merged ([`merge`]), give the unsharded run's.

use crate::eval::Learned;
use crate::finding::{self, CorpusEntry, Decoded, Finding, FindingsError, Kind};
use crate::forkserver::Said;
use crate::gen::{self, Generators};
use crate::worker::{input_at, Job, JobRef, LaneJob, Reply, Resume};
use analyzer::mode::{Config, Mode};
use analyzer::say;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a worker may take over one input before it counts as hung
/// (the engines' own watchdogs end a run far sooner; this catches a worker
/// that no longer answers at all).
pub const WORKER_PATIENCE: Duration = Duration::from_secs(60);

/// The most lanes a campaign has (each lane is an entry of the queue the
/// jobs take lanes from; shards of a job array need no more).
pub const MAX_LANES: u32 = 1 << 20;

/// How to start a worker: the program and the arguments before the
/// worker's own (`popek __fuzz-worker`).
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment (the planted engine's settings, in tests).
    pub env: Vec<(String, String)>,
}

/// A campaign's settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub engines: Vec<String>,
    pub mode: Mode,
    pub config: Config,
    pub gens: Generators,
    pub seed: u64,
    pub iterations: Option<u64>,
    pub duration: Option<Duration>,
    /// Lanes run at once.
    pub jobs: usize,
    /// Lanes of the whole campaign (what the inputs depend on).
    pub lanes: u32,
    /// This shard: `(k, n)` runs the lanes `l` with `l % n == k`.
    pub shard: (u32, u32),
    /// First bytes the tunnel walks, inclusive.
    pub tunnel: (u8, u8),
    pub corpus: Vec<CorpusEntry>,
    pub out: PathBuf,
    pub worker: WorkerCommand,
    pub progress: bool,
}

/// What a campaign did.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub inputs: u64,
    pub distinct: u64,
    pub findings: usize,
    pub restarts: u64,
    pub secs: f64,
}

impl Summary {
    /// `fuzz: N inputs, D distinct, F findings, W worker restarts, T s, R distinct/s`.
    pub fn line(&self) -> String {
        let rate = if self.secs > 0.0 {
            (self.distinct as f64 / self.secs).round() as u64
        } else {
            0
        };
        format!(
            "fuzz: {} inputs, {} distinct, {} findings, {} worker restarts, {:.1} s, {} distinct/s",
            self.inputs, self.distinct, self.findings, self.restarts, self.secs, rate
        )
    }
}

/// Why a campaign could not run.
#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    #[error("{0}")]
    Usage(String),
    #[error("start a fuzz worker ({program}): {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a fuzz worker cannot start: {0}")]
    WorkerFailed(String),
    #[error(transparent)]
    Findings(#[from] FindingsError),
}

/// How long the reader of a worker's replies waits after each read while
/// the worker runs a long job (a lane, minimizations): the replies of
/// those inputs then arrive a few dozen at a time, not with a wake-up of
/// the reader and of the lane for every input.
const PACE: Duration = Duration::from_millis(1);

/// A running worker: its process, its stdin, and its replies.
struct Worker {
    child: Child,
    stdin: std::process::ChildStdin,
    /// Replies as read, a batch per read (`None`: the worker is gone).
    replies: mpsc::Receiver<Option<Vec<Reply>>>,
    /// Replies received and not yet taken.
    pending: VecDeque<Reply>,
    /// Whether the reader paces itself (see [`PACE`]).
    paced: Arc<AtomicBool>,
    /// What it wrote to stderr, kept as the fork server keeps a child's.
    stderr: Arc<Mutex<Said>>,
    /// Says when the worker's stderr is read to its end.
    stderr_done: mpsc::Receiver<()>,
    /// How the process that ran the jobs ended (its wait status and its
    /// stderr), where the worker reported its death ([`Reply::Died`]) and
    /// lives on for the next job.
    died: Option<Ending>,
    /// The worker itself is gone (or was killed).
    gone: bool,
    /// Jobs sent to it.
    jobs: u64,
    /// Deaths of its processes that were no input's (killed between jobs),
    /// not yet counted as restarts.
    idle_deaths: u64,
    /// The lane of the last `Lane` job sent to it, which its fork server
    /// keeps for a `Resume` ([`crate::worker::Base`]).
    lane_given: Option<u32>,
}

/// How a worker (or the process that ran its jobs) ended: its wait status
/// and what it wrote to stderr.
#[derive(Clone, Debug, Default)]
struct Ending {
    status: String,
    stderr: String,
}

impl Ending {
    /// What a finding says of it: the status and the start of stderr.
    fn how(&self) -> String {
        self.said(analyzer::input::clip_raw)
    }

    /// What an error says of it: the status and stderr whole (as much as
    /// the campaign keeps), so that the cause shows (`cannot open the
    /// engine: kvm is not available: permission denied opening /dev/kvm:
    /// ...`, which `how` cut after 40 characters).
    fn told(&self) -> String {
        self.said(|e| e.replace('\n', "; "))
    }

    fn said(&self, err: impl Fn(&str) -> String) -> String {
        let e = self.stderr.trim();
        if e.is_empty() {
            self.status.clone()
        } else {
            format!("{}: {}", self.status, err(e))
        }
    }
}

impl Worker {
    fn start(opts: &Options) -> Result<Worker, FuzzError> {
        let w = &opts.worker;
        let mut cmd = Command::new(&w.program);
        cmd.args(&w.args)
            .args(["--engine", &opts.engines.join(",")])
            .args(["--mode", opts.mode.name()])
            .args(["--config", &opts.config.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &w.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|source| FuzzError::Spawn {
            program: w.program.display().to_string(),
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(FuzzError::WorkerFailed("no pipes".into()));
        };
        let (tx, rx) = mpsc::channel();
        let paced = Arc::new(AtomicBool::new(false));
        let pace = Arc::clone(&paced);
        std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 16, stdout);
            let mut batch = Vec::new();
            let mut line = String::new();
            loop {
                line.clear();
                let end = !matches!(r.read_line(&mut line), Ok(n) if n > 0);
                let reply = (!end)
                    .then(|| serde_json::from_str::<Reply>(&line).ok())
                    .flatten();
                let gone = reply.is_none();
                batch.extend(reply);
                // Everything read so far is passed on before the next read.
                if (gone || r.buffer().is_empty()) && !batch.is_empty() {
                    if tx.send(Some(std::mem::take(&mut batch))).is_err() {
                        return;
                    }
                    if !gone && pace.load(Ordering::Relaxed) {
                        std::thread::sleep(PACE);
                    }
                }
                if gone {
                    break;
                }
            }
            let _ = tx.send(None);
        });
        let err = Arc::new(Mutex::new(Said::default()));
        let e2 = Arc::clone(&err);
        let (said_all, stderr_done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 4096];
            // Read to the end, kept by the fork server's rule (a worker that
            // writes without end neither blocks nor fills memory).
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Ok(mut s) = e2.lock() {
                            s.hear(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = said_all.send(());
        });
        Ok(Worker {
            child,
            stdin,
            replies: rx,
            pending: VecDeque::new(),
            paced,
            stderr: err,
            stderr_done,
            died: None,
            gone: false,
            jobs: 0,
            idle_deaths: 0,
            lane_given: None,
        })
    }

    /// Sends a job ([`Job`], or [`JobRef`] as one); `paced`: whether the
    /// reader paces itself while it runs (a long job; not a one-by-one
    /// minimization's single candidate).
    fn send(&mut self, job: &impl serde::Serialize, paced: bool) -> bool {
        let Ok(mut s) = serde_json::to_string(job) else {
            return false;
        };
        self.paced.store(paced, Ordering::Relaxed);
        // What a kept worker says of a death in this job is said from now
        // on (a worker lives on through lanes and the minimization); a new
        // one's is kept whole (why it could not start).
        if self.jobs > 0 {
            if let Ok(mut said) = self.stderr.lock() {
                *said = Said::default();
            }
        }
        self.jobs += 1;
        s.push('\n');
        let sent = self.stdin.write_all(s.as_bytes()).is_ok() && self.stdin.flush().is_ok();
        self.gone |= !sent;
        sent
    }

    /// The next reply; `Err(true)` when the worker died or went silent
    /// (it is killed), `Err(false)` when the campaign is stopping.
    fn next(&mut self, stop: &AtomicBool) -> Result<Reply, bool> {
        let mut since = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(false);
            }
            match self.pending.pop_front() {
                // A sign of life only: the patience starts again.
                Some(Reply::Tried) => {
                    since = Instant::now();
                    continue;
                }
                Some(Reply::Died {
                    status,
                    stderr,
                    job,
                    resent,
                }) => {
                    // What the next process writes is its own (the dead
                    // one's, passed on by the worker, may still come).
                    if let Ok(mut s) = self.stderr.lock() {
                        *s = Said::default();
                    }
                    // Killed after it finished its last job, or before it
                    // read this one (which the next process runs): no
                    // input's death, and the job goes on.
                    if resent || job.is_some_and(|j| j < self.jobs) {
                        self.idle_deaths += 1;
                        say!("popek fuzz: a worker's process died between jobs ({status}); restarted");
                        since = Instant::now();
                        continue;
                    }
                    self.died = Some(Ending { status, stderr });
                    return Err(true);
                }
                Some(r) => return Ok(r),
                None => {}
            }
            match self.replies.recv_timeout(Duration::from_millis(100)) {
                Ok(Some(batch)) => self.pending.extend(batch),
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.gone = true;
                    return Err(true);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if since.elapsed() > WORKER_PATIENCE => {
                    let _ = self.child.kill();
                    self.gone = true;
                    return Err(true);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// How the worker ended (after it died): the death it reported, or its
    /// own (it is killed if it still runs).
    fn ending(&mut self) -> Ending {
        if let Some(e) = self.died.clone() {
            return e;
        }
        let _ = self.child.kill();
        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
        // What it wrote before it died is read to the end first (its
        // children, which hold the pipe too, die with it).
        let _ = self.stderr_done.recv_timeout(Duration::from_millis(500));
        let stderr = self.stderr.lock().map(|s| s.so_far()).unwrap_or_default();
        Ending { status, stderr }
    }

    /// The worker for the next job: the last one unless it is gone (after
    /// a death it reported, it has a new process for the next job), also
    /// where it went away while it had no job (kept from a lane before),
    /// else a new one.
    fn again(last: Option<Worker>, opts: &Options) -> Result<Worker, FuzzError> {
        match last {
            Some(mut w) if !w.gone => {
                if !matches!(w.child.try_wait(), Ok(None)) {
                    return Worker::start(opts);
                }
                w.died = None;
                Ok(w)
            }
            _ => Worker::start(opts),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first bytes lane `lane` of `lanes` tunnels over, inclusive (`None`
/// when the range has fewer first bytes than there are lanes).
fn tunnel_range(lane: u32, lanes: u32, (lo, hi): (u8, u8)) -> Option<(u8, u8)> {
    let span = u32::from(hi) - u32::from(lo) + 1;
    let a = u32::from(lo) + span * lane / lanes;
    let b = u32::from(lo) + span * (lane + 1) / lanes;
    (b > a).then(|| (a as u8, (b - 1) as u8))
}

/// The distinct inputs run: each as one number ([`distinct_key`]), so
/// that counting them takes no allocation per input and a cheap hash
/// (they are the campaign's own inputs, and the set is only counted).
type Distinct = HashSet<u128, BuildHasherDefault<analyzer::fasthash::FastHasher>>;

/// An input of at most 15 bytes as one number: its bytes, then its length
/// in the top byte (a longer one, which no generator makes, by its first
/// 15 bytes and its length).
fn distinct_key(bytes: &[u8]) -> u128 {
    let mut k = [0u8; 16];
    let n = bytes.len().min(15);
    k[..n].copy_from_slice(&bytes[..n]);
    k[15] = bytes.len().min(255) as u8;
    u128::from_le_bytes(k)
}

/// A lane's results.
#[derive(Default)]
struct LaneResult {
    inputs: u64,
    distinct: Distinct,
    findings: Vec<Finding>,
    restarts: u64,
    /// Restarts after deaths that were no input's (see `Worker::next`).
    idle_restarts: u64,
}

/// The finding of an input a worker died on.
fn crash_finding(opts: &Options, bytes: &[u8], how: &str) -> Finding {
    let (len, valid) = gen::decode_len(opts.mode, bytes);
    let bytes = &bytes[..len];
    let entry = analyzer::explain::raw_entry(bytes, opts.mode);
    let hex = analyzer::observe::hex(bytes);
    let how_sig: String = how.split(':').next().unwrap_or("").to_string();
    let position = crate::eval::position_name(opts.mode, bytes);
    Finding {
        kind: Kind::EngineFailure,
        mode: opts.mode.name().into(),
        cpl: None,
        config: opts.config.name(),
        bytes: hex.clone(),
        input: hex.clone(),
        decoder: Decoded {
            valid,
            length: len,
            code: entry.code,
            form: entry.form,
        },
        // Each engine the worker ran, with no outcome: it died.
        engines: opts
            .engines
            .iter()
            .map(|e| (e.clone(), BTreeMap::new()))
            .collect(),
        observed_length: None,
        observed_by: None,
        detail: format!("the worker died on this input ({how})"),
        signature: format!("engine-failure|worker|{position}|{how_sig}"),
        reproduce: crate::eval::reproduce(opts.mode, &opts.config, &opts.engines, bytes),
    }
}

struct Shared<'a> {
    opts: &'a Options,
    templates: &'a [Vec<u8>],
    corpus: Vec<Vec<u8>>,
    /// Both as a lane's job carries them (hex), made once.
    templates_hex: Vec<String>,
    corpus_hex: Vec<String>,
    stop: &'a AtomicBool,
    bar: indicatif::ProgressBar,
    found: AtomicU64,
}

/// Runs one lane on `worker` (the thread's: started where there is none),
/// which is left there for the thread's next lane and its minimization
/// unless the lane stopped with a job under way.
fn run_lane(
    sh: &Shared<'_>,
    lane: u32,
    count: u64,
    worker: &mut Option<Worker>,
) -> Result<LaneResult, FuzzError> {
    let opts = sh.opts;
    let range = tunnel_range(lane, opts.lanes, opts.tunnel);
    let mut job = LaneJob {
        gens: opts.gens,
        lane,
        seed: opts.seed,
        start: 0,
        count,
        tunnel: range.map(|(lo, hi)| gen::Tunnel::start(lo, hi)),
        corpus: sh.corpus_hex.clone(),
        templates: sh.templates_hex.clone(),
        learned: Learned::default(),
    };
    let mut res = LaneResult::default();
    // What the lane's workers learned since its last job was sent (which a
    // `Resume` adds to what the worker has); `job.learned` holds what they
    // learned before.
    let mut since_sent = Learned::default();
    let mut next = 0u64;
    let mut cursor = job.tunnel.clone();
    // The worker of the last job, where it lives on after a death.
    let mut last: Option<Worker> = worker.take();
    'lane: while next < count && !sh.stop.load(Ordering::Relaxed) {
        job.start = next;
        job.count = count - next;
        job.tunnel = cursor.clone();
        let mut w = Worker::again(last.take(), opts)?;
        // A worker that was given the lane is told where it goes on, and
        // what was learned since; any other, the lane whole.
        let sent = if w.lane_given == Some(lane) {
            let resume = Resume {
                lane,
                start: job.start,
                count: job.count,
                tunnel: job.tunnel.clone(),
                learned: std::mem::take(&mut since_sent),
            };
            let sent = w.send(&JobRef::Resume(&resume), true);
            job.learned.absorb(resume.learned);
            sent
        } else {
            job.learned.absorb(std::mem::take(&mut since_sent));
            w.lane_given = Some(lane);
            w.send(&JobRef::Lane(&job), true)
        };
        // A worker that takes no job cannot start (and no input ran).
        if !sent {
            return Err(FuzzError::WorkerFailed(w.ending().told()));
        }
        loop {
            let reply = w.next(sh.stop);
            res.idle_restarts += std::mem::take(&mut w.idle_deaths);
            match reply {
                Ok(Reply::Done) => {
                    last = Some(w);
                    break 'lane;
                }
                Ok(Reply::Input {
                    i,
                    g,
                    ran,
                    adv,
                    f,
                    learned,
                }) => {
                    // What this worker measured, its successor need not.
                    since_sent.absorb(learned);
                    res.inputs += 1;
                    if let Ok(b) = analyzer::explain::parse_hex(&ran) {
                        res.distinct.insert(distinct_key(&b));
                    }
                    if g == gen::GenKind::Tunnel {
                        cursor = cursor.and_then(|c| c.next(adv));
                    }
                    next = i + 1;
                    sh.bar.inc(1);
                    if !f.is_empty() {
                        sh.found.fetch_add(f.len() as u64, Ordering::Relaxed);
                        res.findings.extend(f);
                        sh.bar
                            .set_message(format!("{} findings", sh.found.load(Ordering::Relaxed)));
                    }
                }
                Ok(Reply::Minimized { .. } | Reply::Tried | Reply::Died { .. }) => {}
                Err(false) => break 'lane,
                Err(true) => {
                    let ending = w.ending();
                    let how = ending.how();
                    // A worker that never answered is broken, not crashed.
                    if res.inputs == 0 && res.restarts == 0 && next == 0 && !how.contains("signal")
                    {
                        return Err(FuzzError::WorkerFailed(ending.told()));
                    }
                    res.restarts += 1;
                    let Some((g, bytes)) = input_at(
                        &job,
                        next,
                        cursor.as_ref(),
                        opts.mode,
                        sh.templates,
                        &sh.corpus,
                    ) else {
                        last = Some(w);
                        break 'lane;
                    };
                    res.inputs += 1;
                    res.distinct.insert(distinct_key(&bytes));
                    res.findings.push(crash_finding(opts, &bytes, &how));
                    sh.found.fetch_add(1, Ordering::Relaxed);
                    sh.bar.inc(1);
                    if g == gen::GenKind::Tunnel {
                        let (len, _) = gen::decode_len(opts.mode, &bytes);
                        cursor = cursor.and_then(|c| c.next(len));
                    }
                    next += 1;
                    last = Some(w);
                    continue 'lane;
                }
            }
        }
    }
    *worker = last;
    Ok(res)
}

/// Whether a finding is kept as it was found: a worker's death (its input
/// is what the worker died on) or an input that is not hex.
fn kept_whole(f: &Finding) -> bool {
    f.signature.starts_with("engine-failure|worker")
        || analyzer::explain::parse_hex(&f.input).is_err()
}

/// The minimized finding of `f` from what [`worker::minimize`] found.
fn minimized(f: &Finding, least: Option<Finding>) -> Finding {
    let mut best = least.unwrap_or_else(|| f.clone());
    best.input = f.input.clone();
    best
}

/// Minimizes one finding with a job per candidate, so that a candidate a
/// worker dies on only keeps nothing (the worker is restarted for the
/// next): what a finding gets whose minimization took a worker with it.
/// A worker after a death is told what the ones before it learned, so
/// that the minimization is the one a worker that never died would make,
/// skipping the candidates that killed one.
fn minimize_one_by_one(
    opts: &Options,
    f: &Finding,
    stop: &AtomicBool,
) -> Result<Finding, FuzzError> {
    let Ok(input) = analyzer::explain::parse_hex(&f.input) else {
        return Ok(f.clone());
    };
    let mut w: Option<Worker> = None;
    let mut learned = Learned::default();
    let least = crate::worker::minimize(
        opts.mode,
        &input,
        &f.signature,
        |cand| -> Result<_, FuzzError> {
            let mut worker = Worker::again(w.take(), opts)?;
            // Told every time (a worker that lives on knows it already):
            // this runs only where minimizing killed a worker.
            let job = Job::Eval {
                inputs: vec![analyzer::observe::hex(cand)],
                learned: learned.clone(),
            };
            if !worker.send(&job, false) {
                return Ok(None);
            }
            let mut got = None;
            loop {
                match worker.next(stop) {
                    Ok(Reply::Input { f, learned: l, .. }) => {
                        learned.absorb(l);
                        got = Some(f);
                    }
                    Ok(Reply::Done) => break,
                    Ok(Reply::Minimized { .. } | Reply::Tried | Reply::Died { .. }) => {}
                    Err(_) => {
                        w = Some(worker);
                        return Ok(None);
                    }
                }
            }
            w = Some(worker);
            Ok(got)
        },
    )?;
    Ok(minimized(f, least))
}

/// Minimizes findings in one worker, which runs each minimization itself;
/// a finding whose minimization the worker dies on is minimized one
/// candidate at a time, and a new worker goes on with the rest.
fn minimize_some(
    opts: &Options,
    findings: &[&Finding],
    stop: &AtomicBool,
    worker: Option<Worker>,
) -> Result<Vec<Finding>, FuzzError> {
    let mut out = Vec::with_capacity(findings.len());
    let mut last = worker;
    while out.len() < findings.len() {
        let base = out.len();
        let items = findings[base..]
            .iter()
            .map(|f| (f.input.clone(), f.signature.clone()))
            .collect();
        let mut w = Worker::again(last.take(), opts)?;
        let sent = w.send(&Job::Minimize(items), true);
        let mut done = false;
        while sent && !done {
            match w.next(stop) {
                Ok(Reply::Minimized { i, f }) if base + i as usize == out.len() => {
                    out.push(minimized(findings[out.len()], f.map(|b| *b)));
                }
                Ok(Reply::Done) => done = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        last = Some(w);
        if out.len() < findings.len() {
            out.push(minimize_one_by_one(opts, findings[out.len()], stop)?);
        }
    }
    Ok(out)
}

/// Minimizes every finding (see [`worker::minimize`]), over `opts.jobs`
/// workers at once, the lanes' `workers` first (a worker's minimization
/// forgets what its lanes left: see [`Job::Minimize`]); the result is in
/// the order given.
fn minimize_all(
    opts: &Options,
    findings: Vec<Finding>,
    mut workers: Vec<Worker>,
) -> Result<Vec<Finding>, FuzzError> {
    // Minimization runs to its end even after a stop: it is short.
    let no_stop = AtomicBool::new(false);
    let todo: Vec<&Finding> = findings.iter().filter(|f| !kept_whole(f)).collect();
    let per = todo.len().div_ceil(opts.jobs.max(1)).max(1);
    // Those without a share end now.
    workers.truncate(todo.len().div_ceil(per));
    let parts: Vec<Result<Vec<Finding>, FuzzError>> = std::thread::scope(|s| {
        let handles: Vec<_> = todo
            .chunks(per)
            .map(|chunk| {
                let w = workers.pop();
                let no_stop = &no_stop;
                s.spawn(move || minimize_some(opts, chunk, no_stop, w))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(FuzzError::WorkerFailed("minimization panicked".into()))
                })
            })
            .collect()
    });
    let mut done = Vec::with_capacity(todo.len());
    for p in parts {
        done.extend(p?);
    }
    let mut done = done.into_iter();
    Ok(findings
        .iter()
        .map(|f| {
            let least = (!kept_whole(f)).then(|| done.next()).flatten();
            least.unwrap_or_else(|| f.clone())
        })
        .collect())
}

/// Runs a campaign (until its iterations are done, its time is up, or
/// `stop` is set) and writes its findings and corpus into `opts.out`.
pub fn run(opts: &Options, stop: &AtomicBool) -> Result<Summary, FuzzError> {
    if opts.iterations.is_none() && opts.duration.is_none() {
        return Err(FuzzError::Usage(
            "give --iterations N or --duration SECS (or both)".into(),
        ));
    }
    let (k, n) = opts.shard;
    if n == 0 || k >= n {
        return Err(FuzzError::Usage(format!(
            "--shard {k}/{n}: K must be below N"
        )));
    }
    if opts.lanes == 0 || opts.jobs == 0 {
        return Err(FuzzError::Usage(
            "--lanes and --jobs must be at least 1".into(),
        ));
    }
    if opts.lanes > MAX_LANES {
        return Err(FuzzError::Usage(format!(
            "--lanes {}: at most {MAX_LANES}",
            opts.lanes
        )));
    }
    let total = opts.iterations.unwrap_or(u64::MAX);
    let per_lane = |l: u32| {
        let n = u64::from(opts.lanes);
        total / n + u64::from(u64::from(l) < total % n)
    };
    // A tunnel lane beyond the range's first bytes has none to walk.
    let tunnel_only = opts.gens == Generators::One(gen::GenKind::Tunnel);
    let idle = |l: u32| {
        per_lane(l) == 0 || (tunnel_only && tunnel_range(l, opts.lanes, opts.tunnel).is_none())
    };
    // This shard's lanes.
    let lanes: VecDeque<u32> = (0..opts.lanes).filter(|l| l % n == k).collect();
    let idle_lanes = lanes.iter().filter(|&&l| idle(l)).count();
    let lanes_here = lanes.len();
    // A shard with nothing to run would write empty files over whatever
    // the directory held.
    if lanes.is_empty() {
        return Err(FuzzError::Usage(format!(
            "--shard {k}/{n} with --lanes {}: this shard has no lane to run \
             (lanes are dealt to shards one by one; give --lanes {n} or more)",
            opts.lanes
        )));
    }
    if n > 1 && idle_lanes == lanes_here {
        return Err(FuzzError::Usage(format!(
            "--shard {k}/{n}: the iterations and the tunnel range over {} lanes leave this \
             shard no input to run",
            opts.lanes
        )));
    }
    if idle_lanes > 0 {
        say!(
            "popek: note: {idle_lanes} of the {lanes_here} lanes run nothing (fewer iterations \
             or tunnel first bytes than lanes)"
        );
    }
    make_out_dir(&opts.out)?;
    // What is in the way of the outputs is said now, not after the
    // campaign (whose findings would then be lost).
    for name in OUTPUTS {
        analyzer::report::check_target(&opts.out.join(name))
            .map_err(|e| finding::with_cause(&opts.out, e))?;
    }
    // Where the findings cannot be written, say so before the campaign
    // runs, not after it (a temporary file made and removed at once).
    tempfile::tempfile_in(&opts.out).map_err(|source| FindingsError::Io {
        path: opts.out.clone(),
        source,
    })?;
    let start = Instant::now();
    let templates = gen::templates(opts.mode);
    let bar = if opts.progress {
        let len = opts
            .iterations
            .map(|_| lanes.iter().map(|&l| per_lane(l)).sum::<u64>());
        let b =
            indicatif::ProgressBar::with_draw_target(len, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} inputs, {per_sec}, {msg} [{elapsed}]",
        ) {
            b.set_style(style);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    // Lanes stop on `halt`: set by Ctrl-C (`stop`), by --duration, or by a
    // lane that failed.
    let halt = AtomicBool::new(false);
    let corpus: Vec<Vec<u8>> = opts
        .corpus
        .iter()
        .filter(|c| c.mode == opts.mode.name())
        .map(|c| c.bytes.clone())
        .collect();
    let hex = |v: &[Vec<u8>]| v.iter().map(|b| analyzer::observe::hex(b)).collect();
    let sh = Shared {
        opts,
        templates: &templates,
        templates_hex: hex(&templates),
        corpus_hex: hex(&corpus),
        corpus,
        stop: &halt,
        bar: bar.clone(),
        found: AtomicU64::new(0),
    };
    let queue = Mutex::new(lanes);
    let results: Mutex<Vec<(u32, LaneResult)>> = Mutex::new(Vec::new());
    let error: Mutex<Option<FuzzError>> = Mutex::new(None);
    // The lanes' workers, for the minimization.
    let pool: Mutex<Vec<Worker>> = Mutex::new(Vec::new());
    let active = AtomicU64::new(opts.jobs as u64);
    // A deadline past what the clock holds is none.
    let deadline = opts.duration.and_then(|d| start.checked_add(d));
    std::thread::scope(|s| {
        s.spawn(|| {
            while active.load(Ordering::Relaxed) > 0 {
                if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                    halt.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        for _ in 0..opts.jobs {
            s.spawn(|| {
                let mut worker = None;
                // A stop ends the lanes not yet begun too.
                while !halt.load(Ordering::Relaxed) {
                    let lane = match queue.lock() {
                        Ok(mut q) => q.pop_front(),
                        Err(_) => None,
                    };
                    let Some(lane) = lane else { break };
                    // A lane of no inputs has nothing to run.
                    let count = per_lane(lane);
                    if count == 0 {
                        continue;
                    }
                    match run_lane(&sh, lane, count, &mut worker) {
                        Ok(r) => {
                            if let Ok(mut v) = results.lock() {
                                v.push((lane, r));
                            }
                        }
                        Err(e) => {
                            halt.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = error.lock() {
                                slot.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
                if let (Some(w), Ok(mut p)) = (worker, pool.lock()) {
                    p.push(w);
                }
                active.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = error.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(l, _)| *l);
    let mut inputs = 0;
    let mut restarts = 0;
    // The lanes' sets join into the largest one (not all into a new one,
    // which hashed every input a second time).
    let mut distinct = Distinct::default();
    let mut all = Vec::new();
    for (_, mut r) in results {
        inputs += r.inputs;
        restarts += r.restarts + r.idle_restarts;
        if r.distinct.len() > distinct.len() {
            std::mem::swap(&mut distinct, &mut r.distinct);
        }
        distinct.extend(r.distinct);
        all.extend(r.findings);
    }
    let deduped = finding::dedupe(all);
    let workers = pool.into_inner().unwrap_or_default();
    let findings = finding::dedupe(minimize_all(opts, deduped, workers)?);
    write_outputs(&opts.out, &findings)?;
    Ok(Summary {
        inputs,
        distinct: distinct.len() as u64,
        findings: findings.len(),
        restarts,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// The files a campaign and a merge write into `--out`.
const OUTPUTS: [&str; 2] = ["findings.jsonl", "corpus.txt"];

/// Writes `findings.jsonl` and `corpus.txt`, atomically as one set.
fn write_outputs(out: &Path, findings: &[Finding]) -> Result<(), FuzzError> {
    let mut corpus: Vec<CorpusEntry> = findings
        .iter()
        .filter_map(|f| {
            Some(CorpusEntry {
                bytes: analyzer::explain::parse_hex(&f.bytes).ok()?,
                mode: f.mode.clone(),
                note: f.signature.clone(),
            })
        })
        .collect();
    corpus.sort();
    corpus.dedup();
    finding::write_set(
        out,
        &[
            (OUTPUTS[0], finding::to_jsonl(findings).as_bytes()),
            (OUTPUTS[1], finding::corpus_text(&corpus).as_bytes()),
        ],
    )?;
    Ok(())
}

/// Merges the findings of shard directories into `out`: the same rule as
/// one campaign's (one finding per signature and setting, the least input), so merged
/// shards equal the unsharded run. Returns the number of findings.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<usize, FuzzError> {
    let mut all = Vec::new();
    for d in dirs {
        all.extend(finding::read_jsonl(&d.join("findings.jsonl"))?);
    }
    let findings = finding::dedupe(all);
    make_out_dir(out)?;
    write_outputs(out, &findings)?;
    Ok(findings.len())
}

/// Makes the `--out` directory where there is none; something else in
/// its place is said to be in the way (not "File exists").
fn make_out_dir(out: &Path) -> Result<(), FindingsError> {
    let io = |source| FindingsError::Io {
        path: out.to_path_buf(),
        source,
    };
    analyzer::report::check_out_dir(out).map_err(io)?;
    std::fs::create_dir_all(out).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker whose process died after it finished its last job (the
    /// death names the job before) or before it read the one sent (its
    /// line went to the next process) goes on with the job, the death
    /// counted but no input's; a death in the job is the job's.
    #[test]
    fn a_death_between_jobs_is_no_input_s() {
        // Stands in for a worker: a reply to each job line, as listed.
        let died = |job: u64, resent: bool| {
            format!(
                r#"{{"Died":{{"status":"signal: 9 (SIGKILL)","stderr":"","job":{job},"resent":{resent}}}}}"#
            )
        };
        let script = format!(
            "read l; echo '\"Done\"'; read l; echo '{}'; echo '\"Done\"'; \
             read l; echo '{}'; echo '\"Done\"'; read l; echo '{}'; read l",
            died(1, false),
            died(3, true),
            died(4, false),
        );
        let opts = Options {
            engines: vec!["unicorn".into()],
            mode: Mode::Long64,
            config: Config::UMIP_OFF,
            gens: Generators::All,
            seed: 0,
            iterations: Some(1),
            duration: None,
            jobs: 1,
            lanes: 1,
            shard: (0, 1),
            tunnel: (0, 0xff),
            corpus: Vec::new(),
            out: PathBuf::new(),
            worker: WorkerCommand {
                program: "sh".into(),
                args: vec!["-c".into(), script, "sh".into()],
                env: Vec::new(),
            },
            progress: false,
        };
        let stop = AtomicBool::new(false);
        let mut w = Worker::start(&opts).expect("sh");
        let job = Job::Minimize(Vec::new());
        for (idle, done) in [(0, true), (1, true), (2, true), (2, false)] {
            assert!(w.send(&job, false));
            let r = w.next(&stop);
            assert_eq!(w.idle_deaths, idle);
            if done {
                assert!(matches!(r, Ok(Reply::Done)), "{r:?}");
            } else {
                assert!(matches!(r, Err(true)), "{r:?}");
                assert_eq!(w.ending().status, "signal: 9 (SIGKILL)");
            }
        }
    }

    #[test]
    fn lanes_split_the_tunnel_range_without_gaps() {
        let mut seen = Vec::new();
        for l in 0..3 {
            let (a, b) = tunnel_range(l, 3, (0x00, 0xff)).expect("range");
            seen.extend(a..=b);
        }
        assert_eq!(seen, (0u8..=0xff).collect::<Vec<_>>());
        assert_eq!(tunnel_range(0, 1, (0x01, 0x01)), Some((0x01, 0x01)));
        assert_eq!(tunnel_range(1, 4, (0x01, 0x01)), None);
    }

    #[test]
    fn inputs_count_as_distinct_by_bytes_and_length() {
        let keys: HashSet<u128> = [&b""[..], b"\0", b"\0\0", b"\x90", b"\x90\0", &[0xff; 15]]
            .iter()
            .map(|b| distinct_key(b))
            .collect();
        assert_eq!(keys.len(), 6);
        let mut a = [0x90u8; 15];
        let b = a;
        a[14] = 0x91;
        assert_ne!(distinct_key(&a), distinct_key(&b));
    }

    #[test]
    fn the_summary_line_has_its_fixed_form() {
        let s = Summary {
            inputs: 10,
            distinct: 8,
            findings: 2,
            restarts: 1,
            secs: 2.0,
        };
        assert_eq!(
            s.line(),
            "fuzz: 10 inputs, 8 distinct, 2 findings, 1 worker restarts, 2.0 s, 4 distinct/s"
        );
    }
}
