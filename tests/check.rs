//! `popek check`: a scan or a report against a kept baseline, as CI runs it.
//! Exit codes: 0 nothing changed, 1 drift, 2 the check could not be made.
//! Each test works on a small 16-bit scan of a few instructions.

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const ONLY: &str = "sgdt,hlt";

fn popek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_popek"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run popek")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A baseline: `popek scan --mode 16 --only sgdt,hlt` in `dir`.
fn baseline(dir: &Path) -> PathBuf {
    let o = popek(&[
        "scan",
        "--mode",
        "16",
        "--only",
        ONLY,
        "--format",
        "json",
        "--out",
        path(dir),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    dir.join("popek-unicorn.json")
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(p).expect("read")).expect("json")
}

fn write(p: &Path, v: &Value) {
    fs::write(p, serde_json::to_string(v).expect("json")).expect("write");
}

/// The index of the record of `code` in `config` in a report.
fn index(v: &Value, code: &str, config: &str) -> usize {
    v["records"]
        .as_array()
        .expect("records")
        .iter()
        .position(|r| r["code"] == code && r["config"] == config)
        .unwrap_or_else(|| panic!("no record of {code} {config}"))
}

/// A copy of `base` with two planted changes: SGDT (m1632) without UMIP
/// comes out privileged, and HLT's evidence and states not run change.
fn planted(base: &Path, to: &Path) -> PathBuf {
    let mut v = read(base);
    let i = index(&v, "Sgdt_m1632", "umip=off");
    v["records"][i]["verdict"]["class"] = "privileged".into();
    let j = index(&v, "Hlt", "umip=on");
    let hlt = &mut v["records"][j]["verdict"];
    hlt["evidence"][0]["outcome_b"] = "#UD".into();
    hlt["not_run"] = serde_json::json!(["ring1@cpl0"]);
    let p = to.join("planted.json");
    write(&p, &v);
    p
}

fn check(args: &[&str]) -> Output {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    popek(&all)
}

/// `check` with the scan options of [`baseline`].
fn check_scan(base: &Path, more: &[&str]) -> Output {
    let mut args = vec!["--baseline", path(base), "--mode", "16", "--only", ONLY];
    args.extend_from_slice(more);
    check(&args)
}

fn assert_error(o: &Output, want: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit 2 expected: {err}");
    assert!(err.contains(want), "stderr should say {want:?}: {err}");
    assert!(o.stdout.is_empty(), "nothing on stdout: {}", stdout(o));
}

#[test]
fn an_unchanged_scan_passes_and_planted_drift_is_named() {
    let d = tempfile::tempdir().expect("temp dir");
    let base = baseline(d.path());
    // A fresh scan with the options of the baseline, and the baseline
    // checked as a report: nothing changed.
    let o = check_scan(&base, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("6 records compared with") && stderr(&o).contains("0 changed"),
        "{}",
        stderr(&o)
    );
    let o = check(&["--baseline", path(&base), "--report", path(&base)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Another host CPU is no drift.
    let mut v = read(&base);
    v["header"]["host_cpu"] = "Some Other CPU".into();
    let other_host = d.path().join("other-host.json");
    write(&other_host, &v);
    let o = check(&["--baseline", path(&base), "--report", path(&other_host)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));

    // The planted changes, in a report and as the baseline of a fresh scan.
    let bad = planted(&base, d.path());
    let o = check(&["--baseline", path(&base), "--report", path(&bad)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("drift: unicorn 16 umip=off Sgdt_m1632 (sgdt [8100h]): class: sensitive-unprivileged → privileged"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("drift: unicorn 16 umip=on Hlt (hlt): evidence: privileged: base@cpl0 completed vs base@cpl3 #GP (")
            && lines[1].contains(" → privileged: base@cpl0 completed vs base@cpl3 #UD (")
            && lines[1].ends_with(" | not_run: (none) → ring1@cpl0"),
        "{out}"
    );
    assert!(stderr(&o).contains("2 changed"), "{}", stderr(&o));
    // The other way round, old and new swap.
    let o = check_scan(&bad, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("class: privileged → sensitive-unprivileged"),
        "{}",
        stdout(&o)
    );
    // The header's engine version and theorem verdicts are compared per
    // mode and configuration.
    let mut v = read(&base);
    v["header"]["engine_version"] = "unicorn 9.9".into();
    v["header"]["theorems"][0]["theorem1_vmm"]["violators"] = 3.into();
    let header = d.path().join("header.json");
    write(&header, &v);
    let o = check(&["--baseline", path(&header), "--report", path(&base)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "drift: unicorn 16 umip=off (header): engine_version: unicorn 9.9 → unicorn 2.1 | theorem1_vmm: fails (3 violators) → fails (2 violators)\n\
         drift: unicorn 16 umip=on (header): engine_version: unicorn 9.9 → unicorn 2.1\n"
    );
    // A record only one side has is drift.
    let mut v = read(&base);
    let i = index(&v, "Hlt", "umip=off");
    v["records"].as_array_mut().expect("records").remove(i);
    let fewer = d.path().join("fewer.json");
    write(&fewer, &v);
    let o = check(&["--baseline", path(&fewer), "--report", path(&base)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o)
            .contains("unicorn 16 umip=off Hlt (hlt): record: missing → present (privileged)"),
        "{}",
        stdout(&o)
    );
}

/// The `<testcase>`s of a JUnit file: (classname, name, failure message,
/// skipped message), and the `<testsuites>` counts.
type Cases = Vec<(String, String, Option<String>, Option<String>)>;

fn junit(p: &Path) -> (Cases, [usize; 3]) {
    let text = fs::read_to_string(p).expect("junit written");
    let doc = roxmltree::Document::parse(&text).expect("JUnit is XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let count = |n: roxmltree::Node, a: &str| -> usize {
        n.attribute(a)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{a} attribute"))
    };
    let totals = [
        count(root, "tests"),
        count(root, "failures"),
        count(root, "skipped"),
    ];
    let mut cases = Vec::new();
    for suite in root.children().filter(|n| n.has_tag_name("testsuite")) {
        let mine: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let failed = mine
            .iter()
            .filter(|c| c.children().any(|n| n.has_tag_name("failure")))
            .count();
        let skipped = mine
            .iter()
            .filter(|c| c.children().any(|n| n.has_tag_name("skipped")))
            .count();
        assert_eq!(
            [
                count(suite, "tests"),
                count(suite, "failures"),
                count(suite, "skipped")
            ],
            [mine.len(), failed, skipped],
            "the suite's counts are its cases'"
        );
        for c in mine {
            let msg = |tag: &str| {
                c.children()
                    .find(|n| n.has_tag_name(tag))
                    .map(|n| n.attribute("message").unwrap_or_default().to_string())
            };
            cases.push((
                c.attribute("classname").unwrap_or_default().to_string(),
                c.attribute("name").unwrap_or_default().to_string(),
                msg("failure"),
                msg("skipped"),
            ));
        }
    }
    (cases, totals)
}

#[test]
fn junit_has_a_case_per_record_and_known_failures_are_skipped() {
    let d = tempfile::tempdir().expect("temp dir");
    let base = baseline(d.path());
    let bad = planted(&base, d.path());
    let xml = d.path().join("junit.xml");
    let md = d.path().join("summary.md");
    let o = check(&[
        "--baseline",
        path(&base),
        "--report",
        path(&bad),
        "--junit",
        path(&xml),
        "--markdown",
        path(&md),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let (cases, totals) = junit(&xml);
    // 6 records (3 encodings, 2 configurations) and 2 header groups.
    assert_eq!(cases.len(), 8);
    assert_eq!(totals, [8, 2, 0]);
    let case = |class: &str, name: &str| {
        cases
            .iter()
            .find(|c| c.0 == class && c.1 == name)
            .unwrap_or_else(|| panic!("no case {class} {name}: {cases:?}"))
    };
    let sgdt = case("unicorn.16.umip=off", "Sgdt_m1632 (sgdt [8100h])");
    assert!(
        sgdt.2
            .as_deref()
            .is_some_and(|m| m.starts_with("class: sensitive-unprivileged → privileged")),
        "{sgdt:?}"
    );
    assert_eq!(
        case("unicorn.16.umip=on", "Sgdt_m1632 (sgdt [8100h])").2,
        None
    );
    assert!(case("unicorn.16.umip=on", "Hlt (hlt)").2.is_some());
    let summary = fs::read_to_string(&md).expect("markdown written");
    assert!(
        summary.contains("**Failed: 2 changes no known failure expects.**"),
        "{summary}"
    );
    assert!(
        summary.contains("| unicorn | 16 | umip=off | 3 | 1 | 0 |"),
        "{summary}"
    );

    // Known failures: both planted records, and one that no longer drifts.
    let known = d.path().join("known.txt");
    fs::write(
        &known,
        "# expected drift\n\
         unicorn 16 umip=off Sgdt_m1632 planted <class> & \"quotes\"\n\
         \n\
         * * * hlt planted evidence\n\
         unicorn 16 umip=on sgdt fixed since\n",
    )
    .expect("write");
    let o = check(&[
        "--baseline",
        path(&base),
        "--report",
        path(&bad),
        "--junit",
        path(&xml),
        "--known-failures",
        path(&known),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("known: unicorn 16 umip=off Sgdt_m1632 (sgdt [8100h]): class: sensitive-unprivileged → privileged")
            && out.contains("(known failure, line 2: planted <class> & \"quotes\")"),
        "{out}"
    );
    assert!(
        stderr(&o).contains("known.txt line 5: stale known failure: no longer drifts"),
        "{}",
        stderr(&o)
    );
    assert!(
        out.contains("known: unicorn 16 umip=on Hlt (hlt): evidence: ")
            && out.contains("(known failure, line 4: planted evidence)"),
        "{out}"
    );
    assert!(
        stderr(&o).contains("0 changed, 2 known failures, 1 stale"),
        "{}",
        stderr(&o)
    );
    let (cases, totals) = junit(&xml);
    assert_eq!(totals, [8, 0, 2]);
    assert!(cases
        .iter()
        .any(|c| c.3.as_deref().is_some_and(
            |m| m.starts_with("known failure (line 2: planted <class> & \"quotes\")")
        )));

    // A malformed line is an error naming it.
    fs::write(&known, "# ok\nunicorn 16 umip=off\n").expect("write");
    let o = check(&[
        "--baseline",
        path(&base),
        "--report",
        path(&bad),
        "--known-failures",
        path(&known),
    ]);
    assert_error(
        &o,
        "known.txt line 2: expected <engine> <mode> <config> <code> <reason>",
    );
    fs::write(
        &known,
        "unicorn 16 umip=on hlt\tok\nbochs 16 umip=on hlt why\n",
    )
    .expect("write");
    let o = check_scan(&base, &["--known-failures", path(&known)]);
    assert_error(&o, "line 2: unknown engine 'bochs'");
}

#[test]
fn a_check_that_cannot_be_made_is_an_error_not_drift() {
    let d = tempfile::tempdir().expect("temp dir");
    let base = baseline(d.path());
    let text = fs::read_to_string(&base).expect("read");

    // Missing and corrupt baselines.
    assert_error(
        &check_scan(Path::new("/nonexistent/base.json"), &[]),
        "cannot read report /nonexistent/base.json",
    );
    let cut = d.path().join("cut.json");
    fs::write(&cut, &text[..text.len() / 2]).expect("write");
    assert_error(&check_scan(&cut, &[]), "is not valid JSON");
    let empty = d.path().join("empty.json");
    fs::write(&empty, "").expect("write");
    assert_error(&check_scan(&empty, &[]), "empty.json is not valid JSON");

    // Another tool version.
    let mut v = read(&base);
    v["header"]["tool_version"] = "0.0.1".into();
    let old = d.path().join("old.json");
    write(&old, &v);
    assert_error(
        &check_scan(&old, &[]),
        "has tool_version 0.0.1 but the check runs tool_version ",
    );
    assert_error(
        &check(&["--baseline", path(&old), "--report", path(&base)]),
        "has tool_version 0.0.1",
    );

    // Modes and configurations the two do not share, either way round.
    let b = path(&base);
    assert_error(
        &check(&["--baseline", b, "--mode", "16,32", "--only", ONLY]),
        &format!("the check runs mode 32 but baseline {b} has mode 16"),
    );
    assert_error(
        &check(&["--baseline", b, "--mode", "32", "--only", ONLY]),
        &format!("baseline {b} has mode 16 but the check runs mode 32"),
    );
    assert_error(
        &check(&[
            "--baseline",
            b,
            "--mode",
            "16",
            "--config",
            "umip=off",
            "--only",
            ONLY,
        ]),
        &format!(
            "baseline {b} has configuration umip=on but the check runs configuration umip=off"
        ),
    );
    assert_error(
        &check(&[
            "--baseline",
            b,
            "--engine",
            "kvm",
            "--mode",
            "16",
            "--only",
            ONLY,
        ]),
        &format!("baseline {b} has engine unicorn but the check runs engine kvm"),
    );
    let mut v = read(&base);
    let recs = v["records"].as_array_mut().expect("records");
    recs.retain(|r| r["config"] == "umip=off");
    v["header"]["configurations"] = serde_json::json!(["umip=off"]);
    let off = d.path().join("off.json");
    write(&off, &v);
    assert_error(
        &check(&["--baseline", b, "--report", path(&off)]),
        &format!(
            "baseline {b} has configuration umip=on but report {} has configuration umip=off",
            off.display()
        ),
    );

    // Usage: --report takes no scan options; --only must name something;
    // an output may not replace an input.
    assert_eq!(
        check(&["--baseline", b, "--report", b, "--mode", "16"])
            .status
            .code(),
        Some(2)
    );
    assert_error(
        &check(&["--baseline", b, "--report", b, "--only", "nosuch"]),
        "'nosuch' names no record",
    );
    assert_error(
        &check(&["--baseline", b, "--report", b, "--junit", b]),
        "is an input of the check",
    );
    assert_eq!(
        fs::read_to_string(&base).expect("read"),
        text,
        "baseline untouched"
    );
    assert_error(
        &check(&[
            "--baseline",
            b,
            "--report",
            b,
            "--junit",
            "/nonexistent/dir/j.xml",
        ]),
        "the directory /nonexistent/dir does not exist",
    );
}
