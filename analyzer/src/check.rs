//! Regression checks (`popek check`): a fresh scan, or a report, against a
//! kept baseline report of the same engine, modes and configurations.
//!
//! Records are matched by engine, mode, configuration, code and form and
//! compared whole ([`compare::Depth::Full`]): every verdict field, the
//! evidence and outcomes, the states not run, the encoding and the
//! documented metadata and facts. Per (engine, mode, configuration) the
//! report headers are compared too: the engine version and the theorem
//! verdicts (these only when the check covers every record, not under
//! `--only`). The host CPU is never compared: Unicorn's results do not
//! depend on the host.
//!
//! What is an error rather than drift ([`CheckError`]): a baseline of another
//! tool version, of an engine, mode or configuration the check does not run,
//! or a check of one the baseline lacks. Within the modes and configurations
//! both cover, a record only one side has is drift.

pub mod known;

use crate::compare::{self, Change, Depth};
use crate::mode::Mode;
use crate::record::Record;
use crate::report::junit::{self, Case, CaseResult, Suite};
use crate::report::{Report, Theorems};
pub use known::{KnownFailure, KnownFailures};
use std::collections::BTreeSet;
use std::io::{self, Write};

/// The version of this tool, as report headers carry it.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a check could not be made: never drift, always an error.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// `{baseline} has X but {subject} Y`: the two do not cover the same ground.
    #[error("{baseline} has {has} but {subject} {other}")]
    Mismatch {
        baseline: String,
        has: String,
        subject: String,
        other: String,
    },
    /// The other way round: `{subject} X but {baseline} has Y`.
    #[error("{subject} {has} but {baseline} has {other}")]
    Lacks {
        subject: String,
        has: String,
        baseline: String,
        other: String,
    },
    #[error("no baseline of engine {engine}: the baselines given are of {given}")]
    NoBaseline { engine: String, given: String },
    #[error("two baselines of engine {engine}: {a} and {b}")]
    TwoBaselines {
        engine: String,
        a: String,
        b: String,
    },
    #[error("engine {engine} is checked twice ({a}; {b})")]
    TwoChecked {
        engine: String,
        a: String,
        b: String,
    },
    #[error("{baseline} has no records")]
    Empty { baseline: String },
    #[error("{baseline} holds records of engine {record} in a report of engine {header}")]
    MixedEngines {
        baseline: String,
        header: String,
        record: String,
    },
    #[error("--only: '{name}' names no record of the baseline or of what is checked")]
    OnlyMatchesNothing { name: String },
    #[error("cannot read known failures {path}")]
    ReadKnown {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{file} line {line}: {why}")]
    KnownFailureLine {
        file: String,
        line: usize,
        why: String,
    },
}

/// What a report covers: one engine, its modes and configurations, and the
/// tool version it was written by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub engine: String,
    pub modes: Vec<Mode>,
    /// Canonical configuration names.
    pub configs: Vec<String>,
    pub tool_version: String,
    /// The report's name in messages (`report r.json`); `None` for a scan.
    pub name: Option<String>,
}

impl Scope {
    /// The scope of a check that scans `engine` in `modes` and `configs` with this tool.
    pub fn of_scan(engine: &str, modes: &[Mode], configs: &[String]) -> Scope {
        Scope {
            engine: engine.to_string(),
            modes: modes.to_vec(),
            configs: configs.to_vec(),
            tool_version: TOOL_VERSION.to_string(),
            name: None,
        }
    }

    /// How messages name it before what it covers: `the check runs` (mode
    /// 16), `report r.json has` (mode 16).
    pub fn described(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} has"),
            None => "the check runs".into(),
        }
    }

    /// The scope of `report` (named `name` in messages): its engine, and the
    /// modes and configurations of its records.
    pub fn of_report(name: &str, report: &Report) -> Scope {
        let mut modes: Vec<Mode> = report.records.iter().map(|r| r.mode).collect();
        modes.sort();
        modes.dedup();
        let mut configs: Vec<String> = Vec::new();
        for r in &report.records {
            if !configs.contains(&r.config) {
                configs.push(r.config.clone());
            }
        }
        Scope {
            engine: report.header.engine.clone(),
            modes,
            configs,
            tool_version: report.header.tool_version.clone(),
            name: Some(name.to_string()),
        }
    }
}

