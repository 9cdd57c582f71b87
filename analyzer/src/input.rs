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

/// How many times its size JSON text may take in memory once read into
/// popek's types, as [`json_memory`] estimates it. What popek writes is
/// estimated at 1.4-1.7 times its size (engine reports of 30-118 MB; one
/// of 30 MB read takes about 34 MB), 2.0 for a comparison, 2.3 for the
/// runs, 2.1-2.2 for findings files (a line at most 2.6), so this refuses
/// only text made to take many times its size (a record whose lists hold
/// millions of one-character strings took 14 times).
pub const MEMORY_PER_BYTE: u64 = 3;

/// What JSON text of any size may take in memory beyond
/// [`MEMORY_PER_BYTE`] times its size: small text is never refused.
const MEMORY_SLACK: u64 = 16 << 20;

/// An estimate of the memory the JSON value `text` takes once read: every
/// string its size and heap block (as a `String` takes them), every list
/// and map entry a word or more, every other value a word. It reads the
/// text without keeping it.
pub fn json_memory(text: &[u8]) -> serde_json::Result<u64> {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    struct Cost(u64);
    struct Costs;
    /// A `String` of `n` bytes: its three words, and a heap block of at
    /// least 32 bytes (malloc's least chunk) where it has any.
    fn string(n: usize) -> u64 {
        24 + if n == 0 {
            0
        } else {
            (n as u64 + 8).next_multiple_of(16).max(32)
        }
    }
    impl<'de> Visitor<'de> for Costs {
        type Value = Cost;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Cost, E> {
            Ok(Cost(1))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Cost, E> {
            Ok(Cost(8))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Cost, E> {
            Ok(Cost(8))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Cost, E> {
            Ok(Cost(8))
        }
        fn visit_str<E>(self, s: &str) -> Result<Cost, E> {
            Ok(Cost(string(s.len())))
        }
        fn visit_unit<E>(self) -> Result<Cost, E> {
            Ok(Cost(8))
        }
        fn visit_none<E>(self) -> Result<Cost, E> {
            Ok(Cost(8))
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Cost, D::Error> {
            Cost::deserialize(d)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cost, A::Error> {
            let mut n = 24u64;
            while let Some(Cost(c)) = seq.next_element::<Cost>()? {
                n = n.saturating_add(c);
            }
            Ok(Cost(n))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cost, A::Error> {
            // A struct's fields are its values (its names are not kept,
            // nor fields it does not have); a map's keys are `String`s in
            // a tree. No struct of popek's has more than `FIELDS` fields,
            // so past them the keys count, with a tree node's share. A map
            // takes its three words even empty (`{}`, a finding's engine
            // with no outcome).
            const FIELDS: usize = 64;
            let (mut n, mut i) = (24u64, 0usize);
            while let Some((Cost(k), Cost(v))) = map.next_entry::<Cost, Cost>()? {
                n = n.saturating_add(v).saturating_add(8);
                if i >= FIELDS {
                    n = n.saturating_add(k).saturating_add(24);
                }
                i += 1;
            }
            Ok(Cost(n))
        }
    }
    impl<'de> Deserialize<'de> for Cost {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cost, D::Error> {
            d.deserialize_any(Costs)
        }
    }
    serde_json::from_slice::<Cost>(text).map(|Cost(n)| n)
}

/// In a serde `Visitor` of a peek (a first look at JSON that keeps only
/// what it needs): the scalar values (booleans, numbers, null), each read
/// as `$v`. Strings, maps and lists are the visitor's own to take.
macro_rules! other_json_values {
    ($t:ty, $v:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<$t, E> {
            Ok($v)
        }
        fn visit_i64<E>(self, _: i64) -> Result<$t, E> {
            Ok($v)
        }
        fn visit_u64<E>(self, _: u64) -> Result<$t, E> {
            Ok($v)
        }
        fn visit_f64<E>(self, _: f64) -> Result<$t, E> {
            Ok($v)
        }
        fn visit_unit<E>(self) -> Result<$t, E> {
            Ok($v)
        }
    };
}

pub(crate) use other_json_values;

/// A first look at one field of a JSON object (the one of
/// [`PEEK_FIELDS`] that `FIELD` numbers), nothing else of the object kept:
/// `Object(None)` where the object lacks it (the last one given counts),
/// `NotObject` for any other value.
pub(crate) enum Peeked<T, const FIELD: u8> {
    Object(Option<T>),
    NotObject,
}

/// The names of the fields [`Peeked`] looks at.
pub(crate) const PEEK_FIELDS: [&str; 2] = ["tool", "files"];

impl<'de, T: serde::Deserialize<'de>, const FIELD: u8> serde::Deserialize<'de>
    for Peeked<T, FIELD>
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V<T, const FIELD: u8>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>, const FIELD: u8> Visitor<'de> for V<T, FIELD> {
            type Value = Peeked<T, FIELD>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut field = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == PEEK_FIELDS[FIELD as usize] {
                        field = Some(map.next_value::<T>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Peeked::Object(field))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| Peeked::NotObject)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Peeked::NotObject)
            }
            other_json_values!(Self::Value, Peeked::NotObject);
        }
        d.deserialize_any(V::<T, FIELD>(std::marker::PhantomData))
    }
}

/// A JSON string, or `None` for any other value (skipped, not kept).
pub(crate) struct StringOrNot(pub Option<String>);

impl<'de> serde::Deserialize<'de> for StringOrNot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringOrNot;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, s: &str) -> Result<StringOrNot, E> {
                Ok(StringOrNot(Some(s.to_string())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StringOrNot, A::Error> {
                skip_map(map).map(|()| StringOrNot(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<StringOrNot, A::Error> {
                skip_seq(seq).map(|()| StringOrNot(None))
            }
            other_json_values!(StringOrNot, StringOrNot(None));
        }
        d.deserialize_any(V)
    }
}

/// Reads the rest of a JSON list, keeping nothing.
pub(crate) fn skip_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Reads the rest of a JSON object, keeping nothing.
pub(crate) fn skip_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map
        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
        .is_some()
    {}
    Ok(())
}

/// A list of at most `N` items, refused as it is read (for
/// `#[serde(deserialize_with = ...)]`): where every item of a list takes
/// memory the estimate ([`json_memory`]) does not see, such as a small
/// map's tree node, a bound on the items bounds that.
pub fn bounded_vec<'de, D, T, const N: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::de::{Error, SeqAccess, Visitor};
    struct V<T, const N: usize>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {N} items")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element()? {
                if out.len() == N {
                    return Err(A::Error::custom(format!("more than {N} items in a list")));
                }
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V::<T, N>(std::marker::PhantomData))
}

