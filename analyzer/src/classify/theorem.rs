//! The class and the theorems' membership (pg-model sections 3 and 5): a
//! sensitive instruction that is neither privileged nor always trapping
//! breaks theorem 1; a user-sensitive one breaks theorem 3. The class is the
//! first of: engine error (nothing ran comparably), unsupported (#UD
//! everywhere), always traps, privileged, sensitive-unprivileged,
//! nondeterministic, innocuous. Over a group of verdicts (one mode and
//! configuration of a scan), [`Theorems::judge`] says whether each theorem
//! holds.

use super::{Class, Verdict};
use crate::mode::Mode;
use serde::{Deserialize, Serialize};

/// What the definitions found, as the class and the theorems need it.
pub(super) struct Findings {
    pub any_valid: bool,
    pub unsupported: bool,
    pub always_traps: bool,
    pub privileged: bool,
    pub sensitive: bool,
    pub user_sensitive: bool,
    pub nondeterministic: bool,
}

/// The class, and whether the instruction breaks theorem 1 and theorem 3.
pub(super) fn judge(f: &Findings) -> (Class, bool, bool) {
    let excused = f.privileged || f.always_traps || f.unsupported;
    let violates_pg = f.sensitive && !excused;
    let violates_hybrid = f.user_sensitive && !excused;
    let class = if !f.any_valid {
        Class::EngineError
    } else if f.unsupported {
        Class::Unsupported
    } else if f.always_traps {
        Class::AlwaysTraps
    } else if f.privileged {
        Class::Privileged
    } else if f.sensitive {
        Class::SensitiveUnprivileged
    } else if f.nondeterministic {
        Class::Nondeterministic
    } else {
        Class::Innocuous
    };
    (class, violates_pg, violates_hybrid)
}

/// Whether a theorem's condition holds over a group of verdicts, and how many
/// instructions break it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TheoremResult {
    pub holds: bool,
    pub violators: usize,
}

/// The theorem verdicts of one (mode, configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Theorems {
    pub mode: String,
    pub config: String,
    /// Theorem 1: a VMM can be built iff every sensitive instruction is privileged.
    pub theorem1_vmm: TheoremResult,
    /// Theorem 3: a hybrid VMM iff every user-sensitive instruction is privileged.
    pub theorem3_hybrid: TheoremResult,
    /// Records without a verdict (class `engine-error`, `engine-deviation`
    /// or `not-judged`): the theorems say nothing about them.
    pub unjudged: usize,
    /// Records with a verdict. A theorem never "holds" over none: with no
    /// judged record (an engine that runs nothing in this mode) both
    /// theorems are reported as not judged.
    #[serde(default)]
    pub judged: usize,
    /// Why the engine does not model this configuration (Unicorn has no
    /// CR4.UMIP): then neither theorem is judged, whatever the records say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_modeled: Option<String>,
}

impl Theorems {
    /// The theorem verdicts of one (mode, configuration) of an engine's scan,
    /// from its records' verdicts: a theorem holds when no judged verdict
    /// breaks it, something was judged, and the engine models the
    /// configuration (`not_modeled`, from [`crate::engine::unmodeled`]).
    pub fn judge<'v>(
        mode: Mode,
        config: &str,
        verdicts: impl IntoIterator<Item = &'v Verdict>,
        not_modeled: Option<String>,
    ) -> Theorems {
        let (mut pg, mut hy, mut unjudged, mut judged) = (0, 0, 0, 0);
        for v in verdicts {
            pg += usize::from(v.violates_pg);
            hy += usize::from(v.violates_hybrid);
            if v.unjudged() {
                unjudged += 1;
            } else {
                judged += 1;
            }
        }
        let judgeable = judged > 0 && not_modeled.is_none();
        Theorems {
            mode: mode.name().into(),
            config: config.into(),
            theorem1_vmm: TheoremResult {
                holds: pg == 0 && judgeable,
                violators: pg,
            },
            theorem3_hybrid: TheoremResult {
                holds: hy == 0 && judgeable,
                violators: hy,
            },
            unjudged,
            judged,
            not_modeled,
        }
    }

    /// Why neither theorem is judged here, if so: the configuration is not
    /// modeled, or no record has a verdict.
    pub fn not_judged(&self) -> Option<String> {
        if let Some(why) = &self.not_modeled {
            return Some(why.clone());
        }
        (self.judged == 0).then(|| {
            format!(
                "{} records: engine errors, deviations or states not run",
                self.unjudged
            )
        })
    }

    /// One theorem's verdict in words: `holds`, `fails (N violators)` or
    /// `not judged (why)`.
    pub fn verdict_text(&self, r: TheoremResult) -> String {
        match self.not_judged() {
            Some(why) => format!("not judged ({why})"),
            None if r.holds => "holds".to_string(),
            None => format!("fails ({} violators)", r.violators),
        }
    }
}
