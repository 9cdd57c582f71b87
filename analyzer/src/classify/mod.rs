//! The classifier: a pure function from the runs of one encoding in one
//! configuration to a [`Verdict`] with its evidence (pg-model section 3).
//!
//! Choices where the model is silent, fixed here and tested below:
//! - A [`Outcome::Transfer`] (INT n, SYSCALL, SYSENTER, a call gate reaching a
//!   harness entry point) means the supervisor, i.e. a VMM, received control.
//!   It is treated like a trap: it counts as "trap-like" for privilege and
//!   "always traps", and a transferring run is **never** evidence of control
//!   sensitivity, although the CPL changed on the way.
//! - `always_traps` and `unsupported` are not exclusive: an instruction that
//!   raises #UD in every run is both (UD2 cannot be told from an opcode the
//!   engine lacks); its class is `unsupported`.
//! - Runs with an engine-level outcome (hang, shutdown, engine error, not
//!   supported) take part in no comparison; they are listed in
//!   [`Verdict::engine_results`]. Only if every run is engine-level is the
//!   class `engine-error`.
//! - Behavior comparisons (location, mode) use repeat 0 only, and are skipped
//!   altogether for a nondeterministic instruction.
//! - User sensitive: control sensitive in a CPL 3 run, location sensitive
//!   between two CPL 3 runs, or mode sensitive (the pair always has a CPL 3
//!   state), following P&G's "sensitive in some state with M = user".
//!
//! One file per definition: [`privilege`], [`control`], [`nondeterminism`],
//! [`behavior`], [`coverage`] and [`theorem`] (the class and the theorems'
//! membership); [`verdict`] is the one function that makes a verdict final,
//! with the engine deviations of [`deviation`] applied.

use crate::machine::{StateLabel, Variant};
use crate::mode::{Config, Mode};
use crate::observe::{diff_effects, Change, Effects, Outcome, Part, Side};
pub use crate::probe::Run;
use serde::{Deserialize, Serialize};
use std::cell::OnceCell;
use std::fmt;
use std::str::FromStr;

mod behavior;
mod control;
pub mod coverage;
pub mod deviation;
mod nondeterminism;
mod privilege;
pub mod theorem;

pub use deviation::engine_deviation;

/// The single primary label of a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// #UD in every run.
    Unsupported,
    /// Trap or transfer in every run: the VMM gets control anyway.
    AlwaysTraps,
    /// Every run ended at engine level; no verdict.
    EngineError,
    /// The engine executed a different instruction (it completed a
    /// non-branch off the sentinel); no verdict on this one.
    EngineDeviation,
    /// States that could decide the verdict did not run on this engine
    /// ([`coverage`]); no verdict.
    NotJudged,
    /// Privileged (possibly also sensitive, which is what P&G require).
    Privileged,
    /// Sensitive and not privileged: a P&G violation.
    SensitiveUnprivileged,
    /// Not sensitive, deterministic.
    Innocuous,
    /// Innocuous otherwise, but two runs of the same state differ.
    Nondeterministic,
}

impl Class {
    pub const ALL: [Class; 9] = [
        Class::Unsupported,
        Class::AlwaysTraps,
        Class::EngineError,
        Class::EngineDeviation,
        Class::NotJudged,
        Class::Privileged,
        Class::SensitiveUnprivileged,
        Class::Innocuous,
        Class::Nondeterministic,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Class::Unsupported => "unsupported",
            Class::AlwaysTraps => "always-traps",
            Class::EngineError => "engine-error",
            Class::EngineDeviation => "engine-deviation",
            Class::NotJudged => "not-judged",
            Class::Privileged => "privileged",
            Class::SensitiveUnprivileged => "sensitive-unprivileged",
            Class::Innocuous => "innocuous",
            Class::Nondeterministic => "nondeterministic",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Class::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown class '{s}'"))
    }
}

