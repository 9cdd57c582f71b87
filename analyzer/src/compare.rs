//! Engine comparison: the same scan on two engines (or two reports), and
//! every record where the verdicts disagree, with both sides' evidence.

use crate::record::Record;
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
}

type Key = (crate::mode::Mode, String, String, String);

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

/// The verdict fields compared, by name.
fn fields(r: &Record) -> [(&'static str, String); 12] {
    let v = &r.verdict;
    [
        ("class", v.class.name().to_string()),
        ("privileged", v.privileged.to_string()),
        ("control_sensitive", v.control_sensitive.to_string()),
        ("behavior_sensitive", v.behavior_sensitive.to_string()),
        ("location_sensitive", v.location_sensitive.to_string()),
        ("mode_sensitive", v.mode_sensitive.to_string()),
        ("user_sensitive", v.user_sensitive.to_string()),
        ("violates_pg", v.violates_pg.to_string()),
        ("violates_hybrid", v.violates_hybrid.to_string()),
        ("nondeterministic", v.nondeterministic.to_string()),
        ("always_traps", v.always_traps.to_string()),
        ("unsupported", v.unsupported.to_string()),
    ]
}

/// Matches records by (mode, configuration, code, form) and lists the
/// differences, sorted by that key.
pub fn compare(a: &[Record], b: &[Record]) -> Vec<Difference> {
    let mut map: BTreeMap<Key, (Option<&Record>, Option<&Record>)> = BTreeMap::new();
    for r in a {
        map.entry(key(r)).or_default().0.get_or_insert(r);
    }
    for r in b {
        map.entry(key(r)).or_default().1.get_or_insert(r);
    }
    let mut out = Vec::new();
    for ((mode, config, code, form), (ra, rb)) in map {
        let differing: Vec<String> = match (ra, rb) {
            (Some(x), Some(y)) => fields(x)
                .into_iter()
                .zip(fields(y))
                .filter(|(p, q)| p.1 != q.1)
                .map(|(p, _)| p.0.to_string())
                .collect(),
            (Some(_), None) => vec!["missing in b".into()],
            (None, Some(_)) => vec!["missing in a".into()],
            (None, None) => Vec::new(),
        };
        if !differing.is_empty() {
            out.push(Difference {
                mode: mode.name().into(),
                config,
                code,
                form,
                fields: differing,
                a: ra.map(side),
                b: rb.map(side),
            });
        }
    }
    out
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
    writeln!(w, "{} differences.\n", diffs.len())?;
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
        assert!(text.contains("## 32 umip=off `sgdt` (SGDT_x)\n\n- differs in: class, privileged"));
        assert!(text
            .contains("- kvm: privileged — privileged: base@cpl0 completed vs base@cpl3 #GP(0x0)"));
        assert!(text.contains("- kvm: no record"));
    }
}
