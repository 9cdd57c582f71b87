//! Scan orchestration: every catalog entry in every configuration, every
//! state of the matrix on every side, on a pool of workers that each own
//! one engine; then the classifier and one [`Record`] per (entry, configuration).

use crate::catalog::Entry;
use crate::engine::{Engine, EngineError};
use crate::machine::{GuestImage, Variant};
use crate::mode::{Config, Mode};
use crate::observe::Side;
use crate::probe::{build_one, Matrix, Opener, ProbeError, Prober};
pub use crate::probe::{GuestHarness, Harness};
use crate::record::Record;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What to scan: the modes, the configurations, and optionally which
/// instructions (by iced `Code` name or mnemonic, case-insensitive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPlan {
    pub modes: Vec<Mode>,
    pub configs: Vec<Config>,
    /// Keep only entries whose `code` or `mnemonic` equals one of these; all if empty.
    pub only: Vec<String>,
}

impl ScanPlan {
    /// The entries of the plan's modes that pass its filter, in catalog order.
    pub fn select<'e>(&self, entries: &'e [Entry]) -> Vec<&'e Entry> {
        entries
            .iter()
            .filter(|e| self.modes.contains(&e.mode))
            .filter(|e| selected_by(&self.only, &e.code, &e.mnemonic))
            .collect()
    }
}

/// Whether `only` (empty: everything) selects the encoding of `code` and
/// `mnemonic`: a name equal to either, whatever the case.
pub fn selected_by(only: &[String], code: &str, mnemonic: &str) -> bool {
    only.is_empty()
        || only
            .iter()
            .any(|o| o.eq_ignore_ascii_case(code) || o.eq_ignore_ascii_case(mnemonic))
}

/// Why a scan could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot open the engine for a worker thread: {0}")]
    OpenWorkerEngine(String),
    #[error("cannot start {jobs} worker threads: {source}")]
    ThreadPool {
        jobs: usize,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
}

/// Scans `entries` (each in its own mode) in every configuration of
/// `configs` on `jobs` workers (0: one per CPU), each with its own engine
/// from `make_engine`. Records come sorted by mode, configuration (in the
/// order given) and entry (in the order given).
pub fn run_scan<F>(
    entries: &[Entry],
    configs: &[Config],
    make_engine: F,
    jobs: usize,
    progress: bool,
) -> Result<Vec<Record>, ScanError>
where
    F: Fn() -> Result<Box<dyn Engine>, EngineError> + Send + Sync + 'static,
{
    run_scan_with(&GuestHarness, entries, configs, make_engine, jobs, progress)
}

/// A progress bar of `len` items on stderr, drawn only when asked and
/// stderr is a terminal.
pub(crate) fn progress_bar(len: u64, progress: bool) -> ProgressBar {
    if !(progress && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed} / ~{eta}]")
    {
        bar.set_style(style);
    }
    bar
}

/// [`run_scan`] that also counts the runs it made (the tests' runs, not
/// the NOP baselines) into `runs`.
pub fn run_scan_counted<F>(
    entries: &[Entry],
    configs: &[Config],
    make_engine: F,
    jobs: usize,
    progress: bool,
    runs: &AtomicU64,
) -> Result<Vec<Record>, ScanError>
where
    F: Fn() -> Result<Box<dyn Engine>, EngineError> + Send + Sync + 'static,
{
    let scanned = run_scan_kept(entries, configs, make_engine, jobs, progress, runs, false)?;
    Ok(scanned.into_iter().map(|s| s.record).collect())
}

/// [`run_scan_counted`] that keeps, beside each record and when
/// `outcomes`, the outcome of every state that ran ([`Scanned::outcomes`]),
/// for an engine comparison run by run.
pub fn run_scan_kept<F>(
    entries: &[Entry],
    configs: &[Config],
    make_engine: F,
    jobs: usize,
    progress: bool,
    runs: &AtomicU64,
    outcomes: bool,
) -> Result<Vec<Scanned>, ScanError>
where
    F: Fn() -> Result<Box<dyn Engine>, EngineError> + Send + Sync + 'static,
{
    scan_inner(
        &GuestHarness,
        entries,
        configs,
        make_engine,
        jobs,
        progress,
        Keep { runs, outcomes },
    )
}

