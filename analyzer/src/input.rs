//! Reading what users hand popek: files with a size limit (a report, a facts
//! table, never `/dev/zero` until memory runs out), opened so that a fifo
//! nobody writes to does not block and a directory is said to be one, with
//! text that is not UTF-8 named by its line; and words echoed back in error
//! messages at a bounded length.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest report file popek reads (a full scan of every mode on every
/// engine is a few hundred MB at most; the kept Unicorn report is 29 MB).
pub const MAX_REPORT_BYTES: u64 = 1 << 30;
/// The largest facts table popek reads (the kept one is 20 kB).
pub const MAX_TABLE_BYTES: u64 = 16 << 20;
/// The longest name (mnemonic, iced Code name) popek looks up.
pub const MAX_NAME_CHARS: usize = 64;

/// Opens a file a user named, to read it. A fifo that nobody writes does
/// not block the open (it reads as empty), and a directory is refused
/// with a message that says so.
pub fn open(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if file.metadata()?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a directory, not a file",
        ));
    }
    // Reads block again: a pipe's writer is waited for, as `cat` does.
    {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is open for as long as `file` lives, and F_GETFL
        // and F_SETFL only read and set its status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(file)
}

/// Reads a file of at most `limit` bytes (see [`open`]). A larger file,
/// or one that never ends (`/dev/zero`), is an `InvalidData` error naming
/// the limit; a regular file is measured before it is read.
pub fn read_bytes(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes, the most popek reads"),
        )
    };
    let file = open(path)?;
    let meta = file.metadata()?;
    if meta.is_file() && meta.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(if meta.is_file() {
        meta.len() as usize
    } else {
        0
    });
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Reads a UTF-8 text file of at most `limit` bytes (see [`read_bytes`]).
/// Text that is not UTF-8 is an `InvalidData` error naming the line and
/// the byte where it stops being text.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_bytes(path, limit)?).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text (line {line}, byte {at})"),
        )
    })
}

/// `s` as it may appear in a message: at most 40 characters, with the
/// length of the rest said (`abc… (100000 characters)`), and control
/// characters written as escapes (`\u{1b}`), so that a word echoed back
/// cannot move a terminal's cursor or hide what follows it.
pub fn clip(s: &str) -> String {
    let mut out = String::new();
    for c in clip_raw(s).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`clip`] without the escapes: for text kept in a file as it was (a
/// worker's stderr in a finding's detail), not shown to a terminal.
pub fn clip_raw(s: &str) -> String {
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
    fn a_directory_or_binary_text_is_named_and_a_lonely_fifo_does_not_block() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = read_text(dir.path(), 1024).expect_err("directory");
        assert!(e.to_string().contains("a directory"), "{e}");
        let bin = dir.path().join("bin");
        std::fs::write(&bin, b"ok\nfine\n\xff\xfe").expect("write");
        let e = read_text(&bin, 1024).expect_err("binary");
        assert!(e.to_string().contains("line 3, byte 8"), "{e}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: `c` is a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(read_text(&fifo, 1024).expect("no writer: empty"), "");
    }

    #[test]
    fn control_characters_are_escaped_in_messages() {
        assert_eq!(clip("a\u{1b}[2Jb\0"), "a\\u{1b}[2Jb\\u{0}");
        assert_eq!(clip("tab\there"), "tab\\there");
        assert_eq!(clip_raw("a\nb"), "a\nb");
    }

    #[test]
    fn long_words_are_clipped_in_messages() {
        assert_eq!(clip("sgdt"), "sgdt");
        let long = "a".repeat(100_000);
        let c = clip(&long);
        assert!(c.len() < 80 && c.ends_with("(100000 characters)"), "{c}");
    }
}
