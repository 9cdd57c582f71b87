//! What an engine last wrote to guest memory, the one shared copy of the
//! harness pages' load and restore: loading an image writes only the pages
//! that differ from what the guest holds (or that the engine knows the guest
//! changed), and putting a test's page in place writes only where it
//! differs. The engine supplies how to write guest memory; where its copy
//! may be stale (Unicorn's write hook, KVM's dirty log) it says so.

use crate::machine::{GuestImage, Variant, MEM_SIZE, PAGE};
use crate::mode::{Config, Mode};

/// Which image a guest holds.
pub(crate) type ImageKey = (Mode, Config, Variant);

/// Guest memory as the engine last wrote it, and whose image that is.
pub(crate) struct Shadow {
    bytes: Vec<u8>,
    key: Option<ImageKey>,
}

impl Shadow {
    pub(crate) fn new() -> Shadow {
        Shadow {
            bytes: vec![0; MEM_SIZE as usize],
            key: None,
        }
    }

    /// Whether the guest holds `image` (as far as this copy knows).
    pub(crate) fn holds(&self, image: &GuestImage) -> bool {
        self.key == Some((image.mode, image.config, image.variant))
    }

    /// Makes guest memory equal to `image`'s: writes (through `write`, at
    /// a physical address) every page that differs from this copy, or for
    /// which `stale` says the guest may differ from it. Then the guest holds
    /// the image.
    pub(crate) fn load<E>(
        &mut self,
        image: &GuestImage,
        stale: impl Fn(usize) -> bool,
        mut write: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for (i, (new, old)) in image
            .memory
            .chunks(PAGE as usize)
            .zip(self.bytes.chunks_mut(PAGE as usize))
            .enumerate()
        {
            if stale(i) || new != old {
                write(i as u64 * PAGE, new)?;
                old.copy_from_slice(new);
            }
        }
        self.key = Some((image.mode, image.config, image.variant));
        Ok(())
    }

    /// Puts `bytes` at page `phys` of the guest: everything when `stale`
    /// (the guest may differ from this copy there), else only the pieces of
    /// `chunk` bytes that differ from it.
    pub(crate) fn put<E>(
        &mut self,
        phys: u64,
        bytes: &[u8],
        stale: bool,
        chunk: usize,
        mut write: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let p = phys as usize;
        let old = &mut self.bytes[p..p + PAGE as usize];
        if stale {
            write(phys, bytes)?;
            old.copy_from_slice(bytes);
            return Ok(());
        }
        // One comparison of the whole page first: most pages put back are
        // equal (one memcmp), and a page that differs is then written in
        // the pieces that differ.
        if old == bytes {
            return Ok(());
        }
        for (k, (new, was)) in bytes.chunks(chunk).zip(old.chunks_mut(chunk)).enumerate() {
            if new != was {
                write(phys + (k * chunk) as u64, new)?;
                was.copy_from_slice(new);
            }
        }
        Ok(())
    }

    /// The copy's bytes from `start` to `end` (what the engine last wrote).
    pub(crate) fn bytes(&self, start: usize, end: usize) -> &[u8] {
        &self.bytes[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Variant, CODE};

    #[test]
    fn only_what_differs_or_is_stale_is_written() {
        let cfg = Config::UMIP_OFF;
        let image = GuestImage::build(Mode::Prot32, cfg, Variant::base(&cfg));
        let mut shadow = Shadow::new();
        let written = std::cell::RefCell::new(Vec::new());
        let log = |at: u64, b: &[u8]| -> Result<(), ()> {
            written.borrow_mut().push((at, b.len()));
            Ok(())
        };
        let take = || std::mem::take(&mut *written.borrow_mut());
        shadow.load(&image, |_| false, log).unwrap();
        assert!(shadow.holds(&image));
        let first = take();
        assert!(!first.is_empty() && first.iter().all(|&(_, n)| n == PAGE as usize));
        // The same image again: nothing, unless a page is stale.
        shadow.load(&image, |_| false, log).unwrap();
        assert!(take().is_empty());
        shadow.load(&image, |i| i == 3, log).unwrap();
        assert_eq!(take(), vec![(3 * PAGE, PAGE as usize)]);
        // A page put with one changed byte writes only its chunk.
        let mut page = shadow.bytes(CODE as usize, (CODE + PAGE) as usize).to_vec();
        page[100] ^= 1;
        shadow.put(CODE, &page, false, 64, log).unwrap();
        assert_eq!(take(), vec![(CODE + 64, 64)]);
        assert_eq!(
            shadow.bytes(CODE as usize, (CODE + PAGE) as usize),
            &page[..]
        );
        shadow.put(CODE, &page, true, 64, log).unwrap();
        assert_eq!(take(), vec![(CODE, PAGE as usize)]);
    }
}
