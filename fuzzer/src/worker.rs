//! The worker: a child process of `popek fuzz` that owns the engines and
//! evaluates inputs, so that an engine that crashes or hangs takes only the
//! worker with it. It reads jobs (one JSON line each) on stdin and writes a
//! reply line per input on stdout, flushed at once, then `Done`.
//!
//! Every input is a pure function of the job (see [`input_at`]), so the
//! parent knows the input a worker died on and resumes after it.

use crate::eval::{Evaluator, Learned, Lengths};
use crate::finding::Finding;
use crate::gen::{self, GenKind, Generators};
use crate::rng::Rng;
use analyzer::mode::{Config, Mode};
use analyzer::probe::Opener;
use analyzer::say;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::sync::Arc;

/// What a worker is asked to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Job {
    /// Inputs `start..start + count` of a lane.
    Lane(LaneJob),
    /// These inputs (hex), in order, evaluated as [`Evaluator::eval`]
    /// does, by a worker told `learned` first (what an earlier worker
    /// learned from the same run of inputs, when it died).
    Eval {
        inputs: Vec<String>,
        #[serde(default, skip_serializing_if = "Learned::is_empty")]
        learned: Learned,
    },
    /// Minimize these findings' inputs (hex, with the signature to keep),
    /// in order (see [`minimize`]).
    Minimize(Vec<(String, String)>),
    /// A lane again after a death, from an index on: the lane of the last
    /// `Lane` job the worker was given, which a new child has from the
    /// server (see [`Base`]) and is not sent again.
    Resume(Resume),
}

/// The part of a lane's job that changes when it is given again after a
/// death: where it goes on, and what the lane's workers learned since the
/// worker was last given a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Resume {
    pub lane: u32,
    pub start: u64,
    pub count: u64,
    pub tunnel: Option<gen::Tunnel>,
    #[serde(default, skip_serializing_if = "Learned::is_empty")]
    pub learned: Learned,
}

/// The lane a worker was last given whole, as its fork server keeps it
/// (with what every `Resume` of it added to what was learned) and its
/// children have it: a child forked after a job line was taken in has
/// what that line gave, and is sent what comes after. A lane's job holds
/// its templates, corpus and what the lane learned (60-270 KB), which a
/// new child once read and parsed after every death.
#[derive(Default)]
pub struct Base {
    lane: Option<LaneBase>,
}

struct LaneBase {
    /// The job, its templates, corpus and learned moved out.
    job: LaneJob,
    templates: Vec<Vec<u8>>,
    corpus: Vec<Vec<u8>>,
    learned: Learned,
}

impl Base {
    /// Takes in a job line as the server relays it. Returns whether a
    /// child forked before the line would resume another lane than the
    /// one a `Resume` now names (a new lane came): such a spare is stale.
    /// A line that is not a job changes nothing (its child says why).
    pub fn take_in(&mut self, line: &str) -> bool {
        match serde_json::from_str::<Job>(line) {
            Ok(Job::Lane(mut job)) => {
                self.lane = Some(LaneBase {
                    templates: hex_list(&std::mem::take(&mut job.templates)),
                    corpus: hex_list(&std::mem::take(&mut job.corpus)),
                    learned: std::mem::take(&mut job.learned),
                    job,
                });
                true
            }
            Ok(Job::Resume(r)) => {
                if let Some(b) = self.lane.as_mut().filter(|b| b.job.lane == r.lane) {
                    b.learned.absorb(r.learned);
                }
                false
            }
            _ => false,
        }
    }

    /// Tells a spare's evaluator what the lane's workers learned, while it
    /// waits (it was a death's cost: 1-2 ms late in a 40,000-input lane).
    /// Returns the lane, which a `Resume` of it as the spare's first job
    /// then need not tell again.
    pub fn tell(&self, ev: &mut Evaluator) -> Option<u32> {
        let b = self.lane.as_ref()?;
        ev.forget_history();
        ev.know(&b.learned);
        Some(b.job.lane)
    }
}

