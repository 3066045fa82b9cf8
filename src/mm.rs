//! The mm API: map, map_anon, unmap, protect, translate, flush and batch
//! scopes over the managed window, batched through each vCPU's queue.
//!
//! # Guarantees
//! - **Batching is the default.** With `pv=batched` (the default) every
//!   vCPU's queue sits in MMU lazy mode from boot, so plain calls are
//!   deferred too; [`batch`] opens an inner scope whose end flushes.
//! - **Visibility.** After [`flush`] returns, or a [`Batch`] guard drops,
//!   every vCPU sees every change this vCPU made before it. A pending map
//!   becomes visible on first touch: the page fault on it flushes this
//!   vCPU's queue and retries the access. A pending unmap is not: until the
//!   flush, the page may still be reachable.
//! - **Frames.** A frame that `unmap` releases stays allocated until the
//!   flush that makes it unreachable has shot down every other vCPU's TLB.
//! - **Errors.** Every call validates all its pages before it changes
//!   anything and returns a [`space::Error`] naming the problem; a failed
//!   call leaves the logical state as it was. We validate up front rather
//!   than report per-entry results (Xen's multicall style) because the
//!   twin tables let validation see pending changes exactly, and a caller
//!   then never has to undo half a batch.
//! - **One vCPU per page at a time.** A page with an unflushed change on
//!   another vCPU gets [`space::Error::PendingOnCpu`].
//!
//! `pv=immediate` is the unmodified-kernel baseline: the queue stays out of
//! lazy mode, so each entry is applied at once with its own invalidation and
//! shootdown. A host-drained backend would be a third [`Backend`] whose flush
//! hands the ring to the host in one hypercall; the API above would not change.

use crate::arch::x86_64::{irq, percpu, smp};
use crate::memory::{Identity, TableFrames, FRAMES};
use atomic_refcell::AtomicRefCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use hyperbatch::cmdline::Backend;
use hyperbatch::frames::FrameAllocator;
use hyperbatch::paging::{LeafEntry, Pte};
use hyperbatch::phys::PhysMemory;
use hyperbatch::queue::{
    Applied, Counters, Cr, Entry, Invalidation, Mmu, Queue, Trigger, RING_CAPACITY,
};
use hyperbatch::space::{self, Error, Prot, Space, WINDOW_BASE, WINDOW_SIZE, WINDOW_TABLES};
use hyperbatch::sync::SpinLock;
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

pub use hyperbatch::space::Prot as Protection;

static TWINS: [AtomicU64; WINDOW_TABLES] = [const { AtomicU64::new(0) }; WINDOW_TABLES];
static SPACE: SpinLock<Option<Space<'static, Identity>>> = SpinLock::new(None);
static BACKEND: AtomicU8 = AtomicU8::new(Backend::Batched as u8);
/// Fault injection for the stale-TLB test: flushes skip the shootdown.
static NO_SHOOTDOWN: AtomicBool = AtomicBool::new(false);

/// Each vCPU's queue. Only its own vCPU borrows it, with interrupts masked
/// (`with_mm`), so a borrow never waits; a second borrow on the same vCPU
/// (a fault inside the mm, an IPI handler during a flush) fails instead of
/// aliasing, and the callers treat that as "not now".
static QUEUES: [AtomicRefCell<Queue>; percpu::MAX_CPUS] =
    [const { AtomicRefCell::new(Queue::new()) }; percpu::MAX_CPUS];
static PUBLISHED: [SpinLock<Counters>; percpu::MAX_CPUS] =
    [const { SpinLock::new(Counters::ZERO) }; percpu::MAX_CPUS];

/// Sets up the window and every vCPU's queue. Boot CPU, before any other
/// CPU uses the mm.
pub fn init(backend: Backend, no_shootdown: bool) {
    // SAFETY: the kernel root is live; the window's PML4 slot is unused by
    // the kernel's own mappings (memory.rs maps the identity region and
    // stacks.rs the top slot); TWINS is zeroed and only the space uses it.
    let space = unsafe { Space::new(&Identity, crate::memory::root(), &TWINS) };
    *SPACE.lock() = Some(space);
    NO_SHOOTDOWN.store(no_shootdown, Ordering::Relaxed);
    set_backend_all(backend);
    crate::arch::x86_64::interrupts::set_page_fault_hook(on_page_fault);
}

