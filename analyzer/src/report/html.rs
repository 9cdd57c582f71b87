//! HTML for people: one self-contained page (inline CSS and script, no
//! network) with the theorem verdicts, the opcode maps as 16×16 grids
//! colored by class, the measured violators beside the documented ones
//! (Robin & Irvine's list in `corpus/expected-verdicts.tsv`), and, on the
//! comparison page, where two engines' verdicts differ.
//!
//! The text sections are written here as static HTML. The grids are drawn
//! by the page's script from compact data embedded as JSON: a string table,
//! one row of string indices per distinct record, and per (engine, mode,
//! configuration) view and opcode map the occupied cells. Which class colors
//! a cell is decided here ([`cell_class`]), not in the script.
//!
//! Escaping: text and attribute values go through [`esc`]; the JSON has
//! `<`, `>` and `&` written as `\u003c`, `\u003e` and `\u0026`, so no string
//! in it can close the script element or open a comment.

use super::md::{first_sensitivity_evidence, group_of, Group};
use super::{Report, Theorems};
use crate::classify::Class;
use crate::compare::Difference;
use crate::opmap::{self, OpMap, Position};
use crate::record::Record;
use crate::truth::{self, Expect, Facts, Finding, Status};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};

const CSS: &str = include_str!("html/page.css");
const SCRIPT: &str = include_str!("html/page.js");

/// What one page shows: one report, or (the comparison page) two with the
/// differences between them.
pub struct Page<'a> {
    pub reports: &'a [Report],
    /// The documented facts, for the table of documented violators.
    pub facts: Option<&'a Facts>,
    /// The differences between `reports[0]` and `reports[1]`
    /// ([`crate::compare::compare`]), on the comparison page.
    pub diffs: Option<&'a [Difference]>,
}

/// The order in which a cell's records decide its color: the first class in
/// this list that any record of the cell has. First what P&G turn on (the
/// violators, then the privileged instructions a trap-and-emulate VMM relies
/// on), then what keeps a cell from being judged whole (a cell with a
/// deviation or an unjudged record is never shown as innocuous), then the
/// remaining verdicts, with `unsupported` (#UD everywhere, the background of
/// the maps) last.
pub const CELL_PRIORITY: [Class; 9] = [
    Class::SensitiveUnprivileged,
    Class::Privileged,
    Class::EngineDeviation,
    Class::NotJudged,
    Class::EngineError,
    Class::Nondeterministic,
    Class::AlwaysTraps,
    Class::Innocuous,
    Class::Unsupported,
];

/// A class's place in [`CELL_PRIORITY`].
pub fn rank(c: Class) -> usize {
    CELL_PRIORITY
        .iter()
        .position(|x| *x == c)
        .unwrap_or(CELL_PRIORITY.len())
}

/// The class that colors a cell holding records of these classes: the one
/// first in [`CELL_PRIORITY`]; `None` for an empty cell.
pub fn cell_class(classes: impl IntoIterator<Item = Class>) -> Option<Class> {
    classes.into_iter().min_by_key(|c| rank(*c))
}

/// How the legend names a class.
pub fn label(c: Class) -> &'static str {
    match c {
        Class::SensitiveUnprivileged => "violator",
        Class::Privileged => "privileged",
        Class::EngineDeviation => "engine deviation",
        Class::NotJudged => "not judged",
        Class::EngineError => "engine error",
        Class::Nondeterministic => "nondeterministic",
        Class::AlwaysTraps => "always traps",
        Class::Innocuous => "innocuous",
        Class::Unsupported => "unsupported",
    }
}

/// What a class means, for the legend.
fn meaning(c: Class) -> &'static str {
    match c {
        Class::SensitiveUnprivileged => {
            "sensitive and not privileged (sensitive-unprivileged): breaks theorem 1"
        }
        Class::Privileged => "traps at CPL 3 and completes at CPL 0",
        Class::EngineDeviation => {
            "the engine executed another instruction, or completed one its own CPUID or XCR0 forbids; no verdict"
        }
        Class::NotJudged => "states that could decide it did not run on the engine; no verdict",
        Class::EngineError => "every run ended at engine level; no verdict",
        Class::Nondeterministic => "innocuous otherwise, but two runs of the same state differ",
        Class::AlwaysTraps => "traps or transfers in every state: the VMM gets control anyway",
        Class::Innocuous => "not sensitive",
        Class::Unsupported => "#UD at every CPL in every state",
    }
}