/// A [`Job`] of borrowed parts, serialized as the job: a lane's job (its
/// templates, corpus and what the lane learned: 60-270 KB) is sent whole
/// to every new worker process of the lane, and is not copied to be sent.
#[derive(Serialize)]
pub enum JobRef<'a> {
    Lane(&'a LaneJob),
    Resume(&'a Resume),
}

/// A lane's inputs from some index on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LaneJob {
    pub gens: Generators,
    pub lane: u32,
    pub seed: u64,
    pub start: u64,
    pub count: u64,
    /// Where the lane's tunnel is, `None` once it is done.
    pub tunnel: Option<gen::Tunnel>,
    /// Corpus entries of the mode (hex), for `mutate`.
    pub corpus: Vec<String>,
    /// The generators' templates (hex, [`gen::templates`]): the parent
    /// has them, and a worker that encoded the catalog itself would spend
    /// most of its start on it.
    pub templates: Vec<String>,
    /// What the lane's earlier workers learned.
    #[serde(default, skip_serializing_if = "Learned::is_empty")]
    pub learned: Learned,
}

/// One input's reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    Input {
        /// Its index in the lane (or in the `Eval` list).
        i: u64,
        /// The generator that made it.
        g: GenKind,
        /// The bytes that ran (hex).
        ran: String,
        /// The length the tunnel advances by.
        adv: usize,
        f: Vec<Finding>,
        /// What was learned from this input, which the lane's next worker
        /// is given after a death.
        #[serde(default, skip_serializing_if = "Learned::is_empty")]
        learned: Learned,
    },
    /// A candidate of a `Minimize` job was evaluated: the worker is alive
    /// (one finding's minimization may take many evaluations).
    Tried,
    /// The `i`-th finding of a `Minimize` job: the finding of the least
    /// input found (`None`: no byte could be dropped).
    Minimized {
        i: u64,
        f: Option<Box<Finding>>,
    },
    Done,
    /// The process that ran the jobs died (see [`crate::forkserver`]): its
    /// wait status and what it wrote to stderr. The jobs it had not
    /// finished are gone; the next job goes to a new one.
    Died {
        status: String,
        stderr: String,
        /// The worker's job it was given last, counted from 1 ([`Job`]
        /// lines, as the campaign sends them): one before the campaign's
        /// last means it died after it finished that job.
        #[serde(default)]
        job: Option<u64>,
        /// It was killed before it read its last job, which the next
        /// process runs: no input's death.
        #[serde(default)]
        resent: bool,
    },
}

/// Minimizes an input of `mode`: drops one byte at a time, first to last
/// (so prefixes go first), and starts over after every drop that still
/// gives a finding of `signature`, until no drop does. Returns that
/// finding for the least input found (`None`: no drop kept it). `eval`
/// gives a candidate's findings (`None`: the candidate could not be
/// evaluated, which keeps nothing); a candidate that cannot give the
/// signature by the decoder alone ([`crate::eval::may_give`]) is not
/// evaluated.
pub fn minimize<E>(
    mode: Mode,
    input: &[u8],
    signature: &str,
    mut eval: impl FnMut(&[u8]) -> Result<Option<Vec<Finding>>, E>,
) -> Result<Option<Finding>, E> {
    let mut cur = input.to_vec();
    let mut best = None;
    let mut changed = true;
    while changed && cur.len() > 1 {
        changed = false;
        for i in 0..cur.len() {
            let mut cand = cur.clone();
            cand.remove(i);
            if !crate::eval::may_give(mode, signature, &cand) {
                continue;
            }
            let kept = eval(&cand)?
                .unwrap_or_default()
                .into_iter()
                .find(|g| g.signature == signature);
            if let Some(same) = kept {
                cur = cand;
                best = Some(same);
                changed = true;
                break;
            }
        }
    }
    Ok(best)
}

