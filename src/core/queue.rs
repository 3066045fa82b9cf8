//! The per-vCPU hypercall queue: a fixed ring of deferred privileged
//! operations, the lazy modes that decide what is deferred, and the flush
//! that applies a batch.
//!
//! This is the design of the 2007 KVM hypercall-queue patch, built for
//! hosts that drain nothing themselves, so the guest drains its own ring:
//! - each entry is a record `{op, args}`: an invalidation of a range of
//!   pages (and, with it, the release of the frames those pages mapped), an
//!   invalidation of everything, a control-register write, a PTE write, or
//!   one frame to release once no TLB can reach it;
//! - MMU lazy mode defers invalidations and releases; CPU lazy mode defers
//!   CR writes, and the last write to a register wins;
//! - flush is an action, not a mode; modes nest, and every leave flushes;
//! - only the owning vCPU touches its queue (the kernel reaches it through
//!   its own per-CPU slot, and interrupt handlers never borrow it), so the
//!   seed's "are we preempt safe here?" is answered by construction.
//!
//! The mm core ([`crate::mm`]) writes page-table entries in place, as
//! native Linux does inside `arch_enter_lazy_mmu_mode`, and queues what a
//! trapping host charges for: the invalidations, the CR writes and the
//! deferred frees. [`Entry::WritePte`] stays a record kind, because a host
//! that drains the ring itself (the seed's `KVM_MMU_OP_WRITE_PTE`), or a
//! shadow-paging host where every store traps, needs the store queued too;
//! the flush applies such records before anything else.
//!
//! A flush drains the ring in two passes through a [`Drain`], without
//! copying it: the first applies the PTE and CR writes and coalesces the
//! invalidations (per page up to [`INVLPG_CEILING`], else one full flush);
//! then comes the local invalidation and one shootdown round; the second
//! pass releases frames (the `mmu_gather` rule: a frame is never reused
//! while a stale TLB entry can still reach it). Every privileged operation
//! issued is counted in [`Counters`].

use crate::paging::Pte;
use x86_64::structures::paging::{Page, PhysFrame};
use x86_64::VirtAddr;

/// Entries per vCPU ring.
///
/// At 24 bytes a record the ring is 6 KiB per vCPU. A flush has a fixed
/// cost (one full TLB flush once past [`INVLPG_CEILING`] pages, one
/// shootdown round of IPIs) that the ring spreads over its entries.
/// Consecutive unmaps and protects coalesce into one range record, so the
/// ring fills only when calls jump around; the mm benchmark's batch sizes
/// go up to this capacity, where the per-operation cost has flattened out.
/// Past that, a bigger ring only delays visibility and grows per-CPU
/// memory. Linux's Xen PV batches 32 multicall entries per CPU;
/// KVM_HC_MMU_OP handled 512 bytes per hypercall.
pub const RING_CAPACITY: usize = 256;

/// Above this many distinct pages, one full TLB flush replaces per-page
/// `invlpg`. Linux uses 33 (`tlb_single_page_flush_ceiling`,
/// arch/x86/mm/tlb.c). On QEMU TCG an `invlpg` costs about 390 cycles and
/// a CR3 reload about 5,500, so the break-even is about 14 pages; but a
/// full flush also throws away every other translation, which the next
/// accesses pay to refill, so we keep Linux's figure. The `mm` benchmark
/// reports both sides.
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
    /// Invalidate `count` pages from `start` on every vCPU; then, with
    /// `release`, give back the frames that this vCPU's unmaps of those
    /// pages still name (KVM_MMU_OP_FLUSH_TLB and RELEASE_PT in one
    /// record: the mm records the frame in the cleared entry itself, so a
    /// whole range costs one record however many frames it frees).
    Invalidate {
        start: Page,
        count: u32,
        release: bool,
        /// The pages are 2 MiB (one `invlpg` each, counted once against the
        /// ceiling); else 4 KiB.
        large: bool,
    },
    InvalidateAll,
    WriteCr {
        reg: Cr,
        value: u64,
    },
    /// Store `value` into the leaf entry of `page` (KVM_MMU_OP_WRITE_PTE's
    /// `{pte_phys, pte_val}`), invalidating the page if the entry was
    /// present.
    WritePte {
        page: Page,
        value: Pte,
    },
    /// Give `frame` back once the flush has made it unreachable.
    ReleaseFrame(PhysFrame),
}

