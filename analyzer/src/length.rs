//! Instruction length as an engine fetches it, by the page-boundary method
//! (sandsifter's): the first `k` bytes of the instruction end an executable
//! page and the next page is not executable (a fenced image,
//! [`GuestImage::is_fenced`]). If the engine needs more than `k` bytes it
//! faults with #PF at the instruction, the faulting address the start of
//! the next page; with `k` bytes or more it decodes the instruction and
//! does whatever else it does (completes, traps, transfers). The length is
//! the least `k` at which the fetch no longer crosses.
//!
//! The same code runs on every engine, through [`crate::probe::Prober`];
//! only modes with paging can be fenced (16-bit protected and real mode
//! are not measured).

use crate::machine::{GuestImage, Prepared, Variant, CODE, PAGE};
use crate::mode::{Config, Mode};
use crate::observe::Outcome;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest instruction x86 decodes.
pub const MAX_LEN: usize = 15;

/// What the page-boundary method measured.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FetchLength {
    /// The engine fetched this many bytes: with one fewer before the
    /// boundary its fetch crossed it, with this many it did not.
    Bytes(u8),
    /// With all 15 bytes before the boundary the fetch still crossed it.
    Longer,
    /// The method could not tell (no paging in the mode, or the engine
    /// failed at a step): why.
    NotMeasured(String),
    /// The engine does not run the state (a side or mode it lacks): why.
    NotRun(String),
}

impl FetchLength {
    /// The measured length, if there is one.
    pub fn bytes(&self) -> Option<usize> {
        match self {
            FetchLength::Bytes(n) => Some(*n as usize),
            _ => None,
        }
    }
}

impl fmt::Display for FetchLength {
    /// `length 3 (page boundary)`, `more than 15 bytes (page boundary)`,
    /// `length not measured: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchLength::Bytes(n) => write!(f, "length {n} (page boundary)"),
            FetchLength::Longer => write!(f, "more than {MAX_LEN} bytes (page boundary)"),
            FetchLength::NotMeasured(why) => write!(f, "length not measured: {why}"),
            FetchLength::NotRun(why) => write!(f, "length not measured (not run): {why}"),
        }
    }
}

/// The state the method runs in: the base state of `config` with the page
/// after the code page not executable. `None` where the mode has no paging.
pub fn fenced_variant(mode: Mode, config: &Config) -> Option<Variant> {
    mode.has_paging().then(|| Variant {
        fetch_fence: true,
        ..Variant::base(config)
    })
}

/// What the method says where `mode` cannot be fenced.
pub fn not_fenced(mode: Mode) -> FetchLength {
    FetchLength::NotMeasured(format!(
        "mode {mode} has no paging to fence the code page with"
    ))
}

/// Whether a run of `test` (moved by [`Prepared::at_page_end`]) in the
/// fenced `image` fetched across the page boundary: a #PF at the
/// instruction whose address, where the engine reports one, is the next
/// page. `None` when the run says nothing (an engine failure, a state the
/// engine does not run).
pub fn crossed(image: &GuestImage, test: &Prepared, outcome: &Outcome) -> Option<bool> {
    match outcome {
        Outcome::Trap {
            vector: 14,
            rip,
            address,
            ..
        } if *rip == test.rip => Some(address.is_none_or(|a| a == image.linear(CODE + PAGE))),
        Outcome::EngineError(_) | Outcome::NotSupported(_) | Outcome::Shutdown => None,
        // It decoded and ran (a loop through itself hangs).
        _ => Some(false),
    }
}

/// Measures the length of `test` in the fenced `image` by running
/// `test.at_page_end(k)` through `run` for some `k`: first the decoder's
/// length `hint` and one less (two runs where engine and decoder agree),
/// then a binary search. The fetch is taken to cross for every `k` below
/// the length and for none from it on.
pub fn measure<E>(
    image: &GuestImage,
    test: &Prepared,
    hint: usize,
    run: impl FnMut(&Prepared) -> Result<Outcome, E>,
) -> Result<FetchLength, E> {
    measure_guessing(image, test, &[hint], run)
}

