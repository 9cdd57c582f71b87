//! Markdown for people: the theorem verdicts, the violators grouped the way
//! Robin & Irvine grouped them, the disagreements with iced's metadata, counts.

use super::Report;
use crate::classify::Class;
use crate::record::Record;
use crate::truth;
use std::io::{self, Write};

/// Robin & Irvine's two groups of sensitive-but-unprivileged instructions, and the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    SensitiveRegister,
    ProtectionSystem,
    Other,
}

impl Group {
    pub const ALL: [Group; 3] = [
        Group::SensitiveRegister,
        Group::ProtectionSystem,
        Group::Other,
    ];
    pub fn title(self) -> &'static str {
        match self {
            Group::SensitiveRegister => "Sensitive register instructions",
            Group::ProtectionSystem => "Protection system references",
            Group::Other => "Other",
        }
    }
}

const SEGS: [&str; 6] = ["cs", "ds", "es", "ss", "fs", "gs"];

/// Whether the form names a segment register as a whole operand (`push cs`, `mov ds,ax`).
fn has_segment_operand(form: &str) -> bool {
    form.split([' ', ','])
        .skip(1)
        .any(|t| SEGS.contains(&t.trim().to_ascii_lowercase().as_str()))
}

/// The Robin & Irvine group of a record, by mnemonic (and form or code where
/// the mnemonic alone does not tell: segment operands, far branches).
pub fn group_of(r: &Record) -> Group {
    let m = r.mnemonic.to_ascii_lowercase();
    let far = (r.code.contains("_ptr16") || r.code.contains("_m16")) || r.form.contains("far");
    match m.as_str() {
        "sgdt" | "sidt" | "sldt" | "smsw" | "pushf" | "pushfd" | "pushfq" | "popf" | "popfd"
        | "popfq" => Group::SensitiveRegister,
        "lar" | "lsl" | "verr" | "verw" | "str" | "retf" | "int" | "int1" | "int3" | "into" => {
            Group::ProtectionSystem
        }
        "push" | "pop" | "mov" if has_segment_operand(&r.form) => Group::ProtectionSystem,
        "call" | "jmp" if far => Group::ProtectionSystem,
        _ => Group::Other,
    }
}

pub(crate) fn first_sensitivity_evidence(r: &Record) -> String {
    r.verdict
        .evidence
        .iter()
        .find(|e| e.kind.is_sensitivity())
        .map(|e| e.to_string())
        .unwrap_or_default()
}

