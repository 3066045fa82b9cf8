//! Physical memory: the memory-map types the boot parsers produce, and the
//! allocator of 4 KiB frames that every later stage (page tables, queue pages,
//! benchmark buffers) takes its memory from.
//!
//! Boot flow: [`crate::pvh`] turns the boot loader's memory map into
//! [`MemoryRegion`]s; the kernel adds the ranges it must keep (its own image,
//! the boot structures, the ACPI tables) and builds one [`FrameAllocator`]
//! from both. From then on this module owns the record of which frames are
//! free. The record is a bitmap, so a double free or the free of a frame the
//! allocator never handed out is caught instead of corrupting memory.

use core::fmt;
use core::ptr::NonNull;

use x86_64::structures::paging::{PhysFrame, Size2MiB, Size4KiB};
use x86_64::PhysAddr;

use crate::phys::PhysMemory;

/// The size of the frames handed out.
pub const FRAME_SIZE: u64 = 4096;

/// Everything below 1 MiB stays untouched: the real-mode IVT, the BIOS data
/// area and EBDA, option ROMs, and the page the SMP trampoline is copied to.
pub const LOW_MEMORY_END: PhysAddr = PhysAddr::new(0x10_0000);

/// The most memory-map entries the kernel keeps (`pvh` rejects more).
pub const MAX_REGIONS: usize = 128;

/// The most reserved ranges the kernel collects for [`FrameAllocator::new`].
pub const MAX_RESERVED: usize = 64;

/// x86-64 physical addresses have at most 52 bits (MAXPHYADDR, Intel SDM
/// Vol. 3A §4.1.4); memory claimed above that cannot exist and is ignored.
const PHYS_ADDR_LIMIT: u64 = 1 << 52;

const BITS_PER_WORD: u64 = u64::BITS as u64;

/// The type of a memory-map entry, as defined for E820 and reused by PVH
/// (ACPI 6.x chapter 15, "System Address Map Interfaces";
/// `XEN_HVM_MEMMAP_TYPE_*` in Xen's `arch-x86/hvm/start_info.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Type 1: usable RAM.
    Ram,
    /// Type 2: reserved by the platform.
    Reserved,
    /// Type 3: ACPI tables, reclaimable after they are parsed.
    Acpi,
    /// Type 4: ACPI non-volatile storage, never usable.
    Nvs,
    /// Type 5: memory with detected errors.
    Unusable,
    /// Any other type (6 disabled, 7 persistent memory, vendor types).
    Other(u32),
}

impl RegionKind {
    /// Decodes an E820/PVH memory type.
    pub const fn from_e820(ty: u32) -> Self {
        match ty {
            1 => RegionKind::Ram,
            2 => RegionKind::Reserved,
            3 => RegionKind::Acpi,
            4 => RegionKind::Nvs,
            5 => RegionKind::Unusable,
            other => RegionKind::Other(other),
        }
    }

    /// A short lowercase name for logs and the boot report.
    pub const fn as_str(self) -> &'static str {
        match self {
            RegionKind::Ram => "ram",
            RegionKind::Reserved => "reserved",
            RegionKind::Acpi => "acpi",
            RegionKind::Nvs => "nvs",
            RegionKind::Unusable => "unusable",
            RegionKind::Other(_) => "other",
        }
    }
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionKind::Other(ty) => write!(f, "type {ty}"),
            kind => f.write_str(kind.as_str()),
        }
    }
}

/// One entry of the firmware's memory map. Entries may be unsorted and may
/// overlap; [`FrameAllocator::new`] copes with both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: PhysAddr,
    pub len: u64,
    pub kind: RegionKind,
}

impl MemoryRegion {
    /// The region as a half-open range, or `None` when it runs past the
    /// physical address space.
    pub fn range(&self) -> Option<Range> {
        Range::from_len(self.start, self.len)
    }

    /// The exclusive end, saturated at the top of the address space, so a
    /// bogus length from firmware cannot wrap around.
    fn end_u64(&self) -> u64 {
        self.start.as_u64().saturating_add(self.len)
    }
}

impl fmt::Display for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:#x}-{:#x}) {}",
            self.start.as_u64(),
            self.end_u64(),
            self.kind
        )
    }
}

/// A half-open range of physical addresses `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: PhysAddr,
    pub end: PhysAddr,
}

impl Range {
    /// `[start, start + len)`, or `None` when the end is not a valid
    /// physical address (overflow or beyond 52 bits).
    pub fn from_len(start: PhysAddr, len: u64) -> Option<Range> {
        let end = start.as_u64().checked_add(len)?;
        Some(Range {
            start,
            end: PhysAddr::try_new(end).ok()?,
        })
    }

    pub fn len(&self) -> u64 {
        self.end.as_u64().saturating_sub(self.start.as_u64())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, pa: PhysAddr) -> bool {
        self.start <= pa && pa < self.end
    }

    /// Whether the two ranges share at least one byte.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.start < other.end && other.start < self.end
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}-{:#x})", self.start.as_u64(), self.end.as_u64())
    }
}

/// Total bytes of `Ram` entries in `map`, for the boot report. Overlapping
/// entries are counted twice: this reports what the firmware claims.
pub fn ram_bytes(map: &[MemoryRegion]) -> u64 {
    map.iter()
        .filter(|r| r.kind == RegionKind::Ram)
        .fold(0u64, |sum, r| sum.saturating_add(r.len))
}

/// Why the allocator could not be built or could not serve a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The map holds no whole RAM frame above [`LOW_MEMORY_END`] outside
    /// the reserved ranges.
    NoUsableRam,
    /// No free, accessible RAM run is large enough to hold the bitmap.
    BitmapDoesNotFit { bytes: u64 },
    /// Every managed frame is allocated (or a failure was injected with
    /// [`FrameAllocator::set_fail_after`]).
    OutOfFrames,
    /// The frame is managed but is not currently allocated.
    DoubleFree(PhysFrame),
    /// The frame is not one this allocator hands out (low memory, reserved,
    /// not RAM, the bitmap's own frames, or beyond the highest RAM frame).
    NotManaged(PhysFrame),
    /// The frame was allocated but the physical-memory window cannot reach
    /// it; it has been returned to the free pool.
    NotAccessible(PhysFrame),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoUsableRam => write!(
                f,
                "memory map has no usable RAM frame above {:#x} outside the reserved ranges",
                LOW_MEMORY_END.as_u64()
            ),
            Error::BitmapDoesNotFit { bytes } => write!(
                f,
                "no free, accessible RAM run of {bytes} bytes to hold the frame bitmap"
            ),
            Error::OutOfFrames => f.write_str("out of physical frames"),
            Error::DoubleFree(frame) => write!(
                f,
                "double free of frame {:#x} (it is not allocated)",
                frame.start_address().as_u64()
            ),
            Error::NotManaged(frame) => write!(
                f,
                "frame {:#x} is not managed by the frame allocator",
                frame.start_address().as_u64()
            ),
            Error::NotAccessible(frame) => write!(
                f,
                "frame {:#x} is not accessible through the physical-memory window",
                frame.start_address().as_u64()
            ),
        }
    }
}

