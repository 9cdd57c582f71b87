//! One input through the probe layer and the oracles: the bytes become an
//! entry ([`analyzer::explain::raw_entry`]), every engine's [`Prober`] runs
//! it in the base state at both CPLs (a quick look; where the mode has
//! paging, the base state with the data page not executable, in which the
//! page-boundary length is measured too), and the oracles turn
//! the runs into findings; an input that looks sensitive at CPL 3 is run
//! through the whole matrix and judged as `scan` judges ([`Prober::judge`]).
//! No engine or observation code of its own.

use crate::finding::{input_order, Decoded, Finding, Kind};
use crate::gen;
use analyzer::catalog::{self, Entry};
use analyzer::machine::{GuestImage, Variant};
use analyzer::mode::{Config, Mode};
use analyzer::observe::{Outcome, Side};
use analyzer::probe::{diff_results, GuestHarness, Matrix, Opener, ProbeError, Prober, Run};
use serde::{Deserialize, Serialize};
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// An input as it ran, and what the oracles found.
#[derive(Clone, Debug)]
pub struct Evaluated {
    /// The bytes that ran: the decoder's first instruction of the input.
    pub ran: Vec<u8>,
    /// The length the tunnel advances by: the first engine's observed
    /// length where it was measured or shown (always for tunnel inputs),
    /// else the decoder's.
    pub advance: usize,
    pub findings: Vec<Finding>,
}

/// Which inputs' lengths an evaluation measures by the page boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lengths {
    /// Where an oracle compares them or a finding carries them.
    Needed,
    /// Every input's that its run does not show (the tunnel advances by
    /// it).
    All,
    /// As `Needed`, in a lane: a length the decoder and an engine may part
    /// on (the instruction raised #UD) is not measured where its finding
    /// is one this evaluator (or an earlier one of the lane, see
    /// [`Evaluator::know`]) found already for an input no greater, and
    /// the input has no other finding. A campaign keeps one finding per
    /// signature, that of the least input and, among equal inputs, the
    /// first found: it would drop this one (see
    /// [`crate::finding::dedupe`]). What is lost is only what the
    /// measurement's own runs could have shown besides (were one to kill
    /// the worker, its crash finding), runs that stop at the same #UD or
    /// at the fetch before it.
    Unfound,
}

/// Whether the catalog's scan reports a Code as a violator on an engine
/// (by its index), and its class (`None`: no such Code in the catalog).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogVerdict {
    pub engine: usize,
    pub code: String,
    pub verdict: Option<(bool, String)>,
}

/// A whole-matrix verdict of no violation: the engine (by index), what a
/// P&G finding would name (the Code, or `INVALID|` and the opcode-map
/// cell), and the quick look's signature. Inputs with the same are not
/// judged again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Clean {
    pub engine: usize,
    pub what: String,
    pub quick: String,
}

/// What an evaluator learned that a later evaluator of the same lane (the
/// next worker, after a death) uses instead of measuring it again: a lane
/// then finds what one worker that never died would have found, but for
/// what the input it died on would have taught.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    /// Catalog verdicts: the catalog's scan of a Code is the same whoever
    /// runs it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalog: Vec<CatalogVerdict>,
    /// Whole-matrix verdicts of no violation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clean: Vec<Clean>,
    /// Length findings found in [`Lengths::Unfound`] evaluations: the
    /// signature to the least input (hex) found with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lengths: BTreeMap<String, String>,
}

impl Learned {
    pub fn is_empty(&self) -> bool {
        self.catalog.is_empty() && self.clean.is_empty() && self.lengths.is_empty()
    }

    /// Adds what `more` holds (of a length signature, the least input).
    /// The catalog and clean verdicts are appended as they come, not
    /// deduplicated: a lane's evaluators are told what the earlier ones
    /// learned and never learn it again, so a lane's replies hold each
    /// once (and [`Evaluator::know`] takes a repeat as the same verdict).
    pub fn absorb(&mut self, more: Learned) {
        self.catalog.extend(more.catalog);
        self.clean.extend(more.clean);
        for (sig, input) in more.lengths {
            let known = self.lengths.entry(sig).or_insert_with(|| input.clone());
            if input_order(&input) < input_order(known) {
                *known = input;
            }
        }
    }
}

/// Pages an evaluating thread keeps made ([`analyzer::page::Page::keep_made`]):
/// an input's pages (its code page, the same on both sides and in most
/// states, and its placements at the page boundary) are seldom another
/// input's, and a worker's child that kept the scan's 1,024 touched 4 MB
/// more in each life. Structured 40,000 inputs, one worker, on an AMD EPYC
/// host: 0.86-0.94 times the time (three sets of four or five rounds
/// alternating), 55,000 page faults against 80,000.
pub const PAGES_KEPT: usize = 64;

/// The engines, the states, and what was judged already.
pub struct Evaluator {
    mode: Mode,
    config: Config,
    probers: Vec<Prober>,
    quick: Matrix,
    /// The quick look's image where it is fenced for the page-boundary
    /// length (`None`: the mode has no paging).
    fenced: Option<Arc<GuestImage>>,
    full: Option<Matrix>,
    /// Whole-matrix verdicts of no violation.
    escalated: HashSet<Clean>,
    /// (engine, code) to whether the catalog's scan of that code reports a
    /// violator (`None`: the catalog has no such code).
    catalog_pg: HashMap<(usize, String), Option<(bool, String)>>,
    /// What this evaluator learned and has not yet handed out
    /// ([`Evaluator::take_learned`]).
    learned: Learned,
    /// Signature of each decoder-vs-engine length finding made in
    /// [`Lengths::Unfound`] evaluations (here or, as told, by an earlier
    /// evaluator of the lane), to its least input.
    lengths_found: HashMap<String, Vec<u8>>,
}

/// Digits and hex numbers written `#`, so that outcomes differing only in
/// an address or a count share a signature.
fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_num = false;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c == '0' && b.get(i + 1) == Some(&b'x') {
            if !in_num {
                out.push('#');
            }
            in_num = true;
            i += 2;
            continue;
        }
        if c.is_ascii_digit() || (in_num && c.is_ascii_hexdigit()) {
            if !in_num {
                out.push('#');
            }
            in_num = true;
        } else {
            in_num = false;
            out.push(c);
        }
        i += 1;
    }
    out
}

fn cpl_of(side: Side) -> u8 {
    match side {
        Side::Supervisor => 0,
        Side::User => 3,
    }
}

