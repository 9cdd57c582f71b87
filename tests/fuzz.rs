//! `popek fuzz` and `popek merge` end to end: reproducible campaigns, the
//! tunnel's walk, a planted disagreement found and minimized, a planted
//! crash survived (by the worker's fork server), and shards that merge
//! into the unsharded run.

use std::path::Path;
use std::process::{Command, Output};

fn fuzz(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_popek"));
    c.arg("fuzz").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run popek fuzz")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn findings(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("findings.jsonl"))
        .expect("findings.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The summary line's numbers: inputs, distinct, findings, restarts.
fn summary(out: &str) -> (u64, u64, u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("fuzz: "))
        .unwrap_or_else(|| panic!("no summary line in {out:?}"));
    let n: Vec<u64> = line
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(line.ends_with(" distinct/s"), "{line}");
    (n[0], n[1], n[2], n[3])
}

/// `popek fuzz --generator mutate --iterations 400 --jobs J --corpus C
/// --out O` and `extra` arguments, with the environment `env`.
fn mutate(corpus: &Path, out: &Path, jobs: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "--generator",
        "mutate",
        "--iterations",
        "400",
        "--jobs",
        jobs,
        "--corpus",
        corpus.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    fuzz(&args, env)
}

#[test]
fn a_seeded_campaign_is_reproducible_and_reports_its_summary() {
    let d = tempfile::tempdir().expect("tmp");
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let args = |out: &Path| {
        vec![
            "--iterations".to_string(),
            "600".into(),
            "--seed".into(),
            "7".into(),
            "--jobs".into(),
            "2".into(),
            "--generator".into(),
            "all".into(),
            "--out".into(),
            out.to_str().expect("utf-8").into(),
        ]
    };
    let run = |out: &Path| {
        let v = args(out);
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        fuzz(&refs, &[])
    };
    let oa = run(&a);
    let ob = run(&b);
    let (sa, ea) = text(&oa);
    assert!(matches!(oa.status.code(), Some(0 | 1)), "{ea}");
    let (inputs, distinct, found, _) = summary(&sa);
    assert_eq!(inputs, 600, "{sa}");
    assert!(distinct > 0 && distinct <= inputs, "{sa}");
    assert_eq!(found as usize, findings(&a).len());
    assert_eq!(oa.status.code(), Some(if found > 0 { 1 } else { 0 }));
    assert_eq!(
        std::fs::read(a.join("findings.jsonl")).expect("a"),
        std::fs::read(b.join("findings.jsonl")).expect("b")
    );
    assert_eq!(
        std::fs::read(a.join("corpus.txt")).expect("a"),
        std::fs::read(b.join("corpus.txt")).expect("b")
    );
    let (sb, _) = text(&ob);
    assert_eq!(summary(&sa).1, summary(&sb).1);
}

/// The findings do not depend on how many workers run the lanes: with
/// one, a worker runs every lane in turn and then minimizes what they
/// found; with three, each lane has its own.
#[test]
fn the_same_lanes_over_one_worker_or_three_find_the_same() {
    let d = tempfile::tempdir().expect("tmp");
    let run = |jobs: &str| {
        let out = d.path().join(jobs);
        let o = fuzz(
            &[
                "--iterations",
                "900",
                "--seed",
                "5",
                "--lanes",
                "3",
                "--jobs",
                jobs,
                "--generator",
                "all",
                "--out",
                out.to_str().expect("utf-8"),
            ],
            &[],
        );
        let (so, eo) = text(&o);
        assert!(matches!(o.status.code(), Some(0 | 1)), "{eo}");
        let files = ["findings.jsonl", "corpus.txt"].map(|f| std::fs::read(out.join(f)).expect(f));
        (summary(&so).2, files)
    };
    let (one, three) = (run("1"), run("3"));
    assert!(one.0 > 0, "nothing found to compare");
    assert_eq!(one, three);
}

#[test]
fn the_tunnel_walks_the_space_by_length_and_ends_by_itself() {
    // First byte 0x00 (ADD r/m8, r8) in 16-bit mode: every length the
    // decoder documents (a unit test checks them in 32-bit mode) is walked,
    // each displacement byte on its own, and the walk ends long before the
    // iterations, having run exactly the steps of the walk.
    let mut t = fuzzer::gen::Tunnel::start(0x00, 0x00);
    let mut steps = 0u64;
    loop {
        steps += 1;
        let (len, _) = fuzzer::gen::decode_len(analyzer::mode::Mode::Prot16, &t.bytes);
        match t.next(len) {
            Some(n) => t = n,
            None => break,
        }
    }
    let d = tempfile::tempdir().expect("tmp");
    let o = fuzz(
        &[
            "--mode",
            "16",
            "--generator",
            "tunnel",
            "--tunnel-range",
            "00-00",
            "--iterations",
            "1000000",
            "--jobs",
            "1",
            "--out",
            d.path().to_str().expect("utf-8"),
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{err}");
    let (inputs, distinct, _, _) = summary(&out);
    assert_eq!(inputs, steps, "{out}");
    assert_eq!(inputs, distinct, "{out}");
}

#[test]
fn two_engines_over_time_stamps_and_random_numbers_are_reproducible() {
    // Unicorn and the planted engine (Unicorn too) read other time stamps
    // and random numbers in every run: no finding may carry them, so two
    // runs give the same file (they did not while results that change
    // from run to run counted as a difference between engines).
    let d = tempfile::tempdir().expect("tmp");
    let corpus = d.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "0f31 64 rdtsc\n0f01f9 64 rdtscp\n0fc7f1 64 rdrand\n",
    )
    .expect("corpus");
    let run = |out: &Path| {
        mutate(
            &corpus,
            out,
            "2",
            &["--seed", "3"],
            &[("POPEK_FUZZ_PLANTED", "1")],
        )
    };
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let (oa, ob) = (run(&a), run(&b));
    for o in [&oa, &ob] {
        let (out, err) = text(o);
        assert!(matches!(o.status.code(), Some(0 | 1)), "{out}{err}");
    }
    assert_eq!(
        std::fs::read(a.join("findings.jsonl")).expect("a"),
        std::fs::read(b.join("findings.jsonl")).expect("b")
    );
    assert!(!findings(&a).iter().any(|f| f["kind"] == "engine-vs-engine"
        && ["0f31", "0f01f9", "0fc7f1"].contains(&f["bytes"].as_str().unwrap_or(""))));
}

#[test]
fn a_planted_disagreement_is_found_and_minimized() {
    // The planted engine is Unicorn except that a test holding `01 c8`
    // (ADD EAX, ECX) raises #UD: mutating a corpus entry `66 01 c8` must
    // find it, and minimization drops the prefix.
    let d = tempfile::tempdir().expect("tmp");
    let corpus = d.path().join("corpus.txt");
    std::fs::write(&corpus, "6601c8 64 add with an operand-size prefix\n").expect("corpus");
    let out = d.path().join("out");
    let o = mutate(
        &corpus,
        &out,
        "1",
        &[],
        &[
            ("POPEK_FUZZ_PLANTED", "1"),
            ("POPEK_FUZZ_PLANT_DIFFER", "01c8"),
        ],
    );
    let (stdout, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}{err}");
    let f = findings(&out);
    let planted: Vec<&serde_json::Value> = f
        .iter()
        .filter(|x| x["kind"] == "engine-vs-engine" && x["engines"]["planted"]["cpl3"] == "#UD")
        .collect();
    assert!(!planted.is_empty(), "{f:?}");
    // Minimized to the planted bytes (with no prefix left in front).
    assert!(
        planted.iter().any(|x| x["bytes"] == "01c8"),
        "{:?}",
        planted
            .iter()
            .map(|x| (&x["input"], &x["bytes"]))
            .collect::<Vec<_>>()
    );
    let r = planted[0]["reproduce"].as_str().expect("reproduce");
    assert!(
        r.starts_with("popek explain ") && r.contains("--engine unicorn,planted"),
        "{r}"
    );
}

#[test]
fn a_worker_that_crashes_is_restarted_and_the_campaign_completes() {
    let d = tempfile::tempdir().expect("tmp");
    let o = fuzz(
        &[
            "--generator",
            "tunnel",
            "--tunnel-range",
            "90-91",
            "--iterations",
            "300",
            "--jobs",
            "1",
            "--out",
            d.path().to_str().expect("utf-8"),
        ],
        // 90 is NOP, a one-byte instruction: the tunnel visits it first.
        &[
            ("POPEK_FUZZ_PLANTED", "1"),
            ("POPEK_FUZZ_PLANT_CRASH", "91"),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let (inputs, _, _, restarts) = summary(&out);
    assert_eq!(restarts, 1, "{out}");
    assert_eq!(
        inputs, 2,
        "90 and 91: the walk of 90-91 is two one-byte instructions ({out})"
    );
    let f = findings(d.path());
    let crash: Vec<_> = f
        .iter()
        .filter(|x| x["kind"] == "engine-failure" && x["input"] == "91")
        .collect();
    assert_eq!(crash.len(), 1, "{f:?}");
    // How it died: the wait status of the process that ran the input.
    assert!(crash[0]["detail"]
        .as_str()
        .expect("detail")
        .contains("the worker died on this input (signal: 6 (SIGABRT)"));
}

/// A tunnel campaign over `range` in two lanes whose worker aborts on
/// inputs holding `crash`, with `jobs` workers, into `dir/jobs`: it must
/// end with findings after `inputs` inputs and `restarts` restarts.
/// Returns its findings file.
fn two_lanes_with_a_crash(
    dir: &Path,
    range: &str,
    crash: &str,
    jobs: &str,
    (inputs, restarts): (u64, u64),
) -> Vec<u8> {
    let out = dir.join(jobs);
    let o = fuzz(
        &[
            "--generator",
            "tunnel",
            "--tunnel-range",
            range,
            "--lanes",
            "2",
            "--iterations",
            "300",
            "--jobs",
            jobs,
            "--out",
            out.to_str().expect("utf-8"),
        ],
        &[
            ("POPEK_FUZZ_PLANTED", "1"),
            ("POPEK_FUZZ_PLANT_CRASH", crash),
        ],
    );
    let (so, eo) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{so}{eo}");
    let (got_inputs, _, _, got_restarts) = summary(&so);
    assert_eq!((got_inputs, got_restarts), (inputs, restarts), "{so}{eo}");
    std::fs::read(out.join("findings.jsonl")).expect("findings")
}

/// A lane whose last input kills its worker, then the thread's next lane on
/// the same worker (one job), gives what a worker per lane gives (two).
#[test]
fn a_lane_after_a_death_at_the_last_input_of_the_one_before_runs_as_its_own() {
    let d = tempfile::tempdir().expect("tmp");
    // Lane 0 is 91 alone (XCHG ECX, EAX), lane 1 is 92.
    let run = |jobs| two_lanes_with_a_crash(d.path(), "91-92", "91", jobs, (2, 1));
    assert_eq!(run("1"), run("2"));
    let f = findings(&d.path().join("1"));
    assert!(
        f.iter()
            .any(|x| x["kind"] == "engine-failure" && x["input"] == "91"),
        "{f:?}"
    );
}

/// A lane resumed after a death in its middle, on a worker that ran
/// another lane before (its fork server took in both; a child forked
/// while it had the first resumes only that one), gives what a worker per
/// lane gives.
#[test]
fn a_lane_resumed_after_a_death_on_a_worker_of_two_lanes_runs_as_its_own() {
    let d = tempfile::tempdir().expect("tmp");
    // Lane 0 is 90 and 91, lane 1 is 92 (the death) and 93.
    let run = |jobs| two_lanes_with_a_crash(d.path(), "90-93", "92", jobs, (4, 1));
    assert_eq!(run("1"), run("2"));
    let f = findings(&d.path().join("1"));
    let crashes: Vec<_> = f
        .iter()
        .filter(|x| x["kind"] == "engine-failure")
        .map(|x| &x["input"])
        .collect();
    assert_eq!(crashes, ["92"], "{f:?}");
}

#[test]
fn shards_merged_equal_the_unsharded_run() {
    let d = tempfile::tempdir().expect("tmp");
    let dir = |n: &str| d.path().join(n);
    let common = [
        "--iterations",
        "600",
        "--seed",
        "3",
        "--lanes",
        "4",
        "--jobs",
        "2",
        "--generator",
        "all",
    ];
    let run = |out: &Path, shard: &str| {
        let mut a: Vec<&str> = common.to_vec();
        let o = out.to_str().expect("utf-8");
        a.extend(["--shard", shard, "--out", o]);
        let r = fuzz(&a, &[]);
        assert!(matches!(r.status.code(), Some(0 | 1)), "{}", text(&r).1);
    };
    run(&dir("all"), "0/1");
    run(&dir("s0"), "0/2");
    run(&dir("s1"), "1/2");
    let o = Command::new(env!("CARGO_BIN_EXE_popek"))
        .args(["merge"])
        .arg(dir("s0"))
        .arg(dir("s1"))
        .arg("--out")
        .arg(dir("merged"))
        .output()
        .expect("merge");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(
        std::fs::read(dir("all").join("findings.jsonl")).expect("all"),
        std::fs::read(dir("merged").join("findings.jsonl")).expect("merged")
    );
    assert_eq!(
        std::fs::read(dir("all").join("corpus.txt")).expect("all"),
        std::fs::read(dir("merged").join("corpus.txt")).expect("merged")
    );
}

/// Campaigns of different modes, configurations or engines merge into
/// all of their findings (a signature names neither the mode nor the
/// configuration, nor every engine), the same for any order of the
/// directories.
#[test]
fn campaigns_of_different_settings_merge_whole_in_any_order() {
    let d = tempfile::tempdir().expect("tmp");
    let dir = |n: &str| d.path().join(n);
    let path = |n: &str| dir(n).to_str().expect("utf-8").to_string();
    let planted = [("POPEK_FUZZ_PLANTED", "1")];
    type Setting<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
    let settings: [Setting; 4] = [
        ("m32", &["--mode", "32"], &[]),
        ("m64", &[], &[]),
        ("u64", &["--config", "umip=on"], &[]),
        // Unicorn and the planted engine (Unicorn with nothing planted):
        // Unicorn's findings are m64's, of the same signatures.
        ("p64", &[], &planted),
    ];
    for (out, extra, env) in settings {
        let o = path(out);
        let common = [
            "--iterations",
            "300",
            "--seed",
            "3",
            "--jobs",
            "2",
            "--out",
            &o,
        ];
        let r = fuzz(&[&common[..], extra].concat(), env);
        assert!(matches!(r.status.code(), Some(0 | 1)), "{}", text(&r).1);
    }
    let merge = |order: [&str; 4], out: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_popek"));
        c.arg("merge");
        for n in order {
            c.arg(dir(n));
        }
        let o = c.arg("--out").arg(dir(out)).output().expect("merge");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        std::fs::read_to_string(dir(out).join("findings.jsonl")).expect("merged")
    };
    let forward = merge(["m32", "m64", "u64", "p64"], "f");
    let backward = merge(["p64", "u64", "m64", "m32"], "b");
    assert_eq!(forward, backward);
    let lines = |n: &str| {
        std::fs::read_to_string(dir(n).join("findings.jsonl"))
            .expect("findings")
            .lines()
            .count()
    };
    assert!(lines("m64") > 0 && lines("u64") > 0, "no findings to merge");
    let signatures = |n: &str| -> std::collections::BTreeSet<String> {
        findings(&dir(n))
            .iter()
            .map(|f| f["signature"].as_str().expect("signature").to_string())
            .collect()
    };
    assert!(
        !signatures("m64").is_disjoint(&signatures("p64")),
        "no signature of m64 in p64"
    );
    assert_eq!(
        forward.lines().count(),
        lines("m32") + lines("m64") + lines("u64") + lines("p64")
    );
}

#[test]
fn bad_fuzz_options_exit_2() {
    // Each refused with its reason, and nothing written into `--out`.
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    for (args, said) in [
        (
            &["--iterations", "10", "--shard", "2/2"][..],
            "K must be below N",
        ),
        (&["--iterations", "10", "--generator", "nope"], "nope"),
        (
            &["--iterations", "10", "--tunnel-range", "zz-00"],
            "LO is not a hex byte",
        ),
        (&["--duration=-1"], "a positive number of seconds"),
        (
            &["--duration", "1e300", "--iterations", "10"],
            "at most 1e9 seconds",
        ),
        (
            &["--duration", "1e19", "--iterations", "10"],
            "at most 1e9 seconds",
        ),
        (&["--iterations", "10", "--lanes", "2000000"], "at most"),
        (
            &["--iterations", "10", "--lanes", "2", "--shard", "3/4"],
            "this shard has no lane to run",
        ),
        (
            &["--iterations", "2", "--lanes", "4", "--shard", "3/4"],
            "leave this shard no input to run",
        ),
        (
            &["--iterations", "10", "--shard", "1/2"],
            "give --lanes L too",
        ),
        (
            &[
                "--iterations",
                "100",
                "--generator",
                "tunnel",
                "--tunnel-range",
                "ff-ff",
                "--lanes",
                "8",
                "--shard",
                "1/8",
            ],
            "leave this shard no input to run",
        ),
        (&["--mode", "64"], "give --iterations N or --duration SECS"),
    ] {
        let args = [args, &["--out", out.to_str().expect("utf-8 path")]].concat();
        let o = fuzz(&args, &[]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(said), "{args:?}: {err}");
        assert!(
            !out.join("findings.jsonl").exists(),
            "{args:?} wrote findings"
        );
    }
}

/// A worker whose engine cannot open ends the campaign with exit 2 and the
/// whole reason, not its first 40 characters.
#[test]
fn a_worker_that_cannot_open_its_engine_says_why() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    let o = fuzz(
        &[
            "--engine",
            "kvm",
            "--iterations",
            "10",
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
        &[("POPEK_KVM_DEVICE", "/dev/null")],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("a fuzz worker cannot start"), "{err}");
    assert!(
        err.contains("is /dev/null (from POPEK_KVM_DEVICE) a KVM device?"),
        "{err}"
    );
}

/// Findings that cannot be written end the campaign with exit 2 and the
/// cause; a directory that cannot take them is refused before it runs.
#[test]
fn findings_that_cannot_be_written_say_why() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    std::fs::create_dir_all(out.join("findings.jsonl")).expect("mkdir");
    let o = fuzz(
        &[
            "--iterations",
            "20",
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("findings.jsonl") && err.contains("a directory is in the way"),
        "{err}"
    );
    // The two files go as a set: with corpus.txt unwritable, the old
    // findings stay as they were.
    let out2 = d.path().join("out2");
    std::fs::create_dir_all(out2.join("corpus.txt")).expect("mkdir");
    std::fs::write(out2.join("findings.jsonl"), "old\n").expect("write");
    let o = fuzz(
        &[
            "--iterations",
            "20",
            "--out",
            out2.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert_eq!(
        std::fs::read_to_string(out2.join("findings.jsonl")).expect("read"),
        "old\n"
    );
    // A fifo where the corpus goes: refused before the campaign runs (a
    // day-long one here, which would otherwise lose its findings at the end).
    let out3 = d.path().join("out3");
    std::fs::create_dir_all(&out3).expect("mkdir");
    let fifo = std::ffi::CString::new(
        out3.join("corpus.txt")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("path");
    // SAFETY: `fifo` is a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_popek"))
        .args(["fuzz", "--duration", "86400", "--out"])
        .arg(&out3)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start popek fuzz");
    let t = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the campaign ran: the fifo was not refused before it");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().expect("wait");
    let (stdout, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    assert!(!stdout.contains("fuzz:"), "{stdout}");
    // Not a directory at all: refused at once.
    let file = d.path().join("file");
    std::fs::write(&file, "x").expect("write");
    let o = fuzz(
        &[
            "--iterations",
            "20",
            "--out",
            file.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not a directory"), "{err}");
}

/// Ctrl-C ends a campaign cleanly: the summary, the findings so far
/// written whole, and the exit code of every interrupted command (130).
#[test]
fn an_interrupted_campaign_writes_what_it_found_and_exits_130() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_popek"))
        .args([
            "fuzz",
            "--duration",
            "120",
            "--seed",
            "3",
            "--jobs",
            "2",
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start popek fuzz");
    // Interrupted once its workers are at it (their children exist).
    let t = std::time::Instant::now();
    while children_of(child.id()).is_empty() && t.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill has no memory preconditions; the pid is this test's child.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0);
    let o = child.wait_with_output().expect("wait");
    let (stdout, err) = text(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted (signal 2)"), "{err}");
    let (inputs, _, found, _) = summary(&stdout);
    assert!(inputs > 0, "{stdout}");
    assert_eq!(findings(&out).len() as u64, found);
    assert!(out.join("corpus.txt").is_file());
}

/// `merge` reads only what a campaign could have written: a finding with
/// a mode, configuration or input no campaign makes is refused by its
/// line (it would become a corpus that `fuzz` refuses), and a findings
/// file that never ends is refused at its limit, not read until memory
/// runs out.
#[test]
fn merge_refuses_findings_no_campaign_wrote() {
    let d = tempfile::tempdir().expect("tmp");
    let camp = d.path().join("camp");
    let r = fuzz(
        &[
            "--iterations",
            "200",
            "--seed",
            "3",
            "--out",
            camp.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(matches!(r.status.code(), Some(0 | 1)), "{}", text(&r).1);
    let good = std::fs::read_to_string(camp.join("findings.jsonl")).expect("findings");
    let first = good.lines().next().expect("a finding");
    let merge = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_popek"))
            .arg("merge")
            .arg(dir)
            .arg("--out")
            .arg(d.path().join("merged"))
            .output()
            .expect("merge")
    };
    let mut f: serde_json::Value = serde_json::from_str(first).expect("json");
    let bad = d.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    for (field, value, said) in [
        ("mode", serde_json::json!("65"), "mode"),
        ("config", serde_json::json!("umip=maybe"), "config"),
        ("bytes", serde_json::json!("zz"), "bytes"),
        ("input", serde_json::json!(""), "input: no bytes"),
        (
            "bytes",
            serde_json::json!("0x0f01"),
            "not written as a campaign writes hex",
        ),
        (
            "signature",
            serde_json::json!("a b\nc"),
            "signature: empty or not one line",
        ),
        ("cpl", serde_json::json!(7), "cpl 7: 0 to 3"),
    ] {
        let keep = f[field].clone();
        f[field] = value;
        std::fs::write(bad.join("findings.jsonl"), format!("{first}\n{f}\n")).expect("write");
        f[field] = keep;
        let o = merge(&bad);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{field}: {err}");
        assert!(
            err.contains(":2: not a popek finding: ") && err.contains(said),
            "{field}: {err}"
        );
    }
    let endless = d.path().join("endless");
    std::fs::create_dir_all(&endless).expect("mkdir");
    std::os::unix::fs::symlink("/dev/zero", endless.join("findings.jsonl")).expect("symlink");
    let o = merge(&endless);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("larger than"), "{err}");
    // A finding of 1,000,000 engines, each with no outcome (11 MB, which
    // took many times that to read).
    let engines: Vec<String> = (0..1_000_000u32)
        .map(|i| format!("\"{i:x}\":{{}}"))
        .collect();
    let line = first.replacen(
        "\"engines\":{",
        &format!("\"engines\":{{{},", engines.join(",")),
        1,
    );
    assert_ne!(line, first);
    std::fs::write(bad.join("findings.jsonl"), format!("{first}\n{line}\n")).expect("write");
    let o = merge(&bad);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("would take about"), "{err}");
    assert!(!d.path().join("merged").join("findings.jsonl").exists());
}

/// A corpus that is no text, or never ends, is refused with where and why.
#[test]
fn a_bad_corpus_is_named_with_its_line() {
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    let bin = d.path().join("bin.txt");
    std::fs::write(&bin, b"90 64 fine\n\x90\x90 64\n").expect("write");
    for (corpus, said) in [
        (bin.as_path(), "line 2"),
        (Path::new("/dev/zero"), "larger than"),
    ] {
        let o = mutate(corpus, &out, "1", &[], &[]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(said), "{corpus:?}: {err}");
    }
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                // pid (comm) state ppid ...: the comm may hold spaces.
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// The children of `pid` once there are `n` of them (a worker forks its
/// spare right after it relays a job), or as they are after 10 s.
fn children_when(pid: u32, n: usize) -> Vec<u32> {
    let t = std::time::Instant::now();
    loop {
        let kids = children_of(pid);
        if kids.len() == n || t.elapsed() > std::time::Duration::from_secs(10) {
            return kids;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A fuzz worker on the planted engine, crashing on `crash` (hex): the
/// process, its stdin and its stdout.
fn planted_worker(
    crash: &str,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::process::Stdio;
    let mut w = Command::new(env!("CARGO_BIN_EXE_popek"))
        .args(["__fuzz-worker", "--engine", "planted", "--mode", "64"])
        .env("POPEK_FUZZ_PLANT_CRASH", crash)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker");
    let stdin = w.stdin.take().expect("stdin");
    let out = std::io::BufReader::new(w.stdout.take().expect("stdout"));
    (w, stdin, out)
}

/// Whether process `pid` is gone or a zombie (dead, not yet reaped).
fn dead(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

#[test]
fn a_worker_reports_a_dead_child_serves_on_and_takes_its_child_with_it() {
    use std::io::{BufRead, Write};
    let (mut w, mut stdin, mut out) = planted_worker("91");
    let mut reply = || -> serde_json::Value {
        let mut line = String::new();
        out.read_line(&mut line).expect("a reply");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    // The planted crash aborts the process that runs the job: reported.
    writeln!(stdin, r#"{{"Eval":{{"inputs":["91"]}}}}"#).expect("send");
    let died = reply();
    let status = died["Died"]["status"].as_str().unwrap_or_default();
    assert!(status.starts_with("signal: 6 (SIGABRT)"), "{died}");
    // The same worker runs the next job, in a new child.
    writeln!(stdin, r#"{{"Eval":{{"inputs":["90"]}}}}"#).expect("send");
    let input = reply();
    assert_eq!(input["Input"]["ran"], "90", "{input}");
    assert_eq!(reply(), serde_json::json!("Done"));
    // The child that ran it and the spare that waits for the next death.
    let kids = children_when(w.id(), 2);
    assert_eq!(kids.len(), 2, "{kids:?}");
    // Killed, the worker takes its children with it.
    w.kill().expect("kill");
    let _ = w.wait();
    let t = std::time::Instant::now();
    while !kids.iter().all(|&k| dead(k)) && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for k in kids {
        assert!(dead(k), "child {k} outlived its worker");
    }
}

/// The children of `pid` in the order it forked them, as the kernel keeps
/// them (`/proc/PID/task/PID/children`); by pid where it does not list them.
fn children_in_fork_order(pid: u32) -> Vec<u32> {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        Ok(s) => s
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => {
            let mut kids = children_of(pid);
            kids.sort_unstable();
            kids
        }
    }
}

/// A spare that dies before it has a job (killed here, as the OOM killer
/// might) has no death to report: the job after the next death goes to a
/// child forked for it, and runs.
#[test]
fn a_spare_that_died_waiting_is_no_job_s_death() {
    use std::io::{BufRead, Write};
    let (mut w, mut stdin, mut out) = planted_worker("92");
    let mut reply = || -> String {
        let mut line = String::new();
        out.read_line(&mut line).expect("a reply");
        line
    };
    let mut job = |hex: &str| {
        writeln!(stdin, r#"{{"Eval":{{"inputs":["{hex}"]}}}}"#).expect("send");
    };
    job("91");
    let first = reply();
    assert!(first.contains(r#""ran":"91""#), "{first}");
    assert_eq!(reply().trim(), r#""Done""#);
    // The spare is the child forked last.
    assert_eq!(children_when(w.id(), 2).len(), 2);
    let kids = children_in_fork_order(w.id());
    assert_eq!(kids.len(), 2, "{kids:?}");
    let spare = kids[1];
    // SAFETY: kill has no memory preconditions; the pid is a child of
    // this test's own worker.
    let killed = unsafe { libc::kill(spare as libc::pid_t, libc::SIGKILL) };
    assert_eq!(killed, 0);
    let t = std::time::Instant::now();
    while !dead(spare) && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(dead(spare));
    // 92 kills the child at work: its death.
    job("92");
    let died = reply();
    assert!(died.starts_with(r#"{"Died""#), "{died}");
    // The next job is not taken for the dead spare's: it runs.
    job("91");
    let next = reply();
    assert!(next.contains(r#""ran":"91""#), "{next}");
    assert_eq!(reply().trim(), r#""Done""#);
    drop(stdin);
    assert!(w.wait().expect("wait").success());
}

/// A child killed while it waits for a job (as the OOM killer might),
/// after it finished one or before it read the one just given, died in no
/// job: its death names the job before the one sent since, or says that
/// the line went to the next child, which runs it. The campaign blames no
/// input for such a death.
#[test]
fn a_child_killed_while_it_waits_died_in_no_job() {
    use std::io::{BufRead, Write};
    let (mut w, mut stdin, mut out) = planted_worker("92");
    let mut reply = || -> serde_json::Value {
        let mut line = String::new();
        out.read_line(&mut line).expect("a reply");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    let mut job = |hex: &str| {
        writeln!(stdin, r#"{{"Eval":{{"inputs":["{hex}"]}}}}"#).expect("send");
    };
    let kill = |pid: u32, sig: libc::c_int| {
        // SAFETY: kill has no memory preconditions; the pid is a child of
        // this test's own worker.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
    };
    // The child at work is the one forked first, the spare the next.
    let at_work = |pid: u32| {
        assert_eq!(children_when(pid, 2).len(), 2);
        children_in_fork_order(pid)[0]
    };
    job("91");
    assert_eq!(reply()["Input"]["ran"], "91");
    assert_eq!(reply(), serde_json::json!("Done"));
    // Killed after its job 1.
    kill(at_work(w.id()), libc::SIGKILL);
    let died = reply();
    assert_eq!(died["Died"]["job"], 1, "{died}");
    assert_eq!(died["Died"]["resent"], false, "{died}");
    job("91");
    assert_eq!(reply()["Input"]["ran"], "91");
    assert_eq!(reply(), serde_json::json!("Done"));
    // Stopped, the child cannot read job 3; killed then, it has not.
    let child = at_work(w.id());
    kill(child, libc::SIGSTOP);
    job("91");
    std::thread::sleep(std::time::Duration::from_millis(300));
    kill(child, libc::SIGKILL);
    let died = reply();
    let resent = died["Died"]["resent"] == true;
    // Where the worker had not yet given it the line, it died after job 2.
    assert!(resent || died["Died"]["job"] == 2, "{died}");
    let ran = reply();
    assert_eq!(ran["Input"]["ran"], "91", "{ran}");
    assert_eq!(reply(), serde_json::json!("Done"));
    drop(stdin);
    assert!(w.wait().expect("wait").success());
}

#[test]
fn a_worker_at_the_end_of_its_jobs_leaves_no_child_behind() {
    use std::io::{BufRead, Write};
    let (mut w, mut stdin, mut out) = planted_worker("91");
    // Two deaths: each next job goes to the spare, and a new spare waits.
    for _ in 0..2 {
        writeln!(stdin, r#"{{"Eval":{{"inputs":["91"]}}}}"#).expect("send");
        let mut line = String::new();
        out.read_line(&mut line).expect("a reply");
        assert!(line.starts_with(r#"{"Died""#), "{line}");
    }
    writeln!(stdin, r#"{{"Eval":{{"inputs":["90"]}}}}"#).expect("send");
    let kids = children_when(w.id(), 2);
    drop(stdin);
    let rest: Vec<String> = out.lines().map_while(Result::ok).collect();
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert!(rest[0].contains(r#""ran":"90""#), "{rest:?}");
    assert_eq!(rest[1], r#""Done""#);
    // The end of the jobs: the worker exits 0, its last child and the
    // spare ended and waited for.
    assert!(w.wait().expect("wait").success());
    assert_eq!(kids.len(), 2, "{kids:?}");
    for k in kids {
        assert!(dead(k), "child {k} left behind");
    }
}

/// A worker's child that aborts leaves no core, even with no limit on its
/// size: its death says no core was dumped (on any host), and where the
/// kernel writes core files into the crashing process's directory
/// (`kernel.core_pattern` a plain file name, Debian's default) none is
/// there. Skipped where the core size limit cannot be raised to let one.
#[test]
fn a_child_that_aborts_dumps_no_core() {
    use std::io::{BufRead, Write};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer, to `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) } != 0 || lim.rlim_max < 1 << 30 {
        println!(
            "skipped: the core size limit is at most {} bytes here, too little for a core",
            lim.rlim_max
        );
        return;
    }
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let pattern = pattern.trim().to_string();
    let d = tempfile::tempdir().expect("tmp");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_popek"));
    cmd.args(["__fuzz-worker", "--engine", "planted", "--mode", "64"])
        .env("POPEK_FUZZ_PLANT_CRASH", "91")
        .current_dir(d.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: the closure only makes the setrlimit system call, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let all = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &all);
            Ok(())
        });
    }
    let mut w = cmd.spawn().expect("start a worker");
    let mut stdin = w.stdin.take().expect("stdin");
    let mut out = std::io::BufReader::new(w.stdout.take().expect("stdout"));
    writeln!(stdin, r#"{{"Eval":{{"inputs":["91"]}}}}"#).expect("send");
    let mut line = String::new();
    out.read_line(&mut line).expect("a reply");
    assert!(line.contains("SIGABRT"), "{line}");
    assert!(!line.contains("core dumped"), "{line}");
    drop(stdin);
    let _ = w.wait();
    if pattern.is_empty() || pattern.starts_with('|') || pattern.contains('/') {
        println!("kernel.core_pattern is {pattern:?}: no core file to look for in the directory");
        return;
    }
    let left: Vec<String> = std::fs::read_dir(d.path())
        .expect("read the directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(left.is_empty(), "the worker left {left:?}");
}
