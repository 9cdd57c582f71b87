//! Findings: what an oracle reports about one input, deduplicated by an
//! outcome signature, kept in `findings.jsonl` (one JSON object per line,
//! sorted, no timestamps) and merged across shards.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which oracle found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The decoder says invalid (or another length) and the engine executes it.
    DecoderVsEngine,
    /// Two engines' outcomes or results differ.
    EngineVsEngine,
    /// Sensitive and not privileged, and the catalog's scan does not report
    /// it: a new violator candidate.
    Pg,
    /// The engine failed: an engine error, a hang, or its worker died.
    EngineFailure,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::DecoderVsEngine => "decoder-vs-engine",
            Kind::EngineVsEngine => "engine-vs-engine",
            Kind::Pg => "pg",
            Kind::EngineFailure => "engine-failure",
        }
    }
}

/// The decoder's view of an input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decoded {
    pub valid: bool,
    pub length: usize,
    pub code: String,
    pub form: String,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: Kind,
    pub mode: String,
    /// The privilege level the finding is about, where it is about one.
    pub cpl: Option<u8>,
    pub config: String,
    /// The input as minimized (hex).
    pub bytes: String,
    /// The input as generated (hex): what deduplication keeps the least of.
    pub input: String,
    pub decoder: Decoded,
    /// Engine name to its outcome per CPL (`cpl0`, `cpl3`).
    #[serde(deserialize_with = "bounded_engines")]
    pub engines: BTreeMap<String, BTreeMap<String, String>>,
    /// The instruction's length as the first engine fetched it at CPL 3
    /// (CPL 0 in real mode), when known: by the page-boundary method, or
    /// where its run stopped at the sentinel right after the decoder's
    /// length (see `observed_by`).
    pub observed_length: Option<u64>,
    /// How `observed_length` was measured: `page-boundary` or `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_by: Option<String>,
    pub detail: String,
    /// What deduplicates: kind, where in the opcode map, and the outcomes.
    pub signature: String,
    /// A command line that shows the finding.
    pub reproduce: String,
}

/// A finding's engines as read back: each an engine a campaign runs
/// (popek's, or the fuzzer's own test engine `planted`) with its outcomes
/// at `cpl0` to `cpl3`, anything else refused as it is read. A small map
/// takes a tree node of some 500 bytes that the memory check does not see
/// (findings of 64 one-character engines a line took 21 times their size,
/// of 8 of 4 outcomes 11 times).
fn bounded_engines<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, D::Error> {
    use serde::de::{Error, MapAccess, Visitor};
    /// A map whose keys are among `known`.
    struct Known<T> {
        known: Vec<&'static str>,
        what: &'static str,
        _t: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Known<T> {
        type Value = BTreeMap<String, T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a map of {}", self.what)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if !self.known.contains(&&*k) {
                    return Err(A::Error::custom(format!(
                        "{} is not one of the {} ({})",
                        analyzer::input::clip(&k),
                        self.what,
                        self.known.join(", ")
                    )));
                }
                out.insert(k.into_owned(), map.next_value()?);
            }
            Ok(out)
        }
    }
    struct Outcomes(BTreeMap<String, String>);
    impl<'de> Deserialize<'de> for Outcomes {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(Known {
                known: vec!["cpl0", "cpl1", "cpl2", "cpl3"],
                what: "CPLs",
                _t: std::marker::PhantomData,
            })
            .map(Outcomes)
        }
    }
    let engines = analyzer::engine::EngineKind::KNOWN.iter().map(|e| e.name());
    let m: BTreeMap<String, Outcomes> = d.deserialize_map(Known {
        known: engines.chain([crate::planted::NAME]).collect(),
        what: "engines",
        _t: std::marker::PhantomData,
    })?;
    Ok(m.into_iter().map(|(k, Outcomes(v))| (k, v)).collect())
}

impl Finding {
    /// The order of `findings.jsonl`.
    fn key(&self) -> (Kind, &str, &str) {
        (self.kind, &self.signature, &self.input)
    }
}

/// The order a campaign keeps the least of inputs by: the shorter first,
/// then by bytes. Inputs written in lower-case hex (as findings and the
/// learned state hold them) are in the same order by their text.
pub fn input_order<T: AsRef<[u8]> + ?Sized>(input: &T) -> (usize, &[u8]) {
    let bytes = input.as_ref();
    (bytes.len(), bytes)
}