fn engine_level(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::EngineError(_) | Outcome::NotSupported(_) | Outcome::Hang
    )
}

impl Evaluator {
    /// Opens every engine and builds the base state of `mode` in `config`.
    /// The thread keeps few pages made ([`PAGES_KEPT`]), and goes on so
    /// after the evaluator is dropped: the setting is the thread's, and
    /// evaluators of one thread may overlap and end in any order, so none
    /// of them could tell which number to set again. A thread that scans
    /// the catalog after fuzzing sets its own.
    pub fn new(engines: Vec<Opener>, mode: Mode, config: Config) -> Result<Evaluator, ProbeError> {
        analyzer::page::Page::keep_made(PAGES_KEPT);
        let probers = engines
            .into_iter()
            .map(Prober::open)
            .collect::<Result<Vec<_>, _>>()?;
        // The quick look runs in the fenced base state where the mode has
        // paging: the base state with the data page not executable, so
        // that the length measurement runs in the same image (an engine
        // switching images is slower: Unicorn flushes its translations).
        let state = analyzer::length::fenced_variant(mode, &config)
            .unwrap_or_else(|| Variant::base(&config));
        let image = Arc::new(analyzer::probe::build_one(
            &GuestHarness,
            mode,
            config,
            state,
        )?);
        let fenced = image.is_fenced().then(|| image.clone());
        let quick = Matrix {
            mode,
            config,
            images: vec![(state, image)],
        };
        Ok(Evaluator {
            mode,
            config,
            probers,
            quick,
            fenced,
            full: None,
            escalated: HashSet::new(),
            catalog_pg: HashMap::new(),
            learned: Learned::default(),
            lengths_found: HashMap::new(),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Evaluates a NOP, which no oracle finds anything in, so that the
    /// first input finds the engines warm: a process's first evaluation
    /// loads the base state into the engines, translates the harness and
    /// touches their memory (on Unicorn about 2 ms, against 0.2 ms for the
    /// next). What it may have judged or learned is forgotten.
    pub fn warm_up(&mut self) -> Result<(), ProbeError> {
        let done = self.eval(&[0x90]).map(drop);
        self.forget_history();
        self.learned = Learned::default();
        done
    }

    /// [`Evaluator::warm_up`], and a NOP through the whole matrix before
    /// it: every state the matrix has is built, booted and measured (its
    /// baseline) on every engine, which a first input that needs the whole
    /// matrix does otherwise (on Unicorn about 2 ms). What the fork server
    /// does once, for every child to have (see [`crate::worker::main`]).
    pub fn warm_up_full(&mut self) -> Result<(), ProbeError> {
        let nop = analyzer::explain::raw_entry(&[0x90], self.mode);
        self.full()?;
        let matrix = self.full.as_ref().expect("built");
        for p in &mut self.probers {
            p.probe(matrix, &nop)?;
        }
        self.warm_up()
    }

    /// Readies the evaluator to be carried into a child of a fork
    /// ([`Prober::park`]): no thread of its engines is left.
    pub fn park(&mut self) {
        for p in &mut self.probers {
            p.park();
        }
    }

    /// What was learned since the last call, for a later worker of the
    /// same lane ([`Evaluator::know`]).
    pub fn take_learned(&mut self) -> Learned {
        std::mem::take(&mut self.learned)
    }

    /// Takes what earlier workers of the lane learned (with the same
    /// engines, mode and configuration), so that it is not measured again.
    pub fn know(&mut self, known: &Learned) {
        for k in &known.catalog {
            self.catalog_pg
                .entry((k.engine, k.code.clone()))
                .or_insert_with(|| k.verdict.clone());
        }
        self.escalated.extend(known.clean.iter().cloned());
        for (sig, hex) in &known.lengths {
            let Ok(input) = analyzer::explain::parse_hex(hex) else {
                continue;
            };
            let least = self
                .lengths_found
                .entry(sig.clone())
                .or_insert_with(|| input.clone());
            if input_order(&input) < input_order(least) {
                *least = input;
            }
        }
    }

    /// Forgets what earlier inputs left: the whole-matrix verdicts of no
    /// violation kept by Code (or cell) and quick look, and the length
    /// findings found, so that what follows does not depend on the inputs
    /// before it (each finding's minimization starts so).
    pub fn forget_history(&mut self) {
        self.escalated.clear();
        self.lengths_found.clear();
    }

    /// The engines' names, in order.
    pub fn engines(&self) -> Vec<String> {
        self.probers.iter().map(|p| p.name().to_string()).collect()
    }

    fn full(&mut self) -> Result<&Matrix, ProbeError> {
        if self.full.is_none() {
            self.full = Some(Matrix::build(&GuestHarness, self.mode, self.config)?);
        }
        Ok(self.full.as_ref().expect("built above"))
    }

    /// Runs one input and applies every oracle, measuring its length by
    /// the page boundary where the decoder and the engine may part: where
    /// the engine raised #UD, or where the decoder finds no instruction and
    /// an oracle found something (the length goes with the findings).
    pub fn eval(&mut self, input: &[u8]) -> Result<Evaluated, ProbeError> {
        self.eval_with(input, Lengths::Needed)
    }

    /// [`Evaluator::eval`], measuring the lengths `lengths` tells.
    pub fn eval_with(&mut self, input: &[u8], wanted: Lengths) -> Result<Evaluated, ProbeError> {
        let all_lengths = wanted == Lengths::All;
        let input = if input.is_empty() { &[0x90][..] } else { input };
        let first = gen::decode(self.mode, input);
        let (len, valid) = (first.len, first.valid);
        let (undefined_flags, cl_count) = (first.undefined_flags, first.cl_count);
        let ran = input[..len].to_vec();
        // Bytes that end inside an instruction are not run: the engine
        // would read the harness's bytes after them.
        if first.truncated {
            return Ok(Evaluated {
                ran,
                advance: len,
                findings: Vec::new(),
            });
        }
        let entry = analyzer::explain::raw_entry(&ran, self.mode);
        let mut all_runs = Vec::with_capacity(self.probers.len());
        for p in &mut self.probers {
            let runs = p
                .probe_states(&self.quick, &[&entry], false)?
                .pop()
                .unwrap_or_default();
            all_runs.push(runs);
        }
        // Each engine's length of the instruction, on the side sandsifter
        // looks at (CPL 3; CPL 0 in real mode).
        // A straight-line instruction that ended at the sentinel right
        // after the decoder's length shows the engine's length (a store
        // that rewrote the bytes after it would not end there).
        let straight = valid && entry.doc.flow_control == "Next";
        let mut lengths: Vec<Option<(usize, &'static str)>> = vec![None; all_runs.len()];
        // The whole input as an entry, made once, when an engine measures.
        let mut whole = None;
        // What a finding carries is made only when an oracle finds one.
        let names = self.engines();
        let (mode, config) = (self.mode, self.config);
        let position_cell = OnceCell::new();
        let position = || {
            position_cell
                .get_or_init(|| position_name(mode, &ran))
                .clone()
        };
        let length_cpl = cpl_of(self.length_side());
        // A finding's signature is its kind's name, then `sig`.
        let signature = |kind: Kind, sig: &str| format!("{}|{sig}", kind.name());
        let length_sig = |name: &str| {
            format!(
                "{name}|cpl{length_cpl}|{}|length|{}",
                position(),
                entry.code
            )
        };
        let length_signature = |name: &str| signature(Kind::DecoderVsEngine, &length_sig(name));
        // Where the decoder finds no instruction, no oracle compares an
        // engine's length with the decoder's: the first engine's length
        // only goes with the input's findings (`observed_length`). So it
        // is measured once an oracle has found something, and the other
        // engines' not at all, unless every length is asked for (the
        // tunnel advances by it). In a lane, so is the length of a #UD
        // whose finding was found already (`Lengths::Unfound`).
        let deferred = !valid && !all_lengths;
        let mut unmeasured = Vec::new();
        for (i, runs) in all_runs.iter().enumerate().filter(|_| !deferred) {
            if wanted == Lengths::Unfound && self.length_side_raised_ud(runs) {
                let known = self.lengths_found.get(&length_signature(&names[i]));
                if known.is_some_and(|k| input_order(k) <= input_order(&ran)) {
                    unmeasured.push(i);
                    continue;
                }
            }
            let measured = self.observed_length(
                i,
                (input, &mut whole),
                (len, valid),
                straight,
                all_lengths,
                runs,
            )?;
            lengths[i] = measured;
        }
        let mut observed = lengths.first().copied().flatten();
        let base_cell = OnceCell::new();
        let base = || {
            base_cell
                .get_or_init(|| {
                    let mut outcomes: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
                    for (name, runs) in names.iter().zip(&all_runs) {
                        let m = outcomes.entry(name.clone()).or_default();
                        for r in runs {
                            m.insert(format!("cpl{}", cpl_of(r.side)), r.obs.outcome.short());
                        }
                    }
                    Finding {
                        kind: Kind::EngineFailure,
                        mode: mode.name().into(),
                        cpl: None,
                        config: config.name(),
                        bytes: analyzer::observe::hex(&ran),
                        input: analyzer::observe::hex(&ran),
                        decoder: Decoded {
                            valid,
                            length: len,
                            code: entry.code.clone(),
                            form: entry.form.clone(),
                        },
                        engines: outcomes,
                        observed_length: observed.map(|(n, _)| n as u64),
                        observed_by: observed.map(|(_, by)| by.to_string()),
                        detail: String::new(),
                        signature: String::new(),
                        reproduce: reproduce(mode, &config, &names, &ran),
                    }
                })
                .clone()
        };
        let mut found = Vec::new();
        let finding = |kind: Kind, cpl: Option<u8>, detail: String, sig: &str| Finding {
            kind,
            cpl,
            detail,
            signature: signature(kind, sig),
            ..base()
        };
        let mut add = |kind: Kind, cpl: Option<u8>, detail: String, sig: String| {
            found.push(finding(kind, cpl, detail, &sig));
        };
        // Engine failures and the decoder against each engine.
        for (name, runs) in names.iter().zip(&all_runs) {
            for r in runs {
                let c = cpl_of(r.side);
                let o = &r.obs.outcome;
                if matches!(o, Outcome::EngineError(_) | Outcome::Hang) {
                    add(
                        Kind::EngineFailure,
                        Some(c),
                        format!("{name} at CPL {c}: {}", o.short()),
                        format!("{name}|cpl{c}|{}", normalize(&o.short())),
                    );
                    continue;
                }
                if engine_level(o) {
                    continue;
                }
                let ud = matches!(o, Outcome::Trap { vector: 6, .. });
                if !valid && !ud {
                    add(
                        Kind::DecoderVsEngine,
                        Some(c),
                        format!(
                            "the decoder finds no instruction; {name} at CPL {c}: {}",
                            o.short()
                        ),
                        format!(
                            "{name}|cpl{c}|{}|invalid|{}",
                            position(),
                            normalize(&o.short())
                        ),
                    );
                }
            }
        }
        // The decoder's length against each engine's.
        let length_detail = |name: &str, n: usize, by: &str| {
            format!(
                "the decoder reads {len} bytes ({}); {name} at CPL {length_cpl} fetches {n} ({by})",
                entry.form
            )
        };
        for (name, measured) in names.iter().zip(&lengths) {
            let Some((n, by)) = *measured else { continue };
            if valid && n != len {
                add(
                    Kind::DecoderVsEngine,
                    Some(length_cpl),
                    length_detail(name, n, by),
                    length_sig(name),
                );
            }
        }
        // Engine against engine, side by side. Each engine's runs made
        // again (to tell results that change from run to run), made once.
        let mut again: Vec<Option<Vec<Run>>> = all_runs.iter().map(|_| None).collect();
        if let Some((first, rest)) = all_runs.split_first() {
            for (k, runs) in rest.iter().enumerate() {
                let other = &names[k + 1];
                for a in first {
                    let Some(b) = runs.iter().find(|b| b.side == a.side) else {
                        continue;
                    };
                    let (oa, ob) = (&a.obs.outcome, &b.obs.outcome);
                    if engine_level(oa) || engine_level(ob) {
                        continue;
                    }
                    let c = cpl_of(a.side);
                    if !oa.agrees(ob) {
                        add(
                            Kind::EngineVsEngine,
                            Some(c),
                            format!(
                                "at CPL {c}: {}: {}, {other}: {}",
                                names[0],
                                oa.short(),
                                ob.short()
                            ),
                            format!(
                                "cpl{c}|{}|{}|{}",
                                position(),
                                normalize(&oa.short()),
                                normalize(&ob.short())
                            ),
                        );
                    } else if oa.is_completed() {
                        // Flags the instruction leaves undefined may differ
                        // between engines (and CPUs): no finding.
                        // A shift by CL of 0 changes no flag at all.
                        let undefined = match &a.start {
                            Some(s) if cl_count && s.gprs[1] & 0x1F == 0 => 0,
                            _ => undefined_flags,
                        };
                        let only_undefined = match (&a.obs.user, &b.obs.user) {
                            (Some(x), Some(y)) => (x.flags ^ y.flags) & !undefined == 0,
                            _ => false,
                        };
                        let d: Vec<String> = diff_results(a, b)
                            .into_iter()
                            .filter(|x| !(only_undefined && x.starts_with("flags ")))
                            .collect();
                        // A result that changes from one run to the next
                        // on either engine (a time stamp, a random number)
                        // is no difference between engines.
                        let vary = !d.is_empty()
                            && self.results_vary(&entry, &mut again, &[(0, a), (k + 1, b)])?;
                        if let (Some(first_diff), false) = (d.first(), vary) {
                            let part: String = first_diff
                                .chars()
                                .take_while(|ch| ch.is_ascii_alphanumeric())
                                .collect();
                            add(
                                Kind::EngineVsEngine,
                                Some(c),
                                format!(
                                    "at CPL {c} both complete, results differ ({} vs {other}): {first_diff}",
                                    names[0]
                                ),
                                format!("cpl{c}|{}|results|{part}", position()),
                            );
                        }
                    }
                }
            }
        }
        // P&G: sensitive at CPL 3 and not trapping there, judged over the
        // whole matrix, and not what the catalog's scan reports.
        for (i, runs) in all_runs.iter().enumerate() {
            let Some(user) = runs.iter().find(|r| r.side == Side::User) else {
                continue;
            };
            let sup = runs.iter().find(|r| r.side == Side::Supervisor);
            let o = &user.obs.outcome;
            if o.is_trap_like() || engine_level(o) || o.is_memory_trap() {
                continue;
            }
            let changed = user.changed_r();
            let differs = sup
                .is_some_and(|s| s.obs.outcome.is_completed() && !diff_results(s, user).is_empty());
            if changed.is_empty() && !differs {
                continue;
            }
            // What the P&G finding names: the Code, or for an input the
            // decoder finds no instruction in, its opcode-map cell (so
            // LOCK PUSH CS and LOCK PUSH DS are two instructions here).
            let what = if valid {
                entry.code.clone()
            } else {
                format!("{}|{}", entry.code, position())
            };
            // A whole-matrix verdict of no violation is reused for inputs
            // of the same `what` and quick look; a violation is only ever
            // the input's own, judged on its own runs, with its evidence.
            let key = Clean {
                engine: i,
                what: what.clone(),
                quick: quick_signature(runs),
            };
            if self.escalated.contains(&key) {
                continue;
            }
            let known = self.catalog_verdict(i, &entry.code)?;
            if let Some((true, _)) = known {
                continue;
            }
            let (violates, class, evidence) = self.judge_full(i, &entry)?;
            if !violates {
                self.learned.clean.push(key.clone());
                self.escalated.insert(key);
                continue;
            }
            let name = &names[i];
            let why = match &known {
                Some((_, cclass)) => format!("the catalog's {} is {cclass}", entry.code),
                None => format!("{} is not in the catalog", entry.code),
            };
            found.push(finding(
                Kind::Pg,
                Some(3),
                format!("{name}: {class} over the whole matrix ({why}): {evidence}"),
                &format!("{name}|{what}|{class}"),
            ));
        }
        // The lengths left unmeasured go with the findings there are.
        if !found.is_empty() && (deferred || !unmeasured.is_empty()) {
            let later: Vec<usize> = if deferred { vec![0] } else { unmeasured };
            let mut measured = Vec::new();
            for i in later {
                let Some(runs) = all_runs.get(i) else {
                    continue;
                };
                let m = self.observed_length(
                    i,
                    (input, &mut whole),
                    (len, valid),
                    straight,
                    false,
                    runs,
                )?;
                measured.push((i, m));
            }
            for &(i, m) in &measured {
                if let Some((n, by)) = m.filter(|&(n, _)| valid && n != len) {
                    found.push(finding(
                        Kind::DecoderVsEngine,
                        Some(length_cpl),
                        length_detail(&names[i], n, by),
                        &length_sig(&names[i]),
                    ));
                }
            }
            if let Some(&(_, m)) = measured.iter().find(|(i, _)| *i == 0) {
                observed = m;
            }
            for f in &mut found {
                f.observed_length = observed.map(|(n, _)| n as u64);
                f.observed_by = observed.map(|(_, by)| by.to_string());
            }
        }
        if wanted == Lengths::Unfound && found.iter().any(|f| f.kind == Kind::DecoderVsEngine) {
            for name in &names {
                let sig = length_signature(name);
                if !found.iter().any(|f| f.signature == sig) {
                    continue;
                }
                let least = self
                    .lengths_found
                    .get(&sig)
                    .is_none_or(|k| input_order(&ran) < input_order(k));
                if least {
                    self.lengths_found.insert(sig.clone(), ran.clone());
                    self.learned
                        .lengths
                        .insert(sig, analyzer::observe::hex(&ran));
                }
            }
        }
        Ok(Evaluated {
            ran,
            advance: observed.map_or(len, |(n, _)| n),
            findings: found,
        })
    }

    /// Whether a completed quick-look run of `entry`, made again on its
    /// engine, ends with another outcome or other results than `run` did,
    /// for any of the (engine, run) pairs; `again` keeps each engine's
    /// runs made again (both sides), so that none is made twice.
    fn results_vary(
        &mut self,
        entry: &Entry,
        again: &mut [Option<Vec<Run>>],
        runs: &[(usize, &Run)],
    ) -> Result<bool, ProbeError> {
        for &(i, run) in runs {
            if again[i].is_none() {
                let made = self.probers[i]
                    .probe_states(&self.quick, &[entry], false)?
                    .pop()
                    .unwrap_or_default();
                again[i] = Some(made);
            }
            let made = again[i].as_deref().unwrap_or_default();
            let Some(r) = made.iter().find(|r| r.side == run.side) else {
                continue;
            };
            if !r.obs.outcome.agrees(&run.obs.outcome) || !diff_results(run, r).is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the instruction itself raised #UD on the side lengths are
    /// measured on (where `observed_length` measures a decoder-valid
    /// input's length, by runs that stop at the same #UD or at the fetch
    /// before it).
    fn length_side_raised_ud(&self, runs: &[Run]) -> bool {
        let side = self.length_side();
        runs.iter().find(|r| r.side == side).is_some_and(|r| {
            matches!(r.obs.outcome, Outcome::Trap { vector: 6, rip, .. }
                if rip == analyzer::machine::TEST_RIP)
        })
    }

    /// The side lengths are measured on: CPL 3, or CPL 0 in real mode.
    fn length_side(&self) -> Side {
        if self.quick.images[0].1.user.is_some() {
            Side::User
        } else {
            Side::Supervisor
        }
    }

    /// Engine `i`'s length of the instruction at the start of `input`
    /// (`len` by the decoder, which finds it `valid` or not): shown by its
    /// run where a straight-line instruction completed at the sentinel
    /// right after it, else measured by the page-boundary method on the
    /// whole input, when `all` or where the decoder finds no instruction
    /// or the run raised #UD. `None` where neither tells.
    fn observed_length(
        &mut self,
        i: usize,
        (input, whole): (&[u8], &mut Option<Entry>),
        (len, valid): (usize, bool),
        straight: bool,
        all: bool,
        runs: &[Run],
    ) -> Result<Option<(usize, &'static str)>, ProbeError> {
        let side = self.length_side();
        let run = runs.iter().find(|r| r.side == side);
        if let Some(r) = run {
            if straight
                && matches!(
                    r.obs.outcome,
                    Outcome::Completed {
                        at_sentinel: true,
                        ..
                    }
                )
            {
                return Ok(Some((len, "run")));
            }
            if r.obs.outcome.is_engine_level() {
                return Ok(None);
            }
            let ud = matches!(r.obs.outcome, Outcome::Trap { vector: 6, .. });
            if !(all || !valid || ud) {
                return Ok(None);
            }
        }
        let Some(fenced) = &self.fenced else {
            return Ok(None);
        };
        let mode = self.mode;
        let whole = whole.get_or_insert_with(|| analyzer::explain::raw_entry(input, mode));
        let l = match run.map(|r| &r.obs.outcome) {
            // The instruction raised #UD itself: its length is most often
            // where the engine stopped decoding, soon after the prefixes
            // (Unicorn raises #UD for EVEX at its first byte, for much of
            // VEX at its second), so those lengths are tried before the
            // decoder's. A #UD ends the fetch: no k past the length
            // crosses, so any order of guesses finds the same length as
            // the decoder's length alone would, provided the length is
            // within the bytes that ran (beyond them the run saw the
            // sentinel, not the input's bytes, and another search finds
            // what the decoder's length alone does).
            Some(Outcome::Trap { vector: 6, rip, .. }) if *rip == analyzer::machine::TEST_RIP => {
                let p = gen::prefix_count(mode, input);
                self.probers[i].fetch_length_guessing(
                    fenced,
                    side,
                    whole,
                    (&[p + 1, p + 2], len),
                    |l| l.bytes().is_some_and(|n| n <= len),
                )?
            }
            _ => self.probers[i].fetch_length(fenced, side, whole, len)?,
        };
        Ok(l.bytes().map(|n| (n, "page-boundary")))
    }

    /// The whole matrix's verdict of an entry on engine `i`.
    fn judge_full(
        &mut self,
        i: usize,
        entry: &Entry,
    ) -> Result<(bool, String, String), ProbeError> {
        self.full()?;
        let matrix = self.full.as_ref().expect("built");
        let p = &mut self.probers[i];
        let runs = p.probe(matrix, entry)?;
        let rec = p.judge(matrix, entry, &runs);
        let evidence = rec
            .verdict
            .evidence
            .iter()
            .find(|e| e.kind != analyzer::classify::EvidenceKind::NotPrivileged)
            .map(|e| e.to_string())
            .unwrap_or_default();
        Ok((
            rec.verdict.violates_pg,
            rec.verdict.class.name().to_string(),
            evidence,
        ))
    }

    /// Whether the catalog's scan reports `code` as a violator on engine
    /// `i`, and its class (`None`: no such code in the catalog).
    fn catalog_verdict(
        &mut self,
        i: usize,
        code: &str,
    ) -> Result<Option<(bool, String)>, ProbeError> {
        let key = (i, code.to_string());
        if let Some(v) = self.catalog_pg.get(&key) {
            return Ok(v.clone());
        }
        let entries = catalog::code_entries(self.mode, code);
        let mut result: Option<(bool, String)> = None;
        for e in &entries {
            let (v, class, _) = self.judge_full(i, e)?;
            if v || result.is_none() {
                result = Some((v, class));
            }
            if v {
                break;
            }
        }
        self.learned.catalog.push(CatalogVerdict {
            engine: i,
            code: code.to_string(),
            verdict: result.clone(),
        });
        self.catalog_pg.insert(key, result.clone());
        Ok(result)
    }
}

/// Where the decoder places an instruction in the opcode maps, as
/// signatures name it: `Legacy/0f`, or `none`.
pub(crate) fn position_name(mode: Mode, bytes: &[u8]) -> String {
    analyzer::opmap::position(mode, bytes)
        .map(|p| format!("{:?}/{:02x}", p.map, p.opcode))
        .unwrap_or_else(|| "none".into())
}

/// Whether an evaluation of `input` may give a finding of `signature`:
/// false only where none can. That is where the input ends inside an
/// instruction (it is not run), or where the signature names the
/// decoder's view of the instruction (its place in the opcode maps, its
/// `Code`, or that the decoder finds none) and the decoder sees `input`
/// otherwise. Minimization evaluates no such candidate.
pub fn may_give(mode: Mode, signature: &str, input: &[u8]) -> bool {
    let input = if input.is_empty() { &[0x90][..] } else { input };
    let first = gen::decode(mode, input);
    if first.truncated {
        return false;
    }
    let ran = &input[..first.len];
    let position = || position_name(mode, ran);
    // As the input's entry names it (`explain::raw_entry` of `ran`,
    // `INVALID` where the decoder finds no instruction).
    let code = || format!("{:?}", first.code);
    let parts: Vec<&str> = signature.split('|').collect();
    let (dve, eve, pg) = (
        Kind::DecoderVsEngine.name(),
        Kind::EngineVsEngine.name(),
        Kind::Pg.name(),
    );
    match parts.as_slice() {
        [k, _engine, _cpl, pos, "length", c, ..] if *k == dve => {
            first.valid && *pos == position() && *c == code()
        }
        [k, _engine, _cpl, pos, "invalid", ..] if *k == dve => !first.valid && *pos == position(),
        [k, _cpl, pos, ..] if *k == eve => *pos == position(),
        [k, _engine, "INVALID", pos, _class] if *k == pg => !first.valid && *pos == position(),
        [k, _engine, c, ..] if *k == pg => *c == code(),
        _ => true,
    }
}

/// A command line that shows a finding of `bytes`.
pub(crate) fn reproduce(mode: Mode, config: &Config, engines: &[String], bytes: &[u8]) -> String {
    let mut s = format!(
        "popek explain {} --hex --raw --mode {} --engine {}",
        analyzer::observe::hex(bytes),
        mode.name(),
        engines.join(",")
    );
    if config.umip {
        s.push_str(" --umip on");
    }
    if config.iopl != 0 {
        s.push_str(&format!(" --iopl {}", config.iopl));
    }
    s
}

/// What the quick look saw: outcomes and the changed parts of R.
fn quick_signature(runs: &[Run]) -> String {
    runs.iter()
        .map(|r| {
            let parts: Vec<&str> = r.changed_r().iter().map(|c| c.part.name()).collect();
            format!("{}:{}", normalize(&r.obs.outcome.short()), parts.join("+"))
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every finding an input gives is one `may_give` allows it; a
    /// candidate the decoder sees otherwise is not.
    #[test]
    fn may_give_allows_every_finding_an_input_gives() {
        let openers = crate::worker::openers(&["unicorn".to_string()]).expect("unicorn");
        let mut ev = Evaluator::new(openers, Mode::Long64, Config::UMIP_OFF).expect("evaluator");
        let templates = gen::templates(Mode::Long64);
        let mut kinds = std::collections::BTreeSet::new();
        for i in 0..400 {
            let input = gen::structured(
                &mut crate::rng::Rng::for_input(5, 0, i),
                Mode::Long64,
                &templates,
            );
            if input
                .iter()
                .take_while(|x| gen::PREFIXES.contains(x))
                .any(|&x| x == 0xf0)
            {
                continue;
            }
            for f in ev.eval(&input).expect("eval").findings {
                assert!(
                    may_give(Mode::Long64, &f.signature, &input),
                    "{} {}",
                    f.signature,
                    f.input
                );
                kinds.insert(f.signature.split('|').take(5).last().map(str::to_string));
            }
        }
        assert!(kinds.len() >= 2, "{kinds:?}");
        let length =
            "decoder-vs-engine|unicorn|cpl3|Map0F/58|length|EVEX_Vaddps_zmm_k1z_zmm_zmmm512b32_er";
        let vaddps = [0x62, 0xf1, 0x7c, 0x48, 0x58, 0xc0];
        let position = position_name(Mode::Long64, &vaddps);
        let length = length.replace("Map0F/58", &position);
        assert!(may_give(Mode::Long64, &length, &vaddps));
        // Another Code, an invalid input, bytes that end inside.
        assert!(!may_give(
            Mode::Long64,
            &length,
            &[0x62, 0xf1, 0x7c, 0x48, 0x59, 0xc0]
        ));
        let push_es = [0x06, 0x90, 0x90, 0x90];
        let d = gen::decode(Mode::Long64, &push_es);
        assert!(!d.valid && !d.truncated);
        assert!(!may_give(Mode::Long64, &length, &push_es));
        let es = position_name(Mode::Long64, &push_es);
        assert!(may_give(
            Mode::Long64,
            &format!("decoder-vs-engine|unicorn|cpl3|{es}|invalid|completed"),
            &push_es
        ));
        assert!(!may_give(Mode::Long64, &length, &vaddps[..5]));
        let invalid = format!("decoder-vs-engine|unicorn|cpl3|{position}|invalid|completed");
        assert!(!may_give(Mode::Long64, &invalid, &vaddps));
        assert!(may_give(
            Mode::Long64,
            "engine-failure|unicorn|cpl0|hang",
            &push_es
        ));
    }

    /// A P&G finding is the input's own: an input the decoder finds no
    /// instruction in is judged by its opcode-map cell, and a whole-matrix
    /// verdict is reused only where it found no violation. Unicorn runs
    /// LOCK MOV ECX, CS and LOCK RDTSC; both complete at CPL 0 and 3 with
    /// results that differ, so their quick looks are the same, and only
    /// MOV from CS is sensitive (CS differs under ring compression).
    #[test]
    fn a_p_and_g_finding_is_the_input_s_own() {
        let pg = |e: &Evaluated| -> Vec<String> {
            e.findings
                .iter()
                .filter(|f| f.kind == Kind::Pg)
                .map(|f| f.signature.clone())
                .collect()
        };
        let (mov_cs, rdtsc) = ([0xf0, 0x8c, 0xc9], [0xf0, 0x0f, 0x31]);
        let open = || {
            let o = crate::worker::openers(&["unicorn".to_string()]).expect("unicorn");
            Evaluator::new(o, Mode::Long64, Config::UMIP_OFF).expect("evaluator")
        };
        let want = vec!["pg|unicorn|INVALID|OneByte/8c|sensitive-unprivileged".to_string()];
        // MOV's violation is not RDTSC's.
        let mut ev = open();
        assert_eq!(pg(&ev.eval(&mov_cs).unwrap()), want);
        assert!(pg(&ev.eval(&rdtsc).unwrap()).is_empty());
        // RDTSC's innocuous verdict is not MOV's.
        let mut ev = open();
        assert!(pg(&ev.eval(&rdtsc).unwrap()).is_empty());
        assert_eq!(pg(&ev.eval(&mov_cs).unwrap()), want);
        assert!(may_give(Mode::Long64, &want[0], &mov_cs));
        assert!(!may_give(Mode::Long64, &want[0], &rdtsc));
    }

    /// What an evaluator learned is handed out once, and an evaluator
    /// given it does not measure it again: it uses it.
    #[test]
    fn catalog_verdicts_go_from_one_worker_to_the_next() {
        let open = || {
            let o = crate::worker::openers(&["unicorn".to_string()]).expect("unicorn");
            Evaluator::new(o, Mode::Long64, Config::UMIP_OFF).expect("evaluator")
        };
        // MOV EAX, CS: its result differs between CPL 0 and 3 in the quick
        // look, and the catalog reports it as a violator.
        let mov_cs = [0x8c, 0xc8];
        let mut first = open();
        let found = first.eval(&mov_cs).unwrap().findings;
        let known = first.take_learned();
        assert_eq!(known.catalog.len(), 1, "{known:?}");
        assert_eq!(known.catalog[0].code, "Mov_r32m16_Sreg");
        assert!(
            matches!(known.catalog[0].verdict, Some((true, _))),
            "{known:?}"
        );
        assert!(first.take_learned().is_empty());
        let mut next = open();
        next.know(&known);
        assert_eq!(next.eval(&mov_cs).unwrap().findings, found);
        assert!(next.take_learned().is_empty());
        // Told that the catalog does not report it, an evaluator reports
        // it as a new violator candidate.
        let mut told = open();
        let not = CatalogVerdict {
            verdict: Some((false, "innocuous".into())),
            ..known.catalog[0].clone()
        };
        told.know(&Learned {
            catalog: vec![not],
            ..Learned::default()
        });
        let pg: Vec<_> = told
            .eval(&mov_cs)
            .unwrap()
            .findings
            .into_iter()
            .filter(|f| f.kind == Kind::Pg)
            .collect();
        assert_eq!(pg.len(), 1, "{pg:?}");
    }

    /// Whole-matrix verdicts of no violation and length findings go from
    /// one evaluator of a lane to the next, which then neither judges nor
    /// measures them again, and finds what the first would have.
    #[test]
    fn clean_verdicts_and_lengths_go_from_one_worker_to_the_next() {
        let open = || {
            let o = crate::worker::openers(&["unicorn".to_string()]).expect("unicorn");
            Evaluator::new(o, Mode::Long64, Config::UMIP_OFF).expect("evaluator")
        };
        // LOCK RDTSC looks sensitive in the quick look and violates
        // nothing over the whole matrix; VADDPS zmm0 (EVEX) raises #UD
        // where the decoder reads 6 bytes.
        let rdtsc = [0xf0, 0x0f, 0x31];
        let evex = [0x62, 0xf1, 0x7c, 0x48, 0x58, 0xc0];
        let mut first = open();
        let rdtsc_found = first.eval_with(&rdtsc, Lengths::Unfound).unwrap().findings;
        let evex_found = first.eval_with(&evex, Lengths::Unfound).unwrap().findings;
        assert!(evex_found.iter().any(|f| f.signature.contains("|length|")));
        let learned = first.take_learned();
        assert_eq!(learned.clean.len(), 1, "{learned:?}");
        assert_eq!(learned.clean[0].what, "INVALID|Map0F/31");
        assert_eq!(learned.lengths.len(), 1, "{learned:?}");
        assert_eq!(
            learned.lengths.values().next().map(String::as_str),
            Some("62f17c4858c0")
        );
        // The first again, and the lane's next evaluator told what the
        // first learned: known, nothing judged, measured or learned anew.
        let mut next = open();
        next.know(&learned);
        for ev in [&mut first, &mut next] {
            let again = ev.eval_with(&rdtsc, Lengths::Unfound).unwrap();
            assert_eq!(again.findings, rdtsc_found);
            let again = ev.eval_with(&evex, Lengths::Unfound).unwrap();
            assert!(again.findings.is_empty(), "{:?}", again.findings);
            assert!(ev.take_learned().is_empty());
        }
        // Untold, it judges and measures again, and learns the same.
        let mut untold = open();
        assert_eq!(
            untold.eval_with(&rdtsc, Lengths::Unfound).unwrap().findings,
            rdtsc_found
        );
        assert_eq!(
            untold.eval_with(&evex, Lengths::Unfound).unwrap().findings,
            evex_found
        );
        let relearned = untold.take_learned();
        assert_eq!(relearned.clean, learned.clean);
        assert_eq!(relearned.lengths, learned.lengths);
    }

    /// A warmed-up evaluator learned nothing and judges as a cold one.
    #[test]
    fn a_warm_up_learns_nothing_and_changes_no_verdict() {
        let open = || {
            let o = crate::worker::openers(&["unicorn".to_string()]).expect("unicorn");
            Evaluator::new(o, Mode::Long64, Config::UMIP_OFF).expect("evaluator")
        };
        let (mut warm, mut cold, mut full) = (open(), open(), open());
        warm.warm_up().expect("warm-up");
        assert!(warm.take_learned().is_empty());
        // Warmed over the whole matrix and parked, as the fork server's:
        // its next run starts the watchdog again.
        full.warm_up_full().expect("full warm-up");
        full.park();
        assert!(full.take_learned().is_empty());
        // SMSW, LOCK RDTSC, EVEX VADDPS, PUSHF.
        let inputs: [&[u8]; 4] = [
            &[0x0f, 0x01, 0xe0],
            &[0xf0, 0x0f, 0x31],
            &[0x62, 0xf1, 0x7c, 0x48, 0x58, 0xc0],
            &[0x9c],
        ];
        for input in inputs {
            let w = warm.eval_with(input, Lengths::Unfound).expect("warm");
            let c = cold.eval_with(input, Lengths::Unfound).expect("cold");
            let f = full.eval_with(input, Lengths::Unfound).expect("full");
            assert_eq!(w.findings, c.findings, "{input:02x?}");
            assert_eq!(f.findings, c.findings, "{input:02x?}");
            let learned = cold.take_learned();
            assert_eq!(warm.take_learned(), learned, "{input:02x?}");
            assert_eq!(full.take_learned(), learned, "{input:02x?}");
        }
    }

    /// A lane keeps, of a length signature, the least input.
    #[test]
    fn what_lanes_learned_keeps_the_least_input_of_a_length() {
        let of = |lengths: &[(&str, &str)]| Learned {
            lengths: lengths
                .iter()
                .map(|(s, h)| (s.to_string(), h.to_string()))
                .collect(),
            ..Learned::default()
        };
        let mut l = of(&[("a", "62f1"), ("b", "0f0b")]);
        l.absorb(of(&[("a", "62f0"), ("b", "0f0b0f"), ("c", "90")]));
        assert_eq!(l, of(&[("a", "62f0"), ("b", "0f0b"), ("c", "90")]));
        l.absorb(of(&[("c", "")]));
        assert_eq!(l.lengths["c"], "");
    }

    /// In a lane, a #UD's length finding found already for an input no
    /// greater is not measured again; a lesser input's is, and so is any
    /// input's after `forget_history`.
    #[test]
    fn a_lane_measures_a_length_whose_finding_it_has_not_found() {
        let openers = crate::worker::openers(&["unicorn".to_string()]).expect("unicorn");
        let mut ev = Evaluator::new(openers, Mode::Long64, Config::UMIP_OFF).expect("evaluator");
        let lengths = |e: &Evaluated| -> Vec<String> {
            e.findings
                .iter()
                .filter(|f| f.signature.contains("|length|"))
                .map(|f| f.signature.clone())
                .collect()
        };
        // VADDPS zmm0, zmm0, zmm0 (and [rax]): Unicorn raises #UD at the
        // EVEX prefix, where the decoder reads 6 bytes.
        let reg = [0x62, 0xf1, 0x7c, 0x48, 0x58, 0xc0];
        let mem = [0x62, 0xf1, 0x7c, 0x48, 0x58, 0x00];
        let first = ev.eval_with(&reg, Lengths::Unfound).unwrap();
        let sig = lengths(&first);
        assert_eq!(sig.len(), 1, "{:?}", first.findings);
        // The same instruction again, and with bytes after it: found.
        let mut longer = reg.to_vec();
        longer.push(0x90);
        for again in [&reg[..], &longer] {
            let e = ev.eval_with(again, Lengths::Unfound).unwrap();
            assert!(lengths(&e).is_empty(), "{:?}", e.findings);
            // Measured where asked for.
            assert_eq!(lengths(&ev.eval_with(again, Lengths::Needed).unwrap()), sig);
        }
        // A lesser input of the same signature is measured, and is then
        // the one that counts.
        let lesser = ev.eval_with(&mem, Lengths::Unfound).unwrap();
        assert_eq!(lengths(&lesser), sig);
        assert!(lengths(&ev.eval_with(&mem, Lengths::Unfound).unwrap()).is_empty());
        ev.forget_history();
        assert_eq!(lengths(&ev.eval_with(&reg, Lengths::Unfound).unwrap()), sig);
    }

    #[test]
    fn lengths_are_the_engines_by_run_or_page_boundary() {
        let openers = crate::worker::openers(&["unicorn".to_string()]).expect("unicorn");
        let mut ev = Evaluator::new(openers, Mode::Long64, Config::UMIP_OFF).expect("evaluator");
        let pad = |b: &[u8]| {
            let mut v = b.to_vec();
            v.resize(15, 0);
            v
        };
        // The run shows it (ADD completes at the sentinel); UD2 is
        // measured at the page boundary.
        assert_eq!(
            ev.eval_with(&pad(&[0x48, 0x01, 0xC8]), Lengths::All)
                .unwrap()
                .advance,
            3
        );
        assert_eq!(
            ev.eval_with(&pad(&[0x0F, 0x0B]), Lengths::All)
                .unwrap()
                .advance,
            2
        );
        // Unicorn 2.1 has no AVX: it raises #UD for VBROADCASTSS xmm0,
        // [rip+0] after its ModRM, 5 of the decoder's 9 bytes.
        let vbroadcast = [0xC4, 0xE2, 0x79, 0x18, 0x05, 0, 0, 0, 0];
        let e = ev.eval(&vbroadcast).unwrap();
        assert_eq!(e.advance, 5);
        let f = e
            .findings
            .iter()
            .find(|f| f.signature.contains("|length|"))
            .expect("a length finding");
        assert_eq!(f.kind, Kind::DecoderVsEngine);
        assert_eq!(
            (f.observed_length, f.observed_by.as_deref()),
            (Some(5), Some("page-boundary"))
        );
        assert_eq!(f.decoder.length, 9);
    }

    /// Unicorn, and beside it the planted engine flipping the RFLAGS bits
    /// `mask` after every completed run, in the 64-bit base state.
    fn unicorn_and_planted(mask: u64) -> Evaluator {
        let unicorn = crate::worker::openers(&["unicorn".to_string()]).expect("unicorn");
        let planted: Opener = Arc::new(move || {
            crate::planted::Planted::flipping_flags(mask)
                .map(|p| Box::new(p) as Box<dyn analyzer::engine::Engine>)
        });
        let engines = vec![unicorn[0].clone(), planted];
        Evaluator::new(engines, Mode::Long64, Config::UMIP_OFF).expect("evaluator")
    }

    #[test]
    fn flags_an_instruction_leaves_undefined_are_no_engine_difference() {
        // AF flipped after every completed run of the second engine.
        let mut ev = unicorn_and_planted(0x10);
        let results = |e: &Evaluated| {
            e.findings
                .iter()
                .filter(|f| f.kind == Kind::EngineVsEngine && f.signature.contains("|results|"))
                .count()
        };
        // SHLD by 1 leaves AF undefined.
        let shld = [0x0F, 0xA4, 0xC1, 0x01];
        let e = ev.eval(&shld).unwrap();
        assert_eq!(results(&e), 0, "{:?}", e.findings);
        // ADD defines it: a difference at both CPLs.
        let add = ev.eval(&[0x48, 0x01, 0xC8]).unwrap();
        assert_eq!(results(&add), 2, "{:?}", add.findings);
        assert!(add.findings.iter().any(|f| f.detail.contains("flags")));
        // SHLD defines CF: flipped with AF, a difference at both CPLs.
        let e = unicorn_and_planted(0x11).eval(&shld).unwrap();
        assert_eq!(results(&e), 2, "{:?}", e.findings);
    }

    #[test]
    fn results_that_change_from_run_to_run_are_no_engine_difference() {
        // Unicorn twice (the second as `planted`, flipping nothing): the
        // time stamp differs between the engines' runs, and between two
        // runs on one; ADD's results do not.
        let mut ev = unicorn_and_planted(0);
        let rdtsc = [0x0F, 0x31];
        let runs = |ev: &mut Evaluator| {
            let e = analyzer::explain::raw_entry(&rdtsc, Mode::Long64);
            ev.probers[0]
                .probe_states(&ev.quick, &[&e], false)
                .unwrap()
                .pop()
                .unwrap()
        };
        let (one, two) = (runs(&mut ev), runs(&mut ev));
        assert!(
            !diff_results(&one[1], &two[1]).is_empty(),
            "RDTSC gave the same result twice"
        );
        let e = ev.eval(&rdtsc).unwrap();
        assert!(
            !e.findings.iter().any(|f| f.kind == Kind::EngineVsEngine),
            "{:?}",
            e.findings
        );
        let add = ev.eval(&[0x48, 0x01, 0xC8]).unwrap();
        assert!(add.findings.is_empty(), "{:?}", add.findings);
    }

    #[test]
    fn numbers_are_normalized_in_signatures() {
        assert_eq!(normalize("completed@0x7105"), "completed@#");
        assert_eq!(normalize("#GP(0x10)"), "#GP(#)");
        assert_eq!(
            normalize("engine-error: run 12 failed"),
            "engine-error: run # failed"
        );
    }
}