/// What a piece of evidence shows, in the order a verdict lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvidenceKind {
    /// CPL 3 traps and CPL 0 does not, in every comparable pair.
    Privileged,
    /// A comparable pair where CPL 3 does not trap, or CPL 0 traps too.
    NotPrivileged,
    /// A completing run changed R or M.
    Control,
    /// Two states of one CPL differing in location give different results.
    Location,
    /// CPL 0 and CPL 3 of one state give different results.
    Mode,
    /// Two runs of the same state differ.
    Nondeterministic,
}

impl EvidenceKind {
    pub fn name(self) -> &'static str {
        match self {
            EvidenceKind::Privileged => "privileged",
            EvidenceKind::NotPrivileged => "not-privileged",
            EvidenceKind::Control => "control",
            EvidenceKind::Location => "location",
            EvidenceKind::Mode => "mode",
            EvidenceKind::Nondeterministic => "nondeterministic",
        }
    }
    /// Evidence of sensitivity (control, location, mode).
    pub fn is_sensitivity(self) -> bool {
        matches!(
            self,
            EvidenceKind::Control | EvidenceKind::Location | EvidenceKind::Mode
        )
    }
}

impl fmt::Display for EvidenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One concrete piece of evidence: a state (or a pair) and the outcomes that decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub kind: EvidenceKind,
    pub a: StateLabel,
    pub b: Option<StateLabel>,
    pub outcome_a: String,
    pub outcome_b: Option<String>,
    pub detail: String,
}

impl fmt::Display for Evidence {
    /// `privileged: base@cpl0 completed vs base@cpl3 #GP(0x0)`, then ` (detail)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {}", self.kind, self.a, self.outcome_a)?;
        if let Some(b) = &self.b {
            write!(f, " vs {b}")?;
            if let Some(ob) = &self.outcome_b {
                write!(f, " {ob}")?;
            }
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// The verdict on one encoding in one configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub class: Class,
    pub privileged: bool,
    pub control_sensitive: bool,
    pub behavior_sensitive: bool,
    pub location_sensitive: bool,
    pub mode_sensitive: bool,
    pub user_sensitive: bool,
    /// Sensitive, not privileged, not always trapping: breaks theorem 1.
    pub violates_pg: bool,
    /// User sensitive, not privileged, not always trapping: breaks theorem 3.
    pub violates_hybrid: bool,
    pub nondeterministic: bool,
    pub always_traps: bool,
    pub unsupported: bool,
    /// Parts of R or M that a completing run changed (`system flags`, `msr`, ...),
    /// in the order of [`Part::ALL`].
    pub changed: Vec<Part>,
    /// What decided the verdict, in a fixed order: privilege, control,
    /// location, mode, nondeterminism; within a kind, first in matrix order.
    pub evidence: Vec<Evidence>,
    /// Engine-level outcomes, `state: outcome`, in matrix order.
    pub engine_results: Vec<String>,
    /// Number of runs and of engine-level runs among them.
    pub runs: usize,
    pub engine_level_runs: usize,
    /// Remarks on how the verdict was reached (real mode, no comparable pair, ...).
    pub notes: Vec<String>,
    /// The first completing run that stopped somewhere other than the
    /// sentinel right after the instruction (`state: completed@0x...`).
    #[serde(default)]
    pub off_sentinel: Option<String>,
    /// The runs the engine could not run (not supported, engine error), by
    /// state, in matrix order: the verdict rests on the others ([`coverage`]).
    #[serde(default)]
    pub not_run: Vec<String>,
}

impl Verdict {
    pub fn sensitive(&self) -> bool {
        self.control_sensitive || self.behavior_sensitive
    }
    /// Neither a verdict nor a theorem counts it: every run ended at engine
    /// level, the engine executed a different instruction, or states that
    /// could decide it did not run.
    pub fn unjudged(&self) -> bool {
        matches!(
            self.class,
            Class::EngineError | Class::EngineDeviation | Class::NotJudged
        )
    }
}

/// A run in matrix order, with what the definitions ask of it computed once.
struct Ordered<'r> {
    run: &'r Run,
    label: StateLabel,
    /// What the run changed in R and M ([`Run::changed_r`]), once.
    changed_r: OnceCell<Vec<Change>>,
    /// Its user-visible effects ([`Run::effects`]), once: a run takes part
    /// in many behavior comparisons.
    effects: OnceCell<Option<Effects>>,
}

