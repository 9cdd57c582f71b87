//! What CI and a hostile user can rely on: every exit code, every file.
//! Exit codes: 0 success or no difference, 1 a difference or finding the
//! command exists to report, 2 bad usage, unreadable input or another error.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn popek_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_popek"));
    c.args(args).stdin(Stdio::null());
    c
}

fn popek(args: &[&str]) -> Output {
    popek_cmd(args).output().expect("run popek")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The files of a directory with their contents, hidden ones included.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = fs::read(e.path()).unwrap_or_default();
            (name, bytes)
        })
        .collect();
    v.sort();
    v
}

fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.contains(".tmp."))
        .collect()
}

/// `popek scan` of a few instructions in 32-bit mode into `out`.
fn small_scan_cmd(out: &Path, only: &str) -> Command {
    popek_cmd(&[
        "scan",
        "--only",
        only,
        "--mode",
        "32",
        "--jobs",
        "2",
        "--out",
        path(out),
    ])
}

fn small_scan(out: &Path, only: &str) -> Output {
    small_scan_cmd(out, only).output().expect("run popek")
}

fn assert_usage_error(args: &[&str], want: &str) {
    let t = Instant::now();
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.chars().take(40).collect::<String>())
        .collect();
    let o = popek(args);
    let err = stderr(&o);
    let args = &shown;
    assert_eq!(o.status.code(), Some(2), "{args:?}: exit 2 expected; {err}");
    assert!(
        err.contains(want),
        "{args:?}: stderr should say {want:?}: {err}"
    );
    assert!(
        err.len() < 2000,
        "{args:?}: the message is short: {} bytes",
        err.len()
    );
    assert!(o.stdout.is_empty(), "{args:?}: nothing on stdout");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "{args:?}: refused at once"
    );
}

#[test]
fn a_symlink_planted_in_the_report_directory_is_never_followed() {
    let d = tempfile::tempdir().expect("temp dir");
    let victim = d.path().join("victim");
    fs::write(&victim, b"precious").expect("victim");
    let out = d.path().join("out");
    fs::create_dir(&out).expect("out");
    // Symlinks at the report names and at the names temporaries used to have.
    for name in [
        "popek-unicorn.csv",
        "popek-unicorn.json",
        "popek-unicorn.md",
    ] {
        std::os::unix::fs::symlink(&victim, out.join(name)).expect("symlink");
        for guess in [format!(".{name}.tmp"), format!(".{name}.tmp.1")] {
            std::os::unix::fs::symlink(&victim, out.join(guess)).expect("symlink");
        }
    }
    let o = small_scan(&out, "hlt");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(fs::read(&victim).expect("victim"), b"precious");
    for name in [
        "popek-unicorn.csv",
        "popek-unicorn.json",
        "popek-unicorn.md",
    ] {
        let m = fs::symlink_metadata(out.join(name)).expect("report");
        assert!(m.file_type().is_file(), "{name} is a new regular file");
    }
}

#[test]
fn a_full_disk_leaves_the_previous_set_whole() {
    let d = tempfile::tempdir().expect("temp dir");
    let out = d.path().join("out");
    let probe = d.path().join("probe");
    fs::create_dir(&out).expect("out");
    fs::create_dir(&probe).expect("probe");
    assert_eq!(small_scan(&out, "hlt").status.code(), Some(0));
    let before = snapshot(&out);
    // The sizes of the larger set: the CSV fits under the limit, the JSON not.
    let bigger = "hlt,sgdt,add,pushfd,popfd";
    assert_eq!(small_scan(&probe, bigger).status.code(), Some(0));
    let size = |n: &str| fs::metadata(probe.join(n)).expect("size").len();
    let (csv, json) = (size("popek-unicorn.csv"), size("popek-unicorn.json"));
    assert!(json > csv + 1, "the JSON is larger than the CSV");
    let limit = csv + 1;
    let mut cmd = small_scan_cmd(&out, bigger);
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only calls the async-signal-
    // safe functions setrlimit and signal, on values it owns.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A write past the limit fails with EFBIG instead of killing.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = cmd.output().expect("run popek");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot write report"), "{err}");
    assert_eq!(
        snapshot(&out),
        before,
        "the previous set is whole, nothing else is there"
    );
}