/// Escapes text for HTML element content and double- or single-quoted
/// attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON text made safe inside a `<script>` element: `<`, `>` and `&` (which
/// JSON only has inside strings) and the line separators U+2028/U+2029 as
/// `\u` escapes, which read back as the same characters.
pub fn script_safe_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for ch in json.chars() {
        match ch {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Strings, each stored once; index 0 is the empty string.
#[derive(Default)]
struct Strings {
    list: Vec<String>,
    index: HashMap<String, u32>,
}

impl Strings {
    fn new() -> Strings {
        let mut s = Strings::default();
        s.id("");
        s
    }
    fn id(&mut self, text: &str) -> u32 {
        if let Some(&i) = self.index.get(text) {
            return i;
        }
        let i = self.list.len() as u32;
        self.list.push(text.to_string());
        self.index.insert(text.to_string(), i);
        i
    }
}

/// The columns of a record row in the data, in order (each a string index,
/// but `class`, a rank in [`CELL_PRIORITY`]). The script names them the same.
const RECORD_COLUMNS: [&str; 13] = [
    "mnemonic",
    "form",
    "code",
    "bytes",
    "class",
    "encoding",
    "kinds",
    "evidence",
    "deviation",
    "doc_disagreement",
    "documented",
    "notes",
    "not_run",
];

#[derive(Serialize)]
struct ClassInfo {
    name: &'static str,
    label: &'static str,
}

/// One occupied cell: opcode byte, class rank, the mnemonic shown, the
/// records (by class priority, then in record order) with their difference
/// (an index into `diffs`, if the engines differ on it).
type Cell = (u8, usize, u32, Vec<(u32, Option<u32>)>);

#[derive(Serialize)]
struct MapData {
    name: String,
    records: usize,
    cells: Vec<Cell>,
}

#[derive(Serialize)]
struct View {
    key: String,
    engine: String,
    mode: String,
    config: String,
    theorem1: String,
    theorem3: String,
    maps: Vec<MapData>,
    /// Records whose bytes have no opcode byte (they end before it).
    unplaced: Vec<u32>,
}

/// One difference: its (mode, configuration) as text, both records (or
/// none), and the fields that differ.
type DiffRow = (u32, Option<u32>, Option<u32>, u32);

#[derive(Serialize)]
struct Data {
    columns: [&'static str; 13],
    classes: Vec<ClassInfo>,
    engines: Vec<String>,
    strings: Vec<String>,
    records: Vec<Vec<u32>>,
    views: Vec<View>,
    diffs: Vec<DiffRow>,
}

type Key<'r> = (&'r str, &'r str, &'r str, &'r str);

fn key(r: &Record) -> Key<'_> {
    (r.mode.name(), &r.config, &r.code, &r.form)
}

/// A record's place in the opcode maps, from its bytes.
fn position_of(r: &Record) -> Option<Position> {
    let bytes = crate::explain::parse_hex(&r.bytes).ok()?;
    opmap::position(r.mode, &bytes)
}

fn data(page: &Page) -> Data {
    let mut strings = Strings::new();
    let mut rows: Vec<Vec<u32>> = Vec::new();
    let mut row_index: HashMap<Vec<u32>, u32> = HashMap::new();
    // Per report, per record: its position and its row.
    let mut placed: Vec<Vec<(Option<Position>, u32)>> = Vec::new();
    // Per report, the row of the first record of a key (the one
    // `compare::compare` compares).
    let mut row_of: Vec<HashMap<Key<'_>, u32>> = Vec::new();
    for rep in page.reports {
        let mut per_record = Vec::with_capacity(rep.records.len());
        let mut by_key = HashMap::new();
        for r in &rep.records {
            let v = &r.verdict;
            let pos = position_of(r);
            let row = vec![
                strings.id(&r.mnemonic),
                strings.id(&r.form),
                strings.id(&r.code),
                strings.id(&r.bytes),
                rank(v.class) as u32,
                strings.id(pos.map(|p| p.encoding.name()).unwrap_or("")),
                strings.id(&r.sensitivity_kinds().join(", ")),
                strings.id(&r.evidence_text()),
                strings.id(r.deviation.as_deref().unwrap_or("")),
                strings.id(r.doc_disagreement.as_deref().unwrap_or("")),
                strings.id(r.documented.as_deref().unwrap_or("")),
                strings.id(&v.notes.join("; ")),
                strings.id(&v.not_run.join("; ")),
            ];
            let next = rows.len() as u32;
            let id = *row_index.entry(row.clone()).or_insert_with(|| {
                rows.push(row);
                next
            });
            per_record.push((pos, id));
            by_key.entry(key(r)).or_insert(id);
        }
        placed.push(per_record);
        row_of.push(by_key);
    }
    // The differences, and which record of which report each names.
    let mut diffs = Vec::new();
    let mut diff_of: HashMap<Key<'_>, u32> = HashMap::new();
    for d in page.diffs.unwrap_or(&[]) {
        let k: Key<'_> = (&d.mode, &d.config, &d.code, &d.form);
        let side = |n: usize| row_of.get(n).and_then(|m| m.get(&k).copied());
        diff_of.insert(k, diffs.len() as u32);
        diffs.push((
            strings.id(&format!("mode {}, {}", d.mode, d.config)),
            side(0),
            side(1),
            strings.id(&d.fields.join(", ")),
        ));
    }
    let mut views = Vec::new();
    for (n, rep) in page.reports.iter().enumerate() {
        for t in &rep.header.theorems {
            // The group's records by cell, in record order.
            let mut cells: BTreeMap<(OpMap, u8), Vec<usize>> = BTreeMap::new();
            let mut unplaced = Vec::new();
            for (i, r) in rep.records.iter().enumerate() {
                if r.mode.name() != t.mode || r.config != t.config {
                    continue;
                }
                match placed[n][i].0 {
                    Some(p) => cells.entry((p.map, p.opcode)).or_default().push(i),
                    None => unplaced.push(placed[n][i].1),
                }
            }
            let mut maps: Vec<OpMap> = OpMap::MAIN.to_vec();
            maps.extend(
                cells
                    .keys()
                    .map(|k| k.0)
                    .filter(|m| !OpMap::MAIN.contains(m)),
            );
            maps.dedup();
            let maps = maps
                .into_iter()
                .map(|map| {
                    let mut records = 0;
                    let cells = cells
                        .range((map, 0)..=(map, 0xff))
                        .map(|(&(_, op), recs)| {
                            records += recs.len();
                            // The records by class priority, then in record
                            // order: the first one decides the cell.
                            let mut recs = recs.clone();
                            recs.sort_by_key(|&i| rank(rep.records[i].verdict.class));
                            let class =
                                cell_class(recs.iter().map(|&i| rep.records[i].verdict.class))
                                    .unwrap_or(Class::Unsupported);
                            let shown = recs
                                .first()
                                .map(|&i| strings.id(&rep.records[i].mnemonic))
                                .unwrap_or(0);
                            let list = recs
                                .iter()
                                .map(|&i| {
                                    let diff = diff_of.get(&key(&rep.records[i])).copied();
                                    (placed[n][i].1, diff)
                                })
                                .collect();
                            (op, rank(class), shown, list)
                        })
                        .collect();
                    MapData {
                        name: map.name(),
                        records,
                        cells,
                    }
                })
                .collect();
            views.push(View {
                key: format!("{}/{}/{}", rep.header.engine, t.mode, t.config),
                engine: rep.header.engine.clone(),
                mode: t.mode.clone(),
                config: t.config.clone(),
                theorem1: t.verdict_text(t.theorem1_vmm),
                theorem3: t.verdict_text(t.theorem3_hybrid),
                maps,
                unplaced,
            });
        }
    }
    Data {
        columns: RECORD_COLUMNS,
        classes: CELL_PRIORITY
            .iter()
            .map(|c| ClassInfo {
                name: c.name(),
                label: label(*c),
            })
            .collect(),
        engines: page
            .reports
            .iter()
            .map(|r| r.header.engine.clone())
            .collect(),
        strings: strings.list,
        records: rows,
        views,
        diffs,
    }
}

/// Writes a page with one report (the facts beside it, if given).
pub fn write_report_html<W: Write>(w: W, report: &Report, facts: Option<&Facts>) -> io::Result<()> {
    write_html(
        w,
        &Page {
            reports: std::slice::from_ref(report),
            facts,
            diffs: None,
        },
    )
}

/// Writes the page.
pub fn write_html<W: Write>(mut w: W, page: &Page) -> io::Result<()> {
    let engines: Vec<&str> = page
        .reports
        .iter()
        .map(|r| r.header.engine.as_str())
        .collect();
    let title = if page.diffs.is_some() {
        format!("popek comparison: {}", engines.join(" vs "))
    } else {
        format!("popek report: {}", engines.join(", "))
    };
    writeln!(w, "<!DOCTYPE html>")?;
    writeln!(w, "<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">")?;
    // Nothing is fetched: the page is its own style and script.
    writeln!(
        w,
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
    )?;
    writeln!(
        w,
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    )?;
    writeln!(w, "<title>{}</title>", esc(&title))?;
    writeln!(w, "<style>\n{CSS}</style>\n</head>\n<body>")?;
    writeln!(w, "<h1>{}</h1>", esc(&title))?;
    write_facts(&mut w, page)?;
    write_theorems(&mut w, page)?;
    write_maps(&mut w, page)?;
    write_violators(&mut w, page)?;
    write_documented(&mut w, page)?;
    if let Some(diffs) = page.diffs {
        write_comparison(&mut w, page, diffs)?;
    }
    write_counts(&mut w, page)?;
    let json = serde_json::to_string(&data(page)).map_err(io::Error::from)?;
    writeln!(
        w,
        "<script type=\"application/json\" id=\"popek-data\">{}</script>",
        script_safe_json(&json)
    )?;
    writeln!(w, "<script>\n{SCRIPT}</script>\n</body>\n</html>")?;
    w.flush()
}

fn write_facts<W: Write>(w: &mut W, page: &Page) -> io::Result<()> {
    writeln!(w, "<section id=\"about\">\n<table class=\"facts\">")?;
    writeln!(
        w,
        "<tr><th>engine</th><th>version</th><th>tool</th><th>host CPU</th><th>modes</th><th>configurations</th><th>records</th></tr>"
    )?;
    for rep in page.reports {
        let h = &rep.header;
        writeln!(
            w,
            "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&h.engine),
            esc(&h.engine_version),
            esc(&h.tool),
            esc(&h.tool_version),
            esc(&h.host_cpu),
            esc(&h.modes.join(", ")),
            esc(&h.configurations.join(", ")),
            rep.records.len()
        )?;
    }
    writeln!(w, "</table>\n</section>")
}

/// The CSS class of a theorem verdict: holds, fails or not judged.
fn theorem_css(t: &Theorems, holds: bool) -> &'static str {
    match (t.not_judged(), holds) {
        (Some(_), _) => "t-not-judged",
        (None, true) => "t-holds",
        (None, false) => "t-fails",
    }
}

fn write_theorems<W: Write>(w: &mut W, page: &Page) -> io::Result<()> {
    writeln!(w, "<section id=\"theorems\">\n<h2>Theorems</h2>")?;
    writeln!(
        w,
        "<table>\n<tr><th>engine</th><th>mode</th><th>configuration</th><th>theorem 1 (VMM)</th><th>theorem 3 (hybrid VMM)</th><th>judged</th><th>not judged</th></tr>"
    )?;
    for rep in page.reports {
        for t in &rep.header.theorems {
            writeln!(
                w,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&rep.header.engine),
                esc(&t.mode),
                esc(&t.config),
                theorem_css(t, t.theorem1_vmm.holds),
                esc(&t.verdict_text(t.theorem1_vmm)),
                theorem_css(t, t.theorem3_hybrid.holds),
                esc(&t.verdict_text(t.theorem3_hybrid)),
                t.judged,
                t.unjudged
            )?;
        }
    }
    writeln!(
        w,
        "</table>\n<p class=\"note\">Theorem 1 holds iff no sensitive instruction is unprivileged, theorem 3 iff no user-sensitive one is. Records without a verdict (engine errors, engine deviations, not judged) count for neither; a group with no judged record, or a configuration the engine does not model, is not judged.</p>\n</section>"
    )
}

fn write_maps<W: Write>(w: &mut W, page: &Page) -> io::Result<()> {
    writeln!(w, "<section id=\"opcode-maps\">\n<h2>Opcode maps</h2>")?;
    writeln!(
        w,
        "<p class=\"note\">One grid per opcode map (row: high nibble, column: low nibble of the opcode byte). A cell holds every catalog encoding of that opcode byte: every form, prefix (66, F2, F3, REX), ModRM extension and VEX, EVEX or XOP variant. The map and the byte come from each record's bytes: legacy prefixes and REX are skipped, <code>0F</code>, <code>0F 38</code> and <code>0F 3A</code> name the legacy maps, VEX, EVEX and XOP are placed by their map field. The cell's color is the first class in the order below that any of its records has, and its text is the mnemonic of the first such record, with +N for the other mnemonics in the cell. Hover over a cell for its counts; click it for every record with its evidence.</p>"
    )?;
    writeln!(w, "<ol class=\"legend\">")?;
    for c in CELL_PRIORITY {
        writeln!(
            w,
            "<li><span class=\"chip c-{}\">{}</span> {}</li>",
            c.name(),
            esc(label(c)),
            esc(meaning(c))
        )?;
    }
    writeln!(w, "</ol>\n<ul class=\"legend\">")?;
    writeln!(
        w,
        "<li><span class=\"chip empty\">&nbsp;</span> no catalog encoding at this opcode byte in this mode</li>"
    )?;
    if page.diffs.is_some() {
        writeln!(
            w,
            "<li><span class=\"chip disagree\">&ne;</span> the engines' verdicts differ on a record of this cell (outline; see the engine comparison)</li>"
        )?;
    }
    writeln!(w, "</ul>")?;
    writeln!(
        w,
        "<p><label>View: <select id=\"view\"></select></label> <span id=\"view-theorems\"></span></p>"
    )?;
    writeln!(
        w,
        "<noscript><p class=\"note\">The opcode maps are drawn by the page's script; the other sections need none.</p></noscript>"
    )?;
    writeln!(
        w,
        "<div id=\"maps\"></div>\n<div id=\"unplaced\"></div>\n<div id=\"details\" class=\"details\"><p class=\"note\">Click a cell to see its records.</p></div>\n</section>"
    )
}

fn write_violators<W: Write>(w: &mut W, page: &Page) -> io::Result<()> {
    writeln!(
        w,
        "<section id=\"violators\">\n<h2>Violators (sensitive, not privileged)</h2>"
    )?;
    writeln!(
        w,
        "<p class=\"note\">As measured, grouped the way Robin &amp; Irvine grouped them; <em>documented</em> is what the table of documented facts says of the record.</p>"
    )?;
    for rep in page.reports {
        for t in &rep.header.theorems {
            let v: Vec<&Record> = rep
                .records
                .iter()
                .filter(|r| {
                    r.mode.name() == t.mode && r.config == t.config && r.verdict.violates_pg
                })
                .collect();
            writeln!(
                w,
                "<details><summary>{}, mode {}, {}: {} violators</summary>",
                esc(&rep.header.engine),
                esc(&t.mode),
                esc(&t.config),
                v.len()
            )?;
            if v.is_empty() {
                writeln!(w, "<p>None.</p></details>")?;
                continue;
            }
            writeln!(
                w,
                "<table>\n<tr><th>form</th><th>code</th><th>bytes</th><th>sensitivity</th><th>evidence</th><th>documented</th></tr>"
            )?;
            for g in Group::ALL {
                let in_group: Vec<&&Record> = v.iter().filter(|r| group_of(r) == g).collect();
                if in_group.is_empty() {
                    continue;
                }
                writeln!(
                    w,
                    "<tr><th colspan=\"6\" class=\"group\">{} ({})</th></tr>",
                    esc(g.title()),
                    in_group.len()
                )?;
                for r in in_group {
                    writeln!(
                        w,
                        "<tr><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&r.form),
                        esc(&r.code),
                        esc(&r.bytes),
                        esc(&r.sensitivity_kinds().join(", ")),
                        esc(&first_sensitivity_evidence(r)),
                        esc(r.documented.as_deref().unwrap_or("—"))
                    )?;
                }
            }
            writeln!(w, "</table>\n</details>")?;
        }
    }
    writeln!(w, "</section>")
}

/// How a finding's status reads in the documented-violators table.
fn status_text(s: &Status) -> &'static str {
    match s {
        Status::Agrees => "agrees",
        Status::KnownDeviation(_) => "known engine deviation",
        Status::Disagrees => "UNEXPECTED",
        Status::KnownDeviationFixed(_) => "agrees (listed as a known deviation)",
        Status::NotJudged => "not judged",
    }
}