/// One finding per signature and campaign setting (mode, configuration
/// and engines), the one of the least input (so that any split of the
/// same inputs keeps the same one), sorted by kind and signature, then
/// mode, configuration and engines. A signature does not name the mode,
/// the configuration or every engine (an engine-vs-engine one names
/// neither engine, a worker's death none): `merge` of campaigns of
/// different ones kept only one of them, which depended on the order of
/// the directories given.
pub fn dedupe(findings: impl IntoIterator<Item = Finding>) -> Vec<Finding> {
    let mut best: BTreeMap<(String, String, Vec<String>, Kind, String), Finding> = BTreeMap::new();
    for f in findings {
        let k = (
            f.mode.clone(),
            f.config.clone(),
            f.engines.keys().cloned().collect(),
            f.kind,
            f.signature.clone(),
        );
        match best.get(&k) {
            Some(b) if input_order(&b.input) <= input_order(&f.input) => {}
            _ => {
                best.insert(k, f);
            }
        }
    }
    let mut v: Vec<Finding> = best.into_values().collect();
    v.sort_by(|a, b| {
        a.key()
            .cmp(&b.key())
            .then_with(|| (&a.mode, &a.config).cmp(&(&b.mode, &b.config)))
            .then_with(|| a.engines.keys().cmp(b.engines.keys()))
    });
    v
}

/// Why findings could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FindingsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a popek {what}: {msg}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        /// What the line should have been: a finding, a corpus line.
        what: &'static str,
        msg: String,
    },
    /// Text that would take many times its size once read
    /// ([`analyzer::input::check_json_lines_memory`]).
    #[error("{path}: not popek findings: {why}")]
    Bloated { path: PathBuf, why: String },
}

/// The largest findings or corpus file read back.
pub const MAX_FILE: u64 = 256 << 20;

/// The most corpus entries a campaign reads (a 40,000-input campaign
/// keeps about 3,000; a million short lines take a few hundred MB once
/// parsed, where the 256 MiB a file may hold took 16 GB).
pub const MAX_CORPUS: usize = 1_000_000;

/// Writes a file atomically through the reports' writer
/// ([`analyzer::report::write_atomic`]: a fresh temporary file beside it,
/// synced, then renamed; removed on an interrupt).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FindingsError> {
    analyzer::report::write_atomic(path, |w| w.write_all(bytes)).map_err(|e| with_cause(path, e))
}

/// Writes files into `dir` as one set ([`analyzer::report::ReportSet`]):
/// every one is written to a temporary file first, and they are renamed
/// into place only once all are and no target is in the way, so a full
/// disk or a directory in the way leaves the old set whole, not new
/// findings beside an old corpus (a rename that fails midway, which is
/// rare, can still leave the first renamed).
pub fn write_set(dir: &Path, files: &[(&str, &[u8])]) -> Result<(), FindingsError> {
    let mut set = analyzer::report::ReportSet::new(dir);
    for (name, bytes) in files {
        set.add(name, |w| w.write_all(bytes))
            .map_err(|e| with_cause(dir, e))?;
    }
    set.commit().map(|_| ()).map_err(|e| with_cause(dir, e))
}

/// A report writer's error as findings', its cause in the message (the
/// report error's source, which `to_string` alone drops).
pub(crate) fn with_cause(path: &Path, e: analyzer::report::ReportError) -> FindingsError {
    let why = match std::error::Error::source(&e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    FindingsError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(why),
    }
}

/// `findings.jsonl` text.
pub fn to_jsonl(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        s.push_str(&serde_json::to_string(f).unwrap_or_default());
        s.push('\n');
    }
    s
}

