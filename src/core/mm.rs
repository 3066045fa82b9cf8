//! The mm core: map, map_anon, unmap, protect, translate and flush over the
//! managed window, batched through each vCPU's [`Queue`]. The kernel
//! (`src/mm.rs`) keeps only the statics, the per-CPU handle and the real
//! [`Mmu`]; the host tests drive this same code against fake RAM and
//! simulated TLBs.
//!
//! # How a change is made
//! Entries are written in place, as native Linux writes PTEs inside
//! `arch_enter_lazy_mmu_mode`: a map stores the present entry at once (x86
//! caches no translation of a not-present entry, Intel SDM vol. 3,
//! 4.10.2.3, so the first touch needs no flush), an unmap clears it, a
//! protect rewrites it. What the queue defers is what a trapping host
//! charges for: the invalidation of replaced entries, the shootdown round,
//! and the release of frames, which must wait for both.
//!
//! An unmapped entry keeps a *mark* in the bits the MMU ignores in a
//! not-present entry: the vCPU whose flush will invalidate the old
//! translation and, for a frame the mm owns, that frame. A mark is live
//! until its vCPU's flush has shot the page down everywhere. A map that
//! meets a live mark takes it over (the mark now names this vCPU) and
//! flushes first ([`Trigger::Remap`]): otherwise the new mapping could be
//! reached through the old translation, cached somewhere. The frame a mark
//! names is released by whichever vCPU's flush retires the mark, once.
//! This replaces a per-page "pending on cpuN" refusal: no vCPU ever waits
//! for another to flush.
//!
//! # Guarantees
//! - **Visibility.** After [`Mm::flush`] returns, or a lazy-mode scope
//!   ends, every vCPU sees every change this vCPU made before it. A map is
//!   visible at once. An unmap or protect is not: until the flush, a stale
//!   translation may still reach the page on any vCPU.
//! - **Frames.** A frame that `unmap` releases stays allocated until the
//!   flush that makes it unreachable has shot down every other vCPU's TLB
//!   (the `mmu_gather` rule).
//! - **Errors.** Every call checks all its pages before it changes any and
//!   returns an [`Error`] naming the problem; a failed call leaves the
//!   mappings as they were. We validate up front rather than report
//!   per-entry results (Xen's multicall style) so a caller never undoes
//!   half a batch.
//! - **Locking.** Each 2 MiB leaf table has its own lock (Linux's split
//!   page-table locks); a call takes the locks of the tables it touches, in
//!   address order, for its validation and stores only. No lock is held
//!   while a flush waits for shootdown acknowledgements, so calls on
//!   different tables never wait for each other.
//!
//! # Limits, by choice
//! - An unmap stores its mark over the entry without reading back the
//!   ACCESSED and DIRTY bits the MMU may set meanwhile: nothing in this
//!   kernel writes pages back, so they carry no information here (Linux's
//!   `ptep_get_and_clear` keeps them for writeback). A protect keeps them.
//! - A mark's flush generation has 40 bits: after 2^40 flushes by one vCPU
//!   an old, dead mark can look live again, which costs one needless
//!   take-over flush and nothing else (a live mark never looks dead: only
//!   its own vCPU's flush advances its generation).
//! - The fault hook flushes this vCPU's queue from #PF context when the
//!   fault is explained by a pending change; CR writes deferred in CPU lazy
//!   mode are then applied there too (a flush is an action, allowed at any
//!   point).
//!
//! # Costs, counted under icount (1 vCPU, batch 256, per operation)
//! The design goal is that the queue costs less than what it saves. On
//! 2026-12-02 (after the flush stopped zeroing a 2 KiB buffer), in guest
//! instructions:
//!
//! | figure | batched | immediate | floor | budget (batched) |
//! |---|---:|---:|---:|---:|
//! | map_unmap, one call per page | 370 | 514 | 23 | 150 |
//! | map_unmap_range, one call per batch | 61 | | 23 | 80 |
//! | protect, one call per page | 178 | 317 | 15 | 80 |
//! | protect_range, one call per batch | 25 | | 15 | 40 |
//!
//! A range call meets its budget; a per-page call does not, by 2.2x to
//! 2.5x. A guest profile of per-page map_unmap finds no part that
//! dominates: each call pays its entry (the per-CPU handle, the queue
//! borrow, the window), the argument checks, the leaf table's lock, the
//! entry's checks and store with its out-of-sync bookkeeping, and the
//! enqueue, each a few to about fifteen instructions, and no source line
//! above 16 per operation. Meeting 150 needs fewer steps per call (an
//! entry paid once per batch, say), not a faster step. Immediate's flush
//! costs about 144 instructions besides its `invlpg` (the ring walk, the
//! invalidation, the shootdown's target check, the counters and the
//! generation), against a goal of 100.

use crate::paging::{self, PageTables, Pte, TableAlloc};
use crate::phys::PhysMemory;
use crate::queue::{Applied, Cr, Drain, Entry, Invalidation, Queue, Trigger};
use crate::sync::SpinLock;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use x86_64::structures::paging::{Page, PageTableFlags as F, PhysFrame, Size2MiB, Size4KiB};

mod large;
use x86_64::{PhysAddr, VirtAddr};

/// Where the window starts: 16 TiB, PML4 slot 32, far from the identity map
/// below and the stacks at the top of the address space.
pub const WINDOW_BASE: u64 = 0x0000_1000_0000_0000;
/// 64 GiB of 4 KiB pages.
pub const WINDOW_SIZE: u64 = 64 << 30;
pub const WINDOW_PAGES: u64 = WINDOW_SIZE >> 12;
/// Leaf tables in the window (one per 2 MiB): the number of [`TableSlot`]s.
pub const WINDOW_TABLES: usize = (WINDOW_SIZE >> 21) as usize;
/// vCPUs the marks can name (7 bits).
pub const MAX_CPUS: usize = 64;

/// PTE bit 9 (available to software): the frame was allocated by the mm
/// (`map_anon`) and goes back to the allocator when the page is unmapped.
pub const OWNED: F = F::BIT_9;