fn write_documented<W: Write>(w: &mut W, page: &Page) -> io::Result<()> {
    writeln!(
        w,
        "<section id=\"documented\">\n<h2>Documented violators, as measured</h2>"
    )?;
    let Some(facts) = page.facts else {
        writeln!(
            w,
            "<p>No table of documented facts was used for this report (<code>--facts none</code>, or the table was not found).</p>\n</section>"
        )?;
        return Ok(());
    };
    let rows: Vec<&truth::Fact> = facts
        .facts
        .iter()
        .filter(|f| f.expect == Expect::Violator)
        .collect();
    writeln!(
        w,
        "<p class=\"note\">Every row of <code>{}</code> that documents a violator (Robin &amp; Irvine 2000 and the sources it cites), and what each (mode, configuration) measured for the records it covers: the classes with their counts, colored like the opcode maps, and how they stand beside the fact. — : the row does not cover this mode or configuration.</p>",
        esc(&facts.path.display().to_string())
    )?;
    for rep in page.reports {
        let findings = truth::check(&rep.records, facts);
        let mut by: HashMap<(usize, &str, &str), Vec<&Finding>> = HashMap::new();
        for f in &findings {
            by.entry((f.line, f.mode.name(), f.config.as_str()))
                .or_default()
                .push(f);
        }
        let groups = &rep.header.theorems;
        writeln!(
            w,
            "<h3>{}</h3>\n<table class=\"documented\">",
            esc(&rep.header.engine)
        )?;
        write!(w, "<tr><th>instruction</th><th>source (line)</th>")?;
        for t in groups {
            write!(w, "<th>mode {}<br>{}</th>", esc(&t.mode), esc(&t.config))?;
        }
        writeln!(w, "</tr>")?;
        for f in &rows {
            let name = match &f.unless {
                Some(u) => format!("{} unless {}", f.instruction, u),
                None => f.instruction.clone(),
            };
            write!(
                w,
                "<tr><td><code>{}</code></td><td>{} ({})</td>",
                esc(&name),
                esc(&f.source),
                f.line
            )?;
            for t in groups {
                let covered =
                    f.modes.iter().any(|m| m.name() == t.mode) && f.configs.contains(&t.config);
                if !covered {
                    write!(w, "<td class=\"na\">—</td>")?;
                    continue;
                }
                let Some(list) = by.get(&(f.line, t.mode.as_str(), t.config.as_str())) else {
                    write!(w, "<td>no record</td>")?;
                    continue;
                };
                let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
                let mut statuses: BTreeSet<&str> = BTreeSet::new();
                for x in list {
                    *counts.entry(rank(x.class)).or_default() += 1;
                    statuses.insert(status_text(&x.status));
                }
                let top = cell_class(list.iter().map(|x| x.class)).unwrap_or(Class::Unsupported);
                let text: Vec<String> = counts
                    .iter()
                    .map(|(&k, n)| format!("{} ×{n}", label(CELL_PRIORITY[k])))
                    .collect();
                let title: Vec<String> = list
                    .iter()
                    .map(|x| {
                        format!(
                            "{} ({}): {}, {}",
                            x.form,
                            x.code,
                            x.class,
                            status_text(&x.status)
                        )
                    })
                    .collect();
                write!(
                    w,
                    "<td class=\"m c-{}\" title=\"{}\">{}<br><small>{}</small></td>",
                    top.name(),
                    esc(&title.join("\n")),
                    esc(&text.join(", ")),
                    esc(&statuses.into_iter().collect::<Vec<_>>().join(", "))
                )?;
            }
            writeln!(w, "</tr>")?;
        }
        writeln!(w, "</table>")?;
    }
    writeln!(w, "</section>")
}

