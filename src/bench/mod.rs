//! `run=bench`: the microbenchmarks, one boot for all suites (or `suite=NAME`
//! for one; `quick` for a short run).
//!
//! - `exits`: what each privileged operation costs here, the way
//!   kvm-unit-tests' x86/vmexit reports it;
//! - `mm`: map+unmap, map+touch+unmap and protect over N pages, immediate
//!   against batched at batch sizes 1..ring capacity, and the floor (raw PTE
//!   stores and one flush per batch, no queue);
//! - `cpu`: CR writes in CPU lazy mode against immediate writes;
//! - `smp`: unmap with shootdown while 0..all other vCPUs hold the pages;
//! - `scale` (scale.rs): N vCPUs mapping and unmapping at once, in private
//!   regions and in a shared one;
//! - `workload` (workload.rs): whole tasks under both backends, with
//!   checksums.
//!
//! Benchmarks are not tests: they print figures and ratios and assert
//! nothing about time. Each figure times whole repetitions (the TSC on TCG
//! ticks in 26-cycle steps, too coarse for one operation), after warm-up
//! runs, and reports the median and p99 over repetitions. Counters are read
//! outside the timed region. Every figure is one `HB result` line
//! (tools/hbreport turns them into the report) and one row of a readable
//! table.

mod scale;
mod workload;

use crate::arch::x86_64::interrupts::{ipis_taken, probe_read, IPI_VECTOR};
use crate::arch::x86_64::percpu::{self, CpuSlots};
use crate::arch::x86_64::{apic, smp, tsc};
use crate::memory::FRAMES;
use crate::mm::{self, Protection as Prot};
use crate::platform::Host;
use crate::{console, println};
use atomic_refcell::{AtomicRefCell, AtomicRefMut};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hyperbatch::cmdline::{Backend, Config};
use hyperbatch::hb::{self, Object};
use hyperbatch::hypervisor::TscUnit;
use hyperbatch::mm::WINDOW_BASE;
use hyperbatch::queue::{Counters, Cr, Invalidation, Trigger, INVLPG_CEILING, RING_CAPACITY};
use x86_64::instructions::port::Port;
use x86_64::registers::control::{Cr3, Cr4};
use x86_64::structures::paging::{Page, PhysFrame, Size2MiB};
use x86_64::VirtAddr;

/// Bumped when a field of `result` or `env` changes meaning. Schema 2: a
/// figure carries its `unit` (`instructions` under icount, else `cycles`)
/// and its `scope`, and `per_op` holds the figure itself (median, p99, min
/// and max over repetitions); the counters' ratios moved to `events_per_op`.
pub const SCHEMA: u64 = 2;
const PAGE: u64 = 4096;
const MAX_REPS: usize = 64;

pub struct Params {
    pub quick: bool,
    /// Pages per `mm`/`smp` repetition.
    pub pages: u64,
    pub reps: usize,
    pub warmup: usize,
    /// Operations per `exits` repetition.
    pub exit_ops: u64,
}

impl Params {
    fn new(config: &Config<'_>) -> Self {
        if config.quick {
            Params {
                quick: true,
                pages: 256,
                reps: 5,
                warmup: 1,
                exit_ops: 200,
            }
        } else {
            Params {
                quick: false,
                pages: 2048,
                reps: 15,
                warmup: 2,
                exit_ops: 2000,
            }
        }
    }
}

/// TSC ticks per operation over the repetitions: cycles, or instructions
/// under icount (see [`tsc::unit`]).
#[derive(Clone, Copy)]
pub struct Timing {
    pub median: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

/// Times `reps` runs of `f` (after `warmup` untimed ones); each run does
/// `ops` operations.
pub fn measure(p: &Params, ops: u64, f: impl FnMut()) -> Timing {
    measure_counted(p, ops, Counters::default, f).0
}

/// As [`measure`], and also returns how `counters` moved over the timed
/// runs only (read outside the timed region, after the warm-up).
pub fn measure_counted(
    p: &Params,
    ops: u64,
    counters: impl Fn() -> Counters,
    mut f: impl FnMut(),
) -> (Timing, Counters) {
    for _ in 0..p.warmup {
        f();
    }
    let before = counters();
    let mut samples: heapless::Vec<u64, MAX_REPS> = heapless::Vec::new();
    hb_prof_on();
    for _ in 0..p.reps.min(MAX_REPS) {
        let t0 = tsc::rdtsc();
        f();
        let _ = samples.push(tsc::rdtsc() - t0);
    }
    hb_prof_off();
    let moved = counters().since(&before);
    (timing(&mut samples, ops), moved)
}

/// Marks the start of a figure's timed repetitions, for a guest profiler
/// (a TCG plugin that counts instructions per calling context between the
/// two marks; the n-th call opens section n). Costs a call and a return.
#[no_mangle]
#[inline(never)]
pub extern "C" fn hb_prof_on() {
    // Distinct bodies, so the linker cannot fold the two marks into one.
    PROF_MARKS[0].fetch_add(1, Ordering::Relaxed);
}

/// Marks the end of the timed repetitions (see [`hb_prof_on`]).
#[no_mangle]
#[inline(never)]
pub extern "C" fn hb_prof_off() {
    PROF_MARKS[1].fetch_add(1, Ordering::Relaxed);
}

static PROF_MARKS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

pub fn timing(samples: &mut [u64], ops: u64) -> Timing {
    samples.sort_unstable();
    let n = samples.len();
    let median = samples[n / 2];
    let p99 = samples[(n * 99).div_ceil(100).saturating_sub(1)];
    let per = |x: u64| x as f64 / ops as f64;
    Timing {
        median: per(median),
        p99: per(p99),
        min: per(samples[0]),
        max: per(samples[n - 1]),
    }
}

/// One figure.
pub struct Figure<'a> {
    pub suite: &'static str,
    pub name: &'static str,
    pub backend: &'static str,
    pub batch: u64,
    pub vcpus: u64,
    pub ops: u64,
    pub reps: u64,
    pub timing: Timing,
    pub counters: Option<&'a Counters>,
    pub checksum: Option<u64>,
    /// The page size an operation works on (0: not a page operation).
    pub page_bytes: u64,
}

