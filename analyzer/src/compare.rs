//! Engine comparison: the same scan on two engines (or two reports), and
//! every record where the verdicts disagree, with both sides' evidence.

use crate::engine::Executor;
use crate::mode::Mode;
use crate::record::Record;
use crate::scan::Scanned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Write};

/// One side of a difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    pub engine: String,
    pub class: String,
    pub evidence: String,
}

/// A record on which two scans disagree, or that only one of them has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub mode: String,
    pub config: String,
    pub code: String,
    pub form: String,
    /// The fields that differ (`class`, `privileged`, ...), or `missing in a`/`missing in b`.
    pub fields: Vec<String>,
    pub a: Option<Side>,
    pub b: Option<Side>,
    /// Each differing field with its value on both sides, in the order of
    /// `fields` (empty for a missing record). Not serialized: the engine
    /// comparison's JSON keeps its shape.
    #[serde(skip)]
    pub changes: Vec<Change>,
}

/// One field that differs, with its value on each side as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub field: &'static str,
    pub a: String,
    pub b: String,
}

impl std::fmt::Display for Change {
    /// `class: innocuous → privileged`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} → {}", self.field, self.a, self.b)
    }
}

/// How much of two records is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// The verdict's flags and class: two engines (or CPUs) agree when these
    /// agree, whatever the evidence bytes (`popek diff`, `scan --engine all`).
    Verdict,
    /// Every field of the record but its engine and engine version (and the
    /// key): the verdict with its evidence, outcomes and states not run, the
    /// encoding, the documented metadata and facts (`popek check`).
    Full,
}

/// The key records are matched by: mode, configuration, code, form.
pub type Key = (crate::mode::Mode, String, String, String);

fn key(r: &Record) -> Key {
    (r.mode, r.config.clone(), r.code.clone(), r.form.clone())
}

fn side(r: &Record) -> Side {
    Side {
        engine: r.engine.clone(),
        class: r.verdict.class.name().into(),
        evidence: r.evidence_text(),
    }
}

/// One compared field: its name, whether two records agree on it (on the
/// typed value, not its text), and its value as text.
struct Field {
    name: &'static str,
    same: fn(&Record, &Record) -> bool,
    show: fn(&Record) -> String,
}

/// A list as text: its items joined by `sep`, or `(none)`.
fn list<T: ToString>(items: &[T], sep: &str) -> String {
    if items.is_empty() {
        return "(none)".into();
    }
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "(none)".into())
}

macro_rules! field {
    ($name:literal, |$r:ident| $value:expr, |$s:ident| $show:expr) => {
        Field {
            name: $name,
            same: |a, b| {
                let x = {
                    let $r = a;
                    $value
                };
                let y = {
                    let $r = b;
                    $value
                };
                x == y
            },
            show: |$s: &Record| $show,
        }
    };
    ($name:literal, |$r:ident| $value:expr) => {
        field!($name, |$r| $value, |s| {
            let $r = s;
            $value.to_string()
        })
    };
}