/// What made a flush happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The ring filled up (flushed after the call that filled it, or
    /// before a call that could not fit its records).
    Full,
    /// A lazy mode was left (any nesting level).
    Leave,
    /// An explicit `flush()`.
    Explicit,
    /// A page fault hit a page whose entry allows the access: a stale,
    /// stricter translation this vCPU's pending invalidation will remove.
    Fault,
    /// A frame was needed and this ring holds frames waiting for release.
    Reuse,
    /// A map of a page whose old translation may still be cached: an
    /// unmap of it (by any vCPU) has not been shot down yet. The new
    /// mapping must not be reachable through the old translation, so the
    /// invalidation goes first.
    Remap,
    /// An operation outside lazy mode, applied at once (the immediate
    /// backend flushes this way after every call).
    Unbatched,
    /// Another vCPU asked this one to flush, to get at its pending frees.
    Request,
    /// This vCPU stopped running work: it is about to go idle, or its
    /// posted work returned (Linux leaves lazy MMU mode at a context
    /// switch). Nothing stays queued on a vCPU that is not running.
    Idle,
}

impl Trigger {
    pub const COUNT: usize = 9;
    pub const ALL: [Trigger; Self::COUNT] = [
        Trigger::Full,
        Trigger::Leave,
        Trigger::Explicit,
        Trigger::Fault,
        Trigger::Reuse,
        Trigger::Remap,
        Trigger::Unbatched,
        Trigger::Request,
        Trigger::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Trigger::Full => "full",
            Trigger::Leave => "leave",
            Trigger::Explicit => "explicit",
            Trigger::Fault => "fault",
            Trigger::Reuse => "reuse",
            Trigger::Remap => "remap",
            Trigger::Unbatched => "unbatched",
            Trigger::Request => "request",
            Trigger::Idle => "idle",
        }
    }
}

/// The hypervisor-independent record of the traps a workload would take.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Records pushed into the ring (a coalesced record counts once).
    pub enqueued: u64,
    pub flushes: [u64; Trigger::COUNT],
    /// PTE stores issued to page-table memory.
    pub pte_writes: u64,
    /// Of those, stores of 2 MiB entries (page-directory entries).
    pub pte_writes_2m: u64,
    /// Leaf tables written for the first time since the last full flush
    /// anywhere: under shadow paging with out-of-sync leaf tables, the
    /// writes that fault (the later ones are plain stores until a CR3 load
    /// syncs the tables again).
    pub tables_unsynced: u64,
    pub invlpg: u64,
    pub full_flushes: u64,
    /// CR writes that reached the register.
    pub cr_writes: u64,
    /// CR writes absorbed by a later write to the same register.
    pub cr_coalesced: u64,
    pub ipis: u64,
    pub shootdowns: u64,
    pub frames_released: u64,
    /// Of those, 2 MiB frames (each counted once in `frames_released`).
    pub frames_released_2m: u64,
    /// `invlpg`s this vCPU ran for another vCPU's shootdown.
    pub remote_invlpg: u64,
    /// Full flushes this vCPU ran for another vCPU's shootdown.
    pub remote_full_flushes: u64,
    /// CR3 reloads on leaving lazy TLB mode (an idle vCPU dropped its
    /// translations instead of taking shootdowns).
    pub lazy_tlb_reloads: u64,
    /// First accesses to a page whose translation was just made: each is a
    /// TLB fill (a page walk; TCG's software TLB too). The queue never
    /// sets it: a benchmark that touches its pages declares them, outside
    /// the timed region, so that the cost model can price the fills.
    pub touches: u64,
}

impl Counters {
    /// All zero, usable in `const` contexts (`Default` is not const).
    pub const ZERO: Counters = Counters {
        enqueued: 0,
        flushes: [0; Trigger::COUNT],
        pte_writes: 0,
        pte_writes_2m: 0,
        tables_unsynced: 0,
        invlpg: 0,
        full_flushes: 0,
        cr_writes: 0,
        cr_coalesced: 0,
        ipis: 0,
        shootdowns: 0,
        frames_released: 0,
        frames_released_2m: 0,
        remote_invlpg: 0,
        remote_full_flushes: 0,
        lazy_tlb_reloads: 0,
        touches: 0,
    };