fn read_bounded(path: &Path) -> Result<String, FindingsError> {
    analyzer::input::read_text(path, MAX_FILE).map_err(|source| FindingsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The bytes of an input as a finding or corpus line holds them: hex of 1
/// to 15 bytes.
fn input_bytes(hex: &str) -> Result<Vec<u8>, String> {
    let bytes = analyzer::explain::parse_hex(hex).map_err(|e| e.to_string())?;
    if bytes.is_empty() || bytes.len() > crate::gen::MAX_LEN {
        return Err(format!("{} bytes (1 to 15)", bytes.len()));
    }
    Ok(bytes)
}

impl Finding {
    /// What a campaign could have written: a mode and configuration
    /// popek knows, and inputs of 1 to 15 bytes (which `merge` writes
    /// into a corpus a campaign reads back).
    fn check(&self) -> Result<(), String> {
        self.mode
            .parse::<analyzer::mode::Mode>()
            .map_err(|e| format!("mode: {e}"))?;
        self.config
            .parse::<analyzer::mode::Config>()
            .map_err(|e| format!("config: {e}"))?;
        for (what, hex) in [("bytes", &self.bytes), ("input", &self.input)] {
            let b = input_bytes(hex).map_err(|e| format!("{what}: {e}"))?;
            // As a campaign writes it (merge writes it on as it is read).
            if analyzer::observe::hex(&b) != *hex {
                return Err(format!(
                    "{what}: {} is not written as a campaign writes hex (lower case, no spaces)",
                    analyzer::input::clip(hex)
                ));
            }
        }
        if let Some(c) = self.cpl.filter(|&c| c > 3) {
            return Err(format!("cpl {c}: 0 to 3"));
        }
        // The signature becomes the corpus line's note, and the key of
        // deduplication: one line of printable text.
        if self.signature.is_empty() || self.signature.chars().any(char::is_control) {
            return Err("signature: empty or not one line of printable text".into());
        }
        Ok(())
    }
}

/// Reads a `findings.jsonl`; a line that is no finding a campaign could
/// have written is an error naming it.
pub fn read_jsonl(path: &Path) -> Result<Vec<Finding>, FindingsError> {
    let text = read_bounded(path)?;
    // Text made to take many times its size is refused before any line is
    // parsed into a finding; a line that is not JSON is said when the
    // reading reaches it, and none after it is parsed (a finding's parse
    // builds what the line holds before it finds the error at its end).
    let first_bad =
        analyzer::input::check_json_lines_memory(&text).map_err(|why| FindingsError::Bloated {
            path: path.to_path_buf(),
            why,
        })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let bad = |msg: String| FindingsError::Corrupt {
                path: path.to_path_buf(),
                line: i + 1,
                what: "finding",
                msg,
            };
            if let Some((_, e)) = first_bad.as_ref().filter(|(line, _)| *line == i + 1) {
                return Err(bad(analyzer::input::json_line_error(e)));
            }
            let f: Finding =
                serde_json::from_str(l).map_err(|e| bad(analyzer::input::json_line_error(&e)))?;
            f.check().map_err(bad)?;
            Ok(f)
        })
        .collect()
}

/// A corpus entry: bytes, mode, and a note.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CorpusEntry {
    pub bytes: Vec<u8>,
    pub mode: String,
    pub note: String,
}

/// Corpus text: `hex mode note` per line, `#` comments.
pub fn corpus_text(entries: &[CorpusEntry]) -> String {
    let mut s = String::from("# popek fuzz corpus: hex bytes, mode, note\n");
    for e in entries {
        s.push_str(&format!(
            "{} {} {}\n",
            analyzer::observe::hex(&e.bytes),
            e.mode,
            e.note
        ));
    }
    s
}

/// Reads a corpus file (see [`corpus_text`]); a malformed line is an error
/// naming it.
pub fn read_corpus(path: &Path) -> Result<Vec<CorpusEntry>, FindingsError> {
    let mut out = Vec::new();
    read_corpus_into(path, &mut out)?;
    Ok(out)
}

/// Appends a corpus file's entries to `out`, which holds at most
/// [`MAX_CORPUS`] (whatever files they come from).
fn read_corpus_into(path: &Path, out: &mut Vec<CorpusEntry>) -> Result<(), FindingsError> {
    let text = read_bounded(path)?;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if out.len() == MAX_CORPUS {
            return Err(FindingsError::Corrupt {
                path: path.to_path_buf(),
                line: i + 1,
                what: "corpus line",
                msg: format!(
                    "more than {MAX_CORPUS} entries, the most a corpus (all its files) may hold"
                ),
            });
        }
        let mut parts = line.splitn(3, char::is_whitespace);
        let (hex, mode) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let bad = |msg: String| FindingsError::Corrupt {
            path: path.to_path_buf(),
            line: i + 1,
            what: "corpus line",
            msg,
        };
        let bytes = input_bytes(hex).map_err(bad)?;
        mode.parse::<analyzer::mode::Mode>()
            .map_err(|e| bad(format!("mode: {e}")))?;
        out.push(CorpusEntry {
            bytes,
            mode: mode.to_string(),
            note: parts.next().unwrap_or("").trim().to_string(),
        });
    }
    Ok(())
}

