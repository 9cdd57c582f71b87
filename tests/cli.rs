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
    // The verdict first, with the state pair that decided it, then the runs.
    assert!(out.contains("verdict: privileged"), "{out}");
    assert!(
        out.contains("because privileged: base@cpl0 completed vs base@cpl3 #GP"),
        "{out}"
    );
    assert!(out.find("verdict:") < out.find("runs ("), "{out}");
    assert!(out.contains("base@cpl3, "), "{out}");
}

#[test]
fn explain_bytes_and_json() {
    let o = popek(&["explain", "0f 01 05 00 81 00 00", "--mode", "32", "--json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("explain --json prints JSON");
    let record = &v[0]["record"];
    assert_eq!(record["code"], "Sgdt_m1632");
    assert_eq!(record["verdict"]["class"], "sensitive-unprivileged");
    // Every run of the matrix, each with its state and its evidence.
    let runs = v[0]["runs"].as_array().expect("runs");
    assert_eq!(Some(runs.len() as u64), record["verdict"]["runs"].as_u64());
    assert!(runs.len() > 20, "{}", runs.len());
    assert_eq!(runs[0]["state"], "base@cpl0");
    assert!(runs[0]["detail"]["outcome"].is_object(), "{}", runs[0]);
    // SGDT writes its 6 bytes at data[0x100..]; the pages are not printed whole.
    let written = runs[0]["detail"]["data_written"]
        .as_array()
        .expect("written");
    assert!(!written.is_empty() && written.len() <= 6, "{written:?}");
    assert!(out.len() < 1_000_000, "{} bytes", out.len());
    // The length as the engine fetches it, on each side.
    assert_eq!(v[0]["decoder_length"], 7);
    assert_eq!(
        v[0]["fetch_lengths"],
        serde_json::json!([["base@cpl0", {"Bytes": 7}], ["base@cpl3", {"Bytes": 7}]])
    );
}

#[test]
fn explain_prints_the_page_boundary_length_beside_the_decoders() {
    let o = popek(&["explain", "48 01 c8", "--mode", "64"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains(
            "length: 3 by the decoder; length 3 (page boundary) at base@cpl0, \
             length 3 (page boundary) at base@cpl3\n"
        ),
        "{out}"
    );
    // 16-bit protected mode has no paging to fence the page with.
    let o = popek(&["explain", "01 c8", "--mode", "16"]);
    let (out, _) = text(&o);
    assert!(
        out.contains("length: 2 by the decoder; length not measured: mode 16 has no paging"),
        "{out}"
    );
    // Bytes the decoder finds no instruction in: the engine's length only.
    let o = popek(&["explain", "0f ff", "--raw", "--mode", "64"]);
    let (out, _) = text(&o);
    assert!(
        out.contains("length: the decoder finds no instruction; length "),
        "{out}"
    );
}

/// The `reproduce` line of a fuzz finding where Unicorn took its worker
/// down (Unicorn 2.1 aborts the process on LOCK BTS with a register) says
/// so and exits 1, where popek itself would die with no word.
#[test]
fn explain_says_when_an_engine_takes_the_process_down() {
    use std::os::unix::process::CommandExt;
    let d = tempfile::tempdir().expect("tmp");
    for extra in [&[][..], &["--json"][..]] {
        let args = [
            &["explain", "f0360fa3c1", "--hex", "--raw", "--mode", "64"][..],
            extra,
        ]
        .concat();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_popek"));
        cmd.args(&args).current_dir(d.path());
        // SAFETY: the closure makes only the getrlimit and setrlimit
        // system calls, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // No core of the abort: a soft limit of one byte stops core
                // files and piped handlers alike.
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_CORE, &mut lim) == 0 {
                    lim.rlim_cur = lim.rlim_max.min(1);
                    libc::setrlimit(libc::RLIMIT_CORE, &lim);
                }
                Ok(())
            });
        }
        let o = cmd.output().expect("run popek");
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains(
                "died of signal 6 (SIGABRT): an engine failure, not an outcome of the instruction"
            ),
            "{err}"
        );
    }
    // What Unicorn survives is explained as ever, by the child.
    let o = popek(&["explain", "0f 01 c8", "--mode", "64", "--json"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v.as_array().is_some_and(|a| !a.is_empty()), "{v}");
}