/// A kept report to check against, with its name (a path) for messages.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub name: String,
    pub report: Report,
}

impl Baseline {
    fn scope(&self) -> Scope {
        Scope::of_report(&format!("baseline {}", self.name), &self.report)
    }
}

/// What is checked: a report (of a fresh scan, or read from a file) and the
/// scope it was made for.
#[derive(Clone, Debug)]
pub struct Subject {
    pub scope: Scope,
    pub report: Report,
}

/// The options of a check, typed.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Compare only records whose code or mnemonic is one of these (case does
    /// not matter), as `scan --only` selects them; all if empty.
    pub only: Vec<String>,
    pub known: KnownFailures,
}

fn names<T: AsRef<str>>(v: &[T]) -> String {
    v.iter().map(|s| s.as_ref()).collect::<Vec<_>>().join(",")
}

/// Checks, before anything runs, that every subject has exactly one
/// baseline of its engine, of the same tool version, modes and
/// configurations, and that every baseline is checked. Returns, per
/// subject, the index of its baseline.
pub fn preflight(baselines: &[Baseline], scopes: &[Scope]) -> Result<Vec<usize>, CheckError> {
    for b in baselines {
        if b.report.records.is_empty() {
            return Err(CheckError::Empty {
                baseline: format!("baseline {}", b.name),
            });
        }
        if let Some(r) = b
            .report
            .records
            .iter()
            .find(|r| r.engine != b.report.header.engine)
        {
            return Err(CheckError::MixedEngines {
                baseline: format!("baseline {}", b.name),
                header: b.report.header.engine.clone(),
                record: r.engine.clone(),
            });
        }
    }
    let checked: Vec<&str> = scopes.iter().map(|s| s.engine.as_str()).collect();
    for (i, s) in scopes.iter().enumerate() {
        if let Some(t) = scopes[..i].iter().find(|t| t.engine == s.engine) {
            return Err(CheckError::TwoChecked {
                engine: s.engine.clone(),
                a: t.name.clone().unwrap_or_else(|| "the scan".into()),
                b: s.name.clone().unwrap_or_else(|| "the scan".into()),
            });
        }
    }
    for b in baselines {
        if !checked.contains(&b.report.header.engine.as_str()) {
            return Err(CheckError::Mismatch {
                baseline: format!("baseline {}", b.name),
                has: format!("engine {}", b.report.header.engine),
                subject: match scopes {
                    [one] => one.described(),
                    _ => "the check covers".into(),
                },
                other: format!("engine {}", checked.join(",")),
            });
        }
    }
    let mut pairs = Vec::new();
    for s in scopes {
        let of: Vec<usize> = (0..baselines.len())
            .filter(|&i| baselines[i].report.header.engine == s.engine)
            .collect();
        match of.as_slice() {
            [] => {
                let given: Vec<&str> = baselines
                    .iter()
                    .map(|b| b.report.header.engine.as_str())
                    .collect();
                return Err(CheckError::NoBaseline {
                    engine: s.engine.clone(),
                    given: if given.is_empty() {
                        "no engine".into()
                    } else {
                        given.join(", ")
                    },
                });
            }
            [i] => pairs.push(*i),
            [i, j, ..] => {
                return Err(CheckError::TwoBaselines {
                    engine: s.engine.clone(),
                    a: baselines[*i].name.clone(),
                    b: baselines[*j].name.clone(),
                })
            }
        }
    }
    for (s, &i) in scopes.iter().zip(&pairs) {
        let b = &baselines[i];
        same_scope(&format!("baseline {}", b.name), &b.scope(), s)?;
    }
    Ok(pairs)
}