/// Every compared field, the verdict's flags first ([`Depth::Verdict`]
/// compares those); [`Depth::Full`] compares them all. A test checks that
/// every field a record serializes is here or named in [`NOT_COMPARED`].
const FIELDS: &[Field] = &[
    field!("class", |r| r.verdict.class.name()),
    field!("privileged", |r| r.verdict.privileged),
    field!("control_sensitive", |r| r.verdict.control_sensitive),
    field!("behavior_sensitive", |r| r.verdict.behavior_sensitive),
    field!("location_sensitive", |r| r.verdict.location_sensitive),
    field!("mode_sensitive", |r| r.verdict.mode_sensitive),
    field!("user_sensitive", |r| r.verdict.user_sensitive),
    field!("violates_pg", |r| r.verdict.violates_pg),
    field!("violates_hybrid", |r| r.verdict.violates_hybrid),
    field!("nondeterministic", |r| r.verdict.nondeterministic),
    field!("always_traps", |r| r.verdict.always_traps),
    field!("unsupported", |r| r.verdict.unsupported),
    // Depth::Full from here on.
    field!("changed", |r| &r.verdict.changed, |r| {
        let names: Vec<&str> = r.verdict.changed.iter().map(|p| p.name()).collect();
        list(&names, ", ")
    }),
    field!("evidence", |r| &r.verdict.evidence, |r| list(
        &r.verdict.evidence,
        "; "
    )),
    field!("engine_results", |r| &r.verdict.engine_results, |r| list(
        &r.verdict.engine_results,
        "; "
    )),
    field!("runs", |r| r.verdict.runs),
    field!("engine_level_runs", |r| r.verdict.engine_level_runs),
    field!("notes", |r| &r.verdict.notes, |r| list(
        &r.verdict.notes,
        "; "
    )),
    field!("off_sentinel", |r| &r.verdict.off_sentinel, |r| opt(&r
        .verdict
        .off_sentinel)),
    field!("not_run", |r| &r.verdict.not_run, |r| list(
        &r.verdict.not_run,
        ", "
    )),
    field!("mnemonic", |r| &r.mnemonic, |r| r.mnemonic.clone()),
    field!("bytes", |r| &r.bytes, |r| r.bytes.clone()),
    field!("doc", |r| &r.doc, |r| serde_json::to_string(&r.doc)
        .unwrap_or_else(|e| format!("(unprintable: {e})"))),
    field!("documented_privileged", |r| r.documented_privileged),
    field!("doc_disagreement", |r| &r.doc_disagreement, |r| opt(
        &r.doc_disagreement
    )),
    field!("documented", |r| &r.documented, |r| opt(&r.documented)),
    field!("deviation", |r| &r.deviation, |r| opt(&r.deviation)),
];

/// How many of [`FIELDS`] [`Depth::Verdict`] compares.
const VERDICT_FIELDS: usize = 12;

/// The record fields no depth compares: the key, and the engine (records are
/// matched within one engine's report, or across two engines on purpose) and
/// its version (a report header's, compared there).
pub const NOT_COMPARED: [&str; 6] = ["engine", "engine_version", "mode", "config", "code", "form"];

fn fields_of(depth: Depth) -> &'static [Field] {
    match depth {
        Depth::Verdict => &FIELDS[..VERDICT_FIELDS],
        Depth::Full => FIELDS,
    }
}

/// The fields on which `a` and `b` differ, with both values, at `depth`.
pub fn changes(a: &Record, b: &Record, depth: Depth) -> Vec<Change> {
    fields_of(depth)
        .iter()
        .filter(|f| !(f.same)(a, b))
        .map(|f| Change {
            field: f.name,
            a: (f.show)(a),
            b: (f.show)(b),
        })
        .collect()
}

/// Records of `a` and `b` matched by (mode, configuration, code, form),
/// sorted by that key; a record only one side has is paired with `None`.
/// Of two records of one key (which [`crate::report::read_report`] refuses)
/// the first counts.
pub fn matched<'r>(
    a: impl IntoIterator<Item = &'r Record>,
    b: impl IntoIterator<Item = &'r Record>,
) -> BTreeMap<Key, (Option<&'r Record>, Option<&'r Record>)> {
    let mut map: BTreeMap<Key, (Option<&Record>, Option<&Record>)> = BTreeMap::new();
    for r in a {
        map.entry(key(r)).or_default().0.get_or_insert(r);
    }
    for r in b {
        map.entry(key(r)).or_default().1.get_or_insert(r);
    }
    map
}

/// How the two records of one key differ at `depth`, or `None` if they do not.
pub fn difference(
    key: &Key,
    a: Option<&Record>,
    b: Option<&Record>,
    depth: Depth,
) -> Option<Difference> {
    let (changes, differing) = match (a, b) {
        (Some(x), Some(y)) => {
            let c = changes(x, y, depth);
            let names = c.iter().map(|c| c.field.to_string()).collect();
            (c, names)
        }
        (Some(_), None) => (Vec::new(), vec!["missing in b".to_string()]),
        (None, Some(_)) => (Vec::new(), vec!["missing in a".to_string()]),
        (None, None) => (Vec::new(), Vec::new()),
    };
    if differing.is_empty() {
        return None;
    }
    let (mode, config, code, form) = key;
    Some(Difference {
        mode: mode.name().into(),
        config: config.clone(),
        code: code.clone(),
        form: form.clone(),
        fields: differing,
        a: a.map(side),
        b: b.map(side),
        changes,
    })
}

