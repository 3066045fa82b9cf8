//! The TSC and its frequency. Benchmarks count TSC cycles; the frequency turns
//! them into nanoseconds and times the SMP start-up delays.
//!
//! Sources, best first: a CPUID leaf that states it (hypervisor timing leaf
//! 0x40000010, then 0x15/0x16), kvmclock's scale factors, and last a
//! measurement against a fixed-rate timer: the ACPI PM timer, or PIT
//! channel 0 read back through its latch (QEMU microvm has a PIT but no
//! port-0x61 gate, so the classic gate-based calibration cannot run there).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hyperbatch::acpi_tables::{PmTimer, Reg};
use hyperbatch::hypervisor::{self, HostInfo, Hypervisor, TscSource, TscUnit};
use hyperbatch::phys::PhysMemory;
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static COUNTS_INSTRUCTIONS: AtomicBool = AtomicBool::new(false);

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; CR4.TSD is clear in ring 0 anyway.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The calibrated frequency, or a placeholder before calibration.
pub fn hz() -> u64 {
    match TSC_HZ.load(Ordering::Relaxed) {
        0 => 1_000_000_000,
        hz => hz,
    }
}

/// The calibrated frequency, or 0 before calibration (for the lock
/// timeout, which must not guess).
pub fn hz_if_known() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// What a TSC tick is in this run (set once at boot by [`set_unit`]).
pub fn unit() -> TscUnit {
    if COUNTS_INSTRUCTIONS.load(Ordering::Relaxed) {
        TscUnit::Instructions
    } else {
        TscUnit::Cycles
    }
}

/// TSC ticks across a block of [`hypervisor::ICOUNT_CHECK_NOPS`] `nop`s.
fn ticks_over_nops() -> u64 {
    let (lo0, hi0, lo1, hi1): (u32, u32, u32, u32);
    // SAFETY: RDTSC and NOP touch no memory and no state but the registers
    // named here.
    unsafe {
        core::arch::asm!(
            "rdtsc",
            "mov {lo0:e}, eax",
            "mov {hi0:e}, edx",
            ".rept 1000",
            "nop",
            ".endr",
            "rdtsc",
            lo0 = out(reg) lo0,
            hi0 = out(reg) hi0,
            out("eax") lo1,
            out("edx") hi1,
            options(nomem, nostack, preserves_flags)
        )
    };
    let t0 = (hi0 as u64) << 32 | lo0 as u64;
    let t1 = (hi1 as u64) << 32 | lo1 as u64;
    t1.wrapping_sub(t0)
}
const _: () = assert!(hypervisor::ICOUNT_CHECK_NOPS == 1000, "the .rept above");

/// Records whether the TSC counts instructions (`icount` on the command
/// line) after checking that it does: a run that claims counted figures on a
/// cycle-counting TSC would publish timings as exact counts. Without the
/// key, a TSC that counts instructions only earns a warning.
pub fn set_unit(icount: bool) -> Result<TscUnit, [u64; 3]> {
    let deltas = [ticks_over_nops(), ticks_over_nops(), ticks_over_nops()];
    let counts = hypervisor::tsc_counts_instructions(&deltas);
    if icount && !counts {
        return Err(deltas);
    }
    if !icount && counts {
        log::warn!(
            "the TSC counts instructions (QEMU -icount?) but the command line lacks `icount`: \
             figures are labelled cycles and are not"
        );
    }
    COUNTS_INSTRUCTIONS.store(icount, Ordering::Relaxed);
    Ok(unit())
}

/// Busy-waits for `us` microseconds.
///
/// Under QEMU icount only executed instructions move the clock, and in
/// single-threaded TCG a PAUSE hands the host thread to the next vCPU: a
/// wait of PAUSEs then costs one vCPU switch per few instructions, and the
/// AP start-ups of a 16-vCPU counting boot took a minute. There the wait
/// spins on plain instructions instead (nothing else needs the time: the
/// CPU being started waits for its SIPI).
pub fn delay_us(us: u64) {
    let end = rdtsc() + hz() / 1_000_000 * us;
    let counting = COUNTS_INSTRUCTIONS.load(Ordering::Relaxed);
    while rdtsc() < end {
        if counting {
            for i in 0..64u64 {
                core::hint::black_box(i);
            }
        } else {
            core::hint::spin_loop();
        }
    }
}

/// Finds the TSC frequency and remembers it.
pub fn calibrate(
    host: &HostInfo,
    cpuid: &impl hypervisor::Cpuid,
    pm_timer: Option<PmTimer>,
) -> (u64, TscSource) {
    let found = hypervisor::tsc_from_cpuid(cpuid)
        .or_else(|| {
            if host.hypervisor == Hypervisor::Kvm {
                kvmclock(host)
            } else {
                None
            }
        })
        .or_else(|| {
            pm_timer
                .and_then(measure_pm_timer)
                .map(|hz| (hz, TscSource::PmTimer))
        })
        .or_else(|| measure_pit().map(|hz| (hz, TscSource::Pit)));
    let (hz, source) = found.unwrap_or_else(|| {
        log::warn!(
            "no way to learn the TSC frequency; assuming 1 GHz: nanosecond figures will be wrong"
        );
        (1_000_000_000, TscSource::Assumed)
    });
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, source)
}