// A mark, in a not-present entry (the MMU ignores every bit but P there):
// bit 10 says it is a mark; bit 11 that bits 12-51 name a frame to release;
// otherwise bits 12-51 hold the generation of the vCPU's flush that retires
// it. Bits 52-58 name the vCPU.
const MARK: u64 = 1 << 10;
const RELEASE: u64 = 1 << 11;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const GEN_SHIFT: u32 = 12;
const GEN_MASK: u64 = (1 << 40) - 1;
const CPU_SHIFT: u32 = 52;
const CPU_MASK: u64 = 0x7f;
const PRESENT: u64 = F::PRESENT.bits();
/// A 2 MiB entry's frame: bits 21-51 (bit 12 would be PAT, unused here).
const ADDR_MASK_2M: u64 = 0x000f_ffff_ffe0_0000;
const _: () = assert!(MAX_CPUS as u64 <= CPU_MASK + 1);

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

    /// The leaf flags of a mapping with this protection.
    pub fn flags(self) -> Result<F, Error> {
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
    /// The address is not 4 KiB-aligned.
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
    OutOfFrames,
    OutOfTables,
    /// The page tables are not what the mm built (a bug, reported).
    Corrupt(paging::Error),
    /// A 2 MiB call's address or frame is not 2 MiB-aligned.
    Unaligned2M(u64),
    /// The 2 MiB of the window at `addr` holds pages of size `here`, and
    /// the call is for the other size: a 4 KiB call inside a 2 MiB mapping
    /// (which would split it), a 2 MiB call where 4 KiB tables exist, or a
    /// range that mixes the two.
    WrongPageSize {
        addr: VirtAddr,
        here: PageSize,
    },
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
            Error::OutOfFrames => write!(f, "out of physical frames"),
            Error::OutOfTables => write!(f, "out of frames for page tables"),
            Error::Corrupt(e) => write!(f, "page tables corrupt: {e}"),
            Error::Unaligned2M(a) => write!(f, "{a:#x} is not 2 MiB-aligned"),
            Error::WrongPageSize { addr, here } => write!(
                f,
                "{:#x}: this 2 MiB of the window holds {} pages, and the call is for {} pages \
                 (a slot keeps the page size of its first mapping; 2 MiB mappings are not split)",
                addr.as_u64(),
                here.name(),
                here.other().name()
            ),
        }
    }
}

/// The two page sizes the window maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB, in a leaf table.
    Small,
    /// 2 MiB, one page-directory entry.
    Large,
}

impl PageSize {
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Small => 4096,
            PageSize::Large => 2 << 20,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PageSize::Small => "4 KiB",
            PageSize::Large => "2 MiB",
        }
    }

    fn other(self) -> PageSize {
        match self {
            PageSize::Small => PageSize::Large,
            PageSize::Large => PageSize::Small,
        }
    }
}

/// Builds the PTE for a mapping; fails only for writable+executable.
pub fn pte(frame: PhysFrame<Size4KiB>, prot: Prot, owned: bool) -> Result<Pte, Error> {
    let mut flags = prot.flags()?;
    if owned {
        flags |= OWNED;
    }
    Ok(Pte::from_bits(
        frame.start_address().as_u64() | flags.bits(),
    ))
}

/// The privileged operations of a flush, as the machine runs them.
///
/// # Preconditions
/// The mm calls these with no page-table lock held, from the vCPU whose
/// queue is flushing; the PTE stores they make visible are already in
/// memory. [`Mmu::shootdown`] must not return before every vCPU that may
/// cache a window translation has run the invalidation: the releases that
/// follow it rely on that.
pub trait Mmu {
    fn invlpg(&mut self, page: Page);
    /// A full flush of this vCPU's non-global translations (a CR3 reload).
    fn flush_all(&mut self);
    /// Repeats `inv` on the other vCPUs that may cache window translations
    /// and waits for them; returns the IPIs sent.
    fn shootdown(&mut self, inv: &Invalidation) -> u32;
    fn write_cr(&mut self, reg: Cr, value: u64);
}

/// Where the mm's frames come from: page tables, and the zeroed frames of
/// `map_anon`.
///
/// # Safety
/// Every frame handed out must be unused by anything else until it is
/// freed back, and reachable through the window's [`PhysMemory`].
pub unsafe trait Frames: TableAlloc {
    fn alloc_zeroed(&mut self) -> Option<PhysFrame>;
    fn free(&mut self, frame: PhysFrame);
    /// 512 contiguous zeroed frames, 2 MiB-aligned.
    fn alloc_zeroed_2m(&mut self) -> Option<PhysFrame<Size2MiB>>;
    fn free_2m(&mut self, frame: PhysFrame<Size2MiB>);
    /// An allocation failed even after this vCPU's own flush: get back the
    /// frames other vCPUs hold for release (the kernel asks them to flush).
    /// True if something may have come back and a retry is worth it.
    fn reclaim(&mut self) -> bool {
        false
    }
}

/// What [`Mm::translate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub phys: PhysAddr,
    pub prot: Prot,
    /// The frame belongs to the mapping (map_anon).
    pub owned: bool,
    pub size: PageSize,
}

/// One leaf table: 512 entries, read and written as atomics because the
/// MMU reads them (and sets A/D bits) concurrently.
type Table = [AtomicU64; 512];

/// Tags a [`TableSlot`] word that points at a page-directory entry.
const SLOT_LARGE: u64 = 1;

/// Per 2 MiB of the window: where its leaf table is, its lock, and when it
/// was last written. 16 bytes, so the three travel in one cache line.
#[repr(C, align(16))]
pub struct TableSlot {
    /// A pointer to the leaf table (bit 0 clear), or to the page-directory
    /// entry that maps this 2 MiB as one large page (bit 0 set); 0 while
    /// neither exists. Tables are never freed, so a published word never
    /// goes stale, and a slot keeps the page size of its first mapping.
    table: AtomicU64,
    /// 0 when free, else the holder's index + 1.
    lock: AtomicU32,
    /// The sync epoch of the table's last write (low 32 bits), for
    /// [`crate::queue::Counters::tables_unsynced`].
    stamp: AtomicU32,
}

impl TableSlot {
    pub const fn new() -> Self {
        TableSlot {
            table: AtomicU64::new(0),
            lock: AtomicU32::new(0),
            stamp: AtomicU32::new(0),
        }
    }
}

impl TableSlot {
    #[inline]
    fn table(&self) -> Option<&Table> {
        let p = self.table.load(Ordering::Acquire);
        // SAFETY: a non-zero word with bit 0 clear is a pointer to a leaf
        // table that `make_tables` created and published (Release, paired
        // with the Acquire above); tables live as long as the window
        // (`Window::new`'s contract) and hold only 8-byte entries, valid as
        // AtomicU64.
        (p != 0 && p & SLOT_LARGE == 0).then(|| unsafe { &*(p as *const Table) })
    }

    /// The page-directory entry of a slot that holds a 2 MiB page.
    #[inline]
    fn large(&self) -> Option<&AtomicU64> {
        let p = self.table.load(Ordering::Acquire);
        // SAFETY: bit 0 set: `make_large` published the address of this
        // 2 MiB's page-directory entry, in a table that lives as long as
        // the window; an aligned 8-byte entry, valid as AtomicU64.
        (p & SLOT_LARGE != 0).then(|| unsafe { &*((p & !SLOT_LARGE) as *const AtomicU64) })
    }