#[test]
fn bad_input_gets_a_clear_error_and_a_failing_exit() {
    let cases: &[(&[&str], &str)] = &[
        (&["explain", "sgtd"], "unknown mnemonic 'sgtd'"),
        (&["explain", "sgtd"], "did you mean sgdt"),
        (&["explain", "0f 0g"], "malformed hex at character 5"),
        (&["explain", "0f 1"], "'1' has 1 hex digits"),
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
        (&["scan", "--engine", "all,unicorn"], "all stands alone"),
        (
            &["violators", "--config", "umip=off,umip=on"],
            "violators takes one configuration",
        ),
        (
            &["scan", "--only", "hl\u{1b}[2Jt"],
            "'hl\\u{1b}[2Jt' is no mnemonic",
        ),
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
        "sgdt,hlt,add,pushfd,popfd,rdtsc,rdrand",
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
    assert_eq!(o.status.code(), Some(1), "violators found: exit 1; {err}");
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

/// Whether the KVM tests can run here; prints `skipped: <reason>` when not,
/// and fails instead when POPEK_REQUIRE_KVM=1 (a KVM CI job).
fn kvm_or_skip(test: &str) -> bool {
    match analyzer::engine::availability(analyzer::engine::EngineKind::Kvm) {
        Ok(_) => true,
        Err(reason) => {
            if std::env::var("POPEK_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{test}: KVM is required (POPEK_REQUIRE_KVM=1) but not available: {reason}");
            }
            println!("skipped: {test}: {reason}");
            false
        }
    }
}

/// Like `kvm_or_skip`, and the KVM also offers CR4.UMIP to its guests (not
/// every CPU or KVM does; where it does not, the test is skipped).
fn kvm_with_umip_or_skip(test: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    match analyzer::engine::kvm::KvmEngine::new() {
        Ok(e) if e.offers_umip() => true,
        Ok(_) => {
            println!("skipped: {test}: this KVM does not offer CR4.UMIP to its guests");
            false
        }
        Err(e) => panic!("{test}: KVM is available but cannot be opened: {e}"),
    }
}

#[test]
fn explain_on_kvm_shows_umip_traps() {
    if !kvm_with_umip_or_skip("explain_on_kvm_shows_umip_traps") {
        return;
    }
    let o = popek(&[
        "explain", "sgdt", "--mode", "64", "--umip", "on", "--engine", "all",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    // Unicorn has no CR4.UMIP; the KVM probe shows the #GP.
    let kvm = out.split("engine kvm").nth(1).expect("a kvm section");
    assert!(kvm.contains("verdict: privileged"), "{out}");
    assert!(kvm.contains("cpl3 #GP"), "{out}");
    let unicorn = out
        .split("engine unicorn")
        .nth(1)
        .expect("a unicorn section");
    let unicorn = unicorn.split("engine kvm").next().unwrap_or("");
    assert!(unicorn.contains("verdict: sensitive-unprivileged"), "{out}");
    assert!(
        unicorn.contains("engines differ at base@cpl3: completed vs #GP"),
        "{out}"
    );
}

#[test]
fn scan_all_engines_reports_the_umip_disagreement() {
    if !kvm_with_umip_or_skip("scan_all_engines_reports_the_umip_disagreement") {
        return;
    }
    let d = tempfile::tempdir().expect("temp dir");
    let o = popek(&[
        "scan",
        "--engine",
        "all",
        "--only",
        "sgdt,smsw,hlt,add",
        "--mode",
        "64",
        "--out",
        d.path().to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    for f in [
        "popek-unicorn.json",
        "popek-kvm.json",
        "popek-comparison.md",
        "popek-comparison.json",
    ] {
        assert!(d.path().join(f).exists(), "{f} written");
    }
    let diffs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("popek-comparison.json")).expect("read"),
    )
    .expect("comparison JSON");
    let umip_sgdt = diffs
        .as_array()
        .expect("a list")
        .iter()
        .find(|x| x["config"] == "umip=on" && x["code"] == "Sgdt_m1664")
        .expect("SGDT under umip=on differs between the engines");
    assert_eq!(
        umip_sgdt["a"]["class"], "sensitive-unprivileged",
        "{umip_sgdt}"
    );
    assert_eq!(umip_sgdt["b"]["class"], "privileged", "{umip_sgdt}");
    let md = std::fs::read_to_string(d.path().join("popek-comparison.md")).expect("read");
    assert!(
        md.contains("# popek: unicorn vs kvm") && md.contains("sgdt"),
        "{md}"
    );
    // Run by run: SGDT under umip=on completes on Unicorn at CPL 3 and is
    // #GP on KVM, whose CPL-3 side the CPU runs (on every flavor).
    let runs: Vec<analyzer::compare::RunDifference> = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("popek-runs.json")).expect("read"),
    )
    .expect("runs JSON");
    let sgdt = runs
        .iter()
        .find(|x| {
            x.config == "umip=on"
                && x.code == "Sgdt_m1664"
                && x.a.engine == "unicorn"
                && x.b.engine == "kvm"
        })
        .expect("SGDT differs at CPL 3 run by run");
    assert_eq!(
        (sgdt.a.outcome.as_str(), sgdt.b.outcome.as_str()),
        ("completed", "#GP(0x0)")
    );
    assert!(sgdt.states.iter().any(|s| s == "base@cpl3"), "{sgdt:?}");
    assert_eq!(sgdt.b.executor, analyzer::engine::Executor::Hardware);
    // The host CPU is in `all` where it runs, for the CPL-3 side.
    if analyzer::engine::availability(analyzer::engine::EngineKind::Native).is_ok() {
        assert!(d.path().join("popek-native.json").exists());
        let md = std::fs::read_to_string(d.path().join("popek-runs.md")).expect("read");
        assert!(
            md.contains("## unicorn vs native") && md.contains("## kvm vs native"),
            "{md}"
        );
    }
    // HLT is privileged on both: not a difference.
    assert!(!diffs
        .as_array()
        .expect("list")
        .iter()
        .any(|x| x["code"] == "Hlt"));
}

#[test]
fn without_kvm_popek_says_why_and_unicorn_still_works() {
    let run = |args: &[&str], dev: &str| {
        Command::new(env!("CARGO_BIN_EXE_popek"))
            .args(args)
            .env("POPEK_KVM_DEVICE", dev)
            .output()
            .expect("run popek")
    };
    // `engines` names the reason and the fix.
    let o = run(&["engines"], "/nonexistent/kvm");
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.contains("unicorn: available"), "{out}");
    assert!(
        out.contains("kvm: not available") && out.contains("/nonexistent/kvm does not exist"),
        "{out}"
    );
    // A directory cannot be opened read/write.
    let o = run(&["engines"], "/");
    assert!(
        text(&o).0.contains("cannot open / read/write"),
        "{:?}",
        text(&o)
    );
    // Asking for KVM explicitly fails with the reason...
    let o = run(&["explain", "hlt", "--engine", "kvm"], "/nonexistent/kvm");
    assert!(!o.status.success());
    assert!(text(&o).1.contains("does not exist"), "{:?}", text(&o));
    // ...while `all` goes on with Unicorn and says what it skipped.
    let d = tempfile::tempdir().expect("temp dir");
    let o = run(
        &[
            "scan",
            "--engine",
            "all",
            "--only",
            "hlt",
            "--mode",
            "64",
            "--out",
            d.path().to_str().expect("utf-8"),
        ],
        "/nonexistent/kvm",
    );
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("engine kvm is not available"), "{err}");
    assert!(d.path().join("popek-unicorn.json").exists());
    assert!(!d.path().join("popek-kvm.json").exists());
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let report = concat!(env!("CARGO_MANIFEST_DIR"), "/reports/popek-unicorn.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_popek"))
        .args(["violators", "--report", report])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn popek");
    // Read a little, then close the pipe, like `| head -1`.
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("some output");
    let o = child.wait_with_output().expect("wait");
    assert!(
        o.status.code() == Some(1),
        "{:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
}

