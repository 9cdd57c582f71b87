//! A programmable engine for unit tests of the scan orchestration, and
//! builders of hand-made [`Observation`]s for unit tests of the classifier.
//!
//! The fake answers from a rule: `Fn(&Variant, Side, &[u8]) -> Observation`,
//! given the variant of the image it runs in, the side, and the test's bytes
//! (as placed in the prepared code page). It never looks at the rest of the
//! image, so tests may hand it images that no engine could run.

use super::Engine;
use crate::machine::{GuestImage, Prepared, Variant};
use crate::observe::{Observation, Side};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The rule a [`FakeEngine`] answers from.
pub type Rule = dyn Fn(&Variant, Side, &[u8]) -> Observation + Send + Sync;

/// An engine that answers every run from a rule and counts its runs.
#[derive(Clone)]
pub struct FakeEngine {
    rule: Arc<Rule>,
    runs: Arc<AtomicUsize>,
    version: String,
}

impl FakeEngine {
    /// A fake answering from `rule`.
    pub fn new(
        rule: impl Fn(&Variant, Side, &[u8]) -> Observation + Send + Sync + 'static,
    ) -> Self {
        FakeEngine {
            rule: Arc::new(rule),
            runs: Arc::new(AtomicUsize::new(0)),
            version: "fake 1".into(),
        }
    }

    /// Runs made so far by this fake and every clone of it.
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::Relaxed)
    }
}

impl Engine for FakeEngine {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn version(&self) -> String {
        self.version.clone()
    }
    fn run(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        self.runs.fetch_add(1, Ordering::Relaxed);
        (self.rule)(&image.variant, side, test.encoding())
    }
}

/// Builders of observations for tests.
pub mod obs {
    use crate::observe::{Observation, Outcome, SystemState, UserState};

    /// Completed at the sentinel, R and M unchanged.
    pub fn completed(sys: SystemState, user: UserState) -> Observation {
        let after = Some(sys.clone());
        Observation {
            outcome: Outcome::Completed {
                rip: user.rip,
                at_sentinel: true,
            },
            before: sys,
            after,
            user: Some(user),
        }
    }

    /// Completed at the sentinel, R or M changed from `before` to `after`.
    pub fn completed_changing(
        before: SystemState,
        after: SystemState,
        user: UserState,
    ) -> Observation {
        Observation {
            outcome: Outcome::Completed {
                rip: user.rip,
                at_sentinel: true,
            },
            before,
            after: Some(after),
            user: Some(user),
        }
    }

    /// A trap raised by the instruction.
    pub fn trap(vector: u8, error_code: Option<u32>, before: SystemState) -> Observation {
        Observation::outcome_only(
            Outcome::Trap {
                vector,
                error_code,
                rip: 0x7100,
                address: None,
            },
            before,
        )
    }

    /// An engine-level result (hang, shutdown, ...).
    pub fn engine(outcome: Outcome, before: SystemState) -> Observation {
        Observation::outcome_only(outcome, before)
    }
}
