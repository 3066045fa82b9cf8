//! The hyperbatch kernel.
//!
//! The flow, in the order a boot runs it:
//! 1. `boot.s`: PVH entry, long mode, `kernel_entry` on the boot stack.
//! 2. [`kernel_entry`]: console, `hvm_start_info`, command line, ACPI table
//!    discovery, frame allocator and page tables ([`memory`]), then a move
//!    onto the boot CPU's guarded stack.
//! 3. [`bsp_main`]: descriptor tables, platform ([`platform`]: ACPI, the
//!    hypervisor, the TSC), the local APIC, the other CPUs, the `boot` record.
//! 4. The job the command line asks for, then [`power`](arch::x86_64::power).
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod arch;
mod bench;
mod console;
mod inject;
mod memory;
mod mm;
mod platform;
mod selftest;
mod stress;

use arch::x86_64::{self as x86, apic, gdt, interrupts, percpu, power, smp, stacks, tsc};
use core::fmt::Write;
use hyperbatch::acpi_tables::Tables;
use hyperbatch::cmdline::{self, Config, Run};
use hyperbatch::frames::{Range, MAX_RESERVED};
use hyperbatch::hypervisor::TscUnit;
use hyperbatch::pvh::{self, BootInfo};
use hyperbatch::sync::{self, Once};
use x86_64::PhysAddr;

/// What the boot CPU found before it changed stacks.
struct Boot {
    info: BootInfo,
    acpi: Option<Tables>,
    memory: memory::MemoryReport,
}

static BOOT: Once<Boot> = Once::new();

/// What the locks need to name a holder and time a wait (sync.rs).
static LOCKS: sync::Platform = sync::Platform {
    cpu: || percpu::cpu_index() as u32,
    ticks: tsc::rdtsc,
    ticks_per_second: tsc::hz_if_known,
};

/// Stops the boot with a message and a failure status.
fn boot_failure(what: &str, err: &dyn core::fmt::Display) -> ! {
    log::error!("{what}: {err}");
    power::exit(power::EXIT_FAILURE)
}

/// Called by boot.s in long mode on the boot stack, with the physical
/// address of `hvm_start_info`.
extern "C" fn kernel_entry(start_info: u32) -> ! {
    // SAFETY: index 0 is the boot CPU's and nothing uses GS yet.
    unsafe { percpu::init_this_cpu(0, 0) };
    sync::install(&LOCKS);
    console::init();
    log::info!("hyperbatch {} booting", env!("HB_GIT_REV"));

    let info = pvh::parse(&memory::Identity, PhysAddr::new(start_info as u64))
        .unwrap_or_else(|e| boot_failure("bad PVH start_info", &e));
    // Check the command line now, so a typo fails before anything else runs.
    let config = cmdline::parse(&info.cmdline)
        .unwrap_or_else(|e| boot_failure("bad kernel command line", &e));
    console::set_level(config.log);
    if let Err(e) = inject::start_info(config.inject, PhysAddr::new(start_info as u64)) {
        boot_failure("bad PVH start_info", &e);
    }

    let acpi = platform::discover_acpi(info.rsdp, config.inject);
    let mut reserved: heapless::Vec<Range, MAX_RESERVED> = heapless::Vec::new();
    let acpi_ranges = acpi.iter().flat_map(|t| t.ranges());
    for r in info
        .boot_ranges
        .iter()
        .copied()
        .chain(acpi_ranges.filter_map(|(start, len)| Range::from_len(start, len)))
    {
        if reserved.push(r).is_err() {
            boot_failure(
                "too many reserved ranges",
                &"boot structures and ACPI tables exceed the reservation list",
            );
        }
    }
    let memory = memory::init(&info.memory_map, &reserved)
        .unwrap_or_else(|e| boot_failure("memory setup failed", &e));
    let stacks = stacks::map_for(0)
        .unwrap_or_else(|e| boot_failure("no memory for the boot CPU's stacks", &e));
    if BOOT.set(Boot { info, acpi, memory }).is_err() {
        boot_failure("kernel_entry ran twice", &"");
    }
    // SAFETY: map_for just mapped this stack; nothing else uses it.
    unsafe { stacks::switch_to(stacks.kernel_top, bsp_main) }
}

