//! [`Page`]: the bytes of one page of guest memory (a test's code, data or
//! stack page, or such a page read back after a run), shared instead of
//! copied.
//!
//! A scan makes some 670,000 runs, and each keeps the data and stack pages
//! it started from and ended with. Most runs write neither, and most tests
//! start from the same fill patterns, so a page is a reference-counted
//! buffer: the harness hands every test the same template, an engine hands
//! back the test's own page where the run did not write it, and comparing
//! two handles to one buffer costs nothing ([`Page::same`]). Writing
//! through a shared page copies it first (copy-on-write), so a page behaves
//! like the `Vec<u8>` it replaces; it serializes as that `Vec<u8>` did.

use crate::fasthash::FastMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// Pages [`Page::with_bytes_at`] keeps per thread before it lets them all
/// go, unless the thread asks for another number ([`Page::keep_made`]): a
/// scan prepares 256 entries in an image before it runs them, and finds
/// their pages again in the next image.
pub const KEPT: usize = 1024;

thread_local! {
    /// How many pages this thread's [`Page::with_bytes_at`] keeps.
    static KEEP: std::cell::Cell<usize> = const { std::cell::Cell::new(KEPT) };
}

/// Bytes of guest memory, shared by reference count and copied on write.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Page(Arc<[u8]>);

impl Page {
    /// `len` bytes of `byte`.
    pub fn filled(byte: u8, len: usize) -> Page {
        Page(std::iter::repeat_n(byte, len).collect())
    }

    /// Whether both are the same buffer (so, without looking, equal).
    pub fn same(a: &Page, b: &Page) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// Sets how many pages this thread's [`Page::with_bytes_at`] keeps
    /// (at least one). A thread that seldom asks for a page again (the
    /// fuzzer's, whose inputs each make new pages) keeps few: the pages
    /// kept are memory the thread touches, which a fresh process (a fuzz
    /// worker's child after a death) pays for in page faults. Returns the
    /// number kept before, for the caller to set again when done.
    pub fn keep_made(pages: usize) -> usize {
        KEEP.with(|k| k.replace(pages.max(1)))
    }

    /// `base` with `bytes` written at `at` (panics where they do not fit).
    /// The same arguments give the same buffer as long as this thread made
    /// it lately: a test's code page is the same on both sides and in most
    /// states, so it is made once, not once per run (and an engine that
    /// loaded it for the last run need not compare it again).
    pub fn with_bytes_at(base: &Page, at: usize, bytes: &[u8]) -> Page {
        type Key = (usize, usize, Vec<u8>);
        thread_local! {
            /// By (base buffer, offset, bytes): the base, kept alive so
            /// that its address names it, and the page made from it.
            static MADE: RefCell<FastMap<Key, (Page, Page)>> = RefCell::new(FastMap::default());
        }
        if bytes.is_empty() {
            return base.clone();
        }
        let key = (
            Arc::as_ptr(&base.0).cast::<u8>() as usize,
            at,
            bytes.to_vec(),
        );
        MADE.with(|made| {
            if let Some((_, page)) = made.borrow().get(&key) {
                return page.clone();
            }
            let mut page = base.clone();
            page[at..at + bytes.len()].copy_from_slice(bytes);
            let mut made = made.borrow_mut();
            if made.len() >= KEEP.with(std::cell::Cell::get) {
                made.clear();
            }
            made.insert(key, (base.clone(), page.clone()));
            page
        })
    }
}

impl Deref for Page {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for Page {
    /// The bytes to write: the page's own, copied first if it is shared.
    fn deref_mut(&mut self) -> &mut [u8] {
        if Arc::get_mut(&mut self.0).is_none() {
            self.0 = Arc::from(&self.0[..]);
        }
        Arc::get_mut(&mut self.0).expect("a page just copied has one owner")
    }
}

impl AsRef<[u8]> for Page {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Page {
    fn from(v: Vec<u8>) -> Page {
        Page(v.into())
    }
}

impl From<&[u8]> for Page {
    fn from(v: &[u8]) -> Page {
        Page(v.into())
    }
}

impl fmt::Debug for Page {
    /// As the bytes' `Vec<u8>` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0[..], f)
    }
}

impl Serialize for Page {
    /// As the bytes' `Vec<u8>` serializes: a sequence of numbers.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0[..].serialize(s)
    }
}

