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

use crate::machine::{StateLabel, Variant};
use crate::mode::{Config, Mode};
use crate::observe::{diff_effects, Effects, Outcome, Side};
pub use crate::probe::Run;
use serde::{Deserialize, Serialize};
use std::cell::OnceCell;
use std::fmt;
use std::str::FromStr;

pub mod coverage;

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

/// One concrete piece of evidence: a state (or a pair) and the outcomes that decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// `privileged`, `not-privileged`, `control`, `location`, `mode`, `nondeterministic`.
    pub kind: String,
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
    /// in the canonical order of [`CHANGED_PARTS`].
    pub changed: Vec<String>,
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

/// Applies the instruction's iced flow control to a verdict: a non-branch
/// (`Next`) that completed off the sentinel was decoded with another length
/// by the engine, so the verdict becomes `engine-deviation`, with no
/// violation of either theorem. The same holds for `Interrupt` (INT n, INTO,
/// SMINT): it traps, transfers, or falls through to the sentinel, never
/// completes elsewhere (Unicorn runs Cyrix SMINT `0f 7e` as MOVD).
/// Branches, calls and returns are left alone: they land on landing pads.
pub fn engine_deviation(v: &mut Verdict, flow_control: &str) {
    if !matches!(flow_control, "Next" | "Interrupt") || v.class == Class::EngineError {
        return;
    }
    let Some(off) = &v.off_sentinel else {
        return;
    };
    v.notes.push(format!(
        "engine executed a different instruction ({off}, not at the sentinel right after it): no verdict"
    ));
    v.class = Class::EngineDeviation;
    v.violates_pg = false;
    v.violates_hybrid = false;
}

/// The parts of R and M, as `diff_system` names them (the text before `:`).
pub const CHANGED_PARTS: [&str; 6] = [
    "privilege level",
    "system flags",
    "descriptor cache",
    "descriptor-table register",
    "control register",
    "msr",
];

fn part_of(change: &str) -> &str {
    change.split(':').next().unwrap_or(change).trim()
}

struct Ordered<'r> {
    run: &'r Run,
    label: StateLabel,
    /// What the run changed in R and M ([`Run::changed_r`]), once.
    changed_r: OnceCell<Vec<String>>,
    /// Its user-visible effects ([`Run::effects`]), once: a run takes part
    /// in many behavior comparisons.
    effects: OnceCell<Option<Effects>>,
}

