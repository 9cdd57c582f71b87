//! Coverage: which states of the matrix ran on the engine, and whether a
//! verdict can stand on them (issue "a verdict claims only what was run").
//!
//! A state the engine could not run (its outcome is `not-supported`, or an
//! engine error) is "not run": it takes part in no comparison and is never
//! counted as a pass. Whether that matters depends on what the class claims:
//! - `sensitive-unprivileged` rests on evidence that ran (a sensitive run
//!   or pair, and a pair where CPL 3 did not trap), so more states cannot
//!   undo it; nor can they undo `engine-deviation` or `engine-error`.
//! - `privileged` claims that every configuration-preserving pair traps at
//!   CPL 3 and not at CPL 0: it stands while all of those ran.
//! - `innocuous`, `nondeterministic` (innocuous otherwise), `always-traps`
//!   and `unsupported` claim something of every state: one state not run
//!   could decide otherwise, so the verdict is `not-judged`.
//!
//! A hang or a shutdown is an outcome the engine measured, not a state not run.

use super::{label_text, Class, Runs};
use crate::machine::Variant;
use crate::mode::Config;
use crate::observe::Outcome;

/// The engine could not run the state.
pub fn is_not_run(o: &Outcome) -> bool {
    matches!(o, Outcome::NotSupported(_) | Outcome::EngineError(_))
}

/// Whether `class` stands although the states of `not_run` did not run.
pub fn stands(class: Class, not_run: &[Variant], config: &Config) -> bool {
    match class {
        Class::SensitiveUnprivileged
        | Class::EngineError
        | Class::EngineDeviation
        | Class::NotJudged => true,
        Class::Privileged => not_run.iter().all(|v| !v.keeps_config(config)),
        Class::Innocuous | Class::Nondeterministic | Class::AlwaysTraps | Class::Unsupported => {
            not_run.is_empty()
        }
    }
}

/// The class and theorem membership as they stand on the states that ran:
/// unchanged, or `not-judged` (with a note, breaking neither theorem) where
/// states that could decide otherwise did not run. No run at all but
/// `not-supported` ones: the whole case is not run on this engine.
pub(super) fn apply(
    class: Class,
    (violates_pg, violates_hybrid): (bool, bool),
    runs: &Runs<'_>,
    total: usize,
    config: &Config,
    notes: &mut Vec<String>,
) -> (Class, bool, bool) {
    let ordered = &runs.ordered;
    if total == 0 {
        notes.push("no runs".into());
        return (class, violates_pg, violates_hybrid);
    }
    if class == Class::EngineError
        && ordered
            .iter()
            .all(|o| matches!(o.run.obs.outcome, Outcome::NotSupported(_)))
    {
        notes.push(format!(
            "not run on this engine: {}",
            ordered[0].run.obs.outcome.short()
        ));
        return (Class::NotJudged, false, false);
    }
    let not_run: Vec<_> = ordered
        .iter()
        .filter(|o| is_not_run(&o.run.obs.outcome))
        .collect();
    let variants: Vec<Variant> = not_run.iter().map(|o| o.run.variant).collect();
    if stands(class, &variants, config) {
        return (class, violates_pg, violates_hybrid);
    }
    let labels: Vec<String> = not_run.iter().map(|o| label_text(o)).collect();
    notes.push(not_judged_note(
        class,
        &labels,
        total,
        &not_run[0].run.obs.outcome.short(),
    ));
    (Class::NotJudged, false, false)
}

/// The note of a verdict that is not judged: how many states did not run,
/// the first few of them, and the first reason the engine gave.
pub fn not_judged_note(class: Class, labels: &[String], runs: usize, why: &str) -> String {
    let mut shown = labels
        .iter()
        .take(4)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if labels.len() > 4 {
        shown.push_str(&format!(", +{} more", labels.len() - 4));
    }
    format!(
        "not judged: {} of {runs} runs not run on this engine ({shown}; {why}), and they could decide otherwise than {class}",
        labels.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_that_ran_stands_and_claims_over_every_state_do_not() {
        let cfg = Config::UMIP_OFF;
        let base = Variant::base(&cfg);
        let ring1 = Variant {
            supervisor_dpl: 1,
            ..base
        };
        assert!(!ring1.keeps_config(&cfg));
        for class in Class::ALL {
            assert!(stands(class, &[], &cfg), "{class}: everything ran");
        }
        assert!(stands(Class::SensitiveUnprivileged, &[base], &cfg));
        assert!(stands(Class::Privileged, &[ring1], &cfg));
        assert!(!stands(Class::Privileged, &[base], &cfg));
        for class in [
            Class::Innocuous,
            Class::Nondeterministic,
            Class::AlwaysTraps,
            Class::Unsupported,
        ] {
            assert!(!stands(class, &[ring1], &cfg), "{class}");
        }
        assert!(is_not_run(&Outcome::NotSupported("no".into())));
        assert!(is_not_run(&Outcome::EngineError("failed".into())));
        assert!(!is_not_run(&Outcome::Hang));
        assert!(!is_not_run(&Outcome::Shutdown));
    }
}