/// Switches every vCPU's queue to `backend`. Only while the other CPUs are
/// idle (benchmarks and tests switch between runs).
pub fn set_backend(backend: Backend) {
    flush();
    set_backend_all(backend);
}

fn set_backend_all(backend: Backend) {
    BACKEND.store(backend as u8, Ordering::Release);
    for q in &QUEUES {
        // Boot, or between benchmark runs with the other vCPUs idle: a queue
        // borrowed now would be a vCPU inside the mm, a bug worth a panic.
        let mut q = q.borrow_mut();
        let lazy = backend == Backend::Batched;
        while q.in_lazy_mmu() != lazy {
            if lazy {
                q.enter_lazy_mmu();
            } else {
                // Only the owner may flush its queue: one that still holds
                // entries means a vCPU left work pending, and switching would
                // lose it. set_backend flushes this CPU's own first.
                assert!(
                    q.is_empty(),
                    "set_backend with entries pending in another vCPU's queue"
                );
                let _ = q.leave_lazy_mmu(&mut NoopMmu);
            }
        }
    }
}

pub fn backend() -> Backend {
    if BACKEND.load(Ordering::Acquire) == Backend::Immediate as u8 {
        Backend::Immediate
    } else {
        Backend::Batched
    }
}

/// The privileged operations of a flush, done for real.
struct KernelMmu<'a> {
    space: &'a mut Space<'static, Identity>,
    me: usize,
    written: heapless::Vec<Page, RING_CAPACITY>,
}

impl Mmu for KernelMmu<'_> {
    fn apply_pte(&mut self, page: Page, entry: LeafEntry, value: Pte) -> Applied {
        // Cannot overflow: one flush applies at most RING_CAPACITY entries.
        // Duplicates are fine: clearing a mark twice is a no-op.
        let _ = self.written.push(page);
        self.space.apply(entry, value)
    }

    fn writes_done(&mut self) {
        for p in self.written.drain(..) {
            self.space.clear_pending(p, self.me);
        }
    }

    fn invlpg(&mut self, page: Page) {
        x86_64::instructions::tlb::flush(page.start_address());
    }

    fn flush_all(&mut self) {
        reload_cr3();
    }

    fn shootdown(&mut self, inv: &Invalidation) -> u32 {
        if NO_SHOOTDOWN.load(Ordering::Relaxed) {
            return 0;
        }
        smp::call(
            "TLB shootdown",
            smp::tlb_targets(),
            shootdown_handler,
            inv as *const Invalidation as u64,
        )
    }

    fn write_cr(&mut self, reg: Cr, value: u64) {
        write_cr_now(reg, value);
    }

    fn release(&mut self, frame: PhysFrame) {
        if let Some(f) = FRAMES.lock().as_mut() {
            if let Err(e) = f.free(frame) {
                log::error!("mm released a frame the allocator refused: {e}");
            }
        }
    }
}

/// For leaving lazy mode on an empty queue (backend switch).
struct NoopMmu;
impl Mmu for NoopMmu {
    fn apply_pte(&mut self, _: Page, _: LeafEntry, _: Pte) -> Applied {
        unreachable!("flushing an empty queue writes nothing")
    }
    fn writes_done(&mut self) {}
    fn invlpg(&mut self, _: Page) {}
    fn flush_all(&mut self) {}
    fn shootdown(&mut self, _: &Invalidation) -> u32 {
        0
    }
    fn write_cr(&mut self, _: Cr, _: u64) {}
    fn release(&mut self, _: PhysFrame) {}
}

fn reload_cr3() {
    let (frame, flags) = Cr3::read();
    // SAFETY: reloading the current root changes no mapping; it drops every
    // non-global TLB entry, which is the point.
    unsafe { Cr3::write(frame, flags) };
}

/// Runs on a target vCPU in its IPI handler: repeat the sender's invalidation.
fn shootdown_handler(arg: u64) {
    // SAFETY: the sender keeps the Invalidation alive until every target has
    // acknowledged, and acknowledgement comes after this returns.
    let inv = unsafe { &*(arg as *const Invalidation) };
    match inv {
        Invalidation::Pages(pages) => {
            for p in pages {
                x86_64::instructions::tlb::flush(p.start_address());
            }
        }
        Invalidation::All => reload_cr3(),
    }
}