/// The generator and input of index `index` of a lane, given the tunnel's
/// next candidate (`None`: done; `all` then uses `structured` instead).
pub fn input_at(
    job: &LaneJob,
    index: u64,
    tunnel: Option<&gen::Tunnel>,
    mode: Mode,
    templates: &[Vec<u8>],
    corpus: &[Vec<u8>],
) -> Option<(GenKind, Vec<u8>)> {
    let mut kind = job.gens.kind_of(index);
    if kind == GenKind::Tunnel && tunnel.is_none() {
        if job.gens != Generators::All {
            return None;
        }
        kind = GenKind::Structured;
    }
    let mut rng = Rng::for_input(job.seed, job.lane, index);
    let bytes = match kind {
        GenKind::Tunnel => tunnel.map(|t| t.bytes.clone()).unwrap_or_default(),
        GenKind::Structured => gen::structured(&mut rng, mode, templates),
        GenKind::Mutate => gen::mutate(&mut rng, corpus, templates),
    };
    Some((kind, bytes))
}

fn hex_list(v: &[String]) -> Vec<Vec<u8>> {
    v.iter()
        .filter_map(|h| analyzer::explain::parse_hex(h).ok())
        .collect()
}

/// Serves jobs from `input` until it ends. A `Resume` continues the lane
/// that `base` holds; `told` is the lane whose learned `ev` was told
/// already ([`Base::tell`]), which a first job resuming it does not tell
/// again.
/// An engine failure the probe layer reports is an error (the worker exits
/// and the parent restarts it).
pub fn serve(
    ev: &mut Evaluator,
    base: &Base,
    mut told: Option<u32>,
    input: impl BufRead,
    mut out: impl Write,
) -> Result<(), String> {
    for line in input.lines() {
        let line = line.map_err(|e| format!("read a job: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let job: Job = serde_json::from_str(&line).map_err(|e| format!("a bad job: {e}"))?;
        let told = told.take();
        // A spare told a lane it does not resume starts, as any child,
        // from no history.
        if told.is_some() && !matches!(&job, Job::Resume(r) if told == Some(r.lane)) {
            ev.forget_history();
        }
        let mut reply = |r: &Reply| -> Result<(), String> {
            let mut s = serde_json::to_string(r).map_err(|e| e.to_string())?;
            s.push('\n');
            out.write_all(s.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("write a reply: {e}"))
        };
        match job {
            Job::Eval { inputs, learned } => {
                ev.know(&learned);
                for (i, h) in inputs.iter().enumerate() {
                    let bytes = analyzer::explain::parse_hex(h).map_err(|e| e.to_string())?;
                    let e = ev.eval(&bytes).map_err(|e| e.to_string())?;
                    reply(&Reply::Input {
                        i: i as u64,
                        g: GenKind::Mutate,
                        ran: analyzer::observe::hex(&e.ran),
                        adv: e.advance,
                        f: e.findings,
                        learned: ev.take_learned(),
                    })?;
                }
            }
            Job::Minimize(items) => {
                for (i, (h, signature)) in items.iter().enumerate() {
                    let bytes = analyzer::explain::parse_hex(h).map_err(|e| e.to_string())?;
                    ev.forget_history();
                    let f = minimize(ev.mode(), &bytes, signature, |cand| {
                        let e = ev.eval(cand).map_err(|e| e.to_string())?;
                        // Only a lane's workers hand theirs on.
                        ev.take_learned();
                        reply(&Reply::Tried)?;
                        Ok::<_, String>(Some(e.findings))
                    })?;
                    reply(&Reply::Minimized {
                        i: i as u64,
                        f: f.map(Box::new),
                    })?;
                }
            }
            Job::Lane(job) => {
                let corpus = hex_list(&job.corpus);
                let templates = hex_list(&job.templates);
                run_lane(
                    ev,
                    &job,
                    Some(&[&job.learned]),
                    &templates,
                    &corpus,
                    &mut reply,
                )?;
            }
            Job::Resume(r) => {
                let Some(b) = base.lane.as_ref().filter(|b| b.job.lane == r.lane) else {
                    return Err(format!("a resumed lane {} it was not given", r.lane));
                };
                let job = LaneJob {
                    start: r.start,
                    count: r.count,
                    tunnel: r.tunnel,
                    ..b.job.clone()
                };
                let known: Option<&[&Learned]> = if told == Some(r.lane) {
                    ev.know(&r.learned);
                    None
                } else {
                    Some(&[&b.learned, &r.learned])
                };
                run_lane(ev, &job, known, &b.templates, &b.corpus, &mut reply)?;
            }
        }
        reply(&Reply::Done)?;
    }
    Ok(())
}

/// Runs a lane's inputs `job.start..job.start + job.count`, told first
/// what its earlier workers learned (`known`; `None`: `ev` knows that
/// and nothing else already).
fn run_lane(
    ev: &mut Evaluator,
    job: &LaneJob,
    known: Option<&[&Learned]>,
    templates: &[Vec<u8>],
    corpus: &[Vec<u8>],
    reply: &mut impl FnMut(&Reply) -> Result<(), String>,
) -> Result<(), String> {
    let mut tunnel = job.tunnel.clone();
    // A worker may have run another lane before: a lane starts from what
    // its own earlier workers learned alone.
    if let Some(known) = known {
        ev.forget_history();
        for k in known {
            ev.know(k);
        }
    }
    for index in job.start..job.start.saturating_add(job.count) {
        let Some((g, bytes)) = input_at(job, index, tunnel.as_ref(), ev.mode(), templates, corpus)
        else {
            break;
        };
        let e = ev
            .eval_with(
                &bytes,
                if g == GenKind::Tunnel {
                    Lengths::All
                } else {
                    Lengths::Unfound
                },
            )
            .map_err(|e| e.to_string())?;
        if g == GenKind::Tunnel {
            tunnel = tunnel.and_then(|t| t.next(e.advance));
        }
        reply(&Reply::Input {
            i: index,
            g,
            ran: analyzer::observe::hex(&e.ran),
            adv: e.advance,
            f: e.findings,
            learned: ev.take_learned(),
        })?;
    }
    Ok(())
}

/// The openers of engines by name: `unicorn`, `kvm`, and the fuzzer's
/// test engine `planted`.
pub fn openers(names: &[String]) -> Result<Vec<Opener>, String> {
    names
        .iter()
        .map(|n| -> Result<Opener, String> {
            match n.as_str() {
                crate::planted::NAME => Ok(Arc::new(|| {
                    crate::planted::Planted::open()
                        .map(|p| Box::new(p) as Box<dyn analyzer::engine::Engine>)
                })),
                other => {
                    let kind: analyzer::engine::EngineKind = other
                        .parse()
                        .map_err(|e: analyzer::engine::EngineError| e.to_string())?;
                    Ok(Arc::new(move || analyzer::engine::open(kind)))
                }
            }
        })
        .collect()
}

/// The evaluator the fork server holds for its children: opened, warmed
/// up over the whole matrix and parked ([`Evaluator::warm_up_full`],
/// [`Evaluator::park`]), so that every child, the first and each one after
/// a death, starts with the states booted, the images built and the
/// baselines measured, as a copy of the server's memory, instead of doing
/// that again in its first inputs (on Unicorn 1.8-2.5 ms a child). `None`
/// where it cannot be made (an engine does not open: each child then says
/// so), or where the process is left with another thread than its own
/// (`forkserver::serve` forks only with one): the children then open their
/// own, as they did before.
fn warmed(engines: &[String], mode: Mode, config: Config) -> Option<Evaluator> {
    let mut ev = Evaluator::new(openers(engines).ok()?, mode, config).ok()?;
    ev.warm_up_full().ok()?;
    ev.park();
    (crate::forkserver::threads() == Some(1)).then_some(ev)
}

/// The worker's main: `--engine a,b --mode M --config C`, then jobs on
/// stdin. Returns the process's exit status.
pub fn main(args: &[String]) -> i32 {
    let mut engines = Vec::new();
    let mut mode = None;
    let mut config = Config::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--engine" => engines = v.split(',').map(str::to_string).collect(),
            "--mode" => mode = v.parse::<Mode>().ok(),
            "--config" => match v.parse::<Config>() {
                Ok(c) => config = c,
                Err(e) => {
                    say!("popek fuzz worker: --config: {e}");
                    return 2;
                }
            },
            _ => {
                say!("popek fuzz worker: unknown argument {a}");
                return 2;
            }
        }
    }
    let Some(mode) = mode else {
        say!("popek fuzz worker: --mode is needed");
        return 2;
    };
    // What every child needs and starts no thread, made once: iced-x86's
    // tables and the names of its Codes.
    analyzer::catalog::make_tables(mode);
    let warmed = std::cell::RefCell::new(warmed(&engines, mode, config));
    let child = |base: &Base, ready: Option<crate::forkserver::Ready>| {
        // A child forked from a server that holds a warmed evaluator takes
        // its copy of it (the server's stays as it is).
        let ev = match warmed.borrow_mut().take() {
            Some(ev) => Ok(ev),
            None => openers(&engines)
                .and_then(|o| Evaluator::new(o, mode, config).map_err(|e| e.to_string())),
        };
        let mut ev = match ev {
            Ok(e) => e,
            Err(e) => {
                say!("popek fuzz worker: {e}");
                return 2;
            }
        };
        // A spare warms up before it says it is ready (see `forkserver`);
        // the first child goes straight to its job. An engine failure in
        // the warm-up is left to the inputs to show, and a death in it is
        // no input's: the server gives the job to a new child instead.
        let told = ready.and_then(|ready| {
            let _ = ev.warm_up();
            let told = base.tell(&mut ev);
            ready.signal();
            told
        });
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        match serve(&mut ev, base, told, stdin.lock(), stdout.lock()) {
            Ok(()) => 0,
            Err(e) => {
                say!("popek fuzz worker: {e}");
                3
            }
        }
    };
    crate::forkserver::serve(Base::default(), Base::take_in, child, |death| {
        let died = Reply::Died {
            status: death.status.to_string(),
            stderr: death.stderr.clone(),
            job: Some(death.job),
            resent: death.resent,
        };
        if let Ok(mut line) = serde_json::to_string(&died) {
            line.push('\n');
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(bytes: &[u8], signature: &str) -> Finding {
        let hex = analyzer::observe::hex(bytes);
        Finding {
            kind: crate::finding::Kind::EngineVsEngine,
            mode: "64".into(),
            cpl: Some(3),
            config: "umip=off".into(),
            bytes: hex.clone(),
            input: hex,
            decoder: crate::finding::Decoded {
                valid: true,
                length: bytes.len(),
                code: "X".into(),
                form: "x".into(),
            },
            engines: Default::default(),
            observed_length: None,
            observed_by: None,
            detail: String::new(),
            signature: signature.into(),
            reproduce: String::new(),
        }
    }

    #[test]
    fn minimize_drops_bytes_first_to_last_while_the_signature_stays() {
        // The signature stays while 01 c8 is in the input; a candidate
        // holding 01 90 cannot be evaluated (a worker would die on it).
        // In 16-bit code, where 01 90 takes a 2-byte displacement.
        let mut tried = Vec::new();
        let least = minimize(Mode::Real, &[0x66, 0x01, 0x90, 0xc8, 0x90], "S", |c| {
            tried.push(c.to_vec());
            if c.windows(2).any(|w| w == [0x01, 0x90]) {
                return Ok::<_, ()>(None);
            }
            let s = if c.windows(2).any(|w| w == [0x01, 0xc8]) {
                "S"
            } else {
                "T"
            };
            Ok(Some(vec![finding(c, "other"), finding(c, s)]))
        })
        .expect("no error");
        assert_eq!(least.map(|f| f.bytes), Some("01c8".into()));
        // The prefix first; then 01, 90 (01 c8: kept), then from the start.
        assert_eq!(tried[0], vec![0x01, 0x90, 0xc8, 0x90]);
        assert_eq!(tried[2], vec![0x66, 0x01, 0xc8, 0x90]);
        // Nothing dropped keeps it: no finding.
        let none = minimize(Mode::Real, &[0x01, 0xc8], "S", |_| {
            Ok::<_, ()>(Some(Vec::new()))
        });
        assert_eq!(none, Ok(None));
    }

    #[test]
    fn a_job_of_borrowed_parts_is_sent_as_the_job() {
        let job = LaneJob {
            gens: Generators::All,
            lane: 2,
            seed: 9,
            start: 5,
            count: 7,
            tunnel: Some(gen::Tunnel::start(0x0f, 0x10)),
            corpus: vec!["90".into()],
            templates: vec!["0f31".into(), "9c".into()],
            learned: Learned {
                lengths: [("s".to_string(), "62".to_string())].into(),
                ..Learned::default()
            },
        };
        assert_eq!(
            serde_json::to_string(&JobRef::Lane(&job)).expect("json"),
            serde_json::to_string(&Job::Lane(job.clone())).expect("json")
        );
        let resume = Resume {
            lane: 2,
            start: 6,
            count: 6,
            tunnel: job.tunnel.clone(),
            learned: job.learned.clone(),
        };
        assert_eq!(
            serde_json::to_string(&JobRef::Resume(&resume)).expect("json"),
            serde_json::to_string(&Job::Resume(resume.clone())).expect("json")
        );
    }

    fn replies(ev: &mut Evaluator, job: &Job) -> Vec<String> {
        replies_in(ev, &Base::default(), None, job)
    }

    /// The replies of a child that has `base` (and was told `told`).
    fn replies_in(ev: &mut Evaluator, base: &Base, told: Option<u32>, job: &Job) -> Vec<String> {
        let line = serde_json::to_string(job).expect("json");
        let mut out = Vec::new();
        serve(ev, base, told, format!("{line}\n").as_bytes(), &mut out).expect("serve");
        let mut lines: Vec<String> = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(lines.pop().as_deref(), Some(r#""Done""#));
        lines
    }

    /// A lane split where a worker died (the next worker told what the
    /// first learned, from the next index on) replies as one worker does,
    /// byte for byte, what was learned included: the told worker does not
    /// learn it again.
    #[test]
    fn a_lane_split_between_two_workers_replies_as_one_worker() {
        let open = || {
            let o = openers(&["unicorn".to_string()]).expect("unicorn");
            Evaluator::new(o, Mode::Long64, Config::UMIP_OFF).expect("evaluator")
        };
        // Mutations of POPF (a violator the catalog reports: catalog
        // verdicts to learn) and LOCK RDTSC (sensitive at a quick look,
        // no violator over the whole matrix: verdicts of no violation).
        // Structured inputs would hold LOCK BT with a register, which
        // aborts Unicorn, and this process with it.
        let job = LaneJob {
            gens: Generators::One(GenKind::Mutate),
            lane: 0,
            seed: 3,
            start: 0,
            count: 400,
            tunnel: None,
            corpus: vec!["9d".into(), "f00f31".into()],
            templates: gen::templates(Mode::Long64)
                .iter()
                .map(|t| analyzer::observe::hex(t))
                .collect(),
            learned: Learned::default(),
        };
        let whole = replies(&mut open(), &Job::Lane(job.clone()));
        assert_eq!(whole.len(), 400);
        let split = 200;
        let first = replies(
            &mut open(),
            &Job::Lane(LaneJob {
                count: split,
                ..job.clone()
            }),
        );
        // As the campaign resumes a lane: told what the first learned.
        let mut learned = Learned::default();
        for line in &first {
            let Ok(Reply::Input { learned: l, .. }) = serde_json::from_str(line) else {
                panic!("{line}");
            };
            learned.absorb(l);
        }
        assert!(
            !learned.catalog.is_empty() && !learned.clean.is_empty(),
            "{learned:?}"
        );
        let second = LaneJob {
            start: split,
            count: job.count - split,
            ..job.clone()
        };
        let told = replies(
            &mut open(),
            &Job::Lane(LaneJob {
                learned: learned.clone(),
                ..second.clone()
            }),
        );
        assert_eq!([&first[..], &told].concat(), whole);
        // Untold, the second worker learns again what the first had.
        let untold = replies(&mut open(), &Job::Lane(second.clone()));
        assert_ne!(untold, whole[split as usize..]);

        // As a worker's next child resumes it: the lane as the server
        // took it in from the first job's line, then a `Resume` with what
        // was learned since.
        let mut base = Base::default();
        let first_job = Job::Lane(LaneJob {
            count: split,
            ..job.clone()
        });
        assert!(base.take_in(&serde_json::to_string(&first_job).expect("json")));
        let resume = |learned: &Learned| {
            Job::Resume(Resume {
                lane: 0,
                start: split,
                count: job.count - split,
                tunnel: None,
                learned: learned.clone(),
            })
        };
        // A child forked for the line, and a spare told the lane before.
        assert_eq!(
            replies_in(&mut open(), &base, None, &resume(&learned)),
            told
        );
        let mut spare = open();
        spare.warm_up().expect("warm up");
        assert_eq!(base.tell(&mut spare), Some(0));
        assert_eq!(
            replies_in(&mut spare, &base, Some(0), &resume(&learned)),
            told
        );
        // A child forked after the resume was taken in has what it told.
        assert!(!base.take_in(&serde_json::to_string(&resume(&learned)).expect("json")));
        let nothing_new = Learned::default();
        assert_eq!(
            replies_in(&mut open(), &base, None, &resume(&nothing_new)),
            told
        );
        let mut spare = open();
        assert_eq!(base.tell(&mut spare), Some(0));
        assert_eq!(
            replies_in(&mut spare, &base, Some(0), &resume(&nothing_new)),
            told
        );
        // Another lane's job makes spares stale; a resume of a lane the
        // child does not have is refused, not run.
        assert!(base.take_in(
            &serde_json::to_string(&Job::Lane(LaneJob { lane: 1, ..second })).expect("json")
        ));
        let mut out = Vec::new();
        let line = serde_json::to_string(&resume(&learned)).expect("json");
        let e = serve(
            &mut open(),
            &base,
            None,
            format!("{line}\n").as_bytes(),
            &mut out,
        );
        assert_eq!(e, Err("a resumed lane 0 it was not given".into()));
        assert!(out.is_empty());
    }

    #[test]
    fn a_minimize_job_gives_what_one_job_per_candidate_gives() {
        // SS LOCK MOV ECX, CS: Unicorn runs it, and MOV from CS is
        // sensitive (the ring-compressed state's CS differs).
        let input = "36f08cc9";
        let signature = "pg|unicorn|INVALID|OneByte/8c|sensitive-unprivileged";
        let open = || {
            let o = openers(&["unicorn".to_string()]).expect("unicorn");
            Evaluator::new(o, Mode::Long64, Config::UMIP_OFF).expect("evaluator")
        };
        let mut ev = open();
        let job = serde_json::to_string(&Job::Minimize(vec![(input.into(), signature.into())]))
            .expect("json");
        let mut out = Vec::new();
        serve(
            &mut ev,
            &Base::default(),
            None,
            format!("{job}\n").as_bytes(),
            &mut out,
        )
        .expect("serve");
        let replies: Vec<Reply> = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("reply"))
            .collect();
        let mut replies: Vec<Reply> = replies;
        replies.retain(|r| !matches!(r, Reply::Tried));
        let Some(Reply::Minimized { i: 0, f: Some(got) }) = replies.first() else {
            panic!("{replies:?}");
        };
        let got: &Finding = got;
        assert!(matches!(replies.last(), Some(Reply::Done)));
        assert_eq!(got.bytes, "f08cc9");
        // One candidate at a time, in a fresh evaluator.
        let mut ev = open();
        let bytes = analyzer::explain::parse_hex(input).expect("hex");
        let one_by_one = minimize(Mode::Long64, &bytes, signature, |c| {
            ev.eval(c)
                .map(|e| Some(e.findings))
                .map_err(|e| e.to_string())
        })
        .expect("eval");
        assert_eq!(one_by_one.as_ref(), Some(got));
    }
}