fn write_comparison<W: Write>(w: &mut W, page: &Page, diffs: &[Difference]) -> io::Result<()> {
    let name = |i: usize| {
        page.reports
            .get(i)
            .map(|r| r.header.engine.as_str())
            .unwrap_or("?")
    };
    writeln!(w, "<section id=\"comparison\">\n<h2>Engine comparison</h2>")?;
    writeln!(
        w,
        "<p>{} {} between {} and {}: every instruction and configuration where their verdicts differ, or that only one of them has.</p>",
        diffs.len(),
        crate::report::plural(diffs.len(), "difference", "differences"),
        esc(name(0)),
        esc(name(1))
    )?;
    if !diffs.is_empty() {
        // Per (mode, configuration): how many, and from which class to which.
        let mut groups: Vec<(String, String)> = Vec::new();
        let mut moves: BTreeMap<(String, String), BTreeMap<(String, String), usize>> =
            BTreeMap::new();
        for d in diffs {
            let g = (d.mode.clone(), d.config.clone());
            if !groups.contains(&g) {
                groups.push(g.clone());
            }
            let class = |s: &Option<crate::compare::Side>| {
                s.as_ref()
                    .map(|s| s.class.clone())
                    .unwrap_or_else(|| "no record".into())
            };
            *moves
                .entry(g)
                .or_default()
                .entry((class(&d.a), class(&d.b)))
                .or_default() += 1;
        }
        writeln!(
            w,
            "<table>\n<tr><th>mode</th><th>configuration</th><th>differences</th><th>{} → {}</th></tr>",
            esc(name(0)),
            esc(name(1))
        )?;
        for g in &groups {
            let m = &moves[g];
            let total: usize = m.values().sum();
            let text: Vec<String> = m
                .iter()
                .map(|((a, b), n)| format!("{a} → {b}: {n}"))
                .collect();
            writeln!(
                w,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&g.0),
                esc(&g.1),
                total,
                esc(&text.join("; "))
            )?;
        }
        writeln!(w, "</table>")?;
        writeln!(
            w,
            "<p><label>Differences of: <select id=\"diff-group\"></select></label></p>\n<div id=\"diff-list\"></div>"
        )?;
    }
    writeln!(w, "</section>")
}

