//! Reports: CSV for tools, JSON to keep and read back, Markdown and HTML for people.
//! Every writer is generic over `io::Write` and byte-for-byte deterministic
//! (no timestamps, stable order, no floats). Files are written atomically.

pub mod csv;
pub mod html;
pub mod json;
pub mod junit;
pub mod md;

use crate::classify::Class;
use crate::record::Record;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

pub use crate::classify::theorem::{TheoremResult, Theorems};
pub use json::read_report;

/// The name of this tool in report headers.
pub const TOOL: &str = "popek";

/// A complete report: header facts and the records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub header: Header,
    pub records: Vec<Record>,
}

/// Facts about a scan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub tool: String,
    pub tool_version: String,
    pub engine: String,
    pub engine_version: String,
    /// The host: CPU vendor, family, model, stepping and name, microcode,
    /// whether the kernel runs with UMIP, and the kernel release
    /// ([`crate::host::HostFacts::text`]).
    pub host_cpu: String,
    /// Modes in report order (`16`, `32`, ...).
    pub modes: Vec<String>,
    /// Configuration names in the order of the records.
    pub configurations: Vec<String>,
    /// Per (mode, configuration): how many records of each class.
    #[serde(deserialize_with = "crate::input::bounded_vec::<_, _, 4096>")]
    pub counts: Vec<GroupCounts>,
    /// Per (mode, configuration): the theorem verdicts.
    pub theorems: Vec<Theorems>,
}

/// Class counts of one (mode, configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounts {
    pub mode: String,
    pub config: String,
    /// Class name to count; every class is present.
    #[serde(deserialize_with = "crate::input::bounded_map::<_, _, 64>")]
    pub classes: BTreeMap<String, usize>,
}

impl Report {
    /// A report over `records` (kept in their order), with the host's CPU name.
    pub fn new(engine: &str, engine_version: &str, records: Vec<Record>) -> Report {
        Report::with_host(engine, engine_version, &host_cpu(), records)
    }

    /// A report with a given host CPU name (for tests and reproducible output).
    pub fn with_host(
        engine: &str,
        engine_version: &str,
        host_cpu: &str,
        records: Vec<Record>,
    ) -> Report {
        let mut modes: Vec<_> = records.iter().map(|r| r.mode).collect();
        modes.sort();
        modes.dedup();
        let mut configurations: Vec<String> = Vec::new();
        for r in &records {
            if !configurations.contains(&r.config) {
                configurations.push(r.config.clone());
            }
        }
        let mut counts = Vec::new();
        let mut theorems = Vec::new();
        for m in &modes {
            for c in &configurations {
                let group: Vec<&Record> = records
                    .iter()
                    .filter(|r| r.mode == *m && r.config == *c)
                    .collect();
                if group.is_empty() {
                    continue;
                }
                let mut classes: BTreeMap<String, usize> = Class::ALL
                    .iter()
                    .map(|k| (k.name().to_string(), 0))
                    .collect();
                for r in &group {
                    *classes
                        .entry(r.verdict.class.name().to_string())
                        .or_default() += 1;
                }
                counts.push(GroupCounts {
                    mode: m.name().into(),
                    config: c.clone(),
                    classes,
                });
                theorems.push(Theorems::judge(
                    *m,
                    c,
                    group.iter().map(|r| &r.verdict),
                    crate::engine::unmodeled(engine, c),
                ));
            }
        }
        Report {
            header: Header {
                tool: TOOL.into(),
                tool_version: env!("CARGO_PKG_VERSION").into(),
                engine: engine.into(),
                engine_version: engine_version.into(),
                host_cpu: host_cpu.into(),
                modes: modes.iter().map(|m| m.name().to_string()).collect(),
                configurations,
                counts,
                theorems,
            },
            records,
        }
    }
}

/// The host facts every report header carries.
pub fn host_cpu() -> String {
    crate::host::HostFacts::read().text()
}

/// Why a report could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write report {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove the stale report {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read report {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not valid JSON (line {line}, column {column}): {msg}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{} is not a popek report: {why}", path.display())]
    NotAReport { path: PathBuf, why: String },
    #[error("unknown report format '{0}': expected csv, json, md or html")]
    UnknownFormat(String),
}