/// Matches records by (mode, configuration, code, form) and lists the
/// verdict differences, sorted by that key.
pub fn compare(a: &[Record], b: &[Record]) -> Vec<Difference> {
    compare_at(a, b, Depth::Verdict)
}

/// As [`compare`], comparing as much as `depth` says.
pub fn compare_at(a: &[Record], b: &[Record], depth: Depth) -> Vec<Difference> {
    matched(a, b)
        .iter()
        .filter_map(|(k, (ra, rb))| difference(k, *ra, *rb, depth))
        .collect()
}

/// Renders differences as Markdown; `a` and `b` name the two sides.
pub fn write_differences_md<W: Write>(
    mut w: W,
    a: &str,
    b: &str,
    diffs: &[Difference],
) -> io::Result<()> {
    writeln!(w, "# popek: {a} vs {b}\n")?;
    if diffs.is_empty() {
        writeln!(w, "No differences.")?;
        return w.flush();
    }
    writeln!(
        w,
        "{} {}.\n",
        diffs.len(),
        crate::report::plural(diffs.len(), "difference", "differences")
    )?;
    for d in diffs {
        writeln!(w, "## {} {} `{}` ({})\n", d.mode, d.config, d.form, d.code)?;
        writeln!(w, "- differs in: {}", d.fields.join(", "))?;
        for (name, s) in [(a, &d.a), (b, &d.b)] {
            match s {
                Some(s) => writeln!(w, "- {name}: {} — {}", s.class, s.evidence)?,
                None => writeln!(w, "- {name}: no record")?,
            }
        }
        writeln!(w)?;
    }
    w.flush()
}

/// One engine's runs for a run-by-run comparison: its name, its scan with
/// the outcomes kept, and what executed each (mode, CPL).
pub struct EngineRuns<'a> {
    pub engine: &'a str,
    pub scanned: &'a [Scanned],
    pub executor: &'a dyn Fn(Mode, u8) -> Executor,
}

/// One engine's side of a state whose outcomes differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSide {
    pub engine: String,
    /// What executed the run: `emulator` or `hardware`.
    pub executor: Executor,
    pub outcome: String,
}

/// The states two engines both ran for one record where their outcomes
/// differ, the same way on every state listed (one difference per record,
/// pair of outcomes and pair of executors).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDifference {
    pub mode: String,
    pub config: String,
    pub code: String,
    pub form: String,
    /// `base@cpl3`, `ring1@cpl0 (repeat 1)`, in the first engine's matrix order.
    pub states: Vec<String>,
    pub a: RunSide,
    pub b: RunSide,
}

impl RunDifference {
    /// What executed the two sides: `emulator vs hardware`.
    pub fn executors(&self) -> String {
        format!("{} vs {}", self.a.executor, self.b.executor)
    }
}