/// One record of a scan and, when asked for, the outcome of each state that
/// ran for it (states the engine could not run are left out), in matrix order.
#[derive(Clone, Debug)]
pub struct Scanned {
    pub record: Record,
    /// The configuration the record was scanned in (its states' names use it).
    pub config: Config,
    pub outcomes: Vec<StateOutcome>,
}

/// The outcome of one run and the state it ran in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateOutcome {
    pub variant: Variant,
    pub side: Side,
    pub repeat: u8,
    pub outcome: crate::observe::Outcome,
}

impl StateOutcome {
    /// The states of `runs` that ran, with their outcomes.
    pub fn of(runs: &[crate::probe::Run]) -> Vec<StateOutcome> {
        runs.iter()
            .filter(|r| !crate::classify::coverage::is_not_run(&r.obs.outcome))
            .map(|r| StateOutcome {
                variant: r.variant,
                side: r.side,
                repeat: r.repeat,
                outcome: r.obs.outcome.clone(),
            })
            .collect()
    }

    /// The CPL the run's test executed at: 3 on the user side, the
    /// variant's supervisor CPL on the other (0 outside protected mode).
    pub fn cpl(&self, mode: Mode) -> u8 {
        match self.side {
            Side::User => 3,
            Side::Supervisor if mode.is_protected() => self.variant.supervisor_dpl & 3,
            Side::Supervisor => 0,
        }
    }

    /// Whether `other` ran in the same state.
    pub fn same_state(&self, other: &StateOutcome) -> bool {
        (self.variant, self.side, self.repeat) == (other.variant, other.side, other.repeat)
    }

    /// The state as reports name it ([`crate::probe::state_label`]).
    pub fn state(&self, config: &Config) -> String {
        crate::probe::state_label(&self.variant, self.side, self.repeat, config)
    }
}

/// [`run_scan`] with a chosen harness.
pub fn run_scan_with<H, F>(
    harness: &H,
    entries: &[Entry],
    configs: &[Config],
    make_engine: F,
    jobs: usize,
    progress: bool,
) -> Result<Vec<Record>, ScanError>
where
    H: Harness,
    F: Fn() -> Result<Box<dyn Engine>, EngineError> + Send + Sync + 'static,
{
    let scanned = scan_inner(
        harness,
        entries,
        configs,
        make_engine,
        jobs,
        progress,
        Keep {
            runs: &AtomicU64::new(0),
            outcomes: false,
        },
    )?;
    Ok(scanned.into_iter().map(|s| s.record).collect())
}

/// What a scan keeps besides its records: the count of runs made (the
/// tests' runs, not the NOP baselines) and, when `outcomes`, each state's
/// outcome ([`Scanned::outcomes`]).
struct Keep<'a> {
    runs: &'a AtomicU64,
    outcomes: bool,
}

