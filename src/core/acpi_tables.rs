//! ACPI firmware tables: where the CPUs are, where the local APIC and the PM
//! timer live, and how to power the machine off.
//!
//! In the boot flow this runs after physical memory is set up: PVH
//! `start_info` hands over `rsdp_paddr`, and the kernel calls
//! 1. [`discover`], our own pre-walk, which validates the RSDP, the root
//!    table and every table it lists (plus the DSDT and FACS the FADT points
//!    at) and records each one's physical range, so the frame allocator can
//!    reserve them and every later access is known to be readable; then
//! 2. [`parse`], which hands those tables to the `acpi` crate (5.2, no
//!    allocator) for the MADT and decodes the FADT and the DSDT's `\_S5`
//!    package into a [`Platform`].
//!
//! The crate reaches memory through an [`AcpiHandler`] that cannot return an
//! error. Ours only serves ranges that [`discover`] validated and panics on
//! anything else: after the pre-walk such a request is a bug, and a panic
//! (which prints and exits the kernel) beats a dangling pointer.
//!
//! Specification: ACPI 6.5 (UEFI Forum, August 2022). Sections used:
//! 5.2.5.3 RSDP; 5.2.6 table header; 5.2.7 RSDT; 5.2.8 XSDT; 5.2.9 FADT
//! (table 5.9 layout, table 5.10 flags); 5.2.10 FACS; 5.2.11.1 DSDT;
//! 5.2.12 MADT (5.2.12.2 local APIC, 5.2.12.8 address override, 5.2.12.12
//! local x2APIC, table 5.23 flags); 4.8.3.2.1 PM1 control (table 4.13);
//! 4.8.3.3 PM timer; 4.8.3.7 sleep control register; 7.4.2 `\_Sx` objects;
//! 20.2 AML encoding.

use acpi::address::{AddressSpace, GenericAddress};
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiError, AcpiHandler, AcpiTables, PhysicalMapping};
use core::fmt;
use core::mem::size_of;
use core::ptr::NonNull;
use x86_64::PhysAddr;

use crate::phys::PhysMemory;

/// The ACPI PM timer runs at 3.579545 MHz (ACPI 6.5, 4.8.3.3).
pub const ACPI_PM_TIMER_HZ: u64 = 3_579_545;

/// CPUs [`parse`] lists; MADT entries beyond this are counted in
/// [`Platform::cpus_ignored`].
pub const MAX_CPUS: usize = 64;

/// Tables [`discover`] records: the root table, what it lists, the DSDT and
/// the FACS. QEMU and cloud-hypervisor list fewer than 16.
pub const MAX_TABLES: usize = 64;

/// The longest table we accept. Real DSDTs of large servers reach a few
/// hundred KiB; anything longer is a corrupt length field.
pub const MAX_TABLE_LEN: u32 = 1 << 20;

const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// The ACPI 1.0 RSDP, covered by the first checksum.
const RSDP_V1_LEN: u32 = 20;
/// The ACPI 2.0+ RSDP, covered by the extended checksum.
const RSDP_V2_LEN: u32 = 36;
/// An RSDP whose `length` exceeds this is corrupt (the structure has been
/// 36 bytes since ACPI 2.0).
const RSDP_MAX_LEN: u32 = 4096;
const RSDP_REVISION_OFFSET: u64 = 15;
const RSDP_RSDT_OFFSET: u64 = 16;
const RSDP_LENGTH_OFFSET: u64 = 20;
const RSDP_XSDT_OFFSET: u64 = 24;

const SDT_HEADER_LEN: u32 = 36;
const SDT_LENGTH_OFFSET: u64 = 4;
const SDT_OEM_ID: core::ops::Range<usize> = 10..16;
const SDT_OEM_TABLE_ID: core::ops::Range<usize> = 16..24;

/// The MADT header is followed by the local APIC address and flags.
const MADT_ENTRIES_OFFSET: u32 = 44;
const MADT_LAPIC_ENABLED: u32 = 1 << 0;
/// ACPI 6.3+: a disabled CPU that may be brought online later.
const MADT_LAPIC_ONLINE_CAPABLE: u32 = 1 << 1;

const FACS_MIN_LEN: u32 = 64;

/// The FADT's PM1_CNT_LEN byte (ACPI 6.5, table 5.9).
const FADT_PM1_CNT_LEN: usize = 89;
/// The `acpi` crate computes the PM1 control block's bit width as
/// `PM1_CNT_LEN * 8` in a `u8`, which overflows from 32 up: a panic where
/// overflow checks are on, a wrong width where not. The block is 2 bytes
/// on every platform (ACPI 6.5, 4.8.3.2.1); found by fuzz/ (acpi target).
const FADT_PM1_CNT_LEN_MAX: u8 = 31;

const SIG_RSDT: [u8; 4] = *b"RSDT";
const SIG_XSDT: [u8; 4] = *b"XSDT";
const SIG_MADT: [u8; 4] = *b"APIC";
const SIG_FADT: [u8; 4] = *b"FACP";
const SIG_DSDT: [u8; 4] = *b"DSDT";
const SIG_FACS: [u8; 4] = *b"FACS";

/// PM1 control register (ACPI 6.5 table 4.13): SLP_TYPx in bits 12:10,
/// SLP_EN in bit 13.
pub const PM1_CNT_SLP_TYP_SHIFT: u16 = 10;
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// Sleep control register (ACPI 6.5 4.8.3.7): SLP_TYPx in bits 4:2, SLP_EN
/// in bit 5.
pub const SLEEP_CONTROL_SLP_TYP_SHIFT: u8 = 2;
pub const SLEEP_CONTROL_SLP_EN: u8 = 1 << 5;
/// SLP_TYPx is a 3-bit field in both registers.
const SLP_TYP_MAX: u8 = 0b111;

/// Why the ACPI tables could not be used. Addresses are raw `u64`s because
/// a corrupt table can hold values that are not valid physical addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The boot loader passed `rsdp_paddr` = 0.
    NoRsdp,
    BadRsdpSignature {
        addr: u64,
    },
    /// `extended` is false for the ACPI 1.0 checksum over 20 bytes, true for
    /// the ACPI 2.0 one over `length` bytes.
    BadRsdpChecksum {
        addr: u64,
        extended: bool,
    },
    BadRsdpLength {
        addr: u64,
        len: u32,
    },
    /// The RSDP points at neither an XSDT nor an RSDT.
    NoRootTable {
        rsdp: u64,
    },
    /// `len` bytes at `addr` are outside the memory the kernel can read.
    Unreadable {
        what: &'static str,
        addr: u64,
        len: u64,
    },
    BadSignature {
        expected: [u8; 4],
        found: [u8; 4],
        addr: u64,
    },
    /// A header's `length` is below 36, above [`MAX_TABLE_LEN`], or does not
    /// fit the table's structure.
    BadLength {
        table: [u8; 4],
        addr: u64,
        len: u32,
    },
    BadChecksum {
        table: [u8; 4],
        addr: u64,
    },
    /// The OEM ID or OEM table ID is not text; the `acpi` crate rejects
    /// such a table.
    BadHeaderText {
        table: [u8; 4],
        addr: u64,
    },
    /// More than [`MAX_TABLES`] tables.
    TooManyTables {
        max: usize,
    },
    /// A MADT entry at byte `offset` of the MADT is shorter than its type
    /// requires or runs past the table's end.
    BadMadtEntry {
        offset: u32,
        entry_type: u8,
        len: u8,
    },
    /// A required table is not listed: the MADT, without which the kernel
    /// knows no CPU but the one it runs on.
    MissingTable {
        table: [u8; 4],
    },
    /// `what` holds a value that is not a valid physical address.
    BadAddress {
        what: &'static str,
        addr: u64,
    },
    /// A FADT field holds a value the kernel cannot use.
    BadFadtField {
        field: &'static str,
        value: u64,
        addr: u64,
    },
    /// The `acpi` crate refused a table that [`discover`] accepted.
    Library {
        table: [u8; 4],
        reason: &'static str,
    },
}

/// Prints a table signature, escaping bytes that are not printable ASCII.
struct Sig<'a>(&'a [u8; 4]);

