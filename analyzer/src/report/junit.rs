//! JUnit XML, the test-result format CI systems display (GitLab's
//! `artifacts:reports:junit`, GitHub test-reporter actions, Jenkins): a
//! `<testsuites>` of `<testsuite>`s of `<testcase>`s, each passed, failed
//! (`<failure>`) or skipped (`<skipped>`). Counts are computed from the cases;
//! no timestamps or durations, so the output is deterministic.

use std::io::{self, Write};

/// One `<testsuite>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suite {
    pub name: String,
    pub cases: Vec<Case>,
}

/// One `<testcase>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub classname: String,
    pub name: String,
    pub result: CaseResult,
}

/// How a test case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseResult {
    Passed,
    /// A `<failure message=... type=...>` with `text` as its body.
    Failed {
        message: String,
        kind: String,
        text: String,
    },
    /// A `<skipped message=...>`.
    Skipped {
        message: String,
    },
}

impl Suite {
    fn failures(&self) -> usize {
        self.count(|r| matches!(r, CaseResult::Failed { .. }))
    }
    fn skipped(&self) -> usize {
        self.count(|r| matches!(r, CaseResult::Skipped { .. }))
    }
    fn count(&self, f: impl Fn(&CaseResult) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.result)).count()
    }
}

/// Writes `suites` as one JUnit XML document named `name`.
pub fn write_junit<W: Write>(mut w: W, name: &str, suites: &[Suite]) -> io::Result<()> {
    let tests: usize = suites.iter().map(|s| s.cases.len()).sum();
    let failures: usize = suites.iter().map(Suite::failures).sum();
    let skipped: usize = suites.iter().map(Suite::skipped).sum();
    writeln!(w, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    writeln!(
        w,
        r#"<testsuites name="{}" tests="{tests}" failures="{failures}" errors="0" skipped="{skipped}">"#,
        attr(name)
    )?;
    for s in suites {
        writeln!(
            w,
            r#"  <testsuite name="{}" tests="{}" failures="{}" errors="0" skipped="{}">"#,
            attr(&s.name),
            s.cases.len(),
            s.failures(),
            s.skipped()
        )?;
        for c in &s.cases {
            let head = format!(
                r#"    <testcase classname="{}" name="{}""#,
                attr(&c.classname),
                attr(&c.name)
            );
            match &c.result {
                CaseResult::Passed => writeln!(w, "{head}/>")?,
                CaseResult::Failed {
                    message,
                    kind,
                    text: body,
                } => {
                    writeln!(w, "{head}>")?;
                    writeln!(
                        w,
                        r#"      <failure message="{}" type="{}">{}</failure>"#,
                        attr(message),
                        attr(kind),
                        text(body)
                    )?;
                    writeln!(w, "    </testcase>")?;
                }
                CaseResult::Skipped { message } => {
                    writeln!(w, "{head}>")?;
                    writeln!(w, r#"      <skipped message="{}"/>"#, attr(message))?;
                    writeln!(w, "    </testcase>")?;
                }
            }
        }
        writeln!(w, "  </testsuite>")?;
    }
    writeln!(w, "</testsuites>")?;
    w.flush()
}

/// `s` escaped for a double-quoted attribute value: markup characters as
/// entities, and tab, newline and carriage return as character references
/// (a parser would otherwise turn them into spaces).
pub fn attr(s: &str) -> String {
    escape(s, true)
}

/// `s` escaped for element text.
pub fn text(s: &str) -> String {
    escape(s, false)
}

fn escape(s: &str, in_attr: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if in_attr => out.push_str("&quot;"),
            '\'' if in_attr => out.push_str("&apos;"),
            '\t' if in_attr => out.push_str("&#9;"),
            '\n' if in_attr => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            // XML 1.0 has no way to write these, not even as a character
            // reference: they are shown as Rust writes them (`\u{1}`).
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                out.push_str(&c.escape_unicode().to_string())
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_quotes_and_control_characters_are_escaped() {
        assert_eq!(
            attr(r#"a<b>&"c" 'd'"#),
            "a&lt;b&gt;&amp;&quot;c&quot; &apos;d&apos;"
        );
        assert_eq!(attr("x\ny\tz\r"), "x&#10;y&#9;z&#13;");
        assert_eq!(text("x\ny\tz\r"), "x\ny\tz&#13;");
        assert_eq!(text(r#"<"q">"#), r#"&lt;"q"&gt;"#);
        assert_eq!(attr("nul\u{0}bel\u{7}"), "nul\\u{0}bel\\u{7}");
        assert_eq!(text("\u{fffe}"), "\\u{fffe}");
        assert_eq!(attr("→ é"), "→ é", "other characters stay as they are");
        assert_eq!(
            text("&amp;"),
            "&amp;amp;",
            "entities are not passed through"
        );
    }

    #[test]
    fn counts_and_shape() {
        let suites = [
            Suite {
                name: "unicorn".into(),
                cases: vec![
                    Case {
                        classname: "unicorn.16.umip=off".into(),
                        name: "Add_rm8_r8 (add cl,al)".into(),
                        result: CaseResult::Passed,
                    },
                    Case {
                        classname: "unicorn.16.umip=off".into(),
                        name: "Sgdt_m1632 (sgdt [bx+si])".into(),
                        result: CaseResult::Failed {
                            message: "class: a → b".into(),
                            kind: "drift".into(),
                            text: "class: a → b\n<x>".into(),
                        },
                    },
                    Case {
                        classname: "unicorn.16.umip=on".into(),
                        name: "Str_rm16".into(),
                        result: CaseResult::Skipped {
                            message: "known failure: \"no UMIP\"".into(),
                        },
                    },
                ],
            },
            Suite {
                name: "kvm".into(),
                cases: Vec::new(),
            },
        ];
        let mut out = Vec::new();
        write_junit(&mut out, "popek check", &suites).expect("write");
        let xml = String::from_utf8(out).expect("utf8");
        let expected = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="popek check" tests="3" failures="1" errors="0" skipped="1">
  <testsuite name="unicorn" tests="3" failures="1" errors="0" skipped="1">
    <testcase classname="unicorn.16.umip=off" name="Add_rm8_r8 (add cl,al)"/>
    <testcase classname="unicorn.16.umip=off" name="Sgdt_m1632 (sgdt [bx+si])">
      <failure message="class: a → b" type="drift">class: a → b
&lt;x&gt;</failure>
    </testcase>
    <testcase classname="unicorn.16.umip=on" name="Str_rm16">
      <skipped message="known failure: &quot;no UMIP&quot;"/>
    </testcase>
  </testsuite>
  <testsuite name="kvm" tests="0" failures="0" errors="0" skipped="0">
  </testsuite>
</testsuites>
"#;
        assert_eq!(xml, expected);
    }
}
