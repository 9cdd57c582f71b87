//! Engine deviations the runs show against what the test itself promises,
//! beside the one [`crate::classify::engine_deviation`] finds (a non-branch
//! that completed off the sentinel):
//! - a segment load ([`crate::machine::SegLoad`]) that completed with
//!   another selector in the register than the one its operand holds at
//!   every documented reading ([`wrong_selector`]);
//! - an instruction that completed although the engine's own CPUID or XCR0
//!   says it must raise #UD ([`crate::engine::features::must_ud`]): the
//!   engine ran it as something else (Unicorn runs INCSSP and
//!   UMONITOR/UMWAIT/TPAUSE as fences, and VEX instructions with XCR0
//!   lacking AVX state).
//!
//! Such a record gets class `engine-deviation`: no verdict, never a
//! violator of either theorem, and a note saying why ([`flag`]).

use crate::catalog::Entry;
use crate::classify::{Class, Run, Verdict};
use crate::engine::features::{must_ud, EngineFeatures};
use crate::machine::{Region, SegLoad};
use crate::mode::Config;
use crate::observe::{Outcome, SEG_NAMES};

/// How a note of [`flag`] starts; [`reason`] reads it back.
const NOTE: &str = "engine deviation: ";
/// How a note of [`flag`] ends.
const NO_VERDICT: &str = ": no verdict";

/// The first completed run (in `runs` order) that left the register of
/// `load` with another selector than the one at its place in the run's
/// start, as `state: ss 0x0000, not 0x0088`. Runs without a start or an
/// after-state are not looked at. Pure.
pub fn wrong_selector(load: &SegLoad, config: &Config, runs: &[Run]) -> Option<String> {
    runs.iter().find_map(|r| {
        if !r.obs.outcome.is_completed() {
            return None;
        }
        let (start, after) = (r.start.as_ref()?, r.obs.after.as_ref()?);
        let page = match load.region {
            Region::Data => &start.data,
            Region::Stack => &start.stack,
        };
        let at = load.offset as usize;
        let want = u16::from_le_bytes([*page.get(at)?, *page.get(at + 1)?]);
        let got = after.segs.get(load.seg as usize)?.selector;
        (got != want).then(|| {
            let name = SEG_NAMES.get(load.seg as usize).copied().unwrap_or("?");
            format!(
                "engine loaded {name} {got:#06x} where its operand holds {want:#06x} at every documented reading ({})",
                r.state(config)
            )
        })
    })
}

/// The first completed run, as `state: completed`.
fn first_completed(runs: &[Run], config: &Config) -> Option<String> {
    runs.iter().find_map(|r| match r.obs.outcome {
        Outcome::Completed { .. } => {
            Some(format!("{}: {}", r.state(config), r.obs.outcome.short()))
        }
        _ => None,
    })
}

/// Makes `verdict` an engine deviation where its runs show one (see the
/// module docs); leaves verdicts that are already unjudged alone.
/// `features` is what the engine reported about itself in the entry's mode,
/// if known. Called by [`crate::classify::verdict`] before the verdict is final.
pub fn flag(
    verdict: &mut Verdict,
    entry: &Entry,
    config: &Config,
    runs: &[Run],
    features: Option<&EngineFeatures>,
) {
    if verdict.unjudged() {
        return;
    }
    let why = entry
        .setup
        .seg_load
        .and_then(|load| wrong_selector(&load, config, runs))
        .or_else(|| {
            let done = first_completed(runs, config)?;
            let why = must_ud(features?, entry)?;
            Some(format!(
                "engine completed it ({done}) although {why}: it must raise #UD"
            ))
        });
    if let Some(why) = why {
        mark(verdict, &why);
    }
}

/// Makes `v` an engine deviation for `why`.
fn mark(v: &mut Verdict, why: &str) {
    v.notes.push(format!("{NOTE}{why}{NO_VERDICT}"));
    v.class = Class::EngineDeviation;
    v.violates_pg = false;
    v.violates_hybrid = false;
}

