//! The per-vCPU hypercall queue: a fixed ring of deferred privileged
//! operations, the lazy modes that decide what is deferred, and the flush
//! that applies a batch.
//!
//! This is the design of the 2007 KVM hypercall-queue patch
//! (`shared/seed/kvm-hypercall-queue-2007.txt`), built for hosts that drain
//! nothing themselves, so the guest drains its own ring (see BRIEF.md, "Why
//! the queue is drained by the guest"):
//! - each entry is a record `{op, args}`: a PTE write, an invalidation of a
//!   page, a range or everything, a control-register write, or a frame to
//!   release once no TLB can reach it;
//! - MMU lazy mode defers PTE writes and invalidations; CPU lazy mode defers
//!   CR writes, and the last write to a register wins;
//! - flush is an action, not a mode; modes nest, and every leave flushes;
//! - only the owning vCPU touches its queue, with interrupts masked (the
//!   kernel keeps it in per-CPU data and calls in with interrupts off), so
//!   the seed's "are we preempt safe here?" is answered by construction.
//!
//! A flush drains the ring in order through an [`Mmu`], which the kernel
//! implements with real instructions and IPIs and the host tests with a
//! model: PTE writes first, then one coalesced invalidation (per page up to
//! [`INVLPG_CEILING`], else one full flush), then one shootdown round to the
//! other vCPUs, and only then the release of frames that unmaps freed (the
//! `mmu_gather` rule: a frame is never reused while a stale TLB entry can
//! still reach it). Every privileged operation issued is counted in
//! [`Counters`].

use crate::paging::{LeafEntry, Pte};
use x86_64::structures::paging::{Page, PhysFrame};

/// Entries per vCPU ring.
///
/// At 32 bytes an entry the ring is 8 KiB per vCPU. A flush has a fixed
/// cost (one full TLB flush once past [`INVLPG_CEILING`] pages, one
/// shootdown round of IPIs) that the ring spreads over its entries; a
/// map+unmap pair takes 2 to 3 entries, so 256 entries spread it over about
/// 100 operations, where the `mm` benchmark shows the per-operation cost has
/// flattened out (README, Figures). Past that, a bigger ring only delays
/// visibility and grows per-CPU memory. Linux's Xen PV batches 32 multicall
/// entries per CPU; KVM_HC_MMU_OP handled 512 bytes per hypercall.
pub const RING_CAPACITY: usize = 256;

/// Above this many distinct pages, one full TLB flush replaces per-page
/// `invlpg`. Linux uses 33 (`tlb_single_page_flush_ceiling`,
/// arch/x86/mm/tlb.c). On QEMU TCG, BRIEF.md measured `invlpg` at about 390
/// cycles and a CR3 reload at about 5,500, so the break-even is about 14
/// pages; but a full flush also throws away every other translation, which
/// the next accesses pay to refill, so we keep Linux's figure. The `mm`
/// benchmark reports both sides.
pub const INVLPG_CEILING: usize = 33;

/// CR4 bits whose change flushes the TLB (Intel SDM vol. 3, 4.10.4.1): PSE,
/// PAE, PGE, PCIDE, SMEP.
const CR4_TLB_BITS: u64 = (1 << 4) | (1 << 5) | (1 << 7) | (1 << 17) | (1 << 20);

/// A control register the queue can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cr {
    Cr0,
    Cr3,
    Cr4,
}

impl Cr {
    fn index(self) -> usize {
        match self {
            Cr::Cr0 => 0,
            Cr::Cr3 => 1,
            Cr::Cr4 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cr::Cr0 => "cr0",
            Cr::Cr3 => "cr3",
            Cr::Cr4 => "cr4",
        }
    }
}

