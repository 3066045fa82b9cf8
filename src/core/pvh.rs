//! The PVH boot structure: the first thing the kernel reads after the 32-bit
//! entry hands over `%ebx`.
//!
//! A PVH loader (QEMU's pvh option ROM, qboot, cloud-hypervisor, Xen) passes
//! the physical address of an `hvm_start_info`. [`parse`] validates every
//! field and copies out what the rest of the boot needs: the memory map for
//! [`crate::frames`], the command line for [`crate::cmdline`], the RSDP
//! address for ACPI, and the ranges the boot structures occupy so the frame
//! allocator does not hand them out while they are still being read.
//!
//! Layout: Xen public header `xen/include/public/arch-x86/hvm/start_info.h`
//! (struct `hvm_start_info`, `hvm_modlist_entry`, `hvm_memmap_table_entry`).

use core::fmt;

use x86_64::PhysAddr;

use crate::frames::{MemoryRegion, Range, RegionKind, MAX_REGIONS};
use crate::phys::PhysMemory;

/// `XEN_HVM_START_MAGIC_VALUE`: "xEn3" with the 0x80 bit of the "E" set.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// The longest command line accepted, including its NUL terminator.
pub const CMDLINE_MAX: usize = 2048;

/// The most boot modules accepted; the kernel loads none today.
pub const MAX_MODULES: usize = 16;

/// Capacity of [`BootInfo::boot_ranges`]: start_info, memory map, command
/// line, module list and up to [`MAX_MODULES`] modules.
pub const MAX_BOOT_RANGES: usize = 32;

// Offsets in `hvm_start_info`. Version 0 ends at 40; version 1 adds the
// memory map.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_FLAGS: usize = 8;
const OFF_NR_MODULES: usize = 12;
const OFF_MODLIST_PADDR: usize = 16;
const OFF_CMDLINE_PADDR: usize = 24;
const OFF_RSDP_PADDR: usize = 32;
const OFF_MEMMAP_PADDR: usize = 40;
const OFF_MEMMAP_ENTRIES: usize = 48;
const START_INFO_V1_SIZE: usize = 56;

/// `hvm_memmap_table_entry`: addr u64, size u64, type u32, reserved u32.
const MEMMAP_ENTRY_SIZE: u64 = 24;
/// `hvm_modlist_entry`: paddr u64, size u64, cmdline_paddr u64, reserved u64.
const MODLIST_ENTRY_SIZE: u64 = 32;

/// What the kernel keeps from `hvm_start_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// The loader's memory map, in its order; at least one entry is RAM.
    pub memory_map: heapless::Vec<MemoryRegion, MAX_REGIONS>,
    /// The command line without its NUL; empty when none was given.
    pub cmdline: heapless::String<CMDLINE_MAX>,
    /// The ACPI RSDP, or `None` when the loader gave none (no ACPI).
    pub rsdp: Option<PhysAddr>,
    /// Memory the boot structures occupy: start_info itself, the memory map
    /// array, the command line, the module list and each module. Reserve
    /// these in the frame allocator.
    pub boot_ranges: heapless::Vec<Range, MAX_BOOT_RANGES>,
    /// The structure's version (1 or later).
    pub version: u32,
    /// `SIF_*` flags, kept for the boot report.
    pub flags: u32,
}