impl Ordered<'_> {
    fn changed_r(&self) -> &[Change] {
        self.changed_r.get_or_init(|| self.run.changed_r())
    }
    fn effects(&self) -> Option<&Effects> {
        self.effects.get_or_init(|| self.run.effects()).as_ref()
    }
}

/// The user-visible differences between two completed runs
/// ([`crate::probe::diff_results`]), from their effects computed once.
fn diff_runs(a: &Ordered<'_>, b: &Ordered<'_>) -> Vec<String> {
    diff_effects(&a.run.obs, a.effects(), &b.run.obs, b.effects())
}

fn label(run: &Run, config: &Config) -> StateLabel {
    StateLabel {
        variant: run.variant.name(config),
        side: run.side,
    }
}

fn label_text(o: &Ordered<'_>) -> String {
    if o.run.repeat == 0 {
        o.label.to_string()
    } else {
        format!("{} (repeat {})", o.label, o.run.repeat)
    }
}

fn evidence(
    kind: EvidenceKind,
    a: &Ordered<'_>,
    b: Option<&Ordered<'_>>,
    detail: String,
) -> Evidence {
    Evidence {
        kind,
        a: a.label.clone(),
        b: b.map(|b| b.label.clone()),
        outcome_a: a.run.obs.outcome.short(),
        outcome_b: b.map(|b| b.run.obs.outcome.short()),
        detail,
    }
}

/// The first few user-visible differences, joined for evidence.
fn first_diffs(d: &[String]) -> String {
    let mut s = d.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if d.len() > 3 {
        s.push_str(&format!(", +{} more", d.len() - 3));
    }
    s
}

fn is_ud(o: &Outcome) -> bool {
    matches!(o, Outcome::Trap { vector: 6, .. })
}

/// The runs of one classification in matrix order: repeat, then the
/// variant's place in [`Variant::matrix`], then the side.
struct Runs<'r> {
    ordered: Vec<Ordered<'r>>,
}

impl<'r> Runs<'r> {
    fn new(config: &Config, matrix: &[Variant], runs: &'r [Run]) -> Runs<'r> {
        let pos = |v: &Variant| matrix.iter().position(|m| m == v).unwrap_or(matrix.len());
        let mut ordered: Vec<Ordered<'r>> = runs
            .iter()
            .map(|run| Ordered {
                run,
                label: label(run, config),
                changed_r: OnceCell::new(),
                effects: OnceCell::new(),
            })
            .collect();
        ordered.sort_by(|x, y| {
            (x.run.repeat, pos(&x.run.variant), x.run.variant, x.run.side).cmp(&(
                y.run.repeat,
                pos(&y.run.variant),
                y.run.variant,
                y.run.side,
            ))
        });
        Runs { ordered }
    }

    fn find(&self, v: &Variant, side: Side, repeat: u8) -> Option<&Ordered<'r>> {
        self.ordered
            .iter()
            .find(|o| o.run.variant == *v && o.run.side == side && o.run.repeat == repeat)
    }
}

