//! The local APIC: identity, end-of-interrupt, and inter-processor
//! interrupts. x2APIC (MSR access) where the CPU offers it, xAPIC (MMIO at
//! the base in IA32_APIC_BASE) otherwise. Intel SDM vol. 3, chapter 11.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::registers::model_specific::Msr;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
/// x2APIC register n (xAPIC MMIO offset n << 4) is MSR 0x800 + n.
const X2APIC_MSR_BASE: u32 = 0x800;

// Register offsets (xAPIC MMIO).
const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ESR: u32 = 0x280;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;

const SVR_ENABLE: u32 = 1 << 8;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
const ICR_DM_INIT: u32 = 5 << 8;
const ICR_DM_STARTUP: u32 = 6 << 8;
const ICR_DEST_SELF: u32 = 1 << 18;

static X2APIC: AtomicBool = AtomicBool::new(false);
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    X2Apic,
    XApic,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::X2Apic => "x2apic",
            Mode::XApic => "xapic",
        }
    }
}

pub fn mode() -> Mode {
    if X2APIC.load(Ordering::Relaxed) {
        Mode::X2Apic
    } else {
        Mode::XApic
    }
}

/// Enables this CPU's local APIC. The boot CPU picks the mode (`want_x2apic`
/// when CPUID offers it); the others follow it.
pub fn init_this_cpu(boot_cpu: bool, want_x2apic: bool) {
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; enabling the APIC
    // (and x2APIC mode when CPUID allows it) changes no memory.
    unsafe {
        let base = msr.read();
        if boot_cpu {
            X2APIC.store(want_x2apic, Ordering::Relaxed);
            XAPIC_BASE.store(base & 0x000f_ffff_ffff_f000, Ordering::Relaxed);
        }
        let mut value = base | APIC_BASE_ENABLE;
        if mode() == Mode::X2Apic {
            // xAPIC must be enabled before x2APIC (SDM 11.12.5): two writes.
            msr.write(value);
            value |= APIC_BASE_X2APIC;
        }
        msr.write(value);
    }
    write(REG_TPR, 0);
    write(
        REG_SVR,
        SVR_ENABLE | super::interrupts::SPURIOUS_VECTOR as u32,
    );
    // Writing ESR before reading it latches the current errors (xAPIC); clear them.
    write(REG_ESR, 0);
}

fn read(reg: u32) -> u32 {
    match mode() {
        // SAFETY: x2APIC registers are MSRs; reads have no side effects on memory.
        Mode::X2Apic => unsafe { Msr::new(X2APIC_MSR_BASE + (reg >> 4)).read() as u32 },
        Mode::XApic => {
            let p = (XAPIC_BASE.load(Ordering::Relaxed) + reg as u64) as *const u32;
            // SAFETY: the xAPIC page is identity-mapped uncached (memory.rs
            // maps all of the low 4 GiB), and `reg` is a register offset.
            unsafe { p.read_volatile() }
        }
    }
}

fn write(reg: u32, value: u32) {
    match mode() {
        // SAFETY: as in `read`; the registers written here are this CPU's own.
        Mode::X2Apic => unsafe { Msr::new(X2APIC_MSR_BASE + (reg >> 4)).write(value as u64) },
        Mode::XApic => {
            let p = (XAPIC_BASE.load(Ordering::Relaxed) + reg as u64) as *mut u32;
            // SAFETY: as in `read`.
            unsafe { p.write_volatile(value) }
        }
    }
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    match mode() {
        Mode::X2Apic => read(REG_ID),
        Mode::XApic => read(REG_ID) >> 24,
    }
}

pub fn eoi() {
    write(REG_EOI, 0);
}

fn send(dest: u32, low: u32) {
    match mode() {
        Mode::X2Apic => {
            // One 64-bit write to the ICR MSR, destination in the high half.
            // SAFETY: the ICR is this CPU's; sending an IPI changes no memory.
            unsafe {
                Msr::new(X2APIC_MSR_BASE + (REG_ICR_LOW >> 4))
                    .write(((dest as u64) << 32) | low as u64)
            }
        }
        Mode::XApic => {
            wait_icr_idle();
            write(REG_ICR_HIGH, dest << 24);
            write(REG_ICR_LOW, low);
            wait_icr_idle();
        }
    }
}

fn wait_icr_idle() {
    // Bounded: an APIC that never reports delivery must not hang us.
    for _ in 0..1_000_000 {
        if read(REG_ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// A fixed-delivery IPI with `vector` to the CPU with APIC ID `dest`.
pub fn send_ipi(dest: u32, vector: u8) {
    send(dest, vector as u32);
}

/// A fixed IPI to this CPU itself (x2APIC: the SELF IPI register, MSR
/// 0x83f; xAPIC: the ICR's self shorthand).
pub fn send_self_ipi(vector: u8) {
    match mode() {
        // SAFETY: as in `send`.
        Mode::X2Apic => unsafe { Msr::new(0x83f).write(vector as u64) },
        Mode::XApic => send(0, ICR_DEST_SELF | vector as u32),
    }
}

/// INIT to `dest` (assert, then de-assert as the MP spec asks for xAPIC).
pub fn send_init(dest: u32) {
    send(dest, ICR_DM_INIT | ICR_LEVEL_ASSERT | ICR_TRIGGER_LEVEL);
    if mode() == Mode::XApic {
        send(dest, ICR_DM_INIT | ICR_TRIGGER_LEVEL);
    }
}

/// STARTUP IPI: `dest` starts in real mode at `page` << 12.
pub fn send_startup(dest: u32, page: u8) {
    send(dest, ICR_DM_STARTUP | page as u32);
}