/// A bitmap allocator of 4 KiB frames.
///
/// Two bitmaps of one bit per frame, from frame 0 up to the highest RAM
/// frame, live in frames carved from RAM at construction:
/// - `used`: set when the frame is not available, because it is allocated
///   or because the allocator does not manage it. `alloc` only has to find a
///   clear bit, so it skips whole words of unavailable frames at once.
/// - `managed`: set for the frames this allocator hands out. It separates a
///   double free from the free of a frame that was never ours.
///
/// The bitmap's own frames are neither managed nor ever handed out; see
/// [`FrameAllocator::bitmap_range`].
pub struct FrameAllocator {
    /// `2 * words` words: `used` followed by `managed`.
    bitmap: NonNull<u64>,
    words: usize,
    /// Frame indices `0..frames` are covered by the bitmaps.
    frames: u64,
    bitmap_range: Range,
    /// The word where the last allocation was found. Allocation continues from
    /// there (next fit), which keeps `alloc` fast and delays the reuse of a
    /// freed frame, making a use after free more likely to show.
    cursor: usize,
    free: u64,
    managed: u64,
    fail_after: Option<u64>,
    /// How many injected failures `alloc` has returned: a caller that
    /// retries can absorb one, so "nobody saw it" and "it never fired" need
    /// telling apart.
    injected: u64,
}

// SAFETY: the bitmap memory is owned by the allocator alone: its frames were
// carved out at construction, are never handed out and are not managed, so
// no other code names them, and `new`'s caller promised they stay valid for
// the allocator's life. Moving the allocator to another CPU moves that
// ownership with it; nothing is tied to the constructing CPU.
unsafe impl Send for FrameAllocator {}

// SAFETY: the methods taking `&self` only read the bitmap; every write goes
// through `&mut self`. Shared references therefore never race with a write,
// exactly as for a `Box<[u64]>` field.
unsafe impl Sync for FrameAllocator {}

impl FrameAllocator {
    /// Builds the allocator from the memory map and the ranges that must never
    /// be handed out (kernel image, boot structures, ACPI tables...).
    ///
    /// A frame is managed only when it lies wholly inside one `Ram` entry, at
    /// or above [`LOW_MEMORY_END`], and no non-`Ram` entry and no reserved
    /// range touches any of its bytes. Overlapping entries thus never let a
    /// byte the firmware also called non-RAM through. The bitmap is placed at
    /// the lowest run of such frames that is big enough and reachable through
    /// `mem`; those frames are then withdrawn. Reachability is only tried
    /// where a run can begin (`LOW_MEMORY_END`, the start of a `Ram` entry,
    /// the end of a blocker), which suffices because `mem` must reach all of
    /// RAM anyway for the frames to be usable.
    ///
    /// # Safety
    ///
    /// The memory `mem` exposes for the map's RAM must stay valid, at the same
    /// addresses, for as long as the allocator is used: it keeps a pointer to
    /// the bitmap it carved. Nothing else may access the frames it manages
    /// except through frames it has handed out.
    pub unsafe fn new(
        mem: &impl PhysMemory,
        map: &[MemoryRegion],
        reserved: &[Range],
    ) -> Result<Self, Error> {
        let blockers = Blockers { map, reserved };
        let low = LOW_MEMORY_END.as_u64() / FRAME_SIZE;
        let frames = map
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .map(ram_frames)
            .filter(|&(s, e)| e > s.max(low))
            .map(|(_, e)| e)
            .max()
            .unwrap_or(0);
        if frames == 0 || blockers.lowest_run(low, 1, |_| Some(())).is_none() {
            return Err(Error::NoUsableRam);
        }

        // `frames < 2^40` (RAM is clamped to 52 bits), so none of this
        // overflows and `words` fits a usize on x86-64.
        let words = frames.div_ceil(BITS_PER_WORD);
        let bytes = 2 * words * 8;
        let bitmap_frames = bytes.div_ceil(FRAME_SIZE);
        let too_big = Error::BitmapDoesNotFit { bytes };
        let words = usize::try_from(words).map_err(|_| too_big)?;
        let len = usize::try_from(bytes).map_err(|_| too_big)?;

        let (first, ptr) = blockers
            .lowest_run(low, bitmap_frames, |first| {
                let p = mem.ptr(frame_addr(first), len)?;
                p.cast::<u64>().is_aligned().then_some(p)
            })
            .ok_or(too_big)?;
        let bitmap = NonNull::new(ptr.cast::<u64>()).ok_or(too_big)?;
        let bitmap_range = Range {
            start: frame_addr(first),
            end: frame_addr(first + bitmap_frames),
        };

        let mut fa = FrameAllocator {
            bitmap,
            words,
            frames,
            bitmap_range,
            cursor: 0,
            free: 0,
            managed: 0,
            fail_after: None,
            injected: 0,
        };
        let (used, managed) = fa.bitmaps_mut();
        used.fill(!0);
        managed.fill(0);
        for r in map.iter().filter(|r| r.kind == RegionKind::Ram) {
            let (s, e) = ram_frames(r);
            fa.mark(s, e, true);
        }
        for r in map.iter().filter(|r| r.kind != RegionKind::Ram) {
            let (s, e) = touched_frames(r.start.as_u64(), r.end_u64());
            fa.mark(s, e, false);
        }
        for r in reserved {
            let (s, e) = touched_frames(r.start.as_u64(), r.end.as_u64());
            fa.mark(s, e, false);
        }
        fa.mark(0, low, false);
        fa.mark(first, first + bitmap_frames, false);

        let (_, managed) = fa.bitmaps();
        let count = managed.iter().map(|w| u64::from(w.count_ones())).sum();
        if count == 0 {
            return Err(Error::NoUsableRam);
        }
        fa.managed = count;
        fa.free = count;
        Ok(fa)
    }

