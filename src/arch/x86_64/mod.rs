//! x86-64 specifics: the PVH entry, descriptor tables, interrupts, the local
//! APIC, SMP start-up, timekeeping and the ways out of the VM.

pub mod apic;
pub mod gdt;
pub mod interrupts;
pub mod irq;
pub mod percpu;
pub mod pic;
pub mod power;
pub mod serial;
pub mod smp;
pub mod stacks;
pub mod tsc;

use core::arch::global_asm;
use x86_64::registers::control::{Cr4, Cr4Flags};

/// Size of the stack the boot CPU runs on until it moves to its guarded stack.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

global_asm!(
    include_str!("boot.s"),
    rust_entry = sym crate::kernel_entry,
    ap_entry = sym smp::ap_entry,
    handoff = sym smp::AP_HANDOFF,
    handoff_cr3 = const core::mem::offset_of!(smp::ApHandoff, cr3),
    handoff_stack = const core::mem::offset_of!(smp::ApHandoff, stack),
    handoff_index = const core::mem::offset_of!(smp::ApHandoff, index),
    handoff_claimed = const core::mem::offset_of!(smp::ApHandoff, claimed),
    stack_size = const BOOT_STACK_SIZE,
    debug_exit_port = const power::DEBUG_EXIT_PORT,
    exit_failure = const power::EXIT_FAILURE,
);

/// The real CPUID instruction, for `hyperbatch::hypervisor`.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    // CPUID is unprivileged and has no memory effects.
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Control-register features every CPU runs with (the boot CPU sets them
/// while switching page tables, see memory.rs; APs here).
pub fn enable_cpu_features() {
    // SAFETY: global pages only make kernel mappings survive CR3 reloads;
    // the kernel tables mark only the kernel's own mappings global.
    unsafe { Cr4::update(|f| f.insert(Cr4Flags::PAGE_GLOBAL)) };
}
