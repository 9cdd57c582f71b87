//! GuestImage: one complete guest (memory + system registers + entry states)
//! for a mode, configuration and variant. (Placeholder: being written.)

use super::layout::*;
use crate::mode::{Config, Mode};
use crate::observe::Side;
use serde::{Deserialize, Serialize};

/// A segment register as a VMM would load it: selector and descriptor cache.
/// `attr` uses the VMX access-rights layout (type, S, DPL, P in bits 0-7;
/// AVL, L, D/B, G in bits 12-15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SegDesc {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub attr: u16,
}

/// System registers of the image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SysRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub gdtr: (u64, u16),
    pub idtr: (u64, u16),
    pub ldtr: SegDesc,
    pub tr: SegDesc,
    /// (MSR index, value), sorted by index.
    pub msrs: Vec<(u32, u64)>,
}

/// The state at the test's first byte on one side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntryState {
    pub cpl: u8,
    /// CS, SS, DS, ES, FS, GS.
    pub segs: [SegDesc; 6],
    pub rflags: u64,
    pub rip: u64,
    pub rsp: u64,
}

/// One complete guest.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub mode: Mode,
    pub config: Config,
    pub variant: Variant,
    /// Physical memory from 0, `MEM_SIZE` bytes.
    pub memory: Vec<u8>,
    pub sys: SysRegs,
    pub supervisor: EntryState,
    /// `None` in real mode (no CPL 3).
    pub user: Option<EntryState>,
    /// Segment base of every segment (0, or `SEG_SHIFT` in the shifted variant).
    pub seg_base: u64,
    /// Physical addresses of the code, data and stack pages.
    pub code_phys: u64,
    pub data_phys: u64,
    pub stack_phys: u64,
    /// Physical pages an instruction may dirty, restored before every run.
    pub restore_pages: Vec<u64>,
}

/// A test resolved for one image and side: what the engine writes and sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub code_page: Vec<u8>,
    pub data_page: Vec<u8>,
    pub stack_page: Vec<u8>,
    pub gprs: [u64; 16],
    /// Offset of the test's first byte (`TEST_RIP`).
    pub rip: u64,
    /// Offset of the sentinel right after it.
    pub sentinel: u64,
}

impl GuestImage {
    pub fn build(_mode: Mode, _config: Config, _variant: Variant) -> GuestImage {
        unimplemented!("being written")
    }
    /// Resolves a test for one side; `None` where the side does not exist
    /// (the user side in real mode).
    ///
    /// Placeholder so that the scan compiles before the image builder lands:
    /// it places the bytes before the sentinel and the default pages and
    /// registers, without resolving `setup`. The image builder replaces it.
    pub fn prepare(&self, side: Side, bytes: &[u8], _setup: &Setup) -> Option<Prepared> {
        self.entry(side)?;
        let mut code_page = vec![SENTINEL; PAGE as usize];
        let start = (TEST_RIP - CODE) as usize;
        code_page
            .get_mut(start..start + bytes.len())?
            .copy_from_slice(bytes);
        Some(Prepared {
            code_page,
            data_page: (0..PAGE as usize).map(data_fill).collect(),
            stack_page: (0..PAGE as usize).map(stack_fill).collect(),
            gprs: default_gprs(),
            rip: TEST_RIP,
            sentinel: TEST_RIP + bytes.len() as u64,
        })
    }
    pub fn entry(&self, side: Side) -> Option<&EntryState> {
        match side {
            Side::Supervisor => Some(&self.supervisor),
            Side::User => self.user.as_ref(),
        }
    }
}
