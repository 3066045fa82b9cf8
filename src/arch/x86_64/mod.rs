//! x86-64 specifics: the PVH entry, descriptor tables, interrupts, the local
//! APIC, SMP start-up, timekeeping and the ways out of the VM.

pub mod serial;

use core::arch::global_asm;

/// Size of the stack the boot CPU runs on until it moves to its guarded stack.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

global_asm!(
    include_str!("boot.s"),
    rust_entry = sym crate::kernel_entry,
    ap_entry = sym crate::ap_entry,
    handoff = sym crate::AP_HANDOFF_PLACEHOLDER,
    stack_size = const BOOT_STACK_SIZE,
);
