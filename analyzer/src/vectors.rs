//! Portable test vectors (`popek-tv/1`, documented in `docs/test-vectors.md`):
//! per instruction, mode and configuration, every run of the matrix with its
//! initial state, its final state (changes only), its exception, its
//! observed length and each engine's view, in plain JSON that another
//! emulator can load; and their replay on an engine.
//!
//! One function, [`case_view`], turns a run into what a vector records, so
//! writing a vector and checking one compare the same thing.

use crate::catalog::Entry;
use crate::machine::{GuestImage, Variant, CODE, DATA, STACK, TEST_RIP};
use crate::mode::{Config, Mode};
use crate::observe::{vector_name, Outcome, Side, SystemState, UserState, GPR_NAMES, SEG_NAMES};
use crate::probe::{Matrix, Prober, Run};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The schema name every vector file carries.
pub const SCHEMA: &str = "popek-tv/1";

/// The largest vector file `replay` reads (a full-page vector of the whole
/// matrix is well under 1 MiB).
pub const MAX_FILE: u64 = 64 << 20;

/// The index file of a vector directory.
pub const INDEX: &str = "index.json";

/// One vector file: an instruction in one mode and configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorFile {
    pub schema: String,
    pub tool_version: String,
    pub mode: String,
    pub config: String,
    /// The iced-x86 `Code` (or the decoded one for raw bytes).
    pub code: String,
    pub mnemonic: String,
    pub form: String,
    /// The instruction's bytes, hex.
    pub bytes: String,
    /// The decoder's length of the instruction.
    pub decoder_length: usize,
    /// The engine whose start states `initial` shows.
    pub initial_from: String,
    /// Per engine: the class of its verdict.
    #[serde(deserialize_with = "crate::input::bounded_map::<_, _, 8>")]
    pub verdicts: BTreeMap<String, String>,
    /// The distinct 4 KiB memory pages of the initial states, hex; an
    /// initial state's `memory.<name>.page` is an index into this list.
    pub pages: Vec<String>,
    /// At most 4,096 read back (a file holds one per run of the matrix, some
    /// 50): each case's maps take tree nodes the memory check does not see.
    #[serde(deserialize_with = "crate::input::bounded_vec::<_, _, 4096>")]
    pub cases: Vec<Case>,
}

/// One run: the sampled state and side, its initial state, and each
/// engine's view of what came of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// `base@cpl0`, `tables-moved@cpl3`, `base@cpl0 (repeat 1)`.
    pub state: String,
    pub variant: Variant,
    pub side: Side,
    pub repeat: u8,
    /// The initial state, flat (`regs.rax`, `segs.cs.base`, `cr0`, ...).
    pub initial: BTreeMap<String, String>,
    #[serde(deserialize_with = "crate::input::bounded_map::<_, _, 8>")]
    pub engines: BTreeMap<String, View>,
}

/// What one engine made of a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// `completed`, `#GP(0x0)`, `transfer syscall -> cpl0`, `hang`, ...
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<Exception>,
    /// Bytes from the first byte to where the run stopped, when it stopped
    /// at the byte after the instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// What changed, in the names of `initial` (memory as
    /// `memory.data[0x100..0x108]` with the new bytes).
    #[serde(rename = "final")]
    pub final_state: BTreeMap<String, String>,
    /// Where this engine's initial state differs from the case's `initial`
    /// (which is `initial_from`'s): name to this engine's value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub initial_differs: BTreeMap<String, String>,
}

/// An exception the instruction raised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exception {
    pub vector: u8,
    pub name: String,
    /// `null` where the engine does not report it (Unicorn).
    pub error_code: Option<String>,
    /// RIP of the faulting instruction as the engine reports it.
    pub rip: String,
    /// The linear address of a #PF, where the engine reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

fn hx(v: u64) -> String {
    format!("{v:#x}")
}

fn hex(bytes: &[u8]) -> String {
    crate::observe::hex(bytes)
}

/// The flat names and values of a system state.
fn system_map(s: &SystemState, m: &mut BTreeMap<String, String>) {
    m.insert("cpl".into(), s.cpl.to_string());
    for (name, seg) in SEG_NAMES.iter().zip(&s.segs) {
        m.insert(format!("segs.{name}.selector"), hx(seg.selector.into()));
        if let Some((base, limit, attr)) = seg.cache {
            m.insert(format!("segs.{name}.base"), hx(base));
            m.insert(format!("segs.{name}.limit"), hx(limit.into()));
            m.insert(format!("segs.{name}.attributes"), hx(attr.into()));
        }
    }
    for (name, t) in [("gdtr", &s.gdtr), ("idtr", &s.idtr)] {
        m.insert(format!("{name}.base"), hx(t.base));
        m.insert(format!("{name}.limit"), hx(t.limit.into()));
    }
    for (name, t) in [("ldtr", &s.ldtr), ("tr", &s.tr)] {
        m.insert(format!("{name}.selector"), hx(t.selector.into()));
        m.insert(format!("{name}.base"), hx(t.base));
        m.insert(format!("{name}.limit"), hx(t.limit.into()));
    }
    for (name, v) in [
        ("cr0", s.cr0),
        ("cr3", s.cr3),
        ("cr4", s.cr4),
        ("efer", s.efer),
        ("rflags.system", s.sys_flags),
    ] {
        m.insert(name.into(), hx(v));
    }
    for (index, v) in &s.msrs {
        m.insert(format!("msr.{index:#x}"), hx(*v));
    }
}

