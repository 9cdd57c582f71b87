//! Loading the guest: an image's memory (only the pages that changed), and
//! the boot of one of its sides. Protected and long modes get their control
//! registers, EFER, descriptor tables, the caches of LDTR and TR, and the
//! MSRs, then the harness's boot stub runs from ring 0 and IRETs to the
//! test's first byte at the side's CPL, where the context is saved. Real
//! mode gets its segments and registers directly.

use super::ffi::{self, Events};
use super::{uc_err, Machine, UnicornError};
use crate::machine::descriptors::{translate, Paging};
use crate::machine::{EntryState, GuestImage, SegDesc, CODE, KSTACK_TOP, MEM_SIZE, PAGE};
use crate::mode::Mode;
use crate::observe::{Side, SystemState};
use unicorn_engine::{uc_x86_mmr, Context, RegisterX86 as R};

/// Instructions the boot stub may take to reach the test.
const BOOT_INSNS: usize = 64;

/// The EFER MSR (LME, LMA, SCE, NXE).
pub(super) const EFER: u32 = 0xC000_0080;

impl Machine {
    /// Makes guest memory equal to the image's, writing only changed pages.
    /// Unicorn's translations are flushed:
    /// - for the same image, when code was translated outside the code page
    ///   (see `translated_elsewhere`) on a page the guest changed;
    /// - for another image, when code was translated outside the code page,
    ///   may have run unseen (`ran_unknown`: boots, images that shift the
    ///   code page), memory is suspect (a change of paging), or the new
    ///   image shifts the code page. Otherwise every translation left is of
    ///   the code page's linear addresses, which every run removes (through
    ///   the current image's page tables) before it starts, and one reached
    ///   through another mapping is of another physical page, which QEMU's
    ///   lookup does not match; an image that shifts the code page could
    ///   reach them with a far jump to a segment of base 0.
    ///
    /// Where memory may differ anywhere (a stray write, a change of
    /// paging), guest memory is read and compared with what was last
    /// written to find the pages the guest changed (Unicorn's own writes do
    /// not invalidate translations; a translation of a page the guest did
    /// not change is still right). The page walker's accessed and dirty
    /// bits change the page tables in most runs that make memory suspect,
    /// and code seldom runs there.
    pub(super) fn load(&mut self, image: &GuestImage) -> Result<(), UnicornError> {
        let same = self.shadow.holds(image);
        // The test pages are put back by every run; other pages stray
        // stores reached are put back here.
        let program = [image.code_phys, image.data_phys, image.stack_phys]
            .iter()
            .fold(0u64, |m, p| m | 1 << (p / PAGE));
        if same && !self.memory_suspect && self.dirty & !program == 0 {
            return Ok(());
        }
        let all = std::mem::take(&mut self.memory_suspect);
        let strayed = std::mem::take(&mut self.strayed);
        self.shown = [None, None, None];
        // Physical pages the guest may have changed since they were last
        // written (bit n: page n).
        let mut stale: u64 = if all { u64::MAX } else { self.dirty };
        // Only where a flush hangs on it (translations outside the code
        // page, all of whose pages are known) is memory compared.
        if all && same && self.translated_elsewhere && !self.ran_unknown {
            let guest = &mut self.guest_copy;
            guest.resize(MEM_SIZE as usize, 0);
            self.uc
                .mem_read(0, guest)
                .map_err(uc_err("read guest memory"))?;
            stale = 0;
            for (i, page) in guest.chunks(PAGE as usize).enumerate() {
                let at = i * PAGE as usize;
                if page != self.shadow.bytes(at, at + PAGE as usize) {
                    stale |= 1 << i;
                }
            }
        }
        let uc = &mut self.uc;
        self.shadow.load(
            image,
            |i| stale & (1 << i) != 0,
            |at, b| uc.mem_write(at, b).map_err(uc_err("write guest memory")),
        )?;
        // Every dirty page was written.
        self.dirty = 0;
        let flush = if same {
            self.translated_elsewhere && self.ran_on(image, stale)
        } else {
            self.translated_elsewhere
                || self.ran_unknown
                || all
                || strayed
                || image.linear(CODE) != CODE
        };
        if flush {
            let _ = self.uc.ctl_flush_tb();
            self.translated_elsewhere = false;
            self.ran_pages = Default::default();
            self.ran_unknown = false;
        }
        let _ = self.uc.ctl_flush_tlb();
        Ok(())
    }

    /// Whether code may have run, since the last flush, on a physical page
    /// among `stale` (bit n: page n) of `image`, the linear pages it ran on
    /// mapped by the image's page tables (or as they are without paging).
    fn ran_on(&self, image: &GuestImage, stale: u64) -> bool {
        if self.ran_unknown {
            return true;
        }
        let kind = if image.mode.is_long() {
            Paging::Long
        } else {
            Paging::Pae
        };
        self.ran_pages.iter().enumerate().any(|(w, &bits)| {
            (0..64).filter(|b| bits & (1 << b) != 0).any(|b| {
                let lin = (w as u64 * 64 + b) * PAGE;
                let phys = if image.mode.has_paging() {
                    translate(&image.memory, kind, image.sys.cr3, lin)
                } else {
                    Some(lin)
                };
                // A page that maps nowhere or outside memory: as if changed.
                phys.is_none_or(|p| p >= MEM_SIZE || stale & (1 << (p / PAGE)) != 0)
            })
        })
    }