    /// The page size the slot holds, once something made it one.
    #[inline]
    fn size(&self) -> Option<PageSize> {
        match self.table.load(Ordering::Acquire) {
            0 => None,
            p if p & SLOT_LARGE != 0 => Some(PageSize::Large),
            _ => Some(PageSize::Small),
        }
    }

    /// Takes this table's lock for vCPU `me`. A vCPU that already holds it
    /// is a bug that would spin forever, so it panics naming the table.
    #[inline]
    fn lock(&self, me: usize) {
        let tag = me as u32 + 1;
        while let Err(holder) =
            self.lock
                .compare_exchange_weak(0, tag, Ordering::Acquire, Ordering::Relaxed)
        {
            if holder == tag {
                self.self_deadlock(me);
            }
            core::hint::spin_loop();
        }
    }

    #[cold]
    fn self_deadlock(&self, me: usize) -> ! {
        panic!(
            "cpu{me} takes the lock of window table {:#x}, which it already holds",
            self as *const TableSlot as usize
        );
    }

    #[inline]
    fn unlock(&self) {
        self.lock.store(0, Ordering::Release);
    }

    /// Takes the lock as vCPU `me` would, for the test that a second take
    /// is caught.
    #[cfg(test)]
    pub(crate) fn lock_for_test(&self, me: usize) {
        self.lock(me);
    }

    /// 1 if this is the table's first write since full flush `epoch`.
    #[inline]
    fn note_write(&self, epoch: u32) -> u64 {
        if self.stamp.load(Ordering::Relaxed) == epoch {
            return 0;
        }
        self.stamp.store(epoch, Ordering::Relaxed);
        1
    }
}

impl Default for TableSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// A run of window pages, as page numbers from [`WINDOW_BASE`]: integer
/// arithmetic, so the hot loops never build and re-check addresses.
#[derive(Debug, Clone, Copy)]
struct Run {
    first: u64,
    count: u64,
}

impl Run {
    #[inline]
    fn of(va: VirtAddr, pages: u64) -> Result<Run, Error> {
        let a = va.as_u64();
        if a & 0xfff != 0 {
            return Err(Error::Unaligned(a));
        }
        if pages == 0 {
            return Err(Error::ZeroLength);
        }
        let inside = a >= WINDOW_BASE
            && pages <= WINDOW_PAGES
            && a - WINDOW_BASE <= WINDOW_SIZE - pages * 4096;
        if !inside {
            return Err(Error::OutsideWindow { addr: a, pages });
        }
        Ok(Run {
            first: (a - WINDOW_BASE) >> 12,
            count: pages,
        })
    }

    /// The first and one past the last leaf table the run touches.
    fn tables(self) -> (usize, usize) {
        (
            (self.first >> 9) as usize,
            ((self.first + self.count - 1) >> 9) as usize + 1,
        )
    }

    /// The run's pages table by table: `(table, lo, hi)`, entries `lo..hi`.
    fn chunks(self) -> Chunks {
        Chunks {
            n: self.first,
            end: self.first + self.count,
        }
    }

    #[inline]
    fn start(self) -> Page {
        page_at(self.first)
    }
}

/// See [`Run::chunks`].
struct Chunks {
    n: u64,
    end: u64,
}

impl Iterator for Chunks {
    type Item = (usize, usize, usize);

    #[inline]
    fn next(&mut self) -> Option<(usize, usize, usize)> {
        if self.n >= self.end {
            return None;
        }
        let lo = (self.n & 511) as usize;
        let hi = 512.min(lo as u64 + (self.end - self.n)) as usize;
        let t = (self.n >> 9) as usize;
        self.n += (hi - lo) as u64;
        Some((t, lo, hi))
    }
}

/// Page number `n` of the window. Window addresses are canonical (below
/// 2^47), so the cheap constructor is exact.
fn page_at(n: u64) -> Page {
    Page::containing_address(va_at(n))
}

fn va_at(n: u64) -> VirtAddr {
    VirtAddr::new_truncate(WINDOW_BASE + (n << 12))
}

/// The window's shared state: its page tables, the per-table slots that
/// find a page's leaf table without a walk, and each vCPU's flush
/// generation.
pub struct Window<'m, M: PhysMemory> {
    mem: &'m M,
    root: PhysFrame,
    slots: &'m [TableSlot],
    /// Per vCPU: the number of its flushes that completed. Its marks carry
    /// the next one.
    flushed: &'m [AtomicU64],
    /// Full flushes anywhere (a shadow-paging host resyncs its tables then).
    sync_epoch: AtomicU32,
    /// Serialises the creation of tables; holds the count made.
    grow: SpinLock<u64>,
}

impl<'m, M: PhysMemory> Window<'m, M> {
    /// # Safety
    /// `root` must be the live top-level table of the address space, whose
    /// window slots only this `Window` changes; pointers that `mem` returns
    /// for page-table frames must stay valid for `'m`; `slots` (sized
    /// [`WINDOW_TABLES`]) and `flushed` (sized [`MAX_CPUS`]) must be zeroed
    /// and used by nothing else.
    pub unsafe fn new(
        mem: &'m M,
        root: PhysFrame,
        slots: &'m [TableSlot],
        flushed: &'m [AtomicU64],
    ) -> Self {
        assert_eq!(slots.len(), WINDOW_TABLES, "table slot array size");
        assert_eq!(flushed.len(), MAX_CPUS, "generation array size");
        Window {
            mem,
            root,
            slots,
            flushed,
            sync_epoch: AtomicU32::new(1),
            grow: SpinLock::new(0),
        }
    }

    /// Page-table pages created for the window so far.
    pub fn table_pages(&self) -> u64 {
        *self.grow.lock()
    }

    #[inline]
    fn table(&self, t: usize) -> Option<&Table> {
        self.slots[t].table()
    }

    /// The entry of page number `n`, or `None` while it has no table.
    fn entry(&self, n: u64) -> Option<&AtomicU64> {
        self.table((n >> 9) as usize)
            .map(|t| &t[(n & 511) as usize])
    }

    /// The first slot of `first..end` without a leaf table (none made yet,
    /// or one holding a 2 MiB page).
    #[inline]
    fn missing_table(&self, first: usize, end: usize) -> Option<usize> {
        (first..end).find(|&t| self.slots[t].table().is_none())
    }

    /// `WrongPageSize` for slot `t` of a 4 KiB run, naming the run's first
    /// page in it.
    fn large_in_the_way(run: Run, t: usize) -> Error {
        Error::WrongPageSize {
            addr: va_at(run.first.max((t as u64) << 9)),
            here: PageSize::Large,
        }
    }

