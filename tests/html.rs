//! The HTML report as a browser shows it: the page `popek scan --format
//! html` writes is loaded from disk in headless Chromium, its script runs,
//! and the DOM it built is checked against the JSON report of the same scan.
//!
//! Without a Chromium that can render a page (`make test` installs one:
//! `scripts/ensure-deps.sh --test`), the browser tests print `skipped:
//! <reason>` and pass; `POPEK_REQUIRE_CHROMIUM=1` makes that a failure.

use analyzer::classify::Class;
use analyzer::compare::{self, Difference};
use analyzer::opmap;
use analyzer::record::Record;
use analyzer::report::{self, html, Report};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn popek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_popek"))
        .args(args)
        .output()
        .expect("run popek")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn skip_or_fail(test: &str, reason: &str) -> Option<PathBuf> {
    if std::env::var("POPEK_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
        panic!("{test}: Chromium is required (POPEK_REQUIRE_CHROMIUM=1) but not usable: {reason}");
    }
    println!("skipped: {test}: {reason}");
    None
}

/// The DOM Chromium builds for `url` once the page has loaded and its
/// script has run.
fn dump_dom(chromium: &Path, profile: &Path, url: &str) -> Output {
    Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .output()
        .expect("run chromium")
}

/// A Chromium that renders a page from disk and runs its script, or `None`
/// (with `skipped: <reason>` printed) where there is none.
fn chromium_or_skip(test: &str, dir: &Path) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
            .find(|p| p.is_file())
    });
    let Some(bin) = found else {
        return skip_or_fail(
            test,
            "no chromium on PATH (scripts/ensure-deps.sh --test installs it)",
        );
    };
    let probe = dir.join("probe.html");
    std::fs::write(
        &probe,
        "<!doctype html><p id=\"p\">static</p><script>document.getElementById('p').textContent = 'rendered' + '-by-script';</script>",
    )
    .expect("probe page");
    let o = dump_dom(&bin, &dir.join("profile"), &file_url(&probe, ""));
    if !String::from_utf8_lossy(&o.stdout).contains("rendered-by-script") {
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return skip_or_fail(
            test,
            &format!(
                "{} does not render a page ({}): {last}",
                bin.display(),
                o.status
            ),
        );
    }
    Some(bin)
}

fn file_url(p: &Path, fragment: &str) -> String {
    let mut url = format!("file://{}", p.display());
    if !fragment.is_empty() {
        url.push('#');
        url.push_str(fragment);
    }
    url
}

/// The cells the page drew: (map, opcode) -> the classes of the cell's
/// element (`cell c-privileged disagree`).
fn drawn_cells(dom: &str) -> BTreeMap<(String, u8), String> {
    let mut out = BTreeMap::new();
    for table in dom.split("<table class=\"opmap\"").skip(1) {
        let table = &table[..table.find("</table>").expect("table end")];
        let map = table
            .split("data-map=\"")
            .nth(1)
            .and_then(|t| t.split('"').next())
            .expect("data-map");
        for td in table.split("<td class=\"").skip(1) {
            let classes = &td[..td.find('"').expect("class end")];
            if classes.contains("empty") {
                continue;
            }
            let op = td
                .split("data-opcode=\"")
                .nth(1)
                .and_then(|t| t.get(..2))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| panic!("a drawn cell without its opcode: {td}"));
            assert!(
                out.insert((map.to_string(), op), classes.to_string())
                    .is_none(),
                "{map} {op:02x} drawn twice"
            );
        }
    }
    out
}

fn position_of(r: &Record) -> (String, u8) {
    let bytes = analyzer::explain::parse_hex(&r.bytes).expect("hex bytes");
    let p = opmap::position(r.mode, &bytes).expect("an opcode byte");
    (p.map.name(), p.opcode)
}

/// The cells a view must show: the records of (mode, configuration) by
/// position, and the class that colors each.
fn expected_cells(rep: &Report, mode: &str, config: &str) -> BTreeMap<(String, u8), Class> {
    let mut by: BTreeMap<(String, u8), Vec<Class>> = BTreeMap::new();
    for r in rep
        .records
        .iter()
        .filter(|r| r.mode.name() == mode && r.config == config)
    {
        by.entry(position_of(r)).or_default().push(r.verdict.class);
    }
    by.into_iter()
        .map(|(k, v)| (k, html::cell_class(v).expect("a class")))
        .collect()
}

