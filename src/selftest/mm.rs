//! In-guest tests of the mm API and its queue. Each test uses its own
//! slice of the window, so a failure in one cannot cascade.

// See selftest/mod.rs: outcomes carry their message.
#![allow(clippy::result_large_err)]

use super::{detail, expect_pf, Detail};
use crate::arch::x86_64::interrupts::probe_read;
use crate::arch::x86_64::{percpu, smp};
use crate::memory::{Identity, FRAMES};
use crate::mm::{self, Protection as Prot};
use core::sync::atomic::{AtomicU64, Ordering};
use hyperbatch::cmdline::Backend;
use hyperbatch::mm::{Error, WINDOW_BASE, WINDOW_SIZE};
use hyperbatch::phys::PhysMemory;
use hyperbatch::queue::{Cr, Trigger, RING_CAPACITY};
use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

type Outcome = Result<Detail, Detail>;
const PAGE: u64 = 4096;

/// Test n's private 1 GiB slice of the window.
fn region(n: u64) -> VirtAddr {
    VirtAddr::new(WINDOW_BASE + n * (1 << 30))
}

fn fail(e: Error) -> Detail {
    detail(format_args!("{e}"))
}

fn write(va: VirtAddr, v: u64) {
    // SAFETY: the tests only write pages they mapped writable in their own
    // slice of the window.
    unsafe { (va.as_u64() as *mut u64).write_volatile(v) }
}

fn read(va: VirtAddr) -> u64 {
    // SAFETY: as in `write`, for pages the test mapped.
    unsafe { (va.as_u64() as *const u64).read_volatile() }
}

pub fn map_reads_back() -> Outcome {
    let base = region(1);
    let n = 16;
    let before = mm::counters();
    mm::map_anon(base, n, Prot::READ_WRITE).map_err(fail)?;
    for i in 0..n {
        write(base + i * PAGE, 0xa5a5_0000 + i);
    }
    for i in 0..n {
        let v = read(base + i * PAGE);
        if v != 0xa5a5_0000 + i {
            return Err(detail(format_args!("page {i} read {v:#x}")));
        }
    }
    // Entries are written in place and x86 caches no not-present entry:
    // the first touch needs no flush, under either backend.
    let d = mm::counters().since(&before);
    if d.fault_flushes() != 0 || d.flushes_total() != 0 {
        return Err(detail(format_args!(
            "mapping and touching {n} pages flushed {} times ({} on faults)",
            d.flushes_total(),
            d.fault_flushes()
        )));
    }
    mm::unmap(base, n).map_err(fail)?;
    mm::flush();
    Ok(detail(format_args!(
        "{n} pages written and read back, with no flush before the first touch"
    )))
}

pub fn map_given_frames() -> Outcome {
    let base = region(2);
    let frames: [PhysFrame; 2] = {
        let mut g = FRAMES.lock();
        let f = g
            .as_mut()
            .ok_or_else(|| detail(format_args!("no allocator")))?;
        let a = f
            .alloc_zeroed(&Identity)
            .map_err(|e| detail(format_args!("{e}")))?;
        let b = f
            .alloc_zeroed(&Identity)
            .map_err(|e| detail(format_args!("{e}")))?;
        [a, b]
    };
    for (i, f) in frames.iter().enumerate() {
        let p = Identity
            .ptr(f.start_address(), 8)
            .ok_or_else(|| detail(format_args!("frame not reachable")))?;
        // SAFETY: freshly allocated frames, reached through the identity map.
        unsafe { (p as *mut u64).write_volatile(0x1111 * (i as u64 + 1)) };
    }
    // SAFETY: frames this test allocated, freed only after the unmap below.
    unsafe { mm::map(base, &frames, Prot::READ) }.map_err(fail)?;
    mm::flush();
    let ok = read(base) == 0x1111 && read(base + PAGE) == 0x2222;
    mm::unmap(base, 2).map_err(fail)?;
    mm::flush();
    // map() frames stay the caller's after unmap.
    let still = frames.iter().all(|f| mm::frame_allocated(*f));
    if let Some(f) = FRAMES.lock().as_mut() {
        for fr in frames {
            let _ = f.free(fr);
        }
    }
    match (ok, still) {
        (true, true) => Ok(detail(format_args!(
            "caller frames visible through the window, kept after unmap"
        ))),
        (false, _) => Err(detail(format_args!(
            "window does not show the frames' contents"
        ))),
        (_, false) => Err(detail(format_args!("unmap freed frames it did not own"))),
    }
}

/// translate reads the tables, where every change already is: it needs no
/// flush, and a pending unmap's invalidation stays queued.
pub fn translate_in_place() -> Outcome {
    let base = region(3);
    mm::map_anon(base, 1, Prot::READ_WRITE).map_err(fail)?;
    let t = mm::translate(base + 8u64)
        .ok_or_else(|| detail(format_args!("no translation right after map")))?;
    mm::unmap(base, 1).map_err(fail)?;
    let pending = mm::pending();
    let gone = mm::translate(base).is_none();
    let still = mm::pending();
    mm::flush();
    let queued_ok = match mm::backend() {
        Backend::Batched => pending > 0 && still == pending,
        Backend::Immediate => pending == 0,
    };
    if !t.owned || t.prot != Prot::READ_WRITE || t.phys.as_u64() & 0xfff != 8 || !gone || !queued_ok
    {
        return Err(detail(format_args!(
            "translation {t:?}; after unmap: gone {gone}, {pending} records queued, {still} after translate"
        )));
    }
    Ok(detail(format_args!(
        "translate saw the map and the unmap at once; {pending} records stayed queued"
    )))
}

pub fn unmap_faults_after_flush() -> Outcome {
    let base = region(4);
    mm::map_anon(base, 1, Prot::READ_WRITE).map_err(fail)?;
    write(base, 7);
    mm::unmap(base, 1).map_err(fail)?;
    mm::flush();
    expect_pf(probe_read(base), base.as_u64(), false)
}

