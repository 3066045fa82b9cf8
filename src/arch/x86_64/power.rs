//! The ways out of the VM, tried in order: QEMU's isa-debug-exit (which
//! carries our status), then ACPI S5 (cloud-hypervisor, or QEMU without the
//! device; the status then travels in the `HB exit` line), then halting.

use super::serial;
use core::fmt::Write;
use hyperbatch::acpi_tables::{pm1_cnt_value, sleep_control_value, Poweroff, Reg};
use hyperbatch::phys::PhysMemory;
use hyperbatch::sync::SpinLock;
use x86_64::instructions::port::Port;

pub const EXIT_SUCCESS: u32 = 0;
pub const EXIT_FAILURE: u32 = 1;

/// QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`: a write of `v`
/// ends QEMU with status `(v << 1) | 1`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

static POWEROFF: SpinLock<Option<Poweroff>> = SpinLock::named("POWEROFF", None);

/// Records how this platform enters S5 (from the FADT and DSDT).
pub fn set_poweroff(p: Poweroff) {
    *POWEROFF.lock() = Some(p);
}

/// Prints the `exit` record and leaves the VM with `status`.
pub fn exit(status: u32) -> ! {
    // Unlocked: the caller may be a fault handler that interrupted a printer.
    let mut w = serial::Raw;
    let _ = hyperbatch::hb::emit(&mut w, "exit", |r| {
        r.u64("status", status as u64).map(|_| ())
    });
    exit_now(status)
}

/// Leaves the VM without printing a record.
pub fn exit_now(status: u32) -> ! {
    x86_64::instructions::interrupts::disable();
    // SAFETY: writing the debug-exit port ends QEMU when the device is
    // present and is ignored otherwise; it touches no memory.
    unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(status) };
    // Still here: no debug-exit device. try_lock: a CPU that died holding the
    // lock must not stop this one from leaving.
    let poweroff = POWEROFF.try_lock().and_then(|g| *g);
    match poweroff {
        Some(p) => enter_s5(p),
        None => {
            let _ = writeln!(
                serial::Raw,
                "hyperbatch: no way to power off (no debug-exit device, no ACPI S5); halting"
            );
        }
    }
    let _ = writeln!(
        serial::Raw,
        "hyperbatch: power-off did not take effect; halting"
    );
    loop {
        x86_64::instructions::hlt();
    }
}

/// Writes the S5 request the FADT and DSDT describe (ACPI 6.5, 7.4.2 and 4.8.3.7).
fn enter_s5(p: Poweroff) {
    match p {
        Poweroff::Pm1 {
            pm1a,
            pm1b,
            slp_typa,
            slp_typb,
        } => {
            write_reg16(pm1a, pm1_cnt_value(slp_typa));
            if let Some(b) = pm1b {
                write_reg16(b, pm1_cnt_value(slp_typb));
            }
        }
        Poweroff::SleepControl { reg, slp_typ } => write_reg8(reg, sleep_control_value(slp_typ)),
    }
}

fn write_reg16(reg: Reg, v: u16) {
    match reg {
        // SAFETY: the FADT names this port as a PM1 control block; the write
        // requests S5 and touches no memory.
        Reg::Port(port) => unsafe { Port::<u16>::new(port).write(v) },
        Reg::Mmio(pa) => {
            if let Some(p) = crate::memory::Identity.ptr(pa, 2) {
                // SAFETY: as above, at an identity-mapped MMIO address.
                unsafe { (p as *mut u16).write_volatile(v) }
            }
        }
    }
}

fn write_reg8(reg: Reg, v: u8) {
    match reg {
        // SAFETY: the FADT names this port as the sleep control register.
        Reg::Port(port) => unsafe { Port::<u8>::new(port).write(v) },
        Reg::Mmio(pa) => {
            if let Some(p) = crate::memory::Identity.ptr(pa, 1) {
                // SAFETY: as above, at an identity-mapped MMIO address.
                unsafe { p.write_volatile(v) }
            }
        }
    }
}
