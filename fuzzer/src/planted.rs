//! `planted`: an engine for testing the fuzzer itself. It is Unicorn,
//! except that a test whose bytes contain `POPEK_FUZZ_PLANT_DIFFER` (hex)
//! raises #UD, and one whose bytes contain `POPEK_FUZZ_PLANT_CRASH` aborts
//! the process: a planted disagreement and a planted crash; and a run that
//! completes ends with the RFLAGS bits `POPEK_FUZZ_PLANT_FLAGS` (hex)
//! flipped: a planted difference of results. Only the fuzzer's own tests
//! name it.

use analyzer::engine::Engine;
use analyzer::machine::{GuestImage, Prepared};
use analyzer::observe::{Observation, Outcome, Side};

/// The engine's name, as `--engine` lists and findings name it.
pub const NAME: &str = "planted";

/// Unicorn with a planted disagreement and a planted crash.
pub struct Planted {
    inner: Box<dyn Engine>,
    differ: Option<Vec<u8>>,
    crash: Option<Vec<u8>>,
    flags: u64,
}

fn from_env(var: &str) -> Option<Vec<u8>> {
    let v = std::env::var(var).ok()?;
    analyzer::explain::parse_hex(&v)
        .ok()
        .filter(|b| !b.is_empty())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Planted {
    pub fn open() -> Result<Planted, analyzer::engine::EngineError> {
        let flags = std::env::var("POPEK_FUZZ_PLANT_FLAGS")
            .ok()
            .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        Ok(Planted {
            differ: from_env("POPEK_FUZZ_PLANT_DIFFER"),
            crash: from_env("POPEK_FUZZ_PLANT_CRASH"),
            ..Planted::flipping_flags(flags)?
        })
    }

    /// Unicorn with only the flags `mask` flipped after every completed
    /// run (for tests in this process: no environment read).
    pub fn flipping_flags(mask: u64) -> Result<Planted, analyzer::engine::EngineError> {
        Ok(Planted {
            inner: analyzer::engine::open(analyzer::engine::EngineKind::Unicorn)?,
            differ: None,
            crash: None,
            flags: mask,
        })
    }
}

impl Engine for Planted {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> String {
        format!("planted ({})", self.inner.version())
    }
    fn run(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        let bytes = test.encoding();
        if self.crash.as_ref().is_some_and(|c| contains(bytes, c)) {
            std::process::abort();
        }
        let mut obs = self.inner.run(image, side, test);
        if self.differ.as_ref().is_some_and(|d| contains(bytes, d)) {
            obs.outcome = Outcome::Trap {
                vector: 6,
                error_code: None,
                rip: test.rip,
                address: None,
            };
            obs.after = None;
            obs.user = None;
        }
        if let Some(u) = obs.user.as_mut().filter(|_| obs.outcome.is_completed()) {
            u.flags ^= self.flags;
        }
        obs
    }
    fn park(&mut self) -> bool {
        self.inner.park()
    }
}
