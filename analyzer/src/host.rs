//! Facts about the machine popek runs on: the CPU's vendor and model name.
//! Reports carry them, and tests of a quirk measured on one kind of host
//! check it only there.

use std::fmt;
use std::fs;

/// The host CPU's vendor, from `vendor_id` in /proc/cpuinfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vendor {
    Amd,
    Intel,
    Other,
}

impl Vendor {
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Amd => "AMD",
            Vendor::Intel => "Intel",
            Vendor::Other => "other",
        }
    }

    /// The vendor of a `vendor_id` value.
    pub fn from_id(id: &str) -> Vendor {
        match id.trim() {
            "AuthenticAMD" => Vendor::Amd,
            "GenuineIntel" => Vendor::Intel,
            _ => Vendor::Other,
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The value of the first `key : value` line of /proc/cpuinfo.
fn cpuinfo(key: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The host CPU's vendor (`Other` if /proc/cpuinfo does not say).
pub fn cpu_vendor() -> Vendor {
    cpuinfo("vendor_id")
        .map(|v| Vendor::from_id(&v))
        .unwrap_or(Vendor::Other)
}

/// The CPU model name from /proc/cpuinfo, or `unknown`.
pub fn cpu_model() -> String {
    cpuinfo("model name").unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_ids_name_their_vendor() {
        assert_eq!(Vendor::from_id("AuthenticAMD"), Vendor::Amd);
        assert_eq!(Vendor::from_id(" GenuineIntel\n"), Vendor::Intel);
        assert_eq!(Vendor::from_id("HygonGenuine"), Vendor::Other);
    }

    #[test]
    fn the_model_is_never_empty() {
        assert!(!cpu_model().is_empty());
    }
}
