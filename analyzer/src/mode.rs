//! Processor modes and configurations (pg-model section 1).
//!
//! A *configuration* fixes what is not part of one experiment: the processor
//! mode, CR4 feature bits and IOPL. Every verdict is stated per configuration.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The processor mode a harness runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Real-address mode: no CPL 3, no descriptor tables besides the IVT.
    Real,
    /// 16-bit protected mode (CS.D = 0), no paging.
    Prot16,
    /// 32-bit protected mode with 2-level paging.
    Prot32,
    /// 64-bit long mode with 4-level paging.
    Long64,
    /// 32-bit compatibility mode: 32-bit code (CS.L = 0, CS.D = 1) inside a
    /// long-mode guest (4-level paging, EFER.LMA, 64-bit IDT, TSS and
    /// handlers). Its own mode, never a stand-in for [`Mode::Prot32`]: where
    /// 32-bit protected mode cannot run (KVM on PVM) it is how 32-bit code
    /// runs. Its catalog is the 32-bit catalog.
    Compat32,
}

impl Mode {
    /// Every mode, in report order.
    pub const ALL: [Mode; 5] = [
        Mode::Real,
        Mode::Prot16,
        Mode::Prot32,
        Mode::Long64,
        Mode::Compat32,
    ];
    /// The modes a default scan covers (not compatibility mode: it is asked
    /// for with `--mode 32c`).
    pub const DEFAULT_SCAN: [Mode; 3] = [Mode::Prot16, Mode::Prot32, Mode::Long64];

    /// Code size in bits, as a decoder needs it.
    pub fn bitness(self) -> u32 {
        match self {
            Mode::Real | Mode::Prot16 => 16,
            Mode::Prot32 | Mode::Compat32 => 32,
            Mode::Long64 => 64,
        }
    }

    /// The name used on the command line and in reports: `real`, `16`,
    /// `32`, `64`, `32c`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Real => "real",
            Mode::Prot16 => "16",
            Mode::Prot32 => "32",
            Mode::Long64 => "64",
            Mode::Compat32 => "32c",
        }
    }

    /// What the mode is, in words (help text, reports).
    pub fn description(self) -> &'static str {
        match self {
            Mode::Real => "real-address mode",
            Mode::Prot16 => "16-bit protected mode",
            Mode::Prot32 => "32-bit protected mode",
            Mode::Long64 => "64-bit mode",
            Mode::Compat32 => "32-bit compatibility mode",
        }
    }

    /// Whether the mode has privilege levels (everything but real mode).
    pub fn is_protected(self) -> bool {
        self != Mode::Real
    }

    /// Whether the harness enables paging in this mode.
    pub fn has_paging(self) -> bool {
        matches!(self, Mode::Prot32 | Mode::Long64 | Mode::Compat32)
    }

    /// Whether the guest is in long mode (EFER.LMA: 4-level paging, 64-bit
    /// IDT, TSS and exception handlers): 64-bit and compatibility mode.
    pub fn is_long(self) -> bool {
        matches!(self, Mode::Long64 | Mode::Compat32)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a mode or configuration name that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("unknown mode '{0}': expected one of real, 16, 32, 64, 32c")]
    Mode(String),
    #[error("bad configuration '{0}': {1}")]
    Config(String, String),
}

impl FromStr for Mode {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "real" | "r" => Ok(Mode::Real),
            "16" | "prot16" => Ok(Mode::Prot16),
            "32" | "prot32" => Ok(Mode::Prot32),
            "64" | "long64" | "long" => Ok(Mode::Long64),
            "32c" | "compat32" | "compat" => Ok(Mode::Compat32),
            other => Err(ParseError::Mode(crate::input::clip(other))),
        }
    }
}

/// Settings fixed for a whole scan of one mode: CR4 bits and IOPL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Config {
    /// CR4.UMIP: SGDT, SIDT, SLDT, SMSW, STR fault at CPL > 0.
    pub umip: bool,
    /// EFLAGS.IOPL of the base state (0..=3).
    pub iopl: u8,
    /// CR4.TSD: RDTSC/RDTSCP fault at CPL > 0.
    pub tsd: bool,
    /// CR4.PCE: RDPMC allowed at CPL > 0.
    pub pce: bool,
}

