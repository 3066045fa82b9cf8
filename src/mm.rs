//! The mm API of the kernel: map, map_anon, unmap, protect, translate,
//! flush and batch scopes over the managed window.
//!
//! The logic is the library's mm core ([`hyperbatch::mm`]), which the host
//! tests drive too; this module owns what only the kernel has: the statics
//! the window lives in, each vCPU's queue, the real [`Mmu`] (`invlpg`, CR3
//! reloads, IPI shootdowns), the frame allocator behind [`Frames`], and
//! the page-fault hook. Its guarantees are the core's (see its docs).
//!
//! With `pv=batched` (the default) every vCPU's queue sits in MMU lazy
//! mode from boot, so plain calls are deferred too; [`batch`] runs a
//! closure as an inner scope whose end flushes. `pv=immediate` is the
//! unmodified-kernel baseline: the queue stays out of lazy mode, so each
//! call's invalidation and shootdown happen before it returns. A
//! host-drained backend would be a third [`Backend`] whose flush hands the
//! ring to the host in one hypercall; the API would not change.

use crate::arch::x86_64::percpu::{self, CpuLocal, CpuSlots};
use crate::arch::x86_64::smp;
use crate::memory::{Identity, TableFrames, FRAMES};
use atomic_refcell::AtomicRefCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use hyperbatch::cmdline::Backend;
use hyperbatch::mm::{
    Frames, Mm, Mmu, TableSlot, Translation, Window, MAX_CPUS, WINDOW_BASE, WINDOW_SIZE,
    WINDOW_TABLES,
};
use hyperbatch::paging::TableAlloc;
use hyperbatch::phys::PhysMemory;
use hyperbatch::queue::{Counters, Cr, Invalidation, Queue, Trigger};
use hyperbatch::sync::{Once, SpinLock};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::structures::paging::{Page, PhysFrame, Size2MiB};
use x86_64::VirtAddr;

pub use hyperbatch::mm::{Error, PageSize, Prot as Protection};

static SLOTS: [TableSlot; WINDOW_TABLES] = [const { TableSlot::new() }; WINDOW_TABLES];
static FLUSHED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static WINDOW: Once<Window<'static, Identity>> = Once::new();
static BACKEND: AtomicU8 = AtomicU8::new(Backend::Batched as u8);
/// Fault injection for the stale-TLB test: flushes skip the shootdown.
static NO_SHOOTDOWN: AtomicBool = AtomicBool::new(false);
const _: () = assert!(MAX_CPUS == percpu::MAX_CPUS);

/// Each vCPU's queue, reachable only from its own vCPU. Thread context
/// borrows it; interrupt handlers (the fault hook, a flush request) only
/// try, so a borrow never waits; a second borrow from thread context is a
/// bug in the mm and panics instead of aliasing.
static QUEUE: CpuLocal<AtomicRefCell<Queue>> =
    CpuLocal::new([const { AtomicRefCell::new(Queue::new()) }; MAX_CPUS]);
/// Each vCPU's counters as it last published them (on request, in its IPI
/// handler), for `counters_all` on another vCPU.
static PUBLISHED: CpuSlots<AtomicRefCell<Counters>> =
    CpuSlots::new([const { AtomicRefCell::new(Counters::ZERO) }; MAX_CPUS]);

/// What a vCPU counts outside its queue: the invalidations it runs for
/// other vCPUs' shootdowns, and its lazy-TLB reloads. Only that vCPU
/// writes them, from its IPI handler or its idle loop; a benchmark reads
/// the others' ([`counters_with_others_remote`]).
struct Remote {
    invlpg: AtomicU64,
    full_flushes: AtomicU64,
    lazy_tlb_reloads: AtomicU64,
}

static REMOTE: CpuSlots<Remote> = CpuSlots::new(
    [const {
        Remote {
            invlpg: AtomicU64::new(0),
            full_flushes: AtomicU64::new(0),
            lazy_tlb_reloads: AtomicU64::new(0),
        }
    }; MAX_CPUS],
);

/// Each vCPU's CR3, read once: the kernel's own reloads (the full flush,
/// lazy TLB) take it from here instead of reading the register.
static CR3: CpuLocal<AtomicU64> = CpuLocal::new([const { AtomicU64::new(0) }; MAX_CPUS]);