    pub fn flushes_total(&self) -> u64 {
        self.flushes.iter().sum()
    }

    pub fn fault_flushes(&self) -> u64 {
        self.flushes[Trigger::Fault as usize]
    }

    /// Operations that trap on a host that traps them all (shadow paging
    /// without out-of-sync tables): PTE writes, invalidations, CR writes
    /// and IPIs.
    pub fn privileged(&self) -> u64 {
        self.pte_writes + self.invlpg + self.full_flushes + self.cr_writes + self.ipis
    }

    /// Every field, in a fixed order, for `add` and `since`.
    fn fields(&mut self) -> [&mut u64; 16] {
        [
            &mut self.enqueued,
            &mut self.pte_writes,
            &mut self.pte_writes_2m,
            &mut self.tables_unsynced,
            &mut self.invlpg,
            &mut self.full_flushes,
            &mut self.cr_writes,
            &mut self.cr_coalesced,
            &mut self.ipis,
            &mut self.shootdowns,
            &mut self.frames_released,
            &mut self.frames_released_2m,
            &mut self.remote_invlpg,
            &mut self.remote_full_flushes,
            &mut self.lazy_tlb_reloads,
            &mut self.touches,
        ]
    }

    pub fn add(&mut self, o: &Counters) {
        let mut o = *o;
        for (a, b) in self.flushes.iter_mut().zip(o.flushes) {
            *a += b;
        }
        for (a, b) in self.fields().into_iter().zip(o.fields()) {
            *a += *b;
        }
    }

    /// `self - earlier`, field by field (for measuring a span).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = *self;
        let mut e = *earlier;
        for (a, b) in d.flushes.iter_mut().zip(e.flushes) {
            *a -= b;
        }
        for (a, b) in d.fields().into_iter().zip(e.fields()) {
            *a -= *b;
        }
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
    pub const fn none() -> Self {
        Invalidation::Pages(heapless::Vec::new())
    }

    /// Adds `page`, once; past the ceiling the invalidation becomes `All`.
    pub fn add(&mut self, page: Page) {
        if let Invalidation::Pages(pages) = self {
            // Dedup over the whole list, not only the last page: a page
            // replaced twice with others in between (protect a range, then
            // protect it again) must count once. The list holds at most
            // INVLPG_CEILING pages, so the scan costs less than one invlpg.
            if pages.contains(&page) {
                return;
            }
            if pages.push(page).is_err() {
                *self = Invalidation::All;
            }
        }
    }

    /// Adds `count` pages from `start`.
    #[inline]
    pub fn add_range(&mut self, start: Page, count: u32) {
        if count as usize > INVLPG_CEILING {
            *self = Invalidation::All;
            return;
        }
        let base = start.start_address().as_u64();
        // `start + i` would re-check every sum for canonical form; a range
        // the mm recorded is canonical, so the integer sum is exact.
        let page = |i: u64| Page::containing_address(VirtAddr::new_truncate(base + (i << 12)));
        if let Invalidation::Pages(pages) = self {
            if pages.is_empty() {
                // The common flush holds one range: nothing to dedup against.
                for i in 0..u64::from(count) {
                    let _ = pages.push(page(i));
                }
                return;
            }
        }
        for i in 0..u64::from(count) {
            if matches!(self, Invalidation::All) {
                return;
            }
            self.add(page(i));
        }
    }

