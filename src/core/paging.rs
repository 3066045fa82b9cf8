//! x86-64 4-level page tables, walked and edited through [`PhysMemory`].
//!
//! Place in the boot flow: after [`crate::frames`] hands out physical frames,
//! the kernel builds its own tables here (identity map of RAM, kernel image
//! with per-section permissions, guard pages, the mm window) and loads them
//! into CR3. Later the per-vCPU hypercall queue defers leaf writes: it asks
//! [`PageTables::leaf_entry`] where the level-1 entry of a page lives, records
//! `{write_pte, entry, value}`, and applies it at flush time with
//! [`PageTables::write_entry`].
//!
//! This module owns the page-table frames and nothing else: it never flushes
//! a TLB and never frees a table. What a changed mapping means for code
//! running under it (the `invlpg`, the shootdown) is the caller's business,
//! which is why there is no `MapperFlush` here: the queue batches those.
//!
//! Entries are read and written with volatile accesses, one aligned 8-byte
//! access each, because the MMU and other vCPUs read them concurrently. The
//! caller serialises changes to one hierarchy.
//!
//! Intermediate entries are always `PRESENT | WRITABLE`: the MMU ANDs
//! permissions over the levels, so every restriction lives in the leaf.
//! For that reason `USER_ACCESSIBLE` is refused in leaves (it would silently
//! be supervisor-only); this is a single-address-space ring-0 kernel.
//!
//! Intermediate tables are never freed here, not even when they become empty
//! (a later issue decides how freeing interacts with deferred flushes). Two
//! consequences: a 2 MiB page cannot be mapped where 4 KiB tables once
//! existed ([`Error::HugePageInTheWay`]), and a [`LeafEntry`] stays the
//! address of a page-table entry for as long as the hierarchy lives.

use core::fmt;
use core::ptr;
use core::sync::atomic::{fence, Ordering};

use x86_64::structures::paging::page_table::{PageTableEntry, PageTableLevel};
use x86_64::structures::paging::{
    Page, PageSize as _, PageTable, PageTableFlags, PageTableIndex, PhysFrame, Size1GiB, Size2MiB,
    Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::phys::PhysMemory;

/// What every intermediate entry grants; restrictions belong in the leaf.
const TABLE_FLAGS: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

/// Size of one page table (Intel SDM Vol. 3A, 4.5 "4-Level Paging"): 512
/// eight-byte entries in one 4 KiB frame.
const TABLE_BYTES: usize = core::mem::size_of::<PageTable>();
const ENTRY_BYTES: u64 = core::mem::size_of::<PageTableEntry>() as u64;

/// Errors of the page-table walker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A leaf is already present where a new mapping was requested.
    AlreadyMapped(VirtAddr),
    /// No present leaf (or no table on the way to it) covers the address.
    NotMapped(VirtAddr),
    /// A 2 MiB/1 GiB leaf covers a 4 KiB request, or a 4 KiB page table
    /// exists where a 2 MiB page is requested.
    HugePageInTheWay(VirtAddr),
    /// The [`TableAlloc`] had no frame left for a table needed to map the
    /// address.
    OutOfTables(VirtAddr),
    /// A page table (or an entry) at this physical address is not accessible
    /// through the [`PhysMemory`] window.
    TableUnreachable(PhysAddr),
    /// These leaf flags are refused: `HUGE_PAGE` outside `map_2m`,
    /// `USER_ACCESSIBLE`, or bits that belong to the address field.
    BadFlags(PageTableFlags),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AlreadyMapped(va) => {
                write!(f, "virtual address {:#x} is already mapped", va.as_u64())
            }
            Error::NotMapped(va) => write!(f, "virtual address {:#x} is not mapped", va.as_u64()),
            Error::HugePageInTheWay(va) => write!(
                f,
                "virtual address {:#x} conflicts with a mapping of another size \
                 (a 2 MiB/1 GiB page covers it, or 4 KiB tables exist under the 2 MiB page)",
                va.as_u64()
            ),
            Error::OutOfTables(va) => write!(
                f,
                "no frame left for a page table while mapping virtual address {:#x}",
                va.as_u64()
            ),
            Error::TableUnreachable(pa) => write!(
                f,
                "page table at physical address {:#x} is outside accessible memory",
                pa.as_u64()
            ),
            Error::BadFlags(bad) => write!(
                f,
                "leaf flags {bad:?} (bits {:#x}) are not allowed: HUGE_PAGE only through map_2m, \
                 no USER_ACCESSIBLE, no address bits",
                bad.bits()
            ),
        }
    }
}

/// Hands out frames for new page tables.
///
/// The frame need not be zeroed: this module zeroes it before linking it.
///
/// # Safety
///
/// Every frame returned must be unused by anything else, and must stay so for
/// as long as the hierarchy it is linked into lives: this module writes it
/// through [`PhysMemory`] without further checks.
pub unsafe trait TableAlloc {
    /// A fresh frame, or `None` when none is left (reported as
    /// [`Error::OutOfTables`]).
    fn alloc_table(&mut self) -> Option<PhysFrame>;
}

/// The size of the leaf that maps an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafSize {
    Page4KiB,
    Page2MiB,
    Page1GiB,
}

impl LeafSize {
    pub const fn bytes(self) -> u64 {
        match self {
            LeafSize::Page4KiB => Size4KiB::SIZE,
            LeafSize::Page2MiB => Size2MiB::SIZE,
            LeafSize::Page1GiB => Size1GiB::SIZE,
        }
    }
}

/// What [`PageTables::translate`] found for one virtual address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical address the virtual address maps to (offset included).
    pub phys: PhysAddr,
    /// The leaf's flags as the MMU applies them: `WRITABLE` and
    /// `USER_ACCESSIBLE` only if every level grants them, `NO_EXECUTE` if any
    /// level sets it. `HUGE_PAGE` is dropped; `size` says it.
    pub flags: PageTableFlags,
    pub size: LeafSize,
}

/// The physical address of a level-1 entry, as found by
/// [`PageTables::leaf_entry`].
///
/// Only this module creates one, so [`PageTables::write_entry`] through it
/// always hits a page-table entry (tables are never freed here). The queue
/// stores it as it is; [`LeafEntry::phys`] is for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeafEntry(PhysAddr);

