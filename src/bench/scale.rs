//! `run=bench`'s `scale` suite: N vCPUs map and unmap at once, each in a
//! region of its own (`private`: no common lock, and no other vCPU reads
//! the pages, but one address space: each batch's flush still sends the
//! other running vCPUs one shootdown round, since nothing tells the sender
//! that their TLBs lack the pages) or all in one region that every one of
//! them reads (`shared`: every flush must reach the others, and they hold
//! the translations).
//!
//! Each vCPU runs the same loop: a batch of 256 one-page maps, then the 256
//! unmaps, `rounds` times. The figure is the elapsed time of the whole run
//! (from the start signal until the last vCPU is done) per operation, all
//! vCPUs' operations together: its inverse is the aggregate rate, and 1
//! vCPU's figure over N vCPUs' is the speed-up. Under icount the TSC counts
//! every vCPU's instructions, so the figure is total instructions per
//! operation, which stays flat when nothing serialises.

use super::{emit, must, other_cpus, timing, Figure, Params, MAX_REPS, PAGE};
use crate::arch::x86_64::{smp, tsc};
use crate::memory::FRAMES;
use crate::mm::{self, Protection as Prot};
use crate::platform::Host;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hyperbatch::cmdline::Backend;
use hyperbatch::mm::WINDOW_BASE;
use hyperbatch::queue::Counters;
use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

/// Pages per batch and per vCPU: one ring's worth of records at most.
const BATCH: u64 = 256;
/// Where the regions start: the private region of run slot n (0 is the
/// boot CPU) is 1 GiB from here times n + 1; the shared one starts here,
/// 64 pages per slot, so 8 vCPUs share one leaf table.
const SCALE_BASE: u64 = WINDOW_BASE + (16 << 30);
/// Frames every region maps, read-only (the same ones everywhere: caller
/// frames, so no vCPU contends for the frame allocator either).
const FRAMES_USED: usize = 64;

static GO: AtomicBool = AtomicBool::new(false);
static DONE: AtomicU64 = AtomicU64::new(0);
/// vCPUs waiting for the start signal: the clock starts when all are, so a
/// figure never includes a vCPU's wake-up from `hlt` (under multi-threaded
/// TCG, a host thread's; a busy host may take a scheduler tick for it).
static READY: AtomicU64 = AtomicU64::new(0);
static ROUNDS: AtomicU64 = AtomicU64::new(0);
static SHARED: AtomicBool = AtomicBool::new(false);
/// vCPUs in the current run.
static RUNNING: AtomicU64 = AtomicU64::new(1);
static POOL: [AtomicU64; FRAMES_USED] = [const { AtomicU64::new(0) }; FRAMES_USED];

/// Where run slot `slot` (0 = the boot CPU's run) works.
fn region(slot: usize, shared: bool) -> VirtAddr {
    if shared {
        VirtAddr::new(SCALE_BASE + slot as u64 * SHARED_PAGES * PAGE)
    } else {
        VirtAddr::new(SCALE_BASE + ((slot as u64 + 1) << 30))
    }
}

/// Pages per vCPU in the shared region: 8 vCPUs fill its one leaf table.
const SHARED_PAGES: u64 = 64;

fn pages(shared: bool) -> u64 {
    if shared {
        SHARED_PAGES
    } else {
        BATCH
    }
}

/// One vCPU's run: wait for the start signal, then the rounds.
fn run_one(slot: usize) {
    let shared = SHARED.load(Ordering::Acquire);
    let base = region(slot, shared);
    let n = pages(shared);
    let frame = |i: u64| {
        PhysFrame::containing_address(x86_64::PhysAddr::new(
            POOL[(i as usize) % FRAMES_USED].load(Ordering::Relaxed),
        ))
    };
    READY.fetch_add(1, Ordering::AcqRel);
    while !GO.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    for _ in 0..ROUNDS.load(Ordering::Acquire) {
        mm::batch(|| {
            for i in 0..n {
                // SAFETY: the pool's frames, mapped read-only; the suite
                // holds them until every run is over.
                must(unsafe { mm::map(base + i * PAGE, &[frame(i)], Prot::READ) });
            }
            if shared {
                // Use everybody's pages, so every vCPU's TLB holds them
                // and each flush must reach the others.
                for i in 0..SHARED_PAGES * RUNNING.load(Ordering::Acquire) {
                    let _ = crate::arch::x86_64::interrupts::probe_read(VirtAddr::new(
                        SCALE_BASE + i * PAGE,
                    ));
                }
            }
            for i in 0..n {
                must(mm::unmap(base + i * PAGE, 1));
            }
        });
    }
    mm::flush();
    DONE.fetch_add(1, Ordering::AcqRel);
}

