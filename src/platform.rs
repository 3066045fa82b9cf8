//! What the kernel is running on: firmware tables (ACPI), the hypervisor and
//! its paravirtual features, and the TSC frequency. Everything the `boot`
//! record reports is gathered here.

use crate::arch::x86_64::{self as arch, power, tsc};
use crate::memory::Identity;
use hyperbatch::acpi_tables::{self, Cpu, Platform, Tables};
use hyperbatch::cmdline::Inject;
use hyperbatch::hypervisor::{self, HostInfo, TscSource, TscUnit};
use x86_64::PhysAddr;

/// The result of looking for ACPI: tables to reserve before the frame
/// allocator starts, then the parsed platform. `inject` may remove the RSDP
/// or corrupt the MADT first (fault injection, see inject.rs).
pub fn discover_acpi(rsdp: Option<PhysAddr>, inject: Option<Inject>) -> Option<Tables> {
    let rsdp = if inject == Some(Inject::NoAcpi) {
        log::warn!("inject=no_acpi: ignoring the RSDP the boot loader gave");
        None
    } else {
        rsdp
    };
    let Some(rsdp) = rsdp else {
        log::warn!("no ACPI: the boot loader gave no RSDP; running on the boot CPU only");
        return None;
    };
    if inject == Some(Inject::MadtChecksum) {
        match crate::inject::corrupt_madt(rsdp) {
            Some(at) => log::warn!(
                "inject=madt_checksum: flipped a bit of the MADT at {:#x}",
                at.as_u64()
            ),
            None => log::warn!("inject=madt_checksum: no MADT to corrupt"),
        }
    }
    match acpi_tables::discover(&Identity, rsdp) {
        Ok(t) => Some(t),
        Err(e) => {
            log::warn!("no usable ACPI: {e}; running on the boot CPU only");
            None
        }
    }
}

pub fn parse_acpi(tables: Option<&Tables>) -> Option<Platform> {
    let platform = match acpi_tables::parse(&Identity, tables?) {
        Ok(p) => p,
        Err(e) => {
            log::warn!("no usable ACPI: {e}; running on the boot CPU only");
            return None;
        }
    };
    match (platform.poweroff, platform.poweroff_missing) {
        (Some(p), _) => power::set_poweroff(p),
        (None, why) => log::warn!("no ACPI power-off: {}", why.unwrap_or("unknown reason")),
    }
    if platform.cpus_ignored > 0 {
        log::warn!(
            "{} CPUs listed beyond the {} this kernel supports are ignored",
            platform.cpus_ignored,
            acpi_tables::MAX_CPUS
        );
    }
    Some(platform)
}

/// The CPUs to start: the MADT's, or just this one.
pub fn cpus(platform: Option<&Platform>) -> &[Cpu] {
    platform.map(|p| &p.cpus[..]).unwrap_or(&[])
}

pub struct Host {
    pub info: HostInfo,
    /// Under icount this is the virtual clock's rate (1 GHz: one
    /// instruction per nanosecond), good for delays and not a CPU speed.
    pub tsc_hz: u64,
    pub tsc_source: TscSource,
    pub tsc_unit: TscUnit,
}

/// `icount`: the command line says the TSC counts instructions; a TSC that
/// does not stops the boot with the readings that say so.
pub fn detect_host(platform: Option<&Platform>, icount: bool) -> Host {
    let info = hypervisor::detect(&arch::cpuid);
    let (tsc_hz, tsc_source) =
        tsc::calibrate(&info, &arch::cpuid, platform.and_then(|p| p.pm_timer));
    let tsc_unit = tsc::set_unit(icount).unwrap_or_else(|d| {
        log::error!(
            "icount is on the command line, but the TSC does not count instructions: it moved \
             {}, {} and {} across {} nops (QEMU needs -icount shift=0; scripts/run-qemu.sh \
             --icount passes it)",
            d[0],
            d[1],
            d[2],
            hypervisor::ICOUNT_CHECK_NOPS
        );
        power::exit(power::EXIT_FAILURE)
    });
    Host {
        info,
        tsc_hz,
        tsc_source,
        tsc_unit,
    }
}

/// The TSC in the boot log's words: a frequency when it counts cycles, and
/// no frequency posing as time when it counts instructions.
pub struct TscSummary<'a>(pub &'a Host);

impl core::fmt::Display for TscSummary<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let h = self.0;
        match h.tsc_unit {
            TscUnit::Cycles => write!(f, "TSC {} Hz ({})", h.tsc_hz, h.tsc_source.name()),
            TscUnit::Instructions => f.write_str(
                "TSC counts guest instructions (icount): figures are instruction counts, not time",
            ),
        }
    }
}