/// `b` (the baseline named `bname`) and `s` cover the same tool version,
/// modes and configurations.
fn same_scope(bname: &str, b: &Scope, s: &Scope) -> Result<(), CheckError> {
    let mismatch = |has: String, other: String| CheckError::Mismatch {
        baseline: bname.to_string(),
        has,
        subject: s.described(),
        other,
    };
    let lacks = |has: String, other: String| CheckError::Lacks {
        subject: s.described(),
        has,
        baseline: bname.to_string(),
        other,
    };
    if b.tool_version != s.tool_version {
        return Err(mismatch(
            format!("tool_version {}", b.tool_version),
            format!(
                "tool_version {} (regenerate the baseline with that version: `make scan` or `popek scan`)",
                s.tool_version
            ),
        ));
    }
    let mode_names = |m: &[Mode]| names(&m.iter().map(|m| m.name()).collect::<Vec<_>>());
    if let Some(m) = b.modes.iter().find(|m| !s.modes.contains(m)) {
        return Err(mismatch(
            format!("mode {m}"),
            format!(
                "{} {}",
                crate::report::plural(s.modes.len(), "mode", "modes"),
                mode_names(&s.modes)
            ),
        ));
    }
    if let Some(m) = s.modes.iter().find(|m| !b.modes.contains(m)) {
        return Err(lacks(
            format!("mode {m}"),
            format!(
                "{} {}",
                crate::report::plural(b.modes.len(), "mode", "modes"),
                mode_names(&b.modes)
            ),
        ));
    }
    let configs = |c: &[String]| {
        format!(
            "{} {}",
            crate::report::plural(c.len(), "configuration", "configurations"),
            names(c)
        )
    };
    if let Some(c) = b.configs.iter().find(|c| !s.configs.contains(c)) {
        return Err(mismatch(format!("configuration {c}"), configs(&s.configs)));
    }
    if let Some(c) = s.configs.iter().find(|c| !b.configs.contains(c)) {
        return Err(lacks(format!("configuration {c}"), configs(&b.configs)));
    }
    Ok(())
}

/// `s` with control characters (a newline in a hand-edited report) written
/// as escapes, so that one change stays on one line.
fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// What a checked item is: one record, or the header of one (engine, mode,
/// configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    Record {
        code: String,
        form: String,
        mnemonic: String,
    },
    Header,
}

/// How a checked item came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Unchanged,
    /// Changed, and no known failure names it.
    Drift,
    /// Changed as a known failure (its line in the file, and why) expects.
    Known {
        line: usize,
        reason: String,
    },
}

/// One compared record or header group, with what changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub engine: String,
    pub mode: Mode,
    pub config: String,
    pub what: What,
    /// Baseline value → checked value, per field; empty when unchanged.
    pub changes: Vec<Change>,
    pub status: Status,
}

impl Item {
    /// `unicorn 16 umip=off Sgdt_m1632 (sgdt [bx+si])`, or `... (header)`.
    pub fn name(&self) -> String {
        one_line(&format!(
            "{} {} {} {}",
            self.engine,
            self.mode,
            self.config,
            self.case_name()
        ))
    }

    /// The code and form (`Sgdt_m1632 (sgdt [bx+si])`), or `(header)`.
    pub fn case_name(&self) -> String {
        match &self.what {
            What::Record { code, form, .. } => format!("{code} ({form})"),
            What::Header => "(header)".into(),
        }
    }

    /// The changes on one line: `class: a → b | privileged: false → true`.
    pub fn changes_text(&self) -> String {
        self.changes
            .iter()
            .map(|c| one_line(&c.to_string()))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// The item and its changes on one line.
    pub fn line(&self) -> String {
        format!("{}: {}", self.name(), self.changes_text())
    }
}

/// Why a known failure did not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unused {
    /// It names records of this check, and none of them changed.
    Stale,
    /// It names no record this check compared (another engine, mode or
    /// `--only` selection, or a misspelled name).
    NotChecked,
}

/// The result of a check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Every compared item, unchanged ones included: per subject (in the
    /// order given), its header groups by mode and configuration, then its
    /// records by mode, configuration, code and form.
    pub items: Vec<Item>,
    /// The known failures that matched no change, in file order.
    pub unused: Vec<(KnownFailure, Unused)>,
    /// The baselines compared with, by name, in the order of the subjects.
    pub baselines: Vec<String>,
}

