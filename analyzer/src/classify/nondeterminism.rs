//! Nondeterminism: the base state run twice (repeat 0 and repeat 1) on the
//! same engine gives different outcomes, results or after-states. The
//! evidence names the parts that differ, never the values (nor which
//! registers: RDTSC's RDX changes only when RAX wraps between the runs), so
//! reports are the same for the same inputs.

use super::{evidence, first_diffs, Evidence, EvidenceKind, Ordered, Runs};

/// What the repeat comparison found.
pub(super) struct Nondeterminism {
    pub nondeterministic: bool,
    pub evidence: Option<Evidence>,
}

pub(super) fn judge(valid: &[&Ordered<'_>], runs: &Runs<'_>) -> Nondeterminism {
    let mut out = Nondeterminism {
        nondeterministic: false,
        evidence: None,
    };
    for r1 in valid.iter().filter(|o| o.run.repeat != 0) {
        let Some(r0) = runs.find(&r1.run.variant, r1.run.side, 0) else {
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
            if !out.nondeterministic {
                let mut e = evidence(
                    EvidenceKind::Nondeterministic,
                    r0,
                    Some(r1),
                    first_diffs(&detail),
                );
                e.outcome_b = Some(format!(
                    "{} (repeat {})",
                    r1.run.obs.outcome.short(),
                    r1.run.repeat
                ));
                out.evidence = Some(e);
            }
            out.nondeterministic = true;
        }
    }
    out
}