fn write_cr_now(reg: Cr, value: u64) {
    // SAFETY: the queue's callers only write values derived from the
    // registers' current contents (benchmarks toggle harmless bits and write
    // back what they read); CR3 is only ever rewritten with the live root.
    unsafe {
        match reg {
            Cr::Cr0 => Cr0::write_raw(value),
            Cr::Cr3 => {
                core::arch::asm!("mov cr3, {}", in(reg) value, options(nostack, preserves_flags))
            }
            Cr::Cr4 => Cr4::write_raw(value),
        }
    }
}

/// Takes the mm lock. While it waits it keeps serving IPIs: the holder may
/// be waiting for this CPU to acknowledge a shootdown.
fn lock_space() -> hyperbatch::sync::SpinGuard<'static, Option<Space<'static, Identity>>> {
    loop {
        if let Some(g) = SPACE.try_lock() {
            return g;
        }
        smp::serve_mailbox();
        core::hint::spin_loop();
    }
}

/// Runs `f` with this vCPU's queue and the mm lock, interrupts masked.
fn with_mm<R>(f: impl FnOnce(&mut Queue, &mut KernelMmu<'_>) -> R) -> R {
    irq::without(|| {
        let me = percpu::cpu_index();
        let mut guard = lock_space();
        let space = guard.as_mut().expect("mm::init ran at boot");
        let mut queue = QUEUES[me].borrow_mut();
        let mut mmu = KernelMmu {
            space,
            me,
            written: heapless::Vec::new(),
        };
        f(&mut queue, &mut mmu)
    })
}

/// Maps `frames` (caller-owned: unmap does not free them) at `va`.
///
/// Frames must be the caller's: RAM the allocator holds as free is refused
/// (`BadFrame`), but a frame the mm owns through another mapping is not
/// detected, and the caller must not pass one.
pub fn map(va: VirtAddr, frames: &[PhysFrame], prot: Prot) -> Result<(), Error> {
    let pages = frames.len() as u64;
    let start = space::check_range(va, pages)?;
    space::pte(PhysFrame::containing_address(PhysAddr::new(0)), prot, false)?; // W+X first
    with_mm(|q, mmu| {
        let mut frames_lock = FRAMES.lock();
        let alloc = frames_lock.as_mut().ok_or(Error::OutOfTables)?;
        // RAM the allocator considers free is nobody's to map: that would be
        // a use after free. Frames it does not manage (the kernel image,
        // MMIO) are the caller's business.
        if let Some(f) = frames
            .iter()
            .find(|f| alloc.is_managed(**f) && !alloc.is_allocated(**f))
        {
            return Err(Error::BadFrame(f.start_address()));
        }
        mmu.space
            .check_unmapped(start, pages, mmu.me, &mut TableFrames(alloc))?;
        drop(frames_lock);
        flush_if_remap(q, mmu, start, pages);
        for (i, f) in frames.iter().enumerate() {
            let value = space::pte(*f, prot, false)?;
            push_pte(q, mmu, start + i as u64, value);
        }
        Ok(())
    })
}

/// Maps `pages` fresh zeroed frames at `va`; unmap gives them back.
pub fn map_anon(va: VirtAddr, pages: u64, prot: Prot) -> Result<(), Error> {
    let start = space::check_range(va, pages)?;
    space::pte(PhysFrame::containing_address(PhysAddr::new(0)), prot, true)?; // W+X first
    with_mm(|q, mmu| {
        {
            let mut frames_lock = FRAMES.lock();
            let alloc = frames_lock.as_mut().ok_or(Error::OutOfTables)?;
            mmu.space
                .check_unmapped(start, pages, mmu.me, &mut TableFrames(alloc))?;
        }
        flush_if_remap(q, mmu, start, pages);
        // Take every frame before the first page changes, so running out
        // leaves no trace. The fresh frames are chained through their own
        // first word (they are zeroed and ours), so no buffer bounds `pages`.
        let mut chain = FrameChain::default();
        for _ in 0..pages {
            match alloc_frame(q, mmu) {
                Ok(f) => chain.push(f),
                Err(e) => {
                    chain.free_all();
                    return Err(e);
                }
            }
        }
        for i in 0..pages {
            let frame = chain.pop().expect("one frame per page was taken");
            let value = space::pte(frame, prot, true)?;
            push_pte(q, mmu, start + i, value);
        }
        Ok(())
    })
}

/// Zeroed frames linked through their first word: frame n holds the address
/// of frame n-1 (0 ends the chain). `pop` zeroes the link again, so every
/// frame leaves as zeroed as it came.
#[derive(Default)]
struct FrameChain {
    head: u64,
}

impl FrameChain {
    fn link(f: PhysFrame) -> *mut u64 {
        Identity
            .ptr(f.start_address(), 8)
            .expect("RAM frames are identity-mapped") as *mut u64
    }

    fn push(&mut self, f: PhysFrame) {
        // SAFETY: a frame just allocated to us, identity-mapped and aligned.
        unsafe { Self::link(f).write(self.head) };
        self.head = f.start_address().as_u64();
    }

    fn pop(&mut self) -> Option<PhysFrame> {
        if self.head == 0 {
            return None;
        }
        let f = PhysFrame::containing_address(PhysAddr::new(self.head));
        // SAFETY: a frame of this chain, identity-mapped; its first word is
        // the link, cleared so the frame is all zeroes again.
        self.head = unsafe { Self::link(f).replace(0) };
        Some(f)
    }

    fn free_all(&mut self) {
        while let Some(f) = self.pop() {
            if let Some(a) = FRAMES.lock().as_mut() {
                let _ = a.free(f);
            }
        }
    }
}

/// A zeroed frame; if none is free but this queue holds frames waiting for
/// release, flush to release them and try again.
fn alloc_frame(q: &mut Queue, mmu: &mut KernelMmu<'_>) -> Result<PhysFrame, Error> {
    let try_alloc = || {
        FRAMES
            .lock()
            .as_mut()
            .map(|f: &mut FrameAllocator| f.alloc_zeroed(&Identity))
    };
    match try_alloc() {
        Some(Ok(f)) => Ok(f),
        _ if q.has_pending_releases() => {
            q.flush(Trigger::Reuse, mmu);
            match try_alloc() {
                Some(Ok(f)) => Ok(f),
                _ => Err(Error::OutOfFrames),
            }
        }
        _ => Err(Error::OutOfFrames),
    }
}

/// Validation passed, so none of these pages is mapped logically; one whose
/// hardware entry is still present has its unmap queued in this vCPU's ring.
/// Flush that first, so the new mapping faults on first touch instead of
/// reaching the old frame through the old translation.
fn flush_if_remap(q: &mut Queue, mmu: &mut KernelMmu<'_>, start: Page, pages: u64) {
    if (0..pages).any(|i| mmu.space.hw_present(start + i)) {
        q.flush(Trigger::Remap, mmu);
    }
}

fn push_pte(q: &mut Queue, mmu: &mut KernelMmu<'_>, page: Page, value: Pte) {
    let entry = mmu.space.set(page, value, mmu.me);
    q.push_mmu(Entry::WritePte { page, entry, value }, mmu);
}

fn unmap_one(q: &mut Queue, mmu: &mut KernelMmu<'_>, page: Page) {
    let (old, _) = mmu.space.logical(page).expect("validated page");
    if !old.flags().contains(space::OWNED) {
        push_pte(q, mmu, page, Pte::EMPTY);
        return;
    }
    let entry = mmu.space.set(page, Pte::EMPTY, mmu.me);
    let write = Entry::WritePte {
        page,
        entry,
        value: Pte::EMPTY,
    };
    let release = Entry::ReleaseFrame(PhysFrame::containing_address(old.addr()));
    q.push_unmap(write, release, mmu);
}

/// Unmaps `pages` pages at `va`, releasing the frames map_anon gave them.
pub fn unmap(va: VirtAddr, pages: u64) -> Result<(), Error> {
    let start = space::check_range(va, pages)?;
    with_mm(|q, mmu| {
        mmu.space.check_mapped(start, pages, mmu.me)?;
        for i in 0..pages {
            unmap_one(q, mmu, start + i);
        }
        Ok(())
    })
}

/// Changes the protection of `pages` mapped pages at `va`.
pub fn protect(va: VirtAddr, pages: u64, prot: Prot) -> Result<(), Error> {
    let start = space::check_range(va, pages)?;
    space::pte(PhysFrame::containing_address(PhysAddr::new(0)), prot, false)?; // W+X first
    with_mm(|q, mmu| {
        mmu.space.check_mapped(start, pages, mmu.me)?;
        for i in 0..pages {
            let page = start + i;
            let (old, _) = mmu.space.logical(page)?;
            let frame = PhysFrame::<Size4KiB>::containing_address(old.addr());
            let value = space::pte(frame, prot, old.flags().contains(space::OWNED))?;
            push_pte(q, mmu, page, value);
        }
        Ok(())
    })
}

/// What the hardware tables say about `va`, after this vCPU's pending
/// changes are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub phys: PhysAddr,
    pub prot: Prot,
    /// The frame belongs to the mapping (map_anon).
    pub owned: bool,
}

