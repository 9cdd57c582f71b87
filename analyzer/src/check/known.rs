//! Known failures: the drift a check expects, one line each.
//!
//! ```text
//! # engine  mode  config    code        reason
//! unicorn   *     umip=on   Sgdt_m1632  Unicorn has no CR4.UMIP (issue #7)
//! ```
//!
//! Fields are separated by spaces or tabs: the engine (`unicorn`, `kvm`),
//! the mode (`real`, `16`, `32`, `64`), the configuration (`umip=off`,
//! `umip=on:iopl=3`, ...), the instruction (an iced Code name, or a mnemonic
//! for each of its forms; case does not matter), then the reason, which is
//! the rest of the line and may not be empty. The engine, mode and
//! configuration may be `*` (any). `#` starts a comment line; blank lines are
//! skipped. Anything else is an error naming the line.

use super::CheckError;
use crate::engine::EngineKind;
use crate::input::clip;
use crate::mode::{Config, Mode};
use std::path::Path;

/// One expected drift.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownFailure {
    /// 1-based line number in its file.
    pub line: usize,
    /// `None` for `*`.
    pub engine: Option<String>,
    pub mode: Option<Mode>,
    /// The configuration's canonical name, `None` for `*`.
    pub config: Option<String>,
    /// An iced Code name or a mnemonic.
    pub code: String,
    pub reason: String,
}

impl KnownFailure {
    /// Whether this line names the record of `code`/`mnemonic` in that
    /// engine, mode and configuration.
    pub fn matches(
        &self,
        engine: &str,
        mode: Mode,
        config: &str,
        code: &str,
        mnemonic: &str,
    ) -> bool {
        self.engine.as_deref().is_none_or(|e| e == engine)
            && self.mode.is_none_or(|m| m == mode)
            && self.config.as_deref().is_none_or(|c| c == config)
            && (self.code.eq_ignore_ascii_case(code) || self.code.eq_ignore_ascii_case(mnemonic))
    }

    /// The line's selector as written back: `unicorn * umip=on Sgdt_m1632`.
    pub fn selector(&self) -> String {
        format!(
            "{} {} {} {}",
            self.engine.as_deref().unwrap_or("*"),
            self.mode.map(|m| m.name()).unwrap_or("*"),
            self.config.as_deref().unwrap_or("*"),
            self.code
        )
    }
}

/// A known-failures file, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownFailures {
    /// Where it came from, for messages (a path).
    pub source: String,
    pub entries: Vec<KnownFailure>,
}

impl KnownFailures {
    /// Reads and parses a known-failures file (at most
    /// [`crate::input::MAX_TABLE_BYTES`]).
    pub fn load(path: &Path) -> Result<KnownFailures, CheckError> {
        let text =
            crate::input::read_text(path, crate::input::MAX_TABLE_BYTES).map_err(|source| {
                CheckError::ReadKnown {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        KnownFailures::parse(&path.display().to_string(), &text)
    }

    /// Parses the text of a known-failures file; `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<KnownFailures, CheckError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let bad = |why: String| CheckError::KnownFailureLine {
                file: source.to_string(),
                line,
                why,
            };
            let mut rest = t;
            let mut fields = Vec::new();
            for _ in 0..4 {
                match rest.split_once([' ', '\t']) {
                    Some((f, r)) => {
                        fields.push(f);
                        rest = r.trim_start();
                    }
                    None => {
                        fields.push(rest);
                        rest = "";
                        break;
                    }
                }
            }
            let reason = rest.trim();
            if fields.len() < 4 || reason.is_empty() {
                return Err(bad(format!(
                    "expected <engine> <mode> <config> <code> <reason>, found {} field{}",
                    fields.len() + usize::from(!reason.is_empty()),
                    if fields.len() == 1 { "" } else { "s" }
                )));
            }
            let any = |f: &str| f == "*";
            let engine = if any(fields[0]) {
                None
            } else {
                let kind = fields[0]
                    .parse::<EngineKind>()
                    .map_err(|e| bad(e.to_string()))?;
                Some(kind.name().to_string())
            };
            let mode = if any(fields[1]) {
                None
            } else {
                Some(fields[1].parse::<Mode>().map_err(|e| bad(e.to_string()))?)
            };
            let config = if any(fields[2]) {
                None
            } else {
                Some(
                    fields[2]
                        .parse::<Config>()
                        .map_err(|e| bad(e.to_string()))?
                        .name(),
                )
            };
            let code = fields[3];
            if any(code) {
                return Err(bad(
                    "the code must name one instruction (an iced Code name or a mnemonic), not *"
                        .into(),
                ));
            }
            if code.chars().count() > crate::input::MAX_NAME_CHARS {
                return Err(bad(format!("'{}' is no instruction name", clip(code))));
            }
            entries.push(KnownFailure {
                line,
                engine,
                mode,
                config,
                code: code.to_string(),
                reason: reason.to_string(),
            });
        }
        Ok(KnownFailures {
            source: source.to_string(),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_wildcards() {
        let k = KnownFailures::parse(
            "k.txt",
            "# header\n\nunicorn 16 umip=off Sgdt_m1632 the reason, in words\n\
             \t* * umip=on:iopl=0 STR\tno UMIP\n",
        )
        .expect("parses");
        assert_eq!(k.entries.len(), 2);
        let a = &k.entries[0];
        assert_eq!(
            (a.line, a.engine.as_deref(), a.mode, a.config.as_deref()),
            (3, Some("unicorn"), Some(Mode::Prot16), Some("umip=off"))
        );
        assert_eq!(a.reason, "the reason, in words");
        assert!(a.matches("unicorn", Mode::Prot16, "umip=off", "Sgdt_m1632", "sgdt"));
        assert!(!a.matches("unicorn", Mode::Prot32, "umip=off", "Sgdt_m1632", "sgdt"));
        let b = &k.entries[1];
        assert_eq!(b.selector(), "* * umip=on STR");
        assert!(b.matches("kvm", Mode::Long64, "umip=on", "Str_rm16", "str"));
        assert!(!b.matches("kvm", Mode::Long64, "umip=off", "Str_rm16", "str"));
    }

    #[test]
    fn a_malformed_line_is_named() {
        for (text, line, want) in [
            ("unicorn 16 umip=off Sgdt_m1632\n", 1, "found 4 fields"),
            ("# c\nunicorn\n", 2, "found 1 field"),
            (
                "\n\nbochs 16 umip=off Sgdt_m1632 why\n",
                3,
                "unknown engine 'bochs'",
            ),
            (
                "unicorn 128 umip=off Sgdt_m1632 why\n",
                1,
                "unknown mode '128'",
            ),
            ("unicorn 16 umip=maybe Sgdt_m1632 why\n", 1, "umip"),
            ("unicorn 16 umip=off * why\n", 1, "not *"),
        ] {
            let e = KnownFailures::parse("k.txt", text).expect_err(text);
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("k.txt line {line}: ")) && msg.contains(want),
                "{text:?}: {msg}"
            );
        }
    }
}
