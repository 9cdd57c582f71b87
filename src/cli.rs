//! Command-line options and the commands behind them. `main` only parses
//! and calls [`run`]; everything here is reachable from tests.

use analyzer::catalog;
use analyzer::check::{self, CheckOptions, KnownFailures};
use analyzer::compare;
use analyzer::engine::{self, EngineKind};
use analyzer::explain;
use analyzer::mode::{Config, Mode};
use analyzer::probe::Prober;
use analyzer::record::Record;
use analyzer::report::{self, Format, Report};
use analyzer::say;
use analyzer::scan::{self, ScanPlan};
use analyzer::truth::{self, Facts, Status, Tally};
use analyzer::vectors;
use analyzer::violators;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Writes to standard output; a closed pipe (`popek violators | head`) ends
/// the output quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        write_stdout(&format!($($arg)*))?
    };
}
macro_rules! outln {
    ($($arg:tt)*) => {
        write_stdout(&format!("{}\n", format!($($arg)*)))?
    };
}

fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("cannot write to standard output: {e}"),
        )),
        Ok(()) => Ok(()),
    }
}

/// Which x86 instructions break Popek & Goldberg? Measured, with evidence.
#[derive(Debug, Parser)]
#[command(
    name = "popek",
    version,
    about = "Which x86 instructions break Popek & Goldberg? Measured, with evidence.",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one instruction at CPL 0 and CPL 3 and show what each run did.
    Explain(ExplainArgs),
    /// Classify every catalog instruction over the sampled-state matrix and write reports.
    Scan(ScanArgs),
    /// The sensitive instructions that are not privileged, from a report or a fresh scan; exit 1 if there are any.
    Violators(ViolatorsArgs),
    /// Compare two reports (two engines, two CPUs, two versions); exit 1 if they differ.
    Diff(DiffArgs),
    /// Scan (or read a report) and compare with a kept baseline, for CI; exit 1 on drift.
    Check(CheckArgs),
    /// List the engines, their versions, and why one is not available.
    Engines,
    /// Write portable test vectors (schema popek-tv/1, docs/test-vectors.md) of the selected instructions.
    Vectors(VectorsArgs),
    /// Run test vectors on an engine; exit 1 if a run differs from the vector.
    Replay(ReplayArgs),
    /// Fuzz the instruction space beyond the catalog; exit 1 if there are findings.
    Fuzz(FuzzArgs),
    /// Merge the findings and corpora of fuzz shards into one directory.
    Merge(MergeArgs),
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A mnemonic (`sgdt`) or the instruction's bytes in hex (`0f 01 05 00 81 00 00`, `0xf4`).
    pub target: String,
    /// Processor mode: real, 16, 32, 64 or 32c (32-bit compatibility mode:
    /// 32-bit code in a long-mode guest, its own mode, never run for 32).
    #[arg(long, default_value = "64", value_parser = parse_mode)]
    pub mode: Mode,
    /// CR4.UMIP.
    #[arg(long, value_enum, default_value = "off")]
    pub umip: OnOff,
    /// EFLAGS.IOPL of the start state (0-3).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub iopl: u8,
    /// Engine: unicorn, kvm, native, a comma-separated list, or all (every
    /// available engine; two or more are compared state by state).
    #[arg(long, default_value = "unicorn")]
    pub engine: String,
    /// Read the target as hex bytes even if it looks like a mnemonic (`cc`).
    #[arg(long)]
    pub hex: bool,
    /// Run the bytes exactly as given, also when the decoder calls them
    /// invalid or they hold more than one instruction (what `fuzz` findings
    /// reproduce with).
    #[arg(long)]
    pub raw: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The table of documented facts the verdict is put beside (as for
    /// `scan`); `none` skips it.
    #[arg(long)]
    pub facts: Option<String>,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Engine: unicorn, kvm, native, a comma-separated list, or all (every
    /// available engine); two or more add the engine comparisons.
    #[arg(long, default_value = "unicorn")]
    pub engine: String,
    /// Modes, comma-separated: real, 16, 32, 64, 32c (32-bit compatibility
    /// mode: 32-bit code in a long-mode guest, its own mode, not a default).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64", value_parser = parse_mode)]
    pub mode: Vec<Mode>,
    /// Configurations, comma-separated (settings joined by ':'): umip=off, umip=on, umip=on:iopl=3, ...
    #[arg(long, value_delimiter = ',', default_value = "umip=off,umip=on", value_parser = parse_config)]
    pub config: Vec<Config>,
    /// Only these instructions (mnemonics or iced Code names), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Directory the reports are written to.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// Report formats, comma-separated: csv, json, md, html.
    #[arg(long, value_delimiter = ',', default_value = "csv,json,md", value_parser = parse_format)]
    pub format: Vec<Format>,
    /// Worker threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// The table of documented facts the verdicts are put beside (default
    /// corpus/expected-verdicts.tsv, relative to the current directory; a
    /// missing default is only a warning); `none` skips it.
    #[arg(long)]
    pub facts: Option<String>,
    /// Exit with status 1 if a verdict disagrees with the documented facts
    /// where no known engine gap explains it (for regression checks).
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct ViolatorsArgs {
    /// A JSON report to read; without it, a fresh scan on Unicorn.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Only this mode.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Only this configuration (e.g. umip=off).
    #[arg(long)]
    pub config: Option<String>,
    /// Worker threads for a fresh scan (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// One line per form (mode, configuration, form, why, the deciding
    /// evidence) instead of one per mnemonic.
    #[arg(long)]
    pub forms: bool,
}

#[derive(Debug, Args)]
pub struct VectorsArgs {
    /// Engine: unicorn, kvm, native, a comma-separated list, or all (each engine's view goes into every vector).
    #[arg(long, default_value = "unicorn")]
    pub engine: String,
    /// Modes, comma-separated: real, 16, 32, 64, 32c (32-bit compatibility
    /// mode: 32-bit code in a long-mode guest, its own mode, not a default).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64", value_parser = parse_mode)]
    pub mode: Vec<Mode>,
    /// Configurations, comma-separated (settings joined by ':').
    #[arg(long, value_delimiter = ',', default_value = "umip=off,umip=on", value_parser = parse_config)]
    pub config: Vec<Config>,
    /// Only these instructions (mnemonics or iced Code names), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The directory to write (a previous vector directory there is replaced;
    /// any other non-empty directory is refused).
    #[arg(long)]
    pub out: PathBuf,
    /// Write `.json.gz` files instead of `.json`.
    #[arg(long)]
    pub gzip: bool,
}

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Engines, comma-separated: unicorn, kvm, native (two or more add the engine-vs-engine oracle).
    #[arg(long, default_value = "unicorn")]
    pub engine: String,
    /// Processor mode: real, 16, 32, 64 or 32c (32-bit compatibility mode:
    /// 32-bit code in a long-mode guest, its own mode, never run for 32).
    #[arg(long, default_value = "64", value_parser = parse_mode)]
    pub mode: Mode,
    /// The configuration (settings joined by ':').
    #[arg(long, default_value = "umip=off", value_parser = parse_config)]
    pub config: Config,
    /// structured, tunnel, mutate or all.
    #[arg(long, default_value = "all")]
    pub generator: String,
    /// Inputs in all (split over the lanes).
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker processes run at once (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// Lanes the inputs are split into (what the findings depend on; default: the jobs).
    #[arg(long)]
    pub lanes: Option<u32>,
    /// Run only shard K of N (K/N, from 0): the lanes l with l % N == K.
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// First bytes the tunnel walks, hex, inclusive: `00-ff`.
    #[arg(long, default_value = "00-ff")]
    pub tunnel_range: String,
    /// Corpus to mutate from (a directory of .txt files or one file); default corpus/fuzz if present.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Directory for findings.jsonl and corpus.txt.
    #[arg(long, default_value = "fuzz-out")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Shard output directories.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Directory for the merged findings.jsonl and corpus.txt.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A directory of test vectors (or one vector file).
    pub dir: PathBuf,
    /// The engine to run them on.
    #[arg(long, default_value = "unicorn")]
    pub engine: String,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The first JSON report (for example the kept baseline).
    pub a: PathBuf,
    /// The second JSON report.
    pub b: PathBuf,
    /// Print the differences as Markdown instead of one line each.
    #[arg(long)]
    pub markdown: bool,
}

/// `popek check`: the scan options of `scan` (or `--report`), the baseline,
/// and what to write.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The kept JSON report to compare with (`reports/popek-unicorn.json`);
    /// once per engine checked.
    #[arg(long, required = true)]
    pub baseline: Vec<PathBuf>,
    /// Check this JSON report instead of scanning (once per engine); the
    /// scan options other than --only do not apply.
    #[arg(long, conflicts_with_all = ["engine", "mode", "config", "jobs", "facts"])]
    pub report: Vec<PathBuf>,
    /// Engine: unicorn, kvm, native, a comma-separated list, or all (every
    /// engine a baseline is given for); each needs its baseline.
    #[arg(long, default_value = "unicorn")]
    pub engine: String,
    /// Modes, comma-separated, as for `scan`; the baseline must have the same.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64", value_parser = parse_mode)]
    pub mode: Vec<Mode>,
    /// Configurations, comma-separated, as for `scan`; the baseline must have the same.
    #[arg(long, value_delimiter = ',', default_value = "umip=off,umip=on", value_parser = parse_config)]
    pub config: Vec<Config>,
    /// Only these instructions (mnemonics or iced Code names): scanned, and
    /// compared with the same records of the baseline.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Worker threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// The table of documented facts, as for `scan` (the baseline was
    /// written with the same, or the `documented` fields drift).
    #[arg(long)]
    pub facts: Option<String>,
    /// Write JUnit XML: one testcase per (engine, mode, configuration,
    /// encoding), failed when it drifted, skipped when a known failure.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Expected drift, one line each: `<engine> <mode> <config> <code> <reason>`
    /// (`*` for any engine, mode or configuration; `#` comments).
    #[arg(long)]
    pub known_failures: Option<PathBuf>,
    /// Write a Markdown summary (for `$GITHUB_STEP_SUMMARY`); the file is replaced.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

fn parse_config(s: &str) -> Result<Config, String> {
    s.parse::<Config>().map_err(|e| e.to_string())
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse::<Format>().map_err(|e| e.to_string())
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse::<Mode>().map_err(|e| e.to_string())
}

/// Whether a `--engine` value is `all`.
fn is_all(s: &str) -> bool {
    s.trim().eq_ignore_ascii_case("all")
}

/// The engines a `--engine` value names: `unicorn`, `kvm` or `all`; each
/// at most once.
pub fn parse_engines(s: &str) -> Result<Vec<EngineKind>> {
    if is_all(s) {
        return Ok(EngineKind::ALL.to_vec());
    }
    if s.split(',').count() > 1 && s.split(',').any(is_all) {
        bail!(
            "--engine {}: all stands alone (it is every engine)",
            analyzer::input::clip(s)
        );
    }
    let kinds = s
        .split(',')
        .map(|p| p.parse::<EngineKind>().map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    no_repeats("--engine", &kinds)?;
    Ok(kinds)
}

/// An error and its causes, joined by ": ", each said once (a cause whose
/// text the message already ends with is not repeated).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// On SIGINT, SIGTERM or SIGHUP: remove the temporary report files not yet
/// renamed into place (a set being committed is finished first) and exit
/// with 128 + the signal's number, as a shell reports a killed command.
pub fn install_signal_cleanup() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        say!("popek: warning: cannot watch for signals; an interrupt may leave temporary files");
        return;
    };
    // The child that runs `explain`'s engines gets a terminal's Ctrl-C
    // with its parent, which says it once for both.
    let quiet = std::env::var_os(EXPLAIN_INSIDE).is_some();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _held = analyzer::report::abandon_pending();
            // Never panic here (stderr may be gone after SIGHUP): always exit.
            if !quiet {
                let _ = writeln!(
                    std::io::stderr(),
                    "popek: interrupted (signal {sig}); its temporary files are removed"
                );
            }
            std::process::exit(128 + sig);
        }
    });
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Explain(a) => cmd_explain(a),
        Command::Scan(a) => cmd_scan(a),
        Command::Violators(a) => cmd_violators(a),
        Command::Diff(a) => cmd_diff(a),
        Command::Check(a) => cmd_check(a),
        Command::Engines => cmd_engines(),
        Command::Vectors(a) => cmd_vectors(a),
        Command::Replay(a) => cmd_replay(a),
        Command::Fuzz(a) => cmd_fuzz(a),
        Command::Merge(a) => cmd_merge(a),
    }
}