/// [`measure`] trying the lengths `guesses` in turn before the binary
/// search: a guess `g` still possible costs the runs at `g` and `g - 1`
/// that are not known yet (so a right first guess costs two, or one for
/// a guess of 1), a wrong one narrows the search. With the one guess
/// `[hint]` it is [`measure`], run for run. Where the fetch crosses for
/// every `k` below the length and for none from it on, every order of
/// guesses finds the same length.
pub fn measure_guessing<E>(
    image: &GuestImage,
    test: &Prepared,
    guesses: &[usize],
    mut run: impl FnMut(&Prepared) -> Result<Outcome, E>,
) -> Result<FetchLength, E> {
    if !image.is_fenced() {
        return Ok(not_fenced(image.mode));
    }
    let mut step = |k: usize| -> Result<Result<bool, FetchLength>, E> {
        let moved = test.at_page_end(k);
        let outcome = run(&moved)?;
        Ok(
            crossed(image, &moved, &outcome).ok_or_else(|| match &outcome {
                Outcome::NotSupported(why) => FetchLength::NotRun(why.clone()),
                o => FetchLength::NotMeasured(format!(
                    "with {k} byte{} before the boundary: {}",
                    if k == 1 { "" } else { "s" },
                    o.short()
                )),
            }),
        )
    };
    macro_rules! cross {
        ($k:expr) => {
            match step($k)? {
                Ok(c) => c,
                Err(not) => return Ok(not),
            }
        };
    }
    // The length L: every k < L crosses, no k >= L does (L = 16: all of
    // 1..=15 cross). Search L in lo..=hi + 1, where every k < lo is known
    // to cross and hi + 1 not to (or is 16).
    let (mut lo, mut hi) = (1, MAX_LEN);
    for &guess in guesses {
        let g = guess.clamp(1, MAX_LEN);
        if g < lo || g > hi + 1 {
            continue;
        }
        // g = hi + 1 is known not to cross.
        if g <= hi && cross!(g) {
            lo = g + 1;
            continue;
        }
        // g does not cross: L is g if g - 1 does (or g is the least left).
        if g == lo || cross!(g - 1) {
            return Ok(FetchLength::Bytes(g as u8));
        }
        hi = g - 2;
    }
    while lo <= hi {
        let mid = (lo + hi) / 2;
        if cross!(mid) {
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    Ok(if lo <= MAX_LEN {
        FetchLength::Bytes(lo as u8)
    } else {
        FetchLength::Longer
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Setup;
    use crate::observe::Side;

    fn fenced(mode: Mode) -> GuestImage {
        let cfg = Config::UMIP_OFF;
        GuestImage::build(mode, cfg, fenced_variant(mode, &cfg).unwrap())
    }

    /// An engine that needs `len` bytes: #PF at the boundary with fewer.
    fn engine_of(image: &GuestImage, len: usize) -> impl FnMut(&Prepared) -> Result<Outcome, ()> {
        let boundary = image.linear(CODE + PAGE);
        move |t: &Prepared| {
            let k = (CODE + PAGE - t.rip) as usize;
            Ok(if k < len {
                Outcome::Trap {
                    vector: 14,
                    error_code: Some(0x15),
                    rip: t.rip,
                    address: Some(boundary),
                }
            } else {
                Outcome::Trap {
                    vector: 6,
                    error_code: None,
                    rip: t.rip,
                    address: None,
                }
            })
        }
    }

    /// What the search must find for an instruction of `len` bytes.
    fn expected(len: usize) -> FetchLength {
        if len <= MAX_LEN {
            FetchLength::Bytes(len as u8)
        } else {
            FetchLength::Longer
        }
    }

    /// A test in `image` at CPL 3 (its bytes do not matter to the model
    /// engines, which decide by the bytes' count before the boundary).
    fn ud2_at_cpl3(image: &GuestImage) -> Prepared {
        image
            .prepare(Side::User, &[0x0F, 0x0B], &Setup::default())
            .unwrap()
    }

    #[test]
    fn every_length_is_found_from_every_hint() {
        let image = fenced(Mode::Long64);
        let test = ud2_at_cpl3(&image);
        for len in 1..=16 {
            for hint in 0..=16 {
                let mut runs = 0;
                let mut engine = engine_of(&image, len);
                let got = measure(&image, &test, hint, |t| {
                    runs += 1;
                    engine(t)
                })
                .unwrap();
                assert_eq!(got, expected(len), "length {len}, hint {hint}");
                if hint == len && (2..=MAX_LEN).contains(&len) {
                    assert_eq!(runs, 2, "a right hint costs two runs");
                }
                assert!(runs <= 6, "length {len}, hint {hint}: {runs} runs");
            }
        }
    }

    /// The search before guesses, as it was: the hint and one less, then
    /// a binary search. The probes it makes for the crossings `f`.
    fn hint_then_halves(hint: usize, f: impl Fn(usize) -> bool) -> (Vec<usize>, usize) {
        let mut probes = Vec::new();
        let mut cross = |k| {
            probes.push(k);
            f(k)
        };
        let hint = hint.clamp(1, MAX_LEN);
        let (mut lo, mut hi) = if cross(hint) {
            (hint + 1, MAX_LEN)
        } else if hint == 1 || cross(hint - 1) {
            return (probes, hint);
        } else {
            (1, hint - 2)
        };
        while lo <= hi {
            let mid = (lo + hi) / 2;
            if cross(mid) {
                lo = mid + 1;
            } else {
                hi = mid - 1;
            }
        }
        (probes, lo)
    }

    #[test]
    fn one_guess_probes_as_the_hint_did_for_any_crossings() {
        // Every pattern of crossings over 1..=15, monotone or not (an
        // engine may cross at a k past the length: Unicorn translates the
        // bytes after a short instruction and reports their fetch fault at
        // the instruction), gives the same probes and the same answer.
        let image = fenced(Mode::Long64);
        let test = ud2_at_cpl3(&image);
        let boundary = image.linear(CODE + PAGE);
        for pattern in 0u32..1 << MAX_LEN {
            let f = |k: usize| pattern & (1 << (k - 1)) != 0;
            for hint in [1, 2, 5, 9, 15] {
                let (want_probes, want) = hint_then_halves(hint, f);
                let mut probes = Vec::new();
                let got = measure(&image, &test, hint, |t| {
                    let k = (CODE + PAGE - t.rip) as usize;
                    probes.push(k);
                    Ok::<_, ()>(if f(k) {
                        Outcome::Trap {
                            vector: 14,
                            error_code: None,
                            rip: t.rip,
                            address: Some(boundary),
                        }
                    } else {
                        Outcome::Hang
                    })
                })
                .unwrap();
                assert_eq!(probes, want_probes, "pattern {pattern:#x}, hint {hint}");
                let want = if want <= MAX_LEN {
                    FetchLength::Bytes(want as u8)
                } else {
                    FetchLength::Longer
                };
                assert_eq!(got, want, "pattern {pattern:#x}, hint {hint}");
            }
        }
    }

    #[test]
    fn every_length_is_found_from_any_guesses() {
        let image = fenced(Mode::Long64);
        let test = ud2_at_cpl3(&image);
        for len in 1..=16 {
            for a in 0..=16 {
                for b in [0, 1, 2, 3, 8, 15, 16] {
                    let mut runs = 0;
                    let mut engine = engine_of(&image, len);
                    let got = measure_guessing(&image, &test, &[a, b], |t| {
                        runs += 1;
                        engine(t)
                    })
                    .unwrap();
                    assert_eq!(got, expected(len), "length {len}, guesses {a} {b}");
                    if a == len && (2..=MAX_LEN).contains(&len) {
                        assert_eq!(runs, 2, "a right first guess costs two runs");
                    }
                    if a + 1 == len && b == len && (2..=MAX_LEN).contains(&len) {
                        assert_eq!(runs, 2, "a right second guess after one less");
                    }
                    assert!(runs <= 8, "length {len}, guesses {a} {b}: {runs} runs");
                }
            }
        }
    }

    #[test]
    fn the_moved_test_ends_the_code_page() {
        let image = fenced(Mode::Long64);
        let test = image
            .prepare(Side::User, &[0x48, 0x01, 0xC8], &Setup::default())
            .unwrap();
        for k in 1..=MAX_LEN {
            let t = test.at_page_end(k);
            assert_eq!(t.rip, CODE + PAGE - k as u64);
            assert_eq!(t.sentinel, t.rip + k.min(3) as u64);
            let at = (t.rip - CODE) as usize;
            let want: Vec<u8> = [0x48, 0x01, 0xC8]
                .into_iter()
                .chain(std::iter::repeat(crate::machine::SENTINEL))
                .take(k)
                .collect();
            assert_eq!(&t.code_page[at..], &want[..], "k {k}");
            assert_eq!(t.gprs, test.gprs);
        }
    }

    #[test]
    fn only_a_fetch_fault_at_the_boundary_is_a_crossing() {
        let image = fenced(Mode::Long64);
        let test = image
            .prepare(
                Side::User,
                &[0x8B, 0x04, 0x25, 0, 0, 0, 0],
                &Setup::default(),
            )
            .unwrap()
            .at_page_end(3);
        let pf = |rip, address| Outcome::Trap {
            vector: 14,
            error_code: None,
            rip,
            address,
        };
        let boundary = CODE + PAGE;
        assert_eq!(
            crossed(&image, &test, &pf(test.rip, Some(boundary))),
            Some(true)
        );
        assert_eq!(crossed(&image, &test, &pf(test.rip, None)), Some(true));
        // A data access elsewhere, a fault after the instruction ran.
        assert_eq!(crossed(&image, &test, &pf(test.rip, Some(0))), Some(false));
        assert_eq!(
            crossed(&image, &test, &pf(boundary, Some(boundary))),
            Some(false)
        );
        assert_eq!(crossed(&image, &test, &Outcome::Hang), Some(false));
        assert_eq!(
            crossed(&image, &test, &Outcome::EngineError("x".into())),
            None
        );
    }

    #[test]
    fn what_cannot_be_measured_says_why() {
        let cfg = Config::UMIP_OFF;
        assert_eq!(fenced_variant(Mode::Prot16, &cfg), None);
        assert_eq!(fenced_variant(Mode::Real, &cfg), None);
        // An unfenced image is not measured.
        let plain = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        let test = plain
            .prepare(Side::User, &[0x90], &Setup::default())
            .unwrap();
        let got = measure(&plain, &test, 1, |_| -> Result<Outcome, ()> {
            panic!("no run")
        });
        assert!(matches!(got, Ok(FetchLength::NotMeasured(_))), "{got:?}");
        // An engine that does not run the state, one that fails.
        let image = fenced(Mode::Long64);
        let test = image
            .prepare(Side::User, &[0x90], &Setup::default())
            .unwrap();
        let got = measure(&image, &test, 1, |_| {
            Ok::<_, ()>(Outcome::NotSupported("no cpl 3".into()))
        });
        assert_eq!(got, Ok(FetchLength::NotRun("no cpl 3".into())));
        let got = measure(&image, &test, 1, |_| {
            Ok::<_, ()>(Outcome::EngineError("boom".into()))
        });
        assert_eq!(
            got,
            Ok(FetchLength::NotMeasured(
                "with 1 byte before the boundary: engine-error: boom".into()
            ))
        );
        assert_eq!(
            FetchLength::Bytes(3).to_string(),
            "length 3 (page boundary)"
        );
    }

    #[test]
    fn the_fence_is_the_data_page_made_not_executable() {
        use crate::machine::descriptors::{translate, Paging};
        let cfg = Config::UMIP_OFF;
        for mode in [Mode::Prot32, Mode::Long64] {
            let plain = GuestImage::build(mode, cfg, Variant::base(&cfg));
            let image = fenced(mode);
            assert!(image.is_fenced() && !plain.is_fenced());
            assert_eq!(image.sys.efer & (1 << 11), 1 << 11, "{mode}: EFER.NXE");
            let kind = if mode == Mode::Long64 {
                Paging::Long
            } else {
                Paging::Pae
            };
            // Same mappings; only one page-table entry differs, by NX.
            for lin in [CODE, CODE + PAGE, crate::machine::STACK] {
                assert_eq!(
                    translate(&image.memory, kind, image.sys.cr3, lin),
                    translate(&plain.memory, kind, plain.sys.cr3, lin)
                );
            }
            let differ: Vec<usize> = (0..image.memory.len())
                .filter(|&i| image.memory[i] != plain.memory[i])
                .collect();
            assert_eq!(differ.len(), 1, "{mode}: {differ:x?}");
            assert_eq!(image.memory[differ[0]] ^ plain.memory[differ[0]], 0x80);
        }
    }
}