impl fmt::Display for Sig<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                fmt::Write::write_char(f, b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoRsdp => write!(f, "ACPI: the boot loader passed no RSDP (rsdp_paddr = 0)"),
            Error::BadRsdpSignature { addr } => {
                write!(
                    f,
                    "ACPI: no \"RSD PTR \" signature at RSDP address {addr:#x}"
                )
            }
            Error::BadRsdpChecksum { addr, extended } => write!(
                f,
                "ACPI: RSDP at {addr:#x} has a bad {} checksum",
                if extended {
                    "extended (ACPI 2.0)"
                } else {
                    "ACPI 1.0"
                }
            ),
            Error::BadRsdpLength { addr, len } => {
                write!(
                    f,
                    "ACPI: RSDP at {addr:#x} has length {len}, expected 36..=4096"
                )
            }
            Error::NoRootTable { rsdp } => {
                write!(
                    f,
                    "ACPI: RSDP at {rsdp:#x} has neither an XSDT nor an RSDT address"
                )
            }
            Error::Unreadable { what, addr, len } => {
                write!(
                    f,
                    "ACPI: {what} at {addr:#x} ({len} bytes) is not readable memory"
                )
            }
            Error::BadSignature {
                expected,
                found,
                addr,
            } => write!(
                f,
                "ACPI: table at {addr:#x} has signature \"{}\", expected \"{}\"",
                Sig(&found),
                Sig(&expected)
            ),
            Error::BadLength { table, addr, len } => {
                write!(
                    f,
                    "ACPI: {} at {addr:#x} has an invalid length {len}",
                    Sig(&table)
                )
            }
            Error::BadChecksum { table, addr } => {
                write!(f, "ACPI: {} at {addr:#x} has a bad checksum", Sig(&table))
            }
            Error::BadHeaderText { table, addr } => write!(
                f,
                "ACPI: {} at {addr:#x} has an OEM ID or OEM table ID that is not text",
                Sig(&table)
            ),
            Error::TooManyTables { max } => write!(f, "ACPI: more than {max} tables"),
            Error::BadMadtEntry {
                offset,
                entry_type,
                len,
            } => write!(
                f,
                "ACPI: MADT entry of type {entry_type} at offset {offset} has a bad length {len}"
            ),
            Error::MissingTable { table } => write!(f, "ACPI: no {} table", Sig(&table)),
            Error::BadAddress { what, addr } => {
                write!(f, "ACPI: {what} {addr:#x} is not a valid physical address")
            }
            Error::BadFadtField { field, value, addr } => write!(
                f,
                "ACPI: FADT at {addr:#x} has {field} = {value}, which no platform has"
            ),
            Error::Library { table, reason } => {
                write!(f, "ACPI: the acpi crate rejected {}: {reason}", Sig(&table))
            }
        }
    }
}

/// One validated table: its signature and the physical bytes it occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRef {
    pub signature: [u8; 4],
    pub start: PhysAddr,
    pub len: u32,
}

impl TableRef {
    fn contains(&self, pa: u64, len: u64) -> bool {
        let start = self.start.as_u64();
        pa >= start
            && pa
                .checked_add(len)
                .is_some_and(|end| end <= start + u64::from(self.len))
    }
}

/// Which root table the RSDP led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// ACPI 1.0 style, 32-bit entries.
    Rsdt,
    /// ACPI 2.0+, 64-bit entries.
    Xsdt,
}

/// The tables [`discover`] validated. Only [`discover`] builds one: the
/// handler [`parse`] gives the `acpi` crate relies on every range in it
/// having been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    rsdp: PhysAddr,
    rsdp_len: u32,
    revision: u8,
    root_kind: RootKind,
    /// `tables[0]` is the root table.
    tables: heapless::Vec<TableRef, MAX_TABLES>,
}

impl Tables {
    /// The RSDP's revision: 0 for ACPI 1.0, 2 or more for ACPI 2.0+.
    pub fn revision(&self) -> u8 {
        self.revision
    }

    pub fn root_kind(&self) -> RootKind {
        self.root_kind
    }

    /// The RSDP's own bytes (20 for ACPI 1.0, `length` otherwise).
    pub fn rsdp(&self) -> (PhysAddr, u32) {
        (self.rsdp, self.rsdp_len)
    }

    /// The root table (XSDT or RSDT) first, then the tables it lists in its
    /// order, then the DSDT and FACS if the FADT names them.
    pub fn tables(&self) -> &[TableRef] {
        &self.tables
    }

    /// The first table with this signature.
    pub fn find(&self, signature: &[u8; 4]) -> Option<&TableRef> {
        self.tables.iter().find(|t| &t.signature == signature)
    }

    /// Every physical range the firmware tables occupy, RSDP included, for
    /// the frame allocator to reserve. Ranges may share pages.
    pub fn ranges(&self) -> impl Iterator<Item = (PhysAddr, u64)> + '_ {
        core::iter::once((self.rsdp, u64::from(self.rsdp_len)))
            .chain(self.tables.iter().map(|t| (t.start, u64::from(t.len))))
    }

    fn covers(&self, pa: u64, len: u64) -> bool {
        let rsdp = TableRef {
            signature: [0; 4],
            start: self.rsdp,
            len: self.rsdp_len,
        };
        rsdp.contains(pa, len) || self.tables.iter().any(|t| t.contains(pa, len))
    }

    fn push(&mut self, t: TableRef) -> Result<(), Error> {
        if self.tables.iter().any(|old| old.start == t.start) {
            return Ok(());
        }
        self.tables
            .push(t)
            .map_err(|_| Error::TooManyTables { max: MAX_TABLES })
    }
}

/// The bytes of a range that [`PhysMemory`] said are readable.
fn bytes<'m, M: PhysMemory>(
    mem: &'m M,
    what: &'static str,
    addr: u64,
    len: u32,
) -> Result<&'m [u8], Error> {
    let unreadable = Error::Unreadable {
        what,
        addr,
        len: u64::from(len),
    };
    let pa = PhysAddr::try_new(addr).map_err(|_| unreadable)?;
    let p = mem.ptr(pa, len as usize).ok_or(unreadable)?;
    // SAFETY: `ptr` promised `len` readable bytes at `p`. Firmware tables are
    // not written while the kernel boots, and the slice does not outlive the
    // borrow of `mem` that keeps the window open.
    Ok(unsafe { core::slice::from_raw_parts(p, len as usize) })
}

fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |s, &x| s.wrapping_add(x)) == 0
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Validates the table header and checksum at `addr` (ACPI 6.5, 5.2.6).
fn check_sdt<M: PhysMemory>(
    mem: &M,
    addr: u64,
    expected: Option<[u8; 4]>,
    what: &'static str,
) -> Result<TableRef, Error> {
    let header = bytes(mem, what, addr, SDT_HEADER_LEN)?;
    let signature = [header[0], header[1], header[2], header[3]];
    if let Some(expected) = expected {
        if signature != expected {
            return Err(Error::BadSignature {
                expected,
                found: signature,
                addr,
            });
        }
    }
    let len = u32_at(header, SDT_LENGTH_OFFSET as usize);
    if !(SDT_HEADER_LEN..=MAX_TABLE_LEN).contains(&len) {
        return Err(Error::BadLength {
            table: signature,
            addr,
            len,
        });
    }
    let all = bytes(mem, what, addr, len)?;
    if !sums_to_zero(all) {
        return Err(Error::BadChecksum {
            table: signature,
            addr,
        });
    }
    // `bytes` succeeded, so the address is valid.
    Ok(TableRef {
        signature,
        start: PhysAddr::new_truncate(addr),
        len,
    })
}

/// The `acpi` crate insists on text OEM fields in the tables it maps whole
/// (root tables and the MADT); reject those here so the crate cannot skip
/// a table that we recorded.
fn check_header_text<M: PhysMemory>(mem: &M, t: &TableRef) -> Result<(), Error> {
    let header = bytes(mem, "table header", t.start.as_u64(), SDT_HEADER_LEN)?;
    let text = |r: core::ops::Range<usize>| core::str::from_utf8(&header[r]).is_ok();
    if core::str::from_utf8(&t.signature).is_ok() && text(SDT_OEM_ID) && text(SDT_OEM_TABLE_ID) {
        Ok(())
    } else {
        Err(Error::BadHeaderText {
            table: t.signature,
            addr: t.start.as_u64(),
        })
    }
}

/// Size of the structure the `acpi` crate reads for MADT entry type `t`, or
/// `None` for the reserved and OEM types it skips without reading.
fn madt_entry_min_len(t: u8) -> Option<usize> {
    use acpi::madt::*;
    Some(match t {
        0x0 => size_of::<LocalApicEntry>(),
        0x1 => size_of::<IoApicEntry>(),
        0x2 => size_of::<InterruptSourceOverrideEntry>(),
        0x3 => size_of::<NmiSourceEntry>(),
        0x4 => size_of::<LocalApicNmiEntry>(),
        0x5 => size_of::<LocalApicAddressOverrideEntry>(),
        0x6 => size_of::<IoSapicEntry>(),
        0x7 => size_of::<LocalSapicEntry>(),
        0x8 => size_of::<PlatformInterruptSourceEntry>(),
        0x9 => size_of::<LocalX2ApicEntry>(),
        0xa => size_of::<X2ApicNmiEntry>(),
        0xb => size_of::<GiccEntry>(),
        0xc => size_of::<GicdEntry>(),
        0xd => size_of::<GicMsiFrameEntry>(),
        0xe => size_of::<GicRedistributorEntry>(),
        0xf => size_of::<GicInterruptTranslationServiceEntry>(),
        0x10 => size_of::<MultiprocessorWakeupEntry>(),
        _ => return None,
    })
}

