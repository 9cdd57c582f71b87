//! CSV: one row per record, for spreadsheets and scripts.

use crate::record::Record;
use std::io::{self, Write};

/// The columns, in order.
pub const COLUMNS: [&str; 25] = [
    "engine",
    "mode",
    "config",
    "code",
    "mnemonic",
    "bytes",
    "class",
    "privileged",
    "control_sensitive",
    "behavior_sensitive",
    "user_sensitive",
    "violates_pg",
    "documented_privileged",
    "evidence",
    "form",
    "location_sensitive",
    "mode_sensitive",
    "nondeterministic",
    "violates_hybrid",
    "changed",
    "doc_disagreement",
    "engine_results",
    "documented",
    "deviation",
    "not_run",
];

/// Writes a header and one row per record.
pub fn write_csv<W: Write>(w: W, records: &[Record]) -> io::Result<()> {
    let mut out = ::csv::Writer::from_writer(w);
    out.write_record(COLUMNS)?;
    let b = |x: bool| if x { "true" } else { "false" }.to_string();
    for r in records {
        let v = &r.verdict;
        out.write_record([
            r.engine.clone(),
            r.mode.name().to_string(),
            r.config.clone(),
            r.code.clone(),
            r.mnemonic.clone(),
            r.bytes.clone(),
            v.class.name().to_string(),
            b(v.privileged),
            b(v.control_sensitive),
            b(v.behavior_sensitive),
            b(v.user_sensitive),
            b(v.violates_pg),
            b(r.documented_privileged),
            r.evidence_text(),
            r.form.clone(),
            b(v.location_sensitive),
            b(v.mode_sensitive),
            b(v.nondeterministic),
            b(v.violates_hybrid),
            v.changed
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join("; "),
            r.doc_disagreement.clone().unwrap_or_default(),
            v.engine_results.join("; "),
            r.documented.clone().unwrap_or_default(),
            r.deviation.clone().unwrap_or_default(),
            v.not_run.join("; "),
        ])?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Class;
    use crate::record::tests::record;

    const GOLDEN: &str = "\
engine,mode,config,code,mnemonic,bytes,class,privileged,control_sensitive,behavior_sensitive,user_sensitive,violates_pg,documented_privileged,evidence,form,location_sensitive,mode_sensitive,nondeterministic,violates_hybrid,changed,doc_disagreement,engine_results,documented,deviation,not_run
fake,32,umip=off,HLT_x,hlt,0f01,privileged,true,false,false,false,false,true,privileged: base@cpl0 completed vs base@cpl3 #GP(0x0),hlt,false,false,false,false,,,,privileged (Intel SDM),,
fake,32,umip=off,SGDT_x,sgdt,0f01,sensitive-unprivileged,false,false,true,true,true,false,location: base@cpl3 completed vs tables-moved@cpl3 completed (data[0x2..] 00 vs 10),sgdt,true,false,false,true,,,,,\"engine disagrees with the documentation: expected privileged, measured sensitive-unprivileged\",
fake,32,umip=off,WRMSR_x,wrmsr,0f01,innocuous,false,false,false,false,false,true,,wrmsr,false,false,false,false,,\"iced documents it as CPL 0 only, but it is not privileged here (class innocuous)\",,,,
";

    #[test]
    fn golden_csv() {
        let mut records = [
            record("hlt", Class::Privileged, true),
            record("sgdt", Class::SensitiveUnprivileged, false),
            record("wrmsr", Class::Innocuous, true),
        ];
        records[0].documented = Some("privileged (Intel SDM)".into());
        records[1].deviation = Some(
            "engine disagrees with the documentation: expected privileged, measured sensitive-unprivileged"
                .into(),
        );
        let mut out = Vec::new();
        write_csv(&mut out, &records).expect("write");
        assert_eq!(String::from_utf8(out).expect("utf8"), GOLDEN);
    }
}
