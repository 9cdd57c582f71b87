//! The `popek` binary: parses arguments into validated options, calls the
//! `analyzer` library, and turns the result into an exit code (0 success or
//! no difference, 1 a difference or finding the command exists to report,
//! 2 bad usage, unreadable input or any other error).

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help and --version are successes; every other parse error is usage.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    cli::install_signal_cleanup();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("popek: error: {}", cli::error_chain(&e));
            ExitCode::from(2)
        }
    }
}
