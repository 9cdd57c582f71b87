//! The instruction catalog: every iced-x86 `Code` in every mode where it
//! exists, as at least one concrete encoding with a harness setup, beside
//! iced's documented metadata. (Types fixed; building is being written.)

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
