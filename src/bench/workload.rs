//! The `workload` benchmark suite: memory-management-heavy tasks run end to
//! end under `pv=immediate` and `pv=batched`, each ending with a checksum of
//! its data, which must match across backends (nothing lost, nothing
//! reordered).
//!
//! - `cow_snapshot`: the fork pattern behind the seed's kernbench figure. A
//!   working set is snapshotted by write-protecting it (one batch), then a
//!   mutator writes to random pages; each first write takes a real
//!   protection fault, and the page is copied to a fresh frame and remapped
//!   writable (unmap + map in one batch). The snapshot frames must still
//!   hold the data of the moment of the snapshot.
//! - `arena`: an arena that grows page by page (map_anon) while records are
//!   written into it and shrinks page by page from its old end (unmap),
//!   like a log-structured buffer.
//!
//! Both run with every other online vCPU reading the region they work on,
//! as the other threads of a process share its memory: each change must
//! then be shot down on them, as it would be in a multi-threaded process.

use crate::arch::x86_64::interrupts::{probe_write, Fault};
use crate::arch::x86_64::tsc;
use crate::bench::{emit, other_cpus, timing, Figure, Params, Readers};
use crate::memory::{Identity, FRAMES};
use crate::mm::{self, Protection as Prot};
use crate::platform::Host;
use hyperbatch::cmdline::Backend;
use hyperbatch::mm::WINDOW_BASE;
use hyperbatch::phys::PhysMemory;
use hyperbatch::queue::Counters;
use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

const PAGE: u64 = 4096;
const WORDS: u64 = PAGE / 8;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64 (Marsaglia 2003): deterministic per seed.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// FNV-1a over 64-bit words.
fn fnv(h: u64, w: u64) -> u64 {
    let mut h = h;
    for b in w.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn initial(page: u64, word: u64) -> u64 {
    (page << 32) ^ word ^ 0x9e37_79b9_7f4a_7c15
}

fn frame_ptr(f: PhysFrame) -> *mut u64 {
    Identity
        .ptr(f.start_address(), PAGE as usize)
        .expect("RAM frames are identity-mapped") as *mut u64
}

fn alloc_frame() -> Result<PhysFrame, &'static str> {
    FRAMES
        .lock()
        .as_mut()
        .ok_or("no allocator")?
        .alloc()
        .map_err(|_| "out of frames")
}

fn free_frame(f: PhysFrame) {
    if let Some(a) = FRAMES.lock().as_mut() {
        let _ = a.free(f);
    }
}

fn must(r: Result<(), hyperbatch::mm::Error>) -> Result<(), &'static str> {
    r.map_err(|e| {
        log::error!("workload mm operation failed: {e}");
        "mm operation failed"
    })
}

