//! JSON: the complete report, to keep and to read back (`popek diff`).

use super::{Report, ReportError, TOOL};
use std::io::{self, Write};
use std::path::Path;

/// Writes the report as JSON: the header pretty-printed, then one record
/// per line, so a full scan stays compact and `git diff` of two reports
/// shows one changed line per changed verdict.
pub fn write_json<W: Write>(mut w: W, report: &Report) -> io::Result<()> {
    w.write_all(b"{\n\"header\": ")?;
    serde_json::to_writer_pretty(&mut w, &report.header).map_err(io::Error::from)?;
    w.write_all(b",\n\"records\": [")?;
    for (i, r) in report.records.iter().enumerate() {
        w.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut w, r).map_err(io::Error::from)?;
    }
    w.write_all(b"\n]\n}\n")?;
    w.flush()
}

/// Reads a report written by [`write_json`].
pub fn read_report(path: &Path) -> Result<Report, ReportError> {
    let text = crate::input::read_text(path, crate::input::MAX_REPORT_BYTES).map_err(|source| {
        ReportError::Read {
            path: path.to_path_buf(),
            source,
        }
    })?;
    parse_report(path, &text)
}

/// A report's header as the first look reads it: whether it is an
/// object, and its `tool` (the last one given; `None` if no string),
/// nothing else kept.
type HeaderPeek = crate::input::Peeked<crate::input::StringOrNot, 0>;