/// For every record both `a` and `b` have (matched by mode, configuration,
/// code and form), the states both ran where their outcomes differ
/// ([`crate::observe::Outcome::agrees`]), grouped by the pair of outcomes
/// and of executors; sorted by that key, then by the first such state in
/// `a`'s matrix order. A state only one engine ran (the other could not, or
/// does not run that side) is not a difference.
pub fn compare_runs(a: &EngineRuns, b: &EngineRuns) -> Vec<RunDifference> {
    let index = |s: &'_ [Scanned]| -> BTreeMap<Key, usize> {
        let mut m = BTreeMap::new();
        for (i, x) in s.iter().enumerate() {
            m.entry(key(&x.record)).or_insert(i);
        }
        m
    };
    let (ia, ib) = (index(a.scanned), index(b.scanned));
    let mut out = Vec::new();
    for (k, &i) in &ia {
        let Some(&j) = ib.get(k) else { continue };
        let (ra, rb) = (&a.scanned[i], &b.scanned[j]);
        let mode = ra.record.mode;
        let mut here: Vec<RunDifference> = Vec::new();
        for sa in &ra.outcomes {
            let Some(sb) = rb.outcomes.iter().find(|o| o.same_state(sa)) else {
                continue;
            };
            if sa.outcome.agrees(&sb.outcome) {
                continue;
            }
            let side_a = RunSide {
                engine: a.engine.into(),
                executor: (a.executor)(mode, sa.cpl(mode)),
                outcome: sa.outcome.short(),
            };
            let side_b = RunSide {
                engine: b.engine.into(),
                executor: (b.executor)(mode, sb.cpl(mode)),
                outcome: sb.outcome.short(),
            };
            match here.iter_mut().find(|d| d.a == side_a && d.b == side_b) {
                Some(d) => d.states.push(sa.state(&ra.config)),
                None => here.push(RunDifference {
                    mode: mode.name().into(),
                    config: k.1.clone(),
                    code: k.2.clone(),
                    form: k.3.clone(),
                    states: vec![sa.state(&ra.config)],
                    a: side_a,
                    b: side_b,
                }),
            }
        }
        out.extend(here);
    }
    out
}

