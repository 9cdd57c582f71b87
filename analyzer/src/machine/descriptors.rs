//! Segment descriptors, gates and page-table entries as pure functions.

/// Access byte of a present code segment (execute/read, accessed).
pub const CODE_ACCESS: u8 = 0x9B;
/// Access byte of a present data segment (read/write, accessed).
pub const DATA_ACCESS: u8 = 0x93;
/// System descriptor types.
pub const TYPE_LDT: u8 = 0x2;
pub const TYPE_TSS_AVAILABLE: u8 = 0x9;
pub const TYPE_TSS_BUSY: u8 = 0xB;
pub const TYPE_CALL_GATE: u8 = 0xC;
pub const TYPE_INTERRUPT_GATE: u8 = 0xE;

/// Flags nibble (descriptor bits 52-55): G, D/B, L, AVL.
pub const FLAG_G: u8 = 0x8;
pub const FLAG_DB: u8 = 0x4;
pub const FLAG_L: u8 = 0x2;

/// An 8-byte code/data/system descriptor.
pub fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let limit = limit as u64 & 0xF_FFFF;
    let base = base as u64;
    (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | ((access as u64) << 40)
        | ((limit >> 16) << 48)
        | (((flags & 0xF) as u64) << 52)
        | ((base >> 24) << 56)
}

/// Access byte with a DPL and a type for code (`CODE_ACCESS`) or data (`DATA_ACCESS`).
pub fn with_dpl(access: u8, dpl: u8) -> u8 {
    (access & !0x60) | ((dpl & 3) << 5)
}

/// A 16-byte system descriptor (TSS, LDT) of long mode.
pub fn system_descriptor64(base: u64, limit: u32, typ: u8) -> [u64; 2] {
    let low = descriptor(base as u32, limit, 0x80 | typ, 0);
    [low, base >> 32]
}

/// Fields of an 8-byte descriptor: (base, limit in bytes after granularity, access, flags).
pub fn decode(d: u64) -> (u32, u32, u8, u8) {
    let base = ((d >> 16) & 0xFF_FFFF) | (((d >> 56) & 0xFF) << 24);
    let raw_limit = (d & 0xFFFF) | (((d >> 48) & 0xF) << 16);
    let flags = ((d >> 52) & 0xF) as u8;
    let limit = if flags & FLAG_G != 0 {
        (raw_limit << 12) | 0xFFF
    } else {
        raw_limit
    };
    (base as u32, limit as u32, (d >> 40) as u8, flags)
}

/// The VMX access-rights form of a descriptor's attributes (access byte in
/// bits 0-7, flags nibble in bits 12-15), as KVM's `kvm_segment` fields take it.
pub fn access_rights(access: u8, flags: u8) -> u16 {
    access as u16 | ((flags as u16 & 0xF) << 12)
}

/// A 32-bit interrupt/trap/call gate (8 bytes). For a call gate, `count` is
/// the parameter count; for interrupt gates it must be 0.
pub fn gate32(offset: u32, selector: u16, typ: u8, dpl: u8) -> u64 {
    let offset = offset as u64;
    (offset & 0xFFFF)
        | ((selector as u64) << 16)
        | ((0x80 | ((dpl as u64 & 3) << 5) | typ as u64) << 40)
        | ((offset >> 16) << 48)
}

/// A 64-bit interrupt/call gate (16 bytes) with an IST index (interrupt gates only).
pub fn gate64(offset: u64, selector: u16, ist: u8, typ: u8, dpl: u8) -> [u64; 2] {
    let low = (offset & 0xFFFF)
        | ((selector as u64) << 16)
        | ((ist as u64 & 7) << 32)
        | ((0x80 | ((dpl as u64 & 3) << 5) | typ as u64) << 40)
        | (((offset >> 16) & 0xFFFF) << 48);
    [low, offset >> 32]
}

/// Page-table entry flags.
pub const PTE_P: u64 = 1;
pub const PTE_RW: u64 = 2;
pub const PTE_US: u64 = 4;
pub const PTE_ALL: u64 = PTE_P | PTE_RW | PTE_US;
/// Execute-disable (PAE and 4-level entries, with EFER.NXE).
pub const PTE_NX: u64 = 1 << 63;