/// One run of the COW snapshot. Returns (checksum, snapshot mismatches, copies).
fn cow_snapshot(pages: u64, writes: u64, seed: u64) -> Result<(u64, u64, u64), &'static str> {
    let base = VirtAddr::new(COW_BASE);
    let mut originals: heapless::Vec<PhysFrame, 1024> = heapless::Vec::new();
    let mut copies: heapless::Vec<Option<PhysFrame>, 1024> = heapless::Vec::new();
    for i in 0..pages {
        let f = alloc_frame()?;
        let p = frame_ptr(f);
        for w in 0..WORDS {
            // SAFETY: a frame we just allocated, reached through the identity map.
            unsafe { p.add(w as usize).write(initial(i, w)) };
        }
        originals.push(f).map_err(|_| "too many pages")?;
        copies.push(None).map_err(|_| "too many pages")?;
    }
    // SAFETY: frames this run allocated, freed only after the unmap below.
    must(unsafe { mm::map(base, &originals, Prot::READ_WRITE) })?;
    mm::flush();
    // The snapshot: write-protect the working set in one batch.
    mm::batch(|| {
        for i in 0..pages {
            must(mm::protect(base + i * PAGE, 1, Prot::READ))?;
        }
        Ok::<(), &'static str>(())
    })?;
    let mut rng = Rng(seed | 1);
    for _ in 0..writes {
        let r = rng.next();
        let i = r % pages;
        let w = (r >> 20) % WORDS;
        let va = base + i * PAGE + w * 8;
        // SAFETY: our own mapped page; the write either lands or faults.
        match unsafe { probe_write(va, r) } {
            Ok(()) => {}
            Err(Fault {
                vector: Fault::PAGE_FAULT,
                error_code,
                ..
            }) if error_code & 3 == 3 => {
                // First write since the snapshot: copy, remap writable, retry.
                let old = originals[i as usize];
                let new = alloc_frame()?;
                // SAFETY: two distinct RAM frames, identity-mapped.
                unsafe {
                    core::ptr::copy_nonoverlapping(frame_ptr(old), frame_ptr(new), WORDS as usize)
                };
                mm::batch(|| {
                    must(mm::unmap(base + i * PAGE, 1))?;
                    // SAFETY: the copy is this run's frame, freed after the
                    // final unmap.
                    must(unsafe { mm::map(base + i * PAGE, &[new], Prot::READ_WRITE) })
                })?;
                copies[i as usize] = Some(new);
                // SAFETY: now mapped writable (the map's store is in place,
                // and the re-map flushed the old read-only translation).
                unsafe { probe_write(va, r) }.map_err(|_| "write after copy-on-write faulted")?;
            }
            Err(_) => return Err("unexpected fault in the mutator"),
        }
    }
    // Checksum the live working set, then check the snapshot.
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..pages {
        for w in 0..WORDS {
            // SAFETY: mapped, readable.
            sum = fnv(sum, unsafe {
                ((base + i * PAGE + w * 8).as_u64() as *const u64).read_volatile()
            });
        }
    }
    let mut bad = 0;
    for (i, f) in originals.iter().enumerate() {
        let p = frame_ptr(*f);
        for w in 0..WORDS {
            // SAFETY: our frame, identity-mapped.
            if unsafe { p.add(w as usize).read() } != initial(i as u64, w) {
                bad += 1;
            }
        }
    }
    must(mm::unmap(base, pages))?;
    mm::flush();
    let copied = copies.iter().flatten().count() as u64;
    for f in originals
        .iter()
        .copied()
        .chain(copies.iter().flatten().copied())
    {
        free_frame(f);
    }
    Ok((sum, bad, copied))
}

/// One run of the arena over `large` (2 MiB) or 4 KiB pages. Returns its
/// checksum. The work per byte is the same for both sizes: a record every
/// 64 bytes of a new page, a sampled word every 4 KiB of the live ones.
fn arena(rounds: u64, grow: u64, keep: u64, seed: u64, large: bool) -> Result<u64, &'static str> {
    let (base, bytes) = if large {
        (VirtAddr::new(ARENA_2M_BASE), 2 << 20)
    } else {
        (VirtAddr::new(ARENA_BASE), PAGE)
    };
    let at = |pg: u64| base + pg * bytes;
    let mut rng = Rng(seed | 1);
    let (mut lo, mut hi) = (0u64, 0u64); // live pages [lo, hi)
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..rounds {
        mm::batch(|| -> Result<(), &'static str> {
            for _ in 0..grow {
                must(if large {
                    mm::map_anon_2m(at(hi), 1, Prot::READ_WRITE)
                } else {
                    mm::map_anon(at(hi), 1, Prot::READ_WRITE)
                })?;
                hi += 1;
            }
            // Real work: fill the new pages with records and fold in a sample
            // of the older ones.
            for pg in hi - grow..hi {
                for w in (0..bytes / 8).step_by(8) {
                    let v = rng.next();
                    // SAFETY: mapped read+write just above (the store is in
                    // place, so the first touch needs no flush).
                    unsafe { ((at(pg) + w * 8).as_u64() as *mut u64).write_volatile(v) };
                }
            }
            for pg in lo..hi {
                for sub in 0..bytes / PAGE {
                    let w = (pg * 7 + sub) % WORDS;
                    // SAFETY: live pages of the arena.
                    let v = unsafe {
                        ((at(pg) + sub * PAGE + w * 8).as_u64() as *const u64).read_volatile()
                    };
                    sum = fnv(sum, v);
                }
            }
            while hi - lo > keep {
                must(if large {
                    mm::unmap_2m(at(lo), 1)
                } else {
                    mm::unmap(at(lo), 1)
                })?;
                lo += 1;
            }
            Ok(())
        })?;
    }
    must(if large {
        mm::unmap_2m(at(lo), hi - lo)
    } else {
        mm::unmap(at(lo), hi - lo)
    })?;
    mm::flush();
    Ok(sum)
}