/// Parses report text; `path` only names the source in errors.
pub fn parse_report(path: &Path, text: &str) -> Result<Report, ReportError> {
    let not = |why: String| ReportError::NotAReport {
        path: path.to_path_buf(),
        why,
    };
    // A first look at the header's tool and that the records are a list,
    // which keeps nothing of them nor of the rest of the header (a whole
    // `Value` of a large report took many times the report's size).
    #[derive(serde::Deserialize)]
    struct Peek {
        header: Option<HeaderPeek>,
        records: Option<Vec<serde::de::IgnoredAny>>,
    }
    let syntax = |e: serde_json::Error| ReportError::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    };
    // Nothing popek wrote takes many times its size once read; text made
    // to (millions of one-character strings in a list) would take GBs.
    // Text that is not JSON is said so here, before a parse into the
    // report's types builds what it holds and finds the error at its end.
    match crate::input::check_json_memory(text.as_bytes()) {
        Ok(()) => {}
        Err(crate::input::JsonRefusal::Syntax(e)) => return Err(syntax(e)),
        Err(crate::input::JsonRefusal::Refused(why)) => return Err(not(why)),
    }
    // A struct reads from a JSON array too: a report is an object.
    if !text.trim_start().starts_with('{') {
        return Err(not("not a JSON object".into()));
    }
    let peek: Peek = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            not(format!("line {}, column {}: {e}", e.line(), e.column()))
        } else {
            syntax(e)
        }
    })?;
    use crate::input::{Peeked, StringOrNot};
    match peek.header {
        Some(Peeked::Object(Some(StringOrNot(Some(t))))) if t == TOOL => {}
        Some(Peeked::Object(Some(StringOrNot(Some(other))))) => {
            return Err(not(format!(
                "written by '{}', not {TOOL}",
                crate::input::clip(&other)
            )))
        }
        Some(Peeked::Object(_)) => return Err(not("no header.tool field".into())),
        Some(Peeked::NotObject) | None => return Err(not("no header object".into())),
    }
    if peek.records.is_none() {
        return Err(not("no records array".into()));
    }
    let report: Report = serde_json::from_str(text)
        .map_err(|e| not(format!("line {}, column {}: {e}", e.line(), e.column())))?;
    // Two records of one key would make every comparison ambiguous.
    let mut seen = std::collections::HashSet::new();
    for r in &report.records {
        if !seen.insert((&r.engine, r.mode, &r.config, &r.code, &r.form)) {
            return Err(not(format!(
                "two records of {} mode {} {} {} ({})",
                r.engine, r.mode, r.config, r.code, r.form
            )));
        }
    }
    // As popek writes them: one engine's records, in configurations it
    // knows.
    for r in &report.records {
        if r.engine != report.header.engine {
            return Err(not(format!(
                "a record of engine {} in a report of engine {}",
                crate::input::clip(&r.engine),
                crate::input::clip(&report.header.engine)
            )));
        }
        if let Err(e) = r.config.parse::<crate::mode::Config>() {
            return Err(not(format!(
                "a record of configuration {}: {e}",
                crate::input::clip(&r.config)
            )));
        }
    }
    // The header speaks for the records (`violators --mode` asks it which
    // modes a report holds): each of its modes and configurations named
    // once, and the ones its records hold.
    let modes: Vec<&str> = report.records.iter().map(|r| r.mode.name()).collect();
    let configs: Vec<&str> = report.records.iter().map(|r| r.config.as_str()).collect();
    for (one, many, named, held) in [
        ("mode", "modes", &report.header.modes, modes),
        (
            "configuration",
            "configurations",
            &report.header.configurations,
            configs,
        ),
    ] {
        let mut header = std::collections::BTreeSet::new();
        if let Some(twice) = named.iter().find(|n| !header.insert(n.as_str())) {
            return Err(not(format!(
                "its header names the {one} {} twice",
                crate::input::clip(twice)
            )));
        }
        let held: std::collections::BTreeSet<&str> = held.into_iter().collect();
        if header != held {
            let list = |s: &std::collections::BTreeSet<&str>| {
                s.iter().copied().collect::<Vec<_>>().join(", ")
            };
            return Err(not(format!(
                "its header lists the {many} [{}], its records hold [{}]",
                list(&header),
                list(&held)
            )));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    fn p() -> &'static Path {
        Path::new("r.json")
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        write_json(&mut out, &sample()).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("{\n\"header\": {\n  \"tool\": \"popek\""));
        // One record per line.
        let record_lines = text
            .lines()
            .filter(|l| l.starts_with("{\"engine\""))
            .count();
        assert_eq!(record_lines, sample().records.len());
        assert!(text.contains("\"theorem1_vmm\""));
        assert!(text.contains("\"host_cpu\": \"Test CPU\""));
        assert_eq!(parse_report(p(), &text).expect("parse"), sample());
    }

    #[test]
    fn clear_errors() {
        let e = read_report(Path::new("/nonexistent/popek.json")).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("cannot read report /nonexistent/popek.json"),
            "{e}"
        );
        match parse_report(p(), "{\n  \"header\": [,\n}") {
            Err(ReportError::Parse { line, column, .. }) => assert_eq!((line, column), (2, 14)),
            other => panic!("{other:?}"),
        }
        let e = parse_report(p(), "{\"header\": {\"tool\": \"other\"}, \"records\": []}")
            .expect_err("other tool");
        assert_eq!(
            e.to_string(),
            "r.json is not a popek report: written by 'other', not popek"
        );
        let e = parse_report(p(), "[1, 2]").expect_err("array");
        assert!(matches!(e, ReportError::NotAReport { .. }));
    }

    #[test]
    fn reports_popek_could_not_have_written_are_refused() {
        // A report's parts in an array, or a header as one, are no report.
        let mut out = Vec::new();
        write_json(&mut out, &sample()).expect("write");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        let arr = serde_json::json!([v["header"], v["records"]]).to_string();
        let e = parse_report(p(), &arr).expect_err("array of parts");
        assert!(e.to_string().contains("not a JSON object"), "{e}");
        let mut h = v.clone();
        h["header"] = serde_json::json!(["popek"]);
        let e = parse_report(p(), &h.to_string()).expect_err("header array");
        assert!(e.to_string().contains("no header object"), "{e}");
        let e = parse_report(p(), "{\"header\": {\"tool\": \"popek\"}, \"records\": []}")
            .expect_err("fields");
        assert!(e.to_string().contains("missing field"), "{e}");
        // The first look keeps only the header's tool, whatever else it
        // holds: a tool that is no string is none.
        for (header, said) in [
            (
                r#"{"junk": [{"a": 0}, {"b": [1]}], "tool": {"x": 1}}"#,
                "no header.tool field",
            ),
            (
                r#"{"junk": [{"a": 0}], "tool": "other"}"#,
                "written by 'other'",
            ),
            (r#""popek""#, "no header object"),
        ] {
            let text = format!(r#"{{"header": {header}, "records": []}}"#);
            let e = parse_report(p(), &text).expect_err(header);
            assert!(e.to_string().contains(said), "{header}: {e}");
        }
        // Not JSON at its end: said as a syntax error with where.
        let e = parse_report(
            p(),
            "{\"header\": {\"tool\": \"popek\"}, \"records\": []} x",
        )
        .expect_err("trailing");
        assert!(e.to_string().contains("line 1, column 46"), "{e}");
        // Records of another engine, or of a configuration popek does not
        // know, and a header that names a mode twice.
        for (tamper, said) in [
            (r#""engine":"fake""#, r#""engine":"other""#),
            (r#""config":"umip=off""#, r#""config":"umip=maybe""#),
        ] {
            let mut out = Vec::new();
            write_json(&mut out, &sample()).expect("write");
            let text = String::from_utf8(out)
                .expect("utf8")
                .replacen(tamper, said, 1);
            let e = parse_report(p(), &text).expect_err(said);
            assert!(e.to_string().contains("a record of"), "{e}");
        }
        let mut r = sample();
        r.header.modes.push("32".into());
        let mut out = Vec::new();
        write_json(&mut out, &r).expect("write");
        let e = parse_report(p(), &String::from_utf8(out).expect("utf8")).expect_err("twice");
        assert!(e.to_string().contains("names the mode 32 twice"), "{e}");
        // A header that claims a mode its records do not hold.
        let mut r = sample();
        r.header.modes.push("16".into());
        let mut out = Vec::new();
        write_json(&mut out, &r).expect("write");
        let e = parse_report(p(), &String::from_utf8(out).expect("utf8")).expect_err("header");
        assert!(e.to_string().contains("its header lists the modes"), "{e}");
    }
}
