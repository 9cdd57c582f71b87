//! The guest and its memory: one VM with one vCPU and one anonymous mapping
//! that the guest sees as physical memory from address 0 (memory slot 0),
//! and the page bookkeeping that makes every run start from its image (load
//! an image, restore the harness pages, undo the guest's own writes through
//! KVM's dirty log).
//!
//! Where KVM offers it (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2; kvm_pvm does),
//! reading the dirty log does not write-protect the pages again: the engine
//! does that itself (KVM_CLEAR_DIRTY_LOG) for every dirty page but the
//! quiet ones, the pages runs write again and again (the kernel stack, data
//! and stack pages, descriptor tables, and the page tables, whose accessed
//! and dirty bits every run sets anew). Those stay writable, so
//! the guest's first write to them in a run costs no fault; they are
//! compared with the shadow copy after every run instead ("kept" pages).
//!
//! The engine's memory `unsafe` lives here: the mapping, the slices over it,
//! handing it to KVM, and unmapping it after KVM is done with it.

use super::KvmError;
use crate::engine::shadow::Shadow;
use crate::machine::{GuestImage, Prepared, MEM_SIZE, MOVED_PAGE_TABLES, PAGE, PAGE_TABLES};
use kvm_bindings::{
    kvm_clear_dirty_log, kvm_enable_cap, kvm_userspace_memory_region, KVMIO,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
    KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::convert::Infallible;

/// The bytes of guest physical memory at `phys`, if all of them exist.
pub(super) fn bytes_at(mem: &[u8], phys: u64, len: usize) -> Option<&[u8]> {
    let start = usize::try_from(phys).ok()?;
    mem.get(start..start.checked_add(len)?)
}

vmm_sys_util::ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

/// Pages of guest memory (one bit each in a `u64` dirty-log word).
const PAGES: usize = (MEM_SIZE / PAGE) as usize;
const _: () = assert!(PAGES == 64, "the kept-page mask is one u64");

/// The pieces a restored page is compared and written in.
const RESTORE_CHUNK: usize = 256;

/// The host page size (the granule of KVM's dirty log).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => PAGE as usize,
    }
}

/// An anonymous private mapping of `len` bytes.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Mapping, KvmError> {
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(KvmError::MapMemory(std::io::Error::last_os_error()));
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    fn slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes owned by
        // `self` (unmapped only in Drop). The guest may write it while the
        // vCPU runs, but the vCPU runs only inside `&mut` methods of the
        // `Guest` that owns this mapping, never while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`. The
        // only `Mapping` KVM knows of is `Guest::mem`, which drops after the
        // vCPU and the VM that use it (field order of `Guest`).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The VM, its vCPU and its memory, and what the engine last wrote there.
pub(super) struct Guest {
    // Field order matters for Drop: the vCPU and the VM go before the memory
    // they were given.
    pub(super) vcpu: VcpuFd,
    vm: VmFd,
    mem: Mapping,
    /// Guest memory as the engine last wrote it (to write only changed pages).
    shadow: Shadow,
    /// Whether KVM logs the pages the guest dirties (then every one of them
    /// is restored, not only the image's `restore_pages`).
    pub(super) dirty_log: bool,
    /// Memory slot 0 as KVM was given it.
    region: kvm_userspace_memory_region,
    /// The XSAVE-managed state every run starts from ([`super::vcpu::reset_xsave`]).
    pub(super) xsave_reset: Option<kvm_bindings::kvm_xsave>,
    /// The MSRs beyond the image's that a run may write, with the values a
    /// new vCPU has ([`super::vcpu::reset_msrs`]), set again with the
    /// image's.
    pub(super) msrs_reset: Vec<(u32, u64)>,
    /// The engine changed a page that may hold page tables since KVM last
    /// built its translations: under shadow paging (PVM; any host without
    /// EPT or NPT) KVM tracks only the guest's own writes to page tables,
    /// so its translations may still follow the old entries (measured on
    /// PVM: a data page made not executable stayed executable at CPL 3).
    translations_stale: bool,
    /// Whether the engine write-protects dirty pages itself (manual
    /// dirty-log protection; guest pages are host pages).
    manual_protect: bool,
    /// The pages (bit n: page n) left writable and dirty in KVM's log:
    /// compared with the shadow copy after every run.
    kept: u64,
}