fn ns(cycles: f64) -> f64 {
    cycles * 1e9 / tsc::hz() as f64
}

fn counters_obj(
    o: &mut Object<'_, crate::arch::x86_64::serial::Raw>,
    c: &Counters,
) -> Result<(), hb::Error> {
    o.u64("enqueued", c.enqueued)?
        .u64("flushes", c.flushes_total())?
        .u64("pte_writes", c.pte_writes)?
        .u64("invlpg", c.invlpg)?
        .u64("full_flushes", c.full_flushes)?
        .u64("cr_writes", c.cr_writes)?
        .u64("cr_coalesced", c.cr_coalesced)?
        .u64("ipis", c.ipis)?
        .u64("shootdowns", c.shootdowns)?
        .u64("fault_flushes", c.fault_flushes())?
        .u64("frames_released", c.frames_released)?
        .u64("tables_unsynced", c.tables_unsynced)?
        .u64("remote_invlpg", c.remote_invlpg)?
        .u64("remote_full_flushes", c.remote_full_flushes)?
        .u64("lazy_tlb_reloads", c.lazy_tlb_reloads)?
        .u64("touches", c.touches)?
        .object("flushes_by_trigger", |t| {
            for trigger in Trigger::ALL {
                t.u64(trigger.name(), c.flushes[trigger as usize])?;
            }
            Ok(())
        })?;
    Ok(())
}

/// Prints one figure: a readable row and an `HB result` line.
pub fn emit(f: &Figure<'_>) {
    let total = (f.ops * f.reps) as f64;
    let per = |x: u64| x as f64 / total;
    let (flushes, privileged) = f.counters.map_or((0.0, 0.0), |c| {
        (per(c.flushes_total()), per(c.privileged()))
    });
    let unit = tsc::unit();
    let short = match unit {
        TscUnit::Cycles => "cyc/op",
        TscUnit::Instructions => "ins/op",
    };
    println!(
        "  {:<9} {:<16} {:<9} b={:<4} v={:<2} {:>10.1} {short} (p99 {:>10.1})  flushes/op {:>7.4}  priv/op {:>7.3}",
        f.suite,
        f.name,
        f.backend,
        f.batch,
        f.vcpus,
        f.timing.median,
        f.timing.p99,
        flushes,
        privileged
    );
    console::record("result", |r| {
        r.u64("schema", SCHEMA)?
            .str("suite", f.suite)?
            .str("name", f.name)?
            .str("backend", f.backend)?
            .u64("batch", f.batch)?
            .u64("vcpus", f.vcpus)?
            .u64("ops", f.ops)?
            .u64("reps", f.reps)?
            .u64("page_bytes", f.page_bytes)?
            .str("unit", unit.name())?
            // Under icount the TSC advances with every vCPU's instructions:
            // a figure is all guest instructions per operation, the other
            // vCPUs' included. A cycle figure is time elapsed on this vCPU.
            .str(
                "scope",
                match unit {
                    TscUnit::Cycles => "elapsed",
                    TscUnit::Instructions => "all_vcpus",
                },
            )?
            .object("per_op", |o| {
                o.f64("median", f.timing.median)?
                    .f64("p99", f.timing.p99)?
                    .f64("min", f.timing.min)?
                    .f64("max", f.timing.max)?;
                Ok(())
            })?;
        if unit == TscUnit::Cycles {
            r.object("ns_per_op", |o| {
                o.f64("median", ns(f.timing.median))?
                    .f64("p99", ns(f.timing.p99))?;
                Ok(())
            })?;
        }
        if let Some(c) = f.counters {
            r.object("counters", |o| counters_obj(o, c))?
                .object("events_per_op", |o| {
                    o.f64_decimals("flushes", per(c.flushes_total()), 6)?
                        .f64_decimals("privileged", per(c.privileged()), 6)?
                        .f64_decimals("invalidations", per(c.invlpg + c.full_flushes), 6)?
                        .f64_decimals("ipis", per(c.ipis), 6)?;
                    Ok(())
                })?;
        }
        if let Some(sum) = f.checksum {
            r.hex("checksum", sum)?;
        }
        Ok(())
    });
}

