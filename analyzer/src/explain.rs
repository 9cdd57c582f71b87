//! `popek explain`: run one instruction (every catalog form of a mnemonic, or
//! exactly the given bytes) through the whole sampled-state matrix, as
//! `scan` does, and say what the verdict is, why, and what each run did.

use crate::catalog::{self, Catalog, Entry};
use crate::length::FetchLength;
use crate::machine::{GuestImage, Setup, Variant};
use crate::mode::{Config, Mode};
use crate::observe::{diff_user, hex, Outcome, Side, SystemState, UserState};
use crate::probe::{fenced_image, Diff, GuestHarness, Matrix, ProbeError, Prober, Run};
use crate::record::Record;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use serde::Serialize;

/// What the user asked to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A mnemonic, optionally with text that the forms must contain
    /// (`push cs` is the forms of `push` whose text contains `cs`).
    Mnemonic(String, Option<String>),
    Bytes(Vec<u8>),
}

/// Bad input, with a message that says what is wrong and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("malformed hex at character {position}: '{found}' is not a hex digit (write bytes like '0f 01 05' or 0x0f0105)")]
    BadHexDigit { position: usize, found: char },
    #[error("malformed hex: '{group}' has {digits} hex digits; every byte needs two (write '09', not '9')")]
    OddHex { group: String, digits: usize },
    #[error("no bytes given")]
    Empty,
    #[error(
        "nothing to explain: give a mnemonic (sgdt) or the instruction's bytes in hex (0f 01 05)"
    )]
    NoTarget,
    #[error("'{0}' is longer than any mnemonic")]
    NameTooLong(String),
    #[error("more than 15 bytes, longer than any x86 instruction (15 bytes at most)")]
    TooLong { len: usize },
    #[error("the bytes {bytes} do not decode as an instruction in {mode}")]
    Invalid { bytes: String, mode: String },
    #[error("the bytes hold more than one instruction: the first, '{first}', is {len} of the {total} bytes")]
    Trailing {
        first: String,
        len: usize,
        total: usize,
    },
    #[error("unknown mnemonic '{name}' in {mode}{}{}", suggestions(.suggest), hex_hint(.name))]
    UnknownMnemonic {
        name: String,
        mode: String,
        suggest: Vec<String>,
    },
    #[error("no form of '{name}' in {mode} contains '{filter}'; its forms are: {}", .forms.join(" | "))]
    NoSuchForm {
        name: String,
        filter: String,
        mode: String,
        forms: Vec<String>,
    },
}

/// For a name that could be hex bytes (`cc`): how to run it as bytes.
fn hex_hint(name: &str) -> String {
    if !name.is_empty()
        && name.len().is_multiple_of(2)
        && name.chars().all(|c| c.is_ascii_hexdigit())
    {
        format!(" (to run the bytes {name}, write 0x{name} or pass --hex)")
    } else {
        String::new()
    }
}

fn suggestions(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", s.join(", "))
    }
}

/// Reads a target: hex bytes when it starts with a digit, or consists of hex
/// digits (with optional `0x` prefixes and separators) and has a digit, a
/// `0x` prefix or spaces (`0f 01 05`, `0x0f0105`, `f4`); otherwise a mnemonic
/// with optional operand text (`sgdt`, `fadd`, `push cs`). `force_hex` reads
/// it as bytes always.
pub fn parse_target(s: &str, force_hex: bool) -> Result<Target, ExplainError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ExplainError::NoTarget);
    }
    let only_hex = t
        .chars()
        .all(|c| c.is_ascii_hexdigit() || c.is_whitespace() || matches!(c, 'x' | 'X' | ',' | ':'));
    // No mnemonic starts with a digit, so such a target is always hex.
    let starts_with_digit = t.starts_with(|c: char| c.is_ascii_digit());
    let looks_hex = starts_with_digit
        || (only_hex
            && (t.contains("0x")
                || t.contains("0X")
                || t.chars().any(|c| c.is_ascii_digit())
                || t.contains(char::is_whitespace)));
    if force_hex || looks_hex {
        return parse_hex(t).map(Target::Bytes);
    }
    let lower = t.to_ascii_lowercase();
    let mut words = lower.split_whitespace();
    let name = words.next().unwrap_or_default().to_string();
    if name.chars().count() > crate::input::MAX_NAME_CHARS {
        return Err(ExplainError::NameTooLong(crate::input::clip(&name)));
    }
    let rest: Vec<&str> = words.collect();
    let filter = if rest.is_empty() {
        None
    } else {
        Some(rest.join(" "))
    };
    Ok(Target::Mnemonic(name, filter))
}