fn write_counts<W: Write>(w: &mut W, page: &Page) -> io::Result<()> {
    writeln!(
        w,
        "<section id=\"counts\">\n<h2>Counts per class</h2>\n<table>"
    )?;
    write!(w, "<tr><th>engine</th><th>mode</th><th>configuration</th>")?;
    for c in CELL_PRIORITY {
        write!(w, "<th class=\"c-{}\">{}</th>", c.name(), esc(label(c)))?;
    }
    writeln!(w, "</tr>")?;
    for rep in page.reports {
        for g in &rep.header.counts {
            write!(
                w,
                "<tr><td>{}</td><td>{}</td><td>{}</td>",
                esc(&rep.header.engine),
                esc(&g.mode),
                esc(&g.config)
            )?;
            for c in CELL_PRIORITY {
                write!(
                    w,
                    "<td>{}</td>",
                    g.classes.get(c.name()).copied().unwrap_or(0)
                )?;
            }
            writeln!(w, "</tr>")?;
        }
    }
    writeln!(w, "</table>\n</section>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::record;
    use crate::report::tests::sample;

    fn render(page: &Page) -> String {
        let mut out = Vec::new();
        write_html(&mut out, page).expect("write");
        String::from_utf8(out).expect("utf8")
    }

    /// The embedded data, read back.
    fn embedded(html: &str) -> serde_json::Value {
        let start = html
            .find("<script type=\"application/json\" id=\"popek-data\">")
            .expect("data")
            + "<script type=\"application/json\" id=\"popek-data\">".len();
        let end = start + html[start..].find("</script>").expect("end");
        serde_json::from_str(&html[start..end]).expect("json")
    }

    #[test]
    fn the_first_class_in_the_priority_colors_a_cell() {
        use Class::*;
        assert_eq!(
            cell_class([Innocuous, SensitiveUnprivileged, Privileged]),
            Some(SensitiveUnprivileged)
        );
        assert_eq!(cell_class([Innocuous, Privileged]), Some(Privileged));
        // A cell with one record the engine got wrong is not innocuous.
        assert_eq!(
            cell_class([Innocuous, EngineDeviation]),
            Some(EngineDeviation)
        );
        assert_eq!(
            cell_class([Unsupported, NotJudged, AlwaysTraps]),
            Some(NotJudged)
        );
        assert_eq!(cell_class([Unsupported, Innocuous]), Some(Innocuous));
        assert_eq!(cell_class([Unsupported, AlwaysTraps]), Some(AlwaysTraps));
        assert_eq!(cell_class([]), None);
        // Every class has a place.
        for c in Class::ALL {
            assert!(rank(c) < CELL_PRIORITY.len(), "{c}");
        }
    }

    #[test]
    fn cells_hold_their_records_and_the_theorem_texts() {
        let html = render(&Page {
            reports: &[sample()],
            facts: None,
            diffs: None,
        });
        // The verdicts at the top, in the CLI's words.
        assert!(
            html.contains("<td class=\"t-fails\">fails (1 violators)</td>"),
            "{html}"
        );
        assert!(html.contains("<td class=\"t-holds\">holds</td>"), "{html}");
        let d = embedded(&html);
        let views = d["views"].as_array().expect("views");
        assert_eq!(views.len(), 2);
        assert_eq!(views[0]["key"], "fake/32/umip=off");
        assert_eq!(views[0]["theorem1"], "fails (1 violators)");
        // The sample's records are all 0F 01: one cell, colored violator,
        // showing sgdt, with the three records of umip=off.
        let maps = views[0]["maps"].as_array().expect("maps");
        let names: Vec<&str> = maps.iter().filter_map(|m| m["name"].as_str()).collect();
        assert_eq!(names, ["one-byte", "0F", "0F38", "0F3A"]);
        let cells = maps[1]["cells"].as_array().expect("cells");
        assert_eq!(cells.len(), 1);
        let cell = &cells[0];
        assert_eq!(cell[0], 0x01);
        assert_eq!(
            d["classes"][cell[1].as_u64().expect("rank") as usize]["name"],
            "sensitive-unprivileged"
        );
        let strings = d["strings"].as_array().expect("strings");
        assert_eq!(
            strings[cell[2].as_u64().expect("mnemonic") as usize],
            "sgdt"
        );
        assert_eq!(cell[3].as_array().map(Vec::len), Some(3));
        // umip=on has only the privileged SGDT.
        let on = &views[1]["maps"][1]["cells"][0];
        assert_eq!(
            d["classes"][on[1].as_u64().expect("rank") as usize]["name"],
            "privileged"
        );
    }

    #[test]
    fn text_and_data_are_escaped() {
        let mut evil = record("sgdt", Class::SensitiveUnprivileged, false);
        evil.form = "</script><script>alert(1)</script>".into();
        evil.documented = Some("a & b <i>\"q\" 'q'</i>\u{2028}".into());
        let rep = Report::with_host("fake<b>", "1", "CPU </title>", vec![evil]);
        let html = render(&Page {
            reports: &[rep],
            facts: None,
            diffs: None,
        });
        // Only the page's own two script elements close.
        assert_eq!(html.matches("</script>").count(), 2, "{html}");
        assert!(!html.contains("<script>alert"));
        assert!(!html.contains("<b>") && !html.contains("<i>"));
        assert!(html.contains("popek report: fake&lt;b&gt;"));
        assert!(html.contains("CPU &lt;/title&gt;"));
        assert!(html.contains("&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("a &amp; b &lt;i&gt;&quot;q&quot; &#39;q&#39;&lt;/i&gt;"));
        // The data reads back as the very strings.
        let d = embedded(&html);
        let strings: Vec<&str> = d["strings"]
            .as_array()
            .expect("strings")
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        assert!(strings.contains(&"</script><script>alert(1)</script>"));
        assert!(strings.contains(&"a & b <i>\"q\" 'q'</i>\u{2028}"));
    }

    #[test]
    fn nothing_is_fetched() {
        let html = render(&Page {
            reports: &[sample()],
            facts: None,
            diffs: None,
        });
        assert!(html.contains("default-src 'none'"));
        for needle in ["http://", "https://", " src=", "<link", "@import", "url("] {
            assert!(!html.contains(needle), "{needle}");
        }
    }

    #[test]
    fn documented_violators_beside_the_measured_ones() {
        let facts = Facts::parse(
            "instruction\tmodes\tconfig\texpect\tsource\tknown_deviation\n\
             sgdt\t*\tumip=off\tviolator\tRobin & Irvine 2000\t\n\
             sgdt\t*\tumip=on\tprivileged\tIntel SDM\t\n\
             hlt\t64\t*\tviolator\tnot a fact\t\n",
            std::path::Path::new("t.tsv"),
        )
        .expect("facts");
        let html = render(&Page {
            reports: &[sample()],
            facts: Some(&facts),
            diffs: None,
        });
        let section = &html[html.find("id=\"documented\"").expect("section")..];
        let section = &section[..section.find("</section>").expect("end")];
        // Violator rows only; sgdt measured a violator in umip=off, and the
        // row does not cover umip=on; the 64-bit row covers no 32-bit record.
        assert!(section.contains("<code>sgdt</code></td><td>Robin &amp; Irvine 2000 (2)</td><td class=\"m c-sensitive-unprivileged\""), "{section}");
        assert!(
            section.contains("violator ×1<br><small>agrees</small>"),
            "{section}"
        );
        assert!(section.contains("<td class=\"na\">—</td>"), "{section}");
        assert!(!section.contains("Intel SDM"), "{section}");
        assert!(section.contains("<code>hlt</code></td><td>not a fact (4)</td><td class=\"na\">—</td><td class=\"na\">—</td></tr>"), "{section}");
        // Without facts the section says so.
        let html = render(&Page {
            reports: &[sample()],
            facts: None,
            diffs: None,
        });
        assert!(html.contains("No table of documented facts was used"));
    }

    #[test]
    fn the_comparison_marks_the_cells_where_engines_differ() {
        let a = sample();
        let mut b_records = a.records.clone();
        for r in b_records.iter_mut() {
            r.engine = "other".into();
        }
        // The other engine finds SGDT privileged without UMIP.
        b_records[1].verdict = crate::record::tests::verdict(Class::Privileged);
        let b = Report::with_host("other", "2", "Test CPU", b_records);
        let diffs = crate::compare::compare(&a.records, &b.records);
        assert_eq!(diffs.len(), 1);
        let html = render(&Page {
            reports: &[a, b],
            facts: None,
            diffs: Some(&diffs),
        });
        assert!(html.contains("<h1>popek comparison: fake vs other</h1>"));
        assert!(html.contains("<td>32</td><td>umip=off</td><td>1</td><td>sensitive-unprivileged → privileged: 1</td>"), "{html}");
        let d = embedded(&html);
        assert_eq!(d["engines"], serde_json::json!(["fake", "other"]));
        assert_eq!(d["diffs"].as_array().map(Vec::len), Some(1));
        // In both engines' umip=off views the 0F 01 cell names difference 0
        // for SGDT, and nothing for HLT and ADD; umip=on has none.
        let views = d["views"].as_array().expect("views");
        assert_eq!(views.len(), 4);
        let strings = d["strings"].as_array().expect("strings");
        for v in [&views[0], &views[2]] {
            let recs = v["maps"][1]["cells"][0][3].as_array().expect("records");
            let marked: Vec<&str> = recs
                .iter()
                .filter(|x| x[1] == 0)
                .filter_map(|x| d["records"][x[0].as_u64().expect("row") as usize][0].as_u64())
                .filter_map(|s| strings[s as usize].as_str())
                .collect();
            assert_eq!(marked, ["sgdt"]);
            assert_eq!(recs.iter().filter(|x| x[1].is_null()).count(), 2);
        }
        let on = views[1]["maps"][1]["cells"][0][3]
            .as_array()
            .expect("records");
        assert!(on.iter().all(|x| x[1].is_null()));
        // The other engine's cell is privileged now.
        assert_eq!(views[2]["maps"][1]["cells"][0][1], rank(Class::Privileged));
    }

    #[test]
    fn identical_records_are_stored_once() {
        let r = sample();
        let html = render(&Page {
            reports: std::slice::from_ref(&r),
            facts: None,
            diffs: None,
        });
        let d = embedded(&html);
        // Four records, but SGDT privileged (umip=on) differs from every
        // other only by its configuration, which a row does not hold: still
        // four distinct rows (hlt, sgdt violator, add, sgdt privileged).
        assert_eq!(d["records"].as_array().map(Vec::len), Some(4));
        let mut twice = r.records.clone();
        for x in r.records.iter().cloned() {
            let mut x = x;
            x.config = "umip=on:iopl=3".into();
            twice.push(x);
        }
        let rep = Report::with_host("fake", "fake 1", "Test CPU", twice);
        let html = render(&Page {
            reports: &[rep],
            facts: None,
            diffs: None,
        });
        let d = embedded(&html);
        assert_eq!(d["records"].as_array().map(Vec::len), Some(4));
        assert_eq!(d["views"].as_array().map(Vec::len), Some(3));
    }
}