    /// Allocates one frame. Its contents are whatever was there before.
    pub fn alloc(&mut self) -> Result<PhysFrame, Error> {
        if self.fail_after == Some(0) {
            // One injected failure, then normal service: the test that asked
            // for it checks that the error path recovers.
            self.fail_after = None;
            self.injected += 1;
            return Err(Error::OutOfFrames);
        }
        if self.free == 0 {
            return Err(Error::OutOfFrames);
        }
        let cursor = self.cursor;
        let (used, _) = self.bitmaps_mut();
        let found = (cursor..used.len())
            .chain(0..cursor)
            .find(|&i| used[i] != !0)
            .map(|i| {
                let bit = used[i].trailing_ones();
                used[i] |= 1 << bit;
                (i, bit)
            });
        let Some((i, bit)) = found else {
            // Unreachable while `free` is kept in step with the bitmap.
            return Err(Error::OutOfFrames);
        };
        self.cursor = i;
        self.free -= 1;
        if let Some(n) = self.fail_after.as_mut() {
            *n -= 1;
        }
        Ok(frame_at(i as u64 * BITS_PER_WORD + u64::from(bit)))
    }

    /// Allocates one frame and fills it with zeroes through `mem`.
    pub fn alloc_zeroed(&mut self, mem: &impl PhysMemory) -> Result<PhysFrame, Error> {
        let frame = self.alloc()?;
        let Some(p) = mem.ptr(frame.start_address(), FRAME_SIZE as usize) else {
            self.free(frame)?;
            return Err(Error::NotAccessible(frame));
        };
        // SAFETY: `mem` promised 4096 writable bytes at `p`, and the frame was
        // just allocated, so nothing else uses it.
        unsafe { p.write_bytes(0, FRAME_SIZE as usize) };
        Ok(frame)
    }

    /// Allocates one 2 MiB frame: 512 contiguous free frames from a 2 MiB
    /// boundary, found as eight whole free bitmap words. Counts as one
    /// allocation for [`set_fail_after`](Self::set_fail_after).
    pub fn alloc_2m(&mut self) -> Result<PhysFrame<Size2MiB>, Error> {
        const WORDS: usize = (512 / BITS_PER_WORD) as usize;
        if self.fail_after == Some(0) {
            self.fail_after = None;
            return Err(Error::OutOfFrames);
        }
        if self.free < 512 {
            return Err(Error::OutOfFrames);
        }
        let (used, _) = self.bitmaps_mut();
        // A used bit is set for every frame that is not managed, so eight
        // zero words are 512 managed, free frames.
        let found = (0..used.len() / WORDS)
            .map(|b| b * WORDS)
            .find(|&i| used[i..i + WORDS].iter().all(|&w| w == 0));
        let Some(i) = found else {
            return Err(Error::OutOfFrames);
        };
        used[i..i + WORDS].fill(!0);
        self.free -= 512;
        if let Some(n) = self.fail_after.as_mut() {
            *n -= 1;
        }
        Ok(PhysFrame::containing_address(frame_addr(
            i as u64 * BITS_PER_WORD,
        )))
    }

    /// [`alloc_2m`](Self::alloc_2m), zeroed through `mem`.
    pub fn alloc_zeroed_2m(&mut self, mem: &impl PhysMemory) -> Result<PhysFrame<Size2MiB>, Error> {
        const BYTES: usize = 2 << 20;
        let frame = self.alloc_2m()?;
        let Some(p) = mem.ptr(frame.start_address(), BYTES) else {
            self.free_2m(frame)?;
            return Err(Error::NotAccessible(PhysFrame::containing_address(
                frame.start_address(),
            )));
        };
        // SAFETY: `mem` promised 2 MiB of writable bytes at `p`, and the
        // frames were just allocated, so nothing else uses them.
        unsafe { p.write_bytes(0, BYTES) };
        Ok(frame)
    }

    /// Returns a frame from [`alloc_2m`](Self::alloc_2m). Every one of its
    /// 512 frames must be allocated; otherwise nothing is freed and the
    /// error names the first that is not.
    pub fn free_2m(&mut self, frame: PhysFrame<Size2MiB>) -> Result<(), Error> {
        let first = frame_index(PhysFrame::containing_address(frame.start_address()));
        for idx in first..first + 512 {
            let f = frame_at(idx);
            if !self.is_managed(f) {
                return Err(Error::NotManaged(f));
            }
            if !self.is_allocated(f) {
                return Err(Error::DoubleFree(f));
            }
        }
        let (used, _) = self.bitmaps_mut();
        let w = (first / BITS_PER_WORD) as usize;
        used[w..w + 8].fill(0);
        self.free += 512;
        Ok(())
    }

    /// Returns a frame from [`alloc`](Self::alloc) to the free pool.
    pub fn free(&mut self, frame: PhysFrame) -> Result<(), Error> {
        let idx = frame_index(frame);
        if !self.is_managed(frame) {
            return Err(Error::NotManaged(frame));
        }
        let (word, mask) = word_mask(idx);
        let (used, _) = self.bitmaps_mut();
        if used[word] & mask == 0 {
            return Err(Error::DoubleFree(frame));
        }
        used[word] &= !mask;
        self.free += 1;
        Ok(())
    }

    /// Whether `frame` is managed and currently allocated.
    pub fn is_allocated(&self, frame: PhysFrame) -> bool {
        let (word, mask) = word_mask(frame_index(frame));
        self.is_managed(frame) && self.bitmaps().0[word] & mask != 0
    }

    /// Whether `frame` is one this allocator hands out (allocated or not).
    pub fn is_managed(&self, frame: PhysFrame) -> bool {
        let idx = frame_index(frame);
        let (word, mask) = word_mask(idx);
        idx < self.frames && self.bitmaps().1[word] & mask != 0
    }

    /// Frames available for allocation now.
    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// Frames this allocator hands out, allocated or not.
    pub fn managed_frames(&self) -> u64 {
        self.managed
    }

    /// Where the bitmap lives; the kernel must keep it mapped.
    pub fn bitmap_range(&self) -> Range {
        self.bitmap_range
    }

    /// Fault injection: after `n` more successful allocations, the next
    /// `alloc` fails once with [`Error::OutOfFrames`]; `None` disarms.
    /// Only `alloc` (and `alloc_zeroed`) calls count.
    pub fn set_fail_after(&mut self, n: Option<u64>) {
        self.fail_after = n;
    }

    /// How many injected failures have fired since the allocator was built.
    pub fn injected_failures(&self) -> u64 {
        self.injected
    }