/// Writes the Markdown report.
pub fn write_md<W: Write>(mut w: W, report: &Report) -> io::Result<()> {
    let h = &report.header;
    writeln!(w, "# popek report: {}\n", h.engine)?;
    writeln!(w, "- tool: {} {}", h.tool, h.tool_version)?;
    writeln!(w, "- engine: {} ({})", h.engine, h.engine_version)?;
    writeln!(w, "- host CPU: {}", h.host_cpu)?;
    writeln!(w, "- modes: {}", h.modes.join(", "))?;
    writeln!(w, "- configurations: {}", h.configurations.join(", "))?;
    writeln!(w, "- records: {}\n", report.records.len())?;

    writeln!(w, "## Theorems\n")?;
    writeln!(
        w,
        "| mode | configuration | theorem 1 (VMM) | theorem 3 (hybrid VMM) |"
    )?;
    writeln!(w, "|---|---|---|---|")?;
    let judged_or = |t: &super::Theorems, text: String| match t.not_judged() {
        Some(why) => format!("not judged ({why})"),
        None => text,
    };
    let holds = |holds: bool, n: usize, unjudged: usize| {
        let mut s = if holds {
            "holds".to_string()
        } else {
            format!("fails ({n} violators)")
        };
        if unjudged > 0 {
            s.push_str(&format!(
                ", {unjudged} not judged (engine errors, deviations or states not run)"
            ));
        }
        s
    };
    for t in &h.theorems {
        writeln!(
            w,
            "| {} | {} | {} | {} |",
            t.mode,
            t.config,
            judged_or(
                t,
                holds(t.theorem1_vmm.holds, t.theorem1_vmm.violators, t.unjudged)
            ),
            judged_or(
                t,
                holds(
                    t.theorem3_hybrid.holds,
                    t.theorem3_hybrid.violators,
                    t.unjudged
                )
            )
        )?;
    }

    writeln!(w, "\n## Violators (sensitive, not privileged)\n")?;
    let mut any = false;
    for t in &h.theorems {
        let v: Vec<&Record> = report
            .records
            .iter()
            .filter(|r| r.mode.name() == t.mode && r.config == t.config && r.verdict.violates_pg)
            .collect();
        if v.is_empty() {
            continue;
        }
        any = true;
        writeln!(
            w,
            "### mode {}, {} ({} violators)\n",
            t.mode,
            t.config,
            v.len()
        )?;
        for g in Group::ALL {
            let in_group: Vec<&&Record> = v.iter().filter(|r| group_of(r) == g).collect();
            if in_group.is_empty() {
                continue;
            }
            writeln!(w, "#### {}\n", g.title())?;
            for r in in_group {
                writeln!(
                    w,
                    "- `{}` ({}): {} — {}",
                    r.form,
                    r.code,
                    r.sensitivity_kinds().join(", "),
                    first_sensitivity_evidence(r)
                )?;
            }
            writeln!(w)?;
        }
    }
    if !any {
        writeln!(w, "None.\n")?;
    }

    writeln!(w, "## Disagreements with iced's documented metadata\n")?;
    let mut any = false;
    for r in &report.records {
        if let Some(d) = &r.doc_disagreement {
            any = true;
            writeln!(
                w,
                "- {} {} `{}` ({}), {}: {}",
                r.mode.name(),
                r.config,
                r.form,
                r.code,
                r.verdict.class,
                d
            )?;
        }
    }
    if !any {
        writeln!(w, "None.")?;
    }

    write_deviations(&mut w, report)?;

    writeln!(w, "\n## Counts per class\n")?;
    let classes: Vec<&str> = Class::ALL.iter().map(|c| c.name()).collect();
    writeln!(w, "| mode | configuration | {} |", classes.join(" | "))?;
    writeln!(w, "|---|---|{}", "---|".repeat(classes.len()))?;
    for c in &h.counts {
        let n: Vec<String> = classes
            .iter()
            .map(|k| c.classes.get(*k).copied().unwrap_or(0).to_string())
            .collect();
        writeln!(w, "| {} | {} | {} |", c.mode, c.config, n.join(" | "))?;
    }
    w.flush()
}

/// How a record deviates, for counting: unexpected beats known beats measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeviationKind {
    Unexpected,
    Known,
    DifferentInstruction,
}

fn deviation_kind(d: &str) -> DeviationKind {
    if d.contains(truth::UNEXPECTED) {
        DeviationKind::Unexpected
    } else if d.contains(truth::DISAGREES) {
        DeviationKind::Known
    } else {
        DeviationKind::DifferentInstruction
    }
}

