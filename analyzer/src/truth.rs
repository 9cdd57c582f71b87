//! Documented facts, and where an engine's measured verdicts depart from them.
//!
//! `corpus/expected-verdicts.tsv` is a plain table of what the manuals and
//! the literature say (Intel SDM, Robin & Irvine 2000, kvm-unit-tests, ...):
//! one fact per line, tab-separated, `#` starts a comment line, the first
//! non-comment line is the header. Columns:
//!
//! | column | meaning |
//! |---|---|
//! | `instruction` | a lower-case mnemonic (`sgdt`: every entry with that mnemonic) or an iced `Code` name, told apart by containing an upper-case letter (`Mov_Sreg_rm16`: entries of that code); optionally followed by ` unless TEXT`, which leaves out entries whose form contains TEXT (`Call_ptr1632 unless call gate`), or any of several texts separated by `|` (`Mov_rm16_Sreg unless ,ds|,es`) |
//! | `modes` | `16,32,64`, a subset, or `*` (16, 32, 64 and 32c); `32` names both 32-bit modes (32-bit protected mode and 32-bit compatibility mode), `32p` the protected mode alone, `32c` compatibility mode alone (see below) |
//! | `config` | configuration names (`umip=off`, `umip=on`, comma-separated) or `*` (both) |
//! | `expect` | `privileged` (the verdict's `privileged`), `violator` (`violates_pg`), `innocuous`, `nondeterministic` (the class), `not-privileged` (`privileged` false) |
//! | `source` | where the fact is documented |
//! | `known_deviation` | empty, or `engine: reason` entries separated by `;` for engines known to get it wrong |
//!
//! 32-bit compatibility mode (`32c`) runs the 32-bit catalog, and what the
//! manuals document for 32-bit code holds there unless they say otherwise.
//! So `32` (and `*`) names both 32-bit modes, `32p` names 32-bit protected
//! mode alone and `32c` compatibility mode alone. A fact the manuals state
//! differently for compatibility mode is split: a `32p` row, and a `32c`
//! row where Intel and AMD agree on what compatibility mode does (none
//! where they do not, as for SYSCALL, SYSRET and SYSENTER).
//!
//! The table is the oracle the measured verdicts are put beside, never the
//! answer: [`check`] compares, [`annotate`] writes the comparison into the
//! records' `documented` and `deviation` fields. A disagreement on an engine
//! the row names is a known deviation (a finding about the engine, reported,
//! never papered over); any other disagreement is unexpected: a bug in popek
//! or a new finding about the engine.
//!
//! A second deviation needs no table (see [`crate::classify::engine_deviation`]):
//! a non-branch that completed off the sentinel was executed as a different
//! instruction; its class is `engine-deviation` and no theorem counts it.

use crate::catalog::Entry;
use crate::classify::Class;
use crate::mode::{Config, Mode};
use crate::record::Record;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The default location of the table, relative to the working directory.
pub const DEFAULT_PATH: &str = "corpus/expected-verdicts.tsv";

/// The header the table must start with.
pub const COLUMNS: [&str; 6] = [
    "instruction",
    "modes",
    "config",
    "expect",
    "source",
    "known_deviation",
];

/// What the documentation says about an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expect {
    /// Traps at CPL 3 and completes at CPL 0 (the verdict's `privileged`).
    Privileged,
    /// Sensitive and not privileged (`violates_pg`).
    Violator,
    Innocuous,
    Nondeterministic,
    /// The verdict's `privileged` is false.
    NotPrivileged,
    /// Traps (or transfers) in every sampled state (class `always-traps`).
    AlwaysTraps,
    /// #UD at every CPL in every state (class `unsupported`).
    Unsupported,
}

