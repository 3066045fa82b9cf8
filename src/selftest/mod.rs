//! `run=test`: the in-guest tests. Each prints one `HB test` record (with
//! `"skipped":true` when the machine cannot run it, say with one vCPU); the
//! run fails if any test fails, and a closing `HB tests` record counts them.
//! `test=NAME` runs one test. Four names are deliberate failures that must
//! produce a readable report and a failure exit: `test=fault` (a null
//! dereference), `test=overflow` (a kernel stack overflow),
//! `test=self_deadlock` (a lock taken twice) and `test=lock_timeout` (a lock
//! another vCPU never releases).

// A test outcome carries its message, built once per test, so the size of
// its error variant does not matter.
#![allow(clippy::result_large_err)]

use crate::arch::x86_64::interrupts::{self, probe_exec, probe_read, probe_write, Fault};
use crate::arch::x86_64::{power, smp};
use crate::console;
use crate::memory;
use core::fmt::Write;
use hyperbatch::cmdline::Config;
use hyperbatch::sync::SpinLock;
use x86_64::VirtAddr;

pub(crate) type Detail = heapless::String<160>;
type TestFn = fn() -> Result<Detail, Detail>;

const TESTS: &[(&str, TestFn)] = &[
    ("null_page_faults", null_page_faults),
    ("text_is_not_writable", text_is_not_writable),
    ("rodata_is_not_writable", rodata_is_not_writable),
    ("data_is_not_executable", data_is_not_executable),
    ("stack_is_not_executable", stack_is_not_executable),
    ("ipi_round_trip", ipi_round_trip),
    ("frames_alloc_free", frames_alloc_free),
    ("mm_map_reads_back", mm::map_reads_back),
    ("mm_map_given_frames", mm::map_given_frames),
    ("mm_translate_in_place", mm::translate_in_place),
    ("mm_unmap_faults_after_flush", mm::unmap_faults_after_flush),
    ("mm_protect", mm::protect_read_only),
    ("mm_stale_tlb_cross_cpu", mm::stale_tlb_cross_cpu),
    (
        "mm_frame_kept_until_shootdown",
        mm::frame_kept_until_shootdown,
    ),
    ("mm_ring_full_mid_batch", mm::ring_full_mid_batch),
    ("mm_bad_input", mm::bad_input),
    ("mm_out_of_frames_mid_call", mm::out_of_frames_mid_call),
    ("mm_remap_taken_over", mm::remap_taken_over),
    ("mm_cr_lazy_mode", mm::cr_lazy_mode),
    (
        "mm_batched_vs_immediate_counts",
        mm::batched_vs_immediate_counts,
    ),
    ("mm_remap_in_batch", mm::remap_in_batch),
    ("mm_large_reads_back", mm::large_reads_back),
    (
        "mm_large_stale_tlb_cross_cpu",
        mm::large_stale_tlb_cross_cpu,
    ),
    ("mm_large_wrong_size_refused", mm::large_wrong_size_refused),
    ("mm_idle_flushes", mm::idle_flushes),
    ("mm_reclaim_from_busy_vcpu", mm::reclaim_from_busy_vcpu),
    (
        "mm_progress_beside_shootdowns",
        mm::progress_beside_shootdowns,
    ),
    ("mm_anon_not_executable", protect::anon_not_executable),
    ("mm_wx_refused", protect::wx_refused),
    (
        "stack_overflow_recovered",
        protect::stack_overflow_recovered,
    ),
    (
        "mm_out_of_frames_mid_batch",
        inject::out_of_frames_mid_batch,
    ),
    (
        "mm_out_of_tables_mid_batch",
        inject::out_of_tables_mid_batch,
    ),
    ("mm_concurrent_flush", crate::stress::concurrent_flush),
];

mod mm;

mod protect;

mod inject;

