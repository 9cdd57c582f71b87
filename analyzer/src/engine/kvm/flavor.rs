//! Which KVM this is: the device node, whether it can be opened, and which
//! kernel module implements it.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// Which KVM implementation /dev/kvm is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// VT-x (`kvm_intel`).
    Intel,
    /// SVM (`kvm_amd`).
    Amd,
    /// PVM (`kvm_pvm`): software virtualization, the guest supervisor runs in
    /// hardware user mode.
    Pvm,
    Unknown,
}

impl Flavor {
    /// The kernel module's name (`unknown` if none of the three is loaded).
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Intel => "kvm_intel",
            Flavor::Amd => "kvm_amd",
            Flavor::Pvm => "kvm_pvm",
            Flavor::Unknown => "unknown",
        }
    }

    /// Detects the flavor from the loaded modules.
    pub fn detect() -> Flavor {
        Flavor::detect_in(Path::new("/sys/module"))
    }

    /// The flavor whose module directory exists under `modules` (PVM first:
    /// it may be loaded beside kvm_intel or kvm_amd).
    fn detect_in(modules: &Path) -> Flavor {
        for (m, f) in [
            ("kvm_pvm", Flavor::Pvm),
            ("kvm_intel", Flavor::Intel),
            ("kvm_amd", Flavor::Amd),
        ] {
            if modules.join(m).exists() {
                return f;
            }
        }
        Flavor::Unknown
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The KVM device: `/dev/kvm`, or the path in `POPEK_KVM_DEVICE`.
pub fn device_path() -> PathBuf {
    std::env::var_os("POPEK_KVM_DEVICE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/kvm"))
}

/// Whether the KVM device can be opened read/write, and which flavor it is;
/// the error says what is wrong and how to fix it.
pub(super) fn availability() -> Result<Flavor, String> {
    let path = device_path();
    let name = path.display();
    if !path.exists() {
        return Err(format!(
            "{name} does not exist: load kvm_intel, kvm_amd or kvm_pvm (modprobe), \
             or enable virtualization in the firmware or for this VM"
        ));
    }
    match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(_) => Ok(Flavor::detect()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "permission denied opening {name}: add your user to the kvm group or run as root"
        )),
        Err(e) => Err(format!("cannot open {name} read/write: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flavor_is_the_loaded_module_pvm_first() {
        let dir = std::env::temp_dir().join(format!("popek-flavor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Flavor::detect_in(&dir), Flavor::Unknown);
        std::fs::create_dir(dir.join("kvm_amd")).unwrap();
        assert_eq!(Flavor::detect_in(&dir), Flavor::Amd);
        std::fs::create_dir(dir.join("kvm_pvm")).unwrap();
        assert_eq!(Flavor::detect_in(&dir), Flavor::Pvm);
        assert_eq!(Flavor::Pvm.to_string(), "kvm_pvm");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
