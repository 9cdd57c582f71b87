//! One line of a report: the verdict on one encoding in one mode and
//! configuration on one engine, beside iced's documented metadata.

use crate::catalog::{DocMeta, Entry};
use crate::classify::{Class, Verdict};
use crate::mode::{Config, Mode};
use crate::observe::hex;
use serde::{Deserialize, Serialize};

/// The verdict on one encoding in one configuration, as reports carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub engine: String,
    pub engine_version: String,
    /// `real`, `16`, `32`, `64`.
    #[serde(with = "mode_name")]
    pub mode: Mode,
    /// Configuration name (`umip=off`, ...).
    pub config: String,
    /// iced `Code` name.
    pub code: String,
    pub mnemonic: String,
    pub form: String,
    /// The encoding, lower-case hex.
    pub bytes: String,
    pub verdict: Verdict,
    pub doc: DocMeta,
    /// iced documents it as CPL 0 only (`is_privileged` or `must_be_cpl0`).
    pub documented_privileged: bool,
    /// Where the measured verdict and iced's metadata disagree.
    pub doc_disagreement: Option<String>,
    /// What the table of documented facts (`corpus/expected-verdicts.tsv`)
    /// says about it, e.g. `privileged (Intel SDM vol. 3 2.8)`; set by
    /// [`crate::truth::annotate`].
    #[serde(default)]
    pub documented: Option<String>,
    /// Where the engine deviates: it executed a different instruction
    /// (measured, see [`measured_deviation`]), or its verdict disagrees with
    /// the documented facts (set by [`crate::truth::annotate`]).
    #[serde(default)]
    pub deviation: Option<String>,
}

impl Record {
    /// The record of `entry` in `config` with the final verdict `verdict`
    /// ([`crate::classify::verdict`]); it packages, it changes nothing.
    pub fn new(
        engine: &str,
        engine_version: &str,
        entry: &Entry,
        config: &Config,
        verdict: Verdict,
    ) -> Record {
        let documented_privileged = entry.doc.is_privileged || entry.doc.must_be_cpl0;
        let doc_disagreement = doc_disagreement(entry.mode, &entry.doc, &verdict);
        let deviation = measured_deviation(&verdict);
        Record {
            engine: engine.into(),
            engine_version: engine_version.into(),
            mode: entry.mode,
            config: config.name(),
            code: entry.code.clone(),
            mnemonic: entry.mnemonic.clone(),
            form: entry.form.clone(),
            bytes: hex(&entry.bytes),
            verdict,
            doc: entry.doc.clone(),
            documented_privileged,
            doc_disagreement,
            documented: None,
            deviation,
        }
    }

    /// The sensitivity kinds of the verdict: `control(system flags)`, `location`, `mode`, `user`.
    pub fn sensitivity_kinds(&self) -> Vec<String> {
        let v = &self.verdict;
        let mut k = Vec::new();
        if v.control_sensitive {
            let parts: Vec<&str> = v.changed.iter().map(|p| p.name()).collect();
            k.push(format!("control({})", parts.join(", ")));
        }
        if v.location_sensitive {
            k.push("location".into());
        }
        if v.mode_sensitive {
            k.push("mode".into());
        }
        if v.user_sensitive {
            k.push("user".into());
        }
        k
    }