fn scan_inner<H, F>(
    harness: &H,
    entries: &[Entry],
    configs: &[Config],
    make_engine: F,
    jobs: usize,
    progress: bool,
    keep: Keep<'_>,
) -> Result<Vec<Scanned>, ScanError>
where
    H: Harness,
    F: Fn() -> Result<Box<dyn Engine>, EngineError> + Send + Sync + 'static,
{
    let jobs = if jobs == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        jobs
    };
    let opener: Opener = Arc::new(make_engine);
    // Open one engine at once so that a missing engine is an error, not a
    // failure deep inside a worker. Workers open their own: engines are not
    // `Send` (Unicorn is not), so each pool thread keeps a prober in a thread-local.
    drop(Prober::open(Arc::clone(&opener))?);
    let scan_id = NEXT_SCAN.fetch_add(1, Ordering::Relaxed);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|source| ScanError::ThreadPool { jobs, source })?;

    let mut modes: Vec<Mode> = entries.iter().map(|e| e.mode).collect();
    modes.sort();
    modes.dedup();

    // Every image once per (mode, configuration, variant), in parallel.
    let keys: Vec<(Mode, usize, Variant)> = modes
        .iter()
        .flat_map(|&m| {
            configs
                .iter()
                .enumerate()
                .flat_map(move |(ci, c)| Variant::matrix(m, c).into_iter().map(move |v| (m, ci, v)))
        })
        .collect();
    let built: Vec<Result<GuestImage, ProbeError>> = pool.install(|| {
        keys.par_iter()
            .map(|&(mode, ci, variant)| build_one(harness, mode, configs[ci], variant))
            .collect()
    });
    let mut matrices: BTreeMap<(Mode, usize), Matrix> = BTreeMap::new();
    for (&(mode, ci, variant), image) in keys.iter().zip(built) {
        matrices
            .entry((mode, ci))
            .or_insert_with(|| Matrix {
                mode,
                config: configs[ci],
                images: Vec::new(),
            })
            .images
            .push((variant, Arc::new(image?)));
    }

    // Work items in report order: mode, configuration, entry.
    let mut items: Vec<(Mode, usize, usize)> = Vec::new();
    for &mode in &modes {
        for ci in 0..configs.len() {
            items.extend(
                entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.mode == mode)
                    .map(|(ei, _)| (mode, ci, ei)),
            );
        }
    }

    let bar = progress_bar(items.len() as u64, progress);

    // Chunks of consecutive items of one mode and configuration: a worker
    // runs a chunk image by image, so an engine switches images once per
    // chunk, not once per run (Unicorn flushes its translations at a switch).
    let mut chunks: Vec<&[(Mode, usize, usize)]> = Vec::new();
    let mut rest = items.as_slice();
    while let Some(&(mode, ci, _)) = rest.first() {
        let same = rest
            .iter()
            .take(CHUNK)
            .take_while(|&&(m, c, _)| m == mode && c == ci)
            .count();
        let (head, tail) = rest.split_at(same);
        chunks.push(head);
        rest = tail;
    }

    let records: Result<Vec<Vec<Scanned>>, ScanError> = pool.install(|| {
        chunks
            .par_iter()
            .map(|chunk| {
                let (mode, ci, _) = chunk[0];
                let chunk_entries: Vec<&Entry> =
                    chunk.iter().map(|&(_, _, ei)| &entries[ei]).collect();
                let Some(matrix) = matrices.get(&(mode, ci)) else {
                    return Ok(Vec::new());
                };
                WORKER.with(|cell| -> Result<Vec<Scanned>, ScanError> {
                    let mut slot = cell.borrow_mut();
                    let mut prober = match slot.take() {
                        Some((id, p)) if id == scan_id => p,
                        _ => Prober::open(Arc::clone(&opener))
                            .map_err(|e| ScanError::OpenWorkerEngine(e.to_string()))?,
                    };
                    let runs = prober.probe_all(matrix, &chunk_entries);
                    if let Ok(r) = &runs {
                        let n: usize = r.iter().map(Vec::len).sum();
                        keep.runs.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let records = runs.map(|runs| {
                        chunk_entries
                            .iter()
                            .zip(runs)
                            .map(|(entry, runs)| {
                                bar.inc(1);
                                bar.set_message(entry.code.clone());
                                Scanned {
                                    record: prober.judge(matrix, entry, &runs),
                                    config: matrix.config,
                                    outcomes: if keep.outcomes {
                                        StateOutcome::of(&runs)
                                    } else {
                                        Vec::new()
                                    },
                                }
                            })
                            .collect()
                    });
                    *slot = Some((scan_id, prober));
                    records.map_err(|e| match e {
                        ProbeError::OpenEngine(e) => ScanError::OpenWorkerEngine(e.to_string()),
                        other => other.into(),
                    })
                })
            })
            .collect()
    });
    let records = records.map(|r| r.into_iter().flatten().collect());
    bar.finish_and_clear();
    records
}

thread_local! {
    /// The current worker thread's prober, tagged with its scan.
    static WORKER: RefCell<Option<(u64, Prober)>> = const { RefCell::new(None) };
}

/// Distinguishes scans, so a thread never reuses another scan's engine.
static NEXT_SCAN: AtomicU64 = AtomicU64::new(0);