pub fn protect_read_only() -> Outcome {
    let base = region(5);
    mm::map_anon(base, 1, Prot::READ_WRITE).map_err(fail)?;
    write(base, 42);
    mm::protect(base, 1, Prot::READ).map_err(fail)?;
    mm::flush();
    // SAFETY: the page is ours; if the write were allowed it stores 43.
    let r = expect_pf(
        unsafe { crate::arch::x86_64::interrupts::probe_write(base, 43) },
        base.as_u64(),
        true,
    );
    let v = read(base);
    mm::unmap(base, 1).map_err(fail)?;
    mm::flush();
    let d = r?;
    if v != 42 {
        return Err(detail(format_args!("read-only page changed to {v}")));
    }
    Ok(d)
}

// --- Cross-vCPU ------------------------------------------------------------

static REMOTE_RESULT: AtomicU64 = AtomicU64::new(0);
const REMOTE_FAULTED: u64 = u64::MAX;

fn remote_read(addr: u64) {
    let r = match probe_read(VirtAddr::new(addr)) {
        Ok(v) => v,
        Err(_) => REMOTE_FAULTED,
    };
    REMOTE_RESULT.store(r, Ordering::Release);
}

/// Runs `f(arg)` on CPU `cpu` and waits for it.
fn on_cpu(cpu: usize, f: fn(u64), arg: u64) -> Result<(), Detail> {
    if !smp::post_work(cpu, f, arg) {
        return Err(detail(format_args!("cpu{cpu} is busy")));
    }
    on_cpu_wait(cpu)
}

/// Waits for the work posted to `cpu`, serving IPIs meanwhile.
fn on_cpu_wait(cpu: usize) -> Result<(), Detail> {
    let deadline = crate::arch::x86_64::tsc::rdtsc() + crate::arch::x86_64::tsc::hz() * 5;
    while !smp::work_done(cpu) {
        if crate::arch::x86_64::tsc::rdtsc() > deadline {
            return Err(detail(format_args!(
                "cpu{cpu} did not finish its work in 5 s"
            )));
        }
        smp::serve_mailbox();
        core::hint::spin_loop();
    }
    Ok(())
}

fn other_cpu() -> Option<usize> {
    let me = percpu::cpu_index();
    (0..percpu::MAX_CPUS).find(|&c| c != me && smp::online_mask() & (1 << c) != 0)
}

static STEP: AtomicU64 = AtomicU64::new(0);

/// vCPU B's side of the stale-TLB test, run as work so B stays busy (not in
/// lazy TLB mode) throughout: read the page, so B's TLB holds it; tell A;
/// wait until A has unmapped and flushed; read again.
fn remote_read_twice(addr: u64) {
    remote_read(addr);
    STEP.store(1, Ordering::Release);
    let deadline = crate::arch::x86_64::tsc::rdtsc() + crate::arch::x86_64::tsc::hz() * 5;
    while STEP.load(Ordering::Acquire) != 2 && crate::arch::x86_64::tsc::rdtsc() < deadline {
        core::hint::spin_loop();
    }
    remote_read(addr);
}

pub fn stale_tlb_cross_cpu() -> Outcome {
    let Some(b) = other_cpu() else {
        return Ok(detail(format_args!("skipped: needs a second vCPU")));
    };
    let page = region(6);
    mm::map_anon(page, 1, Prot::READ_WRITE).map_err(fail)?;
    write(page, 0x5ca1ab1e);
    mm::flush();
    STEP.store(0, Ordering::Release);
    REMOTE_RESULT.store(0, Ordering::Release);
    if !smp::post_work(b, remote_read_twice, page.as_u64()) {
        return Err(detail(format_args!("cpu{b} is busy")));
    }
    let deadline = crate::arch::x86_64::tsc::rdtsc() + crate::arch::x86_64::tsc::hz() * 5;
    while STEP.load(Ordering::Acquire) != 1 {
        if crate::arch::x86_64::tsc::rdtsc() > deadline {
            return Err(detail(format_args!("cpu{b} never read the page")));
        }
        core::hint::spin_loop();
    }
    let first = REMOTE_RESULT.load(Ordering::Acquire);
    // A unmaps and flushes while B still runs: the shootdown must reach B.
    mm::unmap(page, 1).map_err(fail)?;
    mm::flush();
    STEP.store(2, Ordering::Release);
    on_cpu_wait(b)?;
    if first != 0x5ca1ab1e {
        return Err(detail(format_args!(
            "cpu{b} read {first:#x} before the unmap"
        )));
    }
    match REMOTE_RESULT.load(Ordering::Acquire) {
        REMOTE_FAULTED => Ok(detail(format_args!(
            "cpu{b} faulted on the unmapped page after the shootdown"
        ))),
        v => Err(detail(format_args!(
            "cpu{b} still read {v:#x} through a stale TLB entry after unmap+flush"
        ))),
    }
}

static REMAP_FRAME: AtomicU64 = AtomicU64::new(0);

/// vCPU B's side of the remap test, run as work so B stays busy (not in
/// lazy TLB mode) throughout: read the page so B's TLB holds A's frame;
/// wait until A has unmapped it (its invalidation still queued); map the
/// page again and read it; report what it read.
fn remote_remap(addr: u64) {
    let va = VirtAddr::new(addr);
    remote_read(addr);
    STEP.store(1, Ordering::Release);
    let deadline = crate::arch::x86_64::tsc::rdtsc() + crate::arch::x86_64::tsc::hz() * 5;
    while STEP.load(Ordering::Acquire) != 2 && crate::arch::x86_64::tsc::rdtsc() < deadline {
        core::hint::spin_loop();
    }
    let r = match mm::map_anon(va, 1, Prot::READ_WRITE) {
        Ok(()) => match probe_read(va) {
            Ok(v) => v,
            Err(_) => REMOTE_FAULTED,
        },
        Err(_) => REMOTE_FAULTED - 1,
    };
    REMAP_FRAME.store(
        mm::translate(va).map_or(0, |t| t.phys.as_u64()),
        Ordering::Release,
    );
    mm::flush();
    REMOTE_RESULT.store(r, Ordering::Release);
}