/// Walks the MADT's entries the way the crate's iterator will. The crate
/// trusts each entry's length: a zero length would loop forever, an
/// oversized one would read past the table, and a short one would make it
/// read a structure that is not there.
fn check_madt<M: PhysMemory>(mem: &M, t: &TableRef) -> Result<(), Error> {
    let addr = t.start.as_u64();
    if t.len < MADT_ENTRIES_OFFSET {
        return Err(Error::BadLength {
            table: t.signature,
            addr,
            len: t.len,
        });
    }
    check_header_text(mem, t)?;
    let table = bytes(mem, "MADT", addr, t.len)?;
    let mut off = MADT_ENTRIES_OFFSET as usize;
    while off < table.len() {
        let entry_type = table[off];
        // A lone trailing byte has no room for a length.
        let len = table.get(off + 1).copied().unwrap_or(0);
        let bad = Error::BadMadtEntry {
            offset: off as u32,
            entry_type,
            len,
        };
        let end = off + usize::from(len);
        if len < 2 || end > table.len() {
            return Err(bad);
        }
        if madt_entry_min_len(entry_type).is_some_and(|min| usize::from(len) < min) {
            return Err(bad);
        }
        off = end;
    }
    Ok(())
}

/// A zero-extended copy of the FADT, viewed as the crate's [`Fadt`].
///
/// The crate's `Fadt` is the 276-byte ACPI 6 layout, and it reads every
/// ACPI 2.0+ field (SLEEP_CONTROL_REG included) whenever the revision is 2
/// or more, even from a 244-byte revision-3 FADT such as QEMU's; read in
/// place, that is past the end of the table. Copying into a zeroed buffer
/// makes fields the table does not have read as zero ("not present"), as
/// Linux does with its local FADT copy.
struct FadtCopy([u8; size_of::<Fadt>()]);

impl FadtCopy {
    fn read<M: PhysMemory>(mem: &M, t: &TableRef) -> Result<FadtCopy, Error> {
        let table = bytes(mem, "FADT", t.start.as_u64(), t.len)?;
        let mut copy = FadtCopy([0; size_of::<Fadt>()]);
        let n = table.len().min(copy.0.len());
        copy.0[..n].copy_from_slice(&table[..n]);
        let pm1_cnt_len = copy.0[FADT_PM1_CNT_LEN];
        if pm1_cnt_len > FADT_PM1_CNT_LEN_MAX {
            return Err(Error::BadFadtField {
                field: "PM1_CNT_LEN",
                value: u64::from(pm1_cnt_len),
                addr: t.start.as_u64(),
            });
        }
        Ok(copy)
    }

    fn fadt(&self) -> &Fadt {
        // SAFETY: `Fadt` is `repr(C, packed)` (alignment 1) and built only of
        // integers, integer newtypes and `MaybeUninit` integers, so every
        // byte pattern is a valid value; the buffer is exactly
        // `size_of::<Fadt>()` initialised bytes and lives as long as the
        // returned reference.
        unsafe { &*(self.0.as_ptr() as *const Fadt) }
    }
}

fn check_facs<M: PhysMemory>(mem: &M, addr: u64) -> Result<TableRef, Error> {
    let what = "FACS";
    let head = bytes(mem, what, addr, 8)?;
    let signature = [head[0], head[1], head[2], head[3]];
    if signature != SIG_FACS {
        return Err(Error::BadSignature {
            expected: SIG_FACS,
            found: signature,
            addr,
        });
    }
    let len = u32_at(head, 4);
    if !(FACS_MIN_LEN..=MAX_TABLE_LEN).contains(&len) {
        return Err(Error::BadLength {
            table: SIG_FACS,
            addr,
            len,
        });
    }
    bytes(mem, what, addr, len)?;
    Ok(TableRef {
        signature,
        start: PhysAddr::new_truncate(addr),
        len,
    })
}

/// Finds and validates every ACPI table reachable from the RSDP at `rsdp`.
///
/// Strict by design: one bad table anywhere fails the whole walk, because
/// [`parse`]'s handler may be asked for any table the root lists. The
/// kernel then reports "no usable ACPI" and runs on the boot CPU.
pub fn discover<M: PhysMemory>(mem: &M, rsdp: PhysAddr) -> Result<Tables, Error> {
    let rsdp_addr = rsdp.as_u64();
    if rsdp_addr == 0 {
        return Err(Error::NoRsdp);
    }
    let v1 = bytes(mem, "RSDP", rsdp_addr, RSDP_V1_LEN)?;
    if &v1[..8] != RSDP_SIGNATURE {
        return Err(Error::BadRsdpSignature { addr: rsdp_addr });
    }
    if !sums_to_zero(v1) {
        return Err(Error::BadRsdpChecksum {
            addr: rsdp_addr,
            extended: false,
        });
    }
    let revision = v1[RSDP_REVISION_OFFSET as usize];
    let rsdt = u32_at(v1, RSDP_RSDT_OFFSET as usize);

    // Revision 1 was never defined; only 2+ carries the extended fields.
    let (rsdp_len, xsdt) = if revision >= 2 {
        let head = bytes(mem, "RSDP", rsdp_addr, RSDP_V2_LEN)?;
        let len = u32_at(head, RSDP_LENGTH_OFFSET as usize);
        if !(RSDP_V2_LEN..=RSDP_MAX_LEN).contains(&len) {
            return Err(Error::BadRsdpLength {
                addr: rsdp_addr,
                len,
            });
        }
        if !sums_to_zero(bytes(mem, "RSDP", rsdp_addr, len)?) {
            return Err(Error::BadRsdpChecksum {
                addr: rsdp_addr,
                extended: true,
            });
        }
        let off = RSDP_XSDT_OFFSET as usize;
        let xsdt = u64::from(u32_at(head, off)) | u64::from(u32_at(head, off + 4)) << 32;
        (len, xsdt)
    } else {
        (RSDP_V1_LEN, 0)
    };

    let (root_kind, root_addr, entry_size) = if xsdt != 0 {
        (RootKind::Xsdt, xsdt, 8)
    } else if rsdt != 0 {
        (RootKind::Rsdt, u64::from(rsdt), 4)
    } else {
        return Err(Error::NoRootTable { rsdp: rsdp_addr });
    };
    let root_sig = if root_kind == RootKind::Xsdt {
        SIG_XSDT
    } else {
        SIG_RSDT
    };
    let root = check_sdt(mem, root_addr, Some(root_sig), "root table")?;
    check_header_text(mem, &root)?;
    let entries_len = root.len - SDT_HEADER_LEN;
    if !entries_len.is_multiple_of(entry_size) {
        return Err(Error::BadLength {
            table: root_sig,
            addr: root_addr,
            len: root.len,
        });
    }

    let mut tables = Tables {
        rsdp,
        rsdp_len,
        revision,
        root_kind,
        tables: heapless::Vec::new(),
    };
    tables.push(root)?;

    let root_bytes = bytes(mem, "root table", root_addr, root.len)?;
    let mut fadt = None;
    for entry in root_bytes[SDT_HEADER_LEN as usize..].chunks_exact(entry_size as usize) {
        let addr = entry.iter().rev().fold(0u64, |a, &b| a << 8 | u64::from(b));
        let t = check_sdt(mem, addr, None, "table listed in the root table")?;
        match t.signature {
            SIG_MADT => check_madt(mem, &t)?,
            SIG_FADT if fadt.is_none() => fadt = Some(t),
            _ => {}
        }
        tables.push(t)?;
    }

    if let Some(fadt) = fadt {
        let copy = FadtCopy::read(mem, &fadt)?;
        // The crate prefers X_DSDT / X_FIRMWARE_CTRL when they are present
        // and non-zero, else the 32-bit fields; `Err` means both are zero,
        // which is normal for the FACS on hardware-reduced platforms.
        if let Ok(dsdt) = copy.fadt().dsdt_address() {
            tables.push(check_sdt(mem, dsdt as u64, Some(SIG_DSDT), "DSDT")?)?;
        }
        if let Ok(facs) = copy.fadt().facs_address() {
            tables.push(check_facs(mem, facs as u64)?)?;
        }
    }
    Ok(tables)
}

/// The [`AcpiHandler`] that [`parse`] gives the crate: an identity view
/// through [`PhysMemory`], limited to the validated tables.
struct Handler<'a, M: PhysMemory> {
    mem: &'a M,
    tables: &'a Tables,
}

impl<M: PhysMemory> Clone for Handler<'_, M> {
    fn clone(&self) -> Self {
        Handler {
            mem: self.mem,
            tables: self.tables,
        }
    }
}

impl<M: PhysMemory> AcpiHandler for Handler<'_, M> {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        let (addr, len) = (pa as u64, size as u64);
        if !self.tables.covers(addr, len) {
            panic!(
                "acpi: the acpi crate asked for {size:#x} bytes at {addr:#x}, outside the \
                 tables acpi_tables::discover validated (a bug)"
            );
        }
        // The crate builds a `&T` over the mapping, so `size_of::<T>()` bytes
        // must exist even when the request is shorter.
        let mapped = size.max(size_of::<T>());
        let p = PhysAddr::try_new(addr)
            .ok()
            .and_then(|a| self.mem.ptr(a, mapped))
            .and_then(|p| NonNull::new(p.cast::<T>()));
        let Some(virt) = p else {
            panic!("acpi: {mapped:#x} bytes at {addr:#x} are validated but not mapped (a bug)");
        };
        // SAFETY: `virt` points at `mapped` bytes (at least `size` and at
        // least a `T`) that `PhysMemory` says are accessible, and the
        // requested `size` lies inside a table `discover` validated.
        // Unmapping is a no-op, so the mapping stays valid for as long as the
        // crate holds it.
        unsafe { PhysicalMapping::new(pa, virt, size, mapped, self.clone()) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// A register in I/O port space or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Port(u16),
    Mmio(PhysAddr),
}

