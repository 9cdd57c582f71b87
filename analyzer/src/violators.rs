//! The P&G violators of a scan, for the CLI: grouped by mnemonic (where
//! and why), or one line per form.

use crate::classify::EvidenceKind;
use crate::mode::Mode;
use crate::record::Record;

/// Records that violate P&G (sensitive, not privileged, not always trapping),
/// optionally only of one mode and configuration, in record order.
pub fn violators<'r>(
    records: &'r [Record],
    mode: Option<Mode>,
    config: Option<&str>,
) -> Vec<&'r Record> {
    records
        .iter()
        .filter(|r| r.verdict.violates_pg)
        .filter(|r| mode.is_none_or(|m| r.mode == m))
        .filter(|r| config.is_none_or(|c| r.config == c))
        .collect()
}

/// One line per violator: mode, configuration, form, sensitivity kinds, first evidence.
pub fn render_violators(records: &[&Record]) -> String {
    let mut s = String::new();
    for r in records {
        let evidence = r
            .verdict
            .evidence
            .iter()
            .find(|e| e.kind != EvidenceKind::NotPrivileged)
            .map(|e| e.to_string());
        s.push_str(&format!(
            "{:<4} {:<10} {:<32} {:<40} {}\n",
            r.mode.name(),
            r.config,
            r.form,
            r.sensitivity_kinds().join(","),
            evidence.unwrap_or_default()
        ));
    }
    s
}

/// One mnemonic's violations: where (the modes per configuration) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub mnemonic: String,
    /// Distinct encodings (forms) that violate.
    pub forms: usize,
    /// Per configuration (in record order), the modes where it violates.
    pub places: Vec<(String, Vec<Mode>)>,
    /// The sensitivity kinds of all its violating records, each once, in
    /// the order first seen (`control(descriptor cache)`, `location`, ...).
    pub why: Vec<String>,
}

/// The violators grouped by mnemonic, in alphabetical order.
pub fn group_by_mnemonic(records: &[&Record]) -> Vec<Group> {
    let mut groups: std::collections::BTreeMap<&str, (Group, Vec<&str>)> = Default::default();
    for r in records {
        let (g, forms) = groups.entry(r.mnemonic.as_str()).or_insert_with(|| {
            (
                Group {
                    mnemonic: r.mnemonic.clone(),
                    forms: 0,
                    places: Vec::new(),
                    why: Vec::new(),
                },
                Vec::new(),
            )
        });
        if !forms.contains(&r.form.as_str()) {
            forms.push(&r.form);
        }
        g.forms = forms.len();
        match g.places.iter_mut().find(|(c, _)| *c == r.config) {
            Some((_, modes)) if !modes.contains(&r.mode) => modes.push(r.mode),
            Some(_) => {}
            None => g.places.push((r.config.clone(), vec![r.mode])),
        }
        for k in r.sensitivity_kinds() {
            if !g.why.contains(&k) {
                g.why.push(k);
            }
        }
    }
    groups
        .into_values()
        .map(|(mut g, _)| {
            for (_, modes) in &mut g.places {
                modes.sort();
            }
            g
        })
        .collect()
}