/// One deferred operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Write `value` into the leaf entry of `page` (KVM_MMU_OP_WRITE_PTE's
    /// `{pte_phys, pte_val}`, with the page kept so the flush can
    /// invalidate it).
    WritePte {
        page: Page,
        entry: LeafEntry,
        value: Pte,
    },
    InvalidatePage(Page),
    InvalidateRange {
        start: Page,
        count: u32,
    },
    InvalidateAll,
    WriteCr {
        reg: Cr,
        value: u64,
    },
    /// Give `frame` back to the allocator once the flush has made it
    /// unreachable (KVM_MMU_OP_RELEASE_PT's role, for data frames too).
    ReleaseFrame(PhysFrame),
}

/// What made a flush happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The ring filled up (flushed right after the entry that filled it).
    Full,
    /// A lazy mode was left (any nesting level).
    Leave,
    /// An explicit `flush()`.
    Explicit,
    /// A page fault hit a page with a map pending in this ring.
    Fault,
    /// Something is about to read the page tables (`translate`).
    Read,
    /// A frame was needed and this ring holds frames waiting for release.
    Reuse,
    /// A map of a page whose unmap is still queued: the old translation is
    /// still in the hardware, so the first touch of the new mapping would
    /// not fault, and would reach the old frame. Flushing first keeps
    /// "a pending map becomes visible on first touch" true.
    Remap,
    /// An operation outside lazy mode, applied at once after any earlier
    /// entries (the immediate backend flushes this way after every entry).
    Unbatched,
}

impl Trigger {
    pub const COUNT: usize = 8;
    pub const ALL: [Trigger; Self::COUNT] = [
        Trigger::Full,
        Trigger::Leave,
        Trigger::Explicit,
        Trigger::Fault,
        Trigger::Read,
        Trigger::Reuse,
        Trigger::Remap,
        Trigger::Unbatched,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Trigger::Full => "full",
            Trigger::Leave => "leave",
            Trigger::Explicit => "explicit",
            Trigger::Fault => "fault",
            Trigger::Read => "read",
            Trigger::Reuse => "reuse",
            Trigger::Remap => "remap",
            Trigger::Unbatched => "unbatched",
        }
    }
}

/// The hypervisor-independent record of the traps a workload would take.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub enqueued: u64,
    pub flushes: [u64; Trigger::COUNT],
    /// PTE stores issued to page-table memory.
    pub pte_writes: u64,
    pub invlpg: u64,
    pub full_flushes: u64,
    /// CR writes that reached the register.
    pub cr_writes: u64,
    /// CR writes absorbed by a later write to the same register.
    pub cr_coalesced: u64,
    pub ipis: u64,
    pub shootdowns: u64,
    pub frames_released: u64,
}

impl Counters {
    /// All zero, usable in `const` contexts (`Default` is not const).
    pub const ZERO: Counters = Counters {
        enqueued: 0,
        flushes: [0; Trigger::COUNT],
        pte_writes: 0,
        invlpg: 0,
        full_flushes: 0,
        cr_writes: 0,
        cr_coalesced: 0,
        ipis: 0,
        shootdowns: 0,
        frames_released: 0,
    };

    pub fn flushes_total(&self) -> u64 {
        self.flushes.iter().sum()
    }

    pub fn fault_flushes(&self) -> u64 {
        self.flushes[Trigger::Fault as usize]
    }

    /// Operations that trap on a host that traps them all (shadow paging):
    /// PTE writes, invalidations, CR writes and IPIs.
    pub fn privileged(&self) -> u64 {
        self.pte_writes + self.invlpg + self.full_flushes + self.cr_writes + self.ipis
    }

    pub fn add(&mut self, o: &Counters) {
        self.enqueued += o.enqueued;
        for (a, b) in self.flushes.iter_mut().zip(o.flushes) {
            *a += b;
        }
        self.pte_writes += o.pte_writes;
        self.invlpg += o.invlpg;
        self.full_flushes += o.full_flushes;
        self.cr_writes += o.cr_writes;
        self.cr_coalesced += o.cr_coalesced;
        self.ipis += o.ipis;
        self.shootdowns += o.shootdowns;
        self.frames_released += o.frames_released;
    }