/// What is wrong with the boot structure. Each variant names the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `what` at `addr` lies outside accessible memory.
    Unreadable { what: &'static str, addr: u64 },
    /// `magic` is not [`XEN_HVM_START_MAGIC_VALUE`].
    BadMagic(u32),
    /// `version` 0 has no memory map, which this kernel requires.
    UnsupportedVersion(u32),
    /// `memmap_entries` is 0.
    EmptyMemoryMap,
    /// `memmap_entries` exceeds [`MAX_REGIONS`].
    TooManyRegions(u32),
    /// Memory-map entry `index` is unusable.
    BadRegion {
        index: u32,
        addr: u64,
        size: u64,
        problem: &'static str,
    },
    /// The memory map has no RAM entry.
    NoRam,
    /// No NUL within the first [`CMDLINE_MAX`] bytes of the command line:
    /// it is longer than `CMDLINE_MAX - 1` bytes.
    CmdlineUnterminated,
    /// The command line is not UTF-8; `offset` is the first bad byte.
    CmdlineNotUtf8 { offset: usize },
    /// `nr_modules` exceeds [`MAX_MODULES`].
    TooManyModules(u32),
    /// Module `index` is unusable.
    BadModule {
        index: u32,
        addr: u64,
        size: u64,
        problem: &'static str,
    },
    /// A pointer field holds an address beyond the 52-bit physical space.
    BadAddress { what: &'static str, addr: u64 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Unreadable { what, addr } => {
                write!(f, "PVH {what} at {addr:#x} is not in accessible memory")
            }
            Error::BadMagic(m) => write!(
                f,
                "PVH start_info magic is {m:#x}, expected {XEN_HVM_START_MAGIC_VALUE:#x}"
            ),
            Error::UnsupportedVersion(v) => write!(
                f,
                "PVH start_info version {v} has no memory map; hyperbatch needs version 1 or later"
            ),
            Error::EmptyMemoryMap => f.write_str("PVH start_info has an empty memory map"),
            Error::TooManyRegions(n) => write!(
                f,
                "PVH memory map has {n} entries, more than the {MAX_REGIONS} supported"
            ),
            Error::BadRegion {
                index,
                addr,
                size,
                problem,
            } => write!(
                f,
                "PVH memory map entry {index} (addr {addr:#x}, size {size:#x}): {problem}"
            ),
            Error::NoRam => f.write_str("PVH memory map has no RAM entry"),
            Error::CmdlineUnterminated => write!(
                f,
                "PVH command line is longer than {} bytes, the most hyperbatch accepts \
                 (no NUL terminator within its first {CMDLINE_MAX} bytes)",
                CMDLINE_MAX - 1
            ),
            Error::CmdlineNotUtf8 { offset } => {
                write!(
                    f,
                    "PVH command line is not UTF-8 (bad byte at offset {offset})"
                )
            }
            Error::TooManyModules(n) => write!(
                f,
                "PVH start_info has {n} modules, more than the {MAX_MODULES} supported"
            ),
            Error::BadModule {
                index,
                addr,
                size,
                problem,
            } => write!(
                f,
                "PVH module {index} (addr {addr:#x}, size {size:#x}): {problem}"
            ),
            Error::BadAddress { what, addr } => {
                write!(
                    f,
                    "PVH {what} {addr:#x} is beyond the physical address space"
                )
            }
        }
    }
}

/// Reads and validates the `hvm_start_info` at `start_info`.
pub fn parse(mem: &impl PhysMemory, start_info: PhysAddr) -> Result<BootInfo, Error> {
    let base = start_info.as_u64();
    // "nothing will be loaded at physical address 0, so a 0 value in any of
    // the address fields should be treated as not present" (start_info.h).
    if base == 0 {
        return Err(Error::Unreadable {
            what: "start_info",
            addr: 0,
        });
    }
    let head: [u8; 8] = read_array(mem, base, "start_info")?;
    let magic = le_u32(&head, OFF_MAGIC);
    if magic != XEN_HVM_START_MAGIC_VALUE {
        return Err(Error::BadMagic(magic));
    }
    // Later versions only append fields ("New versions are guaranteed to be
    // backwards-compatible"), so every version from 1 up has what we read.
    let version = le_u32(&head, OFF_VERSION);
    if version == 0 {
        return Err(Error::UnsupportedVersion(version));
    }
    let si: [u8; START_INFO_V1_SIZE] = read_array(mem, base, "start_info")?;
    let flags = le_u32(&si, OFF_FLAGS);
    let nr_modules = le_u32(&si, OFF_NR_MODULES);
    let modlist_paddr = le_u64(&si, OFF_MODLIST_PADDR);
    let cmdline_paddr = le_u64(&si, OFF_CMDLINE_PADDR);
    let rsdp_paddr = le_u64(&si, OFF_RSDP_PADDR);
    let memmap_paddr = le_u64(&si, OFF_MEMMAP_PADDR);
    let memmap_entries = le_u32(&si, OFF_MEMMAP_ENTRIES);

    let mut boot_ranges = heapless::Vec::new();
    let mut keep = |r: Range| {
        // Cannot fail: the capacity covers start_info, memory map, command
        // line, module list and MAX_MODULES modules, and nr_modules is
        // checked before any module is kept.
        let _ = boot_ranges.push(r);
    };
    keep(range(base, START_INFO_V1_SIZE as u64, "start_info")?);

    let memory_map = parse_memmap(mem, memmap_paddr, memmap_entries)?;
    keep(range(
        memmap_paddr,
        u64::from(memmap_entries) * MEMMAP_ENTRY_SIZE,
        "memmap_paddr",
    )?);

    let cmdline = parse_cmdline(mem, cmdline_paddr)?;
    if cmdline_paddr != 0 {
        keep(range(
            cmdline_paddr,
            cmdline.len() as u64 + 1,
            "cmdline_paddr",
        )?);
    }

    let rsdp = match rsdp_paddr {
        0 => None,
        addr => Some(PhysAddr::try_new(addr).map_err(|_| Error::BadAddress {
            what: "rsdp_paddr",
            addr,
        })?),
    };

    if nr_modules as usize > MAX_MODULES {
        return Err(Error::TooManyModules(nr_modules));
    }
    if nr_modules > 0 {
        let what = "module list";
        let list_len = u64::from(nr_modules) * MODLIST_ENTRY_SIZE;
        check_table(mem, modlist_paddr, list_len, what)?;
        keep(range(modlist_paddr, list_len, "modlist_paddr")?);
        for index in 0..nr_modules {
            // Cannot overflow: check_table accepted the whole list.
            let at = modlist_paddr + u64::from(index) * MODLIST_ENTRY_SIZE;
            let entry: [u8; MODLIST_ENTRY_SIZE as usize] = read_array(mem, at, what)?;
            let (addr, size) = (le_u64(&entry, 0), le_u64(&entry, 8));
            let bad = |problem| Error::BadModule {
                index,
                addr,
                size,
                problem,
            };
            if size == 0 {
                continue;
            }
            if addr == 0 {
                return Err(bad("address 0 means absent, yet the size is not 0"));
            }
            let start = PhysAddr::try_new(addr)
                .map_err(|_| bad("starts beyond the physical address space"))?;
            keep(
                Range::from_len(start, size)
                    .ok_or(bad("ends beyond the physical address space"))?,
            );
        }
    }

    Ok(BootInfo {
        memory_map,
        cmdline,
        rsdp,
        boot_ranges,
        version,
        flags,
    })
}

