//! `hvm_start_info` and its memory map, as a PVH loader hands them over,
//! then the frame allocator built from that map.
//!
//! The input is fake RAM at 1 MiB with `start_info` at its first byte. Its
//! first byte is not copied but steers the pointer fields: each set bit
//! moves one field (and the memory map's entries) into the fake RAM, so the
//! fuzzer reaches the deep checks as often as the raw out-of-range ones.
#![no_main]

use hyperbatch::frames::{FrameAllocator, RegionKind};
use hyperbatch::pvh::{self, CMDLINE_MAX};
use hyperbatch_fuzz::{le_u32, le_u64, FuzzRam};
use libfuzzer_sys::fuzz_target;
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

/// The allocator manages nothing below 1 MiB; RAM starts there.
const BASE: u64 = 0x10_0000;
const RAM: usize = 128 * 1024;

// Offsets in hvm_start_info (Xen's arch-x86/hvm/start_info.h).
const OFF_NR_MODULES: u64 = 12;
const OFF_MODLIST: u64 = 16;
const OFF_CMDLINE: u64 = 24;
const OFF_RSDP: u64 = 32;
const OFF_MEMMAP: u64 = 40;
const OFF_MEMMAP_ENTRIES: u64 = 48;
const MEMMAP_ENTRY: u64 = 24;

fn relocate(ram: &mut FuzzRam, field: u64) {
    let at = BASE + field;
    let v = ram.slice(at, 8).map_or(0, |b| le_u64(b, 0));
    let moved = BASE + v % RAM as u64;
    ram.write(at, &moved.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&steer, image)) = data.split_first() else {
        return;
    };
    let mut ram = FuzzRam::new(BASE, RAM);
    ram.write(BASE, image);
    for (bit, field) in [
        (0, OFF_MEMMAP),
        (1, OFF_CMDLINE),
        (2, OFF_MODLIST),
        (3, OFF_RSDP),
    ] {
        if steer & (1 << bit) != 0 {
            relocate(&mut ram, field);
        }
    }
    if steer & (1 << 4) != 0 {
        // Memory-map entries inside the fake RAM, of a size it can hold.
        let map = ram.slice(BASE + OFF_MEMMAP, 8).map_or(0, |b| le_u64(b, 0));
        let n = ram
            .slice(BASE + OFF_MEMMAP_ENTRIES, 4)
            .map_or(0, |b| le_u32(b, 0))
            .min(128);
        for i in 0..u64::from(n) {
            let at = map.wrapping_add(i * MEMMAP_ENTRY);
            let Some(e) = ram.slice(at, 16).map(<[u8]>::to_vec) else {
                break;
            };
            let start = BASE + le_u64(&e, 0) % RAM as u64;
            let size = le_u64(&e, 8) % (2 * RAM as u64);
            ram.write(at, &start.to_le_bytes());
            ram.write(at + 8, &size.to_le_bytes());
        }
    }
    if steer & (1 << 5) != 0 {
        // At most a few modules, so that the list is often complete.
        let n = ram
            .slice(BASE + OFF_NR_MODULES, 4)
            .map_or(0, |b| le_u32(b, 0))
            % 4;
        ram.write(BASE + OFF_NR_MODULES, &n.to_le_bytes());
    }

    let info = match pvh::parse(&ram, PhysAddr::new(BASE)) {
        Ok(info) => info,
        Err(e) => {
            // The message must build for every error.
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(!info.memory_map.is_empty());
    assert!(info.memory_map.iter().any(|r| r.kind == RegionKind::Ram));
    for r in &info.memory_map {
        assert!(r.len != 0 && r.start.as_u64().checked_add(r.len).is_some());
    }
    assert!(info.cmdline.len() < CMDLINE_MAX);
    for r in &info.boot_ranges {
        assert!(r.start <= r.end);
    }

    // SAFETY: `ram` outlives the allocator, and nothing else touches the
    // frames it manages while it lives.
    let fa = unsafe { FrameAllocator::new(&ram, &info.memory_map, &info.boot_ranges) };
    let mut fa = match fa {
        Ok(fa) => fa,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let before = fa.free_frames();
    assert!(before <= fa.managed_frames());
    let bitmap = fa.bitmap_range();
    let mut got: Vec<PhysFrame> = Vec::new();
    // Sixteen frames, only the first zeroed: zeroing is a memset, and 64
    // zeroed frames per input cost most of the target's time.
    while got.len() < 16 {
        let f = if got.is_empty() {
            fa.alloc_zeroed(&ram)
        } else {
            fa.alloc()
        };
        let Ok(f) = f else {
            break;
        };
        let pa = f.start_address();
        assert!(pa >= PhysAddr::new(BASE), "a frame below 1 MiB: {pa:?}");
        assert!(!bitmap.contains(pa), "the bitmap's own frame handed out");
        assert!(
            info.boot_ranges.iter().all(|r| !r.contains(pa)),
            "a boot structure's frame handed out"
        );
        assert!(
            info.memory_map.iter().any(|r| r.kind == RegionKind::Ram
                && r.start <= pa
                && pa.as_u64() + 4096 <= r.start.as_u64() + r.len),
            "a frame outside RAM"
        );
        assert!(fa.is_allocated(f));
        assert!(!got.contains(&f), "frame {pa:?} handed out twice");
        got.push(f);
    }
    for f in &got {
        fa.free(*f).expect("an allocated frame frees");
    }
    if let Some(f) = got.first() {
        assert!(fa.free(*f).is_err(), "double free accepted");
    }
    assert_eq!(fa.free_frames(), before);
});
