//! One input through the probe layer and the oracles: the bytes become an
//! entry ([`analyzer::explain::raw_entry`]), every engine's [`Prober`] runs
//! it in the base state at both CPLs (a quick look; where the mode has
//! paging, the base state with the data page not executable, in which the
//! page-boundary length is measured too), and the oracles turn
//! the runs into findings; an input that looks sensitive at CPL 3 is run
//! through the whole matrix and judged as `scan` judges ([`Prober::judge`]).
//! No engine or observation code of its own.

use crate::finding::{Decoded, Finding, Kind};
use crate::gen;
use analyzer::catalog::{self, Catalog, Entry};
use analyzer::machine::{GuestImage, Variant};
use analyzer::mode::{Config, Mode};
use analyzer::observe::{Outcome, Side};
use analyzer::probe::{diff_results, GuestHarness, Matrix, Opener, ProbeError, Prober, Run};
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
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
    catalog: Catalog,
    /// The catalog's encodings of the mode (the generators' templates).
    pub templates: Vec<Vec<u8>>,
    /// (engine, code, quick-look signature) to the whole matrix's verdict:
    /// whether it violates, its class and first evidence.
    escalated: HashMap<(usize, String, String), (bool, String, String)>,
    /// (engine, code) to whether the catalog's scan of that code reports a
    /// violator (`None`: the catalog has no such code).
    catalog_pg: HashMap<(usize, String), Option<(bool, String)>>,
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
    pub fn new(engines: Vec<Opener>, mode: Mode, config: Config) -> Result<Evaluator, ProbeError> {
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
        let catalog = catalog::build(mode);
        let templates = catalog.entries.iter().map(|e| e.bytes.clone()).collect();
        Ok(Evaluator {
            mode,
            config,
            probers,
            quick,
            fenced,
            full: None,
            catalog,
            templates,
            escalated: HashMap::new(),
            catalog_pg: HashMap::new(),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Forgets the whole-matrix verdicts cached by code and quick-look
    /// signature, so that what follows does not depend on the inputs
    /// before it (each finding's minimization starts so).
    pub fn forget_escalations(&mut self) {
        self.escalated.clear();
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
        self.eval_with(input, false)
    }

    /// [`Evaluator::eval`], measuring every input's length the run does
    /// not show when `all_lengths` (the tunnel advances by it).
    pub fn eval_with(&mut self, input: &[u8], all_lengths: bool) -> Result<Evaluated, ProbeError> {
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
        // Where the decoder finds no instruction, no oracle compares an
        // engine's length with the decoder's: the first engine's length
        // only goes with the input's findings (`observed_length`). So it
        // is measured once an oracle has found something, and the other
        // engines' not at all, unless every length is asked for (the
        // tunnel advances by it).
        let deferred = !valid && !all_lengths;
        for (i, runs) in all_runs.iter().enumerate().filter(|_| !deferred) {
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
        // What a finding carries is made only when an oracle finds one.
        let names = self.engines();
        let (mode, config) = (self.mode, self.config);
        let position_cell = OnceCell::new();
        let position = || {
            position_cell
                .get_or_init(|| {
                    analyzer::opmap::position(mode, &ran)
                        .map(|p| format!("{:?}/{:02x}", p.map, p.opcode))
                        .unwrap_or_else(|| "none".into())
                })
                .clone()
        };
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
        let mut add = |kind: Kind, cpl: Option<u8>, detail: String, sig: String| {
            found.push(Finding {
                kind,
                cpl,
                detail,
                signature: format!("{}|{sig}", kind.name()),
                ..base()
            });
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
        for (name, measured) in names.iter().zip(&lengths) {
            let Some((n, by)) = *measured else { continue };
            if valid && n != len {
                let c = cpl_of(self.length_side());
                add(
                    Kind::DecoderVsEngine,
                    Some(c),
                    format!(
                        "the decoder reads {len} bytes ({}); {name} at CPL {c} fetches {n} ({by})",
                        entry.form
                    ),
                    format!("{name}|cpl{c}|{}|length|{}", position(), entry.code),
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
            let quick_sig = quick_signature(runs);
            let key = (i, entry.code.clone(), quick_sig);
            let verdict = match self.escalated.get(&key) {
                Some(v) => v.clone(),
                None => {
                    let v = self.judge_full(i, &entry)?;
                    self.escalated.insert(key, v.clone());
                    v
                }
            };
            let (violates, class, evidence) = verdict;
            if !violates {
                continue;
            }
            let known = self.catalog_verdict(i, &entry.code)?;
            if let Some((true, _)) = known {
                continue;
            }
            let name = &names[i];
            let why = match &known {
                Some((_, cclass)) => format!("the catalog's {} is {cclass}", entry.code),
                None => format!("{} is not in the catalog", entry.code),
            };
            found.push(Finding {
                kind: Kind::Pg,
                cpl: Some(3),
                detail: format!("{name}: {class} over the whole matrix ({why}): {evidence}"),
                signature: format!("pg|{name}|{}|{class}", entry.code),
                ..base()
            });
        }
        if deferred && !found.is_empty() {
            if let Some(runs) = all_runs.first() {
                observed = self.observed_length(
                    0,
                    (input, &mut whole),
                    (len, valid),
                    straight,
                    false,
                    runs,
                )?;
            }
            for f in &mut found {
                f.observed_length = observed.map(|(n, _)| n as u64);
                f.observed_by = observed.map(|(_, by)| by.to_string());
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
        let entries: Vec<Entry> = self.catalog.find_code(code).into_iter().cloned().collect();
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
        self.catalog_pg.insert(key, result.clone());
        Ok(result)
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
            ev.eval_with(&pad(&[0x48, 0x01, 0xC8]), true)
                .unwrap()
                .advance,
            3
        );
        assert_eq!(ev.eval_with(&pad(&[0x0F, 0x0B]), true).unwrap().advance, 2);
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