extern "C" fn bsp_main() -> ! {
    let boot = BOOT.get().expect("kernel_entry stored the boot state");
    let config = cmdline::parse(&boot.info.cmdline).expect("checked in kernel_entry");

    gdt::init_this_cpu(stacks::tops(0).df_top);
    x86::pic::remap_and_mask();
    interrupts::init();
    interrupts::load();

    let acpi = platform::parse_acpi(boot.acpi.as_ref());
    let host = platform::detect_host(acpi.as_ref(), config.icount);
    let want_x2apic = host.info.has_x2apic;
    apic::init_this_cpu(true, want_x2apic);
    // SAFETY: still the boot CPU's own slot; now with its real APIC ID.
    unsafe { percpu::init_this_cpu(0, apic::id()) };
    log::info!(
        "{} on {}, {}, {} MiB RAM identity-mapped up to {} GiB, {} mode",
        host.info.cpu_model.as_str(),
        host.info.hypervisor,
        platform::TscSummary(&host),
        boot.memory.ram_bytes / memory::MIB,
        boot.memory.identity_end / memory::GIB,
        apic::mode().name()
    );

    mm::init(config.pv, config.no_shootdown);

    let skip = config.skip_cpu;
    let cpus = platform::cpus(acpi.as_ref());
    if let Some(id) = skip {
        let mut listed: heapless::Vec<u32, { percpu::MAX_CPUS }> = heapless::Vec::new();
        for c in cpus.iter().filter(|c| c.startable()) {
            // Cannot fail: the MADT parser keeps at most MAX_CPUS CPUs.
            let _ = listed.push(c.apic_id);
        }
        if let Err(e) = cmdline::check_skip_cpu(id, apic::id(), &listed) {
            boot_failure("bad kernel command line", &e);
        }
    }
    let started = smp::start_aps(cpus, want_x2apic, skip);
    x86_64::instructions::interrupts::enable();
    // Every other CPU must answer (or the watchdog ends the run), and
    // every CPU that came online must have been asked.
    let acked = smp::ping_all() as usize;
    let ipi_ok = acked + 1 == started.online;
    if !ipi_ok {
        log::error!(
            "IPI ping reached {acked} CPUs, but {} other CPUs came online",
            started.online - 1
        );
    }

    console::record("boot", |r| {
        r.u64("cpus_listed", started.listed as u64)?
            .u64("cpus_online", started.online as u64)?
            .u64s("cpus_failed", started.failed.iter().map(|&id| id as u64))?
            .str("hypervisor", host.info.hypervisor.name())?
            .str("tsc_unit", host.tsc_unit.name())?;
        // Under icount the calibrated rate is the virtual clock's, not a
        // CPU speed: it is left out rather than presented as one.
        let r = match host.tsc_unit {
            TscUnit::Cycles => r.u64("tsc_hz", host.tsc_hz)?,
            TscUnit::Instructions => r.null("tsc_hz")?,
        };
        r.str("tsc_source", host.tsc_source.name())?
            .u64("mem_bytes", boot.memory.ram_bytes)?
            .u64("mem_free_bytes", boot.memory.free_bytes)?
            .strs(
                "pv_features",
                host.info.pv_features.iter().flat_map(|f| f.iter_names()),
            )?
            .str("apic", apic::mode().name())?
            .bool("acpi", acpi.is_some())?
            .bool("ipi_ok", ipi_ok)?
            .str("cpu_model", host.info.cpu_model.as_str())?
            .str("pv", config.pv.as_str())?
            .str("cmdline", &boot.info.cmdline)?;
        Ok(())
    });

    // Counted from here, so that the injected failure hits the job, not the
    // start-up of the other CPUs.
    if let Some(n) = config.fail_alloc_at {
        mm::set_alloc_failure(Some(n));
    }
    let status = run(&config, &host);
    power::exit(status)
}

fn run(config: &Config<'_>, host: &platform::Host) -> u32 {
    match config.run {
        Run::Boot => power::EXIT_SUCCESS,
        Run::Test => selftest::run(config),
        Run::Probe => probe(host),
        Run::Bench => bench::run(config, host),
        Run::Stress => stress::run(config),
    }
}

/// `run=probe`: how fast this CPU runs ring-0 code, for run-qemu.sh's
/// `--accel auto`. A tight loop costs a few cycles per iteration on
/// hardware; KVM that interprets ring 0 takes hundreds.
fn probe(_host: &platform::Host) -> u32 {
    const ITERS: u64 = 100_000;
    let t0 = tsc::rdtsc();
    let mut x = 0u64;
    for i in 0..ITERS {
        x = core::hint::black_box(x.wrapping_add(i));
    }
    let cycles = tsc::rdtsc() - t0;
    console::record("probe", |r| {
        r.u64("iters", ITERS)?.u64("loop_cycles", cycles)?;
        Ok(())
    });
    power::EXIT_SUCCESS
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // Never take the console lock here: the panicking code may hold it.
    let _ = writeln!(
        x86::serial::Raw,
        "\n!!! cpu{} panicked: {}",
        percpu::cpu_index(),
        info
    );
    power::exit(power::EXIT_FAILURE)
}
