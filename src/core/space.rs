//! The managed window of the single address space and its logical state:
//! the hardware-free core of the mm API.
//!
//! The mm API promises changes before the hardware sees them (they wait in
//! a vCPU's queue), so it keeps two views of every leaf page table in the
//! window:
//! - the hardware table, which the MMU walks and only a flush writes;
//! - its *twin*, a page of the same shape that holds the logical entries
//!   (what the API has promised), updated at once under the mm lock.
//!
//! Validation reads the twin, so a batch sees its own pending changes: a map
//! then an unmap of the same page in one batch is legal, two maps are not.
//! Intermediate tables (PDPT, PD, PT) are created and linked at once: a
//! not-present-to-present change of a non-leaf entry needs no invalidation.
//! They are never freed (KVM's MMU_OP had RELEASE_PT for that; a window this
//! size needs at most 64 MiB of them), and [`Space::table_pages`] counts them.
//!
//! Each twin entry also records which vCPU's queue holds a pending write for
//! the page (bits 52-58, index + 1), and the flush clears it. A page with a
//! change pending on another vCPU cannot be changed until that vCPU flushes
//! ([`Error::PendingOnCpu`]): taking it over would let the other vCPU's
//! older entries replay later, possibly onto a frame freed in between.
//!
//! Every operation validates all its pages before it changes anything, so a
//! failing call leaves no trace but the tables it created.

use crate::paging::{self, LeafEntry, PageTables, Pte, TableAlloc};
use crate::phys::PhysMemory;
use crate::queue::Applied;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::structures::paging::{Page, PageTableFlags as F, PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

/// Where the window starts: 16 TiB, PML4 slot 32, far from the identity map
/// below and the stacks at the top of the address space.
pub const WINDOW_BASE: u64 = 0x0000_1000_0000_0000;
/// 64 GiB of 4 KiB pages.
pub const WINDOW_SIZE: u64 = 64 << 30;
pub const WINDOW_PAGES: u64 = WINDOW_SIZE >> 12;
/// Leaf tables in the window (one per 2 MiB): the size of the twin directory.
pub const WINDOW_TABLES: usize = (WINDOW_SIZE >> 21) as usize;

/// PTE bit 9 (available to software): the frame was allocated by the mm
/// (`map_anon`) and goes back to the allocator when the page is unmapped.
pub const OWNED: F = F::BIT_9;
/// Frames lie below this (the x86_64 crate's `PhysAddr` guarantees it),
/// which leaves bits 52-58 of a twin entry for the pending mark.
pub const MAX_FRAME_ADDR: u64 = 1 << 52;
const PENDING_SHIFT: u32 = 52;
const PENDING_MASK: u64 = 0x7f << PENDING_SHIFT;

/// What a mapping allows. Readable always (x86 has no write-only pages);
/// writable and executable at once is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prot {
    pub write: bool,
    pub exec: bool,
}

impl Prot {
    pub const READ: Prot = Prot {
        write: false,
        exec: false,
    };
    pub const READ_WRITE: Prot = Prot {
        write: true,
        exec: false,
    };
    pub const READ_EXEC: Prot = Prot {
        write: false,
        exec: true,
    };

    fn flags(self) -> Result<F, Error> {
        if self.write && self.exec {
            return Err(Error::WriteAndExecute);
        }
        let mut f = F::PRESENT;
        if self.write {
            f |= F::WRITABLE;
        }
        if !self.exec {
            f |= F::NO_EXECUTE;
        }
        Ok(f)
    }

