//! popek's library: the machine model and harness builders, the instruction
//! catalog, the engines, the classifier and the reports.

/// `eprintln!` that never panics: a message that cannot be written to
/// stderr (closed, or a full disk behind it) is dropped, and the command
/// goes on to write its results and exit as it would. Every message of
/// the binary and the fuzzer goes through it.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod catalog;
pub mod check;
pub mod classify;
pub mod compare;
pub mod deviation;
pub mod engine;
pub mod explain;
pub mod fasthash;
pub mod host;
pub mod input;
pub mod length;
pub mod machine;
pub mod mode;
pub mod observe;
pub mod opmap;
pub mod page;
pub mod probe;
pub mod record;
pub mod report;
pub mod scan;
pub mod truth;
pub mod vectors;
pub mod violators;

pub use mode::{Config, Mode};