/// The final verdict on one catalog entry in one configuration from its
/// runs: [`classify`], then the engine deviations the runs show: another
/// length ([`engine_deviation`], from the instruction's iced flow control),
/// a load of another selector or a completion the engine's own CPUID or
/// XCR0 forbids ([`crate::deviation::flag`], with the engine's `features`
/// in the entry's mode where known). The probe layer calls this and
/// nothing after it changes the verdict (the facts table only annotates the
/// record).
pub fn verdict(
    entry: &crate::catalog::Entry,
    config: &Config,
    runs: &[Run],
    features: Option<&crate::engine::features::EngineFeatures>,
) -> Verdict {
    let mut v = classify(entry.mode, config, runs);
    engine_deviation(&mut v, &entry.doc.flow_control);
    crate::deviation::flag(&mut v, entry, config, runs, features);
    v
}

/// Classifies one encoding in one configuration from its runs (pg-model
/// section 3), each definition in its own module, then checks that the
/// class stands on the states that ran ([`coverage`]).
pub fn classify(mode: Mode, config: &Config, runs: &[Run]) -> Verdict {
    let matrix = Variant::matrix(mode, config);
    let all = Runs::new(config, &matrix, runs);
    let mut notes = Vec::new();
    let mut evidence_out = Vec::new();
    let engine_results: Vec<String> = all
        .ordered
        .iter()
        .filter(|o| o.run.obs.outcome.is_engine_level())
        .map(|o| format!("{}: {}", label_text(o), o.run.obs.outcome.short()))
        .collect();
    let valid: Vec<&Ordered<'_>> = all
        .ordered
        .iter()
        .filter(|o| !o.run.obs.outcome.is_engine_level())
        .collect();

    let off_sentinel = valid.iter().find_map(|o| match o.run.obs.outcome {
        Outcome::Completed {
            at_sentinel: false, ..
        } => Some(format!("{}: {}", label_text(o), o.run.obs.outcome.short())),
        _ => None,
    });

    let always_traps = !valid.is_empty() && valid.iter().all(|o| o.run.obs.outcome.is_trap_like());
    let unsupported = !valid.is_empty() && valid.iter().all(|o| is_ud(&o.run.obs.outcome));
    if unsupported {
        notes.push(
            "#UD in every run: the engine or CPU lacks it, or it is an undefined opcode (UD0/UD1/UD2)"
                .into(),
        );
    }

    let p = privilege::judge(mode, config, &matrix, &all);
    evidence_out.extend(p.evidence);
    notes.extend(p.note);

    let c = control::judge(&valid);
    evidence_out.extend(c.evidence);
    let control_sensitive = !c.changed.is_empty();

    let n = nondeterminism::judge(&valid, &all);
    evidence_out.extend(n.evidence);

    let b = if n.nondeterministic {
        notes.push("nondeterministic: excluded from behavior comparisons".into());
        behavior::Behavior {
            location: false,
            mode: false,
            location_user: false,
            evidence: Vec::new(),
        }
    } else {
        behavior::judge(&valid)
    };
    evidence_out.extend(b.evidence);
    let behavior_sensitive = b.location || b.mode;
    let user_sensitive = c.user || b.location_user || b.mode;

    // Evidence in a fixed order of kinds (stable: matrix order within a kind).
    evidence_out.sort_by_key(|e| e.kind);

    let (class, violates_pg, violates_hybrid) = theorem::judge(&theorem::Findings {
        any_valid: !valid.is_empty(),
        unsupported,
        always_traps,
        privileged: p.privileged,
        sensitive: control_sensitive || behavior_sensitive,
        user_sensitive,
        nondeterministic: n.nondeterministic,
    });
    let (class, violates_pg, violates_hybrid) = coverage::apply(
        class,
        (violates_pg, violates_hybrid),
        &all,
        runs.len(),
        config,
        &mut notes,
    );

    let not_run = all
        .ordered
        .iter()
        .filter(|o| coverage::is_not_run(&o.run.obs.outcome))
        .map(|o| label_text(o))
        .collect();
    Verdict {
        class,
        privileged: p.privileged,
        control_sensitive,
        behavior_sensitive,
        location_sensitive: b.location,
        mode_sensitive: b.mode,
        user_sensitive,
        violates_pg,
        violates_hybrid,
        nondeterministic: n.nondeterministic,
        always_traps,
        unsupported,
        changed: c.changed,
        evidence: evidence_out,
        engine_results,
        runs: runs.len(),
        engine_level_runs: runs.len() - valid.len(),
        notes,
        off_sentinel,
        not_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::obs;
    use crate::observe::{Observation, SystemState, UserState};

    const IF: u64 = 1 << 9;

    fn sys(side: Side) -> SystemState {
        SystemState {
            cpl: if side == Side::User { 3 } else { 0 },
            sys_flags: IF,
            ..Default::default()
        }
    }

    fn user() -> UserState {
        UserState {
            gprs: [7; 16],
            rip: 0x7102,
            flags: 0x2,
            data: vec![0xaa; 32].into(),
            stack: vec![0x55; 32].into(),
        }
    }

    /// Every state of the matrix on every side that exists, plus the base
    /// state's repeat 1, with the outcome `f` gives.
    fn runs_of(
        mode: Mode,
        config: &Config,
        f: impl Fn(&Variant, Side, u8) -> Observation,
    ) -> Vec<Run> {
        let sides: &[Side] = if mode.is_protected() {
            &Side::BOTH
        } else {
            &[Side::Supervisor]
        };
        let mut runs = Vec::new();
        for v in Variant::matrix(mode, config) {
            for &side in sides {
                runs.push(Run::new(v, side, 0, f(&v, side, 0)));
            }
        }
        let base = Variant::base(config);
        for &side in sides {
            runs.push(Run::new(base, side, 1, f(&base, side, 1)));
        }
        runs
    }

    const CFG: Config = Config::UMIP_OFF;

    #[test]
    fn innocuous_is_innocuous_in_every_variant() {
        for mode in Mode::ALL {
            let runs = runs_of(mode, &CFG, |_, side, _| obs::completed(sys(side), user()));
            let v = classify(mode, &CFG, &runs);
            assert_eq!(v.class, Class::Innocuous, "{mode}: {v:?}");
            assert!(!v.control_sensitive && !v.behavior_sensitive && !v.user_sensitive);
            assert!(!v.privileged && !v.violates_pg && !v.violates_hybrid && !v.nondeterministic);
            assert!(v.changed.is_empty() && v.engine_results.is_empty());
            if mode.is_protected() {
                assert_eq!(v.evidence.len(), 1);
                assert_eq!(v.evidence[0].kind, EvidenceKind::NotPrivileged);
                assert_eq!(v.evidence[0].to_string(), "not-privileged: base@cpl0 completed vs base@cpl3 completed (the CPL 3 run does not trap)");
            }
        }
    }

    #[test]
    fn a_non_branch_completing_off_the_sentinel_is_an_engine_deviation() {
        let runs = runs_of(Mode::Prot32, &CFG, |_, side, _| {
            let mut o = obs::completed(sys(side), user());
            o.outcome = Outcome::Completed {
                rip: 0x7105,
                at_sentinel: false,
            };
            o
        });
        let v = classify(Mode::Prot32, &CFG, &runs);
        assert_eq!(
            v.off_sentinel.as_deref(),
            Some("base@cpl0: completed@0x7105")
        );
        let mut int = v.clone();
        engine_deviation(&mut int, "Interrupt");
        assert_eq!(int.class, Class::EngineDeviation);
        // A branch may land on a landing pad: nothing changes.
        let mut branch = v.clone();
        engine_deviation(&mut branch, "UnconditionalBranch");
        assert_eq!(branch, v);
        // A non-branch that did so ran another instruction.
        let mut next = v.clone();
        next.violates_pg = true;
        next.violates_hybrid = true;
        engine_deviation(&mut next, "Next");
        assert_eq!(next.class, Class::EngineDeviation);
        assert!(next.unjudged() && !next.violates_pg && !next.violates_hybrid);
        assert!(next
            .notes
            .iter()
            .any(|n| n.contains("different instruction")));
        // At the sentinel: no deviation.
        let runs = runs_of(Mode::Prot32, &CFG, |_, side, _| {
            obs::completed(sys(side), user())
        });
        let mut v = classify(Mode::Prot32, &CFG, &runs);
        assert_eq!(v.off_sentinel, None);
        engine_deviation(&mut v, "Next");
        assert_eq!(v.class, Class::Innocuous);
    }

    #[test]
    fn hlt_like_is_privileged() {
        let runs = runs_of(Mode::Prot32, &CFG, |_, side, _| match side {
            Side::Supervisor => obs::completed(sys(side), user()),
            Side::User => obs::trap(13, Some(0), sys(side)),
        });
        let v = classify(Mode::Prot32, &CFG, &runs);
        assert_eq!(v.class, Class::Privileged);
        assert!(v.privileged && !v.violates_pg && !v.always_traps);
        assert_eq!(v.evidence[0].to_string(), "privileged: base@cpl0 completed vs base@cpl3 #GP(0x0) (CPL 3 traps, CPL 0 does not, in all 9 comparable pair(s))");
    }

    #[test]
    fn privileged_ignores_memory_traps_but_one_breaking_pair_breaks_it() {
        let cfg = CFG;
        let moved = Variant {
            tables_moved: true,
            ..Variant::base(&cfg)
        };
        // A #PF at CPL 0 in one pair is ignored.
        let runs = runs_of(Mode::Prot32, &cfg, |v, side, _| match side {
            Side::Supervisor if *v == moved => obs::trap(14, Some(0), sys(side)),
            Side::Supervisor => obs::completed(sys(side), user()),
            Side::User => obs::trap(13, Some(0), sys(side)),
        });
        assert!(classify(Mode::Prot32, &cfg, &runs).privileged);
        // CPL 3 completing in one pair breaks it; the evidence names that pair.
        let runs = runs_of(Mode::Prot32, &cfg, |v, side, _| match side {
            Side::User if *v != moved => obs::trap(13, Some(0), sys(side)),
            _ => obs::completed(sys(side), user()),
        });
        let v = classify(Mode::Prot32, &cfg, &runs);
        assert!(!v.privileged);
        let e = &v.evidence[0];
        assert_eq!(e.kind, EvidenceKind::NotPrivileged);
        assert_eq!(e.a.variant, "tables-moved");
        assert_eq!(e.outcome_b.as_deref(), Some("completed"));
    }

    #[test]
    fn popf_like_is_control_and_mode_sensitive_violator() {
        // POPF popping IF=0: CPL 0 clears IF, CPL 3 silently keeps it; the
        // popped flags become visible differently (here: rax differs).
        let runs = runs_of(Mode::Prot32, &CFG, |_, side, _| {
            let before = sys(side);
            match side {
                Side::Supervisor => {
                    let after = SystemState {
                        sys_flags: 0,
                        ..before.clone()
                    };
                    obs::completed_changing(
                        before,
                        after,
                        UserState {
                            flags: 0x2,
                            ..user()
                        },
                    )
                }
                Side::User => obs::completed(
                    before,
                    UserState {
                        flags: 0x1,
                        ..user()
                    },
                ),
            }
        });
        let v = classify(Mode::Prot32, &CFG, &runs);
        assert_eq!(v.class, Class::SensitiveUnprivileged);
        assert!(v.control_sensitive && v.mode_sensitive && v.behavior_sensitive);
        assert!(!v.location_sensitive && !v.privileged);
        assert!(v.violates_pg && v.violates_hybrid && v.user_sensitive);
        assert_eq!(v.changed, vec![Part::SystemFlags]);
        let kinds: Vec<&str> = v.evidence.iter().map(|e| e.kind.name()).collect();
        assert_eq!(kinds, ["not-privileged", "control", "mode"]);
        assert_eq!(v.evidence[1].a.to_string(), "base@cpl0");
        assert!(v.evidence[1].detail.starts_with("system flags: IF=1"));
        assert_eq!(v.evidence[2].detail, "flags 0x2 vs 0x1");
    }

    #[test]
    fn sgdt_like_is_location_sensitive() {
        let cfg = CFG;
        let runs = runs_of(Mode::Prot32, &cfg, |v, side, _| {
            let mut u = user();
            if v.tables_moved {
                u.data[2] = 0x10; // the stored GDT base differs
            }
            obs::completed(sys(side), u)
        });
        let v = classify(Mode::Prot32, &cfg, &runs);
        assert_eq!(v.class, Class::SensitiveUnprivileged);
        assert!(v.location_sensitive && !v.mode_sensitive && !v.control_sensitive);
        assert!(v.user_sensitive && v.violates_pg && v.violates_hybrid);
        let loc: Vec<&Evidence> = v
            .evidence
            .iter()
            .filter(|e| e.kind == EvidenceKind::Location)
            .collect();
        assert_eq!(loc.len(), 2, "one per side");
        assert_eq!(loc[0].to_string(), "location: base@cpl0 completed vs tables-moved@cpl0 completed (data[0x2..] aaaaaaaaaaaaaaaa vs 10aaaaaaaaaaaaaa)");
        assert_eq!(loc[1].a.side, Side::User);
    }

    #[test]
    fn sgdt_like_under_umip_is_privileged_and_sensitive() {
        let cfg = Config::UMIP_ON;
        let runs = runs_of(Mode::Long64, &cfg, |v, side, _| match side {
            Side::User => obs::trap(13, Some(0), sys(side)),
            Side::Supervisor => {
                let mut u = user();
                u.data[0] = u8::from(v.tables_moved);
                obs::completed(sys(side), u)
            }
        });
        let v = classify(Mode::Long64, &cfg, &runs);
        assert_eq!(v.class, Class::Privileged);
        assert!(v.location_sensitive && !v.user_sensitive && !v.violates_pg && !v.violates_hybrid);
    }

    #[test]
    fn rdtsc_like_is_nondeterministic_not_sensitive() {
        let runs = runs_of(Mode::Long64, &CFG, |v, side, repeat| {
            let mut u = user();
            // The counter differs in every run, including across variants.
            u.gprs[0] = repeat as u64 * 1000 + v.name(&CFG).len() as u64;
            obs::completed(sys(side), u)
        });
        let v = classify(Mode::Long64, &CFG, &runs);
        assert_eq!(v.class, Class::Nondeterministic);
        assert!(v.nondeterministic && !v.behavior_sensitive && !v.violates_pg);
        let e = v
            .evidence
            .iter()
            .find(|e| e.kind == EvidenceKind::Nondeterministic)
            .expect("evidence");
        assert_eq!(e.a.to_string(), "base@cpl0");
        assert_eq!(e.outcome_b.as_deref(), Some("completed (repeat 1)"));
        assert_eq!(
            e.detail, "general registers differ",
            "the values are not in the evidence: reports stay reproducible"
        );
        // Which registers differ is not in it either: RDTSC's RDX changes
        // only when RAX wraps between the two runs.
        let wrapped = runs_of(Mode::Long64, &CFG, |v, side, repeat| {
            let mut u = user();
            u.gprs[0] = repeat as u64 * 1000 + v.name(&CFG).len() as u64;
            u.gprs[2] = repeat as u64;
            obs::completed(sys(side), u)
        });
        let w = classify(Mode::Long64, &CFG, &wrapped);
        assert_eq!(w.evidence, v.evidence);
    }

    #[test]
    fn ud2_like_is_unsupported_and_always_traps() {
        let runs = runs_of(Mode::Prot16, &CFG, |_, side, _| {
            obs::trap(6, None, sys(side))
        });
        let v = classify(Mode::Prot16, &CFG, &runs);
        assert_eq!(v.class, Class::Unsupported);
        assert!(v.unsupported && v.always_traps && !v.privileged && !v.violates_pg);
    }

    #[test]
    fn int_n_like_transfer_always_traps_and_is_not_control_sensitive() {
        use crate::observe::TransferKind;
        let runs = runs_of(Mode::Prot32, &CFG, |_, side, _| {
            let before = sys(side);
            let after = SystemState {
                cpl: 0,
                sys_flags: 0,
                ..before.clone()
            };
            Observation {
                outcome: Outcome::Transfer {
                    kind: TransferKind::Interrupt(0x80),
                    rip: 0x5200,
                    cpl: Some(0),
                },
                before,
                after: Some(after),
                user: None,
            }
        });
        let v = classify(Mode::Prot32, &CFG, &runs);
        assert_eq!(v.class, Class::AlwaysTraps);
        assert!(v.always_traps && !v.unsupported && !v.control_sensitive && !v.violates_pg);
    }

    #[test]
    fn engine_level_results_are_listed_not_judged() {
        let moved = Variant {
            phys_moved: true,
            ..Variant::base(&CFG)
        };
        let runs = runs_of(Mode::Long64, &CFG, |v, side, _| {
            if *v == moved && side == Side::User {
                obs::engine(Outcome::Hang, sys(side))
            } else {
                obs::completed(sys(side), user())
            }
        });
        let v = classify(Mode::Long64, &CFG, &runs);
        assert_eq!(v.class, Class::Innocuous);
        assert_eq!(v.engine_results, vec!["phys-moved@cpl3: hang".to_string()]);
        assert_eq!(v.engine_level_runs, 1);

        let runs = runs_of(Mode::Long64, &CFG, |_, side, _| {
            obs::engine(Outcome::Shutdown, sys(side))
        });
        let v = classify(Mode::Long64, &CFG, &runs);
        assert_eq!(v.class, Class::EngineError);
        assert!(!v.privileged && !v.always_traps && !v.unsupported && !v.violates_pg);
        assert_eq!(v.engine_results.len(), runs.len());
        assert_eq!(
            v.engine_results.last().map(String::as_str),
            Some("base@cpl3 (repeat 1): shutdown")
        );
    }

    #[test]
    fn real_mode_is_never_privileged() {
        let runs = runs_of(Mode::Real, &CFG, |_, side, _| {
            obs::completed(sys(side), user())
        });
        assert!(runs.iter().all(|r| r.side == Side::Supervisor));
        let v = classify(Mode::Real, &CFG, &runs);
        assert!(!v.privileged);
        assert!(v.notes.iter().any(|n| n.contains("real mode")));
        // Even if (impossibly) a user-side trap appeared, real mode stays unprivileged.
        let mut runs = runs;
        runs.push(Run::new(
            Variant::base(&CFG),
            Side::User,
            0,
            obs::trap(13, Some(0), sys(Side::User)),
        ));
        assert!(!classify(Mode::Real, &CFG, &runs).privileged);
    }

    #[test]
    fn ring_compression_only_partners_behavior() {
        // An instruction that traps at CPL 3 and in ring-compressed supervisor
        // state is still privileged: ring1/ring3 variants do not take part in
        // the privilege test.
        let runs = runs_of(Mode::Prot32, &CFG, |v, side, _| {
            if side == Side::User || v.supervisor_dpl != 0 {
                obs::trap(13, Some(0), sys(side))
            } else {
                obs::completed(sys(side), user())
            }
        });
        let v = classify(Mode::Prot32, &CFG, &runs);
        assert_eq!(v.class, Class::Privileged);
    }

    #[test]
    fn class_names_round_trip() {
        for c in Class::ALL {
            assert_eq!(c.name().parse::<Class>(), Ok(c));
            assert_eq!(
                serde_json::to_string(&c).ok(),
                Some(format!("\"{}\"", c.name()))
            );
        }
    }
}
