//! The probe layer: runs the sampled-state matrix of entries on one engine
//! ([`Prober`]) or on two side by side ([`Diff`]), and turns the runs of an
//! entry into its final [`Record`] ([`judge`]). `scan`, `explain` and the
//! fuzzer all go through here, so they give the same verdict on the same
//! instruction.
//!
//! A [`Run`] carries what the verdict needs besides the engine's
//! [`Observation`]: the NOP baseline of its state (what the engine and the
//! harness do to R and M by themselves) and the user-visible state the run
//! started from (so behavior comparisons compare what each run changed).

use crate::catalog::Entry;
use crate::classify::verdict;
use crate::engine::features::{self, EngineFeatures};
use crate::engine::{Engine, EngineError};
use crate::fasthash::FastMap;
use crate::length::FetchLength;
use crate::machine::{GuestImage, Prepared, Variant};
use crate::mode::{Config, Mode};
use crate::observe::{
    diff_effects, diff_system, Change, Effects, Observation, Outcome, Side, SystemState, UserState,
};
use crate::record::Record;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// One run of an instruction: the sampled state (variant and side), which
/// repetition of it (0; 1 for the second run of the base state), what the
/// engine observed, and the two references the verdict measures it against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub variant: Variant,
    pub side: Side,
    pub repeat: u8,
    pub obs: Observation,
    /// R and M after a NOP run in the same state on the same engine, when
    /// known. Changes are measured against it, so what the engine or the
    /// harness itself does to R (PVM's exception frames show IOPL 0 at CPL 3,
    /// for one) is not blamed on the instruction.
    #[serde(default)]
    pub baseline: Option<SystemState>,
    /// The user-visible state the run started from, when known.
    #[serde(default)]
    pub start: Option<UserState>,
}

impl Run {
    /// The state the run ran in, as reports name it: `base@cpl3`,
    /// `ring1@cpl0 (repeat 1)`.
    pub fn state(&self, config: &Config) -> String {
        state_label(&self.variant, self.side, self.repeat, config)
    }

    /// A run with no baseline and no start state.
    pub fn new(variant: Variant, side: Side, repeat: u8, obs: Observation) -> Run {
        Run {
            variant,
            side,
            repeat,
            obs,
            baseline: None,
            start: None,
        }
    }

    /// Which parts of R or M the instruction changed (privilege level,
    /// system flags, descriptor cache, ...): the after-state against the
    /// NOP baseline when there is one, else against the before-state. Empty
    /// if none or if there is no after-state.
    pub fn changed_r(&self) -> Vec<Change> {
        let Some(after) = &self.obs.after else {
            return Vec::new();
        };
        diff_system(self.baseline.as_ref().unwrap_or(&self.obs.before), after)
    }

    /// What the run changed in the user-visible state, when it completed
    /// and its start is known.
    pub fn effects(&self) -> Option<Effects> {
        match (&self.start, &self.obs.user) {
            (Some(s), Some(u)) => Some(Effects::between(s, u)),
            _ => None,
        }
    }
}

/// The user-visible differences between two completed runs, for behavior
/// comparisons: their effects when both starts are known, else their
/// results as they are ([`diff_effects`]).
pub fn diff_results(a: &Run, b: &Run) -> Vec<String> {
    diff_effects(&a.obs, a.effects().as_ref(), &b.obs, b.effects().as_ref())
}

/// Builds guest images. The scan and `explain` use [`GuestHarness`]; tests
/// may substitute images no engine could run.
pub trait Harness: Sync {
    fn build(&self, mode: Mode, config: Config, variant: Variant) -> GuestImage;
}

/// The real harness: [`GuestImage::build`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestHarness;

impl Harness for GuestHarness {
    fn build(&self, mode: Mode, config: Config, variant: Variant) -> GuestImage {
        GuestImage::build(mode, config, variant)
    }
}

/// Why probing could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open the engine: {0}")]
    OpenEngine(#[source] EngineError),
    #[error("cannot build the guest image for mode {mode}, {config}, variant {variant}: {msg}")]
    BuildImage {
        mode: Mode,
        config: String,
        variant: String,
        msg: String,
    },
}

/// The images of every sampled state of one mode and configuration
/// ([`Variant::matrix`]), built once and shared by every engine.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub mode: Mode,
    pub config: Config,
    pub images: Vec<(Variant, Arc<GuestImage>)>,
}