/// Entries a worker takes at once (of one mode and configuration). An
/// engine switches images once per state per chunk (Unicorn rewrites the
/// pages that differ and flushes its translations), so larger chunks switch
/// less; a chunk's runs are kept until its entries are judged, which is
/// cheap since runs share their pages (some 20 MB for 256 entries).
const CHUNK: usize = 256;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::DocMeta;
    use crate::classify::Class;
    use crate::engine::fake::{obs, FakeEngine};
    use crate::machine::{EntryState, Prepared, SysRegs, TEST_RIP};
    use crate::observe::{Observation, Outcome, Side, SystemState, UserState};

    #[test]
    fn a_state_runs_at_its_sides_cpl() {
        let cfg = Config::UMIP_OFF;
        let at = |dpl: u8, side: Side, mode: Mode| {
            StateOutcome {
                variant: Variant {
                    supervisor_dpl: dpl,
                    ..Variant::base(&cfg)
                },
                side,
                repeat: 0,
                outcome: Outcome::Hang,
            }
            .cpl(mode)
        };
        assert_eq!(at(0, Side::Supervisor, Mode::Long64), 0);
        assert_eq!(at(1, Side::Supervisor, Mode::Long64), 1);
        assert_eq!(at(3, Side::Supervisor, Mode::Prot16), 3);
        assert_eq!(at(1, Side::User, Mode::Long64), 3);
        assert_eq!(at(0, Side::Supervisor, Mode::Real), 0);
    }

    /// Images with no memory: enough for the fake engine, which reads only the variant.
    pub(crate) struct TinyHarness;

    impl Harness for TinyHarness {
        fn build(&self, mode: Mode, config: Config, variant: Variant) -> GuestImage {
            GuestImage {
                mode,
                config,
                variant,
                memory: Vec::new(),
                sys: SysRegs::default(),
                supervisor: EntryState::default(),
                user: mode.is_protected().then(EntryState::default),
                seg_base: 0,
                code_phys: 0,
                data_phys: 0,
                stack_phys: 0,
                restore_pages: Vec::new(),
                table_pages: 0,
                tss_sel: 0,
                ldt_sel: 0,
            }
        }
    }

    fn entry(mode: Mode, mnemonic: &str, bytes: &[u8]) -> Entry {
        Entry {
            mode,
            code: mnemonic.to_ascii_uppercase(),
            mnemonic: mnemonic.into(),
            form: mnemonic.into(),
            bytes: bytes.to_vec(),
            setup: Default::default(),
            doc: DocMeta {
                is_privileged: mnemonic == "hlt",
                ..Default::default()
            },
        }
    }

    /// HLT (f4) traps at CPL 3; SGDT (0f 01 ..) stores a base that moves with the tables;
    /// everything else completes identically.
    pub(crate) fn rule(v: &Variant, side: Side, bytes: &[u8]) -> Observation {
        let sys = SystemState {
            cpl: if side == Side::User { 3 } else { 0 },
            ..Default::default()
        };
        let mut user = UserState {
            rip: TEST_RIP + bytes.len() as u64,
            ..Default::default()
        };
        match bytes {
            [0xf4] if side == Side::User => obs::trap(13, Some(0), sys),
            [0x0f, 0x01, ..] => {
                user.data = vec![u8::from(v.tables_moved); 4].into();
                obs::completed(sys, user)
            }
            _ => obs::completed(sys, user),
        }
    }

    fn scan(entries: &[Entry], fake: &FakeEngine, jobs: usize) -> Result<Vec<Record>, ScanError> {
        let f = fake.clone();
        run_scan_with(
            &TinyHarness,
            entries,
            &Config::DEFAULTS,
            move || Ok(Box::new(f.clone()) as Box<dyn Engine>),
            jobs,
            false,
        )
    }

    #[test]
    fn two_engines_are_compared_run_by_run_with_what_executed_each_side() {
        use crate::compare::{compare_runs, write_run_differences_md, EngineRuns};
        use crate::engine::Executor;
        let entries = vec![
            entry(Mode::Long64, "add", &[0x01, 0xc0]),
            entry(Mode::Long64, "hlt", &[0xf4]),
        ];
        // The second engine: HLT completes at CPL 3 in the base state, and
        // does not run the supervisor side at all.
        let other = FakeEngine::new(|v: &Variant, side: Side, bytes: &[u8]| {
            if side == Side::Supervisor {
                return Observation::outcome_only(
                    Outcome::NotSupported("user side only".into()),
                    SystemState::default(),
                );
            }
            if bytes == [0xf4] && !v.tables_moved {
                let sys = SystemState {
                    cpl: 3,
                    ..Default::default()
                };
                let user = UserState {
                    rip: TEST_RIP + 1,
                    ..Default::default()
                };
                return obs::completed(sys, user);
            }
            rule(v, side, bytes)
        });
        let kept = |fake: FakeEngine| {
            scan_inner(
                &TinyHarness,
                &entries,
                &[Config::UMIP_OFF],
                move || Ok(Box::new(fake.clone()) as Box<dyn Engine>),
                1,
                false,
                Keep {
                    runs: &AtomicU64::new(0),
                    outcomes: true,
                },
            )
            .expect("scan")
        };
        let (a, b) = (kept(FakeEngine::new(rule)), kept(other));
        // Only states that ran are kept: no supervisor side on the second.
        assert!(b[0].outcomes.iter().all(|o| o.side == Side::User));
        assert!(a[0].outcomes.iter().any(|o| o.side == Side::Supervisor));
        let emu = |_: Mode, _: u8| Executor::Emulator;
        let cpu = |_: Mode, _: u8| Executor::Hardware;
        let d = compare_runs(
            &EngineRuns {
                engine: "one",
                scanned: &a,
                executor: &emu,
            },
            &EngineRuns {
                engine: "two",
                scanned: &b,
                executor: &cpu,
            },
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].code, "HLT");
        assert_eq!(d[0].a.outcome, "#GP(0x0)");
        assert_eq!(d[0].b.outcome, "completed");
        assert_eq!(d[0].executors(), "emulator vs hardware");
        // Every user-side state but the moved tables, where both trap; one
        // difference for all of them.
        assert!(
            d[0].states.contains(&"base@cpl3".to_string()),
            "{:?}",
            d[0].states
        );
        assert!(!d[0]
            .states
            .iter()
            .any(|s| s.contains("cpl0") || s.starts_with("tables-moved")));
        let mut md = Vec::new();
        write_run_differences_md(&mut md, &[("one".into(), "two".into(), d)]).expect("md");
        let md = String::from_utf8(md).expect("utf-8");
        assert!(md.contains("## one vs two"), "{md}");
        assert!(md.contains("| emulator vs hardware | 1 |"), "{md}");
        assert!(
            md.contains("- 64 umip=off `hlt` (HLT): #GP(0x0) vs completed at base@cpl3"),
            "{md}"
        );
    }

    #[test]
    fn scan_classifies_every_entry_in_every_configuration_in_order() {
        let entries = vec![
            entry(Mode::Long64, "add", &[0x01, 0xc0]),
            entry(Mode::Prot32, "hlt", &[0xf4]),
            entry(Mode::Prot32, "sgdt", &[0x0f, 0x01, 0x05]),
            entry(Mode::Real, "hlt", &[0xf4]),
        ];
        let fake = FakeEngine::new(rule);
        let records = scan(&entries, &fake, 2).expect("scan");
        let got: Vec<(String, String, String, Class)> = records
            .iter()
            .map(|r| {
                (
                    r.mode.name().to_string(),
                    r.config.clone(),
                    r.mnemonic.clone(),
                    r.verdict.class,
                )
            })
            .collect();
        let want = [
            ("real", "umip=off", "hlt", Class::Innocuous),
            ("real", "umip=on", "hlt", Class::Innocuous),
            ("32", "umip=off", "hlt", Class::Privileged),
            ("32", "umip=off", "sgdt", Class::SensitiveUnprivileged),
            ("32", "umip=on", "hlt", Class::Privileged),
            ("32", "umip=on", "sgdt", Class::SensitiveUnprivileged),
            ("64", "umip=off", "add", Class::Innocuous),
            ("64", "umip=on", "add", Class::Innocuous),
        ];
        let want: Vec<(String, String, String, Class)> = want
            .iter()
            .map(|(m, c, n, k)| (m.to_string(), c.to_string(), n.to_string(), *k))
            .collect();
        assert_eq!(got, want);
        // Runs: per entry and configuration, every variant on each side plus 2 repeats
        // (real mode: one side).
        let per = |m: Mode, sides: usize| (Variant::matrix(m, &Config::UMIP_OFF).len() + 1) * sides;
        let expected = 2 * (per(Mode::Long64, 2) + 2 * per(Mode::Prot32, 2) + per(Mode::Real, 1));
        // Plus one NOP baseline per state and side in each of the 2 workers
        // that needed it.
        let states = |m: Mode, sides: usize| Variant::matrix(m, &Config::UMIP_OFF).len() * sides;
        let baselines =
            2 * (states(Mode::Long64, 2) + states(Mode::Prot32, 2) + states(Mode::Real, 1));
        let runs = fake.runs();
        assert!(
            (expected + baselines..=expected + 2 * baselines).contains(&runs),
            "{runs} runs: {expected} tests and {baselines} to {} baselines expected",
            2 * baselines
        );
        assert_eq!(records[0].verdict.runs, per(Mode::Real, 1));
        assert_eq!(records[0].engine, "fake");
        assert_eq!(records[3].bytes, "0f0105");
        assert_eq!(
            records[0].doc_disagreement, None,
            "real mode: no CPL 3 to trap"
        );
        assert_eq!(
            records[2].doc_disagreement, None,
            "HLT privileged as documented"
        );
    }

    #[test]
    fn scan_is_deterministic_across_job_counts() {
        let entries: Vec<Entry> = (0..20u8)
            .map(|i| entry(Mode::Prot16, "add", &[0x01, i]))
            .collect();
        let one = scan(&entries, &FakeEngine::new(rule), 1).expect("scan");
        let two = scan(&entries, &FakeEngine::new(rule), 2).expect("scan");
        assert_eq!(one, two);
        assert_eq!(one.len(), 40);
    }

    /// The fake engine, counting how often consecutive runs change image.
    struct Switches(FakeEngine, Arc<std::sync::Mutex<(Option<String>, u64)>>);

    impl Engine for Switches {
        fn name(&self) -> &'static str {
            self.0.name()
        }
        fn version(&self) -> String {
            self.0.version()
        }
        fn run(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
            let key = format!("{:?} {:?} {:?}", image.mode, image.config, image.variant);
            let mut g = self.1.lock().expect("lock");
            if g.0.as_deref() != Some(key.as_str()) {
                g.0 = Some(key);
                g.1 += 1;
            }
            drop(g);
            self.0.run(image, side, test)
        }
    }

    #[test]
    fn a_scan_switches_images_once_per_chunk_and_gives_the_same_records() {
        let n = 2 * CHUNK + 22;
        let mut entries: Vec<Entry> = (0..n)
            .map(|i| entry(Mode::Long64, "add", &[0x01, i as u8, (i >> 8) as u8]))
            .collect();
        entries.push(entry(Mode::Long64, "hlt", &[0xf4]));
        entries.push(entry(Mode::Prot32, "sgdt", &[0x0f, 0x01, 0x05]));
        let plain = scan(&entries, &FakeEngine::new(rule), 2).expect("scan");
        let fake = FakeEngine::new(rule);
        let count = Arc::new(std::sync::Mutex::new((None, 0)));
        let (f, c) = (fake.clone(), Arc::clone(&count));
        let counted = run_scan_with(
            &TinyHarness,
            &entries,
            &Config::DEFAULTS,
            move || Ok(Box::new(Switches(f.clone(), Arc::clone(&c))) as Box<dyn Engine>),
            1,
            false,
        )
        .expect("scan");
        assert_eq!(plain, counted);
        // 64-bit: 2 CHUNK + 23 entries (3 chunks), 32-bit: 1 chunk;
        // one switch per image and repeat of each chunk and configuration,
        // less one where a chunk starts with the base image its predecessor
        // (of the same mode and configuration) ended with.
        let images = |m: Mode| Variant::matrix(m, &Config::UMIP_OFF).len() as u64 + 1;
        let want = 2 * (3 * images(Mode::Long64) + images(Mode::Prot32) - 2);
        assert_eq!(count.lock().expect("lock").1, want);
    }

    #[test]
    fn an_engine_that_cannot_open_is_an_error() {
        let entries = vec![entry(Mode::Prot32, "hlt", &[0xf4])];
        let err = run_scan_with(
            &TinyHarness,
            &entries,
            &Config::DEFAULTS,
            || Err(EngineError::KvmUnavailable("/dev/kvm: no such file".into())),
            1,
            false,
        )
        .expect_err("no engine");
        assert!(matches!(err, ScanError::Probe(ProbeError::OpenEngine(_))));
        assert_eq!(
            err.to_string(),
            "cannot open the engine: kvm is not available: /dev/kvm: no such file"
        );
    }

    #[test]
    fn a_panicking_engine_becomes_engine_errors() {
        let entries = vec![entry(Mode::Prot32, "hlt", &[0xf4])];
        let fake = FakeEngine::new(|v: &Variant, side, bytes: &[u8]| {
            if v.tables_moved {
                panic!("boom");
            }
            rule(v, side, bytes)
        });
        let records = scan(&entries, &fake, 1).expect("scan");
        let v = &records[0].verdict;
        // The tables-moved pair could break the privilege: not judged.
        assert_eq!(v.class, Class::NotJudged, "{:?}", v.notes);
        assert_eq!(v.not_run, ["tables-moved@cpl0", "tables-moved@cpl3"]);
        assert_eq!(v.engine_level_runs, 2);
        assert_eq!(
            v.engine_results[0],
            "tables-moved@cpl0: engine-error: engine panicked: boom"
        );
    }

    #[test]
    fn a_verdict_claims_only_the_states_that_ran() {
        // An engine that cannot run ring compression (as KVM on PVM today).
        let fake = FakeEngine::new(|v: &Variant, side, bytes: &[u8]| {
            if v.supervisor_dpl != 0 {
                return Observation::outcome_only(
                    Outcome::NotSupported("no ring compression here".into()),
                    SystemState::default(),
                );
            }
            rule(v, side, bytes)
        });
        let entries = vec![
            entry(Mode::Prot32, "add", &[0x01, 0xc0]),
            entry(Mode::Prot32, "hlt", &[0xf4]),
            entry(Mode::Prot32, "sgdt", &[0x0f, 0x01, 0x05]),
        ];
        let records = scan(&entries, &fake, 1).expect("scan");
        let class = |m: &str| {
            let r = records
                .iter()
                .find(|r| r.mnemonic == m && r.config == "umip=off")
                .expect("record");
            (
                r.verdict.class,
                r.verdict.notes.clone(),
                r.verdict.not_run.clone(),
            )
        };
        // "Not sensitive anywhere" cannot stand on the states that ran.
        let (c, notes, not_run) = class("add");
        assert_eq!(c, Class::NotJudged);
        assert!(not_run.iter().all(|s| s.starts_with("ring")), "{not_run:?}");
        assert_eq!(not_run.len(), 4);
        assert!(
            notes.iter().any(|n| n
                .starts_with("not judged: 4 of 26 runs not run on this engine (ring1@cpl0")
                && n.contains("no ring compression here")
                && n.ends_with("otherwise than innocuous")),
            "{notes:?}"
        );
        // Privilege rests on the configuration-preserving pairs, which ran.
        assert_eq!(class("hlt").0, Class::Privileged);
        // A violation rests on evidence that ran.
        assert_eq!(class("sgdt").0, Class::SensitiveUnprivileged);
        // The same engine with every state: innocuous.
        let all = scan(&entries, &FakeEngine::new(rule), 1).expect("scan");
        assert_eq!(all[0].verdict.class, Class::Innocuous);
        assert!(all[0].verdict.not_run.is_empty());
        // Not judged counts for neither theorem.
        let rep = crate::report::Report::new("fake", "1", records);
        let t = &rep.header.theorems[0];
        assert_eq!(t.unjudged, 1);
    }

    #[test]
    fn an_image_that_cannot_be_built_is_an_error() {
        struct Broken;
        impl Harness for Broken {
            fn build(&self, mode: Mode, config: Config, variant: Variant) -> GuestImage {
                if variant.phys_moved {
                    panic!("no room for the page tables");
                }
                TinyHarness.build(mode, config, variant)
            }
        }
        let entries = vec![entry(Mode::Long64, "hlt", &[0xf4])];
        let fake = FakeEngine::new(rule);
        let f = fake.clone();
        let err = run_scan_with(
            &Broken,
            &entries,
            &[Config::UMIP_OFF],
            move || Ok(Box::new(f.clone()) as Box<dyn Engine>),
            1,
            false,
        )
        .expect_err("broken image");
        assert_eq!(
            err.to_string(),
            "cannot build the guest image for mode 64, umip=off, variant phys-moved: no room for the page tables"
        );
        assert_eq!(fake.runs(), 0, "nothing runs before every image exists");
    }

    #[test]
    fn plan_selects_by_mode_and_name() {
        let entries = vec![
            entry(Mode::Prot32, "hlt", &[0xf4]),
            entry(Mode::Long64, "hlt", &[0xf4]),
            entry(Mode::Prot32, "add", &[1, 0]),
        ];
        let plan = ScanPlan {
            modes: vec![Mode::Prot32],
            configs: vec![Config::UMIP_OFF],
            only: vec!["HLT".into()],
        };
        let sel = plan.select(&entries);
        assert_eq!(sel.len(), 1);
        assert_eq!(sel[0].mode, Mode::Prot32);
        let all = ScanPlan {
            only: Vec::new(),
            ..plan
        };
        assert_eq!(all.select(&entries).len(), 2);
    }
}