impl LeafEntry {
    pub fn phys(self) -> PhysAddr {
        self.0
    }

    /// Names the entry at `phys` without walking to it, for callers that
    /// remember where a leaf table lives (the mm window's directory).
    ///
    /// # Safety
    /// `phys` must be an 8-byte-aligned entry of a level-1 table that
    /// `leaf_entry` returned an entry of, and that table must never be
    /// freed: `write_entry` stores there without checking.
    pub unsafe fn from_phys(phys: PhysAddr) -> LeafEntry {
        LeafEntry(phys)
    }
}

/// A page-table entry's value, `Copy` so that queue records can hold it
/// (the x86_64 crate's `PageTableEntry` is only `Clone`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pte(u64);

impl Pte {
    pub const EMPTY: Pte = Pte(0);

    pub fn from_entry(e: &PageTableEntry) -> Self {
        Pte(e.flags().bits() | e.addr().as_u64())
    }

    pub fn to_entry(self) -> PageTableEntry {
        let mut e = PageTableEntry::new();
        e.set_addr(self.addr(), self.flags());
        e
    }

    /// The raw 64-bit value, as hardware reads it.
    pub const fn bits(self) -> u64 {
        self.0
    }

    pub const fn from_bits(v: u64) -> Self {
        Pte(v)
    }

    pub fn flags(self) -> PageTableFlags {
        PageTableFlags::from_bits_truncate(self.0)
    }

    pub fn addr(self) -> PhysAddr {
        PhysAddr::new(self.0 & 0x000f_ffff_ffff_f000)
    }

    pub fn is_present(self) -> bool {
        self.flags().contains(PageTableFlags::PRESENT)
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pte({:#x}, {:?})", self.addr().as_u64(), self.flags())
    }
}

/// The 4 KiB leaf entry that maps `frame` with `flags` (`PRESENT` added), for
/// a deferred [`PageTables::write_entry`].
pub fn pte_4k(frame: PhysFrame<Size4KiB>, flags: PageTableFlags) -> Result<PageTableEntry, Error> {
    let flags = leaf_flags(flags, false)?;
    let mut e = PageTableEntry::new();
    e.set_addr(frame.start_address(), flags);
    Ok(e)
}

fn pte_2m(frame: PhysFrame<Size2MiB>, flags: PageTableFlags) -> Result<PageTableEntry, Error> {
    let flags = leaf_flags(flags, true)?;
    let mut e = PageTableEntry::new();
    // `set_frame` refuses HUGE_PAGE; `set_addr` takes any 4 KiB-aligned
    // address, and a 2 MiB frame is one.
    e.set_addr(frame.start_address(), flags);
    Ok(e)
}

/// Checks caller-given leaf flags and adds what the leaf needs.
fn leaf_flags(flags: PageTableFlags, huge: bool) -> Result<PageTableFlags, Error> {
    // Unnamed bits (12..=51) are the address field; in a huge leaf bit 12
    // would be PAT, which we do not use.
    let mut bad = PageTableFlags::from_bits_retain(flags.bits() & !PageTableFlags::all().bits());
    bad |= flags & PageTableFlags::USER_ACCESSIBLE;
    if !huge {
        // In a level-1 entry bit 7 is PAT, not a size bit.
        bad |= flags & PageTableFlags::HUGE_PAGE;
    }
    if !bad.is_empty() {
        return Err(Error::BadFlags(bad));
    }
    let mut flags = flags | PageTableFlags::PRESENT;
    if huge {
        flags |= PageTableFlags::HUGE_PAGE;
    }
    Ok(flags)
}

/// One entry slot, validated: `ptr` is aligned and points at 8 accessible
/// bytes of a page-table frame this hierarchy owns.
#[derive(Clone, Copy)]
struct Slot {
    ptr: *mut PageTableEntry,
    pa: PhysAddr,
}

impl Slot {
    fn load(self) -> PageTableEntry {
        // SAFETY: `PageTables::slot` built `ptr` from an accessible, aligned
        // table frame and an in-bounds index. Volatile because the MMU and
        // other vCPUs read (and the MMU sets A/D bits in) it concurrently.
        unsafe { ptr::read_volatile(self.ptr) }
    }

    fn store(self, e: PageTableEntry) {
        // SAFETY: as in `load`; the frame belongs to the hierarchy (contract
        // of `PageTables::new` and `TableAlloc`), so no Rust object lives
        // there, and one aligned 8-byte store is never seen half-written.
        unsafe { ptr::write_volatile(self.ptr, e) }
    }
}

/// A 4-level hierarchy rooted at a PML4 frame, accessed through `mem`.
pub struct PageTables<'m, M: PhysMemory> {
    root: PhysFrame,
    mem: &'m M,
}

impl<'m, M: PhysMemory> PageTables<'m, M> {
    /// # Safety
    ///
    /// `root` holds a zeroed or valid PML4. `root` and every table reachable
    /// from it are used only as this hierarchy's page tables (no Rust object
    /// lives in them) for as long as this value or a [`LeafEntry`] from it is
    /// in use, and changes to the hierarchy are serialised by the caller.
    pub unsafe fn new(mem: &'m M, root: PhysFrame) -> Self {
        PageTables { root, mem }
    }

    pub fn root(&self) -> PhysFrame {
        self.root
    }

    /// Maps `page` to `frame`; `PRESENT` is added to `flags`.
    ///
    /// If a table allocation fails midway, the tables already linked stay
    /// (they are valid, empty tables) but no leaf is written.
    pub fn map_4k(
        &mut self,
        page: Page<Size4KiB>,
        frame: PhysFrame<Size4KiB>,
        flags: PageTableFlags,
        alloc: &mut dyn TableAlloc,
    ) -> Result<(), Error> {
        let value = pte_4k(frame, flags)?;
        let va = page.start_address();
        let slot = self.walk(va, PageTableLevel::One, Some(alloc))?;
        if slot.load().flags().contains(PageTableFlags::PRESENT) {
            return Err(Error::AlreadyMapped(va));
        }
        slot.store(value);
        Ok(())
    }

