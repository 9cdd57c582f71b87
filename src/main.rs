//! The `popek` binary: parses arguments into validated options, calls the
//! `analyzer` library, and turns the result into an exit code (0 success or
//! no difference, 1 a difference or finding the command exists to report,
//! 2 bad usage, unreadable input or any other error).

mod cli;

use analyzer::say;
use clap::Parser;
use std::process::ExitCode;

/// The hidden first argument that makes this process a fuzz worker (a
/// child of `popek fuzz`), not a command line.
const FUZZ_WORKER: &str = "__fuzz-worker";

fn main() -> ExitCode {
    // As the OS gives them: a file name need not be UTF-8 (clap says so of
    // an argument that must be, with exit 2).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == FUZZ_WORKER) {
        // The campaign's own arguments, always UTF-8.
        let argv: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // Ctrl-C is for the campaign, which stops its workers itself.
        let _ = signal_hook::flag::register(
            signal_hook::consts::SIGINT,
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        );
        let code = fuzzer::worker::main(&argv[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(2));
    }
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help and --version are successes; every other parse error is usage.
            if !e.use_stderr() {
                // Help that cannot be written (a full disk) is no success.
                use std::io::Write as _;
                let written = e.print().and_then(|()| std::io::stdout().flush());
                return match written {
                    Err(w) if w.kind() != std::io::ErrorKind::BrokenPipe => {
                        say!("popek: error: cannot write to standard output: {w}");
                        ExitCode::from(2)
                    }
                    _ => ExitCode::SUCCESS,
                };
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
                say!("{}… ({} bytes in all)", &text[..cut], text.len());
            } else {
                use std::io::Write as _;
                let _ = write!(std::io::stderr(), "{text}");
            }
            return ExitCode::from(2);
        }
    };
    // A campaign stops cleanly on a signal and writes what it found; every
    // other command removes its temporary files and exits.
    if !matches!(args.command, cli::Command::Fuzz(_)) {
        cli::install_signal_cleanup();
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            say!("popek: error: {}", cli::error_chain(&e));
            ExitCode::from(2)
        }
    }
}