impl<'de> Deserialize<'de> for Page {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Page, D::Error> {
        Vec::<u8>::deserialize(d).map(Page::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_serializes_and_prints_as_its_vec_did() {
        let v: Vec<u8> = vec![0, 1, 0xff, 7];
        let p = Page::from(v.clone());
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
        assert_eq!(format!("{p:?}"), format!("{v:?}"));
        assert_eq!(format!("{p:#?}"), format!("{v:#?}"));
        let back: Page = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, p);
        let hash = |x: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
            use std::hash::Hasher;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            x(&mut h);
            h.finish()
        };
        use std::hash::Hash;
        assert_eq!(hash(&|h| p.hash(h)), hash(&|h| v.hash(h)));
    }

    #[test]
    fn bytes_written_at_an_offset_are_made_once() {
        let base = Page::filled(0xf4, 64);
        let a = Page::with_bytes_at(&base, 8, &[1, 2, 3]);
        assert_eq!(&a[6..12], &[0xf4, 0xf4, 1, 2, 3, 0xf4]);
        assert_eq!(a.len(), 64);
        assert!(Page::same(&a, &Page::with_bytes_at(&base, 8, &[1, 2, 3])));
        assert!(!Page::same(&a, &Page::with_bytes_at(&base, 9, &[1, 2, 3])));
        assert_ne!(a, Page::with_bytes_at(&base, 8, &[1, 2, 4]));
        let other = Page::filled(0, 64);
        assert_eq!(Page::with_bytes_at(&other, 8, &[1, 2, 3])[7], 0);
        assert!(Page::same(&base, &Page::with_bytes_at(&base, 8, &[])));
        assert_eq!(base[9], 0xf4, "the base is left alone");
        // Many pages: the oldest are let go, the page is still right.
        for i in 0..3000u32 {
            let p = Page::with_bytes_at(&base, 0, &i.to_le_bytes());
            assert_eq!(&p[..4], &i.to_le_bytes());
        }
    }

    #[test]
    fn a_thread_keeps_as_many_pages_as_it_asks_for() {
        std::thread::spawn(|| {
            assert_eq!(Page::keep_made(2), KEPT, "the number kept before");
            let base = Page::filled(0, 32);
            let a = Page::with_bytes_at(&base, 0, &[1]);
            let b = Page::with_bytes_at(&base, 0, &[2]);
            assert!(Page::same(&a, &Page::with_bytes_at(&base, 0, &[1])));
            assert!(Page::same(&b, &Page::with_bytes_at(&base, 0, &[2])));
            // A third lets the two go: made again, equal, not the same.
            let c = Page::with_bytes_at(&base, 0, &[3]);
            assert_eq!(c[0], 3);
            let again = Page::with_bytes_at(&base, 0, &[1]);
            assert_eq!(again, a);
            assert!(!Page::same(&again, &a));
            assert_eq!(Page::keep_made(KEPT), 2);
        })
        .join()
        .expect("the thread's checks");
    }

    #[test]
    fn writing_a_shared_page_copies_it_and_leaves_the_other_alone() {
        let a = Page::filled(0xf4, 16);
        let mut b = a.clone();
        assert!(Page::same(&a, &b));
        b[3] = 1;
        assert!(!Page::same(&a, &b));
        assert_eq!(a[3], 0xf4);
        assert_eq!(b[3], 1);
        assert_eq!(b.len(), 16);
        // An unshared page is written in place.
        let before = b.as_ptr();
        b[4] = 2;
        assert_eq!(b.as_ptr(), before);
        assert_ne!(a, b);
        assert_eq!(a, Page::from(vec![0xf4; 16]));
    }
}
