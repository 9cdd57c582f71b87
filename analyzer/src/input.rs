//! Reading what users hand popek: files with a size limit (a report, a facts
//! table, never `/dev/zero` until memory runs out) and words echoed back in
//! error messages at a bounded length.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The largest report file popek reads (a full scan of every mode on every
/// engine is a few hundred MB at most; the kept Unicorn report is 29 MB).
pub const MAX_REPORT_BYTES: u64 = 1 << 30;
/// The largest facts table popek reads (the kept one is 20 kB).
pub const MAX_TABLE_BYTES: u64 = 16 << 20;
/// The longest name (mnemonic, iced Code name) popek looks up.
pub const MAX_NAME_CHARS: usize = 64;

/// Reads a UTF-8 text file of at most `limit` bytes. A larger file, or one
/// that never ends (`/dev/zero`), is an `InvalidData` error naming the limit.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {} bytes, the most popek reads", limit),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// `s` as it may appear in a message: at most 40 characters, with the
/// length of the rest said (`abc… (100000 characters)`).
pub fn clip(s: &str) -> String {
    const SHOWN: usize = 40;
    let n = s.chars().count();
    if n <= SHOWN {
        s.to_string()
    } else {
        let head: String = s.chars().take(SHOWN).collect();
        format!("{head}… ({n} characters)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_never_ends_is_refused_at_the_limit() {
        let e = read_text(Path::new("/dev/zero"), 1024).expect_err("too large");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("1024 bytes"), "{e}");
    }

    #[test]
    fn long_words_are_clipped_in_messages() {
        assert_eq!(clip("sgdt"), "sgdt");
        let long = "a".repeat(100_000);
        let c = clip(&long);
        assert!(c.len() < 80 && c.ends_with("(100000 characters)"), "{c}");
    }
}