    /// Maps a 2 MiB `page` to `frame`; `PRESENT | HUGE_PAGE` are added to
    /// `flags`. Partial failure behaves as in [`Self::map_4k`].
    pub fn map_2m(
        &mut self,
        page: Page<Size2MiB>,
        frame: PhysFrame<Size2MiB>,
        flags: PageTableFlags,
        alloc: &mut dyn TableAlloc,
    ) -> Result<(), Error> {
        let value = pte_2m(frame, flags)?;
        let va = page.start_address();
        let slot = self.walk(va, PageTableLevel::Two, Some(alloc))?;
        let old = slot.load().flags();
        if old.contains(PageTableFlags::PRESENT) {
            return Err(if old.contains(PageTableFlags::HUGE_PAGE) {
                Error::AlreadyMapped(va)
            } else {
                Error::HugePageInTheWay(va)
            });
        }
        slot.store(value);
        Ok(())
    }

    /// Removes the mapping of `page`; returns its frame and its last flags
    /// (including the `ACCESSED`/`DIRTY` bits the MMU set).
    pub fn unmap_4k(&mut self, page: Page<Size4KiB>) -> Result<(PhysFrame, PageTableFlags), Error> {
        let va = page.start_address();
        let slot = self.walk(va, PageTableLevel::One, None)?;
        let old = slot.load();
        if !old.flags().contains(PageTableFlags::PRESENT) {
            return Err(Error::NotMapped(va));
        }
        slot.store(PageTableEntry::new());
        Ok((PhysFrame::containing_address(old.addr()), old.flags()))
    }

    /// Removes a 2 MiB mapping; returns its frame and its last flags
    /// (`HUGE_PAGE` dropped, as in [`Translation::flags`]).
    pub fn unmap_2m(
        &mut self,
        page: Page<Size2MiB>,
    ) -> Result<(PhysFrame<Size2MiB>, PageTableFlags), Error> {
        let va = page.start_address();
        let slot = self.walk(va, PageTableLevel::Two, None)?;
        let old = slot.load();
        let flags = old.flags();
        if !flags.contains(PageTableFlags::PRESENT) {
            return Err(Error::NotMapped(va));
        }
        if !flags.contains(PageTableFlags::HUGE_PAGE) {
            return Err(Error::HugePageInTheWay(va));
        }
        slot.store(PageTableEntry::new());
        // `containing_address` also drops bit 12 (PAT in a huge leaf).
        Ok((
            PhysFrame::containing_address(old.addr()),
            flags - PageTableFlags::HUGE_PAGE,
        ))
    }

    /// Replaces the flags of a mapped 4 KiB page (`PRESENT` added) and returns
    /// the old ones. `ACCESSED` and `DIRTY` are carried over, as Linux's
    /// `pte_modify` does, so a write is not forgotten.
    pub fn protect_4k(
        &mut self,
        page: Page<Size4KiB>,
        flags: PageTableFlags,
    ) -> Result<PageTableFlags, Error> {
        let flags = leaf_flags(flags, false)?;
        let va = page.start_address();
        let slot = self.walk(va, PageTableLevel::One, None)?;
        let old = slot.load();
        let old_flags = old.flags();
        if !old_flags.contains(PageTableFlags::PRESENT) {
            return Err(Error::NotMapped(va));
        }
        let kept = old_flags & (PageTableFlags::ACCESSED | PageTableFlags::DIRTY);
        let mut new = PageTableEntry::new();
        new.set_addr(old.addr(), flags | kept);
        slot.store(new);
        Ok(old_flags)
    }

    /// Where `addr` leads, with the flags the MMU would apply.
    pub fn translate(&self, addr: VirtAddr) -> Result<Translation, Error> {
        let mut table = self.root;
        // What all levels above the leaf grant, and whether one forbids
        // execution (Intel SDM Vol. 3A, 4.6 "Access Rights").
        let mut granted = PageTableFlags::WRITABLE | PageTableFlags::USER_ACCESSIBLE;
        let mut no_exec = false;
        for level in [
            PageTableLevel::Four,
            PageTableLevel::Three,
            PageTableLevel::Two,
            PageTableLevel::One,
        ] {
            let e = self.slot(table, addr.page_table_index(level))?.load();
            let flags = e.flags();
            if !flags.contains(PageTableFlags::PRESENT) {
                return Err(Error::NotMapped(addr));
            }
            let huge = flags.contains(PageTableFlags::HUGE_PAGE);
            let size = match level {
                PageTableLevel::One => LeafSize::Page4KiB,
                PageTableLevel::Two if huge => LeafSize::Page2MiB,
                PageTableLevel::Three if huge => LeafSize::Page1GiB,
                // Bit 7 is reserved in a PML4 entry, so it always points to
                // a table.
                _ => {
                    granted &= flags;
                    no_exec |= flags.contains(PageTableFlags::NO_EXECUTE);
                    table = PhysFrame::containing_address(e.addr());
                    continue;
                }
            };
            let restricted = PageTableFlags::WRITABLE | PageTableFlags::USER_ACCESSIBLE;
            let mut effective = (flags - restricted) | (flags & granted);
            if no_exec {
                effective |= PageTableFlags::NO_EXECUTE;
            }
            if size != LeafSize::Page4KiB {
                effective -= PageTableFlags::HUGE_PAGE;
            }
            // `align_down` drops bit 12, which is PAT in a huge leaf.
            let base = e.addr().align_down(size.bytes());
            let phys = base + (addr.as_u64() & (size.bytes() - 1));
            return Ok(Translation {
                phys,
                flags: effective,
                size,
            });
        }
        // The level-1 arm above always returns.
        Err(Error::NotMapped(addr))
    }

    /// Walks to the level-1 entry of `page`, creating missing tables when
    /// `alloc` is given (partial failure as in [`Self::map_4k`]), and returns
    /// where that entry lives. The entry itself is neither read nor changed.
    pub fn leaf_entry(
        &mut self,
        page: Page<Size4KiB>,
        alloc: Option<&mut dyn TableAlloc>,
    ) -> Result<LeafEntry, Error> {
        let slot = self.walk(page.start_address(), PageTableLevel::One, alloc)?;
        Ok(LeafEntry(slot.pa))
    }