    /// Creates the leaf tables the run needs.
    #[inline]
    fn ensure_tables(&self, run: Run, alloc: &mut dyn TableAlloc) -> Result<(), Error> {
        let (first, end) = run.tables();
        match self.missing_table(first, end) {
            None => Ok(()),
            Some(from) => self.make_tables(run, from, end, alloc),
        }
    }

    #[cold]
    fn make_tables(
        &self,
        run: Run,
        from: usize,
        end: usize,
        alloc: &mut dyn TableAlloc,
    ) -> Result<(), Error> {
        let mut made = self.grow.lock();
        for t in from..end {
            match self.slots[t].size() {
                Some(PageSize::Small) => continue, // made meanwhile, maybe elsewhere
                Some(PageSize::Large) => return Err(Self::large_in_the_way(run, t)),
                None => {}
            }
            let page = page_at((t as u64) << 9);
            let mut counting = Counting {
                inner: &mut *alloc,
                made: 0,
            };
            // SAFETY: `new`'s contract: `root` is live and only this window
            // changes the window's part of it; `grow` serialises the changes.
            let mut tables = unsafe { PageTables::new(self.mem, self.root) };
            let r = tables.leaf_entry(page, Some(&mut counting));
            *made += counting.made;
            let leaf = r.map_err(|e| match e {
                paging::Error::OutOfTables(_) => Error::OutOfTables,
                e => Error::Corrupt(e),
            })?;
            let table_pa = PhysAddr::new(leaf.phys().as_u64() & !0xfff);
            let p = self
                .mem
                .ptr(table_pa, 4096)
                .ok_or(Error::Corrupt(paging::Error::TableUnreachable(table_pa)))?;
            self.slots[t].table.store(p as u64, Ordering::Release);
        }
        Ok(())
    }

    /// Locks the leaf tables `first..end`, in address order (so two
    /// vCPUs locking overlapping runs cannot deadlock).
    #[inline]
    fn lock(&self, first: usize, end: usize, me: usize) {
        for slot in &self.slots[first..end] {
            slot.lock(me);
        }
    }

    #[inline]
    fn unlock(&self, first: usize, end: usize) {
        for slot in &self.slots[first..end] {
            slot.unlock();
        }
    }

    /// Counts the tables `first..end` written for the first time since
    /// the last full flush: on a shadow-paging host with out-of-sync
    /// tables, those writes fault and the later ones are plain stores.
    /// (An estimate: two vCPUs writing one table at once may both count.)
    #[inline]
    fn note_writes(&self, first: usize, end: usize) -> u64 {
        let epoch = self.sync_epoch.load(Ordering::Relaxed);
        self.slots[first..end]
            .iter()
            .map(|slot| slot.note_write(epoch))
            .sum()
    }

    /// The vCPU a mark belongs to, if the mark is still live: its vCPU has
    /// not finished the flush that invalidates the old translation.
    fn live_mark(&self, e: u64) -> Option<usize> {
        if e & MARK == 0 {
            return None;
        }
        let cpu = ((e >> CPU_SHIFT) & CPU_MASK) as usize;
        if e & RELEASE != 0 {
            // Cleared by the flush that releases the frame.
            return Some(cpu);
        }
        let gen = (e >> GEN_SHIFT) & GEN_MASK;
        let open = (self.flushed[cpu].load(Ordering::Acquire) + 1) & GEN_MASK;
        (gen == open).then_some(cpu)
    }

    /// Calls `f(n, entries)` for the run's entries, one slice per leaf
    /// table in address order (`n`: the page number of the slice's first
    /// entry), stopping at the first error. The tables must exist. A run
    /// inside one table (nearly every call) is one slice, found with a few
    /// instructions.
    #[inline(always)]
    fn each<E>(
        &self,
        run: Run,
        mut f: impl FnMut(u64, &[AtomicU64]) -> Result<(), E>,
    ) -> Result<(), E> {
        let lo = (run.first & 511) as usize;
        if lo as u64 + run.count <= 512 {
            let table = self
                .table((run.first >> 9) as usize)
                .expect("the run's tables exist");
            return f(run.first, &table[lo..lo + run.count as usize]);
        }
        for (t, lo, hi) in run.chunks() {
            let table = self.table(t).expect("the run's tables exist");
            f(((t as u64) << 9) + lo as u64, &table[lo..hi])?;
        }
        Ok(())
    }

    /// What the tables say about `va` now.
    pub fn translate(&self, va: VirtAddr) -> Option<Translation> {
        let a = va.as_u64();
        if !(WINDOW_BASE..WINDOW_BASE + WINDOW_SIZE).contains(&a) {
            return None;
        }
        let slot = &self.slots[((a - WINDOW_BASE) >> 21) as usize];
        let (e, offset_mask, addr_mask) = match slot.large() {
            Some(pde) => (pde.load(Ordering::Acquire), (2u64 << 20) - 1, ADDR_MASK_2M),
            None => (
                self.entry((a - WINDOW_BASE) >> 12)?.load(Ordering::Acquire),
                0xfff,
                ADDR_MASK,
            ),
        };
        if e & PRESENT == 0 {
            return None;
        }
        let flags = F::from_bits_truncate(e);
        Some(Translation {
            phys: PhysAddr::new((e & addr_mask) + (a & offset_mask)),
            prot: Prot::from_flags(flags),
            owned: flags.contains(OWNED),
            size: if slot.large().is_some() {
                PageSize::Large
            } else {
                PageSize::Small
            },
        })
    }

    /// A pointer to the hardware entry of the page at `va`, for the
    /// benchmark's floor: the bare store any implementation pays. `None`
    /// while the page has no table.
    ///
    /// # Safety
    /// Stores through it bypass the mm: the caller must leave the entry
    /// as the mm left it (or empty) before any other mm call touches the
    /// page.
    pub unsafe fn raw_entry(&self, va: VirtAddr) -> Option<*const AtomicU64> {
        let a = va.as_u64();
        if !(WINDOW_BASE..WINDOW_BASE + WINDOW_SIZE).contains(&a) {
            return None;
        }
        self.entry((a - WINDOW_BASE) >> 12)
            .map(|e| e as *const AtomicU64)
    }
}

/// One call's view: the shared window, this vCPU's queue, and the machine.
pub struct Mm<'a, 'm, M: PhysMemory, Fr: Frames, U: Mmu> {
    pub window: &'a Window<'m, M>,
    pub queue: &'a mut Queue,
    /// This vCPU's index (what marks and locks record).
    pub me: usize,
    pub frames: &'a mut Fr,
    pub mmu: &'a mut U,
}