/// The flat names and values of a user state; memory pages as full hex.
fn user_map(u: &UserState, image: &GuestImage, m: &mut BTreeMap<String, String>) {
    for (name, v) in GPR_NAMES.iter().zip(u.gprs) {
        m.insert(format!("regs.{name}"), hx(v));
    }
    m.insert("rip".into(), hx(u.rip));
    m.insert("rflags.user".into(), hx(u.flags));
    for (name, offset, phys, page) in [
        ("data", DATA, image.data_phys, &u.data),
        ("stack", STACK, image.stack_phys, &u.stack),
    ] {
        m.insert(format!("memory.{name}.offset"), hx(offset));
        m.insert(format!("memory.{name}.phys"), hx(phys));
        m.insert(format!("memory.{name}.page"), hex(page));
    }
}

/// The initial state of a run: R and M as the engine read them before the
/// instruction, and the user-visible state the harness gave it (with the
/// code page); `None` where the side has no such state.
fn initial_map(run: &Run, image: &GuestImage, entry: &Entry) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    system_map(&run.obs.before, &mut m);
    // The descriptors the harness loaded into the segment registers (the
    // same on every engine; `segs.*.base` and the like are what the engine
    // itself reports, where it does).
    if let Some(e) = image.entry(run.side) {
        for (name, d) in SEG_NAMES.iter().zip(&e.segs) {
            m.insert(
                format!("descriptors.{name}.selector"),
                hx(d.selector.into()),
            );
            m.insert(format!("descriptors.{name}.base"), hx(d.base));
            m.insert(format!("descriptors.{name}.limit"), hx(d.limit.into()));
            m.insert(format!("descriptors.{name}.attributes"), hx(d.attr.into()));
        }
    }
    if let Some(test) = image.prepare(run.side, &entry.bytes, &entry.setup) {
        m.insert("memory.code.offset".into(), hx(CODE));
        m.insert("memory.code.phys".into(), hx(image.code_phys));
        m.insert("memory.code.page".into(), hex(&test.code_page));
        if let Some(u) = image.into_initial_user_state(run.side, test) {
            user_map(&u, image, &mut m);
        }
    }
    m
}

/// The differing bytes of two pages, as `memory.<name>[a..b]` runs with
/// the new bytes.
fn page_changes(name: &str, old: &[u8], new: &[u8], out: &mut BTreeMap<String, String>) {
    let mut i = 0;
    while i < old.len().min(new.len()) {
        if old[i] == new[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < old.len().min(new.len()) && old[i] != new[i] {
            i += 1;
        }
        out.insert(
            format!("memory.{name}[{start:#x}..{i:#x}]"),
            hex(&new[start..i]),
        );
    }
}

/// What one engine made of one run, and its initial state.
pub fn case_view(run: &Run, image: &GuestImage, entry: &Entry) -> (BTreeMap<String, String>, View) {
    let initial = initial_map(run, image, entry);
    let mut fin = BTreeMap::new();
    if let Some(after) = &run.obs.after {
        let mut a = BTreeMap::new();
        system_map(after, &mut a);
        let mut b = BTreeMap::new();
        system_map(&run.obs.before, &mut b);
        for (k, v) in a {
            if b.get(&k) != Some(&v) {
                fin.insert(k, v);
            }
        }
    }
    if let (Some(start), Some(user)) = (&run.start, &run.obs.user) {
        for (name, (a, b)) in GPR_NAMES.iter().zip(start.gprs.iter().zip(&user.gprs)) {
            if a != b {
                fin.insert(format!("regs.{name}"), hx(*b));
            }
        }
        if start.rip != user.rip {
            fin.insert("rip".into(), hx(user.rip));
        }
        if start.flags != user.flags {
            fin.insert("rflags.user".into(), hx(user.flags));
        }
        page_changes("data", &start.data, &user.data, &mut fin);
        page_changes("stack", &start.stack, &user.stack, &mut fin);
    }
    let exception = match &run.obs.outcome {
        Outcome::Trap {
            vector,
            error_code,
            rip,
            address,
        } => Some(Exception {
            vector: *vector,
            name: vector_name(*vector),
            error_code: error_code.map(|e| hx(e.into())),
            rip: hx(*rip),
            address: address.map(hx),
        }),
        _ => None,
    };
    let length = match &run.obs.outcome {
        Outcome::Completed {
            rip,
            at_sentinel: true,
        } => rip.checked_sub(TEST_RIP),
        _ => None,
    };
    let view = View {
        outcome: run.obs.outcome.short(),
        exception,
        length,
        final_state: fin,
        initial_differs: BTreeMap::new(),
    };
    (initial, view)
}

/// One engine's runs of one entry, with the matrix they ran in.
pub struct EngineRuns<'a> {
    pub engine: String,
    pub class: String,
    pub runs: &'a [Run],
}