pub fn translate(va: VirtAddr) -> Option<Translation> {
    with_mm(|q, mmu| {
        if !q.is_empty() {
            q.flush(Trigger::Read, mmu);
        }
        mmu.space
            .translate(va)
            .map(|(phys, prot, owned)| Translation { phys, prot, owned })
    })
}

/// Applies this vCPU's pending changes and makes every vCPU see them.
pub fn flush() {
    with_mm(|q, mmu| {
        q.flush(Trigger::Explicit, mmu);
    });
}

/// An MMU lazy-mode scope: changes inside it are batched, and dropping the
/// guard flushes them. Must be dropped on the vCPU that made it.
#[must_use = "a batch ends (and flushes) when this guard is dropped; bind it to a variable"]
pub struct Batch {
    entered: bool,
    cpu: usize,
}

pub fn batch() -> Batch {
    let entered = backend() == Backend::Batched;
    if entered {
        with_mm(|q, _| q.enter_lazy_mmu());
    }
    Batch {
        entered,
        cpu: percpu::cpu_index(),
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        assert_eq!(
            self.cpu,
            percpu::cpu_index(),
            "a batch guard moved to another vCPU"
        );
        if self.entered {
            with_mm(|q, mmu| q.leave_lazy_mmu(mmu)).expect("the guard entered lazy mode");
        }
    }
}