impl<'a, M: PhysMemory, Fr: Frames, U: Mmu> Mm<'a, '_, M, Fr, U> {
    fn open_gen(&self) -> u64 {
        self.window.flushed[self.me].load(Ordering::Relaxed) + 1
    }

    /// Flushes this vCPU's queue.
    pub fn flush(&mut self, trigger: Trigger) {
        if self.queue.is_empty() {
            return;
        }
        // Outside the Flusher, so that initialising the Flusher does not
        // zero the vector's 2 KiB buffer along with its counters (LLVM
        // merged them into one memset: 281 instructions per flush).
        let mut deferred = heapless::Vec::new();
        let mut d = Flusher {
            window: self.window,
            me: self.me,
            frames: &mut *self.frames,
            mmu: &mut *self.mmu,
            pte_writes: 0,
            tables_unsynced: 0,
            deferred: &mut deferred,
            released: 0,
        };
        self.queue.flush(trigger, &mut d);
        let (writes, unsynced, released) = (d.pte_writes, d.tables_unsynced, d.released);
        let c = self.queue.counters_mut();
        c.pte_writes += writes;
        c.tables_unsynced += unsynced;
        c.frames_released += released;
        // Every mark of this generation is retired: the invalidation ran
        // everywhere and its frames are back. Release pairs with the
        // Acquire in `live_mark`.
        self.window.flushed[self.me].fetch_add(1, Ordering::Release);
    }

    /// After a call's record is in and its locks are released. Every call
    /// pushes at most one record, and a full ring never outlives a call,
    /// so a call always finds room for its record.
    #[inline]
    fn settle(&mut self) {
        if self.queue.is_full() || (!self.queue.in_lazy_mmu() && !self.queue.is_empty()) {
            self.settle_now();
        }
    }

    #[cold]
    fn settle_now(&mut self) {
        if self.queue.is_full() {
            self.flush(Trigger::Full);
        } else {
            self.flush(Trigger::Unbatched);
        }
    }

    #[inline]
    fn count_writes(&mut self, pages: u64, first: usize, end: usize) {
        let unsynced = self.window.note_writes(first, end);
        let c = self.queue.counters_mut();
        c.pte_writes += pages;
        c.tables_unsynced += unsynced;
    }

    pub fn enter_lazy_mmu(&mut self) {
        self.queue.enter_lazy_mmu();
    }

    /// Leaves one level of MMU lazy mode; every leave flushes.
    pub fn leave_lazy_mmu(&mut self) -> Result<(), crate::queue::Error> {
        if !self.queue.in_lazy_mmu() {
            return Err(crate::queue::Error::NotInLazyMode("MMU"));
        }
        self.flush(Trigger::Leave);
        self.queue.exit_lazy_mmu()
    }

    pub fn enter_lazy_cpu(&mut self) {
        self.queue.enter_lazy_cpu();
    }

    /// Leaves one level of CPU lazy mode; every leave flushes.
    pub fn leave_lazy_cpu(&mut self) -> Result<(), crate::queue::Error> {
        if !self.queue.in_lazy_cpu() {
            return Err(crate::queue::Error::NotInLazyMode("CPU"));
        }
        self.flush(Trigger::Leave);
        self.queue.exit_lazy_cpu()
    }

    /// Writes a control register through the queue: deferred in CPU lazy
    /// mode (and coalesced with a pending write to the same register), else
    /// at once, after what is queued.
    pub fn write_cr(&mut self, reg: Cr, value: u64) {
        if self.queue.defer_cr(reg, value) {
            if self.queue.is_full() {
                self.flush(Trigger::Full);
            }
            return;
        }
        self.flush(Trigger::Unbatched);
        self.mmu.write_cr(reg, value);
        self.queue.counters_mut().cr_writes += 1;
    }

    /// The value this vCPU last wrote to `reg`, from the queue's cache;
    /// `read` runs once, the first time, to seed it.
    pub fn read_cr(&mut self, reg: Cr, read: impl FnOnce() -> u64) -> u64 {
        match self.queue.read_cr(reg) {
            Some(v) => v,
            None => {
                let v = read();
                self.queue.seed_cr(reg, v);
                v
            }
        }
    }

    /// Maps `frames` (the caller's: unmap does not free them) at `va`.
    ///
    /// # Safety
    /// The frames must be memory the caller owns for as long as they are
    /// mapped: not the kernel's image, not page tables, not frames the
    /// allocator holds as free or has handed to someone else. Mapping
    /// them writable lets any code write there.
    #[inline]
    pub unsafe fn map(
        &mut self,
        va: VirtAddr,
        frames: &[PhysFrame],
        prot: Prot,
    ) -> Result<(), Error> {
        let run = Run::of(va, frames.len() as u64)?;
        let flags = prot.flags()?.bits();
        if run.count == 1 {
            if let Some(r) = self.install_one(run.first, frames[0].start_address().as_u64() | flags)
            {
                return r;
            }
        }
        self.window.ensure_tables(run, &mut *self.frames)?;
        self.install(run, |i| frames[i as usize].start_address().as_u64() | flags)?;
        self.settle();
        Ok(())
    }

    /// The entry of page `n` with its table locked, for the one-page calls
    /// (nearly every call of page-by-page code): straight-line code, no
    /// runs. `None` while the page has no table.
    #[inline(always)]
    fn lock_one(&self, n: u64) -> Option<(&'a TableSlot, &'a AtomicU64)> {
        let w: &'a Window<'_, M> = self.window;
        let slot = &w.slots[(n >> 9) as usize];
        let table = slot.table()?;
        slot.lock(self.me);
        Some((slot, &table[(n & 511) as usize]))
    }

    /// Counts one page's store into `slot`'s table.
    #[inline(always)]
    fn count_one(&mut self, slot: &TableSlot) {
        let unsynced = slot.note_write(self.window.sync_epoch.load(Ordering::Relaxed));
        let c = self.queue.counters_mut();
        c.pte_writes += 1;
        c.tables_unsynced += unsynced;
    }

    /// One page's map, when its table exists and no live mark is in the
    /// way; `None` sends the caller down the general path.
    #[inline(always)]
    fn install_one(&mut self, n: u64, value: u64) -> Option<Result<(), Error>> {
        let (slot, entry) = self.lock_one(n)?;
        let e = entry.load(Ordering::Relaxed);
        if e & PRESENT != 0 {
            slot.unlock();
            return Some(Err(Error::AlreadyMapped(va_at(n))));
        }
        if e & MARK != 0 && self.window.live_mark(e).is_some() {
            slot.unlock();
            return None;
        }
        entry.store(value, Ordering::Release);
        self.count_one(slot);
        slot.unlock();
        self.settle();
        Some(Ok(()))
    }

    /// Maps `pages` fresh zeroed frames at `va`; unmap gives them back.
    #[inline]
    pub fn map_anon(&mut self, va: VirtAddr, pages: u64, prot: Prot) -> Result<(), Error> {
        let run = Run::of(va, pages)?;
        let flags = (prot.flags()? | OWNED).bits();
        if let Some(e) = self.window.entry(run.first).filter(|_| run.count == 1) {
            let e = e.load(Ordering::Relaxed);
            if e & PRESENT != 0 {
                return Err(Error::AlreadyMapped(va));
            }
        }
        // One page whose table exists and with no live mark in the way
        // (checked again under the lock): one frame, no chain.
        let one = run.count == 1
            && self.window.entry(run.first).is_some_and(|e| {
                let e = e.load(Ordering::Relaxed);
                e & MARK == 0 || self.window.live_mark(e).is_none()
            });
        if one {
            let frame = self.alloc_frame().ok_or(Error::OutOfFrames)?;
            match self.install_one(run.first, frame.start_address().as_u64() | flags) {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => {
                    self.frames.free(frame);
                    return Err(e);
                }
                // A live mark: the general path takes it over.
                None => self.frames.free(frame),
            }
        }
        // Refuse before taking frames when the answer is already known
        // (checked again under the locks).
        for i in 0..pages {
            if let Some(e) = self.window.entry(run.first + i) {
                if e.load(Ordering::Relaxed) & PRESENT != 0 {
                    return Err(Error::AlreadyMapped(va_at(run.first + i)));
                }
            }
        }
        // Tables first: empty tables are no change a caller can see, so a
        // later failure may leave them.
        self.window.ensure_tables(run, &mut *self.frames)?;
        // Take every frame before the first entry changes, so running out
        // leaves no trace. The fresh frames are chained through their own
        // first word (they are zeroed and ours), so no buffer bounds `pages`.
        let mut chain = FrameChain::new(self.window.mem);
        for _ in 0..pages {
            match self.alloc_frame() {
                Some(f) => chain.push(f),
                None => {
                    chain.free_all(&mut *self.frames);
                    return Err(Error::OutOfFrames);
                }
            }
        }
        let r = self.install(run, |_| {
            chain
                .pop()
                .expect("one frame per page")
                .start_address()
                .as_u64()
                | flags
        });
        if r.is_err() {
            chain.free_all(&mut *self.frames);
        }
        r?;
        self.settle();
        Ok(())
    }

    /// A zeroed frame; if none is free but this queue holds frames waiting
    /// for release, flush to release them and try again.
    fn alloc_frame(&mut self) -> Option<PhysFrame> {
        if let Some(f) = self.frames.alloc_zeroed() {
            return Some(f);
        }
        if self.queue.has_pending_releases() {
            self.flush(Trigger::Reuse);
            if let Some(f) = self.frames.alloc_zeroed() {
                return Some(f);
            }
        }
        if self.frames.reclaim() {
            return self.frames.alloc_zeroed();
        }
        None
    }

    /// Stores `value(i)` into the entries of the run's pages, which must
    /// all be unmapped: all or none. The tables exist. A live mark on any
    /// page is taken over and flushed first.
    #[inline(never)]
    fn install(&mut self, run: Run, mut value: impl FnMut(u64) -> u64) -> Result<(), Error> {
        let w = self.window;
        let (first, end) = run.tables();
        loop {
            w.lock(first, end, self.me);
            let mut live = false;
            let checked = w.each(run, |n, entries| {
                for (j, e) in entries.iter().enumerate() {
                    let e = e.load(Ordering::Relaxed);
                    if e & PRESENT != 0 {
                        return Err(Error::AlreadyMapped(va_at(n + j as u64)));
                    }
                    live |= e & MARK != 0 && w.live_mark(e).is_some();
                }
                Ok(())
            });
            if let Err(e) = checked {
                w.unlock(first, end);
                return Err(e);
            }
            if live {
                self.take_over(run, first, end);
                continue;
            }
            let mut i = 0;
            let _ = w.each(run, |_, entries| {
                for e in entries {
                    e.store(value(i), Ordering::Release);
                    i += 1;
                }
                Ok::<(), ()>(())
            });
            self.count_writes(run.count, first, end);
            w.unlock(first, end);
            return Ok(());
        }
    }

    /// With the locks `first..end` held: makes every live mark in the run
    /// this vCPU's, releases the locks, and flushes, so the old
    /// translations are gone everywhere (and the frames the marks name are
    /// released) before the run is mapped again.
    #[cold]
    fn take_over(&mut self, run: Run, first: usize, end: usize) {
        let w = self.window;
        let open = self.open_gen();
        let who = (self.me as u64) << CPU_SHIFT;
        let mut release = false;
        let _ = w.each(run, |_, entries| {
            for entry in entries {
                let e = entry.load(Ordering::Relaxed);
                let Some(owner) = w.live_mark(e) else {
                    continue;
                };
                release |= e & RELEASE != 0;
                if owner != self.me {
                    let kept = if e & RELEASE != 0 {
                        e & (RELEASE | ADDR_MASK)
                    } else {
                        (open & GEN_MASK) << GEN_SHIFT
                    };
                    entry.store(MARK | kept | who, Ordering::Relaxed);
                }
            }
            Ok::<(), ()>(())
        });
        w.unlock(first, end);
        self.queue.push(Entry::Invalidate {
            start: run.start(),
            count: run.count as u32,
            release,
            large: false,
        });
        self.flush(Trigger::Remap);
    }

    /// Locks the run's tables and checks that every page is mapped:
    /// `NotMapped` names the first that is not (a missing table: its first
    /// page in the run). On error nothing stays locked.
    #[inline]
    fn lock_mapped(&self, run: Run) -> Result<(usize, usize), Error> {
        let w = self.window;
        let (first, end) = run.tables();
        if let Some(t) = w.missing_table(first, end) {
            return Err(Self::unmapped_at(w, run, t));
        }
        w.lock(first, end, self.me);
        let checked = w.each(run, |n, entries| {
            match entries
                .iter()
                .position(|e| e.load(Ordering::Relaxed) & PRESENT == 0)
            {
                Some(j) => Err(Error::NotMapped(va_at(n + j as u64))),
                None => Ok(()),
            }
        });
        if let Err(e) = checked {
            w.unlock(first, end);
            return Err(e);
        }
        Ok((first, end))
    }

    /// Why a 4 KiB unmap or protect finds no leaf table in slot `t`: a 2
    /// MiB page lives there (it would be split), or nothing was ever mapped.
    #[cold]
    fn unmapped_at(w: &Window<'_, M>, run: Run, t: usize) -> Error {
        match w.slots[t].size() {
            Some(PageSize::Large) => Window::<M>::large_in_the_way(run, t),
            _ => Error::NotMapped(va_at(run.first.max((t as u64) << 9))),
        }
    }

    /// Unmaps `pages` pages at `va`, releasing the frames map_anon gave
    /// them once no TLB can reach them.
    #[inline]
    pub fn unmap(&mut self, va: VirtAddr, pages: u64) -> Result<(), Error> {
        let run = Run::of(va, pages)?;
        let who = (self.me as u64) << CPU_SHIFT;
        if run.count == 1 {
            let Some((slot, entry)) = self.lock_one(run.first) else {
                return Err(Self::unmapped_at(
                    self.window,
                    run,
                    (run.first >> 9) as usize,
                ));
            };
            let old = entry.load(Ordering::Relaxed);
            if old & PRESENT == 0 {
                slot.unlock();
                return Err(Error::NotMapped(va));
            }
            let release = old & OWNED.bits() != 0;
            let mark = if release {
                MARK | RELEASE | (old & ADDR_MASK) | who
            } else {
                MARK | ((self.open_gen() & GEN_MASK) << GEN_SHIFT) | who
            };
            entry.store(mark, Ordering::Release);
            self.count_one(slot);
            slot.unlock();
            self.queue.push(Entry::Invalidate {
                start: run.start(),
                count: 1,
                release,
                large: false,
            });
            self.settle();
            return Ok(());
        }
        self.unmap_run(run)
    }

    #[inline(never)]
    fn unmap_run(&mut self, run: Run) -> Result<(), Error> {
        let w = self.window;
        let pages = run.count;
        let who = (self.me as u64) << CPU_SHIFT;
        let (first, end) = self.lock_mapped(run)?;
        let plain = MARK | ((self.open_gen() & GEN_MASK) << GEN_SHIFT) | who;
        let mut release = false;
        let _ = w.each(run, |_, entries| {
            for entry in entries {
                let old = entry.load(Ordering::Relaxed);
                let mark = if old & OWNED.bits() != 0 {
                    release = true;
                    MARK | RELEASE | (old & ADDR_MASK) | who
                } else {
                    plain
                };
                entry.store(mark, Ordering::Release);
            }
            Ok::<(), ()>(())
        });
        self.count_writes(pages, first, end);
        w.unlock(first, end);
        self.queue.push(Entry::Invalidate {
            start: run.start(),
            count: pages as u32,
            release,
            large: false,
        });
        self.settle();
        Ok(())
    }

    /// Changes the protection of `pages` mapped pages at `va`.
    #[inline]
    pub fn protect(&mut self, va: VirtAddr, pages: u64, prot: Prot) -> Result<(), Error> {
        let run = Run::of(va, pages)?;
        let flags = prot.flags()?.bits();
        if run.count == 1 {
            let Some((slot, entry)) = self.lock_one(run.first) else {
                return Err(Self::unmapped_at(
                    self.window,
                    run,
                    (run.first >> 9) as usize,
                ));
            };
            if entry.load(Ordering::Relaxed) & PRESENT == 0 {
                slot.unlock();
                return Err(Error::NotMapped(va));
            }
            let changed = reprotect(entry, flags);
            if changed > 0 {
                self.count_one(slot);
            }
            slot.unlock();
            if changed > 0 {
                self.queue.push(Entry::Invalidate {
                    start: run.start(),
                    count: 1,
                    release: false,
                    large: false,
                });
            }
            self.settle();
            return Ok(());
        }
        self.protect_run(run, flags)
    }

    #[inline(never)]
    fn protect_run(&mut self, run: Run, flags: u64) -> Result<(), Error> {
        let w = self.window;
        let pages = run.count;
        let (first, end) = self.lock_mapped(run)?;
        let mut changed = 0;
        let _ = w.each(run, |_, entries| {
            for entry in entries {
                changed += reprotect(entry, flags);
            }
            Ok::<(), ()>(())
        });
        if changed > 0 {
            self.count_writes(changed, first, end);
        }
        w.unlock(first, end);
        if changed > 0 {
            self.queue.push(Entry::Invalidate {
                start: run.start(),
                count: pages as u32,
                release: false,
                large: false,
            });
        }
        self.settle();
        Ok(())
    }

    /// What the tables say about `va`. Entries are written in place, so
    /// this vCPU's pending changes are already there; no flush is needed.
    pub fn translate(&self, va: VirtAddr) -> Option<Translation> {
        self.window.translate(va)
    }

    /// A page fault at `addr` with the CPU's `error_code`. If the entry
    /// allows the access, the fault came from a stale, stricter translation
    /// in this vCPU's TLB: an in-place change whose invalidation is still
    /// queued (here or on another vCPU). Delivering the #PF already dropped
    /// that translation (Intel SDM vol. 3, 4.10.4.1), so the access can be
    /// retried as it is. Returns false for a fault the mm does not explain,
    /// a reserved-bit fault among them (retrying it would fault forever).
    pub fn fault(&mut self, addr: VirtAddr, error_code: u64) -> bool {
        // Intel SDM vol. 3, 4.7: bit 1 a write, bit 3 a reserved bit set,
        // bit 4 an instruction fetch.
        let (write, reserved, fetch) = (
            error_code & 2 != 0,
            error_code & 8 != 0,
            error_code & 16 != 0,
        );
        let a = addr.as_u64();
        if reserved || !(WINDOW_BASE..WINDOW_BASE + WINDOW_SIZE).contains(&a) {
            return false;
        }
        let slot = &self.window.slots[((a - WINDOW_BASE) >> 21) as usize];
        let e = match (slot.large(), self.window.entry((a - WINDOW_BASE) >> 12)) {
            (Some(pde), _) => pde.load(Ordering::Acquire),
            (None, Some(e)) => e.load(Ordering::Acquire),
            (None, None) => return false,
        };
        let allowed = e & PRESENT != 0
            && (!write || e & F::WRITABLE.bits() != 0)
            && (!fetch || e & F::NO_EXECUTE.bits() == 0);
        if !allowed {
            return false;
        }
        // If this vCPU has changes queued, one of them may be the change
        // this fault met: publishing them now spares the other vCPUs the
        // same spurious fault.
        self.flush(Trigger::Fault);
        true
    }
}