impl Outcome {
    pub fn drift(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| i.status == Status::Drift)
    }
    pub fn known(&self) -> impl Iterator<Item = &Item> {
        self.items
            .iter()
            .filter(|i| matches!(i.status, Status::Known { .. }))
    }
    pub fn records(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i.what, What::Record { .. }))
            .count()
    }
    /// Whether anything changed that no known failure expects: the check fails.
    pub fn drifted(&self) -> bool {
        self.drift().next().is_some()
    }

    /// What a terminal shows, one line each: every drift, then every known
    /// failure that matched.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        for i in self.drift() {
            s.push_str(&format!("drift: {}\n", i.line()));
        }
        for i in self.known() {
            if let Status::Known { line, reason } = &i.status {
                s.push_str(&format!(
                    "known: {} (known failure, line {line}: {reason})\n",
                    i.line()
                ));
            }
        }
        s
    }

    /// One warning per known failure that did not apply.
    pub fn warnings(&self, known: &KnownFailures) -> Vec<String> {
        self.unused
            .iter()
            .map(|(k, why)| {
                let what = match why {
                    Unused::Stale => "stale known failure: no longer drifts",
                    Unused::NotChecked => "known failure matches no record of this check",
                };
                format!("{} line {}: {what}: {}", known.source, k.line, k.selector())
            })
            .collect()
    }

    /// One line: how many records were compared and what came out.
    pub fn summary(&self) -> String {
        let drift = self.drift().count();
        let known = self.known().count();
        let stale = self
            .unused
            .iter()
            .filter(|(_, u)| *u == Unused::Stale)
            .count();
        format!(
            "{} records compared with {}: {drift} changed, {known} known {}, {stale} stale known {}",
            self.records(),
            self.baselines.join(", "),
            crate::report::plural(known, "failure", "failures"),
            crate::report::plural(stale, "failure", "failures"),
        )
    }
}

/// Whether `only` (empty: everything) selects the record of `code`/`mnemonic`.
fn selected(only: &[String], code: &str, mnemonic: &str) -> bool {
    crate::scan::selected_by(only, code, mnemonic)
}

fn theorem_text(t: crate::report::TheoremResult) -> String {
    format!(
        "{} ({} violators)",
        if t.holds { "holds" } else { "fails" },
        t.violators
    )
}

