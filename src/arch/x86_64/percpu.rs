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
        gs_not_set_up();
    }
    // SAFETY: a non-null self pointer was stored by init_this_cpu and points
    // into the static array.
    unsafe { &*p }
}

/// Per-CPU state asked for before `init_this_cpu`: a bug in the boot
/// order. Reported straight to the serial port (the panic handler would ask
/// for the CPU number again) and the guest exits.
#[cold]
#[inline(never)]
fn gs_not_set_up() -> ! {
    use core::fmt::Write;
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if REPORTED.swap(true, Ordering::Relaxed) {
        // Reached again on the way out (a lock's holder hook): just stop.
        loop {
            x86_64::instructions::hlt();
        }
    }
    let _ = writeln!(
        super::serial::Raw,
        "\n!!! per-CPU state used before init_this_cpu set GS base (a boot-order bug)"
    );
    super::power::exit(super::power::EXIT_FAILURE)
}

/// This CPU, as a value: whoever holds one runs on the CPU it names. Only
/// [`this_cpu`] makes one, from GS base, and it is neither `Send` nor
/// `Sync`, so no static can carry it to another CPU (and code never
/// migrates: there is no scheduler). A hot path reads GS once for it.
#[derive(Clone, Copy)]
pub struct ThisCpu {
    index: u32,
    _not_send: core::marker::PhantomData<*const ()>,
}

impl ThisCpu {
    /// Our dense index (0 is the boot CPU).
    #[inline]
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// The CPU this code runs on.
#[inline]
pub fn this_cpu() -> ThisCpu {
    ThisCpu {
        index: this().index.load(Ordering::Relaxed),
        _not_send: core::marker::PhantomData,
    }
}

/// This CPU's dense index (0 is the boot CPU).
#[inline]
pub fn cpu_index() -> usize {
    this().index()
}

/// One `T` per CPU that only its own CPU reaches: [`CpuLocal::get`] takes
/// no CPU number, so code cannot get another CPU's slot. What another CPU
/// wants done to it goes as a request (posted work or an IPI) that the
/// owner serves. `T: Sync` because an interrupt handler on the same CPU
/// may reach the slot while the interrupted code holds it: atomics and
/// `AtomicRefCell` keep that sound (a second mutable borrow fails instead
/// of aliasing).
pub struct CpuLocal<T: Sync>([CacheLines<T>; MAX_CPUS]);

impl<T: Sync> CpuLocal<T> {
    pub const fn new(slots: [T; MAX_CPUS]) -> Self {
        CpuLocal(CacheLines::each(slots))
    }

    /// This CPU's slot.
    #[inline]
    pub fn get(&self) -> &T {
        self.on(this_cpu())
    }

    /// The slot of `cpu`, which is this CPU.
    #[inline]
    pub fn on(&self, cpu: ThisCpu) -> &T {
        &self.0[cpu.index()].0
    }
}

/// One `T` per CPU that its owner writes and other CPUs read (or post
/// into): [`CpuSlots::mine`] for the owner, [`CpuSlots::of`] for the
/// others. Every field a slot shares is atomic or behind a lock.
pub struct CpuSlots<T: Sync>([CacheLines<T>; MAX_CPUS]);

impl<T: Sync> CpuSlots<T> {
    pub const fn new(slots: [T; MAX_CPUS]) -> Self {
        CpuSlots(CacheLines::each(slots))
    }

    /// This CPU's slot.
    #[inline]
    pub fn mine(&self) -> &T {
        &self.0[cpu_index()].0
    }

    /// CPU `cpu`'s slot.
    #[inline]
    pub fn of(&self, cpu: usize) -> &T {
        &self.0[cpu].0
    }
}

/// A CPU's slot in [`CpuLocal`] and [`CpuSlots`], on cache lines of its
/// own. Packed, the slots were a few bytes apart at their edges: the mm
/// queue's borrow flag, written twice per mm call, shared a line with the
/// neighbouring queue's last bytes and with `FLUSH_REQUESTS`, which every
/// mm call reads, so two vCPUs mapping disjoint regions moved lines between
/// them on every call (padding made the `scale` suite's 2-vCPU private
/// figure about 9% faster under multi-threaded TCG with shootdowns off).
/// The padding also keeps any static linked next to an array off its lines.
/// 128 bytes, not 64: Intel's spatial prefetcher completes each line it
/// fetches with its pair in a 128-byte chunk (Intel 64 and IA-32
/// Optimization Reference Manual, "Data Prefetching"), which is why
/// crossbeam's `CachePadded` uses 128 on x86_64 too. The cost is at most
/// 127 bytes per slot, 8 KiB for a small `T` over 64 CPUs.
#[repr(align(128))]
struct CacheLines<T>(T);

impl<T> CacheLines<T> {
    /// Wraps each slot, in order.
    const fn each(slots: [T; MAX_CPUS]) -> [CacheLines<T>; MAX_CPUS] {
        let slots = core::mem::ManuallyDrop::new(slots);
        let from = &slots as *const core::mem::ManuallyDrop<[T; MAX_CPUS]> as *const T;
        let mut out = [const { core::mem::MaybeUninit::<CacheLines<T>>::uninit() }; MAX_CPUS];
        let mut i = 0;
        while i < MAX_CPUS {
            // SAFETY: `from` points at the MAX_CPUS slots of `slots`
            // (`ManuallyDrop` is `repr(transparent)`), `i` is in range, and
            // each slot is read exactly once; `slots` is never dropped, so
            // every slot ends up owned by `out` alone.
            out[i] = core::mem::MaybeUninit::new(CacheLines(unsafe { from.add(i).read() }));
            i += 1;
        }
        // SAFETY: the loop initialised all MAX_CPUS elements, and
        // `MaybeUninit<U>` has the size and alignment of `U`, so the array
        // reads back as `[CacheLines<T>; MAX_CPUS]`; `out` holds no drop glue
        // to run twice.
        unsafe {
            (&out as *const [core::mem::MaybeUninit<CacheLines<T>>; MAX_CPUS]
                as *const [CacheLines<T>; MAX_CPUS])
                .read()
        }
    }
}