/// The paging structures a mode uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paging {
    /// 32-bit 2-level paging (PD, PT; 4-byte entries).
    Legacy,
    /// PAE 3-level paging (PDPT, PD, PT; 8-byte entries).
    Pae,
    /// 4-level long-mode paging (PML4, PDPT, PD, PT).
    Long,
}

/// Builds page tables mapping `pages` (linear page address -> physical page
/// address, all below 2 MiB linear) at `base`, one table per page from
/// `base` on: Long: PML4, PDPT, PD, PT; Pae: PDPT, PD, PT; Legacy: PD, PT.
/// Returns (physical address, page contents) of each table page.
pub fn page_tables(kind: Paging, base: u64, pages: &[(u64, u64)]) -> Vec<(u64, Vec<u8>)> {
    let levels = match kind {
        Paging::Legacy => 2,
        Paging::Pae => 3,
        Paging::Long => 4,
    };
    let mut tables: Vec<(u64, Vec<u8>)> = (0..levels)
        .map(|i| (base + i * 0x1000, vec![0u8; 4096]))
        .collect();
    // Every level but the last points at the next table with its first entry.
    let last = tables.len() - 1;
    for (i, (addr, table)) in tables.iter_mut().enumerate().take(last) {
        let next = *addr + 0x1000;
        match kind {
            Paging::Legacy => put32(table, 0, (next | PTE_ALL) as u32),
            // PAE PDPT entries have RW and US reserved: present only.
            Paging::Pae if i == 0 => put64(table, 0, next | PTE_P),
            _ => put64(table, 0, next | PTE_ALL),
        }
    }
    let pt = &mut tables[levels as usize - 1].1;
    for &(lin, phys) in pages {
        match kind {
            Paging::Legacy => {
                debug_assert!(lin < 0x40_0000);
                put32(
                    pt,
                    ((lin >> 12) & 1023) as usize * 4,
                    (phys | PTE_ALL) as u32,
                );
            }
            Paging::Pae | Paging::Long => {
                debug_assert!(lin < 0x20_0000);
                put64(pt, ((lin >> 12) & 511) as usize * 8, phys | PTE_ALL);
            }
        }
    }
    tables
}

/// The physical address of the last-level entry that maps `lin` in the
/// tables [`page_tables`] builds at `base` (PAE and 4-level paging).
pub fn pte_address(kind: Paging, base: u64, lin: u64) -> Option<u64> {
    let levels = match kind {
        Paging::Legacy => return None,
        Paging::Pae => 3,
        Paging::Long => 4,
    };
    (lin < 0x20_0000).then(|| base + (levels - 1) * 0x1000 + ((lin >> 12) & 511) * 8)
}