/// The header fields of one group that differ, baseline → checked.
fn header_changes(b: &Report, s: &Report, mode: Mode, config: &str, theorems: bool) -> Vec<Change> {
    let mut out = Vec::new();
    if b.header.engine_version != s.header.engine_version {
        out.push(Change {
            field: "engine_version",
            a: b.header.engine_version.clone(),
            b: s.header.engine_version.clone(),
        });
    }
    if !theorems {
        return out;
    }
    let find = |r: &Report| -> Option<Theorems> {
        r.header
            .theorems
            .iter()
            .find(|t| t.mode == mode.name() && t.config == config)
            .cloned()
    };
    let (tb, ts) = (find(b), find(s));
    type Show = fn(&Theorems) -> String;
    let fields: [(&'static str, Show); 5] = [
        ("theorem1_vmm", |t| theorem_text(t.theorem1_vmm)),
        ("theorem3_hybrid", |t| theorem_text(t.theorem3_hybrid)),
        ("judged", |t| t.judged.to_string()),
        ("unjudged", |t| t.unjudged.to_string()),
        ("not_modeled", |t| {
            t.not_modeled.clone().unwrap_or_else(|| "(none)".into())
        }),
    ];
    let none = || "(no group)".to_string();
    for (name, show) in fields {
        let x = tb.as_ref().map(show).unwrap_or_else(none);
        let y = ts.as_ref().map(show).unwrap_or_else(none);
        if x != y {
            out.push(Change {
                field: name,
                a: x,
                b: y,
            });
        }
    }
    out
}

/// `present (class X)` for a record one side has.
fn presence(r: &Record) -> String {
    format!("present ({})", r.verdict.class)
}

/// Compares every subject with its baseline (see the module doc).
pub fn check(
    baselines: &[Baseline],
    subjects: &[Subject],
    opts: &CheckOptions,
) -> Result<Outcome, CheckError> {
    let scopes: Vec<Scope> = subjects.iter().map(|s| s.scope.clone()).collect();
    let pairs = preflight(baselines, &scopes)?;
    for name in &opts.only {
        let hit = |r: &Record| selected(std::slice::from_ref(name), &r.code, &r.mnemonic);
        let any = baselines.iter().any(|b| b.report.records.iter().any(hit))
            || subjects.iter().any(|s| s.report.records.iter().any(hit));
        if !any {
            return Err(CheckError::OnlyMatchesNothing {
                name: crate::input::clip(name),
            });
        }
    }
    let whole = opts.only.is_empty();
    let mut out = Outcome::default();
    for (s, &bi) in subjects.iter().zip(&pairs) {
        let b = &baselines[bi];
        out.baselines.push(b.name.clone());
        let engine = s.scope.engine.clone();
        let mut groups: BTreeSet<(Mode, String)> = BTreeSet::new();
        for m in &s.scope.modes {
            for c in &s.scope.configs {
                groups.insert((*m, c.clone()));
            }
        }
        for (mode, config) in groups {
            let changes = header_changes(&b.report, &s.report, mode, &config, whole);
            out.items.push(Item {
                engine: engine.clone(),
                mode,
                config,
                what: What::Header,
                status: if changes.is_empty() {
                    Status::Unchanged
                } else {
                    Status::Drift
                },
                changes,
            });
        }
        let keep = |r: &&Record| selected(&opts.only, &r.code, &r.mnemonic);
        let rb = b.report.records.iter().filter(keep);
        let rs = s.report.records.iter().filter(keep);
        for (key, (x, y)) in compare::matched(rb, rs) {
            let changes = match (x, y) {
                (Some(_), Some(_)) => compare::difference(&key, x, y, Depth::Full)
                    .map(|d| d.changes)
                    .unwrap_or_default(),
                (Some(r), None) => vec![Change {
                    field: "record",
                    a: presence(r),
                    b: "missing".into(),
                }],
                (None, Some(r)) => vec![Change {
                    field: "record",
                    a: "missing".into(),
                    b: presence(r),
                }],
                (None, None) => Vec::new(),
            };
            let mnemonic = y.or(x).map(|r| r.mnemonic.clone()).unwrap_or_default();
            let (mode, config, code, form) = key;
            out.items.push(Item {
                engine: engine.clone(),
                mode,
                config,
                what: What::Record {
                    code,
                    form,
                    mnemonic,
                },
                status: if changes.is_empty() {
                    Status::Unchanged
                } else {
                    Status::Drift
                },
                changes,
            });
        }
    }
    apply_known(&mut out, &opts.known);
    Ok(out)
}

/// Marks the changed records a known failure names as known, and lists the
/// known failures that named no change.
fn apply_known(out: &mut Outcome, known: &KnownFailures) {
    let mut matched_any = vec![false; known.entries.len()];
    let mut matched_change = vec![false; known.entries.len()];
    for item in out.items.iter_mut() {
        let What::Record { code, mnemonic, .. } = &item.what else {
            continue;
        };
        let mut first = None;
        for (i, k) in known.entries.iter().enumerate() {
            if k.matches(&item.engine, item.mode, &item.config, code, mnemonic) {
                matched_any[i] = true;
                if item.status != Status::Unchanged {
                    matched_change[i] = true;
                    first.get_or_insert(k);
                }
            }
        }
        if let Some(k) = first {
            item.status = Status::Known {
                line: k.line,
                reason: k.reason.clone(),
            };
        }
    }
    for (i, k) in known.entries.iter().enumerate() {
        if matched_change[i] {
            continue;
        }
        let why = if matched_any[i] {
            Unused::Stale
        } else {
            Unused::NotChecked
        };
        out.unused.push((k.clone(), why));
    }
}

/// Writes the outcome as JUnit XML: per subject a `<testsuite>` named after
/// its engine, and one `<testcase>` per (engine, mode, configuration)
/// header and per record, `classname` `engine.mode.configuration`, `name`
/// the code and form (or `(header)`); a `<failure>` holds the changes of a
/// drifted one, a `<skipped>` marks a known failure.
pub fn write_junit<W: Write>(w: W, outcome: &Outcome) -> io::Result<()> {
    let mut suites: Vec<Suite> = Vec::new();
    for item in &outcome.items {
        if suites.last().is_none_or(|s| s.name != item.engine) {
            suites.push(Suite {
                name: item.engine.clone(),
                cases: Vec::new(),
            });
        }
        let result = match &item.status {
            Status::Unchanged => CaseResult::Passed,
            Status::Drift => CaseResult::Failed {
                message: item.changes_text(),
                kind: "drift".into(),
                text: item
                    .changes
                    .iter()
                    .map(|c| format!("{}\n", one_line(&c.to_string())))
                    .collect::<String>(),
            },
            Status::Known { line, reason } => CaseResult::Skipped {
                message: format!(
                    "known failure (line {line}: {reason}): {}",
                    item.changes_text()
                ),
            },
        };
        if let Some(suite) = suites.last_mut() {
            suite.cases.push(Case {
                classname: format!("{}.{}.{}", item.engine, item.mode, item.config),
                name: item.case_name(),
                result,
            });
        }
    }
    junit::write_junit(w, "popek check", &suites)
}

/// The most changes the Markdown summary lists per section; the rest are
/// counted (every one is in the text output and the JUnit file). GitHub
/// keeps at most 1 MiB of a step summary.
pub const MARKDOWN_MAX_LISTED: usize = 100;

/// A fence longer than any run of backticks in `body`.
fn fence(body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

fn md_section<'i, W: Write>(
    w: &mut W,
    title: &str,
    items: impl Iterator<Item = &'i Item>,
    line: impl Fn(&Item) -> String,
) -> io::Result<()> {
    let items: Vec<&Item> = items.collect();
    if items.is_empty() {
        return Ok(());
    }
    writeln!(w, "## {title} ({})\n", items.len())?;
    let body: String = items
        .iter()
        .take(MARKDOWN_MAX_LISTED)
        .map(|i| format!("{}\n", line(i)))
        .collect();
    let f = fence(&body);
    writeln!(w, "{f}text\n{body}{f}\n")?;
    if items.len() > MARKDOWN_MAX_LISTED {
        writeln!(
            w,
            "… and {} more (all are in the output of `popek check` and in its JUnit file).\n",
            items.len() - MARKDOWN_MAX_LISTED
        )?;
    }
    Ok(())
}

/// Writes a Markdown summary of the outcome (for `$GITHUB_STEP_SUMMARY`):
/// the verdict, a table per (engine, mode, configuration), then the changes,
/// the known failures that matched and the ones that did not.
pub fn write_markdown<W: Write>(
    mut w: W,
    outcome: &Outcome,
    known: &KnownFailures,
) -> io::Result<()> {
    let drift = outcome.drift().count();
    writeln!(w, "# popek check\n")?;
    if drift == 0 {
        writeln!(w, "**Passed**: {}.\n", outcome.summary())?;
    } else {
        writeln!(
            w,
            "**Failed: {drift} {} no known failure expects.** {}.\n",
            crate::report::plural(drift, "change", "changes"),
            outcome.summary()
        )?;
    }
    writeln!(
        w,
        "| engine | mode | configuration | records | changed | known failures |"
    )?;
    writeln!(w, "|---|---|---|---:|---:|---:|")?;
    let mut groups: Vec<(String, Mode, String, usize, usize, usize)> = Vec::new();
    for i in &outcome.items {
        let pos = groups
            .iter()
            .position(|g| g.0 == i.engine && g.1 == i.mode && g.2 == i.config);
        let g = match pos {
            Some(p) => &mut groups[p],
            None => {
                groups.push((i.engine.clone(), i.mode, i.config.clone(), 0, 0, 0));
                let last = groups.len() - 1;
                &mut groups[last]
            }
        };
        if matches!(i.what, What::Record { .. }) {
            g.3 += 1;
        }
        match i.status {
            Status::Unchanged => {}
            Status::Drift => g.4 += 1,
            Status::Known { .. } => g.5 += 1,
        }
    }
    for (engine, mode, config, records, changed, known) in &groups {
        writeln!(
            w,
            "| {engine} | {mode} | {config} | {records} | {changed} | {known} |"
        )?;
    }
    writeln!(w)?;
    md_section(&mut w, "Changes", outcome.drift(), |i| i.line())?;
    md_section(&mut w, "Known failures", outcome.known(), |i| {
        match &i.status {
            Status::Known { line, reason } => format!("{} (line {line}: {reason})", i.line()),
            _ => i.line(),
        }
    })?;
    let warnings = outcome.warnings(known);
    if !warnings.is_empty() {
        writeln!(
            w,
            "## Known failures that did not apply ({})\n",
            warnings.len()
        )?;
        let body: String = warnings.iter().map(|l| format!("{l}\n")).collect();
        let f = fence(&body);
        writeln!(w, "{f}text\n{body}{f}\n")?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Class;
    use crate::record::tests::record;

    fn report(records: Vec<Record>) -> Report {
        Report::with_host("unicorn", "fake 1", "Test CPU", records)
    }

    /// A record of the test report's engine.
    fn rec(mnemonic: &str, class: Class, doc_privileged: bool) -> Record {
        let mut r = record(mnemonic, class, doc_privileged);
        r.engine = "unicorn".into();
        r
    }

    fn sample() -> Vec<Record> {
        vec![
            rec("hlt", Class::Privileged, true),
            rec("sgdt", Class::SensitiveUnprivileged, false),
            rec("add", Class::Innocuous, false),
        ]
    }

    fn baseline(records: Vec<Record>) -> Baseline {
        Baseline {
            name: "b.json".into(),
            report: report(records),
        }
    }

    fn subject(records: Vec<Record>) -> Subject {
        let r = report(records);
        Subject {
            scope: Scope::of_report("report r.json", &r),
            report: r,
        }
    }

    #[test]
    fn identical_reports_pass_and_the_host_cpu_does_not_count() {
        let b = baseline(sample());
        let mut s = subject(sample());
        s.report.header.host_cpu = "Other CPU".into();
        let o = check(&[b], &[s], &CheckOptions::default()).expect("check");
        assert!(!o.drifted());
        assert_eq!(o.records(), 3);
        // One header group (32, umip=off) and three records.
        assert_eq!(o.items.len(), 4);
        assert_eq!(o.render_text(), "");
    }

    #[test]
    fn a_changed_verdict_is_named_with_old_and_new_values() {
        let b = baseline(sample());
        let mut changed = sample();
        changed[1] = rec("sgdt", Class::Privileged, false);
        changed.remove(2);
        let o = check(&[b], &[subject(changed)], &CheckOptions::default()).expect("check");
        let text = o.render_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("drift: unicorn 32 umip=off (header): theorem1_vmm: fails (1 violators) → holds (0 violators)"), "{text}");
        assert_eq!(
            lines[1],
            "drift: unicorn 32 umip=off ADD_x (add): record: present (innocuous) → missing"
        );
        assert!(
            lines[2].starts_with("drift: unicorn 32 umip=off SGDT_x (sgdt): class: sensitive-unprivileged → privileged | privileged: false → true"),
            "{text}"
        );
        assert!(lines[2].contains("| evidence: location: "), "{text}");
    }

    #[test]
    fn scope_and_version_mismatches_are_errors_that_say_which() {
        let b = baseline(sample());
        let s = |modes: &[Mode], configs: &[&str]| {
            Scope::of_scan(
                "unicorn",
                modes,
                &configs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            )
        };
        let e = preflight(
            std::slice::from_ref(&b),
            &[s(&[Mode::Prot16], &["umip=off"])],
        )
        .expect_err("mode");
        assert_eq!(
            e.to_string(),
            "baseline b.json has mode 32 but the check runs mode 16"
        );
        let e = preflight(
            std::slice::from_ref(&b),
            &[s(&[Mode::Prot32, Mode::Long64], &["umip=off"])],
        )
        .expect_err("mode");
        assert_eq!(
            e.to_string(),
            "the check runs mode 64 but baseline b.json has mode 32"
        );
        let e = preflight(
            std::slice::from_ref(&b),
            &[s(&[Mode::Prot32], &["umip=off", "umip=on"])],
        )
        .expect_err("config");
        assert_eq!(
            e.to_string(),
            "the check runs configuration umip=on but baseline b.json has configuration umip=off"
        );
        let mut other = s(&[Mode::Prot32], &["umip=off"]);
        other.engine = "kvm".into();
        let e = preflight(std::slice::from_ref(&b), &[other]).expect_err("engine");
        assert_eq!(
            e.to_string(),
            "baseline b.json has engine unicorn but the check runs engine kvm"
        );
        let mut old = b.clone();
        old.report.header.tool_version = "0.0.1".into();
        let e = preflight(&[old], &[s(&[Mode::Prot32], &["umip=off"])]).expect_err("version");
        assert!(
            e.to_string()
                .starts_with("baseline b.json has tool_version 0.0.1"),
            "{e}"
        );
        assert!(preflight(&[b], &[s(&[Mode::Prot32], &["umip=off"])]).is_ok());
    }

    #[test]
    fn known_failures_turn_drift_into_known_and_name_stale_ones() {
        let b = baseline(sample());
        let mut changed = sample();
        changed[1] = rec("sgdt", Class::Privileged, false);
        let known = KnownFailures::parse(
            "k.txt",
            "unicorn 32 umip=off sgdt no UMIP here\n* * * HLT_x fixed long ago\n* 64 * ADD_x other mode\n",
        )
        .expect("parse");
        let opts = CheckOptions {
            only: vec!["sgdt".into(), "hlt".into(), "add".into()],
            known: known.clone(),
        };
        let o = check(&[b], &[subject(changed)], &opts).expect("check");
        assert!(!o.drifted(), "{}", o.render_text());
        assert_eq!(o.known().count(), 1);
        assert!(o
            .render_text()
            .starts_with("known: unicorn 32 umip=off SGDT_x (sgdt): class: "));
        assert_eq!(
            o.warnings(&known),
            [
                "k.txt line 2: stale known failure: no longer drifts: * * * HLT_x",
                "k.txt line 3: known failure matches no record of this check: * 64 * ADD_x"
            ]
        );
        assert!(o
            .summary()
            .ends_with("0 changed, 1 known failure, 1 stale known failure"));
    }

    #[test]
    fn only_restricts_the_comparison_and_must_name_something() {
        let b = baseline(sample());
        let mut changed = sample();
        changed[1] = rec("sgdt", Class::Privileged, false);
        let opts = CheckOptions {
            only: vec!["HLT".into()],
            ..Default::default()
        };
        let o = check(std::slice::from_ref(&b), &[subject(changed.clone())], &opts).expect("check");
        // Only HLT is compared, and the theorems (of all records) are not.
        assert!(!o.drifted(), "{}", o.render_text());
        assert_eq!(o.records(), 1);
        let opts = CheckOptions {
            only: vec!["nosuch".into()],
            ..Default::default()
        };
        let e = check(&[b], &[subject(changed)], &opts).expect_err("nothing");
        assert!(e.to_string().contains("'nosuch' names no record"), "{e}");
    }

    #[test]
    fn junit_and_markdown_carry_every_case_and_change() {
        let b = baseline(sample());
        let mut changed = sample();
        changed[1] = rec("sgdt", Class::Privileged, false);
        let known = KnownFailures::parse("k.txt", "unicorn 32 umip=off hlt <why> & \"so\"\n")
            .expect("parse");
        let mut hlt = changed[0].clone();
        hlt.verdict.runs += 1;
        changed[0] = hlt;
        let opts = CheckOptions {
            only: Vec::new(),
            known: known.clone(),
        };
        let o = check(&[b], &[subject(changed)], &opts).expect("check");
        let mut xml = Vec::new();
        write_junit(&mut xml, &o).expect("junit");
        let xml = String::from_utf8(xml).expect("utf8");
        assert!(
            xml.contains(
                r#"<testsuites name="popek check" tests="4" failures="2" errors="0" skipped="1">"#
            ),
            "{xml}"
        );
        assert!(xml.contains(r#"<testcase classname="unicorn.32.umip=off" name="(header)">"#));
        assert!(xml.contains(r#"<testcase classname="unicorn.32.umip=off" name="ADD_x (add)"/>"#));
        assert!(xml.contains(
            r#"<skipped message="known failure (line 1: &lt;why&gt; &amp; &quot;so&quot;): runs: 26 → 27"/>"#
        ), "{xml}");
        let mut md = Vec::new();
        write_markdown(&mut md, &o, &known).expect("md");
        let md = String::from_utf8(md).expect("utf8");
        assert!(
            md.starts_with("# popek check\n\n**Failed: 2 changes no known failure expects.**"),
            "{md}"
        );
        assert!(
            md.contains("| unicorn | 32 | umip=off | 3 | 2 | 1 |"),
            "{md}"
        );
        assert!(
            md.contains("## Changes (2)\n\n```text\nunicorn 32 umip=off (header): "),
            "{md}"
        );
        assert!(md.contains("## Known failures (1)\n\n```text\nunicorn 32 umip=off HLT_x (hlt): runs: 26 → 27 (line 1: <why> & \"so\")\n```"), "{md}");
    }

    #[test]
    fn a_change_stays_on_one_line() {
        let b = baseline(sample());
        let mut changed = sample();
        changed[2].verdict.notes = vec!["two\nlines\tand a tab".into()];
        let o = check(&[b], &[subject(changed)], &CheckOptions::default()).expect("check");
        assert_eq!(
            o.render_text(),
            "drift: unicorn 32 umip=off ADD_x (add): notes: (none) → two\\nlines\\tand a tab\n"
        );
    }

    #[test]
    fn a_fence_is_longer_than_any_backtick_run() {
        assert_eq!(fence("plain"), "```");
        assert_eq!(fence("a ```` b"), "`````");
    }
}