/// A CPU lazy-mode scope: CR writes inside it are deferred and coalesced.
#[must_use = "CPU lazy mode ends (and flushes) when this guard is dropped; bind it to a variable"]
pub struct CpuBatch {
    cpu: usize,
}

pub fn cpu_batch() -> CpuBatch {
    with_mm(|q, _| q.enter_lazy_cpu());
    CpuBatch {
        cpu: percpu::cpu_index(),
    }
}

impl Drop for CpuBatch {
    fn drop(&mut self) {
        assert_eq!(
            self.cpu,
            percpu::cpu_index(),
            "a CPU batch guard moved to another vCPU"
        );
        with_mm(|q, mmu| q.leave_lazy_cpu(mmu)).expect("the guard entered lazy mode");
    }
}

/// Writes a control register through the queue (deferred in CPU lazy mode).
///
/// # Safety
/// `value` must be a valid value for `reg` that keeps the kernel running:
/// paging, protection and the current root unchanged (the benchmarks and
/// tests write back what they read).
pub unsafe fn write_cr(reg: Cr, value: u64) {
    with_mm(|q, mmu| q.write_cr(reg, value, mmu));
}

/// Reads a control register from the per-vCPU cache (the register is read
/// once, the first time).
pub fn read_cr(reg: Cr) -> u64 {
    with_mm(|q, _| {
        q.read_cr(reg).unwrap_or_else(|| {
            let v = match reg {
                Cr::Cr0 => Cr0::read_raw(),
                Cr::Cr3 => Cr3::read_raw().0.start_address().as_u64() | Cr3::read_raw().1 as u64,
                Cr::Cr4 => Cr4::read_raw(),
            };
            q.seed_cr(reg, v);
            v
        })
    })
}

