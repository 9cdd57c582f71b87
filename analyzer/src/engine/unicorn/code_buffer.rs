//! Where Unicorn keeps the code it translates: within a direct CALL's reach
//! of its helpers.
//!
//! Translated code calls helpers (the hooks, the slow path of every load
//! and store, the exception helpers) all the time. QEMU 5's x86 backend,
//! which Unicorn 2 is, emits a direct `CALL rel32` where the helper lies
//! within ±2 GB of the code, and otherwise an indirect CALL through a
//! constant-pool entry of the block, entered in the pool with an insertion
//! sort: quadratic in the calls of the block. Unicorn lets the kernel place
//! its code buffer (`mmap` with no address), which puts it next to the
//! shared libraries, some 40 TB from the helpers in popek's own
//! position-independent text. A block of a few hundred instructions with
//! hooks (a run into zero-filled memory) then took milliseconds to
//! translate, and a third of a fuzz campaign's time went into the sort.
//!
//! So this module defines `mmap64`, the symbol through which Unicorn's C
//! code maps memory (it is linked statically into popek, and the
//! executable's definition is the one its calls bind to). A request for a
//! private anonymous read-write-execute mapping with no address, which in
//! this process only Unicorn's code buffer makes, is placed below the
//! executable's text, within reach of every helper, when such a place is
//! free; every other request, and that one when no place is free, goes to
//! the kernel unchanged. Where the buffer lies changes no translation, only
//! how a call is encoded. Like the rest of popek, this is for x86-64 Linux
//! with glibc (the raw `mmap` system call takes its six arguments in
//! registers there).

use std::ffi::{c_int, c_void};

/// Size of each instance's code buffer (QEMU's default is 1 GB, and only
/// one of those would fit within reach): room below the text for about 28
/// instances, each of which flushes its translations when its buffer is
/// full.
pub(super) const SIZE: u32 = 64 << 20;

/// How far a `CALL rel32` reaches.
const REACH: usize = 1 << 31;

/// Room kept between the buffers and the helper this module measures from
/// (`uc_open`), for the rest of the executable's text on either side of it.
const TEXT_ROOM: usize = 64 << 20;

/// Alignment of the places tried.
const ALIGN: usize = 2 << 20;

/// An address in the text of Unicorn's helpers.
fn anchor() -> usize {
    unicorn_engine::uc_open as *const () as usize
}

/// Whether every byte of `[at, at + len)` reaches every byte within
/// `TEXT_ROOM` of the anchor with a `CALL rel32`.
pub(super) fn within_reach(at: usize, len: usize) -> bool {
    let a = anchor();
    let (lo, hi) = (a.saturating_sub(TEXT_ROOM), a.saturating_add(TEXT_ROOM));
    let end = at.saturating_add(len);
    hi.saturating_sub(at) < REACH && end.saturating_sub(lo) < REACH
}

/// The places tried for a buffer of `len` bytes: below the text, nearest
/// first, while within reach.
fn places(len: usize) -> impl Iterator<Item = usize> {
    let top = anchor().saturating_sub(TEXT_ROOM) & !(ALIGN - 1);
    let step = len.max(1).div_ceil(ALIGN) * ALIGN;
    (1..)
        .map_while(move |k: usize| top.checked_sub(k.checked_mul(step)?))
        .take_while(move |&at| at > 0 && within_reach(at, len))
}

/// The kernel's `mmap`.
fn raw(at: usize, len: usize, prot: c_int, flags: c_int, fd: c_int, off: i64) -> *mut c_void {
    // SAFETY: the mmap system call with the caller's arguments; it touches
    // no memory of this process but the mapping it makes (with no
    // MAP_FIXED, nothing already mapped is replaced: MAP_FIXED_NOREPLACE
    // fails instead). On failure `syscall` sets errno and returns -1, which
    // is MAP_FAILED, as `mmap` does.
    unsafe {
        libc::syscall(
            libc::SYS_mmap,
            at as libc::c_long,
            len as libc::c_long,
            prot as libc::c_long,
            flags as libc::c_long,
            fd as libc::c_long,
            off as libc::c_long,
        ) as *mut c_void
    }
}