fn parse_memmap(
    mem: &impl PhysMemory,
    addr: u64,
    entries: u32,
) -> Result<heapless::Vec<MemoryRegion, MAX_REGIONS>, Error> {
    if entries == 0 {
        return Err(Error::EmptyMemoryMap);
    }
    if entries as usize > MAX_REGIONS {
        return Err(Error::TooManyRegions(entries));
    }
    let what = "memory map";
    check_table(mem, addr, u64::from(entries) * MEMMAP_ENTRY_SIZE, what)?;
    let mut map = heapless::Vec::new();
    for index in 0..entries {
        // Cannot overflow: check_table accepted the whole table.
        let at = addr + u64::from(index) * MEMMAP_ENTRY_SIZE;
        let entry: [u8; MEMMAP_ENTRY_SIZE as usize] = read_array(mem, at, what)?;
        let (start, size, ty) = (le_u64(&entry, 0), le_u64(&entry, 8), le_u32(&entry, 16));
        let bad = |problem| Error::BadRegion {
            index,
            addr: start,
            size,
            problem,
        };
        if size == 0 {
            // Describes nothing, so it cannot mislead: skip it. qboot (QEMU
            // microvm's firmware) ends its map with such an entry.
            continue;
        }
        let end = start
            .checked_add(size)
            .ok_or(bad("addr + size overflows"))?;
        // The last byte, not `end`, must be addressable: RAM may reach the
        // very top of the 52-bit space. `start <= end - 1`, so it is valid too.
        PhysAddr::try_new(end - 1).map_err(|_| bad("ends beyond the physical address space"))?;
        let region = MemoryRegion {
            start: PhysAddr::new_truncate(start),
            len: size,
            kind: RegionKind::from_e820(ty),
        };
        // Cannot fail: `entries <= MAX_REGIONS` was checked above.
        let _ = map.push(region);
    }
    if map.is_empty() {
        return Err(Error::EmptyMemoryMap);
    }
    if !map.iter().any(|r| r.kind == RegionKind::Ram) {
        return Err(Error::NoRam);
    }
    Ok(map)
}