fn progress(suite: &str, state: &str, seconds: f64) {
    console::record("progress", |r| {
        r.str("suite", suite)?
            .str("state", state)?
            .f64("seconds", seconds)?;
        Ok(())
    });
}

/// The smallest step the TSC takes, in its unit (26 cycles on QEMU TCG
/// here; under icount, the instructions of one trip round the loop).
fn tsc_resolution() -> u64 {
    let mut best = u64::MAX;
    for _ in 0..1000 {
        let a = tsc::rdtsc();
        let mut b = tsc::rdtsc();
        while b == a {
            b = tsc::rdtsc();
        }
        best = best.min(b - a);
    }
    best
}

pub fn run(config: &Config<'_>, host: &Host) -> u32 {
    let p = Params::new(config);
    let resolution = tsc_resolution();
    console::record("env", |r| {
        r.u64("schema", SCHEMA)?
            .str("hypervisor", host.info.hypervisor.name())?
            .str(
                "accel_hint",
                if host.info.hypervisor.name() == "tcg" {
                    "tcg"
                } else {
                    host.info.hypervisor.name()
                },
            )?
            .str("cpu_model", host.info.cpu_model.as_str())?
            .u64("vcpus", smp::online_count() as u64)?
            .str("unit", host.tsc_unit.name())?;
        let r = match host.tsc_unit {
            TscUnit::Cycles => r.u64("tsc_hz", host.tsc_hz)?,
            TscUnit::Instructions => r.null("tsc_hz")?,
        };
        r.str("tsc_source", host.tsc_source.name())?
            .u64("tsc_resolution", resolution)?
            .strs(
                "pv_features",
                host.info.pv_features.iter().flat_map(|f| f.iter_names()),
            )?
            .str("git_rev", env!("HB_GIT_REV"))?
            .u64("ring_capacity", RING_CAPACITY as u64)?
            .u64("invlpg_ceiling", INVLPG_CEILING as u64)?
            .str("default_backend", config.pv.as_str())?
            .bool("quick", p.quick)?;
        Ok(())
    });
    println!(
        "TSC resolution: {resolution} {}; every figure times whole repetitions, median and p99 of {} after {} warm-up",
        host.tsc_unit.name(),
        p.reps,
        p.warmup
    );
    type Suite = fn(&Params, &Host) -> Result<(), &'static str>;
    let suites: [(&str, Suite); 6] = [
        ("exits", exits),
        ("mm", mm_suite),
        ("cpu", cpu_suite),
        ("smp", smp_suite),
        ("scale", scale::suite),
        ("workload", workload::suite),
    ];
    // `suite=` names one suite or several, separated by commas; every name
    // must be one, checked before anything runs.
    if let Some(list) = config.suite {
        if let Some(bad) = list
            .split(',')
            .find(|w| !suites.iter().any(|(name, _)| name == w))
        {
            log::error!(
                "no benchmark suite is named {bad:?} (exits, mm, cpu, smp, scale, workload; \
                 several separated by commas)"
            );
            return crate::arch::x86_64::power::EXIT_FAILURE;
        }
    }
    for (name, suite) in suites {
        if config
            .suite
            .is_some_and(|s| !s.split(',').any(|w| w == name))
        {
            continue;
        }
        progress(name, "start", 0.0);
        println!("\n== {name}");
        let t0 = tsc::rdtsc();
        let r = suite(&p, host);
        let secs = (tsc::rdtsc() - t0) as f64 / tsc::hz() as f64;
        progress(name, "end", secs);
        if let Err(e) = r {
            log::error!("benchmark suite {name} failed: {e}");
            mm::set_backend(config.pv);
            return crate::arch::x86_64::power::EXIT_FAILURE;
        }
    }
    mm::set_backend(config.pv);
    crate::arch::x86_64::power::EXIT_SUCCESS
}

// --- exits -------------------------------------------------------------------