    /// All evidence items joined with `; `.
    pub fn evidence_text(&self) -> String {
        self.verdict
            .evidence
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The deviation the runs show by themselves, without any table: the engine
/// executed a different instruction (class `engine-deviation`), or did what
/// [`crate::deviation::flag`] found (a load of another selector, a completion
/// its own CPUID or XCR0 forbids).
pub fn measured_deviation(v: &Verdict) -> Option<String> {
    if v.class != Class::EngineDeviation {
        return None;
    }
    if let Some(why) = crate::deviation::reason(v) {
        return Some(why.to_string());
    }
    let at = v.off_sentinel.as_deref().unwrap_or("?");
    Some(format!(
        "engine executed a different instruction ({at} instead of the sentinel right after it)"
    ))
}

/// Where the measured verdict differs from iced's documented metadata, or
/// `None`. Engine errors are not compared, nor is privilege in real mode
/// (no CPL 3 there, so nothing documented as CPL 0 only can trap for it).
pub fn doc_disagreement(mode: Mode, doc: &DocMeta, v: &Verdict) -> Option<String> {
    if v.unjudged() {
        return None;
    }
    let documented = doc.is_privileged || doc.must_be_cpl0;
    let mut out = Vec::new();
    if v.privileged && !documented {
        if doc.may_require_cpl0 || doc.is_input_output {
            // IOPL- or CR4-dependent privilege that iced marks as "may require CPL 0".
        } else {
            out.push(
                "privileged here, but iced does not document it as CPL 0 only (a configuration setting such as UMIP, TSD or IOPL makes it trap)"
                    .to_string(),
            );
        }
    }
    if documented && !v.privileged && mode.is_protected() {
        out.push(format!(
            "iced documents it as CPL 0 only, but it is not privileged here (class {})",
            v.class
        ));
    }
    if doc.intel_vm_exit && matches!(v.class, Class::Innocuous | Class::Nondeterministic) {
        out.push(format!(
            "VT-x exits on it unconditionally (intel_vm_exit), yet it is {} by P&G",
            v.class
        ));
    }
    if out.is_empty() {
        None
    } else {
        Some(out.join("; "))
    }
}

/// Serializes a [`Mode`] as its report name (`real`, `16`, `32`, `64`).
pub mod mode_name {
    use crate::mode::Mode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &Mode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(mode.name())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::classify::{Evidence, EvidenceKind};
    use crate::machine::StateLabel;
    use crate::observe::Side;

    /// A verdict of the given class with the flags that class implies.
    pub(crate) fn verdict(class: Class) -> Verdict {
        let label = |v: &str, side| StateLabel {
            variant: v.into(),
            side,
        };
        let (privileged, sensitive) = match class {
            Class::Privileged => (true, false),
            Class::SensitiveUnprivileged => (false, true),
            _ => (false, false),
        };
        let evidence = match class {
            Class::Privileged => vec![Evidence {
                kind: EvidenceKind::Privileged,
                a: label("base", Side::Supervisor),
                b: Some(label("base", Side::User)),
                outcome_a: "completed".into(),
                outcome_b: Some("#GP(0x0)".into()),
                detail: String::new(),
            }],
            Class::SensitiveUnprivileged => vec![Evidence {
                kind: EvidenceKind::Location,
                a: label("base", Side::User),
                b: Some(label("tables-moved", Side::User)),
                outcome_a: "completed".into(),
                outcome_b: Some("completed".into()),
                detail: "data[0x2..] 00 vs 10".into(),
            }],
            _ => Vec::new(),
        };
        Verdict {
            class,
            privileged,
            control_sensitive: false,
            behavior_sensitive: sensitive,
            location_sensitive: sensitive,
            mode_sensitive: false,
            user_sensitive: sensitive,
            violates_pg: sensitive,
            violates_hybrid: sensitive,
            nondeterministic: class == Class::Nondeterministic,
            always_traps: matches!(class, Class::AlwaysTraps | Class::Unsupported),
            unsupported: class == Class::Unsupported,
            changed: Vec::new(),
            evidence,
            engine_results: Vec::new(),
            runs: 26,
            engine_level_runs: 0,
            notes: Vec::new(),
            off_sentinel: None,
            not_run: Vec::new(),
        }
    }

    /// A record of `mnemonic` in 32-bit mode without UMIP.
    pub(crate) fn record(mnemonic: &str, class: Class, doc_privileged: bool) -> Record {
        let entry = Entry {
            mode: Mode::Prot32,
            code: format!("{}_x", mnemonic.to_ascii_uppercase()),
            mnemonic: mnemonic.into(),
            form: mnemonic.into(),
            bytes: vec![0x0f, 0x01],
            setup: Default::default(),
            doc: DocMeta {
                is_privileged: doc_privileged,
                flow_control: "Next".into(),
                ..Default::default()
            },
        };
        Record::new("fake", "fake 1", &entry, &Config::UMIP_OFF, verdict(class))
    }

    #[test]
    fn disagreements_name_the_contrast() {
        assert_eq!(
            record("hlt", Class::Privileged, true).doc_disagreement,
            None
        );
        let r = record("sgdt", Class::Privileged, false);
        assert!(r
            .doc_disagreement
            .as_deref()
            .is_some_and(|d| d.starts_with("privileged here")));
        let r = record("wrmsr", Class::Innocuous, true);
        assert!(r
            .doc_disagreement
            .as_deref()
            .is_some_and(|d| d.contains("not privileged here (class innocuous)")));
        let doc = DocMeta {
            intel_vm_exit: true,
            ..Default::default()
        };
        assert!(
            doc_disagreement(Mode::Prot32, &doc, &verdict(Class::Innocuous))
                .is_some_and(|d| d.contains("intel_vm_exit"))
        );
        assert_eq!(
            doc_disagreement(
                Mode::Prot32,
                &DocMeta {
                    is_input_output: true,
                    ..Default::default()
                },
                &verdict(Class::Privileged)
            ),
            None
        );
        assert_eq!(
            doc_disagreement(
                Mode::Prot32,
                &DocMeta {
                    is_privileged: true,
                    ..Default::default()
                },
                &verdict(Class::EngineError)
            ),
            None
        );
        let cpl0_only = DocMeta {
            is_privileged: true,
            ..Default::default()
        };
        assert!(doc_disagreement(Mode::Prot16, &cpl0_only, &verdict(Class::Innocuous)).is_some());
        assert_eq!(
            doc_disagreement(Mode::Real, &cpl0_only, &verdict(Class::Innocuous)),
            None,
            "real mode has no CPL 3"
        );
    }

    #[test]
    fn mode_serializes_by_name() {
        let r = record("add", Class::Innocuous, false);
        let json = serde_json::to_value(&r).expect("serialize");
        assert_eq!(json["mode"], "32");
        assert_eq!(json["verdict"]["class"], "innocuous");
        let back: Record = serde_json::from_value(json.clone()).expect("deserialize");
        assert_eq!(back, r);
        // Reports written before the documented facts still read.
        let mut old = json;
        let obj = old.as_object_mut().expect("object");
        obj.remove("documented");
        obj.remove("deviation");
        obj["verdict"]
            .as_object_mut()
            .expect("verdict")
            .remove("off_sentinel");
        let back: Record = serde_json::from_value(old).expect("old report");
        assert_eq!(back, r);
    }
}
