//! Command-line options and the commands behind them. `main` only parses
//! and calls [`run`]; everything here is reachable from tests.

use crate::engine::{self, EngineKind};
use crate::explain;
use crate::mode::{Config, Mode};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

/// Which x86 instructions break Popek & Goldberg? Measured, with evidence.
#[derive(Debug, Parser)]
#[command(name = "popek", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one instruction at CPL 0 and CPL 3 and show what each run did.
    Explain(ExplainArgs),
    /// List the engines, their versions, and why one is not available.
    Engines,
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
    /// Processor mode: real, 16, 32 or 64.
    #[arg(long, default_value = "64", value_parser = parse_mode)]
    pub mode: Mode,
    /// CR4.UMIP.
    #[arg(long, value_enum, default_value = "off")]
    pub umip: OnOff,
    /// EFLAGS.IOPL of the start state (0-3).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub iopl: u8,
    /// Engine: unicorn, kvm or all.
    #[arg(long, default_value = "unicorn")]
    pub engine: String,
    /// Read the target as hex bytes even if it looks like a mnemonic (`cc`).
    #[arg(long)]
    pub hex: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse::<Mode>().map_err(|e| e.to_string())
}

/// The engines a `--engine` value names: `unicorn`, `kvm` or `all`.
pub fn parse_engines(s: &str) -> Result<Vec<EngineKind>> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(EngineKind::ALL.to_vec());
    }
    s.split(',')
        .map(|p| p.parse::<EngineKind>().map_err(anyhow::Error::from))
        .collect()
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Explain(a) => cmd_explain(a),
        Command::Engines => cmd_engines(),
    }
}

fn cmd_explain(a: ExplainArgs) -> Result<ExitCode> {
    let target = explain::parse_target(&a.target, a.hex)?;
    let config = Config {
        umip: a.umip == OnOff::On,
        iopl: a.iopl,
        ..Config::default()
    };
    let entries = explain::entries_for(&target, a.mode)?;
    let kinds = parse_engines(&a.engine)?;
    let mut all = Vec::new();
    for kind in kinds {
        let mut e = match engine::open(kind) {
            Ok(e) => e,
            Err(err) if a.engine.eq_ignore_ascii_case("all") => {
                eprintln!("popek: skipping engine {kind}: {err}");
                continue;
            }
            Err(err) => return Err(err).with_context(|| format!("cannot open engine {kind}")),
        };
        all.extend(explain::explain(&entries, config, e.as_mut()));
    }
    if all.is_empty() {
        bail!("no engine could run the instruction");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print!("{}", explain::render_text(&all));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_engines() -> Result<ExitCode> {
    for kind in EngineKind::ALL {
        match engine::open(kind) {
            Ok(e) => println!("{kind}: available, {}", e.version()),
            Err(err) => println!("{kind}: not available: {err}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