fn exits(p: &Params, _host: &Host) -> Result<(), &'static str> {
    let k = p.exit_ops;
    let one = |name: &'static str, t: Timing| {
        emit(&Figure {
            suite: "exits",
            name,
            backend: "none",
            batch: 1,
            vcpus: 1,
            ops: k,
            reps: p.reps as u64,
            timing: t,
            counters: None,
            checksum: None,
            page_bytes: 0,
        })
    };
    one(
        "cpuid",
        measure(p, k, || {
            for _ in 0..k {
                core::hint::black_box(crate::arch::x86_64::cpuid(0, 0));
            }
        }),
    );
    // COM1's scratch register: present wherever the console is, and inert.
    let mut scratch = Port::<u8>::new(0x3ff);
    one(
        "pio_out",
        measure(p, k, || {
            for _ in 0..k {
                // SAFETY: the UART scratch register holds nothing of ours.
                unsafe { scratch.write(0x5a) };
            }
        }),
    );
    one(
        "pio_in",
        measure(p, k, || {
            for _ in 0..k {
                // SAFETY: as above; reading it has no side effect.
                core::hint::black_box(unsafe { scratch.read() });
            }
        }),
    );
    // A 4 KiB window page, as the mm figures invalidate: not a kernel
    // static, which sits in a 2 MiB identity mapping. QEMU's TCG flushes
    // its whole TLB for an `invlpg` inside a large page it has cached, so
    // a kernel address measured a full flush and its refill instead.
    let va = VirtAddr::new(WINDOW_BASE + (40 << 30));
    mm::map_anon(va, 1, Prot::READ_WRITE).map_err(|_| "map the exits page")?;
    mm::flush();
    one(
        "invlpg",
        measure(p, k, || {
            for _ in 0..k {
                x86_64::instructions::tlb::flush(va);
            }
        }),
    );
    // An invlpg, then a read through the page: the read refills the
    // translation. Less the invlpg figure, a TLB fill (TCG walks the guest
    // tables in software).
    one(
        "tlb_fill",
        measure(p, k, || {
            for _ in 0..k {
                x86_64::instructions::tlb::flush(va);
                touch(va);
            }
        }),
    );
    one(
        "cr3_reload",
        measure(p, k, || {
            for _ in 0..k {
                let (f, fl) = Cr3::read();
                // SAFETY: reloading the live root changes no mapping.
                unsafe { Cr3::write(f, fl) };
            }
        }),
    );
    // CR4 written back with its own value: what a CR0/CR4 write costs here
    // (under VMX it exits when it touches a bit the CR4 guest/host mask
    // gives the host; the cost model in tools/hbreport prices it).
    // The bare instruction, not mm::write_cr: the queue's own work is
    // what the cpu suite measures.
    let cr4 = Cr4::read_raw();
    one(
        "cr4_write",
        measure(p, k, || {
            for _ in 0..k {
                // SAFETY: CR4's current value, written back, changes nothing.
                unsafe { Cr4::write_raw(cr4) };
            }
        }),
    );
    // A bare store to a leaf page-table entry of the window (the same value
    // again): what a trapping host charges per PTE write.
    // SAFETY: the entry gets back the value it holds, so the mm finds it
    // as it left it.
    let entry = unsafe { mm::raw_entry(va) }.ok_or("no leaf entry")?;
    one(
        "pte_write",
        measure(p, k, || {
            for _ in 0..k {
                entry.store(entry.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }),
    );
    mm::unmap(va, 1).map_err(|_| "unmap after pte_write")?;
    mm::flush();
    let me = percpu::cpu_index();
    one(
        "self_ipi",
        measure(p, k, || {
            for _ in 0..k {
                let before = ipis_taken();
                apic::send_self_ipi(IPI_VECTOR);
                while ipis_taken() == before {
                    core::hint::spin_loop();
                }
            }
        }),
    );
    match (0..percpu::MAX_CPUS).find(|&c| c != me && smp::online_mask() & (1 << c) != 0) {
        Some(other) => one(
            "ipi_roundtrip",
            measure(p, k, || {
                for _ in 0..k {
                    smp::call("IPI round trip", 1 << other, |_| {}, 0);
                }
            }),
        ),
        None => println!("  ipi_roundtrip: not measured, one vCPU online"),
    }
    println!("  vmcall: not measured: nothing here says it returns (TCG raises #UD; nested KVM without hardware virtualization hangs the vCPU)");
    Ok(())
}

// --- mm ------------------------------------------------------------------------

/// Batch sizes: powers of two up to the ring capacity.
pub fn batch_sizes() -> impl Iterator<Item = u64> {
    (0..)
        .map(|i| 1u64 << i)
        .take_while(|&b| b <= RING_CAPACITY as u64)
}

/// The frames of a [`Pool`]: static, because 4,096 of them are 32 KiB, too
/// much to move around on a kernel stack. One pool is alive at a time.
static POOL_FRAMES: AtomicRefCell<heapless::Vec<PhysFrame, 4096>> =
    AtomicRefCell::new(heapless::Vec::new());

/// A pool of frames the benchmarks map with `mm::map` (so no zeroing is timed).
struct Pool {
    frames: AtomicRefMut<'static, heapless::Vec<PhysFrame, 4096>>,
}

impl Pool {
    fn new(n: u64) -> Result<Pool, &'static str> {
        let frames = POOL_FRAMES
            .try_borrow_mut()
            .map_err(|_| "a benchmark frame pool is already in use")?;
        // Built first, so a failure below gives back what was taken.
        let mut pool = Pool { frames };
        let mut g = FRAMES.lock();
        let a = g.as_mut().ok_or("no frame allocator")?;
        for _ in 0..n {
            let f = a
                .alloc()
                .map_err(|_| "out of frames for the benchmark pool")?;
            if pool.frames.push(f).is_err() {
                let _ = a.free(f);
                return Err("pool too large");
            }
        }
        drop(g);
        Ok(pool)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(a) = FRAMES.lock().as_mut() {
            for f in self.frames.drain(..) {
                let _ = a.free(f);
            }
        }
    }
}

/// The leaf flags of a benchmark mapping (the frame's address goes in
/// the rest of the entry).
fn pte_flags(prot: Prot) -> u64 {
    hyperbatch::mm::pte(
        PhysFrame::containing_address(x86_64::PhysAddr::new(0)),
        prot,
        false,
    )
    .expect("benchmark protections are valid")
    .bits()
}

