//! The instruction catalog: every iced-x86 `Code` in every mode where it
//! exists, as at least one concrete encoding with a harness setup, beside
//! iced's documented metadata.
//!
//! [`build`] walks `Code::values()` in order and, for every `Code` that exists
//! in the mode, makes one or more encodings placed at `TEST_RIP` whose
//! operands follow the harness ABI (pg-model section 5): memory operands in
//! the data page, stack frames in the stack page, valid selectors in the
//! registers that are loaded into segment registers, branch targets on the
//! sentinel. Codes that cannot be encoded go to [`Catalog::skipped`] with the
//! reason.

mod encode;
mod lookup;
mod special;
#[cfg(test)]
mod tests;

pub use encode::{decode_at, decoder_options, doc_meta, soft_interrupt};
pub use lookup::edit_distance;

use crate::machine::Setup;
use crate::mode::Mode;
use serde::{Deserialize, Serialize};

/// iced-x86's documented metadata for a `Code`: the oracle every empirical
/// verdict is put beside.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocMeta {
    /// `OpCodeInfo::is_privileged` (CPL 0 only by the manuals).
    pub is_privileged: bool,
    pub must_be_cpl0: bool,
    pub may_require_cpl0: bool,
    pub is_input_output: bool,
    /// `intel_vm_exit`: VT-x exits unconditionally.
    pub intel_vm_exit: bool,
    pub intel_may_vm_exit: bool,
    pub amd_vm_exit: bool,
    /// `FlowControl` as text (`Next`, `UnconditionalBranch`, `Interrupt`, ...).
    pub flow_control: String,
    /// CPUID feature names (`INTEL386`, `SSE2`, ...).
    pub cpuid: Vec<String>,
}

/// One concrete test of one `Code` in one mode.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub mode: Mode,
    /// iced `Code` name, e.g. `Sgdt_m1632`.
    pub code: String,
    /// Lower-case mnemonic, e.g. `sgdt`.
    pub mnemonic: String,
    /// The instruction as text (Intel syntax), e.g. `sgdt [8100h]`.
    pub form: String,
    /// The encoding placed at `TEST_RIP` (before patches).
    pub bytes: Vec<u8>,
    pub setup: Setup,
    pub doc: DocMeta,
}

/// A `Code` that got no encoding, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Skipped {
    pub mode: Mode,
    pub code: String,
    pub reason: String,
}

/// Every encoding of one or more modes, plus what could not be encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
}

/// The catalog of one mode, in iced `Code` order (several entries of one
/// `Code` keep the order in which they were planned).
pub fn build(mode: Mode) -> Catalog {
    encode::build_mode(mode)
}

/// The entries of one `Code` (named as in [`Entry::code`], in any case) in
/// `mode`: what `build(mode).find_code(code)` gives, in the same order,
/// without encoding every other `Code`.
pub fn code_entries(mode: Mode, code: &str) -> Vec<Entry> {
    let Some(c) = code_named(code) else {
        return Vec::new();
    };
    let mut cat = Catalog::default();
    encode::build_code(mode, c, &mut cat);
    cat.entries
}

/// The iced-x86 `Code` named `name` as in [`Entry::code`] (in any case,
/// surrounding blanks ignored).
pub fn code_named(name: &str) -> Option<iced_x86::Code> {
    static BY_NAME: std::sync::OnceLock<std::collections::HashMap<String, iced_x86::Code>> =
        std::sync::OnceLock::new();
    let by_name = BY_NAME.get_or_init(|| {
        iced_x86::Code::values()
            .map(|c| (format!("{c:?}").to_ascii_lowercase(), c))
            .collect()
    });
    by_name.get(&name.trim().to_ascii_lowercase()).copied()
}

/// Makes the tables popek builds on first use and keeps for the process
/// (iced-x86's decoder, formatter, op-code and encoder tables, the names of
/// the `Code`s): a process that forks makes them once, before the fork,
/// and no child pays for them again.
pub fn make_tables(mode: Mode) {
    let _ = crate::explain::raw_entry(&[0x90], mode);
    let _ = code_entries(mode, "Nopd");
}

/// The catalogs of several modes, concatenated in the order given.
pub fn build_all(modes: &[Mode]) -> Catalog {
    let mut all = Catalog::default();
    for &mode in modes {
        let c = build(mode);
        all.entries.extend(c.entries);
        all.skipped.extend(c.skipped);
    }
    all
}

/// Whether a `Code` counts as an instruction of the catalog: everything but
/// INVALID, the data declarations (db/dw/dd/dq) and `Zero_bytes`.
pub fn is_cataloged(code: iced_x86::Code) -> bool {
    code.op_code().is_instruction()
}

/// Whether a `Code` exists in a mode (Real and Prot16 both run 16-bit code).
pub fn exists_in(code: iced_x86::Code, mode: Mode) -> bool {
    let op = code.op_code();
    match mode.bitness() {
        16 => op.mode16(),
        32 => op.mode32(),
        _ => op.mode64(),
    }
}

/// How much of one mode a catalog covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub mode: Mode,
    /// Codes that exist in the mode (instructions only).
    pub existing: usize,
    /// Codes with at least one entry.
    pub covered: usize,
    /// Codes that went to `skipped`.
    pub skipped: usize,
    /// Entries (a code can have several).
    pub entries: usize,
}

impl Catalog {
    /// Coverage of one mode by this catalog.
    pub fn coverage(&self, mode: Mode) -> Coverage {
        let existing = iced_x86::Code::values()
            .filter(|&c| is_cataloged(c) && exists_in(c, mode))
            .count();
        let covered: std::collections::BTreeSet<&str> = self
            .entries
            .iter()
            .filter(|e| e.mode == mode)
            .map(|e| e.code.as_str())
            .collect();
        Coverage {
            mode,
            existing,
            covered: covered.len(),
            skipped: self.skipped.iter().filter(|s| s.mode == mode).count(),
            entries: self.entries.iter().filter(|e| e.mode == mode).count(),
        }
    }
}