#[test]
fn an_interrupted_scan_leaves_no_temporary_files_and_a_whole_set() {
    let d = tempfile::tempdir().expect("temp dir");
    let out = d.path().join("out");
    fs::create_dir(&out).expect("out");
    assert_eq!(small_scan(&out, "hlt").status.code(), Some(0));
    let old = snapshot(&out);
    let new_dir = d.path().join("new");
    fs::create_dir(&new_dir).expect("new");
    let only = "hlt,sgdt,add,pushfd,popfd,lar,lsl";
    assert_eq!(small_scan(&new_dir, only).status.code(), Some(0));
    let new = snapshot(&new_dir);
    let mut caught = 0;
    for round in 0..30 {
        let signal = if round % 2 == 0 {
            libc::SIGINT
        } else {
            libc::SIGTERM
        };
        let mut child = small_scan_cmd(&out, only)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id() as libc::pid_t;
        // Stop the scan while it writes its temporaries, then signal it.
        let t = Instant::now();
        let mut stopped = false;
        while t.elapsed() < Duration::from_secs(60) {
            if !temporaries(&out).is_empty() {
                // SAFETY: kill only sends a signal to our own child.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                stopped = !temporaries(&out).is_empty();
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid, signal);
                    libc::kill(pid, libc::SIGCONT);
                }
                break;
            }
            if child.try_wait().expect("wait").is_some() {
                break;
            }
        }
        let status = child.wait().expect("wait");
        assert!(
            temporaries(&out).is_empty(),
            "round {round}: {:?}",
            temporaries(&out)
        );
        let now = snapshot(&out);
        assert!(now == old || now == new, "round {round}: a mixed set");
        if stopped {
            caught += 1;
            use std::os::unix::process::ExitStatusExt;
            assert!(
                status.code() == Some(128 + signal) || status.code() == Some(0),
                "round {round}: {status:?} {:?}",
                status.signal()
            );
        }
        if caught >= 3 {
            break;
        }
    }
    assert!(
        caught > 0,
        "no round stopped the scan while it wrote its reports"
    );
}

#[test]
fn an_engine_that_did_not_run_leaves_no_report_that_reads_as_current() {
    let d = tempfile::tempdir().expect("temp dir");
    for stale in [
        "popek-kvm.json",
        "popek-kvm.csv",
        "popek-comparison.md",
        "popek-comparison.json",
    ] {
        fs::write(d.path().join(stale), b"from an earlier scan").expect("plant");
    }
    let o = popek_cmd(&[
        "scan",
        "--engine",
        "all",
        "--only",
        "hlt",
        "--mode",
        "64",
        "--out",
        path(d.path()),
    ])
    .env("POPEK_KVM_DEVICE", "/nonexistent/kvm")
    .output()
    .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let names: Vec<String> = snapshot(d.path()).into_iter().map(|(n, _)| n).collect();
    let mut want = vec![
        "popek-unicorn.csv",
        "popek-unicorn.json",
        "popek-unicorn.md",
    ];
    // `all` includes the host CPU where it can run: its reports, and the
    // comparison run by run of the two engines (no verdict comparison:
    // native does not run the supervisor side).
    if analyzer::engine::availability(analyzer::engine::EngineKind::Native).is_ok() {
        want.extend([
            "popek-native.csv",
            "popek-native.json",
            "popek-native.md",
            "popek-runs.json",
            "popek-runs.md",
        ]);
        want.sort();
    }
    assert_eq!(names, want, "only the reports of this scan");
}

#[test]
fn repeated_unknown_and_empty_values_are_refused() {
    assert_usage_error(&["scan", "--mode", "64,64"], "--mode: 64 is given twice");
    assert_usage_error(
        &["scan", "--config", "umip=off,umip=off"],
        "--config: umip=off is given twice",
    );
    assert_usage_error(
        &["scan", "--config", "umip=off,umip=off:iopl=0"],
        "given twice",
    );
    assert_usage_error(&["scan", "--engine", "unicorn,unicorn"], "given twice");
    assert_usage_error(&["scan", "--only", "hlt,sgdtt"], "'sgdtt'");
    assert_usage_error(&["scan", "--only", "hlt,sgdtt"], "did you mean sgdt");
    assert_usage_error(&["scan", "--config", ""], "empty");
    assert_usage_error(&["scan", "--jobs", "10000"], "--jobs 10000: at most");
    assert_usage_error(&["violators", "--jobs", "10000"], "--jobs 10000: at most");
    assert_usage_error(&["explain", ""], "nothing to explain");
    assert_usage_error(&["explain", "   "], "nothing to explain");
    assert_usage_error(&["explain", "9 0"], "'9' has 1 hex digits");
    assert_usage_error(&["explain", "0 f 0 b"], "'0' has 1 hex digits");
    assert_usage_error(&["scan", "--bogus"], "--bogus");
}