static FLOOR_ENTRIES: [core::sync::atomic::AtomicPtr<AtomicU64>; 4096] =
    [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; 4096];

fn must(r: Result<(), mm::Error>) {
    if let Err(e) = r {
        // A benchmark that cannot do its operations has no figure to give.
        panic!("benchmark mm operation failed: {e}");
    }
}

fn touch(v: VirtAddr) {
    // SAFETY: the benchmark touches only pages it just mapped readable.
    core::hint::black_box(unsafe { (v.as_u64() as *const u64).read_volatile() });
}

/// The `mm` figures, each one call shape:
/// - `map_unmap`: one API call per page, as code that maps page by page;
/// - `map_unmap_range`: one call per batch, the queue's own cost with
///   little API overhead around it;
/// - `map_touch_unmap`: per-page calls, every page read while mapped;
/// - `protect` and `protect_range`: per-page calls and one call per batch;
/// - the same per-page calls with 2 MiB pages (`*_2m`; their records say
///   `page_bytes`).
const MM_FIGURES: [&str; 5] = [
    "map_unmap",
    "map_unmap_range",
    "map_touch_unmap",
    "protect",
    "protect_range",
];
const MM_FIGURES_2M: [&str; 3] = ["map_unmap_2m", "map_touch_unmap_2m", "protect_2m"];

/// What the `mm` figures need of a page size: a pool of frames the
/// benchmark owns, and the calls.
trait Kind: Sized {
    const BYTES: u64;
    fn pool(n: u64) -> Result<Self, &'static str>;
    /// The physical address of pool frame `i`.
    fn frame(&self, i: u64) -> u64;
    /// Maps pool frames `first..first + count` at `at`.
    fn map(&self, at: VirtAddr, first: u64, count: u64, prot: Prot) -> Result<(), mm::Error>;
    fn unmap(at: VirtAddr, count: u64) -> Result<(), mm::Error>;
    fn protect(at: VirtAddr, count: u64, prot: Prot) -> Result<(), mm::Error>;
    /// The entry's flags for `prot` (the frame goes in the rest).
    fn flags(prot: Prot) -> u64;
    /// # Safety
    /// As [`mm::raw_entry`].
    unsafe fn raw_entry(at: VirtAddr) -> Option<&'static AtomicU64>;
    fn invalidation(first: VirtAddr, count: u64) -> Invalidation;
}

impl Kind for Pool {
    const BYTES: u64 = PAGE;

    fn pool(n: u64) -> Result<Self, &'static str> {
        Pool::new(n)
    }

    fn frame(&self, i: u64) -> u64 {
        self.frames[i as usize].start_address().as_u64()
    }

    fn map(&self, at: VirtAddr, first: u64, count: u64, prot: Prot) -> Result<(), mm::Error> {
        let f = &self.frames[first as usize..(first + count) as usize];
        // SAFETY: the pool's frames are the benchmark's until it is dropped,
        // after the last unmap.
        unsafe { mm::map(at, f, prot) }
    }

    fn unmap(at: VirtAddr, count: u64) -> Result<(), mm::Error> {
        mm::unmap(at, count)
    }

    fn protect(at: VirtAddr, count: u64, prot: Prot) -> Result<(), mm::Error> {
        mm::protect(at, count, prot)
    }

    fn flags(prot: Prot) -> u64 {
        pte_flags(prot)
    }

    unsafe fn raw_entry(at: VirtAddr) -> Option<&'static AtomicU64> {
        // SAFETY: the caller's contract.
        unsafe { mm::raw_entry(at) }
    }

    fn invalidation(first: VirtAddr, count: u64) -> Invalidation {
        let mut inv = Invalidation::none();
        inv.add_range(Page::containing_address(first), count as u32);
        inv
    }
}

/// The 2 MiB frames the benchmarks map.
struct Pool2m {
    frames: heapless::Vec<PhysFrame<Size2MiB>, 64>,
}

impl Drop for Pool2m {
    fn drop(&mut self) {
        if let Some(a) = FRAMES.lock().as_mut() {
            for f in self.frames.drain(..) {
                let _ = a.free_2m(f);
            }
        }
    }
}

impl Kind for Pool2m {
    const BYTES: u64 = 2 << 20;