impl Matrix {
    /// Builds every image of `mode` in `config`; a harness that panics is an error.
    pub fn build<H: Harness + ?Sized>(
        harness: &H,
        mode: Mode,
        config: Config,
    ) -> Result<Matrix, ProbeError> {
        let images = Variant::matrix(mode, &config)
            .into_iter()
            .map(|v| build_one(harness, mode, config, v).map(|img| (v, Arc::new(img))))
            .collect::<Result<_, _>>()?;
        Ok(Matrix {
            mode,
            config,
            images,
        })
    }
}

/// One image, a panic of the harness turned into [`ProbeError::BuildImage`].
pub fn build_one<H: Harness + ?Sized>(
    harness: &H,
    mode: Mode,
    config: Config,
    variant: Variant,
) -> Result<GuestImage, ProbeError> {
    catch_unwind(AssertUnwindSafe(|| harness.build(mode, config, variant))).map_err(|p| {
        ProbeError::BuildImage {
            mode,
            config: config.name(),
            variant: variant.name(&config),
            msg: panic_text(p.as_ref()),
        }
    })
}

/// The image the page-boundary method runs in ([`crate::length`]): the
/// base state of `config` with the page after the code page not
/// executable. `None` where the mode has no paging.
pub fn fenced_image<H: Harness + ?Sized>(
    harness: &H,
    mode: Mode,
    config: Config,
) -> Result<Option<GuestImage>, ProbeError> {
    crate::length::fenced_variant(mode, &config)
        .map(|v| build_one(harness, mode, config, v))
        .transpose()
}

/// Opens an engine: the first time a [`Prober`] needs one, and again after
/// an engine panicked.
pub type Opener = Arc<dyn Fn() -> Result<Box<dyn Engine>, EngineError> + Send + Sync>;

/// The null instruction of the baseline runs.
const NOP: [u8; 1] = [0x90];

/// One engine and, per state, the after-state of a NOP on it (the baseline
/// control changes are measured against).
pub struct Prober {
    opener: Opener,
    engine: Option<Box<dyn Engine>>,
    name: String,
    version: String,
    baselines: FastMap<(Mode, Config, Variant, Side), Option<SystemState>>,
    /// The engine's own CPUID and XCR0 per mode ([`features::probe`]),
    /// probed once, when an entry first needs them.
    features: HashMap<Mode, Option<EngineFeatures>>,
}

impl Prober {
    /// Opens the engine at once, so that a missing engine is an error here.
    pub fn open(opener: Opener) -> Result<Prober, ProbeError> {
        let engine = opener().map_err(ProbeError::OpenEngine)?;
        let (name, version) = (engine.name().to_string(), engine.version());
        Ok(Prober {
            opener,
            engine: Some(engine),
            name,
            version,
            baselines: FastMap::default(),
            features: HashMap::new(),
        })
    }

    /// Readies the prober to be carried into a child of a fork
    /// ([`Engine::park`]): an engine that cannot be carried is dropped, and
    /// opened again when a run needs it. What the prober measured (its
    /// baselines and features) stays.
    pub fn park(&mut self) {
        if let Some(e) = self.engine.as_mut() {
            if !e.park() {
                self.engine = None;
            }
        }
    }

    /// The engine's name (`unicorn`, `kvm`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The engine's version text.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The runs of one entry: every state of the matrix on every side that
    /// exists, then the base state's repeat 1.
    pub fn probe(&mut self, matrix: &Matrix, entry: &Entry) -> Result<Vec<Run>, ProbeError> {
        Ok(self.probe_all(matrix, &[entry])?.pop().unwrap_or_default())
    }

    /// [`Prober::probe`] for many entries of the matrix's mode, run image by
    /// image (an engine switching images less often runs faster: Unicorn
    /// flushes its translations at a switch). Each run gets the NOP baseline
    /// of its state and its start state.
    pub fn probe_all(
        &mut self,
        matrix: &Matrix,
        entries: &[&Entry],
    ) -> Result<Vec<Vec<Run>>, ProbeError> {
        self.probe_states(matrix, entries, true)
    }