/// The ACPI PM timer: a free-running counter at [`ACPI_PM_TIMER_HZ`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmTimer {
    /// Read it as a 32-bit value.
    pub reg: Reg,
    /// 24 or 32: how many low bits of the value count (FADT flag
    /// TMR_VAL_EXT).
    pub bits: u8,
}

impl PmTimer {
    /// Ticks from `earlier` to `later`, across at most one wrap.
    pub fn delta(&self, earlier: u32, later: u32) -> u32 {
        let mask = if self.bits >= 32 {
            u32::MAX
        } else {
            (1 << self.bits) - 1
        };
        later.wrapping_sub(earlier) & mask
    }
}

/// How to enter S5 (soft off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poweroff {
    /// Write [`pm1_cnt_value`]`(slp_typa)` as a 16-bit value to `pm1a`, then
    /// [`pm1_cnt_value`]`(slp_typb)` to `pm1b` if present.
    Pm1 {
        pm1a: Reg,
        pm1b: Option<Reg>,
        slp_typa: u8,
        slp_typb: u8,
    },
    /// Hardware-reduced ACPI (cloud-hypervisor, QEMU microvm): write
    /// [`sleep_control_value`]`(slp_typ)` as an 8-bit value to `reg`.
    SleepControl { reg: Reg, slp_typ: u8 },
}

/// The PM1 control value that enters sleep type `slp_typ`.
pub fn pm1_cnt_value(slp_typ: u8) -> u16 {
    u16::from(slp_typ & SLP_TYP_MAX) << PM1_CNT_SLP_TYP_SHIFT | PM1_CNT_SLP_EN
}

/// The sleep control register value that enters sleep type `slp_typ`.
pub fn sleep_control_value(slp_typ: u8) -> u8 {
    (slp_typ & SLP_TYP_MAX) << SLEEP_CONTROL_SLP_TYP_SHIFT | SLEEP_CONTROL_SLP_EN
}

/// One processor from the MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// The (x2)APIC ID, the target of INIT/SIPI.
    pub apic_id: u32,
    /// The ACPI processor UID.
    pub processor_uid: u32,
    pub enabled: bool,
    /// Disabled now but may be enabled at run time (ACPI 6.3+).
    pub online_capable: bool,
}

impl Cpu {
    /// Whether the kernel should try to start this CPU.
    pub fn startable(&self) -> bool {
        self.enabled || self.online_capable
    }
}

/// What the kernel needs from the firmware tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// In MADT order, duplicates of an APIC ID dropped. The boot CPU is
    /// among them, not necessarily first.
    pub cpus: heapless::Vec<Cpu, MAX_CPUS>,
    /// CPUs listed beyond [`MAX_CPUS`].
    pub cpus_ignored: u32,
    /// The local APIC's MMIO base (the MADT field, or its 64-bit override).
    pub local_apic: PhysAddr,
    pub pm_timer: Option<PmTimer>,
    pub poweroff: Option<Poweroff>,
    /// Why `poweroff` is `None`, for the kernel to print.
    pub poweroff_missing: Option<&'static str>,
    /// The FADT's HW_REDUCED_ACPI flag: no PM1 blocks, no PM timer.
    pub hw_reduced: bool,
}

fn library(table: [u8; 4], e: AcpiError) -> Error {
    let reason = match e {
        AcpiError::TableMissing(_) => "table not found",
        AcpiError::SdtInvalidSignature(_) => "invalid signature",
        AcpiError::SdtInvalidOemId(_) => "OEM ID is not text",
        AcpiError::SdtInvalidTableId(_) => "OEM table ID is not text",
        AcpiError::SdtInvalidChecksum(_) => "bad checksum",
        AcpiError::InvalidMadt(_) => "invalid MADT",
        AcpiError::InvalidGenericAddress => "invalid Generic Address",
        _ => "other error",
    };
    Error::Library { table, reason }
}

/// Turns the tables [`discover`] validated into a [`Platform`].
///
/// A missing MADT is an error rather than a one-CPU platform: the kernel
/// already knows how to run on the boot CPU alone, and it should say that
/// it is doing so because ACPI was unusable. A missing FADT or `\_S5` only
/// leaves [`Platform::poweroff`] empty, with the reason in
/// [`Platform::poweroff_missing`].
pub fn parse<M: PhysMemory>(mem: &M, tables: &Tables) -> Result<Platform, Error> {
    let handler = Handler { mem, tables };
    let root = tables.tables[0];
    // The crate picks RSDT entries for revision 0 and XSDT entries for any
    // other value; tell it which root `discover` chose.
    let revision = match tables.root_kind {
        RootKind::Rsdt => 0,
        RootKind::Xsdt => 2,
    };
    // SAFETY: `discover` validated the root table at this address and every
    // table it lists; the handler refuses any other range.
    let acpi = unsafe { AcpiTables::from_rsdt(handler, revision, root.start.as_u64() as usize) }
        .map_err(|e| library(root.signature, e))?;

    let madt = match acpi.find_table::<Madt>() {
        Ok(m) => m,
        Err(AcpiError::TableMissing(_)) => return Err(Error::MissingTable { table: SIG_MADT }),
        Err(e) => return Err(library(SIG_MADT, e)),
    };
    let madt = madt.get();
    let mut local_apic = u64::from(madt.local_apic_address);
    let mut cpus = heapless::Vec::new();
    let mut cpus_ignored = 0u32;
    let mut add = |apic_id: u32, processor_uid: u32, flags: u32| {
        let cpu = Cpu {
            apic_id,
            processor_uid,
            enabled: flags & MADT_LAPIC_ENABLED != 0,
            online_capable: flags & MADT_LAPIC_ONLINE_CAPABLE != 0,
        };
        if cpus.iter().any(|c: &Cpu| c.apic_id == apic_id) {
            return;
        }
        if cpus.push(cpu).is_err() {
            cpus_ignored += 1;
        }
    };
    for entry in madt.entries() {
        match entry {
            MadtEntry::LocalApic(e) => {
                add(u32::from(e.apic_id), u32::from(e.processor_id), e.flags)
            }
            MadtEntry::LocalX2Apic(e) => add(e.x2apic_id, e.processor_uid, e.flags),
            MadtEntry::LocalApicAddressOverride(e) => local_apic = e.local_apic_address,
            _ => {}
        }
    }
    let local_apic = PhysAddr::try_new(local_apic).map_err(|_| Error::BadAddress {
        what: "local APIC address",
        addr: local_apic,
    })?;

    let fadt = tables
        .find(&SIG_FADT)
        .map(|t| FadtCopy::read(mem, t))
        .transpose()?;
    let fadt = fadt.as_ref().map(FadtCopy::fadt);
    let flags = fadt.map(|f| f.flags);
    let hw_reduced = flags.is_some_and(|f| f.system_is_hw_reduced_acpi());

    // Hardware-reduced platforms have no PM timer (ACPI 6.5, 4.1).
    let pm_timer = match (fadt, flags) {
        (Some(f), Some(flags)) if !hw_reduced => f
            .pm_timer_block()
            .ok()
            .flatten()
            .and_then(|gas| reg_from_gas(&gas).ok())
            .map(|reg| PmTimer {
                reg,
                bits: if flags.pm_timer_is_32_bit() { 32 } else { 24 },
            }),
        _ => None,
    };

    let (poweroff, poweroff_missing) = match poweroff(mem, tables, fadt, hw_reduced) {
        Ok(p) => (Some(p), None),
        Err(why) => (None, Some(why)),
    };

    Ok(Platform {
        cpus,
        cpus_ignored,
        local_apic,
        pm_timer,
        poweroff,
        poweroff_missing,
        hw_reduced,
    })
}

/// A register named by a Generic Address Structure, if it is one the kernel
/// can write: I/O port space below 64 KiB or memory.
fn reg_from_gas(gas: &GenericAddress) -> Result<Reg, &'static str> {
    match gas.address_space {
        AddressSpace::SystemIo => u16::try_from(gas.address)
            .map(Reg::Port)
            .map_err(|_| "register is an I/O port above 0xffff"),
        AddressSpace::SystemMemory => PhysAddr::try_new(gas.address)
            .map(Reg::Mmio)
            .map_err(|_| "register address is not a valid physical address"),
        _ => Err("register is in an address space the kernel does not drive"),
    }
}

/// A Generic Address the FADT fills in, or `None` when it is absent (zero).
fn present(
    gas: Result<Option<GenericAddress>, AcpiError>,
) -> Result<Option<GenericAddress>, &'static str> {
    match gas {
        Ok(Some(g)) if g.address != 0 => Ok(Some(g)),
        Ok(_) => Ok(None),
        Err(_) => Err("FADT register has an invalid Generic Address"),
    }
}