/// Whether two pages of page-table entries are the same but for their
/// accessed and dirty bits (5 and 6 of every 8-byte entry).
fn same_but_ad(a: &[u8], b: &[u8]) -> bool {
    const AD: u64 = 0x60;
    a.len() == b.len()
        && a.chunks_exact(8).zip(b.chunks_exact(8)).all(|(x, y)| {
            let e = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes")) & !AD;
            e(x) == e(y)
        })
}

/// The bit of the page at `phys` in a page mask (bit n: page n), if it is
/// the start of one of the `PAGES` pages.
fn page_bit(phys: u64) -> Option<u64> {
    let n = u32::try_from(phys / PAGE)
        .ok()
        .filter(|&n| (n as usize) < PAGES)?;
    phys.is_multiple_of(PAGE).then(|| 1 << n)
}

/// The page mask of `pages` (physical addresses of page starts).
pub(super) fn page_mask(pages: impl IntoIterator<Item = u64>) -> u64 {
    pages.into_iter().filter_map(page_bit).fold(0, |m, b| m | b)
}

/// What the guest's write to the page at `page` (now `now`, last written
/// by the engine as `old`) says: whether it was a quiet write (to page
/// tables or one of the `quiet` pages), and whether it changed page-table
/// entries. The accessed and dirty bits the page walks set do not count:
/// they change no translation (and are set in every run).
fn judge_write(page: u64, now: &[u8], old: &[u8], quiet: u64) -> (bool, bool) {
    let tables = holds_page_tables(page);
    let quiet_page = page_bit(page).is_some_and(|b| quiet & b != 0);
    (tables || quiet_page, tables && !same_but_ad(now, old))
}

/// Whether a physical page may hold the harness's page tables (at
/// `PAGE_TABLES`, or `MOVED_PAGE_TABLES` in the moved-pages variant; four
/// levels at most).
fn holds_page_tables(phys: u64) -> bool {
    let page = phys & !(PAGE - 1);
    [PAGE_TABLES, MOVED_PAGE_TABLES]
        .iter()
        .any(|&base| (base..base + 4 * PAGE).contains(&page))
}

impl Guest {
    /// Creates the VM, gives it `MEM_SIZE` bytes at guest physical 0 (with
    /// a dirty log where KVM keeps one), and creates vCPU 0.
    pub(super) fn new(kvm: &Kvm) -> Result<Guest, KvmError> {
        // `mem` is declared before `vm` so that on every early return the VM
        // (and the vCPU, declared last) is closed before the memory is
        // unmapped: locals drop in reverse order.
        let mem = Mapping::new(MEM_SIZE as usize)?;
        let vm = kvm.create_vm().map_err(KvmError::CreateVm)?;
        let manual_protect = page_size() == PAGE as usize
            && vm.check_extension_raw(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.into()) as u32
                & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
                != 0
            && vm
                .enable_cap(&kvm_enable_cap {
                    cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                    args: [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE.into(), 0, 0, 0],
                    ..Default::default()
                })
                .is_ok();
        let mut region = kvm_userspace_memory_region {
            slot: 0,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE,
            userspace_addr: mem.ptr as u64,
        };
        // SAFETY: the region is the live mapping `mem` of `MEM_SIZE` bytes.
        // It is unmapped only after the VM and its vCPU are closed: on an
        // early return by the order of the locals, afterwards by the field
        // order of `Guest`.
        let mut dirty_log = unsafe { vm.set_user_memory_region(region) }.is_ok();
        if !dirty_log {
            region.flags = 0;
            // SAFETY: as above.
            unsafe { vm.set_user_memory_region(region) }.map_err(KvmError::SetMemoryRegion)?;
        }
        dirty_log = dirty_log && vm.get_dirty_log(0, MEM_SIZE as usize).is_ok();
        let vcpu = vm.create_vcpu(0).map_err(KvmError::CreateVcpu)?;
        let xsave_reset = super::vcpu::reset_xsave(&vcpu);
        Ok(Guest {
            xsave_reset,
            msrs_reset: Vec::new(),
            vcpu,
            vm,
            mem,
            shadow: Shadow::new(),
            dirty_log,
            region,
            translations_stale: false,
            manual_protect,
            kept: 0,
        })
    }