fn parse_cmdline(mem: &impl PhysMemory, addr: u64) -> Result<heapless::String<CMDLINE_MAX>, Error> {
    let mut out = heapless::String::new();
    if addr == 0 {
        return Ok(out);
    }
    let what = "cmdline_paddr";
    // Read byte by byte: a short command line may sit right below the end of
    // accessible memory, where reading CMDLINE_MAX bytes at once would fail.
    let mut bytes = [0u8; CMDLINE_MAX];
    let mut len = None;
    for (i, slot) in bytes.iter_mut().enumerate() {
        let at = addr
            .checked_add(i as u64)
            .ok_or(Error::BadAddress { what, addr })?;
        let pa = PhysAddr::try_new(at).map_err(|_| Error::BadAddress { what, addr })?;
        let b = mem.read_u8(pa).ok_or(Error::Unreadable {
            what: "cmdline",
            addr: at,
        })?;
        if b == 0 {
            len = Some(i);
            break;
        }
        *slot = b;
    }
    let len = len.ok_or(Error::CmdlineUnterminated)?;
    let s = core::str::from_utf8(&bytes[..len]).map_err(|e| Error::CmdlineNotUtf8 {
        offset: e.valid_up_to(),
    })?;
    // Cannot fail: `len < CMDLINE_MAX`.
    let _ = out.push_str(s);
    Ok(out)
}

/// Checks that the `len`-byte table at `addr` (a pointer field, 0 = absent)
/// is present and readable.
fn check_table(
    mem: &impl PhysMemory,
    addr: u64,
    len: u64,
    what: &'static str,
) -> Result<(), Error> {
    let unreadable = Error::Unreadable { what, addr };
    let pa = PhysAddr::try_new(addr).map_err(|_| unreadable)?;
    let len = usize::try_from(len).map_err(|_| unreadable)?;
    if addr == 0 || mem.ptr(pa, len).is_none() {
        return Err(unreadable);
    }
    Ok(())
}