impl Expect {
    pub const ALL: [Expect; 7] = [
        Expect::Privileged,
        Expect::Violator,
        Expect::Innocuous,
        Expect::Nondeterministic,
        Expect::NotPrivileged,
        Expect::AlwaysTraps,
        Expect::Unsupported,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Expect::Privileged => "privileged",
            Expect::Violator => "violator",
            Expect::Innocuous => "innocuous",
            Expect::Nondeterministic => "nondeterministic",
            Expect::NotPrivileged => "not-privileged",
            Expect::AlwaysTraps => "always-traps",
            Expect::Unsupported => "unsupported",
        }
    }
    /// Whether a record's verdict meets the expectation.
    pub fn holds_for(self, r: &Record) -> bool {
        let v = &r.verdict;
        match self {
            Expect::Privileged => v.privileged,
            Expect::Violator => v.violates_pg,
            Expect::Innocuous => v.class == Class::Innocuous,
            Expect::Nondeterministic => v.class == Class::Nondeterministic,
            Expect::NotPrivileged => !v.privileged,
            Expect::AlwaysTraps => v.class == Class::AlwaysTraps,
            Expect::Unsupported => v.class == Class::Unsupported,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Expect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expect::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Expect::ALL.iter().map(|e| e.name()).collect();
                format!(
                    "unknown expect '{}' (one of {})",
                    crate::input::clip(s),
                    names.join(", ")
                )
            })
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    /// 1-based line in the file.
    pub line: usize,
    /// The mnemonic or `Code` name as written.
    pub instruction: String,
    /// `instruction` is an iced `Code` name (it has an upper-case letter).
    pub is_code: bool,
    /// Leave out entries whose form contains this text (or any of its
    /// `|`-separated texts).
    pub unless: Option<String>,
    /// The modes the row covers (`32` and `*` include 32c, `32p` does not).
    pub modes: Vec<Mode>,
    /// Configuration names (`umip=off`, ...).
    pub configs: Vec<String>,
    pub expect: Expect,
    pub source: String,
    /// `(engine, reason)` for engines known to deviate.
    pub known_deviation: Vec<(String, String)>,
}

impl Fact {
    /// Whether the row names this entry (mode aside).
    fn names(&self, code: &str, mnemonic: &str, form: &str) -> bool {
        let name = if self.is_code { code } else { mnemonic };
        name == self.instruction
            && self
                .unless
                .as_ref()
                .is_none_or(|u| !u.split('|').any(|t| form.contains(t.trim())))
    }
    /// Whether the row covers this record.
    pub fn matches(&self, r: &Record) -> bool {
        self.modes.contains(&r.mode)
            && self.configs.contains(&r.config)
            && self.names(&r.code, &r.mnemonic, &r.form)
    }
    /// The reason this engine is known to deviate, if the row names it.
    pub fn known_reason(&self, engine: &str) -> Option<&str> {
        self.known_deviation
            .iter()
            .find(|(e, _)| e.eq_ignore_ascii_case(engine))
            .map(|(_, r)| r.as_str())
    }
}

/// The parsed table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub path: PathBuf,
    pub facts: Vec<Fact>,
}

/// Why the table could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    #[error("cannot read the documented facts {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {msg}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{}:{line}: '{instruction}' matches no catalog entry in mode {mode}", path.display())]
    NoMatch {
        path: PathBuf,
        line: usize,
        instruction: String,
        mode: Mode,
    },
}