/// A page unmapped on A, its invalidation still queued there, is mapped
/// again on B, whose TLB still holds A's translation. B's map takes A's
/// pending invalidation over and flushes first, so B reads its own zeroed
/// frame, not A's data; and A's frame is released once, by B's flush.
pub fn remap_taken_over() -> Outcome {
    let Some(b) = other_cpu() else {
        return Ok(detail(format_args!("skipped: needs a second vCPU")));
    };
    let page = region(7);
    mm::map_anon(page, 1, Prot::READ_WRITE).map_err(fail)?;
    write(page, 0xdead_beef);
    mm::flush();
    let old = mm::translate(page).ok_or_else(|| detail(format_args!("no translation")))?;
    let old_frame = PhysFrame::containing_address(old.phys);
    STEP.store(0, Ordering::Release);
    REMOTE_RESULT.store(0, Ordering::Release);
    if !smp::post_work(b, remote_remap, page.as_u64()) {
        return Err(detail(format_args!("cpu{b} is busy")));
    }
    let deadline = crate::arch::x86_64::tsc::rdtsc() + crate::arch::x86_64::tsc::hz() * 5;
    while STEP.load(Ordering::Acquire) != 1 {
        if crate::arch::x86_64::tsc::rdtsc() > deadline {
            return Err(detail(format_args!("cpu{b} never read the page")));
        }
        core::hint::spin_loop();
    }
    let first = REMOTE_RESULT.load(Ordering::Acquire);
    let free_before = mm::free_frames();
    let before = mm::counters();
    // Batched: the unmap's invalidation and the frame's release stay queued.
    mm::unmap(page, 1).map_err(fail)?;
    // Batched: held until a flush retires the unmap; immediate: freed now
    // (and cpu B may get the same frame back).
    let held = mm::frame_allocated(old_frame);
    STEP.store(2, Ordering::Release);
    on_cpu_wait(b)?;
    let got = REMOTE_RESULT.load(Ordering::Acquire);
    // A's own flush finds its mark taken over: it must release nothing.
    mm::flush();
    let mine = mm::counters().since(&before);
    let released_by_b = !mm::frame_allocated(old_frame);
    let new_frame = REMAP_FRAME.load(Ordering::Acquire);
    let _ = on_cpu(b, remote_unmap, page.as_u64());
    // The old frame back, the new one in use then freed: net zero.
    let net = mm::free_frames() as i64 - free_before as i64;
    let d = detail(format_args!(
        "cpu{b} read {first:#x} before, {got:#x} after its re-map (frame {:#x} -> {new_frame:#x}); \
         old frame held until then: {held}, freed: {released_by_b}; this vCPU released {} frames, net frames {net}",
        old_frame.start_address().as_u64(),
        mine.frames_released
    ));
    let ok = match mm::backend() {
        Backend::Batched => held && released_by_b && mine.frames_released == 0,
        Backend::Immediate => !held && mine.frames_released == 1,
    };
    if first == 0xdead_beef && got == 0 && ok && net == 1 {
        Ok(d)
    } else {
        Err(d)
    }
}

fn remote_unmap(addr: u64) {
    let _ = mm::unmap(VirtAddr::new(addr), 1);
    mm::flush();
}

pub fn frame_kept_until_shootdown() -> Outcome {
    let page = region(8);
    mm::map_anon(page, 1, Prot::READ_WRITE).map_err(fail)?;
    let frame = PhysFrame::containing_address(
        mm::translate(page)
            .ok_or_else(|| detail(format_args!("no translation")))?
            .phys,
    );
    let held = mm::batch(|| {
        mm::unmap(page, 1).map_err(fail)?;
        Ok::<bool, Detail>(mm::frame_allocated(frame))
    })?;
    let freed = !mm::frame_allocated(frame);
    if mm::backend() == Backend::Batched && !held {
        return Err(detail(format_args!(
            "frame {:#x} freed before the flush",
            frame.start_address().as_u64()
        )));
    }
    if !freed {
        return Err(detail(format_args!(
            "frame {:#x} not freed by the flush",
            frame.start_address().as_u64()
        )));
    }
    Ok(detail(format_args!(
        "frame {:#x} held while the unmap was pending, freed after",
        frame.start_address().as_u64()
    )))
}

/// Unmaps that do not continue each other take a record each: unmapping
/// every other page of a range in one batch fills the ring, which flushes
/// and goes on, and no page is lost.
pub fn ring_full_mid_batch() -> Outcome {
    let base = region(9);
    let n = RING_CAPACITY as u64 * 2 + 7;
    mm::map_anon(base, n, Prot::READ_WRITE).map_err(fail)?;
    for i in 0..n {
        write(base + i * PAGE, i ^ 0x77);
    }
    let before = mm::counters();
    mm::batch(|| {
        for i in (0..n).step_by(2) {
            mm::unmap(base + i * PAGE, 1).map_err(fail)?;
        }
        Ok::<(), Detail>(())
    })?;
    let full = mm::counters().since(&before).flushes[Trigger::Full as usize];
    let bad = (1..n)
        .step_by(2)
        .filter(|&i| read(base + i * PAGE) != i ^ 0x77)
        .count();
    let still_mapped = (0..n)
        .step_by(2)
        .filter(|&i| mm::translate(base + i * PAGE).is_some())
        .count();
    for i in (1..n).step_by(2) {
        mm::unmap(base + i * PAGE, 1).map_err(fail)?;
    }
    mm::flush();
    if bad != 0 || still_mapped != 0 {
        return Err(detail(format_args!(
            "{bad} kept pages lost, {still_mapped} unmapped pages still mapped"
        )));
    }
    let records = n.div_ceil(2);
    if mm::backend() == Backend::Batched && full < 1 {
        return Err(detail(format_args!(
            "{records} records in a {RING_CAPACITY}-record ring caused no full flush"
        )));
    }
    Ok(detail(format_args!(
        "{records} unmap records in one batch, {full} ring-full flushes, none lost"
    )))
}