    #[inline]
    /// Adds `count` 2 MiB pages from `start`: one `invlpg` each (any
    /// address inside a large page drops its whole translation, Intel SDM
    /// vol. 3, 4.10.4.1), so each counts once against the ceiling.
    pub fn add_large(&mut self, start: Page, count: u32) {
        let base = start.start_address().as_u64();
        for i in 0..u64::from(count) {
            if matches!(self, Invalidation::All) {
                return;
            }
            self.add(Page::containing_address(VirtAddr::new_truncate(
                base + (i << 21),
            )));
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

/// What a flush does with the records, in order. The mm core implements
/// it over the real (or simulated) machine.
pub trait Drain {
    fn write_pte(&mut self, page: Page, value: Pte) -> Applied;
    fn write_cr(&mut self, reg: Cr, value: u64);
    fn invlpg(&mut self, page: Page);
    fn flush_all(&mut self);
    /// Repeats `inv` on every other vCPU that may cache the translations
    /// and returns once all have acknowledged. Returns the IPIs sent (0:
    /// there was nobody to ask).
    fn shootdown(&mut self, inv: &Invalidation) -> u32;
    /// Gives back the frames this vCPU's unmaps of `count` pages (2 MiB
    /// ones if `large`) from `start` left to release; returns how many.
    /// Runs after the shootdown.
    fn release_range(&mut self, start: Page, count: u32, large: bool) -> u64;
    fn release(&mut self, frame: PhysFrame);
    /// The flush is over: whatever the drain deferred to after the
    /// releases (nothing, by default).
    fn finish(&mut self) {}
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
    /// Records in program order. A flush applies all of them and empties
    /// the ring, so a plain vector is enough: nothing is taken from the
    /// front alone.
    ring: heapless::Vec<Entry, RING_CAPACITY>,
    mmu_depth: u32,
    cpu_depth: u32,
    /// CR0, CR3, CR4 as this vCPU last wrote them (pending writes included),
    /// so reads never touch the register (the seed's CR read cache).
    cr_cache: [Option<u64>; 3],
    /// Records that release frames (an [`Entry::Invalidate`] with
    /// `release`, or an [`Entry::ReleaseFrame`]).
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
            ring: heapless::Vec::new(),
            mmu_depth: 0,
            cpu_depth: 0,
            cr_cache: [None; 3],
            releases_pending: 0,
            counters: Counters::ZERO,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    #[inline]
    pub fn is_full(&self) -> bool {
        self.ring.is_full()
    }

    /// Free records.
    #[inline]
    pub fn room(&self) -> usize {
        RING_CAPACITY - self.ring.len()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// For the mm core, which counts what it issues outside a flush (the
    /// in-place PTE stores).
    #[inline]
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    #[inline]
    pub fn in_lazy_mmu(&self) -> bool {
        self.mmu_depth > 0
    }

    pub fn in_lazy_cpu(&self) -> bool {
        self.cpu_depth > 0
    }

    pub fn enter_lazy_mmu(&mut self) {
        self.mmu_depth += 1;
    }

    /// Ends one level of MMU lazy mode. Every leave flushes: the caller
    /// (the mm core) flushes first, so the flush can retire what it must.
    pub fn exit_lazy_mmu(&mut self) -> Result<(), Error> {
        if self.mmu_depth == 0 {
            return Err(Error::NotInLazyMode("MMU"));
        }
        self.mmu_depth -= 1;
        Ok(())
    }

    pub fn enter_lazy_cpu(&mut self) {
        self.cpu_depth += 1;
    }

    /// Ends one level of CPU lazy mode, after the caller's flush.
    pub fn exit_lazy_cpu(&mut self) -> Result<(), Error> {
        if self.cpu_depth == 0 {
            return Err(Error::NotInLazyMode("CPU"));
        }
        self.cpu_depth -= 1;
        Ok(())
    }

    /// Appends a record; the caller made room ([`Queue::room`]) first and
    /// flushes once the ring is full, outside any lock it holds. A range
    /// invalidation that continues the newest record (the same `release`,
    /// the next page on) extends it instead: a run of per-page unmaps costs
    /// one record.
    #[inline]
    pub fn push(&mut self, e: Entry) {
        if let (
            Entry::Invalidate {
                start,
                count,
                release,
                large,
            },
            Some(Entry::Invalidate {
                start: s,
                count: c,
                release: r,
                large: l,
            }),
        ) = (e, self.ring.last_mut())
        {
            // Page addresses as integers: x86_64's `Page + u64` re-checks
            // that the sum is canonical, which costs more than the rest.
            let shift = if large { 21 } else { 12 };
            let next = s.start_address().as_u64() + (u64::from(*c) << shift);
            if *r == release
                && *l == large
                && next == start.start_address().as_u64()
                && c.checked_add(count).is_some()
            {
                *c += count;
                return;
            }
        }
        if matches!(
            e,
            Entry::ReleaseFrame(_) | Entry::Invalidate { release: true, .. }
        ) {
            self.releases_pending += 1;
        }
        self.counters.enqueued += 1;
        // The caller checked `room`; a full ring here is a bug upstream,
        // and dropping a record would lose an invalidation.
        if self.ring.push(e).is_err() {
            panic!("hypercall ring overflow: the caller pushed without making room");
        }
    }

    /// Records a write of `value` to `reg` in the CR cache and, in CPU
    /// lazy mode, defers it: a later write to the same register replaces
    /// a pending one that is the newest record. Returns false outside lazy
    /// mode: the caller flushes what is queued (program order) and writes
    /// the register at once. The caller made room for a record.
    pub fn defer_cr(&mut self, reg: Cr, value: u64) -> bool {
        self.cr_cache[reg.index()] = Some(value);
        if !self.in_lazy_cpu() {
            return false;
        }
        // The last write wins only over a write to the same register that
        // is the newest entry: merging across other entries would move the
        // register change before them. And two CR4 writes that differ in a
        // TLB-controlling bit stay apart: a PGE toggle pair exists for the
        // flush each write causes, which a merge would lose.
        if let Some(Entry::WriteCr { reg: r, value: v }) = self.ring.last_mut() {
            let flush_bits_differ = reg == Cr::Cr4 && (*v ^ value) & CR4_TLB_BITS != 0;
            if *r == reg && !flush_bits_differ {
                *v = value;
                self.counters.cr_coalesced += 1;
                return true;
            }
        }
        self.push(Entry::WriteCr { reg, value });
        true
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

    /// True when frames wait in this ring for a flush to release them.
    pub fn has_pending_releases(&self) -> bool {
        self.releases_pending > 0
    }

    /// Applies the ring and empties it, counting what it issues. A flush of
    /// an empty ring issues and counts nothing.
    #[inline]
    pub fn flush(&mut self, trigger: Trigger, d: &mut impl Drain) {
        // An empty ring issues nothing: counting it would inflate
        // flushes per operation with flushes no host would see.
        if self.ring.is_empty() {
            return;
        }
        self.counters.flushes[trigger as usize] += 1;
        // Pass 1, in program order: the stores, the CR writes, and the
        // invalidation they add up to.
        let mut inv = Invalidation::none();
        let mut release_frames = false;
        for e in self.ring.iter() {
            match *e {
                Entry::WritePte { page, value } => {
                    self.counters.pte_writes += 1;
                    if d.write_pte(page, value) == Applied::Replaced {
                        inv.add(page);
                    }
                }
                Entry::Invalidate {
                    start,
                    count,
                    large: false,
                    ..
                } => inv.add_range(start, count),
                Entry::Invalidate {
                    start,
                    count,
                    large: true,
                    ..
                } => inv.add_large(start, count),
                Entry::InvalidateAll => inv = Invalidation::All,
                Entry::WriteCr { reg, value } => {
                    d.write_cr(reg, value);
                    self.counters.cr_writes += 1;
                }
                Entry::ReleaseFrame(_) => release_frames = true,
            }
        }
        // A frame given back by record was reachable until now: if nothing
        // else in the ring says through which page, every translation goes.
        if release_frames && inv.is_empty() {
            inv = Invalidation::All;
        }
        match &inv {
            Invalidation::Pages(pages) => {
                for &p in pages {
                    d.invlpg(p);
                }
                self.counters.invlpg += pages.len() as u64;
            }
            Invalidation::All => {
                d.flush_all();
                self.counters.full_flushes += 1;
            }
        }
        if !inv.is_empty() {
            let ipis = d.shootdown(&inv);
            if ipis > 0 {
                self.counters.ipis += u64::from(ipis);
                self.counters.shootdowns += 1;
            }
        }
        // Pass 2: only now can no TLB reach the released frames.
        if self.releases_pending > 0 {
            self.release_all(d);
        }
        d.finish();
        self.ring.clear();
        self.releases_pending = 0;
    }

    #[inline(never)]
    fn release_all(&mut self, d: &mut impl Drain) {
        for e in self.ring.iter() {
            match *e {
                Entry::Invalidate {
                    start,
                    count,
                    release: true,
                    large,
                } => {
                    let n = d.release_range(start, count, large);
                    self.counters.frames_released += n;
                    if large {
                        self.counters.frames_released_2m += n;
                    }
                }
                Entry::ReleaseFrame(f) => {
                    d.release(f);
                    self.counters.frames_released += 1;
                }
                _ => {}
            }
        }
    }
}
