//! The P&G violators of a scan, for the CLI.

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
}