impl Facts {
    /// Reads and parses the table at `path`.
    pub fn load(path: &Path) -> Result<Facts, TruthError> {
        let text =
            crate::input::read_text(path, crate::input::MAX_TABLE_BYTES).map_err(|source| {
                TruthError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        Facts::parse(&text, path)
    }

    /// Parses the table; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Facts, TruthError> {
        let err = |line: usize, column: usize, msg: String| TruthError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            msg,
        };
        let mut facts = Vec::new();
        let mut header_seen = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
                continue;
            }
            // Fields with their 1-based starting column.
            let mut fields: Vec<(usize, &str)> = Vec::new();
            let mut col = 1;
            for f in raw.split('\t') {
                fields.push((col, f.trim()));
                col += f.chars().count() + 1;
            }
            if !header_seen {
                let names: Vec<&str> = fields.iter().map(|(_, f)| *f).collect();
                if names != COLUMNS {
                    return Err(err(
                        line,
                        1,
                        format!(
                            "expected the header '{}' (tab-separated), found '{}'",
                            COLUMNS.join("\\t"),
                            crate::input::clip(&names.join("\\t"))
                        ),
                    ));
                }
                header_seen = true;
                continue;
            }
            if fields.len() != COLUMNS.len() {
                return Err(err(
                    line,
                    1,
                    format!(
                        "expected {} tab-separated columns ({}), found {}",
                        COLUMNS.len(),
                        COLUMNS.join(", "),
                        fields.len()
                    ),
                ));
            }
            let (c_ins, ins) = fields[0];
            let (c_modes, modes) = fields[1];
            let (c_cfg, cfg) = fields[2];
            let (c_exp, exp) = fields[3];
            let (c_src, source) = fields[4];
            let (c_dev, dev) = fields[5];

            let (name, unless) = match ins.split_once(" unless ") {
                Some((n, u)) if !u.split('|').any(|t| t.trim().is_empty()) => {
                    (n.trim(), Some(u.trim().to_string()))
                }
                Some(_) => {
                    return Err(err(
                        line,
                        c_ins,
                        "'unless' needs a text (and no empty one between '|')".into(),
                    ))
                }
                None => (ins, None),
            };
            if name.is_empty()
                || name.contains(char::is_whitespace)
                || name.chars().count() > crate::input::MAX_NAME_CHARS
            {
                return Err(err(
                    line,
                    c_ins,
                    format!(
                        "'{}' is not a mnemonic or an iced Code name",
                        crate::input::clip(ins)
                    ),
                ));
            }
            let modes = if modes == "*" {
                let mut all = Mode::DEFAULT_SCAN.to_vec();
                all.push(Mode::Compat32);
                all
            } else {
                let mut out = Vec::new();
                for m in modes.split(',').map(str::trim) {
                    match m {
                        // 32-bit code: in 32-bit protected mode and in
                        // compatibility mode.
                        "32" => out.extend([Mode::Prot32, Mode::Compat32]),
                        // 32-bit protected mode only.
                        "32p" => out.push(Mode::Prot32),
                        _ => out.push(m.parse::<Mode>().map_err(|_| {
                            err(
                                line,
                                c_modes,
                                format!(
                                    "unknown mode '{}' (16, 32, 32p, 32c, 64, real or *)",
                                    crate::input::clip(m)
                                ),
                            )
                        })?),
                    }
                }
                out.sort();
                out.dedup();
                out
            };
            let configs = if cfg == "*" {
                Config::DEFAULTS.iter().map(Config::name).collect()
            } else {
                let mut out = Vec::new();
                for c in cfg.split(',').map(str::trim) {
                    let parsed = c.parse::<Config>().map_err(|e| {
                        err(
                            line,
                            c_cfg,
                            format!("bad configuration '{}': {e}", crate::input::clip(c)),
                        )
                    })?;
                    out.push(parsed.name());
                }
                out
            };
            let expect = exp.parse::<Expect>().map_err(|msg| err(line, c_exp, msg))?;
            if source.is_empty() {
                return Err(err(line, c_src, "the source of the fact is empty".into()));
            }
            let mut known_deviation = Vec::new();
            for part in dev.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                match part.split_once(':') {
                    Some((e, r)) if !e.trim().is_empty() && !r.trim().is_empty() => {
                        known_deviation.push((e.trim().to_string(), r.trim().to_string()))
                    }
                    _ => {
                        return Err(err(
                            line,
                            c_dev,
                            format!(
                                "known deviation '{}' is not 'engine: reason'",
                                crate::input::clip(part)
                            ),
                        ))
                    }
                }
            }
            facts.push(Fact {
                line,
                instruction: name.to_string(),
                is_code: name.chars().any(|c| c.is_ascii_uppercase()),
                unless,
                modes,
                configs,
                expect,
                source: source.to_string(),
                known_deviation,
            });
        }
        if !header_seen {
            return Err(err(
                1,
                1,
                format!("no header line '{}'", COLUMNS.join("\\t")),
            ));
        }
        Ok(Facts {
            path: path.to_path_buf(),
            facts,
        })
    }

    /// Checks that every row names at least one catalog entry in each of its
    /// modes that `entries` cover (a misspelt mnemonic, a `Code` of another
    /// mode).
    pub fn validate(&self, entries: &[Entry]) -> Result<(), TruthError> {
        let covered: BTreeSet<Mode> = entries.iter().map(|e| e.mode).collect();
        for f in &self.facts {
            for &mode in f.modes.iter().filter(|m| covered.contains(m)) {
                let any = entries
                    .iter()
                    .any(|e| e.mode == mode && f.names(&e.code, &e.mnemonic, &e.form));
                if !any {
                    return Err(TruthError::NoMatch {
                        path: self.path.clone(),
                        line: f.line,
                        instruction: f.instruction.clone(),
                        mode,
                    });
                }
            }
        }
        Ok(())
    }

    /// The instruction names the table mentions, for a scan plan's `only`.
    pub fn instructions(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.facts.iter().map(|f| f.instruction.as_str()).collect();
        set.into_iter().map(String::from).collect()
    }
}