    /// Boots a side of an image and saves the context at the test's first byte.
    pub(super) fn boot(
        &mut self,
        image: &GuestImage,
        side: Side,
    ) -> Result<(Context, SystemState), UnicornError> {
        let entry = image.entry(side).ok_or(UnicornError::NoSuchSide)?;
        self.uc
            .context_restore(&self.reset)
            .map_err(uc_err("restore the reset context"))?;
        if image.mode.is_protected() {
            self.load_system_registers(image)?;
            self.run_boot_stub(image, side, entry)?;
        } else {
            self.load_real_mode(image, entry)?;
        }
        let mut ctx = self
            .uc
            .context_alloc()
            .map_err(uc_err("allocate a context"))?;
        self.uc
            .context_save(&mut ctx)
            .map_err(uc_err("save the context"))?;
        let state = self.system_state(image);
        if image.mode.is_protected() && state.cpl != entry.cpl {
            return Err(UnicornError::BootCpl {
                reached: state.cpl,
                wanted: entry.cpl,
            });
        }
        Ok((ctx, state))
    }

    /// Protected and long mode: the control registers, EFER, GDTR and IDTR,
    /// LDTR and TR with their descriptor caches, the MSRs, and the ring-0
    /// stack the boot stub runs on.
    fn load_system_registers(&mut self, image: &GuestImage) -> Result<(), UnicornError> {
        let sys = &image.sys;
        let long = image.mode.is_long();
        let uc = &mut self.uc;
        if image.mode == Mode::Prot16 {
            // Still in real mode: give CS the base the boot stub runs at
            // (emu_start in 16-bit mode takes a CS:IP-style address).
            uc.reg_write(R::CS, image.seg_base >> 4)
                .map_err(uc_err("write CS"))?;
        }
        uc.reg_write(R::CR4, sys.cr4).map_err(uc_err("write CR4"))?;
        uc.reg_write(R::CR3, sys.cr3).map_err(uc_err("write CR3"))?;
        if long {
            ffi::write_msr(uc, EFER, sys.efer)?;
        }
        uc.reg_write(R::CR0, sys.cr0).map_err(uc_err("write CR0"))?;
        let table = |(base, limit): (u64, u16)| uc_x86_mmr {
            selector: 0,
            base,
            limit: limit as u32,
            flags: 0,
        };
        ffi::write_mmr(uc, R::GDTR, table(sys.gdtr))?;
        ffi::write_mmr(uc, R::IDTR, table(sys.idtr))?;
        let seg = |d: &SegDesc| uc_x86_mmr {
            selector: d.selector,
            base: d.base,
            limit: d.limit,
            flags: (d.attr as u32) << 8,
        };
        ffi::write_mmr(uc, R::LDTR, seg(&sys.ldtr))?;
        // QEMU keeps TR's cached type "available" (9) and marks only the
        // GDT descriptor busy; with a busy type in the cache its TSS
        // lookups abort the process. KVM wants the architectural busy type.
        let mut tr = sys.tr;
        if tr.attr & 0xF == 0xB {
            tr.attr = (tr.attr & !0xF) | 0x9;
        }
        ffi::write_mmr(uc, R::TR, seg(&tr))?;
        for &(rid, value) in &sys.msrs {
            ffi::write_msr(uc, rid, value)?;
        }
        let sp = if long { R::RSP } else { R::ESP };
        uc.reg_write(sp, KSTACK_TOP).map_err(uc_err("write RSP"))?;
        Ok(())
    }

    /// Runs the side's boot stub from ring 0 until the test's first byte.
    fn run_boot_stub(
        &mut self,
        image: &GuestImage,
        side: Side,
        entry: &EntryState,
    ) -> Result<(), UnicornError> {
        let _ = self.uc.ctl_flush_tlb();
        *self.uc.get_data_mut() = Events {
            limit: BOOT_INSNS,
            ..Events::default()
        };
        // The stop at the test's first byte is compiled into translated
        // blocks: drop every block a test run left (they have no stop
        // there), or the boot would run into the previous test.
        self.uc
            .ctl_flush_tb()
            .map_err(uc_err("flush the translation cache"))?;
        let start = image.boot_linear(side);
        let until = image.linear(entry.rip);
        let r = self.uc.emu_start(start, until, 0, 0);
        // The boot stub's blocks are translated code outside the code page.
        self.translated_elsewhere = true;
        self.ran_unknown = true;
        let rip = self.uc.reg_read(R::EIP).unwrap_or(0);
        let intr = self.uc.get_data().intr;
        // The stub's pushes land outside the program's pages (and its
        // events name no program pages): restore all of memory.
        self.memory_suspect = true;
        if r.is_err() || rip != entry.rip || intr.is_some() {
            return Err(UnicornError::BootStub {
                rip,
                intr,
                error: r.err(),
            });
        }
        Ok(())
    }

    /// Real mode: CR0, every segment register, ESP, EFLAGS and EIP.
    fn load_real_mode(
        &mut self,
        image: &GuestImage,
        entry: &EntryState,
    ) -> Result<(), UnicornError> {
        let uc = &mut self.uc;
        let s = entry.segs[0].selector as u64;
        uc.reg_write(R::CR0, image.sys.cr0)
            .map_err(uc_err("write CR0"))?;
        for r in [R::CS, R::SS, R::DS, R::ES, R::FS, R::GS] {
            uc.reg_write(r, s)
                .map_err(uc_err("write a segment register"))?;
        }
        uc.reg_write(R::ESP, entry.rsp)
            .map_err(uc_err("write ESP"))?;
        uc.reg_write(R::EFLAGS, entry.rflags)
            .map_err(uc_err("write EFLAGS"))?;
        uc.reg_write(R::EIP, entry.rip)
            .map_err(uc_err("write EIP"))?;
        Ok(())
    }
}