/// Rewrites a present entry's protection to `flags`; returns 1 if it
/// changed. The frame, OWNED, and the ACCESSED/DIRTY bits the MMU set are
/// kept (Linux's pte_modify): a write must not be forgotten.
#[inline(always)]
fn reprotect(entry: &AtomicU64, flags: u64) -> u64 {
    let keep = ADDR_MASK | OWNED.bits() | F::ACCESSED.bits() | F::DIRTY.bits();
    let mut old = entry.load(Ordering::Relaxed);
    loop {
        let new = (old & keep) | flags;
        if new == old {
            return 0;
        }
        // The MMU may set A or D meanwhile: retry with what it wrote.
        match entry.compare_exchange(old, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return 1,
            Err(now) => old = now,
        }
    }
}

/// The flush's view of the machine, for [`Queue::flush`].
struct Flusher<'x, 'm, M: PhysMemory, Fr: Frames, U: Mmu> {
    window: &'x Window<'m, M>,
    me: usize,
    frames: &'x mut Fr,
    mmu: &'x mut U,
    /// Stores the releases made (the cleared marks).
    pte_writes: u64,
    tables_unsynced: u64,
    /// Frames of RELEASE marks a queued PTE store overwrote: freed in
    /// `finish`, after the shootdown.
    deferred: &'x mut heapless::Vec<PhysFrame, { crate::queue::RING_CAPACITY }>,
    released: u64,
}

