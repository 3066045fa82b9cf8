//! The kernel's physical memory: the frame allocator built from the PVH
//! memory map, and the kernel's own page tables.
//!
//! Physical memory is identity-mapped (virtual == physical) from 0 to the top
//! of RAM and ACPI memory or 4 GiB, whichever is higher, with 2 MiB pages, no
//! execute, and uncached where no RAM lies. The 2 MiB chunks that hold page 0
//! and the kernel image use 4 KiB pages instead so that page 0 can stay
//! unmapped (a null dereference faults), kernel text is read+execute, rodata
//! read-only and data/bss no-execute. CR0.WP makes read-only binding in ring 0
//! too. Stacks live in their own region (stacks.rs) with guard pages.

use crate::arch::x86_64::irq::IrqLock;
use core::sync::atomic::{AtomicU64, Ordering};
use hyperbatch::frames::{self, FrameAllocator, MemoryRegion, Range, RegionKind};
use hyperbatch::paging::{self, PageTables, TableAlloc};
use hyperbatch::phys::PhysMemory;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr3, Cr3Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::{
    Page, PageSize, PageTableFlags as F, PhysFrame, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// The boot page tables (boot.s) map this much; so does `Identity` until
/// `init` has built the real tables.
const BOOT_MAP_END: u64 = 4 * GIB;
/// The identity map stops here, whatever the memory map claims, so that a
/// bogus entry cannot make us build gigabytes of page tables.
const IDENTITY_MAX: u64 = 1024 * GIB;

static IDENTITY_END: AtomicU64 = AtomicU64::new(BOOT_MAP_END);
/// 0 on the boot tables; one page once the kernel's tables unmap page 0.
/// (SeaBIOS's PVH option ROM puts the memory map in page 0.)
static IDENTITY_START: AtomicU64 = AtomicU64::new(0);

/// Physical memory through the identity map.
#[derive(Clone, Copy)]
pub struct Identity;

impl PhysMemory for Identity {
    fn ptr(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        let end = pa.as_u64().checked_add(len as u64)?;
        if pa.as_u64() < IDENTITY_START.load(Ordering::Relaxed)
            || end > IDENTITY_END.load(Ordering::Relaxed)
        {
            return None;
        }
        Some(pa.as_u64() as *mut u8)
    }
}

/// The frame allocator, shared by every CPU.
pub static FRAMES: IrqLock<Option<FrameAllocator>> = IrqLock::named("FRAMES", None);

/// Root of the kernel's page tables (one address space for every CPU).
static ROOT: AtomicU64 = AtomicU64::new(0);
/// Serialises changes to the kernel's own mappings (stacks, boot layout).
static KERNEL_MAP: IrqLock<()> = IrqLock::named("KERNEL_MAP", ());

#[derive(Debug)]
pub enum Error {
    Frames(frames::Error),
    Paging(paging::Error),
    NoNx,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Frames(e) => write!(f, "physical memory: {e}"),
            Error::Paging(e) => write!(f, "page tables: {e}"),
            Error::NoNx => write!(
                f,
                "the CPU has no NX bit (CPUID 0x80000001 EDX[20]); W^X cannot be enforced"
            ),
        }
    }
}

impl From<frames::Error> for Error {
    fn from(e: frames::Error) -> Self {
        Error::Frames(e)
    }
}

impl From<paging::Error> for Error {
    fn from(e: paging::Error) -> Self {
        Error::Paging(e)
    }
}

/// Hands page-table pages out of the frame allocator.
pub struct TableFrames<'a>(pub &'a mut FrameAllocator);

// SAFETY: the allocator hands out each RAM frame once; RAM frames hold no
// Rust objects, are identity-mapped, and the walker zeroes them itself.
unsafe impl TableAlloc for TableFrames<'_> {
    fn alloc_table(&mut self) -> Option<PhysFrame> {
        self.0.alloc().ok()
    }
}

extern "C" {
    static __kernel_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __kernel_end: u8;
}

fn sym(s: *const u8) -> u64 {
    s as u64
}

/// The kernel image's address ranges, from the linker script.
pub struct ImageLayout {
    pub image: Range,
    pub text: Range,
    pub rodata: Range,
}

pub fn image_layout() -> ImageLayout {
    // Only the addresses of the linker-defined symbols are taken.
    let (ks, ts, te, re, ke) = (
        sym(&raw const __kernel_start),
        sym(&raw const __text_start),
        sym(&raw const __text_end),
        sym(&raw const __rodata_end),
        sym(&raw const __kernel_end),
    );
    let r = |a: u64, b: u64| Range {
        start: PhysAddr::new(a),
        end: PhysAddr::new(b),
    };
    ImageLayout {
        image: r(ks, ke),
        text: r(ts, te),
        rodata: r(te, re),
    }
}

/// What `init` built, for the boot report.
pub struct MemoryReport {
    pub ram_bytes: u64,
    pub free_bytes: u64,
    pub identity_end: u64,
}