/// kvmclock's pvclock record (Linux's pvclock_vcpu_time_info, as KVM documents
/// for MSR_KVM_SYSTEM_TIME_NEW in Documentation/virt/kvm/x86/msr.rst).
#[repr(C, align(64))]
struct PvclockTimeInfo {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 3;

fn kvmclock(host: &HostInfo) -> Option<(u64, TscSource)> {
    if !host
        .pv_features
        .is_some_and(|f| f.has(KVM_FEATURE_CLOCKSOURCE2))
    {
        return None;
    }
    static mut PVCLOCK: PvclockTimeInfo = PvclockTimeInfo {
        version: 0,
        pad0: 0,
        tsc_timestamp: 0,
        system_time: 0,
        tsc_to_system_mul: 0,
        tsc_shift: 0,
        flags: 0,
        pad: [0; 2],
    };
    let pa = &raw mut PVCLOCK as u64; // identity-mapped: virtual == physical
    let mut msr = Msr::new(MSR_KVM_SYSTEM_TIME_NEW);
    // SAFETY: KVM offers the MSR (feature bit checked); it makes the host
    // write a 32-byte record at `pa`, which is ours, static and aligned. Only
    // the boot CPU runs this, and the record is read volatile while enabled.
    let (mul, shift) = unsafe {
        msr.write(pa | 1);
        let p = &raw const PVCLOCK;
        let mut result = (0, 0);
        for _ in 0..1000 {
            let v1 = (&raw const (*p).version).read_volatile();
            let mul = (&raw const (*p).tsc_to_system_mul).read_volatile();
            let shift = (&raw const (*p).tsc_shift).read_volatile();
            let v2 = (&raw const (*p).version).read_volatile();
            if v1 == v2 && v1 & 1 == 0 && mul != 0 {
                result = (mul, shift);
                break;
            }
        }
        msr.write(0);
        result
    };
    hypervisor::from_pvclock(mul, shift).map(|hz| (hz, TscSource::Kvmclock))
}

/// Counts TSC cycles over about 20 ms of the 3.579545 MHz ACPI PM timer.
fn measure_pm_timer(pm: PmTimer) -> Option<u64> {
    const TICKS: u64 = 71_591; // 20 ms
    let read = || match pm.reg {
        // SAFETY: the FADT names this port as the PM timer; reading it has no
        // side effects.
        Reg::Port(port) => unsafe { Port::<u32>::new(port).read() },
        // SAFETY: the FADT names this address as the PM timer; it lies in the
        // identity map (all of the low 4 GiB and every memory-map region).
        Reg::Mmio(pa) => match crate::memory::Identity.ptr(pa, 4) {
            Some(p) => unsafe { (p as *const u32).read_volatile() },
            None => 0,
        },
    };
    let mut prev = read();
    let t0 = rdtsc();
    let mut elapsed = 0u64;
    let mut spins = 0u64;
    while elapsed < TICKS {
        let now = read();
        elapsed += pm.delta(prev, now) as u64;
        prev = now;
        spins += 1;
        if spins > 50_000_000 {
            log::warn!("the ACPI PM timer does not advance; not using it");
            return None;
        }
    }
    hypervisor::from_pm_timer(rdtsc() - t0, elapsed)
}

/// Counts TSC cycles over about 20 ms of PIT channel 0 (1.193182 MHz), read
/// back through the counter latch.
fn measure_pit() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const TICKS: u64 = PIT_HZ / 50;
    let mut cmd = Port::<u8>::new(0x43);
    let mut ch0 = Port::<u8>::new(0x40);
    // SAFETY: the PIT's ports change no memory; nothing else uses the PIT.
    let read = |cmd: &mut Port<u8>, ch0: &mut Port<u8>| unsafe {
        cmd.write(0x00); // latch channel 0
        let lo = ch0.read() as u64;
        let hi = ch0.read() as u64;
        (hi << 8) | lo
    };
    // SAFETY: as above. Channel 0, lobyte/hibyte, mode 2, reload 0 (= 65536).
    unsafe {
        cmd.write(0x34);
        ch0.write(0);
        ch0.write(0);
    }
    let mut prev = read(&mut cmd, &mut ch0);
    let t0 = rdtsc();
    let mut elapsed = 0u64;
    let mut unchanged = 0u32;
    while elapsed < TICKS {
        let now = read(&mut cmd, &mut ch0);
        // The counter counts down and wraps at 65536.
        let step = prev.wrapping_sub(now) & 0xffff;
        if step == 0 {
            unchanged += 1;
            if unchanged > 1_000_000 {
                return None; // no PIT here
            }
        } else {
            unchanged = 0;
        }
        elapsed += step;
        prev = now;
    }
    let cycles = rdtsc() - t0;
    Some((cycles as u128 * PIT_HZ as u128 / elapsed as u128) as u64)
}
