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

/// Facts about the host CPU and kernel: every report's header carries
/// them ([`HostFacts::text`]), and the native engine's version text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    pub vendor: String,
    pub family: String,
    pub model: String,
    pub stepping: String,
    pub microcode: String,
    pub model_name: String,
    /// The kernel runs with CR4.UMIP (the `umip` flag in /proc/cpuinfo).
    pub umip: bool,
    /// The kernel lets user code use RDFSBASE/WRFSBASE (AT_HWCAP2).
    pub fsgsbase: bool,
    pub kernel: String,
}

impl HostFacts {
    /// Reads /proc/cpuinfo (first CPU), AT_HWCAP2 and the kernel release.
    pub fn read() -> HostFacts {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mut f = HostFacts::parse(&text);
        // SAFETY: getauxval only reads the process's auxiliary vector.
        let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
        f.fsgsbase = hwcap2 & 2 != 0;
        f.kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        f
    }

    /// The facts of the first CPU of a /proc/cpuinfo text (pure).
    pub fn parse(cpuinfo: &str) -> HostFacts {
        let first = cpuinfo.split("\n\n").next().unwrap_or("");
        let get = |key: &str| {
            first
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        };
        let umip = get("flags").split_whitespace().any(|f| f == "umip");
        HostFacts {
            vendor: get("vendor_id"),
            family: get("cpu family"),
            model: get("model"),
            stepping: get("stepping"),
            microcode: get("microcode"),
            model_name: get("model name"),
            umip,
            fsgsbase: false,
            kernel: "unknown".into(),
        }
    }

    /// `AuthenticAMD family 25 model 1 stepping 1 (AMD EPYC), microcode
    /// 0x..., UMIP on in the kernel, linux 6.1`.
    pub fn text(&self) -> String {
        format!(
            "{} family {} model {} stepping {} ({}), microcode {}, UMIP {} in the kernel, linux {}",
            self.vendor,
            self.family,
            self.model,
            self.stepping,
            self.model_name,
            self.microcode,
            if self.umip { "on" } else { "off" },
            self.kernel
        )
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