fn cmd_fuzz(a: FuzzArgs) -> Result<ExitCode> {
    let kinds = parse_engines(&a.engine)?;
    note_mode_32_on_pvm(&kinds, &[a.mode]);
    let engines: Vec<String> = kinds.iter().map(|k| k.name().to_string()).collect();
    // The host CPU runs only the host's configuration, in 64-bit and
    // compatibility-mode code: alone in another, the campaign would run
    // nothing and say "0 findings".
    let native_why = if !a.mode.is_long() {
        Some(format!(
            "mode {} is not one a user process runs in (native runs 64 and 32c only)",
            a.mode
        ))
    } else {
        analyzer::engine::unmodeled("native", &a.config.name())
    };
    if let Some(why) = native_why.filter(|_| kinds.contains(&EngineKind::Native)) {
        let setting = format!("--mode {} --config {}", a.mode, a.config.name());
        if kinds.len() == 1 {
            bail!(
                "--engine native {setting}: {why}; the host CPU runs only the host's \
                 configuration (see `popek engines`)"
            );
        }
        say!(
            "popek: note: native runs nothing in {setting} ({why}); the campaign compares no \
             engine with it"
        );
    }
    let gens: fuzzer::gen::Generators = a.generator.parse().map_err(anyhow::Error::msg)?;
    check_jobs(a.jobs)?;
    let jobs = if a.jobs == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        a.jobs
    };
    let shard = {
        let (k, n) = a
            .shard
            .split_once('/')
            .with_context(|| format!("--shard {}: K/N", analyzer::input::clip(&a.shard)))?;
        let k: u32 = k.trim().parse().context("--shard: K is not a number")?;
        let n: u32 = n.trim().parse().context("--shard: N is not a number")?;
        if n == 0 || k >= n {
            bail!("--shard {k}/{n}: K must be below N");
        }
        (k, n)
    };
    let tunnel = {
        let (lo, hi) = a.tunnel_range.split_once('-').with_context(|| {
            format!(
                "--tunnel-range {}: LO-HI in hex",
                analyzer::input::clip(&a.tunnel_range)
            )
        })?;
        let lo =
            u8::from_str_radix(lo.trim(), 16).context("--tunnel-range: LO is not a hex byte")?;
        let hi =
            u8::from_str_radix(hi.trim(), 16).context("--tunnel-range: HI is not a hex byte")?;
        if lo > hi {
            bail!("--tunnel-range: {lo:02x} is above {hi:02x}");
        }
        (lo, hi)
    };
    let duration = match a.duration {
        Some(d) if !(d.is_finite() && d > 0.0) => {
            bail!("--duration {d}: a positive number of seconds")
        }
        // About 31 years: a campaign's deadline must be a time there is.
        Some(d) if d > 1e9 => bail!("--duration {d:e}: at most 1e9 seconds"),
        Some(d) => Some(std::time::Duration::from_secs_f64(d)),
        None => None,
    };
    let corpus = match &a.corpus {
        Some(p) => fuzzer::finding::read_corpus_dir(p)?,
        None if Path::new("corpus/fuzz").is_dir() => {
            fuzzer::finding::read_corpus_dir(Path::new("corpus/fuzz"))?
        }
        None => Vec::new(),
    };
    let mut env = Vec::new();
    for var in ["POPEK_FUZZ_PLANT_DIFFER", "POPEK_FUZZ_PLANT_CRASH"] {
        if let Ok(v) = std::env::var(var) {
            env.push((var.to_string(), v));
        }
    }
    // The planted test engine stands in for the second engine in the
    // fuzzer's own tests (POPEK_FUZZ_PLANTED=1).
    let mut engines = engines;
    if std::env::var("POPEK_FUZZ_PLANTED").as_deref() == Ok("1") {
        engines.push("planted".into());
    }
    let opts = fuzzer::campaign::Options {
        engines,
        mode: a.mode,
        config: a.config,
        gens,
        seed: a.seed,
        iterations: a.iterations,
        duration,
        jobs,
        lanes: match a.lanes {
            Some(l) => l,
            // The default lanes are the job count, which is the host's:
            // shards of one campaign on different hosts would split it
            // differently, and their merge would be no one campaign.
            None if shard.1 > 1 => bail!(
                "--shard {}/{}: give --lanes L too, the same on every shard and at least {} \
                 (the lanes split the campaign; without it they are the job count, which \
                 differs from host to host)",
                shard.0,
                shard.1,
                shard.1
            ),
            None => jobs as u32,
        },
        shard,
        tunnel,
        corpus,
        out: a.out.clone(),
        worker: fuzzer::campaign::WorkerCommand {
            program: std::env::current_exe()
                .context("cannot find the popek executable for the fuzz workers")?,
            args: vec!["__fuzz-worker".into()],
            env,
        },
        progress: std::io::stderr().is_terminal(),
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signal = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        let _ = signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize);
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    let summary = fuzzer::campaign::run(&opts, &stop)?;
    // A signal after the campaign ended cut nothing short.
    let sig = signal.load(std::sync::atomic::Ordering::SeqCst);
    outln!("{}", summary.line());
    say!(
        "popek: findings in {}",
        a.out.join("findings.jsonl").display()
    );
    // Stopped by a signal: what was found is written, and the exit code
    // says the campaign was cut short, as every command's does.
    if sig != 0 {
        say!("popek: interrupted (signal {sig}); the campaign's findings so far are written");
        return Ok(ExitCode::from(u8::try_from(128 + sig).unwrap_or(2)));
    }
    Ok(if summary.findings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn cmd_merge(a: MergeArgs) -> Result<ExitCode> {
    let n = fuzzer::campaign::merge(&a.dirs, &a.out)?;
    outln!("merge: {n} findings from {} directories", a.dirs.len());
    Ok(ExitCode::SUCCESS)
}

/// The scan plan of `--mode`, `--config` and `--only`; a mode or
/// configuration given twice is refused.
fn scan_plan(modes: &[Mode], configs: &[Config], only: &[String]) -> Result<ScanPlan> {
    no_repeats("--mode", modes)?;
    let config_names: Vec<String> = configs.iter().map(Config::name).collect();
    no_repeats("--config", &config_names)?;
    Ok(ScanPlan {
        modes: modes.to_vec(),
        configs: configs.to_vec(),
        only: only.to_vec(),
    })
}

/// On KVM's PVM flavor 32-bit protected mode cannot run (every 32-bit paged
/// guest shuts down): says so for `--mode 32` and points at `--mode 32c`,
/// which runs 32-bit code in compatibility mode, as its own mode (32 is
/// never silently replaced: its runs stay "not run").
fn note_mode_32_on_pvm(kinds: &[EngineKind], modes: &[Mode]) {
    if kinds.contains(&EngineKind::Kvm)
        && modes.contains(&Mode::Prot32)
        && analyzer::engine::kvm::Flavor::detect() == analyzer::engine::kvm::Flavor::Pvm
    {
        say!("{}", PVM_MODE_32_NOTE);
    }
}

/// What [`note_mode_32_on_pvm`] prints.
const PVM_MODE_32_NOTE: &str = "popek: kvm on kvm_pvm cannot run 32-bit protected mode \
(--mode 32: every 32-bit paged guest shuts down), so its mode-32 runs are reported as not run; \
--mode 32c runs 32-bit code there as 32-bit compatibility mode (a long-mode guest), reported as its own mode 32c";

fn cmd_vectors(a: VectorsArgs) -> Result<ExitCode> {
    let kinds = parse_engines(&a.engine)?;
    note_mode_32_on_pvm(&kinds, &a.mode);
    let plan = scan_plan(&a.mode, &a.config, &a.only)?;
    let selected = select_entries(&plan)?;
    let mut probers = Vec::new();
    for kind in kinds {
        match Prober::open(Arc::new(move || engine::open(kind))) {
            Ok(p) => probers.push(p),
            Err(err) if is_all(&a.engine) => say!("popek: skipping engine {kind}: {err}"),
            Err(err) => return Err(err).with_context(|| format!("cannot open engine {kind}")),
        }
    }
    if probers.is_empty() {
        bail!("no engine could run the vectors");
    }
    let mut w = vectors::DirWriter::new(&a.out, a.gzip)?;
    vectors::generate(
        &selected,
        &plan.configs,
        &mut probers,
        |v| w.add(&v),
        std::io::stderr().is_terminal(),
    )?;
    let n = w.commit()?;
    say!("popek: {n} test vectors written to {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

fn cmd_replay(a: ReplayArgs) -> Result<ExitCode> {
    let kinds = parse_engines(&a.engine)?;
    let [kind] = kinds[..] else {
        bail!("--engine: replay runs on one engine (unicorn or kvm)");
    };
    // Anything but a directory is read as one vector file (bounded).
    let files = if !a.dir.is_dir() && a.dir.exists() {
        vec![a.dir.clone()]
    } else {
        vectors::list_dir(&a.dir)?
    };
    // Every file is read (and its schema checked) before anything runs,
    // then read again when its turn comes: one file's vectors are held at
    // a time (a set held whole took its size many times over: 40 files of
    // small maps, 644 KB gzipped, 2 GB).
    for f in &files {
        vectors::read_file(f)?;
    }
    let mut prober = Prober::open(Arc::new(move || engine::open(kind)))
        .with_context(|| format!("cannot open engine {kind}"))?;
    let mut catalogs = std::collections::BTreeMap::new();
    let mut mismatched = 0usize;
    for f in &files {
        let v = vectors::read_file(f)?;
        let lines = vectors::replay_one(&v, &mut prober, &mut catalogs)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        if !lines.is_empty() {
            mismatched += 1;
        }
        for l in lines {
            outln!("{}: {l}", f.display());
        }
    }
    say!(
        "popek: {} vectors replayed on {kind}, {mismatched} with mismatches",
        files.len()
    );
    Ok(if mismatched == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn cmd_explain(a: ExplainArgs) -> Result<ExitCode> {
    let target = explain::parse_target(&a.target, a.hex)?;
    let config = Config {
        umip: a.umip == OnOff::On,
        iopl: a.iopl,
        ..Config::default()
    };
    let kinds = parse_engines(&a.engine)?;
    if let Some(code) = explain_apart(&kinds)? {
        return Ok(code);
    }
    note_mode_32_on_pvm(&kinds, &[a.mode]);
    let cat = catalog::build(a.mode);
    let entries = match (&target, a.raw) {
        (explain::Target::Bytes(b), true) => vec![explain::raw_entry(b, a.mode)],
        (_, true) => bail!("--raw: the target must be bytes (hex)"),
        (t, false) => explain::entries_for(t, a.mode, &cat)?,
    };
    let facts = load_facts(a.facts.as_deref(), &cat.entries)?;
    let mut probers = Vec::new();
    for kind in kinds {
        match Prober::open(Arc::new(move || engine::open(kind))) {
            Ok(p) => probers.push(p),
            Err(err) if is_all(&a.engine) => {
                say!("popek: skipping engine {kind}: {err}");
            }
            Err(err) => return Err(err).with_context(|| format!("cannot open engine {kind}")),
        }
    }
    if probers.is_empty() {
        bail!("no engine could run the instruction");
    }
    let mut all = explain::explain(&entries, config, probers)?;
    if let Some(f) = &facts {
        for x in all.iter_mut() {
            truth::annotate(std::slice::from_mut(&mut x.record), f);
        }
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        out!("{}", explain::render_text(&all));
    }
    Ok(ExitCode::SUCCESS)
}

/// Set in the process that runs an explanation's engines for its parent
/// (see [`explain_apart`]).
const EXPLAIN_INSIDE: &str = "POPEK_EXPLAIN_INSIDE";

/// Runs this `popek explain` again in a child process where Unicorn is
/// among the engines, and gives the child's exit code. Unicorn runs in the
/// process that asks it (KVM's guest and the native engine's child do
/// not), and some inputs make it abort the process: LOCK BT, BTS, BTR and
/// BTC with a register, the fuzzer's worker-death findings, whose
/// `reproduce` line is this command. The child writes the command's
/// output; a child that died of a crash signal is said to be an engine
/// failure (exit 1), where popek would otherwise have died with no word;
/// one ended by another signal ends this one as that signal would (128 +
/// its number). The child dies with this process. `None`: this is the
/// child, no engine needs it, or no child could be started (said); run
/// here.
fn explain_apart(kinds: &[EngineKind]) -> Result<Option<ExitCode>> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    if !kinds.contains(&EngineKind::Unicorn) || std::env::var_os(EXPLAIN_INSIDE).is_some() {
        return Ok(None);
    }
    let here = |why: String| {
        say!("popek: warning: {why}; the engines run in this process, which Unicorn may abort");
        Ok(None)
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return here(format!("cannot find the popek executable ({e})")),
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(EXPLAIN_INSIDE, "1");
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure makes only the prctl,
    // getppid and _exit system calls, which are async-signal-safe, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            // This process ended before the child could ask to die with it.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => return here(format!("cannot start a process to run the engines ({e})")),
    };
    let Some(sig) = status.signal() else {
        let code = status.code().unwrap_or(2);
        return Ok(Some(ExitCode::from(u8::try_from(code).unwrap_or(2))));
    };
    let crash = [
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGSYS, "SIGSYS"),
    ];
    if let Some((_, name)) = crash.iter().find(|(n, _)| *n == sig) {
        say!(
            "popek: the process running the engines died of signal {sig} ({name}): an engine \
             failure, not an outcome of the instruction (Unicorn aborts on some inputs, such as \
             LOCK BT, BTS, BTR and BTC with a register); --engine kvm or native shows what a \
             CPU does"
        );
        return Ok(Some(ExitCode::from(1)));
    }
    say!("popek: the process running the engines was ended by signal {sig}");
    Ok(Some(ExitCode::from(u8::try_from(128 + sig).unwrap_or(2))))
}

fn cmd_engines() -> Result<ExitCode> {
    for kind in EngineKind::KNOWN {
        match engine::open(kind) {
            Ok(e) => outln!("{kind}: available, {}", e.version()),
            Err(err) => outln!("{kind}: not available: {err}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses a value given twice (`--mode 64,64`): it would double records
/// and counts.
fn no_repeats<T: PartialEq + std::fmt::Display>(option: &str, values: &[T]) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            bail!("{option}: {v} is given twice");
        }
    }
    Ok(())
}

/// The most worker threads a scan starts: four per CPU.
fn max_jobs() -> usize {
    4 * std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn check_jobs(jobs: usize) -> Result<()> {
    let max = max_jobs();
    if jobs > max {
        bail!("--jobs {jobs}: at most {max} here (four per CPU; 0 means one per CPU)");
    }
    Ok(())
}

/// The catalog entries a plan selects. Every `--only` name must name a
/// mnemonic or an iced Code of the plan's modes.
pub fn select_entries(plan: &ScanPlan) -> Result<Vec<catalog::Entry>> {
    select_from(&catalog::build_all(&plan.modes), plan)
}

/// The entries of `cat` that `plan` selects (see [`select_entries`]).
fn select_from(cat: &catalog::Catalog, plan: &ScanPlan) -> Result<Vec<catalog::Entry>> {
    for o in &plan.only {
        if o.trim().is_empty() {
            bail!("--only: an empty name");
        }
        let known = cat
            .entries
            .iter()
            .any(|e| o.eq_ignore_ascii_case(&e.code) || o.eq_ignore_ascii_case(&e.mnemonic));
        if !known {
            let modes: Vec<&str> = plan.modes.iter().map(|m| m.name()).collect();
            let near = if o.chars().count() <= analyzer::input::MAX_NAME_CHARS {
                cat.suggest(o, 3)
            } else {
                Vec::new()
            };
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!("; did you mean {}?", near.join(", "))
            };
            bail!(
                "--only: '{}' is no mnemonic or iced Code name in mode {}{hint}",
                analyzer::input::clip(o),
                modes.join(",")
            );
        }
    }
    Ok(plan.select(&cat.entries).into_iter().cloned().collect())
}

/// Scans `selected` on one engine in every configuration of the plan.
pub fn scan_records(
    kind: EngineKind,
    plan: &ScanPlan,
    selected: &[catalog::Entry],
    jobs: usize,
) -> Result<Vec<Record>> {
    Ok(scan_kept(kind, plan, selected, jobs, false)?
        .into_iter()
        .map(|s| s.record)
        .collect())
}

/// [`scan_records`], with each state's outcome kept beside its record when
/// `outcomes` (for the comparison run by run).
fn scan_kept(
    kind: EngineKind,
    plan: &ScanPlan,
    selected: &[catalog::Entry],
    jobs: usize,
    outcomes: bool,
) -> Result<Vec<scan::Scanned>> {
    let progress = std::io::stderr().is_terminal();
    let runs = std::sync::atomic::AtomicU64::new(0);
    let start = std::time::Instant::now();
    let open = move || engine::open(kind);
    let scanned = scan::run_scan_kept(
        selected,
        &plan.configs,
        open,
        jobs,
        progress,
        &runs,
        outcomes,
    )
    .with_context(|| format!("scan on {kind} failed"))?;
    let secs = start.elapsed().as_secs_f64();
    let n = runs.load(std::sync::atomic::Ordering::Relaxed);
    say!(
        "popek: {kind}: {n} runs in {secs:.1} s, {} runs/s",
        if secs > 0.0 {
            (n as f64 / secs).round() as u64
        } else {
            0
        }
    );
    Ok(scanned)
}

/// The report of a scan of `selected` on one engine, its records put
/// beside `facts`, with the findings of that comparison; with `outcomes`,
/// also each record's outcomes state by state.
fn scan_report(
    kind: EngineKind,
    plan: &ScanPlan,
    selected: &[catalog::Entry],
    jobs: usize,
    facts: Option<&Facts>,
    outcomes: bool,
) -> Result<(Report, Option<Vec<truth::Finding>>, Vec<scan::Scanned>)> {
    let mut scanned = scan_kept(kind, plan, selected, jobs, outcomes)?;
    let mut records: Vec<Record> = if outcomes {
        scanned.iter().map(|s| s.record.clone()).collect()
    } else {
        std::mem::take(&mut scanned)
            .into_iter()
            .map(|s| s.record)
            .collect()
    };
    let findings = facts.map(|f| truth::annotate(&mut records, f));
    let version = records
        .first()
        .map(|r| r.engine_version.clone())
        .unwrap_or_default();
    Ok((
        Report::new(kind.name(), &version, records),
        findings,
        scanned,
    ))
}

/// The documented facts a scan uses: `--facts none` none, `--facts PATH`
/// that table (an error if it cannot be read), no option the default table
/// if it exists (a warning if not). A table that does not parse, or names an
/// instruction the catalog of `modes` lacks, is an error.
pub fn load_facts(arg: Option<&str>, entries: &[catalog::Entry]) -> Result<Option<Facts>> {
    let facts = match arg {
        Some(a) if a.eq_ignore_ascii_case("none") => return Ok(None),
        Some(p) => Facts::load(Path::new(p))?,
        None => {
            let p = Path::new(truth::DEFAULT_PATH);
            if !p.exists() {
                say!(
                    "popek: warning: {} not found; verdicts are not compared with the documented facts (--facts PATH, or --facts none)",
                    p.display()
                );
                return Ok(None);
            }
            Facts::load(p)?
        }
    };
    facts.validate(entries)?;
    Ok(Some(facts))
}

fn cmd_scan(a: ScanArgs) -> Result<ExitCode> {
    let kinds = parse_engines(&a.engine)?;
    let all = is_all(&a.engine);
    let plan = scan_plan(&a.mode, &a.config, &a.only)?;
    note_mode_32_on_pvm(&kinds, &plan.modes);
    no_repeats("--format", &a.format)?;
    check_jobs(a.jobs)?;
    // The catalog is built once: the selection comes from it, and the facts
    // are checked against all of it, not only the `--only` selection.
    let cat = catalog::build_all(&plan.modes);
    let selected = select_from(&cat, &plan)?;
    let facts = if a
        .facts
        .as_deref()
        .is_some_and(|f| f.eq_ignore_ascii_case("none"))
    {
        None
    } else {
        load_facts(a.facts.as_deref(), &cat.entries)?
    };
    let mut unexpected = 0;
    report::check_out_dir(&a.out).with_context(|| a.out.display().to_string())?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create the report directory {}", a.out.display()))?;
    let mut set = report::ReportSet::new(&a.out);
    let mut shown: std::io::Result<()> = Ok(());
    // Two or more engines: every pair is compared (see `write_comparisons`),
    // so each engine's outcomes are kept state by state.
    let compare = kinds.len() > 1;
    let mut reports: Vec<Report> = Vec::new();
    let mut ran: Vec<(EngineKind, Vec<scan::Scanned>, Executors)> = Vec::new();
    for kind in kinds {
        // Opened here only to skip it under `all` or to ask what executes
        // its runs for the comparison; the scan opens its own.
        let opened = match (all || compare).then(|| engine::open(kind)) {
            None => None,
            Some(Ok(e)) => Some(e),
            Some(Err(e)) if all => {
                say!("popek: engine {kind} is not available, scanning without it: {e}");
                // Its reports of an earlier scan would read as current.
                for f in Format::ALL {
                    set.remove_stale(&report::report_name(kind.name(), f));
                }
                continue;
            }
            // The scan reports why, in its own words.
            Some(Err(_)) => None,
        };
        let executors = Executors::of(opened.as_deref(), &plan.modes);
        drop(opened);
        let (rep, findings, scanned) =
            scan_report(kind, &plan, &selected, a.jobs, facts.as_ref(), compare)?;
        set.add_report_with_facts(&a.format, &rep, facts.as_ref())?;
        // Shown as each engine's scan ends; stdout that cannot take it
        // fails the command only once the reports are written.
        shown = shown.and(write_stdout(&summary(&rep)));
        if let Some(findings) = &findings {
            for f in findings.iter().filter(|f| f.status == Status::Disagrees) {
                say!("popek: unexpected disagreement: {f}");
            }
            let tally = Tally::of(findings);
            unexpected += tally.unexpected;
            shown = shown.and(write_stdout(&format!("{} {tally}\n", kind.name())));
        }
        reports.push(rep);
        ran.push((kind, scanned, executors));
    }
    if compare {
        write_comparisons(&mut set, &a.format, &reports, &ran, facts.as_ref())?;
    }
    for path in set.commit()? {
        say!("popek: wrote {}", path.display());
    }
    shown?;
    if a.strict && unexpected > 0 {
        say!("popek: --strict: {unexpected} unexpected disagreements with the documented facts");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// What executed an engine's runs, per mode and CPL (asked of the engine
/// once, before its scan).
struct Executors(std::collections::BTreeMap<(Mode, u8), engine::Executor>);

impl Executors {
    fn of(e: Option<&dyn engine::Engine>, modes: &[Mode]) -> Executors {
        let mut m = std::collections::BTreeMap::new();
        if let Some(e) = e {
            for &mode in modes {
                for cpl in 0..=3 {
                    m.insert((mode, cpl), e.executor(mode, cpl));
                }
            }
        }
        Executors(m)
    }

    fn get(&self, mode: Mode, cpl: u8) -> engine::Executor {
        self.0
            .get(&(mode, cpl))
            .copied()
            .unwrap_or(engine::Executor::Emulator)
    }
}

/// The engine comparison files: verdict by verdict between the engines that
/// judge privilege (they run the supervisor side too; native does not).
const COMPARISON: [&str; 3] = [
    "popek-comparison.md",
    "popek-comparison.json",
    "popek-comparison.html",
];
/// The comparison run by run, between every two engines that ran.
const RUNS_COMPARISON: [&str; 2] = ["popek-runs.md", "popek-runs.json"];

/// Every pair `(i, j)`, `i < j`, of `idx`.
fn pairs_of(idx: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (n, &i) in idx.iter().enumerate() {
        for &j in &idx[n + 1..] {
            out.push((i, j));
        }
    }
    out
}

/// Adds the engine comparisons of a scan on several engines to `set`: the
/// verdict differences of every two engines that judge privilege
/// (`popek-comparison.*`), and the outcome differences state by state of
/// every two engines that ran (`popek-runs.*`), each marked with what
/// executed it. A comparison with fewer than two engines is removed, so an
/// earlier one does not read as current.
fn write_comparisons(
    set: &mut report::ReportSet,
    formats: &[Format],
    reports: &[Report],
    ran: &[(EngineKind, Vec<scan::Scanned>, Executors)],
    facts: Option<&Facts>,
) -> Result<()> {
    if ran.len() < 2 {
        say!("popek: only one engine ran; no engine comparison written");
        for name in COMPARISON.iter().chain(&RUNS_COMPARISON) {
            set.remove_stale(name);
        }
        return Ok(());
    }
    let judges: Vec<usize> = (0..ran.len())
        .filter(|&i| ran[i].0.runs_supervisor())
        .collect();
    let verdict_pairs = pairs_of(&judges);
    if verdict_pairs.is_empty() {
        say!(
            "popek: fewer than two engines that run the supervisor side ran; no verdict comparison written"
        );
        for name in COMPARISON {
            set.remove_stale(name);
        }
    } else {
        let compared: Vec<(usize, usize, Vec<compare::Difference>)> = verdict_pairs
            .iter()
            .map(|&(i, j)| {
                (
                    i,
                    j,
                    compare::compare(&reports[i].records, &reports[j].records),
                )
            })
            .collect();
        set.add(COMPARISON[0], |w| {
            for (i, j, diffs) in &compared {
                compare::write_differences_md(
                    &mut *w,
                    &reports[*i].header.engine,
                    &reports[*j].header.engine,
                    diffs,
                )?;
            }
            Ok(())
        })?;
        set.add(COMPARISON[1], |w| {
            write_json_list(w, compared.iter().flat_map(|(_, _, d)| d))
        })?;
        // The page shows two engines side by side: written for one pair.
        match compared.as_slice() {
            [(i, j, diffs)] if formats.contains(&Format::Html) => {
                let two = [reports[*i].clone(), reports[*j].clone()];
                let page = report::html::Page {
                    reports: &two,
                    facts,
                    diffs: Some(diffs),
                };
                set.add(COMPARISON[2], |w| report::html::write_html(w, &page))?;
            }
            _ => set.remove_stale(COMPARISON[2]),
        }
        let n: usize = compared.iter().map(|(_, _, d)| d.len()).sum();
        say!(
            "popek: {n} {} between the engines",
            report::plural(n, "difference", "differences")
        );
    }
    let run_pairs = pairs_of(&(0..ran.len()).collect::<Vec<_>>());
    let by_runs: Vec<(String, String, Vec<compare::RunDifference>)> = run_pairs
        .iter()
        .map(|&(i, j)| {
            let side = |k: usize| {
                let (kind, scanned, ex) = &ran[k];
                (kind.name(), scanned.as_slice(), ex)
            };
            let ((na, sa, ea), (nb, sb, eb)) = (side(i), side(j));
            let (fa, fb) = (
                move |m: Mode, cpl: u8| ea.get(m, cpl),
                move |m: Mode, cpl: u8| eb.get(m, cpl),
            );
            let diffs = compare::compare_runs(
                &compare::EngineRuns {
                    engine: na,
                    scanned: sa,
                    executor: &fa,
                },
                &compare::EngineRuns {
                    engine: nb,
                    scanned: sb,
                    executor: &fb,
                },
            );
            (na.to_string(), nb.to_string(), diffs)
        })
        .collect();
    set.add(RUNS_COMPARISON[0], |w| {
        compare::write_run_differences_md(&mut *w, &by_runs)
    })?;
    set.add(RUNS_COMPARISON[1], |w| {
        write_json_list(w, by_runs.iter().flat_map(|(_, _, d)| d))
    })?;
    let states: usize = by_runs
        .iter()
        .flat_map(|(_, _, d)| d)
        .map(|d| d.states.len())
        .sum();
    say!("popek: run by run, {states} states where two engines' outcomes differ");
    Ok(())
}

/// Writes `items` as one pretty-printed JSON list and a newline.
fn write_json_list<T: serde::Serialize>(
    w: &mut dyn Write,
    items: impl Iterator<Item = T>,
) -> std::io::Result<()> {
    let all: Vec<T> = items.collect();
    serde_json::to_writer_pretty(&mut *w, &all).map_err(std::io::Error::from)?;
    w.write_all(b"\n")
}

/// One line per (mode, configuration): the theorem verdicts and the class counts.
pub fn summary(rep: &Report) -> String {
    let mut s = String::new();
    for t in &rep.header.theorems {
        s.push_str(&format!(
            "{} mode {:>4} {:<10} theorem 1 (VMM): {}  theorem 3 (hybrid VMM): {}\n",
            rep.header.engine,
            t.mode,
            t.config,
            t.verdict_text(t.theorem1_vmm),
            t.verdict_text(t.theorem3_hybrid),
        ));
    }
    s
}

fn cmd_violators(a: ViolatorsArgs) -> Result<ExitCode> {
    let config = match &a.config {
        Some(c) if c.contains(',') => bail!(
            "--config {}: violators takes one configuration (a list is for scan)",
            analyzer::input::clip(c)
        ),
        Some(c) => Some(parse_config(c).map_err(anyhow::Error::msg)?.name()),
        None => None,
    };
    check_jobs(a.jobs)?;
    let records = match &a.report {
        Some(path) => {
            let rep = report::read_report(path)?;
            // A mode or configuration the report lacks is not "no violators".
            if let Some(m) = a.mode {
                if !rep.header.modes.iter().any(|x| x == m.name()) {
                    bail!(
                        "{} has no records of mode {m} (its modes: {})",
                        path.display(),
                        rep.header.modes.join(", ")
                    );
                }
            }
            if let Some(c) = &config {
                if !rep.header.configurations.contains(c) {
                    bail!(
                        "{} has no records of configuration {c} (its configurations: {})",
                        path.display(),
                        rep.header.configurations.join(", ")
                    );
                }
            }
            rep.records
        }
        None => {
            let plan = ScanPlan {
                modes: a
                    .mode
                    .map(|m| vec![m])
                    .unwrap_or_else(|| Mode::DEFAULT_SCAN.to_vec()),
                configs: match &a.config {
                    Some(c) => vec![parse_config(c).map_err(anyhow::Error::msg)?],
                    None => Config::DEFAULTS.to_vec(),
                },
                only: Vec::new(),
            };
            let selected = select_entries(&plan)?;
            scan_records(EngineKind::Unicorn, &plan, &selected, a.jobs)?
        }
    };
    let found = violators::violators(&records, a.mode, config.as_deref());
    if a.forms {
        out!("{}", violators::render_violators(&found));
    } else if !found.is_empty() {
        out!("{}", violators::render_groups(&found));
    }
    // Violators are what this command exists to report: 1 when there are any.
    Ok(if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn cmd_diff(a: DiffArgs) -> Result<ExitCode> {
    let ra = report::read_report(&a.a)?;
    let rb = report::read_report(&a.b)?;
    let diffs = compare::compare(&ra.records, &rb.records);
    if a.markdown {
        let mut out = Vec::new();
        compare::write_differences_md(
            &mut out,
            &a.a.display().to_string(),
            &a.b.display().to_string(),
            &diffs,
        )?;
        out!("{}", String::from_utf8_lossy(&out));
    } else {
        for d in &diffs {
            outln!(
                "{} {} {} [{}]: {} | a: {} | b: {}",
                d.mode,
                d.config,
                d.form,
                d.code,
                d.fields.join(","),
                d.a.as_ref().map(|s| s.class.as_str()).unwrap_or("missing"),
                d.b.as_ref().map(|s| s.class.as_str()).unwrap_or("missing"),
            );
        }
        say!(
            "popek: {} {} between {} and {}",
            diffs.len(),
            report::plural(diffs.len(), "difference", "differences"),
            a.a.display(),
            a.b.display()
        );
    }
    Ok(if diffs.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Refuses output files in a directory that does not exist, or that are the
/// same file as an input or as each other (`--junit
/// reports/popek-unicorn.json` would replace the baseline).
fn distinct_outputs(outputs: &[(&str, &Path)], inputs: &[&Path]) -> Result<()> {
    let same = |a: &Path, b: &Path| {
        a == b
            || matches!(
                (std::fs::canonicalize(a), std::fs::canonicalize(b)),
                (Ok(x), Ok(y)) if x == y
            )
    };
    for (i, (opt, out)) in outputs.iter().enumerate() {
        // Found before a scan, not after it.
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "{opt} {}: the directory {} does not exist",
                out.display(),
                dir.display()
            );
        }
        if let Some(input) = inputs.iter().find(|p| same(out, p)) {
            bail!(
                "{opt} {} is an input of the check ({}); name another file",
                out.display(),
                input.display()
            );
        }
        if let Some((other, _)) = outputs[..i].iter().find(|(_, o)| same(out, o)) {
            bail!("{opt} and {other} name the same file {}", out.display());
        }
    }
    Ok(())
}

fn cmd_check(a: CheckArgs) -> Result<ExitCode> {
    let known = match &a.known_failures {
        Some(p) => KnownFailures::load(p)?,
        None => KnownFailures::default(),
    };
    let outputs: Vec<(&str, &Path)> = [("--junit", &a.junit), ("--markdown", &a.markdown)]
        .into_iter()
        .filter_map(|(o, p)| p.as_deref().map(|p| (o, p)))
        .collect();
    let mut inputs: Vec<&Path> = a
        .baseline
        .iter()
        .chain(&a.report)
        .map(|p| p.as_path())
        .collect();
    inputs.extend(a.known_failures.as_deref());
    distinct_outputs(&outputs, &inputs)?;
    let baselines = a
        .baseline
        .iter()
        .map(|p| {
            Ok(check::Baseline {
                name: p.display().to_string(),
                report: report::read_report(p)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let subjects = if a.report.is_empty() {
        let mut kinds = parse_engines(&a.engine)?;
        // `all`: every engine a baseline is given for (each must run: a
        // check that skipped an engine would pass unseen).
        if is_all(&a.engine) {
            let given: Vec<EngineKind> = kinds
                .iter()
                .copied()
                .filter(|k| baselines.iter().any(|b| b.report.header.engine == k.name()))
                .collect();
            if !given.is_empty() {
                kinds = given;
            }
        }
        let plan = scan_plan(&a.mode, &a.config, &a.only)?;
        note_mode_32_on_pvm(&kinds, &plan.modes);
        let config_names: Vec<String> = a.config.iter().map(Config::name).collect();
        check_jobs(a.jobs)?;
        let scopes: Vec<check::Scope> = kinds
            .iter()
            .map(|k| check::Scope::of_scan(k.name(), &a.mode, &config_names))
            .collect();
        // A baseline that cannot be checked is refused before the scan.
        check::preflight(&baselines, &scopes)?;
        let cat = catalog::build_all(&plan.modes);
        let selected = select_from(&cat, &plan)?;
        let facts = load_facts(a.facts.as_deref(), &cat.entries)?;
        let mut subjects = Vec::new();
        for (kind, scope) in kinds.into_iter().zip(scopes) {
            let (report, _, _) =
                scan_report(kind, &plan, &selected, a.jobs, facts.as_ref(), false)?;
            subjects.push(check::Subject { scope, report });
        }
        subjects
    } else {
        a.report
            .iter()
            .map(|p| {
                let report = report::read_report(p)?;
                let scope = check::Scope::of_report(&format!("report {}", p.display()), &report);
                Ok(check::Subject { scope, report })
            })
            .collect::<Result<Vec<_>>>()?
    };
    let opts = CheckOptions {
        only: a.only.clone(),
        known,
    };
    let outcome = check::check(&baselines, &subjects, &opts)?;
    if let Some(p) = &a.junit {
        report::write_atomic(p, |w| check::write_junit(w, &outcome))?;
    }
    if let Some(p) = &a.markdown {
        report::write_atomic(p, |w| check::write_markdown(w, &outcome, &opts.known))?;
    }
    out!("{}", outcome.render_text());
    for w in outcome.warnings(&opts.known) {
        say!("popek: warning: {w}");
    }
    say!("popek: check: {}", outcome.summary());
    // Drift is what this command exists to report: 1 when any is not known.
    Ok(if outcome.drifted() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(13);
        let text = io.to_string();
        let e = anyhow::Error::new(io).context(format!("cannot open x: {text}"));
        assert_eq!(error_chain(&e), format!("cannot open x: {text}"));
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(13)).context("cannot open x");
        assert_eq!(error_chain(&e), format!("cannot open x: {text}"));
    }

    #[test]
    fn repeated_values_and_too_many_jobs_are_refused() {
        assert!(no_repeats("--mode", &[Mode::Long64, Mode::Prot32]).is_ok());
        let e = no_repeats("--mode", &[Mode::Long64, Mode::Long64]).expect_err("twice");
        assert!(e.to_string().contains("given twice"), "{e}");
        assert!(check_jobs(max_jobs()).is_ok());
        assert!(check_jobs(max_jobs() + 1).is_err());
    }
}