/// Walks page tables in `mem` (physical memory from 0) for a linear address.
/// Returns the physical address, or None if not mapped. For tests and checks.
pub fn translate(mem: &[u8], kind: Paging, cr3: u64, lin: u64) -> Option<u64> {
    let rd64 = |a: u64| -> Option<u64> {
        let a = a as usize;
        mem.get(a..a + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let rd32 = |a: u64| -> Option<u64> {
        let a = a as usize;
        mem.get(a..a + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as u64)
    };
    let walk = |first: u64, shifts: &[(u32, u64)]| -> Option<u64> {
        let mut table = first;
        for &(shift, mask) in shifts {
            let e = rd64(table + ((lin >> shift) & mask) * 8)?;
            if e & PTE_P == 0 {
                return None;
            }
            table = e & 0x000F_FFFF_FFFF_F000;
        }
        Some(table | (lin & 0xFFF))
    };
    match kind {
        Paging::Long => walk(cr3 & !0xFFF, &[(39, 511), (30, 511), (21, 511), (12, 511)]),
        Paging::Pae => walk(cr3 & !0x1F, &[(30, 3), (21, 511), (12, 511)]),
        Paging::Legacy => {
            let pde = rd32((cr3 & !0xFFF) + ((lin >> 22) & 1023) * 4)?;
            if pde & PTE_P == 0 {
                return None;
            }
            let pte = rd32((pde & !0xFFF) + ((lin >> 12) & 1023) * 4)?;
            if pte & PTE_P == 0 {
                return None;
            }
            Some((pte & !0xFFF) | (lin & 0xFFF))
        }
    }
}

pub fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
pub fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_descriptors_have_the_known_encodings() {
        // The classic flat 32-bit ring-0 code and data descriptors.
        assert_eq!(
            descriptor(0, 0xFFFFF, CODE_ACCESS, FLAG_G | FLAG_DB),
            0x00CF_9B00_0000_FFFF
        );
        assert_eq!(
            descriptor(0, 0xFFFFF, DATA_ACCESS, FLAG_G | FLAG_DB),
            0x00CF_9300_0000_FFFF
        );
        // 64-bit ring-3 code: L set, D clear, DPL 3.
        assert_eq!(
            descriptor(0, 0xFFFFF, with_dpl(CODE_ACCESS, 3), FLAG_G | FLAG_L),
            0x00AF_FB00_0000_FFFF
        );
    }

    #[test]
    fn descriptor_fields_round_trip() {
        let d = descriptor(0x1234_5678, 0xABCDE, with_dpl(DATA_ACCESS, 3), FLAG_DB);
        let (base, limit, access, flags) = decode(d);
        assert_eq!(base, 0x1234_5678);
        assert_eq!(limit, 0xABCDE);
        assert_eq!((access >> 5) & 3, 3, "DPL");
        assert_eq!(access & 0x80, 0x80, "present");
        assert_eq!(flags, FLAG_DB);
        let (_, glimit, _, _) = decode(descriptor(0, 0xFFFFF, DATA_ACCESS, FLAG_G));
        assert_eq!(glimit, 0xFFFF_FFFF);
    }

    #[test]
    fn gates_carry_offset_selector_type_and_dpl() {
        let g = gate32(0x1234_5678, 0x08, TYPE_INTERRUPT_GATE, 3);
        assert_eq!(g & 0xFFFF, 0x5678);
        assert_eq!(g >> 48, 0x1234);
        assert_eq!((g >> 16) & 0xFFFF, 0x08);
        assert_eq!(
            (g >> 40) & 0xFF,
            0xEE,
            "present, DPL 3, 32-bit interrupt gate"
        );
        let [lo, hi] = gate64(0xFFFF_8000_1234_5678, 0x08, 1, TYPE_INTERRUPT_GATE, 0);
        assert_eq!(lo & 0xFFFF, 0x5678);
        assert_eq!((lo >> 48) & 0xFFFF, 0x1234);
        assert_eq!((lo >> 32) & 7, 1, "IST 1");
        assert_eq!((lo >> 40) & 0xFF, 0x8E);
        assert_eq!(hi, 0xFFFF_8000);
    }

    #[test]
    fn system_descriptor_splits_the_base() {
        let [lo, hi] = system_descriptor64(0x1_2345_6000, 0x67, TYPE_TSS_AVAILABLE);
        let (base, limit, access, _) = decode(lo);
        assert_eq!(base, 0x2345_6000);
        assert_eq!(limit, 0x67);
        assert_eq!(access, 0x89);
        assert_eq!(hi, 1);
        assert_eq!(access_rights(0x89, FLAG_G), 0x8089);
    }

    #[test]
    fn page_tables_translate_as_built() {
        for long in [Paging::Legacy, Paging::Pae, Paging::Long] {
            let pages = [(0x7000, 0x27000), (0x8000, 0x8000), (0x17000, 0x7000)];
            let mut mem = vec![0u8; 0x40000];
            for (addr, page) in page_tables(long, 0xA000, &pages) {
                mem[addr as usize..addr as usize + 4096].copy_from_slice(&page);
            }
            assert_eq!(translate(&mem, long, 0xA000, 0x7123), Some(0x27123));
            assert_eq!(translate(&mem, long, 0xA000, 0x8FFF), Some(0x8FFF));
            assert_eq!(translate(&mem, long, 0xA000, 0x17001), Some(0x7001));
            assert_eq!(
                translate(&mem, long, 0xA000, 0x0),
                None,
                "null page unmapped"
            );
            assert_eq!(translate(&mem, long, 0xA000, 0x9000), None);
        }
    }

    #[test]
    fn pae_pdpt_entries_carry_only_the_present_bit() {
        let t = page_tables(Paging::Pae, 0xA000, &[(0x7000, 0x7000)]);
        let pdpte = u64::from_le_bytes(t[0].1[0..8].try_into().unwrap());
        assert_eq!(
            pdpte,
            0xB000 | PTE_P,
            "RW and US are reserved in a PAE PDPTE"
        );
        assert_eq!(t.len(), 3);
    }
}