    /// The runs of entries in every state of `matrix` (which may hold only
    /// some of a mode's states, as the fuzzer's quick look does), with the
    /// base state's repeat when `repeat` and the base state is there.
    pub fn probe_states(
        &mut self,
        matrix: &Matrix,
        entries: &[&Entry],
        repeat: bool,
    ) -> Result<Vec<Vec<Run>>, ProbeError> {
        let variants = &matrix.images;
        let mut runs: Vec<Vec<Run>> = entries
            .iter()
            .map(|_| Vec::with_capacity(variants.len() * 2 + 2))
            .collect();
        let base = Variant::base(&matrix.config);
        let mut plan: Vec<(&(Variant, Arc<GuestImage>), u8)> =
            variants.iter().map(|v| (v, 0)).collect();
        if repeat {
            plan.extend(variants.iter().filter(|(v, _)| *v == base).map(|v| (v, 1)));
        }
        for ((variant, image), repeat) in plan {
            let mut cases: Vec<(usize, Side, Prepared)> = Vec::new();
            for (k, entry) in entries.iter().enumerate() {
                for side in Side::BOTH {
                    if let Some(test) = image.prepare(side, &entry.bytes, &entry.setup) {
                        cases.push((k, side, test));
                    }
                }
            }
            for side in Side::BOTH {
                if cases.iter().any(|c| c.1 == side) {
                    self.baseline(image, side)?;
                }
            }
            let baselines = Side::BOTH.map(|side| {
                let key = (image.mode, image.config, image.variant, side);
                self.baselines.get(&key).cloned().flatten()
            });
            for (k, side, test) in cases {
                let obs = self.run_guarded(image, side, &test)?;
                let baseline = baselines[usize::from(side == Side::User)].clone();
                let start = if obs.user.is_some() {
                    image.into_initial_user_state(side, test)
                } else {
                    None
                };
                runs[k].push(Run {
                    variant: *variant,
                    side,
                    repeat,
                    obs,
                    baseline,
                    start,
                });
            }
        }
        Ok(runs)
    }

    /// The final record of `entry` from its runs on this engine ([`judge`]),
    /// with the engine's features in the matrix's mode, probed the first
    /// time an entry with CPUID features needs them.
    pub fn judge(&mut self, matrix: &Matrix, entry: &Entry, runs: &[Run]) -> Record {
        if !entry.doc.cpuid.is_empty() && !self.features.contains_key(&matrix.mode) {
            let base = Variant::base(&matrix.config);
            let probed = matrix
                .images
                .iter()
                .find(|(v, _)| *v == base)
                .and_then(|(_, image)| {
                    let engine = self.engine.as_mut()?;
                    catch_unwind(AssertUnwindSafe(|| features::probe(engine.as_mut(), image)))
                        .ok()
                        .flatten()
                });
            self.features.insert(matrix.mode, probed);
        }
        let f = if entry.doc.cpuid.is_empty() {
            None
        } else {
            self.features.get(&matrix.mode).and_then(Option::as_ref)
        };
        judge(&self.name, &self.version, matrix, entry, runs, f)
    }

    /// The length of `entry` on `side` as this engine fetches it, by the
    /// page-boundary method ([`crate::length`]), in `fenced` (the image of
    /// [`fenced_image`]); `hint` is the decoder's length.
    pub fn fetch_length(
        &mut self,
        fenced: &GuestImage,
        side: Side,
        entry: &Entry,
        hint: usize,
    ) -> Result<FetchLength, ProbeError> {
        // With the one guess `hint`, trusted: `length::measure`, run for run.
        self.fetch_length_guessing(fenced, side, entry, (&[hint], hint), |_| true)
    }

    /// [`Prober::fetch_length`] trying the lengths `guesses` first
    /// ([`crate::length::measure_guessing`]); where `trust` does not accept
    /// what that found, the length as [`Prober::fetch_length`] finds it from
    /// `hint`, with the runs already made reused (a run with `k` bytes
    /// before the boundary is the same test in both searches).
    pub fn fetch_length_guessing(
        &mut self,
        fenced: &GuestImage,
        side: Side,
        entry: &Entry,
        (guesses, hint): (&[usize], usize),
        trust: impl Fn(&FetchLength) -> bool,
    ) -> Result<FetchLength, ProbeError> {
        let Some(test) = fenced.prepare(side, &entry.bytes, &entry.setup) else {
            return Ok(FetchLength::NotMeasured(format!(
                "mode {} has no {} side",
                fenced.mode,
                side.name()
            )));
        };
        let mut ran: [Option<Outcome>; crate::length::MAX_LEN + 1] = Default::default();
        let mut run = |p: &mut Prober, t: &Prepared| -> Result<Outcome, ProbeError> {
            let k = (crate::machine::CODE + crate::machine::PAGE - t.rip) as usize;
            if let Some(o) = ran.get(k).cloned().flatten() {
                return Ok(o);
            }
            let o = p.run_guarded_as(fenced, side, t, true)?.outcome;
            // An engine failure may not repeat: such a run is made again.
            if let (Some(slot), false) = (ran.get_mut(k), matches!(o, Outcome::EngineError(_))) {
                *slot = Some(o.clone());
            }
            Ok(o)
        };
        let first = crate::length::measure_guessing(fenced, &test, guesses, |t| run(self, t))?;
        if trust(&first) {
            return Ok(first);
        }
        crate::length::measure(fenced, &test, hint, |t| run(self, t))
    }