/// Every corpus entry under `dir` (`*.txt`, sorted by file name), or of
/// one file.
pub fn read_corpus_dir(dir: &Path) -> Result<Vec<CorpusEntry>, FindingsError> {
    let io = |source| FindingsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !std::fs::metadata(dir).map_err(io)?.is_dir() {
        return read_corpus(dir);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for f in files {
        // The files together are held to what one may hold.
        bytes += std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        if bytes > MAX_FILE {
            return Err(FindingsError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("its corpus files hold more than {MAX_FILE} bytes, the most a campaign reads"),
                ),
            });
        }
        read_corpus_into(&f, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn finding(kind: Kind, sig: &str, input: &str) -> Finding {
        Finding {
            kind,
            mode: "64".into(),
            cpl: Some(3),
            config: "umip=off".into(),
            bytes: input.into(),
            input: input.into(),
            decoder: Decoded {
                valid: true,
                length: input.len() / 2,
                code: "X".into(),
                form: "x".into(),
            },
            engines: BTreeMap::new(),
            observed_length: None,
            observed_by: None,
            detail: String::new(),
            signature: sig.into(),
            reproduce: String::new(),
        }
    }

    #[test]
    fn dedupe_keeps_the_least_input_whatever_the_order() {
        let a = vec![
            finding(Kind::Pg, "s1", "0102"),
            finding(Kind::Pg, "s1", "01"),
            finding(Kind::EngineVsEngine, "s2", "ff"),
        ];
        let mut b = a.clone();
        b.reverse();
        let da = dedupe(a);
        assert_eq!(da, dedupe(b));
        assert_eq!(da.len(), 2);
        assert_eq!(da[0].kind, Kind::EngineVsEngine);
        assert_eq!(da[1].input, "01");
    }

    /// A finding read back names only the engines a campaign runs, with
    /// outcomes at CPL 0 to 3, refused as they are read (a small map is a
    /// tree node of its own).
    #[test]
    fn a_finding_of_other_engines_or_outcomes_is_refused_as_it_is_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("findings.jsonl");
        let of = |cpls: &[&str]| -> BTreeMap<String, String> {
            cpls.iter()
                .map(|c| (c.to_string(), "completed".to_string()))
                .collect()
        };
        let all = ["cpl0", "cpl1", "cpl2", "cpl3"];
        let mut f = finding(Kind::Pg, "s", "0f01c8");
        f.engines = ["kvm", "native", "planted", "unicorn"]
            .iter()
            .map(|e| (e.to_string(), of(&all)))
            .collect();
        write_atomic(&p, to_jsonl(std::slice::from_ref(&f)).as_bytes()).expect("write");
        assert_eq!(read_jsonl(&p).expect("read"), vec![f.clone()]);
        for (engine, cpl, said) in [
            ("e8", "cpl0", "e8 is not one of the engines"),
            ("unicorn", "cpl4", "cpl4 is not one of the CPLs"),
        ] {
            let mut g = f.clone();
            g.engines.insert(engine.into(), of(&[cpl]));
            write_atomic(&p, to_jsonl(&[f.clone(), g]).as_bytes()).expect("write");
            let e = read_jsonl(&p).expect_err(said).to_string();
            assert!(
                e.contains(":2: not a popek finding: column ") && e.contains(said),
                "{e}"
            );
        }
        // A line that is not a finding is said before a later one that is
        // not JSON.
        let text = format!("{}\"x\"\n{{\"kind\":\n", to_jsonl(std::slice::from_ref(&f)));
        std::fs::write(&p, text).expect("write");
        let e = read_jsonl(&p).expect_err("line 2").to_string();
        assert!(e.contains(":2: not a popek finding"), "{e}");
    }

    #[test]
    fn findings_and_corpus_round_trip_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = vec![finding(Kind::Pg, "s", "0f01c8")];
        let p = dir.path().join("findings.jsonl");
        write_atomic(&p, to_jsonl(&f).as_bytes()).expect("write");
        assert_eq!(read_jsonl(&p).expect("read"), f);
        std::fs::write(&p, "{}\n").expect("write");
        let e = read_jsonl(&p).expect_err("corrupt");
        assert!(e.to_string().contains(":1: not a popek finding"), "{e}");
        let c = dir.path().join("c.txt");
        let entries = vec![CorpusEntry {
            bytes: vec![0x66, 0x01, 0xc8],
            mode: "64".into(),
            note: "a note".into(),
        }];
        std::fs::write(&c, corpus_text(&entries)).expect("write");
        assert_eq!(read_corpus_dir(dir.path()).expect("read"), entries);
        std::fs::write(&c, "zz 64\n").expect("write");
        assert!(read_corpus(&c).is_err());
        std::fs::write(&c, "90 65\n").expect("write");
        assert!(read_corpus(&c)
            .expect_err("mode")
            .to_string()
            .contains(":1:"));
    }
}
