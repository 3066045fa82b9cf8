//! The ACPI tables as firmware leaves them: the RSDP, the XSDT or RSDT,
//! what it lists (MADT, FADT, anything), the DSDT and FACS the FADT points
//! at, and the `\_S5` package in the DSDT's AML.
//!
//! Raw bytes would almost never get past a checksum, so the input describes
//! the tables and this target lays them out in fake RAM and fixes every
//! checksum, except those the input asks to leave wrong. Lengths, pointers,
//! MADT entries, FADT fields and the AML stay the fuzzer's.
#![no_main]

use hyperbatch::acpi_tables::{self, Poweroff, MAX_CPUS};
use hyperbatch::phys::PhysMemory;
use hyperbatch_fuzz::FuzzRam;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use x86_64::PhysAddr;

/// Where BIOSes put the RSDP; the tables follow it.
const BASE: u64 = 0xe0000;
const HEADER: usize = 36;

// FADT fields (ACPI 6.5, table 5.9).
const FADT_FIRMWARE_CTRL: usize = 36;
const FADT_DSDT: usize = 40;
const FADT_X_FIRMWARE_CTRL: usize = 132;
const FADT_X_DSDT: usize = 140;

#[derive(Arbitrary, Debug)]
struct MadtEntry {
    ty: u8,
    len_delta: i8,
    data: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Body {
    Madt {
        local_apic: u32,
        flags: u32,
        entries: Vec<MadtEntry>,
    },
    Fadt(Vec<u8>),
    Other([u8; 4], Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Table {
    body: Body,
    revision: u8,
    /// Declared length minus the bytes written.
    len_delta: i8,
    /// Replace the OEM fields with text, as real firmware has.
    text_oem: bool,
    oem: [u8; 14],
}

#[derive(Arbitrary, Debug)]
struct Input {
    rsdp_revision: u8,
    rsdp_len_delta: i8,
    xsdt: bool,
    rsdt: bool,
    /// Bit n set: leave checksum n wrong (0, 1: the RSDP's; 2: the root's;
    /// 3: the DSDT's; 4 on: the listed tables').
    corrupt: u32,
    tables: Vec<Table>,
    /// More root entries, raw addresses.
    raw_entries: Vec<u64>,
    dsdt: Option<(Vec<u8>, i8)>,
    facs: Option<(u32, Vec<u8>)>,
    /// Bits 0-3: the FADT's DSDT, X_DSDT, FIRMWARE_CTRL, X_FIRMWARE_CTRL
    /// point at the DSDT and FACS laid out here.
    fadt_links: u8,
}

/// Bytes laid out from `BASE`, and the checksums to fix once all is known.
struct Layout {
    bytes: Vec<u8>,
    /// (start, declared length, checksum byte offset)
    sums: Vec<(usize, usize, usize)>,
}

impl Layout {
    fn place(&mut self, b: &[u8]) -> usize {
        while !self.bytes.len().is_multiple_of(16) {
            self.bytes.push(0);
        }
        let at = self.bytes.len();
        self.bytes.extend_from_slice(b);
        at
    }

    fn addr(at: usize) -> u64 {
        BASE + at as u64
    }
}

fn sdt(sig: [u8; 4], revision: u8, body: &[u8], len_delta: i8, oem: Option<[u8; 14]>) -> Vec<u8> {
    let len = (HEADER + body.len()) as i64 + i64::from(len_delta);
    let mut t = Vec::with_capacity(HEADER + body.len());
    t.extend_from_slice(&sig);
    t.extend_from_slice(&(len.clamp(0, u32::MAX.into()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, fixed later
    t.extend_from_slice(&oem.unwrap_or(*b"BOCHS BXPC    "));
    t.extend_from_slice(&[0; 12]); // OEM revision, creator ID and revision
    t.extend_from_slice(body);
    t
}

fn declared(t: &[u8]) -> usize {
    u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize
}

fn put(b: &mut Vec<u8>, off: usize, v: &[u8]) {
    if b.len() < off + v.len() {
        b.resize(off + v.len(), 0);
    }
    b[off..off + v.len()].copy_from_slice(v);
}

fn fix(bytes: &mut [u8], start: usize, len: usize, at: usize) {
    let end = (start + len).min(bytes.len());
    if at >= bytes.len() || start >= end {
        return;
    }
    bytes[at] = 0;
    let sum = bytes[start..end]
        .iter()
        .fold(0u8, |s, &x| s.wrapping_add(x));
    bytes[at] = 0u8.wrapping_sub(sum);
}

fuzz_target!(|input: Input| {
    let mut l = Layout {
        bytes: Vec::new(),
        sums: Vec::new(),
    };
    // The RSDP first, filled in once the root tables have addresses.
    let rsdp_len = (36 + i32::from(input.rsdp_len_delta)).clamp(20, 64) as usize;
    let rsdp_at = l.place(&vec![0; rsdp_len.max(36)]);

    let dsdt_at = input.dsdt.as_ref().map(|(aml, delta)| {
        let t = sdt(*b"DSDT", 2, aml, *delta, None);
        let at = l.place(&t);
        if input.corrupt & (1 << 3) == 0 {
            l.sums.push((at, declared(&t), at + 9));
        }
        at
    });
    let facs_at = input.facs.as_ref().map(|(len, rest)| {
        let mut f = b"FACS".to_vec();
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(rest);
        l.place(&f)
    });

    let mut listed = Vec::new();
    for (i, t) in input.tables.iter().take(16).enumerate() {
        let (sig, mut body) = match &t.body {
            Body::Madt {
                local_apic,
                flags,
                entries,
            } => {
                let mut b = Vec::new();
                b.extend_from_slice(&local_apic.to_le_bytes());
                b.extend_from_slice(&flags.to_le_bytes());
                for e in entries.iter().take(80) {
                    let len = (2 + e.data.len() as i64 + i64::from(e.len_delta)).clamp(0, 255);
                    b.push(e.ty);
                    b.push(len as u8);
                    b.extend_from_slice(&e.data[..e.data.len().min(253)]);
                }
                (*b"APIC", b)
            }
            Body::Fadt(b) => (*b"FACP", b.clone()),
            Body::Other(sig, b) => (*sig, b.clone()),
        };
        if sig == *b"FACP" {
            let body_off = |field: usize| field - HEADER;
            let links = input.fadt_links;
            if let Some(at) = dsdt_at {
                let a = Layout::addr(at);
                if links & 1 != 0 {
                    put(&mut body, body_off(FADT_DSDT), &(a as u32).to_le_bytes());
                }
                if links & 2 != 0 {
                    put(&mut body, body_off(FADT_X_DSDT), &a.to_le_bytes());
                }
            }
            if let Some(at) = facs_at {
                let a = Layout::addr(at);
                if links & 4 != 0 {
                    put(
                        &mut body,
                        body_off(FADT_FIRMWARE_CTRL),
                        &(a as u32).to_le_bytes(),
                    );
                }
                if links & 8 != 0 {
                    put(&mut body, body_off(FADT_X_FIRMWARE_CTRL), &a.to_le_bytes());
                }
            }
        }
        let oem = (!t.text_oem).then_some(t.oem);
        let bytes = sdt(sig, t.revision, &body, t.len_delta, oem);
        let at = l.place(&bytes);
        if i >= 28 || input.corrupt & (1 << (4 + i)) == 0 {
            l.sums.push((at, declared(&bytes), at + 9));
        }
        listed.push(Layout::addr(at));
    }
    let raw = input.raw_entries.iter().take(8).copied();
    let entries: Vec<u64> = listed.iter().copied().chain(raw).collect();

    let mut xsdt_addr = 0u64;
    let mut rsdt_addr = 0u32;
    if input.xsdt {
        let body: Vec<u8> = entries.iter().flat_map(|a| a.to_le_bytes()).collect();
        let t = sdt(*b"XSDT", 1, &body, 0, None);
        let at = l.place(&t);
        if input.corrupt & (1 << 2) == 0 {
            l.sums.push((at, declared(&t), at + 9));
        }
        xsdt_addr = Layout::addr(at);
    }
    if input.rsdt || !input.xsdt {
        let body: Vec<u8> = entries
            .iter()
            .flat_map(|a| (*a as u32).to_le_bytes())
            .collect();
        let t = sdt(*b"RSDT", 1, &body, 0, None);
        let at = l.place(&t);
        if input.corrupt & (1 << 2) == 0 {
            l.sums.push((at, declared(&t), at + 9));
        }
        rsdt_addr = Layout::addr(at) as u32;
    }

    let r = rsdp_at;
    l.bytes[r..r + 8].copy_from_slice(b"RSD PTR ");
    l.bytes[r + 9..r + 15].copy_from_slice(b"BOCHS ");
    l.bytes[r + 15] = input.rsdp_revision;
    l.bytes[r + 16..r + 20].copy_from_slice(&rsdt_addr.to_le_bytes());
    l.bytes[r + 20..r + 24].copy_from_slice(&(rsdp_len as u32).to_le_bytes());
    l.bytes[r + 24..r + 32].copy_from_slice(&xsdt_addr.to_le_bytes());
    // Tables first, the RSDP's own sums last (they cover none of the tables).
    for &(start, len, at) in &l.sums {
        fix(&mut l.bytes, start, len, at);
    }
    if input.corrupt & 1 == 0 {
        fix(&mut l.bytes, r, 20, r + 8);
    }
    if input.corrupt & 2 == 0 {
        fix(&mut l.bytes, r, rsdp_len, r + 32);
    }

    let mut ram = FuzzRam::new(BASE, l.bytes.len() + 16);
    ram.write(BASE, &l.bytes);

    let tables = match acpi_tables::discover(&ram, PhysAddr::new(BASE)) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // Everything recorded is readable, and the root table comes first.
    for (start, len) in tables.ranges() {
        assert!(
            ram.ptr(start, len as usize).is_some(),
            "{start:?}+{len:#x} unreadable"
        );
    }
    let root = tables.tables()[0];
    assert!(root.signature == *b"XSDT" || root.signature == *b"RSDT");

    match acpi_tables::parse(&ram, &tables) {
        Ok(p) => {
            assert!(p.cpus.len() <= MAX_CPUS);
            for (i, c) in p.cpus.iter().enumerate() {
                assert!(p.cpus[..i].iter().all(|o| o.apic_id != c.apic_id));
            }
            match p.poweroff {
                Some(Poweroff::Pm1 {
                    slp_typa, slp_typb, ..
                }) => assert!(slp_typa <= 7 && slp_typb <= 7),
                Some(Poweroff::SleepControl { slp_typ, .. }) => assert!(slp_typ <= 7),
                None => assert!(p.poweroff_missing.is_some()),
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