#[test]
fn huge_inputs_are_refused_quickly_with_a_short_message() {
    assert_usage_error(&["scan", "--facts", "/dev/zero"], "larger than");
    let word = "x".repeat(100_000);
    assert_usage_error(&["explain", &word], "longer than any mnemonic");
    assert_usage_error(&["scan", "--only", &word], "(100000 characters)");
    assert_usage_error(&["scan", "--mode", &word], "(100000 characters)");
    assert_usage_error(&["scan", "--config", &format!("umip={word}")], "umip");
    assert_usage_error(&["explain", &"90 ".repeat(30_000)], "15 bytes at most");
    let d = tempfile::tempdir().expect("temp dir");
    let table = d.path().join("facts.tsv");
    fs::write(
        &table,
        format!("instruction\tmodes\tconfig\texpect\tsource\tknown_deviation\n{word}\t32\t*\tprivileged\tSDM\t\n"),
    )
    .expect("write");
    assert_usage_error(&["scan", "--facts", path(&table)], "(100000 characters)");
}

/// A report made to take many times its size once read (a list of
/// millions of one-character strings, which took 14 times) is refused
/// before it is read, where it took GBs of memory; one popek wrote is read.
#[test]
fn a_report_made_to_take_many_times_its_size_is_refused() {
    let d = tempfile::tempdir().expect("temp dir");
    assert_eq!(small_scan(d.path(), "hlt").status.code(), Some(0));
    let json = d.path().join("popek-unicorn.json");
    let text = fs::read_to_string(&json).expect("json");
    let o = popek(&["diff", path(&json), path(&json)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Every record's notes: 3,000,000 strings of one character (12 MB).
    let notes = format!("\"notes\":[{}]", vec!["\"a\""; 3_000_000].join(","));
    let at = text.find("\"notes\":[").expect("notes");
    let end = at + text[at..].find(']').expect("end of notes") + 1;
    let bloated = d.path().join("bloated.json");
    fs::write(&bloated, format!("{}{notes}{}", &text[..at], &text[end..])).expect("write");
    assert_usage_error(&["diff", path(&bloated), path(&json)], "would take about");
    assert_usage_error(
        &["violators", "--report", path(&bloated)],
        "more than 3 times their size",
    );
}

#[test]
fn diff_tells_a_difference_from_a_broken_baseline() {
    let d = tempfile::tempdir().expect("temp dir");
    assert_eq!(small_scan(d.path(), "hlt,sgdt").status.code(), Some(0));
    let json = d.path().join("popek-unicorn.json");
    let text = fs::read_to_string(&json).expect("json");
    // Unreadable: exit 2, not 1.
    assert_usage_error(
        &["diff", path(&json), "/nonexistent/b.json"],
        "/nonexistent/b.json",
    );
    // A record given twice: the report is refused.
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let records = v["records"].as_array_mut().expect("records");
    let first = records[0].clone();
    records.push(first);
    let dup = d.path().join("dup.json");
    fs::write(&dup, serde_json::to_string(&v).expect("json")).expect("write");
    assert_usage_error(&["diff", path(&json), path(&dup)], "two records of");
    // Same: 0. Different: 1.
    assert_eq!(
        popek(&["diff", path(&json), path(&json)]).status.code(),
        Some(0)
    );
    let other = tempfile::tempdir().expect("temp dir");
    assert_eq!(small_scan(other.path(), "hlt").status.code(), Some(0));
    let o = popek(&[
        "diff",
        path(&json),
        path(&other.path().join("popek-unicorn.json")),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[test]
fn violators_of_a_mode_or_configuration_the_report_lacks_is_an_error() {
    let d = tempfile::tempdir().expect("temp dir");
    assert_eq!(small_scan(d.path(), "hlt,sgdt").status.code(), Some(0));
    let json = d.path().join("popek-unicorn.json");
    assert_usage_error(
        &["violators", "--report", path(&json), "--mode", "64"],
        "has no records of mode 64 (its modes: 32)",
    );
    assert_usage_error(
        &[
            "violators",
            "--report",
            path(&json),
            "--config",
            "umip=on:iopl=3",
        ],
        "has no records of configuration umip=on:iopl=3",
    );
    // Present, with violators: 1; present, without: 0.
    let o = popek(&["violators", "--report", path(&json), "--mode", "32"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let h = tempfile::tempdir().expect("temp dir");
    assert_eq!(small_scan(h.path(), "hlt").status.code(), Some(0));
    let o = popek(&[
        "violators",
        "--report",
        path(&h.path().join("popek-unicorn.json")),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn messages_name_what_failed_once() {
    // A device that is not KVM: the message names it and the variable.
    let o = popek_cmd(&["explain", "hlt", "--engine", "kvm"])
        .env("POPEK_KVM_DEVICE", "/dev/null")
        .output()
        .expect("run");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/dev/null") && err.contains("POPEK_KVM_DEVICE"),
        "{err}"
    );
    // An OS error is said once.
    let d = tempfile::tempdir().expect("temp dir");
    let missing = d.path().join("missing.tsv");
    let o = popek(&["scan", "--only", "hlt", "--facts", path(&missing)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
    // A directory is said to be one, once.
    let o = popek(&["scan", "--only", "hlt", "--facts", path(d.path())]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("a directory, not a file").count(), 1, "{err}");
}

#[test]
fn evidence_is_text_not_debug_output() {
    let d = tempfile::tempdir().expect("temp dir");
    let o = popek(&[
        "scan",
        "--only",
        "wrmsr,rdmsr,sgdt",
        "--mode",
        "64",
        "--out",
        path(d.path()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for name in [
        "popek-unicorn.csv",
        "popek-unicorn.md",
        "popek-unicorn.json",
    ] {
        let text = fs::read_to_string(d.path().join(name)).expect("report");
        if name != "popek-unicorn.md" {
            assert!(text.contains("msr: 0x"), "{name} has MSR evidence");
        }
        for debug in ["Some(", "None)", "(None", "\\n    "] {
            assert!(!text.contains(debug), "{name} contains {debug:?}");
        }
    }
    let o = popek(&[
        "violators",
        "--report",
        path(&d.path().join("popek-unicorn.json")),
    ]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("Some("));
}

#[test]
fn strict_exits_1_on_an_unexpected_disagreement() {
    let d = tempfile::tempdir().expect("temp dir");
    // A table that documents ADD as privileged: every scan disagrees.
    let table = d.path().join("facts.tsv");
    fs::write(
        &table,
        "instruction\tmodes\tconfig\texpect\tsource\tknown_deviation\nadd\t32\t*\tprivileged\ta test\t\n",
    )
    .expect("write");
    let out = d.path().join("out");
    fs::create_dir(&out).expect("out");
    let args = [
        "scan",
        "--only",
        "add",
        "--mode",
        "32",
        "--facts",
        path(&table),
        "--out",
        path(&out),
    ];
    let o = popek(&args);
    assert_eq!(o.status.code(), Some(0), "without --strict: {}", stderr(&o));
    let mut strict = args.to_vec();
    strict.push("--strict");
    let o = popek(&strict);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("unexpected"), "{}", stderr(&o));
}

#[test]
fn more_values_that_are_refused() {
    assert_usage_error(
        &["explain", "hlt", "--engine", "unicorn,unicorn"],
        "given twice",
    );
    let many = "x ".repeat(20_000);
    assert_usage_error(&["scan", "--mode", &many], "bytes in all");
    let filter = format!("sgdt {}", "y".repeat(50_000));
    assert_usage_error(&["explain", &filter, "--mode", "32"], "(50000 characters)");
}

#[test]
fn a_directory_in_the_way_of_a_report_changes_nothing() {
    let d = tempfile::tempdir().expect("temp dir");
    assert_eq!(small_scan(d.path(), "hlt").status.code(), Some(0));
    fs::remove_file(d.path().join("popek-unicorn.md")).expect("remove");
    fs::create_dir(d.path().join("popek-unicorn.md")).expect("a directory in the way");
    let before = snapshot(d.path());
    let o = small_scan(d.path(), "hlt,sgdt");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("popek-unicorn.md"), "{}", stderr(&o));
    assert_eq!(
        snapshot(d.path()),
        before,
        "nothing renamed, no temporary left"
    );
}