/// Builds the frame allocator and the kernel page tables, and switches to them.
/// `reserved` lists what must never be handed out besides the kernel image
/// (boot structures, ACPI tables).
pub fn init(map: &[MemoryRegion], reserved: &[Range]) -> Result<MemoryReport, Error> {
    if !Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE) {
        return Err(Error::NoNx);
    }
    let layout = image_layout();
    let mut all_reserved: heapless::Vec<Range, { frames::MAX_RESERVED }> = heapless::Vec::new();
    for r in core::iter::once(&layout.image).chain(reserved) {
        // A full list drops nothing silently: the allocator then refuses to start.
        all_reserved
            .push(*r)
            .map_err(|_| Error::Frames(frames::Error::NoUsableRam))?;
    }
    // SAFETY: the identity map of the low 4 GiB (boot.s) stays valid for as
    // long as the allocator lives, and the final tables keep it.
    let mut alloc = unsafe { FrameAllocator::new(&Identity, map, &all_reserved)? };

    // RAM and the firmware tables' regions, not everything the map lists:
    // QEMU's pc and q35 list AMD's HyperTransport hole, 12 GiB reserved just
    // below 1 TiB, for AMD CPUs, and mapping up to there takes half a
    // million 2 MiB pages (minutes on a KVM that interprets ring 0).
    // Reserved ranges below 4 GiB (MMIO) stay mapped through the floor.
    let top = map
        .iter()
        .filter(|r| matches!(r.kind, RegionKind::Ram | RegionKind::Acpi | RegionKind::Nvs))
        .filter_map(|r| r.start.as_u64().checked_add(r.len))
        .max()
        .unwrap_or(0)
        .clamp(BOOT_MAP_END, IDENTITY_MAX)
        .next_multiple_of(Size2MiB::SIZE);
    if map
        .iter()
        .any(|r| r.kind == RegionKind::Ram && r.start.as_u64().saturating_add(r.len) > IDENTITY_MAX)
    {
        log::warn!("memory above {} GiB is ignored", IDENTITY_MAX / GIB);
    }

    let root = alloc.alloc_zeroed(&Identity)?;
    // SAFETY: `root` is a fresh zeroed frame that nothing else uses, frames
    // come from the allocator, and only this CPU runs yet.
    let mut pt = unsafe { PageTables::new(&Identity, root) };
    let mut tables = TableFrames(&mut alloc);
    let is_ram = |start: u64, end: u64| {
        map.iter().any(|r| {
            r.kind == RegionKind::Ram
                && r.start.as_u64() < end
                && start < r.start.as_u64().saturating_add(r.len)
        })
    };
    let fine = |chunk: u64| {
        chunk == 0
            || (chunk < layout.image.end.as_u64()
                && layout.image.start.as_u64() < chunk + Size2MiB::SIZE)
    };

    let data = F::PRESENT | F::WRITABLE | F::NO_EXECUTE | F::GLOBAL;
    let uncached = F::NO_CACHE | F::WRITE_THROUGH;
    let mut chunk = 0;
    while chunk < top {
        let cache = if is_ram(chunk, chunk + Size2MiB::SIZE) {
            F::empty()
        } else {
            uncached
        };
        if fine(chunk) {
            for pa in (chunk..chunk + Size2MiB::SIZE).step_by(Size4KiB::SIZE as usize) {
                if pa == 0 {
                    continue; // the null page stays unmapped
                }
                let flags = if layout.text.contains(PhysAddr::new(pa)) {
                    F::PRESENT | F::GLOBAL
                } else if layout.rodata.contains(PhysAddr::new(pa)) {
                    F::PRESENT | F::NO_EXECUTE | F::GLOBAL
                } else {
                    data | cache
                };
                let page = Page::<Size4KiB>::containing_address(VirtAddr::new(pa));
                pt.map_4k(
                    page,
                    PhysFrame::containing_address(PhysAddr::new(pa)),
                    flags,
                    &mut tables,
                )?;
            }
        } else {
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(chunk));
            pt.map_2m(
                page,
                PhysFrame::containing_address(PhysAddr::new(chunk)),
                data | cache,
                &mut tables,
            )?;
        }
        chunk += Size2MiB::SIZE;
    }

    ROOT.store(root.start_address().as_u64(), Ordering::Relaxed);
    // SAFETY: the new tables map everything the kernel uses at the same
    // addresses as the boot tables (all of the low 4 GiB, the image, the
    // boot stack), so execution continues; NXE is on (checked above), so NX
    // bits are valid. WP makes ring 0 honour read-only pages.
    unsafe {
        Cr4::update(|f| f.insert(Cr4Flags::PAGE_GLOBAL));
        Cr3::write(root, Cr3Flags::empty());
        Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT));
    }
    IDENTITY_END.store(top, Ordering::Relaxed);
    IDENTITY_START.store(Size4KiB::SIZE, Ordering::Relaxed);

    let report = MemoryReport {
        ram_bytes: frames::ram_bytes(map),
        free_bytes: alloc.free_frames() * Size4KiB::SIZE,
        identity_end: top,
    };
    *FRAMES.lock() = Some(alloc);
    Ok(report)
}

/// The kernel page-table root, for CPUs that are starting.
pub fn root() -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(ROOT.load(Ordering::Relaxed)))
}

/// Maps fresh zeroed RAM at `page` in the kernel's tables (stacks).
pub fn map_fresh_4k(page: Page<Size4KiB>, flags: F) -> Result<(), Error> {
    let _map = KERNEL_MAP.lock();
    let mut frames = FRAMES.lock();
    let alloc = frames
        .as_mut()
        .ok_or(Error::Frames(frames::Error::NoUsableRam))?;
    let frame = alloc.alloc_zeroed(&Identity)?;
    // SAFETY: ROOT is the live kernel root; KERNEL_MAP serialises changes to
    // the kernel's own mappings, and the tables hold no Rust objects.
    let mut pt = unsafe { PageTables::new(&Identity, root()) };
    if let Err(e) = pt.map_4k(page, frame, flags, &mut TableFrames(alloc)) {
        let _ = alloc.free(frame);
        return Err(e.into());
    }
    Ok(())
}