/// "Engine disagreements with the documentation": per (mode, configuration),
/// every record with a deviation, and how many are known engine gaps, how
/// many unexpected, how many executed a different instruction.
fn write_deviations<W: Write>(w: &mut W, report: &Report) -> io::Result<()> {
    writeln!(w, "\n## Engine disagreements with the documentation\n")?;
    writeln!(
        w,
        "Measured verdicts beside the documented facts (`{}`): a known deviation is an engine gap the table names (a finding about the engine, not about the instruction); an unexpected one is a bug in popek or a new finding. An engine that executed a different instruction (a non-branch, or an interrupt instruction, completing off the sentinel; a segment load leaving another selector than every reading of its operand gives; an instruction completing although the engine's own CPUID or XCR0 says it must #UD) has class `engine-deviation` and counts for neither theorem.\n",
        truth::DEFAULT_PATH
    )?;
    let mut any = false;
    for t in &report.header.theorems {
        let v: Vec<(&Record, &str)> = report
            .records
            .iter()
            .filter(|r| r.mode.name() == t.mode && r.config == t.config)
            .filter_map(|r| r.deviation.as_deref().map(|d| (r, d)))
            .collect();
        if v.is_empty() {
            continue;
        }
        any = true;
        let count = |k| v.iter().filter(|(_, d)| deviation_kind(d) == k).count();
        writeln!(
            w,
            "### mode {}, {}: {} known, {} unexpected, {} executed a different instruction\n",
            t.mode,
            t.config,
            count(DeviationKind::Known),
            count(DeviationKind::Unexpected),
            count(DeviationKind::DifferentInstruction)
        )?;
        for (r, d) in v {
            writeln!(w, "- `{}` ({}), {}: {}", r.form, r.code, r.verdict.class, d)?;
        }
        writeln!(w)?;
    }
    if !any {
        writeln!(w, "None.")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::record;
    use crate::report::tests::sample;

    #[test]
    fn golden_markdown() {
        let mut out = Vec::new();
        write_md(&mut out, &sample()).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text, include_str!("testdata/sample.md"));
    }

    #[test]
    fn groups_follow_robin_and_irvine() {
        let g = |m: &str, form: &str, code: &str| {
            let mut r = record(m, Class::SensitiveUnprivileged, false);
            r.form = form.into();
            r.code = code.into();
            group_of(&r)
        };
        assert_eq!(
            g("sgdt", "sgdt [8100h]", "Sgdt_m1632"),
            Group::SensitiveRegister
        );
        assert_eq!(g("popfd", "popfd", "Popfd"), Group::SensitiveRegister);
        assert_eq!(g("push", "push cs", "Pushd_CS"), Group::ProtectionSystem);
        assert_eq!(g("push", "push eax", "Push_r32"), Group::Other);
        assert_eq!(
            g("mov", "mov ds,ax", "Mov_Sreg_rm16"),
            Group::ProtectionSystem
        );
        assert_eq!(g("mov", "mov eax,fs:[8100h]", "Mov_r32_rm32"), Group::Other);
        assert_eq!(
            g("call", "call 18h:7800h", "Call_ptr1632"),
            Group::ProtectionSystem
        );
        assert_eq!(g("call", "call eax", "Call_rm32"), Group::Other);
        assert_eq!(g("retf", "retf", "Retfd"), Group::ProtectionSystem);
        assert_eq!(g("str", "str ax", "Str_r32m16"), Group::ProtectionSystem);
    }

    #[test]
    fn markdown_names_theorems_violators_and_disagreements() {
        let mut out = Vec::new();
        write_md(&mut out, &sample()).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains("| 32 | umip=off | fails (1 violators) | fails (1 violators) |"),
            "{text}"
        );
        assert!(text.contains("| 32 | umip=on | holds | holds |"));
        assert!(text.contains("#### Sensitive register instructions\n\n- `sgdt` (SGDT_x): location, user — location: base@cpl3"));
        assert!(text.contains("- 32 umip=on `sgdt` (SGDT_x), privileged: privileged here"));
        assert!(text.contains("| 32 | umip=off | 0 | 0 | 0 | 0 | 0 | 1 | 1 | 1 | 0 |"));
        assert!(text.contains("## Engine disagreements with the documentation\n\nMeasured"));
    }

    #[test]
    fn deviations_are_listed_and_counted_per_group() {
        let mut known = record("sgdt", Class::SensitiveUnprivileged, false);
        known.config = "umip=on".into();
        known.deviation = Some(format!(
            "{}: expected privileged, measured sensitive-unprivileged; known fake gap: no CR4.UMIP",
            truth::DISAGREES
        ));
        let mut unexpected = record("hlt", Class::Innocuous, true);
        unexpected.config = "umip=on".into();
        unexpected.deviation = Some(format!(
            "{}: expected privileged, measured innocuous; {}",
            truth::DISAGREES,
            truth::UNEXPECTED
        ));
        let mut other = record("blcfill", Class::EngineDeviation, false);
        other.config = "umip=on".into();
        other.deviation = Some("engine executed a different instruction (x)".into());
        let rep = Report::with_host(
            "fake",
            "fake 1",
            "Test CPU",
            vec![
                record("add", Class::Innocuous, false),
                known,
                unexpected,
                other,
            ],
        );
        let mut out = Vec::new();
        write_md(&mut out, &rep).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("### mode 32, umip=on: 1 known, 1 unexpected, 1 executed a different instruction\n\n- `sgdt` (SGDT_x), sensitive-unprivileged: engine disagrees"), "{text}");
        assert!(!text.contains("### mode 32, umip=off: "), "{text}");
        assert!(text.contains("- `blcfill` (BLCFILL_x), engine-deviation: engine executed"));
    }
}
