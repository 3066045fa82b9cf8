//! Fault injection in the boot path (`inject=` on the kernel command line).
//!
//! QEMU builds the boot structures itself, so a test cannot hand the kernel
//! a corrupt one. Instead each knob corrupts a copy, or the memory, of the
//! real structure and lets the real parser find the damage, so the test sees
//! exactly the message and the exit a user with that broken input would:
//! - `start_info_magic`, `start_info_empty_map`: [`start_info`] re-parses a
//!   corrupted copy of `hvm_start_info` right after the real parse, and the
//!   boot fails with the parser's error;
//! - `madt_checksum`: [`corrupt_madt`] flips a byte of the MADT in memory
//!   before ACPI discovery, whose checksum check must then refuse it;
//! - `no_acpi` is handled in `platform::discover_acpi` (the RSDP is ignored).

use crate::memory::Identity;
use core::fmt;
use hyperbatch::acpi_tables;
use hyperbatch::cmdline::Inject;
use hyperbatch::phys::PhysMemory;
use hyperbatch::pvh;
use hyperbatch::sync::SpinLock;
use x86_64::PhysAddr;

/// `hvm_start_info` version 1 is 56 bytes (Xen `arch-x86/hvm/start_info.h`).
const START_INFO_LEN: usize = 56;
/// Offsets of `magic` and `memmap_entries` in it.
const MAGIC_OFFSET: usize = 0;
const MEMMAP_ENTRIES_OFFSET: usize = 48;
/// The MADT's `Flags` field (ACPI 6.5, table 5.19): flipping a bit there
/// changes no structure the parser walks, only the checksum.
const MADT_FLAGS_OFFSET: u32 = 40;

#[derive(Debug)]
pub enum Error {
    /// The real parser refused the corrupted copy: the expected outcome.
    StartInfo(pvh::Error, Inject),
    /// The real parser accepted the corrupted copy: a parser bug.
    Accepted(Inject),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::StartInfo(e, i) => write!(
                f,
                "{e} (inject={i}: a deliberately corrupted copy of the real start_info)"
            ),
            Error::Accepted(i) => write!(
                f,
                "inject={i}: the parser accepted a corrupted start_info copy"
            ),
        }
    }
}

/// The copy lives in the kernel image, which the boot tables identity-map,
/// so the parser reads it at its physical address as it read the original.
#[repr(C, align(8))]
struct Copy([u8; START_INFO_LEN]);
static COPY: SpinLock<Copy> = SpinLock::new(Copy([0; START_INFO_LEN]));

/// With `inject=start_info_*`, re-parses a corrupted copy of the real
/// `hvm_start_info` at `real` and returns the parser's verdict as an error.
/// Without it, does nothing.
pub fn start_info(inject: Option<Inject>, real: PhysAddr) -> Result<(), Error> {
    let Some(kind @ (Inject::StartInfoMagic | Inject::StartInfoEmptyMap)) = inject else {
        return Ok(());
    };
    let mut copy = COPY.lock();
    if Identity.read(real, &mut copy.0).is_none() {
        // The real parse read these bytes a moment ago.
        return Err(Error::StartInfo(
            pvh::Error::Unreadable {
                what: "start_info",
                addr: real.as_u64(),
            },
            kind,
        ));
    }
    match kind {
        Inject::StartInfoMagic => copy.0[MAGIC_OFFSET + 3] ^= 0x80,
        _ => copy.0[MEMMAP_ENTRIES_OFFSET..MEMMAP_ENTRIES_OFFSET + 4].fill(0),
    }
    let at = PhysAddr::new(&copy.0 as *const [u8; START_INFO_LEN] as u64);
    match pvh::parse(&Identity, at) {
        Err(e) => Err(Error::StartInfo(e, kind)),
        Ok(_) => Err(Error::Accepted(kind)),
    }
}

/// Flips one bit of the MADT's flags in memory, so that the discovery that
/// follows finds a bad checksum. Returns the MADT's address, or `None` when
/// there is no MADT to corrupt (the tables are then reported as they are).
pub fn corrupt_madt(rsdp: PhysAddr) -> Option<PhysAddr> {
    let tables = acpi_tables::discover(&Identity, rsdp).ok()?;
    let madt = tables.find(b"APIC")?;
    if madt.len < MADT_FLAGS_OFFSET + 4 {
        return None;
    }
    let at = PhysAddr::new(madt.start.as_u64() + u64::from(MADT_FLAGS_OFFSET));
    let p = Identity.ptr(at, 1)?;
    // SAFETY: a byte inside a table `discover` validated, identity-mapped
    // writable by the boot tables; nothing holds a reference into it, and
    // corrupting it is the point.
    unsafe { p.write_volatile(p.read_volatile() ^ 0x80) };
    Some(madt.start)
}