fn poweroff<M: PhysMemory>(
    mem: &M,
    tables: &Tables,
    fadt: Option<&Fadt>,
    hw_reduced: bool,
) -> Result<Poweroff, &'static str> {
    let fadt = fadt.ok_or("no FADT (FACP) table")?;
    let sleep_control = present(fadt.sleep_control_register())?;
    let pm1a = present(fadt.pm1a_control_block().map(Some))?;

    // ACPI 6.5, 4.8.3.7: hardware-reduced platforms use the sleep control
    // register; others use PM1, but take the sleep control register if a
    // FADT offers only that.
    enum Via {
        SleepControl(GenericAddress),
        Pm1(GenericAddress),
    }
    let via = match (hw_reduced, sleep_control, pm1a) {
        (true, Some(sc), _) | (false, Some(sc), None) => Via::SleepControl(sc),
        (true, None, _) => return Err("hardware-reduced FADT has no SLEEP_CONTROL_REG"),
        (false, _, Some(pm1a)) => Via::Pm1(pm1a),
        (false, None, None) => {
            return Err("FADT has neither a PM1a control block nor SLEEP_CONTROL_REG")
        }
    };

    let dsdt = tables.find(&SIG_DSDT).ok_or("the FADT names no DSDT")?;
    let aml =
        bytes(mem, "DSDT", dsdt.start.as_u64(), dsdt.len).map_err(|_| "DSDT is not readable")?;
    let (slp_typa, slp_typb) = find_s5(&aml[SDT_HEADER_LEN as usize..])?;

    match via {
        Via::SleepControl(reg) => Ok(Poweroff::SleepControl {
            reg: reg_from_gas(&reg)?,
            slp_typ: slp_typa,
        }),
        Via::Pm1(pm1a) => {
            let pm1b = present(fadt.pm1b_control_block())?;
            Ok(Poweroff::Pm1 {
                pm1a: reg_from_gas(&pm1a)?,
                pm1b: pm1b.as_ref().map(reg_from_gas).transpose()?,
                slp_typa,
                slp_typb,
            })
        }
    }
}

/// AML opcodes and prefixes (ACPI 6.5, 20.2).
const AML_NAME_OP: u8 = 0x08;
const AML_ROOT_CHAR: u8 = b'\\';
const AML_PACKAGE_OP: u8 = 0x12;
const AML_ZERO_OP: u8 = 0x00;
const AML_ONE_OP: u8 = 0x01;
const AML_BYTE_PREFIX: u8 = 0x0a;
const AML_WORD_PREFIX: u8 = 0x0b;
const AML_DWORD_PREFIX: u8 = 0x0c;