/// Parses hex bytes: groups separated by spaces, commas or colons, each
/// group optionally prefixed with `0x` and made of whole bytes (two digits
/// each): `0f 01 05`, `0x0f0105`, `0f,01`. A group with an odd number of
/// digits (`9 0`, `0f1`) is refused, never read as nibbles.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, ExplainError> {
    // Plain digits, as popek writes hex itself (the fuzzer's jobs and
    // replies carry thousands): what the general path below gives them.
    let plain = s.as_bytes();
    if !plain.is_empty()
        && plain.len() <= 30
        && plain.len().is_multiple_of(2)
        && plain.iter().all(u8::is_ascii_hexdigit)
    {
        let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        return Ok(plain
            .chunks(2)
            .map(|p| nibble(p[0]) << 4 | nibble(p[1]))
            .collect());
    }
    let mut bytes = Vec::new();
    let mut col = 1;
    for group in s.split(|c: char| c.is_whitespace() || c == ',' || c == ':') {
        let start = col;
        col += group.chars().count() + 1;
        if group.is_empty() {
            continue;
        }
        let (skip, digits) = match group.get(..2) {
            Some("0x" | "0X") => (2, &group[2..]),
            _ => (0, group),
        };
        if let Some((i, c)) = digits.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(ExplainError::BadHexDigit {
                position: start + skip + digits[..i].chars().count(),
                found: c,
            });
        }
        if digits.is_empty() || digits.len() % 2 != 0 {
            return Err(ExplainError::OddHex {
                group: crate::input::clip(group),
                digits: digits.len(),
            });
        }
        for pair in digits.as_bytes().chunks(2) {
            let text = std::str::from_utf8(pair).unwrap_or("00");
            bytes.push(u8::from_str_radix(text, 16).unwrap_or(0));
        }
        if bytes.len() > 15 {
            // Checked as we go: a huge input is refused without reading it all.
            return Err(ExplainError::TooLong { len: bytes.len() });
        }
    }
    if bytes.is_empty() {
        return Err(ExplainError::Empty);
    }
    Ok(bytes)
}

/// One run of an explained instruction.
#[derive(Clone, Debug, Serialize)]
pub struct ExplainedRun {
    /// The state: `base@cpl0`, `tables-moved@cpl3 (repeat 1)`, ...
    pub state: String,
    pub outcome: String,
    /// Parts of R and M that changed, against the NOP baseline of the state
    /// (as the verdict measures them).
    pub system_changes: Vec<String>,
    /// User-visible results that changed against the start of the run
    /// (registers, flags, data page, stack).
    pub user_changes: Vec<String>,
    /// The run in full, for `--json`, with the pages cut to the bytes the
    /// run wrote.
    pub detail: RunDetail,
}

/// One run as `explain --json` prints it: the outcome, R and M before,
/// after and after the state's NOP baseline, the registers at the start and
/// the end, and the data and stack bytes the run wrote (the 4 KB pages
/// themselves would make a form's JSON megabytes long).
#[derive(Clone, Debug, Serialize)]
pub struct RunDetail {
    pub variant: Variant,
    pub side: Side,
    pub repeat: u8,
    pub outcome: Outcome,
    pub before: SystemState,
    pub after: Option<SystemState>,
    pub baseline: Option<SystemState>,
    pub start: Option<Registers>,
    pub end: Option<Registers>,
    /// `(offset, new value)` of every data-page byte that differs from the start.
    pub data_written: Vec<(usize, u8)>,
    /// The same for the stack page.
    pub stack_written: Vec<(usize, u8)>,
}