    /// Walks to the level-2 entry (the page directory's) of the 2 MiB
    /// `page`, creating missing tables above it when `alloc` is given, and
    /// returns where that entry lives, for a caller that keeps 2 MiB
    /// entries there (the mm window). The entry is neither read nor changed.
    pub fn pd_entry(
        &mut self,
        page: Page<Size2MiB>,
        alloc: Option<&mut dyn TableAlloc>,
    ) -> Result<PhysAddr, Error> {
        let slot = self.walk(page.start_address(), PageTableLevel::Two, alloc)?;
        Ok(slot.pa)
    }

    pub fn read_entry(&self, entry: LeafEntry) -> Result<PageTableEntry, Error> {
        Ok(self.entry_slot(entry)?.load())
    }

    /// Stores `value` as it is (one volatile 8-byte store), e.g. a deferred
    /// [`pte_4k`] or an empty entry. No check and no TLB flush.
    pub fn write_entry(&mut self, entry: LeafEntry, value: PageTableEntry) -> Result<(), Error> {
        self.entry_slot(entry)?.store(value);
        Ok(())
    }

    fn entry_slot(&self, entry: LeafEntry) -> Result<Slot, Error> {
        let table = PhysFrame::containing_address(entry.0);
        let index = (entry.0 - table.start_address()) / ENTRY_BYTES;
        // `index` < 512: the offset inside a 4 KiB frame divided by 8.
        self.slot(table, PageTableIndex::new_truncate(index as u16))
    }

    /// The entry for `addr` in the table at `level`, creating missing tables
    /// above it with `alloc` if given.
    fn walk(
        &self,
        addr: VirtAddr,
        level: PageTableLevel,
        mut alloc: Option<&mut dyn TableAlloc>,
    ) -> Result<Slot, Error> {
        let mut table = self.root;
        for above in [
            PageTableLevel::Four,
            PageTableLevel::Three,
            PageTableLevel::Two,
        ] {
            let slot = self.slot(table, addr.page_table_index(above))?;
            if above == level {
                return Ok(slot);
            }
            let e = slot.load();
            let flags = e.flags();
            table = if !flags.contains(PageTableFlags::PRESENT) {
                let Some(alloc) = alloc.as_deref_mut() else {
                    return Err(Error::NotMapped(addr));
                };
                let new = alloc.alloc_table().ok_or(Error::OutOfTables(addr))?;
                self.zero_table(new)?;
                // The zeroes must be visible before the entry that makes the
                // table reachable by the MMU and other vCPUs.
                fence(Ordering::Release);
                let mut link = PageTableEntry::new();
                link.set_frame(new, TABLE_FLAGS);
                slot.store(link);
                new
            } else if flags.contains(PageTableFlags::HUGE_PAGE) {
                return Err(Error::HugePageInTheWay(addr));
            } else {
                PhysFrame::containing_address(e.addr())
            };
        }
        self.slot(table, addr.p1_index())
    }

    /// Entry `index` of the table in `frame`, checked for accessibility.
    fn slot(&self, frame: PhysFrame, index: PageTableIndex) -> Result<Slot, Error> {
        let table = self.table(frame)?;
        let i = usize::from(index);
        // SAFETY: `table` points at a whole accessible page table (checked by
        // `table`) and `i` < 512, so the entry is inside it.
        let ptr = unsafe { table.cast::<PageTableEntry>().add(i) };
        Ok(Slot {
            ptr,
            pa: frame.start_address() + i as u64 * ENTRY_BYTES,
        })
    }

    /// The whole table in `frame`, or `TableUnreachable` when the window does
    /// not cover it or would hand out a misaligned pointer.
    fn table(&self, frame: PhysFrame) -> Result<*mut PageTable, Error> {
        let pa = frame.start_address();
        let p = self
            .mem
            .ptr(pa, TABLE_BYTES)
            .ok_or(Error::TableUnreachable(pa))?;
        let table = p.cast::<PageTable>();
        if !table.is_aligned() {
            return Err(Error::TableUnreachable(pa));
        }
        Ok(table)
    }