const COW_BASE: u64 = WINDOW_BASE + (44 << 30);
const ARENA_BASE: u64 = WINDOW_BASE + (48 << 30);
const ARENA_2M_BASE: u64 = WINDOW_BASE + (60 << 30);

pub fn suite(p: &Params, _host: &Host) -> Result<(), &'static str> {
    let (pages, writes, rounds) = if p.quick {
        (64, 256, 32)
    } else {
        (512, 4096, 256)
    };
    // Round-robin TCG decides when the reader vCPUs run, which moves single
    // runs by 2x; the median of 11 is steadier than of 5.
    let reps = if p.quick { 3 } else { 11 };
    let others = other_cpus();
    let vcpus = others.len() as u64 + 1;
    let mut sums = [0u64; 2];
    for (k, backend) in [Backend::Immediate, Backend::Batched]
        .into_iter()
        .enumerate()
    {
        mm::set_backend(backend);
        let mut samples: heapless::Vec<u64, 16> = heapless::Vec::new();
        let mut counters = Counters::default();
        let mut last = (0, 0, 0);
        let readers = Readers::start(VirtAddr::new(COW_BASE), pages, PAGE, &others)?;
        for _ in 0..reps {
            let before = mm::counters();
            let t0 = tsc::rdtsc();
            last = cow_snapshot(pages, writes, 0x5eed)?;
            let _ = samples.push(tsc::rdtsc() - t0);
            counters.add(&mm::counters().since(&before));
        }
        drop(readers);
        if last.1 != 0 {
            log::error!("cow_snapshot: {} snapshot words changed", last.1);
            return Err("the snapshot changed");
        }
        sums[k] = last.0;
        emit(&Figure {
            suite: "workload",
            name: "cow_snapshot",
            backend: backend.as_str(),
            batch: pages,
            vcpus,
            ops: writes,
            reps: reps as u64,
            timing: timing(&mut samples, writes),
            counters: Some(&counters),
            checksum: Some(last.0),
            page_bytes: PAGE,
        });
    }
    if sums[0] != sums[1] {
        log::error!(
            "cow_snapshot checksums differ: immediate {:#x}, batched {:#x}",
            sums[0],
            sums[1]
        );
        return Err("cow_snapshot checksums differ across backends");
    }
    // The arena, with 4 KiB pages and with 2 MiB ones: 8 pages a round
    // and 64 live, or 1 a round and 2 live, each reader sweeping the span.
    for (name, large, rounds, grow, keep) in [
        ("arena", false, rounds, 8, 64),
        ("arena_2m", true, rounds / 8, 1, 2),
    ] {
        let bytes = if large { 2 << 20 } else { PAGE };
        let base = if large { ARENA_2M_BASE } else { ARENA_BASE };
        for (k, backend) in [Backend::Immediate, Backend::Batched]
            .into_iter()
            .enumerate()
        {
            mm::set_backend(backend);
            let mut samples: heapless::Vec<u64, 16> = heapless::Vec::new();
            let mut counters = Counters::default();
            let mut sum = 0;
            // The arena lives within its first rounds * grow pages; the
            // readers sweep that whole span (unmapped parts fault, as
            // expected).
            let readers = Readers::start(VirtAddr::new(base), rounds * grow, bytes, &others)?;
            for _ in 0..reps {
                let before = mm::counters();
                let t0 = tsc::rdtsc();
                sum = arena(rounds, grow, keep, 0xa2e4a, large)?;
                let _ = samples.push(tsc::rdtsc() - t0);
                counters.add(&mm::counters().since(&before));
            }
            drop(readers);
            sums[k] = sum;
            emit(&Figure {
                suite: "workload",
                name,
                backend: backend.as_str(),
                batch: grow,
                vcpus,
                ops: rounds * grow,
                reps: reps as u64,
                timing: timing(&mut samples, rounds * grow),
                counters: Some(&counters),
                checksum: Some(sum),
                page_bytes: bytes,
            });
        }
        if sums[0] != sums[1] {
            log::error!(
                "{name} checksums differ: immediate {:#x}, batched {:#x}",
                sums[0],
                sums[1]
            );
            return Err("arena checksums differ across backends");
        }
    }
    Ok(())
}