    pub fn from_flags(f: F) -> Prot {
        Prot {
            write: f.contains(F::WRITABLE),
            exec: !f.contains(F::NO_EXECUTE),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The address or the frame is not 4 KiB-aligned.
    Unaligned(u64),
    ZeroLength,
    /// `[addr, addr + pages * 4 KiB)` is not inside the window.
    OutsideWindow {
        addr: u64,
        pages: u64,
    },
    AlreadyMapped(VirtAddr),
    NotMapped(VirtAddr),
    WriteAndExecute,
    /// `map` was given RAM the frame allocator holds as free (mm.rs).
    BadFrame(PhysAddr),
    /// Fewer frames than pages (or more) were given to `map`.
    FrameCount {
        pages: u64,
        frames: u64,
    },
    OutOfFrames,
    OutOfTables,
    /// Another vCPU's queue holds an unflushed change to this page.
    PendingOnCpu {
        addr: VirtAddr,
        cpu: usize,
    },
    /// The page tables are not what the mm built (a bug, reported).
    Corrupt(paging::Error),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Unaligned(a) => write!(f, "{a:#x} is not 4 KiB-aligned"),
            Error::ZeroLength => write!(f, "length is zero"),
            Error::OutsideWindow { addr, pages } => write!(
                f,
                "{addr:#x} + {pages} pages is outside the mm window [{WINDOW_BASE:#x}, {:#x})",
                WINDOW_BASE + WINDOW_SIZE
            ),
            Error::AlreadyMapped(a) => write!(f, "{:#x} is already mapped", a.as_u64()),
            Error::NotMapped(a) => write!(f, "{:#x} is not mapped", a.as_u64()),
            Error::WriteAndExecute => {
                write!(f, "a mapping cannot be writable and executable at once")
            }
            Error::BadFrame(a) => write!(
                f,
                "frame {:#x} is free in the frame allocator: allocate it before mapping it",
                a.as_u64()
            ),
            Error::FrameCount { pages, frames } => {
                write!(f, "{frames} frames given for {pages} pages")
            }
            Error::OutOfFrames => write!(f, "out of physical frames"),
            Error::OutOfTables => write!(f, "out of frames for page tables"),
            Error::PendingOnCpu { addr, cpu } => {
                write!(
                    f,
                    "{:#x} has a change pending on cpu{cpu}, which must flush first",
                    addr.as_u64()
                )
            }
            Error::Corrupt(e) => write!(f, "page tables corrupt: {e}"),
        }
    }
}

/// Checks `[va, va + pages * 4 KiB)` against the window and returns its
/// first page.
pub fn check_range(va: VirtAddr, pages: u64) -> Result<Page, Error> {
    if !va.is_aligned(4096u64) {
        return Err(Error::Unaligned(va.as_u64()));
    }
    if pages == 0 {
        return Err(Error::ZeroLength);
    }
    let a = va.as_u64();
    let inside =
        a >= WINDOW_BASE && pages <= WINDOW_PAGES && a - WINDOW_BASE <= WINDOW_SIZE - pages * 4096;
    if !inside {
        return Err(Error::OutsideWindow { addr: a, pages });
    }
    Ok(Page::containing_address(va))
}

/// The leaf entry of a page in both views.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub hw: LeafEntry,
    twin: PhysAddr,
}

/// The window's page tables and twins.
pub struct Space<'m, M: PhysMemory> {
    mem: &'m M,
    root: PhysFrame,
    /// The window directory, one word per 2 MiB: the frame numbers of the
    /// leaf table (high half) and its twin (low half); 0 = none yet. Tables
    /// are never freed, so a word never goes stale, and finding a page's
    /// entries costs two loads instead of a four-level walk.
    twins: &'m [AtomicU64],
    table_pages: u64,
}

impl<'m, M: PhysMemory> Space<'m, M> {
    /// # Safety
    /// `root` must be the live top-level table of the address space, whose
    /// window slots only this `Space` changes; frames from the allocators
    /// passed in later must hold nothing else; `twins` must have
    /// [`WINDOW_TABLES`] zeroed slots used by nothing else.
    pub unsafe fn new(mem: &'m M, root: PhysFrame, twins: &'m [AtomicU64]) -> Self {
        assert_eq!(twins.len(), WINDOW_TABLES, "twin directory size");
        Space {
            mem,
            root,
            twins,
            table_pages: 0,
        }
    }

    /// Page-table and twin pages created for the window so far.
    pub fn table_pages(&self) -> u64 {
        self.table_pages
    }