pub fn bad_input() -> Outcome {
    let base = region(10);
    let end = VirtAddr::new(WINDOW_BASE + WINDOW_SIZE);
    let frame = PhysFrame::containing_address(PhysAddr::new(0x10_0000));
    type Check<'a> = (&'a str, Result<(), Error>, fn(&Error) -> bool);
    // SAFETY (the `map` calls below): the frame at 1 MiB is mapped read-only
    // and never written through; the calls are refused or undone at once.
    let checks: [Check<'_>; 11] = [
        ("unaligned", mm::map_anon(base + 8u64, 1, Prot::READ), |e| {
            matches!(e, Error::Unaligned(_))
        }),
        ("zero length", mm::map_anon(base, 0, Prot::READ), |e| {
            matches!(e, Error::ZeroLength)
        }),
        (
            "below window",
            mm::map_anon(VirtAddr::new(WINDOW_BASE - PAGE), 1, Prot::READ),
            |e| matches!(e, Error::OutsideWindow { .. }),
        ),
        (
            "past window end",
            mm::map_anon(end - PAGE, 2, Prot::READ),
            |e| matches!(e, Error::OutsideWindow { .. }),
        ),
        ("huge length", mm::unmap(base, u64::MAX / 2), |e| {
            matches!(e, Error::OutsideWindow { .. })
        }),
        (
            "writable+executable",
            mm::map_anon(
                base,
                1,
                Prot {
                    write: true,
                    exec: true,
                },
            ),
            |e| matches!(e, Error::WriteAndExecute),
        ),
        ("unmap not mapped", mm::unmap(base, 1), |e| {
            matches!(e, Error::NotMapped(_))
        }),
        (
            "protect not mapped",
            mm::protect(base, 1, Prot::READ),
            |e| matches!(e, Error::NotMapped(_)),
        ),
        (
            "no frames",
            unsafe { mm::map(base, &[], Prot::READ) },
            |e| matches!(e, Error::ZeroLength),
        ),
        (
            "map then map again",
            {
                let _ = unsafe { mm::map(base, &[frame], Prot::READ) };
                unsafe { mm::map(base, &[frame], Prot::READ) }
            },
            |e| matches!(e, Error::AlreadyMapped(_)),
        ),
        (
            "protect to W+X",
            mm::protect(
                base,
                1,
                Prot {
                    write: true,
                    exec: true,
                },
            ),
            |e| matches!(e, Error::WriteAndExecute),
        ),
    ];
    let _ = mm::unmap(base, 1);
    mm::flush();
    for (name, r, want) in checks {
        match r {
            Err(e) if want(&e) => {}
            other => return Err(detail(format_args!("{name}: got {other:?}"))),
        }
    }
    // Overlap with a mapping made earlier in the same, still open batch.
    let overlap = mm::batch(|| {
        let first = mm::map_anon(base + 4 * PAGE, 4, Prot::READ);
        let second = mm::map_anon(base + 6 * PAGE, 4, Prot::READ);
        (first, second)
    });
    let untouched = mm::translate(base + 8 * PAGE).is_none();
    let _ = mm::unmap(base + 4 * PAGE, 4);
    mm::flush();
    match overlap {
        (Ok(()), Err(Error::AlreadyMapped(a))) if a == base + 6 * PAGE && untouched => {}
        o => {
            return Err(detail(format_args!(
                "overlap within a batch: {o:?}, rest untouched: {untouched}"
            )))
        }
    }
    Ok(detail(format_args!(
        "12 bad inputs refused with their errors"
    )))
}

pub fn out_of_frames_mid_call() -> Outcome {
    let base = region(11);
    let free_before = mm::free_frames();
    let tables_before = mm::table_pages();
    // Tables first, so the failure lands on a data frame.
    mm::map_anon(base + 64 * PAGE, 1, Prot::READ).map_err(fail)?;
    mm::unmap(base + 64 * PAGE, 1).map_err(fail)?;
    mm::flush();
    let tables = mm::table_pages();
    mm::set_alloc_failure(Some(5));
    let before = mm::counters();
    let r = mm::map_anon(base, 10, Prot::READ_WRITE);
    let enqueued = mm::counters().since(&before).enqueued;
    mm::flush();
    mm::set_alloc_failure(None);
    let mapped = (0..10)
        .filter(|&i| mm::translate(base + i * PAGE).is_some())
        .count();
    let free_after = mm::free_frames();
    let leaked = free_before as i64 - (tables - tables_before) as i64 - free_after as i64;
    match r {
        Err(Error::OutOfFrames) if mapped == 0 && leaked == 0 && enqueued == 0 => Ok(detail(
            format_args!("failed at frame 6 of 10; nothing enqueued or mapped, no frame leaked"),
        )),
        r => Err(detail(format_args!(
            "{r:?}, {enqueued} entries enqueued, {mapped} pages left mapped, {leaked} frames leaked"
        ))),
    }
}

pub fn cr_lazy_mode() -> Outcome {
    let cr4 = mm::read_cr(Cr::Cr4);
    let before = mm::counters();
    mm::cpu_batch(|| {
        for _ in 0..10 {
            // SAFETY: CR4's current value, written back.
            unsafe { mm::write_cr(Cr::Cr4, cr4) };
        }
        if mm::read_cr(Cr::Cr4) != cr4 {
            return Err(detail(format_args!("CR4 cache lost the pending value")));
        }
        Ok(())
    })?;
    let d = mm::counters().since(&before);
    if d.cr_writes != 1 || d.cr_coalesced != 9 {
        return Err(detail(format_args!(
            "10 writes in CPU lazy mode: {} issued, {} coalesced",
            d.cr_writes, d.cr_coalesced
        )));
    }
    // SAFETY: as above.
    unsafe { mm::write_cr(Cr::Cr4, cr4) };
    let d2 = mm::counters().since(&before);
    if d2.cr_writes != 2 {
        return Err(detail(format_args!(
            "a write outside lazy mode was not issued at once"
        )));
    }
    Ok(detail(format_args!(
        "10 deferred CR4 writes issued once; reads served from the cache"
    )))
}