impl<M: PhysMemory, Fr: Frames, U: Mmu> Drain for Flusher<'_, '_, M, Fr, U> {
    fn write_pte(&mut self, page: Page, value: Pte) -> Applied {
        let w = self.window;
        let n = (page.start_address().as_u64() - WINDOW_BASE) >> 12;
        let slot = &w.slots[(n >> 9) as usize];
        // A queued store names a page whose table the queuing call made.
        let table = slot.table().expect("a queued store's table exists");
        slot.lock(self.me);
        let old = table[(n & 511) as usize].swap(value.bits(), Ordering::Release);
        slot.unlock();
        if old & PRESENT != 0 {
            return Applied::Replaced;
        }
        if w.live_mark(old).is_none() {
            return Applied::Filled;
        }
        // Over a live mark: its old translation may still be cached, so
        // this flush invalidates the page; a frame the mark named goes
        // back after this flush's shootdown, or it would leak.
        if old & RELEASE != 0 {
            let f = PhysFrame::containing_address(PhysAddr::new(old & ADDR_MASK));
            if self.deferred.push(f).is_err() {
                unreachable!("one store per record, at most RING_CAPACITY records");
            }
        }
        Applied::Replaced
    }

    fn finish(&mut self) {
        for f in self.deferred.drain(..) {
            self.frames.free(f);
            self.released += 1;
        }
    }