    /// Runs a NOP in the state once, keeping its after-state when it completed.
    fn baseline(&mut self, image: &GuestImage, side: Side) -> Result<(), ProbeError> {
        let key = (image.mode, image.config, image.variant, side);
        if self.baselines.contains_key(&key) {
            return Ok(());
        }
        let baseline = match image.prepare(side, &NOP, &Default::default()) {
            Some(p) => {
                let o = self.run_guarded(image, side, &p)?;
                if o.outcome.is_completed() {
                    o.after
                } else {
                    None
                }
            }
            None => None,
        };
        self.baselines.insert(key, baseline);
        Ok(())
    }

    /// Runs one test; a panicking engine becomes an engine error and is
    /// reopened for the next run.
    fn run_guarded(
        &mut self,
        image: &GuestImage,
        side: Side,
        test: &Prepared,
    ) -> Result<Observation, ProbeError> {
        self.run_guarded_as(image, side, test, false)
    }

    /// `run_guarded`, or with `fetch` the engine's `run_fetch`.
    fn run_guarded_as(
        &mut self,
        image: &GuestImage,
        side: Side,
        test: &Prepared,
        fetch: bool,
    ) -> Result<Observation, ProbeError> {
        let engine = match &mut self.engine {
            Some(e) => e,
            None => self
                .engine
                .insert((self.opener)().map_err(ProbeError::OpenEngine)?),
        };
        let run = || {
            if fetch {
                engine.run_fetch(image, side, test)
            } else {
                engine.run(image, side, test)
            }
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(obs) => Ok(obs),
            Err(p) => {
                self.engine = None;
                Ok(Observation::outcome_only(
                    Outcome::EngineError(format!("engine panicked: {}", panic_text(p.as_ref()))),
                    SystemState::default(),
                ))
            }
        }
    }
}

/// A state as reports name it: `base@cpl3`, `ring1@cpl0 (repeat 1)`.
pub fn state_label(variant: &Variant, side: Side, repeat: u8, config: &Config) -> String {
    let label = format!("{}@{side}", variant.name(config));
    if repeat == 0 {
        label
    } else {
        format!("{label} (repeat {repeat})")
    }
}

/// The final record of an entry from its runs on the engine `name`: the
/// final verdict ([`crate::classify::verdict`]) beside the entry's
/// documented metadata. `scan` and `explain` both call this, and nothing
/// after it changes the verdict (the facts table only annotates).
pub fn judge(
    name: &str,
    version: &str,
    matrix: &Matrix,
    entry: &Entry,
    runs: &[Run],
    features: Option<&EngineFeatures>,
) -> Record {
    let verdict = verdict(entry, &matrix.config, runs, features);
    Record::new(name, version, entry, &matrix.config, verdict)
}

/// One state of the matrix and each engine's run of it.
#[derive(Clone, Debug)]
pub struct Case {
    pub variant: Variant,
    pub side: Side,
    pub repeat: u8,
    /// The run on each engine, in the probers' order (`None` where that
    /// engine did not run the state).
    pub runs: Vec<Option<Run>>,
}

impl Case {
    /// Engines `i` and `j` both ran the state and their outcomes differ
    /// ([`Outcome::agrees`]; a state one engine could not run is not a
    /// difference: it is not run there).
    pub fn outcomes_differ(&self, i: usize, j: usize) -> bool {
        match (self.runs.get(i), self.runs.get(j)) {
            (Some(Some(a)), Some(Some(b))) => {
                let ran = |r: &Run| !crate::classify::coverage::is_not_run(&r.obs.outcome);
                ran(a) && ran(b) && !a.obs.outcome.agrees(&b.obs.outcome)
            }
            _ => false,
        }
    }
}

/// Several probers over the same matrix: the differential view of one entry.
pub struct Diff {
    pub probers: Vec<Prober>,
}

/// Every engine's runs and record of one entry.
#[derive(Clone, Debug)]
pub struct Differential {
    pub cases: Vec<Case>,
    /// Each engine's record, in the probers' order.
    pub records: Vec<Record>,
}

