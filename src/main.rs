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
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap echoes a rejected value whole: clip huge ones.
            let text = e.render().to_string();
            let clipped: Vec<String> = text
                .split(' ')
                .map(|w| {
                    if w.chars().count() > 80 {
                        analyzer::input::clip(w)
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            let text = clipped.join(" ");
            // Many short words are bounded too.
            const MAX: usize = 1000;
            if text.len() > MAX {
                let cut = (0..=MAX)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                eprintln!("{}… ({} bytes in all)", &text[..cut], text.len());
            } else {
                eprint!("{text}");
            }
            return ExitCode::from(2);
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
