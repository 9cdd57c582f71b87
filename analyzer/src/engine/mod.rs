//! Engines: something that runs one prepared test in one guest image and
//! reports an [`Observation`]. One module per engine; a fake for unit tests.

use crate::machine::{GuestImage, Prepared};
use crate::mode::Mode;
use crate::observe::{Observation, Side};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[cfg(test)]
pub(crate) mod conformance;
pub mod fake;
pub mod features;
pub mod kvm;
pub mod native;
pub(crate) mod shadow;
pub mod unicorn;
pub(crate) mod watchdog;

/// Runs tests. A fault of the instruction under test is an `Outcome`, never
/// an error; an engine failure is `Outcome::EngineError`.
/// Engines are not `Send` (Unicorn is not): open one per worker thread.
pub trait Engine {
    /// `unicorn`, `kvm`, `fake`.
    fn name(&self) -> &'static str;
    /// Engine version and flavor, for report headers.
    fn version(&self) -> String;
    /// Run `test` in `image` starting on `side`.
    fn run(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation;
    /// Run `test` only to learn whether the fetch of its first instruction
    /// crossed into the next page (the page-boundary length,
    /// [`crate::length::crossed`]): what follows that instruction cannot
    /// change the answer, so an engine may stop the run after it. By
    /// default the run is whole.
    fn run_fetch(&mut self, image: &GuestImage, side: Side, test: &Prepared) -> Observation {
        self.run(image, side, test)
    }
    /// What executes a test of `mode` at `cpl` (3 on the user side, the
    /// supervisor's CPL on the other: 1 or 3 under ring compression): the
    /// engine's software or the CPU. Engine comparisons keep the two apart.
    fn executor(&self, _mode: Mode, _cpl: u8) -> Executor {
        Executor::Emulator
    }
    /// Readies the engine to be carried into a child of a fork (which has
    /// only the thread that forked): ends its threads, which its next run
    /// starts again. False where it cannot be carried: its state lies
    /// outside the process's memory (KVM's in the kernel, which a child
    /// would share), or it holds threads it cannot end. The caller then
    /// drops it. By default false.
    fn park(&mut self) -> bool {
        false
    }
}

/// What executed a run: software that decodes and carries out the
/// instruction (Unicorn, KVM's instruction emulator), or the CPU itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    Emulator,
    Hardware,
}

impl Executor {
    pub fn name(self) -> &'static str {
        match self {
            Executor::Emulator => "emulator",
            Executor::Hardware => "hardware",
        }
    }
}

impl fmt::Display for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The engines popek knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EngineKind {
    Unicorn,
    Kvm,
    Native,
}

impl EngineKind {
    /// The engines `--engine all` runs (each where it is available).
    pub const ALL: [EngineKind; 3] = [EngineKind::Unicorn, EngineKind::Kvm, EngineKind::Native];
    /// Every engine popek knows (what `popek engines` lists).
    pub const KNOWN: [EngineKind; 3] = [EngineKind::Unicorn, EngineKind::Kvm, EngineKind::Native];
    /// Whether the engine runs the supervisor side (CPL 0) of the matrix,
    /// and so can judge privilege: native runs only the user side.
    pub fn runs_supervisor(self) -> bool {
        !matches!(self, EngineKind::Native)
    }

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Unicorn => "unicorn",
            EngineKind::Kvm => "kvm",
            EngineKind::Native => "native",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EngineKind {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "unicorn" => Ok(EngineKind::Unicorn),
            "kvm" => Ok(EngineKind::Kvm),
            "native" => Ok(EngineKind::Native),
            other => Err(EngineError::UnknownEngine(crate::input::clip(other))),
        }
    }
}

/// Why an engine could not be opened or driven.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown engine '{0}': expected unicorn, kvm, native or all")]
    UnknownEngine(String),
    /// As for `Kvm`: the message carries the action and its cause.
    #[error("native: {0}")]
    Native(#[from] native::NativeError),
    #[error("unicorn: {0}")]
    Unicorn(unicorn::UnicornError),
    #[error("kvm is not available: {0}")]
    KvmUnavailable(String),
    /// The message carries the failed action and its cause, so the
    /// `KvmError` is not also given as a source (an `{:#}` chain would
    /// repeat it); it stays reachable here.
    #[error("kvm: {0}")]
    Kvm(kvm::KvmError),
    /// The device opened but does not act as KVM (`POPEK_KVM_DEVICE=/dev/null`).
    #[error("kvm: {error}; is {device} a KVM device?")]
    NotKvmDevice {
        device: String,
        error: kvm::KvmError,
    },
}

impl From<unicorn::UnicornError> for EngineError {
    fn from(e: unicorn::UnicornError) -> Self {
        EngineError::Unicorn(e)
    }
}

impl From<kvm::KvmError> for EngineError {
    fn from(e: kvm::KvmError) -> Self {
        EngineError::Kvm(e)
    }
}

/// Why `engine` does not model configuration `config` (a configuration
/// name such as `umip=on:iopl=3`), if it does not: then no theorem verdict
/// is drawn from its records there. Unicorn has no CR4.UMIP and its RDPMC
/// is always #UD, so `umip=on` and `pce=on` are not modeled.
pub fn unmodeled(engine: &str, config: &str) -> Option<String> {
    let cfg = config.parse::<crate::mode::Config>().ok()?;
    match engine {
        "unicorn" if cfg.umip => Some("not modeled: Unicorn has no CR4.UMIP".to_string()),
        "unicorn" if cfg.pce => {
            Some("not modeled: Unicorn has no CR4.PCE (RDPMC is always #UD)".to_string())
        }
        "native" => native::unmodeled(&cfg),
        _ => None,
    }
}

/// Opens a fresh instance of an engine (one per worker thread).
pub fn open(kind: EngineKind) -> Result<Box<dyn Engine>, EngineError> {
    match kind {
        EngineKind::Unicorn => Ok(Box::new(unicorn::UnicornEngine::new()?)),
        EngineKind::Kvm => Ok(Box::new(kvm::KvmEngine::new().map_err(name_the_device)?)),
        EngineKind::Native => Ok(Box::new(native::NativeEngine::new()?)),
    }
}

/// A KVM failure of the device itself names the device and where its path
/// came from (`POPEK_KVM_DEVICE=/dev/null` is not a KVM device).
fn name_the_device(e: EngineError) -> EngineError {
    match e {
        EngineError::Kvm(error @ (kvm::KvmError::OpenDevice(_) | kvm::KvmError::CreateVm(_))) => {
            let from = if std::env::var_os("POPEK_KVM_DEVICE").is_some() {
                " (from POPEK_KVM_DEVICE)"
            } else {
                ""
            };
            EngineError::NotKvmDevice {
                device: format!("{}{from}", kvm::device_path().display()),
                error,
            }
        }
        other => other,
    }
}

/// Whether an engine can be opened here: its version text, or why not
/// (for `popek engines`).
pub fn availability(kind: EngineKind) -> Result<String, String> {
    open(kind).map(|e| e.version()).map_err(|e| e.to_string())
}