    /// `self - earlier`, field by field (for measuring a span).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = *self;
        d.enqueued -= earlier.enqueued;
        for (a, b) in d.flushes.iter_mut().zip(earlier.flushes) {
            *a -= b;
        }
        d.pte_writes -= earlier.pte_writes;
        d.invlpg -= earlier.invlpg;
        d.full_flushes -= earlier.full_flushes;
        d.cr_writes -= earlier.cr_writes;
        d.cr_coalesced -= earlier.cr_coalesced;
        d.ipis -= earlier.ipis;
        d.shootdowns -= earlier.shootdowns;
        d.frames_released -= earlier.frames_released;
        d
    }
}

/// The TLB invalidation a flush settles on, which the shootdown repeats on
/// the other vCPUs.
// One lives on the stack per flush and is never moved in bulk; boxing the
// big variant would need an allocator the kernel does not have.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Pages(heapless::Vec<Page, INVLPG_CEILING>),
    All,
}

impl Invalidation {
    /// Adds `page`, once; past the ceiling the invalidation becomes `All`.
    pub fn add(&mut self, page: Page) {
        if let Invalidation::Pages(pages) = self {
            // Fix (mm_tests): dedup over the whole list, not only the last
            // page. The list holds at most INVLPG_CEILING pages, so the scan
            // costs less than one invlpg, and without it a page replaced
            // twice with others in between (protect a range, then protect
            // it again) counted twice and turned 17 pages into a full flush.
            if pages.contains(&page) {
                return;
            }
            if pages.push(page).is_err() {
                *self = Invalidation::All;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Invalidation::Pages(p) if p.is_empty())
    }
}

/// What a deferred PTE write did when applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written, and the entry it replaced was present: the page needs
    /// invalidating.
    Replaced,
    /// Written over a non-present entry: no TLB can hold it.
    Filled,
}

/// The privileged operations a flush issues. The kernel executes them; host
/// tests model them.
pub trait Mmu {
    fn apply_pte(&mut self, page: Page, entry: LeafEntry, value: Pte) -> Applied;
    /// Every PTE write of this flush is in: pending marks may be cleared.
    fn writes_done(&mut self);
    fn invlpg(&mut self, page: Page);
    fn flush_all(&mut self);
    /// Repeats `inv` on every other vCPU that may cache the translations
    /// and waits for their acknowledgement. Returns the IPIs sent (0: there
    /// was nobody to ask).
    fn shootdown(&mut self, inv: &Invalidation) -> u32;
    fn write_cr(&mut self, reg: Cr, value: u64);
    fn release(&mut self, frame: PhysFrame);
}

/// Errors of the mode state machine (a caller's bug, reported, not ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// `leave` without a matching `enter`.
    NotInLazyMode(&'static str),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::NotInLazyMode(m) => write!(f, "left {m} lazy mode without entering it"),
        }
    }
}

/// One vCPU's queue.
pub struct Queue {
    ring: heapless::Deque<Entry, RING_CAPACITY>,
    mmu_depth: u32,
    cpu_depth: u32,
    /// CR0, CR3, CR4 as this vCPU last wrote them (pending writes included),
    /// so reads never touch the register (the seed's CR read cache).
    cr_cache: [Option<u64>; 3],
    releases_pending: u32,
    counters: Counters,
}

impl Default for Queue {
    fn default() -> Self {
        Self::new()
    }
}

impl Queue {
    pub const fn new() -> Self {
        Queue {
            ring: heapless::Deque::new(),
            mmu_depth: 0,
            cpu_depth: 0,
            cr_cache: [None; 3],
            releases_pending: 0,
            counters: Counters::ZERO,
        }
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// For backends that apply operations without the ring (the immediate
    /// baseline) and still count what they issue.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    pub fn in_lazy_mmu(&self) -> bool {
        self.mmu_depth > 0
    }