/// A map of at most `N` entries, refused as it is read (see
/// [`bounded_vec`]).
pub fn bounded_map<'de, D, V, const N: usize>(
    d: D,
) -> Result<std::collections::BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: serde::Deserialize<'de>,
{
    use serde::de::{Error, MapAccess, Visitor};
    struct M<V, const N: usize>(std::marker::PhantomData<V>);
    impl<'de, V: serde::Deserialize<'de>, const N: usize> Visitor<'de> for M<V, N> {
        type Value = std::collections::BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a map of at most {N} entries")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = std::collections::BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, V>()? {
                out.insert(k, v);
                if out.len() > N {
                    return Err(A::Error::custom(format!("more than {N} entries in a map")));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(M::<V, N>(std::marker::PhantomData))
}

/// Why JSON text is not read: what [`check_json_memory`] finds.
#[derive(Debug)]
pub enum JsonRefusal {
    /// It is not JSON, as serde_json says (its line and column): the
    /// caller says so as its own parse would, without that parse, which
    /// builds what the text holds before it finds the error at its end.
    Syntax(serde_json::Error),
    /// It would take more memory once read than what popek writes ever
    /// does ([`MEMORY_PER_BYTE`]), or it holds a number out of range
    /// (`1e400`: JSON, but not what popek writes, and one its types would
    /// skip in a field they do not have): why.
    Refused(String),
}

/// Refuses JSON text that is not JSON or would take more memory once read
/// than what popek writes ever does ([`MEMORY_PER_BYTE`]).
pub fn check_json_memory(text: &[u8]) -> Result<(), JsonRefusal> {
    let need = json_memory(text).map_err(|e| {
        if out_of_range(&e) {
            JsonRefusal::Refused(format!("not JSON popek writes: {e}"))
        } else {
            JsonRefusal::Syntax(e)
        }
    })?;
    check_memory(text.len(), need).map_err(JsonRefusal::Refused)
}

/// Whether serde_json refused a number out of range (`1e400`), which is
/// JSON but nothing popek writes.
fn out_of_range(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("number out of range")
}

/// [`check_json_memory`] of JSON lines (blank ones skipped): each line a
/// value, their sum against the whole text's size (the refusal); where
/// that passes, the first line that is not JSON, with its number (from 1)
/// and serde_json's error, for the caller to say when its reading gets
/// there (lines before it may be refused for what they hold).
pub fn check_json_lines_memory(text: &str) -> Result<Option<(usize, serde_json::Error)>, String> {
    let mut need = 0u64;
    let mut first_bad = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match json_memory(line.as_bytes()) {
            Ok(n) => need = need.saturating_add(n),
            Err(e) => {
                if first_bad.is_none() {
                    first_bad = Some((i + 1, e));
                }
            }
        }
    }
    check_memory(text.len(), need)?;
    Ok(first_bad)
}

/// A serde_json error of one line as its message says it, with its column
/// but without serde_json's "line 1" (the line is the caller's to name).
pub fn json_line_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let tail = format!(" at line {} column {}", e.line(), e.column());
    match msg.strip_suffix(&tail) {
        Some(m) => format!("column {}: {m}", e.column()),
        None => msg,
    }
}

