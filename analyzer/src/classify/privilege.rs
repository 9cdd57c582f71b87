//! Privilege (pg-model section 3): an instruction is privileged when it
//! traps at CPL 3 and not at CPL 0 in every comparable pair of one state.
//! Only configuration-preserving variants take part ([`Variant::keeps_config`]);
//! a pair is not comparable when a run ended at engine level or in a memory trap.

use super::{evidence, EvidenceKind, Ordered, Runs};
use crate::machine::Variant;
use crate::mode::{Config, Mode};
use crate::observe::Side;

/// What the privilege test found.
pub(super) struct Privilege {
    pub privileged: bool,
    pub evidence: Option<super::Evidence>,
    pub note: Option<String>,
}

pub(super) fn judge(mode: Mode, config: &Config, matrix: &[Variant], runs: &Runs<'_>) -> Privilege {
    if !mode.is_protected() {
        return Privilege {
            privileged: false,
            evidence: None,
            note: Some("real mode has no CPL 3: nothing is privileged here".into()),
        };
    }
    let mut pairs = 0;
    let mut first_priv: Option<(&Ordered<'_>, &Ordered<'_>)> = None;
    let mut first_break = None;
    for v in matrix.iter().filter(|v| v.keeps_config(config)) {
        let (Some(s0), Some(s3)) = (
            runs.find(v, Side::Supervisor, 0),
            runs.find(v, Side::User, 0),
        ) else {
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
        Privilege {
            privileged: false,
            evidence: Some(evidence(
                EvidenceKind::NotPrivileged,
                s0,
                Some(s3),
                why.into(),
            )),
            note: None,
        }
    } else if let Some((s0, s3)) = first_priv {
        Privilege {
            privileged: true,
            evidence: Some(evidence(
                EvidenceKind::Privileged,
                s0,
                Some(s3),
                format!("CPL 3 traps, CPL 0 does not, in all {pairs} comparable pair(s)"),
            )),
            note: None,
        }
    } else {
        Privilege {
            privileged: false,
            evidence: None,
            note: Some(
                "no comparable CPL 0 / CPL 3 pair (each memory-trapped or ended at engine level): not privileged"
                    .into(),
            ),
        }
    }
}
