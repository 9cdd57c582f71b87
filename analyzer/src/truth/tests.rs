use super::*;
use crate::record::tests::record;

const HEADER: &str = "instruction\tmodes\tconfig\texpect\tsource\tknown_deviation\n";

fn parse(body: &str) -> Result<Facts, TruthError> {
    Facts::parse(&format!("{HEADER}{body}"), Path::new("t.tsv"))
}

/// The (line, column, message) of a parse error.
fn parse_err(body: &str) -> (usize, usize, String) {
    match parse(body) {
        Err(TruthError::Parse {
            line, column, msg, ..
        }) => (line, column, msg),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn parses_a_good_table() {
    let facts = parse(
        "# a comment\n\
         \n\
         sgdt\t*\tumip=on\tprivileged\tIntel SDM vol. 3 2.8\tunicorn: no CR4.UMIP; kvm: pvm emulates it\n\
         Mov_Sreg_rm16\t16,32\t*\tviolator\tRobin & Irvine 2000\t\n\
         Call_ptr1632 unless call gate\t32\tumip=off\tviolator\tRobin & Irvine 2000\t\n",
    )
    .expect("parses");
    assert_eq!(facts.facts.len(), 3);
    let f = &facts.facts[0];
    assert_eq!(f.line, 4);
    assert!(!f.is_code);
    assert_eq!(
        f.modes,
        vec![Mode::Prot16, Mode::Prot32, Mode::Long64, Mode::Compat32]
    );
    assert_eq!(f.configs, vec!["umip=on".to_string()]);
    assert_eq!(f.expect, Expect::Privileged);
    assert_eq!(f.known_reason("unicorn"), Some("no CR4.UMIP"));
    assert_eq!(f.known_reason("kvm"), Some("pvm emulates it"));
    assert_eq!(f.known_reason("fake"), None);
    let g = &facts.facts[1];
    assert!(g.is_code);
    // 32 names 32-bit code: 32c as well.
    assert_eq!(g.modes, vec![Mode::Prot16, Mode::Prot32, Mode::Compat32]);
    assert_eq!(
        g.configs,
        vec!["umip=off".to_string(), "umip=on".to_string()]
    );
    assert!(g.known_deviation.is_empty());
    let h = &facts.facts[2];
    assert_eq!(h.instruction, "Call_ptr1632");
    assert_eq!(h.unless.as_deref(), Some("call gate"));
    assert_eq!(
        facts.instructions(),
        vec!["Call_ptr1632", "Mov_Sreg_rm16", "sgdt"]
    );
}

#[test]
fn mode_32_names_both_32_bit_modes() {
    let facts = parse(
        "sysret\t16,32p\t*\tnot-privileged\tSDM\t\n\
         sysexit\t32c\t*\tprivileged\tSDM\t\n\
         hlt\t32,64\t*\tprivileged\tSDM\t\n",
    )
    .expect("parses");
    let f = &facts.facts;
    assert_eq!(f[0].modes, vec![Mode::Prot16, Mode::Prot32]);
    assert_eq!(f[1].modes, vec![Mode::Compat32]);
    assert_eq!(f[2].modes, vec![Mode::Prot32, Mode::Long64, Mode::Compat32]);
}

#[test]
fn errors_name_line_and_column() {
    // Wrong number of columns.
    let (line, col, msg) = parse_err("hlt\t*\t*\tprivileged\n");
    assert_eq!((line, col), (2, 1));
    assert!(msg.contains("expected 6 tab-separated columns"), "{msg}");
    // Unknown expect: the fourth column starts after "hlt\t*\t*\t".
    let (line, col, msg) = parse_err("# c\nhlt\t*\t*\ttrapping\tSDM\t\n");
    assert_eq!((line, col), (3, 9));
    assert!(msg.contains("unknown expect 'trapping'"), "{msg}");
    // Unknown mode.
    let (line, col, msg) = parse_err("hlt\t16,48\t*\tprivileged\tSDM\t\n");
    assert_eq!((line, col), (2, 5));
    assert!(msg.contains("unknown mode '48'"), "{msg}");
    // Bad configuration.
    let (line, col, msg) = parse_err("hlt\t*\tumip=maybe\tprivileged\tSDM\t\n");
    assert_eq!((line, col), (2, 7));
    assert!(msg.contains("bad configuration 'umip=maybe'"), "{msg}");
    // Known deviation without an engine.
    let (_, col, msg) = parse_err("hlt\t*\t*\tprivileged\tSDM\tno colon here\n");
    assert_eq!(col, 24);
    assert!(msg.contains("'engine: reason'"), "{msg}");
    // A missing header.
    match Facts::parse("hlt\t*\t*\tprivileged\tSDM\t\n", Path::new("t.tsv")) {
        Err(e @ TruthError::Parse { line: 1, .. }) => {
            assert!(e.to_string().starts_with("t.tsv:1:1: expected the header"))
        }
        other => panic!("{other:?}"),
    }
    // The message names the file.
    let e = parse("hlt\t*\t*\tnope\tSDM\t\n").expect_err("bad");
    assert!(
        e.to_string().starts_with("t.tsv:2:9: unknown expect"),
        "{e}"
    );
}

#[test]
fn validate_rejects_a_row_matching_no_entry() {
    let facts =
        parse("hlt\t*\t*\tprivileged\tSDM\t\nswapgs\t32\t*\tprivileged\tSDM\t\n").expect("parses");
    let entries = crate::catalog::build(Mode::Prot32).entries;
    match facts.validate(&entries) {
        Err(TruthError::NoMatch {
            line: 3,
            mode: Mode::Prot32,
            ref instruction,
            ..
        }) if instruction == "swapgs" => {}
        other => panic!("{other:?}"),
    }
    let ok =
        parse("hlt\t*\t*\tprivileged\tSDM\t\nswapgs\t64\t*\tprivileged\tSDM\t\n").expect("parses");
    // Mode 64 is not in these entries: nothing to check it against.
    ok.validate(&entries).expect("valid");
}

fn facts() -> Facts {
    parse(
        "hlt\t32\tumip=off\tprivileged\tSDM\t\n\
         sgdt\t32\tumip=off\tprivileged\tSDM (UMIP)\tfake: no CR4.UMIP\n\
         wrmsr\t32\tumip=off\tprivileged\tSDM\t\n\
         cpuid\t32\tumip=off\tinnocuous\tP&G\tfake: thought broken\n\
         add\t64\tumip=off\tinnocuous\tP&G\t\n",
    )
    .expect("parses")
}

#[test]
fn check_gives_each_status() {
    let records = vec![
        record("hlt", Class::Privileged, true),
        record("sgdt", Class::SensitiveUnprivileged, false),
        record("wrmsr", Class::Innocuous, true),
        record("cpuid", Class::Innocuous, false),
        // Mode 32: the add row names mode 64 only.
        record("add", Class::Privileged, false),
    ];
    let f = check(&records, &facts());
    let statuses: Vec<(&str, &Status)> = f.iter().map(|f| (f.form.as_str(), &f.status)).collect();
    assert_eq!(
        statuses,
        vec![
            ("hlt", &Status::Agrees),
            ("sgdt", &Status::KnownDeviation("no CR4.UMIP".into())),
            ("wrmsr", &Status::Disagrees),
            (
                "cpuid",
                &Status::KnownDeviationFixed("thought broken".into())
            ),
        ]
    );
    assert_eq!(
        Tally::of(&f),
        Tally {
            agree: 1,
            known: 1,
            unexpected: 1,
            fixed: 1,
            not_judged: 0
        }
    );
    assert_eq!(
        Tally::of(&f).to_string(),
        "documented facts: 1 agree, 1 known engine deviations, 1 unexpected disagreements, 1 listed as known deviations but agree"
    );
    assert!(f[2].to_string().contains("UNEXPECTED"), "{}", f[2]);
}

#[test]
fn annotate_fills_documented_and_deviation() {
    let mut records = vec![
        record("hlt", Class::Privileged, true),
        record("sgdt", Class::SensitiveUnprivileged, false),
        record("wrmsr", Class::Innocuous, true),
        record("nop", Class::Innocuous, false),
    ];
    let findings = annotate(&mut records, &facts());
    assert_eq!(findings.len(), 3);
    assert_eq!(records[0].documented.as_deref(), Some("privileged (SDM)"));
    assert_eq!(records[0].deviation, None);
    assert_eq!(
        records[1].deviation.as_deref(),
        Some("engine disagrees with the documentation: expected privileged, measured sensitive-unprivileged (privileged false, sensitive true, violates_pg true); known fake gap: no CR4.UMIP")
    );
    assert!(records[2]
        .deviation
        .as_deref()
        .is_some_and(|d| d.ends_with(UNEXPECTED)));
    assert_eq!(records[3].documented, None);
    assert_eq!(records[3].deviation, None);
}

#[test]
fn the_measured_deviation_needs_no_table() {
    let mut r = record("blcfill", Class::Innocuous, false);
    r.verdict.class = Class::EngineDeviation;
    r.verdict.off_sentinel = Some("base@cpl0: completed@0x7105".into());
    let mut records = vec![r];
    let none = parse("").expect("parses");
    assert!(annotate(&mut records, &none).is_empty());
    assert_eq!(
        records[0].deviation.as_deref(),
        Some("engine executed a different instruction (base@cpl0: completed@0x7105 instead of the sentinel right after it)")
    );
}

#[test]
fn unless_leaves_out_forms_containing_any_of_its_texts() {
    let facts =
        parse("Mov_rm16_Sreg unless ,ds|,es | ,fs\t32\t*\tviolator\tR&I\t\n").expect("parses");
    let f = &facts.facts[0];
    assert_eq!(f.instruction, "Mov_rm16_Sreg");
    for (form, named) in [
        ("mov cx,cs", true),
        ("mov cx,ss", true),
        ("mov cx,gs", true),
        ("mov cx,ds", false),
        ("mov cx,es", false),
        ("mov cx,fs", false),
    ] {
        assert_eq!(f.names("Mov_rm16_Sreg", "mov", form), named, "{form}");
    }
    let (_, _, msg) = parse_err("Mov_rm16_Sreg unless ,ds||,es\t32\t*\tviolator\tR&I\t\n");
    assert!(msg.contains("no empty one"), "{msg}");
}
