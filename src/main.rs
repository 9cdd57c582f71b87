//! The `popek` binary: parses arguments into validated options and hands
//! them to the `analyzer` library. Everything else lives in the library.

use analyzer::cli;
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("popek: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
