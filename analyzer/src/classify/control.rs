//! Control sensitivity (pg-model section 3): a completing run that changed
//! R or M beyond what a NOP in the same state changes ([`crate::probe::Run::changed_r`]).
//! A transferring run is never evidence: the CPL changed on the way to the supervisor.

use super::{evidence, Evidence, EvidenceKind, Ordered};
use crate::observe::{Part, Side};

/// What the control test found.
pub(super) struct Control {
    /// The parts changed, in the order of [`Part::ALL`].
    pub changed: Vec<Part>,
    /// A CPL 3 run changed one.
    pub user: bool,
    /// Per part, the first run that changed it, in matrix order.
    pub evidence: Vec<Evidence>,
}

pub(super) fn judge(valid: &[&Ordered<'_>]) -> Control {
    let mut out = Control {
        changed: Vec::new(),
        user: false,
        evidence: Vec::new(),
    };
    for part in Part::ALL {
        let mut first = None;
        for o in valid.iter().filter(|o| o.run.obs.outcome.is_completed()) {
            let details: Vec<String> = o
                .changed_r()
                .iter()
                .filter(|c| c.part == part)
                .map(|c| c.to_string())
                .collect();
            if details.is_empty() {
                continue;
            }
            out.user |= o.run.side == Side::User;
            first.get_or_insert((*o, details));
        }
        if let Some((o, details)) = first {
            out.changed.push(part);
            out.evidence
                .push(evidence(EvidenceKind::Control, o, None, details.join(", ")));
        }
    }
    out
}
