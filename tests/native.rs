//! End-to-end tests of `--engine native`: the host CPU at CPL 3.

use std::process::{Command, Output};

fn popek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_popek"))
        .args(args)
        .output()
        .expect("run popek")
}

/// The configuration the host kernel runs (UMIP on or off).
fn host_umip() -> &'static str {
    let umip = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.split_whitespace().any(|f| f == "umip"))
        .unwrap_or(false);
    if umip {
        "on"
    } else {
        "off"
    }
}

/// Why the native engine cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    analyzer::engine::availability(analyzer::engine::EngineKind::Native).err()
}

#[test]
fn engines_lists_native_with_the_host_facts() {
    let o = popek(&["engines"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    let line = out
        .lines()
        .find(|l| l.starts_with("native: "))
        .unwrap_or_else(|| panic!("{out}"));
    match unavailable() {
        Some(why) => assert!(line.contains("not available"), "{line} ({why})"),
        None => {
            assert!(line.starts_with("native: available, "), "{line}");
            assert!(line.contains("microcode"), "{line}");
            assert!(
                line.contains(&format!("UMIP {} in the kernel", host_umip())),
                "{line}"
            );
        }
    }
}

#[test]
fn explain_on_native_runs_the_user_side_only() {
    if let Some(why) = unavailable() {
        println!("skipped: native engine: {why}");
        return;
    }
    let umip = format!("--umip={}", host_umip());
    let o = popek(&[
        "explain", "--engine", "native", "--mode", "64", &umip, "48 01 c8",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("base@cpl3, base@cpl3 (repeat 1): completed"),
        "{out}"
    );
    assert!(out.contains("changed rax 0x11 vs 0x13"), "{out}");
    // Its length on the CPU, by the page-boundary method, beside the
    // decoder's; the supervisor side it does not run is not measured.
    assert!(
        out.contains("length: 3 by the decoder; length 3 (page boundary) at base@cpl3\n"),
        "{out}"
    );
    // A load from the unmapped null page: #PF with its address.
    let o = popek(&[
        "explain",
        "--engine",
        "native",
        "--mode",
        "64",
        &umip,
        "--hex",
        "8b042523010000",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("#PF(0x4) at 0x123"), "{out}");
    assert!(
        out.contains("not-supported: native: runs at cpl 3 only"),
        "{out}"
    );
    // No privilege verdict rests on the supervisor side it did not run.
    assert!(!out.contains("verdict: privileged"), "{out}");
    let o = popek(&[
        "explain", "--engine", "native", "--mode", "64", &umip, "--hex", "f4",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("base@cpl3, base@cpl3 (repeat 1): #GP(0x0)"),
        "{out}"
    );
    assert!(out.contains("verdict: not-judged"), "{out}");
}

/// A campaign on the host CPU alone in a configuration the host does not
/// run would run nothing and say "0 findings": it is refused, and the
/// host's own runs.
#[test]
fn fuzz_on_native_alone_is_refused_in_a_configuration_the_host_does_not_run() {
    if let Some(why) = unavailable() {
        println!("skipped: {why}");
        return;
    }
    let d = tempfile::tempdir().expect("tmp");
    let other = if host_umip() == "on" { "off" } else { "on" };
    let run = |umip: &str| {
        let out = d.path().join(umip);
        let o = popek(&[
            "fuzz",
            "--engine",
            "native",
            "--config",
            &format!("umip={umip}"),
            "--iterations",
            "20",
            "--out",
            out.to_str().expect("utf-8 path"),
        ]);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(other);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not modeled") && err.contains("host"), "{err}");
    let (code, err) = run(host_umip());
    assert!(matches!(code, Some(0 | 1)), "{err}");
    // Nor does it run 16-bit code.
    let o = popek(&[
        "fuzz",
        "--engine",
        "native",
        "--mode",
        "16",
        "--config",
        &format!("umip={}", host_umip()),
        "--iterations",
        "20",
        "--out",
        d.path().join("m16").to_str().expect("utf-8 path"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not one a user process runs in"), "{err}");
}