#[test]
fn the_rendered_page_shows_the_measured_verdicts() {
    let test = "the_rendered_page_shows_the_measured_verdicts";
    let d = tempfile::tempdir().expect("temp dir");
    let Some(chromium) = chromium_or_skip(test, d.path()) else {
        return;
    };
    let o = popek(&[
        "scan",
        "--engine",
        "unicorn",
        "--mode",
        "16",
        "--only",
        "sgdt,popf,hlt,add,nop",
        "--format",
        "json,html",
        "--out",
        path(d.path()),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep = report::read_report(&d.path().join("popek-unicorn.json")).expect("JSON report");
    let page = d.path().join("popek-unicorn.html");
    let mut violators = 0;
    for t in &rep.header.theorems {
        let view = format!("unicorn/{}/{}", t.mode, t.config);
        let o = dump_dom(
            &chromium,
            &d.path().join("profile"),
            &file_url(&page, &view),
        );
        let dom = String::from_utf8_lossy(&o.stdout);
        assert!(dom.contains("</html>"), "{view}: no page: {o:?}");
        // The verdicts of every group, as the CLI words them, at the top;
        // the selected view's above its maps.
        for u in &rep.header.theorems {
            assert!(dom.contains(&u.verdict_text(u.theorem1_vmm)), "{view}");
        }
        let line = format!(
            "theorem 1 (VMM): {}; theorem 3 (hybrid VMM): {}",
            t.verdict_text(t.theorem1_vmm),
            t.verdict_text(t.theorem3_hybrid)
        );
        assert!(dom.contains(&line), "{view}: {line}");
        // Four grids of 256 cells; every position that holds a record is
        // drawn, colored by its cell's class, and no other.
        assert_eq!(dom.matches("<table class=\"opmap\"").count(), 4, "{view}");
        assert_eq!(dom.matches("<td class=\"cell ").count(), 4 * 256, "{view}");
        let drawn = drawn_cells(&dom);
        let expected = expected_cells(&rep, &t.mode, &t.config);
        assert!(!expected.is_empty(), "{view}: no records");
        let drawn_names: BTreeSet<_> = drawn.keys().cloned().collect();
        let expected_names: BTreeSet<_> = expected.keys().cloned().collect();
        assert_eq!(drawn_names, expected_names, "{view}");
        for (k, class) in &expected {
            let want = format!("cell c-{}", class.name());
            assert_eq!(drawn[k], want, "{view} {} {:02x}", k.0, k.1);
        }
        // A violator's cell has the violator color.
        for r in rep
            .records
            .iter()
            .filter(|r| r.mode.name() == t.mode && r.config == t.config && r.verdict.violates_pg)
        {
            assert_eq!(
                drawn[&position_of(r)],
                "cell c-sensitive-unprivileged",
                "{view} {}",
                r.form
            );
            violators += 1;
        }
    }
    // SGDT and POPF are Robin & Irvine's violators; Unicorn measures them so.
    assert!(violators > 0, "no violator measured");
}

#[test]
fn the_comparison_page_outlines_the_cells_where_engines_differ() {
    let test = "the_comparison_page_outlines_the_cells_where_engines_differ";
    let d = tempfile::tempdir().expect("temp dir");
    let Some(chromium) = chromium_or_skip(test, d.path()) else {
        return;
    };
    let o = popek(&[
        "scan",
        "--engine",
        "unicorn",
        "--mode",
        "32",
        "--config",
        "umip=off",
        "--only",
        "sgdt,popf,hlt,add,nop",
        "--format",
        "json",
        "--out",
        path(d.path()),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = report::read_report(&d.path().join("popek-unicorn.json")).expect("JSON report");
    // A second engine that finds POPF privileged and has no NOP record.
    let mut records = a.records.clone();
    records.retain(|r| r.mnemonic != "nop");
    for r in records.iter_mut() {
        r.engine = "other".into();
        if r.mnemonic == "popf" {
            r.verdict.class = Class::Privileged;
            r.verdict.privileged = true;
        }
    }
    let b = Report::with_host("other", "other 1", "Test CPU", records);
    let diffs = compare::compare(&a.records, &b.records);
    let differing: BTreeSet<(String, u8)> = a
        .records
        .iter()
        .filter(|r| r.mnemonic == "popf" || r.mnemonic == "nop")
        .map(position_of)
        .collect();
    assert!(!diffs.is_empty() && !differing.is_empty());
    let page = d.path().join("popek-comparison.html");
    let reports = [a, b];
    report::write_atomic(&page, |w| {
        html::write_html(
            w,
            &html::Page {
                reports: &reports,
                facts: None,
                diffs: Some(&diffs),
            },
        )
    })
    .expect("write the page");
    for engine in ["unicorn", "other"] {
        let view = format!("{engine}/32/umip=off");
        let o = dump_dom(
            &chromium,
            &d.path().join("profile"),
            &file_url(&page, &view),
        );
        let dom = String::from_utf8_lossy(&o.stdout);
        let drawn = drawn_cells(&dom);
        let outlined: BTreeSet<(String, u8)> = drawn
            .iter()
            .filter(|(_, c)| c.split(' ').any(|x| x == "disagree"))
            .map(|(k, _)| k.clone())
            .collect();
        // The other engine has no NOP record, so its view outlines POPF only.
        let want: BTreeSet<(String, u8)> = differing
            .iter()
            .filter(|k| engine == "unicorn" || drawn.contains_key(*k))
            .cloned()
            .collect();
        assert_eq!(outlined, want, "{view}");
        // The list of differences of the one group: a row each.
        assert_eq!(
            dom.matches("<tr class=\"diff\">").count(),
            diffs.len(),
            "{view}"
        );
    }
}

#[test]
fn scan_all_writes_the_comparison_page_with_every_difference() {
    let test = "scan_all_writes_the_comparison_page_with_every_difference";
    if let Err(reason) = analyzer::engine::availability(analyzer::engine::EngineKind::Kvm) {
        if std::env::var("POPEK_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("{test}: KVM is required (POPEK_REQUIRE_KVM=1) but not available: {reason}");
        }
        println!("skipped: {test}: {reason}");
        return;
    }
    let d = tempfile::tempdir().expect("temp dir");
    let Some(chromium) = chromium_or_skip(test, d.path()) else {
        return;
    };
    let o = popek(&[
        "scan",
        "--engine",
        "all",
        "--mode",
        "64",
        "--only",
        "sgdt,popf,hlt,add,nop",
        "--format",
        "json,html",
        "--out",
        path(d.path()),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "popek-unicorn.html",
        "popek-kvm.html",
        "popek-comparison.html",
    ] {
        assert!(d.path().join(f).exists(), "{f} written");
    }
    let diffs: Vec<Difference> = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("popek-comparison.json")).expect("read"),
    )
    .expect("comparison JSON");
    let Some(first) = diffs.first() else {
        println!("skipped: {test}: the engines agree on every record here");
        return;
    };
    let first_group = diffs
        .iter()
        .filter(|x| x.mode == first.mode && x.config == first.config)
        .count();
    let o = dump_dom(
        &chromium,
        &d.path().join("profile"),
        &file_url(&d.path().join("popek-comparison.html"), ""),
    );
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(dom.contains("popek comparison: unicorn vs kvm"), "{dom}");
    assert!(
        dom.contains(&format!(
            "{} differences between unicorn and kvm",
            diffs.len()
        )),
        "{dom}"
    );
    assert_eq!(dom.matches("<tr class=\"diff\">").count(), first_group);
}

#[test]
fn pages_of_an_engine_that_did_not_run_do_not_stay() {
    let d = tempfile::tempdir().expect("temp dir");
    for stale in ["popek-kvm.html", "popek-comparison.html"] {
        std::fs::write(d.path().join(stale), b"from an earlier scan").expect("plant");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_popek"))
        .args([
            "scan", "--engine", "all", "--only", "hlt", "--mode", "64", "--format", "html", "--out",
        ])
        .arg(d.path())
        .env("POPEK_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut names: Vec<String> = std::fs::read_dir(d.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // `all` includes the host CPU where it runs: its page, and the engines
    // compared run by run (no verdict comparison page without KVM).
    let mut want = vec!["popek-unicorn.html"];
    if analyzer::engine::availability(analyzer::engine::EngineKind::Native).is_ok() {
        want.extend(["popek-native.html", "popek-runs.json", "popek-runs.md"]);
        want.sort();
    }
    assert_eq!(names, want);
}