/// The general registers (hardware order), RIP and the arithmetic flags.
#[derive(Clone, Debug, Serialize)]
pub struct Registers {
    pub gprs: [u64; 16],
    pub rip: u64,
    pub flags: u64,
}

impl Registers {
    fn of(u: &UserState) -> Registers {
        Registers {
            gprs: u.gprs,
            rip: u.rip,
            flags: u.flags,
        }
    }
}

/// The bytes of `after` that differ from `start`, as `(offset, new value)`.
fn bytes_written(start: &[u8], after: &[u8]) -> Vec<(usize, u8)> {
    after
        .iter()
        .enumerate()
        .filter(|&(i, b)| start.get(i) != Some(b))
        .map(|(i, &b)| (i, b))
        .collect()
}

impl RunDetail {
    fn of(run: Run) -> RunDetail {
        let (data_written, stack_written) = match (&run.start, &run.obs.user) {
            (Some(s), Some(u)) => (
                bytes_written(&s.data, &u.data),
                bytes_written(&s.stack, &u.stack),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        RunDetail {
            variant: run.variant,
            side: run.side,
            repeat: run.repeat,
            start: run.start.as_ref().map(Registers::of),
            end: run.obs.user.as_ref().map(Registers::of),
            outcome: run.obs.outcome,
            before: run.obs.before,
            after: run.obs.after,
            baseline: run.baseline,
            data_written,
            stack_written,
        }
    }
}

/// One explained form on one engine: its final record (verdict and
/// evidence, exactly as `scan` gives it) and every run of the matrix.
#[derive(Clone, Debug, Serialize)]
pub struct Explained {
    pub record: Record,
    pub runs: Vec<ExplainedRun>,
    /// States where the other engine of a two-engine explain ended
    /// otherwise: `state: this vs other`.
    pub engines_differ: Vec<String>,
    /// The instruction's length as the decoder reads it (`None`: the
    /// decoder finds no instruction in the bytes).
    pub decoder_length: Option<usize>,
    /// Its length as this engine fetches it, by the page-boundary method
    /// ([`crate::length`]), in the base state on each side: `(state, length)`.
    pub fetch_lengths: Vec<(String, FetchLength)>,
}

/// The page-boundary length of `entry` on each side of the base state.
fn fetch_lengths(
    p: &mut Prober,
    fenced: Option<&GuestImage>,
    entry: &Entry,
    config: &Config,
) -> Result<Vec<(String, FetchLength)>, ProbeError> {
    let mut out = Vec::new();
    for side in Side::BOTH {
        let state = format!("{}@{side}", Variant::base(config).name(config));
        let length = match fenced {
            Some(image) => {
                if image.entry(side).is_none() {
                    continue;
                }
                p.fetch_length(image, side, entry, entry.bytes.len())?
            }
            None => crate::length::not_fenced(entry.mode),
        };
        out.push((state, length));
    }
    Ok(out)
}

/// The entries a target names in a mode: catalog forms of a mnemonic, or the
/// given bytes as one entry with the harness's default operands.
pub fn entries_for(target: &Target, mode: Mode, cat: &Catalog) -> Result<Vec<Entry>, ExplainError> {
    match target {
        Target::Mnemonic(m, filter) => {
            let found: Vec<Entry> = cat.find_mnemonic(m).into_iter().cloned().collect();
            if found.is_empty() {
                return Err(ExplainError::UnknownMnemonic {
                    name: m.clone(),
                    mode: mode.description().to_string(),
                    suggest: cat.suggest(m, 5),
                });
            }
            let Some(f) = filter else { return Ok(found) };
            let squash = |s: &str| {
                s.to_ascii_lowercase()
                    .split_whitespace()
                    .collect::<String>()
            };
            let want = squash(f);
            let kept: Vec<Entry> = found
                .iter()
                .filter(|e| squash(&e.form).contains(&want))
                .cloned()
                .collect();
            if kept.is_empty() {
                return Err(ExplainError::NoSuchForm {
                    name: m.clone(),
                    filter: crate::input::clip(f),
                    mode: mode.description().to_string(),
                    forms: found.iter().map(|e| e.form.clone()).collect(),
                });
            }
            Ok(kept)
        }
        Target::Bytes(b) => Ok(vec![entry_from_bytes(b, mode)?]),
    }
}

/// The first instruction of `bytes` as the decoder reads it at `TEST_RIP`.
fn decode_first(bytes: &[u8], mode: Mode) -> iced_x86::Instruction {
    Decoder::with_ip(
        mode.bitness(),
        bytes,
        crate::machine::TEST_RIP,
        DecoderOptions::NONE,
    )
    .decode()
}

/// The entry of a decoded instruction run as `bytes` (default harness setup).
fn decoded_entry(insn: &iced_x86::Instruction, bytes: &[u8], mode: Mode) -> Entry {
    let mut form = String::new();
    IntelFormatter::new().format(insn, &mut form);
    Entry {
        mode,
        code: format!("{:?}", insn.code()),
        mnemonic: format!("{:?}", insn.mnemonic()).to_lowercase(),
        form,
        bytes: bytes.to_vec(),
        setup: Setup {
            soft_interrupt: catalog::soft_interrupt(insn),
            ..Setup::default()
        },
        doc: catalog::doc_meta(insn.op_code(), insn),
    }
}

/// An entry for bytes exactly as given, whether or not the decoder knows
/// them (the fuzzer's inputs, `explain --raw`): the decoded instruction's
/// code, mnemonic and form where the first instruction decodes (trailing
/// bytes are run too), `INVALID` and `(bad)` where it does not; default
/// harness setup.
pub fn raw_entry(bytes: &[u8], mode: Mode) -> Entry {
    let insn = decode_first(bytes, mode);
    if !insn.is_invalid() {
        return decoded_entry(&insn, bytes, mode);
    }
    Entry {
        mode,
        code: "INVALID".into(),
        mnemonic: "(bad)".into(),
        form: "(bad)".into(),
        bytes: bytes.to_vec(),
        setup: Setup::default(),
        doc: Default::default(),
    }
}

/// Decodes raw bytes into a catalog-shaped entry (default harness setup):
/// exactly one valid instruction.
pub fn entry_from_bytes(bytes: &[u8], mode: Mode) -> Result<Entry, ExplainError> {
    let insn = decode_first(bytes, mode);
    if insn.is_invalid() {
        return Err(ExplainError::Invalid {
            bytes: hex(bytes),
            mode: mode.description().to_string(),
        });
    }
    if insn.len() != bytes.len() {
        let mut first = String::new();
        IntelFormatter::new().format(&insn, &mut first);
        return Err(ExplainError::Trailing {
            first,
            len: insn.len(),
            total: bytes.len(),
        });
    }
    Ok(decoded_entry(&insn, bytes, mode))
}

/// Runs every entry through the whole matrix of `config` in its mode on
/// each prober and judges it as `scan` does ([`Prober::judge`]); the
/// engines' runs are attached state by state ([`Diff`]) and, for each
/// engine, the states where its outcome differs from another engine's are
/// named (a state one engine did not run is no difference).
pub fn explain(
    entries: &[Entry],
    config: Config,
    probers: Vec<Prober>,
) -> Result<Vec<Explained>, ProbeError> {
    let mut matrices: Vec<Matrix> = Vec::new();
    let n = probers.len();
    // Each engine's forms, in entry order; engines one after another.
    let mut per_engine: Vec<Vec<Explained>> = (0..n).map(|_| Vec::new()).collect();
    let mut diff = Diff { probers };
    let mut fenced: Vec<Option<GuestImage>> = Vec::new();
    for e in entries {
        let k = match matrices.iter().position(|m| m.mode == e.mode) {
            Some(k) => k,
            None => {
                matrices.push(Matrix::build(&GuestHarness, e.mode, config)?);
                fenced.push(fenced_image(&GuestHarness, e.mode, config)?);
                matrices.len() - 1
            }
        };
        let matrix = &matrices[k];
        let fence = fenced[k].as_ref();
        let x = diff.probe(matrix, e)?;
        let names: Vec<String> = x.records.iter().map(|r| r.engine.clone()).collect();
        let mut runs: Vec<Vec<Run>> = (0..n).map(|_| Vec::new()).collect();
        let mut differ: Vec<Vec<String>> = (0..n).map(|_| Vec::new()).collect();
        for case in x.cases {
            for (i, list) in differ.iter_mut().enumerate() {
                for (j, name) in names.iter().enumerate().filter(|&(j, _)| j != i) {
                    if !case.outcomes_differ(i, j) {
                        continue;
                    }
                    if let (Some(Some(a)), Some(Some(b))) = (case.runs.get(i), case.runs.get(j)) {
                        let (oa, ob) = (a.obs.outcome.short(), b.obs.outcome.short());
                        list.push(format!("{}: {oa} vs {ob} on {name}", a.state(&config)));
                    }
                }
            }
            for (i, run) in case.runs.into_iter().enumerate() {
                runs[i].extend(run);
            }
        }
        for (i, ((record, runs), differ)) in x.records.into_iter().zip(runs).zip(differ).enumerate()
        {
            let lengths = fetch_lengths(&mut diff.probers[i], fence, e, &config)?;
            per_engine[i].push(explained(record, runs, &config, differ, e, lengths));
        }
    }
    let out: Vec<Explained> = per_engine.into_iter().flatten().collect();
    Ok(out)
}

fn explained(
    record: Record,
    runs: Vec<Run>,
    config: &Config,
    engines_differ: Vec<String>,
    entry: &Entry,
    fetch_lengths: Vec<(String, FetchLength)>,
) -> Explained {
    let runs = runs
        .into_iter()
        .map(|run| {
            let user_changes = match (&run.start, &run.obs.user) {
                (Some(s), Some(u)) => diff_user(s, u),
                _ => Vec::new(),
            };
            ExplainedRun {
                state: run.state(config),
                outcome: run.obs.outcome.long(),
                system_changes: run.changed_r().iter().map(|c| c.to_string()).collect(),
                user_changes,
                detail: RunDetail::of(run),
            }
        })
        .collect();
    Explained {
        record,
        runs,
        engines_differ,
        decoder_length: {
            let insn = decode_first(&entry.bytes, entry.mode);
            (!insn.is_invalid()).then_some(insn.len())
        },
        fetch_lengths,
    }
}

/// Text for people: per form and engine the verdict first, with the state
/// pairs that decided it, then every run's outcome and changes.
pub fn render_text(items: &[Explained]) -> String {
    let mut s = String::new();
    for x in items {
        let r = &x.record;
        let v = &r.verdict;
        s.push_str(&format!(
            "{}  [{}]  bytes {}  mode {}  {}  engine {}\n",
            r.form,
            r.code,
            r.bytes,
            r.mode.name(),
            r.config,
            r.engine_version
        ));
        let mut verdict = format!("  verdict: {}", v.class);
        let kinds = r.sensitivity_kinds();
        if !kinds.is_empty() {
            verdict.push_str(&format!(" ({})", kinds.join(", ")));
        }
        match (v.violates_pg, v.violates_hybrid) {
            (true, true) => verdict.push_str(": breaks P&G theorems 1 and 3"),
            (true, false) => verdict.push_str(": breaks P&G theorem 1"),
            (false, true) => verdict.push_str(": breaks P&G theorem 3"),
            _ => {}
        }
        s.push_str(&verdict);
        s.push('\n');
        for e in &v.evidence {
            s.push_str(&format!("    because {e}\n"));
        }
        for n in &v.notes {
            s.push_str(&format!("    note: {n}\n"));
        }
        if !v.not_run.is_empty() {
            s.push_str(&format!(
                "  not run on this engine ({} of {} runs): {}\n",
                v.not_run.len(),
                v.runs,
                v.not_run.join(", ")
            ));
        }
        if let Some(d) = &r.documented {
            s.push_str(&format!("  documented facts: {d}\n"));
        }
        if let Some(d) = &r.deviation {
            s.push_str(&format!("  engine deviation: {d}\n"));
        }
        if let Some(d) = &r.doc_disagreement {
            s.push_str(&format!("  iced metadata: {d}\n"));
        }
        let d = &r.doc;
        s.push_str(&format!(
            "  iced: privileged={} cpl0-only={} io={} intel-vm-exit={} flow={}\n",
            d.is_privileged, d.must_be_cpl0, d.is_input_output, d.intel_vm_exit, d.flow_control
        ));
        for e in &x.engines_differ {
            s.push_str(&format!("  engines differ at {e}\n"));
        }
        // The states the engine does not run show as such among the runs.
        let measured: Vec<String> = x
            .fetch_lengths
            .iter()
            .filter(|(_, l)| !matches!(l, FetchLength::NotRun(_)))
            .map(|(state, l)| format!("{l} at {state}"))
            .collect();
        if !measured.is_empty() {
            let decoder = match x.decoder_length {
                Some(n) => format!("{n} by the decoder"),
                None => "the decoder finds no instruction".into(),
            };
            s.push_str(&format!("  length: {decoder}; {}\n", measured.join(", ")));
        }
        // Runs with the same outcome and changes share a line, in matrix order.
        let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
        for run in &x.runs {
            let mut what = run.outcome.clone();
            for c in run.system_changes.iter().chain(run.user_changes.iter()) {
                // Every run that completes at the sentinel moves RIP past the instruction.
                if run.outcome == "completed" && c.starts_with("rip ") {
                    continue;
                }
                what.push_str(&format!("\n        changed {c}"));
            }
            match groups.iter_mut().find(|g| g.0 == what) {
                Some(g) => g.1.push(&run.state),
                None => groups.push((what, vec![&run.state])),
            }
        }
        s.push_str(&format!("  runs ({}):\n", x.runs.len()));
        for (what, states) in groups {
            s.push_str(&format!("    {}: {what}\n", states.join(", ")));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parsing_accepts_common_spellings_and_says_where_it_fails() {
        assert_eq!(parse_hex("0f 01 05").unwrap(), vec![0x0f, 0x01, 0x05]);
        assert_eq!(parse_hex("0x0f0105").unwrap(), vec![0x0f, 0x01, 0x05]);
        assert_eq!(parse_hex("0x0f,0x01").unwrap(), vec![0x0f, 0x01]);
        assert_eq!(parse_hex("F4").unwrap(), vec![0xf4]);
        assert_eq!(
            parse_hex("0f 0g"),
            Err(ExplainError::BadHexDigit {
                position: 5,
                found: 'g'
            })
        );
        assert_eq!(
            parse_hex("0f 1"),
            Err(ExplainError::OddHex {
                group: "1".into(),
                digits: 1
            })
        );
        // Single nibbles are never bytes: "9 0" is not 90, "0 f 0 b" not UD2.
        for t in ["9 0", "0 f 0 b", "0f1", "0x"] {
            assert!(
                matches!(parse_hex(t), Err(ExplainError::OddHex { .. })),
                "{t}"
            );
            assert!(parse_target(t, false).is_err(), "{t}");
        }
        assert_eq!(parse_target("  ", false), Err(ExplainError::NoTarget));
        assert!(matches!(
            parse_target(&"a".repeat(100_000), false),
            Err(ExplainError::NameTooLong(m)) if m.len() < 80
        ));
        assert!(matches!(
            parse_hex(&"90 ".repeat(100_000)),
            Err(ExplainError::TooLong { .. })
        ));
        assert_eq!(parse_hex("  "), Err(ExplainError::Empty));
        assert!(matches!(
            parse_hex(&"90".repeat(16)),
            Err(ExplainError::TooLong { len: 16 })
        ));
        // Plain digits (the quick path) read as the general path reads
        // them (a leading space takes that path), lengths 1 to 32.
        let digits = "0123456789abcdefABCDEF";
        for n in 1..=32 {
            let t: String = digits.chars().cycle().skip(n).take(n).collect();
            assert_eq!(parse_hex(&t), parse_hex(&format!(" {t}")), "{t}");
        }
    }

    #[test]
    fn targets_are_mnemonics_unless_they_look_like_hex() {
        assert_eq!(
            parse_target("SGDT", false).unwrap(),
            Target::Mnemonic("sgdt".into(), None)
        );
        assert_eq!(
            parse_target("fadd", false).unwrap(),
            Target::Mnemonic("fadd".into(), None)
        );
        assert_eq!(
            parse_target("push  CS", false).unwrap(),
            Target::Mnemonic("push".into(), Some("cs".into()))
        );
        assert_eq!(
            parse_target("f4", false).unwrap(),
            Target::Bytes(vec![0xf4])
        );
        assert_eq!(parse_target("cc", true).unwrap(), Target::Bytes(vec![0xcc]));
    }

    #[test]
    fn mnemonic_forms_are_filtered_by_operand_text() {
        let t = parse_target("push cs", false).unwrap();
        let e = entries_for(&t, Mode::Prot32, &catalog::build(Mode::Prot32)).unwrap();
        assert!(
            !e.is_empty() && e.iter().all(|x| x.form.contains("cs")),
            "{:?}",
            e.iter().map(|x| &x.form).collect::<Vec<_>>()
        );
        let t = parse_target("push xyz", false).unwrap();
        assert!(matches!(
            entries_for(&t, Mode::Prot32, &catalog::build(Mode::Prot32)),
            Err(ExplainError::NoSuchForm { .. })
        ));
        let t = parse_target("sgtd", false).unwrap();
        match entries_for(&t, Mode::Long64, &catalog::build(Mode::Long64)) {
            Err(ExplainError::UnknownMnemonic { suggest, .. }) => {
                assert!(suggest.contains(&"sgdt".to_string()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bytes_must_be_exactly_one_valid_instruction() {
        assert!(matches!(
            entry_from_bytes(&[0x90, 0x90], Mode::Long64),
            Err(ExplainError::Trailing {
                len: 1,
                total: 2,
                ..
            })
        ));
        // PUSH ES does not exist in 64-bit mode.
        assert!(matches!(
            entry_from_bytes(&[0x06], Mode::Long64),
            Err(ExplainError::Invalid { .. })
        ));
        assert_eq!(
            entry_from_bytes(&[0x06], Mode::Prot32).unwrap().mnemonic,
            "push"
        );
    }

    #[test]
    fn the_decoder_names_the_vector_of_a_software_interrupt_once() {
        let vector = |b: &[u8], m: Mode| entry_from_bytes(b, m).unwrap().setup.soft_interrupt;
        assert_eq!(vector(&[0x66, 0x48, 0xCD, 0x21], Mode::Long64), Some(0x21));
        assert_eq!(vector(&[0xCC], Mode::Prot32), Some(3));
        assert_eq!(vector(&[0xCE], Mode::Prot32), Some(4));
        assert_eq!(vector(&[0xF1], Mode::Prot32), Some(1));
        assert_eq!(vector(&[0x90], Mode::Prot32), None);
        // Every catalog form of INT n carries its vector, and the prepared test too.
        let cat = catalog::build(Mode::Prot32);
        let ints = cat.find_mnemonic("int");
        assert!(!ints.is_empty());
        for e in ints {
            assert_eq!(
                e.setup.soft_interrupt,
                Some(e.bytes[e.bytes.len() - 1]),
                "{}",
                e.form
            );
            let image = crate::machine::GuestImage::build(
                Mode::Prot32,
                Config::UMIP_OFF,
                crate::machine::Variant::base(&Config::UMIP_OFF),
            );
            let p = image
                .prepare(crate::observe::Side::User, &e.bytes, &e.setup)
                .unwrap();
            assert_eq!(p.soft_interrupt, e.setup.soft_interrupt);
        }
    }

    #[test]
    fn explain_and_scan_agree_on_every_catalog_entry_of_a_mode() {
        use crate::engine::{self, EngineKind};
        let mode = Mode::Prot16;
        let cat = catalog::build(mode);
        let config = Config::UMIP_OFF;
        let scanned = crate::scan::run_scan(
            &cat.entries,
            &[config],
            || engine::open(EngineKind::Unicorn),
            0,
            false,
        )
        .expect("scan");
        let prober = Prober::open(std::sync::Arc::new(|| engine::open(EngineKind::Unicorn)))
            .expect("unicorn");
        let explained = explain(&cat.entries, config, vec![prober]).expect("explain");
        assert_eq!(scanned.len(), cat.entries.len());
        assert_eq!(explained.len(), scanned.len());
        for (x, r) in explained.iter().zip(&scanned) {
            assert_eq!(&x.record, r, "{} {}", r.code, r.form);
            assert_eq!(x.runs.len(), r.verdict.runs, "{}", r.code);
        }
        // Not a vacuous agreement: the mode has violators and privileged instructions.
        let count =
            |c: crate::classify::Class| scanned.iter().filter(|r| r.verdict.class == c).count();
        assert!(count(crate::classify::Class::SensitiveUnprivileged) > 10);
        assert!(count(crate::classify::Class::Privileged) > 10);
    }

    #[test]
    fn every_engine_names_the_states_where_another_engine_differs() {
        use crate::engine::fake::{obs, FakeEngine};
        use crate::observe::{Side, SystemState, UserState};
        // Three engines; the second completes HLT at CPL 3, the others trap.
        let rule = |user_completes: bool| {
            move |_: &crate::machine::Variant, side: Side, bytes: &[u8]| {
                let sys = SystemState {
                    cpl: if side == Side::User { 3 } else { 0 },
                    ..Default::default()
                };
                if bytes == [0xf4] && side == Side::User && !user_completes {
                    return obs::trap(13, Some(0), sys);
                }
                let user = UserState {
                    rip: crate::machine::TEST_RIP + bytes.len() as u64,
                    ..Default::default()
                };
                obs::completed(sys, user)
            }
        };
        let prober = |f: FakeEngine| {
            Prober::open(std::sync::Arc::new(move || {
                Ok(Box::new(f.clone()) as Box<dyn crate::engine::Engine>)
            }))
            .expect("fake")
        };
        let probers = vec![
            prober(FakeEngine::new(rule(false))),
            prober(FakeEngine::new(rule(true))),
            prober(FakeEngine::new(rule(false))),
        ];
        let e = entry_from_bytes(&[0xf4], Mode::Long64).expect("hlt");
        let x = explain(&[e], Config::UMIP_OFF, probers).expect("explain");
        assert_eq!(x.len(), 3);
        let user_states = x[0]
            .runs
            .iter()
            .filter(|r| r.state.contains("@cpl3"))
            .count();
        assert!(user_states > 1);
        // The first and third differ from the second only; the second from both.
        assert_eq!(x[0].engines_differ.len(), user_states);
        assert_eq!(x[1].engines_differ.len(), 2 * user_states);
        assert_eq!(x[2].engines_differ.len(), user_states);
        assert!(x[0].engines_differ[0].starts_with("base@cpl3: #GP(0x0) vs completed on fake"));
        assert!(x[1].engines_differ[0].starts_with("base@cpl3: completed vs #GP(0x0) on fake"));
    }
}