/// Refuses `need` bytes of memory for text of `len` bytes where that is
/// more than [`MEMORY_PER_BYTE`] times its size (and the slack).
fn check_memory(len: usize, need: u64) -> Result<(), String> {
    let len = len as u64;
    if need
        > len
            .saturating_mul(MEMORY_PER_BYTE)
            .saturating_add(MEMORY_SLACK)
    {
        return Err(format!(
            "its {len} bytes would take about {} MB of memory once read, more than \
             {MEMORY_PER_BYTE} times their size (what popek writes is estimated at under 3 times)",
            need >> 20
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_memory_counts_strings_lists_and_the_keys_of_large_maps() {
        let m = |t: &str| json_memory(t.as_bytes()).unwrap();
        // A struct of two fields: a number (a word) and a string of 5
        // bytes (three words and a 32-byte block), a word per field, and
        // the map's own three words.
        assert_eq!(m(r#"{"a":1,"b":"hello"}"#), 24 + 8 + 56 + 16);
        assert_eq!(m(r#"{"a":{}}"#), 24 + 24 + 8);
        assert_eq!(m(r#"["",true,null]"#), 24 + 24 + 1 + 8);
        // Past 64 entries a map's keys count too.
        let map = |n: usize| {
            let e: Vec<String> = (0..n).map(|i| format!("\"k{i:02}\":0")).collect();
            m(&format!("{{{}}}", e.join(",")))
        };
        assert_eq!(map(64), 24 + 64 * 16);
        assert_eq!(map(65), 24 + 65 * 16 + 56 + 24);
        assert!(json_memory(b"[1,").is_err());
    }

    #[test]
    fn text_made_to_take_many_times_its_size_is_refused_and_other_text_passes() {
        let bloated = |r: Result<(), JsonRefusal>| match r {
            Err(JsonRefusal::Refused(why)) => why,
            other => panic!("{other:?}"),
        };
        let strings = format!("[{}]", vec!["\"a\""; 5_000_000].join(","));
        let e = bloated(check_json_memory(strings.as_bytes()));
        assert!(e.contains("more than 3 times their size"), "{e}");
        let lines = "[\"a\",\"b\"]\n".repeat(2_000_000);
        assert!(check_json_lines_memory(&lines).is_err());
        // Numbers take a word for their 2 bytes; small text has the slack.
        let ones = format!("[{}]", vec!["1"; 5_000_000].join(","));
        assert!(check_json_memory(ones.as_bytes()).is_ok());
        let few = format!("[{}]", vec!["\"a\""; 100_000].join(","));
        assert!(check_json_memory(few.as_bytes()).is_ok());
        // Small maps of empty ones (a finding's engines): each its size.
        let engines: Vec<String> = (0..64).map(|i| format!("\"{i:x}\":{{}}")).collect();
        let line = format!("{{\"engines\":{{{}}}}}\n", engines.join(","));
        assert!(check_json_lines_memory(&line.repeat(100_000)).is_err());
    }

    #[test]
    fn bounded_lists_and_maps_are_refused_past_their_bound() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[serde(deserialize_with = "bounded_vec::<_, _, 3>")]
            list: Vec<u8>,
            #[serde(deserialize_with = "bounded_map::<_, _, 2>")]
            map: std::collections::BTreeMap<String, u8>,
        }
        let read = |t: &str| serde_json::from_str::<T>(t).map_err(|e| e.to_string());
        let t = read(r#"{"list":[1,2,3],"map":{"a":1,"b":2}}"#).expect("within");
        assert_eq!((t.list.len(), t.map.len()), (3, 2));
        let e = read(r#"{"list":[1,2,3,4],"map":{}}"#).expect_err("list");
        assert!(e.contains("more than 3 items"), "{e}");
        let e = read(r#"{"list":[],"map":{"a":1,"b":2,"c":3}}"#).expect_err("map");
        assert!(e.contains("more than 2 entries"), "{e}");
        // A key given twice is one entry.
        assert!(read(r#"{"list":[],"map":{"a":1,"a":2,"b":3}}"#).is_ok());
    }

    /// Text that is not JSON is said as such, with where, before any
    /// parse builds what it holds; a number out of range, which a type
    /// would skip unread, is refused. Bytes that are not UTF-8 are not JSON.
    #[test]
    fn what_is_not_json_is_said_with_where() {
        let syntax = |r: Result<(), JsonRefusal>| match r {
            Err(JsonRefusal::Syntax(e)) => e,
            other => panic!("{other:?}"),
        };
        let trailing = format!("[{}] x", vec!["\"a\""; 1000].join(","));
        let e = syntax(check_json_memory(trailing.as_bytes()));
        assert!(e.to_string().contains("trailing characters"), "{e}");
        match check_json_memory(b"{\n\"zz\":1e400}") {
            Err(JsonRefusal::Refused(why)) => {
                assert!(
                    why.contains("not JSON popek writes: number out of range at line 2 column 10"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(check_json_memory(b"[\"\xff\"]").is_err());
        match check_json_lines_memory("{}\n\n[1e400]\n[\n") {
            Ok(Some((3, e))) => {
                assert_eq!(json_line_error(&e), "column 6: number out of range");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(check_json_lines_memory("{}\n[1]\n"), Ok(None)));
    }

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