fn read_array<const N: usize>(
    mem: &impl PhysMemory,
    addr: u64,
    what: &'static str,
) -> Result<[u8; N], Error> {
    let unreadable = Error::Unreadable { what, addr };
    let pa = PhysAddr::try_new(addr).map_err(|_| unreadable)?;
    let mut buf = [0u8; N];
    mem.read(pa, &mut buf).ok_or(unreadable)?;
    Ok(buf)
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// `[start, start + len)` for a pointer field named `what`.
fn range(start: u64, len: u64, what: &'static str) -> Result<Range, Error> {
    let bad = Error::BadAddress { what, addr: start };
    let pa = PhysAddr::try_new(start).map_err(|_| bad)?;
    Range::from_len(pa, len).ok_or(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::fake::FakeRam;
    use std::vec::Vec;

    const START: u64 = 0x6000;
    const MEMMAP: u64 = 0x7000;
    const CMDLINE: u64 = 0x8000;
    const MODLIST: u64 = 0x9000;
    const RAM_LEN: usize = 0x10_0000;

    /// The fields of a `hvm_start_info`, written into fake RAM by `write`.
    #[derive(Clone)]
    struct StartInfo {
        magic: u32,
        version: u32,
        flags: u32,
        nr_modules: u32,
        modlist_paddr: u64,
        cmdline_paddr: u64,
        rsdp_paddr: u64,
        memmap_paddr: u64,
        memmap_entries: u32,
    }

    impl StartInfo {
        fn write(&self, ram: &FakeRam, at: u64) {
            let mut b = Vec::new();
            b.extend_from_slice(&self.magic.to_le_bytes());
            b.extend_from_slice(&self.version.to_le_bytes());
            b.extend_from_slice(&self.flags.to_le_bytes());
            b.extend_from_slice(&self.nr_modules.to_le_bytes());
            b.extend_from_slice(&self.modlist_paddr.to_le_bytes());
            b.extend_from_slice(&self.cmdline_paddr.to_le_bytes());
            b.extend_from_slice(&self.rsdp_paddr.to_le_bytes());
            b.extend_from_slice(&self.memmap_paddr.to_le_bytes());
            b.extend_from_slice(&self.memmap_entries.to_le_bytes());
            b.extend_from_slice(&0xdead_beef_u32.to_le_bytes()); // reserved
            assert_eq!(b.len(), START_INFO_V1_SIZE);
            ram.write(at, &b);
        }
    }

    fn write_memmap(ram: &FakeRam, at: u64, entries: &[(u64, u64, u32)]) {
        for (i, &(addr, size, ty)) in entries.iter().enumerate() {
            let mut b = Vec::new();
            b.extend_from_slice(&addr.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            ram.write(at + i as u64 * MEMMAP_ENTRY_SIZE, &b);
        }
    }

    fn write_modules(ram: &FakeRam, at: u64, modules: &[(u64, u64)]) {
        for (i, &(addr, size)) in modules.iter().enumerate() {
            let mut b = Vec::new();
            for v in [addr, size, 0, 0] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            ram.write(at + i as u64 * MODLIST_ENTRY_SIZE, &b);
        }
    }

    /// What QEMU's pvh option ROM hands a 128 MiB guest.
    const QEMU_MAP: [(u64, u64, u32); 5] = [
        (0, 0x9fc00, 1),
        (0x9fc00, 0x400, 2),
        (0xf0000, 0x10000, 2),
        (0x10_0000, 0x7ee_0000, 1),
        (0xfffc_0000, 0x4_0000, 2),
    ];
    const CMDLINE_TEXT: &str = "run=test seed=0x10 quick";

    fn good_info() -> StartInfo {
        StartInfo {
            magic: XEN_HVM_START_MAGIC_VALUE,
            version: 1,
            flags: 0,
            nr_modules: 0,
            modlist_paddr: 0,
            cmdline_paddr: CMDLINE,
            rsdp_paddr: 0xf5a40,
            memmap_paddr: MEMMAP,
            memmap_entries: QEMU_MAP.len() as u32,
        }
    }

    /// Fake RAM holding a valid structure built from `si`.
    fn ram_with(si: &StartInfo) -> FakeRam {
        let ram = FakeRam::new(0, RAM_LEN);
        write_memmap(&ram, MEMMAP, &QEMU_MAP);
        ram.write(CMDLINE, CMDLINE_TEXT.as_bytes()); // RAM is zeroed: NUL follows
        si.write(&ram, START);
        ram
    }

    fn parse_with(si: &StartInfo) -> Result<BootInfo, Error> {
        parse(&ram_with(si), PhysAddr::new(START))
    }

    fn parse_map(entries: &[(u64, u64, u32)]) -> Result<BootInfo, Error> {
        let si = StartInfo {
            memmap_entries: entries.len() as u32,
            ..good_info()
        };
        let ram = ram_with(&si);
        write_memmap(&ram, MEMMAP, entries);
        parse(&ram, PhysAddr::new(START))
    }

    fn parse_cmdline_bytes(bytes: &[u8]) -> Result<BootInfo, Error> {
        let ram = ram_with(&good_info());
        ram.write(CMDLINE, bytes);
        parse(&ram, PhysAddr::new(START))
    }

    fn range_of(start: u64, len: u64) -> Range {
        Range::from_len(PhysAddr::new(start), len).unwrap()
    }

    #[test]
    fn good_structure_parses() {
        let si = StartInfo {
            flags: 0x4,
            ..good_info()
        };
        let info = parse_with(&si).unwrap();
        assert_eq!(info.version, 1);
        assert_eq!(info.flags, 0x4);
        assert_eq!(info.cmdline.as_str(), CMDLINE_TEXT);
        assert_eq!(info.rsdp, Some(PhysAddr::new(0xf5a40)));
        let map: Vec<(u64, u64, RegionKind)> = info
            .memory_map
            .iter()
            .map(|r| (r.start.as_u64(), r.len, r.kind))
            .collect();
        assert_eq!(
            map,
            [
                (0, 0x9fc00, RegionKind::Ram),
                (0x9fc00, 0x400, RegionKind::Reserved),
                (0xf0000, 0x10000, RegionKind::Reserved),
                (0x10_0000, 0x7ee_0000, RegionKind::Ram),
                (0xfffc_0000, 0x4_0000, RegionKind::Reserved),
            ]
        );
        assert_eq!(
            info.boot_ranges.as_slice(),
            [
                range_of(START, 56),
                range_of(MEMMAP, 5 * 24),
                range_of(CMDLINE, CMDLINE_TEXT.len() as u64 + 1),
            ]
        );
    }

    #[test]
    fn later_versions_are_read_as_version_1() {
        let info = parse_with(&StartInfo {
            version: 2,
            ..good_info()
        })
        .unwrap();
        assert_eq!(info.version, 2);
        assert_eq!(info.memory_map.len(), QEMU_MAP.len());
    }

    #[test]
    fn bad_magic_and_version() {
        let err = parse_with(&StartInfo {
            magic: 0x1bad_b002,
            ..good_info()
        })
        .unwrap_err();
        assert_eq!(err, Error::BadMagic(0x1bad_b002));
        assert_eq!(
            err.to_string(),
            "PVH start_info magic is 0x1badb002, expected 0x336ec578"
        );

        let err = parse_with(&StartInfo {
            version: 0,
            ..good_info()
        })
        .unwrap_err();
        assert_eq!(err, Error::UnsupportedVersion(0));
        assert!(
            err.to_string().contains("version 0 has no memory map"),
            "{err}"
        );
    }

    #[test]
    fn memory_map_counts() {
        let err = parse_with(&StartInfo {
            memmap_entries: 0,
            ..good_info()
        })
        .unwrap_err();
        assert_eq!(err, Error::EmptyMemoryMap);
        assert_eq!(err.to_string(), "PVH start_info has an empty memory map");

        let many: Vec<(u64, u64, u32)> = (0..MAX_REGIONS as u64)
            .map(|i| (i * 0x10_0000, 0x10_0000, 1))
            .collect();
        assert_eq!(parse_map(&many).unwrap().memory_map.len(), MAX_REGIONS);
        let mut too_many = many.clone();
        too_many.push((0x1_0000_0000, 0x1000, 1));
        assert_eq!(parse_map(&too_many), Err(Error::TooManyRegions(129)));
    }

    #[test]
    fn bad_memory_map_entries() {
        // A zero-size entry describes nothing and is skipped (qboot emits
        // one); a map of nothing but such entries is empty.
        let mut map = QEMU_MAP.to_vec();
        map[2] = (0xf0000, 0, 2);
        let parsed = parse_map(&map).expect("zero-size entries are skipped");
        assert_eq!(parsed.memory_map.len(), QEMU_MAP.len() - 1);
        assert!(parsed.memory_map.iter().all(|r| r.len != 0));
        assert_eq!(parse_map(&[(0x10_0000, 0, 1)]), Err(Error::EmptyMemoryMap));

        let err = Error::BadRegion {
            index: 2,
            addr: 0xf0000,
            size: 0x10,
            problem: "addr + size overflows",
        };
        assert_eq!(
            err.to_string(),
            "PVH memory map entry 2 (addr 0xf0000, size 0x10): addr + size overflows"
        );

        map[2] = (u64::MAX - 0xfff, 0x2000, 1);
        assert!(matches!(
            parse_map(&map),
            Err(Error::BadRegion {
                index: 2,
                problem: "addr + size overflows",
                ..
            })
        ));

        map[2] = (1 << 52, 0x1000, 2);
        assert!(matches!(
            parse_map(&map),
            Err(Error::BadRegion {
                index: 2,
                problem: "ends beyond the physical address space",
                ..
            })
        ));
        // Reaching exactly the top of the 52-bit space is fine.
        map[2] = ((1 << 52) - 0x1000, 0x1000, 2);
        assert_eq!(parse_map(&map).unwrap().memory_map[2].len, 0x1000);

        let no_ram = [
            (0xf0000, 0x10000, 2),
            (0x10_0000, 0x1000, 3),
            (0x20_0000, 0x1000, 7),
        ];
        assert_eq!(parse_map(&no_ram), Err(Error::NoRam));
        // Unknown types are kept, not rejected.
        let odd = [(0x10_0000, 0x1000, 1), (0x20_0000, 0x1000, 0x1234)];
        assert_eq!(
            parse_map(&odd).unwrap().memory_map[1].kind,
            RegionKind::Other(0x1234)
        );
    }

    #[test]
    fn unreadable_pointers() {
        let ram = ram_with(&good_info());
        let end = RAM_LEN as u64;
        let unreadable = |what, addr| Err(Error::Unreadable { what, addr });
        assert_eq!(parse(&ram, PhysAddr::new(0)), unreadable("start_info", 0));
        assert_eq!(
            parse(&ram, PhysAddr::new(end)),
            unreadable("start_info", end)
        );
        // The magic and version are readable but the rest runs off the end.
        let tail = end - 16;
        ram.write(tail, &XEN_HVM_START_MAGIC_VALUE.to_le_bytes());
        ram.write(tail + 4, &1u32.to_le_bytes());
        assert_eq!(
            parse(&ram, PhysAddr::new(tail)),
            unreadable("start_info", tail)
        );

        for (memmap_paddr, expect) in [(0, 0), (end, end), (end - 24, end - 24), (1 << 60, 1 << 60)]
        {
            let si = StartInfo {
                memmap_paddr,
                ..good_info()
            };
            assert_eq!(
                parse_with(&si),
                unreadable("memory map", expect),
                "{memmap_paddr:#x}"
            );
        }

        let si = StartInfo {
            cmdline_paddr: end + 0x100,
            ..good_info()
        };
        assert_eq!(parse_with(&si), unreadable("cmdline", end + 0x100));
        let si = StartInfo {
            cmdline_paddr: 1 << 60,
            ..good_info()
        };
        assert_eq!(
            parse_with(&si),
            Err(Error::BadAddress {
                what: "cmdline_paddr",
                addr: 1 << 60
            })
        );

        // A command line running into the end of memory without a NUL.
        let ram = ram_with(&StartInfo {
            cmdline_paddr: end - 4,
            ..good_info()
        });
        ram.write(end - 4, b"abcd");
        assert_eq!(
            parse(&ram, PhysAddr::new(START)),
            unreadable("cmdline", end)
        );
        assert_eq!(
            Error::Unreadable {
                what: "memory map",
                addr: 0x10
            }
            .to_string(),
            "PVH memory map at 0x10 is not in accessible memory"
        );
    }

    #[test]
    fn cmdline_rules() {
        let info = parse_with(&StartInfo {
            cmdline_paddr: 0,
            ..good_info()
        })
        .unwrap();
        assert_eq!(info.cmdline.as_str(), "");
        assert_eq!(
            info.boot_ranges.len(),
            2,
            "no cmdline range when there is none"
        );

        let mut longest = vec![b'x'; CMDLINE_MAX - 1];
        longest.push(0);
        let info = parse_cmdline_bytes(&longest).unwrap();
        assert_eq!(info.cmdline.len(), CMDLINE_MAX - 1);
        assert_eq!(info.boot_ranges[2], range_of(CMDLINE, CMDLINE_MAX as u64));

        let unterminated = vec![b'x'; CMDLINE_MAX + 16];
        let err = parse_cmdline_bytes(&unterminated).unwrap_err();
        assert_eq!(err, Error::CmdlineUnterminated);
        assert_eq!(
            err.to_string(),
            "PVH command line is longer than 2047 bytes, the most hyperbatch accepts \
             (no NUL terminator within its first 2048 bytes)"
        );
        // One byte over: the NUL is the 2049th byte.
        let mut one_over = vec![b'x'; CMDLINE_MAX];
        one_over.push(0);
        assert_eq!(
            parse_cmdline_bytes(&one_over),
            Err(Error::CmdlineUnterminated)
        );

        let err = parse_cmdline_bytes(b"run=\xff\xfe\0").unwrap_err();
        assert_eq!(err, Error::CmdlineNotUtf8 { offset: 4 });
        assert!(err.to_string().contains("offset 4"));
        // UTF-8 beyond ASCII is accepted; cmdline::parse decides what it means.
        assert_eq!(
            parse_cmdline_bytes("test=é\0".as_bytes())
                .unwrap()
                .cmdline
                .as_str(),
            "test=é"
        );
    }

    #[test]
    fn rsdp_is_optional() {
        assert_eq!(
            parse_with(&StartInfo {
                rsdp_paddr: 0,
                ..good_info()
            })
            .unwrap()
            .rsdp,
            None
        );
        assert_eq!(
            parse_with(&StartInfo {
                rsdp_paddr: 1 << 52,
                ..good_info()
            }),
            Err(Error::BadAddress {
                what: "rsdp_paddr",
                addr: 1 << 52
            })
        );
    }

    #[test]
    fn modules_are_recorded_and_checked() {
        let with_modules = |modules: &[(u64, u64)], nr: u32, list: u64| {
            let si = StartInfo {
                nr_modules: nr,
                modlist_paddr: list,
                ..good_info()
            };
            let ram = ram_with(&si);
            write_modules(&ram, MODLIST, modules);
            parse(&ram, PhysAddr::new(START))
        };
        let info = with_modules(
            &[(0x20_0000, 0x1234), (0x30_0000, 0), (0x40_0000, 0x10)],
            3,
            MODLIST,
        )
        .unwrap();
        assert_eq!(
            info.boot_ranges[3..],
            [
                range_of(MODLIST, 3 * 32),
                range_of(0x20_0000, 0x1234),
                range_of(0x40_0000, 0x10)
            ]
        );

        let sixteen: Vec<(u64, u64)> = (0..16).map(|i| (0x20_0000 + i * 0x1000, 0x1000)).collect();
        assert_eq!(
            with_modules(&sixteen, 16, MODLIST)
                .unwrap()
                .boot_ranges
                .len(),
            3 + 1 + 16
        );
        assert_eq!(
            with_modules(&sixteen, 17, MODLIST),
            Err(Error::TooManyModules(17))
        );
        assert_eq!(
            with_modules(&[(0x20_0000, 1)], 1, 0),
            Err(Error::Unreadable {
                what: "module list",
                addr: 0
            })
        );
        assert!(matches!(
            with_modules(&[(0x20_0000, 1), (0, 0x1000)], 2, MODLIST),
            Err(Error::BadModule {
                index: 1,
                addr: 0,
                size: 0x1000,
                ..
            })
        ));
        assert!(matches!(
            with_modules(&[(u64::MAX - 10, 0x1000)], 1, MODLIST),
            Err(Error::BadModule { index: 0, .. })
        ));
        assert!(matches!(
            with_modules(&[((1 << 52) - 0x10, 0x1000)], 1, MODLIST),
            Err(Error::BadModule {
                index: 0,
                problem: "ends beyond the physical address space",
                ..
            })
        ));
    }

    /// xorshift64 (Marsaglia 2003).
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random structures must give an error or a consistent `BootInfo`, never
    /// a panic. Most rounds mutate a few bytes of a valid structure, so the
    /// fuzzer gets past the early checks and reaches the later ones; the
    /// rest build headers from random or plausible fields over random memory.
    #[test]
    fn random_structures_never_panic() {
        const LEN: u64 = 0x1_0000;
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let ram = FakeRam::new(0, LEN as usize);
        let modules = [(0x20_0000, 0x1000), (0x30_0000, 0x10)];
        let good = StartInfo {
            nr_modules: 2,
            modlist_paddr: MODLIST,
            ..good_info()
        };
        let (mut ok, mut errors) = (0, std::collections::HashSet::new());
        for round in 0..20_000 {
            let start = if round % 4 != 0 {
                ram.write(CMDLINE, &[0; 64]);
                ram.write(CMDLINE, CMDLINE_TEXT.as_bytes());
                write_memmap(&ram, MEMMAP, &QEMU_MAP);
                write_modules(&ram, MODLIST, &modules);
                good.write(&ram, START);
                for _ in 0..1 + rng.next() % 6 {
                    let (area, len) = match rng.next() % 4 {
                        0 => (START, START_INFO_V1_SIZE as u64),
                        1 => (MEMMAP, QEMU_MAP.len() as u64 * MEMMAP_ENTRY_SIZE),
                        2 => (CMDLINE, CMDLINE_TEXT.len() as u64 + 1),
                        _ => (MODLIST, modules.len() as u64 * MODLIST_ENTRY_SIZE),
                    };
                    ram.write(area + rng.next() % len, &[rng.next() as u8]);
                }
                START
            } else {
                let mut pick = |plausible: u64| {
                    let r = rng.next();
                    match r % 4 {
                        0 => r >> 2,
                        1 => (r >> 2) % (LEN + 0x1000),
                        _ => plausible,
                    }
                };
                let si = StartInfo {
                    magic: pick(u64::from(XEN_HVM_START_MAGIC_VALUE)) as u32,
                    version: pick(1) as u32,
                    flags: pick(0) as u32,
                    nr_modules: pick(2) as u32 % 20,
                    modlist_paddr: pick(MODLIST),
                    cmdline_paddr: pick(CMDLINE),
                    rsdp_paddr: pick(0),
                    memmap_paddr: pick(MEMMAP),
                    memmap_entries: pick(4) as u32 % 140,
                };
                let start = (pick(START) % LEN).min(LEN - START_INFO_V1_SIZE as u64);
                for page in [
                    MEMMAP,
                    CMDLINE,
                    MODLIST,
                    rng.next() % (LEN / 0x1000) * 0x1000,
                ] {
                    let mut buf = [0u8; 0x1000];
                    for chunk in buf.chunks_mut(8) {
                        let r = rng.next();
                        // Half small values, so some sizes and types are plausible.
                        let v = if r & 1 == 0 { r >> 60 } else { r };
                        chunk.copy_from_slice(&v.to_le_bytes());
                    }
                    ram.write(page, &buf);
                }
                si.write(&ram, start);
                start
            };
            match parse(&ram, PhysAddr::new(start)) {
                Ok(info) => {
                    ok += 1;
                    assert!(!info.memory_map.is_empty());
                    assert!(info.memory_map.iter().any(|r| r.kind == RegionKind::Ram));
                    assert!(info
                        .memory_map
                        .iter()
                        .all(|r| r.range().is_some() && r.len > 0));
                    assert!(info.cmdline.len() < CMDLINE_MAX);
                    assert!(info.version >= 1);
                    assert!(info.boot_ranges.iter().all(|r| !r.is_empty()));
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    errors.insert(std::mem::discriminant(&e));
                }
            }
        }
        // The fuzzer must reach success and most error kinds, or it tests little.
        assert!(ok > 1000, "only {ok} structures parsed");
        assert!(
            errors.len() >= 10,
            "only {} error kinds reached",
            errors.len()
        );
    }
}