/// A page unmapped and mapped again in one batch: the first touch of the
/// new mapping must reach the new frame, not the old one through the
/// translation the pending unmap has not removed yet.
pub fn remap_in_batch() -> Outcome {
    let page = region(13);
    mm::map_anon(page, 1, Prot::READ_WRITE).map_err(fail)?;
    write(page, 0xaaaa);
    mm::flush();
    mm::batch(|| {
        mm::unmap(page, 1).map_err(fail)?;
        mm::map_anon(page, 1, Prot::READ_WRITE).map_err(fail)?;
        let fresh = read(page);
        if fresh != 0 {
            return Err(detail(format_args!(
                "the new mapping read {fresh:#x}: the old frame's data"
            )));
        }
        write(page, 0xbbbb);
        Ok(())
    })?;
    let v = read(page);
    mm::unmap(page, 1).map_err(fail)?;
    mm::flush();
    if v != 0xbbbb {
        return Err(detail(format_args!(
            "a write to the re-mapped page was lost: read {v:#x}"
        )));
    }
    Ok(detail(format_args!(
        "the re-mapped page showed a zeroed frame and kept its write"
    )))
}

static READER_STOP: AtomicU64 = AtomicU64::new(0);
static READER_RUNNING: AtomicU64 = AtomicU64::new(0);
static READER_BASE: AtomicU64 = AtomicU64::new(0);

/// Keeps reading `pages` pages from READER_BASE until told to stop, so this
/// vCPU's TLB holds them and every unmap must shoot it down.
fn busy_reader(pages: u64) {
    // Running work means this vCPU has left lazy TLB mode: from here on it
    // is a shootdown target.
    READER_RUNNING.store(1, Ordering::Release);
    while READER_STOP.load(Ordering::Acquire) == 0 {
        for i in 0..pages {
            let _ = probe_read(VirtAddr::new(
                READER_BASE.load(Ordering::Acquire) + i * PAGE,
            ));
        }
        // PAUSE: lets a round-robin emulator move to the next vCPU.
        core::hint::spin_loop();
    }
}

/// At a batch of 256 per-page unmaps, batched issues at most 1/64 of
/// immediate's invalidations and shootdown rounds. A second vCPU keeps
/// reading the pages, so it is a shootdown target throughout.
pub fn batched_vs_immediate_counts() -> Outcome {
    const N: u64 = 256;
    let base = region(12);
    let frame = PhysFrame::containing_address(PhysAddr::new(0x10_0000));
    let frames = [frame; N as usize];
    let reader = other_cpu();
    let run = |backend| -> Result<hyperbatch::queue::Counters, Detail> {
        mm::set_backend(backend);
        READER_BASE.store(base.as_u64(), Ordering::Release);
        READER_STOP.store(0, Ordering::Release);
        READER_RUNNING.store(0, Ordering::Release);
        if let Some(b) = reader {
            if !smp::post_work(b, busy_reader, N) {
                return Err(detail(format_args!("cpu{b} is busy")));
            }
            let deadline = crate::arch::x86_64::tsc::rdtsc() + crate::arch::x86_64::tsc::hz() * 5;
            while READER_RUNNING.load(Ordering::Acquire) == 0 {
                if crate::arch::x86_64::tsc::rdtsc() > deadline {
                    return Err(detail(format_args!("cpu{b} did not start reading")));
                }
                core::hint::spin_loop();
            }
        }
        let before = mm::counters();
        let r = mm::batch(|| {
            // SAFETY: the frame at 1 MiB, mapped read-only and only read.
            unsafe { mm::map(base, &frames, Prot::READ) }.map_err(fail)?;
            // Touch every page so TLBs hold them and the unmap matters.
            for i in 0..N {
                let _ = read(base + i * PAGE);
            }
            for i in 0..N {
                mm::unmap(base + i * PAGE, 1).map_err(fail)?;
            }
            Ok(())
        });
        let moved = mm::counters().since(&before);
        READER_STOP.store(1, Ordering::Release);
        if let Some(b) = reader {
            on_cpu_wait(b)?;
        }
        r.map(|_| moved)
    };
    let configured = mm::backend();
    let imm = run(Backend::Immediate);
    let bat = run(Backend::Batched);
    mm::set_backend(configured);
    let (imm, bat) = (imm?, bat?);
    let inv = |c: &hyperbatch::queue::Counters| c.invlpg + c.full_flushes;
    let ok_inv = inv(&bat) * 64 <= inv(&imm) && inv(&imm) > 0;
    // With a second vCPU reading, immediate must shoot down every unmap.
    let ok_sd = match reader {
        Some(_) => bat.shootdowns * 64 <= imm.shootdowns && imm.shootdowns >= N,
        None => imm.shootdowns == 0 && bat.shootdowns == 0,
    };
    let d = detail(format_args!(
        "immediate: {} invalidations, {} shootdowns; batched: {} invalidations, {} shootdowns",
        inv(&imm),
        imm.shootdowns,
        inv(&bat),
        bat.shootdowns
    ));
    if ok_inv && ok_sd {
        Ok(d)
    } else {
        Err(d)
    }
}

// --- 2 MiB pages ----------------------------------------------------------