    fn tables(&self) -> PageTables<'m, M> {
        // SAFETY: `new`'s contract: `root` is live and only we change the
        // window's part of it.
        unsafe { PageTables::new(self.mem, self.root) }
    }

    fn twin_index(page: Page) -> usize {
        ((page.start_address().as_u64() - WINDOW_BASE) >> 21) as usize
    }

    /// Finds (or, with `alloc`, creates) the leaf entry and twin entry of
    /// `page`. Without `alloc`, a missing table means "not mapped".
    pub fn slot(
        &mut self,
        page: Page,
        alloc: Option<&mut dyn TableAlloc>,
    ) -> Result<Option<Slot>, Error> {
        let idx = Self::twin_index(page);
        let mut word = self.twins[idx].load(Ordering::Acquire);
        if word == 0 {
            // Nothing was ever mapped in this 2 MiB: create its tables if asked.
            let Some(a) = alloc else { return Ok(None) };
            let mut counting = Counting { inner: a, made: 0 };
            let r = self.tables().leaf_entry(page, Some(&mut counting));
            self.table_pages += counting.made;
            let hw = r.map_err(|e| match e {
                paging::Error::OutOfTables(_) => Error::OutOfTables,
                e => Error::Corrupt(e),
            })?;
            let leaf = hw.phys().as_u64() & !0xfff;
            let frame = counting.inner.alloc_table().ok_or(Error::OutOfTables)?;
            let p = self
                .mem
                .ptr(frame.start_address(), 4096)
                .ok_or(Error::OutOfTables)?;
            // SAFETY: a fresh table frame (TableAlloc's contract), reachable for 4 KiB.
            unsafe { core::ptr::write_bytes(p, 0, 4096) };
            self.table_pages += 1;
            let (leaf_pfn, twin_pfn) = (leaf >> 12, frame.start_address().as_u64() >> 12);
            if leaf_pfn > u32::MAX as u64 || twin_pfn > u32::MAX as u64 {
                return Err(Error::OutOfTables); // beyond 16 TiB: cannot be recorded
            }
            word = leaf_pfn << 32 | twin_pfn;
            self.twins[idx].store(word, Ordering::Release);
        }
        let i = u64::from(u16::from(page.p1_index())) * 8;
        // SAFETY: the high half names a leaf table the walker created for
        // this window, which is never freed.
        let hw = unsafe { LeafEntry::from_phys(PhysAddr::new(((word >> 32) << 12) + i)) };
        let twin = PhysAddr::new(((word & 0xffff_ffff) << 12) + i);
        Ok(Some(Slot { hw, twin }))
    }

    fn twin_word(&self, slot: &Slot) -> &AtomicU64 {
        let p = self
            .mem
            .ptr(slot.twin, 8)
            .expect("twin frames are reachable: checked when created");
        // SAFETY: twin pages hold only AtomicU64 words, 8-byte aligned, and
        // live as long as the space.
        unsafe { &*(p as *const AtomicU64) }
    }

    /// The logical entry of `page` and the vCPU holding a change to it.
    pub fn logical(&mut self, page: Page) -> Result<(Pte, Option<usize>), Error> {
        match self.slot(page, None)? {
            None => Ok((Pte::EMPTY, None)),
            Some(s) => Ok(split(self.twin_word(&s).load(Ordering::Acquire))),
        }
    }

    fn logical_at(&self, s: &Slot) -> (Pte, Option<usize>) {
        split(self.twin_word(s).load(Ordering::Acquire))
    }

    /// Validates a map of `pages` pages at `start` by vCPU `me`: every page
    /// unmapped and free of other vCPUs' pending changes. Creates the tables
    /// it will need.
    pub fn check_unmapped(
        &mut self,
        start: Page,
        pages: u64,
        me: usize,
        alloc: &mut dyn TableAlloc,
    ) -> Result<(), Error> {
        for i in 0..pages {
            let page = start + i;
            let s = self
                .slot(page, Some(&mut *alloc))?
                .expect("slot exists once created");
            let (pte, owner) = self.logical_at(&s);
            if let Some(cpu) = owner.filter(|&c| c != me) {
                return Err(Error::PendingOnCpu {
                    addr: page.start_address(),
                    cpu,
                });
            }
            if pte.is_present() {
                return Err(Error::AlreadyMapped(page.start_address()));
            }
        }
        Ok(())
    }

    /// Validates an unmap or protect of `pages` pages at `start` by `me`:
    /// every page mapped and free of other vCPUs' pending changes.
    pub fn check_mapped(&mut self, start: Page, pages: u64, me: usize) -> Result<(), Error> {
        for i in 0..pages {
            let page = start + i;
            let (pte, owner) = self.logical(page)?;
            if let Some(cpu) = owner.filter(|&c| c != me) {
                return Err(Error::PendingOnCpu {
                    addr: page.start_address(),
                    cpu,
                });
            }
            if !pte.is_present() {
                return Err(Error::NotMapped(page.start_address()));
            }
        }
        Ok(())
    }

    /// Records `value` as the logical entry of `page`, pending on `me`, and
    /// returns the hardware entry the queue must write. The page must have
    /// passed a `check_*` in this same critical section, and its entry must
    /// be pushed before another page is set (a flush between the two would
    /// clear the mark while the entry is not queued; the ring flushes only
    /// right after a push, so set-then-push one page at a time is safe).
    pub fn set(&mut self, page: Page, value: Pte, me: usize) -> LeafEntry {
        let s = self
            .slot(page, None)
            .ok()
            .flatten()
            .expect("validated page has tables");
        self.twin_word(&s).store(
            value.bits() | ((me as u64 + 1) << PENDING_SHIFT),
            Ordering::Release,
        );
        s.hw
    }

    /// The flush's half of a deferred PTE write: stores `value` into the
    /// hardware entry. The page stays marked pending until
    /// [`Space::clear_pending`], which the flush calls once all its writes
    /// are in, so no other vCPU can change the page between two of them.
    pub fn apply(&mut self, hw: LeafEntry, value: Pte) -> Applied {
        let mut t = self.tables();
        let old = t
            .read_entry(hw)
            .map(|e| Pte::from_entry(&e))
            .unwrap_or(Pte::EMPTY);
        // Cannot fail: a LeafEntry always names a real entry, and tables are
        // never freed.
        let _ = t.write_entry(hw, value.to_entry());
        if old.is_present() {
            Applied::Replaced
        } else {
            Applied::Filled
        }
    }

    /// Clears `me`'s pending mark on `page` (a no-op if another vCPU's mark
    /// is there, which validation prevents).
    pub fn clear_pending(&mut self, page: Page, me: usize) {
        if let Ok(Some(s)) = self.slot(page, None) {
            let w = self.twin_word(&s);
            let cur = w.load(Ordering::Acquire);
            if split(cur).1 == Some(me) {
                w.store(cur & !PENDING_MASK, Ordering::Release);
            }
        }
    }

    /// True when the hardware entry of `page` is present: its map was
    /// applied and any unmap of it is still queued.
    pub fn hw_present(&mut self, page: Page) -> bool {
        match self.slot(page, None) {
            Ok(Some(s)) => self
                .tables()
                .read_entry(s.hw)
                .is_ok_and(|e| Pte::from_entry(&e).is_present()),
            _ => false,
        }
    }

    /// What the hardware tables say about `va` now.
    pub fn translate(&self, va: VirtAddr) -> Option<(PhysAddr, Prot, bool)> {
        let t = self.tables().translate(va).ok()?;
        Some((t.phys, Prot::from_flags(t.flags), t.flags.contains(OWNED)))
    }
}

/// Builds the PTE for a mapping; fails only for writable+executable. Every
/// frame fits: a `PhysAddr` is below [`MAX_FRAME_ADDR`] by construction.
pub fn pte(frame: PhysFrame<Size4KiB>, prot: Prot, owned: bool) -> Result<Pte, Error> {
    let mut flags = prot.flags()?;
    if owned {
        flags |= OWNED;
    }
    Ok(Pte::from_bits(
        frame.start_address().as_u64() | flags.bits(),
    ))
}

fn split(word: u64) -> (Pte, Option<usize>) {
    let owner = ((word & PENDING_MASK) >> PENDING_SHIFT) as usize;
    (Pte::from_bits(word & !PENDING_MASK), owner.checked_sub(1))
}

/// Counts the tables the walker creates.
struct Counting<'a> {
    inner: &'a mut dyn TableAlloc,
    made: u64,
}

// SAFETY: forwards to an allocator that upholds the contract.
unsafe impl TableAlloc for Counting<'_> {
    fn alloc_table(&mut self) -> Option<PhysFrame> {
        let f = self.inner.alloc_table()?;
        self.made += 1;
        Some(f)
    }
}
