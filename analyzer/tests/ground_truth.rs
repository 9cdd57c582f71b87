//! The documented facts of `corpus/expected-verdicts.tsv` beside a real
//! Unicorn scan of the instructions they name: every disagreement must be a
//! known engine gap the table names, and the known gaps must be flagged.

use analyzer::catalog;
use analyzer::engine::{self, EngineKind};
use analyzer::mode::{Config, Mode};
use analyzer::scan::{run_scan, ScanPlan};
use analyzer::truth::{annotate, Facts, Status, Tally};
use std::path::Path;

#[test]
fn unicorn_agrees_with_the_documented_facts_except_known_gaps() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/expected-verdicts.tsv");
    let facts = Facts::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let cat = catalog::build_all(&Mode::DEFAULT_SCAN);
    facts
        .validate(&cat.entries)
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = ScanPlan {
        modes: Mode::DEFAULT_SCAN.to_vec(),
        configs: Config::DEFAULTS.to_vec(),
        only: facts.instructions(),
    };
    let entries: Vec<catalog::Entry> = plan.select(&cat.entries).into_iter().cloned().collect();
    assert!(!entries.is_empty());
    let mut records = run_scan(
        &entries,
        &plan.configs,
        || engine::open(EngineKind::Unicorn),
        0,
        false,
    )
    .expect("scan on unicorn");
    let findings = annotate(&mut records, &facts);
    let tally = Tally::of(&findings);
    eprintln!("{tally}");

    let unexpected: Vec<String> = findings
        .iter()
        .filter(|f| f.status == Status::Disagrees)
        .map(|f| f.to_string())
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} unexpected disagreements with the documented facts:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );

    // Every row of the table covered at least one scanned record.
    for f in &facts.facts {
        assert!(
            findings.iter().any(|x| x.line == f.line),
            "row {} ({}) matched no record",
            f.line,
            f.instruction
        );
    }

    // The tests expect the flag: Unicorn's known gaps show as known deviations.
    let flagged = |mnemonic: &str, mode: Mode, config: &str| {
        records.iter().any(|r| {
            r.mnemonic == mnemonic
                && r.mode == mode
                && r.config == config
                && r.deviation
                    .as_deref()
                    .is_some_and(|d| d.contains("known unicorn gap"))
        })
    };
    for mode in Mode::DEFAULT_SCAN {
        assert!(
            flagged("sgdt", mode, "umip=on"),
            "SGDT under UMIP in mode {mode}"
        );
        assert!(flagged("in", mode, "umip=off"), "IN vs IOPL in mode {mode}");
        assert!(
            flagged("out", mode, "umip=off"),
            "OUT vs IOPL in mode {mode}"
        );
        assert!(
            !flagged("sgdt", mode, "umip=off"),
            "SGDT without UMIP agrees"
        );
        assert!(
            flagged("incsspd", mode, "umip=off"),
            "INCSSPD run as a fence in mode {mode}"
        );
    }
    let known_umip = findings.iter().any(|f| {
        f.code.starts_with("Sgdt")
            && f.config == "umip=on"
            && matches!(&f.status, Status::KnownDeviation(r) if r.contains("UMIP"))
    });
    assert!(
        known_umip,
        "SGDT under umip=on is a known unicorn deviation"
    );
    assert!(tally.agree > 0 && tally.known > 0);
}