/// A 2 MiB page reads back at every offset written, translates as one
/// large page, and faults everywhere after unmap and flush.
pub fn large_reads_back() -> Outcome {
    let base = region(14);
    mm::map_anon_2m(base, 1, Prot::READ_WRITE).map_err(fail)?;
    let offsets = [0u64, 8, 4096, 0x10_0000, (2 << 20) - 8];
    for (i, &off) in offsets.iter().enumerate() {
        write(base + off, 0x2020_0000 + i as u64);
    }
    let bad = offsets
        .iter()
        .enumerate()
        .filter(|(i, &off)| read(base + off) != 0x2020_0000 + *i as u64)
        .count();
    let t =
        mm::translate(base + 0x1234u64).ok_or_else(|| detail(format_args!("no translation")))?;
    mm::unmap_2m(base, 1).map_err(fail)?;
    mm::flush();
    if bad != 0 {
        return Err(detail(format_args!(
            "{bad} of {} words lost",
            offsets.len()
        )));
    }
    if t.size != mm::PageSize::Large || !t.owned || t.phys.as_u64() & ((2 << 20) - 1) != 0x1234 {
        return Err(detail(format_args!("translation {t:?}")));
    }
    for off in [0u64, 0x1f_f000] {
        expect_pf(probe_read(base + off), (base + off).as_u64(), false)?;
    }
    Ok(detail(format_args!(
        "a 2 MiB page read back at {} offsets and faults after unmap",
        offsets.len()
    )))
}

/// The cross-vCPU stale-TLB test for a 2 MiB page: B reads it (its TLB
/// holds the large translation), A unmaps it and flushes while B still
/// runs, B's next read must fault.
pub fn large_stale_tlb_cross_cpu() -> Outcome {
    let Some(b) = other_cpu() else {
        return Ok(detail(format_args!("skipped: needs a second vCPU")));
    };
    let base = region(15);
    let page = base + 0x7_3000u64;
    mm::map_anon_2m(base, 1, Prot::READ_WRITE).map_err(fail)?;
    write(page, 0x1a46e);
    mm::flush();
    STEP.store(0, Ordering::Release);
    REMOTE_RESULT.store(0, Ordering::Release);
    if !smp::post_work(b, remote_read_twice, page.as_u64()) {
        return Err(detail(format_args!("cpu{b} is busy")));
    }
    let deadline = crate::arch::x86_64::tsc::rdtsc() + crate::arch::x86_64::tsc::hz() * 5;
    while STEP.load(Ordering::Acquire) != 1 {
        if crate::arch::x86_64::tsc::rdtsc() > deadline {
            return Err(detail(format_args!("cpu{b} never read the page")));
        }
        core::hint::spin_loop();
    }
    let first = REMOTE_RESULT.load(Ordering::Acquire);
    mm::unmap_2m(base, 1).map_err(fail)?;
    mm::flush();
    STEP.store(2, Ordering::Release);
    on_cpu_wait(b)?;
    if first != 0x1a46e {
        return Err(detail(format_args!(
            "cpu{b} read {first:#x} before the unmap"
        )));
    }
    match REMOTE_RESULT.load(Ordering::Acquire) {
        REMOTE_FAULTED => Ok(detail(format_args!(
            "cpu{b} faulted on the unmapped 2 MiB page after the shootdown"
        ))),
        v => Err(detail(format_args!(
            "cpu{b} still read {v:#x} through a stale 2 MiB TLB entry after unmap+flush"
        ))),
    }
}

/// Sizes stay apart: a 4 KiB unmap or protect inside a 2 MiB page is
/// refused (it would split it), so is a 2 MiB map where 4 KiB tables are,
/// and neither changes the mapping.
pub fn large_wrong_size_refused() -> Outcome {
    let big = region(16);
    let small = region(16) + (4u64 << 20);
    mm::map_anon_2m(big, 1, Prot::READ_WRITE).map_err(fail)?;
    mm::map_anon(small, 1, Prot::READ_WRITE).map_err(fail)?;
    write(big + 0x5000u64, 77);
    let inner = big + 0x5000u64;
    let split = mm::unmap(inner, 1);
    let protect = mm::protect(inner, 1, Prot::READ);
    let over_small = mm::map_anon_2m(small, 1, Prot::READ_WRITE);
    let unaligned = mm::map_anon_2m(big + 4096u64, 1, Prot::READ_WRITE);
    let still = read(inner);
    let kept = mm::translate(inner).map(|t| (t.size, t.prot));
    mm::unmap_2m(big, 1).map_err(fail)?;
    mm::unmap(small, 1).map_err(fail)?;
    mm::flush();
    let large_here = |r: &Result<(), Error>, a: VirtAddr| matches!(r, Err(Error::WrongPageSize { addr, here: mm::PageSize::Large }) if *addr == a);
    let ok = large_here(&split, inner)
        && large_here(&protect, inner)
        && matches!(
            over_small,
            Err(Error::WrongPageSize {
                here: mm::PageSize::Small,
                ..
            })
        )
        && matches!(unaligned, Err(Error::Unaligned2M(_)))
        && still == 77
        && kept == Some((mm::PageSize::Large, Prot::READ_WRITE));
    let d = detail(format_args!(
        "4 KiB unmap inside: {split:?}; protect: {protect:?}; 2 MiB over 4 KiB: {over_small:?}; \
         misaligned: {unaligned:?}; the page kept {kept:?} and its data ({still})"
    ));
    if ok {
        Ok(d)
    } else {
        Err(d)
    }
}

// --- Idle vCPUs and frame reclaim -----------------------------------------

fn remote_map_unmap(addr: u64) {
    let va = VirtAddr::new(addr);
    let r = mm::map_anon(va, 16, Prot::READ_WRITE).and_then(|()| mm::unmap(va, 16));
    REMOTE_RESULT.store(
        match r {
            Ok(()) => mm::pending() as u64,
            Err(_) => REMOTE_FAULTED,
        },
        Ordering::Release,
    );
}

/// A vCPU whose posted work leaves unmaps queued flushes before it goes
/// idle: its frames are back before its work is reported done.
pub fn idle_flushes() -> Outcome {
    let Some(b) = other_cpu() else {
        return Ok(detail(format_args!("skipped: needs a second vCPU")));
    };
    if mm::backend() == Backend::Immediate {
        return Ok(detail(format_args!(
            "skipped: nothing stays queued under pv=immediate"
        )));
    }
    let free = mm::free_frames();
    on_cpu(b, remote_map_unmap, region(17).as_u64())?;
    let queued = REMOTE_RESULT.load(Ordering::Acquire);
    let after = mm::free_frames();
    let tables = mm::table_pages();
    // The table pages the map made stay; every data frame is back.
    if queued == 0 || queued == REMOTE_FAULTED || free - after > tables {
        return Err(detail(format_args!(
            "cpu{b} had {queued} records queued; free frames {free} -> {after}"
        )));
    }
    Ok(detail(format_args!(
        "cpu{b} went idle with {queued} records queued and flushed them: its 16 frames are back"
    )))
}

