//! Regression tests of verdicts an audit found wrong (issue #8, item 9), on
//! a real Unicorn scan of the few entries concerned.

use analyzer::catalog::{self, Entry};
use analyzer::classify::{Class, EvidenceKind};
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
                v.evidence.iter().any(|e| e.kind == EvidenceKind::Mode
                    && e.a.variant == "base"
                    && e.b.as_ref().is_some_and(|b| b.variant == "base")),
                "{mode} {}: {}",
                r.form,
                evidence(&r)
            );
        }
    }
}

/// REX.W LSS/LFS/LGS: Unicorn reads the operand as m16:32 (AMD's reading),
/// Intel documents m16:64. The operand holds the intended selector at both
/// places, so each side loads its own-level selector, both complete, and
/// LSS is a violator like its 16- and 32-bit forms (it came out privileged
/// when Unicorn loaded a null SS: CPL 0 completed, CPL 3 faulted).
#[test]
fn rex_w_far_pointer_loads_load_the_intended_selector_on_unicorn() {
    let records = scan(
        Mode::Long64,
        &["lss rax,[8100h]", "lfs rax,[8100h]", "lgs rax,[8100h]"],
    );
    for (r, cpl0) in records.iter().zip([
        "ss 0x0010 -> 0x0088",
        "fs 0x0023 -> 0x0033",
        "gs 0x0023 -> 0x0033",
    ]) {
        let v = &r.verdict;
        assert_eq!(
            v.class,
            Class::SensitiveUnprivileged,
            "{}: {}",
            r.form,
            evidence(r)
        );
        assert!(
            !v.privileged && v.control_sensitive && v.violates_pg,
            "{}",
            r.form
        );
        assert!(v.user_sensitive, "{}: the CPL-3 load changes R", r.form);
        assert_eq!(r.deviation, None, "{}", r.form);
        let control: Vec<&str> = v
            .evidence
            .iter()
            .filter(|e| e.kind == EvidenceKind::Control)
            .map(|e| e.detail.as_str())
            .collect();
        assert!(
            control.iter().any(|d| d.contains(cpl0)),
            "{}: {control:?}",
            r.form
        );
    }
}

/// Instructions Unicorn runs as something else (INCSSP and
/// UMONITOR/UMWAIT/TPAUSE as fences, VEX instructions with XCR0 lacking
/// AVX state) are engine deviations: no verdict, no violation, a note that
/// says which CPUID bit or XCR0 state the engine itself lacks. What its
/// CPUID offers (BMI1's ANDN, SSE) keeps its verdict.
#[test]
fn completions_the_engine_cpuid_or_xcr0_forbids_are_engine_deviations() {
    let cases = [
        ("incsspq rcx", "lacks CET_SS"),
        ("incsspd ecx", "lacks CET_SS"),
        ("umonitor rcx", "lacks WAITPKG"),
        ("umwait ecx", "lacks WAITPKG"),
        ("tpause ecx", "lacks WAITPKG"),
        (
            "vaddps xmm0,xmm2,xmm1",
            "its XCR0 0x3 lacks 0x4 (VEX on these registers needs 0x6)",
        ),
    ];
    let forms: Vec<&str> = cases.iter().map(|c| c.0).collect();
    for (r, (form, why)) in scan(Mode::Long64, &forms).iter().zip(cases) {
        let v = &r.verdict;
        assert_eq!(v.class, Class::EngineDeviation, "{form}: {}", evidence(r));
        assert!(!v.violates_pg && !v.violates_hybrid, "{form}");
        let d = r.deviation.as_deref().unwrap_or_default();
        assert!(
            d.contains(why) && d.ends_with(": it must raise #UD"),
            "{form}: {d}"
        );
        assert!(
            v.notes.iter().any(|n| n.contains(why)),
            "{form}: {:?}",
            v.notes
        );
    }
    for r in scan(Mode::Long64, &["andn rax,rdx,rcx", "addps xmm0,xmm1"]) {
        assert_eq!(
            r.verdict.class,
            Class::Innocuous,
            "{}: {:?}",
            r.form,
            r.deviation
        );
    }
}