/// How a measured verdict stands beside a documented fact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Agrees,
    /// Disagrees, and the row names this engine as known to deviate (the reason).
    KnownDeviation(String),
    /// Disagrees unexpectedly: a bug in popek or a new finding about the engine.
    Disagrees,
    /// The row names this engine as deviating, yet it agrees (the reason given).
    KnownDeviationFixed(String),
    /// The record has no verdict to check: states that could decide it did
    /// not run on the engine (class `not-judged`).
    NotJudged,
}

/// One record beside one fact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub engine: String,
    pub mode: Mode,
    pub config: String,
    pub code: String,
    pub form: String,
    /// The row's line, expectation and source.
    pub line: usize,
    pub expect: Expect,
    pub source: String,
    /// What was measured.
    pub class: Class,
    pub privileged: bool,
    pub sensitive: bool,
    pub violates_pg: bool,
    pub status: Status,
}

impl Finding {
    /// `engine disagrees with the documentation: expected X, measured Y`, then
    /// the known gap or `unexpected`; `None` where it agrees.
    pub fn deviation_text(&self) -> Option<String> {
        let base = format!(
            "{DISAGREES}: expected {}, measured {}",
            self.expect,
            self.measured()
        );
        match &self.status {
            Status::Agrees | Status::KnownDeviationFixed(_) | Status::NotJudged => None,
            Status::KnownDeviation(reason) => {
                Some(format!("{base}; {KNOWN} {} gap: {reason}", self.engine))
            }
            Status::Disagrees => Some(format!("{base}; {UNEXPECTED}")),
        }
    }

    /// The measured verdict in a few words.
    pub fn measured(&self) -> String {
        format!(
            "{} (privileged {}, sensitive {}, violates_pg {})",
            self.class, self.privileged, self.sensitive, self.violates_pg
        )
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mode {} {} `{}` ({}): expected {} [{}, line {}], measured {}",
            self.engine,
            self.mode.name(),
            self.config,
            self.form,
            self.code,
            self.expect,
            self.source,
            self.line,
            self.measured()
        )?;
        match &self.status {
            Status::Agrees => write!(f, ": agrees"),
            Status::KnownDeviation(r) => write!(f, ": known deviation ({r})"),
            Status::Disagrees => write!(f, ": UNEXPECTED disagreement"),
            Status::KnownDeviationFixed(r) => {
                write!(f, ": agrees although listed as a known deviation ({r})")
            }
            Status::NotJudged => write!(f, ": not judged (states not run on this engine)"),
        }
    }
}