fn bump(c: &AtomicU64) {
    // Single writer (this vCPU): a plain read-modify-write suffices.
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Sets up the window and every vCPU's queue. Boot CPU, before any other
/// CPU uses the mm.
pub fn init(backend: Backend, no_shootdown: bool) {
    // SAFETY: the kernel root is live; the window's PML4 slot is unused by
    // the kernel's own mappings (memory.rs maps the identity region and
    // stacks.rs the top slot); the identity map never goes away, so table
    // pointers stay valid; the arrays are zeroed and only the window uses
    // them.
    let window = unsafe { Window::new(&Identity, crate::memory::root(), &SLOTS, &FLUSHED) };
    if WINDOW.set(window).is_err() {
        panic!("mm::init ran twice");
    }
    NO_SHOOTDOWN.store(no_shootdown, Ordering::Relaxed);
    set_backend(backend);
    crate::arch::x86_64::interrupts::set_page_fault_hook(on_page_fault);
}

fn window() -> &'static Window<'static, Identity> {
    WINDOW.get().expect("mm::init ran at boot")
}

/// Switches the backend: this vCPU's queue at once, every other vCPU's
/// when it next starts posted work ([`work_starts`]), since only a queue's
/// own vCPU touches it. Benchmarks and tests switch between runs, with
/// the other vCPUs idle.
pub fn set_backend(backend: Backend) {
    flush();
    BACKEND.store(backend as u8, Ordering::Release);
    adopt_backend(&mut QUEUE.get().borrow_mut());
}

/// Brings this vCPU's queue to the current backend: in lazy MMU mode from
/// the outside under `pv=batched`, out of it under `pv=immediate`.
fn adopt_backend(q: &mut Queue) {
    let lazy = backend() == Backend::Batched;
    while q.in_lazy_mmu() != lazy {
        if lazy {
            q.enter_lazy_mmu();
        } else {
            // Called between calls (set_backend flushed, and posted work
            // starts with the queue flushed by the previous work's end).
            assert!(q.is_empty(), "backend switch with entries queued");
            let _ = q.exit_lazy_mmu();
        }
    }
}

/// Called by a vCPU before it runs posted work: it picks up a backend
/// switch made since its last work.
pub fn work_starts() {
    adopt_backend(&mut QUEUE.get().borrow_mut());
}

pub fn backend() -> Backend {
    if BACKEND.load(Ordering::Acquire) == Backend::Immediate as u8 {
        Backend::Immediate
    } else {
        Backend::Batched
    }
}

/// This vCPU's CR3 as it was first read (the kernel never changes it).
fn cr3() -> u64 {
    let cache = CR3.get();
    match cache.load(Ordering::Relaxed) {
        0 => {
            let (frame, flags) = Cr3::read_raw();
            let v = frame.start_address().as_u64() | u64::from(flags);
            cache.store(v, Ordering::Relaxed);
            v
        }
        v => v,
    }
}

/// Drops this vCPU's non-global translations by reloading CR3.
pub fn reload_cr3() {
    let v = cr3();
    // SAFETY: `v` is this CPU's live root as read at its first reload (the
    // kernel never switches roots), so reloading it changes no mapping; it
    // drops every non-global TLB entry, which is the point.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Lazy TLB's reload on leaving idle (smp.rs), counted.
pub fn lazy_tlb_reload() {
    reload_cr3();
    bump(&REMOTE.mine().lazy_tlb_reloads);
}

/// The privileged operations of a flush, done for real.
struct KernelMmu;

impl Mmu for KernelMmu {
    fn invlpg(&mut self, page: Page) {
        x86_64::instructions::tlb::flush(page.start_address());
    }

    fn flush_all(&mut self) {
        reload_cr3();
    }

    fn shootdown(&mut self, inv: &Invalidation) -> u32 {
        // One vCPU, or every other one idle: no round at all, and no call.
        let targets = smp::tlb_targets();
        if targets == 0 || NO_SHOOTDOWN.load(Ordering::Relaxed) {
            return 0;
        }
        smp::call(
            "TLB shootdown",
            targets,
            shootdown_handler,
            inv as *const Invalidation as u64,
        )
    }

    fn write_cr(&mut self, reg: Cr, value: u64) {
        write_cr_now(reg, value);
    }
}

/// Frames a vCPU keeps for its own `map_anon`s and releases, so that the
/// hot path takes no lock another vCPU takes (Linux's per-CPU page lists do
/// the same for its page allocator). It refills and drains in batches under
/// the global allocator's lock. Owner only, except that others may look in
/// (`free_frames`, `frame_allocated`), so each cache has its own lock.
const CACHE_MAX: usize = 64;
const CACHE_BATCH: usize = 32;
type FrameCache = heapless::Vec<PhysFrame, CACHE_MAX>;
static CACHE: CpuSlots<SpinLock<FrameCache>> =
    CpuSlots::new([const { SpinLock::named("mm frame cache", heapless::Vec::new()) }; MAX_CPUS]);

/// Set while an allocation failure is armed (fault injection): the caches
/// are bypassed then, so the failure lands on exactly the allocation it
/// counts to.
static FAILURE_ARMED: AtomicBool = AtomicBool::new(false);

/// Arms the allocator to fail its `n`th allocation from now (`None`
/// disarms): fault injection for the tests and `fail_alloc_at`. Until
/// disarmed, the mm allocates straight from the allocator.
pub fn set_alloc_failure(n: Option<u64>) {
    FAILURE_ARMED.store(n.is_some(), Ordering::Release);
    if let Some(f) = FRAMES.lock().as_mut() {
        f.set_fail_after(n);
    }
}

/// Takes a frame from this vCPU's cache, refilling it from the allocator
/// when empty. `None` when the cache is in use by the interrupted code (an
/// IPI handler on this vCPU), and when the allocator is empty too.
fn cache_take() -> Option<Option<PhysFrame>> {
    let mut c = CACHE.mine().try_lock()?;
    if c.is_empty() {
        let mut g = FRAMES.lock();
        let a = g.as_mut()?;
        while c.len() < CACHE_BATCH {
            match a.alloc() {
                Ok(f) => {
                    let _ = c.push(f);
                }
                Err(_) => break,
            }
        }
    }
    Some(c.pop())
}

/// Gives a frame back into this vCPU's cache, returning half of a full one
/// to the allocator first. False when the cache is in use (then the caller
/// frees to the allocator).
fn cache_give(frame: PhysFrame) -> bool {
    let Some(mut c) = CACHE.mine().try_lock() else {
        return false;
    };
    if c.is_full() {
        let mut g = FRAMES.lock();
        let Some(a) = g.as_mut() else { return false };
        for _ in 0..CACHE_MAX - CACHE_BATCH {
            if let Some(f) = c.pop() {
                free_to_allocator(a, f);
            }
        }
    }
    let _ = c.push(frame);
    true
}

/// Returns every frame of this vCPU's cache to the allocator: when it goes
/// idle, and when another vCPU ran out.
pub fn drain_frame_cache() {
    let Some(mut c) = CACHE.mine().try_lock() else {
        return;
    };
    if c.is_empty() {
        return;
    }
    let mut g = FRAMES.lock();
    if let Some(a) = g.as_mut() {
        while let Some(f) = c.pop() {
            free_to_allocator(a, f);
        }
    }
}

fn free_to_allocator(a: &mut hyperbatch::frames::FrameAllocator, f: PhysFrame) {
    if let Err(e) = a.free(f) {
        log::error!("mm released a frame the allocator refused: {e}");
    }
}

/// The frame source behind the core: this vCPU's cache for 4 KiB frames,
/// the allocator (one lock per call) for tables and 2 MiB frames.
struct KernelFrames;

// SAFETY: forwards to the kernel's frame allocator, which hands out each
// free frame once; every RAM frame is identity-mapped, so Identity reaches it.
unsafe impl TableAlloc for KernelFrames {
    fn alloc_table(&mut self) -> Option<PhysFrame> {
        TableFrames(FRAMES.lock().as_mut()?).alloc_table()
    }
}

// SAFETY: as above; a cached frame is one the allocator handed out and
// nobody else holds, zeroed here before it goes out.
unsafe impl Frames for KernelFrames {
    fn alloc_zeroed(&mut self) -> Option<PhysFrame> {
        let cached = if FAILURE_ARMED.load(Ordering::Relaxed) {
            None
        } else {
            cache_take()
        };
        match cached {
            Some(f) => {
                let f = f?;
                let p = Identity.ptr(f.start_address(), 4096)?;
                // SAFETY: a frame only this vCPU holds, identity-mapped.
                unsafe { p.write_bytes(0, 4096) };
                Some(f)
            }
            None => FRAMES.lock().as_mut()?.alloc_zeroed(&Identity).ok(),
        }
    }

    fn reclaim(&mut self) -> bool {
        reclaim_from_others()
    }

    fn free(&mut self, frame: PhysFrame) {
        if !cache_give(frame) {
            if let Some(a) = FRAMES.lock().as_mut() {
                free_to_allocator(a, frame);
            }
        }
    }

    fn alloc_zeroed_2m(&mut self) -> Option<PhysFrame<Size2MiB>> {
        FRAMES.lock().as_mut()?.alloc_zeroed_2m(&Identity).ok()
    }

    fn free_2m(&mut self, frame: PhysFrame<Size2MiB>) {
        if let Some(f) = FRAMES.lock().as_mut() {
            if let Err(e) = f.free_2m(frame) {
                log::error!("mm released a 2 MiB frame the allocator refused: {e}");
            }
        }
    }
}

/// Runs on a target vCPU in its IPI handler: repeat the sender's invalidation.
fn shootdown_handler(arg: u64) {
    // SAFETY: the sender keeps the Invalidation alive until every target has
    // acknowledged, and acknowledgement comes after this returns.
    let inv = unsafe { &*(arg as *const Invalidation) };
    let r = REMOTE.mine();
    match inv {
        Invalidation::Pages(pages) => {
            for p in pages {
                x86_64::instructions::tlb::flush(p.start_address());
            }
            r.invlpg.store(
                r.invlpg.load(Ordering::Relaxed) + pages.len() as u64,
                Ordering::Relaxed,
            );
        }
        Invalidation::All => {
            reload_cr3();
            bump(&r.full_flushes);
        }
    }
}

fn write_cr_now(reg: Cr, value: u64) {
    if reg == Cr::Cr3 {
        // The kernel's own reloads read the cache: update it first, with
        // interrupts masked, so no shootdown handler between the two
        // reloads the old root.
        crate::arch::x86_64::irq::without(|| {
            CR3.get().store(value, Ordering::Relaxed);
            // SAFETY: CR3 is only ever rewritten with the live root
            // (mm::write_cr's contract).
            unsafe {
                core::arch::asm!("mov cr3, {}", in(reg) value, options(nostack, preserves_flags))
            };
        });
        return;
    }
    // SAFETY: the queue's callers only write values derived from the
    // registers' current contents (mm::write_cr's contract).
    unsafe {
        match reg {
            Cr::Cr0 => Cr0::write_raw(value),
            Cr::Cr4 => Cr4::write_raw(value),
            Cr::Cr3 => unreachable!("handled above"),
        }
    }
}

/// Runs `f` with this vCPU's view of the mm; then honours a request from
/// another vCPU to flush (it needs the frames this queue would release).
fn with_mm<R>(f: impl FnOnce(&mut Mm<'_, 'static, Identity, KernelFrames, KernelMmu>) -> R) -> R {
    let cpu = percpu::this_cpu();
    let me = cpu.index();
    let mut queue = QUEUE.on(cpu).borrow_mut();
    let mut mm = Mm {
        window: window(),
        queue: &mut queue,
        me,
        frames: &mut KernelFrames,
        mmu: &mut KernelMmu,
    };
    let r = f(&mut mm);
    // Any request at all is rare: one load and a branch on the hot path.
    let requests = FLUSH_REQUESTS.load(Ordering::Relaxed);
    if requests != 0 && requests & (1 << me) != 0 {
        honour_request(&mut mm, me);
    }
    r
}

/// Bit n: another vCPU asked vCPU n to flush its queue, because a frame
/// allocation failed while n might hold frames waiting for release.
static FLUSH_REQUESTS: AtomicU64 = AtomicU64::new(0);

#[cold]
fn honour_request(m: &mut Mm<'_, 'static, Identity, KernelFrames, KernelMmu>, me: usize) {
    m.flush(Trigger::Request);
    drain_frame_cache();
    FLUSH_REQUESTS.fetch_and(!(1 << me), Ordering::AcqRel);
}

/// How long an allocation waits for vCPUs that were inside an mm call when
/// asked to flush (they flush at the end of it).
const RECLAIM_WAIT_US: u64 = 100_000;

/// The frames other vCPUs hold: asks every other running vCPU by IPI to
/// flush its queue and hand over its cached frames, then frees what they
/// handed over into the allocator. A vCPU inside an mm call when asked
/// flushes at its end, which is waited for, up to [`RECLAIM_WAIT_US`]. An
/// idle vCPU holds nothing: it flushed and drained when its work ended.
/// Returns true if a retry is worth it.
fn reclaim_from_others() -> bool {
    let others = smp::tlb_targets();
    if others == 0 {
        return false;
    }
    // Bits stay set for the vCPUs that could not flush in the handler.
    FLUSH_REQUESTS.fetch_or(others, Ordering::AcqRel);
    smp::call("frame reclaim", others, flush_request_handler, 0);
    let deadline = crate::arch::x86_64::tsc::rdtsc()
        + crate::arch::x86_64::tsc::hz() / 1_000_000 * RECLAIM_WAIT_US;
    while FLUSH_REQUESTS.load(Ordering::Acquire) & others != 0 {
        if crate::arch::x86_64::tsc::rdtsc() > deadline {
            // Still inside an mm call (a long range): its frames come back
            // when it ends, not now.
            FLUSH_REQUESTS.fetch_and(!others, Ordering::AcqRel);
            break;
        }
        smp::serve_mailbox();
        core::hint::spin_loop();
    }
    let mut rest = others;
    while rest != 0 {
        let cpu = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        let (small, large) = {
            let mut h = HANDOFF.of(cpu).lock();
            (core::mem::take(&mut h.small), core::mem::take(&mut h.large))
        };
        let mut g = FRAMES.lock();
        if let Some(a) = g.as_mut() {
            // SAFETY: the lists hold frames the handler released, linked
            // through their first words by `handoff`, and nothing else.
            unsafe {
                each_linked(small, |f| free_to_allocator(a, f));
                each_linked(large, |f| {
                    if let Err(e) = a.free_2m(PhysFrame::containing_address(f.start_address())) {
                        log::error!("mm released a 2 MiB frame the allocator refused: {e}");
                    }
                });
            }
        }
    }
    true
}

/// Free frames a vCPU's request handler hands to the vCPU that asked,
/// linked through their first word (they are free: nothing else uses
/// them). The handler must not take the allocator's lock, which the code it
/// interrupted may hold or be queued for; this lock is only ever held for a
/// push or for taking the lists.
#[derive(Default)]
struct Handoff {
    small: u64,
    large: u64,
}

static HANDOFF: CpuSlots<SpinLock<Handoff>> = CpuSlots::new(
    [const { SpinLock::named("mm frame hand-off", Handoff { small: 0, large: 0 }) }; MAX_CPUS],
);

/// Puts a free frame on this vCPU's hand-off list (`large`: a 2 MiB one).
fn handoff(frame: PhysFrame, large: bool) {
    let mut h = HANDOFF.mine().lock();
    let head = if large { &mut h.large } else { &mut h.small };
    let p = Identity
        .ptr(frame.start_address(), 8)
        .expect("RAM is identity-mapped") as *mut u64;
    // SAFETY: a frame the mm just released (free memory nobody else
    // uses), identity-mapped; its first word holds the list's link.
    unsafe { p.write(*head) };
    *head = frame.start_address().as_u64();
}

/// Calls `f` for every frame of a list `handoff` built.
///
/// # Safety
/// `head` must start such a list, taken off its hand-off slot.
unsafe fn each_linked(mut head: u64, mut f: impl FnMut(PhysFrame)) {
    while head != 0 {
        let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(head));
        let p = Identity
            .ptr(frame.start_address(), 8)
            .expect("RAM is identity-mapped") as *const u64;
        // SAFETY: the caller's list: each frame's first word links the next.
        head = unsafe { p.read() };
        f(frame);
    }
}

/// The frame source of a flush inside a request handler: what the flush
/// releases goes to the hand-off list, and nothing is allocated (a flush
/// allocates nothing).
struct HandoffFrames;

// SAFETY: hands out no frame at all.
unsafe impl TableAlloc for HandoffFrames {
    fn alloc_table(&mut self) -> Option<PhysFrame> {
        None
    }
}

// SAFETY: as above; releases go to the hand-off list.
unsafe impl Frames for HandoffFrames {
    fn alloc_zeroed(&mut self) -> Option<PhysFrame> {
        None
    }

    fn free(&mut self, frame: PhysFrame) {
        handoff(frame, false);
    }

    fn alloc_zeroed_2m(&mut self) -> Option<PhysFrame<Size2MiB>> {
        None
    }

    fn free_2m(&mut self, frame: PhysFrame<Size2MiB>) {
        handoff(PhysFrame::containing_address(frame.start_address()), true);
    }
}

/// A request to flush, in the target's IPI handler. The queue is this
/// vCPU's; it is free unless the interrupted code is inside the mm (then
/// that call's end flushes, see `with_mm`), and the flush may send its own
/// shootdown unless the interrupted code is itself waiting for
/// acknowledgements (then it is inside the mm too, or about to return).
/// What it releases, and the frames of this vCPU's cache unless the
/// interrupted code is using it, go to the hand-off list.
fn flush_request_handler(_: u64) {
    let me = percpu::cpu_index();
    if smp::in_call() {
        return;
    }
    if let Ok(mut queue) = QUEUE.get().try_borrow_mut() {
        let mut m = Mm {
            window: window(),
            queue: &mut queue,
            me,
            frames: &mut HandoffFrames,
            mmu: &mut KernelMmu,
        };
        m.flush(Trigger::Request);
        if let Some(mut c) = CACHE.mine().try_lock() {
            while let Some(f) = c.pop() {
                handoff(f, false);
            }
        }
        FLUSH_REQUESTS.fetch_and(!(1 << me), Ordering::AcqRel);
    }
}

/// Called by a vCPU that stops running work (before it idles, and when
/// its posted work returns): nothing stays queued on a vCPU that is not
/// running, so its frees and invalidations are never held back.
pub fn idle() {
    let me = percpu::cpu_index();
    // Borrowed means the vCPU is inside the mm: not stopping, then.
    if let Ok(mut queue) = QUEUE.get().try_borrow_mut() {
        let mut m = Mm {
            window: window(),
            queue: &mut queue,
            me,
            frames: &mut KernelFrames,
            mmu: &mut KernelMmu,
        };
        m.flush(Trigger::Idle);
    }
    drain_frame_cache();
    FLUSH_REQUESTS.fetch_and(!(1 << me), Ordering::AcqRel);
}

/// Maps `frames` (the caller's: unmap does not free them) at `va`.
///
/// # Safety
/// As [`Mm::map`]: the frames must be memory the caller owns for as long
/// as they are mapped (not the kernel image, not page tables, not free or
/// someone else's frames).
pub unsafe fn map(va: VirtAddr, frames: &[PhysFrame], prot: Protection) -> Result<(), Error> {
    // SAFETY: this function's contract is the core's.
    with_mm(|m| unsafe { m.map(va, frames, prot) })
}

/// Maps `pages` fresh zeroed frames at `va`; unmap gives them back.
pub fn map_anon(va: VirtAddr, pages: u64, prot: Protection) -> Result<(), Error> {
    with_mm(|m| m.map_anon(va, pages, prot))
}

/// Unmaps `pages` pages at `va`, releasing the frames map_anon gave them.
pub fn unmap(va: VirtAddr, pages: u64) -> Result<(), Error> {
    with_mm(|m| m.unmap(va, pages))
}

/// Changes the protection of `pages` mapped pages at `va`.
pub fn protect(va: VirtAddr, pages: u64, prot: Protection) -> Result<(), Error> {
    with_mm(|m| m.protect(va, pages, prot))
}

/// Maps the 2 MiB `frames` (the caller's) at the 2 MiB-aligned `va`.
///
/// # Safety
/// As [`map`].
pub unsafe fn map_2m(
    va: VirtAddr,
    frames: &[PhysFrame<Size2MiB>],
    prot: Protection,
) -> Result<(), Error> {
    // SAFETY: this function's contract is the core's.
    with_mm(|m| unsafe { m.map_2m(va, frames, prot) })
}

/// Maps `count` fresh zeroed 2 MiB frames at the 2 MiB-aligned `va`.
pub fn map_anon_2m(va: VirtAddr, count: u64, prot: Protection) -> Result<(), Error> {
    with_mm(|m| m.map_anon_2m(va, count, prot))
}

/// Unmaps `count` 2 MiB pages at `va`, releasing the frames map_anon_2m
/// gave them.
pub fn unmap_2m(va: VirtAddr, count: u64) -> Result<(), Error> {
    with_mm(|m| m.unmap_2m(va, count))
}

/// Changes the protection of `count` mapped 2 MiB pages at `va`.
pub fn protect_2m(va: VirtAddr, count: u64, prot: Protection) -> Result<(), Error> {
    with_mm(|m| m.protect_2m(va, count, prot))
}

/// What the page tables say about `va` (this vCPU's pending changes are
/// there already: entries are written in place).
pub fn translate(va: VirtAddr) -> Option<Translation> {
    window().translate(va)
}

/// Applies this vCPU's pending changes and makes every vCPU see them.
pub fn flush() {
    with_mm(|m| m.flush(Trigger::Explicit));
}

/// Runs `f` as an MMU lazy-mode scope: changes inside it are batched, and
/// its end flushes them. A closure rather than a guard, so a batch cannot
/// end early by accident (`let _ = guard;` drops a guard at once and
/// compiles silently). Scopes nest; every end flushes.
pub fn batch<R>(f: impl FnOnce() -> R) -> R {
    let entered = backend() == Backend::Batched;
    if entered {
        with_mm(|m| m.enter_lazy_mmu());
    }
    let r = f();
    if entered {
        with_mm(|m| m.leave_lazy_mmu()).expect("batch entered lazy mode");
    }
    r
}

/// Runs `f` as a CPU lazy-mode scope: CR writes inside it are deferred and
/// coalesced, and its end applies them.
pub fn cpu_batch<R>(f: impl FnOnce() -> R) -> R {
    with_mm(|m| m.enter_lazy_cpu());
    let r = f();
    with_mm(|m| m.leave_lazy_cpu()).expect("cpu_batch entered lazy mode");
    r
}

/// Writes a control register through the queue (deferred in CPU lazy mode).
///
/// # Safety
/// `value` must be a valid value for `reg` that keeps the kernel running:
/// paging, protection and the current root unchanged (the benchmarks and
/// tests write back what they read).
pub unsafe fn write_cr(reg: Cr, value: u64) {
    with_mm(|m| m.write_cr(reg, value));
}

/// Reads a control register from the per-vCPU cache (the register is read
/// once, the first time).
pub fn read_cr(reg: Cr) -> u64 {
    with_mm(|m| {
        m.read_cr(reg, || match reg {
            Cr::Cr0 => Cr0::read_raw(),
            Cr::Cr3 => cr3(),
            Cr::Cr4 => Cr4::read_raw(),
        })
    })
}

/// The page fault hook: a fault on a window page whose entry allows the
/// access came from a stale translation; the mm drops it and the access
/// is retried.
fn on_page_fault(addr: VirtAddr, error_code: u64) -> bool {
    let a = addr.as_u64();
    if !(WINDOW_BASE..WINDOW_BASE + WINDOW_SIZE).contains(&a) {
        return false;
    }
    let me = percpu::cpu_index();
    // Borrowed already: the fault is inside the mm itself, a bug to report.
    let Ok(mut queue) = QUEUE.get().try_borrow_mut() else {
        return false;
    };
    let mut m = Mm {
        window: window(),
        queue: &mut queue,
        me,
        frames: &mut KernelFrames,
        mmu: &mut KernelMmu,
    };
    m.fault(addr, error_code)
}

/// This vCPU's counters, with what it ran for other vCPUs.
pub fn counters() -> Counters {
    let mut c = with_mm(|m| *m.queue.counters());
    add_remote(&mut c);
    c
}

/// This vCPU's counters, with what every other online vCPU ran for
/// shootdowns (remote invalidations, lazy-TLB reloads), read from their
/// atomics without interrupting them: for a benchmark whose other vCPUs
/// only take shootdowns, so that reading adds no IPI to what it measures.
pub fn counters_with_others_remote() -> Counters {
    let mut c = counters();
    let me = percpu::cpu_index();
    let mut others = smp::online_mask() & !(1 << me);
    while others != 0 {
        let cpu = others.trailing_zeros() as usize;
        others &= others - 1;
        let r = REMOTE.of(cpu);
        c.remote_invlpg += r.invlpg.load(Ordering::Relaxed);
        c.remote_full_flushes += r.full_flushes.load(Ordering::Relaxed);
        c.lazy_tlb_reloads += r.lazy_tlb_reloads.load(Ordering::Relaxed);
    }
    c
}

fn add_remote(c: &mut Counters) {
    let r = REMOTE.mine();
    c.remote_invlpg += r.invlpg.load(Ordering::Relaxed);
    c.remote_full_flushes += r.full_flushes.load(Ordering::Relaxed);
    c.lazy_tlb_reloads += r.lazy_tlb_reloads.load(Ordering::Relaxed);
}

fn publish_counters(_: u64) {
    // Borrowed only if this vCPU is mid-flush, serving IPIs while it waits
    // for a shootdown: keep the last published figures then.
    if let (Ok(q), Ok(mut p)) = (QUEUE.get().try_borrow(), PUBLISHED.mine().try_borrow_mut()) {
        *p = *q.counters();
        add_remote(&mut p);
    }
}

/// Every online vCPU's counters, summed; each vCPU reports its own.
pub fn counters_all() -> Counters {
    smp::call("collecting counters", u64::MAX, publish_counters, 0);
    let mut total = counters();
    let me = percpu::cpu_index();
    let mut others = smp::online_mask() & !(1 << me);
    while others != 0 {
        let cpu = others.trailing_zeros() as usize;
        others &= others - 1;
        if let Ok(p) = PUBLISHED.of(cpu).try_borrow() {
            total.add(&p);
        }
    }
    total
}

/// Page-table pages the window uses.
pub fn table_pages() -> u64 {
    window().table_pages()
}

/// Frames free: in the allocator, and in every vCPU's cache.
pub fn free_frames() -> u64 {
    let cached: u64 = (0..MAX_CPUS)
        .map(|cpu| CACHE.of(cpu).lock().len() as u64)
        .sum();
    FRAMES.lock().as_ref().map_or(0, |f| f.free_frames()) + cached
}

/// True while `frame` is allocated: the allocator handed it out and it is
/// in no vCPU's cache of free frames.
pub fn frame_allocated(frame: PhysFrame) -> bool {
    let allocated = FRAMES
        .lock()
        .as_ref()
        .is_some_and(|f| f.is_allocated(frame));
    allocated && (0..MAX_CPUS).all(|cpu| !CACHE.of(cpu).lock().contains(&frame))
}

/// Records waiting in this vCPU's queue.
pub fn pending() -> usize {
    with_mm(|m| m.queue.len())
}

/// The hardware entry of the page at `va`, for the benchmarks that time a
/// bare PTE store (the floor, the exits suite). `None` while the page has
/// no table.
///
/// # Safety
/// Stores through the pointer bypass the mm: before any mm call touches
/// the page again, the entry must hold what the mm left there (or 0).
pub unsafe fn raw_entry(va: VirtAddr) -> Option<&'static AtomicU64> {
    // SAFETY: the caller takes over the window's contract for this entry;
    // the table lives as long as the window, which is 'static.
    unsafe { window().raw_entry(va).map(|p| &*p) }
}

/// As [`raw_entry`], for the directory entry of a 2 MiB page.
///
/// # Safety
/// As [`raw_entry`].
pub unsafe fn raw_entry_2m(va: VirtAddr) -> Option<&'static AtomicU64> {
    // SAFETY: as in raw_entry.
    unsafe { window().raw_large_entry(va).map(|p| &*p) }
}

/// Runs `inv` here and on every vCPU that may cache window translations,
/// with no queue: the benchmark's floor. Returns the IPIs sent.
pub fn invalidate_now(inv: &Invalidation) -> u32 {
    let mut mmu = KernelMmu;
    match inv {
        Invalidation::Pages(pages) => {
            for p in pages {
                mmu.invlpg(*p);
            }
        }
        Invalidation::All => mmu.flush_all(),
    }
    if inv.is_empty() {
        return 0;
    }
    mmu.shootdown(inv)
}
