//! End-to-end tests of the `popek` binary: what a user types, what a user sees.

use std::path::Path;
use std::process::{Command, Output};

fn popek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_popek"))
        .args(args)
        .output()
        .expect("run popek")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn explain_hlt_traps_at_cpl3_and_completes_at_cpl0() {
    let o = popek(&["explain", "hlt", "--mode", "64"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("cpl0: completed"), "{out}");
    assert!(out.contains("cpl3: #GP"), "{out}");
}

#[test]
fn explain_bytes_and_json() {
    let o = popek(&["explain", "0f 01 05 00 81 00 00", "--mode", "32", "--json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("explain --json prints JSON");
    assert_eq!(v[0]["code"], "Sgdt_m1632");
    assert_eq!(v[0]["runs"].as_array().map(Vec::len), Some(2));
}

#[test]
fn bad_input_gets_a_clear_error_and_a_failing_exit() {
    let cases: &[(&[&str], &str)] = &[
        (&["explain", "sgtd"], "unknown mnemonic 'sgtd'"),
        (&["explain", "sgtd"], "did you mean sgdt"),
        (&["explain", "0f 0g"], "malformed hex at character 5"),
        (&["explain", "0f 1"], "odd number"),
        (
            &["explain", "06", "--mode", "64"],
            "do not decode as an instruction in 64-bit mode",
        ),
        (&["explain", "90 90"], "more than one instruction"),
        (&["explain", "hlt", "--mode", "128"], "unknown mode '128'"),
        (
            &["explain", "push xyz", "--mode", "32"],
            "no form of 'push'",
        ),
        (&["scan", "--config", "umip=maybe"], "umip"),
        (&["scan", "--engine", "bochs"], "unknown engine 'bochs'"),
        (
            &["violators", "--report", "/nonexistent/report.json"],
            "/nonexistent/report.json",
        ),
    ];
    for (args, want) in cases {
        let o = popek(args);
        let (out, err) = text(&o);
        assert!(!o.status.success(), "{args:?} should fail; stdout: {out}");
        assert!(
            err.contains(want),
            "{args:?}: stderr should contain {want:?}, got: {err}"
        );
        assert!(
            out.is_empty(),
            "{args:?}: nothing on stdout on error, got: {out}"
        );
    }
}

fn scan_into(dir: &Path) -> Output {
    popek(&[
        "scan",
        "--only",
        "sgdt,hlt,add,pushfd,popfd",
        "--mode",
        "32",
        "--jobs",
        "2",
        "--out",
        dir.to_str().expect("utf-8 temp path"),
    ])
}

#[test]
fn scan_writes_deterministic_reports_that_read_back() {
    let a = tempfile::tempdir().expect("temp dir");
    let b = tempfile::tempdir().expect("temp dir");
    for d in [a.path(), b.path()] {
        let o = scan_into(d);
        assert!(o.status.success(), "{}", text(&o).1);
    }
    for name in [
        "popek-unicorn.csv",
        "popek-unicorn.json",
        "popek-unicorn.md",
    ] {
        let x = std::fs::read(a.path().join(name)).expect("report written");
        let y = std::fs::read(b.path().join(name)).expect("report written");
        assert!(x == y, "{name} differs between two scans of the same input");
    }
    let csv = std::fs::read_to_string(a.path().join("popek-unicorn.csv")).expect("csv");
    let header = csv.lines().next().expect("header");
    assert!(header.starts_with(
        "engine,mode,config,code,mnemonic,bytes,class,privileged,control_sensitive,behavior_sensitive,user_sensitive,violates_pg,documented_privileged,evidence"
    ), "{header}");
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(a.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The violators of that report: SGDT and POPFD are there, HLT and ADD are not.
    let json = a.path().join("popek-unicorn.json");
    let o = popek(&[
        "violators",
        "--report",
        json.to_str().expect("utf-8"),
        "--mode",
        "32",
        "--config",
        "umip=off",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("sgdt"), "{out}");
    assert!(out.contains("popfd"), "{out}");
    assert!(!out.contains("hlt"), "{out}");
    assert!(!out.contains(" add "), "{out}");

    // diff: a report against itself is clean (exit 0); against another scan of
    // other instructions it differs (exit 1).
    let o = popek(&[
        "diff",
        json.to_str().expect("utf-8"),
        json.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let c = tempfile::tempdir().expect("temp dir");
    let o = popek(&[
        "scan",
        "--only",
        "hlt",
        "--mode",
        "32",
        "--out",
        c.path().to_str().expect("utf-8"),
    ]);
    assert!(o.status.success());
    let other = c.path().join("popek-unicorn.json");
    let o = popek(&[
        "diff",
        json.to_str().expect("utf-8"),
        other.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).0.contains("missing"), "{:?}", text(&o));
}

#[test]
fn corrupt_report_files_get_a_clear_error() {
    let d = tempfile::tempdir().expect("temp dir");
    let bad = d.path().join("bad.json");
    std::fs::write(&bad, "{\"header\": {\"tool\": \"popek\",\n  oops").expect("write");
    let o = popek(&["violators", "--report", bad.to_str().expect("utf-8")]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("bad.json") && err.contains("line 2"), "{err}");
    let other = d.path().join("other.json");
    std::fs::write(&other, "{\"name\": \"not a report\"}").expect("write");
    let o = popek(&[
        "diff",
        other.to_str().expect("utf-8"),
        other.to_str().expect("utf-8"),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("not a popek report"), "{:?}", text(&o));
}

#[test]
fn engines_lists_unicorn() {
    let o = popek(&["engines"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.contains("unicorn: available"), "{out}");
    assert!(out.contains("kvm:"), "{out}");
}