    /// Whether an injected failure is armed and has not fired yet.
    pub fn failure_armed(&self) -> bool {
        self.fail_after.is_some()
    }

    fn bitmaps(&self) -> (&[u64], &[u64]) {
        // SAFETY: `bitmap` points to `2 * words` aligned, initialised words
        // that only this allocator accesses (see `new`'s contract), and
        // `&self` excludes writers for the borrow's life.
        let all = unsafe { core::slice::from_raw_parts(self.bitmap.as_ptr(), 2 * self.words) };
        all.split_at(self.words)
    }

    fn bitmaps_mut(&mut self) -> (&mut [u64], &mut [u64]) {
        // SAFETY: as in `bitmaps`; `&mut self` makes this the only borrow.
        // Before `new` fills the words, they hold integers of unknown value,
        // which is still a valid `u64`.
        let all = unsafe { core::slice::from_raw_parts_mut(self.bitmap.as_ptr(), 2 * self.words) };
        all.split_at_mut(self.words)
    }

    /// Marks frames `[start, end)` (clamped to the bitmap) as managed and free,
    /// or as unmanaged and unavailable.
    fn mark(&mut self, start: u64, end: u64, usable: bool) {
        let end = end.min(self.frames);
        let (used, managed) = self.bitmaps_mut();
        let mut idx = start;
        while idx < end {
            let (word, _) = word_mask(idx);
            let lo = idx % BITS_PER_WORD;
            let hi = (end - (idx - lo)).min(BITS_PER_WORD);
            let mask = bits(lo, hi);
            if usable {
                used[word] &= !mask;
                managed[word] |= mask;
            } else {
                used[word] |= mask;
                managed[word] &= !mask;
            }
            idx += hi - lo;
        }
    }
}

// SAFETY: `alloc` hands out each managed frame at most once until it is freed,
// and never a frame outside RAM, in low memory, reserved, or in the bitmap.
unsafe impl x86_64::structures::paging::FrameAllocator<Size4KiB> for FrameAllocator {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.alloc().ok()
    }
}

impl fmt::Debug for FrameAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameAllocator")
            .field("managed", &self.managed)
            .field("free", &self.free)
            .field("bitmap", &self.bitmap_range)
            .finish_non_exhaustive()
    }
}

/// The map entries and reserved ranges that keep a frame from being managed.
struct Blockers<'a> {
    map: &'a [MemoryRegion],
    reserved: &'a [Range],
}

impl Blockers<'_> {
    /// Whether frames `[s, e)` all lie in one `Ram` entry and none is touched
    /// by a non-`Ram` entry or a reserved range.
    fn usable_run(&self, s: u64, e: u64) -> bool {
        let in_ram = self
            .map
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .any(|r| {
                let (rs, re) = ram_frames(r);
                rs <= s && e <= re
            });
        let overlaps = |(bs, be): (u64, u64)| bs < e && s < be;
        in_ram
            && !self
                .map
                .iter()
                .filter(|r| r.kind != RegionKind::Ram)
                .any(|r| overlaps(touched_frames(r.start.as_u64(), r.end_u64())))
            && !self
                .reserved
                .iter()
                .any(|r| overlaps(touched_frames(r.start.as_u64(), r.end.as_u64())))
    }

    /// The lowest frame `first >= low` such that `[first, first + n)` is a
    /// usable run and `accept(first)` returns `Some`.
    ///
    /// The lowest such run starts at `low`, at the first frame of a `Ram`
    /// entry, or right after a blocker: one frame lower would either leave
    /// that `Ram` entry or touch the blocker that ends there. So those starts
    /// are the only candidates.
    fn lowest_run<T>(
        &self,
        low: u64,
        n: u64,
        mut accept: impl FnMut(u64) -> Option<T>,
    ) -> Option<(u64, T)> {
        let ram_starts = self
            .map
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .map(|r| ram_frames(r).0);
        let after_regions = self
            .map
            .iter()
            .filter(|r| r.kind != RegionKind::Ram)
            .map(|r| touched_frames(r.start.as_u64(), r.end_u64()).1);
        let after_reserved = self
            .reserved
            .iter()
            .map(|r| touched_frames(r.start.as_u64(), r.end.as_u64()).1);
        let mut best: Option<(u64, T)> = None;
        for first in core::iter::once(low)
            .chain(ram_starts)
            .chain(after_regions)
            .chain(after_reserved)
        {
            let Some(end) = first.checked_add(n) else {
                continue;
            };
            if first < low || best.as_ref().is_some_and(|(b, _)| *b <= first) {
                continue;
            }
            if !self.usable_run(first, end) {
                continue;
            }
            if let Some(t) = accept(first) {
                best = Some((first, t));
            }
        }
        best
    }
}

/// The frames wholly inside a `Ram` entry (page-aligned inward), clamped to
/// the physical address space, as `[first, end)` frame indices.
fn ram_frames(r: &MemoryRegion) -> (u64, u64) {
    let start = r.start.as_u64().div_ceil(FRAME_SIZE);
    let end = r.end_u64().min(PHYS_ADDR_LIMIT) / FRAME_SIZE;
    (start, end.max(start))
}

/// The frames that bytes `[start, end)` touch (page-aligned outward).
fn touched_frames(start: u64, end: u64) -> (u64, u64) {
    if end <= start {
        return (0, 0);
    }
    (start / FRAME_SIZE, end.div_ceil(FRAME_SIZE))
}

fn bits(lo: u64, hi: u64) -> u64 {
    let upto_hi = if hi == BITS_PER_WORD {
        !0
    } else {
        (1u64 << hi) - 1
    };
    upto_hi & !((1u64 << lo) - 1)
}

fn word_mask(idx: u64) -> (usize, u64) {
    // Only ever called with `idx < 2^40` (frames of 52-bit addresses), or the
    // result is used after an `idx < frames` check that short-circuits.
    ((idx / BITS_PER_WORD) as usize, 1 << (idx % BITS_PER_WORD))
}

fn frame_index(frame: PhysFrame) -> u64 {
    frame.start_address().as_u64() / FRAME_SIZE
}

/// The address of frame `idx`; callers pass indices below `2^40`, so the
/// address has at most 52 bits and `PhysAddr::new` cannot panic.
fn frame_addr(idx: u64) -> PhysAddr {
    PhysAddr::new(idx * FRAME_SIZE)
}