impl Ordered<'_> {
    fn changed_r(&self) -> &[String] {
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

fn evidence(kind: &str, a: &Ordered<'_>, b: Option<&Ordered<'_>>, detail: String) -> Evidence {
    Evidence {
        kind: kind.into(),
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

/// Classifies one encoding in one configuration from its runs (pg-model section 3).
pub fn classify(mode: Mode, config: &Config, runs: &[Run]) -> Verdict {
    let matrix = Variant::matrix(mode, config);
    let pos = |v: &Variant| matrix.iter().position(|m| m == v).unwrap_or(matrix.len());
    let mut ordered: Vec<Ordered<'_>> = runs
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
    let find = |v: &Variant, side: Side, repeat: u8| {
        ordered
            .iter()
            .find(|o| o.run.variant == *v && o.run.side == side && o.run.repeat == repeat)
    };

    let mut notes = Vec::new();
    let mut evidence_out = Vec::new();
    let engine_results: Vec<String> = ordered
        .iter()
        .filter(|o| o.run.obs.outcome.is_engine_level())
        .map(|o| format!("{}: {}", label_text(o), o.run.obs.outcome.short()))
        .collect();
    let valid: Vec<&Ordered<'_>> = ordered
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

    // Privilege (pairs of config-preserving variants, CPL 0 vs CPL 3).
    let mut privileged = false;
    if mode.is_protected() {
        let mut pairs = 0;
        let mut first_priv = None;
        let mut first_break = None;
        for v in matrix.iter().filter(|v| v.keeps_config(config)) {
            let (Some(s0), Some(s3)) = (find(v, Side::Supervisor, 0), find(v, Side::User, 0))
            else {
                continue;
            };
            let (o0, o3) = (&s0.run.obs.outcome, &s3.run.obs.outcome);
            if o0.is_engine_level()
                || o3.is_engine_level()
                || o0.is_memory_trap()
                || o3.is_memory_trap()
            {
                continue;
            }
            pairs += 1;
            if o3.is_trap_like() && !o0.is_trap_like() {
                first_priv.get_or_insert((s0, s3));
            } else {
                let why = if o0.is_trap_like() {
                    "the CPL 0 run traps too"
                } else {
                    "the CPL 3 run does not trap"
                };
                first_break.get_or_insert((s0, s3, why));
            }
        }
        if let Some((s0, s3, why)) = first_break {
            evidence_out.push(evidence("not-privileged", s0, Some(s3), why.into()));
        } else if let Some((s0, s3)) = first_priv {
            privileged = true;
            evidence_out.push(evidence(
                "privileged",
                s0,
                Some(s3),
                format!("CPL 3 traps, CPL 0 does not, in all {pairs} comparable pair(s)"),
            ));
        } else {
            notes.push(
                "no comparable CPL 0 / CPL 3 pair (each memory-trapped or ended at engine level): not privileged"
                    .into(),
            );
        }
    } else {
        notes.push("real mode has no CPL 3: nothing is privileged here".into());
    }

    // Control sensitivity: a completing run that changed R or M.
    let mut changed = Vec::new();
    let mut control_user = false;
    for part in CHANGED_PARTS {
        let mut first = None;
        for o in valid.iter().filter(|o| o.run.obs.outcome.is_completed()) {
            let parts: Vec<String> = o
                .changed_r()
                .iter()
                .filter(|c| part_of(c) == part)
                .cloned()
                .collect();
            if parts.is_empty() {
                continue;
            }
            if o.run.side == Side::User {
                control_user = true;
            }
            first.get_or_insert((*o, parts));
        }
        if let Some((o, parts)) = first {
            changed.push(part.to_string());
            evidence_out.push(evidence("control", o, None, parts.join(", ")));
        }
    }
    // Anything diff_system reports under a name not listed above still counts.
    for o in valid.iter().filter(|o| o.run.obs.outcome.is_completed()) {
        for c in o.changed_r() {
            let p = part_of(c);
            if !CHANGED_PARTS.contains(&p) && !changed.iter().any(|x| x == p) {
                changed.push(p.to_string());
                evidence_out.push(evidence("control", o, None, c.clone()));
                control_user |= o.run.side == Side::User;
            }
        }
    }
    let control_sensitive = !changed.is_empty();

    // Nondeterminism: repeat 1 vs repeat 0 of the same state.
    let mut nondeterministic = false;
    for r1 in valid.iter().filter(|o| o.run.repeat != 0) {
        let Some(r0) = find(&r1.run.variant, r1.run.side, 0) else {
            continue;
        };
        if r0.run.obs.outcome.is_engine_level() {
            continue;
        }
        let (x, y) = (&r0.run.obs, &r1.run.obs);
        let mut detail = Vec::new();
        if x.outcome != y.outcome {
            detail.push(format!(
                "outcome {} vs {}",
                x.outcome.short(),
                y.outcome.short()
            ));
        }
        match (&x.user, &y.user) {
            // Name the parts that differ, not the registers or the values:
            // which of them differ can change from scan to scan (RDTSC's
            // high half changes only when the low half wraps between the two
            // runs), and reports must be the same for the same inputs.
            (Some(a), Some(b)) => {
                for (differs, part) in [
                    (a.gprs != b.gprs, "general registers differ"),
                    (a.rip != b.rip, "rip differs"),
                    (a.flags != b.flags, "flags differ"),
                    (a.data != b.data, "data page differs"),
                    (a.stack != b.stack, "stack differs"),
                ] {
                    if differs {
                        detail.push(part.to_string());
                    }
                }
            }
            (None, None) => {}
            _ => detail.push("user state present in one run only".into()),
        }
        if x.after != y.after {
            detail.push("system state after the run differs".into());
        }
        if !detail.is_empty() {
            if !nondeterministic {
                let mut e = evidence("nondeterministic", r0, Some(r1), first_diffs(&detail));
                e.outcome_b = Some(format!(
                    "{} (repeat {})",
                    r1.run.obs.outcome.short(),
                    r1.run.repeat
                ));
                evidence_out.push(e);
            }
            nondeterministic = true;
        }
    }

    // Behavior sensitivity over completed repeat-0 runs.
    let mut location_sensitive = false;
    let mut mode_sensitive = false;
    let mut location_user = false;
    if nondeterministic {
        notes.push("nondeterministic: excluded from behavior comparisons".into());
    } else {
        let done: Vec<&Ordered<'_>> = valid
            .iter()
            .copied()
            .filter(|o| {
                o.run.repeat == 0 && o.run.obs.outcome.is_completed() && o.run.obs.user.is_some()
            })
            .collect();
        for side in Side::BOTH {
            let same: Vec<&Ordered<'_>> = done
                .iter()
                .copied()
                .filter(|o| o.run.side == side)
                .collect();
            'pairs: for (i, a) in same.iter().enumerate() {
                for b in &same[i + 1..] {
                    if a.run.variant == b.run.variant {
                        continue;
                    }
                    if a.run.obs.user.is_some() && b.run.obs.user.is_some() {
                        let d = diff_runs(a, b);
                        if !d.is_empty() {
                            location_sensitive = true;
                            location_user |= side == Side::User;
                            evidence_out.push(evidence("location", a, Some(b), first_diffs(&d)));
                            break 'pairs;
                        }
                    }
                }
            }
        }
        for s0 in done.iter().filter(|o| o.run.side == Side::Supervisor) {
            let Some(s3) = done
                .iter()
                .find(|o| o.run.side == Side::User && o.run.variant == s0.run.variant)
            else {
                continue;
            };
            if s0.run.obs.user.is_some() && s3.run.obs.user.is_some() {
                let d = diff_runs(s0, s3);
                if !d.is_empty() {
                    mode_sensitive = true;
                    evidence_out.push(evidence("mode", s0, Some(s3), first_diffs(&d)));
                    break;
                }
            }
        }
    }
    let behavior_sensitive = location_sensitive || mode_sensitive;
    let user_sensitive = control_user || location_user || mode_sensitive;
    let sensitive = control_sensitive || behavior_sensitive;
    let excused = privileged || always_traps || unsupported;
    let violates_pg = sensitive && !excused;
    let violates_hybrid = user_sensitive && !excused;

    // Evidence in a fixed order of kinds.
    const KINDS: [&str; 6] = [
        "privileged",
        "not-privileged",
        "control",
        "location",
        "mode",
        "nondeterministic",
    ];
    evidence_out.sort_by_key(|e| {
        KINDS
            .iter()
            .position(|k| *k == e.kind)
            .unwrap_or(KINDS.len())
    });

    let not_run: Vec<&Ordered<'_>> = ordered
        .iter()
        .filter(|o| coverage::is_not_run(&o.run.obs.outcome))
        .collect();
    let mut class = if valid.is_empty() {
        if runs.is_empty() {
            notes.push("no runs".into());
        }
        if !runs.is_empty()
            && ordered
                .iter()
                .all(|o| matches!(o.run.obs.outcome, Outcome::NotSupported(_)))
        {
            notes.push(format!(
                "not run on this engine: {}",
                ordered[0].run.obs.outcome.short()
            ));
            Class::NotJudged
        } else {
            Class::EngineError
        }
    } else if unsupported {
        Class::Unsupported
    } else if always_traps {
        Class::AlwaysTraps
    } else if privileged {
        Class::Privileged
    } else if sensitive {
        Class::SensitiveUnprivileged
    } else if nondeterministic {
        Class::Nondeterministic
    } else {
        Class::Innocuous
    };

    let (mut violates_pg, mut violates_hybrid) = (violates_pg, violates_hybrid);
    let not_run_variants: Vec<Variant> = not_run.iter().map(|o| o.run.variant).collect();
    if !coverage::stands(class, &not_run_variants, config) {
        let labels: Vec<String> = not_run.iter().map(|o| label_text(o)).collect();
        notes.push(coverage::not_judged_note(
            class,
            &labels,
            runs.len(),
            &not_run[0].run.obs.outcome.short(),
        ));
        class = Class::NotJudged;
        violates_pg = false;
        violates_hybrid = false;
    }

    Verdict {
        class,
        privileged,
        control_sensitive,
        behavior_sensitive,
        location_sensitive,
        mode_sensitive,
        user_sensitive,
        violates_pg,
        violates_hybrid,
        nondeterministic,
        always_traps,
        unsupported,
        changed,
        evidence: evidence_out,
        engine_results,
        runs: runs.len(),
        engine_level_runs: runs.len() - valid.len(),
        notes,
        off_sentinel,
        not_run: not_run.iter().map(|o| label_text(o)).collect(),
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
                assert_eq!(v.evidence[0].kind, "not-privileged");
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
        assert_eq!(e.kind, "not-privileged");
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
        assert_eq!(v.changed, vec!["system flags".to_string()]);
        let kinds: Vec<&str> = v.evidence.iter().map(|e| e.kind.as_str()).collect();
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
        let loc: Vec<&Evidence> = v.evidence.iter().filter(|e| e.kind == "location").collect();
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
            .find(|e| e.kind == "nondeterministic")
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