    pub fn in_lazy_cpu(&self) -> bool {
        self.cpu_depth > 0
    }

    pub fn enter_lazy_mmu(&mut self) {
        self.mmu_depth += 1;
    }

    /// Leaves one level of MMU lazy mode. Every leave flushes; the outermost
    /// also ends the mode.
    pub fn leave_lazy_mmu(&mut self, mmu: &mut impl Mmu) -> Result<(), Error> {
        if self.mmu_depth == 0 {
            return Err(Error::NotInLazyMode("MMU"));
        }
        self.flush(Trigger::Leave, mmu);
        self.mmu_depth -= 1;
        Ok(())
    }

    pub fn enter_lazy_cpu(&mut self) {
        self.cpu_depth += 1;
    }

    pub fn leave_lazy_cpu(&mut self, mmu: &mut impl Mmu) -> Result<(), Error> {
        if self.cpu_depth == 0 {
            return Err(Error::NotInLazyMode("CPU"));
        }
        self.flush(Trigger::Leave, mmu);
        self.cpu_depth -= 1;
        Ok(())
    }

    /// Defers an MMU operation. Outside MMU lazy mode there is nothing to
    /// defer into: earlier entries are flushed (to keep program order) and
    /// the operation is applied at once, as a flush of one.
    pub fn push_mmu(&mut self, e: Entry, mmu: &mut impl Mmu) {
        debug_assert!(
            !matches!(e, Entry::WriteCr { .. }),
            "CR writes go through write_cr"
        );
        if !self.in_lazy_mmu() {
            self.push_raw(e, mmu);
            self.flush(Trigger::Unbatched, mmu);
            return;
        }
        self.push_raw(e, mmu);
    }

    /// Defers an unmap's PTE write together with the release of its frame:
    /// outside lazy mode both go out in one flush (one invalidation, one
    /// shootdown round, then the release), as one unmap would.
    pub fn push_unmap(&mut self, write: Entry, release: Entry, mmu: &mut impl Mmu) {
        debug_assert!(
            matches!(write, Entry::WritePte { .. }) && matches!(release, Entry::ReleaseFrame(_))
        );
        self.push_raw(write, mmu);
        self.push_raw(release, mmu);
        if !self.in_lazy_mmu() {
            self.flush(Trigger::Unbatched, mmu);
        }
    }

    fn push_raw(&mut self, e: Entry, mmu: &mut impl Mmu) {
        if let Entry::ReleaseFrame(_) = e {
            self.releases_pending += 1;
        }
        self.counters.enqueued += 1;
        // Cannot fail: the ring is flushed as soon as it fills, below.
        let _ = self.ring.push_back(e);
        // Fix (mm_tests): flush once the entry is in, not before the next
        // one. The mm records a page's new logical value (`Space::set`)
        // and then pushes its entry; a flush between the two applied the
        // page's older entry and cleared its pending mark while the new
        // entry was not queued yet, so another vCPU could take the page
        // over and this vCPU's entry would later overwrite its mapping.
        if self.ring.is_full() {
            self.flush(Trigger::Full, mmu);
        }
    }

    /// Writes a control register: deferred in CPU lazy mode, where a later
    /// write to the same register replaces a pending one; at once otherwise
    /// (after flushing earlier entries, to keep program order).
    pub fn write_cr(&mut self, reg: Cr, value: u64, mmu: &mut impl Mmu) {
        self.cr_cache[reg.index()] = Some(value);
        if self.in_lazy_cpu() {
            // The last write wins only over a write to the same register that
            // is the newest entry: merging across other entries would move
            // the register change before them. And two CR4 writes that differ
            // in a TLB-controlling bit stay apart: a PGE toggle pair exists
            // for the flush each write causes, which a merge would lose.
            if let Some(Entry::WriteCr { reg: r, value: v }) = self.ring.back_mut() {
                let flush_bits_differ = reg == Cr::Cr4 && (*v ^ value) & CR4_TLB_BITS != 0;
                if *r == reg && !flush_bits_differ {
                    *v = value;
                    self.counters.cr_coalesced += 1;
                    return;
                }
            }
            self.push_raw(Entry::WriteCr { reg, value }, mmu);
            return;
        }
        if !self.ring.is_empty() {
            self.flush(Trigger::Unbatched, mmu);
        }
        mmu.write_cr(reg, value);
        self.counters.cr_writes += 1;
    }