fn frame_at(idx: u64) -> PhysFrame {
    PhysFrame::containing_address(frame_addr(idx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::fake::FakeRam;
    use std::collections::HashSet;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;

    /// An allocator with the fake RAM it points into. The allocator is declared
    /// first so it is dropped before the RAM it borrows.
    struct Machine {
        fa: FrameAllocator,
        ram: FakeRam,
    }

    fn try_machine(
        ram: FakeRam,
        map: &[MemoryRegion],
        reserved: &[Range],
    ) -> Result<Machine, Error> {
        // SAFETY: the allocator lives in the same `Machine` as `ram`, is dropped
        // before it, and `FakeRam` keeps its pages at a fixed heap address
        // when moved.
        let fa = unsafe { FrameAllocator::new(&ram, map, reserved) }?;
        Ok(Machine { fa, ram })
    }

    fn machine(ram: FakeRam, map: &[MemoryRegion], reserved: &[Range]) -> Machine {
        try_machine(ram, map, reserved).expect("test map should be valid")
    }

    fn region(start: u64, len: u64, kind: RegionKind) -> MemoryRegion {
        MemoryRegion {
            start: PhysAddr::new(start),
            len,
            kind,
        }
    }

    fn range(start: u64, end: u64) -> Range {
        Range {
            start: PhysAddr::new(start),
            end: PhysAddr::new(end),
        }
    }

    fn frame(addr: u64) -> PhysFrame {
        PhysFrame::from_start_address(PhysAddr::new(addr)).unwrap()
    }

    fn drain(fa: &mut FrameAllocator) -> Vec<PhysFrame> {
        let mut out = Vec::new();
        while let Ok(f) = fa.alloc() {
            out.push(f);
        }
        assert_eq!(fa.alloc(), Err(Error::OutOfFrames));
        out
    }

    /// The rule from the brief, checked byte range by byte range, with no
    /// bitmap and no cleverness.
    fn reference_usable(map: &[MemoryRegion], reserved: &[Range], addr: u64) -> bool {
        let (s, e) = (addr, addr + FRAME_SIZE);
        let in_one_ram = map
            .iter()
            .any(|r| r.kind == RegionKind::Ram && r.start.as_u64() <= s && e <= r.end_u64());
        let touched = |rs: u64, re: u64| rs < e && s < re;
        s >= LOW_MEMORY_END.as_u64()
            && in_one_ram
            && !map
                .iter()
                .any(|r| r.kind != RegionKind::Ram && touched(r.start.as_u64(), r.end_u64()))
            && !reserved
                .iter()
                .any(|r| touched(r.start.as_u64(), r.end.as_u64()))
    }

    /// Allocates everything and checks it is exactly the reference set minus
    /// the bitmap's frames.
    fn check_against_reference(map: &[MemoryRegion], reserved: &[Range], ram: FakeRam) {
        let top = ram.base() + ram.len() as u64;
        let mut m = machine(ram, map, reserved);
        let bitmap = m.fa.bitmap_range();
        assert!(!bitmap.is_empty());
        let expected: HashSet<u64> = (0..top / FRAME_SIZE)
            .map(|i| i * FRAME_SIZE)
            .filter(|&a| reference_usable(map, reserved, a))
            .filter(|&a| !bitmap.contains(PhysAddr::new(a)))
            .collect();
        // The bitmap must itself sit on frames the rule allows.
        for a in (bitmap.start.as_u64()..bitmap.end.as_u64()).step_by(FRAME_SIZE as usize) {
            assert!(
                reference_usable(map, reserved, a),
                "bitmap on forbidden frame {a:#x}"
            );
        }
        assert_eq!(m.fa.managed_frames(), expected.len() as u64);
        let got: Vec<u64> = drain(&mut m.fa)
            .iter()
            .map(|f| f.start_address().as_u64())
            .collect();
        let got_set: HashSet<u64> = got.iter().copied().collect();
        assert_eq!(got.len(), got_set.len(), "a frame was handed out twice");
        assert_eq!(got_set, expected);
        assert_eq!(m.fa.free_frames(), 0);
    }

    /// 2 MiB frames: aligned, 512 free frames each, refused when no
    /// aligned run is free, given back whole; a free of a frame whose
    /// frames are not all allocated changes nothing.
    #[test]
    fn two_mib_frames() {
        // RAM from 1 MiB to 10 MiB: the bitmap takes the first frames at
        // 1 MiB, so the aligned 2 MiB runs are at 2, 4, 6 and 8 MiB.
        let ram = FakeRam::new(0, (10 * MIB) as usize);
        let mut m = machine(ram, &[region(MIB, 9 * MIB, RegionKind::Ram)], &[]);
        let free = m.fa.free_frames();
        let a = m.fa.alloc_zeroed_2m(&m.ram).unwrap();
        assert_eq!(a.start_address().as_u64() % (2 * MIB), 0);
        assert_eq!(m.fa.free_frames(), free - 512);
        let mut got = vec![a];
        while let Ok(f) = m.fa.alloc_2m() {
            got.push(f);
        }
        assert_eq!(got.len(), 4, "{got:?}");
        // Give one run back, then take 4 KiB frames until one lands in it:
        // no aligned run is whole any more.
        let last = got.pop().unwrap();
        m.fa.free_2m(last).unwrap();
        let inside = |f: PhysFrame| {
            let a = f.start_address().as_u64();
            let base = last.start_address().as_u64();
            (base..base + 2 * MIB).contains(&a)
        };
        let mut small = Vec::new();
        let taken = loop {
            let f = m.fa.alloc().unwrap();
            small.push(f);
            if inside(f) {
                break f;
            }
        };
        assert_eq!(m.fa.alloc_2m(), Err(Error::OutOfFrames));
        // A 2 MiB free of a run that is only partly allocated is refused
        // naming its first free frame, and changes nothing.
        let base = last.start_address().as_u64();
        let first_free = if taken.start_address().as_u64() == base {
            base + 4096
        } else {
            base
        };
        let before = m.fa.free_frames();
        assert_eq!(
            m.fa.free_2m(last),
            Err(Error::DoubleFree(frame(first_free)))
        );
        assert_eq!(m.fa.free_frames(), before);
        for f in small {
            m.fa.free(f).unwrap();
        }
        for f in got {
            m.fa.free_2m(f).unwrap();
        }
        assert!(matches!(m.fa.free_2m(a), Err(Error::DoubleFree(_))));
        m.fa.set_fail_after(Some(0));
        assert_eq!(m.fa.alloc_2m(), Err(Error::OutOfFrames));
        assert!(m.fa.alloc_2m().is_ok());
    }

    #[test]
    fn region_kinds_follow_e820() {
        assert_eq!(RegionKind::from_e820(1), RegionKind::Ram);
        assert_eq!(RegionKind::from_e820(2), RegionKind::Reserved);
        assert_eq!(RegionKind::from_e820(3), RegionKind::Acpi);
        assert_eq!(RegionKind::from_e820(4), RegionKind::Nvs);
        assert_eq!(RegionKind::from_e820(5), RegionKind::Unusable);
        assert_eq!(RegionKind::from_e820(7), RegionKind::Other(7));
        assert_eq!(RegionKind::from_e820(0), RegionKind::Other(0));
        assert_eq!(RegionKind::Other(7).to_string(), "type 7");
        assert_eq!(RegionKind::Nvs.to_string(), "nvs");
    }

    #[test]
    fn ram_bytes_sums_only_ram() {
        let map = [
            region(0, 0x9fc00, RegionKind::Ram),
            region(0xf0000, 0x10000, RegionKind::Reserved),
            region(MIB, 3 * MIB, RegionKind::Ram),
        ];
        assert_eq!(ram_bytes(&map), 0x9fc00 + 3 * MIB);
        assert_eq!(
            ram_bytes(&[region(0, u64::MAX, RegionKind::Ram); 2]),
            u64::MAX
        );
    }

    #[test]
    fn range_helpers() {
        assert_eq!(
            Range::from_len(PhysAddr::new(0x1000), 0x1000),
            Some(range(0x1000, 0x2000))
        );
        assert_eq!(Range::from_len(PhysAddr::new(0x1000), u64::MAX), None);
        assert_eq!(
            Range::from_len(PhysAddr::new(0x1000), PHYS_ADDR_LIMIT),
            None
        );
        let r = range(0x1000, 0x2000);
        assert!(r.contains(PhysAddr::new(0x1fff)) && !r.contains(PhysAddr::new(0x2000)));
        assert!(r.overlaps(&range(0x1fff, 0x3000)) && !r.overlaps(&range(0x2000, 0x3000)));
        assert_eq!(r.to_string(), "[0x1000-0x2000)");
    }

    #[test]
    fn typical_pc_map() {
        let map = [
            region(0, 0x9fc00, RegionKind::Ram),
            region(0x9fc00, 0x400, RegionKind::Reserved),
            region(0xf0000, 0x10000, RegionKind::Reserved),
            region(MIB, 3 * MIB - 0x3000, RegionKind::Ram),
            region(4 * MIB - 0x3000, 0x3000, RegionKind::Acpi),
        ];
        // The kernel image at 1 MiB and a boot structure in the middle.
        let reserved = [range(MIB, MIB + 0x23456), range(0x200100, 0x200200)];
        check_against_reference(&map, &reserved, FakeRam::new(0, 4 * MIB as usize));
    }

    #[test]
    fn never_hands_out_low_memory_even_if_map_says_ram() {
        let map = [region(0, 2 * MIB, RegionKind::Ram)];
        let mut m = machine(FakeRam::new(0, 2 * MIB as usize), &map, &[]);
        let got = drain(&mut m.fa);
        assert_eq!(got.len() as u64, MIB / FRAME_SIZE - 1); // minus the bitmap frame
        assert!(got.iter().all(|f| f.start_address() >= LOW_MEMORY_END));
        assert!(m.fa.bitmap_range().start >= LOW_MEMORY_END);
        check_against_reference(&map, &[], FakeRam::new(0, 2 * MIB as usize));
    }

    #[test]
    fn partial_pages_are_not_used() {
        let map = [
            region(MIB + 0x800, 0x4800, RegionKind::Ram),
            region(MIB + 0x10001, 0x3000, RegionKind::Ram),
        ];
        let mut m = machine(FakeRam::new(MIB, MIB as usize), &map, &[]);
        // First entry: frames 0x101000..0x105000, one of which holds the
        // bitmap. Second: 0x111000..0x113000 (0x113001 is not a whole frame).
        assert_eq!(m.fa.bitmap_range(), range(MIB + 0x1000, MIB + 0x2000));
        let mut got: Vec<u64> = drain(&mut m.fa)
            .iter()
            .map(|f| f.start_address().as_u64())
            .collect();
        got.sort();
        assert_eq!(got, [0x102000, 0x103000, 0x104000, 0x111000, 0x112000]);
    }

    #[test]
    fn overlapping_entries_never_let_non_ram_through() {
        let map = [
            region(MIB, 3 * MIB, RegionKind::Ram),
            // Firmware bugs: non-RAM inside RAM, a RAM duplicate over
            // reserved memory, and an unaligned NVS entry straddling frames.
            region(0x180800, 0x100, RegionKind::Reserved),
            region(0x180000, 0x3000, RegionKind::Ram),
            region(0x2ff000, 0x1001, RegionKind::Nvs),
            region(0x350000, 0x2000, RegionKind::Other(12)),
            region(0x3ff000, 0x10000, RegionKind::Unusable),
            region(0x200000, 0, RegionKind::Reserved),
        ];
        check_against_reference(&map, &[], FakeRam::new(MIB, 3 * MIB as usize));

        let mut m = machine(FakeRam::new(MIB, 3 * MIB as usize), &map, &[]);
        for addr in [0x180000, 0x2ff000, 0x300000, 0x350000, 0x351000, 0x3ff000] {
            assert!(
                !m.fa.is_managed(frame(addr)),
                "{addr:#x} must not be managed"
            );
        }
        // A zero-length entry blocks nothing.
        assert!(m.fa.is_managed(frame(0x200000)));
        let got = drain(&mut m.fa);
        assert!(!got.contains(&frame(0x180000)));
    }

    #[test]
    fn reserved_ranges_are_never_handed_out() {
        let map = [region(MIB, 2 * MIB, RegionKind::Ram)];
        let reserved = [
            range(MIB, MIB + 0x10000),
            range(0x180fff, 0x181001),
            range(0x2ff000, 0x300000),
        ];
        let mut m = machine(FakeRam::new(MIB, 2 * MIB as usize), &map, &reserved);
        // The bitmap goes right after the kernel image, not over it.
        assert_eq!(m.fa.bitmap_range(), range(MIB + 0x10000, MIB + 0x11000));
        let got = drain(&mut m.fa);
        for f in &got {
            let fr = range(
                f.start_address().as_u64(),
                f.start_address().as_u64() + FRAME_SIZE,
            );
            assert!(
                !reserved.iter().any(|r| r.overlaps(&fr)),
                "{f:?} is reserved"
            );
        }
        check_against_reference(&map, &reserved, FakeRam::new(MIB, 2 * MIB as usize));
    }

    #[test]
    fn alloc_until_empty_then_free_and_realloc() {
        let map = [region(MIB, 64 * FRAME_SIZE, RegionKind::Ram)];
        let mut m = machine(FakeRam::new(MIB, MIB as usize), &map, &[]);
        assert_eq!(m.fa.managed_frames(), 63);
        let got = drain(&mut m.fa);
        assert_eq!(got.len(), 63);
        assert_eq!(m.fa.free_frames(), 0);
        assert!(got.iter().all(|&f| m.fa.is_allocated(f)));

        // Free an early frame: the cursor sits at the end, so finding it
        // again exercises the wrap-around.
        m.fa.free(got[3]).unwrap();
        assert!(!m.fa.is_allocated(got[3]));
        assert_eq!(m.fa.free_frames(), 1);
        assert_eq!(m.fa.alloc(), Ok(got[3]));
        assert_eq!(m.fa.alloc(), Err(Error::OutOfFrames));
    }

    #[test]
    fn double_free_and_foreign_frames_are_errors() {
        let map = [
            region(0, 0x9f000, RegionKind::Ram),
            region(MIB, MIB, RegionKind::Ram),
        ];
        let reserved = [range(MIB, MIB + 0x2000)];
        let mut m = machine(FakeRam::new(0, 2 * MIB as usize), &map, &reserved);
        let f = m.fa.alloc().unwrap();
        m.fa.free(f).unwrap();
        assert_eq!(m.fa.free(f), Err(Error::DoubleFree(f)));
        let never = frame(0x1ff000);
        assert!(m.fa.is_managed(never) && !m.fa.is_allocated(never));
        assert_eq!(m.fa.free(never), Err(Error::DoubleFree(never)));

        let bitmap = PhysFrame::containing_address(m.fa.bitmap_range().start);
        for foreign in [
            frame(0x1000),
            frame(MIB),
            bitmap,
            frame(2 * MIB),
            frame(1 << 40),
        ] {
            assert_eq!(m.fa.free(foreign), Err(Error::NotManaged(foreign)));
            assert!(!m.fa.is_allocated(foreign));
        }
        let free = m.fa.free_frames();
        assert_eq!(
            free,
            m.fa.managed_frames(),
            "failed frees must not change the count"
        );
        assert_eq!(
            Error::DoubleFree(f).to_string(),
            format!(
                "double free of frame {:#x} (it is not allocated)",
                f.start_address().as_u64()
            )
        );
    }

    #[test]
    fn alloc_zeroed_zeroes() {
        let map = [region(MIB, MIB, RegionKind::Ram)];
        let ram = FakeRam::new(MIB, MIB as usize);
        ram.write(MIB, &vec![0xaa; MIB as usize]);
        let mut m = machine(ram, &map, &[]);
        let dirty = m.fa.alloc().unwrap();
        assert_eq!(
            m.ram.read_u64(dirty.start_address()),
            Some(0xaaaa_aaaa_aaaa_aaaa)
        );
        let f = m.fa.alloc_zeroed(&m.ram).unwrap();
        let mut buf = vec![0xffu8; FRAME_SIZE as usize];
        m.ram.read(f.start_address(), &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        // Its neighbour is untouched.
        assert_eq!(m.ram.read_u8(f.start_address() + FRAME_SIZE), Some(0xaa));
    }

    #[test]
    fn alloc_zeroed_on_unreachable_frame_returns_it() {
        // RAM claims 2 MiB but the window reaches only the first.
        let map = [region(MIB, 2 * MIB, RegionKind::Ram)];
        let mut m = machine(FakeRam::new(MIB, MIB as usize), &map, &[]);
        let reachable = MIB / FRAME_SIZE - 1; // minus the bitmap
        for _ in 0..reachable {
            m.fa.alloc_zeroed(&m.ram).unwrap();
        }
        let before = m.fa.free_frames();
        let err = m.fa.alloc_zeroed(&m.ram).unwrap_err();
        let Error::NotAccessible(f) = err else {
            panic!("got {err:?}")
        };
        assert_eq!(f, frame(2 * MIB));
        assert!(!m.fa.is_allocated(f));
        assert_eq!(m.fa.free_frames(), before);
    }

    #[test]
    fn fail_after_injects_one_failure() {
        let map = [region(MIB, MIB, RegionKind::Ram)];
        let mut m = machine(FakeRam::new(MIB, MIB as usize), &map, &[]);
        m.fa.set_fail_after(Some(3));
        assert!(m.fa.failure_armed());
        let a = m.fa.alloc().unwrap();
        m.fa.free(a).unwrap(); // frees do not count
        m.fa.alloc().unwrap();
        m.fa.alloc_zeroed(&m.ram).unwrap();
        let free = m.fa.free_frames();
        assert_eq!(m.fa.injected_failures(), 0);
        assert_eq!(m.fa.alloc(), Err(Error::OutOfFrames));
        assert_eq!(m.fa.free_frames(), free);
        assert_eq!(m.fa.injected_failures(), 1);
        assert!(!m.fa.failure_armed());
        assert!(m.fa.alloc().is_ok(), "the injected failure happens once");

        m.fa.set_fail_after(Some(0));
        assert_eq!(m.fa.alloc(), Err(Error::OutOfFrames));
        assert_eq!(m.fa.injected_failures(), 2);
        m.fa.set_fail_after(Some(1));
        m.fa.set_fail_after(None);
        assert!(!m.fa.failure_armed());
        for _ in 0..10 {
            m.fa.alloc().unwrap();
        }
        assert_eq!(m.fa.injected_failures(), 2, "disarmed: nothing fired");
    }

    #[test]
    fn bitmap_is_never_handed_out_and_goes_where_reachable() {
        // 16 MiB of RAM needs 1 KiB of bitmap; the window starts at 2 MiB, so
        // the first RAM entry [1 MiB, 2 MiB) cannot hold it.
        let map = [
            region(MIB, MIB, RegionKind::Ram),
            region(2 * MIB, 14 * MIB, RegionKind::Ram),
        ];
        let mut m = machine(FakeRam::new(2 * MIB, 2 * MIB as usize), &map, &[]);
        let bitmap = m.fa.bitmap_range();
        assert_eq!(bitmap, range(2 * MIB, 2 * MIB + FRAME_SIZE));
        let got = drain(&mut m.fa);
        assert_eq!(got.len() as u64, 15 * MIB / FRAME_SIZE - 1);
        assert!(got.iter().all(|f| !bitmap.contains(f.start_address())));
        let bf = PhysFrame::containing_address(bitmap.start);
        assert!(!m.fa.is_managed(bf) && !m.fa.is_allocated(bf));
        // Freeing everything leaves the bitmap intact and consistent.
        for f in got {
            m.fa.free(f).unwrap();
        }
        assert_eq!(m.fa.free_frames(), m.fa.managed_frames());
    }

    #[test]
    fn large_bitmap_spans_several_frames() {
        // 512 MiB of RAM: 131072 frames, 2 x 16 KiB of bitmap, 8 frames.
        let map = [region(MIB, 511 * MIB, RegionKind::Ram)];
        let reserved = [range(MIB, 2 * MIB)];
        let mut m = machine(FakeRam::new(2 * MIB, MIB as usize), &map, &reserved);
        assert_eq!(
            m.fa.bitmap_range(),
            range(2 * MIB, 2 * MIB + 8 * FRAME_SIZE)
        );
        assert_eq!(m.fa.managed_frames(), 510 * MIB / FRAME_SIZE - 8);
        let first = m.fa.alloc().unwrap();
        assert_eq!(first, frame(2 * MIB + 8 * FRAME_SIZE));
    }

    #[test]
    fn construction_errors() {
        let ram = || FakeRam::new(0, 2 * MIB as usize);
        let no_ram: [&[MemoryRegion]; 5] = [
            &[],
            &[region(0, 0x9fc00, RegionKind::Ram)],
            &[region(MIB, MIB, RegionKind::Reserved)],
            &[region(MIB + 1, FRAME_SIZE, RegionKind::Ram)],
            // Only room for the bitmap itself.
            &[region(MIB, FRAME_SIZE, RegionKind::Ram)],
        ];
        for map in no_ram {
            assert_eq!(
                try_machine(ram(), map, &[]).err(),
                Some(Error::NoUsableRam),
                "{map:?}"
            );
        }
        let all_reserved = [range(0, 2 * MIB)];
        let map = [region(MIB, MIB, RegionKind::Ram)];
        assert_eq!(
            try_machine(ram(), &map, &all_reserved).err(),
            Some(Error::NoUsableRam)
        );
        // A tiny RAM entry at 64 GiB asks for a 4 MiB bitmap nobody can hold:
        // 2 bitmaps x 8 bytes x (2^24 + 1 frames / 64, rounded up).
        let map = [
            region(MIB, MIB, RegionKind::Ram),
            region(64 << 30, FRAME_SIZE, RegionKind::Ram),
        ];
        assert_eq!(
            try_machine(ram(), &map, &[]).err(),
            Some(Error::BitmapDoesNotFit {
                bytes: 2 * 8 * ((1 << 24) / 64 + 1)
            })
        );
        // RAM the window cannot reach at all.
        let map = [region(16 * MIB, MIB, RegionKind::Ram)];
        assert!(matches!(
            try_machine(ram(), &map, &[]).err(),
            Some(Error::BitmapDoesNotFit { .. })
        ));
        // Absurd lengths saturate instead of overflowing.
        let map = [region(MIB, u64::MAX, RegionKind::Ram)];
        assert!(matches!(
            try_machine(ram(), &map, &[]).err(),
            Some(Error::BitmapDoesNotFit { .. })
        ));
        assert_eq!(
            Error::BitmapDoesNotFit { bytes: 8 }.to_string(),
            "no free, accessible RAM run of 8 bytes to hold the frame bitmap"
        );
    }

    #[test]
    fn allocator_can_live_in_a_static() {
        fn shareable<T: Send + Sync>() {}
        shareable::<atomic_refcell::AtomicRefCell<Option<FrameAllocator>>>();
        static SLOT: atomic_refcell::AtomicRefCell<Option<FrameAllocator>> =
            atomic_refcell::AtomicRefCell::new(None);
        assert!(SLOT.borrow().is_none());
    }

    /// xorshift64 (Marsaglia 2003): enough randomness for a model check.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_alloc_free_matches_a_set_model() {
        let map = [
            region(0, 0x9fc00, RegionKind::Ram),
            region(MIB, 3 * MIB, RegionKind::Ram),
            region(0x250000, 0x1234, RegionKind::Reserved),
        ];
        let reserved = [range(MIB, MIB + 0x5000)];
        for seed in [1u64, 0x5eed, 0xdead_beef] {
            let mut rng = XorShift(seed);
            let mut m = machine(FakeRam::new(0, 4 * MIB as usize), &map, &reserved);
            let managed = m.fa.managed_frames();
            let mut live: HashSet<PhysFrame> = HashSet::new();
            let mut order: Vec<PhysFrame> = Vec::new();
            for _ in 0..20_000 {
                match rng.next() % 8 {
                    // Alloc more often than free so the pool drains and refills.
                    0..=3 => match m.fa.alloc() {
                        Ok(f) => {
                            assert!(reference_usable(
                                &map,
                                &reserved,
                                f.start_address().as_u64()
                            ));
                            assert!(live.insert(f), "{f:?} handed out twice");
                            order.push(f);
                        }
                        Err(e) => {
                            assert_eq!(e, Error::OutOfFrames);
                            assert_eq!(live.len() as u64, managed);
                        }
                    },
                    4..=6 if !order.is_empty() => {
                        let i = (rng.next() % order.len() as u64) as usize;
                        let f = order.swap_remove(i);
                        assert!(live.remove(&f));
                        m.fa.free(f).unwrap();
                    }
                    _ => {
                        let addr = MIB + (rng.next() % (3 * MIB / FRAME_SIZE)) * FRAME_SIZE;
                        let f = frame(addr);
                        let expect = if !m.fa.is_managed(f) {
                            Err(Error::NotManaged(f))
                        } else if live.contains(&f) {
                            Ok(())
                        } else {
                            Err(Error::DoubleFree(f))
                        };
                        assert_eq!(m.fa.is_allocated(f), live.contains(&f));
                        if expect.is_ok() {
                            live.remove(&f);
                            order.retain(|&g| g != f);
                        }
                        assert_eq!(m.fa.free(f), expect);
                    }
                }
                assert_eq!(m.fa.free_frames(), managed - live.len() as u64);
            }
        }
    }
}