/// Marks of the deviation texts, which the Markdown report counts by.
pub const DISAGREES: &str = "engine disagrees with the documentation";
pub const KNOWN: &str = "known";
pub const UNEXPECTED: &str = "unexpected (no known engine gap explains it)";

/// Every (record, fact) pair where the fact covers the record, in record order.
pub fn check(records: &[Record], facts: &Facts) -> Vec<Finding> {
    records.iter().flat_map(|r| findings_of(r, facts)).collect()
}

/// The findings of one record, in table order.
fn findings_of(r: &Record, facts: &Facts) -> Vec<Finding> {
    facts
        .facts
        .iter()
        .filter(|f| f.matches(r))
        .map(|f| {
            let agrees = f.expect.holds_for(r);
            let status = match (agrees, f.known_reason(&r.engine)) {
                _ if r.verdict.class == Class::NotJudged => Status::NotJudged,
                (true, None) => Status::Agrees,
                (true, Some(why)) => Status::KnownDeviationFixed(why.to_string()),
                (false, Some(why)) => Status::KnownDeviation(why.to_string()),
                (false, None) => Status::Disagrees,
            };
            Finding {
                engine: r.engine.clone(),
                mode: r.mode,
                config: r.config.clone(),
                code: r.code.clone(),
                form: r.form.clone(),
                line: f.line,
                expect: f.expect,
                source: f.source.clone(),
                class: r.verdict.class,
                privileged: r.verdict.privileged,
                sensitive: r.verdict.sensitive(),
                violates_pg: r.verdict.violates_pg,
                status,
            }
        })
        .collect()
}

/// Writes the facts into the records: `documented` lists what the rows
/// covering a record expect (`privileged (Intel SDM vol. 3 2.8)`), and
/// `deviation` the measured deviation (see [`crate::record::measured_deviation`])
/// followed by every disagreement. Returns the findings of [`check`].
pub fn annotate(records: &mut [Record], facts: &Facts) -> Vec<Finding> {
    let mut all = Vec::new();
    for r in records.iter_mut() {
        let findings = findings_of(r, facts);
        let documented: Vec<String> = findings
            .iter()
            .map(|f| format!("{} ({})", f.expect, f.source))
            .collect();
        let mut deviation: Vec<String> = crate::record::measured_deviation(&r.verdict)
            .into_iter()
            .collect();
        deviation.extend(findings.iter().filter_map(Finding::deviation_text));
        r.documented = (!documented.is_empty()).then(|| documented.join("; "));
        r.deviation = (!deviation.is_empty()).then(|| deviation.join("; "));
        all.extend(findings);
    }
    all
}

/// Counts of findings by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub agree: usize,
    pub known: usize,
    pub unexpected: usize,
    pub fixed: usize,
    /// Records not judged (states not run on the engine): not checked.
    pub not_judged: usize,
}

impl Tally {
    pub fn of(findings: &[Finding]) -> Tally {
        let mut t = Tally::default();
        for f in findings {
            match f.status {
                Status::Agrees => t.agree += 1,
                Status::KnownDeviation(_) => t.known += 1,
                Status::Disagrees => t.unexpected += 1,
                Status::KnownDeviationFixed(_) => t.fixed += 1,
                Status::NotJudged => t.not_judged += 1,
            }
        }
        t
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "documented facts: {} agree, {} known engine deviations, {} unexpected disagreements",
            self.agree, self.known, self.unexpected
        )?;
        if self.fixed > 0 {
            write!(f, ", {} listed as known deviations but agree", self.fixed)?;
        }
        if self.not_judged > 0 {
            write!(
                f,
                ", {} not checked (not judged: states not run on the engine)",
                self.not_judged
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