/// A report format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    Csv,
    Json,
    Md,
    Html,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Csv, Format::Json, Format::Md, Format::Html];
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Md => "md",
            Format::Html => "html",
        }
    }
    /// Writes `report` in this format.
    pub fn write<W: Write>(self, w: W, report: &Report) -> io::Result<()> {
        self.write_with_facts(w, report, None)
    }
    /// Writes `report` in this format; the HTML page also puts the
    /// documented violators of `facts` beside the measured ones.
    pub fn write_with_facts<W: Write>(
        self,
        w: W,
        report: &Report,
        facts: Option<&crate::truth::Facts>,
    ) -> io::Result<()> {
        match self {
            Format::Csv => csv::write_csv(w, &report.records),
            Format::Json => json::write_json(w, report),
            Format::Md => md::write_md(w, report),
            Format::Html => html::write_report_html(w, report, facts),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

impl FromStr for Format {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "md" | "markdown" => Ok(Format::Md),
            "html" => Ok(Format::Html),
            other => Err(ReportError::UnknownFormat(other.into())),
        }
    }
}

/// Temporary report files not yet renamed into place, in every set of this
/// process; [`abandon_pending`] removes them when the process is stopped.
/// A commit holds the lock while it renames, so a stop never splits a set.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every temporary report file of this process and keeps the lock,
/// so no set is committed afterwards: for a signal handler that exits next.
pub fn abandon_pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    let mut g = pending();
    for p in g.drain(..) {
        let _ = fs::remove_file(&p);
    }
    g
}

/// Whether `out` can be an output directory: nothing there yet, or a
/// directory. Something else in its place is an error that says so (where
/// creating it would say "File exists" and reading it "Not a directory").
/// Every command's `--out` is checked with it.
pub fn check_out_dir(out: &Path) -> io::Result<()> {
    match fs::metadata(out) {
        Ok(m) if !m.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "--out names something that is not a directory",
        )),
        _ => Ok(()),
    }
}

/// Whether a set may put a file at `path`: nothing there, or a regular
/// file (also behind a symbolic link). A directory, a device, a fifo or a
/// socket is refused: a rename would put a file in the place of
/// `/dev/full` or a pipe. [`ReportSet::commit`] checks every target so; a
/// command that runs long checks its targets with it before it starts.
pub fn check_target(path: &Path) -> Result<(), ReportError> {
    let Ok(m) = fs::metadata(path) else {
        return Ok(());
    };
    let (kind, why) = if m.is_dir() {
        (io::ErrorKind::IsADirectory, "a directory is in the way")
    } else if !m.is_file() {
        (
            io::ErrorKind::InvalidInput,
            "not a regular file (a device, fifo or socket is in the way): \
             popek replaces report files, and writes into nothing else",
        )
    } else {
        return Ok(());
    };
    Err(ReportError::Write {
        path: path.to_path_buf(),
        source: io::Error::new(kind, why),
    })
}

/// A set of report files written together: every file is written to a
/// temporary file of its own in the target directory (a fresh name created
/// with O_EXCL, so an existing file or a symlink planted there is never
/// followed), flushed and synced; [`ReportSet::commit`] then renames them all
/// into place and removes the files the set says are stale. If anything
/// fails before the commit, every temporary file is removed and the previous
/// set is left whole.
pub struct ReportSet {
    dir: PathBuf,
    files: Vec<(PathBuf, tempfile::NamedTempFile)>,
    stale: Vec<PathBuf>,
}

impl ReportSet {
    /// An empty set of files in `dir` (which must exist).
    pub fn new(dir: &Path) -> ReportSet {
        ReportSet {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            stale: Vec::new(),
        }
    }