/// Output that cannot be written (a full disk behind stdout) is an error
/// that says it was the standard output.
#[test]
fn a_full_stdout_is_named_in_the_error() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        println!("skipped: no /dev/full on this host");
        return;
    };
    let o = Command::new(env!("CARGO_BIN_EXE_popek"))
        .arg("engines")
        .stdout(full)
        .output()
        .expect("run popek");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot write to standard output: No space left on device"),
        "{err}"
    );
}

/// A stderr that cannot take the messages loses nothing else: the reports
/// are written and the exit is the command's own; a full stdout fails the
/// command only after its reports are in place.
#[test]
fn a_full_stderr_or_stdout_keeps_the_reports() {
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full");
    if full().is_err() {
        println!("skipped: no /dev/full on this host");
        return;
    }
    let d = tempfile::tempdir().expect("tmp");
    for (name, to_stderr) in [("err", true), ("out", false)] {
        let out = d.path().join(name);
        let mut c = Command::new(env!("CARGO_BIN_EXE_popek"));
        c.args([
            "scan", "--mode", "64", "--only", "hlt", "--facts", "none", "--out",
        ])
        .arg(&out);
        if to_stderr {
            c.stderr(full().expect("/dev/full"));
        } else {
            c.stdout(full().expect("/dev/full"));
        }
        let o = c.output().expect("run popek");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(if to_stderr { 0 } else { 2 }),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            out.join("popek-unicorn.json").is_file(),
            "{name}: no report"
        );
    }
}