    /// The value this vCPU last wrote to `reg` (pending or not), or `None`
    /// before the first write; the caller then reads the register once and
    /// seeds the cache with [`Queue::seed_cr`].
    pub fn read_cr(&self, reg: Cr) -> Option<u64> {
        self.cr_cache[reg.index()]
    }

    pub fn seed_cr(&mut self, reg: Cr, value: u64) {
        self.cr_cache[reg.index()] = Some(value);
    }

    /// True when this ring holds a deferred write that makes `page` present:
    /// a fault on it should flush and retry.
    pub fn has_pending_map(&self, page: Page) -> bool {
        self.ring.iter().rev().find_map(|e| match e {
            Entry::WritePte { page: p, value, .. } if *p == page => Some(value.is_present()),
            _ => None,
        }) == Some(true)
    }

    /// True when frames wait in this ring for a flush to release them.
    pub fn has_pending_releases(&self) -> bool {
        self.releases_pending > 0
    }

    /// Drains the ring in order and applies it. Returns what was issued; a
    /// flush of an empty ring issues and counts nothing.
    pub fn flush(&mut self, trigger: Trigger, mmu: &mut impl Mmu) -> Counters {
        let before = self.counters;
        // An empty ring issues nothing: counting it would inflate
        // flushes per operation with flushes no host would see.
        if self.ring.is_empty() {
            return Counters::ZERO;
        }
        self.counters.flushes[trigger as usize] += 1;
        let mut inv = Invalidation::Pages(heapless::Vec::new());
        let mut releases: heapless::Vec<PhysFrame, RING_CAPACITY> = heapless::Vec::new();
        while let Some(e) = self.ring.pop_front() {
            match e {
                Entry::WritePte { page, entry, value } => match mmu.apply_pte(page, entry, value) {
                    Applied::Replaced => {
                        self.counters.pte_writes += 1;
                        inv.add(page);
                    }
                    Applied::Filled => self.counters.pte_writes += 1,
                },
                Entry::InvalidatePage(page) => inv.add(page),
                Entry::InvalidateRange { start, count } => {
                    if count as usize > INVLPG_CEILING {
                        inv = Invalidation::All;
                    } else {
                        for i in 0..count as u64 {
                            inv.add(start + i);
                        }
                    }
                }
                Entry::InvalidateAll => inv = Invalidation::All,
                Entry::WriteCr { reg, value } => {
                    mmu.write_cr(reg, value);
                    self.counters.cr_writes += 1;
                }
                // Cannot fail: the ring holds at most RING_CAPACITY entries.
                Entry::ReleaseFrame(f) => {
                    let _ = releases.push(f);
                }
            }
        }
        mmu.writes_done();
        match &inv {
            Invalidation::Pages(pages) => {
                for &p in pages {
                    mmu.invlpg(p);
                }
                self.counters.invlpg += pages.len() as u64;
            }
            Invalidation::All => {
                mmu.flush_all();
                self.counters.full_flushes += 1;
            }
        }
        if !inv.is_empty() {
            let ipis = mmu.shootdown(&inv);
            if ipis > 0 {
                self.counters.ipis += ipis as u64;
                self.counters.shootdowns += 1;
            }
        }
        // Only now can no TLB reach the released frames.
        for f in releases {
            mmu.release(f);
            self.counters.frames_released += 1;
        }
        self.releases_pending = 0;
        self.counters.since(&before)
    }
}
