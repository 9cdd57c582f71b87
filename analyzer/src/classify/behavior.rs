//! Behavior sensitivity (pg-model section 3) over completed repeat-0 runs:
//! location sensitive when two states of one CPL that differ in location
//! give different effects, mode sensitive when CPL 0 and CPL 3 of one state
//! do. Effects, not raw results, are compared ([`crate::probe::Run::effects`]).

use super::{diff_runs, evidence, first_diffs, Evidence, EvidenceKind, Ordered};
use crate::observe::Side;

/// What the behavior comparisons found.
pub(super) struct Behavior {
    pub location: bool,
    pub mode: bool,
    /// Location sensitive between two CPL 3 runs.
    pub location_user: bool,
    pub evidence: Vec<Evidence>,
}

pub(super) fn judge(valid: &[&Ordered<'_>]) -> Behavior {
    let mut out = Behavior {
        location: false,
        mode: false,
        location_user: false,
        evidence: Vec::new(),
    };
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
                let d = diff_runs(a, b);
                if !d.is_empty() {
                    out.location = true;
                    out.location_user |= side == Side::User;
                    out.evidence.push(evidence(
                        EvidenceKind::Location,
                        a,
                        Some(b),
                        first_diffs(&d),
                    ));
                    break 'pairs;
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
        let d = diff_runs(s0, s3);
        if !d.is_empty() {
            out.mode = true;
            out.evidence
                .push(evidence(EvidenceKind::Mode, s0, Some(s3), first_diffs(&d)));
            break;
        }
    }
    out
}