    fn pool(n: u64) -> Result<Self, &'static str> {
        let mut p = Pool2m {
            frames: heapless::Vec::new(),
        };
        for _ in 0..n {
            let f = FRAMES
                .lock()
                .as_mut()
                .ok_or("no frame allocator")?
                .alloc_2m()
                .map_err(|_| "out of 2 MiB frames for the benchmark pool")?;
            p.frames.push(f).map_err(|_| "2 MiB pool too large")?;
        }
        Ok(p)
    }

    fn frame(&self, i: u64) -> u64 {
        self.frames[i as usize].start_address().as_u64()
    }

    fn map(&self, at: VirtAddr, first: u64, count: u64, prot: Prot) -> Result<(), mm::Error> {
        let f = &self.frames[first as usize..(first + count) as usize];
        // SAFETY: as for the 4 KiB pool.
        unsafe { mm::map_2m(at, f, prot) }
    }

    fn unmap(at: VirtAddr, count: u64) -> Result<(), mm::Error> {
        mm::unmap_2m(at, count)
    }

    fn protect(at: VirtAddr, count: u64, prot: Prot) -> Result<(), mm::Error> {
        mm::protect_2m(at, count, prot)
    }

    fn flags(prot: Prot) -> u64 {
        pte_flags(prot) | x86_64::structures::paging::PageTableFlags::HUGE_PAGE.bits()
    }

    unsafe fn raw_entry(at: VirtAddr) -> Option<&'static AtomicU64> {
        // SAFETY: the caller's contract.
        unsafe { mm::raw_entry_2m(at) }
    }

    fn invalidation(first: VirtAddr, count: u64) -> Invalidation {
        let mut inv = Invalidation::none();
        inv.add_large(Page::containing_address(first), count as u32);
        inv
    }
}

fn mm_suite(p: &Params, _host: &Host) -> Result<(), &'static str> {
    mm_figures::<Pool>(
        p,
        VirtAddr::new(WINDOW_BASE + (32 << 30)),
        p.pages,
        &MM_FIGURES,
    )?;
    let n2 = if p.quick { 8 } else { 32 };
    mm_figures::<Pool2m>(
        p,
        VirtAddr::new(WINDOW_BASE + (52 << 30)),
        n2,
        &MM_FIGURES_2M,
    )
}

fn mm_figures<K: Kind>(
    p: &Params,
    base: VirtAddr,
    n: u64,
    names: &[&'static str],
) -> Result<(), &'static str> {
    let pool = K::pool(n)?;
    // Page `i` of the region. The regions lie inside the window, so the
    // sums are canonical and the unchecked constructor is exact (`+`
    // re-checks, which the per-page loops would pay on every call).
    let at = |i: u64| VirtAddr::new_truncate(base.as_u64() + i * K::BYTES);
    // Create the tables once, so no figure pays for them.
    mm::set_backend(Backend::Batched);
    must(pool.map(base, 0, n, Prot::READ_WRITE));
    must(K::unmap(base, n));
    mm::flush();
    // The floor's entries, found before anything is timed: the floor is
    // the bare stores and one flush per batch, no page-table code at all.
    // (A static: the kernel stack has no room for 4096 pointers besides
    // the pool; only the boot CPU runs this suite.)
    if n as usize > FLOOR_ENTRIES.len() {
        return Err("pool too large");
    }
    for i in 0..n {
        // SAFETY: the floor leaves every entry as the mm expects between
        // figures: empty after the map/unmap figures, mapped read+write
        // with the pool's frame after the protect figures' fix-up below.
        let e = unsafe { K::raw_entry(at(i)) }.ok_or("no leaf entry")?;
        FLOOR_ENTRIES[i as usize].store(e as *const AtomicU64 as *mut AtomicU64, Ordering::Relaxed);
    }
    let entry = |i: u64| -> &AtomicU64 {
        // SAFETY: set above to entries of the window's tables, which live
        // as long as the kernel.
        unsafe { &*FLOOR_ENTRIES[i as usize].load(Ordering::Relaxed) }
    };
    let rw_flags = K::flags(Prot::READ_WRITE);
    let ro_flags = K::flags(Prot::READ);
    let value = |i: u64, flags: u64| pool.frame(i) | flags;
    let batches = |b: u64| (0..n).step_by(b as usize);
    let flush_range = |c: u64, b: u64| mm::invalidate_now(&K::invalidation(at(c), b));

    for &name in names {
        let protect = name.starts_with("protect");
        let range = name.contains("range");
        let touching = name.starts_with("map_touch");
        for b in batch_sizes().take_while(|&b| b <= n) {
            for backend in ["immediate", "batched", "floor"] {
                mm::set_backend(if backend == "immediate" {
                    Backend::Immediate
                } else {
                    Backend::Batched
                });
                if protect {
                    must(pool.map(base, 0, n, Prot::READ_WRITE));
                    mm::flush();
                }
                let mut flip = false;
                // The floor's shootdown IPIs (the rest of what it issues is
                // fixed by the figure's shape: floor_counters).
                let mut floor_ipis = 0u64;
                let mut run_once = || {
                    flip = !flip;
                    let (prot, flags) = if flip {
                        (Prot::READ, ro_flags)
                    } else {
                        (Prot::READ_WRITE, rw_flags)
                    };
                    for c in batches(b) {
                        let pages = c..c + b;
                        if backend == "floor" {
                            if !protect {
                                for i in pages.clone() {
                                    entry(i).store(value(i, rw_flags), Ordering::Release);
                                }
                                if touching {
                                    for i in pages.clone() {
                                        touch(at(i));
                                    }
                                }
                                for i in pages {
                                    entry(i).store(0, Ordering::Release);
                                }
                            } else {
                                for i in pages {
                                    entry(i).store(value(i, flags), Ordering::Release);
                                }
                            }
                            floor_ipis += u64::from(flush_range(c, b));
                            continue;
                        }
                        mm::batch(|| match (protect, range) {
                            (false, false) => {
                                for i in pages.clone() {
                                    must(pool.map(at(i), i, 1, Prot::READ_WRITE));
                                }
                                if touching {
                                    for i in pages.clone() {
                                        touch(at(i));
                                    }
                                }
                                for i in pages {
                                    must(K::unmap(at(i), 1));
                                }
                            }
                            (false, true) => {
                                must(pool.map(at(c), c, b, Prot::READ_WRITE));
                                must(K::unmap(at(c), b));
                            }
                            (true, false) => {
                                for i in pages {
                                    must(K::protect(at(i), 1, prot));
                                }
                            }
                            (true, true) => must(K::protect(at(c), b, prot)),
                        });
                    }
                };
                let (t, mut c) = measure_counted(p, n, mm::counters_all, &mut run_once);
                if backend == "floor" {
                    c = floor_counters(name, n, b, floor_ipis, p);
                }
                if touching {
                    // One read of every page while it is mapped.
                    c.touches = n * p.reps.min(MAX_REPS) as u64;
                }
                mm::flush();
                if protect {
                    // Back to mapped read+write (the floor wrote the
                    // entries directly), then unmapped for the next figure.
                    for i in 0..n {
                        entry(i).store(value(i, rw_flags), Ordering::Release);
                    }
                    flush_range(0, n);
                    must(K::unmap(base, n));
                    mm::flush();
                }
                emit(&Figure {
                    suite: "mm",
                    name,
                    backend,
                    batch: b,
                    vcpus: 1,
                    ops: n,
                    reps: p.reps as u64,
                    timing: t,
                    counters: Some(&c),
                    checksum: None,
                    page_bytes: K::BYTES,
                });
            }
        }
    }
    drop(pool);
    Ok(())
}