impl Config {
    /// The classic setting: no UMIP, IOPL 0.
    pub const UMIP_OFF: Config = Config {
        umip: false,
        iopl: 0,
        tsd: false,
        pce: false,
    };
    /// A modern OS: UMIP on, IOPL 0.
    pub const UMIP_ON: Config = Config {
        umip: true,
        iopl: 0,
        tsd: false,
        pce: false,
    };
    /// The configurations a default scan covers.
    pub const DEFAULTS: [Config; 2] = [Config::UMIP_OFF, Config::UMIP_ON];

    /// Canonical name: `umip=off` or `umip=on`, then `:iopl=N`, `:tsd=on`,
    /// `:pce=on` for settings that differ from the default. Contains no comma,
    /// so lists of configurations can be comma-separated.
    pub fn name(&self) -> String {
        let mut s = format!("umip={}", on_off(self.umip));
        if self.iopl != 0 {
            s.push_str(&format!(":iopl={}", self.iopl));
        }
        if self.tsd {
            s.push_str(":tsd=on");
        }
        if self.pce {
            s.push_str(":pce=on");
        }
        s
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::UMIP_OFF
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Config {
    type Err = ParseError;
    /// Parses `umip=on:iopl=3:tsd=on` (settings in any order, separated by
    /// `:`; missing settings take their defaults).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ParseError::Config(crate::input::clip(s), why.to_string());
        if s.trim().is_empty() {
            return Err(bad("empty; write settings like umip=off or umip=on:iopl=3"));
        }
        let mut cfg = Config::default();
        let mut seen: Vec<&str> = Vec::new();
        for part in s.split(':').map(str::trim) {
            if part.is_empty() {
                return Err(bad("an empty setting between ':'"));
            }
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad("expected key=value, e.g. umip=on"))?;
            let key = key.trim();
            let value = value.trim();
            if seen.contains(&key) {
                return Err(bad(&format!("'{}' is set twice", crate::input::clip(key))));
            }
            seen.push(key);
            let flag = |v: &str| match v {
                "on" | "1" | "true" => Ok(true),
                "off" | "0" | "false" => Ok(false),
                _ => Err(bad(&format!("'{key}' takes on or off"))),
            };
            match key {
                "umip" => cfg.umip = flag(value)?,
                "tsd" => cfg.tsd = flag(value)?,
                "pce" => cfg.pce = flag(value)?,
                "iopl" => {
                    cfg.iopl = match value.parse::<u8>() {
                        Ok(n) if n <= 3 => n,
                        _ => return Err(bad("iopl takes 0, 1, 2 or 3")),
                    }
                }
                _ => {
                    return Err(bad(&format!(
                        "unknown setting '{}' (umip, iopl, tsd, pce)",
                        crate::input::clip(key)
                    )))
                }
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_round_trip() {
        for cfg in [
            Config::UMIP_OFF,
            Config::UMIP_ON,
            Config {
                umip: true,
                iopl: 3,
                tsd: true,
                pce: true,
            },
        ] {
            assert_eq!(cfg.name().parse::<Config>().unwrap(), cfg);
            assert!(!cfg.name().contains(','));
        }
        assert_eq!(Config::UMIP_OFF.name(), "umip=off");
        assert_eq!("umip=on:iopl=3".parse::<Config>().unwrap().iopl, 3);
        assert!("umip=maybe".parse::<Config>().is_err());
        assert!("iopl=4".parse::<Config>().is_err());
        assert!("colour=red".parse::<Config>().is_err());
        assert!("".parse::<Config>().is_err());
        assert!(" ".parse::<Config>().is_err());
        assert!("umip=on:umip=off".parse::<Config>().is_err());
        assert!("umip=on::iopl=3".parse::<Config>().is_err());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("64".parse::<Mode>().unwrap(), Mode::Long64);
        assert_eq!("real".parse::<Mode>().unwrap(), Mode::Real);
        assert_eq!("32c".parse::<Mode>().unwrap(), Mode::Compat32);
        assert_eq!("compat32".parse::<Mode>().unwrap(), Mode::Compat32);
        assert_eq!(Mode::Compat32.bitness(), 32);
        assert!(!Mode::DEFAULT_SCAN.contains(&Mode::Compat32));
        assert!("128".parse::<Mode>().is_err());
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>().unwrap(), m);
        }
    }
}