/// Finds `Name(_S5_, Package(){a, b, ...})` in AML and returns the
/// SLP_TYPa/SLP_TYPb values, without an AML interpreter.
///
/// Recognised: a `NameOp` (optionally with a root `\` prefix) naming `_S5_`
/// followed by a `PackageOp`, whose elements are `ZeroOp`, `OneOp`,
/// `BytePrefix`, `WordPrefix` or `DWordPrefix` constants, or a bare byte
/// 2..=7 (not valid AML, but hand-written tables use it and the classic
/// scanners accept it). A one-element package packs SLP_TYPa in bits 7:0
/// and SLP_TYPb in bits 15:8, as Linux reads it; cloud-hypervisor emits
/// `Package(){5}`.
///
/// Limits: `\_S5` defined in an SSDT, as a `Method`, inside `If`/`Else`
/// (the first definition in the byte stream wins), or with computed
/// elements is not seen; a `_S5_` under a scope other than the root is not
/// told apart from `\_S5`. Each is a case where `poweroff` stays `None` or,
/// at worst, the kernel writes a wrong sleep type and falls back to its
/// other exit path.
fn find_s5(aml: &[u8]) -> Result<(u8, u8), &'static str> {
    let mut why =
        "no \\_S5 package in the DSDT (an SSDT or Method definition needs an AML interpreter)";
    let mut from = 0;
    while let Some(pos) = aml[from..].windows(4).position(|w| w == b"_S5_") {
        let at = from + pos;
        from = at + 1;
        let named = match at {
            0 => false,
            1 => aml[0] == AML_NAME_OP,
            _ => {
                aml[at - 1] == AML_NAME_OP
                    || (aml[at - 1] == AML_ROOT_CHAR && aml[at - 2] == AML_NAME_OP)
            }
        };
        if !named || aml.get(at + 4) != Some(&AML_PACKAGE_OP) {
            continue;
        }
        match decode_s5_package(&aml[at + 5..]) {
            Ok(v) => return Ok(v),
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// Decodes `PkgLength NumElements elements...` (ACPI 6.5, 20.2.4 and
/// 20.2.5.4 DefPackage).
fn decode_s5_package(p: &[u8]) -> Result<(u8, u8), &'static str> {
    const TRUNCATED: &str = "\\_S5 package runs past the end of the DSDT";
    let lead = *p.first().ok_or(TRUNCATED)?;
    // Bits 7:6 count the bytes that follow the lead byte.
    let extra = usize::from(lead >> 6);
    let pkg_len = if extra == 0 {
        usize::from(lead & 0x3f)
    } else {
        let mut len = usize::from(lead & 0x0f);
        for i in 0..extra {
            len |= usize::from(*p.get(1 + i).ok_or(TRUNCATED)?) << (4 + 8 * i);
        }
        len
    };
    // PkgLength counts itself, so the package ends `pkg_len` bytes after
    // its lead byte.
    let body = p.get(1 + extra..pkg_len).ok_or(TRUNCATED)?;
    let (&count, mut elems) = body.split_first().ok_or(TRUNCATED)?;
    if count == 0 {
        return Err("\\_S5 package is empty");
    }
    let mut next = || -> Result<u64, &'static str> {
        const NOT_CONST: &str = "\\_S5 package element is not an integer constant";
        let (&op, rest) = elems.split_first().ok_or(TRUNCATED)?;
        let width = match op {
            AML_ZERO_OP => 0,
            AML_ONE_OP => 0,
            2..=7 => 0,
            AML_BYTE_PREFIX => 1,
            AML_WORD_PREFIX => 2,
            AML_DWORD_PREFIX => 4,
            _ => return Err(NOT_CONST),
        };
        let data = rest.get(..width).ok_or(TRUNCATED)?;
        elems = &rest[width..];
        Ok(if width == 0 {
            u64::from(op)
        } else {
            data.iter().rev().fold(0u64, |a, &b| a << 8 | u64::from(b))
        })
    };
    let a = next()?;
    let (a, b) = if count == 1 {
        (a & 0xff, (a >> 8) & 0xff)
    } else {
        (a, next()?)
    };
    let fits = |v: u64| u8::try_from(v).ok().filter(|&v| v <= SLP_TYP_MAX);
    match (fits(a), fits(b)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err("\\_S5 sleep type does not fit the 3-bit SLP_TYP field"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::fake::FakeRam;

    const BASE: u64 = 0x7ff0_0000;
    const RAM_LEN: usize = 0x10000;
    const RSDP: u64 = BASE;
    const XSDT: u64 = BASE + 0x100;
    const RSDT: u64 = BASE + 0x200;
    const MADT: u64 = BASE + 0x400;
    const FADT: u64 = BASE + 0x800;
    const DSDT: u64 = BASE + 0x1000;
    const FACS: u64 = BASE + 0x2000;
    const SPARE: u64 = BASE + 0x3000;

    const ENABLED: u32 = MADT_LAPIC_ENABLED;
    const ONLINE_CAPABLE: u32 = MADT_LAPIC_ONLINE_CAPABLE;
    const FADT_TMR_VAL_EXT: u32 = 1 << 8;
    const FADT_HW_REDUCED: u32 = 1 << 20;

    /// Sets `b[at]` so that all of `b` sums to zero.
    fn fix_checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        let sum = b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        b[at] = sum.wrapping_neg();
    }

    fn sdt(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 36];
        t[0..4].copy_from_slice(sig);
        t[4..8].copy_from_slice(&(36 + body.len() as u32).to_le_bytes());
        t[8] = revision;
        t[10..16].copy_from_slice(b"HBTEST");
        t[16..24].copy_from_slice(b"HBTABLES");
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    fn rsdp_v2(xsdt: u64, rsdt: u32) -> Vec<u8> {
        let mut r = vec![0u8; 36];
        r[0..8].copy_from_slice(RSDP_SIGNATURE);
        r[9..15].copy_from_slice(b"HBTEST");
        r[15] = 2;
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        r[20..24].copy_from_slice(&36u32.to_le_bytes());
        r[24..32].copy_from_slice(&xsdt.to_le_bytes());
        fix_checksum(&mut r[..20], 8);
        fix_checksum(&mut r, 32);
        r
    }

    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut r = vec![0u8; 20];
        r[0..8].copy_from_slice(RSDP_SIGNATURE);
        r[9..15].copy_from_slice(b"HBTEST");
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8);
        r
    }

    fn xsdt(entries: &[u64]) -> Vec<u8> {
        let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        sdt(b"XSDT", 1, &body)
    }

    fn rsdt(entries: &[u64]) -> Vec<u8> {
        let body: Vec<u8> = entries
            .iter()
            .flat_map(|&e| (e as u32).to_le_bytes())
            .collect();
        sdt(b"RSDT", 1, &body)
    }

    fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    fn x2apic(id: u32, uid: u32, flags: u32) -> Vec<u8> {
        let mut e = vec![9, 16, 0, 0];
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&uid.to_le_bytes());
        e
    }

    fn ioapic(id: u8, addr: u32) -> Vec<u8> {
        let mut e = vec![1, 12, id, 0];
        e.extend_from_slice(&addr.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e
    }

    fn lapic_override(addr: u64) -> Vec<u8> {
        let mut e = vec![5, 12, 0, 0];
        e.extend_from_slice(&addr.to_le_bytes());
        e
    }

    fn madt(local_apic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut body = local_apic.to_le_bytes().to_vec();
        body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
        for e in entries {
            body.extend_from_slice(e);
        }
        sdt(b"APIC", 5, &body)
    }

    fn standard_madt() -> Vec<u8> {
        madt(
            0xfee0_0000,
            &[
                lapic(0, 0, ENABLED),
                lapic(1, 1, 0),
                lapic(2, 2, ONLINE_CAPABLE),
                ioapic(3, 0xfec0_0000),
                x2apic(300, 3, ENABLED),
                lapic(4, 0, ENABLED),      // same APIC ID as the first: dropped
                vec![0x80, 4, 0xaa, 0xbb], // OEM type: skipped
            ],
        )
    }

    /// A Generic Address Structure (ACPI 6.5, 5.2.3.2).
    fn gas(space: u8, width: u8, access: u8, addr: u64) -> [u8; 12] {
        let mut g = [0u8; 12];
        g[0] = space;
        g[1] = width;
        g[3] = access;
        g[4..12].copy_from_slice(&addr.to_le_bytes());
        g
    }

    struct FadtSpec {
        revision: u8,
        len: usize,
        facs: u32,
        dsdt: u32,
        x_dsdt: u64,
        pm1a_cnt: u32,
        pm1b_cnt: u32,
        pm_tmr: u32,
        pm_tmr_len: u8,
        flags: u32,
        sleep_control: Option<[u8; 12]>,
    }

    /// QEMU pc/q35 style: revision 3, 244 bytes, PM1 and PM timer ports.
    fn pm1_fadt_spec() -> FadtSpec {
        FadtSpec {
            revision: 3,
            len: 244,
            facs: FACS as u32,
            dsdt: DSDT as u32,
            x_dsdt: DSDT,
            pm1a_cnt: 0x604,
            pm1b_cnt: 0,
            pm_tmr: 0x608,
            pm_tmr_len: 4,
            flags: FADT_TMR_VAL_EXT,
            sleep_control: None,
        }
    }

    /// cloud-hypervisor style: revision 6, 276 bytes, hardware-reduced,
    /// sleep control at I/O port 0x600, only X_DSDT, no FACS.
    fn hw_reduced_fadt_spec() -> FadtSpec {
        FadtSpec {
            revision: 6,
            len: 276,
            facs: 0,
            dsdt: 0,
            x_dsdt: DSDT,
            pm1a_cnt: 0,
            pm1b_cnt: 0,
            pm_tmr: 0,
            pm_tmr_len: 0,
            flags: FADT_HW_REDUCED,
            sleep_control: Some(gas(1, 8, 1, 0x600)),
        }
    }

    /// Offsets from ACPI 6.5 table 5.9.
    fn fadt(s: &FadtSpec) -> Vec<u8> {
        let mut t = sdt(b"FACP", s.revision, &vec![0u8; s.len - 36]);
        let mut put = |off: usize, bytes: &[u8]| t[off..off + bytes.len()].copy_from_slice(bytes);
        put(36, &s.facs.to_le_bytes());
        put(40, &s.dsdt.to_le_bytes());
        put(64, &s.pm1a_cnt.to_le_bytes());
        put(68, &s.pm1b_cnt.to_le_bytes());
        put(76, &s.pm_tmr.to_le_bytes());
        put(89, &[2]); // PM1_CNT_LEN
        put(91, &[s.pm_tmr_len]);
        put(112, &s.flags.to_le_bytes());
        if s.len >= 148 {
            put(140, &s.x_dsdt.to_le_bytes());
        }
        if let Some(sc) = s.sleep_control {
            put(244, &sc);
        }
        fix_checksum(&mut t, 9);
        t
    }

    fn dsdt(aml: &[u8]) -> Vec<u8> {
        sdt(b"DSDT", 2, aml)
    }

    /// `Name(_S5_, Package(4){0, 0, 0, 0})` as QEMU emits it, after some
    /// unrelated AML that happens to contain the bytes `_S5_`.
    const QEMU_S5: &[u8] = &[
        0x0d, b'_', b'S', b'5', b'_', 0x00, // a string "_S5_"
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
    ];
    /// `Name(_S5_, Package(1){5})` as cloud-hypervisor emits it.
    const CH_S5: &[u8] = &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x01, 0x0a, 0x05];

    fn facs() -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[0..4].copy_from_slice(b"FACS");
        f[4..8].copy_from_slice(&64u32.to_le_bytes());
        f
    }

    /// RSDP v2 -> XSDT [MADT, FADT] -> DSDT, FACS.
    fn machine(fadt_spec: &FadtSpec, aml: &[u8]) -> FakeRam {
        let ram = FakeRam::new(BASE, RAM_LEN);
        ram.write(RSDP, &rsdp_v2(XSDT, RSDT as u32));
        ram.write(XSDT, &xsdt(&[MADT, FADT]));
        ram.write(RSDT, &rsdt(&[MADT, FADT]));
        ram.write(MADT, &standard_madt());
        ram.write(FADT, &fadt(fadt_spec));
        ram.write(DSDT, &dsdt(aml));
        ram.write(FACS, &facs());
        ram
    }

    fn discover_at(ram: &FakeRam) -> Result<Tables, Error> {
        discover(ram, PhysAddr::new(RSDP))
    }

    fn platform(ram: &FakeRam) -> Platform {
        let tables = discover_at(ram).expect("discover");
        parse(ram, &tables).expect("parse")
    }

    fn cpu(apic_id: u32, processor_uid: u32, enabled: bool, online_capable: bool) -> Cpu {
        Cpu {
            apic_id,
            processor_uid,
            enabled,
            online_capable,
        }
    }

    #[test]
    fn pm1_platform_from_xsdt() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        let tables = discover_at(&ram).unwrap();
        assert_eq!(tables.root_kind(), RootKind::Xsdt);
        assert_eq!(tables.revision(), 2);
        let p = parse(&ram, &tables).unwrap();
        assert_eq!(
            p.cpus.as_slice(),
            [
                cpu(0, 0, true, false),
                cpu(1, 1, false, false),
                cpu(2, 2, false, true),
                cpu(300, 3, true, false),
            ]
        );
        let startable: Vec<u32> = p
            .cpus
            .iter()
            .filter(|c| c.startable())
            .map(|c| c.apic_id)
            .collect();
        assert_eq!(startable, [0, 2, 300]);
        assert_eq!(p.cpus_ignored, 0);
        assert_eq!(p.local_apic, PhysAddr::new(0xfee0_0000));
        assert!(!p.hw_reduced);
        assert_eq!(
            p.pm_timer,
            Some(PmTimer {
                reg: Reg::Port(0x608),
                bits: 32
            })
        );
        assert_eq!(
            p.poweroff,
            Some(Poweroff::Pm1 {
                pm1a: Reg::Port(0x604),
                pm1b: None,
                slp_typa: 0,
                slp_typb: 0
            })
        );
        assert_eq!(p.poweroff_missing, None);
    }

    #[test]
    fn hw_reduced_platform_uses_sleep_control() {
        let ram = machine(&hw_reduced_fadt_spec(), CH_S5);
        let tables = discover_at(&ram).unwrap();
        assert_eq!(tables.find(b"FACS"), None, "FIRMWARE_CTRL is zero");
        let p = parse(&ram, &tables).unwrap();
        assert!(p.hw_reduced);
        assert_eq!(p.pm_timer, None);
        assert_eq!(
            p.poweroff,
            Some(Poweroff::SleepControl {
                reg: Reg::Port(0x600),
                slp_typ: 5
            })
        );
        // What cloud-hypervisor's shutdown device waits for.
        assert_eq!(sleep_control_value(5), 0x34);
    }

    #[test]
    fn mmio_sleep_control_like_qemu_microvm() {
        let mut spec = hw_reduced_fadt_spec();
        spec.revision = 5;
        spec.len = 268;
        spec.sleep_control = Some(gas(0, 8, 1, 0xfea0_0000));
        let ram = machine(&spec, CH_S5);
        let p = platform(&ram);
        assert_eq!(
            p.poweroff,
            Some(Poweroff::SleepControl {
                reg: Reg::Mmio(PhysAddr::new(0xfea0_0000)),
                slp_typ: 5
            })
        );
    }

    #[test]
    fn register_values() {
        assert_eq!(pm1_cnt_value(0), 0x2000);
        assert_eq!(pm1_cnt_value(5), 0x3400);
        assert_eq!(sleep_control_value(0), 0x20);
        assert_eq!(pm1_cnt_value(0xff), 0x3c00, "SLP_TYP is 3 bits");
    }

    #[test]
    fn tables_record_every_range() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        let tables = discover_at(&ram).unwrap();
        let sigs: Vec<&[u8; 4]> = tables.tables().iter().map(|t| &t.signature).collect();
        assert_eq!(sigs, [b"XSDT", b"APIC", b"FACP", b"DSDT", b"FACS"]);
        let ranges: Vec<(u64, u64)> = tables.ranges().map(|(a, l)| (a.as_u64(), l)).collect();
        assert_eq!(
            ranges,
            [
                (RSDP, 36),
                (XSDT, 36 + 16),
                (MADT, standard_madt().len() as u64),
                (FADT, 244),
                (DSDT, 36 + QEMU_S5.len() as u64),
                (FACS, 64),
            ]
        );
        assert_eq!(tables.rsdp(), (PhysAddr::new(RSDP), 36));
    }

    #[test]
    fn rsdt_only_revision_0() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        ram.write(RSDP, &rsdp_v1(RSDT as u32));
        // Make the XSDT unusable to prove it is not consulted.
        ram.write(XSDT, &[0xff; 8]);
        let tables = discover_at(&ram).unwrap();
        assert_eq!(tables.root_kind(), RootKind::Rsdt);
        assert_eq!(tables.revision(), 0);
        assert_eq!(tables.rsdp(), (PhysAddr::new(RSDP), 20));
        assert_eq!(tables.tables()[0].start, PhysAddr::new(RSDT));
        let p = parse(&ram, &tables).unwrap();
        assert_eq!(p.cpus.len(), 4);
        assert!(p.poweroff.is_some());
    }

    #[test]
    fn revision_2_without_xsdt_uses_the_rsdt() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        ram.write(RSDP, &rsdp_v2(0, RSDT as u32));
        let tables = discover_at(&ram).unwrap();
        assert_eq!(tables.root_kind(), RootKind::Rsdt);
        assert_eq!(parse(&ram, &tables).unwrap().cpus.len(), 4);
    }

    #[test]
    fn rsdp_errors() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        assert_eq!(discover(&ram, PhysAddr::new(0)), Err(Error::NoRsdp));
        assert_eq!(
            discover(&ram, PhysAddr::new(0x1000)),
            Err(Error::Unreadable {
                what: "RSDP",
                addr: 0x1000,
                len: 20
            })
        );

        let mut r = rsdp_v2(XSDT, 0);
        r[3] = b'X';
        ram.write(RSDP, &r);
        assert_eq!(
            discover_at(&ram),
            Err(Error::BadRsdpSignature { addr: RSDP })
        );

        let mut r = rsdp_v2(XSDT, 0);
        r[8] ^= 1;
        ram.write(RSDP, &r);
        assert_eq!(
            discover_at(&ram),
            Err(Error::BadRsdpChecksum {
                addr: RSDP,
                extended: false
            })
        );

        let mut r = rsdp_v2(XSDT, 0);
        r[32] ^= 1;
        ram.write(RSDP, &r);
        assert_eq!(
            discover_at(&ram),
            Err(Error::BadRsdpChecksum {
                addr: RSDP,
                extended: true
            })
        );

        let mut r = rsdp_v2(XSDT, 0);
        r[20..24].copy_from_slice(&20u32.to_le_bytes());
        fix_checksum(&mut r[..20], 8);
        fix_checksum(&mut r, 32);
        ram.write(RSDP, &r);
        assert_eq!(
            discover_at(&ram),
            Err(Error::BadRsdpLength {
                addr: RSDP,
                len: 20
            })
        );

        ram.write(RSDP, &rsdp_v2(0, 0));
        assert_eq!(discover_at(&ram), Err(Error::NoRootTable { rsdp: RSDP }));
    }

    #[test]
    fn root_table_with_the_wrong_signature() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        ram.write(RSDP, &rsdp_v2(RSDT, 0));
        assert_eq!(
            discover_at(&ram),
            Err(Error::BadSignature {
                expected: *b"XSDT",
                found: *b"RSDT",
                addr: RSDT
            })
        );
    }

    #[test]
    fn bad_madt_checksum_names_the_table_and_address() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        let mut m = standard_madt();
        m[40] ^= 0x10;
        ram.write(MADT, &m);
        let err = discover_at(&ram).unwrap_err();
        assert_eq!(
            err,
            Error::BadChecksum {
                table: *b"APIC",
                addr: MADT
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("APIC") && text.contains("0x7ff00400"),
            "{text}"
        );
    }

    #[test]
    fn truncated_and_unreadable_tables() {
        // A MADT whose length runs past the end of RAM.
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        let last = BASE + RAM_LEN as u64 - 0x40;
        ram.write(XSDT, &xsdt(&[last, FADT]));
        ram.write(last, &standard_madt()[..0x40]);
        let len = standard_madt().len() as u64;
        assert_eq!(
            discover_at(&ram),
            Err(Error::Unreadable {
                what: "table listed in the root table",
                addr: last,
                len
            })
        );

        // An entry pointing outside RAM, and one that is not even a
        // physical address.
        for addr in [0x1000u64, 0xdead_0000_0000_0000] {
            ram.write(XSDT, &xsdt(&[addr]));
            assert_eq!(
                discover_at(&ram),
                Err(Error::Unreadable {
                    what: "table listed in the root table",
                    addr,
                    len: 36
                })
            );
        }

        // Lengths below the header or absurdly large.
        for bad_len in [35u32, MAX_TABLE_LEN + 1] {
            let mut m = standard_madt();
            m[4..8].copy_from_slice(&bad_len.to_le_bytes());
            ram.write(XSDT, &xsdt(&[MADT]));
            ram.write(MADT, &m);
            assert_eq!(
                discover_at(&ram),
                Err(Error::BadLength {
                    table: *b"APIC",
                    addr: MADT,
                    len: bad_len
                })
            );
        }
    }

    #[test]
    fn root_table_with_a_partial_entry() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        let mut body = MADT.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 4]);
        ram.write(XSDT, &sdt(b"XSDT", 1, &body));
        assert_eq!(
            discover_at(&ram),
            Err(Error::BadLength {
                table: *b"XSDT",
                addr: XSDT,
                len: 48
            })
        );
    }

    #[test]
    fn missing_s5_leaves_poweroff_empty_with_a_reason() {
        let ram = machine(
            &pm1_fadt_spec(),
            &[0x10, 0x05, b'\\', b'_', b'S', b'B', b'_'],
        );
        let p = platform(&ram);
        assert_eq!(p.poweroff, None);
        let why = p.poweroff_missing.unwrap();
        assert!(why.contains("_S5"), "{why}");
        assert_eq!(p.cpus.len(), 4, "the rest of the platform is still usable");
    }

    #[test]
    fn hw_reduced_without_sleep_control_has_no_poweroff() {
        let mut spec = hw_reduced_fadt_spec();
        spec.sleep_control = None;
        let p = platform(&machine(&spec, CH_S5));
        assert_eq!(p.poweroff, None);
        assert_eq!(
            p.poweroff_missing,
            Some("hardware-reduced FADT has no SLEEP_CONTROL_REG")
        );
    }

    #[test]
    fn short_fadt_fields_past_its_end_read_as_absent() {
        // A 244-byte revision-3 FADT without PM1 blocks, followed by bytes
        // that look like a SLEEP_CONTROL_REG. Reading in place would find
        // that register; the zero-extended copy must not.
        let mut spec = pm1_fadt_spec();
        spec.pm1a_cnt = 0;
        let ram = machine(&spec, QEMU_S5);
        ram.write(FADT + 244, &gas(1, 8, 1, 0x600));
        let p = platform(&ram);
        assert_eq!(p.poweroff, None);
        assert_eq!(
            p.poweroff_missing,
            Some("FADT has neither a PM1a control block nor SLEEP_CONTROL_REG")
        );
    }

    #[test]
    fn pm_timer_width_and_absence() {
        let mut spec = pm1_fadt_spec();
        spec.flags = 0;
        let p = platform(&machine(&spec, QEMU_S5));
        let timer = p.pm_timer.unwrap();
        assert_eq!(timer.bits, 24);
        assert_eq!(timer.delta(0x00ff_fff0, 0x0000_0010), 0x20, "24-bit wrap");
        let t32 = PmTimer { bits: 32, ..timer };
        assert_eq!(t32.delta(0xffff_fff0, 0x10), 0x20);

        spec.pm_tmr_len = 0;
        assert_eq!(platform(&machine(&spec, QEMU_S5)).pm_timer, None);
    }

    #[test]
    fn no_fadt_keeps_cpus_but_no_poweroff() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        ram.write(XSDT, &xsdt(&[MADT]));
        let p = platform(&ram);
        assert_eq!(p.cpus.len(), 4);
        assert_eq!(
            (p.poweroff, p.poweroff_missing),
            (None, Some("no FADT (FACP) table"))
        );
        assert_eq!(p.pm_timer, None);
    }

    #[test]
    fn no_madt_is_an_error() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        ram.write(XSDT, &xsdt(&[FADT]));
        let tables = discover_at(&ram).unwrap();
        let err = parse(&ram, &tables).unwrap_err();
        assert_eq!(err, Error::MissingTable { table: *b"APIC" });
        assert_eq!(err.to_string(), "ACPI: no APIC table");
    }

    #[test]
    fn madt_entries_the_crate_would_misread_are_rejected() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        let off = MADT_ENTRIES_OFFSET + 8;
        // Zero length (the crate's iterator would never advance), a local
        // APIC entry shorter than its structure, and one running past the
        // end of the table.
        let cases = [
            (vec![0x4, 0], 0x4, 0),
            (vec![0x0, 6, 0, 0, 0, 0], 0x0, 6),
            (vec![0x9, 16, 0, 0], 0x9, 16),
        ];
        for (entry, entry_type, len) in cases {
            let m = madt(0xfee0_0000, &[lapic(0, 0, ENABLED), entry]);
            ram.write(MADT, &m);
            assert_eq!(
                discover_at(&ram),
                Err(Error::BadMadtEntry {
                    offset: off,
                    entry_type,
                    len
                }),
                "entry type {entry_type} len {len}"
            );
        }
        let mut m = madt(0xfee0_0000, &[]);
        m.truncate(40);
        m[4..8].copy_from_slice(&40u32.to_le_bytes());
        fix_checksum(&mut m, 9);
        ram.write(MADT, &m);
        assert_eq!(
            discover_at(&ram),
            Err(Error::BadLength {
                table: *b"APIC",
                addr: MADT,
                len: 40
            })
        );
    }

    #[test]
    fn madt_with_non_text_oem_id_is_rejected_up_front() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        let mut m = standard_madt();
        m[10] = 0xff;
        fix_checksum(&mut m, 9);
        ram.write(MADT, &m);
        assert_eq!(
            discover_at(&ram),
            Err(Error::BadHeaderText {
                table: *b"APIC",
                addr: MADT
            })
        );
    }

    #[test]
    fn local_apic_override_and_many_cpus() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        let mut entries: Vec<Vec<u8>> = (0..MAX_CPUS as u32 + 3)
            .map(|i| x2apic(i, i, ENABLED))
            .collect();
        entries.push(lapic_override(0xfee1_0000));
        ram.write(SPARE, &madt(0xfee0_0000, &entries));
        ram.write(XSDT, &xsdt(&[SPARE, FADT]));
        let p = platform(&ram);
        assert_eq!(p.cpus.len(), MAX_CPUS);
        assert_eq!(p.cpus_ignored, 3);
        assert_eq!(p.cpus[MAX_CPUS - 1].apic_id, MAX_CPUS as u32 - 1);
        assert_eq!(p.local_apic, PhysAddr::new(0xfee1_0000));
    }

    #[test]
    fn bad_facs_is_an_error() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        ram.write(FACS, b"SCAF");
        assert_eq!(
            discover_at(&ram),
            Err(Error::BadSignature {
                expected: *b"FACS",
                found: *b"SCAF",
                addr: FACS
            })
        );
    }

    #[test]
    fn too_many_tables() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        let ssdts: Vec<u64> = (0..MAX_TABLES as u64).map(|i| SPARE + i * 64).collect();
        for &a in &ssdts {
            ram.write(a, &sdt(b"SSDT", 2, &[0xa3]));
        }
        ram.write(XSDT, &xsdt(&ssdts));
        assert_eq!(
            discover_at(&ram),
            Err(Error::TooManyTables { max: MAX_TABLES })
        );

        // One fewer fits exactly (with the XSDT itself).
        ram.write(XSDT, &xsdt(&ssdts[1..]));
        assert_eq!(discover_at(&ram).unwrap().tables().len(), MAX_TABLES);
    }

    #[test]
    #[should_panic(expected = "outside the tables")]
    fn handler_refuses_ranges_discover_did_not_validate() {
        let ram = machine(&pm1_fadt_spec(), QEMU_S5);
        let mut tables = discover_at(&ram).unwrap();
        // Forget the MADT: the crate will still find it through the XSDT.
        tables.tables.retain(|t| t.signature != *b"APIC");
        let _ = parse(&ram, &tables);
    }

    fn s5(aml: &[u8]) -> Result<(u8, u8), &'static str> {
        find_s5(aml)
    }

    #[test]
    fn s5_encodings() {
        assert_eq!(s5(QEMU_S5), Ok((0, 0)));
        assert_eq!(s5(CH_S5), Ok((5, 0)));
        // Root prefix, BytePrefix and OneOp.
        assert_eq!(
            s5(&[0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0a, 0x07, 0x01]),
            Ok((7, 1))
        );
        // WordPrefix and DWordPrefix.
        assert_eq!(
            s5(&[
                0x08, b'_', b'S', b'5', b'_', 0x12, 0x0a, 0x02, 0x0b, 0x05, 0x00, 0x0c, 0x06, 0, 0,
                0
            ]),
            Ok((5, 6))
        );
        // A two-byte PkgLength: lead 0x41 (one more byte, low nibble 1),
        // then 0x01 for bits 11:4, so 17 bytes holding seven ByteConsts.
        let mut two_byte = vec![0x08, b'_', b'S', b'5', b'_', 0x12, 0x41, 0x01, 0x07];
        two_byte.extend_from_slice(&[0x0a, 0x03, 0x0a, 0x04]);
        two_byte.extend_from_slice(&[0x0a, 0x00].repeat(5));
        assert_eq!(s5(&two_byte), Ok((3, 4)));
        two_byte.pop();
        assert!(s5(&two_byte).is_err(), "one byte short of its PkgLength");
        // Bare small integers, as hand-written tables use.
        assert_eq!(
            s5(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02, 0x05, 0x05]),
            Ok((5, 5))
        );
        // One element packs SLP_TYPb into bits 15:8.
        assert_eq!(
            s5(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x01, 0x0b, 0x05, 0x06]),
            Ok((5, 6))
        );
    }

    #[test]
    fn s5_lookalikes_are_skipped() {
        // A Method named _S5_ (MethodOp 0x14, PkgLength, name), then the
        // real package.
        let mut aml = vec![0x14, 0x06, b'_', b'S', b'5', b'_', 0x00, 0xa4];
        aml.extend_from_slice(CH_S5);
        assert_eq!(s5(&aml), Ok((5, 0)));
        // _S5_ at the very start or as a NameOp without a package.
        assert!(s5(b"_S5_").is_err());
        assert!(s5(&[0x08, b'_', b'S', b'5', b'_', 0x0a, 0x05]).is_err());
        assert!(s5(&[]).is_err());
    }

    #[test]
    fn s5_malformed_packages() {
        let pkg = |tail: &[u8]| {
            let mut v = vec![0x08, b'_', b'S', b'5', b'_', 0x12];
            v.extend_from_slice(tail);
            s5(&v)
        };
        assert_eq!(pkg(&[0x02, 0x00]), Err("\\_S5 package is empty"));
        assert_eq!(
            pkg(&[0x06, 0x02, 0x0a]),
            Err("\\_S5 package runs past the end of the DSDT")
        );
        assert_eq!(
            pkg(&[0x03, 0x02, 0x0a]),
            Err("\\_S5 package runs past the end of the DSDT")
        );
        assert_eq!(pkg(&[]), Err("\\_S5 package runs past the end of the DSDT"));
        assert_eq!(
            pkg(&[0x05, 0x02, 0x70, 0x00, 0x00]),
            Err("\\_S5 package element is not an integer constant")
        );
        assert_eq!(
            pkg(&[0x05, 0x02, 0x0a, 0x08, 0x00]),
            Err("\\_S5 sleep type does not fit the 3-bit SLP_TYP field")
        );
    }

    #[test]
    fn a_pm1_control_length_the_crate_cannot_multiply_is_refused() {
        // Found by the acpi fuzz target (its input is in
        // fuzz/regressions/acpi/): the crate's pm1a_control_block computes
        // PM1_CNT_LEN * 8 in a u8 and panicked on overflow.
        let with_len = |len: u8| {
            let ram = machine(&pm1_fadt_spec(), QEMU_S5);
            let mut t = fadt(&pm1_fadt_spec());
            t[FADT_PM1_CNT_LEN] = len;
            fix_checksum(&mut t, 9);
            ram.write(FADT, &t);
            ram
        };
        let ram = with_len(32);
        let err = discover(&ram, PhysAddr::new(RSDP)).unwrap_err();
        assert_eq!(
            err,
            Error::BadFadtField {
                field: "PM1_CNT_LEN",
                value: 32,
                addr: FADT
            }
        );
        assert_eq!(
            err.to_string(),
            format!("ACPI: FADT at {FADT:#x} has PM1_CNT_LEN = 32, which no platform has")
        );
        // 31 still parses, into a poweroff the kernel can use.
        let ram = with_len(31);
        let tables = discover(&ram, PhysAddr::new(RSDP)).unwrap();
        assert!(parse(&ram, &tables).unwrap().poweroff.is_some());
    }

    #[test]
    fn errors_display_their_fields() {
        let e = Error::BadSignature {
            expected: *b"XSDT",
            found: [b'R', 0, 0xff, b'T'],
            addr: 0x1234,
        };
        assert_eq!(
            e.to_string(),
            "ACPI: table at 0x1234 has signature \"R\\x00\\xffT\", expected \"XSDT\""
        );
        let e = Error::BadMadtEntry {
            offset: 52,
            entry_type: 9,
            len: 4,
        };
        assert_eq!(
            e.to_string(),
            "ACPI: MADT entry of type 9 at offset 52 has a bad length 4"
        );
    }
}