/// What the floor issued over the measured repetitions, counted the way
/// the queue counts: its stores (two per page for the map figures, one for
/// protect), one flush per batch and the invalidation it coalesces to.
/// `ipis` covers the warm-up repetitions too; every repetition sends the
/// same.
fn floor_counters(name: &str, n: u64, b: u64, ipis: u64, p: &Params) -> Counters {
    let reps = p.reps.min(MAX_REPS) as u64;
    let all = reps + p.warmup as u64;
    let batches = n / b * reps;
    let mut c = Counters::ZERO;
    let stores = if name.starts_with("protect") { 1 } else { 2 };
    c.pte_writes = stores * n * reps;
    c.flushes[Trigger::Explicit as usize] = batches;
    if b as usize > INVLPG_CEILING {
        c.full_flushes = batches;
        // Each full flush starts a sync epoch, and the batch then writes
        // the leaf tables its pages lie in (512 pages each; the regions
        // are 2 MiB aligned), as the queue counts `tables_unsynced`.
        c.tables_unsynced = batches * b.div_ceil(512);
    } else {
        c.invlpg = b * batches;
    }
    c.ipis = ipis / all * reps;
    c.shootdowns = if c.ipis > 0 { batches } else { 0 };
    c
}

// --- cpu -----------------------------------------------------------------------

fn cpu_suite(p: &Params, _host: &Host) -> Result<(), &'static str> {
    let n = p.pages;
    let cr4 = mm::read_cr(Cr::Cr4);
    for b in batch_sizes() {
        for backend in ["immediate", "batched"] {
            let (t, c) = measure_counted(p, n, mm::counters, || {
                let writes = || {
                    for _ in 0..b {
                        // SAFETY: CR4's current value, written back.
                        unsafe { mm::write_cr(Cr::Cr4, cr4) };
                    }
                };
                for _ in (0..n).step_by(b as usize) {
                    if backend == "batched" {
                        mm::cpu_batch(writes);
                    } else {
                        writes();
                    }
                }
            });
            emit(&Figure {
                suite: "cpu",
                name: "cr_write",
                backend,
                batch: b,
                vcpus: 1,
                ops: n,
                reps: p.reps as u64,
                timing: t,
                counters: Some(&c),
                checksum: None,
                page_bytes: 0,
            });
        }
    }
    Ok(())
}

// --- smp -----------------------------------------------------------------------

static READERS_STOP: AtomicBool = AtomicBool::new(false);
static READ_PASSES: CpuSlots<AtomicU64> =
    CpuSlots::new([const { AtomicU64::new(0) }; percpu::MAX_CPUS]);
static SMP_BASE: AtomicU64 = AtomicU64::new(0);
static SMP_PAGES: AtomicU64 = AtomicU64::new(0);
static SMP_STRIDE: AtomicU64 = AtomicU64::new(PAGE);

/// A vCPU that keeps reading the pages (faults are expected once they are
/// unmapped), so its TLB holds them and shootdowns must reach it.
fn reader(_: u64) {
    let base = SMP_BASE.load(Ordering::Acquire);
    let n = SMP_PAGES.load(Ordering::Acquire);
    let stride = SMP_STRIDE.load(Ordering::Acquire);
    while !READERS_STOP.load(Ordering::Acquire) {
        for i in 0..n {
            let _ = probe_read(VirtAddr::new(base + i * stride));
            // PAUSE: a round-robin emulator (single-threaded TCG) moves to
            // the next vCPU here instead of at the end of a time slice.
            core::hint::spin_loop();
        }
        READ_PASSES.mine().fetch_add(1, Ordering::Release);
    }
}