/// Where a group violates, in words: `16,32,64 in umip=off, umip=on`, or
/// per set of modes (`16,32,64 in umip=off; 16 in umip=on`). A
/// configuration the engine does not model is marked `*`.
fn places_text(g: &Group, unmodeled: &dyn Fn(&str) -> bool) -> String {
    let mut sets: Vec<(&Vec<Mode>, Vec<String>)> = Vec::new();
    for (config, modes) in &g.places {
        let name = if unmodeled(config) {
            format!("{config}*")
        } else {
            config.clone()
        };
        match sets.iter_mut().find(|(m, _)| *m == modes) {
            Some((_, configs)) => configs.push(name),
            None => sets.push((modes, vec![name])),
        }
    }
    sets.iter()
        .map(|(modes, configs)| {
            let modes: Vec<&str> = modes.iter().map(|m| m.name()).collect();
            format!("{} in {}", modes.join(","), configs.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One line per mnemonic (the forms that violate, where, why), a total,
/// and a footnote for configurations the engine does not model.
pub fn render_groups(records: &[&Record]) -> String {
    let groups = group_by_mnemonic(records);
    let engine = records.first().map(|r| r.engine.as_str()).unwrap_or("");
    let unmodeled = |c: &str| crate::engine::unmodeled(engine, c).is_some();
    let rows: Vec<[String; 4]> = groups
        .iter()
        .map(|g| {
            [
                g.mnemonic.clone(),
                g.forms.to_string(),
                places_text(g, &unmodeled),
                g.why.join(", "),
            ]
        })
        .collect();
    let head = [
        "mnemonic",
        "forms",
        "where (modes in configurations)",
        "why",
    ];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].len())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    // Padded by hand: a format width may not pass 65,535, and a report's
    // names may be longer. As `{:<w$}` did, a cell is padded to the width
    // by its characters (the widths are the cells' bytes).
    let line = |s: &mut String, c: [&str; 4]| {
        let pad = |s: &mut String, w: usize, cell: &str| {
            s.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(cell.chars().count()),
            ));
        };
        s.push_str(c[0]);
        pad(s, w0, c[0]);
        s.push_str("  ");
        pad(s, w1, c[1]);
        s.push_str(c[1]);
        s.push_str("  ");
        s.push_str(c[2]);
        pad(s, w2, c[2]);
        s.push_str("  ");
        s.push_str(c[3]);
        s.push('\n');
    };
    let mut s = String::new();
    line(&mut s, head);
    for r in &rows {
        line(&mut s, [&r[0], &r[1], &r[2], &r[3]]);
    }
    let forms: usize = groups.iter().map(|g| g.forms).sum();
    s.push_str(&format!(
        "{} {}, {} {} ({} {}) break P&G theorem 1; --forms: one line per form\n",
        groups.len(),
        crate::report::plural(groups.len(), "mnemonic", "mnemonics"),
        forms,
        crate::report::plural(forms, "form", "forms"),
        records.len(),
        crate::report::plural(records.len(), "record", "records"),
    ));
    let mut notes: Vec<String> = Vec::new();
    for g in &groups {
        for (c, _) in &g.places {
            if let Some(why) = crate::engine::unmodeled(engine, c) {
                let note =
                    format!("* {c}: {why} (what {engine} did, not a measurement of that setting)");
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
    }
    for n in notes {
        s.push_str(&n);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Class;
    use crate::record::tests::record;

    #[test]
    fn filters_and_renders() {
        let mut on = record("sidt", Class::SensitiveUnprivileged, false);
        on.config = "umip=on".into();
        let records = vec![
            record("sgdt", Class::SensitiveUnprivileged, false),
            record("hlt", Class::Privileged, true),
            on,
        ];
        assert_eq!(violators(&records, None, None).len(), 2);
        let v = violators(&records, Some(Mode::Prot32), Some("umip=off"));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].mnemonic, "sgdt");
        assert!(violators(&records, Some(Mode::Long64), None).is_empty());
        let text = render_violators(&v);
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("32   umip=off   sgdt "));
        assert!(text.contains("location,user"));
        assert!(text.trim_end().ends_with("(data[0x2..] 00 vs 10)"));
    }

    #[test]
    fn names_longer_than_any_format_width_are_laid_out() {
        let long = "m".repeat(70_000);
        let records = [
            record(&long, Class::SensitiveUnprivileged, false),
            record("sgdt", Class::SensitiveUnprivileged, false),
        ];
        let refs: Vec<&Record> = records.iter().collect();
        let text = render_groups(&refs);
        let lines: Vec<&str> = text.lines().collect();
        // The forms column ends at the same place on every row: after the
        // longest name, two spaces, and "forms" (the widest cell).
        let forms = |l: &str| l[70_002..70_007].to_string();
        assert_eq!(forms(lines[0]), "forms");
        assert_eq!(forms(lines[1]), "    1");
        assert_eq!(forms(lines[2]), "    1");
        assert!(lines[1..3].iter().any(|l| l.starts_with(&long)));
        // A name of other characters than ASCII is laid out as the format
        // width laid it out (by characters, to a width of bytes).
        let records = [
            record("sgdtéé", Class::SensitiveUnprivileged, false),
            record("sidt", Class::SensitiveUnprivileged, false),
        ];
        let refs: Vec<&Record> = records.iter().collect();
        let text = render_groups(&refs);
        let w0 = "sgdtéé".len();
        for l in text.lines().take(3) {
            let name = l.split("  ").next().unwrap_or("");
            let want = format!("{name:<w0$}  ");
            assert!(l.starts_with(&want), "{l:?}");
        }
    }

    #[test]
    fn groups_by_mnemonic_with_where_and_why() {
        let mut sgdt64 = record("sgdt", Class::SensitiveUnprivileged, false);
        sgdt64.mode = Mode::Long64;
        let mut sgdt_on = record("sgdt", Class::SensitiveUnprivileged, false);
        sgdt_on.config = "umip=on".into();
        let mut sgdt_other = record("sgdt", Class::SensitiveUnprivileged, false);
        sgdt_other.form = "o16 sgdt [8100h]".into();
        let pushf = record("pushf", Class::SensitiveUnprivileged, false);
        let mut records = vec![sgdt64, sgdt_other, pushf, sgdt_on];
        for r in &mut records {
            r.engine = "unicorn".into();
        }
        let all: Vec<&Record> = records.iter().collect();
        let groups = group_by_mnemonic(&all);
        assert_eq!(groups.len(), 2);
        let g = &groups[1];
        assert_eq!(g.mnemonic, "sgdt");
        assert_eq!(g.forms, 2);
        assert_eq!(
            g.places,
            vec![
                ("umip=off".to_string(), vec![Mode::Prot32, Mode::Long64]),
                ("umip=on".to_string(), vec![Mode::Prot32]),
            ]
        );
        assert_eq!(g.why, vec!["location".to_string(), "user".to_string()]);
        let text = render_groups(&all);
        let line = text
            .lines()
            .find(|l| l.starts_with("sgdt"))
            .expect("sgdt line");
        assert!(line.contains("32,64 in umip=off; 32 in umip=on*"), "{line}");
        assert!(line.trim_end().ends_with("location, user"), "{line}");
        assert!(text.contains("2 mnemonics, 3 forms (4 records)"), "{text}");
        let one = render_groups(&all[..1]);
        assert!(
            one.contains("\n1 mnemonic, 1 form (1 record) break"),
            "{one}"
        );
        assert!(
            text.contains("* umip=on: not modeled: Unicorn has no CR4.UMIP"),
            "{text}"
        );
    }
}