static HOLDING: AtomicU64 = AtomicU64::new(0);

/// Takes every free frame, chained through the frames themselves; returns
/// how many.
fn hold_all_frames() -> u64 {
    let mut n = 0;
    loop {
        let f = FRAMES.lock().as_mut().and_then(|a| a.alloc().ok());
        let Some(f) = f else { return n };
        let p = Identity
            .ptr(f.start_address(), 8)
            .expect("RAM is identity-mapped") as *mut u64;
        // SAFETY: a frame just allocated to this test, identity-mapped.
        unsafe { p.write(HOLDING.load(Ordering::Relaxed)) };
        HOLDING.store(f.start_address().as_u64(), Ordering::Relaxed);
        n += 1;
    }
}

/// Gives back `n` held frames (all of them for `u64::MAX`).
fn release_held(n: u64) {
    for _ in 0..n {
        let head = HOLDING.load(Ordering::Relaxed);
        if head == 0 {
            return;
        }
        let f = PhysFrame::containing_address(PhysAddr::new(head));
        let p = Identity
            .ptr(f.start_address(), 8)
            .expect("RAM is identity-mapped") as *mut u64;
        // SAFETY: a held frame; its first word links the next one.
        HOLDING.store(unsafe { p.read() }, Ordering::Relaxed);
        if let Some(a) = FRAMES.lock().as_mut() {
            let _ = a.free(f);
        }
    }
}

static RECLAIM_STOP: AtomicU64 = AtomicU64::new(0);
/// The flushes vCPU B made on request during the reclaim test, counted by B.
static RECLAIM_REQUESTED: AtomicU64 = AtomicU64::new(0);

/// vCPU B's side of the reclaim test: unmap its pages (the frees stay
/// queued), then stay busy, calling into the mm now and then as running
/// code does, until A is done.
fn remote_hold_then_spin(addr: u64) {
    let va = VirtAddr::new(addr);
    let r = mm::map_anon(va, 8, Prot::READ_WRITE).and_then(|()| mm::unmap(va, 8));
    REMOTE_RESULT.store(
        if r.is_ok() { 1 } else { REMOTE_FAULTED },
        Ordering::Release,
    );
    let before = mm::counters().flushes[Trigger::Request as usize];
    STEP.store(1, Ordering::Release);
    while RECLAIM_STOP.load(Ordering::Acquire) == 0 {
        let _ = mm::pending();
        core::hint::spin_loop();
    }
    let after = mm::counters().flushes[Trigger::Request as usize];
    RECLAIM_REQUESTED.store(after - before, Ordering::Release);
}

/// With every frame taken, vCPU B unmaps 8 pages and stays busy, its
/// frees queued; A's allocation, which finds the allocator empty, asks B
/// to flush and gets a frame instead of OutOfFrames.
pub fn reclaim_from_busy_vcpu() -> Outcome {
    let Some(b) = other_cpu() else {
        return Ok(detail(format_args!("skipped: needs a second vCPU")));
    };
    if mm::backend() == Backend::Immediate {
        return Ok(detail(format_args!(
            "skipped: nothing stays queued under pv=immediate"
        )));
    }
    let bva = region(18);
    // Tables first, so the test's frames go only to data.
    mm::map_anon(bva, 8, Prot::READ).map_err(fail)?;
    mm::map_anon(region(18) + (4u64 << 20), 1, Prot::READ).map_err(fail)?;
    mm::unmap(bva, 8).map_err(fail)?;
    mm::unmap(region(18) + (4u64 << 20), 1).map_err(fail)?;
    mm::flush();
    // This vCPU's cached frames too, so the allocation below must reclaim.
    mm::drain_frame_cache();
    let held = hold_all_frames();
    release_held(8); // exactly B's 8
    STEP.store(0, Ordering::Release);
    RECLAIM_STOP.store(0, Ordering::Release);
    RECLAIM_REQUESTED.store(0, Ordering::Release);
    REMOTE_RESULT.store(0, Ordering::Release);
    if !smp::post_work(b, remote_hold_then_spin, bva.as_u64()) {
        release_held(u64::MAX);
        return Err(detail(format_args!("cpu{b} is busy")));
    }
    let deadline = crate::arch::x86_64::tsc::rdtsc() + crate::arch::x86_64::tsc::hz() * 5;
    while STEP.load(Ordering::Acquire) != 1 && crate::arch::x86_64::tsc::rdtsc() < deadline {
        core::hint::spin_loop();
    }
    let b_ok = REMOTE_RESULT.load(Ordering::Acquire) == 1;
    let r = mm::map_anon(region(18) + (4u64 << 20), 1, Prot::READ_WRITE);
    RECLAIM_STOP.store(1, Ordering::Release);
    on_cpu_wait(b)?;
    let requests = RECLAIM_REQUESTED.load(Ordering::Acquire);
    let _ = mm::unmap(region(18) + (4u64 << 20), 1);
    mm::flush();
    release_held(u64::MAX);
    let d = detail(format_args!(
        "{held} frames held; cpu{b} unmapped 8 ({b_ok}); the map with the allocator empty: \
         {r:?} after {requests} requested flushes"
    ));
    if b_ok && r.is_ok() && requests >= 1 {
        Ok(d)
    } else {
        Err(d)
    }
}

// --- Progress beside shootdowns -------------------------------------------

static PROGRESS_STOP: AtomicU64 = AtomicU64::new(0);
/// Rounds done by the private-region vCPU, and by the second flusher.
static PROGRESS_PRIVATE: AtomicU64 = AtomicU64::new(0);
static PROGRESS_FLUSHER: AtomicU64 = AtomicU64::new(0);
/// Set by a side that hit an mm error (then it stops).
static PROGRESS_FAILED: AtomicU64 = AtomicU64::new(0);
const PROGRESS_PAGES: u64 = 4;