    /// Makes KVM drop every translation it built from guest memory, where
    /// the engine changed a page-table page since the last run: memory slot
    /// 0 is deleted and made again (which zaps KVM's shadow pages and
    /// flushes the guest's TLB, with or without shadow paging).
    pub(super) fn sync_translations(&mut self) -> Result<(), KvmError> {
        if !std::mem::take(&mut self.translations_stale) {
            return Ok(());
        }
        let delete = kvm_userspace_memory_region {
            memory_size: 0,
            ..self.region
        };
        // SAFETY: size 0 deletes the slot; KVM stops using the mapping.
        unsafe { self.vm.set_user_memory_region(delete) }.map_err(KvmError::SetMemoryRegion)?;
        // SAFETY: the region is the live mapping `mem` of `MEM_SIZE` bytes,
        // unmapped only after the VM and its vCPU are closed (as in `new`).
        unsafe { self.vm.set_user_memory_region(self.region) }
            .map_err(KvmError::SetMemoryRegion)?;
        // The new slot's pages are write-protected and clean again.
        self.kept = 0;
        Ok(())
    }

    /// Guest physical memory.
    pub(super) fn mem(&self) -> &[u8] {
        self.mem.slice()
    }

    /// Undoes the guest's own writes of the last run (pages KVM logged as
    /// dirty get back what the engine last wrote there). Says whether the
    /// run wrote only `quiet` pages (bit n: page n) and page tables (false
    /// where KVM keeps no dirty log: then the engine cannot tell).
    pub(super) fn undo_guest_writes(&mut self, quiet: u64) -> bool {
        if !self.dirty_log {
            return false;
        }
        let Ok(bitmap) = self.vm.get_dirty_log(0, MEM_SIZE as usize) else {
            // Without the log, restore_pages still covers the harness pages.
            self.dirty_log = false;
            return false;
        };
        let mut only_quiet = true;
        let host_page = page_size();
        if self.manual_protect {
            let logged = bitmap.first().copied().unwrap_or(0);
            return self.undo_kept_and_logged(logged, quiet);
        }
        // Quiet pages are guest pages: with other host pages none counts.
        let quiet = if host_page == PAGE as usize { quiet } else { 0 };
        let guest = self.mem.slice_mut();
        for (w, bits) in bitmap.iter().enumerate() {
            let mut bits = *bits;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let start = (w * 64 + b) * host_page;
                let end = (start + host_page).min(guest.len());
                if start < end {
                    let page = start as u64 & !(PAGE - 1);
                    let old = self.shadow.bytes(start, end);
                    let (quiet_write, tables_changed) =
                        judge_write(page, &guest[start..end], old, quiet);
                    only_quiet &= quiet_write;
                    // The guest's write to its page tables was seen by
                    // KVM; putting the old bytes back is not.
                    self.translations_stale |= tables_changed;
                    guest[start..end].copy_from_slice(old);
                }
            }
        }
        only_quiet
    }

    /// [`Guest::undo_guest_writes`] under manual protection: `logged` are
    /// the pages KVM logged as dirty (kept ones among them, always). A kept
    /// page counts as written where it differs from the shadow copy, and
    /// only those pieces are copied back; every other logged page is copied
    /// back whole and, unless it is quiet, write-protected again (a quiet
    /// one is kept from now on).
    fn undo_kept_and_logged(&mut self, logged: u64, quiet: u64) -> bool {
        let mut only_quiet = true;
        let mut protect = 0u64;
        let guest = self.mem.slice_mut();
        let mut bits = logged | self.kept;
        while bits != 0 {
            let n = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let start = n * PAGE as usize;
            let end = start + PAGE as usize;
            let old = self.shadow.bytes(start, end);
            let now = &mut guest[start..end];
            let kept = self.kept & (1 << n) != 0;
            if kept && now == old {
                continue;
            }
            let (quiet_write, tables_changed) = judge_write(start as u64, now, old, quiet);
            only_quiet &= quiet_write;
            self.translations_stale |= tables_changed;
            if kept {
                for (dst, src) in now.chunks_mut(RESTORE_CHUNK).zip(old.chunks(RESTORE_CHUNK)) {
                    if dst != src {
                        dst.copy_from_slice(src);
                    }
                }
            } else {
                now.copy_from_slice(old);
                if quiet_write {
                    self.kept |= 1 << n;
                } else {
                    protect |= 1 << n;
                }
            }
        }
        if protect != 0 && self.clear_dirty_log(protect).is_err() {
            // KVM would no longer log those pages' writes: fall back to
            // restoring every harness page whole (and resetting everything).
            self.dirty_log = false;
            return false;
        }
        only_quiet
    }

    /// Clears the log's bits for `pages` and write-protects them again.
    fn clear_dirty_log(&self, mut pages: u64) -> Result<(), std::io::Error> {
        let mut clear = kvm_clear_dirty_log {
            slot: 0,
            num_pages: PAGES as u32,
            first_page: 0,
            ..Default::default()
        };
        clear.__bindgen_anon_1.dirty_bitmap = (&raw mut pages).cast();
        // SAFETY: KVM_CLEAR_DIRTY_LOG on the VM's own fd reads the 24-byte
        // `kvm_clear_dirty_log` and, through its pointer, `num_pages` bits
        // (64: one u64, `pages`, alive until the call returns); it writes
        // no memory of this process.
        let r =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.vm, KVM_CLEAR_DIRTY_LOG(), &clear) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes guest memory equal to the image's, writing only changed pages.
    pub(super) fn load(&mut self, image: &GuestImage) {
        if self.shadow.holds(image) {
            return;
        }
        let guest = self.mem.slice_mut();
        let mut write = write_into(guest);
        let mut tables_changed = false;
        let _ = self.shadow.load(
            image,
            |_| false,
            |at, bytes| {
                tables_changed |= holds_page_tables(at);
                write(at, bytes)
            },
        );
        self.translations_stale |= tables_changed;
    }

    /// Restores the pages an instruction may dirty and writes the test's own.
    /// With the dirty log (after [`Guest::undo_guest_writes`]) guest memory
    /// is what the shadow copy says, so only the pieces that differ are
    /// written; without it every page is written whole.
    pub(super) fn restore(&mut self, image: &GuestImage, test: &Prepared) {
        let guest = self.mem.slice_mut();
        let mut write = write_into(guest);
        let stale = !self.dirty_log;
        for &page in &image.restore_pages {
            let _ = self.shadow.put(
                page,
                image.page_for(page, test),
                stale,
                RESTORE_CHUNK,
                &mut write,
            );
        }
    }
}