/// Other vCPUs kept reading a range of pages (the threads of a process
/// that share its memory), so every change to that range must be shot down
/// on them. Readers stop when this is dropped.
pub struct Readers {
    cpus: heapless::Vec<usize, { percpu::MAX_CPUS }>,
}

impl Readers {
    /// Starts `cpus` reading `pages` pages of `stride` bytes from `base`
    /// (one word each).
    pub fn start(
        base: VirtAddr,
        pages: u64,
        stride: u64,
        cpus: &[usize],
    ) -> Result<Readers, &'static str> {
        SMP_BASE.store(base.as_u64(), Ordering::Release);
        SMP_PAGES.store(pages, Ordering::Release);
        SMP_STRIDE.store(stride, Ordering::Release);
        READERS_STOP.store(false, Ordering::Release);
        let mut r = Readers {
            cpus: heapless::Vec::new(),
        };
        for &c in cpus {
            if !smp::post_work(c, reader, 0) {
                return Err("a reader vCPU is still busy");
            }
            let _ = r.cpus.push(c);
        }
        Ok(r)
    }

    /// Waits until every reader has been over the whole range twice since
    /// the call, so each holds the current translations.
    pub fn settle(&self) {
        let seen: heapless::Vec<u64, { percpu::MAX_CPUS }> = self
            .cpus
            .iter()
            .map(|&c| READ_PASSES.of(c).load(Ordering::Acquire))
            .collect();
        for (i, &c) in self.cpus.iter().enumerate() {
            while READ_PASSES.of(c).load(Ordering::Acquire) < seen[i] + 2 {
                smp::serve_mailbox();
                core::hint::spin_loop();
            }
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        READERS_STOP.store(true, Ordering::Release);
        for &c in &self.cpus {
            while !smp::work_done(c) {
                smp::serve_mailbox();
                core::hint::spin_loop();
            }
        }
    }
}

/// Every online vCPU but this one.
pub fn other_cpus() -> heapless::Vec<usize, { percpu::MAX_CPUS }> {
    let me = percpu::cpu_index();
    (0..percpu::MAX_CPUS)
        .filter(|&c| c != me && smp::online_mask() & (1 << c) != 0)
        .collect()
}

fn smp_suite(p: &Params, _host: &Host) -> Result<(), &'static str> {
    // Small on purpose: with more vCPUs than host cores, an immediate
    // shootdown waits for descheduled vCPU threads (milliseconds each).
    let n = p.pages.min(256);
    smp_figures::<Pool>(
        p,
        VirtAddr::new(WINDOW_BASE + (36 << 30)),
        n,
        "unmap_shootdown",
    )?;
    let n2 = if p.quick { 4 } else { 16 };
    smp_figures::<Pool2m>(
        p,
        VirtAddr::new(WINDOW_BASE + (56 << 30)),
        n2,
        "unmap_shootdown_2m",
    )
}

/// Unmap with shootdown while 0..all other vCPUs keep reading the pages.
fn smp_figures<K: Kind>(
    p: &Params,
    base: VirtAddr,
    n: u64,
    name: &'static str,
) -> Result<(), &'static str> {
    let pool = K::pool(n)?;
    let at = |i: u64| VirtAddr::new_truncate(base.as_u64() + i * K::BYTES);
    let others = other_cpus();
    let b = RING_CAPACITY as u64;
    for v in 1..=others.len() + 1 {
        for backend in ["immediate", "batched"] {
            mm::set_backend(if backend == "immediate" {
                Backend::Immediate
            } else {
                Backend::Batched
            });
            let readers = Readers::start(base, n, K::BYTES, &others[..v - 1])?;
            let mut samples: heapless::Vec<u64, MAX_REPS> = heapless::Vec::new();
            let mut counters = Counters::default();
            let reps = p.reps.min(7);
            for rep in 0..p.warmup + reps {
                must(pool.map(base, 0, n, Prot::READ));
                mm::flush();
                readers.settle();
                // With the readers' remote invalidations, which a
                // shootdown makes them run (the cost model prices them),
                // read without interrupting them.
                let before = mm::counters_with_others_remote();
                let t0 = tsc::rdtsc();
                for c in (0..n).step_by(b as usize) {
                    mm::batch(|| {
                        for i in c..(c + b).min(n) {
                            must(K::unmap(at(i), 1));
                        }
                    });
                }
                mm::flush();
                let dt = tsc::rdtsc() - t0;
                if rep >= p.warmup {
                    let _ = samples.push(dt);
                    counters.add(&mm::counters_with_others_remote().since(&before));
                }
            }
            drop(readers);
            let t = timing(&mut samples, n);
            emit(&Figure {
                suite: "smp",
                name,
                backend,
                batch: b,
                vcpus: v as u64,
                ops: n,
                reps: reps as u64,
                timing: t,
                counters: Some(&counters),
                checksum: None,
                page_bytes: K::BYTES,
            });
        }
    }
    drop(pool);
    Ok(())
}