/// An argument that is not UTF-8 is a usage error, not a crash; a file
/// name that is not UTF-8 is a file name.
#[test]
fn arguments_that_are_not_utf8_are_usage_errors_or_names() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"\xff\xfe");
    let o = Command::new(env!("CARGO_BIN_EXE_popek"))
        .arg("explain")
        .arg(bad)
        .output()
        .expect("run popek");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid UTF-8"), "{err}");
    let d = tempfile::tempdir().expect("tmp");
    let o = Command::new(env!("CARGO_BIN_EXE_popek"))
        .args(["diff"])
        .arg(d.path().join(bad))
        .arg(d.path().join("b.json"))
        .output()
        .expect("run popek");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("No such file"), "{err}");
}

#[test]
fn vectors_replay_clean_and_a_tampered_vector_is_caught() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("tv");
    let out_s = out.to_str().expect("utf-8");
    let o = popek(&[
        "vectors", "--mode", "32", "--config", "umip=off", "--only", "sgdt,hlt", "--out", out_s,
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("3 test vectors written"), "{err}");
    let file = out.join("32/umip=off/Sgdt_m1632.json");
    let o = popek(&["replay", out_s, "--engine", "unicorn"]);
    let (stdout, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{stdout}{err}");
    assert!(
        err.contains("3 vectors replayed on unicorn, 0 with mismatches"),
        "{err}"
    );

    // Tamper: SGDT's stored limit at CPL 3 in the base state.
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let case = v["cases"]
        .as_array_mut()
        .expect("cases")
        .iter_mut()
        .find(|c| c["state"] == "base@cpl3")
        .expect("base@cpl3");
    let fin = case["engines"]["unicorn"]["final"]
        .as_object_mut()
        .expect("final");
    let key = fin
        .keys()
        .find(|k| k.starts_with("memory.data["))
        .expect("a data change")
        .clone();
    fin.insert(key.clone(), serde_json::Value::String("00".into()));
    std::fs::write(&file, serde_json::to_vec(&v).expect("json")).expect("write");
    let o = popek(&["replay", out_s]);
    let (stdout, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}{err}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "Sgdt_m1632.json: base@cpl3: final.{key}: vector 00, engine "
        )),
        "{stdout}"
    );

    // A corrupt vector is an error, before anything runs.
    std::fs::write(&file, "{\"schema\": \"popek-tv/1\"").expect("write");
    let o = popek(&["replay", out_s]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("Sgdt_m1632.json: not a popek test vector"),
        "{err}"
    );

    // An empty directory, and a directory of other files, are refused.
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let o = popek(&["replay", empty.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::write(empty.join("mine.txt"), "keep").expect("write");
    let o = popek(&[
        "vectors",
        "--mode",
        "32",
        "--only",
        "hlt",
        "--out",
        empty.to_str().expect("utf-8"),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not a popek vector directory"), "{err}");
    assert!(empty.join("mine.txt").exists());
}

#[test]
fn explain_sgdt_leads_with_its_verdict() {
    let o = popek(&["explain", "sgdt", "--mode", "32", "--facts", "none"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    // Each form: its header line, then the verdict, then why.
    let heads: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("sgdt "))
        .collect();
    assert!(heads.len() >= 2, "{out}");
    for i in heads {
        assert!(
            lines[i + 1].starts_with("  verdict: sensitive-unprivileged"),
            "{}",
            lines[i + 1]
        );
        assert!(
            lines[i + 2].trim_start().starts_with("because "),
            "{}",
            lines[i + 2]
        );
    }
}

#[test]
fn explain_on_kvm_measures_lengths_after_the_whole_matrix() {
    // The fence is one page-table entry the engine changes after the
    // matrix's images ran; KVM must see it (measured on PVM before the
    // fix: MOVBE's length read "1" at CPL 3, the data page still
    // executable there). A load every x86-64 CPU decodes, 7 bytes.
    if !kvm_or_skip("explain_on_kvm_measures_lengths_after_the_whole_matrix") {
        return;
    }
    let o = popek(&[
        "explain",
        "8b 04 25 00 81 00 00",
        "--mode",
        "64",
        "--umip",
        "on",
        "--engine",
        "kvm",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("length 7 (page boundary) at base@cpl3"),
        "{out}"
    );
}

/// `--mode 32c`: 32-bit compatibility mode, its own mode: SGDT stores the
/// 32c GDTR at both CPLs (a violator), PUSHFD reveals IF, MOV r32, CR0 is
/// #GP at CPL 3 (privileged), on Unicorn and, where it is usable, on KVM.
#[test]
fn explain_in_compatibility_mode() {
    let mut engines = vec!["unicorn"];
    if kvm_or_skip("explain_in_compatibility_mode (kvm part)") {
        engines.push("kvm");
    }
    for engine in engines {
        // The catalog's forms, whose setups point the operands at the
        // harness's pages (sgdt [8100h], mov ecx,cr0).
        for (target, verdict, evidence) in [
            (
                "sgdt",
                "verdict: sensitive-unprivileged",
                "base@cpl0 completed vs base@cpl3 completed",
            ),
            (
                "pushfd",
                "verdict: sensitive-unprivileged",
                "base@cpl0 completed vs if=0@cpl0 completed",
            ),
            (
                "mov ecx,cr0",
                "verdict: privileged",
                "base@cpl0 completed vs base@cpl3 #GP",
            ),
        ] {
            let o = popek(&[
                "explain", target, "--mode", "32c", "--engine", engine, "--facts", "none",
            ]);
            let (out, err) = text(&o);
            assert!(o.status.success(), "{engine} {target}: {err}");
            assert!(out.contains("mode 32c"), "{engine} {target}: {out}");
            assert!(out.contains(verdict), "{engine} {target}: {out}");
            assert!(out.contains(evidence), "{engine} {target}: {out}");
        }
    }
    // The mode is named in words where the target does not fit it.
    let o = popek(&["explain", "sgtd", "--mode", "32c"]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("in 32-bit compatibility mode"), "{err}");
}

/// The default scan covers 16, 32 and 64, never 32c; `--help` lists 32c.
#[test]
fn the_default_scan_leaves_out_32c_and_help_lists_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = popek(&[
        "scan",
        "--only",
        "nop",
        "--format",
        "json",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let json = std::fs::read_to_string(dir.path().join("popek-unicorn.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["header"]["modes"], serde_json::json!(["16", "32", "64"]));
    for cmd in ["scan", "explain", "fuzz", "vectors"] {
        let o = popek(&[cmd, "--help"]);
        let (out, _) = text(&o);
        assert!(out.contains("32c (32-bit compatibility"), "{cmd}: {out}");
    }
}

/// On kvm_pvm, `--mode 32` cannot run (32-bit paged guests shut down):
/// popek says so and points at `--mode 32c`, and never runs 32c instead.
#[test]
fn mode_32_on_pvm_points_at_32c() {
    if !kvm_or_skip("mode_32_on_pvm_points_at_32c") {
        return;
    }
    use analyzer::engine::kvm::Flavor;
    if Flavor::detect() != Flavor::Pvm {
        println!("skipped: mode_32_on_pvm_points_at_32c: the flavor is not kvm_pvm");
        return;
    }
    let o = popek(&["explain", "nop", "--mode", "32", "--engine", "kvm"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("cannot run 32-bit protected mode"), "{err}");
    assert!(err.contains("--mode 32c"), "{err}");
    assert!(out.contains("mode 32 "), "{out}");
    // No 32c run in place of 32 (the header of a 32c explanation).
    assert!(!out.contains("mode 32c  umip"), "{out}");
    assert!(out.contains("not run on this engine"), "{out}");
}

#[test]
fn check_all_checks_every_engine_a_baseline_is_given_for() {
    let d = tempfile::tempdir().expect("temp dir");
    let base = d.path().join("base");
    let o = popek(&[
        "scan",
        "--engine",
        "unicorn",
        "--only",
        "hlt,sgdt",
        "--mode",
        "64",
        "--format",
        "json",
        "--out",
        base.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let baseline = base.join("popek-unicorn.json");
    let o = popek(&[
        "check",
        "--engine",
        "all",
        "--baseline",
        baseline.to_str().expect("utf-8"),
        "--only",
        "hlt,sgdt",
        "--mode",
        "64",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        err.contains("4 records compared") && err.contains("0 changed"),
        "{err}"
    );
    // Naming an engine without a baseline is still refused.
    let o = popek(&[
        "check",
        "--engine",
        "unicorn,native",
        "--baseline",
        baseline.to_str().expect("utf-8"),
        "--only",
        "hlt",
        "--mode",
        "64",
    ]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
}

#[test]
fn explain_all_gives_every_available_engine_its_view() {
    let o = popek(&["explain", "hlt", "--engine", "all", "--json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let engines: Vec<&str> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|x| x["record"]["engine"].as_str().expect("engine"))
        .collect();
    let mut want = vec!["unicorn"];
    for (kind, name) in [
        (analyzer::engine::EngineKind::Kvm, "kvm"),
        (analyzer::engine::EngineKind::Native, "native"),
    ] {
        if analyzer::engine::availability(kind).is_ok() {
            want.push(name);
        }
    }
    assert_eq!(engines, want, "{err}");
    // HLT traps at CPL 3 on each (Unicorn without the error code): no
    // engine lists a difference for it.
    for x in v.as_array().expect("a list") {
        assert_eq!(x["engines_differ"], serde_json::json!([]), "{x}");
    }
}

/// A KVM scan gives byte-identical reports for `--jobs 1` and `--jobs 2`,
/// ring-compression states included, with the instructions whose KVM
/// evidence once depended on the order of runs (data segment selectors,
/// WRPKRU's PKRU, page tables rewritten from the host: MOVBE's length) and
/// those the ring states decide (LAR, VERR, PUSH FS).
#[test]
fn kvm_reports_are_the_same_for_any_job_count() {
    if !kvm_or_skip("kvm_reports_are_the_same_for_any_job_count") {
        return;
    }
    let dirs = [
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    ];
    for (d, jobs) in dirs.iter().zip(["1", "2"]) {
        let o = popek(&[
            "scan",
            "--engine",
            "kvm",
            "--only",
            "push,mov,lfs,wrpkru,rdpkru,movbe,lar,verr,swapgs,nop",
            "--mode",
            "64,32c",
            "--jobs",
            jobs,
            "--format",
            "json",
            "--out",
            d.path().to_str().expect("utf-8"),
        ]);
        assert!(o.status.success(), "--jobs {jobs}: {:?}", text(&o));
    }
    let read =
        |d: &tempfile::TempDir| std::fs::read(d.path().join("popek-kvm.json")).expect("report");
    let (a, b) = (read(&dirs[0]), read(&dirs[1]));
    assert!(
        a == b,
        "popek-kvm.json differs between --jobs 1 and --jobs 2"
    );
    // The ring-compression states ran: none is `not-supported` (a run may
    // still end at engine level, as LAR's CPL-1 runs do on kvm_pvm).
    let v: serde_json::Value = serde_json::from_slice(&a).expect("json");
    let records = v["records"].as_array().expect("records");
    assert!(
        records.iter().any(|r| r["mnemonic"] == "lar"),
        "lar scanned"
    );
    for r in records {
        let ended = r["verdict"]["engine_results"]
            .as_array()
            .expect("engine_results");
        assert!(
            !ended.iter().any(|s| s
                .as_str()
                .is_some_and(|s| s.starts_with("ring") && s.contains("not-supported"))),
            "{} {}: {ended:?}",
            r["mode"],
            r["form"]
        );
    }
}