/// A buffer of `len` bytes within reach, if a place is free.
fn near(len: usize, prot: c_int, flags: c_int) -> Option<*mut c_void> {
    for at in places(len) {
        let p = raw(at, len, prot, flags | libc::MAP_FIXED_NOREPLACE, -1, 0);
        if p == libc::MAP_FAILED {
            continue;
        }
        if p as usize == at {
            return Some(p);
        }
        // A kernel older than MAP_FIXED_NOREPLACE (4.17) takes the address
        // as a hint and may map elsewhere.
        if within_reach(p as usize, len) {
            return Some(p);
        }
        // SAFETY: `p` is the mapping of `len` bytes just made, which no one
        // else knows of.
        unsafe { libc::munmap(p, len) };
        return None;
    }
    None
}

/// `mmap64` for the C code linked into popek (Unicorn): a private anonymous
/// read-write-execute mapping with no address (the code buffer) is placed
/// within reach of the helpers where a place is free; anything else is the
/// kernel's `mmap`.
///
/// # Safety
/// As `mmap`: the caller owns what it maps and must not have the kernel
/// replace a mapping it uses (this function adds no MAP_FIXED).
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: i64,
) -> *mut c_void {
    let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    let code = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    if addr.is_null() && len > 0 && prot == rwx && flags == code {
        if let Some(p) = near(len, prot, flags) {
            return p;
        }
    }
    raw(addr as usize, len, prot, flags, fd, off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Mode;

    /// The read-write-execute mappings of `SIZE` bytes (code buffers; QEMU
    /// makes the last page a guard page).
    fn code_buffers() -> Vec<usize> {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        maps.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("rwxp"))
            .filter_map(|l| {
                let (a, b) = l.split_whitespace().next()?.split_once('-')?;
                let (a, b) = (
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                );
                (b - a == SIZE as usize - 4096).then_some(a)
            })
            .collect()
    }

    #[test]
    fn the_places_lie_below_the_text_within_reach() {
        let all: Vec<usize> = places(SIZE as usize).collect();
        assert!(all.len() >= 20, "{} places", all.len());
        for w in all.windows(2) {
            assert_eq!(w[0] - w[1], SIZE as usize);
        }
        for &at in &all {
            assert!(at + SIZE as usize <= anchor() - TEXT_ROOM);
            assert!(within_reach(at, SIZE as usize));
        }
        // One place further is out of reach.
        let last = *all.last().expect("places");
        assert!(!within_reach(last - SIZE as usize, SIZE as usize));
    }

    #[test]
    fn unicorn_translates_into_a_buffer_within_reach_of_its_helpers() {
        // In a process of its own: other tests' instances, made and
        // dropped at any time, may hold every place within reach.
        const ALONE: &str = "POPEK_TEST_CODE_BUFFER_ALONE";
        const NAME: &str = "engine::unicorn::code_buffer::tests::\
                            unicorn_translates_into_a_buffer_within_reach_of_its_helpers";
        if std::env::var_os(ALONE).is_none() {
            let exe = std::env::current_exe().expect("the test binary");
            let out = std::process::Command::new(exe)
                .args(["--exact", NAME, "--test-threads=1"])
                .env(ALONE, "1")
                .output()
                .expect("run the test alone");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            assert!(text.contains("test result: ok. 1 passed"), "{text}");
            return;
        }
        let _uc = super::super::ffi::open(Mode::Long64).expect("unicorn");
        let buffers = code_buffers();
        assert!(!buffers.is_empty(), "no code buffer of {SIZE} bytes mapped");
        assert!(
            buffers.iter().all(|&at| within_reach(at, SIZE as usize)),
            "code buffers at {buffers:#x?}, helpers near {:#x}",
            anchor()
        );
    }

    #[test]
    fn other_mappings_are_the_kernels() {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let len = 1 << 20;
        // SAFETY: a fresh anonymous mapping, unmapped below; nothing else
        // uses it.
        unsafe {
            let p = mmap64(std::ptr::null_mut(), len, rw, flags, -1, 0);
            assert_ne!(p, libc::MAP_FAILED);
            // The kernel placed it, not this module (whatever the kernel's
            // layout: top-down or, with an unlimited stack, bottom-up).
            assert!(!places(len).any(|at| at == p as usize));
            *(p as *mut u8) = 1;
            assert_eq!(libc::munmap(p, len), 0);
        }
    }
}