impl Diff {
    /// Runs the entry on every engine and attaches the runs state by state,
    /// in the first engine's order (then any state only a later one ran, in
    /// that engine's order).
    pub fn probe(&mut self, matrix: &Matrix, entry: &Entry) -> Result<Differential, ProbeError> {
        let n = self.probers.len();
        let mut records = Vec::with_capacity(n);
        let mut cases: Vec<Case> = Vec::new();
        let key = |r: &Run| (r.variant, r.side, r.repeat);
        for (i, p) in self.probers.iter_mut().enumerate() {
            let runs = p.probe(matrix, entry)?;
            records.push(p.judge(matrix, entry, &runs));
            for run in runs {
                let at = cases.iter().position(|c| {
                    (c.variant, c.side, c.repeat) == key(&run) && c.runs[i].is_none()
                });
                let at = match at {
                    Some(at) => at,
                    None => {
                        cases.push(Case {
                            variant: run.variant,
                            side: run.side,
                            repeat: run.repeat,
                            runs: vec![None; n],
                        });
                        cases.len() - 1
                    }
                };
                cases[at].runs[i] = Some(run);
            }
        }
        Ok(Differential { cases, records })
    }
}

pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(user: Option<UserState>, after: Option<SystemState>) -> Observation {
        Observation {
            outcome: Outcome::Completed {
                rip: 0,
                at_sentinel: true,
            },
            before: SystemState::default(),
            after,
            user,
        }
    }

    fn run(start: Option<UserState>, after: UserState) -> Run {
        Run {
            start,
            ..Run::new(
                Variant::base(&Config::UMIP_OFF),
                Side::Supervisor,
                0,
                completed(Some(after), None),
            )
        }
    }

    #[test]
    fn changes_are_measured_against_the_nop_baseline() {
        let before = SystemState {
            sys_flags: 3 << 12,
            ..Default::default()
        };
        // The engine shows IOPL 0 after any instruction in this state...
        let after = SystemState {
            sys_flags: 0,
            ..Default::default()
        };
        let mut obs = completed(None, Some(after.clone()));
        obs.before = before;
        let mut r = Run::new(Variant::base(&Config::UMIP_OFF), Side::User, 0, obs);
        assert_eq!(r.changed_r().len(), 1);
        // ...and so does a NOP: the instruction itself changed nothing.
        r.baseline = Some(after);
        assert!(r.changed_r().is_empty());
    }

    #[test]
    fn results_are_compared_by_their_effects() {
        let start = |rax: u64| UserState {
            gprs: [rax; 16],
            data: vec![0; 16].into(),
            stack: vec![0; 16].into(),
            ..Default::default()
        };
        // Different inputs left alone: no difference in effects.
        let a = run(Some(start(0x10)), start(0x10));
        let b = run(Some(start(0x23)), start(0x23));
        assert!(diff_results(&a, &b).is_empty());
        // The same write on both sides: equal effects.
        let mut wa = start(0x10);
        wa.data[3] = 7;
        let mut wb = start(0x23);
        wb.data[3] = 7;
        assert!(diff_results(
            &run(Some(start(0x10)), wa.clone()),
            &run(Some(start(0x23)), wb)
        )
        .is_empty());
        // Different values written: a difference, named by its place.
        let mut wc = start(0x23);
        wc.data[3] = 9;
        let d = diff_results(&run(Some(start(0x10)), wa), &run(Some(start(0x23)), wc));
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("data[0x3..] 07"), "{d:?}");
        // Without starts, results are compared as they are.
        let (mut x, mut y) = (a.clone(), b.clone());
        x.start = None;
        y.start = None;
        assert_eq!(diff_results(&x, &y).len(), 16);
    }

    #[test]
    fn effects_computed_once_give_the_pairwise_diff() {
        let start = UserState {
            gprs: [3; 16],
            data: vec![0; 256].into(),
            stack: vec![1; 256].into(),
            ..Default::default()
        };
        let with = |f: &dyn Fn(&mut UserState)| {
            let mut after = start.clone();
            f(&mut after);
            run(Some(start.clone()), after)
        };
        let runs = [
            with(&|_| {}),
            with(&|u| u.data[70] = 9),
            with(&|u| {
                u.data[70] = 8;
                u.stack[255] = 0;
                u.gprs[2] = 5;
            }),
            with(&|u| u.flags = 0x40),
        ];
        let mut no_start = runs[1].clone();
        no_start.start = None;
        let all: Vec<&Run> = runs.iter().chain([&no_start]).collect();
        for a in &all {
            for b in &all {
                let (ea, eb) = (a.effects(), b.effects());
                assert_eq!(
                    diff_effects(&a.obs, ea.as_ref(), &b.obs, eb.as_ref()),
                    diff_results(a, b)
                );
            }
        }
        assert_eq!(
            diff_results(&runs[1], &runs[2]),
            vec![
                "rdx unchanged vs 0x5".to_string(),
                "data[0x46..] 0900000000000000 vs 0800000000000000 (written by the runs)"
                    .to_string(),
                "stack[0xff..] 01 vs 00 (written by the runs)".to_string(),
            ]
        );
    }
}
