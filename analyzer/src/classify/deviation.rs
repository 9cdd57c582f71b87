//! Engine deviations the runs show by themselves, applied to a verdict
//! before it is final.

use super::{Class, Verdict};

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
