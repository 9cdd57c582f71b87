//! The class and the theorems' membership (pg-model sections 3 and 5): a
//! sensitive instruction that is neither privileged nor always trapping
//! breaks theorem 1; a user-sensitive one breaks theorem 3. The class is the
//! first of: engine error (nothing ran comparably), unsupported (#UD
//! everywhere), always traps, privileged, sensitive-unprivileged,
//! nondeterministic, innocuous.

use super::Class;

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