pub fn run(config: &Config<'_>) -> u32 {
    if config.test == Some("fault") {
        deliberate_fault();
    }
    if config.test == Some("overflow") {
        protect::deliberate_overflow();
    }
    if config.test == Some("self_deadlock") {
        deliberate_self_deadlock();
    }
    if config.test == Some("lock_timeout") {
        deliberate_lock_timeout();
    }
    let mut failed = 0;
    let mut skipped = 0;
    let mut ran = 0;
    for (name, test) in TESTS
        .iter()
        .filter(|(n, _)| config.test.is_none_or(|t| t == *n))
    {
        ran += 1;
        let (ok, detail) = match test() {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        // A test that cannot run here says so in its detail; the record
        // says it too, so that the host does not count it as a pass.
        let skip = ok && detail.starts_with(SKIPPED);
        if !ok {
            failed += 1;
        }
        if skip {
            skipped += 1;
        }
        console::record("test", |r| {
            r.str("name", name)?
                .bool("ok", ok)?
                .bool("skipped", skip)?
                .str("detail", &detail)?;
            Ok(())
        });
    }
    if ran == 0 {
        log::error!("no test is named {:?}", config.test.unwrap_or(""));
        return power::EXIT_FAILURE;
    }
    console::record("tests", |r| {
        r.u64("listed", TESTS.len() as u64)?
            .u64("ran", ran)?
            .u64("passed", ran - failed - skipped)?
            .u64("skipped", skipped)?
            .u64("failed", failed)?;
        Ok(())
    });
    log::info!(
        "{} of {} tests passed, {} skipped, {} failed",
        ran - failed - skipped,
        ran,
        skipped,
        failed
    );
    if failed == 0 {
        power::EXIT_SUCCESS
    } else {
        power::EXIT_FAILURE
    }
}

/// How a test's detail starts when the test could not run here.
pub(crate) const SKIPPED: &str = "skipped: ";

pub(crate) fn detail(args: core::fmt::Arguments<'_>) -> Detail {
    let mut s = Detail::new();
    let _ = s.write_fmt(args);
    s
}

/// Passes when `result` is a #PF whose error code says `what`.
pub(crate) fn expect_pf<T>(
    result: Result<T, Fault>,
    addr: u64,
    protection: bool,
) -> Result<Detail, Detail> {
    match result {
        Err(f)
            if f.vector == Fault::PAGE_FAULT
                && f.addr == addr
                && (f.error_code & 1 != 0) == protection =>
        {
            Ok(detail(format_args!("{f}")))
        }
        Err(f) => Err(detail(format_args!("wrong fault: {f}"))),
        Ok(_) => Err(detail(format_args!("no fault at {addr:#x}"))),
    }
}

fn null_page_faults() -> Result<Detail, Detail> {
    expect_pf(probe_read(VirtAddr::new(0)), 0, false)
}

fn text_is_not_writable() -> Result<Detail, Detail> {
    let addr = run as *const () as u64;
    let before = probe_read(VirtAddr::new(addr))
        .map_err(|f| detail(format_args!("cannot read text: {f}")))?;
    // SAFETY: if the write were to succeed it would store the same bytes back.
    expect_pf(
        unsafe { probe_write(VirtAddr::new(addr), before) },
        addr,
        true,
    )
}

static RODATA_WORD: u64 = 0x5eed;

fn rodata_is_not_writable() -> Result<Detail, Detail> {
    let addr = &raw const RODATA_WORD as u64;
    // SAFETY: as above, the same value would be stored back.
    expect_pf(
        unsafe { probe_write(VirtAddr::new(addr), RODATA_WORD) },
        addr,
        true,
    )
}

/// A `ret` instruction in writable data: executing it must fault.
static mut DATA_RET: [u8; 16] = [0xc3; 16];

fn data_is_not_executable() -> Result<Detail, Detail> {
    let addr = &raw mut DATA_RET as u64;
    // SAFETY: the target holds `ret`, so even a wrongly successful fetch returns.
    expect_pf(unsafe { probe_exec(VirtAddr::new(addr)) }, addr, true)
}

fn stack_is_not_executable() -> Result<Detail, Detail> {
    let code = core::hint::black_box([0xc3u8; 16]);
    let addr = code.as_ptr() as u64;
    // SAFETY: as above.
    expect_pf(unsafe { probe_exec(VirtAddr::new(addr)) }, addr, true)
}

fn ipi_round_trip() -> Result<Detail, Detail> {
    let online = smp::online_count();
    // A CPU that does not answer ends the run through the watchdog.
    match smp::ping_all() {
        sent if sent as usize == online - 1 => Ok(detail(format_args!("{sent} IPIs acknowledged"))),
        sent => Err(detail(format_args!(
            "{sent} IPIs for {} other CPUs",
            online - 1
        ))),
    }
}

fn frames_alloc_free() -> Result<Detail, Detail> {
    let mut guard = memory::FRAMES.lock();
    let frames = guard
        .as_mut()
        .ok_or_else(|| detail(format_args!("no frame allocator")))?;
    let before = frames.free_frames();
    let f = frames
        .alloc_zeroed(&memory::Identity)
        .map_err(|e| detail(format_args!("{e}")))?;
    if !frames.is_allocated(f) || frames.free_frames() != before - 1 {
        return Err(detail(format_args!("allocation not recorded")));
    }
    frames.free(f).map_err(|e| detail(format_args!("{e}")))?;
    match frames.free(f) {
        Err(_) if frames.free_frames() == before => Ok(detail(format_args!(
            "{:#x} allocated, freed, double free refused",
            f.start_address().as_u64()
        ))),
        Err(_) => Err(detail(format_args!("free count drifted"))),
        Ok(()) => Err(detail(format_args!("double free accepted"))),
    }
}

/// `test=fault`: dereference the null page with no probe armed.
fn deliberate_fault() -> ! {
    log::info!("deliberate fault: reading the null page");
    // SAFETY: not safe at all, on purpose: page 0 is unmapped, so this faults
    // and the fault handler reports it and ends the run.
    let v = unsafe { core::ptr::read_volatile(core::hint::black_box(8usize) as *const u64) };
    log::error!("the null page was readable (read {v:#x})");
    let _ = interrupts::vector_name(0);
    power::exit(power::EXIT_FAILURE)
}

/// The lock the deliberate lock failures take.
static DELIBERATE: SpinLock<()> = SpinLock::named("the deliberate test lock", ());

/// `test=self_deadlock`: take a lock this CPU already holds. The lock must
/// panic, naming itself, instead of spinning forever.
fn deliberate_self_deadlock() -> ! {
    log::info!("deliberate self-deadlock: taking a lock this CPU holds");
    let held = DELIBERATE.lock();
    let again = DELIBERATE.lock();
    drop((again, held));
    log::error!("taking a held lock again did not panic");
    power::exit(power::EXIT_FAILURE)
}

fn hold_forever(_: u64) {
    let _held = DELIBERATE.lock();
    loop {
        core::hint::spin_loop();
    }
}

/// `test=lock_timeout`: another vCPU takes a lock and never lets go. The
/// wait must end in a report that names that vCPU as the holder.
fn deliberate_lock_timeout() -> ! {
    let me = crate::arch::x86_64::percpu::cpu_index();
    let others = smp::online_mask() & !(1 << me);
    if others == 0 {
        log::error!("test=lock_timeout needs a second vCPU");
        power::exit(power::EXIT_FAILURE);
    }
    let holder = others.trailing_zeros() as usize;
    if !smp::post_work(holder, hold_forever, 0) {
        log::error!("test=lock_timeout: cpu{holder} is busy");
        power::exit(power::EXIT_FAILURE);
    }
    let tsc = crate::arch::x86_64::tsc::rdtsc;
    let deadline = tsc() + crate::arch::x86_64::tsc::hz() * 5;
    while DELIBERATE.holder() != Some(holder as u32) {
        if tsc() > deadline {
            log::error!("test=lock_timeout: cpu{holder} did not take the lock in 5 s");
            power::exit(power::EXIT_FAILURE);
        }
        core::hint::spin_loop();
    }
    log::info!("deliberate lock timeout: cpu{holder} holds a lock forever, cpu{me} waits for it");
    drop(DELIBERATE.lock());
    log::error!("a lock held forever was granted");
    power::exit(power::EXIT_FAILURE)
}