    fn write_cr(&mut self, reg: Cr, value: u64) {
        self.mmu.write_cr(reg, value);
    }

    fn invlpg(&mut self, page: Page) {
        self.mmu.invlpg(page);
    }

    fn flush_all(&mut self) {
        self.mmu.flush_all();
        // A shadow-paging host syncs its out-of-sync tables on a CR3 load
        // (and so on the targets' full flushes of this shootdown).
        self.window.sync_epoch.fetch_add(1, Ordering::Relaxed);
    }

    fn shootdown(&mut self, inv: &Invalidation) -> u32 {
        self.mmu.shootdown(inv)
    }

    fn release_range(&mut self, start: Page, count: u32, large: bool) -> u64 {
        if large {
            return self.release_large(start, count);
        }
        let w = self.window;
        let run = Run {
            first: (start.start_address().as_u64() - WINDOW_BASE) >> 12,
            count: u64::from(count),
        };
        let mut released = 0;
        for (t, lo, hi) in run.chunks() {
            let Some(table) = w.table(t) else { continue };
            w.lock(t, t + 1, self.me);
            let mut wrote = false;
            for entry in &table[lo..hi] {
                let e = entry.load(Ordering::Relaxed);
                let mine = e & (MARK | RELEASE | PRESENT) == MARK | RELEASE
                    && ((e >> CPU_SHIFT) & CPU_MASK) as usize == self.me;
                if mine {
                    entry.store(0, Ordering::Relaxed);
                    self.frames
                        .free(PhysFrame::containing_address(PhysAddr::new(e & ADDR_MASK)));
                    released += 1;
                    self.pte_writes += 1;
                    wrote = true;
                }
            }
            if wrote {
                self.tables_unsynced += w.note_writes(t, t + 1);
            }
            w.unlock(t, t + 1);
        }
        released
    }

    fn release(&mut self, frame: PhysFrame) {
        self.frames.free(frame);
    }
}

impl<M: PhysMemory, Fr: Frames, U: Mmu> Flusher<'_, '_, M, Fr, U> {
    /// `release_range` for 2 MiB pages: the marks are in the slots'
    /// page-directory entries.
    fn release_large(&mut self, start: Page, count: u32) -> u64 {
        let w = self.window;
        let first = ((start.start_address().as_u64() - WINDOW_BASE) >> 21) as usize;
        let mut released = 0;
        for slot in &w.slots[first..first + count as usize] {
            let Some(pde) = slot.large() else { continue };
            slot.lock(self.me);
            let e = pde.load(Ordering::Relaxed);
            let mine = e & (MARK | RELEASE | PRESENT) == MARK | RELEASE
                && ((e >> CPU_SHIFT) & CPU_MASK) as usize == self.me;
            if mine {
                pde.store(0, Ordering::Relaxed);
                self.frames
                    .free_2m(PhysFrame::containing_address(PhysAddr::new(
                        e & ADDR_MASK_2M,
                    )));
                released += 1;
                self.pte_writes += 1;
                self.tables_unsynced += slot.note_write(w.sync_epoch.load(Ordering::Relaxed));
            }
            slot.unlock();
        }
        released
    }
}

/// Zeroed frames linked through their first word: frame n holds the address
/// of frame n-1 (0 ends the chain). `pop` zeroes the link again, so every
/// frame leaves as zeroed as it came.
struct FrameChain<'a, M: PhysMemory> {
    mem: &'a M,
    head: u64,
}

impl<'a, M: PhysMemory> FrameChain<'a, M> {
    fn new(mem: &'a M) -> Self {
        FrameChain { mem, head: 0 }
    }

    fn link(&self, f: PhysFrame) -> *mut u64 {
        self.mem
            .ptr(f.start_address(), 8)
            .expect("frames are reachable (Frames' contract)") as *mut u64
    }

    fn push(&mut self, f: PhysFrame) {
        // SAFETY: a frame just allocated to us, reachable and aligned.
        unsafe { self.link(f).write(self.head) };
        self.head = f.start_address().as_u64();
    }

    fn pop(&mut self) -> Option<PhysFrame> {
        if self.head == 0 {
            return None;
        }
        let f = PhysFrame::containing_address(PhysAddr::new(self.head));
        // SAFETY: a frame of this chain, reachable; its first word is the
        // link, cleared so the frame is all zeroes again.
        self.head = unsafe { self.link(f).replace(0) };
        Some(f)
    }

    fn free_all(&mut self, frames: &mut impl Frames) {
        while let Some(f) = self.pop() {
            frames.free(f);
        }
    }
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