    /// Writes `name` (a file name in the set's directory) to a temporary file.
    pub fn add<F>(&mut self, name: &str, write: F) -> Result<(), ReportError>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        let path = self.dir.join(name);
        let err = |source| ReportError::Write {
            path: path.clone(),
            source,
        };
        if name.contains('/') || self.files.iter().any(|(p, _)| *p == path) {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a new file name of the set",
            )));
        }
        // 0666 less the umask, as for any file the user creates (a random
        // temporary name would otherwise be 0600).
        use std::os::unix::fs::PermissionsExt;
        // Created and registered under the lock, so a stop never falls
        // between the two and leaves the file behind.
        let mut g = pending();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(fs::Permissions::from_mode(0o666))
            .tempfile_in(&self.dir)
            .map_err(err)?;
        g.push(tmp.path().to_path_buf());
        drop(g);
        let result = (|| {
            let mut w = BufWriter::new(tmp.as_file());
            write(&mut w)?;
            w.flush()?;
            drop(w);
            tmp.as_file().sync_all()
        })();
        if let Err(e) = result {
            discard(tmp);
            return Err(err(e));
        }
        self.files.push((path, tmp));
        Ok(())
    }

    /// Writes `report` in each format as `popek-<engine>.<ext>`.
    pub fn add_report(&mut self, formats: &[Format], report: &Report) -> Result<(), ReportError> {
        self.add_report_with_facts(formats, report, None)
    }

    /// Like [`ReportSet::add_report`], with the documented facts the HTML
    /// page shows beside the measured violators.
    pub fn add_report_with_facts(
        &mut self,
        formats: &[Format],
        report: &Report,
        facts: Option<&crate::truth::Facts>,
    ) -> Result<(), ReportError> {
        for f in formats {
            self.add(&report_name(&report.header.engine, *f), |w| {
                f.write_with_facts(w, report, facts)
            })?;
        }
        Ok(())
    }

    /// A file of an earlier set that this set replaces by its absence: it is
    /// removed at the commit (if it exists), so it cannot read as current.
    pub fn remove_stale(&mut self, name: &str) {
        self.stale.push(self.dir.join(name));
    }

    /// Renames every file into place, then removes the stale ones; returns
    /// the paths written. The lock is held throughout, so a stop lands
    /// before or after the whole commit. A target that is a directory, or
    /// anything else but a regular file (a device, a fifo, a socket; also
    /// through a symbolic link), is refused before anything is renamed: a
    /// rename would put a report in the place of `/dev/full` or a pipe.
    pub fn commit(mut self) -> Result<Vec<PathBuf>, ReportError> {
        // Checked while the set still holds its files, so that a refusal
        // drops them through `Drop`, which forgets them too.
        for (path, _) in &self.files {
            check_target(path)?;
        }
        let files = std::mem::take(&mut self.files);
        let stale = std::mem::take(&mut self.stale);
        let mut g = pending();
        let mut written = Vec::new();
        let mut failed = None;
        for (path, tmp) in files {
            let t = tmp.path().to_path_buf();
            if failed.is_some() {
                drop(tmp);
                g.retain(|p| *p != t);
                continue;
            }
            match tmp.persist(&path) {
                Ok(_) => written.push(path),
                Err(e) => {
                    drop(e.file);
                    failed = Some(ReportError::Write {
                        path,
                        source: e.error,
                    })
                }
            }
            g.retain(|p| *p != t);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for p in stale {
            if !written.contains(&p) {
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(ReportError::Remove { path: p, source }),
                }
            }
        }
        drop(g);
        Ok(written)
    }
}

/// Removes a temporary file and forgets it, under the lock (so a stop in
/// between cannot find it registered but gone, or gone unregistered).
fn discard(tmp: tempfile::NamedTempFile) {
    let mut g = pending();
    let t = tmp.path().to_path_buf();
    drop(tmp);
    g.retain(|p| *p != t);
}

impl Drop for ReportSet {
    /// A set dropped before its commit (a later file failed) removes its
    /// temporary files.
    fn drop(&mut self) {
        for (_, tmp) in self.files.drain(..) {
            discard(tmp);
        }
    }
}

/// The file name of an engine's report in a format: `popek-<engine>.<ext>`.
/// The word for `n` things: `one` for one, else `many`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_string()
    } else {
        many.to_string()
    }
}

pub fn report_name(engine: &str, format: Format) -> String {
    format!("popek-{engine}.{}", format.extension())
}

/// Writes one file atomically (a set of one).
pub fn write_atomic<F>(path: &Path, write: F) -> Result<(), ReportError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ReportError::Write {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut set = ReportSet::new(dir);
    set.add(name, write)?;
    set.commit().map(|_| ())
}