/// The reason [`flag`] recorded in `v`'s notes, if it did.
pub fn reason(v: &Verdict) -> Option<&str> {
    v.notes
        .iter()
        .find_map(|n| n.strip_prefix(NOTE)?.strip_suffix(NO_VERDICT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    /// [`flag`] on a record's verdict, and the record made again from it.
    fn flag_record(
        r: &mut Record,
        entry: &Entry,
        config: &Config,
        runs: &[Run],
        features: Option<&EngineFeatures>,
    ) {
        let mut v = r.verdict.clone();
        flag(&mut v, entry, config, runs, features);
        *r = Record::new(&r.engine, &r.engine_version, entry, config, v);
    }
    use crate::catalog::DocMeta;
    use crate::engine::fake::obs;
    use crate::machine::{Setup, Variant};
    use crate::mode::Mode;
    use crate::observe::{Observation, Side, SystemState, UserState};

    const CFG: Config = Config::UMIP_OFF;

    /// LSS in 64-bit mode: SS loaded from data[0x108..0x10a].
    const LSS: SegLoad = SegLoad {
        seg: 1,
        region: Region::Data,
        offset: 0x108,
    };

    fn lss_entry() -> Entry {
        Entry {
            mode: Mode::Long64,
            code: "Lss_r64_m1664".into(),
            mnemonic: "lss".into(),
            form: "lss rax,[8100h]".into(),
            bytes: vec![0x48, 0x0F, 0xB2, 0x05, 0xF8, 0x0F, 0, 0],
            setup: Setup {
                seg_load: Some(LSS),
                ..Setup::default()
            },
            doc: DocMeta {
                flow_control: "Next".into(),
                ..DocMeta::default()
            },
        }
    }

    /// A run on `side` that starts with `sel` at data[0x108] and leaves
    /// `loaded` in SS.
    fn run(side: Side, sel: u16, loaded: u16) -> Run {
        let before = SystemState::default();
        let mut after = before.clone();
        after.segs[1].selector = loaded;
        let mut data = vec![0; 0x200];
        data[0x108..0x10a].copy_from_slice(&sel.to_le_bytes());
        let start = UserState {
            data: data.into(),
            ..UserState::default()
        };
        let o: Observation = obs::completed_changing(before, after, start.clone());
        Run {
            start: Some(start),
            ..Run::new(Variant::base(&Config::UMIP_OFF), side, 0, o)
        }
    }

    fn record_of(runs: &[Run]) -> Record {
        let v = crate::classify::classify(Mode::Long64, &Config::UMIP_OFF, runs);
        Record::new("fake", "fake 1", &lss_entry(), &Config::UMIP_OFF, v)
    }

    #[test]
    fn a_load_of_another_selector_than_every_reading_gives_is_an_engine_deviation() {
        // The intended selectors: no deviation, the verdict stands.
        let good = [
            run(Side::Supervisor, 0x88, 0x88),
            run(Side::User, 0x33, 0x33),
        ];
        let mut r = record_of(&good);
        let before = r.clone();
        flag_record(&mut r, &lss_entry(), &CFG, &good, None);
        assert_eq!(r, before);
        assert_eq!(wrong_selector(&LSS, &CFG, &good), None);
        // A null SS at CPL 0 (m16:32 read from an m16:64-only layout), a
        // fault at CPL 3: once "privileged", now no verdict.
        let mut trap = run(Side::User, 0x33, 0x33);
        trap.obs = obs::trap(13, None, SystemState::default());
        let bad = [run(Side::Supervisor, 0x88, 0), trap];
        let mut r = record_of(&bad);
        assert_eq!(r.verdict.class, Class::Privileged);
        flag_record(&mut r, &lss_entry(), &CFG, &bad, None);
        assert_eq!(r.verdict.class, Class::EngineDeviation);
        assert!(!r.verdict.violates_pg && !r.verdict.violates_hybrid);
        assert_eq!(r.doc_disagreement, None);
        let why = "engine loaded ss 0x0000 where its operand holds 0x0088 at every documented reading (base@cpl0)";
        assert_eq!(reason(&r.verdict), Some(why));
        assert_eq!(r.deviation.as_deref(), Some(why));
        assert!(r.verdict.notes.iter().any(|n| n.ends_with("no verdict")));
        // Flagging twice changes nothing more.
        let once = r.clone();
        flag_record(&mut r, &lss_entry(), &CFG, &bad, None);
        assert_eq!(r, once);
    }

    #[test]
    fn a_completion_the_engine_cpuid_forbids_is_an_engine_deviation() {
        let e = crate::catalog::build(Mode::Long64)
            .find_code("Umonitor_r64")
            .first()
            .map(|e| (*e).clone())
            .expect("umonitor");
        let features = EngineFeatures {
            max_basic: 7,
            leaves: [((1, 0), [0; 4]), ((7, 0), [0; 4])].into_iter().collect(),
            ..EngineFeatures::default()
        };
        let runs = [
            Run::new(
                Variant::base(&Config::UMIP_OFF),
                Side::User,
                0,
                obs::completed(SystemState::default(), UserState::default()),
            ),
            Run::new(
                Variant::base(&Config::UMIP_OFF),
                Side::Supervisor,
                0,
                obs::completed(SystemState::default(), UserState::default()),
            ),
        ];
        let v = crate::classify::classify(Mode::Long64, &Config::UMIP_OFF, &runs);
        let mut r = Record::new("fake", "fake 1", &e, &Config::UMIP_OFF, v);
        assert_eq!(r.verdict.class, Class::Innocuous);
        // Unknown features: nothing decided.
        let mut unknown = r.clone();
        flag_record(&mut unknown, &e, &CFG, &runs, None);
        assert_eq!(unknown.verdict.class, Class::Innocuous);
        flag_record(&mut r, &e, &CFG, &runs, Some(&features));
        assert_eq!(r.verdict.class, Class::EngineDeviation);
        let why = r.deviation.as_deref().expect("deviation");
        assert!(
            why.starts_with(
                "engine completed it (base@cpl3: completed) although its CPUID lacks WAITPKG"
            ),
            "{why}"
        );
        assert!(why.ends_with(": it must raise #UD"), "{why}");
        // A run that traps is no completion: nothing to flag.
        let trapped: Vec<Run> = runs
            .iter()
            .cloned()
            .map(|mut r| {
                r.obs = obs::trap(6, None, SystemState::default());
                r
            })
            .collect();
        let v = crate::classify::classify(Mode::Long64, &Config::UMIP_OFF, &trapped);
        let mut r = Record::new("fake", "fake 1", &e, &Config::UMIP_OFF, v);
        flag_record(&mut r, &e, &CFG, &trapped, Some(&features));
        assert_eq!(r.verdict.class, Class::Unsupported);
    }
}