/// The two flushers' halves of region 19, and the private vCPU's page.
fn progress_half(k: u64) -> VirtAddr {
    region(19) + k * (2u64 << 20)
}

/// One flusher round: read the other flusher's pages, so this vCPU's TLB
/// holds them and it stays a shootdown target; then unmap and map again
/// its own, each flush sending a shootdown to the other vCPUs.
fn flusher_round(mine: VirtAddr, theirs: VirtAddr) -> Result<(), Error> {
    for i in 0..PROGRESS_PAGES {
        let _ = probe_read(theirs + i * PAGE);
    }
    mm::unmap(mine, PROGRESS_PAGES)?;
    mm::flush();
    mm::map_anon(mine, PROGRESS_PAGES, Prot::READ_WRITE)?;
    mm::flush();
    Ok(())
}

/// The second flusher (vCPU B), until told to stop.
fn progress_flusher(_: u64) {
    let (mine, theirs) = (progress_half(1), progress_half(0));
    if mm::map_anon(mine, PROGRESS_PAGES, Prot::READ_WRITE).is_err() {
        PROGRESS_FAILED.store(1, Ordering::Release);
        return;
    }
    while PROGRESS_STOP.load(Ordering::Acquire) == 0 {
        if flusher_round(mine, theirs).is_err() {
            PROGRESS_FAILED.store(1, Ordering::Release);
            return;
        }
        PROGRESS_FLUSHER.fetch_add(1, Ordering::Release);
    }
    let _ = mm::unmap(mine, PROGRESS_PAGES);
}

/// The third vCPU (C): map, write, unmap and flush a page of its own, until
/// told to stop.
fn progress_private(_: u64) {
    let va = progress_half(2);
    while PROGRESS_STOP.load(Ordering::Acquire) == 0 {
        let round = mm::map_anon(va, 1, Prot::READ_WRITE).and_then(|()| {
            write(va, 0x9e);
            mm::unmap(va, 1)
        });
        if round.is_err() {
            PROGRESS_FAILED.store(2, Ordering::Release);
            return;
        }
        mm::flush();
        PROGRESS_PRIVATE.fetch_add(1, Ordering::Release);
    }
}

/// While two vCPUs (this one and B) flush with shootdowns to each other,
/// a third (C) maps and unmaps in its private region: it must keep going,
/// since no mm lock is held across a wait for acknowledgements.
pub fn progress_beside_shootdowns() -> Outcome {
    let me = percpu::cpu_index();
    let mut others =
        (0..percpu::MAX_CPUS).filter(|&c| c != me && smp::online_mask() & (1 << c) != 0);
    let (Some(b), Some(c)) = (others.next(), others.next()) else {
        return Ok(detail(format_args!("skipped: needs three vCPUs")));
    };
    const ROUNDS: u64 = 64;
    PROGRESS_STOP.store(0, Ordering::Release);
    PROGRESS_PRIVATE.store(0, Ordering::Release);
    PROGRESS_FLUSHER.store(0, Ordering::Release);
    PROGRESS_FAILED.store(0, Ordering::Release);
    let (mine, theirs) = (progress_half(0), progress_half(1));
    mm::map_anon(mine, PROGRESS_PAGES, Prot::READ_WRITE).map_err(fail)?;
    if !smp::post_work(c, progress_private, 0) {
        return Err(detail(format_args!("cpu{c} is busy")));
    }
    if !smp::post_work(b, progress_flusher, 0) {
        PROGRESS_STOP.store(1, Ordering::Release);
        let _ = on_cpu_wait(c);
        return Err(detail(format_args!("cpu{b} is busy")));
    }
    // Both sides running before the count starts.
    let deadline = crate::arch::x86_64::tsc::rdtsc() + crate::arch::x86_64::tsc::hz() * 5;
    while (PROGRESS_PRIVATE.load(Ordering::Acquire) == 0
        || PROGRESS_FLUSHER.load(Ordering::Acquire) == 0)
        && PROGRESS_FAILED.load(Ordering::Acquire) == 0
        && crate::arch::x86_64::tsc::rdtsc() < deadline
    {
        smp::serve_mailbox();
        core::hint::spin_loop();
    }
    let before = mm::counters();
    let (private0, flusher0) = (
        PROGRESS_PRIVATE.load(Ordering::Acquire),
        PROGRESS_FLUSHER.load(Ordering::Acquire),
    );
    let mut mine_result = Ok(());
    for _ in 0..ROUNDS {
        mine_result = flusher_round(mine, theirs);
        if mine_result.is_err() {
            break;
        }
    }
    let (private, flusher) = (
        PROGRESS_PRIVATE.load(Ordering::Acquire) - private0,
        PROGRESS_FLUSHER.load(Ordering::Acquire) - flusher0,
    );
    let d = mm::counters().since(&before);
    PROGRESS_STOP.store(1, Ordering::Release);
    let waited = on_cpu_wait(b).and(on_cpu_wait(c));
    let _ = mm::unmap(mine, PROGRESS_PAGES);
    mm::flush();
    waited?;
    mine_result.map_err(fail)?;
    let failed = PROGRESS_FAILED.load(Ordering::Acquire);
    let dd = detail(format_args!(
        "cpu{me}: {ROUNDS} rounds, {} shootdowns, {} IPIs; cpu{b}: {flusher} rounds; \
         cpu{c} (private): {private} rounds meanwhile{}",
        d.shootdowns,
        d.ipis,
        if failed != 0 {
            "; an mm call failed"
        } else {
            ""
        }
    ));
    // Each of our rounds shoots down at B and C; C must have kept going
    // while they were in flight, B too.
    if failed == 0 && d.shootdowns >= ROUNDS && private >= 8 && flusher >= 1 {
        Ok(dd)
    } else {
        Err(dd)
    }
}