/// Writes `report` into `dir` in each format as `popek-<engine>.<ext>`, as
/// one set; returns the paths written.
pub fn write_reports(
    dir: &Path,
    formats: &[Format],
    report: &Report,
) -> Result<Vec<PathBuf>, ReportError> {
    let mut set = ReportSet::new(dir);
    set.add_report(formats, report)?;
    set.commit()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::tests::record;

    pub(crate) fn sample() -> Report {
        let mut umip = record("sgdt", Class::Privileged, false);
        umip.config = "umip=on".into();
        Report::with_host(
            "fake",
            "fake 1",
            "Test CPU",
            vec![
                record("hlt", Class::Privileged, true),
                record("sgdt", Class::SensitiveUnprivileged, false),
                record("add", Class::Innocuous, false),
                umip,
            ],
        )
    }

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("popek-report-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    /// A fifo (directly or through a symbolic link) where a report goes is
    /// refused and left as it was, not replaced by a regular file.
    #[test]
    fn a_target_that_is_no_regular_file_is_refused_and_kept() {
        use std::os::unix::fs::FileTypeExt;
        let d = scratch("fifo-target");
        let fifo = d.join("out.md");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
        // SAFETY: mkfifo reads the NUL-terminated path, alive for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let link = d.join("link.md");
        std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
        for target in [&fifo, &link] {
            let e = write_atomic(target, |w| w.write_all(b"report")).expect_err("refused");
            let why = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default();
            assert!(why.contains("not a regular file"), "{e}: {why}");
        }
        assert!(fs::metadata(&fifo).expect("fifo").file_type().is_fifo());
        assert!(fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink());
        // No temporary file left beside them.
        let left: Vec<_> = fs::read_dir(&d)
            .expect("dir")
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn header_counts_and_theorems_per_configuration() {
        let r = sample();
        assert_eq!(r.header.modes, vec!["32"]);
        assert_eq!(r.header.configurations, vec!["umip=off", "umip=on"]);
        assert_eq!(r.header.counts[0].classes["privileged"], 1);
        assert_eq!(r.header.counts[0].classes["sensitive-unprivileged"], 1);
        assert_eq!(r.header.counts[0].classes["unsupported"], 0);
        let t = &r.header.theorems;
        assert_eq!(
            t[0].theorem1_vmm,
            TheoremResult {
                holds: false,
                violators: 1
            }
        );
        assert_eq!(
            t[0].theorem3_hybrid,
            TheoremResult {
                holds: false,
                violators: 1
            }
        );
        assert_eq!(
            (t[1].config.as_str(), t[1].theorem1_vmm.holds),
            ("umip=on", true)
        );
    }

    #[test]
    fn engine_errors_are_not_judged_by_the_theorems() {
        let r = Report::with_host(
            "fake",
            "fake 1",
            "Test CPU",
            vec![record("hlt", Class::EngineError, true)],
        );
        // Nothing judged: neither theorem holds, both are "not judged".
        let t = &r.header.theorems[0];
        assert!(!t.theorem1_vmm.holds && !t.theorem3_hybrid.holds);
        assert_eq!((t.unjudged, t.judged), (1, 0));
        let mut out = Vec::new();
        md::write_md(&mut out, &r).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains(
            "| 32 | umip=off | not judged (1 records: engine errors, deviations or states not run) | not judged"
        ));
        // One judged innocuous record beside it: the theorems hold, with the
        // unjudged one named.
        let r = Report::with_host(
            "fake",
            "fake 1",
            "Test CPU",
            vec![
                record("hlt", Class::EngineError, true),
                record("add", Class::Innocuous, false),
            ],
        );
        let t = &r.header.theorems[0];
        assert!(t.theorem1_vmm.holds && t.theorem3_hybrid.holds);
        assert_eq!((t.unjudged, t.judged), (1, 1));
        let mut out = Vec::new();
        md::write_md(&mut out, &r).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains(
            "| 32 | umip=off | holds, 1 not judged (engine errors, deviations or states not run) |"
        ));
    }

    #[test]
    fn every_format_is_byte_for_byte_deterministic() {
        for f in Format::ALL {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            f.write(&mut a, &sample()).expect("write");
            f.write(&mut b, &sample()).expect("write");
            assert!(!a.is_empty());
            assert_eq!(a, b, "{f}");
        }
    }

    #[test]
    fn atomic_write_replaces_or_leaves_nothing() {
        let dir = scratch("atomic");
        let path = dir.join("r.txt");
        write_atomic(&path, |w| w.write_all(b"one")).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"one");
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .expect_err("fails");
        let source = std::error::Error::source(&err).map(|s| s.to_string());
        assert!(
            err.to_string().contains("r.txt") && source.as_deref() == Some("disk full"),
            "{err}: {source:?}"
        );
        assert_eq!(
            fs::read(&path).expect("read"),
            b"one",
            "old report untouched"
        );
        let left: Vec<_> = fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.map(|e| e.file_name()))
            .collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
        let missing = dir.join("no/such/dir/r.txt");
        let err = write_atomic(&missing, |w| w.write_all(b"x")).expect_err("no dir");
        assert!(matches!(&err, ReportError::Write { path, .. } if *path == missing));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_configuration_the_engine_does_not_model_is_not_judged() {
        let mut on = record("sgdt", Class::SensitiveUnprivileged, false);
        on.config = "umip=on".into();
        let off = record("sgdt", Class::SensitiveUnprivileged, false);
        for (engine, judged) in [("unicorn", false), ("kvm", true)] {
            let r = Report::with_host(engine, "1", "Test CPU", vec![off.clone(), on.clone()]);
            let t = &r.header.theorems;
            assert_eq!(t[0].not_judged(), None, "{engine} umip=off");
            assert_eq!(t[1].not_judged().is_none(), judged, "{engine} umip=on");
            assert!(!t[1].theorem1_vmm.holds && !t[1].theorem3_hybrid.holds);
            let mut out = Vec::new();
            md::write_md(&mut out, &r).expect("write");
            let text = String::from_utf8(out).expect("utf8");
            assert_eq!(
                text.contains("| 32 | umip=on | not judged (not modeled: Unicorn has no CR4.UMIP)"),
                !judged,
                "{engine}"
            );
        }
    }

    #[test]
    fn a_set_is_renamed_whole_or_not_at_all() {
        let dir = scratch("set");
        fs::write(dir.join("a"), b"old a").expect("seed");
        fs::write(dir.join("b"), b"old b").expect("seed");
        fs::write(dir.join("stale"), b"old").expect("seed");
        // The second file fails: nothing of the set lands, no temporary stays.
        let mut set = ReportSet::new(&dir);
        set.add("a", |w| w.write_all(b"new a")).expect("a");
        let e = set.add("b", |_| Err(io::Error::other("disk full")));
        assert!(e.is_err());
        drop(set);
        assert_eq!(fs::read(dir.join("a")).expect("a"), b"old a");
        assert_eq!(fs::read(dir.join("b")).expect("b"), b"old b");
        assert_eq!(fs::read_dir(&dir).expect("dir").count(), 3);
        // A whole set lands, and its stale file goes.
        let mut set = ReportSet::new(&dir);
        set.add("a", |w| w.write_all(b"new a")).expect("a");
        set.add("b", |w| w.write_all(b"new b")).expect("b");
        set.remove_stale("stale");
        set.remove_stale("never-there");
        let written = set.commit().expect("commit");
        assert_eq!(written, vec![dir.join("a"), dir.join("b")]);
        assert_eq!(fs::read(dir.join("b")).expect("b"), b"new b");
        assert!(!dir.join("stale").exists());
        assert_eq!(fs::read_dir(&dir).expect("dir").count(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn temporaries_never_follow_a_planted_symlink() {
        let dir = scratch("symlink");
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").expect("victim");
        // Whatever name an attacker guesses, the temporary is a new file.
        for guess in [".popek-fake.json.tmp", ".popek-fake.json.tmp.1"] {
            std::os::unix::fs::symlink(&victim, dir.join(guess)).expect("symlink");
        }
        write_reports(&dir, &[Format::Json], &sample()).expect("write");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        // A report is as readable as any file the user creates.
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("popek-fake.json"))
            .expect("report")
            .permissions()
            .mode();
        assert_eq!(mode & 0o044, 0o044 & !umask(), "{mode:o}");
        let _ = fs::remove_dir_all(&dir);
    }

    /// The process's umask, from /proc (reading it with umask(2) would
    /// change it for a moment under the other tests).
    fn umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .expect("Umask line")
    }

    #[test]
    fn write_reports_writes_every_format_and_json_reads_back() {
        let dir = scratch("all");
        let report = sample();
        let paths = write_reports(&dir, &Format::ALL, &report).expect("write");
        let names: Vec<String> = paths
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            names,
            [
                "popek-fake.csv",
                "popek-fake.json",
                "popek-fake.md",
                "popek-fake.html"
            ]
        );
        assert_eq!(read_report(&paths[1]).expect("read back"), report);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn formats_parse() {
        assert_eq!("markdown".parse::<Format>().ok(), Some(Format::Md));
        assert_eq!("HTML".parse::<Format>().ok(), Some(Format::Html));
        assert!("pdf".parse::<Format>().is_err());
    }
}