/// The vector of one entry from each engine's runs (the first engine's
/// initial states are the cases' `initial`).
pub fn vector(matrix: &Matrix, entry: &Entry, engines: &[EngineRuns<'_>]) -> VectorFile {
    let mut cases: Vec<Case> = Vec::new();
    for er in engines {
        for run in er.runs {
            let Some((_, image)) = matrix.images.iter().find(|(v, _)| *v == run.variant) else {
                continue;
            };
            let (initial, mut view) = case_view(run, image, entry);
            let state = run.state(&matrix.config);
            match cases.iter_mut().find(|c| c.state == state) {
                Some(case) => {
                    view.initial_differs = differs(&case.initial, &initial);
                    case.engines.insert(er.engine.clone(), view);
                }
                None => cases.push(Case {
                    state,
                    variant: run.variant,
                    side: run.side,
                    repeat: run.repeat,
                    initial,
                    engines: BTreeMap::from([(er.engine.clone(), view)]),
                }),
            }
        }
    }
    let mut pages: Vec<String> = Vec::new();
    for case in &mut cases {
        for (k, v) in case.initial.iter_mut() {
            if k.ends_with(".page") {
                let at = match pages.iter().position(|p| p == v) {
                    Some(i) => i,
                    None => {
                        pages.push(std::mem::take(v));
                        pages.len() - 1
                    }
                };
                *v = at.to_string();
            }
        }
    }
    VectorFile {
        schema: SCHEMA.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        mode: matrix.mode.name().into(),
        config: matrix.config.name(),
        code: entry.code.clone(),
        mnemonic: entry.mnemonic.clone(),
        form: entry.form.clone(),
        bytes: hex(&entry.bytes),
        decoder_length: entry.bytes.len(),
        initial_from: engines
            .first()
            .map(|e| e.engine.clone())
            .unwrap_or_default(),
        verdicts: engines
            .iter()
            .map(|e| (e.engine.clone(), e.class.clone()))
            .collect(),
        pages,
        cases,
    }
}

/// Name to the other map's value, where two flat states differ (a name
/// only one has maps to `absent` on the side that lacks it).
fn differs(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut d = BTreeMap::new();
    for (k, v) in b {
        if a.get(k) != Some(v) {
            d.insert(k.clone(), v.clone());
        }
    }
    for k in a.keys() {
        if !b.contains_key(k) {
            d.insert(k.clone(), "absent".into());
        }
    }
    d
}

/// The vectors of `entries` (each in its own mode) in every configuration
/// of `configs`, one per entry, mode and configuration, with every
/// prober's view; handed to `each` as they are made (in mode,
/// configuration and entry order). With `progress`, a progress bar on a
/// terminal's stderr.
pub fn generate(
    entries: &[Entry],
    configs: &[Config],
    probers: &mut [Prober],
    mut each: impl FnMut(VectorFile) -> Result<(), VectorError>,
    progress: bool,
) -> Result<(), VectorError> {
    let bar = crate::scan::progress_bar((entries.len() * configs.len()) as u64, progress);
    let mut modes: Vec<Mode> = entries.iter().map(|e| e.mode).collect();
    modes.sort();
    modes.dedup();
    for mode in modes {
        let of_mode: Vec<&Entry> = entries.iter().filter(|e| e.mode == mode).collect();
        for &config in configs {
            let matrix = Matrix::build(&crate::probe::GuestHarness, mode, config)?;
            // A chunk at a time: every prober runs it image by image.
            for chunk in of_mode.chunks(256) {
                let mut per_engine = Vec::new();
                for p in probers.iter_mut() {
                    let runs = p.probe_all(&matrix, chunk)?;
                    let classes: Vec<String> = chunk
                        .iter()
                        .zip(&runs)
                        .map(|(e, r)| p.judge(&matrix, e, r).verdict.class.name().to_string())
                        .collect();
                    per_engine.push((p.name().to_string(), classes, runs));
                }
                for (k, entry) in chunk.iter().enumerate() {
                    let views: Vec<EngineRuns<'_>> = per_engine
                        .iter()
                        .map(|(name, classes, runs)| EngineRuns {
                            engine: name.clone(),
                            class: classes[k].clone(),
                            runs: &runs[k],
                        })
                        .collect();
                    each(vector(&matrix, entry, &views))?;
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Why vectors could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a popek test vector: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{path}: {size} bytes is more than a vector file may hold ({MAX_FILE})")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{0} exists and is not a popek vector directory (no {INDEX}): refusing to replace it")]
    NotVectorDir(PathBuf),
    #[error("{0}: no test vectors there")]
    Empty(PathBuf),
    #[error("{dir}: not the whole set its {INDEX} lists: {msg}")]
    Incomplete { dir: PathBuf, msg: String },
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VectorError + '_ {
    move |source| VectorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file name of a vector (`<mode>/<config>/<Code>.json`, `:` in a
/// configuration name written `+`).
fn relative_path(v: &VectorFile, n: usize, gzip: bool) -> PathBuf {
    let stem = if n == 0 {
        v.code.clone()
    } else {
        format!("{}-{n}", v.code)
    };
    let ext = if gzip { "json.gz" } else { "json" };
    PathBuf::from(&v.mode)
        .join(v.config.replace(':', "+"))
        .join(format!("{stem}.{ext}"))
}

/// Writes vectors into `out` as a set: into a fresh directory beside it
/// ([`DirWriter::add`]), then put in its place ([`DirWriter::commit`]; a
/// previous vector directory there is replaced, any other non-empty
/// directory refused before anything is written).
pub struct DirWriter {
    out: PathBuf,
    parent: PathBuf,
    tmp: tempfile::TempDir,
    gzip: bool,
    seen: BTreeMap<PathBuf, usize>,
    files: Vec<String>,
}

impl DirWriter {
    pub fn new(out: &Path, gzip: bool) -> Result<DirWriter, VectorError> {
        crate::report::check_out_dir(out).map_err(io_err(out))?;
        if out.exists() && !out.join(INDEX).is_file() {
            let empty = std::fs::read_dir(out)
                .map_err(io_err(out))?
                .next()
                .is_none();
            if !empty {
                return Err(VectorError::NotVectorDir(out.to_path_buf()));
            }
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let tmp = tempfile::Builder::new()
            .prefix(".popek-tv-")
            .tempdir_in(&parent)
            .map_err(io_err(&parent))?;
        Ok(DirWriter {
            out: out.to_path_buf(),
            parent,
            tmp,
            gzip,
            seen: BTreeMap::new(),
            files: Vec::new(),
        })
    }

    /// Writes one vector into the set.
    pub fn add(&mut self, v: &VectorFile) -> Result<(), VectorError> {
        let base = relative_path(v, 0, self.gzip);
        let n = self.seen.entry(base).or_insert(0);
        let rel = relative_path(v, *n, self.gzip);
        *n += 1;
        let path = self.tmp.path().join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut json = serde_json::to_vec_pretty(v).map_err(|e| VectorError::Corrupt {
            path: rel.clone(),
            msg: e.to_string(),
        })?;
        json.push(b'\n');
        let bytes = if self.gzip { gz(&json) } else { json };
        std::fs::write(&path, bytes).map_err(io_err(&path))?;
        self.files.push(rel.to_string_lossy().into_owned());
        Ok(())
    }

    /// Writes the index and puts the set in place: the number of files.
    /// Until then `out` is untouched; the old set is moved aside first, so
    /// that `out` is at every moment the old set or the new one.
    pub fn commit(self) -> Result<usize, VectorError> {
        let index = serde_json::json!({
            "schema": SCHEMA,
            "tool_version": env!("CARGO_PKG_VERSION"),
            "files": self.files,
        });
        let ipath = self.tmp.path().join(INDEX);
        let mut text = serde_json::to_vec_pretty(&index).unwrap_or_default();
        text.push(b'\n');
        std::fs::write(&ipath, text).map_err(io_err(&ipath))?;
        let (out, parent) = (&self.out, &self.parent);
        let old = if out.exists() {
            let aside = tempfile::Builder::new()
                .prefix(".popek-tv-old-")
                .tempdir_in(parent)
                .map_err(io_err(parent))?;
            std::fs::rename(out, aside.path().join("old")).map_err(io_err(out))?;
            Some(aside)
        } else {
            None
        };
        let kept = self.tmp.keep();
        if let Err(e) = std::fs::rename(&kept, out) {
            // Put the old set back; the new one stays beside it to look at.
            if let Some(aside) = &old {
                let _ = std::fs::rename(aside.path().join("old"), out);
            }
            return Err(io_err(out)(e));
        }
        drop(old);
        Ok(self.files.len())
    }
}

/// [`DirWriter`] for vectors at hand.
pub fn write_dir(out: &Path, vectors: &[VectorFile], gzip: bool) -> Result<usize, VectorError> {
    let mut w = DirWriter::new(out, gzip)?;
    for v in vectors {
        w.add(v)?;
    }
    w.commit()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    // The header carries no time stamp or name (deterministic output).
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

/// Reads one vector file (`.json` or `.json.gz`), checking its schema.
pub fn read_file(path: &Path) -> Result<VectorFile, VectorError> {
    // Bounded (a regular file measured first; anything else read to the
    // limit and no further).
    let raw = crate::input::read_bytes(path, MAX_FILE).map_err(io_err(path))?;
    let text = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        let mut gz = flate2::bufread::GzDecoder::new(&raw[..]);
        (&mut gz)
            .take(MAX_FILE + 1)
            .read_to_end(&mut out)
            .map_err(|e| VectorError::Corrupt {
                path: path.to_path_buf(),
                msg: format!("gzip: {e}"),
            })?;
        if out.len() as u64 > MAX_FILE {
            return Err(VectorError::TooLarge {
                path: path.to_path_buf(),
                size: out.len() as u64,
            });
        }
        // popek writes one gzip member and nothing after it.
        let rest = gz.into_inner().len();
        if rest > 0 {
            return Err(VectorError::Corrupt {
                path: path.to_path_buf(),
                msg: format!("gzip: {rest} bytes after the compressed vector"),
            });
        }
        out
    } else {
        raw
    };
    // Not JSON, or made to take many times its size once read: said
    // before the parse builds it.
    crate::input::check_json_memory(&text).map_err(|r| VectorError::Corrupt {
        path: path.to_path_buf(),
        msg: match r {
            crate::input::JsonRefusal::Syntax(e) => e.to_string(),
            crate::input::JsonRefusal::Refused(why) => why,
        },
    })?;
    let v: VectorFile = serde_json::from_slice(&text).map_err(|e| VectorError::Corrupt {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    if v.schema != SCHEMA {
        return Err(VectorError::Corrupt {
            path: path.to_path_buf(),
            msg: format!("schema {:?}, expected {SCHEMA:?}", v.schema),
        });
    }
    Ok(v)
}

/// The index as [`list_dir`] reads it: whether it is an object, and its
/// `files` (the last given), nothing else kept.
type IndexPeek = crate::input::Peeked<FilesPeek, 1>;

/// An index's `files`: a list of names, or not.
enum FilesPeek {
    List(Vec<String>),
    /// A list with a name that is no string (the rest of it skipped).
    NotAName,
    Other,
}

impl<'de> Deserialize<'de> for FilesPeek {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::input::{skip_map, skip_seq, StringOrNot};
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FilesPeek;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of files")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FilesPeek, A::Error> {
                let mut names = Vec::new();
                while let Some(StringOrNot(n)) = seq.next_element()? {
                    // The first name that is no string is the answer: the
                    // rest is skipped, not kept.
                    let Some(n) = n else {
                        return skip_seq(seq).map(|()| FilesPeek::NotAName);
                    };
                    names.push(n);
                }
                Ok(FilesPeek::List(names))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FilesPeek, A::Error> {
                skip_map(map).map(|()| FilesPeek::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<FilesPeek, E> {
                Ok(FilesPeek::Other)
            }
            crate::input::other_json_values!(FilesPeek, FilesPeek::Other);
        }
        d.deserialize_any(V)
    }
}

/// The vector files under `dir` (`*.json`, `*.json.gz`, not the index),
/// sorted; where `dir` has an index, every file it lists must be there as
/// a regular file (also behind a symbolic link, which the walk itself
/// passes over), or the set is [`VectorError::Incomplete`].
pub fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, VectorError> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) -> Result<(), VectorError> {
        for e in std::fs::read_dir(d).map_err(io_err(d))? {
            let e = e.map_err(io_err(d))?;
            let p = e.path();
            let ft = e.file_type().map_err(io_err(&p))?;
            if ft.is_dir() {
                walk(&p, out)?;
            } else if ft.is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name != INDEX && (name.ends_with(".json") || name.ends_with(".json.gz")) {
                    out.push(p);
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    // The index names every file the set was written with: one missing,
    // or something else in its place, is a set that cannot pass whole.
    let index = dir.join(INDEX);
    if index.exists() {
        let found: std::collections::HashSet<PathBuf> = out.iter().cloned().collect();
        let text = crate::input::read_text(&index, MAX_FILE).map_err(io_err(&index))?;
        let corrupt = |msg: String| VectorError::Corrupt {
            path: index.clone(),
            msg,
        };
        crate::input::check_json_memory(text.as_bytes()).map_err(|r| {
            corrupt(match r {
                crate::input::JsonRefusal::Syntax(e) => e.to_string(),
                crate::input::JsonRefusal::Refused(why) => why,
            })
        })?;
        // Only its list of files is kept (a whole `Value` of the index
        // took many times its size: a tree node for every small object).
        let v: IndexPeek = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        let listed = match v {
            crate::input::Peeked::Object(Some(FilesPeek::List(names))) => names,
            crate::input::Peeked::Object(Some(FilesPeek::NotAName)) => {
                return Err(corrupt("a file name that is no string".into()))
            }
            _ => return Err(corrupt("no files list".into())),
        };
        for name in &listed {
            let rel = Path::new(name);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(corrupt(format!(
                    "{} is not a path inside the set",
                    crate::input::clip(name)
                )));
            }
            let path = dir.join(rel);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    if !found.contains(&path) {
                        out.push(path);
                    }
                }
                Ok(_) => {
                    return Err(VectorError::Incomplete {
                        dir: dir.to_path_buf(),
                        msg: format!("{} is not a regular file", crate::input::clip(name)),
                    })
                }
                Err(e) => {
                    return Err(VectorError::Incomplete {
                        dir: dir.to_path_buf(),
                        msg: format!("{}: {e}", crate::input::clip(name)),
                    })
                }
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(VectorError::Empty(dir.to_path_buf()));
    }
    Ok(out)
}

/// A vector's pages put back into its initial states (indices to hex).
fn resolve_pages(v: &VectorFile, case: &Case) -> Result<BTreeMap<String, String>, String> {
    let mut m = case.initial.clone();
    for (k, val) in m.iter_mut() {
        if k.ends_with(".page") {
            let i: usize = val
                .parse()
                .map_err(|_| format!("{k}: {val:?} is not a page index"))?;
            *val = v
                .pages
                .get(i)
                .cloned()
                .ok_or_else(|| format!("{k}: page {i} of {}", v.pages.len()))?;
        }
    }
    Ok(m)
}

/// Where an engine's runs of a vector's instruction differ from what the
/// vector records for that engine: one line each (case, name, the vector's
/// value, the engine's).
pub fn mismatches(
    v: &VectorFile,
    engine: &str,
    class: &str,
    matrix: &Matrix,
    entry: &Entry,
    runs: &[Run],
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let shown = |s: Option<&String>| s.cloned().unwrap_or_else(|| "absent".into());
    if v.verdicts.get(engine).map(String::as_str) != Some(class) {
        out.push(format!(
            "class: vector {}, engine {class}",
            shown(v.verdicts.get(engine))
        ));
    }
    let mut seen = Vec::new();
    for run in runs {
        let state = run.state(&matrix.config);
        let Some((_, image)) = matrix.images.iter().find(|(x, _)| *x == run.variant) else {
            continue;
        };
        let Some(case) = v.cases.iter().find(|c| c.state == state) else {
            out.push(format!("{state}: run by the engine, not in the vector"));
            continue;
        };
        seen.push(state.clone());
        let Some(want) = case.engines.get(engine) else {
            out.push(format!(
                "{state}: the vector has no view of engine {engine}"
            ));
            continue;
        };
        let (initial, mut got) = case_view(run, image, entry);
        let recorded = resolve_pages(v, case)?;
        got.initial_differs = differs(&recorded, &initial);
        let mut flat = |what: &str, a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
            for (k, bv) in b {
                if a.get(k) != Some(bv) {
                    out.push(format!(
                        "{state}: {what}.{k}: vector {}, engine {}",
                        shown(a.get(k)),
                        clip(bv)
                    ));
                }
            }
            for (k, av) in a {
                if !b.contains_key(k) {
                    out.push(format!(
                        "{state}: {what}.{k}: vector {}, engine absent",
                        clip(av)
                    ));
                }
            }
        };
        flat("initial", &want.initial_differs, &got.initial_differs);
        flat("final", &want.final_state, &got.final_state);
        if want.outcome != got.outcome {
            out.push(format!(
                "{state}: outcome: vector {}, engine {}",
                want.outcome, got.outcome
            ));
        }
        if want.exception != got.exception {
            out.push(format!(
                "{state}: exception: vector {:?}, engine {:?}",
                want.exception, got.exception
            ));
        }
        if want.length != got.length {
            out.push(format!(
                "{state}: length: vector {:?}, engine {:?}",
                want.length, got.length
            ));
        }
    }
    for case in &v.cases {
        if case.engines.contains_key(engine) && !seen.contains(&case.state) {
            out.push(format!(
                "{}: in the vector, not run by the engine",
                case.state
            ));
        }
    }
    Ok(out)
}

/// A value shortened for a mismatch line (a page is 8,192 hex digits).
fn clip(s: &str) -> String {
    if s.len() <= 40 {
        s.to_string()
    } else {
        format!("{}... ({} hex digits)", &s[..32], s.len())
    }
}

/// The mode and configuration a vector names.
pub fn parse_place(v: &VectorFile) -> Result<(Mode, Config), String> {
    let mode = v.mode.parse::<Mode>().map_err(|e| e.to_string())?;
    let config = v.config.parse::<Config>().map_err(|e| e.to_string())?;
    Ok((mode, config))
}

/// The entry a vector is of: the catalog entry of its code and bytes in its
/// mode, else its bytes decoded (default harness setup).
pub fn entry_of(
    v: &VectorFile,
    mode: Mode,
    catalog: &crate::catalog::Catalog,
) -> Result<Entry, String> {
    let bytes = crate::explain::parse_hex(&v.bytes).map_err(|e| e.to_string())?;
    if let Some(e) = catalog
        .find_code(&v.code)
        .into_iter()
        .find(|e| e.bytes == bytes)
    {
        return Ok(e.clone());
    }
    crate::explain::entry_from_bytes(&bytes, mode).map_err(|e| e.to_string())
}

/// Replays one vector on a prober: its mismatches.
pub fn replay_one(
    v: &VectorFile,
    prober: &mut Prober,
    catalogs: &mut BTreeMap<Mode, crate::catalog::Catalog>,
) -> Result<Vec<String>, String> {
    let (mode, config) = parse_place(v)?;
    let catalog = catalogs
        .entry(mode)
        .or_insert_with(|| crate::catalog::build(mode));
    let entry = entry_of(v, mode, catalog)?;
    let matrix =
        Matrix::build(&crate::probe::GuestHarness, mode, config).map_err(|e| e.to_string())?;
    let runs = prober.probe(&matrix, &entry).map_err(|e| e.to_string())?;
    let record = prober.judge(&matrix, &entry, &runs);
    let engine = prober.name().to_string();
    if !v.cases.iter().any(|c| c.engines.contains_key(&engine)) {
        return Err(format!(
            "the vector has no view of engine {engine} (it has: {})",
            v.verdicts.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    mismatches(
        v,
        &engine,
        record.verdict.class.name(),
        &matrix,
        &entry,
        &runs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineKind;
    use std::sync::Arc;

    fn unicorn() -> Prober {
        Prober::open(Arc::new(|| crate::engine::open(EngineKind::Unicorn))).expect("unicorn")
    }

    fn sgdt_vector(prober: &mut Prober) -> (VectorFile, Matrix, Entry) {
        let mode = Mode::Prot32;
        let cat = crate::catalog::build(mode);
        let entry = cat
            .find_code("Sgdt_m1632")
            .into_iter()
            .next()
            .expect("sgdt")
            .clone();
        let matrix =
            Matrix::build(&crate::probe::GuestHarness, mode, Config::UMIP_OFF).expect("matrix");
        let runs = prober.probe(&matrix, &entry).expect("runs");
        let rec = prober.judge(&matrix, &entry, &runs);
        let v = vector(
            &matrix,
            &entry,
            &[EngineRuns {
                engine: "unicorn".into(),
                class: rec.verdict.class.name().into(),
                runs: &runs,
            }],
        );
        (v, matrix, entry)
    }

    #[test]
    fn a_vector_replays_clean_and_a_tampered_one_is_caught() {
        let mut p = unicorn();
        let (v, _, _) = sgdt_vector(&mut p);
        assert_eq!(v.schema, SCHEMA);
        assert!(v.cases.len() > 10, "{}", v.cases.len());
        let base = v
            .cases
            .iter()
            .find(|c| c.state == "base@cpl0")
            .expect("base");
        let view = &base.engines["unicorn"];
        assert_eq!(view.outcome, "completed");
        assert_eq!(view.length, Some(7));
        // SGDT stores the GDTR into the data page: the final state says so.
        assert!(
            view.final_state
                .keys()
                .any(|k| k.starts_with("memory.data[")),
            "{:?}",
            view.final_state
        );
        assert!(base.initial.contains_key("segs.cs.selector"));
        assert!(base.initial.contains_key("descriptors.ss.attributes"));
        assert!(base.initial.contains_key("regs.rax"));
        let mut cats = BTreeMap::new();
        assert_eq!(replay_one(&v, &mut p, &mut cats), Ok(vec![]));

        // A changed final value is named.
        let mut t = v.clone();
        let case = t
            .cases
            .iter_mut()
            .find(|c| c.state == "base@cpl3")
            .expect("cpl3");
        let fin = &mut case.engines.get_mut("unicorn").expect("view").final_state;
        let key = fin.keys().next().expect("a change").clone();
        fin.insert(key.clone(), "ff".into());
        let m = replay_one(&t, &mut p, &mut cats).expect("replay");
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with(&format!("base@cpl3: final.{key}: vector ff")),
            "{m:?}"
        );

        // A changed initial state (a page's bytes) is named too.
        let mut t = v.clone();
        let flipped = if &t.pages[0][0..2] == "00" {
            "01"
        } else {
            "00"
        };
        t.pages[0].replace_range(0..2, flipped);
        let m = replay_one(&t, &mut p, &mut cats).expect("replay");
        assert!(
            !m.is_empty() && m.iter().all(|l| l.contains(": initial.memory.")),
            "{m:?}"
        );

        // A changed outcome and class.
        let mut t = v.clone();
        t.verdicts.insert("unicorn".into(), "innocuous".into());
        t.cases[0].engines.get_mut("unicorn").expect("view").outcome = "#GP(0x0)".into();
        let m = replay_one(&t, &mut p, &mut cats).expect("replay");
        assert!(
            m.iter().any(|l| l.starts_with("class: vector innocuous")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|l| l.contains(": outcome: vector #GP(0x0), engine completed")),
            "{m:?}"
        );
    }

    #[test]
    fn a_set_missing_a_file_its_index_lists_is_incomplete() {
        let mut p = unicorn();
        let (v, _, _) = sgdt_vector(&mut p);
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("tv");
        write_dir(&out, std::slice::from_ref(&v), false).expect("write");
        let listed = list_dir(&out).expect("list").remove(0);
        std::fs::remove_file(&listed).expect("remove");
        assert!(matches!(
            list_dir(&out),
            Err(VectorError::Incomplete { .. })
        ));
        std::fs::create_dir(&listed).expect("a directory in its place");
        let e = list_dir(&out).expect_err("a directory");
        assert!(e.to_string().contains("is not a regular file"), "{e}");
    }

    /// The index is read for its list of files only: what else it holds
    /// is skipped, a list that is not one or a name that is no string is
    /// said, and text that is not JSON is said before it is read.
    #[test]
    fn an_index_is_read_for_its_files_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let index = dir.path().join(INDEX);
        for (text, said) in [
            (r#"{"junk": [{"a": {}}, [1]], "files": []}"#, None),
            (r#"["files"]"#, Some("no files list")),
            (r#"{"files": {"a": "b"}}"#, Some("no files list")),
            (
                r#"{"files": [{"x": 1}, "a.json"]}"#,
                Some("a file name that is no string"),
            ),
            (
                r#"{"files": ["../a.json"]}"#,
                Some("is not a path inside the set"),
            ),
            (r#"{"files": []} x"#, Some("trailing characters")),
        ] {
            std::fs::write(&index, text).expect("write");
            match (list_dir(dir.path()), said) {
                // An index of no files, in a set of none: read, then empty.
                (Err(VectorError::Empty(_)), None) => {}
                (Err(e), Some(said)) => assert!(e.to_string().contains(said), "{text}: {e}"),
                (r, _) => panic!("{text}: {r:?}"),
            }
        }
    }

    #[test]
    fn vectors_are_written_as_a_set_and_read_back() {
        let mut p = unicorn();
        let (v, _, _) = sgdt_vector(&mut p);
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("tv");
        for gzip in [false, true] {
            assert_eq!(
                write_dir(&out, std::slice::from_ref(&v), gzip).expect("write"),
                1
            );
            let files = list_dir(&out).expect("list");
            assert_eq!(files.len(), 1);
            assert_eq!(read_file(&files[0]).expect("read"), v);
        }
        // The same input gives the same bytes.
        let a = std::fs::read(&list_dir(&out).expect("list")[0]).expect("read");
        write_dir(&out, std::slice::from_ref(&v), true).expect("write");
        assert_eq!(
            a,
            std::fs::read(&list_dir(&out).expect("list")[0]).expect("read")
        );
        // Another directory with files in it is not replaced.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).expect("mkdir");
        std::fs::write(other.join("keep.txt"), "mine").expect("write");
        assert!(matches!(
            write_dir(&other, std::slice::from_ref(&v), false),
            Err(VectorError::NotVectorDir(_))
        ));
        assert!(other.join("keep.txt").exists());
        // A gzip file with bytes after its one member (a second member,
        // garbage) is no vector popek wrote.
        write_dir(&out, std::slice::from_ref(&v), true).expect("write");
        let gzf = list_dir(&out).expect("list").remove(0);
        let mut bytes = std::fs::read(&gzf).expect("read");
        bytes.extend_from_slice(b"garbage");
        std::fs::write(&gzf, &bytes).expect("write");
        let e = read_file(&gzf).expect_err("trailing bytes");
        assert!(e.to_string().contains("7 bytes after"), "{e}");
        // Corrupt, foreign and huge files are errors.
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{ not json").expect("write");
        assert!(matches!(read_file(&bad), Err(VectorError::Corrupt { .. })));
        let mut foreign = v.clone();
        foreign.schema = "other/9".into();
        std::fs::write(&bad, serde_json::to_vec(&foreign).expect("json")).expect("write");
        assert!(matches!(read_file(&bad), Err(VectorError::Corrupt { .. })));
    }
}
