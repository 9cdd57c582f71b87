//! Regression tests of verdicts an audit found wrong (issue #8, item 9), on
//! a real Unicorn scan of the few entries concerned.

use analyzer::catalog::{self, Entry};
use analyzer::classify::Class;
use analyzer::engine::{self, EngineKind};
use analyzer::mode::{Config, Mode};
use analyzer::record::Record;
use analyzer::scan::run_scan;

/// The catalog entries of `mode` whose form is one of `forms`, in that order.
fn entries(mode: Mode, forms: &[&str]) -> Vec<Entry> {
    let cat = catalog::build(mode);
    forms
        .iter()
        .map(|f| {
            cat.entries
                .iter()
                .find(|e| e.form == *f)
                .unwrap_or_else(|| panic!("{mode}: no entry '{f}'"))
                .clone()
        })
        .collect()
}

/// Unicorn's records of those entries without UMIP, by form.
fn scan(mode: Mode, forms: &[&str]) -> Vec<Record> {
    let records = run_scan(
        &entries(mode, forms),
        &[Config::UMIP_OFF],
        || engine::open(EngineKind::Unicorn),
        1,
        false,
    )
    .expect("scan on unicorn");
    assert_eq!(records.len(), forms.len());
    records
}

fn evidence(r: &Record) -> String {
    r.evidence_text()
}

/// Mode-sensitive evidence compares results of equal inputs: both sides
/// start with the same DS, ES, FS and GS, so reading one of them gives the
/// same result at CPL 0 and CPL 3; CS and SS carry the CPL in their RPL.
#[test]
fn reading_a_data_segment_register_is_not_mode_sensitive_but_cs_and_ss_are() {
    for (mode, same, own) in [
        (
            Mode::Prot32,
            &[
                "push ds",
                "push es",
                "push fs",
                "push gs",
                "mov cx,ds",
                "mov ecx,gs",
            ][..],
            &["push cs", "push ss", "mov cx,cs", "mov ecx,ss"][..],
        ),
        (
            Mode::Long64,
            &["push fs", "push gs", "mov rcx,ds", "mov cx,es"][..],
            &["mov rcx,cs", "mov cx,ss"][..],
        ),
    ] {
        for r in scan(mode, same) {
            let v = &r.verdict;
            assert!(
                !v.mode_sensitive && !v.location_sensitive,
                "{mode} {}: {}",
                r.form,
                evidence(&r)
            );
            assert_eq!(
                v.class,
                Class::Innocuous,
                "{mode} {}: {}",
                r.form,
                evidence(&r)
            );
        }
        for r in scan(mode, own) {
            let v = &r.verdict;
            assert!(v.mode_sensitive, "{mode} {}: {}", r.form, evidence(&r));
            assert!(v.violates_pg, "{mode} {}", r.form);
            assert!(
                v.evidence.iter().any(|e| e.kind == "mode"
                    && e.a.variant == "base"
                    && e.b.as_ref().is_some_and(|b| b.variant == "base")),
                "{mode} {}: {}",
                r.form,
                evidence(&r)
            );
        }
    }
}