fn worker(slot: u64) {
    run_one(slot as usize);
}

pub fn suite(p: &Params, _host: &Host) -> Result<(), &'static str> {
    // Private runs are cheap per operation: 32 rounds (16,384 operations
    // per vCPU, several ms under TCG) keep a host's scheduling hiccup from
    // deciding a timed figure. Shared runs cost 10x more per operation.
    let rounds_of = |shared: bool| match (p.quick, shared) {
        (true, _) => 2,
        (false, false) => 32,
        (false, true) => 8,
    };
    let reps = p.reps.min(if p.quick { 3 } else { 7 });
    let others = other_cpus();
    let mut frames: heapless::Vec<PhysFrame, FRAMES_USED> = heapless::Vec::new();
    for slot in &POOL {
        let f = FRAMES
            .lock()
            .as_mut()
            .ok_or("no frame allocator")?
            .alloc()
            .map_err(|_| "out of frames for the scale pool")?;
        slot.store(f.start_address().as_u64(), Ordering::Relaxed);
        let _ = frames.push(f);
    }
    mm::set_backend(Backend::Batched);
    let mut counts: heapless::Vec<usize, 8> = heapless::Vec::new();
    for v in [1, 2, 4, 8, 16] {
        if v <= others.len() + 1 {
            let _ = counts.push(v);
        }
    }
    for (name, shared) in [("map_unmap_private", false), ("map_unmap_shared", true)] {
        SHARED.store(shared, Ordering::Release);
        let rounds = rounds_of(shared);
        ROUNDS.store(rounds, Ordering::Release);
        for &v in &counts {
            let mut samples: heapless::Vec<u64, MAX_REPS> = heapless::Vec::new();
            let mut counters = Counters::ZERO;
            for rep in 0..p.warmup + reps {
                GO.store(false, Ordering::Release);
                DONE.store(0, Ordering::Release);
                READY.store(0, Ordering::Release);
                RUNNING.store(v as u64, Ordering::Release);
                for (k, &cpu) in others[..v - 1].iter().enumerate() {
                    if !smp::post_work(cpu, worker, k as u64 + 1) {
                        return Err("a scale vCPU is still busy");
                    }
                }
                while READY.load(Ordering::Acquire) < v as u64 - 1 {
                    smp::serve_mailbox();
                    core::hint::spin_loop();
                }
                let before = mm::counters_all();
                let t0 = tsc::rdtsc();
                GO.store(true, Ordering::Release);
                run_one(0);
                while DONE.load(Ordering::Acquire) < v as u64 {
                    smp::serve_mailbox();
                    core::hint::spin_loop();
                }
                let dt = tsc::rdtsc() - t0;
                for &cpu in &others[..v - 1] {
                    while !smp::work_done(cpu) {
                        smp::serve_mailbox();
                        core::hint::spin_loop();
                    }
                }
                if rep >= p.warmup {
                    let _ = samples.push(dt);
                    counters.add(&mm::counters_all().since(&before));
                }
            }
            let ops = v as u64 * rounds * pages(shared);
            emit(&Figure {
                suite: "scale",
                name,
                backend: "batched",
                batch: BATCH.min(pages(shared)),
                vcpus: v as u64,
                ops,
                reps: reps as u64,
                timing: timing(&mut samples, ops),
                counters: Some(&counters),
                checksum: None,
                page_bytes: PAGE,
            });
        }
    }
    if let Some(a) = FRAMES.lock().as_mut() {
        for f in frames {
            let _ = a.free(f);
        }
    }
    mm::set_backend(Backend::Batched);
    Ok(())
}