/// Writes into guest memory at a physical address (never past its end).
fn write_into(guest: &mut [u8]) -> impl FnMut(u64, &[u8]) -> Result<(), Infallible> + '_ {
    move |at, bytes| {
        let at = at as usize;
        if let Some(dst) = guest.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::engine;
    use super::*;
    use crate::engine::conformance::{completed, NONE};
    use crate::engine::Engine;
    use crate::machine::{Gpr, Setup, Sym, Variant};
    use crate::mode::{Config, Mode};
    use crate::observe::Side;

    #[test]
    fn page_masks_hold_page_starts_only() {
        assert_eq!(page_mask([0, PAGE, PAGE + 1, PAGES as u64 * PAGE]), 0b11);
        assert_eq!(page_mask([63 * PAGE]), 1 << 63);
        let page = [0u8; PAGE as usize];
        let mut ad = page;
        ad[0] = 0x60;
        let mut changed = page;
        changed[0] = 0x01;
        // Page tables: always quiet; changed only beyond the A/D bits.
        assert_eq!(judge_write(PAGE_TABLES, &ad, &page, 0), (true, false));
        assert_eq!(judge_write(PAGE_TABLES, &changed, &page, 0), (true, true));
        // Other pages: quiet where the mask says so, never page tables.
        let data = 0x20 * PAGE;
        assert_eq!(judge_write(data, &changed, &page, 0), (false, false));
        assert_eq!(judge_write(data, &changed, &page, 1 << 0x20), (true, false));
    }

    #[test]
    fn accessed_and_dirty_bits_change_no_translation() {
        let entry = |v: u64| v.to_le_bytes().repeat(2);
        assert!(same_but_ad(&entry(0x8007), &entry(0x8067)));
        assert!(!same_but_ad(&entry(0x8007), &entry(0x8005)), "RW");
        assert!(
            !same_but_ad(&entry(0x8007), &entry(0x8000_0000_0000_8007)),
            "NX"
        );
        assert!(holds_page_tables(PAGE_TABLES + 3 * PAGE + 8));
        assert!(holds_page_tables(MOVED_PAGE_TABLES));
        assert!(!holds_page_tables(PAGE_TABLES + 4 * PAGE));
    }

    #[test]
    fn bytes_at_stays_inside_guest_memory() {
        let mem = [1u8, 2, 3, 4];
        assert_eq!(bytes_at(&mem, 1, 2), Some(&[2u8, 3][..]));
        assert_eq!(bytes_at(&mem, 3, 2), None);
        assert_eq!(bytes_at(&mem, u64::MAX, 1), None);
        assert_eq!(bytes_at(&mem, 4, 0), Some(&[][..]));
    }

    #[test]
    fn rewritten_code_and_data_are_restored_between_runs() {
        let Some(mut e) = engine() else { return };
        crate::engine::conformance::check_runs_are_restored(&mut e);
    }

    #[test]
    fn guest_writes_outside_the_harness_pages_are_undone() {
        let Some(mut e) = engine() else { return };
        if !e.guest.dirty_log {
            println!("skipped: KVM does not log dirty pages here");
            return;
        }
        let cfg = Config::UMIP_OFF;
        let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
        let at = 0x20000usize;
        assert!(!img.restore_pages.contains(&(at as u64)));
        let store = [0x88, 0x04, 0x25, 0x00, 0x00, 0x02, 0x00]; // mov [0x20000], al
        let load = [0x8A, 0x04, 0x25, 0x00, 0x00, 0x02, 0x00]; // mov al, [0x20000]
        let setup = Setup {
            regs: vec![(Gpr::Rax, Sym::Imm(0x5A))],
            ..Setup::default()
        };
        let p = img.prepare(Side::Supervisor, &store, &setup).unwrap();
        assert!(completed(&e.run(&img, Side::Supervisor, &p)));
        assert_eq!(e.guest.mem()[at], 0x5A, "the store reached guest memory");
        let p = img.prepare(Side::Supervisor, &load, &NONE).unwrap();
        let o = e.run(&img, Side::Supervisor, &p);
        assert!(completed(&o), "{:?}", o.outcome);
        assert_eq!(o.user.unwrap().gprs[0] & 0xFF, img.memory[at] as u64);
    }
}
