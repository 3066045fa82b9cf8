//! Per-CPU data: one `PerCpu` per possible CPU in a fixed array, reached
//! through GS base, which holds a pointer to the CPU's own slot.
//!
//! Each slot carries the CPU's descriptor tables (its TSS has its own #DF
//! stack), its identity (our dense index, its APIC ID) and its IPI mailbox.
//! Only its own CPU writes a slot, with two exceptions that are atomics: the
//! mailbox, and `online`, which the boot CPU reads while starting it.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use x86_64::registers::model_specific::GsBase;
use x86_64::structures::gdt::GlobalDescriptorTable;
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

pub use hyperbatch::acpi_tables::MAX_CPUS;

/// What another CPU asked of this one through an IPI (smp.rs).
pub struct Mailbox {
    /// Requests posted by other CPUs, counted.
    pub requested: AtomicU64,
    /// Requests this CPU has served; it catches up to `requested`.
    pub served: AtomicU64,
}

#[repr(C)]
pub struct PerCpu {
    // Offsets 0 and 8 are read from assembly-free inline asm below: keep them first.
    self_ptr: UnsafeCell<*const PerCpu>,
    index: AtomicU32,
    pub apic_id: AtomicU32,
    pub online: AtomicBool,
    pub mailbox: Mailbox,
    pub gdt: UnsafeCell<GlobalDescriptorTable<8>>,
    pub tss: UnsafeCell<TaskStateSegment>,
}

// SAFETY: the UnsafeCell fields are written only by the CPU that owns the
// slot (during its own bring-up, before anything else reads them); every
// cross-CPU field is atomic.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    const fn new() -> Self {
        PerCpu {
            self_ptr: UnsafeCell::new(core::ptr::null()),
            index: AtomicU32::new(0),
            apic_id: AtomicU32::new(u32::MAX),
            online: AtomicBool::new(false),
            mailbox: Mailbox {
                requested: AtomicU64::new(0),
                served: AtomicU64::new(0),
            },
            gdt: UnsafeCell::new(GlobalDescriptorTable::empty()),
            tss: UnsafeCell::new(TaskStateSegment::new()),
        }
    }

    pub fn index(&self) -> usize {
        self.index.load(Ordering::Relaxed) as usize
    }
}

static PERCPU: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// Points GS base at slot `index` and records who we are. Called first thing
/// on every CPU, before anything asks for the CPU number.
///
/// # Safety
/// `index` must be this CPU's own, unused by any other CPU, and nothing on
/// this CPU may hold a reference into its previous GS area.
pub unsafe fn init_this_cpu(index: usize, apic_id: u32) {
    let slot = &PERCPU[index];
    // SAFETY: only this CPU touches its slot's self pointer, and it does so
    // before publishing the slot through GS.
    unsafe { *slot.self_ptr.get() = slot as *const PerCpu };
    slot.index.store(index as u32, Ordering::Relaxed);
    slot.apic_id.store(apic_id, Ordering::Relaxed);
    GsBase::write(VirtAddr::from_ptr(slot));
}

/// The slot of CPU `index`.
pub fn get(index: usize) -> &'static PerCpu {
    &PERCPU[index]
}

/// This CPU's slot.
#[inline]
pub fn this() -> &'static PerCpu {
    let p: *const PerCpu;
    // SAFETY: GS base points at this CPU's slot (init_this_cpu runs before
    // any code that can get here), and its first word is the slot's address.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly, preserves_flags))
    };
    if p.is_null() {
        // GS not yet set up: only the boot CPU runs this early.
        return &PERCPU[0];
    }
    // SAFETY: a non-null self pointer was stored by init_this_cpu and points
    // into the static array.
    unsafe { &*p }
}

/// This CPU's dense index (0 is the boot CPU).
#[inline]
pub fn cpu_index() -> usize {
    this().index()
}