/// Renders the run-by-run differences of every pair of engines as Markdown:
/// per pair, a count by what executed each side, then the states grouped
/// the same way. `pairs` gives each pair's two engine names and differences.
pub fn write_run_differences_md<W: Write>(
    mut w: W,
    pairs: &[(String, String, Vec<RunDifference>)],
) -> io::Result<()> {
    writeln!(w, "# popek: engines run by run\n")?;
    writeln!(
        w,
        "Every state two engines both ran where their outcomes differ, by pair of engines and by what executed each side (an emulator or the CPU).\n"
    )?;
    for (a, b, diffs) in pairs {
        writeln!(w, "## {a} vs {b}\n")?;
        if diffs.is_empty() {
            writeln!(w, "No differences.\n")?;
            continue;
        }
        let mut groups: BTreeMap<String, Vec<&RunDifference>> = BTreeMap::new();
        for d in diffs {
            groups.entry(d.executors()).or_default().push(d);
        }
        writeln!(w, "| executed by ({a} vs {b}) | records | states |")?;
        writeln!(w, "|---|---|---|")?;
        for (g, ds) in &groups {
            let mut records: Vec<(&str, &str, &str, &str)> = ds
                .iter()
                .map(|d| {
                    (
                        d.mode.as_str(),
                        d.config.as_str(),
                        d.code.as_str(),
                        d.form.as_str(),
                    )
                })
                .collect();
            records.dedup();
            let states: usize = ds.iter().map(|d| d.states.len()).sum();
            writeln!(w, "| {g} | {} | {states} |", records.len())?;
        }
        writeln!(w)?;
        for (g, ds) in &groups {
            writeln!(w, "### {a} vs {b}: {g}\n")?;
            for d in ds {
                writeln!(
                    w,
                    "- {} {} `{}` ({}): {} vs {} at {}",
                    d.mode,
                    d.config,
                    d.form,
                    d.code,
                    d.a.outcome,
                    d.b.outcome,
                    d.states.join(", ")
                )?;
            }
            writeln!(w)?;
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Class;
    use crate::record::tests::record;

    #[test]
    fn lists_disagreements_and_missing_records() {
        let a = vec![
            record("hlt", Class::Privileged, true),
            record("sgdt", Class::SensitiveUnprivileged, false),
            record("add", Class::Innocuous, false),
        ];
        let mut kvm_sgdt = record("sgdt", Class::Privileged, false);
        kvm_sgdt.engine = "kvm".into();
        let b = vec![
            record("hlt", Class::Privileged, true),
            kvm_sgdt,
            record("cpuid", Class::Innocuous, false),
        ];
        let d = compare(&a, &b);
        let summary: Vec<(&str, Vec<String>)> = d
            .iter()
            .map(|d| (d.code.as_str(), d.fields.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("ADD_x", vec!["missing in b".to_string()]),
                ("CPUID_x", vec!["missing in a".to_string()]),
                (
                    "SGDT_x",
                    [
                        "class",
                        "privileged",
                        "behavior_sensitive",
                        "location_sensitive",
                        "user_sensitive",
                        "violates_pg",
                        "violates_hybrid"
                    ]
                    .map(String::from)
                    .to_vec()
                ),
            ]
        );
        let sgdt = &d[2];
        assert_eq!(
            sgdt.a.as_ref().map(|s| s.class.as_str()),
            Some("sensitive-unprivileged")
        );
        assert_eq!(
            sgdt.b
                .as_ref()
                .map(|s| (s.engine.as_str(), s.class.as_str())),
            Some(("kvm", "privileged"))
        );
        assert!(compare(&a, &a).is_empty());

        let mut out = Vec::new();
        write_differences_md(&mut out, "unicorn", "kvm", &d).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("3 differences."));
        let mut one = Vec::new();
        write_differences_md(&mut one, "unicorn", "kvm", &d[..1]).expect("write");
        let one = String::from_utf8(one).expect("utf8");
        assert!(one.contains("\n1 difference.\n"), "{one}");
        assert!(text.contains("## 32 umip=off `sgdt` (SGDT_x)\n\n- differs in: class, privileged"));
        assert!(text
            .contains("- kvm: privileged — privileged: base@cpl0 completed vs base@cpl3 #GP(0x0)"));
        assert!(text.contains("- kvm: no record"));
    }

    #[test]
    fn full_depth_compares_every_field_a_record_has() {
        // Every field a record serializes (the verdict's flattened in) is
        // compared, or named as not compared: a new field cannot slip by.
        let r = record("sgdt", Class::SensitiveUnprivileged, false);
        let json = serde_json::to_value(&r).expect("serialize");
        let mut names: Vec<String> = Vec::new();
        for (k, v) in json.as_object().expect("object") {
            if k == "verdict" {
                names.extend(v.as_object().expect("verdict").keys().cloned());
            } else {
                names.push(k.clone());
            }
        }
        names.sort();
        let mut covered: Vec<String> = FIELDS
            .iter()
            .map(|f| f.name.to_string())
            .chain(NOT_COMPARED.iter().map(|n| n.to_string()))
            .collect();
        covered.sort();
        assert_eq!(names, covered);
    }

    #[test]
    fn full_depth_sees_evidence_and_states_not_run_that_verdict_depth_does_not() {
        let a = record("sgdt", Class::SensitiveUnprivileged, false);
        let mut b = a.clone();
        b.verdict.evidence[0].detail = "data[0x2..] 00 vs 20".into();
        b.verdict.not_run = vec!["ring1@cpl0".into()];
        b.engine_version = "fake 2".into();
        let (one_a, one_b) = (std::slice::from_ref(&a), std::slice::from_ref(&b));
        assert!(compare(one_a, one_b).is_empty());
        let d = compare_at(one_a, one_b, Depth::Full);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].fields, ["evidence", "not_run"]);
        assert_eq!(
            d[0].changes[0].to_string(),
            "evidence: location: base@cpl3 completed vs tables-moved@cpl3 completed (data[0x2..] 00 vs 10) → location: base@cpl3 completed vs tables-moved@cpl3 completed (data[0x2..] 00 vs 20)"
        );
        assert_eq!(d[0].changes[1].to_string(), "not_run: (none) → ring1@cpl0");
        // A class change is named with both values.
        let c = record("sgdt", Class::Privileged, false);
        let d = compare_at(&[a], &[c], Depth::Full);
        assert_eq!(
            d[0].changes[0].to_string(),
            "class: sensitive-unprivileged → privileged"
        );
        assert_eq!(d[0].changes[1].to_string(), "privileged: false → true");
    }
}