/// The page fault hook: a fault on a page with a map pending in this vCPU's
/// queue flushes the queue, and the access is retried.
fn on_page_fault(addr: VirtAddr, _error_code: u64) -> bool {
    let a = addr.as_u64();
    if !(WINDOW_BASE..WINDOW_BASE + WINDOW_SIZE).contains(&a) {
        return false;
    }
    let me = percpu::cpu_index();
    let page = Page::containing_address(addr);
    // Borrowed already: the fault is inside the mm itself, a bug to report.
    let Ok(q) = QUEUES[me].try_borrow() else {
        return false;
    };
    if !q.has_pending_map(page) {
        return false;
    }
    drop(q);
    with_mm(|q, mmu| {
        q.flush(Trigger::Fault, mmu);
    });
    true
}

/// This vCPU's counters.
pub fn counters() -> Counters {
    with_mm(|q, _| *q.counters())
}

fn publish_counters(_: u64) {
    let me = percpu::cpu_index();
    // Borrowed only if this vCPU is mid-flush, serving IPIs while it waits
    // for a shootdown: keep the last published figures then.
    if let Ok(q) = QUEUES[me].try_borrow() {
        *PUBLISHED[me].lock() = *q.counters();
    }
}

/// Every online vCPU's counters, summed; each vCPU reports its own.
pub fn counters_all() -> Counters {
    smp::call("collecting counters", u64::MAX, publish_counters, 0);
    let mut total = counters();
    let me = percpu::cpu_index();
    let online = smp::online_mask();
    for cpu in (0..percpu::MAX_CPUS).filter(|&c| c != me && online & (1 << c) != 0) {
        total.add(&PUBLISHED[cpu].lock());
    }
    total
}

/// Page-table and twin pages the window uses.
pub fn table_pages() -> u64 {
    with_mm(|_, mmu| mmu.space.table_pages())
}

/// Frames currently free in the allocator.
pub fn free_frames() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |f| f.free_frames())
}

/// True while `frame` is allocated (not handed out again).
pub fn frame_allocated(frame: PhysFrame) -> bool {
    FRAMES
        .lock()
        .as_ref()
        .is_some_and(|f| f.is_allocated(frame))
}

/// The hardware leaf entry of `va` (its tables must exist), for the
/// benchmark that times a bare PTE store.
pub fn hw_entry(va: VirtAddr) -> Option<PhysAddr> {
    with_mm(|_, mmu| {
        mmu.space
            .slot(Page::containing_address(va), None)
            .ok()
            .flatten()
            .map(|s| s.hw.phys())
    })
}

/// Entries waiting in this vCPU's queue.
pub fn pending() -> usize {
    with_mm(|q, _| q.len())
}

/// The `mm` benchmark's floor: what a batch costs with no queue at all. It
/// finds each page's hardware entry (the walk any implementation pays),
/// stores the value, and ends with one invalidation, coalesced as the queue
/// does, and one shootdown round. No validation, no twin, no ring. The
/// pages' tables must exist (the benchmark maps and unmaps them once through
/// the API first), and the stores must leave them as the logical state says
/// (the benchmark ends every floor batch with the pages unmapped).
pub fn floor_write(n: usize, entry: impl Fn(usize) -> (Page, Pte)) -> Counters {
    with_mm(|q, mmu| {
        let mut c = Counters::ZERO;
        let mut inv = Invalidation::Pages(heapless::Vec::new());
        for i in 0..n {
            let (page, value) = entry(i);
            let Ok(Some(slot)) = mmu.space.slot(page, None) else {
                continue; // no tables: nothing to store (the bench prepares them)
            };
            c.pte_writes += 1;
            if mmu.space.apply(slot.hw, value) == Applied::Replaced {
                inv.add(page);
            }
        }
        match &inv {
            Invalidation::Pages(pages) => {
                for p in pages {
                    mmu.invlpg(*p);
                }
                c.invlpg += pages.len() as u64;
            }
            Invalidation::All => {
                mmu.flush_all();
                c.full_flushes += 1;
            }
        }
        if !inv.is_empty() {
            let ipis = mmu.shootdown(&inv);
            if ipis > 0 {
                c.ipis += ipis as u64;
                c.shootdowns += 1;
            }
        }
        c.flushes[Trigger::Explicit as usize] += 1;
        let _ = q;
        c
    })
}