    fn zero_table(&self, frame: PhysFrame) -> Result<(), Error> {
        let t = self.table(frame)?;
        // SAFETY: `table` checked the 4 KiB are accessible and aligned; the
        // `TableAlloc` contract makes the frame ours, and it is not linked
        // yet, so neither the MMU nor another vCPU reads it.
        unsafe { ptr::write_bytes(t, 0, 1) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::fake::FakeRam;
    use std::collections::hash_map::Entry;
    use std::collections::{HashMap, HashSet};

    const RAM_BASE: u64 = 0x10_0000;
    const RAM_LEN: usize = 4 << 20;
    /// Tables come from the first 2 MiB of fake RAM after the root frame.
    const TABLES_END: u64 = RAM_BASE + (2 << 20);
    /// Leaf targets are never touched, so they may lie anywhere.
    const FAR: u64 = 0x40_0000_0000;

    const W: PageTableFlags = PageTableFlags::WRITABLE;
    const P: PageTableFlags = PageTableFlags::PRESENT;
    const NX: PageTableFlags = PageTableFlags::NO_EXECUTE;

    /// Bumps through fake RAM; fails once `budget` tables are handed out.
    struct Bump {
        next: u64,
        end: u64,
        budget: usize,
        handed: usize,
    }

    impl Bump {
        fn new() -> Self {
            Bump {
                next: RAM_BASE + 4096,
                end: TABLES_END,
                budget: usize::MAX,
                handed: 0,
            }
        }
    }

    // SAFETY: each frame is handed out once, and the tests use that part of
    // the fake RAM for nothing but tables.
    unsafe impl TableAlloc for Bump {
        fn alloc_table(&mut self) -> Option<PhysFrame> {
            if self.handed >= self.budget || self.next >= self.end {
                return None;
            }
            let f = PhysFrame::containing_address(PhysAddr::new(self.next));
            self.next += 4096;
            self.handed += 1;
            Some(f)
        }
    }

    /// Fake RAM whose table region is filled with junk, so a table that
    /// is not zeroed before use shows up as stray mappings.
    fn ram() -> FakeRam {
        let ram = FakeRam::new(RAM_BASE, RAM_LEN);
        let junk = vec![0xa5u8; (TABLES_END - RAM_BASE - 4096) as usize];
        ram.write(RAM_BASE + 4096, &junk);
        ram
    }

    fn tables(ram: &FakeRam) -> PageTables<'_, FakeRam> {
        let root = PhysFrame::containing_address(PhysAddr::new(RAM_BASE));
        // SAFETY: the root frame of the fake RAM is zeroed and used only as
        // this PML4; other tables come from `Bump`.
        unsafe { PageTables::new(ram, root) }
    }

    fn page(va: u64) -> Page {
        Page::containing_address(VirtAddr::new(va))
    }
    fn frame(pa: u64) -> PhysFrame {
        PhysFrame::containing_address(PhysAddr::new(pa))
    }
    fn page2m(va: u64) -> Page<Size2MiB> {
        Page::from_start_address(VirtAddr::new(va)).expect("test uses aligned addresses")
    }
    fn frame2m(pa: u64) -> PhysFrame<Size2MiB> {
        PhysFrame::from_start_address(PhysAddr::new(pa)).expect("test uses aligned addresses")
    }
    fn tr(pt: &PageTables<'_, FakeRam>, va: u64) -> Result<Translation, Error> {
        pt.translate(VirtAddr::new(va))
    }

    /// Pages on both sides of every table boundary, plus the high half.
    const EDGES: [u64; 10] = [
        0x0,
        0x1f_f000,
        0x20_0000,
        0x3fff_f000,
        0x4000_0000,
        0x7f_ffff_f000,
        0x80_0000_0000,
        0xffff_8000_0000_0000,
        0xffff_8000_0000_1000,
        0xffff_ffff_ffff_f000,
    ];

    #[test]
    fn map_translate_unmap_4k_across_table_boundaries() {
        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump::new();
        for (i, &va) in EDGES.iter().enumerate() {
            let flags = if i % 2 == 0 {
                W | NX
            } else {
                PageTableFlags::GLOBAL
            };
            pt.map_4k(page(va), frame(FAR + i as u64 * 0x1000), flags, &mut a)
                .unwrap();
        }
        for (i, &va) in EDGES.iter().enumerate() {
            let flags = if i % 2 == 0 {
                W | NX
            } else {
                PageTableFlags::GLOBAL
            };
            let t = tr(&pt, va + 0x123).unwrap();
            assert_eq!(t.phys, PhysAddr::new(FAR + i as u64 * 0x1000 + 0x123));
            assert_eq!(t.flags, flags | P);
            assert_eq!(t.size, LeafSize::Page4KiB);
            // The neighbouring page shares the tables but is not mapped.
            let neighbour = va ^ 0x2000;
            if !EDGES.contains(&neighbour) {
                assert_eq!(
                    tr(&pt, neighbour),
                    Err(Error::NotMapped(VirtAddr::new(neighbour)))
                );
            }
        }
        for (i, &va) in EDGES.iter().enumerate() {
            let (f, flags) = pt.unmap_4k(page(va)).unwrap();
            assert_eq!(f, frame(FAR + i as u64 * 0x1000));
            assert!(flags.contains(P));
            assert_eq!(tr(&pt, va), Err(Error::NotMapped(VirtAddr::new(va))));
            assert_eq!(
                pt.unmap_4k(page(va)),
                Err(Error::NotMapped(VirtAddr::new(va)))
            );
        }
    }

    #[test]
    fn intermediate_entries_grant_and_leaves_restrict() {
        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump::new();
        pt.map_4k(page(0xffff_8000_0000_0000), frame(FAR), NX, &mut a)
            .unwrap();
        // PML4 index 256 holds exactly PRESENT | WRITABLE and the first table.
        let pml4e = ram.read_u64(PhysAddr::new(RAM_BASE + 256 * 8)).unwrap();
        assert_eq!(pml4e, (RAM_BASE + 4096) | (P | W).bits());
        assert_eq!(a.handed, 3);
        assert_eq!(tr(&pt, 0xffff_8000_0000_0000).unwrap().flags, P | NX);
    }

    #[test]
    fn map_translate_unmap_2m() {
        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump::new();
        let vas = [
            0x0,
            0x3fe0_0000,
            0x4000_0000,
            0xffff_8000_0000_0000,
            0xffff_ffff_ffe0_0000,
        ];
        for (i, &va) in vas.iter().enumerate() {
            let fa = FAR + i as u64 * 0x20_0000;
            pt.map_2m(page2m(va), frame2m(fa), W, &mut a).unwrap();
            let t = tr(&pt, va + 0x1f_fff8).unwrap();
            assert_eq!(t.phys, PhysAddr::new(fa + 0x1f_fff8));
            assert_eq!(t.flags, P | W);
            assert_eq!(t.size, LeafSize::Page2MiB);
        }
        // Passing HUGE_PAGE to map_2m is harmless: it is implied.
        pt.map_2m(
            page2m(0x20_0000),
            frame2m(FAR),
            PageTableFlags::HUGE_PAGE,
            &mut a,
        )
        .unwrap();
        assert_eq!(tr(&pt, 0x20_0000).unwrap().flags, P);
        for (i, &va) in vas.iter().enumerate() {
            let (f, flags) = pt.unmap_2m(page2m(va)).unwrap();
            assert_eq!(f, frame2m(FAR + i as u64 * 0x20_0000));
            assert_eq!(flags, P | W);
            assert_eq!(
                tr(&pt, va + 0x1000),
                Err(Error::NotMapped(VirtAddr::new(va + 0x1000)))
            );
        }
        assert_eq!(
            pt.unmap_2m(page2m(0x0)),
            Err(Error::NotMapped(VirtAddr::new(0)))
        );
    }

    #[test]
    fn pat_bit_of_a_huge_leaf_is_not_part_of_the_address() {
        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump::new();
        pt.map_2m(page2m(0), frame2m(FAR), W, &mut a).unwrap();
        // PML4[0] -> PDPT[0] -> PD[0] is the leaf; set bit 12 (PAT) in it.
        let pd = tr_entry_table(&ram, tr_entry_table(&ram, RAM_BASE, 0), 0);
        let leaf = ram.read_u64(PhysAddr::new(pd)).unwrap();
        ram.write(pd, &(leaf | 1 << 12).to_le_bytes());
        assert_eq!(tr(&pt, 0x1234).unwrap().phys, PhysAddr::new(FAR + 0x1234));
        assert_eq!(pt.unmap_2m(page2m(0)).unwrap().0, frame2m(FAR));
    }

    #[test]
    fn protect_4k_returns_old_flags_and_keeps_frame_and_dirty() {
        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump::new();
        let va = 0xffff_8000_0020_0000;
        pt.map_4k(page(va), frame(FAR), W | NX, &mut a).unwrap();
        assert_eq!(pt.protect_4k(page(va), NX).unwrap(), P | W | NX);
        let t = tr(&pt, va).unwrap();
        assert_eq!((t.phys, t.flags), (PhysAddr::new(FAR), P | NX));
        // Pretend the MMU set DIRTY: protect must not lose it.
        let e = pt.leaf_entry(page(va), None).unwrap();
        let mut v = pt.read_entry(e).unwrap();
        v.set_flags(v.flags() | PageTableFlags::DIRTY);
        pt.write_entry(e, v).unwrap();
        assert_eq!(
            pt.protect_4k(page(va), W).unwrap(),
            P | NX | PageTableFlags::DIRTY
        );
        assert_eq!(tr(&pt, va).unwrap().flags, P | W | PageTableFlags::DIRTY);
    }

    #[test]
    fn leaf_entry_is_what_translate_reads() {
        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump::new();
        let va = 0xffff_8000_1234_5000;
        let pg = page(va);
        assert_eq!(
            pt.leaf_entry(pg, None),
            Err(Error::NotMapped(VirtAddr::new(va)))
        );
        let e = pt.leaf_entry(pg, Some(&mut a)).unwrap();
        assert_eq!(a.handed, 3);
        // Inside the last table handed out, at the page's level-1 index.
        let pt_frame = a.next - 4096;
        assert_eq!(
            e.phys(),
            PhysAddr::new(pt_frame + u64::from(pg.p1_index()) * 8)
        );
        assert_eq!(pt.leaf_entry(pg, None), Ok(e));
        assert_eq!(tr(&pt, va), Err(Error::NotMapped(VirtAddr::new(va))));

        let value = pte_4k(frame(FAR), NX).unwrap();
        pt.write_entry(e, value.clone()).unwrap();
        assert_eq!(ram.read_u64(e.phys()), Some(FAR | (P | NX).bits()));
        assert_eq!(pt.read_entry(e).unwrap().flags(), P | NX);
        let t = tr(&pt, va + 8).unwrap();
        assert_eq!((t.phys, t.flags), (PhysAddr::new(FAR + 8), P | NX));
        assert_eq!(
            pt.map_4k(pg, frame(FAR), W, &mut a),
            Err(Error::AlreadyMapped(pg.start_address()))
        );

        pt.write_entry(e, PageTableEntry::new()).unwrap();
        assert_eq!(tr(&pt, va), Err(Error::NotMapped(VirtAddr::new(va))));
        assert_eq!(a.handed, 3);
    }

    #[test]
    fn out_of_tables_midway_writes_no_leaf_and_recovers() {
        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump {
            budget: 1,
            ..Bump::new()
        };
        let va = 0x7f_8000_0000;
        let err = pt.map_4k(page(va), frame(FAR), W, &mut a).unwrap_err();
        assert_eq!(err, Error::OutOfTables(VirtAddr::new(va)));
        assert!(err.to_string().contains("0x7f80000000"), "{err}");
        assert_eq!(tr(&pt, va), Err(Error::NotMapped(VirtAddr::new(va))));
        // The PDPT that was linked stays, valid and empty; its PD was never
        // allocated, so the walk stops there.
        assert_eq!(
            pt.leaf_entry(page(va), None),
            Err(Error::NotMapped(VirtAddr::new(va)))
        );
        assert_eq!(a.handed, 1);

        a.budget = usize::MAX;
        pt.map_4k(page(va), frame(FAR), W, &mut a).unwrap();
        assert_eq!(a.handed, 3, "only the two missing tables are allocated");
        assert_eq!(tr(&pt, va).unwrap().phys, PhysAddr::new(FAR));

        // The same holds for 2 MiB pages and for leaf_entry.
        let mut none = Bump {
            budget: 0,
            ..Bump::new()
        };
        let hi = 0xffff_8000_0000_0000;
        assert_eq!(
            pt.map_2m(page2m(hi), frame2m(FAR), W, &mut none),
            Err(Error::OutOfTables(VirtAddr::new(hi)))
        );
        assert_eq!(
            pt.leaf_entry(page(hi), Some(&mut none)),
            Err(Error::OutOfTables(VirtAddr::new(hi)))
        );
    }

    #[test]
    fn huge_pages_in_the_way() {
        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump::new();
        let va = 0x4000_0000;
        pt.map_2m(page2m(va), frame2m(FAR), W, &mut a).unwrap();
        let inside = va + 0x5000;
        let in_the_way = Error::HugePageInTheWay(VirtAddr::new(inside));
        assert_eq!(
            pt.map_4k(page(inside), frame(FAR), W, &mut a),
            Err(in_the_way)
        );
        assert_eq!(pt.unmap_4k(page(inside)), Err(in_the_way));
        assert_eq!(pt.protect_4k(page(inside), W), Err(in_the_way));
        assert_eq!(pt.leaf_entry(page(inside), Some(&mut a)), Err(in_the_way));
        assert_eq!(
            pt.map_2m(page2m(va), frame2m(FAR), W, &mut a),
            Err(Error::AlreadyMapped(VirtAddr::new(va)))
        );
        // The 2 MiB leaf is untouched by all that.
        assert_eq!(tr(&pt, inside).unwrap().phys, PhysAddr::new(FAR + 0x5000));

        // 4 KiB tables under a 2 MiB page, even once emptied, stay in the way.
        let small = 0x4020_0000;
        pt.map_4k(page(small), frame(FAR), W, &mut a).unwrap();
        pt.unmap_4k(page(small)).unwrap();
        let err = Error::HugePageInTheWay(VirtAddr::new(small));
        assert_eq!(pt.map_2m(page2m(small), frame2m(FAR), W, &mut a), Err(err));
        assert_eq!(pt.unmap_2m(page2m(small)), Err(err));

        // A 1 GiB leaf (as a boot loader might build) blocks both sizes.
        let gib = 0x80_0000_0000u64; // PML4 index 1, PDPT index 0
        pt.map_4k(page(gib + 0x4000_0000), frame(FAR), W, &mut a)
            .unwrap();
        let pdpt = tr_entry_table(&ram, RAM_BASE, 1);
        ram.write(
            pdpt,
            &(FAR | (P | W | PageTableFlags::HUGE_PAGE).bits()).to_le_bytes(),
        );
        let t = tr(&pt, gib + 0x1234_5678).unwrap();
        assert_eq!(
            (t.phys, t.flags, t.size),
            (PhysAddr::new(FAR + 0x1234_5678), P | W, LeafSize::Page1GiB)
        );
        let err = Error::HugePageInTheWay(VirtAddr::new(gib + 0x20_0000));
        assert_eq!(
            pt.map_4k(page(gib + 0x20_0000), frame(FAR), W, &mut a),
            Err(err)
        );
        assert_eq!(
            pt.map_2m(page2m(gib + 0x20_0000), frame2m(FAR), W, &mut a),
            Err(err)
        );
        assert!(err.to_string().contains("0x8000200000"), "{err}");
    }

    /// Physical address of entry 0 of the table that entry `index` of the
    /// table at `table` points to.
    fn tr_entry_table(ram: &FakeRam, table: u64, index: u64) -> u64 {
        ram.read_u64(PhysAddr::new(table + index * 8)).unwrap() & 0x000f_ffff_ffff_f000
    }

    #[test]
    fn bad_flags_are_refused_before_anything_changes() {
        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump::new();
        let huge = PageTableFlags::HUGE_PAGE;
        let user = PageTableFlags::USER_ACCESSIBLE;
        let addr_bit = PageTableFlags::from_bits_retain(1 << 12);
        assert_eq!(
            pt.map_4k(page(0x1000), frame(FAR), W | huge, &mut a),
            Err(Error::BadFlags(huge))
        );
        assert_eq!(
            pt.map_4k(page(0x1000), frame(FAR), user, &mut a),
            Err(Error::BadFlags(user))
        );
        assert_eq!(
            pt.map_2m(page2m(0), frame2m(FAR), addr_bit, &mut a),
            Err(Error::BadFlags(addr_bit))
        );
        assert_eq!(
            pte_4k(frame(FAR), user | W).map(|_| ()),
            Err(Error::BadFlags(user))
        );
        assert_eq!(a.handed, 0, "no table allocated for a refused request");
        pt.map_4k(page(0x1000), frame(FAR), W, &mut a).unwrap();
        assert_eq!(
            pt.protect_4k(page(0x1000), huge),
            Err(Error::BadFlags(huge))
        );
        assert_eq!(tr(&pt, 0x1000).unwrap().flags, P | W);
        let msg = Error::BadFlags(user).to_string();
        assert!(
            msg.contains("USER_ACCESSIBLE") && msg.contains("0x4"),
            "{msg}"
        );
    }

    #[test]
    fn unreachable_tables_are_errors() {
        let ram = ram();
        let mut a = Bump::new();
        // A root outside the window.
        let outside = 0x8000_0000u64;
        // SAFETY: the frame is not accessible at all, so nothing is written.
        let mut far = unsafe { PageTables::new(&ram, frame(outside)) };
        let err = Error::TableUnreachable(PhysAddr::new(outside));
        assert_eq!(far.translate(VirtAddr::new(0)), Err(err));
        assert_eq!(far.map_4k(page(0), frame(FAR), W, &mut a), Err(err));
        assert!(err.to_string().contains("0x80000000"), "{err}");

        // A PML4 entry that points outside the window.
        let mut pt = tables(&ram);
        ram.write(RAM_BASE + 3 * 8, &(outside | (P | W).bits()).to_le_bytes());
        let va = 3u64 << 39;
        assert_eq!(pt.map_4k(page(va), frame(FAR), W, &mut a), Err(err));
        assert_eq!(tr(&pt, va), Err(err));
        // A table just past the end of the window.
        let end = RAM_BASE + RAM_LEN as u64;
        ram.write(RAM_BASE + 4 * 8, &(end | (P | W).bits()).to_le_bytes());
        assert_eq!(
            tr(&pt, 4u64 << 39),
            Err(Error::TableUnreachable(PhysAddr::new(end)))
        );

        // An allocator that hands out a frame outside the window.
        let mut bad = Bump {
            next: outside,
            end: u64::MAX,
            budget: usize::MAX,
            handed: 0,
        };
        assert_eq!(pt.map_4k(page(0), frame(FAR), W, &mut bad), Err(err));
        assert_eq!(tr(&pt, 0), Err(Error::NotMapped(VirtAddr::new(0))));
    }

    #[test]
    fn upper_levels_restrict_effective_flags() {
        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump::new();
        pt.map_4k(page(0x1000), frame(FAR), W, &mut a).unwrap();
        assert_eq!(tr(&pt, 0x1000).unwrap().flags, P | W);
        // Clear WRITABLE and set NX in the PML4 entry, as foreign tables may.
        let pml4e = ram.read_u64(PhysAddr::new(RAM_BASE)).unwrap();
        ram.write(RAM_BASE, &((pml4e & !W.bits()) | NX.bits()).to_le_bytes());
        assert_eq!(tr(&pt, 0x1000).unwrap().flags, P | NX);
    }

    /// xorshift64 (Marsaglia 2003), enough to drive a reproducible model test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[derive(Default)]
    struct Model {
        small: HashMap<u64, (u64, PageTableFlags)>,
        huge: HashMap<u64, (u64, PageTableFlags)>,
        /// 2 MiB slots under which a 4 KiB table was ever created.
        has_table: HashSet<u64>,
    }

    impl Model {
        fn expect(&self, va: u64) -> Result<Translation, Error> {
            let slot = va & !0x1f_ffff;
            if let Some(&(fa, flags)) = self.huge.get(&slot) {
                let phys = PhysAddr::new(fa + (va - slot));
                return Ok(Translation {
                    phys,
                    flags: flags | P,
                    size: LeafSize::Page2MiB,
                });
            }
            match self.small.get(&(va & !0xfff)) {
                Some(&(fa, flags)) => {
                    let phys = PhysAddr::new(fa + (va & 0xfff));
                    Ok(Translation {
                        phys,
                        flags: flags | P,
                        size: LeafSize::Page4KiB,
                    })
                }
                None => Err(Error::NotMapped(VirtAddr::new(va))),
            }
        }
    }

    #[test]
    fn random_ops_match_a_model() {
        // Pages on both sides of 2 MiB, 1 GiB and 512 GiB boundaries, at the
        // bottom of the high half and at the very top, and inside four 2 MiB
        // slots that also take 2 MiB pages.
        let mut pages = Vec::new();
        for boundary in [0x20_0000u64, 0x4000_0000, 0x80_0000_0000] {
            pages.extend((0..48).map(|i| boundary - 24 * 0x1000 + i * 0x1000));
        }
        pages.extend((0..48).map(|i| 0xffff_8000_0000_0000 + i * 0x1000));
        pages.extend((0..48).map(|i| 0xffff_ffff_ffff_f000 - i * 0x1000));
        let slots: Vec<u64> = (0..4).map(|i| 0x1_0000_0000 + i * 0x20_0000).collect();
        for &s in &slots {
            pages.extend((0..8).map(|i| s + i * 0x1000));
            pages.extend((0..8).map(|i| s + 0x1f_f000 - i * 0x1000));
        }
        assert!(pages.len() > 300);

        let ram = ram();
        let mut pt = tables(&ram);
        let mut a = Bump::new();
        let mut m = Model::default();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let pick_flags = |rng: &mut Rng| {
            let choices = [
                W,
                NX,
                PageTableFlags::GLOBAL,
                PageTableFlags::NO_CACHE,
                PageTableFlags::BIT_9,
            ];
            let bits = rng.next();
            choices
                .iter()
                .enumerate()
                .filter(|(i, _)| bits >> i & 1 == 1)
                .fold(PageTableFlags::empty(), |f, (_, c)| f | *c)
        };
        let slot_of = |va: u64| va & !0x1f_ffff;
        let mut checked_huge_errors = 0;

        for op in 0..20_000 {
            let r = rng.below(100);
            let va = pages[rng.below(pages.len())];
            let pg = page(va);
            let v = VirtAddr::new(va);
            let huge_over = m.huge.contains_key(&slot_of(va));
            if r < 40 {
                let fa = (rng.next() % (1 << 30)) << 12;
                let flags = pick_flags(&mut rng);
                let want = if huge_over {
                    Err(Error::HugePageInTheWay(v))
                } else if let Entry::Vacant(e) = m.small.entry(va) {
                    e.insert((fa, flags));
                    m.has_table.insert(slot_of(va));
                    Ok(())
                } else {
                    Err(Error::AlreadyMapped(v))
                };
                checked_huge_errors += usize::from(want == Err(Error::HugePageInTheWay(v)));
                assert_eq!(
                    pt.map_4k(pg, frame(fa), flags, &mut a),
                    want,
                    "op {op}: map_4k {va:#x}"
                );
            } else if r < 65 {
                let want = if huge_over {
                    Err(Error::HugePageInTheWay(v))
                } else {
                    m.small
                        .remove(&va)
                        .map(|(fa, flags)| (frame(fa), flags | P))
                        .ok_or(Error::NotMapped(v))
                };
                assert_eq!(pt.unmap_4k(pg), want, "op {op}: unmap_4k {va:#x}");
            } else if r < 85 {
                let flags = pick_flags(&mut rng);
                let want = if huge_over {
                    Err(Error::HugePageInTheWay(v))
                } else {
                    match m.small.get_mut(&va) {
                        Some(entry) => Ok(std::mem::replace(&mut entry.1, flags) | P),
                        None => Err(Error::NotMapped(v)),
                    }
                };
                assert_eq!(
                    pt.protect_4k(pg, flags),
                    want,
                    "op {op}: protect_4k {va:#x}"
                );
            } else if r < 87 {
                // Refused flags change nothing.
                let huge = PageTableFlags::HUGE_PAGE;
                assert_eq!(
                    pt.map_4k(pg, frame(FAR), huge, &mut a),
                    Err(Error::BadFlags(huge))
                );
            } else {
                let s = slots[rng.below(slots.len())];
                let sv = VirtAddr::new(s);
                if r < 94 {
                    let fa = (rng.next() % (1 << 20)) << 21;
                    let flags = pick_flags(&mut rng);
                    let want = if m.huge.contains_key(&s) {
                        Err(Error::AlreadyMapped(sv))
                    } else if m.has_table.contains(&s) {
                        Err(Error::HugePageInTheWay(sv))
                    } else {
                        m.huge.insert(s, (fa, flags));
                        Ok(())
                    };
                    assert_eq!(
                        pt.map_2m(page2m(s), frame2m(fa), flags, &mut a),
                        want,
                        "op {op}: map_2m {s:#x}"
                    );
                } else {
                    let want = match m.huge.remove(&s) {
                        Some((fa, flags)) => Ok((frame2m(fa), flags | P)),
                        None if m.has_table.contains(&s) => Err(Error::HugePageInTheWay(sv)),
                        None => Err(Error::NotMapped(sv)),
                    };
                    assert_eq!(pt.unmap_2m(page2m(s)), want, "op {op}: unmap_2m {s:#x}");
                }
            }
            for &p in &pages {
                let probe = p + (op as u64 % 512) * 8;
                assert_eq!(
                    tr(&pt, probe),
                    m.expect(probe),
                    "op {op}: translate {probe:#x}"
                );
            }
        }
        assert!(
            m.small.len() > 50 && checked_huge_errors > 0,
            "the ops must reach interesting states"
        );
        assert!(
            a.handed < 64,
            "tables are reused, not reallocated: {}",
            a.handed
        );
    }
}
